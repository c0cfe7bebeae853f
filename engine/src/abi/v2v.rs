//! Video-to-video through the C ABI (added within ABI version 2, no struct changed):
//! `streamdit_stream_create_video` starts a stream that edits an input video with a
//! strength, `streamdit_stream_push_frames` hands it input RGB8 frames of the stream's size,
//! and `streamdit_stream_input_frames_needed` says how many must be pushed before the next
//! model call can run; `streamdit_stream_end_input` ends the input (the last partial chunk
//! is filled by repeating the last frame and cut after it, `Stream::end_input`). Output
//! comes out as for text-to-video (`streamdit_stream_next`, `streamdit_stream_run`).

use std::ffi::c_int;

use super::{
    create_stream, guard, invalid, log, stream_logger, stream_mut, EngineHandle, StreamHandle,
    StreamParamsC, LOG_INFO, OK,
};
use crate::Error;

/// Starts a video-to-video stream on `engine` (`Engine::video_stream`): the profile's
/// schedule remapped by `strength` in (0, 1] (1: text-to-video that ignores the input), its
/// fresh frames mixed with the input video pushed by `streamdit_stream_push_frames`.
///
/// # Safety
/// As `streamdit_stream_create`.
#[no_mangle]
pub unsafe extern "C" fn streamdit_stream_create_video(
    engine: *const EngineHandle,
    params: *const StreamParamsC,
    strength: f32,
    out: *mut *mut StreamHandle,
) -> c_int {
    // SAFETY: the same contract as this function's.
    unsafe {
        create_stream(
            engine,
            params,
            std::ptr::null(),
            Some(strength),
            out,
            "streamdit_stream_create_video",
        )
    }
}

/// Appends `bytes` bytes of input video (whole RGB8 frames of the stream's size, rows top to
/// bottom) to a video-to-video stream; the frames are copied (and encoded by groups of 4)
/// before the call returns, so `rgb` may be reused at once. Video frame `f` of the output
/// is an edit of input frame `f`.
///
/// # Safety
/// `stream` is NULL or a live stream handle; `rgb` NULL or valid for `bytes` reads.
#[no_mangle]
pub unsafe extern "C" fn streamdit_stream_push_frames(
    stream: *mut StreamHandle,
    rgb: *const u8,
    bytes: usize,
) -> c_int {
    guard(stream_logger(stream), || {
        const F: &str = "streamdit_stream_push_frames";
        // SAFETY: per the contract.
        let s = unsafe { stream_mut(stream, F) }?;
        if !s.stream.is_video_to_video() {
            return Err(invalid(&format!(
                "{F}: this stream is text-to-video; start it with \
                 streamdit_stream_create_video to edit a video"
            )));
        }
        if rgb.is_null() {
            return Err(invalid(&format!("{F}: `rgb` is NULL")));
        }
        let (w, h) = s.stream.frame_size();
        let frame = w * h * 3;
        if bytes == 0 || bytes % frame != 0 {
            return Err(Error::shape(
                "streamdit_stream_push_frames: input video",
                format!("one or more whole {w}x{h} RGB8 frames ({frame} bytes each)"),
                format!("{bytes} bytes"),
            ));
        }
        // SAFETY: non-NULL and valid for `bytes` reads per the contract; the slice lives for
        // this call only (the stream copies what it keeps).
        let input = unsafe { std::slice::from_raw_parts(rgb, bytes) };
        s.stream.push_video_frames(input)?;
        Ok(OK)
    })
}

/// Writes to `frames` the input video frames still to push before the next model call can
/// run (0 for text-to-video). Pushing that many before each `streamdit_stream_next` keeps a
/// video-to-video stream going; a call that lacks its input fails with
/// `STREAMDIT_ERR_INVALID_ARGUMENT` before it runs.
///
/// # Safety
/// `stream` is NULL or a live stream handle; `frames` NULL or valid for one write.
#[no_mangle]
pub unsafe extern "C" fn streamdit_stream_input_frames_needed(
    stream: *mut StreamHandle,
    frames: *mut u32,
) -> c_int {
    guard(stream_logger(stream), || {
        const F: &str = "streamdit_stream_input_frames_needed";
        // SAFETY: per the contract.
        let s = unsafe { stream_mut(stream, F) }?;
        if frames.is_null() {
            return Err(invalid(&format!("{F}: `frames` is NULL")));
        }
        let need = u32::try_from(s.stream.input_frames_needed()).unwrap_or(u32::MAX);
        // SAFETY: non-NULL and valid for a write per the contract.
        unsafe { frames.write(need) };
        Ok(OK)
    })
}

/// Ends a video-to-video stream's input after the frames pushed so far (`Stream::end_input`):
/// the stream repeats the last input frame wherever it still needs input, and writes exactly
/// as many output frames as were pushed; the last chunk from `streamdit_stream_next` then
/// has fewer frames, and later calls write 0 frames and return `STREAMDIT_OK`. Writes that
/// count to `output_frames` (may be NULL) and logs the rule's note at `STREAMDIT_LOG_INFO`.
/// Calling it again is allowed (the same end).
///
/// # Safety
/// `stream` is NULL or a live stream handle; `output_frames` NULL or valid for one write.
#[no_mangle]
pub unsafe extern "C" fn streamdit_stream_end_input(
    stream: *mut StreamHandle,
    output_frames: *mut u64,
) -> c_int {
    guard(stream_logger(stream), || {
        const F: &str = "streamdit_stream_end_input";
        if !output_frames.is_null() {
            // SAFETY: non-NULL, valid for a write per the contract.
            unsafe { output_frames.write(0) };
        }
        // SAFETY: per the contract.
        let s = unsafe { stream_mut(stream, F) }?;
        let end = s
            .stream
            .end_input()
            .map_err(|e| invalid(&format!("{F}: {e}")))?;
        log(
            s.log,
            s.log_user_data,
            LOG_INFO,
            &format!("streamdit: {end}"),
        );
        if !output_frames.is_null() {
            // SAFETY: as above.
            unsafe { output_frames.write(end.frames) };
        }
        Ok(OK)
    })
}

/// Turns on adaptive noise for a Wan-family video-to-video stream (`Stream::set_adaptive_noise`,
/// docs/wan.md "Adaptive noise"): from the second chunk on, each chunk starts at its own
/// noise level, up to 0.1 below the strength as its input frames move more. Only before the
/// stream's first model call; `STREAMDIT_ERR_INVALID_ARGUMENT` for a text-to-video or
/// StreamDiT stream, or after the first call.
///
/// # Safety
/// `stream` is NULL or a live stream handle.
#[no_mangle]
pub unsafe extern "C" fn streamdit_stream_set_adaptive_noise(stream: *mut StreamHandle) -> c_int {
    guard(stream_logger(stream), || {
        const F: &str = "streamdit_stream_set_adaptive_noise";
        // SAFETY: per the contract.
        let s = unsafe { stream_mut(stream, F) }?;
        s.stream
            .set_adaptive_noise()
            .map_err(|e| invalid(&format!("{F}: {e}")))?;
        Ok(OK)
    })
}
