//! The device decoder's one allocation: its packed f16 weights, the input latents, the
//! activation arena (planned by the engine's one arena planner, see [`super::lower`]), the
//! temporal convolutions' context buffer, the causal caches and the kernels' scratch.

use std::collections::HashMap;

use half::f16;
use streamdit_kernels::conv;

use super::lower::lower_list;
use super::lowering_error;
use crate::checkpoint::Weights;
use crate::error::{fmt_shape, Error, Result};
use crate::model::tae::{TaeGraph, TaeOp};

/// Byte alignment of every region of the allocation.
const ALIGN: usize = 256;

fn align(n: usize) -> usize {
    n.div_ceil(ALIGN) * ALIGN
}

/// Byte offsets of the allocation's regions.
#[derive(Debug, Clone, Default)]
pub(super) struct Layout {
    /// Packed f16 weights by name (`decoder.` prefix dropped; `{attn}.qkv.weight/bias`
    /// hold q, k and v stacked).
    pub(super) weights: HashMap<String, usize>,
    pub(super) weight_bytes: usize,
    /// `[n, h, w, C]` f16 latents.
    pub(super) input: usize,
    /// Activation buffers of `pool_bytes` each.
    pub(super) pool: usize,
    pub(super) pool_bytes: usize,
    pub(super) pool_count: usize,
    /// The `ConvT` context buffer `[2 + T, H*W, ch]`.
    pub(super) ctx: usize,
    /// Per `ConvT`: its last two input frames.
    pub(super) caches: Vec<usize>,
    pub(super) gn_part: usize,
    pub(super) gn_stats: usize,
    pub(super) qkv: usize,
    pub(super) attn_out: usize,
    pub(super) total: usize,
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

/// The tensor `{prefix}.{name}` (`decoder.` or `encoder.`) with `shape`, or the error
/// naming it.
fn tensor<'a>(weights: &'a Weights, prefix: &str, name: &str, shape: &[usize]) -> Result<&'a [f32]> {
    let full = format!("{prefix}.{name}");
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
    /// `[cout, cin, 3, 3]` to the kernel's `[cout, 3, 3, pad8(cin)]` (the encoder's
    /// `conv_in` reads RGB padded to 8 channels: zero weights for the padding).
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
    /// Elements of the packed tensor.
    fn len(&self) -> usize {
        match self.packing {
            Packing::Conv3x3 { cout, cin } => cout * 9 * pad8(cin),
            _ => self
                .sources
                .iter()
                .map(|(_, shape)| shape.iter().product::<usize>())
                .sum(),
        }
    }
}

/// `c` rounded up to a multiple of 8: the convolution kernels read 16-byte pixel rows.
pub(super) fn pad8(c: usize) -> usize {
    c.div_ceil(8) * 8
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
            &TaeOp::DownS { ref name, ch } => {
                let packing = Packing::Conv3x3 { cout: ch, cin: ch };
                one(format!("{name}.weight"), vec![ch, ch, 3, 3], packing);
                one(format!("{name}.bias"), vec![ch], Packing::Concat);
            }
            &TaeOp::DownT { ref name, ch, .. } => {
                let packing = Packing::ConvT3 { cout: ch, cin: ch };
                one(format!("{name}.weight"), vec![ch, ch, 3], packing);
                one(format!("{name}.bias"), vec![ch], Packing::Concat);
            }
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

/// The decoder's (or encoder's) weights, converted to f16 and packed for the kernels, by
/// name.
pub(super) fn pack_weights(graph: &TaeGraph, weights: &Weights) -> Result<Vec<(String, Vec<u16>)>> {
    let prefix = graph.kind.prefix();
    packed_tensors(graph)
        .into_iter()
        .map(|p| {
            let mut data = Vec::with_capacity(p.len());
            for (name, shape) in &p.sources {
                data.extend_from_slice(tensor(weights, prefix, name, shape)?);
            }
            let data = match p.packing {
                Packing::Concat => Ok(data),
                Packing::Conv3x3 { cout, cin } => {
                    // Zero input channels up to a multiple of 8.
                    let cp = pad8(cin);
                    let mut padded = vec![0.0f32; cout * cp * 9];
                    for o in 0..cout {
                        let src = &data[o * cin * 9..][..cin * 9];
                        padded[o * cp * 9..][..cin * 9].copy_from_slice(src);
                    }
                    conv::pack_conv3x3_weight(&padded, cout, cp)
                }
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
    // The first op's input: the decoder's latents, or the encoder's 4n video frames with
    // their RGB padded to 8 channels.
    let input = graph.steps.first().map_or(0, |s| {
        s.frames * n * s.height * s.width * pad8(s.channels)
    });
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
            TaeOp::DownT { ch, cache, .. } => {
                s.ctx = s.ctx.max((1 + t) * hw * ch);
                s.caches[*cache] = hw * ch;
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
pub(super) fn plan_layout(graph: &TaeGraph, max_frames: usize) -> Result<Layout> {
    if max_frames == 0 {
        return Err(Error::Invalid(format!(
            "TAE {}: chunks must have at least one latent frame",
            graph.kind.prefix()
        )));
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
