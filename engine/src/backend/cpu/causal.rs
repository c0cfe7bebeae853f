//! [`CpuCausal`]: the Wan family's call graphs interpreted by the CPU backend in f32, with
//! the KV cache on the host as a list of frames per block (eviction drops list entries;
//! keys keep the rotation of the frame they came from, so no value moves or changes).

use std::collections::HashMap;
use std::sync::Arc;

use super::{check_len, CpuBackend, Env, OpList, OpTrace};
use crate::backend::{CausalBackend, Clock, TimedStep};
use crate::checkpoint::Weights;
use crate::cost::op_kind;
use crate::error::{Error, Result};
use crate::math as ops;
use crate::model::graph::{Kind, Op, TensorId};
use crate::model::wan::{WanConfig, WanGraph};
use crate::tensor::Tensor;

/// Positions travel as f32: exact integers up to 2^24 latent frames (about 48 days of
/// video at 16 fps).
const MAX_POSITION: u64 = 1 << 24;

/// One cached latent frame of one block: its absolute position, keys (rotated) and values,
/// `[P, D]` each.
#[derive(Debug, Clone)]
pub(super) struct FrameKv {
    pos: u64,
    k: Vec<f32>,
    v: Vec<f32>,
}

/// What a run of a call list with cache ops sees and produces.
pub(super) struct CacheRun<'a> {
    /// Per block, the cached frames; the first `visible` of each are attended.
    held: &'a [Vec<FrameKv>],
    visible: usize,
    /// The graph's `(cache_k, cache_v)` per block.
    blocks: &'a [(TensorId, TensorId)],
    /// Absolute position of each frame of the call.
    pos: &'a [u64],
    /// Whether cache writes take effect; then `staged` receives the new frames per block.
    commit: bool,
    staged: Vec<Vec<FrameKv>>,
    /// The run stops before op `end`.
    pub(super) end: usize,
}

impl CpuBackend {
    /// Executes a cache op: the attention's output, or `None` for a write.
    pub(super) fn exec_cache(
        &self,
        op: &Op,
        env: &Env,
        kv: &mut CacheRun,
    ) -> Result<Option<Vec<f32>>> {
        let m = &self.graph.config;
        let fl = m.tokens_per_frame() * m.dim;
        let block = |id: TensorId| {
            kv.blocks
                .iter()
                .position(|&(k, v)| k == id || v == id)
                .ok_or_else(|| self.internal(format!("`{}` is no block's cache", self.name(id))))
        };
        match *op {
            Op::CacheAttention {
                q,
                k,
                v,
                cache_k,
                out,
                heads,
                skip,
                ..
            } => {
                let l = block(cache_k)?;
                let (k, v) = (self.value(env, k)?, self.value(env, v)?);
                let mut segments: Vec<(&[f32], &[f32])> = kv.held[l][..kv.visible]
                    .iter()
                    .map(|f| (f.k.as_slice(), f.v.as_slice()))
                    .collect();
                segments.push((&k[skip * fl..], &v[skip * fl..]));
                let mut o = vec![0.0; self.graph.tensors[out].numel()];
                ops::segment_attention(self.value(env, q)?, &segments, heads, m.dim, &mut o);
                Ok(Some(o))
            }
            Op::CacheWrite {
                k, v, cache_k, skip, ..
            } => {
                if kv.commit {
                    let l = block(cache_k)?;
                    let (k, v) = (self.value(env, k)?, self.value(env, v)?);
                    kv.staged[l] = (skip..m.latent_frames)
                        .map(|f| FrameKv {
                            pos: kv.pos[f],
                            k: k[f * fl..(f + 1) * fl].to_vec(),
                            v: v[f * fl..(f + 1) * fl].to_vec(),
                        })
                        .collect();
                }
                Ok(None)
            }
            _ => Err(self.internal(format!("{} is no cache op", op_kind(op)))),
        }
    }

    fn name(&self, id: TensorId) -> &str {
        &self.graph.tensors[id].name
    }
}

/// Per block, the frames a committing call staged for the cache.
type Staged = Vec<Vec<FrameKv>>;

/// A call graph with its interpreter.
struct Call {
    wan: WanGraph,
    cpu: CpuBackend,
}

impl Call {
    fn new(w: &WanConfig, frames: usize, skip: usize, weights: Arc<Weights>) -> Result<Call> {
        let wan = WanGraph::build(w, frames, skip);
        let cpu = CpuBackend::new(wan.graph.clone(), weights)?;
        Ok(Call { wan, cpu })
    }

    /// Runs the call list on `x`, `t` at positions `pos`, attending to the first `visible`
    /// frames of `held`; returns the output (a denoising call) or the staged frames (a
    /// committing one).
    #[allow(clippy::too_many_arguments)]
    fn run(
        &self,
        x: &[f32],
        t: &[f32],
        pos: &[u64],
        held: &[Vec<FrameKv>],
        visible: usize,
        commit: bool,
        tracer: Option<super::Tracer>,
    ) -> Result<(Option<Vec<f32>>, Staged)> {
        let g = &self.wan.graph;
        let m = &g.config;
        check_len("x", x.len(), m.buffer_elems())?;
        check_len("t", t.len(), m.latent_frames)?;
        if let Some(&p) = pos.last() {
            if p >= MAX_POSITION {
                return Err(Error::Invalid(format!(
                    "latent frame {p}: positions past 2^24 frames are not exact in f32"
                )));
            }
        }
        if !self.cpu.text_set {
            return Err(Error::Invalid(
                "wan call: no text context set (call set_text first)".into(),
            ));
        }
        let mut env = self.cpu.env();
        env.values[g.inputs.x] = Some(x.to_vec());
        env.values[g.inputs.tau] = Some(t.to_vec());
        env.values[self.wan.pos] = Some(pos.iter().map(|&p| p as f32).collect());
        let mut run = CacheRun {
            held,
            visible,
            blocks: &self.wan.cache,
            pos,
            commit,
            staged: vec![Vec::new(); self.wan.cache.len()],
            end: if commit {
                self.wan.commit_len
            } else {
                g.call_ops.len()
            },
        };
        self.cpu
            .run(OpList::Call, &mut env, tracer, Some(&mut run))?;
        let staged = run.staged;
        let out = if commit {
            None
        } else {
            Some(env.values[g.output].take().ok_or_else(|| {
                self.cpu
                    .internal("the graph did not write its output".into())
            })?)
        };
        Ok((out, staged))
    }

    /// Takes the prompt results (cross-attention K/V) of `from`, whose prompt tensors have
    /// the same ids (every Wan graph builds its prompt tensors first, in the same order).
    fn copy_text(&mut self, from: &CpuBackend) {
        for (id, t) in self.cpu.graph.tensors.iter().enumerate() {
            if t.kind == Kind::Persistent {
                self.cpu.persistent[id] = from.persistent.get(id).cloned().flatten();
            }
        }
        self.cpu.text_set = from.text_set;
    }
}

/// The Wan family on the CPU: the chunk graph, re-cache graphs built on first use, and the
/// KV cache (per block, the held frames in order, sink first).
pub struct CpuCausal {
    config: WanConfig,
    weights: Arc<Weights>,
    chunk: Call,
    recache: HashMap<(usize, usize), Call>,
    cache: Vec<Vec<FrameKv>>,
}

impl CpuCausal {
    /// A backend for the Wan network `config` over `weights` (original Wan names), checking
    /// that every weight the graph reads is present with its shape.
    pub fn new(config: &WanConfig, weights: Arc<Weights>) -> Result<CpuCausal> {
        let chunk = Call::new(config, config.chunk_frames, 0, weights.clone())?;
        Ok(CpuCausal {
            config: config.clone(),
            weights,
            cache: vec![Vec::new(); config.depth],
            chunk,
            recache: HashMap::new(),
        })
    }

    fn held(&self) -> usize {
        self.cache.first().map_or(0, Vec::len)
    }

    fn positions(f0: u64, n: usize) -> Vec<u64> {
        (0..n as u64).map(|i| f0 + i).collect()
    }

    /// The chunk's frames plus the held ones must fit the window (the stream evicts first).
    fn check_room(&self, own: usize) -> Result<()> {
        let w = self.config.window;
        if self.held() + own > w {
            return Err(Error::Invalid(format!(
                "wan call: {} cached frames plus {own} of the call exceed the window of {w} \
                 (evict first)",
                self.held()
            )));
        }
        Ok(())
    }

    fn call_chunk(
        &self,
        x: &[f32],
        t: &[f32],
        f0: u64,
        v: &mut [f32],
        tracer: Option<super::Tracer>,
    ) -> Result<()> {
        let c = self.config.chunk_frames;
        check_len("v", v.len(), x.len())?;
        self.check_room(c)?;
        let pos = Self::positions(f0, c);
        let (out, _) = self
            .chunk
            .run(x, t, &pos, &self.cache, self.held(), false, tracer)?;
        if let Some(out) = out {
            v.copy_from_slice(&out);
        }
        Ok(())
    }
}

impl CausalBackend for CpuCausal {
    fn name(&self) -> &'static str {
        "cpu"
    }

    fn graph(&self) -> &WanGraph {
        &self.chunk.wan
    }

    fn set_text(&mut self, text: &Tensor, mask: &[f32]) -> Result<()> {
        crate::backend::Backend::set_text(&mut self.chunk.cpu, text, mask)
    }

    fn set_check_ops(&mut self, on: bool) -> Result<()> {
        self.chunk.cpu.check_ops = on;
        Ok(())
    }

    fn cached_frames(&self) -> Vec<u64> {
        self.cache
            .first()
            .map_or_else(Vec::new, |l| l.iter().map(|f| f.pos).collect())
    }

    fn evict(&mut self, n: usize) -> Result<()> {
        let sink = self.config.sink;
        if sink + n > self.held() {
            return Err(Error::Invalid(format!(
                "evict {n} frames: the cache holds {} frames, {sink} of them the sink",
                self.held()
            )));
        }
        for layer in &mut self.cache {
            layer.drain(sink..sink + n);
        }
        Ok(())
    }

    fn clear(&mut self) {
        for layer in &mut self.cache {
            layer.clear();
        }
    }

    fn denoise(&mut self, x: &[f32], t: &[f32], f0: u64, v: &mut [f32]) -> Result<()> {
        self.call_chunk(x, t, f0, v, None)
    }

    fn commit(&mut self, x0: &[f32], t: f32, f0: u64) -> Result<()> {
        let c = self.config.chunk_frames;
        self.check_room(c)?;
        let pos = Self::positions(f0, c);
        let (_, staged) =
            self.chunk
                .run(x0, &vec![t; c], &pos, &self.cache, self.held(), true, None)?;
        for (layer, new) in self.cache.iter_mut().zip(staged) {
            layer.extend(new);
        }
        Ok(())
    }

    fn recache(&mut self, frames: &[f32], t: f32, f0: u64, keep: usize) -> Result<()> {
        let fe = self.config.frame_elems();
        let r = frames.len() / fe;
        if r == 0 || r * fe != frames.len() || r > self.config.window || keep > r {
            return Err(Error::shape(
                "re-cache frames",
                format!(
                    "1..={} whole frames of {fe} values, at least keep = {keep}",
                    self.config.window
                ),
                format!("{} values", frames.len()),
            ));
        }
        if keep > self.held() {
            return Err(Error::Invalid(format!(
                "re-cache keeps {keep} cached frames, the cache holds {}",
                self.held()
            )));
        }
        if !self.recache.contains_key(&(r, keep)) {
            let call = Call::new(&self.config, r, keep, self.weights.clone())?;
            self.recache.insert((r, keep), call);
        }
        let chunk_cpu = &self.chunk.cpu;
        let call = self
            .recache
            .get_mut(&(r, keep))
            .ok_or_else(|| Error::Invalid("re-cache graph missing".into()))?;
        call.copy_text(chunk_cpu);
        call.cpu.check_ops = chunk_cpu.check_ops;
        let pos = Self::positions(f0, r);
        let (_, staged) = call.run(frames, &vec![t; r], &pos, &self.cache, keep, true, None)?;
        for (layer, new) in self.cache.iter_mut().zip(staged) {
            layer.truncate(keep);
            layer.extend(new);
        }
        Ok(())
    }

    fn denoise_timed(
        &mut self,
        x: &[f32],
        t: &[f32],
        f0: u64,
        v: &mut [f32],
        on_step: &mut dyn FnMut(&TimedStep),
    ) -> Result<Clock> {
        let mut tracer = |tr: &OpTrace| {
            let label = format!("{} `{}`", op_kind(tr.op), tr.output.name);
            on_step(&TimedStep {
                label: &label,
                ops: tr.index..tr.index + 1,
                part: 0,
                parts: 1,
                seconds: tr.elapsed.as_secs_f64(),
            })
        };
        self.call_chunk(x, t, f0, v, Some(&mut tracer))?;
        Ok(Clock::HostWall)
    }
}
