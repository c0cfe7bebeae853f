//! Deterministic random text encoders: the `tiny` profile's encoders and the stand-ins of
//! encoders whose folders are not downloaded. Each is a complete model in the transformers
//! layout (config, tensors, tokenizer built with `tokenizers`' own model builders), so it
//! can be written as a Hugging Face folder and read back through the same loading path as
//! a downloaded one.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::Value;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::models::unigram::Unigram;
use tokenizers::normalizers::{Lowercase, Sequence as NormSeq, NFC, NFKC};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::metaspace::{Metaspace, PrependScheme};
use tokenizers::pre_tokenizers::sequence::Sequence as PreSeq;
use tokenizers::pre_tokenizers::whitespace::{Whitespace, WhitespaceSplit};
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{AddedToken, Tokenizer};

use super::clip::ClipConfig;
use super::nn::Act;
use super::t5::{FeedForward, T5Config, FEED_FORWARDS};
use crate::checkpoint::{write_tensors, DType};
use crate::error::{path_str, Error, Result};
use crate::model::profile::RandomEncoderConfig;
use crate::rng;
use crate::tensor::Tensor;

/// Words of the random encoders' vocabularies (T5 unigram pieces, CLIP BPE words).
pub const WORDS: &[&str] = &[
    "a", "the", "cat", "dog", "on", "in", "of", "and", "red", "blue", "video", "sunset", "over",
    "sea", "city", "street", "night", "rain", "walking", "running", "car", "tree", "sky", "with",
];

/// Vocabulary size of ByT5 (256 bytes + 3 specials, padded to 384 as google/byt5-* are).
pub const BYT5_VOCAB: usize = 384;

/// Counter words of random encoder tensors start here, apart from the DiT's (ASCII "tX").
const COUNTER_BASE: u32 = 0x7458_0000;

/// A random model in the transformers layout.
pub struct RandomModel {
    /// `config.json`.
    pub config: Value,
    pub tensors: BTreeMap<String, Tensor>,
    /// `tokenizer.json`; `None` for ByT5's bytes.
    pub tokenizer: Option<Tokenizer>,
}

fn tok_err(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Invalid(format!("building the random {what} tokenizer: {e}"))
}

/// The random T5 tokenizer: a unigram model over [`WORDS`] (as `▁word` pieces) and single
/// characters, `<pad>` 0, `</s>` 1, `<unk>` 2, NFKC + lowercase, Metaspace, `$A </s>`.
pub fn t5_tokenizer() -> Result<Tokenizer> {
    let mut vocab: Vec<(String, f64)> = vec![
        ("<pad>".into(), 0.0),
        ("</s>".into(), 0.0),
        ("<unk>".into(), 0.0),
        ("\u{2581}".into(), -2.0),
    ];
    for w in WORDS {
        vocab.push((format!("\u{2581}{w}"), -5.0));
    }
    for c in ('a'..='z').chain('0'..='9').chain(",.!?'-".chars()) {
        vocab.push((c.to_string(), -8.0));
    }
    let model = Unigram::from(vocab, Some(2), false).map_err(|e| tok_err("T5", e))?;
    let mut tok = Tokenizer::new(model);
    tok.with_normalizer(Some(NormSeq::new(vec![NFKC.into(), Lowercase.into()])))
        .map_err(|e| tok_err("T5", e))?;
    tok.with_pre_tokenizer(Some(PreSeq::new(vec![
        WhitespaceSplit.into(),
        Metaspace::new('\u{2581}', PrependScheme::Always, true).into(),
    ])));
    let post = TemplateProcessing::builder()
        .try_single("$A </s>")
        .map_err(|e| tok_err("T5", e))?
        .try_pair("$A </s> $B </s>")
        .map_err(|e| tok_err("T5", e))?
        .special_tokens(vec![("</s>", 1)])
        .build()
        .map_err(|e| tok_err("T5", e))?;
    tok.with_post_processor(Some(post));
    tok.add_special_tokens([
        AddedToken::from("<pad>", true),
        AddedToken::from("</s>", true),
        AddedToken::from("<unk>", true),
    ])
    .map_err(|e| tok_err("T5", e))?;
    Ok(tok)
}

/// The random CLIP tokenizer, shaped like CLIP's: NFC + lowercase, words split, bytes as
/// characters, a BPE with `</w>` word ends whose merges spell out [`WORDS`]; ids are the 256
/// byte characters in order, then the same with `</w>`, then the merged pieces, then
/// `<|startoftext|>` and `<|endoftext|>`; `<|startoftext|> $A <|endoftext|>`.
pub fn clip_tokenizer() -> Result<Tokenizer> {
    let mut alphabet: Vec<char> = ByteLevel::alphabet().into_iter().collect();
    alphabet.sort_unstable();
    let mut order: Vec<String> = alphabet.iter().map(|c| c.to_string()).collect();
    order.extend(alphabet.iter().map(|c| format!("{c}</w>")));
    let mut merges: Vec<(String, String)> = Vec::new();
    for w in WORDS {
        let chars: Vec<char> = w.chars().collect();
        let mut left = chars[0].to_string();
        for (i, c) in chars.iter().enumerate().skip(1) {
            let right = if i + 1 == chars.len() {
                format!("{c}</w>")
            } else {
                c.to_string()
            };
            let merged = format!("{left}{right}");
            if !merges.contains(&(left.clone(), right.clone())) {
                merges.push((left, right));
                order.push(merged.clone());
            }
            left = merged;
        }
    }
    let mut seen = std::collections::HashSet::new();
    order.retain(|t| seen.insert(t.clone()));
    order.push("<|startoftext|>".into());
    order.push("<|endoftext|>".into());
    let vocab: Vocab = order
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), i as u32))
        .collect();
    let bos = vocab["<|startoftext|>"];
    let eos = vocab["<|endoftext|>"];
    let model = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .end_of_word_suffix("</w>".into())
        .build()
        .map_err(|e| tok_err("CLIP", e))?;
    let mut tok = Tokenizer::new(model);
    tok.with_normalizer(Some(NormSeq::new(vec![NFC.into(), Lowercase.into()])))
        .map_err(|e| tok_err("CLIP", e))?;
    tok.with_pre_tokenizer(Some(PreSeq::new(vec![
        Whitespace.into(),
        ByteLevel::new(false, true, false).into(),
    ])));
    let post = TemplateProcessing::builder()
        .try_single("<|startoftext|> $A <|endoftext|>")
        .map_err(|e| tok_err("CLIP", e))?
        .special_tokens(vec![("<|startoftext|>", bos), ("<|endoftext|>", eos)])
        .build()
        .map_err(|e| tok_err("CLIP", e))?;
    tok.with_post_processor(Some(post));
    tok.add_special_tokens([
        AddedToken::from("<|startoftext|>", true),
        AddedToken::from("<|endoftext|>", true),
    ])
    .map_err(|e| tok_err("CLIP", e))?;
    Ok(tok)
}

/// Uniform tensor with standard deviation `std` around `mean`, from Philox counter `counter`.
fn uniform(seed: u64, counter: u32, shape: &[usize], mean: f32, std: f32) -> Tensor {
    let n: usize = shape.iter().product();
    let mut data = vec![0.0; n];
    rng::init_uniform(seed, counter, 0, mean, std * 1.732_050_8, &mut data);
    Tensor {
        shape: shape.to_vec(),
        data,
    }
}

/// Fills every tensor of `names` with `init(name, shape) -> (mean, std)`.
fn fill(
    seed: u64,
    names: Vec<(String, Vec<usize>)>,
    init: impl Fn(&str, &[usize]) -> (f32, f32),
) -> BTreeMap<String, Tensor> {
    names
        .into_iter()
        .enumerate()
        .map(|(i, (name, shape))| {
            let (mean, std) = init(&name, &shape);
            let t = uniform(seed, COUNTER_BASE + i as u32, &shape, mean, std);
            (name, t)
        })
        .collect()
}

/// A random T5 (ByT5 when `bytes`): weights scaled so activations stay O(1) without an
/// attention scale (the query carries `1/sqrt(d_kv)`, as T5's own init does).
pub fn random_t5(spec: &RandomEncoderConfig, bytes: bool) -> Result<RandomModel> {
    let act = spec.act.as_deref().unwrap_or("gated-gelu");
    let feed_forward = FeedForward::parse(act).ok_or_else(|| {
        Error::Invalid(format!(
            "random T5 encoder: act `{act}`: expected one of {FEED_FORWARDS}"
        ))
    })?;
    let tokenizer = if bytes { None } else { Some(t5_tokenizer()?) };
    let vocab_size = tokenizer
        .as_ref()
        .map_or(BYT5_VOCAB, |t| t.get_vocab_size(true));
    let cfg = T5Config {
        d_model: spec.d_model,
        d_kv: spec.d_kv.unwrap_or((spec.d_model / spec.heads).max(1)),
        d_ff: spec.d_ff,
        num_layers: spec.layers,
        num_heads: spec.heads,
        num_buckets: 8,
        max_distance: 20,
        feed_forward,
        eps: 1e-6,
        vocab_size,
        per_layer_bias: spec.per_layer_bias,
    };
    let (d, inner, ff) = (
        cfg.d_model as f32,
        (cfg.num_heads * cfg.d_kv) as f32,
        cfg.d_ff as f32,
    );
    let tensors = fill(spec.seed, cfg.tensors(), |name, _| {
        if name == "shared.weight" {
            (0.0, 1.0)
        } else if name.ends_with("layer_norm.weight") {
            (1.0, 0.1)
        } else if name.ends_with("relative_attention_bias.weight") {
            (0.0, 0.5)
        } else if name.ends_with(".q.weight") {
            (0.0, 1.0 / (d * inner / cfg.num_heads as f32).sqrt())
        } else if name.ends_with(".o.weight") {
            (0.0, 1.0 / inner.sqrt())
        } else if name.ends_with(".wo.weight") {
            (0.0, 1.0 / ff.sqrt())
        } else {
            (0.0, 1.0 / d.sqrt())
        }
    });
    Ok(RandomModel {
        config: cfg.to_json(),
        tensors,
        tokenizer,
    })
}

/// A random CLIP text model with `max_position_embeddings` 77.
pub fn random_clip(spec: &RandomEncoderConfig) -> Result<RandomModel> {
    let act = match spec.act.as_deref().unwrap_or("quick_gelu") {
        "quick_gelu" => Act::QuickGelu,
        "gelu" => Act::Gelu,
        a => {
            return Err(Error::Invalid(format!(
                "random CLIP encoder: act `{a}`: expected quick_gelu or gelu"
            )))
        }
    };
    if spec.d_model % spec.heads != 0 {
        return Err(Error::Invalid(format!(
            "random CLIP encoder: heads {} must divide d_model {}",
            spec.heads, spec.d_model
        )));
    }
    let tokenizer = clip_tokenizer()?;
    let cfg = ClipConfig {
        hidden_size: spec.d_model,
        intermediate_size: spec.d_ff,
        num_layers: spec.layers,
        num_heads: spec.heads,
        max_positions: 77,
        vocab_size: tokenizer.get_vocab_size(true),
        act,
        eps: 1e-5,
    };
    let (d, ff) = (cfg.hidden_size as f32, cfg.intermediate_size as f32);
    let tensors = fill(spec.seed, cfg.tensors(), |name, _| {
        if name.contains("embedding") {
            (0.0, 0.5)
        } else if name.contains("norm") && name.ends_with(".weight") {
            (1.0, 0.1)
        } else if name.ends_with(".bias") {
            (0.0, 0.1)
        } else if name.contains("fc2") {
            (0.0, 1.0 / ff.sqrt())
        } else {
            (0.0, 1.0 / d.sqrt())
        }
    });
    Ok(RandomModel {
        config: cfg.to_json(),
        tensors,
        tokenizer: Some(tokenizer),
    })
}

/// The random encoder of `kind` (`t5` or `clip`).
pub fn random_model(kind: &str, spec: &RandomEncoderConfig, bytes: bool) -> Result<RandomModel> {
    match kind {
        "t5" => random_t5(spec, bytes),
        "clip" => random_clip(spec),
        k => Err(Error::Invalid(format!(
            "random text encoder kind `{k}`: expected t5 or clip"
        ))),
    }
}

impl RandomModel {
    /// Writes the model as a Hugging Face folder: `config.json`, `model.safetensors` (f32),
    /// and `tokenizer.json` (or, for ByT5, a `tokenizer_config.json` naming ByT5Tokenizer).
    pub fn write_folder(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let write = |name: &str, text: String| -> Result<()> {
            let p = dir.join(name);
            std::fs::write(&p, text).map_err(|e| Error::io(&p, e))
        };
        write(
            "config.json",
            serde_json::to_string_pretty(&self.config).unwrap_or_default(),
        )?;
        let tensors: Vec<(&str, &Tensor)> =
            self.tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
        write_tensors(&dir.join("model.safetensors"), &tensors, DType::F32)?;
        match &self.tokenizer {
            Some(t) => {
                let p = dir.join("tokenizer.json");
                t.save(&p, true).map_err(|e| {
                    Error::Invalid(format!("{}: cannot write the tokenizer: {e}", path_str(&p)))
                })?;
            }
            None => write(
                "tokenizer_config.json",
                "{\"tokenizer_class\": \"ByT5Tokenizer\"}\n".into(),
            )?,
        }
        Ok(())
    }
}
