// Wan2.1 self-attention of a chunk over its KV cache (docs/wan.md sections 2.4, 4 and 5):
//
//   attn_kvcache_d16, attn_kvcache_d128    o = softmax(q k^T / sqrt(dh)) v per head, the keys
//                                          and values of every attended cache frame
//
// No mask: every query of the chunk attends to every key of the attended frames (the cache's
// clean frames and the chunk's own frames, docs/wan.md 2.4: bidirectional within the chunk,
// causal across chunks only because the cache holds earlier frames). No norm and no RoPE
// here: the queries and the cached keys arrive RMS-normalized over the full width and rotated
// (wan_qk.cu's wan_qkv_rope writes both, the chunk's K/V straight into its cache slots), so
// this kernel is common/attention_core.cuh's tile with a cache geometry and null gains.
//
// Cache layout (per block): `cache [slots * P, 2D]` f16, slot s holding one latent frame of
// P = Hp * Wp tokens, row s P + t = token t of that frame: k (rotated) in [0, D), v in
// [D, 2D). `frame_slots[n]` lists the slots to attend, one per frame, in attention order
// (sink frames, the kept frames, then the chunk's own): key index j is token j % P of slot
// frame_slots[j / P]. Sliding the window is a new table, never a copy; the order of the
// table only changes the order of the f32 softmax sums.
//
// Shape contract (kernels/src/wan_attention.rs): dh = 16 or 128 (the entry), D = heads * dh,
// tokens >= 1 (any: a ragged last query tile), frames >= 1, P >= 1 (any: key tiles cross
// frame boundaries and the ragged last one is masked), every table entry a valid slot.
#include "common/attention_core.cuh"

struct AttnKvCacheParams {
    const __half* q;         // (tokens, D) queries, normalized and rotated (wan_qkv_rope)
    const __half* cache;     // (slots * frame_tokens, 2D): k [0, D) rotated, v [D, 2D)
    const int* frame_slots;  // (frames) the slot of each attended frame, in attention order
    __half* out;             // (tokens, D)
    int tokens;              // query rows (the chunk's c * P tokens)
    int frame_tokens;        // P = Hp * Wp, tokens per latent frame (per cache slot)
    int frames;              // attended frames: keys = frames * P
    int heads;               // D = heads * dh
};

template <int kDh>
struct KvCacheGeom {
    const __half* qb;     // q row 0 of this tile, this head
    const __half* cache;  // cache row 0, this head's K slice
    const int* slots;
    __half* ob;           // out row 0 of this tile, this head
    int d;
    int nq;
    int nkeys;
    int p;
    int v_off;

    __device__ __forceinline__ int num_q() const { return nq; }
    __device__ __forceinline__ const __half* q(int r) const { return qb + static_cast<size_t>(r) * d; }
    __device__ __forceinline__ int num_keys() const { return nkeys; }
    // One table read and one division per loaded row and tile (two threads per row).
    __device__ __forceinline__ const __half* kv(int key) const {
        const int n = key / p;
        const size_t row = static_cast<size_t>(slots[n]) * p + (key - n * p);
        return cache + row * (2 * static_cast<size_t>(d));
    }
    __device__ __forceinline__ bool allowed(int key) const { return key < nkeys; }
    __device__ __forceinline__ __half* out(int r) const { return ob + static_cast<size_t>(r) * d; }
};

// Grid: x = query tile of kBM tokens, y = head. Consecutive CTAs are the query tiles of one
// head: they stream the same K/V tiles, which meet in L2.
template <int kDh>
__device__ __forceinline__ void attn_kvcache(const AttnKvCacheParams& p, unsigned char* smem) {
    using T = AttnTraits<kDh>;
    const int d = p.heads * kDh;
    const int tok0 = blockIdx.x * T::kBM;
    KvCacheGeom<kDh> g;
    g.qb = p.q + static_cast<size_t>(tok0) * d + blockIdx.y * kDh;
    g.cache = p.cache + blockIdx.y * kDh;
    g.slots = p.frame_slots;
    g.ob = p.out + static_cast<size_t>(tok0) * d + blockIdx.y * kDh;
    g.d = d;
    g.nq = min(T::kBM, p.tokens - tok0);
    g.nkeys = p.frames * p.frame_tokens;
    g.p = p.frame_tokens;
    g.v_off = d;
    attention_tile<kDh>(g, nullptr, nullptr, smem);
}

extern "C" __global__ void __launch_bounds__(AttnTraits<16>::kThreads, AttnTraits<16>::kMinBlocks)
    attn_kvcache_d16(AttnKvCacheParams p) {
    // Declared in the entry point: the emulator maps exactly this declaration onto its
    // dynamic shared memory (kernels/README.md).
    extern __shared__ __align__(16) unsigned char smem[];
    attn_kvcache<16>(p, smem);
}
EMU_REGISTER_KERNEL(attn_kvcache_d16, AttnKvCacheParams)

extern "C" __global__ void __launch_bounds__(AttnTraits<128>::kThreads, AttnTraits<128>::kMinBlocks)
    attn_kvcache_d128(AttnKvCacheParams p) {
    // Declared in the entry point: the emulator maps exactly this declaration onto its
    // dynamic shared memory (kernels/README.md).
    extern __shared__ __align__(16) unsigned char smem[];
    attn_kvcache<128>(p, smem);
}
EMU_REGISTER_KERNEL(attn_kvcache_d128, AttnKvCacheParams)
