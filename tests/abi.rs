//! The C ABI from C: `tests/abi/abi_test.c` is compiled with the system C compiler against
//! `include/streamdit.h` and linked with the built `libstreamdit.so`; it streams three chunks
//! of `tiny` (switching the prompt), which must equal the Rust API's frames, and checks every
//! error path. The header must agree with the library: every declared function exported,
//! every struct of the same size and field offsets. Under valgrind memcheck the program
//! must run with no invalid access and no definite leak (required when `CI=true`).
//! `tests/abi/v2v_test.c` does the same for video-to-video (`streamdit_stream_push_frames`),
//! `tests/abi/wan_v2v_test.c` for a Wan profile whose input ends mid-chunk.

use std::mem::{offset_of, size_of};
use std::path::{Path, PathBuf};
use std::process::Command;

use streamdit::abi::{EngineParamsC, GeometryC, StreamParamsC};
use streamdit::checkpoint::DType;
use streamdit::{
    BackendKind, DecoderKind, Engine, EngineParams, Profile, StreamParams, WeightsSource,
};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `target/<profile>/deps`, where cargo writes `libstreamdit.so` beside this test. (Only a
/// `cargo build` of the library itself copies it up to `target/<profile>`; a fresh
/// `cargo test` leaves it in `deps/`.)
fn lib_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let deps = exe.parent().unwrap().to_path_buf();
    let dir = deps.parent().unwrap().to_path_buf();
    // The cdylib beside the test may be stale when only some targets were rebuilt, so
    // build it with this test's profile and target dir. The build resolves features exactly
    // as `cargo test --workspace` (tests/run.sh) does: then it reuses the library unit the
    // tests linked and is a no-op, where `cargo build -p streamdit --lib` resolves other
    // features for shared dependencies (memchr, serde_core, smallvec, ...) and recompiled
    // most of them, minutes on a 2-core CI machine.
    let profile = dir.file_name().unwrap().to_string_lossy().into_owned();
    let mut cargo = Command::new(env!("CARGO"));
    cargo
        .args(["test", "--locked", "--workspace", "--no-run", "--quiet"])
        .env("CARGO_TARGET_DIR", dir.parent().unwrap())
        .current_dir(repo());
    if profile == "release" {
        cargo.arg("--release");
    }
    let status = cargo.status().unwrap();
    assert!(status.success(), "cargo test --workspace --no-run failed");
    assert!(
        deps.join("libstreamdit.so").exists(),
        "no libstreamdit.so in {}",
        deps.display()
    );
    deps
}

fn temp(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("streamdit-abi-{}-{name}", std::process::id()))
}

/// Compiles the C program `source` (relative to the repository) against the header and the
/// library, warnings as errors.
fn compile(lib: &Path, source: &str, tag: &str) -> PathBuf {
    let exe = temp(&format!("abi_test-{tag}"));
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let out = Command::new(&cc)
        .arg("-std=c99")
        .arg("-Wall")
        .arg("-Wextra")
        .arg("-Werror")
        .arg("-g")
        .arg("-I")
        .arg(repo().join("include"))
        .arg(repo().join(source))
        .arg("-o")
        .arg(&exe)
        .arg("-L")
        .arg(lib)
        .arg(format!("-Wl,-rpath,{}", lib.display()))
        .arg("-lstreamdit")
        .arg("-lm")
        .output()
        .unwrap_or_else(|e| panic!("running the C compiler `{cc}`: {e}"));
    assert!(
        out.status.success(),
        "{cc} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    exe
}

/// The frames of the C program's stream, through the Rust API.
fn rust_frames(profile: &str) -> Vec<u8> {
    let engine = Engine::new(EngineParams {
        profile: Profile::load(profile).unwrap(),
        weights: WeightsSource::Random {
            seed: 3,
            dtype: DType::F16,
        },
        backend: BackendKind::Cpu,
    })
    .unwrap();
    let mut stream = engine
        .stream(StreamParams {
            prompt: "a red kite over the sea".into(),
            seed: Some(11),
            ..Default::default()
        })
        .unwrap();
    let mut frames = Vec::new();
    for chunk in 0..3 {
        if chunk == 2 {
            stream.set_prompt("a blue whale");
        }
        stream.next_frames(&mut frames).unwrap();
    }
    frames
}

fn layout(stdout: &str, name: &str) -> Vec<usize> {
    let line = stdout
        .lines()
        .find(|l| l.starts_with(&format!("layout {name} ")))
        .unwrap_or_else(|| panic!("no layout line for {name}:\n{stdout}"));
    line.split_whitespace()
        .skip(2)
        .map(|v| v.parse().unwrap())
        .collect()
}

struct Run {
    frames: Vec<u8>,
    stdout: String,
}

fn run(exe: &Path, tag: &str, profile: &str, wrapper: Option<&[&str]>) -> Run {
    let frames_path = temp(&format!("{tag}-frames.rgb"));
    let corrupt = temp(&format!("{tag}-corrupt.safetensors"));
    std::fs::write(
        &corrupt,
        b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\":[1,2,3]}   ",
    )
    .unwrap();
    let mut cmd = match wrapper {
        Some(w) => {
            let mut c = Command::new(w[0]);
            c.args(&w[1..]).arg(exe);
            c
        }
        None => Command::new(exe),
    };
    let out = cmd
        .arg(&frames_path)
        .arg(&corrupt)
        .arg(profile)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "abi_test failed ({:?}):\n{stdout}\n{stderr}",
        out.status
    );
    assert!(stdout.contains("failures 0"), "{stdout}");
    let frames = std::fs::read(&frames_path).unwrap();
    std::fs::remove_file(&frames_path).unwrap();
    std::fs::remove_file(&corrupt).unwrap();
    std::fs::remove_file(exe).unwrap();
    Run { frames, stdout }
}

#[test]
fn c_program_streams_the_same_frames_and_checks_every_error() {
    let lib = lib_dir();
    let exe = compile(&lib, "tests/abi/abi_test.c", "plain");
    let r = run(&exe, "plain", "tiny", None);
    println!("{}", r.stdout);

    assert_eq!(
        layout(&r.stdout, "engine_params"),
        [
            size_of::<EngineParamsC>(),
            offset_of!(EngineParamsC, profile),
            offset_of!(EngineParamsC, checkpoint),
            offset_of!(EngineParamsC, random_seed),
            offset_of!(EngineParamsC, backend),
            offset_of!(EngineParamsC, device_index),
            offset_of!(EngineParamsC, log),
            offset_of!(EngineParamsC, log_user_data),
        ]
    );
    assert_eq!(
        layout(&r.stdout, "stream_params"),
        [
            size_of::<StreamParamsC>(),
            offset_of!(StreamParamsC, prompt),
            offset_of!(StreamParamsC, negative_prompt),
            offset_of!(StreamParamsC, seed),
            offset_of!(StreamParamsC, use_seed),
            offset_of!(StreamParamsC, guidance),
            offset_of!(StreamParamsC, decoder),
        ]
    );
    assert_eq!(
        layout(&r.stdout, "geometry"),
        [
            size_of::<GeometryC>(),
            offset_of!(GeometryC, width),
            offset_of!(GeometryC, height),
            offset_of!(GeometryC, frames_per_chunk),
            offset_of!(GeometryC, pixel_format),
            offset_of!(GeometryC, bytes_per_frame),
            offset_of!(GeometryC, bytes_per_chunk),
            offset_of!(GeometryC, fps),
        ]
    );
    let want = rust_frames("tiny");
    assert_eq!(r.frames.len(), want.len(), "bytes of three chunks");
    assert!(
        r.frames == want,
        "the C stream's frames differ from the Rust API's"
    );
}

/// Every function the header declares is exported by the library, and every exported
/// `streamdit_*` function is declared.
#[test]
fn header_and_library_export_the_same_functions() {
    let header = std::fs::read_to_string(repo().join("include/streamdit.h")).unwrap();
    let mut declared: Vec<String> = header
        .split(|c: char| !(c.is_alphanumeric() || c == '_'))
        .zip(
            header
                .split(|c: char| !(c.is_alphanumeric() || c == '_'))
                .skip(1),
        )
        .filter(|(name, _)| name.starts_with("streamdit_"))
        .map(|(name, _)| name.to_string())
        .filter(|name| header.contains(&format!("{name}(")))
        .collect();
    declared.sort();
    declared.dedup();
    let out = Command::new("nm")
        .args(["-D", "--defined-only"])
        .arg(lib_dir().join("libstreamdit.so"))
        .output()
        .expect("nm (binutils) is needed to list the library's symbols");
    let mut exported: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().last())
        .filter(|s| s.starts_with("streamdit_"))
        .map(str::to_string)
        .collect();
    exported.sort();
    exported.dedup();
    assert!(declared.len() >= 15, "{declared:?}");
    assert_eq!(declared, exported);
}

/// The same program under valgrind memcheck: no invalid read or write, no use of
/// uninitialised values, no definitely or indirectly lost block. It streams the `micro`
/// profile (`tests/abi/micro.toml`, one block of width 64): every code path of a `tiny`
/// call, at a size valgrind runs in seconds (a `tiny` run takes about 15 minutes there).
#[test]
fn c_program_is_clean_under_valgrind() {
    let has_valgrind = Command::new("valgrind").arg("--version").output().is_ok();
    if !has_valgrind {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI=true and valgrind is missing (install Debian's valgrind package)"
        );
        println!("skipped: valgrind not found");
        return;
    }
    let exe = compile(&lib_dir(), "tests/abi/abi_test.c", "valgrind");
    let micro = repo().join("tests/abi/micro.toml");
    let micro = micro.to_str().unwrap();
    let r = run(
        &exe,
        "valgrind",
        micro,
        Some(&[
            "valgrind",
            "--quiet",
            "--error-exitcode=99",
            "--leak-check=full",
            "--errors-for-leak-kinds=definite,indirect",
            "--show-leak-kinds=definite,indirect",
        ]),
    );
    // Valgrind's virtual CPU has no AVX-512, so the GEMMs run the gemm crate's AVX2/FMA
    // kernels there and the AVX-512 ones natively: a different summation order, the same
    // function. Measured: 4 of 294 912 bytes one level apart. Allowed: one level, on at most
    // 1 byte in 1000; a wrong code path moves far more.
    let native = rust_frames(micro);
    assert_eq!(r.frames.len(), native.len(), "frame bytes under valgrind");
    let (mut worst, mut differing) = (0u8, 0usize);
    for (a, b) in r.frames.iter().zip(&native) {
        worst = worst.max(a.abs_diff(*b));
        differing += usize::from(a != b);
    }
    assert!(
        worst <= 1 && differing * 1000 <= native.len(),
        "frames under valgrind differ from the native run: {differing} of {} bytes, worst by \
         {worst} levels (allowed: 1 level on at most 0.1% of bytes)",
        native.len()
    );
}

/// The examples build and run: the C one writes a playable Y4M, the Python one streams
/// through ctypes.
#[test]
fn examples_build_and_run() {
    let lib = lib_dir();
    let exe = compile(&lib, "examples/c/stream.c", "stream-example");
    let y4m = temp("example.y4m");
    let out = Command::new(&exe)
        .arg("a paper boat")
        .arg("8")
        .arg(&y4m)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bytes = std::fs::read(&y4m).unwrap();
    assert!(bytes.starts_with(b"YUV4MPEG2 W128 H128 F16:1"));
    let frame = 6 + 3 * 128 * 128;
    let header = bytes.iter().position(|&b| b == b'\n').unwrap() + 1;
    assert_eq!(bytes.len(), header + 8 * frame);
    std::fs::remove_file(&y4m).unwrap();
    std::fs::remove_file(&exe).unwrap();

    let python = Command::new("python3")
        .arg(repo().join("examples/python/stream.py"))
        .args(["a paper boat", "1"])
        .env("STREAMDIT_LIB", lib.join("libstreamdit.so"))
        .output();
    match python {
        Ok(out) => {
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success(),
                "{stdout}{}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(stdout.contains("chunk 0: 8 frames 128x128"), "{stdout}");
        }
        Err(e) => println!("python3 not runnable ({e}): the Python example was not run"),
    }
}

/// The Wan family by profile name through the C ABI: `wan-tiny` with the preview decoder
/// streams the Rust API's frames; CUDA and the TAE decoder are named errors.
#[test]
fn c_program_streams_wan_tiny_by_profile_name() {
    use streamdit::DecoderKind;
    let lib = lib_dir();
    let exe = compile(&lib, "tests/abi/wan_test.c", "wan");
    let frames_path = temp("wan-frames.rgb");
    let out = Command::new(&exe).arg(&frames_path).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success() && stdout.contains("failures 0"),
        "wan_test failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got = std::fs::read(&frames_path).unwrap();
    std::fs::remove_file(&frames_path).unwrap();
    std::fs::remove_file(&exe).unwrap();
    let engine = Engine::new(EngineParams {
        profile: Profile::load("wan-tiny").unwrap(),
        weights: WeightsSource::Random {
            seed: 3,
            dtype: DType::F16,
        },
        backend: BackendKind::Cpu,
    })
    .unwrap();
    let mut stream = engine
        .stream(StreamParams {
            prompt: "a red kite over the sea".into(),
            seed: Some(11),
            decoder: DecoderKind::Preview,
            ..Default::default()
        })
        .unwrap();
    let mut want = Vec::new();
    for chunk in 0..3 {
        if chunk == 2 {
            stream.set_prompt("a blue whale");
        }
        stream.next_frames(&mut want).unwrap();
    }
    assert_eq!(got.len(), 3 * 8 * 64 * 64 * 3);
    assert!(got == want, "C and Rust streams differ");
}

/// Byte `c` of pixel `(x, y)` of input frame `t`, as `input_byte` of `tests/abi/v2v_test.c`.
fn input_byte(t: u64, y: u64, x: u64, c: u64) -> u8 {
    let v = 3 * x + 5 * y + 7 * t + 50 * c + ((x * y + t) % 13) * 9;
    (v & 255) as u8
}

/// The C program's video-to-video stream through the Rust API: strength 0.6, three chunks,
/// the input frames each chunk asks for pushed before it.
fn rust_v2v_frames(profile: &str) -> Vec<u8> {
    let engine = Engine::new(EngineParams {
        profile: Profile::load(profile).unwrap(),
        weights: WeightsSource::Random {
            seed: 3,
            dtype: DType::F16,
        },
        backend: BackendKind::Cpu,
    })
    .unwrap();
    let mut stream = engine
        .video_stream(
            StreamParams {
                prompt: "a red kite over the sea".into(),
                seed: Some(11),
                ..Default::default()
            },
            0.6,
        )
        .unwrap();
    let (w, h) = stream.frame_size();
    let (mut frames, mut pushed) = (Vec::new(), 0u64);
    for _ in 0..3 {
        let need = stream.input_frames_needed() as u64;
        let mut rgb = Vec::new();
        for t in pushed..pushed + need {
            for y in 0..h as u64 {
                for x in 0..w as u64 {
                    rgb.extend((0..3).map(|c| input_byte(t, y, x, c)));
                }
            }
        }
        stream.push_video_frames(&rgb).unwrap();
        pushed += need;
        stream.next_frames(&mut frames).unwrap();
    }
    frames
}

/// Runs the C video-to-video program on `profile` (under `wrapper`, e.g. valgrind) and
/// returns its frames.
fn run_v2v(tag: &str, profile: &str, wrapper: Option<&[&str]>) -> Vec<u8> {
    let exe = compile(&lib_dir(), "tests/abi/v2v_test.c", tag);
    let frames_path = temp(&format!("{tag}-v2v-frames.rgb"));
    let mut cmd = match wrapper {
        Some(w) => {
            let mut c = Command::new(w[0]);
            c.args(&w[1..]).arg(&exe);
            c
        }
        None => Command::new(&exe),
    };
    // What a text-to-video stream of the profile needs on the host: the limit at which
    // the program checks that video-to-video (its encoder too) is refused.
    let t2v_bytes = Profile::load(profile).unwrap().memory_need().stream_bytes;
    let out = cmd
        .arg(&frames_path)
        .arg(profile)
        .arg(t2v_bytes.to_string())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success() && stdout.contains("failures 0"),
        "v2v_test failed ({:?}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{stdout}");
    let frames = std::fs::read(&frames_path).unwrap();
    std::fs::remove_file(&frames_path).unwrap();
    std::fs::remove_file(&exe).unwrap();
    frames
}

/// Video-to-video from C (`streamdit_stream_create_video`, `streamdit_stream_push_frames`,
/// `streamdit_stream_input_frames_needed`): every error path is a named status, a host
/// memory limit that fits text-to-video refuses video-to-video, and three chunks of `tiny` edited from a synthetic input equal the Rust API's bytes.
#[test]
fn c_program_streams_video_to_video_like_the_rust_api() {
    let got = run_v2v("v2v", "tiny", None);
    let want = rust_v2v_frames("tiny");
    assert_eq!(got.len(), 3 * 8 * 128 * 128 * 3, "bytes of three chunks");
    assert!(
        got == want,
        "the C video-to-video frames differ from the Rust API's"
    );
}

/// The video-to-video program under valgrind memcheck on `micro` (with its TAE encoder):
/// no invalid access, no use of uninitialised values, no definite or indirect leak; the
/// frames within the AVX2-vs-AVX-512 allowance of `c_program_is_clean_under_valgrind`
/// (measured: 7 of 294 912 bytes one level apart). About 4 minutes on a 2-core machine,
/// so in the full tier (`STREAMDIT_FULL=1`); the text-to-video program covers the shared
/// paths under valgrind in the default tier.
#[test]
fn c_video_to_video_is_clean_under_valgrind() {
    if std::env::var("STREAMDIT_FULL").as_deref() != Ok("1") {
        println!("skipped: the full tier (STREAMDIT_FULL=1) runs it");
        return;
    }
    if Command::new("valgrind").arg("--version").output().is_err() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI=true and valgrind is missing (install Debian's valgrind package)"
        );
        println!("skipped: valgrind not found");
        return;
    }
    let micro = repo().join("tests/abi/micro.toml");
    let micro = micro.to_str().unwrap();
    let got = run_v2v(
        "v2v-valgrind",
        micro,
        Some(&[
            "valgrind",
            "--quiet",
            "--error-exitcode=99",
            "--leak-check=full",
            "--errors-for-leak-kinds=definite,indirect",
            "--show-leak-kinds=definite,indirect",
        ]),
    );
    let native = rust_v2v_frames(micro);
    assert_eq!(got.len(), native.len(), "frame bytes under valgrind");
    let (mut worst, mut differing) = (0u8, 0usize);
    for (a, b) in got.iter().zip(&native) {
        worst = worst.max(a.abs_diff(*b));
        differing += usize::from(a != b);
    }
    println!(
        "valgrind vs native: {differing} of {} bytes differ, worst by {worst} levels",
        native.len()
    );
    assert!(
        worst <= 1 && differing * 1000 <= native.len(),
        "frames under valgrind differ from the native run: {differing} of {} bytes, worst by \
         {worst} levels (allowed: 1 level on at most 0.1% of bytes)",
        native.len()
    );
}

/// The C Wan program's stream through the Rust API: `wan-tiny` at strength 0.7, the `n`
/// input frames of `input_byte` pushed at once, the input ended, chunks until one is empty.
fn rust_wan_v2v_frames(n: u64) -> Vec<u8> {
    rust_wan_v2v_frames_with(n, DecoderKind::Tae, false)
}

/// [`rust_wan_v2v_frames`] with `decoder` and adaptive noise when `adaptive`.
fn rust_wan_v2v_frames_with(n: u64, decoder: DecoderKind, adaptive: bool) -> Vec<u8> {
    let engine = Engine::new(EngineParams {
        profile: Profile::load("wan-tiny").unwrap(),
        weights: WeightsSource::Random {
            seed: 3,
            dtype: DType::F16,
        },
        backend: BackendKind::Cpu,
    })
    .unwrap();
    let mut stream = engine
        .video_stream(
            StreamParams {
                prompt: "a red kite over the sea".into(),
                seed: Some(11),
                decoder,
                ..Default::default()
            },
            0.7,
        )
        .unwrap();
    if adaptive {
        stream.set_adaptive_noise().unwrap();
    }
    let (w, h) = stream.frame_size();
    let mut rgb = Vec::new();
    for t in 0..n {
        for y in 0..h as u64 {
            for x in 0..w as u64 {
                rgb.extend((0..3).map(|c| input_byte(t, y, x, c)));
            }
        }
    }
    stream.push_video_frames(&rgb).unwrap();
    assert_eq!(stream.end_input().unwrap().frames, n);
    let mut frames = Vec::new();
    for _ in 0..8 {
        if stream.next_frames(&mut frames).unwrap() == 0 {
            break;
        }
    }
    frames
}

/// Runs `tests/abi/wan_v2v_test.c` on `n` input frames (under `wrapper`); its frames and
/// its stdout.
fn run_wan_v2v(tag: &str, n: u64, wrapper: Option<&[&str]>) -> (Vec<u8>, String) {
    run_wan_v2v_with(tag, n, wrapper, "")
}

/// [`run_wan_v2v`] with the program's OPTIONS (`wan-vae`, `adaptive`, comma-separated).
fn run_wan_v2v_with(
    tag: &str,
    n: u64,
    wrapper: Option<&[&str]>,
    options: &str,
) -> (Vec<u8>, String) {
    let lib = lib_dir();
    let exe = compile(&lib, "tests/abi/wan_v2v_test.c", tag);
    let frames_path = temp(&format!("{tag}-wan-v2v-frames.rgb"));
    let mut cmd = match wrapper {
        Some(w) => {
            let mut c = Command::new(w[0]);
            c.args(&w[1..]).arg(&exe);
            c
        }
        None => Command::new(&exe),
    };
    // The library just built comes first: cargo's LD_LIBRARY_PATH also names
    // `target/<profile>`, where an older `cargo build` may have left a stale copy that would
    // win over the rpath.
    let path = std::env::var("LD_LIBRARY_PATH").unwrap_or_default();
    let out = cmd
        .env("LD_LIBRARY_PATH", format!("{}:{path}", lib.display()))
        .arg(&frames_path)
        .arg(n.to_string())
        .args((!options.is_empty()).then_some(options))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success() && stdout.contains("failures 0"),
        "wan_v2v_test failed ({:?}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let frames = std::fs::read(&frames_path).unwrap();
    std::fs::remove_file(&frames_path).unwrap();
    std::fs::remove_file(&exe).unwrap();
    (frames, stdout)
}

/// Wan video-to-video from C (`wan-tiny`): 3 and 13 input frames (a chunk takes 8) pushed
/// as the stream asks, the input ended with `streamdit_stream_end_input`: exactly that many
/// frames come out (the last chunk cut, the end's note logged), byte-identical to the Rust
/// API given the same frames at once; pushing after the end is a named error.
#[test]
fn c_program_edits_a_wan_video_ending_mid_chunk_like_the_rust_api() {
    for (n, chunks) in [(3u64, 1), (13, 2)] {
        let (got, stdout) = run_wan_v2v(&format!("wan-v2v-{n}"), n, None);
        assert!(
            stdout.contains(&format!("written {n} chunks {chunks}")),
            "{stdout}"
        );
        assert!(stdout.contains("ended after"), "{stdout}");
        assert_eq!(got.len() as u64, n * 64 * 64 * 3, "{n} input frames");
        let want = rust_wan_v2v_frames(n);
        assert!(got == want, "{n} input frames: C and Rust differ");
    }
}

/// Wan video-to-video from C with the Wan VAE decoder (so the Wan VAE encoder encodes the
/// input, its first chunk 3 frames short) and adaptive noise: 13 input frames give 13 out in
/// 2 chunks, byte-identical to the Rust API.
#[test]
fn c_program_edits_a_wan_video_with_the_wan_vae_and_adaptive_noise_like_the_rust_api() {
    let (got, stdout) = run_wan_v2v_with("wan-v2v-vae", 13, None, "wan-vae,adaptive");
    assert!(stdout.contains("written 13 chunks 2"), "{stdout}");
    assert!(
        stdout.contains("ended after 13 frames") && !stdout.contains("mid-chunk"),
        "13 frames fill the Wan VAE encoder's chunks (5 + 8): {stdout}"
    );
    let want = rust_wan_v2v_frames_with(13, DecoderKind::WanVae, true);
    assert_eq!(got.len(), want.len());
    assert!(got == want, "C and Rust differ");
    let plain = rust_wan_v2v_frames_with(13, DecoderKind::WanVae, false);
    assert!(plain != want, "adaptive noise changed nothing");
}

/// The Wan program under valgrind memcheck (3 input frames, one chunk): no invalid access,
/// no use of uninitialised values, no definite or indirect leak; the frames within the
/// allowance of `c_video_to_video_is_clean_under_valgrind` (measured: 0 of 36 864 bytes
/// differ). About 15 minutes on a busy 2-core machine (the `taew2_1`-sized TAEHV encoder at
/// 64x64), so the full tier only, as that one.
#[test]
fn c_wan_video_to_video_is_clean_under_valgrind() {
    if std::env::var("STREAMDIT_FULL").as_deref() != Ok("1") {
        println!("skipped: the full tier (STREAMDIT_FULL=1) runs it");
        return;
    }
    if Command::new("valgrind").arg("--version").output().is_err() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI=true and valgrind is missing (install Debian's valgrind package)"
        );
        println!("skipped: valgrind not found");
        return;
    }
    let (got, _) = run_wan_v2v(
        "wan-v2v-valgrind",
        3,
        Some(&[
            "valgrind",
            "--quiet",
            "--error-exitcode=99",
            "--leak-check=full",
            "--errors-for-leak-kinds=definite,indirect",
            "--show-leak-kinds=definite,indirect",
        ]),
    );
    let native = rust_wan_v2v_frames(3);
    assert_eq!(got.len(), native.len(), "frame bytes under valgrind");
    let (mut worst, mut differing) = (0u8, 0usize);
    for (a, b) in got.iter().zip(&native) {
        worst = worst.max(a.abs_diff(*b));
        differing += usize::from(a != b);
    }
    println!(
        "valgrind vs native: {differing} of {} bytes differ, worst by {worst} levels",
        native.len()
    );
    assert!(
        worst <= 1 && differing * 1000 <= native.len(),
        "frames under valgrind differ from the native run: {differing} of {} bytes, worst by \
         {worst} levels (allowed: 1 level on at most 0.1% of bytes)",
        native.len()
    );
}
