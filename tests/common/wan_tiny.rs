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

/// docs/wan.md's SDEdit rule driven through a CPU backend of its own (wan-tiny, weights of
/// seed [`SEED`], [`text`], noise seed 5): chunk `k` starts at step `j` (the first with
/// `sigma_j <= strength`) from `(1 - sigma_j) z_k + sigma_j eps_j`, where `encode(k)` gives
/// the input latents `z_k`. Returns each chunk's clean latents and `j`.
pub fn sdedit_reference(
    strength: f64,
    chunks: usize,
    encode: impl FnMut(usize) -> Vec<f32>,
) -> (Vec<Vec<f32>>, usize) {
    let p = Profile::builtin("wan-tiny").unwrap();
    let (timesteps, sigmas) = p.wan().unwrap().schedule();
    let j = sigmas
        .iter()
        .position(|&s| s <= strength)
        .unwrap_or(sigmas.len() - 1);
    let out = sdedit_levels_reference(chunks, |_| (j, sigmas[j], timesteps[j]), encode);
    (out, j)
}

/// The same rule with each chunk's own start: `start(k) = (j, sigma, timestep)` starts chunk
/// `k` at step `j` from `(1 - sigma) z_k + sigma eps_j` with its first call at `sigma` and
/// `timestep` (adaptive noise, docs/wan.md "Adaptive noise"), then steps `j+1 ..` as listed.
pub fn sdedit_levels_reference(
    chunks: usize,
    start: impl Fn(usize) -> (usize, f64, f64),
    mut encode: impl FnMut(usize) -> Vec<f32>,
) -> Vec<Vec<f32>> {
    use std::sync::Arc;
    use streamdit::backend::cpu::CpuCausal;
    use streamdit::checkpoint::wan::random_wan;
    use streamdit::rng::wan_noise_frame;
    use streamdit::CausalBackend;

    let p = Profile::builtin("wan-tiny").unwrap();
    let w = p.wan().unwrap().clone();
    let (timesteps, sigmas) = w.schedule();
    let mut b = CpuCausal::new(&w, Arc::new(random_wan(&w, SEED, DType::F32))).unwrap();
    let t = text();
    b.set_text(&t.text, &t.mask).unwrap();
    let (c, fe) = (w.chunk_frames, w.frame_elems());
    let noise = |f0: u64, step: usize| {
        let mut z = vec![0.0; c * fe];
        for (i, fr) in z.chunks_mut(fe).enumerate() {
            wan_noise_frame(5, f0 + i as u64, step as u32, fr);
        }
        z
    };
    let mut out = Vec::new();
    for k in 0..chunks {
        let f0 = (k * c) as u64;
        let z = encode(k);
        assert_eq!(z.len(), c * fe);
        let held = b.cached_frames().len();
        if held + c > w.window {
            b.evict(held + c - w.window).unwrap();
        }
        let (j, first_sigma, first_t) = start(k);
        let sj = first_sigma as f32;
        let mut x: Vec<f32> = z
            .iter()
            .zip(noise(f0, j))
            .map(|(&z, e)| if sj < 1.0 { (1.0 - sj) * z + sj * e } else { e })
            .collect();
        let mut x0 = vec![0.0; c * fe];
        let mut v = vec![0.0; c * fe];
        for s in j..sigmas.len() {
            let (sigma, t) = match s == j {
                true => (first_sigma, first_t),
                false => (sigmas[s], timesteps[s]),
            };
            b.denoise(&x, &vec![t as f32; c], f0, &mut v).unwrap();
            for ((o, &x), &v) in x0.iter_mut().zip(&x).zip(&v) {
                *o = (f64::from(x) - sigma * f64::from(v)) as f32;
            }
            if s + 1 < sigmas.len() {
                let sn = sigmas[s + 1] as f32;
                let eps = noise(f0, s + 1);
                for ((x, &x0), &e) in x.iter_mut().zip(&x0).zip(&eps) {
                    *x = (1.0 - sn) * x0 + sn * e;
                }
            }
        }
        b.commit(&x0, w.context_timestep as f32, f0).unwrap();
        out.push(x0);
    }
    out
}
