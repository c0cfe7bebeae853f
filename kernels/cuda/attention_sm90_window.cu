// streamdit-arch: sm_90a
// StreamDiT's shifted window self-attention on Hopper (sm_90a), FlashAttention-3 style: the
// same product as attention.cu's attn_window_d{64,128} (which stays the sm_80/sm_89 path and
// the cross-check), with the per-head RMSNorm of q and k fused,
//
//   attn_sm90_window_d64, attn_sm90_window_d128
//       o = softmax(qn kn^T / sqrt(dh)) v per head within each window, qn and kn the rows of
//       q and k RMS-normalized per head times the gains gq and gk,
//
// over the packed list of (window, query tile) pairs that have rows (common/window_tiles.cuh,
// with tiles of kBM = 128 queries), reading the fused QKV GEMM output (B T, 3D) in place.
//
// Loads. A window's local token t is (f0 + t / (hn wn), i0 + t / wn % hn, j0 + t % wn), so 8
// consecutive local tokens are 8 consecutive rows of qkv when every window extent along W is
// a multiple of 8 (the contract: Ww, the W shift and Wt multiples of 8; streamdit-4b has
// 16, 8 and 32). The tensor map views qkv as 2-D (B T rows, 3D columns) with boxes of 8 rows x
// 64 columns, 128-byte swizzled: one box is one 1024-byte swizzle atom, so the boxes of a
// tile's 8-row runs land at 1024-byte steps exactly where a 128-row box would put them. A
// tile of 128 rows is 16 boxes per 64 columns. Runs past the window's n tokens load the
// window's first run instead (finite data; those keys are masked to -inf, so P = 0 there,
// and those query rows are never stored), so every stage completes the same byte count.
//
// CTA = 3 warpgroups (384 threads), one query tile of one head; grid x = packed tile list,
// y = head, z = batch element:
//   warpgroup 0, the producer (setmaxnreg.dec 40): one elected thread of warp 0 loads the Q
//     tile (q_full) and then, per key tile kt, waits empty[s] and loads K (k_full[s]) and V
//     (v_full[s]) into ring stage s = kt % 2. Warps 1-3 (96 threads) compute the k norm of
//     each key of the stage: they wait empty[s] (their kinv[s] of the previous round has been
//     read) and k_full[s], sum the squares of each K row in shared memory and write
//     kinv[s][key] = 1 / sqrt(mean(k^2) + 1e-6), then arrive on kinv_full[s] (96 arrivals);
//   warpgroups 1 and 2, the consumers (setmaxnreg.inc 232): consumer c owns query rows
//     [64c, 64c + 64). First each normalizes its own Q rows in shared memory, folding both
//     gains into them: q'' = f16(q / sqrt(mean(q^2) + 1e-6) * gq * gk) (two threads per row,
//     one shuffle), since qn . kn = sum_c q_c inv_q gq_c k_c inv_k gk_c = inv_k (q'' . k):
//     K stays as loaded and its norm is one scale per score column. The writes are generic
//     proxy and wgmma reads Q through the async proxy: fence.proxy.async, then the
//     warpgroup's 128 threads meet on q_ready[c] (an mbarrier). Per key tile, in its turn of
//     the two consumers' ping-pong (common/fa3_core.cuh, Fa3PingPong: named barriers 1 and
//     2), S = q'' K^T, scaled by kinv[s][col] and log2(e)/sqrt(dh) (keys past n: -inf),
//     online softmax, O += P V after v_full[s], then every consumer thread arrives on
//     empty[s]; the softmax of tile kt runs under the P V of tile kt - 1 (fa3_consume,
//     FA3's intra-warpgroup overlap).
//   The epilogue divides by the row sums and stores f16 pairs to the tokens' rows (local
//   rows past n are not stored).
//
// Barriers and parities: q_full (1 arrival + the Q bytes), q_ready[c] (128 arrivals, phase
// 0 only); for key tile kt in stage s = kt % 2, round u = kt / 2: k_full[s], v_full[s] (1
// arrival + the tile's bytes), kinv_full[s] (96 arrivals) are waited with parity u & 1;
// empty[s] (256 arrivals) is waited by the producer warps with parity (u & 1) ^ 1 (a fresh
// barrier's previous phase counts as complete). kinv_full[s] of round u needs empty[s] of
// round u - 1, which needs the consumers' round u - 1, so no waiter falls a phase behind.
//
// Shape contract (kernels/src/attention_sm90_window.rs): attention.cu's window contract, dh
// in {64, 128}, non-null gains, every W extent a multiple of 8, B T and 3D within i32.
//
// Test-only variants (kernels/tests/attention.rs; never built by nvcc), planted races the
// race checker must report:
// streamdit-emu-variant: no_kinv_wait
//   the consumers skip the wait on kinv_full[s]: they read the k norms before (or unordered
//   with) the producer warps' writes (read-after-write between threads);
// streamdit-emu-variant: no_q_fence
//   the consumers leave out fence.proxy.async after normalizing Q: wgmma reads the Q rows
//   through the async proxy unordered with the generic writes (read-after-write, proxy).
#include "common/fa3_core.cuh"
#include "common/window_tiles.cuh"

struct AttnSm90WindowParams {
    ptx::TmaDesc map_qkv;  // qkv (B T, 3D) f16: box {64 cols, 8 rows}, SWIZZLE_128B
    const __half* gq;      // (dh) RMSNorm gain of q
    const __half* gk;      // (dh) RMSNorm gain of k
    __half* out;           // (B T, D)
    int ft, ht, wt;        // token grid, T = ft ht wt, tokens in [F, Ht, Wt] order
    int fw, hw, ww;        // window
    int sf, sh, sw;        // shift (0 <= s < window)
    int heads;             // D = heads * dh
};

constexpr int kRun = 8;                 // rows per TMA box: 8 tokens along W
constexpr int kNormWarps = 3;           // producer warps 1-3 compute the k norms
constexpr int kWinProducerRegs = 40;    // the norm warps' loop needs more than 24
constexpr int kWinConsumerRegs = 232;   // 128 x 40 + 256 x 232 = 64 512 <= 64K
constexpr float kRmsEps = 1e-6f;

// Where the local tokens of one window live.
struct WindowRows {
    int row0;  // b T
    int f0, i0, j0, hn, wn, n;
    int ht, wt;

    __device__ __forceinline__ int row(int t) const {
        const int hw = hn * wn;
        const int df = t / hw;
        const int rem = t - df * hw;
        const int di = rem / wn;
        return row0 + ((f0 + df) * ht + (i0 + di)) * wt + (j0 + rem - di * wn);
    }
    // The first row of the 8-row run starting at local token t (the window's first run past
    // its end: finite data that is masked or never stored).
    __device__ __forceinline__ int run_row(int t) const { return row(t < n ? t : 0); }
};

// Sum of squares of the 16-byte chunk at p (8 f16), in f32.
__device__ __forceinline__ float sum_sq8(const unsigned char* p) {
    __half2 h[4];
    memcpy(h, p, 16);
    float acc = 0.0f;
FA3_UNROLL
    for (int i = 0; i < 4; ++i) {
        const float2 f = __half22float2(h[i]);
        acc += f.x * f.x + f.y * f.y;
    }
    return acc;
}

template <int kDh>
__device__ __forceinline__ void attn_sm90_window(const AttnSm90WindowParams& p,
                                                 unsigned char* smem) {
    using T = Fa3Traits<kDh>;
    constexpr int S = T::kStages;
    constexpr uint32_t kRunBytes = kRun * 128;  // one box: 8 rows of 64 columns
    static_assert(T::kBM % kRun == 0 && T::kBN % kRun == 0, "tiles of whole runs");
    static_assert(128 * kWinProducerRegs + 256 * kWinConsumerRegs <= 65536, "register budget");
    __shared__ uint64_t q_full, q_ready[T::kConsumers], k_full[S], v_full[S], kinv_full[S],
        empty[S];
    __shared__ float kinv[S][T::kBN];

    int kf, kh, kw, tile;
    // Past the list's end (never, with the grid kernels/src sizes): the CTA leaves at once.
    if (!packed_tile<T::kBM>(p, blockIdx.x, &kf, &kh, &kw, &tile)) return;
    int f0, f1, i0, i1, j0, j1;
    window_extent(kf, p.fw, p.sf, p.ft, &f0, &f1);
    window_extent(kh, p.hw, p.sh, p.ht, &i0, &i1);
    window_extent(kw, p.ww, p.sw, p.wt, &j0, &j1);
    WindowRows w;
    w.row0 = static_cast<int>(blockIdx.z) * p.ft * p.ht * p.wt;
    w.f0 = f0;
    w.i0 = i0;
    w.j0 = j0;
    w.hn = i1 - i0;
    w.wn = j1 - j0;
    w.n = (f1 - f0) * w.hn * w.wn;
    w.ht = p.ht;
    w.wt = p.wt;
    const int q0 = tile * T::kBM;
    const int key_tiles = (w.n + T::kBN - 1) / T::kBN;

    const uint32_t base = ptx::smem_u32(smem);
    const uint32_t q_tile = (base + 1023u) & ~1023u;  // the swizzle repeats every 1024 bytes
    unsigned char* q_ptr = smem + (q_tile - base);
    const uint32_t ring = q_tile + T::kTileQ;
    unsigned char* ring_ptr = q_ptr + T::kTileQ;
    const int warpgroup = threadIdx.x / 128;
    const int col0 = blockIdx.y * kDh;  // this head's channels in q and out
    const int d = p.heads * kDh;

    if (threadIdx.x == 0) {
        ptx::mbarrier_init(&q_full, 1);
        for (int c = 0; c < T::kConsumers; ++c) ptx::mbarrier_init(&q_ready[c], 128);
        for (int s = 0; s < S; ++s) {
            ptx::mbarrier_init(&k_full[s], 1);
            ptx::mbarrier_init(&v_full[s], 1);
            ptx::mbarrier_init(&kinv_full[s], 32 * kNormWarps);
            ptx::mbarrier_init(&empty[s], 128 * T::kConsumers);
        }
        ptx::fence_proxy_async();  // the TMA unit completes bytes on these barriers
    }
    __syncthreads();

    if (warpgroup == 0) {
        ptx::setmaxnreg_dec<kWinProducerRegs>();
        const int warp = threadIdx.x / 32;
        if (warp == 0) {
            if (ptx::elect_one()) {
                ptx::mbarrier_arrive_expect_tx(&q_full, T::kTileQ);
                for (int b = 0; b < T::kBoxes; ++b)
                    for (int c = 0; c < T::kBM / kRun; ++c)
                        ptx::tma_load_2d(q_ptr + b * T::kQBox + c * kRunBytes, &p.map_qkv,
                                         &q_full, col0 + 64 * b, w.run_row(q0 + kRun * c));
                for (int kt = 0; kt < key_tiles; ++kt) {
                    const int s = kt % S;
                    // Stage s is free once both consumers' P V of tile kt - S has retired.
                    ptx::mbarrier_wait(&empty[s], ((kt / S) & 1) ^ 1);
                    unsigned char* k = ring_ptr + s * T::kStageBytes;
                    unsigned char* v = k + T::kTileKv;
                    ptx::mbarrier_arrive_expect_tx(&k_full[s], T::kTileKv);
                    for (int b = 0; b < T::kBoxes; ++b)
                        for (int c = 0; c < T::kBN / kRun; ++c)
                            ptx::tma_load_2d(k + b * T::kKvBox + c * kRunBytes, &p.map_qkv,
                                             &k_full[s], d + col0 + 64 * b,
                                             w.run_row(kt * T::kBN + kRun * c));
                    ptx::mbarrier_arrive_expect_tx(&v_full[s], T::kTileKv);
                    for (int b = 0; b < T::kBoxes; ++b)
                        for (int c = 0; c < T::kBN / kRun; ++c)
                            ptx::tma_load_2d(v + b * T::kKvBox + c * kRunBytes, &p.map_qkv,
                                             &v_full[s], 2 * d + col0 + 64 * b,
                                             w.run_row(kt * T::kBN + kRun * c));
                }
            }
            return;
        }
        // Warps 1-3: the k norm of every key of each stage (a row's chunks in any order: the
        // swizzle only permutes the 16-byte chunks within the row).
        for (int kt = 0; kt < key_tiles; ++kt) {
            const int s = kt % S;
            const uint32_t u = (kt / S) & 1;
            ptx::mbarrier_wait(&empty[s], u ^ 1);  // kinv[s] of round u - 1 has been read
            ptx::mbarrier_wait(&k_full[s], u);
            const unsigned char* k = ring_ptr + s * T::kStageBytes;
            for (int r = threadIdx.x - 32; r < T::kBN; r += 32 * kNormWarps) {
                float ss = 0.0f;
                for (int b = 0; b < T::kBoxes; ++b)
                    for (int c = 0; c < 8; ++c) ss += sum_sq8(k + b * T::kKvBox + r * 128 + 16 * c);
                kinv[s][r] = 1.0f / sqrtf(ss / kDh + kRmsEps);
            }
            ptx::mbarrier_arrive(&kinv_full[s]);
        }
        return;  // the producer touches no shared memory after this
    }

    ptx::setmaxnreg_inc<kWinConsumerRegs>();
    const int wg = warpgroup - 1;
    const int t = threadIdx.x % 128;
    ptx::mbarrier_wait(&q_full, 0);
    {
        // Q row r of this warpgroup: thread pair (2r, 2r + 1), each half of the row's chunks.
        constexpr int kChunks = kDh / 8;  // 16-byte chunks per row
        const int r = wg * T::kWgRows + t / 2;
        const int half = t % 2;
        float ss = 0.0f;
        for (int j = half * kChunks / 2; j < (half + 1) * kChunks / 2; ++j)
            ss += sum_sq8(q_ptr + (j / 8) * T::kQBox + r * 128 + 16 * (j % 8));
        ss += __shfl_xor_sync(0xffffffffu, ss, 1);
        const float inv = 1.0f / sqrtf(ss / kDh + kRmsEps);
        for (int j = half * kChunks / 2; j < (half + 1) * kChunks / 2; ++j) {
            unsigned char* chunk = q_ptr + (j / 8) * T::kQBox + r * 128 + 16 * (j % 8);
            // Physical chunk j % 8 of atom row r % 8 holds channels 8 ((j % 8) ^ (r % 8)).
            const int ch = 64 * (j / 8) + 8 * ((j % 8) ^ (r % 8));
            __half h[8];
            memcpy(h, chunk, 16);
FA3_UNROLL
            for (int e = 0; e < 8; ++e)
                h[e] = __float2half_rn(__half2float(h[e]) * inv * __half2float(p.gq[ch + e]) *
                                       __half2float(p.gk[ch + e]));
            memcpy(chunk, h, 16);
        }
#if !defined(EMU_VARIANT_no_q_fence)  // planted race when defined (top of the file)
        ptx::fence_proxy_async();  // these generic writes before wgmma's async-proxy reads
#endif
        ptx::mbarrier_arrive(&q_ready[wg]);
        ptx::mbarrier_wait(&q_ready[wg], 0);
    }

    Fa3Rows<kDh> st;
    st.init();
    const uint32_t q_rows = q_tile + wg * T::kWgRows * 128;  // 8 KiB: 1024-aligned
    static_assert(T::kConsumers == 2, "the ping-pong pairs two consumer warpgroups");
    const Fa3PingPong turns{wg, key_tiles};
    turns.start();
    // Key tile kt in stage kt % S of round kt / S.
    const auto k_tile = [&](int kt) { return ring + (kt % S) * T::kStageBytes; };
    const auto parity = [](int kt) { return static_cast<uint32_t>((kt / S) & 1); };
    fa3_consume<kDh>(
        st, q_rows, turns, k_tile,
        [&](int kt) { ptx::mbarrier_wait(&k_full[kt % S], parity(kt)); },
        [&](int kt) { ptx::mbarrier_wait(&v_full[kt % S], parity(kt)); },
        [&](int kt, float (&s_acc)[T::kSAcc]) {
            const int s = kt % S;
#if !defined(EMU_VARIANT_no_kinv_wait)  // planted race when defined (top of the file)
            ptx::mbarrier_wait(&kinv_full[s], parity(kt));
#endif
            const int valid = w.n - kt * T::kBN;  // keys past the window's end: -inf
FA3_UNROLL
            for (int r = 0; r < T::kSAcc; ++r) {
                const int col = fa3_col(r, t);
                s_acc[r] = col < valid ? s_acc[r] * kinv[s][col] * T::kScaleLog2 : -INFINITY;
            }
        },
        // K, V and kinv of the stage are no longer read.
        [&](int kt) { ptx::mbarrier_arrive(&empty[kt % S]); });

    float inv[2];
    fa3_inv<kDh>(st, inv);
    const int local_base = q0 + wg * T::kWgRows + 16 * (t / 32) + (t % 32) / 4;
FA3_UNROLL
    for (int h = 0; h < 2; ++h) {
        const int local = local_base + 8 * h;
        if (local >= w.n) continue;
        __half* orow = p.out + static_cast<size_t>(w.row(local)) * d + col0;
FA3_UNROLL
        for (int r = 2 * h; r < T::kOAcc; r += 4)
            *reinterpret_cast<__half2*>(orow + fa3_col(r, t)) =
                __floats2half2_rn(st.o[r] * inv[h], st.o[r + 1] * inv[h]);
    }
}

extern "C" __global__ void __launch_bounds__(Fa3Traits<64>::kThreads, 1)
    attn_sm90_window_d64(const __grid_constant__ AttnSm90WindowParams p) {
    extern __shared__ __align__(16) unsigned char smem[];
    attn_sm90_window<64>(p, smem);
}
EMU_REGISTER_KERNEL(attn_sm90_window_d64, AttnSm90WindowParams)

extern "C" __global__ void __launch_bounds__(Fa3Traits<128>::kThreads, 1)
    attn_sm90_window_d128(const __grid_constant__ AttnSm90WindowParams p) {
    extern __shared__ __align__(16) unsigned char smem[];
    attn_sm90_window<128>(p, smem);
}
EMU_REGISTER_KERNEL(attn_sm90_window_d128, AttnSm90WindowParams)
