//! Prompt to token ids: a model folder's `tokenizer.json` through the `tokenizers` crate
//! (T5's unigram, CLIP's BPE, anything else it reads), or ByT5's bytes. Each cuts the ids
//! to the encoder's length keeping the end token, pads with the pad id and returns the mask
//! (1 = real token).

use std::path::Path;

use tokenizers::{Tokenizer, TruncationParams};

use crate::error::{path_str, Error, Result};

/// Padding id of ByT5.
pub const BYTE_PAD: u32 = 0;
/// End-of-text id of ByT5.
pub const BYTE_EOS: u32 = 1;
/// Byte `b` has ByT5 id `b + BYTE_OFFSET`.
pub const BYTE_OFFSET: u32 = 3;

/// How an encoder turns a prompt into ids.
pub enum PromptTokenizer {
    /// ByT5: UTF-8 bytes + 3, then the end id 1, pad 0.
    Bytes,
    /// A `tokenizers` tokenizer with truncation to the encoder's length set.
    File {
        tokenizer: Box<Tokenizer>,
        pad: u32,
        origin: String,
    },
}

impl PromptTokenizer {
    /// Reads `tokenizer.json` at `path` for sequences of at most `len` ids.
    pub fn from_file(path: &Path, len: usize) -> Result<PromptTokenizer> {
        if !path.is_file() {
            return Err(Error::Invalid(format!(
                "text encoder tokenizer: expected {}, found no such file",
                path_str(path)
            )));
        }
        let tokenizer = Tokenizer::from_file(path).map_err(|e| {
            Error::Invalid(format!(
                "{}: not a tokenizer the `tokenizers` crate reads: {e}",
                path_str(path)
            ))
        })?;
        Self::from_tokenizer(tokenizer, len, &path_str(path))
    }

    /// Wraps a tokenizer, setting truncation to `len` ids (special tokens included).
    pub fn from_tokenizer(mut tokenizer: Tokenizer, len: usize, origin: &str) -> Result<Self> {
        let pad = tokenizer
            .get_padding()
            .map(|p| p.pad_id)
            .or_else(|| tokenizer.token_to_id("<pad>"))
            .or_else(|| tokenizer.token_to_id("<|endoftext|>"))
            .unwrap_or(0);
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: len,
                ..TruncationParams::default()
            }))
            .map_err(|e| {
                Error::Invalid(format!("{origin}: cannot truncate to {len} tokens: {e}"))
            })?;
        Ok(PromptTokenizer::File {
            tokenizer: Box::new(tokenizer),
            pad,
            origin: origin.to_string(),
        })
    }

    /// Ids and mask of `prompt`, exactly `len` long.
    pub fn encode(&self, prompt: &str, len: usize) -> Result<(Vec<u32>, Vec<f32>)> {
        match self {
            PromptTokenizer::Bytes => Ok(byte_tokens(prompt, len)),
            PromptTokenizer::File {
                tokenizer,
                pad,
                origin,
            } => {
                let enc = tokenizer.encode(prompt, true).map_err(|e| {
                    Error::Invalid(format!("{origin}: cannot tokenize {prompt:?}: {e}"))
                })?;
                let mut ids: Vec<u32> = enc.get_ids().to_vec();
                if ids.len() > len && len > 0 {
                    // Truncation is set to the encoder's length; a caller asking for fewer
                    // ids still gets the final (end) token last.
                    let last = ids[ids.len() - 1];
                    ids.truncate(len - 1);
                    ids.push(last);
                }
                if ids.is_empty() || len == 0 {
                    return Err(Error::Invalid(format!(
                        "{origin}: prompt {prompt:?} gave no tokens: expected at least an end token (the tokenizer needs a post-processor that adds one)"
                    )));
                }
                let mut mask = vec![1.0; ids.len()];
                ids.resize(len, *pad);
                mask.resize(len, 0.0);
                Ok((ids, mask))
            }
        }
    }
}

/// ByT5 ids of `prompt` cut to `len - 1` bytes, then the end id, then padding to `len`; the
/// mask is 1 on the bytes and the end id.
pub fn byte_tokens(prompt: &str, len: usize) -> (Vec<u32>, Vec<f32>) {
    let mut ids: Vec<u32> = prompt
        .bytes()
        .take(len.saturating_sub(1))
        .map(|b| u32::from(b) + BYTE_OFFSET)
        .collect();
    if len > 0 {
        ids.push(BYTE_EOS);
    }
    let mut mask = vec![1.0; ids.len()];
    ids.resize(len, BYTE_PAD);
    mask.resize(len, 0.0);
    (ids, mask)
}
