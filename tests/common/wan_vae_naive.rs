//! A naive f64 Wan 2.1 VAE decoder written from `docs/wan_vae.md`, in the reference's own
//! streaming form: the decoder runs on **one latent frame at a time** with a list of feature
//! cache slots (empty, the `'Rep'` marker, or the last input frames of a causal
//! convolution), visited in a fixed order, exactly as `WanVAE_.decode` does. The engine
//! computes the whole-sequence equivalent over any chunking; agreeing with this checks both
//! the blocks and the cache and first-frame rules. Frames first `[T][C][H][W]`, direct loops.
#![allow(dead_code)]

use std::collections::BTreeMap;

use streamdit::Tensor;

use super::taehv_naive::{conv2d, param, up2, Video};

/// One feature-cache slot.
#[derive(Clone, Debug)]
pub enum Slot {
    Empty,
    Rep,
    Frames(Video),
}

/// The decoder's caches, visited in order by each call (`feat_cache`, `feat_idx`).
pub struct Cache {
    pub slots: Vec<Slot>,
    pub idx: usize,
}

impl Cache {
    pub fn new() -> Cache {
        Cache {
            slots: Vec::new(),
            idx: 0,
        }
    }

    fn slot(&mut self) -> &mut Slot {
        if self.slots.len() <= self.idx {
            self.slots.resize(self.idx + 1, Slot::Empty);
        }
        &mut self.slots[self.idx]
    }
}

impl Default for Cache {
    fn default() -> Cache {
        Cache::new()
    }
}

/// Frames `[from, to)` of `x`.
pub fn frames(x: &Video, from: usize, to: usize) -> Video {
    let len = x.c * x.h * x.w;
    Video {
        t: to - from,
        v: x.v[from * len..to * len].to_vec(),
        ..*x
    }
}

/// `a` then `b` along time.
pub fn cat_t(a: &Video, b: &Video) -> Video {
    let mut v = a.v.clone();
    v.extend_from_slice(&b.v);
    Video {
        t: a.t + b.t,
        v,
        ..*b
    }
}

pub fn silu(x: Video) -> Video {
    x.map(|z| z / (1.0 + (-z).exp()))
}

/// `CausalConv3d` with weight `[cout, cin, kt, k, k]`: `2 * ((kt-1)/2)` frames of padding in
/// front, fewer by the cache's frames when a cache is given; zero padding `(k-1)/2` in space.
pub fn causal_conv3d(
    x: &Video,
    w: &[f64],
    b: &[f64],
    cout: usize,
    kt: usize,
    cache: Option<&Video>,
) -> Video {
    let cin = x.c;
    let k = ((w.len() / (cout * cin * kt)) as f64).sqrt() as usize;
    assert_eq!(cout * cin * kt * k * k, w.len(), "conv3d weight size");
    let mut pad = 2 * ((kt - 1) / 2);
    let mut x = x.clone();
    if let (Some(c), true) = (cache, pad > 0) {
        x = cat_t(c, &x);
        pad -= c.t;
    }
    let x = cat_t(&Video::zeros(pad, x.c, x.h, x.w), &x);
    let frames_out = x.t + 1 - kt;
    let mut out = Video::zeros(frames_out, cout, x.h, x.w);
    // Per output frame: sum over the kt input frames of a 2D convolution.
    for t in 0..frames_out {
        for j in 0..kt {
            let xin = frames(&x, t + j, t + j + 1);
            let wj: Vec<f64> = (0..cout * cin * k * k)
                .map(|e| {
                    let (oi, s) = (e / (k * k), e % (k * k));
                    w[(oi * kt + j) * k * k + s]
                })
                .collect();
            let y = conv2d(&xin, &wj, None, cout);
            for (o, v) in out.v[t * cout * x.h * x.w..][..cout * x.h * x.w]
                .iter_mut()
                .zip(&y.v)
            {
                *o += v;
            }
        }
        for (o, bias) in b.iter().enumerate() {
            for p in 0..x.h * x.w {
                out.v[(t * cout + o) * x.h * x.w + p] += bias;
            }
        }
    }
    out
}

/// `RMS_norm`: per pixel, `x / max(|x|, 1e-12) * sqrt(C) * gamma`.
pub fn rms_norm(x: &Video, gamma: &[f64]) -> Video {
    let mut out = x.clone();
    let scale = (x.c as f64).sqrt();
    for t in 0..x.t {
        for y in 0..x.h {
            for xx in 0..x.w {
                let n = (0..x.c)
                    .map(|c| x.at(t, c, y, xx).powi(2))
                    .sum::<f64>()
                    .sqrt()
                    .max(1e-12);
                for (c, g) in gamma.iter().enumerate() {
                    out.set(t, c, y, xx, x.at(t, c, y, xx) / n * scale * g);
                }
            }
        }
    }
    out
}

/// The Wan VAE decoder's hyper-parameters and weights.
pub struct NaiveWanVae<'a> {
    pub w: &'a BTreeMap<String, Tensor>,
    /// `(384, 384, 384, 192, 96)` for Wan 2.1.
    pub dims: [usize; 5],
    pub blocks_per_stage: usize,
    pub temporal: [bool; 3],
    pub mean: Vec<f64>,
    pub std: Vec<f64>,
}

impl NaiveWanVae<'_> {
    fn p(&self, name: &str) -> Vec<f64> {
        param(self.w, name)
    }

    /// A causal 3x3x3 convolution with its cache slot (the reference's `cache_x` rule).
    pub fn cached_conv(&self, x: &Video, name: &str, cout: usize, cache: &mut Cache) -> Video {
        let prev = match cache.slot() {
            Slot::Frames(v) => Some(v.clone()),
            _ => None,
        };
        let mut keep = frames(x, x.t.saturating_sub(2), x.t);
        if keep.t < 2 {
            if let Some(p) = &prev {
                keep = cat_t(&frames(p, p.t - 1, p.t), &keep);
            }
        }
        let w = self.p(&format!("{name}.weight"));
        let b = self.p(&format!("{name}.bias"));
        let y = causal_conv3d(x, &w, &b, cout, 3, prev.as_ref());
        *cache.slot() = Slot::Frames(keep);
        cache.idx += 1;
        y
    }

    /// `ResidualBlock(in, cout)` at prefix `p` on one chunk.
    pub fn residual(&self, x: &Video, p: &str, cout: usize, cache: &mut Cache) -> Video {
        let h = if x.c != cout {
            let w = self.p(&format!("{p}.shortcut.weight"));
            let b = self.p(&format!("{p}.shortcut.bias"));
            causal_conv3d(x, &w, &b, cout, 1, None)
        } else {
            x.clone()
        };
        let r = silu(rms_norm(x, &self.p(&format!("{p}.residual.0.gamma"))));
        let r = self.cached_conv(&r, &format!("{p}.residual.2"), cout, cache);
        let r = silu(rms_norm(&r, &self.p(&format!("{p}.residual.3.gamma"))));
        let mut r = self.cached_conv(&r, &format!("{p}.residual.6"), cout, cache);
        r.v.iter_mut().zip(&h.v).for_each(|(a, b)| *a += b);
        r
    }

    /// `AttentionBlock(C)` at prefix `p`: per frame, one head over the pixels.
    pub fn attention(&self, x: &Video, p: &str) -> Video {
        let c = x.c;
        let n = rms_norm(x, &self.p(&format!("{p}.norm.gamma")));
        let qkv = conv2d(
            &n,
            &self.p(&format!("{p}.to_qkv.weight")),
            Some(&self.p(&format!("{p}.to_qkv.bias"))),
            3 * c,
        );
        let px = x.h * x.w;
        let mut o = Video::zeros(x.t, c, x.h, x.w);
        for t in 0..x.t {
            let at = |ch: usize, i: usize| qkv.v[(t * 3 * c + ch) * px + i];
            for i in 0..px {
                let scores: Vec<f64> = (0..px)
                    .map(|j| {
                        (0..c).map(|d| at(d, i) * at(c + d, j)).sum::<f64>() / (c as f64).sqrt()
                    })
                    .collect();
                let m = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = scores.iter().map(|s| (s - m).exp()).collect();
                let z: f64 = e.iter().sum();
                for d in 0..c {
                    let v: f64 = (0..px).map(|j| e[j] * at(2 * c + d, j)).sum::<f64>() / z;
                    o.v[(t * c + d) * px + i] = v;
                }
            }
        }
        let mut y = conv2d(
            &o,
            &self.p(&format!("{p}.proj.weight")),
            Some(&self.p(&format!("{p}.proj.bias"))),
            c,
        );
        y.v.iter_mut().zip(&x.v).for_each(|(a, b)| *a += b);
        y
    }

    /// `Resample(C, upsample3d | upsample2d)` at prefix `p` on one chunk.
    pub fn resample(&self, x: &Video, p: &str, temporal: bool, cache: &mut Cache) -> Video {
        let c = x.c;
        let mut x = x.clone();
        if temporal {
            match cache.slot().clone() {
                Slot::Empty => {
                    *cache.slot() = Slot::Rep;
                    cache.idx += 1;
                }
                prev => {
                    let mut keep = frames(&x, x.t.saturating_sub(2), x.t);
                    if keep.t < 2 {
                        let before = match &prev {
                            Slot::Frames(v) => frames(v, v.t - 1, v.t),
                            _ => Video::zeros(1, c, x.h, x.w),
                        };
                        keep = cat_t(&before, &keep);
                    }
                    let w = self.p(&format!("{p}.time_conv.weight"));
                    let b = self.p(&format!("{p}.time_conv.bias"));
                    let history = match &prev {
                        Slot::Frames(v) => Some(v),
                        _ => None,
                    };
                    let y = causal_conv3d(&x, &w, &b, 2 * c, 3, history);
                    *cache.slot() = Slot::Frames(keep);
                    cache.idx += 1;
                    // Channels [0, c) -> frame 2t, [c, 2c) -> frame 2t + 1.
                    let mut out = Video::zeros(2 * y.t, c, y.h, y.w);
                    let len = c * y.h * y.w;
                    for t in 0..y.t {
                        for s in 0..2 {
                            out.v[(2 * t + s) * len..][..len]
                                .copy_from_slice(&y.v[(t * 2 + s) * len..][..len]);
                        }
                    }
                    x = out;
                }
            }
        }
        conv2d(
            &up2(&x),
            &self.p(&format!("{p}.resample.1.weight")),
            Some(&self.p(&format!("{p}.resample.1.bias"))),
            c / 2,
        )
    }

    /// `Decoder3d.forward` on one chunk (one latent frame, after `conv2`).
    pub fn decoder(&self, x: &Video, cache: &mut Cache) -> Video {
        cache.idx = 0;
        let d = self.dims;
        let mut x = self.cached_conv(x, "decoder.conv1", d[0], cache);
        x = self.residual(&x, "decoder.middle.0", d[0], cache);
        x = self.attention(&x, "decoder.middle.1");
        x = self.residual(&x, "decoder.middle.2", d[0], cache);
        let mut k = 0;
        for stage in 0..4 {
            for _ in 0..self.blocks_per_stage {
                x = self.residual(&x, &format!("decoder.upsamples.{k}"), d[stage + 1], cache);
                k += 1;
            }
            if stage < 3 {
                let p = format!("decoder.upsamples.{k}");
                x = self.resample(&x, &p, self.temporal[stage], cache);
                k += 1;
            }
        }
        let x = silu(rms_norm(&x, &self.p("decoder.head.0.gamma")));
        self.cached_conv(&x, "decoder.head.2", 3, cache)
    }

    /// `WanVAE_.decode` on normalised latents `[T, C, h, w]` (before the clamp), one
    /// latent frame per decoder call, the caches continuing from `cache` (a new `Cache`
    /// starts a video). Returns `[frames, 8h, 8w, 3]` channels last.
    pub fn decode(
        &self,
        z: &[f32],
        (t, c, h, w): (usize, usize, usize, usize),
        cache: &mut Cache,
    ) -> Vec<f64> {
        let mut z = Video::from_latents(z, t, c, h, w);
        for tt in 0..t {
            for ch in 0..c {
                for p in 0..h * w {
                    let v = &mut z.v[(tt * c + ch) * h * w + p];
                    *v = *v * self.std[ch] + self.mean[ch];
                }
            }
        }
        let x = causal_conv3d(
            &z,
            &self.p("conv2.weight"),
            &self.p("conv2.bias"),
            c,
            1,
            None,
        );
        let mut out = Vec::new();
        for tt in 0..t {
            out.extend(self.decoder(&frames(&x, tt, tt + 1), cache).channels_last());
        }
        out
    }
}
