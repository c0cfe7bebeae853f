//! `streamdit decode`: the TAE decoder alone, chunk by chunk as a stream decodes.

use std::path::PathBuf;
use std::time::Instant;

use clap::Args;
use streamdit::sink::open_sink;
use streamdit::{files, DType};
use streamdit::{Decoder, Error, Profile, Result, WeightsSource};

#[derive(Args)]
pub(crate) struct DecodeArgs {
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

pub(crate) fn decode(args: DecodeArgs) -> Result<()> {
    let profile = Profile::load(&args.profile)?;
    let m = &profile.model;
    let (c, h, w) = (m.latent_channels, m.latent_height, m.latent_width);
    let latents = files::read_tensors(&args.latents)?
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
    let source = match &args.weights {
        Some(path) => WeightsSource::File(path.clone()),
        None => WeightsSource::Random {
            seed: args.random_weights.unwrap_or(0),
            dtype: args.dtype,
        },
    };
    let mut decoder = streamdit::tae_decoder(&profile, &source)?;
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
