//! `streamdit generate`: stream video from a prompt into a file or a pipe.

use std::path::PathBuf;
use std::time::Instant;

use clap::Args;
use streamdit::conditioning::load_text_embeddings;
use streamdit::sink::open_sink;
use streamdit::{DecoderKind, Error, Result, StreamParams};

use crate::common::ModelArgs;

#[derive(Args)]
pub(crate) struct GenerateArgs {
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
    /// Video frames to write, at least 1: exactly this many (the last chunk's extra frames
    /// are dropped).
    #[arg(long, conflicts_with = "seconds", value_parser = clap::value_parser!(u64).range(1..))]
    frames: Option<u64>,
    /// Seconds of video to write.
    #[arg(long)]
    seconds: Option<f64>,
    /// Precomputed text condition replacing the prompt: `text [Lt, Dtxt]` and optionally
    /// `text_mask [Lt]` (all rows real without it). Conflicts with `--prompt`.
    #[arg(long, conflicts_with = "prompt")]
    text_embeddings: Option<PathBuf>,
    /// `out.y4m`, a directory (or `*.png`) for a PNG sequence, or `-` for raw RGB24 on stdout.
    #[arg(long, short, default_value = "streamdit.y4m")]
    out: String,
    /// Show the cheap latent preview instead of decoding with the profile's decoder (the
    /// same as `--decoder preview`).
    #[arg(long, conflicts_with = "decoder")]
    preview: bool,
    /// The decoder: `tae` (StreamDiT), `taehv` or `wan-vae` (Wan family), or `preview`;
    /// default: the profile's (`wan.decoder` for a Wan profile, TAEHV unless it says).
    #[arg(long, value_name = "taehv|wan-vae|tae|preview")]
    decoder: Option<DecoderKind>,
    /// Wan family: the decoder's checkpoint (`taew2_1.pth`/`.safetensors`, `Wan2.1_VAE.pth`,
    /// ...); default: the profile's `wan.decoder_weights`, else deterministic random weights.
    #[arg(long, value_name = "F")]
    decoder_weights: Option<PathBuf>,
    /// Golden-test hook: write every noise tensor the sampler drew and every finished
    /// chunk's clean latents to this safetensors file (f32). StreamDiT: `noise.{global
    /// frame}` `[C, H, W]`; Wan: `noise.{chunk}.{step}` `[c, C, H, W]` (step 0 the initial
    /// noise, step k the re-noise before step k); both: `chunk.{k}` `[c, C, H, W]`.
    #[arg(long, value_name = "F.safetensors")]
    trace: Option<PathBuf>,
    /// Debugging: check every op's output for NaN and infinity, so that a stream turning
    /// non-finite names the first op that produced one (slow; CPU backend).
    #[arg(long)]
    check_ops: bool,
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

pub(crate) fn generate(args: GenerateArgs) -> Result<()> {
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
        decoder: match (args.preview, args.decoder) {
            (true, _) => DecoderKind::Preview,
            (false, Some(d)) => d,
            (false, None) => DecoderKind::Tae,
        },
        decoder_weights: args.decoder_weights.clone(),
    })?;
    if args.trace.is_some() {
        stream.set_trace(true);
    }
    if args.check_ops {
        stream.set_check_ops(true)?;
    }
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
    if let Some((at, _)) = args.prompt_at.iter().find(|(at, _)| *at >= total) {
        return Err(Error::Invalid(format!(
            "--prompt-at {at}: the run writes {total} frames (0 to {}), so this prompt \
             switch would never happen",
            total.saturating_sub(1)
        )));
    }
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
    if let Some(path) = &args.trace {
        let trace = stream.take_trace();
        let refs: Vec<(&str, &streamdit::Tensor)> =
            trace.iter().map(|(n, t)| (n.as_str(), t)).collect();
        streamdit::files::write_tensors(path, &refs, streamdit::DType::F32)?;
        eprintln!(
            "\nstreamdit: wrote the trace ({} tensors) to {}",
            refs.len(),
            path.display()
        );
    }
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
