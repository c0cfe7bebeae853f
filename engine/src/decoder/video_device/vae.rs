//! The Wan VAE's ops in the lowering (docs/wan_vae.md "On the device: kernel entries"): the
//! causal 3x3x3 convolution over its two cached frames (`conv3d_f16`), the temporal
//! upsampling's causal 3x1x1 convolution with the first-frame bypass (`conv_t3_f16` then
//! `video_shuffle_f16`), and the per-pixel RMS norm (`rms_norm_channels_f16`).

use streamdit_kernels::{conv, gemm, vae, video};

use super::layout::Layout;
use super::lower::{launch, Buffers, Loc};
use super::lowering_error;
use crate::backend::cuda::lower::{Params, Step, Trace};
use crate::error::Result;
use crate::model::video_ops::Conv;

/// What every helper needs: the allocation's address and layout, whether the chunk starts
/// a stream, and the decoder's name for labels.
pub(super) struct Env<'a> {
    pub(super) base: u64,
    pub(super) l: &'a Layout,
    pub(super) first: bool,
    pub(super) family: &'static str,
}

impl Env<'_> {
    pub(super) fn ptr(&self, off: usize) -> *const u16 {
        (self.base + off as u64) as *const u16
    }
    pub(super) fn ptr_mut(&self, off: usize) -> *mut u16 {
        (self.base + off as u64) as *mut u16
    }
    pub(super) fn weight(&self, name: &str) -> Result<*const u16> {
        self.l
            .weights
            .get(name)
            .map(|&off| self.ptr(off))
            .ok_or_else(|| lowering_error(format!("{}: no packed tensor `{name}`", self.family)))
    }
    /// `{conv}.bias`, or null.
    fn bias(&self, c: &Conv) -> Result<*const u16> {
        if c.bias {
            self.weight(&format!("{}.bias", c.name))
        } else {
            Ok(std::ptr::null())
        }
    }
}

fn copy(steps: &mut Vec<Step>, label: String, src: usize, dst: usize, bytes: usize) {
    if bytes > 0 {
        steps.push(Step::Copy {
            label,
            src,
            dst,
            bytes,
            trace: Trace::default(),
        });
    }
}

/// The causal context buffer `[2 + t, hw, ch]` of convolution `c` (its cache, or zeros at a
/// stream's start, then frames `[from, from + t)` of `x`), and after the launch that
/// `emit` pushes, the cache refreshed with the buffer's last two frames (the previous
/// chunk's when `t = 0`: then nothing runs). Returns `emit`'s output.
#[allow(clippy::too_many_arguments)]
fn with_context(
    env: &Env,
    steps: &mut Vec<Step>,
    pool: &mut Buffers,
    c: &Conv,
    x: Loc,
    from: usize,
    t: usize,
    hw: usize,
    emit: impl FnOnce(&mut Vec<Step>, &mut Buffers, usize) -> Result<Loc>,
) -> Result<Option<Loc>> {
    let cache = c.cache.ok_or_else(|| {
        lowering_error(format!("{}: {} is causal without a cache", env.family, c.name))
    })?;
    let cache_at = *env
        .l
        .caches
        .get(cache)
        .ok_or_else(|| lowering_error(format!("{}: no cache {cache}", env.family)))?;
    let frame = hw * x.stride * 2;
    if t == 0 {
        // Nothing to convolve: the history stays (zeros at a stream's start).
        if env.first {
            let label = format!("{} cache", c.name);
            copy(steps, label, env.l.zeros, cache_at, 2 * frame);
        }
        return Ok(None);
    }
    let ctx = pool.alloc((2 + t) * frame);
    let at = pool.off(ctx);
    let history = if env.first { env.l.zeros } else { cache_at };
    let name = &c.name;
    copy(steps, format!("{name} history"), history, at, 2 * frame);
    copy(
        steps,
        format!("{name} input"),
        x.off + from * frame,
        at + 2 * frame,
        t * frame,
    );
    let out = emit(steps, pool, at)?;
    copy(
        steps,
        format!("{name} cache"),
        at + t * frame,
        cache_at,
        2 * frame,
    );
    pool.release(Some(ctx));
    Ok(Some(out))
}

/// A causal 3x3x3 convolution of `x [t, hw, cin]` to `out_ch` channels with an optional
/// fused residual: `conv3d_f16` over the context buffer.
#[allow(clippy::too_many_arguments)]
pub(super) fn causal_conv3d(
    env: &Env,
    steps: &mut Vec<Step>,
    pool: &mut Buffers,
    c: &Conv,
    x: Loc,
    t: usize,
    (h, w): (usize, usize),
    out_ch: usize,
    residual: *const u16,
) -> Result<Loc> {
    let shape = conv::Conv3dShape {
        t,
        height: h,
        width: w,
        cin: x.stride,
        cout: out_ch,
    };
    let lc = conv::conv3d_launch(&shape).map_err(lowering_error)?;
    let wt = env.weight(&format!("{}.weight", c.name))?;
    let bias = env.bias(c)?;
    let label = format!("{} {}", env.family, c.name);
    let out = with_context(env, steps, pool, c, x, 0, t, h * w, |steps, pool, ctx| {
        let out = pool.alloc(t * h * w * out_ch * 2);
        steps.push(launch(
            label,
            "conv",
            lc.kernel,
            lc.config,
            Params::Conv3d(conv::Conv3dParams {
                x: env.ptr(ctx),
                w: wt,
                bias,
                residual,
                out: env.ptr_mut(pool.off(out)),
                t: t as i32,
                height: h as i32,
                width: w as i32,
                cin: x.stride as i32,
                cout: out_ch as i32,
            }),
        ));
        Ok(Loc {
            off: pool.off(out),
            buf: Some(out),
            stride: out_ch,
        })
    })?;
    out.ok_or_else(|| lowering_error(format!("{}: {}: an empty chunk", env.family, c.name)))
}

/// The Wan VAE's temporal upsampling of `x [t, hw, ch]`: the causal 3x1x1 convolution `c`
/// (`ch -> stride ch`, `conv_t3_f16`) then the frame shuffle; with `keep_first` at a
/// stream's start the first frame bypasses both (copied to output frame 0) and the
/// convolution's history starts at the second.
#[allow(clippy::too_many_arguments)]
pub(super) fn time_conv_up(
    env: &Env,
    steps: &mut Vec<Step>,
    pool: &mut Buffers,
    c: &Conv,
    x: Loc,
    t: usize,
    hw: usize,
    stride: usize,
    keep_first: bool,
) -> Result<Loc> {
    let ch = x.stride;
    if c.cout != stride * ch {
        return Err(lowering_error(format!(
            "{}: {}: {} output channels for stride {stride} over {ch}",
            env.family, c.name, c.cout
        )));
    }
    let bypass = usize::from(env.first && keep_first);
    let conv_t = t - bypass;
    let frame = hw * ch * 2;
    let out = pool.alloc((bypass + stride * conv_t) * frame);
    let out_at = pool.off(out);
    copy(steps, format!("{} first frame", c.name), x.off, out_at, bypass * frame);
    let wt = env.weight(&format!("{}.weight", c.name))?;
    let bias = env.bias(c)?;
    let family = env.family;
    with_context(env, steps, pool, c, x, bypass, conv_t, hw, |steps, pool, ctx| {
        let shape = conv::ConvT3Shape {
            t_in: conv_t,
            hw,
            cin: ch,
            cout: c.cout,
            upsample_t: false,
        };
        let lc = conv::conv_t3_launch(&shape).map_err(lowering_error)?;
        let y = pool.alloc(conv_t * hw * c.cout * 2);
        steps.push(launch(
            format!("{family} {}", c.name),
            "conv",
            lc.kernel,
            lc.config,
            Params::ConvT3(conv::ConvT3Params {
                x: env.ptr(ctx),
                w: wt,
                bias,
                residual: std::ptr::null(),
                out: env.ptr_mut(pool.off(y)),
                t_in: conv_t as i32,
                hw: hw as i32,
                cin: ch as i32,
                cout: c.cout as i32,
                upsample_t: 0,
            }),
        ));
        let cfg = video::shuffle_config(conv_t, hw, ch, stride).map_err(lowering_error)?;
        steps.push(launch(
            format!("{family} {} frames", c.name),
            "video",
            video::KERNEL_SHUFFLE,
            cfg,
            Params::VideoShuffle(video::VideoShuffleParams {
                y: env.ptr(pool.off(y)),
                out: env.ptr_mut(out_at + bypass * frame),
                frames: conv_t as i32,
                pixels: hw as i32,
                c: ch as i32,
                stride: stride as i32,
            }),
        ));
        pool.release(Some(y));
        Ok(x)
    })?;
    Ok(Loc {
        off: out_at,
        buf: Some(out),
        stride: ch,
    })
}

/// The per-pixel RMS norm (then SiLU when `silu`) of `x [pixels, ch]` into `out` (which
/// may be `x`), gain `{name}.gamma`.
#[allow(clippy::too_many_arguments)]
pub(super) fn rms_norm(
    env: &Env,
    steps: &mut Vec<Step>,
    name: &str,
    silu: bool,
    x: Loc,
    out: Loc,
    pixels: usize,
) -> Result<()> {
    let cfg = vae::rms_norm_launch(pixels, x.stride).map_err(lowering_error)?;
    steps.push(launch(
        format!("{} {name}", env.family),
        "vae",
        vae::KERNEL_RMS_NORM,
        cfg,
        Params::RmsNormChannels(vae::RmsNormChannelsParams {
            x: env.ptr(x.off),
            gamma: env.weight(&format!("{name}.gamma"))?,
            out: env.ptr_mut(out.off),
            pixels: pixels as i32,
            c: x.stride as i32,
            silu: i32::from(silu),
        }),
    ));
    Ok(())
}

/// The mid block's single-head attention of `x [t, hw, ch]` per frame, plus `residual`
/// (`[t, hw, ch]`, the block's input), into a new `[t, hw, ch]` buffer: the GEMM sequence of
/// docs/wan_vae.md ("Attention, step by step") with `hw % 8 == 0` (no padding rows).
#[allow(clippy::too_many_arguments)]
pub(super) fn attention(
    env: &Env,
    steps: &mut Vec<Step>,
    pool: &mut Buffers,
    (qkv, proj): (&str, &str),
    x: Loc,
    residual: Loc,
    t: usize,
    hw: usize,
) -> Result<Loc> {
    let c = x.stride;
    let family = env.family;
    if hw % 8 != 0 || c % 8 != 0 {
        return Err(lowering_error(format!(
            "{family}: {qkv}: the attention's GEMMs need pixels per frame ({hw}) and channels \
             ({c}) that are multiples of 8"
        )));
    }
    let err = |e: String| lowering_error(format!("{family}: {qkv}: {e}"));
    let wqkv = env.weight(&format!("{qkv}.weight"))?;
    let bqkv = env.weight(&format!("{qkv}.bias"))?;
    let wp = env.weight(&format!("{proj}.weight"))?;
    let bp = env.weight(&format!("{proj}.bias"))?;
    let at = |p: *const u16, elems: usize| p.wrapping_add(elems);
    let frame = hw * c * 2;
    let (q, k, vt, o) = (
        pool.alloc(frame),
        pool.alloc(frame),
        pool.alloc(frame),
        pool.alloc(frame),
    );
    let s = pool.alloc(hw * hw * 4);
    let p = pool.alloc(hw * hw * 2);
    let out = pool.alloc(t * frame);
    let one = conv::conv1x1_launch(hw, c, c).map_err(err)?;
    let vt_cfg = gemm::bias_f16_config(c, hw, c).map_err(err)?;
    let s_cfg = gemm::bias_f32_config(hw, hw, c).map_err(err)?;
    let sm_cfg = vae::softmax_rows_launch(hw, hw, hw).map_err(err)?;
    let o_cfg = gemm::bias_f16_config(hw, c, hw).map_err(err)?;
    let scale = 1.0 / (c as f32).sqrt();
    for f in 0..t {
        let xf = x.off + f * frame;
        let label = |what: &str| format!("{family} {qkv} frame {f} {what}");
        let proj1x1 = |w: *const u16, b: *const u16, src: usize, res: *const u16, dst: usize| {
            Params::Conv1x1(conv::Conv1x1Params {
                x: env.ptr(src),
                w,
                bias: b,
                residual: res,
                out: env.ptr_mut(dst),
                m: hw as i32,
                cin: c as i32,
                cout: c as i32,
            })
        };
        let null = std::ptr::null();
        let (qo, ko) = (pool.off(q), pool.off(k));
        steps.push(launch(label("q"), "conv", one.kernel, one.config, proj1x1(wqkv, bqkv, xf, null, qo)));
        let (wk, bk) = (at(wqkv, c * c), at(bqkv, c));
        steps.push(launch(label("k"), "conv", one.kernel, one.config, proj1x1(wk, bk, xf, null, ko)));
        // V^T = Wv x^T: the weight as the A operand writes the values transposed.
        steps.push(launch(
            label("v"),
            "gemm",
            gemm::KERNEL_BIAS_F16,
            vt_cfg,
            Params::GemmBiasF16(gemm::GemmBiasF16Params {
                a: at(wqkv, 2 * c * c),
                w: env.ptr(xf),
                bias: null,
                out: env.ptr_mut(pool.off(vt)),
                m: c as i32,
                n: hw as i32,
                k: c as i32,
            }),
        ));
        let s_at = (env.base + pool.off(s) as u64) as *mut f32;
        steps.push(launch(
            label("scores"),
            "gemm",
            gemm::KERNEL_BIAS_F32,
            s_cfg,
            Params::GemmBiasF32(gemm::GemmBiasF32Params {
                a: env.ptr(qo),
                w: env.ptr(ko),
                bias: null,
                out: s_at,
                m: hw as i32,
                n: hw as i32,
                k: c as i32,
            }),
        ));
        steps.push(launch(
            label("softmax"),
            "vae",
            vae::KERNEL_SOFTMAX_ROWS,
            sm_cfg,
            Params::SoftmaxRows(vae::SoftmaxRowsParams {
                s: s_at,
                p: env.ptr_mut(pool.off(p)),
                rows: hw as i32,
                cols: hw as i32,
                ld: hw as i32,
                scale,
            }),
        ));
        steps.push(launch(
            label("p v"),
            "gemm",
            gemm::KERNEL_BIAS_F16,
            o_cfg,
            Params::GemmBiasF16(gemm::GemmBiasF16Params {
                a: env.ptr(pool.off(p)),
                w: env.ptr(pool.off(vt)),
                bias: null,
                out: env.ptr_mut(pool.off(o)),
                m: hw as i32,
                n: c as i32,
                k: hw as i32,
            }),
        ));
        let res = env.ptr(residual.off + f * frame);
        let dst = pool.off(out) + f * frame;
        let params = proj1x1(wp, bp, pool.off(o), res, dst);
        steps.push(launch(label("proj"), "conv", one.kernel, one.config, params));
    }
    for b in [q, k, vt, o, s, p] {
        pool.release(Some(b));
    }
    Ok(Loc {
        off: pool.off(out),
        buf: Some(out),
        stride: c,
    })
}
