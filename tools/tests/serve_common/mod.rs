//! Shared by the `streamdit serve` tests: a real server process on a loopback port, a plain
//! HTTP/1.1 client, and the parsing of frame headers and JPEG sizes.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

/// A `streamdit serve` process; killed when dropped.
pub struct Server {
    child: Child,
    pub addr: SocketAddr,
    /// Everything the server wrote to stderr so far (read by a thread).
    log: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Server {
    /// Starts `streamdit serve --profile tiny --backend cpu --preview --listen 127.0.0.1:0
    /// EXTRA...` and reads the bound address from its start line.
    pub fn start(extra: &[&str]) -> Server {
        Self::start_with(&["--preview"], extra)
    }

    /// Like [`Server::start`] with the TAE decoder (about a second per chunk on a CPU).
    pub fn start_tae(extra: &[&str]) -> Server {
        Self::start_with(&[], extra)
    }

    fn start_with(decoder: &[&str], extra: &[&str]) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_streamdit"))
            .args([
                "serve",
                "--profile",
                "tiny",
                "--backend",
                "cpu",
                "--listen",
                "127.0.0.1:0",
            ])
            .args(decoder)
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the streamdit binary starts");
        let stderr = child.stderr.take().unwrap();
        let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let (tx, rx) = mpsc::channel();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(rest) = line.split("serving http://").nth(1) {
                    let addr = rest.split(['/', ' ']).next().unwrap_or("").to_string();
                    let _ = tx.send(addr);
                }
                let mut l = sink.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
        let addr = match rx.recv_timeout(Duration::from_secs(120)) {
            Ok(a) => a.parse().expect("a socket address in the start line"),
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "the server did not start:\n{}",
                    log.lock().unwrap().as_str()
                );
            }
        };
        Server { child, addr, log }
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn ws_url(&self, query: &str) -> String {
        format!("ws://{}/ws{query}", self.addr)
    }

    /// `GET /api/status` (with `token` as a bearer token when given).
    pub fn status(&self, token: Option<&str>) -> Value {
        let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n"));
        let (code, body) = http(self.addr, "GET", "/api/status", auth.as_deref(), None);
        assert_eq!(code, 200, "status: {body}");
        serde_json::from_str(&body).expect("status is JSON")
    }

    /// Waits until `pred` holds for the status, or fails with the last status.
    pub fn wait_status(&self, token: Option<&str>, what: &str, pred: impl Fn(&Value) -> bool) {
        let start = Instant::now();
        loop {
            let s = self.status(token);
            if pred(&s) {
                return;
            }
            if start.elapsed() > Duration::from_secs(20) {
                panic!("{what}: not within 20 s; status {s:#}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One HTTP/1.1 request (`Connection: close`); returns the status code and the body.
/// `headers` are extra header lines, each ending in `\r\n`.
pub fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: Option<&str>,
    body: Option<&str>,
) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let body = body.unwrap_or("");
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{}Content-Type: \
         application/json\r\nContent-Length: {}\r\n\r\n{body}",
        headers.unwrap_or(""),
        body.len()
    );
    s.write_all(req.as_bytes()).unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    let text = String::from_utf8_lossy(&out).into_owned();
    let code = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("an HTTP status line: {text}"));
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    (code, body.to_string())
}

/// The frame header of the WebSocket transport.
#[derive(Debug, Clone, Copy)]
pub struct Header {
    pub format: u16,
    pub width: u32,
    pub height: u32,
    pub index: u64,
    pub call: u64,
    pub prompt_id: u64,
}

pub const HEADER_LEN: usize = 48;

pub fn parse_header(b: &[u8]) -> Header {
    assert!(b.len() >= HEADER_LEN, "a frame of {} bytes", b.len());
    assert_eq!(&b[..4], b"SDIT");
    assert_eq!(u16::from_le_bytes([b[4], b[5]]) as usize, HEADER_LEN);
    let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap());
    let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap());
    Header {
        format: u16::from_le_bytes([b[6], b[7]]),
        width: u32_at(8),
        height: u32_at(12),
        index: u64_at(16),
        call: u64_at(24),
        prompt_id: u64_at(32),
    }
}

/// `(width, height)` from a baseline JPEG's SOF0 segment.
pub fn jpeg_size(j: &[u8]) -> (u32, u32) {
    assert_eq!(&j[..2], &[0xFF, 0xD8], "a JPEG starts with SOI");
    let mut i = 2;
    while i + 9 < j.len() {
        assert_eq!(j[i], 0xFF, "a JPEG marker at {i}");
        let marker = j[i + 1];
        let len = u16::from_be_bytes([j[i + 2], j[i + 3]]) as usize;
        if marker == 0xC0 {
            let h = u16::from_be_bytes([j[i + 5], j[i + 6]]) as u32;
            let w = u16::from_be_bytes([j[i + 7], j[i + 8]]) as u32;
            return (w, h);
        }
        i += 2 + len;
    }
    panic!("no SOF0 segment in the JPEG");
}

/// A current-thread tokio runtime for a test's WebSocket clients.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}
