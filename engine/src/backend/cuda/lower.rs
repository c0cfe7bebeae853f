//! Lowering: the model graph's op lists become static lists of device operations over the
//! memory plan's addresses.
//!
//! The graph is written op by op, as the CPU backend executes it; the GPU fuses where a
//! kernel does two ops in one pass over memory:
//!
//! | graph ops | launch |
//! |---|---|
//! | `Linear` + `GatedResidual` | `gemm_gated_residual` (`h += g[frame] * (a W^T + b)`) |
//! | `Linear` + `Residual` | `gemm_gated_residual` without a gate |
//! | `Linear` + `SwiGlu` | `gemm_swiglu` |
//! | `Linear` (f16 / f32 out) | `gemm_bias_f16` / `gemm_bias_f32` |
//! | `HeadRmsNorm` + `WindowAttention` / `CrossAttention` | the attention kernel, norms fused at load |
//! | `Unpatchify` + `Guidance` | `unpatchify` with classifier-free guidance fused |
//! | `LayerNorm`, `AdaLn` | `adaln_*` (a null modulation for plain LN) |
//! | `Repeat` | device-to-device copies |
//!
//! The memory plan is made for the unfused graph, so the outputs that fusion skips (the
//! linear results before a residual or SwiGLU) keep their arena slots unused: the arena is
//! an upper bound of what the fused list needs. Any op sequence without a lowering is an
//! error naming the op, never a silent fallback.

use std::collections::HashMap;

use streamdit_kernels::{adaln, attention, conv, elementwise as ew, gemm};

use super::device::{backend_error, Device, DeviceBuffer, Kernel, LaunchConfig};
use crate::error::{Error, Result};
use crate::model::graph::{Graph, Op, Precision, TensorId};
use crate::model::plan::{Fusion, MemoryPlan, OpList};

/// A kernel's parameter struct as a launch argument. The structs hold device addresses as
/// raw pointers, which makes them `!Send`; the addresses are plain numbers to the host.
#[repr(transparent)]
#[derive(Clone, Copy, Debug)]
pub struct DeviceParams<P>(pub P);

// SAFETY: the wrapped structs hold device addresses and scalars only; the host never
// dereferences them, and on the emulator the memory they point to is owned by the device
// object, which is itself `Send` and moves with the backend that holds these parameters.
unsafe impl<P: Copy> Send for DeviceParams<P> {}

/// The parameter struct of one launch, by kernel.
#[derive(Clone, Copy, Debug)]
pub enum Params {
    GemmBiasF16(gemm::GemmBiasF16Params),
    GemmBiasF32(gemm::GemmBiasF32Params),
    GemmGatedResidual(gemm::GemmGatedResidualParams),
    GemmSwiglu(gemm::GemmSwigluParams),
    AdaLn(adaln::AdaLnParams),
    Patchify(ew::PatchifyParams),
    AddPositions(ew::AddPositionsParams),
    TimestepFeatures(ew::TimestepFeaturesParams),
    Activation(ew::ActivationParams),
    Modulation(ew::ModulationParams),
    Unpatchify(ew::UnpatchifyParams),
    EulerStep(ew::EulerStepParams),
    NoiseFill(ew::NoiseFillParams),
    WindowAttention(attention::AttnWindowParams),
    CrossAttention(attention::AttnCrossParams),
    Conv3x3(conv::Conv3x3Params),
    ConvT3(conv::ConvT3Params),
    Conv1x1(conv::Conv1x1Params),
    GroupNormStats(conv::GroupNormStatsParams),
    GroupNormFinalize(conv::GroupNormFinalizeParams),
    GroupNormApply(conv::GroupNormApplyParams),
}

// SAFETY: as for `DeviceParams`: the structs carry device addresses the host never
// dereferences; the memory belongs to the device object that travels with the backend.
unsafe impl Send for Params {}

/// One device operation of a lowered list.
#[derive(Clone, Debug)]
pub enum Step {
    Launch {
        /// The graph op(s) it computes, for errors and listings.
        label: String,
        module: &'static str,
        kernel_name: &'static str,
        /// Looked up by [`resolve`].
        kernel: Option<Kernel>,
        config: LaunchConfig,
        params: Params,
        trace: Trace,
    },
    /// `bytes` bytes from offset `src` to offset `dst` of the model allocation.
    Copy {
        label: String,
        src: usize,
        dst: usize,
        bytes: usize,
        trace: Trace,
    },
}

/// Which graph op a step completes and the tensor it leaves its result in, so a traced run
/// can compare each step with the CPU backend's trace of the same op.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Trace {
    /// Index of the last graph op the step computes, in its op list.
    pub op: usize,
    pub output: TensorId,
}

impl Step {
    pub fn label(&self) -> &str {
        match self {
            Step::Launch { label, .. } | Step::Copy { label, .. } => label,
        }
    }

    pub fn trace(&self) -> Trace {
        match self {
            Step::Launch { trace, .. } | Step::Copy { trace, .. } => *trace,
        }
    }

    fn set_trace(&mut self, t: Trace) {
        match self {
            Step::Launch { trace, .. } | Step::Copy { trace, .. } => *trace = t,
        }
    }
}

/// The lowered prompt and call lists.
#[derive(Debug)]
pub struct Lowered {
    pub prompt: Vec<Step>,
    pub call: Vec<Step>,
}

/// Looks every kernel up on `dev` (loading its module), so running a list does no lookups.
pub fn resolve<D: Device>(dev: &mut D, mut steps: Vec<Step>) -> Result<Vec<Step>> {
    for step in &mut steps {
        if let Step::Launch {
            module,
            kernel_name,
            kernel,
            label,
            ..
        } = step
        {
            let k = dev.kernel(module, kernel_name).map_err(|e| {
                backend_error(
                    dev.backend(),
                    label.clone(),
                    format!("kernel {kernel_name}: {e}"),
                )
            })?;
            *kernel = Some(k);
        }
    }
    Ok(steps)
}

/// Launches one parameter struct.
///
/// # Safety
/// `params` must be the mirror of `kernel`'s struct, with addresses inside live allocations
/// of `dev` large enough for `config` (what [`lower`] builds from a verified memory plan).
unsafe fn launch<D: Device>(
    dev: &mut D,
    kernel: Kernel,
    config: LaunchConfig,
    params: &Params,
) -> Result<()> {
    macro_rules! go {
        ($($v:ident),*) => {
            match params {
                // SAFETY: forwarded from this function's contract.
                $(Params::$v(p) => unsafe { dev.launch(kernel, config, &DeviceParams(*p)) },)*
            }
        };
    }
    go!(
        GemmBiasF16,
        GemmBiasF32,
        GemmGatedResidual,
        GemmSwiglu,
        AdaLn,
        Patchify,
        AddPositions,
        TimestepFeatures,
        Activation,
        Modulation,
        Unpatchify,
        EulerStep,
        NoiseFill,
        WindowAttention,
        CrossAttention,
        Conv3x3,
        ConvT3,
        Conv1x1,
        GroupNormStats,
        GroupNormFinalize,
        GroupNormApply
    )
}

/// Runs a resolved list on `dev`; `mem` is the model allocation the list was lowered for.
pub fn run<D: Device>(dev: &mut D, mem: DeviceBuffer<u8>, steps: &[Step]) -> Result<()> {
    for step in steps {
        // Eager runs name each launch for Nsight; a capture records the names once.
        let _range = crate::nvtx::Range::push(step.label());
        match step {
            Step::Launch {
                label,
                kernel,
                config,
                params,
                kernel_name,
                ..
            } => {
                let kernel = kernel.ok_or_else(|| {
                    Error::Invalid(format!("{label}: kernel {kernel_name} was not resolved"))
                })?;
                // SAFETY: the list was lowered from a verified memory plan for `mem`, whose
                // allocation is alive while the backend holds it; every config was checked
                // against the shapes its addresses were sized for.
                unsafe { launch(dev, kernel, *config, params) }
                    .map_err(|e| backend_error(dev.backend(), label.clone(), e.to_string()))?;
            }
            Step::Copy {
                label,
                src,
                dst,
                bytes,
                ..
            } => {
                let (s, d) = (mem.slice(*src, *bytes)?, mem.slice(*dst, *bytes)?);
                dev.copy(s, d)
                    .map_err(|e| backend_error(dev.backend(), label.clone(), e.to_string()))?;
            }
        }
    }
    Ok(())
}

fn kernel_err(label: impl Into<String>) -> impl Fn(String) -> Error {
    let label = label.into();
    move |e| Error::Invalid(format!("lowering `{label}`: {e}"))
}

/// The Euler update with pop/push (`euler_step`), launched now or recorded when capturing.
#[allow(clippy::too_many_arguments)]
pub fn euler_step<D: Device>(
    dev: &mut D,
    x: DeviceBuffer<f32>,
    v: DeviceBuffer<f32>,
    dtau: &DeviceBuffer<f32>,
    control: &DeviceBuffer<u64>,
    x_next: &DeviceBuffer<f32>,
    emit: &DeviceBuffer<f32>,
    seed: u64,
    frames: usize,
    frame_elems: usize,
) -> Result<()> {
    let label = "euler step";
    let emit_frames = emit.len() / frame_elems;
    let config =
        ew::euler_step_config(frames, frame_elems, emit_frames).map_err(kernel_err(label))?;
    let n = frames * frame_elems;
    for (what, len) in [("x", x.len()), ("v", v.len()), ("x_next", x_next.len())] {
        if len != n {
            return Err(Error::shape(format!("{label}: {what}"), n, len));
        }
    }
    let params = ew::EulerStepParams {
        x: x.addr() as *const f32,
        v: v.addr() as *const f32,
        dtau: dtau.addr() as *const f32,
        control: control.addr() as *const ew::EulerControl,
        x_next: x_next.addr() as *mut f32,
        emit: emit.addr() as *mut f32,
        seed,
        frames: frames as i32,
        frame_elems: frame_elems as i32,
        emit_frames: emit_frames as i32,
    };
    let kernel = dev.kernel("elementwise", ew::KERNEL_EULER_STEP)?;
    // SAFETY: x, v, x_next hold frames * frame_elems f32 (checked above), dtau `frames`,
    // control the 16-byte control block, emit `emit_frames` frames; all live on `dev`.
    unsafe { dev.launch(kernel, config, &DeviceParams(params)) }
        .map_err(|e| backend_error(dev.backend(), label, e.to_string()))
}

/// Fills `x [frames, frame_elems]` with the noise of frames `first_frame..` (`noise_fill`).
pub fn noise_fill<D: Device>(
    dev: &mut D,
    x: DeviceBuffer<f32>,
    seed: u64,
    first_frame: u64,
    frames: usize,
    frame_elems: usize,
) -> Result<()> {
    let label = "noise fill";
    let config = ew::noise_fill_config(frames, frame_elems).map_err(kernel_err(label))?;
    if x.len() != frames * frame_elems {
        return Err(Error::shape(label, frames * frame_elems, x.len()));
    }
    let params = ew::NoiseFillParams {
        out: x.addr() as *mut f32,
        seed,
        first_frame,
        frames: frames as i32,
        frame_elems: frame_elems as i32,
    };
    let kernel = dev.kernel("elementwise", ew::KERNEL_NOISE_FILL)?;
    // SAFETY: x holds frames * frame_elems f32 (checked above) on `dev`.
    unsafe { dev.launch(kernel, config, &DeviceParams(params)) }
        .map_err(|e| backend_error(dev.backend(), label, e.to_string()))
}

/// Addresses and shapes of the graph's tensors in the model allocation.
struct Ctx<'a> {
    graph: &'a Graph,
    plan: &'a MemoryPlan,
    base: u64,
}

impl Ctx<'_> {
    /// Byte offset of tensor `id` in the model allocation.
    fn offset(&self, id: TensorId) -> usize {
        let p = self.plan.placements[id];
        (self.plan.region_base(p.region) + p.offset) as usize
    }
    fn addr(&self, id: TensorId) -> u64 {
        self.base + self.offset(id) as u64
    }
    fn f16(&self, id: TensorId, what: &str) -> Result<*mut u16> {
        self.expect(id, Precision::F16, what)?;
        Ok(self.addr(id) as *mut u16)
    }
    fn f32(&self, id: TensorId, what: &str) -> Result<*mut f32> {
        self.expect(id, Precision::F32, what)?;
        Ok(self.addr(id) as *mut f32)
    }
    fn expect(&self, id: TensorId, p: Precision, what: &str) -> Result<()> {
        let t = self.graph.tensor(id);
        if t.precision != p {
            return Err(Error::Invalid(format!(
                "lowering: tensor `{}` ({what}) is {:?} on the device; the kernel needs {p:?}",
                t.name, t.precision
            )));
        }
        Ok(())
    }
    fn shape(&self, id: TensorId) -> &[usize] {
        &self.graph.tensor(id).shape
    }
    fn name(&self, id: TensorId) -> &str {
        &self.graph.tensor(id).name
    }
    /// `[rows, cols]` of a 2-D tensor.
    fn dims2(&self, id: TensorId) -> Result<(usize, usize)> {
        match *self.shape(id) {
            [r, c] => Ok((r, c)),
            ref s => Err(Error::Invalid(format!(
                "lowering: tensor `{}` has shape {s:?}; a 2-D matrix was expected",
                self.name(id)
            ))),
        }
    }
}

/// Whether op `i` runs in the launch of op `i - 1` (the fusions in the module docs): the
/// memory plan keeps the tensors of both live together.
pub fn fused_with_previous(ops: &[Op], i: usize) -> bool {
    if i == 0 || i >= ops.len() {
        return false;
    }
    match (&ops[i - 1], &ops[i]) {
        (Op::Linear { out, .. }, Op::GatedResidual { y, .. })
        | (Op::Linear { out, .. }, Op::Residual { y, .. }) => y == out,
        (Op::Linear { out, b, .. }, Op::SwiGlu { x, .. }) => x == out && b.is_none(),
        (Op::Unpatchify { out, .. }, Op::Guidance { v, .. }) => v == out,
        _ => false,
    }
}

/// The launches of `graph`'s op lists, for [`MemoryPlan::build_fused`].
pub fn fusion(graph: &Graph) -> Fusion {
    Fusion::from_predicate(graph, |list, i| match list {
        OpList::Prompt => fused_with_previous(&graph.prompt_ops, i),
        OpList::Call => fused_with_previous(&graph.call_ops, i),
    })
}

/// The gains of the per-head RMS norms waiting for their attention op, by `(tensor, column
/// offset)`.
type Norms = HashMap<(TensorId, usize), TensorId>;

/// Lowers both op lists of `graph` for the model allocation `mem` laid out by `plan`.
pub fn lower(graph: &Graph, plan: &MemoryPlan, mem: DeviceBuffer<u8>) -> Result<Lowered> {
    let cx = Ctx {
        graph,
        plan,
        base: mem.addr(),
    };
    if (plan.peak_bytes() as usize) > mem.len() {
        return Err(Error::Invalid(format!(
            "lowering: the model allocation holds {} bytes; the plan needs {}",
            mem.len(),
            plan.peak_bytes()
        )));
    }
    let mut prompt_norms = Norms::new();
    let prompt = lower_list(
        &cx,
        OpList::Prompt,
        &graph.prompt_ops,
        &mut prompt_norms,
        None,
    )?;
    let mut call_norms = Norms::new();
    let call = lower_list(
        &cx,
        OpList::Call,
        &graph.call_ops,
        &mut call_norms,
        Some(&prompt_norms),
    )?;
    // Norms of the prompt list are consumed by the call's cross-attention.
    if let Some(((id, _), _)) = call_norms.iter().next() {
        return Err(Error::Invalid(format!(
            "lowering: the per-head RMS norm of `{}` has no attention op to fuse into",
            cx.name(*id)
        )));
    }
    Ok(Lowered { prompt, call })
}

fn launch_step(
    label: String,
    module: &'static str,
    kernel_name: &'static str,
    config: LaunchConfig,
    params: Params,
) -> Step {
    Step::Launch {
        label,
        module,
        kernel_name,
        kernel: None,
        config,
        params,
        trace: Trace::default(),
    }
}

fn lower_list(
    cx: &Ctx,
    list: OpList,
    ops: &[Op],
    norms: &mut Norms,
    prompt_norms: Option<&Norms>,
) -> Result<Vec<Step>> {
    let m = &cx.graph.config;
    let g = cx.graph;
    let mut out: Vec<Step> = Vec::new();
    // Steps from `tagged` on were made for ops up to `i - 1`.
    let mut tagged = 0;
    let tag = |steps: &mut [Step], last: usize| {
        for s in steps {
            s.set_trace(Trace {
                op: last,
                output: ops[last].output(),
            });
        }
    };
    let mut i = 0;
    while i < ops.len() {
        if i > 0 {
            tag(&mut out[tagged..], i - 1);
            tagged = out.len();
        }
        let op = &ops[i];
        let next = ops.get(i + 1);
        let label = format!("{list:?} op {i}: {}", describe(cx, op));
        let err = kernel_err(label.clone());
        match *op {
            Op::Linear { x, w, b, out: y } => {
                let (rows, k) = cx.dims2(x)?;
                let (n, k2) = cx.dims2(w)?;
                if k != k2 {
                    return Err(Error::Invalid(format!(
                        "{label}: input width {k} != weight's {k2}"
                    )));
                }
                let a = cx.f16(x, "GEMM input")? as *const u16;
                let wp = cx.f16(w, "GEMM weight")? as *const u16;
                let bias = match b {
                    Some(b) => cx.f16(b, "GEMM bias")? as *const u16,
                    None => std::ptr::null(),
                };
                let fuse_next = fused_with_previous(ops, i + 1);
                let fused = match next.filter(|_| fuse_next) {
                    // The residual add, with the per-frame gate or (cross-attention) none.
                    Some(
                        op @ (&Op::GatedResidual { h, y: yy, .. } | &Op::Residual { h, y: yy }),
                    ) if yy == y => {
                        let (mods, layout) = match *op {
                            Op::GatedResidual { mods, gate, .. } => (
                                cx.f32(mods, "modulation")? as *const f32,
                                Some(gemm::GateLayout {
                                    frames: m.latent_frames,
                                    mod_k: cx.shape(mods)[1],
                                    gate,
                                    tokens: m.tokens(),
                                    tokens_per_frame: m.tokens_per_frame(),
                                }),
                            ),
                            _ => (std::ptr::null(), None),
                        };
                        let config = gemm::gated_residual_config(rows, n, k, layout.as_ref())
                            .map_err(&err)?;
                        let (mod_k, gate) = layout.map_or((0, 0), |l| (l.mod_k, l.gate));
                        Some((
                            gemm::KERNEL_GATED_RESIDUAL,
                            config,
                            Params::GemmGatedResidual(gemm::GemmGatedResidualParams {
                                a,
                                w: wp,
                                bias,
                                h: cx.f32(h, "residual stream")?,
                                mods,
                                m: rows as i32,
                                n: n as i32,
                                k: k as i32,
                                mod_k: mod_k as i32,
                                gate: gate as i32,
                                tokens: m.tokens() as i32,
                                tokens_per_frame: m.tokens_per_frame() as i32,
                            }),
                        ))
                    }
                    Some(&Op::SwiGlu { x: xx, out: act }) if xx == y => {
                        if b.is_some() {
                            return Err(Error::Invalid(format!(
                                "{label}: the fused SwiGLU GEMM takes no bias"
                            )));
                        }
                        let dff = n / 2;
                        let config = gemm::swiglu_config(rows, dff, k).map_err(&err)?;
                        Some((
                            gemm::KERNEL_SWIGLU,
                            config,
                            Params::GemmSwiglu(gemm::GemmSwigluParams {
                                a,
                                w13: wp,
                                out: cx.f16(act, "SwiGLU output")?,
                                m: rows as i32,
                                dff: dff as i32,
                                k: k as i32,
                            }),
                        ))
                    }
                    _ => None,
                };
                if let Some((name, config, params)) = fused {
                    let label = format!("{label} + {}", describe(cx, &ops[i + 1]));
                    out.push(launch_step(label, "gemm", name, config, params));
                    i += 2;
                    continue;
                }
                let step = match g.tensor(y).precision {
                    Precision::F16 => {
                        let config = gemm::bias_f16_config(rows, n, k).map_err(&err)?;
                        let params = Params::GemmBiasF16(gemm::GemmBiasF16Params {
                            a,
                            w: wp,
                            bias,
                            out: cx.f16(y, "GEMM output")?,
                            m: rows as i32,
                            n: n as i32,
                            k: k as i32,
                        });
                        launch_step(label, "gemm", gemm::KERNEL_BIAS_F16, config, params)
                    }
                    Precision::F32 => {
                        let config = gemm::bias_f32_config(rows, n, k).map_err(&err)?;
                        let params = Params::GemmBiasF32(gemm::GemmBiasF32Params {
                            a,
                            w: wp,
                            bias,
                            out: cx.f32(y, "GEMM output")?,
                            m: rows as i32,
                            n: n as i32,
                            k: k as i32,
                        });
                        launch_step(label, "gemm", gemm::KERNEL_BIAS_F32, config, params)
                    }
                };
                out.push(step);
            }
            Op::Patchify { x, out: p } => {
                let [f, c, h, w] = latent_shape(m);
                let batch = cx.shape(p)[0] / m.tokens();
                let config = ew::patchify_config(f, c, h, w, batch).map_err(&err)?;
                let params = Params::Patchify(ew::PatchifyParams {
                    x: cx.f32(x, "latents")? as *const f32,
                    out: cx.f16(p, "patches")?,
                    frames: f as i32,
                    c: c as i32,
                    h: h as i32,
                    w: w as i32,
                    batch: batch as i32,
                });
                out.push(launch_step(
                    label,
                    "elementwise",
                    ew::KERNEL_PATCHIFY,
                    config,
                    params,
                ));
            }
            Op::AddPositions {
                h,
                pos_t,
                pos_h,
                pos_w,
            } => {
                let (rows, d) = cx.dims2(h)?;
                let [ft, ht, wt] = m.token_grid();
                let config = ew::add_positions_config(rows, d, ft, ht, wt).map_err(&err)?;
                let params = Params::AddPositions(ew::AddPositionsParams {
                    h: cx.f32(h, "residual stream")?,
                    pos_t: cx.f16(pos_t, "positions")? as *const u16,
                    pos_h: cx.f16(pos_h, "positions")? as *const u16,
                    pos_w: cx.f16(pos_w, "positions")? as *const u16,
                    rows: rows as i32,
                    d: d as i32,
                    tokens: m.tokens() as i32,
                    ht: ht as i32,
                    wt: wt as i32,
                });
                out.push(launch_step(
                    label,
                    "elementwise",
                    ew::KERNEL_ADD_POSITIONS,
                    config,
                    params,
                ));
            }
            Op::Repeat { x, out: y } => {
                let bytes = g.tensor(x).bytes();
                if g.tensor(y).bytes() % bytes != 0
                    || g.tensor(x).precision != g.tensor(y).precision
                {
                    return Err(Error::Invalid(format!(
                        "{label}: `{}` is not a whole number of copies of `{}`",
                        cx.name(y),
                        cx.name(x)
                    )));
                }
                for copy in 0..g.tensor(y).bytes() / bytes {
                    out.push(Step::Copy {
                        label: format!("{label} (copy {copy})"),
                        src: cx.offset(x),
                        dst: cx.offset(y) + copy * bytes,
                        bytes,
                        trace: Trace::default(),
                    });
                }
            }
            Op::TimestepEmbed { tau, out: e } => {
                let f = cx.shape(tau)[0];
                let config = ew::timestep_features_config(f).map_err(&err)?;
                let params = Params::TimestepFeatures(ew::TimestepFeaturesParams {
                    tau: cx.f32(tau, "tau")? as *const f32,
                    out: cx.f16(e, "timestep features")?,
                    frames: f as i32,
                });
                out.push(launch_step(
                    label,
                    "elementwise",
                    ew::KERNEL_TIMESTEP_FEATURES,
                    config,
                    params,
                ));
            }
            Op::Silu { x, out: y } | Op::GeluTanh { x, out: y } => {
                let kernel = if matches!(op, Op::Silu { .. }) {
                    ew::KERNEL_SILU
                } else {
                    ew::KERNEL_GELU_TANH
                };
                let n = g.tensor(x).numel();
                let config = ew::elementwise_config(kernel, n).map_err(&err)?;
                let params = Params::Activation(ew::ActivationParams {
                    x: cx.f32(x, "activation input")? as *const f32,
                    out: cx.f16(y, "activation output")?,
                    n: n as i64,
                });
                out.push(launch_step(label, "elementwise", kernel, config, params));
            }
            Op::Modulation { src, table, out: y } => {
                let &[f, k, d] = cx.shape(y) else {
                    return Err(Error::Invalid(format!("{label}: output must be [F, k, D]")));
                };
                let src_k = cx.shape(src)[1] / d;
                let config = ew::modulation_config(f, k, d, src_k).map_err(&err)?;
                let params = Params::Modulation(ew::ModulationParams {
                    src: cx.f32(src, "modulation source")? as *const f32,
                    table: cx.f16(table, "modulation table")? as *const u16,
                    out: cx.f32(y, "modulation")?,
                    frames: f as i32,
                    k: k as i32,
                    d: d as i32,
                    src_k: src_k as i32,
                });
                out.push(launch_step(
                    label,
                    "elementwise",
                    ew::KERNEL_MODULATION,
                    config,
                    params,
                ));
            }
            Op::LayerNorm { x, out: y } | Op::AdaLn { x, out: y, .. } => {
                let (rows, d) = cx.dims2(x)?;
                let layout = match *op {
                    Op::AdaLn {
                        mods, shift, scale, ..
                    } => Some((
                        cx.f32(mods, "modulation")? as *const f32,
                        adaln::ModLayout {
                            frames: m.latent_frames,
                            mod_k: cx.shape(mods)[1],
                            shift,
                            scale,
                            tokens: m.tokens(),
                            tokens_per_frame: m.tokens_per_frame(),
                        },
                    )),
                    _ => None,
                };
                let launch =
                    adaln::config(rows, d, layout.as_ref().map(|(_, l)| l)).map_err(&err)?;
                let params = adaln::params(
                    cx.f32(x, "residual stream")? as *const f32,
                    cx.f16(y, "normalised")?,
                    rows,
                    d,
                    layout.as_ref().map(|(p, l)| (*p, l)),
                );
                out.push(launch_step(
                    label,
                    "adaln",
                    launch.kernel,
                    launch.config,
                    Params::AdaLn(params),
                ));
            }
            Op::HeadRmsNorm {
                x,
                offset,
                heads,
                gain,
            } => {
                if heads != m.heads || cx.shape(gain) != [m.head_dim()] {
                    return Err(Error::Invalid(format!(
                        "{label}: only the model's {} heads of {} can be fused into attention",
                        m.heads,
                        m.head_dim()
                    )));
                }
                norms.insert((x, offset), gain);
            }
            Op::WindowAttention {
                qkv,
                out: o,
                heads,
                window,
                shift,
            } => {
                let d = m.dim;
                let (gq, gk) = match (norms.remove(&(qkv, 0)), norms.remove(&(qkv, d))) {
                    (Some(q), Some(k)) => (q, k),
                    _ => {
                        return Err(Error::Invalid(format!(
                            "{label}: the window-attention kernel fuses the q and k norms; \
                             both must precede it"
                        )))
                    }
                };
                let shape = attention::WindowShape {
                    batch: g.batch,
                    grid: m.token_grid(),
                    window,
                    shift,
                    heads,
                    head_dim: m.head_dim(),
                };
                let attention::AttnLaunch { kernel, config } =
                    attention::window_config(&shape).map_err(&err)?;
                let [ft, ht, wt] = shape.grid;
                let params = attention::AttnWindowParams {
                    qkv: cx.f16(qkv, "qkv")? as *const u16,
                    gq: cx.f16(gq, "q norm")? as *const u16,
                    gk: cx.f16(gk, "k norm")? as *const u16,
                    out: cx.f16(o, "attention output")?,
                    ft: ft as i32,
                    ht: ht as i32,
                    wt: wt as i32,
                    fw: window[0] as i32,
                    hw: window[1] as i32,
                    ww: window[2] as i32,
                    sf: shift[0] as i32,
                    sh: shift[1] as i32,
                    sw: shift[2] as i32,
                    heads: heads as i32,
                };
                out.push(launch_step(
                    label,
                    "attention",
                    kernel,
                    config,
                    Params::WindowAttention(params),
                ));
            }
            Op::CrossAttention {
                q,
                kv,
                mask,
                out: o,
                heads,
            } => {
                let gq = norms.remove(&(q, 0)).ok_or_else(|| {
                    Error::Invalid(format!("{label}: the q norm must precede cross-attention"))
                })?;
                let gk = prompt_norms
                    .and_then(|p| p.get(&(kv, 0)))
                    .copied()
                    .ok_or_else(|| {
                        Error::Invalid(format!(
                            "{label}: the prompt list must norm the keys of `{}`",
                            cx.name(kv)
                        ))
                    })?;
                let shape = attention::CrossShape {
                    batch: g.batch,
                    tokens: m.tokens(),
                    text_len: m.text_len,
                    heads,
                    head_dim: m.head_dim(),
                };
                let attention::AttnLaunch { kernel, config } =
                    attention::cross_config(&shape).map_err(&err)?;
                let params = attention::AttnCrossParams {
                    q: cx.f16(q, "cross q")? as *const u16,
                    kv: cx.f16(kv, "cross kv")? as *const u16,
                    mask: cx.f32(mask, "text mask")? as *const f32,
                    gq: cx.f16(gq, "q norm")? as *const u16,
                    gk: cx.f16(gk, "k norm")? as *const u16,
                    out: cx.f16(o, "attention output")?,
                    tokens: m.tokens() as i32,
                    text_len: m.text_len as i32,
                    heads: heads as i32,
                };
                out.push(launch_step(
                    label,
                    "attention",
                    kernel,
                    config,
                    Params::CrossAttention(params),
                ));
            }
            Op::Unpatchify { x, out: y } => {
                let [f, c, h, w] = latent_shape(m);
                let batch = g.batch;
                let (target, guidance, used) =
                    match next.filter(|_| fused_with_previous(ops, i + 1)) {
                        Some(&Op::Guidance { v, scale, out: z }) if v == y => (z, scale, 2),
                        _ => (y, 1.0, 1),
                    };
                let combine = used == 2;
                let config = ew::unpatchify_config(f, c, h, w, batch, combine).map_err(&err)?;
                let params = Params::Unpatchify(ew::UnpatchifyParams {
                    x: cx.f32(x, "model output tokens")? as *const f32,
                    out: cx.f32(target, "velocity")?,
                    frames: f as i32,
                    c: c as i32,
                    h: h as i32,
                    w: w as i32,
                    batch: batch as i32,
                    combine: combine as i32,
                    guidance,
                });
                let label = if combine {
                    format!("{label} + {}", describe(cx, &ops[i + 1]))
                } else {
                    label
                };
                out.push(launch_step(
                    label,
                    "elementwise",
                    ew::KERNEL_UNPATCHIFY,
                    config,
                    params,
                ));
                i += used;
                continue;
            }
            Op::GatedResidual { .. }
            | Op::Residual { .. }
            | Op::SwiGlu { .. }
            | Op::Guidance { .. } => {
                return Err(Error::Invalid(format!(
                    "{label}: the GPU computes this op only fused with the op before it \
                     (a linear layer, or unpatchify for guidance)"
                )));
            }
        }
        i += 1;
    }
    if !ops.is_empty() {
        tag(&mut out[tagged..], ops.len() - 1);
    }
    Ok(out)
}

fn latent_shape(m: &crate::model::ModelConfig) -> [usize; 4] {
    [
        m.latent_frames,
        m.latent_channels,
        m.latent_height,
        m.latent_width,
    ]
}

/// `Kind(output name)` for labels.
fn describe(cx: &Ctx, op: &Op) -> String {
    let kind = crate::model::plan::op_kind(op);
    format!("{kind} -> `{}`", cx.name(op.output()))
}
