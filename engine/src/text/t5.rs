//! The T5 encoder (T5 v1.1, UL2, ByT5, umT5) in the transformers layout: RMS layer norm
//! without mean subtraction, bidirectional relative position buckets added to the scores,
//! no `1/sqrt(d)` attention scale, a gated-GELU (tanh), gated-SiLU (UL2) or ReLU feed-forward.

use std::path::Path;

use serde_json::{json, Value};

use super::exec::{CpuLinear, LinearExec};
use super::nn::{self, Act, AttnShape};
use super::weights::{ConfigReader, Layout, Prefix, TensorSource};
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// The feed-forward of a T5 block, from `feed_forward_proj` as transformers reads it:
/// `ACT` is `wo(act(wi x))`, `gated-ACT` is `wo(act(wi_0 x) * wi_1 x)`; `gated-gelu` means
/// the tanh GELU (T5 v1.1, umT5, ByT5), `gated-silu` SwiGLU (UL2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FeedForward {
    pub gated: bool,
    pub act: Act,
}

impl FeedForward {
    /// The feed-forward `feed_forward_proj` names, if known.
    pub fn parse(s: &str) -> Option<FeedForward> {
        let (gated, name) = match s.strip_prefix("gated-") {
            Some(n) => (true, n),
            None => (false, s),
        };
        let act = match name {
            "relu" => Act::Relu,
            "gelu" if gated => Act::GeluTanh,
            "gelu" => Act::Gelu,
            "gelu_new" => Act::GeluTanh,
            "silu" | "swish" => Act::Silu,
            _ => return None,
        };
        Some(FeedForward { gated, act })
    }

    /// The `feed_forward_proj` string.
    pub fn name(&self) -> String {
        let act = match (self.act, self.gated) {
            (Act::GeluTanh, true) => "gelu",
            (Act::GeluTanh, false) => "gelu_new",
            (Act::Gelu, _) => "gelu",
            (Act::Silu, _) => "silu",
            (Act::QuickGelu, _) => "quick_gelu",
            (Act::Relu, _) => "relu",
        };
        if self.gated {
            format!("gated-{act}")
        } else {
            act.to_string()
        }
    }
}

/// Accepted `feed_forward_proj` values, for errors.
pub const FEED_FORWARDS: &str = "relu, gelu, gelu_new, silu, gated-gelu, gated-relu, gated-silu";

/// The numbers of a T5 `config.json`.
#[derive(Debug, Clone, PartialEq)]
pub struct T5Config {
    pub d_model: usize,
    pub d_kv: usize,
    pub d_ff: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_buckets: usize,
    pub max_distance: usize,
    pub feed_forward: FeedForward,
    pub eps: f32,
    pub vocab_size: usize,
    /// umT5: every block has its own relative position bias.
    pub per_layer_bias: bool,
}

impl T5Config {
    /// Reads a transformers T5/UL2/ByT5/umT5 config; `origin` names it in errors.
    pub fn from_json(json: &Value, origin: &str) -> Result<T5Config> {
        let r = ConfigReader { origin, json };
        // Missing fields take transformers' T5Config defaults, as transformers does.
        let feed_forward = FeedForward::parse(r.str_or("feed_forward_proj", "relu")?)
            .ok_or_else(|| r.unknown("feed_forward_proj", FEED_FORWARDS))?;
        let d_model = r.usize_or("d_model", 512)?;
        let num_heads = r.usize_or("num_heads", 8)?;
        let num_buckets = r.usize_or("relative_attention_num_buckets", 32)?;
        if num_buckets < 4 {
            return Err(Error::Invalid(format!(
                "{origin}: config.json: field `relative_attention_num_buckets`: expected at least 4, found {num_buckets}"
            )));
        }
        Ok(T5Config {
            d_model,
            d_kv: r.usize_or("d_kv", 64)?,
            d_ff: r.usize_or("d_ff", 2048)?,
            num_layers: r.usize_or("num_layers", 6)?,
            num_heads,
            num_buckets,
            max_distance: r.usize_or("relative_attention_max_distance", 128)?,
            feed_forward,
            eps: r.f32_or("layer_norm_epsilon", 1e-6)?,
            vocab_size: r.usize_or("vocab_size", 32128)?,
            per_layer_bias: r.str_or("model_type", "t5")? == "umt5",
        })
    }

    /// The config as transformers writes it.
    pub fn to_json(&self) -> Value {
        json!({
            "architectures": ["T5EncoderModel"],
            "model_type": if self.per_layer_bias { "umt5" } else { "t5" },
            "d_model": self.d_model,
            "d_kv": self.d_kv,
            "d_ff": self.d_ff,
            "num_layers": self.num_layers,
            "num_heads": self.num_heads,
            "relative_attention_num_buckets": self.num_buckets,
            "relative_attention_max_distance": self.max_distance,
            "feed_forward_proj": self.feed_forward.name(),
            "layer_norm_epsilon": self.eps,
            "vocab_size": self.vocab_size,
            "pad_token_id": 0,
            "eos_token_id": 1,
        })
    }

    fn inner(&self) -> usize {
        self.num_heads * self.d_kv
    }

    /// Every tensor name of the encoder with its shape, in transformers' names.
    pub fn tensors(&self) -> Vec<(String, Vec<usize>)> {
        let (d, inner, ff) = (self.d_model, self.inner(), self.d_ff);
        let mut out = vec![("shared.weight".to_string(), vec![self.vocab_size, d])];
        for i in 0..self.num_layers {
            let p = |s: &str| format!("encoder.block.{i}.layer.{s}");
            for x in ["q", "k", "v"] {
                out.push((p(&format!("0.SelfAttention.{x}.weight")), vec![inner, d]));
            }
            out.push((p("0.SelfAttention.o.weight"), vec![d, inner]));
            if i == 0 || self.per_layer_bias {
                out.push((
                    p("0.SelfAttention.relative_attention_bias.weight"),
                    vec![self.num_buckets, self.num_heads],
                ));
            }
            out.push((p("0.layer_norm.weight"), vec![d]));
            if self.feed_forward.gated {
                out.push((p("1.DenseReluDense.wi_0.weight"), vec![ff, d]));
                out.push((p("1.DenseReluDense.wi_1.weight"), vec![ff, d]));
            } else {
                out.push((p("1.DenseReluDense.wi.weight"), vec![ff, d]));
            }
            out.push((p("1.DenseReluDense.wo.weight"), vec![d, ff]));
            out.push((p("1.layer_norm.weight"), vec![d]));
        }
        out.push(("encoder.final_layer_norm.weight".to_string(), vec![d]));
        out
    }
}

/// The bucket of relative position `rel = key - query` (bidirectional), as transformers
/// computes it: half the buckets per direction, exact below `max_exact = buckets/4`,
/// logarithmic up to `max_distance`, in f32.
pub fn relative_bucket(rel: i64, num_buckets: usize, max_distance: usize) -> usize {
    let nb = num_buckets / 2;
    let mut ret = if rel > 0 { nb } else { 0 };
    let n = rel.unsigned_abs() as usize;
    let max_exact = nb / 2;
    if n < max_exact {
        ret += n;
    } else {
        let scale = ((max_distance as f64 / max_exact as f64).ln()) as f32;
        let large = (n as f32 / max_exact as f32).ln() / scale * (nb - max_exact) as f32;
        ret += (max_exact + large as usize).min(nb - 1);
    }
    ret
}

/// The layouts of a T5 encoder's tensors: T5EncoderModel, UMT5EncoderModel and
/// T5ForConditionalGeneration store the stack under `encoder.` (the embedding as
/// `shared.weight` and/or `encoder.embed_tokens.weight`); a bare T5Stack saved alone
/// stores `block.*`, `final_layer_norm.weight` and `embed_tokens.weight`.
pub const LAYOUTS: [Prefix; 2] = [("", ""), ("encoder.", "")];

struct Block {
    q: Tensor,
    k: Tensor,
    v: Tensor,
    o: Tensor,
    /// `[buckets, heads]`, in block 0 (and every block for umT5).
    rel_bias: Option<Tensor>,
    ln0: Tensor,
    wi: Tensor,
    /// The activated input of a gated feed-forward (`wi_0`); `wi` is then `wi_1`.
    wi_gate: Option<Tensor>,
    wo: Tensor,
    ln1: Tensor,
}

/// A loaded T5 encoder.
pub struct T5Encoder {
    pub config: T5Config,
    embed: Tensor,
    blocks: Vec<Block>,
    final_ln: Tensor,
}

impl T5Encoder {
    /// Loads the model folder `dir` (`config.json`, `model.safetensors` or shards).
    pub fn load(dir: &Path) -> Result<T5Encoder> {
        let origin = dir.display().to_string();
        let config = T5Config::from_json(&super::weights::read_config(dir)?, &origin)?;
        T5Encoder::from_source(config, &TensorSource::open(dir)?)
    }

    /// Builds the encoder from `config` and tensors in transformers' names (either layout
    /// of [`LAYOUTS`]), checking every shape and the layer count against the config.
    pub fn from_source(config: T5Config, src: &TensorSource) -> Result<T5Encoder> {
        let c = &config;
        let (d, inner, ff) = (c.d_model, c.inner(), c.d_ff);
        let src = &Layout::detect(src, "encoder.final_layer_norm.weight", &LAYOUTS)?;
        src.check_layers("num_layers", c.num_layers, |i| {
            format!("encoder.block.{i}.layer.0.SelfAttention.q.weight")
        })?;
        let embed = src.get_any(
            &["shared.weight", "encoder.embed_tokens.weight"],
            &[c.vocab_size, d],
        )?;
        let mut blocks = Vec::with_capacity(c.num_layers);
        for i in 0..c.num_layers {
            let p = |s: &str| format!("encoder.block.{i}.layer.{s}");
            let (wi, wi_gate) = if c.feed_forward.gated {
                (
                    src.get(&p("1.DenseReluDense.wi_1.weight"), &[ff, d])?,
                    Some(src.get(&p("1.DenseReluDense.wi_0.weight"), &[ff, d])?),
                )
            } else {
                (src.get(&p("1.DenseReluDense.wi.weight"), &[ff, d])?, None)
            };
            let rel_bias = if i == 0 || c.per_layer_bias {
                Some(src.get(
                    &p("0.SelfAttention.relative_attention_bias.weight"),
                    &[c.num_buckets, c.num_heads],
                )?)
            } else {
                None
            };
            blocks.push(Block {
                q: src.get(&p("0.SelfAttention.q.weight"), &[inner, d])?,
                k: src.get(&p("0.SelfAttention.k.weight"), &[inner, d])?,
                v: src.get(&p("0.SelfAttention.v.weight"), &[inner, d])?,
                o: src.get(&p("0.SelfAttention.o.weight"), &[d, inner])?,
                rel_bias,
                ln0: src.get(&p("0.layer_norm.weight"), &[d])?,
                wi,
                wi_gate,
                wo: src.get(&p("1.DenseReluDense.wo.weight"), &[d, ff])?,
                ln1: src.get(&p("1.layer_norm.weight"), &[d])?,
            });
        }
        let final_ln = src.get("encoder.final_layer_norm.weight", &[d])?;
        Ok(T5Encoder {
            config,
            embed,
            blocks,
            final_ln,
        })
    }

    /// The position bias `[heads, L, L]` from a table `[buckets, heads]`.
    fn position_bias(&self, table: &Tensor, len: usize) -> Vec<f32> {
        let c = &self.config;
        let h = c.num_heads;
        let mut out = vec![0.0; h * len * len];
        for i in 0..len {
            for j in 0..len {
                let b = relative_bucket(j as i64 - i as i64, c.num_buckets, c.max_distance);
                for e in 0..h {
                    out[(e * len + i) * len + j] = table.data[b * h + e];
                }
            }
        }
        out
    }

    /// The last hidden states `[L, d_model]` of token `ids` whose keys with `mask` 0 are
    /// ignored (padding), on the CPU.
    pub fn forward(&self, ids: &[u32], mask: &[f32]) -> Result<Tensor> {
        self.forward_with(&mut CpuLinear, ids, mask)
    }

    /// [`T5Encoder::forward`] with the linear layers on `exec`.
    pub fn forward_with(
        &self,
        exec: &mut dyn LinearExec,
        ids: &[u32],
        mask: &[f32],
    ) -> Result<Tensor> {
        let c = &self.config;
        check_ids(ids, mask, c.vocab_size, "T5")?;
        let (l, d) = (ids.len(), c.d_model);
        let mut h = nn::embed(&self.embed, ids);
        let mut bias = Vec::new();
        for b in &self.blocks {
            if let Some(t) = &b.rel_bias {
                bias = self.position_bias(t, l);
            }
            let x = nn::rms_norm(&h, &b.ln0.data, c.eps);
            let q = exec.linear(&x, &b.q, None, l)?;
            let k = exec.linear(&x, &b.k, None, l)?;
            let v = exec.linear(&x, &b.v, None, l)?;
            let a = nn::attention(
                &q,
                &k,
                &v,
                &AttnShape {
                    len: l,
                    heads: c.num_heads,
                    head_dim: c.d_kv,
                    scale: 1.0,
                    key_mask: mask,
                    causal: false,
                    bias: Some(&bias),
                },
            );
            nn::add_into(&mut h, &exec.linear(&a, &b.o, None, l)?);
            let x = nn::rms_norm(&h, &b.ln1.data, c.eps);
            let act = c.feed_forward.act;
            let mut u = exec.linear(&x, &b.wi, None, l)?;
            match &b.wi_gate {
                Some(g) => {
                    let g = exec.linear(&x, g, None, l)?;
                    for (u, g) in u.iter_mut().zip(g) {
                        *u *= act.apply(g);
                    }
                }
                None => u.iter_mut().for_each(|u| *u = act.apply(*u)),
            }
            nn::add_into(&mut h, &exec.linear(&u, &b.wo, None, l)?);
        }
        let out = nn::rms_norm(&h, &self.final_ln.data, c.eps);
        Tensor::new(vec![l, d], out)
    }
}

/// Ids must index the vocabulary and the mask must match them.
pub(crate) fn check_ids(ids: &[u32], mask: &[f32], vocab: usize, what: &str) -> Result<()> {
    if mask.len() != ids.len() {
        return Err(Error::shape(
            format!("{what} encoder mask"),
            format!("{} entries (one per id)", ids.len()),
            mask.len(),
        ));
    }
    if let Some(&bad) = ids.iter().find(|&&i| i as usize >= vocab) {
        return Err(Error::Invalid(format!(
            "{what} encoder: token id {bad}: expected an id below the vocabulary size {vocab}"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// T5's default 32 buckets over distance 128, worked by hand from transformers' formula:
    /// 8 exact buckets per direction, then `8 + floor(ln(n/8) / ln(16) * 8)`, capped at 15;
    /// keys after the query (rel > 0) use the upper half.
    #[test]
    fn buckets_of_t5_defaults() {
        let b = |rel| relative_bucket(rel, 32, 128);
        assert_eq!([b(0), b(-1), b(-7), b(1), b(7)], [0, 1, 7, 17, 23]);
        // ln(10/8)/ln(16)*8 = 0.64; ln(20/8)/ln(16)*8 = 2.64; ln(64/8)/ln(16)*8 = 6.
        assert_eq!([b(-8), b(-10), b(-20), b(64)], [8, 8, 10, 30]);
        assert_eq!([b(-128), b(-1000), b(1000)], [15, 15, 31]);
    }

    #[test]
    fn feed_forward_names_round_trip() {
        for name in [
            "relu",
            "gelu",
            "gelu_new",
            "silu",
            "gated-gelu",
            "gated-relu",
            "gated-silu",
        ] {
            let f = FeedForward::parse(name).unwrap();
            assert_eq!(FeedForward::parse(&f.name()), Some(f), "{name}");
        }
        assert_eq!(FeedForward::parse("gated-gelu").unwrap().act, Act::GeluTanh);
        assert_eq!(FeedForward::parse("gelu").unwrap().act, Act::Gelu);
        assert!(FeedForward::parse("swiglu").is_none());
    }
}
