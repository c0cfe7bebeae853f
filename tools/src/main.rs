//! `streamdit`: generate video, run one model call, write random checkpoints, convert
//! PyTorch checkpoints, list profiles, plan, benchmark and profile.

/// Appends one formatted line, trailing spaces trimmed, to the report `out` being built
/// (reports are built in memory and printed at once).
macro_rules! say {
    ($out:expr, $($arg:tt)*) => {{
        $out.push_str(format!($($arg)*).trim_end());
        $out.push('\n');
    }};
}

mod bench;
mod bench_kernels;
mod bench_v2v;
mod common;
mod convert;
mod decode;
mod encode;
mod forward;
mod generate;
mod plan;
mod plan_decoder;
mod plan_video;
mod plan_wan;
mod plan_wan_encoder;
mod profile;
mod profile_wan;
mod profiles;
mod serve;
mod stats;
mod telemetry;
mod weights;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use streamdit::Result;

#[derive(Parser)]
#[command(
    name = "streamdit",
    version,
    about = "Streaming text-to-video inference engine: StreamDiT and the Wan2.1 streaming family"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Stream video from a prompt into a Y4M file, a PNG sequence or raw RGB24 on stdout.
    Generate(generate::GenerateArgs),
    /// Run one model call on tensors from a safetensors file and write `v`.
    Forward(forward::ForwardArgs),
    /// Decode latents (`latents [T, C, H, W]` in a safetensors file) to video with the TAE
    /// decoder on the CPU, chunk by chunk as a stream does.
    Decode(decode::DecodeArgs),
    /// Convert a PyTorch `.pt`/`.pth` checkpoint to safetensors (restricted unpickler:
    /// tensors and plain containers only), optionally keeping one subtree (`--prefix`).
    Convert(convert::ConvertArgs),
    /// Checkpoint tools.
    Weights {
        #[command(subcommand)]
        command: weights::WeightsCommand,
    },
    /// List or show run profiles.
    Profiles {
        #[command(subcommand)]
        command: profiles::ProfilesCommand,
    },
    /// The static graph op by op with FLOPs and bytes, the memory plan, and with `--gpu` a
    /// roofline prediction per op and per call. Needs no GPU.
    Plan(plan::PlanArgs),
    /// Time to first frame, steady-state FPS split by stage, per-call latency percentiles
    /// and jitter, memory and the configuration; `--json` adds the raw per-call series.
    Bench(bench::BenchArgs),
    /// One eager model call timed per op (CPU) or per launch (CUDA, emulator) with FLOPs,
    /// bytes and achieved rates; `--trace` writes a Chrome trace for Perfetto.
    Profile(profile::ProfileArgs),
    /// Run the profile's text encoders on a prompt and write `text` and `text_mask`
    /// (safetensors, f32), to compare with another implementation; `--write-folders DIR`
    /// writes the random encoders as Hugging Face folders instead.
    Encode(encode::EncodeArgs),
    /// Serve the stream live to a browser page (WebSocket, MJPEG) steered by prompts, with
    /// JSON endpoints for scripts.
    Serve(serve::ServeArgs),
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Generate(args) => generate::generate(args),
        Command::Forward(args) => forward::forward(args),
        Command::Plan(args) => plan::plan(args),
        Command::Decode(args) => decode::decode(args),
        Command::Bench(args) => bench::bench(args),
        Command::Profile(args) => profile::profile(args),
        Command::Encode(args) => encode::encode(args),
        Command::Convert(args) => convert::convert(args),
        Command::Serve(args) => serve::serve(args),
        Command::Weights { command } => weights::weights(command),
        Command::Profiles { command } => profiles::profiles(command),
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
