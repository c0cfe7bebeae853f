//! Lowered lists as data: the launches and copies of a list ([`Step`]), each kernel's
//! parameter struct ([`Params`]), looking kernels up and running a list on a device, and
//! the two device steps outside the model graph (the Euler update and the noise fill).

use streamdit_kernels::gemm_sm90::{self, Buffers, Epilogue};
use streamdit_kernels::{
    adaln, attention, attention_sm90, attention_sm90_window, conv, elementwise as ew, gemm, vae,
    video, wan_attention,
    wan_embed,
    wan_qk,
};

use crate::backend::cuda::device::{
    backend_error, Device, DeviceBuffer, GraphId, Kernel, LaunchConfig,
};
use crate::backend::cuda::limits;
use crate::error::{Error, Result};
use crate::model::graph::TensorId;

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
// The sm_90a GEMM's struct carries two 128-byte tensor maps (320 bytes, the others at most
// 72): a lowered list holds a few hundred steps, built once, so boxing it would save a few
// tens of KiB and cost `Copy`.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Copy, Debug)]
pub enum Params {
    GemmBiasF16(gemm::GemmBiasF16Params),
    GemmBiasF32(gemm::GemmBiasF32Params),
    GemmGatedResidual(gemm::GemmGatedResidualParams),
    GemmSwiglu(gemm::GemmSwigluParams),
    /// Any of the four above on the sm_90a GEMM ([`select_gemm`]).
    GemmSm90(gemm_sm90::GemmSm90Params),
    AdaLn(adaln::AdaLnParams),
    Patchify(ew::PatchifyParams),
    AddPositions(ew::AddPositionsParams),
    TimestepFeatures(ew::TimestepFeaturesParams),
    Activation(ew::ActivationParams),
    Modulation(ew::ModulationParams),
    Unpatchify(ew::UnpatchifyParams),
    WindowAttention(attention::AttnWindowParams),
    CrossAttention(attention::AttnCrossParams),
    Conv3x3(conv::Conv3x3Params),
    ConvT3(conv::ConvT3Params),
    Conv1x1(conv::Conv1x1Params),
    Conv3x3S2(conv::Conv3x3S2Params),
    ConvTStride(conv::ConvTStrideParams),
    GroupNormStats(conv::GroupNormStatsParams),
    GroupNormFinalize(conv::GroupNormFinalizeParams),
    GroupNormApply(conv::GroupNormApplyParams),
    WanQkvRope(wan_qk::WanQkvRopeParams),
    WanRmsRows(wan_qk::WanRmsRowsParams),
    WanTimestep(wan_embed::WanTimestepParams),
    AttnKvCache(wan_attention::AttnKvCacheParams),
    /// `AttnKvCache` (dh = 128) on the sm_90a attention (`lower::wan_sm90`).
    AttnSm90(attention_sm90::AttnSm90Params),
    /// `WindowAttention` with the norms on the sm_90a window attention (`lower::window_sm90`).
    AttnSm90Window(attention_sm90_window::AttnSm90WindowParams),
    VideoWithPast(video::VideoWithPastParams),
    VideoShuffle(video::VideoShuffleParams),
    VideoMap(video::VideoMapParams),
    Conv3d(conv::Conv3dParams),
    RmsNormChannels(vae::RmsNormChannelsParams),
    SoftmaxRows(vae::SoftmaxRowsParams),
}

// SAFETY: as for `DeviceParams`: the structs carry device addresses the host never
// dereferences; the memory belongs to the device object that travels with the backend.
unsafe impl Send for Params {}

/// One device operation of a lowered list.
// `Launch` holds the (possibly 320-byte) `Params` inline; see there.
#[allow(clippy::large_enum_variant)]
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

    pub(super) fn set_trace(&mut self, t: Trace) {
        match self {
            Step::Launch { trace, .. } | Step::Copy { trace, .. } => *trace = t,
        }
    }
}

/// The lowered prompt and call lists, and the norm + GEMM pairs of each that a device with
/// the prologue GEMM folds ([`super::fold_prologues`], done by [`resolve_folding`]).
#[derive(Debug)]
pub struct Lowered {
    pub prompt: Vec<Step>,
    pub call: Vec<Step>,
    pub prompt_folds: Vec<super::PrologueFold>,
    pub call_folds: Vec<super::PrologueFold>,
}

/// Makes every launch fit the device's shared memory per block (a narrower variant, or an
/// error naming the kernel, the bytes and the limit: [`limits::fit_step`]), then looks every
/// kernel up on `dev` (loading its module), so running a list does no lookups.
pub fn resolve<D: Device>(dev: &mut D, steps: Vec<Step>) -> Result<Vec<Step>> {
    resolve_folding(dev, steps, &[], None)
}

/// [`resolve`] after folding the recorded norm + GEMM pairs into the prologue GEMM where the
/// device has it ([`super::fold_prologues`]; `stats`: the buffer the gated-residual GEMMs
/// leave the row statistics in, or none for a statistics pass before each).
pub fn resolve_folding<D: Device>(
    dev: &mut D,
    mut steps: Vec<Step>,
    folds: &[super::PrologueFold],
    stats: Option<super::prologue::StatsBuffer>,
) -> Result<Vec<Step>> {
    let producers = super::fold_prologues(dev, &mut steps, folds, stats)?;
    for step in &mut steps {
        select_gemm(dev, step)?;
    }
    super::prologue::leave_statistics(&mut steps, &producers)?;
    let limit = dev.shared_memory_limit();
    for step in &mut steps {
        select_gemm(dev, step)?;
        super::window_sm90::select_window_attention(dev, step)?;
        limits::fit_step(step, limit)
            .map_err(|e| backend_error(dev.backend(), "fit shared memory", e))?;
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

/// The GEMM for the device: on compute capability 9.0 a launch of the mma.sync GEMM
/// (`gemm.cu`) becomes the same product and epilogue on the sm_90a warp-specialised GEMM
/// (`gemm_sm90.cu`: TMA, mbarrier ring, wgmma), with its two tensor maps encoded by the
/// device over the same buffers (`gemm_bias_gelu_f16`, which shares the bias struct, keeps
/// its GELU epilogue); any other step, or any other device, is left as it is.
pub fn select_gemm<D: Device>(dev: &D, step: &mut Step) -> Result<()> {
    if dev.compute_capability() != (9, 0) {
        return Ok(());
    }
    let Step::Launch {
        label,
        module,
        kernel_name,
        config,
        params,
        ..
    } = step
    else {
        return Ok(());
    };
    let none = Buffers {
        a: std::ptr::null(),
        w: std::ptr::null(),
        bias: std::ptr::null(),
        out: std::ptr::null_mut(),
        h: std::ptr::null_mut(),
        mods: std::ptr::null(),
    };
    let dims = |m: i32, n: i32, k: i32| (m as usize, n as usize, k as usize);
    let (epi, (m, n, k), gate, buffers) = match *params {
        // The Wan family's FFN up and text MLP launch `gemm_bias_gelu_f16` with the same
        // struct: its epilogue is chosen by the kernel's name.
        Params::GemmBiasF16(p) => (
            if *kernel_name == gemm::KERNEL_BIAS_GELU_F16 {
                Epilogue::BiasGeluF16
            } else {
                Epilogue::BiasF16
            },
            dims(p.m, p.n, p.k),
            None,
            Buffers {
                a: p.a,
                w: p.w,
                bias: p.bias,
                out: p.out.cast(),
                ..none
            },
        ),
        Params::GemmBiasF32(p) => (
            Epilogue::BiasF32,
            dims(p.m, p.n, p.k),
            None,
            Buffers {
                a: p.a,
                w: p.w,
                bias: p.bias,
                out: p.out.cast(),
                ..none
            },
        ),
        Params::GemmGatedResidual(p) => (
            Epilogue::GatedResidual,
            dims(p.m, p.n, p.k),
            (!p.mods.is_null()).then(|| gemm::GateLayout {
                frames: (p.tokens / p.tokens_per_frame.max(1)) as usize,
                mod_k: p.mod_k as usize,
                gate: p.gate as usize,
                tokens: p.tokens as usize,
                tokens_per_frame: p.tokens_per_frame as usize,
            }),
            Buffers {
                a: p.a,
                w: p.w,
                bias: p.bias,
                h: p.h,
                mods: p.mods,
                ..none
            },
        ),
        Params::GemmSwiglu(p) => (
            Epilogue::Swiglu,
            dims(p.m, p.dff, p.k),
            None,
            Buffers {
                a: p.a,
                w: p.w13,
                out: p.out.cast(),
                ..none
            },
        ),
        _ => return Ok(()),
    };
    let fail = |e: String| backend_error(dev.backend(), label.clone(), e);
    let encode = |t: &streamdit_kernels::tma::Tiled| {
        dev.encode_tensor_map(t).map_err(|e| e.to_string())
    };
    let p = gemm_sm90::params(epi, m, n, k, gate.as_ref(), &buffers, encode).map_err(fail)?;
    // Persistent where the SM count is known: at most one CTA per SM, each walking tiles.
    *config = match dev.multiprocessors() {
        Some(sms) => gemm_sm90::config_persistent(epi, m, n, k, gate.as_ref(), sms),
        None => gemm_sm90::config(epi, m, n, k, gate.as_ref()),
    }
    .map_err(fail)?;
    *module = "gemm_sm90";
    *kernel_name = epi.kernel();
    *params = Params::GemmSm90(p);
    Ok(())
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
        GemmSm90,
        AdaLn,
        Patchify,
        AddPositions,
        TimestepFeatures,
        Activation,
        Modulation,
        Unpatchify,
        WindowAttention,
        CrossAttention,
        Conv3x3,
        ConvT3,
        Conv1x1,
        Conv3x3S2,
        ConvTStride,
        GroupNormStats,
        GroupNormFinalize,
        GroupNormApply,
        WanQkvRope,
        WanRmsRows,
        WanTimestep,
        AttnKvCache,
        AttnSm90,
        AttnSm90Window,
        VideoWithPast,
        VideoShuffle,
        VideoMap,
        Conv3d,
        RmsNormChannels,
        SoftmaxRows
    )
}

/// Runs a resolved list as one device graph: captured into `graph` at its first run and
/// replayed after (the decoders' and encoders' per-chunk lists); launch by launch when
/// `use_graphs` is off.
pub fn run_captured<D: Device>(
    dev: &mut D,
    mem: DeviceBuffer<u8>,
    steps: &[Step],
    graph: &mut Option<GraphId>,
    use_graphs: bool,
) -> Result<()> {
    if !use_graphs {
        return run(dev, mem, steps);
    }
    let gid = match *graph {
        Some(gid) => gid,
        None => {
            dev.begin_capture()?;
            let ran = run(dev, mem, steps);
            let gid = dev.end_capture()?;
            ran?;
            dev.upload(gid)?;
            *graph = Some(gid);
            gid
        }
    };
    dev.replay(gid)
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

pub(super) fn kernel_err(label: impl Into<String>) -> impl Fn(String) -> Error {
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

pub(crate) fn launch_step(
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
