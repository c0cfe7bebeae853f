//! The C interface (`include/streamdit.h`): opaque handles over [`Engine`] and [`Stream`],
//! `*_default_params()`, create/free pairs, integer status codes, a thread-local last error
//! and a log callback. Built into `libstreamdit.so` / `libstreamdit.a`.
//!
//! Every entry point catches panics (a panic becomes `STREAMDIT_ERR_PANIC` with its
//! message as the last error), checks every pointer it is given for null, and checks
//! buffer sizes; nothing the caller passes can make it abort. Use of a freed handle and
//! double free are undefined (as with `free`); freeing NULL is a no-op.
//!
//! Threads: an engine may be shared by streams created and used on different threads; one
//! stream must be used by one thread at a time. The last error is per thread.

use std::ffi::{c_char, c_int, c_void, CStr};
use std::panic::{catch_unwind, AssertUnwindSafe};

use crate::{Engine, Result, Stream};

mod create;
mod engine;
mod status;
mod v2v;
use create::create_stream;
pub use engine::{streamdit_engine_create, streamdit_engine_default_params, streamdit_engine_free};
use status::{guard, invalid, log, opt_str, set_last_error};
pub use status::{streamdit_last_error, streamdit_status_string};
pub use v2v::{
    streamdit_stream_create_video, streamdit_stream_input_frames_needed,
    streamdit_stream_push_frames,
};

/// Version of this C interface; bumped on any incompatible change to `streamdit.h`.
pub const ABI_VERSION: u32 = 2;

/// Decoders (`streamdit_decoder` in the header).
pub const DECODER_TAE: c_int = 0;
pub const DECODER_PREVIEW: c_int = 1;
pub const DECODER_TAEHV: c_int = 2;
pub const DECODER_WAN_VAE: c_int = 3;

/// Status codes (`streamdit_status` in the header).
pub const OK: c_int = 0;
pub const ERR_INVALID_ARGUMENT: c_int = 1;
pub const ERR_BUFFER_TOO_SMALL: c_int = 2;
pub const ERR_PROFILE: c_int = 3;
pub const ERR_CHECKPOINT: c_int = 4;
pub const ERR_IO: c_int = 5;
pub const ERR_BACKEND: c_int = 6;
pub const ERR_PANIC: c_int = 7;
pub const ERR_STOPPED: c_int = 8;

/// Log levels.
pub const LOG_ERROR: c_int = 0;
pub const LOG_WARN: c_int = 1;
pub const LOG_INFO: c_int = 2;

/// `void (*)(int level, const char* message, void* user_data)`.
pub type LogFn = Option<unsafe extern "C" fn(c_int, *const c_char, *mut c_void)>;

/// `int (*)(const uint8_t* rgb, uint32_t width, uint32_t height, uint64_t frame_index,
/// void* user_data)`: return 0 to continue, non-zero to stop.
pub type FrameFn = Option<unsafe extern "C" fn(*const u8, u32, u32, u64, *mut c_void) -> c_int>;

pub const BACKEND_AUTO: c_int = 0;
pub const BACKEND_CPU: c_int = 1;
pub const BACKEND_CUDA: c_int = 2;
pub const BACKEND_EMU: c_int = 3;

/// `streamdit_engine_params`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct EngineParamsC {
    /// Profile name (`tiny`, `streamdit-4b`, ...) or path to a TOML file.
    pub profile: *const c_char,
    /// Safetensors checkpoint, or NULL: the profile's own checkpoint (`run.weights`), else
    /// random weights from `random_seed`.
    pub checkpoint: *const c_char,
    pub random_seed: u64,
    /// `STREAMDIT_BACKEND_*`.
    pub backend: c_int,
    /// CUDA device ordinal.
    pub device_index: c_int,
    pub log: LogFn,
    pub log_user_data: *mut c_void,
}

/// `streamdit_stream_params`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct StreamParamsC {
    /// UTF-8 prompt; NULL is the empty prompt.
    pub prompt: *const c_char,
    /// NULL: the profile's negative prompt.
    pub negative_prompt: *const c_char,
    /// Noise seed, used when `use_seed` is non-zero (else the profile's).
    pub seed: u64,
    pub use_seed: c_int,
    /// CFG scale; NaN takes the profile's.
    pub guidance: f32,
    /// `streamdit_decoder`: 0 the profile's full decoder (StreamDiT's TAE, a Wan profile's
    /// `wan.decoder`), 1 the cheap preview, 2 TAEHV, 3 the Wan VAE (both Wan family).
    pub decoder: c_int,
}

/// `streamdit_geometry`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct GeometryC {
    pub width: u32,
    pub height: u32,
    pub frames_per_chunk: u32,
    /// `STREAMDIT_PIXEL_RGB8` (0): 3 bytes per pixel, rows top to bottom.
    pub pixel_format: u32,
    pub bytes_per_frame: u64,
    pub bytes_per_chunk: u64,
    /// Video frame rate of the profile.
    pub fps: f64,
}

/// An engine handle.
pub struct EngineHandle {
    engine: Engine,
    log: LogFn,
    log_user_data: *mut c_void,
}

/// A stream handle: the stream and its frame scratch.
pub struct StreamHandle {
    stream: Stream,
    frames: Vec<u8>,
    log: LogFn,
    log_user_data: *mut c_void,
}

// SAFETY: `log_user_data` is the caller's pointer, handed back to the caller's callback
// only; the header documents that the callback may be called from the thread that uses
// the engine or stream. The engine itself is Send and Sync (owned data and Arcs).
unsafe impl Send for EngineHandle {}
// SAFETY: as above; the engine is only read through `&EngineHandle`.
unsafe impl Sync for EngineHandle {}

static VERSION: &CStr =
    match CStr::from_bytes_with_nul(concat!(env!("CARGO_PKG_VERSION"), "\0").as_bytes()) {
        Ok(s) => s,
        Err(_) => panic!("version string"),
    };

/// `"0.1.0"`: the library version.
#[no_mangle]
pub extern "C" fn streamdit_version_string() -> *const c_char {
    VERSION.as_ptr()
}

/// The library version as numbers; any pointer may be NULL.
///
/// # Safety
/// Each non-NULL pointer is valid for one `uint32_t` write.
#[no_mangle]
pub unsafe extern "C" fn streamdit_version(major: *mut u32, minor: *mut u32, patch: *mut u32) {
    let parse = |s: &str| s.parse::<u32>().unwrap_or(0);
    for (p, v) in [
        (major, parse(env!("CARGO_PKG_VERSION_MAJOR"))),
        (minor, parse(env!("CARGO_PKG_VERSION_MINOR"))),
        (patch, parse(env!("CARGO_PKG_VERSION_PATCH"))),
    ] {
        if !p.is_null() {
            // SAFETY: non-NULL and valid for a write per the contract.
            unsafe { p.write(v) };
        }
    }
}

#[no_mangle]
pub extern "C" fn streamdit_abi_version() -> u32 {
    ABI_VERSION
}

#[no_mangle]
pub extern "C" fn streamdit_stream_default_params() -> StreamParamsC {
    StreamParamsC {
        prompt: std::ptr::null(),
        negative_prompt: std::ptr::null(),
        seed: 0,
        use_seed: 0,
        guidance: f32::NAN,
        decoder: DECODER_TAE,
    }
}

/// Starts a stream on `engine`.
///
/// # Safety
/// `engine` is NULL or a live engine handle; `params` NULL or valid (strings NULL or
/// NUL-terminated); `out` NULL or valid for one pointer write.
#[no_mangle]
pub unsafe extern "C" fn streamdit_stream_create(
    engine: *const EngineHandle,
    params: *const StreamParamsC,
    out: *mut *mut StreamHandle,
) -> c_int {
    // SAFETY: the same contract as this function's.
    unsafe {
        create_stream(
            engine,
            params,
            std::ptr::null(),
            None,
            out,
            "streamdit_stream_create",
        )
    }
}

/// Starts a stream on `engine` whose decoder (a Wan family's TAEHV or Wan VAE) reads its
/// weights from `decoder_weights` (a safetensors file or a `torch.save` `.pth`; NULL: the
/// profile's, else random ones). Added in ABI version 2 without changing any struct.
///
/// # Safety
/// As [`streamdit_stream_create`]; `decoder_weights` NULL or NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn streamdit_stream_create_with_decoder(
    engine: *const EngineHandle,
    params: *const StreamParamsC,
    decoder_weights: *const c_char,
    out: *mut *mut StreamHandle,
) -> c_int {
    // SAFETY: the same contract as this function's.
    unsafe {
        create_stream(
            engine,
            params,
            decoder_weights,
            None,
            out,
            "streamdit_stream_create_with_decoder",
        )
    }
}

/// Frees a stream; NULL is a no-op.
///
/// # Safety
/// `stream` is NULL or a live handle from `streamdit_stream_create`, not used afterwards.
#[no_mangle]
pub unsafe extern "C" fn streamdit_stream_free(stream: *mut StreamHandle) {
    if !stream.is_null() {
        let _ = catch_unwind(AssertUnwindSafe(|| {
            // SAFETY: a live handle made by Box::into_raw, freed once per the contract.
            drop(unsafe { Box::from_raw(stream) })
        }));
    }
}

/// The stream handle behind `stream`, or an error naming the function.
///
/// # Safety
/// `stream` is NULL or a live stream handle used by this thread only.
unsafe fn stream_mut<'a>(stream: *mut StreamHandle, f: &str) -> Result<&'a mut StreamHandle> {
    // SAFETY: NULL checked; exclusive per the contract.
    unsafe { stream.as_mut() }.ok_or_else(|| invalid(&format!("{f}: `stream` is NULL")))
}

fn stream_logger(stream: *mut StreamHandle) -> (LogFn, *mut c_void) {
    // SAFETY: NULL or live per the caller's contract; only two fields are copied.
    unsafe { stream.as_ref() }.map_or((None, std::ptr::null_mut()), |s| (s.log, s.log_user_data))
}

/// Switches the prompt; it takes effect at the next model call (the buffer is kept).
///
/// # Safety
/// `stream` is NULL or a live stream handle; `prompt` NULL or NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn streamdit_stream_set_prompt(
    stream: *mut StreamHandle,
    prompt: *const c_char,
) -> c_int {
    guard(stream_logger(stream), || {
        // SAFETY: per the contract.
        let s = unsafe { stream_mut(stream, "streamdit_stream_set_prompt") }?;
        // SAFETY: NULL or NUL-terminated per the contract.
        let prompt = unsafe { opt_str(prompt, "prompt") }?
            .ok_or_else(|| invalid("streamdit_stream_set_prompt: `prompt` is NULL"))?;
        s.stream.set_prompt(&prompt);
        // Encode now (served from the engine's prompt cache when seen before), so that a
        // text encoder error is reported by this call.
        s.stream.encode_pending()?;
        Ok(OK)
    })
}

fn geometry(s: &StreamHandle, fps: f64) -> GeometryC {
    let (w, h) = s.stream.frame_size();
    let per_frame = (w * h * 3) as u64;
    let frames = s.stream.frames_per_chunk();
    GeometryC {
        width: w as u32,
        height: h as u32,
        frames_per_chunk: frames as u32,
        pixel_format: 0,
        bytes_per_frame: per_frame,
        bytes_per_chunk: per_frame * frames as u64,
        fps,
    }
}

/// Frame size, frames per chunk and pixel format of a stream.
///
/// # Safety
/// `stream` is NULL or a live stream handle; `out` NULL or valid for one write.
#[no_mangle]
pub unsafe extern "C" fn streamdit_stream_geometry(
    stream: *mut StreamHandle,
    out: *mut GeometryC,
) -> c_int {
    guard(stream_logger(stream), || {
        // SAFETY: per the contract.
        let s = unsafe { stream_mut(stream, "streamdit_stream_geometry") }?;
        if out.is_null() {
            return Err(invalid("streamdit_stream_geometry: `out` is NULL"));
        }
        let g = geometry(s, s.stream.video_fps());
        // SAFETY: non-NULL and valid for a write per the contract.
        unsafe { out.write(g) };
        Ok(OK)
    })
}

/// Produces the next chunk into `buffer` (RGB8, frame after frame): `buffer_bytes` must be
/// at least the geometry's `bytes_per_chunk`. `frames_written` (may be NULL) receives the
/// number of frames.
///
/// # Safety
/// `stream` is NULL or a live stream handle; `buffer` NULL or valid for `buffer_bytes`
/// writes; `frames_written` NULL or valid for one write.
#[no_mangle]
pub unsafe extern "C" fn streamdit_stream_next(
    stream: *mut StreamHandle,
    buffer: *mut u8,
    buffer_bytes: usize,
    frames_written: *mut u32,
) -> c_int {
    guard(stream_logger(stream), || {
        if !frames_written.is_null() {
            // SAFETY: non-NULL, valid for a write per the contract.
            unsafe { frames_written.write(0) };
        }
        // SAFETY: per the contract.
        let s = unsafe { stream_mut(stream, "streamdit_stream_next") }?;
        if buffer.is_null() {
            return Err(invalid("streamdit_stream_next: `buffer` is NULL"));
        }
        let need = geometry(s, 0.0).bytes_per_chunk as usize;
        if buffer_bytes < need {
            set_last_error(&format!(
                "streamdit_stream_next: buffer of {buffer_bytes} bytes, a chunk needs {need}"
            ));
            return Ok(ERR_BUFFER_TOO_SMALL);
        }
        s.frames.clear();
        let frames = s.stream.next_frames(&mut s.frames)?;
        // SAFETY: `buffer` is valid for `buffer_bytes >= need >= frames.len()` bytes per
        // the contract, and does not overlap the stream's own scratch.
        unsafe { std::ptr::copy_nonoverlapping(s.frames.as_ptr(), buffer, s.frames.len()) };
        if !frames_written.is_null() {
            // SAFETY: as above.
            unsafe { frames_written.write(frames as u32) };
        }
        Ok(OK)
    })
}

/// Push mode: produces `chunks` chunks, calling `on_frame` for every frame in order; a
/// non-zero return from the callback stops with `STREAMDIT_ERR_STOPPED`. A video-to-video
/// stream whose input ended stops early, with `STREAMDIT_OK`, after its last frame.
///
/// # Safety
/// `stream` is NULL or a live stream handle; `on_frame` a valid callback for `user_data`.
#[no_mangle]
pub unsafe extern "C" fn streamdit_stream_run(
    stream: *mut StreamHandle,
    chunks: u32,
    on_frame: FrameFn,
    user_data: *mut c_void,
) -> c_int {
    guard(stream_logger(stream), || {
        // SAFETY: per the contract.
        let s = unsafe { stream_mut(stream, "streamdit_stream_run") }?;
        let f = on_frame.ok_or_else(|| invalid("streamdit_stream_run: `on_frame` is NULL"))?;
        let g = geometry(s, 0.0);
        let mut index = s.stream.frames_emitted();
        for _ in 0..chunks {
            s.frames.clear();
            if s.stream.next_frames(&mut s.frames)? == 0 {
                break; // a video-to-video input that ended: every frame was written
            }
            for frame in s.frames.chunks_exact(g.bytes_per_frame as usize) {
                // SAFETY: the caller's callback with its own user_data; the frame is valid
                // for the call.
                let stop = unsafe { f(frame.as_ptr(), g.width, g.height, index, user_data) };
                index += 1;
                if stop != 0 {
                    set_last_error("streamdit_stream_run: stopped by the frame callback");
                    return Ok(ERR_STOPPED);
                }
            }
        }
        Ok(OK)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use status::last_error_string as last_error;

    #[test]
    fn null_arguments_are_errors_not_crashes() {
        // SAFETY: every pointer is NULL or valid; the functions must reject the NULLs.
        unsafe {
            assert_eq!(
                streamdit_engine_create(std::ptr::null(), std::ptr::null_mut()),
                ERR_INVALID_ARGUMENT
            );
            let mut e = std::ptr::null_mut();
            assert_eq!(
                streamdit_engine_create(std::ptr::null(), &mut e),
                ERR_INVALID_ARGUMENT
            );
            assert!(
                last_error().contains("`params` is NULL"),
                "{}",
                last_error()
            );
            assert_eq!(
                streamdit_stream_next(
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                    0,
                    std::ptr::null_mut()
                ),
                ERR_INVALID_ARGUMENT
            );
            streamdit_engine_free(std::ptr::null_mut());
            streamdit_stream_free(std::ptr::null_mut());
            let mut p = streamdit_engine_default_params();
            p.profile = c"no-such-profile".as_ptr();
            assert_eq!(streamdit_engine_create(&p, &mut e), ERR_PROFILE);
            assert!(e.is_null());
        }
    }

    #[test]
    fn stream_create_checks_guidance_with_the_engines_rule() {
        // SAFETY: every pointer is NULL or valid for the call; handles are freed once.
        unsafe {
            let mut e = std::ptr::null_mut();
            let mut p = streamdit_engine_default_params();
            p.profile = c"tiny".as_ptr();
            p.backend = BACKEND_CPU;
            assert_eq!(streamdit_engine_create(&p, &mut e), OK, "{}", last_error());
            let mut s = std::ptr::null_mut();
            for g in [f32::INFINITY, 1e30, -2.0] {
                let mut sp = streamdit_stream_default_params();
                sp.guidance = g;
                assert_eq!(
                    streamdit_stream_create(e, &sp, &mut s),
                    ERR_INVALID_ARGUMENT
                );
                assert!(s.is_null());
                let (lo, hi) = crate::engine::GUIDANCE_RANGE;
                let want = format!("guidance: expected a finite number in [{lo}, {hi}], found {g}");
                assert_eq!(last_error(), want);
            }
            streamdit_engine_free(e);
        }
    }
}
