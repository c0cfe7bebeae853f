// The FlashAttention-3-style consumer pieces shared by the sm_90a attention kernels
// (attention_sm90.cu: Wan's chunk over its KV cache; attention_sm90_window.cu: StreamDiT's
// window attention): the tile traits, the 128-byte-swizzled wgmma descriptors, and one
// consumer warpgroup's work on a key tile, split where the kernels differ (what masks or
// scales a score, which barrier guards V):
//
//   fa3_qk_issue S = Q K^T by dh/16 wgmma.m64n{kBN}k16, both operands in shared memory
//                (K-major), issued and committed;
//   fa3_softmax_deferred, fa3_rescale_o, fa3_pack_p
//                the online softmax of scores already scaled to log2 units (-inf = masked):
//                running max and sums per row, the factor O is rescaled by, P rounded to
//                f16 as the register-A fragments of P V (the S accumulator layout of 16
//                columns is the A layout of one k16 step), in three steps so that the
//                softmax can run while the previous tile's P V still writes O;
//   fa3_pv       O += P V by kBN/16 wgmma.m64n{dh}k16, V an MN-major 128-byte-swizzled
//                descriptor, committed (the caller waits before releasing the stage);
//   fa3_inv      1 / row sum over the quad (0 for a row without any key);
//   Fa3PingPong  the two consumer warpgroups take turns issuing their GEMMs, so one's
//                softmax runs under the other's (FlashAttention-3's scheduler barriers:
//                named barriers kFa3TurnBarrier + c);
//   fa3_consume  a consumer's walk over its key tiles with FA3's intra-warpgroup overlap
//                (the softmax of tile it under the P V of tile it - 1), inside the turns.
//
// Accumulator r of thread t holds row 16 (t / 32) + (t % 32) / 4 + 8 ((r >> 1) & 1) of the
// warpgroup's 64 and column 8 (r >> 2) + 2 (t % 4) + (r & 1) ("Matrix Fragments for
// wgmma.mma_async.m64nNk16"); `fa3_col` gives that column. Layout and barrier protocol of
// each kernel: its file's header, and kernels/README.md "Hopper attention".
#pragma once

#include <cuda_fp16.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "common/ptx_sm90.cuh"

#if PTX_EMU
#define FA3_UNROLL
#else
#define FA3_UNROLL _Pragma("unroll")
#endif

template <int kHeadDim>
struct Fa3Traits {
    static constexpr int kDh = kHeadDim;
    static constexpr int kBM = 128;                        // queries per CTA
    static constexpr int kBN = 128;                        // keys per tile
    static constexpr int kStages = 2;
    static constexpr int kConsumers = 2;
    static constexpr int kThreads = 128 * (1 + kConsumers);
    static constexpr int kWgRows = kBM / kConsumers;       // 64: one m64 per consumer
    static constexpr int kBoxes = kDh / 64;                // 64-column (128-byte) TMA boxes per row
    static constexpr int kSAcc = kBN / 2;                  // S accumulators per thread
    static constexpr int kOAcc = kDh / 2;                  // O accumulators per thread
    static constexpr int kQkSteps = kDh / 16;              // k16 steps of Q K^T
    static constexpr int kPvSteps = kBN / 16;              // k16 steps of P V
    static constexpr uint32_t kQBox = kBM * 128;           // bytes of one Q box
    static constexpr uint32_t kKvBox = kBN * 128;          // bytes of one K or V box
    static constexpr uint32_t kTileQ = kBoxes * kQBox;
    static constexpr uint32_t kTileKv = kBoxes * kKvBox;   // K or V of one key tile
    static constexpr uint32_t kStageBytes = 2 * kTileKv;
    static constexpr uint32_t kSmemBytes = kTileQ + kStages * kStageBytes + 1024;  // + align
    static constexpr int kProducerRegs = 24;
    static constexpr int kConsumerRegs = 240;
    // 1/sqrt(dh) * log2(e): exp(x / sqrt(dh)) = exp2(x * kScaleLog2).
    static constexpr float kScaleLog2 = static_cast<float>(
        (kDh == 64 ? 0.125 : 0.08838834764831844055) * 1.4426950408889634074);

    static_assert(kDh == 64 || kDh == 128, "head dims 64 and 128");
    static_assert(kWgRows == 64, "each consumer warpgroup issues m64 wgmmas");
    static_assert(kBN % 16 == 0 && kBN <= 256, "wgmma N and whole k16 steps of P V");
    static_assert(kTileQ % 1024 == 0 && kKvBox % 1024 == 0,
                  "every box starts on the 1024-byte repeat of the 128-byte swizzle");
    static_assert(kTileKv < (1u << 20) && kTileQ < (1u << 20), "tx-count limit of a phase");
    static_assert(kSmemBytes <= 227 * 1024, "must fit one SM's shared memory");
    static_assert(128 * kProducerRegs + 128 * kConsumers * kConsumerRegs <= 65536,
                  "setmaxnreg budgets must fit the SM's 64K registers");
};

// The 128-byte-swizzled operand descriptors. K-major (Q, K: a row's 64 columns are one
// 128-byte atom row, 8 rows per 1024 bytes; step j of 16 columns advances the start 32 B
// inside the atom). MN-major (V as the B operand of P V, i.e. B(n = channel, k = key): 64
// channels contiguous per key row; LBO = the next 64 channels' box, SBO = the next 8 keys).
__device__ __forceinline__ uint64_t kmajor_desc(uint32_t addr) {
    return ptx::wgmma_desc(addr, 16, 1024, 1);
}
__device__ __forceinline__ uint64_t mnmajor_desc(uint32_t addr, uint32_t lbo) {
    return ptx::wgmma_desc(addr, lbo, 1024, 1);
}

__device__ __forceinline__ uint32_t pack_f16x2(float lo, float hi) {
    const __half2 h = __floats2half2_rn(lo, hi);
    uint32_t u;
    memcpy(&u, &h, 4);
    return u;
}

// Column (key within the tile, or channel) of accumulator r of thread t (see the top).
__device__ __forceinline__ int fa3_col(int r, int t) { return 8 * (r >> 2) + 2 * (t % 4) + (r & 1); }

// One consumer warpgroup's running state over its 64 query rows.
template <int kDh>
struct Fa3Rows {
    float o[Fa3Traits<kDh>::kOAcc];
    float m_row[2];  // running max of the scaled scores (log2 units)
    float l_row[2];  // this thread's part of the running row sums

    __device__ __forceinline__ void init() {
FA3_UNROLL
        for (int r = 0; r < Fa3Traits<kDh>::kOAcc; ++r) o[r] = 0.0f;
        m_row[0] = m_row[1] = -INFINITY;
        l_row[0] = l_row[1] = 0.0f;
    }
};

// S = Q K^T of the warpgroup's rows (q_rows: their first swizzled row; k_tile: the K tile):
// step j covers channels [16 j, 16 j + 16), box j / 4, 32 B per step inside the atom.
template <int kDh>
__device__ __forceinline__ void fa3_qk_issue(float (&s_acc)[Fa3Traits<kDh>::kSAcc],
                                             uint32_t q_rows, uint32_t k_tile) {
    using T = Fa3Traits<kDh>;
    ptx::wgmma_fence();
FA3_UNROLL
    for (int j = 0; j < T::kQkSteps; ++j)
        ptx::wgmma_f16_ss<T::kBN>(s_acc, kmajor_desc(q_rows + (j / 4) * T::kQBox + 32u * (j % 4)),
                                  kmajor_desc(k_tile + (j / 4) * T::kKvBox + 32u * (j % 4)), j > 0);
    ptx::wgmma_commit();
}

// The ping-pong of the two consumer warpgroups (FlashAttention-3, hopper/
// mainloop_fwd_sm90_tma_gmma_ws.hpp: warp_scheduler_barrier_sync / _arrive, mma_init):
// consumer c issues a tile's Q K^T only in its turn, bar.sync(kFa3TurnBarrier + c, 256),
// and hands the turn over as soon as it is issued, bar.arrive(kFa3TurnBarrier + 1 - c,
// 256), then waits for its scores and runs its softmax while the other consumer's GEMMs
// run. Each barrier counts both warpgroups: one's bar.sync meets the other's bar.arrive.
// Consumer 0's first turn is its own arrival (start); consumer 1 does not hand over after
// its last tile, so every arrival pairs with a wait (both walk the same tiles). Barrier ids
// 1 and 2 (0 is __syncthreads').
constexpr uint32_t kFa3TurnBarrier = 1;
struct Fa3PingPong {
    int wg;     // the consumer: 0 or 1
    int tiles;  // key tiles each consumer walks
    __device__ __forceinline__ void start() const {
        if (wg == 0) ptx::named_barrier_arrive(kFa3TurnBarrier, 256);
    }
    __device__ __forceinline__ void my_turn() const {
        ptx::named_barrier_sync(kFa3TurnBarrier + wg, 256);
    }
    __device__ __forceinline__ void hand_over(int tile) const {
#if !defined(EMU_VARIANT_unpaired_turn)  // planted when defined: an arrival left at exit
        if (wg == 0 || tile + 1 < tiles)
#endif
            ptx::named_barrier_arrive(kFa3TurnBarrier + 1 - wg, 256);
    }
};

// The online softmax of one key tile. `s_acc` holds the scores scaled to log2 units, -inf
// where masked; on return it holds P (f32), the running max and row sums are updated, and
// `alpha` is the factor O must be rescaled by (fa3_rescale_o) before this tile's P V: the
// caller does that, and packs P to f16 (fa3_pack_p: A register q of k16 step kk holds row
// 8 (q & 1), keys 16 kk + 8 (q >> 1) + 2 (t % 4) + {0, 1}), only once the previous P V,
// which accumulates into O and reads `pa`, has retired.
template <int kDh>
__device__ __forceinline__ void fa3_softmax_deferred(Fa3Rows<kDh>& st,
                                                     float (&s_acc)[Fa3Traits<kDh>::kSAcc],
                                                     float (&alpha)[2]) {
    using T = Fa3Traits<kDh>;
    float mx[2] = {-INFINITY, -INFINITY};
FA3_UNROLL
    for (int r = 0; r < T::kSAcc; ++r) mx[(r >> 1) & 1] = fmaxf(mx[(r >> 1) & 1], s_acc[r]);
    float sub[2];
FA3_UNROLL
    for (int h = 0; h < 2; ++h) {
        mx[h] = fmaxf(mx[h], __shfl_xor_sync(0xffffffffu, mx[h], 1));
        mx[h] = fmaxf(mx[h], __shfl_xor_sync(0xffffffffu, mx[h], 2));
        const float m_new = fmaxf(st.m_row[h], mx[h]);
        sub[h] = m_new == -INFINITY ? 0.0f : m_new;
        alpha[h] = exp2f(st.m_row[h] - sub[h]);
        st.m_row[h] = m_new;
        st.l_row[h] *= alpha[h];
    }
FA3_UNROLL
    for (int r = 0; r < T::kSAcc; ++r) {
        const int h = (r >> 1) & 1;
        s_acc[r] = exp2f(s_acc[r] - sub[h]);
        st.l_row[h] += s_acc[r];
    }
}
template <int kDh>
__device__ __forceinline__ void fa3_rescale_o(Fa3Rows<kDh>& st, const float (&alpha)[2]) {
FA3_UNROLL
    for (int r = 0; r < Fa3Traits<kDh>::kOAcc; ++r) st.o[r] *= alpha[(r >> 1) & 1];
}
template <int kDh>
__device__ __forceinline__ void fa3_pack_p(const float (&s_acc)[Fa3Traits<kDh>::kSAcc],
                                           uint32_t (&pa)[Fa3Traits<kDh>::kPvSteps][4]) {
FA3_UNROLL
    for (int kk = 0; kk < Fa3Traits<kDh>::kPvSteps; ++kk)
FA3_UNROLL
        for (int q = 0; q < 4; ++q)
            pa[kk][q] = pack_f16x2(s_acc[8 * kk + 2 * q], s_acc[8 * kk + 2 * q + 1]);
}

// O += P V, committed and not waited for: step kk covers keys [16 kk, 16 kk + 16) = 2 KiB
// of V rows.
template <int kDh>
__device__ __forceinline__ void fa3_pv(Fa3Rows<kDh>& st,
                                       const uint32_t (&pa)[Fa3Traits<kDh>::kPvSteps][4],
                                       uint32_t v_tile) {
    using T = Fa3Traits<kDh>;
    ptx::wgmma_fence();
FA3_UNROLL
    for (int kk = 0; kk < T::kPvSteps; ++kk)
        ptx::wgmma_f16_rs<kDh, 1, 1, 1>(st.o, pa[kk], mnmajor_desc(v_tile + 2048u * kk, T::kKvBox),
                                        1);
    ptx::wgmma_commit();
}

// Row sums over the quad; inv[h] = 1 / l (0 for a row without any key).
template <int kDh>
__device__ __forceinline__ void fa3_inv(const Fa3Rows<kDh>& st, float (&inv)[2]) {
FA3_UNROLL
    for (int h = 0; h < 2; ++h) {
        float l = st.l_row[h];
        l += __shfl_xor_sync(0xffffffffu, l, 1);
        l += __shfl_xor_sync(0xffffffffu, l, 2);
        inv[h] = l > 0.0f ? 1.0f / l : 0.0f;
    }
}

// One consumer warpgroup's walk over `tiles` key tiles, FlashAttention-3's intra-warpgroup
// overlap (hopper/mainloop_fwd_sm90_tma_gmma_ws.hpp, IntraWGOverlap) inside the ping-pong
// turns. Tile `it` (>= 1), in this consumer's turn: issue S = Q K^T of tile it, rescale O by
// the previous tile's alpha, issue O += P V of tile it - 1 (P from the registers `pa`), hand
// the turn over; then wait for S only (wgmma.wait_group 1: the P V still runs), mask and
// scale it (`score`), softmax it with O left alone, wait for the P V, release tile it - 1's
// stage, and only then overwrite `pa` with tile it's P. So the softmax of tile it runs under
// the P V of tile it - 1. Tile 0 has no P V before it; the last tile's P V follows the loop.
// Every element of O and of the row sums sees the same operations in the same order as
// the serial walk (S, softmax with O rescaled, P V, per tile), so the result is the same
// bit for bit; the variant `serial` (attention_sm90.cu) runs that serial walk to show it.
//   k_tile(it)   shared address of tile it's K (its V follows at + kTileKv);
//   wait_k(it), wait_v(it)   the barrier waits before reading K, V of tile it;
//   score(it, s_acc)   scales S in place to log2 units, -inf where masked (may wait, e.g.
//                     for the window kernel's k norms);
//   release(it)  tile it's stage is no longer read (after its P V retired).
template <int kDh, class KTile, class WaitK, class WaitV, class Score, class Release>
__device__ __forceinline__ void fa3_consume(Fa3Rows<kDh>& st, uint32_t q_rows,
                                            const Fa3PingPong& turns, KTile k_tile,
                                            WaitK wait_k, WaitV wait_v, Score score,
                                            Release release) {
    using T = Fa3Traits<kDh>;
    const int tiles = turns.tiles;
    float s_acc[T::kSAcc];
    uint32_t pa[T::kPvSteps][4];
    float alpha[2];
#if defined(EMU_VARIANT_serial)  // the serial walk (test-only, never built by nvcc)
    for (int it = 0; it < tiles; ++it) {
        wait_k(it);
        turns.my_turn();
        fa3_qk_issue<kDh>(s_acc, q_rows, k_tile(it));
        turns.hand_over(it);
        ptx::wgmma_wait<0>();
        score(it, s_acc);
        fa3_softmax_deferred<kDh>(st, s_acc, alpha);
        fa3_rescale_o<kDh>(st, alpha);
        fa3_pack_p<kDh>(s_acc, pa);
        wait_v(it);
        fa3_pv<kDh>(st, pa, k_tile(it) + T::kTileKv);
        ptx::wgmma_wait<0>();
        release(it);
    }
#else
    // Tile 0: no P V before it. Peeled, so that the loop body has no branch (a branch around
    // wgmma makes ptxas serialize every wgmma of the kernel, its C7518 note).
    wait_k(0);
    turns.my_turn();
    fa3_qk_issue<kDh>(s_acc, q_rows, k_tile(0));
    turns.hand_over(0);
    ptx::wgmma_wait<0>();
    score(0, s_acc);
    fa3_softmax_deferred<kDh>(st, s_acc, alpha);
    fa3_pack_p<kDh>(s_acc, pa);
    for (int it = 1; it < tiles; ++it) {
        wait_k(it);
        turns.my_turn();
        fa3_qk_issue<kDh>(s_acc, q_rows, k_tile(it));
        fa3_rescale_o<kDh>(st, alpha);
        wait_v(it - 1);
        fa3_pv<kDh>(st, pa, k_tile(it - 1) + T::kTileKv);
#if defined(EMU_VARIANT_early_release)  // planted race (attention_sm90.cu): P V still reads
        release(it - 1);
#endif
        turns.hand_over(it);
        ptx::wgmma_wait<1>();  // S of tile it; the P V of tile it - 1 may still run
        score(it, s_acc);
        fa3_softmax_deferred<kDh>(st, s_acc, alpha);
        ptx::wgmma_wait<0>();  // the P V of tile it - 1: O and `pa` are free again
#if !defined(EMU_VARIANT_early_release)
        release(it - 1);
#endif
        fa3_pack_p<kDh>(s_acc, pa);
    }
    fa3_rescale_o<kDh>(st, alpha);
    wait_v(tiles - 1);
    fa3_pv<kDh>(st, pa, k_tile(tiles - 1) + T::kTileKv);
#if defined(EMU_VARIANT_early_release)
    release(tiles - 1);
    ptx::wgmma_wait<0>();
#else
    ptx::wgmma_wait<0>();
    release(tiles - 1);
#endif
#endif
}
