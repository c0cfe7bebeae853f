//! `streamdit generate`: stream video from a prompt into a file or a pipe; with
//! `--input-video`, edit an input video (video-to-video, docs/streamdit.md section 5).

use std::path::PathBuf;
use std::time::Instant;

use clap::Args;
use streamdit::conditioning::load_text_embeddings;
use streamdit::sink::open_sink;
use streamdit::source::{fit_frame, open_source, FrameSource};
use streamdit::{DecoderKind, Error, Result, Stream, StreamParams};

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
    /// Video-to-video: edit this video with the prompt. A `.y4m` file (8-bit 4:2:0 or
    /// 4:4:4), `-` for Y4M on stdin (raw RGB24 with --input-size), or a folder of PNG
    /// frames. Any size: scaled to cover the profile's frame and centre-cropped. Output
    /// frame f is an edit of input frame f; without --frames the whole input is edited:
    /// exactly as many frames as it has. An input that ends inside a chunk (or inside a
    /// group of 4 frames) is finished by repeating its last frame, and the edits of the
    /// repeated frames are not written (said on stderr).
    #[arg(long, value_name = "F.y4m|-|DIR")]
    input_video: Option<String>,
    /// Video-to-video strength in (0, 1]: 1 ignores the input (text-to-video), smaller
    /// keeps more of it.
    #[arg(long, requires = "input_video", default_value_t = 0.6)]
    strength: f32,
    /// Video-to-video, Wan family: adaptive noise (StreamDiffusionV2's motion-aware noise,
    /// docs/wan.md "Adaptive noise"): from the second chunk on, each chunk starts at its own
    /// noise level, up to 0.1 below --strength as its input frames move more.
    #[arg(long, requires = "input_video")]
    adaptive_noise: bool,
    /// The input is raw RGB24 frames of this size (`WxH`), from a file or stdin.
    #[arg(long, value_name = "WxH", requires = "input_video", value_parser = parse_size)]
    input_size: Option<(usize, usize)>,
}

pub(crate) fn parse_size(s: &str) -> std::result::Result<(usize, usize), String> {
    let bad = || format!("expected WIDTHxHEIGHT such as 640x360, found `{s}`");
    let (w, h) = s.split_once(['x', 'X']).ok_or_else(bad)?;
    let (w, h) = (
        w.trim().parse().map_err(|_| bad())?,
        h.trim().parse().map_err(|_| bad())?,
    );
    if w == 0 || h == 0 {
        return Err(bad());
    }
    Ok((w, h))
}

/// The input video of video-to-video, fitted to the stream's frame size. When it ends the
/// stream is told (`Stream::end_input`): it repeats the last frame where it still needs
/// input and writes exactly as many frames as were read (said once on stderr).
struct Input {
    source: Box<dyn FrameSource>,
    raw: Vec<u8>,
    /// Frames read from the input.
    read: u64,
    ended: bool,
}

impl Input {
    /// Pushes what the next chunk needs, and ends the stream's input when the source ends.
    fn feed(&mut self, stream: &mut Stream) -> Result<()> {
        let target = stream.frame_size();
        while !self.ended && stream.input_frames_needed() > 0 {
            if self.source.read_frame(&mut self.raw)? {
                let (sw, sh) = self.source.size();
                let fitted = fit_frame(&self.raw, sw, sh, target.0, target.1);
                stream.push_video_frames(&fitted)?;
                self.read += 1;
                continue;
            }
            self.ended = true;
            if self.read == 0 {
                return Err(Error::Invalid(format!(
                    "input video `{}`: holds no frames",
                    self.source.name()
                )));
            }
            let end = stream.end_input()?;
            eprintln!("\nstreamdit: {end}");
        }
        Ok(())
    }
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
    let params = StreamParams {
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
    };
    let mut input = match &args.input_video {
        Some(spec) => Some(Input {
            source: open_source(spec, args.input_size)?,
            raw: Vec::new(),
            read: 0,
            ended: false,
        }),
        None => None,
    };
    let mut stream = match &input {
        Some(_) => engine.video_stream(params, args.strength)?,
        None => engine.stream(params)?,
    };
    if args.adaptive_noise {
        stream.set_adaptive_noise()?;
    }
    if let Some(input) = &input {
        let (sw, sh) = input.source.size();
        let (tw, th) = stream.frame_size();
        let lag = if profile.family == streamdit::Family::Wan {
            // The chunk's input is encoded before the chunk starts: a whole chunk of input
            // frames is held before its output appears.
            format!(
                "each chunk of {} input video frames is encoded, then edited into its output chunk",
                stream.input_frames_needed()
            )
        } else {
            format!(
                "output frame f edits input frame f, {} frames later (the buffer holds {} video \
                 frames)",
                stream.input_frames_needed(),
                stream.input_frames_needed()
            )
        };
        eprintln!(
            "streamdit: video-to-video from `{}` ({sw}x{sh}{}), strength {}{}; {lag}",
            input.source.name(),
            if (sw, sh) == (tw, th) {
                String::new()
            } else {
                format!(", scaled to cover {tw}x{th} and centre-cropped")
            },
            args.strength,
            if args.adaptive_noise {
                " with adaptive noise"
            } else {
                ""
            },
        );
    }
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
        // Video-to-video edits the whole input unless told otherwise.
        (None, None) if input.is_some() => u64::MAX,
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
    // Adaptive noise: the lowest and highest level a chunk started at.
    let mut levels: Option<(f64, f64)> = None;
    while written < total {
        while let Some((_, prompt)) = schedule.next_if(|(at, _)| *at <= written) {
            eprintln!("\nstreamdit: prompt switch at frame {written}: {prompt:?}");
            stream.set_prompt(&prompt);
        }
        if let Some(input) = input.as_mut() {
            input.feed(&mut stream)?;
        }
        frames.clear();
        // 0 once a video-to-video input ended and its last frame's edit was written.
        let n = stream.next_frames(&mut frames)?;
        if n == 0 {
            break;
        }
        first_chunk.get_or_insert(start.elapsed());
        if let (true, Some(l)) = (args.adaptive_noise, stream.chunk_noise_level()) {
            levels = Some(levels.map_or((l, l), |(lo, hi): (f64, f64)| (lo.min(l), hi.max(l))));
        }
        for frame in frames.chunks(w * h * 3).take((total - written) as usize) {
            sink.write_frame(frame)?;
        }
        written += n as u64;
        if written >= total {
            written = total;
            break;
        }
        let secs = start.elapsed().as_secs_f64();
        let of = if total == u64::MAX {
            "?".to_string()
        } else {
            total.to_string()
        };
        eprint!(
            "\rstreamdit: {:>6}/{of} frames  {:>4} calls  {:7.1} FPS",
            written.min(total),
            stream.calls(),
            written as f64 / secs
        );
    }
    sink.finish()?;
    let secs = start.elapsed().as_secs_f64();
    if let Some((lo, hi)) = levels {
        eprintln!("\nstreamdit: adaptive noise: chunks started at noise levels {lo:.4} to {hi:.4}");
    }
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
    let repeated = stream.input_frames_repeated();
    if repeated > 0 {
        eprintln!(
            "\nstreamdit: the last input frame was repeated {repeated} times to fill the last chunk"
        );
    }
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
