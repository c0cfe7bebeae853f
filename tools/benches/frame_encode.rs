//! The cost of putting one video frame on the wire, for the transport choice of `streamdit
//! serve`: a baseline JPEG (jpeg-encoder, quality 85, 4:2:0, the server's default) against a
//! raw RGB8 message (the 48-byte frame header and the pixels copied once), at 128x128
//! (`tiny`) and 512x512 (`streamdit-4b`). Content: a frame of `tiny`'s TAE decoder on random
//! weights (and its bilinear 4x upscale for 512x512), and uniform noise (JPEG's worst case).
//! Each case prints its bytes per frame once. Run with `cargo bench -p streamdit-tools
//! --bench frame_encode`.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use streamdit::checkpoint::DType;
use streamdit::{BackendKind, DecoderKind, Engine, EngineParams, Profile, StreamParams};

const QUALITY: u8 = 85;

fn tiny_frame() -> Vec<u8> {
    let engine = Engine::new(EngineParams {
        profile: Profile::builtin("tiny").unwrap(),
        weights: streamdit::WeightsSource::Random {
            seed: 0,
            dtype: DType::F16,
        },
        backend: BackendKind::Cpu,
    })
    .unwrap();
    let mut s = engine
        .stream(StreamParams {
            prompt: "a red fox running through snow".into(),
            decoder: DecoderKind::Tae,
            ..Default::default()
        })
        .unwrap();
    let mut rgb = Vec::new();
    s.next_frames(&mut rgb).unwrap();
    // The last frame of the first chunk.
    rgb[rgb.len() - 128 * 128 * 3..].to_vec()
}

/// Bilinear upscale of an RGB8 `w x w` frame by `k`.
fn upscale(src: &[u8], w: usize, k: usize) -> Vec<u8> {
    let n = w * k;
    let mut out = vec![0u8; n * n * 3];
    for y in 0..n {
        let fy = ((y as f32 + 0.5) / k as f32 - 0.5).clamp(0.0, (w - 1) as f32);
        let (y0, ty) = (fy.floor() as usize, fy.fract());
        let y1 = (y0 + 1).min(w - 1);
        for x in 0..n {
            let fx = ((x as f32 + 0.5) / k as f32 - 0.5).clamp(0.0, (w - 1) as f32);
            let (x0, tx) = (fx.floor() as usize, fx.fract());
            let x1 = (x0 + 1).min(w - 1);
            for c in 0..3 {
                let p = |yy: usize, xx: usize| src[(yy * w + xx) * 3 + c] as f32;
                let top = p(y0, x0) * (1.0 - tx) + p(y0, x1) * tx;
                let bottom = p(y1, x0) * (1.0 - tx) + p(y1, x1) * tx;
                out[(y * n + x) * 3 + c] = (top * (1.0 - ty) + bottom * ty).round() as u8;
            }
        }
    }
    out
}

/// Uniform noise from xorshift64.
fn noise(n: usize) -> Vec<u8> {
    let mut s = 0x9E37_79B9_7F4A_7C15u64;
    (0..n * n * 3)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 56) as u8
        })
        .collect()
}

fn jpeg(rgb: &[u8], n: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(n * n / 4);
    jpeg_encoder::Encoder::new(&mut out, QUALITY)
        .encode(rgb, n as u16, n as u16, jpeg_encoder::ColorType::Rgb)
        .unwrap();
    out
}

/// What the server builds for a raw frame: the header and the pixels in one buffer.
fn raw_message(rgb: &[u8]) -> Vec<u8> {
    let mut b = Vec::with_capacity(48 + rgb.len());
    b.extend_from_slice(&[0u8; 48]);
    b.extend_from_slice(rgb);
    b
}

fn frame_encode(c: &mut Criterion) {
    let small = tiny_frame();
    let cases = [
        ("tae", 128, small.clone()),
        ("tae_upscaled", 512, upscale(&small, 128, 4)),
        ("noise", 128, noise(128)),
        ("noise", 512, noise(512)),
    ];
    let mut group = c.benchmark_group("frame_encode");
    group.sample_size(30);
    for (content, n, rgb) in &cases {
        let j = jpeg(rgb, *n);
        eprintln!(
            "frame_encode {content} {n}x{n}: JPEG q{QUALITY} {} bytes, raw {} bytes ({:.1}x)",
            j.len(),
            rgb.len() + 48,
            (rgb.len() + 48) as f64 / j.len() as f64
        );
        group.throughput(Throughput::Elements((n * n) as u64));
        group.bench_function(format!("jpeg_q{QUALITY}/{content}/{n}"), |b| {
            b.iter(|| jpeg(rgb, *n))
        });
        group.bench_function(format!("raw/{content}/{n}"), |b| {
            b.iter(|| raw_message(rgb))
        });
    }
    group.finish();
}

criterion_group!(benches, frame_encode);
criterion_main!(benches);
