//! Every CPU reference op against the naive f64 reference of `tests/common/naive.rs`, on
//! fresh random inputs at several shapes (ragged ones included), with output buffers
//! poisoned with NaN so that an unwritten element fails; plus structural checks of window
//! attention and internal checks of the naive model call.
//!
//! Tolerance: `|got - want| <= atol + rtol * |want|` with `rtol = 1e-5` and `atol = 1e-5`
//! times the RMS of the reference output. The ops run in f32 (unit roundoff 6e-8) and each
//! output goes through at most a few thousand roundings whose errors mostly cancel (gemm
//! accumulates with FMA in blocks), so correct ops stay at 1e-7..1e-6 of the output scale,
//! 10-100x inside the budget; an indexing or formula error is 1e-2 or more.

mod common;

use std::collections::HashMap;

use common::naive::{self, NaiveConfig, NaiveWeights};
use common::{assert_close, f64s, poisoned, rel_l2, Rng};
use streamdit::math as ops;

const RTOL: f64 = 1e-5;
const ATOL_OF_RMS: f64 = 1e-5;

fn rms(v: &[f64]) -> f64 {
    (v.iter().map(|a| a * a).sum::<f64>() / v.len().max(1) as f64).sqrt()
}

/// [`assert_close`] with the file's tolerance policy.
fn check(name: &str, got: &[f32], want: &[f64]) -> f64 {
    assert_close(name, got, want, ATOL_OF_RMS * rms(want), RTOL)
}

#[test]
fn linear_matches_naive() {
    let mut rng = Rng::new(1);
    for &(t, k, n, bias) in &[
        (1, 1, 1, true),
        (7, 13, 5, false),
        (33, 64, 17, true),
        (130, 96, 200, true),
        (5, 300, 3, false),
        (64, 1024, 96, true),
    ] {
        let x = rng.f32s(t * k, -1.0, 1.0);
        let w = rng.f32s(n * k, -1.0, 1.0);
        let b = rng.f32s(n, -1.0, 1.0);
        let b = bias.then_some(&b[..]);
        let mut out = poisoned(t * n);
        ops::linear(&x, &w, b, t, k, n, &mut out);
        let want = naive::linear(&f64s(&x), &f64s(&w), b.map(f64s).as_deref(), t, k, n);
        check(
            &format!("linear t={t} k={k} n={n} bias={bias}"),
            &out,
            &want,
        );
    }
}

#[test]
fn layer_norm_matches_naive() {
    let mut rng = Rng::new(2);
    for &(rows, d) in &[(1, 1), (5, 7), (3, 256), (4, 3072), (37, 33)] {
        let x = rng.f32s(rows * d, -2.0, 2.0);
        let mut out = poisoned(rows * d);
        ops::layer_norm(&x, d, &mut out);
        check(
            &format!("layer_norm rows={rows} d={d}"),
            &out,
            &naive::layer_norm(&f64s(&x), d),
        );
    }
}

#[test]
fn ada_ln_matches_naive() {
    let mut rng = Rng::new(3);
    // (batch, frames, tokens_per_frame, d, k, shift, scale)
    for &(batch, frames, tpf, d, k, shift, scale) in &[
        (1, 1, 1, 4, 2, 0, 1),
        (2, 3, 5, 7, 6, 0, 1),
        (2, 3, 5, 7, 6, 3, 4),
        (1, 2, 9, 33, 2, 0, 1),
        (1, 8, 64, 256, 6, 3, 4),
    ] {
        let rows = batch * frames * tpf;
        let x = rng.f32s(rows * d, -2.0, 2.0);
        let mods = rng.f32s(frames * k * d, -1.0, 1.0);
        let mut out = poisoned(rows * d);
        ops::ada_ln(&x, d, &mods, k, shift, scale, frames, tpf, &mut out);
        let want = naive::ada_ln(&f64s(&x), d, &f64s(&mods), k, shift, scale, frames, tpf);
        check(
            &format!("ada_ln b={batch} f={frames} tpf={tpf} d={d} k={k} sh={shift} sc={scale}"),
            &out,
            &want,
        );
    }
}

#[test]
fn head_rms_norm_matches_naive() {
    let mut rng = Rng::new(4);
    // (rows, cols, offset, heads, dh): q and k of a qkv, keys of a kv, odd sizes.
    for &(rows, cols, offset, heads, dh) in &[
        (9, 45, 0, 3, 5),
        (9, 45, 15, 3, 5),
        (4, 16, 0, 1, 8),
        (1, 7, 3, 1, 3),
        (33, 768, 256, 4, 64),
    ] {
        let x = rng.f32s(rows * cols, -2.0, 2.0);
        let gain = rng.f32s(dh, 0.5, 1.5);
        let mut got = x.clone();
        ops::head_rms_norm(&mut got, cols, offset, heads, dh, &gain);
        let mut want = f64s(&x);
        naive::head_rms_norm(&mut want, cols, offset, heads, dh, &f64s(&gain));
        check(
            &format!("head_rms_norm rows={rows} cols={cols} off={offset} heads={heads} dh={dh}"),
            &got,
            &want,
        );
        // Columns outside the normed heads are untouched, bit for bit.
        for (r, (g, x)) in got.chunks(cols).zip(x.chunks(cols)).enumerate() {
            let normed = offset..offset + heads * dh;
            for c in (0..cols).filter(|c| !normed.contains(c)) {
                assert_eq!(
                    g[c].to_bits(),
                    x[c].to_bits(),
                    "head_rms_norm changed row {r} column {c}"
                );
            }
        }
    }
}

/// `(batch, grid, window, shift, heads, dh)` cases for window attention.
type WindowCase = (usize, [usize; 3], [usize; 3], [usize; 3], usize, usize);

#[test]
fn window_attention_matches_naive() {
    let mut rng = Rng::new(5);
    let cases: &[WindowCase] = &[
        // One window holding the whole grid.
        (1, [2, 4, 4], [2, 4, 4], [0, 0, 0], 1, 8),
        // Shifted, partial windows at both edges, three heads of 5, CFG batch.
        (2, [4, 4, 6], [2, 2, 3], [1, 1, 1], 3, 5),
        // Unshifted, same grid.
        (2, [4, 4, 6], [2, 2, 3], [0, 0, 0], 3, 5),
        // A grid that is not a multiple of the window (extra partial windows), odd sizes.
        (1, [3, 5, 7], [2, 2, 4], [1, 1, 2], 2, 6),
        // The tiny profile's shifted layer with CFG.
        (2, [8, 8, 8], [4, 8, 8], [2, 4, 4], 4, 16),
        // The tiny profile's unshifted layer at its real head size.
        (1, [8, 8, 8], [4, 8, 8], [0, 0, 0], 4, 64),
    ];
    for &(batch, grid, window, shift, heads, dh) in cases {
        let n: usize = grid.iter().product();
        let d = heads * dh;
        let qkv = rng.f32s(batch * n * 3 * d, -2.0, 2.0);
        let mut out = poisoned(batch * n * d);
        ops::window_attention(&qkv, batch, grid, window, shift, heads, d, &mut out);
        let want = naive::window_attention(&f64s(&qkv), batch, grid, window, shift, heads, d);
        check(
            &format!("window_attention b={batch} grid={grid:?} win={window:?} shift={shift:?} heads={heads} dh={dh}"),
            &out,
            &want,
        );
    }
}

#[test]
fn window_attention_shift_gives_partial_edge_windows() {
    // Grid 4x8x8, window 2x4x4, shift 1x2x2: along f the windows hold 1, 2, 1 frames and
    // along h and w 2, 4, 2 rows: 27 windows, the corner one holding 1*2*2 = 4 tokens. (A
    // cyclic shift without mask would give the corner 2*4*4 = 32 tokens.)
    let (grid, window, shift) = ([4, 8, 8], [2, 4, 4], [1, 2, 2]);
    let n: usize = grid.iter().product();
    let (heads, dh) = (2, 3);
    let d = heads * dh;
    let keys: Vec<[usize; 3]> = (0..n)
        .map(|t| naive::window_key(naive::token_pos(t, grid), window, shift))
        .collect();
    let members = |t: usize| (0..n).filter(|&m| keys[m] == keys[t]).collect::<Vec<_>>();
    let mut distinct = keys.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), 27);
    assert_eq!(members(0).len(), 4, "corner window");
    assert_eq!(members((8 + 2) * 8 + 2).len(), 32, "interior window");
    assert_eq!(members(n - 1).len(), 4, "far corner window");

    // With q = k = 0 every score is 0 and each token gets the plain mean of its window's v.
    let mut rng = Rng::new(6);
    let mut qkv = rng.f32s(n * 3 * d, -1.0, 1.0);
    for row in qkv.chunks_mut(3 * d) {
        row[..2 * d].fill(0.0);
    }
    let mut out = poisoned(n * d);
    ops::window_attention(&qkv, 1, grid, window, shift, heads, d, &mut out);
    let mut want = vec![0.0; n * d];
    for t in 0..n {
        let ms = members(t);
        for c in 0..d {
            want[t * d + c] = ms
                .iter()
                .map(|&m| qkv[m * 3 * d + 2 * d + c] as f64)
                .sum::<f64>()
                / ms.len() as f64;
        }
    }
    check("window_attention window means", &out, &want);
}

#[test]
fn window_attention_ignores_other_windows() {
    let mut rng = Rng::new(7);
    let (grid, window, heads, dh) = ([4, 4, 6], [2, 2, 3], 3, 4);
    let n: usize = grid.iter().product();
    let d = heads * dh;
    for shift in [[0, 0, 0], [1, 1, 1]] {
        let keys: Vec<[usize; 3]> = (0..n)
            .map(|t| naive::window_key(naive::token_pos(t, grid), window, shift))
            .collect();
        for batch in [1, 2] {
            let qkv = rng.f32s(batch * n * 3 * d, -2.0, 2.0);
            let mut base = poisoned(batch * n * d);
            ops::window_attention(&qkv, batch, grid, window, shift, heads, d, &mut base);
            // Perturb one token (a corner, an interior one, the last) of the last branch.
            for p in [0, n / 2 + 3, n - 1] {
                let mut qkv2 = qkv.clone();
                let row = (batch - 1) * n + p;
                for v in &mut qkv2[row * 3 * d..(row + 1) * 3 * d] {
                    *v += rng.uniform(0.5, 1.5) as f32;
                }
                let mut out = poisoned(batch * n * d);
                ops::window_attention(&qkv2, batch, grid, window, shift, heads, d, &mut out);
                let mut changed = 0;
                for b in 0..batch {
                    for t in 0..n {
                        let r = b * n + t;
                        let same = base[r * d..(r + 1) * d] == out[r * d..(r + 1) * d];
                        if b == batch - 1 && keys[t] == keys[p] {
                            changed += usize::from(!same);
                        } else {
                            assert!(same, "shift {shift:?}: perturbing token {p} changed token {t} of branch {b}");
                        }
                    }
                }
                let window_size = keys.iter().filter(|&&k| k == keys[p]).count();
                assert_eq!(
                    changed, window_size,
                    "shift {shift:?}: every token of token {p}'s window must see it"
                );
            }
        }
    }
}

#[test]
fn cross_attention_matches_naive() {
    let mut rng = Rng::new(8);
    // (batch, tokens, text_len, heads, dh, mask pattern: `mask[l] = 1` iff `pattern(b, l)`)
    type Pattern = fn(usize, usize) -> bool;
    let cases: &[(usize, usize, usize, usize, usize, Pattern)] = &[
        (1, 1, 1, 1, 4, |_, _| true),
        (2, 131, 7, 3, 5, |b, l| (l + b) % 3 != 1),
        (2, 17, 5, 2, 6, |b, l| b == 0 || l == 3),
        (1, 300, 32, 4, 16, |_, l| l < 10),
        (1, 512, 32, 4, 64, |_, l| l < 29),
    ];
    for &(batch, tokens, text_len, heads, dh, pattern) in cases {
        let d = heads * dh;
        let q = rng.f32s(batch * tokens * d, -2.0, 2.0);
        let kv = rng.f32s(batch * text_len * 2 * d, -2.0, 2.0);
        let mask: Vec<f32> = (0..batch * text_len)
            .map(|i| f32::from(u8::from(pattern(i / text_len, i % text_len))))
            .collect();
        let mut out = poisoned(batch * tokens * d);
        ops::cross_attention(&q, &kv, &mask, batch, tokens, text_len, heads, d, &mut out);
        let want = naive::cross_attention(
            &f64s(&q),
            &f64s(&kv),
            &f64s(&mask),
            batch,
            tokens,
            text_len,
            heads,
            d,
        );
        let name = format!(
            "cross_attention b={batch} tokens={tokens} lt={text_len} heads={heads} dh={dh}"
        );
        check(&name, &out, &want);

        // Masked text rows do not matter at all.
        let mut kv2 = kv.clone();
        for (i, row) in kv2.chunks_mut(2 * d).enumerate() {
            if mask[i] == 0.0 {
                row.iter_mut().for_each(|v| *v = 100.0 - *v);
            }
        }
        let mut out2 = poisoned(out.len());
        ops::cross_attention(
            &q, &kv2, &mask, batch, tokens, text_len, heads, d, &mut out2,
        );
        assert_eq!(out, out2, "{name}: masked text rows changed the output");
    }
}

#[test]
fn cross_attention_without_real_tokens_gives_zeros() {
    let mut rng = Rng::new(9);
    let (batch, tokens, text_len, heads, d) = (2, 9, 4, 3, 12);
    let q = rng.f32s(batch * tokens * d, -2.0, 2.0);
    let kv = rng.f32s(batch * text_len * 2 * d, -2.0, 2.0);
    let mask = [1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0];
    let mut out = poisoned(batch * tokens * d);
    ops::cross_attention(&q, &kv, &mask, batch, tokens, text_len, heads, d, &mut out);
    let want = naive::cross_attention(
        &f64s(&q),
        &f64s(&kv),
        &f64s(&mask),
        batch,
        tokens,
        text_len,
        heads,
        d,
    );
    check("cross_attention empty branch", &out, &want);
    assert!(
        out[tokens * d..].iter().all(|&v| v == 0.0),
        "branch 1 has no real token: zeros"
    );
}

#[test]
fn gated_residual_matches_naive() {
    let mut rng = Rng::new(10);
    for &(batch, frames, tpf, d, k, gate) in &[
        (1, 1, 1, 3, 6, 2),
        (2, 3, 4, 9, 6, 2),
        (2, 3, 4, 9, 6, 5),
        (1, 8, 64, 256, 6, 5),
    ] {
        let rows = batch * frames * tpf;
        let h = rng.f32s(rows * d, -2.0, 2.0);
        let y = rng.f32s(rows * d, -2.0, 2.0);
        let mods = rng.f32s(frames * k * d, -1.0, 1.0);
        let mut got = h.clone();
        ops::gated_residual(&mut got, &y, d, &mods, k, gate, frames, tpf);
        let mut want = f64s(&h);
        naive::gated_residual(&mut want, &f64s(&y), d, &f64s(&mods), k, gate, frames, tpf);
        check(
            &format!("gated_residual b={batch} f={frames} tpf={tpf} d={d} gate={gate}"),
            &got,
            &want,
        );
    }
}

#[test]
fn residual_matches_naive() {
    let mut rng = Rng::new(11);
    for n in [1, 1000, 70_001] {
        let h = rng.f32s(n, -2.0, 2.0);
        let y = rng.f32s(n, -2.0, 2.0);
        let mut got = h.clone();
        ops::residual(&mut got, &y);
        let mut want = f64s(&h);
        naive::residual(&mut want, &f64s(&y));
        check(&format!("residual n={n}"), &got, &want);
    }
}

#[test]
fn swiglu_matches_naive() {
    let mut rng = Rng::new(12);
    for &(rows, dff) in &[(1, 1), (5, 7), (33, 768), (100, 250)] {
        let x = rng.f32s(rows * 2 * dff, -4.0, 4.0);
        let mut out = poisoned(rows * dff);
        ops::swiglu(&x, dff, &mut out);
        check(
            &format!("swiglu rows={rows} dff={dff}"),
            &out,
            &naive::swiglu(&f64s(&x), dff),
        );
    }
}

#[test]
fn activations_match_naive() {
    let mut rng = Rng::new(13);
    for n in [1, 10_007, 40_000] {
        let mut x = rng.f32s(n, -8.0, 8.0);
        if n > 100 {
            x[..6].copy_from_slice(&[-100.0, 100.0, -30.0, 30.0, 1e-20, -1e-20]);
        }
        let mut out = poisoned(n);
        ops::silu(&x, &mut out);
        check(&format!("silu n={n}"), &out, &naive::silu(&f64s(&x)));
        let mut out = poisoned(n);
        ops::gelu_tanh(&x, &mut out);
        check(
            &format!("gelu_tanh n={n}"),
            &out,
            &naive::gelu_tanh(&f64s(&x)),
        );
    }
}

#[test]
fn timestep_embedding_matches_naive() {
    let mut rng = Rng::new(14);
    let mut tau: Vec<f32> = vec![0.0, 1.0, 0.5, 0.123, 0.999, 0.25, 1.0 / 3.0];
    tau.extend(rng.f32s(9, 0.0, 1.0));
    let mut out = poisoned(tau.len() * 256);
    ops::timestep_embedding(&tau, &mut out);
    let want = naive::timestep_embedding(&f64s(&tau));
    // The argument is formed in f64, so only the final rounding to f32 remains (<= 6e-8).
    assert_close("timestep_embedding", &out, &want, 6e-8, 0.0);
}

#[test]
fn modulation_matches_naive() {
    let mut rng = Rng::new(15);
    for &(src_k, k, d, frames) in &[(6, 6, 10, 3), (1, 2, 10, 4), (1, 1, 3, 1), (6, 6, 256, 8)] {
        let src = rng.f32s(frames * src_k * d, -1.0, 1.0);
        let table = rng.f32s(k * d, -1.0, 1.0);
        let mut out = poisoned(frames * k * d);
        ops::modulation(&src, src_k, &table, k, d, frames, &mut out);
        let want = naive::modulation(&f64s(&src), src_k, &f64s(&table), k, d, frames);
        check(
            &format!("modulation src_k={src_k} k={k} d={d} frames={frames}"),
            &out,
            &want,
        );
    }
}

#[test]
fn patchify_and_unpatchify_match_naive() {
    let mut rng = Rng::new(16);
    for &(f, c, h, w) in &[(1, 1, 2, 2), (3, 2, 4, 6), (2, 3, 6, 2), (8, 8, 16, 16)] {
        let x = rng.f32s(f * c * h * w, -1.0, 1.0);
        let mut tokens = poisoned(x.len());
        ops::patchify(&x, f, c, h, w, &mut tokens);
        let want = naive::patchify(&f64s(&x), f, c, h, w);
        assert_close(
            &format!("patchify f={f} c={c} h={h} w={w}"),
            &tokens,
            &want,
            0.0,
            0.0,
        );
        for batch in [1, 2] {
            let xt = rng.f32s(batch * x.len(), -1.0, 1.0);
            let mut out = poisoned(xt.len());
            ops::unpatchify(&xt, batch, f, c, h, w, &mut out);
            let want = naive::unpatchify(&f64s(&xt), batch, f, c, h, w);
            assert_close(
                &format!("unpatchify b={batch} f={f} c={c} h={h} w={w}"),
                &out,
                &want,
                0.0,
                0.0,
            );
        }
        let mut back = poisoned(x.len());
        ops::unpatchify(&tokens, 1, f, c, h, w, &mut back);
        assert_eq!(back, x, "unpatchify(patchify(x)) != x");
    }
}

#[test]
fn add_positions_matches_naive() {
    let mut rng = Rng::new(17);
    for &(grid, d) in &[([1, 1, 1], 1), ([3, 2, 5], 7), ([8, 8, 8], 256)] {
        let n: usize = grid.iter().product();
        let h = rng.f32s(n * d, -2.0, 2.0);
        let (pt, ph, pw) = (
            rng.f32s(grid[0] * d, -1.0, 1.0),
            rng.f32s(grid[1] * d, -1.0, 1.0),
            rng.f32s(grid[2] * d, -1.0, 1.0),
        );
        let mut got = h.clone();
        ops::add_positions(&mut got, grid, d, &pt, &ph, &pw);
        let mut want = f64s(&h);
        naive::add_positions(&mut want, grid, d, &f64s(&pt), &f64s(&ph), &f64s(&pw));
        check(&format!("add_positions grid={grid:?} d={d}"), &got, &want);
    }
}

#[test]
fn guidance_matches_naive() {
    let mut rng = Rng::new(18);
    for (n, scale) in [(1, 1.0f32), (1001, 4.5), (70_001, 0.0), (33, -2.0)] {
        let v = rng.f32s(2 * n, -2.0, 2.0);
        let mut out = poisoned(n);
        ops::guidance(&v, scale, &mut out);
        check(
            &format!("guidance n={n} scale={scale}"),
            &out,
            &naive::guidance(&f64s(&v), scale as f64),
        );
    }
}

// ---------------------------------------------------------------------------------------
// The naive model call.

/// A small model with every structural feature: 3 heads of 8, two layers (one shifted, with
/// partial edge windows), several frames, a masked text.
fn small_config() -> NaiveConfig {
    NaiveConfig {
        c: 4,
        f: 4,
        h: 8,
        w: 12,
        d: 24,
        l: 2,
        heads: 3,
        dff: 40,
        window: [2, 2, 3],
        lt: 6,
        dtxt: 12,
    }
}

struct Inputs {
    x: Vec<f32>,
    tau: Vec<f32>,
    text: Vec<f32>,
    mask: Vec<f32>,
    neg_text: Vec<f32>,
    neg_mask: Vec<f32>,
}

fn inputs(cfg: &NaiveConfig, seed: u64) -> Inputs {
    let mut rng = Rng::new(seed);
    Inputs {
        x: rng.f32s(cfg.f * cfg.c * cfg.h * cfg.w, -2.0, 2.0),
        tau: (0..cfg.f)
            .map(|f| (f as f32 + 0.5) / cfg.f as f32)
            .collect(),
        text: rng.f32s(cfg.lt * cfg.dtxt, -1.0, 1.0),
        mask: (0..cfg.lt)
            .map(|l| f32::from(u8::from(l != 2 && l < 5)))
            .collect(),
        neg_text: rng.f32s(cfg.lt * cfg.dtxt, -1.0, 1.0),
        neg_mask: (0..cfg.lt).map(|l| f32::from(u8::from(l < 2))).collect(),
    }
}

#[test]
fn naive_model_call_guidance_is_consistent() {
    let cfg = small_config();
    let w = NaiveWeights::random(&cfg, 21);
    let i = inputs(&cfg, 22);
    let (x, tau, text, mask) = (f64s(&i.x), f64s(&i.tau), f64s(&i.text), f64s(&i.mask));
    let (nt, nm) = (f64s(&i.neg_text), f64s(&i.neg_mask));
    let neg = Some((&nt[..], &nm[..]));
    let v_c = naive::naive_model_call(&w, &cfg, &x, &tau, &text, &mask, 1.0, None);
    let v_u = naive::naive_model_call(&w, &cfg, &x, &tau, &nt, &nm, 1.0, None);
    assert!(
        v_c.iter().all(|v| v.is_finite()) && rms(&v_c) > 0.1 && rms(&v_c) < 10.0,
        "v is O(1)"
    );
    assert!(rel_l2(&v_u, &v_c) > 1e-2, "the prompt must matter");

    let g1 = naive::naive_model_call(&w, &cfg, &x, &tau, &text, &mask, 1.0, neg);
    assert!(
        rel_l2(&g1, &v_c) < 1e-12,
        "guidance 1 with a negative prompt is the conditional branch"
    );
    let g0 = naive::naive_model_call(&w, &cfg, &x, &tau, &text, &mask, 0.0, neg);
    assert!(
        rel_l2(&g0, &v_u) < 1e-12,
        "guidance 0 is the negative branch"
    );
    let g3 = naive::naive_model_call(&w, &cfg, &x, &tau, &text, &mask, 3.0, neg);
    let want: Vec<f64> = v_u
        .iter()
        .zip(&v_c)
        .map(|(u, c)| u + 3.0 * (c - u))
        .collect();
    assert!(rel_l2(&g3, &want) < 1e-12, "v = v_u + g (v_c - v_u)");
}

#[test]
fn naive_model_call_depends_on_every_input() {
    let cfg = small_config();
    let w = NaiveWeights::random(&cfg, 23);
    let i = inputs(&cfg, 24);
    let call = |x: &[f32], tau: &[f32], text: &[f32], mask: &[f32]| {
        naive::naive_model_call(
            &w,
            &cfg,
            &f64s(x),
            &f64s(tau),
            &f64s(text),
            &f64s(mask),
            1.0,
            None,
        )
    };
    let base = call(&i.x, &i.tau, &i.text, &i.mask);
    let mut tau = i.tau.clone();
    tau[1] += 0.1;
    assert!(
        rel_l2(&call(&i.x, &tau, &i.text, &i.mask), &base) > 1e-3,
        "tau"
    );
    // A masked text row is ignored; an unmasked one is not.
    let mut text = i.text.clone();
    text[2 * cfg.dtxt] += 1.0;
    assert!(
        rel_l2(&call(&i.x, &i.tau, &text, &i.mask), &base) < 1e-15,
        "masked text row"
    );
    text[0] += 1.0;
    assert!(
        rel_l2(&call(&i.x, &i.tau, &text, &i.mask), &base) > 1e-4,
        "real text row"
    );
}

#[test]
fn naive_weights_load_round_trips() {
    let cfg = small_config();
    let w = NaiveWeights::random(&cfg, 25);
    let shapes = cfg.tensor_shapes();
    let dir = std::env::temp_dir().join(format!("streamdit-naive-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // Each dtype must load as exactly the value it stores.
    let stored = |dtype: safetensors::Dtype, x: f64| match dtype {
        safetensors::Dtype::F32 => x as f32 as f64,
        safetensors::Dtype::F16 => half::f16::from_f64(x).to_f64(),
        _ => half::bf16::from_f64(x).to_f64(),
    };
    for dtype in [
        safetensors::Dtype::F32,
        safetensors::Dtype::F16,
        safetensors::Dtype::BF16,
    ] {
        let bytes: Vec<(String, Vec<u8>)> = shapes
            .iter()
            .map(|(name, _)| {
                let v = w.get(name, &w.tensors[name].0);
                let b = v
                    .iter()
                    .flat_map(|&x| match dtype {
                        safetensors::Dtype::F32 => (x as f32).to_le_bytes().to_vec(),
                        safetensors::Dtype::F16 => half::f16::from_f64(x).to_le_bytes().to_vec(),
                        _ => half::bf16::from_f64(x).to_le_bytes().to_vec(),
                    })
                    .collect();
                (name.clone(), b)
            })
            .collect();
        let views: Vec<(String, safetensors::tensor::TensorView)> = shapes
            .iter()
            .zip(&bytes)
            .map(|((name, shape), (_, b))| {
                (
                    name.clone(),
                    safetensors::tensor::TensorView::new(dtype, shape.clone(), b).unwrap(),
                )
            })
            .collect();
        let path = dir.join(format!("{dtype:?}.safetensors"));
        std::fs::write(&path, safetensors::serialize(views, None).unwrap()).unwrap();
        let loaded = NaiveWeights::load(&path);
        assert_eq!(loaded.tensors.len(), w.tensors.len());
        for (name, shape) in &shapes {
            for (a, b) in loaded.get(name, shape).iter().zip(w.get(name, shape)) {
                assert_eq!(*a, stored(dtype, *b), "{dtype:?} {name}");
            }
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// One model call composed of the CPU ops in the order of the engine's graph (f32), over
/// `batch` branches, independent of the naive code path.
fn ops_model_call(
    w: &HashMap<String, Vec<f32>>,
    cfg: &NaiveConfig,
    i: &Inputs,
    guidance: f32,
) -> Vec<f32> {
    let batch = if guidance != 1.0 { 2 } else { 1 };
    let (d, dh, heads, p, dff) = (cfg.d, cfg.dh(), cfg.heads, cfg.c * 4, cfg.dff);
    let grid = cfg.grid();
    let (n, f, lt) = (cfg.tokens(), cfg.f, cfg.lt);
    let tpf = grid[1] * grid[2];
    let bn = batch * n;
    let wt = |name: &str| &w[name][..];
    let lin = |x: &[f32], name: &str, rows: usize, k: usize, out_n: usize, bias: bool| {
        let mut o = poisoned(rows * out_n);
        let b = bias.then(|| wt(&format!("{name}.bias")));
        ops::linear(x, wt(&format!("{name}.weight")), b, rows, k, out_n, &mut o);
        o
    };
    let (text, mask) = if batch == 2 {
        (
            [&i.text[..], &i.neg_text[..]].concat(),
            [&i.mask[..], &i.neg_mask[..]].concat(),
        )
    } else {
        (i.text.clone(), i.mask.clone())
    };

    let c1 = lin(&text, "text_proj.1", batch * lt, cfg.dtxt, d, true);
    let mut c1g = poisoned(c1.len());
    ops::gelu_tanh(&c1, &mut c1g);
    let ctx = lin(&c1g, "text_proj.2", batch * lt, d, d, true);

    let mut patches = poisoned(n * p);
    ops::patchify(&i.x, f, cfg.c, cfg.h, cfg.w, &mut patches);
    let mut h0 = lin(&patches, "patch_embed", n, p, d, true);
    ops::add_positions(
        &mut h0,
        grid,
        d,
        wt("pos_embed.t"),
        wt("pos_embed.h"),
        wt("pos_embed.w"),
    );
    let mut h = h0.repeat(batch);

    let mut freq = poisoned(f * 256);
    ops::timestep_embedding(&i.tau, &mut freq);
    let t1 = lin(&freq, "time_embed.1", f, 256, d, true);
    let mut t1s = poisoned(t1.len());
    ops::silu(&t1, &mut t1s);
    let t_emb = lin(&t1s, "time_embed.2", f, d, d, true);
    let mut t_emb_s = poisoned(t_emb.len());
    ops::silu(&t_emb, &mut t_emb_s);
    let t_mod = lin(&t_emb_s, "time_mod", f, d, 6 * d, true);

    for l in 0..cfg.l {
        let b = |s: &str| format!("blocks.{l}.{s}");
        let mut mods = poisoned(f * 6 * d);
        ops::modulation(&t_mod, 6, wt(&b("mod_table")), 6, d, f, &mut mods);

        let mut a = poisoned(bn * d);
        ops::ada_ln(&h, d, &mods, 6, 0, 1, f, tpf, &mut a);
        let mut qkv = lin(&a, &b("attn.qkv"), bn, d, 3 * d, true);
        ops::head_rms_norm(&mut qkv, 3 * d, 0, heads, dh, wt(&b("attn.q_norm")));
        ops::head_rms_norm(&mut qkv, 3 * d, d, heads, dh, wt(&b("attn.k_norm")));
        let shift = if l % 2 == 0 {
            [0; 3]
        } else {
            cfg.window.map(|x| x / 2)
        };
        let mut o = poisoned(bn * d);
        ops::window_attention(&qkv, batch, grid, cfg.window, shift, heads, d, &mut o);
        let y = lin(&o, &b("attn.out"), bn, d, d, true);
        ops::gated_residual(&mut h, &y, d, &mods, 6, 2, f, tpf);

        let mut kv = lin(&ctx, &b("cross.kv"), batch * lt, d, 2 * d, true);
        ops::head_rms_norm(&mut kv, 2 * d, 0, heads, dh, wt(&b("cross.k_norm")));
        let mut c = poisoned(bn * d);
        ops::layer_norm(&h, d, &mut c);
        let mut q = lin(&c, &b("cross.q"), bn, d, d, true);
        ops::head_rms_norm(&mut q, d, 0, heads, dh, wt(&b("cross.q_norm")));
        let mut co = poisoned(bn * d);
        ops::cross_attention(&q, &kv, &mask, batch, n, lt, heads, d, &mut co);
        let y = lin(&co, &b("cross.out"), bn, d, d, true);
        ops::residual(&mut h, &y);

        let mut a2 = poisoned(bn * d);
        ops::ada_ln(&h, d, &mods, 6, 3, 4, f, tpf, &mut a2);
        let ug = lin(&a2, &b("ffn.w13"), bn, d, 2 * dff, false);
        let mut act = poisoned(bn * dff);
        ops::swiglu(&ug, dff, &mut act);
        let y = lin(&act, &b("ffn.w2"), bn, dff, d, false);
        ops::gated_residual(&mut h, &y, d, &mods, 6, 5, f, tpf);
    }

    let mut mods = poisoned(f * 2 * d);
    ops::modulation(&t_emb, 1, wt("final.mod_table"), 2, d, f, &mut mods);
    let mut a = poisoned(bn * d);
    ops::ada_ln(&h, d, &mods, 2, 0, 1, f, tpf, &mut a);
    let out = lin(&a, "final.linear", bn, d, p, true);
    let mut v = poisoned(out.len());
    ops::unpatchify(&out, batch, f, cfg.c, cfg.h, cfg.w, &mut v);
    if batch == 1 {
        return v;
    }
    let mut g = poisoned(v.len() / 2);
    ops::guidance(&v, guidance, &mut g);
    g
}

#[test]
fn composed_cpu_ops_match_naive_model_call() {
    let cfg = small_config();
    let w = NaiveWeights::random(&cfg, 26);
    let w32: HashMap<String, Vec<f32>> = w
        .tensors
        .iter()
        .map(|(k, (_, v))| (k.clone(), v.iter().map(|&x| x as f32).collect()))
        .collect();
    let i = inputs(&cfg, 27);
    let (nt, nm) = (f64s(&i.neg_text), f64s(&i.neg_mask));
    for guidance in [1.0f32, 4.0] {
        let got = ops_model_call(&w32, &cfg, &i, guidance);
        let neg = (guidance != 1.0).then_some((&nt[..], &nm[..]));
        let want = naive::naive_model_call(
            &w,
            &cfg,
            &f64s(&i.x),
            &f64s(&i.tau),
            &f64s(&i.text),
            &f64s(&i.mask),
            guidance as f64,
            neg,
        );
        let err = rel_l2(&f64s(&got), &want);
        println!("model call, guidance {guidance}: rel L2 {err:.3e}");
        assert!(
            err < 1e-4,
            "guidance {guidance}: composed ops vs naive rel L2 {err:.3e} >= 1e-4"
        );
    }
}
