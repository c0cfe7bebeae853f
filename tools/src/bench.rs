//! `streamdit bench`: time to first frame, steady-state throughput split by stage, per-step
//! latency and jitter, memory, and the configuration, as a table and as JSON.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Args;
use serde_json::json;
use streamdit::inspect::GraphCost;
use streamdit::inspect::MemoryPlan;
use streamdit::{DecoderKind, Error, Result, Stream, StreamParams};

use crate::common::{fmt_bytes, fmt_flops, print_stdout, ModelArgs};
use crate::stats::{percentile, std_dev};

#[derive(Args)]
pub struct BenchArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// The prompt the streams are conditioned on.
    #[arg(long, default_value = "a benchmark")]
    prompt: String,
    /// Noise seed (default: the profile's).
    #[arg(long)]
    seed: Option<u64>,
    /// Model calls run after the first frame and before measuring.
    #[arg(
        long,
        default_value_t = 3,
        value_name = "STEPS",
        conflicts_with = "warmup_seconds"
    )]
    warmup: u64,
    /// Warm up for this many seconds instead (whole calls, at least one).
    #[arg(long, value_name = "SECONDS")]
    warmup_seconds: Option<f64>,
    /// Model calls measured in the steady state (default 20).
    #[arg(long, conflicts_with = "duration")]
    steps: Option<u64>,
    /// Measure the steady state for this many seconds instead (at least one call).
    #[arg(long, value_name = "SECONDS")]
    duration: Option<f64>,
    /// Replay the captured step graph (`on`) or launch eagerly (`off`); cuda and emu only.
    #[arg(long, value_parser = parse_on_off, value_name = "on|off")]
    graphs: Option<bool>,
    /// Also write the report, with the raw per-step series, as JSON to FILE.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Decode with the cheap latent preview instead of the profile's decoder.
    #[arg(long, conflicts_with = "decoder")]
    preview: bool,
    /// The decoder: `tae` (StreamDiT), `taehv` or `wan-vae` (Wan family), or `preview`;
    /// default: the profile's.
    #[arg(long, value_name = "taehv|wan-vae|tae|preview")]
    decoder: Option<DecoderKind>,
    /// Wan family: the decoder's checkpoint (default: the profile's, else random weights).
    #[arg(long, value_name = "F")]
    decoder_weights: Option<PathBuf>,
    /// Instead of a stream: each GEMM shape of the call on every GEMM path of the device
    /// (mma.sync, sm_90a, cuBLAS) side by side; `--backend cuda` or `emu`.
    #[arg(long)]
    kernels: bool,
    /// With `--kernels`: these shapes (`MxNxK,...`) instead of the profile's.
    #[arg(long, requires = "kernels", value_name = "MxNxK,...")]
    kernel_shapes: Option<String>,
    /// With `--kernels`: timed launches per shape and path.
    #[arg(long, requires = "kernels", default_value_t = 20, value_name = "N")]
    kernel_reps: usize,
    #[command(flatten)]
    v2v: crate::bench_v2v::V2vArgs,
}

pub fn parse_on_off(s: &str) -> std::result::Result<bool, String> {
    match s {
        "on" => Ok(true),
        "off" => Ok(false),
        _ => Err(format!("expected `on` or `off`, found `{s}`")),
    }
}

/// Peak resident set size of this process (`VmHWM` of `/proc/self/status`), where the
/// system reports it.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line
        .trim_start_matches("VmHWM:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// One measured model call.
struct StepSample {
    /// The model call (and the popped chunk's copy to the host), until the device is idle.
    dit: f64,
    /// Decoding the popped chunk, if the call popped one.
    decode: Option<f64>,
    /// Both.
    total: f64,
    /// Seconds from the start of the window to the end of the call that popped a chunk.
    emitted_at: Option<f64>,
    frames: usize,
}

fn measured_step(stream: &mut Stream, frames: &mut Vec<u8>, start: Instant) -> Result<StepSample> {
    let t = Instant::now();
    let popped = stream.step()?;
    stream.synchronize()?;
    let dit = secs(t.elapsed());
    let (decode, n) = if popped {
        let d = Instant::now();
        frames.clear();
        let n = stream.decode_chunk(frames)?;
        (Some(secs(d.elapsed())), n)
    } else {
        (None, 0)
    };
    Ok(StepSample {
        dit,
        decode,
        total: secs(t.elapsed()),
        emitted_at: popped.then(|| secs(start.elapsed())),
        frames: n,
    })
}

pub fn bench(args: BenchArgs) -> Result<()> {
    if args.kernels {
        let shapes = args.kernel_shapes.as_deref();
        return crate::bench_kernels::run(
            &args.model,
            shapes,
            args.kernel_reps,
            args.json.as_deref(),
        );
    }
    if let Some(d) = args.duration {
        if !(d.is_finite() && d > 0.0) {
            return Err(Error::Invalid(format!(
                "--duration: expected a positive number of seconds, found {d}"
            )));
        }
    }
    args.v2v.check()?;
    let steps_wanted = args.steps.unwrap_or(20);
    if let Some(w) = args.warmup_seconds {
        if !(w.is_finite() && w >= 0.0) {
            return Err(Error::Invalid(format!(
                "--warmup-seconds: expected a non-negative number of seconds, found {w}"
            )));
        }
    }
    if args.duration.is_none() && steps_wanted == 0 {
        return Err(Error::Invalid(
            "--steps: expected at least 1 measured model call, found 0".into(),
        ));
    }
    let decoder_kind = match (args.preview, args.decoder) {
        (true, _) => DecoderKind::Preview,
        (false, Some(d)) => d,
        (false, None) => DecoderKind::Tae,
    };
    let params = StreamParams {
        prompt: args.prompt.clone(),
        seed: args.seed,
        decoder: decoder_kind,
        decoder_weights: args.decoder_weights.clone(),
        ..StreamParams::default()
    };
    let open = |engine: &streamdit::Engine| -> Result<Stream> {
        let mut s = engine.stream(params.clone())?;
        if let Some(on) = args.graphs {
            s.set_graphs(on)?;
        }
        Ok(s)
    };

    // Cold: everything from nothing to the first decoded frame.
    let t0 = Instant::now();
    let engine = args.model.engine()?;
    let engine_s = secs(t0.elapsed());
    let mut stream = open(&engine)?;
    let stream_s = secs(t0.elapsed()) - engine_s;
    let mut frames = Vec::new();
    stream.next_frames(&mut frames)?;
    let cold_s = secs(t0.elapsed());
    let cold_calls = stream.calls();
    let profile = engine.profile().clone();
    // A Wan profile's call: one chunk over a full window (plan's steady state).
    let (graph, _) = crate::plan_wan::graph(&profile, stream.guidance(), None)?;
    let cost = GraphCost::of(&graph);

    // Steady state: warm-up calls, then the measured window.
    let warm_start = Instant::now();
    let mut warmup_calls = 0u64;
    loop {
        let done = match args.warmup_seconds {
            Some(s) => warmup_calls > 0 && secs(warm_start.elapsed()) >= s,
            None => warmup_calls >= args.warmup,
        };
        if done {
            break;
        }
        if stream.step()? {
            frames.clear();
            stream.decode_chunk(&mut frames)?;
        }
        warmup_calls += 1;
    }
    stream.synchronize()?;
    // NVML on the CUDA backend only: the emulator and the CPU have no GPU to read.
    let telemetry = match stream.backend_name() {
        "cuda" => crate::telemetry::Telemetry::open(engine.cuda_device_uuid()),
        other => Err(format!("no GPU telemetry on the {other} backend")),
    };
    let before = telemetry.as_ref().ok().map(|t| t.snapshot());
    let mut samples: Vec<StepSample> = Vec::new();
    let start = Instant::now();
    loop {
        samples.push(measured_step(&mut stream, &mut frames, start)?);
        let done = match args.duration {
            Some(d) => secs(start.elapsed()) >= d,
            None => samples.len() as u64 >= steps_wanted,
        };
        if done {
            break;
        }
    }
    let window = secs(start.elapsed());
    let after = telemetry.as_ref().ok().map(|t| t.snapshot());
    // End to end as a user streams: `next_frames` starts the next DiT call before decoding
    // the chunk it popped, so on a GPU the decode runs beside that call (on the CPU the two
    // still take turns). As many chunks as the measured window emitted.
    let pipe_chunks = samples.iter().filter(|s| s.decode.is_some()).count().max(1);
    let t = Instant::now();
    let mut pipe_frames = 0;
    for _ in 0..pipe_chunks {
        frames.clear();
        pipe_frames += stream.next_frames(&mut frames)?;
    }
    stream.synchronize()?;
    let pipe_s = secs(t.elapsed());
    // A prompt switch: one run of the text encoders for a new prompt, then a switch back to
    // a prompt the engine's cache holds (no encoder run).
    let t = Instant::now();
    stream.set_prompt(&format!("{} (switched)", args.prompt));
    stream.encode_pending()?;
    let switch_s = secs(t.elapsed());
    let t = Instant::now();
    stream.set_prompt(&args.prompt);
    stream.encode_pending()?;
    let switch_cached_s = secs(t.elapsed());
    let backend = stream.backend_name();
    let graphs = stream.graphs();
    let seed = stream.seed();
    let guidance = stream.guidance();
    drop(stream);

    // Warm: a second stream of the same engine (weights loaded); its creation is reported
    // apart, the first-frame time covers its prefill, first stage and first decode.
    let t = Instant::now();
    let mut warm_stream = open(&engine)?;
    let warm_create_s = secs(t.elapsed());
    let t = Instant::now();
    frames.clear();
    warm_stream.next_frames(&mut frames)?;
    let warm_s = secs(t.elapsed());
    let warm_calls = warm_stream.calls();
    drop(warm_stream);
    // Video-to-video: a third stream edits an input, over as many chunks as measured.
    let v2v = if args.v2v.enabled() {
        let p = params.clone();
        Some(crate::bench_v2v::measure(
            &engine,
            p,
            &args.v2v,
            args.graphs,
            pipe_chunks,
        )?)
    } else {
        None
    };

    let n = samples.len();
    let dit: Vec<f64> = samples.iter().map(|s| s.dit).collect();
    let decode: Vec<f64> = samples.iter().filter_map(|s| s.decode).collect();
    let totals: Vec<f64> = samples.iter().map(|s| s.total).collect();
    let emitted: Vec<f64> = samples.iter().filter_map(|s| s.emitted_at).collect();
    let video_frames: usize = samples.iter().map(|s| s.frames).sum();
    let intervals: Vec<f64> = emitted
        .iter()
        .scan(0.0, |prev, &t| {
            let d = t - *prev;
            *prev = t;
            Some(d)
        })
        .collect();
    let mut sorted = totals.clone();
    sorted.sort_by(f64::total_cmp);
    let mean = |v: &[f64]| (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64);
    let dit_sum: f64 = dit.iter().sum();
    let decode_sum: f64 = decode.iter().sum();
    let per_s = |count: f64, seconds: f64| (seconds > 0.0).then(|| count / seconds);
    let video_fps = per_s(video_frames as f64, window);
    let dit_fps = per_s(video_frames as f64, dit_sum);
    let decode_fps = per_s(video_frames as f64, decode_sum);
    let realtime = video_fps.map(|f| f / profile.video.fps);
    let pipe_fps = per_s(pipe_frames as f64, pipe_s);
    let wan_decoder = match profile.wan() {
        Ok(w) => Some(match decoder_kind {
            DecoderKind::Tae => w.decoder,
            DecoderKind::Taehv => streamdit::WanDecoder::Taehv,
            DecoderKind::WanVae => streamdit::WanDecoder::WanVae,
            DecoderKind::Preview => streamdit::WanDecoder::Preview,
        }),
        Err(_) => None,
    };
    let decoder = match (decoder_kind, wan_decoder, backend) {
        (DecoderKind::Preview, _, _) => "preview",
        (_, Some(streamdit::WanDecoder::Preview), _) => "preview",
        (_, Some(streamdit::WanDecoder::Taehv), _) => "taehv (CPU, f32)",
        (_, Some(streamdit::WanDecoder::WanVae), _) => "wan-vae (CPU, f32)",
        (_, None, "cuda") => "tae (GPU, f16, own stream)",
        (_, None, _) => "tae (CPU, f32)",
    };
    let decode_per_frame = per_s(decode_sum, video_frames as f64);
    let (p50, p90, p99, max) = (
        percentile(&sorted, 50.0),
        percentile(&sorted, 90.0),
        percentile(&sorted, 99.0),
        sorted[n - 1],
    );
    let jitter = std_dev(&intervals);
    let achieved_tflops = mean(&dit).and_then(|s| per_s(cost.call.total.flops as f64 / 1e12, s));
    let device_plan = (backend != "cpu").then(|| {
        let fusion = streamdit::inspect::device_fusion(&graph);
        MemoryPlan::build_fused(&graph, &fusion).peak_bytes()
    });
    let rss = peak_rss_bytes();
    let (weights, precision) = match (&args.model.weights, backend) {
        (Some(p), "cpu") => (
            format!("file {}", p.display()),
            "f32 compute, checkpoint weights".to_string(),
        ),
        (Some(p), _) => (
            format!("file {}", p.display()),
            "f16 weights and activations, f32 accumulation".to_string(),
        ),
        (None, b) => (
            format!("random, seed {}", args.model.random_weights.unwrap_or(0)),
            if b == "cpu" {
                format!("f32 compute, weights rounded to {}", args.model.dtype)
            } else {
                "f16 weights and activations, f32 accumulation".to_string()
            },
        ),
    };
    let git = option_env!("STREAMDIT_GIT_REVISION");
    let version = env!("CARGO_PKG_VERSION");
    let ms = |s: f64| s * 1e3;
    let opt = |v: Option<f64>, f: &dyn Fn(f64) -> String| v.map_or("n/a".to_string(), f);

    let mut text = String::new();
    say!(
        text,
        "streamdit bench: profile {}, backend {backend}{}, {precision}; engine {version} ({})",
        profile.name,
        match graphs {
            Some(true) => " (graph replay)",
            Some(false) => " (eager launches)",
            None => "",
        },
        git.map_or("git revision unknown".into(), |g| format!(
            "git {}",
            &g[..g.len().min(12)]
        ))
    );
    say!(text,
        "  weights {weights}, noise seed {seed}, guidance {}, warm-up {} calls, {n} measured calls; decoder {}",
        guidance,
        warmup_calls,
        decoder
    );
    say!(text, "\ntime to first frame");
    say!(text,
        "  cold  {:>10.3} ms  (engine + weights {:.3} ms, stream + backend {:.3} ms, prefill + first chunk + decode {:.3} ms; {cold_calls} calls)",
        ms(cold_s),
        ms(engine_s),
        ms(stream_s),
        ms(cold_s - engine_s - stream_s)
    );
    say!(text,
        "  warm  {:>10.3} ms  (a second stream: prefill + first chunk + decode, {warm_calls} calls; creating it took {:.3} ms)",
        ms(warm_s),
        ms(warm_create_s)
    );
    say!(
        text,
        "\nsteady state ({n} calls, {} chunks, {video_frames} video frames in {:.3} s)",
        emitted.len(),
        window
    );
    say!(
        text,
        "  {:<22} {:>12} {:>12}",
        "stage",
        "ms (mean)",
        "video FPS"
    );
    say!(
        text,
        "  {:<22} {:>12} {:>12}",
        "DiT call",
        opt(mean(&dit), &|s| format!("{:.3}", ms(s))),
        opt(dit_fps, &|f| format!("{f:.2}"))
    );
    say!(
        text,
        "  {:<22} {:>12} {:>12}",
        "decode (per chunk)",
        opt(mean(&decode), &|s| format!("{:.3}", ms(s))),
        opt(decode_fps, &|f| format!("{f:.2}"))
    );
    say!(
        text,
        "  {:<22} {:>12} {:>12}   ({decoder})",
        "decode (per video frame)",
        opt(decode_per_frame, &|s| format!("{:.3}", ms(s))),
        ""
    );
    say!(
        text,
        "  {:<22} {:>12} {:>12}",
        "prompt switch (text)",
        format!("{:.3}", ms(switch_s)),
        format!("cached {:.3}", ms(switch_cached_s))
    );
    say!(
        text,
        "  {:<22} {:>12} {:>12}",
        "end to end (per call)",
        opt(mean(&totals), &|s| format!("{:.3}", ms(s))),
        opt(video_fps, &|f| format!("{f:.2}"))
    );
    say!(text,
        "  {:<22} {:>12} {:>12}   ({pipe_chunks} chunks; the next DiT call starts before each decode{})",
        "end to end, pipelined",
        format!("{:.3}", ms(pipe_s / pipe_chunks as f64)),
        opt(pipe_fps, &|f| format!("{f:.2}")),
        if backend == "cpu" { ", no overlap on the CPU" } else { "" }
    );
    say!(
        text,
        "  model calls/s {}, real-time factor {} (video FPS / the profile's {} FPS)",
        opt(per_s(n as f64, window), &|f| format!("{f:.2}")),
        opt(realtime, &|f| format!("{f:.3}")),
        profile.video.fps
    );
    say!(text,
        "  per-call latency ms: p50 {:.3}  p90 {:.3}  p99 {:.3}  max {:.3}; jitter (std dev of chunk intervals) {}",
        ms(p50),
        ms(p90),
        ms(p99),
        ms(max),
        opt(jitter, &|j| format!("{:.3} ms", ms(j)))
    );
    say!(
        text,
        "  achieved {} ({} per call / mean DiT call time){}",
        opt(achieved_tflops, &|t| format!("{:.4} TFLOP/s", t)),
        fmt_flops(cost.call.total.flops),
        if backend == "emu" {
            "; emulator time, not GPU time"
        } else {
            ""
        }
    );
    // On the CPU: the engine's own GEMM rate at the call's largest linear shapes, the
    // machine's measured peak the call is set against.
    let cpu_peak = (backend == "cpu").then(|| crate::bench_kernels::cpu_gemm_peak(&graph));
    if let Some((peak, shapes)) = &cpu_peak {
        say!(text,
            "  CPU GEMM peak {:.1} GFLOP/s (the engine's GEMM, all threads, best of 10 runs at [t, k] x [k, n] = {}); the call runs at {} of it",
            peak / 1e9,
            shapes,
            opt(achieved_tflops, &|t| format!("{:.1}%", t * 1e12 / peak * 100.0))
        );
    }
    if let Some((v2v_text, _)) = &v2v {
        text.push_str(v2v_text);
    }
    say!(text, "\nmemory");
    say!(
        text,
        "  peak RSS            {}",
        rss.map_or("unavailable".into(), fmt_bytes)
    );
    say!(
        text,
        "  device (plan)       {}",
        device_plan.map_or("n/a (cpu backend)".into(), fmt_bytes)
    );
    let measured_device = after.as_ref().and_then(|a| a.memory_used_bytes);
    say!(
        text,
        "  device (measured)   {}",
        measured_device.map_or("n/a (needs a GPU and NVML)".into(), |b| format!(
            "{} in use on the GPU (NVML, all processes)",
            fmt_bytes(b)
        ))
    );
    let gpu = crate::telemetry::gpu_json(before.as_ref(), after.as_ref(), video_frames);
    // Peak of the GPU NVML names, when it is one of the plan's known GPUs.
    let peak_tflops = after
        .as_ref()
        .and_then(|a| a.name.as_deref())
        .and_then(|name| {
            let name = name.to_lowercase().replace(' ', "");
            streamdit::inspect::GpuSpec::ALL
                .into_iter()
                .find(|g| name.contains(g.key))
        })
        .map(|g| g.fp16_tflops);
    let share_of_peak = achieved_tflops.zip(peak_tflops).map(|(a, p)| a / p);
    match &telemetry {
        Ok(_) => say!(
            text,
            "\nGPU telemetry (NVML, after the window)\n{}\n  share of peak      {}",
            serde_json::to_string_pretty(&gpu).unwrap_or_default(),
            share_of_peak.map_or("unknown GPU".into(), |s| format!("{:.1}%", s * 100.0))
        ),
        Err(why) => say!(text, "\nGPU telemetry: null ({why})"),
    }

    if let Some(path) = &args.json {
        let report = json!({
            "config": {
                "profile": profile.name,
                "backend": backend,
                "backend_choice": engine.backend_choice().1,
                "precision": precision,
                "weights": weights,
                "seed": seed,
                "guidance": guidance,
                "prompt": args.prompt,
                "warmup_steps": warmup_calls,
                "steps": n,
                "duration_s": args.duration,
                "graphs": graphs,
                "engine_version": version,
                "git_revision": git,
            },
            "first_frame": {
                "cold_s": cold_s,
                "cold_engine_s": engine_s,
                "cold_stream_s": stream_s,
                "cold_prefill_s": cold_s - engine_s - stream_s,
                "cold_calls": cold_calls,
                "warm_s": warm_s,
                "warm_stream_create_s": warm_create_s,
                "warm_calls": warm_calls,
            },
            "steady": {
                "steps": n,
                "chunks": emitted.len(),
                "video_frames": video_frames,
                "seconds": window,
                "calls_per_s": per_s(n as f64, window),
                "video_fps": video_fps,
                "profile_fps": profile.video.fps,
                "realtime_factor": realtime,
                "stages": {
                    "dit_ms_mean": mean(&dit).map(ms),
                    "decode_ms_mean": mean(&decode).map(ms),
                    "decode_ms_per_video_frame": decode_per_frame.map(ms),
                    "end_to_end_ms_mean": mean(&totals).map(ms),
                    "prompt_switch_ms": ms(switch_s),
                    "prompt_switch_cached_ms": ms(switch_cached_s),
                    "dit_fps": dit_fps,
                    "decode_fps": decode_fps,
                    "end_to_end_fps": video_fps,
                    "decoder": decoder,
                },
                "pipelined": {
                    "chunks": pipe_chunks,
                    "video_frames": pipe_frames,
                    "seconds": pipe_s,
                    "ms_per_chunk": ms(pipe_s / pipe_chunks as f64),
                    "video_fps": pipe_fps,
                    "overlapped": backend != "cpu",
                },
                "latency_ms": { "p50": ms(p50), "p90": ms(p90), "p99": ms(p99), "max": ms(max) },
                "jitter_ms": jitter.map(ms),
                "series": {
                    "dit_ms": dit.iter().map(|&s| ms(s)).collect::<Vec<_>>(),
                    "decode_ms": samples.iter().map(|s| s.decode.map(ms)).collect::<Vec<_>>(),
                    "step_ms": totals.iter().map(|&s| ms(s)).collect::<Vec<_>>(),
                    "emitted_at_s": emitted,
                    "interval_ms": intervals.iter().map(|&s| ms(s)).collect::<Vec<_>>(),
                },
            },
            "memory": {
                "peak_rss_bytes": rss,
                "plan_peak_device_bytes": device_plan,
                "measured_device_bytes": measured_device,
            },
            "compute": {
                "call_flops": cost.call.total.flops,
                "achieved_tflops": achieved_tflops,
                "achieved_basis": "plan FLOPs per call / mean measured DiT call time",
                "share_of_peak": share_of_peak,
                "cpu_gemm_peak_gflops": cpu_peak.as_ref().map(|p| p.0 / 1e9),
                "cpu_gemm_peak_shapes": cpu_peak.as_ref().map(|p| p.1.clone()),
            },
            "gpu": gpu,
            "video_to_video": v2v.as_ref().map(|v| &v.1),
            "notes": [
                telemetry.as_ref().err().map_or("GPU telemetry from NVML".to_string(), |why| format!("GPU telemetry is null: {why}")),
                "steady-state times are host wall clock; each call is followed by a device synchronize",
            ],
        });
        let json = serde_json::to_string_pretty(&report)
            .map_err(|e| Error::Invalid(format!("JSON report: {e}")))?;
        streamdit::files::write_atomic(path, json.as_bytes())?;
    }
    print_stdout(&text)
}
