// The inline-PTX instructions the kernels use, as small destination-first helpers.
// Under nvcc each helper is one asm statement; under the host emulator (cuda_emu.h defines
// STREAMDIT_EMU) it calls the emulation in kernels/emu/emu_runtime.cpp. Kernels include
// this header and are otherwise plain CUDA C++: no asm outside this file.
#pragma once

#include <stdint.h>

#ifdef STREAMDIT_EMU
#define PTX_EMU 1
// The emulated helpers take their caller's source line (for error and race reports).
#define PTX_SITE , const char* site_file = __builtin_FILE(), int site_line = __builtin_LINE()
#else
#define PTX_EMU 0
#define PTX_SITE
// EMU_REGISTER_KERNEL lists a kernel for the host emulator; nvcc ignores it.
#define EMU_REGISTER_KERNEL(name, Params)
#endif

namespace ptx {

// Shared-state-space address of a generic pointer into shared memory (in the emulator:
// dynamic shared memory only, which starts at shared address 0x400).
__device__ __forceinline__ uint32_t smem_u32(const void* p) {
#if PTX_EMU
    return ::emu::shared_address(p);
#else
    return static_cast<uint32_t>(__cvta_generic_to_shared(p));
#endif
}

// ---- mma.sync.aligned.m16n8k16.row.col.f32.{f16,bf16}.{f16,bf16}.f32 ----
// D (16x8 f32) = A (16x16, row) * B (16x8, col) + C. Per lane: a[4], b[2] hold two 16-bit
// elements each, c/d[4] one f32 each, laid out as in the PTX ISA section "Matrix Fragments
// for mma.m16n8k16 with floating point type" (table: /work/shared/ptx/fragments.json).
__device__ __forceinline__ void mma_m16n8k16_f16_f32(float (&d)[4], const uint32_t (&a)[4],
                                                     const uint32_t (&b)[2],
                                                     const float (&c)[4]) {
#if PTX_EMU
    ::emu::mma_m16n8k16(::emu::MMA_F16, d, a, b, c);
#else
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 "
        "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%10,%11,%12,%13};\n"
        : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]),
          "f"(c[1]), "f"(c[2]), "f"(c[3]));
#endif
}

__device__ __forceinline__ void mma_m16n8k16_bf16_f32(float (&d)[4], const uint32_t (&a)[4],
                                                      const uint32_t (&b)[2],
                                                      const float (&c)[4]) {
#if PTX_EMU
    ::emu::mma_m16n8k16(::emu::MMA_BF16, d, a, b, c);
#else
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
        "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%10,%11,%12,%13};\n"
        : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]),
          "f"(c[1]), "f"(c[2]), "f"(c[3]));
#endif
}

// ---- ldmatrix.sync.aligned.m8n8.{x1,x2,x4}{,.trans}.shared.b16 ----
// Lane 8j+r passes the address of row r (16 contiguous bytes, 16-byte aligned) of matrix j;
// register j receives matrix j's fragment (PTX ISA, "Warp-level matrix load instruction:
// ldmatrix"). Lanes whose address the shape does not use may pass anything.
#if PTX_EMU
#define PTX_LDMATRIX(N, TRANS, SUFFIX)                                                   \
    ::emu::ldmatrix_m8n8_b16(r, N, TRANS, row, site_file, site_line)
#else
#define PTX_LDMATRIX(N, TRANS, SUFFIX) PTX_LDMATRIX_ASM_##N(SUFFIX)
#define PTX_LDMATRIX_ASM_1(SUFFIX)                                                       \
    asm volatile("ldmatrix.sync.aligned.m8n8.x1" SUFFIX ".shared.b16 {%0}, [%1];\n"      \
                 : "=r"(r[0])                                                            \
                 : "r"(smem_u32(row))                                                    \
                 : "memory")
#define PTX_LDMATRIX_ASM_2(SUFFIX)                                                       \
    asm volatile("ldmatrix.sync.aligned.m8n8.x2" SUFFIX ".shared.b16 {%0,%1}, [%2];\n"   \
                 : "=r"(r[0]), "=r"(r[1])                                                \
                 : "r"(smem_u32(row))                                                    \
                 : "memory")
#define PTX_LDMATRIX_ASM_4(SUFFIX)                                                       \
    asm volatile("ldmatrix.sync.aligned.m8n8.x4" SUFFIX                                  \
                 ".shared.b16 {%0,%1,%2,%3}, [%4];\n"                                    \
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])                        \
                 : "r"(smem_u32(row))                                                    \
                 : "memory")
#endif

__device__ __forceinline__ void ldmatrix_x1(uint32_t (&r)[1], const void* row PTX_SITE) {
    PTX_LDMATRIX(1, false, "");
}
__device__ __forceinline__ void ldmatrix_x2(uint32_t (&r)[2], const void* row PTX_SITE) {
    PTX_LDMATRIX(2, false, "");
}
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* row PTX_SITE) {
    PTX_LDMATRIX(4, false, "");
}
__device__ __forceinline__ void ldmatrix_x1_trans(uint32_t (&r)[1], const void* row PTX_SITE) {
    PTX_LDMATRIX(1, true, ".trans");
}
__device__ __forceinline__ void ldmatrix_x2_trans(uint32_t (&r)[2], const void* row PTX_SITE) {
    PTX_LDMATRIX(2, true, ".trans");
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const void* row PTX_SITE) {
    PTX_LDMATRIX(4, true, ".trans");
}

// ---- named barriers (PTX ISA, "Parallel Synchronization and Communication Instructions:
// bar, barrier") ----
// A CTA has 16 barriers; 0 is __syncthreads'. bar.sync id, count arrives at barrier `id`
// and waits until `count` threads (a multiple of the warp size; the hardware counts whole
// warps) have arrived in this phase; bar.arrive id, count arrives without waiting (the
// producer side of a hand-off). The barrier is then ready for its next phase. Arriving
// orders the thread's earlier memory accesses before those of the phase's bar.sync
// threads after it. Every arriving warp must execute it with all its lanes.
__device__ __forceinline__ void named_barrier_sync(uint32_t id, uint32_t count PTX_SITE) {
#if PTX_EMU
    ::emu::named_barrier(id, count, true, site_file, site_line);
#else
    asm volatile("bar.sync %0, %1;\n" ::"r"(id), "r"(count) : "memory");
#endif
}
__device__ __forceinline__ void named_barrier_arrive(uint32_t id, uint32_t count PTX_SITE) {
#if PTX_EMU
    ::emu::named_barrier(id, count, false, site_file, site_line);
#else
    asm volatile("bar.arrive %0, %1;\n" ::"r"(id), "r"(count) : "memory");
#endif
}

// ---- cp.async (PTX ISA, "Data Movement and Conversion Instructions: cp.async") ----
// Copies global -> shared without going through registers. The copy is complete (and the
// destination may be read) only after a cp_async_wait that retires its group.
// 16 bytes bypass L1 (.cg); 8 and 4 bytes use .ca, the only form allowed for them.
__device__ __forceinline__ void cp_async_16(void* dst_smem, const void* src_gmem PTX_SITE) {
#if PTX_EMU
    ::emu::cp_async(dst_smem, src_gmem, 16, 16, site_file, site_line);
#else
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(smem_u32(dst_smem)),
                 "l"(src_gmem)
                 : "memory");
#endif
}
// Copies the first src_bytes (0..16) of src and zero-fills the rest of the 16 bytes; with
// src_bytes = 0 nothing is read, so src may be out of bounds (ragged tiles).
__device__ __forceinline__ void cp_async_16_zfill(void* dst_smem, const void* src_gmem,
                                                  uint32_t src_bytes PTX_SITE) {
#if PTX_EMU
    ::emu::cp_async(dst_smem, src_gmem, 16, src_bytes, site_file, site_line);
#else
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_u32(dst_smem)),
                 "l"(src_gmem), "r"(src_bytes)
                 : "memory");
#endif
}
__device__ __forceinline__ void cp_async_8(void* dst_smem, const void* src_gmem PTX_SITE) {
#if PTX_EMU
    ::emu::cp_async(dst_smem, src_gmem, 8, 8, site_file, site_line);
#else
    asm volatile("cp.async.ca.shared.global [%0], [%1], 8;\n" ::"r"(smem_u32(dst_smem)),
                 "l"(src_gmem)
                 : "memory");
#endif
}
__device__ __forceinline__ void cp_async_4(void* dst_smem, const void* src_gmem PTX_SITE) {
#if PTX_EMU
    ::emu::cp_async(dst_smem, src_gmem, 4, 4, site_file, site_line);
#else
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4;\n" ::"r"(smem_u32(dst_smem)),
                 "l"(src_gmem)
                 : "memory");
#endif
}
// cp.async.commit_group: closes the thread's pending copies into one group.
__device__ __forceinline__ void cp_async_commit() {
#if PTX_EMU
    ::emu::cp_async_commit();
#else
    asm volatile("cp.async.commit_group;\n" ::: "memory");
#endif
}
// cp.async.wait_group N: waits until at most N of the thread's most recent groups are
// pending. Visibility to other threads still needs __syncthreads().
template <int N>
__device__ __forceinline__ void cp_async_wait() {
    static_assert(N >= 0 && N < 8, "cp.async.wait_group takes a small constant");
#if PTX_EMU
    ::emu::cp_async_wait(N);
#else
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
#endif
}
// cp.async.wait_all: commit_group followed by wait_group 0.
__device__ __forceinline__ void cp_async_wait_all() {
#if PTX_EMU
    ::emu::cp_async_commit();
    ::emu::cp_async_wait(0);
#else
    asm volatile("cp.async.wait_all;\n" ::: "memory");
#endif
}

}  // namespace ptx
