//! Loading a module onto the device: the image for its compute capability (the cubin built
//! for it, else the fallback PTX the driver JIT-compiles: `streamdit_kernels::image_for`),
//! through `cuModuleLoadDataEx` with JIT error and info log buffers, so that a failed load
//! says which image it was and, for PTX, what the JIT compiler objected to.
//!
//! The pure parts (choosing the image, copying it into the form the driver takes, reading
//! a log buffer back, wording the error) are separate from the one driver call, and are
//! unit-tested without a GPU.

use std::ffi::{c_void, CString};

use cudarc::driver::sys;
use streamdit_kernels::Image;

/// Bytes of each JIT log buffer (error and info). ptxas messages are a line per problem;
/// a longer log is cut at this size, which the message says.
pub const LOG_BYTES: usize = 16 * 1024;

/// An image as `cuModuleLoadDataEx` reads it: a cubin (an ELF file) copied into 8-byte
/// aligned memory, since the embedded bytes have no alignment guarantee and the driver
/// reads the ELF headers as 64-bit words; PTX as NUL-terminated text.
pub enum ImageBytes {
    Cubin(Vec<u64>),
    Ptx(CString),
}

impl ImageBytes {
    /// The bytes of `image` in loadable form, or why not (a PTX text with a NUL byte, an
    /// empty cubin).
    pub fn new(image: Image) -> Result<ImageBytes, String> {
        match image {
            Image::Cubin(c) => {
                if c.image.is_empty() {
                    return Err(format!("the {} cubin is empty", c.arch));
                }
                let mut words = vec![0u64; c.image.len().div_ceil(8)];
                bytemuck::cast_slice_mut::<u64, u8>(&mut words)[..c.image.len()]
                    .copy_from_slice(c.image);
                Ok(ImageBytes::Cubin(words))
            }
            Image::Ptx(p) => CString::new(p.text)
                .map(ImageBytes::Ptx)
                .map_err(|_| "the PTX contains a NUL byte".to_string()),
        }
    }

    /// The image's bytes (for a cubin, with the zero padding to 8 bytes; for PTX, with the
    /// NUL).
    #[cfg(test)]
    fn bytes(&self) -> &[u8] {
        match self {
            ImageBytes::Cubin(words) => bytemuck::cast_slice::<u64, u8>(words),
            ImageBytes::Ptx(text) => text.as_bytes_with_nul(),
        }
    }

    fn as_ptr(&self) -> *const c_void {
        match self {
            ImageBytes::Cubin(words) => words.as_ptr() as *const c_void,
            ImageBytes::Ptx(text) => text.as_ptr() as *const c_void,
        }
    }
}

/// The text of a JIT log buffer: the `filled` bytes the driver reported (bounded by the
/// buffer; the driver's count may include the terminating NUL), up to the first NUL, as
/// lossy UTF-8 without surrounding whitespace. Empty when nothing was written.
pub fn log_text(buf: &[u8], filled: usize) -> String {
    let end = filled.min(buf.len());
    let text = &buf[..end];
    let text = match text.iter().position(|&b| b == 0) {
        Some(nul) => &text[..nul],
        None => text,
    };
    let mut s = String::from_utf8_lossy(text).trim().to_string();
    if end == buf.len() && !buf.is_empty() && !buf.contains(&0) {
        s += " [log truncated]";
    }
    s
}

/// The message of a failed load: the module, the image, the driver's error, a hint for
/// the PTX version error, and the JIT logs that have text.
pub fn failure_message(
    module: &str,
    image: &Image,
    driver: &str,
    unsupported_ptx: bool,
    driver_cuda: &str,
    error_log: &str,
    info_log: &str,
) -> String {
    let mut msg = format!("module {module} ({}): {driver}", image.describe());
    if unsupported_ptx {
        if let Image::Ptx(p) = image {
            msg += &format!(
                "; the PTX is ISA {}.{}, which the driver (CUDA {driver_cuda}) cannot JIT: \
                 update the driver, or build cubins for this GPU's architecture",
                p.isa.0, p.isa.1
            );
        }
    }
    if !error_log.is_empty() {
        msg += &format!("; JIT error log: {error_log}");
    }
    if !info_log.is_empty() {
        msg += &format!("; JIT info log: {info_log}");
    }
    msg
}

/// What a successful load produced: the module and the JIT info log (empty for a cubin).
pub struct Loaded {
    pub module: sys::CUmodule,
    pub info_log: String,
}

/// Why a load failed: the driver's result code and both logs' text.
pub struct LoadError {
    pub code: sys::CUresult,
    pub error_log: String,
    pub info_log: String,
}

/// Loads `image` into the current context with `cuModuleLoadDataEx`, collecting the JIT
/// error and info logs.
///
/// # Safety
/// A context must be current on this thread, and `image` must be a valid cubin or PTX
/// image (what `streamdit_kernels` embeds).
pub unsafe fn load(image: &ImageBytes) -> Result<Loaded, LoadError> {
    let mut error_buf = vec![0u8; LOG_BYTES];
    let mut info_buf = vec![0u8; LOG_BYTES];
    let mut options = [
        sys::CUjit_option::CU_JIT_ERROR_LOG_BUFFER,
        sys::CUjit_option::CU_JIT_ERROR_LOG_BUFFER_SIZE_BYTES,
        sys::CUjit_option::CU_JIT_INFO_LOG_BUFFER,
        sys::CUjit_option::CU_JIT_INFO_LOG_BUFFER_SIZE_BYTES,
        sys::CUjit_option::CU_JIT_LOG_VERBOSE,
    ];
    // Size options travel as integers in the pointer slots, and the driver writes the
    // number of bytes it filled back into the same slots.
    let mut values: [*mut c_void; 5] = [
        error_buf.as_mut_ptr() as *mut c_void,
        LOG_BYTES as *mut c_void,
        info_buf.as_mut_ptr() as *mut c_void,
        LOG_BYTES as *mut c_void,
        1usize as *mut c_void,
    ];
    let mut module: sys::CUmodule = std::ptr::null_mut();
    // SAFETY: `options` and `values` are arrays of the same length, passed with that
    // length; the two log buffers are LOG_BYTES long, as their size options say, and live
    // until after the call; `image` is a valid image (this function's contract) that the
    // driver reads during the call only; a context is current (the contract).
    let code = unsafe {
        sys::cuModuleLoadDataEx(
            &mut module,
            image.as_ptr(),
            options.len() as u32,
            options.as_mut_ptr(),
            values.as_mut_ptr(),
        )
    };
    // The filled sizes are unsigned ints written into the slots: read the low 32 bits.
    let filled = |v: *mut c_void| (v as usize) & 0xffff_ffff;
    let error_log = log_text(&error_buf, filled(values[1]));
    let info_log = log_text(&info_buf, filled(values[3]));
    if code == sys::CUresult::CUDA_SUCCESS && !module.is_null() {
        Ok(Loaded { module, info_log })
    } else {
        Err(LoadError {
            code,
            error_log,
            info_log,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use streamdit_kernels::{Cubin, Ptx};

    static CUBIN: Cubin = Cubin {
        arch: "sm_86",
        image: b"\x7fELF\x02\x01\x01 odd length!",
    };
    static PTX: Ptx = Ptx {
        target: "sm_80",
        isa: (9, 0),
        text: ".version 9.0\n.target sm_80\n.address_size 64\n",
    };

    #[test]
    fn images_become_loadable_bytes() {
        let b = ImageBytes::new(Image::Cubin(&CUBIN)).unwrap();
        let n = CUBIN.image.len();
        assert_eq!(&b.bytes()[..n], CUBIN.image, "the cubin's bytes");
        assert!(b.bytes().len() < n + 8 && b.bytes()[n..].iter().all(|&x| x == 0));
        assert_eq!(b.as_ptr() as usize % 8, 0, "8-byte aligned");
        let p = ImageBytes::new(Image::Ptx(&PTX)).unwrap();
        assert_eq!(p.bytes().last(), Some(&0), "NUL-terminated");
        assert_eq!(&p.bytes()[..p.bytes().len() - 1], PTX.text.as_bytes());

        static EMPTY: Cubin = Cubin {
            arch: "sm_90",
            image: b"",
        };
        let e = ImageBytes::new(Image::Cubin(&EMPTY)).err().unwrap();
        assert!(e.contains("sm_90") && e.contains("empty"), "{e}");
        static NUL: Ptx = Ptx {
            target: "sm_80",
            isa: (9, 0),
            text: ".version 9.0\0",
        };
        assert!(ImageBytes::new(Image::Ptx(&NUL)).err().unwrap().contains("NUL"));
    }

    #[test]
    fn logs_are_read_up_to_the_filled_count_and_the_nul() {
        let mut buf = vec![0u8; 64];
        let msg = b"ptxas fatal   : Unsupported .version 9.5\n";
        buf[..msg.len()].copy_from_slice(msg);
        // The count with or without the NUL, or a count past the buffer: the same text.
        for filled in [msg.len(), msg.len() + 1, 1000] {
            assert_eq!(
                log_text(&buf, filled),
                "ptxas fatal   : Unsupported .version 9.5"
            );
        }
        assert_eq!(log_text(&buf, 0), "", "nothing written");
        assert_eq!(log_text(&[], 10), "");
        // A full buffer with no NUL was cut by the driver.
        let full = vec![b'x'; 8];
        assert_eq!(log_text(&full, 8), "xxxxxxxx [log truncated]");
        // Invalid UTF-8 does not fail.
        assert_eq!(log_text(b"a\xffb\0", 4), "a\u{fffd}b");
    }

    #[test]
    fn a_failed_load_names_the_image_and_the_logs() {
        let m = failure_message(
            "attention",
            &Image::Ptx(&PTX),
            "CUDA_ERROR_UNSUPPORTED_PTX_VERSION: the provided PTX was compiled with an \
             unsupported toolchain.",
            true,
            "13.0",
            "ptxas fatal   : Unsupported .version 9.5",
            "",
        );
        for part in [
            "module attention",
            "PTX compute_80 (ISA 9.0, JIT)",
            "CUDA_ERROR_UNSUPPORTED_PTX_VERSION",
            "ISA 9.0, which the driver (CUDA 13.0) cannot JIT",
            "JIT error log: ptxas fatal",
        ] {
            assert!(m.contains(part), "{part:?} in {m}");
        }
        assert!(!m.contains("info log"), "{m}");
        let m = failure_message(
            "gemm",
            &Image::Cubin(&CUBIN),
            "CUDA_ERROR_NO_BINARY_FOR_GPU",
            false,
            "13.0",
            "",
            "",
        );
        assert_eq!(m, "module gemm (cubin sm_86): CUDA_ERROR_NO_BINARY_FOR_GPU");
    }
}
