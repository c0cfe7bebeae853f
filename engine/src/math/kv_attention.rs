//! Attention of a block of queries over keys and values given as a list of segments (a KV
//! cache's frames followed by the call's own tokens, or a text context): no mask.

use rayon::prelude::*;

use super::attention::attend;
use super::gemm::View;

/// Query rows per task.
const QUERY_CHUNK: usize = 128;

/// `out [n, D] = softmax(q k^T / sqrt(dh)) v` per head (`heads` heads of `dh = D/heads`
/// consecutive channels) for `q [n, D]` over the rows of every segment `(k, v)`, each
/// `[m_i, D]`, in order. Parallel over chunks of query rows; the segments are gathered once
/// into contiguous keys and values.
pub fn segment_attention(
    q: &[f32],
    segments: &[(&[f32], &[f32])],
    heads: usize,
    d: usize,
    out: &mut [f32],
) {
    let dh = d / heads.max(1);
    debug_assert_eq!(dh * heads, d);
    debug_assert_eq!(q.len(), out.len());
    if d == 0 || q.is_empty() {
        return;
    }
    let m: usize = segments.iter().map(|(k, _)| k.len() / d).sum();
    if m == 0 {
        out.fill(0.0);
        return;
    }
    let (k_all, v_all): (Vec<f32>, Vec<f32>) = if segments.len() == 1 {
        (segments[0].0.to_vec(), segments[0].1.to_vec())
    } else {
        (
            segments.iter().flat_map(|(k, _)| k.iter().copied()).collect(),
            segments.iter().flat_map(|(_, v)| v.iter().copied()).collect(),
        )
    };
    out.par_chunks_mut(QUERY_CHUNK * d)
        .zip(q.par_chunks(QUERY_CHUNK * d))
        .for_each(|(o, qc)| {
            let n = qc.len() / d;
            let mut scores = vec![0.0; n * m];
            for e in 0..heads {
                attend(
                    View::new(&qc[e * dh..], d, 1),
                    View::new(&k_all[e * dh..], d, 1),
                    View::new(&v_all[e * dh..], d, 1),
                    n,
                    m,
                    dh,
                    &mut scores,
                    &mut o[e * dh..],
                    d,
                );
            }
        });
}
