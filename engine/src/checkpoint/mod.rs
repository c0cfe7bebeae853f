//! Tensor files: safetensors checkpoints read through a memory map, the engine's f32
//! [`Weights`], the deterministic random checkpoint of a model's schema, and small tensor
//! files for the tools' inputs and outputs.
//!
//! The header is parsed here, not only by the `safetensors` crate, so that every error names
//! the tensor and the byte positions involved; the crate then checks the same file as a
//! second opinion, so nothing is accepted that the reference implementation rejects.

pub mod atomic;
mod dtype;
mod file;
mod header;
pub mod lora;
pub mod pickle;
pub mod video;
pub mod wan;
mod weights;

pub use atomic::{write_atomic, PendingFile};
pub use dtype::DType;
pub use file::{read_tensors, write_tensors, Checkpoint};
pub use header::TensorInfo;
pub use wan::write_random_profile_checkpoint;
pub use weights::{write_random_checkpoint, Weights};

/// Elements per parallel task when generating, converting or encoding values.
const BLOCK: usize = 1 << 16;
