// Wan2.1's q/k preparation (docs/wan.md sections 2.4, 2.5, 4, 5): the RMSNorm over the full
// width D (all heads together, before the head split: trap 4 of docs/wan.md section 11),
// times its gain, and for self-attention the 3D RoPE and the write of the chunk's K/V into
// its cache slots, in one pass over the QKV GEMM's output.
//
//   wan_qkv_rope   qkv [tokens, 3D] -> q_out [tokens, D] = RoPE(RMS(q) g_q),
//                  cache[slot(f) P + t] = [RoPE(RMS(k) g_k), v]  (K/V of frames whose slot
//                  is < 0 are not stored: LongLive's query-only re-cache frames)
//   wan_rms_rows   x[r, 0:d] = RMS(x[r, 0:d]) g in place, rows `ld` apart: the cross-
//                  attention's q ([M, D]) and its text keys (the k half of kv [Lt, 2D])
//
// RMS(z) = z / sqrt(mean(z^2) + 1e-6) over the d channels of a row, f32 arithmetic, f16
// result. RoPE (docs/wan.md section 4): head pair m = channels (2m, 2m+1) of a head of dh;
// pairs [0, nf) turn with the token's frame, [nf, nf + nh) with its row, the last nw with
// its column (nh = nw = (dh/2) / 3, nf = dh/2 - 2 nh); (x0, x1) -> (x0 c - x1 s, x0 s + x1 c)
// with (c, s) = (cos, sin) of the angle from three f32 tables the caller fills in f64
// (kernels/src/wan_qk.rs `rope_axis_table`): rope_f [frames, nf, 2] for this call's frames
// at their absolute latent positions (rewritten per chunk), rope_h [Hp, nh, 2], rope_w
// [Wp, nw, 2] (fixed per profile).
//
// Why here and not in the attention's Q/K loads: the norm needs the sum of squares of all D
// channels of a token, which a per-head attention CTA does not see; once a pass over q and k
// exists for it, rotating there costs no memory traffic, rotates every element once (an
// attention CTA would rotate the chunk's K tile once per query tile: 74 times per head at
// 1.3B), and writes the rotated keys into the cache in the same pass.
//
// Threads: one warp per row (token), 8 rows per 256-thread CTA. A lane owns the 16-byte
// chunks c = lane + 32 i (i < kMaxLaneChunks) of q and k, held in registers between the
// sum of squares (one warp-shuffle reduction each) and the write. Contract
// (kernels/src/wan_qk.rs): d % 8 == 0, 8 <= d <= 2048 (8 chunks per lane), dh % 8 == 0 (a
// chunk lies in one head), 16-byte aligned rows.
#include <cuda_fp16.h>
#include <stdint.h>

#include "common/ptx.cuh"
#include "common/vec8.cuh"

#if PTX_EMU
#define QK_UNROLL
#else
#define QK_UNROLL _Pragma("unroll")
#endif

struct QkTraits {
    static constexpr int kRowsPerCta = 8;
    static constexpr int kThreads = kRowsPerCta * 32;
    static constexpr int kMaxLaneChunks = 8;
    static constexpr int kMaxD = 32 * kMaxLaneChunks * 8;  // 2048
    static constexpr float kEps = 1e-6f;
};

__device__ __forceinline__ float qk_warp_sum(float v) {
QK_UNROLL
    for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
    return v;
}

__device__ __forceinline__ void unpack8(float (&v)[8], uint4 q) {
    const uint32_t w[4] = {q.x, q.y, q.z, q.w};
QK_UNROLL
    for (int i = 0; i < 4; ++i) {
        v[2 * i] = __half2float(__ushort_as_half(static_cast<unsigned short>(w[i] & 0xffffu)));
        v[2 * i + 1] = __half2float(__ushort_as_half(static_cast<unsigned short>(w[i] >> 16)));
    }
}

__device__ __forceinline__ float sum_sq8(uint4 q) {
    float v[8];
    unpack8(v, q);
    float s = 0.0f;
QK_UNROLL
    for (int e = 0; e < 8; ++e) s = fmaf(v[e], v[e], s);
    return s;
}

// Loads this lane's chunks of row[0, 8 chunks) into v and returns the warp's sum of squares.
__device__ __forceinline__ float load_row_sumsq(uint4 (&v)[QkTraits::kMaxLaneChunks], const __half* row,
                                                int chunks, int lane) {
    float ss = 0.0f;
QK_UNROLL
    for (int i = 0; i < QkTraits::kMaxLaneChunks; ++i) {
        const int c = lane + 32 * i;
        if (c < chunks) {
            v[i] = *reinterpret_cast<const uint4*>(row + c * 8);
            ss += sum_sq8(v[i]);
        }
    }
    return qk_warp_sum(ss);
}

// y = x * inv * g for the 8 channels of a chunk (g: 8 f16 gains, 16-byte aligned).
__device__ __forceinline__ void normalize8(float (&y)[8], uint4 x, float inv, const __half* g) {
    float gv[8];
    vec8::load_f16(gv, g);
    unpack8(y, x);
QK_UNROLL
    for (int e = 0; e < 8; ++e) y[e] = y[e] * inv * gv[e];
}

// ---------------------------------------------------------------------------------------
// wan_qkv_rope
// ---------------------------------------------------------------------------------------
struct WanQkvRopeParams {
    const __half* qkv;       // (tokens, 3D): q [0, D), k [D, 2D), v [2D, 3D), biases added
    const __half* gq;        // (D) self_attn.norm_q.weight
    const __half* gk;        // (D) self_attn.norm_k.weight
    const float* rope_f;     // (frames, nf, 2) cos, sin of this call's frames' angles
    const float* rope_h;     // (hp, nh, 2)
    const float* rope_w;     // (wp, nw, 2)
    const int* frame_slots;  // (frames) cache slot of each frame of the call; < 0: not stored
    __half* q_out;           // (tokens, D)
    __half* cache;           // (slots * hp * wp, 2D): k [0, D), v [D, 2D)
    int frames;              // tokens = frames * hp * wp, in [frames, hp, wp] order
    int hp;
    int wp;
    int heads;
    int head_dim;            // D = heads * head_dim
};

extern "C" __global__ void __launch_bounds__(QkTraits::kThreads) wan_qkv_rope(WanQkvRopeParams p) {
    using T = QkTraits;
    const int lane = threadIdx.x % 32;
    const int frame_tokens = p.hp * p.wp;
    const int token = blockIdx.x * T::kRowsPerCta + threadIdx.x / 32;
    if (token >= p.frames * frame_tokens) return;  // the whole warp: shuffles need all lanes
    const int d = p.heads * p.head_dim;
    const int chunks = d / 8;
    const int f = token / frame_tokens;
    const int t = token - f * frame_tokens;  // token within its frame = its row in the slot
    const int i = t / p.wp;
    const int j = t - i * p.wp;
    const int half = p.head_dim / 2;
    const int nh = half / 3;
    const int nw = nh;
    const int nf = half - 2 * nh;

    const __half* row = p.qkv + static_cast<size_t>(token) * (3 * static_cast<size_t>(d));
    uint4 qv[T::kMaxLaneChunks];
    uint4 kv[T::kMaxLaneChunks];
    const float inv_q = rsqrtf(load_row_sumsq(qv, row, chunks, lane) / static_cast<float>(d) + T::kEps);
    const float inv_k = rsqrtf(load_row_sumsq(kv, row + d, chunks, lane) / static_cast<float>(d) + T::kEps);

    const int slot = p.frame_slots[f];
    __half* krow = slot >= 0 ? p.cache + (static_cast<size_t>(slot) * frame_tokens + t) * (2 * static_cast<size_t>(d))
                             : nullptr;
    __half* qrow = p.q_out + static_cast<size_t>(token) * d;
QK_UNROLL
    for (int ci = 0; ci < T::kMaxLaneChunks; ++ci) {
        const int c = lane + 32 * ci;
        if (c >= chunks) continue;
        float q[8], k[8];
        normalize8(q, qv[ci], inv_q, p.gq + c * 8);
        normalize8(k, kv[ci], inv_k, p.gk + c * 8);
        const int m0 = (c * 8 % p.head_dim) / 2;  // first pair of the chunk within its head
QK_UNROLL
        for (int u = 0; u < 4; ++u) {
            const int m = m0 + u;
            const float* cs = m < nf        ? p.rope_f + (static_cast<size_t>(f) * nf + m) * 2
                              : m < nf + nh ? p.rope_h + (static_cast<size_t>(i) * nh + (m - nf)) * 2
                                            : p.rope_w + (static_cast<size_t>(j) * nw + (m - nf - nh)) * 2;
            const float cosv = cs[0];
            const float sinv = cs[1];
            const float q0 = q[2 * u], q1 = q[2 * u + 1];
            q[2 * u] = q0 * cosv - q1 * sinv;
            q[2 * u + 1] = q0 * sinv + q1 * cosv;
            const float k0 = k[2 * u], k1 = k[2 * u + 1];
            k[2 * u] = k0 * cosv - k1 * sinv;
            k[2 * u + 1] = k0 * sinv + k1 * cosv;
        }
        vec8::store_f16(qrow + c * 8, q);
        if (krow != nullptr) {
            vec8::store_f16(krow + c * 8, k);
            *reinterpret_cast<uint4*>(krow + d + c * 8) = *reinterpret_cast<const uint4*>(row + 2 * d + c * 8);
        }
    }
}
EMU_REGISTER_KERNEL(wan_qkv_rope, WanQkvRopeParams)

// ---------------------------------------------------------------------------------------
// wan_rms_rows (in place; each lane rewrites only the chunks it read, after the reduction)
// ---------------------------------------------------------------------------------------
struct WanRmsRowsParams {
    __half* x;           // (rows, ld): channels [0, d) of each row are normalized in place
    const __half* gain;  // (d) norm_q.weight or norm_k.weight
    int rows;
    int d;
    int ld;              // elements between rows (d for q, 2D for the k half of kv)
};

extern "C" __global__ void __launch_bounds__(QkTraits::kThreads) wan_rms_rows(WanRmsRowsParams p) {
    using T = QkTraits;
    const int lane = threadIdx.x % 32;
    const int r = blockIdx.x * T::kRowsPerCta + threadIdx.x / 32;
    if (r >= p.rows) return;  // the whole warp
    const int chunks = p.d / 8;
    __half* row = p.x + static_cast<size_t>(r) * p.ld;
    uint4 v[T::kMaxLaneChunks];
    const float inv = rsqrtf(load_row_sumsq(v, row, chunks, lane) / static_cast<float>(p.d) + T::kEps);
QK_UNROLL
    for (int ci = 0; ci < T::kMaxLaneChunks; ++ci) {
        const int c = lane + 32 * ci;
        if (c >= chunks) continue;
        float y[8];
        normalize8(y, v[ci], inv, p.gain + c * 8);
        vec8::store_f16(row + c * 8, y);
    }
}
EMU_REGISTER_KERNEL(wan_rms_rows, WanRmsRowsParams)
