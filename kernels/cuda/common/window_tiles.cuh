// The windows of StreamDiT's shifted window attention (docs/streamdit.md section 3), shared by
// attention.cu (mma.sync) and attention_sm90_window.cu (wgmma): the extent of a window key
// along an axis, and the packed list of (window, query tile) pairs that have rows, decoded
// from blockIdx.x (attention.cu, "The packed tile list"; kernels/src/attention.rs counts it).
// `Params` is any parameter struct with the int fields ft, ht, wt (token grid), fw, hw, ww
// (window) and sf, sh, sw (shift).
#pragma once

// The extent [lo, hi) = [max(k w - s, 0), min((k + 1) w - s, g)) of window key k along an
// axis of length g, window w, shift s.
__device__ __forceinline__ void window_extent(int k, int w, int s, int g, int* lo, int* hi) {
    *lo = max(k * w - s, 0);
    *hi = min((k + 1) * w - s, g);
}

// Window class c (0, 1, 2) of an axis of length g (a multiple of w), window w, shift s: its
// first key, its number of windows (0 for a class the axis does not have) and their extent.
// s = 0: one class (keys 0 .. g/w - 1, extent w); s > 0: the first window (key 0, extent
// w - s), the interior (keys 1 .. g/w - 1, extent w), the last (key g/w, extent s).
struct AxisClass {
    int key0, count, ext;
};
__device__ __forceinline__ AxisClass axis_class(int c, int g, int w, int s) {
    const int full = g / w;
    if (s == 0) return c == 0 ? AxisClass{0, full, w} : AxisClass{0, 0, w};
    if (c == 0) return AxisClass{0, 1, w - s};
    if (c == 1) return AxisClass{1, full - 1, w};
    return AxisClass{full, 1, s};
}

// The (window key, query tile) of CTA x of the packed list; false past its end.
template <int kBM, class Params>
__device__ __forceinline__ bool packed_tile(const Params& p, int x, int* kf, int* kh,
                                            int* kw, int* tile) {
    for (int cf = 0; cf < 3; ++cf) {
        const AxisClass af = axis_class(cf, p.ft, p.fw, p.sf);
        for (int ch = 0; ch < 3; ++ch) {
            const AxisClass ah = axis_class(ch, p.ht, p.hw, p.sh);
            for (int cw = 0; cw < 3; ++cw) {
                const AxisClass aw = axis_class(cw, p.wt, p.ww, p.sw);
                const int windows = af.count * ah.count * aw.count;
                const int tiles = (af.ext * ah.ext * aw.ext + kBM - 1) / kBM;
                if (x < windows * tiles) {
                    const int win = x / tiles;
                    *tile = x - win * tiles;
                    *kw = aw.key0 + win % aw.count;
                    *kh = ah.key0 + (win / aw.count) % ah.count;
                    *kf = af.key0 + win / (aw.count * ah.count);
                    return true;
                }
                x -= windows * tiles;
            }
        }
    }
    return false;
}

