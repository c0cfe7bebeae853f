//! What several commands share: the model options (`--profile`, `--weights`,
//! `--backend`, ...), loading a profile with its text folders, and number formatting.

use std::io::Write;
use std::path::PathBuf;

use clap::Args;
use streamdit::DType;
use streamdit::{
    BackendKind, Engine, EngineParams, Error, LoraConfig, Profile, Result, WeightsSource,
};

/// `NAME=PATH` of `--text-dir`.
pub(crate) fn parse_text_dir(s: &str) -> std::result::Result<(String, String), String> {
    let (name, path) = s
        .split_once('=')
        .ok_or_else(|| format!("expected NAME=PATH, found `{s}`"))?;
    Ok((name.to_string(), path.to_string()))
}

/// Loads a profile and points its text encoders at the folders given on the command line.
pub(crate) fn load_profile(name: &str, text_dirs: &[(String, String)]) -> Result<Profile> {
    let mut profile = Profile::load(name)?;
    for (enc, dir) in text_dirs {
        profile.text.set_dir(enc, dir)?;
    }
    Ok(profile)
}

#[derive(Args)]
pub(crate) struct ModelArgs {
    /// A built-in profile name or a profile TOML file.
    #[arg(long, default_value = "tiny")]
    pub(crate) profile: String,
    /// A safetensors checkpoint; without it, the profile's own checkpoint (`run.weights`),
    /// else deterministic random weights.
    #[arg(long, conflicts_with = "random_weights")]
    pub(crate) weights: Option<PathBuf>,
    /// Seed of the random weights (the same values `weights init` writes).
    #[arg(long, value_name = "SEED")]
    pub(crate) random_weights: Option<u64>,
    /// Precision the random weights are rounded to.
    #[arg(long, default_value = "f16")]
    pub(crate) dtype: DType,
    /// auto, cpu, cuda or emu.
    #[arg(long, default_value = "auto")]
    pub(crate) backend: BackendKind,
    /// A Hugging Face folder for text encoder NAME (repeatable): `--text-dir ul2=/models/ul2`.
    #[arg(long, value_name = "NAME=PATH", value_parser = parse_text_dir)]
    pub(crate) text_dir: Vec<(String, String)>,
    /// Where the text encoders' linear layers run: `cpu` (default: no GPU memory) or
    /// `backend` (the model's cuda/emu device, FP16 GEMM kernel; attention stays on the CPU).
    #[arg(long, value_name = "cpu|backend")]
    pub(crate) text_device: Option<String>,
    /// Wan family: a LoRA (safetensors of PEFT factors, e.g. LongLive's `lora.pt` after
    /// `streamdit convert --prefix generator_lora.`) merged into the weights at load; rank
    /// and alpha from the profile's `[wan.lora]` or `--lora-rank`/`--lora-alpha`.
    #[arg(long, value_name = "F")]
    pub(crate) lora: Option<PathBuf>,
    /// The LoRA's rank (overrides the profile's).
    #[arg(long, requires = "lora")]
    pub(crate) lora_rank: Option<usize>,
    /// The LoRA's alpha (overrides the profile's; the merge scales by alpha / rank).
    #[arg(long, requires = "lora")]
    pub(crate) lora_alpha: Option<f32>,
}

impl ModelArgs {
    pub(crate) fn engine(&self) -> Result<Engine> {
        let mut profile = load_profile(&self.profile, &self.text_dir)?;
        if let Some(d) = &self.text_device {
            profile.text.device = Some(d.clone());
            profile.validate()?;
        }
        if let Some(file) = &self.lora {
            set_lora(&mut profile, file, self.lora_rank, self.lora_alpha)?;
        }
        let weights = match &self.weights {
            Some(path) => WeightsSource::File(path.clone()),
            None => WeightsSource::for_profile(&profile, self.random_weights, self.dtype)?,
        };
        let engine = Engine::new(EngineParams {
            profile,
            weights,
            backend: self.backend,
        })?;
        let (kind, why) = engine.backend_choice();
        eprintln!("streamdit: backend {kind:?} ({why})");
        for n in engine.weight_notes().iter().chain(engine.text_notes()) {
            eprintln!("streamdit: {n}");
        }
        Ok(engine)
    }
}

/// Points a Wan profile's LoRA at `file`, with rank and alpha from the arguments or the
/// profile's `[wan.lora]`.
fn set_lora(
    profile: &mut Profile,
    file: &std::path::Path,
    rank: Option<usize>,
    alpha: Option<f32>,
) -> Result<()> {
    let name = profile.name.clone();
    let wan = profile.wan.as_mut().ok_or_else(|| {
        Error::Invalid(format!(
            "--lora: profile `{name}` is not of the wan family (a LoRA merges into Wan weights)"
        ))
    })?;
    let (rank, alpha) = match (&wan.lora, rank, alpha) {
        (_, Some(r), Some(a)) => (r, a),
        (Some(l), r, a) => (r.unwrap_or(l.rank), a.unwrap_or(l.alpha)),
        (None, _, _) => {
            return Err(Error::Invalid(format!(
                "--lora: profile `{name}` has no [wan.lora] section; give --lora-rank and \
                 --lora-alpha"
            )))
        }
    };
    wan.lora = Some(LoraConfig {
        rank,
        alpha,
        file: Some(file.display().to_string()),
    });
    profile.validate()
}

/// `1.234 GB (1.15 GiB)` or `1.234 MB (1.18 MiB)`.
pub(crate) fn fmt_bytes(b: u64) -> String {
    match b as f64 {
        b if b >= 1e9 => format!("{:.3} GB ({:.2} GiB)", b / 1e9, b / (1u64 << 30) as f64),
        b => format!("{:.3} MB ({:.2} MiB)", b / 1e6, b / (1u64 << 20) as f64),
    }
}

/// `128.000 TFLOP` or `1.234 GFLOP`.
pub(crate) fn fmt_flops(n: u64) -> String {
    match n as f64 {
        n if n >= 1e12 => format!("{:.3} TFLOP", n / 1e12),
        n => format!("{:.3} GFLOP", n / 1e9),
    }
}

/// `4.200 B` or `1.234 M`.
pub(crate) fn fmt_count(n: u64) -> String {
    match n as f64 {
        n if n >= 1e9 => format!("{:.3} B", n / 1e9),
        n => format!("{:.3} M", n / 1e6),
    }
}

/// Writes `text` to stdout; a reader that closed the pipe early (`| head`) is not an error.
pub(crate) fn print_stdout(text: &str) -> Result<()> {
    match std::io::stdout().lock().write_all(text.as_bytes()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(Error::io("stdout", e)),
        _ => Ok(()),
    }
}
