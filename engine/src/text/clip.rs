//! The CLIP text encoder (OpenAI CLIP, MetaCLIP, OpenCLIP exported to transformers): token
//! and learned position embeddings, pre-norm blocks with causal self-attention, the
//! config's `hidden_act`, a final layer norm; the output is the last hidden states.

use std::path::Path;

use serde_json::{json, Value};

use super::exec::{CpuLinear, LinearExec};
use super::nn::{self, Act, AttnShape};
use super::t5::check_ids;
use super::weights::{ConfigReader, Layout, Prefix, TensorSource};
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// The numbers of a CLIP text config (`config.json`, or its `text_config` for a full
/// CLIPModel).
#[derive(Debug, Clone, PartialEq)]
pub struct ClipConfig {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub max_positions: usize,
    pub vocab_size: usize,
    pub act: Act,
    pub eps: f32,
}

impl ClipConfig {
    pub fn from_json(json: &Value, origin: &str) -> Result<ClipConfig> {
        let json = json.get("text_config").unwrap_or(json);
        let r = ConfigReader { origin, json };
        let act = match r.str_or("hidden_act", "quick_gelu")? {
            "quick_gelu" => Act::QuickGelu,
            "gelu" => Act::Gelu,
            "gelu_new" | "gelu_pytorch_tanh" => Act::GeluTanh,
            _ => {
                return Err(r.unknown(
                    "hidden_act",
                    "quick_gelu, gelu, gelu_new, gelu_pytorch_tanh",
                ))
            }
        };
        // Missing fields take transformers' CLIPTextConfig defaults, as transformers does.
        let hidden_size = r.usize_or("hidden_size", 512)?;
        let num_heads = r.usize_or("num_attention_heads", 8)?;
        if hidden_size % num_heads != 0 {
            return Err(Error::Invalid(format!(
                "{origin}: config.json: field `num_attention_heads`: expected a divisor of hidden_size {hidden_size}, found {num_heads}"
            )));
        }
        Ok(ClipConfig {
            hidden_size,
            intermediate_size: r.usize_or("intermediate_size", 2048)?,
            num_layers: r.usize_or("num_hidden_layers", 12)?,
            num_heads,
            max_positions: r.usize_or("max_position_embeddings", 77)?,
            vocab_size: r.usize_or("vocab_size", 49408)?,
            act,
            eps: r.f32_or("layer_norm_eps", 1e-5)?,
        })
    }

    pub fn to_json(&self) -> Value {
        json!({
            "architectures": ["CLIPTextModel"],
            "model_type": "clip_text_model",
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "max_position_embeddings": self.max_positions,
            "vocab_size": self.vocab_size,
            "hidden_act": match self.act {
                Act::QuickGelu => "quick_gelu",
                Act::Gelu => "gelu",
                Act::GeluTanh => "gelu_new",
                Act::Relu => "relu",
                Act::Silu => "silu",
            },
            "layer_norm_eps": self.eps,
        })
    }

    /// Every tensor name with its shape, in transformers' names.
    pub fn tensors(&self) -> Vec<(String, Vec<usize>)> {
        let (d, ff) = (self.hidden_size, self.intermediate_size);
        let mut out = vec![
            (
                "text_model.embeddings.token_embedding.weight".to_string(),
                vec![self.vocab_size, d],
            ),
            (
                "text_model.embeddings.position_embedding.weight".to_string(),
                vec![self.max_positions, d],
            ),
        ];
        for i in 0..self.num_layers {
            let p = |s: &str| format!("text_model.encoder.layers.{i}.{s}");
            for x in ["q_proj", "k_proj", "v_proj", "out_proj"] {
                out.push((p(&format!("self_attn.{x}.weight")), vec![d, d]));
                out.push((p(&format!("self_attn.{x}.bias")), vec![d]));
            }
            for n in ["layer_norm1", "layer_norm2"] {
                out.push((p(&format!("{n}.weight")), vec![d]));
                out.push((p(&format!("{n}.bias")), vec![d]));
            }
            out.push((p("mlp.fc1.weight"), vec![ff, d]));
            out.push((p("mlp.fc1.bias"), vec![ff]));
            out.push((p("mlp.fc2.weight"), vec![d, ff]));
            out.push((p("mlp.fc2.bias"), vec![d]));
        }
        out.push(("text_model.final_layer_norm.weight".to_string(), vec![d]));
        out.push(("text_model.final_layer_norm.bias".to_string(), vec![d]));
        out
    }
}

/// The layouts of a CLIP text encoder's tensors: transformers 4.x (and CLIPModel,
/// CLIPTextModelWithProjection) nest them under `text_model.`; CLIPTextModel saved by
/// transformers 5.x does not.
pub const LAYOUTS: [Prefix; 2] = [("", ""), ("text_model.", "")];

struct Linear {
    w: Tensor,
    b: Tensor,
}

impl Linear {
    fn load(src: &Layout, name: &str, out: usize, inp: usize) -> Result<Linear> {
        Ok(Linear {
            w: src.get(&format!("{name}.weight"), &[out, inp])?,
            b: src.get(&format!("{name}.bias"), &[out])?,
        })
    }

    fn apply(&self, exec: &mut dyn LinearExec, x: &[f32], t: usize) -> Result<Vec<f32>> {
        exec.linear(x, &self.w, Some(&self.b), t)
    }
}

/// An affine layer norm's weight and bias.
type Norm = Linear;

fn load_norm(src: &Layout, name: &str, d: usize) -> Result<Norm> {
    Ok(Linear {
        w: src.get(&format!("{name}.weight"), &[d])?,
        b: src.get(&format!("{name}.bias"), &[d])?,
    })
}

struct Layer {
    q: Linear,
    k: Linear,
    v: Linear,
    out: Linear,
    ln1: Norm,
    ln2: Norm,
    fc1: Linear,
    fc2: Linear,
}

/// A loaded CLIP text encoder.
pub struct ClipEncoder {
    pub config: ClipConfig,
    token: Tensor,
    position: Tensor,
    layers: Vec<Layer>,
    final_ln: Norm,
}

impl ClipEncoder {
    /// Loads the model folder `dir` (`config.json`, `model.safetensors` or shards).
    pub fn load(dir: &Path) -> Result<ClipEncoder> {
        let origin = dir.display().to_string();
        let config = ClipConfig::from_json(&super::weights::read_config(dir)?, &origin)?;
        ClipEncoder::from_source(config, &TensorSource::open(dir)?)
    }

    /// Builds the encoder from `config` and tensors in either layout transformers writes
    /// ([`LAYOUTS`]), checking every shape and the layer count against the config.
    pub fn from_source(config: ClipConfig, src: &TensorSource) -> Result<ClipEncoder> {
        let c = &config;
        let (d, ff) = (c.hidden_size, c.intermediate_size);
        let e = "text_model.embeddings";
        let src = &Layout::detect(src, &format!("{e}.token_embedding.weight"), &LAYOUTS)?;
        src.check_layers("num_hidden_layers", c.num_layers, |i| {
            format!("text_model.encoder.layers.{i}.self_attn.q_proj.weight")
        })?;
        let token = src.get(&format!("{e}.token_embedding.weight"), &[c.vocab_size, d])?;
        let position = src.get(
            &format!("{e}.position_embedding.weight"),
            &[c.max_positions, d],
        )?;
        let mut layers = Vec::with_capacity(c.num_layers);
        for i in 0..c.num_layers {
            let p = |s: &str| format!("text_model.encoder.layers.{i}.{s}");
            layers.push(Layer {
                q: Linear::load(src, &p("self_attn.q_proj"), d, d)?,
                k: Linear::load(src, &p("self_attn.k_proj"), d, d)?,
                v: Linear::load(src, &p("self_attn.v_proj"), d, d)?,
                out: Linear::load(src, &p("self_attn.out_proj"), d, d)?,
                ln1: load_norm(src, &p("layer_norm1"), d)?,
                ln2: load_norm(src, &p("layer_norm2"), d)?,
                fc1: Linear::load(src, &p("mlp.fc1"), ff, d)?,
                fc2: Linear::load(src, &p("mlp.fc2"), d, ff)?,
            });
        }
        let final_ln = load_norm(src, "text_model.final_layer_norm", d)?;
        Ok(ClipEncoder {
            config,
            token,
            position,
            layers,
            final_ln,
        })
    }

    /// The last hidden states `[L, hidden]` of token `ids` (causal; keys with `mask` 0 are
    /// ignored too).
    pub fn forward(&self, ids: &[u32], mask: &[f32]) -> Result<Tensor> {
        self.forward_with(&mut CpuLinear, ids, mask)
    }

    /// [`ClipEncoder::forward`] with the linear layers on `exec`.
    pub fn forward_with(
        &self,
        exec: &mut dyn LinearExec,
        ids: &[u32],
        mask: &[f32],
    ) -> Result<Tensor> {
        let c = &self.config;
        check_ids(ids, mask, c.vocab_size, "CLIP")?;
        let (l, d) = (ids.len(), c.hidden_size);
        if l > c.max_positions {
            return Err(Error::Invalid(format!(
                "CLIP encoder: {l} tokens: expected at most max_position_embeddings {}",
                c.max_positions
            )));
        }
        let mut h = nn::embed(&self.token, ids);
        nn::add_into(&mut h, &self.position.data[..l * d]);
        let dh = d / c.num_heads;
        for y in &self.layers {
            let x = nn::layer_norm(&h, &y.ln1.w.data, &y.ln1.b.data, c.eps);
            let a = nn::attention(
                &y.q.apply(exec, &x, l)?,
                &y.k.apply(exec, &x, l)?,
                &y.v.apply(exec, &x, l)?,
                &AttnShape {
                    len: l,
                    heads: c.num_heads,
                    head_dim: dh,
                    scale: 1.0 / (dh as f32).sqrt(),
                    key_mask: mask,
                    causal: true,
                    bias: None,
                },
            );
            nn::add_into(&mut h, &y.out.apply(exec, &a, l)?);
            let x = nn::layer_norm(&h, &y.ln2.w.data, &y.ln2.b.data, c.eps);
            let mut u = y.fc1.apply(exec, &x, l)?;
            u.iter_mut().for_each(|u| *u = c.act.apply(*u));
            nn::add_into(&mut h, &y.fc2.apply(exec, &u, l)?);
        }
        let out = nn::layer_norm(&h, &self.final_ln.w.data, &self.final_ln.b.data, c.eps);
        Tensor::new(vec![l, d], out)
    }
}
