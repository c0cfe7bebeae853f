//! Cost of the Wan-family decoders on the CPU: parameters, FLOPs per chunk (from the op
//! lists) and measured decode time per video frame with random weights.
//!
//! ```sh
//! cargo run --release -p streamdit --features internals --example wan_decoders_cost -- [taehv|wan-vae] [WIDTH HEIGHT] [CHUNKS] [--no-run]
//! ```
//! Defaults: both decoders, 832x480, 2 chunks of 1 latent frame (the first chunk starts the
//! stream and gives 1 frame, the second gives 4; the figure per frame is the second's).
//! Timings are of whatever machine runs it; say what else ran beside it.

use std::time::Instant;

use streamdit::checkpoint::DType;
use streamdit::decoder::{Decoder, TaehvDecoder, VideoDecoder, WanVaeDecoder};
use streamdit::model::taehv::TaehvConfig;
use streamdit::model::video_ops::VideoGraph;
use streamdit::model::wan_vae::WanVaeConfig;

fn report(name: &str, g: &VideoGraph) {
    let (w, h) = g.frame_size();
    println!(
        "{name} at {w}x{h}: {:.2} M parameters, caches {:.1} MB (f32)",
        g.parameters() as f64 / 1e6,
        g.cache_elems() as f64 * 4.0 / 1e6
    );
    for (n, first) in [(1, true), (1, false), (3, true), (3, false)] {
        let frames = g.frames_out(n, first);
        let f = g.flops(n, first) as f64;
        println!(
            "  chunk of {n} latent frame(s){}: {frames} video frames, {:.1} GFLOP, {:.1} GFLOP per video frame",
            if first { ", stream start" } else { "" },
            f / 1e9,
            f / 1e9 / frames as f64
        );
    }
}

/// CPU seconds of this process so far (user + system, from /proc/self/stat, 100 ticks per
/// second), when the system has them: on a shared machine, wall time overstates the cost.
fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which ends with the last ')'): utime is field 14.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

fn run(name: &str, dec: &mut VideoDecoder, chunks: usize) {
    let g = dec.graph().clone();
    let n = g.latent_channels * g.latent_height * g.latent_width;
    let z: Vec<f32> = (0..n)
        .map(|i| ((i * 7919 % 1000) as f32 / 500.0) - 1.0)
        .collect();
    let mut out = Vec::new();
    for c in 0..chunks {
        let first = dec.at_stream_start();
        let (t, cpu0) = (Instant::now(), cpu_seconds());
        dec.decode(&z, &mut out).unwrap();
        let s = t.elapsed().as_secs_f64();
        let cpu = cpu_seconds().zip(cpu0).map(|(b, a)| b - a);
        let frames = g.frames_out(1, first);
        println!(
            "  {name} chunk {c} (1 latent frame{}): {frames} frames in {s:.2} s wall ({} CPU), {:.2} s per video frame, {:.1} GFLOP/s",
            if first { ", stream start" } else { "" },
            cpu.map_or("?".into(), |c| format!("{c:.1} s")),
            s / frames as f64,
            g.flops(1, first) as f64 / s / 1e9
        );
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let no_run = args.iter().any(|a| a == "--no-run");
    let nums: Vec<usize> = args.iter().filter_map(|a| a.parse().ok()).collect();
    let (w, h) = match nums[..] {
        [w, h, ..] => (w, h),
        _ => (832, 480),
    };
    let chunks = nums.get(2).copied().unwrap_or(2);
    let which = args
        .iter()
        .find(|a| !a.starts_with('-') && a.parse::<usize>().is_err());
    let (lh, lw) = (h / 8, w / 8);
    if which.map_or(true, |a| a == "taehv") {
        let cfg = TaehvConfig::taew2_1();
        let weights = TaehvDecoder::random_weights(&cfg, 0, DType::F16).unwrap();
        let mut dec = TaehvDecoder::new(&cfg, lh, lw, &weights).unwrap();
        report("TAEHV (taew2_1)", dec.graph());
        if !no_run {
            run("TAEHV", &mut dec, chunks);
        }
    }
    if which.map_or(true, |a| a == "wan-vae") {
        let cfg = WanVaeConfig::wan2_1();
        let weights = WanVaeDecoder::random_weights(&cfg, 0, DType::F16).unwrap();
        let mut dec = WanVaeDecoder::new(&cfg, lh, lw, &weights).unwrap();
        report("Wan 2.1 VAE decoder", dec.graph());
        if !no_run {
            run("Wan VAE", &mut dec, chunks);
        }
    }
}
