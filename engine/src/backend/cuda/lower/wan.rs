//! The Wan family's lowering (docs/wan.md section 13, "The device backend"): one chunk call (or a LongLive
//! re-cache) as a static list of launches over two allocations, written straight from the
//! [`WanConfig`] rather than from the graph's op list, because the kernels fuse across the
//! graph's tensors: the q, k and v projections are one GEMM (`W = [Wq; Wk; Wv]`), whose
//! output `wan_qkv_rope` normalises, rotates and stores into the KV cache slots; the text
//! K/V of a block are one GEMM into `[Lt, 2D]` (keys then values per row), the layout the
//! cross-attention kernel reads.
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
//!
//! What varies between calls of one shape lives in device memory written before the list
//! runs (latents, timesteps, RoPE frame table, slot tables), so one list per attended frame
//! count serves every call (the count is a launch parameter of the attention).

use streamdit_kernels::{
    adaln, attention, elementwise as ew, gemm, wan_attention, wan_embed, wan_qk,
};

use super::step::{kernel_err, launch_step, Params, Step, Trace};
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
    patches: usize,
    h: usize,
    sinusoid: usize,
    e1: usize,
    e1s: usize,
    e: usize,
    es: usize,
    e0: usize,
    mods: usize,
    a: usize,
    qkv: usize,
    q: usize,
    attn: usize,
    z: usize,
    cq: usize,
    cross: usize,
    a2: usize,
    f1: usize,
    head_mods: usize,
    head_out: usize,
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

/// A lowered call: its launches and where its committing prefix ends (after the last
/// block's `wan_qkv_rope`, which stores the last keys and values).
#[derive(Debug)]
pub struct CallSteps {
    pub steps: Vec<Step>,
    pub commit_len: usize,
}

/// Device addresses of the two allocations.
struct At<'a> {
    w: &'a WanConfig,
    mb: u64,
    c: &'a CallLayout,
    cb: u64,
    out: Vec<Step>,
    /// The pass (`prompt` or `call`) in labels.
    pass: &'static str,
}

impl At<'_> {
    fn mh(&self, off: usize) -> *mut u16 {
        (self.mb + off as u64) as *mut u16
    }
    fn mf(&self, off: usize) -> *mut f32 {
        (self.mb + off as u64) as *mut f32
    }
    fn ch(&self, off: usize) -> *mut u16 {
        (self.cb + off as u64) as *mut u16
    }
    fn cf(&self, off: usize) -> *mut f32 {
        (self.cb + off as u64) as *mut f32
    }
    fn ci(&self, off: usize) -> *const i32 {
        (self.cb + off as u64) as *const i32
    }

    fn push(
        &mut self,
        what: String,
        module: &'static str,
        kernel: &'static str,
        config: streamdit_kernels::emu::LaunchConfig,
        params: Params,
    ) {
        let n = self.out.len();
        let mut step = launch_step(format!("{} {n}: {what}", self.pass), module, kernel, config, params);
        step.set_trace(Trace { op: n, output: 0 });
        self.out.push(step);
    }

    /// `out = a W^T + b` with `a [rows, k]` f16 at call (or model) offset `a`.
    #[allow(clippy::too_many_arguments)]
    fn gemm(
        &mut self,
        what: String,
        kernel: &'static str,
        a: *const u16,
        l: LinearAt,
        rows: usize,
        out_f16: Option<*mut u16>,
        out_f32: Option<*mut f32>,
    ) -> Result<()> {
        let err = kernel_err(what.clone());
        let (w, bias) = (self.mh(l.w) as *const u16, self.mh(l.b) as *const u16);
        let (config, params) = match (out_f16, out_f32) {
            (Some(out), None) => {
                let config = if kernel == gemm::KERNEL_BIAS_GELU_F16 {
                    gemm::bias_gelu_f16_config(rows, l.n, l.k)
                } else {
                    gemm::bias_f16_config(rows, l.n, l.k)
                }
                .map_err(&err)?;
                let p = gemm::GemmBiasF16Params {
                    a,
                    w,
                    bias,
                    out,
                    m: rows as i32,
                    n: l.n as i32,
                    k: l.k as i32,
                };
                (config, Params::GemmBiasF16(p))
            }
            (None, Some(out)) => {
                let config = gemm::bias_f32_config(rows, l.n, l.k).map_err(&err)?;
                let p = gemm::GemmBiasF32Params {
                    a,
                    w,
                    bias,
                    out,
                    m: rows as i32,
                    n: l.n as i32,
                    k: l.k as i32,
                };
                (config, Params::GemmBiasF32(p))
            }
            _ => {
                return Err(Error::Invalid(format!(
                    "lowering `{what}`: a GEMM writes one output"
                )))
            }
        };
        self.push(what, "gemm", kernel, config, params);
        Ok(())
    }

    /// `h += g[frame] * (a W^T + b)` (gate `gate` of the block's modulation), or
    /// `h += a W^T + b` without a gate.
    fn gemm_residual(
        &mut self,
        what: String,
        a: usize,
        l: LinearAt,
        gate: Option<usize>,
    ) -> Result<()> {
        let w = self.w;
        let f = self.c.frames;
        let t = f * w.tokens_per_frame();
        let layout = gate.map(|gate| gemm::GateLayout {
            frames: f,
            mod_k: 6,
            gate,
            tokens: t,
            tokens_per_frame: w.tokens_per_frame(),
        });
        let config = gemm::gated_residual_config(t, l.n, l.k, layout.as_ref())
            .map_err(kernel_err(what.clone()))?;
        let params = gemm::GemmGatedResidualParams {
            a: self.ch(a) as *const u16,
            w: self.mh(l.w) as *const u16,
            bias: self.mh(l.b) as *const u16,
            h: self.cf(self.c.h),
            mods: if gate.is_some() {
                self.cf(self.c.mods) as *const f32
            } else {
                std::ptr::null()
            },
            m: t as i32,
            n: l.n as i32,
            k: l.k as i32,
            mod_k: if gate.is_some() { 6 } else { 0 },
            gate: gate.unwrap_or(0) as i32,
            tokens: t as i32,
            tokens_per_frame: w.tokens_per_frame() as i32,
        };
        self.push(
            what,
            "gemm",
            gemm::KERNEL_GATED_RESIDUAL,
            config,
            Params::GemmGatedResidual(params),
        );
        Ok(())
    }

    /// `out = LN(h)`, modulated by vectors `(shift, scale)` of `mods [F, k, D]`, or with
    /// the affine `(weight, bias)` and no modulation.
    fn norm(
        &mut self,
        what: String,
        out: usize,
        mods: Option<(usize, usize, usize, usize)>,
        affine: Option<(usize, usize)>,
    ) -> Result<()> {
        let w = self.w;
        let f = self.c.frames;
        let (t, d) = (f * w.tokens_per_frame(), w.dim);
        let layout = mods.map(|(at, k, shift, scale)| {
            (
                self.cf(at) as *const f32,
                adaln::ModLayout {
                    frames: f,
                    mod_k: k,
                    shift,
                    scale,
                    tokens: t,
                    tokens_per_frame: w.tokens_per_frame(),
                },
            )
        });
        let launch = adaln::config(t, d, layout.as_ref().map(|(_, l)| l))
            .map_err(kernel_err(what.clone()))?;
        let mut params = adaln::params(
            self.cf(self.c.h) as *const f32,
            self.ch(out),
            t,
            d,
            layout.as_ref().map(|(p, l)| (*p, l)),
        );
        if let Some((wt, b)) = affine {
            params = params.with_affine(self.mh(wt) as *const u16, self.mh(b) as *const u16);
        }
        self.push(
            what,
            "adaln",
            launch.kernel,
            launch.config,
            Params::AdaLn(params),
        );
        Ok(())
    }

    /// `out [F, k, D] = src + table` (`src_k` vectors per frame in `src`).
    fn modulation(
        &mut self,
        what: String,
        src: usize,
        table: usize,
        out: usize,
        k: usize,
        src_k: usize,
    ) -> Result<()> {
        let (f, d) = (self.c.frames, self.w.dim);
        let config =
            ew::modulation_config(f, k, d, src_k).map_err(kernel_err(what.clone()))?;
        let params = ew::ModulationParams {
            src: self.cf(src) as *const f32,
            table: self.mh(table) as *const u16,
            out: self.cf(out),
            frames: f as i32,
            k: k as i32,
            d: d as i32,
            src_k: src_k as i32,
        };
        self.push(
            what,
            "elementwise",
            ew::KERNEL_MODULATION,
            config,
            Params::Modulation(params),
        );
        Ok(())
    }

    /// `out = SiLU(x)`, f32 in, f16 out.
    fn silu(&mut self, what: String, x: usize, out: usize, n: usize) -> Result<()> {
        let config = ew::elementwise_config(ew::KERNEL_SILU, n).map_err(kernel_err(what.clone()))?;
        let params = ew::ActivationParams {
            x: self.cf(x) as *const f32,
            out: self.ch(out),
            n: n as i64,
        };
        self.push(
            what,
            "elementwise",
            ew::KERNEL_SILU,
            config,
            Params::Activation(params),
        );
        Ok(())
    }

    /// In place `x[r, 0:d] = RMS_d(x[r, 0:d]) g` over `rows` rows of stride `ld`.
    fn rms_rows(
        &mut self,
        what: String,
        x: *mut u16,
        gain: usize,
        rows: usize,
        ld: usize,
    ) -> Result<()> {
        let d = self.w.dim;
        let config = wan_qk::rms_rows_config(rows, d, ld).map_err(kernel_err(what.clone()))?;
        let params = wan_qk::WanRmsRowsParams {
            x,
            gain: self.mh(gain) as *const u16,
            rows: rows as i32,
            d: d as i32,
            ld: ld as i32,
        };
        self.push(
            what,
            "wan_qk",
            wan_qk::KERNEL_RMS_ROWS,
            config,
            Params::WanRmsRows(params),
        );
        Ok(())
    }
}

/// The prompt list: the context MLP (`GELU_tanh` fused into the first GEMM) and, per
/// block, the text K/V projection with the keys' RMS norm. The host uploads the text with
/// its padded rows zeroed (Wan's `MaskRows`).
pub fn lower_prompt(
    w: &WanConfig,
    m: &ModelLayout,
    model_base: u64,
    call: &CallLayout,
    call_base: u64,
) -> Result<Vec<Step>> {
    let mut at = At {
        w,
        mb: model_base,
        c: call,
        cb: call_base,
        out: Vec::new(),
        pass: "prompt",
    };
    let lt = w.text_len;
    let text = at.mh(m.text) as *const u16;
    let (ctx0, ctx) = (at.mh(m.ctx0), at.mh(m.ctx));
    at.gemm(
        "text_embedding.0 + GELU-tanh -> ctx.0".into(),
        gemm::KERNEL_BIAS_GELU_F16,
        text,
        m.text0,
        lt,
        Some(ctx0),
        None,
    )?;
    at.gemm(
        "text_embedding.2 -> ctx".into(),
        gemm::KERNEL_BIAS_F16,
        ctx0 as *const u16,
        m.text2,
        lt,
        Some(ctx),
        None,
    )?;
    for (l, b) in m.blocks.iter().enumerate() {
        let kv = at.mh(b.text_kv);
        at.gemm(
            format!("blocks.{l}.cross_attn.[k; v] -> text kv"),
            gemm::KERNEL_BIAS_F16,
            ctx as *const u16,
            b.cross_kv,
            lt,
            Some(kv),
            None,
        )?;
        at.rms_rows(
            format!("blocks.{l}.cross_attn.norm_k (text keys)"),
            kv,
            b.cross_norm_k,
            lt,
            2 * w.dim,
        )?;
    }
    Ok(at.out)
}

/// The call list of `call.frames` frames attending to `attended` cache slots (the call's
/// own stored frames included), in the launch order of docs/wan.md section 13.
pub fn lower_call(
    w: &WanConfig,
    m: &ModelLayout,
    model_base: u64,
    call: &CallLayout,
    call_base: u64,
    attended: usize,
) -> Result<CallSteps> {
    let mut at = At {
        w,
        mb: model_base,
        c: call,
        cb: call_base,
        out: Vec::new(),
        pass: "call",
    };
    let c = call;
    let (d, ch, f) = (w.dim, w.latent_channels, c.frames);
    let p = w.tokens_per_frame();
    let t = f * p;
    let [hp, wp] = w.frame_grid();
    let (lh, lw) = (w.latent_height, w.latent_width);

    // Patch embedding.
    let what = "patchify -> patches".to_string();
    let config = ew::patchify_config(f, ch, lh, lw, 1).map_err(kernel_err(what.clone()))?;
    let params = ew::PatchifyParams {
        x: at.cf(c.x) as *const f32,
        out: at.ch(c.patches),
        frames: f as i32,
        c: ch as i32,
        h: lh as i32,
        w: lw as i32,
        batch: 1,
    };
    at.push(
        what,
        "elementwise",
        ew::KERNEL_PATCHIFY,
        config,
        Params::Patchify(params),
    );
    let patches = at.ch(c.patches) as *const u16;
    let h = at.cf(c.h);
    at.gemm(
        "patch_embedding -> h".into(),
        gemm::KERNEL_BIAS_F32,
        patches,
        m.patch,
        t,
        None,
        Some(h),
    )?;

    // Time embedding e [F, D] and its projection e0 [F, 6D].
    let what = "sinusoid(t)".to_string();
    let config = wan_embed::timestep_features_config(f, w.freq_dim)
        .map_err(kernel_err(what.clone()))?;
    let params = wan_embed::WanTimestepParams {
        t: at.cf(c.t) as *const f32,
        out: at.ch(c.sinusoid),
        frames: f as i32,
        half: (w.freq_dim / 2) as i32,
    };
    at.push(
        what,
        "wan_embed",
        wan_embed::KERNEL_TIMESTEP_FEATURES,
        config,
        Params::WanTimestep(params),
    );
    let s = at.ch(c.sinusoid) as *const u16;
    let e1 = at.cf(c.e1);
    at.gemm(
        "time_embedding.0 -> e.0".into(),
        gemm::KERNEL_BIAS_F32,
        s,
        m.time0,
        f,
        None,
        Some(e1),
    )?;
    at.silu("SiLU(e.0)".into(), c.e1, c.e1s, f * d)?;
    let (e1s, e) = (at.ch(c.e1s) as *const u16, at.cf(c.e));
    at.gemm(
        "time_embedding.2 -> e".into(),
        gemm::KERNEL_BIAS_F32,
        e1s,
        m.time2,
        f,
        None,
        Some(e),
    )?;
    at.silu("SiLU(e)".into(), c.e, c.es, f * d)?;
    let (es, e0) = (at.ch(c.es) as *const u16, at.cf(c.e0));
    at.gemm(
        "time_projection.1 -> e0".into(),
        gemm::KERNEL_BIAS_F32,
        es,
        m.proj,
        f,
        None,
        Some(e0),
    )?;

    let mut commit_len = 0;
    let [nf, nh, nw] = w.rope_split();
    if nf + nh + nw != w.head_dim() / 2 {
        return Err(Error::Invalid(format!(
            "lowering: the RoPE split {nf}/{nh}/{nw} does not fill a head of {}",
            w.head_dim()
        )));
    }
    for (l, b) in m.blocks.iter().enumerate() {
        let n = |s: &str| format!("blocks.{l}.{s}");
        at.modulation(n("modulation + e0 -> mods"), c.e0, b.modulation, c.mods, 6, 6)?;
        at.norm(n("norm1 (adaLN 0/1)"), c.a, Some((c.mods, 6, 0, 1)), None)?;
        let (a, qkv) = (at.ch(c.a) as *const u16, at.ch(c.qkv));
        at.gemm(
            n("self_attn.[q; k; v] -> qkv"),
            gemm::KERNEL_BIAS_F16,
            a,
            b.qkv,
            t,
            Some(qkv),
            None,
        )?;
        // RMS norms, RoPE, and the keys and values into their cache slots.
        let what = n("wan_qkv_rope -> q, cache slots");
        let config = wan_qk::qkv_rope_config(&wan_qk::QkvRopeShape {
            frames: f,
            hp,
            wp,
            heads: w.heads,
            head_dim: w.head_dim(),
            cache_slots: w.window,
        })
        .map_err(kernel_err(what.clone()))?;
        let params = wan_qk::WanQkvRopeParams {
            qkv: qkv as *const u16,
            gq: at.mh(b.norm_q) as *const u16,
            gk: at.mh(b.norm_k) as *const u16,
            rope_f: at.cf(c.rope_f) as *const f32,
            rope_h: at.mf(m.rope_h) as *const f32,
            rope_w: at.mf(m.rope_w) as *const f32,
            frame_slots: at.ci(c.write_slots),
            q_out: at.ch(c.q),
            cache: at.mh(b.cache),
            frames: f as i32,
            hp: hp as i32,
            wp: wp as i32,
            heads: w.heads as i32,
            head_dim: w.head_dim() as i32,
        };
        at.push(
            what,
            "wan_qk",
            wan_qk::KERNEL_QKV_ROPE,
            config,
            Params::WanQkvRope(params),
        );
        commit_len = at.out.len();
        let what = n("attn_kvcache -> attn");
        let launch = wan_attention::kvcache_config(&wan_attention::KvCacheShape {
            tokens: t,
            frame_tokens: p,
            frames: attended,
            heads: w.heads,
            head_dim: w.head_dim(),
            cache_slots: w.window,
        })
        .map_err(kernel_err(what.clone()))?;
        let params = wan_attention::AttnKvCacheParams {
            q: at.ch(c.q) as *const u16,
            cache: at.mh(b.cache) as *const u16,
            frame_slots: at.ci(c.attend_slots),
            out: at.ch(c.attn),
            tokens: t as i32,
            frame_tokens: p as i32,
            frames: attended as i32,
            heads: w.heads as i32,
        };
        at.push(
            what,
            "wan_attention",
            launch.kernel,
            launch.config,
            Params::AttnKvCache(params),
        );
        at.gemm_residual(n("self_attn.o + gate 2 -> h"), c.attn, b.o, Some(2))?;
        // Cross-attention: affine norm3, q norm, unmasked text attention, residual.
        at.norm(n("norm3 (affine LN)"), c.z, None, Some((b.norm3_w, b.norm3_b)))?;
        let (z, cq) = (at.ch(c.z) as *const u16, at.ch(c.cq));
        at.gemm(
            n("cross_attn.q -> cross q"),
            gemm::KERNEL_BIAS_F16,
            z,
            b.cross_q,
            t,
            Some(cq),
            None,
        )?;
        at.rms_rows(n("cross_attn.norm_q"), cq, b.cross_norm_q, t, d)?;
        let what = n("attn_cross -> cross");
        let launch = attention::cross_config(&attention::CrossShape {
            batch: 1,
            tokens: t,
            text_len: w.text_len,
            heads: w.heads,
            head_dim: w.head_dim(),
        })
        .map_err(kernel_err(what.clone()))?;
        let params = attention::AttnCrossParams {
            q: cq as *const u16,
            kv: at.mh(b.text_kv) as *const u16,
            mask: at.mf(m.ones) as *const f32,
            gq: std::ptr::null(),
            gk: std::ptr::null(),
            out: at.ch(c.cross),
            tokens: t as i32,
            text_len: w.text_len as i32,
            heads: w.heads as i32,
        };
        at.push(
            what,
            "attention",
            launch.kernel,
            launch.config,
            Params::CrossAttention(params),
        );
        at.gemm_residual(n("cross_attn.o + residual -> h"), c.cross, b.cross_o, None)?;
        // FFN: adaLN 3/4, GELU-tanh fused into the up projection, gated down projection.
        at.norm(n("norm2 (adaLN 3/4)"), c.a2, Some((c.mods, 6, 3, 4)), None)?;
        let (a2, f1) = (at.ch(c.a2) as *const u16, at.ch(c.f1));
        at.gemm(
            n("ffn.0 + GELU-tanh"),
            gemm::KERNEL_BIAS_GELU_F16,
            a2,
            b.ffn0,
            t,
            Some(f1),
            None,
        )?;
        at.gemm_residual(n("ffn.2 + gate 5 -> h"), c.f1, b.ffn2, Some(5))?;
    }

    // Head: modulated by e, rows pre-permuted so `unpatchify` reads them.
    at.modulation("head.modulation + e -> head mods".into(), c.e, m.head_mod, c.head_mods, 2, 1)?;
    at.norm(
        "head norm (adaLN 0/1)".into(),
        c.a,
        Some((c.head_mods, 2, 0, 1)),
        None,
    )?;
    let (a, out) = (at.ch(c.a) as *const u16, at.cf(c.head_out));
    at.gemm(
        "head.head (rows permuted) -> out".into(),
        gemm::KERNEL_BIAS_F32,
        a,
        m.head,
        t,
        None,
        Some(out),
    )?;
    let what = "unpatchify -> v".to_string();
    let config =
        ew::unpatchify_config(f, ch, lh, lw, 1, false).map_err(kernel_err(what.clone()))?;
    let params = ew::UnpatchifyParams {
        x: out as *const f32,
        out: at.cf(c.v),
        frames: f as i32,
        c: ch as i32,
        h: lh as i32,
        w: lw as i32,
        batch: 1,
        combine: 0,
        guidance: 1.0,
    };
    at.push(
        what,
        "elementwise",
        ew::KERNEL_UNPATCHIFY,
        config,
        Params::Unpatchify(params),
    );
    Ok(CallSteps {
        steps: at.out,
        commit_len,
    })
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
