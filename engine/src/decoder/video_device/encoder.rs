//! The TAEHV encoder's ops in the lowering (docs/taehv.md "The encoder", "On the device"):
//! the stride-2 3x3 convolution (`conv3x3s2_f16`, padding 1 on every side) and the temporal
//! pool (`conv_tstride_f16` with `taps = stride`: the `stride` frames of a group read side by
//! side as one row of `K = stride C`, the TPool weight `[C, stride C, 1, 1]` as stored).

use streamdit_kernels::conv;

use super::lower::{launch, Buffers, Loc};
use super::lowering_error;
use super::vae::Env;
use crate::backend::cuda::lower::{Params, Step};
use crate::error::Result;
use crate::model::video_ops::Conv;

/// A 3x3 convolution with stride 2 of `x [t, h, w, cin]` to `out_ch` channels:
/// `[t, ceil(h / 2), ceil(w / 2), out_ch]`.
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
) -> Result<Loc> {
    let shape = conv::Conv3x3S2Shape {
        t,
        h_in: h,
        w_in: w,
        cin: x.stride,
        cout: out_ch,
        pad: 1,
    };
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
            pad: 1,
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
