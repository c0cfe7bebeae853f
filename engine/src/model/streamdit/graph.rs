//! The builder of StreamDiT's static graph (docs/streamdit.md sections 2-4): every tensor
//! and op of one model call in the shared graph vocabulary of [`crate::model::graph`].

use crate::model::graph::{Graph, Inputs, Kind, Op, Precision, TensorDesc, TensorId};
use crate::model::profile::ModelConfig;

/// The graph of `m`; `guidance != 1` batches two branches and combines them.
pub(crate) fn build(m: &ModelConfig, guidance: f32) -> Graph {
    Builder::new(m, if guidance != 1.0 { 2 } else { 1 }).build(guidance)
}

struct Builder<'a> {
    m: &'a ModelConfig,
    batch: usize,
    tensors: Vec<TensorDesc>,
}

impl<'a> Builder<'a> {
    fn new(m: &'a ModelConfig, batch: usize) -> Self {
        Builder {
            m,
            batch,
            tensors: Vec::new(),
        }
    }

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

    /// An activation kept in f32 (residual stream, time embedding, modulation, output).
    fn act32(&mut self, name: impl Into<String>, shape: Vec<usize>) -> TensorId {
        let id = self.act(name, shape);
        self.tensors[id].precision = Precision::F32;
        id
    }

    /// Marks an activation as f32.
    fn keep_f32(&mut self, id: TensorId) -> TensorId {
        self.tensors[id].precision = Precision::F32;
        id
    }

    fn weight(&mut self, name: impl Into<String>, shape: Vec<usize>) -> TensorId {
        self.tensor(name, shape, Kind::Weight)
    }

    fn act(&mut self, name: impl Into<String>, shape: Vec<usize>) -> TensorId {
        self.tensor(name, shape, Kind::Activation)
    }

    /// A linear layer `name.weight [n, k]` (+ `name.bias [n]`) applied to `x [t, k]`.
    fn linear(
        &mut self,
        ops: &mut Vec<Op>,
        x: TensorId,
        name: &str,
        n: usize,
        bias: bool,
        out_name: String,
    ) -> TensorId {
        let [t, k] = self.tensors[x].shape[..] else {
            unreachable!("linear input must be 2-D")
        };
        let w = self.weight(format!("{name}.weight"), vec![n, k]);
        let b = bias.then(|| self.weight(format!("{name}.bias"), vec![n]));
        let out = self.act(out_name, vec![t, n]);
        ops.push(Op::Linear { x, w, b, out });
        out
    }

    fn build(mut self, guidance: f32) -> Graph {
        let m = self.m;
        let (d, b) = (m.dim, self.batch);
        let (f, n, lt) = (m.latent_frames, m.tokens(), m.text_len);
        let (heads, dh) = (m.heads, m.head_dim());
        let mut prompt = Vec::new();
        let mut call = Vec::new();

        let x = self.tensor(
            "x",
            vec![f, m.latent_channels, m.latent_height, m.latent_width],
            Kind::Input,
        );
        let tau = self.tensor("tau", vec![f], Kind::Input);
        // The text is a GEMM input: a device stores it in f16 (converted on upload).
        let text = self.tensor("text", vec![b * lt, m.text_dim], Kind::Input);
        self.tensors[text].precision = Precision::F16;
        let text_mask = self.tensor("text_mask", vec![b * lt], Kind::Input);

        // Text context and every layer's cross-attention K/V: once per prompt.
        let c1 = self.linear(&mut prompt, text, "text_proj.1", d, true, "ctx.1".into());
        let c1 = self.keep_f32(c1);
        let c1g = self.act("ctx.1.gelu", vec![b * lt, d]);
        prompt.push(Op::GeluTanh { x: c1, out: c1g });
        let ctx = self.linear(&mut prompt, c1g, "text_proj.2", d, true, "ctx".into());
        let mut cross_kv = Vec::with_capacity(m.depth);
        for l in 0..m.depth {
            let kv = self.linear(
                &mut prompt,
                ctx,
                &format!("blocks.{l}.cross.kv"),
                2 * d,
                true,
                format!("blocks.{l}.cross.kv.out"),
            );
            self.tensors[kv].kind = Kind::Persistent;
            let gain = self.weight(format!("blocks.{l}.cross.k_norm"), vec![dh]);
            prompt.push(Op::HeadRmsNorm {
                x: kv,
                offset: 0,
                heads,
                gain,
            });
            cross_kv.push(kv);
        }

        // Patch embedding and positions, shared by both branches.
        let patches = self.act("patches", vec![n, m.patch_dim()]);
        call.push(Op::Patchify { x, out: patches });
        let h0 = self.linear(&mut call, patches, "patch_embed", d, true, "h.embed".into());
        let h0 = self.keep_f32(h0);
        let pos_t = self.weight("pos_embed.t", vec![m.token_grid()[0], d]);
        let pos_h = self.weight("pos_embed.h", vec![m.token_grid()[1], d]);
        let pos_w = self.weight("pos_embed.w", vec![m.token_grid()[2], d]);
        call.push(Op::AddPositions {
            h: h0,
            pos_t,
            pos_h,
            pos_w,
        });
        let h = if b == 1 {
            h0
        } else {
            let h = self.act32("h", vec![b * n, d]);
            call.push(Op::Repeat { x: h0, out: h });
            h
        };

        // Per-frame time embedding and modulation.
        // GEMM inputs (the sinusoidal features, the SiLU outputs) are f16 on a device; the
        // GEMM outputs of the time embedding stay f32.
        let freq = self.act("t.freq", vec![f, 256]);
        call.push(Op::TimestepEmbed { tau, out: freq });
        let t1 = self.linear(&mut call, freq, "time_embed.1", d, true, "t.1".into());
        let t1 = self.keep_f32(t1);
        let t1s = self.act("t.1.silu", vec![f, d]);
        call.push(Op::Silu { x: t1, out: t1s });
        let t_emb = self.linear(&mut call, t1s, "time_embed.2", d, true, "t.emb".into());
        let t_emb = self.keep_f32(t_emb);
        let t_emb_s = self.act("t.emb.silu", vec![f, d]);
        call.push(Op::Silu {
            x: t_emb,
            out: t_emb_s,
        });
        let t_mod = self.linear(&mut call, t_emb_s, "time_mod", 6 * d, true, "t.mod".into());
        let t_mod = self.keep_f32(t_mod);

        let bn = b * n;
        for (l, kv) in cross_kv.into_iter().enumerate() {
            let p = |s: &str| format!("blocks.{l}.{s}");
            let table = self.weight(p("mod_table"), vec![6, d]);
            let mods = self.act32(p("mods"), vec![f, 6, d]);
            call.push(Op::Modulation {
                src: t_mod,
                table,
                out: mods,
            });

            // Window self-attention.
            let a = self.act(p("attn.in"), vec![bn, d]);
            call.push(Op::AdaLn {
                x: h,
                mods,
                shift: 0,
                scale: 1,
                out: a,
            });
            let qkv = self.linear(&mut call, a, &p("attn.qkv"), 3 * d, true, p("attn.qkv.out"));
            let gq = self.weight(p("attn.q_norm"), vec![dh]);
            let gk = self.weight(p("attn.k_norm"), vec![dh]);
            call.push(Op::HeadRmsNorm {
                x: qkv,
                offset: 0,
                heads,
                gain: gq,
            });
            call.push(Op::HeadRmsNorm {
                x: qkv,
                offset: d,
                heads,
                gain: gk,
            });
            let o = self.act(p("attn.o"), vec![bn, d]);
            call.push(Op::WindowAttention {
                qkv,
                out: o,
                heads,
                window: m.window,
                shift: m.window_shift(l),
            });
            let y = self.linear(&mut call, o, &p("attn.out"), d, true, p("attn.out.out"));
            call.push(Op::GatedResidual {
                h,
                y,
                mods,
                gate: 2,
            });

            // Cross-attention to the text.
            let c = self.act(p("cross.in"), vec![bn, d]);
            call.push(Op::LayerNorm { x: h, out: c });
            let q = self.linear(&mut call, c, &p("cross.q"), d, true, p("cross.q.out"));
            let gcq = self.weight(p("cross.q_norm"), vec![dh]);
            call.push(Op::HeadRmsNorm {
                x: q,
                offset: 0,
                heads,
                gain: gcq,
            });
            let co = self.act(p("cross.o"), vec![bn, d]);
            call.push(Op::CrossAttention {
                q,
                kv,
                mask: text_mask,
                out: co,
                heads,
            });
            let y = self.linear(&mut call, co, &p("cross.out"), d, true, p("cross.out.out"));
            call.push(Op::Residual { h, y });

            // SwiGLU feed-forward.
            let a2 = self.act(p("ffn.in"), vec![bn, d]);
            call.push(Op::AdaLn {
                x: h,
                mods,
                shift: 3,
                scale: 4,
                out: a2,
            });
            let ug = self.linear(
                &mut call,
                a2,
                &p("ffn.w13"),
                2 * m.ffn_dim,
                false,
                p("ffn.w13.out"),
            );
            let act = self.act(p("ffn.act"), vec![bn, m.ffn_dim]);
            call.push(Op::SwiGlu { x: ug, out: act });
            let y = self.linear(&mut call, act, &p("ffn.w2"), d, false, p("ffn.w2.out"));
            call.push(Op::GatedResidual {
                h,
                y,
                mods,
                gate: 5,
            });
        }

        // Final layer, unpatchify and guidance.
        let table = self.weight("final.mod_table", vec![2, d]);
        let mods = self.act32("final.mods", vec![f, 2, d]);
        call.push(Op::Modulation {
            src: t_emb,
            table,
            out: mods,
        });
        let a = self.act("final.in", vec![bn, d]);
        call.push(Op::AdaLn {
            x: h,
            mods,
            shift: 0,
            scale: 1,
            out: a,
        });
        let out = self.linear(
            &mut call,
            a,
            "final.linear",
            m.patch_dim(),
            true,
            "final.out".into(),
        );
        let out = self.keep_f32(out);
        let frame_shape = vec![f, m.latent_channels, m.latent_height, m.latent_width];
        let output = if b == 1 {
            let v = self.tensor("v", frame_shape, Kind::Output);
            call.push(Op::Unpatchify { x: out, out: v });
            v
        } else {
            let branches = self.act32("v.branches", [vec![b], frame_shape.clone()].concat());
            call.push(Op::Unpatchify {
                x: out,
                out: branches,
            });
            let v = self.tensor("v", frame_shape, Kind::Output);
            call.push(Op::Guidance {
                v: branches,
                scale: guidance,
                out: v,
            });
            v
        };

        Graph {
            config: m.clone(),
            batch: b,
            tensors: self.tensors,
            prompt_ops: prompt,
            call_ops: call,
            inputs: Inputs {
                x,
                tau,
                text,
                text_mask,
            },
            output,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::streamdit::schema::{checkpoint_tensors, Group};
    use crate::model::Profile;

    /// The graph reads every DiT tensor of the checkpoint schema exactly once, with the
    /// schema's shape, and nothing else.
    #[test]
    fn graph_weights_are_exactly_the_schema() {
        for profile in ["tiny", "streamdit-4b"] {
            let m = Profile::builtin(profile).unwrap().model;
            for guidance in [1.0, 5.0] {
                let g = Graph::build(&m, guidance);
                let mut read: Vec<(String, Vec<usize>)> = g
                    .tensors
                    .iter()
                    .filter(|t| t.kind == Kind::Weight)
                    .map(|t| (t.name.clone(), t.shape.clone()))
                    .collect();
                let mut schema: Vec<(String, Vec<usize>)> = checkpoint_tensors(&m)
                    .into_iter()
                    .filter(|t| t.group == Group::Dit)
                    .map(|t| (t.name, t.shape))
                    .collect();
                read.sort();
                schema.sort();
                assert_eq!(read, schema, "{profile}, guidance {guidance}");
            }
        }
    }

    /// Every tensor is written before it is read, by exactly one op list.
    #[test]
    fn tensors_are_written_before_read() {
        let m = Profile::builtin("tiny").unwrap().model;
        let g = Graph::build(&m, 3.0);
        let mut written: Vec<bool> = g
            .tensors
            .iter()
            .map(|t| matches!(t.kind, Kind::Weight | Kind::Input))
            .collect();
        for op in g.prompt_ops.iter().chain(&g.call_ops) {
            let out = op.output();
            for id in op.tensors() {
                if id != out || op.in_place() {
                    assert!(written[id], "`{}` read before written", g.tensors[id].name);
                }
            }
            written[out] = true;
        }
        assert!(written[g.output]);
        assert_eq!(g.batch, 2);
        assert_eq!(g.tensors[g.output].shape, vec![8, 8, 16, 16]);
    }
}
