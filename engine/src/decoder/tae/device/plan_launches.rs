//! The TAE decoder's launches on a device as `plan` costs them, from the lowering's table
//! in the module docs: what [`cost::tae_op_cost`](crate::cost::tae_op_cost) counts per op,
//! regrouped by [`launches::group`](crate::cost::launches::group).
//!
//! - `AddSaved` without a skip is the residual of the `ConvT` or attention launch before it
//!   (folded into the previous launch). With a skip it stays a launch of its own: the device
//!   runs the 1x1 skip first and hands its output to the `ConvT` as the residual, which moves
//!   the same bytes as the op list does.
//! - `RepeatFrames` is read by the next `ConvT` from the frames before repetition (folded
//!   into the next launch); `Save` only keeps a buffer (folded, it costs nothing).
//! - `GroupNorm` is two passes on the device, because a group (up to `512 x 512 x 4`
//!   elements at 4b) spans many CTAs: `groupnorm_stats` reads the input (the finalize step's
//!   per-group merge is negligible) and `groupnorm_apply` reads it again and writes the
//!   result. The op list counts one read; the launches count both.
//!
//! With `prologues`, the apply pass of every `GroupNorm` followed by a `Conv2d` folds into
//! that convolution's input load (modelled: no kernel does it yet, see
//! `kernels/README.md`, GroupNorm); the statistics pass stays.

use crate::cost::launches::{group, Fold};
use crate::cost::{tae_op_cost, OpClass, OpCost};
use crate::error::{Error, Result};
use crate::model::tae::{TaeGraph, TaeOp};

/// The launches of `graph` on chunks of `latent_frames`, their costs in launch order.
pub fn launch_costs(graph: &TaeGraph, latent_frames: usize, prologues: bool) -> Result<Vec<OpCost>> {
    let mut costs = Vec::with_capacity(graph.steps.len() + 32);
    let mut folds = Vec::with_capacity(costs.capacity());
    let steps = &graph.steps;
    for (i, step) in steps.iter().enumerate() {
        let c = tae_op_cost(step, latent_frames);
        let next = steps.get(i + 1).map(|s| &s.op);
        let prev = i.checked_sub(1).map(|p| &steps[p].op);
        let fold = match &step.op {
            TaeOp::Save => Fold::IntoNext,
            TaeOp::RepeatFrames if matches!(next, Some(TaeOp::ConvT { .. })) => Fold::IntoNext,
            TaeOp::AddSaved { skip: None, .. } => match prev {
                Some(TaeOp::ConvT { .. } | TaeOp::Attention { .. }) => Fold::IntoPrevious,
                _ => return Err(unlowered(i, "AddSaved", "after a ConvT or Attention")),
            },
            TaeOp::RepeatFrames => return Err(unlowered(i, "RepeatFrames", "before a ConvT")),
            TaeOp::GroupNorm { .. } => {
                let (f, h, w, ch) = step.output();
                let elems = (f * latent_frames * h * w * ch) as u64;
                // The statistics pass reads the input (the output's size: GroupNorm keeps the
                // shape); sum and centred squares are 3 of the op's FLOPs an element.
                costs.push(OpCost {
                    flops: 3 * elems,
                    bytes_read: c.bytes_written,
                    bytes_written: 0,
                    class: OpClass::Norm,
                });
                folds.push(Fold::Alone);
                costs.push(OpCost {
                    flops: c.flops - 3 * elems,
                    ..c
                });
                folds.push(match next {
                    Some(TaeOp::Conv2d { .. }) if prologues => Fold::IntoNext,
                    _ => Fold::Alone,
                });
                continue;
            }
            _ => Fold::Alone,
        };
        costs.push(c);
        folds.push(fold);
    }
    Ok(group(&costs, &folds)?.into_iter().map(|l| l.cost).collect())
}

fn unlowered(i: usize, op: &str, want: &str) -> Error {
    Error::Invalid(format!(
        "decoder launches: op {i} ({op}) has a device lowering only {want}"
    ))
}
