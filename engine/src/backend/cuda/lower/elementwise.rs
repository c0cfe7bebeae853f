//! Elementwise and layout ops on `kernels/cuda/elementwise.cu`.

use streamdit_kernels::elementwise as ew;

use super::ctx::At;
use super::step::{kernel_err, launch_step, Params, Step, Trace};
use super::{describe, fused_with_previous, latent_shape};
use crate::error::{Error, Result};
use crate::model::graph::Op;

/// Latents to patch tokens. Returns how many ops it lowered.
pub(super) fn patchify(at: &At, out: &mut Vec<Step>) -> Result<usize> {
    let Op::Patchify { x, out: p } = at.ops[at.i] else {
        return Err(at.misrouted());
    };
    let cx = at.cx;
    let label = at.label.clone();
    let m = &cx.graph.config;
    let err = kernel_err(at.label.clone());
    let [f, c, h, w] = latent_shape(m);
    let batch = cx.shape(p)[0] / m.tokens();
    let config = ew::patchify_config(f, c, h, w, batch).map_err(&err)?;
    let params = Params::Patchify(ew::PatchifyParams {
        x: cx.f32(x, "latents")? as *const f32,
        out: cx.f16(p, "patches")?,
        frames: f as i32,
        c: c as i32,
        h: h as i32,
        w: w as i32,
        batch: batch as i32,
    });
    out.push(launch_step(
        label,
        "elementwise",
        ew::KERNEL_PATCHIFY,
        config,
        params,
    ));
    Ok(1)
}

/// The learned positional embeddings added to the residual stream. Returns how many ops it lowered.
pub(super) fn add_positions(at: &At, out: &mut Vec<Step>) -> Result<usize> {
    let Op::AddPositions {
        h,
        pos_t,
        pos_h,
        pos_w,
    } = at.ops[at.i]
    else {
        return Err(at.misrouted());
    };
    let cx = at.cx;
    let label = at.label.clone();
    let m = &cx.graph.config;
    let err = kernel_err(at.label.clone());
    let (rows, d) = cx.dims2(h)?;
    let [ft, ht, wt] = m.token_grid();
    let config = ew::add_positions_config(rows, d, ft, ht, wt).map_err(&err)?;
    let params = Params::AddPositions(ew::AddPositionsParams {
        h: cx.f32(h, "residual stream")?,
        pos_t: cx.f16(pos_t, "positions")? as *const u16,
        pos_h: cx.f16(pos_h, "positions")? as *const u16,
        pos_w: cx.f16(pos_w, "positions")? as *const u16,
        rows: rows as i32,
        d: d as i32,
        tokens: m.tokens() as i32,
        ht: ht as i32,
        wt: wt as i32,
    });
    out.push(launch_step(
        label,
        "elementwise",
        ew::KERNEL_ADD_POSITIONS,
        config,
        params,
    ));
    Ok(1)
}

/// Copies of a tensor for the guidance branches (device-to-device copies). Returns how many ops it lowered.
pub(super) fn repeat(at: &At, out: &mut Vec<Step>) -> Result<usize> {
    let Op::Repeat { x, out: y } = at.ops[at.i] else {
        return Err(at.misrouted());
    };
    let cx = at.cx;
    let label = at.label.clone();
    let g = cx.graph;
    let bytes = g.tensor(x).bytes();
    if g.tensor(y).bytes() % bytes != 0 || g.tensor(x).precision != g.tensor(y).precision {
        return Err(Error::Invalid(format!(
            "{label}: `{}` is not a whole number of copies of `{}`",
            cx.name(y),
            cx.name(x)
        )));
    }
    for copy in 0..g.tensor(y).bytes() / bytes {
        out.push(Step::Copy {
            label: format!("{label} (copy {copy})"),
            src: cx.offset(x),
            dst: cx.offset(y) + copy * bytes,
            bytes,
            trace: Trace::default(),
        });
    }
    Ok(1)
}

/// The sinusoidal timestep features of every frame. Returns how many ops it lowered.
pub(super) fn timestep_embed(at: &At, out: &mut Vec<Step>) -> Result<usize> {
    let Op::TimestepEmbed { tau, out: e } = at.ops[at.i] else {
        return Err(at.misrouted());
    };
    let cx = at.cx;
    let label = at.label.clone();
    let err = kernel_err(at.label.clone());
    let f = cx.shape(tau)[0];
    let config = ew::timestep_features_config(f).map_err(&err)?;
    let params = Params::TimestepFeatures(ew::TimestepFeaturesParams {
        tau: cx.f32(tau, "tau")? as *const f32,
        out: cx.f16(e, "timestep features")?,
        frames: f as i32,
    });
    out.push(launch_step(
        label,
        "elementwise",
        ew::KERNEL_TIMESTEP_FEATURES,
        config,
        params,
    ));
    Ok(1)
}

/// SiLU or GELU-tanh, f32 in, f16 out. Returns how many ops it lowered.
pub(super) fn activation(at: &At, out: &mut Vec<Step>) -> Result<usize> {
    let (Op::Silu { x, out: y } | Op::GeluTanh { x, out: y }) = at.ops[at.i] else {
        return Err(at.misrouted());
    };
    let cx = at.cx;
    let label = at.label.clone();
    let g = cx.graph;
    let err = kernel_err(at.label.clone());
    let op = &at.ops[at.i];
    let kernel = if matches!(op, Op::Silu { .. }) {
        ew::KERNEL_SILU
    } else {
        ew::KERNEL_GELU_TANH
    };
    let n = g.tensor(x).numel();
    let config = ew::elementwise_config(kernel, n).map_err(&err)?;
    let params = Params::Activation(ew::ActivationParams {
        x: cx.f32(x, "activation input")? as *const f32,
        out: cx.f16(y, "activation output")?,
        n: n as i64,
    });
    out.push(launch_step(label, "elementwise", kernel, config, params));
    Ok(1)
}

/// The per-frame adaLN modulation vectors. Returns how many ops it lowered.
pub(super) fn modulation(at: &At, out: &mut Vec<Step>) -> Result<usize> {
    let Op::Modulation { src, table, out: y } = at.ops[at.i] else {
        return Err(at.misrouted());
    };
    let cx = at.cx;
    let label = at.label.clone();
    let err = kernel_err(at.label.clone());
    let &[f, k, d] = cx.shape(y) else {
        return Err(Error::Invalid(format!("{label}: output must be [F, k, D]")));
    };
    let src_k = cx.shape(src)[1] / d;
    let config = ew::modulation_config(f, k, d, src_k).map_err(&err)?;
    let params = Params::Modulation(ew::ModulationParams {
        src: cx.f32(src, "modulation source")? as *const f32,
        table: cx.f16(table, "modulation table")? as *const u16,
        out: cx.f32(y, "modulation")?,
        frames: f as i32,
        k: k as i32,
        d: d as i32,
        src_k: src_k as i32,
    });
    out.push(launch_step(
        label,
        "elementwise",
        ew::KERNEL_MODULATION,
        config,
        params,
    ));
    Ok(1)
}

/// Tokens back to latents, with classifier-free guidance fused when it follows. Returns how many ops it lowered.
pub(super) fn unpatchify(at: &At, out: &mut Vec<Step>) -> Result<usize> {
    let Op::Unpatchify { x, out: y } = at.ops[at.i] else {
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
    let [f, c, h, w] = latent_shape(m);
    let batch = g.batch;
    let (target, guidance, used) = match next.filter(|_| fused_with_previous(ops, i + 1)) {
        Some(&Op::Guidance { v, scale, out: z }) if v == y => (z, scale, 2),
        _ => (y, 1.0, 1),
    };
    let combine = used == 2;
    let config = ew::unpatchify_config(f, c, h, w, batch, combine).map_err(&err)?;
    let params = Params::Unpatchify(ew::UnpatchifyParams {
        x: cx.f32(x, "model output tokens")? as *const f32,
        out: cx.f32(target, "velocity")?,
        frames: f as i32,
        c: c as i32,
        h: h as i32,
        w: w as i32,
        batch: batch as i32,
        combine: combine as i32,
        guidance,
    });
    let label = if combine {
        format!("{label} + {}", describe(cx, &ops[i + 1]))
    } else {
        label
    };
    out.push(launch_step(
        label,
        "elementwise",
        ew::KERNEL_UNPATCHIFY,
        config,
        params,
    ));
    Ok(used)
}
