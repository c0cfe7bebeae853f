//! The static graph of one Wan call (docs/wan.md section 2): `F` latent frames (a chunk of
//! `c`, or the `R` frames of a LongLive re-cache) attending to themselves and to a KV cache
//! of earlier clean frames, in the shared op vocabulary of [`crate::model::graph`].
//!
//! The prompt list turns the text into the context and every block's cross-attention K/V
//! (once per prompt). The call list is one model call; its prefix `call_ops[..commit_len]`,
//! which ends with the last block's `CacheWrite`, is the committing pass (the timestep-0
//! pass of a chunk, a re-cache): what follows it (the last block's attention output, cross
//! attention, FFN and the head) does not change the cache, so a committing pass may stop
//! there (docs/wan.md section 6).
//!
//! Precisions follow StreamDiT's graph: weights, GEMM inputs and scratch f16; the residual
//! stream, the time embedding and its projection, the modulation vectors and the
//! inputs/outputs f32. The KV cache is f16 (`[Wf*P, D]` per block for keys and values).

use super::config::WanConfig;
use crate::model::graph::{Graph, Inputs, Kind, Op, Precision, TensorDesc, TensorId};

/// A Wan call graph and what its executor binds beyond the shared [`Inputs`].
#[derive(Debug, Clone, PartialEq)]
pub struct WanGraph {
    /// Tensors and op lists; `graph.inputs.tau` is `t [F]` (timesteps on the 0..1000
    /// scale), `graph.config` the model view of `F` frames.
    pub graph: Graph,
    /// Latent frames per call `F`.
    pub frames: usize,
    /// Own frames `[0, skip)` are queries only (a re-cache after the window is full: the
    /// old sink is attended instead).
    pub skip: usize,
    /// `pos [F]`: the absolute latent frame index of each frame of the call.
    pub pos: TensorId,
    /// `call_ops[..commit_len]` is the committing pass.
    pub commit_len: usize,
    /// Per block, the cache tensors `(cache_k, cache_v)`, each `[window*P, D]`.
    pub cache: Vec<(TensorId, TensorId)>,
    /// Cache capacity in latent frames (the window `Wf`) and the sink.
    pub window: usize,
    pub sink: usize,
}

impl WanGraph {
    /// The graph of a call of `frames` latent frames whose first `skip` are queries only.
    pub fn build(w: &WanConfig, frames: usize, skip: usize) -> WanGraph {
        Builder {
            w,
            frames,
            tensors: Vec::new(),
        }
        .build(skip)
    }

    /// The block a cache tensor belongs to.
    pub fn cache_block(&self, id: TensorId) -> Option<usize> {
        self.cache
            .iter()
            .position(|&(k, v)| k == id || v == id)
    }
}

struct Builder<'a> {
    w: &'a WanConfig,
    frames: usize,
    tensors: Vec<TensorDesc>,
}

impl Builder<'_> {
    fn tensor(&mut self, name: impl Into<String>, shape: Vec<usize>, kind: Kind) -> TensorId {
        let precision = match kind {
            Kind::Weight | Kind::Activation | Kind::Persistent => Precision::F16,
            Kind::Input | Kind::Output => Precision::F32,
        };
        self.tensors.push(TensorDesc {
            name: name.into(),
            shape,
            kind,
            precision,
        });
        self.tensors.len() - 1
    }

    fn act(&mut self, name: impl Into<String>, shape: Vec<usize>) -> TensorId {
        self.tensor(name, shape, Kind::Activation)
    }

    fn f32(&mut self, id: TensorId) -> TensorId {
        self.tensors[id].precision = Precision::F32;
        id
    }

    fn weight(&mut self, name: impl Into<String>, shape: Vec<usize>) -> TensorId {
        self.tensor(name, shape, Kind::Weight)
    }

    /// `name.weight [n, ...]` (+ `name.bias [n]`) applied to `x [t, k]`; `wshape` defaults
    /// to `[n, k]` (the patch embedding keeps its Conv3d shape, row-major the same matrix).
    fn linear(
        &mut self,
        ops: &mut Vec<Op>,
        x: TensorId,
        name: &str,
        n: usize,
        wshape: Option<Vec<usize>>,
        out: String,
    ) -> TensorId {
        let [t, k] = self.tensors[x].shape[..] else {
            unreachable!("linear input must be 2-D")
        };
        let w = self.weight(format!("{name}.weight"), wshape.unwrap_or(vec![n, k]));
        let b = Some(self.weight(format!("{name}.bias"), vec![n]));
        let out = self.act(out, vec![t, n]);
        ops.push(Op::Linear { x, w, b, out });
        out
    }

    /// In place full-width RMS norm (`HeadRmsNorm` with one head of `D` channels).
    fn rms(&mut self, ops: &mut Vec<Op>, x: TensorId, gain: &str) {
        let d = self.w.dim;
        let gain = self.weight(gain, vec![d]);
        ops.push(Op::HeadRmsNorm {
            x,
            offset: 0,
            heads: 1,
            gain,
        });
    }

    fn build(mut self, skip: usize) -> WanGraph {
        let w = self.w;
        let (d, f, c) = (w.dim, self.frames, w.latent_channels);
        let (p, lt) = (w.tokens_per_frame(), w.text_len);
        let t_all = f * p;
        let mut prompt = Vec::new();
        let mut call = Vec::new();

        let x = self.tensor(
            "x",
            vec![f, c, w.latent_height, w.latent_width],
            Kind::Input,
        );
        let t = self.tensor("t", vec![f], Kind::Input);
        let pos = self.tensor("pos", vec![f], Kind::Input);
        let text = self.tensor("text", vec![lt, w.text_dim], Kind::Input);
        self.tensors[text].precision = Precision::F16;
        let text_mask = self.tensor("text_mask", vec![lt], Kind::Input);

        // Text: padded rows zeroed (SF's text encoder wrapper), the GELU-tanh MLP, then
        // every block's cross-attention keys (RMS-normed across heads) and values.
        let y = self.act("text.masked", vec![lt, w.text_dim]);
        prompt.push(Op::MaskRows {
            x: text,
            mask: text_mask,
            out: y,
        });
        let c1 = self.linear(&mut prompt, y, "text_embedding.0", d, None, "ctx.0".into());
        let c1g = self.act("ctx.0.gelu", vec![lt, d]);
        prompt.push(Op::GeluTanh { x: c1, out: c1g });
        let ctx = self.linear(&mut prompt, c1g, "text_embedding.2", d, None, "ctx".into());
        let mut cross = Vec::with_capacity(w.depth);
        for l in 0..w.depth {
            let b = |s: &str| format!("blocks.{l}.cross_attn.{s}");
            let k = self.linear(&mut prompt, ctx, &b("k"), d, None, b("k.out"));
            self.tensors[k].kind = Kind::Persistent;
            self.rms(&mut prompt, k, &b("norm_k.weight"));
            let v = self.linear(&mut prompt, ctx, &b("v"), d, None, b("v.out"));
            self.tensors[v].kind = Kind::Persistent;
            cross.push((k, v));
        }

        // Patch embedding (Conv3d (1,2,2) as a GEMM over (ch, a, b) patch vectors).
        let patches = self.act("patches", vec![t_all, 4 * c]);
        call.push(Op::Patchify { x, out: patches });
        let h = self.linear(
            &mut call,
            patches,
            "patch_embedding",
            d,
            Some(vec![d, c, 1, 2, 2]),
            "h".into(),
        );
        let h = self.f32(h);
        // Per-frame time embedding e [F, D] and its projection e0 [F, 6D].
        let s = self.act("t.sinusoid", vec![f, w.freq_dim]);
        call.push(Op::Sinusoid { t, out: s });
        let e1 = self.linear(&mut call, s, "time_embedding.0", d, None, "e.0".into());
        let e1s = self.act("e.0.silu", vec![f, d]);
        call.push(Op::Silu { x: e1, out: e1s });
        let e = self.linear(&mut call, e1s, "time_embedding.2", d, None, "e".into());
        let e = self.f32(e);
        let es = self.act("e.silu", vec![f, d]);
        call.push(Op::Silu { x: e, out: es });
        let e0 = self.linear(&mut call, es, "time_projection.1", 6 * d, None, "e0".into());
        let e0 = self.f32(e0);

        let grid = w.frame_grid();
        let (heads, pairs) = (w.heads, w.rope_split());
        let mut cache = Vec::with_capacity(w.depth);
        let mut commit_len = 0;
        for (l, &(ck, cv)) in cross.iter().enumerate() {
            let b = |s: &str| format!("blocks.{l}.{s}");
            let table = self.weight(b("modulation"), vec![1, 6, d]);
            let mods = self.act(b("mods"), vec![f, 6, d]);
            self.f32(mods);
            call.push(Op::Modulation {
                src: e0,
                table,
                out: mods,
            });
            // Self-attention over the cache and the call's own frames.
            let a = self.act(b("norm1"), vec![t_all, d]);
            call.push(Op::AdaLn {
                x: h,
                mods,
                shift: 0,
                scale: 1,
                out: a,
            });
            let q = self.linear(&mut call, a, &b("self_attn.q"), d, None, b("q"));
            self.rms(&mut call, q, &b("self_attn.norm_q.weight"));
            call.push(Op::Rope3d {
                x: q,
                pos,
                heads,
                pairs,
                grid,
            });
            let k = self.linear(&mut call, a, &b("self_attn.k"), d, None, b("k"));
            self.rms(&mut call, k, &b("self_attn.norm_k.weight"));
            call.push(Op::Rope3d {
                x: k,
                pos,
                heads,
                pairs,
                grid,
            });
            let v = self.linear(&mut call, a, &b("self_attn.v"), d, None, b("v"));
            let cache_k = self.tensor(b("cache_k"), vec![w.window * p, d], Kind::Persistent);
            let cache_v = self.tensor(b("cache_v"), vec![w.window * p, d], Kind::Persistent);
            cache.push((cache_k, cache_v));
            call.push(Op::CacheWrite {
                k,
                v,
                cache_k,
                cache_v,
                skip,
            });
            commit_len = call.len();
            let o = self.act(b("attn"), vec![t_all, d]);
            call.push(Op::CacheAttention {
                q,
                k,
                v,
                cache_k,
                cache_v,
                out: o,
                heads,
                skip,
            });
            let y = self.linear(&mut call, o, &b("self_attn.o"), d, None, b("attn.out"));
            call.push(Op::GatedResidual {
                h,
                y,
                mods,
                gate: 2,
            });
            // Cross-attention: affine norm3, no gate, no mask.
            let z = self.act(b("norm3"), vec![t_all, d]);
            let (nw, nb) = (
                self.weight(b("norm3.weight"), vec![d]),
                self.weight(b("norm3.bias"), vec![d]),
            );
            call.push(Op::AffineLayerNorm {
                x: h,
                weight: nw,
                bias: nb,
                out: z,
            });
            let cq = self.linear(&mut call, z, &b("cross_attn.q"), d, None, b("cross.q"));
            self.rms(&mut call, cq, &b("cross_attn.norm_q.weight"));
            let co = self.act(b("cross"), vec![t_all, d]);
            call.push(Op::TextAttention {
                q: cq,
                k: ck,
                v: cv,
                out: co,
                heads,
            });
            let cy = self.linear(&mut call, co, &b("cross_attn.o"), d, None, b("cross.out"));
            call.push(Op::Residual { h, y: cy });
            // GELU-tanh FFN, gated.
            let a2 = self.act(b("norm2"), vec![t_all, d]);
            call.push(Op::AdaLn {
                x: h,
                mods,
                shift: 3,
                scale: 4,
                out: a2,
            });
            let f1 = self.linear(&mut call, a2, &b("ffn.0"), w.ffn_dim, None, b("ffn.0.out"));
            let f1g = self.act(b("ffn.gelu"), vec![t_all, w.ffn_dim]);
            call.push(Op::GeluTanh { x: f1, out: f1g });
            let f2 = self.linear(&mut call, f1g, &b("ffn.2"), d, None, b("ffn.2.out"));
            call.push(Op::GatedResidual {
                h,
                y: f2,
                mods,
                gate: 5,
            });
        }
        // Head: modulated by e (not e0) and its own table, then (a, b, ch) unpatchify.
        let table = self.weight("head.modulation", vec![1, 2, d]);
        let hm = self.act("head.mods", vec![f, 2, d]);
        self.f32(hm);
        call.push(Op::Modulation {
            src: e,
            table,
            out: hm,
        });
        let ho = self.act("head.norm", vec![t_all, d]);
        call.push(Op::AdaLn {
            x: h,
            mods: hm,
            shift: 0,
            scale: 1,
            out: ho,
        });
        let out = self.linear(&mut call, ho, "head.head", 4 * c, None, "head.out".into());
        let v = self.tensor(
            "v",
            vec![f, c, w.latent_height, w.latent_width],
            Kind::Output,
        );
        call.push(Op::UnpatchifyPacked { x: out, out: v });

        WanGraph {
            graph: Graph {
                config: w.model_view(f),
                batch: 1,
                tensors: self.tensors,
                prompt_ops: prompt,
                call_ops: call,
                inputs: Inputs {
                    x,
                    tau: t,
                    text,
                    text_mask,
                },
                output: v,
            },
            frames: f,
            skip,
            pos,
            commit_len,
            cache,
            window: w.window,
            sink: w.sink,
        }
    }
}
