//! The TAEHV encoder on the CPU (docs/taehv.md, "The encoder") against a naive f64 encoder
//! written from that page in taehv.py's parallel form (every block sees the whole sequence;
//! a MemBlock's memory is the sequence shifted by one frame with a zero frame in front).
//! Then: 4T video frames give T latent frames, the first latent frame is made of video
//! frames 0..4 and nothing later (causal, no first-frame rule), any chunking in multiples of
//! 4 frames gives the bits of encoding at once, an encoder that loses its memories between
//! chunks is caught, and bad inputs get named errors.

mod common;
#[path = "common/taehv_naive.rs"]
mod taehv_naive;

use std::collections::BTreeMap;

use common::{assert_close, Rng};
use streamdit::checkpoint::DType;
use streamdit::decoder::TaehvEncoder;
use streamdit::model::taehv_encoder::TaehvEncoderConfig;
use streamdit::Tensor;
use taehv_naive::{param, relu, Video};

/// The encoder with hidden width 16 (every layer kind still present).
fn tiny() -> TaehvEncoderConfig {
    TaehvEncoderConfig {
        width: 16,
        ..TaehvEncoderConfig::taew2_1()
    }
}

/// Video frames `[frames, h, w, 3]` in `[0, 1]`.
fn video(seed: u64, frames: usize, h: usize, w: usize) -> Vec<f32> {
    Rng::new(seed).f32s(frames * h * w * 3, 0.0, 1.0)
}

/// `conv2d` per frame, `k x k` (from the weight's size), zero padding `(k-1)/2`, stride `s`:
/// output pixel `(y, x)` reads input pixels `(s y + ky - p, s x + kx - p)`.
fn conv(x: &Video, w: &[f64], b: Option<&[f64]>, cout: usize, s: usize) -> Video {
    let cin = x.c;
    let k = ((w.len() / (cout * cin)) as f64).sqrt() as usize;
    assert_eq!(k * k * cout * cin, w.len(), "conv weight size");
    let p = (k as isize - 1) / 2;
    let (ho, wo) = (x.h.div_ceil(s), x.w.div_ceil(s));
    let mut out = Video::zeros(x.t, cout, ho, wo);
    for t in 0..x.t {
        for o in 0..cout {
            for y in 0..ho {
                for xx in 0..wo {
                    let mut acc = b.map_or(0.0, |b| b[o]);
                    for i in 0..cin {
                        for ky in 0..k {
                            let sy = (s * y) as isize + ky as isize - p;
                            if sy < 0 || sy >= x.h as isize {
                                continue;
                            }
                            for kx in 0..k {
                                let sx = (s * xx) as isize + kx as isize - p;
                                if sx < 0 || sx >= x.w as isize {
                                    continue;
                                }
                                acc += w[((o * cin + i) * k + ky) * k + kx]
                                    * x.at(t, i, sy as usize, sx as usize);
                            }
                        }
                    }
                    out.set(t, o, y, xx, acc);
                }
            }
        }
    }
    out
}

/// The naive encoder of docs/taehv.md.
struct Naive<'a> {
    w: &'a BTreeMap<String, Tensor>,
    cfg: TaehvEncoderConfig,
}

impl Naive<'_> {
    fn conv(&self, x: &Video, name: &str, cout: usize, bias: bool, stride: usize) -> Video {
        let w = param(self.w, &format!("{name}.weight"));
        let b = bias.then(|| param(self.w, &format!("{name}.bias")));
        conv(x, &w, b.as_deref(), cout, stride)
    }

    /// `MemBlock(n, n)` at encoder index `i` over the whole sequence.
    fn memblock(&self, x: &Video, i: usize) -> Video {
        let n = x.c;
        let mut cat = Video::zeros(x.t, 2 * n, x.h, x.w);
        for t in 0..x.t {
            for c in 0..n {
                for y in 0..x.h {
                    for xx in 0..x.w {
                        cat.set(t, c, y, xx, x.at(t, c, y, xx));
                        let past = if t == 0 { 0.0 } else { x.at(t - 1, c, y, xx) };
                        cat.set(t, n + c, y, xx, past);
                    }
                }
            }
        }
        let p = format!("encoder.{i}.conv");
        let m = relu(self.conv(&cat, &format!("{p}.0"), n, true, 1));
        let m = relu(self.conv(&m, &format!("{p}.2"), n, true, 1));
        let mut m = self.conv(&m, &format!("{p}.4"), n, true, 1);
        m.v.iter_mut().zip(&x.v).for_each(|(a, b)| *a += b);
        relu(m)
    }

    /// `TPool(n, stride)` at index `i`: `[T, n] -> [T / stride, stride n]` (frame
    /// `stride t + s` in channel block `s`), then a 1x1 conv back to `n`, no bias.
    fn tpool(&self, x: &Video, i: usize, stride: usize) -> Video {
        let n = x.c;
        let mut cat = Video::zeros(x.t / stride, stride * n, x.h, x.w);
        for t in 0..x.t / stride {
            for s in 0..stride {
                for c in 0..n {
                    for y in 0..x.h {
                        for xx in 0..x.w {
                            cat.set(t, s * n + c, y, xx, x.at(stride * t + s, c, y, xx));
                        }
                    }
                }
            }
        }
        self.conv(&cat, &format!("encoder.{i}.conv"), n, false, 1)
    }

    /// Encodes `rgb [T, h, w, 3]` (channels last, `[0, 1]`) into `[T / 4, C, h/8, w/8]`.
    fn encode(&self, rgb: &[f32], t: usize, h: usize, w: usize) -> Vec<f64> {
        let mut x = Video::zeros(t, 3, h, w);
        for f in 0..t {
            for y in 0..h {
                for xx in 0..w {
                    for c in 0..3 {
                        x.set(f, c, y, xx, rgb[((f * h + y) * w + xx) * 3 + c] as f64);
                    }
                }
            }
        }
        let n = self.cfg.width;
        let mut x = relu(self.conv(&x, "encoder.0", n, true, 1));
        for stage in 0..3 {
            let i = 2 + 5 * stage;
            let stride = if self.cfg.time_downscale[stage] { 2 } else { 1 };
            x = self.tpool(&x, i, stride);
            x = self.conv(&x, &format!("encoder.{}", i + 1), n, false, 2);
            for j in 0..3 {
                x = self.memblock(&x, i + 2 + j);
            }
        }
        self.conv(&x, "encoder.17", self.cfg.latent_channels, true, 1)
            .v
    }
}

fn check_against_naive(cfg: &TaehvEncoderConfig, (t, h, w): (usize, usize, usize), seed: u64) {
    let weights = TaehvEncoder::random_weights(cfg, seed, DType::F32).unwrap();
    let rgb = video(seed + 1, t, h, w);
    let mut enc = TaehvEncoder::new(cfg, h, w, &weights).unwrap();
    let got = enc.encode_f32(&rgb).unwrap();
    let c = cfg.latent_channels;
    assert_eq!(
        got.len(),
        t / 4 * c * (h / 8) * (w / 8),
        "T/4 latent frames"
    );
    let tensors = weights.into_tensors();
    let want = Naive {
        w: &tensors,
        cfg: cfg.clone(),
    }
    .encode(&rgb, t, h, w);
    let rms = (want.iter().map(|v| v * v).sum::<f64>() / want.len() as f64).sqrt();
    println!("TAEHV encoder width {} latents rms {rms:.3}", cfg.width);
    assert!(
        rms > 0.05 && rms < 20.0,
        "random latents should be O(1), rms {rms}"
    );
    let err = assert_close("TAEHV encoder vs naive", &got, &want, 1e-4, 1e-4);
    println!("TAEHV encoder width {}: max error {err:.2e}", cfg.width);
}

#[test]
fn tiny_encoder_matches_the_naive_reference() {
    check_against_naive(&tiny(), (12, 16, 24), 11);
}

#[test]
fn taew2_1_encoder_matches_the_naive_reference() {
    check_against_naive(&TaehvEncoderConfig::taew2_1(), (8, 16, 16), 12);
}

#[test]
fn chunked_encoding_equals_whole_and_a_lost_memory_is_caught() {
    let cfg = tiny();
    let (t, h, w) = (16, 16, 16);
    let weights = TaehvEncoder::random_weights(&cfg, 5, DType::F32).unwrap();
    let rgb = video(6, t, h, w);
    let frame = h * w * 3;
    let mut enc = TaehvEncoder::new(&cfg, h, w, &weights).unwrap();
    let whole = enc.encode_f32(&rgb).unwrap();
    for chunks in [vec![4, 4, 4, 4], vec![8, 8], vec![4, 12], vec![12, 4]] {
        enc.reset();
        let mut got = Vec::new();
        let mut at = 0;
        for c in &chunks {
            got.extend(enc.encode_f32(&rgb[at * frame..(at + c) * frame]).unwrap());
            at += c;
        }
        assert!(
            got == whole,
            "chunks {chunks:?} differ from the whole encode"
        );
    }
    // The planted bug: memories zeroed between chunks must change the result.
    enc.reset();
    let mut got = enc.encode_f32(&rgb[..8 * frame]).unwrap();
    enc.forget_context();
    got.extend(enc.encode_f32(&rgb[8 * frame..]).unwrap());
    assert!(got != whole, "a lost memory went unnoticed");
}

#[test]
fn latent_frame_k_reads_video_frames_up_to_4k_plus_3() {
    let cfg = tiny();
    let (t, h, w) = (12, 8, 16);
    let weights = TaehvEncoder::random_weights(&cfg, 7, DType::F32).unwrap();
    let rgb = video(8, t, h, w);
    let frame = h * w * 3;
    let latent = cfg.latent_channels * (h / 8) * (w / 8);
    let mut enc = TaehvEncoder::new(&cfg, h, w, &weights).unwrap();
    let base = enc.encode_f32(&rgb).unwrap();
    for changed in [0, 3, 4, 7, 8, 11] {
        let mut other = rgb.clone();
        other[changed * frame..(changed + 1) * frame]
            .iter_mut()
            .for_each(|v| *v = 1.0 - *v);
        enc.reset();
        let z = enc.encode_f32(&other).unwrap();
        for k in 0..t / 4 {
            let same = z[k * latent..(k + 1) * latent] == base[k * latent..(k + 1) * latent];
            assert_eq!(
                same,
                k < changed / 4,
                "latent {k} after changing video frame {changed}"
            );
        }
    }
}

#[test]
fn bytes_map_to_the_unit_range() {
    let cfg = tiny();
    let weights = TaehvEncoder::random_weights(&cfg, 9, DType::F32).unwrap();
    let mut rng = Rng::new(10);
    let bytes: Vec<u8> = (0..4 * 8 * 8 * 3).map(|_| rng.below(256) as u8).collect();
    let unit: Vec<f32> = bytes.iter().map(|&b| f32::from(b) / 255.0).collect();
    let mut enc = TaehvEncoder::new(&cfg, 8, 8, &weights).unwrap();
    let a = enc.encode_rgb(&bytes).unwrap();
    enc.reset();
    let b = enc.encode_f32(&unit).unwrap();
    assert!(a == b);
}

#[test]
fn bad_inputs_get_named_errors() {
    let cfg = tiny();
    let weights = TaehvEncoder::random_weights(&cfg, 1, DType::F32).unwrap();
    let mut enc = TaehvEncoder::new(&cfg, 8, 8, &weights).unwrap();
    let frame = 8 * 8 * 3;
    let e = enc
        .encode_f32(&vec![0.5; 3 * frame])
        .unwrap_err()
        .to_string();
    assert!(e.contains("multiple of 4 video frames"), "{e}");
    let mut x = vec![0.5; 4 * frame];
    x[17] = f32::NAN;
    let e = enc.encode_f32(&x).unwrap_err().to_string();
    assert!(e.contains("finite"), "{e}");
    assert!(enc.encode_f32(&[]).unwrap().is_empty());
    let e = TaehvEncoder::new(&cfg, 12, 8, &weights)
        .unwrap_err()
        .to_string();
    assert!(e.contains("multiples of 8"), "{e}");
    let mut missing = TaehvEncoder::random_weights(&cfg, 1, DType::F32)
        .unwrap()
        .into_tensors();
    missing.remove("encoder.12.conv.weight");
    let missing = streamdit::checkpoint::Weights::from_tensors("test", missing);
    let e = TaehvEncoder::new(&cfg, 8, 8, &missing)
        .unwrap_err()
        .to_string();
    assert!(e.contains("encoder.12.conv.weight"), "{e}");
}
