//! The video-to-video part of `streamdit plan` for a Wan profile: the encoder that turns
//! each chunk's `4c` input video frames into its `c` latent frames (the stream's: TAEHV's,
//! docs/taehv.md "The encoder", or with the Wan VAE decoder the Wan VAE's own,
//! docs/wan_vae.md "The encoder"): its FLOPs and bytes per chunk and per input frame, its
//! roofline on the named GPU beside the chunk's DiT calls at the default strength, and its
//! memory (f16 on a device as costed, f32 on the host where this build runs it).

use serde_json::{json, Value};
use streamdit::inspect::{
    wan_decoder_kind, wan_encoder_graph, wan_start_step, wan_video_to_video_memory, EncoderMemory,
    GpuSpec, VideoCost,
};
use streamdit::{DecoderKind, Profile, Result, WanDecoder};

use crate::common::{fmt_bytes, fmt_count, fmt_flops};

/// The strength `generate --input-video` uses unless told.
const DEFAULT_STRENGTH: f64 = 0.6;

/// The encoder of a Wan profile at one chunk, with what the report sets beside it.
pub(crate) struct Encoder {
    /// The stream's decoder, which picks the encoder.
    decoder: WanDecoder,
    cost: VideoCost,
    host: EncoderMemory,
    chunk_frames: usize,
    steps: usize,
    /// The step a chunk starts at with [`DEFAULT_STRENGTH`] (SDEdit).
    start: usize,
}

impl Encoder {
    /// The encoder of a stream of `profile` decoding with `decoder` (the profile's when
    /// `None`; the preview encodes with TAEHV).
    pub(crate) fn of(profile: &Profile, decoder: Option<DecoderKind>) -> Result<Encoder> {
        let w = profile.wan()?;
        let decoder = wan_decoder_kind(profile, decoder.unwrap_or_default())?;
        let graph = wan_encoder_graph(profile, decoder)?;
        let (_, sigmas) = w.schedule();
        Ok(Encoder {
            decoder,
            cost: VideoCost::of(&graph, w.chunk_frames, false),
            host: wan_video_to_video_memory(profile, decoder)?,
            chunk_frames: w.chunk_frames,
            steps: w.steps(),
            start: wan_start_step(&sigmas, DEFAULT_STRENGTH),
        })
    }

    /// The section's text and JSON; `dit_call_s` and `commit_s` are the roofline seconds of
    /// one denoising call and of the committing pass, when a GPU is named.
    pub(crate) fn report(&self, gpu: Option<GpuSpec>, dit: Option<(f64, f64)>) -> (String, Value) {
        let c = &self.cost;
        let input_frames = 4 * self.chunk_frames;
        let per_frame = |x: u64| x as f64 / input_frames as f64;
        let bytes = c.total.bytes_read + c.total.bytes_written;
        let calls = self.steps - self.start;
        let mut text = String::new();
        let (name, doc, kind, first, caches) = match self.decoder {
            WanDecoder::WanVae => (
                "the Wan VAE's, as the stream decodes with the Wan VAE",
                "docs/wan_vae.md",
                "wan-vae",
                "; the stream's first chunk takes 3 frames fewer",
                "causal-conv caches",
            ),
            _ => ("TAEHV", "docs/taehv.md", "taehv", "", "MemBlock memories"),
        };
        say!(
            text,
            "\nvideo-to-video encoder ({name}, {doc} \"The encoder\"; once per chunk of {} input frames -> {} latent frames{first}; CPU f32 in this build, costed at f16 on a device)",
            input_frames,
            self.chunk_frames
        );
        say!(
            text,
            "  parameters       {} ({} f16 weights)",
            fmt_count(c.parameters),
            fmt_bytes(c.weight_bytes)
        );
        say!(
            text,
            "  FLOPs            {} per chunk, {} per input video frame; {} read and written per chunk",
            fmt_flops(c.total.flops),
            fmt_flops(per_frame(c.total.flops) as u64),
            fmt_bytes(bytes)
        );
        say!(
            text,
            "  device memory    {}: weights {}, {caches} {}, activations {}",
            fmt_bytes(c.memory_bytes()),
            fmt_bytes(c.weight_bytes),
            fmt_bytes(c.cache_bytes),
            fmt_bytes(c.activation_bytes)
        );
        say!(
            text,
            "  host memory      {} more than text-to-video (f32, as this build runs it): weights {}, memories {}, activations {}, queued input {}",
            fmt_bytes(self.host.total() as u64),
            fmt_bytes(self.host.weight_bytes as u64),
            fmt_bytes(self.host.cache_bytes as u64),
            fmt_bytes(self.host.activation_bytes as u64),
            fmt_bytes(self.host.queue_bytes as u64)
        );
        let mut roofline = Value::Null;
        if let Some(g) = gpu {
            let enc = g.list_seconds(&c.ops);
            say!(
                text,
                "  roofline         {:.3} ms per chunk, {:.4} ms per input frame ({:.1} input FPS for the encoder alone)",
                enc * 1e3,
                enc * 1e3 / input_frames as f64,
                input_frames as f64 / enc
            );
            let mut with_dit = Value::Null;
            if let Some((call, commit)) = dit {
                let dit_s = calls as f64 * call + commit;
                let serial = dit_s + enc;
                say!(
                    text,
                    "  with the DiT     strength {DEFAULT_STRENGTH} starts a chunk at step {} of {}: {calls} denoising calls + the commit {:.2} ms, encoder {:.3} ms: {:.2} ms per chunk, {:.2} video FPS (decoder not included)",
                    self.start,
                    self.steps,
                    dit_s * 1e3,
                    enc * 1e3,
                    serial * 1e3,
                    input_frames as f64 / serial
                );
                with_dit = json!({
                    "strength": DEFAULT_STRENGTH, "start_step": self.start, "calls": calls,
                    "dit_ms_per_chunk": dit_s * 1e3, "ms_per_chunk": serial * 1e3,
                    "fps": input_frames as f64 / serial,
                });
            }
            roofline = json!({
                "ms_per_chunk": enc * 1e3,
                "ms_per_input_frame": enc * 1e3 / input_frames as f64,
                "input_fps": input_frames as f64 / enc,
                "with_dit": with_dit,
            });
        }
        let json = json!({
            "kind": kind,
            "latent_frames_per_chunk": self.chunk_frames,
            "input_frames_per_chunk": input_frames,
            "parameters": c.parameters,
            "weight_bytes": c.weight_bytes,
            "cache_bytes": c.cache_bytes,
            "activation_bytes": c.activation_bytes,
            "device_memory_bytes": c.memory_bytes(),
            "flops_per_chunk": c.total.flops,
            "flops_per_input_frame": per_frame(c.total.flops),
            "bytes_read_per_chunk": c.total.bytes_read,
            "bytes_written_per_chunk": c.total.bytes_written,
            "host_memory": {
                "weight_bytes": self.host.weight_bytes as u64,
                "cache_bytes": self.host.cache_bytes as u64,
                "activation_bytes": self.host.activation_bytes as u64,
                "queue_bytes": self.host.queue_bytes as u64,
                "total_bytes": self.host.total() as u64,
            },
            "roofline": roofline,
        });
        (text, json)
    }
}
