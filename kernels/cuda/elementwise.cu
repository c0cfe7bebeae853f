// The small per-element kernels of one StreamDiT streaming step (docs/streamdit.md sections 2 and 5)
// and of weight upload: everything the CUDA backend launches besides the GEMMs, attention and
// adaLN. Each is one launch over a 1-D grid-stride loop (the grid is a launch choice of
// kernels/src/elementwise.rs, the loop covers any size), with 16-byte global accesses
// wherever the layout allows and a scalar tail where a size is not a multiple of the vector.
//
//   patchify           latents f32 [F, C, H, W] -> tokens f16 [B*T, C*4], B copies
//   add_positions      h f32 [B*T, D] += pos_t[f] + pos_h[i] + pos_w[j]  (tables f16)
//   timestep_features  tau f32 [F] (device memory) -> e f16 [F, 256] = [cos(s w_k), sin(s w_k)]
//   silu_f16           f32 -> SiLU -> f16  (n elements)
//   gelu_tanh_f16      f32 -> GELU_tanh -> f16  (n elements)
//   modulation         out f32 [F, K, D] = src[f, k*D + d] (or src[f, d]) + table f16 [K, D]
//   unpatchify         tokens f32 [B*T, C*4] -> v f32 [F, C, H, W]; B = 2 may fuse CFG
//   euler_step         x_next = shifted x + dtau v, fresh noise for the pushed frames, and
//                      the popped clean chunk; shift and frame number read from device memory
//   noise_fill         out[f, e] = noise(seed, first_frame + f, e)
//   weights_init       random-checkpoint values rounded to f16 (rng::init_value)
//   convert_f32_f16, convert_bf16_f16, convert_f16_f32   weight upload (round to nearest even)
//   philox_blocks      raw Philox4x32-10 blocks (the known-answer test of the generator)
//
// Shape contracts are checked by kernels/src/elementwise.rs; pointers are 16-byte aligned
// (cudaMalloc, or a 16-byte aligned arena). Every f32 expression that must equal the CPU
// reference bit for bit (noise, weight init, Euler update, guidance) is written with
// __fadd_rn / __fmul_rn, which nvcc never contracts into an fma.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

#include "common/ptx.cuh"
#include "common/vec8.cuh"

#if PTX_EMU
#define EW_UNROLL
#else
#define EW_UNROLL _Pragma("unroll")
#endif

// ---------------------------------------------------------------------------------------
// Traits: 256-thread CTAs; a vector item is 8 elements (two float4 of f32 = one uint4 of
// 16-bit values), so each f16 side is one 16-byte access and each f32 side two.
// ---------------------------------------------------------------------------------------
struct EwTraits {
    static constexpr int kThreads = 256;
    static constexpr int kVec = 8;
    static constexpr int kFreqs = 128;  // timestep: 128 frequencies, cos and sin -> 256
    static_assert(kVec * 2 == 16, "a vector of 16-bit values is one 16-byte access");
    static_assert(kVec * 4 == 32, "a vector of f32 is two 16-byte accesses");
    static_assert(kThreads % 32 == 0, "whole warps");
};

// Linear index of this thread in the grid and the grid's thread count (the loop stride).
__device__ __forceinline__ size_t grid_index() {
    return static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x;
}
__device__ __forceinline__ size_t grid_stride() {
    return static_cast<size_t>(gridDim.x) * blockDim.x;
}

// ---------------------------------------------------------------------------------------
// Philox4x32-10 (Salmon et al., SC'11; Random123) and the Box-Muller map of docs/streamdit.md
// section 5, exactly as engine/src/rng.rs: the same words, and the same f32 operations in
// the same order (the accurate logf/sqrtf/cosf/sinf may differ from the host's libm in the
// last bits on a GPU).
// ---------------------------------------------------------------------------------------
struct Philox {
    static constexpr uint32_t kM0 = 0xD2511F53u;
    static constexpr uint32_t kM1 = 0xCD9E8D57u;
    static constexpr uint32_t kW0 = 0x9E3779B9u;
    static constexpr uint32_t kW1 = 0xBB67AE85u;
    static constexpr int kRounds = 10;
    // "WINI": the counter word that separates weight-init draws from noise draws.
    static constexpr uint32_t kWeightInitDomain = 0x57494E49u;
    // 2 * f32(pi), exactly (rng.rs: `2.0 * std::f32::consts::PI * u`, left to right).
    static constexpr float kTwoPiF32 = 6.28318548202514648f;
};

__device__ __forceinline__ uint4 philox4x32_10(uint4 c, uint2 k) {
EW_UNROLL
    for (int round = 0; round < Philox::kRounds; ++round) {
        if (round > 0) {
            k.x += Philox::kW0;
            k.y += Philox::kW1;
        }
        const uint64_t p0 = static_cast<uint64_t>(Philox::kM0) * c.x;
        const uint64_t p1 = static_cast<uint64_t>(Philox::kM1) * c.z;
        const uint32_t hi0 = static_cast<uint32_t>(p0 >> 32);
        const uint32_t lo0 = static_cast<uint32_t>(p0);
        const uint32_t hi1 = static_cast<uint32_t>(p1 >> 32);
        const uint32_t lo1 = static_cast<uint32_t>(p1);
        c = make_uint4(hi1 ^ c.y ^ k.x, lo1, hi0 ^ c.w ^ k.y, lo0);
    }
    return c;
}

__device__ __forceinline__ uint2 split64(uint64_t v) {
    return make_uint2(static_cast<uint32_t>(v), static_cast<uint32_t>(v >> 32));
}

// u = ((r >> 8) + 0.5) * 2^-24 in (0, 1], each operation rounded in f32 (rng::unit_open).
__device__ __forceinline__ float unit_open(uint32_t r) {
    return __fmul_rn(__fadd_rn(static_cast<float>(r >> 8), 0.5f), 1.0f / 16777216.0f);
}

// (sqrt(-2 ln ua) cos(2 pi ub), sqrt(-2 ln ua) sin(2 pi ub)) (rng::box_muller).
__device__ __forceinline__ float2 box_muller(uint32_t ra, uint32_t rb) {
    const float radius = sqrtf(__fmul_rn(-2.0f, logf(unit_open(ra))));
    const float theta = __fmul_rn(Philox::kTwoPiF32, unit_open(rb));
    return make_float2(__fmul_rn(radius, cosf(theta)), __fmul_rn(radius, sinf(theta)));
}

// Noise elements 4q .. 4q+3 of global latent frame `frame` (rng::noise_frame).
__device__ __forceinline__ float4 noise4(uint64_t seed, uint64_t frame, uint64_t q) {
    const uint2 qq = split64(q);
    const uint2 g = split64(frame);
    const uint4 r = philox4x32_10(make_uint4(qq.x, qq.y, g.x, g.y), split64(seed));
    const float2 a = box_muller(r.x, r.y);
    const float2 b = box_muller(r.z, r.w);
    return make_float4(a.x, a.y, b.x, b.y);
}

// ---------------------------------------------------------------------------------------
// patchify: thread item (token, channel pair cp) of batch copy 0 reads two channels x two
// rows as four float2 (x[f, c, 2i+a, 2j .. 2j+1]) and stores the token's entries
// [8 cp, 8 cp + 8) (= (c*2 + a)*2 + b for c in {2cp, 2cp+1}) as one 16-byte f16 vector into
// each of the `batch` copies. Contract: c, h, w even.
// ---------------------------------------------------------------------------------------
struct PatchifyParams {
    const float* x;  // (frames, c, h, w) f32
    __half* out;     // (batch * frames * (h/2) * (w/2), c * 4) f16
    int frames;
    int c;
    int h;
    int w;
    int batch;
};

extern "C" __global__ void __launch_bounds__(EwTraits::kThreads) patchify(PatchifyParams p) {
    const int ht = p.h / 2;
    const int wt = p.w / 2;
    const size_t tokens = static_cast<size_t>(p.frames) * ht * wt;
    const int pairs = p.c / 2;
    const int row_len = p.c * 4;
    const size_t items = tokens * pairs;
    for (size_t it = grid_index(); it < items; it += grid_stride()) {
        const size_t token = it / pairs;
        const int cp = static_cast<int>(it % pairs);
        const int j = static_cast<int>(token % wt);
        const int i = static_cast<int>((token / wt) % ht);
        const int f = static_cast<int>(token / (static_cast<size_t>(wt) * ht));
        float v[8];
EW_UNROLL
        for (int k = 0; k < 2; ++k) {
            const int ch = 2 * cp + k;
EW_UNROLL
            for (int a = 0; a < 2; ++a) {
                const float* src =
                    p.x + ((static_cast<size_t>(f) * p.c + ch) * p.h + 2 * i + a) * p.w + 2 * j;
                const float2 t = *reinterpret_cast<const float2*>(src);
                v[k * 4 + a * 2] = t.x;
                v[k * 4 + a * 2 + 1] = t.y;
            }
        }
        for (int b = 0; b < p.batch; ++b) {
            vec8::store_f16(p.out + (b * tokens + token) * row_len + cp * 8, v);
        }
    }
}
EMU_REGISTER_KERNEL(patchify, PatchifyParams)

// ---------------------------------------------------------------------------------------
// add_positions: item (row r, 8-column chunk); token n = r % tokens = (f*ht + i)*wt + j.
// h += (pos_t[f] + pos_h[i]) + pos_w[j] in f32, the CPU reference's order. Contract: d % 8 == 0.
// ---------------------------------------------------------------------------------------
struct AddPositionsParams {
    float* h;              // (rows, d) f32, updated in place
    const __half* pos_t;   // (>= frames, d) f16
    const __half* pos_h;   // (>= ht, d) f16
    const __half* pos_w;   // (>= wt, d) f16
    int rows;              // batch * tokens
    int d;
    int tokens;            // frames * ht * wt
    int ht;
    int wt;
};

extern "C" __global__ void __launch_bounds__(EwTraits::kThreads)
    add_positions(AddPositionsParams p) {
    const int chunks = p.d / EwTraits::kVec;
    const size_t items = static_cast<size_t>(p.rows) * chunks;
    for (size_t it = grid_index(); it < items; it += grid_stride()) {
        const int r = static_cast<int>(it / chunks);
        const int col = static_cast<int>(it % chunks) * EwTraits::kVec;
        const int n = r % p.tokens;
        const int j = n % p.wt;
        const int i = (n / p.wt) % p.ht;
        const int f = n / (p.wt * p.ht);
        float hv[8], t[8], hh[8], w[8];
        float* dst = p.h + static_cast<size_t>(r) * p.d + col;
        vec8::load_f32(hv, dst);
        vec8::load_f16(t, p.pos_t + static_cast<size_t>(f) * p.d + col);
        vec8::load_f16(hh, p.pos_h + static_cast<size_t>(i) * p.d + col);
        vec8::load_f16(w, p.pos_w + static_cast<size_t>(j) * p.d + col);
EW_UNROLL
        for (int e = 0; e < 8; ++e) hv[e] = __fadd_rn(hv[e], __fadd_rn(__fadd_rn(t[e], hh[e]), w[e]));
        vec8::store_f32(dst, hv);
    }
}
EMU_REGISTER_KERNEL(add_positions, AddPositionsParams)

// ---------------------------------------------------------------------------------------
// timestep_features: item (frame f, frequency k < 128): a = 1000 tau[f] * w_k in f64 with
// w_k = exp(-ln(10000) k / 128), out[f, k] = cos(a), out[f, 128 + k] = sin(a), rounded to
// f32 then f16 (the CPU reference computes in f64 and rounds to f32: a reaches 1000 rad,
// where the f32 argument alone would be off by ~3e-5 rad). F * 128 f64 cos/sin per call:
// negligible even at 1/64 f64 rate.
// ---------------------------------------------------------------------------------------
struct TimestepFeaturesParams {
    const float* tau;  // (frames) f32, device memory (rewritten before every graph replay)
    __half* out;       // (frames, 256) f16
    int frames;
};

extern "C" __global__ void __launch_bounds__(EwTraits::kThreads)
    timestep_features(TimestepFeaturesParams p) {
    constexpr int kF = EwTraits::kFreqs;
    constexpr double kLn10000 = 9.210340371976184;  // ln(10000) in f64 (Rust's 10000f64.ln())
    const size_t items = static_cast<size_t>(p.frames) * kF;
    for (size_t it = grid_index(); it < items; it += grid_stride()) {
        const int f = static_cast<int>(it / kF);
        const int k = static_cast<int>(it % kF);
        const double s = 1000.0 * static_cast<double>(p.tau[f]);
        const double w = exp(-kLn10000 * static_cast<double>(k) / static_cast<double>(kF));
        const double a = s * w;
        p.out[static_cast<size_t>(f) * 2 * kF + k] = __float2half_rn(static_cast<float>(cos(a)));
        p.out[static_cast<size_t>(f) * 2 * kF + kF + k] =
            __float2half_rn(static_cast<float>(sin(a)));
    }
}
EMU_REGISTER_KERNEL(timestep_features, TimestepFeaturesParams)

// ---------------------------------------------------------------------------------------
// Elementwise maps over n elements: vector items of 8 (two float4 in, one uint4 out), then
// the n % 8 tail, one element per thread of the first tail threads.
// ---------------------------------------------------------------------------------------
template <class Vec8, class One>
__device__ __forceinline__ void map_n(long long n, Vec8 vec8, One one) {
    const size_t vecs = static_cast<size_t>(n) / EwTraits::kVec;
    for (size_t it = grid_index(); it < vecs; it += grid_stride()) vec8(it * EwTraits::kVec);
    const size_t tail = static_cast<size_t>(n) - vecs * EwTraits::kVec;
    const size_t t = grid_index();
    if (t < tail) one(vecs * EwTraits::kVec + t);
}

struct ActivationParams {
    const float* x;  // (n) f32
    __half* out;     // (n) f16
    long long n;
};

// SiLU(z) = z / (1 + exp(-z)) (accurate expf, as the CPU reference).
struct SiluOp {
    __device__ __forceinline__ float operator()(float z) const { return z / (1.0f + expf(-z)); }
};

// GELU_tanh(z) = 0.5 z (1 + tanh(0.7978845608 (z + 0.044715 z^3))).
struct GeluTanhOp {
    __device__ __forceinline__ float operator()(float z) const {
        return 0.5f * z * (1.0f + tanhf(0.7978845608f * (z + 0.044715f * z * z * z)));
    }
};

template <class Op>
__device__ __forceinline__ void activation(const ActivationParams& p) {
    const Op op;
    map_n(
        p.n,
        [&](size_t e) {
            float v[8];
            vec8::load_f32(v, p.x + e);
EW_UNROLL
            for (int k = 0; k < 8; ++k) v[k] = op(v[k]);
            vec8::store_f16(p.out + e, v);
        },
        [&](size_t e) { p.out[e] = __float2half_rn(op(p.x[e])); });
}

extern "C" __global__ void __launch_bounds__(EwTraits::kThreads) silu_f16(ActivationParams p) {
    activation<SiluOp>(p);
}
EMU_REGISTER_KERNEL(silu_f16, ActivationParams)

extern "C" __global__ void __launch_bounds__(EwTraits::kThreads)
    gelu_tanh_f16(ActivationParams p) {
    activation<GeluTanhOp>(p);
}
EMU_REGISTER_KERNEL(gelu_tanh_f16, ActivationParams)

// ---------------------------------------------------------------------------------------
// modulation: item (frame f, vector k, 8-column chunk): out[f, k, :] = s + table[k, :] with
// s = src[f, k*d ..] when src_k == k (a block's t_mod [F, 6D]) or src[f, ..] when src_k == 1
// (the final layer's t_emb [F, D]). Contract: d % 8 == 0, src_k in {1, k}.
// ---------------------------------------------------------------------------------------
struct ModulationParams {
    const float* src;     // (frames, src_k * d) f32
    const __half* table;  // (k, d) f16
    float* out;           // (frames, k, d) f32
    int frames;
    int k;
    int d;
    int src_k;
};

extern "C" __global__ void __launch_bounds__(EwTraits::kThreads) modulation(ModulationParams p) {
    const int chunks = p.d / EwTraits::kVec;
    const size_t items = static_cast<size_t>(p.frames) * p.k * chunks;
    for (size_t it = grid_index(); it < items; it += grid_stride()) {
        const int col = static_cast<int>(it % chunks) * EwTraits::kVec;
        const size_t fk = it / chunks;  // f * k + vector
        const int vec = static_cast<int>(fk % p.k);
        const size_t f = fk / p.k;
        const int sv = p.src_k == 1 ? 0 : vec;
        float s[8], t[8];
        vec8::load_f32(s, p.src + (f * p.src_k + sv) * p.d + col);
        vec8::load_f16(t, p.table + static_cast<size_t>(vec) * p.d + col);
EW_UNROLL
        for (int e = 0; e < 8; ++e) s[e] = __fadd_rn(s[e], t[e]);
        vec8::store_f32(p.out + fk * p.d + col, s);
    }
}
EMU_REGISTER_KERNEL(modulation, ModulationParams)

// ---------------------------------------------------------------------------------------
// unpatchify: item = one float2 of the output, v[.., c, y, 2j .. 2j+1], which is the float2
// x[token (f, y/2, j), (c*2 + y%2)*2 + {0, 1}]. With combine (batch == 2) the output is
// [F, C, H, W] and v = v_u + g (v_c - v_u), branch 0 conditional, branch 1 unconditional
// (graph Op::Guidance: out = v[1] + scale (v[0] - v[1])); without it, [batch, F, C, H, W].
// Contract: c >= 1, h, w even; combine only with batch == 2.
// ---------------------------------------------------------------------------------------
struct UnpatchifyParams {
    const float* x;  // (batch * frames * (h/2) * (w/2), c * 4) f32
    float* out;      // (frames, c, h, w) f32 with combine, else (batch, frames, c, h, w)
    int frames;
    int c;
    int h;
    int w;
    int batch;
    int combine;     // 1: fuse classifier-free guidance (batch == 2)
    float guidance;  // g
};

extern "C" __global__ void __launch_bounds__(EwTraits::kThreads) unpatchify(UnpatchifyParams p) {
    const int ht = p.h / 2;
    const int wt = p.w / 2;
    const size_t tokens = static_cast<size_t>(p.frames) * ht * wt;
    const int row_len = p.c * 4;
    const int out_batches = p.combine ? 1 : p.batch;
    const size_t items = static_cast<size_t>(out_batches) * p.frames * p.c * p.h * wt;
    for (size_t it = grid_index(); it < items; it += grid_stride()) {
        size_t rest = it;
        const int j = static_cast<int>(rest % wt);
        rest /= wt;
        const int y = static_cast<int>(rest % p.h);
        rest /= p.h;
        const int ch = static_cast<int>(rest % p.c);
        rest /= p.c;
        const int f = static_cast<int>(rest % p.frames);
        const int b = static_cast<int>(rest / p.frames);
        const size_t token = (static_cast<size_t>(f) * ht + y / 2) * wt + j;
        const int entry = (ch * 2 + y % 2) * 2;
        float2 v = *reinterpret_cast<const float2*>(p.x + (b * tokens + token) * row_len + entry);
        if (p.combine) {
            const float2 u =
                *reinterpret_cast<const float2*>(p.x + (tokens + token) * row_len + entry);
            v.x = __fadd_rn(u.x, __fmul_rn(p.guidance, v.x - u.x));
            v.y = __fadd_rn(u.y, __fmul_rn(p.guidance, v.y - u.y));
        }
        *reinterpret_cast<float2*>(p.out + it * 2) = v;
    }
}
EMU_REGISTER_KERNEL(unpatchify, UnpatchifyParams)

// ---------------------------------------------------------------------------------------
// euler_step: the sampler update of one streaming step, out of place, for a CUDA graph that
// serves every step (docs/streamdit.md section 5; the CPU backend's step). Item (frame f, Philox
// block q) covers elements [4q, 4q + 4) of frame f:
//   f <  F - shift:  x_next[f] = x[f + shift] + dtau[f + shift] * v[f + shift]
//   f >= F - shift:  x_next[f] = noise(seed, first_frame + f - (F - shift), 4q ..)
//   f <  shift:      emit[f]   = x[f] + dtau[f] * v[f]     (the popped clean chunk)
// shift (0: no pop) and first_frame come from `control` in device memory, written by the
// host before each replay; an out-of-range shift traps. x_next must not alias x or v.
// Contract: frame_elems % 4 == 0.
// ---------------------------------------------------------------------------------------
struct EulerControl {
    unsigned long long first_frame;  // global frame number of the first pushed noise frame
    int shift;                       // frames popped (0, or the chunk size c)
    int reserved;                    // 0; keeps the struct 16 bytes
};

struct EulerStepParams {
    const float* x;                // (frames, frame_elems) f32
    const float* v;                // (frames, frame_elems) f32
    const float* dtau;             // (frames) f32, device memory
    const EulerControl* control;   // device memory
    float* x_next;                 // (frames, frame_elems) f32
    float* emit;                   // (emit_frames, frame_elems) f32
    unsigned long long seed;
    int frames;
    int frame_elems;
    int emit_frames;               // capacity of emit: shift <= emit_frames
};

__device__ __forceinline__ float4 euler4(const float* x, const float* v, float dt) {
    const float4 a = *reinterpret_cast<const float4*>(x);
    const float4 b = *reinterpret_cast<const float4*>(v);
    return make_float4(__fadd_rn(a.x, __fmul_rn(dt, b.x)), __fadd_rn(a.y, __fmul_rn(dt, b.y)),
                       __fadd_rn(a.z, __fmul_rn(dt, b.z)), __fadd_rn(a.w, __fmul_rn(dt, b.w)));
}

extern "C" __global__ void __launch_bounds__(EwTraits::kThreads) euler_step(EulerStepParams p) {
    const int shift = p.control->shift;
    const uint64_t first = p.control->first_frame;
    if (shift < 0 || shift >= p.frames || shift > p.emit_frames) __trap();
    const int blocks = p.frame_elems / 4;
    const size_t items = static_cast<size_t>(p.frames) * blocks;
    for (size_t it = grid_index(); it < items; it += grid_stride()) {
        const int f = static_cast<int>(it / blocks);
        const int q = static_cast<int>(it % blocks);
        const size_t e = static_cast<size_t>(q) * 4;
        float4 out;
        if (f < p.frames - shift) {
            const size_t src = static_cast<size_t>(f + shift) * p.frame_elems + e;
            out = euler4(p.x + src, p.v + src, p.dtau[f + shift]);
        } else {
            out = noise4(p.seed, first + static_cast<uint64_t>(f - (p.frames - shift)), q);
        }
        *reinterpret_cast<float4*>(p.x_next + static_cast<size_t>(f) * p.frame_elems + e) = out;
        if (f < shift) {
            const size_t src = static_cast<size_t>(f) * p.frame_elems + e;
            *reinterpret_cast<float4*>(p.emit + src) = euler4(p.x + src, p.v + src, p.dtau[f]);
        }
    }
}
EMU_REGISTER_KERNEL(euler_step, EulerStepParams)

// ---------------------------------------------------------------------------------------
// noise_fill: out[f, e] = noise(seed, first_frame + f, e) for the prefill's initial buffer.
// Item (frame f, Philox block q); one float4 store when frame_elems % 4 == 0, else scalar
// stores (the last block of a frame may be partial: a prefix, as rng::noise_frame).
// ---------------------------------------------------------------------------------------
struct NoiseFillParams {
    float* out;  // (frames, frame_elems) f32
    unsigned long long seed;
    unsigned long long first_frame;
    int frames;
    int frame_elems;
};

extern "C" __global__ void __launch_bounds__(EwTraits::kThreads) noise_fill(NoiseFillParams p) {
    const int blocks = (p.frame_elems + 3) / 4;
    const size_t items = static_cast<size_t>(p.frames) * blocks;
    const bool vec = p.frame_elems % 4 == 0;
    for (size_t it = grid_index(); it < items; it += grid_stride()) {
        const int f = static_cast<int>(it / blocks);
        const int q = static_cast<int>(it % blocks);
        const float4 z = noise4(p.seed, p.first_frame + f, q);
        float* dst = p.out + static_cast<size_t>(f) * p.frame_elems + static_cast<size_t>(q) * 4;
        if (vec) {
            *reinterpret_cast<float4*>(dst) = z;
        } else {
            const float zs[4] = {z.x, z.y, z.z, z.w};
            const int take = min(4, p.frame_elems - q * 4);
            for (int k = 0; k < take; ++k) dst[k] = zs[k];
        }
    }
}
EMU_REGISTER_KERNEL(noise_fill, NoiseFillParams)

// ---------------------------------------------------------------------------------------
// weights_init: out[i - start] = f16(init_value(seed, tensor, i, mean, half_width)) for
// i in [start, start + n): output i % 4 of the Philox block with key seed and counter
// [lo(i/4), hi(i/4), tensor, "WINI"], u = unit_open, value = mean + half_width (2u - 1),
// each f32 operation rounded separately, then round to nearest even f16 (the checkpoint's
// f16 rounding). Item = 8 consecutive global indices [8G, 8G + 8) (two Philox blocks): one
// 16-byte store when the group lies inside the range and start % 8 == 0, else element-wise
// stores of the in-range part. Per-row (mean, half_width) tensors launch once per row.
// ---------------------------------------------------------------------------------------
struct WeightsInitParams {
    __half* out;  // (n) f16: element i of the tensor at out[i - start]
    unsigned long long seed;
    unsigned long long start;
    long long n;
    unsigned int tensor;  // the tensor's position in the checkpoint schema
    float mean;
    float half_width;
};

__device__ __forceinline__ float init_value(uint32_t r, float mean, float half_width) {
    const float centred = __fadd_rn(__fmul_rn(2.0f, unit_open(r)), -1.0f);
    return __fadd_rn(mean, __fmul_rn(half_width, centred));
}

extern "C" __global__ void __launch_bounds__(EwTraits::kThreads)
    weights_init(WeightsInitParams p) {
    if (p.n <= 0) return;
    const uint64_t begin = p.start;
    const uint64_t end = p.start + static_cast<uint64_t>(p.n);
    const uint64_t g0 = begin / 8;
    const uint64_t groups = (end - 1) / 8 - g0 + 1;
    const bool aligned = begin % 8 == 0;
    const uint2 key = split64(p.seed);
    for (size_t it = grid_index(); it < groups; it += grid_stride()) {
        const uint64_t g = g0 + it;
        float v[8];
EW_UNROLL
        for (int h = 0; h < 2; ++h) {
            const uint2 q = split64(2 * g + h);
            const uint4 r =
                philox4x32_10(make_uint4(q.x, q.y, p.tensor, Philox::kWeightInitDomain), key);
            v[4 * h + 0] = init_value(r.x, p.mean, p.half_width);
            v[4 * h + 1] = init_value(r.y, p.mean, p.half_width);
            v[4 * h + 2] = init_value(r.z, p.mean, p.half_width);
            v[4 * h + 3] = init_value(r.w, p.mean, p.half_width);
        }
        const uint64_t i0 = 8 * g;
        if (aligned && i0 + 8 <= end) {
            vec8::store_f16(p.out + (i0 - begin), v);
        } else {
            for (int k = 0; k < 8; ++k) {
                const uint64_t i = i0 + k;
                if (i >= begin && i < end) p.out[i - begin] = __float2half_rn(v[k]);
            }
        }
    }
}
EMU_REGISTER_KERNEL(weights_init, WeightsInitParams)

// ---------------------------------------------------------------------------------------
// Conversions for weight upload, n elements (any n): vector items of 8, then the tail.
// f32 -> f16 and bf16 -> f16 round to nearest even (overflow to inf, as the checkpoint
// reader's f16 rounding); f16 -> f32 is exact.
// ---------------------------------------------------------------------------------------
struct ConvertF32F16Params {
    const float* in;  // (n) f32
    __half* out;      // (n) f16
    long long n;
};

extern "C" __global__ void __launch_bounds__(EwTraits::kThreads)
    convert_f32_f16(ConvertF32F16Params p) {
    map_n(
        p.n,
        [&](size_t e) {
            float v[8];
            vec8::load_f32(v, p.in + e);
            vec8::store_f16(p.out + e, v);
        },
        [&](size_t e) { p.out[e] = __float2half_rn(p.in[e]); });
}
EMU_REGISTER_KERNEL(convert_f32_f16, ConvertF32F16Params)

struct ConvertBf16F16Params {
    const __nv_bfloat16* in;  // (n) bf16
    __half* out;              // (n) f16
    long long n;
};

extern "C" __global__ void __launch_bounds__(EwTraits::kThreads)
    convert_bf16_f16(ConvertBf16F16Params p) {
    map_n(
        p.n,
        [&](size_t e) {
            const uint4 q = *reinterpret_cast<const uint4*>(p.in + e);
            const uint32_t w[4] = {q.x, q.y, q.z, q.w};
            float v[8];
EW_UNROLL
            for (int i = 0; i < 4; ++i) {
                // bf16 is the top half of an f32: the conversion is a shift, exact.
                v[2 * i] = __uint_as_float(w[i] << 16);
                v[2 * i + 1] = __uint_as_float(w[i] & 0xffff0000u);
            }
            vec8::store_f16(p.out + e, v);
        },
        [&](size_t e) { p.out[e] = __float2half_rn(__bfloat162float(p.in[e])); });
}
EMU_REGISTER_KERNEL(convert_bf16_f16, ConvertBf16F16Params)

struct ConvertF16F32Params {
    const __half* in;  // (n) f16
    float* out;        // (n) f32
    long long n;
};

extern "C" __global__ void __launch_bounds__(EwTraits::kThreads)
    convert_f16_f32(ConvertF16F32Params p) {
    map_n(
        p.n,
        [&](size_t e) {
            float v[8];
            vec8::load_f16(v, p.in + e);
            vec8::store_f32(p.out + e, v);
        },
        [&](size_t e) { p.out[e] = __half2float(p.in[e]); });
}
EMU_REGISTER_KERNEL(convert_f16_f32, ConvertF16F32Params)

// ---------------------------------------------------------------------------------------
// philox_blocks: out[i] = Philox4x32-10(counter[i], key[i]); the generator's known-answer
// test against Random123's vectors (and a way to inspect raw words on a device).
// ---------------------------------------------------------------------------------------
struct PhiloxBlocksParams {
    const uint4* counter;  // (n)
    const uint2* key;      // (n)
    uint4* out;            // (n)
    int n;
};

extern "C" __global__ void __launch_bounds__(EwTraits::kThreads)
    philox_blocks(PhiloxBlocksParams p) {
    for (size_t it = grid_index(); it < static_cast<size_t>(p.n); it += grid_stride()) {
        p.out[it] = philox4x32_10(p.counter[it], p.key[it]);
    }
}
EMU_REGISTER_KERNEL(philox_blocks, PhiloxBlocksParams)
