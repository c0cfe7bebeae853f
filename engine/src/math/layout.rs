//! Layout ops: patchify, unpatchify, positional embeddings.

use rayon::prelude::*;

use super::rows_per_task;

/// Patch embedding input: `x [F, C, H, W]` to `out [F*Ht*Wt, C*4]`, entry `(c*2 + a)*2 + b`
/// of token `(f, i, j)` being `x[f, c, 2i+a, 2j+b]`.
pub fn patchify(x: &[f32], f: usize, c: usize, h: usize, w: usize, out: &mut [f32]) {
    debug_assert_eq!(x.len(), f * c * h * w);
    debug_assert_eq!(out.len(), x.len());
    let (ht, wt, p) = (h / 2, w / 2, c * 4);
    if p == 0 || wt == 0 {
        return;
    }
    out.par_chunks_mut(wt * p)
        .enumerate()
        .for_each(|(fi, row)| {
            let (ff, i) = (fi / ht, fi % ht);
            for (j, tok) in row.chunks_exact_mut(p).enumerate() {
                for cc in 0..c {
                    for a in 0..2 {
                        for b in 0..2 {
                            tok[(cc * 2 + a) * 2 + b] =
                                x[((ff * c + cc) * h + 2 * i + a) * w + 2 * j + b];
                        }
                    }
                }
            }
        });
}

/// Inverse of [`patchify`] for `batch` branches: `x [batch*F*Ht*Wt, C*4]` to
/// `out [batch, F, C, H, W]`.
pub fn unpatchify(
    x: &[f32],
    batch: usize,
    f: usize,
    c: usize,
    h: usize,
    w: usize,
    out: &mut [f32],
) {
    debug_assert_eq!(x.len(), batch * f * c * h * w);
    debug_assert_eq!(out.len(), x.len());
    let (ht, wt, p) = (h / 2, w / 2, c * 4);
    if h * w == 0 {
        return;
    }
    out.par_chunks_mut(h * w)
        .enumerate()
        .for_each(|(plane, o)| {
            // `plane` indexes (branch, frame, channel).
            let (bf, cc) = (plane / c, plane % c);
            for (y, o_row) in o.chunks_exact_mut(w).enumerate() {
                let (i, a) = (y / 2, y % 2);
                for (xx, o) in o_row.iter_mut().enumerate() {
                    let (j, b) = (xx / 2, xx % 2);
                    let token = (bf * ht + i) * wt + j;
                    *o = x[token * p + (cc * 2 + a) * 2 + b];
                }
            }
        });
}

/// Wan's unpatchify: `x [F*Ht*Wt, 4C]` whose token entries are ordered `(a, b, ch)` to
/// `out [F, C, H, W]`, `out[f, ch, 2i+a, 2j+b] = x[n, (a*2 + b)*C + ch]`.
pub fn unpatchify_packed(x: &[f32], f: usize, c: usize, h: usize, w: usize, out: &mut [f32]) {
    debug_assert_eq!(x.len(), f * c * h * w);
    debug_assert_eq!(out.len(), x.len());
    let (ht, wt, p) = (h / 2, w / 2, c * 4);
    if h * w == 0 {
        return;
    }
    out.par_chunks_mut(h * w)
        .enumerate()
        .for_each(|(plane, o)| {
            let (ff, cc) = (plane / c, plane % c);
            for (y, o_row) in o.chunks_exact_mut(w).enumerate() {
                let (i, a) = (y / 2, y % 2);
                for (xx, o) in o_row.iter_mut().enumerate() {
                    let (j, b) = (xx / 2, xx % 2);
                    let token = (ff * ht + i) * wt + j;
                    *o = x[token * p + (a * 2 + b) * c + cc];
                }
            }
        });
}

/// `h [Ft*Ht*Wt, D] += pos_t[f] + pos_h[i] + pos_w[j]` for token `n = (f*Ht + i)*Wt + j`.
pub fn add_positions(
    h: &mut [f32],
    grid: [usize; 3],
    d: usize,
    pos_t: &[f32],
    pos_h: &[f32],
    pos_w: &[f32],
) {
    let [ft, ht, wt] = grid;
    debug_assert_eq!(h.len(), ft * ht * wt * d);
    debug_assert!(pos_t.len() >= ft * d && pos_h.len() >= ht * d && pos_w.len() >= wt * d);
    if d == 0 {
        return;
    }
    let rows = rows_per_task(d);
    h.par_chunks_mut(rows * d)
        .enumerate()
        .for_each(|(chunk, h)| {
            for (r, row) in h.chunks_exact_mut(d).enumerate() {
                let n = chunk * rows + r;
                let (f, i, j) = (n / (ht * wt), (n / wt) % ht, n % wt);
                let (pt, ph, pw) = (&pos_t[f * d..], &pos_h[i * d..], &pos_w[j * d..]);
                for (c, a) in row.iter_mut().enumerate() {
                    *a += pt[c] + ph[c] + pw[c];
                }
            }
        });
}
