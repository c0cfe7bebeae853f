//! What the server accepts from the network: the bearer token, the Host and Origin checks,
//! the size limits, the prompt-switch rate, and the JSON error every refusal is answered with.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::session::Hub;
use std::sync::Arc;

/// Longest prompt or negative prompt accepted, in bytes of UTF-8.
pub const MAX_PROMPT_BYTES: usize = 1000;
/// Largest JSON body of `POST /api/prompt` and largest WebSocket text message answered with
/// a JSON error; anything larger is refused with a message naming both sizes.
pub const MAX_MESSAGE_BYTES: usize = 4096;
/// Largest WebSocket message or frame the protocol layer reads at all: past this the
/// connection is closed (code 1009) before the message is buffered whole.
pub const MAX_WS_MESSAGE_BYTES: usize = 64 * 1024;
/// Prompt switches per stream: a bucket of this many, refilled at `SWITCH_RATE` per second.
pub const SWITCH_BURST: f64 = 4.0;
pub const SWITCH_RATE: f64 = 2.0;
/// Guidance scales accepted from the network: the engine's own range.
pub const GUIDANCE_RANGE: (f32, f32) = streamdit::GUIDANCE_RANGE;
/// A frame a viewer has not taken in this long ends its connection (a client that stopped
/// reading must not hold a stream for ever).
pub const SEND_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a new stream waits for a slot before it is refused: a stream whose client just
/// left frees its slot once the server notices (an MJPEG client's on the next frame it
/// fails to send) and its worker ends the model call in flight.
pub const SLOT_WAIT: Duration = Duration::from_secs(2);

/// A refusal: an HTTP status and a message naming the problem, sent as
/// `{"error": message, "status": code}`.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
        }
    }
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        Self::new(StatusCode::BAD_REQUEST, message)
    }
    pub fn json(&self) -> serde_json::Value {
        json!({ "error": self.message, "status": self.status.as_u16() })
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        json_response(self.status, &self.json())
    }
}

/// A JSON body with its content type.
pub fn json_response(status: StatusCode, v: &serde_json::Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        v.to_string(),
    )
        .into_response()
}

/// Checks a prompt (or negative prompt) from the network.
pub fn check_prompt(field: &str, prompt: &str) -> Result<(), ApiError> {
    if prompt.len() > MAX_PROMPT_BYTES {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "{field}: {} bytes, the limit is {MAX_PROMPT_BYTES}",
                prompt.len()
            ),
        ));
    }
    if prompt
        .chars()
        .any(|c| c.is_control() && c != '\n' && c != '\t')
    {
        return Err(ApiError::bad_request(format!(
            "{field}: control characters are not accepted"
        )));
    }
    Ok(())
}

pub fn check_guidance(g: f32) -> Result<(), ApiError> {
    let (lo, hi) = GUIDANCE_RANGE;
    if !(g.is_finite() && (lo..=hi).contains(&g)) {
        return Err(ApiError::bad_request(format!(
            "guidance: expected a number in [{lo}, {hi}], found {g}"
        )));
    }
    Ok(())
}

/// Checks the size of a message before it is parsed.
pub fn check_message_size(what: &str, len: usize) -> Result<(), ApiError> {
    if len > MAX_MESSAGE_BYTES {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("{what} of {len} bytes: the limit is {MAX_MESSAGE_BYTES}"),
        ));
    }
    Ok(())
}

/// The prompt-switch rate of one stream: a token bucket.
#[derive(Debug)]
pub struct SwitchRate {
    tokens: f64,
    at: Instant,
}

impl Default for SwitchRate {
    fn default() -> Self {
        SwitchRate {
            tokens: SWITCH_BURST,
            at: Instant::now(),
        }
    }
}

impl SwitchRate {
    /// Takes one switch, or says how long until one is allowed.
    pub fn take(&mut self) -> Result<(), ApiError> {
        let now = Instant::now();
        let dt = now.duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + dt * SWITCH_RATE).min(SWITCH_BURST);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return Ok(());
        }
        let wait_ms = ((1.0 - self.tokens) / SWITCH_RATE * 1e3).ceil();
        Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            format!(
                "prompt switches are limited to {SWITCH_RATE} per second per stream (bursts of \
                 {SWITCH_BURST}); retry in {wait_ms} ms"
            ),
        ))
    }
}

/// Compares in time independent of where the strings first differ.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The token of a request: `Authorization: Bearer T`, else the `token` query parameter.
fn request_token(req: &Request) -> Option<String> {
    if let Some(v) = req.headers().get(header::AUTHORIZATION) {
        let v = v.to_str().ok()?;
        return v.strip_prefix("Bearer ").map(|t| t.trim().to_string());
    }
    let query = req.uri().query()?;
    query.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == "token").then(|| percent_decode(v))
    })
}

/// Decodes `%XX` escapes and `+` of a query value; invalid escapes are kept as they are.
pub fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' => match b.get(i + 1..i + 3).and_then(hex_byte) {
                Some(v) => {
                    out.push(v);
                    i += 2;
                }
                None => out.push(b'%'),
            },
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex_byte(pair: &[u8]) -> Option<u8> {
    let digit = |c: u8| (c as char).to_digit(16);
    Some((digit(pair[0])? * 16 + digit(pair[1])?) as u8)
}

/// Whether `host` (a Host header or an Origin's authority, with an optional port) names this
/// machine: `localhost`, or an IP literal (a DNS name that resolves here is what a DNS
/// rebinding attack looks like).
fn names_loopback_or_ip(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host, |(h, _)| h),
    };
    name.eq_ignore_ascii_case("localhost") || name.parse::<IpAddr>().is_ok()
}

/// The Host and Origin checks: a browser page from another site may not drive the server
/// (cross-site WebSocket hijacking), and without a token a loopback server answers only
/// requests addressed to `localhost` or an IP (DNS rebinding).
fn check_origin(headers: &HeaderMap, token_required: bool) -> Result<(), ApiError> {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    if !token_required && !names_loopback_or_ip(host) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!(
                "Host `{host}`: without --token the server answers only requests to localhost \
                 or an IP address"
            ),
        ));
    }
    if let Some(origin) = headers.get(header::ORIGIN) {
        let origin = origin.to_str().unwrap_or("");
        let authority = origin.split_once("://").map_or("", |(_, a)| a);
        if authority != host {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                format!("Origin `{origin}` is not this server (`{host}`)"),
            ));
        }
    }
    Ok(())
}

/// Middleware of the API and stream routes: the Host/Origin checks and the bearer token.
pub async fn guard(State(hub): State<Arc<Hub>>, req: Request, next: Next) -> Response {
    let token = hub.config.token.as_deref();
    if let Err(e) = check_origin(req.headers(), token.is_some()) {
        return e.into_response();
    }
    if let Some(expected) = token {
        match request_token(&req) {
            Some(t) if same_secret(t.as_bytes(), expected.as_bytes()) => {}
            Some(_) => {
                return ApiError::new(StatusCode::UNAUTHORIZED, "wrong token").into_response()
            }
            None => {
                return ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "this server needs a token: `Authorization: Bearer TOKEN`, or `?token=TOKEN` \
                     for a WebSocket or an <img>",
                )
                .into_response()
            }
        }
    }
    next.run(req).await
}

/// Middleware of the page routes: only the Host/Origin checks (the page holds no secret; it
/// passes its own `?token=` on to the stream it opens).
pub async fn guard_page(State(hub): State<Arc<Hub>>, req: Request, next: Next) -> Response {
    match check_origin(req.headers(), hub.config.token.is_some()) {
        Ok(()) => next.run(req).await,
        Err(e) => e.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_decoding_never_panics_and_decodes() {
        assert_eq!(percent_decode("a%20b+c"), "a b c");
        assert_eq!(percent_decode("%"), "%");
        assert_eq!(percent_decode("%4"), "%4");
        assert_eq!(percent_decode("%zz%41"), "%zzA");
        assert_eq!(percent_decode("%C3%A9"), "é");
        assert_eq!(percent_decode("%ff"), "\u{fffd}");
    }

    #[test]
    fn hosts() {
        for ok in [
            "localhost:8080",
            "127.0.0.1:80",
            "[::1]:8080",
            "10.0.0.2",
            "LOCALHOST",
        ] {
            assert!(names_loopback_or_ip(ok), "{ok}");
        }
        for bad in ["evil.example:8080", "", "localhost.evil.example"] {
            assert!(!names_loopback_or_ip(bad), "{bad}");
        }
    }

    #[test]
    fn switch_rate_refuses_past_the_burst() {
        let mut r = SwitchRate::default();
        for _ in 0..SWITCH_BURST as usize {
            r.take().unwrap();
        }
        let e = r.take().unwrap_err();
        assert_eq!(e.status, StatusCode::TOO_MANY_REQUESTS);
        assert!(e.message.contains("retry in"), "{}", e.message);
    }

    #[test]
    fn prompts() {
        check_prompt("prompt", "a fox\nin snow").unwrap();
        let long = "x".repeat(MAX_PROMPT_BYTES + 1);
        assert!(check_prompt("prompt", &long)
            .unwrap_err()
            .message
            .contains("1001 bytes"));
        assert!(check_prompt("prompt", "a\u{0}b").is_err());
        assert!(check_guidance(f32::NAN).is_err());
        check_guidance(5.0).unwrap();
    }
}
