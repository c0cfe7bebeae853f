//! FLOPs and bytes of the TAE decoder's ops (docs/tae.md, Cost).

use super::{CostSum, GpuSpec, OpClass, OpCost};
use crate::memory::align;
use crate::model::tae::{TaeGraph, TaeOp, TaeStep};

/// Bytes per element of the decoder's activations and weights on a device (f16).
const TAE_ELEM_BYTES: u64 = 2;

/// The name of a decoder op's variant.
pub fn tae_op_kind(op: &TaeOp) -> &'static str {
    match op {
        TaeOp::Save => "Save",
        TaeOp::GroupNorm { silu: true, .. } => "GroupNormSilu",
        TaeOp::GroupNorm { silu: false, .. } => "GroupNorm",
        TaeOp::Conv2d { upsample: true, .. } => "UpConv2d",
        TaeOp::Conv2d {
            upsample: false, ..
        } => "Conv2d",
        TaeOp::ConvT { .. } => "ConvT",
        TaeOp::RepeatFrames => "RepeatFrames",
        TaeOp::DownS { .. } => "DownS",
        TaeOp::DownT { .. } => "DownT",
        TaeOp::Attention { .. } => "Attention",
        TaeOp::AddSaved { skip: Some(_), .. } => "AddSkipConv",
        TaeOp::AddSaved { skip: None, .. } => "AddSaved",
    }
}

/// The cost of one decoder op on a chunk of `latent_frames`, with the conventions of this
/// module at f16 (activations channels last, weights f16): a 3x3 convolution is
/// `2 * pixels_out * 9 * cin * cout` per frame, the causal temporal convolution `2 * pixels *
/// 3 * ch^2` and reads its two cached frames, attention counts its four projections
/// (`8 * pixels * ch^2`) and `4 * pixels^2 * ch` for `Q K^T` and `P V`, GroupNorm 5 FLOPs per
/// element (9 with SiLU), a residual add 1 (plus the 1x1 skip GEMM). `Save` only keeps a
/// buffer alive.
pub fn tae_op_cost(step: &TaeStep, latent_frames: usize) -> OpCost {
    let f = (step.frames * latent_frames) as u64;
    let pixels = (step.height * step.width) as u64;
    let (of, oh, ow, oc) = step.output();
    let input = f * pixels * step.channels as u64 * TAE_ELEM_BYTES;
    let output = (of * latent_frames) as u64 * (oh * ow * oc) as u64 * TAE_ELEM_BYTES;
    let out_elems = output / TAE_ELEM_BYTES;
    let cost = |flops: u64, read: u64, class| OpCost {
        flops,
        bytes_read: read,
        bytes_written: output,
        class,
    };
    use OpClass::*;
    match &step.op {
        TaeOp::Save => OpCost {
            flops: 0,
            bytes_read: 0,
            bytes_written: 0,
            class: Layout,
        },
        TaeOp::GroupNorm { ch, silu, .. } => cost(
            if *silu { 9 } else { 5 } * out_elems,
            input + 2 * *ch as u64 * TAE_ELEM_BYTES,
            Norm,
        ),
        TaeOp::Conv2d { cin, cout, .. } => {
            let (cin, cout) = (*cin as u64, *cout as u64);
            let weights = (9 * cin * cout + cout) * TAE_ELEM_BYTES;
            cost(
                2 * f * (oh * ow) as u64 * 9 * cin * cout,
                input + weights,
                Gemm,
            )
        }
        TaeOp::ConvT { ch, .. } => {
            let ch = *ch as u64;
            let cached = 2 * pixels * ch * TAE_ELEM_BYTES;
            let weights = (3 * ch * ch + ch) * TAE_ELEM_BYTES;
            cost(2 * f * pixels * 3 * ch * ch, input + cached + weights, Gemm)
        }
        TaeOp::RepeatFrames => cost(0, input, Layout),
        // The encoder's strided ops: 3x3 taps per output pixel, 3 taps per output frame.
        TaeOp::DownS { ch, .. } => {
            let ch = *ch as u64;
            let weights = (9 * ch * ch + ch) * TAE_ELEM_BYTES;
            cost(
                2 * f * (oh * ow) as u64 * 9 * ch * ch,
                input + weights,
                Gemm,
            )
        }
        TaeOp::DownT { ch, .. } => {
            let ch = *ch as u64;
            let cached = pixels * ch * TAE_ELEM_BYTES;
            let weights = (3 * ch * ch + ch) * TAE_ELEM_BYTES;
            let out_frames = (of * latent_frames) as u64;
            cost(
                2 * out_frames * pixels * 3 * ch * ch,
                input + cached + weights,
                Gemm,
            )
        }
        TaeOp::Attention { ch, .. } => {
            let ch = *ch as u64;
            let weights = 4 * (ch * ch + ch) * TAE_ELEM_BYTES;
            cost(
                f * (8 * pixels * ch * ch + 4 * pixels * pixels * ch),
                input + weights,
                Attention,
            )
        }
        TaeOp::AddSaved { skip, cin, cout } => {
            let saved = f * pixels * *cin as u64 * TAE_ELEM_BYTES;
            match skip {
                Some(_) => {
                    let (cin, cout) = (*cin as u64, *cout as u64);
                    let weights = (cin * cout + cout) * TAE_ELEM_BYTES;
                    cost(
                        2 * f * pixels * cin * cout + out_elems,
                        input + saved + weights,
                        Gemm,
                    )
                }
                None => cost(out_elems, input + saved, Elementwise),
            }
        }
    }
}

/// What the decoder costs per chunk and the device memory it needs.
#[derive(Debug, Clone, PartialEq)]
pub struct DecoderCost {
    /// Latent frames per chunk (`c`); the chunk gives `4c` video frames.
    pub latent_frames: usize,
    /// One per step of the graph, in order.
    pub ops: Vec<OpCost>,
    pub total: CostSum,
    pub parameters: u64,
    /// f16 weights.
    pub weight_bytes: u64,
    /// The causal caches: two input frames per `ConvT`, kept between chunks (f16).
    pub cache_bytes: u64,
    /// The largest sum of activations live at one op (its input, its output and every
    /// saved residual input), f16: the decoder's arena with perfect reuse.
    pub arena_bytes: u64,
}

impl DecoderCost {
    /// The decoder of `graph` on chunks of `latent_frames`.
    pub fn of(graph: &TaeGraph, latent_frames: usize) -> DecoderCost {
        let ops: Vec<OpCost> = graph
            .steps
            .iter()
            .map(|s| tae_op_cost(s, latent_frames))
            .collect();
        let mut total = CostSum::default();
        ops.iter().for_each(|c| total.add(c));
        let mut cache_bytes = 0;
        let mut saved: Vec<u64> = Vec::new();
        let mut arena_bytes = 0;
        for step in &graph.steps {
            let elems = |f: usize, h: usize, w: usize, c: usize| {
                (f * latent_frames * h * w * c) as u64 * TAE_ELEM_BYTES
            };
            let input = elems(step.frames, step.height, step.width, step.channels);
            let (of, oh, ow, oc) = step.output();
            let output = elems(of, oh, ow, oc);
            match &step.op {
                TaeOp::Save => saved.push(input),
                TaeOp::AddSaved { .. } => {
                    let s = saved.pop().unwrap_or(0);
                    let live = align(input)
                        + align(output)
                        + saved.iter().map(|&b| align(b)).sum::<u64>()
                        + align(s);
                    arena_bytes = arena_bytes.max(live);
                    continue;
                }
                TaeOp::ConvT { ch, .. } => {
                    cache_bytes +=
                        align((2 * step.height * step.width * ch) as u64 * TAE_ELEM_BYTES)
                }
                TaeOp::DownT { ch, .. } => {
                    cache_bytes += align((step.height * step.width * ch) as u64 * TAE_ELEM_BYTES)
                }
                _ => {}
            }
            let live = align(input) + align(output) + saved.iter().map(|&b| align(b)).sum::<u64>();
            arena_bytes = arena_bytes.max(live);
        }
        let parameters = graph.parameters();
        DecoderCost {
            latent_frames,
            ops,
            total,
            parameters,
            weight_bytes: parameters * TAE_ELEM_BYTES,
            cache_bytes,
            arena_bytes,
        }
    }

    /// The decoder's cost per model call: one chunk every `micro_steps` calls.
    pub fn flops_per_call(&self, micro_steps: usize) -> f64 {
        self.total.flops as f64 / micro_steps.max(1) as f64
    }

    /// Roofline seconds per model call on `gpu` (a chunk's time over `micro_steps` calls).
    pub fn seconds_per_call(&self, gpu: &GpuSpec, micro_steps: usize) -> f64 {
        gpu.list_seconds(&self.ops) / micro_steps.max(1) as f64
    }
}
