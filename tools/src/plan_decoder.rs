//! The TAE decoder's part of `streamdit plan`: its ops with FLOPs and bytes per chunk, its
//! weights, caches and arena, and the end-to-end roofline of a call with the decoder.

use serde_json::{json, Value};
use streamdit::inspect::{tae_op_kind, DecoderCost, GpuSpec, Prediction};
use streamdit::inspect::{TaeGraph, TaeOp};
use streamdit::{Profile, Result};

use crate::common::{fmt_bytes, fmt_count, fmt_flops};

/// The decoder's sections of the plan report.
pub struct DecoderReport {
    /// The op table.
    pub ops: String,
    /// Totals, memory and the end-to-end prediction.
    pub totals: String,
    pub json: Value,
}

impl DecoderReport {
    /// A report without a decoder section, saying why.
    pub fn none(why: &str) -> DecoderReport {
        DecoderReport {
            ops: String::new(),
            totals: format!("  {why}\n"),
            json: Value::Null,
        }
    }
}

fn op_name(op: &TaeOp) -> &str {
    match op {
        TaeOp::GroupNorm { name, .. }
        | TaeOp::Conv2d { name, .. }
        | TaeOp::ConvT { name, .. }
        | TaeOp::DownS { name, .. }
        | TaeOp::DownT { name, .. }
        | TaeOp::Attention { name, .. } => name,
        TaeOp::AddSaved {
            skip: Some(name), ..
        } => name,
        TaeOp::Save | TaeOp::RepeatFrames | TaeOp::AddSaved { skip: None, .. } => "",
    }
}

/// The decoder of `profile` on one chunk, with roofline times on `gpu` and the call's
/// prediction `dit` (the DiT alone) extended by the decoder.
pub fn report(
    profile: &Profile,
    gpu: Option<GpuSpec>,
    dit: Option<&Prediction>,
    dit_peak_bytes: u64,
) -> Result<DecoderReport> {
    let m = &profile.model;
    let c = profile.stream.chunk_frames;
    let s = profile.stream.micro_steps;
    let graph = TaeGraph::new(
        &profile.decoder,
        m.latent_channels,
        m.latent_height,
        m.latent_width,
    )?;
    let cost = DecoderCost::of(&graph, c);
    let mut ops = String::new();
    let time_header = if gpu.is_some() {
        "   time us  bound"
    } else {
        ""
    };
    ops += &format!(
        "\ndecoder ops (docs/tae.md; once per chunk of {c} latent frames = {} video frames, every {s} call{})\n{:>4}  {:<14} {:<22} {:<22} {:>11} {:>9} {:>9}  {:<11}{time_header}\n",
        c * streamdit::inspect::TEMPORAL_UPSAMPLE,
        if s == 1 { "" } else { "s" },
        "#",
        "op",
        "weights",
        "output [T,H,W,C]",
        "GFLOP",
        "MB read",
        "MB write",
        "class",
    );
    let mut ops_json = Vec::new();
    for (i, (step, oc)) in graph.steps.iter().zip(&cost.ops).enumerate() {
        let (f, h, w, ch) = step.output();
        let time = gpu.map(|g| g.op_time(oc));
        ops += &format!(
            "{i:>4}  {:<14} {:<22} {:<22} {:>11.3} {:>9.2} {:>9.2}  {:<11}{}\n",
            tae_op_kind(&step.op),
            op_name(&step.op),
            format!("[{}, {h}, {w}, {ch}]", f * c),
            oc.flops as f64 / 1e9,
            oc.bytes_read as f64 / 1e6,
            oc.bytes_written as f64 / 1e6,
            oc.class.name(),
            time.map_or(String::new(), |t| format!(
                " {:>9.2}  {}",
                t.seconds * 1e6,
                t.bound.name()
            )),
        );
        ops_json.push(json!({
            "index": i, "op": tae_op_kind(&step.op), "weights": op_name(&step.op),
            "output": [f * c, h, w, ch], "flops": oc.flops, "bytes_read": oc.bytes_read,
            "bytes_written": oc.bytes_written, "class": oc.class.name(),
            "time_us": time.map(|t| t.seconds * 1e6),
        }));
    }

    let per_call = cost.flops_per_call(s);
    let mut totals = String::new();
    totals += "\ndecoder (docs/tae.md, f16 on a device)\n";
    totals += &format!(
        "  parameters       {} ({} f16 weights)\n",
        fmt_count(cost.parameters),
        fmt_bytes(cost.weight_bytes)
    );
    totals += &format!(
        "  FLOPs            {} per chunk, {:.3} TFLOP per call, {} moved per chunk\n",
        fmt_flops(cost.total.flops),
        per_call / 1e12,
        fmt_bytes(cost.total.bytes())
    );
    totals += &format!(
        "  arena            {} (largest live set: an op's input and output with the saved residual inputs)\n",
        fmt_bytes(cost.arena_bytes)
    );
    totals += &format!(
        "  causal caches    {} (two frames per temporal convolution, kept between chunks)\n",
        fmt_bytes(cost.cache_bytes)
    );
    // What the device lowering really allocates (backend/cuda/tae.rs), beside the estimate.
    let lowered = streamdit::inspect::decoder_device_memory(&graph, c)?;
    totals += &format!(
        "  device lowering  {} allocated by the CUDA backend's decoder: weights {}, {} activation buffers of {}, context {}, caches {}, scratch {}\n",
        fmt_bytes(lowered.total as u64),
        fmt_bytes(lowered.weights as u64),
        lowered.buffers,
        fmt_bytes(lowered.buffer_bytes as u64),
        fmt_bytes(lowered.context as u64),
        fmt_bytes(lowered.caches as u64),
        fmt_bytes(lowered.scratch as u64),
    );
    // The decoder's arena is its own: it runs on a second stream while the next DiT call
    // uses the DiT's arena.
    let peak = dit_peak_bytes + lowered.total as u64;
    totals += &format!(
        "  peak device mem  {} with the DiT's (the device lowering's allocation){}\n",
        fmt_bytes(peak),
        gpu.map_or(String::new(), |g| format!(
            ": {} the {} GiB of the {}",
            if peak <= g.memory_bytes() {
                "fits"
            } else {
                "does NOT fit"
            },
            g.memory_gib,
            g.name
        ))
    );
    // Video-to-video's encoder (docs/tae.md, Encoder): the decoder's mirror, once per chunk
    // of input; this build runs it on the CPU in f32, the FLOPs are the same on any device.
    let encoder = TaeGraph::encoder(
        &profile.decoder,
        m.latent_channels,
        m.latent_height,
        m.latent_width,
    )?;
    let enc = DecoderCost::of(&encoder, c);
    totals += &format!(
        "  encoder (v2v)    {} parameters, {} per chunk of {} input frames, causal caches {} (TAE encoder; CPU f32 in this build)\n",
        fmt_count(enc.parameters),
        fmt_flops(enc.total.flops),
        c * streamdit::inspect::TEMPORAL_UPSAMPLE,
        fmt_bytes(enc.cache_bytes),
    );
    // Its host memory (f32 on every backend), on top of what a text-to-video stream needs.
    let host = streamdit::inspect::video_to_video_memory(profile)?;
    let need = profile.memory_need();
    totals += &format!(
        "  encoder host mem {} more than text-to-video: weights {}, caches {}, activations {} (a push of {} frames), queued input {}; a CPU v2v stream needs {} with the stream's own {}\n",
        fmt_bytes(host.total() as u64),
        fmt_bytes(host.weight_bytes as u64),
        fmt_bytes(host.cache_bytes as u64),
        fmt_bytes(host.activation_bytes as u64),
        m.latent_frames * streamdit::inspect::TEMPORAL_UPSAMPLE,
        fmt_bytes(host.queue_bytes as u64),
        fmt_bytes((host.total() + need.stream_bytes) as u64),
        fmt_bytes(need.stream_bytes as u64),
    );
    let mut prediction = Value::Null;
    if let (Some(g), Some(p)) = (gpu, dit) {
        let per_call_of =
            |costs: &[streamdit::inspect::OpCost]| g.list_seconds(costs) / s.max(1) as f64;
        let by_op = cost.seconds_per_call(&g, s);
        let dec = per_call_of(&streamdit::inspect::decoder_launch_costs(&graph, c, false)?);
        let folded = per_call_of(&streamdit::inspect::decoder_launch_costs(&graph, c, true)?);
        let serial = p.seconds_per_call + dec;
        let fps = p.video_frames_per_call / serial;
        totals += &format!(
            "  roofline         {:.2} ms per call for the decoder op by op ({:.2} ms of it FLOPs at peak)\n",
            by_op * 1e3,
            per_call / (g.fp16_tflops * 1e12) * 1e3
        );
        totals += &format!(
            "  device launches  {:.2} ms per call (residuals in the convolutions, GroupNorm as a statistics and an apply pass); {:.2} ms with each GroupNorm apply at the next convolution's load (modelled, not built)\n",
            dec * 1e3,
            folded * 1e3
        );
        totals += &format!(
            "  end to end       {:.2} ms per call (DiT launches {:.2} + decoder launches {:.2} on one GPU; the DiT's as this GPU's architecture runs them: sm_90a on 9.0), {:.2} video FPS; at {:.0}%: {:.2} ms, {:.2} FPS\n",
            serial * 1e3,
            p.seconds_per_call * 1e3,
            dec * 1e3,
            fps,
            p.efficiency * 100.0,
            serial / p.efficiency * 1e3,
            fps * p.efficiency
        );
        prediction = json!({
            "decoder_ms_per_call": dec * 1e3,
            "decoder_ms_per_call_op_by_op": by_op * 1e3,
            "decoder_ms_per_call_with_prologues": folded * 1e3,
            "end_to_end_ms_per_call": serial * 1e3,
            "end_to_end_fps": fps,
            "end_to_end_fps_at_efficiency": fps * p.efficiency,
        });
    }
    let json = json!({
        "latent_frames_per_chunk": c,
        "parameters": cost.parameters,
        "weight_bytes": cost.weight_bytes,
        "flops_per_chunk": cost.total.flops,
        "flops_per_call": per_call,
        "bytes_read_per_chunk": cost.total.bytes_read,
        "bytes_written_per_chunk": cost.total.bytes_written,
        "arena_bytes": cost.arena_bytes,
        "cache_bytes": cost.cache_bytes,
        "peak_device_bytes_with_dit": peak,
        "device_lowering": {
            "total_bytes": lowered.total,
            "weight_bytes": lowered.weights,
            "activation_bytes": lowered.activations,
            "buffers": lowered.buffers,
            "buffer_bytes": lowered.buffer_bytes,
            "context_bytes": lowered.context,
            "cache_bytes": lowered.caches,
            "scratch_bytes": lowered.scratch,
        },
        "prediction": prediction,
        "ops": ops_json,
        "encoder": {
            "parameters": enc.parameters,
            "flops_per_chunk": enc.total.flops,
            "cache_bytes": enc.cache_bytes,
            "ops": encoder.steps.len(),
            "host_memory": {
                "weight_bytes": host.weight_bytes as u64,
                "cache_bytes": host.cache_bytes as u64,
                "activation_bytes": host.activation_bytes as u64,
                "queue_bytes": host.queue_bytes as u64,
                "total_bytes": host.total() as u64,
                "stream_bytes_text_to_video": need.stream_bytes as u64,
            },
        },
    });
    Ok(DecoderReport { ops, totals, json })
}
