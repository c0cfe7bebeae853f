//! A roofline prediction: each op's time is the larger of its FLOPs at the GPU's peak
//! tensor-core rate and its bytes at its DRAM bandwidth.

use super::{GraphCost, OpCost};
use crate::error::{Error, Result};
use crate::model::profile::Profile;

/// A GPU's peak numbers from its vendor spec sheet.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GpuSpec {
    /// The `--gpu` key (`h100`, ...).
    pub key: &'static str,
    pub name: &'static str,
    /// Dense FP16 tensor-core TFLOP/s with FP32 accumulation (no 2:4 sparsity).
    pub fp16_tflops: f64,
    /// DRAM bandwidth, GB/s (10^9 bytes).
    pub hbm_gbps: f64,
    /// Device memory as the spec sheet states it.
    pub memory_gib: f64,
    /// Compute capability (major, minor), from NVIDIA's CUDA GPUs list: which kernels the
    /// CUDA backend picks (the sm_90a path on 9.x).
    pub compute_capability: (u32, u32),
}

impl GpuSpec {
    /// H100 SXM5: NVIDIA H100 Tensor Core GPU datasheet, "FP16 Tensor Core 1,979 TFLOPS"
    /// with sparsity (989 dense), 3.35 TB/s, 80 GB.
    pub const H100: GpuSpec = GpuSpec {
        key: "h100",
        name: "NVIDIA H100 SXM5 80GB",
        fp16_tflops: 989.0,
        hbm_gbps: 3350.0,
        memory_gib: 80.0,
        compute_capability: (9, 0),
    };
    /// H200 SXM: NVIDIA H200 Tensor Core GPU datasheet, FP16 Tensor Core 1,979 TFLOPS with
    /// sparsity (989 dense), 4.8 TB/s, 141 GB.
    pub const H200: GpuSpec = GpuSpec {
        key: "h200",
        name: "NVIDIA H200 SXM 141GB",
        fp16_tflops: 989.0,
        hbm_gbps: 4800.0,
        memory_gib: 141.0,
        compute_capability: (9, 0),
    };
    /// A100 SXM4 80GB: NVIDIA A100 Tensor Core GPU datasheet, FP16 Tensor Core 312 TFLOPS
    /// (624 with sparsity), 2,039 GB/s, 80 GB.
    pub const A100: GpuSpec = GpuSpec {
        key: "a100",
        name: "NVIDIA A100 SXM4 80GB",
        fp16_tflops: 312.0,
        hbm_gbps: 2039.0,
        memory_gib: 80.0,
        compute_capability: (8, 0),
    };
    /// L40S: NVIDIA L40S datasheet, FP16 Tensor Core 362.05 TFLOPS (733 with sparsity; the
    /// same with FP32 accumulation), 864 GB/s, 48 GB GDDR6.
    pub const L40S: GpuSpec = GpuSpec {
        key: "l40s",
        name: "NVIDIA L40S 48GB",
        fp16_tflops: 362.05,
        hbm_gbps: 864.0,
        memory_gib: 48.0,
        compute_capability: (8, 9),
    };
    /// GeForce RTX 4090: NVIDIA Ada GPU architecture whitepaper (appendix A), peak FP16
    /// tensor TFLOPS with FP32 accumulate 165.2 (330.4 with sparsity; 330.3 dense with FP16
    /// accumulate, which these kernels do not use), 1,008 GB/s, 24 GB GDDR6X.
    pub const RTX4090: GpuSpec = GpuSpec {
        key: "rtx4090",
        name: "NVIDIA GeForce RTX 4090",
        fp16_tflops: 165.2,
        hbm_gbps: 1008.0,
        memory_gib: 24.0,
        compute_capability: (8, 9),
    };

    /// Every GPU `plan` knows.
    pub const ALL: [GpuSpec; 5] = [
        GpuSpec::H100,
        GpuSpec::H200,
        GpuSpec::A100,
        GpuSpec::L40S,
        GpuSpec::RTX4090,
    ];

    /// The GPU with `key` (`h100`, `h200`, `a100`, `l40s`, `rtx4090`).
    pub fn by_key(key: &str) -> Result<GpuSpec> {
        GpuSpec::ALL
            .into_iter()
            .find(|g| g.key.eq_ignore_ascii_case(key))
            .ok_or_else(|| {
                let keys: Vec<&str> = GpuSpec::ALL.iter().map(|g| g.key).collect();
                Error::Invalid(format!(
                    "unknown GPU `{key}`: expected one of {}",
                    keys.join(", ")
                ))
            })
    }

    /// Device memory in bytes.
    pub fn memory_bytes(&self) -> u64 {
        (self.memory_gib * (1u64 << 30) as f64) as u64
    }

    /// Roofline time of one op: `max(flops / peak, bytes / bandwidth)`. Every op is held to
    /// the tensor-core peak; norms and elementwise ops are memory bound even against the
    /// far lower CUDA-core peak, so this never changes their time.
    pub fn op_time(&self, cost: &OpCost) -> OpTime {
        let compute = cost.flops as f64 / (self.fp16_tflops * 1e12);
        let memory = cost.bytes() as f64 / (self.hbm_gbps * 1e9);
        OpTime {
            seconds: compute.max(memory),
            bound: if compute >= memory && cost.flops > 0 {
                Bound::Compute
            } else {
                Bound::Memory
            },
        }
    }

    /// Roofline time of a list of ops run one after another.
    pub fn list_seconds(&self, ops: &[OpCost]) -> f64 {
        ops.iter().fold(0.0, |t, c| t + self.op_time(c).seconds)
    }
}

/// Which roof an op sits under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bound {
    Compute,
    Memory,
}

impl Bound {
    pub fn name(self) -> &'static str {
        match self {
            Bound::Compute => "compute",
            Bound::Memory => "memory",
        }
    }
}

/// An op's roofline time.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OpTime {
    pub seconds: f64,
    pub bound: Bound,
}

/// Video frames one model call produces in the steady state: a chunk of `c` latent frames,
/// `c * temporal_upsample` video frames, every `s` micro-steps (calls).
pub fn video_frames_per_call(profile: &Profile) -> f64 {
    profile.video.frames_per_chunk(profile.stream.chunk_frames) as f64
        / profile.stream.micro_steps as f64
}

/// The predicted time of one model call and the video frame rate it sustains, at the
/// roofline and at a fraction `efficiency` of it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Prediction {
    pub gpu: GpuSpec,
    pub video_frames_per_call: f64,
    pub seconds_per_call: f64,
    pub fps: f64,
    pub efficiency: f64,
    /// `seconds_per_call / efficiency`.
    pub seconds_per_call_at_efficiency: f64,
    pub fps_at_efficiency: f64,
}

impl Prediction {
    /// The sum of the call ops' roofline times (no overlap between ops, no launch gaps).
    /// `efficiency` must lie in `(0, 1]`.
    pub fn new(
        gpu: GpuSpec,
        cost: &GraphCost,
        video_frames_per_call: f64,
        efficiency: f64,
    ) -> Result<Prediction> {
        Prediction::of_ops(gpu, &cost.call.ops, video_frames_per_call, efficiency)
    }

    /// The same for any list of costs run one after another: a call's graph ops, or the
    /// device launches they fold into (`cost::launches`).
    pub fn of_ops(
        gpu: GpuSpec,
        ops: &[OpCost],
        video_frames_per_call: f64,
        efficiency: f64,
    ) -> Result<Prediction> {
        if !(efficiency > 0.0 && efficiency <= 1.0) {
            return Err(Error::Invalid(format!(
                "efficiency must lie in (0, 1], found {efficiency}"
            )));
        }
        let seconds = gpu.list_seconds(ops);
        Ok(Prediction {
            gpu,
            video_frames_per_call,
            seconds_per_call: seconds,
            fps: video_frames_per_call / seconds,
            efficiency,
            seconds_per_call_at_efficiency: seconds / efficiency,
            fps_at_efficiency: video_frames_per_call * efficiency / seconds,
        })
    }
}
