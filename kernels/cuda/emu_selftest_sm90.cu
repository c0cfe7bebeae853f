// streamdit-arch: sm_90a
// Probes for the emulator's Hopper self-tests (kernels/tests/emu_wgmma.rs, emu_tma.rs,
// emu_hopper_tile.rs): wgmma, mbarrier, TMA, and one 64 x N tile through all three. Built
// for sm_90a only (first line). Modes marked "emulator only" misuse the instructions on
// purpose and must never run on a GPU.
//
// Test-only variants (planted races the race checker must report; kernels/tests/
// emu_hopper_tile.rs and race_check.rs):
// streamdit-emu-variant: early_release
//   hopper tile: the consumer releases a stage before the wgmma reading it has retired;
// streamdit-emu-variant: no_full_wait
//   hopper tile: the consumer does not wait on the stage's full barrier before its wgmma
//   reads the TMA data;
// streamdit-emu-variant: no_proxy_fence
//   wgmma probe: the threads' copy of the operands is not followed by fence.proxy.async.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

#include "common/ptx_sm90.cuh"

// `#pragma unroll` for nvcc (accumulator arrays must stay in registers); the host compiler
// of the emulator does not know the pragma.
#if PTX_EMU
#define SM90_UNROLL
#else
#define SM90_UNROLL _Pragma("unroll")
#endif

// ---------------------------------------------------------------------------------------
// wgmma: one warpgroup copies `image` so that byte i lands at shared address i (bytes below
// the dynamic shared memory's start are skipped), fences it for the async proxy, runs the
// mode's wgmma sequence and writes every thread's accumulators.
// ---------------------------------------------------------------------------------------
struct WgmmaProbeParams {
    const unsigned char* image;  // (image_bytes)
    const uint32_t* a_regs;      // (128, 4) A fragments, or null: A from desc_a
    const float* c;              // (128, n/2) accumulators before the first wgmma
    float* out;                  // (128, n/2) accumulators after the final wait
    float* early;                // (128, n/2) accumulators read earlier (modes 1, 3)
    uint64_t desc_a, desc_b;
    int image_bytes;
    int n;        // 8, 16, 32, 64, 128 or 256
    int bf16;     // inputs are bf16 (else f16)
    int scale_d;  // 0: D = A B, else D = A B + C
    // 0 fence, wgmma, commit, wait 0.  1: as 0, accumulators copied to `early` before the
    // wait.  2: two wgmmas into the same accumulators, one group.  3 (N <= 64): two groups
    // into two arrays; after wait 1 `out` = the first, `early` = the second; then wait 0.
    // 4: imm-scale-a = -1.  Emulator only: 5 no wgmma.fence; 6 thread 5 passes another
    // desc_a; 7 warp 0 commits while the others wait; 8 setmaxnreg with 100 registers.
    int mode;
};

template <int N, bool kBf16>
__device__ __forceinline__ void wgmma_one(float (&d)[N / 2], const WgmmaProbeParams& p,
                                          uint64_t desc_a, const uint32_t (&a)[4]) {
    if (p.a_regs != nullptr) {
        if (kBf16) ptx::wgmma_bf16_rs<N>(d, a, p.desc_b, p.scale_d);
        else ptx::wgmma_f16_rs<N>(d, a, p.desc_b, p.scale_d);
    } else {
        if (kBf16) ptx::wgmma_bf16_ss<N>(d, desc_a, p.desc_b, p.scale_d);
        else ptx::wgmma_f16_ss<N>(d, desc_a, p.desc_b, p.scale_d);
    }
}

// Mode 3 keeps a second accumulator array: only up to N = 64 (registers).
template <int N>
constexpr int kSecond = N <= 64 ? N / 2 : 1;

template <int N, bool kBf16>
__device__ void wgmma_probe(const WgmmaProbeParams& p) {
    const int t = threadIdx.x;
    float d[N / 2], e[kSecond<N>];
SM90_UNROLL
    for (int r = 0; r < N / 2; ++r) d[r] = p.c[t * (N / 2) + r];
SM90_UNROLL
    for (int r = 0; r < kSecond<N>; ++r) e[r] = p.c[t * (N / 2) + r];
    uint32_t a[4] = {0, 0, 0, 0};
    if (p.a_regs != nullptr)
        for (int r = 0; r < 4; ++r) a[r] = p.a_regs[t * 4 + r];
    float* out = p.out + t * (N / 2);
    float* early = p.early + t * (N / 2);
    switch (p.mode) {
        case 1:
            ptx::wgmma_fence();
            wgmma_one<N, kBf16>(d, p, p.desc_a, a);
            ptx::wgmma_commit();
SM90_UNROLL
            for (int r = 0; r < N / 2; ++r) early[r] = d[r];
            ptx::wgmma_wait<0>();
            break;
        case 2:
            ptx::wgmma_fence();
            wgmma_one<N, kBf16>(d, p, p.desc_a, a);
            wgmma_one<N, kBf16>(d, p, p.desc_a, a);
            ptx::wgmma_commit();
            ptx::wgmma_wait<0>();
            break;
        case 3:
            if constexpr (N <= 64) {
                ptx::wgmma_fence();
                wgmma_one<N, kBf16>(d, p, p.desc_a, a);
                ptx::wgmma_commit();
                wgmma_one<N, kBf16>(e, p, p.desc_a, a);
                ptx::wgmma_commit();
                ptx::wgmma_wait<1>();
SM90_UNROLL
                for (int r = 0; r < N / 2; ++r) early[r] = e[r];
                ptx::wgmma_wait<0>();
            }
            break;
        case 4:
            ptx::wgmma_fence();
            if (p.a_regs != nullptr) ptx::wgmma_f16_rs<N, -1>(d, a, p.desc_b, p.scale_d);
            else ptx::wgmma_f16_ss<N, -1>(d, p.desc_a, p.desc_b, p.scale_d);
            ptx::wgmma_commit();
            ptx::wgmma_wait<0>();
            break;
#if PTX_EMU
        case 5:
            wgmma_one<N, kBf16>(d, p, p.desc_a, a);
            break;
        case 6:
            ptx::wgmma_fence();
            wgmma_one<N, kBf16>(d, p, t == 5 ? p.desc_a + 1 : p.desc_a, a);
            break;
        case 7:
            if (t < 32) ptx::wgmma_commit();
            else ptx::wgmma_wait<0>();
            break;
        case 8:
            ::emu::setmaxnreg(true, 100);
            break;
#endif
        default:
            ptx::wgmma_fence();
            wgmma_one<N, kBf16>(d, p, p.desc_a, a);
            ptx::wgmma_commit();
            ptx::wgmma_wait<0>();
            break;
    }
SM90_UNROLL
    for (int r = 0; r < N / 2; ++r) out[r] = d[r];
}

template <bool kBf16>
__device__ void wgmma_probe_n(const WgmmaProbeParams& p) {
    switch (p.n) {
        case 8: wgmma_probe<8, kBf16>(p); break;
        case 16: wgmma_probe<16, kBf16>(p); break;
        case 32: wgmma_probe<32, kBf16>(p); break;
        case 64: wgmma_probe<64, kBf16>(p); break;
        case 128: wgmma_probe<128, kBf16>(p); break;
        default: wgmma_probe<256, kBf16>(p); break;
    }
}

extern "C" __global__ void selftest_wgmma(WgmmaProbeParams p) {
    extern __shared__ __align__(16) unsigned char smem[];
    const int base = static_cast<int>(ptx::smem_u32(smem));
    for (int i = base + threadIdx.x; i < p.image_bytes; i += blockDim.x) smem[i - base] = p.image[i];
#if !defined(EMU_VARIANT_no_proxy_fence)  // planted race when defined (top of the file)
    ptx::fence_proxy_async();  // these generic-proxy writes are read by wgmma (async proxy)
#endif
    __syncthreads();
    if (p.bf16) wgmma_probe_n<true>(p);
    else wgmma_probe_n<false>(p);
}
EMU_REGISTER_KERNEL(selftest_wgmma, WgmmaProbeParams)

// ---------------------------------------------------------------------------------------
// mbarrier: 64 threads, one barrier of 64 arrivals.
//  0: three rounds: write s[round % 2][t], arrive, wait for the round's phase, count the
//     entries of the round that differ from what their writers wrote (out[t] = mismatches).
//  Emulator only: 1 expect_tx of 16 bytes that never arrive (deadlock); 2 arrive on an
//  uninitialised barrier; 3 init with count 0; 4 a wait on the phase after the last one
//  anybody completes (deadlock).
// ---------------------------------------------------------------------------------------
struct MbarrierProbeParams {
    int* out;  // (64)
    int mode;
};

extern "C" __global__ void selftest_mbarrier(MbarrierProbeParams p) {
    __shared__ uint64_t bar;
    __shared__ int s[2][64];
    const int t = threadIdx.x;
    if (p.mode == 3) {
        ptx::mbarrier_init(&bar, 0);
        return;
    }
    if (t == 0 && p.mode != 2) ptx::mbarrier_init(&bar, p.mode == 1 ? 1 : 64);
    __syncthreads();
    if (p.mode == 1) {
        if (t == 0) ptx::mbarrier_arrive_expect_tx(&bar, 16);
        ptx::mbarrier_wait(&bar, 0);
        return;
    }
    int bad = 0;
    for (int round = 0; round < 3; ++round) {
        s[round % 2][t] = 1000 * round + t;
        ptx::mbarrier_arrive(&bar);
        ptx::mbarrier_wait(&bar, round & 1);
        for (int j = 0; j < 64; ++j) bad += s[round % 2][j] != 1000 * round + j;
    }
    if (p.mode == 4) ptx::mbarrier_wait(&bar, 1);  // phase 3 (parity 1) never completes
    p.out[t] = bad;
}
EMU_REGISTER_KERNEL(selftest_mbarrier, MbarrierProbeParams)

// ---------------------------------------------------------------------------------------
// TMA: thread 0 loads the box at `coords` of `map` to dynamic shared memory `dst_offset`
// bytes past the first 1024-byte aligned address; after the mbarrier phase all 64 threads
// copy the box's bytes to `out`. Mode 1 copies before anybody waits (the load has not
// landed: emulator only, a race).
// ---------------------------------------------------------------------------------------
struct TmaProbeParams {
    ptx::TmaDesc map;
    unsigned char* out;  // (box_bytes)
    int coords[5];
    int rank;
    int box_bytes;
    int dst_offset;
    int mode;
};

extern "C" __global__ void selftest_tma(const __grid_constant__ TmaProbeParams p) {
    extern __shared__ __align__(16) unsigned char smem[];
    __shared__ uint64_t bar;
    const uint32_t base = ptx::smem_u32(smem);
    unsigned char* box = smem + (((base + 1023u) & ~1023u) - base) + p.dst_offset;
    if (threadIdx.x == 0) ptx::mbarrier_init(&bar, 1);
    __syncthreads();
    if (threadIdx.x == 0) {
        ptx::mbarrier_arrive_expect_tx(&bar, static_cast<uint32_t>(p.box_bytes));
        const int* c = p.coords;
        switch (p.rank) {
            case 1: ptx::tma_load_1d(box, &p.map, &bar, c[0]); break;
            case 2: ptx::tma_load_2d(box, &p.map, &bar, c[0], c[1]); break;
            case 3: ptx::tma_load_3d(box, &p.map, &bar, c[0], c[1], c[2]); break;
            case 4: ptx::tma_load_4d(box, &p.map, &bar, c[0], c[1], c[2], c[3]); break;
            default: ptx::tma_load_5d(box, &p.map, &bar, c[0], c[1], c[2], c[3], c[4]); break;
        }
    }
    if (p.mode == 0) ptx::mbarrier_wait(&bar, 0);
    for (int i = threadIdx.x; i < p.box_bytes; i += blockDim.x) p.out[i] = box[i];
    if (p.mode != 0) {
        __syncthreads();  // every thread has read the box before anyone waits
        ptx::mbarrier_wait(&bar, 0);
    }
}
EMU_REGISTER_KERNEL(selftest_tma, TmaProbeParams)

// ---------------------------------------------------------------------------------------
// One 64 x N tile of D = A B^T through TMA -> mbarrier -> wgmma -> store, warp-specialised:
// warpgroup 0 produces (one elected thread issues the TMA loads of A [64, 64] and B [N, 64]
// per 64-deep k-tile into a 2-stage ring), warpgroup 1 consumes (waits for a stage, four
// wgmma k16 steps, keeps one group in flight, releases the stage whose group retired).
// A [64, K] and B [N, K] are f16, row-major; D [64, N] f32. `swizzle` is the TMA mode of
// both maps (0 none, 1 32B, 2 64B, 3 128B); the maps are laid out by the test so that the
// shared-memory tile is the canonical K-major layout of that mode:
//   128B: 2-D box {64, rows}: rows of 128 B; k-step j starts 32 j bytes in, SBO 1024.
//   64B / 32B: 3-D box {32 / 16, rows, 2 / 4} (K split into 64 / 32-byte atoms): k-step j
//     starts in atom j / 2 (64B, 32 j % 64 bytes in) or atom j (32B); SBO 512 / 256.
//   none: 3-D box {8, rows, 8}: 16-byte chunks of 8 k, a chunk plane of rows x 16 B each;
//     core matrices 8 rows x 16 B, SBO 128, LBO = rows x 16 (the next 8 k).
// Variant early_release (test only): the consumer releases a stage before the wgmma
// reading it has retired, a race the checker must report.
// ---------------------------------------------------------------------------------------
struct HopperTileParams {
    ptx::TmaDesc map_a;  // A [64, K]
    ptx::TmaDesc map_b;  // B [N, K]
    float* d;            // [64, N]
    int n;               // 64, 128 or 256
    int k;               // a multiple of 64
    int swizzle;
};

// Descriptor of k16 step j (0..3) of a K-major tile of `rows` rows at shared address `tile`.
__device__ __forceinline__ uint64_t tile_desc(uint32_t tile, int rows, int swizzle, int j) {
    switch (swizzle) {
        case 3: return ptx::wgmma_desc(tile + 32u * j, 16, 1024, 1);
        case 2: return ptx::wgmma_desc(tile + (j / 2) * rows * 64u + (j % 2) * 32u, 16, 512, 2);
        case 1: return ptx::wgmma_desc(tile + j * rows * 32u, 16, 256, 3);
        default: return ptx::wgmma_desc(tile + 2u * j * rows * 16u, rows * 16u, 128, 0);
    }
}

__device__ __forceinline__ void tile_load(void* dst, const ptx::TmaDesc* map, uint64_t* bar,
                                          int swizzle, int k0) {
    switch (swizzle) {
        case 3: ptx::tma_load_2d(dst, map, bar, k0, 0); break;
        case 2: ptx::tma_load_3d(dst, map, bar, 0, 0, k0 / 32); break;
        case 1: ptx::tma_load_3d(dst, map, bar, 0, 0, k0 / 16); break;
        default: ptx::tma_load_3d(dst, map, bar, 0, 0, k0 / 8); break;
    }
}

template <int N>
__device__ void hopper_tile(const HopperTileParams& p, unsigned char* smem) {
    constexpr int kStages = 2;
    constexpr uint32_t kTileA = 64 * 64 * 2, kTileB = N * 64 * 2;
    __shared__ uint64_t full[kStages], empty[kStages];
    const uint32_t base = ptx::smem_u32(smem);
    const uint32_t aligned = (base + 1023u) & ~1023u;
    unsigned char* tiles = smem + (aligned - base);
    const int warpgroup = threadIdx.x / 128;
    const int k_tiles = p.k / 64;
    if (threadIdx.x == 0) {
        for (int s = 0; s < kStages; ++s) {
            ptx::mbarrier_init(&full[s], 1);
            ptx::mbarrier_init(&empty[s], 128);
        }
    }
    __syncthreads();
    if (warpgroup == 0) {
        ptx::setmaxnreg_dec<40>();
        if (threadIdx.x < 32 && ptx::elect_one()) {
            for (int kt = 0; kt < k_tiles; ++kt) {
                const int s = kt % kStages;
                ptx::mbarrier_wait(&empty[s], ((kt / kStages) & 1) ^ 1);
                ptx::mbarrier_arrive_expect_tx(&full[s], kTileA + kTileB);
                unsigned char* a = tiles + s * (kTileA + kTileB);
                tile_load(a, &p.map_a, &full[s], p.swizzle, kt * 64);
                tile_load(a + kTileA, &p.map_b, &full[s], p.swizzle, kt * 64);
            }
        }
        return;
    }
    ptx::setmaxnreg_inc<232>();
    const int t = threadIdx.x - 128;
    float acc[N / 2];
SM90_UNROLL
    for (int r = 0; r < N / 2; ++r) acc[r] = 0.0f;
    for (int kt = 0; kt < k_tiles; ++kt) {
        const int s = kt % kStages;
#if !defined(EMU_VARIANT_no_full_wait)  // planted race when defined (top of the file)
        ptx::mbarrier_wait(&full[s], (kt / kStages) & 1);
#endif
        const uint32_t a = aligned + s * (kTileA + kTileB);
        ptx::wgmma_fence();
        for (int j = 0; j < 4; ++j)
            ptx::wgmma_f16_ss<N>(acc, tile_desc(a, 64, p.swizzle, j),
                                 tile_desc(a + kTileA, N, p.swizzle, j), kt > 0 || j > 0);
        ptx::wgmma_commit();
#if defined(EMU_VARIANT_early_release)
        ptx::mbarrier_arrive(&empty[s]);  // planted race: the wgmma may still read stage s
        ptx::wgmma_wait<0>();
#else
        ptx::wgmma_wait<1>();  // the previous k-tile's group has retired: release its stage
        if (kt > 0) ptx::mbarrier_arrive(&empty[(kt - 1) % kStages]);
#endif
    }
    ptx::wgmma_wait<0>();
    const int warp = t / 32, lane = t % 32;
SM90_UNROLL
    for (int r = 0; r < N / 2; ++r) {
        const int row = 16 * warp + lane / 4 + 8 * ((r >> 1) & 1);
        const int col = 8 * (r >> 2) + 2 * (lane % 4) + (r & 1);
        p.d[row * N + col] = acc[r];
    }
}

extern "C" __global__ void __launch_bounds__(256, 1)
    selftest_hopper_tile(const __grid_constant__ HopperTileParams p) {
    extern __shared__ __align__(16) unsigned char smem[];
    switch (p.n) {
        case 64: hopper_tile<64>(p, smem); break;
        case 128: hopper_tile<128>(p, smem); break;
        default: hopper_tile<256>(p, smem); break;
    }
}
EMU_REGISTER_KERNEL(selftest_hopper_tile, HopperTileParams)
