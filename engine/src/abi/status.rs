//! How the C ABI reports: integer status codes from [`Error`]s, the thread-local last error
//! message, the caller's log callback, and [`guard`], which every entry point runs its body
//! in so that neither an error nor a panic crosses the interface.

use std::cell::RefCell;
use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};

use super::{
    LogFn, ERR_BACKEND, ERR_BUFFER_TOO_SMALL, ERR_CHECKPOINT, ERR_INVALID_ARGUMENT, ERR_IO,
    ERR_PANIC, ERR_PROFILE, ERR_STOPPED, LOG_ERROR, OK,
};
use crate::{Error, Result};

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

pub(super) fn set_last_error(msg: &str) {
    let c = CString::new(msg.replace('\0', "\\0")).unwrap_or_default();
    LAST_ERROR.with(|e| *e.borrow_mut() = c);
}

fn status_of(e: &Error) -> c_int {
    match e {
        Error::Profile { .. } | Error::ProfileParse { .. } => ERR_PROFILE,
        Error::Tensor { .. } | Error::Checkpoint { .. } => ERR_CHECKPOINT,
        Error::Io { .. } => ERR_IO,
        Error::Backend { .. } => ERR_BACKEND,
        _ => ERR_INVALID_ARGUMENT,
    }
}

pub(super) fn log(f: LogFn, user: *mut c_void, level: c_int, msg: &str) {
    if let Some(f) = f {
        let c = CString::new(msg.replace('\0', "\\0")).unwrap_or_default();
        // SAFETY: the caller registered `f` with `user` for exactly this call; the message
        // outlives the call.
        unsafe { f(level, c.as_ptr(), user) };
    }
}

/// Runs `body`, turning an error into its status and last-error message, and a panic into
/// `ERR_PANIC`.
pub(super) fn guard(log_to: (LogFn, *mut c_void), body: impl FnOnce() -> Result<c_int>) -> c_int {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(status)) => status,
        Ok(Err(e)) => {
            let msg = e.to_string();
            log(log_to.0, log_to.1, LOG_ERROR, &msg);
            set_last_error(&msg);
            status_of(&e)
        }
        Err(panic) => {
            let msg = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            set_last_error(&format!("internal error (panic): {msg}"));
            ERR_PANIC
        }
    }
}

pub(super) fn invalid(what: &str) -> Error {
    Error::Invalid(what.to_string())
}

/// A UTF-8 string argument; NULL is `None`.
///
/// # Safety
/// `p` is NULL or a NUL-terminated string valid for the call.
pub(super) unsafe fn opt_str(p: *const c_char, what: &str) -> Result<Option<String>> {
    if p.is_null() {
        return Ok(None);
    }
    // SAFETY: per this function's contract.
    let s = unsafe { CStr::from_ptr(p) };
    s.to_str()
        .map(|s| Some(s.to_string()))
        .map_err(|_| invalid(&format!("{what}: not valid UTF-8")))
}

/// The calling thread's last error message (empty if none); valid until the next failing
/// call on this thread.
#[no_mangle]
pub extern "C" fn streamdit_last_error() -> *const c_char {
    LAST_ERROR.with(|e| e.borrow().as_ptr())
}

/// The calling thread's last error as a `String`, for the ABI's tests.
#[cfg(test)]
pub(crate) fn last_error_string() -> String {
    // SAFETY: the library's own NUL-terminated thread-local string, read before any other
    // call on this thread can replace it.
    unsafe { CStr::from_ptr(streamdit_last_error()) }
        .to_string_lossy()
        .into_owned()
}

/// A short static description of a status code.
#[no_mangle]
pub extern "C" fn streamdit_status_string(status: c_int) -> *const c_char {
    let s: &'static CStr = match status {
        OK => c"ok",
        ERR_INVALID_ARGUMENT => c"invalid argument",
        ERR_BUFFER_TOO_SMALL => c"buffer too small",
        ERR_PROFILE => c"invalid profile",
        ERR_CHECKPOINT => c"invalid checkpoint",
        ERR_IO => c"I/O error",
        ERR_BACKEND => c"backend error",
        ERR_PANIC => c"internal error",
        ERR_STOPPED => c"stopped by the frame callback",
        _ => c"unknown status",
    };
    s.as_ptr()
}
