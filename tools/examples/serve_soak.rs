//! A soak run of `streamdit serve`: N clients for M minutes against a running server on this
//! machine, each reconnecting every few seconds (so streams and their threads are created
//! and freed over and over) and switching prompts while it watches; the server's resident
//! memory, streams, threads and dropped frames are sampled from `/api/status` and reported.
//! Clients take turns at the three transports: WebSocket JPEG, WebSocket raw RGB, MJPEG.
//!
//! ```sh
//! streamdit serve --profile tiny --preview --max-streams 3 --listen 127.0.0.1:8090 &
//! cargo run -p streamdit-tools --example serve_soak -- --addr 127.0.0.1:8090 --clients 3 --minutes 3
//! ```
//!
//! Only loopback addresses are accepted; every loop is bounded by the deadline.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;

struct Opts {
    addr: SocketAddr,
    clients: usize,
    minutes: f64,
    churn: Duration,
    token: Option<String>,
}

fn parse() -> Result<Opts, String> {
    let mut o = Opts {
        addr: "127.0.0.1:8080".parse().unwrap(),
        clients: 3,
        minutes: 1.0,
        churn: Duration::from_secs(15),
        token: None,
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    for pair in args.chunks(2) {
        let [k, v] = pair else {
            return Err(format!("`{}` needs a value", pair[0]));
        };
        let bad = |e: &dyn std::fmt::Display| format!("{k} {v}: {e}");
        match k.as_str() {
            "--addr" => o.addr = v.parse().map_err(|e| bad(&e))?,
            "--clients" => o.clients = v.parse().map_err(|e| bad(&e))?,
            "--minutes" => o.minutes = v.parse().map_err(|e| bad(&e))?,
            "--churn-seconds" => o.churn = Duration::from_secs_f64(v.parse().map_err(|e| bad(&e))?),
            "--token" => o.token = Some(v.clone()),
            _ => return Err(format!("unknown option {k}")),
        }
    }
    if !o.addr.ip().is_loopback() {
        return Err(format!("--addr {}: only loopback addresses", o.addr));
    }
    if !(o.minutes > 0.0 && o.minutes <= 120.0) || o.clients == 0 || o.clients > 64 {
        return Err("expected 0 < --minutes <= 120 and 1 <= --clients <= 64".into());
    }
    Ok(o)
}

/// Frames, refusals and errors seen by all clients.
#[derive(Default)]
struct Counts {
    frames: AtomicU64,
    sessions: AtomicU64,
    refused: AtomicU64,
    switches: AtomicU64,
}

fn status(o: &Opts) -> Option<Value> {
    let mut s = TcpStream::connect(o.addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    let auth = o
        .token
        .as_ref()
        .map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    write!(
        s,
        "GET /api/status HTTP/1.1\r\nHost: {}\r\n{auth}Connection: close\r\n\r\n",
        o.addr
    )
    .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    serde_json::from_str(text.split_once("\r\n\r\n")?.1).ok()
}

/// One WebSocket session until `until`; switches the prompt every 3 s.
async fn ws_session(o: &Opts, c: &Counts, format: &str, until: Instant, k: usize) {
    let token = o
        .token
        .as_ref()
        .map_or(String::new(), |t| format!("&token={t}"));
    let url = format!("ws://{}/ws?format={format}&seed={k}{token}", o.addr);
    let Ok((mut ws, _)) = tokio_tungstenite::connect_async(&url).await else {
        c.refused.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_secs(1)).await;
        return;
    };
    c.sessions.fetch_add(1, Ordering::Relaxed);
    let mut switch = tokio::time::interval(Duration::from_secs(3));
    let mut n = 0;
    while Instant::now() < until {
        let left = until.saturating_duration_since(Instant::now());
        tokio::select! {
            m = tokio::time::timeout(left, ws.next()) => match m {
                Ok(Some(Ok(Message::Binary(_)))) => { c.frames.fetch_add(1, Ordering::Relaxed); }
                Ok(Some(Ok(_))) => {}
                _ => break,
            },
            _ = switch.tick() => {
                n += 1;
                let msg = format!("{{\"prompt\": \"soak prompt {k}.{n}\"}}");
                if ws.send(Message::Text(msg.into())).await.is_err() { break; }
                c.switches.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    let _ = ws.close(None).await;
}

/// One MJPEG session until `until` (counts parts by their boundary).
fn mjpeg_session(o: &Opts, c: &Counts, until: Instant) {
    let Ok(mut s) = TcpStream::connect(o.addr) else {
        return;
    };
    let token = o
        .token
        .as_ref()
        .map_or(String::new(), |t| format!("?token={t}"));
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if write!(
        s,
        "GET /stream.mjpg{token} HTTP/1.1\r\nHost: {}\r\n\r\n",
        o.addr
    )
    .is_err()
    {
        return;
    }
    let mut buf = vec![0u8; 1 << 16];
    let mut first = true;
    while Instant::now() < until {
        let Ok(n) = s.read(&mut buf) else { break };
        if n == 0 {
            break;
        }
        if first {
            first = false;
            if !buf.starts_with(b"HTTP/1.1 200") {
                c.refused.fetch_add(1, Ordering::Relaxed);
                std::thread::sleep(Duration::from_secs(1));
                return;
            }
            c.sessions.fetch_add(1, Ordering::Relaxed);
        }
        let parts = buf[..n].windows(7).filter(|w| w == b"--frame").count();
        c.frames.fetch_add(parts as u64, Ordering::Relaxed);
    }
}

fn main() {
    let o = match parse() {
        Ok(o) => Arc::new(o),
        Err(e) => {
            eprintln!("serve_soak: {e}");
            std::process::exit(2);
        }
    };
    let Some(first) = status(&o) else {
        eprintln!("serve_soak: no server answers /api/status at {}", o.addr);
        std::process::exit(1);
    };
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(o.minutes * 60.0);
    let counts = Arc::new(Counts::default());
    eprintln!(
        "serve_soak: {} clients for {} min on {} (profile {}, max {} streams), reconnecting \
         every {:?}",
        o.clients, o.minutes, o.addr, first["profile"], first["max_streams"], o.churn
    );
    let clients: Vec<_> = (0..o.clients)
        .map(|k| {
            let (o, c) = (o.clone(), counts.clone());
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                while Instant::now() < deadline {
                    let until = (Instant::now() + o.churn).min(deadline);
                    match k % 3 {
                        0 => rt.block_on(ws_session(&o, &c, "jpeg", until, k)),
                        1 => rt.block_on(ws_session(&o, &c, "rgb", until, k)),
                        _ => mjpeg_session(&o, &c, until),
                    }
                }
            })
        })
        .collect();
    let mut rss = Vec::new();
    println!("   t s   RSS MiB  streams  workers  viewers  frames  dropped  refused");
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_secs(5).min(deadline - Instant::now()));
        let Some(s) = status(&o) else { continue };
        let mib = s["memory"]["rss_bytes"].as_f64().unwrap_or(0.0) / (1 << 20) as f64;
        let dropped: u64 = s["streams"].as_array().map_or(0, |a| {
            a.iter().filter_map(|x| x["dropped_frames"].as_u64()).sum()
        });
        rss.push((start.elapsed().as_secs_f64(), mib));
        println!(
            "{:>6.0} {:>9.1} {:>8} {:>8} {:>8} {:>7} {:>8} {:>8}",
            start.elapsed().as_secs_f64(),
            mib,
            s["streams_active"],
            s["workers_alive"],
            s["viewers"],
            counts.frames.load(Ordering::Relaxed),
            dropped,
            counts.refused.load(Ordering::Relaxed)
        );
    }
    for c in clients {
        let _ = c.join();
    }
    std::thread::sleep(Duration::from_secs(2));
    let end = status(&o);
    // Flat means: the mean resident memory of the last third of the run is within 5% of
    // that of the middle third (the first third warms the allocator's per-thread arenas and
    // the prompt cache), and everything was freed at the end.
    let third = |k: f64| {
        let total = o.minutes * 60.0;
        let v: Vec<f64> = rss
            .iter()
            .filter(|(t, _)| *t >= k * total / 3.0 && *t < (k + 1.0) * total / 3.0 + 1.0)
            .map(|r| r.1)
            .collect();
        v.iter().sum::<f64>() / v.len().max(1) as f64
    };
    let (warm, last) = (third(1.0), third(2.0));
    let first = rss.first().map_or(0.0, |r| r.1);
    let max = rss.iter().map(|r| r.1).fold(0.0, f64::max);
    let drift = if warm > 0.0 {
        100.0 * (last - warm) / warm
    } else {
        0.0
    };
    println!(
        "sessions {} (refused {}), frames {}, prompt switches {}; RSS: first sample {first:.1} \
         MiB, mean of the middle third {warm:.1} MiB, of the last third {last:.1} MiB \
         ({drift:+.1}%), max {max:.1} MiB",
        counts.sessions.load(Ordering::Relaxed),
        counts.refused.load(Ordering::Relaxed),
        counts.frames.load(Ordering::Relaxed),
        counts.switches.load(Ordering::Relaxed),
    );
    if let Some(e) = &end {
        println!(
            "after the clients left: {} streams, {} workers, {} viewers",
            e["streams_active"], e["workers_alive"], e["viewers"]
        );
    }
    let freed = end
        .as_ref()
        .is_some_and(|e| e["streams_active"] == 0 && e["workers_alive"] == 0 && e["viewers"] == 0);
    if drift.abs() > 5.0 || !freed {
        println!("NOT FLAT: memory drifted or streams were not freed");
        std::process::exit(1);
    }
    println!("flat");
}
