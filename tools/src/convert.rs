//! `streamdit convert`: a PyTorch `torch.save` checkpoint (`.pt`, `.pth`) to safetensors,
//! read by the engine's restricted unpickler (tensors and plain containers only; anything
//! else is a named error, never code execution).

use std::path::PathBuf;

use clap::Args;
use streamdit::files::{convert_pt, ConvertOptions};
use streamdit::Result;

#[derive(Args)]
pub(crate) struct ConvertArgs {
    /// The `torch.save` zip archive to read.
    input: PathBuf,
    /// The safetensors file to write (each tensor in its original dtype, names sorted).
    out: PathBuf,
    /// Keep only the tensors whose dotted name starts with PREFIX, and strip it (for
    /// example `generator_ema.model.` for Self-Forcing's EMA weights).
    #[arg(long)]
    prefix: Option<String>,
}

pub(crate) fn convert(args: ConvertArgs) -> Result<()> {
    let report = convert_pt(
        &args.input,
        &args.out,
        &ConvertOptions {
            prefix: args.prefix,
        },
    )?;
    for (name, kind) in &report.skipped {
        eprintln!("streamdit: skipped `{name}` ({kind}, not a tensor)");
    }
    eprintln!(
        "streamdit: wrote {} ({} tensors, {:.1} MB; {} left out by the prefix)",
        args.out.display(),
        report.tensors.len(),
        report.data_bytes as f64 / 1e6,
        report.filtered_out
    );
    Ok(())
}
