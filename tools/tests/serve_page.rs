//! The page of `streamdit serve` in a real headless Chromium, driven over the DevTools
//! protocol: it opens the page, waits for frames on the canvas and checks its pixels, types
//! a prompt and presses Enter, sees the switch arrive, and saves a screenshot
//! (`$CARGO_TARGET_TMPDIR/serve-page.png`).
//!
//! `tests/run.sh` installs Chromium from Debian's archive when it is missing and then sets
//! `STREAMDIT_REQUIRE_CHROMIUM=1`, which makes a missing browser a failure. Without it, a
//! missing browser skips this test with the reason written to the terminal.

mod serve_common;

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use serve_common::{runtime, Server};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{connect_async, MaybeTlsStream, WebSocketStream};

type Ws = WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>;

/// Written straight to the terminal: the test harness does not capture it.
fn tell(msg: &str) {
    let _ = writeln!(std::io::stderr().lock(), "{msg}");
}

fn find_chromium() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("STREAMDIT_CHROMIUM") {
        return Some(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH")?;
    [
        "chromium",
        "chromium-browser",
        "google-chrome",
        "google-chrome-stable",
    ]
    .iter()
    .flat_map(|name| std::env::split_paths(&path).map(move |d| d.join(name)))
    .find(|p| p.is_file())
}

/// A headless Chromium; killed when dropped.
struct Browser {
    child: Child,
    ws_url: String,
    _profile: PathBuf,
}

impl Browser {
    fn launch(bin: &PathBuf) -> Browser {
        let profile = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("serve-chromium-{}", std::process::id()));
        let mut child = Command::new(bin)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--hide-scrollbars",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
                "--window-size=1180,720",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg("about:blank")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", bin.display()));
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(url) = line.split("DevTools listening on ").nth(1) {
                    let _ = tx.send(url.trim().to_string());
                }
            }
        });
        let ws_url = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("Chromium prints its DevTools address");
        Browser {
            child,
            ws_url,
            _profile: profile,
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self._profile);
    }
}

/// A DevTools protocol session on one page target.
struct Cdp {
    ws: Ws,
    next_id: u64,
    session: Option<String>,
}

impl Cdp {
    async fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut msg = json!({"id": id, "method": method, "params": params});
        if let Some(s) = &self.session {
            msg["sessionId"] = json!(s);
        }
        self.ws
            .send(Message::Text(msg.to_string().into()))
            .await
            .unwrap();
        loop {
            let m = tokio::time::timeout(Duration::from_secs(60), self.ws.next())
                .await
                .unwrap_or_else(|_| panic!("{method}: no answer within 60 s"))
                .expect("the DevTools socket stays open")
                .unwrap();
            let Message::Text(t) = m else { continue };
            let v: Value = serde_json::from_str(t.as_str()).unwrap();
            if v["id"] == id {
                if let Some(e) = v.get("error") {
                    panic!("{method}: {e}");
                }
                return v["result"].clone();
            }
        }
    }

    /// Evaluates `expr` in the page and returns its value.
    async fn eval(&mut self, expr: &str) -> Value {
        let r = self
            .call(
                "Runtime.evaluate",
                json!({"expression": expr, "returnByValue": true, "awaitPromise": true}),
            )
            .await;
        if let Some(e) = r.get("exceptionDetails") {
            panic!("evaluating `{expr}`: {e}");
        }
        r["result"]["value"].clone()
    }

    /// Polls `expr` until it is true.
    async fn wait_for(&mut self, what: &str, expr: &str) {
        let start = Instant::now();
        while self.eval(expr).await != json!(true) {
            if start.elapsed() > Duration::from_secs(60) {
                let st = self.eval("JSON.stringify(window.streamdit)").await;
                panic!("{what}: not within 60 s; page state {st}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Standard base64 (the screenshot).
fn base64_decode(s: &str) -> Vec<u8> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => panic!("not base64: {c}"),
    };
    let bytes: Vec<u8> = s.bytes().filter(|&c| c != b'=').collect();
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for group in bytes.chunks(4) {
        let v: Vec<u32> = group.iter().map(|&c| u32::from(value(c))).collect();
        let n = v.iter().fold(0u32, |acc, &x| acc << 6 | x) << (6 * (4 - v.len()));
        out.extend_from_slice(&n.to_be_bytes()[1..v.len()]);
    }
    out
}

/// The canvas's pixels summarised in the page: how many are not black, how many distinct
/// colours (a flat fill has one), and a hash (to see the picture change).
const CANVAS_PIXELS: &str = r#"(() => {
  const c = document.getElementById('canvas');
  const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  let lit = 0, hash = 0; const colours = new Set();
  for (let i = 0; i < d.length; i += 4) {
    if (d[i] + d[i + 1] + d[i + 2] > 24) lit++;
    colours.add((d[i] << 16) | (d[i + 1] << 8) | d[i + 2]);
    hash = (hash * 31 + d[i] + 7 * d[i + 1] + 13 * d[i + 2]) >>> 0;
  }
  return {w: c.width, h: c.height, pixels: d.length / 4, lit, colours: colours.size, hash};
})()"#;

#[test]
fn page_shows_frames_and_switches_prompts_in_headless_chromium() {
    let Some(bin) = find_chromium() else {
        let why = "Chromium not found (chromium, chromium-browser or google-chrome on PATH, \
                   or STREAMDIT_CHROMIUM): tests/run.sh installs it with apt-get";
        if std::env::var("STREAMDIT_REQUIRE_CHROMIUM").as_deref() == Ok("1") {
            panic!("{why}");
        }
        tell(&format!(
            "SKIPPED page_shows_frames_and_switches_prompts_in_headless_chromium: {why}"
        ));
        return;
    };
    let server = Server::start(&[]);
    let browser = Browser::launch(&bin);
    let shot = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("serve-page.png");
    runtime().block_on(async {
        let (ws, _) = connect_async(&browser.ws_url).await.unwrap();
        let mut cdp = Cdp {
            ws,
            next_id: 0,
            session: None,
        };
        let target = cdp
            .call("Target.createTarget", json!({"url": "about:blank"}))
            .await;
        let attached = cdp
            .call(
                "Target.attachToTarget",
                json!({"targetId": target["targetId"], "flatten": true}),
            )
            .await;
        cdp.session = Some(attached["sessionId"].as_str().unwrap().to_string());
        cdp.call(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": 1180, "height": 720, "deviceScaleFactor": 1, "mobile": false}),
        )
        .await;
        cdp.call("Page.enable", json!({})).await;
        cdp.call("Page.navigate", json!({"url": server.url("/")}))
            .await;

        cdp.wait_for(
            "frames drawn on the canvas",
            "!!window.streamdit && window.streamdit.framesDrawn >= 5",
        )
        .await;
        let px = cdp.eval(CANVAS_PIXELS).await;
        assert_eq!(
            (px["w"].as_u64(), px["h"].as_u64()),
            (Some(128), Some(128)),
            "{px}"
        );
        let pixels = px["pixels"].as_f64().unwrap();
        assert!(
            px["lit"].as_f64().unwrap() > 0.5 * pixels,
            "the canvas is mostly dark: {px}"
        );
        assert!(
            px["colours"].as_u64().unwrap() >= 16,
            "the canvas is a flat fill: {px}"
        );
        let about = cdp
            .eval("document.getElementById('about').textContent")
            .await;
        assert!(
            about.as_str().unwrap().contains("128x128 at 16 FPS"),
            "{about}"
        );

        // Type a prompt as a person would and press Enter.
        let prompt = "a lighthouse at dusk";
        cdp.eval("document.getElementById('prompt').focus()").await;
        cdp.call("Input.insertText", json!({"text": prompt})).await;
        for kind in ["keyDown", "keyUp"] {
            cdp.call(
                "Input.dispatchKeyEvent",
                json!({"type": kind, "key": "Enter", "code": "Enter",
                       "windowsVirtualKeyCode": 13, "nativeVirtualKeyCode": 13}),
            )
            .await;
        }
        cdp.wait_for(
            "the switch acknowledged, and frames of the new prompt drawn",
            "!!window.streamdit.ack && window.streamdit.lastHeader.promptId >= 1 && \
             !!window.streamdit.stats && window.streamdit.stats.prompt === 'a lighthouse at dusk'",
        )
        .await;
        let active = cdp
            .eval("document.getElementById('active').textContent")
            .await;
        assert!(active.as_str().unwrap().contains(prompt), "{active}");
        let before = cdp.eval(CANVAS_PIXELS).await["hash"].clone();
        let drawn = cdp
            .eval("window.streamdit.framesDrawn")
            .await
            .as_u64()
            .unwrap();
        let more = format!("window.streamdit.framesDrawn >= {}", drawn + 8);
        cdp.wait_for("more frames", &more).await;
        let after = cdp.eval(CANVAS_PIXELS).await;
        assert_ne!(
            before, after["hash"],
            "the picture changes from frame to frame"
        );
        // A figure row per stage, filled in.
        let figures = cdp
            .eval("document.getElementById('figures').textContent")
            .await;
        let figures = figures.as_str().unwrap();
        for row in [
            "Delivered by the server",
            "Model stage",
            "Latency",
            "First frame",
        ] {
            assert!(figures.contains(row), "{row} in {figures}");
        }
        assert!(!figures.contains("Model stage–"), "{figures}");

        let png = cdp
            .call("Page.captureScreenshot", json!({"format": "png"}))
            .await;
        let png = base64_decode(png["data"].as_str().unwrap());
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
        std::fs::write(&shot, &png).unwrap();
    });
    let status = server.status(None);
    assert_eq!(
        status["streams"][0]["prompt"], "a lighthouse at dusk",
        "{status}"
    );
    tell(&format!("page screenshot: {}", shot.display()));
    drop(browser);
}
