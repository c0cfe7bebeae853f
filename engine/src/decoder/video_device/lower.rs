//! A Wan-family decoder's op list lowered to launches for a chunk of `n` latent frames (at a
//! stream's start or after), at the offsets of the allocation's [`Layout`].

use streamdit_kernels::{conv, video};

use super::layout::{self, cout_pad, pad8, Layout};
use super::vae::{self, Env};
use super::encoder;
use super::lowering_error;
use crate::backend::cuda::device::LaunchConfig;
use crate::backend::cuda::lower::{Params, Step, Trace};
use crate::error::Result;
use crate::memory::arena::{self, Slot, Span};
use crate::model::video_ops::{Conv, VideoGraph, VideoOp};

/// The activation buffers of one lowering, reference-counted while the op list is walked.
/// A first pass records each buffer's size and when it is live (an event clock ticks at
/// every allocation and release); the engine's one arena planner ([`arena::plan`]) places
/// them, and a second pass lowers with those offsets. Launches run in order on one queue,
/// so a buffer is free for reuse once its last reader has been issued.
pub(super) struct Buffers {
    bytes: Vec<usize>,
    refs: Vec<u32>,
    spans: Vec<Span>,
    clock: usize,
    /// The arena's start and, in the second pass, each buffer's planned offset in it.
    base: usize,
    offsets: Option<Vec<u64>>,
}

impl Buffers {
    fn new(base: usize, offsets: Option<Vec<u64>>) -> Buffers {
        Buffers {
            bytes: Vec::new(),
            refs: Vec::new(),
            spans: Vec::new(),
            clock: 0,
            base,
            offsets,
        }
    }
    fn tick(&mut self) -> usize {
        self.clock += 1;
        self.clock
    }
    pub(super) fn alloc(&mut self, bytes: usize) -> usize {
        let t = self.tick();
        self.bytes.push(bytes);
        self.refs.push(1);
        // Live until released; one never released (the output) stays live to the end.
        self.spans.push(Span {
            timeline: 0,
            start: t,
            end: usize::MAX,
        });
        self.refs.len() - 1
    }
    pub(super) fn hold(&mut self, buf: Option<usize>) {
        if let Some(i) = buf {
            self.refs[i] += 1;
        }
    }
    pub(super) fn release(&mut self, buf: Option<usize>) {
        if let Some(i) = buf {
            self.refs[i] -= 1;
            if self.refs[i] == 0 {
                self.spans[i].end = self.tick();
            }
        }
    }
    /// Byte offset of buffer `i` in the allocation (the arena's start in the first pass).
    pub(super) fn off(&self, i: usize) -> usize {
        self.base + self.offsets.as_ref().map_or(0, |o| o[i] as usize)
    }
}

/// Where an activation is: a byte offset, the arena buffer holding it (none for the input),
/// and its channels in memory (the input's are padded to a multiple of 8).
#[derive(Debug, Clone, Copy)]
pub(super) struct Loc {
    pub(super) off: usize,
    pub(super) buf: Option<usize>,
    pub(super) stride: usize,
}

/// Lowers `graph` for a chunk of `n` latent frames (`first`: the chunk starts a stream) at
/// the offsets of `l` from device address `base`. Returns the steps, the output's byte
/// offset and the bytes of arena the list needs.
pub(super) fn lower_list(
    graph: &VideoGraph,
    l: &Layout,
    base: u64,
    n: usize,
    first: bool,
) -> Result<(Vec<Step>, usize, usize)> {
    let mut record = Buffers::new(l.arena, None);
    lower_pass(graph, l, base, n, first, &mut record)?;
    let slots: Vec<Slot> = record
        .spans
        .iter()
        .zip(&record.bytes)
        .map(|(&span, &bytes)| Slot {
            bytes: bytes as u64,
            spans: vec![span],
            first: span.start,
        })
        .collect();
    let (offsets, bytes) = arena::plan(&slots);
    let mut placed = Buffers::new(l.arena, Some(offsets));
    let (steps, output) = lower_pass(graph, l, base, n, first, &mut placed)?;
    Ok((steps, output, bytes as usize))
}

pub(super) fn launch(
    label: String,
    module: &'static str,
    kernel: &'static str,
    config: LaunchConfig,
    params: Params,
) -> Step {
    Step::Launch {
        label,
        module,
        kernel_name: kernel,
        kernel: None,
        config,
        params,
        trace: Trace::default(),
    }
}

/// Whether two activations share memory: the same arena buffer, or the same input bytes.
fn same(a: &Loc, b: &Loc) -> bool {
    match (a.buf, b.buf) {
        (Some(x), Some(y)) => x == y,
        (None, None) => a.off == b.off,
        _ => false,
    }
}

/// One pass of [`lower_list`] with the buffers `pool`.
fn lower_pass(
    graph: &VideoGraph,
    l: &Layout,
    base: u64,
    n: usize,
    first: bool,
    pool: &mut Buffers,
) -> Result<(Vec<Step>, usize)> {
    let family = graph.family;
    let ptr = |off: usize| (base + off as u64) as *const u16;
    let ptr_mut = |off: usize| (base + off as u64) as *mut u16;
    let weight = |name: &str| -> Result<*const u16> {
        l.weights
            .get(name)
            .map(|&off| ptr(off))
            .ok_or_else(|| lowering_error(format!("{family}: no packed tensor `{name}`")))
    };
    let env = Env {
        base,
        l,
        first,
        family,
    };
    let env_bias = |c: &Conv| -> Result<*const u16> {
        if c.bias {
            weight(&format!("{}.bias", c.name))
        } else {
            Ok(std::ptr::null())
        }
    };
    let no_lowering = |i: usize, what: &str| {
        lowering_error(format!(
            "{family}: op {i} ({what}) has no device lowering yet (TAEHV's ops and its \
             encoder's, the Wan VAE's and its encoder's have)"
        ))
    };
    let mut steps = Vec::new();
    let mut cur = Loc {
        off: l.input,
        buf: None,
        stride: pad8(graph.latent_channels),
    };
    let mut saved: Vec<Loc> = Vec::new();
    let ops = &graph.steps;
    let mut i = 0;
    while i < ops.len() {
        let step = &ops[i];
        let frames = step.frames.count(n, first);
        let hw = step.height * step.width;
        let frame_bytes = hw * cur.stride * 2;
        match &step.op {
            VideoOp::Save => {
                pool.hold(cur.buf);
                saved.push(cur);
            }
            VideoOp::SoftClamp { .. } | VideoOp::Relu => {
                let (op, limit, what) = match step.op {
                    VideoOp::SoftClamp { limit } => (video::OP_SOFT_CLAMP, limit, "soft clamp"),
                    _ => (video::OP_RELU, 0.0, "relu"),
                };
                let elems = frames * hw * cur.stride;
                let cfg = video::map_config(elems, op, limit).map_err(lowering_error)?;
                // In place, unless a Save still holds the activation.
                let shared = saved.iter().any(|s| same(s, &cur));
                let out = if shared {
                    let b = pool.alloc(elems * 2);
                    Loc {
                        off: pool.off(b),
                        buf: Some(b),
                        stride: cur.stride,
                    }
                } else {
                    cur
                };
                steps.push(launch(
                    format!("{family} op {i} {what}"),
                    "video",
                    video::KERNEL_MAP,
                    cfg,
                    Params::VideoMap(video::VideoMapParams {
                        x: ptr(cur.off),
                        out: ptr_mut(out.off),
                        n: elems as i64,
                        op,
                        limit,
                    }),
                ));
                if shared {
                    pool.release(cur.buf);
                }
                cur = out;
            }
            VideoOp::TemporalDown { conv: c } => {
                let out_ch = cout_pad(graph, c);
                let out = encoder::temporal_down(&env, &mut steps, pool, c, cur, frames, hw, out_ch)?;
                pool.release(cur.buf);
                cur = out;
            }
            VideoOp::Normalize { mean, .. } => {
                // Folded into the convolution before it (`layout::folded_normalize`), whose
                // output already holds the normalised channels only.
                let folded = i > 0
                    && matches!(&ops[i - 1].op, VideoOp::Conv(c) if layout::folded_normalize(graph, c).is_some());
                if !folded || cur.stride != mean.len() {
                    return Err(no_lowering(i, "normalize other than right after a convolution"));
                }
            }
            VideoOp::TemporalPool { conv: c, stride } => {
                let out_ch = cout_pad(graph, c);
                let out = encoder::temporal_pool(&env, &mut steps, pool, c, cur, frames, hw, *stride, out_ch)?;
                pool.release(cur.buf);
                cur = out;
            }
            VideoOp::Conv(c) if c.downsample => {
                if c.taps_t != 1 || c.taps_s != 3 || c.upsample || cur.stride != pad8(c.cin) {
                    return Err(no_lowering(i, "conv_down2 other than 3x3 on padded channels"));
                }
                if let Some(VideoOp::AddSaved { .. }) = ops.get(i + 1).map(|s| &s.op) {
                    return Err(no_lowering(i + 1, "add after a stride-2 convolution"));
                }
                let out_ch = cout_pad(graph, c);
                let hw2 = (step.height, step.width);
                let (_, ho, wo, _) = step.output();
                let out = encoder::conv_down(&env, &mut steps, pool, c, cur, frames, hw2, out_ch, (ho, wo))?;
                pool.release(cur.buf);
                cur = out;
            }
            VideoOp::TemporalUp {
                conv: c,
                stride,
                keep_first,
            } if c.taps_t == 3 && c.taps_s == 1 => {
                let (t, stride) = (frames, *stride);
                let out = vae::time_conv_up(&env, &mut steps, pool, c, cur, t, hw, stride, *keep_first)?;
                pool.release(cur.buf);
                cur = out;
            }
            VideoOp::Conv(c) | VideoOp::TemporalUp { conv: c, .. } => {
                let (stride, keep_first) = match step.op {
                    VideoOp::TemporalUp {
                        stride, keep_first, ..
                    } => (stride, keep_first),
                    _ => (1, false),
                };
                if keep_first {
                    return Err(no_lowering(i, "temporal_up keeping the first frame"));
                }
                if cur.stride != pad8(c.cin) {
                    return Err(lowering_error(format!(
                        "{family}: op {i} ({}) reads {} channels per pixel, stored as {}: the \
                         convolution kernels need a multiple of 8",
                        c.name, c.cin, cur.stride
                    )));
                }
                let is_conv = matches!(step.op, VideoOp::Conv(_));
                let out_ch = if is_conv { cout_pad(graph, c) } else { c.cout };
                // A following AddSaved is fused as the residual (through its 1x1 skip).
                let mut residual = std::ptr::null();
                let mut held = None;
                if let Some(VideoOp::AddSaved { skip, .. }) = ops.get(i + 1).map(|s| &s.op) {
                    if !is_conv || c.upsample {
                        return Err(no_lowering(i + 1, "add after this op"));
                    }
                    let s = saved.pop().ok_or_else(|| {
                        lowering_error(format!("{family}: op {}: nothing saved", i + 1))
                    })?;
                    let (add, buf) = match skip {
                        None => (s, s.buf),
                        Some(k) => {
                            let m = frames * hw;
                            let lc = conv::conv1x1_launch(m, s.stride, k.cout)
                                .map_err(lowering_error)?;
                            let b = pool.alloc(m * k.cout * 2);
                            steps.push(launch(
                                format!("{family} {}", k.name),
                                "conv",
                                lc.kernel,
                                lc.config,
                                Params::Conv1x1(conv::Conv1x1Params {
                                    x: ptr(s.off),
                                    w: weight(&format!("{}.weight", k.name))?,
                                    bias: if k.bias {
                                        weight(&format!("{}.bias", k.name))?
                                    } else {
                                        std::ptr::null()
                                    },
                                    residual: std::ptr::null(),
                                    out: ptr_mut(pool.off(b)),
                                    m: m as i32,
                                    cin: s.stride as i32,
                                    cout: k.cout as i32,
                                }),
                            ));
                            pool.release(s.buf);
                            let at = Loc {
                                off: pool.off(b),
                                buf: Some(b),
                                stride: k.cout,
                            };
                            (at, Some(b))
                        }
                    };
                    if add.stride != out_ch {
                        return Err(lowering_error(format!(
                            "{family}: op {}: adds {} channels to {out_ch}",
                            i + 1,
                            add.stride
                        )));
                    }
                    residual = ptr(add.off);
                    held = buf;
                    i += 1;
                }
                let s = if c.upsample { 2 } else { 1 };
                let (ho, wo) = (step.height * s, step.width * s);
                let out_bytes = frames * ho * wo * out_ch * 2;
                let label = format!("{family} {}", c.name);
                let next = match (c.taps_t, c.taps_s, c.upsample) {
                    (3, 3, false) => {
                        let hw2 = (step.height, step.width);
                        vae::causal_conv3d(&env, &mut steps, pool, c, cur, frames, hw2, out_ch, residual)?
                    }
                    (1, 3, _) => {
                        let shape = conv::Conv3x3Shape {
                            t: frames,
                            h_in: step.height,
                            w_in: step.width,
                            cin: cur.stride,
                            cout: out_ch,
                            upsample: c.upsample,
                        };
                        let lc = conv::conv3x3_launch(&shape).map_err(lowering_error)?;
                        let out = pool.alloc(out_bytes);
                        steps.push(launch(
                            label,
                            "conv",
                            lc.kernel,
                            lc.config,
                            Params::Conv3x3(conv::Conv3x3Params {
                                x: ptr(cur.off),
                                w: weight(&format!("{}.weight", c.name))?,
                                bias: env_bias(c)?,
                                residual,
                                out: ptr_mut(pool.off(out)),
                                t: frames as i32,
                                h_in: step.height as i32,
                                w_in: step.width as i32,
                                cin: cur.stride as i32,
                                cout: out_ch as i32,
                                upsample: i32::from(c.upsample),
                            }),
                        ));
                        Loc {
                            off: pool.off(out),
                            buf: Some(out),
                            stride: out_ch,
                        }
                    }
                    (1, 1, false) => {
                        let m = frames * hw;
                        let lc = conv::conv1x1_launch(m, cur.stride, out_ch)
                            .map_err(lowering_error)?;
                        let out = pool.alloc(out_bytes);
                        steps.push(launch(
                            label,
                            "conv",
                            lc.kernel,
                            lc.config,
                            Params::Conv1x1(conv::Conv1x1Params {
                                x: ptr(cur.off),
                                w: weight(&format!("{}.weight", c.name))?,
                                bias: env_bias(c)?,
                                residual,
                                out: ptr_mut(pool.off(out)),
                                m: m as i32,
                                cin: cur.stride as i32,
                                cout: out_ch as i32,
                            }),
                        ));
                        Loc {
                            off: pool.off(out),
                            buf: Some(out),
                            stride: out_ch,
                        }
                    }
                    _ => return Err(no_lowering(i, step.op.kind())),
                };
                pool.release(cur.buf);
                pool.release(held);
                cur = next;
                if stride > 1 {
                    // TGrow's reshape: frame t's channel groups become frames stride t + s.
                    let ch = c.cout / stride;
                    let cfg = video::shuffle_config(frames, hw, ch, stride)
                        .map_err(lowering_error)?;
                    let shuffled = pool.alloc(out_bytes);
                    steps.push(launch(
                        format!("{family} {} frames", c.name),
                        "video",
                        video::KERNEL_SHUFFLE,
                        cfg,
                        Params::VideoShuffle(video::VideoShuffleParams {
                            y: ptr(cur.off),
                            out: ptr_mut(pool.off(shuffled)),
                            frames: frames as i32,
                            pixels: hw as i32,
                            c: ch as i32,
                            stride: stride as i32,
                        }),
                    ));
                    pool.release(cur.buf);
                    cur = Loc {
                        off: pool.off(shuffled),
                        buf: Some(shuffled),
                        stride: ch,
                    };
                }
            }
            VideoOp::RmsNorm { name, ch, silu, .. } => {
                if cur.stride != *ch {
                    return Err(lowering_error(format!(
                        "{family}: op {i} ({name}) of {ch} channels on {} in memory",
                        cur.stride
                    )));
                }
                let pixels = frames * hw;
                // In place, unless a Save still holds the activation.
                let shared = saved.iter().any(|s| same(s, &cur));
                let out = if shared {
                    let b = pool.alloc(pixels * ch * 2);
                    Loc {
                        off: pool.off(b),
                        buf: Some(b),
                        stride: *ch,
                    }
                } else {
                    cur
                };
                vae::rms_norm(&env, &mut steps, name, *silu, cur, out, pixels)?;
                if shared {
                    pool.release(cur.buf);
                }
                cur = out;
            }
            VideoOp::Denormalize { .. } if i == 0 => {
                // On the host, as the latents are staged (`DeviceVideo::decode_piece`).
            }
            VideoOp::WithPast { ch, cache } => {
                if cur.stride != *ch {
                    return Err(lowering_error(format!(
                        "{family}: op {i} (with_past) of {ch} channels on {} in memory",
                        cur.stride
                    )));
                }
                let cfg =
                    video::with_past_config(frames, hw, *ch).map_err(lowering_error)?;
                let cache_at = *l.caches.get(*cache).ok_or_else(|| {
                    lowering_error(format!("{family}: op {i}: no cache {cache}"))
                })?;
                let out = pool.alloc(2 * frames * frame_bytes);
                // Before the stream the past frame is zeros (a null pointer), after it the
                // cache: the previous chunk's last input frame.
                steps.push(launch(
                    format!("{family} op {i} with_past"),
                    "video",
                    video::KERNEL_WITH_PAST,
                    cfg,
                    Params::VideoWithPast(video::VideoWithPastParams {
                        x: ptr(cur.off),
                        past: if first {
                            std::ptr::null()
                        } else {
                            ptr(cache_at)
                        },
                        out: ptr_mut(pool.off(out)),
                        frames: frames as i32,
                        pixels: hw as i32,
                        c: *ch as i32,
                    }),
                ));
                steps.push(Step::Copy {
                    label: format!("{family} op {i} cache {cache}"),
                    src: cur.off + (frames - 1) * frame_bytes,
                    dst: cache_at,
                    bytes: frame_bytes,
                    trace: Trace::default(),
                });
                pool.release(cur.buf);
                cur = Loc {
                    off: pool.off(out),
                    buf: Some(out),
                    stride: 2 * ch,
                };
            }
            VideoOp::DropFirst { frames: drop } => {
                // An offset into the activation: the dropped frames stay where they are.
                if first {
                    cur.off += (*drop).min(frames) * frame_bytes;
                }
            }
            VideoOp::AddSaved { .. } => {
                return Err(lowering_error(format!(
                    "{family}: op {i}: an AddSaved has a lowering only right after a \
                     convolution (fused as its residual)"
                )));
            }
            VideoOp::Attention { qkv, proj, heads, .. } => {
                // The block's AddSaved (no skip) is the output projection's residual.
                let fused = matches!(
                    ops.get(i + 1).map(|s| &s.op),
                    Some(VideoOp::AddSaved { skip: None, .. })
                );
                if *heads != 1 || !fused {
                    return Err(no_lowering(i, "attention other than one head plus its input"));
                }
                let s = saved.pop().ok_or_else(|| {
                    lowering_error(format!("{family}: op {}: nothing saved", i + 1))
                })?;
                let names = (qkv.as_str(), proj.as_str());
                let out = vae::attention(&env, &mut steps, pool, names, cur, s, frames, hw)?;
                pool.release(cur.buf);
                pool.release(s.buf);
                cur = out;
                i += 1;
            }
            VideoOp::Denormalize { .. } => {
                return Err(no_lowering(i, step.op.kind()));
            }
        }
        i += 1;
    }
    if !saved.is_empty() {
        return Err(lowering_error(format!(
            "{family}: the op list leaves saved activations"
        )));
    }
    Ok((steps, cur.off))
}
