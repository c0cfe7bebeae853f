// The FlashAttention-2-style core shared by every attention kernel (attention.cu:
// StreamDiT's window and cross attention; wan_attention.cu: Wan's attention over a KV cache):
// the tile traits, the shared-memory swizzle, the per-head RMSNorm of a tile row and
// `attention_tile`, which computes one query tile of one head given a geometry (where query,
// key and output rows live). Each kernel file includes it and defines its geometries and
// entry points.
//
// One CTA computes one query tile (kBM = 64 rows) of one head: it loads the Q tile once
// (optionally RMS-normalizing it per head, times a gain), keeps its mma A fragments in
// registers and streams the keys in tiles of kBN = 64 through a kStages-deep cp.async ring;
// each K tile is (optionally) RMS-normalized in shared memory right after it lands. Scores
// S = Q K^T and the output O += P V use mma.sync.m16n8k16 (f16 in, f32 accumulate); the
// softmax is online in f32 with exp2f and log2(e) folded into the scale 1/sqrt(dh); P is
// rounded to f16 in registers and reused directly as the A operand of P V (the S
// accumulator layout of two n8 tiles is the A fragment of one k16 step).
//
// Numerics: a key that is not allowed (masked, or past the end of the key range) gets score
// -inf. A row whose every score is -inf keeps m = -inf; the exponent then subtracts 0
// instead of m (exp2(-inf) = 0, never inf - inf = NaN), its l stays 0 and its output is 0
// (1/l is replaced by 0).
#pragma once

#include <cuda_fp16.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "common/ptx.cuh"
#if PTX_EMU
#define ATTN_UNROLL
#else
#define ATTN_UNROLL _Pragma("unroll")
#endif

// ---------------------------------------------------------------------------------------
// Tile traits.
//
// 4 warps = 128 threads; each warp owns 16 query rows (one m16 tile), so a CTA owns kBM = 64
// rows. Key tiles of kBN = 64: per warp and key tile, dh/16 k-steps x 8 n8 tiles of Q K^T
// and 4 k-steps x dh/8 n8 tiles of P V, i.e. 2 * 8 * dh/16 HMMA per 8 * dh/16 + 4 * dh/16
// LDSM.x4 (2 : 3 with Q in registers). Registers per thread (dh = 128): Q fragments 32, O
// accumulator 64, S/P 32, row state 4, addresses; ptxas also keeps a k-step of K/V
// fragments in flight: 210-230 (dh = 128) and 143-167 (dh = 64) with nvcc 13.5, no spills.
// Loads: two threads per row (threads 2r, 2r+1 load the two halves of row r), so each
// thread computes one row address per tile (the window token gather is index arithmetic),
// and the two halves of a row meet in one __shfl_xor for the RMS sum. For Q the warp that
// loads rows [16w, 16w+16) is the warp that multiplies them: Q needs only __syncwarp.
// Shared memory: Q kBM x dh + kStages x (K + V) kBN x dh halves + kStages x kBN f16 key
// biases (0 or -inf; f16 rather than f32 so that two dh = 128 CTAs fit an SM) + the two
// gains: dh = 64: 57984 B (3 CTAs per H100 SM), dh = 128: 115584 B (2 CTAs, 8 warps).
// kStages = 3 keeps two key tiles in flight while one is multiplied.
// ---------------------------------------------------------------------------------------
template <int kHeadDim>
struct AttnTraits {
    static constexpr int kDh = kHeadDim;
    static constexpr int kBM = 64;
    static constexpr int kBN = 64;
    static constexpr int kWarps = 4;
    static constexpr int kThreads = kWarps * 32;
    static constexpr int kStages = 3;
    static constexpr int kChunks = kDh / 8;             // 16-byte chunks per row
    static constexpr int kThreadChunks = kChunks / 2;   // chunks per thread (2 per row)
    static constexpr int kKSteps = kDh / 16;            // k16 steps of Q K^T
    static constexpr int kSTiles = kBN / 8;             // n8 tiles of S per warp
    static constexpr int kOTiles = kDh / 8;             // n8 tiles of O per warp
    static constexpr int kPSteps = kBN / 16;            // k16 steps of P V
    static constexpr int kTileQ = kBM * kDh;            // halves
    static constexpr int kTileKV = kBN * kDh;           // halves, one of K or V
    static constexpr int kStageBytes = 2 * kTileKV * 2;
    static constexpr int kBiasOffset = kTileQ * 2 + kStages * kStageBytes;  // bytes
    static constexpr int kGainOffset = kBiasOffset + kStages * kBN * 2;     // bytes: gq, gk
    static constexpr int kSmemBytes = kGainOffset + 2 * kDh * 2;
    // CTAs per SM that shared memory allows on an H100 (228 KiB, 1 KiB reserved per CTA):
    // dh = 64: 3, dh = 128: 2 (dh = 16: 14784 B, so registers decide; 4 CTAs = 16 warps at
    // <= 128 registers). __launch_bounds__ asks ptxas for the registers to match (<= 170
    // and <= 255 per thread): without it ptxas picked 128 for dh = 64 on sm_80 and spilled.
    static constexpr int kMinBlocks = kDh == 128 ? 2 : kDh == 64 ? 3 : 4;
    // 1/sqrt(dh) times log2(e): exp(x / sqrt(dh)) = exp2(x * kScaleLog2).
    static constexpr float kScaleLog2 = static_cast<float>(
        (kDh == 16 ? 0.25 : kDh == 64 ? 0.125 : 0.08838834764831844055) * 1.4426950408889634074);

    static_assert(kDh == 16 || kDh == 64 || kDh == 128, "head dims 16, 64 and 128 only");
    static_assert(kBM == kWarps * 16, "one m16 tile of query rows per warp");
    static_assert(kThreads == 2 * kBM && kThreads == 2 * kBN, "two loader threads per Q/K/V row");
    static_assert(kChunks >= 2 && (kChunks & (kChunks - 1)) == 0,
                  "the swizzle XORs chunk indices within a power-of-two row");
    static_assert(kSTiles % 2 == 0 && kOTiles % 2 == 0, "ldmatrix.x4 loads pairs of n8 tiles");
    static_assert(kStages >= 2 && kStages <= 7, "cp.async.wait_group takes kStages - 1 < 8");
    static_assert(kSmemBytes <= 227 * 1024, "must fit one SM's shared memory");
    static_assert(kMinBlocks * (kSmemBytes + 1024) <= 228 * 1024, "kMinBlocks CTAs fit an SM");
};

// Shared-memory layout of a [rows, dh] tile: chunk c (8 halves) of row r is stored at chunk
// c ^ (r & 7) for dh >= 64. ldmatrix (plain for Q and K, .trans for V) reads one chunk
// column from 8 consecutive rows (starting at a multiple of 8) per phase; rows are dh * 2 =
// 128 or 256 bytes (whole bank lines), so unswizzled those 8 chunks would share 4 banks
// (8-way conflict); XOR-ed by r & 7 they take the 8 distinct 16-byte slots of a bank line,
// all 32 banks once. For dh < 64 a row is kChunks < 8 chunks and rpl = 8 / kChunks rows
// share a bank line (dh = 16: 4 rows of 32 bytes), so a phase spans kChunks lines; row r's
// chunk c sits in 16-byte slot (r % rpl) kChunks + c' of its line with c' = c XOR the line
// index (r / rpl) & (kChunks - 1): unswizzled (c' = c) the phase's rows would use only rpl
// slots (a kChunks-way conflict); XOR-ed, each line uses a different c' and the 8 rows take
// all 8 slots (tests/wan_attention.rs checks every phase of both layouts).
template <int kDh>
__device__ __forceinline__ int swz(int row, int chunk) {
    constexpr int kChunks = kDh / 8;
    if constexpr (kChunks >= 8) {
        return row * kDh + ((chunk ^ (row & 7)) << 3);
    } else {
        constexpr int kRowsPerLine = 8 / kChunks;
        return row * kDh + ((chunk ^ ((row / kRowsPerLine) & (kChunks - 1))) << 3);
    }
}

__device__ __forceinline__ uint32_t pack_half2(float lo, float hi) {
    const __half2 h = __floats2half2_rn(lo, hi);
    uint32_t u;
    memcpy(&u, &h, 4);
    return u;
}

// In place: this thread's kThreadChunks chunks of row r of `tile` (the half `part` of the
// row; the partner thread, lane ^ 1, holds the other half) become RMS(u) * gain in f16,
// u / sqrt(mean(u^2) + 1e-6) computed in f32. Every lane of the warp must call it (shuffle).
// The chunks must be the ones this thread copied with cp.async and has waited for; `gain`
// (dh halves) is in shared memory.
template <class T>
__device__ __forceinline__ void rms_norm_row_half(__half* tile, int r, int part, const __half* gain) {
    float ss = 0.0f;
ATTN_UNROLL
    for (int i = 0; i < T::kThreadChunks; ++i) {
        const int c = part * T::kThreadChunks + i;
        const uint4 v = *reinterpret_cast<const uint4*>(tile + swz<T::kDh>(r, c));
        const uint32_t w[4] = {v.x, v.y, v.z, v.w};
ATTN_UNROLL
        for (int e = 0; e < 4; ++e) {
            __half2 h;
            memcpy(&h, &w[e], 4);
            const float2 f = __half22float2(h);
            ss = fmaf(f.x, f.x, ss);
            ss = fmaf(f.y, f.y, ss);
        }
    }
    ss += __shfl_xor_sync(0xffffffffu, ss, 1);
    const float inv = rsqrtf(ss * (1.0f / T::kDh) + 1e-6f);
ATTN_UNROLL
    for (int i = 0; i < T::kThreadChunks; ++i) {
        const int c = part * T::kThreadChunks + i;
        uint4* p = reinterpret_cast<uint4*>(tile + swz<T::kDh>(r, c));
        const uint4 v = *p;
        const uint4 g = *reinterpret_cast<const uint4*>(gain + c * 8);
        const uint32_t w[4] = {v.x, v.y, v.z, v.w};
        const uint32_t gw[4] = {g.x, g.y, g.z, g.w};
        uint32_t o[4];
ATTN_UNROLL
        for (int e = 0; e < 4; ++e) {
            __half2 h, gh;
            memcpy(&h, &w[e], 4);
            memcpy(&gh, &gw[e], 4);
            const float2 f = __half22float2(h);
            const float2 gf = __half22float2(gh);
            o[e] = pack_half2(f.x * inv * gf.x, f.y * inv * gf.y);
        }
        *p = make_uint4(o[0], o[1], o[2], o[3]);
    }
}

// ---------------------------------------------------------------------------------------
// The shared core. Geom supplies, for this CTA:
//   num_q()          valid query rows of the tile (1..kBM; rows past it are zero and unstored)
//   q(r)             global address of query row r's head slice (r < num_q())
//   num_keys()       keys to stream (loaded rows; key tiles cover [0, num_keys))
//   kv(key)          global address of key row `key`'s K head slice; V is at kv(key) + v_off
//   v_off            element offset from a K slice to its V slice
//   allowed(key)     whether the key takes part in the softmax (key < num_keys())
//   out(r)           global address of output row r's head slice
// ---------------------------------------------------------------------------------------
// Null gains (both) skip the RMSNorm: plain softmax(q k^T / sqrt(dh)) v, as in the TAE
// decoder's mid-block attention.
template <int kDh, class Geom>
__device__ __forceinline__ void attention_tile(const Geom& g, const __half* gain_q,
                                               const __half* gain_k, unsigned char* smem_raw) {
    using T = AttnTraits<kDh>;
    __half* s_q = reinterpret_cast<__half*>(smem_raw);
    __half* s_kv = s_q + T::kTileQ;  // kStages x [K tile, V tile]
    __half* s_bias = reinterpret_cast<__half*>(smem_raw + T::kBiasOffset);
    // The gains live in shared memory: read from global inside the key loop, the compiler
    // hoists them (read-only) into dh registers for the whole loop.
    __half* s_gq = reinterpret_cast<__half*>(smem_raw + T::kGainOffset);
    __half* s_gk = s_gq + kDh;

    const int tid = threadIdx.x;
    const int lane = tid % 32;
    const int warp = tid / 32;
    const int ld_r = tid >> 1;   // the Q/K/V row this thread loads (and normalizes)
    const int part = tid & 1;    // which half of the row
    const int nq = g.num_q();
    const int nkeys = g.num_keys();
    const int k_tiles = (nkeys + T::kBN - 1) / T::kBN;
    const bool norm = gain_q != nullptr && gain_k != nullptr;  // uniform over the CTA
    // A valid address for the zero-byte (zero-fill) copies of rows past the end: nothing is
    // read from it, but it must not be null.
    const __half* const dummy = g.q(0);

    // Issues the copies of key tile kt into its stage (one commit group by the caller).
    // Rows past num_keys are zero-filled (nothing is read): their K normalizes to 0 and their
    // V is 0, so with P = 0 they add exactly nothing (poisoned shared memory would add NaN).
    auto load_kv = [&](int kt) {
        __half* s_k = s_kv + (kt % T::kStages) * (2 * T::kTileKV);
        __half* s_v = s_k + T::kTileKV;
        const int key = kt * T::kBN + ld_r;
        const bool ok = key < nkeys;
        const __half* src_k = ok ? g.kv(key) : dummy;
        const __half* src_v = ok ? src_k + g.v_off : dummy;
ATTN_UNROLL
        for (int i = 0; i < T::kThreadChunks; ++i) {
            const int c = part * T::kThreadChunks + i;
            ptx::cp_async_16_zfill(s_k + swz<kDh>(ld_r, c), ok ? src_k + c * 8 : src_k, ok ? 16u : 0u);
            ptx::cp_async_16_zfill(s_v + swz<kDh>(ld_r, c), ok ? src_v + c * 8 : src_v, ok ? 16u : 0u);
        }
    };

    // Group 0: the Q tile (rows past num_q zero-filled). Groups 1 .. kStages-1: key tiles
    // 0 .. kStages-2 (empty groups past the end keep the group count uniform).
    {
        const bool ok = ld_r < nq;
        const __half* src = ok ? g.q(ld_r) : dummy;
ATTN_UNROLL
        for (int i = 0; i < T::kThreadChunks; ++i) {
            const int c = part * T::kThreadChunks + i;
            ptx::cp_async_16_zfill(s_q + swz<kDh>(ld_r, c), ok ? src + c * 8 : src, ok ? 16u : 0u);
        }
        // The gains, one 16-byte chunk per thread of the first 2 dh / 8 threads.
        if (norm && tid < 2 * T::kChunks) {
            const __half* gsrc = tid < T::kChunks ? gain_q + tid * 8 : gain_k + (tid - T::kChunks) * 8;
            ptx::cp_async_16(s_gq + tid * 8, gsrc);
        }
        ptx::cp_async_commit();
    }
ATTN_UNROLL
    for (int st = 0; st < T::kStages - 1; ++st) {
        if (st < k_tiles) load_kv(st);
        ptx::cp_async_commit();
    }

    // Q and the gains: this thread's own copies have landed (kStages - 1 newer groups may be
    // pending). Barrier: orders the gain copies (made by warp 0) before every thread reads
    // them. (Running threads in different orders cannot expose its absence, since warp 0
    // waits for its copies before any gain is read; the race checker reports it: variant
    // no_gain_sync.) Then each thread normalizes its half of its Q row in place; the
    // __syncwarp orders those writes (and the partner's) before the warp's ldmatrix of its
    // rows: rows [16w, 16w+16) are loaded and read by warp w only.
    ptx::cp_async_wait<T::kStages - 1>();
#if !defined(EMU_VARIANT_no_gain_sync)  // planted race when defined (attention.cu)
    __syncthreads();
#endif
    if (norm) rms_norm_row_half<T>(s_q, ld_r, part, s_gq);
    __syncwarp();

    // ldmatrix.x4 lane roles (lane 8j + r gives row r of matrix j). Q (A operand, m16 x k16):
    // matrix j is rows +8 (j % 2), chunk +(j / 2) = registers a0..a3. K (B operand, two n8 x
    // k16 tiles, rows = keys): matrix j is keys +8 (j / 2), chunk +(j % 2) = b0, b1 of tile
    // 2p, then of 2p+1. V (.trans, B operand k16 = keys x two n8 = dh columns): matrix j is
    // keys +8 (j % 2), chunk +(j / 2) = b0, b1 of dh tile 2p, then of 2p+1.
    const int ld_row = lane % 8;
    const int ld_mat = lane / 8;

    uint32_t qf[T::kKSteps][4];
ATTN_UNROLL
    for (int ks = 0; ks < T::kKSteps; ++ks) {
        ptx::ldmatrix_x4(qf[ks], s_q + swz<kDh>(warp * 16 + (ld_mat % 2) * 8 + ld_row, ks * 2 + ld_mat / 2));
    }

    float o[T::kOTiles][4];
ATTN_UNROLL
    for (int n = 0; n < T::kOTiles; ++n)
ATTN_UNROLL
        for (int e = 0; e < 4; ++e) o[n][e] = 0.0f;
    // Row state of rows lane/4 (h = 0) and lane/4 + 8 (h = 1): running max of the raw scores
    // and this thread's partial sum of exp2 (its 2 columns of each n8 tile; the quad's four
    // partial sums are added at the end).
    float m_run[2] = {-INFINITY, -INFINITY};
    float l_run[2] = {0.0f, 0.0f};

    for (int kt = 0; kt < k_tiles; ++kt) {
        const int stage = kt % T::kStages;
        __half* s_k = s_kv + stage * (2 * T::kTileKV);
        const __half* s_v = s_k + T::kTileKV;
        __half* bias = s_bias + stage * T::kBN;

        // This thread's copies of tile kt have landed (kStages - 2 newer groups may be
        // pending). Normalize this thread's half of its K row in place and record whether
        // its key takes part (bias 0 or -inf).
        ptx::cp_async_wait<T::kStages - 2>();
        if (norm) rms_norm_row_half<T>(s_k, ld_r, part, s_gk);
        if (part == 0) bias[ld_r] = __float2half(g.allowed(kt * T::kBN + ld_r) ? 0.0f : -INFINITY);
        // Barrier: (1) orders every thread's K normalization, bias and landed V of tile kt
        // before any warp's ldmatrix of them below; (2) every warp has finished reading the
        // stage of tile kt-1 (previous iteration), which the refill below overwrites
        // (write-after-read: the emulator lands cp.async data only at the wait, so no thread
        // order exposes a missing barrier here; the race checker reports it, variant
        // no_key_sync).
#if !defined(EMU_VARIANT_no_key_sync)  // planted race when defined (attention.cu)
        __syncthreads();
#endif
        const int next = kt + T::kStages - 1;
        if (next < k_tiles) load_kv(next);
        ptx::cp_async_commit();

        // S = Q K^T (raw scores, f32).
        float s[T::kSTiles][4];
ATTN_UNROLL
        for (int j = 0; j < T::kSTiles; ++j)
ATTN_UNROLL
            for (int e = 0; e < 4; ++e) s[j][e] = 0.0f;
ATTN_UNROLL
        for (int ks = 0; ks < T::kKSteps; ++ks) {
ATTN_UNROLL
            for (int p = 0; p < T::kSTiles / 2; ++p) {
                uint32_t r[4];
                ptx::ldmatrix_x4(r, s_k + swz<kDh>(p * 16 + (ld_mat / 2) * 8 + ld_row, ks * 2 + ld_mat % 2));
                const uint32_t b0[2] = {r[0], r[1]};
                const uint32_t b1[2] = {r[2], r[3]};
                ptx::mma_m16n8k16_f16_f32(s[2 * p], qf[ks], b0, s[2 * p]);
                ptx::mma_m16n8k16_f16_f32(s[2 * p + 1], qf[ks], b1, s[2 * p + 1]);
            }
        }
        // Masked keys (outside the window / text, mask 0) get -inf.
ATTN_UNROLL
        for (int j = 0; j < T::kSTiles; ++j) {
            const float2 b = __half22float2(*reinterpret_cast<const __half2*>(bias + j * 8 + 2 * (lane % 4)));
            s[j][0] += b.x;
            s[j][1] += b.y;
            s[j][2] += b.x;
            s[j][3] += b.y;
        }

        // Online softmax of rows h = 0, 1 (elements 2h, 2h+1 of every n8 tile).
ATTN_UNROLL
        for (int h = 0; h < 2; ++h) {
            float mx = m_run[h];
ATTN_UNROLL
            for (int j = 0; j < T::kSTiles; ++j) mx = fmaxf(mx, fmaxf(s[j][2 * h], s[j][2 * h + 1]));
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
            // All -inf so far: subtract 0, not -inf (exp2(-inf - -inf) would be NaN).
            const float m_scaled = mx == -INFINITY ? 0.0f : mx * T::kScaleLog2;
            const float corr = exp2f(m_run[h] * T::kScaleLog2 - m_scaled);  // 0 when m_run = -inf
            m_run[h] = mx;
            float sum = 0.0f;
ATTN_UNROLL
            for (int j = 0; j < T::kSTiles; ++j) {
                s[j][2 * h] = exp2f(fmaf(s[j][2 * h], T::kScaleLog2, -m_scaled));
                s[j][2 * h + 1] = exp2f(fmaf(s[j][2 * h + 1], T::kScaleLog2, -m_scaled));
                sum += s[j][2 * h] + s[j][2 * h + 1];
            }
            l_run[h] = l_run[h] * corr + sum;
ATTN_UNROLL
            for (int n = 0; n < T::kOTiles; ++n) {
                o[n][2 * h] *= corr;
                o[n][2 * h + 1] *= corr;
            }
        }

        // O += P V. P (f16) of key step t is S tiles 2t, 2t+1 in A-fragment order:
        // a0 = (row g, keys 2q..), a1 = (row g+8, keys 2q..), a2, a3 = the same 8 keys later.
ATTN_UNROLL
        for (int t = 0; t < T::kPSteps; ++t) {
            const uint32_t pa[4] = {pack_half2(s[2 * t][0], s[2 * t][1]), pack_half2(s[2 * t][2], s[2 * t][3]),
                                    pack_half2(s[2 * t + 1][0], s[2 * t + 1][1]),
                                    pack_half2(s[2 * t + 1][2], s[2 * t + 1][3])};
ATTN_UNROLL
            for (int p = 0; p < T::kOTiles / 2; ++p) {
                uint32_t r[4];
                ptx::ldmatrix_x4_trans(r, s_v + swz<kDh>(t * 16 + (ld_mat % 2) * 8 + ld_row, p * 2 + ld_mat / 2));
                const uint32_t b0[2] = {r[0], r[1]};
                const uint32_t b1[2] = {r[2], r[3]};
                ptx::mma_m16n8k16_f16_f32(o[2 * p], pa, b0, o[2 * p]);
                ptx::mma_m16n8k16_f16_f32(o[2 * p + 1], pa, b1, o[2 * p + 1]);
            }
        }
    }
    // Retire the trailing (empty) groups.
    ptx::cp_async_wait<0>();

    // O / l. A row without any allowed key has l = 0 and O = 0: it stores 0.
    float inv_l[2];
ATTN_UNROLL
    for (int h = 0; h < 2; ++h) {
        float l = l_run[h];
        l += __shfl_xor_sync(0xffffffffu, l, 1);
        l += __shfl_xor_sync(0xffffffffu, l, 2);
        inv_l[h] = l > 0.0f ? 1.0f / l : 0.0f;
    }
    // Stage the warp's 16 output rows in its own Q rows (read only by this warp's ldmatrix
    // before the loop; the __syncwarp orders those reads before these writes), then store
    // whole 16-byte chunks, two lanes per row.
    __syncwarp();
ATTN_UNROLL
    for (int n = 0; n < T::kOTiles; ++n)
ATTN_UNROLL
        for (int h = 0; h < 2; ++h) {
            const int row = warp * 16 + lane / 4 + h * 8;
            *reinterpret_cast<uint32_t*>(s_q + swz<kDh>(row, n) + 2 * (lane % 4)) =
                pack_half2(o[n][2 * h] * inv_l[h], o[n][2 * h + 1] * inv_l[h]);
        }
    // Orders the staging writes of all lanes before the row reads below (same warp).
    __syncwarp();
    const int row = warp * 16 + lane / 2;
    if (row < nq) {
        __half* dst = g.out(row);
        const int lpart = lane & 1;
ATTN_UNROLL
        for (int i = 0; i < T::kThreadChunks; ++i) {
            const int c = lpart * T::kThreadChunks + i;
            *reinterpret_cast<uint4*>(dst + c * 8) = *reinterpret_cast<const uint4*>(s_q + swz<kDh>(row, c));
        }
    }
}

