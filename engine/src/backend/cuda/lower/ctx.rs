//! What the lowering of one op reads: the tensors' addresses in the model allocation
//! ([`Ctx`]) and the op's place in its list ([`At`]).

use super::{describe, Norms};
use crate::error::{Error, Result};
use crate::memory::MemoryPlan;
use crate::model::graph::{Graph, Op, Precision, TensorId};

/// Addresses and shapes of the graph's tensors in the model allocation.
pub(super) struct Ctx<'a> {
    pub(super) graph: &'a Graph,
    pub(super) plan: &'a MemoryPlan,
    pub(super) base: u64,
}

impl Ctx<'_> {
    /// Byte offset of tensor `id` in the model allocation.
    pub(super) fn offset(&self, id: TensorId) -> usize {
        let p = self.plan.placements[id];
        (self.plan.region_base(p.region) + p.offset) as usize
    }
    pub(super) fn addr(&self, id: TensorId) -> u64 {
        self.base + self.offset(id) as u64
    }
    pub(super) fn f16(&self, id: TensorId, what: &str) -> Result<*mut u16> {
        self.expect(id, Precision::F16, what)?;
        Ok(self.addr(id) as *mut u16)
    }
    pub(super) fn f32(&self, id: TensorId, what: &str) -> Result<*mut f32> {
        self.expect(id, Precision::F32, what)?;
        Ok(self.addr(id) as *mut f32)
    }
    pub(super) fn expect(&self, id: TensorId, p: Precision, what: &str) -> Result<()> {
        let t = self.graph.tensor(id);
        if t.precision != p {
            return Err(Error::Invalid(format!(
                "lowering: tensor `{}` ({what}) is {:?} on the device; the kernel needs {p:?}",
                t.name, t.precision
            )));
        }
        Ok(())
    }
    pub(super) fn shape(&self, id: TensorId) -> &[usize] {
        &self.graph.tensor(id).shape
    }
    pub(super) fn name(&self, id: TensorId) -> &str {
        &self.graph.tensor(id).name
    }
    /// `[rows, cols]` of a 2-D tensor.
    pub(super) fn dims2(&self, id: TensorId) -> Result<(usize, usize)> {
        match *self.shape(id) {
            [r, c] => Ok((r, c)),
            ref s => Err(Error::Invalid(format!(
                "lowering: tensor `{}` has shape {s:?}; a 2-D matrix was expected",
                self.name(id)
            ))),
        }
    }
}

/// One op being lowered: its list, its index there and its label.
pub(super) struct At<'a> {
    pub(super) cx: &'a Ctx<'a>,
    pub(super) ops: &'a [Op],
    pub(super) i: usize,
    pub(super) label: String,
    /// The norms the prompt list left for the call's cross-attention.
    pub(super) prompt_norms: Option<&'a Norms>,
}

impl At<'_> {
    /// The error of an op given to the lowering of another kind (a dispatch bug).
    pub(super) fn misrouted(&self) -> Error {
        Error::Invalid(format!(
            "lowering: op {} ({}) reached the wrong lowering",
            self.i,
            describe(self.cx, &self.ops[self.i])
        ))
    }
}
