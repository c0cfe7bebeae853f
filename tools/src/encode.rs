//! `streamdit encode`: the text encoders alone.

use std::path::PathBuf;
use std::time::Instant;

use clap::Args;
use streamdit::conditioning as text;
use streamdit::{files, DType};
use streamdit::{Result, WeightsSource};

use crate::common::{load_profile, parse_text_dir};

#[derive(Args)]
pub(crate) struct EncodeArgs {
    /// A built-in profile name or a profile TOML file.
    #[arg(long, default_value = "tiny")]
    profile: String,
    /// A Hugging Face folder for text encoder NAME (repeatable): `--text-dir ul2=/models/ul2`.
    #[arg(long, value_name = "NAME=PATH", value_parser = parse_text_dir)]
    text_dir: Vec<(String, String)>,
    /// The DiT checkpoint holding the adapters `text_adapter.NAME.weight`; without it, the
    /// profile's own checkpoint (`run.weights`), else the random weights' adapters (seed
    /// `--random-weights`, default 0).
    #[arg(long, conflicts_with = "random_weights")]
    weights: Option<PathBuf>,
    #[arg(long, value_name = "SEED")]
    random_weights: Option<u64>,
    #[arg(long, default_value = "")]
    prompt: String,
    /// Output safetensors file.
    #[arg(long, required_unless_present = "write_folders")]
    out: Option<PathBuf>,
    /// Write each random (folder-less) encoder of the profile as a Hugging Face folder
    /// `DIR/NAME` (config.json, model.safetensors, tokenizer.json) and stop.
    #[arg(long, value_name = "DIR")]
    write_folders: Option<PathBuf>,
}

pub(crate) fn encode(args: EncodeArgs) -> Result<()> {
    let profile = load_profile(&args.profile, &args.text_dir)?;
    if let Some(dir) = &args.write_folders {
        for written in text::write_random_encoder_folders(&profile, dir)? {
            eprintln!("streamdit: wrote {written}");
        }
        return Ok(());
    }
    let source = match &args.weights {
        Some(path) => WeightsSource::File(path.clone()),
        None => WeightsSource::for_profile(&profile, args.random_weights, DType::F32)?,
    };
    let enc = text::text_encoders(&profile, &source)?;
    for n in enc.notes() {
        eprintln!("streamdit: {n}");
    }
    let t = Instant::now();
    let cond = enc.encode_uncached(&args.prompt)?;
    let secs = t.elapsed().as_secs_f64();
    let mask = streamdit::Tensor::new(vec![cond.mask.len()], cond.mask.clone())?;
    let out = args
        .out
        .as_deref()
        .unwrap_or(std::path::Path::new("text.safetensors"));
    files::write_tensors(
        out,
        &[("text", &cond.text), ("text_mask", &mask)],
        DType::F32,
    )?;
    let real = cond.mask.iter().filter(|&&v| v != 0.0).count();
    eprintln!(
        "streamdit: wrote {} (text {:?}, {real} real tokens): encoders took {:.1} ms",
        out.display(),
        cond.text.shape,
        secs * 1e3
    );
    Ok(())
}
