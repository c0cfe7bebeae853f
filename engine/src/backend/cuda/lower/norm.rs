//! LayerNorm and adaLN on `kernels/cuda/adaln.cu`; per-head RMS norms handed to attention.

use streamdit_kernels::adaln;

use super::ctx::At;
use super::step::{kernel_err, launch_step, Params, Step};
use super::Norms;
use crate::error::{Error, Result};
use crate::model::graph::Op;

/// LayerNorm, or adaLN (LayerNorm + per-frame shift and scale). Returns how many ops it lowered.
pub(super) fn layer_norm(at: &At, out: &mut Vec<Step>) -> Result<usize> {
    let (Op::LayerNorm { x, out: y } | Op::AdaLn { x, out: y, .. }) = at.ops[at.i] else {
        return Err(at.misrouted());
    };
    let cx = at.cx;
    let label = at.label.clone();
    let m = &cx.graph.config;
    let err = kernel_err(at.label.clone());
    let op = &at.ops[at.i];
    let (rows, d) = cx.dims2(x)?;
    let layout = match *op {
        Op::AdaLn {
            mods, shift, scale, ..
        } => Some((
            cx.f32(mods, "modulation")? as *const f32,
            adaln::ModLayout {
                frames: m.latent_frames,
                mod_k: cx.shape(mods)[1],
                shift,
                scale,
                tokens: m.tokens(),
                tokens_per_frame: m.tokens_per_frame(),
            },
        )),
        _ => None,
    };
    let launch = adaln::config(rows, d, layout.as_ref().map(|(_, l)| l)).map_err(&err)?;
    let params = adaln::params(
        cx.f32(x, "residual stream")? as *const f32,
        cx.f16(y, "normalised")?,
        rows,
        d,
        layout.as_ref().map(|(p, l)| (*p, l)),
    );
    out.push(launch_step(
        label,
        "adaln",
        launch.kernel,
        launch.config,
        Params::AdaLn(params),
    ));
    Ok(1)
}

/// A per-head RMS norm of q or k: no launch of its own, its gain is fused into the attention op that reads the tensor. Returns how many ops it lowered.
pub(super) fn head_rms_norm(at: &At, norms: &mut Norms) -> Result<usize> {
    let Op::HeadRmsNorm {
        x,
        offset,
        heads,
        gain,
    } = at.ops[at.i]
    else {
        return Err(at.misrouted());
    };
    let cx = at.cx;
    let label = at.label.clone();
    let m = &cx.graph.config;
    if heads != m.heads || cx.shape(gain) != [m.head_dim()] {
        return Err(Error::Invalid(format!(
            "{label}: only the model's {} heads of {} can be fused into attention",
            m.heads,
            m.head_dim()
        )));
    }
    norms.insert((x, offset), gain);
    Ok(1)
}
