// The small layout and pointwise kernels of the Wan-family decoders' device lowering
// (docs/taehv.md, "On the device"); their convolutions are conv.cu's. Activations are f16,
// channels last, `[frames, pixels, channels]`.
//
// Entry points (each one launch over a 1-D grid-stride loop of 8-channel vector items; the
// grid is a launch choice of kernels/src/video.rs, the loop covers any size):
//   video_with_past_f16   out [T, P, 2C] = [x[t], x[t-1]] along channels, x[-1] = past
//                         [P, C] (the previous chunk's last frame), or zeros when past is
//                         null (a stream's first chunk): TAEHV's MemBlock input.
//   video_shuffle_f16     out [T*S, P, C] from y [T, P, S*C]: output frame S*t + s takes
//                         channels [s*C, (s+1)*C) of input frame t (TAEHV's TGrow reshape).
//   video_map_f16         out[i] = op(x[i]) over n elements (x may be out): op 0 ReLU,
//                         op 1 the soft clamp limit * tanh(x / limit) in f32.
//
// Shape contract (checked by kernels/src/video.rs): C % 8 == 0 for the two layout kernels
// (one 16-byte access per item), every size >= 1; pointers 16-byte aligned (the decoder's
// arena offsets are multiples of 256; a frame offset of C % 8 == 0 channels keeps 16 bytes).
// The map's n is any (a scalar tail after the vectors).
#include <cuda_fp16.h>
#include <stdint.h>

#include "common/ptx.cuh"
#include "common/vec8.cuh"

#if PTX_EMU
#define VIDEO_UNROLL
#else
#define VIDEO_UNROLL _Pragma("unroll")
#endif

struct VideoTraits {
    static constexpr int kThreads = 256;
    static constexpr int kVec = 8;  // f16 per 16-byte item
    static_assert(kThreads % 32 == 0, "whole warps");
};

__device__ __forceinline__ size_t video_index() {
    return static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x;
}
__device__ __forceinline__ size_t video_stride() {
    return static_cast<size_t>(gridDim.x) * blockDim.x;
}

// ---------------------------------------------------------------------------------------
// video_with_past_f16: item i covers out elements [8i, 8i + 8) of one output row (a row is
// 2C channels, C % 8 == 0, so an item never straddles the x/past halves or two rows).
// ---------------------------------------------------------------------------------------
struct VideoWithPastParams {
    const __half* x;     // (frames, pixels, c)
    const __half* past;  // (pixels, c), or null: zeros
    __half* out;         // (frames, pixels, 2c)
    int frames;
    int pixels;
    int c;
};

extern "C" __global__ void __launch_bounds__(VideoTraits::kThreads)
    video_with_past_f16(VideoWithPastParams p) {
    const size_t c = static_cast<size_t>(p.c);
    const size_t rows = static_cast<size_t>(p.frames) * p.pixels;
    const size_t items = rows * (2 * c) / VideoTraits::kVec;
    for (size_t i = video_index(); i < items; i += video_stride()) {
        const size_t e = i * VideoTraits::kVec;
        const size_t row = e / (2 * c);
        const size_t col = e - row * 2 * c;
        uint4 v = make_uint4(0u, 0u, 0u, 0u);
        if (col < c) {
            v = *reinterpret_cast<const uint4*>(p.x + row * c + col);
        } else if (row >= static_cast<size_t>(p.pixels)) {
            // The frame before, same pixel: row - pixels.
            v = *reinterpret_cast<const uint4*>(p.x + (row - p.pixels) * c + (col - c));
        } else if (p.past != nullptr) {
            v = *reinterpret_cast<const uint4*>(p.past + row * c + (col - c));
        }
        *reinterpret_cast<uint4*>(p.out + e) = v;
    }
}
EMU_REGISTER_KERNEL(video_with_past_f16, VideoWithPastParams)

// ---------------------------------------------------------------------------------------
// video_shuffle_f16: item i covers output elements [8i, 8i + 8) of one output row of C.
// ---------------------------------------------------------------------------------------
struct VideoShuffleParams {
    const __half* y;  // (frames, pixels, stride * c)
    __half* out;      // (frames * stride, pixels, c)
    int frames;
    int pixels;
    int c;
    int stride;
};

extern "C" __global__ void __launch_bounds__(VideoTraits::kThreads)
    video_shuffle_f16(VideoShuffleParams p) {
    const size_t c = static_cast<size_t>(p.c);
    const size_t pixels = static_cast<size_t>(p.pixels);
    const size_t s_count = static_cast<size_t>(p.stride);
    const size_t items = static_cast<size_t>(p.frames) * s_count * pixels * c / VideoTraits::kVec;
    for (size_t i = video_index(); i < items; i += video_stride()) {
        const size_t e = i * VideoTraits::kVec;
        const size_t row = e / c;  // (output frame, pixel)
        const size_t col = e - row * c;
        const size_t f = row / pixels;
        const size_t px = row - f * pixels;
        const size_t t = f / s_count;
        const size_t s = f - t * s_count;
        const __half* src = p.y + ((t * pixels + px) * s_count + s) * c + col;
        *reinterpret_cast<uint4*>(p.out + e) = *reinterpret_cast<const uint4*>(src);
    }
}
EMU_REGISTER_KERNEL(video_shuffle_f16, VideoShuffleParams)

// ---------------------------------------------------------------------------------------
// video_map_f16: vector items of 8, then the n % 8 tail, one element per thread of the
// first tail threads. In place is allowed: every element is read before it is written, by
// the same thread.
// ---------------------------------------------------------------------------------------
struct VideoMapParams {
    const __half* x;  // (n)
    __half* out;      // (n), may be x
    long long n;
    int op;       // 0: ReLU, 1: soft clamp
    float limit;  // the soft clamp's limit (op 1)
};

__device__ __forceinline__ float video_op(int op, float limit, float v) {
    if (op == 0) return v > 0.0f ? v : 0.0f;
    return tanhf(v / limit) * limit;
}

extern "C" __global__ void __launch_bounds__(VideoTraits::kThreads)
    video_map_f16(VideoMapParams p) {
    const size_t n = static_cast<size_t>(p.n);
    const size_t vecs = n / VideoTraits::kVec;
    for (size_t i = video_index(); i < vecs; i += video_stride()) {
        const size_t e = i * VideoTraits::kVec;
        float v[8];
        vec8::load_f16(v, p.x + e);
VIDEO_UNROLL
        for (int k = 0; k < 8; ++k) v[k] = video_op(p.op, p.limit, v[k]);
        vec8::store_f16(p.out + e, v);
    }
    const size_t tail = n - vecs * VideoTraits::kVec;
    const size_t t = video_index();
    if (t < tail) {
        const size_t e = vecs * VideoTraits::kVec + t;
        p.out[e] = __float2half_rn(video_op(p.op, p.limit, __half2float(p.x[e])));
    }
}
EMU_REGISTER_KERNEL(video_map_f16, VideoMapParams)
