//! The model as a description: profiles and their file form ([`profile`], [`profile_toml`]), the
//! graph vocabulary every backend executes ([`graph`]), and per model family its checkpoint
//! schema and graph builder ([`streamdit`], [`wan`]); the TAE decoder's op list ([`tae`]). Nothing here executes a model or
//! touches a file: backends execute, `crate::checkpoint` reads and writes tensors.

pub mod graph;
pub mod limits;
pub mod profile;
pub mod profile_toml;
pub mod streamdit;
pub mod tae;
pub mod taehv;
pub mod taehv_encoder;
pub mod video_ops;
pub mod video_types;
pub mod wan;
pub mod wan_vae;
pub mod wan_vae_encoder;

pub use profile::{Family, ModelConfig, Profile};
