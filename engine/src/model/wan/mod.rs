//! The Wan2.1 causal streaming family (Self-Forcing, CausVid, LongLive; docs/wan.md) as a
//! model family: its profile section ([`config`]), its checkpoint schema in the original
//! Wan names with the names a loader accepts ([`schema`]), and the builder of the static
//! graph of one call over a KV cache ([`graph`]). Its sampler, the chunk-by-chunk causal
//! few-step loop, is `crate::stream::causal`.

pub mod config;
pub mod graph;
pub mod schema;

pub use config::{LoraConfig, RopePositions, WanConfig, WanDecoder};
pub use graph::WanGraph;
