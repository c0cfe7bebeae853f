//! StreamDiT as a model family: its checkpoint schema (tensor names, shapes and random
//! initialisation) and the builder of its static graph. Its configuration is the profile's
//! `[model]` section ([`crate::model::profile::ModelConfig`]) and its sampler the moving
//! buffer of [`crate::stream::schedule`].

pub mod graph;
pub mod schema;
