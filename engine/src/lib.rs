//! StreamDiT inference engine: streaming text-to-video with a moving buffer of latent frames
//! at staggered noise levels (arXiv 2507.03745), run by the definition in `MODEL_SPEC.md`.
//!
//! The library holds no global state: every engine and stream is an owned value, so one
//! process can run several of each.

pub mod abi;
pub mod backend;
pub mod checkpoint;
pub mod cost;
pub mod decoder;
pub mod error;
pub mod math;
pub mod memory;
pub mod model;
pub mod nvtx;
pub mod rng;
pub mod stream;
pub mod tensor;
pub mod text;

pub use error::{Error, Result};
pub use model::Profile;
pub use tensor::Tensor;
pub mod engine;

pub use engine::{BackendKind, DecoderKind, Engine, EngineParams, StreamParams, WeightsSource};
pub use stream::Stream;
