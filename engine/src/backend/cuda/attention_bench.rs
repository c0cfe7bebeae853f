//! The attention rows of `streamdit bench --kernels`: each attention shape of a StreamDiT
//! call (window unshifted and shifted, cross-attention to the text) timed on each of our
//! attention paths of the device — the mma.sync kernels (`attention.cu`, every device) and,
//! on compute capability 9.0, the sm_90a window kernel (`attention_sm90_window.cu`, where
//! the shape is inside its contract) — on the same random inputs, with each path's result
//! compared with the mma.sync one and, when asked (the emulator), with the f32 CPU reference
//! (`math::window_attention` / `math::cross_attention` after the per-head RMSNorm).
//!
//! The Wan family's attention of a chunk over its KV cache (a full cache: `window` frames
//! attended, in a scrambled slot order) runs on `attn_kvcache_d{16,128}` and, on 9.0 for
//! dh = 128, on `attn_sm90_kvcache_d128`; its CPU reference is a direct f32 loop.
//!
//! cuBLAS has no attention, so no library row stands beside these (FlashAttention-3 would be
//! the comparison; it is not loaded).
//! Times are device events around `reps` launches after a warm-up; outputs are poisoned
//! before each path.

use half::f16;
use streamdit_kernels::attention::{self, CrossShape, WindowShape};
use streamdit_kernels::wan_attention::{self, KvCacheShape};

use super::device::{Device, DeviceBuffer};
use super::kernel_bench::{random_f16, rel_diff, time};
use super::limits;
use super::lower::wan_sm90::select_attention;
use super::lower::{run, select_window_attention, Params, Step};
use crate::error::{Error, Result};
use crate::model::graph::{Graph, Op};
use crate::model::wan::WanConfig;

/// What one attention call computes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttentionKind {
    /// Window self-attention over the token grid `[Ft, Ht, Wt]` on the fused QKV output.
    Window {
        grid: [usize; 3],
        window: [usize; 3],
        shift: [usize; 3],
    },
    /// Cross-attention of `tokens` queries to `text_len` text keys (every key unmasked).
    Cross { tokens: usize, text_len: usize },
    /// The Wan family's `tokens` queries over `frames` cache frames of `frame_tokens` each,
    /// in a cache of `cache_slots` frames (batch 1).
    KvCache {
        tokens: usize,
        frame_tokens: usize,
        frames: usize,
        cache_slots: usize,
    },
}

/// One attention shape of a call, `count` times per call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttentionShape {
    pub kind: AttentionKind,
    pub batch: usize,
    pub heads: usize,
    pub head_dim: usize,
    pub count: usize,
}

impl AttentionShape {
    /// FLOPs of one call: `4 dh` per (query, key) pair per head (Q K^T and P V).
    pub fn flops(&self) -> f64 {
        let pairs = match self.kind {
            AttentionKind::Window {
                grid,
                window,
                shift,
            } => crate::cost::window_sum_sq(grid, window, shift) as f64,
            AttentionKind::Cross { tokens, text_len } => tokens as f64 * text_len as f64,
            AttentionKind::KvCache {
                tokens,
                frame_tokens,
                frames,
                ..
            } => tokens as f64 * (frames * frame_tokens) as f64,
        };
        4.0 * self.head_dim as f64 * pairs * (self.heads * self.batch) as f64
    }
    /// `window 4x16x16 shift 2x8x8 on 16x32x32` or `cross 16384 x 256`, with batch, heads
    /// and head dim.
    pub fn label(&self) -> String {
        let x = |v: [usize; 3]| format!("{}x{}x{}", v[0], v[1], v[2]);
        let what = match self.kind {
            AttentionKind::Window {
                grid,
                window,
                shift,
            } => format!("window {} shift {} on {}", x(window), x(shift), x(grid)),
            AttentionKind::Cross { tokens, text_len } => format!("cross {tokens} x {text_len}"),
            AttentionKind::KvCache {
                tokens,
                frame_tokens,
                frames,
                ..
            } => format!("kv cache {tokens} x {frames} frames of {frame_tokens}"),
        };
        format!("{what}, b{} h{} dh{}", self.batch, self.heads, self.head_dim)
    }
    fn window(&self) -> Option<WindowShape> {
        match self.kind {
            AttentionKind::Window {
                grid,
                window,
                shift,
            } => Some(WindowShape {
                batch: self.batch,
                grid,
                window,
                shift,
                heads: self.heads,
                head_dim: self.head_dim,
            }),
            AttentionKind::Cross { .. } | AttentionKind::KvCache { .. } => None,
        }
    }
}

/// The Wan family's attention over a full KV cache: a chunk's tokens over `window` frames,
/// `depth` times per call.
pub fn wan_attention_shape(w: &WanConfig) -> AttentionShape {
    let p = w.tokens_per_frame();
    AttentionShape {
        kind: AttentionKind::KvCache {
            tokens: w.chunk_frames * p,
            frame_tokens: p,
            frames: w.window,
            cache_slots: w.window,
        },
        batch: 1,
        heads: w.heads,
        head_dim: w.head_dim(),
        count: w.depth,
    }
}

/// The distinct attention shapes of `graph`'s call with their counts, in call order.
pub fn attention_shapes(graph: &Graph) -> Vec<AttentionShape> {
    let m = &graph.config;
    let mut shapes: Vec<AttentionShape> = Vec::new();
    for op in &graph.call_ops {
        let (kind, heads) = match *op {
            Op::WindowAttention {
                heads,
                window,
                shift,
                ..
            } => (
                AttentionKind::Window {
                    grid: m.token_grid(),
                    window,
                    shift,
                },
                heads,
            ),
            Op::CrossAttention { heads, .. } => (
                AttentionKind::Cross {
                    tokens: m.tokens(),
                    text_len: m.text_len,
                },
                heads,
            ),
            _ => continue,
        };
        let shape = AttentionShape {
            kind,
            batch: graph.batch,
            heads,
            head_dim: m.dim / heads.max(1),
            count: 1,
        };
        match shapes.iter_mut().find(|s| AttentionShape { count: 1, ..**s } == shape) {
            Some(s) => s.count += 1,
            None => shapes.push(shape),
        }
    }
    shapes
}

/// One path's figures for one attention shape.
#[derive(Clone, Debug, PartialEq)]
pub struct AttentionPath {
    /// `mma.sync` or `sm90a`.
    pub path: &'static str,
    pub kernel: &'static str,
    /// CTAs launched (grid x * y * z).
    pub ctas: u64,
    /// Milliseconds per call and `flops / ms` in TFLOP/s.
    pub ms: f64,
    pub tflops: f64,
    /// `max |out - out_mma| / max |out_mma|` (0 for mma.sync; NaN: an unwritten element).
    pub rel_diff: f64,
    /// Relative L2 error against the f32 CPU reference, when checked.
    pub rel_l2_cpu: Option<f64>,
}

/// The paths of one shape.
#[derive(Clone, Debug, PartialEq)]
pub struct AttentionTiming {
    pub shape: AttentionShape,
    /// Window shapes: CTAs per (head, batch element) of the grid before the packed tile
    /// list and of the packed list (issue 18).
    pub unpacked_ctas: Option<usize>,
    pub paths: Vec<AttentionPath>,
}

/// The device buffers of one shape (f16 as u16; the mask f32).
struct Bufs {
    a: DeviceBuffer<u16>,
    b: DeviceBuffer<u16>,
    gq: DeviceBuffer<u16>,
    gk: DeviceBuffer<u16>,
    mask: DeviceBuffer<f32>,
    slots: DeviceBuffer<i32>,
    out: DeviceBuffer<u16>,
}

/// The mma.sync launch of `s` over `bufs`, and with `sm90` that launch as
/// `select_window_attention` leaves it (`None` when it stays on mma.sync).
fn step<D: Device>(dev: &mut D, s: &AttentionShape, b: &Bufs, sm90: bool) -> Result<Option<Step>> {
    let label = s.label();
    let err = |e: String| Error::Invalid(format!("{label}: {e}"));
    let (launch, params) = match (s.window(), s.kind) {
        (Some(w), _) => {
            let [ft, ht, wt] = w.grid.map(|v| v as i32);
            let p = attention::AttnWindowParams {
                qkv: b.a.addr() as *const u16,
                gq: b.gq.addr() as *const u16,
                gk: b.gk.addr() as *const u16,
                out: b.out.addr() as *mut u16,
                ft,
                ht,
                wt,
                fw: w.window[0] as i32,
                hw: w.window[1] as i32,
                ww: w.window[2] as i32,
                sf: w.shift[0] as i32,
                sh: w.shift[1] as i32,
                sw: w.shift[2] as i32,
                heads: w.heads as i32,
            };
            (attention::window_config(&w).map_err(err)?, Params::WindowAttention(p))
        }
        (None, AttentionKind::Cross { tokens, text_len }) => {
            let c = CrossShape {
                batch: s.batch,
                tokens,
                text_len,
                heads: s.heads,
                head_dim: s.head_dim,
            };
            let p = attention::AttnCrossParams {
                q: b.a.addr() as *const u16,
                kv: b.b.addr() as *const u16,
                mask: b.mask.addr() as *const f32,
                gq: b.gq.addr() as *const u16,
                gk: b.gk.addr() as *const u16,
                out: b.out.addr() as *mut u16,
                tokens: tokens as i32,
                text_len: text_len as i32,
                heads: s.heads as i32,
            };
            (attention::cross_config(&c).map_err(err)?, Params::CrossAttention(p))
        }
        (
            None,
            AttentionKind::KvCache {
                tokens,
                frame_tokens,
                frames,
                cache_slots,
            },
        ) => {
            let k = KvCacheShape {
                tokens,
                frame_tokens,
                frames,
                heads: s.heads,
                head_dim: s.head_dim,
                cache_slots,
            };
            let p = wan_attention::AttnKvCacheParams {
                q: b.a.addr() as *const u16,
                cache: b.b.addr() as *const u16,
                frame_slots: b.slots.addr() as *const i32,
                out: b.out.addr() as *mut u16,
                tokens: tokens as i32,
                frame_tokens: frame_tokens as i32,
                frames: frames as i32,
                heads: s.heads as i32,
            };
            (wan_attention::kvcache_config(&k).map_err(err)?, Params::AttnKvCache(p))
        }
        (None, AttentionKind::Window { .. }) => unreachable!("window() is Some for windows"),
    };
    let module = match s.kind {
        AttentionKind::KvCache { .. } => "wan_attention",
        _ => "attention",
    };
    let mut step = Step::Launch {
        label: label.clone(),
        module,
        kernel_name: launch.kernel,
        kernel: None,
        config: launch.config,
        params,
        trace: Default::default(),
    };
    if sm90 {
        match s.kind {
            AttentionKind::KvCache { cache_slots, .. } => {
                select_attention(dev, cache_slots, std::slice::from_mut(&mut step))?
            }
            _ => select_window_attention(dev, &mut step)?,
        }
        if matches!(step, Step::Launch { module: m, .. } if m == module) {
            return Ok(None);
        }
    }
    limits::fit_step(&mut step, dev.shared_memory_limit()).map_err(err)?;
    if let Step::Launch {
        module,
        kernel_name,
        kernel,
        ..
    } = &mut step
    {
        *kernel = Some(dev.kernel(module, kernel_name)?);
    }
    Ok(Some(step))
}

/// The per-head RMSNorm (`u / sqrt(mean(u^2) + 1e-6) * g`, f32) of every `dh` columns of
/// `x`, in place.
fn rms_heads(x: &mut [f32], dh: usize, g: &[f32]) {
    for head in x.chunks_exact_mut(dh) {
        let inv = 1.0 / (head.iter().map(|v| v * v).sum::<f32>() / dh as f32 + 1e-6).sqrt();
        for (v, g) in head.iter_mut().zip(g) {
            *v *= inv * g;
        }
    }
}

fn f32s(bits: &[u16]) -> Vec<f32> {
    bits.iter().map(|&b| f16::from_bits(b).to_f32()).collect()
}

/// The f32 CPU reference of `s` on the host copies of its inputs: q and k normalized per
/// head, then `math::window_attention` or `math::cross_attention` (mask of ones).
fn cpu_reference(s: &AttentionShape, a: &[u16], b: &[u16], gq: &[u16], gk: &[u16]) -> Vec<f32> {
    let (d, dh) = (s.heads * s.head_dim, s.head_dim);
    let (gq, gk) = (f32s(gq), f32s(gk));
    match s.kind {
        AttentionKind::Window {
            grid,
            window,
            shift,
        } => {
            let mut qkv = f32s(a);
            for row in qkv.chunks_exact_mut(3 * d) {
                rms_heads(&mut row[..d], dh, &gq);
                rms_heads(&mut row[d..2 * d], dh, &gk);
            }
            let mut out = vec![0.0; qkv.len() / 3];
            crate::math::window_attention(&qkv, s.batch, grid, window, shift, s.heads, d, &mut out);
            out
        }
        AttentionKind::Cross { tokens, text_len } => {
            let mut q = f32s(a);
            let mut kv = f32s(b);
            rms_heads(&mut q, dh, &gq);
            for row in kv.chunks_exact_mut(2 * d) {
                rms_heads(&mut row[..d], dh, &gk);
            }
            let mask = vec![1.0; s.batch * text_len];
            let mut out = vec![0.0; s.batch * tokens * d];
            let (b, h) = (s.batch, s.heads);
            crate::math::cross_attention(&q, &kv, &mask, b, tokens, text_len, h, d, &mut out);
            out
        }
        AttentionKind::KvCache {
            tokens,
            frame_tokens,
            frames,
            ..
        } => {
            // No norms (the kernel takes q and the cache already normalized and rotated).
            let (q, cache) = (f32s(a), f32s(b));
            let keys: Vec<usize> = slot_table(frames)
                .iter()
                .flat_map(|&slot| (0..frame_tokens).map(move |j| slot as usize * frame_tokens + j))
                .collect();
            let scale = 1.0 / (dh as f32).sqrt();
            let mut out = vec![0.0; tokens * d];
            let mut scores = vec![0.0f32; keys.len()];
            for r in 0..tokens {
                for e in 0..s.heads {
                    let qr = &q[r * d + e * dh..r * d + (e + 1) * dh];
                    for (sc, &k) in scores.iter_mut().zip(&keys) {
                        let kr = &cache[k * 2 * d + e * dh..k * 2 * d + (e + 1) * dh];
                        *sc = qr.iter().zip(kr).map(|(a, b)| a * b).sum::<f32>() * scale;
                    }
                    let m = scores.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
                    let mut sum = 0.0;
                    for sc in scores.iter_mut() {
                        *sc = (*sc - m).exp();
                        sum += *sc;
                    }
                    let o = &mut out[r * d + e * dh..r * d + (e + 1) * dh];
                    for (p, &k) in scores.iter().zip(&keys) {
                        let vr = &cache[k * 2 * d + d + e * dh..k * 2 * d + d + (e + 1) * dh];
                        for (o, v) in o.iter_mut().zip(vr) {
                            *o += p / sum * v;
                        }
                    }
                }
            }
            out
        }
    }
}

/// The bench's frame table: the cache's slots in reverse order (a gather, not the identity).
fn slot_table(frames: usize) -> Vec<i32> {
    (0..frames as i32).rev().collect()
}

fn rel_l2(got: &[u16], want: &[f32]) -> f64 {
    let (mut num, mut den) = (0.0f64, 0.0f64);
    for (&g, &w) in got.iter().zip(want) {
        let g = f16::from_bits(g).to_f64();
        let e = if g.is_finite() { g - w as f64 } else { f64::INFINITY };
        num += e * e;
        den += (w as f64) * (w as f64);
    }
    (num / den.max(f64::MIN_POSITIVE)).sqrt()
}

/// Times every attention path of `dev` on each of `shapes`, `reps` launches each; with
/// `check` each path's output is also compared with the f32 CPU reference.
pub fn bench_attention<D: Device>(
    dev: &mut D,
    shapes: &[AttentionShape],
    reps: usize,
    check: bool,
) -> Result<Vec<AttentionTiming>> {
    if reps == 0 {
        return Err(Error::Invalid(
            "kernel bench: the launches per shape must be at least 1".into(),
        ));
    }
    let mut rows = Vec::with_capacity(shapes.len());
    for (i, s) in shapes.iter().enumerate() {
        let d = s.heads * s.head_dim;
        let (a_len, b_len, out_len) = match s.kind {
            AttentionKind::Window { grid, .. } => {
                let rows = s.batch * grid.iter().product::<usize>();
                (rows * 3 * d, 1, rows * d)
            }
            AttentionKind::Cross { tokens, text_len } => {
                (s.batch * tokens * d, s.batch * text_len * 2 * d, s.batch * tokens * d)
            }
            AttentionKind::KvCache {
                tokens,
                frame_tokens,
                cache_slots,
                ..
            } => (tokens * d, cache_slots * frame_tokens * 2 * d, tokens * d),
        };
        let text = match s.kind {
            AttentionKind::Cross { text_len, .. } => s.batch * text_len,
            AttentionKind::Window { .. } | AttentionKind::KvCache { .. } => 1,
        };
        let frames = match s.kind {
            AttentionKind::KvCache { frames, .. } => frames,
            _ => 1,
        };
        let bufs = Bufs {
            a: dev.alloc::<u16>("bench attention q/qkv", a_len)?,
            b: dev.alloc::<u16>("bench attention kv", b_len)?,
            gq: dev.alloc::<u16>("bench attention gq", s.head_dim)?,
            gk: dev.alloc::<u16>("bench attention gk", s.head_dim)?,
            mask: dev.alloc::<f32>("bench attention mask", text)?,
            slots: dev.alloc::<i32>("bench attention frame table", frames)?,
            out: dev.alloc::<u16>("bench attention out", out_len)?,
        };
        let result = bench_shape(dev, s, i as u64, reps, check, &bufs, [a_len, b_len, out_len]);
        dev.free(bufs.a)?;
        dev.free(bufs.b)?;
        dev.free(bufs.gq)?;
        dev.free(bufs.gk)?;
        dev.free(bufs.mask)?;
        dev.free(bufs.slots)?;
        dev.free(bufs.out)?;
        rows.push(AttentionTiming {
            shape: *s,
            unpacked_ctas: s.window().map(|w| w.unpacked_tiles()),
            paths: result?,
        });
    }
    Ok(rows)
}

#[allow(clippy::too_many_arguments)]
fn bench_shape<D: Device>(
    dev: &mut D,
    s: &AttentionShape,
    seed: u64,
    reps: usize,
    check: bool,
    b: &Bufs,
    [a_len, b_len, out_len]: [usize; 3],
) -> Result<Vec<AttentionPath>> {
    let a = random_f16(a_len, 4 * seed + 11);
    let kv = random_f16(b_len, 4 * seed + 12);
    // Gains in [0.5, 1.5).
    let gain = |k: u64| -> Vec<u16> {
        random_f16(s.head_dim, 4 * seed + k)
            .iter()
            .map(|&h| f16::from_f32(1.0 + 0.5 * f16::from_bits(h).to_f32()).to_bits())
            .collect()
    };
    let (gq, gk) = (gain(13), gain(14));
    dev.write(b.a, &a)?;
    dev.write(b.b, &kv)?;
    dev.write(b.gq, &gq)?;
    dev.write(b.gk, &gk)?;
    let ones = vec![1.0f32; b.mask.len()];
    dev.write(b.mask, &ones)?;
    let table = match s.kind {
        AttentionKind::KvCache { frames, .. } => slot_table(frames),
        _ => vec![0],
    };
    dev.write(b.slots, &table)?;
    let want = check.then(|| cpu_reference(s, &a, &kv, &gq, &gk));
    let mem = b.a.cast::<u8>()?;
    let mut reference = vec![0u16; out_len];
    let mut got = vec![0u16; out_len];
    let mut paths = Vec::new();
    for (path, sm90) in [("mma.sync", false), ("sm90a", true)] {
        let Some(step) = step(dev, s, b, sm90)? else {
            continue;
        };
        let Step::Launch {
            kernel_name,
            config,
            ..
        } = &step
        else {
            continue;
        };
        let ctas = config.grid.x as u64 * config.grid.y as u64 * config.grid.z as u64;
        let kernel = *kernel_name;
        dev.memset(b.out, 0xFF)?;
        let ms = time(dev, reps, |d| run(d, mem, std::slice::from_ref(&step)))?;
        let out = if sm90 { &mut got } else { &mut reference };
        dev.read(b.out, out)?;
        let rel = if sm90 { rel_diff(&got, &reference) } else { 0.0 };
        let out = if sm90 { &got } else { &reference };
        paths.push(AttentionPath {
            path,
            kernel,
            ctas,
            ms,
            tflops: s.flops() / (ms * 1e-3) / 1e12,
            rel_diff: rel,
            rel_l2_cpu: want.as_ref().map(|w| rel_l2(out, w)),
        });
    }
    Ok(paths)
}
