//! Text conditioning: tokenizers, the T5-family and CLIP text encoders (in the Hugging Face
//! layout, loaded from model folders or generated at random), and the assembly of their
//! outputs into the DiT's context `text [Lt, Dtxt]` + `text_mask [Lt]`. The encoders are
//! plain modules that take ids and return hidden states, so other models can reuse them.
//!
//! The byte-level embedding of the foundation stays as the `byte` encoder kind: ids are the
//! UTF-8 bytes plus 3, the end-of-text id 1 follows them, pad id 0 fills the rest; each id
//! looks up a row of `text_embed.weight [259, Dtxt]`.

pub mod clip;
pub mod conditioner;
pub mod exec;
pub mod nn;
pub mod random;
pub mod t5;
pub mod tokenize;
pub mod weights;

use std::path::Path;

use crate::checkpoint;
use crate::error::{fmt_shape, Error, Result};
use crate::model::streamdit::schema::TEXT_VOCAB;
use crate::tensor::Tensor;

pub use conditioner::Conditioner;
pub use tokenize::byte_tokens;
#[cfg_attr(not(feature = "internals"), allow(unused_imports))] // for the integration tests
pub use tokenize::{BYTE_EOS as END_ID, BYTE_OFFSET, BYTE_PAD as PAD_ID};

/// The text condition of one branch: `text [Lt, Dtxt]` and `mask [Lt]` (1 = real token).
#[derive(Debug, Clone, PartialEq)]
pub struct TextInput {
    pub text: Tensor,
    pub mask: Vec<f32>,
}

/// The byte-level embedding table.
#[cfg_attr(not(feature = "internals"), allow(dead_code))] // a hook of the integration tests
#[derive(Debug, Clone)]
pub struct ByteEmbedding {
    table: Tensor,
    len: usize,
}

#[cfg_attr(not(feature = "internals"), allow(dead_code))]
impl ByteEmbedding {
    /// A table `[259, text_dim]` producing `len` tokens per prompt.
    pub fn new(table: Tensor, len: usize, text_dim: usize) -> Result<ByteEmbedding> {
        table.expect_shape("text_embed.weight", &[TEXT_VOCAB, text_dim])?;
        Ok(ByteEmbedding { table, len })
    }

    /// The text condition of `prompt`.
    pub fn embed(&self, prompt: &str) -> TextInput {
        let dim = self.table.shape[1];
        let (ids, mask) = byte_tokens(prompt, self.len);
        let mut data = Vec::with_capacity(self.len * dim);
        for id in ids {
            let row = id as usize * dim;
            data.extend_from_slice(&self.table.data[row..row + dim]);
        }
        TextInput {
            text: Tensor {
                shape: vec![self.len, dim],
                data,
            },
            mask,
        }
    }
}

/// Reads precomputed text embeddings (`text [Lt, Dtxt]`, optionally `text_mask [Lt]`) from
/// a safetensors file, checking them against the profile's `Lt` and `Dtxt`.
pub fn load_text_embeddings(path: &Path, len: usize, text_dim: usize) -> Result<TextInput> {
    let mut tensors = checkpoint::read_tensors(path)?;
    let has_mask = tensors.contains_key("text_mask");
    let mut take = |name: &str, shape: &[usize]| -> Result<Tensor> {
        let t = tensors.remove(name).ok_or_else(|| Error::Tensor {
            path: path.display().to_string(),
            tensor: name.into(),
            expected: format!("a tensor of shape {}", fmt_shape(shape)),
            found: "none".into(),
        })?;
        if t.shape != shape {
            return Err(Error::Tensor {
                path: path.display().to_string(),
                tensor: name.into(),
                expected: format!("shape {}", fmt_shape(shape)),
                found: format!("shape {}", fmt_shape(&t.shape)),
            });
        }
        Ok(t)
    };
    let text = take("text", &[len, text_dim])?;
    // Without a mask every row is real (a ready context, such as a Wan family text input).
    let mask = if has_mask {
        take("text_mask", &[len])?.data
    } else {
        vec![1.0; len]
    };
    crate::math::validate_mask(&mask, 1, len)?;
    Ok(TextInput { text, mask })
}

/// Stacks the branches' conditions into `text [B*Lt, Dtxt]` and `mask [B*Lt]`.
pub fn stack(branches: &[&TextInput]) -> (Tensor, Vec<f32>) {
    let dim = branches.first().map_or(0, |b| b.text.shape[1]);
    let rows: usize = branches.iter().map(|b| b.text.shape[0]).sum();
    let text = Tensor {
        shape: vec![rows, dim],
        data: branches
            .iter()
            .flat_map(|b| b.text.data.iter().copied())
            .collect(),
    };
    let mask = branches
        .iter()
        .flat_map(|b| b.mask.iter().copied())
        .collect();
    (text, mask)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_end_and_padding() {
        let (ids, mask) = byte_tokens("hé", 6);
        // 'h' = 0x68, 'é' = 0xC3 0xA9 in UTF-8.
        assert_eq!(ids, vec![0x68 + 3, 0xC3 + 3, 0xA9 + 3, 1, 0, 0]);
        assert_eq!(mask, vec![1.0, 1.0, 1.0, 1.0, 0.0, 0.0]);
    }

    #[test]
    fn cut_keeps_the_end_token() {
        let (ids, mask) = byte_tokens("abcdef", 4);
        assert_eq!(
            ids,
            vec![b'a' as u32 + 3, b'b' as u32 + 3, b'c' as u32 + 3, END_ID]
        );
        assert_eq!(mask, vec![1.0; 4]);
    }

    #[test]
    fn empty_prompt_is_just_the_end_token() {
        let (ids, mask) = byte_tokens("", 3);
        assert_eq!(ids, vec![END_ID, PAD_ID, PAD_ID]);
        assert_eq!(mask, vec![1.0, 0.0, 0.0]);
    }

    #[test]
    fn embedding_looks_up_rows() {
        let dim = 2;
        let data: Vec<f32> = (0..TEXT_VOCAB * dim).map(|i| i as f32).collect();
        let emb =
            ByteEmbedding::new(Tensor::new(vec![TEXT_VOCAB, dim], data).unwrap(), 3, dim).unwrap();
        let t = emb.embed("A");
        let a = (b'A' as usize + 3) * dim;
        assert_eq!(
            t.text.data,
            vec![a as f32, a as f32 + 1.0, 2.0, 3.0, 0.0, 1.0]
        );
        assert_eq!(t.mask, vec![1.0, 1.0, 0.0]);
    }
}
