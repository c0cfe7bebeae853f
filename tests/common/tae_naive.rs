//! The naive f64 TAE of `../shared/TAE_SPEC.md` shared by tests/decoder.rs and
//! tests/encoder.rs: channels-first activations, direct loops, the Res and Attn blocks and
//! the convolutions both directions use; each test adds its own direction's layers.

use std::collections::BTreeMap;
use std::path::PathBuf;

use streamdit::checkpoint::{self, DType};
use streamdit::model::profile::DecoderConfig;
use streamdit::Tensor;

/// `tiny`'s decoder: widths (64, 64, 32, 16), 8 groups.
pub fn tiny_dec() -> DecoderConfig {
    DecoderConfig {
        widths: vec![64, 64, 32, 16],
        groups: 8,
    }
}

pub const C: usize = 8;

/// One activation of the naive reference: `[T][Ch][H][W]`.
#[derive(Clone)]
pub struct A {
    pub t: usize,
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub v: Vec<f64>,
}

impl A {
    pub fn at(&self, t: usize, c: usize, y: usize, x: usize) -> f64 {
        self.v[((t * self.c + c) * self.h + y) * self.w + x]
    }
}

pub struct Naive<'a> {
    pub w: &'a BTreeMap<String, Tensor>,
    pub groups: usize,
    pub head_dim: usize,
    /// The checkpoint prefix of the tensors: `decoder` or `encoder`.
    pub prefix: &'static str,
}

impl Naive<'_> {
    pub fn p(&self, name: &str) -> Vec<f64> {
        let t = &self.w[&format!("{}.{name}", self.prefix)];
        t.data.iter().map(|&v| v as f64).collect()
    }

    pub fn conv2d(&self, x: &A, name: &str) -> A {
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
    pub fn conv_t(&self, x: &A, name: &str) -> A {
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

    pub fn gn(&self, x: &A, name: &str, silu: bool) -> A {
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

    pub fn add(a: &A, b: &A) -> A {
        A {
            v: a.v.iter().zip(&b.v).map(|(x, y)| x + y).collect(),
            ..*a
        }
    }

    pub fn res(&self, x: &A, p: &str, cout: usize) -> A {
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

    pub fn attn(&self, x: &A, p: &str) -> A {
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
}

/// Writes `tensors` (f16) to `bad.safetensors` in a folder of this test and process, for the
/// tests that load a broken checkpoint from a file.
pub fn write_checkpoint(tag: &str, tensors: &BTreeMap<String, Tensor>) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("streamdit-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("bad.safetensors");
    let refs: Vec<(&str, &Tensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    checkpoint::write_tensors(&path, &refs, DType::F16).unwrap();
    path
}
