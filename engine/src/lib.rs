//! StreamDiT inference engine: streaming text-to-video with a moving buffer of latent frames
//! at staggered noise levels (arXiv 2507.03745), run by the definition in
//! `docs/streamdit.md` (its decoder: `docs/tae.md`), and the Wan2.1 causal streaming family
//! (Self-Forcing, CausVid, LongLive: chunks over a KV cache, `docs/wan.md`), chosen by the
//! profile's `family`.
//!
//! The library holds no global state: every engine and stream is an owned value, so one
//! process can run several of each.
//!
//! # The public API
//! - [`Engine`] (created from [`EngineParams`]) loads a [`Profile`] and its weights and
//!   chooses a backend; [`Engine::stream`] starts a [`Stream`] (settings in
//!   [`StreamParams`]) that produces latents and decoded RGB8 frames chunk by chunk.
//! - [`sink`]: Y4M, PNG-sequence and raw RGB24 writers for those frames; [`source`]: the
//!   readers of video-to-video's input (Y4M, raw RGB24, PNG folder) and the fit to a profile.
//! - [`conditioning`]: the text encoders alone and their outputs.
//! - [`files`]: tensor files (safetensors) in and out: checkpoints, random checkpoints.
//! - [`tae_decoder`]: the TAE decoder alone, for decoding latents without the DiT;
//!   [`tae_encoder`]: its mirror, the encoder of video-to-video.
//! - [`inspect`]: what a profile costs and where its memory goes, without running it (the
//!   static graph, op costs, memory plans, rooflines, the schedule); what `streamdit plan`,
//!   `bench` and `profile` print.
//! - [`Backend`]: one model call on the engine's backend (`Engine::create_backend`), for
//!   golden tests and per-op timing; [`CausalBackend`] the same for a causal family's calls
//!   over a KV cache (`Engine::create_causal_backend`).
//!
//! Everything else is internal (`pub(crate)`); the integration tests see it through the
//! `internals` feature, which nothing else enables. The C ABI (`abi`, `include/streamdit.h`)
//! is built on the same public API. `docs/architecture.md` maps the rooms.

/// Declares the internal rooms: `pub(crate)`, or `pub` with the `internals` feature (for the
/// integration tests only).
macro_rules! rooms {
    ($($name:ident),* $(,)?) => {
        $(
            #[cfg(feature = "internals")]
            pub mod $name;
            #[cfg(not(feature = "internals"))]
            pub(crate) mod $name;
        )*
    };
}

rooms!(backend, checkpoint, cost, decoder, math, memory, model, rng, stream, text);

pub mod abi;
mod engine;
mod error;
pub mod nvtx;
mod tensor;

pub use backend::{Backend, CausalBackend, Clock, StepParams, TimedStep};
pub use checkpoint::DType;
pub use decoder::{Decoder, TaehvDecoder, WanVaeDecoder};
pub use engine::{
    check_guidance, tae_decoder, tae_encoder, wan_decoder, wan_decoder_weights,
    write_random_wan_decoder, BackendKind, DecoderKind, Engine, EngineParams, StreamParams,
    WeightsSource, GUIDANCE_RANGE,
};
pub use error::{Error, Result};
pub use model::profile::Family;
pub use model::profile::{
    builtin_names, DecoderConfig, ModelConfig, Profile, RunConfig, StreamConfig, TextConfig,
    VideoConfig, BUILTIN_PROFILES,
};
pub use model::wan::{LoraConfig, RopePositions, WanConfig, WanDecoder};
pub use stream::{InputEnd, Stream};
pub use tensor::Tensor;
pub use text::TextInput;

/// Readers of video-to-video's input frames: Y4M, raw RGB24, a PNG folder; the fit to a
/// profile's frame size.
pub mod source {
    pub use crate::stream::source::{
        fit_frame, open_source, FrameSource, PngFolderSource, RawRgbSource, Y4mSource,
    };
}

/// Writers of decoded RGB8 frames: Y4M, a PNG sequence, raw RGB24.
pub mod sink {
    pub use crate::stream::sink::{open_sink, FrameSink, PngSequence, RawRgbSink, Y4mSink};
}

/// Text conditioning: the profile's encoders (without an engine), their outputs, and the
/// stacking of guidance branches a model call takes.
pub mod conditioning {
    pub use crate::engine::{text_encoders, write_random_encoder_folders};
    pub use crate::text::{load_text_embeddings, stack, Conditioner, TextInput};
}

/// Tensor files (safetensors) in and out, and PyTorch `.pt` checkpoints converted to
/// safetensors by a restricted unpickler ([`convert`]).
pub mod files {
    pub use crate::checkpoint::pickle::{convert, ConvertOptions, ConvertReport, PtDtype};
    pub use crate::checkpoint::{
        read_tensors, write_atomic, write_random_checkpoint, write_random_profile_checkpoint,
        write_tensors, Checkpoint, PendingFile, TensorInfo, Weights,
    };
}

/// What a profile costs and where its memory goes, without running it.
///
/// - the static graph of one model call ([`Graph`], [`Op`]) and the TAE decoder's op list
///   ([`TaeGraph`]);
/// - FLOPs and bytes per op and per list ([`GraphCost`], [`DecoderCost`]), parameter counts;
/// - the device memory plan ([`MemoryPlan`], with the launches the CUDA backend fuses:
///   [`device_fusion`], and the launches they make: [`device_call_folds`], [`launches`])
///   and the device decoder's allocation ([`decoder_device_memory`]);
/// - the host memory video-to-video's TAE encoder adds ([`video_to_video_memory`]);
/// - roofline predictions on named GPUs ([`GpuSpec`], [`Prediction`]);
/// - the streaming schedule ([`Schedule`]) and the noise of a latent frame ([`noise_frame`]);
/// - the Wan family's call graph over a KV cache ([`WanGraph`]), its parameter count
///   ([`wan_parameters`]) and its sampler's noise ([`wan_noise_frame`]).
pub mod inspect {
    pub use crate::backend::cuda::attention_bench::{
        attention_shapes, wan_attention_shape, AttentionKind, AttentionPath, AttentionShape,
        AttentionTiming,
    };
    pub use crate::backend::cuda::kernel_bench::{
        kernel_bench, GemmShape, GemmTiming, KernelBench, KernelDevice, PathTiming,
    };
    pub use crate::backend::cuda::lower::{device_call_folds, fusion as device_fusion};
    pub use crate::backend::cuda::prologue_bench::{PrologueShape, PrologueTiming};
    pub use crate::cost::launches::{self, Fold, Launch};
    pub use crate::cost::{
        axis_windows, op_cost, op_kind, tae_op_cost, tae_op_kind, video_frames_per_call,
        window_sum_sq, Bound, CostSum, DecoderCost, GpuSpec, GraphCost, KernelPath, ListCost,
        OpClass, OpCost, OpTime, ParamCount, Prediction, VideoCost,
    };
    pub use crate::decoder::tae::{
        device_memory as decoder_device_memory, launch_costs as decoder_launch_costs, TaeMemory,
    };
    pub use crate::engine::{
        wan_decoder_graph, wan_decoder_kind, wan_encoder_graph, wan_video_to_video_memory,
    };
    pub use crate::math::linear_rate as cpu_linear_rate;
    pub use crate::memory::host::{encoder_memory, video_to_video_memory, EncoderMemory};
    pub use crate::memory::{
        lifetimes, lifetimes_fused, ArenaStats, Fusion, Lifetime, MemoryPlan, OpList, Placement,
        Region, ALIGNMENT,
    };
    pub use crate::model::graph::{Graph, Kind, Op, Precision, TensorDesc, TensorId};
    pub use crate::model::streamdit::schema::{dit_parameters, Group};
    pub use crate::model::tae::{TaeGraph, TaeOp, TaeStep, TEMPORAL_UPSAMPLE};
    pub use crate::model::video_ops::{VideoGraph, VideoOp, VideoStep};
    pub use crate::model::wan::graph::WanGraph;
    pub use crate::model::wan::schema::wan_parameters;
    pub use crate::rng::{noise_frame, wan_noise_frame};
    pub use crate::stream::causal::start_step as wan_start_step;
    pub use crate::stream::{Schedule, ScheduledStep};
}
