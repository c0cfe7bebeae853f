//! The few row-wise pieces the text encoders need beyond the CPU backend's GEMM: RMS and
//! affine layer norms with the encoder's epsilon, activations, and masked multi-head
//! attention with an optional additive per-head bias.

use rayon::prelude::*;

use crate::math as ops;
use crate::tensor::Tensor;

/// `out [t, n] = x [t, k] W^T + b`, `W [n, k]` in PyTorch layout.
pub fn linear(x: &[f32], w: &Tensor, b: Option<&Tensor>, t: usize) -> Vec<f32> {
    let (n, k) = (w.shape[0], w.shape[1]);
    let mut out = vec![0.0; t * n];
    ops::linear(x, &w.data, b.map(|b| &b.data[..]), t, k, n, &mut out);
    out
}

/// T5's layer norm: `x / sqrt(mean(x^2) + eps) * w` per row, no mean subtraction, no bias.
pub fn rms_norm(x: &[f32], w: &[f32], eps: f32) -> Vec<f32> {
    let d = w.len();
    let mut out = vec![0.0; x.len()];
    for (o, r) in out.chunks_exact_mut(d).zip(x.chunks_exact(d)) {
        let ms = r.iter().map(|a| a * a).sum::<f32>() / d as f32;
        let inv = 1.0 / (ms + eps).sqrt();
        for ((o, &a), &g) in o.iter_mut().zip(r).zip(w) {
            *o = a * inv * g;
        }
    }
    out
}

/// LayerNorm with affine weight and bias per row (biased variance).
pub fn layer_norm(x: &[f32], w: &[f32], b: &[f32], eps: f32) -> Vec<f32> {
    let d = w.len();
    let mut out = vec![0.0; x.len()];
    for (o, r) in out.chunks_exact_mut(d).zip(x.chunks_exact(d)) {
        let mean = r.iter().sum::<f32>() / d as f32;
        let var = r.iter().map(|a| (a - mean) * (a - mean)).sum::<f32>() / d as f32;
        let inv = 1.0 / (var + eps).sqrt();
        for (((o, &a), &g), &bb) in o.iter_mut().zip(r).zip(w).zip(b) {
            *o = (a - mean) * inv * g + bb;
        }
    }
    out
}

/// The activations the encoders' configs name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Act {
    Relu,
    /// `0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))` (transformers' `gelu_new`).
    GeluTanh,
    /// `0.5 x (1 + erf(x / sqrt 2))`.
    Gelu,
    /// `x sigmoid(1.702 x)`.
    QuickGelu,
    /// `x sigmoid(x)`.
    Silu,
}

impl Act {
    pub fn apply(self, x: f32) -> f32 {
        match self {
            Act::Relu => x.max(0.0),
            Act::GeluTanh => 0.5 * x * (1.0 + (0.797_884_6 * (x + 0.044715 * x * x * x)).tanh()),
            Act::Gelu => 0.5 * x * (1.0 + erf(x as f64 * std::f64::consts::FRAC_1_SQRT_2) as f32),
            Act::QuickGelu => x / (1.0 + (-1.702 * x).exp()),
            Act::Silu => x / (1.0 + (-x).exp()),
        }
    }
}

/// The error function to about 1e-15 (f64): the Taylor series below 2.5, the continued
/// fraction of erfc above.
pub fn erf(x: f64) -> f64 {
    let a = x.abs();
    let r = if a < 2.5 {
        // erf(a) = 2/sqrt(pi) * sum_n (-1)^n a^(2n+1) / (n! (2n+1))
        let mut term = a;
        let mut sum = a;
        let a2 = a * a;
        let mut n = 0.0;
        while term.abs() > 1e-17 * sum.abs() {
            n += 1.0;
            term *= -a2 / n;
            sum += term / (2.0 * n + 1.0);
        }
        sum * std::f64::consts::FRAC_2_SQRT_PI
    } else {
        // erfc(a) = exp(-a^2)/sqrt(pi) * 1/(a + 1/2/(a + 1/(a + 3/2/(a + ...)))), evaluated
        // from the tail.
        let mut f = a;
        for k in (1..60).rev() {
            f = a + (k as f64 / 2.0) / f;
        }
        1.0 - (-a * a).exp() / (std::f64::consts::PI.sqrt() * f)
    };
    r.copysign(x)
}

/// Shapes and options of one attention call.
pub struct AttnShape<'a> {
    /// Tokens.
    pub len: usize,
    pub heads: usize,
    pub head_dim: usize,
    /// Score scale (T5: 1, CLIP: `1/sqrt(head_dim)`).
    pub scale: f32,
    /// Keys with mask 0 are ignored.
    pub key_mask: &'a [f32],
    /// Query `i` sees keys `j <= i` only.
    pub causal: bool,
    /// Additive bias `[heads, len, len]` on the scores.
    pub bias: Option<&'a [f32]>,
}

/// `o [len, heads*head_dim]`: per head, `softmax(scale q k^T + bias) v` over the visible keys;
/// `q, k, v` are `[len, heads*head_dim]`. A query that sees no key gets zeros.
pub fn attention(q: &[f32], k: &[f32], v: &[f32], s: &AttnShape) -> Vec<f32> {
    let (l, h, dk) = (s.len, s.heads, s.head_dim);
    let inner = h * dk;
    let per_head: Vec<Vec<f32>> = (0..h)
        .into_par_iter()
        .map(|e| {
            let mut o = vec![0.0f32; l * dk];
            let mut p = vec![0.0f32; l];
            for i in 0..l {
                let qi = &q[i * inner + e * dk..i * inner + (e + 1) * dk];
                let mut max = f32::NEG_INFINITY;
                for j in 0..l {
                    let visible = s.key_mask[j] != 0.0 && (!s.causal || j <= i);
                    p[j] = if visible {
                        let kj = &k[j * inner + e * dk..j * inner + (e + 1) * dk];
                        let dot: f32 = qi.iter().zip(kj).map(|(a, b)| a * b).sum();
                        let b = s.bias.map_or(0.0, |b| b[(e * l + i) * l + j]);
                        dot * s.scale + b
                    } else {
                        f32::NEG_INFINITY
                    };
                    max = max.max(p[j]);
                }
                if max == f32::NEG_INFINITY {
                    continue;
                }
                let mut sum = 0.0;
                for pj in p.iter_mut() {
                    *pj = (*pj - max).exp();
                    sum += *pj;
                }
                let oi = &mut o[i * dk..(i + 1) * dk];
                for (j, &pj) in p.iter().enumerate() {
                    if pj != 0.0 {
                        let vj = &v[j * inner + e * dk..j * inner + (e + 1) * dk];
                        for (a, &b) in oi.iter_mut().zip(vj) {
                            *a += pj / sum * b;
                        }
                    }
                }
            }
            o
        })
        .collect();
    let mut out = vec![0.0; l * inner];
    for (e, o) in per_head.iter().enumerate() {
        for i in 0..l {
            out[i * inner + e * dk..i * inner + (e + 1) * dk]
                .copy_from_slice(&o[i * dk..(i + 1) * dk]);
        }
    }
    out
}

/// `h += y` elementwise.
pub fn add_into(h: &mut [f32], y: &[f32]) {
    for (a, b) in h.iter_mut().zip(y) {
        *a += b;
    }
}

/// Rows `ids` of an embedding table `[vocab, d]`.
pub fn embed(table: &Tensor, ids: &[u32]) -> Vec<f32> {
    let d = table.shape[1];
    let mut out = Vec::with_capacity(ids.len() * d);
    for &id in ids {
        let r = id as usize * d;
        out.extend_from_slice(&table.data[r..r + d]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn erf_matches_tabulated_values() {
        // Abramowitz and Stegun, table 7.1.
        for (x, want) in [
            (0.0, 0.0),
            (0.5, 0.520_499_877_8),
            (1.0, 0.842_700_792_9),
            (2.0, 0.995_322_265_0),
            (2.5, 0.999_593_047_98),
            (3.0, 0.999_977_909_5),
            (-1.0, -0.842_700_792_9),
        ] {
            assert!((erf(x) - want).abs() < 1e-9, "erf({x}) = {}", erf(x));
        }
    }
}
