//! `streamdit decode`: a profile's decoder alone (StreamDiT's TAE decoder, a Wan profile's
//! TAEHV or Wan VAE), chunk by chunk as a stream decodes.

use std::path::PathBuf;
use std::time::Instant;

use clap::Args;
use streamdit::sink::open_sink;
use streamdit::{files, DType};
use streamdit::{Decoder, DecoderKind, Error, Family, Profile, Result, WanDecoder, WeightsSource};

#[derive(Args)]
pub(crate) struct DecodeArgs {
    /// A built-in profile name or a profile TOML file (its decoder and latent size).
    #[arg(long, default_value = "tiny")]
    profile: String,
    /// The decoder's checkpoint: a safetensors file with the `decoder.*` tensors (StreamDiT),
    /// or a Wan profile's TAEHV or Wan VAE checkpoint (safetensors or a `torch.save` `.pth`:
    /// `taew2_1.pth`, `Wan2.1_VAE.pth`); without it, deterministic random weights are used.
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
    /// Wan family: `taehv` or `wan-vae` (default: the profile's `wan.decoder`).
    #[arg(long, value_name = "taehv|wan-vae")]
    decoder: Option<DecoderKind>,
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
        None => WeightsSource::for_profile(&profile, args.random_weights, args.dtype)?,
    };
    let mut decoder: Box<dyn Decoder> = if profile.family == Family::Wan {
        let wan = profile.wan()?;
        let kind = match args.decoder {
            None | Some(DecoderKind::Tae) => wan.decoder,
            Some(DecoderKind::Taehv) => WanDecoder::Taehv,
            Some(DecoderKind::WanVae) => WanDecoder::WanVae,
            Some(DecoderKind::Preview) => WanDecoder::Preview,
        };
        if kind == WanDecoder::Preview {
            return Err(Error::Invalid(format!(
                "--decoder: profile `{}` asks for the preview, which `decode` does not run; \
                 choose taehv or wan-vae",
                profile.name
            )));
        }
        let file = args
            .weights
            .clone()
            .or_else(|| wan.decoder_weights.as_ref().map(PathBuf::from));
        let weights = streamdit::wan_decoder_weights(
            &profile,
            kind,
            file.as_deref(),
            args.random_weights.unwrap_or(0),
            args.dtype,
        )?;
        streamdit::wan_decoder(&profile, kind, &weights)?
    } else {
        if let Some(d) = args.decoder.filter(|&d| d != DecoderKind::Tae) {
            return Err(Error::Invalid(format!(
                "--decoder {d:?}: profile `{}` is of the StreamDiT family; `decode` runs its TAE decoder",
                profile.name
            )));
        }
        Box::new(streamdit::tae_decoder(&profile, &source)?)
    };
    let (fw, fh) = decoder.frame_size();
    let mut sink = open_sink(&args.out, fw, fh, profile.video.fps)?;
    let start = Instant::now();
    let mut rgb = Vec::new();
    let elems = c * h * w;
    let mut written = 0usize;
    for part in latents.data.chunks(chunk * elems) {
        rgb.clear();
        decoder.decode(part, &mut rgb)?;
        for frame in rgb.chunks(fw * fh * 3) {
            sink.write_frame(frame)?;
            written += 1;
        }
    }
    sink.finish()?;
    let secs = start.elapsed().as_secs_f64();
    eprintln!(
        "streamdit: decoded {frames} latent frames into {} frames ({fw}x{fh}) to {} in {secs:.2} s \
         ({:.1} ms per latent frame, {:.1} ms per video frame, {chunk} per call, CPU f32)",
        written,
        args.out,
        secs * 1e3 / frames as f64,
        secs * 1e3 / written.max(1) as f64
    );
    Ok(())
}
