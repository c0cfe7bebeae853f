// IEEE binary16 (__half) and bfloat16 (__nv_bfloat16) for the host emulator.
//
// Conversions from f32 round to nearest even, produce subnormals and overflow to infinity,
// as cvt.rn.f16.f32 / cvt.rn.bf16.f32 do (PTX ISA, "Data Movement and Conversion
// Instructions: cvt"). Arithmetic rounds to the 16-bit format after every operation, as the
// .f16/.bf16 forms of add/sub/mul/fma do ("Half Precision Floating-Point Instructions").
// add/sub/mul/div are computed in f32 and rounded once more: f32 carries 24 >= 2*11+2 bits,
// so this double rounding is innocuous and the result is the correctly rounded one. fma is
// computed in f64 and rounded once (see f16_fma_bits).
#pragma once

#include <math.h>
#include <stdint.h>
#include <string.h>

namespace emu {

inline uint32_t f32_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}
inline float bits_f32(uint32_t u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}

inline uint16_t f32_to_f16_bits(float f) {
    const uint32_t x = f32_bits(f);
    const uint16_t sign = static_cast<uint16_t>((x >> 16) & 0x8000u);
    const uint32_t ax = x & 0x7fffffffu;
    if (ax >= 0x7f800000u) {  // inf or NaN; NaN stays quiet NaN with the top payload bits
        if (ax == 0x7f800000u) return sign | 0x7c00u;
        return static_cast<uint16_t>(sign | 0x7e00u | ((ax >> 13) & 0x3ffu));
    }
    if (ax >= 0x477ff000u) return sign | 0x7c00u;  // >= 65520 rounds to infinity
    if (ax >= 0x38800000u) {                       // normal f16 (>= 2^-14)
        const uint32_t m = ax - 0x38000000u;       // rebias 127 -> 15
        return static_cast<uint16_t>(sign | ((m + 0xfffu + ((m >> 13) & 1u)) >> 13));
    }
    // Subnormal f16 (units of 2^-24): the scaling is exact, nearbyintf rounds to even.
    // A result of 1024 is the smallest normal, whose encoding is the same integer.
    const float scaled = bits_f32(ax) * 16777216.0f;
    return static_cast<uint16_t>(sign | static_cast<uint16_t>(nearbyintf(scaled)));
}

inline float f16_bits_to_f32(uint16_t h) {
    const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
    const uint32_t e = (h >> 10) & 0x1fu;
    const uint32_t m = h & 0x3ffu;
    if (e == 0x1f) return bits_f32(sign | 0x7f800000u | (m ? (0x400000u | (m << 13)) : 0u));
    if (e == 0) {
        const float v = static_cast<float>(m) * (1.0f / 16777216.0f);  // exact
        return sign ? -v : v;
    }
    return bits_f32(sign | ((e + 112u) << 23) | (m << 13));
}

// Rounds a finite or infinite f64 to f16, nearest even (NaN gives the canonical 0x7fff).
inline uint16_t f64_to_f16_bits(double v) {
    const uint16_t sign = signbit(v) ? 0x8000u : 0u;
    if (isnan(v)) return 0x7fffu;
    const double a = fabs(v);
    if (a >= 65520.0) return sign | 0x7c00u;  // 65520 is the tie to 65536: even is infinity
    if (a == 0.0) return sign;
    int e = 0;
    frexp(a, &e);  // a in [2^(e-1), 2^e)
    int ulp_exp = (e - 1 < -14 ? -14 : e - 1) - 10;
    const double q = ldexp(a, -ulp_exp);  // exact
    const double fl = floor(q);
    const double frac = q - fl;
    uint32_t n = static_cast<uint32_t>(fl);
    if (frac > 0.5 || (frac == 0.5 && (n & 1u))) n += 1;
    if (ulp_exp == -24) return static_cast<uint16_t>(sign | n);  // subnormal (or min normal)
    if (n == 2048u) {
        n = 1024u;
        ulp_exp += 1;
    }
    const uint32_t biased = static_cast<uint32_t>(ulp_exp + 10 + 15);
    if (biased >= 31u) return sign | 0x7c00u;
    return static_cast<uint16_t>(sign | (biased << 10) | (n - 1024u));
}

inline uint16_t f32_to_bf16_bits(float f) {
    const uint32_t x = f32_bits(f);
    if ((x & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((x >> 16) | 0x40u);
    return static_cast<uint16_t>((x + 0x7fffu + ((x >> 16) & 1u)) >> 16);
}
inline float bf16_bits_to_f32(uint16_t b) { return bits_f32(static_cast<uint32_t>(b) << 16); }

// fma rounded once. The product p of two f16 is exact in f64 (22 significant bits). The
// sum s = p + c may round in f64, but never onto an f16 tie: a tie lies a multiple of p's
// last bit (>= 2^(msb(p) - 21)) away from c, which f64 resolves unless p < 2^(msb(s) - 31),
// and then s is far from any tie. So rounding s to f16 gives the correctly rounded fma.
inline uint16_t f16_fma_bits(uint16_t a, uint16_t b, uint16_t c) {
    const double p = static_cast<double>(f16_bits_to_f32(a)) * f16_bits_to_f32(b);
    return f64_to_f16_bits(p + static_cast<double>(f16_bits_to_f32(c)));
}

}  // namespace emu

struct __half {
    unsigned short __x;
    __half() = default;
    __half(float f) : __x(emu::f32_to_f16_bits(f)) {}
    __half(double f) : __x(emu::f64_to_f16_bits(f)) {}
    __half(int i) : __x(emu::f32_to_f16_bits(static_cast<float>(i))) {}
    operator float() const { return emu::f16_bits_to_f32(__x); }
};
struct __half_raw {
    unsigned short x;
};
struct alignas(4) __half2 {
    __half x, y;
};
struct __nv_bfloat16 {
    unsigned short __x;
    __nv_bfloat16() = default;
    __nv_bfloat16(float f) : __x(emu::f32_to_bf16_bits(f)) {}
    operator float() const { return emu::bf16_bits_to_f32(__x); }
};
struct alignas(4) __nv_bfloat162 {
    __nv_bfloat16 x, y;
};
typedef __half half;
typedef __half2 half2;
typedef __nv_bfloat16 nv_bfloat16;
typedef __nv_bfloat162 nv_bfloat162;

// ---- conversions ----
inline __half __float2half(float f) { return __half(f); }
inline __half __float2half_rn(float f) { return __half(f); }
inline float __half2float(__half h) { return emu::f16_bits_to_f32(h.__x); }
inline __half __ushort_as_half(unsigned short u) {
    __half h;
    h.__x = u;
    return h;
}
inline unsigned short __half_as_ushort(__half h) { return h.__x; }
inline __half2 __halves2half2(__half lo, __half hi) { return __half2{lo, hi}; }
inline __half2 __floats2half2_rn(float lo, float hi) { return __half2{__half(lo), __half(hi)}; }
inline __half2 __float2half2_rn(float f) { return __half2{__half(f), __half(f)}; }
inline __half2 __half2half2(__half h) { return __half2{h, h}; }
inline float __low2float(__half2 h) { return __half2float(h.x); }
inline float __high2float(__half2 h) { return __half2float(h.y); }
inline __half __low2half(__half2 h) { return h.x; }
inline __half __high2half(__half2 h) { return h.y; }

inline __nv_bfloat16 __float2bfloat16(float f) { return __nv_bfloat16(f); }
inline __nv_bfloat16 __float2bfloat16_rn(float f) { return __nv_bfloat16(f); }
inline float __bfloat162float(__nv_bfloat16 b) { return emu::bf16_bits_to_f32(b.__x); }
inline __nv_bfloat16 __ushort_as_bfloat16(unsigned short u) {
    __nv_bfloat16 b;
    b.__x = u;
    return b;
}
inline unsigned short __bfloat16_as_ushort(__nv_bfloat16 b) { return b.__x; }
inline __nv_bfloat162 __floats2bfloat162_rn(float lo, float hi) {
    return __nv_bfloat162{__nv_bfloat16(lo), __nv_bfloat16(hi)};
}
inline __nv_bfloat162 __halves2bfloat162(__nv_bfloat16 lo, __nv_bfloat16 hi) {
    return __nv_bfloat162{lo, hi};
}
inline float __low2float(__nv_bfloat162 b) { return __bfloat162float(b.x); }
inline float __high2float(__nv_bfloat162 b) { return __bfloat162float(b.y); }

// ---- f16 arithmetic, rounded after each operation ----
inline __half __hadd(__half a, __half b) { return __half(float(a) + float(b)); }
inline __half __hsub(__half a, __half b) { return __half(float(a) - float(b)); }
inline __half __hmul(__half a, __half b) { return __half(float(a) * float(b)); }
inline __half __hdiv(__half a, __half b) { return __half(float(a) / float(b)); }
inline __half __hfma(__half a, __half b, __half c) {
    return __ushort_as_half(emu::f16_fma_bits(a.__x, b.__x, c.__x));
}
inline __half __hneg(__half a) { return __ushort_as_half(a.__x ^ 0x8000u); }
inline __half __habs(__half a) { return __ushort_as_half(a.__x & 0x7fffu); }
inline bool __hisnan(__half a) { return (a.__x & 0x7fffu) > 0x7c00u; }
inline bool __hisinf(__half a) { return (a.__x & 0x7fffu) == 0x7c00u; }
// hmax/hmin: if one input is NaN the other is returned (max.f16 semantics).
inline __half __hmax(__half a, __half b) {
    if (__hisnan(a)) return b;
    if (__hisnan(b)) return a;
    return float(a) >= float(b) ? a : b;
}
inline __half __hmin(__half a, __half b) {
    if (__hisnan(a)) return b;
    if (__hisnan(b)) return a;
    return float(a) <= float(b) ? a : b;
}
inline bool __heq(__half a, __half b) { return float(a) == float(b); }
inline bool __hne(__half a, __half b) { return float(a) != float(b); }
inline bool __hlt(__half a, __half b) { return float(a) < float(b); }
inline bool __hle(__half a, __half b) { return float(a) <= float(b); }
inline bool __hgt(__half a, __half b) { return float(a) > float(b); }
inline bool __hge(__half a, __half b) { return float(a) >= float(b); }

inline __half operator+(__half a, __half b) { return __hadd(a, b); }
inline __half operator-(__half a, __half b) { return __hsub(a, b); }
inline __half operator*(__half a, __half b) { return __hmul(a, b); }
inline __half operator/(__half a, __half b) { return __hdiv(a, b); }
inline __half operator-(__half a) { return __hneg(a); }
inline __half& operator+=(__half& a, __half b) { return a = __hadd(a, b); }
inline __half& operator-=(__half& a, __half b) { return a = __hsub(a, b); }
inline __half& operator*=(__half& a, __half b) { return a = __hmul(a, b); }
inline bool operator==(__half a, __half b) { return __heq(a, b); }
inline bool operator!=(__half a, __half b) { return __hne(a, b); }
inline bool operator<(__half a, __half b) { return __hlt(a, b); }
inline bool operator>(__half a, __half b) { return __hgt(a, b); }

inline __half2 __hadd2(__half2 a, __half2 b) { return {__hadd(a.x, b.x), __hadd(a.y, b.y)}; }
inline __half2 __hsub2(__half2 a, __half2 b) { return {__hsub(a.x, b.x), __hsub(a.y, b.y)}; }
inline __half2 __hmul2(__half2 a, __half2 b) { return {__hmul(a.x, b.x), __hmul(a.y, b.y)}; }
inline __half2 __hfma2(__half2 a, __half2 b, __half2 c) {
    return {__hfma(a.x, b.x, c.x), __hfma(a.y, b.y, c.y)};
}
inline __half2 __hmax2(__half2 a, __half2 b) { return {__hmax(a.x, b.x), __hmax(a.y, b.y)}; }
inline __half2 __hmin2(__half2 a, __half2 b) { return {__hmin(a.x, b.x), __hmin(a.y, b.y)}; }
inline __half2 operator+(__half2 a, __half2 b) { return __hadd2(a, b); }
inline __half2 operator*(__half2 a, __half2 b) { return __hmul2(a, b); }

// ---- bf16 arithmetic (computed in f32, 24 >= 2*8+2 bits, rounded once to bf16) ----
inline __nv_bfloat16 __hadd(__nv_bfloat16 a, __nv_bfloat16 b) { return float(a) + float(b); }
inline __nv_bfloat16 __hsub(__nv_bfloat16 a, __nv_bfloat16 b) { return float(a) - float(b); }
inline __nv_bfloat16 __hmul(__nv_bfloat16 a, __nv_bfloat16 b) { return float(a) * float(b); }
