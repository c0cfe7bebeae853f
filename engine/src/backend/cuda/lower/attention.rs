//! Window self-attention and cross-attention on `kernels/cuda/attention.cu`.

use streamdit_kernels::attention;

use super::ctx::At;
use super::step::{kernel_err, launch_step, Params, Step};
use super::Norms;
use crate::error::{Error, Result};
use crate::model::graph::Op;

/// Shifted window self-attention with the q/k norms fused into its loads. Returns how many ops it lowered.
pub(super) fn window_attention(at: &At, out: &mut Vec<Step>, norms: &mut Norms) -> Result<usize> {
    let Op::WindowAttention {
        qkv,
        out: o,
        heads,
        window,
        shift,
    } = at.ops[at.i]
    else {
        return Err(at.misrouted());
    };
    let cx = at.cx;
    let label = at.label.clone();
    let m = &cx.graph.config;
    let g = cx.graph;
    let err = kernel_err(at.label.clone());
    let d = m.dim;
    let (gq, gk) = match (norms.remove(&(qkv, 0)), norms.remove(&(qkv, d))) {
        (Some(q), Some(k)) => (q, k),
        _ => {
            return Err(Error::Invalid(format!(
                "{label}: the window-attention kernel fuses the q and k norms; \
                 both must precede it"
            )))
        }
    };
    let shape = attention::WindowShape {
        batch: g.batch,
        grid: m.token_grid(),
        window,
        shift,
        heads,
        head_dim: m.head_dim(),
    };
    let attention::AttnLaunch { kernel, config } =
        attention::window_config(&shape).map_err(&err)?;
    let [ft, ht, wt] = shape.grid;
    let params = attention::AttnWindowParams {
        qkv: cx.f16(qkv, "qkv")? as *const u16,
        gq: cx.f16(gq, "q norm")? as *const u16,
        gk: cx.f16(gk, "k norm")? as *const u16,
        out: cx.f16(o, "attention output")?,
        ft: ft as i32,
        ht: ht as i32,
        wt: wt as i32,
        fw: window[0] as i32,
        hw: window[1] as i32,
        ww: window[2] as i32,
        sf: shift[0] as i32,
        sh: shift[1] as i32,
        sw: shift[2] as i32,
        heads: heads as i32,
    };
    out.push(launch_step(
        label,
        "attention",
        kernel,
        config,
        Params::WindowAttention(params),
    ));
    Ok(1)
}

/// Cross-attention to the text K/V with the q norm (this list) and the k norm (the prompt list) fused. Returns how many ops it lowered.
pub(super) fn cross_attention(at: &At, out: &mut Vec<Step>, norms: &mut Norms) -> Result<usize> {
    let Op::CrossAttention {
        q,
        kv,
        mask,
        out: o,
        heads,
    } = at.ops[at.i]
    else {
        return Err(at.misrouted());
    };
    let cx = at.cx;
    let label = at.label.clone();
    let m = &cx.graph.config;
    let g = cx.graph;
    let err = kernel_err(at.label.clone());
    let prompt_norms = at.prompt_norms;
    let gq = norms.remove(&(q, 0)).ok_or_else(|| {
        Error::Invalid(format!("{label}: the q norm must precede cross-attention"))
    })?;
    let gk = prompt_norms
        .and_then(|p| p.get(&(kv, 0)))
        .copied()
        .ok_or_else(|| {
            Error::Invalid(format!(
                "{label}: the prompt list must norm the keys of `{}`",
                cx.name(kv)
            ))
        })?;
    let shape = attention::CrossShape {
        batch: g.batch,
        tokens: m.tokens(),
        text_len: m.text_len,
        heads,
        head_dim: m.head_dim(),
    };
    let attention::AttnLaunch { kernel, config } = attention::cross_config(&shape).map_err(&err)?;
    let params = attention::AttnCrossParams {
        q: cx.f16(q, "cross q")? as *const u16,
        kv: cx.f16(kv, "cross kv")? as *const u16,
        mask: cx.f32(mask, "text mask")? as *const f32,
        gq: cx.f16(gq, "q norm")? as *const u16,
        gk: cx.f16(gk, "k norm")? as *const u16,
        out: cx.f16(o, "attention output")?,
        tokens: m.tokens() as i32,
        text_len: m.text_len as i32,
        heads: heads as i32,
    };
    out.push(launch_step(
        label,
        "attention",
        kernel,
        config,
        Params::CrossAttention(params),
    ));
    Ok(1)
}
