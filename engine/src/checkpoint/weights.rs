//! The engine's f32 weights: loaded by a model's schema from a checkpoint, or generated
//! deterministically from a seed (the values `weights init` writes).

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use rayon::prelude::*;

use super::file::write_file;
use super::{Checkpoint, DType, BLOCK};
use crate::error::{path_str, Error, Result};
use crate::model::profile::{DecoderConfig, ModelConfig, Profile};
use crate::model::streamdit::schema::{self, Group, Init, TensorSpec};
use crate::rng;
use crate::tensor::Tensor;

/// The tensors an engine computes with, as f32.
pub struct Weights {
    /// Where the weights came from, for messages.
    source: String,
    tensors: BTreeMap<String, Tensor>,
}

impl fmt::Debug for Weights {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Weights")
            .field("source", &self.source)
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

impl Weights {
    /// Reads every tensor of [`schema::checkpoint_tensors`] whose group is in `groups`,
    /// reporting the first missing, mis-shaped or mis-typed one in canonical order.
    pub fn load(path: impl AsRef<Path>, cfg: &ModelConfig, groups: &[Group]) -> Result<Weights> {
        let specs: Vec<TensorSpec> = schema::checkpoint_tensors(cfg)
            .into_iter()
            .filter(|s| groups.contains(&s.group))
            .collect();
        Self::read_specs(path.as_ref(), &specs)
    }

    /// The tensors `specs` from the checkpoint at `path`, every one checked (name, shape,
    /// dtype) before any is read, so the first bad one in `specs` order is reported.
    fn read_specs(path: &Path, specs: &[TensorSpec]) -> Result<Weights> {
        let ckpt = Checkpoint::open(path)?;
        for spec in specs {
            ckpt.check(&spec.name, &spec.shape)?;
        }
        let tensors = specs
            .par_iter()
            .map(|s| Ok((s.name.clone(), ckpt.read_f32(&s.name, &s.shape)?)))
            .collect::<Result<_>>()?;
        Ok(Weights {
            source: path_str(ckpt.path()),
            tensors,
        })
    }

    /// The deterministic random weights of every tensor in the schema, each value rounded
    /// to `dtype`: equal, bit for bit, to [`write_random_checkpoint`] with the same
    /// arguments read back.
    pub fn random(cfg: &ModelConfig, seed: u64, dtype: DType) -> Weights {
        Self::random_groups(
            cfg,
            seed,
            dtype,
            &[Group::Dit, Group::Preview, Group::TextEmbed],
        )
    }

    /// [`random`](Self::random) restricted to the tensors of `groups` (each keeps its
    /// schema position, so its values are the same): a device that generates the DiT
    /// weights itself needs only the small host-side tensors.
    pub fn random_groups(cfg: &ModelConfig, seed: u64, dtype: DType, groups: &[Group]) -> Weights {
        let tensors = schema::checkpoint_tensors(cfg)
            .par_iter()
            .enumerate()
            .filter(|(_, spec)| groups.contains(&spec.group))
            .map(|(index, spec)| random_tensor(seed, index as u32, spec, dtype))
            .collect();
        Weights {
            source: format!("random weights (seed {seed}, {dtype})"),
            tensors,
        }
    }

    /// The decoder's tensors ([`schema::decoder_tensors`]) from the checkpoint at `path`,
    /// reporting the first missing, mis-shaped or mis-typed one in canonical order.
    pub fn load_decoder(
        path: impl AsRef<Path>,
        dec: &DecoderConfig,
        latent_channels: usize,
    ) -> Result<Weights> {
        let specs = schema::decoder_tensors(dec, latent_channels)?;
        Self::read_specs(path.as_ref(), &specs)
    }

    /// The encoder's tensors ([`schema::encoder_tensors`]) from the checkpoint at `path`
    /// (video-to-video): the first missing, mis-shaped or mis-typed one is named.
    pub fn load_encoder(
        path: impl AsRef<Path>,
        dec: &DecoderConfig,
        latent_channels: usize,
    ) -> Result<Weights> {
        let specs = schema::encoder_tensors(dec, latent_channels)?;
        Self::read_specs(path.as_ref(), &specs)
    }

    /// The deterministic random encoder weights, each value rounded to `dtype`: equal, bit
    /// for bit, to the encoder tensors [`write_random_streamdit_checkpoint`] writes.
    pub fn random_encoder(
        dec: &DecoderConfig,
        latent_channels: usize,
        seed: u64,
        dtype: DType,
    ) -> Result<Weights> {
        let tensors = schema::encoder_tensors(dec, latent_channels)?
            .par_iter()
            .enumerate()
            .map(|(j, spec)| random_tensor(seed, schema::ENCODER_COUNTER + j as u32, spec, dtype))
            .collect();
        Ok(Weights {
            source: format!("random weights (seed {seed}, {dtype})"),
            tensors,
        })
    }

    /// The deterministic random decoder weights, each value rounded to `dtype`: equal, bit
    /// for bit, to the decoder tensors [`write_random_streamdit_checkpoint`] writes.
    pub fn random_decoder(
        dec: &DecoderConfig,
        latent_channels: usize,
        seed: u64,
        dtype: DType,
    ) -> Result<Weights> {
        let tensors = schema::decoder_tensors(dec, latent_channels)?
            .par_iter()
            .enumerate()
            .map(|(j, spec)| random_tensor(seed, schema::DECODER_COUNTER + j as u32, spec, dtype))
            .collect();
        Ok(Weights {
            source: format!("random weights (seed {seed}, {dtype})"),
            tensors,
        })
    }

    /// Weights from tensors already in memory; `source` names them in errors.
    pub fn from_tensors(source: impl Into<String>, tensors: BTreeMap<String, Tensor>) -> Weights {
        Weights {
            source: source.into(),
            tensors,
        }
    }

    /// Moves the tensors out, by name.
    pub fn into_tensors(self) -> BTreeMap<String, Tensor> {
        self.tensors
    }

    /// Where the weights came from: a path, or a description of the random init.
    pub fn source(&self) -> &str {
        &self.source
    }

    pub fn get(&self, name: &str) -> Result<&Tensor> {
        self.tensors.get(name).ok_or_else(|| Error::Tensor {
            path: self.source.clone(),
            tensor: name.to_string(),
            expected: "a tensor of that name".into(),
            found: format!("none (the weights hold {} tensors)", self.tensors.len()),
        })
    }

    /// Tensors by name, in name order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Tensor)> {
        self.tensors.iter().map(|(n, t)| (n.as_str(), t))
    }

    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }
}

/// The named tensor of `spec` drawn with Philox counter word `counter`, each value rounded
/// to `dtype`.
pub(super) fn random_tensor(
    seed: u64,
    counter: u32,
    spec: &TensorSpec,
    dtype: DType,
) -> (String, Tensor) {
    let mut data = vec![0.0; spec.numel()];
    fill_counter(seed, counter, spec, 0, &mut data);
    data.par_chunks_mut(BLOCK).for_each(|chunk| {
        for x in chunk {
            *x = dtype.round(*x);
        }
    });
    let tensor = Tensor {
        shape: spec.shape.clone(),
        data,
    };
    (spec.name.clone(), tensor)
}

/// Fills `out` with elements `[start, start + out.len())` of random tensor number `index`
/// (its position in the schema), in f32.
fn fill_random(seed: u64, index: usize, spec: &TensorSpec, start: usize, out: &mut [f32]) {
    fill_counter(seed, index as u32, spec, start, out)
}

/// [`fill_random`] for the tensor with Philox counter word `counter`.
pub(super) fn fill_counter(
    seed: u64,
    counter: u32,
    spec: &TensorSpec,
    start: usize,
    out: &mut [f32],
) {
    out.par_chunks_mut(BLOCK)
        .enumerate()
        .for_each(|(k, chunk)| init_range(seed, counter, spec, start + k * BLOCK, chunk));
}

/// Elements `[start, start + out.len())` of a tensor initialised by `spec.init`.
fn init_range(seed: u64, counter: u32, spec: &TensorSpec, start: usize, out: &mut [f32]) {
    match &spec.init {
        Init::Uniform { mean, half_width } => {
            rng::init_uniform(seed, counter, start as u64, *mean, *half_width, out)
        }
        Init::Rows(rows) => {
            // Row r of a [rows, cols] tensor is elements [r*cols, (r+1)*cols).
            let cols = spec.shape.iter().skip(1).product::<usize>().max(1);
            let mut done = 0;
            while done < out.len() {
                let pos = start + done;
                let row = pos / cols;
                let take = ((row + 1) * cols - pos).min(out.len() - done);
                let (mean, half_width) = rows[row];
                let seg = &mut out[done..done + take];
                rng::init_uniform(seed, counter, pos as u64, mean, half_width, seg);
                done += take;
            }
        }
    }
}

/// Writes the random checkpoint of [`Weights::random`]: every tensor of the schema, all
/// groups, in canonical order, generated and written a block at a time so that even
/// `streamdit-4b` never sits in memory. Returns the file size in bytes.
pub fn write_random_checkpoint(
    cfg: &ModelConfig,
    seed: u64,
    dtype: DType,
    path: &Path,
) -> Result<u64> {
    let specs = schema::checkpoint_tensors(cfg);
    let entries: Vec<(&str, &[usize])> = specs
        .iter()
        .map(|s| (s.name.as_str(), s.shape.as_slice()))
        .collect();
    let dims = dims_metadata(cfg);
    let metadata = [
        ("format", "pt".to_string()),
        ("streamdit.seed", seed.to_string()),
        ("streamdit.dtype", dtype.to_string()),
        ("streamdit.dims", dims),
    ];
    write_file(path, &entries, dtype, &metadata, |index, start, out| {
        fill_random(seed, index, &specs[index], start, out)
    })
}

/// The DiT dimensions a random checkpoint records in its metadata.
fn dims_metadata(cfg: &ModelConfig) -> String {
    format!(
        "C={} F={} H={} W={} D={} L={} heads={} Dff={} window={:?} Lt={} Dtxt={}",
        cfg.latent_channels,
        cfg.latent_frames,
        cfg.latent_height,
        cfg.latent_width,
        cfg.dim,
        cfg.depth,
        cfg.heads,
        cfg.ffn_dim,
        cfg.window,
        cfg.text_len,
        cfg.text_dim
    )
}

/// [`write_random_checkpoint`] followed by the decoder's tensors of `profile`
/// ([`Weights::random_decoder`]) and the encoder's ([`Weights::random_encoder`]): the whole checkpoint `streamdit weights init` writes for a
/// StreamDiT profile (`checkpoint::wan::write_random_profile_checkpoint` chooses by family).
/// Returns the file size in bytes.
pub fn write_random_streamdit_checkpoint(
    profile: &Profile,
    seed: u64,
    dtype: DType,
    path: &Path,
) -> Result<u64> {
    let cfg = &profile.model;
    let mut specs: Vec<(u32, TensorSpec)> = schema::checkpoint_tensors(cfg)
        .into_iter()
        .enumerate()
        .map(|(i, s)| (i as u32, s))
        .collect();
    let decoder = schema::decoder_tensors(&profile.decoder, cfg.latent_channels)?;
    specs.extend(
        decoder
            .into_iter()
            .enumerate()
            .map(|(j, s)| (schema::DECODER_COUNTER + j as u32, s)),
    );
    let encoder = schema::encoder_tensors(&profile.decoder, cfg.latent_channels)?;
    specs.extend(
        encoder
            .into_iter()
            .enumerate()
            .map(|(j, s)| (schema::ENCODER_COUNTER + j as u32, s)),
    );
    let entries: Vec<(&str, &[usize])> = specs
        .iter()
        .map(|(_, s)| (s.name.as_str(), s.shape.as_slice()))
        .collect();
    let metadata = [
        ("format", "pt".to_string()),
        ("streamdit.seed", seed.to_string()),
        ("streamdit.dtype", dtype.to_string()),
        ("streamdit.dims", dims_metadata(cfg)),
        ("streamdit.profile", profile.name.clone()),
    ];
    write_file(path, &entries, dtype, &metadata, |index, start, out| {
        let (counter, spec) = &specs[index];
        fill_counter(seed, *counter, spec, start, out)
    })
}
