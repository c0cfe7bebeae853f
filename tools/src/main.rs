//! `streamdit`: generate video, run one model call, write random checkpoints, list profiles,
//! plan, benchmark and profile.

/// Appends one formatted line, trailing spaces trimmed, to the report `out` being built
/// (reports are built in memory and printed at once).
macro_rules! say {
    ($out:expr, $($arg:tt)*) => {{
        $out.push_str(format!($($arg)*).trim_end());
        $out.push('\n');
    }};
}

mod bench;
mod decoder_plan;
mod profile;
mod serve;
mod telemetry;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use clap::{Args, Parser, Subcommand};
use streamdit::model::checkpoint::{self, DType};
use streamdit::model::profile::builtin_names;
use streamdit::stream::sink::open_sink;
use streamdit::text::{self, load_text_embeddings};
use streamdit::{
    BackendKind, DecoderKind, Engine, EngineParams, Error, Profile, Result, StreamParams,
    WeightsSource,
};

#[derive(Parser)]
#[command(
    name = "streamdit",
    version,
    about = "StreamDiT streaming text-to-video inference engine"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Stream video from a prompt into a Y4M file, a PNG sequence or raw RGB24 on stdout.
    Generate(GenerateArgs),
    /// Run one model call on tensors from a safetensors file and write `v`.
    Forward(ForwardArgs),
    /// Decode latents (`latents [T, C, H, W]` in a safetensors file) to video with the TAE
    /// decoder on the CPU, chunk by chunk as a stream does.
    Decode(DecodeArgs),
    /// Checkpoint tools.
    Weights {
        #[command(subcommand)]
        command: WeightsCommand,
    },
    /// List or show run profiles.
    Profiles {
        #[command(subcommand)]
        command: ProfilesCommand,
    },
    /// The static graph op by op with FLOPs and bytes, the memory plan, and with `--gpu` a
    /// roofline prediction per op and per call. Needs no GPU.
    Plan(PlanArgs),
    /// Time to first frame, steady-state FPS split by stage, per-call latency percentiles
    /// and jitter, memory and the configuration; `--json` adds the raw per-call series.
    Bench(bench::BenchArgs),
    /// One eager model call timed per op (CPU) or per launch (CUDA, emulator) with FLOPs,
    /// bytes and achieved rates; `--trace` writes a Chrome trace for Perfetto.
    Profile(profile::ProfileArgs),
    /// Run the profile's text encoders on a prompt and write `text` and `text_mask`
    /// (safetensors, f32), to compare with another implementation; `--write-folders DIR`
    /// writes the random encoders as Hugging Face folders instead.
    Encode(EncodeArgs),
    /// Serve the stream live to a browser page (WebSocket, MJPEG) steered by prompts, with
    /// JSON endpoints for scripts.
    Serve(serve::ServeArgs),
}

/// `NAME=PATH` of `--text-dir`.
fn parse_text_dir(s: &str) -> std::result::Result<(String, String), String> {
    let (name, path) = s
        .split_once('=')
        .ok_or_else(|| format!("expected NAME=PATH, found `{s}`"))?;
    Ok((name.to_string(), path.to_string()))
}

/// Loads a profile and points its text encoders at the folders given on the command line.
fn load_profile(name: &str, text_dirs: &[(String, String)]) -> Result<Profile> {
    let mut profile = Profile::load(name)?;
    for (enc, dir) in text_dirs {
        profile.text.set_dir(enc, dir)?;
    }
    Ok(profile)
}

#[derive(Args)]
struct EncodeArgs {
    /// A built-in profile name or a profile TOML file.
    #[arg(long, default_value = "tiny")]
    profile: String,
    /// A Hugging Face folder for text encoder NAME (repeatable): `--text-dir ul2=/models/ul2`.
    #[arg(long, value_name = "NAME=PATH", value_parser = parse_text_dir)]
    text_dir: Vec<(String, String)>,
    /// The DiT checkpoint holding the adapters `text_adapter.NAME.weight`; without it, the
    /// random weights' adapters (seed `--random-weights`).
    #[arg(long)]
    weights: Option<PathBuf>,
    #[arg(long, value_name = "SEED", default_value_t = 0)]
    random_weights: u64,
    #[arg(long, default_value = "")]
    prompt: String,
    /// Output safetensors file.
    #[arg(long, required_unless_present = "write_folders")]
    out: Option<PathBuf>,
    /// Write each random (folder-less) encoder of the profile as a Hugging Face folder
    /// `DIR/NAME` (config.json, model.safetensors, tokenizer.json) and stop.
    #[arg(long, value_name = "DIR")]
    write_folders: Option<PathBuf>,
}

fn encode(args: EncodeArgs) -> Result<()> {
    use streamdit::model::schema::Group;
    use streamdit::text::conditioner::Adapters;
    let profile = load_profile(&args.profile, &args.text_dir)?;
    if let Some(dir) = &args.write_folders {
        for e in &profile.text.encoders {
            if let (None, Some(spec)) = (&e.dir, &e.random) {
                let bytes = e.tokenizer.as_deref() == Some("bytes");
                let out = dir.join(&e.name);
                text::random::random_model(&e.kind, spec, bytes)?.write_folder(&out)?;
                eprintln!("streamdit: wrote {} ({})", out.display(), e.kind);
            }
        }
        return Ok(());
    }
    let m = &profile.model;
    let ckpt = args
        .weights
        .as_ref()
        .map(checkpoint::Checkpoint::open)
        .transpose()?;
    let byte_table = match &ckpt {
        Some(c) => c.read_f32("text_embed.weight", &[256 + 3, m.text_dim]).ok(),
        None => checkpoint::Weights::random_groups(
            m,
            args.random_weights,
            DType::F32,
            &[Group::TextEmbed],
        )
        .get("text_embed.weight")
        .ok()
        .cloned(),
    };
    let adapters = match &ckpt {
        Some(c) => Adapters::Checkpoint(c),
        None => Adapters::Random {
            seed: args.random_weights,
        },
    };
    let enc = text::Conditioner::new(&profile.text, m.text_dim, &adapters, byte_table.as_ref())?;
    for n in enc.notes() {
        eprintln!("streamdit: {n}");
    }
    let t = Instant::now();
    let cond = enc.encode_uncached(&args.prompt)?;
    let secs = t.elapsed().as_secs_f64();
    let mask = streamdit::Tensor::new(vec![cond.mask.len()], cond.mask.clone())?;
    let out = args
        .out
        .as_deref()
        .unwrap_or(std::path::Path::new("text.safetensors"));
    checkpoint::write_tensors(
        out,
        &[("text", &cond.text), ("text_mask", &mask)],
        DType::F32,
    )?;
    let real = cond.mask.iter().filter(|&&v| v != 0.0).count();
    eprintln!(
        "streamdit: wrote {} (text {:?}, {real} real tokens): encoders took {:.1} ms",
        out.display(),
        cond.text.shape,
        secs * 1e3
    );
    Ok(())
}

#[derive(Args)]
struct ModelArgs {
    /// A built-in profile name or a profile TOML file.
    #[arg(long, default_value = "tiny")]
    profile: String,
    /// A safetensors checkpoint; without it, deterministic random weights are used.
    #[arg(long, conflicts_with = "random_weights")]
    weights: Option<PathBuf>,
    /// Seed of the random weights (the same values `weights init` writes).
    #[arg(long, value_name = "SEED")]
    random_weights: Option<u64>,
    /// Precision the random weights are rounded to.
    #[arg(long, default_value = "f16")]
    dtype: DType,
    /// auto, cpu, cuda or emu.
    #[arg(long, default_value = "auto")]
    backend: BackendKind,
    /// A Hugging Face folder for text encoder NAME (repeatable): `--text-dir ul2=/models/ul2`.
    #[arg(long, value_name = "NAME=PATH", value_parser = parse_text_dir)]
    text_dir: Vec<(String, String)>,
    /// Where the text encoders' linear layers run: `cpu` (default: no GPU memory) or
    /// `backend` (the model's cuda/emu device, FP16 GEMM kernel; attention stays on the CPU).
    #[arg(long, value_name = "cpu|backend")]
    text_device: Option<String>,
}

impl ModelArgs {
    fn engine(&self) -> Result<Engine> {
        let mut profile = load_profile(&self.profile, &self.text_dir)?;
        if let Some(d) = &self.text_device {
            profile.text.device = Some(d.clone());
            profile.validate()?;
        }
        let weights = match &self.weights {
            Some(path) => WeightsSource::File(path.clone()),
            None => WeightsSource::Random {
                seed: self.random_weights.unwrap_or(0),
                dtype: self.dtype,
            },
        };
        let engine = Engine::new(EngineParams {
            profile,
            weights,
            backend: self.backend,
        })?;
        let (kind, why) = engine.backend_choice();
        eprintln!("streamdit: backend {kind:?} ({why})");
        for n in engine.text_notes() {
            eprintln!("streamdit: {n}");
        }
        Ok(engine)
    }
}

#[derive(Args)]
struct GenerateArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// The prompt.
    #[arg(long, default_value = "")]
    prompt: String,
    /// The negative prompt (used when guidance is not 1).
    #[arg(long)]
    negative_prompt: Option<String>,
    /// Switch the prompt once FRAME video frames have been emitted: `--prompt-at 48:"a new prompt"`.
    #[arg(long, value_name = "FRAME:PROMPT", value_parser = parse_prompt_at)]
    prompt_at: Vec<(u64, String)>,
    /// Noise seed (default: the profile's).
    #[arg(long)]
    seed: Option<u64>,
    /// Classifier-free guidance scale (default: the profile's; 1 disables CFG).
    #[arg(long)]
    guidance: Option<f32>,
    /// Video frames to write (rounded up to whole chunks).
    #[arg(long, conflicts_with = "seconds")]
    frames: Option<u64>,
    /// Seconds of video to write.
    #[arg(long)]
    seconds: Option<f64>,
    /// Precomputed text condition (`text [Lt, Dtxt]`, `text_mask [Lt]`) replacing the prompt.
    #[arg(long)]
    text_embeddings: Option<PathBuf>,
    /// `out.y4m`, a directory (or `*.png`) for a PNG sequence, or `-` for raw RGB24 on stdout.
    #[arg(long, short, default_value = "streamdit.y4m")]
    out: String,
    /// Show the cheap latent preview instead of decoding with the TAE decoder.
    #[arg(long)]
    preview: bool,
}

#[derive(Args)]
struct DecodeArgs {
    /// A built-in profile name or a profile TOML file (its decoder and latent size).
    #[arg(long, default_value = "tiny")]
    profile: String,
    /// A safetensors checkpoint with the `decoder.*` tensors; without it, deterministic
    /// random weights are used.
    #[arg(long, conflicts_with = "random_weights")]
    weights: Option<PathBuf>,
    /// Seed of the random weights (the same values `weights init` writes).
    #[arg(long, value_name = "SEED")]
    random_weights: Option<u64>,
    /// Precision the random weights are rounded to.
    #[arg(long, default_value = "f16")]
    dtype: DType,
    /// Safetensors file with `latents [T, C, H, W]` (f16, bf16 or f32).
    #[arg(long)]
    latents: PathBuf,
    /// Latent frames per decoder call (default: the profile's chunk); the output is the
    /// same for every chunk size.
    #[arg(long)]
    chunk: Option<usize>,
    /// `out.y4m`, a directory (or `*.png`) for a PNG sequence, or `-` for raw RGB24 on stdout.
    #[arg(long, short)]
    out: String,
}

#[derive(Args)]
struct ForwardArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Safetensors with `x [F,C,H,W]`, `tau [F]`, `text [Lt,Dtxt]`, `text_mask [Lt]`, and with
    /// guidance optionally `negative_text`, `negative_text_mask` (default: the empty prompt).
    #[arg(long)]
    input: PathBuf,
    /// Where to write `v [F,C,H,W]` (f32 safetensors).
    #[arg(long, short)]
    out: PathBuf,
    /// Classifier-free guidance scale (1 disables CFG).
    #[arg(long, default_value_t = 1.0)]
    guidance: f32,
}

#[derive(Args)]
struct PlanArgs {
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
    /// Also write the report as JSON to FILE.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
}

#[derive(Subcommand)]
enum WeightsCommand {
    /// Write a deterministic random checkpoint with exactly the MODEL_SPEC tensor names and
    /// the TAE decoder's (`decoder.*`, TAE_SPEC).
    Init {
        #[arg(long, default_value = "tiny")]
        profile: String,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        #[arg(long, default_value = "f16")]
        dtype: DType,
        #[arg(long, short)]
        out: PathBuf,
    },
}

#[derive(Subcommand)]
enum ProfilesCommand {
    /// List the built-in profiles.
    List,
    /// Print a profile (built-in name or TOML path) as TOML.
    Show { profile: String },
}

fn parse_prompt_at(s: &str) -> std::result::Result<(u64, String), String> {
    let (frame, prompt) = s
        .split_once(':')
        .ok_or_else(|| format!("expected FRAME:PROMPT, found `{s}`"))?;
    let frame = frame
        .trim()
        .parse()
        .map_err(|_| format!("expected a video frame number before `:`, found `{frame}`"))?;
    Ok((frame, prompt.to_string()))
}

fn generate(args: GenerateArgs) -> Result<()> {
    let t0 = Instant::now();
    let engine = args.model.engine()?;
    let profile = engine.profile().clone();
    let text = match &args.text_embeddings {
        Some(path) => Some(load_text_embeddings(
            path,
            profile.model.text_len,
            profile.model.text_dim,
        )?),
        None => None,
    };
    let mut stream = engine.stream(StreamParams {
        prompt: args.prompt.clone(),
        negative_prompt: args.negative_prompt.clone(),
        seed: args.seed,
        guidance: args.guidance,
        text,
        decoder: if args.preview {
            DecoderKind::Preview
        } else {
            DecoderKind::Tae
        },
    })?;
    let fps = profile.video.fps;
    let total = match (args.frames, args.seconds) {
        (Some(f), _) => f,
        (None, Some(s)) if s.is_finite() && s > 0.0 => (s * fps).ceil() as u64,
        (None, Some(s)) => {
            return Err(Error::Invalid(format!(
                "--seconds: expected a positive number, found {s}"
            )))
        }
        (None, None) => 4 * stream.frames_per_chunk() as u64,
    };
    let (w, h) = stream.frame_size();
    let mut sink = open_sink(&args.out, w, h, fps)?;
    let mut schedule = args.prompt_at.clone();
    schedule.sort_by_key(|(f, _)| *f);
    let mut schedule = schedule.into_iter().peekable();
    let setup = t0.elapsed();

    let start = Instant::now();
    let mut first_chunk = None;
    let mut written = 0u64;
    let mut frames = Vec::new();
    while written < total {
        while let Some((_, prompt)) = schedule.next_if(|(at, _)| *at <= written) {
            eprintln!("\nstreamdit: prompt switch at frame {written}: {prompt:?}");
            stream.set_prompt(&prompt);
        }
        frames.clear();
        let n = stream.next_frames(&mut frames)?;
        first_chunk.get_or_insert(start.elapsed());
        for frame in frames.chunks(w * h * 3).take((total - written) as usize) {
            sink.write_frame(frame)?;
        }
        written += n as u64;
        let secs = start.elapsed().as_secs_f64();
        eprint!(
            "\rstreamdit: {:>6}/{total} frames  {:>4} calls  {:7.1} FPS",
            written.min(total),
            stream.calls(),
            written as f64 / secs
        );
    }
    sink.finish()?;
    let secs = start.elapsed().as_secs_f64();
    let first = first_chunk.unwrap_or_default().as_secs_f64();
    let steady_frames = written.saturating_sub(stream.frames_per_chunk() as u64);
    let steady = if steady_frames > 0 && secs > first {
        format!("{:.1} FPS steady", steady_frames as f64 / (secs - first))
    } else {
        "steady state not reached".to_string()
    };
    eprintln!(
        "\nstreamdit: wrote {} frames ({w}x{h}, {fps} FPS video) to {} in {secs:.2} s: {:.1} FPS overall, {steady}; \
         first frame after {first:.3} s ({} calls); setup {:.2} s; backend {}",
        written.min(total),
        args.out,
        written as f64 / secs,
        stream.calls_to_first_chunk(),
        setup.as_secs_f64(),
        stream.backend_name()
    );
    Ok(())
}

fn decode(args: DecodeArgs) -> Result<()> {
    use streamdit::decoder::{Decoder, TaeDecoder};
    use streamdit::model::checkpoint::Weights;
    use streamdit::model::tae::TaeGraph;

    let profile = Profile::load(&args.profile)?;
    let m = &profile.model;
    let (c, h, w) = (m.latent_channels, m.latent_height, m.latent_width);
    let latents = checkpoint::read_tensors(&args.latents)?
        .remove("latents")
        .ok_or_else(|| Error::Tensor {
            path: args.latents.display().to_string(),
            tensor: "latents".into(),
            expected: format!("shape [T, {c}, {h}, {w}]"),
            found: "no such tensor".into(),
        })?;
    let frames = match latents.shape[..] {
        [t, cc, hh, ww] if t > 0 && (cc, hh, ww) == (c, h, w) => t,
        _ => {
            return Err(Error::Tensor {
                path: args.latents.display().to_string(),
                tensor: "latents".into(),
                expected: format!("shape [T, {c}, {h}, {w}] with T >= 1"),
                found: format!("shape {:?}", latents.shape),
            })
        }
    };
    let chunk = args.chunk.unwrap_or(profile.stream.chunk_frames);
    if chunk == 0 {
        return Err(Error::Invalid(
            "--chunk: expected at least 1 latent frame".into(),
        ));
    }
    let weights = match &args.weights {
        Some(path) => Weights::load_decoder(path, &profile.decoder, c)?,
        None => Weights::random_decoder(
            &profile.decoder,
            c,
            args.random_weights.unwrap_or(0),
            args.dtype,
        )?,
    };
    let mut decoder = TaeDecoder::new(TaeGraph::new(&profile.decoder, c, h, w)?, &weights)?;
    let (fw, fh) = decoder.frame_size();
    let mut sink = open_sink(&args.out, fw, fh, profile.video.fps)?;
    let start = Instant::now();
    let mut rgb = Vec::new();
    let elems = c * h * w;
    for part in latents.data.chunks(chunk * elems) {
        rgb.clear();
        decoder.decode(part, &mut rgb)?;
        for frame in rgb.chunks(fw * fh * 3) {
            sink.write_frame(frame)?;
        }
    }
    sink.finish()?;
    let secs = start.elapsed().as_secs_f64();
    eprintln!(
        "streamdit: decoded {frames} latent frames into {} frames ({fw}x{fh}) to {} in {secs:.2} s \
         ({:.1} ms per latent frame, {chunk} per call, CPU f32)",
        frames * decoder.frames_per_latent(),
        args.out,
        secs * 1e3 / frames as f64
    );
    Ok(())
}

fn forward(args: ForwardArgs) -> Result<()> {
    let engine = args.model.engine()?;
    let m = engine.profile().model.clone();
    let mut tensors = checkpoint::read_tensors(&args.input)?;
    let path = args.input.display().to_string();
    let mut take = |name: &str, shape: &[usize]| -> Result<Vec<f32>> {
        let t = tensors.remove(name).ok_or_else(|| Error::Tensor {
            path: path.clone(),
            tensor: name.into(),
            expected: format!("shape {shape:?}"),
            found: "no such tensor".into(),
        })?;
        if t.shape != shape {
            return Err(Error::Tensor {
                path: path.clone(),
                tensor: name.into(),
                expected: format!("shape {shape:?}"),
                found: format!("shape {:?}", t.shape),
            });
        }
        Ok(t.data)
    };
    let frame_shape = [
        m.latent_frames,
        m.latent_channels,
        m.latent_height,
        m.latent_width,
    ];
    let x = take("x", &frame_shape)?;
    let tau = take("tau", &[m.latent_frames])?;
    let cond = text::TextInput {
        text: streamdit::Tensor::new(
            vec![m.text_len, m.text_dim],
            take("text", &[m.text_len, m.text_dim])?,
        )?,
        mask: take("text_mask", &[m.text_len])?,
    };
    let mut backend = engine.create_backend(args.guidance)?;
    let negative = if backend.graph().batch == 2 {
        Some(match take("negative_text", &[m.text_len, m.text_dim]) {
            Ok(t) => text::TextInput {
                text: streamdit::Tensor::new(vec![m.text_len, m.text_dim], t)?,
                mask: take("negative_text_mask", &[m.text_len])?,
            },
            Err(_) => engine.encode_prompt("")?,
        })
    } else {
        None
    };
    let branches: Vec<&text::TextInput> = std::iter::once(&cond).chain(&negative).collect();
    let (text, mask) = text::stack(&branches);
    backend.set_text(&text, &mask)?;
    let mut v = vec![0.0; x.len()];
    let t = Instant::now();
    backend.forward(&x, &tau, &mut v)?;
    eprintln!(
        "streamdit: model call in {:.1} ms on {}",
        t.elapsed().as_secs_f64() * 1e3,
        backend.name()
    );
    let v = streamdit::Tensor::new(frame_shape.to_vec(), v)?;
    checkpoint::write_tensors(&args.out, &[("v", &v)], DType::F32)
}

fn plan(args: PlanArgs) -> Result<()> {
    use serde_json::{json, Value};
    use streamdit::model::graph::Graph;
    use streamdit::model::plan::{
        lifetimes_fused, op_kind, video_frames_per_call, CostSum, GpuSpec, GraphCost, ListCost,
        MemoryPlan, OpClass, OpList, ParamCount, Prediction, ALIGNMENT,
    };

    let profile = Profile::load(&args.profile)?;
    let guidance = args.guidance.unwrap_or(profile.run.guidance);
    let gpu = args.gpu.as_deref().map(GpuSpec::by_key).transpose()?;
    let graph = Graph::build(&profile.model, guidance);
    let cost = GraphCost::of(&graph);
    // The plan of the CUDA backend: ops it runs in one launch share one liveness step.
    let fusion = streamdit::backend::cuda::lower::fusion(&graph);
    let mem = MemoryPlan::build_fused(&graph, &fusion);
    mem.verify_fused(&graph, &fusion)
        .map_err(|e| Error::Invalid(format!("memory plan: {e}")))?;
    let params = ParamCount::of(&graph);
    let frames = video_frames_per_call(&profile);
    let prediction = gpu
        .map(|g| Prediction::new(g, &cost, frames, args.efficiency))
        .transpose()?;
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

    let decoder = decoder_plan::report(&profile, gpu, prediction.as_ref(), mem.peak_bytes())?;
    text.push_str(&decoder.ops);

    let ms = |ops: &[streamdit::model::plan::OpCost]| gpu.map(|g| g.list_seconds(ops) * 1e3);
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

    let stats = |s: streamdit::model::plan::ArenaStats| {
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
        "  persistent       {} (cross-attention K/V)",
        bytes(mem.persistent_bytes())
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
    if let Some(p) = &prediction {
        say!(
            text,
            "  roofline         {:.2} ms per call, {:.2} video FPS ({} frames per call)",
            p.seconds_per_call * 1e3,
            p.fps,
            p.video_frames_per_call
        );
        say!(
            text,
            "  {:<17}{:.2} ms per call, {:.2} video FPS",
            format!("at {:.0}% of it", p.efficiency * 100.0),
            p.seconds_per_call_at_efficiency * 1e3,
            p.fps_at_efficiency
        );
    }
    text.push_str(&decoder.totals);

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
                "prompt_ms": ms(&cost.prompt.ops),
            },
            "classes": classes_json,
            "ops": ops_json,
            "decoder": decoder.json,
            "tensors": tensors,
        });
        let json = serde_json::to_string_pretty(&report)
            .map_err(|e| Error::Invalid(format!("JSON report: {e}")))?;
        std::fs::write(path, json).map_err(|e| Error::io(path, e))?;
    }
    print_stdout(&text)
}

/// `1.234 GB (1.15 GiB)` or `1.234 MB (1.18 MiB)`.
fn fmt_bytes(b: u64) -> String {
    match b as f64 {
        b if b >= 1e9 => format!("{:.3} GB ({:.2} GiB)", b / 1e9, b / (1u64 << 30) as f64),
        b => format!("{:.3} MB ({:.2} MiB)", b / 1e6, b / (1u64 << 20) as f64),
    }
}

/// `128.000 TFLOP` or `1.234 GFLOP`.
fn fmt_flops(n: u64) -> String {
    match n as f64 {
        n if n >= 1e12 => format!("{:.3} TFLOP", n / 1e12),
        n => format!("{:.3} GFLOP", n / 1e9),
    }
}

/// `4.200 B` or `1.234 M`.
fn fmt_count(n: u64) -> String {
    match n as f64 {
        n if n >= 1e9 => format!("{:.3} B", n / 1e9),
        n => format!("{:.3} M", n / 1e6),
    }
}

/// Writes `text` to stdout; a reader that closed the pipe early (`| head`) is not an error.
fn print_stdout(text: &str) -> Result<()> {
    match std::io::stdout().lock().write_all(text.as_bytes()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(Error::io("stdout", e)),
        _ => Ok(()),
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Generate(args) => generate(args),
        Command::Forward(args) => forward(args),
        Command::Plan(args) => plan(args),
        Command::Decode(args) => decode(args),
        Command::Bench(args) => bench::bench(args),
        Command::Profile(args) => profile::profile(args),
        Command::Encode(args) => encode(args),
        Command::Serve(args) => serve::serve(args),
        Command::Weights {
            command:
                WeightsCommand::Init {
                    profile,
                    seed,
                    dtype,
                    out,
                },
        } => {
            let profile = Profile::load(&profile)?;
            let t = Instant::now();
            let bytes = checkpoint::write_random_profile_checkpoint(&profile, seed, dtype, &out)?;
            eprintln!(
                "streamdit: wrote {} ({} profile, seed {seed}, {dtype}): {:.1} MB in {:.1} s",
                out.display(),
                profile.name,
                bytes as f64 / 1e6,
                t.elapsed().as_secs_f64()
            );
            Ok(())
        }
        Command::Profiles {
            command: ProfilesCommand::List,
        } => {
            let mut text = String::new();
            for name in builtin_names() {
                let p = Profile::builtin(name)?;
                text += &format!("{name:<22} {}\n", p.description);
            }
            print_stdout(&text)
        }
        Command::Profiles {
            command: ProfilesCommand::Show { profile },
        } => print_stdout(&Profile::load(&profile)?.to_toml()),
    }
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("streamdit: error: {e}");
            ExitCode::FAILURE
        }
    }
}
