// Fused adaLN: out[r, :] = A(LN(x[r, :])) * (1 + mods[f, scale, :]) + mods[f, shift, :] in
// f16, with LN(v) = (v - mean(v)) / sqrt(var(v) + 1e-6) (biased variance) and f = (r %
// tokens) / tokens_per_frame the frame of row r; A(y) = y * weight + bias, the optional
// affine (f16 vectors, each may be null; Wan's norm3, docs/wan.md section 2.3). With mods ==
// null it is the plain LN(x) (the cross-attention's c = LN(h)), or with weight and bias the
// affine LayerNorm. x and mods are f32 (the residual stream and the
// per-frame modulation vectors), out is f16 (the next GEMM's A operand).
//
// One pass over x in global memory: each thread loads its 8-element chunks of the row with
// float4 loads into registers, the row's mean is reduced, then the centred variance
// sum((x - mean)^2) is reduced from the same registers (no second global read, and no
// E[x^2] - mean^2 cancellation when |mean| >> std), and each chunk is normalised, modulated
// and stored as one 16-byte f16 vector.
//
// Row statistics for a GEMM's LayerNorm prologue (gemm_sm90.cu, `ln` entries): the same two
// reductions, stored as out2[r] = (mean, sum((x - mean)^2)) (f32 pairs over the f16 output's
// space) instead of the normalised row: ln_stats_rows_warp and ln_stats_row_cta, the same
// configurations and parameters (mods, weight and bias unused).
//
// Entry points (kernels/src/adaln.rs picks one by D):
//   adaln_rows_warp  one warp per row, AdaLnTraits::kWarpRowsPerCta rows per CTA, for D <= 1024
//                    (<= 4 chunks per lane; shuffle reductions only, no barrier)
//   adaln_row_cta    one CTA per row, blockDim.x threads (a multiple of 32, at most 512,
//                    chosen by the config so each thread holds <= 2 chunks up to D = 8192 and
//                    <= 4 up to D = 16384), warp shuffles + one shared-memory step per
//                    reduction
//
// Shape contract (checked by kernels/src/adaln.rs): m >= 1, d % 8 == 0 (a chunk is 8
// elements: two float4 loads and one 16-byte f16 store), 8 <= d <= 16384 (rows held in
// registers), x, mods and out 16-byte aligned (cudaMalloc and a 16-byte aligned arena
// satisfy it); with mods: m a multiple of tokens, tokens a multiple of tokens_per_frame,
// shift and scale < mod_k.
#include <cuda_fp16.h>
#include <stdint.h>

#include "common/ptx.cuh"
#include "common/vec8.cuh"

#if PTX_EMU
#define ADALN_UNROLL
#else
#define ADALN_UNROLL _Pragma("unroll")
#endif

// ---------------------------------------------------------------------------------------
// Traits.
//  - kChunk = 8 f32 elements per chunk: 2 LDG.128 of x (and of each modulation vector),
//    1 STG.128 of out. 8 chunks' worth of f32 in registers (kMaxChunks = 4 -> 32 floats).
//  - Warp variant: 8 warps (256 threads) per CTA, one row each; D <= 32 lanes * 4 chunks *
//    8 = 1024. Rows of a CTA are consecutive, so its loads cover 8 * D * 4 contiguous bytes.
//  - CTA variant: the config gives blockDim = min(512, roundup32(ceil(D / 16))), so each
//    thread has 2 chunks (4 x 16-byte loads in flight) at D = 3072 (192 threads) and
//    D = 8192 (512 threads), up to 4 at D = 16384. __launch_bounds__(512) leaves ptxas 128
//    registers for the 32 row values (at 1024 threads the 64-register cap spilled); at
//    D = 3072 about 10 CTAs (12 KiB rows) are in flight per SM, ~120 KiB of loads.
// ---------------------------------------------------------------------------------------
struct AdaLnTraits {
    static constexpr int kChunk = 8;
    static constexpr int kMaxChunks = 4;
    static constexpr int kWarpRowsPerCta = 8;
    static constexpr int kWarpThreads = kWarpRowsPerCta * 32;
    static constexpr int kWarpMaxD = 32 * kMaxChunks * kChunk;  // 1024
    static constexpr int kCtaMaxThreads = 512;
    static constexpr int kCtaMaxD = kCtaMaxThreads * kMaxChunks * kChunk;  // 16384
    static constexpr float kEps = 1e-6f;

    static_assert(kChunk * 4 == 32, "a chunk is two 16-byte f32 loads");
    static_assert(kChunk * 2 == 16, "a chunk is one 16-byte f16 store");
    static_assert(kWarpMaxD == 1024, "the warp variant covers D <= 1024");
    static_assert(kCtaMaxThreads / 32 <= 32, "block partials must fit one warp's lanes");
};

struct AdaLnParams {
    const float* x;       // (m, d) f32
    const float* mods;    // (frames, mod_k, d) f32, or null: plain LN(x)
    const __half* weight; // (d) f16 affine weight, or null (Wan's norm3: LN(x) w + b)
    const __half* bias;   // (d) f16 affine bias, or null
    __half* out;          // (m, d) f16
    int m;
    int d;
    int mod_k;             // vectors per frame in mods (6 in a DiT block, 2 in the final layer)
    int shift;             // index of the shift vector
    int scale;             // index of the scale vector
    int tokens;            // tokens per batch element (m = batch * tokens)
    int tokens_per_frame;
};

__device__ __forceinline__ float warp_sum(float v) {
ADALN_UNROLL
    for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
    return v;
}

// Sum over the CTA of every thread's v, the same value in every thread. `part` holds one
// partial per warp; the caller passes a different array for each reduction so that the
// second one's writes cannot race with the first one's reads (one barrier per reduction).
__device__ __forceinline__ float cta_sum(float v, float* part) {
    const int lane = threadIdx.x % 32;
    const int warp = threadIdx.x / 32;
    const int warps = blockDim.x / 32;
    v = warp_sum(v);
    if (lane == 0) part[warp] = v;
    __syncthreads();
    float t = lane < warps ? part[lane] : 0.0f;
    return warp_sum(t);
}

// The row computation shared by both entries. The thread owns chunks c = first + i * stride
// (i < kMaxChunks, c < chunks); `reduce(v, k)` sums v over the threads sharing the row, k
// (0: mean, 1: variance) naming the reduction.
template <bool kStats, class Reduce>
__device__ __forceinline__ void adaln_row(const AdaLnParams& p, int row, int first, int stride,
                                          Reduce reduce) {
    using T = AdaLnTraits;
    const int chunks = p.d / T::kChunk;
    const float* xr = p.x + static_cast<size_t>(row) * p.d;
    float v[T::kMaxChunks][T::kChunk];
    float sum = 0.0f;
ADALN_UNROLL
    for (int i = 0; i < T::kMaxChunks; ++i) {
        const int c = first + i * stride;
        if (c < chunks) {
            vec8::load_f32(v[i], xr + c * T::kChunk);
ADALN_UNROLL
            for (int e = 0; e < T::kChunk; ++e) sum += v[i][e];
        }
    }
    const float inv_d = 1.0f / static_cast<float>(p.d);
    const float mean = reduce(sum, 0) * inv_d;
    float sq = 0.0f;
ADALN_UNROLL
    for (int i = 0; i < T::kMaxChunks; ++i) {
        const int c = first + i * stride;
        if (c < chunks) {
ADALN_UNROLL
            for (int e = 0; e < T::kChunk; ++e) {
                const float t = v[i][e] - mean;
                sq += t * t;
            }
        }
    }
    const float m2 = reduce(sq, 1);
    if constexpr (kStats) {
        // Every thread holds the sums; the row's first thread stores them.
        if (first == 0) reinterpret_cast<float2*>(p.out)[row] = make_float2(mean, m2);
        return;
    }
    const float var = m2 * inv_d;
    const float inv = rsqrtf(var + T::kEps);

    const float* sh = nullptr;
    const float* sc = nullptr;
    if (p.mods != nullptr) {
        const int frame = (row % p.tokens) / p.tokens_per_frame;
        const float* fm = p.mods + static_cast<size_t>(frame) * p.mod_k * p.d;
        sh = fm + static_cast<size_t>(p.shift) * p.d;
        sc = fm + static_cast<size_t>(p.scale) * p.d;
    }
    __half* orow = p.out + static_cast<size_t>(row) * p.d;
ADALN_UNROLL
    for (int i = 0; i < T::kMaxChunks; ++i) {
        const int c = first + i * stride;
        if (c >= chunks) continue;
        float y[T::kChunk];
ADALN_UNROLL
        for (int e = 0; e < T::kChunk; ++e) y[e] = (v[i][e] - mean) * inv;
        if (p.weight != nullptr) {
            float w[T::kChunk];
            vec8::load_f16(w, p.weight + c * T::kChunk);
ADALN_UNROLL
            for (int e = 0; e < T::kChunk; ++e) y[e] *= w[e];
        }
        if (p.bias != nullptr) {
            float b[T::kChunk];
            vec8::load_f16(b, p.bias + c * T::kChunk);
ADALN_UNROLL
            for (int e = 0; e < T::kChunk; ++e) y[e] += b[e];
        }
        if (sh != nullptr) {
            float s0[T::kChunk];
            float s1[T::kChunk];
            vec8::load_f32(s0, sh + c * T::kChunk);
            vec8::load_f32(s1, sc + c * T::kChunk);
ADALN_UNROLL
            for (int e = 0; e < T::kChunk; ++e) y[e] = y[e] * (1.0f + s1[e]) + s0[e];
        }
        vec8::store_f16(orow + c * T::kChunk, y);
    }
}

// ---------------------------------------------------------------------------------------
// (a) One warp per row, kWarpRowsPerCta rows per CTA; grid = ceil(m / kWarpRowsPerCta).
// A warp whose row is past m returns as a whole (the shuffles need all 32 lanes).
// ---------------------------------------------------------------------------------------
extern "C" __global__ void __launch_bounds__(AdaLnTraits::kWarpThreads)
    adaln_rows_warp(AdaLnParams p) {
    using T = AdaLnTraits;
    const int row = blockIdx.x * T::kWarpRowsPerCta + threadIdx.x / 32;
    if (row >= p.m) return;
    adaln_row<false>(p, row, threadIdx.x % 32, 32, [](float v, int) { return warp_sum(v); });
}
EMU_REGISTER_KERNEL(adaln_rows_warp, AdaLnParams)

extern "C" __global__ void __launch_bounds__(AdaLnTraits::kWarpThreads)
    ln_stats_rows_warp(AdaLnParams p) {
    using T = AdaLnTraits;
    const int row = blockIdx.x * T::kWarpRowsPerCta + threadIdx.x / 32;
    if (row >= p.m) return;
    adaln_row<true>(p, row, threadIdx.x % 32, 32, [](float v, int) { return warp_sum(v); });
}
EMU_REGISTER_KERNEL(ln_stats_rows_warp, AdaLnParams)

// ---------------------------------------------------------------------------------------
// (b) One CTA per row (grid = m), blockDim.x a multiple of 32, at most 512, with
// blockDim.x * kMaxChunks * kChunk >= d.
// ---------------------------------------------------------------------------------------
extern "C" __global__ void __launch_bounds__(AdaLnTraits::kCtaMaxThreads)
    adaln_row_cta(AdaLnParams p) {
    using T = AdaLnTraits;
    __shared__ float part[2][T::kCtaMaxThreads / 32];  // per-warp partials: mean, variance
    adaln_row<false>(p, blockIdx.x, threadIdx.x, blockDim.x,
                     [&](float v, int k) { return cta_sum(v, part[k]); });
}
EMU_REGISTER_KERNEL(adaln_row_cta, AdaLnParams)

extern "C" __global__ void __launch_bounds__(AdaLnTraits::kCtaMaxThreads)
    ln_stats_row_cta(AdaLnParams p) {
    using T = AdaLnTraits;
    __shared__ float part[2][T::kCtaMaxThreads / 32];
    adaln_row<true>(p, blockIdx.x, threadIdx.x, blockDim.x,
                    [&](float v, int k) { return cta_sum(v, part[k]); });
}
EMU_REGISTER_KERNEL(ln_stats_row_cta, AdaLnParams)
