//! A deliberately naive f64 StreamDiT written straight from docs/streamdit.md sections 1-4, sharing
//! no code with the engine: plain loops, one scalar at a time. It is the ground truth the
//! CPU ops (per op) and the backends (per model call) are checked against.

use std::collections::HashMap;
use std::path::Path;

/// The model's plain numbers (docs/streamdit.md section 1).
#[derive(Debug, Clone, PartialEq)]
pub struct NaiveConfig {
    /// Latent channels `C`.
    pub c: usize,
    /// Latent frames `F`.
    pub f: usize,
    /// Latent height `H`.
    pub h: usize,
    /// Latent width `W`.
    pub w: usize,
    /// Width `D`.
    pub d: usize,
    /// Depth `L`.
    pub l: usize,
    pub heads: usize,
    /// FFN width `Dff`.
    pub dff: usize,
    /// Window `(Fw, Hw, Ww)` in tokens.
    pub window: [usize; 3],
    /// Text tokens `Lt`.
    pub lt: usize,
    /// Text width `Dtxt`.
    pub dtxt: usize,
}

impl NaiveConfig {
    pub fn dh(&self) -> usize {
        self.d / self.heads
    }

    /// `[Ft, Ht, Wt]`.
    pub fn grid(&self) -> [usize; 3] {
        [self.f, self.h / 2, self.w / 2]
    }

    pub fn tokens(&self) -> usize {
        self.f * (self.h / 2) * (self.w / 2)
    }

    /// Every checkpoint tensor of docs/streamdit.md section 6 with its shape.
    pub fn tensor_shapes(&self) -> Vec<(String, Vec<usize>)> {
        let (d, dh, p) = (self.d, self.dh(), self.c * 4);
        let [ft, ht, wt] = self.grid();
        let mut v: Vec<(String, Vec<usize>)> = vec![
            ("patch_embed.weight".into(), vec![d, p]),
            ("patch_embed.bias".into(), vec![d]),
            ("pos_embed.t".into(), vec![ft, d]),
            ("pos_embed.h".into(), vec![ht, d]),
            ("pos_embed.w".into(), vec![wt, d]),
            ("time_embed.1.weight".into(), vec![d, 256]),
            ("time_embed.1.bias".into(), vec![d]),
            ("time_embed.2.weight".into(), vec![d, d]),
            ("time_embed.2.bias".into(), vec![d]),
            ("time_mod.weight".into(), vec![6 * d, d]),
            ("time_mod.bias".into(), vec![6 * d]),
            ("text_proj.1.weight".into(), vec![d, self.dtxt]),
            ("text_proj.1.bias".into(), vec![d]),
            ("text_proj.2.weight".into(), vec![d, d]),
            ("text_proj.2.bias".into(), vec![d]),
        ];
        for l in 0..self.l {
            let b = |s: &str| format!("blocks.{l}.{s}");
            v.extend([
                (b("mod_table"), vec![6, d]),
                (b("attn.qkv.weight"), vec![3 * d, d]),
                (b("attn.qkv.bias"), vec![3 * d]),
                (b("attn.q_norm"), vec![dh]),
                (b("attn.k_norm"), vec![dh]),
                (b("attn.out.weight"), vec![d, d]),
                (b("attn.out.bias"), vec![d]),
                (b("cross.q.weight"), vec![d, d]),
                (b("cross.q.bias"), vec![d]),
                (b("cross.kv.weight"), vec![2 * d, d]),
                (b("cross.kv.bias"), vec![2 * d]),
                (b("cross.q_norm"), vec![dh]),
                (b("cross.k_norm"), vec![dh]),
                (b("cross.out.weight"), vec![d, d]),
                (b("cross.out.bias"), vec![d]),
                (b("ffn.w13.weight"), vec![2 * self.dff, d]),
                (b("ffn.w2.weight"), vec![d, self.dff]),
            ]);
        }
        v.extend([
            ("final.mod_table".into(), vec![2, d]),
            ("final.linear.weight".into(), vec![p, d]),
            ("final.linear.bias".into(), vec![p]),
        ]);
        v
    }
}

impl From<&streamdit::model::ModelConfig> for NaiveConfig {
    fn from(m: &streamdit::model::ModelConfig) -> Self {
        NaiveConfig {
            c: m.latent_channels,
            f: m.latent_frames,
            h: m.latent_height,
            w: m.latent_width,
            d: m.dim,
            l: m.depth,
            heads: m.heads,
            dff: m.ffn_dim,
            window: m.window,
            lt: m.text_len,
            dtxt: m.text_dim,
        }
    }
}

/// Checkpoint tensors by name, as f64: `(shape, values)`.
#[derive(Debug, Clone, Default)]
pub struct NaiveWeights {
    pub tensors: HashMap<String, (Vec<usize>, Vec<f64>)>,
}

impl NaiveWeights {
    /// Reads every tensor of a safetensors file (f16, bf16 or f32) as f64.
    pub fn load(path: impl AsRef<Path>) -> NaiveWeights {
        let path = path.as_ref();
        let bytes =
            std::fs::read(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
        let st = safetensors::SafeTensors::deserialize(&bytes)
            .unwrap_or_else(|e| panic!("parsing {}: {e}", path.display()));
        let mut tensors = HashMap::new();
        for (name, view) in st.tensors() {
            let data = view.data();
            let values: Vec<f64> = match view.dtype() {
                safetensors::Dtype::F32 => data
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f64)
                    .collect(),
                safetensors::Dtype::F16 => data
                    .chunks_exact(2)
                    .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f64())
                    .collect(),
                safetensors::Dtype::BF16 => data
                    .chunks_exact(2)
                    .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f64())
                    .collect(),
                other => panic!("tensor {name}: unsupported dtype {other:?}"),
            };
            tensors.insert(name, (view.shape().to_vec(), values));
        }
        NaiveWeights { tensors }
    }

    /// Deterministic random weights for `cfg` that keep activations O(1): weights uniform with
    /// variance `1/fan_in`, norms' gains near 1, every gate clearly non-zero.
    pub fn random(cfg: &NaiveConfig, seed: u64) -> NaiveWeights {
        let mut rng = super::Rng::new(seed);
        let mut tensors = HashMap::new();
        for (name, shape) in cfg.tensor_shapes() {
            let n: usize = shape.iter().product();
            let values: Vec<f64> = if name.ends_with(".weight") {
                let a = (3.0 / shape[1] as f64).sqrt();
                (0..n).map(|_| rng.uniform(-a, a)).collect()
            } else if name.ends_with("_norm") {
                (0..n).map(|_| rng.uniform(0.8, 1.2)).collect()
            } else if name.ends_with("mod_table") {
                (0..n).map(|_| rng.uniform(-0.5, 0.5)).collect()
            } else {
                (0..n).map(|_| rng.uniform(-0.2, 0.2)).collect()
            };
            // Values exactly representable in f32 so that an f32 engine sees the same model.
            let values = values.into_iter().map(|v| v as f32 as f64).collect();
            tensors.insert(name, (shape, values));
        }
        NaiveWeights { tensors }
    }

    /// The values of `name`, checking its shape.
    pub fn get(&self, name: &str, shape: &[usize]) -> &[f64] {
        let (s, v) = self
            .tensors
            .get(name)
            .unwrap_or_else(|| panic!("naive weights: missing tensor {name}"));
        assert_eq!(s, shape, "naive weights: tensor {name} has the wrong shape");
        v
    }
}

// ---------------------------------------------------------------------------------------
// Scalar helpers.

fn silu1(z: f64) -> f64 {
    z / (1.0 + (-z).exp())
}

fn gelu1(z: f64) -> f64 {
    0.5 * z * (1.0 + (0.7978845608 * (z + 0.044715 * z * z * z)).tanh())
}

/// `LN(v)` of one vector.
fn ln_vec(v: &[f64]) -> Vec<f64> {
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    let var = v.iter().map(|a| (a - mean) * (a - mean)).sum::<f64>() / n;
    v.iter().map(|a| (a - mean) / (var + 1e-6).sqrt()).collect()
}

/// `W v + b` for one vector, `w [n, k]`.
fn matvec(w: &[f64], b: Option<&[f64]>, v: &[f64]) -> Vec<f64> {
    let k = v.len();
    (0..w.len() / k)
        .map(|r| {
            let mut s = b.map_or(0.0, |b| b[r]);
            for c in 0..k {
                s += w[r * k + c] * v[c];
            }
            s
        })
        .collect()
}

/// Softmax-weighted average of `values` with `scores` (already scaled).
fn softmax_mix(scores: &[f64], values: &[Vec<f64>]) -> Vec<f64> {
    let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let e: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
    let z: f64 = e.iter().sum();
    let mut out = vec![0.0; values[0].len()];
    for (w, v) in e.iter().zip(values) {
        for (o, x) in out.iter_mut().zip(v) {
            *o += w / z * x;
        }
    }
    out
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

// ---------------------------------------------------------------------------------------
// Per-op references (same meaning as the engine's CPU ops).

pub fn linear(x: &[f64], w: &[f64], b: Option<&[f64]>, t: usize, k: usize, n: usize) -> Vec<f64> {
    let mut out = vec![0.0; t * n];
    for r in 0..t {
        for c in 0..n {
            let mut s = 0.0;
            for i in 0..k {
                s += x[r * k + i] * w[c * k + i];
            }
            out[r * n + c] = s + b.map_or(0.0, |b| b[c]);
        }
    }
    out
}

pub fn layer_norm(x: &[f64], d: usize) -> Vec<f64> {
    x.chunks(d).flat_map(ln_vec).collect()
}

/// Frame of token row `t` of any branch.
fn frame(t: usize, frames: usize, tpf: usize) -> usize {
    (t % (frames * tpf)) / tpf
}

#[allow(clippy::too_many_arguments)]
pub fn ada_ln(
    x: &[f64],
    d: usize,
    mods: &[f64],
    k: usize,
    shift: usize,
    scale: usize,
    frames: usize,
    tpf: usize,
) -> Vec<f64> {
    let mut out = Vec::with_capacity(x.len());
    for (t, row) in x.chunks(d).enumerate() {
        let f = frame(t, frames, tpf);
        let n = ln_vec(row);
        for c in 0..d {
            out.push(n[c] * (1.0 + mods[(f * k + scale) * d + c]) + mods[(f * k + shift) * d + c]);
        }
    }
    out
}

pub fn head_rms_norm(
    x: &mut [f64],
    cols: usize,
    offset: usize,
    heads: usize,
    dh: usize,
    gain: &[f64],
) {
    for row in x.chunks_mut(cols) {
        for e in 0..heads {
            let u = &mut row[offset + e * dh..offset + (e + 1) * dh];
            let ms = u.iter().map(|a| a * a).sum::<f64>() / dh as f64;
            for (a, g) in u.iter_mut().zip(gain) {
                *a = *a / (ms + 1e-6).sqrt() * g;
            }
        }
    }
}

/// The window key of token `(f, i, j)` (docs/streamdit.md section 3).
pub fn window_key(pos: [usize; 3], window: [usize; 3], shift: [usize; 3]) -> [usize; 3] {
    [0, 1, 2].map(|a| (pos[a] + shift[a]) / window[a])
}

/// `(f, i, j)` of token `n` in `grid`.
pub fn token_pos(n: usize, grid: [usize; 3]) -> [usize; 3] {
    [
        n / (grid[1] * grid[2]),
        (n / grid[2]) % grid[1],
        n % grid[2],
    ]
}

/// Window self-attention by brute force: every query compares its key with every token's.
#[allow(clippy::too_many_arguments)]
pub fn window_attention(
    qkv: &[f64],
    batch: usize,
    grid: [usize; 3],
    window: [usize; 3],
    shift: [usize; 3],
    heads: usize,
    d: usize,
) -> Vec<f64> {
    let n_tok = grid[0] * grid[1] * grid[2];
    let dh = d / heads;
    let keys: Vec<[usize; 3]> = (0..n_tok)
        .map(|n| window_key(token_pos(n, grid), window, shift))
        .collect();
    let mut out = vec![0.0; batch * n_tok * d];
    for b in 0..batch {
        let row = |n: usize| &qkv[(b * n_tok + n) * 3 * d..(b * n_tok + n + 1) * 3 * d];
        for e in 0..heads {
            for n in 0..n_tok {
                let q = &row(n)[e * dh..(e + 1) * dh];
                let mut scores = Vec::new();
                let mut values = Vec::new();
                for m in 0..n_tok {
                    if keys[m] == keys[n] {
                        let k = &row(m)[d + e * dh..d + (e + 1) * dh];
                        scores.push(dot(q, k) / (dh as f64).sqrt());
                        values.push(row(m)[2 * d + e * dh..2 * d + (e + 1) * dh].to_vec());
                    }
                }
                let o = softmax_mix(&scores, &values);
                out[(b * n_tok + n) * d + e * dh..][..dh].copy_from_slice(&o);
            }
        }
    }
    out
}

#[allow(clippy::too_many_arguments)]
pub fn cross_attention(
    q: &[f64],
    kv: &[f64],
    mask: &[f64],
    batch: usize,
    tokens: usize,
    text_len: usize,
    heads: usize,
    d: usize,
) -> Vec<f64> {
    let dh = d / heads;
    let mut out = vec![0.0; batch * tokens * d];
    for b in 0..batch {
        let real: Vec<usize> = (0..text_len)
            .filter(|&l| mask[b * text_len + l] == 1.0)
            .collect();
        if real.is_empty() {
            continue;
        }
        for e in 0..heads {
            for n in 0..tokens {
                let qv = &q[(b * tokens + n) * d + e * dh..][..dh];
                let kv_row =
                    |l: usize| &kv[(b * text_len + l) * 2 * d..(b * text_len + l + 1) * 2 * d];
                let scores: Vec<f64> = real
                    .iter()
                    .map(|&l| dot(qv, &kv_row(l)[e * dh..(e + 1) * dh]) / (dh as f64).sqrt())
                    .collect();
                let values: Vec<Vec<f64>> = real
                    .iter()
                    .map(|&l| kv_row(l)[d + e * dh..d + (e + 1) * dh].to_vec())
                    .collect();
                let o = softmax_mix(&scores, &values);
                out[(b * tokens + n) * d + e * dh..][..dh].copy_from_slice(&o);
            }
        }
    }
    out
}

#[allow(clippy::too_many_arguments)]
pub fn gated_residual(
    h: &mut [f64],
    y: &[f64],
    d: usize,
    mods: &[f64],
    k: usize,
    gate: usize,
    frames: usize,
    tpf: usize,
) {
    for (t, (hr, yr)) in h.chunks_mut(d).zip(y.chunks(d)).enumerate() {
        let f = frame(t, frames, tpf);
        for c in 0..d {
            hr[c] += mods[(f * k + gate) * d + c] * yr[c];
        }
    }
}

pub fn residual(h: &mut [f64], y: &[f64]) {
    for (a, b) in h.iter_mut().zip(y) {
        *a += b;
    }
}

pub fn swiglu(x: &[f64], dff: usize) -> Vec<f64> {
    x.chunks(2 * dff)
        .flat_map(|r| (0..dff).map(move |c| silu1(r[c]) * r[dff + c]))
        .collect()
}

pub fn silu(x: &[f64]) -> Vec<f64> {
    x.iter().map(|&z| silu1(z)).collect()
}

pub fn gelu_tanh(x: &[f64]) -> Vec<f64> {
    x.iter().map(|&z| gelu1(z)).collect()
}

pub fn timestep_embedding(tau: &[f64]) -> Vec<f64> {
    let mut out = Vec::with_capacity(tau.len() * 256);
    for &t in tau {
        let s = 1000.0 * t;
        let w = |k: usize| (-(10000f64).ln() * k as f64 / 128.0).exp();
        out.extend((0..128).map(|k| (s * w(k)).cos()));
        out.extend((0..128).map(|k| (s * w(k)).sin()));
    }
    out
}

pub fn modulation(
    src: &[f64],
    src_k: usize,
    table: &[f64],
    k: usize,
    d: usize,
    frames: usize,
) -> Vec<f64> {
    let mut out = vec![0.0; frames * k * d];
    for f in 0..frames {
        for i in 0..k {
            for c in 0..d {
                let s = if src_k == k {
                    src[f * k * d + i * d + c]
                } else {
                    src[f * d + c]
                };
                out[(f * k + i) * d + c] = s + table[i * d + c];
            }
        }
    }
    out
}

pub fn patchify(x: &[f64], f: usize, c: usize, h: usize, w: usize) -> Vec<f64> {
    let (ht, wt) = (h / 2, w / 2);
    let mut out = vec![0.0; x.len()];
    for ff in 0..f {
        for i in 0..ht {
            for j in 0..wt {
                let n = (ff * ht + i) * wt + j;
                for cc in 0..c {
                    for a in 0..2 {
                        for b in 0..2 {
                            out[n * c * 4 + (cc * 2 + a) * 2 + b] =
                                x[((ff * c + cc) * h + 2 * i + a) * w + 2 * j + b];
                        }
                    }
                }
            }
        }
    }
    out
}

pub fn unpatchify(x: &[f64], batch: usize, f: usize, c: usize, h: usize, w: usize) -> Vec<f64> {
    let (ht, wt) = (h / 2, w / 2);
    let n_tok = f * ht * wt;
    let mut out = vec![0.0; x.len()];
    for bb in 0..batch {
        for ff in 0..f {
            for i in 0..ht {
                for j in 0..wt {
                    let n = bb * n_tok + (ff * ht + i) * wt + j;
                    for cc in 0..c {
                        for a in 0..2 {
                            for b in 0..2 {
                                out[(((bb * f + ff) * c + cc) * h + 2 * i + a) * w + 2 * j + b] =
                                    x[n * c * 4 + (cc * 2 + a) * 2 + b];
                            }
                        }
                    }
                }
            }
        }
    }
    out
}

pub fn add_positions(
    h: &mut [f64],
    grid: [usize; 3],
    d: usize,
    pos_t: &[f64],
    pos_h: &[f64],
    pos_w: &[f64],
) {
    for n in 0..grid[0] * grid[1] * grid[2] {
        let [f, i, j] = token_pos(n, grid);
        for c in 0..d {
            h[n * d + c] += pos_t[f * d + c] + pos_h[i * d + c] + pos_w[j * d + c];
        }
    }
}

pub fn guidance(v: &[f64], scale: f64) -> Vec<f64> {
    let half = v.len() / 2;
    (0..half)
        .map(|i| v[half + i] + scale * (v[i] - v[half + i]))
        .collect()
}

// ---------------------------------------------------------------------------------------
// One model call (docs/streamdit.md sections 2-4), per token straight from the spec.

/// Per-head RMS norm of one vector of `heads * dh` entries.
fn rms_heads(v: &mut [f64], dh: usize, gain: &[f64]) {
    for u in v.chunks_mut(dh) {
        let ms = u.iter().map(|a| a * a).sum::<f64>() / dh as f64;
        for (a, g) in u.iter_mut().zip(gain) {
            *a = *a / (ms + 1e-6).sqrt() * g;
        }
    }
}

/// `v [F, C, H, W]` of one branch: `x [F, C, H, W]`, `tau [F]`, `text [Lt, Dtxt]`,
/// `mask [Lt]`.
pub fn naive_branch(
    wt: &NaiveWeights,
    cfg: &NaiveConfig,
    x: &[f64],
    tau: &[f64],
    text: &[f64],
    mask: &[f64],
) -> Vec<f64> {
    let (d, dh, heads, p) = (cfg.d, cfg.dh(), cfg.heads, cfg.c * 4);
    let grid = cfg.grid();
    let [ft, ht, wtk] = grid;
    let n_tok = cfg.tokens();
    let g = |name: &str, shape: &[usize]| wt.get(name, shape);
    assert_eq!(x.len(), cfg.f * cfg.c * cfg.h * cfg.w);
    assert_eq!(tau.len(), cfg.f);
    assert_eq!(text.len(), cfg.lt * cfg.dtxt);
    assert_eq!(mask.len(), cfg.lt);

    // 1. Patch embedding and positions.
    let mut h: Vec<Vec<f64>> = (0..n_tok)
        .map(|n| {
            let [f, i, j] = token_pos(n, grid);
            let mut pv = vec![0.0; p];
            for c in 0..cfg.c {
                for a in 0..2 {
                    for b in 0..2 {
                        pv[(c * 2 + a) * 2 + b] =
                            x[((f * cfg.c + c) * cfg.h + 2 * i + a) * cfg.w + 2 * j + b];
                    }
                }
            }
            let mut hv = matvec(
                g("patch_embed.weight", &[d, p]),
                Some(g("patch_embed.bias", &[d])),
                &pv,
            );
            let (pt, ph, pw) = (
                g("pos_embed.t", &[ft, d]),
                g("pos_embed.h", &[ht, d]),
                g("pos_embed.w", &[wtk, d]),
            );
            for c in 0..d {
                hv[c] += pt[f * d + c] + ph[i * d + c] + pw[j * d + c];
            }
            hv
        })
        .collect();

    // 2. Per-frame time embedding and modulation.
    let mut t_emb = Vec::new();
    let mut t_mod = Vec::new();
    for &t in tau {
        let s = 1000.0 * t;
        let w = |k: usize| (-(10000f64).ln() * k as f64 / 128.0).exp();
        let e: Vec<f64> = (0..128)
            .map(|k| (s * w(k)).cos())
            .chain((0..128).map(|k| (s * w(k)).sin()))
            .collect();
        let t1: Vec<f64> = matvec(
            g("time_embed.1.weight", &[d, 256]),
            Some(g("time_embed.1.bias", &[d])),
            &e,
        )
        .into_iter()
        .map(silu1)
        .collect();
        let te = matvec(
            g("time_embed.2.weight", &[d, d]),
            Some(g("time_embed.2.bias", &[d])),
            &t1,
        );
        let tes: Vec<f64> = te.iter().map(|&z| silu1(z)).collect();
        t_mod.push(matvec(
            g("time_mod.weight", &[6 * d, d]),
            Some(g("time_mod.bias", &[6 * d])),
            &tes,
        ));
        t_emb.push(te);
    }

    // 3. Text context.
    let ctx: Vec<Vec<f64>> = text
        .chunks(cfg.dtxt)
        .map(|y| {
            let c1: Vec<f64> = matvec(
                g("text_proj.1.weight", &[d, cfg.dtxt]),
                Some(g("text_proj.1.bias", &[d])),
                y,
            )
            .into_iter()
            .map(gelu1)
            .collect();
            matvec(
                g("text_proj.2.weight", &[d, d]),
                Some(g("text_proj.2.bias", &[d])),
                &c1,
            )
        })
        .collect();
    let real: Vec<usize> = (0..cfg.lt).filter(|&l| mask[l] == 1.0).collect();

    // 4. Blocks.
    let frame_of = |n: usize| n / (ht * wtk);
    let scale = 1.0 / (dh as f64).sqrt();
    for l in 0..cfg.l {
        let b = |s: &str| format!("blocks.{l}.{s}");
        let table = g(&b("mod_table"), &[6, d]);
        // mods[f][i] = t_mod[f][i*D..] + M_l[i]: [sh1, sc1, g1, sh2, sc2, g2].
        let mods = |f: usize, i: usize, c: usize| t_mod[f][i * d + c] + table[i * d + c];

        // Window self-attention.
        let (gq, gk) = (g(&b("attn.q_norm"), &[dh]), g(&b("attn.k_norm"), &[dh]));
        let qkv: Vec<Vec<f64>> = h
            .iter()
            .enumerate()
            .map(|(n, hv)| {
                let f = frame_of(n);
                let a: Vec<f64> = ln_vec(hv)
                    .iter()
                    .enumerate()
                    .map(|(c, z)| z * (1.0 + mods(f, 1, c)) + mods(f, 0, c))
                    .collect();
                let mut qkv = matvec(
                    g(&b("attn.qkv.weight"), &[3 * d, d]),
                    Some(g(&b("attn.qkv.bias"), &[3 * d])),
                    &a,
                );
                rms_heads(&mut qkv[..d], dh, gq);
                rms_heads(&mut qkv[d..2 * d], dh, gk);
                qkv
            })
            .collect();
        let shift = if l % 2 == 0 {
            [0; 3]
        } else {
            cfg.window.map(|w| w / 2)
        };
        let key = |n: usize| window_key(token_pos(n, grid), cfg.window, shift);
        for n in 0..n_tok {
            let kn = key(n);
            let members: Vec<usize> = (0..n_tok).filter(|&m| key(m) == kn).collect();
            let mut o = Vec::with_capacity(d);
            for e in 0..heads {
                let r = e * dh..(e + 1) * dh;
                let scores: Vec<f64> = members
                    .iter()
                    .map(|&m| dot(&qkv[n][r.clone()], &qkv[m][d + r.start..d + r.end]) * scale)
                    .collect();
                let values: Vec<Vec<f64>> = members
                    .iter()
                    .map(|&m| qkv[m][2 * d + r.start..2 * d + r.end].to_vec())
                    .collect();
                o.extend(softmax_mix(&scores, &values));
            }
            let y = matvec(
                g(&b("attn.out.weight"), &[d, d]),
                Some(g(&b("attn.out.bias"), &[d])),
                &o,
            );
            let f = frame_of(n);
            for c in 0..d {
                h[n][c] += mods(f, 2, c) * y[c];
            }
        }

        // Cross-attention (no gate).
        let (gcq, gck) = (g(&b("cross.q_norm"), &[dh]), g(&b("cross.k_norm"), &[dh]));
        let kv: Vec<Vec<f64>> = ctx
            .iter()
            .map(|cv| {
                let mut kv = matvec(
                    g(&b("cross.kv.weight"), &[2 * d, d]),
                    Some(g(&b("cross.kv.bias"), &[2 * d])),
                    cv,
                );
                rms_heads(&mut kv[..d], dh, gck);
                kv
            })
            .collect();
        for hv in h.iter_mut() {
            let mut q = matvec(
                g(&b("cross.q.weight"), &[d, d]),
                Some(g(&b("cross.q.bias"), &[d])),
                &ln_vec(hv),
            );
            rms_heads(&mut q, dh, gcq);
            let mut o = Vec::with_capacity(d);
            for e in 0..heads {
                let r = e * dh..(e + 1) * dh;
                if real.is_empty() {
                    o.extend(vec![0.0; dh]);
                    continue;
                }
                let scores: Vec<f64> = real
                    .iter()
                    .map(|&t| dot(&q[r.clone()], &kv[t][r.clone()]) * scale)
                    .collect();
                let values: Vec<Vec<f64>> = real
                    .iter()
                    .map(|&t| kv[t][d + r.start..d + r.end].to_vec())
                    .collect();
                o.extend(softmax_mix(&scores, &values));
            }
            let y = matvec(
                g(&b("cross.out.weight"), &[d, d]),
                Some(g(&b("cross.out.bias"), &[d])),
                &o,
            );
            for c in 0..d {
                hv[c] += y[c];
            }
        }

        // SwiGLU FFN.
        for (n, hv) in h.iter_mut().enumerate() {
            let f = frame_of(n);
            let a2: Vec<f64> = ln_vec(hv)
                .iter()
                .enumerate()
                .map(|(c, z)| z * (1.0 + mods(f, 4, c)) + mods(f, 3, c))
                .collect();
            let ug = matvec(g(&b("ffn.w13.weight"), &[2 * cfg.dff, d]), None, &a2);
            let act: Vec<f64> = (0..cfg.dff)
                .map(|c| silu1(ug[c]) * ug[cfg.dff + c])
                .collect();
            let y = matvec(g(&b("ffn.w2.weight"), &[d, cfg.dff]), None, &act);
            for c in 0..d {
                hv[c] += mods(f, 5, c) * y[c];
            }
        }
    }

    // 5. Final layer and unpatchify.
    let table = g("final.mod_table", &[2, d]);
    let mut v = vec![0.0; x.len()];
    for (n, hv) in h.iter().enumerate() {
        let [f, i, j] = token_pos(n, grid);
        let a: Vec<f64> = ln_vec(hv)
            .iter()
            .enumerate()
            .map(|(c, z)| z * (1.0 + t_emb[f][c] + table[d + c]) + t_emb[f][c] + table[c])
            .collect();
        let o = matvec(
            g("final.linear.weight", &[p, d]),
            Some(g("final.linear.bias", &[p])),
            &a,
        );
        for c in 0..cfg.c {
            for aa in 0..2 {
                for bb in 0..2 {
                    v[((f * cfg.c + c) * cfg.h + 2 * i + aa) * cfg.w + 2 * j + bb] =
                        o[(c * 2 + aa) * 2 + bb];
                }
            }
        }
    }
    v
}

/// One model call `v [F, C, H, W]` (docs/streamdit.md sections 2-4). With `negative = Some((text,
/// mask))` it computes both branches and combines them as `v_u + guidance (v_c - v_u)`
/// (section 4), even for `guidance == 1`; with `None` it requires `guidance == 1` and
/// returns the conditional branch.
#[allow(clippy::too_many_arguments)]
pub fn naive_model_call(
    weights: &NaiveWeights,
    cfg: &NaiveConfig,
    x: &[f64],
    tau: &[f64],
    text: &[f64],
    mask: &[f64],
    guidance: f64,
    negative: Option<(&[f64], &[f64])>,
) -> Vec<f64> {
    let v_c = naive_branch(weights, cfg, x, tau, text, mask);
    match negative {
        None => {
            assert_eq!(
                guidance, 1.0,
                "naive_model_call: guidance != 1 needs a negative prompt"
            );
            v_c
        }
        Some((neg_text, neg_mask)) => {
            let v_u = naive_branch(weights, cfg, x, tau, neg_text, neg_mask);
            v_u.iter()
                .zip(&v_c)
                .map(|(u, c)| u + guidance * (c - u))
                .collect()
        }
    }
}
