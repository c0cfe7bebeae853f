//! `streamdit plan` for the Wan family: the call graph of one chunk over a full KV cache
//! (the steady state), and the per-chunk summary: `m` denoising calls plus the committing
//! pass (the call list's prefix up to the last cache write), the KV cache's memory, and the
//! roofline video FPS beside the published figures; then video-to-video's encoder
//! (`plan_wan_encoder`).

use serde_json::{json, Value};
use streamdit::inspect::{GpuSpec, Graph, GraphCost, KernelPath, Kind, OpCost, WanGraph};
use streamdit::{DecoderKind, Error, Family, Profile, Result};

use crate::common::{fmt_bytes, fmt_flops};

/// Published real-time figures on one H100 at 832x480 (their PyTorch code), as issue 16
/// quotes them.
const PUBLISHED: [(&str, f64); 2] = [("Self-Forcing", 17.0), ("LongLive", 20.7)];

/// What the Wan summary needs beyond the graph.
pub(crate) struct WanPlan {
    commit_len: usize,
    steps: usize,
    chunk_frames: usize,
    window: usize,
    video_frames_per_chunk: usize,
    /// Video-to-video's encoder (the one the costed decoder's stream uses).
    encoder: crate::plan_wan_encoder::Encoder,
}

/// The graph `plan` reports: StreamDiT's call with `guidance`, or one Wan chunk's call (with
/// the video-to-video encoder of a stream decoding with `decoder`).
pub(crate) fn graph(
    profile: &Profile,
    guidance: f32,
    decoder: Option<DecoderKind>,
) -> Result<(Graph, Option<WanPlan>)> {
    if profile.family != Family::Wan {
        return Ok((Graph::build(&profile.model, guidance), None));
    }
    if guidance != 1.0 {
        return Err(Error::Invalid(format!(
            "--guidance {guidance}: the Wan family runs without classifier-free guidance"
        )));
    }
    let w = profile.wan()?;
    let g = WanGraph::build(w, w.chunk_frames, 0);
    let plan = WanPlan {
        commit_len: g.commit_len,
        steps: w.steps(),
        chunk_frames: w.chunk_frames,
        window: w.window,
        video_frames_per_chunk: profile.video.frames_per_chunk(w.chunk_frames),
        encoder: crate::plan_wan_encoder::Encoder::of(profile, decoder)?,
    };
    Ok((g.graph, Some(plan)))
}

impl WanPlan {
    /// FLOPs of one chunk (its denoising calls and the committing pass) and its roofline
    /// seconds on `gpu`.
    pub(crate) fn chunk(&self, cost: &GraphCost, gpu: Option<GpuSpec>) -> (u64, Option<f64>) {
        let calls = &cost.call.ops;
        let commit = &calls[..self.commit_len];
        let flops = |ops: &[streamdit::inspect::OpCost]| ops.iter().map(|c| c.flops).sum::<u64>();
        let secs = gpu.map(|g| self.steps as f64 * g.list_seconds(calls) + g.list_seconds(commit));
        (self.steps as u64 * flops(calls) + flops(commit), secs)
    }

    pub(crate) fn chunk_frames(&self) -> usize {
        self.chunk_frames
    }
}

/// The per-chunk summary as text and JSON.
pub(crate) fn report(
    p: &WanPlan,
    graph: &Graph,
    cost: &GraphCost,
    gpu: Option<GpuSpec>,
    efficiency: f64,
) -> (String, Value) {
    let mut text = String::new();
    let calls = &cost.call.ops;
    let commit = &calls[..p.commit_len];
    let flops = |ops: &[streamdit::inspect::OpCost]| ops.iter().map(|c| c.flops).sum::<u64>();
    let chunk_flops = p.steps as u64 * flops(calls) + flops(commit);
    let cache_bytes: u64 = graph
        .tensors
        .iter()
        .filter(|t| t.kind == Kind::Persistent && t.name.contains(".cache_"))
        .map(|t| t.bytes() as u64)
        .sum();
    say!(
        text,
        "\nwan chunk: {} latent frames ({} video frames), {} denoising calls + the committing \
         pass (call ops 0..{}), attention over a full window of {} latent frames",
        p.chunk_frames,
        p.video_frames_per_chunk,
        p.steps,
        p.commit_len,
        p.window
    );
    say!(
        text,
        "  FLOPs            {} per chunk ({} per call, {} the committing pass)",
        fmt_flops(chunk_flops),
        fmt_flops(flops(calls)),
        fmt_flops(flops(commit))
    );
    say!(
        text,
        "  KV cache         {} (f16 K and V of {} frames in every block, in `persistent`)",
        fmt_bytes(cache_bytes),
        p.window
    );
    let mut timing = Value::Null;
    if let Some(g) = gpu {
        let chunk_s = p.steps as f64 * g.list_seconds(calls) + g.list_seconds(commit);
        let fps = p.video_frames_per_chunk as f64 / chunk_s;
        say!(
            text,
            "  roofline         {:.2} ms per chunk, {:.2} video FPS; at {:.0}% of it {:.2} ms, {:.2} FPS",
            chunk_s * 1e3,
            fps,
            efficiency * 100.0,
            chunk_s / efficiency * 1e3,
            fps * efficiency
        );
        let published: Vec<String> = PUBLISHED
            .iter()
            .map(|(n, f)| format!("{n} {f} FPS"))
            .collect();
        say!(
            text,
            "  published        {} (one H100, their PyTorch code, as quoted in issue 16)",
            published.join(", ")
        );
        let (t, paths) = kernel_paths(g, "chunk", p.video_frames_per_chunk as f64, |path| {
            chunk_seconds(path, &g, calls, p.steps, p.commit_len)
        });
        text.push_str(&t);
        timing = json!({
            "ms_per_chunk": chunk_s * 1e3, "fps": fps,
            "ms_per_chunk_at_efficiency": chunk_s / efficiency * 1e3,
            "fps_at_efficiency": fps * efficiency,
            "kernel_paths": paths,
        });
    }
    let dit = gpu.map(|g| (g.list_seconds(calls), g.list_seconds(commit)));
    let (encoder_text, encoder) = p.encoder.report(gpu, dit);
    text.push_str(&encoder_text);
    let json = json!({
        "encoder": encoder,
        "chunk_frames": p.chunk_frames,
        "video_frames_per_chunk": p.video_frames_per_chunk,
        "steps": p.steps,
        "commit_ops": p.commit_len,
        "window": p.window,
        "chunk_flops": chunk_flops,
        "kv_cache_bytes": cache_bytes,
        "roofline": timing,
        "published_fps": PUBLISHED.iter().map(|(n, f)| json!({"name": n, "fps": f})).collect::<Vec<_>>(),
    });
    (text, json)
}

/// On a Hopper GPU (H100, H200), the time of `unit` and the video FPS of each kernel path
/// (`KernelPath`: mma.sync vs wgmma at stated efficiencies), as text lines and JSON; nothing
/// for other GPUs, which have one path.
pub(crate) fn kernel_paths(
    gpu: GpuSpec,
    unit: &str,
    frames: f64,
    seconds: impl Fn(&KernelPath) -> f64,
) -> (String, Value) {
    let mut text = String::new();
    if !matches!(gpu.key, "h100" | "h200") {
        return (text, Value::Null);
    }
    let mut rows = Vec::new();
    for path in KernelPath::ALL {
        let s = seconds(&path);
        say!(
            text,
            "  {:<17}{:.2} ms per {unit}, {:.2} video FPS (GEMMs at {:.0}%, attention at {:.0}% of peak)",
            format!("{} path", path.name),
            s * 1e3,
            frames / s,
            path.gemm_efficiency * 100.0,
            path.attention_efficiency * 100.0
        );
        rows.push(json!({
            "path": path.name, "ms": s * 1e3, "fps": frames / s,
            "gemm_efficiency": path.gemm_efficiency,
            "attention_efficiency": path.attention_efficiency, "source": path.source,
        }));
    }
    say!(
        text,
        "  (assumed efficiencies from public figures, not measurements: `bench --kernels` measures)"
    );
    (text, json!(rows))
}

/// `steps` calls of `calls` plus the committing prefix of `commit_len` ops on `path`.
fn chunk_seconds(
    path: &KernelPath,
    gpu: &GpuSpec,
    calls: &[OpCost],
    steps: usize,
    commit_len: usize,
) -> f64 {
    steps as f64 * path.list_seconds(gpu, calls) + path.list_seconds(gpu, &calls[..commit_len])
}
