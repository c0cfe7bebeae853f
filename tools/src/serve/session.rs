//! Streams and who watches them. A [`Session`] is one engine stream run by its own worker
//! thread (model calls and decoding) and pacer thread (JPEG encoding and the frame clock,
//! `worker.rs`); the [`Hub`] hands sessions out: one per connection up to `--max-streams`,
//! or with `--shared` one that every viewer watches.
//!
//! Drop policy: frames reach viewers through a `watch` channel that holds only the newest
//! frame, so each viewer independently gets the latest frame whenever it is ready for one
//! and skips the frames it was too slow for (counted in `dropped_frames`). Nothing a viewer
//! does can block the pacer or the worker. The worker itself runs at most one chunk ahead of
//! the frame clock (a rendezvous channel to the pacer), so a prompt switch shows within
//! about one chunk of video.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, Weak};
use std::time::Instant;

use axum::body::Bytes;
use axum::http::StatusCode;
use serde_json::{json, Value};
use streamdit::{DecoderKind, Engine};
use tokio::sync::{oneshot, watch, OwnedSemaphorePermit, Semaphore};

use super::limits::{ApiError, SwitchRate, SLOT_WAIT};
use super::worker;

/// The server's settings, fixed at start.
#[derive(Debug, Clone)]
pub struct Config {
    pub max_streams: usize,
    pub max_viewers: usize,
    pub shared: bool,
    pub token: Option<String>,
    /// The prompt of a stream whose connection names none.
    pub prompt: String,
    pub negative_prompt: Option<String>,
    /// Noise seed of a stream whose connection names none (default: the profile's).
    pub seed: Option<u64>,
    pub guidance: f32,
    pub decoder: DecoderKind,
    pub jpeg_quality: u8,
}

/// One video frame as every transport sends it; built once, shared by all viewers.
#[derive(Debug)]
pub struct Frame {
    pub index: u64,
    /// A WebSocket message: the frame header then the JPEG (`None` while no viewer wants JPEG).
    pub ws_jpeg: Option<Bytes>,
    /// A WebSocket message: the frame header then raw RGB8, row-major.
    pub ws_rgb: Bytes,
}

/// What a viewer wants a new stream to start with.
#[derive(Debug, Clone, Default)]
pub struct StreamRequest {
    pub prompt: Option<String>,
    pub seed: Option<u64>,
}

/// A request to the worker; it answers once it has applied it, between model calls.
pub enum Command {
    /// Switch the prompt from the next model call on; the answer is that call's index.
    Prompt {
        prompt: String,
        received: Instant,
        reply: oneshot::Sender<Result<Value, String>>,
    },
    /// Start the stream again with another negative prompt or guidance (both are fixed for
    /// the life of an engine stream: the backend's batch depends on guidance).
    Restart {
        negative_prompt: Option<String>,
        guidance: Option<f32>,
        reply: oneshot::Sender<Result<Value, String>>,
    },
}

/// Moving figures of one stream, written by its threads, read by the status endpoints.
#[derive(Debug, Default)]
pub struct Stats {
    pub prompt: String,
    pub prompt_id: u64,
    /// The index of the first model call conditioned on the current prompt.
    pub prompt_since_call: u64,
    pub negative_prompt: String,
    pub guidance: f32,
    pub seed: u64,
    pub restarts: u64,
    pub width: usize,
    pub height: usize,
    pub frames_per_chunk: usize,
    pub calls_per_chunk: u64,
    /// Model calls made (over restarts).
    pub calls: u64,
    pub chunks: u64,
    pub frames: u64,
    /// Exponential moving averages, milliseconds.
    pub text_ms: Option<f64>,
    pub call_ms: Option<f64>,
    pub decode_ms: Option<f64>,
    pub jpeg_ms: Option<f64>,
    /// From the start of the model call that popped a chunk to its first frame's release.
    pub latency_ms: Option<f64>,
    /// From a prompt switch's arrival to the release of the first frame of a chunk popped
    /// by a call conditioned on it.
    pub switch_latency_ms: Option<f64>,
    pub first_frame_ms: Option<f64>,
    /// Release times of recent frames, for the delivered frame rate.
    pub recent: VecDeque<Instant>,
    pub error: Option<String>,
}

pub fn ema(old: Option<f64>, new: f64) -> Option<f64> {
    Some(old.map_or(new, |o| 0.8 * o + 0.2 * new))
}

impl Stats {
    fn json(&self) -> Value {
        let fps_of = |ms: Option<f64>, frames: f64| ms.map(|m| frames * 1e3 / m.max(1e-9));
        let per_chunk = self.frames_per_chunk as f64;
        let per_call = per_chunk / self.calls_per_chunk.max(1) as f64;
        let delivered = match (self.recent.front(), self.recent.back()) {
            (Some(a), Some(b)) if self.recent.len() > 1 && b > a => {
                Some((self.recent.len() - 1) as f64 / b.duration_since(*a).as_secs_f64())
            }
            _ => None,
        };
        json!({
            "prompt": self.prompt,
            "prompt_id": self.prompt_id,
            "prompt_since_call": self.prompt_since_call,
            "negative_prompt": self.negative_prompt,
            "guidance": self.guidance,
            "seed": self.seed,
            "restarts": self.restarts,
            "width": self.width,
            "height": self.height,
            "calls": self.calls,
            "chunks": self.chunks,
            "frames": self.frames,
            "ms": {
                "text": self.text_ms, "model_call": self.call_ms,
                "decode_chunk": self.decode_ms, "jpeg_frame": self.jpeg_ms,
            },
            "fps": {
                "delivered": delivered,
                // What each stage alone could sustain in the steady state.
                "model": fps_of(self.call_ms, per_call),
                "decode": fps_of(self.decode_ms, per_chunk),
                "jpeg": fps_of(self.jpeg_ms, 1.0),
            },
            "latency_ms": self.latency_ms,
            "switch_latency_ms": self.switch_latency_ms,
            "first_frame_ms": self.first_frame_ms,
            "error": self.error,
        })
    }
}

/// One running stream. Dropping the last handle stops its threads at once (between model
/// calls) and frees its slot when the worker has dropped the engine stream.
pub struct Session {
    pub id: u64,
    pub commands: SyncSender<Command>,
    pub frames: watch::Receiver<Option<Arc<Frame>>>,
    pub stats: Arc<Mutex<Stats>>,
    pub cancel: Arc<AtomicBool>,
    pub rate: Mutex<SwitchRate>,
    /// Viewers that want JPEG; the pacer encodes only while there is one.
    pub jpeg_viewers: Arc<AtomicUsize>,
    pub viewers: AtomicUsize,
    /// Frames viewers skipped because they were slower than the frame clock.
    pub dropped: AtomicU64,
}

impl Drop for Session {
    fn drop(&mut self) {
        self.cancel.store(true, Ordering::SeqCst);
    }
}

impl Session {
    pub fn json(&self) -> Value {
        let mut v = lock(&self.stats).json();
        v["id"] = json!(self.id);
        v["viewers"] = json!(self.viewers.load(Ordering::Relaxed));
        v["dropped_frames"] = json!(self.dropped.load(Ordering::Relaxed));
        v
    }

    /// Sends a command to the worker and waits for its answer.
    pub async fn command(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<Value, String>>) -> Command,
    ) -> Result<Value, ApiError> {
        let (tx, rx) = oneshot::channel();
        match self.commands.try_send(make(tx)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                return Err(ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "the stream has commands waiting; retry shortly",
                ))
            }
            Err(TrySendError::Disconnected(_)) => return Err(self.ended()),
        }
        match rx.await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, e)),
            Err(_) => Err(self.ended()),
        }
    }

    /// The error of a stream whose worker has stopped.
    pub fn ended(&self) -> ApiError {
        let why = lock(&self.stats).error.clone();
        ApiError::new(
            StatusCode::GONE,
            format!(
                "stream {} has ended{}",
                self.id,
                why.map_or(String::new(), |e| format!(": {e}"))
            ),
        )
    }
}

pub fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panicking holder leaves figures, not invariants: keep serving them.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The engine, the settings and every live stream.
pub struct Hub {
    pub engine: Arc<Engine>,
    pub config: Config,
    slots: Arc<Semaphore>,
    sessions: Mutex<BTreeMap<u64, Weak<Session>>>,
    shared: tokio::sync::Mutex<Weak<Session>>,
    next_id: AtomicU64,
    /// Worker threads still running (a closed stream's until its engine stream is dropped).
    pub workers_alive: Arc<AtomicUsize>,
    pub viewers: AtomicUsize,
    pub started: Instant,
    /// NVML on the GPU the CUDA backend runs on, for its memory figure.
    pub gpu: Option<Mutex<crate::telemetry::Telemetry>>,
}

/// A viewer's place: counted while it lives.
pub struct ViewerGuard {
    hub: Arc<Hub>,
    pub session: Arc<Session>,
    jpeg: bool,
}

impl Drop for ViewerGuard {
    fn drop(&mut self) {
        self.hub.viewers.fetch_sub(1, Ordering::SeqCst);
        self.session.viewers.fetch_sub(1, Ordering::SeqCst);
        if self.jpeg {
            self.session.jpeg_viewers.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

impl Hub {
    pub fn new(
        engine: Arc<Engine>,
        config: Config,
        gpu: Option<crate::telemetry::Telemetry>,
    ) -> Hub {
        Hub {
            engine,
            slots: Arc::new(Semaphore::new(config.max_streams)),
            config,
            sessions: Mutex::new(BTreeMap::new()),
            shared: tokio::sync::Mutex::new(Weak::new()),
            next_id: AtomicU64::new(1),
            workers_alive: Arc::new(AtomicUsize::new(0)),
            viewers: AtomicUsize::new(0),
            started: Instant::now(),
            gpu: gpu.map(Mutex::new),
        }
    }

    /// The live sessions, oldest first.
    pub fn sessions(&self) -> Vec<Arc<Session>> {
        let mut map = lock(&self.sessions);
        map.retain(|_, w| w.strong_count() > 0);
        map.values().filter_map(Weak::upgrade).collect()
    }

    pub fn session(&self, id: u64) -> Result<Arc<Session>, ApiError> {
        lock(&self.sessions)
            .get(&id)
            .and_then(Weak::upgrade)
            .ok_or_else(|| {
                ApiError::new(
                    StatusCode::NOT_FOUND,
                    format!(
                        "no stream {id}; live streams: {:?}",
                        self.sessions().iter().map(|s| s.id).collect::<Vec<_>>()
                    ),
                )
            })
    }

    /// A place for one more viewer of `session`, or the refusal past `--max-viewers`.
    pub fn viewer(
        self: &Arc<Self>,
        session: Arc<Session>,
        jpeg: bool,
    ) -> Result<ViewerGuard, ApiError> {
        let n = self.viewers.fetch_add(1, Ordering::SeqCst);
        session.viewers.fetch_add(1, Ordering::SeqCst);
        if jpeg {
            session.jpeg_viewers.fetch_add(1, Ordering::SeqCst);
        }
        let guard = ViewerGuard {
            hub: self.clone(),
            session,
            jpeg,
        };
        if n >= self.config.max_viewers {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "all {} viewer places are taken (--max-viewers); try again later",
                    self.config.max_viewers
                ),
            ));
        }
        Ok(guard)
    }

    /// The stream a new connection watches: with `--shared` the one stream (started by its
    /// first viewer), otherwise a new one of its own.
    pub async fn open(&self, req: StreamRequest) -> Result<Arc<Session>, ApiError> {
        if !self.config.shared {
            return self.start(req).await;
        }
        let mut shared = self.shared.lock().await;
        if let Some(s) = shared.upgrade() {
            return Ok(s);
        }
        let s = self.start(req).await?;
        *shared = Arc::downgrade(&s);
        Ok(s)
    }

    /// A stream slot, waiting up to `SLOT_WAIT` for one being freed.
    async fn slot(&self) -> Result<OwnedSemaphorePermit, ApiError> {
        match tokio::time::timeout(SLOT_WAIT, self.slots.clone().acquire_owned()).await {
            Ok(Ok(p)) => Ok(p),
            _ => Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "all {n} stream slots are in use (--max-streams {n}; waited {:?}): close a \
                     stream or try again later",
                    SLOT_WAIT,
                    n = self.config.max_streams
                ),
            )),
        }
    }

    async fn start(&self, req: StreamRequest) -> Result<Arc<Session>, ApiError> {
        let prompt = req.prompt.unwrap_or_else(|| self.config.prompt.clone());
        let permit = self.slot().await?;
        let id = self.next_id.fetch_add(1, Ordering::SeqCst);
        let (cmd_tx, cmd_rx) = sync_channel(4);
        let (frame_tx, frame_rx) = watch::channel(None);
        let stats = Arc::new(Mutex::new(Stats::default()));
        let cancel = Arc::new(AtomicBool::new(false));
        let jpeg_viewers = Arc::new(AtomicUsize::new(0));
        let (ready_tx, ready_rx) = oneshot::channel();
        worker::spawn(worker::Spawn {
            id,
            engine: self.engine.clone(),
            config: self.config.clone(),
            prompt,
            seed: req.seed.or(self.config.seed),
            commands: cmd_rx,
            frames: frame_tx,
            stats: stats.clone(),
            cancel: cancel.clone(),
            jpeg_viewers: jpeg_viewers.clone(),
            permit,
            alive: self.workers_alive.clone(),
            ready: ready_tx,
        })
        .map_err(|e| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("starting the stream's threads: {e}"),
            )
        })?;
        let session = Arc::new(Session {
            id,
            commands: cmd_tx,
            frames: frame_rx,
            stats,
            cancel,
            rate: Mutex::new(SwitchRate::default()),
            jpeg_viewers,
            viewers: AtomicUsize::new(0),
            dropped: AtomicU64::new(0),
        });
        match ready_rx.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                return Err(ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("creating the stream: {e}"),
                ))
            }
            Err(_) => {
                return Err(ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "creating the stream: its worker stopped",
                ))
            }
        }
        lock(&self.sessions).insert(id, Arc::downgrade(&session));
        Ok(session)
    }
}
