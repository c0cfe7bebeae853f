//! A naive f64 TAEHV decoder written from `docs/taehv.md`, in taehv.py's own layer order
//! (`Upsample -> TGrow -> conv`) and its parallel form: every block sees the whole sequence,
//! a MemBlock's memory is the sequence shifted by one frame with a zero frame in front, and
//! the first `t_upscale - 1` frames are trimmed at the end. Channels first, direct loops.
#![allow(dead_code)]

use std::collections::BTreeMap;

use streamdit::Tensor;

/// A video `[T][C][H][W]` in f64.
#[derive(Clone, Debug)]
pub struct Video {
    pub t: usize,
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub v: Vec<f64>,
}

impl Video {
    pub fn zeros(t: usize, c: usize, h: usize, w: usize) -> Video {
        Video {
            t,
            c,
            h,
            w,
            v: vec![0.0; t * c * h * w],
        }
    }

    pub fn at(&self, t: usize, c: usize, y: usize, x: usize) -> f64 {
        self.v[((t * self.c + c) * self.h + y) * self.w + x]
    }

    pub fn set(&mut self, t: usize, c: usize, y: usize, x: usize, val: f64) {
        let (cc, h, w) = (self.c, self.h, self.w);
        self.v[((t * cc + c) * h + y) * w + x] = val;
    }

    /// From latents `[T, C, H, W]` in f32.
    pub fn from_latents(z: &[f32], t: usize, c: usize, h: usize, w: usize) -> Video {
        Video {
            t,
            c,
            h,
            w,
            v: z.iter().map(|&a| a as f64).collect(),
        }
    }

    /// As `[T, H, W, C]` (the engine's layout).
    pub fn channels_last(&self) -> Vec<f64> {
        let mut out = Vec::with_capacity(self.v.len());
        for t in 0..self.t {
            for y in 0..self.h {
                for x in 0..self.w {
                    for c in 0..self.c {
                        out.push(self.at(t, c, y, x));
                    }
                }
            }
        }
        out
    }

    pub fn map(mut self, f: impl Fn(f64) -> f64) -> Video {
        self.v.iter_mut().for_each(|a| *a = f(*a));
        self
    }
}

/// A tensor of `w` as f64.
pub fn param(w: &BTreeMap<String, Tensor>, name: &str) -> Vec<f64> {
    let t = w
        .get(name)
        .unwrap_or_else(|| panic!("naive reference: no tensor {name}"));
    t.data.iter().map(|&a| a as f64).collect()
}

/// `conv2d` per frame with a `k x k` kernel (`k` from the weight: `[cout, cin, k, k]`),
/// stride 1, zero padding `(k-1)/2`.
pub fn conv2d(x: &Video, w: &[f64], b: Option<&[f64]>, cout: usize) -> Video {
    let cin = x.c;
    let k = ((w.len() / (cout * cin)) as f64).sqrt() as usize;
    assert_eq!(k * k * cout * cin, w.len(), "conv2d weight size");
    let p = (k as isize - 1) / 2;
    let mut out = Video::zeros(x.t, cout, x.h, x.w);
    for t in 0..x.t {
        for o in 0..cout {
            for y in 0..x.h {
                for xx in 0..x.w {
                    let mut acc = b.map_or(0.0, |b| b[o]);
                    for i in 0..cin {
                        for ky in 0..k {
                            let sy = y as isize + ky as isize - p;
                            if sy < 0 || sy >= x.h as isize {
                                continue;
                            }
                            for kx in 0..k {
                                let sx = xx as isize + kx as isize - p;
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

/// Nearest 2x upsampling in H and W.
pub fn up2(x: &Video) -> Video {
    let mut out = Video::zeros(x.t, x.c, 2 * x.h, 2 * x.w);
    for t in 0..x.t {
        for c in 0..x.c {
            for y in 0..2 * x.h {
                for xx in 0..2 * x.w {
                    out.set(t, c, y, xx, x.at(t, c, y / 2, xx / 2));
                }
            }
        }
    }
    out
}

pub fn relu(x: Video) -> Video {
    x.map(|a| a.max(0.0))
}

/// The TAEHV decoder's hyper-parameters and weights.
pub struct NaiveTaehv<'a> {
    pub w: &'a BTreeMap<String, Tensor>,
    pub widths: [usize; 4],
    pub time_up: [bool; 3],
    pub space_up: [bool; 3],
}

impl NaiveTaehv<'_> {
    fn conv(&self, x: &Video, name: &str, cout: usize, bias: bool) -> Video {
        let w = param(self.w, &format!("{name}.weight"));
        let b = bias.then(|| param(self.w, &format!("{name}.bias")));
        conv2d(x, &w, b.as_deref(), cout)
    }

    /// `MemBlock(n, n)` at decoder index `i` over the whole sequence.
    fn memblock(&self, x: &Video, i: usize) -> Video {
        let n = x.c;
        // [x_t ; x_{t-1}] with x_{-1} = 0.
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
        let p = format!("decoder.{i}.conv");
        let m = relu(self.conv(&cat, &format!("{p}.0"), n, true));
        let m = relu(self.conv(&m, &format!("{p}.2"), n, true));
        let mut m = self.conv(&m, &format!("{p}.4"), n, true);
        m.v.iter_mut().zip(&x.v).for_each(|(a, b)| *a += b);
        relu(m)
    }

    /// `TGrow(n, stride)` at decoder index `i`: a 1x1 conv `n -> stride n`, then frame `t`
    /// becomes frames `stride t + j` with channel block `j`.
    fn tgrow(&self, x: &Video, i: usize, stride: usize) -> Video {
        let n = x.c;
        let y = self.conv(x, &format!("decoder.{i}.conv"), stride * n, false);
        let mut out = Video::zeros(stride * x.t, n, x.h, x.w);
        for t in 0..x.t {
            for j in 0..stride {
                for c in 0..n {
                    for yy in 0..x.h {
                        for xx in 0..x.w {
                            out.set(stride * t + j, c, yy, xx, y.at(t, j * n + c, yy, xx));
                        }
                    }
                }
            }
        }
        out
    }

    /// Decodes latents `[T, C, h, w]` (taehv.py `decode_video` before its clamp): returns
    /// `[4T - 3, 8h, 8w, 3]` channels last.
    pub fn decode(&self, z: &[f32], t: usize, c: usize, h: usize, w: usize) -> Vec<f64> {
        let x = Video::from_latents(z, t, c, h, w).map(|a| (a / 3.0).tanh() * 3.0);
        let mut x = relu(self.conv(&x, "decoder.1", self.widths[0], true));
        let mut t_up = 1;
        for stage in 0..3 {
            let first = 3 + 6 * stage;
            for j in 0..3 {
                x = self.memblock(&x, first + j);
            }
            if self.space_up[stage] {
                x = up2(&x);
            }
            let stride = if self.time_up[stage] { 2 } else { 1 };
            t_up *= stride;
            x = self.tgrow(&x, first + 4, stride);
            x = self.conv(
                &x,
                &format!("decoder.{}", first + 5),
                self.widths[stage + 1],
                false,
            );
        }
        let x = self.conv(&relu(x), "decoder.22", 3, true);
        let out = x.channels_last();
        let frame = x.h * x.w * 3;
        out[(t_up - 1) * frame..].to_vec()
    }
}
