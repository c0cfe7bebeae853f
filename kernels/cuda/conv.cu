// The temporal-autoencoder decoder's kernels (docs/tae.md): implicit-GEMM
// convolutions on tensor cores and a split GroupNorm with fused SiLU. Activations are f16,
// channels last.
//
// Entry points (the convolutions in two column-tile widths: `name` 64 output channels per
// CTA, any Cout; `name_n128` 128, for Cout % 128 == 0; same parameters):
//   conv3x3_f16        out[t, y, x, :] = sum_{ky,kx} W[:, ky, kx, :] in[t, y+ky-1, x+kx-1, :]
//                      + bias (+ residual), zero padding 1; with `upsample` the input is the
//                      half-resolution tensor and is read through the nearest-2x index map
//                      (in[y, x] = half[y >> 1, x >> 1]), so the 2x tensor never exists.
//   conv_t3_f16        causal temporal conv of kernel 3 per pixel:
//                      out[s] = W0 u[s-2] + W1 u[s-1] + W2 u[s] + bias (+ residual), where the
//                      input buffer holds 2 context frames then the chunk's T frames, and u is
//                      the chunk (or, with `upsample_t`, each chunk frame repeated twice).
//   conv3d_f16         causal 3x3x3 conv (the Wan VAE's CausalConv3d, docs/wan_vae.md):
//                      out[s, y, x] = sum_{dt,dy,dx} W[:, dt, dy, dx, :] in[s + dt, y+dy-1, x+dx-1]
//                      + bias (+ residual) over the same 2-context-frame buffer as conv_t3
//                      (buffer frame s + dt = sequence frame s - 2 + dt), zero padding 1.
//   conv1x1_f16        out[m, :] = W x[m, :] + bias (+ residual): the 1x1 skip and the attention's
//                      output projection as a GEMM with the f16 residual epilogue.
//   conv3x3s2_f16      3x3 convolution with stride 2 (the encoders' downsampling):
//                      out[t, y, x] = sum W[:, ky, kx, :] in[t, 2y+ky-pad, 2x+kx-pad] + bias
//                      (+ residual), zeros outside; h_out = (h_in + pad) / 2.
//   conv_tstride_f16   temporal convolution with a frame stride, per pixel:
//                      out[s] = sum_{j < taps} W_j buf[stride s + j] + bias (+ residual)
//                      (TAEHV's TPool: taps = stride; the TAE's DownT: taps 3, stride 2).
//   groupnorm_stats    per (frame, split, group): the slice's mean and centred sum of squares
//   groupnorm_finalize per (frame, group): Chan's merge of the splits -> mean, 1/sqrt(var+eps)
//   groupnorm_apply    out = [SiLU](gamma (x - mean) rstd + beta) in f16
//
// The convolutions are one GEMM C[M, N] = A[M, K] W[N, K]^T with M = output pixels,
// N = Cout, K = taps * Cin, where row m of A is gathered on the fly (im2col in the cp.async
// address computation): the K index k = tap * Cin + ci, and each 16-byte chunk of a k-tile
// (8 channels of one tap, since Cin % 8 == 0) is one cp.async of 8 channels of one input
// pixel, zero-filled (src-size 0) where the tap falls in the padding. W is pre-packed as
// [Cout, taps, Cin] (kernels/src/conv.rs: pack_conv3x3_weight, pack_conv_t3_weight,
// pack_conv3d_weight; the 1x1 weight [Cout, Cin] needs none).
//
// Shape contract (checked by kernels/src/conv.rs): Cin % 8 == 0 (16-byte pixel rows for
// cp.async; Cin = 8 is one chunk), Cout >= 1 (any: W rows past Cout are zero-filled and the
// stores guarded; an odd Cout such as conv_out's 3 uses scalar stores), ragged M.
#include <cuda_fp16.h>
#include <stdint.h>

#include "common/ptx.cuh"
#include "common/vec8.cuh"

#include "common/conv_gather.cuh"

// Issues the cp.async copies of k-tile kt into stage s_stage (one commit group by the caller).
template <class T, class Gather>
__device__ __forceinline__ void conv_load_tile(__half* s_stage, const Gather& g, const __half* w,
                                               int cout, int n0, int kt) {
    __half* s_a = s_stage;
    __half* s_w = s_stage + T::kTileA;
    const int c = threadIdx.x % T::kChunks;
    const int r0 = threadIdx.x / T::kChunks;
    const int gk = kt * T::kBK + c * 8;
    // One division per k-tile and thread: the chunk's tap and channel offset.
    const int tap = gk / g.cin;
    const int ci = gk - tap * g.cin;
CONV_UNROLL
    for (int i = 0; i < T::kARowsPerThread; ++i) {
        const __half* src = g.src(i, gk, tap, ci);
        const int r = r0 + i * (T::kThreads / T::kChunks);
        // src-size 0: nothing is read, the 16 bytes are zeros (padding, K tail, rows past M).
        ptx::cp_async_16_zfill(s_a + conv_swizzle(r, c), src != nullptr ? src : g.x,
                               src != nullptr ? 16u : 0u);
    }
CONV_UNROLL
    for (int i = 0; i < T::kWRowsPerThread; ++i) {
        const int r = r0 + i * (T::kThreads / T::kChunks);
        const bool ok = n0 + r < cout && gk < g.k;
        const __half* src = ok ? w + static_cast<size_t>(n0 + r) * g.k + gk : w;
        ptx::cp_async_16_zfill(s_w + conv_swizzle(r, c), src, ok ? 16u : 0u);
    }
}

// The main loop (the GEMM's, with the gather): acc = A[m0.., :] W[n0.., :]^T for this warp's
// 32 x 32. acc[i][j] is the m16n8 fragment of m16 tile i, n8 tile j.
template <class T, class Gather>
__device__ __forceinline__ void conv_mainloop(float (&acc)[T::kMmaM][T::kMmaN][4], __half* s,
                                              const Gather& g, const __half* w, int cout, int n0) {
    const int lane = threadIdx.x % 32;
    const int warp = threadIdx.x / 32;
    const int warp_m = warp / T::kWarpsN;
    const int warp_n = warp % T::kWarpsN;

CONV_UNROLL
    for (int i = 0; i < T::kMmaM; ++i)
CONV_UNROLL
        for (int j = 0; j < T::kMmaN; ++j)
CONV_UNROLL
            for (int e = 0; e < 4; ++e) acc[i][j][e] = 0.0f;

    const int k_tiles = (g.k + T::kBK - 1) / T::kBK;
CONV_UNROLL
    for (int st = 0; st < T::kStages - 1; ++st) {
        if (st < k_tiles) conv_load_tile<T>(s + st * T::kStageHalves, g, w, cout, n0, st);
        ptx::cp_async_commit();
    }

    const int ld_row = lane % 8;
    const int ld_mat = lane / 8;
    const int a_row = warp_m * T::kWarpM + (ld_mat % 2) * 8 + ld_row;
    const int a_chunk = ld_mat / 2;
    const int w_row = warp_n * T::kWarpN + (ld_mat / 2) * 8 + ld_row;
    const int w_chunk = ld_mat % 2;

    for (int kt = 0; kt < k_tiles; ++kt) {
        // Tile kt has landed for this thread; the barrier makes every thread's copies of it
        // visible and guarantees every warp is done reading the slot of tile kt-1, which the
        // refill below overwrites.
        ptx::cp_async_wait<T::kStages - 2>();
        __syncthreads();
        const int next = kt + T::kStages - 1;
        if (next < k_tiles) conv_load_tile<T>(s + (next % T::kStages) * T::kStageHalves, g, w, cout, n0, next);
        ptx::cp_async_commit();

        const __half* s_a = s + (kt % T::kStages) * T::kStageHalves;
        const __half* s_w = s_a + T::kTileA;
CONV_UNROLL
        for (int kk = 0; kk < T::kBK / 16; ++kk) {
            uint32_t af[T::kMmaM][4];
            uint32_t bf[T::kMmaN][2];
CONV_UNROLL
            for (int i = 0; i < T::kMmaM; ++i)
                ptx::ldmatrix_x4(af[i], s_a + conv_swizzle(a_row + i * 16, kk * 2 + a_chunk));
CONV_UNROLL
            for (int p = 0; p < T::kMmaN / 2; ++p) {
                uint32_t r[4];
                ptx::ldmatrix_x4(r, s_w + conv_swizzle(w_row + p * 16, kk * 2 + w_chunk));
                bf[2 * p][0] = r[0];
                bf[2 * p][1] = r[1];
                bf[2 * p + 1][0] = r[2];
                bf[2 * p + 1][1] = r[3];
            }
CONV_UNROLL
            for (int i = 0; i < T::kMmaM; ++i)
CONV_UNROLL
                for (int j = 0; j < T::kMmaN; ++j) ptx::mma_m16n8k16_f16_f32(acc[i][j], af[i], bf[j], acc[i][j]);
        }
    }
    ptx::cp_async_wait<0>();
}

// out[row, col] = acc + bias[col] (+ residual[row, col]) in f16, rows < m, columns < cout.
// Even cout: one __half2 per column pair (4-byte aligned since col is even); odd cout (3):
// scalar accesses.
template <class T>
__device__ __forceinline__ void conv_epilogue(const float (&acc)[T::kMmaM][T::kMmaN][4],
                                              const __half* bias, const __half* residual,
                                              __half* out, int m, int cout, int m0, int n0) {
    const int lane = threadIdx.x % 32;
    const int warp = threadIdx.x / 32;
    const int row0 = m0 + (warp / T::kWarpsN) * T::kWarpM + lane / 4;
    const int col0 = n0 + (warp % T::kWarpsN) * T::kWarpN + 2 * (lane % 4);
    const bool pairs = (cout & 1) == 0;
CONV_UNROLL
    for (int j = 0; j < T::kMmaN; ++j) {
        const int col = col0 + j * 8;
        if (col >= cout) continue;
        const bool has1 = col + 1 < cout;
        const float b0 = bias != nullptr ? __half2float(bias[col]) : 0.0f;
        const float b1 = bias != nullptr && has1 ? __half2float(bias[col + 1]) : 0.0f;
CONV_UNROLL
        for (int i = 0; i < T::kMmaM; ++i)
CONV_UNROLL
            for (int h = 0; h < 2; ++h) {
                const int row = row0 + i * 16 + h * 8;
                if (row >= m) continue;
                const size_t o = static_cast<size_t>(row) * cout + col;
                float v0 = acc[i][j][2 * h] + b0;
                float v1 = acc[i][j][2 * h + 1] + b1;
                if (pairs) {
                    if (residual != nullptr) {
                        const float2 r = __half22float2(*reinterpret_cast<const __half2*>(residual + o));
                        v0 += r.x;
                        v1 += r.y;
                    }
                    *reinterpret_cast<__half2*>(out + o) = __floats2half2_rn(v0, v1);
                } else {
                    if (residual != nullptr) v0 += __half2float(residual[o]);
                    out[o] = __float2half_rn(v0);
                    if (has1) {
                        if (residual != nullptr) v1 += __half2float(residual[o + 1]);
                        out[o + 1] = __float2half_rn(v1);
                    }
                }
            }
    }
}

// ---------------------------------------------------------------------------------------
// (a) 3x3 convolution, zero padding 1, optional fused nearest 2x upsample of the input and
// residual add. Grid: x = column tiles (ceil(cout / BN)), y = pixel tiles (ceil(M / 128)),
// M = t * h_out * w_out.
// ---------------------------------------------------------------------------------------
// The dynamic shared memory is declared in each entry and passed in (the emulator's
// `extern thread_local` smem must be named at kernel scope, not inside a template).
template <int BN>
__device__ __forceinline__ void conv3x3_body(const Conv3x3Params& p, unsigned char* smem) {
    using T = ConvTraits<BN>;
    const int shift = p.upsample ? 1 : 0;
    const int m = p.t * (p.h_in << shift) * (p.w_in << shift);
    const int m0 = blockIdx.y * T::kBM;
    const int n0 = blockIdx.x * T::kBN;
    const Gather3x3 g(p, m, m0, threadIdx.x / T::kChunks);
    float acc[T::kMmaM][T::kMmaN][4];
    conv_mainloop<T>(acc, reinterpret_cast<__half*>(smem), g, p.w, p.cout, n0);
    conv_epilogue<T>(acc, p.bias, p.residual, p.out, m, p.cout, m0, n0);
}

extern "C" __global__ void __launch_bounds__(ConvGeom::kThreads, 2) conv3x3_f16(Conv3x3Params p) {
    extern __shared__ __align__(16) unsigned char smem[];
    conv3x3_body<64>(p, smem);
}
EMU_REGISTER_KERNEL(conv3x3_f16, Conv3x3Params)

extern "C" __global__ void __launch_bounds__(ConvGeom::kThreads, 2) conv3x3_f16_n128(Conv3x3Params p) {
    extern __shared__ __align__(16) unsigned char smem[];
    conv3x3_body<128>(p, smem);
}
EMU_REGISTER_KERNEL(conv3x3_f16_n128, Conv3x3Params)

// ---------------------------------------------------------------------------------------
// (b) Causal temporal convolution, kernel 3, optional 2x frame repeat (UpT) and residual
// add. Grid as (a) with M = t_out * hw.
// ---------------------------------------------------------------------------------------
template <int BN>
__device__ __forceinline__ void conv_t3_body(const ConvT3Params& p, unsigned char* smem) {
    using T = ConvTraits<BN>;
    const int m = (p.t_in << (p.upsample_t ? 1 : 0)) * p.hw;
    const int m0 = blockIdx.y * T::kBM;
    const int n0 = blockIdx.x * T::kBN;
    const GatherT3 g(p, m, m0, threadIdx.x / T::kChunks);
    float acc[T::kMmaM][T::kMmaN][4];
    conv_mainloop<T>(acc, reinterpret_cast<__half*>(smem), g, p.w, p.cout, n0);
    conv_epilogue<T>(acc, p.bias, p.residual, p.out, m, p.cout, m0, n0);
}

extern "C" __global__ void __launch_bounds__(ConvGeom::kThreads, 2) conv_t3_f16(ConvT3Params p) {
    extern __shared__ __align__(16) unsigned char smem[];
    conv_t3_body<64>(p, smem);
}
EMU_REGISTER_KERNEL(conv_t3_f16, ConvT3Params)

extern "C" __global__ void __launch_bounds__(ConvGeom::kThreads, 2) conv_t3_f16_n128(ConvT3Params p) {
    extern __shared__ __align__(16) unsigned char smem[];
    conv_t3_body<128>(p, smem);
}
EMU_REGISTER_KERNEL(conv_t3_f16_n128, ConvT3Params)

// ---------------------------------------------------------------------------------------
// (b') Causal 3x3x3 convolution (the Wan VAE's CausalConv3d with padding 1): K = 27 Cin,
// optional residual add. Grid as (a) with M = t * h * w.
// ---------------------------------------------------------------------------------------
template <int BN>
__device__ __forceinline__ void conv3d_body(const Conv3dParams& p, unsigned char* smem) {
    using T = ConvTraits<BN>;
    const int m = p.t * p.height * p.width;
    const int m0 = blockIdx.y * T::kBM;
    const int n0 = blockIdx.x * T::kBN;
    const Gather3d g(p, m, m0, threadIdx.x / T::kChunks);
    float acc[T::kMmaM][T::kMmaN][4];
    conv_mainloop<T>(acc, reinterpret_cast<__half*>(smem), g, p.w, p.cout, n0);
    conv_epilogue<T>(acc, p.bias, p.residual, p.out, m, p.cout, m0, n0);
}

extern "C" __global__ void __launch_bounds__(ConvGeom::kThreads, 2) conv3d_f16(Conv3dParams p) {
    extern __shared__ __align__(16) unsigned char smem[];
    conv3d_body<64>(p, smem);
}
EMU_REGISTER_KERNEL(conv3d_f16, Conv3dParams)

extern "C" __global__ void __launch_bounds__(ConvGeom::kThreads, 2) conv3d_f16_n128(Conv3dParams p) {
    extern __shared__ __align__(16) unsigned char smem[];
    conv3d_body<128>(p, smem);
}
EMU_REGISTER_KERNEL(conv3d_f16_n128, Conv3dParams)

// ---------------------------------------------------------------------------------------
// (c) 1x1 convolution / linear layer with f16 bias and residual: out = x W^T + b (+ res).
// Grid as (a) with M = m.
// ---------------------------------------------------------------------------------------
template <int BN>
__device__ __forceinline__ void conv1x1_body(const Conv1x1Params& p, unsigned char* smem) {
    using T = ConvTraits<BN>;
    const int m0 = blockIdx.y * T::kBM;
    const int n0 = blockIdx.x * T::kBN;
    const Gather1x1 g(p, p.m, m0, threadIdx.x / T::kChunks);
    float acc[T::kMmaM][T::kMmaN][4];
    conv_mainloop<T>(acc, reinterpret_cast<__half*>(smem), g, p.w, p.cout, n0);
    conv_epilogue<T>(acc, p.bias, p.residual, p.out, p.m, p.cout, m0, n0);
}

extern "C" __global__ void __launch_bounds__(ConvGeom::kThreads, 2) conv1x1_f16(Conv1x1Params p) {
    extern __shared__ __align__(16) unsigned char smem[];
    conv1x1_body<64>(p, smem);
}
EMU_REGISTER_KERNEL(conv1x1_f16, Conv1x1Params)

extern "C" __global__ void __launch_bounds__(ConvGeom::kThreads, 2) conv1x1_f16_n128(Conv1x1Params p) {
    extern __shared__ __align__(16) unsigned char smem[];
    conv1x1_body<128>(p, smem);
}
EMU_REGISTER_KERNEL(conv1x1_f16_n128, Conv1x1Params)

// ---------------------------------------------------------------------------------------
// (d) The encoders' downsampling convolutions (common/conv_gather.cuh): the 3x3 convolution
// with stride 2 (Gather3x3S2; grid as (a) with M = t * h_out * w_out) and the temporal
// convolution with a frame stride (GatherTStride; M = t_out * hw).
// ---------------------------------------------------------------------------------------
template <int BN>
__device__ __forceinline__ void conv3x3s2_body(const Conv3x3S2Params& p, unsigned char* smem) {
    using T = ConvTraits<BN>;
    const int m = p.t * ((p.h_in + p.pad) >> 1) * ((p.w_in + p.pad) >> 1);
    const int m0 = blockIdx.y * T::kBM;
    const int n0 = blockIdx.x * T::kBN;
    const Gather3x3S2 g(p, m, m0, threadIdx.x / T::kChunks);
    float acc[T::kMmaM][T::kMmaN][4];
    conv_mainloop<T>(acc, reinterpret_cast<__half*>(smem), g, p.w, p.cout, n0);
    conv_epilogue<T>(acc, p.bias, p.residual, p.out, m, p.cout, m0, n0);
}

extern "C" __global__ void __launch_bounds__(ConvGeom::kThreads, 2) conv3x3s2_f16(Conv3x3S2Params p) {
    extern __shared__ __align__(16) unsigned char smem[];
    conv3x3s2_body<64>(p, smem);
}
EMU_REGISTER_KERNEL(conv3x3s2_f16, Conv3x3S2Params)

extern "C" __global__ void __launch_bounds__(ConvGeom::kThreads, 2) conv3x3s2_f16_n128(Conv3x3S2Params p) {
    extern __shared__ __align__(16) unsigned char smem[];
    conv3x3s2_body<128>(p, smem);
}
EMU_REGISTER_KERNEL(conv3x3s2_f16_n128, Conv3x3S2Params)

template <int BN>
__device__ __forceinline__ void conv_tstride_body(const ConvTStrideParams& p, unsigned char* smem) {
    using T = ConvTraits<BN>;
    const int m = p.t_out * p.hw;
    const int m0 = blockIdx.y * T::kBM;
    const int n0 = blockIdx.x * T::kBN;
    const GatherTStride g(p, m, m0, threadIdx.x / T::kChunks);
    float acc[T::kMmaM][T::kMmaN][4];
    conv_mainloop<T>(acc, reinterpret_cast<__half*>(smem), g, p.w, p.cout, n0);
    conv_epilogue<T>(acc, p.bias, p.residual, p.out, m, p.cout, m0, n0);
}

extern "C" __global__ void __launch_bounds__(ConvGeom::kThreads, 2) conv_tstride_f16(ConvTStrideParams p) {
    extern __shared__ __align__(16) unsigned char smem[];
    conv_tstride_body<64>(p, smem);
}
EMU_REGISTER_KERNEL(conv_tstride_f16, ConvTStrideParams)

extern "C" __global__ void __launch_bounds__(ConvGeom::kThreads, 2) conv_tstride_f16_n128(ConvTStrideParams p) {
    extern __shared__ __align__(16) unsigned char smem[];
    conv_tstride_body<128>(p, smem);
}
EMU_REGISTER_KERNEL(conv_tstride_f16_n128, ConvTStrideParams)

// ---------------------------------------------------------------------------------------
// GroupNorm (+ SiLU), per frame, groups of cg = c / groups consecutive channels over all
// pixels of the frame; statistics in f32, numerically sound at a million elements a group:
//  1. groupnorm_stats: grid (splits, frames), 256 threads. CTA (s, f) owns pixels
//     [s * pps, min((s + 1) * pps, hw)) of frame f. Two passes over that slice (the second
//     from L1/L2): per-group mean of the slice, then the centred sum of squares around it.
//     Writes part[f, s, g] = (mean, m2).
//  2. groupnorm_finalize: one thread per (frame, group) merges the splits in order with
//     Chan's formula (n = na + nb, d = mb - ma, mean += d nb / n, m2 += m2b + d^2 na nb / n),
//     no E[x^2] - mean^2 cancellation; writes stats[f, g] = (mean, 1 / sqrt(m2 / n + eps)).
//  3. groupnorm_apply: grid (ceil(hw c / 16384), frames), 256 threads, 8 chunks of 8 each.
//
// The channel layout trick: with 256 threads and 8 channels a chunk, 2048 % c == 0 means a
// thread's chunks (j = tid + 256 i, channel offset 8 j % c = 8 tid % c) always cover the
// same 8 channels, so a thread keeps 8 per-channel partial sums (stats) or 8 (scale, shift)
// pairs (apply). Contract (kernels/src/conv.rs): c % 8 == 0, 2048 % c == 0 (c a power of two
// in 8..2048), groups divides c.
// ---------------------------------------------------------------------------------------
struct GroupNormTraits {
    static constexpr int kThreads = 256;
    static constexpr int kChunk = 8;
    static constexpr int kSpan = kThreads * kChunk;  // 2048 channels' worth per CTA sweep
    static constexpr int kApplyChunks = 8;            // chunks per thread in apply
    static constexpr float kEps = 1e-6f;
};

struct GroupNormStatsParams {
    const __half* x;  // (frames, hw, c) f16
    float2* part;     // (frames, splits, groups): (slice mean, slice m2)
    int frames;
    int hw;
    int c;
    int groups;
    int pixels_per_split;
};

extern "C" __global__ void __launch_bounds__(GroupNormTraits::kThreads) groupnorm_stats(GroupNormStatsParams p) {
    using T = GroupNormTraits;
    // red[8 tid + e] is channel (8 tid + e) % c of thread tid's partials; channel c's
    // partials are red[c + k c], k < 2048 / c.
    __shared__ float red[T::kSpan];
    __shared__ float ch_mean[T::kSpan];  // per channel: its group's slice mean (pass 2)
    __shared__ float g_sum[T::kSpan];    // per group (groups <= c <= 2048)
    const int split = blockIdx.x;
    const int splits = gridDim.x;
    const int f = blockIdx.y;
    const int p0 = split * p.pixels_per_split;
    const int p1 = min(p0 + p.pixels_per_split, p.hw);
    const int chunks = (p1 - p0) * (p.c / T::kChunk);
    const __half* xs = p.x + (static_cast<size_t>(f) * p.hw + p0) * p.c;
    const int cg = p.c / p.groups;
    const float count = static_cast<float>((p1 - p0) * cg);

    // Reduces the threads' 8 per-channel partials v into g_sum[group] (all threads get the
    // result after the trailing barrier).
    auto reduce_groups = [&](const float (&v)[T::kChunk]) {
        for (int e = 0; e < T::kChunk; ++e) red[threadIdx.x * T::kChunk + e] = v[e];
        __syncthreads();  // red complete
        for (int g = threadIdx.x; g < p.groups; g += T::kThreads) {
            float s = 0.0f;
            for (int ch = g * cg; ch < (g + 1) * cg; ++ch)
                for (int k = ch; k < T::kSpan; k += p.c) s += red[k];
            g_sum[g] = s;
        }
        __syncthreads();  // g_sum complete; red may be rewritten
    };

    float v[T::kChunk];
    float acc[T::kChunk];
CONV_UNROLL
    for (int e = 0; e < T::kChunk; ++e) acc[e] = 0.0f;
    for (int j = threadIdx.x; j < chunks; j += T::kThreads) {
        vec8::load_f16(v, xs + static_cast<size_t>(j) * T::kChunk);
CONV_UNROLL
        for (int e = 0; e < T::kChunk; ++e) acc[e] += v[e];
    }
    reduce_groups(acc);
    for (int ch = threadIdx.x; ch < p.c; ch += T::kThreads) ch_mean[ch] = g_sum[ch / cg] / count;
    __syncthreads();  // ch_mean complete
    const int c0 = (threadIdx.x * T::kChunk) % p.c;
    float mean[T::kChunk];
CONV_UNROLL
    for (int e = 0; e < T::kChunk; ++e) {
        mean[e] = ch_mean[c0 + e];
        acc[e] = 0.0f;
    }
    for (int j = threadIdx.x; j < chunks; j += T::kThreads) {
        vec8::load_f16(v, xs + static_cast<size_t>(j) * T::kChunk);
CONV_UNROLL
        for (int e = 0; e < T::kChunk; ++e) {
            const float d = v[e] - mean[e];
            acc[e] += d * d;
        }
    }
    reduce_groups(acc);
    for (int g = threadIdx.x; g < p.groups; g += T::kThreads) {
        p.part[(static_cast<size_t>(f) * splits + split) * p.groups + g] =
            make_float2(ch_mean[g * cg], g_sum[g]);
    }
}
EMU_REGISTER_KERNEL(groupnorm_stats, GroupNormStatsParams)

struct GroupNormFinalizeParams {
    const float2* part;  // (frames, splits, groups)
    float2* stats;       // (frames, groups): (mean, rstd)
    int frames;
    int splits;
    int groups;
    int hw;
    int cg;  // channels per group
    int pixels_per_split;
};

extern "C" __global__ void __launch_bounds__(GroupNormTraits::kThreads) groupnorm_finalize(GroupNormFinalizeParams p) {
    const int id = blockIdx.x * blockDim.x + threadIdx.x;
    if (id >= p.frames * p.groups) return;
    const int f = id / p.groups;
    const int g = id - f * p.groups;
    float n = 0.0f;
    float mean = 0.0f;
    float m2 = 0.0f;
    for (int s = 0; s < p.splits; ++s) {
        const int p0 = s * p.pixels_per_split;
        const float nb = static_cast<float>((min(p0 + p.pixels_per_split, p.hw) - p0) * p.cg);
        const float2 b = p.part[(static_cast<size_t>(f) * p.splits + s) * p.groups + g];
        const float nn = n + nb;
        const float d = b.x - mean;
        mean += d * (nb / nn);
        m2 += b.y + d * d * (n * nb / nn);
        n = nn;
    }
    p.stats[id] = make_float2(mean, rsqrtf(m2 / n + GroupNormTraits::kEps));
}
EMU_REGISTER_KERNEL(groupnorm_finalize, GroupNormFinalizeParams)

struct GroupNormApplyParams {
    const __half* x;      // (frames, hw, c) f16
    const float2* stats;  // (frames, groups): (mean, rstd)
    const __half* gamma;  // (c) f16
    const __half* beta;   // (c) f16
    __half* out;          // (frames, hw, c) f16
    int hw;
    int c;
    int groups;
    int silu;  // 1: out = SiLU(GN(x))
};

extern "C" __global__ void __launch_bounds__(GroupNormTraits::kThreads) groupnorm_apply(GroupNormApplyParams p) {
    using T = GroupNormTraits;
    const int f = blockIdx.y;
    const int cg = p.c / p.groups;
    const int c0 = (threadIdx.x * T::kChunk) % p.c;
    float a[T::kChunk];
    float b[T::kChunk];
CONV_UNROLL
    for (int e = 0; e < T::kChunk; ++e) {
        const float2 st = p.stats[static_cast<size_t>(f) * p.groups + (c0 + e) / cg];
        a[e] = st.y * __half2float(p.gamma[c0 + e]);
        b[e] = __half2float(p.beta[c0 + e]) - st.x * a[e];
    }
    const size_t chunks = static_cast<size_t>(p.hw) * (p.c / T::kChunk);
    const __half* xf = p.x + static_cast<size_t>(f) * p.hw * p.c;
    __half* of = p.out + static_cast<size_t>(f) * p.hw * p.c;
CONV_UNROLL
    for (int i = 0; i < T::kApplyChunks; ++i) {
        const size_t j = static_cast<size_t>(blockIdx.x) * T::kThreads * T::kApplyChunks +
                         static_cast<size_t>(i) * T::kThreads + threadIdx.x;
        if (j >= chunks) break;
        float v[T::kChunk];
        vec8::load_f16(v, xf + j * T::kChunk);
CONV_UNROLL
        for (int e = 0; e < T::kChunk; ++e) {
            const float y = v[e] * a[e] + b[e];
            v[e] = p.silu ? y / (1.0f + __expf(-y)) : y;
        }
        vec8::store_f16(of + j * T::kChunk, v);
    }
}
EMU_REGISTER_KERNEL(groupnorm_apply, GroupNormApplyParams)
