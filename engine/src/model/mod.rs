//! The model as a description: profiles, the checkpoint schema and loader, and the static
//! graph of one model call. Nothing here executes a model; backends do.

pub mod checkpoint;
pub mod graph;
pub mod plan;
pub mod profile;
pub mod schema;
pub mod tae;
pub mod taehv;
pub mod video_checkpoint;
pub mod video_ops;
pub mod wan_vae;

pub use profile::{ModelConfig, Profile};
