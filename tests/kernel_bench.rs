//! `bench --kernels` (issue 18): the GEMM paths of a device side by side on the same inputs.
//! On the emulator (modelling compute capability 9.0) both of our paths run, and the
//! comparison must find them equal to f16 rounding; a wrong shape or a GPU that is not there
//! is a named error.

use streamdit::inspect::{kernel_bench, GemmShape, KernelDevice};

/// A ragged shape: M not a multiple of any tile, K with a tail past one 64-deep k-tile.
const SHAPE: GemmShape = GemmShape {
    m: 150,
    n: 72,
    k: 88,
    count: 3,
};

#[test]
fn both_gemm_paths_run_and_agree_on_the_emulator() {
    let bench = kernel_bench(KernelDevice::Emulator, &[SHAPE], 1).unwrap();
    assert!(bench.device.contains("9.0"), "{}", bench.device);
    assert!(bench.cublas.is_err(), "cuBLAS cannot run on the emulator");
    assert_eq!(bench.rows.len(), 1);
    let row = &bench.rows[0];
    assert_eq!(row.shape, SHAPE);
    let paths: Vec<&str> = row.paths.iter().map(|p| p.path).collect();
    assert_eq!(paths, ["mma.sync", "sm90a"]);
    for p in &row.paths {
        assert!(p.ms > 0.0 && p.tflops > 0.0, "{p:?}");
        // Both accumulate in f32 and round once to f16: they differ by at most about one
        // f16 ulp of the largest output (2^-10 relative), and a poisoned (unwritten) element
        // would make the difference NaN.
        assert!(p.rel_diff.is_finite() && p.rel_diff <= 2e-3, "{p:?}");
    }
    assert_eq!(row.paths[0].rel_diff, 0.0);
}

#[test]
fn bad_requests_are_named() {
    let zero = GemmShape { k: 0, ..SHAPE };
    let e = kernel_bench(KernelDevice::Emulator, &[zero], 1).unwrap_err();
    assert!(e.to_string().contains("zero dimension"), "{e}");
    let odd = GemmShape { n: 70, ..SHAPE };
    let e = kernel_bench(KernelDevice::Emulator, &[odd], 1).unwrap_err();
    assert!(e.to_string().contains("N = 70"), "{e}");
    let e = kernel_bench(KernelDevice::Emulator, &[SHAPE], 0).unwrap_err();
    assert!(e.to_string().contains("at least 1"), "{e}");
    // Where no GPU can be opened the error says why; on a GPU the bench runs.
    match kernel_bench(KernelDevice::Gpu(0), &[SHAPE], 1) {
        Ok(b) => assert_eq!(b.rows.len(), 1),
        Err(e) => {
            let text = e.to_string();
            assert!(text.contains("cuda") || text.contains("CUDA"), "{text}");
        }
    }
}
