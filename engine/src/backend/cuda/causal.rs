//! [`CudaCausal`]: the Wan family's [`CausalBackend`] on a [`Device`] (the emulator or a
//! GPU), over the launch lists of [`lower::wan`](super::lower::wan).
//!
//! Memory, allocated when the backend is built (and once per LongLive re-cache length on
//! first use): the model allocation (f16 weights, the text context and every block's text
//! K/V, the KV cache of `window` frame slots per block, the fixed RoPE tables) and one
//! allocation per call shape (inputs, per-call tables, activations, output).
//!
//! **The cache.** The host keeps the list of held frames `(absolute frame, slot)`, sink
//! first. A call's own frames go to the lowest free slots; the attended slot table is the
//! held frames in order, then the call's own stored frames. Eviction and clearing change
//! only that list (no key or value moves: each key keeps the rotation of its own frame). A
//! denoising call writes its (noisy) keys and values into the free slots the chunk will
//! take, which no held frame uses, so the cache it leaves is unchanged; the committing
//! pass writes the clean ones into the same slots and the host marks them held.
//!
//! **Graphs.** With graphs on (the default), each chunk call shape is captured once per
//! attended frame count (denoise and commit separately) and replayed; what changes between
//! calls (latents, timesteps, the RoPE frame table, the slot tables) is written into the
//! call allocation before the replay. LongLive's re-cache (rare) runs its list eagerly.
//!
//! **Prefetch.** `prefetch` launches a denoising call without waiting (while the chunk just
//! emitted is decoded); the next `denoise` with bit-identical inputs over the same held
//! frames only reads its output. Any other call drops it: it wrote only the call allocation
//! and free slots, so there is nothing to undo (later work queues after it).

use std::collections::HashMap;

use half::f16;
use streamdit_kernels::wan_qk;

use super::device::{Device, DeviceBuffer, Event, GraphId, Queue};
use super::lower::wan::{self as lw, CallLayout, CallSteps, ModelLayout, Source};
use super::lower::{self, Step};
use crate::backend::{check_len, CausalBackend, Clock, TimedStep};
use crate::checkpoint::Weights;
use crate::error::{Error, Result};
use crate::model::graph::Kind;
use crate::model::wan::{WanConfig, WanGraph};
use crate::tensor::Tensor;

/// Positions travel as f32 RoPE angles computed in f64; as on the CPU, frames past 2^24
/// are refused.
const MAX_POSITION: u64 = 1 << 24;

/// A call shape's allocation and its lowered lists by attended frame count.
struct CallState {
    layout: CallLayout,
    mem: DeviceBuffer<u8>,
    lists: HashMap<usize, Lists>,
}

/// One lowered list with its captured graphs (denoise: the whole list; commit: its prefix).
struct Lists {
    steps: CallSteps,
    denoise: Option<GraphId>,
    commit: Option<GraphId>,
}

/// The Wan family on device `D`.
pub struct CudaCausal<D: Device> {
    dev: D,
    config: WanConfig,
    graph: WanGraph,
    layout: ModelLayout,
    model: DeviceBuffer<u8>,
    prompt: Vec<Step>,
    chunk: CallState,
    recache: HashMap<(usize, usize), CallState>,
    /// The held frames `(absolute frame, slot)`, oldest (the sink) first.
    held: Vec<(u64, usize)>,
    use_graphs: bool,
    text_set: bool,
    timing: Vec<Event>,
    /// A denoising call launched by `prefetch` and not yet taken.
    pending: Option<Prefetched>,
    /// Denoising calls that took a prefetched call.
    prefetched: u64,
}

/// A denoising call's latents and timesteps (as bits), `f0` and the held frames it attends.
type Prefetched = (Vec<u32>, Vec<u32>, u64, Vec<(u64, usize)>);

fn prefetched(x: &[f32], t: &[f32], f0: u64, held: &[(u64, usize)]) -> Prefetched {
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect();
    (bits(x), bits(t), f0, held.to_vec())
}

fn f16_bits(data: &[f32]) -> Vec<u16> {
    data.iter().map(|&v| f16::from_f32(v).to_bits()).collect()
}

/// Which pass of a call runs.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Pass {
    Denoise,
    Commit,
}

impl<D: Device> CudaCausal<D> {
    /// Uploads `weights` (original Wan names, rounded to f16; the fused projections stacked,
    /// `head.head`'s rows reordered) and lowers the prompt list; fails naming a missing or
    /// misshapen weight, an allocation, or a launch that does not fit the device.
    pub fn new(config: &WanConfig, weights: &Weights, mut dev: D) -> Result<Self> {
        let graph = WanGraph::build(config, config.chunk_frames, 0);
        let layout = ModelLayout::new(config);
        let model = dev.alloc::<u8>("wan model memory (weights, text K/V, KV cache)", layout.bytes)?;
        let chunk = Self::call_state(&mut dev, config, config.chunk_frames)?;
        let mut b = CudaCausal {
            dev,
            config: config.clone(),
            graph,
            layout,
            model,
            prompt: Vec::new(),
            chunk,
            recache: HashMap::new(),
            held: Vec::new(),
            use_graphs: true,
            text_set: false,
            timing: Vec::new(),
            pending: None,
            prefetched: 0,
        };
        b.upload(weights)?;
        let prompt = lw::lower_prompt(
            &b.config,
            &b.layout,
            b.model.addr(),
            &b.chunk.layout,
            b.chunk.mem.addr(),
        )?;
        b.prompt = lower::resolve(&mut b.dev, prompt)?;
        // Lower the first call now, so a launch that does not fit the device fails here.
        let full = b.config.window.min(b.config.chunk_frames);
        b.lists(None, full)?;
        Ok(b)
    }

    fn call_state(dev: &mut D, w: &WanConfig, frames: usize) -> Result<CallState> {
        let layout = CallLayout::new(w, frames);
        let mem = dev.alloc::<u8>(
            &format!("wan call memory ({frames} frames: inputs, activations)"),
            layout.bytes,
        )?;
        Ok(CallState {
            layout,
            mem,
            lists: HashMap::new(),
        })
    }

    /// Turns graph capture and replay on (the default) or off (every call runs its launches
    /// eagerly), so the two can be compared.
    pub fn set_graphs(&mut self, on: bool) {
        self.use_graphs = on;
    }

    /// The device (for tests: thread order, counters).
    #[cfg_attr(not(feature = "internals"), allow(dead_code))] // a hook of the integration tests
    pub fn device_mut(&mut self) -> &mut D {
        &mut self.dev
    }

    /// The lowered prompt list.
    #[cfg_attr(not(feature = "internals"), allow(dead_code))] // a hook of the integration tests
    pub fn prompt_steps(&self) -> &[Step] {
        &self.prompt
    }

    /// The lowered list of a chunk call attending to `attended` frames, and where its
    /// committing prefix ends (lowered now if new).
    #[cfg_attr(not(feature = "internals"), allow(dead_code))] // a hook of the integration tests
    pub fn call_steps(&mut self, attended: usize) -> Result<(&[Step], usize)> {
        let l = self.lists(None, attended)?;
        Ok((&l.steps.steps, l.steps.commit_len))
    }

    /// The held frames' cache slots, oldest first.
    #[cfg_attr(not(feature = "internals"), allow(dead_code))] // a hook of the integration tests
    pub fn cache_slots(&self) -> Vec<usize> {
        self.held.iter().map(|&(_, s)| s).collect()
    }

    fn upload(&mut self, weights: &Weights) -> Result<()> {
        // Every weight the graph reads, with the graph's shape.
        let shapes: HashMap<&str, &[usize]> = self
            .graph
            .graph
            .tensors
            .iter()
            .filter(|t| t.kind == Kind::Weight)
            .map(|t| (t.name.as_str(), t.shape.as_slice()))
            .collect();
        let get = |name: &str| -> Result<&Tensor> {
            let t = weights.get(name)?;
            let shape = shapes.get(name).ok_or_else(|| {
                Error::Invalid(format!("wan device weights: `{name}` is not a weight of the graph"))
            })?;
            t.expect_shape(name, shape)?;
            Ok(t)
        };
        for u in &self.layout.uploads {
            let data: Vec<f32> = match &u.source {
                Source::Concat(names) => {
                    let mut v = Vec::with_capacity(u.elems);
                    for n in names {
                        v.extend_from_slice(&get(n)?.data);
                    }
                    v
                }
                Source::HeadRows { name, c, cols } => lw::permute_head_rows(&get(name)?.data, *c, *cols)?,
            };
            if data.len() != u.elems {
                return Err(Error::shape(
                    format!("wan device weights at byte {}", u.offset),
                    u.elems,
                    data.len(),
                ));
            }
            let dst = self.model.slice(u.offset, 2 * u.elems)?.cast::<u16>()?;
            self.dev.write(dst, &f16_bits(&data))?;
        }
        let w = &self.config;
        let [hp, wp] = w.frame_grid();
        let [_, nh, nw] = w.rope_split();
        let rope_h = wan_qk::rope_axis_table(0..hp as i64, nh);
        let rope_w = wan_qk::rope_axis_table(0..wp as i64, nw);
        let ones = vec![1.0f32; w.text_len];
        for (off, data) in [
            (self.layout.rope_h, rope_h),
            (self.layout.rope_w, rope_w),
            (self.layout.ones, ones),
        ] {
            let dst = self.model.slice(off, 4 * data.len())?.cast::<f32>()?;
            self.dev.write(dst, &data)?;
        }
        Ok(())
    }

    /// The lists of the chunk call (`key` None) or of a re-cache shape for `attended`
    /// frames, lowered and resolved on first use.
    fn lists(&mut self, key: Option<(usize, usize)>, attended: usize) -> Result<&mut Lists> {
        let state = match key {
            None => &mut self.chunk,
            Some(k) => self
                .recache
                .get_mut(&k)
                .ok_or_else(|| Error::Invalid("wan re-cache call state missing".into()))?,
        };
        lists_of(&mut self.dev, &self.config, &self.layout, self.model, state, attended)
    }

    fn held_count(&self) -> usize {
        self.held.len()
    }

    /// The lowest `n` slots no held frame uses.
    fn free_slots(&self, n: usize) -> Result<Vec<usize>> {
        let free: Vec<usize> = (0..self.config.window)
            .filter(|s| !self.held.iter().any(|&(_, h)| h == *s))
            .take(n)
            .collect();
        if free.len() < n {
            return Err(Error::Invalid(format!(
                "wan call: {} cached frames plus {n} of the call exceed the window of {} \
                 (evict first)",
                self.held_count(),
                self.config.window
            )));
        }
        Ok(free)
    }

    /// Writes a call's inputs and tables into the call allocation of `key`.
    #[allow(clippy::too_many_arguments)]
    fn write_inputs(
        &mut self,
        key: Option<(usize, usize)>,
        x: &[f32],
        t: &[f32],
        f0: u64,
        write: &[i32],
        attend: &[i32],
    ) -> Result<()> {
        let w = &self.config;
        let state = match key {
            None => &self.chunk,
            Some(k) => &self.recache[&k],
        };
        let (c, mem) = (&state.layout, state.mem);
        let f = c.frames;
        check_len("x", x.len(), f * w.frame_elems())?;
        check_len("t", t.len(), f)?;
        if f0 + f as u64 > MAX_POSITION {
            return Err(Error::Invalid(format!(
                "latent frame {}: positions past 2^24 frames are not exact in f32",
                f0 + f as u64 - 1
            )));
        }
        wan_qk::check_frame_slots(write, f, w.window).map_err(Error::Invalid)?;
        streamdit_kernels::wan_attention::check_attended(attend, attend.len(), w.window)
            .map_err(Error::Invalid)?;
        let [nf, _, _] = w.rope_split();
        let rope_f = wan_qk::rope_axis_table((0..f as i64).map(|i| f0 as i64 + i), nf);
        let fl = |off: usize, n: usize| -> Result<DeviceBuffer<f32>> { mem.slice(off, 4 * n)?.cast() };
        let il = |off: usize, n: usize| -> Result<DeviceBuffer<i32>> { mem.slice(off, 4 * n)?.cast() };
        self.dev.write(fl(c.x, x.len())?, x)?;
        self.dev.write(fl(c.t, f)?, t)?;
        self.dev.write(fl(c.rope_f, rope_f.len())?, &rope_f)?;
        self.dev.write(il(c.write_slots, f)?, write)?;
        self.dev.write(il(c.attend_slots, attend.len())?, attend)?;
        Ok(())
    }

    /// Runs (or replays) the list of `key` for `attended` frames; `pass` picks the prefix.
    fn run_list(&mut self, key: Option<(usize, usize)>, attended: usize, pass: Pass) -> Result<()> {
        let graphs = self.use_graphs && key.is_none();
        let model = self.model;
        let state = match key {
            None => &mut self.chunk,
            Some(k) => self
                .recache
                .get_mut(&k)
                .ok_or_else(|| Error::Invalid("wan re-cache call state missing".into()))?,
        };
        let l = lists_of(&mut self.dev, &self.config, &self.layout, model, state, attended)?;
        let n = match pass {
            Pass::Denoise => l.steps.steps.len(),
            Pass::Commit => l.steps.commit_len,
        };
        if !graphs {
            return lower::run(&mut self.dev, model, &l.steps.steps[..n]);
        }
        let slot = match pass {
            Pass::Denoise => &mut l.denoise,
            Pass::Commit => &mut l.commit,
        };
        let graph = match *slot {
            Some(g) => g,
            None => {
                self.dev.begin_capture()?;
                let captured = lower::run(&mut self.dev, model, &l.steps.steps[..n]);
                // End the capture even when recording failed, so the device is usable again.
                let graph = self.dev.end_capture();
                captured?;
                let graph = graph?;
                self.dev.upload(graph)?;
                *slot = Some(graph);
                graph
            }
        };
        self.dev.replay(graph)
    }

    /// The slot tables of a chunk call at `f0`: the chunk's slots and the attended ones.
    fn chunk_tables(&self) -> Result<(Vec<usize>, Vec<i32>)> {
        let c = self.config.chunk_frames;
        let own = self.free_slots(c)?;
        let attend = self
            .held
            .iter()
            .map(|&(_, s)| s)
            .chain(own.iter().copied())
            .map(|s| s as i32)
            .collect();
        Ok((own, attend))
    }

    fn require_text(&self) -> Result<()> {
        if !self.text_set {
            return Err(Error::Invalid(
                "wan call: no text context set (call set_text first)".into(),
            ));
        }
        Ok(())
    }

    /// Writes the chunk's inputs and returns the attended count.
    fn prepare_chunk(&mut self, x: &[f32], t: &[f32], f0: u64) -> Result<(usize, Vec<usize>)> {
        self.require_text()?;
        let (own, attend) = self.chunk_tables()?;
        let write: Vec<i32> = own.iter().map(|&s| s as i32).collect();
        self.write_inputs(None, x, t, f0, &write, &attend)?;
        Ok((attend.len(), own))
    }

    fn read_v(&mut self, v: &mut [f32]) -> Result<()> {
        let c = &self.chunk.layout;
        check_len("v", v.len(), c.frames * self.config.frame_elems())?;
        let buf = self.chunk.mem.slice(c.v, 4 * v.len())?.cast::<f32>()?;
        self.dev.read(buf, v)
    }
}

/// The lists of `state` for `attended` frames, lowered and resolved on `dev` on first use.
fn lists_of<'a, D: Device>(
    dev: &mut D,
    config: &WanConfig,
    layout: &ModelLayout,
    model: DeviceBuffer<u8>,
    state: &'a mut CallState,
    attended: usize,
) -> Result<&'a mut Lists> {
    if !state.lists.contains_key(&attended) {
        let steps = lw::lower_call(
            config,
            layout,
            model.addr(),
            &state.layout,
            state.mem.addr(),
            attended,
        )?;
        let commit_len = steps.commit_len;
        let mut steps = steps.steps;
        lower::wan_sm90::select_attention(dev, config.window, &mut steps)?;
        let steps = lower::resolve(dev, steps)?;
        state.lists.insert(
            attended,
            Lists {
                steps: CallSteps { steps, commit_len },
                denoise: None,
                commit: None,
            },
        );
    }
    state
        .lists
        .get_mut(&attended)
        .ok_or_else(|| Error::Invalid("wan call list missing".into()))
}

impl<D: Device> CausalBackend for CudaCausal<D> {
    fn name(&self) -> &'static str {
        self.dev.backend()
    }

    fn graphs(&self) -> Option<bool> {
        Some(self.use_graphs)
    }

    fn set_graphs(&mut self, on: bool) -> Result<()> {
        self.pending = None;
        CudaCausal::set_graphs(self, on);
        Ok(())
    }

    fn graph(&self) -> &WanGraph {
        &self.graph
    }

    fn set_text(&mut self, text: &Tensor, mask: &[f32]) -> Result<()> {
        self.pending = None;
        let w = &self.config;
        text.expect_shape("text", &[w.text_len, w.text_dim])?;
        check_len("text mask", mask.len(), w.text_len)?;
        // Wan's MaskRows on the host: padded rows zeroed before the f16 upload.
        let mut masked = text.data.clone();
        for (row, &m) in masked.chunks_mut(w.text_dim).zip(mask) {
            if m == 0.0 {
                row.fill(0.0);
            }
        }
        let dst = self
            .model
            .slice(self.layout.text, 2 * masked.len())?
            .cast::<u16>()?;
        self.dev.write(dst, &f16_bits(&masked))?;
        lower::run(&mut self.dev, self.model, &self.prompt)?;
        self.text_set = true;
        Ok(())
    }

    fn cached_frames(&self) -> Vec<u64> {
        self.held.iter().map(|&(p, _)| p).collect()
    }

    fn evict(&mut self, n: usize) -> Result<()> {
        self.pending = None;
        let sink = self.config.sink;
        if sink + n > self.held_count() {
            return Err(Error::Invalid(format!(
                "evict {n} frames: the cache holds {} frames, {sink} of them the sink",
                self.held_count()
            )));
        }
        self.held.drain(sink..sink + n);
        Ok(())
    }

    fn clear(&mut self) {
        self.pending = None;
        self.held.clear();
    }

    fn denoise(&mut self, x: &[f32], t: &[f32], f0: u64, v: &mut [f32]) -> Result<()> {
        check_len("v", v.len(), x.len())?;
        let this = Some(prefetched(x, t, f0, &self.held));
        if self.pending.take() == this {
            // Launched by `prefetch` with these very inputs: its output is (or will be) there.
            self.prefetched += 1;
            return self.read_v(v);
        }
        let (attended, _) = self.prepare_chunk(x, t, f0)?;
        self.run_list(None, attended, Pass::Denoise)?;
        self.read_v(v)
    }

    fn prefetch(&mut self, x: &[f32], t: &[f32], f0: u64) -> Result<()> {
        self.pending = None;
        let (attended, _) = self.prepare_chunk(x, t, f0)?;
        self.run_list(None, attended, Pass::Denoise)?;
        self.pending = Some(prefetched(x, t, f0, &self.held));
        Ok(())
    }

    fn prefetched_calls(&self) -> u64 {
        self.prefetched
    }

    fn commit(&mut self, x0: &[f32], t: f32, f0: u64) -> Result<()> {
        self.pending = None;
        let c = self.config.chunk_frames;
        let (attended, own) = self.prepare_chunk(x0, &vec![t; c], f0)?;
        self.run_list(None, attended, Pass::Commit)?;
        self.dev.synchronize()?;
        self.held
            .extend(own.iter().enumerate().map(|(i, &s)| (f0 + i as u64, s)));
        Ok(())
    }

    fn recache(&mut self, frames: &[f32], t: f32, f0: u64, keep: usize) -> Result<()> {
        self.pending = None;
        let w = &self.config;
        let fe = w.frame_elems();
        let r = frames.len() / fe;
        if r == 0 || r * fe != frames.len() || r > w.window || keep > r {
            return Err(Error::shape(
                "re-cache frames",
                format!(
                    "1..={} whole frames of {fe} values, at least keep = {keep}",
                    w.window
                ),
                format!("{} values", frames.len()),
            ));
        }
        if keep > self.held_count() {
            return Err(Error::Invalid(format!(
                "re-cache keeps {keep} cached frames, the cache holds {}",
                self.held_count()
            )));
        }
        self.require_text()?;
        if !self.recache.contains_key(&(r, keep)) {
            let state = Self::call_state(&mut self.dev, &self.config, r)?;
            self.recache.insert((r, keep), state);
        }
        // The kept frames stay; the call's frames [keep, R) take the lowest other slots.
        let kept: Vec<(u64, usize)> = self.held[..keep].to_vec();
        let free: Vec<usize> = (0..self.config.window)
            .filter(|s| !kept.iter().any(|&(_, h)| h == *s))
            .take(r - keep)
            .collect();
        let write: Vec<i32> = (0..r)
            .map(|i| if i < keep { -1 } else { free[i - keep] as i32 })
            .collect();
        let attend: Vec<i32> = kept
            .iter()
            .map(|&(_, s)| s as i32)
            .chain(free.iter().map(|&s| s as i32))
            .collect();
        self.write_inputs(Some((r, keep)), frames, &vec![t; r], f0, &write, &attend)?;
        self.run_list(Some((r, keep)), attend.len(), Pass::Commit)?;
        self.dev.synchronize()?;
        self.held = kept
            .into_iter()
            .chain(free.iter().enumerate().map(|(i, &s)| (f0 + (keep + i) as u64, s)))
            .collect();
        Ok(())
    }

    /// The chunk call's launches run eagerly with an event recorded before the first and
    /// after every launch; each launch is reported as one piece.
    fn denoise_timed(
        &mut self,
        x: &[f32],
        t: &[f32],
        f0: u64,
        v: &mut [f32],
        on_step: &mut dyn FnMut(&TimedStep),
    ) -> Result<Clock> {
        self.pending = None;
        check_len("v", v.len(), x.len())?;
        let (attended, _) = self.prepare_chunk(x, t, f0)?;
        let n = self.lists(None, attended)?.steps.steps.len();
        while self.timing.len() < n + 1 {
            let e = self.dev.create_event()?;
            self.timing.push(e);
        }
        let model = self.model;
        let steps = &lists_of(
            &mut self.dev,
            &self.config,
            &self.layout,
            model,
            &mut self.chunk,
            attended,
        )?
        .steps
        .steps;
        self.dev.record(self.timing[0], Queue::Compute)?;
        for (k, step) in steps.iter().enumerate() {
            lower::run(&mut self.dev, model, std::slice::from_ref(step))?;
            self.dev.record(self.timing[k + 1], Queue::Compute)?;
        }
        self.dev.synchronize()?;
        for (k, step) in steps.iter().enumerate() {
            let ms = self.dev.elapsed_ms(self.timing[k], self.timing[k + 1])?;
            on_step(&TimedStep {
                label: step.label(),
                ops: k..k + 1,
                part: 0,
                parts: 1,
                seconds: ms as f64 / 1e3,
            });
        }
        self.read_v(v)?;
        Ok(if self.dev.backend() == "emu" {
            Clock::Emulator
        } else {
            Clock::DeviceEvents
        })
    }
}
