//! Wan2.1's attention path in the emulator: `wan_qkv_rope` (full-width q/k RMSNorm, 3D
//! RoPE, the chunk's K/V written into its cache slots), `attn_kvcache_d{16,128}` (a chunk
//! over the ring-buffer KV cache), and the cross-attention (`wan_rms_rows` on q and on the
//! text keys, then the existing `attn_cross_d{16,128}` with null gains and a mask of ones).
//!
//! References, from the same f16 inputs, written from docs/wan.md sections 2.4, 2.5, 4, 5:
//! - **f64**: RMS over all D channels, times the gain, rotated with f64 angles
//!   `pos * 10000^(-k / n)`, softmax attention in f64;
//! - **plain f16**: what an unfused f16 implementation computes, every intermediate tensor
//!   stored f16: `f16(RMS(x) g)` (f32 math), `f16(RoPE(.))` (f32 math, the same f32 angle
//!   tables), then the plain f16 attention of tests/attention.rs (f16 scores, f16 scaled
//!   scores, f16 softmax, f16 P V with f32 accumulation).
//!
//! Acceptance: the chain of kernels (prep then attention) has a relative L2 error against
//! the f64 reference at most 2x that of the plain f16 chain and at most 2e-3; the prep
//! outputs are checked element by element against f64 with the tolerance derived at
//! [`prep_tol`]. Inputs are fresh random non-zero values; outputs (queries, attention output,
//! the cache before its first write) start as NaN, so unwritten elements fail; every launch
//! runs in forward, reverse and shuffled thread order. A stream of calls drives the cache
//! through every fill state (empty, partly full, full, evicting with a sink and wrapping the
//! ring) and a LongLive re-cache call (query-only frames that store nothing, `R != c`
//! frames); slots a call does not own must keep their bits.
//!
//! `STREAMDIT_FULL=1` adds the 1.3B width (12 heads of 128, D = 1536) over a Self-Forcing
//! window of 21 frames through its wrap-around, and a 12-head cross-attention to 512 keys.
//!
//! Race checker: the wan-tiny stream, the full-cache chunk of the 1.3B-width stream and the
//! tiny cross-attention run under `emu::racecheck` in the default tier; with
//! `STREAMDIT_FULL=1` every launch does.

mod common;

use common::Rng;
use half::f16;
use streamdit_kernels::attention::{self, CrossShape};
use streamdit_kernels::emu::{self, LaunchConfig, ThreadOrder};
use streamdit_kernels::wan_attention::{self as wa, KvCacheShape, KvWindow};
use streamdit_kernels::wan_qk::{self, QkvRopeShape};

const REL_L2_MAX: f64 = 2e-3;
const U_F16: f64 = 1.0 / 2048.0;
const U_F32: f64 = 1.0 / (1u64 << 24) as f64;

fn full() -> bool {
    std::env::var("STREAMDIT_FULL").is_ok_and(|v| v == "1")
}

fn r16(x: f32) -> f32 {
    f16::from_f32(x).to_f32()
}

fn random_f16(rng: &mut Rng, n: usize, lo: f32, hi: f32) -> (Vec<u16>, Vec<f32>) {
    let bits: Vec<u16> = (0..n)
        .map(|_| f16::from_f32(rng.nonzero(lo, hi)).to_bits())
        .collect();
    let vals = bits.iter().map(|&b| f16::from_bits(b).to_f32()).collect();
    (bits, vals)
}

fn to_f64(bits: &[u16]) -> Vec<f64> {
    bits.iter().map(|&b| f16::from_bits(b).to_f64()).collect()
}

fn rel_l2(got: &[f64], want: &[f64]) -> f64 {
    let (mut num, mut den) = (0.0, 0.0);
    for (&g, &w) in got.iter().zip(want) {
        let e = if g.is_finite() { g - w } else { f64::INFINITY };
        num += e * e;
        den += w * w;
    }
    (num / den).sqrt()
}

/// # Safety
/// `params` mirrors the kernel's parameter struct; its pointers cover the kernel's accesses.
unsafe fn run<P: Copy>(name: &str, config: LaunchConfig, params: &P, order: ThreadOrder) {
    let _race = common::race_check_full();
    let kernel = emu::kernel(name).unwrap_or_else(|e| panic!("{e}"));
    // SAFETY: forwarded contract of this function.
    unsafe { emu::launch_with(kernel, config, params, order) }
        .unwrap_or_else(|e| panic!("{name} {order:?}: {e}"));
}

// ---------------------------------------------------------------------------------------
// References of the q/k preparation.
// ---------------------------------------------------------------------------------------

/// RMS over the whole row times the gain: f64, and plain f16 (f32 math, f16 result).
fn rms64(x: &[f32], g: &[f32]) -> Vec<f64> {
    let ms = x.iter().map(|&a| f64::from(a).powi(2)).sum::<f64>() / x.len() as f64;
    let inv = 1.0 / (ms + 1e-6).sqrt();
    x.iter()
        .zip(g)
        .map(|(&a, &g)| f64::from(a) * inv * f64::from(g))
        .collect()
}

fn rms_plain(x: &[f32], g: &[f32]) -> Vec<f32> {
    let ss: f32 = x.iter().map(|&a| a * a).sum();
    let inv = 1.0 / (ss / x.len() as f32 + 1e-6).sqrt();
    x.iter().zip(g).map(|(&a, &g)| r16(a * inv * g)).collect()
}

/// The RoPE geometry of a call: per-head split and the three f32 tables the kernel reads.
struct Rope {
    dh: usize,
    split: wan_qk::RopeSplit,
    wp: usize,
    row: Vec<f32>,
    col: Vec<f32>,
}

impl Rope {
    fn new(dh: usize, hp: usize, wp: usize) -> Self {
        let split = wan_qk::rope_split(dh);
        Rope {
            dh,
            split,
            wp,
            row: wan_qk::rope_axis_table(0..hp as i64, split.row),
            col: wan_qk::rope_axis_table(0..wp as i64, split.col),
        }
    }

    /// (axis position, pair index within the axis, pairs of the axis) of head pair m.
    fn pair(&self, m: usize, pos: u64, t: usize) -> (u64, usize, usize, u8) {
        let s = self.split;
        if m < s.frame {
            (pos, m, s.frame, 0)
        } else if m < s.frame + s.row {
            ((t / self.wp) as u64, m - s.frame, s.row, 1)
        } else {
            ((t % self.wp) as u64, m - s.frame - s.row, s.col, 2)
        }
    }

    /// Rotates one token's D channels in f64 with exact angles.
    fn apply64(&self, v: &mut [f64], pos: u64, t: usize) {
        for (m2, pair) in v.chunks_exact_mut(2).enumerate() {
            let (x, k, n, _) = self.pair(m2 % (self.dh / 2), pos, t);
            let a = x as f64 * 10000f64.powf(-(k as f64) / n as f64);
            let (s, c) = a.sin_cos();
            let (x0, x1) = (pair[0], pair[1]);
            pair[0] = x0 * c - x1 * s;
            pair[1] = x0 * s + x1 * c;
        }
    }

    /// Rotates f16 values with the f32 tables in f32, rounding to f16 (plain f16).
    fn apply_plain(&self, v: &mut [f32], frame_table: &[f32], f: usize, t: usize) {
        for (m2, pair) in v.chunks_exact_mut(2).enumerate() {
            let (x, k, n, axis) = self.pair(m2 % (self.dh / 2), f as u64, t);
            let cs = match axis {
                0 => &frame_table[(f * n + k) * 2..],
                1 => &self.row[(x as usize * n + k) * 2..],
                _ => &self.col[(x as usize * n + k) * 2..],
            };
            let (c, s) = (cs[0], cs[1]);
            let (x0, x1) = (pair[0], pair[1]);
            pair[0] = r16(x0 * c - x1 * s);
            pair[1] = r16(x0 * s + x1 * c);
        }
    }
}

/// Tolerance of one rotated element with f64 reference `want` whose pair (before rotation)
/// is `(a0, a1)`: the f16 rounding of the stored result (`u16 |want|`, plus 2^-24 for the
/// subnormal range), and the f32 evaluation: the sum of squares (<= 64 sequential terms per
/// lane, then 5 shuffle levels: relative error <= 69 u32, so <= 35 u32 in 1/sqrt), the
/// rsqrt (2 ulp), the two products by inv and the gain, the f32 table's cos/sin (1 u32
/// each) and the rotation's two products and sum (3 u32) of terms bounded by `|a0| + |a1|`:
/// about 44 u32 (|a0| + |a1|), taken as 64 u32.
fn prep_tol(want: f64, a0: f64, a1: f64) -> f64 {
    U_F16 * want.abs() + 64.0 * U_F32 * (a0.abs() + a1.abs()) + f64::powi(2.0, -24)
}

/// Checks `got` (f16 bits of rows of `d`) against the f64 rows `want` whose unrotated
/// values are `pre` (pairs), returning the worst err/tol.
fn check_rows(label: &str, got: &[f64], want: &[f64], pre: &[f64]) -> f64 {
    let mut worst = 0.0f64;
    for i in 0..want.len() {
        let p = i & !1;
        let tol = prep_tol(want[i], pre[p], pre[p + 1]);
        let err = (got[i] - want[i]).abs();
        assert!(
            err <= tol,
            "{label}: element {i}: got {} want {} (tol {tol:e})",
            got[i],
            want[i]
        );
        worst = worst.max(err / tol);
    }
    worst
}

// ---------------------------------------------------------------------------------------
// Attention references.
// ---------------------------------------------------------------------------------------

/// One query row over keys: f64 softmax attention, and the plain f16 one.
fn attend64(q: &[f64], keys: &[&[f64]], vals: &[&[f32]], out: &mut [f64]) {
    let scale = 1.0 / (q.len() as f64).sqrt();
    let s: Vec<f64> = keys
        .iter()
        .map(|k| q.iter().zip(*k).map(|(a, b)| a * b).sum::<f64>() * scale)
        .collect();
    let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let e: Vec<f64> = s.iter().map(|&x| (x - m).exp()).collect();
    let sum: f64 = e.iter().sum();
    out.fill(0.0);
    for (p, v) in e.iter().zip(vals) {
        for (o, &vv) in out.iter_mut().zip(*v) {
            *o += p / sum * f64::from(vv);
        }
    }
}

fn attend_plain(q: &[f32], keys: &[&[f32]], vals: &[&[f32]], out: &mut [f64]) {
    let scale16 = r16(1.0 / (q.len() as f32).sqrt());
    let x: Vec<f32> = keys
        .iter()
        .map(|k| r16(r16(q.iter().zip(*k).map(|(a, b)| a * b).sum::<f32>()) * scale16))
        .collect();
    let m = x.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    let e: Vec<f32> = x.iter().map(|&x| r16(r16(x - m).exp())).collect();
    let sum = r16(e.iter().sum::<f32>());
    let mut acc = vec![0.0f32; q.len()];
    for (&e, v) in e.iter().zip(vals) {
        let p = r16(e / sum);
        for (o, &vv) in acc.iter_mut().zip(*v) {
            *o += p * vv;
        }
    }
    for (o, a) in out.iter_mut().zip(acc) {
        *o = f64::from(r16(a));
    }
}

/// Runs `name` in every order with a fresh NaN output and checks it against `want` with
/// the 2x-plain rule; returns the kernel's error.
fn check_attention<P: Copy>(
    label: &str,
    seed: u64,
    (name, config): (&str, LaunchConfig),
    out_len: usize,
    params: impl Fn(*mut u16) -> P,
    want: &[f64],
    plain: &[f64],
) -> f64 {
    let plain_err = rel_l2(plain, want);
    let mut worst = 0.0f64;
    for order in ThreadOrder::all(seed) {
        let mut out = vec![0xffffu16; out_len];
        let p = params(out.as_mut_ptr());
        // SAFETY: the caller's `params` covers the kernel's extents for `config`; `out`
        // (out_len elements) lives until the launch returns.
        unsafe { run(name, config, &p, order) };
        let got = to_f64(&out);
        if let Some(i) = got.iter().position(|v| !v.is_finite()) {
            panic!("{label} {order:?}: output element {i} is {}", got[i]);
        }
        let err = rel_l2(&got, want);
        eprintln!(
            "{label} {order:?}: kernel rel L2 {err:.3e}, plain f16 {plain_err:.3e} (ratio {:.2})",
            err / plain_err
        );
        assert!(
            err <= 2.0 * plain_err && err <= REL_L2_MAX,
            "{label} {order:?}: kernel error {err:e} vs plain f16 {plain_err:e}"
        );
        worst = worst.max(err);
    }
    worst
}

// ---------------------------------------------------------------------------------------
// The streaming harness.
// ---------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug)]
struct Dims {
    heads: usize,
    dh: usize,
    hp: usize,
    wp: usize,
}

impl Dims {
    fn d(&self) -> usize {
        self.heads * self.dh
    }
    fn p(&self) -> usize {
        self.hp * self.wp
    }
}

/// What the references know of a cache slot: the frame it holds and its keys (f64 and
/// plain f16, rotated) and values.
#[derive(Clone)]
struct SlotModel {
    pos: u64,
    k64: Vec<f64>,
    k_plain: Vec<f32>,
    v: Vec<f32>,
}

struct Stream {
    label: &'static str,
    dims: Dims,
    slots: usize,
    rope: Rope,
    rng: Rng,
    gq: (Vec<u16>, Vec<f32>),
    gk: (Vec<u16>, Vec<f32>),
    /// The kernels' cache, `[slots * P, 2D]`, NaN until written.
    cache: Vec<u16>,
    model: Vec<Option<SlotModel>>,
    seed: u64,
}

impl Stream {
    fn new(label: &'static str, seed: u64, dims: Dims, slots: usize) -> Self {
        let mut rng = Rng::new(seed);
        let gq = random_f16(&mut rng, dims.d(), 0.6, 1.6);
        let gk = random_f16(&mut rng, dims.d(), 0.6, 1.6);
        Stream {
            label,
            dims,
            slots,
            rope: Rope::new(dims.dh, dims.hp, dims.wp),
            rng,
            gq,
            gk,
            cache: vec![0xffff; slots * dims.p() * 2 * dims.d()],
            model: vec![None; slots],
            seed,
        }
    }

    /// One model call: `positions` are the absolute frames of the call's queries,
    /// `store[f]` the slot its K/V go to (negative: not stored), `attended` the table of
    /// (position, slot) the queries attend (`None`: skip the attention, prep only).
    fn call(&mut self, positions: &[u64], store: &[i32], attended: Option<&[(u64, usize)]>) {
        let Dims { heads, dh, .. } = self.dims;
        let (d, p) = (self.dims.d(), self.dims.p());
        let frames = positions.len();
        let tokens = frames * p;
        self.seed += 1;
        let seed = self.seed;
        let label = format!("{} call at frames {positions:?}", self.label);
        let (qkv_bits, qkv) = random_f16(&mut self.rng, tokens * 3 * d, -1.0, 1.0);
        let frame_table =
            wan_qk::rope_axis_table(positions.iter().map(|&p| p as i64), self.rope.split.frame);

        // References of the prep, per token.
        let mut q64 = vec![0.0; tokens * d];
        let mut q_pre = vec![0.0; tokens * d];
        let mut q_plain = vec![0.0f32; tokens * d];
        let mut k64 = vec![0.0; tokens * d];
        let mut k_pre = vec![0.0; tokens * d];
        let mut k_plain = vec![0.0f32; tokens * d];
        for n in 0..tokens {
            let (f, t) = (n / p, n % p);
            let row = &qkv[n * 3 * d..(n + 1) * 3 * d];
            for (src, g, out64, pre, plain) in [
                (&row[..d], &self.gq.1, &mut q64, &mut q_pre, &mut q_plain),
                (
                    &row[d..2 * d],
                    &self.gk.1,
                    &mut k64,
                    &mut k_pre,
                    &mut k_plain,
                ),
            ] {
                let mut a = rms64(src, g);
                pre[n * d..(n + 1) * d].copy_from_slice(&a);
                self.rope.apply64(&mut a, positions[f], t);
                out64[n * d..(n + 1) * d].copy_from_slice(&a);
                let mut b = rms_plain(src, g);
                self.rope.apply_plain(&mut b, &frame_table, f, t);
                plain[n * d..(n + 1) * d].copy_from_slice(&b);
            }
        }

        // The prep kernel, in every order, from the same cache state.
        let shape = QkvRopeShape {
            frames,
            hp: self.dims.hp,
            wp: self.dims.wp,
            heads,
            head_dim: dh,
            cache_slots: self.slots,
        };
        let config = wan_qk::qkv_rope_config(&shape).unwrap();
        wan_qk::check_frame_slots(store, frames, self.slots).unwrap();
        let before = self.cache.clone();
        let mut result: Option<(Vec<u16>, Vec<u16>)> = None;
        for order in ThreadOrder::all(seed) {
            let mut cache = before.clone();
            let mut q_out = vec![0xffffu16; tokens * d];
            let params = wan_qk::WanQkvRopeParams {
                qkv: qkv_bits.as_ptr(),
                gq: self.gq.0.as_ptr(),
                gk: self.gk.0.as_ptr(),
                rope_f: frame_table.as_ptr(),
                rope_h: self.rope.row.as_ptr(),
                rope_w: self.rope.col.as_ptr(),
                frame_slots: store.as_ptr(),
                q_out: q_out.as_mut_ptr(),
                cache: cache.as_mut_ptr(),
                frames: frames as i32,
                hp: self.dims.hp as i32,
                wp: self.dims.wp as i32,
                heads: heads as i32,
                head_dim: dh as i32,
            };
            // SAFETY: qkv (tokens, 3D), gains (D), tables (frames, nf, 2), (hp, nh, 2),
            // (wp, nw, 2), frame_slots (frames) within the cache's slots (checked above),
            // q_out (tokens, D), cache (slots * P, 2D): the extents of this shape.
            unsafe { run(wan_qk::KERNEL_QKV_ROPE, config, &params, order) };
            match &result {
                None => result = Some((q_out, cache)),
                Some((q0, c0)) => assert!(
                    *q0 == q_out && *c0 == cache,
                    "{label} {order:?}: prep differs between thread orders"
                ),
            }
        }
        let (q_out, cache) = result.unwrap();
        let wq = check_rows(&format!("{label} q"), &to_f64(&q_out), &q64, &q_pre);
        // The cache: the stored frames' rows hold k (checked like q) and v (bit-exact);
        // every other row keeps its bits.
        let row_len = 2 * d;
        let mut wk = 0.0f64;
        let mut owned = vec![false; self.slots];
        for (f, &s) in store.iter().enumerate() {
            if s < 0 {
                continue;
            }
            let s = s as usize;
            owned[s] = true;
            for t in 0..p {
                let n = f * p + t;
                let crow = &cache[(s * p + t) * row_len..(s * p + t + 1) * row_len];
                wk = wk.max(check_rows(
                    &format!("{label} k of frame {f} token {t}"),
                    &to_f64(&crow[..d]),
                    &k64[n * d..(n + 1) * d],
                    &k_pre[n * d..(n + 1) * d],
                ));
                assert!(
                    crow[d..] == qkv_bits[n * 3 * d + 2 * d..(n + 1) * 3 * d],
                    "{label}: v of frame {f} token {t} is not the input's"
                );
            }
        }
        for s in (0..self.slots).filter(|&s| !owned[s]) {
            let r = s * p * row_len..(s + 1) * p * row_len;
            assert!(
                cache[r.clone()] == before[r],
                "{label}: slot {s}, not written by this call, changed"
            );
        }
        eprintln!("{label}: prep worst err/tol q {wq:.3}, k {wk:.3}");
        self.cache = cache;
        for (f, &s) in store.iter().enumerate() {
            if s >= 0 {
                let r = f * p * d..(f + 1) * p * d;
                let v = (f * p..(f + 1) * p)
                    .flat_map(|n| qkv[n * 3 * d + 2 * d..(n + 1) * 3 * d].to_vec())
                    .collect();
                self.model[s as usize] = Some(SlotModel {
                    pos: positions[f],
                    k64: k64[r.clone()].to_vec(),
                    k_plain: k_plain[r].to_vec(),
                    v,
                });
            }
        }

        let Some(attended) = attended else { return };
        // The attention over the attended frames.
        let table: Vec<i32> = attended.iter().map(|&(_, s)| s as i32).collect();
        wa::check_attended(&table, table.len(), self.slots).unwrap();
        let frames_in = attended
            .iter()
            .map(|&(pos, s)| {
                let m = self.model[s].as_ref().expect("attended slot never written");
                assert_eq!(m.pos, pos, "{label}: slot {s} holds another frame");
                m
            })
            .collect::<Vec<_>>();
        let launch = wa::kvcache_config(&KvCacheShape {
            tokens,
            frame_tokens: p,
            frames: table.len(),
            heads,
            head_dim: dh,
            cache_slots: self.slots,
        })
        .unwrap();
        let mut want = vec![0.0; tokens * d];
        let mut plain = vec![0.0; tokens * d];
        for e in 0..heads {
            let hs = |n: usize| n * d + e * dh..n * d + (e + 1) * dh;
            let keys64: Vec<&[f64]> = frames_in
                .iter()
                .flat_map(|m| (0..p).map(move |t| &m.k64[hs(t)]))
                .collect();
            let keys16: Vec<&[f32]> = frames_in
                .iter()
                .flat_map(|m| (0..p).map(move |t| &m.k_plain[hs(t)]))
                .collect();
            let vals: Vec<&[f32]> = frames_in
                .iter()
                .flat_map(|m| (0..p).map(move |t| &m.v[hs(t)]))
                .collect();
            for n in 0..tokens {
                attend64(&q64[hs(n)], &keys64, &vals, &mut want[hs(n)]);
                attend_plain(&q_plain[hs(n)], &keys16, &vals, &mut plain[hs(n)]);
            }
        }
        eprintln!(
            "{label}: {tokens} queries over {} frames = {} keys, {heads} heads of {dh}",
            table.len(),
            table.len() * p
        );
        let cache = &self.cache;
        check_attention(
            &label,
            seed,
            (launch.kernel, launch.config),
            tokens * d,
            |out| wa::AttnKvCacheParams {
                q: q_out.as_ptr(),
                cache: cache.as_ptr(),
                frame_slots: table.as_ptr(),
                out,
                tokens: tokens as i32,
                frame_tokens: p as i32,
                frames: table.len() as i32,
                heads: heads as i32,
            },
            &want,
            &plain,
        );
    }

    /// A chunk of the stream at `f0` with the ring layout of `win`.
    fn chunk(&mut self, win: &KvWindow, f0: u64) {
        let positions: Vec<u64> = (f0..f0 + win.chunk as u64).collect();
        let store: Vec<i32> = positions.iter().map(|&p| win.slot(p) as i32).collect();
        self.call(&positions, &store, Some(&win.attended(f0)));
    }
}

/// wan-tiny (docs/wan.md section 8): 3 heads of 16 (RoPE 4/2/2 pairs), 4 x 4 tokens per
/// frame, chunks of 2, window 4 with a sink of 1. Chunks at 0 (empty cache), 2 (full, no
/// eviction), 4 and 6 (evicting, the ring wraps: frames 4, 5 reuse frames 1, 2's slots).
#[test]
fn kvcache_wan_tiny_stream() {
    let dims = Dims {
        heads: 3,
        dh: 16,
        hp: 4,
        wp: 4,
    };
    let win = KvWindow::new(4, 1, 2).unwrap();
    let mut s = Stream::new("tiny", 100, dims, win.window);
    // Under the race checker in every tier: the prep and attention kernels, dh = 16.
    let _race = emu::racecheck(true);
    for f0 in [0, 2, 4, 6] {
        s.chunk(&win, f0);
    }
}

/// dh = 128 with LongLive's window (12 frames, sink 3, chunks of 3) on a ragged 5 x 7 frame
/// (35 tokens: query and key tiles straddle frames): chunks at 0 (empty), 3 (partly full),
/// 6, 9 (full), 12 and 15 (evicting past the sink, the ring wraps), then a LongLive re-cache
/// at s0 = 18: one call of R = 12 frames (6..17), the first 3 query-only (not stored, not
/// attended), the others rewriting their slots, attending the old sink and the new frames;
/// then the next chunk attends the re-cached frames.
#[test]
fn kvcache_d128_longlive_window_and_recache() {
    let dims = Dims {
        heads: 2,
        dh: 128,
        hp: 5,
        wp: 7,
    };
    let win = KvWindow::new(12, 3, 3).unwrap();
    let mut s = Stream::new("d128 longlive", 200, dims, win.window);
    for f0 in [0, 3, 6, 9, 12, 15] {
        // Prep only for 6 and 9 (their caches are read by later chunks); attention at
        // every other fill state.
        if f0 == 6 || f0 == 9 {
            let positions: Vec<u64> = (f0..f0 + 3).collect();
            let store: Vec<i32> = positions.iter().map(|&p| win.slot(p) as i32).collect();
            s.call(&positions, &store, None);
        } else {
            s.chunk(&win, f0);
        }
    }
    let positions: Vec<u64> = (6..18).collect();
    let store: Vec<i32> = positions
        .iter()
        .map(|&p| if p < 9 { -1 } else { win.slot(p) as i32 })
        .collect();
    let attended: Vec<(u64, usize)> = (0..3).chain(9..18).map(|p| (p, win.slot(p))).collect();
    s.call(&positions, &store, Some(&attended));
    s.chunk(&win, 18);
}

/// Wan2.1-1.3B's width (12 heads of 128: the RMSNorm spans D = 1536, six 16-byte chunks per
/// lane) on small 2 x 3 frames, Self-Forcing's layout scaled down (window 6, no sink, chunks
/// of 3): empty cache, full, then evicting frames 0..2 and reusing their slots.
#[test]
fn kvcache_1p3b_width_small_frames() {
    let dims = Dims {
        heads: 12,
        dh: 128,
        hp: 2,
        wp: 3,
    };
    let win = KvWindow::new(6, 0, 3).unwrap();
    let mut s = Stream::new("1.3b width 2x3", 250, dims, win.window);
    for f0 in [0, 3, 6] {
        // The full-cache chunk under the race checker in every tier (dh = 128).
        let _race = (f0 == 3).then(|| emu::racecheck(true));
        s.chunk(&win, f0);
    }
}

/// `STREAMDIT_FULL=1`: Wan2.1-1.3B's width (12 heads of 128: the RMSNorm spans D = 1536, six
/// chunks per lane) over Self-Forcing's window (21 frames, no sink) on an 8 x 13 frame,
/// chunks of 3 until the ring wraps (the chunk at 21 evicts frames 0..2 and reuses slots
/// 0..2, the one at 24 frames 3..5).
#[test]
fn kvcache_1p3b_width_self_forcing_window() {
    if !full() {
        eprintln!("skipped: set STREAMDIT_FULL=1");
        return;
    }
    let dims = Dims {
        heads: 12,
        dh: 128,
        hp: 8,
        wp: 13,
    };
    let win = KvWindow::new(21, 0, 3).unwrap();
    let mut s = Stream::new("1.3b width", 300, dims, win.window);
    for f0 in (0..27).step_by(3) {
        if [0, 21, 24].contains(&f0) {
            s.chunk(&win, f0);
        } else {
            let positions: Vec<u64> = (f0..f0 + 3).collect();
            let store: Vec<i32> = positions.iter().map(|&p| win.slot(p) as i32).collect();
            s.call(&positions, &store, None);
        }
    }
}

// ---------------------------------------------------------------------------------------
// Cross-attention: wan_rms_rows on q and the text keys, attn_cross with null gains.
// ---------------------------------------------------------------------------------------

/// Runs wan_rms_rows on `x` (rows of `ld`, channels [0, d)) in every order; checks it
/// against f64, that channels past d keep their bits and that the orders agree.
fn rms_rows(
    label: &str,
    seed: u64,
    x: &[u16],
    g: &(Vec<u16>, Vec<f32>),
    rows: usize,
    d: usize,
    ld: usize,
) -> Vec<u16> {
    let config = wan_qk::rms_rows_config(rows, d, ld).unwrap();
    let vals: Vec<f32> = x.iter().map(|&b| f16::from_bits(b).to_f32()).collect();
    let mut result: Option<Vec<u16>> = None;
    for order in ThreadOrder::all(seed) {
        let mut buf = x.to_vec();
        let params = wan_qk::WanRmsRowsParams {
            x: buf.as_mut_ptr(),
            gain: g.0.as_ptr(),
            rows: rows as i32,
            d: d as i32,
            ld: ld as i32,
        };
        // SAFETY: x (rows, ld) f16, gain (d): the extents of this shape.
        unsafe { run(wan_qk::KERNEL_RMS_ROWS, config, &params, order) };
        match &result {
            None => result = Some(buf),
            Some(b) => assert!(*b == buf, "{label} {order:?}: orders differ"),
        }
    }
    let out = result.unwrap();
    let mut worst = 0.0f64;
    for r in 0..rows {
        let want = rms64(&vals[r * ld..r * ld + d], &g.1);
        let got = to_f64(&out[r * ld..r * ld + d]);
        for (c, (&gv, &w)) in got.iter().zip(&want).enumerate() {
            // As prep_tol without the rotation: one term.
            let tol = U_F16 * w.abs() + 64.0 * U_F32 * w.abs() + f64::powi(2.0, -24);
            assert!(
                (gv - w).abs() <= tol,
                "{label}: row {r} channel {c}: {gv} vs {w}"
            );
            worst = worst.max((gv - w).abs() / tol);
        }
        assert!(
            out[r * ld + d..(r + 1) * ld] == x[r * ld + d..(r + 1) * ld],
            "{label}: row {r} changed past d"
        );
    }
    eprintln!("{label}: rms rows worst err/tol {worst:.3}");
    out
}

fn check_wan_cross(
    label: &str,
    seed: u64,
    tokens: usize,
    text_len: usize,
    heads: usize,
    dh: usize,
) {
    let d = heads * dh;
    let mut rng = Rng::new(seed);
    let (q_bits, q) = random_f16(&mut rng, tokens * d, -1.0, 1.0);
    let (kv_bits, kv) = random_f16(&mut rng, text_len * 2 * d, -1.0, 1.0);
    let gq = random_f16(&mut rng, d, 0.6, 1.6);
    let gk = random_f16(&mut rng, d, 0.6, 1.6);
    let qn = rms_rows(&format!("{label} q"), seed, &q_bits, &gq, tokens, d, d);
    let kvn = rms_rows(
        &format!("{label} k"),
        seed + 1,
        &kv_bits,
        &gk,
        text_len,
        d,
        2 * d,
    );
    // References from the original inputs.
    let q64: Vec<Vec<f64>> = (0..tokens)
        .map(|n| rms64(&q[n * d..(n + 1) * d], &gq.1))
        .collect();
    let q16: Vec<Vec<f32>> = (0..tokens)
        .map(|n| rms_plain(&q[n * d..(n + 1) * d], &gq.1))
        .collect();
    let k64: Vec<Vec<f64>> = (0..text_len)
        .map(|l| rms64(&kv[l * 2 * d..l * 2 * d + d], &gk.1))
        .collect();
    let k16: Vec<Vec<f32>> = (0..text_len)
        .map(|l| rms_plain(&kv[l * 2 * d..l * 2 * d + d], &gk.1))
        .collect();
    let mut want = vec![0.0; tokens * d];
    let mut plain = vec![0.0; tokens * d];
    for e in 0..heads {
        let h = e * dh..(e + 1) * dh;
        let keys64: Vec<&[f64]> = k64.iter().map(|k| &k[h.clone()]).collect();
        let keys16: Vec<&[f32]> = k16.iter().map(|k| &k[h.clone()]).collect();
        let vals: Vec<&[f32]> = (0..text_len)
            .map(|l| &kv[l * 2 * d + d + e * dh..l * 2 * d + d + (e + 1) * dh])
            .collect();
        for n in 0..tokens {
            let o = n * d + e * dh..n * d + (e + 1) * dh;
            attend64(&q64[n][h.clone()], &keys64, &vals, &mut want[o.clone()]);
            attend_plain(&q16[n][h.clone()], &keys16, &vals, &mut plain[o]);
        }
    }
    let launch = attention::cross_config(&CrossShape {
        batch: 1,
        tokens,
        text_len,
        heads,
        head_dim: dh,
    })
    .unwrap();
    // Wan has no text mask: all ones.
    let mask = vec![1.0f32; text_len];
    eprintln!("{label}: {tokens} queries, {text_len} text keys, {heads} heads of {dh}");
    check_attention(
        label,
        seed,
        (launch.kernel, launch.config),
        tokens * d,
        |out| attention::AttnCrossParams {
            q: qn.as_ptr(),
            kv: kvn.as_ptr(),
            mask: mask.as_ptr(),
            gq: std::ptr::null(),
            gk: std::ptr::null(),
            out,
            tokens: tokens as i32,
            text_len: text_len as i32,
            heads: heads as i32,
        },
        &want,
        &plain,
    );
}

/// wan-tiny: 3 heads of 16, text_len 8 (one ragged key tile), a chunk's 32 tokens plus a
/// ragged query tile (40).
#[test]
fn cross_wan_tiny() {
    let _race = emu::racecheck(true);
    check_wan_cross("cross tiny", 400, 40, 8, 3, 16);
}

/// The 1.3B width (12 heads of 128, D = 1536: six chunks per lane in the row norm), 70
/// queries (a ragged query tile), 77 text keys (a ragged key tile); with `STREAMDIT_FULL=1`
/// also Wan's 512 text keys (8 key tiles, the K/V ring wraps).
#[test]
fn cross_wan_d128() {
    check_wan_cross("cross d128", 401, 70, 77, 12, 128);
    if full() {
        check_wan_cross("cross 1.3b, Lt 512", 402, 130, 512, 12, 128);
    }
}

#[test]
fn shapes_outside_the_contract_are_errors() {
    let ok = KvCacheShape {
        tokens: 32,
        frame_tokens: 16,
        frames: 4,
        heads: 3,
        head_dim: 16,
        cache_slots: 4,
    };
    assert_eq!(
        wa::kvcache_config(&ok).unwrap().kernel,
        wa::KERNEL_KVCACHE_D16
    );
    let cases: Vec<(KvCacheShape, &str)> = vec![
        (KvCacheShape { head_dim: 64, ..ok }, "head dim dh = 64"),
        (KvCacheShape { tokens: 0, ..ok }, "at least 1"),
        (KvCacheShape { frames: 0, ..ok }, "at least 1"),
        (
            KvCacheShape { frames: 5, ..ok },
            "exceed the cache's 4 slots",
        ),
        (KvCacheShape { heads: 0, ..ok }, "heads = 0"),
        (
            KvCacheShape {
                frame_tokens: 1 << 30,
                ..ok
            },
            "exceeds i32",
        ),
    ];
    for (shape, rule) in cases {
        let err = wa::kvcache_config(&shape).expect_err(rule);
        assert!(
            err.starts_with("attn_kvcache") && err.contains(rule),
            "{err} (wanted {rule})"
        );
    }
    assert!(wa::check_attended(&[0, 3, 1, 2], 4, 4).is_ok());
    for (table, rule) in [
        (&[0, 3, 1][..], "3 entries for 4"),
        (&[0, 3, 1, 4], "slot 4, outside"),
        (&[0, 3, -1, 2], "slot -1, outside"),
        (&[0, 3, 3, 2], "attended twice"),
    ] {
        let err = wa::check_attended(table, 4, 4).expect_err(rule);
        assert!(err.contains(rule), "{err} (wanted {rule})");
    }

    let ok = QkvRopeShape {
        frames: 2,
        hp: 4,
        wp: 4,
        heads: 3,
        head_dim: 16,
        cache_slots: 4,
    };
    assert!(wan_qk::qkv_rope_config(&ok).is_ok());
    let cases: Vec<(QkvRopeShape, &str)> = vec![
        (QkvRopeShape { head_dim: 12, ..ok }, "dh = 12"),
        (
            QkvRopeShape {
                heads: 17,
                head_dim: 128,
                ..ok
            },
            "D = 2176",
        ),
        (QkvRopeShape { frames: 0, ..ok }, "at least 1"),
        (
            QkvRopeShape {
                cache_slots: 0,
                ..ok
            },
            "at least 1",
        ),
        (
            QkvRopeShape {
                cache_slots: 1 << 28,
                ..ok
            },
            "exceeds i32",
        ),
    ];
    for (shape, rule) in cases {
        let err = wan_qk::qkv_rope_config(&shape).expect_err(rule);
        assert!(
            err.starts_with("wan_qkv_rope") && err.contains(rule),
            "{err} (wanted {rule})"
        );
    }
    assert!(wan_qk::check_frame_slots(&[-1, 3], 2, 4).is_ok());
    for (table, rule) in [
        (&[1][..], "1 entries for 2"),
        (&[1, 4], "outside the cache's 4"),
        (&[2, 2], "two frames"),
    ] {
        let err = wan_qk::check_frame_slots(table, 2, 4).expect_err(rule);
        assert!(err.contains(rule), "{err} (wanted {rule})");
    }
    assert!(wan_qk::rms_rows_config(8, 48, 96).is_ok());
    for ((rows, d, ld), rule) in [
        ((0, 48, 48), "rows must be at least 1"),
        ((8, 44, 48), "D = 44"),
        ((8, 4096, 4096), "D = 4096"),
        ((8, 48, 40), "ld = 40"),
        ((8, 48, 52), "ld = 52"),
    ] {
        let err = wan_qk::rms_rows_config(rows, d, ld).expect_err(rule);
        assert!(
            err.starts_with("wan_rms_rows") && err.contains(rule),
            "{err} (wanted {rule})"
        );
    }
    let cross = CrossShape {
        batch: 1,
        tokens: 32,
        text_len: 8,
        heads: 3,
        head_dim: 16,
    };
    assert_eq!(
        attention::cross_config(&cross).unwrap().kernel,
        attention::KERNEL_CROSS_D16
    );
    assert!(attention::cross_config(&CrossShape {
        head_dim: 32,
        ..cross
    })
    .is_err());
}

/// The attention core's shared-memory swizzle (common/attention_core.cuh `swz`), mirrored:
/// for dh = 16, 64 and 128 every ldmatrix phase (8 consecutive rows from a multiple of 8,
/// one logical chunk) touches all 32 banks once, and each row's chunks are a permutation.
/// The emulator tests prove the loads and the ldmatrix reads agree on the mapping.
#[test]
fn attention_swizzle_is_conflict_free() {
    let swz = |dh: usize, row: usize, chunk: usize| {
        let chunks = dh / 8;
        let c = if chunks >= 8 {
            chunk ^ (row & 7)
        } else {
            chunk ^ ((row / (8 / chunks)) & (chunks - 1))
        };
        (row * dh + c * 8) * 2 // bytes
    };
    for dh in [16, 64, 128] {
        let chunks = dh / 8;
        for r0 in (0..64).step_by(8) {
            for c in 0..chunks {
                let mut banks = [0u32; 32];
                for r in r0..r0 + 8 {
                    for word in 0..4 {
                        banks[(swz(dh, r, c) / 4 + word) % 32] += 1;
                    }
                }
                assert!(
                    banks.iter().all(|&b| b == 1),
                    "dh {dh} rows {r0}.. chunk {c}: {banks:?}"
                );
            }
            for r in r0..r0 + 8 {
                let mut slots: Vec<usize> =
                    (0..chunks).map(|c| swz(dh, r, c) - r * dh * 2).collect();
                slots.sort();
                assert_eq!(slots, (0..chunks).map(|c| c * 16).collect::<Vec<_>>());
            }
        }
    }
    // Unswizzled, dh = 16 rows 0 and 4 collide.
    let plain = |row: usize, chunk: usize| (row * 32 + chunk * 16) / 4 % 32;
    assert_eq!(plain(0, 0), plain(4, 0));
}

#[test]
fn wan_kernels_sass_and_resources() {
    if !common::nvcc_built() {
        return;
    }
    for arch in ["sm_80", "sm_90"] {
        for (module, kernel, dh) in [
            ("wan_attention", wa::KERNEL_KVCACHE_D16, 16),
            ("wan_attention", wa::KERNEL_KVCACHE_D128, 128),
            ("attention", attention::KERNEL_CROSS_D16, 16),
        ] {
            let r = common::resources(module, kernel, arch);
            eprintln!(
                "{kernel} {arch}: {} regs, {} B dynamic smem, stack {}, spills {}/{}, HMMA {}, \
                 LDSM {}, LDGSTS {}, LDG.128 {}",
                r.registers,
                attention::shared_bytes(dh),
                r.stack_frame_bytes,
                r.spill_store_bytes,
                r.spill_load_bytes,
                r.hmma,
                r.ldsm,
                r.ldgsts,
                r.ldg128
            );
            assert_eq!(
                (r.spill_store_bytes, r.spill_load_bytes, r.stack_frame_bytes),
                (0, 0, 0),
                "{kernel} spills on {arch}: {r:?}"
            );
            // Per key tile and warp: dh/16 k-steps x 8 n8 tiles of Q K^T and 4 k-steps x
            // dh/8 n8 tiles of P V.
            let hmma = 8 * dh / 16 + 4 * dh / 8;
            assert!(
                r.hmma >= hmma && r.ldsm > 0 && r.ldgsts > 0 && r.ldg128 == 0,
                "{kernel} on {arch}: HMMA fed by LDSM, operands by LDGSTS: {r:?}"
            );
            // __launch_bounds__(128, 2) for dh = 128, (128, 4) for dh = 16.
            let cap = if dh == 128 { 255 } else { 128 };
            assert!(r.registers <= cap, "{kernel} on {arch}: {r:?}");
        }
        for kernel in [wan_qk::KERNEL_QKV_ROPE, wan_qk::KERNEL_RMS_ROWS] {
            let r = common::resources("wan_qk", kernel, arch);
            eprintln!("{kernel} {arch}: {r:?}");
            assert_eq!(
                (r.spill_store_bytes, r.spill_load_bytes, r.stack_frame_bytes),
                (0, 0, 0)
            );
            // q and k (and v) chunks are 16-byte loads: 8 slots per lane each.
            assert!(
                r.ldg128 >= 8,
                "{kernel} on {arch}: 16-byte row loads: {r:?}"
            );
        }
    }
}
