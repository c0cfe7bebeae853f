// streamdit-arch: sm_90a
// Wan2.1 self-attention of a chunk over its KV cache on Hopper (sm_90a), FlashAttention-3
// style: the same product as wan_attention.cu's attn_kvcache (which stays the sm_80/sm_89
// path and the cross-check),
//
//   attn_sm90_kvcache_d64, attn_sm90_kvcache_d128   o = softmax(q k^T / sqrt(dh)) v per head,
//                                                   over every token of the attended frames
//
// built from TMA loads into an mbarrier ring and wgmma (kernels/README.md, "Hopper
// attention"); the consumer's wgmma and softmax steps are common/fa3_core.cuh's, shared with
// attention_sm90_window.cu. No mask: every query attends to every key of the attended cache frames; the
// only masked keys are the zero-filled rows past a frame's last token.
//
// CTA = 3 warpgroups (384 threads), one tile of kBM = 128 queries of one head; grid x over
// query tiles, y over heads (consecutive CTAs share a head's K/V tiles in L2):
//   warpgroup 0, the producer (setmaxnreg.dec 24): one elected thread of warp 0 loads the Q
//     tile once (TMA, q_full), then walks the key tiles: per attended frame f (slot
//     frame_slots[f]) the tokens [t0, t0 + kBN) of that slot, a 3-D TMA box of the cache
//     viewed as [slots][P][2D], so a tile never crosses into another slot and the rows past
//     P arrive as zeros. K and V of a tile go into ring slot s with their own barriers
//     (k_full[s], v_full[s]) so that Q K^T can start before V has landed;
//   warpgroups 1 and 2, the consumers (setmaxnreg.inc 240): consumer c owns query rows
//     [64c, 64c + 64) of the tile. Per key tile: S = Q K^T by dh/16 wgmma.m64n{kBN}k16 with
//     both operands in shared memory (K-major, 128-byte swizzle); the keys past P masked to
//     -inf; online softmax in registers (f32, exp2 with log2(e)/sqrt(dh) folded into the
//     scale); P rounded to f16 in registers, which is directly the register-A fragment of
//     wgmma (the S accumulator layout of 16 columns = the A layout of one k16 step); O += P V
//     by kBN/16 wgmma.m64n{dh}k16 with A from registers and V as an MN-major (transposed)
//     128-byte-swizzled descriptor; then every consumer thread arrives on empty[s].
//   The epilogue divides by the row sums and stores f16 pairs straight from the accumulators
//   (rows past `tokens` are not stored; their Q rows were zero-filled by TMA).
//
// Barriers: q_full (1 arrival + the Q tile's bytes); k_full[s], v_full[s] (1 arrival + the
// K or V bytes of the tile in slot s); empty[s] (256 arrivals: every consumer thread after
// the wgmma.wait_group that retired its P V reading slot s). Round r = it / S of slot s:
// consumers wait k_full/v_full with parity r & 1, the producer waits empty with parity
// (r & 1) ^ 1 (a fresh barrier's previous phase counts as complete).
//
// Scheduling as FlashAttention-3 (common/fa3_core.cuh): the two consumers take turns
// issuing their GEMMs (Fa3PingPong, named barriers 1 and 2), so one's softmax runs under the
// other's GEMMs, and within a consumer the softmax of tile it runs under the P V of tile
// it - 1 (fa3_consume, the intra-warpgroup overlap).
//
// Shape contract (kernels/src/attention_sm90.rs): dh in {64, 128}, D = heads * dh, tokens,
// P, frames >= 1, every table entry a valid slot; TMA needs D % 8 == 0 (it is: dh % 64 == 0).
//
// Test-only variants (kernels/tests/attention_sm90.rs; never built by nvcc), planted races the
// race checker must report:
// streamdit-emu-variant: early_release
//   the consumers arrive on empty[s] right after committing P V, before wgmma.wait_group
//   retires it: the producer's next TMA load of V into the slot is not ordered after the
//   wgmma's reads (write-after-read, async proxy);
// streamdit-emu-variant: no_v_wait
//   the consumers skip the wait on v_full[s]: P V reads V before (or unordered with) the TMA
//   load that fills it (read-after-write).
// streamdit-emu-variant: serial
//   not a race: the consumers walk their tiles without the intra-warpgroup overlap (S, then
//   softmax, then P V, per tile), the order the overlap must reproduce bit for bit;
// streamdit-emu-variant: unpaired_turn
//   consumer 1 hands the turn over after its last tile too: an arrival on consumer 0's turn
//   barrier that no bar.sync pairs with (the emulator reports it at the block's exit).
#include "common/fa3_core.cuh"

struct AttnSm90Params {
    ptx::TmaDesc map_q;      // q (tokens, D) f16: box {64 cols, 128 rows}, SWIZZLE_128B
    ptx::TmaDesc map_kv;     // cache as (slots, P, 2D) f16: box {64 cols, kBN tokens, 1 slot}
    const int* frame_slots;  // (frames) the slot of each attended frame, in attention order
    __half* out;             // (tokens, D)
    int tokens;              // query rows (the chunk's c * P tokens)
    int frame_tokens;        // P, tokens per latent frame (per cache slot)
    int frames;              // attended frames
    int heads;               // D = heads * dh
};

template <int kDh>
__device__ __forceinline__ void attn_sm90(const AttnSm90Params& p, unsigned char* smem) {
    using T = Fa3Traits<kDh>;
    constexpr int S = T::kStages;
    __shared__ uint64_t q_full, k_full[S], v_full[S], empty[S];
    const uint32_t base = ptx::smem_u32(smem);
    const uint32_t q_tile = (base + 1023u) & ~1023u;  // the swizzle repeats every 1024 bytes
    unsigned char* q_ptr = smem + (q_tile - base);
    const uint32_t ring = q_tile + T::kTileQ;
    unsigned char* ring_ptr = q_ptr + T::kTileQ;
    const int warpgroup = threadIdx.x / 128;
    const int m0 = blockIdx.x * T::kBM;
    const int col0 = blockIdx.y * kDh;                // this head's channels in q, k and out
    const int d = p.heads * kDh;
    const int key_tiles = (p.frame_tokens + T::kBN - 1) / T::kBN;  // per frame

    if (threadIdx.x == 0) {
        ptx::mbarrier_init(&q_full, 1);
        for (int s = 0; s < S; ++s) {
            ptx::mbarrier_init(&k_full[s], 1);
            ptx::mbarrier_init(&v_full[s], 1);
            ptx::mbarrier_init(&empty[s], 128 * T::kConsumers);
        }
        ptx::fence_proxy_async();  // the TMA unit completes bytes on these barriers
    }
    __syncthreads();

    if (warpgroup == 0) {
        ptx::setmaxnreg_dec<T::kProducerRegs>();
        if (threadIdx.x < 32 && ptx::elect_one()) {
            ptx::mbarrier_arrive_expect_tx(&q_full, T::kTileQ);
            for (int b = 0; b < T::kBoxes; ++b)
                ptx::tma_load_2d(q_ptr + b * T::kQBox, &p.map_q, &q_full, col0 + 64 * b, m0);
            int it = 0;
            for (int f = 0; f < p.frames; ++f) {
                const int slot = p.frame_slots[f];
                for (int kt = 0; kt < key_tiles; ++kt, ++it) {
                    const int s = it % S;
                    const int t0 = kt * T::kBN;
                    // Slot s is free once both consumers' P V of tile it - S has retired.
                    ptx::mbarrier_wait(&empty[s], ((it / S) & 1) ^ 1);
                    unsigned char* k = ring_ptr + s * T::kStageBytes;
                    unsigned char* v = k + T::kTileKv;
                    ptx::mbarrier_arrive_expect_tx(&k_full[s], T::kTileKv);
                    for (int b = 0; b < T::kBoxes; ++b)
                        ptx::tma_load_3d(k + b * T::kKvBox, &p.map_kv, &k_full[s], col0 + 64 * b,
                                         t0, slot);
                    ptx::mbarrier_arrive_expect_tx(&v_full[s], T::kTileKv);
                    for (int b = 0; b < T::kBoxes; ++b)
                        ptx::tma_load_3d(v + b * T::kKvBox, &p.map_kv, &v_full[s],
                                         d + col0 + 64 * b, t0, slot);
                }
            }
        }
        return;  // the producer touches no shared memory after this
    }

    ptx::setmaxnreg_inc<T::kConsumerRegs>();
    const int wg = warpgroup - 1;
    const int t = threadIdx.x % 128;
    Fa3Rows<kDh> st;
    st.init();
    ptx::mbarrier_wait(&q_full, 0);
    const uint32_t q_rows = q_tile + wg * T::kWgRows * 128;  // 8 KiB: 1024-aligned
    static_assert(T::kConsumers == 2, "the ping-pong pairs two consumer warpgroups");
    const Fa3PingPong turns{wg, p.frames * key_tiles};
    turns.start();
    // Tile it = frame it / key_tiles, tokens from (it % key_tiles) kBN, in stage it % S of
    // round it / S.
    const auto k_tile = [&](int it) { return ring + (it % S) * T::kStageBytes; };
    const auto parity = [](int it) { return static_cast<uint32_t>((it / S) & 1); };
    fa3_consume<kDh>(
        st, q_rows, turns, k_tile,
        [&](int it) { ptx::mbarrier_wait(&k_full[it % S], parity(it)); },
        [&](int it) {
#if !defined(EMU_VARIANT_no_v_wait)  // planted race when defined (top of the file)
            ptx::mbarrier_wait(&v_full[it % S], parity(it));
#endif
        },
        [&](int it, float (&s_acc)[T::kSAcc]) {
            // Keys t0 + col >= P are zero rows: -inf.
            const int valid = p.frame_tokens - (it % key_tiles) * T::kBN;
FA3_UNROLL
            for (int r = 0; r < T::kSAcc; ++r)
                s_acc[r] = fa3_col(r, t) < valid ? s_acc[r] * T::kScaleLog2 : -INFINITY;
        },
        [&](int it) { ptx::mbarrier_arrive(&empty[it % S]); });  // K and V no longer read

    // out = O / l (0 for a row without any key).
    float inv[2];
    fa3_inv<kDh>(st, inv);
    const int row_base = m0 + wg * T::kWgRows + 16 * (t / 32) + (t % 32) / 4;
FA3_UNROLL
    for (int r = 0; r < T::kOAcc; r += 2) {
        const int h = (r >> 1) & 1;
        const int row = row_base + 8 * h;
        if (row >= p.tokens) continue;
        const int col = col0 + fa3_col(r, t);
        *reinterpret_cast<__half2*>(p.out + static_cast<size_t>(row) * d + col) =
            __floats2half2_rn(st.o[r] * inv[h], st.o[r + 1] * inv[h]);
    }
}

extern "C" __global__ void __launch_bounds__(Fa3Traits<64>::kThreads, 1)
    attn_sm90_kvcache_d64(const __grid_constant__ AttnSm90Params p) {
    extern __shared__ __align__(16) unsigned char smem[];
    attn_sm90<64>(p, smem);
}
EMU_REGISTER_KERNEL(attn_sm90_kvcache_d64, AttnSm90Params)

extern "C" __global__ void __launch_bounds__(Fa3Traits<128>::kThreads, 1)
    attn_sm90_kvcache_d128(const __grid_constant__ AttnSm90Params p) {
    extern __shared__ __align__(16) unsigned char smem[];
    attn_sm90<128>(p, smem);
}
EMU_REGISTER_KERNEL(attn_sm90_kvcache_d128, AttnSm90Params)
