// FP16 tensor-core GEMM with fused epilogues: C[M, N] = A[M, K] * W[N, K]^T.
//
// A: f16 activations, row-major [M, K]. W: f16 weights [N, K] (PyTorch Linear layout), which
// is exactly the `.col` B operand of mma.sync.m16n8k16.row.col: a W tile in shared memory
// (rows = n, k contiguous) loads with plain, non-transposed ldmatrix. f32 accumulation.
//
// Entry points (one per fused epilogue, the epilogue chosen at compile time):
//   gemm_bias_f16        out_f16[M, N]  = acc + bias                        (bias optional)
//   gemm_gated_residual  h_f32[M, N]   += mods[frame(r), gate, n] * (acc + bias[n])
//   gemm_swiglu          out_f16[M, Dff] = SiLU(u) * g,  [u; g] = A * W13^T (W13 [2 Dff, K])
//   gemm_bias_f32        out_f32[M, N]  = acc + bias                        (bias optional)
//   gemm_bias_gelu_f16   out_f16[M, N]  = GELU_tanh(acc + bias)             (bias optional)
//
// Shape contract (checked with clear errors by kernels/src/gemm.rs before any launch):
//   M >= 1, any value (ragged rows: zero-filled loads, guarded stores);
//   N % 8 == 0 (ragged column tiles: zero-filled W rows, guarded stores; each thread stores
//   column pairs, so N even is what the stores need, 8 keeps every row 16-byte aligned);
//   K % 8 == 0 (every row of A and W starts 16-byte aligned for cp.async; the K tail of the
//   last k-tile is zero-filled, so K need not be a multiple of the block's BK).
//
// Pipeline: a GemmTraits::kStages-deep cp.async ring of (A, W) k-tiles, one __syncthreads
// per k-tile (wait for tile kt, barrier, refill the slot tile kt-1 used, compute tile kt).
//
// Test-only variants (kernels/tests/race_check.rs; never built by nvcc), each a planted race
// the emulator's race checker must report:
// streamdit-emu-variant: no_tile_sync
//   the main loop's __syncthreads is left out: a warp's ldmatrix reads k-tile data another
//   thread's cp.async wrote (read-after-write), and refills overwrite a slot other warps may
//   still read (write-after-read);
// streamdit-emu-variant: refill_before_sync
//   the refill is issued before the barrier instead of after it: the data of tile kt is still
//   ordered (wait, barrier) but the copy into the slot tile kt-1 used is not ordered after
//   the other warps' reads of it in the previous iteration (write-after-read across a loop
//   iteration; in the emulator the copy lands only at the wait, so results stay right).
#include <cuda_fp16.h>
#include <stdint.h>

#include "common/ptx.cuh"

// `#pragma unroll` for nvcc; the host compiler of the emulator does not know the pragma.
#if PTX_EMU
#define GEMM_UNROLL
#else
#define GEMM_UNROLL _Pragma("unroll")
#endif

// ---------------------------------------------------------------------------------------
// Tile traits.
//
// Block tile 128 x 128 x 32, 8 warps as 2 (M) x 4 (N), warp tile 64 x 32 = 4 x 4 mma tiles
// of m16n8 (64 f32 accumulators per thread), 4 stages.
//  - Shared memory: 4 stages * (128 + 128) rows * 32 halves * 2 B = 64 KiB per CTA, so an
//    H100 SM (228 KiB) holds 3 by memory; registers (~128/thread * 256 threads) limit it to
//    2 CTAs = 16 warps per SM (__launch_bounds__(256, 2): <= 128 registers, no spills),
//    enough warps to hide ldmatrix/mma latency with one CTA's barrier in flight.
//    64 KiB > 48 KiB: a real launch must raise cudaFuncAttributeMaxDynamicSharedMemorySize.
//  - Arithmetic intensity per k-tile: 2*128*128*32 FLOP for (128+128)*32*2 B of loads =
//    64 FLOP/B. HBM sees far less (every operand once at the 4b shapes: 600-3500 FLOP/B,
//    above the H100's 989e12/3.35e12 = 295) because the grid's x (fast) dimension runs
//    over N: the CTAs in flight share their A row-block and the whole W (18 MiB at 3072 x
//    3072) stays L2-resident. The L2 -> SM feed is the limit of this tile: 64 FLOP/B at
//    989 TFLOP/s would need 15 TB/s, so this mma.sync tile tops out near L2 bandwidth x 64;
//    a 128 x 256 tile (85 FLOP/B, 1 CTA/SM) or the later wgmma path is the next step.
//  - Per warp and k16 step: 4 ldmatrix.x4 for A + 2 for W feed 16 mma (6 LDSM : 16 HMMA).
//  - 4 stages of BK = 32 keep 3 k-tiles (48 KiB) in flight per CTA, ~96 KiB per SM, enough
//    to cover HBM latency at 3.35 TB/s.
//  - At the streamdit-4b shapes (M = 16384, N in {9216, 3072, 16384 (w13 -> 8192 out), 3072})
//    every M and N is a multiple of the tile: no ragged tiles in the hot path (only the
//    final layer, N = 32, fills a quarter of its column tile; it is memory-bound anyway).
// ---------------------------------------------------------------------------------------
struct GemmTraits {
    static constexpr int kBM = 128;
    static constexpr int kBN = 128;
    static constexpr int kBK = 32;
    static constexpr int kStages = 4;
    static constexpr int kWarpsM = 2;
    static constexpr int kWarpsN = 4;
    static constexpr int kThreads = kWarpsM * kWarpsN * 32;
    static constexpr int kWarpM = kBM / kWarpsM;  // 64
    static constexpr int kWarpN = kBN / kWarpsN;  // 32
    static constexpr int kMmaM = kWarpM / 16;     // 4 m16 tiles per warp
    static constexpr int kMmaN = kWarpN / 8;      // 4 n8 tiles per warp
    static constexpr int kChunks = kBK / 8;       // 16-byte chunks per smem row (4)
    static constexpr int kTileA = kBM * kBK;      // halves per stage
    static constexpr int kTileW = kBN * kBK;
    static constexpr int kStageHalves = kTileA + kTileW;
    static constexpr int kSmemBytes = kStages * kStageHalves * 2;

    static_assert(kBM % (kWarpsM * 16) == 0, "warp M tile must be whole m16 tiles");
    static_assert(kBN % (kWarpsN * 16) == 0, "warp N tile must be pairs of n8 tiles (ldmatrix.x4)");
    static_assert(kBK % 16 == 0, "BK must be whole k16 mma steps");
    static_assert(kChunks == 4, "the swizzle below is written for 64-byte (4-chunk) rows");
    static_assert((kBM * kChunks) % kThreads == 0, "A tile chunks must split evenly over threads");
    static_assert((kBN * kChunks) % kThreads == 0, "W tile chunks must split evenly over threads");
    static_assert(kMmaN % 2 == 0, "W fragments load two n8 tiles per ldmatrix.x4");
    static_assert(kStages >= 2 && kStages <= 8, "cp.async.wait_group takes kStages - 2 < 8");
    static_assert(kSmemBytes <= 227 * 1024, "must fit one SM's shared memory");
    // SwiGLU pairing (w_row<true>, w_pair_row<true>): the W tile is 64 u rows + 64 g rows
    // (a power of two, masked with kBN/2 - 1), and each warp's n8 tiles are one u pair and
    // one g pair.
    static_assert(((kBN / 2) & (kBN / 2 - 1)) == 0, "paired W tile halves must be a power of 2");
    static_assert(kMmaN == 4, "paired mapping: n8 tiles {0,1} are u, {2,3} the matching g");
};

// Shared-memory layout of one tile: rows of kBK = 32 halves (64 bytes, 4 chunks of 16 B).
// Chunk c of row r is stored at chunk c ^ ((r >> 1) & 3) of that row. ldmatrix reads, per
// 8-lane phase, one chunk from each of 8 consecutive rows r0..r0+7 (r0 % 8 == 0); two 64-byte
// rows share one 128-byte bank line, so unswizzled rows r and r+2 would hit the same banks
// (4-way conflicts). With the XOR, row r lands at byte (r & 1) * 64 + (c ^ ((r >> 1) & 3)) * 16
// of its bank line: the 8 rows take the 8 distinct 16-byte slots, i.e. all 32 banks once.
// The cp.async stores (one 16-byte chunk per thread, 8 rows x 4 chunks per warp) cover four
// whole bank lines and are conflict-free with or without the swizzle.
__device__ __forceinline__ int swizzle(int row, int chunk) {
    return row * GemmTraits::kBK + ((chunk ^ ((row >> 1) & 3)) << 3);
}

// Which W row feeds shared-memory row r (0 <= r < kBN) of the CTA's W tile, and whether it
// exists. Plain: W row n0 + r. Paired (SwiGLU on W13 = [u; g], 2*dff rows): rows [0, 64) of
// the tile are u columns n0 .. n0+63 (W13 rows n0 + r) and rows [64, 128) the matching g
// columns (W13 rows dff + n0 + r - 64), so one CTA holds both halves of 64 output columns.
template <bool kPaired>
__device__ __forceinline__ int w_row(int n0, int r, int n_or_dff, bool* valid) {
    if (kPaired) {
        const int col = n0 + (r & (GemmTraits::kBN / 2 - 1));
        *valid = col < n_or_dff;
        return r < GemmTraits::kBN / 2 ? col : n_or_dff + col;
    }
    *valid = n0 + r < n_or_dff;
    return n0 + r;
}

// Issues the cp.async copies of k-tile `kt` into stage `stage` (one commit group by the
// caller). Rows beyond M or N and the K tail are zero-filled (src_bytes = 0 reads nothing,
// so the clamped source pointer is never dereferenced out of bounds).
template <bool kPaired>
__device__ __forceinline__ void load_tile(__half* s_stage, const __half* a, const __half* w,
                                          int m, int n_or_dff, int k, int m0, int n0, int kt) {
    using T = GemmTraits;
    __half* s_a = s_stage;
    __half* s_w = s_stage + T::kTileA;
    const int k0 = kt * T::kBK;
GEMM_UNROLL
    for (int i = 0; i < T::kBM * T::kChunks / T::kThreads; ++i) {
        const int id = threadIdx.x + i * T::kThreads;
        const int r = id / T::kChunks;
        const int c = id % T::kChunks;
        const int gk = k0 + c * 8;
        const bool ok = m0 + r < m && gk < k;
        const __half* src = ok ? a + static_cast<size_t>(m0 + r) * k + gk : a;
        ptx::cp_async_16_zfill(s_a + swizzle(r, c), src, ok ? 16u : 0u);
    }
GEMM_UNROLL
    for (int i = 0; i < T::kBN * T::kChunks / T::kThreads; ++i) {
        const int id = threadIdx.x + i * T::kThreads;
        const int r = id / T::kChunks;
        const int c = id % T::kChunks;
        const int gk = k0 + c * 8;
        bool row_ok;
        const int gr = w_row<kPaired>(n0, r, n_or_dff, &row_ok);
        const bool ok = row_ok && gk < k;
        const __half* src = ok ? w + static_cast<size_t>(gr) * k + gk : w;
        ptx::cp_async_16_zfill(s_w + swizzle(r, c), src, ok ? 16u : 0u);
    }
}

// First shared-memory row of the warp's n8-tile pair p (tiles 2p, 2p+1; 16 rows).
// Plain: the warp's 32 columns are contiguous. Paired: pair 0 is 16 u rows, pair 1 the 16 g
// rows for the same output columns, so acc[i][j] (u) and acc[i][j + 2] (g) match.
template <bool kPaired>
__device__ __forceinline__ int w_pair_row(int warp_n, int p) {
    using T = GemmTraits;
    if (kPaired) return p * (T::kBN / 2) + warp_n * (T::kWarpN / 2);
    return warp_n * T::kWarpN + p * 16;
}

// The main loop: acc (destination) = A[m0.., :] * W[tile rows, :]^T for this warp's 64 x 32,
// through the kStages ring at s (the kernel's dynamic shared memory, GemmTraits::kSmemBytes).
// acc[i][j][0..3] is the m16n8 fragment (PTX ISA "Matrix Fragments for mma.m16n8k16"):
// rows (lane / 4) and (lane / 4 + 8) of m16 tile i, columns 2 * (lane % 4) + {0, 1} of n8
// tile j.
template <bool kPaired>
__device__ __forceinline__ void gemm_mainloop(float (&acc)[GemmTraits::kMmaM][GemmTraits::kMmaN][4],
                                              __half* s, const __half* a, const __half* w,
                                              int m, int n_or_dff, int k, int m0, int n0) {
    using T = GemmTraits;

    const int lane = threadIdx.x % 32;
    const int warp = threadIdx.x / 32;
    const int warp_m = warp / T::kWarpsN;
    const int warp_n = warp % T::kWarpsN;

GEMM_UNROLL
    for (int i = 0; i < T::kMmaM; ++i)
GEMM_UNROLL
        for (int j = 0; j < T::kMmaN; ++j)
GEMM_UNROLL
            for (int e = 0; e < 4; ++e) acc[i][j][e] = 0.0f;

    const int k_tiles = (k + T::kBK - 1) / T::kBK;

    // Prologue: tiles 0 .. kStages-2, one group each (empty groups past the end keep the
    // group count, and so the wait below, uniform).
GEMM_UNROLL
    for (int st = 0; st < T::kStages - 1; ++st) {
        if (st < k_tiles) load_tile<kPaired>(s + st * T::kStageHalves, a, w, m, n_or_dff, k, m0, n0, st);
        ptx::cp_async_commit();
    }

    // ldmatrix.x4 lane roles. A (m16 x k16): matrix j = lane / 8 is rows +8*(j % 2), k chunk
    // +(j / 2), which is the a0..a3 register order of the mma A fragment. W (two n8 x k16):
    // matrix j is n rows +8*(j / 2), k chunk +(j % 2): b0, b1 of n8 tile 2p, then of 2p+1.
    const int ld_row = lane % 8;
    const int ld_mat = lane / 8;
    const int a_row = warp_m * T::kWarpM + (ld_mat % 2) * 8 + ld_row;
    const int a_chunk = ld_mat / 2;
    const int w_row_off = (ld_mat / 2) * 8 + ld_row;
    const int w_chunk = ld_mat % 2;

    for (int kt = 0; kt < k_tiles; ++kt) {
        // Tile kt has landed for this thread (at most kStages-2 newer groups pending); the
        // barrier makes it visible to all and guarantees every warp is done reading the
        // slot of tile kt-1, which the refill below overwrites.
        ptx::cp_async_wait<T::kStages - 2>();
        const int next = kt + T::kStages - 1;
#if defined(EMU_VARIANT_refill_before_sync)
        if (next < k_tiles) {  // planted race, see the top of the file
            load_tile<kPaired>(s + (next % T::kStages) * T::kStageHalves, a, w, m, n_or_dff, k, m0, n0,
                               next);
        }
        ptx::cp_async_commit();
        __syncthreads();
#else
#if !defined(EMU_VARIANT_no_tile_sync)  // planted race when defined, see the top of the file
        __syncthreads();
#endif
        if (next < k_tiles) {
            load_tile<kPaired>(s + (next % T::kStages) * T::kStageHalves, a, w, m, n_or_dff, k, m0, n0,
                               next);
        }
        ptx::cp_async_commit();
#endif

        const __half* s_a = s + (kt % T::kStages) * T::kStageHalves;
        const __half* s_w = s_a + T::kTileA;
GEMM_UNROLL
        for (int kk = 0; kk < T::kBK / 16; ++kk) {
            uint32_t af[T::kMmaM][4];
            uint32_t bf[T::kMmaN][2];
GEMM_UNROLL
            for (int i = 0; i < T::kMmaM; ++i) {
                ptx::ldmatrix_x4(af[i], s_a + swizzle(a_row + i * 16, kk * 2 + a_chunk));
            }
GEMM_UNROLL
            for (int p = 0; p < T::kMmaN / 2; ++p) {
                uint32_t r[4];
                ptx::ldmatrix_x4(r, s_w + swizzle(w_pair_row<kPaired>(warp_n, p) + w_row_off,
                                                  kk * 2 + w_chunk));
                bf[2 * p][0] = r[0];
                bf[2 * p][1] = r[1];
                bf[2 * p + 1][0] = r[2];
                bf[2 * p + 1][1] = r[3];
            }
GEMM_UNROLL
            for (int i = 0; i < T::kMmaM; ++i)
GEMM_UNROLL
                for (int j = 0; j < T::kMmaN; ++j) ptx::mma_m16n8k16_f16_f32(acc[i][j], af[i], bf[j], acc[i][j]);
        }
    }
    // Retire the trailing (empty) groups; nothing reads shared memory after this.
    ptx::cp_async_wait<0>();
}

// Fragment coordinates of this thread: row of m16 tile i, half h (0: rows +0, 1: rows +8).
struct FragCoord {
    int row0;  // first row of the warp tile + lane / 4
    int col0;  // first column of the warp tile + 2 * (lane % 4) (plain mapping)
};

__device__ __forceinline__ FragCoord frag_coord(int m0, int n0, int warp_cols) {
    using T = GemmTraits;
    const int lane = threadIdx.x % 32;
    const int warp = threadIdx.x / 32;
    return FragCoord{m0 + (warp / T::kWarpsN) * T::kWarpM + lane / 4,
                     n0 + (warp % T::kWarpsN) * warp_cols + 2 * (lane % 4)};
}

// Bias pair at columns (col, col + 1), zero when there is no bias.
__device__ __forceinline__ float2 bias_pair(const __half* bias, int col) {
    if (bias == nullptr) return make_float2(0.0f, 0.0f);
    const __half2 b = *reinterpret_cast<const __half2*>(bias + col);
    return __half22float2(b);
}

// ---------------------------------------------------------------------------------------
// (a) out_f16 = acc + bias.
// ---------------------------------------------------------------------------------------
struct GemmBiasF16Params {
    const __half* a;     // (M, K)
    const __half* w;     // (N, K)
    const __half* bias;  // (N) or null
    __half* out;         // (M, N)
    int m;
    int n;
    int k;
};

// The epilogue of (a) and (e): out = f16(act(acc + bias)).
struct Identity {
    __device__ __forceinline__ float operator()(float z) const { return z; }
};

// GELU_tanh(z) = 0.5 z (1 + tanh(sqrt(2/pi) (z + 0.044715 z^3))) with the accurate tanhf
// (elementwise.cu's GeluTanhOp, the same expression).
struct GeluTanh {
    __device__ __forceinline__ float operator()(float z) const {
        return 0.5f * z * (1.0f + tanhf(0.7978845608f * (z + 0.044715f * z * z * z)));
    }
};

template <class Act>
__device__ __forceinline__ void gemm_bias_act_f16(const GemmBiasF16Params& p, unsigned char* smem, Act act) {
    using T = GemmTraits;
    const int m0 = blockIdx.y * T::kBM;
    const int n0 = blockIdx.x * T::kBN;
    float acc[T::kMmaM][T::kMmaN][4];
    gemm_mainloop<false>(acc, reinterpret_cast<__half*>(smem), p.a, p.w, p.m, p.n, p.k, m0, n0);
    const FragCoord fc = frag_coord(m0, n0, T::kWarpN);
GEMM_UNROLL
    for (int j = 0; j < T::kMmaN; ++j) {
        const int col = fc.col0 + j * 8;
        if (col >= p.n) continue;
        const float2 b = bias_pair(p.bias, col);
GEMM_UNROLL
        for (int i = 0; i < T::kMmaM; ++i)
GEMM_UNROLL
            for (int h = 0; h < 2; ++h) {
                const int row = fc.row0 + i * 16 + h * 8;
                if (row < p.m) {
                    *reinterpret_cast<__half2*>(p.out + static_cast<size_t>(row) * p.n + col) =
                        __floats2half2_rn(act(acc[i][j][2 * h] + b.x), act(acc[i][j][2 * h + 1] + b.y));
                }
            }
    }
}

extern "C" __global__ void __launch_bounds__(GemmTraits::kThreads, 2)
    gemm_bias_f16(GemmBiasF16Params p) {
    extern __shared__ __align__(16) unsigned char smem[];
    gemm_bias_act_f16(p, smem, Identity{});
}
EMU_REGISTER_KERNEL(gemm_bias_f16, GemmBiasF16Params)

// ---------------------------------------------------------------------------------------
// (e) out_f16 = GELU_tanh(acc + bias): Wan's FFN up projection (docs/wan.md section 2.3) and
// its text-embedding MLP; the same parameters as (a).
// ---------------------------------------------------------------------------------------
extern "C" __global__ void __launch_bounds__(GemmTraits::kThreads, 2)
    gemm_bias_gelu_f16(GemmBiasF16Params p) {
    extern __shared__ __align__(16) unsigned char smem[];
    gemm_bias_act_f16(p, smem, GeluTanh{});
}
EMU_REGISTER_KERNEL(gemm_bias_gelu_f16, GemmBiasF16Params)

// ---------------------------------------------------------------------------------------
// (b) Gated residual into the f32 residual stream:
//     h[r, n] += mods[frame(r), gate, n] * (acc + bias[n]),
//     frame(r) = (r % tokens) / tokens_per_frame   (r = batch * tokens + token);
//     with mods == null the gate is 1 (h += acc + bias: the ungated cross-attention output).
// Each element of h is read and written by exactly one thread (tiles are disjoint, no
// split-K), so the update is race-free without atomics.
// ---------------------------------------------------------------------------------------
struct GemmGatedResidualParams {
    const __half* a;     // (M, K)
    const __half* w;     // (N, K)
    const __half* bias;  // (N) or null
    float* h;            // (M, N) residual stream, updated in place
    const float* mods;   // (F, mod_k, N) per-frame modulation vectors, or null (gate 1)
    int m;
    int n;
    int k;
    int mod_k;            // vectors per frame in mods (6 in a DiT block)
    int gate;             // which of them is the gate (2: g1, 5: g2)
    int tokens;           // tokens per batch element (M = batch * tokens)
    int tokens_per_frame;
};

extern "C" __global__ void __launch_bounds__(GemmTraits::kThreads, 2)
    gemm_gated_residual(GemmGatedResidualParams p) {
    using T = GemmTraits;
    extern __shared__ __align__(16) unsigned char smem[];
    const int m0 = blockIdx.y * T::kBM;
    const int n0 = blockIdx.x * T::kBN;
    float acc[T::kMmaM][T::kMmaN][4];
    gemm_mainloop<false>(acc, reinterpret_cast<__half*>(smem), p.a, p.w, p.m, p.n, p.k, m0, n0);
    const FragCoord fc = frag_coord(m0, n0, T::kWarpN);
GEMM_UNROLL
    for (int i = 0; i < T::kMmaM; ++i)
GEMM_UNROLL
        for (int h = 0; h < 2; ++h) {
            const int row = fc.row0 + i * 16 + h * 8;
            if (row >= p.m) continue;
            // mods == null: no gate (h += acc + bias, the cross-attention output).
            const float* g = nullptr;
            if (p.mods != nullptr) {
                const int frame = (row % p.tokens) / p.tokens_per_frame;
                g = p.mods + (static_cast<size_t>(frame) * p.mod_k + p.gate) * p.n;
            }
            float* hrow = p.h + static_cast<size_t>(row) * p.n;
GEMM_UNROLL
            for (int j = 0; j < T::kMmaN; ++j) {
                const int col = fc.col0 + j * 8;
                if (col >= p.n) continue;
                const float2 b = bias_pair(p.bias, col);
                const float2 gv = g != nullptr ? *reinterpret_cast<const float2*>(g + col)
                                               : make_float2(1.0f, 1.0f);
                float2 hv = *reinterpret_cast<float2*>(hrow + col);
                hv.x += gv.x * (acc[i][j][2 * h] + b.x);
                hv.y += gv.y * (acc[i][j][2 * h + 1] + b.y);
                *reinterpret_cast<float2*>(hrow + col) = hv;
            }
        }
}
EMU_REGISTER_KERNEL(gemm_gated_residual, GemmGatedResidualParams)

// ---------------------------------------------------------------------------------------
// (c) SwiGLU on the w13 product: out_f16[r, c] = SiLU(u) * g with u = (A W13^T)[r, c],
// g = (A W13^T)[r, dff + c]. A CTA computes 64 output columns: its W tile holds the 64 u rows
// and the 64 matching g rows (w_row<true>), and each warp's n8 tiles j and j + 2 are u and
// g of the same 16 columns, so SiLU(u) * g is formed in registers; no [M, 2 Dff] tensor.
// ---------------------------------------------------------------------------------------
struct GemmSwigluParams {
    const __half* a;    // (M, K)
    const __half* w13;  // (2 * dff, K): rows [0, dff) u, [dff, 2 dff) g
    __half* out;        // (M, dff)
    int m;
    int dff;
    int k;
};

__device__ __forceinline__ float silu(float z) { return z / (1.0f + __expf(-z)); }

extern "C" __global__ void __launch_bounds__(GemmTraits::kThreads, 2)
    gemm_swiglu(GemmSwigluParams p) {
    using T = GemmTraits;
    extern __shared__ __align__(16) unsigned char smem[];
    const int m0 = blockIdx.y * T::kBM;
    const int n0 = blockIdx.x * (T::kBN / 2);
    float acc[T::kMmaM][T::kMmaN][4];
    gemm_mainloop<true>(acc, reinterpret_cast<__half*>(smem), p.a, p.w13, p.m, p.dff, p.k, m0, n0);
    const FragCoord fc = frag_coord(m0, n0, T::kWarpN / 2);
GEMM_UNROLL
    for (int j = 0; j < T::kMmaN / 2; ++j) {
        const int col = fc.col0 + j * 8;
        if (col >= p.dff) continue;
GEMM_UNROLL
        for (int i = 0; i < T::kMmaM; ++i)
GEMM_UNROLL
            for (int h = 0; h < 2; ++h) {
                const int row = fc.row0 + i * 16 + h * 8;
                if (row < p.m) {
                    const float* u = &acc[i][j][2 * h];
                    const float* g = &acc[i][j + T::kMmaN / 2][2 * h];
                    *reinterpret_cast<__half2*>(p.out + static_cast<size_t>(row) * p.dff + col) =
                        __floats2half2_rn(silu(u[0]) * g[0], silu(u[1]) * g[1]);
                }
            }
    }
}
EMU_REGISTER_KERNEL(gemm_swiglu, GemmSwigluParams)

// ---------------------------------------------------------------------------------------
// (d) out_f32 = acc + bias (the final layer).
// ---------------------------------------------------------------------------------------
struct GemmBiasF32Params {
    const __half* a;     // (M, K)
    const __half* w;     // (N, K)
    const __half* bias;  // (N) or null
    float* out;          // (M, N)
    int m;
    int n;
    int k;
};

extern "C" __global__ void __launch_bounds__(GemmTraits::kThreads, 2)
    gemm_bias_f32(GemmBiasF32Params p) {
    using T = GemmTraits;
    extern __shared__ __align__(16) unsigned char smem[];
    const int m0 = blockIdx.y * T::kBM;
    const int n0 = blockIdx.x * T::kBN;
    float acc[T::kMmaM][T::kMmaN][4];
    gemm_mainloop<false>(acc, reinterpret_cast<__half*>(smem), p.a, p.w, p.m, p.n, p.k, m0, n0);
    const FragCoord fc = frag_coord(m0, n0, T::kWarpN);
GEMM_UNROLL
    for (int j = 0; j < T::kMmaN; ++j) {
        const int col = fc.col0 + j * 8;
        if (col >= p.n) continue;
        const float2 b = bias_pair(p.bias, col);
GEMM_UNROLL
        for (int i = 0; i < T::kMmaM; ++i)
GEMM_UNROLL
            for (int h = 0; h < 2; ++h) {
                const int row = fc.row0 + i * 16 + h * 8;
                if (row < p.m) {
                    *reinterpret_cast<float2*>(p.out + static_cast<size_t>(row) * p.n + col) =
                        make_float2(acc[i][j][2 * h] + b.x, acc[i][j][2 * h + 1] + b.y);
                }
            }
    }
}
EMU_REGISTER_KERNEL(gemm_bias_f32, GemmBiasF32Params)
