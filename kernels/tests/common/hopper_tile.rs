//! The Hopper tile self-test's launch and reference (`selftest_hopper_tile` in
//! kernels/cuda/emu_selftest_sm90.cu), shared by tests/emu_hopper_tile.rs and
//! tests/race_check.rs (each includes it with `#[path]`).
#![allow(dead_code)]

use crate::common::{config, Rng};
use half::f16;
use streamdit_kernels::emu::{self, EmuError, ThreadOrder};
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
pub fn map(ptr: *const u16, rows: usize, k: usize, sw: Swizzle) -> TensorMap {
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

pub struct Tile {
    pub n: usize,
    pub k: usize,
    pub a: Vec<u16>,
    pub b: Vec<u16>,
}

impl Tile {
    pub fn random(n: usize, k: usize, seed: u64) -> Self {
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

    pub fn launch(
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
    pub fn reference(&self) -> (Vec<f32>, Vec<f64>) {
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

pub fn check(label: &str, got: &[f32], want: &[f32], abs: &[f64], k: usize) -> f64 {
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

pub fn all_swizzles() -> [Swizzle; 4] {
    [Swizzle::B128, Swizzle::B64, Swizzle::B32, Swizzle::None]
}
