//! [`CudaBackend`]: the lowered graph on a [`Device`], real or emulated.
//!
//! Memory, all allocated in [`CudaBackend::new`] (nothing is allocated while streaming):
//! one allocation laid out by the [`MemoryPlan`] (weights, persistent cross-attention K/V,
//! the graph's inputs and output, the activation arena), one small allocation of stream
//! state outside the model graph (the next buffer, the popped chunk, `dtau` and the step
//! control block), and one pinned host buffer for the popped chunk.
//!
//! **The step graph.** [`Backend::step`] runs the model call, the Euler update with
//! pop/push and noise, and the copy of the next buffer into place. They are captured once
//! into a device graph and replayed every step; what changes between steps (`tau`, `dtau`,
//! whether to pop, the number of the first pushed frame) lives in one device block copied
//! from pinned memory on the compute stream before each replay (`step_block`), so one graph
//! serves prefill and steady state. A prompt switch runs
//! the prompt launches (text context and every layer's cross K/V) eagerly into the same
//! persistent buffers, which the graph reads. [`CudaBackend::set_graphs`] turns replay off,
//! so the same launch list can be checked eagerly against its replay.

use half::f16;

use super::device::{Device, DeviceBuffer, Event, GraphId, PinnedBuffer, Queue};
use super::lower::{self, Lowered, Step};
use super::step_block::StepBlock;
use crate::backend::{
    check_call_inputs, check_len, check_text_inputs, Backend, Clock, StepParams, TimedStep,
};
use crate::checkpoint::{Checkpoint, Weights};
use crate::error::{Error, Result};
use crate::memory::MemoryPlan;
use crate::model::graph::{Graph, Precision};
use crate::tensor::Tensor;

mod upload;
use upload::f16_bits;

/// Where the device's weights come from.
#[derive(Clone, Copy)]
pub enum DeviceWeights<'a> {
    /// Uploaded from host tensors, rounded to f16.
    Host(&'a Weights),
    /// Uploaded tensor by tensor from a memory-mapped checkpoint, f16 as stored, bf16 and
    /// f32 rounded to f16 on the way (one tensor's f16 copy in host memory at a time).
    Checkpoint(&'a Checkpoint),
    /// Generated on the device by `weights_init`: the values of `streamdit weights init
    /// --seed SEED --dtype f16`, bit for bit, with no host copy of the DiT weights.
    Random { seed: u64 },
}

/// Queue state outside the model graph, in one allocation.
struct StateBuffers {
    /// The buffer after the step: `[F, C, H, W]`, copied into the graph's input `x`.
    x_next: DeviceBuffer<f32>,
    /// The popped chunk: `chunk_frames` frames.
    emit: DeviceBuffer<f32>,
    /// `tau`, `dtau` and the euler_step control block, copied per step from pinned memory.
    step: StepBlock,
}

/// The CUDA backend on device `D`.
pub struct CudaBackend<D: Device> {
    dev: D,
    graph: Graph,
    plan: MemoryPlan,
    /// Weights, persistent, io and arena regions, laid out by `plan`.
    mem: DeviceBuffer<u8>,
    state: StateBuffers,
    /// The gated-residual GEMMs' row statistics for the prologue GEMMs (9.0 only).
    row_stats: Option<DeviceBuffer<f32>>,
    /// The popped chunk on the host.
    pinned: PinnedBuffer<f32>,
    /// Frames per popped chunk.
    chunk_frames: usize,
    /// Recorded on `Compute` after a step, waited for by the chunk copy on `Copy`.
    copy_ready: Event,
    prompt: Vec<Step>,
    call: Vec<Step>,
    /// The seed of the noise pushed by pops, set by `reset`.
    seed: Option<u64>,
    /// The captured step graph and the seed baked into it.
    step_graph: Option<(GraphId, u64)>,
    use_graphs: bool,
    text_set: bool,
    /// Events around the call's steps for `forward_timed`, created on its first use.
    timing: Vec<Event>,
    /// A step started by `prefetch`, launched but not committed.
    pending: Option<StepParams>,
}

impl<D: Device> CudaBackend<D> {
    /// Plans the graph's memory on `dev`, uploads the weights (converted to f16) and lowers
    /// the graph to launches; steps pop chunks of `chunk_frames` frames. Fails with an error
    /// naming the op, tensor or allocation.
    pub fn new(
        graph: Graph,
        weights: DeviceWeights,
        chunk_frames: usize,
        mut dev: D,
    ) -> Result<Self> {
        let fusion = lower::fusion(&graph);
        let plan = MemoryPlan::build_fused(&graph, &fusion);
        plan.verify_fused(&graph, &fusion)
            .map_err(|e| Error::Invalid(format!("memory plan: {e}")))?;
        let bytes = usize::try_from(plan.peak_bytes())
            .map_err(|_| Error::Invalid("memory plan exceeds the address space".into()))?;
        let mem = dev.alloc::<u8>("model memory (weights, K/V, io, arena)", bytes)?;
        let m = &graph.config;
        let (f, fe) = (m.latent_frames, m.frame_elems());
        if chunk_frames == 0 || chunk_frames >= f {
            return Err(Error::shape(
                "chunk frames",
                format!(
                    "between 1 and {} (fewer than the buffer's {f} frames)",
                    f - 1
                ),
                chunk_frames,
            ));
        }
        let x_next = dev.alloc::<f32>("next latent buffer", f * fe)?;
        let emit = dev.alloc::<f32>("popped chunk", chunk_frames * fe)?;
        let step = StepBlock::new(&mut dev, f)?;
        let pinned = dev.alloc_pinned::<f32>("popped chunk (host)", chunk_frames * fe)?;
        let copy_ready = dev.create_event()?;

        let mut backend = CudaBackend {
            dev,
            graph,
            plan,
            mem,
            state: StateBuffers { x_next, emit, step },
            row_stats: None,
            pinned,
            chunk_frames,
            copy_ready,
            prompt: Vec::new(),
            call: Vec::new(),
            seed: None,
            step_graph: None,
            use_graphs: true,
            text_set: false,
            pending: None,
            timing: Vec::new(),
        };
        match weights {
            DeviceWeights::Host(w) => backend.upload_weights(w)?,
            DeviceWeights::Checkpoint(c) => backend.upload_checkpoint(c)?,
            DeviceWeights::Random { seed } => backend.init_weights(seed)?,
        }
        let Lowered {
            prompt,
            call,
            prompt_folds,
            call_folds,
        } = lower::lower(&backend.graph, &backend.plan, backend.mem)?;
        // The row statistics the gated-residual GEMMs leave for the next norm's prologue
        // (compute capability 9.0 only; `lower::prologue`).
        let stats_elems = lower::prologue::stats_elems(&backend.graph);
        if backend.dev.compute_capability() == (9, 0) && stats_elems > 0 {
            backend.row_stats = Some(backend.dev.alloc::<f32>(
                "row statistics of the residual stream (prologue GEMMs)",
                stats_elems,
            )?);
        }
        let stats = backend.row_stats.map(|b| lower::prologue::StatsBuffer {
            addr: b.addr(),
            elems: b.len(),
        });
        backend.prompt = lower::resolve_folding(&mut backend.dev, prompt, &prompt_folds, stats)?;
        backend.call = lower::resolve_folding(&mut backend.dev, call, &call_folds, stats)?;
        Ok(backend)
    }

    /// The device this backend runs on.
    #[cfg_attr(not(feature = "internals"), allow(dead_code))] // a hook of the integration tests
    pub fn device(&mut self) -> &mut D {
        &mut self.dev
    }

    /// The memory plan of the graph.
    #[cfg_attr(not(feature = "internals"), allow(dead_code))] // a hook of the integration tests
    pub fn memory_plan(&self) -> &MemoryPlan {
        &self.plan
    }

    /// The call's launches, in order (for `streamdit plan` and tests).
    #[cfg_attr(not(feature = "internals"), allow(dead_code))] // a hook of the integration tests
    pub fn call_steps(&self) -> &[Step] {
        &self.call
    }

    /// With `false`, steps launch their operations one by one instead of replaying the
    /// captured graph (the same list, for checking replay against eager execution).
    pub fn set_graphs(&mut self, on: bool) -> Result<()> {
        self.cancel_pending();
        self.use_graphs = on;
        self.drop_step_graph()
    }

    fn drop_step_graph(&mut self) -> Result<()> {
        if let Some((graph, _)) = self.step_graph.take() {
            self.dev.drop_graph(graph)?;
        }
        Ok(())
    }

    /// A tensor's bytes in the model allocation.
    fn tensor_bytes(&self, id: usize) -> Result<DeviceBuffer<u8>> {
        let p = self.plan.placements[id];
        let start = self.plan.region_base(p.region) + p.offset;
        self.mem.slice(start as usize, p.bytes as usize)
    }

    fn tensor_f32(&self, id: usize) -> Result<DeviceBuffer<f32>> {
        self.tensor_bytes(id)?.cast()
    }

    /// Reads any graph tensor as f32 (f16 tensors converted), for traces and tests. Only
    /// meaningful while the tensor is live: the arena reuses memory.
    #[cfg_attr(not(feature = "internals"), allow(dead_code))] // a hook of the integration tests
    pub fn read_tensor(&mut self, id: usize) -> Result<Vec<f32>> {
        let t = &self.graph.tensors[id];
        let n = t.numel();
        let bytes = self.tensor_bytes(id)?;
        match t.precision {
            Precision::F32 => {
                let mut out = vec![0.0f32; n];
                self.dev.read(bytes.cast::<f32>()?.slice(0, n)?, &mut out)?;
                Ok(out)
            }
            Precision::F16 => {
                let mut raw = vec![0u16; n];
                self.dev.read(bytes.cast::<u16>()?.slice(0, n)?, &mut raw)?;
                Ok(raw.iter().map(|&b| f16::from_bits(b).to_f32()).collect())
            }
        }
    }

    /// One eager model call on `x` at `tau` into `v`, with `body` launching the call list.
    /// The call's input is the latent buffer's device memory, so the buffer is set aside in
    /// the next-buffer scratch (dropping a prefetched step) and put back afterwards, also
    /// when `body` fails.
    fn eager_call(
        &mut self,
        x: &[f32],
        tau: &[f32],
        v: &mut [f32],
        body: impl FnOnce(&mut Self) -> Result<()>,
    ) -> Result<()> {
        self.cancel_pending();
        self.require_text()?;
        let g = &self.graph;
        let (x_buf, tau_buf, v_buf) = (
            self.tensor_f32(g.inputs.x)?,
            self.tensor_f32(g.inputs.tau)?,
            self.tensor_f32(g.output)?,
        );
        check_len("x", x.len(), x_buf.len())?;
        check_len("tau", tau.len(), tau_buf.len())?;
        check_len("v", v.len(), v_buf.len())?;
        check_call_inputs(g, x, tau)?;
        self.dev.copy(x_buf, self.state.x_next)?;
        self.dev.write(x_buf, x)?;
        self.dev.write(tau_buf, tau)?;
        let result = body(self);
        self.dev.copy(self.state.x_next, x_buf)?;
        result?;
        self.dev.read(v_buf, v)
    }

    /// [`Backend::forward`] step by step, calling `tracer` after every step of the call
    /// list with the step and the values of the tensor it wrote.
    #[cfg_attr(not(feature = "internals"), allow(dead_code))] // a hook of the integration tests
    pub fn forward_traced(
        &mut self,
        x: &[f32],
        tau: &[f32],
        v: &mut [f32],
        tracer: &mut dyn FnMut(&Step, &[f32]),
    ) -> Result<()> {
        self.eager_call(x, tau, v, |b| {
            for k in 0..b.call.len() {
                lower::run(&mut b.dev, b.mem, &b.call[k..k + 1])?;
                let values = b.read_tensor(b.call[k].trace().output)?;
                tracer(&b.call[k], &values);
            }
            Ok(())
        })
    }

    fn require_text(&self) -> Result<()> {
        if !self.text_set {
            return Err(Error::Invalid(
                "cuda backend: set_text must be called before a model call".into(),
            ));
        }
        Ok(())
    }

    fn run(&mut self, steps: Steps) -> Result<()> {
        let list = match steps {
            Steps::Prompt => &self.prompt,
            Steps::Call => &self.call,
        };
        lower::run(&mut self.dev, self.mem, list)
    }

    /// The operations of one step after the model call: the Euler update with pop/push
    /// into `x_next` and `emit`. The buffer itself changes only at [`Self::commit`], so a
    /// step started ahead of time can be dropped.
    fn update(&mut self, seed: u64) -> Result<()> {
        let g = &self.graph;
        let m = &g.config;
        let x = self.tensor_f32(g.inputs.x)?;
        let v = self.tensor_f32(g.output)?;
        lower::euler_step(
            &mut self.dev,
            x,
            v,
            &self.state.step.dtau()?,
            &self.state.step.control()?,
            &self.state.x_next,
            &self.state.emit,
            seed,
            m.latent_frames,
            m.frame_elems(),
        )
    }

    /// Makes the last launched step's buffer the current one.
    fn commit(&mut self) -> Result<()> {
        let x = self.tensor_f32(self.graph.inputs.x)?;
        self.dev.copy(self.state.x_next, x)
    }

    /// Drops a step started by `prefetch` and not yet taken: nothing of it was committed.
    fn cancel_pending(&mut self) {
        self.pending = None;
    }

    /// Queues one step (graph replay or eager launches) and, when it pops, the copy of the
    /// chunk to pinned memory on the copy stream; returns the frames it pops.
    fn launch_step(&mut self, step: &StepParams) -> Result<usize> {
        self.require_text()?;
        let Some(seed) = self.seed else {
            return Err(Error::Invalid(
                "cuda backend: reset must fill the buffer before the first step".into(),
            ));
        };
        let f = self.graph.config.latent_frames;
        check_len("step tau", step.tau.len(), f)?;
        check_len("step dtau", step.dtau.len(), f)?;
        let (shift, first) = match step.pop {
            Some(first) => (self.chunk_frames, first),
            None => (0, 0),
        };
        let tau = self.tensor_f32(self.graph.inputs.tau)?;
        let (dev, block) = (&mut self.dev, &mut self.state.step);
        block.write(dev, tau, &step.tau, &step.dtau, first, shift as u32)?;
        if self.use_graphs {
            let graph = self.step_graph(seed)?;
            self.dev.replay(graph)?;
        } else {
            self.run(Steps::Call)?;
            self.update(seed)?;
        }
        if shift > 0 {
            // The chunk goes to pinned memory on the copy stream, after the step's work.
            self.dev.record(self.copy_ready, Queue::Compute)?;
            self.dev.wait(Queue::Copy, self.copy_ready)?;
            self.dev
                .read_async(Queue::Copy, self.state.emit, self.pinned)?;
        }
        Ok(shift)
    }

    /// Commits a launched step and hands out its chunk (waiting for the copy).
    fn finish_step(&mut self, shift: usize, popped: &mut [f32]) -> Result<()> {
        self.commit()?;
        if shift > 0 {
            popped.copy_from_slice(self.dev.pinned(self.pinned)?);
        }
        Ok(())
    }

    fn step_graph(&mut self, seed: u64) -> Result<GraphId> {
        if let Some((graph, baked)) = self.step_graph {
            if baked == seed {
                return Ok(graph);
            }
            self.drop_step_graph()?;
        }
        self.dev.begin_capture()?;
        let captured = self.run(Steps::Call).and_then(|_| self.update(seed));
        // End the capture even when recording failed, so the device is usable again.
        let graph = self.dev.end_capture();
        captured?;
        let graph = graph?;
        self.dev.upload(graph)?;
        self.step_graph = Some((graph, seed));
        Ok(graph)
    }
}

#[derive(Clone, Copy)]
enum Steps {
    Prompt,
    Call,
}

impl<D: Device> Backend for CudaBackend<D> {
    fn name(&self) -> &'static str {
        self.dev.backend()
    }

    fn graph(&self) -> &Graph {
        &self.graph
    }

    fn set_text(&mut self, text: &Tensor, mask: &[f32]) -> Result<()> {
        self.cancel_pending();
        let g = &self.graph;
        check_text_inputs(g, text, mask)?;
        debug_assert_eq!(g.tensors[g.inputs.text].precision, Precision::F16);
        let text_buf = self.tensor_bytes(g.inputs.text)?.cast::<u16>()?;
        let mask_buf = self.tensor_f32(g.inputs.text_mask)?;
        self.dev.write(text_buf, &f16_bits(&text.data))?;
        self.dev.write(mask_buf, mask)?;
        self.run(Steps::Prompt)?;
        self.text_set = true;
        Ok(())
    }

    fn forward(&mut self, x: &[f32], tau: &[f32], v: &mut [f32]) -> Result<()> {
        self.eager_call(x, tau, v, |b| b.run(Steps::Call))
    }

    fn reset(&mut self, seed: u64, first_frame: u64) -> Result<()> {
        self.cancel_pending();
        let m = &self.graph.config;
        let (f, fe) = (m.latent_frames, m.frame_elems());
        let x = self.tensor_f32(self.graph.inputs.x)?;
        lower::noise_fill(&mut self.dev, x, seed, first_frame, f, fe)?;
        self.seed = Some(seed);
        Ok(())
    }

    fn step(&mut self, step: &StepParams, popped: &mut [f32]) -> Result<()> {
        let fe = self.graph.config.frame_elems();
        if step.pop.is_some() && popped.len() != self.chunk_frames * fe {
            self.cancel_pending();
            return Err(Error::shape(
                "popped chunk",
                format!(
                    "{} frames of {fe} values = {}",
                    self.chunk_frames,
                    self.chunk_frames * fe
                ),
                format!("{} values", popped.len()),
            ));
        }
        // A step started by `prefetch` with these very parameters is already on its way.
        let shift = match self.pending.take() {
            Some(pending) if pending == *step => step.pop.map_or(0, |_| self.chunk_frames),
            _ => self.launch_step(step)?,
        };
        self.finish_step(shift, popped)
    }

    /// Starts `next` now (the device works on it while the caller decodes the chunk it was
    /// just given); the following `step` with the same parameters takes it. A prompt
    /// switch, reset or eager call in between drops it: nothing of it is committed.
    fn prefetch(&mut self, next: &StepParams) -> Result<()> {
        self.cancel_pending();
        self.launch_step(next)?;
        self.pending = Some(next.clone());
        Ok(())
    }

    fn read_buffer(&mut self, out: &mut [f32]) -> Result<()> {
        let x = self.tensor_f32(self.graph.inputs.x)?;
        check_len("buffer", out.len(), x.len())?;
        self.dev.synchronize()?;
        self.dev.read(x, out)
    }

    fn write_frames(&mut self, first: usize, frames: &[f32]) -> Result<()> {
        self.cancel_pending();
        let m = &self.graph.config;
        let fe = m.frame_elems();
        crate::backend::check_frames_write(first, frames, fe, m.latent_frames)?;
        let x = self.tensor_f32(self.graph.inputs.x)?;
        // The committed buffer is written by a copy queued on the compute stream: wait for
        // it before overwriting part of it.
        self.dev.synchronize()?;
        self.dev.write(x.slice(first * fe, frames.len())?, frames)
    }

    /// The call's launch list run eagerly with an event recorded on the compute stream
    /// before the first step and after every step, so each step's time is the device's
    /// time between its neighbours' events (on the emulator: the host's time emulating it).
    fn forward_timed(
        &mut self,
        x: &[f32],
        tau: &[f32],
        v: &mut [f32],
        on_step: &mut dyn FnMut(&TimedStep),
    ) -> Result<Clock> {
        while self.timing.len() < self.call.len() + 1 {
            let event = self.dev.create_event()?;
            self.timing.push(event);
        }
        self.eager_call(x, tau, v, |b| {
            b.dev.record(b.timing[0], Queue::Compute)?;
            for k in 0..b.call.len() {
                lower::run(&mut b.dev, b.mem, &b.call[k..k + 1])?;
                b.dev.record(b.timing[k + 1], Queue::Compute)?;
            }
            b.dev.synchronize()
        })?;
        // Steps completing the same op share its range of ops.
        let mut first_op = 0;
        let mut k = 0;
        while k < self.call.len() {
            let last = self.call[k].trace().op;
            let parts = self.call[k..]
                .iter()
                .take_while(|s| s.trace().op == last)
                .count();
            for part in 0..parts {
                let ms = self
                    .dev
                    .elapsed_ms(self.timing[k + part], self.timing[k + part + 1])?;
                on_step(&TimedStep {
                    label: self.call[k + part].label(),
                    ops: first_op..last + 1,
                    part,
                    parts,
                    seconds: ms as f64 / 1e3,
                });
            }
            first_op = last + 1;
            k += parts;
        }
        Ok(if self.dev.backend() == "emu" {
            Clock::Emulator
        } else {
            Clock::DeviceEvents
        })
    }

    fn synchronize(&mut self) -> Result<()> {
        self.dev.synchronize()
    }

    fn graphs(&self) -> Option<bool> {
        Some(self.use_graphs)
    }

    fn set_graphs(&mut self, on: bool) -> Result<()> {
        CudaBackend::set_graphs(self, on)
    }
}
