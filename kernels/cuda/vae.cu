// The Wan VAE decoder's kernels besides the convolutions (docs/wan_vae.md; the convolutions
// are conv.cu's implicit GEMMs):
//
//   rms_norm_channels_f16  per pixel over its C channels (the VAE's RMS_norm, F.normalize
//                          times sqrt(C) times gamma):
//                          out = [SiLU](x / max(||x||_2, 1e-12) * sqrt(C) * gamma[c])
//                          f16 in and out, f32 math. One warp per pixel: lane l holds the
//                          16-byte chunks l and l + 32 (8 channels each) in registers, the
//                          sum of squares is a butterfly over the warp, so the pixel is read
//                          once and written once.
//   softmax_rows_f16       the mid block's attention softmax, one row of scores per CTA:
//                          p[r, j] = exp(scale (s[r, j] - max_j s[r, :])) / sum (j < cols),
//                          p[r, j] = 0 for cols <= j < ld (padding keys), s f32, p f16. The
//                          VAE's per-frame attention (head dim 384) runs as gemm.cu GEMMs
//                          around it: S = Q K^T (gemm_bias_f32), P = softmax_rows(S),
//                          O = P V (gemm_bias_f16 with W = V^T); docs/wan_vae.md says why.
//
// Shape contract (kernels/src/vae.rs): rms: C % 8 == 0, 8 <= C <= 512, pixels >= 1;
// softmax: ld % 8 == 0 (16-byte rows, as the GEMMs write them), 1 <= cols <= ld, rows >= 1.
#include <cuda_fp16.h>
#include <stdint.h>

#include "common/ptx.cuh"
#include "common/vec8.cuh"

#if PTX_EMU
#define VAE_UNROLL
#else
#define VAE_UNROLL _Pragma("unroll")
#endif

struct VaeTraits {
    static constexpr int kThreads = 256;
    static constexpr int kWarps = kThreads / 32;
    static constexpr int kChunk = 8;                 // channels per 16-byte chunk
    static constexpr int kChunksPerLane = 2;         // C <= 32 * 2 * 8 = 512
    static constexpr float kRmsFloor = 1e-12f;       // F.normalize's eps on the norm
};

// ---------------------------------------------------------------------------------------
// RMS_norm over channels (+ SiLU). Grid: x = ceil(pixels / 8), 256 threads (a warp a pixel).
// ---------------------------------------------------------------------------------------
struct RmsNormChannelsParams {
    const __half* x;      // (pixels, c) f16
    const __half* gamma;  // (c) f16
    __half* out;          // (pixels, c) f16; may alias x (each pixel read before written)
    int pixels;
    int c;
    int silu;  // 1: out = SiLU(norm(x))
};

extern "C" __global__ void __launch_bounds__(VaeTraits::kThreads) rms_norm_channels_f16(RmsNormChannelsParams p) {
    using T = VaeTraits;
    const int lane = threadIdx.x % 32;
    const int pixel = blockIdx.x * T::kWarps + threadIdx.x / 32;
    if (pixel >= p.pixels) return;  // a whole warp leaves together
    const int chunks = p.c / T::kChunk;
    const __half* xp = p.x + static_cast<size_t>(pixel) * p.c;
    __half* op = p.out + static_cast<size_t>(pixel) * p.c;
    float v[T::kChunksPerLane][T::kChunk];
    float ss = 0.0f;
VAE_UNROLL
    for (int i = 0; i < T::kChunksPerLane; ++i) {
        const int j = lane + 32 * i;
        if (j < chunks) {
            vec8::load_f16(v[i], xp + j * T::kChunk);
VAE_UNROLL
            for (int e = 0; e < T::kChunk; ++e) ss += v[i][e] * v[i][e];
        }
    }
VAE_UNROLL
    for (int o = 16; o > 0; o >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, o);
    const float scale = sqrtf(static_cast<float>(p.c)) / fmaxf(sqrtf(ss), T::kRmsFloor);
VAE_UNROLL
    for (int i = 0; i < T::kChunksPerLane; ++i) {
        const int j = lane + 32 * i;
        if (j < chunks) {
            float g[T::kChunk];
            vec8::load_f16(g, p.gamma + j * T::kChunk);
VAE_UNROLL
            for (int e = 0; e < T::kChunk; ++e) {
                const float y = v[i][e] * scale * g[e];
                v[i][e] = p.silu ? y / (1.0f + __expf(-y)) : y;
            }
            vec8::store_f16(op + j * T::kChunk, v[i]);
        }
    }
}
EMU_REGISTER_KERNEL(rms_norm_channels_f16, RmsNormChannelsParams)

// ---------------------------------------------------------------------------------------
// Row softmax of f32 scores into f16 probabilities. Grid: x = rows, 256 threads. Three
// sweeps over the row (max, sum, write); the row (25 KB at 6240 keys) stays in L1/L2 after
// the first. Each thread owns 4-column groups tid, tid + 256, ... (16-byte loads).
// ---------------------------------------------------------------------------------------
struct SoftmaxRowsParams {
    const float* s;  // (rows, ld) f32 scores
    __half* p;       // (rows, ld) f16 probabilities
    int rows;
    int cols;     // valid keys; columns [cols, ld) are padding and get 0
    int ld;       // row length (elements), a multiple of 8
    float scale;  // applied to the scores (1 / sqrt(head dim))
};

// The block-wide reduction (max when kMax, else sum) of v; every thread gets the result.
// red is 8 floats of shared memory; the trailing barrier lets the caller reuse it.
template <bool kMax>
__device__ __forceinline__ float block_reduce(float v, float* red) {
    const int lane = threadIdx.x % 32;
    const int warp = threadIdx.x / 32;
VAE_UNROLL
    for (int o = 16; o > 0; o >>= 1) {
        const float u = __shfl_xor_sync(0xffffffffu, v, o);
        v = kMax ? fmaxf(v, u) : v + u;
    }
    if (lane == 0) red[warp] = v;
    __syncthreads();  // the warps' partials are in red
    float r = red[0];
VAE_UNROLL
    for (int w = 1; w < VaeTraits::kWarps; ++w) r = kMax ? fmaxf(r, red[w]) : r + red[w];
    __syncthreads();  // every thread has read red
    return r;
}

extern "C" __global__ void __launch_bounds__(VaeTraits::kThreads) softmax_rows_f16(SoftmaxRowsParams p) {
    using T = VaeTraits;
    __shared__ float red[T::kWarps];
    const float* s = p.s + static_cast<size_t>(blockIdx.x) * p.ld;
    __half* out = p.p + static_cast<size_t>(blockIdx.x) * p.ld;
    const int groups = p.ld / 4;
    const int valid_groups = (p.cols + 3) / 4;

    float m = -INFINITY;
    for (int g = threadIdx.x; g < valid_groups; g += T::kThreads) {
        const float4 v = *reinterpret_cast<const float4*>(s + 4 * g);
        const float e[4] = {v.x, v.y, v.z, v.w};
VAE_UNROLL
        for (int i = 0; i < 4; ++i)
            if (4 * g + i < p.cols) m = fmaxf(m, e[i]);
    }
    m = block_reduce<true>(m, red);  // finite: cols >= 1 and the scores are finite

    float sum = 0.0f;
    for (int g = threadIdx.x; g < valid_groups; g += T::kThreads) {
        const float4 v = *reinterpret_cast<const float4*>(s + 4 * g);
        const float e[4] = {v.x, v.y, v.z, v.w};
VAE_UNROLL
        for (int i = 0; i < 4; ++i)
            if (4 * g + i < p.cols) sum += expf((e[i] - m) * p.scale);
    }
    const float inv = 1.0f / block_reduce<false>(sum, red);

    for (int g = threadIdx.x; g < groups; g += T::kThreads) {
        float y[4] = {0.0f, 0.0f, 0.0f, 0.0f};
        if (g < valid_groups) {
            const float4 v = *reinterpret_cast<const float4*>(s + 4 * g);
            const float e[4] = {v.x, v.y, v.z, v.w};
VAE_UNROLL
            for (int i = 0; i < 4; ++i)
                if (4 * g + i < p.cols) y[i] = expf((e[i] - m) * p.scale) * inv;
        }
        __half2* dst = reinterpret_cast<__half2*>(out + 4 * g);
        dst[0] = __floats2half2_rn(y[0], y[1]);
        dst[1] = __floats2half2_rn(y[2], y[3]);
    }
}
EMU_REGISTER_KERNEL(softmax_rows_f16, SoftmaxRowsParams)
