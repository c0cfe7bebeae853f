//! FLOPs and bytes of a Wan-family decoder's ops (TAEHV, the Wan VAE; the op lists of
//! `model::video_ops`) per chunk, at f16 on a device, and the memory such a decoder needs:
//! its weights, its per-stream causal caches and its largest live activations.
//!
//! Conventions (those of the module, applied to these ops): FLOPs are
//! [`VideoGraph::step_flops`]'s (two per multiply-add of convolutions and attention
//! products; norms and elementwise ops count one per element, as the DiT's do, a RMS norm 4
//! and 8 with its SiLU). Bytes are compulsory traffic at 2 bytes per element: an op reads
//! its input activation and its weights once (a causal convolution also its cached frames)
//! and writes its output once; `Save` and `WithPast` only keep or join buffers (`WithPast`
//! copies its cached frame). Attention is flash style (no score matrix in memory).

use super::{CostSum, OpClass, OpCost};
use crate::model::video_ops::{Conv, VideoGraph, VideoOp};

/// Bytes per element of activations, caches and weights on a device (f16).
const ELEM_BYTES: u64 = 2;

/// What one chunk of a Wan-family decoder costs, op by op, and the memory it needs.
#[derive(Debug, Clone)]
pub struct VideoCost {
    /// Latent frames of the chunk.
    pub latent_frames: usize,
    /// Video frames the chunk gives.
    pub video_frames: usize,
    /// Per op of the graph, in order.
    pub ops: Vec<OpCost>,
    pub total: CostSum,
    pub parameters: u64,
    /// The weights at f16.
    pub weight_bytes: u64,
    /// Every per-stream cache together at f16 (kept between chunks).
    pub cache_bytes: u64,
    /// An estimate of the activations live at once: the largest op's input and output and
    /// one saved residual input of the same size, at f16.
    pub activation_bytes: u64,
}

fn conv_weight_elems(c: &Conv) -> u64 {
    c.weight_shape().iter().product::<usize>() as u64 + if c.bias { c.cout as u64 } else { 0 }
}

impl VideoCost {
    /// The cost of decoding a chunk of `n` latent frames; `first` when it starts a stream
    /// (the first-frame rules change the frame counts).
    pub fn of(graph: &VideoGraph, n: usize, first: bool) -> VideoCost {
        let mut ops = Vec::with_capacity(graph.steps.len());
        let mut total = CostSum::default();
        for (i, step) in graph.steps.iter().enumerate() {
            let frames = step.frames.count(n, first) as u64;
            let pixels = (step.height * step.width) as u64;
            let input = frames * pixels * step.channels as u64;
            let (of, oh, ow, oc) = step.output();
            let output = of.count(n, first) as u64 * (oh * ow * oc) as u64;
            let flops = graph.step_flops(i, n, first);
            let cache = |c: &Conv| match c.cache {
                Some(k) => graph.caches[k].elems() as u64,
                None => 0,
            };
            let (weights, extra, class, eflops) = match &step.op {
                VideoOp::Conv(c) => (conv_weight_elems(c), cache(c), OpClass::Gemm, 0),
                VideoOp::TemporalUp { conv, .. }
                | VideoOp::TemporalPool { conv, .. }
                | VideoOp::TemporalDown { conv } => {
                    (conv_weight_elems(conv), cache(conv), OpClass::Gemm, 0)
                }
                VideoOp::AddSaved { skip, .. } => (
                    skip.as_ref().map_or(0, conv_weight_elems),
                    input,
                    if skip.is_some() {
                        OpClass::Gemm
                    } else {
                        OpClass::Elementwise
                    },
                    output,
                ),
                VideoOp::Attention { ch, .. } => {
                    let ch = *ch as u64;
                    (4 * ch * ch + 4 * ch, 0, OpClass::Attention, 0)
                }
                VideoOp::RmsNorm { ch, silu, .. } => (
                    *ch as u64,
                    0,
                    OpClass::Norm,
                    if *silu { 8 } else { 4 } * output,
                ),
                VideoOp::Denormalize { .. } | VideoOp::Normalize { .. } => {
                    (0, 0, OpClass::Elementwise, 2 * output)
                }
                VideoOp::SoftClamp { .. } => (0, 0, OpClass::Elementwise, 3 * output),
                VideoOp::Relu => (0, 0, OpClass::Elementwise, output),
                VideoOp::WithPast { .. } | VideoOp::DropFirst { .. } => {
                    (0, 0, OpClass::Layout, 0)
                }
                VideoOp::Save => (0, 0, OpClass::Layout, 0),
            };
            let oc = if matches!(step.op, VideoOp::Save) {
                OpCost {
                    flops: 0,
                    bytes_read: 0,
                    bytes_written: 0,
                    class: OpClass::Layout,
                }
            } else {
                OpCost {
                    flops: flops + eflops,
                    bytes_read: (input + weights + extra) * ELEM_BYTES,
                    bytes_written: output * ELEM_BYTES,
                    class,
                }
            };
            total.add(&oc);
            ops.push(oc);
        }
        let parameters = graph.parameters();
        let (largest, _) = graph.largest_activation(n, first);
        VideoCost {
            latent_frames: n,
            video_frames: graph.frames_out(n, first),
            ops,
            total,
            parameters,
            weight_bytes: parameters * ELEM_BYTES,
            cache_bytes: graph.cache_elems() as u64 * ELEM_BYTES,
            activation_bytes: 3 * largest as u64 * ELEM_BYTES,
        }
    }

    /// Weights, caches and activations together: the device memory the decoder needs.
    pub fn memory_bytes(&self) -> u64 {
        self.weight_bytes + self.cache_bytes + self.activation_bytes
    }
}
