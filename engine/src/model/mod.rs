//! The model as a description: profiles and their families ([`profile`], [`family`]), the
//! graph vocabulary every backend executes ([`graph`]), and per model family its checkpoint
//! schema and graph builder ([`streamdit`], [`wan`]); the TAE decoder's op list ([`tae`]). Nothing here executes a model or
//! touches a file: backends execute, `crate::checkpoint` reads and writes tensors.

pub mod family;
pub mod graph;
pub mod profile;
pub mod streamdit;
pub mod tae;
pub mod wan;

pub use family::Family;
pub use profile::{ModelConfig, Profile};
