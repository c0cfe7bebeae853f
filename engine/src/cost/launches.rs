//! Op costs grouped into device launches: a graph op either runs in a launch of its own or
//! folds into a neighbour's ([`Fold`]), and a launch's bytes drop the tensors that never
//! leave the chip. The CUDA lowering says which folds it performs today
//! (`backend::cuda::lower::device_call_folds`); [`with_prologues`] adds the ones issue 18 asks for
//! and no kernel does yet, so `plan` can show both rooflines.
//!
//! The byte rule, for the compulsory-traffic convention of this module's parent:
//! - an op folded **into the previous** launch reads the previous op's output, which the
//!   fused kernel keeps in registers: that output is neither written by the producer nor
//!   read by this op (`Linear` + `GatedResidual`: the GEMM's f16 result never reaches
//!   memory; the residual stream is still read and written once);
//! - an op folded **into the next** launch produces what that launch reads, computed at its
//!   load: the op's written bytes are neither written nor read back (`HeadRmsNorm` before
//!   attention: the attention kernel reads `qkv` anyway and applies the norm as it loads;
//!   `AdaLn` before a `Linear`: the GEMM reads the f32 residual stream and the two
//!   modulation rows instead of the f16 normalised copy).
//!
//! FLOPs add up. A launch takes the class of its one op that is not folded (the GEMM or the
//! attention), so a kernel path's efficiency for that class applies to the whole launch.

use super::OpCost;
use crate::error::{Error, Result};
use crate::model::graph::{Graph, Op};

/// Where an op runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fold {
    /// A launch of its own.
    Alone,
    /// In the epilogue of the launch of the op before it.
    IntoPrevious,
    /// In the prologue (the operand load) of the launch of the next op that runs alone.
    IntoNext,
}

/// One device launch: the graph ops it runs (indices into the op list) and its cost.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Launch {
    pub ops: Vec<usize>,
    pub cost: OpCost,
}

/// Groups `costs` (one per op of a list) into launches by `folds` (one per op).
///
/// Errors when the folds do not describe launches: a different length, an op folded into a
/// previous launch at the start of the list, or ops folded into a next launch at its end.
pub fn group(costs: &[OpCost], folds: &[Fold]) -> Result<Vec<Launch>> {
    if costs.len() != folds.len() {
        return Err(Error::Invalid(format!(
            "launches: {} folds for {} ops (one per op expected)",
            folds.len(),
            costs.len()
        )));
    }
    let mut launches: Vec<Launch> = Vec::new();
    // Indices of the ops waiting to fold into the next launch.
    let mut pending: Vec<usize> = Vec::new();
    for (i, (c, fold)) in costs.iter().zip(folds).enumerate() {
        match fold {
            Fold::IntoNext => pending.push(i),
            Fold::Alone => {
                let mut cost = *c;
                for &p in &pending {
                    let n = &costs[p];
                    cost.flops += n.flops;
                    // Its output is consumed at this launch's load: neither written nor read.
                    cost.bytes_read = (cost.bytes_read + n.bytes_read)
                        .checked_sub(n.bytes_written)
                        .ok_or_else(|| folding_error(p, i, "reads fewer bytes than op"))?;
                }
                let mut ops = std::mem::take(&mut pending);
                ops.push(i);
                launches.push(Launch { ops, cost });
            }
            Fold::IntoPrevious => {
                let Some(last) = launches.last_mut().filter(|_| pending.is_empty()) else {
                    return Err(Error::Invalid(format!(
                        "launches: op {i} folds into the launch before it, but none directly \
                         precedes it"
                    )));
                };
                let prev = costs[i - 1];
                // The previous op's output stays on chip: not written, not read back.
                last.cost.flops += c.flops;
                last.cost.bytes_written = (last.cost.bytes_written + c.bytes_written)
                    .checked_sub(prev.bytes_written)
                    .ok_or_else(|| folding_error(i, i - 1, "writes fewer bytes than op"))?;
                last.cost.bytes_read = c
                    .bytes_read
                    .checked_sub(prev.bytes_written)
                    .map(|r| last.cost.bytes_read + r)
                    .ok_or_else(|| folding_error(i - 1, i, "writes more bytes than op"))?;
                last.ops.push(i);
            }
        }
    }
    if let Some(&p) = pending.first() {
        return Err(Error::Invalid(format!(
            "launches: op {p} folds into the next launch, but no op after it runs alone"
        )));
    }
    Ok(launches)
}

fn folding_error(a: usize, b: usize, what: &str) -> Error {
    Error::Invalid(format!(
        "launches: op {a} {what} {b} (the fold's intermediate does not match)"
    ))
}

/// The folds `base` plus the prologue fusions no kernel performs yet: every `LayerNorm` and
/// `AdaLn` whose output only the next op reads, when that op is a `Linear` running alone,
/// folds into that GEMM's A-operand load. The row statistics (mean, 1/std) would come from
/// a pass the model does not count (8 bytes a row, written by the epilogue that last
/// updated the residual stream or by a reduction over it), so this is a lower bound.
pub fn with_prologues(graph: &Graph, ops: &[Op], base: &[Fold]) -> Vec<Fold> {
    let mut folds = base.to_vec();
    for (i, op) in ops.iter().enumerate() {
        let norm_out = match op {
            Op::LayerNorm { out, .. } | Op::AdaLn { out, .. } => *out,
            _ => continue,
        };
        let next_is_lone_gemm = matches!(ops.get(i + 1), Some(Op::Linear { x, .. }) if *x == norm_out)
            && base.get(i + 1) == Some(&Fold::Alone)
            && base[i] == Fold::Alone;
        // The norm and the GEMM are the only ops of the graph that touch the tensor.
        let touching = (graph.prompt_ops.iter().chain(&graph.call_ops))
            .filter(|o| o.tensors().contains(&norm_out))
            .count();
        if next_is_lone_gemm && touching == 2 {
            folds[i] = Fold::IntoNext;
        }
    }
    folds
}

/// The row-statistics passes that the sm_90a path runs for the prologue folds `modelled`
/// adds to `base` (`ln_stats_*`: the norm's input read once, a `(mean, M2)` f32 pair written
/// per row; 3 FLOPs an element: sum, subtract, square-accumulate), one launch each: for the
/// norms whose input was last written by anything but a residual add (those take the
/// statistics the residual GEMM's epilogue leaves, 8 bytes a row per 128 columns, which
/// this count leaves out as it does the prologue's read of them).
pub fn stats_passes(graph: &Graph, ops: &[Op], base: &[Fold], modelled: &[Fold]) -> Vec<OpCost> {
    let from_residual = |i: usize, x| {
        (0..i).rev().find(|&j| ops[j].output() == x).is_some_and(|j| {
            matches!(ops[j], Op::GatedResidual { .. } | Op::Residual { .. })
                && base.get(j) == Some(&Fold::IntoPrevious)
        })
    };
    ops.iter()
        .enumerate()
        .filter(|&(i, _)| modelled.get(i) == Some(&Fold::IntoNext) && base.get(i) == Some(&Fold::Alone))
        .filter_map(|(i, op)| match op {
            Op::LayerNorm { x, .. } | Op::AdaLn { x, .. } if !from_residual(i, *x) => {
                let t = graph.tensor(*x);
                let rows = t.shape.first().copied().unwrap_or(1);
                Some(OpCost {
                    flops: 3 * t.numel() as u64,
                    bytes_read: t.bytes() as u64,
                    bytes_written: 8 * rows as u64,
                    class: super::OpClass::Norm,
                })
            }
            _ => None,
        })
        .collect()
}

/// The launches' costs alone, for the roofline sums.
pub fn costs_of(launches: &[Launch]) -> Vec<OpCost> {
    launches.iter().map(|l| l.cost).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cost::OpClass;

    fn c(flops: u64, read: u64, written: u64, class: OpClass) -> OpCost {
        OpCost {
            flops,
            bytes_read: read,
            bytes_written: written,
            class,
        }
    }

    /// Norm (reads 40, writes 10) into GEMM (reads 10 + 50, writes 20), GEMM's 20 into a
    /// residual (reads 20 + 80, writes 80): one launch reading 40 + 50 + 80 and writing 80.
    #[test]
    fn folds_drop_the_intermediates() {
        use OpClass::*;
        let costs = [
            c(1, 40, 10, Norm),
            c(100, 60, 20, Gemm),
            c(2, 100, 80, Elementwise),
            c(3, 5, 5, Layout),
        ];
        let folds = [Fold::IntoNext, Fold::Alone, Fold::IntoPrevious, Fold::Alone];
        let l = group(&costs, &folds).unwrap();
        assert_eq!(l.len(), 2);
        assert_eq!(l[0].ops, vec![0, 1, 2]);
        assert_eq!(l[0].cost, c(103, 40 + 50 + 80, 80, Gemm));
        assert_eq!(l[1].ops, vec![3]);
        assert_eq!(l[1].cost, costs[3]);
        // Unfolded: the costs unchanged.
        let alone = group(&costs, &[Fold::Alone; 4]).unwrap();
        assert_eq!(costs_of(&alone), costs.to_vec());
    }

    #[test]
    fn impossible_folds_are_errors() {
        let x = c(1, 1, 1, OpClass::Norm);
        for folds in [
            &[Fold::IntoPrevious, Fold::Alone][..],
            &[Fold::Alone, Fold::IntoNext][..],
            &[Fold::Alone][..],
            &[Fold::Alone, Fold::IntoNext, Fold::IntoPrevious][..],
        ] {
            let costs = vec![x; folds.len().max(2)];
            let e = group(&costs, folds).unwrap_err().to_string();
            assert!(e.contains("launches"), "{e}");
        }
    }
}
