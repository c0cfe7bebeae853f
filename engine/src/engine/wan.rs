//! The engine's parts for the Wan family (docs/wan.md): the backend choice (the CPU, or the
//! device backend of `backend::cuda::causal` on the emulator or a GPU), its weights (a checkpoint in original or diffusers
//! names with a LoRA merged, or the deterministic random ones), its causal backend and the
//! parts of a stream.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::SystemTime;

use super::DecoderKind;
use super::{BackendKind, Engine, EngineParams, StreamParams, WeightsSource};
use crate::backend::cpu::CpuCausal;
use crate::backend::cuda::device::Device;
use crate::backend::cuda::emu::EmuDevice;
use crate::backend::cuda::real::CudaDevice;
use crate::backend::cuda::CudaCausal;
use crate::backend::CausalBackend;
use crate::checkpoint::wan::{load_wan, random_wan};
use crate::checkpoint::{Checkpoint, DType, Weights};
use crate::decoder::{
    Decoder, DeviceEncoder, DeviceVideo, TaehvDecoder, TaehvEncoder, WanVaeDecoder, WanVaeEncoder,
};
use crate::error::{Error, Result};
use crate::memory::host::{check_host_memory, EncoderMemory};
use crate::model::taehv_encoder::TaehvEncoderConfig;
use crate::model::video_ops::VideoGraph;
use crate::model::wan::WanConfig;
use crate::model::wan::WanDecoder;
use crate::model::Profile;
use crate::stream::{CausalSampler, InputEncoder, Parts, Stream};
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

/// Which decoder weights an engine loaded: the kind, the checkpoint, and the checkpoint's
/// length and modification time when it was read (so a file rewritten between streams is
/// read again, not served from the cache).
type VideoWeightsKey = (WanDecoder, Option<PathBuf>, Option<(u64, SystemTime)>);

/// The Wan-family decoder weights an engine loaded, by [`VideoWeightsKey`].
pub(crate) type VideoWeights = Mutex<Vec<(VideoWeightsKey, Arc<Weights>)>>;

/// The length and modification time of `path`, when the file system gives both.
fn file_stamp(path: &Path) -> Option<(u64, SystemTime)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.len(), meta.modified().ok()?))
}

/// The decoder a Wan stream asking for `kind` uses (the profile's for the default,
/// [`DecoderKind::Tae`]).
pub fn resolve(profile: &Profile, kind: DecoderKind) -> Result<WanDecoder> {
    Ok(match kind {
        DecoderKind::Tae => profile.wan()?.decoder,
        DecoderKind::Taehv => WanDecoder::Taehv,
        DecoderKind::WanVae => WanDecoder::WanVae,
        DecoderKind::Preview => WanDecoder::Preview,
    })
}

/// The weights of Wan decoder `kind` (TAEHV or the Wan VAE) of `profile`: from `file`, a
/// safetensors checkpoint or a `torch.save` `.pth` of that kind, or else the deterministic
/// random ones of `seed` rounded to `dtype`.
pub fn wan_decoder_weights(
    profile: &Profile,
    kind: WanDecoder,
    file: Option<&Path>,
    seed: u64,
    dtype: DType,
) -> Result<Weights> {
    let w = profile.wan()?;
    match (kind, file) {
        (WanDecoder::Taehv, Some(f)) => TaehvDecoder::load_weights(f, &w.taehv_config()),
        (WanDecoder::Taehv, None) => TaehvDecoder::random_weights(&w.taehv_config(), seed, dtype),
        (WanDecoder::WanVae, Some(f)) => WanVaeDecoder::load_weights(f, &w.wan_vae_config()),
        (WanDecoder::WanVae, None) => {
            WanVaeDecoder::random_weights(&w.wan_vae_config(), seed, dtype)
        }
        (WanDecoder::Preview, _) => Err(Error::Invalid(format!(
            "profile `{}`: the preview's weights are part of the model's checkpoint",
            profile.name
        ))),
    }
}

/// The encoder of a Wan `profile`'s video-to-video input in a stream that decodes with
/// `decoder` (4 video frames per latent frame, at the profile's frame size): the Wan VAE's
/// own encoder with the Wan VAE decoder (docs/wan_vae.md "The encoder"), TAEHV's otherwise
/// (docs/taehv.md "The encoder"). What the stream runs and `plan` costs.
pub fn wan_encoder_graph(profile: &Profile, decoder: WanDecoder) -> Result<VideoGraph> {
    let w = profile.wan()?;
    if decoder == WanDecoder::WanVae {
        let f = crate::model::wan_vae_encoder::SPACE_FACTOR;
        return crate::model::wan_vae_encoder::graph(
            &w.wan_vae_config(),
            f * w.latent_height,
            f * w.latent_width,
        );
    }
    let cfg = TaehvEncoderConfig {
        latent_channels: w.latent_channels,
        ..TaehvEncoderConfig::taew2_1()
    };
    let f = TaehvEncoderConfig::SPACE_FACTOR;
    crate::model::taehv_encoder::graph(&cfg, f * w.latent_height, f * w.latent_width)
}

/// The host memory a Wan `profile`'s video-to-video stream adds for its encoder
/// ([`wan_encoder_graph`] of `decoder`; `memory::host::video_encoder_memory` at one chunk).
pub fn wan_video_to_video_memory(profile: &Profile, decoder: WanDecoder) -> Result<EncoderMemory> {
    let graph = wan_encoder_graph(profile, decoder)?;
    Ok(crate::memory::host::video_encoder_memory(
        &graph,
        profile.wan()?.chunk_frames,
    ))
}

/// The op list of Wan decoder `kind` (TAEHV or the Wan VAE) of `profile` at its latent
/// size (what `plan` costs).
pub fn wan_decoder_graph(profile: &Profile, kind: WanDecoder) -> Result<VideoGraph> {
    let w = profile.wan()?;
    let (h, wd) = (w.latent_height, w.latent_width);
    match kind {
        WanDecoder::Taehv => crate::model::taehv::graph(&w.taehv_config(), h, wd),
        WanDecoder::WanVae => crate::model::wan_vae::graph(&w.wan_vae_config(), h, wd),
        WanDecoder::Preview => Err(Error::Invalid(format!(
            "profile `{}`: the preview is a per-pixel map, not an op list",
            profile.name
        ))),
    }
}

/// Writes the random weights of Wan decoder `kind` of `profile` ([`wan_decoder_weights`]
/// without a file: the values a stream uses when given none) as a safetensors checkpoint
/// in the released names (taew2_1's, the original Wan VAE's).
pub fn write_random_wan_decoder(
    profile: &Profile,
    kind: WanDecoder,
    seed: u64,
    dtype: DType,
    path: &Path,
) -> Result<()> {
    let w = profile.wan()?;
    match kind {
        WanDecoder::Taehv => TaehvDecoder::write_random(path, &w.taehv_config(), seed, dtype),
        WanDecoder::WanVae => {
            WanVaeDecoder::write_random(path, &w.wan_vae_config(), seed, dtype, false)
        }
        WanDecoder::Preview => Err(Error::Invalid(format!(
            "profile `{}`: the preview's weights are part of the model's checkpoint",
            profile.name
        ))),
    }
}

/// Wan decoder `kind` (TAEHV or the Wan VAE) of `profile` on the CPU with `weights`, for
/// the profile's latent size; an error when the profile's video factors are not the
/// decoder's (4x in time, 8x in space).
pub fn wan_decoder(
    profile: &Profile,
    kind: WanDecoder,
    weights: &Weights,
) -> Result<Box<dyn Decoder>> {
    let w = profile.wan()?;
    let (h, wd) = (w.latent_height, w.latent_width);
    let decoder: Box<dyn Decoder> = match kind {
        WanDecoder::Taehv => Box::new(TaehvDecoder::new(&w.taehv_config(), h, wd, weights)?),
        WanDecoder::WanVae => Box::new(WanVaeDecoder::new(&w.wan_vae_config(), h, wd, weights)?),
        WanDecoder::Preview => {
            return Err(Error::Invalid(format!(
                "profile `{}`: the preview is built from the model's checkpoint",
                profile.name
            )))
        }
    };
    check_video_factors(profile, kind, decoder.as_ref())?;
    Ok(decoder)
}

/// Wan decoder `kind` (TAEHV or the Wan VAE) of `profile` lowered to `dev` (docs/taehv.md,
/// "On the device") with `weights`, for chunks of the profile's size: the decoder of a Wan
/// stream on the `emu` and `cuda` backends, with its own allocation and queues.
pub fn wan_device_decoder<D: Device + 'static>(
    profile: &Profile,
    kind: WanDecoder,
    weights: &Weights,
    dev: D,
) -> Result<Box<dyn Decoder>> {
    let graph = wan_decoder_graph(profile, kind)?;
    let chunk = profile.wan()?.chunk_frames;
    let decoder: Box<dyn Decoder> = Box::new(DeviceVideo::new(graph, weights, chunk, dev)?);
    check_video_factors(profile, kind, decoder.as_ref())?;
    Ok(decoder)
}

/// An error when `decoder`'s upsampling is not the profile's video factors.
fn check_video_factors(profile: &Profile, kind: WanDecoder, decoder: &dyn Decoder) -> Result<()> {
    let w = profile.wan()?;
    let (h, wd) = (w.latent_height, w.latent_width);
    let (fw, fh) = decoder.frame_size();
    let v = &profile.video;
    if decoder.frames_per_latent() != v.temporal_upsample
        || fw != wd * v.spatial_upsample
        || fh != h * v.spatial_upsample
    {
        return Err(Error::Invalid(format!(
            "profile `{}`: decoder {} upsamples {}x in time and {}x in space, but \
             video.temporal_upsample is {} and video.spatial_upsample is {}",
            profile.name,
            kind.name(),
            decoder.frames_per_latent(),
            fw / wd.max(1),
            v.temporal_upsample,
            v.spatial_upsample
        )));
    }
    Ok(())
}

impl Engine {
    /// The decoder of a Wan stream asking for `kind`, its weights from `file`, else from the
    /// profile's `wan.decoder_weights`, else random (the DiT's seed and dtype for random DiT
    /// weights, seed 0 in f16 for a DiT checkpoint); loaded once per engine. Both run on the
    /// engine's device with the `emu` and `cuda` backends ([`wan_device_decoder`]).
    pub(super) fn wan_decoder(
        &self,
        kind: DecoderKind,
        file: Option<&Path>,
    ) -> Result<Box<dyn Decoder>> {
        let kind = resolve(&self.profile, kind)?;
        if kind == WanDecoder::Preview {
            return Ok(Box::new(self.preview_decoder()?));
        }
        let file: Option<PathBuf> = file.map(Path::to_path_buf).or_else(|| {
            self.profile
                .wan()
                .ok()?
                .decoder_weights
                .as_ref()
                .map(PathBuf::from)
        });
        let stamp = file.as_deref().and_then(file_stamp);
        let key = (kind, file, stamp);
        let cached = self
            .video_weights
            .lock()
            .map_err(|_| {
                Error::Invalid("decoder weights: a thread panicked while loading them".into())
            })?
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, w)| w.clone());
        let weights = match cached {
            Some(w) => w,
            None => {
                let (seed, dtype) = match &self.source {
                    WeightsSource::Random { seed, dtype } => (*seed, *dtype),
                    WeightsSource::File(_) => (0, DType::F16),
                };
                let w = Arc::new(wan_decoder_weights(
                    &self.profile,
                    kind,
                    key.1.as_deref(),
                    seed,
                    dtype,
                )?);
                if let Ok(mut v) = self.video_weights.lock() {
                    // An older copy of the same file is dropped with its stamp.
                    v.retain(|(k, _)| (k.0, &k.1) != (key.0, &key.1));
                    v.push((key, w.clone()));
                }
                w
            }
        };
        match (kind, self.backend) {
            (WanDecoder::Taehv | WanDecoder::WanVae, BackendKind::Emu) => {
                wan_device_decoder(&self.profile, kind, &weights, EmuDevice::new())
            }
            (WanDecoder::Taehv | WanDecoder::WanVae, BackendKind::Cuda) => {
                wan_device_decoder(&self.profile, kind, &weights, CudaDevice::new(self.device)?)
            }
            _ => wan_decoder(&self.profile, kind, &weights),
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
            video_weights: VideoWeights::default(),
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
    pub(super) fn stream_wan(&self, params: StreamParams, strength: Option<f64>) -> Result<Stream> {
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
        let mut sampler = CausalSampler::new(self.create_causal_backend()?, w, seed);
        if let Some(s) = strength {
            sampler.set_strength(s)?;
        }
        Stream::new(Parts {
            sampler: Box::new(sampler),
            decoder: self.wan_decoder(params.decoder, params.decoder_weights.as_deref())?,
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

impl Engine {
    /// [`Engine::video_stream`] for a Wan profile (docs/wan.md "Video-to-video"): the causal
    /// sampler in SDEdit mode; with the Wan VAE decoder its input is encoded by the Wan VAE
    /// encoder on the host ([`Engine::video_stream_wan_vae`]), otherwise by the TAEHV encoder
    /// (on the host with the `cpu` backend, lowered to the device with `emu` and `cuda`;
    /// `taew2_1`'s `encoder.*`, from the TAEHV checkpoint the stream's decoder would read;
    /// random ones only when the DiT's weights are random too).
    pub(super) fn video_stream_wan(&self, params: StreamParams, strength: f64) -> Result<Stream> {
        if resolve(&self.profile, params.decoder)? == WanDecoder::WanVae {
            return self.video_stream_wan_vae(params, strength);
        }
        let w = self.profile.wan()?;
        let cfg = TaehvEncoderConfig {
            latent_channels: w.latent_channels,
            ..TaehvEncoderConfig::taew2_1()
        };
        let file: Option<PathBuf> = params
            .decoder_weights
            .clone()
            .or_else(|| w.decoder_weights.as_ref().map(PathBuf::from));
        let taehv_file = file.filter(|_| {
            matches!(
                resolve(&self.profile, params.decoder),
                Ok(WanDecoder::Taehv)
            )
        });
        let weights = match (&taehv_file, &self.source) {
            (Some(f), _) => TaehvEncoder::load_weights(f, &cfg)?,
            (None, WeightsSource::Random { seed, dtype }) => {
                TaehvEncoder::random_weights(&cfg, *seed, *dtype)?
            }
            (None, WeightsSource::File(_)) => {
                return Err(Error::Invalid(format!(
                    "video-to-video: profile `{}` encodes its input with the TAEHV encoder, \
                     whose weights are in the TAEHV checkpoint (taew2_1.safetensors): choose \
                     the TAEHV decoder and give its file (--decoder taehv --decoder-weights F)",
                    self.profile.name
                )))
            }
        };
        let f = TaehvEncoderConfig::SPACE_FACTOR;
        let (h, wd) = (f * w.latent_height, f * w.latent_width);
        // On `emu` and `cuda` the encoder is lowered to its own device allocation
        // (docs/taehv.md "On the device"); on the CPU it runs on the host.
        let chunk = w.chunk_frames;
        let (encoder, size) = match self.backend {
            BackendKind::Emu => {
                let e = DeviceEncoder::taehv(&cfg, h, wd, &weights, chunk, EmuDevice::new())?;
                let size = e.frame_size();
                (InputEncoder::Device(Box::new(e)), size)
            }
            BackendKind::Cuda => {
                let dev = CudaDevice::new(self.device)?;
                let e = DeviceEncoder::taehv(&cfg, h, wd, &weights, chunk, dev)?;
                let size = e.frame_size();
                (InputEncoder::Device(Box::new(e)), size)
            }
            BackendKind::Cpu | BackendKind::Auto => {
                let mut need = wan_video_to_video_memory(&self.profile, WanDecoder::Taehv)?.total();
                if self.backend == BackendKind::Cpu {
                    need += self.profile.memory_need().stream_bytes;
                }
                check_host_memory(
                    &format!(
                        "a video-to-video stream of profile `{}` (with its TAEHV encoder on the \
                         host)",
                        self.profile.name
                    ),
                    need,
                )?;
                let e = TaehvEncoder::new(&cfg, h, wd, &weights)?;
                let size = e.frame_size();
                (InputEncoder::Taehv(Box::new(e)), size)
            }
        };
        let mut stream = self.stream_wan(params, Some(strength))?;
        if stream.frame_size() != size {
            return Err(Error::Invalid(format!(
                "video-to-video: the decoder's frames are {:?}, the TAEHV encoder's {size:?}",
                stream.frame_size(),
            )));
        }
        stream.attach_input(encoder);
        Ok(stream)
    }
}

impl Engine {
    /// [`Engine::video_stream`] for a Wan stream with the Wan VAE decoder: its input encoded
    /// by the Wan VAE encoder, on the device for `emu` and `cuda`, else on the host (docs/wan_vae.md "The encoder"; `encoder.*` and
    /// `conv1.*` from the same checkpoint as the decoder, random ones only when the DiT's
    /// weights are random too). The encoder takes the stream's first frame alone, so output
    /// frame `f` is the edit of input frame `f`.
    fn video_stream_wan_vae(&self, params: StreamParams, strength: f64) -> Result<Stream> {
        let w = self.profile.wan()?;
        let cfg = w.wan_vae_config();
        let file: Option<PathBuf> = params
            .decoder_weights
            .clone()
            .or_else(|| w.decoder_weights.as_ref().map(PathBuf::from));
        let weights = match (&file, &self.source) {
            (Some(f), _) => WanVaeEncoder::load_weights(f, &cfg)?,
            (None, WeightsSource::Random { seed, dtype }) => {
                WanVaeEncoder::random_weights(&cfg, *seed, *dtype)?
            }
            (None, WeightsSource::File(_)) => {
                return Err(Error::Invalid(format!(
                    "video-to-video: profile `{}` with the Wan VAE decoder encodes its input \
                     with the Wan VAE encoder, whose weights are in the Wan VAE checkpoint \
                     (Wan2.1_VAE.pth): give its file (--decoder wan-vae --decoder-weights F)",
                    self.profile.name
                )))
            }
        };
        let f = crate::model::wan_vae_encoder::SPACE_FACTOR;
        let (h, wd) = (f * w.latent_height, f * w.latent_width);
        // On `emu` and `cuda` the encoder is lowered to its own device allocation
        // (docs/wan_vae.md "The encoder on the device"); on the CPU it runs on the host.
        let chunk = w.chunk_frames;
        let (encoder, size) = match self.backend {
            BackendKind::Emu => {
                let e = DeviceEncoder::wan_vae(&cfg, h, wd, &weights, chunk, EmuDevice::new())?;
                let size = e.frame_size();
                (InputEncoder::Device(Box::new(e)), size)
            }
            BackendKind::Cuda => {
                let dev = CudaDevice::new(self.device)?;
                let e = DeviceEncoder::wan_vae(&cfg, h, wd, &weights, chunk, dev)?;
                let size = e.frame_size();
                (InputEncoder::Device(Box::new(e)), size)
            }
            BackendKind::Cpu | BackendKind::Auto => {
                let mut need =
                    wan_video_to_video_memory(&self.profile, WanDecoder::WanVae)?.total();
                if self.backend == BackendKind::Cpu {
                    need += self.profile.memory_need().stream_bytes;
                }
                check_host_memory(
                    &format!(
                        "a video-to-video stream of profile `{}` (with its Wan VAE encoder on \
                         the host)",
                        self.profile.name
                    ),
                    need,
                )?;
                let e = WanVaeEncoder::new(&cfg, h, wd, &weights)?;
                let size = e.frame_size();
                (InputEncoder::WanVae(Box::new(e)), size)
            }
        };
        let mut stream = self.stream_wan(params, Some(strength))?;
        if stream.frame_size() != size {
            return Err(Error::Invalid(format!(
                "video-to-video: the decoder's frames are {:?}, the Wan VAE encoder's {size:?}",
                stream.frame_size(),
            )));
        }
        stream.attach_input(encoder);
        Ok(stream)
    }
}
