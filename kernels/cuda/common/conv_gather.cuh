// The implicit-GEMM convolutions' tile traits, parameter structs and row gathers
// (kernels/cuda/conv.cu includes this; docs in conv.cu's header and kernels/README.md
// "Decoder kernels"): what each entry point's A rows are and where their 16-byte chunks
// come from. Kept apart so that conv.cu holds the pipeline and the entry points.
#pragma once

#include <cuda_fp16.h>
#include <stdint.h>

#include "common/ptx.cuh"
#include "common/vec8.cuh"

#if PTX_EMU
#define CONV_UNROLL
#else
#define CONV_UNROLL _Pragma("unroll")
#endif

// ---------------------------------------------------------------------------------------
// Tile traits of the implicit GEMM, two column widths (one entry point each):
//
// BN = 64 (conv3x3_f16, conv_t3_f16, conv3d_f16, conv1x1_f16): block tile 128 (pixels) x 64 (output channels) x 32
// (K), 8 warps as 4 (M) x 2 (N), warp tile 32 x 32 = 2 x 4 mma tiles of m16n8 (32 f32
// accumulators per thread), 4 stages: 4 * (128 + 64) * 32 * 2 B = 48 KiB, exactly the default
// dynamic limit. For the narrow layers (tiny's Cout 16..64, conv_out's 3) and any Cout that
// is not a multiple of 128.
// BN = 128 (conv3x3_f16_n128, conv_t3_f16_n128): gemm.cu's tile, 8 warps as 2 (M) x 4 (N),
// warp tile 64 x 32 = 4 x 4 mma tiles, 4 stages: 64 KiB (a launch must raise
// CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES). For Cout a multiple of 128 (the 4b
// decoder's 128..512): 64 FLOP per byte of shared-memory fill instead of 42.7.
//  - Per k-tile: 2 * 128 * BN * 32 FLOP for (128 + BN) * 64 B of fill from L2. The A rows
//    of one tap are the same pixels shifted by one, so the nine taps of a pixel re-read the
//    same input lines: L1/L2 absorb the 9x (and the 4x of the upsample map); HBM sees the
//    input about once per column tile.
//  - Both: __launch_bounds__(256, 2), two CTAs (16 warps) per SM at <= 128 registers.
// ---------------------------------------------------------------------------------------
struct ConvGeom {
    static constexpr int kBM = 128;
    static constexpr int kBK = 32;
    static constexpr int kThreads = 256;
    static constexpr int kChunks = kBK / 8;                           // 16-byte chunks a row
    static constexpr int kARowsPerThread = kBM * kChunks / kThreads;  // 2
    static constexpr int kRowStride = kThreads / kChunks;             // rows between a thread's

    static_assert(kChunks == 4, "the swizzle is written for 64-byte (4-chunk) rows");
    static_assert((kBM * kChunks) % kThreads == 0, "A chunks must split evenly");
    static_assert(kThreads % kChunks == 0, "a thread keeps one chunk column for all rows");
};

template <int BN>
struct ConvTraits : ConvGeom {
    static constexpr int kBN = BN;
    static constexpr int kStages = 4;
    static constexpr int kWarpsN = BN / 32;
    static constexpr int kWarpsM = kThreads / 32 / kWarpsN;
    static constexpr int kWarpM = kBM / kWarpsM;  // 32 (BN 64) or 64 (BN 128)
    static constexpr int kWarpN = kBN / kWarpsN;  // 32
    static constexpr int kMmaM = kWarpM / 16;     // 2 or 4
    static constexpr int kMmaN = kWarpN / 8;      // 4
    static constexpr int kTileA = kBM * kBK;
    static constexpr int kTileW = kBN * kBK;
    static constexpr int kStageHalves = kTileA + kTileW;
    static constexpr int kSmemBytes = kStages * kStageHalves * 2;
    static constexpr int kWRowsPerThread = kBN * kChunks / kThreads;  // 1 or 2

    static_assert(BN == 64 || BN == 128, "two column widths");
    static_assert(kWarpsM * kWarpsN * 32 == kThreads, "8 warps");
    static_assert(kBM % (kWarpsM * 16) == 0, "warp M tile must be whole m16 tiles");
    static_assert(kBN % (kWarpsN * 16) == 0, "warp N tile must be pairs of n8 tiles");
    static_assert(kBK % 16 == 0, "BK must be whole k16 mma steps");
    static_assert((kBN * kChunks) % kThreads == 0, "W chunks must split evenly");
    static_assert(kMmaN % 2 == 0, "W fragments load two n8 tiles per ldmatrix.x4");
    static_assert(kStages >= 2 && kStages <= 8, "cp.async.wait_group takes kStages - 2");
    static_assert(kSmemBytes <= 227 * 1024, "must fit one SM's shared memory");
};

// Chunk c of row r at chunk c ^ ((r >> 1) & 3) (as gemm.cu): every 8-row ldmatrix phase
// touches all 32 banks once.
__device__ __forceinline__ int conv_swizzle(int row, int chunk) {
    return row * ConvGeom::kBK + ((chunk ^ ((row >> 1) & 3)) << 3);
}

// ---------------------------------------------------------------------------------------
// The gathers: where the 8 channels (k .. k+7) of A row r come from.
// A thread keeps the same chunk column (threadIdx.x % 4) and the same kARowsPerThread rows
// for every k-tile, so the per-row pixel decomposition is done once, in the constructor.
// An A row past M gets a coordinate that no tap can make valid (zero-filled).
// ---------------------------------------------------------------------------------------
struct Conv3x3Params {
    const __half* x;         // (t, h_in, w_in, cin) f16; half resolution when upsample
    const __half* w;         // (cout, 3, 3, cin) f16: the [cout, 9 cin] GEMM B operand
    const __half* bias;      // (cout) f16, or null
    const __half* residual;  // (t, h_out, w_out, cout) f16, or null
    __half* out;             // (t, h_out, w_out, cout) f16
    int t;
    int h_in;
    int w_in;
    int cin;
    int cout;
    int upsample;  // 0: h_out = h_in; 1: h_out = 2 h_in, input read at (y >> 1, x >> 1)
};

struct Gather3x3 {
    static constexpr int kInvalid = -(1 << 28);
    const __half* x;
    int h_out, w_out, w_in, cin, k, shift;
    int base[ConvGeom::kARowsPerThread];  // frame offset t * h_in * w_in (pixels)
    int oy[ConvGeom::kARowsPerThread];
    int ox[ConvGeom::kARowsPerThread];

    __device__ __forceinline__ Gather3x3(const Conv3x3Params& p, int m, int m0, int first_row) {
        x = p.x;
        shift = p.upsample ? 1 : 0;
        h_out = p.h_in << shift;
        w_out = p.w_in << shift;
        w_in = p.w_in;
        cin = p.cin;
        k = 9 * p.cin;
        const int hw = h_out * w_out;
CONV_UNROLL
        for (int i = 0; i < ConvGeom::kARowsPerThread; ++i) {
            const int row = m0 + first_row + i * ConvGeom::kRowStride;
            if (row < m) {
                const int t = row / hw;
                const int rem = row - t * hw;
                oy[i] = rem / w_out;
                ox[i] = rem - oy[i] * w_out;
                base[i] = t * p.h_in * p.w_in;
            } else {
                oy[i] = kInvalid;
                ox[i] = kInvalid;
                base[i] = 0;
            }
        }
    }

    // Source of row i's chunk at K index gk (gk % 8 == 0), or null for a zero chunk.
    __device__ __forceinline__ const __half* src(int i, int gk, int tap, int ci) const {
        if (gk >= k) return nullptr;
        const int ky = tap / 3;
        const int kx = tap - 3 * ky;
        const int iy = oy[i] + ky - 1;
        const int ix = ox[i] + kx - 1;
        if (iy < 0 || iy >= h_out || ix < 0 || ix >= w_out) return nullptr;  // padding
        const int sy = iy >> shift;  // nearest 2x: output pixel y reads input y / 2
        const int sx = ix >> shift;
        return x + (static_cast<size_t>(base[i]) + static_cast<size_t>(sy) * w_in + sx) * cin + ci;
    }
};

struct ConvT3Params {
    const __half* x;         // (2 + t_in, hw, cin) f16: 2 context frames, then the chunk
    const __half* w;         // (cout, 3, cin) f16: tap j multiplies u[s - 2 + j]
    const __half* bias;      // (cout) f16, or null
    const __half* residual;  // (t_out, hw, cout) f16, or null
    __half* out;             // (t_out, hw, cout) f16; t_out = t_in, or 2 t_in with upsample_t
    int t_in;
    int hw;
    int cin;
    int cout;
    int upsample_t;  // 1: u[q] = chunk[q >> 1] (each frame twice), t_out = 2 t_in
};

struct GatherT3 {
    const __half* x;
    int hw, cin, k, shift;
    int frame[ConvGeom::kARowsPerThread];  // output frame s, or a huge value past M
    int pix[ConvGeom::kARowsPerThread];

    __device__ __forceinline__ GatherT3(const ConvT3Params& p, int m, int m0, int first_row) {
        x = p.x;
        hw = p.hw;
        cin = p.cin;
        k = 3 * p.cin;
        shift = p.upsample_t ? 1 : 0;
CONV_UNROLL
        for (int i = 0; i < ConvGeom::kARowsPerThread; ++i) {
            const int row = m0 + first_row + i * ConvGeom::kRowStride;
            frame[i] = row < m ? row / hw : -1;
            pix[i] = row < m ? row - (row / hw) * hw : 0;
        }
    }

    // Tap j of output frame s reads sequence frame q = s - 2 + j: a context frame (buffer
    // index q + 2) when q < 0, else chunk frame q (or q >> 1 when upsampled in time), which
    // is buffer index 2 + that.
    __device__ __forceinline__ const __half* src(int i, int gk, int tap, int ci) const {
        if (gk >= k || frame[i] < 0) return nullptr;
        const int q = frame[i] - 2 + tap;
        const int b = q < 0 ? q + 2 : 2 + (q >> shift);
        return x + (static_cast<size_t>(b) * hw + pix[i]) * cin + ci;
    }
};

struct Conv3dParams {
    const __half* x;         // (2 + t, h, w, cin) f16: 2 context frames, then the chunk
    const __half* w;         // (cout, 3, 3, 3, cin) f16: tap (dt * 3 + dy) * 3 + dx
    const __half* bias;      // (cout) f16, or null
    const __half* residual;  // (t, h, w, cout) f16, or null
    __half* out;             // (t, h, w, cout) f16
    int t;
    int height;
    int width;
    int cin;
    int cout;
};

// The causal 3x3x3 gather: output frame s reads buffer frames s, s + 1, s + 2 (sequence
// frames s - 2 .. s, the first two of the buffer being the context), each through the 3x3
// spatial window with zero padding 1. Rows past M get kInvalid coordinates (zero-filled).
struct Gather3d {
    static constexpr int kInvalid = -(1 << 28);
    const __half* x;
    int h, w, cin, k;
    int base[ConvGeom::kARowsPerThread];  // buffer frame s = output frame s (pixels)
    int oy[ConvGeom::kARowsPerThread];
    int ox[ConvGeom::kARowsPerThread];

    __device__ __forceinline__ Gather3d(const Conv3dParams& p, int m, int m0, int first_row) {
        x = p.x;
        h = p.height;
        w = p.width;
        cin = p.cin;
        k = 27 * p.cin;
        const int hw = h * w;
CONV_UNROLL
        for (int i = 0; i < ConvGeom::kARowsPerThread; ++i) {
            const int row = m0 + first_row + i * ConvGeom::kRowStride;
            if (row < m) {
                const int t = row / hw;
                const int rem = row - t * hw;
                oy[i] = rem / w;
                ox[i] = rem - oy[i] * w;
                base[i] = t * hw;
            } else {
                oy[i] = kInvalid;
                ox[i] = kInvalid;
                base[i] = 0;
            }
        }
    }

    // Tap (dt, dy, dx) of output pixel (s, y, x) reads buffer frame s + dt at (y + dy - 1,
    // x + dx - 1): sequence frame s - 2 + dt, since the buffer starts 2 frames early.
    __device__ __forceinline__ const __half* src(int i, int gk, int tap, int ci) const {
        if (gk >= k) return nullptr;
        const int dt = tap / 9;
        const int rem = tap - 9 * dt;
        const int dy = rem / 3;
        const int dx = rem - 3 * dy;
        const int iy = oy[i] + dy - 1;
        const int ix = ox[i] + dx - 1;
        if (iy < 0 || iy >= h || ix < 0 || ix >= w) return nullptr;  // spatial padding
        // Pixel indices of the buffer fit i32 (conv3d_launch checks (2 + t) h w).
        const int pix = base[i] + (dt * h + iy) * w + ix;
        return x + static_cast<size_t>(pix) * cin + ci;
    }
};

struct Conv1x1Params {
    const __half* x;         // (m, cin) f16: pixels (or tokens) by channels
    const __half* w;         // (cout, cin) f16: the checkpoint's [cout, cin, 1, 1] as is
    const __half* bias;      // (cout) f16, or null
    const __half* residual;  // (m, cout) f16, or null
    __half* out;             // (m, cout) f16
    int m;
    int cin;
    int cout;
};

// A plain GEMM row gather (one tap): the 1x1 skip convolution and the attention's output
// projection, which need the f16 residual epilogue that gemm.cu's f16 entry lacks.
struct Gather1x1 {
    const __half* x;
    int cin, k;
    int row[ConvGeom::kARowsPerThread];  // -1 past M

    __device__ __forceinline__ Gather1x1(const Conv1x1Params& p, int m, int m0, int first_row) {
        x = p.x;
        cin = p.cin;
        k = p.cin;
CONV_UNROLL
        for (int i = 0; i < ConvGeom::kARowsPerThread; ++i) {
            const int r = m0 + first_row + i * ConvGeom::kRowStride;
            row[i] = r < m ? r : -1;
        }
    }

    __device__ __forceinline__ const __half* src(int i, int gk, int, int ci) const {
        if (gk >= k || row[i] < 0) return nullptr;
        return x + static_cast<size_t>(row[i]) * cin + ci;
    }
};

// ---------------------------------------------------------------------------------------
// The encoders' gathers (docs/taehv.md "The encoder", docs/tae.md "Encoder").
// ---------------------------------------------------------------------------------------
struct Conv3x3S2Params {
    const __half* x;         // (t, h_in, w_in, cin) f16
    const __half* w;         // (cout, 3, 3, cin) f16: the [cout, 9 cin] GEMM B operand
    const __half* bias;      // (cout) f16, or null
    const __half* residual;  // (t, h_out, w_out, cout) f16, or null
    __half* out;             // (t, h_out, w_out, cout) f16, h_out = (h_in + pad) / 2
    int t;
    int h_in;
    int w_in;
    int cin;
    int cout;
    int pad;  // zero rows/columns before the input: 1 (TAEHV's conv) or 0 (TAE's DownS)
};

// A 3x3 convolution with stride 2: tap (ky, kx) of output pixel (y, x) reads input pixel
// (2y + ky - pad, 2x + kx - pad), zeros outside the frame (so one zero row/column after it).
struct Gather3x3S2 {
    static constexpr int kInvalid = -(1 << 28);
    const __half* x;
    int h_in, w_in, cin, k;
    int base[ConvGeom::kARowsPerThread];  // frame offset t * h_in * w_in (pixels)
    int iy0[ConvGeom::kARowsPerThread];   // 2 oy - pad
    int ix0[ConvGeom::kARowsPerThread];   // 2 ox - pad

    __device__ __forceinline__ Gather3x3S2(const Conv3x3S2Params& p, int m, int m0, int first_row) {
        x = p.x;
        h_in = p.h_in;
        w_in = p.w_in;
        cin = p.cin;
        k = 9 * p.cin;
        const int h_out = (p.h_in + p.pad) >> 1;
        const int w_out = (p.w_in + p.pad) >> 1;
        const int hw = h_out * w_out;
CONV_UNROLL
        for (int i = 0; i < ConvGeom::kARowsPerThread; ++i) {
            const int row = m0 + first_row + i * ConvGeom::kRowStride;
            if (row < m) {
                const int t = row / hw;
                const int rem = row - t * hw;
                const int oy = rem / w_out;
                iy0[i] = 2 * oy - p.pad;
                ix0[i] = 2 * (rem - oy * w_out) - p.pad;
                base[i] = t * p.h_in * p.w_in;
            } else {
                iy0[i] = kInvalid;
                ix0[i] = kInvalid;
                base[i] = 0;
            }
        }
    }

    __device__ __forceinline__ const __half* src(int i, int gk, int tap, int ci) const {
        if (gk >= k) return nullptr;
        const int ky = tap / 3;
        const int iy = iy0[i] + ky;
        const int ix = ix0[i] + tap - 3 * ky;
        if (iy < 0 || iy >= h_in || ix < 0 || ix >= w_in) return nullptr;  // padding
        return x + (static_cast<size_t>(base[i]) + static_cast<size_t>(iy) * w_in + ix) * cin + ci;
    }
};

struct ConvTStrideParams {
    const __half* x;         // (stride (t_out - 1) + taps, hw, cin) f16: the buffer of frames
    const __half* w;         // (cout, taps, cin) f16: tap j multiplies buffer frame stride s + j
    const __half* bias;      // (cout) f16, or null
    const __half* residual;  // (t_out, hw, cout) f16, or null
    __half* out;             // (t_out, hw, cout) f16
    int t_out;
    int hw;
    int cin;
    int cout;
    int taps;
    int stride;
};

// A temporal convolution with a frame stride, per pixel: output frame s is
// sum_j W_j buf[stride s + j]. TAEHV's TPool (taps = stride: `stride` consecutive frames side
// by side in channels, then a 1x1 convolution, is this with K = stride Cin) and the TAE's
// DownT (taps 3, stride 2 over [cached frame, chunk]) are both one launch of it.
struct GatherTStride {
    const __half* x;
    int hw, cin, k, stride;
    int frame[ConvGeom::kARowsPerThread];  // output frame s, or -1 past M
    int pix[ConvGeom::kARowsPerThread];

    __device__ __forceinline__ GatherTStride(const ConvTStrideParams& p, int m, int m0, int first_row) {
        x = p.x;
        hw = p.hw;
        cin = p.cin;
        k = p.taps * p.cin;
        stride = p.stride;
CONV_UNROLL
        for (int i = 0; i < ConvGeom::kARowsPerThread; ++i) {
            const int row = m0 + first_row + i * ConvGeom::kRowStride;
            frame[i] = row < m ? row / hw : -1;
            pix[i] = row < m ? row - (row / hw) * hw : 0;
        }
    }

    __device__ __forceinline__ const __half* src(int i, int gk, int tap, int ci) const {
        if (gk >= k || frame[i] < 0) return nullptr;
        const int b = stride * frame[i] + tap;
        return x + (static_cast<size_t>(b) * hw + pix[i]) * cin + ci;
    }
};
