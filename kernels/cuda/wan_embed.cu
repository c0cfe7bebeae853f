// Wan2.1's sinusoidal timestep features (docs/wan.md section 2.2), any `freq_dim`:
//
//   wan_timestep_features   t f32 [frames] (0..1000 scale, device memory) ->
//                           out f16 [frames, 2 half] = [cos(t w_k), sin(t w_k)],
//                           w_k = 10000^(-k / half), k < half (cos first, then sin)
//
// elementwise.cu's timestep_features is StreamDiT's (128 frequencies of 1000 tau); Wan-1.3B's
// freq_dim = 256 matches it, wan-tiny's 16 does not, and Wan feeds t itself. As there, the
// argument and the trig are f64 (Wan's sinusoidal_embedding_1d is f64; t w_0 reaches 1000
// rad), rounded to f32 then f16. Contract (kernels/src/wan_embed.rs): frames >= 1,
// half >= 1. One thread per (frame, k): frames * half items, a grid-stride loop.
#include <cuda_fp16.h>
#include <math.h>
#include <stdint.h>

#include "common/ptx.cuh"

struct WanTimestepParams {
    const float* t;  // (frames) f32 timesteps, rewritten before every graph replay
    __half* out;     // (frames, 2 half) f16
    int frames;
    int half;        // freq_dim / 2
};

extern "C" __global__ void __launch_bounds__(256) wan_timestep_features(WanTimestepParams p) {
    constexpr double kLn10000 = 9.210340371976184;  // ln(10000) in f64
    const size_t items = static_cast<size_t>(p.frames) * p.half;
    const size_t stride = static_cast<size_t>(gridDim.x) * blockDim.x;
    for (size_t it = static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x; it < items; it += stride) {
        const int f = static_cast<int>(it / p.half);
        const int k = static_cast<int>(it % p.half);
        const double w = exp(-kLn10000 * static_cast<double>(k) / static_cast<double>(p.half));
        const double a = static_cast<double>(p.t[f]) * w;
        __half* row = p.out + static_cast<size_t>(f) * 2 * p.half;
        row[k] = __float2half_rn(static_cast<float>(cos(a)));
        row[p.half + k] = __float2half_rn(static_cast<float>(sin(a)));
    }
}
EMU_REGISTER_KERNEL(wan_timestep_features, WanTimestepParams)
