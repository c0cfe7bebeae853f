//! The TAE encoder of video-to-video on the CPU (`../shared/TAE_SPEC.md`, "Encoder";
//! docs/tae.md) against an independent naive f64 implementation written here from the spec
//! (whole sequence, replicate padding done the obvious way, channels first, direct loops).
//! Then: encoding chunk by chunk equals encoding at once for several chunkings, a planted
//! missing cache breaks that, random weights give O(1) latents, and missing or mis-shaped
//! `encoder.*` tensors are named.

mod common;

use common::tae_naive::{tiny_dec, write_checkpoint, Naive, A, C};
use common::{assert_close, Rng};
use streamdit::checkpoint::{DType, Weights};
use streamdit::decoder::TaeEncoder;
use streamdit::model::tae::TaeGraph;
use streamdit::Tensor;

impl Naive<'_> {
    /// `DownS`: pad one zero column right and one zero row at the bottom, 3x3 stride 2.
    fn downs(&self, x: &A, name: &str) -> A {
        let w = self.p(&format!("{name}.weight"));
        let b = self.p(&format!("{name}.bias"));
        let c = x.c;
        let (h, wd) = (x.h / 2, x.w / 2);
        let mut out = A {
            h,
            w: wd,
            v: vec![0.0; x.t * c * h * wd],
            ..*x
        };
        for t in 0..x.t {
            for o in 0..c {
                for y in 0..h {
                    for xx in 0..wd {
                        let mut acc = b[o];
                        for i in 0..c {
                            for ky in 0..3 {
                                for kx in 0..3 {
                                    let (sy, sx) = (2 * y + ky, 2 * xx + kx);
                                    if sy < x.h && sx < x.w {
                                        acc +=
                                            w[((o * c + i) * 3 + ky) * 3 + kx] * x.at(t, i, sy, sx);
                                    }
                                }
                            }
                        }
                        out.v[((t * c + o) * h + y) * wd + xx] = acc;
                    }
                }
            }
        }
        out
    }

    /// `DownT`: `y[t] = W0 x[2t-1] + W1 x[2t] + W2 x[2t+1] + b`, `x[-1] = x[0]`.
    fn downt(&self, x: &A, name: &str) -> A {
        let w = self.p(&format!("{name}.weight"));
        let b = self.p(&format!("{name}.bias"));
        let c = x.c;
        let hw = x.h * x.w;
        let t_out = x.t / 2;
        let mut out = A {
            t: t_out,
            v: vec![0.0; t_out * c * hw],
            ..*x
        };
        for t in 0..t_out {
            for o in 0..c {
                for p in 0..hw {
                    let mut acc = b[o];
                    for i in 0..c {
                        for j in 0..3 {
                            let src = (2 * t + j).max(1) - 1;
                            acc += w[(o * c + i) * 3 + j] * x.v[(src * c + i) * hw + p];
                        }
                    }
                    out.v[(t * c + o) * hw + p] = acc;
                }
            }
        }
        out
    }

    /// The spec's encoder over the whole video `rgb [4T, H, W, 3]` (bytes); returns
    /// `[T, C, H/8, W/8]`.
    fn encode(
        &self,
        rgb: &[u8],
        frames: usize,
        h: usize,
        w: usize,
        widths: [usize; 4],
    ) -> Vec<f64> {
        let [c0, c1, c2, c3] = widths;
        let mut x = A {
            t: frames,
            c: 3,
            h,
            w,
            v: vec![0.0; rgb.len()],
        };
        for t in 0..frames {
            for p in 0..h * w {
                for ch in 0..3 {
                    x.v[(t * 3 + ch) * h * w + p] =
                        rgb[(t * h * w + p) * 3 + ch] as f64 / 127.5 - 1.0;
                }
            }
        }
        x = self.conv2d(&x, "conv_in");
        for (i, cout, downs, downt) in [
            (0, c3, true, false),
            (1, c2, true, true),
            (2, c1, true, true),
            (3, c0, false, false),
        ] {
            x = self.res(&x, &format!("down.{i}.res.0"), cout);
            x = self.res(&x, &format!("down.{i}.res.1"), cout);
            if downs {
                x = self.downs(&x, &format!("down.{i}.downs"));
            }
            if downt {
                x = self.downt(&x, &format!("down.{i}.downt"));
            }
        }
        x = self.res(&x, "mid.res.0", c0);
        x = self.attn(&x, "mid.attn");
        x = self.res(&x, "mid.res.1", c0);
        x = self.gn(&x, "norm_out", true);
        x = self.conv2d(&x, "conv_out");
        x = self.conv_t(&x, "conv_out_t");
        assert_eq!((x.t, x.c, x.h, x.w), (frames / 4, C, h / 8, w / 8));
        x.v
    }
}

fn random_weights(seed: u64) -> Weights {
    Weights::random_encoder(&tiny_dec(), C, seed, DType::F32).unwrap()
}

/// The encoder for video frames of `8 lh x 8 lw`.
fn encoder(weights: &Weights, lh: usize, lw: usize) -> TaeEncoder {
    TaeEncoder::new(TaeGraph::encoder(&tiny_dec(), C, lh, lw).unwrap(), weights).unwrap()
}

/// Random video bytes with some spatial and temporal structure (a smooth gradient that
/// moves, plus noise), never constant.
fn video(rng: &mut Rng, frames: usize, h: usize, w: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(frames * h * w * 3);
    for t in 0..frames {
        for y in 0..h {
            for x in 0..w {
                for c in 0..3 {
                    let base =
                        128.0 + 60.0 * ((x + 2 * t) as f64 * 0.4 + c as f64 + y as f64 * 0.3).sin();
                    out.push((base + rng.uniform(-40.0, 40.0)).clamp(0.0, 255.0) as u8);
                }
            }
        }
    }
    out
}

#[test]
fn matches_naive_reference() {
    let (t, lh, lw) = (3, 2, 3);
    let weights = random_weights(17);
    let rgb = video(&mut Rng::new(5), 4 * t, 8 * lh, 8 * lw);
    let mut enc = encoder(&weights, lh, lw);
    let got = enc.encode_rgb(&rgb).unwrap();
    let tensors = weights.into_tensors();
    let naive = Naive {
        w: &tensors,
        groups: 8,
        head_dim: 64,
        prefix: "encoder",
    };
    let want = naive.encode(&rgb, 4 * t, 8 * lh, 8 * lw, [64, 64, 32, 16]);
    assert_eq!(got.len(), t * C * lh * lw);
    let rms = (want.iter().map(|v| v * v).sum::<f64>() / want.len() as f64).sqrt();
    println!("reference latent rms {rms:.3}");
    assert!((0.2..5.0).contains(&rms), "latent rms {rms}");
    assert_close("tiny TAE encoder vs naive", &got, &want, 1e-4, 1e-4);
}

/// Chunks of any multiple of 4 video frames give the whole-sequence latents, up to the
/// GEMMs' summation order over a different number of rows (measured about 2e-7; the bound
/// is 1e-5 + 1e-5 |ref|); `reset` restarts the stream bit for bit.
#[test]
fn chunked_equals_whole_sequence() {
    let (t, lh, lw) = (5, 2, 2);
    let weights = random_weights(3);
    let (h, w) = (8 * lh, 8 * lw);
    let rgb = video(&mut Rng::new(9), 4 * t, h, w);
    let frame = h * w * 3;
    let mut enc = encoder(&weights, lh, lw);
    let whole = enc.encode_rgb(&rgb).unwrap();
    let want: Vec<f64> = whole.iter().map(|&v| f64::from(v)).collect();
    for sizes in [vec![8, 8, 4], vec![4; 5], vec![4, 12, 4], vec![16, 4]] {
        enc.reset();
        let mut got = Vec::new();
        let mut at = 0;
        for n in &sizes {
            got.extend(enc.encode_rgb(&rgb[at * frame..(at + n) * frame]).unwrap());
            at += n;
        }
        assert_eq!(got.len(), whole.len());
        assert_close(
            &format!("chunks {sizes:?} vs whole"),
            &got,
            &want,
            1e-5,
            1e-5,
        );
    }
    // Without a reset the caches carry on: the same frames encode differently.
    let again = enc.encode_rgb(&rgb[..4 * frame]).unwrap();
    enc.reset();
    let fresh = enc.encode_rgb(&rgb[..4 * frame]).unwrap();
    enc.reset();
    assert_eq!(
        fresh,
        enc.encode_rgb(&rgb[..4 * frame]).unwrap(),
        "reset restarts the stream"
    );
    let moved = again
        .iter()
        .zip(&fresh)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(
        moved > 1e-3,
        "the caches must carry context between chunks ({moved:e})"
    );
}

/// A planted bug: forgetting one temporal op's cache between chunks (the cache of a ConvT,
/// of each DownT, of conv_out_t) makes the chunked latents differ from the whole ones.
#[test]
fn a_missing_cache_breaks_chunking() {
    let (t, lh, lw) = (2, 2, 2);
    let weights = random_weights(8);
    let (h, w) = (8 * lh, 8 * lw);
    let rgb = video(&mut Rng::new(4), 4 * t, h, w);
    let half = 4 * h * w * 3;
    let mut enc = encoder(&weights, lh, lw);
    let whole = enc.encode_rgb(&rgb).unwrap();
    let caches = enc.graph().caches;
    for index in [0, 5, caches - 3, caches - 2, caches - 1] {
        enc.reset();
        let mut got = enc.encode_rgb(&rgb[..half]).unwrap();
        enc.forget_cache(index);
        got.extend(enc.encode_rgb(&rgb[half..]).unwrap());
        let diff = got[whole.len() / 2..]
            .iter()
            .zip(&whole[whole.len() / 2..])
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        println!("cache {index} forgotten: max abs diff {diff:.3e}");
        assert!(
            diff > 1e-3,
            "forgetting cache {index} went unnoticed ({diff:e})"
        );
        let first: Vec<f64> = whole[..whole.len() / 2]
            .iter()
            .map(|&v| f64::from(v))
            .collect();
        assert_close("first chunk", &got[..whole.len() / 2], &first, 1e-5, 1e-5);
    }
}

#[test]
fn rejects_partial_chunks_and_names_tensors() {
    let weights = random_weights(4);
    let mut enc = encoder(&weights, 1, 1);
    let err = enc
        .encode_rgb(&[7u8; 3 * 8 * 8 * 3])
        .unwrap_err()
        .to_string();
    assert!(err.contains("multiple of 4 video frames of 8x8x3"), "{err}");
    assert!(enc.encode_rgb(&[]).unwrap().is_empty());
    let err = enc
        .encode_f32(&[f32::NAN; 4 * 8 * 8 * 3])
        .unwrap_err()
        .to_string();
    assert!(err.contains("finite"), "{err}");
    // A decoder-only checkpoint: the first encoder tensor is named.
    let graph = || TaeGraph::encoder(&tiny_dec(), C, 1, 1).unwrap();
    let dec_only = Weights::random_decoder(&tiny_dec(), C, 1, DType::F32).unwrap();
    let msg = TaeEncoder::new(graph(), &dec_only).unwrap_err().to_string();
    assert!(msg.contains("encoder.conv_in.weight"), "{msg}");
    // A decoder op list is refused by the encoder.
    let msg = TaeEncoder::new(TaeGraph::new(&tiny_dec(), C, 1, 1).unwrap(), &weights)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("TaeGraph::encoder"), "{msg}");
    // A wrong shape, from a file.
    let mut t = weights.into_tensors();
    t.insert(
        "encoder.down.1.downt.weight".into(),
        Tensor::zeros(vec![32, 32, 2]),
    );
    let path = write_checkpoint("encoder", &t);
    let msg = Weights::load_encoder(&path, &tiny_dec(), C)
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("encoder.down.1.downt.weight")
            && msg.contains("[32, 32, 3]")
            && msg.contains("[32, 32, 2]"),
        "{msg}"
    );
    t.insert(
        "encoder.down.1.downt.weight".into(),
        Tensor::zeros(vec![32, 32, 3]),
    );
    t.remove("encoder.mid.attn.v.bias");
    write_checkpoint("encoder", &t);
    let msg = Weights::load_encoder(&path, &tiny_dec(), C)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("encoder.mid.attn.v.bias"), "{msg}");
    std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
}

/// The host memory estimate of video-to-video (`memory::host::encoder_memory`) counts what
/// the encoder really holds: its weights as loaded, and its causal caches after a push of
/// 16 frames and after one of 4 (by allocation capacity, so a cache that kept a whole push
/// between chunks would be caught). A profile's estimate is the same function at one
/// buffer's push, and a video-to-video stream needs that much more than text-to-video.
#[test]
fn host_memory_estimate_counts_weights_and_caches() {
    use streamdit::inspect::{encoder_memory, video_to_video_memory};
    let (lh, lw) = (2, 3);
    let weights = random_weights(4);
    let loaded: usize = weights.iter().map(|(_, t)| t.numel() * 4).sum();
    let graph = TaeGraph::encoder(&tiny_dec(), C, lh, lw).unwrap();
    let est = encoder_memory(&graph, 16, 4);
    assert_eq!(est.weight_bytes, loaded as u128, "weights");
    let mut enc = encoder(&weights, lh, lw);
    assert_eq!(enc.cache_bytes(), 0, "no cache before the first push");
    let (h, w) = (8 * lh, 8 * lw);
    let frame = h * w * 3;
    let rgb = video(&mut Rng::new(2), 20, h, w);
    enc.encode_rgb(&rgb[..16 * frame]).unwrap();
    assert_eq!(
        enc.cache_bytes() as u128,
        est.cache_bytes,
        "after 16 frames"
    );
    enc.encode_rgb(&rgb[16 * frame..]).unwrap();
    assert_eq!(enc.cache_bytes() as u128, est.cache_bytes, "after 4 more");
    // The push itself: at least its f32 input and working copy, and the widest activation
    // (conv_in's output over 16 frames at full size, 16 channels).
    assert!(est.activation_bytes >= (2 * 16 * frame + 16 * h * w * 16) as u128 * 4);
    assert_eq!(est.queue_bytes, (4 * C * lh * lw * 4 + 3 * frame) as u128);
    assert_eq!(
        est.total(),
        est.weight_bytes + est.cache_bytes + est.activation_bytes + est.queue_bytes
    );

    let tiny = streamdit::Profile::builtin("tiny").unwrap();
    let m = &tiny.model;
    let g = TaeGraph::encoder(
        &tiny.decoder,
        m.latent_channels,
        m.latent_height,
        m.latent_width,
    )
    .unwrap();
    let v2v = video_to_video_memory(&tiny).unwrap();
    assert_eq!(
        v2v,
        encoder_memory(&g, 4 * m.latent_frames, m.latent_frames)
    );
    let tiny_weights =
        Weights::random_encoder(&tiny.decoder, m.latent_channels, 1, DType::F32).unwrap();
    let loaded: usize = tiny_weights.iter().map(|(_, t)| t.numel() * 4).sum();
    assert_eq!(v2v.weight_bytes, loaded as u128, "tiny's encoder weights");
    assert!(v2v.cache_bytes > 0 && v2v.activation_bytes > v2v.cache_bytes);
}
