//! The Wan-family decoder's part of `streamdit plan` (TAEHV or the Wan VAE): its ops with
//! FLOPs and bytes per chunk, its weights, causal caches and activations, and its roofline
//! per chunk beside the DiT's, in the steady state (a chunk that does not start the stream).

use serde_json::{json, Value};
use streamdit::inspect::{wan_decoder_graph, wan_decoder_kind, GpuSpec, VideoCost};
use streamdit::{DecoderKind, Error, Profile, Result, WanDecoder};

use crate::common::{fmt_bytes, fmt_count, fmt_flops};
use crate::plan_decoder::DecoderReport;

/// What the decoder's summary sets itself beside: one Wan chunk of the DiT.
pub(crate) struct Dit {
    pub chunk_frames: usize,
    pub flops: u64,
    /// Roofline seconds of the chunk's calls on the GPU, when one is named.
    pub seconds: Option<f64>,
    /// The DiT's device memory (weights, KV cache, arena).
    pub peak_bytes: u64,
}

/// The decoder `kind` (the profile's when `None`) of `profile` on one chunk.
pub(crate) fn report(
    profile: &Profile,
    kind: Option<DecoderKind>,
    gpu: Option<GpuSpec>,
    dit: Dit,
    efficiency: f64,
) -> Result<DecoderReport> {
    let kind = wan_decoder_kind(profile, kind.unwrap_or_default())?;
    if kind == WanDecoder::Preview {
        return Ok(DecoderReport::none(
            "decoder: the preview (a per-pixel map; it costs next to nothing; --decoder taehv|wan-vae costs a real one)",
        ));
    }
    let graph = wan_decoder_graph(profile, kind)?;
    let n = dit.chunk_frames;
    let cost = VideoCost::of(&graph, n, false);
    let (fw, fh) = graph.frame_size();
    let doc = match kind {
        WanDecoder::Taehv => "docs/taehv.md",
        _ => "docs/wan_vae.md",
    };
    let time_header = if gpu.is_some() {
        "   time us  bound"
    } else {
        ""
    };
    let mut ops = format!(
        "\ndecoder ops ({}, {doc}; once per chunk of {n} latent frames = {} video frames at {fw}x{fh}, steady state)\n{:>4}  {:<12} {:<22} {:>11} {:>9} {:>9}  {:<11}{time_header}\n",
        kind.name(),
        cost.video_frames,
        "#",
        "op",
        "output [T,H,W,C]",
        "GFLOP",
        "MB read",
        "MB write",
        "class",
    );
    let mut ops_json = Vec::new();
    for (i, (step, oc)) in graph.steps.iter().zip(&cost.ops).enumerate() {
        let (f, h, w, ch) = step.output();
        let frames = f.count(n, false);
        let time = gpu.map(|g| g.op_time(oc));
        ops += &format!(
            "{i:>4}  {:<12} {:<22} {:>11.3} {:>9.2} {:>9.2}  {:<11}{}\n",
            step.op.kind(),
            format!("[{frames}, {h}, {w}, {ch}]"),
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
            "index": i, "op": step.op.kind(), "output": [frames, h, w, ch],
            "flops": oc.flops, "bytes_read": oc.bytes_read, "bytes_written": oc.bytes_written,
            "class": oc.class.name(), "time_us": time.map(|t| t.seconds * 1e6),
        }));
    }
    let per_frame = cost.total.flops as f64 / cost.video_frames.max(1) as f64;
    let mut totals = format!(
        "\ndecoder {} ({doc}; f16 on a device, costed: its device lowering is not built yet, it runs on the CPU)\n",
        kind.name()
    );
    totals += &format!(
        "  parameters       {} ({} f16 weights)\n",
        fmt_count(cost.parameters),
        fmt_bytes(cost.weight_bytes)
    );
    totals += &format!(
        "  FLOPs            {} per chunk of {n} latent frames ({} video frames): {} per video frame; the DiT's chunk {} ({:.2}x the decoder's)\n",
        fmt_flops(cost.total.flops),
        cost.video_frames,
        fmt_flops(per_frame as u64),
        fmt_flops(dit.flops),
        dit.flops as f64 / cost.total.flops.max(1) as f64
    );
    totals += &format!(
        "  memory           {}: weights {}, causal caches {} (kept between chunks), activations {} (largest op's input and output and a saved residual)\n",
        fmt_bytes(cost.memory_bytes()),
        fmt_bytes(cost.weight_bytes),
        fmt_bytes(cost.cache_bytes),
        fmt_bytes(cost.activation_bytes)
    );
    let peak = dit.peak_bytes + cost.memory_bytes();
    totals += &format!(
        "  with the DiT     {} device memory{}\n",
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
    let mut roofline = Value::Null;
    if let Some(g) = gpu {
        let dec = g.list_seconds(&cost.ops);
        let frames = cost.video_frames as f64;
        totals += &format!(
            "  roofline         {:.2} ms per chunk ({:.3} ms per video frame, {:.2} ms of it FLOPs at peak)\n",
            dec * 1e3,
            dec * 1e3 / frames,
            cost.total.flops as f64 / (g.fp16_tflops * 1e12) * 1e3
        );
        if let Some(d) = dit.seconds {
            let serial = d + dec;
            let overlapped = d.max(dec);
            totals += &format!(
                "  end to end       {:.2} ms per chunk (DiT {:.2} + decoder {:.2}), {:.2} video FPS serial; {:.2} FPS if the decoder overlaps the next chunk; at {:.0}%: {:.2} and {:.2} FPS\n",
                serial * 1e3,
                d * 1e3,
                dec * 1e3,
                frames / serial,
                frames / overlapped,
                efficiency * 100.0,
                frames / serial * efficiency,
                frames / overlapped * efficiency
            );
            roofline = json!({
                "decoder_ms_per_chunk": dec * 1e3,
                "dit_ms_per_chunk": d * 1e3,
                "end_to_end_ms_per_chunk": serial * 1e3,
                "fps_serial": frames / serial,
                "fps_overlapped": frames / overlapped,
                "efficiency": efficiency,
            });
        }
    }
    let json = json!({
        "kind": kind.name(),
        "latent_frames_per_chunk": n,
        "video_frames_per_chunk": cost.video_frames,
        "frame_size": [fw, fh],
        "parameters": cost.parameters,
        "weight_bytes": cost.weight_bytes,
        "cache_bytes": cost.cache_bytes,
        "activation_bytes": cost.activation_bytes,
        "flops_per_chunk": cost.total.flops,
        "flops_per_video_frame": per_frame,
        "bytes_read_per_chunk": cost.total.bytes_read,
        "bytes_written_per_chunk": cost.total.bytes_written,
        "dit_flops_per_chunk": dit.flops,
        "peak_device_bytes_with_dit": peak,
        "roofline": roofline,
        "ops": ops_json,
    });
    if n == 0 {
        return Err(Error::Invalid(
            "decoder plan: a chunk of 0 latent frames".into(),
        ));
    }
    Ok(DecoderReport { ops, totals, json })
}
