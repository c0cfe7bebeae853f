//! CPU backend benchmarks: one `tiny` model call, its largest matrix product, a mid-size
//! matrix product, and window self-attention at the `tiny` shape and a mid-size one.
//! Throughput is in FLOPs (criterion's "elements"). Run with `cargo bench --bench cpu`.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use streamdit::checkpoint::DType;
use streamdit::cost::window_sum_sq;
use streamdit::math as ops;
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

/// Deterministic values in [-1, 1).
fn filled(n: usize, mult: usize) -> Vec<f32> {
    (0..n)
        .map(|i| ((i * mult) % 1000) as f32 / 500.0 - 1.0)
        .collect()
}

/// A mid-size product, 1024 tokens x 1024 -> 4096 (4.3 GFLOP): a wide block's FFN
/// up-projection on a small buffer.
fn mid_gemm(c: &mut Criterion) {
    let (t, k, n) = (1024, 1024, 4096);
    let (a, w) = (filled(t * k, 7919), filled(n * k, 104_729));
    let mut out = vec![0.0; t * n];
    let mut group = c.benchmark_group("cpu");
    group.sample_size(10);
    group.throughput(Throughput::Elements((2 * t * k * n) as u64));
    group.bench_function("linear_1024x1024x4096", |b| {
        b.iter(|| ops::linear(&a, &w, None, t, k, n, &mut out))
    });
    group.finish();
}

/// Window self-attention on one branch: `tiny`'s shifted block, and a mid-size grid of
/// 1024 tokens in 256-token windows at width 1024 (8 heads of 128).
fn window_attention(c: &mut Criterion) {
    let tiny = Profile::builtin("tiny").unwrap().model;
    let shapes = [
        (
            "tiny",
            tiny.token_grid(),
            tiny.window,
            tiny.window_shift(1),
            tiny.heads,
            tiny.dim,
        ),
        ("mid", [4, 16, 16], [4, 8, 8], [0, 4, 4], 8, 1024),
    ];
    let mut group = c.benchmark_group("cpu");
    group.sample_size(10);
    for (name, grid, window, shift, heads, d) in shapes {
        let tokens: usize = grid.iter().product();
        let qkv = filled(tokens * 3 * d, 7919);
        let mut out = vec![0.0; tokens * d];
        // QK^T and PV: 2 * 2 * n^2 * d FLOPs per window of n tokens (all heads).
        group.throughput(Throughput::Elements(
            4 * window_sum_sq(grid, window, shift) * d as u64,
        ));
        let label = format!("window_attention_{name}_{tokens}tok_d{d}_h{heads}");
        group.bench_function(label, |b| {
            b.iter(|| ops::window_attention(&qkv, 1, grid, window, shift, heads, d, &mut out))
        });
    }
    group.finish();
}

criterion_group!(benches, tiny_model_call, mid_gemm, window_attention);
criterion_main!(benches);
