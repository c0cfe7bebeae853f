//! The Wan family's lowering (docs/wan.md section 13): one chunk call (or a LongLive
//! re-cache) as a static list of launches over two allocations laid out by
//! [`super::wan_layout`], written from the [`WanConfig`] rather than from the graph's op
//! list, because the kernels fuse across the graph's tensors: q, k and v are one GEMM
//! (`[Wq; Wk; Wv]`) whose output `wan_qkv_rope` normalises, rotates and stores into the
//! cache slots; a block's text K/V are one GEMM into `[Lt, 2D]` (the cross kernel's layout).
//!
//! What varies between calls of one shape lives in device memory written before the list
//! runs (latents, timesteps, RoPE frame table, slot tables), so one list per attended frame
//! count serves every call (the count is a launch parameter of the attention).

use streamdit_kernels::{
    adaln, attention, elementwise as ew, gemm, wan_attention, wan_embed, wan_qk,
};

use super::step::{kernel_err, launch_step, Params, Step, Trace};
pub use super::wan_layout::{
    permute_head_rows, CallLayout, LinearAt, ModelLayout, Source,
};
use crate::error::{Error, Result};
use crate::model::wan::WanConfig;

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

impl<'a> At<'a> {
    fn new(w: &'a WanConfig, mb: u64, c: &'a CallLayout, cb: u64, pass: &'static str) -> Self {
        let out = Vec::new();
        At { w, mb, c, cb, out, pass }
    }

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
    let mut at = At::new(w, model_base, call, call_base, "prompt");
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
    let mut at = At::new(w, model_base, call, call_base, "call");
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

