//! The TAE encoder of video-to-video on the CPU (`../shared/TAE_SPEC.md`, "Encoder";
//! docs/tae.md) against an independent naive f64 implementation written here from the spec
//! (whole sequence, replicate padding done the obvious way, channels first, direct loops).
//! Then: encoding chunk by chunk equals encoding at once for several chunkings, a planted
//! missing cache breaks that, random weights give O(1) latents, and missing or mis-shaped
//! `encoder.*` tensors are named.

mod common;

use std::collections::BTreeMap;

use common::{assert_close, Rng};
use streamdit::checkpoint::{self, DType, Weights};
use streamdit::decoder::TaeEncoder;
use streamdit::model::profile::DecoderConfig;
use streamdit::model::tae::TaeGraph;
use streamdit::Tensor;

/// `tiny`'s decoder widths (64, 64, 32, 16), 8 groups: the encoder shares them.
fn tiny_dec() -> DecoderConfig {
    DecoderConfig {
        widths: vec![64, 64, 32, 16],
        groups: 8,
    }
}

const C: usize = 8;

/// One activation of the naive reference: `[T][Ch][H][W]`.
#[derive(Clone)]
struct A {
    t: usize,
    c: usize,
    h: usize,
    w: usize,
    v: Vec<f64>,
}

impl A {
    fn at(&self, t: usize, c: usize, y: usize, x: usize) -> f64 {
        self.v[((t * self.c + c) * self.h + y) * self.w + x]
    }
}

struct Naive<'a> {
    w: &'a BTreeMap<String, Tensor>,
    groups: usize,
    head_dim: usize,
}

impl Naive<'_> {
    fn p(&self, name: &str) -> Vec<f64> {
        let t = &self.w[&format!("encoder.{name}")];
        t.data.iter().map(|&v| v as f64).collect()
    }

    fn conv2d(&self, x: &A, name: &str) -> A {
        let w = self.p(&format!("{name}.weight"));
        let b = self.p(&format!("{name}.bias"));
        let co = b.len();
        let ci = x.c;
        assert_eq!(w.len(), co * ci * 9);
        let mut out = A {
            c: co,
            v: vec![0.0; x.t * co * x.h * x.w],
            ..*x
        };
        for t in 0..x.t {
            for o in 0..co {
                let plane = &mut out.v[(t * co + o) * x.h * x.w..][..x.h * x.w];
                plane.iter_mut().for_each(|v| *v = b[o]);
                for i in 0..ci {
                    for ky in 0..3 {
                        for kx in 0..3 {
                            let wv = w[((o * ci + i) * 3 + ky) * 3 + kx];
                            for y in 0..x.h {
                                let sy = y as isize + ky as isize - 1;
                                if sy < 0 || sy >= x.h as isize {
                                    continue;
                                }
                                for xx in 0..x.w {
                                    let sx = xx as isize + kx as isize - 1;
                                    if sx < 0 || sx >= x.w as isize {
                                        continue;
                                    }
                                    plane[y * x.w + xx] +=
                                        wv * x.at(t, i, sy as usize, sx as usize);
                                }
                            }
                        }
                    }
                }
            }
        }
        out
    }

    /// Causal temporal conv over the whole sequence, frames before 0 = frame 0.
    fn conv_t(&self, x: &A, name: &str) -> A {
        let w = self.p(&format!("{name}.weight"));
        let b = self.p(&format!("{name}.bias"));
        let c = x.c;
        let hw = x.h * x.w;
        let mut out = A {
            v: vec![0.0; x.v.len()],
            ..*x
        };
        for t in 0..x.t {
            for o in 0..c {
                for p in 0..hw {
                    let mut acc = b[o];
                    for i in 0..c {
                        for j in 0..3 {
                            let src = (t as isize - 2 + j as isize).max(0) as usize;
                            acc += w[(o * c + i) * 3 + j] * x.v[(src * c + i) * hw + p];
                        }
                    }
                    out.v[(t * c + o) * hw + p] = acc;
                }
            }
        }
        out
    }

    fn gn(&self, x: &A, name: &str, silu: bool) -> A {
        let g = self.p(&format!("{name}.weight"));
        let b = self.p(&format!("{name}.bias"));
        let cg = x.c / self.groups;
        let hw = x.h * x.w;
        let mut out = x.clone();
        for t in 0..x.t {
            for grp in 0..self.groups {
                let idx = |c: usize, p: usize| (t * x.c + c) * hw + p;
                let n = (cg * hw) as f64;
                let mut mean = 0.0;
                for c in grp * cg..(grp + 1) * cg {
                    for p in 0..hw {
                        mean += x.v[idx(c, p)];
                    }
                }
                mean /= n;
                let mut var = 0.0;
                for c in grp * cg..(grp + 1) * cg {
                    for p in 0..hw {
                        var += (x.v[idx(c, p)] - mean).powi(2);
                    }
                }
                var /= n;
                for c in grp * cg..(grp + 1) * cg {
                    for p in 0..hw {
                        let y = (x.v[idx(c, p)] - mean) / (var + 1e-6).sqrt() * g[c] + b[c];
                        out.v[idx(c, p)] = if silu { y / (1.0 + (-y).exp()) } else { y };
                    }
                }
            }
        }
        out
    }

    fn add(a: &A, b: &A) -> A {
        A {
            v: a.v.iter().zip(&b.v).map(|(x, y)| x + y).collect(),
            ..*a
        }
    }

    fn res(&self, x: &A, p: &str, cout: usize) -> A {
        let r = self.gn(x, &format!("{p}.norm1"), true);
        let r = self.conv2d(&r, &format!("{p}.conv1"));
        let r = self.conv_t(&r, &format!("{p}.conv1_t"));
        let r = self.gn(&r, &format!("{p}.norm2"), true);
        let r = self.conv2d(&r, &format!("{p}.conv2"));
        let r = self.conv_t(&r, &format!("{p}.conv2_t"));
        assert_eq!(r.c, cout);
        let skip = if x.c != cout {
            // 1x1 conv
            let w = self.p(&format!("{p}.skip.weight"));
            let b = self.p(&format!("{p}.skip.bias"));
            let hw = x.h * x.w;
            let mut s = A {
                c: cout,
                v: vec![0.0; x.t * cout * hw],
                ..*x
            };
            for t in 0..x.t {
                for o in 0..cout {
                    for q in 0..hw {
                        let mut acc = b[o];
                        for i in 0..x.c {
                            acc += w[o * x.c + i] * x.at(t, i, 0, q);
                        }
                        s.v[(t * cout + o) * hw + q] = acc;
                    }
                }
            }
            s
        } else {
            x.clone()
        };
        Self::add(&skip, &r)
    }

    fn attn(&self, x: &A, p: &str) -> A {
        let n = self.gn(x, &format!("{p}.norm"), false);
        let c = x.c;
        let hw = x.h * x.w;
        let proj = |name: &str, src: &[f64]| -> Vec<f64> {
            // src [hw][c] -> out [hw][c]
            let w = self.p(&format!("{p}.{name}.weight"));
            let b = self.p(&format!("{p}.{name}.bias"));
            let mut out = vec![0.0; hw * c];
            for q in 0..hw {
                for o in 0..c {
                    let mut acc = b[o];
                    for i in 0..c {
                        acc += w[o * c + i] * src[q * c + i];
                    }
                    out[q * c + o] = acc;
                }
            }
            out
        };
        let mut out = x.clone();
        let dh = self.head_dim;
        for t in 0..x.t {
            let tok: Vec<f64> = (0..hw)
                .flat_map(|q| (0..c).map(move |i| (q, i)))
                .map(|(q, i)| n.v[(t * c + i) * hw + q])
                .collect();
            let (qm, km, vm) = (proj("q", &tok), proj("k", &tok), proj("v", &tok));
            let mut o = vec![0.0; hw * c];
            for h in 0..c / dh {
                for a in 0..hw {
                    let s: Vec<f64> = (0..hw)
                        .map(|bb| {
                            (0..dh)
                                .map(|d| qm[a * c + h * dh + d] * km[bb * c + h * dh + d])
                                .sum::<f64>()
                                / (dh as f64).sqrt()
                        })
                        .collect();
                    let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let e: Vec<f64> = s.iter().map(|v| (v - m).exp()).collect();
                    let z: f64 = e.iter().sum();
                    for d in 0..dh {
                        o[a * c + h * dh + d] = (0..hw)
                            .map(|bb| e[bb] / z * vm[bb * c + h * dh + d])
                            .sum::<f64>();
                    }
                }
            }
            let y = proj("out", &o);
            for q in 0..hw {
                for i in 0..c {
                    out.v[(t * c + i) * hw + q] += y[q * c + i];
                }
            }
        }
        out
    }

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
    let dir = std::env::temp_dir().join(format!("streamdit-encoder-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("bad.safetensors");
    let refs: Vec<(&str, &Tensor)> = t.iter().map(|(n, t)| (n.as_str(), t)).collect();
    checkpoint::write_tensors(&path, &refs, DType::F16).unwrap();
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
    let refs: Vec<(&str, &Tensor)> = t.iter().map(|(n, t)| (n.as_str(), t)).collect();
    checkpoint::write_tensors(&path, &refs, DType::F16).unwrap();
    let msg = Weights::load_encoder(&path, &tiny_dec(), C)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("encoder.mid.attn.v.bias"), "{msg}");
    std::fs::remove_dir_all(&dir).unwrap();
}
