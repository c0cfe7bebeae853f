// Probes for the emulator's self-tests (kernels/tests/emu_*.rs). Each kernel exercises one
// emulated feature and writes what it observed; the Rust tests compare that with the PTX
// ISA tables and with CPU models. They compile under nvcc too (the resource gates cover
// them), but some deliberately misuse barriers and must never run on a GPU: those are
// marked "emulator only".
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

#include "common/ptx.cuh"

// ---------------------------------------------------------------------------------------
// ldmatrix: one warp loads `image` into shared memory, lane l passes the address of element
// row_offset[l], and writes the registers of ldmatrix variant `variant` to out[l][0..3].
// ---------------------------------------------------------------------------------------
struct LdmatrixProbeParams {
    const uint16_t* image;  // (image_elems) shared-memory image
    const int* row_offset;  // (32) element offset of each lane's row address
    uint32_t* out;          // (32, 4) registers per lane; unused registers untouched
    int image_elems;
    int variant;  // 0..2: x1, x2, x4; 3..5: x1.trans, x2.trans, x4.trans
};

extern "C" __global__ void selftest_ldmatrix(LdmatrixProbeParams p) {
    extern __shared__ __align__(16) unsigned char smem[];
    uint16_t* s = reinterpret_cast<uint16_t*>(smem);
    for (int i = threadIdx.x; i < p.image_elems; i += blockDim.x) s[i] = p.image[i];
    __syncthreads();
    const int lane = threadIdx.x % 32;
    const void* row = s + p.row_offset[lane];
    uint32_t* out = p.out + lane * 4;
    switch (p.variant) {
        case 0: { uint32_t r[1]; ptx::ldmatrix_x1(r, row); out[0] = r[0]; break; }
        case 1: { uint32_t r[2]; ptx::ldmatrix_x2(r, row); for (int j = 0; j < 2; ++j) out[j] = r[j]; break; }
        case 2: { uint32_t r[4]; ptx::ldmatrix_x4(r, row); for (int j = 0; j < 4; ++j) out[j] = r[j]; break; }
        case 3: { uint32_t r[1]; ptx::ldmatrix_x1_trans(r, row); out[0] = r[0]; break; }
        case 4: { uint32_t r[2]; ptx::ldmatrix_x2_trans(r, row); for (int j = 0; j < 2; ++j) out[j] = r[j]; break; }
        default: { uint32_t r[4]; ptx::ldmatrix_x4_trans(r, row); for (int j = 0; j < 4; ++j) out[j] = r[j]; break; }
    }
}
EMU_REGISTER_KERNEL(selftest_ldmatrix, LdmatrixProbeParams)

// ---------------------------------------------------------------------------------------
// mma: every warp runs one m16n8k16 on fragments given per lane.
// ---------------------------------------------------------------------------------------
struct MmaProbeParams {
    const uint32_t* a;  // (warps, 32, 4) A fragment registers, two 16-bit values each
    const uint32_t* b;  // (warps, 32, 2) B fragment registers
    const float* c;     // (warps, 32, 4) C fragment
    float* d;           // (warps, 32, 4) D fragment
    int bf16;           // 0: .f16 inputs, 1: .bf16 inputs
};

extern "C" __global__ void selftest_mma(MmaProbeParams p) {
    const int t = blockIdx.x * blockDim.x + threadIdx.x;  // = warp * 32 + lane
    const uint32_t a[4] = {p.a[t * 4], p.a[t * 4 + 1], p.a[t * 4 + 2], p.a[t * 4 + 3]};
    const uint32_t b[2] = {p.b[t * 2], p.b[t * 2 + 1]};
    const float c[4] = {p.c[t * 4], p.c[t * 4 + 1], p.c[t * 4 + 2], p.c[t * 4 + 3]};
    float d[4];
    if (p.bf16) {
        ptx::mma_m16n8k16_bf16_f32(d, a, b, c);
    } else {
        ptx::mma_m16n8k16_f16_f32(d, a, b, c);
    }
    for (int i = 0; i < 4; ++i) p.d[t * 4 + i] = d[i];
}
EMU_REGISTER_KERNEL(selftest_mma, MmaProbeParams)

// ---------------------------------------------------------------------------------------
// Block reduction of 256 values per block, a shared-memory tree. The second kernel lacks
// the barrier between the stores and the first reads: emulator only.
// ---------------------------------------------------------------------------------------
struct ReduceParams {
    const float* x;  // (blocks * 256)
    float* out;      // (blocks) sum per block
};

template <bool kBarrierAfterStore>
__device__ __forceinline__ void block_sum_256(const ReduceParams& p) {
    __shared__ float s[256];
    const int t = threadIdx.x;
    s[t] = p.x[blockIdx.x * 256 + t];
    if (kBarrierAfterStore) __syncthreads();
    for (int stride = 128; stride > 0; stride >>= 1) {
        if (t < stride) s[t] += s[t + stride];
        __syncthreads();
    }
    if (t == 0) p.out[blockIdx.x] = s[0];
}

extern "C" __global__ void __launch_bounds__(256) selftest_reduce(ReduceParams p) {
    block_sum_256<true>(p);
}
EMU_REGISTER_KERNEL(selftest_reduce, ReduceParams)

extern "C" __global__ void __launch_bounds__(256) selftest_reduce_missing_sync(ReduceParams p) {
    block_sum_256<false>(p);
}
EMU_REGISTER_KERNEL(selftest_reduce_missing_sync, ReduceParams)

// ---------------------------------------------------------------------------------------
// The order in which threads ran: each takes a ticket from a counter (emulator only: on a
// GPU the order is whatever the hardware does).
// ---------------------------------------------------------------------------------------
struct TicketParams {
    unsigned* counter;  // (1)
    unsigned* ticket;   // (blocks * threads)
};

extern "C" __global__ void selftest_ticket(TicketParams p) {
    p.ticket[blockIdx.x * blockDim.x + threadIdx.x] = atomicAdd(p.counter, 1u);
}
EMU_REGISTER_KERNEL(selftest_ticket, TicketParams)

// ---------------------------------------------------------------------------------------
// Shuffles and votes: per thread, 12 results (see kWarpOpsOut).
// ---------------------------------------------------------------------------------------
struct WarpOpsParams {
    const uint32_t* value;  // (threads) value each lane contributes
    const int* arg;         // (threads) source lane / delta / lane mask per lane
    uint32_t* out;          // (threads, 12)
};

extern "C" __global__ void selftest_warp_ops(WarpOpsParams p) {
    const unsigned full = 0xffffffffu;
    const int t = blockIdx.x * blockDim.x + threadIdx.x;
    const int lane = threadIdx.x % 32;
    const uint32_t v = p.value[t];
    const int a = p.arg[t];
    uint32_t* o = p.out + t * 12;
    o[0] = __shfl_sync(full, v, a);
    o[1] = __shfl_up_sync(full, v, a & 31);
    o[2] = __shfl_down_sync(full, v, a & 31);
    o[3] = __shfl_xor_sync(full, v, a & 31);
    o[4] = __shfl_sync(full, v, a, 8);
    o[5] = __shfl_up_sync(full, v, a & 7, 8);
    o[6] = __shfl_down_sync(full, v, a & 7, 8);
    o[7] = __shfl_xor_sync(full, v, a & 15, 8);
    o[8] = __ballot_sync(full, v & 1);
    o[9] = __any_sync(full, v % 61 == 0);
    o[10] = __all_sync(full, v % 61 != 0);
    // Two half-warps shuffle independently with disjoint masks.
    if (lane < 16) {
        o[11] = __shfl_xor_sync(0x0000ffffu, v, 1);
    } else {
        o[11] = __shfl_down_sync(0xffff0000u, v, 2, 16);
    }
}
EMU_REGISTER_KERNEL(selftest_warp_ops, WarpOpsParams)

// ---------------------------------------------------------------------------------------
// cp.async: each of 64 threads copies 16 + 8 + 4 bytes in group 0 and 16 zero-filled bytes
// (src_bytes = 4 * (t % 5)) in group 1, then reads its destination back per `mode`:
//   0: wait_group 0, barrier       1: no wait, barrier (emulator only)
//   2: wait_group 1, barrier       3: wait_group 0, no barrier, read the next thread's data
// src: (64, 16) floats per thread: [0, 4) 16-byte copy, [4, 6) 8-byte, [6] 4-byte,
// [8, 12) zero-filled copy. out: (64, 11): the 4 + 2 + 1 + 4 floats read back.
// ---------------------------------------------------------------------------------------
struct CpAsyncParams {
    const float* src;  // (64, 16)
    float* out;        // (64, 11)
    int mode;
};

extern "C" __global__ void selftest_cp_async(CpAsyncParams p) {
    extern __shared__ __align__(16) unsigned char smem[];
    float* s16 = reinterpret_cast<float*>(smem);  // (64, 4)
    float* s8 = s16 + 64 * 4;                      // (64, 2)
    float* s4 = s8 + 64 * 2;                       // (64)
    float* sz = s4 + 64;                           // (64, 4)
    const int t = threadIdx.x;
    const float* src = p.src + t * 16;
    ptx::cp_async_16(s16 + t * 4, src);
    ptx::cp_async_8(s8 + t * 2, src + 4);
    ptx::cp_async_4(s4 + t, src + 6);
    ptx::cp_async_commit();
    ptx::cp_async_16_zfill(sz + t * 4, src + 8, 4u * (t % 5));
    ptx::cp_async_commit();
    int r = t;
    if (p.mode == 0) {
        ptx::cp_async_wait<0>();
        __syncthreads();
    } else if (p.mode == 1) {
        __syncthreads();
    } else if (p.mode == 2) {
        ptx::cp_async_wait<1>();
        __syncthreads();
    } else {
        ptx::cp_async_wait<0>();
        r = (t + 1) % 64;
    }
    float* o = p.out + t * 11;
    for (int i = 0; i < 4; ++i) o[i] = s16[r * 4 + i];
    for (int i = 0; i < 2; ++i) o[4 + i] = s8[r * 2 + i];
    o[6] = s4[r];
    for (int i = 0; i < 4; ++i) o[7 + i] = sz[r * 4 + i];
}
EMU_REGISTER_KERNEL(selftest_cp_async, CpAsyncParams)

// ---------------------------------------------------------------------------------------
// f16/bf16: conversions and arithmetic, element-wise with a grid-stride loop.
// ---------------------------------------------------------------------------------------
struct HalfConvertParams {
    const uint16_t* h;  // (n_h) 16-bit patterns
    const float* f;     // (n_f) f32 values
    float* h_to_f32;    // (n_h) __half2float
    float* bf_to_f32;   // (n_h) __bfloat162float of the same bits
    uint16_t* f_to_h;   // (n_f) __float2half
    uint16_t* f_to_bf;  // (n_f) __float2bfloat16
    int n_h;
    int n_f;
};

extern "C" __global__ void selftest_half_convert(HalfConvertParams p) {
    const int stride = gridDim.x * blockDim.x;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < p.n_h; i += stride) {
        p.h_to_f32[i] = __half2float(__ushort_as_half(p.h[i]));
        p.bf_to_f32[i] = __bfloat162float(__ushort_as_bfloat16(p.h[i]));
    }
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < p.n_f; i += stride) {
        p.f_to_h[i] = __half_as_ushort(__float2half(p.f[i]));
        p.f_to_bf[i] = __bfloat16_as_ushort(__float2bfloat16(p.f[i]));
    }
}
EMU_REGISTER_KERNEL(selftest_half_convert, HalfConvertParams)

struct HalfArithParams {
    const uint16_t* a;  // (n)
    const uint16_t* b;  // (n)
    const uint16_t* c;  // (n)
    uint16_t* out;      // (n, 6): add, sub, mul, div, fma, fma2.y (half2 lane 1)
    int n;
};

extern "C" __global__ void selftest_half_arith(HalfArithParams p) {
    const int stride = gridDim.x * blockDim.x;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < p.n; i += stride) {
        const __half a = __ushort_as_half(p.a[i]);
        const __half b = __ushort_as_half(p.b[i]);
        const __half c = __ushort_as_half(p.c[i]);
        uint16_t* o = p.out + i * 6;
        o[0] = __half_as_ushort(__hadd(a, b));
        o[1] = __half_as_ushort(__hsub(a, b));
        o[2] = __half_as_ushort(__hmul(a, b));
        o[3] = __half_as_ushort(__hdiv(a, b));
        o[4] = __half_as_ushort(__hfma(a, b, c));
        const __half2 r = __hfma2(__halves2half2(c, a), __halves2half2(c, b), __halves2half2(c, c));
        o[5] = __half_as_ushort(__high2half(r));
    }
}
EMU_REGISTER_KERNEL(selftest_half_arith, HalfArithParams)

// ---------------------------------------------------------------------------------------
// Misuse the emulator must report (emulator only): one mode per launch, 64 threads.
// ---------------------------------------------------------------------------------------
// Two distinct __syncthreads call sites (noinline: the compiler cannot merge them).
__device__ __noinline__ void barrier_a(float* out) {
    *out = 1.0f;
    __syncthreads();
}
__device__ __noinline__ void barrier_b(float* out) {
    *out = 2.0f;
    __syncthreads();
}

struct FaultParams {
    float* out;  // (64)
    int mode;
};

extern "C" __global__ void selftest_fault(FaultParams p) {
    extern __shared__ __align__(16) unsigned char smem[];
    const int t = threadIdx.x;
    const int lane = t % 32;
    float v = static_cast<float>(t);
    switch (p.mode) {
        case 0:  // a thread exits while the others wait at the barrier
            if (t != 5) __syncthreads();
            break;
        case 1:  // the two halves of the block wait at different barriers
            if (t < 32) {
                barrier_a(p.out + t);
            } else {
                barrier_b(p.out + t);
            }
            break;
        case 2:  // half a warp shuffles while the other half waits at the barrier
            if (lane < 16) {
                v = __shfl_sync(0xffffffffu, v, 0);
            }
            __syncthreads();
            break;
        case 3: {  // mma.sync.aligned with half a warp
            if (lane < 16) {
                const uint32_t a[4] = {0, 0, 0, 0};
                const uint32_t b[2] = {0, 0};
                const float c[4] = {0, 0, 0, 0};
                float d[4];
                ptx::mma_m16n8k16_f16_f32(d, a, b, c);
                v = d[0];
            }
            break;
        }
        case 4: {  // ldmatrix row address not 16-byte aligned
            uint32_t r[1];
            ptx::ldmatrix_x1(r, smem + 2 + 16 * (lane % 8));
            v = static_cast<float>(r[0]);
            break;
        }
        case 5:  // cp.async destination not aligned to the copy size
            ptx::cp_async_16(smem + 8, p.out);
            ptx::cp_async_wait_all();
            break;
        default:
            __trap();
    }
    p.out[t] = v;
}
EMU_REGISTER_KERNEL(selftest_fault, FaultParams)

// ---------------------------------------------------------------------------------------
// Named barriers (bar.sync / bar.arrive id, count), 128 threads: group 0 = warps 0-1 (the
// producers), group 1 = warps 2-3 (the consumers), every barrier counting both groups (128).
//   mode 0: a hand-off, then a ping-pong. The producers write shared[t] = src[t] and
//     bar.arrive(1); the consumers bar.sync(1) and copy shared[t - 64] to out[t - 64]. Then
//     kTurns turns each, the groups alternating as FlashAttention-3's consumer warpgroups do
//     (its scheduler barriers): group g waits at bar.sync(2 + g) for its turn, its first
//     thread appends g to a shared log, and bar.arrive(3 - g) hands the turn over; group 0's
//     first turn comes from its own bar.arrive(2), and group 1 does not hand over after its
//     last turn (so every arrival pairs with a wait). out[64 + k] = log[k].
// Misuse (emulator only): 1 no hand-off barrier (the consumers' copy races the producers'
// writes); 2 group 1 hands over
// after its last turn too (arrivals left at exit); 3 no first bar.arrive(2) (deadlock);
// 4 barrier 0; 5 a count of 100; 6 the consumers wait with another count than the
// producers'; 7 warp 0 and half of warps 1 and 2 meet at bar.sync(1, 64) (partial warps).
// ---------------------------------------------------------------------------------------
struct NamedBarrierParams {
    const float* src;  // (64)
    float* out;        // (64 + 2 kTurns)
    int mode;
};
constexpr int kTurns = 3;

extern "C" __global__ void selftest_named_barrier(NamedBarrierParams p) {
    __shared__ float handoff[64];
    __shared__ int log_len;
    __shared__ float log[2 * kTurns];
    const int t = threadIdx.x;
    const int g = t / 64;
    if (p.mode == 4) ptx::named_barrier_sync(0, 128);
    if (p.mode == 5) ptx::named_barrier_sync(1, 100);
    if (p.mode == 7) {
        if (t < 32 || (t < 96 && t % 32 < 16)) ptx::named_barrier_sync(1, 64);
        __syncthreads();  // the other lanes stay live meanwhile
        return;
    }
    if (t == 0) log_len = 0;
    __syncthreads();
    if (g == 0) {
        handoff[t] = p.src[t];
        if (p.mode != 1) ptx::named_barrier_arrive(1, 128);
    } else {
        if (p.mode != 1) ptx::named_barrier_sync(1, p.mode == 6 ? 96 : 128);
        p.out[t - 64] = handoff[t - 64];
    }
    if (g == 0 && p.mode != 3) ptx::named_barrier_arrive(2, 128);
    for (int k = 0; k < kTurns; ++k) {
        ptx::named_barrier_sync(2 + g, 128);
        if (t % 64 == 0) log[log_len++] = static_cast<float>(g);
        if (g == 0 || k + 1 < kTurns || p.mode == 2) ptx::named_barrier_arrive(3 - g, 128);
    }
    __syncthreads();
    if (t < 2 * kTurns) p.out[64 + t] = log[t];
}
EMU_REGISTER_KERNEL(selftest_named_barrier, NamedBarrierParams)
