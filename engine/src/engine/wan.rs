//! The engine's parts for the Wan family (docs/wan.md): the backend choice (the CPU, or the
//! device backend of `backend::cuda::causal` on the emulator or a GPU), its weights (a checkpoint in original or diffusers
//! names with a LoRA merged, or the deterministic random ones), its causal backend and the
//! parts of a stream.

use std::sync::{Arc, OnceLock};

use super::{BackendKind, Engine, EngineParams, StreamParams, WeightsSource};
use crate::backend::cpu::CpuCausal;
use crate::backend::cuda::device::Device;
use crate::backend::cuda::emu::EmuDevice;
use crate::backend::cuda::real::CudaDevice;
use crate::backend::cuda::CudaCausal;
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

/// The backend a Wan engine runs on, why, and the GPU's UUID (as StreamDiT's choice).
fn choose(kind: BackendKind, device: usize) -> Result<(BackendKind, String, Option<String>)> {
    match kind {
        BackendKind::Cpu => Ok((BackendKind::Cpu, "cpu: requested".into(), None)),
        BackendKind::Emu => Ok((
            BackendKind::Emu,
            "emu: requested (the Wan launch lists on the kernel emulator; slow)".into(),
            None,
        )),
        BackendKind::Cuda => {
            let dev = super::probe_cuda(device)?;
            Ok((
                BackendKind::Cuda,
                format!("cuda: requested, {}", dev.describe()),
                Some(dev.uuid().to_string()),
            ))
        }
        BackendKind::Auto => Ok(super::auto_choice(super::probe_cuda(device))),
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
    pub(super) fn new_wan(params: EngineParams, device: usize) -> Result<Engine> {
        let (backend, backend_reason, device_uuid) = choose(params.backend, device)?;
        params.check_host_weights(true)?;
        let (weights, notes) = wan_weights(&params.profile, &params.weights)?;
        let text = wan_text(&params.profile, &params.weights)?;
        Ok(Engine {
            text: Arc::new(text),
            profile: Arc::new(params.profile),
            device_random: None,
            device_file: None,
            device,
            weights: Arc::new(weights),
            backend,
            backend_reason,
            device_uuid,
            source: params.weights,
            decoder_weights: OnceLock::new(),
            notes,
        })
    }

    /// A fresh causal backend (its own KV cache) for a Wan profile: the CPU backend, or the
    /// device backend on the emulator or the engine's GPU (weights uploaded as f16).
    pub fn create_causal_backend(&self) -> Result<Box<dyn CausalBackend>> {
        let w = self.profile.wan()?;
        match self.backend {
            BackendKind::Cpu | BackendKind::Auto => {
                Ok(Box::new(CpuCausal::new(w, self.weights.clone())?))
            }
            BackendKind::Emu => Ok(Box::new(CudaCausal::new(
                w,
                &self.weights,
                EmuDevice::new(),
            )?)),
            BackendKind::Cuda => Ok(Box::new(CudaCausal::new(
                w,
                &self.weights,
                CudaDevice::new(self.device)?,
            )?)),
        }
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
