//! The decoder's op list lowered to launches of the decoder kernels for a chunk of `n`
//! latent frames, at the offsets of the allocation's [`Layout`].

use streamdit_kernels::{attention, conv};

use super::layout::{pad8, Layout};
use super::lowering_error;
use crate::backend::cuda::lower::{Params, Step, Trace};
use crate::error::Result;
use crate::memory::arena::{self, Slot, Span};
use crate::model::tae::{TaeGraph, TaeOp};

/// The activation buffers of one lowering, reference-counted while the op list is walked.
/// A first pass records when each buffer is live (an event clock ticks at every allocation
/// and release); the engine's one arena planner ([`arena::plan`]) then places them, and a
/// second pass lowers with those offsets. Every buffer has the size of the largest
/// activation (`Layout::pool_bytes`), so the plan needs as many buffers as are ever live at
/// once.
struct Buffers {
    refs: Vec<u32>,
    spans: Vec<Span>,
    clock: usize,
    /// The region's start and, in the second pass, each buffer's planned offset in it.
    base: usize,
    offsets: Option<Vec<u64>>,
}

impl Buffers {
    fn new(base: usize, offsets: Option<Vec<u64>>) -> Buffers {
        Buffers {
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
    fn alloc(&mut self) -> usize {
        let t = self.tick();
        self.refs.push(1);
        // Live until released; one never released (the output) stays live to the end.
        self.spans.push(Span {
            timeline: 0,
            start: t,
            end: usize::MAX,
        });
        self.refs.len() - 1
    }
    fn hold(&mut self, buf: Option<usize>) {
        if let Some(i) = buf {
            self.refs[i] += 1;
        }
    }
    fn release(&mut self, buf: Option<usize>) {
        if let Some(i) = buf {
            self.refs[i] -= 1;
            if self.refs[i] == 0 {
                self.spans[i].end = self.tick();
            }
        }
    }
    /// Byte offset of buffer `i` in the allocation (the region's start in the first pass).
    fn off(&self, i: usize) -> usize {
        self.base + self.offsets.as_ref().map_or(0, |o| o[i] as usize)
    }
}

/// Where an activation is: a byte offset, and the pool buffer holding it (none for the
/// input and the context buffer).
#[derive(Debug, Clone, Copy)]
struct Loc {
    off: usize,
    buf: Option<usize>,
}

/// Lowers the op list for a chunk of `n` latent frames at offsets of `l` from `base`
/// (`first`: the chunk starts a stream). Returns the steps, the output's byte offset and
/// how many activation buffers of `l.pool_bytes` the plan needs.
pub(super) fn lower_list(
    graph: &TaeGraph,
    l: &Layout,
    base: u64,
    n: usize,
    first: bool,
) -> Result<(Vec<Step>, usize, usize)> {
    let mut record = Buffers::new(l.pool, None);
    lower_pass(graph, l, base, n, first, &mut record)?;
    let slots: Vec<Slot> = record
        .spans
        .iter()
        .map(|&span| Slot {
            bytes: l.pool_bytes as u64,
            spans: vec![span],
            first: span.start,
        })
        .collect();
    let (offsets, bytes) = arena::plan(&slots);
    let mut placed = Buffers::new(l.pool, Some(offsets));
    let (steps, output) = lower_pass(graph, l, base, n, first, &mut placed)?;
    Ok((steps, output, bytes as usize / l.pool_bytes.max(1)))
}

/// One pass of [`lower_list`] with the buffers `pool`.
fn lower_pass(
    graph: &TaeGraph,
    l: &Layout,
    base: u64,
    n: usize,
    first: bool,
    pool: &mut Buffers,
) -> Result<(Vec<Step>, usize)> {
    let ptr = |off: usize| (base + off as u64) as *const u16;
    let ptr_mut = |off: usize| (base + off as u64) as *mut u16;
    let ptr_f32 = |off: usize| (base + off as u64) as *mut f32;
    let weight = |name: &str| -> Result<*const u16> {
        l.weights
            .get(name)
            .map(|&off| ptr(off))
            .ok_or_else(|| lowering_error(format!("no packed tensor `{name}`")))
    };
    let launch =
        |label: String, module: &'static str, kernel: &'static str, config, params| Step::Launch {
            label,
            module,
            kernel_name: kernel,
            kernel: None,
            config,
            params,
            trace: Trace::default(),
        };
    // `out = x W^T + b (+ residual)` over `m` pixels: the 1x1 skip and the attention's
    // projections. `prefix` names the tensors `{prefix}.weight` and `{prefix}.bias`.
    let conv1x1 = |prefix: &str,
                   x: usize,
                   out: usize,
                   residual: *const u16,
                   (m, cin, cout): (usize, usize, usize)|
     -> Result<Step> {
        let lc = conv::conv1x1_launch(m, cin, cout).map_err(lowering_error)?;
        Ok(launch(
            format!("decoder {prefix}"),
            "conv",
            lc.kernel,
            lc.config,
            Params::Conv1x1(conv::Conv1x1Params {
                x: ptr(x),
                w: weight(&format!("{prefix}.weight"))?,
                bias: weight(&format!("{prefix}.bias"))?,
                residual,
                out: ptr_mut(out),
                m: m as i32,
                cin: cin as i32,
                cout: cout as i32,
            }),
        ))
    };
    let pop_saved = |saved: &mut Vec<Loc>, i: usize| {
        saved
            .pop()
            .ok_or_else(|| lowering_error(format!("op {i}: AddSaved with nothing saved")))
    };
    let mut steps = Vec::new();
    let mut cur = Loc {
        off: l.input,
        buf: None,
    };
    let mut saved: Vec<Loc> = Vec::new();
    let mut upsample_t = false;
    let ops = &graph.steps;
    let mut i = 0;
    while i < ops.len() {
        let step = &ops[i];
        let next = ops.get(i + 1).map(|s| &s.op);
        let hw = step.height * step.width;
        let t = step.frames * n;
        match &step.op {
            TaeOp::Save => {
                pool.hold(cur.buf);
                saved.push(cur);
            }
            TaeOp::GroupNorm { name, ch, silu } => {
                let shape = conv::GroupNormShape {
                    frames: t,
                    hw,
                    c: *ch,
                    groups: graph.groups,
                };
                let plan = conv::groupnorm_plan(&shape).map_err(lowering_error)?;
                let out = pool.alloc();
                let label = format!("decoder {name}");
                let common = (t as i32, hw as i32, *ch as i32, graph.groups as i32);
                steps.push(launch(
                    format!("{label} statistics"),
                    "conv",
                    conv::KERNEL_GN_STATS,
                    plan.stats,
                    Params::GroupNormStats(conv::GroupNormStatsParams {
                        x: ptr(cur.off),
                        part: ptr_f32(l.gn_part),
                        frames: common.0,
                        hw: common.1,
                        c: common.2,
                        groups: common.3,
                        pixels_per_split: plan.pixels_per_split as i32,
                    }),
                ));
                steps.push(launch(
                    format!("{label} finalize"),
                    "conv",
                    conv::KERNEL_GN_FINALIZE,
                    plan.finalize,
                    Params::GroupNormFinalize(conv::GroupNormFinalizeParams {
                        part: ptr_f32(l.gn_part),
                        stats: ptr_f32(l.gn_stats),
                        frames: common.0,
                        splits: plan.splits as i32,
                        groups: common.3,
                        hw: common.1,
                        cg: (ch / graph.groups) as i32,
                        pixels_per_split: plan.pixels_per_split as i32,
                    }),
                ));
                steps.push(launch(
                    label,
                    "conv",
                    conv::KERNEL_GN_APPLY,
                    plan.apply,
                    Params::GroupNormApply(conv::GroupNormApplyParams {
                        x: ptr(cur.off),
                        stats: ptr_f32(l.gn_stats),
                        gamma: weight(&format!("{name}.weight"))?,
                        beta: weight(&format!("{name}.bias"))?,
                        out: ptr_mut(pool.off(out)),
                        hw: common.1,
                        c: common.2,
                        groups: common.3,
                        silu: i32::from(*silu),
                    }),
                ));
                pool.release(cur.buf);
                cur = Loc {
                    off: pool.off(out),
                    buf: Some(out),
                };
            }
            TaeOp::Conv2d {
                name,
                cin,
                cout,
                upsample,
            } => {
                // The encoder's RGB input is padded to 8 channels (zero weights).
                let cin = pad8(*cin);
                let shape = conv::Conv3x3Shape {
                    t,
                    h_in: step.height,
                    w_in: step.width,
                    cin,
                    cout: *cout,
                    upsample: *upsample,
                };
                let lc = conv::conv3x3_launch(&shape).map_err(lowering_error)?;
                // A following ConvT reads its input after two context frames.
                let to_ctx = matches!(next, Some(TaeOp::ConvT { .. } | TaeOp::RepeatFrames));
                let (ho, wo) = shape.out_hw();
                let dst = if to_ctx {
                    Loc {
                        off: l.ctx + 2 * ho * wo * cout * 2,
                        buf: None,
                    }
                } else {
                    let b = pool.alloc();
                    Loc {
                        off: pool.off(b),
                        buf: Some(b),
                    }
                };
                steps.push(launch(
                    format!("decoder {name}"),
                    "conv",
                    lc.kernel,
                    lc.config,
                    Params::Conv3x3(conv::Conv3x3Params {
                        x: ptr(cur.off),
                        w: weight(&format!("{name}.weight"))?,
                        bias: weight(&format!("{name}.bias"))?,
                        residual: std::ptr::null(),
                        out: ptr_mut(dst.off),
                        t: t as i32,
                        h_in: step.height as i32,
                        w_in: step.width as i32,
                        cin: cin as i32,
                        cout: *cout as i32,
                        upsample: i32::from(*upsample),
                    }),
                ));
                pool.release(cur.buf);
                cur = dst;
            }
            TaeOp::RepeatFrames => {
                if !matches!(next, Some(TaeOp::ConvT { .. })) {
                    return Err(lowering_error(format!(
                        "op {i}: RepeatFrames must be followed by a ConvT (it is fused into it)"
                    )));
                }
                upsample_t = true;
            }
            TaeOp::ConvT { name, ch, cache } => {
                // With a fused RepeatFrames the context holds the frames before repetition.
                let t_in = if upsample_t { t / 2 } else { t };
                let frame = hw * ch * 2;
                let chunk_at = l.ctx + 2 * frame;
                if cur.off != chunk_at {
                    // The producer could not write into the context buffer: copy.
                    steps.push(Step::Copy {
                        label: format!("decoder {name} input"),
                        src: cur.off,
                        dst: chunk_at,
                        bytes: t_in * frame,
                        trace: Trace::default(),
                    });
                    pool.release(cur.buf);
                }
                let cache_at = l.caches[*cache];
                // Context frames 0 and 1: the first frame at a stream's start, else the cache.
                for k in 0..2 {
                    steps.push(Step::Copy {
                        label: format!("decoder {name} context {k}"),
                        src: if first {
                            chunk_at
                        } else {
                            cache_at + k * frame
                        },
                        dst: l.ctx + k * frame,
                        bytes: frame,
                        trace: Trace::default(),
                    });
                }
                // A following AddSaved is fused as the residual (through the 1x1 skip).
                let mut residual = std::ptr::null();
                let mut held = None;
                if let Some(TaeOp::AddSaved { skip, cin, cout }) = next {
                    let s = pop_saved(&mut saved, i + 1)?;
                    if let Some(skip) = skip {
                        let b = pool.alloc();
                        let shape = (t_in * hw, *cin, *cout);
                        let null = std::ptr::null();
                        steps.push(conv1x1(skip, s.off, pool.off(b), null, shape)?);
                        pool.release(s.buf);
                        residual = ptr(pool.off(b));
                        held = Some(b);
                    } else {
                        residual = ptr(s.off);
                        held = s.buf;
                    }
                    i += 1;
                }
                let shape = conv::ConvT3Shape {
                    t_in,
                    hw,
                    cin: *ch,
                    cout: *ch,
                    upsample_t,
                };
                let lc = conv::conv_t3_launch(&shape).map_err(lowering_error)?;
                let out = pool.alloc();
                steps.push(launch(
                    format!("decoder {name}"),
                    "conv",
                    lc.kernel,
                    lc.config,
                    Params::ConvT3(conv::ConvT3Params {
                        x: ptr(l.ctx),
                        w: weight(&format!("{name}.weight"))?,
                        bias: weight(&format!("{name}.bias"))?,
                        residual,
                        out: ptr_mut(pool.off(out)),
                        t_in: t_in as i32,
                        hw: hw as i32,
                        cin: *ch as i32,
                        cout: *ch as i32,
                        upsample_t: i32::from(upsample_t),
                    }),
                ));
                pool.release(held);
                // The cache: the last two input frames (both the last one when the frames
                // are repeated: they precede the next chunk in the repeated sequence).
                let last = 2 + t_in - 1;
                let sources = if upsample_t {
                    [last, last]
                } else {
                    [last - 1, last]
                };
                for (k, src) in sources.into_iter().enumerate() {
                    steps.push(Step::Copy {
                        label: format!("decoder {name} cache {k}"),
                        src: l.ctx + src * frame,
                        dst: cache_at + k * frame,
                        bytes: frame,
                        trace: Trace::default(),
                    });
                }
                upsample_t = false;
                cur = Loc {
                    off: pool.off(out),
                    buf: Some(out),
                };
            }
            TaeOp::Attention {
                name,
                ch,
                heads,
                head_dim,
            } => {
                let m = t * hw;
                let qkv = format!("{name}.qkv");
                let shape = (m, *ch, 3 * ch);
                steps.push(conv1x1(&qkv, cur.off, l.qkv, std::ptr::null(), shape)?);
                let shape = attention::WindowShape {
                    batch: 1,
                    grid: [t, step.height, step.width],
                    window: [1, step.height, step.width],
                    shift: [0, 0, 0],
                    heads: *heads,
                    head_dim: *head_dim,
                };
                let al = attention::window_config(&shape).map_err(lowering_error)?;
                steps.push(launch(
                    format!("decoder {name}"),
                    "attention",
                    al.kernel,
                    al.config,
                    Params::WindowAttention(attention::AttnWindowParams {
                        qkv: ptr(l.qkv),
                        gq: std::ptr::null(),
                        gk: std::ptr::null(),
                        out: ptr_mut(l.attn_out),
                        ft: t as i32,
                        ht: step.height as i32,
                        wt: step.width as i32,
                        fw: 1,
                        hw: step.height as i32,
                        ww: step.width as i32,
                        sf: 0,
                        sh: 0,
                        sw: 0,
                        heads: *heads as i32,
                    }),
                ));
                pool.release(cur.buf);
                let mut residual = std::ptr::null();
                let mut held = None;
                if let Some(TaeOp::AddSaved { skip: None, .. }) = next {
                    let s = pop_saved(&mut saved, i + 1)?;
                    residual = ptr(s.off);
                    held = s.buf;
                    i += 1;
                }
                let out = pool.alloc();
                let proj = format!("{name}.out");
                let shape = (m, *ch, *ch);
                steps.push(conv1x1(&proj, l.attn_out, pool.off(out), residual, shape)?);
                pool.release(held);
                cur = Loc {
                    off: pool.off(out),
                    buf: Some(out),
                };
            }
            TaeOp::DownS { name, ch } => {
                // One zero row and column after the frame, stride 2: `pad = 0`.
                let shape = conv::Conv3x3S2Shape {
                    t,
                    h_in: step.height,
                    w_in: step.width,
                    cin: *ch,
                    cout: *ch,
                    pad: 0,
                };
                let lc = conv::conv3x3s2_launch(&shape).map_err(lowering_error)?;
                let out = pool.alloc();
                steps.push(launch(
                    format!("encoder {name}"),
                    "conv",
                    lc.kernel,
                    lc.config,
                    Params::Conv3x3S2(conv::Conv3x3S2Params {
                        x: ptr(cur.off),
                        w: weight(&format!("{name}.weight"))?,
                        bias: weight(&format!("{name}.bias"))?,
                        residual: std::ptr::null(),
                        out: ptr_mut(pool.off(out)),
                        t: t as i32,
                        h_in: step.height as i32,
                        w_in: step.width as i32,
                        cin: *ch as i32,
                        cout: *ch as i32,
                        pad: 0,
                    }),
                ));
                pool.release(cur.buf);
                cur = Loc {
                    off: pool.off(out),
                    buf: Some(out),
                };
            }
            TaeOp::DownT { name, ch, cache } => {
                // The context buffer `[1 + t, hw, ch]`: the cached frame (the first frame at
                // a stream's start), then the chunk; output frame s reads frames 2s .. 2s + 2.
                let frame = hw * ch * 2;
                if t % 2 != 0 {
                    return Err(lowering_error(format!(
                        "op {i}: DownT {name} over {t} frames (an even count is needed)"
                    )));
                }
                let chunk_at = l.ctx + frame;
                steps.push(Step::Copy {
                    label: format!("encoder {name} input"),
                    src: cur.off,
                    dst: chunk_at,
                    bytes: t * frame,
                    trace: Trace::default(),
                });
                pool.release(cur.buf);
                let cache_at = l.caches[*cache];
                steps.push(Step::Copy {
                    label: format!("encoder {name} context"),
                    src: if first { chunk_at } else { cache_at },
                    dst: l.ctx,
                    bytes: frame,
                    trace: Trace::default(),
                });
                let shape = conv::ConvTStrideShape {
                    t_out: t / 2,
                    hw,
                    cin: *ch,
                    cout: *ch,
                    taps: 3,
                    stride: 2,
                };
                let lc = conv::conv_tstride_launch(&shape).map_err(lowering_error)?;
                let out = pool.alloc();
                steps.push(launch(
                    format!("encoder {name}"),
                    "conv",
                    lc.kernel,
                    lc.config,
                    Params::ConvTStride(conv::ConvTStrideParams {
                        x: ptr(l.ctx),
                        w: weight(&format!("{name}.weight"))?,
                        bias: weight(&format!("{name}.bias"))?,
                        residual: std::ptr::null(),
                        out: ptr_mut(pool.off(out)),
                        t_out: (t / 2) as i32,
                        hw: hw as i32,
                        cin: *ch as i32,
                        cout: *ch as i32,
                        taps: 3,
                        stride: 2,
                    }),
                ));
                // The cache: the chunk's last input frame.
                steps.push(Step::Copy {
                    label: format!("encoder {name} cache"),
                    src: l.ctx + t * frame,
                    dst: cache_at,
                    bytes: frame,
                    trace: Trace::default(),
                });
                cur = Loc {
                    off: pool.off(out),
                    buf: Some(out),
                };
            }
            TaeOp::AddSaved { .. } => {
                let prev = if i == 0 {
                    "the start".to_string()
                } else {
                    format!("{:?}", ops[i - 1].op)
                };
                return Err(lowering_error(format!(
                    "op {i}: AddSaved after {prev} has no lowering (it fuses into a ConvT or \
                     Attention before it)"
                )));
            }
        }
        i += 1;
    }
    if !saved.is_empty() {
        return Err(lowering_error("the op list leaves saved activations"));
    }
    Ok((steps, cur.off))
}
