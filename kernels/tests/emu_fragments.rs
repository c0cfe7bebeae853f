//! The emulated ldmatrix and mma against the PTX ISA fragment tables in
//! `shared/ptx/fragments.json`, element by element.

mod common;

use common::{
    config, field, fragments, launch, mut_ptr, poisoned_f32, poisoned_u32, ptr, rows, Rng,
};
use half::{bf16, f16};
use streamdit_kernels::emu::{self, ThreadOrder};

#[repr(C)]
#[derive(Clone, Copy)]
struct LdmatrixProbeParams {
    image: *const u16,
    row_offset: *const i32,
    out: *mut u32,
    image_elems: i32,
    variant: i32,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct MmaProbeParams {
    a: *const u32,
    b: *const u32,
    c: *const f32,
    d: *mut f32,
    bf16: i32,
}

/// Element (row, col) of matrix j holds this code; unused memory holds POISON.
fn code(matrix: usize, row: usize, col: usize) -> u16 {
    (0x100 + (matrix << 6) + (row << 3) + col) as u16
}
const POISON: u16 = 0xdead;
/// Rows live in 16-byte-aligned slots of 24 elements (48 bytes), scattered: slot 40 is
/// a poisoned row given to the lanes whose address the shape does not use.
const SLOT: usize = 24;
const SLOTS: usize = 41;

#[test]
fn ldmatrix_matches_the_ptx_fragment_tables() {
    // Every tier: the probe's rows are written by threads and read by ldmatrix of others.
    let _race = emu::racecheck(true);
    let Some(tables) = fragments() else { return };
    let variants = [
        ("x1", 1, 0),
        ("x2", 2, 1),
        ("x4", 4, 2),
        ("x1_trans", 1, 3),
        ("x2_trans", 2, 4),
        ("x4_trans", 4, 5),
    ];
    for (key, num, variant) in variants {
        // Scatter the rows of the `num` matrices over the slots in a fixed shuffled order.
        let mut slots: Vec<usize> = (0..40).collect();
        let mut rng = Rng::new(variant as u64 + 1);
        for i in (1..slots.len()).rev() {
            slots.swap(i, (rng.next_u64() % (i as u64 + 1)) as usize);
        }
        let mut image = vec![POISON; SLOTS * SLOT];
        for j in 0..num {
            for r in 0..8 {
                let base = slots[j * 8 + r] * SLOT;
                for c in 0..8 {
                    image[base + c] = code(j, r, c);
                }
            }
        }
        let mut row_offset = vec![(40 * SLOT) as i32; 32];
        let addresses = rows(&tables, &["ldmatrix", key, "row_addresses"]);
        assert_eq!(addresses.len(), 8 * num, "{key}: row address table size");
        for a in addresses {
            row_offset[field(a, "lane")] =
                (slots[field(a, "matrix") * 8 + field(a, "row")] * SLOT) as i32;
        }
        let mut out = poisoned_u32(32 * 4);
        let params = LdmatrixProbeParams {
            image: ptr(&image),
            row_offset: ptr(&row_offset),
            out: mut_ptr(&mut out),
            image_elems: image.len() as i32,
            variant,
        };
        // SAFETY: buffers sized as the kernel reads and writes them for one warp.
        unsafe {
            launch(
                "selftest_ldmatrix",
                config(1, 32, (image.len() * 2) as u32),
                &params,
                ThreadOrder::Forward,
            )
        }
        .unwrap_or_else(|e| panic!("{key}: {e}"));

        let registers = rows(&tables, &["ldmatrix", key, "registers"]);
        assert_eq!(registers.len(), 32 * num * 2, "{key}: register table size");
        let mut seen = vec![false; 32 * 4 * 2];
        for e in registers {
            let (lane, reg, half) = (field(e, "lane"), field(e, "reg"), field(e, "half"));
            let got = (out[lane * 4 + reg] >> (16 * half)) as u16;
            let want = code(field(e, "matrix"), field(e, "row"), field(e, "col"));
            assert_eq!(
                got, want,
                "ldmatrix.{key}: lane {lane} reg {reg} half {half} holds {got:#06x}, the table says \
                 matrix {} row {} col {} ({want:#06x})",
                e["matrix"], e["row"], e["col"]
            );
            seen[(lane * 4 + reg) * 2 + half] = true;
        }
        for lane in 0..32 {
            for reg in 0..num {
                assert!(
                    seen[(lane * 4 + reg) * 2] && seen[(lane * 4 + reg) * 2 + 1],
                    "{key}: table misses lane {lane} reg {reg}"
                );
            }
            for reg in num..4 {
                assert_eq!(
                    out[lane * 4 + reg],
                    u32::MAX,
                    "{key}: lane {lane} wrote register {reg} beyond x{num}"
                );
            }
        }
    }
}

/// A 16-bit encoder for the two input types.
#[derive(Clone, Copy, Debug)]
enum Ty {
    F16,
    Bf16,
}

impl Ty {
    fn bits(self, v: f32) -> u16 {
        match self {
            Ty::F16 => f16::from_f32(v).to_bits(),
            Ty::Bf16 => bf16::from_f32(v).to_bits(),
        }
    }
}

/// Matrices of one mma: A (16x16), B (16x8, B[k][n]), C (16x8).
struct Problem {
    a: [[f32; 16]; 16],
    b: [[f32; 8]; 16],
    c: [[f32; 8]; 16],
}

/// Packs each problem into per-lane fragments with the tables, runs one warp per problem,
/// and returns D unpacked with the tables: d[problem][row][col].
fn run_mma(tables: &serde_json::Value, ty: Ty, problems: &[Problem]) -> Vec<[[f32; 8]; 16]> {
    let a_table = rows(tables, &["mma_m16n8k16_f16_f32", "A_16x16_row"]);
    let b_table = rows(tables, &["mma_m16n8k16_f16_f32", "B_16x8_col"]);
    let cd_table = rows(tables, &["mma_m16n8k16_f16_f32", "CD_16x8_f32"]);
    assert_eq!(
        (a_table.len(), b_table.len(), cd_table.len()),
        (256, 128, 128),
        "mma table sizes"
    );
    let warps = problems.len();
    let mut a = vec![0u32; warps * 32 * 4];
    let mut b = vec![0u32; warps * 32 * 2];
    let mut c = vec![0f32; warps * 32 * 4];
    for (w, p) in problems.iter().enumerate() {
        for e in a_table {
            let v = ty.bits(p.a[field(e, "row")][field(e, "col")]) as u32;
            a[(w * 32 + field(e, "lane")) * 4 + field(e, "reg")] |= v << (16 * field(e, "half"));
        }
        for e in b_table {
            let v = ty.bits(p.b[field(e, "row")][field(e, "col")]) as u32;
            b[(w * 32 + field(e, "lane")) * 2 + field(e, "reg")] |= v << (16 * field(e, "half"));
        }
        for e in cd_table {
            c[(w * 32 + field(e, "lane")) * 4 + field(e, "reg")] =
                p.c[field(e, "row")][field(e, "col")];
        }
    }
    let mut d = poisoned_f32(warps * 32 * 4);
    let params = MmaProbeParams {
        a: ptr(&a),
        b: ptr(&b),
        c: ptr(&c),
        d: mut_ptr(&mut d),
        bf16: matches!(ty, Ty::Bf16) as i32,
    };
    let per_block = 4;
    assert_eq!(warps % per_block, 0);
    // SAFETY: one (32 x 4, 32 x 2, 32 x 4, 32 x 4) fragment set per warp, warps = grid * 4.
    unsafe {
        launch(
            "selftest_mma",
            config((warps / per_block) as u32, 32 * per_block as u32, 0),
            &params,
            ThreadOrder::Shuffle(7),
        )
    }
    .unwrap_or_else(|e| panic!("{ty:?}: {e}"));
    let mut out = vec![[[f32::NAN; 8]; 16]; warps];
    for (w, o) in out.iter_mut().enumerate() {
        for e in cd_table {
            o[field(e, "row")][field(e, "col")] =
                d[(w * 32 + field(e, "lane")) * 4 + field(e, "reg")];
        }
    }
    out
}

fn exact_product(p: &Problem) -> [[f64; 8]; 16] {
    let mut d = [[0f64; 8]; 16];
    for (i, row) in d.iter_mut().enumerate() {
        for (n, v) in row.iter_mut().enumerate() {
            *v = p.c[i][n] as f64
                + (0..16)
                    .map(|k| p.a[i][k] as f64 * p.b[k][n] as f64)
                    .sum::<f64>();
        }
    }
    d
}

/// Small integers: every product and sum is exact, so D must equal A*B + C exactly, and
/// any element of A, B, C or D the emulator places differently from the tables shows.
#[test]
fn mma_fragments_match_the_ptx_tables_exactly() {
    let _race = common::race_check_full();
    let Some(tables) = fragments() else { return };
    for ty in [Ty::F16, Ty::Bf16] {
        let mut rng = Rng::new(11);
        let mut problems = Vec::new();
        for _ in 0..16 {
            let mut p = Problem {
                a: [[0.0; 16]; 16],
                b: [[0.0; 8]; 16],
                c: [[0.0; 8]; 16],
            };
            p.a.iter_mut()
                .flatten()
                .for_each(|v| *v = rng.int(-8, 8) as f32);
            p.b.iter_mut()
                .flatten()
                .for_each(|v| *v = rng.int(-8, 8) as f32);
            p.c.iter_mut()
                .flatten()
                .for_each(|v| *v = rng.int(-64, 64) as f32);
            problems.push(p);
        }
        let d = run_mma(&tables, ty, &problems);
        for (w, p) in problems.iter().enumerate() {
            let want = exact_product(p);
            for i in 0..16 {
                for n in 0..8 {
                    assert_eq!(
                        d[w][i][n] as f64, want[i][n],
                        "{ty:?} problem {w}: D[{i}][{n}]"
                    );
                }
            }
        }
    }
}

/// The code c + 1 an element was given, back from an exact D element.
fn decode(v: f32) -> usize {
    assert!(v >= 1.0 && v.fract() == 0.0, "{v} is not an element code");
    v as usize - 1
}

/// Decodes where each element of A and B goes: A holds codes and B selects one column of
/// A per output column (two launches cover k = 0..7 and 8..15); A = I selects the rows of B.
#[test]
fn mma_decodes_every_a_and_b_element() {
    let _race = common::race_check_full();
    let Some(tables) = fragments() else { return };
    for ty in [Ty::F16, Ty::Bf16] {
        let mut problems = Vec::new();
        for s in 0..2 {
            let mut p = Problem {
                a: [[0.0; 16]; 16],
                b: [[0.0; 8]; 16],
                c: [[0.0; 8]; 16],
            };
            for i in 0..16 {
                for k in 0..16 {
                    p.a[i][k] = (i * 16 + k + 1) as f32; // <= 256: exact in f16 and bf16
                }
            }
            for n in 0..8 {
                p.b[n + 8 * s][n] = 1.0;
            }
            problems.push(p);
        }
        let mut p = Problem {
            a: [[0.0; 16]; 16],
            b: [[0.0; 8]; 16],
            c: [[0.0; 8]; 16],
        };
        for i in 0..16 {
            p.a[i][i] = 1.0;
            for n in 0..8 {
                p.b[i][n] = (i * 8 + n + 1) as f32;
            }
        }
        problems.push(p);
        while problems.len() % 4 != 0 {
            problems.push(Problem {
                a: [[1.0; 16]; 16],
                b: [[1.0; 8]; 16],
                c: [[1.0; 8]; 16],
            });
        }
        let d = run_mma(&tables, ty, &problems);
        for (s, ds) in d.iter().take(2).enumerate() {
            for (i, row) in ds.iter().enumerate() {
                for (n, &v) in row.iter().enumerate() {
                    let code = decode(v);
                    assert_eq!(
                        (code / 16, code % 16),
                        (i, n + 8 * s),
                        "{ty:?}: D[{i}][{n}] reads A element {code}"
                    );
                }
            }
        }
        for (k, row) in d[2].iter().enumerate() {
            for (n, &v) in row.iter().enumerate() {
                let code = decode(v);
                assert_eq!(
                    (code / 8, code % 8),
                    (k, n),
                    "{ty:?}: D[{k}][{n}] reads B element {code}"
                );
            }
        }
    }
}

/// Random f16/bf16 inputs against an f64 reference: each result within the error bound of
/// f32 accumulation of 17 terms, 17 * 2^-24 * (|c| + sum |a b|).
#[test]
fn mma_numerics_match_an_f32_accumulation_reference() {
    let _race = common::race_check_full();
    let Some(tables) = fragments() else { return };
    for ty in [Ty::F16, Ty::Bf16] {
        let mut rng = Rng::new(23);
        let round = |v: f32| match ty {
            Ty::F16 => f16::from_f32(v).to_f32(),
            Ty::Bf16 => bf16::from_f32(v).to_f32(),
        };
        let mut problems = Vec::new();
        for _ in 0..32 {
            let mut p = Problem {
                a: [[0.0; 16]; 16],
                b: [[0.0; 8]; 16],
                c: [[0.0; 8]; 16],
            };
            p.a.iter_mut()
                .flatten()
                .for_each(|v| *v = round(rng.nonzero(-2.0, 2.0)));
            p.b.iter_mut()
                .flatten()
                .for_each(|v| *v = round(rng.nonzero(-2.0, 2.0)));
            p.c.iter_mut()
                .flatten()
                .for_each(|v| *v = rng.nonzero(-4.0, 4.0));
            problems.push(p);
        }
        let d = run_mma(&tables, ty, &problems);
        let mut worst = 0f64;
        for (w, p) in problems.iter().enumerate() {
            let want = exact_product(p);
            for i in 0..16 {
                for n in 0..8 {
                    let mag = p.c[i][n].abs() as f64
                        + (0..16)
                            .map(|k| (p.a[i][k] as f64 * p.b[k][n] as f64).abs())
                            .sum::<f64>();
                    let bound = 17.0 * 2f64.powi(-24) * mag;
                    let err = (d[w][i][n] as f64 - want[i][n]).abs();
                    assert!(
                        err <= bound,
                        "{ty:?} problem {w} D[{i}][{n}] = {} vs {}: error {err:e} > {bound:e}",
                        d[w][i][n],
                        want[i][n]
                    );
                    worst = worst.max(err / bound);
                }
            }
        }
        eprintln!(
            "mma {ty:?}: worst error {:.3} of the f32 accumulation bound",
            worst
        );
    }
}
