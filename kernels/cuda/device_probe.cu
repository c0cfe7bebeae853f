// Probe for the CUDA backend's device layer (tests/cuda_device.rs): y = alpha * x + b with
// `alpha` read from device memory, the way every per-step value of the streaming step graph
// is read. A graph captured once and replayed after `alpha` and `x` were rewritten must see
// the new values; a graph that baked them would not.
#include "common/ptx.cuh"

struct AxpbProbeParams {
    const float* alpha;  // (1) per-step scalar
    const float* x;      // (n)
    const float* b;      // (n)
    float* y;            // (n) y[i] = fma(alpha, x[i], b[i]), one rounding on every target
    int n;
};

extern "C" __global__ void device_probe_axpb(AxpbProbeParams p) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < p.n) p.y[i] = __fmaf_rn(p.alpha[0], p.x[i], p.b[i]);
}
EMU_REGISTER_KERNEL(device_probe_axpb, AxpbProbeParams)
