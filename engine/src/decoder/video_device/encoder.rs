//! The encoders' ops in the lowering (docs/taehv.md "The encoder", "On the device";
//! docs/wan_vae.md "The encoder on the device"): the stride-2 3x3 convolution
//! (`conv3x3s2_f16`: padding 1 on every side for TAEHV, only after the frame for the Wan
//! VAE), TAEHV's temporal pool (`conv_tstride_f16` with `taps = stride`: the `stride` frames
//! of a group read side by side as one row of `K = stride C`, the TPool weight
//! `[C, stride C, 1, 1]` as stored) and the Wan VAE's temporal downsampling
//! (`conv_tstride_f16` with 3 taps, stride 2, over the cached frame and the chunk).

use streamdit_kernels::conv;

use super::lower::{launch, Buffers, Loc};
use super::lowering_error;
use super::vae::Env;
use crate::backend::cuda::lower::{Params, Step, Trace};
use crate::error::Result;
use crate::model::video_ops::Conv;

/// A 3x3 convolution with stride 2 of `x [t, h, w, cin]` to `out_ch` channels: with
/// padding 1 on every side (`c.pad_after` false, TAEHV's) `[t, ceil(h / 2), ceil(w / 2),
/// out_ch]`; with one zero row and column after the frame only (`c.pad_after`, the Wan
/// VAE's `ZeroPad2d((0, 1, 0, 1))`), which is the kernel's padding 0 (zeros outside, and
/// the last tap of an even side is outside), `[t, h / 2, w / 2, out_ch]`. `out_hw` is the
/// op list's output size, checked against the kernel's.
#[allow(clippy::too_many_arguments)]
pub(super) fn conv_down(
    env: &Env,
    steps: &mut Vec<Step>,
    pool: &mut Buffers,
    c: &Conv,
    x: Loc,
    t: usize,
    (h, w): (usize, usize),
    out_ch: usize,
    out_hw: (usize, usize),
) -> Result<Loc> {
    let pad = usize::from(!c.pad_after);
    let shape = conv::Conv3x3S2Shape {
        t,
        h_in: h,
        w_in: w,
        cin: x.stride,
        cout: out_ch,
        pad,
    };
    if shape.out_hw() != out_hw {
        return Err(lowering_error(format!(
            "{}: {} maps {h}x{w} to {:?} with padding {pad}; the op list says {out_hw:?}",
            env.family,
            c.name,
            shape.out_hw()
        )));
    }
    let lc = conv::conv3x3s2_launch(&shape).map_err(lowering_error)?;
    let out = pool.alloc(shape.m() * out_ch * 2);
    let bias = if c.bias {
        env.weight(&format!("{}.bias", c.name))?
    } else {
        std::ptr::null()
    };
    steps.push(launch(
        format!("{} {}", env.family, c.name),
        "conv",
        lc.kernel,
        lc.config,
        Params::Conv3x3S2(conv::Conv3x3S2Params {
            x: env.ptr(x.off),
            w: env.weight(&format!("{}.weight", c.name))?,
            bias,
            residual: std::ptr::null(),
            out: env.ptr_mut(pool.off(out)),
            t: t as i32,
            h_in: h as i32,
            w_in: w as i32,
            cin: x.stride as i32,
            cout: out_ch as i32,
            pad: pad as i32,
        }),
    ));
    Ok(Loc {
        off: pool.off(out),
        buf: Some(out),
        stride: out_ch,
    })
}

/// TAEHV's `TPool(C, stride)` of `x [t, hw, C]` (`t` a multiple of `stride`): output frame
/// `s` is the 1x1 convolution of frames `stride s .. stride s + stride - 1` side by side in
/// channels, to `out_ch` channels, no bias.
#[allow(clippy::too_many_arguments)]
pub(super) fn temporal_pool(
    env: &Env,
    steps: &mut Vec<Step>,
    pool: &mut Buffers,
    c: &Conv,
    x: Loc,
    t: usize,
    hw: usize,
    stride: usize,
    out_ch: usize,
) -> Result<Loc> {
    // The weight's input channels are `stride` groups of the activation's channels: the
    // activation must not be padded (TAEHV's width 64 is not).
    if stride == 0 || t % stride != 0 || x.stride * stride != c.cin {
        return Err(lowering_error(format!(
            "{}: {} pools {t} frames of {} channels in memory by {stride} into a {}-channel \
             input: needs whole groups of unpadded frames",
            env.family, c.name, x.stride, c.cin
        )));
    }
    let shape = conv::ConvTStrideShape {
        t_out: t / stride,
        hw,
        cin: x.stride,
        cout: out_ch,
        taps: stride,
        stride,
    };
    let lc = conv::conv_tstride_launch(&shape).map_err(lowering_error)?;
    let out = pool.alloc(shape.m() * out_ch * 2);
    let bias = if c.bias {
        env.weight(&format!("{}.bias", c.name))?
    } else {
        std::ptr::null()
    };
    steps.push(launch(
        format!("{} {}", env.family, c.name),
        "conv",
        lc.kernel,
        lc.config,
        Params::ConvTStride(conv::ConvTStrideParams {
            x: env.ptr(x.off),
            w: env.weight(&format!("{}.weight", c.name))?,
            bias,
            residual: std::ptr::null(),
            out: env.ptr_mut(pool.off(out)),
            t_out: shape.t_out as i32,
            hw: hw as i32,
            cin: x.stride as i32,
            cout: out_ch as i32,
            taps: stride as i32,
            stride: stride as i32,
        }),
    ));
    Ok(Loc {
        off: pool.off(out),
        buf: Some(out),
        stride: out_ch,
    })
}

/// The Wan VAE encoder's temporal downsampling (`VideoOp::TemporalDown`) of `x [t, hw, C]`:
/// at a stream's start frame 0 passes through (copied to output frame 0) and output frame
/// `1 + j` is `c` over frames `2j, 2j + 1, 2j + 2` of `x` itself (`t` odd); after it, output
/// frame `j` is `c` over frames `2j .. 2j + 2` of `[cache, x]` (`t` even), assembled in a
/// context buffer. Either way `c` is `conv_tstride_f16` with 3 taps and stride 2 (weight
/// packed `[C, 3, C]` as the causal 3x1x1 convolutions'), and the one-frame cache then
/// keeps `x`'s last frame.
#[allow(clippy::too_many_arguments)]
pub(super) fn temporal_down(
    env: &Env,
    steps: &mut Vec<Step>,
    pool: &mut Buffers,
    c: &Conv,
    x: Loc,
    t: usize,
    hw: usize,
    out_ch: usize,
) -> Result<Loc> {
    let family = env.family;
    let cache = c
        .cache
        .and_then(|k| env.l.caches.get(k).copied())
        .ok_or_else(|| lowering_error(format!("{family}: {} has no cache", c.name)))?;
    let first = env.first;
    // A stream's first chunk at this level has an odd frame count, every later one even.
    if t == 0 || out_ch != x.stride || (t % 2 == 1) != first {
        return Err(lowering_error(format!(
            "{family}: {} downsamples {t} frames of {} channels in memory to {out_ch} (needs \
             an odd count at a stream's start, an even one after, and as many channels out \
             as in)",
            c.name, x.stride
        )));
    }
    let frame = hw * x.stride * 2;
    let bypass = usize::from(first);
    let outs = if first { (t - 1) / 2 } else { t / 2 };
    let out = pool.alloc((bypass + outs) * frame);
    let out_at = pool.off(out);
    let name = &c.name;
    let copy = |steps: &mut Vec<Step>, what: &str, src: usize, dst: usize, bytes: usize| {
        steps.push(Step::Copy {
            label: format!("{name} {what}"),
            src,
            dst,
            bytes,
            trace: Trace::default(),
        })
    };
    if first {
        copy(steps, "first frame", x.off, out_at, frame);
    }
    // The frames the convolution reads: `x` itself at a stream's start, else the cached
    // frame then `x`.
    let ctx = if first || outs == 0 {
        None
    } else {
        let b = pool.alloc((1 + t) * frame);
        copy(steps, "history", cache, pool.off(b), frame);
        copy(steps, "input", x.off, pool.off(b) + frame, t * frame);
        Some(b)
    };
    if outs > 0 {
        let src = ctx.map_or(x.off, |b| pool.off(b));
        let shape = conv::ConvTStrideShape {
            t_out: outs,
            hw,
            cin: x.stride,
            cout: out_ch,
            taps: 3,
            stride: 2,
        };
        let lc = conv::conv_tstride_launch(&shape).map_err(lowering_error)?;
        let bias = if c.bias {
            env.weight(&format!("{name}.bias"))?
        } else {
            std::ptr::null()
        };
        steps.push(launch(
            format!("{family} {name}"),
            "conv",
            lc.kernel,
            lc.config,
            Params::ConvTStride(conv::ConvTStrideParams {
                x: env.ptr(src),
                w: env.weight(&format!("{name}.weight"))?,
                bias,
                residual: std::ptr::null(),
                out: env.ptr_mut(out_at + bypass * frame),
                t_out: outs as i32,
                hw: hw as i32,
                cin: x.stride as i32,
                cout: out_ch as i32,
                taps: 3,
                stride: 2,
            }),
        ));
    }
    pool.release(ctx);
    copy(steps, "cache", x.off + (t - 1) * frame, cache, frame);
    Ok(Loc {
        off: out_at,
        buf: Some(out),
        stride: out_ch,
    })
}
