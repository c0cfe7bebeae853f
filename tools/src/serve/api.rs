//! The routes: the page, `GET /api/status`, `POST /api/prompt`, and the steering shared by
//! the JSON endpoint and the WebSocket.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use axum::body::to_bytes;
use axum::extract::{Request, State};
use axum::http::{header, Method, StatusCode, Uri};
use axum::middleware::from_fn_with_state;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::Deserialize;
use serde_json::{json, Value};

use super::limits::{
    self, check_guidance, check_message_size, check_prompt, json_response, ApiError,
    MAX_MESSAGE_BYTES,
};
use super::session::{lock, Command, Hub, Session};
use super::transport;

const PAGE_HTML: &str = include_str!("page.html");
const PAGE_JS: &str = include_str!("page.js");

pub fn router(hub: Arc<Hub>) -> Router {
    let api = Router::new()
        .route("/api/status", get(status))
        .route("/api/prompt", post(prompt))
        .route("/ws", get(transport::ws))
        .route("/stream.mjpg", get(transport::mjpeg))
        .route_layer(from_fn_with_state(hub.clone(), limits::guard));
    let page = Router::new()
        .route("/", get(page_html))
        .route("/page.js", get(page_js))
        .route_layer(from_fn_with_state(hub.clone(), limits::guard_page));
    api.merge(page)
        .fallback(not_found)
        .method_not_allowed_fallback(wrong_method)
        .with_state(hub)
}

async fn page_html() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        PAGE_HTML,
    )
}

async fn page_js() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        PAGE_JS,
    )
}

const ROUTES: &str =
    "GET /, GET /api/status, POST /api/prompt, GET /ws (WebSocket), GET /stream.mjpg";

async fn not_found(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!("no route {method} {}; the routes are {ROUTES}", uri.path()),
    )
}

async fn wrong_method(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("{method} {}: the routes are {ROUTES}", uri.path()),
    )
}

/// A steering request: any of a new prompt, negative prompt and guidance.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Control {
    /// Which stream (`POST /api/prompt` only; may be left out when one stream runs).
    #[serde(default)]
    pub stream: Option<u64>,
    pub prompt: Option<String>,
    pub negative_prompt: Option<String>,
    pub guidance: Option<f32>,
}

/// Checks a steering message's size and parses it.
pub fn parse_control(text: &str, what: &str) -> Result<Control, ApiError> {
    check_message_size(what, text.len())?;
    let c: Control = serde_json::from_str(text).map_err(|e| {
        ApiError::bad_request(format!(
            "{what}: expected JSON like {{\"prompt\": \"...\"}} (fields prompt, \
             negative_prompt, guidance): {e}"
        ))
    })?;
    if c.prompt.is_none() && c.negative_prompt.is_none() && c.guidance.is_none() {
        return Err(ApiError::bad_request(format!(
            "{what}: nothing to change; give prompt, negative_prompt or guidance"
        )));
    }
    Ok(c)
}

/// Applies a steering request to a stream: a prompt switch at the next model call, and a
/// negative prompt or guidance by restarting the stream (both fix the backend's batch).
pub async fn steer(session: &Session, c: Control) -> Result<Value, ApiError> {
    if let Some(p) = &c.prompt {
        check_prompt("prompt", p)?;
    }
    if let Some(p) = &c.negative_prompt {
        check_prompt("negative_prompt", p)?;
    }
    if let Some(g) = c.guidance {
        check_guidance(g)?;
    }
    lock(&session.rate).take()?;
    let mut out = json!({ "stream": session.id });
    if c.negative_prompt.is_some() || c.guidance.is_some() {
        let (negative_prompt, guidance) = (c.negative_prompt, c.guidance);
        out["restart"] = session
            .command(|reply| Command::Restart {
                negative_prompt,
                guidance,
                reply,
            })
            .await?;
    }
    if let Some(prompt) = c.prompt {
        let received = Instant::now();
        let v = session
            .command(|reply| Command::Prompt {
                prompt,
                received,
                reply,
            })
            .await?;
        out["prompt_id"] = v["prompt_id"].clone();
        out["applies_at_call"] = v["applies_at_call"].clone();
    }
    Ok(out)
}

/// `POST /api/prompt` with a JSON body.
async fn prompt(State(hub): State<Arc<Hub>>, req: Request) -> Response {
    let result = async {
        let body = to_bytes(req.into_body(), MAX_MESSAGE_BYTES)
            .await
            .map_err(|_| {
                ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("body: larger than the limit of {MAX_MESSAGE_BYTES} bytes"),
                )
            })?;
        let text = std::str::from_utf8(&body)
            .map_err(|_| ApiError::bad_request("body: not UTF-8 text"))?;
        let c = parse_control(text, "body")?;
        let session = match c.stream {
            Some(id) => hub.session(id)?,
            None => {
                let all = hub.sessions();
                match all.as_slice() {
                    [one] => one.clone(),
                    [] => {
                        return Err(ApiError::new(
                            StatusCode::NOT_FOUND,
                            "no stream is running: open the page, /ws or /stream.mjpg first",
                        ))
                    }
                    many => {
                        return Err(ApiError::bad_request(format!(
                            "several streams run: name one with \"stream\" (one of {:?})",
                            many.iter().map(|s| s.id).collect::<Vec<_>>()
                        )))
                    }
                }
            }
        };
        steer(&session, c).await
    }
    .await;
    match result {
        Ok(v) => json_response(StatusCode::OK, &v),
        Err(e) => e.into_response(),
    }
}

/// Resident memory of this process (`VmRSS`), where the system reports it.
pub fn rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line
        .trim_start_matches("VmRSS:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}

fn memory(hub: &Hub) -> Value {
    let gpu = hub
        .gpu
        .as_ref()
        .map(|t| lock(t).snapshot().memory_used_bytes);
    json!({
        "rss_bytes": rss_bytes(),
        "gpu_used_bytes": gpu.flatten(),
        "gpu": match &hub.gpu {
            Some(_) => "NVML: device memory used by every process on GPU 0",
            None => "not known (no CUDA backend or no NVML)",
        },
    })
}

/// A stream's figures with the process memory, as the page shows them.
pub fn stream_figures(hub: &Hub, session: &Session) -> Value {
    let mut v = session.json();
    v["memory"] = memory(hub);
    v
}

/// The first WebSocket message: what the page needs to draw and steer.
pub fn hello(hub: &Hub, session: &Session) -> Value {
    let p = hub.engine.profile();
    let mut v = stream_figures(hub, session);
    v["type"] = json!("hello");
    v["profile"] = json!(p.name);
    v["fps_target"] = json!(p.video.fps);
    v["cfg"] = json!(hub.config.guidance != 1.0);
    v["shared"] = json!(hub.config.shared);
    v["backend"] = json!(format!("{:?}", hub.engine.backend_choice().0).to_lowercase());
    v["limits"] = limits_json();
    v
}

fn limits_json() -> Value {
    json!({
        "prompt_bytes": limits::MAX_PROMPT_BYTES,
        "message_bytes": MAX_MESSAGE_BYTES,
        "ws_message_bytes": limits::MAX_WS_MESSAGE_BYTES,
        "switches_per_second": limits::SWITCH_RATE,
        "switch_burst": limits::SWITCH_BURST,
        "guidance": [limits::GUIDANCE_RANGE.0, limits::GUIDANCE_RANGE.1],
        "send_timeout_s": limits::SEND_TIMEOUT.as_secs(),
    })
}

/// `GET /api/status`.
async fn status(State(hub): State<Arc<Hub>>) -> Response {
    let p = hub.engine.profile();
    let (kind, why) = hub.engine.backend_choice();
    let c = &hub.config;
    let streams: Vec<Value> = hub.sessions().iter().map(|s| s.json()).collect();
    let v = json!({
        "profile": p.name,
        "fps_target": p.video.fps,
        "backend": format!("{kind:?}").to_lowercase(),
        "backend_reason": why,
        "decoder": format!("{:?}", c.decoder).to_lowercase(),
        "guidance": c.guidance,
        "cfg": c.guidance != 1.0,
        "shared": c.shared,
        "max_streams": c.max_streams,
        "max_viewers": c.max_viewers,
        "streams_active": streams.len(),
        "workers_alive": hub.workers_alive.load(Ordering::SeqCst),
        "viewers": hub.viewers.load(Ordering::SeqCst),
        "uptime_s": hub.started.elapsed().as_secs_f64(),
        "memory": memory(&hub),
        "limits": limits_json(),
        "streams": streams,
    });
    json_response(StatusCode::OK, &v)
}
