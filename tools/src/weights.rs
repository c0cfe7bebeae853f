//! `streamdit weights`: checkpoint tools.

use std::path::PathBuf;
use std::time::Instant;

use clap::Subcommand;
use streamdit::{files, DType};
use streamdit::{Profile, Result};

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
            out,
        } => {
            let profile = Profile::load(&profile)?;
            let t = Instant::now();
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
