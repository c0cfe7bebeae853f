//! `streamdit plan`: the static graph op by op with FLOPs, bytes, the memory plan and a roofline.

use std::path::PathBuf;

use clap::Args;
use streamdit::{Error, Profile, Result};

use crate::common::{fmt_bytes, fmt_count, fmt_flops, print_stdout};

#[derive(Args)]
pub(crate) struct PlanArgs {
    /// A built-in profile name or a profile TOML file.
    #[arg(long, default_value = "tiny")]
    profile: String,
    /// Classifier-free guidance scale (default: the profile's; 1 disables CFG).
    #[arg(long)]
    guidance: Option<f32>,
    /// Roofline times on this GPU: h100, h200, a100, l40s or rtx4090.
    #[arg(long)]
    gpu: Option<String>,
    /// Fraction of the roofline a real run reaches, for the second prediction.
    #[arg(long, default_value_t = 0.6)]
    efficiency: f64,
    /// Wan family: the decoder to cost per chunk, `taehv` or `wan-vae` (default: the
    /// profile's `wan.decoder`).
    #[arg(long, value_name = "taehv|wan-vae")]
    decoder: Option<streamdit::DecoderKind>,
    /// Also write the report as JSON to FILE.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
}

/// The call's launch costs on each path `plan` reports.
struct Launched {
    /// Every device: the lowering's epilogue and load fusions.
    device: Vec<streamdit::inspect::OpCost>,
    /// Compute capability 9.0: norms in the next GEMM's prologue, plus the statistics passes
    /// of those whose input no residual GEMM wrote.
    sm90: Vec<streamdit::inspect::OpCost>,
    /// The prologues with every norm's statistics free (the bound).
    bound: Vec<streamdit::inspect::OpCost>,
}

pub(crate) fn plan(args: PlanArgs) -> Result<()> {
    use serde_json::{json, Value};
    use streamdit::inspect::{lifetimes_fused, MemoryPlan, OpList, ALIGNMENT};
    use streamdit::inspect::{
        op_kind, video_frames_per_call, CostSum, GpuSpec, GraphCost, ListCost, OpClass, ParamCount,
        Prediction,
    };

    let profile = Profile::load(&args.profile)?;
    let guidance = streamdit::check_guidance(args.guidance.unwrap_or(profile.run.guidance))?;
    let gpu = args.gpu.as_deref().map(GpuSpec::by_key).transpose()?;
    let (graph, wan) = crate::plan_wan::graph(&profile, guidance, args.decoder)?;
    let cost = GraphCost::of(&graph);
    // The plan of the CUDA backend: ops it runs in one launch share one liveness step.
    let fusion = streamdit::inspect::device_fusion(&graph);
    let mem = MemoryPlan::build_fused(&graph, &fusion);
    mem.verify_fused(&graph, &fusion)
        .map_err(|e| Error::Invalid(format!("memory plan: {e}")))?;
    let params = ParamCount::of(&graph);
    let frames = video_frames_per_call(&profile);
    let prediction = gpu
        .map(|g| Prediction::new(g, &cost, frames, args.efficiency))
        .transpose()?;
    // The launches the CUDA backend makes of the call ops: on every device; on compute
    // capability 9.0, with LayerNorm / adaLN in the next GEMM's prologue (their row
    // statistics from the residual GEMMs' epilogues, or a pass of their own); and the
    // bound with every norm's statistics free. The Wan family's lowering fuses across its own ops
    // and its report keeps its own roofline.
    let launched = match &wan {
        None => {
            use streamdit::inspect::{device_call_folds, launches};
            let folds = device_call_folds(&graph);
            let device = launches::group(&cost.call.ops, &folds)?;
            let modelled = launches::with_prologues(&graph, &graph.call_ops, &folds);
            let stats = launches::stats_passes(&graph, &graph.call_ops, &folds, &modelled);
            let bound = launches::group(&cost.call.ops, &modelled)?;
            let mut sm90 = launches::costs_of(&bound);
            sm90.extend(stats);
            Some(Launched {
                device: launches::costs_of(&device),
                sm90,
                bound: launches::costs_of(&bound),
            })
        }
        Some(_) => None,
    };
    let launch_prediction =
        |pick: fn(&Launched) -> &Vec<streamdit::inspect::OpCost>| match (gpu, &launched) {
            (Some(g), Some(l)) => Prediction::of_ops(g, pick(l), frames, args.efficiency).map(Some),
            _ => Ok(None),
        };
    let device_prediction = launch_prediction(|l| &l.device)?;
    let sm90_prediction = launch_prediction(|l| &l.sm90)?;
    let prologue_prediction = launch_prediction(|l| &l.bound)?;
    let (bytes, flops, count) = (fmt_bytes, fmt_flops, fmt_count);
    // The report is built in memory and written at once; a closed pipe (`| head`) ends it.
    let mut text = String::new();

    say!(
        text,
        "streamdit plan: profile {}, guidance {guidance} ({} branch{}), {}",
        profile.name,
        graph.batch,
        if graph.batch == 1 { "" } else { "es" },
        match gpu {
            Some(g) => format!(
                "{} ({} TFLOP/s dense FP16, {} GB/s)",
                g.name, g.fp16_tflops, g.hbm_gbps
            ),
            None => "no GPU (add --gpu for roofline times)".into(),
        }
    );
    let time_header = if gpu.is_some() {
        "   time us  bound"
    } else {
        ""
    };
    let mut ops_json = Vec::new();
    for (list, ops, costs, title) in [
        (
            OpList::Prompt,
            &graph.prompt_ops,
            &cost.prompt,
            "prompt ops (once per prompt)",
        ),
        (
            OpList::Call,
            &graph.call_ops,
            &cost.call,
            "call ops (once per model call)",
        ),
    ] {
        say!(
            text,
            "\n{title}\n{:>4}  {:<15} {:<26} {:<18} {:>11} {:>9} {:>9}  {:<11} {:<15}{time_header}",
            "#",
            "op",
            "output",
            "shape",
            "GFLOP",
            "MB read",
            "MB write",
            "class",
            "at (MiB)"
        );
        for (i, (op, c)) in ops.iter().zip(&costs.ops).enumerate() {
            let out = graph.tensor(op.output());
            let at = mem.placements[op.output()];
            let time = gpu.map(|g| g.op_time(c));
            say!(
                text,
                "{i:>4}  {:<15} {:<26} {:<18} {:>11.3} {:>9.2} {:>9.2}  {:<11} {:<15}{}",
                op_kind(op),
                out.name,
                format!("{:?}", out.shape),
                c.flops as f64 / 1e9,
                c.bytes_read as f64 / 1e6,
                c.bytes_written as f64 / 1e6,
                c.class.name(),
                format!(
                    "{}+{:.2}",
                    at.region.name(),
                    at.offset as f64 / (1 << 20) as f64
                ),
                time.map_or(String::new(), |t| format!(
                    " {:>9.2}  {}",
                    t.seconds * 1e6,
                    t.bound.name()
                )),
            );
            ops_json.push(json!({
                "list": format!("{list:?}").to_lowercase(),
                "index": i,
                "op": op_kind(op),
                "output": out.name,
                "shape": out.shape,
                "flops": c.flops,
                "bytes_read": c.bytes_read,
                "bytes_written": c.bytes_written,
                "class": c.class.name(),
                "region": at.region.name(),
                "offset": at.offset,
                "time_us": time.map(|t| t.seconds * 1e6),
                "bound": time.map(|t| t.bound.name()),
            }));
        }
    }

    let decoder = match &wan {
        None => {
            if args.decoder.is_some() {
                return Err(Error::Invalid(format!(
                    "--decoder: profile `{}` is of the StreamDiT family, whose plan costs its TAE decoder",
                    profile.name
                )));
            }
            // The end-to-end line adds the launches this GPU's architecture gets: the
            // sm_90a path's on compute capability 9.0, the every-device ones elsewhere.
            let own = match gpu {
                Some(g) if g.compute_capability == (9, 0) => sm90_prediction.as_ref(),
                _ => device_prediction.as_ref(),
            };
            crate::plan_decoder::report(&profile, gpu, own, mem.peak_bytes())?
        }
        Some(w) => {
            let (dit_flops, dit_s) = w.chunk(&cost, gpu);
            crate::plan_video::report(
                &profile,
                args.decoder,
                gpu,
                crate::plan_video::Dit {
                    chunk_frames: w.chunk_frames(),
                    flops: dit_flops,
                    seconds: dit_s,
                    peak_bytes: mem.peak_bytes(),
                },
                args.efficiency,
            )?
        }
    };
    text.push_str(&decoder.ops);

    let ms = |ops: &[streamdit::inspect::OpCost]| gpu.map(|g| g.list_seconds(ops) * 1e3);
    let class_rows = |costs: &ListCost| -> Vec<(OpClass, CostSum, Option<f64>)> {
        OpClass::ALL
            .iter()
            .map(|&k| {
                let ops: Vec<_> = costs.ops.iter().copied().filter(|c| c.class == k).collect();
                (k, costs.class(k), ms(&ops))
            })
            .collect()
    };
    let mut classes_json = serde_json::Map::new();
    for (name, costs) in [("prompt", &cost.prompt), ("call", &cost.call)] {
        let total_ms = ms(&costs.ops);
        say!(
            text,
            "\n{name} ops by class\n  {:<11} {:>5} {:>14} {:>10}{}",
            "class",
            "ops",
            "GFLOP",
            "GB moved",
            if gpu.is_some() {
                "    time ms   share"
            } else {
                ""
            }
        );
        let mut rows = Vec::new();
        for (k, s, t) in class_rows(costs) {
            say!(
                text,
                "  {:<11} {:>5} {:>14.3} {:>10.4}{}",
                k.name(),
                s.ops,
                s.flops as f64 / 1e9,
                s.bytes() as f64 / 1e9,
                match (t, total_ms) {
                    (Some(t), Some(all)) => format!(" {t:>10.3} {:>6.1}%", 100.0 * t / all),
                    _ => String::new(),
                }
            );
            rows.push(json!({
                "class": k.name(), "ops": s.ops, "flops": s.flops,
                "bytes_read": s.bytes_read, "bytes_written": s.bytes_written, "time_ms": t,
            }));
        }
        let s = costs.total;
        say!(
            text,
            "  {:<11} {:>5} {:>14.3} {:>10.4}{}",
            "total",
            s.ops,
            s.flops as f64 / 1e9,
            s.bytes() as f64 / 1e9,
            total_ms.map_or(String::new(), |t| format!(" {t:>10.3}")),
        );
        classes_json.insert(name.into(), Value::Array(rows));
    }

    let stats = |s: streamdit::inspect::ArenaStats| {
        json!({
            "buffers": s.buffers, "sum_bytes": s.sum_bytes,
            "live_bound_bytes": s.live_bound_bytes, "planned_bytes": s.planned_bytes,
        })
    };
    say!(text, "\ntotals");
    say!(
        text,
        "  parameters       {} in the {} blocks, {} in the DiT",
        count(params.blocks),
        profile.model.depth,
        count(params.dit)
    );
    say!(
        text,
        "  weights          {} (f16, {ALIGNMENT}-byte aligned)",
        bytes(mem.weight_bytes())
    );
    say!(
        text,
        "  arena            {} (fused launches; prompt ops reuse the call arena)",
        bytes(mem.arena_bytes())
    );
    for (name, s) in [("call", mem.call), ("prompt", mem.prompt)] {
        say!(
            text,
            "    {name:<6} ops     {} buffers: {} planned, live lower bound {}, {} without reuse",
            s.buffers,
            bytes(s.planned_bytes),
            bytes(s.live_bound_bytes),
            bytes(s.sum_bytes)
        );
    }
    say!(
        text,
        "  persistent       {} (cross-attention K/V{})",
        bytes(mem.persistent_bytes()),
        if wan.is_some() { ", KV cache" } else { "" }
    );
    say!(text, "  inputs, output   {}", bytes(mem.io_bytes()));
    say!(
        text,
        "  peak device mem  {}{}",
        bytes(mem.peak_bytes()),
        gpu.map_or(String::new(), |g| format!(
            ": {} the {} GiB of the {}",
            if mem.peak_bytes() <= g.memory_bytes() {
                "fits"
            } else {
                "does NOT fit"
            },
            g.memory_gib,
            g.name
        ))
    );
    say!(
        text,
        "  call FLOPs       {} per call ({} per prompt)",
        flops(cost.call.total.flops),
        flops(cost.prompt.total.flops)
    );
    let mut launches_json = Value::Null;
    if let (Some(p), Some(d), Some(h), Some(m), Some(l)) = (
        &prediction,
        &device_prediction,
        &sm90_prediction,
        &prologue_prediction,
        &launched,
    ) {
        say!(
            text,
            "  roofline         {:.2} ms per call, {:.2} video FPS ({} frames per call; the {} graph ops, each its own launch)",
            p.seconds_per_call * 1e3,
            p.fps,
            p.video_frames_per_call,
            graph.call_ops.len()
        );
        say!(
            text,
            "  device launches  {:.2} ms per call, {:.2} video FPS (the CUDA backend's {} launches: residuals and SwiGLU in GEMM epilogues, guidance in unpatchify, q/k norms at the attention's load)",
            d.seconds_per_call * 1e3,
            d.fps,
            l.device.len()
        );
        say!(
            text,
            "  sm_90a launches  {:.2} ms per call, {:.2} video FPS ({} launches: as above, with LayerNorm and adaLN in the next GEMM's prologue, their row statistics left by the residual GEMMs or, where the input comes from elsewhere, a pass of their own)",
            h.seconds_per_call * 1e3,
            h.fps,
            l.sm90.len()
        );
        say!(
            text,
            "  with prologues   {:.2} ms per call, {:.2} video FPS ({} launches; the bound: every norm's statistics free)",
            m.seconds_per_call * 1e3,
            m.fps,
            l.bound.len()
        );
        say!(
            text,
            "  {:<17}{:.2} ms per call, {:.2} video FPS (of the device launches)",
            format!("at {:.0}% of it", d.efficiency * 100.0),
            d.seconds_per_call_at_efficiency * 1e3,
            d.fps_at_efficiency
        );
        let row = |p: &Prediction, n: usize| json!({"launches": n, "ms_per_call": p.seconds_per_call * 1e3, "fps": p.fps});
        launches_json = json!({
            "device": row(d, l.device.len()),
            "sm90": row(h, l.sm90.len()),
            "with_prologues": row(m, l.bound.len()),
        });
    }
    let paths_json = match (&device_prediction, &launched) {
        (Some(p), Some(l)) => {
            let g = p.gpu;
            let (t, j) = crate::plan_wan::kernel_paths(g, "call", p.video_frames_per_call, |k| {
                k.list_seconds(&g, &l.device)
            });
            // The sm_90a launches on the wgmma path, before the paths' closing note.
            let s = streamdit::inspect::KernelPath::WGMMA.list_seconds(&g, &l.sm90);
            let mut lines: Vec<&str> = t.lines().collect();
            let note = lines.pop();
            for l in lines {
                say!(text, "{l}");
            }
            if let Some(note) = note {
                say!(
                    text,
                    "  {:<17}{:.2} ms per call, {:.2} video FPS (the sm_90a launches above: the prologue GEMMs and their statistics passes)",
                    "wgmma, prologues",
                    s * 1e3,
                    p.video_frames_per_call / s
                );
                say!(text, "{note}");
            }
            j
        }
        _ => Value::Null,
    };
    text.push_str(&decoder.totals);
    let wan_json = wan.as_ref().map(|p| {
        let (t, j) = crate::plan_wan::report(p, &graph, &cost, gpu, args.efficiency);
        text.push_str(&t);
        j
    });

    if let Some(path) = &args.json {
        let life = lifetimes_fused(&graph, &fusion);
        let tensors: Vec<Value> = graph
            .tensors
            .iter()
            .enumerate()
            .map(|(id, t)| {
                let p = mem.placements[id];
                json!({
                    "name": t.name, "kind": format!("{:?}", t.kind), "shape": t.shape,
                    "precision": format!("{:?}", t.precision), "region": p.region.name(),
                    "offset": p.offset, "bytes": p.bytes,
                    "live": life[id].iter().map(|l| json!({
                        "list": format!("{:?}", l.list).to_lowercase(),
                        "first": l.first, "last": l.last,
                    })).collect::<Vec<_>>(),
                })
            })
            .collect();
        let report = json!({
            "profile": profile.name,
            "guidance": guidance,
            "batch": graph.batch,
            "gpu": gpu.map(|g| json!({
                "key": g.key, "name": g.name, "fp16_tflops": g.fp16_tflops,
                "hbm_gbps": g.hbm_gbps, "memory_gib": g.memory_gib,
            })),
            "efficiency": args.efficiency,
            "parameters": { "blocks": params.blocks, "dit": params.dit },
            "memory": {
                "alignment": ALIGNMENT,
                "weight_bytes": mem.weight_bytes(),
                "weight_bytes_unpadded": mem.weight_bytes_unpadded,
                "persistent_bytes": mem.persistent_bytes(),
                "io_bytes": mem.io_bytes(),
                "arena_bytes": mem.arena_bytes(),
                "peak_bytes": mem.peak_bytes(),
                "fits_gpu": gpu.map(|g| mem.peak_bytes() <= g.memory_bytes()),
                "call_arena": stats(mem.call),
                "prompt_arena": stats(mem.prompt),
            },
            "totals": {
                "call_flops": cost.call.total.flops,
                "call_bytes": cost.call.total.bytes(),
                "prompt_flops": cost.prompt.total.flops,
                "prompt_bytes": cost.prompt.total.bytes(),
                "video_frames_per_call": frames,
                "ms_per_call": prediction.map(|p| p.seconds_per_call * 1e3),
                "fps": prediction.map(|p| p.fps),
                "ms_per_call_at_efficiency": prediction.map(|p| p.seconds_per_call_at_efficiency * 1e3),
                "fps_at_efficiency": prediction.map(|p| p.fps_at_efficiency),
                "kernel_paths": paths_json,
                "launches": launches_json,
                "prompt_ms": ms(&cost.prompt.ops),
            },
            "classes": classes_json,
            "ops": ops_json,
            "decoder": decoder.json,
            "wan": wan_json,
            "tensors": tensors,
        });
        let json = serde_json::to_string_pretty(&report)
            .map_err(|e| Error::Invalid(format!("JSON report: {e}")))?;
        streamdit::files::write_atomic(path, json.as_bytes())?;
    }
    print_stdout(&text)
}
