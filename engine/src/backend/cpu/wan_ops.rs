//! The CPU semantics of the stateless ops the Wan family added (docs/wan.md section 2); the
//! cache ops are `causal.rs`'s.

use super::{CpuBackend, Env};
use crate::cost::op_kind;
use crate::error::Result;
use crate::math as ops;
use crate::model::graph::{Op, TensorId};

impl CpuBackend {
    /// Computes the Wan op `op` into `o` (holding the old values for `Rope3d`).
    pub(super) fn exec_wan(&self, op: &Op, env: &Env, o: &mut [f32]) -> Result<()> {
        let m = &self.graph.config;
        let shape = |id: TensorId| &self.graph.tensors[id].shape;
        let val = |id: TensorId| self.value(env, id);
        match *op {
            Op::Sinusoid { t, out } => ops::sinusoid(val(t)?, shape(out)[1], o),
            Op::MaskRows { x, mask, .. } => ops::mask_rows(val(x)?, shape(x)[1], val(mask)?, o),
            Op::AffineLayerNorm { x, weight, bias, .. } => {
                ops::layer_norm_affine(val(x)?, shape(x)[1], val(weight)?, val(bias)?, o)
            }
            Op::Rope3d {
                pos,
                heads,
                pairs,
                grid,
                ..
            } => ops::rope_3d(o, val(pos)?, grid, heads, pairs),
            Op::TextAttention { q, k, v, heads, .. } => {
                ops::segment_attention(val(q)?, &[(val(k)?, val(v)?)], heads, m.dim, o)
            }
            Op::UnpatchifyPacked { x, .. } => ops::unpatchify_packed(
                val(x)?,
                m.latent_frames,
                m.latent_channels,
                m.latent_height,
                m.latent_width,
                o,
            ),
            _ => {
                return Err(self.internal(format!(
                    "{} reached the stateless Wan ops",
                    op_kind(op)
                )))
            }
        }
        Ok(())
    }
}
