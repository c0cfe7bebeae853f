//! Linear layers on the tensor-core GEMM kernels (`kernels/cuda/gemm.cu`).

use streamdit_kernels::gemm;

use super::ctx::At;
use super::step::{kernel_err, launch_step, Params, Step};
use super::{describe, fused_with_previous};
use crate::error::{Error, Result};
use crate::model::graph::{Op, Precision};

/// A linear layer on the tensor-core GEMM, with the residual add or SwiGLU that follows it fused into the epilogue when the fusion rules allow. Returns how many ops it lowered.
pub(super) fn linear(at: &At, out: &mut Vec<Step>) -> Result<usize> {
    let Op::Linear { x, w, b, out: y } = at.ops[at.i] else {
        return Err(at.misrouted());
    };
    let cx = at.cx;
    let ops = at.ops;
    let i = at.i;
    let label = at.label.clone();
    let m = &cx.graph.config;
    let g = cx.graph;
    let next = at.ops.get(at.i + 1);
    let err = kernel_err(at.label.clone());
    let (rows, k) = cx.dims2(x)?;
    let (n, k2) = cx.dims2(w)?;
    if k != k2 {
        return Err(Error::Invalid(format!(
            "{label}: input width {k} != weight's {k2}"
        )));
    }
    let a = cx.f16(x, "GEMM input")? as *const u16;
    let wp = cx.f16(w, "GEMM weight")? as *const u16;
    let bias = match b {
        Some(b) => cx.f16(b, "GEMM bias")? as *const u16,
        None => std::ptr::null(),
    };
    let fuse_next = fused_with_previous(ops, i + 1);
    let fused = match next.filter(|_| fuse_next) {
        // The residual add, with the per-frame gate or (cross-attention) none.
        Some(op @ (&Op::GatedResidual { h, y: yy, .. } | &Op::Residual { h, y: yy }))
            if yy == y =>
        {
            let (mods, layout) = match *op {
                Op::GatedResidual { mods, gate, .. } => (
                    cx.f32(mods, "modulation")? as *const f32,
                    Some(gemm::GateLayout {
                        frames: m.latent_frames,
                        mod_k: cx.shape(mods)[1],
                        gate,
                        tokens: m.tokens(),
                        tokens_per_frame: m.tokens_per_frame(),
                    }),
                ),
                _ => (std::ptr::null(), None),
            };
            let config = gemm::gated_residual_config(rows, n, k, layout.as_ref()).map_err(&err)?;
            let (mod_k, gate) = layout.map_or((0, 0), |l| (l.mod_k, l.gate));
            Some((
                gemm::KERNEL_GATED_RESIDUAL,
                config,
                Params::GemmGatedResidual(gemm::GemmGatedResidualParams {
                    a,
                    w: wp,
                    bias,
                    h: cx.f32(h, "residual stream")?,
                    mods,
                    m: rows as i32,
                    n: n as i32,
                    k: k as i32,
                    mod_k: mod_k as i32,
                    gate: gate as i32,
                    tokens: m.tokens() as i32,
                    tokens_per_frame: m.tokens_per_frame() as i32,
                }),
            ))
        }
        Some(&Op::SwiGlu { x: xx, out: act }) if xx == y => {
            if b.is_some() {
                return Err(Error::Invalid(format!(
                    "{label}: the fused SwiGLU GEMM takes no bias"
                )));
            }
            let dff = n / 2;
            let config = gemm::swiglu_config(rows, dff, k).map_err(&err)?;
            Some((
                gemm::KERNEL_SWIGLU,
                config,
                Params::GemmSwiglu(gemm::GemmSwigluParams {
                    a,
                    w13: wp,
                    out: cx.f16(act, "SwiGLU output")?,
                    m: rows as i32,
                    dff: dff as i32,
                    k: k as i32,
                }),
            ))
        }
        _ => None,
    };
    if let Some((name, config, params)) = fused {
        let label = format!("{label} + {}", describe(cx, &ops[i + 1]));
        out.push(launch_step(label, "gemm", name, config, params));
        return Ok(2);
    }
    let step = match g.tensor(y).precision {
        Precision::F16 => {
            let config = gemm::bias_f16_config(rows, n, k).map_err(&err)?;
            let params = Params::GemmBiasF16(gemm::GemmBiasF16Params {
                a,
                w: wp,
                bias,
                out: cx.f16(y, "GEMM output")?,
                m: rows as i32,
                n: n as i32,
                k: k as i32,
            });
            launch_step(label, "gemm", gemm::KERNEL_BIAS_F16, config, params)
        }
        Precision::F32 => {
            let config = gemm::bias_f32_config(rows, n, k).map_err(&err)?;
            let params = Params::GemmBiasF32(gemm::GemmBiasF32Params {
                a,
                w: wp,
                bias,
                out: cx.f32(y, "GEMM output")?,
                m: rows as i32,
                n: n as i32,
                k: k as i32,
            });
            launch_step(label, "gemm", gemm::KERNEL_BIAS_F32, config, params)
        }
    };
    out.push(step);
    Ok(1)
}
