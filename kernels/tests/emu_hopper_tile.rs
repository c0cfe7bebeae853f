//! One 64 x N tile through TMA -> mbarrier -> wgmma -> store in the emulator
//! (`selftest_hopper_tile` in kernels/cuda/emu_selftest_sm90.cu: a producer warpgroup issuing
//! TMA loads into a 2-stage mbarrier ring, a consumer warpgroup on wgmma m64nNk16), for every
//! swizzle mode with the canonical K-major layout it implies, on random f16 inputs, the
//! output poisoned, every thread order, against a CPU f32 reference; and under the race
//! checker: clean as written, and the planted early stage release reported.

mod common;

use common::{config, Rng};
use half::f16;
use streamdit_kernels::emu::{self, EmuError, EmuErrorKind, ThreadOrder};
use streamdit_kernels::tma::{
    DataType, Interleave, L2Promotion, OobFill, Swizzle, TensorMap, Tiled,
};

#[repr(C, align(64))]
#[derive(Clone, Copy)]
struct HopperTileParams {
    map_a: TensorMap,
    map_b: TensorMap,
    d: *mut f32,
    n: i32,
    k: i32,
    swizzle: i32,
}

/// The map of a row-major [rows, k] f16 matrix whose boxes land as the K-major layout of
/// swizzle mode `sw` (see the kernel): 128B a 2-D box of 64 k; the others a 3-D view that
/// splits k into atoms of 32, 16 or 8 elements.
fn map(ptr: *const u16, rows: usize, k: usize, sw: Swizzle) -> TensorMap {
    let atom = match sw {
        Swizzle::B128 => 64,
        Swizzle::B64 => 32,
        Swizzle::B32 => 16,
        Swizzle::None => 8,
    };
    let (dims, strides, boxes, es) = if sw == Swizzle::B128 {
        (
            vec![k as u64, rows as u64],
            vec![2 * k as u64],
            vec![64, rows as u32],
            vec![1, 1],
        )
    } else {
        (
            vec![atom as u64, rows as u64, (k / atom) as u64],
            vec![2 * k as u64, 2 * atom as u64],
            vec![atom as u32, rows as u32, (64 / atom) as u32],
            vec![1, 1, 1],
        )
    };
    Tiled {
        data_type: DataType::F16,
        global_address: ptr as u64,
        global_dim: dims,
        global_strides: strides,
        box_dim: boxes,
        element_strides: es,
        interleave: Interleave::None,
        swizzle: sw,
        l2_promotion: L2Promotion::B128,
        oob_fill: OobFill::Zero,
    }
    .encode_emulated()
    .unwrap_or_else(|e| panic!("{e}"))
}

struct Tile {
    n: usize,
    k: usize,
    a: Vec<u16>,
    b: Vec<u16>,
}

impl Tile {
    fn random(n: usize, k: usize, seed: u64) -> Self {
        let mut rng = Rng::new(seed);
        let mut gen = |len: usize| -> Vec<u16> {
            (0..len)
                .map(|_| f16::from_f32(rng.nonzero(-1.0, 1.0)).to_bits())
                .collect()
        };
        let a = gen(64 * k);
        let b = gen(n * k);
        Tile { n, k, a, b }
    }

    fn launch(
        &self,
        sw: Swizzle,
        kernel: emu::Kernel,
        order: ThreadOrder,
    ) -> Result<Vec<f32>, EmuError> {
        let mut d = vec![f32::NAN; 64 * self.n];
        let p = HopperTileParams {
            map_a: map(self.a.as_ptr(), 64, self.k, sw),
            map_b: map(self.b.as_ptr(), self.n, self.k, sw),
            d: d.as_mut_ptr(),
            n: self.n as i32,
            k: self.k as i32,
            swizzle: sw as i32,
        };
        let shared = (1024 + 2 * (64 * 64 * 2 + self.n * 64 * 2)) as u32;
        // SAFETY: the maps describe `a` [64, k] and `b` [n, k], `d` holds 64 x n; all live
        // until the launch returns.
        unsafe { emu::launch_with(kernel, config(1, 256, shared), &p, order) }?;
        Ok(d)
    }

    /// D = A B^T, each dot product summed in f32 in k order (the emulator's wgmma order; the
    /// tolerance below covers any order), and sum |a b| per element.
    fn reference(&self) -> (Vec<f32>, Vec<f64>) {
        let v = |x: u16| f16::from_bits(x).to_f32();
        let mut d = vec![0.0f32; 64 * self.n];
        let mut abs = vec![0.0f64; 64 * self.n];
        for m in 0..64 {
            for c in 0..self.n {
                let (mut s, mut t) = (0.0f32, 0.0f64);
                for kk in 0..self.k {
                    let p = v(self.a[m * self.k + kk]) * v(self.b[c * self.k + kk]);
                    s += p;
                    t += f64::from(p.abs());
                }
                d[m * self.n + c] = s;
                abs[m * self.n + c] = t;
            }
        }
        (d, abs)
    }
}

fn check(label: &str, got: &[f32], want: &[f32], abs: &[f64], k: usize) -> f64 {
    // Two f32 summations of k exact products differ by at most 2 gamma_k sum |a b|.
    let gamma = k as f64 * f64::from(f32::EPSILON) / 2.0;
    let mut worst = 0.0f64;
    for i in 0..got.len() {
        let err = (f64::from(got[i]) - f64::from(want[i])).abs();
        let tol = 2.0 * gamma * abs[i] + 1e-30;
        assert!(
            err <= tol,
            "{label}: element {i}: got {}, want {}, tol {tol:e}",
            got[i],
            want[i]
        );
        worst = worst.max(err / tol);
    }
    worst
}

fn all_swizzles() -> [Swizzle; 4] {
    [Swizzle::B128, Swizzle::B64, Swizzle::B32, Swizzle::None]
}

#[test]
fn tma_mbarrier_wgmma_tile_matches_the_reference_for_every_swizzle() {
    let kernel = emu::kernel("selftest_hopper_tile").unwrap();
    let full = std::env::var("STREAMDIT_FULL").is_ok_and(|v| v == "1");
    let shapes: &[(usize, usize)] = if full {
        &[(64, 128), (128, 192), (256, 256)]
    } else {
        &[(64, 192), (256, 128)]
    };
    for &(n, k) in shapes {
        let tile = Tile::random(n, k, (n * 1000 + k) as u64);
        let (want, abs) = tile.reference();
        for sw in all_swizzles() {
            for order in ThreadOrder::all(n as u64) {
                let label = format!("N {n} K {k} {sw:?} {order:?}");
                let got = tile
                    .launch(sw, kernel, order)
                    .unwrap_or_else(|e| panic!("{label}: {e}"));
                let worst = check(&label, &got, &want, &abs, k);
                eprintln!("{label}: worst err/tol {worst:.3}");
            }
        }
    }
}

#[test]
fn the_tile_is_race_free_and_an_early_stage_release_is_reported() {
    let tile = Tile::random(64, 192, 7);
    let (want, abs) = tile.reference();
    let _check = emu::racecheck(true);
    let kernel = emu::kernel("selftest_hopper_tile").unwrap();
    for sw in [Swizzle::B128, Swizzle::None] {
        let got = tile
            .launch(sw, kernel, ThreadOrder::Shuffle(3))
            .unwrap_or_else(|e| panic!("{sw:?}: {e}"));
        check(
            &format!("{sw:?} under the race checker"),
            &got,
            &want,
            &abs,
            192,
        );
    }
    // The consumer arrives on the stage's empty barrier before its wgmma retired: the next
    // TMA load into that stage is not ordered after the wgmma's operand reads.
    let planted = emu::variant("selftest_hopper_tile", "early_release").unwrap();
    let e = tile
        .launch(Swizzle::B128, planted, ThreadOrder::Forward)
        .unwrap_err();
    assert_eq!(e.kind, EmuErrorKind::Race, "{e}");
    assert!(e.message.contains("write-after-read"), "{e}");
    assert!(e.message.contains("wgmma.mma_async.f32.f16 at"), "{e}");
    assert!(e.message.contains("cp.async.bulk.tensor at"), "{e}");
    assert!(e.message.contains("the wgmma of warpgroup 1"), "{e}");
}
