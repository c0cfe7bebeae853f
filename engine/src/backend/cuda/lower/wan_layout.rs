//! The memory layout of the Wan family's launch lists ([`super::wan`]): the model
//! allocation ([`ModelLayout`]: weights as the kernels read them, text K/V, KV cache, fixed
//! tables) and one allocation per call shape ([`CallLayout`]), every buffer 256-byte
//! aligned, with where each weight buffer's values come from ([`Upload`]).
//!
//! **Model allocation** ([`ModelLayout`], made once): every weight in f16 (the fused and
//! permuted ones as the kernels read them), the text input, the context MLP's output, per
//! block the text K/V `[Lt, 2D]` and the KV cache `[window * P, 2D]` (slot `s` = rows
//! `[s P, (s+1) P)`, rotated keys in columns `[0, D)`, values in `[D, 2D)`), the fixed RoPE
//! row and column tables and the text mask of ones. **Call allocation** ([`CallLayout`], one
//! per call shape `F`): the inputs `x`, `t`, the per-call tables (`rope_f`, the frames'
//! write slots, the attended slots), every activation (one buffer per kind, reused by every
//! block since a block's launches run in order) and the output `v`. Every buffer starts on a
//! 256-byte boundary.

use crate::error::{Error, Result};
use crate::model::wan::WanConfig;

/// Alignment of every buffer inside an allocation (as `cuMemAlloc`'s).
const ALIGN: usize = 256;

/// Hands out aligned byte offsets.
#[derive(Default)]
struct Bump {
    next: usize,
}

impl Bump {
    fn take(&mut self, bytes: usize) -> usize {
        let at = self.next;
        self.next = (at + bytes.max(1)).next_multiple_of(ALIGN);
        at
    }
    fn f16(&mut self, elems: usize) -> usize {
        self.take(2 * elems)
    }
    fn f32(&mut self, elems: usize) -> usize {
        self.take(4 * elems)
    }
}

/// A linear layer's weight `[n, k]` and bias `[n]` (f16) in the model allocation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinearAt {
    pub w: usize,
    pub b: usize,
    pub n: usize,
    pub k: usize,
}

/// How the host fills a weight buffer from the checkpoint's tensors (original Wan names).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// The tensors one after the other (a fused projection's weights or biases).
    Concat(Vec<String>),
    /// `head.head`'s rows (`[4C, ...]`, ordered `(a, b, ch)`) reordered to `unpatchify`'s
    /// `(ch, a, b)`: new row `(ch*2 + a)*2 + b` is old row `(a*2 + b)*C + ch`; `cols` per row.
    HeadRows { name: String, c: usize, cols: usize },
}

/// One f16 weight buffer to upload: byte offset, element count and source.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Upload {
    pub offset: usize,
    pub elems: usize,
    pub source: Source,
}

/// The weight buffers being laid out, with where each comes from.
#[derive(Default)]
struct WeightPlan {
    bump: Bump,
    uploads: Vec<Upload>,
}

impl WeightPlan {
    /// An f16 buffer of `elems` values filled from `names`, stacked.
    fn vector(&mut self, names: Vec<String>, elems: usize) -> usize {
        let offset = self.bump.f16(elems);
        self.uploads.push(Upload {
            offset,
            elems,
            source: Source::Concat(names),
        });
        offset
    }

    /// A linear layer `[n, k]` from one or several checkpoint layers stacked along `n`.
    fn linear(&mut self, names: &[String], n: usize, k: usize) -> LinearAt {
        let wn = names.iter().map(|s| format!("{s}.weight")).collect();
        let bn = names.iter().map(|s| format!("{s}.bias")).collect();
        LinearAt {
            w: self.vector(wn, n * k),
            b: self.vector(bn, n),
            n,
            k,
        }
    }
}

/// One block's buffers in the model allocation.
#[derive(Clone, Debug)]
pub struct BlockAt {
    pub modulation: usize,
    pub qkv: LinearAt,
    pub norm_q: usize,
    pub norm_k: usize,
    pub o: LinearAt,
    pub norm3_w: usize,
    pub norm3_b: usize,
    pub cross_q: LinearAt,
    pub cross_norm_q: usize,
    pub cross_kv: LinearAt,
    pub cross_norm_k: usize,
    pub cross_o: LinearAt,
    pub ffn0: LinearAt,
    pub ffn2: LinearAt,
    /// Text K/V `[Lt, 2D]` f16, written by the prompt list.
    pub text_kv: usize,
    /// The KV cache `[window * P, 2D]` f16.
    pub cache: usize,
}

/// The model allocation's layout.
#[derive(Clone, Debug)]
pub struct ModelLayout {
    pub bytes: usize,
    /// `text [Lt, Dtxt]` f16 (masked on the host).
    pub text: usize,
    /// `[Lt, D]` f16: the MLP's hidden layer and the context.
    pub ctx0: usize,
    pub ctx: usize,
    pub text0: LinearAt,
    pub text2: LinearAt,
    pub patch: LinearAt,
    pub time0: LinearAt,
    pub time2: LinearAt,
    pub proj: LinearAt,
    pub blocks: Vec<BlockAt>,
    pub head_mod: usize,
    pub head: LinearAt,
    /// `rope_h [Hp, nh, 2]`, `rope_w [Wp, nw, 2]` f32.
    pub rope_h: usize,
    pub rope_w: usize,
    /// `[Lt]` f32 ones: Wan's cross-attention is unmasked.
    pub ones: usize,
    pub uploads: Vec<Upload>,
}

impl ModelLayout {
    pub fn new(w: &WanConfig) -> ModelLayout {
        let (d, c, lt, dff) = (w.dim, w.latent_channels, w.text_len, w.ffn_dim);
        let p = w.tokens_per_frame();
        let [hp, wp] = w.frame_grid();
        let [_, nh, nw] = w.rope_split();
        let mut b = WeightPlan::default();
        let one = |s: &str| vec![s.to_string()];
        let text = b.bump.f16(lt * w.text_dim);
        let ctx0 = b.bump.f16(lt * d);
        let ctx = b.bump.f16(lt * d);
        let text0 = b.linear( &one("text_embedding.0"), d, w.text_dim);
        let text2 = b.linear( &one("text_embedding.2"), d, d);
        let patch = b.linear( &one("patch_embedding"), d, 4 * c);
        let time0 = b.linear( &one("time_embedding.0"), d, w.freq_dim);
        let time2 = b.linear( &one("time_embedding.2"), d, d);
        let proj = b.linear( &one("time_projection.1"), 6 * d, d);
        let mut blocks = Vec::with_capacity(w.depth);
        for l in 0..w.depth {
            let n = |s: &str| format!("blocks.{l}.{s}");
            let modulation = b.vector(one(&n("modulation")), 6 * d);
            let qkv = b.linear(
                &[n("self_attn.q"), n("self_attn.k"), n("self_attn.v")],
                3 * d,
                d,
            );
            let norm_q = b.vector(one(&n("self_attn.norm_q.weight")), d);
            let norm_k = b.vector(one(&n("self_attn.norm_k.weight")), d);
            let o = b.linear( &one(&n("self_attn.o")), d, d);
            let norm3_w = b.vector(one(&n("norm3.weight")), d);
            let norm3_b = b.vector(one(&n("norm3.bias")), d);
            let cross_q = b.linear( &one(&n("cross_attn.q")), d, d);
            let cross_norm_q = b.vector(one(&n("cross_attn.norm_q.weight")), d);
            let cross_kv = b.linear( &[n("cross_attn.k"), n("cross_attn.v")], 2 * d, d);
            let cross_norm_k = b.vector(one(&n("cross_attn.norm_k.weight")), d);
            let cross_o = b.linear( &one(&n("cross_attn.o")), d, d);
            let ffn0 = b.linear( &one(&n("ffn.0")), dff, d);
            let ffn2 = b.linear( &one(&n("ffn.2")), d, dff);
            let text_kv = b.bump.f16(lt * 2 * d);
            let cache = b.bump.f16(w.window * p * 2 * d);
            blocks.push(BlockAt {
                modulation,
                qkv,
                norm_q,
                norm_k,
                o,
                norm3_w,
                norm3_b,
                cross_q,
                cross_norm_q,
                cross_kv,
                cross_norm_k,
                cross_o,
                ffn0,
                ffn2,
                text_kv,
                cache,
            });
        }
        let head_mod = b.vector(one("head.modulation"), 2 * d);
        let head = LinearAt {
            w: b.bump.f16(4 * c * d),
            b: b.bump.f16(4 * c),
            n: 4 * c,
            k: d,
        };
        let mut uploads = b.uploads;
        let mut b = b.bump;
        uploads.push(Upload {
            offset: head.w,
            elems: 4 * c * d,
            source: Source::HeadRows {
                name: "head.head.weight".into(),
                c,
                cols: d,
            },
        });
        uploads.push(Upload {
            offset: head.b,
            elems: 4 * c,
            source: Source::HeadRows {
                name: "head.head.bias".into(),
                c,
                cols: 1,
            },
        });
        let rope_h = b.f32(hp * nh * 2);
        let rope_w = b.f32(wp * nw * 2);
        let ones = b.f32(lt);
        ModelLayout {
            bytes: b.next,
            text,
            ctx0,
            ctx,
            text0,
            text2,
            patch,
            time0,
            time2,
            proj,
            blocks,
            head_mod,
            head,
            rope_h,
            rope_w,
            ones,
            uploads,
        }
    }
}

/// The layout of one call shape's allocation (`frames` latent frames).
#[derive(Clone, Debug)]
pub struct CallLayout {
    pub bytes: usize,
    pub frames: usize,
    /// Inputs: `x [F, C, H, W]` f32, `t [F]` f32, `rope_f [F, nf, 2]` f32, the frames' cache
    /// slots `[F]` i32 (negative: not stored) and the attended slots `[window]` i32.
    pub x: usize,
    pub t: usize,
    pub rope_f: usize,
    pub write_slots: usize,
    pub attend_slots: usize,
    /// Output `v [F, C, H, W]` f32.
    pub v: usize,
    pub patches: usize,
    pub h: usize,
    pub sinusoid: usize,
    pub e1: usize,
    pub e1s: usize,
    pub e: usize,
    pub es: usize,
    pub e0: usize,
    pub mods: usize,
    pub a: usize,
    pub qkv: usize,
    pub q: usize,
    pub attn: usize,
    pub z: usize,
    pub cq: usize,
    pub cross: usize,
    pub a2: usize,
    pub f1: usize,
    pub head_mods: usize,
    pub head_out: usize,
}

impl CallLayout {
    pub fn new(w: &WanConfig, frames: usize) -> CallLayout {
        let (d, c, f) = (w.dim, w.latent_channels, frames);
        let t = f * w.tokens_per_frame();
        let [nf, _, _] = w.rope_split();
        let mut b = Bump::default();
        CallLayout {
            frames,
            x: b.f32(f * w.frame_elems()),
            t: b.f32(f),
            rope_f: b.f32(f * nf * 2),
            write_slots: b.take(4 * f),
            attend_slots: b.take(4 * w.window),
            v: b.f32(f * w.frame_elems()),
            patches: b.f16(t * 4 * c),
            h: b.f32(t * d),
            sinusoid: b.f16(f * w.freq_dim),
            e1: b.f32(f * d),
            e1s: b.f16(f * d),
            e: b.f32(f * d),
            es: b.f16(f * d),
            e0: b.f32(f * 6 * d),
            mods: b.f32(f * 6 * d),
            a: b.f16(t * d),
            qkv: b.f16(t * 3 * d),
            q: b.f16(t * d),
            attn: b.f16(t * d),
            z: b.f16(t * d),
            cq: b.f16(t * d),
            cross: b.f16(t * d),
            a2: b.f16(t * d),
            f1: b.f16(t * w.ffn_dim),
            head_mods: b.f32(f * 2 * d),
            head_out: b.f32(t * 4 * c),
            bytes: b.next,
        }
    }
}

/// The rows of `head.head` (`[4C, cols]`, rows ordered `(a, b, ch)`) in `unpatchify`'s
/// order `(ch, a, b)`.
pub fn permute_head_rows(src: &[f32], c: usize, cols: usize) -> Result<Vec<f32>> {
    if src.len() != 4 * c * cols {
        return Err(Error::shape(
            "head.head rows",
            format!("4 * {c} rows of {cols}"),
            format!("{} values", src.len()),
        ));
    }
    let mut out = vec![0.0; src.len()];
    for ch in 0..c {
        for a in 0..2 {
            for b in 0..2 {
                let new = (ch * 2 + a) * 2 + b;
                let old = (a * 2 + b) * c + ch;
                out[new * cols..(new + 1) * cols].copy_from_slice(&src[old * cols..(old + 1) * cols]);
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_rows_move_from_abc_to_cab_order() {
        let c = 3;
        let src: Vec<f32> = (0..4 * c).map(|r| r as f32).collect();
        let out = permute_head_rows(&src, c, 1).unwrap();
        // Row (ch=1, a=0, b=1) = 1*4 + 1 = 5 comes from old row (0*2 + 1)*3 + 1 = 4.
        assert_eq!(out[5], 4.0);
        let mut sorted = out.clone();
        sorted.sort_by(f32::total_cmp);
        assert_eq!(sorted, src, "a permutation");
        assert!(permute_head_rows(&src, 2, 1).is_err());
    }

    #[test]
    fn buffers_are_aligned_and_disjoint() {
        let p = crate::model::Profile::builtin("wan-tiny").unwrap();
        let w = p.wan().unwrap();
        let m = ModelLayout::new(w);
        let mut spans: Vec<(usize, usize)> = m.uploads.iter().map(|u| (u.offset, 2 * u.elems)).collect();
        spans.push((m.text, 2 * w.text_len * w.text_dim));
        for b in &m.blocks {
            spans.push((b.cache, 2 * w.window * w.tokens_per_frame() * 2 * w.dim));
        }
        spans.sort();
        for pair in spans.windows(2) {
            assert!(pair[0].0 + pair[0].1 <= pair[1].0, "{pair:?} overlap");
        }
        assert!(spans.iter().all(|s| s.0 % ALIGN == 0));
        assert!(m.bytes >= spans.last().map_or(0, |s| s.0 + s.1));
    }
}
