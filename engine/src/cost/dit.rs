//! FLOPs and bytes of the DiT graph's ops (conventions in the [module docs](super)).

pub use super::op::{OpClass, OpCost};
use crate::model::graph::{Graph, Kind, Op, TensorId};

/// The name of an op's variant (`Linear`, `WindowAttention`, ...).
pub fn op_kind(op: &Op) -> &'static str {
    match op {
        Op::Patchify { .. } => "Patchify",
        Op::Linear { .. } => "Linear",
        Op::AddPositions { .. } => "AddPositions",
        Op::Repeat { .. } => "Repeat",
        Op::TimestepEmbed { .. } => "TimestepEmbed",
        Op::Silu { .. } => "Silu",
        Op::GeluTanh { .. } => "GeluTanh",
        Op::Modulation { .. } => "Modulation",
        Op::LayerNorm { .. } => "LayerNorm",
        Op::AdaLn { .. } => "AdaLn",
        Op::HeadRmsNorm { .. } => "HeadRmsNorm",
        Op::WindowAttention { .. } => "WindowAttention",
        Op::CrossAttention { .. } => "CrossAttention",
        Op::GatedResidual { .. } => "GatedResidual",
        Op::Residual { .. } => "Residual",
        Op::SwiGlu { .. } => "SwiGlu",
        Op::Unpatchify { .. } => "Unpatchify",
        Op::Guidance { .. } => "Guidance",
        Op::Sinusoid { .. } => "Sinusoid",
        Op::MaskRows { .. } => "MaskRows",
        Op::AffineLayerNorm { .. } => "AffineLayerNorm",
        Op::Rope3d { .. } => "Rope3d",
        Op::CacheAttention { .. } => "CacheAttention",
        Op::CacheWrite { .. } => "CacheWrite",
        Op::TextAttention { .. } => "TextAttention",
        Op::UnpatchifyPacked { .. } => "UnpatchifyPacked",
    }
}

/// Sizes of the windows along one axis of `len` tokens with window `w` and shift `s`:
/// token `i` has key `floor((i + s) / w)` (docs/streamdit.md section 3, no modulo), so a shifted
/// axis has a partial window at each edge.
pub fn axis_windows(len: usize, w: usize, s: usize) -> Vec<usize> {
    if len == 0 || w == 0 {
        return Vec::new();
    }
    let edge = |k: usize| (k * w).saturating_sub(s).min(len);
    (0..(len - 1 + s) / w + 1)
        .map(|k| edge(k + 1) - edge(k))
        .filter(|&n| n > 0)
        .collect()
}

/// `sum over windows of n^2` for one branch's token grid: windows are products of per-axis
/// windows, so the sum factorises into per-axis sums of squares.
pub fn window_sum_sq(grid: [usize; 3], window: [usize; 3], shift: [usize; 3]) -> u64 {
    (0..3)
        .map(|a| {
            axis_windows(grid[a], window[a], shift[a])
                .iter()
                .map(|&n| (n * n) as u64)
                .sum::<u64>()
        })
        .product()
}

/// The cost of `op` in `graph` (see the module's conventions).
pub fn op_cost(graph: &Graph, op: &Op) -> OpCost {
    let t = |id: TensorId| graph.tensor(id);
    let bytes = |id: TensorId| t(id).bytes() as u64;
    let numel = |id: TensorId| t(id).numel() as u64;
    // Bytes of the `rows` of `k` a per-frame modulation tensor `[F, k, D]` an op reads.
    let mod_rows = |mods: TensorId, rows: u64| bytes(mods) / t(mods).shape[1] as u64 * rows;
    let per_elem = |class, flops: u64, elems: u64, read: u64, written: u64| OpCost {
        flops: flops * elems,
        bytes_read: read,
        bytes_written: written,
        class,
    };
    use OpClass::*;
    match *op {
        Op::Patchify { x, out } | Op::Repeat { x, out } | Op::Unpatchify { x, out } => {
            per_elem(Layout, 0, 0, bytes(x), bytes(out))
        }
        Op::Linear { x, w, b, out } => {
            let [rows, k] = t(x).shape[..] else {
                unreachable!("linear input is 2-D")
            };
            let n = t(w).shape[0];
            OpCost {
                flops: 2 * (rows * k * n) as u64,
                bytes_read: bytes(x) + bytes(w) + b.map_or(0, bytes),
                bytes_written: bytes(out),
                class: Gemm,
            }
        }
        Op::AddPositions {
            h,
            pos_t,
            pos_h,
            pos_w,
        } => per_elem(
            Elementwise,
            3,
            numel(h),
            bytes(h) + bytes(pos_t) + bytes(pos_h) + bytes(pos_w),
            bytes(h),
        ),
        Op::TimestepEmbed { tau, out } => {
            per_elem(Elementwise, 2, numel(out), bytes(tau), bytes(out))
        }
        Op::Silu { x, out } => per_elem(Elementwise, 4, numel(out), bytes(x), bytes(out)),
        Op::GeluTanh { x, out } => per_elem(Elementwise, 9, numel(out), bytes(x), bytes(out)),
        Op::SwiGlu { x, out } => per_elem(Elementwise, 5, numel(out), bytes(x), bytes(out)),
        Op::Modulation { src, table, out } => per_elem(
            Elementwise,
            1,
            numel(out),
            bytes(src) + bytes(table),
            bytes(out),
        ),
        Op::LayerNorm { x, out } => per_elem(Norm, 5, numel(out), bytes(x), bytes(out)),
        Op::AdaLn { x, mods, out, .. } => per_elem(
            Norm,
            8,
            numel(out),
            bytes(x) + mod_rows(mods, 2),
            bytes(out),
        ),
        Op::HeadRmsNorm { x, heads, gain, .. } => {
            let slice = t(x).shape[0] as u64 * heads as u64 * numel(gain);
            let slice_bytes = slice * t(x).precision.bytes() as u64;
            per_elem(Norm, 4, slice, slice_bytes + bytes(gain), slice_bytes)
        }
        Op::WindowAttention {
            qkv,
            out,
            window,
            shift,
            ..
        } => {
            let d = t(out).shape[1] as u64;
            let sum_sq = window_sum_sq(graph.config.token_grid(), window, shift);
            OpCost {
                flops: graph.batch as u64 * 4 * sum_sq * d,
                bytes_read: bytes(qkv),
                bytes_written: bytes(out),
                class: Attention,
            }
        }
        Op::CrossAttention {
            q, kv, mask, out, ..
        } => {
            let [rows, d] = t(q).shape[..] else {
                unreachable!("cross-attention queries are 2-D")
            };
            // Every query row attends to the `Lt` text tokens of its own branch.
            let lt = t(kv).shape[0] / graph.batch;
            OpCost {
                flops: 4 * (rows * lt * d) as u64,
                bytes_read: bytes(q) + bytes(kv) + bytes(mask),
                bytes_written: bytes(out),
                class: Attention,
            }
        }
        Op::GatedResidual { h, y, mods, .. } => per_elem(
            Elementwise,
            2,
            numel(h),
            bytes(h) + bytes(y) + mod_rows(mods, 1),
            bytes(h),
        ),
        Op::Residual { h, y } => per_elem(Elementwise, 1, numel(h), bytes(h) + bytes(y), bytes(h)),
        Op::Guidance { v, out, .. } => per_elem(Elementwise, 3, numel(out), bytes(v), bytes(out)),
        Op::Sinusoid { .. }
        | Op::MaskRows { .. }
        | Op::AffineLayerNorm { .. }
        | Op::Rope3d { .. }
        | Op::CacheAttention { .. }
        | Op::CacheWrite { .. }
        | Op::TextAttention { .. }
        | Op::UnpatchifyPacked { .. } => match super::wan::op_cost(graph, op) {
            Some(c) => c,
            None => unreachable!("cost/wan.rs counts every Wan op"),
        },
    }
}

/// Summed costs of a set of ops.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CostSum {
    pub ops: usize,
    pub flops: u64,
    pub bytes_read: u64,
    pub bytes_written: u64,
}

impl CostSum {
    pub(super) fn add(&mut self, c: &OpCost) {
        self.ops += 1;
        self.flops += c.flops;
        self.bytes_read += c.bytes_read;
        self.bytes_written += c.bytes_written;
    }

    /// Bytes read plus bytes written.
    pub fn bytes(&self) -> u64 {
        self.bytes_read + self.bytes_written
    }
}

/// The costs of one op list: per op (same order as the list), in total and per class.
#[derive(Debug, Clone, PartialEq)]
pub struct ListCost {
    pub ops: Vec<OpCost>,
    pub total: CostSum,
    by_class: [CostSum; 5],
}

impl ListCost {
    fn of(graph: &Graph, ops: &[Op]) -> ListCost {
        let ops: Vec<OpCost> = ops.iter().map(|op| op_cost(graph, op)).collect();
        let mut total = CostSum::default();
        let mut by_class = [CostSum::default(); 5];
        for c in &ops {
            total.add(c);
            by_class[c.class.index()].add(c);
        }
        ListCost {
            ops,
            total,
            by_class,
        }
    }

    /// The summed costs of one class.
    pub fn class(&self, class: OpClass) -> CostSum {
        self.by_class[class.index()]
    }
}

/// The costs of a graph: `prompt` runs once per prompt, `call` once per model call.
#[derive(Debug, Clone, PartialEq)]
pub struct GraphCost {
    pub prompt: ListCost,
    pub call: ListCost,
}

impl GraphCost {
    pub fn of(graph: &Graph) -> GraphCost {
        GraphCost {
            prompt: ListCost::of(graph, &graph.prompt_ops),
            call: ListCost::of(graph, &graph.call_ops),
        }
    }
}

/// Parameter counts of a graph's weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParamCount {
    /// In the `L` transformer blocks (`blocks.*`): docs/streamdit.md's "28 x ~151M".
    pub blocks: u64,
    /// The whole DiT, with embeddings, time modulation, text projection and final layer.
    pub dit: u64,
}

impl ParamCount {
    pub fn of(graph: &Graph) -> ParamCount {
        let weights = || graph.tensors.iter().filter(|t| t.kind == Kind::Weight);
        ParamCount {
            blocks: weights()
                .filter(|t| t.name.starts_with("blocks."))
                .map(|t| t.numel() as u64)
                .sum(),
            dit: weights().map(|t| t.numel() as u64).sum(),
        }
    }
}
