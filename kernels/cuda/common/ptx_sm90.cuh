// The Hopper (sm_90a) inline-PTX instructions: wgmma, mbarrier, TMA tensor loads,
// fence.proxy.async, elect.sync, setmaxnreg. As in ptx.cuh, each helper is one asm statement
// under nvcc and calls the emulator (kernels/emu/emu_wgmma.cpp, emu_tma.cpp) under
// STREAMDIT_EMU. Only modules built for sm_90a (first line `// streamdit-arch: sm_90a`)
// include this header.
#pragma once

#include <stdint.h>

#include "ptx.cuh"
#include "wgmma_asm.cuh"

namespace ptx {

// A tensor map as a kernel parameter: the 128 bytes, 64-byte aligned, of the driver's
// CUtensorMap (cuTensorMapEncodeTiled), or of the emulator's EmuTensorMap
// (kernels/src/tma.rs). Pass the parameter struct as `const __grid_constant__` so that its
// address is a parameter-space address on the GPU.
struct alignas(64) TmaDesc {
    uint64_t opaque[16];
};

// ---- wgmma (PTX ISA, "Asynchronous Warpgroup Level Matrix Multiply-Accumulate") ----

// The 64-bit shared-memory matrix descriptor ("Matrix Descriptor Format"): start address,
// leading and stride dimension byte offsets (each stored >> 4 in 14 bits), base offset 0,
// swizzle mode: 0 none, 1 128-byte, 2 64-byte, 3 32-byte.
__device__ __forceinline__ uint64_t wgmma_desc(uint32_t smem_addr, uint32_t lbo, uint32_t sbo,
                                               int swizzle_mode) {
    return static_cast<uint64_t>((smem_addr & 0x3ffffu) >> 4) |
           static_cast<uint64_t>((lbo & 0x3ffffu) >> 4) << 16 |
           static_cast<uint64_t>((sbo & 0x3ffffu) >> 4) << 32 |
           static_cast<uint64_t>(swizzle_mode & 3) << 62;
}

// wgmma.fence.sync.aligned: before the first wgmma of a warpgroup and between register
// accesses and a wgmma that uses those registers.
__device__ __forceinline__ void wgmma_fence() {
#if PTX_EMU
    ::emu::wgmma_fence();
#else
    asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
#endif
}
__device__ __forceinline__ void wgmma_commit() {
#if PTX_EMU
    ::emu::wgmma_commit();
#else
    asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
#endif
}
// wgmma.wait_group.sync.aligned N: at most N wgmma groups still pending; the accumulators
// of the older ones may be read.
template <int N>
__device__ __forceinline__ void wgmma_wait() {
    static_assert(N >= 0 && N <= 7, "wgmma.wait_group takes 0..7");
#if PTX_EMU
    ::emu::wgmma_wait(N);
#else
    asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
#endif
}

// D (64 x N, f32, d[N/2] per thread) = A (64 x 16) B (16 x N) (+ D when scale_d != 0);
// A and B from shared-memory descriptors; kScaleA/B = -1 negates, kTransA/B = 1 reads the
// operand MN-major. f16 and bf16 inputs.
template <int N, int kScaleA = 1, int kScaleB = 1, int kTransA = 0, int kTransB = 0>
__device__ __forceinline__ void wgmma_f16_ss(float (&d)[N / 2], uint64_t desc_a, uint64_t desc_b,
                                             int scale_d PTX_SITE) {
#if PTX_EMU
    ::emu::wgmma_mma(::emu::MMA_F16, N, d, desc_a, nullptr, desc_b, scale_d, kScaleA, kScaleB,
                     kTransA, kTransB, site_file, site_line);
#else
    wgmma_asm::ss_f16<N, kScaleA, kScaleB, kTransA, kTransB>(d, desc_a, desc_b, scale_d);
#endif
}
template <int N, int kScaleA = 1, int kScaleB = 1, int kTransA = 0, int kTransB = 0>
__device__ __forceinline__ void wgmma_bf16_ss(float (&d)[N / 2], uint64_t desc_a,
                                              uint64_t desc_b, int scale_d PTX_SITE) {
#if PTX_EMU
    ::emu::wgmma_mma(::emu::MMA_BF16, N, d, desc_a, nullptr, desc_b, scale_d, kScaleA, kScaleB,
                     kTransA, kTransB, site_file, site_line);
#else
    wgmma_asm::ss_bf16<N, kScaleA, kScaleB, kTransA, kTransB>(d, desc_a, desc_b, scale_d);
#endif
}
// A from registers: a[4] hold the thread's .f16x2/.bf16x2 A fragment ("Matrix Fragments for
// wgmma.mma_async.m64nNk16", register layout of A).
template <int N, int kScaleA = 1, int kScaleB = 1, int kTransB = 0>
__device__ __forceinline__ void wgmma_f16_rs(float (&d)[N / 2], const uint32_t (&a)[4],
                                             uint64_t desc_b, int scale_d PTX_SITE) {
#if PTX_EMU
    ::emu::wgmma_mma(::emu::MMA_F16, N, d, 0, a, desc_b, scale_d, kScaleA, kScaleB, 0, kTransB,
                     site_file, site_line);
#else
    wgmma_asm::rs_f16<N, kScaleA, kScaleB, kTransB>(d, a, desc_b, scale_d);
#endif
}
template <int N, int kScaleA = 1, int kScaleB = 1, int kTransB = 0>
__device__ __forceinline__ void wgmma_bf16_rs(float (&d)[N / 2], const uint32_t (&a)[4],
                                              uint64_t desc_b, int scale_d PTX_SITE) {
#if PTX_EMU
    ::emu::wgmma_mma(::emu::MMA_BF16, N, d, 0, a, desc_b, scale_d, kScaleA, kScaleB, 0, kTransB,
                     site_file, site_line);
#else
    wgmma_asm::rs_bf16<N, kScaleA, kScaleB, kTransB>(d, a, desc_b, scale_d);
#endif
}

// ---- mbarrier (PTX ISA, "mbarrier") ----
__device__ __forceinline__ void mbarrier_init(uint64_t* bar, uint32_t count) {
#if PTX_EMU
    ::emu::mbarrier_init(bar, count);
#else
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(smem_u32(bar)), "r"(count)
                 : "memory");
#endif
}
// One arrival on the current phase.
__device__ __forceinline__ void mbarrier_arrive(uint64_t* bar) {
#if PTX_EMU
    ::emu::mbarrier_arrive(bar, 0, false);
#else
    asm volatile("{\n.reg .b64 state;\nmbarrier.arrive.shared::cta.b64 state, [%0];\n}\n" ::"r"(
                     smem_u32(bar))
                 : "memory");
#endif
}
// expect-tx(tx_bytes) then one arrival: the phase also waits for tx_bytes of TMA data.
__device__ __forceinline__ void mbarrier_arrive_expect_tx(uint64_t* bar, uint32_t tx_bytes) {
#if PTX_EMU
    ::emu::mbarrier_arrive(bar, tx_bytes, true);
#else
    asm volatile(
        "{\n.reg .b64 state;\nmbarrier.arrive.expect_tx.shared::cta.b64 state, [%0], %1;\n}\n" ::"r"(
            smem_u32(bar)),
        "r"(tx_bytes)
        : "memory");
#endif
}
// Blocks until the phase of parity `parity` has completed (a try_wait loop).
__device__ __forceinline__ void mbarrier_wait(uint64_t* bar, uint32_t parity) {
#if PTX_EMU
    ::emu::mbarrier_try_wait_parity(bar, parity);
#else
    uint32_t done = 0;
    do {
        asm volatile(
            "{\n.reg .pred p;\nmbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n"
            "selp.u32 %0, 1, 0, p;\n}\n"
            : "=r"(done)
            : "r"(smem_u32(bar)), "r"(parity)
            : "memory");
    } while (!done);
#endif
}

// ---- TMA (PTX ISA, "cp.async.bulk.tensor") ----
// Loads the box at element coordinates (c0, ..) of `map` into dst (128-byte aligned shared
// memory) and completes its bytes on `bar`.
#if PTX_EMU
#define PTX_TMA_LOAD(RANK, ...)                                                          \
    const int32_t c[RANK] = {__VA_ARGS__};                                               \
    ::emu::tma_load(dst, map, RANK, c, bar, site_file, site_line)
#else
#define PTX_TMA_LOAD(RANK, ...) PTX_TMA_ASM_##RANK
#define PTX_TMA_OPS "r"(smem_u32(dst)), "l"(reinterpret_cast<uint64_t>(map))
#define PTX_TMA_ASM(RANK, COORDS, BAR, ...)                                              \
    asm volatile("cp.async.bulk.tensor." #RANK "d.shared::cluster.global.mbarrier::"     \
                 "complete_tx::bytes [%0], [%1, {" COORDS "}], [" BAR "];\n" ::PTX_TMA_OPS, \
                 __VA_ARGS__, "r"(smem_u32(bar))                                         \
                 : "memory")
#define PTX_TMA_ASM_1 PTX_TMA_ASM(1, "%2", "%3", "r"(c0))
#define PTX_TMA_ASM_2 PTX_TMA_ASM(2, "%2, %3", "%4", "r"(c0), "r"(c1))
#define PTX_TMA_ASM_3 PTX_TMA_ASM(3, "%2, %3, %4", "%5", "r"(c0), "r"(c1), "r"(c2))
#define PTX_TMA_ASM_4 PTX_TMA_ASM(4, "%2, %3, %4, %5", "%6", "r"(c0), "r"(c1), "r"(c2), "r"(c3))
#define PTX_TMA_ASM_5                                                                    \
    PTX_TMA_ASM(5, "%2, %3, %4, %5, %6", "%7", "r"(c0), "r"(c1), "r"(c2), "r"(c3), "r"(c4))
#endif
__device__ __forceinline__ void tma_load_1d(void* dst, const TmaDesc* map, uint64_t* bar,
                                            int32_t c0 PTX_SITE) {
    PTX_TMA_LOAD(1, c0);
}
__device__ __forceinline__ void tma_load_2d(void* dst, const TmaDesc* map, uint64_t* bar,
                                            int32_t c0, int32_t c1 PTX_SITE) {
    PTX_TMA_LOAD(2, c0, c1);
}
__device__ __forceinline__ void tma_load_3d(void* dst, const TmaDesc* map, uint64_t* bar,
                                            int32_t c0, int32_t c1, int32_t c2 PTX_SITE) {
    PTX_TMA_LOAD(3, c0, c1, c2);
}
__device__ __forceinline__ void tma_load_4d(void* dst, const TmaDesc* map, uint64_t* bar,
                                            int32_t c0, int32_t c1, int32_t c2,
                                            int32_t c3 PTX_SITE) {
    PTX_TMA_LOAD(4, c0, c1, c2, c3);
}
__device__ __forceinline__ void tma_load_5d(void* dst, const TmaDesc* map, uint64_t* bar,
                                            int32_t c0, int32_t c1, int32_t c2, int32_t c3,
                                            int32_t c4 PTX_SITE) {
    PTX_TMA_LOAD(5, c0, c1, c2, c3, c4);
}

// fence.proxy.async.shared::cta: orders this thread's generic-proxy shared-memory writes
// before later async-proxy accesses (wgmma operands, TMA) and the other way round.
__device__ __forceinline__ void fence_proxy_async() {
#if PTX_EMU
    ::emu::fence_proxy_async();
#else
    asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
#endif
}

// elect.sync: true in exactly one lane of `mask` (which one is unspecified).
__device__ __forceinline__ bool elect_one(uint32_t mask = 0xffffffffu) {
#if PTX_EMU
    bool leader = false;
    ::emu::elect_sync(mask, &leader);
    return leader;
#else
    uint32_t pred = 0;
    asm volatile(
        "{\n.reg .b32 r;\n.reg .pred p;\nelect.sync r|p, %1;\nselp.u32 %0, 1, 0, p;\n}\n"
        : "=r"(pred)
        : "r"(mask));
    return pred != 0;
#endif
}

// setmaxnreg.{inc,dec}.sync.aligned.u32: the warpgroup's per-thread register budget
// (24..256, a multiple of 8).
template <int kCount>
__device__ __forceinline__ void setmaxnreg_inc() {
    static_assert(kCount >= 24 && kCount <= 256 && kCount % 8 == 0, "setmaxnreg: 24..256, x8");
#if PTX_EMU
    ::emu::setmaxnreg(true, kCount);
#else
    asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(kCount));
#endif
}
template <int kCount>
__device__ __forceinline__ void setmaxnreg_dec() {
    static_assert(kCount >= 24 && kCount <= 256 && kCount % 8 == 0, "setmaxnreg: 24..256, x8");
#if PTX_EMU
    ::emu::setmaxnreg(false, kCount);
#else
    asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(kCount));
#endif
}

}  // namespace ptx
