//! `streamdit serve` from outside: a real server process on a loopback port (`tiny`, CPU,
//! the preview decoder but for the MJPEG test) and real clients (tokio-tungstenite, plain HTTP/1.1 over TCP). The page in
//! a headless browser is `serve_page.rs`.

mod serve_common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use serve_common::{http, jpeg_size, parse_header, runtime, Header, Server, HEADER_LEN};
use streamdit::checkpoint::DType;
use streamdit::{BackendKind, DecoderKind, Engine, EngineParams, Profile, StreamParams};
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{connect_async, MaybeTlsStream, WebSocketStream};

type Ws = WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>;

const WAIT: Duration = Duration::from_secs(60);

async fn connect(url: &str) -> Ws {
    match connect_async(url).await {
        Ok((ws, _)) => ws,
        Err(e) => panic!("connecting {url}: {e}"),
    }
}

/// The HTTP status and body a refused WebSocket handshake was answered with.
async fn refused(url: &str) -> (u16, String) {
    match connect_async(url).await {
        Err(tungstenite::Error::Http(resp)) => {
            let body = resp
                .body()
                .as_ref()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default();
            (resp.status().as_u16(), body)
        }
        Err(e) => panic!("{url}: expected an HTTP refusal, got {e}"),
        Ok(_) => panic!("{url}: expected a refusal, the WebSocket opened"),
    }
}

/// The next message; `None` when the connection closed.
async fn next(ws: &mut Ws) -> Option<Message> {
    match tokio::time::timeout(WAIT, ws.next()).await {
        Ok(Some(Ok(Message::Close(_)))) | Ok(None) | Ok(Some(Err(_))) => None,
        Ok(Some(Ok(m))) => Some(m),
        Err(_) => panic!("no message within {WAIT:?}"),
    }
}

/// Reads until a JSON message of one of `types`; binary frames read meanwhile go to `frames`.
async fn next_json(ws: &mut Ws, types: &[&str], frames: &mut Vec<Vec<u8>>) -> Value {
    loop {
        match next(ws).await.expect("the connection stays open") {
            Message::Text(t) => {
                let v: Value = serde_json::from_str(t.as_str()).expect("JSON text messages");
                if types.contains(&v["type"].as_str().unwrap_or("")) {
                    return v;
                }
            }
            Message::Binary(b) => frames.push(b.to_vec()),
            _ => {}
        }
    }
}

async fn send(ws: &mut Ws, v: Value) {
    ws.send(Message::Text(v.to_string().into())).await.unwrap();
}

/// Sends `text` and returns the answer (`ack` or `error`).
async fn ask(ws: &mut Ws, text: String) -> Value {
    ws.send(Message::Text(text.into())).await.unwrap();
    next_json(ws, &["ack", "error"], &mut Vec::new()).await
}

fn check_rgb_frame(b: &[u8]) -> Header {
    let h = parse_header(b);
    assert_eq!(h.format, 1, "raw RGB frames");
    assert_eq!((h.width, h.height), (128, 128), "tiny's frame size");
    assert_eq!(b.len(), HEADER_LEN + 128 * 128 * 3);
    h
}

/// The frames the library makes for `prompt`, seed 7, switching to `switch.1` before model
/// call `switch.0`: the server's computation, done independently.
fn library_frames(prompt: &str, switch: Option<(u64, &str)>, count: usize) -> Vec<Vec<u8>> {
    let engine = Engine::new(EngineParams {
        profile: Profile::load("tiny").unwrap(),
        weights: streamdit::WeightsSource::Random {
            seed: 0,
            dtype: DType::F16,
        },
        backend: BackendKind::Cpu,
    })
    .unwrap();
    let mut s = engine
        .stream(StreamParams {
            prompt: prompt.into(),
            seed: Some(7),
            decoder: DecoderKind::Preview,
            ..Default::default()
        })
        .unwrap();
    let mut rgb = Vec::new();
    while rgb.len() < count * 128 * 128 * 3 {
        if let Some((at, p)) = switch {
            if s.calls() == at {
                s.set_prompt(p);
            }
        }
        if s.step().unwrap() {
            s.decode_chunk(&mut rgb).unwrap();
        }
    }
    rgb.chunks(128 * 128 * 3).map(<[u8]>::to_vec).collect()
}

#[test]
fn frames_match_the_library_and_a_prompt_switch_applies_at_the_next_model_call() {
    let server = Server::start(&[]);
    let (ack, frames) = runtime().block_on(async {
        let mut ws = connect(&server.ws_url("?format=rgb&prompt=a%20red%20fox&seed=7")).await;
        let mut raw = Vec::new();
        let hello = next_json(&mut ws, &["hello"], &mut raw).await;
        assert_eq!(hello["width"], 128, "{hello}");
        assert_eq!(hello["height"], 128);
        assert_eq!(hello["fps_target"], 16.0);
        assert_eq!(hello["format"], "rgb");
        assert_eq!(hello["seed"], 7);
        assert_eq!(hello["prompt"], "a red fox");
        while raw.len() < 4 {
            if let Some(Message::Binary(b)) = next(&mut ws).await {
                raw.push(b.to_vec());
            }
        }
        send(&mut ws, json!({"prompt": "a paper boat"})).await;
        let ack = next_json(&mut ws, &["ack", "error"], &mut raw).await;
        assert_eq!(ack["type"], "ack", "{ack}");
        let at = ack["applies_at_call"].as_u64().unwrap();
        // Frames of two chunks popped by calls conditioned on the new prompt.
        while raw.iter().filter(|b| parse_header(b).call > at).count() < 8 {
            if let Some(Message::Binary(b)) = next(&mut ws).await {
                raw.push(b.to_vec());
            }
        }
        (ack, raw)
    });
    let at = ack["applies_at_call"].as_u64().unwrap();
    assert_eq!(ack["prompt_id"], 1);
    let mut by_index = BTreeMap::new();
    for b in &frames {
        let h = check_rgb_frame(b);
        // The prompt a frame's popping call was conditioned on: the new one from call `at`.
        assert_eq!(
            h.prompt_id,
            u64::from(h.call >= at),
            "{h:?}, switch at {at}"
        );
        by_index.insert(h.index, b[HEADER_LEN..].to_vec());
    }
    let count = *by_index.keys().last().unwrap() as usize + 1;
    let switched = library_frames("a red fox", Some((at, "a paper boat")), count);
    let unswitched = library_frames("a red fox", None, count);
    let mut changed = 0;
    for (&i, got) in &by_index {
        let want = &switched[i as usize];
        let worst = got.iter().zip(want).map(|(a, b)| a.abs_diff(*b)).max();
        assert_eq!(
            worst,
            Some(0),
            "frame {i}: the server's pixels differ from the library's"
        );
        changed += usize::from(unswitched[i as usize] != *want);
    }
    assert!(
        changed >= 8,
        "the switch must change the frames after call {at} ({changed} changed)"
    );
    server.wait_status(None, "the stream ends with its socket", |s| {
        s["streams_active"] == 0 && s["workers_alive"] == 0
    });
}

#[test]
fn limits_and_bad_requests_are_refused_with_json_errors() {
    let server = Server::start(&["--token", "s3cret", "--max-streams", "1"]);
    let addr = server.addr;
    let bearer = Some("Authorization: Bearer s3cret\r\n");
    let expect = |(code, body): (u16, String), want_code: u16, want: &str| {
        assert_eq!(code, want_code, "{body}");
        let v: Value = serde_json::from_str(&body).unwrap_or_else(|_| panic!("JSON: {body}"));
        let msg = v["error"].as_str().unwrap();
        assert!(msg.contains(want), "`{msg}` should contain `{want}`");
    };
    expect(
        http(addr, "GET", "/api/status", None, None),
        401,
        "needs a token",
    );
    let wrong = Some("Authorization: Bearer nope\r\n");
    expect(
        http(addr, "GET", "/api/status", wrong, None),
        401,
        "wrong token",
    );
    assert_eq!(
        http(addr, "GET", "/api/status?token=s3cret", None, None).0,
        200
    );
    let foreign = Some("Authorization: Bearer s3cret\r\nOrigin: http://evil.example\r\n");
    expect(
        http(addr, "GET", "/api/status", foreign, None),
        403,
        "Origin",
    );
    let post = |body: &str| http(addr, "POST", "/api/prompt", bearer, Some(body));
    expect(post("not json"), 400, "expected JSON");
    expect(
        post(r#"{"prompt": "x", "colour": 1}"#),
        400,
        "unknown field `colour`",
    );
    expect(post("{}"), 400, "nothing to change");
    expect(post(&"x".repeat(5000)), 413, "4096");
    expect(post(r#"{"prompt": "x"}"#), 404, "no stream is running");
    expect(
        http(addr, "GET", "/nowhere", bearer, None),
        404,
        "no route GET /nowhere",
    );

    runtime().block_on(async {
        let (code, body) = refused(&server.ws_url("")).await;
        assert_eq!(code, 401, "{body}");
        let mut ws = connect(&server.ws_url("?token=s3cret")).await;
        let hello = next_json(&mut ws, &["hello"], &mut Vec::new()).await;
        let id = hello["id"].as_u64().unwrap();
        let (code, body) = refused(&server.ws_url("?token=s3cret")).await;
        assert_eq!(code, 503, "{body}");
        assert!(body.contains("stream slots are in use"), "{body}");
        let (code, body) = http(addr, "GET", "/stream.mjpg?token=s3cret", None, None);
        assert_eq!(code, 503, "{body}");

        let too_long = json!({"prompt": "x".repeat(1001)}).to_string();
        let e = ask(&mut ws, too_long).await;
        assert!(
            e["error"]
                .as_str()
                .unwrap()
                .contains("1001 bytes, the limit is 1000"),
            "{e}"
        );
        let e = ask(&mut ws, "y".repeat(5000)).await;
        assert!(
            e["error"]
                .as_str()
                .unwrap()
                .contains("message of 5000 bytes"),
            "{e}"
        );
        let e = ask(&mut ws, r#"{"guidance": "x"}"#.into()).await;
        assert!(
            e["error"].as_str().unwrap().contains("expected JSON"),
            "{e}"
        );
        let e = ask(&mut ws, r#"{"guidance": 99}"#.into()).await;
        assert!(e["error"].as_str().unwrap().contains("guidance"), "{e}");
        ws.send(Message::Binary(vec![1, 2, 3].into()))
            .await
            .unwrap();
        let e = next_json(&mut ws, &["error"], &mut Vec::new()).await;
        assert!(e["error"].as_str().unwrap().contains("binary"), "{e}");

        // The switch rate: eight switches at once (separate connections, checked together)
        // meet a burst of 4.
        let posts: Vec<_> = (0..8)
            .map(|k| {
                std::thread::spawn(move || {
                    let body = json!({"stream": id, "prompt": format!("p{k}")}).to_string();
                    http(addr, "POST", "/api/prompt", bearer, Some(&body))
                })
            })
            .collect();
        let mut refusals = 0;
        for p in posts {
            let (code, body) = p.join().unwrap();
            if code == 429 {
                assert!(body.contains("limited to"), "{body}");
                refusals += 1;
            } else {
                assert_eq!(code, 200, "{body}");
                assert!(body.contains("applies_at_call"), "{body}");
            }
        }
        assert!(
            refusals >= 3,
            "eight switches at once met the burst of 4 ({refusals} refused)"
        );
        let status = server.status(Some("s3cret"));
        assert_eq!(status["streams"][0]["id"], id);

        // Past the protocol limit the connection is closed.
        let _ = ws.send(Message::Text("z".repeat(70_000).into())).await;
        let mut closed = false;
        for _ in 0..1000 {
            match next(&mut ws).await {
                None => {
                    closed = true;
                    break;
                }
                Some(_) => continue,
            }
        }
        assert!(closed, "a 70 kB message must close the connection");
    });
    // The disconnect frees the stream and its worker thread, and the slot with them.
    server.wait_status(Some("s3cret"), "stream freed after disconnect", |s| {
        s["streams_active"] == 0 && s["workers_alive"] == 0
    });
    runtime().block_on(async {
        let mut ws = connect(&server.ws_url("?token=s3cret")).await;
        next_json(&mut ws, &["hello"], &mut Vec::new()).await;
    });
}

/// Reads an HTTP/1.1 response head and its chunked body until `parts` multipart parts have
/// arrived; returns the head and the parts.
fn read_mjpeg(stream: TcpStream, parts: usize) -> (String, Vec<Vec<u8>>) {
    let mut r = BufReader::new(stream);
    let mut head = String::new();
    loop {
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        if line == "\r\n" {
            break;
        }
        head.push_str(&line);
    }
    assert!(
        head.to_lowercase().contains("transfer-encoding: chunked"),
        "{head}"
    );
    let mut body = Vec::new();
    let mut found = Vec::new();
    while found.len() < parts {
        let mut size = String::new();
        r.read_line(&mut size).unwrap();
        let n = usize::from_str_radix(size.trim(), 16).expect("a chunk size");
        let mut chunk = vec![0; n + 2];
        r.read_exact(&mut chunk).unwrap();
        body.extend_from_slice(&chunk[..n]);
        // Parse whole parts off the front of the body.
        while let Some(end) = find(&body, b"\r\n\r\n") {
            let part_head = String::from_utf8_lossy(&body[..end]).into_owned();
            assert!(part_head.starts_with("--frame\r\n"), "{part_head}");
            assert!(
                part_head.contains("Content-Type: image/jpeg"),
                "{part_head}"
            );
            let len: usize = part_head
                .split("Content-Length: ")
                .nth(1)
                .and_then(|l| l.trim().parse().ok())
                .expect("a Content-Length");
            if body.len() < end + 4 + len + 2 {
                break;
            }
            found.push(body[end + 4..end + 4 + len].to_vec());
            assert_eq!(&body[end + 4 + len..end + 6 + len], b"\r\n");
            body.drain(..end + 6 + len);
        }
    }
    (head, found)
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[test]
fn mjpeg_parts_are_jpegs_of_the_frame_size_and_closing_frees_the_stream() {
    // The TAE decoder here (the other tests use the preview for speed).
    let server = Server::start_tae(&[]);
    let mut s = TcpStream::connect(server.addr).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    write!(
        s,
        "GET /stream.mjpg?prompt=waves HTTP/1.1\r\nHost: {}\r\n\r\n",
        server.addr
    )
    .unwrap();
    let (head, parts) = read_mjpeg(s.try_clone().unwrap(), 3);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.contains("multipart/x-mixed-replace; boundary=frame"),
        "{head}"
    );
    for p in &parts {
        assert_eq!(jpeg_size(p), (128, 128));
        assert_eq!(&p[p.len() - 2..], &[0xFF, 0xD9], "a JPEG ends with EOI");
    }
    let status = server.status(None);
    assert_eq!(status["streams"][0]["prompt"], "waves", "{status}");
    drop(s);
    server.wait_status(None, "MJPEG stream freed after disconnect", |s| {
        s["streams_active"] == 0 && s["workers_alive"] == 0
    });
}

#[test]
fn shared_stream_is_one_stream_that_every_viewer_sees_and_steers() {
    let server = Server::start(&["--shared"]);
    runtime().block_on(async {
        let mut a = connect(&server.ws_url("?prompt=first")).await;
        let mut b = connect(&server.ws_url("?format=rgb&prompt=ignored")).await;
        let ha = next_json(&mut a, &["hello"], &mut Vec::new()).await;
        let hb = next_json(&mut b, &["hello"], &mut Vec::new()).await;
        assert_eq!(ha["id"], hb["id"], "one stream");
        assert_eq!(
            hb["prompt"], "first",
            "the stream keeps its first viewer's prompt"
        );
        assert_eq!(ha["shared"], true);
        let status = server.status(None);
        assert_eq!(status["streams_active"], 1, "{status}");
        assert_eq!(status["viewers"], 2, "{status}");

        // B steers; A sees it.
        let ack = ask(&mut b, json!({"prompt": "second"}).to_string()).await;
        assert_eq!(ack["type"], "ack", "{ack}");
        loop {
            let s = next_json(&mut a, &["stats"], &mut Vec::new()).await;
            if s["prompt"] == "second" {
                break;
            }
        }
        // A stops reading for a while: B keeps getting frames (A can only drop its own).
        let t = Instant::now();
        let mut got = 0;
        while t.elapsed() < Duration::from_secs(3) {
            if let Some(Message::Binary(f)) = next(&mut b).await {
                check_rgb_frame(&f);
                got += 1;
            }
        }
        assert!(
            got >= 10,
            "B got {got} frames in 3 s while A was not reading"
        );
        // A still works afterwards, and gets the newest frames.
        let mut frames = Vec::new();
        while frames.is_empty() {
            next_json(&mut a, &["stats"], &mut frames).await;
        }
        let h = parse_header(frames.last().unwrap());
        assert_eq!(h.format, 0, "A asked for JPEG");
        assert_eq!(jpeg_size(&frames.last().unwrap()[HEADER_LEN..]), (128, 128));
        // Another viewer by stream id, over MJPEG.
        let id = ha["id"].as_u64().unwrap();
        let mut m = TcpStream::connect(server.addr).unwrap();
        m.set_read_timeout(Some(WAIT)).unwrap();
        let host = server.addr;
        write!(
            m,
            "GET /stream.mjpg?stream={id} HTTP/1.1\r\nHost: {host}\r\n\r\n"
        )
        .unwrap();
        let (_, parts) = read_mjpeg(m, 1);
        assert_eq!(jpeg_size(&parts[0]), (128, 128));
    });
    server.wait_status(None, "the shared stream ends with its last viewer", |s| {
        s["streams_active"] == 0 && s["workers_alive"] == 0
    });
}

#[test]
fn guidance_and_negative_prompt_restart_the_stream_and_frames_continue() {
    let server = Server::start(&["--guidance", "3", "--negative-prompt", "blurry"]);
    runtime().block_on(async {
        let mut ws = connect(&server.ws_url("?format=rgb")).await;
        let hello = next_json(&mut ws, &["hello"], &mut Vec::new()).await;
        assert_eq!(hello["cfg"], true, "{hello}");
        assert_eq!(hello["guidance"], 3.0);
        assert_eq!(hello["negative_prompt"], "blurry");
        let mut frames = Vec::new();
        while frames.is_empty() {
            next_json(&mut ws, &["stats"], &mut frames).await;
        }
        let before = parse_header(frames.last().unwrap());
        let ack = ask(
            &mut ws,
            json!({"guidance": 1.5, "negative_prompt": "dark"}).to_string(),
        )
        .await;
        assert_eq!(ack["type"], "ack", "{ack}");
        assert_eq!(ack["restart"]["restarted"], true, "{ack}");
        let at = ack["restart"]["applies_at_call"].as_u64().unwrap();
        let stats = loop {
            let s = next_json(&mut ws, &["stats"], &mut Vec::new()).await;
            if s["restarts"] == 1 {
                break s;
            }
        };
        assert_eq!(stats["guidance"], 1.5, "{stats}");
        assert_eq!(stats["negative_prompt"], "dark");
        assert_eq!(stats["prompt_since_call"], at);
        // Frames go on after the restart: later indices, calls counted on.
        let mut later = Vec::new();
        while !later.iter().any(|f: &Vec<u8>| parse_header(f).call >= at) {
            if let Some(Message::Binary(b)) = next(&mut ws).await {
                later.push(b.to_vec());
            }
        }
        let h = check_rgb_frame(later.last().unwrap());
        assert!(h.index > before.index, "{h:?} after {before:?}");
    });
}
