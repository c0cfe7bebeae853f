// 8-element vectors as 16-byte global accesses: 8 f32 as two float4, 8 f16 as one uint4.
// The f16 pairs are packed with __half_as_ushort / __ushort_as_half and shifts (no type
// punning through pointers, which the emulator's host compiler may miscompile under strict
// aliasing; nvcc turns the shifts into the same PRMT/register moves).
#pragma once

#include <cuda_fp16.h>
#include <stdint.h>

namespace vec8 {

// v[0..8) = src[0..8) (16-byte aligned).
__device__ __forceinline__ void load_f32(float (&v)[8], const float* src) {
    const float4 a = *reinterpret_cast<const float4*>(src);
    const float4 b = *reinterpret_cast<const float4*>(src + 4);
    v[0] = a.x;
    v[1] = a.y;
    v[2] = a.z;
    v[3] = a.w;
    v[4] = b.x;
    v[5] = b.y;
    v[6] = b.z;
    v[7] = b.w;
}

// dst[0..8) = v (16-byte aligned).
__device__ __forceinline__ void store_f32(float* dst, const float (&v)[8]) {
    *reinterpret_cast<float4*>(dst) = make_float4(v[0], v[1], v[2], v[3]);
    *reinterpret_cast<float4*>(dst + 4) = make_float4(v[4], v[5], v[6], v[7]);
}

// Two f32 rounded to f16 (nearest even), lo in the low 16 bits.
__device__ __forceinline__ uint32_t pack_f16x2(float lo, float hi) {
    return static_cast<uint32_t>(__half_as_ushort(__float2half_rn(lo))) |
           (static_cast<uint32_t>(__half_as_ushort(__float2half_rn(hi))) << 16);
}

// dst[0..8) = f16(v), one 16-byte store (16-byte aligned).
__device__ __forceinline__ void store_f16(__half* dst, const float (&v)[8]) {
    *reinterpret_cast<uint4*>(dst) = make_uint4(pack_f16x2(v[0], v[1]), pack_f16x2(v[2], v[3]),
                                                pack_f16x2(v[4], v[5]), pack_f16x2(v[6], v[7]));
}

// v = f32(src[0..8)), one 16-byte load (16-byte aligned).
__device__ __forceinline__ void load_f16(float (&v)[8], const __half* src) {
    const uint4 q = *reinterpret_cast<const uint4*>(src);
    const uint32_t w[4] = {q.x, q.y, q.z, q.w};
    for (int i = 0; i < 4; ++i) {
        v[2 * i] = __half2float(__ushort_as_half(static_cast<unsigned short>(w[i] & 0xffffu)));
        v[2 * i + 1] = __half2float(__ushort_as_half(static_cast<unsigned short>(w[i] >> 16)));
    }
}

}  // namespace vec8
