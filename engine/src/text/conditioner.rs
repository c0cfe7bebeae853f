//! Conditioning assembly: the profile's encoders, each with its tokenizer, length and
//! adapter `text_adapter.{name}.weight [Dtxt, d_model]` (+ `.bias`), concatenated along the
//! sequence into `text [Lt, Dtxt]` and `text_mask [Lt]`; with a small per-prompt cache, so a
//! prompt is encoded once and a prompt switch costs one run of the encoders.

use std::collections::VecDeque;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::clip::{ClipConfig, ClipEncoder};
use super::exec::{CpuLinear, LinearExec};
use super::nn;
use super::random::random_model;
use super::t5::{T5Config, T5Encoder};
use super::tokenize::PromptTokenizer;
use super::weights::TensorSource;
use super::TextInput;
use crate::checkpoint::Checkpoint;
use crate::error::{Error, Result};
use crate::model::profile::{TextConfig, TextEncoderConfig};
use crate::model::streamdit::schema::TEXT_VOCAB;
use crate::rng;
use crate::tensor::Tensor;

/// Prompts whose context the cache keeps.
pub const CACHE_PROMPTS: usize = 8;

/// The metadata key of a random checkpoint's seed (written by `write_random_checkpoint`).
const RANDOM_SEED_KEY: &str = "streamdit.seed";

/// Counter words of random adapters (ASCII "tA").
const ADAPTER_COUNTER: u32 = 0x7441_0000;

/// One encoder network.
pub enum Encoder {
    T5(T5Encoder),
    Clip(ClipEncoder),
    /// The byte-level embedding table `[259, Dtxt]` of the DiT checkpoint.
    Byte(Tensor),
}

impl Encoder {
    /// Output width.
    pub fn d_model(&self) -> usize {
        match self {
            Encoder::T5(e) => e.config.d_model,
            Encoder::Clip(e) => e.config.hidden_size,
            Encoder::Byte(t) => t.shape[1],
        }
    }

    /// Hidden states `[L, d_model]` of `ids` with padding `mask`, the linear layers on `exec`.
    pub fn forward(&self, exec: &mut dyn LinearExec, ids: &[u32], mask: &[f32]) -> Result<Tensor> {
        match self {
            Encoder::T5(e) => e.forward_with(exec, ids, mask),
            Encoder::Clip(e) => e.forward_with(exec, ids, mask),
            Encoder::Byte(t) => Tensor::new(vec![ids.len(), t.shape[1]], nn::embed(t, ids)),
        }
    }
}

/// Where adapter tensors come from.
pub enum Adapters<'a> {
    /// A DiT checkpoint: adapters are read from it, and a missing one is an error unless
    /// the encoder's width is already `Dtxt` or the checkpoint is a random one written by
    /// `weights init` (then the adapters of its seed are generated, as for `Random`).
    Checkpoint(&'a Checkpoint),
    /// Random DiT weights: random adapters from this seed where the widths differ.
    Random { seed: u64 },
}

/// One encoder of the conditioning.
pub struct Part {
    pub name: String,
    pub len: usize,
    pub tokenizer: PromptTokenizer,
    pub encoder: Encoder,
    /// `[Dtxt, d_model]` and an optional `[Dtxt]`; `None` is the identity.
    pub adapter: Option<(Tensor, Option<Tensor>)>,
}

/// Loads the tokenizer and network of one profile entry; the second value says where they
/// came from (for the log).
pub fn load_encoder(
    e: &TextEncoderConfig,
    byte_table: Option<&Tensor>,
) -> Result<(PromptTokenizer, Encoder, String)> {
    let bytes = e.tokenizer.as_deref() == Some("bytes");
    if e.kind == "byte" {
        let t = byte_table.ok_or_else(|| {
            Error::Invalid(format!(
                "text encoder `{}` (byte): expected the table text_embed.weight [{TEXT_VOCAB}, Dtxt] in the weights, found none",
                e.name
            ))
        })?;
        return Ok((
            PromptTokenizer::Bytes,
            Encoder::Byte(t.clone()),
            format!("text encoder `{}`: the byte-level embedding", e.name),
        ));
    }
    if let Some(dir) = &e.dir {
        let dir = Path::new(dir);
        let encoder = match e.kind.as_str() {
            "t5" => Encoder::T5(T5Encoder::load(dir)?),
            _ => Encoder::Clip(ClipEncoder::load(dir)?),
        };
        let tok_json = dir.join("tokenizer.json");
        let byt5 = std::fs::read_to_string(dir.join("tokenizer_config.json"))
            .is_ok_and(|s| s.contains("ByT5Tokenizer"));
        let tokenizer = if bytes || (!tok_json.is_file() && byt5) {
            PromptTokenizer::Bytes
        } else {
            PromptTokenizer::from_file(&tok_json, e.len)?
        };
        return Ok((
            tokenizer,
            encoder,
            format!(
                "text encoder `{}`: {} from {}",
                e.name,
                e.kind,
                dir.display()
            ),
        ));
    }
    let spec = e.random.as_ref().ok_or_else(|| {
        Error::Invalid(format!(
            "text encoder `{}`: expected a folder (dir, or --text-dir {}=PATH) or a random stand-in, found neither",
            e.name, e.name
        ))
    })?;
    let model = random_model(&e.kind, spec, bytes)?;
    let origin = format!("random text encoder `{}`", e.name);
    let src = TensorSource::Memory {
        origin: origin.clone(),
        tensors: model.tensors,
    };
    let encoder = match e.kind.as_str() {
        "t5" => Encoder::T5(T5Encoder::from_source(
            T5Config::from_json(&model.config, &origin)?,
            &src,
        )?),
        _ => Encoder::Clip(ClipEncoder::from_source(
            ClipConfig::from_json(&model.config, &origin)?,
            &src,
        )?),
    };
    let tokenizer = match model.tokenizer {
        Some(t) => PromptTokenizer::from_tokenizer(t, e.len, &origin)?,
        None => PromptTokenizer::Bytes,
    };
    Ok((
        tokenizer,
        encoder,
        format!(
            "text encoder `{}`: RANDOM {} stand-in (d_model {}, {} layers, seed {}); no folder given (--text-dir {}=PATH loads real weights)",
            e.name, e.kind, spec.d_model, spec.layers, spec.seed, e.name
        ),
    ))
}

fn adapter(
    name: &str,
    index: usize,
    d_model: usize,
    dim: usize,
    src: &Adapters,
) -> Result<Option<(Tensor, Option<Tensor>)>> {
    let w = format!("text_adapter.{name}.weight");
    let b = format!("text_adapter.{name}.bias");
    match src {
        Adapters::Checkpoint(ckpt) => {
            if ckpt.info(&w).is_none() {
                if d_model == dim {
                    return Ok(None);
                }
                // A random checkpoint (`weights init`, which knows only the DiT's schema)
                // stands for the adapters `--random-weights SEED` generates.
                let random_seed = ckpt
                    .metadata()
                    .get(RANDOM_SEED_KEY)
                    .and_then(|s| s.parse::<u64>().ok());
                if let Some(seed) = random_seed {
                    return adapter(name, index, d_model, dim, &Adapters::Random { seed });
                }
                return Err(Error::Tensor {
                    path: ckpt.path().display().to_string(),
                    tensor: w,
                    expected: format!(
                        "a tensor of shape [{dim}, {d_model}] (encoder `{name}` is {d_model} wide, Dtxt is {dim})"
                    ),
                    found: "none".into(),
                });
            }
            let weight = ckpt.read_f32(&w, &[dim, d_model])?;
            let bias = match ckpt.info(&b) {
                Some(_) => Some(ckpt.read_f32(&b, &[dim])?),
                None => None,
            };
            Ok(Some((weight, bias)))
        }
        Adapters::Random { seed } => {
            if d_model == dim {
                return Ok(None);
            }
            let counter = ADAPTER_COUNTER + 2 * index as u32;
            let hw = 1.732_050_8 / (d_model as f32).sqrt();
            let mut wd = vec![0.0; dim * d_model];
            rng::init_uniform(*seed, counter, 0, 0.0, hw, &mut wd);
            let mut bd = vec![0.0; dim];
            rng::init_uniform(*seed, counter + 1, 0, 0.0, 0.02, &mut bd);
            Ok(Some((
                Tensor::new(vec![dim, d_model], wd)?,
                Some(Tensor::new(vec![dim], bd)?),
            )))
        }
    }
}

struct Cache {
    entries: VecDeque<(String, Arc<TextInput>)>,
}

/// The profile's encoders with their adapters and the prompt cache.
pub struct Conditioner {
    parts: Vec<Part>,
    dim: usize,
    /// Most recently used first.
    cache: Mutex<Cache>,
    runs: AtomicU64,
    notes: Vec<String>,
    /// Where the linear layers run.
    exec: Mutex<Box<dyn LinearExec>>,
}

impl Conditioner {
    /// Loads every encoder of `text`; `dim` is `Dtxt`.
    pub fn new(
        text: &TextConfig,
        dim: usize,
        adapters: &Adapters,
        byte_table: Option<&Tensor>,
    ) -> Result<Conditioner> {
        let mut parts = Vec::new();
        let mut notes = Vec::new();
        for (i, e) in text.encoders.iter().enumerate() {
            let (tokenizer, encoder, note) = load_encoder(e, byte_table)?;
            if let Encoder::Clip(c) = &encoder {
                if e.len > c.config.max_positions {
                    return Err(Error::Invalid(format!(
                        "text encoder `{}`: len {}: expected at most the CLIP model's max_position_embeddings {}",
                        e.name, e.len, c.config.max_positions
                    )));
                }
            }
            let adapter = adapter(&e.name, i, encoder.d_model(), dim, adapters)?;
            notes.push(note);
            parts.push(Part {
                name: e.name.clone(),
                len: e.len,
                tokenizer,
                encoder,
                adapter,
            });
        }
        Ok(Conditioner {
            parts,
            dim,
            cache: Mutex::new(Cache {
                entries: VecDeque::new(),
            }),
            runs: AtomicU64::new(0),
            notes,
            exec: Mutex::new(Box::new(CpuLinear)),
        })
    }

    /// Runs the encoders' linear layers on `exec` (the CPU by default).
    pub fn with_exec(mut self, exec: Box<dyn LinearExec>) -> Conditioner {
        let name = exec.name();
        self.exec = Mutex::new(exec);
        self.notes.push(format!(
            "text encoders: linear layers on {name}{}",
            if name == "cpu" {
                ""
            } else {
                " (FP16 GEMM kernel; attention on the CPU)"
            }
        ));
        self
    }

    /// `cpu`, `emu` or `cuda`: where the linear layers run.
    pub fn device(&self) -> &'static str {
        self.exec.lock().unwrap_or_else(|e| e.into_inner()).name()
    }

    /// One line per encoder saying what it is and where it came from.
    pub fn notes(&self) -> &[String] {
        &self.notes
    }

    pub fn parts(&self) -> &[Part] {
        &self.parts
    }

    /// How many times the encoders ran (cache misses).
    pub fn encoder_runs(&self) -> u64 {
        self.runs.load(Ordering::Relaxed)
    }

    /// Runs every encoder on `prompt` (no cache).
    pub fn encode_uncached(&self, prompt: &str) -> Result<TextInput> {
        self.runs.fetch_add(1, Ordering::Relaxed);
        let total: usize = self.parts.iter().map(|p| p.len).sum();
        let mut text = Vec::with_capacity(total * self.dim);
        let mut mask = Vec::with_capacity(total);
        let mut exec = self.exec.lock().unwrap_or_else(|e| e.into_inner());
        for p in &self.parts {
            let (ids, m) = p.tokenizer.encode(prompt, p.len)?;
            let h = p.encoder.forward(exec.as_mut(), &ids, &m)?;
            let out = match &p.adapter {
                Some((w, b)) => exec.linear(&h.data, w, b.as_ref(), p.len)?,
                None => h.data,
            };
            text.extend_from_slice(&out);
            mask.extend_from_slice(&m);
        }
        Ok(TextInput {
            text: Tensor::new(vec![total, self.dim], text)?,
            mask,
        })
    }

    /// The context of `prompt`, from the cache when it was encoded recently.
    pub fn encode(&self, prompt: &str) -> Result<Arc<TextInput>> {
        {
            let mut c = self.cache.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(i) = c.entries.iter().position(|(p, _)| p == prompt) {
                if let Some((p, t)) = c.entries.remove(i) {
                    c.entries.push_front((p, t.clone()));
                    return Ok(t);
                }
            }
        }
        let t = Arc::new(self.encode_uncached(prompt)?);
        let mut c = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        c.entries.push_front((prompt.to_string(), t.clone()));
        c.entries.truncate(CACHE_PROMPTS);
        Ok(t)
    }
}
