//! The public entry point: an [`Engine`] holds a profile and its weights; each [`Stream`] it
//! creates owns a backend instance, a latent buffer and a decoder. Several engines and
//! streams can live in one process: nothing here is global.

use std::sync::{Arc, OnceLock};

use crate::backend::cpu::CpuBackend;
use crate::backend::cuda::device::Device;
use crate::backend::cuda::emu::EmuDevice;
use crate::backend::cuda::real::CudaDevice;
use crate::backend::cuda::{CudaBackend, DeviceWeights};
use crate::backend::Backend;
use crate::decoder::{DeviceTae, Preview, TaeDecoder};

mod params;
mod parts;
mod wan;
use crate::backend::cuda::text::DeviceLinear;
use crate::checkpoint::{Checkpoint, DType, Weights};
use crate::error::{Error, Result};
use crate::memory::host::check_host_memory;
use crate::model::graph::Graph;
use crate::model::streamdit::schema::{checkpoint_tensors, Group};
use crate::model::tae::TaeGraph;
use crate::model::{Family, Profile};
use crate::stream::{check_text, InputEncoder, MovingSampler, Parts, Schedule, Stream};
use crate::text::conditioner::Adapters;
use crate::text::{Conditioner, TextInput};
pub use params::{
    check_guidance, BackendKind, DecoderKind, EngineParams, StreamParams, WeightsSource,
    GUIDANCE_RANGE,
};
pub use parts::{tae_decoder, tae_encoder, text_encoders, write_random_encoder_folders};
pub use wan::{
    resolve as wan_decoder_kind, wan_decoder, wan_decoder_graph, wan_decoder_weights,
    wan_encoder_graph, wan_video_to_video_memory, write_random_wan_decoder,
};

/// A loaded model: profile, weights and the choice of backend. Cheap to share between
/// streams (the weights are reference-counted).
pub struct Engine {
    profile: Arc<Profile>,
    weights: Arc<Weights>,
    /// The seed of DiT weights a device generates itself (then `weights` lacks them).
    device_random: Option<u64>,
    /// The checkpoint a device reads its DiT weights from (then `weights` lacks them).
    device_file: Option<Arc<Checkpoint>>,
    /// CUDA device ordinal.
    device: usize,
    backend: BackendKind,
    /// Why `auto` chose the backend it did, for one log line.
    backend_reason: String,
    /// The UUID of the CUDA device streams run on (`GPU-...`), for NVML.
    device_uuid: Option<String>,
    /// Where the weights come from (the decoder's are read on first use).
    source: WeightsSource,
    /// The `decoder.*` tensors, loaded by the first stream that uses the TAE decoder.
    decoder_weights: OnceLock<Arc<Weights>>,
    /// The Wan-family decoders' weights loaded so far, by kind and checkpoint (`None`:
    /// random), shared by the streams that use them.
    video_weights: wan::VideoWeights,
    /// The text encoders with their prompt cache (they run on the CPU).
    text: Arc<Conditioner>,
    /// What loading the weights did worth telling (a Wan checkpoint's names, its LoRA).
    notes: Vec<String>,
}

/// Opens CUDA device `device` and loads one module on it ([`CudaDevice::probe`]): a GPU
/// whose driver cannot load the kernels fails here, not at the first call.
fn probe_cuda(device: usize) -> Result<CudaDevice> {
    streamdit_kernels::kernels_built().map_err(Error::Invalid)?;
    CudaDevice::probe(device)
}

/// What `auto` chooses from the CUDA probe's outcome: the GPU (with its UUID), or the CPU
/// with the reason.
pub(crate) fn auto_choice(probe: Result<CudaDevice>) -> (BackendKind, String, Option<String>) {
    match probe {
        Ok(dev) => (
            BackendKind::Cuda,
            format!("auto: {}", dev.describe()),
            Some(dev.uuid().to_string()),
        ),
        Err(e) => (
            BackendKind::Cpu,
            format!("auto: using the CPU, the CUDA probe failed ({e})"),
            None,
        ),
    }
}

impl Engine {
    /// Loads or generates the weights and chooses the backend.
    pub fn new(params: EngineParams) -> Result<Engine> {
        Self::with_device(params, 0)
    }

    /// [`Engine::new`] on CUDA device `device` (for the `cuda` and `auto` backends).
    pub fn with_device(params: EngineParams, device: usize) -> Result<Engine> {
        params.profile.validate()?;
        if params.profile.family == Family::Wan {
            return Engine::new_wan(params, device);
        }
        let (backend, backend_reason, device_uuid) = match params.backend {
            BackendKind::Cpu => (BackendKind::Cpu, "cpu: requested".to_string(), None),
            BackendKind::Emu => (
                BackendKind::Emu,
                "emu: requested (the CUDA launch plan on the kernel emulator; slow)".to_string(),
                None,
            ),
            BackendKind::Cuda => {
                let dev = probe_cuda(device)?;
                (
                    BackendKind::Cuda,
                    format!("cuda: requested, {}", dev.describe()),
                    Some(dev.uuid().to_string()),
                )
            }
            BackendKind::Auto => auto_choice(probe_cuda(device)),
        };
        params.check_host_weights(backend == BackendKind::Cpu)?;
        // A device generates random f16 DiT weights itself (the values `weights init
        // --dtype f16` writes); the host then holds only the preview and text tables.
        let device_random = match (&params.weights, backend) {
            (
                WeightsSource::Random {
                    seed,
                    dtype: DType::F16,
                },
                BackendKind::Cuda | BackendKind::Emu,
            ) => Some(*seed),
            _ => None,
        };
        // A device reads a checkpoint's DiT tensors itself from the memory map.
        let device_file = match (&params.weights, backend) {
            (WeightsSource::File(path), BackendKind::Cuda | BackendKind::Emu) => {
                let ckpt = Checkpoint::open(path)?;
                for spec in checkpoint_tensors(&params.profile.model)
                    .iter()
                    .filter(|s| s.group == Group::Dit)
                {
                    ckpt.check(&spec.name, &spec.shape)?;
                }
                Some(Arc::new(ckpt))
            }
            _ => None,
        };
        let all = [Group::Dit, Group::Preview, Group::TextEmbed];
        let groups: &[Group] = if device_random.is_some() || device_file.is_some() {
            &all[1..]
        } else {
            &all
        };
        if let WeightsSource::File(path) = &params.weights {
            let ckpt = Checkpoint::open(path)?;
            let name = &params.profile.name;
            if let Some(e) = crate::checkpoint::wan::wrong_family(&ckpt, name, Family::StreamDit) {
                return Err(e);
            }
        }
        let weights = match &params.weights {
            WeightsSource::File(path) => Weights::load(path, &params.profile.model, groups)?,
            WeightsSource::Random { seed, dtype } => {
                Weights::random_groups(&params.profile.model, *seed, *dtype, groups)
            }
        };
        let text = {
            let byte_table = weights.get("text_embed.weight").ok();
            let dim = params.profile.model.text_dim;
            let text_cfg = &params.profile.text;
            match &params.weights {
                WeightsSource::File(path) => {
                    let ckpt = match &device_file {
                        Some(c) => c.clone(),
                        None => Arc::new(Checkpoint::open(path)?),
                    };
                    Conditioner::new(text_cfg, dim, &Adapters::Checkpoint(&ckpt), byte_table)?
                }
                WeightsSource::Random { seed, .. } => {
                    Conditioner::new(text_cfg, dim, &Adapters::Random { seed: *seed }, byte_table)?
                }
            }
        };
        let text = match (params.profile.text.device.as_deref(), backend) {
            (Some("backend"), BackendKind::Emu) => {
                text.with_exec(Box::new(DeviceLinear::new(EmuDevice::new())))
            }
            (Some("backend"), BackendKind::Cuda) => {
                text.with_exec(Box::new(DeviceLinear::new(CudaDevice::new(device)?)))
            }
            _ => text,
        };
        Ok(Engine {
            text: Arc::new(text),
            profile: Arc::new(params.profile),
            device_random,
            device_file,
            device,
            weights: Arc::new(weights),
            backend,
            backend_reason,
            device_uuid,
            source: params.weights,
            decoder_weights: OnceLock::new(),
            video_weights: Default::default(),
            notes: Vec::new(),
        })
    }

    pub fn profile(&self) -> &Profile {
        &self.profile
    }

    /// The host weights. On a CUDA or emulated device that generates random f16 weights or
    /// reads a checkpoint itself, these are only the preview and text tables (the DiT
    /// weights live on the device).
    pub fn weights(&self) -> &Arc<Weights> {
        &self.weights
    }

    /// The backend streams run on, and why it was chosen.
    pub fn backend_choice(&self) -> (BackendKind, &str) {
        (self.backend, &self.backend_reason)
    }

    /// The UUID of the CUDA device streams run on, as NVML and `nvidia-smi -L` name it
    /// (`GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`); `None` off the `cuda` backend. NVML
    /// indices need not match CUDA ordinals, so telemetry finds the device by this.
    pub fn cuda_device_uuid(&self) -> Option<&str> {
        self.device_uuid.as_deref()
    }

    /// One line per fact worth telling about the weights (a Wan checkpoint's names and
    /// prefix, the preview map's source, a LoRA merged or missing).
    pub fn weight_notes(&self) -> &[String] {
        &self.notes
    }

    /// A fresh backend instance executing StreamDiT's model graph with `guidance` (a Wan
    /// profile runs through [`Engine::create_causal_backend`]).
    pub fn create_backend(&self, guidance: f32) -> Result<Box<dyn Backend>> {
        if self.profile.family == Family::Wan {
            return Err(Error::Invalid(format!(
                "profile `{}` is of the wan family: its model calls run over a KV cache \
                 through Engine::create_causal_backend",
                self.profile.name
            )));
        }
        check_guidance(guidance)?;
        let graph = Graph::build(&self.profile.model, guidance);
        let chunk = self.profile.stream.chunk_frames;
        let device_weights = match (self.device_random, &self.device_file) {
            (Some(seed), _) => DeviceWeights::Random { seed },
            (None, Some(ckpt)) => DeviceWeights::Checkpoint(ckpt),
            (None, None) => DeviceWeights::Host(&self.weights),
        };
        match self.backend {
            BackendKind::Cpu | BackendKind::Auto => {
                Ok(Box::new(CpuBackend::new(graph, self.weights.clone())?))
            }
            BackendKind::Emu => Ok(Box::new(CudaBackend::new(
                graph,
                device_weights,
                chunk,
                EmuDevice::new(),
            )?)),
            BackendKind::Cuda => Ok(Box::new(CudaBackend::new(
                graph,
                device_weights,
                chunk,
                CudaDevice::new(self.device)?,
            )?)),
        }
    }

    /// The text encoders and their prompt cache.
    pub fn text_encoders(&self) -> &Arc<Conditioner> {
        &self.text
    }

    /// One line per text encoder saying what it is and where its weights came from (random
    /// stand-ins say so).
    pub fn text_notes(&self) -> &[String] {
        self.text.notes()
    }

    /// The text condition of `prompt` (computed once, then served from the prompt cache).
    pub fn encode_prompt(&self, prompt: &str) -> Result<TextInput> {
        Ok((*self.text.encode(prompt)?).clone())
    }

    /// The preview decoder of this engine's checkpoint.
    pub fn preview_decoder(&self) -> Result<Preview> {
        Preview::new(
            self.weights.get("preview.weight")?,
            self.weights.get("preview.bias")?,
            &self.profile.model,
            &self.profile.video,
        )
    }

    /// The temporal-autoencoder decoder (docs/tae.md) of this engine's checkpoint, on the CPU
    /// in f32. Its tensors are read, or generated for random weights, on first use; a
    /// checkpoint without them is an error naming the first missing tensor.
    pub fn tae_decoder(&self) -> Result<TaeDecoder> {
        let (graph, weights) = self.tae_parts()?;
        TaeDecoder::new(graph, &weights)
    }

    /// The TAE decoder lowered to the decoder kernels on this engine's GPU (its own
    /// allocation and streams, in the same context as the DiT), for chunks of the profile's
    /// size. Needs a CUDA device, as the `cuda` backend does.
    pub fn device_tae_decoder(&self) -> Result<DeviceTae<CudaDevice>> {
        let (graph, weights) = self.tae_parts()?;
        let chunk = self.profile.stream.chunk_frames;
        DeviceTae::new(graph, &weights, chunk, CudaDevice::new(self.device)?)
    }

    /// The decoder's op list and its tensors (loaded or generated once per engine).
    fn tae_parts(&self) -> Result<(TaeGraph, Arc<Weights>)> {
        let graph = parts::tae_graph(&self.profile)?;
        let weights = match self.decoder_weights.get() {
            Some(w) => w.clone(),
            None => {
                let loaded = Arc::new(parts::tae_weights(&self.profile, &self.source)?);
                // Another thread may have loaded them meanwhile: either copy is the same.
                self.decoder_weights.get_or_init(|| loaded).clone()
            }
        };
        Ok((graph, weights))
    }

    /// The decoder a stream with `kind` uses: the TAE decoder runs on the GPU with the
    /// `cuda` backend, on the CPU otherwise (on `emu` too: emulating it for every chunk
    /// would take minutes; `tests/decoder_device.rs` runs the device decoder there).
    pub fn decoder(&self, kind: DecoderKind) -> Result<Box<dyn crate::decoder::Decoder>> {
        if self.profile.family == Family::Wan {
            return self.wan_decoder(kind, None);
        }
        Ok(match (kind, self.backend) {
            (DecoderKind::Taehv | DecoderKind::WanVae, _) => {
                return Err(Error::Invalid(format!(
                    "decoder {kind:?}: it decodes Wan-family latents, and profile `{}` is of the \
                     StreamDiT family (use tae or preview)",
                    self.profile.name
                )))
            }
            (DecoderKind::Tae, BackendKind::Cuda) => Box::new(self.device_tae_decoder()?),
            (DecoderKind::Tae, _) => Box::new(self.tae_decoder()?),
            (DecoderKind::Preview, _) => Box::new(self.preview_decoder()?),
        })
    }

    /// Starts a stream: resolves its settings against the profile, encodes its prompts,
    /// and hands the stream its backend, decoder and schedule.
    pub fn stream(&self, params: StreamParams) -> Result<Stream> {
        if self.profile.family == Family::Wan {
            return self.stream_wan(params, None);
        }
        self.stream_streamdit(params, None)
    }

    /// Starts a video-to-video stream (docs/streamdit.md section 5): [`Engine::stream`]'s
    /// stream whose schedule is remapped by `strength` in `(0, 1]` and whose fresh frames
    /// mix in the encoded input video, pushed with [`Stream::push_video_frames`]. Strength 1
    /// is text-to-video (the input is still needed, and ignored). The checkpoint must carry
    /// the TAE encoder (`encoder.*`). A Wan profile gets SDEdit on its causal sampler with
    /// the TAEHV encoder (docs/wan.md section 6.1).
    pub fn video_stream(&self, params: StreamParams, strength: f32) -> Result<Stream> {
        crate::stream::schedule::check_strength(f64::from(strength))?;
        if self.profile.family == Family::Wan {
            return self.video_stream_wan(params, f64::from(strength));
        }
        // The encoder runs on the GPU with `cuda` (as the TAE decoder does), on the host
        // otherwise (on `emu` too: emulating it for every chunk would take minutes;
        // `tests/encoder_device.rs` runs the device encoder there); the DiT's stream on the
        // CPU runs on the host too.
        let encoder = if self.backend == BackendKind::Cuda {
            let (graph, weights) = parts::tae_encoder_parts(&self.profile, &self.source)?;
            let chunk = self.profile.stream.chunk_frames;
            let dev = CudaDevice::new(self.device)?;
            InputEncoder::Device(Box::new(DeviceTae::new(graph, &weights, chunk, dev)?))
        } else {
            let mut need = crate::memory::host::video_to_video_memory(&self.profile)?.total();
            if self.backend == BackendKind::Cpu {
                need += self.profile.memory_need().stream_bytes;
            }
            check_host_memory(
                &format!(
                    "a video-to-video stream of profile `{}` (with its TAE encoder on the host)",
                    self.profile.name
                ),
                need,
            )?;
            InputEncoder::Tae(parts::tae_encoder(&self.profile, &self.source)?)
        };
        let mut stream = self.stream_streamdit(params, Some(f64::from(strength)))?;
        stream.attach_input(encoder);
        Ok(stream)
    }

    fn stream_streamdit(&self, params: StreamParams, strength: Option<f64>) -> Result<Stream> {
        let profile = self.profile();
        let m = &profile.model;
        if let Some(path) = &params.decoder_weights {
            return Err(Error::Invalid(format!(
                "decoder weights {}: profile `{}` is of the StreamDiT family, whose TAE decoder \
                 reads its tensors from the model's checkpoint",
                path.display(),
                profile.name
            )));
        }
        if self.backend == BackendKind::Cpu {
            check_host_memory(
                &format!("a stream of profile `{}`", profile.name),
                profile.memory_need().stream_bytes,
            )?;
        }
        let guidance = check_guidance(params.guidance.unwrap_or(profile.run.guidance))?;
        let seed = params.seed.unwrap_or(profile.run.seed);
        let encoders = self.text_encoders().clone();
        let prompt = match params.text {
            Some(t) => {
                check_text(&t, m.text_len, m.text_dim)?;
                Arc::new(t)
            }
            None => encoders.encode(&params.prompt)?,
        };
        let negative = if guidance != 1.0 {
            let neg = params
                .negative_prompt
                .as_deref()
                .unwrap_or(&profile.run.negative_prompt);
            Some(encoders.encode(neg)?)
        } else {
            None
        };
        let mut sampler = MovingSampler::new(
            self.create_backend(guidance)?,
            Schedule::new(&profile.stream),
            negative,
            seed,
            profile.stream.chunk_frames,
            [m.latent_channels, m.latent_height, m.latent_width],
        )?;
        if let Some(strength) = strength {
            sampler.set_strength(strength)?;
        }
        Stream::new(Parts {
            sampler: Box::new(sampler),
            decoder: self.decoder(params.decoder)?,
            encoders,
            prompt,
            seed,
            guidance,
            chunk_frames: profile.stream.chunk_frames,
            frame: [m.latent_channels, m.latent_height, m.latent_width],
            fps: profile.video.fps,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A probe that opened the device but could not load its module (a driver too old for
    /// the PTX) leaves `auto` on the CPU, with the load error as the reason.
    #[test]
    fn auto_falls_back_to_the_cpu_with_the_probe_error() {
        let e = crate::backend::cuda::device::backend_error(
            "cuda",
            "load module device_probe",
            "module device_probe (PTX compute_80 (ISA 9.0, JIT)): \
             CUDA_ERROR_UNSUPPORTED_PTX_VERSION",
        );
        let (kind, why, uuid) = auto_choice(Err(e));
        assert_eq!((kind, uuid), (BackendKind::Cpu, None));
        assert!(
            why.starts_with(
                "auto: using the CPU, the CUDA probe failed (cuda backend: load module"
            ) && why.contains("CUDA_ERROR_UNSUPPORTED_PTX_VERSION"),
            "{why}"
        );
    }
}
