//! Engines through the C ABI: `streamdit_engine_default_params`, `streamdit_engine_create`
//! (profile, weights and backend from `streamdit_engine_params`) and `streamdit_engine_free`.

use std::ffi::c_int;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;

use super::{
    guard, invalid, log, opt_str, set_last_error, EngineHandle, EngineParamsC, BACKEND_AUTO,
    BACKEND_CPU, BACKEND_CUDA, BACKEND_EMU, ERR_PROFILE, LOG_ERROR, LOG_INFO, LOG_WARN, OK,
};
use crate::{BackendKind, DType, Engine, EngineParams, Profile, WeightsSource};

#[no_mangle]
pub extern "C" fn streamdit_engine_default_params() -> EngineParamsC {
    EngineParamsC {
        profile: c"tiny".as_ptr(),
        checkpoint: std::ptr::null(),
        random_seed: 0,
        backend: BACKEND_AUTO,
        device_index: 0,
        log: None,
        log_user_data: std::ptr::null_mut(),
    }
}

/// Creates an engine: loads the profile and the weights and chooses the backend.
///
/// # Safety
/// `params` is NULL or points to a valid `streamdit_engine_params` whose strings are NULL
/// or NUL-terminated; `out` is NULL or valid for one pointer write.
#[no_mangle]
pub unsafe extern "C" fn streamdit_engine_create(
    params: *const EngineParamsC,
    out: *mut *mut EngineHandle,
) -> c_int {
    // SAFETY: read once, NULL checked.
    let logger = unsafe { params.as_ref() }
        .map_or((None, std::ptr::null_mut()), |p| (p.log, p.log_user_data));
    guard(logger, || {
        if out.is_null() {
            return Err(invalid("streamdit_engine_create: `out` is NULL"));
        }
        // SAFETY: non-NULL, valid for a write per the contract.
        unsafe { out.write(std::ptr::null_mut()) };
        // SAFETY: NULL checked; valid per the contract.
        let p = unsafe { params.as_ref() }
            .ok_or_else(|| invalid("streamdit_engine_create: `params` is NULL"))?;
        // SAFETY: the strings are NULL or NUL-terminated per the contract.
        let profile = unsafe { opt_str(p.profile, "profile") }?
            .ok_or_else(|| invalid("streamdit_engine_create: `profile` is NULL"))?;
        // SAFETY: as above.
        let checkpoint = unsafe { opt_str(p.checkpoint, "checkpoint") }?;
        let backend = match p.backend {
            BACKEND_AUTO => BackendKind::Auto,
            BACKEND_CPU => BackendKind::Cpu,
            BACKEND_CUDA => BackendKind::Cuda,
            BACKEND_EMU => BackendKind::Emu,
            other => {
                return Err(invalid(&format!(
                    "backend {other}: expected 0 (auto), 1 (cpu), 2 (cuda) or 3 (emu)"
                )))
            }
        };
        let device = usize::try_from(p.device_index)
            .map_err(|_| invalid(&format!("device_index {}: must be >= 0", p.device_index)))?;
        // Any failure to load the profile (unknown name, unreadable or invalid file) is a
        // profile error.
        let profile = match Profile::load(&profile) {
            Ok(p) => p,
            Err(e) => {
                let msg = e.to_string();
                log(p.log, p.log_user_data, LOG_ERROR, &msg);
                set_last_error(&msg);
                return Ok(ERR_PROFILE);
            }
        };
        let weights = match checkpoint {
            Some(path) => WeightsSource::File(PathBuf::from(path)),
            // The profile's own checkpoint (`run.weights`) when it names one.
            None if profile.run.weights.is_some() => {
                WeightsSource::for_profile(&profile, None, DType::F16)?
            }
            None => WeightsSource::Random {
                seed: p.random_seed,
                dtype: DType::F16,
            },
        };
        let engine = Engine::with_device(
            EngineParams {
                profile,
                weights,
                backend,
            },
            device,
        )?;
        let (kind, why) = engine.backend_choice();
        log(
            p.log,
            p.log_user_data,
            LOG_INFO,
            &format!("backend {kind:?} ({why})"),
        );
        for note in engine.text_notes() {
            let level = if note.contains("RANDOM") {
                LOG_WARN
            } else {
                LOG_INFO
            };
            log(p.log, p.log_user_data, level, note);
        }
        let handle = Box::new(EngineHandle {
            engine,
            log: p.log,
            log_user_data: p.log_user_data,
        });
        // SAFETY: valid for a write per the contract.
        unsafe { out.write(Box::into_raw(handle)) };
        Ok(OK)
    })
}

/// Frees an engine; NULL is a no-op. Streams made from it stay valid.
///
/// # Safety
/// `engine` is NULL or a live handle from `streamdit_engine_create`, not used afterwards.
#[no_mangle]
pub unsafe extern "C" fn streamdit_engine_free(engine: *mut EngineHandle) {
    if !engine.is_null() {
        let _ = catch_unwind(AssertUnwindSafe(|| {
            // SAFETY: a live handle made by Box::into_raw, freed once per the contract.
            drop(unsafe { Box::from_raw(engine) })
        }));
    }
}

#[cfg(test)]
mod tests {
    use std::ffi::CString;

    use super::*;
    use crate::abi::status::last_error_string as last_error;
    use crate::abi::ERR_CHECKPOINT;

    #[test]
    fn a_profiles_missing_own_checkpoint_is_a_checkpoint_error() {
        let dir = std::env::temp_dir().join(format!("streamdit-abi-pw-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("p.toml");
        let mut p = Profile::builtin("tiny").unwrap();
        p.run.weights = Some("absent.safetensors".into());
        std::fs::write(&file, p.to_toml()).unwrap();
        let name = CString::new(file.to_str().unwrap()).unwrap();
        // SAFETY: every pointer is NULL or valid for the call.
        unsafe {
            let mut e = std::ptr::null_mut();
            let mut params = streamdit_engine_default_params();
            params.profile = name.as_ptr();
            params.backend = BACKEND_CPU;
            assert_eq!(streamdit_engine_create(&params, &mut e), ERR_CHECKPOINT);
            assert!(e.is_null());
            let want = dir.join("absent.safetensors");
            let msg = last_error();
            assert!(msg.contains(want.to_str().unwrap()), "{msg}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
