//! What a [`Graph`] costs on a device, without running it: FLOPs and bytes per op
//! ([`op_cost`], [`GraphCost`]), parameter counts ([`ParamCount`]), where every tensor lives
//! in device memory ([`MemoryPlan`], with its checker [`MemoryPlan::verify`]), and a roofline
//! prediction of a model call on a named GPU ([`GpuSpec`], [`Prediction`]).
//!
//! # Counting conventions
//!
//! - **Bytes** are at each tensor's device [`Precision`](super::graph::Precision) (f16
//!   weights, GEMM inputs and scratch; f32 residual stream, time embedding, modulation,
//!   inputs and output). They are *compulsory* traffic: every operand an op touches is read
//!   once and its output written once, as a perfectly tiled kernel would (GEMM tiles re-read
//!   from L2 are not HBM traffic). In-place ops read and write their output. `HeadRmsNorm`
//!   touches only its column slice; `AdaLn` and `GatedResidual` read only the rows of the
//!   modulation tensor they use. Attention never materialises its score matrix (flash style).
//! - **FLOPs**: a multiply-accumulate is 2 FLOPs. `Linear` is `2*T*K*N`; its fused bias add
//!   (`T*N`, `1/(2K)` of the GEMM) is not counted. Window attention is `4*n^2*D` per window
//!   of `n` tokens (`Q K^T` and `P V`) over the real windows of MODEL_SPEC section 3, so a
//!   shifted layer with its partial edge windows costs less than an unshifted one
//!   (MODEL_SPEC section 7's "6 TFLOP" for `streamdit-4b` counts every layer with full
//!   windows, 5.77e12; the real windows give 4.31e12). Cross-attention is `4*T*Lt*D` over
//!   all `Lt` text tokens, as a dense kernel computes them whatever the mask. The attention
//!   softmax (max, subtract, exp, sum, scale: about 5 ops per score, ~1% of the attention
//!   FLOPs at `dh = 128`) is not counted.
//! - **Norms and elementwise ops** count one FLOP per arithmetic operation per element
//!   (an FMA is 2, a transcendental such as `exp`, `tanh`, `sin` is 1; per-row reductions'
//!   `rsqrt` is not counted): `LayerNorm` 5 (sum, centred square-accumulate, subtract,
//!   scale), `AdaLn` 8 (LayerNorm, `1 + scale`, multiply, add shift), `HeadRmsNorm` 4
//!   (square-accumulate, two multiplies), `Silu` 4, `GeluTanh` 9, `SwiGlu` 5 per output,
//!   `AddPositions` 3, `Modulation` 1, `TimestepEmbed` 2, `Residual` 1, `GatedResidual` 2,
//!   `Guidance` 3. These ops are memory bound by two orders of magnitude, so the exact
//!   counts never change a roofline time.
//! - Layout ops (`Patchify`, `Unpatchify`, `Repeat`) have no FLOPs.

use std::fmt;

use super::graph::{Graph, Kind, Op, TensorId};
use super::profile::Profile;
use super::tae::{TaeGraph, TaeOp, TaeStep};
use crate::error::{Error, Result};

/// The kind of kernel an op lowers to, for grouping costs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OpClass {
    /// `Linear`: tensor-core GEMMs.
    Gemm,
    /// Window self-attention and cross-attention.
    Attention,
    /// `LayerNorm`, `AdaLn`, `HeadRmsNorm`: per-row reductions.
    Norm,
    /// Per-element arithmetic: activations, residuals, modulation, embeddings, guidance.
    Elementwise,
    /// Pure data movement: `Patchify`, `Unpatchify`, `Repeat`.
    Layout,
}

impl OpClass {
    /// Every class, in report order.
    pub const ALL: [OpClass; 5] = [
        OpClass::Gemm,
        OpClass::Attention,
        OpClass::Norm,
        OpClass::Elementwise,
        OpClass::Layout,
    ];

    /// Lower-case name (`gemm`, `attention`, ...).
    pub fn name(self) -> &'static str {
        match self {
            OpClass::Gemm => "gemm",
            OpClass::Attention => "attention",
            OpClass::Norm => "norm",
            OpClass::Elementwise => "elementwise",
            OpClass::Layout => "layout",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for OpClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

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
    }
}

/// FLOPs and compulsory bytes of one op (see the module's conventions).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpCost {
    pub flops: u64,
    pub bytes_read: u64,
    pub bytes_written: u64,
    pub class: OpClass,
}

impl OpCost {
    /// Bytes read plus bytes written.
    pub fn bytes(&self) -> u64 {
        self.bytes_read + self.bytes_written
    }
}

/// Sizes of the windows along one axis of `len` tokens with window `w` and shift `s`:
/// token `i` has key `floor((i + s) / w)` (MODEL_SPEC section 3, no modulo), so a shifted
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
    fn add(&mut self, c: &OpCost) {
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
    /// In the `L` transformer blocks (`blocks.*`): MODEL_SPEC's "28 x ~151M".
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

/// Alignment of every buffer and every region, in bytes (cudaMalloc gives 256).
pub const ALIGNMENT: u64 = 256;

fn align(bytes: u64) -> u64 {
    bytes.div_ceil(ALIGNMENT) * ALIGNMENT
}

/// The device regions, laid out in this order in one allocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Region {
    /// Every `Weight` tensor, for the engine's lifetime.
    Weights,
    /// Every `Persistent` tensor (cross-attention K/V per layer), written per prompt.
    Persistent,
    /// `Input` and `Output` tensors, bound by the caller.
    Io,
    /// `Activation` scratch, reused by liveness.
    Arena,
}

impl Region {
    /// Every region, in layout order.
    pub const ALL: [Region; 4] = [
        Region::Weights,
        Region::Persistent,
        Region::Io,
        Region::Arena,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Region::Weights => "weights",
            Region::Persistent => "persistent",
            Region::Io => "io",
            Region::Arena => "arena",
        }
    }

    /// The region a tensor of `kind` lives in.
    pub fn of(kind: Kind) -> Region {
        match kind {
            Kind::Weight => Region::Weights,
            Kind::Persistent => Region::Persistent,
            Kind::Input | Kind::Output => Region::Io,
            Kind::Activation => Region::Arena,
        }
    }
}

/// Where one tensor lives: `offset` from its region's start; `bytes` is the tensor's size
/// (its slot is `bytes` rounded up to [`ALIGNMENT`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placement {
    pub region: Region,
    pub offset: u64,
    pub bytes: u64,
}

/// An op list, as a timeline for liveness.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpList {
    Prompt,
    Call,
}

/// The span of one op list over which a tensor is used: `first` and `last` are the first
/// and last ops (inclusive indices) that read or write it. For an activation, `first` is the
/// op that writes it ([`MemoryPlan::verify`] checks) and `last` the op that last reads it,
/// so it is live over `[first, last]`; an op's inputs and output are live together.
/// `start` and `end` are the same span in launch steps (see [`Fusion`]): what liveness
/// compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lifetime {
    pub list: OpList,
    pub first: usize,
    pub last: usize,
    pub start: usize,
    pub end: usize,
}

impl Lifetime {
    fn overlaps(&self, other: &Lifetime) -> bool {
        self.list == other.list && self.start <= other.end && other.start <= self.end
    }
}

/// Which ops a device runs in one launch: the launch step of every op of each list
/// (non-decreasing, starting at 0). A kernel that computes several ops reads the first's
/// inputs while it writes the last's output, so the planner must keep all of them live
/// together: ops in one step share one time point. Without fusion every op is its own step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fusion {
    pub prompt: Vec<usize>,
    pub call: Vec<usize>,
}

impl Fusion {
    /// Every op its own launch.
    pub fn none(graph: &Graph) -> Fusion {
        Fusion {
            prompt: (0..graph.prompt_ops.len()).collect(),
            call: (0..graph.call_ops.len()).collect(),
        }
    }

    /// Steps from "op `i` runs in the same launch as op `i - 1`".
    pub fn from_predicate(graph: &Graph, fused: impl Fn(OpList, usize) -> bool) -> Fusion {
        let steps = |list: OpList, n: usize| {
            let mut out = Vec::with_capacity(n);
            let mut step = 0;
            for i in 0..n {
                if i > 0 && !fused(list, i) {
                    step += 1;
                }
                out.push(step);
            }
            out
        };
        Fusion {
            prompt: steps(OpList::Prompt, graph.prompt_ops.len()),
            call: steps(OpList::Call, graph.call_ops.len()),
        }
    }

    fn step(&self, list: OpList, op: usize) -> usize {
        match list {
            OpList::Prompt => self.prompt[op],
            OpList::Call => self.call[op],
        }
    }

    fn check(&self, graph: &Graph) -> std::result::Result<(), String> {
        for (list, steps, n) in [
            (OpList::Prompt, &self.prompt, graph.prompt_ops.len()),
            (OpList::Call, &self.call, graph.call_ops.len()),
        ] {
            if steps.len() != n {
                return Err(format!(
                    "fusion gives {} steps for {n} {list:?} ops",
                    steps.len()
                ));
            }
            if steps.first().is_some_and(|&s| s != 0)
                || steps.windows(2).any(|w| w[1] != w[0] && w[1] != w[0] + 1)
            {
                return Err(format!(
                    "fusion steps of the {list:?} ops must start at 0 and grow by 0 or 1"
                ));
            }
        }
        Ok(())
    }
}

/// Per-list arena statistics, all in aligned slot bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ArenaStats {
    /// Activations of the list.
    pub buffers: usize,
    /// Their sizes summed: the arena without any reuse.
    pub sum_bytes: u64,
    /// The largest sum of slots live at one op: no placement can use less.
    pub live_bound_bytes: u64,
    /// The end of the highest slot the plan gives them.
    pub planned_bytes: u64,
}

/// Where every tensor of a graph lives on the device (issue 4, item 2).
///
/// Four regions in one allocation, each a multiple of [`ALIGNMENT`]: weights, persistent
/// (cross K/V), io (inputs and the output) and the arena. Weights, persistent and io tensors
/// are packed in tensor order and never share memory. Activations share the arena by
/// liveness.
///
/// **Planner**: greedy by size, best fit (as TFLite's arena planner: Pisarchyk and Lee,
/// "Efficient Memory Management for Deep Neural Net Inference", 2020). Slots are taken
/// largest first (ties by first use, then tensor id); each goes into the smallest gap
/// between already placed slots whose lifetimes overlap its own, or above the highest of
/// them. Largest-first places the few huge per-layer buffers (FFN hidden, QKV, the f32
/// residual stream) before the small ones fill the holes between them. For every built-in
/// profile, with and without CFG, the arena this gives equals the lower bound (the largest
/// sum of slots live at one op), so no planner can do better on these graphs.
///
/// **Prompt ops share the arena.** Prompt scratch (the text projection) is dead once the
/// K/V are written, call scratch is dead between calls, and a prompt switch runs its ops
/// between two calls on the same stream, so the two lists are two timelines over one
/// arena: buffers of different lists never conflict, and the arena is the larger of the
/// two lists' needs. (Running prompt ops on a second stream concurrently with a call would
/// need a separate prompt arena.)
#[derive(Debug, Clone, PartialEq)]
pub struct MemoryPlan {
    /// One per tensor of the graph, indexed by [`TensorId`].
    pub placements: Vec<Placement>,
    /// Size of each region, in [`Region::ALL`] order.
    pub region_bytes: [u64; 4],
    /// Sum of the weight tensors' bytes, without alignment padding.
    pub weight_bytes_unpadded: u64,
    pub call: ArenaStats,
    pub prompt: ArenaStats,
}

/// The lifetime of every tensor in each op list that touches it, indexed by tensor id
/// (weights and inputs included; the planner uses those of activations).
pub fn lifetimes(graph: &Graph) -> Vec<Vec<Lifetime>> {
    lifetimes_fused(graph, &Fusion::none(graph))
}

/// [`lifetimes`] with ops grouped into launches by `fusion`.
pub fn lifetimes_fused(graph: &Graph, fusion: &Fusion) -> Vec<Vec<Lifetime>> {
    let mut out = vec![Vec::<Lifetime>::new(); graph.tensors.len()];
    for (list, ops) in [
        (OpList::Prompt, &graph.prompt_ops),
        (OpList::Call, &graph.call_ops),
    ] {
        for (i, op) in ops.iter().enumerate() {
            let step = fusion.step(list, i);
            for id in op.tensors() {
                match out[id].iter_mut().find(|l| l.list == list) {
                    Some(l) => {
                        l.last = i;
                        l.end = step;
                    }
                    None => out[id].push(Lifetime {
                        list,
                        first: i,
                        last: i,
                        start: step,
                        end: step,
                    }),
                }
            }
        }
    }
    out
}

fn conflict(a: &[Lifetime], b: &[Lifetime]) -> bool {
    a.iter().any(|x| b.iter().any(|y| x.overlaps(y)))
}

/// Largest sum of aligned slots of the tensors in `ids` that are live at one op of `list`.
fn live_bound(graph: &Graph, life: &[Vec<Lifetime>], ids: &[TensorId], list: OpList) -> u64 {
    let len = match list {
        OpList::Prompt => graph.prompt_ops.len(),
        OpList::Call => graph.call_ops.len(),
    };
    let mut delta = vec![0i128; len + 1];
    for &id in ids {
        for l in life[id].iter().filter(|l| l.list == list) {
            let size = align(graph.tensor(id).bytes() as u64) as i128;
            delta[l.start] += size;
            delta[l.end + 1] -= size;
        }
    }
    let mut live = 0i128;
    let mut peak = 0i128;
    for d in delta {
        live += d;
        peak = peak.max(live);
    }
    peak as u64
}

impl MemoryPlan {
    /// Plans `graph`. It assumes what [`Graph::build`] guarantees and [`verify`](Self::verify)
    /// checks: every activation is touched by one op list and written before it is read.
    pub fn build(graph: &Graph) -> MemoryPlan {
        Self::build_fused(graph, &Fusion::none(graph))
    }

    /// [`build`](Self::build) for a device that runs the ops in the launches `fusion`
    /// gives (which must come from [`Fusion::none`] or [`Fusion::from_predicate`]).
    pub fn build_fused(graph: &Graph, fusion: &Fusion) -> MemoryPlan {
        let life = lifetimes_fused(graph, fusion);
        let mut placements: Vec<Placement> = graph
            .tensors
            .iter()
            .map(|t| Placement {
                region: Region::of(t.kind),
                offset: 0,
                bytes: t.bytes() as u64,
            })
            .collect();
        let mut region_bytes = [0u64; 4];

        // Fixed regions: packed in tensor order.
        for p in placements.iter_mut().filter(|p| p.region != Region::Arena) {
            let end = &mut region_bytes[p.region as usize];
            p.offset = *end;
            *end += align(p.bytes);
        }

        // The arena: greedy by size, best fit among the slots live at the same time.
        let mut order: Vec<TensorId> = (0..graph.tensors.len())
            .filter(|&id| placements[id].region == Region::Arena)
            .collect();
        let first_use = |id: TensorId| life[id].first().map_or(0, |l| l.first);
        order.sort_by_key(|&id| {
            (
                std::cmp::Reverse(align(placements[id].bytes)),
                first_use(id),
                id,
            )
        });
        let mut placed: Vec<TensorId> = Vec::with_capacity(order.len());
        for &id in &order {
            let size = align(placements[id].bytes);
            let mut busy: Vec<(u64, u64)> = placed
                .iter()
                .filter(|&&o| conflict(&life[id], &life[o]))
                .map(|&o| {
                    let p = placements[o];
                    (p.offset, p.offset + align(p.bytes))
                })
                .collect();
            busy.sort_unstable();
            let (mut top, mut best) = (0u64, None::<(u64, u64)>);
            for (lo, hi) in busy {
                if lo >= top + size && best.map_or(true, |(gap, _)| lo - top < gap) {
                    best = Some((lo - top, top));
                }
                top = top.max(hi);
            }
            placements[id].offset = best.map_or(top, |(_, offset)| offset);
            placed.push(id);
        }

        let stats = |list: OpList| {
            let ids: Vec<TensorId> = order
                .iter()
                .copied()
                .filter(|&id| life[id].iter().any(|l| l.list == list))
                .collect();
            ArenaStats {
                buffers: ids.len(),
                sum_bytes: ids.iter().map(|&id| align(placements[id].bytes)).sum(),
                live_bound_bytes: live_bound(graph, &life, &ids, list),
                planned_bytes: ids
                    .iter()
                    .map(|&id| placements[id].offset + align(placements[id].bytes))
                    .max()
                    .unwrap_or(0),
            }
        };
        let (call, prompt) = (stats(OpList::Call), stats(OpList::Prompt));
        region_bytes[Region::Arena as usize] = order
            .iter()
            .map(|&id| placements[id].offset + align(placements[id].bytes))
            .max()
            .unwrap_or(0);
        MemoryPlan {
            weight_bytes_unpadded: graph
                .tensors
                .iter()
                .filter(|t| t.kind == Kind::Weight)
                .map(|t| t.bytes() as u64)
                .sum(),
            placements,
            region_bytes,
            call,
            prompt,
        }
    }

    /// Size of `region` in bytes.
    pub fn region(&self, region: Region) -> u64 {
        self.region_bytes[region as usize]
    }

    /// Start of `region` in the one device allocation.
    pub fn region_base(&self, region: Region) -> u64 {
        self.region_bytes[..region as usize].iter().sum()
    }

    /// The weights allocation.
    pub fn weight_bytes(&self) -> u64 {
        self.region(Region::Weights)
    }

    /// The activation arena.
    pub fn arena_bytes(&self) -> u64 {
        self.region(Region::Arena)
    }

    /// Per-prompt cross-attention K/V.
    pub fn persistent_bytes(&self) -> u64 {
        self.region(Region::Persistent)
    }

    /// Inputs and output.
    pub fn io_bytes(&self) -> u64 {
        self.region(Region::Io)
    }

    /// Device memory the graph needs: weights + persistent + io + arena.
    pub fn peak_bytes(&self) -> u64 {
        self.region_bytes.iter().sum()
    }

    /// Proves the plan sound for `graph`, recomputing liveness from the graph itself: every
    /// tensor has exactly one placement, in the region of its kind, at an aligned offset,
    /// with its slot inside the region; no two slots of a fixed region overlap; every
    /// activation is touched by one op list and first touched by an op that writes it (not
    /// in place); and no two activations live at the same op overlap in the arena.
    pub fn verify(&self, graph: &Graph) -> std::result::Result<(), String> {
        self.verify_fused(graph, &Fusion::none(graph))
    }

    /// [`verify`](Self::verify) with the liveness of the launches `fusion` gives.
    pub fn verify_fused(&self, graph: &Graph, fusion: &Fusion) -> std::result::Result<(), String> {
        fusion.check(graph)?;
        let name = |id: TensorId| &graph.tensor(id).name;
        if self.placements.len() != graph.tensors.len() {
            return Err(format!(
                "{} placements for {} tensors",
                self.placements.len(),
                graph.tensors.len()
            ));
        }
        if let Some(r) = Region::ALL
            .iter()
            .find(|&&r| self.region(r) % ALIGNMENT != 0)
        {
            return Err(format!(
                "region {} has {} bytes, not a multiple of {ALIGNMENT}",
                r.name(),
                self.region(*r)
            ));
        }
        for (id, (t, p)) in graph.tensors.iter().zip(&self.placements).enumerate() {
            let want = Region::of(t.kind);
            if p.region != want {
                return Err(format!(
                    "`{}` ({:?}) is in region {}, expected {}",
                    name(id),
                    t.kind,
                    p.region.name(),
                    want.name()
                ));
            }
            if p.bytes != t.bytes() as u64 {
                return Err(format!(
                    "`{}` is placed with {} bytes, the tensor has {}",
                    name(id),
                    p.bytes,
                    t.bytes()
                ));
            }
            if p.offset % ALIGNMENT != 0 {
                return Err(format!(
                    "`{}` is at offset {} of {}, not aligned to {ALIGNMENT}",
                    name(id),
                    p.offset,
                    p.region.name()
                ));
            }
            if p.offset + align(p.bytes) > self.region(p.region) {
                return Err(format!(
                    "`{}` at [{}, {}) lies outside region {} of {} bytes",
                    name(id),
                    p.offset,
                    p.offset + align(p.bytes),
                    p.region.name(),
                    self.region(p.region)
                ));
            }
        }

        let life = lifetimes_fused(graph, fusion);
        let ops = |list: OpList| match list {
            OpList::Prompt => &graph.prompt_ops,
            OpList::Call => &graph.call_ops,
        };
        for (id, t) in graph.tensors.iter().enumerate() {
            if t.kind != Kind::Activation {
                continue;
            }
            if life[id].len() > 1 {
                return Err(format!(
                    "activation `{}` is used by both op lists; it must be persistent",
                    name(id)
                ));
            }
            if let Some(l) = life[id].first() {
                let op = &ops(l.list)[l.first];
                if op.output() != id || op.in_place() {
                    return Err(format!(
                        "activation `{}` is read by {:?} op {} before it is written",
                        name(id),
                        l.list,
                        l.first
                    ));
                }
            }
        }

        let slot = |id: TensorId| {
            let p = self.placements[id];
            (p.offset, p.offset + align(p.bytes))
        };
        for region in Region::ALL {
            let ids: Vec<TensorId> = (0..graph.tensors.len())
                .filter(|&id| self.placements[id].region == region)
                .collect();
            for (i, &a) in ids.iter().enumerate() {
                for &b in &ids[i + 1..] {
                    let ((a0, a1), (b0, b1)) = (slot(a), slot(b));
                    let together = region != Region::Arena || conflict(&life[a], &life[b]);
                    if together && a0 < b1 && b0 < a1 {
                        return Err(format!(
                            "`{}` [{a0}, {a1}) and `{}` [{b0}, {b1}) overlap in region {} \
                             while both are live",
                            name(a),
                            name(b),
                            region.name()
                        ));
                    }
                }
            }
        }
        Ok(())
    }
}

/// A GPU's peak numbers from its vendor spec sheet.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GpuSpec {
    /// The `--gpu` key (`h100`, ...).
    pub key: &'static str,
    pub name: &'static str,
    /// Dense FP16 tensor-core TFLOP/s with FP32 accumulation (no 2:4 sparsity).
    pub fp16_tflops: f64,
    /// DRAM bandwidth, GB/s (10^9 bytes).
    pub hbm_gbps: f64,
    /// Device memory as the spec sheet states it.
    pub memory_gib: f64,
}

impl GpuSpec {
    /// H100 SXM5: NVIDIA H100 Tensor Core GPU datasheet, "FP16 Tensor Core 1,979 TFLOPS"
    /// with sparsity (989 dense), 3.35 TB/s, 80 GB.
    pub const H100: GpuSpec = GpuSpec {
        key: "h100",
        name: "NVIDIA H100 SXM5 80GB",
        fp16_tflops: 989.0,
        hbm_gbps: 3350.0,
        memory_gib: 80.0,
    };
    /// H200 SXM: NVIDIA H200 Tensor Core GPU datasheet, FP16 Tensor Core 1,979 TFLOPS with
    /// sparsity (989 dense), 4.8 TB/s, 141 GB.
    pub const H200: GpuSpec = GpuSpec {
        key: "h200",
        name: "NVIDIA H200 SXM 141GB",
        fp16_tflops: 989.0,
        hbm_gbps: 4800.0,
        memory_gib: 141.0,
    };
    /// A100 SXM4 80GB: NVIDIA A100 Tensor Core GPU datasheet, FP16 Tensor Core 312 TFLOPS
    /// (624 with sparsity), 2,039 GB/s, 80 GB.
    pub const A100: GpuSpec = GpuSpec {
        key: "a100",
        name: "NVIDIA A100 SXM4 80GB",
        fp16_tflops: 312.0,
        hbm_gbps: 2039.0,
        memory_gib: 80.0,
    };
    /// L40S: NVIDIA L40S datasheet, FP16 Tensor Core 362.05 TFLOPS (733 with sparsity; the
    /// same with FP32 accumulation), 864 GB/s, 48 GB GDDR6.
    pub const L40S: GpuSpec = GpuSpec {
        key: "l40s",
        name: "NVIDIA L40S 48GB",
        fp16_tflops: 362.05,
        hbm_gbps: 864.0,
        memory_gib: 48.0,
    };
    /// GeForce RTX 4090: NVIDIA Ada GPU architecture whitepaper (appendix A), peak FP16
    /// tensor TFLOPS with FP32 accumulate 165.2 (330.4 with sparsity; 330.3 dense with FP16
    /// accumulate, which these kernels do not use), 1,008 GB/s, 24 GB GDDR6X.
    pub const RTX4090: GpuSpec = GpuSpec {
        key: "rtx4090",
        name: "NVIDIA GeForce RTX 4090",
        fp16_tflops: 165.2,
        hbm_gbps: 1008.0,
        memory_gib: 24.0,
    };

    /// Every GPU `plan` knows.
    pub const ALL: [GpuSpec; 5] = [
        GpuSpec::H100,
        GpuSpec::H200,
        GpuSpec::A100,
        GpuSpec::L40S,
        GpuSpec::RTX4090,
    ];

    /// The GPU with `key` (`h100`, `h200`, `a100`, `l40s`, `rtx4090`).
    pub fn by_key(key: &str) -> Result<GpuSpec> {
        GpuSpec::ALL
            .into_iter()
            .find(|g| g.key.eq_ignore_ascii_case(key))
            .ok_or_else(|| {
                let keys: Vec<&str> = GpuSpec::ALL.iter().map(|g| g.key).collect();
                Error::Invalid(format!(
                    "unknown GPU `{key}`: expected one of {}",
                    keys.join(", ")
                ))
            })
    }

    /// Device memory in bytes.
    pub fn memory_bytes(&self) -> u64 {
        (self.memory_gib * (1u64 << 30) as f64) as u64
    }

    /// Roofline time of one op: `max(flops / peak, bytes / bandwidth)`. Every op is held to
    /// the tensor-core peak; norms and elementwise ops are memory bound even against the
    /// far lower CUDA-core peak, so this never changes their time.
    pub fn op_time(&self, cost: &OpCost) -> OpTime {
        let compute = cost.flops as f64 / (self.fp16_tflops * 1e12);
        let memory = cost.bytes() as f64 / (self.hbm_gbps * 1e9);
        OpTime {
            seconds: compute.max(memory),
            bound: if compute >= memory && cost.flops > 0 {
                Bound::Compute
            } else {
                Bound::Memory
            },
        }
    }

    /// Roofline time of a list of ops run one after another.
    pub fn list_seconds(&self, ops: &[OpCost]) -> f64 {
        ops.iter().fold(0.0, |t, c| t + self.op_time(c).seconds)
    }
}

/// Which roof an op sits under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bound {
    Compute,
    Memory,
}

impl Bound {
    pub fn name(self) -> &'static str {
        match self {
            Bound::Compute => "compute",
            Bound::Memory => "memory",
        }
    }
}

/// An op's roofline time.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OpTime {
    pub seconds: f64,
    pub bound: Bound,
}

/// Video frames one model call produces in the steady state: a chunk of `c` latent frames,
/// `c * temporal_upsample` video frames, every `s` micro-steps (calls).
pub fn video_frames_per_call(profile: &Profile) -> f64 {
    profile.video.frames_per_chunk(profile.stream.chunk_frames) as f64
        / profile.stream.micro_steps as f64
}

/// The predicted time of one model call and the video frame rate it sustains, at the
/// roofline and at a fraction `efficiency` of it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Prediction {
    pub gpu: GpuSpec,
    pub video_frames_per_call: f64,
    pub seconds_per_call: f64,
    pub fps: f64,
    pub efficiency: f64,
    /// `seconds_per_call / efficiency`.
    pub seconds_per_call_at_efficiency: f64,
    pub fps_at_efficiency: f64,
}

impl Prediction {
    /// The sum of the call ops' roofline times (no overlap between ops, no launch gaps).
    /// `efficiency` must lie in `(0, 1]`.
    pub fn new(
        gpu: GpuSpec,
        cost: &GraphCost,
        video_frames_per_call: f64,
        efficiency: f64,
    ) -> Result<Prediction> {
        if !(efficiency > 0.0 && efficiency <= 1.0) {
            return Err(Error::Invalid(format!(
                "efficiency must lie in (0, 1], found {efficiency}"
            )));
        }
        let seconds = gpu.list_seconds(&cost.call.ops);
        Ok(Prediction {
            gpu,
            video_frames_per_call,
            seconds_per_call: seconds,
            fps: video_frames_per_call / seconds,
            efficiency,
            seconds_per_call_at_efficiency: seconds / efficiency,
            fps_at_efficiency: video_frames_per_call * efficiency / seconds,
        })
    }
}

/// Bytes per element of the decoder's activations and weights on a device (f16).
const TAE_ELEM_BYTES: u64 = 2;

/// The name of a decoder op's variant.
pub fn tae_op_kind(op: &TaeOp) -> &'static str {
    match op {
        TaeOp::Save => "Save",
        TaeOp::GroupNorm { silu: true, .. } => "GroupNormSilu",
        TaeOp::GroupNorm { silu: false, .. } => "GroupNorm",
        TaeOp::Conv2d { upsample: true, .. } => "UpConv2d",
        TaeOp::Conv2d {
            upsample: false, ..
        } => "Conv2d",
        TaeOp::ConvT { .. } => "ConvT",
        TaeOp::RepeatFrames => "RepeatFrames",
        TaeOp::Attention { .. } => "Attention",
        TaeOp::AddSaved { skip: Some(_), .. } => "AddSkipConv",
        TaeOp::AddSaved { skip: None, .. } => "AddSaved",
    }
}

/// The cost of one decoder op on a chunk of `latent_frames`, with the conventions of this
/// module at f16 (activations channels last, weights f16): a 3x3 convolution is
/// `2 * pixels_out * 9 * cin * cout` per frame, the causal temporal convolution `2 * pixels *
/// 3 * ch^2` and reads its two cached frames, attention counts its four projections
/// (`8 * pixels * ch^2`) and `4 * pixels^2 * ch` for `Q K^T` and `P V`, GroupNorm 5 FLOPs per
/// element (9 with SiLU), a residual add 1 (plus the 1x1 skip GEMM). `Save` only keeps a
/// buffer alive.
pub fn tae_op_cost(step: &TaeStep, latent_frames: usize) -> OpCost {
    let f = (step.frames * latent_frames) as u64;
    let pixels = (step.height * step.width) as u64;
    let (of, oh, ow, oc) = step.output();
    let input = f * pixels * step.channels as u64 * TAE_ELEM_BYTES;
    let output = (of * latent_frames) as u64 * (oh * ow * oc) as u64 * TAE_ELEM_BYTES;
    let out_elems = output / TAE_ELEM_BYTES;
    let cost = |flops: u64, read: u64, class| OpCost {
        flops,
        bytes_read: read,
        bytes_written: output,
        class,
    };
    use OpClass::*;
    match &step.op {
        TaeOp::Save => OpCost {
            flops: 0,
            bytes_read: 0,
            bytes_written: 0,
            class: Layout,
        },
        TaeOp::GroupNorm { ch, silu, .. } => cost(
            if *silu { 9 } else { 5 } * out_elems,
            input + 2 * *ch as u64 * TAE_ELEM_BYTES,
            Norm,
        ),
        TaeOp::Conv2d { cin, cout, .. } => {
            let (cin, cout) = (*cin as u64, *cout as u64);
            let weights = (9 * cin * cout + cout) * TAE_ELEM_BYTES;
            cost(
                2 * f * (oh * ow) as u64 * 9 * cin * cout,
                input + weights,
                Gemm,
            )
        }
        TaeOp::ConvT { ch, .. } => {
            let ch = *ch as u64;
            let cached = 2 * pixels * ch * TAE_ELEM_BYTES;
            let weights = (3 * ch * ch + ch) * TAE_ELEM_BYTES;
            cost(2 * f * pixels * 3 * ch * ch, input + cached + weights, Gemm)
        }
        TaeOp::RepeatFrames => cost(0, input, Layout),
        TaeOp::Attention { ch, .. } => {
            let ch = *ch as u64;
            let weights = 4 * (ch * ch + ch) * TAE_ELEM_BYTES;
            cost(
                f * (8 * pixels * ch * ch + 4 * pixels * pixels * ch),
                input + weights,
                Attention,
            )
        }
        TaeOp::AddSaved { skip, cin, cout } => {
            let saved = f * pixels * *cin as u64 * TAE_ELEM_BYTES;
            match skip {
                Some(_) => {
                    let (cin, cout) = (*cin as u64, *cout as u64);
                    let weights = (cin * cout + cout) * TAE_ELEM_BYTES;
                    cost(
                        2 * f * pixels * cin * cout + out_elems,
                        input + saved + weights,
                        Gemm,
                    )
                }
                None => cost(out_elems, input + saved, Elementwise),
            }
        }
    }
}

/// What the decoder costs per chunk and the device memory it needs.
#[derive(Debug, Clone, PartialEq)]
pub struct DecoderCost {
    /// Latent frames per chunk (`c`); the chunk gives `4c` video frames.
    pub latent_frames: usize,
    /// One per step of the graph, in order.
    pub ops: Vec<OpCost>,
    pub total: CostSum,
    pub parameters: u64,
    /// f16 weights.
    pub weight_bytes: u64,
    /// The causal caches: two input frames per `ConvT`, kept between chunks (f16).
    pub cache_bytes: u64,
    /// The largest sum of activations live at one op (its input, its output and every
    /// saved residual input), f16: the decoder's arena with perfect reuse.
    pub arena_bytes: u64,
}

impl DecoderCost {
    /// The decoder of `graph` on chunks of `latent_frames`.
    pub fn of(graph: &TaeGraph, latent_frames: usize) -> DecoderCost {
        let ops: Vec<OpCost> = graph
            .steps
            .iter()
            .map(|s| tae_op_cost(s, latent_frames))
            .collect();
        let mut total = CostSum::default();
        ops.iter().for_each(|c| total.add(c));
        let mut cache_bytes = 0;
        let mut saved: Vec<u64> = Vec::new();
        let mut arena_bytes = 0;
        for step in &graph.steps {
            let elems = |f: usize, h: usize, w: usize, c: usize| {
                (f * latent_frames * h * w * c) as u64 * TAE_ELEM_BYTES
            };
            let input = elems(step.frames, step.height, step.width, step.channels);
            let (of, oh, ow, oc) = step.output();
            let output = elems(of, oh, ow, oc);
            match &step.op {
                TaeOp::Save => saved.push(input),
                TaeOp::AddSaved { .. } => {
                    let s = saved.pop().unwrap_or(0);
                    let live = align(input)
                        + align(output)
                        + saved.iter().map(|&b| align(b)).sum::<u64>()
                        + align(s);
                    arena_bytes = arena_bytes.max(live);
                    continue;
                }
                TaeOp::ConvT { ch, .. } => {
                    cache_bytes +=
                        align((2 * step.height * step.width * ch) as u64 * TAE_ELEM_BYTES)
                }
                _ => {}
            }
            let live = align(input) + align(output) + saved.iter().map(|&b| align(b)).sum::<u64>();
            arena_bytes = arena_bytes.max(live);
        }
        let parameters = graph.parameters();
        DecoderCost {
            latent_frames,
            ops,
            total,
            parameters,
            weight_bytes: parameters * TAE_ELEM_BYTES,
            cache_bytes,
            arena_bytes,
        }
    }

    /// The decoder's cost per model call: one chunk every `micro_steps` calls.
    pub fn flops_per_call(&self, micro_steps: usize) -> f64 {
        self.total.flops as f64 / micro_steps.max(1) as f64
    }

    /// Roofline seconds per model call on `gpu` (a chunk's time over `micro_steps` calls).
    pub fn seconds_per_call(&self, gpu: &GpuSpec, micro_steps: usize) -> f64 {
        gpu.list_seconds(&self.ops) / micro_steps.max(1) as f64
    }
}
