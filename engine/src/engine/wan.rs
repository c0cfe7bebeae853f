//! The engine's parts for the Wan family (docs/wan.md): the backend choice (the CPU until
//! the family's CUDA lowering lands), its weights (a checkpoint in original or diffusers
//! names with a LoRA merged, or the deterministic random ones), its causal backend and the
//! parts of a stream.

use std::sync::{Arc, OnceLock};

use super::{BackendKind, Engine, EngineParams, StreamParams, WeightsSource};
use crate::backend::cpu::CpuCausal;
use crate::backend::CausalBackend;
use crate::checkpoint::wan::{load_wan, random_wan};
use crate::checkpoint::{Checkpoint, Weights};
use crate::error::{Error, Result};
use crate::memory::host::check_host_memory;
use crate::model::wan::WanConfig;
use crate::model::Profile;
use crate::stream::{CausalSampler, Parts, Stream};
use crate::text::conditioner::Adapters;
use crate::text::Conditioner;

/// Why a Wan profile cannot run on a CUDA device yet.
pub(crate) const NO_CUDA: &str =
    "the Wan family runs on the CPU backend until its CUDA lowering lands (use --backend cpu)";

/// The backend a Wan engine runs on, and why.
fn choose(kind: BackendKind) -> Result<(BackendKind, String)> {
    match kind {
        BackendKind::Cpu => Ok((BackendKind::Cpu, "cpu: requested".into())),
        BackendKind::Auto => Ok((
            BackendKind::Cpu,
            "auto: the Wan family runs on the CPU backend until its CUDA lowering lands".into(),
        )),
        BackendKind::Cuda | BackendKind::Emu => Err(Error::Invalid(format!(
            "backend {}: {NO_CUDA}",
            if kind == BackendKind::Cuda {
                "cuda"
            } else {
                "emu"
            }
        ))),
    }
}

/// The Wan weights of `profile` from `source`, with notes on what was read and merged.
pub(crate) fn wan_weights(
    profile: &Profile,
    source: &WeightsSource,
) -> Result<(Weights, Vec<String>)> {
    let w = profile.wan()?;
    match source {
        WeightsSource::File(path) => {
            let (weights, load) = load_wan(path, &profile.name, w)?;
            Ok((weights, load.notes))
        }
        WeightsSource::Random { seed, dtype } => {
            let weights = random_wan(w, *seed, *dtype);
            let mut tensors = weights.into_tensors();
            let note = crate::checkpoint::wan::merge_lora(&mut tensors, w)?;
            let source = format!("random Wan weights (seed {seed}, {dtype})");
            Ok((
                Weights::from_tensors(source.clone(), tensors),
                std::iter::once(format!("weights: {source}"))
                    .chain(note)
                    .collect(),
            ))
        }
    }
}

/// The text encoders of a Wan profile (no byte-level table: the family has none).
pub(crate) fn wan_text(profile: &Profile, source: &WeightsSource) -> Result<Conditioner> {
    let dim = profile.wan()?.text_dim;
    match source {
        WeightsSource::File(path) => {
            let ckpt = Checkpoint::open(path)?;
            Conditioner::new(&profile.text, dim, &Adapters::Checkpoint(&ckpt), None)
        }
        WeightsSource::Random { seed, .. } => {
            Conditioner::new(&profile.text, dim, &Adapters::Random { seed: *seed }, None)
        }
    }
}

impl Engine {
    /// [`Engine::with_device`] for a Wan profile.
    pub(super) fn new_wan(params: EngineParams) -> Result<Engine> {
        let (backend, backend_reason) = choose(params.backend)?;
        params.check_host_weights(true)?;
        let (weights, notes) = wan_weights(&params.profile, &params.weights)?;
        let text = wan_text(&params.profile, &params.weights)?;
        Ok(Engine {
            text: Arc::new(text),
            profile: Arc::new(params.profile),
            device_random: None,
            device_file: None,
            device: 0,
            weights: Arc::new(weights),
            backend,
            backend_reason,
            device_uuid: None,
            source: params.weights,
            decoder_weights: OnceLock::new(),
            notes,
        })
    }

    /// A fresh causal backend (its own KV cache) for a Wan profile: the CPU backend.
    pub fn create_causal_backend(&self) -> Result<Box<dyn CausalBackend>> {
        let w = self.profile.wan()?;
        Ok(Box::new(CpuCausal::new(w, self.weights.clone())?))
    }

    /// [`Engine::stream`] for a Wan profile: CFG is off (the models are distilled).
    pub(super) fn stream_wan(&self, params: StreamParams) -> Result<Stream> {
        let profile = self.profile();
        let w: &WanConfig = profile.wan()?;
        check_host_memory(
            &format!("a stream of profile `{}`", profile.name),
            profile.memory_need().stream_bytes,
        )?;
        if let Some(g) = params.guidance.filter(|&g| g != 1.0) {
            return Err(Error::Invalid(format!(
                "guidance {g}: the Wan streaming models are distilled and run without \
                 classifier-free guidance (guidance 1)"
            )));
        }
        let seed = params.seed.unwrap_or(profile.run.seed);
        let encoders = self.text_encoders().clone();
        let prompt = match params.text {
            Some(t) => {
                crate::stream::check_text(&t, w.text_len, w.text_dim)?;
                Arc::new(t)
            }
            None => encoders.encode(&params.prompt)?,
        };
        let sampler = CausalSampler::new(self.create_causal_backend()?, w, seed);
        Stream::new(Parts {
            sampler: Box::new(sampler),
            decoder: self.decoder(params.decoder)?,
            encoders,
            prompt,
            seed,
            guidance: 1.0,
            chunk_frames: w.chunk_frames,
            frame: [w.latent_channels, w.latent_height, w.latent_width],
            fps: profile.video.fps,
        })
    }
}
