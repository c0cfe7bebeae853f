//! Lowering: the model graph's op lists become static lists of device operations over the
//! memory plan's addresses.
//!
//! The graph is written op by op, as the CPU backend executes it; the GPU fuses where a
//! kernel does two ops in one pass over memory:
//!
//! | graph ops | launch |
//! |---|---|
//! | `Linear` + `GatedResidual` | `gemm_gated_residual` (`h += g[frame] * (a W^T + b)`) |
//! | `Linear` + `Residual` | `gemm_gated_residual` without a gate |
//! | `Linear` + `SwiGlu` | `gemm_swiglu` |
//! | `Linear` (f16 / f32 out) | `gemm_bias_f16` / `gemm_bias_f32` |
//! | `HeadRmsNorm` + `WindowAttention` / `CrossAttention` | the attention kernel, norms fused at load |
//! | `Unpatchify` + `Guidance` | `unpatchify` with classifier-free guidance fused |
//! | `LayerNorm`, `AdaLn` | `adaln_*` (a null modulation for plain LN) |
//! | `LayerNorm` / `AdaLn` + `Linear`, on 9.0 | `ln_stats_*` + `gemm_sm90_ln_*` ([`prologue`]) |
//! | `Repeat` | device-to-device copies |
//!
//! The memory plan is made for the unfused graph, so the outputs that fusion skips (the
//! linear results before a residual or SwiGLU) keep their arena slots unused: the arena is
//! an upper bound of what the fused list needs. Any op sequence without a lowering is an
//! error naming the op, never a silent fallback.
//!
//! One file per kernel family ([`gemm`], [`attention`], [`norm`], [`elementwise`]) lowers
//! the ops its kernels compute; [`step`] holds the lowered lists as data and runs them.

mod attention;
mod ctx;
mod elementwise;
mod gemm;
mod norm;
pub mod prologue;
mod step;
pub mod wan;
mod wan_layout;
pub mod wan_sm90;
mod window_sm90;

pub use self::prologue::{device_folds, fold_prologues, PrologueFold};
pub use self::window_sm90::select_window_attention;

use std::collections::HashMap;

use self::ctx::{At, Ctx};
use crate::backend::cuda::device::DeviceBuffer;
use crate::cost::launches::Fold;
use crate::error::{Error, Result};
use crate::memory::{Fusion, MemoryPlan, OpList};
use crate::model::graph::{Graph, Op, TensorId};

pub use self::step::{
    euler_step, noise_fill, resolve, resolve_folding, run, run_captured, select_gemm,
    DeviceParams, Lowered, Params, Step, Trace,
};

/// Whether op `i` runs in the launch of op `i - 1` (the fusions in the module docs): the
/// memory plan keeps the tensors of both live together.
pub fn fused_with_previous(ops: &[Op], i: usize) -> bool {
    if i == 0 || i >= ops.len() {
        return false;
    }
    match (&ops[i - 1], &ops[i]) {
        (Op::Linear { out, .. }, Op::GatedResidual { y, .. })
        | (Op::Linear { out, .. }, Op::Residual { y, .. }) => y == out,
        (Op::Linear { out, b, .. }, Op::SwiGlu { x, .. }) => x == out && b.is_none(),
        (Op::Unpatchify { out, .. }, Op::Guidance { v, .. }) => v == out,
        _ => false,
    }
}

/// The launches of `graph`'s op lists, for [`MemoryPlan::build_fused`]: the epilogue fusions
/// of [`fused_with_previous`], and each norm that compute capability 9.0 folds into the next
/// GEMM's prologue ([`prologue`]) with that GEMM, so the norm's inputs (the residual stream,
/// the modulation) stay live while the GEMM reads them on any device.
pub fn fusion(graph: &Graph) -> Fusion {
    let prompt = prologue::candidates(graph, &graph.prompt_ops);
    let call = prologue::candidates(graph, &graph.call_ops);
    Fusion::from_predicate(graph, |list, i| {
        let (ops, folds) = match list {
            OpList::Prompt => (&graph.prompt_ops, &prompt),
            OpList::Call => (&graph.call_ops, &call),
        };
        fused_with_previous(ops, i) || (i > 0 && folds.contains_key(&(i - 1)))
    })
}

/// Where each op of the call list runs on the device, for `plan`'s launch roofline
/// ([`device_folds`] of the call list; the prologue folds of compute capability 9.0 are
/// `cost::launches::with_prologues` on top).
pub fn device_call_folds(graph: &Graph) -> Vec<Fold> {
    device_folds(&graph.call_ops)
}

/// The gains of the per-head RMS norms waiting for their attention op, by `(tensor, column
/// offset)`.
type Norms = HashMap<(TensorId, usize), TensorId>;

/// Lowers both op lists of `graph` for the model allocation `mem` laid out by `plan`.
pub fn lower(graph: &Graph, plan: &MemoryPlan, mem: DeviceBuffer<u8>) -> Result<Lowered> {
    let cx = Ctx {
        graph,
        plan,
        base: mem.addr(),
    };
    if (plan.peak_bytes() as usize) > mem.len() {
        return Err(Error::Invalid(format!(
            "lowering: the model allocation holds {} bytes; the plan needs {}",
            mem.len(),
            plan.peak_bytes()
        )));
    }
    let mut prompt_norms = Norms::new();
    let (prompt, prompt_folds) = lower_list(
        &cx,
        OpList::Prompt,
        &graph.prompt_ops,
        &mut prompt_norms,
        None,
    )?;
    let mut call_norms = Norms::new();
    let (call, call_folds) = lower_list(
        &cx,
        OpList::Call,
        &graph.call_ops,
        &mut call_norms,
        Some(&prompt_norms),
    )?;
    // Norms of the prompt list are consumed by the call's cross-attention.
    if let Some(((id, _), _)) = call_norms.iter().next() {
        return Err(Error::Invalid(format!(
            "lowering: the per-head RMS norm of `{}` has no attention op to fuse into",
            cx.name(*id)
        )));
    }
    Ok(Lowered {
        prompt,
        call,
        prompt_folds,
        call_folds,
    })
}

fn lower_list(
    cx: &Ctx,
    list: OpList,
    ops: &[Op],
    norms: &mut Norms,
    prompt_norms: Option<&Norms>,
) -> Result<(Vec<Step>, Vec<PrologueFold>)> {
    let mut out: Vec<Step> = Vec::new();
    let candidates = prologue::candidates(cx.graph, ops);
    let mut folds = Vec::new();
    // Steps from `tagged` on were made for ops up to `i - 1`.
    let mut tagged = 0;
    let tag = |steps: &mut [Step], last: usize| {
        for s in steps {
            s.set_trace(Trace {
                op: last,
                output: ops[last].output(),
            });
        }
    };
    let mut i = 0;
    while i < ops.len() {
        if i > 0 {
            tag(&mut out[tagged..], i - 1);
            tagged = out.len();
        }
        let at = At {
            cx,
            ops,
            i,
            label: format!("{list:?} op {i}: {}", describe(cx, &ops[i])),
            prompt_norms,
        };
        if let Some(&input) = candidates.get(&i) {
            folds.push(PrologueFold {
                step: out.len(),
                input,
            });
        }
        i += match ops[i] {
            Op::Linear { .. } => gemm::linear(&at, &mut out)?,
            Op::Patchify { .. } => elementwise::patchify(&at, &mut out)?,
            Op::AddPositions { .. } => elementwise::add_positions(&at, &mut out)?,
            Op::Repeat { .. } => elementwise::repeat(&at, &mut out)?,
            Op::TimestepEmbed { .. } => elementwise::timestep_embed(&at, &mut out)?,
            Op::Silu { .. } | Op::GeluTanh { .. } => elementwise::activation(&at, &mut out)?,
            Op::Modulation { .. } => elementwise::modulation(&at, &mut out)?,
            Op::LayerNorm { .. } | Op::AdaLn { .. } => norm::layer_norm(&at, &mut out)?,
            Op::HeadRmsNorm { .. } => norm::head_rms_norm(&at, norms)?,
            Op::WindowAttention { .. } => attention::window_attention(&at, &mut out, norms)?,
            Op::CrossAttention { .. } => attention::cross_attention(&at, &mut out, norms)?,
            Op::Unpatchify { .. } => elementwise::unpatchify(&at, &mut out)?,
            Op::GatedResidual { .. }
            | Op::Residual { .. }
            | Op::SwiGlu { .. }
            | Op::Guidance { .. } => {
                return Err(Error::Invalid(format!(
                    "{}: the GPU computes this op only fused with the op before it \
                     (a linear layer, or unpatchify for guidance)",
                    at.label
                )));
            }
                    Op::Sinusoid { .. }
            | Op::MaskRows { .. }
            | Op::AffineLayerNorm { .. }
            | Op::Rope3d { .. }
            | Op::CacheAttention { .. }
            | Op::CacheWrite { .. }
            | Op::TextAttention { .. }
            | Op::UnpatchifyPacked { .. } => {
                return Err(Error::Invalid(format!(
                    "{}: the Wan family's ops are lowered from its configuration by \
                     `lower::wan` (the causal device backend), not from the op list",
                    at.label
                )));
            }
        };
    }
    if !ops.is_empty() {
        tag(&mut out[tagged..], ops.len() - 1);
    }
    Ok((out, folds))
}

fn latent_shape(m: &crate::model::ModelConfig) -> [usize; 4] {
    [
        m.latent_frames,
        m.latent_channels,
        m.latent_height,
        m.latent_width,
    ]
}

/// `Kind(output name)` for labels.
fn describe(cx: &Ctx, op: &Op) -> String {
    let kind = crate::cost::op_kind(op);
    format!("{kind} -> `{}`", cx.name(op.output()))
}
