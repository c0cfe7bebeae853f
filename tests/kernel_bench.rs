//! `bench --kernels` (issue 18): the GEMM paths of a device side by side on the same inputs.
//! On the emulator (modelling compute capability 9.0) both of our paths run, and the
//! comparison must find them equal to f16 rounding; a wrong shape or a GPU that is not there
//! is a named error.

use streamdit::inspect::{kernel_bench, AttentionKind, AttentionShape, GemmShape, KernelDevice};

/// A ragged shape: M not a multiple of any tile, K with a tail past one 64-deep k-tile.
const SHAPE: GemmShape = GemmShape {
    m: 150,
    n: 72,
    k: 88,
    count: 3,
};

#[test]
fn both_gemm_paths_run_and_agree_on_the_emulator() {
    let bench = kernel_bench(KernelDevice::Emulator, &[SHAPE], &[], &[], 1).unwrap();
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
    let e = kernel_bench(KernelDevice::Emulator, &[zero], &[], &[], 1).unwrap_err();
    assert!(e.to_string().contains("zero dimension"), "{e}");
    let odd = GemmShape { n: 70, ..SHAPE };
    let e = kernel_bench(KernelDevice::Emulator, &[odd], &[], &[], 1).unwrap_err();
    assert!(e.to_string().contains("N = 70"), "{e}");
    let e = kernel_bench(KernelDevice::Emulator, &[SHAPE], &[], &[], 0).unwrap_err();
    assert!(e.to_string().contains("at least 1"), "{e}");
    // Where no GPU can be opened the error says why; on a GPU the bench runs.
    match kernel_bench(KernelDevice::Gpu(0), &[SHAPE], &[], &[], 1) {
        Ok(b) => assert_eq!(b.rows.len(), 1),
        Err(e) => {
            let text = e.to_string();
            assert!(text.contains("cuda") || text.contains("CUDA"), "{text}");
        }
    }
}

/// The attention rows on the emulator (modelling 9.0): a shifted window shape inside the
/// sm_90a window kernel's contract and the Wan KV-cache attention at dh = 128 run on both
/// paths, a window outside the contract (W window 4), cross-attention and the dh = 16
/// KV-cache attention on mma.sync only; every path's output is checked against the f32 CPU
/// reference and the paths agree; the CTA counts are the packed tile list's.
#[test]
fn attention_rows_run_and_match_the_cpu_on_the_emulator() {
    let window = |window: [usize; 3], shift: [usize; 3], grid: [usize; 3]| AttentionShape {
        kind: AttentionKind::Window {
            grid,
            window,
            shift,
        },
        batch: 1,
        heads: 2,
        head_dim: 64,
        count: 2,
    };
    let shapes = [
        window([2, 4, 16], [1, 2, 8], [4, 4, 32]),
        window([2, 4, 4], [1, 2, 2], [4, 4, 4]),
        AttentionShape {
            kind: AttentionKind::Cross {
                tokens: 100,
                text_len: 40,
            },
            batch: 2,
            heads: 2,
            head_dim: 64,
            count: 1,
        },
    ];
    let kv = |head_dim: usize| AttentionShape {
        kind: AttentionKind::KvCache {
            tokens: 70,
            frame_tokens: 35,
            frames: 3,
            cache_slots: 3,
        },
        batch: 1,
        heads: 2,
        head_dim,
        count: 4,
    };
    let shapes = [shapes[0], shapes[1], shapes[2], kv(128), kv(16)];
    let bench = kernel_bench(KernelDevice::Emulator, &[], &shapes, &[], 1).unwrap();
    assert_eq!(bench.attention.len(), 5);
    let paths =
        |i: usize| -> Vec<&str> { bench.attention[i].paths.iter().map(|p| p.path).collect() };
    assert_eq!(paths(0), ["mma.sync", "sm90a"]);
    assert_eq!(paths(1), ["mma.sync"]);
    assert_eq!(paths(2), ["mma.sync"]);
    assert_eq!(paths(3), ["mma.sync", "sm90a"]);
    assert_eq!(paths(4), ["mma.sync"]);
    assert_eq!(bench.attention[3].paths[1].kernel, "attn_sm90_kvcache_d128");
    for row in &bench.attention {
        assert!(shapes.contains(&row.shape));
        assert!(row.shape.flops() > 0.0);
        for p in &row.paths {
            eprintln!(
                "{} {} {}: {} CTAs, rel diff {:.2e}, vs CPU {:?}",
                row.shape.label(),
                p.path,
                p.kernel,
                p.ctas,
                p.rel_diff,
                p.rel_l2_cpu
            );
            assert!(p.ms > 0.0 && p.tflops > 0.0, "{p:?}");
            assert!(p.rel_diff.is_finite() && p.rel_diff <= 1e-2, "{p:?}");
            let cpu = p.rel_l2_cpu.expect("the emulator checks against the CPU");
            assert!(cpu <= 2e-3, "{}: {p:?}", row.shape.label());
        }
    }
    // Shifted 4x4x32 grid, window 2x4x16, shift 1x2x8: windows of 1..2 x 2..4 x 8..16
    // tokens, 3 x 2 x 3 = 18 windows, one 64-row tile each; the unpacked grid had 18 x 2.
    let w = &bench.attention[0];
    assert_eq!(w.unpacked_ctas, Some(36));
    assert_eq!(w.paths[0].ctas, 18 * 2);
    assert_eq!(w.paths[1].kernel, "attn_sm90_window_d64");
}

/// The norm + GEMM rows on the emulator (modelling 9.0): adaLN then the sm_90a GEMM, the
/// statistics pass then the prologue GEMM, and the prologue GEMM over the epilogue's partial
/// statistics all run on a ragged shape (M past one tile, K with a tail and three 128-column
/// groups, the last ragged) and agree to f16 rounding; each output was poisoned first.
#[test]
fn norm_gemm_rows_fold_and_agree_on_the_emulator() {
    let shape = GemmShape {
        m: 150,
        n: 72,
        k: 264,
        count: 2,
    };
    let bench = kernel_bench(KernelDevice::Emulator, &[], &[], &[shape], 1).unwrap();
    assert_eq!(bench.prologues.len(), 1);
    let row = &bench.prologues[0];
    assert_eq!(row.shape, shape);
    let paths: Vec<&str> = row.paths.iter().map(|p| p.path).collect();
    assert_eq!(paths, ["adaln+sm90a", "stats+ln", "ln"]);
    for p in &row.paths {
        eprintln!("{} {:.3} ms, rel diff {:.2e}", p.path, p.ms, p.rel_diff);
        assert!(p.ms > 0.0 && p.tflops > 0.0, "{p:?}");
        // One f16 rounding of A (the adaLN output, or the prologue's registers) and one of
        // the output: a few f16 ulps of the largest output at most; NaN if unwritten.
        assert!(p.rel_diff.is_finite() && p.rel_diff <= 4e-3, "{p:?}");
    }
    assert_eq!(row.paths[0].rel_diff, 0.0);
    let zero = GemmShape { m: 0, ..shape };
    let e = kernel_bench(KernelDevice::Emulator, &[], &[], &[zero], 1).unwrap_err();
    assert!(e.to_string().contains("norm + GEMM shape"), "{e}");
}
