//! The two threads of a stream. The worker owns the engine [`Stream`]: it applies commands
//! between model calls, runs the calls, decodes each popped chunk and hands it to the pacer
//! through a rendezvous channel (so it runs at most one chunk ahead of the frame clock). The
//! pacer encodes each frame (JPEG, off the model's thread) and releases it to the viewers at
//! the profile's frame rate through a `watch` channel (latest frame wins).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, TryRecvError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use streamdit::inspect::Schedule;
use streamdit::{Engine, Stream, StreamParams};
use tokio::sync::{oneshot, watch, OwnedSemaphorePermit};

use super::pacer::Pacer;
use super::session::{ema, lock, Command, Config, Frame, Stats};

/// Slack the worker leaves between a chunk being ready and the pacer wanting it.
const JIT_MARGIN_S: f64 = 0.02;
/// How often an idle worker looks at the cancel flag.
const IDLE_SLICE: Duration = Duration::from_millis(20);

/// Everything a new stream's threads start from.
pub struct Spawn {
    pub id: u64,
    pub engine: Arc<Engine>,
    pub config: Config,
    pub prompt: String,
    pub seed: Option<u64>,
    pub commands: Receiver<Command>,
    pub frames: watch::Sender<Option<Arc<Frame>>>,
    pub stats: Arc<Mutex<Stats>>,
    pub cancel: Arc<AtomicBool>,
    pub jpeg_viewers: Arc<AtomicUsize>,
    /// The stream slot, held until the engine stream is dropped.
    pub permit: OwnedSemaphorePermit,
    pub alive: Arc<AtomicUsize>,
    pub ready: oneshot::Sender<Result<(), String>>,
}

/// One popped chunk's frames, from the worker to the pacer.
pub struct Chunk {
    pub rgb: Vec<u8>,
    pub frames: usize,
    pub first_index: u64,
    /// Index of the model call that popped it, and the prompt that call was conditioned on.
    pub call: u64,
    pub prompt_id: u64,
    pub call_started: Instant,
    /// When the prompt switch this chunk is the first answer to arrived.
    pub switch_received: Option<Instant>,
}

/// Counts a running worker thread; dropped with the thread (or with the closure when the
/// thread could not start).
struct Alive(Arc<AtomicUsize>);

impl Alive {
    fn new(n: Arc<AtomicUsize>) -> Alive {
        n.fetch_add(1, Ordering::SeqCst);
        Alive(n)
    }
}

impl Drop for Alive {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

pub fn spawn(s: Spawn) -> std::io::Result<()> {
    let (chunk_tx, chunk_rx) = sync_channel::<Chunk>(0);
    let pacer = Pacer::new(
        chunk_rx,
        s.frames,
        s.stats.clone(),
        s.cancel.clone(),
        s.jpeg_viewers,
        s.config.jpeg_quality,
        s.engine.profile().video.fps,
    );
    std::thread::Builder::new()
        .name(format!("serve-pace-{}", s.id))
        .spawn(move || pacer.run())?;
    let alive = Alive::new(s.alive);
    let worker = Worker {
        engine: s.engine,
        config: s.config,
        commands: s.commands,
        stats: s.stats,
        cancel: s.cancel,
        chunks: chunk_tx,
        id: s.id,
    };
    let (prompt, seed, permit, ready) = (s.prompt, s.seed, s.permit, s.ready);
    std::thread::Builder::new()
        .name(format!("serve-stream-{}", s.id))
        .spawn(move || {
            let _alive = alive;
            let _permit = permit;
            let outcome = worker.run(prompt, seed, ready);
            if let Err(e) = outcome {
                eprintln!("streamdit: stream {}: {e}", worker.id);
                lock(&worker.stats).error = Some(e);
            }
            // The engine stream was dropped inside `run`; the slot goes with `_permit`.
        })?;
    Ok(())
}

struct Worker {
    id: u64,
    engine: Arc<Engine>,
    config: Config,
    commands: Receiver<Command>,
    stats: Arc<Mutex<Stats>>,
    cancel: Arc<AtomicBool>,
    chunks: std::sync::mpsc::SyncSender<Chunk>,
}

/// What a stream carries over a restart.
struct State {
    params: StreamParams,
    /// Model calls made by the streams this one replaced (restarts).
    call_offset: u64,
    prompt_id: u64,
    switch_received: Option<Instant>,
    next_frame: u64,
}

/// Why [`Worker::drive`] returned.
enum Next {
    Stop,
    Restart {
        params: StreamParams,
        reply: oneshot::Sender<Result<serde_json::Value, String>>,
    },
}

impl Worker {
    fn describe(&self, s: &Stream, p: &StreamParams) {
        let mut st = lock(&self.stats);
        st.prompt = p.prompt.clone();
        st.negative_prompt = p
            .negative_prompt
            .clone()
            .unwrap_or_else(|| self.engine.profile().run.negative_prompt.clone());
        st.guidance = s.guidance();
        st.seed = s.seed();
        (st.width, st.height) = s.frame_size();
        st.frames_per_chunk = s.frames_per_chunk();
        st.calls_per_chunk = Schedule::new(&self.engine.profile().stream).calls_per_chunk();
    }

    fn run(
        &self,
        prompt: String,
        seed: Option<u64>,
        ready: oneshot::Sender<Result<(), String>>,
    ) -> Result<(), String> {
        let params = StreamParams {
            prompt,
            negative_prompt: self.config.negative_prompt.clone(),
            seed,
            guidance: Some(self.config.guidance),
            text: None,
            decoder: self.config.decoder,
            decoder_weights: None,
        };
        let mut stream = match self.engine.stream(params.clone()) {
            Ok(s) => s,
            Err(e) => {
                let _ = ready.send(Err(e.to_string()));
                return Ok(());
            }
        };
        self.describe(&stream, &params);
        let _ = ready.send(Ok(()));
        let mut state = State {
            params,
            call_offset: 0,
            prompt_id: 0,
            switch_received: None,
            next_frame: 0,
        };
        loop {
            // `drive` drops the old stream before a new one is made: one stream's memory
            // at a time.
            match self.drive(stream, &mut state)? {
                Next::Stop => return Ok(()),
                Next::Restart { params, reply } => match self.engine.stream(params.clone()) {
                    Ok(s) => {
                        stream = s;
                        state.params = params;
                        self.describe(&stream, &state.params);
                        let mut st = lock(&self.stats);
                        st.restarts += 1;
                        st.prompt_since_call = state.call_offset;
                        let _ = reply.send(Ok(json!({
                            "stream": self.id, "restarted": true,
                            "applies_at_call": state.call_offset,
                            "guidance": st.guidance, "negative_prompt": st.negative_prompt,
                        })));
                    }
                    Err(e) => {
                        let _ = reply.send(Err(format!("restarting the stream: {e}")));
                        stream = self
                            .engine
                            .stream(state.params.clone())
                            .map_err(|e| format!("restoring the stream: {e}"))?;
                    }
                },
            }
        }
    }

    /// Runs `stream` until the stream is closed, fails, or a restart is asked for.
    fn drive(&self, mut stream: Stream, state: &mut State) -> Result<Next, String> {
        let schedule = Schedule::new(&self.engine.profile().stream);
        let calls = |s: &Stream, st: &State| st.call_offset + s.calls();
        let mut rgb = Vec::new();
        // Seconds from the start of a chunk's first model call to its decoded frames.
        let mut compute_s: Option<f64> = None;
        let mut chunk_started = Instant::now();
        // A command that woke the worker from its idle wait.
        let mut early: Option<Command> = None;
        loop {
            loop {
                let next = match early.take() {
                    Some(cmd) => Ok(cmd),
                    None => self.commands.try_recv(),
                };
                match next {
                    Ok(Command::Prompt {
                        prompt,
                        received,
                        reply,
                    }) => {
                        let at = calls(&stream, state);
                        let answer = self.switch(&mut stream, state, prompt, received, at)?;
                        let _ = reply.send(answer);
                    }
                    Ok(Command::Restart {
                        negative_prompt,
                        guidance,
                        reply,
                    }) => {
                        let mut params = state.params.clone();
                        if negative_prompt.is_some() {
                            params.negative_prompt = negative_prompt;
                        }
                        if guidance.is_some() {
                            params.guidance = guidance;
                        }
                        state.call_offset = calls(&stream, state);
                        return Ok(Next::Restart { params, reply });
                    }
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => return Ok(Next::Stop),
                }
            }
            if self.cancel.load(Ordering::SeqCst) {
                return Ok(Next::Stop);
            }
            let t = Instant::now();
            // The popping call goes through `next_latents`, which lets a device start the
            // next call while this chunk is decoded; the others are single steps, so a
            // command is applied before every model call either way.
            let popped = if schedule.step(stream.calls()).pop {
                stream.next_latents().map(|_| true)
            } else {
                stream.step()
            }
            .map_err(|e| format!("model call {}: {e}", calls(&stream, state)))?;
            {
                let mut st = lock(&self.stats);
                st.calls = calls(&stream, state);
                st.call_ms = ema(st.call_ms, t.elapsed().as_secs_f64() * 1e3);
            }
            if !popped {
                continue;
            }
            let d = Instant::now();
            rgb.clear();
            let frames = stream
                .decode_chunk(&mut rgb)
                .map_err(|e| format!("decoding chunk: {e}"))?;
            {
                let mut st = lock(&self.stats);
                st.decode_ms = ema(st.decode_ms, d.elapsed().as_secs_f64() * 1e3);
                st.chunks += 1;
            }
            let chunk = Chunk {
                rgb: std::mem::take(&mut rgb),
                frames,
                first_index: state.next_frame,
                call: calls(&stream, state) - 1,
                prompt_id: state.prompt_id,
                call_started: t,
                switch_received: state.switch_received.take(),
            };
            state.next_frame += frames as u64;
            let compute = chunk_started.elapsed().as_secs_f64();
            compute_s = Some(compute_s.map_or(compute, |c| 0.7 * c + 0.3 * compute));
            if self.chunks.send(chunk).is_err() {
                // The pacer stopped: the stream was closed.
                return Ok(Next::Stop);
            }
            // The pacer now shows this chunk for `frames / fps` seconds and wants the next
            // one then: start it just in time (with a margin) rather than at once, so the
            // next chunk, and with it a prompt switch, reaches the screen sooner.
            let show = frames as f64 / self.engine.profile().video.fps;
            let idle = show - 1.25 * compute_s.unwrap_or(show) - JIT_MARGIN_S;
            if idle > 0.0 {
                early = self.idle(idle);
            }
            chunk_started = Instant::now();
        }
    }

    /// Sleeps `seconds`, waking early when the stream is closed or with a command that
    /// arrived meanwhile.
    fn idle(&self, seconds: f64) -> Option<Command> {
        let until = Instant::now() + Duration::from_secs_f64(seconds);
        loop {
            let now = Instant::now();
            if now >= until || self.cancel.load(Ordering::SeqCst) {
                return None;
            }
            match self.commands.recv_timeout(IDLE_SLICE.min(until - now)) {
                Ok(cmd) => return Some(cmd),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return None,
            }
        }
    }

    /// Switches the prompt before call `at`; the answer for the requester. An encoder
    /// error is answered and the old prompt kept.
    fn switch(
        &self,
        stream: &mut Stream,
        state: &mut State,
        prompt: String,
        received: Instant,
        at: u64,
    ) -> Result<Result<serde_json::Value, String>, String> {
        let t = Instant::now();
        stream.set_prompt(&prompt);
        if let Err(e) = stream.encode_pending() {
            stream.set_prompt(&state.params.prompt);
            stream
                .encode_pending()
                .map_err(|e| format!("restoring the prompt: {e}"))?;
            return Ok(Err(format!("prompt: {e}")));
        }
        state.prompt_id += 1;
        state.params.prompt = prompt.clone();
        state.switch_received = Some(received);
        let mut st = lock(&self.stats);
        st.text_ms = ema(st.text_ms, t.elapsed().as_secs_f64() * 1e3);
        st.prompt = prompt;
        st.prompt_id = state.prompt_id;
        st.prompt_since_call = at;
        Ok(Ok(json!({
            "stream": self.id, "prompt_id": state.prompt_id, "applies_at_call": at,
        })))
    }
}
