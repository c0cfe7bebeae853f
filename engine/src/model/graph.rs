//! The static graph of StreamDiT (docs/streamdit.md sections 2-4): every tensor with its shape and
//! every op in execution order. It is a description only: the CPU backend interprets it, the
//! CUDA backend lowers it to launches over one arena, and `plan` counts its FLOPs and bytes.
//!
//! Two op lists share one tensor table: `prompt_ops` turn the text into the context and
//! every layer's cross-attention K/V (once per prompt), `call_ops` run one model call.
//! Classifier-free guidance batches its two branches: tokens of branch `b` occupy rows
//! `[b*N, (b+1)*N)` of every per-token tensor; branch 0 is the prompt, branch 1 the
//! negative prompt.

use super::profile::ModelConfig;

/// Index of a tensor in [`Graph::tensors`].
pub type TensorId = usize;

/// Where a tensor's values come from and how long they live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Bound by the caller: `x` and `tau` per call, `text` and `text_mask` per prompt.
    Input,
    /// A checkpoint tensor; its name is the checkpoint name.
    Weight,
    /// Written by `prompt_ops`, read by every call (the context's K/V).
    Persistent,
    /// Scratch within one op list.
    Activation,
    /// The result of `call_ops` (`v`).
    Output,
}

/// How a device backend stores a tensor. The CPU backend computes everything in f32; the
/// GPU path keeps weights and GEMM inputs in f16 and the residual stream, the time
/// embedding, the modulation vectors, the latents, `tau`, the mask and the output in f32.
/// The text input, a GEMM operand, is f16 on a device (the host converts it on upload).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precision {
    F16,
    F32,
}

impl Precision {
    pub fn bytes(self) -> usize {
        match self {
            Precision::F16 => 2,
            Precision::F32 => 4,
        }
    }
}

/// One tensor of the graph.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorDesc {
    pub name: String,
    pub shape: Vec<usize>,
    pub kind: Kind,
    pub precision: Precision,
}

impl TensorDesc {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// Bytes on a device.
    pub fn bytes(&self) -> usize {
        self.numel() * self.precision.bytes()
    }
}

/// One operation. Shapes are those of the referenced tensors; `T` is a token count.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    /// `x [F, C, H, W]` to tokens `out [F*Ht*Wt, C*4]`, entry `(c*2 + a)*2 + b` of token
    /// `(f, i, j)` being `x[f, c, 2i+a, 2j+b]`.
    Patchify { x: TensorId, out: TensorId },
    /// `out[t] = w x[t] + b` with `w [N, K]` (PyTorch layout), `x [T, K]`, `out [T, N]`.
    Linear {
        x: TensorId,
        w: TensorId,
        b: Option<TensorId>,
        out: TensorId,
    },
    /// `h[n] += pos_t[f] + pos_h[i] + pos_w[j]` for token `n = (f*Ht + i)*Wt + j`.
    AddPositions {
        h: TensorId,
        pos_t: TensorId,
        pos_h: TensorId,
        pos_w: TensorId,
    },
    /// `out [B*T, D]` holds `B` copies of `x [T, D]`.
    Repeat { x: TensorId, out: TensorId },
    /// Sinusoidal embedding of `1000 * tau[f]`: `out [F, 256] = [cos(s w_k), sin(s w_k)]`.
    TimestepEmbed { tau: TensorId, out: TensorId },
    /// `out = SiLU(x)` elementwise.
    Silu { x: TensorId, out: TensorId },
    /// `out = GELU_tanh(x)` elementwise.
    GeluTanh { x: TensorId, out: TensorId },
    /// Per-frame modulation vectors `out [F, k, D]`: `out[f][i] = src[f][i] + table[i]` when
    /// `src` is `[F, k*D]`, or `src[f] + table[i]` when `src` is `[F, D]`.
    Modulation {
        src: TensorId,
        table: TensorId,
        out: TensorId,
    },
    /// `out = LN(x)` per row (no affine).
    LayerNorm { x: TensorId, out: TensorId },
    /// `out[t] = LN(x[t]) * (1 + mods[f][scale]) + mods[f][shift]`, `f` the frame of token `t`.
    AdaLn {
        x: TensorId,
        mods: TensorId,
        shift: usize,
        scale: usize,
        out: TensorId,
    },
    /// In place: columns `[offset, offset + heads*dh)` of `x [T, cols]`, per head of `dh`
    /// entries, become `RMS(u) * gain` with `gain [dh]`.
    HeadRmsNorm {
        x: TensorId,
        offset: usize,
        heads: usize,
        gain: TensorId,
    },
    /// Window self-attention (docs/streamdit.md section 3) of `qkv [B*N, 3D]` into `out [B*N, D]`.
    WindowAttention {
        qkv: TensorId,
        out: TensorId,
        heads: usize,
        window: [usize; 3],
        shift: [usize; 3],
    },
    /// Cross-attention of `q [B*N, D]` to `kv [B*Lt, 2D]` (keys are columns `[0, D)`),
    /// over the text tokens whose `mask [B*Lt]` is 1, into `out [B*N, D]`.
    CrossAttention {
        q: TensorId,
        kv: TensorId,
        mask: TensorId,
        out: TensorId,
        heads: usize,
    },
    /// `h[t] += mods[f][gate] * y[t]`, `f` the frame of token `t`.
    GatedResidual {
        h: TensorId,
        y: TensorId,
        mods: TensorId,
        gate: usize,
    },
    /// `h += y`.
    Residual { h: TensorId, y: TensorId },
    /// `out[t] = SiLU(x[t][..Dff]) * x[t][Dff..]` for `x [T, 2*Dff]`, `out [T, Dff]`.
    SwiGlu { x: TensorId, out: TensorId },
    /// Tokens `x [B*N, C*4]` back to `out [B, F, C, H, W]` (inverse of `Patchify`).
    Unpatchify { x: TensorId, out: TensorId },
    /// `out = v[1] + scale * (v[0] - v[1])` for `v [2, ...]`: classifier-free guidance.
    Guidance {
        v: TensorId,
        scale: f32,
        out: TensorId,
    },
    // The ops below were added for the Wan family (docs/wan.md section 2); a call graph
    // holding them also binds `pos` and reads a KV cache (`model/wan/graph.rs`).
    /// Wan's timestep embedding of `t [F]` (0..1000 scale, taken as given) into `out [F, w]`:
    /// with `half = w/2`, `out[f][k] = cos(t[f] w_k)`, `out[f][half+k] = sin(t[f] w_k)`,
    /// `w_k = 10000^(-k/half)`, argument, cos and sin in f64, rounded once.
    Sinusoid { t: TensorId, out: TensorId },
    /// `out[r] = x[r]` for rows whose `mask [R]` is 1, zeros where it is 0 (`x [R, C]`).
    MaskRows {
        x: TensorId,
        mask: TensorId,
        out: TensorId,
    },
    /// `out = LN(x) * weight + bias` per row (LayerNorm with affine, eps 1e-6).
    AffineLayerNorm {
        x: TensorId,
        weight: TensorId,
        bias: TensorId,
        out: TensorId,
    },
    /// In place 3-D RoPE of `x [F*Hp*Wp, heads*dh]` (docs/wan.md section 4): token
    /// `n = (f*Hp + i)*Wp + j` sits at `(pos[f], i, j)` with `pos [F]` absolute latent frame
    /// indices; channel pair `m` of each head is `(2m, 2m+1)`, the first `pairs[0]` pairs
    /// turn with the frame (`omega = 10000^(-m/pairs[0])`), the next `pairs[1]` with the row,
    /// the last `pairs[2]` with the column (`10000^(-m'/pairs[1])` each); angles in f64,
    /// `(x0, x1) -> (x0 cos - x1 sin, x0 sin + x1 cos)`.
    Rope3d {
        x: TensorId,
        pos: TensorId,
        heads: usize,
        pairs: [usize; 3],
        grid: [usize; 2],
    },
    /// Self-attention of the call's queries `q [F*P, D]` (rotated) over the frames the KV
    /// cache `cache_k`, `cache_v` (`[Wf*P, D]` each, keys stored rotated) held when the call
    /// began, then the call's own frames `[skip, F)` of `k`, `v [F*P, D]`; no mask, scale
    /// `1/sqrt(dh)`, `heads` heads of `dh` consecutive channels, into `out [F*P, D]`.
    CacheAttention {
        q: TensorId,
        k: TensorId,
        v: TensorId,
        cache_k: TensorId,
        cache_v: TensorId,
        out: TensorId,
        heads: usize,
        skip: usize,
    },
    /// In a committing call (the timestep-0 pass of a chunk, a re-cache), the call's frames
    /// `[skip, F)` of `k` (rotated) and `v` become the cache's newest frames once the call
    /// ends; attention ops of the same call never see them as cached frames. A denoising
    /// call skips it.
    CacheWrite {
        k: TensorId,
        v: TensorId,
        cache_k: TensorId,
        cache_v: TensorId,
        skip: usize,
    },
    /// Unmasked cross-attention of `q [T, D]` to every row of `k`, `v [Lt, D]`, scale
    /// `1/sqrt(dh)`, into `out [T, D]`.
    TextAttention {
        q: TensorId,
        k: TensorId,
        v: TensorId,
        out: TensorId,
        heads: usize,
    },
    /// Tokens `x [F*Hp*Wp, 4C]` whose entries are ordered `(a, b, ch)` (Wan's head) to
    /// `out [F, C, H, W]`: `out[f, ch, 2i+a, 2j+b] = x[n, (a*2 + b)*C + ch]`.
    UnpatchifyPacked { x: TensorId, out: TensorId },
}

impl Op {
    /// Every tensor the op reads or writes.
    pub fn tensors(&self) -> Vec<TensorId> {
        match *self {
            Op::Patchify { x, out }
            | Op::Repeat { x, out }
            | Op::Silu { x, out }
            | Op::GeluTanh { x, out }
            | Op::LayerNorm { x, out }
            | Op::SwiGlu { x, out }
            | Op::Unpatchify { x, out } => vec![x, out],
            Op::TimestepEmbed { tau, out } => vec![tau, out],
            Op::Linear { x, w, b, out } => [vec![x, w, out], b.into_iter().collect()].concat(),
            Op::AddPositions {
                h,
                pos_t,
                pos_h,
                pos_w,
            } => vec![h, pos_t, pos_h, pos_w],
            Op::Modulation { src, table, out } => vec![src, table, out],
            Op::AdaLn { x, mods, out, .. } => vec![x, mods, out],
            Op::HeadRmsNorm { x, gain, .. } => vec![x, gain],
            Op::WindowAttention { qkv, out, .. } => vec![qkv, out],
            Op::CrossAttention {
                q, kv, mask, out, ..
            } => vec![q, kv, mask, out],
            Op::GatedResidual { h, y, mods, .. } => vec![h, y, mods],
            Op::Residual { h, y } => vec![h, y],
            Op::Guidance { v, out, .. } => vec![v, out],
            Op::Sinusoid { t, out } => vec![t, out],
            Op::UnpatchifyPacked { x, out } => vec![x, out],
            Op::MaskRows { x, mask, out } => vec![x, mask, out],
            Op::AffineLayerNorm {
                x,
                weight,
                bias,
                out,
            } => vec![x, weight, bias, out],
            Op::Rope3d { x, pos, .. } => vec![x, pos],
            Op::CacheAttention {
                q,
                k,
                v,
                cache_k,
                cache_v,
                out,
                ..
            } => vec![q, k, v, cache_k, cache_v, out],
            Op::CacheWrite {
                k,
                v,
                cache_k,
                cache_v,
                ..
            } => vec![k, v, cache_k, cache_v],
            Op::TextAttention { q, k, v, out, .. } => vec![q, k, v, out],
        }
    }
}

impl Op {
    /// The tensor the op writes (updated in place for residual and norm ops).
    pub fn output(&self) -> TensorId {
        match *self {
            Op::Patchify { out, .. }
            | Op::Linear { out, .. }
            | Op::Repeat { out, .. }
            | Op::TimestepEmbed { out, .. }
            | Op::Silu { out, .. }
            | Op::GeluTanh { out, .. }
            | Op::Modulation { out, .. }
            | Op::LayerNorm { out, .. }
            | Op::AdaLn { out, .. }
            | Op::WindowAttention { out, .. }
            | Op::CrossAttention { out, .. }
            | Op::SwiGlu { out, .. }
            | Op::Unpatchify { out, .. }
            | Op::Guidance { out, .. }
            | Op::Sinusoid { out, .. }
            | Op::MaskRows { out, .. }
            | Op::AffineLayerNorm { out, .. }
            | Op::CacheAttention { out, .. }
            | Op::TextAttention { out, .. }
            | Op::UnpatchifyPacked { out, .. } => out,
            Op::AddPositions { h, .. } | Op::GatedResidual { h, .. } | Op::Residual { h, .. } => h,
            Op::HeadRmsNorm { x, .. } | Op::Rope3d { x, .. } => x,
            Op::CacheWrite { cache_k, .. } => cache_k,
        }
    }

    /// Whether the op updates its output in place (reads its old values).
    pub fn in_place(&self) -> bool {
        matches!(
            self,
            Op::AddPositions { .. }
                | Op::GatedResidual { .. }
                | Op::Residual { .. }
                | Op::HeadRmsNorm { .. }
                | Op::Rope3d { .. }
                | Op::CacheWrite { .. }
        )
    }

    /// Whether the op reads or writes a KV cache (its executor needs the cache's state).
    pub fn uses_cache(&self) -> bool {
        matches!(self, Op::CacheAttention { .. } | Op::CacheWrite { .. })
    }
}

/// The tensors a caller binds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Inputs {
    /// Latents `[F, C, H, W]`.
    pub x: TensorId,
    /// Noise level per frame `[F]`.
    pub tau: TensorId,
    /// Text embeddings of every branch `[B*Lt, Dtxt]`.
    pub text: TensorId,
    /// Text mask of every branch `[B*Lt]`.
    pub text_mask: TensorId,
}

/// The static graph of one StreamDiT model call, plus its per-prompt preparation.
#[derive(Debug, Clone, PartialEq)]
pub struct Graph {
    pub config: ModelConfig,
    /// Branches per call: 1, or 2 with classifier-free guidance.
    pub batch: usize,
    pub tensors: Vec<TensorDesc>,
    pub prompt_ops: Vec<Op>,
    pub call_ops: Vec<Op>,
    pub inputs: Inputs,
    /// `v [F, C, H, W]`.
    pub output: TensorId,
}

impl Graph {
    /// The graph of `m`; `guidance != 1` batches two branches and combines them.
    pub fn build(m: &ModelConfig, guidance: f32) -> Graph {
        super::streamdit::graph::build(m, guidance)
    }

    pub fn tensor(&self, id: TensorId) -> &TensorDesc {
        &self.tensors[id]
    }

    /// Frame of token row `t` in a per-token tensor (any branch).
    pub fn frame_of_token(&self, t: usize) -> usize {
        (t % self.config.tokens()) / self.config.tokens_per_frame()
    }
}
