//! The CPU backend: interprets the model graph in f32, multi-threaded. It is the reference
//! every other backend is checked against, and a real fallback without a GPU.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{
    check_call_inputs, check_len, check_text_inputs, Backend, Clock, StepParams, TimedStep,
};
use crate::checkpoint::Weights;
use crate::cost::op_kind;
use crate::error::{fmt_shape, Error, Result};
use crate::math::{self as ops};
use crate::model::graph::{Graph, Kind, Op, TensorDesc, TensorId};
use crate::rng;
use crate::tensor::{describe_non_finite, first_non_finite, Tensor};

mod causal;
mod wan_ops;

pub use causal::CpuCausal;
use causal::CacheRun;

/// Executes a [`Graph`] on the host. Owns its latent buffer and the per-prompt state; shares
/// the weights with other streams of the same engine.
pub struct CpuBackend {
    graph: Graph,
    weights: Arc<Weights>,
    /// For each tensor id of kind `Weight`, its checkpoint tensor (validated at creation).
    weight_index: Vec<Option<String>>,
    /// Values of `Persistent` tensors, written by `set_text`.
    persistent: Vec<Option<Vec<f32>>>,
    text_set: bool,
    /// The moving buffer `[F, C, H, W]` and the seed its noise comes from.
    buffer: Vec<f32>,
    seed: u64,
    /// Scratch for `v` in `step`.
    v: Vec<f32>,
    /// Activations to drop after each op of the prompt and call op lists.
    prompt_frees: Vec<Vec<TensorId>>,
    call_frees: Vec<Vec<TensorId>>,
    /// Check every op's output for NaN and infinity ([`Backend::set_check_ops`]).
    check_ops: bool,
}

/// What the executor reports after each op when traced.
pub struct OpTrace<'a> {
    /// Position of the op in its op list.
    pub index: usize,
    pub op: &'a Op,
    /// The tensor the op wrote, and its values.
    pub output: &'a TensorDesc,
    #[cfg_attr(not(feature = "internals"), allow(dead_code))] // a hook of the integration tests
    pub values: &'a [f32],
    /// Wall-clock time of the op.
    pub elapsed: Duration,
}

/// A callback receiving every op's [`OpTrace`].
pub type Tracer<'t> = &'t mut dyn FnMut(&OpTrace);

#[derive(Clone, Copy)]
enum OpList {
    Prompt,
    Call,
}

/// Values of the tensors live during one op list.
struct Env {
    values: Vec<Option<Vec<f32>>>,
}

impl CpuBackend {
    /// A backend for `graph` over `weights`, checking that every weight the graph reads is
    /// present with the shape the graph expects.
    pub fn new(graph: Graph, weights: Arc<Weights>) -> Result<CpuBackend> {
        let mut weight_index = vec![None; graph.tensors.len()];
        for (id, t) in graph.tensors.iter().enumerate() {
            if t.kind == Kind::Weight {
                let w = weights.get(&t.name)?;
                if w.shape != t.shape {
                    return Err(Error::shape(
                        format!("weight `{}`", t.name),
                        fmt_shape(&t.shape),
                        fmt_shape(&w.shape),
                    ));
                }
                weight_index[id] = Some(t.name.clone());
            }
        }
        let n = graph.config.buffer_elems();
        Ok(CpuBackend {
            prompt_frees: frees(&graph, &graph.prompt_ops),
            call_frees: frees(&graph, &graph.call_ops),
            check_ops: false,
            persistent: vec![None; graph.tensors.len()],
            weight_index,
            weights,
            text_set: false,
            buffer: vec![0.0; n],
            seed: 0,
            v: vec![0.0; n],
            graph,
        })
    }

    fn value<'a>(&'a self, env: &'a Env, id: TensorId) -> Result<&'a [f32]> {
        if let Some(name) = &self.weight_index[id] {
            return Ok(&self.weights.get(name)?.data);
        }
        env.values[id]
            .as_deref()
            .or(self.persistent[id].as_deref())
            .ok_or_else(|| {
                self.internal(format!(
                    "tensor `{}` read before it was written",
                    self.graph.tensors[id].name
                ))
            })
    }

    fn internal(&self, msg: String) -> Error {
        Error::Backend {
            backend: "cpu".into(),
            op: "execute".into(),
            msg,
        }
    }

    /// Takes a tensor out of the environment to update it in place.
    fn take(&self, env: &mut Env, id: TensorId) -> Result<Vec<f32>> {
        env.values[id].take().ok_or_else(|| {
            self.internal(format!(
                "tensor `{}` updated before it was written",
                self.graph.tensors[id].name
            ))
        })
    }

    /// Runs the prompt or the call op list, allocating each output when it is first written
    /// and dropping each activation after its last use. A call list with cache ops (the Wan
    /// family's) needs `kv`, which also says where the run ends (a committing pass stops
    /// after the last cache write).
    fn run(
        &self,
        list: OpList,
        env: &mut Env,
        mut tracer: Option<Tracer>,
        mut kv: Option<&mut CacheRun>,
    ) -> Result<()> {
        let (ops, frees) = match list {
            OpList::Prompt => (&self.graph.prompt_ops, &self.prompt_frees),
            OpList::Call => (&self.graph.call_ops, &self.call_frees),
        };
        let end = kv.as_ref().map_or(ops.len(), |k| k.end.min(ops.len()));
        for (i, op) in ops[..end].iter().enumerate() {
            let out = op.output();
            let _range = crate::nvtx::Range::push(format_args!(
                "{} `{}`",
                op_kind(op),
                self.graph.tensors[out].name
            ));
            let started = Instant::now();
            let o = if op.uses_cache() {
                let kv = kv.as_deref_mut().ok_or_else(|| {
                    self.internal(format!("{} needs a KV cache", op_kind(op)))
                })?;
                self.exec_cache(op, env, kv)?
            } else {
                let mut o = if op.in_place() {
                    self.take(env, out)?
                } else {
                    vec![0.0f32; self.graph.tensors[out].numel()]
                };
                self.exec(op, env, &mut o)?;
                Some(o)
            };
            let elapsed = started.elapsed();
            if let (true, Some(values)) = (self.check_ops, o.as_deref()) {
                self.check_op_output(i, op, values)?;
            }
            if let Some(trace) = tracer.as_mut() {
                trace(&OpTrace {
                    index: i,
                    op,
                    output: &self.graph.tensors[out],
                    values: o.as_deref().unwrap_or(&[]),
                    elapsed,
                });
            }
            if let Some(o) = o {
                env.values[out] = Some(o);
            }
            for &id in &frees[i] {
                env.values[id] = None;
            }
        }
        Ok(())
    }

    /// An error naming op `index` when its output `values` hold NaN or infinity.
    fn check_op_output(&self, index: usize, op: &Op, values: &[f32]) -> Result<()> {
        let out = &self.graph.tensors[op.output()];
        match first_non_finite(values) {
            None => Ok(()),
            Some((i, x)) => Err(Error::Backend {
                backend: "cpu".into(),
                op: format!("op {index} ({} `{}`)", op_kind(op), out.name),
                msg: format!(
                    "first op whose output is not finite: {}",
                    describe_non_finite(x, i, &out.shape)
                ),
            }),
        }
    }

    /// [`Backend::forward`], calling `tracer` after every op with its output and time.
    pub fn forward_traced(
        &mut self,
        x: &[f32],
        tau: &[f32],
        v: &mut [f32],
        tracer: Option<Tracer>,
    ) -> Result<()> {
        let m = &self.graph.config;
        check_len("x", x.len(), m.buffer_elems())?;
        check_len("tau", tau.len(), m.latent_frames)?;
        check_call_inputs(&self.graph, x, tau)?;
        self.call(x, tau, v, tracer)
    }

    /// A model call on inputs already checked (or produced by this backend).
    fn call(&mut self, x: &[f32], tau: &[f32], v: &mut [f32], tracer: Option<Tracer>) -> Result<()> {
        let g = &self.graph;
        let m = &g.config;
        check_len("v", v.len(), m.buffer_elems())?;
        if !self.text_set {
            return Err(Error::Invalid(
                "forward: no text context set (call set_text first)".into(),
            ));
        }
        let mut env = self.env();
        env.values[g.inputs.x] = Some(x.to_vec());
        env.values[g.inputs.tau] = Some(tau.to_vec());
        self.run(OpList::Call, &mut env, tracer, None)?;
        let out = env.values[g.output]
            .as_ref()
            .ok_or_else(|| self.internal("the graph did not write its output".into()))?;
        v.copy_from_slice(out);
        Ok(())
    }

    /// Computes `op` into `o`, its output (holding the old values for in-place ops).
    fn exec(&self, op: &Op, env: &Env, o: &mut [f32]) -> Result<()> {
        let m = &self.graph.config;
        let (frames, tpf) = (m.latent_frames, m.tokens_per_frame());
        let (f, c, h, w) = (
            m.latent_frames,
            m.latent_channels,
            m.latent_height,
            m.latent_width,
        );
        let shape = |id: TensorId| &self.graph.tensors[id].shape;
        let val = |id: TensorId| self.value(env, id);
        match *op {
            Op::Patchify { x, .. } => ops::patchify(val(x)?, f, c, h, w, o),
            Op::Linear { x, w: wt, b, .. } => {
                let bias = b.map(val).transpose()?;
                let (t, k, n) = (shape(x)[0], shape(x)[1], shape(wt)[0]);
                ops::linear(val(x)?, val(wt)?, bias, t, k, n, o)
            }
            Op::AddPositions {
                pos_t,
                pos_h,
                pos_w,
                ..
            } => ops::add_positions(
                o,
                m.token_grid(),
                m.dim,
                val(pos_t)?,
                val(pos_h)?,
                val(pos_w)?,
            ),
            Op::Repeat { x, .. } => {
                let xv = val(x)?;
                for copy in o.chunks_mut(xv.len()) {
                    copy.copy_from_slice(xv);
                }
            }
            Op::TimestepEmbed { tau, .. } => ops::timestep_embedding(val(tau)?, o),
            Op::Silu { x, .. } => ops::silu(val(x)?, o),
            Op::GeluTanh { x, .. } => ops::gelu_tanh(val(x)?, o),
            Op::Modulation { src, table, .. } => {
                // A table is `[k, D]` (StreamDiT) or `[1, k, D]` (Wan): its last two dims.
                let ts = shape(table);
                let (k, d) = (ts[ts.len() - 2], ts[ts.len() - 1]);
                ops::modulation(val(src)?, shape(src)[1] / d, val(table)?, k, d, frames, o)
            }
            Op::LayerNorm { x, .. } => ops::layer_norm(val(x)?, shape(x)[1], o),
            Op::AdaLn {
                x,
                mods,
                shift,
                scale,
                ..
            } => {
                let k = shape(mods)[1];
                ops::ada_ln(
                    val(x)?,
                    shape(x)[1],
                    val(mods)?,
                    k,
                    shift,
                    scale,
                    frames,
                    tpf,
                    o,
                )
            }
            Op::HeadRmsNorm {
                x,
                offset,
                heads,
                gain,
            } => ops::head_rms_norm(o, shape(x)[1], offset, heads, shape(gain)[0], val(gain)?),
            Op::WindowAttention {
                qkv,
                heads,
                window,
                shift,
                ..
            } => {
                let (b, grid) = (self.graph.batch, m.token_grid());
                ops::window_attention(val(qkv)?, b, grid, window, shift, heads, m.dim, o)
            }
            Op::CrossAttention {
                q, kv, mask, heads, ..
            } => {
                let (b, n, lt) = (self.graph.batch, m.tokens(), m.text_len);
                ops::cross_attention(val(q)?, val(kv)?, val(mask)?, b, n, lt, heads, m.dim, o)
            }
            Op::GatedResidual { y, mods, gate, .. } => {
                let k = shape(mods)[1];
                ops::gated_residual(o, val(y)?, m.dim, val(mods)?, k, gate, frames, tpf)
            }
            Op::Residual { y, .. } => ops::residual(o, val(y)?),
            Op::SwiGlu { x, out } => ops::swiglu(val(x)?, shape(out)[1], o),
            Op::Unpatchify { x, out } => {
                let batch = self.graph.tensors[out].numel() / m.buffer_elems();
                ops::unpatchify(val(x)?, batch, f, c, h, w, o)
            }
            Op::Guidance { v, scale, .. } => ops::guidance(val(v)?, scale, o),
            Op::Sinusoid { .. }
            | Op::MaskRows { .. }
            | Op::AffineLayerNorm { .. }
            | Op::Rope3d { .. }
            | Op::TextAttention { .. }
            | Op::UnpatchifyPacked { .. }
            | Op::CacheAttention { .. }
            | Op::CacheWrite { .. } => self.exec_wan(op, env, o)?,
        }
        Ok(())
    }

    fn env(&self) -> Env {
        Env {
            values: vec![None; self.graph.tensors.len()],
        }
    }
}

/// For each op, the activations whose last use it is.
fn frees(graph: &Graph, ops: &[Op]) -> Vec<Vec<TensorId>> {
    let mut last = vec![None; graph.tensors.len()];
    for (i, op) in ops.iter().enumerate() {
        for id in op.tensors() {
            last[id] = Some(i);
        }
    }
    let mut frees = vec![Vec::new(); ops.len()];
    for (id, l) in last.into_iter().enumerate() {
        if let (Some(i), Kind::Activation) = (l, graph.tensors[id].kind) {
            frees[i].push(id);
        }
    }
    frees
}

impl Backend for CpuBackend {
    fn name(&self) -> &'static str {
        "cpu"
    }

    fn graph(&self) -> &Graph {
        &self.graph
    }

    fn set_text(&mut self, text: &Tensor, mask: &[f32]) -> Result<()> {
        let g = &self.graph;
        check_text_inputs(g, text, mask)?;
        let mut env = self.env();
        env.values[g.inputs.text] = Some(text.data.clone());
        env.values[g.inputs.text_mask] = Some(mask.to_vec());
        self.run(OpList::Prompt, &mut env, None, None)?;
        for (id, t) in g.tensors.iter().enumerate() {
            match t.kind {
                Kind::Persistent => self.persistent[id] = env.values[id].take(),
                Kind::Input if id == g.inputs.text_mask => {
                    self.persistent[id] = env.values[id].take()
                }
                _ => {}
            }
        }
        self.text_set = true;
        Ok(())
    }

    fn forward(&mut self, x: &[f32], tau: &[f32], v: &mut [f32]) -> Result<()> {
        self.forward_traced(x, tau, v, None)
    }

    fn reset(&mut self, seed: u64, first_frame: u64) -> Result<()> {
        self.seed = seed;
        let fe = self.graph.config.frame_elems();
        for (k, frame) in self.buffer.chunks_mut(fe).enumerate() {
            rng::noise_frame(seed, first_frame + k as u64, frame);
        }
        Ok(())
    }

    fn step(&mut self, step: &StepParams, popped: &mut [f32]) -> Result<()> {
        let m = self.graph.config.clone();
        let (f, fe) = (m.latent_frames, m.frame_elems());
        check_len("step tau", step.tau.len(), f)?;
        check_len("step dtau", step.dtau.len(), f)?;
        let mut v = std::mem::take(&mut self.v);
        let buffer = std::mem::take(&mut self.buffer);
        let result = self.call(&buffer, &step.tau, &mut v, None);
        self.buffer = buffer;
        self.v = v;
        result?;
        for ((x, v), &dt) in self
            .buffer
            .chunks_mut(fe)
            .zip(self.v.chunks(fe))
            .zip(&step.dtau)
        {
            for (x, v) in x.iter_mut().zip(v) {
                *x += dt * v;
            }
        }
        if let Some(next_frame) = step.pop {
            let chunk = popped.len();
            if chunk == 0 || chunk % fe != 0 || chunk >= self.buffer.len() {
                return Err(Error::shape(
                    "popped chunk",
                    format!("a whole number of frames of {fe} values, fewer than the buffer's {f}"),
                    format!("{} values", popped.len()),
                ));
            }
            popped.copy_from_slice(&self.buffer[..chunk]);
            self.buffer.copy_within(chunk.., 0);
            let start = self.buffer.len() - chunk;
            for (k, frame) in self.buffer[start..].chunks_mut(fe).enumerate() {
                rng::noise_frame(self.seed, next_frame + k as u64, frame);
            }
        }
        Ok(())
    }

    fn set_check_ops(&mut self, on: bool) -> Result<()> {
        self.check_ops = on;
        Ok(())
    }

    fn read_buffer(&mut self, out: &mut [f32]) -> Result<()> {
        check_len("buffer", out.len(), self.buffer.len())?;
        out.copy_from_slice(&self.buffer);
        Ok(())
    }

    fn write_frames(&mut self, first: usize, frames: &[f32]) -> Result<()> {
        let m = &self.graph.config;
        let fe = m.frame_elems();
        super::check_frames_write(first, frames, fe, m.latent_frames)?;
        self.buffer[first * fe..first * fe + frames.len()].copy_from_slice(frames);
        Ok(())
    }

    /// Every op of the call, timed by the wall clock around its computation and the
    /// allocation of its output (not the freeing of dead activations).
    fn forward_timed(
        &mut self,
        x: &[f32],
        tau: &[f32],
        v: &mut [f32],
        on_step: &mut dyn FnMut(&TimedStep),
    ) -> Result<Clock> {
        let mut tracer = |t: &OpTrace| {
            let label = format!("{} `{}`", op_kind(t.op), t.output.name);
            on_step(&TimedStep {
                label: &label,
                ops: t.index..t.index + 1,
                part: 0,
                parts: 1,
                seconds: t.elapsed.as_secs_f64(),
            })
        };
        self.forward_traced(x, tau, v, Some(&mut tracer))?;
        Ok(Clock::HostWall)
    }
}
