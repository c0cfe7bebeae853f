//! `streamdit weights`: checkpoint tools.

use std::path::PathBuf;
use std::time::Instant;

use clap::Subcommand;
use streamdit::{files, DType};
use streamdit::{DecoderKind, Profile, Result, WanDecoder};

#[derive(Subcommand)]
pub(crate) enum WeightsCommand {
    /// Write a deterministic random checkpoint with exactly the docs/streamdit.md tensor names and
    /// the TAE decoder's (`decoder.*`, docs/tae.md).
    Init {
        #[arg(long, default_value = "tiny")]
        profile: String,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        #[arg(long, default_value = "f16")]
        dtype: DType,
        /// Wan family: write the random weights of this decoder (in its released names:
        /// taew2_1's, the original Wan VAE's) instead of the DiT's; a stream given none uses
        /// the same values (same seed and dtype).
        #[arg(long, value_name = "taehv|wan-vae")]
        decoder: Option<DecoderKind>,
        #[arg(long, short)]
        out: PathBuf,
    },
}

pub(crate) fn weights(command: WeightsCommand) -> Result<()> {
    match command {
        WeightsCommand::Init {
            profile,
            seed,
            dtype,
            decoder,
            out,
        } => {
            let profile = Profile::load(&profile)?;
            let t = Instant::now();
            if let Some(d) = decoder {
                let kind = match d {
                    DecoderKind::Taehv => WanDecoder::Taehv,
                    DecoderKind::WanVae => WanDecoder::WanVae,
                    DecoderKind::Tae => profile.wan()?.decoder,
                    DecoderKind::Preview => WanDecoder::Preview,
                };
                streamdit::write_random_wan_decoder(&profile, kind, seed, dtype, &out)?;
                eprintln!(
                    "streamdit: wrote the {} decoder's random weights of profile `{}` (seed {seed}, {dtype}) to {} in {:.1} s",
                    kind.name(),
                    profile.name,
                    out.display(),
                    t.elapsed().as_secs_f64()
                );
                return Ok(());
            }
            let bytes = files::write_random_profile_checkpoint(&profile, seed, dtype, &out)?;
            eprintln!(
                "streamdit: wrote {} ({} profile, seed {seed}, {dtype}): {:.1} MB in {:.1} s",
                out.display(),
                profile.name,
                bytes as f64 / 1e6,
                t.elapsed().as_secs_f64()
            );
            Ok(())
        }
    }
}
