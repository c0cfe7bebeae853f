//! A deliberately naive f64 Wan2.1 streaming model written straight from docs/wan.md
//! (sections 2-6), sharing no code with the engine: one scalar at a time, tokens as
//! `Vec<f64>`. Weights use the original Wan tensor names (section 9).

// Index loops over layers and frames read like the document's equations.
#![allow(clippy::needless_range_loop)]

use std::collections::HashMap;

use streamdit::rng::{box_muller, philox4x32_10, split64};

/// Deliberate mistakes, planted by tests to prove they can fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plant {
    /// RoPE pairs `(m, m + d/2)` instead of interleaved `(2m, 2m+1)`.
    RopeHalves,
    /// Unpatchify reading the head's outputs in the patch embedding's `(ch, a, b)` order.
    UnpatchifyChannelFirst,
    /// Cross-attention that skips the zero-padded text rows.
    MaskTextPadding,
}

/// The model's numbers (section 1).
#[derive(Debug, Clone, PartialEq)]
pub struct WanCfg {
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub d: usize,
    pub layers: usize,
    pub heads: usize,
    pub dff: usize,
    pub freq: usize,
    pub lt: usize,
    pub dtxt: usize,
    pub plant: Option<Plant>,
}

impl WanCfg {
    /// The `wan-tiny` draft profile of docs/wan.md section 8.
    pub fn tiny() -> WanCfg {
        WanCfg {
            c: 4,
            h: 8,
            w: 8,
            d: 48,
            layers: 2,
            heads: 3,
            dff: 96,
            freq: 16,
            lt: 8,
            dtxt: 32,
            plant: None,
        }
    }
    pub fn dh(&self) -> usize {
        self.d / self.heads
    }
    pub fn hp(&self) -> usize {
        self.h / 2
    }
    pub fn wp(&self) -> usize {
        self.w / 2
    }
    /// Tokens per latent frame `P`.
    pub fn p(&self) -> usize {
        self.hp() * self.wp()
    }
    pub fn frame_len(&self) -> usize {
        self.c * self.h * self.w
    }
    /// `(nf, nh, nw)` RoPE pairs of a head (section 4).
    pub fn rope_split(&self) -> (usize, usize, usize) {
        let half = self.dh() / 2;
        (half - 2 * (half / 3), half / 3, half / 3)
    }

    /// Every tensor of the original Wan layout with its shape (section 9).
    pub fn tensor_shapes(&self) -> Vec<(String, Vec<usize>)> {
        let (d, c) = (self.d, self.c);
        let mut v: Vec<(String, Vec<usize>)> = vec![
            ("patch_embedding.weight".into(), vec![d, c, 1, 2, 2]),
            ("patch_embedding.bias".into(), vec![d]),
            ("text_embedding.0.weight".into(), vec![d, self.dtxt]),
            ("text_embedding.0.bias".into(), vec![d]),
            ("text_embedding.2.weight".into(), vec![d, d]),
            ("text_embedding.2.bias".into(), vec![d]),
            ("time_embedding.0.weight".into(), vec![d, self.freq]),
            ("time_embedding.0.bias".into(), vec![d]),
            ("time_embedding.2.weight".into(), vec![d, d]),
            ("time_embedding.2.bias".into(), vec![d]),
            ("time_projection.1.weight".into(), vec![6 * d, d]),
            ("time_projection.1.bias".into(), vec![6 * d]),
        ];
        for l in 0..self.layers {
            let b = |s: &str| format!("blocks.{l}.{s}");
            v.push((b("modulation"), vec![1, 6, d]));
            for a in ["self_attn", "cross_attn"] {
                for p in ["q", "k", "v", "o"] {
                    v.push((b(&format!("{a}.{p}.weight")), vec![d, d]));
                    v.push((b(&format!("{a}.{p}.bias")), vec![d]));
                }
                v.push((b(&format!("{a}.norm_q.weight")), vec![d]));
                v.push((b(&format!("{a}.norm_k.weight")), vec![d]));
            }
            v.push((b("norm3.weight"), vec![d]));
            v.push((b("norm3.bias"), vec![d]));
            v.push((b("ffn.0.weight"), vec![self.dff, d]));
            v.push((b("ffn.0.bias"), vec![self.dff]));
            v.push((b("ffn.2.weight"), vec![d, self.dff]));
            v.push((b("ffn.2.bias"), vec![d]));
        }
        v.push(("head.modulation".into(), vec![1, 2, d]));
        v.push(("head.head.weight".into(), vec![4 * c, d]));
        v.push(("head.head.bias".into(), vec![4 * c]));
        v
    }
}

/// Weights by original Wan name: `(shape, values)`.
#[derive(Debug, Clone)]
pub struct WanWeights(pub HashMap<String, (Vec<usize>, Vec<f64>)>);

impl WanWeights {
    /// Deterministic random weights that keep activations O(1): Linear and conv weights
    /// uniform with variance `1/fan_in`, biases small, norm gains near 1, modulation tables
    /// clearly non-zero. Values are f32-exact so an f32 engine sees the same model.
    pub fn random(cfg: &WanCfg, seed: u64) -> WanWeights {
        let mut rng = super::Rng::new(seed);
        let mut m = HashMap::new();
        for (name, shape) in cfg.tensor_shapes() {
            let n: usize = shape.iter().product();
            let (lo, hi) = if name.ends_with("modulation") {
                (-0.3, 0.3)
            } else if name.contains("norm") && name.ends_with(".weight") {
                (0.8, 1.2)
            } else if name.ends_with(".weight") {
                let fan_in: usize = shape[1..].iter().product();
                let a = (3.0 / fan_in as f64).sqrt();
                (-a, a)
            } else {
                (-0.1, 0.1)
            };
            let v = (0..n).map(|_| rng.uniform(lo, hi) as f32 as f64).collect();
            m.insert(name, (shape, v));
        }
        WanWeights(m)
    }

    pub fn get(&self, name: &str) -> &[f64] {
        &self
            .0
            .get(name)
            .unwrap_or_else(|| panic!("no tensor {name}"))
            .1
    }
}

// ---------------------------------------------------------------------------------------
// Scalars and vectors.

fn silu(z: f64) -> f64 {
    z / (1.0 + (-z).exp())
}

fn gelu_tanh(z: f64) -> f64 {
    0.5 * z * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (z + 0.044715 * z * z * z)).tanh())
}

/// `W v + b`, `W [n, k]` row-major.
fn linear(w: &[f64], b: &[f64], v: &[f64]) -> Vec<f64> {
    let k = v.len();
    (0..w.len() / k)
        .map(|r| b[r] + (0..k).map(|c| w[r * k + c] * v[c]).sum::<f64>())
        .collect()
}

fn lin(wt: &WanWeights, name: &str, v: &[f64]) -> Vec<f64> {
    linear(
        wt.get(&format!("{name}.weight")),
        wt.get(&format!("{name}.bias")),
        v,
    )
}

/// LayerNorm without affine, eps 1e-6, biased variance.
fn ln(v: &[f64]) -> Vec<f64> {
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    let var = v.iter().map(|a| (a - mean) * (a - mean)).sum::<f64>() / n;
    v.iter().map(|a| (a - mean) / (var + 1e-6).sqrt()).collect()
}

/// RMS norm over the whole vector (all heads at once), times `gain`.
fn rms(v: &[f64], gain: &[f64]) -> Vec<f64> {
    let ms = v.iter().map(|a| a * a).sum::<f64>() / v.len() as f64;
    v.iter()
        .zip(gain)
        .map(|(a, g)| a / (ms + 1e-6).sqrt() * g)
        .collect()
}

fn softmax_mix(scores: &[f64], values: &[&[f64]]) -> Vec<f64> {
    let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let e: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
    let z: f64 = e.iter().sum();
    let mut out = vec![0.0; values[0].len()];
    for (w, v) in e.iter().zip(values) {
        for (o, x) in out.iter_mut().zip(v.iter()) {
            *o += w / z * x;
        }
    }
    out
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

// ---------------------------------------------------------------------------------------
// RoPE (section 4).

/// Rotates one head vector `x [dh]` to position `(frame, row, col)`.
pub fn rope_head(cfg: &WanCfg, x: &[f64], pos: [usize; 3]) -> Vec<f64> {
    let (nf, nh, _) = cfg.rope_split();
    let half = x.len() / 2;
    let mut out = x.to_vec();
    for m in 0..half {
        let angle = if m < nf {
            pos[0] as f64 * 10000f64.powf(-(m as f64) / nf as f64)
        } else if m < nf + nh {
            pos[1] as f64 * 10000f64.powf(-((m - nf) as f64) / nh as f64)
        } else {
            pos[2] as f64 * 10000f64.powf(-((m - nf - nh) as f64) / nh as f64)
        };
        let (i0, i1) = if cfg.plant == Some(Plant::RopeHalves) {
            (m, m + half)
        } else {
            (2 * m, 2 * m + 1)
        };
        let (s, c) = angle.sin_cos();
        out[i0] = x[i0] * c - x[i1] * s;
        out[i1] = x[i0] * s + x[i1] * c;
    }
    out
}

/// Rotates every head of `v [D]` for the token at `(frame, row, col)`.
pub fn rope(cfg: &WanCfg, v: &[f64], pos: [usize; 3]) -> Vec<f64> {
    v.chunks(cfg.dh())
        .flat_map(|h| rope_head(cfg, h, pos))
        .collect()
}

// ---------------------------------------------------------------------------------------
// Text context (section 3) and the time embedding (section 2.2).

/// `ctx [Lt][D]` from `text [Lt * Dtxt]` (zero rows included).
pub fn text_context(wt: &WanWeights, cfg: &WanCfg, text: &[f64]) -> Vec<Vec<f64>> {
    text.chunks(cfg.dtxt)
        .map(|y| {
            let a: Vec<f64> = lin(wt, "text_embedding.0", y)
                .into_iter()
                .map(gelu_tanh)
                .collect();
            lin(wt, "text_embedding.2", &a)
        })
        .collect()
}

/// `(e [D], e0 [6D])` of one timestep.
fn time_embed(wt: &WanWeights, cfg: &WanCfg, t: f64) -> (Vec<f64>, Vec<f64>) {
    let half = cfg.freq / 2;
    let w = |k: usize| 10000f64.powf(-(k as f64) / half as f64);
    let s: Vec<f64> = (0..half)
        .map(|k| (t * w(k)).cos())
        .chain((0..half).map(|k| (t * w(k)).sin()))
        .collect();
    let a: Vec<f64> = lin(wt, "time_embedding.0", &s)
        .into_iter()
        .map(silu)
        .collect();
    let e = lin(wt, "time_embedding.2", &a);
    let se: Vec<f64> = e.iter().map(|&z| silu(z)).collect();
    let e0 = lin(wt, "time_projection.1", &se);
    (e, e0)
}

// ---------------------------------------------------------------------------------------
// The cache and one forward pass (sections 2 and 5).

/// One cached latent frame of one block: its absolute position, its keys (RMS-normed,
/// unrotated and rotated) and values, one `[D]` vector per token.
#[derive(Debug, Clone, PartialEq)]
pub struct Frame {
    pub pos: usize,
    pub k_raw: Vec<Vec<f64>>,
    pub k: Vec<Vec<f64>>,
    pub v: Vec<Vec<f64>>,
}

/// How cached keys are rotated when attended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyRot {
    /// Use the keys rotated when they were cached (the references).
    Stored,
    /// Rotate the raw keys at attention time with their absolute positions (a ring buffer
    /// design; must equal `Stored`).
    AtLoadAbsolute,
    /// Rotate the raw keys with their slot index in the cache (LongLive's "infinity" rule;
    /// differs from `Stored` once frames were evicted).
    AtLoadSlot,
}

/// A forward pass over `F` frames `x [F * C*H*W]` with timesteps `t [F]` at absolute frame
/// positions `pos [F]`. Keys: `cached[l]` (every cached frame of block `l`) and the call's
/// own frames `j` with `own_visible(i, j)` for query frame `i`. Returns the flow `v` and,
/// per block, the call's own frames' keys and values.
#[allow(clippy::too_many_arguments)]
pub fn forward(
    wt: &WanWeights,
    cfg: &WanCfg,
    x: &[f64],
    t: &[f64],
    pos: &[usize],
    ctx: &[Vec<f64>],
    cached: &[Vec<Frame>],
    rot: KeyRot,
    own_visible: &dyn Fn(usize, usize) -> bool,
) -> (Vec<f64>, Vec<Vec<Frame>>) {
    let (c, hh, ww, d, dh) = (cfg.c, cfg.h, cfg.w, cfg.d, cfg.dh());
    let (hp, wp, p) = (cfg.hp(), cfg.wp(), cfg.p());
    let nfr = t.len();
    assert_eq!(x.len(), nfr * cfg.frame_len());
    // 2.1 patch embedding: token n = (f * Hp + i) * Wp + j, patch vector (ch, a, b).
    let mut h: Vec<Vec<f64>> = Vec::with_capacity(nfr * p);
    for f in 0..nfr {
        for i in 0..hp {
            for j in 0..wp {
                let mut pv = Vec::with_capacity(c * 4);
                for ch in 0..c {
                    for a in 0..2 {
                        for b in 0..2 {
                            pv.push(x[((f * c + ch) * hh + 2 * i + a) * ww + 2 * j + b]);
                        }
                    }
                }
                h.push(lin(wt, "patch_embedding", &pv));
            }
        }
    }
    // 2.2 per-frame time embedding.
    let te: Vec<(Vec<f64>, Vec<f64>)> = t.iter().map(|&tt| time_embed(wt, cfg, tt)).collect();
    let tok_pos = |n: usize| [pos[n / p], (n % p) / wp, n % wp];
    let scale = 1.0 / (dh as f64).sqrt();
    let mut own: Vec<Vec<Frame>> = Vec::new();
    for l in 0..cfg.layers {
        let b = |s: &str| format!("blocks.{l}.{s}");
        let table = wt.get(&b("modulation"));
        let md = |f: usize, k: usize, ch: usize| te[f].1[k * d + ch] + table[k * d + ch];
        // Self-attention.
        let (gq, gk) = (
            wt.get(&b("self_attn.norm_q.weight")),
            wt.get(&b("self_attn.norm_k.weight")),
        );
        let mut qs = Vec::new();
        let mut frames: Vec<Frame> = (0..nfr)
            .map(|f| Frame {
                pos: pos[f],
                k_raw: vec![],
                k: vec![],
                v: vec![],
            })
            .collect();
        for (n, hv) in h.iter().enumerate() {
            let f = n / p;
            let a: Vec<f64> = ln(hv)
                .iter()
                .enumerate()
                .map(|(ch, z)| z * (1.0 + md(f, 1, ch)) + md(f, 0, ch))
                .collect();
            let q = rms(&lin(wt, &b("self_attn.q"), &a), gq);
            let k = rms(&lin(wt, &b("self_attn.k"), &a), gk);
            let v = lin(wt, &b("self_attn.v"), &a);
            qs.push(rope(cfg, &q, tok_pos(n)));
            frames[f].k.push(rope(cfg, &k, tok_pos(n)));
            frames[f].k_raw.push(k);
            frames[f].v.push(v);
        }
        // The key set of each query frame: cached frames, then visible own frames.
        let cached_keys: Vec<Vec<Vec<f64>>> = cached[l]
            .iter()
            .enumerate()
            .map(|(slot, fr)| match rot {
                KeyRot::Stored => fr.k.clone(),
                KeyRot::AtLoadAbsolute | KeyRot::AtLoadSlot => {
                    let fp = if rot == KeyRot::AtLoadSlot {
                        slot
                    } else {
                        fr.pos
                    };
                    fr.k_raw
                        .iter()
                        .enumerate()
                        .map(|(m, kk)| rope(cfg, kk, [fp, m / wp, m % wp]))
                        .collect()
                }
            })
            .collect();
        let mut y_all = Vec::with_capacity(h.len());
        for (n, q) in qs.iter().enumerate() {
            let fi = n / p;
            let mut keys: Vec<(&[f64], &[f64])> = Vec::new();
            for (fr, ks) in cached[l].iter().zip(&cached_keys) {
                keys.extend(
                    ks.iter()
                        .zip(&fr.v)
                        .map(|(k, v)| (k.as_slice(), v.as_slice())),
                );
            }
            for (fj, fr) in frames.iter().enumerate() {
                if own_visible(fi, fj) {
                    keys.extend(
                        fr.k.iter()
                            .zip(&fr.v)
                            .map(|(k, v)| (k.as_slice(), v.as_slice())),
                    );
                }
            }
            let mut o = Vec::with_capacity(d);
            for e in 0..cfg.heads {
                let r = e * dh..(e + 1) * dh;
                let s: Vec<f64> = keys
                    .iter()
                    .map(|(k, _)| dot(&q[r.clone()], &k[r.clone()]) * scale)
                    .collect();
                let vs: Vec<&[f64]> = keys.iter().map(|(_, v)| &v[r.clone()]).collect();
                o.extend(softmax_mix(&s, &vs));
            }
            y_all.push(lin(wt, &b("self_attn.o"), &o));
        }
        for (n, (hv, y)) in h.iter_mut().zip(&y_all).enumerate() {
            for ch in 0..d {
                hv[ch] += md(n / p, 2, ch) * y[ch];
            }
        }
        own.push(frames);
        // Cross-attention: affine norm3, RMS across heads, all Lt rows, no mask, no gate.
        let (gcq, gck) = (
            wt.get(&b("cross_attn.norm_q.weight")),
            wt.get(&b("cross_attn.norm_k.weight")),
        );
        let kc: Vec<Vec<f64>> = ctx
            .iter()
            .map(|cv| rms(&lin(wt, &b("cross_attn.k"), cv), gck))
            .collect();
        let vc: Vec<Vec<f64>> = ctx
            .iter()
            .map(|cv| lin(wt, &b("cross_attn.v"), cv))
            .collect();
        let rows: Vec<usize> = match cfg.plant {
            Some(Plant::MaskTextPadding) => (0..ctx.len()).filter(|&r| r < ctx.len() / 2).collect(),
            _ => (0..ctx.len()).collect(),
        };
        let (n3w, n3b) = (wt.get(&b("norm3.weight")), wt.get(&b("norm3.bias")));
        for hv in h.iter_mut() {
            let z: Vec<f64> = ln(hv)
                .iter()
                .enumerate()
                .map(|(ch, v)| v * n3w[ch] + n3b[ch])
                .collect();
            let q = rms(&lin(wt, &b("cross_attn.q"), &z), gcq);
            let mut o = Vec::with_capacity(d);
            for e in 0..cfg.heads {
                let r = e * dh..(e + 1) * dh;
                let s: Vec<f64> = rows
                    .iter()
                    .map(|&j| dot(&q[r.clone()], &kc[j][r.clone()]) * scale)
                    .collect();
                let vs: Vec<&[f64]> = rows.iter().map(|&j| &vc[j][r.clone()]).collect();
                o.extend(softmax_mix(&s, &vs));
            }
            let y = lin(wt, &b("cross_attn.o"), &o);
            for ch in 0..d {
                hv[ch] += y[ch];
            }
        }
        // GELU-tanh FFN, gated.
        for (n, hv) in h.iter_mut().enumerate() {
            let f = n / p;
            let a: Vec<f64> = ln(hv)
                .iter()
                .enumerate()
                .map(|(ch, z)| z * (1.0 + md(f, 4, ch)) + md(f, 3, ch))
                .collect();
            let u: Vec<f64> = lin(wt, &b("ffn.0"), &a)
                .into_iter()
                .map(gelu_tanh)
                .collect();
            let y = lin(wt, &b("ffn.2"), &u);
            for ch in 0..d {
                hv[ch] += md(f, 5, ch) * y[ch];
            }
        }
    }
    // 2.6 head (time embedding e, not the projection) and unpatchify (a, b, ch).
    let hm = wt.get("head.modulation");
    let mut out = vec![0.0; x.len()];
    for (n, hv) in h.iter().enumerate() {
        let (f, i, j) = (n / p, (n % p) / wp, n % wp);
        let e = &te[f].0;
        let a: Vec<f64> = ln(hv)
            .iter()
            .enumerate()
            .map(|(ch, z)| z * (1.0 + e[ch] + hm[d + ch]) + e[ch] + hm[ch])
            .collect();
        let o = lin(wt, "head.head", &a);
        for ch in 0..c {
            for aa in 0..2 {
                for bb in 0..2 {
                    let idx = if cfg.plant == Some(Plant::UnpatchifyChannelFirst) {
                        ch * 4 + aa * 2 + bb
                    } else {
                        (aa * 2 + bb) * c + ch
                    };
                    out[((f * c + ch) * hh + 2 * i + aa) * ww + 2 * j + bb] = o[idx];
                }
            }
        }
    }
    (out, own)
}

// ---------------------------------------------------------------------------------------
// The causal few-step sampler (sections 5 and 6).

/// Noise of absolute latent frame `p` at step `s` (section 6, "Noise").
pub fn noise(seed: u64, frame: usize, step: usize, n: usize) -> Vec<f64> {
    let key = split64(seed);
    (0..n)
        .map(|e| {
            let r = philox4x32_10(
                [(e / 4) as u32, frame as u32, step as u32, 0x5741_4E31],
                key,
            );
            let lane = e % 4;
            let (z0, z1) = box_muller(r[lane & 2], r[(lane & 2) + 1]);
            f64::from(if lane % 2 == 0 { z0 } else { z1 })
        })
        .collect()
}

/// The sampler's settings (the `[stream]` table of a profile).
#[derive(Debug, Clone)]
pub struct StreamCfg {
    pub chunk: usize,
    pub window: usize,
    pub sink: usize,
    pub recache: bool,
    pub timesteps: Vec<f64>,
    pub sigmas: Vec<f64>,
    pub seed: u64,
}

/// The stream state: clean frames so far, the cache per block, the current context.
pub struct Stream<'a> {
    pub wt: &'a WanWeights,
    pub cfg: &'a WanCfg,
    pub s: StreamCfg,
    pub cache: Vec<Vec<Frame>>,
    pub ctx: Vec<Vec<f64>>,
    pub out: Vec<Vec<f64>>,
    pub rot: KeyRot,
}

impl<'a> Stream<'a> {
    pub fn new(wt: &'a WanWeights, cfg: &'a WanCfg, s: StreamCfg, text: &[f64]) -> Stream<'a> {
        Stream {
            wt,
            cfg,
            s,
            cache: vec![Vec::new(); cfg.layers],
            ctx: text_context(wt, cfg, text),
            out: Vec::new(),
            rot: KeyRot::Stored,
        }
    }

    /// The next first frame.
    pub fn f0(&self) -> usize {
        self.out.len()
    }

    /// One chunk: eviction, the denoising steps, the timestep-0 pass. Returns `x0`.
    pub fn chunk(&mut self) -> Vec<f64> {
        let (c, fl) = (self.s.chunk, self.cfg.frame_len());
        let f0 = self.f0();
        let held = self.cache[0].len();
        if held + c > self.s.window {
            let e = held + c - self.s.window;
            for layer in &mut self.cache {
                layer.drain(self.s.sink..self.s.sink + e);
            }
        }
        let pos: Vec<usize> = (f0..f0 + c).collect();
        let mut x: Vec<f64> = (0..c)
            .flat_map(|f| noise(self.s.seed, f0 + f, 0, fl))
            .collect();
        let m = self.s.timesteps.len();
        let mut x0 = Vec::new();
        for st in 0..m {
            let t = vec![self.s.timesteps[st]; c];
            let (v, _) = forward(
                self.wt,
                self.cfg,
                &x,
                &t,
                &pos,
                &self.ctx,
                &self.cache,
                self.rot,
                &|_, _| true,
            );
            let sg = self.s.sigmas[st];
            x0 = x.iter().zip(&v).map(|(a, b)| a - sg * b).collect();
            if st + 1 < m {
                let sn = self.s.sigmas[st + 1];
                let eps: Vec<f64> = (0..c)
                    .flat_map(|f| noise(self.s.seed, f0 + f, st + 1, fl))
                    .collect();
                x = x0
                    .iter()
                    .zip(&eps)
                    .map(|(a, e)| (1.0 - sn) * a + sn * e)
                    .collect();
            }
        }
        let (_, own) = forward(
            self.wt,
            self.cfg,
            &x0,
            &vec![0.0; c],
            &pos,
            &self.ctx,
            &self.cache,
            self.rot,
            &|_, _| true,
        );
        for (layer, new) in self.cache.iter_mut().zip(own) {
            layer.extend(new);
        }
        self.out.extend(x0.chunks(fl).map(|f| f.to_vec()));
        x0
    }

    /// A prompt switch before the next chunk (section 5.3): the context changes; with
    /// `recache`, the last `min(window, f0)` clean frames are run once, unmasked, at
    /// timestep 0 under the new prompt, keeping the old sink when the window is full.
    pub fn switch(&mut self, text: &[f64]) {
        self.ctx = text_context(self.wt, self.cfg, text);
        let s0 = self.f0();
        if !self.s.recache || s0 == 0 {
            return;
        }
        let (w, sink) = (self.s.window, self.s.sink);
        let r = w.min(s0);
        let x: Vec<f64> = self.out[s0 - r..].concat();
        let pos: Vec<usize> = (s0 - r..s0).collect();
        let protect = s0 > w;
        let keep = if protect { sink } else { 0 };
        let sink_frames: Vec<Vec<Frame>> = self.cache.iter().map(|l| l[..keep].to_vec()).collect();
        let (_, own) = forward(
            self.wt,
            self.cfg,
            &x,
            &vec![0.0; r],
            &pos,
            &self.ctx,
            &sink_frames,
            self.rot,
            &|_, j| j >= keep,
        );
        for (layer, (old, new)) in self.cache.iter_mut().zip(sink_frames.into_iter().zip(own)) {
            *layer = old.into_iter().chain(new.into_iter().skip(keep)).collect();
        }
    }
}
