//! `streamdit convert`: a PyTorch `.pt`/`.pth` checkpoint (a `torch.save` zip) to
//! safetensors, read by the engine's restricted unpickler (tensors and plain containers
//! only; any other global or opcode is a named error, never code execution).

use std::path::PathBuf;
use std::time::Instant;

use clap::Args;
use streamdit::files::{convert as convert_pt, ConvertOptions};
use streamdit::Result;

use crate::common::print_stdout;

#[derive(Args)]
pub(crate) struct ConvertArgs {
    /// The `.pt`/`.pth` checkpoint.
    input: PathBuf,
    /// The safetensors file to write.
    output: PathBuf,
    /// Keep only the tensors whose dotted name starts with this prefix, and strip it: e.g.
    /// `generator_ema.model.` for Self-Forcing's EMA generator, `generator_lora.` for
    /// LongLive's LoRA. Nested dicts are flattened with dots.
    #[arg(long, value_name = "P")]
    prefix: Option<String>,
    /// List every tensor written (name, dtype, shape).
    #[arg(long)]
    list: bool,
}

pub(crate) fn convert(args: ConvertArgs) -> Result<()> {
    let t = Instant::now();
    let report = convert_pt(
        &args.input,
        &args.output,
        &ConvertOptions {
            prefix: args.prefix.clone(),
        },
    )?;
    if args.list {
        let mut text = String::new();
        for (name, dtype, shape) in &report.tensors {
            say!(text, "{name}\t{dtype:?}\t{shape:?}");
        }
        print_stdout(&text)?;
    }
    for (name, kind) in &report.skipped {
        eprintln!("streamdit: skipped `{name}` ({kind}, not a tensor)");
    }
    eprintln!(
        "streamdit: wrote {} tensors ({:.1} MB) to {} in {:.1} s{}",
        report.tensors.len(),
        report.data_bytes as f64 / 1e6,
        args.output.display(),
        t.elapsed().as_secs_f64(),
        if report.filtered_out > 0 {
            format!("; {} outside the prefix left out", report.filtered_out)
        } else {
            String::new()
        }
    );
    Ok(())
}
