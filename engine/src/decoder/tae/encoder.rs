//! The temporal-autoencoder encoder of video-to-video (`../shared/TAE_SPEC.md`, "Encoder";
//! docs/tae.md) on the CPU, in f32: the op list of [`TaeGraph::encoder`] run by the
//! decoder's executor, so it shares the decoder's Res and Attn blocks and its causal caches.
//! Encoding a stream chunk by chunk (any multiple of 4 video frames per chunk) equals
//! encoding it at once.

use super::cpu::{Act, TaeNet};
use crate::checkpoint::Weights;
use crate::error::{Error, Result};
use crate::model::tae::{TaeGraph, TaeKind, SPATIAL_UPSAMPLE, TEMPORAL_UPSAMPLE};

/// The TAE encoder on the CPU, with its per-stream causal caches.
#[derive(Debug)]
pub struct TaeEncoder {
    net: TaeNet,
}

impl TaeEncoder {
    /// The encoder of `graph` (from [`TaeGraph::encoder`]) with the `encoder.*` tensors of
    /// `weights`; a missing or mis-shaped tensor is an error naming it.
    pub fn new(graph: TaeGraph, weights: &Weights) -> Result<TaeEncoder> {
        if graph.kind != TaeKind::Encoder {
            return Err(Error::Invalid(
                "TaeEncoder: the op list is the decoder's (TaeGraph::new); build it with \
                 TaeGraph::encoder"
                    .into(),
            ));
        }
        Ok(TaeEncoder {
            net: TaeNet::new(graph, weights)?,
        })
    }

    /// The op list this encoder executes.
    pub fn graph(&self) -> &TaeGraph {
        &self.net.graph
    }

    /// Input video frame `(width, height)` in pixels.
    pub fn frame_size(&self) -> (usize, usize) {
        self.net.graph.frame_size()
    }

    /// Forgets the causal caches: the next chunk starts a new stream.
    pub fn reset(&mut self) {
        self.net.reset()
    }

    /// Host bytes its causal caches hold now (what `memory::host::encoder_memory` counts as
    /// `cache_bytes` once a push has filled them).
    pub fn cache_bytes(&self) -> usize {
        self.net.cache_bytes()
    }

    /// Test hook (a planted bug): forgets the cache of the `index`-th temporal op between
    /// two chunks, so the chunked output must differ from the whole-sequence output.
    #[doc(hidden)]
    pub fn forget_cache(&mut self, index: usize) {
        self.net.forget_cache(index)
    }

    /// Elements of one video frame, `H * W * 3`.
    fn frame_elems(&self) -> usize {
        let (w, h) = self.frame_size();
        w * h * 3
    }

    /// Encodes video frames `rgb [4n, H, W, 3]` (bytes, 0..255, continuing the stream) into
    /// latents `[n, C, h, w]`; `x = rgb / 127.5 - 1` as the spec maps them.
    pub fn encode_rgb(&mut self, rgb: &[u8]) -> Result<Vec<f32>> {
        let x: Vec<f32> = rgb.iter().map(|&v| f32::from(v) / 127.5 - 1.0).collect();
        self.encode_f32(&x)
    }

    /// Encodes `x [4n, H, W, 3]` (already mapped to about `[-1, 1]`, channels last,
    /// continuing the stream) into latents `[n, C, h, w]`.
    pub fn encode_f32(&mut self, x: &[f32]) -> Result<Vec<f32>> {
        self.encode_observed(x, |_, _| {})
    }

    /// [`encode_f32`](Self::encode_f32), handing `observe` the index of every op in
    /// [`TaeGraph::steps`] with its output `[T, H, W, Ch]`.
    pub fn encode_observed(
        &mut self,
        x: &[f32],
        mut observe: impl FnMut(usize, &[f32]),
    ) -> Result<Vec<f32>> {
        let frame = self.frame_elems();
        let chunk = frame * TEMPORAL_UPSAMPLE;
        if x.len() % chunk != 0 {
            let (w, h) = self.frame_size();
            return Err(Error::shape(
                "TAE encoder input",
                format!(
                    "a multiple of {TEMPORAL_UPSAMPLE} video frames of {w}x{h}x3 = {chunk} elements"
                ),
                format!("{} elements", x.len()),
            ));
        }
        if x.is_empty() {
            return Ok(Vec::new());
        }
        if let Some(i) = x.iter().position(|v| !v.is_finite()) {
            return Err(Error::Invalid(format!(
                "TAE encoder input: element {i} is {}, expected a finite value",
                x[i]
            )));
        }
        let (w, h) = self.frame_size();
        let frames = x.len() / frame;
        let act = Act {
            data: x.to_vec(),
            frames,
            height: h,
            width: w,
            channels: 3,
        };
        let out = self.net.run(act, &mut observe)?;
        let g = &self.net.graph;
        let (c, lh, lw) = (g.latent_channels, g.latent_height, g.latent_width);
        let n = frames / TEMPORAL_UPSAMPLE;
        debug_assert_eq!(
            (out.frames, out.height * SPATIAL_UPSAMPLE, out.width * SPATIAL_UPSAMPLE),
            (n, h, w)
        );
        // [n, h, w, C] -> [n, C, h, w]
        let mut z = vec![0.0; out.data.len()];
        for f in 0..n {
            for p in 0..lh * lw {
                for ch in 0..c {
                    z[(f * c + ch) * lh * lw + p] = out.data[(f * lh * lw + p) * c + ch];
                }
            }
        }
        Ok(z)
    }
}
