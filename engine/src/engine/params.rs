//! What an engine and its streams are created from: the weights' source, the backend and
//! decoder choices, and per-stream settings.

use std::path::PathBuf;
use std::str::FromStr;

use crate::checkpoint::DType;
use crate::error::{Error, Result};
use crate::memory::host::check_host_memory;
use crate::model::Profile;
use crate::text::TextInput;

/// Where the weights come from.
#[derive(Debug, Clone, PartialEq)]
pub enum WeightsSource {
    /// A safetensors checkpoint.
    File(PathBuf),
    /// The deterministic random weights `streamdit weights init` writes, rounded to `dtype`.
    Random { seed: u64, dtype: DType },
}

impl WeightsSource {
    /// The weights of a run that names no checkpoint: random weights of `random_seed` when
    /// given, else the profile's own checkpoint (`run.weights`), else random weights of seed
    /// 0. A profile checkpoint that is not there is an error naming it and both ways out.
    pub fn for_profile(profile: &Profile, random_seed: Option<u64>, dtype: DType) -> Result<Self> {
        if let Some(seed) = random_seed {
            return Ok(WeightsSource::Random { seed, dtype });
        }
        match &profile.run.weights {
            Some(path) if !std::path::Path::new(path).is_file() => Err(Error::Checkpoint {
                path: path.clone(),
                msg: format!(
                    "profile `{}` runs this checkpoint (its run.weights), which is not there: \
                     pass a checkpoint (--weights F, the C ABI's `checkpoint`) or ask for random \
                     weights (--random-weights SEED)",
                    profile.name
                ),
            }),
            Some(path) => Ok(WeightsSource::File(PathBuf::from(path))),
            None => Ok(WeightsSource::Random { seed: 0, dtype }),
        }
    }
}

/// Which backend executes the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendKind {
    /// The CUDA backend when it can run, otherwise the CPU backend.
    Auto,
    Cpu,
    Cuda,
    /// The CUDA backend's launch plan on the kernel emulator.
    Emu,
}

impl FromStr for BackendKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "auto" => Ok(BackendKind::Auto),
            "cpu" => Ok(BackendKind::Cpu),
            "cuda" => Ok(BackendKind::Cuda),
            "emu" => Ok(BackendKind::Emu),
            _ => Err(Error::Invalid(format!(
                "backend `{s}`: expected one of auto, cpu, cuda, emu"
            ))),
        }
    }
}

/// Everything an engine is created from.
#[derive(Debug, Clone)]
pub struct EngineParams {
    pub profile: Profile,
    pub weights: WeightsSource,
    pub backend: BackendKind,
}

impl EngineParams {
    /// Refuses a profile whose host weights do not fit the host memory limit
    /// (`crate::memory::host`): all of them as f32 when `cpu` (the CPU backend's copy),
    /// otherwise the random text encoders (they run on the host).
    pub(crate) fn check_host_weights(&self, cpu: bool) -> Result<()> {
        let need = self.profile.memory_need();
        let params = if cpu {
            need.parameters
        } else {
            need.text_parameters
        };
        check_host_memory(
            &format!(
                "profile `{}` ({params} parameters as f32 on the host)",
                self.profile.name
            ),
            params * 4,
        )
    }
}

/// Per-stream settings; `None` takes the profile's run setting.
#[derive(Debug, Clone, Default)]
pub struct StreamParams {
    pub prompt: String,
    pub negative_prompt: Option<String>,
    pub seed: Option<u64>,
    pub guidance: Option<f32>,
    /// Precomputed text condition replacing the prompt's encoding.
    pub text: Option<TextInput>,
    /// Which decoder turns latents into frames (the profile's full decoder unless told
    /// otherwise).
    pub decoder: DecoderKind,
    /// Wan family: the checkpoint of the stream's decoder (TAEHV or the Wan VAE, a
    /// safetensors file or a `torch.save` `.pth`), overriding the profile's
    /// `wan.decoder_weights`; with neither, deterministic random weights.
    pub decoder_weights: Option<PathBuf>,
}

/// Which decoder a stream uses.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum DecoderKind {
    /// The profile's full-resolution decoder: for StreamDiT the temporal-autoencoder
    /// decoder of docs/tae.md, for the Wan family the one `wan.decoder` names (TAEHV by
    /// default).
    #[default]
    Tae,
    /// The cheap latent-to-RGB preview (`preview.*`), upscaled by nearest neighbour.
    Preview,
    /// Wan family: TAEHV (`taew2_1`, docs/taehv.md).
    Taehv,
    /// Wan family: the Wan 2.1 VAE decoder (docs/wan_vae.md).
    WanVae,
}

impl FromStr for DecoderKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "tae" => Ok(DecoderKind::Tae),
            "preview" => Ok(DecoderKind::Preview),
            "taehv" => Ok(DecoderKind::Taehv),
            "wan-vae" => Ok(DecoderKind::WanVae),
            _ => Err(Error::Invalid(format!(
                "decoder `{s}`: expected one of tae, preview, taehv, wan-vae"
            ))),
        }
    }
}

/// The classifier-free guidance scales the engine accepts: `v = v_neg + g (v_pos - v_neg)`
/// stays meaningful (and finite in f32 for finite velocities) well inside this range;
/// published samplers use 1 to about 15.
pub const GUIDANCE_RANGE: (f32, f32) = (0.0, 30.0);

/// The one check of a guidance scale, used by [`crate::Engine::stream`],
/// [`crate::Engine::create_backend`] (so `forward` and the C ABI too): a finite number in
/// [`GUIDANCE_RANGE`].
pub fn check_guidance(guidance: f32) -> Result<f32> {
    let (lo, hi) = GUIDANCE_RANGE;
    if guidance.is_finite() && (lo..=hi).contains(&guidance) {
        Ok(guidance)
    } else {
        Err(Error::Invalid(format!(
            "guidance: expected a finite number in [{lo}, {hi}], found {guidance}"
        )))
    }
}
