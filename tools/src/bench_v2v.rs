//! `streamdit bench`'s video-to-video part (`--input-video F` or `--strength S`): a second
//! stream of the same engine edits an input video, and the report gains the latency from
//! an input frame pushed to its edited frame decoded, and the time and FPS of each stage
//! (the encoder, TAE for StreamDiT and TAEHV or, with the Wan VAE decoder, the Wan VAE's own
//! for the Wan family, the DiT, the decoder).
//!
//! Input frames are pushed when the stream asks for them (`Stream::input_frames_needed`),
//! as fast as the machine computes: the latency is the pipeline's own, a live camera adds
//! its wait for frames. Output frame `f` edits input frame `f` (counted as frames come out,
//! so a Wan decoder's shorter first chunk is accounted). StreamDiT's buffer holds `B * 4`
//! video frames of look-ahead, so even an infinitely fast machine shows at least the
//! buffer's worth of frames between a frame in and its edit out. A Wan chunk starts only
//! once its own `4c` input frames are encoded (the KV cache holds earlier chunks, there is
//! no look-ahead beyond the chunk): a frame waits for the rest of its chunk's input (a
//! camera's `4c - 1` frame times at most), then the chunk's denoising calls, its commit
//! into the cache and the decode; with TAEHV's start-up the first chunk gives `4c - 3`.

use std::time::Instant;

use clap::Args;
use serde_json::{json, Value};
use streamdit::source::{fit_frame, open_source, FrameSource};
use streamdit::{Engine, Error, Family, Result, StreamParams};

use crate::stats::{mean, percentile};

#[derive(Args, Clone)]
pub struct V2vArgs {
    /// Also measure video-to-video on this input: a `.y4m` file, `-` (Y4M on stdin, raw
    /// RGB24 with --input-size) or a folder of PNG frames; fitted to the profile's frame.
    /// Without it, --strength alone measures on a synthetic input (moving stripes and noise).
    #[arg(long, value_name = "F.y4m|-|DIR")]
    pub input_video: Option<String>,
    /// Video-to-video strength in (0, 1] (default 0.6 when --input-video is given).
    #[arg(long)]
    pub strength: Option<f32>,
    /// The input is raw RGB24 frames of this size (`WxH`).
    #[arg(long, value_name = "WxH", requires = "input_video", value_parser = crate::generate::parse_size)]
    pub input_size: Option<(usize, usize)>,
}

impl V2vArgs {
    /// Whether the bench measures video-to-video.
    pub fn enabled(&self) -> bool {
        self.input_video.is_some() || self.strength.is_some()
    }

    /// Refuses a strength outside (0, 1] before anything is measured (the engine's rule).
    pub fn check(&self) -> Result<()> {
        match self.strength {
            Some(s) if !(s > 0.0 && s <= 1.0) => Err(Error::Invalid(format!(
                "--strength: expected a number in (0, 1] (1 ignores the input video), found {s}"
            ))),
            _ => Ok(()),
        }
    }
}

/// A generated input: stripes that move a pixel per frame plus uniform noise (a 64-bit LCG),
/// so the encoder sees structure and detail.
struct Synthetic {
    size: (usize, usize),
    t: usize,
    state: u64,
}

impl FrameSource for Synthetic {
    fn read_frame(&mut self, out: &mut Vec<u8>) -> Result<bool> {
        let (w, h) = self.size;
        out.clear();
        for y in 0..h {
            for x in 0..w {
                for c in 0..3 {
                    self.state = self
                        .state
                        .wrapping_mul(6_364_136_223_846_793_005)
                        .wrapping_add(1_442_695_040_888_963_407);
                    let noise = (self.state >> 59) as usize;
                    out.push(((x + self.t + 2 * y + 80 * c) % 224 + noise) as u8);
                }
            }
        }
        self.t += 1;
        Ok(true)
    }
    fn size(&self) -> (usize, usize) {
        self.size
    }
    fn name(&self) -> &str {
        "synthetic"
    }
}

/// Measures a video-to-video stream of `engine` for its first chunk and `chunks` more;
/// returns the report's text and its JSON object.
pub fn measure(
    engine: &Engine,
    params: StreamParams,
    args: &V2vArgs,
    graphs: Option<bool>,
    chunks: usize,
) -> Result<(String, Value)> {
    let strength = args.strength.unwrap_or(0.6);
    let wan = engine.profile().family == Family::Wan;
    let mut stream = engine.video_stream(params, strength)?;
    if let Some(on) = graphs {
        stream.set_graphs(on)?;
    }
    let (w, h) = stream.frame_size();
    let mut source: Box<dyn FrameSource> = match &args.input_video {
        Some(spec) => open_source(spec, args.input_size)?,
        None => Box::new(Synthetic {
            size: (w, h),
            t: 0,
            state: 1,
        }),
    };
    let input_name = match &args.input_video {
        Some(_) => format!("`{}`", source.name()),
        None => "synthetic (moving stripes and noise, no file)".to_string(),
    };
    let buffer_frames = stream.input_frames_needed();
    let per_chunk = stream.frames_per_chunk();
    let calls_per_chunk = stream.calls_to_first_chunk();
    // When each input frame was pushed, by frame index.
    let mut pushed_at: Vec<Instant> = Vec::new();
    let (mut raw, mut last): (Vec<u8>, Option<Vec<u8>>) = (Vec::new(), None);
    let (mut encode_s, mut dit_s, mut repeated) = (0.0f64, 0.0f64, 0u64);
    let (mut first_chunk, mut steady, mut decode_s) = (Vec::new(), Vec::new(), Vec::new());
    let mut out = Vec::new();
    let (mut emitted, mut written, mut first_frames) = (0usize, 0usize, 0usize);
    let start = Instant::now();
    while emitted < chunks + 1 {
        let need = stream.input_frames_needed();
        if need > 0 {
            let mut batch = Vec::with_capacity(need * w * h * 3);
            for _ in 0..need {
                // A file that ends repeats its last frame (the bench measures a steady
                // stream; `generate` ends the input instead).
                if source.read_frame(&mut raw)? {
                    let (sw, sh) = source.size();
                    last = Some(fit_frame(&raw, sw, sh, w, h));
                } else {
                    repeated += 1;
                }
                let frame = last.as_ref().ok_or_else(|| {
                    Error::Invalid(format!("input video {input_name}: holds no frames"))
                })?;
                batch.extend_from_slice(frame);
            }
            let t = Instant::now();
            stream.push_video_frames(&batch)?;
            encode_s += t.elapsed().as_secs_f64();
            pushed_at.resize(pushed_at.len() + need, t);
        }
        let t = Instant::now();
        let popped = stream.step()?;
        stream.synchronize()?;
        dit_s += t.elapsed().as_secs_f64();
        if popped {
            let t = Instant::now();
            out.clear();
            let n = stream.decode_chunk(&mut out)?;
            stream.synchronize()?;
            let done = Instant::now();
            decode_s.push((done - t).as_secs_f64());
            // Output frame f edits input frame f.
            let latencies = pushed_at[written..written + n]
                .iter()
                .map(|&p| (done - p).as_secs_f64());
            if emitted == 0 {
                first_frames = n;
                first_chunk.extend(latencies);
            } else {
                steady.extend(latencies);
            }
            written += n;
            emitted += 1;
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    let pushed = pushed_at.len();
    let encode_per_frame = encode_s / pushed.max(1) as f64;
    let ms = |s: f64| s * 1e3;
    let mut sorted = steady.clone();
    sorted.sort_by(f64::total_cmp);
    let (p50, max) = (percentile(&sorted, 50.0), sorted[sorted.len() - 1]);
    let steady_mean = mean(&steady).unwrap_or(0.0);
    let first_mean = mean(&first_chunk).unwrap_or(0.0);
    let output_frames = written;
    let encoder = stream.input_encoder_name().unwrap_or("none");
    // The Wan VAE encoder's first chunk takes 3 frames fewer (its first frame alone).
    let startup = stream.input_startup_frames();
    let (chunk_input, vae_first) = match startup {
        0 => (buffer_frames, String::new()),
        _ => (
            buffer_frames + startup,
            format!("; the first chunk {buffer_frames}, its first frame encoded alone"),
        ),
    };
    let (encoder, structure) = if wan {
        (
            encoder,
            format!(
                "a Wan chunk starts once its own {chunk_input} input frames are encoded (the KV \
                 cache holds earlier chunks, no look-ahead beyond the chunk{vae_first}): a frame \
                 waits for the rest of its chunk's input, then {calls_per_chunk} denoising calls per chunk \
                 at this strength, the commit into the cache and the decode; {per_chunk} frames \
                 per chunk, the first {first_frames} with the decoder's start-up"
            ),
        )
    } else {
        (
            encoder,
            format!(
                "the buffer holds {buffer_frames} input video frames (B * 4) before its first \
                 call, then takes {per_chunk} per chunk"
            ),
        )
    };
    let stage = |secs: f64| {
        (
            ms(secs / emitted as f64),
            output_frames as f64 / secs.max(f64::MIN_POSITIVE),
        )
    };
    let decode_total: f64 = decode_s.iter().sum();
    let stages = [
        (format!("encoder ({encoder})"), stage(encode_s)),
        (format!("DiT ({calls_per_chunk} calls)"), stage(dit_s)),
        ("decode".to_string(), stage(decode_total)),
        ("whole v2v run".to_string(), stage(seconds)),
    ];
    let mut text = String::new();
    say!(
        text,
        "\nvideo-to-video (strength {strength}; input {input_name}, {w}x{h} after fitting{})",
        if repeated > 0 {
            format!("; it ended, its last frame repeated {repeated} times")
        } else {
            String::new()
        }
    );
    say!(text,
        "  input frame in -> its output frame out: steady mean {:.3} ms, p50 {:.3} ms, max {:.3} ms over {} frames; first chunk {:.3} ms (prefill)",
        ms(steady_mean), ms(p50), ms(max), steady.len(), ms(first_mean)
    );
    say!(
        text,
        "  {structure}; frames pushed when the stream asks (no camera wait)"
    );
    say!(
        text,
        "  encoder ({encoder})  {:.3} ms per video frame ({:.2} FPS; {pushed} frames in {:.3} s)",
        ms(encode_per_frame),
        pushed as f64 / encode_s.max(f64::MIN_POSITIVE),
        encode_s
    );
    say!(
        text,
        "  {:<30} {:>14} {:>12}",
        "stage",
        "ms per chunk",
        "video FPS"
    );
    for (name, (per, fps)) in &stages {
        say!(text, "  {name:<30} {per:>14.3} {fps:>12.2}");
    }
    say!(
        text,
        "  whole v2v run: {output_frames} output frames in {seconds:.3} s ({:.2} FPS), decode {:.3} ms per chunk",
        output_frames as f64 / seconds,
        ms(mean(&decode_s).unwrap_or(0.0))
    );
    let stage_json = |(per, fps): (f64, f64)| json!({ "ms_per_chunk": per, "fps": fps });
    let report = json!({
        "family": if wan { "wan" } else { "streamdit" },
        "strength": strength,
        "input": input_name,
        "synthetic_input": args.input_video.is_none(),
        "input_repeated_frames": repeated,
        "frame_size": [w, h],
        "buffer_input_frames": buffer_frames,
        "frames_per_chunk": per_chunk,
        "calls_per_chunk": calls_per_chunk,
        "structure": structure,
        "latency_ms": {
            "mean": ms(steady_mean),
            "p50": ms(p50),
            "max": ms(max),
            "frames": steady.len(),
            "first_chunk_mean": ms(first_mean),
        },
        "encoder": {
            "name": encoder,
            "ms_per_frame": ms(encode_per_frame),
            "fps": pushed as f64 / encode_s.max(f64::MIN_POSITIVE),
            "frames": pushed,
            "seconds": encode_s,
        },
        "stages": {
            "encoder": stage_json(stages[0].1),
            "dit": stage_json(stages[1].1),
            "decode": stage_json(stages[2].1),
            "end_to_end": stage_json(stages[3].1),
        },
        "decode_ms_mean": mean(&decode_s).map(ms),
        "output_frames": output_frames,
        "seconds": seconds,
        "video_fps": output_frames as f64 / seconds,
        "basis": "input frames pushed when the stream asks for them; latency from the push \
                  (which encodes them) to the end of decoding the chunk holding the frame's edit; \
                  stage FPS = output frames / the stage's own seconds",
    });
    Ok((text, report))
}
