//! The two GEMM/attention kernel paths of a Hopper GPU as `plan` models them: each op's
//! time is the larger of its FLOPs at a stated fraction of the tensor-core peak and its
//! bytes at the DRAM bandwidth. The fractions are assumptions taken from public figures
//! (each path names its source), not measurements of this engine's kernels; `bench
//! --kernels` on a GPU measures the GEMMs.

use super::{GpuSpec, OpClass, OpCost};

/// A kernel path with the fractions of the dense FP16 tensor-core peak its GEMMs and its
/// attention reach.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct KernelPath {
    pub name: &'static str,
    /// Fraction of the peak the GEMMs reach.
    pub gemm_efficiency: f64,
    /// Fraction of the peak the attention reaches.
    pub attention_efficiency: f64,
    /// Where the fractions come from.
    pub source: &'static str,
}

impl KernelPath {
    /// The sm_80 kernels (`mma.sync`, `ldmatrix`, `cp.async`) on an H100.
    pub const MMA_SYNC: KernelPath = KernelPath {
        name: "mma.sync",
        gemm_efficiency: 350.0 / 989.0,
        attention_efficiency: 350.0 / 989.0,
        source: "mma.sync-only GEMMs reach about 300-400 TFLOP/s and FlashAttention-2 about 350 \
                 on an H100 (989 dense): the public figures quoted in issue 18",
    };
    /// The sm_90a kernels (TMA, mbarrier, `wgmma`) on an H100.
    pub const WGMMA: KernelPath = KernelPath {
        name: "wgmma",
        gemm_efficiency: 762.0 / 989.0,
        attention_efficiency: 565.0 / 989.0,
        source: "cuBLAS reaches 762 TFLOP/s at 8192^3 with wgmma and FlashAttention-3 about 565 \
                 at sequence 1k on an H100: the public figures quoted in issue 18",
    };
    /// Both paths, the sm_80 one first.
    pub const ALL: [KernelPath; 2] = [KernelPath::MMA_SYNC, KernelPath::WGMMA];

    /// The fraction of the tensor-core peak ops of `class` reach on this path; 1 for the
    /// classes that are memory bound at any compute rate (norms, elementwise, layout).
    pub fn efficiency(&self, class: OpClass) -> f64 {
        match class {
            OpClass::Gemm => self.gemm_efficiency,
            OpClass::Attention => self.attention_efficiency,
            OpClass::Norm | OpClass::Elementwise | OpClass::Layout => 1.0,
        }
    }

    /// One op's time on `gpu`: `max(flops / (peak * efficiency), bytes / bandwidth)`.
    pub fn op_seconds(&self, gpu: &GpuSpec, cost: &OpCost) -> f64 {
        let compute = cost.flops as f64 / (gpu.fp16_tflops * 1e12 * self.efficiency(cost.class));
        let memory = cost.bytes() as f64 / (gpu.hbm_gbps * 1e9);
        compute.max(memory)
    }

    /// A list of ops run one after another on `gpu`.
    pub fn list_seconds(&self, gpu: &GpuSpec, ops: &[OpCost]) -> f64 {
        ops.iter().map(|c| self.op_seconds(gpu, c)).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(flops: u64, bytes: u64, class: OpClass) -> OpCost {
        OpCost {
            flops,
            bytes_read: bytes,
            bytes_written: 0,
            class,
        }
    }

    /// A compute-bound GEMM takes 1/efficiency of its roofline time, a memory-bound norm
    /// its bytes at the bandwidth on both paths, and wgmma is the faster path.
    #[test]
    fn paths_scale_the_compute_roof_only() {
        let gpu = GpuSpec::H100;
        let gemm = op(989_000_000_000, 1000, OpClass::Gemm);
        let t = KernelPath::MMA_SYNC.op_seconds(&gpu, &gemm);
        assert!((t - 1e-3 * 989.0 / 350.0).abs() < 1e-9, "{t}");
        let norm = op(10, 3_350_000_000, OpClass::Norm);
        for p in KernelPath::ALL {
            assert!((p.op_seconds(&gpu, &norm) - 1e-3).abs() < 1e-12);
        }
        let attn = op(989_000_000_000, 1000, OpClass::Attention);
        let ops = [gemm, attn, norm];
        let (slow, fast) = (
            KernelPath::MMA_SYNC.list_seconds(&gpu, &ops),
            KernelPath::WGMMA.list_seconds(&gpu, &ops),
        );
        let want_fast = 1e-3 * (989.0 / 762.0 + 989.0 / 565.0 + 1.0);
        assert!((fast - want_fast).abs() < 1e-9, "{fast} vs {want_fast}");
        assert!(slow > fast);
    }
}
