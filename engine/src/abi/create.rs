//! The body of `streamdit_stream_create`, `streamdit_stream_create_with_decoder` and
//! `streamdit_stream_create_video`: the C stream parameters (and the optional decoder
//! checkpoint or video-to-video strength) to [`StreamParams`], the stream to a handle.

use std::ffi::{c_char, c_int};
use std::path::PathBuf;

use super::{
    guard, invalid, opt_str, EngineHandle, StreamHandle, StreamParamsC, DECODER_PREVIEW,
    DECODER_TAE, DECODER_TAEHV, DECODER_WAN_VAE, OK,
};
use crate::{DecoderKind, Result, StreamParams};

/// The decoder kind of `streamdit_decoder` value `d`.
fn decoder_kind(d: c_int) -> Result<DecoderKind> {
    match d {
        DECODER_TAE => Ok(DecoderKind::Tae),
        DECODER_PREVIEW => Ok(DecoderKind::Preview),
        DECODER_TAEHV => Ok(DecoderKind::Taehv),
        DECODER_WAN_VAE => Ok(DecoderKind::WanVae),
        other => Err(invalid(&format!(
            "decoder {other}: expected 0 (tae: the profile's), 1 (preview), 2 (taehv) or 3 (wan-vae)"
        ))),
    }
}

/// The body of the stream constructors; `f` names the one called. A `strength` starts a
/// video-to-video stream ([`crate::Engine::video_stream`]).
///
/// # Safety
/// As `streamdit_stream_create_with_decoder`.
pub(super) unsafe fn create_stream(
    engine: *const EngineHandle,
    params: *const StreamParamsC,
    decoder_weights: *const c_char,
    strength: Option<f32>,
    out: *mut *mut StreamHandle,
    f: &str,
) -> c_int {
    // SAFETY: NULL checked; a live handle per the contract.
    let e = unsafe { engine.as_ref() };
    let logger = e.map_or((None, std::ptr::null_mut()), |e| (e.log, e.log_user_data));
    guard(logger, || {
        if out.is_null() {
            return Err(invalid(&format!("{f}: `out` is NULL")));
        }
        // SAFETY: valid for a write per the contract.
        unsafe { out.write(std::ptr::null_mut()) };
        let e = e.ok_or_else(|| invalid(&format!("{f}: `engine` is NULL")))?;
        // SAFETY: NULL checked; valid per the contract.
        let p =
            unsafe { params.as_ref() }.ok_or_else(|| invalid(&format!("{f}: `params` is NULL")))?;
        // SAFETY: NULL or NUL-terminated per the contract.
        let prompt = unsafe { opt_str(p.prompt, "prompt") }?.unwrap_or_default();
        // SAFETY: as above.
        let negative_prompt = unsafe { opt_str(p.negative_prompt, "negative_prompt") }?;
        // SAFETY: as above.
        let decoder_weights = unsafe { opt_str(decoder_weights, "decoder_weights") }?;
        let params = StreamParams {
            prompt,
            negative_prompt,
            seed: (p.use_seed != 0).then_some(p.seed),
            guidance: (!p.guidance.is_nan()).then_some(p.guidance),
            text: None,
            decoder: decoder_kind(p.decoder)?,
            decoder_weights: decoder_weights.map(PathBuf::from),
        };
        let stream = match strength {
            Some(s) => e.engine.video_stream(params, s)?,
            None => e.engine.stream(params)?,
        };
        let handle = Box::new(StreamHandle {
            stream,
            frames: Vec::new(),
            log: e.log,
            log_user_data: e.log_user_data,
        });
        // SAFETY: valid for a write per the contract.
        unsafe { out.write(Box::into_raw(handle)) };
        Ok(OK)
    })
}
