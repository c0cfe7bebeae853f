//! The Wan family's attention on compute capability 9.0: each `attn_kvcache_d128` launch of
//! a lowered call list becomes the sm_90a FlashAttention-3-style `attn_sm90_kvcache_d128`
//! (`kernels/cuda/attention_sm90.cu`: TMA, mbarrier ring, wgmma) over the same buffers and
//! frame table, with its two tensor maps encoded by the device, as `step::select_gemm` does
//! for the GEMMs. Every other device, and the dh = 16 entry (wan-tiny), keep the mma.sync
//! kernel.

use streamdit_kernels::{attention_sm90, wan_attention};

use super::step::{Params, Step};
use crate::backend::cuda::device::{backend_error, Device};
use crate::error::Result;

/// Swaps the KV-cache attention launches of `steps` for the sm_90a kernel on a device of
/// compute capability 9.0; `cache_slots` is the number of frame slots of each block's cache
/// (the Wan config's window), which bounds the cache's tensor map.
pub fn select_attention<D: Device>(dev: &D, cache_slots: usize, steps: &mut [Step]) -> Result<()> {
    if dev.compute_capability() != (9, 0) {
        return Ok(());
    }
    for step in steps {
        let Step::Launch {
            label,
            module,
            kernel_name,
            config,
            params,
            ..
        } = step
        else {
            continue;
        };
        let Params::AttnKvCache(p) = *params else {
            continue;
        };
        if *kernel_name != wan_attention::KERNEL_KVCACHE_D128 {
            continue;
        }
        let fail = |e: String| backend_error(dev.backend(), label.clone(), e);
        let shape = wan_attention::KvCacheShape {
            tokens: p.tokens as usize,
            frame_tokens: p.frame_tokens as usize,
            frames: p.frames as usize,
            heads: p.heads as usize,
            head_dim: 128,
            cache_slots,
        };
        let buffers = attention_sm90::Buffers {
            q: p.q,
            cache: p.cache,
            frame_slots: p.frame_slots,
            out: p.out,
        };
        let encode = |t: &streamdit_kernels::tma::Tiled| {
            dev.encode_tensor_map(t).map_err(|e| e.to_string())
        };
        let sm90 = attention_sm90::params(&shape, &buffers, encode).map_err(fail)?;
        let (kernel, launch) = attention_sm90::config(&shape).map_err(fail)?;
        *config = launch;
        *module = "attention_sm90";
        *kernel_name = kernel;
        *params = Params::AttnSm90(sm90);
    }
    Ok(())
}
