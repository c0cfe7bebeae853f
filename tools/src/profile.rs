//! `streamdit profile`: one eager model call timed piece by piece (ops on the CPU backend,
//! launches on the CUDA backend and the emulator), with each piece's FLOPs and bytes from
//! the plan, achieved rates, its share of the call, and a Chrome trace.

use std::path::PathBuf;
use std::time::Instant;

use clap::Args;
use serde_json::{json, Value};
use streamdit::conditioning as text;
use streamdit::inspect::noise_frame;
use streamdit::inspect::Graph;
use streamdit::inspect::Schedule;
use streamdit::inspect::{op_kind, GraphCost, OpClass, OpCost};
use streamdit::nvtx;
use streamdit::{Backend, Clock, Engine, Error, Family, Result, TimedStep};

use crate::common::{fmt_flops, print_stdout, ModelArgs};

#[derive(Args)]
pub struct ProfileArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// The prompt of the call.
    #[arg(long, default_value = "a benchmark")]
    prompt: String,
    /// Classifier-free guidance scale (default: the profile's; 1 disables CFG).
    #[arg(long)]
    guidance: Option<f32>,
    /// Untimed model calls before the profiled one.
    #[arg(long, default_value_t = 1, value_name = "CALLS")]
    warmup: u64,
    /// Also write the report as JSON to FILE.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Write a Chrome trace (open it in https://ui.perfetto.dev or chrome://tracing).
    #[arg(long, value_name = "FILE")]
    trace: Option<PathBuf>,
    /// Wan family: latent frames committed to the KV cache before the profiled call
    /// (default: the steady state, window minus one chunk).
    #[arg(long, value_name = "FRAMES")]
    cache_frames: Option<usize>,
}

/// One timed piece of the call with its share of the plan's costs.
struct Row {
    label: String,
    ops: std::ops::Range<usize>,
    kinds: String,
    class: OpClass,
    flops: f64,
    bytes: f64,
    seconds: f64,
    start: f64,
}

/// The class of the op of `ops` with the most FLOPs, or the most bytes when none has FLOPs.
fn dominant_class(ops: &[OpCost]) -> OpClass {
    ops.iter()
        .max_by_key(|c| (c.flops, c.bytes()))
        .map_or(OpClass::ALL[OpClass::ALL.len() - 1], |c| c.class)
}

/// A model call the tool can repeat and time: StreamDiT's (a steady-state buffer) or a
/// Wan chunk's (over a populated KV cache, `profile_wan.rs`).
pub(crate) trait Profiled {
    fn name(&self) -> &'static str;
    fn graph(&self) -> Graph;
    fn call(&mut self) -> Result<()>;
    fn timed(&mut self, on_step: &mut dyn FnMut(&TimedStep)) -> Result<Clock>;
}

/// A steady-state StreamDiT call: the buffer's noise levels after prefill.
struct StreamDitCall {
    backend: Box<dyn Backend>,
    x: Vec<f32>,
    tau: Vec<f32>,
    v: Vec<f32>,
}

impl StreamDitCall {
    fn new(engine: &Engine, prompt: &str, guidance: f32) -> Result<StreamDitCall> {
        let profile = engine.profile();
        let m = &profile.model;
        let mut backend = engine.create_backend(guidance)?;
        let cond = engine.encode_prompt(prompt)?;
        let negative = (backend.graph().batch == 2)
            .then(|| engine.encode_prompt(&profile.run.negative_prompt))
            .transpose()?;
        let branches: Vec<&text::TextInput> = std::iter::once(&cond).chain(&negative).collect();
        let (t, mask) = text::stack(&branches);
        {
            let _range = nvtx::Range::push("prompt");
            backend.set_text(&t, &mask)?;
        }
        let schedule = Schedule::new(&profile.stream);
        let tau = schedule.step(schedule.prefill_calls()).tau;
        let mut x = vec![0.0; m.buffer_elems()];
        for (k, frame) in x.chunks_mut(m.frame_elems()).enumerate() {
            noise_frame(profile.run.seed, k as u64, frame);
        }
        let v = vec![0.0; x.len()];
        Ok(StreamDitCall { backend, x, tau, v })
    }
}

impl Profiled for StreamDitCall {
    fn name(&self) -> &'static str {
        self.backend.name()
    }
    fn graph(&self) -> Graph {
        self.backend.graph().clone()
    }
    fn call(&mut self) -> Result<()> {
        self.backend.forward(&self.x, &self.tau, &mut self.v)
    }
    fn timed(&mut self, on_step: &mut dyn FnMut(&TimedStep)) -> Result<Clock> {
        self.backend
            .forward_timed(&self.x, &self.tau, &mut self.v, on_step)
    }
}

pub fn profile(args: ProfileArgs) -> Result<()> {
    let engine = args.model.engine()?;
    let profile = engine.profile().clone();
    let guidance = args.guidance.unwrap_or(profile.run.guidance);
    let mut backend: Box<dyn Profiled> = match profile.family {
        Family::Wan => crate::profile_wan::call(&engine, &args.prompt, args.cache_frames)?,
        Family::StreamDit => Box::new(StreamDitCall::new(&engine, &args.prompt, guidance)?),
    };
    for k in 0..args.warmup {
        let _range = nvtx::Range::push(format_args!("warm-up call {k}"));
        backend.call()?;
    }
    let graph = backend.graph();
    let cost = GraphCost::of(&graph);
    let mut rows: Vec<Row> = Vec::new();
    let mut at = 0.0;
    let wall = Instant::now();
    let call_range = nvtx::Range::push("profiled call");
    let clock = backend.timed(&mut |s| {
        let ops = &cost.call.ops[s.ops.clone()];
        let parts = s.parts.max(1) as f64;
        let kinds: Vec<&str> = graph.call_ops[s.ops.clone()].iter().map(op_kind).collect();
        rows.push(Row {
            label: s.label.to_string(),
            ops: s.ops.clone(),
            kinds: kinds.join("+"),
            class: dominant_class(ops),
            flops: ops.iter().map(|c| c.flops as f64).sum::<f64>() / parts,
            bytes: ops.iter().map(|c| c.bytes() as f64).sum::<f64>() / parts,
            seconds: s.seconds,
            start: at,
        });
        at += s.seconds;
    })?;
    let wall_s = wall.elapsed().as_secs_f64();
    drop(call_range);
    if rows.is_empty() {
        return Err(Error::Invalid(format!(
            "profile: the {} backend reported no timed steps",
            backend.name()
        )));
    }
    let total: f64 = rows.iter().map(|r| r.seconds).sum();
    let rate = |amount: f64, s: f64| (s > 0.0).then(|| amount / s / 1e9);
    let share = |s: f64| if total > 0.0 { s / total } else { 0.0 };
    let fmt_rate = |r: Option<f64>| r.map_or("-".to_string(), |r| format!("{r:.2}"));

    let mut out = String::new();
    let (unit, units) = if backend.name() == "cpu" {
        ("op", "ops")
    } else {
        ("launch", "launches")
    };
    say!(
        out,
        "streamdit profile: profile {}, backend {}, one eager call timed per {unit} by the {}",
        profile.name,
        backend.name(),
        clock.name()
    );
    say!(
        out,
        "{:>4}  {:>10} {:>6}  {:>9} {:>9} {:>9} {:>8}  {:<11} {}",
        "#",
        "time us",
        "share",
        "GFLOP",
        "MB",
        "GFLOP/s",
        "GB/s",
        "class",
        unit
    );
    for (i, r) in rows.iter().enumerate() {
        say!(
            out,
            "{i:>4}  {:>10.1} {:>5.1}%  {:>9.4} {:>9.3} {:>9} {:>8}  {:<11} {}",
            r.seconds * 1e6,
            100.0 * share(r.seconds),
            r.flops / 1e9,
            r.bytes / 1e6,
            fmt_rate(rate(r.flops, r.seconds)),
            fmt_rate(rate(r.bytes, r.seconds)),
            r.class.name(),
            r.label
        );
    }
    say!(
        out,
        "\nby class\n  {:<11} {:>6} {:>10} {:>7} {:>10} {:>9}",
        "class",
        unit,
        "time ms",
        "share",
        "GFLOP",
        "GFLOP/s"
    );
    let mut classes = Vec::new();
    for class in OpClass::ALL {
        let mine: Vec<&Row> = rows.iter().filter(|r| r.class == class).collect();
        let s: f64 = mine.iter().map(|r| r.seconds).sum();
        let f: f64 = mine.iter().map(|r| r.flops).sum();
        let b: f64 = mine.iter().map(|r| r.bytes).sum();
        say!(
            out,
            "  {:<11} {:>6} {:>10.3} {:>6.1}% {:>10.4} {:>9}",
            class.name(),
            mine.len(),
            s * 1e3,
            100.0 * share(s),
            f / 1e9,
            fmt_rate(rate(f, s))
        );
        classes.push(json!({
            "class": class.name(), "steps": mine.len(), "seconds": s, "share": share(s),
            "flops": f, "bytes": b, "gflops_per_s": rate(f, s), "gb_per_s": rate(b, s),
        }));
    }
    let flops = cost.call.total.flops as f64;
    let bytes = cost.call.total.bytes() as f64;
    say!(out,
        "\ncall: {} {units}, {:.3} ms summed ({:.3} ms wall around the traced call), {} and {:.3} MB, {} GFLOP/s, {} GB/s",
        rows.len(),
        total * 1e3,
        wall_s * 1e3,
        fmt_flops(cost.call.total.flops),
        bytes / 1e6,
        fmt_rate(rate(flops, total)),
        fmt_rate(rate(bytes, total))
    );
    if backend.name() == "emu" {
        say!(
            out,
            "times are the host's time emulating each launch, not GPU time"
        );
    }
    match nvtx::injection() {
        Some(lib) => say!(out, "NVTX ranges (one per {unit}) recorded by {lib}"),
        None => {
            say!(
                out,
                "NVTX ranges (one per {unit}) emitted; run under `nsys profile` to record them"
            )
        }
    }

    let name = format!("streamdit profile {} {}", profile.name, backend.name());
    if let Some(path) = &args.trace {
        let mut events = vec![json!({
            "name": "process_name", "ph": "M", "pid": 1, "tid": 1,
            "args": { "name": name },
        })];
        events.extend(rows.iter().map(|r| {
            json!({
                "name": r.label, "cat": r.class.name(), "ph": "X", "pid": 1, "tid": 1,
                "ts": r.start * 1e6, "dur": r.seconds * 1e6,
                "args": { "ops": r.kinds, "flops": r.flops, "bytes": r.bytes },
            })
        }));
        let trace = json!({ "traceEvents": events, "displayTimeUnit": "ms" });
        let text = serde_json::to_string(&trace)
            .map_err(|e| Error::Invalid(format!("Chrome trace: {e}")))?;
        streamdit::files::write_atomic(path, text.as_bytes())?;
    }
    if let Some(path) = &args.json {
        let steps: Vec<Value> = rows
            .iter()
            .map(|r| {
                json!({
                    "label": r.label,
                    "ops": [r.ops.start, r.ops.end],
                    "kinds": r.kinds,
                    "class": r.class.name(),
                    "seconds": r.seconds,
                    "start_s": r.start,
                    "share": share(r.seconds),
                    "flops": r.flops,
                    "bytes": r.bytes,
                    "gflops_per_s": rate(r.flops, r.seconds),
                    "gb_per_s": rate(r.bytes, r.seconds),
                })
            })
            .collect();
        let report = json!({
            "profile": profile.name,
            "backend": backend.name(),
            "clock": clock.name(),
            "unit": unit,
            "guidance": guidance,
            "warmup_calls": args.warmup,
            "call_ops": graph.call_ops.len(),
            "total_s": total,
            "wall_s": wall_s,
            "call_flops": cost.call.total.flops,
            "call_bytes": cost.call.total.bytes(),
            "gflops_per_s": rate(flops, total),
            "gb_per_s": rate(bytes, total),
            "classes": classes,
            "steps": steps,
            "nvtx": {
                "ranges": format!("`profiled call`, `warm-up call N`, and one per {unit} named as in `steps`"),
                "injection": nvtx::injection(),
            },
        });
        let text = serde_json::to_string_pretty(&report)
            .map_err(|e| Error::Invalid(format!("JSON report: {e}")))?;
        streamdit::files::write_atomic(path, text.as_bytes())?;
    }
    print_stdout(&out)
}
