//! The LayerNorm / adaLN prologue on compute capability 9.0: a norm whose output only the
//! next linear layer reads runs as a row-statistics pass (`adaln.cu`'s `ln_stats_*`, 8 bytes
//! a row) and that GEMM forms its A operand from the f32 residual stream itself
//! (`gemm_sm90_ln_*`, `kernels/README.md` "The LayerNorm / adaLN prologue"), so the f16
//! normalised tensor is neither written nor read.
//!
//! Where the norm's input was last written by a gated-residual GEMM (every norm of a
//! StreamDiT block but the first block's first), that GEMM's epilogue leaves the statistics
//! (`stats_out`: a mean and a sum of squared deviations per row and 128-column tile, into a
//! small buffer of the backend's, [`stats_elems`]) and the norm needs no launch at all; the
//! others (the first block's adaLN, after the positional add) keep the statistics pass.
//!
//! The lowering is written for every device: it lowers such a pair as the `adaln_*` launch
//! and the GEMM, and records the pair ([`PrologueFold`]: which step, and what the statistics
//! pass may report to a traced run). [`fold_prologues`] rewrites the recorded pairs when the
//! device has the sm_90a GEMM, before [`super::select_gemm`] turns the other GEMMs into
//! sm_90a launches and [`super::resolve`] looks the kernels up.

use std::collections::HashMap;

use streamdit_kernels::adaln::{self, ModLayout};
use streamdit_kernels::gemm::KERNEL_BIAS_GELU_F16;
use streamdit_kernels::gemm_sm90::{self, Buffers, Epilogue, LnPrologue, BLOCK_N};

use super::step::{launch_step, Params, Step, Trace};
use crate::backend::cuda::device::{backend_error, Device};
use crate::cost::launches::{with_prologues, Fold};
use crate::error::{Error, Result};
use crate::model::graph::{Graph, Op};

/// A norm lowered as its own launch (step `step` of the list) whose output only the GEMM of
/// step `step + 1` reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PrologueFold {
    pub step: usize,
    /// The op that last wrote the norm's input, and that input: the statistics pass leaves
    /// no tensor of the graph behind, so a traced run checks the input it read (unchanged,
    /// and already final) in its place.
    pub input: Trace,
}

/// Where each op of `ops` runs on a device with every fusion of the lowering: the epilogue
/// fusions of [`super::fused_with_previous`] fold into the op before, the per-head RMS
/// norms into the attention op that loads the tensor after them.
pub fn device_folds(ops: &[Op]) -> Vec<Fold> {
    (0..ops.len())
        .map(|i| match ops[i] {
            _ if super::fused_with_previous(ops, i) => Fold::IntoPrevious,
            Op::HeadRmsNorm { .. } => Fold::IntoNext,
            _ => Fold::Alone,
        })
        .collect()
}

/// The norms of `ops` that may fold into the next GEMM's prologue, by op index, with the
/// trace their statistics pass reports: those [`with_prologues`] folds whose input was
/// written by an earlier op of the same list (a norm of a list's input keeps its launch).
pub(super) fn candidates(graph: &Graph, ops: &[Op]) -> HashMap<usize, Trace> {
    let base = device_folds(ops);
    let folds = with_prologues(graph, ops, &base);
    let mut out = HashMap::new();
    for (i, op) in ops.iter().enumerate() {
        let x = match op {
            Op::LayerNorm { x, .. } | Op::AdaLn { x, .. } if folds[i] == Fold::IntoNext => *x,
            _ => continue,
        };
        if let Some(j) = (0..i).rev().find(|&j| ops[j].output() == x) {
            out.insert(i, Trace { op: j, output: x });
        }
    }
    out
}

/// f32 elements of the statistics buffer the epilogues of `graph`'s lists write for the
/// prologue GEMMs: the largest `(rows, ceil(D / 128))` pairs of any norm that may fold (0 when
/// none may).
pub fn stats_elems(graph: &Graph) -> usize {
    [&graph.prompt_ops, &graph.call_ops]
        .into_iter()
        .flat_map(|ops| {
            candidates(graph, ops)
                .into_keys()
                .map(|i| graph.tensor(ops[i].output()).shape.clone())
        })
        .map(|shape| match shape.as_slice() {
            [rows, d] => 2 * rows * gemm_sm90::residual_stats_parts(*d),
            _ => 0,
        })
        .max()
        .unwrap_or(0)
}

/// The statistics buffer: device address and f32 elements.
#[derive(Clone, Copy, Debug)]
pub struct StatsBuffer {
    pub addr: u64,
    pub elems: usize,
}

/// On compute capability 9.0, each recorded pair becomes the prologue GEMM, its statistics
/// left by the gated-residual GEMM that last wrote the norm's input (given `stats`, and no
/// other gated-residual GEMM between them) or else computed by a statistics pass in the
/// norm's place (tensor maps encoded by `dev`, persistent where the SM count is known); on
/// any other device nothing changes. Run before [`super::select_gemm`]; returns the steps
/// (indices after the rewrite) whose gated-residual GEMM must leave the statistics: once
/// they are sm_90a launches, [`leave_statistics`] sets their `stats_out`. A recorded pair
/// that is not an `adaln_*` launch followed by a bias or SwiGLU GEMM reading its output is
/// an error naming the steps.
pub fn fold_prologues<D: Device>(
    dev: &D,
    steps: &mut Vec<Step>,
    folds: &[PrologueFold],
    stats: Option<StatsBuffer>,
) -> Result<Vec<(usize, u64)>> {
    if dev.compute_capability() != (9, 0) {
        return Ok(Vec::new());
    }
    let mut producers = Vec::new();
    let mut removed = Vec::new();
    // Last first: removing a norm's step leaves the earlier recorded indices valid.
    let mut order: Vec<&PrologueFold> = folds.iter().collect();
    order.sort_by_key(|f| std::cmp::Reverse(f.step));
    for f in order {
        let (norm, gemm) = match steps.get(f.step..f.step + 2) {
            Some([a, b]) => (a.clone(), b.clone()),
            _ => {
                return Err(Error::Invalid(format!(
                    "prologue fold: step {} and the one after it are not in the list of {}",
                    f.step,
                    steps.len()
                )))
            }
        };
        let (Step::Launch {
            label: norm_label,
            params: Params::AdaLn(ln),
            ..
        }, Step::Launch {
            label: gemm_label,
            kernel_name,
            params: gemm_params,
            trace: gemm_trace,
            ..
        }) = (&norm, &gemm)
        else {
            return Err(Error::Invalid(format!(
                "prologue fold: steps `{}` and `{}` are not a norm launch and a GEMM launch",
                norm.label(),
                gemm.label()
            )));
        };
        let fail = |e: String| backend_error(dev.backend(), gemm_label.clone(), e);
        let (epi, n, k, buffers) = match *gemm_params {
            Params::GemmBiasF16(p) if *kernel_name != KERNEL_BIAS_GELU_F16 => (
                Epilogue::BiasF16,
                p.n,
                p.k,
                gemm_buffers(p.a, p.w, p.bias, p.out.cast()),
            ),
            Params::GemmBiasF32(p) => (
                Epilogue::BiasF32,
                p.n,
                p.k,
                gemm_buffers(p.a, p.w, p.bias, p.out.cast()),
            ),
            Params::GemmSwiglu(p) => (
                Epilogue::Swiglu,
                p.dff,
                p.k,
                gemm_buffers(p.a, p.w13, std::ptr::null(), p.out.cast()),
            ),
            _ => {
                return Err(fail(format!(
                    "prologue fold: `{gemm_label}` ({kernel_name}) has no LayerNorm-prologue \
                     variant"
                )))
            }
        };
        let affine = !ln.weight.is_null() || !ln.bias.is_null();
        if buffers.a != ln.out.cast_const() || k != ln.d || affine {
            return Err(fail(format!(
                "prologue fold: `{gemm_label}` does not read exactly the output of \
                 `{norm_label}` (a plain or modulated LayerNorm of width {})",
                ln.d
            )));
        }
        let (m, d) = (ln.m as usize, ln.d as usize);
        let stats_kernel = adaln::stats_config(m, d).map_err(&fail)?;
        let mods = (!ln.mods.is_null()).then(|| {
            (
                ln.mods,
                ModLayout {
                    frames: (ln.tokens / ln.tokens_per_frame.max(1)) as usize,
                    mod_k: ln.mod_k as usize,
                    shift: ln.shift as usize,
                    scale: ln.scale as usize,
                    tokens: ln.tokens as usize,
                    tokens_per_frame: ln.tokens_per_frame as usize,
                },
            )
        });
        let producer = stats.and_then(|b| {
            let parts = gemm_sm90::residual_stats_parts(d);
            let j = producer_gemm(steps, f, ln.x, d)?;
            (2 * m * parts <= b.elems).then_some((j, b.addr, parts))
        });
        let prologue = match producer {
            Some((_, addr, parts)) => LnPrologue {
                x: ln.x,
                stats: addr as *const f32,
                parts,
                part_cols: BLOCK_N as usize,
                mods,
            },
            None => LnPrologue {
                x: ln.x,
                // The pairs take the f16 output's slot (8 bytes a row of at least 16).
                stats: ln.out.cast_const().cast(),
                parts: 1,
                part_cols: d,
                mods,
            },
        };
        let n = n as usize;
        let encode = |t: &streamdit_kernels::tma::Tiled| {
            dev.encode_tensor_map(t).map_err(|e| e.to_string())
        };
        let p = gemm_sm90::ln_params(epi, m, n, d, &prologue, &buffers, encode).map_err(&fail)?;
        let config = gemm_sm90::ln_config(epi, m, n, d, &prologue, dev.multiprocessors())
            .map_err(&fail)?;
        let mut gemm_step = launch_step(
            format!("{norm_label} as the prologue of {gemm_label}"),
            "gemm_sm90",
            epi.kernel_ln().map_err(&fail)?,
            config,
            Params::GemmSm90(p),
        );
        gemm_step.set_trace(*gemm_trace);
        steps[f.step + 1] = gemm_step;
        match producer {
            Some((j, addr, _)) => {
                producers.push((j, addr));
                steps.remove(f.step);
                removed.push(f.step);
            }
            None => {
                let mut stats_step = launch_step(
                    format!("{norm_label} (row statistics for the next GEMM's prologue)"),
                    "adaln",
                    stats_kernel.kernel,
                    stats_kernel.config,
                    Params::AdaLn(adaln::params(ln.x, ln.out, m, d, None)),
                );
                stats_step.set_trace(f.input);
                steps[f.step] = stats_step;
            }
        }
    }
    // A producer's index moves down by one for each norm step removed before it.
    Ok(producers
        .into_iter()
        .map(|(j, addr)| (j - removed.iter().filter(|&&r| r < j).count(), addr))
        .collect())
}

/// Sets `stats_out` on the producing GEMMs [`fold_prologues`] named, now sm_90a launches;
/// anything else there is an error naming the step.
pub fn leave_statistics(steps: &mut [Step], producers: &[(usize, u64)]) -> Result<()> {
    for &(j, addr) in producers {
        match steps.get_mut(j) {
            Some(Step::Launch {
                params: Params::GemmSm90(q),
                kernel_name,
                label,
                ..
            }) if *kernel_name == Epilogue::GatedResidual.kernel() => {
                q.stats_out = addr as *mut f32;
                label.push_str(" (row statistics of h for the next norm)");
            }
            other => {
                return Err(Error::Invalid(format!(
                    "prologue fold: step {j} ({}) is not the sm_90a gated-residual GEMM that \
                     was to leave the row statistics",
                    other.map_or("past the list", |s| s.label())
                )))
            }
        }
    }
    Ok(())
}

/// The step that last wrote the norm's input `x` (traced as op `f.input.op`), when it is the
/// gated-residual GEMM updating `x` in place with `d` columns and no other
/// gated-residual GEMM runs between it and the norm (the statistics buffer is shared).
fn producer_gemm(steps: &[Step], f: &PrologueFold, x: *const f32, d: usize) -> Option<usize> {
    let is_residual = |s: &Step| {
        matches!(
            s,
            Step::Launch {
                params: Params::GemmGatedResidual(_),
                ..
            }
        )
    };
    let j = (0..f.step).rev().find(|&j| steps[j].trace().op == f.input.op)?;
    let Step::Launch {
        params: Params::GemmGatedResidual(p),
        ..
    } = &steps[j]
    else {
        return None;
    };
    let between_clean = !steps[j + 1..f.step].iter().any(is_residual);
    (p.h.cast_const() == x && p.n as usize == d && between_clean).then_some(j)
}

fn gemm_buffers(
    a: *const u16,
    w: *const u16,
    bias: *const u16,
    out: *mut std::ffi::c_void,
) -> Buffers {
    Buffers {
        a,
        w,
        bias,
        out,
        h: std::ptr::null_mut(),
        mods: std::ptr::null(),
    }
}
