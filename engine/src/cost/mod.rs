//! What a graph costs on a device, without running it: FLOPs and bytes per op and per op
//! list ([`op_cost`], [`GraphCost`]), parameter counts ([`ParamCount`]), the decoder's op
//! costs ([`DecoderCost`], the Wan-family decoders' [`VideoCost`]), and a roofline prediction of a model call on a named GPU
//! ([`GpuSpec`], [`Prediction`]). Where tensors live in device memory is
//! [`crate::memory`]'s business.
//!
//! # Counting conventions
//!
//! - **Bytes** are at each tensor's device [`Precision`](super::graph::Precision) (f16
//!   weights, GEMM inputs and scratch; f32 residual stream, time embedding, modulation,
//!   inputs and output). They are *compulsory* traffic: every operand an op touches is read
//!   once and its output written once, as a perfectly tiled kernel would (GEMM tiles re-read
//!   from L2 are not HBM traffic). In-place ops read and write their output. `HeadRmsNorm`
//!   touches only its column slice; `AdaLn` and `GatedResidual` read only the rows of the
//!   modulation tensor they use. Attention never materialises its score matrix (flash style).
//! - **FLOPs**: a multiply-accumulate is 2 FLOPs. `Linear` is `2*T*K*N`; its fused bias add
//!   (`T*N`, `1/(2K)` of the GEMM) is not counted. Window attention is `4*n^2*D` per window
//!   of `n` tokens (`Q K^T` and `P V`) over the real windows of docs/streamdit.md section 3, so a
//!   shifted layer with its partial edge windows costs less than an unshifted one
//!   (docs/streamdit.md section 7's "6 TFLOP" for `streamdit-4b` counts every layer with full
//!   windows, 5.77e12; the real windows give 4.31e12). Cross-attention is `4*T*Lt*D` over
//!   all `Lt` text tokens, as a dense kernel computes them whatever the mask. The attention
//!   softmax (max, subtract, exp, sum, scale: about 5 ops per score, ~1% of the attention
//!   FLOPs at `dh = 128`) is not counted.
//! - **Norms and elementwise ops** count one FLOP per arithmetic operation per element
//!   (an FMA is 2, a transcendental such as `exp`, `tanh`, `sin` is 1; per-row reductions'
//!   `rsqrt` is not counted): `LayerNorm` 5 (sum, centred square-accumulate, subtract,
//!   scale), `AdaLn` 8 (LayerNorm, `1 + scale`, multiply, add shift), `HeadRmsNorm` 4
//!   (square-accumulate, two multiplies), `Silu` 4, `GeluTanh` 9, `SwiGlu` 5 per output,
//!   `AddPositions` 3, `Modulation` 1, `TimestepEmbed` 2, `Residual` 1, `GatedResidual` 2,
//!   `Guidance` 3. These ops are memory bound by two orders of magnitude, so the exact
//!   counts never change a roofline time.
//! - Layout ops (`Patchify`, `Unpatchify`, `Repeat`) have no FLOPs.

mod decoder;
mod dit;
pub mod launches;
mod op;
mod paths;
mod roofline;
mod video;
mod wan;

pub use decoder::{tae_op_cost, tae_op_kind, DecoderCost};
pub use dit::{
    axis_windows, op_cost, op_kind, window_sum_sq, CostSum, GraphCost, ListCost, OpClass, OpCost,
    ParamCount,
};
pub use paths::KernelPath;
pub use roofline::{video_frames_per_call, Bound, GpuSpec, OpTime, Prediction};
pub use video::VideoCost;
