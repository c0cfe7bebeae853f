//! Issue 21's verdicts: tests that only a working engine with the trained `tiny-shapes` model
//! passes. The stream is measured on its decoded frames, as `train/shapes.py`'s `measure`
//! does: the pixels far from the asked background are the shape; their mean colour must be
//! nearest to the asked colour, their circular-mean centroid must move the asked way at about
//! the world's 3 pixels a frame, and the rest of the frame must be the asked background.
//!
//! `judge_rejects_random_weights` runs in every tier: the engine's random weights fail the
//! verdict, so the verdict can fail. The others need the trained checkpoint (`run.weights` of
//! `train/tiny-shapes.toml`, or `STREAMDIT_TINY_SHAPES=F`) and are ignored until it lands
//! (`cargo test --test tiny_shapes -- --ignored` runs them on a candidate export).

mod common;

use std::f64::consts::PI;
use std::path::PathBuf;

use streamdit::checkpoint::DType;
use streamdit::{BackendKind, Engine, EngineParams, Profile, StreamParams, WeightsSource};

/// train/shapes.py's small world: colour names and 8-bit sRGB values.
const COLOURS: [(&str, [f64; 3]); 4] = [
    ("red", [220.0, 40.0, 40.0]),
    ("green", [40.0, 190.0, 60.0]),
    ("blue", [40.0, 80.0, 230.0]),
    ("yellow", [240.0, 220.0, 40.0]),
];
const BACKGROUNDS: [(&str, [f64; 3]); 2] = [
    ("black", [12.0, 12.0, 12.0]),
    ("white", [235.0, 235.0, 235.0]),
];
/// Pixels per video frame (train/shapes.py `SPEED`).
const SPEED: f64 = 3.0;
/// A shape colour stands this far from its background (train/shapes.py `MIN_CONTRAST`); a
/// pixel farther than half of it from the background counts as shape.
const MIN_CONTRAST: f64 = 120.0;
const SIDE: usize = 128;
const FRAME: usize = SIDE * SIDE * 3;

fn rgb(table: &[(&str, [f64; 3])], name: &str) -> [f64; 3] {
    table.iter().find(|(n, _)| *n == name).unwrap().1
}

fn dist(a: [f64; 3], b: [f64; 3]) -> f64 {
    ((a[0] - b[0]).powi(2) + (a[1] - b[1]).powi(2) + (a[2] - b[2]).powi(2)).sqrt()
}

/// What one frame shows: the shape region's mean colour, circular-mean centroid and area, and
/// the frame's median colour per channel (the background: a shape covers under a tenth).
struct Measure {
    colour: [f64; 3],
    centroid: (f64, f64),
    area: usize,
    median: [f64; 3],
}

fn measure(frame: &[u8], background: [f64; 3]) -> Measure {
    let mut sum = [0.0; 3];
    let mut hist = [[0usize; 256]; 3];
    let (mut sx, mut cx, mut sy, mut cy) = (0.0, 0.0, 0.0, 0.0);
    let mut area = 0;
    for (i, p) in frame.chunks_exact(3).enumerate() {
        (0..3).for_each(|k| hist[k][p[k] as usize] += 1);
        let c = [p[0] as f64, p[1] as f64, p[2] as f64];
        if dist(c, background) > MIN_CONTRAST / 2.0 {
            let (x, y) = ((i % SIDE) as f64, (i / SIDE) as f64);
            let (ax, ay) = (2.0 * PI * (x + 0.5) / 128.0, 2.0 * PI * (y + 0.5) / 128.0);
            sx += ax.sin();
            cx += ax.cos();
            sy += ay.sin();
            cy += ay.cos();
            (0..3).for_each(|k| sum[k] += c[k]);
            area += 1;
        }
    }
    let median = hist.map(|h| {
        let mut seen = 0;
        h.iter()
            .position(|&n| {
                seen += n;
                2 * seen > SIDE * SIDE
            })
            .unwrap() as f64
    });
    let circ = |s: f64, c: f64| (s.atan2(c) / (2.0 * PI) * 128.0 - 0.5).rem_euclid(128.0);
    let n = area.max(1) as f64;
    Measure {
        colour: sum.map(|v| v / n),
        centroid: (circ(sx, cx), circ(sy, cy)),
        area,
        median,
    }
}

fn wrapped_step(a: f64, b: f64) -> f64 {
    (b - a + 64.0).rem_euclid(128.0) - 64.0
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        f64::NAN
    } else {
        v[v.len() / 2]
    }
}

/// Whether `frames` (RGB8, 128x128) show "a `colour` shape moving `motion` on a `background`
/// background": `Err` says which part failed, with the figures.
/// - colour: in at least 85% of the frames a shape of 150 to 4,000 pixels (a ball of the world
///   covers 450 to 1,250, a square 580 to 1,600) whose mean colour is nearest to `colour`
///   among the world's four;
/// - background: the median over frames of the frame's median colour is within 40 of it;
/// - motion: the median centroid step between consecutive frames is 1.5 to 4.5 pixels the
///   asked way and under 1 pixel across it.
fn judge(frames: &[u8], colour: &str, motion: &str, background: &str) -> Result<(), String> {
    let bg = rgb(&BACKGROUNDS, background);
    let ms: Vec<Measure> = frames.chunks_exact(FRAME).map(|f| measure(f, bg)).collect();
    let n = ms.len();
    let nearest = |c: [f64; 3]| {
        COLOURS
            .iter()
            .min_by(|a, b| dist(a.1, c).total_cmp(&dist(b.1, c)))
            .unwrap()
            .0
    };
    let good = |m: &Measure| (150..=4000).contains(&m.area) && nearest(m.colour) == colour;
    let right = ms.iter().filter(|m| good(m)).count();
    let mut why = Vec::new();
    if right * 100 < n * 85 {
        let first_bad = ms.iter().position(|m| !good(m)).unwrap();
        let m = &ms[first_bad];
        why.push(format!(
            "colour: {right} of {n} frames show a {colour} shape of 150 to 4000 pixels; \
             frame {first_bad}: {} pixels, mean colour {:.0?} (nearest {})",
            m.area,
            m.colour,
            nearest(m.colour)
        ));
    }
    let rest = (0..3).map(|k| median(ms.iter().map(|m| m.median[k]).collect()));
    let rest: Vec<f64> = rest.collect();
    if dist([rest[0], rest[1], rest[2]], bg) > 40.0 {
        why.push(format!(
            "background: median {rest:.0?}, asked {background} {bg:?}"
        ));
    }
    let (dx, dy) = match motion {
        "left" => (-1.0, 0.0),
        "right" => (1.0, 0.0),
        "up" => (0.0, -1.0),
        "down" => (0.0, 1.0),
        m => panic!("unknown motion {m}"),
    };
    let steps: Vec<(f64, f64)> = ms
        .windows(2)
        .filter(|p| p[0].area >= 150 && p[1].area >= 150)
        .map(|p| {
            let sx = wrapped_step(p[0].centroid.0, p[1].centroid.0);
            let sy = wrapped_step(p[0].centroid.1, p[1].centroid.1);
            (sx * dx + sy * dy, (sx * dy - sy * dx).abs())
        })
        .collect();
    let along = median(steps.iter().map(|s| s.0).collect());
    let across = median(steps.iter().map(|s| s.1).collect());
    if !(1.5..=4.5).contains(&along) || !(0.0..1.0).contains(&across) {
        why.push(format!(
            "motion: median step {along:.2} px/frame {motion} (asked {SPEED}) and {across:.2} \
             across, over {} frame pairs",
            steps.len()
        ));
    }
    if why.is_empty() {
        Ok(())
    } else {
        Err(why.join("; "))
    }
}

fn profile() -> Profile {
    Profile::load(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/train/tiny-shapes.toml"
    ))
    .unwrap()
}

/// The trained checkpoint: `STREAMDIT_TINY_SHAPES`, else the profile's `run.weights`.
fn checkpoint() -> PathBuf {
    if let Ok(p) = std::env::var("STREAMDIT_TINY_SHAPES") {
        return PathBuf::from(p);
    }
    let p = PathBuf::from(
        profile()
            .run
            .weights
            .clone()
            .expect("tiny-shapes names run.weights"),
    );
    assert!(
        p.is_file(),
        "the trained checkpoint {} is not there (issue 21)",
        p.display()
    );
    p
}

fn engine(weights: WeightsSource, backend: BackendKind) -> Engine {
    Engine::new(EngineParams {
        profile: profile(),
        weights,
        backend,
    })
    .unwrap()
}

fn trained(backend: BackendKind) -> Engine {
    engine(WeightsSource::File(checkpoint()), backend)
}

fn params(prompt: &str, seed: u64) -> StreamParams {
    StreamParams {
        prompt: prompt.into(),
        seed: Some(seed),
        ..Default::default()
    }
}

/// The first `frames` video frames of a text-to-video stream.
fn generate(engine: &Engine, prompt: &str, seed: u64, frames: usize) -> Vec<u8> {
    let mut stream = engine.stream(params(prompt, seed)).unwrap();
    let mut out = Vec::new();
    while out.len() < frames * FRAME {
        stream.next_frames(&mut out).unwrap();
    }
    out.truncate(frames * FRAME);
    out
}

fn caption(colour: &str, shape: &str, motion: &str, background: &str) -> String {
    format!("a {colour} {shape} moving {motion} on a {background} background")
}

/// The verdict can fail: the engine's random weights (the same profile) fail it for every
/// prompt the other tests ask for.
#[test]
fn judge_rejects_random_weights() {
    let e = engine(
        WeightsSource::Random {
            seed: 0,
            dtype: DType::F16,
        },
        BackendKind::Cpu,
    );
    for (c, s, m, b) in [
        ("red", "ball", "right", "black"),
        ("yellow", "square", "up", "black"),
        ("blue", "ball", "left", "white"),
    ] {
        let frames = generate(&e, &caption(c, s, m, b), 11, 32);
        let v = judge(&frames, c, m, b);
        assert!(
            v.is_err(),
            "random weights passed `{}`",
            caption(c, s, m, b)
        );
        println!(
            "random weights, {}: {}",
            caption(c, s, m, b),
            v.unwrap_err()
        );
    }
}

/// A clip rendered as train/shapes.py renders it: a ball of radius 16 from (40, 64).
fn render_ball(colour: &str, background: &str, motion: (f64, f64), frames: usize) -> Vec<u8> {
    let (fg, bg) = (rgb(&COLOURS, colour), rgb(&BACKGROUNDS, background));
    let mut out = Vec::with_capacity(frames * FRAME);
    for t in 0..frames {
        let cx = (40.0 + motion.0 * SPEED * t as f64).rem_euclid(128.0);
        let cy = (64.0 + motion.1 * SPEED * t as f64).rem_euclid(128.0);
        for y in 0..SIDE {
            for x in 0..SIDE {
                let px = (x as f64 + 0.5 - cx + 64.0).rem_euclid(128.0) - 64.0;
                let py = (y as f64 + 0.5 - cy + 64.0).rem_euclid(128.0) - 64.0;
                let a = (0.5 - (px.hypot(py) - 16.0)).clamp(0.0, 1.0);
                out.extend((0..3).map(|k| (bg[k] + a * (fg[k] - bg[k])).round() as u8));
            }
        }
    }
    out
}

#[test]
fn the_renderer_passes_the_verdict() {
    // The verdict's own check: a clip drawn the way the world draws it passes, and fails
    // for another colour, another motion and another background.
    let v = render_ball("red", "black", (1.0, 0.0), 32);
    judge(&v, "red", "right", "black").unwrap();
    assert!(judge(&v, "green", "right", "black").is_err());
    assert!(judge(&v, "red", "left", "black").is_err());
    assert!(judge(&v, "red", "right", "white").is_err());
}

#[test]
#[ignore = "needs the trained tiny-shapes checkpoint (issue 21)"]
fn colour_and_motion_follow_the_prompt() {
    let e = trained(BackendKind::Cpu);
    let mut fails = Vec::new();
    for (c, s, m, b) in [
        ("red", "ball", "right", "black"),
        ("yellow", "square", "up", "black"),
        ("blue", "ball", "left", "white"),
        ("green", "square", "down", "white"),
    ] {
        let cap = caption(c, s, m, b);
        match judge(&generate(&e, &cap, 11, 64), c, m, b) {
            Ok(()) => println!("{cap}: pass"),
            Err(why) => fails.push(format!("{cap}: {why}")),
        }
    }
    assert!(fails.is_empty(), "{}", fails.join("\n"));
}

#[test]
#[ignore = "needs the trained tiny-shapes checkpoint (issue 21)"]
fn a_prompt_switch_takes_effect_within_the_buffer() {
    let e = trained(BackendKind::Cpu);
    let (a, b) = (
        caption("red", "ball", "right", "black"),
        caption("blue", "ball", "right", "black"),
    );
    let mut stream = e.stream(params(&a, 5)).unwrap();
    let mut out = Vec::new();
    while out.len() < 32 * FRAME {
        stream.next_frames(&mut out).unwrap();
    }
    let before = out.len() / FRAME;
    stream.set_prompt(&b);
    // The buffer holds 8 latent frames (32 video frames): a frame popped 32 frames after
    // the switch was denoised under the new prompt from pure noise.
    while out.len() < (before + 64) * FRAME {
        stream.next_frames(&mut out).unwrap();
    }
    judge(&out[..before * FRAME], "red", "right", "black").expect("before the switch");
    judge(
        &out[(before + 32) * FRAME..(before + 64) * FRAME],
        "blue",
        "right",
        "black",
    )
    .expect("from the buffer's latency after the switch");
}

#[test]
#[ignore = "needs the trained tiny-shapes checkpoint (issue 21)"]
fn the_emulated_cuda_backend_gives_the_same_verdict() {
    let e = trained(BackendKind::Emu);
    let cap = caption("red", "ball", "right", "black");
    judge(&generate(&e, &cap, 11, 32), "red", "right", "black").unwrap();
}

#[test]
#[ignore = "needs the trained tiny-shapes checkpoint (issue 21)"]
fn video_to_video_recolours_and_keeps_the_motion() {
    let e = trained(BackendKind::Cpu);
    let input = render_ball("red", "black", (0.0, 1.0), 96);
    let mut stream = e
        .video_stream(params(&caption("blue", "ball", "down", "black"), 3), 0.7)
        .unwrap();
    let (mut at, mut out) = (0, Vec::new());
    while out.len() < 64 * FRAME {
        let need = stream.input_frames_needed();
        stream
            .push_video_frames(&input[at * FRAME..(at + need) * FRAME])
            .unwrap();
        at += need;
        stream.next_frames(&mut out).unwrap();
    }
    judge(&out[..64 * FRAME], "blue", "down", "black").unwrap();
}
