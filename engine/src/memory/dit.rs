//! Where every tensor of a DiT graph lives on a device: four regions in one allocation,
//! the activations sharing the arena by liveness through [`super::arena`].

use super::arena::{self, Slot, Span};
use super::{align, ALIGNMENT};
use crate::model::graph::{Graph, Kind, TensorId};

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

/// A tensor's lifetimes as spans of the arena planner, one timeline per op list.
fn spans(life: &[Lifetime]) -> Vec<Span> {
    life.iter()
        .map(|l| Span {
            timeline: l.list as usize,
            start: l.start,
            end: l.end,
        })
        .collect()
}

fn conflict(a: &[Lifetime], b: &[Lifetime]) -> bool {
    arena::conflict(&spans(a), &spans(b))
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

        // The arena: the one planner over the activations' lifetimes.
        let arena_ids: Vec<TensorId> = (0..graph.tensors.len())
            .filter(|&id| placements[id].region == Region::Arena)
            .collect();
        let slots: Vec<Slot> = arena_ids
            .iter()
            .map(|&id| Slot {
                bytes: placements[id].bytes,
                spans: spans(&life[id]),
                first: life[id].first().map_or(0, |l| l.first),
            })
            .collect();
        let (offsets, arena_bytes) = arena::plan(&slots);
        for (&id, &offset) in arena_ids.iter().zip(&offsets) {
            placements[id].offset = offset;
        }

        let stats = |list: OpList| {
            let (ids, list_slots): (Vec<TensorId>, Vec<Slot>) = arena_ids
                .iter()
                .zip(&slots)
                .filter(|(&id, _)| life[id].iter().any(|l| l.list == list))
                .map(|(&id, s)| (id, s.clone()))
                .unzip();
            ArenaStats {
                buffers: ids.len(),
                sum_bytes: ids.iter().map(|&id| align(placements[id].bytes)).sum(),
                live_bound_bytes: arena::live_bound(&list_slots, list as usize),
                planned_bytes: ids
                    .iter()
                    .map(|&id| placements[id].offset + align(placements[id].bytes))
                    .max()
                    .unwrap_or(0),
            }
        };
        let (call, prompt) = (stats(OpList::Call), stats(OpList::Prompt));
        region_bytes[Region::Arena as usize] = arena_bytes;
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
