//! The device decoder's one allocation: its packed f16 convolution weights, the input
//! latents (channels padded to a multiple of 8), the activation arena (planned per lowered
//! list by the engine's one arena planner, see [`super::lower`]) and the per-stream caches.

use std::collections::HashMap;

use half::f16;
use streamdit_kernels::{conv, vae};

use super::lower::lower_list;
use super::lowering_error;
use crate::checkpoint::Weights;
use crate::error::{fmt_shape, Error, Result};
use crate::model::video_ops::{CacheSpec, Conv, VideoGraph, VideoOp};

/// Byte alignment of every region of the allocation.
const ALIGN: usize = 256;

fn align(n: usize) -> usize {
    n.div_ceil(ALIGN) * ALIGN
}

/// `c` rounded up to a multiple of 8: the convolution kernels read 16-byte pixel rows.
pub(super) fn pad8(c: usize) -> usize {
    c.div_ceil(8) * 8
}

/// Byte offsets of the allocation's regions.
#[derive(Debug, Clone, Default)]
pub(super) struct Layout {
    /// Packed f16 tensors by checkpoint name (`{conv}.weight`, `{conv}.bias`).
    pub(super) weights: HashMap<String, usize>,
    pub(super) weight_bytes: usize,
    /// `[n, h, w, pad8(C)]` f16 latents.
    pub(super) input: usize,
    /// The activation arena and its size (the largest any chunk size's plan needs).
    pub(super) arena: usize,
    pub(super) arena_bytes: usize,
    /// Per cache of the graph, its f16 frames.
    pub(super) caches: Vec<usize>,
    pub(super) cache_bytes: usize,
    /// Bytes that stay zero (as large as the largest cache).
    pub(super) zeros: usize,
    pub(super) zero_bytes: usize,
    pub(super) total: usize,
}

/// One convolution of the op list as the kernels take it: weight `[cout_pad, taps, cin_pad]`
/// (`conv3x3_f16`, `conv3d_f16`, `conv_t3_f16`) or `[cout_pad, cin_pad]` (`conv1x1_f16`),
/// input channels zero-padded to a multiple of 8, and the output channels of every
/// convolution but the last one too (zero rows), so every activation a kernel reads has a
/// multiple of 8 channels; bias `[cout_pad]` when it has one.
pub(super) struct PackedConv<'a> {
    pub(super) conv: &'a Conv,
    pub(super) cin_pad: usize,
    pub(super) cout_pad: usize,
}

impl PackedConv<'_> {
    fn taps(&self) -> usize {
        let c = self.conv;
        c.taps_t * c.taps_s * c.taps_s
    }
    fn weight_len(&self) -> usize {
        self.cout_pad * self.taps() * self.cin_pad
    }
}

/// The latent normalisation that follows convolution `c` directly (the Wan VAE encoder's
/// `conv1`, then `Normalize`): its mean and std. The lowering folds it into the
/// convolution's packed weight and bias, which then keep only the `mean.len()` channels it
/// maps (docs/wan_vae.md "The encoder on the device").
pub(super) fn folded_normalize<'a>(graph: &'a VideoGraph, c: &Conv) -> Option<(&'a [f32], &'a [f32])> {
    graph.steps.windows(2).find_map(|p| match (&p[0].op, &p[1].op) {
        (VideoOp::Conv(k), VideoOp::Normalize { mean, std }) if std::ptr::eq(k, c) => {
            Some((mean.as_slice(), std.as_slice()))
        }
        _ => None,
    })
}

/// The channels in memory of convolution `c`'s output: padded to a multiple of 8 unless it
/// is the op list's last convolution (the RGB output, or the latents: a convolution with a
/// folded normalisation keeps only the normalised channels).
pub(super) fn cout_pad(graph: &VideoGraph, c: &Conv) -> usize {
    if let Some((mean, _)) = folded_normalize(graph, c) {
        return mean.len();
    }
    let last = graph.steps.iter().rev().find_map(|s| match &s.op {
        VideoOp::Conv(c) => Some(c),
        _ => None,
    });
    if last.is_some_and(|l| std::ptr::eq(l, c)) {
        c.cout
    } else {
        pad8(c.cout)
    }
}

/// Every convolution the lowering launches, in op order: 2D ones (1x1, 3x3) and the causal
/// 3D ones (3x3x3, and the 3x1x1 temporal upsampling convolution).
pub(super) fn packed_convs(graph: &VideoGraph) -> Vec<PackedConv<'_>> {
    let mut out = Vec::new();
    for step in &graph.steps {
        let (conv, padded_out) = match &step.op {
            VideoOp::Conv(c)
            | VideoOp::TemporalPool { conv: c, .. }
            | VideoOp::TemporalDown { conv: c } => (c, cout_pad(graph, c)),
            VideoOp::TemporalUp { conv: c, .. } => (c, c.cout),
            VideoOp::AddSaved { skip: Some(c), .. } => (c, c.cout),
            _ => continue,
        };
        if matches!(conv.taps_t, 1 | 3) && matches!(conv.taps_s, 1 | 3) {
            out.push(PackedConv {
                conv,
                cin_pad: pad8(conv.cin),
                cout_pad: padded_out,
            });
        }
    }
    out
}

/// The RMS norms' gains: `{name}.gamma` (`[ch, 1, ..]` in the checkpoint) as `[ch]`.
fn gammas(graph: &VideoGraph) -> Vec<(String, usize, usize)> {
    graph
        .steps
        .iter()
        .filter_map(|s| match &s.op {
            VideoOp::RmsNorm {
                name,
                ch,
                gamma_rank,
                ..
            } => Some((format!("{name}.gamma"), *ch, *gamma_rank)),
            _ => None,
        })
        .collect()
}

/// The attentions' projections: `({qkv}, {proj}, ch)`.
fn attentions(graph: &VideoGraph) -> Vec<(String, String, usize)> {
    graph
        .steps
        .iter()
        .filter_map(|s| match &s.op {
            VideoOp::Attention { qkv, proj, ch, .. } => Some((qkv.clone(), proj.clone(), *ch)),
            _ => None,
        })
        .collect()
}

/// The tensor `name` with `shape`, or the error naming it.
fn tensor<'a>(weights: &'a Weights, name: &str, shape: &[usize]) -> Result<&'a [f32]> {
    let t = weights.get(name)?;
    if t.shape != shape {
        return Err(Error::Tensor {
            path: weights.source().to_string(),
            tensor: name.to_string(),
            expected: format!("shape {}", fmt_shape(shape)),
            found: format!("shape {}", fmt_shape(&t.shape)),
        });
    }
    Ok(&t.data)
}

fn to_f16(v: &[f32]) -> Vec<u16> {
    v.iter().map(|&x| f16::from_f32(x).to_bits()).collect()
}

/// The decoder's convolution tensors from `weights`, converted to f16 and packed for the
/// kernels, by name. A missing or mis-shaped tensor is an error naming it.
pub(super) fn pack_weights(graph: &VideoGraph, weights: &Weights) -> Result<Vec<(String, Vec<u16>)>> {
    let mut out = Vec::new();
    for p in packed_convs(graph) {
        let c = p.conv;
        let (cin, cout, taps) = (c.cin, c.cout, p.taps());
        let name = format!("{}.weight", c.name);
        let w = tensor(weights, &name, &c.weight_shape())?;
        // A folded normalisation `(y - mean) / std` of the first `mean.len()` outputs: row
        // `o` scaled by `1 / std[o]` (the CPU's reciprocal), its bias `(b - mean) / std`.
        let fold = folded_normalize(graph, c);
        let scale = |o: usize| fold.map_or(1.0, |(_, std)| 1.0 / std[o]);
        let rows = cout.min(p.cout_pad);
        // [cout_pad, cin_pad, taps], the padding zeros.
        let mut padded = vec![0.0f32; p.weight_len()];
        for o in 0..rows {
            let src = &w[o * cin * taps..][..cin * taps];
            let dst = &mut padded[o * p.cin_pad * taps..][..cin * taps];
            for (d, &v) in dst.iter_mut().zip(src) {
                *d = v * scale(o);
            }
        }
        let (co, ci) = (p.cout_pad, p.cin_pad);
        let packed = match (c.taps_t, c.taps_s) {
            (1, 1) => Ok(padded),
            (1, _) => conv::pack_conv3x3_weight(&padded, co, ci),
            (_, 1) => conv::pack_conv_t3_weight(&padded, co, ci),
            _ => conv::pack_conv3d_weight(&padded, co, ci),
        }
        .map_err(lowering_error)?;
        out.push((name, to_f16(&packed)));
        if c.bias {
            let name = format!("{}.bias", c.name);
            let mut b = tensor(weights, &name, &[cout])?.to_vec();
            b.resize(p.cout_pad, 0.0);
            if let Some((mean, _)) = fold {
                for (o, v) in b.iter_mut().enumerate() {
                    *v = (*v - mean[o]) * scale(o);
                }
            }
            out.push((name, to_f16(&b)));
        }
    }
    for (qkv, proj, c) in attentions(graph) {
        let wq = format!("{qkv}.weight");
        out.push((wq.clone(), to_f16(tensor(weights, &wq, &[3 * c, c, 1, 1])?)));
        let bq = format!("{qkv}.bias");
        let bqkv = tensor(weights, &bq, &[3 * c])?;
        out.push((bq, to_f16(bqkv)));
        let wname = format!("{proj}.weight");
        let wp = tensor(weights, &wname, &[c, c, 1, 1])?;
        out.push((wname, to_f16(wp)));
        // The value bias folded into the projection's (each softmax row sums to 1).
        let bname = format!("{proj}.bias");
        let bp = tensor(weights, &bname, &[c])?;
        let f64s = |v: &[f32]| v.iter().map(|&x| f64::from(x)).collect::<Vec<f64>>();
        let folded = vae::fold_value_bias(&f64s(wp), &f64s(bp), &f64s(&bqkv[2 * c..]))
            .map_err(lowering_error)?;
        let folded: Vec<f32> = folded.iter().map(|&v| v as f32).collect();
        out.push((bname, to_f16(&folded)));
    }
    for (name, ch, rank) in gammas(graph) {
        let mut shape = vec![1; rank];
        shape[0] = ch;
        let g = tensor(weights, &name, &shape)?;
        out.push((name, to_f16(g)));
    }
    Ok(out)
}

/// Frames of the op list's input for a chunk of up to `n` latent frames: `n` for a decoder,
/// `4 n` video frames for an encoder.
pub(super) fn input_frames(graph: &VideoGraph, n: usize) -> usize {
    graph
        .steps
        .first()
        .map_or(n, |s| s.frames.count(n, false).max(s.frames.count(n, true)))
}

/// Lays out the allocation for chunks of up to `max_frames` latent frames: a dry run of the
/// lowering of every chunk size, at a stream's start and after, at offset 0 sizes the arena
/// (so any list fits it), and fails on an op without a lowering.
pub(super) fn plan_layout(graph: &VideoGraph, max_frames: usize) -> Result<Layout> {
    if max_frames == 0 {
        return Err(Error::Invalid(format!(
            "{} on a device: chunks must have at least one latent frame",
            graph.family
        )));
    }
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
    for p in packed_convs(graph) {
        let off = b.take(p.weight_len() * 2);
        l.weights.insert(format!("{}.weight", p.conv.name), off);
        if p.conv.bias {
            let off = b.take(p.cout_pad * 2);
            l.weights.insert(format!("{}.bias", p.conv.name), off);
        }
    }
    for (name, ch, _) in gammas(graph) {
        l.weights.insert(name, b.take(ch * 2));
    }
    for (qkv, proj, c) in attentions(graph) {
        l.weights.insert(format!("{qkv}.weight"), b.take(3 * c * c * 2));
        l.weights.insert(format!("{qkv}.bias"), b.take(3 * c * 2));
        l.weights.insert(format!("{proj}.weight"), b.take(c * c * 2));
        l.weights.insert(format!("{proj}.bias"), b.take(c * 2));
    }
    l.weight_bytes = b.0;
    let (c, h, w) = (graph.latent_channels, graph.latent_height, graph.latent_width);
    l.input = b.take(input_frames(graph, max_frames) * h * w * pad8(c) * 2);
    let caches_from = b.0;
    // Channels in memory are padded to a multiple of 8, as the activations they copy.
    let cache_bytes = |s: &CacheSpec| s.frames * s.height * s.width * pad8(s.channels) * 2;
    l.caches = graph.caches.iter().map(|s| b.take(cache_bytes(s))).collect();
    l.cache_bytes = b.0 - caches_from;
    // Zeros: the causal convolutions' history at a stream's start, copied from here.
    l.zero_bytes = graph.caches.iter().map(cache_bytes).max().unwrap_or(0);
    l.zeros = b.take(l.zero_bytes);
    // The arena last: its size comes from the dry runs, which need the other offsets.
    l.arena = b.0;
    let mut arena_bytes = 0;
    for n in 1..=max_frames {
        for first in [true, false] {
            let (_, _, bytes) = lower_list(graph, &l, 0, n, first)?;
            arena_bytes = arena_bytes.max(bytes);
        }
    }
    l.arena_bytes = align(arena_bytes);
    l.total = l.arena + l.arena_bytes;
    Ok(l)
}
