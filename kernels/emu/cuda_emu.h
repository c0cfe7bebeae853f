// The CUDA C++ dialect for the host compiler: lets a kernel's .cu source compile as plain
// C++17 and run in the emulator (kernels/emu/emu_runtime.cpp). The build includes this
// header first, then the .cu file. Inline PTX is not compiled here: kernels reach PTX only
// through cuda/common/ptx.cuh, whose helpers call the emulator when STREAMDIT_EMU is set.
//
// Storage of __shared__ variables. `__shared__` expands to `thread_local`:
//  - a block-scope `__shared__ T x[N];` has static storage, one instance per OS thread.
//    All fibers of a block run on the launching OS thread, so they share it, and blocks
//    run one at a time, so it is per-block storage. It is not reset between blocks: it
//    keeps the previous block's values (zero before the first use on an OS thread).
//  - `extern __shared__ T smem[];` (dynamic shared memory) must use the name `smem` and
//    the element type `unsigned char`: the runtime defines exactly that array (227 KiB per
//    OS thread) and fills its first `shared_bytes` with 0xff (NaN for f16 and f32) before
//    every block, so reading shared memory that no thread wrote gives NaN.
// Launches on different OS threads are independent: all emulator state is thread_local.
//
// Three builds include this header before a .cu file (build.rs):
//  - the plain emulator build;
//  - EMU_RACECHECK_BUILD: the same source compiled with -fsanitize=thread (every memory
//    access reports to the race checker, emu_race.cpp), inside a namespace with its kernels
//    renamed; EMU_REGISTER_KERNEL then defines the extern "C" emu_rc_entry_<name> that the
//    plain build's registration points to;
//  - EMU_VARIANT_NAME ("no_sync", ...): a test-only variant of a file with EMU_VARIANT_<name>
//    defined, also instrumented, registered as "<kernel>/<name>" (emu_variant_at).
#pragma once

#define STREAMDIT_EMU 1

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "emu_fp16.h"
#include "emu_runtime.h"

// ---- qualifiers ----
#define __global__
#define __device__
#define __host__
#define __constant__
#define __shared__ thread_local
#define __forceinline__ inline __attribute__((always_inline))
#define __noinline__ __attribute__((noinline))
#define __align__(n) __attribute__((aligned(n)))
#define __launch_bounds__(...)
#define __grid_constant__

extern thread_local unsigned char smem[];

// ---- vector types (sizes and alignments as in CUDA's vector_types.h) ----
typedef EmuDim3 uint3;
struct dim3 {
    unsigned x, y, z;
    constexpr dim3(unsigned vx = 1, unsigned vy = 1, unsigned vz = 1) : x(vx), y(vy), z(vz) {}
    constexpr dim3(EmuDim3 v) : x(v.x), y(v.y), z(v.z) {}
    constexpr operator EmuDim3() const { return EmuDim3{x, y, z}; }
};
struct alignas(8) float2 { float x, y; };
struct alignas(16) float4 { float x, y, z, w; };
struct alignas(8) int2 { int x, y; };
struct alignas(16) int4 { int x, y, z, w; };
struct alignas(8) uint2 { unsigned x, y; };
struct alignas(16) uint4 { unsigned x, y, z, w; };
struct alignas(4) ushort2 { unsigned short x, y; };
struct alignas(8) ushort4 { unsigned short x, y, z, w; };
inline float2 make_float2(float x, float y) { return {x, y}; }
inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }
inline int2 make_int2(int x, int y) { return {x, y}; }
inline int4 make_int4(int x, int y, int z, int w) { return {x, y, z, w}; }
inline uint2 make_uint2(unsigned x, unsigned y) { return {x, y}; }
inline uint4 make_uint4(unsigned x, unsigned y, unsigned z, unsigned w) { return {x, y, z, w}; }
inline float2 __half22float2(__half2 h) { return {__low2float(h), __high2float(h)}; }
inline __half2 __float22half2_rn(float2 f) { return __floats2half2_rn(f.x, f.y); }
inline float2 __bfloat1622float2(__nv_bfloat162 b) { return {__low2float(b), __high2float(b)}; }

// ---- built-in variables: per fiber, read-only ----
#define threadIdx (static_cast<const uint3&>(::emu::tls_vars->thread_idx))
#define blockIdx (static_cast<const uint3&>(::emu::tls_vars->block_idx))
#define blockDim (static_cast<const uint3&>(::emu::tls_vars->block_dim))
#define gridDim (static_cast<const uint3&>(::emu::tls_vars->grid_dim))
static constexpr int warpSize = 32;

// ---- synchronization and warp collectives (CUDA C++ Programming Guide, "Synchronization
// Functions", "Warp Vote Functions", "Warp Shuffle Functions") ----
#define __syncthreads() ::emu::syncthreads(__FILE__, __LINE__)
inline void __syncwarp(unsigned mask = 0xffffffffu) { ::emu::syncwarp(mask); }
inline unsigned __activemask() { return ::emu::activemask(); }
inline void __threadfence() {}
inline void __threadfence_block() {}
inline void __trap() { ::emu::fail(EMU_ERR_TRAP, "__trap() called"); }

namespace emu {
template <class T>
inline T shfl_any(ShflMode mode, unsigned mask, T v, int b, int width) {
    static_assert(sizeof(T) == 4 || sizeof(T) == 8, "shuffle of a 4- or 8-byte value");
    uint32_t w[sizeof(T) / 4];
    memcpy(w, &v, sizeof(T));
    for (unsigned i = 0; i < sizeof(T) / 4; ++i) w[i] = shfl(mode, mask, w[i], b, width);
    memcpy(&v, w, sizeof(T));
    return v;
}
}  // namespace emu
template <class T>
inline T __shfl_sync(unsigned mask, T v, int src_lane, int width = 32) {
    return ::emu::shfl_any(::emu::SHFL_IDX, mask, v, src_lane, width);
}
template <class T>
inline T __shfl_up_sync(unsigned mask, T v, unsigned delta, int width = 32) {
    return ::emu::shfl_any(::emu::SHFL_UP, mask, v, static_cast<int>(delta), width);
}
template <class T>
inline T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = 32) {
    return ::emu::shfl_any(::emu::SHFL_DOWN, mask, v, static_cast<int>(delta), width);
}
template <class T>
inline T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32) {
    return ::emu::shfl_any(::emu::SHFL_BFLY, mask, v, lane_mask, width);
}
inline unsigned __ballot_sync(unsigned mask, int pred) {
    return ::emu::vote(::emu::VOTE_BALLOT, mask, pred);
}
inline int __any_sync(unsigned mask, int pred) {
    return static_cast<int>(::emu::vote(::emu::VOTE_ANY, mask, pred));
}
inline int __all_sync(unsigned mask, int pred) {
    return static_cast<int>(::emu::vote(::emu::VOTE_ALL, mask, pred));
}

// ---- math intrinsics. The fast-math forms (__expf, __fdividef, ...) are computed with
// the accurate library function: results can differ from the GPU's approximations in the
// last bits (README, "Limits"). ----
inline float __expf(float x) { return expf(x); }
inline float __logf(float x) { return logf(x); }
inline float __sinf(float x) { return sinf(x); }
inline float __cosf(float x) { return cosf(x); }
inline float __powf(float x, float y) { return powf(x, y); }
inline float __fdividef(float a, float b) { return a / b; }
inline float __frcp_rn(float x) { return 1.0f / x; }
inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
inline float __frsqrt_rn(float x) { return 1.0f / sqrtf(x); }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fmaf_rn(float a, float b, float c) { return fmaf(a, b, c); }
inline float __saturatef(float x) { return x < 0.0f ? 0.0f : (x > 1.0f ? 1.0f : (x == x ? x : 0.0f)); }
inline float __int_as_float(int i) { float f; memcpy(&f, &i, 4); return f; }
inline int __float_as_int(float f) { int i; memcpy(&i, &f, 4); return i; }
inline float __uint_as_float(unsigned u) { float f; memcpy(&f, &u, 4); return f; }
inline unsigned __float_as_uint(float f) { unsigned u; memcpy(&u, &f, 4); return u; }
inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
inline int __clz(int x) { return x == 0 ? 32 : __builtin_clz(static_cast<unsigned>(x)); }
inline int __ffs(int x) { return __builtin_ffs(x); }
inline unsigned __brev(unsigned x) {
    x = ((x >> 1) & 0x55555555u) | ((x & 0x55555555u) << 1);
    x = ((x >> 2) & 0x33333333u) | ((x & 0x33333333u) << 2);
    x = ((x >> 4) & 0x0f0f0f0fu) | ((x & 0x0f0f0f0fu) << 4);
    x = ((x >> 8) & 0x00ff00ffu) | ((x & 0x00ff00ffu) << 8);
    return (x >> 16) | (x << 16);
}
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
inline unsigned min(unsigned a, unsigned b) { return a < b ? a : b; }
inline unsigned max(unsigned a, unsigned b) { return a > b ? a : b; }
inline long long min(long long a, long long b) { return a < b ? a : b; }
inline long long max(long long a, long long b) { return a > b ? a : b; }
inline float min(float a, float b) { return fminf(a, b); }
inline float max(float a, float b) { return fmaxf(a, b); }

template <class T>
inline T __ldg(const T* p) { return *p; }

// ---- atomics: a fiber is never preempted inside one, so a plain read-modify-write is
// atomic with respect to every other emulated thread. Not instrumented: the race checker
// is told of an atomic access instead (two atomics never race). ----
#define EMU_ATOMIC __attribute__((no_sanitize("thread")))
template <class T>
EMU_ATOMIC inline T atomicAdd(T* p, T v) { ::emu::race_atomic(p, sizeof(T)); T old = *p; *p = old + v; return old; }
template <class T>
EMU_ATOMIC inline T atomicSub(T* p, T v) { ::emu::race_atomic(p, sizeof(T)); T old = *p; *p = old - v; return old; }
template <class T>
EMU_ATOMIC inline T atomicMax(T* p, T v) { ::emu::race_atomic(p, sizeof(T)); T old = *p; *p = old > v ? old : v; return old; }
template <class T>
EMU_ATOMIC inline T atomicMin(T* p, T v) { ::emu::race_atomic(p, sizeof(T)); T old = *p; *p = old < v ? old : v; return old; }
template <class T>
EMU_ATOMIC inline T atomicExch(T* p, T v) { ::emu::race_atomic(p, sizeof(T)); T old = *p; *p = v; return old; }
template <class T>
EMU_ATOMIC inline T atomicCAS(T* p, T cmp, T v) { ::emu::race_atomic(p, sizeof(T)); T old = *p; if (old == cmp) *p = v; return old; }

// ---- registration: EMU_REGISTER_KERNEL(name, Params) after `__global__ void name(Params)`
// defines the launch trampoline and the EmuKernel the registry lists (emu_kernel_<name>),
// whose race-checking entry is the instrumented copy's emu_rc_entry_<name>. In the
// instrumented builds `name` is a macro for the renamed copy (build.rs), which the call
// below expands while the ## pastes keep the original name. Under nvcc the macro (from
// ptx.cuh) expands to nothing. ----
#if defined(EMU_VARIANT_NAME)
#define EMU_REGISTER_KERNEL(name, Params)                                              \
    static void emu_entry_##name(void** params) {                                      \
        name(*static_cast<const Params*>(params[0]));                                  \
    }                                                                                  \
    extern const EmuKernel emu_variant_kernel_##name;                                  \
    const EmuKernel emu_variant_kernel_##name = {#name "/" EMU_VARIANT_NAME,           \
                                                 &emu_entry_##name, &emu_entry_##name, \
                                                 sizeof(Params), alignof(Params)};
#elif defined(EMU_RACECHECK_BUILD)
#define EMU_REGISTER_KERNEL(name, Params)                                              \
    extern "C" void emu_rc_entry_##name(void** params) {                               \
        name(*static_cast<const Params*>(params[0]));                                  \
    }
#else
#define EMU_REGISTER_KERNEL(name, Params)                                              \
    static void emu_entry_##name(void** params) {                                      \
        name(*static_cast<const Params*>(params[0]));                                  \
    }                                                                                  \
    extern "C" {                                                                       \
    void emu_rc_entry_##name(void** params);                                           \
    extern const EmuKernel emu_kernel_##name;                                          \
    const EmuKernel emu_kernel_##name = {#name, &emu_entry_##name, &emu_rc_entry_##name, \
                                         sizeof(Params), alignof(Params)};             \
    }
#endif
