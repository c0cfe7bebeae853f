//! The TAE decoder (TAE_SPEC) on a device: the op list of [`crate::model::tae`] lowered to
//! the decoder kernels (`kernels/cuda/conv.cu`, and the window attention kernel for the
//! mid-block) over one allocation, and replayed as one captured graph per chunk size.
//!
//! | op list | launches |
//! |---|---|
//! | `GroupNorm` (+ SiLU) | `groupnorm_stats`, `groupnorm_finalize`, `groupnorm_apply` |
//! | `Conv2d` (nearest 2x fused) | `conv3x3_f16` (writing straight into the context buffer when a `ConvT` follows) |
//! | [`RepeatFrames`] + `ConvT` | `conv_t3_f16` with `upsample_t` |
//! | `ConvT` + `AddSaved` | the 1x1 `skip` (`conv1x1_f16`) if any, then `conv_t3_f16` with it as the fused residual |
//! | `Attention` + `AddSaved` | `conv1x1_f16` (QKV), `attn_window` over whole frames without q/k norm, `conv1x1_f16` (out, residual fused) |
//!
//! Every `ConvT` reads `[2 + T, H*W, ch]` from one shared context buffer: its producer
//! writes the chunk's frames after two context frames, which copies fill first from the
//! layer's cache (the previous chunk's last two input frames) or, at a stream's start, from
//! the first frame (TAE_SPEC's replicate padding). After the launch the layer's last two
//! input frames are copied to its cache. Any op sequence without a lowering is an error.
//!
//! Latents come in as the host's `[n, C, H, W]` f32 (a popped chunk), are converted to
//! channels-last f16 on the host into pinned memory and copied in; the RGB result
//! `[4n, 8H, 8W, 3]` comes back in f16 through pinned memory and is mapped to bytes on the
//! host. The allocation is separate from the DiT's, on the
//! device's own streams, so on a GPU the decode of chunk `k` runs beside the DiT call the
//! stream prefetched.
//!
//! [`RepeatFrames`]: TaeOp::RepeatFrames

use std::collections::HashMap;

use half::f16;
use streamdit_kernels::{attention, conv};

use super::device::{Device, DeviceBuffer, GraphId, PinnedBuffer, Stream};
use super::lower::{self, Params, Step, Trace};
use crate::checkpoint::Weights;
use crate::decoder::tae::to_bytes;
use crate::decoder::Decoder;
use crate::error::{fmt_shape, Error, Result};
use crate::model::tae::{TaeGraph, TaeOp, TEMPORAL_UPSAMPLE};

/// Byte alignment of every region of the allocation.
const ALIGN: usize = 256;

fn align(n: usize) -> usize {
    n.div_ceil(ALIGN) * ALIGN
}

fn lowering_error(what: impl std::fmt::Display) -> Error {
    Error::Invalid(format!("TAE decoder lowering: {what}"))
}

/// Byte offsets of the allocation's regions.
#[derive(Debug, Clone, Default)]
struct Layout {
    /// Packed f16 weights by name (`decoder.` prefix dropped; `{attn}.qkv.weight/bias`
    /// hold q, k and v stacked).
    weights: HashMap<String, usize>,
    weight_bytes: usize,
    /// `[n, h, w, C]` f16 latents.
    input: usize,
    /// Activation buffers of `pool_bytes` each.
    pool: usize,
    pool_bytes: usize,
    pool_count: usize,
    /// The `ConvT` context buffer `[2 + T, H*W, ch]`.
    ctx: usize,
    /// Per `ConvT`: its last two input frames.
    caches: Vec<usize>,
    gn_part: usize,
    gn_stats: usize,
    qkv: usize,
    attn_out: usize,
    total: usize,
}

/// Element counts the regions need for chunks of up to `frames` latent frames.
#[derive(Debug, Clone, Default)]
struct Sizes {
    input: usize,
    act: usize,
    ctx: usize,
    caches: Vec<usize>,
    gn_part: usize,
    gn_stats: usize,
    qkv: usize,
    attn_out: usize,
}

/// Reference-counted activation buffers.
struct Pool {
    refs: Vec<u32>,
}

impl Pool {
    fn alloc(&mut self) -> usize {
        match self.refs.iter().position(|&r| r == 0) {
            Some(i) => {
                self.refs[i] = 1;
                i
            }
            None => {
                self.refs.push(1);
                self.refs.len() - 1
            }
        }
    }
    fn hold(&mut self, buf: Option<usize>) {
        if let Some(i) = buf {
            self.refs[i] += 1;
        }
    }
    fn release(&mut self, buf: Option<usize>) {
        if let Some(i) = buf {
            self.refs[i] -= 1;
        }
    }
}

/// Where an activation is: a byte offset, and the pool buffer holding it (none for the
/// input and the context buffer).
#[derive(Debug, Clone, Copy)]
struct Loc {
    off: usize,
    buf: Option<usize>,
}

/// A lowered list with its graph, once captured, and the pinned host buffers of its input
/// latents and output RGB.
struct List {
    steps: Vec<Step>,
    graph: Option<GraphId>,
    output: usize,
    pinned_in: PinnedBuffer<u16>,
    pinned_out: PinnedBuffer<u16>,
}

/// The TAE decoder on device `D`, implementing [`Decoder`] for chunks of any size (longer
/// inputs are decoded in pieces of the size it was made for).
pub struct DeviceTae<D: Device> {
    dev: D,
    graph: TaeGraph,
    mem: DeviceBuffer<u8>,
    layout: Layout,
    max_frames: usize,
    /// By (latent frames, stream start).
    lists: HashMap<(usize, bool), List>,
    started: bool,
    use_graphs: bool,
}

/// The tensor `decoder.{name}` with `shape`, or the error naming it.
fn tensor<'a>(weights: &'a Weights, name: &str, shape: &[usize]) -> Result<&'a [f32]> {
    let full = format!("decoder.{name}");
    let t = weights.get(&full)?;
    if t.shape != shape {
        return Err(Error::Tensor {
            path: weights.source().to_string(),
            tensor: full,
            expected: format!("shape {}", fmt_shape(shape)),
            found: format!("shape {}", fmt_shape(&t.shape)),
        });
    }
    Ok(&t.data)
}

/// How a packed tensor is made from its checkpoint tensors.
#[derive(Debug, Clone, Copy)]
enum Packing {
    /// The sources as they are, one after the other.
    Concat,
    /// `[cout, cin, 3, 3]` to the kernel's `[cout, 3, 3, cin]`.
    Conv3x3 { cout: usize, cin: usize },
    /// `[cout, cin, 3]` to the kernel's `[cout, 3, cin]`.
    ConvT3 { cout: usize, cin: usize },
}

/// One tensor of the device decoder: its name in the lowering (`decoder.` dropped), the
/// checkpoint tensors it is made of with their shapes, and how.
struct Packed {
    name: String,
    sources: Vec<(String, Vec<usize>)>,
    packing: Packing,
}

impl Packed {
    fn len(&self) -> usize {
        self.sources
            .iter()
            .map(|(_, shape)| shape.iter().product::<usize>())
            .sum()
    }
}

/// The device decoder's tensors in upload order: the checkpoint's, with the attention's q,
/// k and v stacked into one `{attn}.qkv` projection and the convolutions repacked.
fn packed_tensors(graph: &TaeGraph) -> Vec<Packed> {
    let mut out = Vec::new();
    // One checkpoint tensor `name` of `shape`, packed by `packing`.
    let mut one = |name: String, shape: Vec<usize>, packing| {
        out.push(Packed {
            sources: vec![(name.clone(), shape)],
            name,
            packing,
        })
    };
    let mut qkv = Vec::new();
    for step in &graph.steps {
        match &step.op {
            TaeOp::Save | TaeOp::RepeatFrames | TaeOp::AddSaved { skip: None, .. } => {}
            TaeOp::GroupNorm { name, ch, .. } => {
                one(format!("{name}.weight"), vec![*ch], Packing::Concat);
                one(format!("{name}.bias"), vec![*ch], Packing::Concat);
            }
            &TaeOp::Conv2d {
                ref name,
                cin,
                cout,
                ..
            } => {
                let packing = Packing::Conv3x3 { cout, cin };
                one(format!("{name}.weight"), vec![cout, cin, 3, 3], packing);
                one(format!("{name}.bias"), vec![cout], Packing::Concat);
            }
            &TaeOp::ConvT { ref name, ch, .. } => {
                let packing = Packing::ConvT3 { cout: ch, cin: ch };
                one(format!("{name}.weight"), vec![ch, ch, 3], packing);
                one(format!("{name}.bias"), vec![ch], Packing::Concat);
            }
            TaeOp::Attention { name, ch, .. } => {
                // q, k and v stacked: one projection to [3 ch] (placed first, see below).
                for (part, shape) in [("weight", vec![*ch, *ch]), ("bias", vec![*ch])] {
                    qkv.push(Packed {
                        name: format!("{name}.qkv.{part}"),
                        sources: ["q", "k", "v"]
                            .map(|p| (format!("{name}.{p}.{part}"), shape.clone()))
                            .to_vec(),
                        packing: Packing::Concat,
                    });
                }
                one(
                    format!("{name}.out.weight"),
                    vec![*ch, *ch],
                    Packing::Concat,
                );
                one(format!("{name}.out.bias"), vec![*ch], Packing::Concat);
            }
            &TaeOp::AddSaved {
                skip: Some(ref name),
                cin,
                cout,
            } => {
                one(
                    format!("{name}.weight"),
                    vec![cout, cin, 1, 1],
                    Packing::Concat,
                );
                one(format!("{name}.bias"), vec![cout], Packing::Concat);
            }
        }
    }
    // The upload order does not matter to the lowering, which looks tensors up by name.
    out.extend(qkv);
    out
}

/// The decoder's weights, converted to f16 and packed for the kernels, by name.
fn pack_weights(graph: &TaeGraph, weights: &Weights) -> Result<Vec<(String, Vec<u16>)>> {
    packed_tensors(graph)
        .into_iter()
        .map(|p| {
            let mut data = Vec::with_capacity(p.len());
            for (name, shape) in &p.sources {
                data.extend_from_slice(tensor(weights, name, shape)?);
            }
            let data = match p.packing {
                Packing::Concat => Ok(data),
                Packing::Conv3x3 { cout, cin } => conv::pack_conv3x3_weight(&data, cout, cin),
                Packing::ConvT3 { cout, cin } => conv::pack_conv_t3_weight(&data, cout, cin),
            }
            .map_err(lowering_error)?;
            let bits = data.iter().map(|&x| f16::from_f32(x).to_bits()).collect();
            Ok((p.name, bits))
        })
        .collect()
}

/// The regions' element counts for chunks of `n` latent frames.
fn sizes(graph: &TaeGraph, n: usize) -> Result<Sizes> {
    let input = graph.latent_height * graph.latent_width * graph.latent_channels * n;
    let mut s = Sizes {
        input,
        act: input,
        caches: vec![0; graph.caches],
        ..Sizes::default()
    };
    for step in &graph.steps {
        let hw = step.height * step.width;
        let t = step.frames * n;
        let (fo, ho, wo, co) = step.output();
        s.act = s.act.max(t * hw * step.channels).max(fo * n * ho * wo * co);
        match &step.op {
            TaeOp::ConvT { ch, cache, .. } => {
                s.ctx = s.ctx.max((2 + t) * hw * ch);
                s.caches[*cache] = 2 * hw * ch;
            }
            TaeOp::GroupNorm { ch, .. } => {
                let plan = conv::groupnorm_plan(&conv::GroupNormShape {
                    frames: t,
                    hw,
                    c: *ch,
                    groups: graph.groups,
                })
                .map_err(lowering_error)?;
                s.gn_part = s.gn_part.max(plan.part_len);
                s.gn_stats = s.gn_stats.max(plan.stats_len);
            }
            TaeOp::Attention { ch, .. } => {
                s.qkv = s.qkv.max(t * hw * 3 * ch);
                s.attn_out = s.attn_out.max(t * hw * ch);
            }
            _ => {}
        }
    }
    Ok(s)
}

/// Lays out the allocation: weights, input, `pool_count` activation buffers, the context
/// buffer, the caches and the scratch of GroupNorm and attention.
fn layout(weights: &[(String, usize)], s: &Sizes, pool_count: usize) -> Layout {
    struct Bump(usize);
    impl Bump {
        fn take(&mut self, bytes: usize) -> usize {
            let off = self.0;
            self.0 += align(bytes);
            off
        }
    }
    let mut b = Bump(0);
    let mut l = Layout::default();
    for (name, len) in weights {
        l.weights.insert(name.clone(), b.take(len * 2));
    }
    l.weight_bytes = b.0;
    l.input = b.take(s.input * 2);
    l.pool_bytes = align(s.act * 2);
    l.pool_count = pool_count;
    l.pool = b.take(l.pool_bytes * pool_count);
    l.ctx = b.take(s.ctx * 2);
    l.caches = s.caches.iter().map(|&c| b.take(c * 2)).collect();
    l.gn_part = b.take(s.gn_part * 4);
    l.gn_stats = b.take(s.gn_stats * 4);
    l.qkv = b.take(s.qkv * 2);
    l.attn_out = b.take(s.attn_out * 2);
    l.total = b.0;
    l
}

/// The allocation's layout for chunks of up to `max_frames` latent frames, with the weights
/// `packed` (names and f16 lengths): a dry run of the lowering at offset 0 counts the
/// activation buffers the largest chunk needs.
fn plan_layout(graph: &TaeGraph, max_frames: usize) -> Result<Layout> {
    if max_frames == 0 {
        return Err(Error::Invalid(
            "TAE decoder: chunks must have at least one latent frame".into(),
        ));
    }
    let lens: Vec<(String, usize)> = packed_tensors(graph)
        .into_iter()
        .map(|p| {
            let len = p.len();
            (p.name, len)
        })
        .collect();
    let s = sizes(graph, max_frames)?;
    let probe = layout(&lens, &s, 0);
    let (_, _, first_count) = lower_list(graph, &probe, 0, max_frames, true)?;
    let (_, _, steady_count) = lower_list(graph, &probe, 0, max_frames, false)?;
    Ok(layout(&lens, &s, first_count.max(steady_count)))
}

/// Device memory of the lowered decoder, by region (bytes, 256-byte aligned).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TaeMemory {
    pub weights: usize,
    /// The input latents and the activation buffers.
    pub activations: usize,
    /// How many activation buffers, and the bytes of each.
    pub buffers: usize,
    pub buffer_bytes: usize,
    /// The temporal convolutions' shared context buffer.
    pub context: usize,
    /// The causal caches kept between chunks.
    pub caches: usize,
    /// GroupNorm statistics and the attention's QKV and output.
    pub scratch: usize,
    pub total: usize,
}

/// What [`DeviceTae::new`] allocates for `graph` and chunks of up to `max_frames` latent
/// frames, without a device: the same lowering on zero weights of the graph's shapes.
pub fn device_memory(graph: &TaeGraph, max_frames: usize) -> Result<TaeMemory> {
    let l = plan_layout(graph, max_frames)?;
    // The regions follow each other in this order (see `layout`).
    let caches_at = l.caches.first().copied().unwrap_or(l.gn_part);
    Ok(TaeMemory {
        weights: l.weight_bytes,
        activations: l.ctx - l.input,
        buffers: l.pool_count,
        buffer_bytes: l.pool_bytes,
        context: caches_at - l.ctx,
        caches: l.gn_part - caches_at,
        scratch: l.total - l.gn_part,
        total: l.total,
    })
}

/// Lowers the op list for a chunk of `n` latent frames at offsets of `l` from `base`
/// (`first`: the chunk starts a stream). Returns the steps, the output's byte offset and
/// how many pool buffers it used.
fn lower_list(
    graph: &TaeGraph,
    l: &Layout,
    base: u64,
    n: usize,
    first: bool,
) -> Result<(Vec<Step>, usize, usize)> {
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
    let mut pool = Pool { refs: Vec::new() };
    let pool_off = |i: usize| l.pool + i * l.pool_bytes;
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
                        out: ptr_mut(pool_off(out)),
                        hw: common.1,
                        c: common.2,
                        groups: common.3,
                        silu: i32::from(*silu),
                    }),
                ));
                pool.release(cur.buf);
                cur = Loc {
                    off: pool_off(out),
                    buf: Some(out),
                };
            }
            TaeOp::Conv2d {
                name,
                cin,
                cout,
                upsample,
            } => {
                let shape = conv::Conv3x3Shape {
                    t,
                    h_in: step.height,
                    w_in: step.width,
                    cin: *cin,
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
                        off: pool_off(b),
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
                        cin: *cin as i32,
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
                        steps.push(conv1x1(skip, s.off, pool_off(b), null, shape)?);
                        pool.release(s.buf);
                        residual = ptr(pool_off(b));
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
                        out: ptr_mut(pool_off(out)),
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
                    off: pool_off(out),
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
                steps.push(conv1x1(&proj, l.attn_out, pool_off(out), residual, shape)?);
                pool.release(held);
                cur = Loc {
                    off: pool_off(out),
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
    Ok((steps, cur.off, pool.refs.len()))
}

impl<D: Device> DeviceTae<D> {
    /// The decoder of `graph` with the `decoder.*` tensors of `weights` (converted to f16),
    /// for chunks of up to `max_frames` latent frames, on `dev`. A missing or mis-shaped
    /// tensor is an error naming it.
    pub fn new(graph: TaeGraph, weights: &Weights, max_frames: usize, mut dev: D) -> Result<Self> {
        let packed = pack_weights(&graph, weights)?;
        let l = plan_layout(&graph, max_frames)?;
        let mem = dev.alloc::<u8>("TAE decoder (weights, activations, caches)", l.total)?;
        let mut bytes = vec![0u8; l.weight_bytes];
        for (name, v) in &packed {
            let off = l.weights[name];
            bytes[off..off + v.len() * 2].copy_from_slice(bytemuck::cast_slice(v));
        }
        if !bytes.is_empty() {
            dev.write(mem.slice(0, bytes.len())?, &bytes)?;
        }
        Ok(DeviceTae {
            dev,
            graph,
            mem,
            layout: l,
            max_frames,
            lists: HashMap::new(),
            started: false,
            use_graphs: true,
        })
    }

    /// Bytes of device memory the decoder holds ([`device_memory`]'s total).
    pub fn device_bytes(&self) -> usize {
        self.layout.total
    }

    /// Whether chunks run as captured graphs (default) or launch by launch.
    pub fn set_graphs(&mut self, on: bool) {
        self.use_graphs = on;
    }

    /// Decodes `latents [n, C, H, W]` to the RGB values `[4n, 8H, 8W, 3]` before the
    /// mapping to bytes (f16 on the device, widened), carrying the temporal caches.
    pub fn decode_f32(&mut self, latents: &[f32]) -> Result<Vec<f32>> {
        let g = &self.graph;
        let (c, h, w) = (g.latent_channels, g.latent_height, g.latent_width);
        let fe = c * h * w;
        if latents.len() % fe != 0 {
            return Err(Error::shape(
                "TAE decoder latents",
                format!("a multiple of C*H*W = {fe} values"),
                latents.len(),
            ));
        }
        let mut out = Vec::new();
        for piece in latents.chunks(self.max_frames * fe) {
            self.decode_piece(piece, piece.len() / fe, &mut out)?;
        }
        Ok(out)
    }

    fn decode_piece(&mut self, latents: &[f32], n: usize, out: &mut Vec<f32>) -> Result<()> {
        let g = &self.graph;
        let (c, h, w) = (g.latent_channels, g.latent_height, g.latent_width);
        let (fw, fh) = g.frame_size();
        let out_len = n * TEMPORAL_UPSAMPLE * fw * fh * 3;
        let first = !self.started;
        let key = (n, first);
        if !self.lists.contains_key(&key) {
            let (steps, output, _) =
                lower_list(&self.graph, &self.layout, self.mem.addr(), n, first)?;
            let steps = lower::resolve(&mut self.dev, steps)?;
            let pinned_in = self
                .dev
                .alloc_pinned("TAE decoder latents", n * c * h * w)?;
            let pinned_out = self.dev.alloc_pinned("TAE decoder RGB", out_len)?;
            self.lists.insert(
                key,
                List {
                    steps,
                    graph: None,
                    output,
                    pinned_in,
                    pinned_out,
                },
            );
        }
        let list = self.lists.get_mut(&key).expect("inserted above");
        // [n, C, H, W] f32 to [n, H, W, C] f16, straight into pinned memory.
        let staged = self.dev.pinned(list.pinned_in)?;
        for f in 0..n {
            for p in 0..h * w {
                for ch in 0..c {
                    let v = latents[(f * c + ch) * h * w + p];
                    staged[(f * h * w + p) * c + ch] = f16::from_f32(v).to_bits();
                }
            }
        }
        let input = self
            .mem
            .slice(self.layout.input, n * c * h * w * 2)?
            .cast::<u16>()?;
        self.dev
            .write_async(Stream::Compute, input, list.pinned_in)?;
        if self.use_graphs {
            let graph = match list.graph {
                Some(gid) => gid,
                None => {
                    self.dev.begin_capture()?;
                    let run = lower::run(&mut self.dev, self.mem, &list.steps);
                    let gid = self.dev.end_capture()?;
                    run?;
                    self.dev.upload(gid)?;
                    list.graph = Some(gid);
                    gid
                }
            };
            self.dev.replay(graph)?;
        } else {
            lower::run(&mut self.dev, self.mem, &list.steps)?;
        }
        let output = self.mem.slice(list.output, out_len * 2)?.cast::<u16>()?;
        self.dev
            .read_async(Stream::Compute, output, list.pinned_out)?;
        let rgb = self.dev.pinned(list.pinned_out)?;
        out.extend(rgb.iter().map(|&b| f16::from_bits(b).to_f32()));
        self.started = true;
        Ok(())
    }
}

impl<D: Device + Send> Decoder for DeviceTae<D> {
    fn frame_size(&self) -> (usize, usize) {
        self.graph.frame_size()
    }

    fn frames_per_latent(&self) -> usize {
        TEMPORAL_UPSAMPLE
    }

    fn decode(&mut self, latents: &[f32], out: &mut Vec<u8>) -> Result<()> {
        to_bytes(&self.decode_f32(latents)?, out);
        Ok(())
    }

    fn reset(&mut self) {
        self.started = false;
    }
}
