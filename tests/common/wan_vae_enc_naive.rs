//! A naive f64 Wan 2.1 VAE encoder written from `docs/wan_vae.md` ("The encoder"), in the
//! reference's own chunked form: `WanVAE_.encode` calls the encoder on the first video frame
//! alone, then on chunks of 4 frames, with feature-cache slots visited in a fixed order
//! (the residual blocks and causal convolutions of `wan_vae_naive`, and `downsample3d`'s
//! slot, which on the first call keeps the chunk and lets it pass). The engine computes the
//! whole-sequence equivalent over any chunking; agreeing with this checks both the blocks
//! and the cache and first-frame rules. Frames first `[T][C][H][W]`, direct loops.
#![allow(dead_code)]

use super::taehv_naive::{param, Video};
use super::wan_vae_naive::{
    cat_t, causal_conv3d, frames, rms_norm, silu, Cache, NaiveWanVae, Slot,
};

/// The encoder's hyper-parameters; `vae` holds the weights and the shared blocks.
pub struct NaiveWanVaeEncoder<'a> {
    pub vae: NaiveWanVae<'a>,
    /// `(96, 96, 192, 384, 384)` for Wan 2.1.
    pub dims: [usize; 5],
    pub num_res_blocks: usize,
    /// `(false, true, true)` for Wan 2.1.
    pub temporal: [bool; 3],
    pub z_dim: usize,
    pub mean: Vec<f64>,
    pub std: Vec<f64>,
}

impl NaiveWanVaeEncoder<'_> {
    fn p(&self, name: &str) -> Vec<f64> {
        param(self.vae.w, name)
    }

    /// `ZeroPad2d((0, 1, 0, 1))` then a 3x3 `Conv2d` with stride 2 and no padding, per frame.
    pub fn down2(&self, x: &Video, name: &str) -> Video {
        let w = self.p(&format!("{name}.weight"));
        let b = self.p(&format!("{name}.bias"));
        let (cin, cout) = (x.c, b.len());
        // The padded size is (h + 1) x (w + 1).
        let (ho, wo) = ((x.h + 1 - 3) / 2 + 1, (x.w + 1 - 3) / 2 + 1);
        let mut out = Video::zeros(x.t, cout, ho, wo);
        for t in 0..x.t {
            for o in 0..cout {
                for y in 0..ho {
                    for xx in 0..wo {
                        let mut acc = b[o];
                        for i in 0..cin {
                            for ky in 0..3 {
                                for kx in 0..3 {
                                    let (sy, sx) = (2 * y + ky, 2 * xx + kx);
                                    if sy < x.h && sx < x.w {
                                        acc += w[((o * cin + i) * 3 + ky) * 3 + kx]
                                            * x.at(t, i, sy, sx);
                                    }
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

    /// `time_conv`: `Conv3d(c, c, (3, 1, 1), stride (2, 1, 1))` with no padding.
    pub fn time_conv(&self, x: &Video, name: &str) -> Video {
        let w = self.p(&format!("{name}.weight"));
        let b = self.p(&format!("{name}.bias"));
        let c = x.c;
        let t_out = (x.t - 3) / 2 + 1;
        let mut out = Video::zeros(t_out, c, x.h, x.w);
        for t in 0..t_out {
            for o in 0..c {
                for y in 0..x.h {
                    for xx in 0..x.w {
                        let mut acc = b[o];
                        for i in 0..c {
                            for j in 0..3 {
                                acc += w[(o * c + i) * 3 + j] * x.at(2 * t + j, i, y, xx);
                            }
                        }
                        out.set(t, o, y, xx, acc);
                    }
                }
            }
        }
        out
    }

    /// `Resample(c, downsample2d | downsample3d)` at prefix `p` on one chunk.
    pub fn resample(&self, x: &Video, p: &str, temporal: bool, cache: &mut Cache) -> Video {
        let x = self.down2(x, &format!("{p}.resample.1"));
        if !temporal {
            return x;
        }
        if cache.slots.len() <= cache.idx {
            cache.slots.resize(cache.idx + 1, Slot::Empty);
        }
        let y = match cache.slots[cache.idx].clone() {
            // The first call keeps the chunk and lets it pass unconvolved.
            Slot::Empty => {
                cache.slots[cache.idx] = Slot::Frames(x.clone());
                x
            }
            Slot::Frames(prev) => {
                let keep = frames(&x, x.t - 1, x.t);
                let ext = cat_t(&frames(&prev, prev.t - 1, prev.t), &x);
                let y = self.time_conv(&ext, &format!("{p}.time_conv"));
                cache.slots[cache.idx] = Slot::Frames(keep);
                y
            }
            Slot::Rep => panic!("the encoder never writes 'Rep'"),
        };
        cache.idx += 1;
        y
    }

    /// `Encoder3d.forward` on one chunk of video frames `[T, 3, H, W]`: `2 z_dim` channels.
    pub fn encoder(&self, x: &Video, cache: &mut Cache) -> Video {
        cache.idx = 0;
        let (d, vae) = (self.dims, &self.vae);
        let mut x = vae.cached_conv(x, "encoder.conv1", d[0], cache);
        let mut k = 0;
        for stage in 0..4 {
            for _ in 0..self.num_res_blocks {
                x = vae.residual(&x, &format!("encoder.downsamples.{k}"), d[stage + 1], cache);
                k += 1;
            }
            if stage < 3 {
                let p = format!("encoder.downsamples.{k}");
                x = self.resample(&x, &p, self.temporal[stage], cache);
                k += 1;
            }
        }
        x = vae.residual(&x, "encoder.middle.0", d[4], cache);
        x = vae.attention(&x, "encoder.middle.1");
        x = vae.residual(&x, "encoder.middle.2", d[4], cache);
        let x = silu(rms_norm(&x, &self.p("encoder.head.0.gamma")));
        vae.cached_conv(&x, "encoder.head.2", 2 * self.z_dim, cache)
    }

    /// `WanVAE_.encode` with `scale = [mean, 1 / std]` on video frames `x [T, H, W, 3]`
    /// (channels last, `T = 1 + 4k`): frame 0 alone, then chunks of 4, a fresh cache. Returns
    /// the normalised mean `[1 + k, z_dim, H/8, W/8]`.
    pub fn encode(&self, x: &[f32], (t, h, w): (usize, usize, usize)) -> Vec<f64> {
        assert_eq!((t - 1) % 4, 0, "the naive encoder takes 1 + 4k frames");
        let mut v = Video::zeros(t, 3, h, w);
        for tt in 0..t {
            for y in 0..h {
                for xx in 0..w {
                    for c in 0..3 {
                        v.set(tt, c, y, xx, x[((tt * h + y) * w + xx) * 3 + c] as f64);
                    }
                }
            }
        }
        let mut cache = Cache::new();
        let mut out = self.encoder(&frames(&v, 0, 1), &mut cache);
        for i in 1..=(t - 1) / 4 {
            let chunk = frames(&v, 1 + 4 * (i - 1), 1 + 4 * i);
            out = cat_t(&out, &self.encoder(&chunk, &mut cache));
        }
        let z2 = 2 * self.z_dim;
        let out = causal_conv3d(
            &out,
            &self.p("conv1.weight"),
            &self.p("conv1.bias"),
            z2,
            1,
            None,
        );
        let mut mu = Video::zeros(out.t, self.z_dim, out.h, out.w);
        for tt in 0..out.t {
            for c in 0..self.z_dim {
                for y in 0..out.h {
                    for xx in 0..out.w {
                        let m = (out.at(tt, c, y, xx) - self.mean[c]) * (1.0 / self.std[c]);
                        mu.set(tt, c, y, xx, m);
                    }
                }
            }
        }
        mu.v
    }
}
