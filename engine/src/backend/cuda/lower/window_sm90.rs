//! StreamDiT's window attention on compute capability 9.0: a launch of the mma.sync
//! `attn_window_d{64,128}` (`kernels/cuda/attention.cu`) becomes the sm_90a
//! FlashAttention-3-style `attn_sm90_window_d{64,128}` (`kernels/cuda/attention_sm90_window.cu`:
//! TMA, mbarrier ring, wgmma, the same packed tile list) over the same qkv, gains and output,
//! its tensor map encoded by the device, as `step::select_gemm` does for the GEMMs. Kept on the
//! mma.sync kernel: every other device, launches without the fused RMSNorm (the TAE decoder's
//! frame attention passes null gains) and shapes outside the sm_90a kernel's contract (a W
//! window or shift that is not a multiple of 8: `tiny`, `tests/profiles/small.toml`).

use streamdit_kernels::attention::{self, WindowShape};
use streamdit_kernels::attention_sm90_window as fa3w;

use super::step::{Params, Step};
use crate::backend::cuda::device::{backend_error, Device};
use crate::error::Result;

/// The window shape of a mma.sync window launch: the head dim from its entry point, the
/// batch from grid z (the parameter struct has no batch field).
fn shape_of(kernel_name: &str, batch: u32, p: &attention::AttnWindowParams) -> Option<WindowShape> {
    let head_dim = match kernel_name {
        attention::KERNEL_WINDOW_D64 => 64,
        attention::KERNEL_WINDOW_D128 => 128,
        _ => return None,
    };
    let u = |v: i32| usize::try_from(v).ok();
    Some(WindowShape {
        batch: batch as usize,
        grid: [u(p.ft)?, u(p.ht)?, u(p.wt)?],
        window: [u(p.fw)?, u(p.hw)?, u(p.ww)?],
        shift: [u(p.sf)?, u(p.sh)?, u(p.sw)?],
        heads: u(p.heads)?,
        head_dim,
    })
}

/// Swaps `step` for the sm_90a window attention when the device is compute capability 9.0
/// and the launch is inside that kernel's contract; anything else is left as it is.
pub fn select_window_attention<D: Device>(dev: &D, step: &mut Step) -> Result<()> {
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
    let Params::WindowAttention(p) = *params else {
        return Ok(());
    };
    let Some(shape) = shape_of(kernel_name, config.grid.z, &p) else {
        return Ok(());
    };
    if p.gq.is_null() || p.gk.is_null() || !fa3w::supports(&shape) {
        return Ok(());
    }
    let fail = |e: String| backend_error(dev.backend(), label.clone(), e);
    let buffers = fa3w::Buffers {
        qkv: p.qkv,
        gq: p.gq,
        gk: p.gk,
        out: p.out,
    };
    let encode =
        |t: &streamdit_kernels::tma::Tiled| dev.encode_tensor_map(t).map_err(|e| e.to_string());
    let sm90 = fa3w::params(&shape, &buffers, encode).map_err(fail)?;
    let (kernel, launch) = fa3w::config(&shape).map_err(fail)?;
    *config = launch;
    *module = "attention_sm90_window";
    *kernel_name = kernel;
    *params = Params::AttnSm90Window(sm90);
    Ok(())
}
