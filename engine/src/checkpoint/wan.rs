//! Wan checkpoints (docs/wan.md sections 9 and 10): loading the network by its original
//! names from a file that may use the original or the diffusers names behind the prefixes
//! the released `.pt` files carry, in f32, bf16 or f16; merging a LoRA at load; the
//! deterministic random weights and the random checkpoint `weights init` writes.

use std::collections::BTreeMap;
use std::path::Path;

use rayon::prelude::*;

use super::file::write_file;
use super::lora::{merge, wan_lora_targets, LoraSpec, PEFT_PREFIX};
use super::weights::{fill_counter, random_tensor, write_random_streamdit_checkpoint};
use super::{read_tensors, Checkpoint, DType, Weights};
use crate::error::{fmt_shape, path_str, Error, Result};
use crate::model::profile::Family;
use crate::model::profile::Profile;
use crate::model::streamdit::schema::Group;
use crate::model::wan::schema::{
    canonical_name, default_preview, wan_tensors, FSDP_INFIX, LORA_PREFIXES,
};
use crate::model::wan::WanConfig;
use crate::tensor::Tensor;

/// Tensors whose presence says a checkpoint is StreamDiT's (docs/streamdit.md section 6).
const STREAMDIT_MARKERS: [&str; 3] = ["patch_embed.weight", "final.linear.weight", "time_mod.weight"];

/// The family a checkpoint's tensor names belong to, with the tensor that told and its shape.
pub fn detect_family(ckpt: &Checkpoint) -> Option<(Family, String, Vec<usize>)> {
    if let Some(info) = STREAMDIT_MARKERS.iter().find_map(|n| ckpt.info(n)) {
        return Some((Family::StreamDit, info.name.clone(), info.shape.clone()));
    }
    let marker = |s: &str| {
        ["patch_embedding.weight", "head.head.weight", "blocks.0.self_attn.q.weight"].contains(&s)
    };
    ckpt.names().find_map(|n| {
        let (orig, _) = canonical_name(n, &marker)?;
        let info = ckpt.info(n)?;
        let tensor = if n == orig {
            orig
        } else {
            format!("{n}` (as `{orig}")
        };
        Some((Family::Wan, tensor, info.shape.clone()))
    })
}

/// The error for a checkpoint of the other family.
pub fn wrong_family(ckpt: &Checkpoint, profile: &str, want: Family) -> Option<Error> {
    let (family, tensor, shape) = detect_family(ckpt)?;
    (family != want).then(|| Error::Checkpoint {
        path: path_str(ckpt.path()),
        msg: format!(
            "a {} checkpoint (tensor `{tensor}` {}), but profile `{profile}` is of the {} \
             family",
            family.name(),
            fmt_shape(&shape),
            want.name()
        ),
    })
}

/// What [`load_wan`] read, for the engine's notes.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WanLoad {
    /// One line per fact: names and prefix found, the preview's source, the LoRA merged.
    pub notes: Vec<String>,
}

/// Reads the Wan network of `w` from `path` (every `Dit` tensor, checked for name and shape
/// before any is read; `preview.*` when present, otherwise the fixed map of
/// [`default_preview`]) and merges the LoRA of `w.lora` when it names a file.
pub fn load_wan(path: &Path, profile: &str, w: &WanConfig) -> Result<(Weights, WanLoad)> {
    let ckpt = Checkpoint::open(path)?;
    let specs = wan_tensors(w);
    let known: std::collections::HashSet<&str> = specs.iter().map(|s| s.name.as_str()).collect();
    let is_known = |n: &str| known.contains(n);
    // Original name -> stored name.
    let mut stored: BTreeMap<String, String> = BTreeMap::new();
    let mut prefixes: BTreeMap<String, usize> = BTreeMap::new();
    for name in ckpt.names() {
        if let Some((orig, prefix)) = canonical_name(name, &is_known) {
            if let Some(other) = stored.get(&orig) {
                return Err(Error::Checkpoint {
                    path: path_str(ckpt.path()),
                    msg: format!(
                        "tensors `{other}` and `{name}` are both `{orig}`: convert with \
                         --prefix to keep one subtree (e.g. `generator_ema.model.`)"
                    ),
                });
            }
            stored.insert(orig, name.to_string());
            *prefixes.entry(prefix).or_default() += 1;
        }
    }
    if let Some(e) = wrong_family(&ckpt, profile, Family::Wan) {
        return Err(e);
    }
    let mut plan = Vec::new();
    for spec in &specs {
        match stored.get(&spec.name) {
            Some(s) => {
                let info = ckpt
                    .info(s)
                    .ok_or_else(|| Error::Invalid(format!("tensor `{s}` vanished")))?;
                if info.shape != spec.shape {
                    return Err(Error::Tensor {
                        path: path_str(ckpt.path()),
                        tensor: if *s == spec.name {
                            s.clone()
                        } else {
                            format!("{s}` (as `{}", spec.name)
                        },
                        expected: format!(
                            "shape {} for profile `{profile}` (D = {}, {} blocks, C = {})",
                            fmt_shape(&spec.shape),
                            w.dim,
                            w.depth,
                            w.latent_channels
                        ),
                        found: format!(
                            "shape {}: a checkpoint of another size",
                            fmt_shape(&info.shape)
                        ),
                    });
                }
                ckpt.check(s, &spec.shape)?;
                plan.push((spec.name.clone(), s.clone(), spec.shape.clone()));
            }
            None if spec.group == Group::Preview => {}
            None => {
                return Err(Error::Tensor {
                    path: path_str(ckpt.path()),
                    tensor: spec.name.clone(),
                    expected: format!(
                        "shape {} (as an original Wan name, a diffusers name, or either \
                         behind one of the prefixes `generator_ema.model.`, \
                         `generator.model.`, `generator_ema.`, `generator.`, `model.`)",
                        fmt_shape(&spec.shape)
                    ),
                    found: format!(
                        "none ({} of the {} Wan tensors found)",
                        stored.len(),
                        specs.len()
                    ),
                })
            }
        }
    }
    let mut tensors: BTreeMap<String, Tensor> = plan
        .par_iter()
        .map(|(orig, s, shape)| Ok((orig.clone(), ckpt.read_f32(s, shape)?)))
        .collect::<Result<_>>()?;
    let mut load = WanLoad::default();
    let forms: Vec<String> = prefixes
        .iter()
        .map(|(p, n)| match p.as_str() {
            "" => format!("{n} without a prefix"),
            p => format!("{n} behind `{p}`"),
        })
        .collect();
    load.notes.push(format!(
        "weights: {} tensors of {} ({})",
        tensors.len(),
        path_str(ckpt.path()),
        forms.join(", ")
    ));
    if !tensors.contains_key("preview.weight") || !tensors.contains_key("preview.bias") {
        let (wt, b) = default_preview(w.latent_channels);
        tensors.insert("preview.weight".into(), Tensor::new(vec![3, w.latent_channels], wt)?);
        tensors.insert("preview.bias".into(), Tensor::new(vec![3], b)?);
        load.notes.push("preview: the fixed false-colour map (no preview.* in the checkpoint)".into());
    }
    if let Some(note) = merge_lora(&mut tensors, w)? {
        load.notes.push(note);
    }
    Ok((Weights::from_tensors(path_str(ckpt.path()), tensors), load))
}

/// Merges the LoRA file of `w.lora` into `base` (original names); `None` without a file.
pub fn merge_lora(base: &mut BTreeMap<String, Tensor>, w: &WanConfig) -> Result<Option<String>> {
    let Some(cfg) = &w.lora else {
        return Ok(None);
    };
    let Some(file) = &cfg.file else {
        return Ok(Some(format!(
            "LoRA: the profile expects one (rank {}, alpha {}) but none was given (--lora); \
             running the base weights alone",
            cfg.rank, cfg.alpha
        )));
    };
    let path = Path::new(file);
    let raw = read_tensors(path)?;
    let mut lora: BTreeMap<String, Tensor> = raw
        .into_iter()
        .map(|(n, t)| (n.replace(FSDP_INFIX, ""), t))
        .collect();
    // LongLive's lora.pt converted whole: keep the generator's factors.
    let outer = LORA_PREFIXES[0];
    if lora.keys().any(|n| n.starts_with(outer)) {
        lora = lora
            .into_iter()
            .filter_map(|(n, t)| n.strip_prefix(outer).map(|s| (s.to_string(), t)))
            .collect();
    }
    let prefix = if !lora.is_empty() && lora.keys().all(|n| n.starts_with(PEFT_PREFIX)) {
        PEFT_PREFIX
    } else {
        ""
    };
    let spec = LoraSpec {
        rank: cfg.rank,
        alpha: cfg.alpha,
    };
    let report = merge(base, &lora, prefix, &spec, &wan_lora_targets(w.depth)).map_err(|e| {
        match e {
            Error::Tensor {
                tensor,
                expected,
                found,
                ..
            } => Error::Tensor {
                path: path_str(path),
                tensor,
                expected,
                found,
            },
            e => e,
        }
    })?;
    Ok(Some(format!(
        "LoRA: merged {} modules from {} (rank {}, alpha {})",
        report.merged.len(),
        path_str(path),
        cfg.rank,
        cfg.alpha
    )))
}

/// The deterministic random Wan weights of `w` (every tensor, preview included), each
/// value rounded to `dtype`: equal, bit for bit, to [`write_random_wan_checkpoint`] read
/// back.
pub fn random_wan(w: &WanConfig, seed: u64, dtype: DType) -> Weights {
    let tensors = wan_tensors(w)
        .par_iter()
        .enumerate()
        .map(|(i, spec)| random_tensor(seed, i as u32, spec, dtype))
        .collect();
    Weights::from_tensors(format!("random Wan weights (seed {seed}, {dtype})"), tensors)
}

/// The whole random checkpoint `streamdit weights init` writes for `profile`: StreamDiT's
/// tensors and its TAE decoder's, or a Wan profile's network in the original names plus
/// `preview.*` ([`write_random_wan_checkpoint`]). Returns the file size in bytes.
pub fn write_random_profile_checkpoint(
    profile: &Profile,
    seed: u64,
    dtype: DType,
    path: &Path,
) -> Result<u64> {
    match profile.family {
        Family::StreamDit => write_random_streamdit_checkpoint(profile, seed, dtype, path),
        Family::Wan => write_random_wan_checkpoint(profile, seed, dtype, path),
    }
}

/// Writes the random checkpoint of [`random_wan`] for a Wan profile in the original names,
/// a block at a time. Returns the file size in bytes.
pub fn write_random_wan_checkpoint(
    profile: &Profile,
    seed: u64,
    dtype: DType,
    path: &Path,
) -> Result<u64> {
    let w = profile.wan()?;
    let specs = wan_tensors(w);
    let entries: Vec<(&str, &[usize])> = specs
        .iter()
        .map(|s| (s.name.as_str(), s.shape.as_slice()))
        .collect();
    let metadata = [
        ("format", "pt".to_string()),
        ("streamdit.family", "wan".to_string()),
        ("streamdit.seed", seed.to_string()),
        ("streamdit.dtype", dtype.to_string()),
        (
            "streamdit.dims",
            format!(
                "C={} H={} W={} D={} L={} heads={} Dff={} freq={} Lt={} Dtxt={}",
                w.latent_channels,
                w.latent_height,
                w.latent_width,
                w.dim,
                w.depth,
                w.heads,
                w.ffn_dim,
                w.freq_dim,
                w.text_len,
                w.text_dim
            ),
        ),
        ("streamdit.profile", profile.name.clone()),
    ];
    write_file(path, &entries, dtype, &metadata, |index, start, out| {
        fill_counter(seed, index as u32, &specs[index], start, out)
    })
}
