// streamdit-arch: sm_90a
// The Hopper (sm_90a) FP16 GEMM with fused epilogues: C[M, N] = A[M, K] * W[N, K]^T, the
// same products and epilogues as gemm.cu (the mma.sync path, which stays for sm_80/sm_89 and
// as the cross-check), built from TMA loads, an mbarrier ring and wgmma.
//
// Entry points (one per fused epilogue; all take GemmSm90Params):
//   gemm_sm90_bias_f16        out_f16[M, N]  = acc + bias                     (bias optional)
//   gemm_sm90_bias_gelu_f16   out_f16[M, N]  = GELU_tanh(acc + bias)          (bias optional)
//   gemm_sm90_bias_f32        out_f32[M, N]  = acc + bias                     (bias optional)
//   gemm_sm90_gated_residual  h_f32[M, N]   += mods[frame(r), gate, n] * (acc + bias[n])
//                             and, with stats_out, each row's (mean, sum of squared
//                             deviations) of the updated h over the tile's columns
//   gemm_sm90_swiglu          out_f16[M, Dff] = SiLU(u) * g,  [u; g] = A * W13^T
//
// and with a LayerNorm / adaLN prologue, A = adaLN(X) formed as the tile is loaded (the
// `ln` entries; epilogues as above):
//   gemm_sm90_ln_bias_f16, gemm_sm90_ln_bias_f32, gemm_sm90_ln_swiglu
//     A[r, k] = (X[r, k] - mean_r) * rstd_r * (1 + mods[f(r), scale, k]) + mods[f(r), shift, k]
//     (X f32 [M, K]; without mods the plain LayerNorm), the row statistics combined from
//     `ln_parts` partial (mean, sum of squared deviations) pairs per row over consecutive
//     groups of `ln_part_cols` columns (Chan et al.'s pairwise update; one pair from
//     adaln.cu's ln_stats_* entries); rstd_r = 1 / sqrt(M2_r / K + 1e-6), as adaln.cu.
//   The producer loads X's f32 rows by TMA (two 32-column boxes per k-tile, 128-byte
//   swizzled: 32 KiB of A staging per slot instead of 16); each consumer thread reads its
//   wgmma A-register fragment (two rows, eight k per k16 step) from the staging, normalises
//   and modulates it in f32, rounds to f16 and issues wgmma with A from registers (the RS
//   form FlashAttention-3 uses for P V). The f16 A tensor is never written: the adaLN
//   launch's write and this GEMM's read of it (4 bytes per element) are gone. Each consumer
//   waits for its own wgmmas before releasing the slot (wgmma.wait_group 0: the A registers
//   stay live until the MMAs retire), so the two consumer warpgroups alternate between
//   forming A and the tensor cores rather than overlapping inside one warpgroup.
//
// CTA = 3 warpgroups (384 threads) working through 128 x 128 output tiles (SwiGLU: 128 x 64
// outputs from 64 u and 64 g columns), persistent: grid x is at most the SM count (or the
// tile count), CTA b takes tiles b, b + gridDim.x, ... in grouped order (TileOrder), its
// mbarrier ring running on across its tiles:
//   warpgroup 0, the producer: setmaxnreg.dec to 40; one elected thread of warp 0 walks the
//     k-tiles, waits until the ring slot is empty, arms the slot's full barrier with the
//     slot's byte count (arrive.expect_tx) and issues three TMA tensor loads into it: A rows
//     [m0, m0 + 128) and two 64-row boxes of W (rows n0.. and n0 + 64.., or for SwiGLU the u
//     rows n0.. and the g rows dff + n0..), 64 k each, 128-byte swizzled;
//   warpgroups 1 and 2, the consumers: setmaxnreg.inc to 232; consumer c owns rows
//     [m0 + 64c, m0 + 64c + 64) x all 128 columns: per k-tile it waits for the slot's full
//     barrier, issues four wgmma.m64n128k16 (f16 in, f32 accumulate, both operands from
//     shared-memory descriptors), commits them as one group, waits until at most that group
//     is pending (wgmma.wait_group 1) and then releases the previous k-tile's slot (every
//     consumer thread arrives on its empty barrier: the slot is refilled only after both
//     consumers' wgmmas reading it have retired);
//   the epilogue runs from the accumulator registers straight to global memory, predicated
//     on M and N (no shared-memory staging; every output element written by one thread).
// Ragged M, ragged N and the K tail come from TMA's out-of-bounds fill: box elements outside
// the tensor are zeros, and the tx byte count is always the full box.
//
// Why this tile (the designs read: CUTLASS's sm90 "KernelTmaWarpSpecializedCooperative"
// collective (cutlass/gemm/kernel/sm90_gemm_tma_warpspecialized_cooperative.hpp), DeepGEMM's
// fp8_gemm.cuh, FlashAttention-3's warp-specialised mainloop (hopper/flash_fwd_kernel.h),
// ThunderKittens' H100 GEMM example):
//   - 128 x 128 x 64 with two consumer warpgroups is the cooperative default CUTLASS ships
//     for f16: each consumer issues m64n128k16, the widest instruction whose 64 f32
//     accumulators per thread leave ample registers for the epilogue (GELU, SwiGLU) under
//     the 168-register launch cap, so the kernel cannot spill whatever ptxas does with the
//     setmaxnreg regions. 128 x 256 (two m64n256, 128 accumulators per thread) feeds more
//     FLOP per shared-memory byte and is what DeepGEMM and ThunderKittens pick for the
//     largest shapes; it is the next step once a GPU can measure the difference.
//   - BK = 64 f16 = 128 bytes per row: exactly one 128-byte swizzle atom row, the widest
//     TMA swizzle, which makes wgmma's operand reads bank-conflict free; a k-tile is four
//     k16 wgmma steps whose descriptors advance the start address by 32 bytes inside the
//     atom (as CUTLASS and DeepGEMM do).
//   - 4 stages of (128 + 128) x 64 x 2 B = 32 KiB: 128 KiB of ring (+1 KiB to align the
//     ring to the 1024-byte swizzle repeat), one CTA per SM; three k-tiles (96 KiB) are in
//     flight while one is consumed, which covers HBM latency at the H100's bandwidth
//     (CUTLASS sizes its stage count the same way: as many as fit after the epilogue).
//   - Registers: 128 x 40 + 256 x 232 = 64 512 <= 65 536, the split CUTLASS's cooperative
//     kernel and DeepGEMM use for one producer and two consumer warpgroups.
//   - Persistent CTAs with a static tile schedule (CUTLASS's persistent "cooperative"
//     scheduler, DeepGEMM's): the producer starts the next tile's loads during the
//     epilogue, and the grouped order (8 row tiles per group) keeps both operands' tiles
//     L2-resident across the CTAs in flight.
//   - Not done (yet): clusters with TMA multicast, a TMA store epilogue, 128 x 256 tiles.
//
// Barriers (kernels/README.md, "Hopper GEMM"): full[s] (1 arrival + the slot's TMA bytes)
// says slot s holds k-tile kt; empty[s] (256 arrivals, every consumer thread) says both
// consumers' wgmmas that read k-tile kt from slot s have retired. The producer waits on
// empty[s] with parity ((it / S) & 1) ^ 1, `it` counting the CTA's k-tiles over all its
// tiles (a fresh barrier's "previous phase" counts as complete, so the first S waits
// return at once); the consumers wait on full[s] with parity (it / S) & 1 and release each
// k-tile's slot once the next k-tile's group is issued and this one retired, a tile's last
// k-tile after the wait before its epilogue.
//
// Shape contract (kernels/src/gemm_sm90.rs checks it before any launch): M >= 1, N and K
// multiples of 8 (TMA: global strides are multiples of 16 bytes; the predicated epilogue
// stores column pairs), N, K >= 8.
//
// Test-only variants (kernels/tests/gemm_sm90.rs and race_check.rs; never built by nvcc),
// each a planted race the race checker must report:
// streamdit-emu-variant: early_release
//   the consumers arrive on a slot's empty barrier right after committing the wgmmas that
//   read it, before wgmma.wait_group retires them: the producer's next TMA load into the
//   slot is not ordered after those operand reads (write-after-read, async proxy);
// streamdit-emu-variant: no_full_wait
//   the consumers skip the wait on the slot's full barrier: their wgmma reads the slot
//   before (or unordered with) the TMA load that fills it (read-after-write).
// streamdit-emu-variant: ln_no_full_wait
//   the prologue's consumers skip the same wait: their loads of the f32 staging read the slot
//   before (or unordered with) the TMA load that fills it (read-after-write).
#include <cuda_fp16.h>
#include <stdint.h>
#include <string.h>

#include "common/ptx_sm90.cuh"

// `#pragma unroll` for nvcc (accumulator arrays must stay in registers); the host compiler
// of the emulator does not know the pragma.
#if PTX_EMU
#define SM90_UNROLL
#else
#define SM90_UNROLL _Pragma("unroll")
#endif

struct Sm90Traits {
    static constexpr int kBM = 128;
    static constexpr int kBN = 128;
    static constexpr int kBK = 64;
    static constexpr int kStages = 4;
    static constexpr int kConsumers = 2;                         // warpgroups of wgmma
    static constexpr int kThreads = 128 * (1 + kConsumers);      // + the producer warpgroup
    static constexpr int kWgRows = kBM / kConsumers;             // 64: one m64 per consumer
    static constexpr int kAcc = kBN / 2;                         // f32 accumulators per thread
    static constexpr int kRowBytes = kBK * 2;                    // 128: one swizzle atom row
    static constexpr uint32_t kTileA = kBM * kRowBytes;          // 16 KiB
    static constexpr uint32_t kBoxW = 64;                        // W rows per TMA box
    static constexpr uint32_t kTileW = kBN * kRowBytes;          // 16 KiB (two boxes)
    static constexpr uint32_t kStageBytes = kTileA + kTileW;     // 32 KiB
    static constexpr uint32_t kSmemBytes = kStages * kStageBytes + 1024;  // + alignment
    static constexpr int kProducerRegs = 40;
    static constexpr int kConsumerRegs = 232;

    // The LayerNorm prologue's slot: A staged as f32 (two boxes of 32 k x 128 rows).
    static constexpr uint32_t kLnBoxK = 32;                      // f32 k per box: 128 bytes
    static constexpr uint32_t kLnBox = kBM * kLnBoxK * 4;        // 16 KiB
    static constexpr uint32_t kLnTileA = 2 * kLnBox;             // 32 KiB
    static constexpr uint32_t kLnStageBytes = kLnTileA + kTileW; // 48 KiB
    static constexpr uint32_t kLnSmemBytes = kStages * kLnStageBytes + 1024;
    static constexpr float kLnEps = 1e-6f;                       // adaln.cu's epsilon

    static_assert(kRowBytes == 128, "a k-tile row must be one 128-byte swizzle atom row");
    static_assert(kLnBoxK * 4 == 128 && 2 * kLnBoxK == kBK,
                  "a k-tile of f32 A is two 128-byte swizzle rows per row");
    static_assert(kLnSmemBytes <= 227 * 1024, "the prologue's ring must fit shared memory");
    static_assert(kLnStageBytes < (1u << 20), "tx-count limit of an mbarrier phase");
    static_assert(kBK % 16 == 0, "whole k16 wgmma steps");
    static_assert(kWgRows == 64, "each consumer warpgroup issues m64 wgmmas");
    static_assert(kBN % 8 == 0 && kBN <= 256, "wgmma N is a multiple of 8 up to 256");
    static_assert(kBN == 2 * kBoxW, "W arrives as two 64-row boxes (SwiGLU: u and g)");
    static_assert(kTileA % 1024 == 0 && kTileW % 1024 == 0,
                  "every tile starts on the 1024-byte repeat of the 128-byte swizzle");
    static_assert(kStageBytes < (1u << 20), "tx-count limit of an mbarrier phase");
    static_assert(kStages >= 2, "a ring needs two slots");
    static_assert(kSmemBytes <= 227 * 1024, "must fit one SM's shared memory");
    static_assert(128 * kProducerRegs + 128 * kConsumers * kConsumerRegs <= 65536,
                  "setmaxnreg budgets must fit the SM's 64K registers");
};

struct GemmSm90Params {
    ptx::TmaDesc map_a;  // A [M, K] f16: box {64 k, 128 rows}, SWIZZLE_128B, zero OOB fill
    ptx::TmaDesc map_w;  // W [N, K] (SwiGLU: W13 [2 Dff, K]) f16: box {64 k, 64 rows}
    const __half* bias;  // (N) or null (gated residual, bias entries)
    void* out;           // (M, N) f16 or f32 (bias entries), (M, Dff) f16 (SwiGLU); unused
                         // by the gated residual
    float* h;            // (M, N) f32 residual stream (gated residual), else null
    const float* mods;   // (F, mod_k, N) per-frame modulation (gated residual), or null
    int m;
    int n;               // output columns (SwiGLU: Dff)
    int k;
    int mod_k;
    int gate;
    int tokens;
    int tokens_per_frame;
    // The LayerNorm prologue (`ln` entries; map_a then describes X f32 [M, K], box {32 k,
    // 128 rows}); unused otherwise.
    const float* ln_stats;  // (M, ln_parts) pairs (mean, sum of squared deviations)
    const float* ln_mods;   // (F, ln_mod_k, K) per-frame shift and scale, or null (plain LN)
    int ln_parts;           // partial pairs per row
    int ln_part_cols;       // columns per partial (the last covers the rest of K)
    int ln_mod_k;
    int ln_shift;
    int ln_scale;
    // The gated residual's row statistics of the updated h, for the next norm's prologue:
    // (M, ceil(N / 128)) pairs (mean, sum of squared deviations) over each output tile's
    // columns, or null (not written).
    float* stats_out;
};

enum class Epi { BiasF16, BiasGeluF16, BiasF32, GatedResidual, Swiglu };

// K-major, 128-byte-swizzled operand of `rows` x 64 at shared address `tile` (1024-aligned),
// k16 step j: the atom's rows are 128 bytes, 8 rows (1024 bytes) per stride step, LBO unused.
__device__ __forceinline__ uint64_t kmajor_sw128_desc(uint32_t tile, int j) {
    return ptx::wgmma_desc(tile + 32u * static_cast<uint32_t>(j), 16, 1024, 1);
}

__device__ __forceinline__ float gelu_tanh(float z) {
    return 0.5f * z * (1.0f + tanhf(0.7978845608f * (z + 0.044715f * z * z * z)));
}

__device__ __forceinline__ float silu(float z) { return z / (1.0f + __expf(-z)); }

__device__ __forceinline__ float2 bias_pair(const __half* bias, int col) {
    if (bias == nullptr) return make_float2(0.0f, 0.0f);
    return __half22float2(*reinterpret_cast<const __half2*>(bias + col));
}

// The row statistics of the gated residual's tile (stats_out): accumulator r of thread t now
// holds the updated h of row row_base + 8 ((r >> 1) & 1), column n0 + 8 (r >> 2) + 2 (t % 4)
// + (r & 1) (the epilogue below); the quad (t % 4) holds a row's 128 columns. Two passes
// over the registers (the tile's mean, then the centred squares: no cancellation when
// |mean| >> spread), columns past N left out (in the sum they hold zeros, W's zero fill,
// but the mask does not rely on it); the quad's first lane stores each row's pair.
// Every lane must call it (shuffles).
__device__ __forceinline__ float quad_sum(float v) {
    v += __shfl_xor_sync(0xffffffffu, v, 1);
    return v + __shfl_xor_sync(0xffffffffu, v, 2);
}
__device__ __forceinline__ void residual_stats(const GemmSm90Params& p,
                                               const float (&acc)[Sm90Traits::kAcc],
                                               int row_base, int n0, int t) {
    using T = Sm90Traits;
    const int col_base = n0 + 2 * (t % 4);
    const int cols = min(T::kBN, p.n - n0);
    float sum[2] = {0.0f, 0.0f};
SM90_UNROLL
    for (int r = 0; r < T::kAcc; ++r)
        if (col_base + 8 * (r >> 2) + (r & 1) < p.n) sum[(r >> 1) & 1] += acc[r];
    const float mean[2] = {quad_sum(sum[0]) / cols, quad_sum(sum[1]) / cols};
    float sq[2] = {0.0f, 0.0f};
SM90_UNROLL
    for (int r = 0; r < T::kAcc; ++r) {
        if (col_base + 8 * (r >> 2) + (r & 1) < p.n) {
            const float d = acc[r] - mean[(r >> 1) & 1];
            sq[(r >> 1) & 1] += d * d;
        }
    }
    const float m2[2] = {quad_sum(sq[0]), quad_sum(sq[1])};
    const int parts = (p.n + T::kBN - 1) / T::kBN;
    if (t % 4 != 0) return;
SM90_UNROLL
    for (int h = 0; h < 2; ++h) {
        const int row = row_base + 8 * h;
        if (row < p.m)
            *reinterpret_cast<float2*>(p.stats_out +
                                       2 * (static_cast<size_t>(row) * parts + n0 / T::kBN)) =
                make_float2(mean[h], m2[h]);
    }
}

// The epilogue of consumer warpgroup `wg` (0 or 1), thread t (0..127) of it. Accumulator r
// holds row 16 (t / 32) + (t % 32) / 4 + 8 ((r >> 1) & 1) of the warpgroup's 64 rows and
// column 8 (r >> 2) + 2 (t % 4) + (r & 1) ("Matrix Fragments for wgmma.mma_async.m64nNk16",
// accumulator D): r and r + 1 are adjacent columns, stored as one pair.
template <Epi kEpi>
__device__ __forceinline__ void epilogue(const GemmSm90Params& p, float (&acc)[Sm90Traits::kAcc],
                                         int m0, int n0, int wg, int t) {
    using T = Sm90Traits;
    const int row_base = m0 + wg * T::kWgRows + 16 * (t / 32) + (t % 32) / 4;
    const int col_base = n0 + 2 * (t % 4);
    if constexpr (kEpi == Epi::Swiglu) {
        // Columns [0, 64) of the tile are u, [64, 128) the g of the same output columns:
        // accumulator r (u) pairs with r + kAcc / 2 (g).
        __half* out = static_cast<__half*>(p.out);
SM90_UNROLL
        for (int r = 0; r < T::kAcc / 2; r += 2) {
            const int row = row_base + 8 * ((r >> 1) & 1);
            const int col = col_base + 8 * (r >> 2);
            if (row < p.m && col < p.n) {
                const float* u = &acc[r];
                const float* g = &acc[r + T::kAcc / 2];
                *reinterpret_cast<__half2*>(out + static_cast<size_t>(row) * p.n + col) =
                    __floats2half2_rn(silu(u[0]) * g[0], silu(u[1]) * g[1]);
            }
        }
    } else {
SM90_UNROLL
        for (int r = 0; r < T::kAcc; r += 2) {
            const int row = row_base + 8 * ((r >> 1) & 1);
            const int col = col_base + 8 * (r >> 2);
            if (row >= p.m || col >= p.n) continue;
            const float2 b = bias_pair(p.bias, col);
            const float z0 = acc[r] + b.x, z1 = acc[r + 1] + b.y;
            const size_t at = static_cast<size_t>(row) * p.n + col;
            if constexpr (kEpi == Epi::BiasF16) {
                *reinterpret_cast<__half2*>(static_cast<__half*>(p.out) + at) = __floats2half2_rn(z0, z1);
            } else if constexpr (kEpi == Epi::BiasGeluF16) {
                *reinterpret_cast<__half2*>(static_cast<__half*>(p.out) + at) =
                    __floats2half2_rn(gelu_tanh(z0), gelu_tanh(z1));
            } else if constexpr (kEpi == Epi::BiasF32) {
                *reinterpret_cast<float2*>(static_cast<float*>(p.out) + at) = make_float2(z0, z1);
            } else {
                // h += gate * (acc + bias); null mods: gate 1 (the ungated cross output).
                float2 gv = make_float2(1.0f, 1.0f);
                if (p.mods != nullptr) {
                    const int frame = (row % p.tokens) / p.tokens_per_frame;
                    gv = *reinterpret_cast<const float2*>(
                        p.mods + (static_cast<size_t>(frame) * p.mod_k + p.gate) * p.n + col);
                }
                float2 hv = *reinterpret_cast<float2*>(p.h + at);
                hv.x += gv.x * z0;
                hv.y += gv.y * z1;
                *reinterpret_cast<float2*>(p.h + at) = hv;
                acc[r] = hv.x;  // kept for the row statistics below
                acc[r + 1] = hv.y;
            }
        }
        if constexpr (kEpi == Epi::GatedResidual) {
            if (p.stats_out != nullptr) residual_stats(p, acc, row_base, n0, t);
        }
    }
}

// ---- The LayerNorm prologue ----

__device__ __forceinline__ uint32_t pack_f16x2(float lo, float hi) {
    const __half2 h = __floats2half2_rn(lo, hi);
    uint32_t u;
    memcpy(&u, &h, 4);
    return u;
}

// (mean, rstd) of row `row` of X from its ln_parts partial pairs; the four lanes of a quad
// (q = t % 4) share the row and each combines every fourth pair. A row past M gives (0, 0):
// its A values are then 0 whatever TMA's zero fill left. Every lane must call it (shuffles).
__device__ __forceinline__ float2 ln_row_stats(const GemmSm90Params& p, int row, int q) {
    using T = Sm90Traits;
    const bool live = row < p.m;
    const float inv_k = 1.0f / static_cast<float>(p.k);
    const float* pairs = p.ln_stats + static_cast<size_t>(live ? row : 0) * p.ln_parts * 2;
    if (p.ln_parts == 1) {  // one pair over the whole row (ln_stats_*): used as it is
        const float2 s = live ? make_float2(pairs[0], pairs[1]) : make_float2(0.0f, 0.0f);
        return make_float2(s.x, live ? rsqrtf(s.y * inv_k + T::kLnEps) : 0.0f);
    }
    // Chan et al.: mean = sum n_i mean_i / K; M2 = sum (M2_i + n_i (mean_i - mean)^2).
    float s1 = 0.0f;
    for (int i = q; live && i < p.ln_parts; i += 4) {
        const int n = min(p.ln_part_cols, p.k - i * p.ln_part_cols);
        s1 += static_cast<float>(n) * pairs[2 * i];
    }
    const float mean = quad_sum(s1) * inv_k;
    float m2 = 0.0f;
    for (int i = q; live && i < p.ln_parts; i += 4) {
        const int n = min(p.ln_part_cols, p.k - i * p.ln_part_cols);
        const float d = pairs[2 * i] - mean;
        m2 += pairs[2 * i + 1] + static_cast<float>(n) * d * d;
    }
    m2 = quad_sum(m2);
    return make_float2(mean, live ? rsqrtf(m2 * inv_k + T::kLnEps) : 0.0f);
}

// A consumer thread's view of the prologue for one output tile: its two rows (tile rows
// r and r + 8 of its A fragment, "register layout of A"), their statistics and, with a
// modulation, their frames' shift and scale vectors.
struct LnRows {
    float mean[2], rstd[2];
    const float* shift[2];  // null without modulation or past M
    const float* scale[2];
};

__device__ __forceinline__ LnRows ln_rows(const GemmSm90Params& p, int m0, int tile_row, int q) {
    LnRows r;
SM90_UNROLL
    for (int h = 0; h < 2; ++h) {
        const int row = m0 + tile_row + 8 * h;
        const float2 s = ln_row_stats(p, row, q);
        r.mean[h] = s.x;
        r.rstd[h] = s.y;
        r.shift[h] = nullptr;
        r.scale[h] = nullptr;
        if (p.ln_mods != nullptr && row < p.m) {
            const int frame = (row % p.tokens) / p.tokens_per_frame;
            const float* fm = p.ln_mods + static_cast<size_t>(frame) * p.ln_mod_k * p.k;
            r.shift[h] = fm + static_cast<size_t>(p.ln_shift) * p.k;
            r.scale[h] = fm + static_cast<size_t>(p.ln_scale) * p.k;
        }
    }
    return r;
}

// The modulation of k-tile k0 for the thread's A registers: for k16 step j and register i
// (row half h = i & 1, k half i >> 1), columns k0 + 16 j + 8 (i >> 1) + 2 q + {0, 1}:
// (1 + scale, shift) pairs, identity past K or without a modulation. Loaded before the
// thread waits for the slot, so the loads overlap the wait.
struct LnMods {
    float2 mul[4][4];
    float2 add[4][4];
};

__device__ __forceinline__ void ln_mods(const GemmSm90Params& p, const LnRows& r, int k0, int q,
                                        LnMods& m) {
SM90_UNROLL
    for (int j = 0; j < 4; ++j) {
SM90_UNROLL
        for (int i = 0; i < 4; ++i) {
            const int h = i & 1;
            const int k = k0 + 16 * j + 8 * (i >> 1) + 2 * q;
            m.mul[j][i] = make_float2(1.0f, 1.0f);
            m.add[j][i] = make_float2(0.0f, 0.0f);
            if (r.shift[h] != nullptr && k < p.k) {
                const float2 sc = *reinterpret_cast<const float2*>(r.scale[h] + k);
                m.mul[j][i] = make_float2(1.0f + sc.x, 1.0f + sc.y);
                m.add[j][i] = *reinterpret_cast<const float2*>(r.shift[h] + k);
            }
        }
    }
}

// The thread's f16 A registers for the four k16 steps of the k-tile staged at `stage` (two
// 128-byte-swizzled boxes of 32 f32 k x 128 rows): element (row, kk) of the tile lies in
// box kk / 32, row `row`, 16-byte unit ((kk % 32) / 4) ^ (row % 8) (SWIZZLE_128B: the unit
// index XOR the row within the 1024-byte repeat).
__device__ __forceinline__ void ln_form_a(const unsigned char* stage, const LnRows& r,
                                          const LnMods& m, int tile_row, int q,
                                          uint32_t (&a)[4][4]) {
    using T = Sm90Traits;
SM90_UNROLL
    for (int j = 0; j < 4; ++j) {
SM90_UNROLL
        for (int i = 0; i < 4; ++i) {
            const int h = i & 1;
            const int row = tile_row + 8 * h;
            const int kk = 16 * j + 8 * (i >> 1) + 2 * q;
            const int byte = (kk % 32) * 4;
            const int unit = (byte >> 4) ^ (row & 7);
            const unsigned char* at =
                stage + (kk / 32) * T::kLnBox + row * 128 + (unit << 4) + (byte & 15);
            const float2 x = *reinterpret_cast<const float2*>(at);  // the staged X pair
            const float y0 = (x.x - r.mean[h]) * r.rstd[h] * m.mul[j][i].x + m.add[j][i].x;
            const float y1 = (x.y - r.mean[h]) * r.rstd[h] * m.mul[j][i].y + m.add[j][i].y;
            a[j][i] = pack_f16x2(y0, y1);
        }
    }
}

// The output tiles in launch order, grouped rasterisation: tiles are numbered group by
// group, a group being kGroupRows row tiles by every column tile, column-major inside the
// group (tile i of a group: row tile i % rows, column tile i / rows). CTAs that run at the
// same time then cover a few row tiles across many columns instead of one row across all
// of them, so both A's rows and W's columns are reused from L2 (Triton's and CUTLASS's
// "swizzle" of the tile order: the row tiles of a group share each W column tile).
struct TileOrder {
    static constexpr int kGroupRows = 8;
    int row_tiles, col_tiles;
    __device__ __forceinline__ int count() const { return row_tiles * col_tiles; }
    __device__ __forceinline__ void at(int tile, int& row, int& col) const {
        const int per_group = kGroupRows * col_tiles;
        const int first = (tile / per_group) * kGroupRows;
        const int rows = min(row_tiles - first, kGroupRows);
        const int i = tile % per_group;
        row = first + i % rows;
        col = i / rows;
    }
};

// kLn: A is adaLN(X) formed from f32 X by the consumers (the `ln` entries, top of the file).
template <Epi kEpi, bool kLn = false>
__device__ __forceinline__ void gemm_sm90(const GemmSm90Params& p, unsigned char* smem) {
    using T = Sm90Traits;
    constexpr int S = T::kStages;
    constexpr uint32_t kTileA = kLn ? T::kLnTileA : T::kTileA;
    constexpr uint32_t kStage = kLn ? T::kLnStageBytes : T::kStageBytes;
    __shared__ uint64_t full[S], empty[S];
    const uint32_t base = ptx::smem_u32(smem);
    const uint32_t ring = (base + 1023u) & ~1023u;  // the swizzle repeats every 1024 bytes
    unsigned char* ring_ptr = smem + (ring - base);
    const int warpgroup = threadIdx.x / 128;
    const int k_tiles = (p.k + T::kBK - 1) / T::kBK;
    // SwiGLU: 64 output columns per tile (u rows n0.., g rows dff + n0..).
    const int block_n = kEpi == Epi::Swiglu ? T::kBoxW : T::kBN;
    const TileOrder order{(p.m + T::kBM - 1) / T::kBM, (p.n + block_n - 1) / block_n};

    if (threadIdx.x == 0) {
        for (int s = 0; s < S; ++s) {
            ptx::mbarrier_init(&full[s], 1);
            ptx::mbarrier_init(&empty[s], 128 * T::kConsumers);
        }
        // The initialised barriers are used by the TMA unit (complete_tx): make the
        // generic-proxy initialisation visible to the async proxy.
        ptx::fence_proxy_async();
    }
    __syncthreads();  // every thread sees initialised barriers before any use

    // Persistent: CTA b takes tiles b, b + gridDim.x, ... (the grid is at most one CTA per
    // SM, or one per tile). The ring runs on across tiles: `it` counts this CTA's k-tiles
    // over all its tiles, slot it % S, round it / S, so the producer loads the next tile's
    // first k-tiles while the consumers run this tile's epilogue.
    if (warpgroup == 0) {
        ptx::setmaxnreg_dec<T::kProducerRegs>();
        if (threadIdx.x < 32 && ptx::elect_one()) {
            int it = 0;
            for (int tile = blockIdx.x; tile < order.count(); tile += gridDim.x) {
                int row, col;
                order.at(tile, row, col);
                const int m0 = row * T::kBM, n0 = col * block_n;
                const int w_row0 = n0;
                const int w_row1 =
                    kEpi == Epi::Swiglu ? p.n + n0 : n0 + static_cast<int>(T::kBoxW);
                for (int kt = 0; kt < k_tiles; ++kt, ++it) {
                    const int s = it % S;
                    // Slot s is free once both consumers released k-tile it - S.
                    ptx::mbarrier_wait(&empty[s], ((it / S) & 1) ^ 1);
                    ptx::mbarrier_arrive_expect_tx(&full[s], kStage);
                    unsigned char* a = ring_ptr + s * kStage;
                    unsigned char* w = a + kTileA;
                    const int k0 = kt * T::kBK;
                    ptx::tma_load_2d(a, &p.map_a, &full[s], k0, m0);
                    if constexpr (kLn)  // the second 32 f32 k of the k-tile
                        ptx::tma_load_2d(a + T::kLnBox, &p.map_a, &full[s], k0 + T::kLnBoxK, m0);
                    ptx::tma_load_2d(w, &p.map_w, &full[s], k0, w_row0);
                    ptx::tma_load_2d(w + T::kBoxW * T::kRowBytes, &p.map_w, &full[s], k0,
                                     w_row1);
                }
            }
        }
        return;  // nothing after this reads or writes shared memory for the producer
    }

    ptx::setmaxnreg_inc<T::kConsumerRegs>();
    const int wg = warpgroup - 1;
    const int t = threadIdx.x % 128;
    float acc[T::kAcc];
    int it = 0;
    for (int tile = blockIdx.x; tile < order.count(); tile += gridDim.x) {
        int row, col;
        order.at(tile, row, col);
        if constexpr (kLn) {
            // A from registers: form, issue, retire, release, one k-tile at a time.
            const int q = t % 4;
            const int tile_row = wg * T::kWgRows + 16 * (t / 32) + (t % 32) / 4;
            const LnRows rows = ln_rows(p, row * T::kBM, tile_row, q);
            for (int kt = 0; kt < k_tiles; ++kt, ++it) {
                const int s = it % S;
                LnMods mods;
                ln_mods(p, rows, kt * T::kBK, q, mods);
#if !defined(EMU_VARIANT_ln_no_full_wait)  // planted race when defined (top of the file)
                ptx::mbarrier_wait(&full[s], (it / S) & 1);
#endif
                uint32_t a[4][4];
                ln_form_a(ring_ptr + s * kStage, rows, mods, tile_row, q, a);
                const uint32_t w = ring + s * kStage + kTileA;
                ptx::wgmma_fence();  // the A registers were just written
SM90_UNROLL
                for (int j = 0; j < T::kBK / 16; ++j)
                    ptx::wgmma_f16_rs<T::kBN>(acc, a[j], kmajor_sw128_desc(w, j), kt > 0 || j > 0);
                ptx::wgmma_commit();
                ptx::wgmma_wait<0>();  // the wgmmas have read A's registers and W's slot
                ptx::mbarrier_arrive(&empty[s]);
            }
            epilogue<kEpi>(p, acc, row * T::kBM, col * block_n, wg, t);
            continue;
        }
        [[maybe_unused]] const int first = it;  // this tile's first k-tile
        for (int kt = 0; kt < k_tiles; ++kt, ++it) {
            const int s = it % S;
#if !defined(EMU_VARIANT_no_full_wait)  // planted race when defined (top of the file)
            ptx::mbarrier_wait(&full[s], (it / S) & 1);  // k-tile it has landed in slot s
#endif
            const uint32_t a = ring + s * T::kStageBytes + wg * T::kWgRows * T::kRowBytes;
            const uint32_t w = ring + s * T::kStageBytes + T::kTileA;
            // The accumulators were last touched by the previous group, or by the previous
            // tile's epilogue (scale-d 0 on the tile's first step starts them afresh).
            ptx::wgmma_fence();
SM90_UNROLL
            for (int j = 0; j < T::kBK / 16; ++j)
                ptx::wgmma_f16_ss<T::kBN>(acc, kmajor_sw128_desc(a, j), kmajor_sw128_desc(w, j),
                                          kt > 0 || j > 0);
            ptx::wgmma_commit();
#if defined(EMU_VARIANT_early_release)
            ptx::mbarrier_arrive(&empty[s]);  // planted race: the wgmmas may still read slot s
            ptx::wgmma_wait<0>();
#else
            // At most this k-tile's group is pending: the previous one, which read slot
            // (it - 1) % S, has retired, so that slot may be refilled.
            ptx::wgmma_wait<1>();
            if (it > first) ptx::mbarrier_arrive(&empty[(it - 1) % S]);
#endif
        }
        ptx::wgmma_wait<0>();  // the last group has retired: the accumulators are final
#if !defined(EMU_VARIANT_early_release)
        ptx::mbarrier_arrive(&empty[(it - 1) % S]);  // the tile's last k-tile is read
#endif
        epilogue<kEpi>(p, acc, row * T::kBM, col * block_n, wg, t);
    }
}

extern "C" __global__ void __launch_bounds__(Sm90Traits::kThreads, 1)
    gemm_sm90_bias_f16(const __grid_constant__ GemmSm90Params p) {
    extern __shared__ __align__(16) unsigned char smem[];
    gemm_sm90<Epi::BiasF16>(p, smem);
}
EMU_REGISTER_KERNEL(gemm_sm90_bias_f16, GemmSm90Params)

extern "C" __global__ void __launch_bounds__(Sm90Traits::kThreads, 1)
    gemm_sm90_bias_gelu_f16(const __grid_constant__ GemmSm90Params p) {
    extern __shared__ __align__(16) unsigned char smem[];
    gemm_sm90<Epi::BiasGeluF16>(p, smem);
}
EMU_REGISTER_KERNEL(gemm_sm90_bias_gelu_f16, GemmSm90Params)

extern "C" __global__ void __launch_bounds__(Sm90Traits::kThreads, 1)
    gemm_sm90_bias_f32(const __grid_constant__ GemmSm90Params p) {
    extern __shared__ __align__(16) unsigned char smem[];
    gemm_sm90<Epi::BiasF32>(p, smem);
}
EMU_REGISTER_KERNEL(gemm_sm90_bias_f32, GemmSm90Params)

extern "C" __global__ void __launch_bounds__(Sm90Traits::kThreads, 1)
    gemm_sm90_gated_residual(const __grid_constant__ GemmSm90Params p) {
    extern __shared__ __align__(16) unsigned char smem[];
    gemm_sm90<Epi::GatedResidual>(p, smem);
}
EMU_REGISTER_KERNEL(gemm_sm90_gated_residual, GemmSm90Params)

extern "C" __global__ void __launch_bounds__(Sm90Traits::kThreads, 1)
    gemm_sm90_swiglu(const __grid_constant__ GemmSm90Params p) {
    extern __shared__ __align__(16) unsigned char smem[];
    gemm_sm90<Epi::Swiglu>(p, smem);
}
EMU_REGISTER_KERNEL(gemm_sm90_swiglu, GemmSm90Params)

// ---- The LayerNorm / adaLN prologue entries (top of the file) ----

extern "C" __global__ void __launch_bounds__(Sm90Traits::kThreads, 1)
    gemm_sm90_ln_bias_f16(const __grid_constant__ GemmSm90Params p) {
    extern __shared__ __align__(16) unsigned char smem[];
    gemm_sm90<Epi::BiasF16, true>(p, smem);
}
EMU_REGISTER_KERNEL(gemm_sm90_ln_bias_f16, GemmSm90Params)

extern "C" __global__ void __launch_bounds__(Sm90Traits::kThreads, 1)
    gemm_sm90_ln_bias_f32(const __grid_constant__ GemmSm90Params p) {
    extern __shared__ __align__(16) unsigned char smem[];
    gemm_sm90<Epi::BiasF32, true>(p, smem);
}
EMU_REGISTER_KERNEL(gemm_sm90_ln_bias_f32, GemmSm90Params)

extern "C" __global__ void __launch_bounds__(Sm90Traits::kThreads, 1)
    gemm_sm90_ln_swiglu(const __grid_constant__ GemmSm90Params p) {
    extern __shared__ __align__(16) unsigned char smem[];
    gemm_sm90<Epi::Swiglu, true>(p, smem);
}
EMU_REGISTER_KERNEL(gemm_sm90_ln_swiglu, GemmSm90Params)
