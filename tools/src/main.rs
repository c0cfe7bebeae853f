//! `streamdit`: generate video, run one model call, write random checkpoints, list profiles.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use clap::{Args, Parser, Subcommand};
use streamdit::model::checkpoint::{self, DType};
use streamdit::model::profile::builtin_names;
use streamdit::stream::sink::open_sink;
use streamdit::text::{self, load_text_embeddings};
use streamdit::{
    BackendKind, Engine, EngineParams, Error, Profile, Result, StreamParams, WeightsSource,
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
}

impl ModelArgs {
    fn engine(&self) -> Result<Engine> {
        let profile = Profile::load(&self.profile)?;
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

#[derive(Subcommand)]
enum WeightsCommand {
    /// Write a deterministic random checkpoint with exactly the MODEL_SPEC tensor names.
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

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Generate(args) => generate(args),
        Command::Forward(args) => forward(args),
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
            let bytes = checkpoint::write_random_checkpoint(&profile.model, seed, dtype, &out)?;
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
            for name in builtin_names() {
                let p = Profile::builtin(name)?;
                println!("{name:<22} {}", p.description);
            }
            Ok(())
        }
        Command::Profiles {
            command: ProfilesCommand::Show { profile },
        } => {
            print!("{}", Profile::load(&profile)?.to_toml());
            Ok(())
        }
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
