//! How frames leave the server: the binary WebSocket frame (a fixed header, then a JPEG or
//! raw RGB8) with the steering messages on the same socket, and `/stream.mjpg`
//! (`multipart/x-mixed-replace`, one JPEG per part) for `<img>`, VLC and ffplay.
//!
//! The WebSocket frame header, little-endian, `HEADER_LEN` bytes:
//! `magic "SDIT" | u16 header length | u16 format (0 JPEG, 1 RGB8) | u32 width | u32 height |
//! u64 frame index | u64 model call that popped the frame's chunk | u64 prompt id of that
//! call | u64 milliseconds since the stream started`.

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::extract::rejection::QueryRejection;
use axum::extract::ws::{
    rejection::WebSocketUpgradeRejection, Message, WebSocket, WebSocketUpgrade,
};
use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{json, Value};

use super::api::{hello, parse_control, steer};
use super::limits::{check_prompt, ApiError, MAX_WS_MESSAGE_BYTES, SEND_TIMEOUT};
use super::session::{Frame, Hub, Session, StreamRequest, ViewerGuard};

pub const MAGIC: &[u8; 4] = b"SDIT";
pub const HEADER_LEN: usize = 48;
/// Steering messages of one WebSocket waiting for their answers at once.
const MAX_IN_FLIGHT: usize = 4;
/// How often a WebSocket viewer is sent its stream's figures.
const STATS_EVERY: std::time::Duration = std::time::Duration::from_millis(500);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameFormat {
    Jpeg = 0,
    Rgb = 1,
}

/// What the header says about a frame.
#[derive(Debug, Clone, Copy)]
pub struct FrameMeta {
    pub index: u64,
    pub call: u64,
    pub prompt_id: u64,
    pub width: u32,
    pub height: u32,
    pub time_ms: u64,
}

/// The header followed by `payload`, as one WebSocket message.
pub fn frame_message(format: FrameFormat, m: &FrameMeta, payload: &[u8]) -> Bytes {
    let mut b = Vec::with_capacity(HEADER_LEN + payload.len());
    b.extend_from_slice(MAGIC);
    b.extend_from_slice(&(HEADER_LEN as u16).to_le_bytes());
    b.extend_from_slice(&(format as u16).to_le_bytes());
    b.extend_from_slice(&m.width.to_le_bytes());
    b.extend_from_slice(&m.height.to_le_bytes());
    for v in [m.index, m.call, m.prompt_id, m.time_ms] {
        b.extend_from_slice(&v.to_le_bytes());
    }
    debug_assert_eq!(b.len(), HEADER_LEN);
    b.extend_from_slice(payload);
    Bytes::from(b)
}

/// Baseline JPEG of an RGB8 frame (4:2:0 below quality 90).
pub fn encode_jpeg(rgb: &[u8], w: usize, h: usize, quality: u8) -> Result<Vec<u8>, String> {
    let (Ok(w16), Ok(h16)) = (u16::try_from(w), u16::try_from(h)) else {
        return Err(format!(
            "JPEG: a {w}x{h} frame is larger than 65535 pixels a side"
        ));
    };
    let mut out = Vec::with_capacity(w * h / 4);
    jpeg_encoder::Encoder::new(&mut out, quality)
        .encode(rgb, w16, h16, jpeg_encoder::ColorType::Rgb)
        .map_err(|e| format!("JPEG encoding a {w}x{h} frame: {e}"))?;
    Ok(out)
}

/// The query of `/ws` and `/stream.mjpg`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamQuery {
    /// Start a new stream with this prompt (ignored when joining a running stream).
    prompt: Option<String>,
    seed: Option<u64>,
    /// `jpeg` (default) or `rgb` (raw RGB8; WebSocket only).
    format: Option<String>,
    /// Watch the running stream with this id instead of starting one.
    stream: Option<u64>,
    /// Read by the token check.
    #[allow(dead_code)]
    token: Option<String>,
}

fn query_error(e: QueryRejection) -> ApiError {
    ApiError::bad_request(format!("query: {}", e.body_text()))
}

/// The session a viewer watches and its place among the viewers.
async fn join(hub: &Arc<Hub>, q: &StreamQuery, jpeg: bool) -> Result<ViewerGuard, ApiError> {
    if let Some(p) = &q.prompt {
        check_prompt("prompt", p)?;
    }
    let session = match q.stream {
        Some(id) => hub.session(id)?,
        None => {
            hub.open(StreamRequest {
                prompt: q.prompt.clone(),
                seed: q.seed,
            })
            .await?
        }
    };
    hub.viewer(session, jpeg)
}

/// Counts the frames a viewer skipped between two it was sent.
fn count_dropped(session: &Session, last: &mut Option<u64>, index: u64) {
    if let Some(l) = *last {
        if index > l + 1 {
            session.dropped.fetch_add(index - l - 1, Ordering::Relaxed);
        }
    }
    *last = Some(index);
}

/// `GET /ws`: a stream over a WebSocket.
pub async fn ws(
    State(hub): State<Arc<Hub>>,
    query: Result<Query<StreamQuery>, QueryRejection>,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let result = async {
        let Query(q) = query.map_err(query_error)?;
        let upgrade = upgrade.map_err(|e| {
            ApiError::bad_request(format!("/ws needs a WebSocket upgrade: {}", e.body_text()))
        })?;
        let format = match q.format.as_deref() {
            None | Some("jpeg") => FrameFormat::Jpeg,
            Some("rgb") => FrameFormat::Rgb,
            Some(f) => {
                return Err(ApiError::bad_request(format!(
                    "format `{f}`: expected jpeg or rgb"
                )))
            }
        };
        let viewer = join(&hub, &q, format == FrameFormat::Jpeg).await?;
        Ok(upgrade
            .max_message_size(MAX_WS_MESSAGE_BYTES)
            .max_frame_size(MAX_WS_MESSAGE_BYTES)
            .on_upgrade(move |socket| run_ws(socket, hub, viewer, format)))
    }
    .await;
    result.unwrap_or_else(IntoResponse::into_response)
}

async fn send_json(socket: &mut WebSocket, v: Value) -> bool {
    let send = socket.send(Message::Text(v.to_string().into()));
    matches!(tokio::time::timeout(SEND_TIMEOUT, send).await, Ok(Ok(())))
}

async fn run_ws(mut socket: WebSocket, hub: Arc<Hub>, viewer: ViewerGuard, format: FrameFormat) {
    let session = viewer.session.clone();
    let mut hello = hello(&hub, &session);
    hello["format"] = json!(if format == FrameFormat::Jpeg {
        "jpeg"
    } else {
        "rgb"
    });
    if !send_json(&mut socket, hello).await {
        return;
    }
    let mut frames = session.frames.clone();
    // The newest frame at once (a viewer joining a running stream), then each new one.
    frames.mark_changed();
    let mut last = None;
    let mut tick = tokio::time::interval(STATS_EVERY);
    let (replies_tx, mut replies) = tokio::sync::mpsc::channel::<Value>(MAX_IN_FLIGHT);
    let mut in_flight = 0;
    loop {
        tokio::select! {
            changed = frames.changed() => {
                if changed.is_err() {
                    let e = session.ended();
                    let _ = send_json(&mut socket, json!({"type": "error", "error": e.message})).await;
                    break;
                }
                let frame: Option<Arc<Frame>> = frames.borrow_and_update().clone();
                let Some(frame) = frame else { continue };
                let bytes = match format {
                    FrameFormat::Jpeg => frame.ws_jpeg.clone(),
                    FrameFormat::Rgb => Some(frame.ws_rgb.clone()),
                };
                // A frame encoded before this viewer asked for JPEG has none: wait for the next.
                let Some(bytes) = bytes else { continue };
                count_dropped(&session, &mut last, frame.index);
                let send = socket.send(Message::Binary(bytes));
                if !matches!(tokio::time::timeout(SEND_TIMEOUT, send).await, Ok(Ok(()))) {
                    break;
                }
            }
            msg = socket.recv() => match msg {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => break,
                Some(Ok(Message::Text(text))) => {
                    // Answered from a task of its own, so frames keep flowing while the
                    // worker gets to the command (up to one model call).
                    let reply = match parse_control(text.as_str(), "message") {
                        Ok(_) if in_flight >= MAX_IN_FLIGHT => Some(ApiError::new(
                            StatusCode::TOO_MANY_REQUESTS,
                            format!("{MAX_IN_FLIGHT} requests are waiting for answers; wait for one"),
                        ).json()),
                        Ok(c) => {
                            in_flight += 1;
                            let (session, tx) = (session.clone(), replies_tx.clone());
                            tokio::spawn(async move {
                                let v = match steer(&session, c).await {
                                    Ok(mut v) => { v["type"] = json!("ack"); v }
                                    Err(e) => { let mut v = e.json(); v["type"] = json!("error"); v }
                                };
                                let _ = tx.send(v).await;
                            });
                            None
                        }
                        Err(e) => Some(e.json()),
                    };
                    if let Some(mut v) = reply {
                        v["type"] = json!("error");
                        if !send_json(&mut socket, v).await {
                            break;
                        }
                    }
                }
                Some(Ok(Message::Binary(_))) => {
                    let e = json!({"type": "error", "error": "binary messages are not accepted: \
                        send JSON text such as {\"prompt\": \"...\"}"});
                    if !send_json(&mut socket, e).await {
                        break;
                    }
                }
                Some(Ok(_)) => {}
            },
            Some(v) = replies.recv() => {
                in_flight -= 1;
                if !send_json(&mut socket, v).await {
                    break;
                }
            }
            _ = tick.tick() => {
                let mut v = super::api::stream_figures(&hub, &session);
                v["type"] = json!("stats");
                if !send_json(&mut socket, v).await {
                    break;
                }
            }
        }
    }
    // Dropping `viewer` (and with the last handle the session) stops the stream's threads.
    drop(viewer);
}

/// An MJPEG viewer's hold on its stream. A watchdog lets go of the stream when the client
/// stops taking frames for `SEND_TIMEOUT` (the connection itself stays until the client or
/// the kernel closes it, but no longer holds a stream slot).
struct Lease {
    viewer: Mutex<Option<ViewerGuard>>,
    /// Milliseconds after `start` when the body last produced a frame.
    last_pull_ms: AtomicU64,
    start: Instant,
}

/// `GET /stream.mjpg`: the stream as `multipart/x-mixed-replace` JPEG parts.
pub async fn mjpeg(
    State(hub): State<Arc<Hub>>,
    query: Result<Query<StreamQuery>, QueryRejection>,
) -> Response {
    let result = async {
        let Query(q) = query.map_err(query_error)?;
        if let Some(f) = q.format.as_deref().filter(|f| *f != "jpeg") {
            return Err(ApiError::bad_request(format!(
                "format `{f}`: /stream.mjpg sends only jpeg"
            )));
        }
        let viewer = join(&hub, &q, true).await?;
        Ok(mjpeg_response(viewer))
    }
    .await;
    result.unwrap_or_else(IntoResponse::into_response)
}

fn mjpeg_response(viewer: ViewerGuard) -> Response {
    let session = viewer.session.clone();
    let lease = Arc::new(Lease {
        viewer: Mutex::new(Some(viewer)),
        last_pull_ms: AtomicU64::new(0),
        start: Instant::now(),
    });
    let watchdog = lease.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
        loop {
            tick.tick().await;
            if Arc::strong_count(&watchdog) == 1 {
                return; // the body is gone
            }
            let idle = watchdog.start.elapsed().as_millis() as u64
                - watchdog.last_pull_ms.load(Ordering::Relaxed);
            if idle > SEND_TIMEOUT.as_millis() as u64 {
                super::session::lock(&watchdog.viewer).take();
                return;
            }
        }
    });
    let mut frames = session.frames.clone();
    frames.mark_changed();
    drop(session);
    let parts = futures_util::stream::unfold(
        (lease, frames, None::<u64>),
        |(lease, mut frames, mut last)| async move {
            loop {
                frames.changed().await.ok()?;
                let frame = frames.borrow_and_update().clone();
                let Some(jpeg) = frame.as_ref().and_then(|f| f.ws_jpeg.clone()) else {
                    continue;
                };
                let index = frame.map_or(0, |f| f.index);
                {
                    let held = super::session::lock(&lease.viewer);
                    let session = &held.as_ref()?.session;
                    count_dropped(session, &mut last, index);
                }
                let jpeg = jpeg.slice(HEADER_LEN..);
                let mut part = format!(
                    "--frame\r\nContent-Type: image/jpeg\r\nContent-Length: {}\r\n\r\n",
                    jpeg.len()
                )
                .into_bytes();
                part.extend_from_slice(&jpeg);
                part.extend_from_slice(b"\r\n");
                let now = lease.start.elapsed().as_millis() as u64;
                lease.last_pull_ms.store(now, Ordering::Relaxed);
                return Some((
                    Ok::<_, Infallible>(Bytes::from(part)),
                    (lease, frames, last),
                ));
            }
        },
    );
    (
        StatusCode::OK,
        [
            (
                header::CONTENT_TYPE,
                "multipart/x-mixed-replace; boundary=frame",
            ),
            (header::CACHE_CONTROL, "no-cache, no-store"),
        ],
        Body::from_stream(parts),
    )
        .into_response()
}
