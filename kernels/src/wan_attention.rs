//! Wan2.1 self-attention of a chunk over its KV cache (`kernels/cuda/wan_attention.cu`):
//! the parameter struct mirroring the C++ one, the launch configuration that checks the
//! shape contract (errors name the kernel, the value and the rule), and the ring-buffer
//! layout of the cache ([`KvWindow`]) that the frame tables describe.
//!
//! The kernel computes, per head, `o = softmax(q k^T / sqrt(dh)) v` of the chunk's queries
//! over every token of the attended frames, with no mask. Queries and cached keys arrive
//! normalized and rotated: `wan_qk::KERNEL_QKV_ROPE` writes the queries and the chunk's own
//! K/V into its cache slots first, so a call is `wan_qkv_rope` then `attn_kvcache_d{16,128}`
//! with the chunk's slots at the end of the table.
//!
//! **Cache layout** (one buffer per block): `[slots * P, 2D]` f16, slot `s` one latent frame
//! of `P = Hp * Wp` tokens, row `s * P + t` its token `t`: rotated k in `[0, D)`, v in
//! `[D, 2D)`. `frame_slots [frames]` (i32, device memory) lists the attended slots in
//! attention order; key `j` is token `j % P` of slot `frame_slots[j / P]`. The window slides
//! by rewriting that table (and the chunk's slots), never by moving cached data.
//!
//! Shared memory is `attention::shared_bytes(dh)` (14 784 B for dh = 16, 115 584 B for
//! dh = 128): a CUDA launch of the d128 entry must first raise
//! `CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES`.

use crate::attention::{shared_bytes, AttnLaunch, BLOCK_Q, THREADS};
use crate::emu::{Dim3, LaunchConfig};

pub const KERNEL_KVCACHE_D16: &str = "attn_kvcache_d16";
pub const KERNEL_KVCACHE_D128: &str = "attn_kvcache_d128";
/// Head dims with an entry point: wan-tiny's 16 and Wan2.1-1.3B's 128.
pub const HEAD_DIMS: [usize; 2] = [16, 128];

/// Largest grid y (heads).
const MAX_GRID_Y: usize = 65535;

/// `attn_kvcache_d{16,128}`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct AttnKvCacheParams {
    /// (tokens, D) f16: the normalized, rotated queries (`wan_qkv_rope`'s `q_out`)
    pub q: *const u16,
    /// (slots * frame_tokens, 2D) f16: rotated k `[0, D)`, v `[D, 2D)` per token row
    pub cache: *const u16,
    /// (frames) i32: the slot of each attended frame, in attention order
    pub frame_slots: *const i32,
    /// (tokens, D) f16
    pub out: *mut u16,
    /// Query rows: the call's `c * P` tokens.
    pub tokens: i32,
    /// `P = Hp * Wp`, tokens per latent frame and per cache slot.
    pub frame_tokens: i32,
    /// Attended frames; the keys are `frames * P` rows.
    pub frames: i32,
    /// `D = heads * dh`.
    pub heads: i32,
}

/// The shape of one attention call over the cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KvCacheShape {
    pub tokens: usize,
    pub frame_tokens: usize,
    /// Attended frames (the table's length).
    pub frames: usize,
    pub heads: usize,
    pub head_dim: usize,
    /// Frames the cache buffer holds.
    pub cache_slots: usize,
}

fn to_i32(kernel: &str, what: &str, v: usize) -> Result<i32, String> {
    i32::try_from(v).map_err(|_| format!("{kernel}: {what} = {v} exceeds i32"))
}

/// Entry point and launch configuration. Rules: dh in {16, 128}; tokens, frame_tokens,
/// frames, heads, cache_slots >= 1; `frames <= cache_slots`; the keys (`frames * P`), the
/// query rows and the cache rows (`cache_slots * P`) within i32.
pub fn kvcache_config(s: &KvCacheShape) -> Result<AttnLaunch, String> {
    let kernel = match s.head_dim {
        16 => KERNEL_KVCACHE_D16,
        128 => KERNEL_KVCACHE_D128,
        dh => {
            return Err(format!(
                "attn_kvcache: head dim dh = {dh} is not supported (entry points exist for \
                 dh = 16 and dh = 128)"
            ))
        }
    };
    if s.tokens == 0 || s.frame_tokens == 0 || s.frames == 0 || s.cache_slots == 0 {
        return Err(format!(
            "{kernel}: tokens ({}), frame_tokens ({}), frames ({}) and cache_slots ({}) must \
             all be at least 1",
            s.tokens, s.frame_tokens, s.frames, s.cache_slots
        ));
    }
    if s.heads == 0 || s.heads > MAX_GRID_Y {
        return Err(format!(
            "{kernel}: heads = {} must be in 1..={MAX_GRID_Y} (grid y)",
            s.heads
        ));
    }
    if s.frames > s.cache_slots {
        return Err(format!(
            "{kernel}: {} attended frames exceed the cache's {} slots",
            s.frames, s.cache_slots
        ));
    }
    let d = s.heads * s.head_dim;
    to_i32(kernel, "2D", 2 * d)?;
    to_i32(kernel, "tokens", s.tokens)?;
    let keys = s
        .frames
        .checked_mul(s.frame_tokens)
        .ok_or_else(|| format!("{kernel}: frames * P overflows"))?;
    to_i32(kernel, "keys (frames * P)", keys)?;
    let rows = s
        .cache_slots
        .checked_mul(s.frame_tokens)
        .ok_or_else(|| format!("{kernel}: cache_slots * P overflows"))?;
    to_i32(kernel, "cache rows (cache_slots * P)", rows)?;
    Ok(AttnLaunch {
        kernel,
        config: LaunchConfig {
            grid: Dim3 {
                x: s.tokens.div_ceil(BLOCK_Q as usize) as u32,
                y: s.heads as u32,
                z: 1,
            },
            block: THREADS.into(),
            shared_bytes: shared_bytes(s.head_dim as u32),
        },
    })
}

/// Checks the host copy of an attended-frames table before it is uploaded: `frames`
/// entries, each a slot in `0..cache_slots`, none twice.
pub fn check_attended(slots: &[i32], frames: usize, cache_slots: usize) -> Result<(), String> {
    let kernel = "attn_kvcache";
    if slots.len() != frames {
        return Err(format!(
            "{kernel}: the frame table has {} entries for {frames} frames",
            slots.len()
        ));
    }
    for (n, &s) in slots.iter().enumerate() {
        if s < 0 || s as usize >= cache_slots {
            return Err(format!(
                "{kernel}: table entry {n} is slot {s}, outside the cache's {cache_slots} slots"
            ));
        }
        if slots[..n].contains(&s) {
            return Err(format!("{kernel}: slot {s} is attended twice"));
        }
    }
    Ok(())
}

/// The KV window of docs/wan.md section 5 as a ring buffer of `window` slots: the first
/// `sink` frames of the stream keep slots `0..sink`, every later frame `p` has the fixed
/// slot `sink + (p - sink) % (window - sink)`, so a frame never moves while it is cached
/// and eviction is the table leaving it out (its slot is overwritten by a later chunk).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KvWindow {
    pub window: usize,
    pub sink: usize,
    pub chunk: usize,
}

impl KvWindow {
    /// Rules of docs/wan.md section 5: `chunk >= 1`, `sink + chunk <= window`.
    pub fn new(window: usize, sink: usize, chunk: usize) -> Result<Self, String> {
        if chunk == 0 || sink + chunk > window {
            return Err(format!(
                "kv window: sink ({sink}) + chunk ({chunk}) must be at most the window \
                 ({window}), with chunk >= 1"
            ));
        }
        Ok(KvWindow {
            window,
            sink,
            chunk,
        })
    }

    /// The slot of absolute latent frame `p`.
    pub fn slot(&self, p: u64) -> usize {
        let s = self.sink as u64;
        if p < s {
            p as usize
        } else {
            (s + (p - s) % (self.window - self.sink) as u64) as usize
        }
    }

    /// `(position, slot)` of every frame the chunk starting at absolute frame `f0` attends,
    /// in attention order: the held sink frames, the newest earlier frames that fit
    /// (`window - chunk - held sink`, oldest first; the others are evicted), the chunk.
    pub fn attended(&self, f0: u64) -> Vec<(u64, usize)> {
        let sink_held = (self.sink as u64).min(f0);
        let room = (self.window - self.chunk) as u64 - sink_held;
        let keep = (f0 - sink_held).min(room);
        (0..sink_held)
            .chain(f0 - keep..f0 + self.chunk as u64)
            .map(|p| (p, self.slot(p)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_slots() {
        // wan-tiny: window 4, sink 1, chunks of 2.
        let w = KvWindow::new(4, 1, 2).unwrap();
        assert_eq!(w.attended(0), vec![(0, 0), (1, 1)]);
        assert_eq!(w.attended(2), vec![(0, 0), (1, 1), (2, 2), (3, 3)]);
        assert_eq!(w.attended(4), vec![(0, 0), (3, 3), (4, 1), (5, 2)]);
        assert_eq!(w.attended(6), vec![(0, 0), (5, 2), (6, 3), (7, 1)]);
        // LongLive: window 12, sink 3, chunks of 3.
        let w = KvWindow::new(12, 3, 3).unwrap();
        let a = w.attended(12);
        assert_eq!(a.len(), 12);
        assert_eq!(a[3], (6, 6));
        assert_eq!(a[9..], [(12, 3), (13, 4), (14, 5)]);
        assert!(KvWindow::new(4, 3, 2).is_err());
        let l = kvcache_config(&KvCacheShape {
            tokens: 4680,
            frame_tokens: 1560,
            frames: 21,
            heads: 12,
            head_dim: 128,
            cache_slots: 21,
        })
        .unwrap();
        assert_eq!((l.config.grid.x, l.config.grid.y), (74, 12));
    }
}
