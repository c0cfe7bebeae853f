//! cuBLAS beside our GEMM kernels, for `streamdit bench --kernels` only: the engine never
//! runs a model through it. libcublas is loaded at run time (cudarc's `dynamic-loading`), and
//! its absence is a named error, never a panic (cudarc panics on first use when the library
//! cannot be loaded, so its presence is probed first, as the driver's is).
//!
//! The product is the engine's linear layer `out [M, N] = A [M, K] W [N, K]^T` in row-major
//! f16 with f32 accumulation (`cublasGemmEx`, `CUBLAS_COMPUTE_32F`, the default algorithm),
//! no bias: cuBLAS's column-major view of row-major `out` is `out^T = W A^T`, so the call is
//! `gemm(op(W) = T, op(A) = N, m = N, n = M, k = K)` with every leading dimension the row
//! length of its row-major matrix.

use std::ffi::{c_int, c_void};

use cudarc::cublas::{result as blas, sys as bsys};

use super::{err, CudaDevice};
use crate::backend::cuda::device::DeviceBuffer;
use crate::error::{Error, Result};

/// A cuBLAS handle bound to a device's compute queue.
pub struct Cublas {
    handle: bsys::cublasHandle_t,
    version: i32,
}

fn blas_message(e: blas::CublasError) -> String {
    format!("{:?}", e.0)
}

impl Cublas {
    /// A handle on `dev`'s compute queue, or why there is none (libcublas not found, or the
    /// handle could not be created).
    pub fn new(dev: &mut CudaDevice) -> Result<Cublas> {
        // SAFETY: probing only tries `dlopen` on each candidate name and closes what it
        // opened.
        if !unsafe { bsys::is_culib_present() } {
            return Err(err(
                "load cuBLAS",
                format!(
                    "libcublas was not found (tried {}): install the CUDA toolkit's cuBLAS or \
                     put it on the library search path",
                    cudarc::get_lib_name_candidates("cublas").join(", ")
                ),
            ));
        }
        dev.bind("cublasCreate")?;
        let handle =
            blas::create_handle().map_err(|e| err("cublasCreate", blas_message(e)))?;
        let mut version: c_int = 0;
        // SAFETY: `handle` was just created; `compute` is the device's live stream (the two
        // stream types are the same driver object under two bindings' names).
        let set = unsafe {
            bsys::cublasGetVersion_v2(handle, &mut version)
                .result()
                .and_then(|_| blas::set_stream(handle, dev.compute as bsys::cudaStream_t))
        };
        if let Err(e) = set {
            // SAFETY: `handle` is live and not used after this.
            unsafe { blas::destroy_handle(handle) }.ok();
            return Err(err("cublasSetStream", blas_message(e)));
        }
        Ok(Cublas { handle, version })
    }

    /// The library's version as `major.minor.patch`.
    pub fn version(&self) -> String {
        let v = self.version;
        format!("{}.{}.{}", v / 10000, (v / 100) % 100, v % 100)
    }

    /// Queues `out [m, n] = a [m, k] w [n, k]^T` (row-major f16, f32 accumulation) on the
    /// compute queue of `dev`. The buffers are checked against the shape.
    pub fn gemm_f16(
        &mut self,
        dev: &mut CudaDevice,
        (m, n, k): (usize, usize, usize),
        a: DeviceBuffer<u16>,
        w: DeviceBuffer<u16>,
        out: DeviceBuffer<u16>,
    ) -> Result<()> {
        let op = format!("cublasGemmEx {m}x{n}x{k}");
        for (name, buf, want) in [("A", &a, m * k), ("W", &w, n * k), ("out", &out, m * n)] {
            if buf.len() < want {
                return Err(Error::Invalid(format!(
                    "{op}: {name} holds {} f16, the shape needs {want}",
                    buf.len()
                )));
            }
        }
        let dim = |v: usize| {
            c_int::try_from(v).map_err(|_| Error::Invalid(format!("{op}: {v} exceeds an int")))
        };
        let (mi, ni, ki) = (dim(m)?, dim(n)?, dim(k)?);
        dev.bind(&op)?;
        let (alpha, beta) = (1.0f32, 0.0f32);
        // SAFETY: the three buffers are live allocations of `dev` holding at least the
        // elements the shape reads or writes (checked above); alpha and beta are host f32
        // (the handle's default pointer mode) matching the f32 compute type; the handle is
        // bound to `dev`'s compute stream, whose context is current.
        unsafe {
            blas::gemm_ex(
                self.handle,
                bsys::cublasOperation_t::CUBLAS_OP_T,
                bsys::cublasOperation_t::CUBLAS_OP_N,
                ni,
                mi,
                ki,
                &alpha as *const f32 as *const c_void,
                w.addr() as *const c_void,
                bsys::cudaDataType::CUDA_R_16F,
                ki,
                a.addr() as *const c_void,
                bsys::cudaDataType::CUDA_R_16F,
                ki,
                &beta as *const f32 as *const c_void,
                out.addr() as *mut c_void,
                bsys::cudaDataType::CUDA_R_16F,
                ni,
                bsys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
                bsys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
            )
        }
        .map_err(|e| err(op, blas_message(e)))
    }
}

impl Drop for Cublas {
    fn drop(&mut self) {
        // SAFETY: the handle is live and dropped once.
        unsafe { blas::destroy_handle(self.handle) }.ok();
    }
}
