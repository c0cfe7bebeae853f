//! FLOPs and bytes of the ops the Wan family added to the graph vocabulary (conventions in
//! the [module docs](super)).
//!
//! - `CacheAttention` counts the steady state: the call's `T` queries attend to a full
//!   window, `Wf*P` keys (its cache tensors' rows: the held frames plus the call's own),
//!   `4*T*Wf*P*D` FLOPs; it reads its queries, the call's own keys and values and the whole
//!   cache. The first chunks of a stream attend to fewer frames and cost less.
//! - `TextAttention` is `4*T*Lt*D` over every text row (no mask).
//! - `CacheWrite` moves the own frames' keys and values into the cache (no FLOPs).
//! - `Rope3d` 4 per element (a rotation is 4 multiplies and 2 adds per pair, plus the
//!   angles), `AffineLayerNorm` 7, `Sinusoid` 2, `MaskRows` 1; `UnpatchifyPacked` is layout.

use super::op::{OpClass, OpCost};
use crate::model::graph::{Graph, Op, TensorId};

/// The cost of a Wan op; `None` for the ops [`super::op_cost`] counts itself.
pub(super) fn op_cost(graph: &Graph, op: &Op) -> Option<OpCost> {
    let t = |id: TensorId| graph.tensor(id);
    let bytes = |id: TensorId| t(id).bytes() as u64;
    let numel = |id: TensorId| t(id).numel() as u64;
    let cost = |class, flops: u64, read: u64, written: u64| OpCost {
        flops,
        bytes_read: read,
        bytes_written: written,
        class,
    };
    use OpClass::*;
    Some(match *op {
        Op::Sinusoid { t: ts, out } => cost(Elementwise, 2 * numel(out), bytes(ts), bytes(out)),
        Op::MaskRows { x, mask, out } => {
            cost(Elementwise, numel(out), bytes(x) + bytes(mask), bytes(out))
        }
        Op::AffineLayerNorm {
            x,
            weight,
            bias,
            out,
        } => cost(
            Norm,
            7 * numel(out),
            bytes(x) + bytes(weight) + bytes(bias),
            bytes(out),
        ),
        Op::Rope3d { x, pos, .. } => cost(Elementwise, 4 * numel(x), bytes(x) + bytes(pos), bytes(x)),
        Op::CacheAttention {
            q,
            k,
            v,
            cache_k,
            cache_v,
            out,
            ..
        } => {
            let rows = t(q).shape[0] as u64;
            let [keys, d] = t(cache_k).shape[..] else {
                unreachable!("a KV cache is 2-D")
            };
            cost(
                Attention,
                4 * rows * (keys * d) as u64,
                bytes(q) + bytes(k) + bytes(v) + bytes(cache_k) + bytes(cache_v),
                bytes(out),
            )
        }
        Op::CacheWrite { k, v, skip, .. } => {
            let frames = graph.config.latent_frames as u64;
            let own = |id| bytes(id) / frames * (frames - skip as u64);
            cost(Layout, 0, own(k) + own(v), own(k) + own(v))
        }
        Op::TextAttention { q, k, v, out, .. } => {
            let rows = t(q).shape[0] as u64;
            cost(
                Attention,
                4 * rows * numel(k),
                bytes(q) + bytes(k) + bytes(v),
                bytes(out),
            )
        }
        Op::UnpatchifyPacked { x, out } => cost(Layout, 0, bytes(x), bytes(out)),
        _ => return None,
    })
}
