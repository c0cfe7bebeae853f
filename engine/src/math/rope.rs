//! 3-D rotary position embedding (docs/wan.md section 4).

use rayon::prelude::*;

use super::rows_per_task;

/// The angle of channel pair `m` of a head for a token at `(frame, row, col)`: the first
/// `pairs[0]` pairs turn with the frame by `10000^(-m/pairs[0])`, the next `pairs[1]` with
/// the row and the last `pairs[2]` with the column by `10000^(-m'/pairs[1])` (`m'` the pair's
/// index within its part; row and column parts have the same size).
pub fn rope_angle(pairs: [usize; 3], m: usize, frame: f64, row: f64, col: f64) -> f64 {
    let [nf, nh, _] = pairs;
    let omega = |k: usize, n: usize| 10000f64.powf(-(k as f64) / n as f64);
    if m < nf {
        frame * omega(m, nf)
    } else if m < nf + nh {
        row * omega(m - nf, nh)
    } else {
        col * omega(m - nf - nh, nh)
    }
}

/// In place: every row of `x [F*Hp*Wp, heads*dh]` (token `n = (f*Hp + i)*Wp + j`) has each
/// head's channel pairs `(2m, 2m+1)` rotated by [`rope_angle`] at `(pos[f], i, j)`, with
/// `dh = 2 * (pairs[0] + pairs[1] + pairs[2])`. Angles, their cos and sin and the rotation
/// are computed in f64 and rounded once.
pub fn rope_3d(x: &mut [f32], pos: &[f32], grid: [usize; 2], heads: usize, pairs: [usize; 3]) {
    let half: usize = pairs.iter().sum();
    let cols = heads * 2 * half;
    let [hp, wp] = grid;
    let per_frame = hp * wp;
    debug_assert_eq!(x.len(), pos.len() * per_frame * cols);
    if cols == 0 || per_frame == 0 {
        return;
    }
    let rows = rows_per_task(cols);
    x.par_chunks_mut(rows * cols)
        .enumerate()
        .for_each(|(chunk, block)| {
            let mut rot = vec![(0f64, 0f64); half];
            for (r, row) in block.chunks_exact_mut(cols).enumerate() {
                let n = chunk * rows + r;
                let (f, ij) = (n / per_frame, n % per_frame);
                let (i, j) = ((ij / wp) as f64, (ij % wp) as f64);
                let p = f64::from(pos[f]);
                for (m, cs) in rot.iter_mut().enumerate() {
                    let (s, c) = rope_angle(pairs, m, p, i, j).sin_cos();
                    *cs = (c, s);
                }
                for head in row.chunks_exact_mut(2 * half) {
                    for (pair, &(c, s)) in head.chunks_exact_mut(2).zip(&rot) {
                        let (x0, x1) = (f64::from(pair[0]), f64::from(pair[1]));
                        pair[0] = (x0 * c - x1 * s) as f32;
                        pair[1] = (x0 * s + x1 * c) as f32;
                    }
                }
            }
        });
}
