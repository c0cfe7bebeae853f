//! What the Wan video-to-video tests share: a `wan-tiny` engine on the CPU with random f32
//! weights, and a fixed random text condition (so no text encoder runs).

use super::Rng;
use streamdit::{
    BackendKind, DType, Engine, EngineParams, Profile, Tensor, TextInput, WeightsSource,
};

/// The weights' seed of [`engine`].
pub const SEED: u64 = 7;

/// `wan-tiny` on the CPU backend with random f32 weights of seed [`SEED`].
pub fn engine() -> Engine {
    Engine::new(EngineParams {
        profile: Profile::builtin("wan-tiny").unwrap(),
        weights: WeightsSource::Random {
            seed: SEED,
            dtype: DType::F32,
        },
        backend: BackendKind::Cpu,
    })
    .unwrap()
}

/// A random `[8, 32]` text condition with every token kept (wan-tiny's text length and width).
pub fn text() -> TextInput {
    let mut rng = Rng::new(3);
    TextInput {
        text: Tensor::new(vec![8, 32], rng.f32s(8 * 32, -1.0, 1.0)).unwrap(),
        mask: vec![1.0; 8],
    }
}
