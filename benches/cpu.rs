//! CPU backend benchmarks: one `tiny` model call, and its largest matrix product.
//! Run with `cargo bench --bench cpu`.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use streamdit::backend::cpu::ops;
use streamdit::model::checkpoint::DType;
use streamdit::rng::noise_frame;
use streamdit::text::stack;
use streamdit::{BackendKind, Engine, EngineParams, Profile, WeightsSource};

fn tiny_model_call(c: &mut Criterion) {
    let engine = Engine::new(EngineParams {
        profile: Profile::builtin("tiny").unwrap(),
        weights: WeightsSource::Random {
            seed: 0,
            dtype: DType::F16,
        },
        backend: BackendKind::Cpu,
    })
    .unwrap();
    let m = engine.profile().model.clone();
    let mut backend = engine.create_backend(1.0).unwrap();
    let text = engine.encode_prompt("a benchmark").unwrap();
    let (t, mask) = stack(&[&text]);
    backend.set_text(&t, &mask).unwrap();
    let mut x = vec![0.0; m.buffer_elems()];
    for (k, frame) in x.chunks_mut(m.frame_elems()).enumerate() {
        noise_frame(1, k as u64, frame);
    }
    let tau: Vec<f32> = (0..m.latent_frames).map(|f| f as f32 / 8.0).collect();
    let mut v = vec![0.0; x.len()];
    let mut group = c.benchmark_group("cpu");
    group.sample_size(20);
    group.bench_function("tiny_model_call", |b| {
        b.iter(|| backend.forward(&x, &tau, &mut v).unwrap())
    });
    // The FFN up-projection of `tiny`: 512 tokens x 256 -> 1536.
    let (tk, k, n) = (m.tokens(), m.dim, 2 * m.ffn_dim);
    let a: Vec<f32> = (0..tk * k)
        .map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0)
        .collect();
    let w: Vec<f32> = (0..n * k)
        .map(|i| ((i * 104_729) % 1000) as f32 / 500.0 - 1.0)
        .collect();
    let mut out = vec![0.0; tk * n];
    group.throughput(Throughput::Elements((2 * tk * k * n) as u64));
    group.bench_function("linear_512x256x1536", |b| {
        b.iter(|| ops::linear(&a, &w, None, tk, k, n, &mut out))
    });
    group.finish();
}

criterion_group!(benches, tiny_model_call);
criterion_main!(benches);
