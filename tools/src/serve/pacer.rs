//! The frame clock of a stream: takes each decoded chunk from the worker, encodes its frames
//! and releases one every `1 / fps` seconds to the viewers (a `watch` channel: each viewer
//! sees the newest frame when it is ready for one). Runs on its own thread so JPEG encoding
//! never delays a model call.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::session::{ema, lock, Frame, Stats};
use super::transport::{encode_jpeg, frame_message, FrameFormat, FrameMeta};
use super::worker::Chunk;

/// Recent release times kept for the delivered frame rate.
const RECENT_FRAMES: usize = 32;
/// How often an idle pacer looks at the cancel flag.
const POLL: Duration = Duration::from_millis(50);

pub struct Pacer {
    chunks: Receiver<Chunk>,
    frames: watch::Sender<Option<Arc<Frame>>>,
    stats: Arc<Mutex<Stats>>,
    cancel: Arc<AtomicBool>,
    jpeg_viewers: Arc<AtomicUsize>,
    quality: u8,
    interval: Duration,
    started: Instant,
}

impl Pacer {
    pub fn new(
        chunks: Receiver<Chunk>,
        frames: watch::Sender<Option<Arc<Frame>>>,
        stats: Arc<Mutex<Stats>>,
        cancel: Arc<AtomicBool>,
        jpeg_viewers: Arc<AtomicUsize>,
        quality: u8,
        fps: f64,
    ) -> Pacer {
        Pacer {
            chunks,
            frames,
            stats,
            cancel,
            jpeg_viewers,
            quality,
            // A profile's fps is validated positive and finite; guard the clock anyway.
            interval: Duration::from_secs_f64(1.0 / fps.clamp(0.1, 1000.0)),
            started: Instant::now(),
        }
    }

    /// Runs until the stream is closed or its worker stops; dropping `frames` on return
    /// tells every viewer.
    pub fn run(self) {
        let mut next = Instant::now();
        loop {
            let chunk = match self.chunks.recv_timeout(POLL) {
                Ok(c) => c,
                Err(RecvTimeoutError::Timeout) if !self.cancel.load(Ordering::SeqCst) => continue,
                Err(_) => return,
            };
            let (w, h) = {
                let st = lock(&self.stats);
                (st.width, st.height)
            };
            let bytes = w * h * 3;
            if chunk.rgb.len() != chunk.frames * bytes {
                lock(&self.stats).error = Some(format!(
                    "a chunk of {} bytes for {} frames of {w}x{h}",
                    chunk.rgb.len(),
                    chunk.frames
                ));
                return;
            }
            for k in 0..chunk.frames {
                if self.cancel.load(Ordering::SeqCst) {
                    return;
                }
                let rgb = &chunk.rgb[k * bytes..(k + 1) * bytes];
                let meta = FrameMeta {
                    index: chunk.first_index + k as u64,
                    call: chunk.call,
                    prompt_id: chunk.prompt_id,
                    width: w as u32,
                    height: h as u32,
                    time_ms: self.started.elapsed().as_millis() as u64,
                };
                let ws_jpeg = if self.jpeg_viewers.load(Ordering::SeqCst) > 0 {
                    let t = Instant::now();
                    match encode_jpeg(rgb, w, h, self.quality) {
                        Ok(jpeg) => {
                            let ms = t.elapsed().as_secs_f64() * 1e3;
                            let mut st = lock(&self.stats);
                            st.jpeg_ms = ema(st.jpeg_ms, ms);
                            Some(frame_message(FrameFormat::Jpeg, &meta, &jpeg))
                        }
                        Err(e) => {
                            lock(&self.stats).error = Some(e);
                            return;
                        }
                    }
                } else {
                    None
                };
                let frame = Frame {
                    index: meta.index,
                    ws_jpeg,
                    ws_rgb: frame_message(FrameFormat::Rgb, &meta, rgb),
                };
                // The clock: one frame per interval; a late chunk restarts it rather than
                // bursting the frames it missed.
                let now = Instant::now();
                if next > now {
                    std::thread::sleep(next - now);
                } else {
                    next = now;
                }
                next += self.interval;
                self.frames.send_replace(Some(Arc::new(frame)));
                let released = Instant::now();
                let mut st = lock(&self.stats);
                st.frames += 1;
                if st.recent.len() == RECENT_FRAMES {
                    st.recent.pop_front();
                }
                st.recent.push_back(released);
                if st.first_frame_ms.is_none() {
                    st.first_frame_ms = Some(self.started.elapsed().as_secs_f64() * 1e3);
                }
                if k == 0 {
                    let ms = |t: Instant| released.duration_since(t).as_secs_f64() * 1e3;
                    st.latency_ms = ema(st.latency_ms, ms(chunk.call_started));
                    if let Some(t) = chunk.switch_received {
                        st.switch_latency_ms = Some(ms(t));
                    }
                }
            }
        }
    }
}
