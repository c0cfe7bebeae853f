// Attention kernels, FlashAttention-2 style (docs/streamdit.md sections 2.4 and 3):
//
//   attn_window_d64, attn_window_d128   window self-attention on the fused QKV GEMM output
//   attn_cross_d16, attn_cross_d64, attn_cross_d128
//                                       masked cross-attention of the tokens to the text
//                                       (d16: wan-tiny's heads; with null gains and a mask
//                                       of ones it is Wan's unmasked cross-attention)
//
// The tile, pipeline and numerics are common/attention_core.cuh's; this file defines the
// geometries (which rows of which tensor are queries, keys and outputs) and the entries.
//
// Shape contract (checked with errors naming the kernel and the rule by
// kernels/src/attention.rs): dh = 64 or 128 (16 for cross), D = heads * dh (so rows are
// 16-byte aligned for cp.async), window self-attention: grid divisible by the window, shift <
// window; cross-attention: Lt >= 1 (any value: the ragged last key tile is masked).
//
// Test-only variants (kernels/tests/race_check.rs; never built by nvcc): planted races in
// the shared core that the emulator's race checker must report:
// streamdit-emu-variant: no_gain_sync
//   the barrier after the Q and gain copies is left out: warps other than the one that
//   copied the gains read them unordered (read-after-write on cp.async data);
// streamdit-emu-variant: unpacked_grid
//   not a race: the window kernel decodes the grid as it did before the packed tile list
//   (x = window * q_tiles + tile, q_tiles of a full window, tiles past an edge window exit at
//   once), so tests/attention.rs can show the packed list computes the same bits;
// streamdit-emu-variant: no_key_sync
//   the key loop's barrier is left out: ldmatrix of K/V rows another thread copied and the
//   key bias another thread wrote (read-after-write), and the refill of the stage of tile
//   kt-1 while other warps may still read it (write-after-read).
#include "common/attention_core.cuh"
#include "common/window_tiles.cuh"
// ---------------------------------------------------------------------------------------
// Window self-attention (docs/streamdit.md section 3).
//
// Grid: x = the packed list of (window, query tile) pairs that have work, y = head, z =
// batch element. Windows are numbered by key (kf, kh, kw): nk_a = (G_a - 1 + s_a) / W_a + 1
// keys per axis. Window key k along an axis of length G with window W and shift s covers
// tokens [max(k W - s, 0), min((k+1) W - s, G)) (key floor((x + s) / W), no modulo: shifted
// layers have smaller windows at both edges). Local index t of a window (fn x hn x wn) is
// token (f0 + t / (hn wn), i0 + t / wn % hn, j0 + t % wn); its row is b T + (f Ht + i) Wt + j.
// Consecutive CTAs are the query tiles of one (window, head): their K/V tiles meet in L2.
//
// The packed tile list (issue 18). With G_a a multiple of W_a, the windows of an axis fall
// in at most three classes: s = 0 gives one class (keys 0 .. G/W - 1, extent W); s > 0 gives
// the first window (key 0, extent W - s), the interior (keys 1 .. G/W - 1, extent W) and the
// last (key G/W, extent s). The 27 (or fewer) products of axis classes are visited in order
// cf, ch, cw; class c owns windows(c) * ceil(n(c) / kBM) consecutive CTAs, its windows kf-major
// (kw fastest), each window's query tiles consecutive. blockIdx.x is decoded by walking the
// classes (at most 27 steps of integer arithmetic), so no table travels to the device and
// only CTAs with rows launch: streamdit-4b's shifted layers (grid 16x32x32, window 4x16x16,
// shift 2x8x8) launch 256 CTAs per head instead of the 45 windows x 16 tiles = 720 of a
// full-window grid. kernels/src/attention.rs (`WindowShape::packed_tiles`) counts the same
// list for grid x.
// ---------------------------------------------------------------------------------------
struct AttnWindowParams {
    const __half* qkv;  // (B * T, 3D): q [0, D), k [D, 2D), v [2D, 3D); head e = [e dh, (e+1) dh)
    const __half* gq;   // (dh) RMSNorm gain of q; null (with gk) for no RMSNorm
    const __half* gk;   // (dh) RMSNorm gain of k; null (with gq) for no RMSNorm
    __half* out;        // (B * T, D)
    int ft, ht, wt;     // token grid, T = ft ht wt, tokens in [F, Ht, Wt] order
    int fw, hw, ww;     // window
    int sf, sh, sw;     // shift (0 <= s < window)
    int heads;          // D = heads * dh
};

template <int kDh>
struct WindowGeom {
    const __half* qkv;
    __half* obase;
    size_t row0;  // b * T
    int d;
    int head;
    int f0, i0, j0, hn, wn, n, q0;
    int ht, wt;
    int v_off;

    __device__ __forceinline__ size_t token_row(int t) const {
        const int hw = hn * wn;
        const int df = t / hw;
        const int rem = t - df * hw;
        const int di = rem / wn;
        const int dj = rem - di * wn;
        return row0 + (static_cast<size_t>(f0 + df) * ht + (i0 + di)) * wt + (j0 + dj);
    }
    __device__ __forceinline__ int num_q() const { return min(AttnTraits<kDh>::kBM, n - q0); }
    __device__ __forceinline__ const __half* q(int r) const {
        return qkv + token_row(q0 + r) * (3 * static_cast<size_t>(d)) + head * kDh;
    }
    __device__ __forceinline__ int num_keys() const { return n; }
    __device__ __forceinline__ const __half* kv(int key) const {
        return qkv + token_row(key) * (3 * static_cast<size_t>(d)) + d + head * kDh;
    }
    __device__ __forceinline__ bool allowed(int key) const { return key < n; }
    __device__ __forceinline__ __half* out(int r) const {
        return obase + token_row(q0 + r) * static_cast<size_t>(d) + head * kDh;
    }
};

template <int kDh>
__device__ __forceinline__ void attn_window(const AttnWindowParams& p, unsigned char* smem) {
    using T = AttnTraits<kDh>;
#if defined(EMU_VARIANT_unpacked_grid)  // the grid before the packed list (top of the file)
    const int q_tiles = (p.fw * p.hw * p.ww + T::kBM - 1) / T::kBM;
    const int nkh = (p.ht - 1 + p.sh) / p.hw + 1;
    const int nkw = (p.wt - 1 + p.sw) / p.ww + 1;
    const int tile = blockIdx.x % q_tiles;
    const int win = blockIdx.x / q_tiles;
    const int kw = win % nkw;
    const int kh = (win / nkw) % nkh;
    const int kf = win / (nkw * nkh);
#else
    int kf, kh, kw, tile;
    // Past the list's end (never, with the grid kernels/src/attention.rs sizes): no work.
    if (!packed_tile<T::kBM>(p, blockIdx.x, &kf, &kh, &kw, &tile)) return;
#endif
    int f0, f1, i0, i1, j0, j1;
    window_extent(kf, p.fw, p.sf, p.ft, &f0, &f1);
    window_extent(kh, p.hw, p.sh, p.ht, &i0, &i1);
    window_extent(kw, p.ww, p.sw, p.wt, &j0, &j1);
    WindowGeom<kDh> g;
    g.qkv = p.qkv;
    g.obase = p.out;
    g.row0 = static_cast<size_t>(blockIdx.z) * p.ft * p.ht * p.wt;
    g.d = p.heads * kDh;
    g.head = blockIdx.y;
    g.f0 = f0;
    g.i0 = i0;
    g.j0 = j0;
    g.hn = i1 - i0;
    g.wn = j1 - j0;
    g.n = (f1 - f0) * g.hn * g.wn;
    g.q0 = tile * T::kBM;
    g.ht = p.ht;
    g.wt = p.wt;
    g.v_off = g.d;
    // A tile past the end of a smaller (edge) window has no rows (only in the unpacked
    // grid): the whole CTA leaves before any barrier.
    if (g.q0 >= g.n) return;
    attention_tile<kDh>(g, p.gq, p.gk, smem);
}

extern "C" __global__ void __launch_bounds__(AttnTraits<64>::kThreads, AttnTraits<64>::kMinBlocks)
    attn_window_d64(AttnWindowParams p) {
    // Declared in the entry point: the emulator maps exactly this declaration onto its
    // dynamic shared memory (kernels/README.md).
    extern __shared__ __align__(16) unsigned char smem[];
    attn_window<64>(p, smem);
}
EMU_REGISTER_KERNEL(attn_window_d64, AttnWindowParams)

extern "C" __global__ void __launch_bounds__(AttnTraits<128>::kThreads, AttnTraits<128>::kMinBlocks)
    attn_window_d128(AttnWindowParams p) {
    // Declared in the entry point: the emulator maps exactly this declaration onto its
    // dynamic shared memory (kernels/README.md).
    extern __shared__ __align__(16) unsigned char smem[];
    attn_window<128>(p, smem);
}
EMU_REGISTER_KERNEL(attn_window_d128, AttnWindowParams)

// ---------------------------------------------------------------------------------------
// Cross-attention to the text. Grid: x = query tile of kBM tokens, y = head, z = batch.
// Query row r of batch b is b T + r; key l of batch b is row b Lt + l of kv; key l takes
// part iff mask[b Lt + l] != 0 (f32, 1 = real token, 0 = padding). Key tiles past Lt are
// zero-filled and masked (ragged Lt).
// ---------------------------------------------------------------------------------------
struct AttnCrossParams {
    const __half* q;     // (B * T, D)
    const __half* kv;    // (B * Lt, 2D): k [0, D), v [D, 2D)
    const float* mask;   // (B * Lt), 1 = attend, 0 = masked
    const __half* gq;    // (dh) RMSNorm gain of q; null (with gk) for no RMSNorm
    const __half* gk;    // (dh) RMSNorm gain of k; null (with gq) for no RMSNorm
    __half* out;         // (B * T, D)
    int tokens;          // T, query tokens per batch element
    int text_len;        // Lt
    int heads;           // D = heads * dh
};

template <int kDh>
struct CrossGeom {
    const __half* qb;    // q row 0 of this tile, this head
    const __half* kvb;   // kv row 0 of this batch element, this head
    const float* maskb;  // mask of this batch element
    __half* ob;          // out row 0 of this tile, this head
    int d;
    int nq;
    int lt;
    int v_off;

    __device__ __forceinline__ int num_q() const { return nq; }
    __device__ __forceinline__ const __half* q(int r) const { return qb + static_cast<size_t>(r) * d; }
    __device__ __forceinline__ int num_keys() const { return lt; }
    __device__ __forceinline__ const __half* kv(int key) const {
        return kvb + static_cast<size_t>(key) * (2 * d);
    }
    __device__ __forceinline__ bool allowed(int key) const { return key < lt && maskb[key] != 0.0f; }
    __device__ __forceinline__ __half* out(int r) const { return ob + static_cast<size_t>(r) * d; }
};

template <int kDh>
__device__ __forceinline__ void attn_cross(const AttnCrossParams& p, unsigned char* smem) {
    using T = AttnTraits<kDh>;
    const int d = p.heads * kDh;
    const int tok0 = blockIdx.x * T::kBM;
    const size_t row0 = static_cast<size_t>(blockIdx.z) * p.tokens + tok0;
    CrossGeom<kDh> g;
    g.qb = p.q + row0 * d + blockIdx.y * kDh;
    g.kvb = p.kv + static_cast<size_t>(blockIdx.z) * p.text_len * (2 * static_cast<size_t>(d)) + blockIdx.y * kDh;
    g.maskb = p.mask + static_cast<size_t>(blockIdx.z) * p.text_len;
    g.ob = p.out + row0 * d + blockIdx.y * kDh;
    g.d = d;
    g.nq = min(T::kBM, p.tokens - tok0);
    g.lt = p.text_len;
    g.v_off = d;
    attention_tile<kDh>(g, p.gq, p.gk, smem);
}

// wan-tiny's heads of 16 (docs/wan.md section 8); Wan calls it with null gains and a mask
// of ones (its cross-attention has no mask and a full-width q/k RMSNorm applied before).
extern "C" __global__ void __launch_bounds__(AttnTraits<16>::kThreads, AttnTraits<16>::kMinBlocks)
    attn_cross_d16(AttnCrossParams p) {
    // Declared in the entry point: the emulator maps exactly this declaration onto its
    // dynamic shared memory (kernels/README.md).
    extern __shared__ __align__(16) unsigned char smem[];
    attn_cross<16>(p, smem);
}
EMU_REGISTER_KERNEL(attn_cross_d16, AttnCrossParams)

extern "C" __global__ void __launch_bounds__(AttnTraits<64>::kThreads, AttnTraits<64>::kMinBlocks)
    attn_cross_d64(AttnCrossParams p) {
    // Declared in the entry point: the emulator maps exactly this declaration onto its
    // dynamic shared memory (kernels/README.md).
    extern __shared__ __align__(16) unsigned char smem[];
    attn_cross<64>(p, smem);
}
EMU_REGISTER_KERNEL(attn_cross_d64, AttnCrossParams)

extern "C" __global__ void __launch_bounds__(AttnTraits<128>::kThreads, AttnTraits<128>::kMinBlocks)
    attn_cross_d128(AttnCrossParams p) {
    // Declared in the entry point: the emulator maps exactly this declaration onto its
    // dynamic shared memory (kernels/README.md).
    extern __shared__ __align__(16) unsigned char smem[];
    attn_cross<128>(p, smem);
}
EMU_REGISTER_KERNEL(attn_cross_d128, AttnCrossParams)
