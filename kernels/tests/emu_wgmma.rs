//! The emulated wgmma against the tables of `shared/ptx/wgmma.json` (transcribed from the PTX
//! ISA apart from the emulator), element by element: the accumulator layout for every N the
//! tables list, the register layout of A, the matrix descriptor's decoding and the canonical
//! K-major addresses of every listed variant; then the asynchronous semantics (accumulators
//! poisoned until the wait that retires them, groups, chaining, negation) and the misuse the
//! emulator must refuse. Every launch runs in forward, reverse and shuffled thread order.

mod common;

use common::{config, hex, num, wgmma_tables, Rng, WgmmaProbeParams, SHARED_BASE};
use half::{bf16, f16};
use serde_json::Value;
use streamdit_kernels::emu::{self, EmuError, EmuErrorKind, ThreadOrder};

/// A shared-memory image: byte i is at shared address i.
struct Image(Vec<u8>);

impl Image {
    fn new(bytes: usize) -> Self {
        Image(vec![0xa5; bytes])
    }
    fn put(&mut self, addr: usize, bits: u16) {
        self.0[addr..addr + 2].copy_from_slice(&bits.to_le_bytes());
    }
}

/// The PTX ISA's canonical K-major layout without swizzle, ((8,m),(T,2k)):((1T,SBO),(1,LBO))
/// for 16-bit elements: the byte address of (mn, k). Checked against the JSON tables below.
fn k_major_none(start: usize, lbo: usize, sbo: usize, mn: usize, k: usize) -> usize {
    start + (mn % 8) * 16 + (mn / 8) * sbo + (k % 8) * 2 + (k / 8) * lbo
}

/// The "Matrix Descriptor Format" encoding, written from the JSON's field list.
fn desc(start: usize, lbo: usize, sbo: usize, swizzle: u64) -> u64 {
    let enc = |x: usize| ((x as u64) & 0x3ffff) >> 4;
    enc(start) | enc(lbo) << 16 | enc(sbo) << 32 | swizzle << 62
}

fn bits(v: f32, bf: bool) -> u16 {
    if bf {
        bf16::from_f32(v).to_bits()
    } else {
        f16::from_f32(v).to_bits()
    }
}

struct Run {
    n: usize,
    bf16: bool,
    image: Image,
    a_regs: Option<Vec<u32>>,
    c: Vec<f32>,
    desc_a: u64,
    desc_b: u64,
    scale_d: bool,
    mode: i32,
    threads: u32,
}

impl Run {
    fn new(n: usize, bf16: bool, image: Image, desc_a: u64, desc_b: u64) -> Self {
        Run {
            n,
            bf16,
            image,
            a_regs: None,
            c: vec![f32::NAN; 128 * n / 2],
            desc_a,
            desc_b,
            scale_d: false,
            mode: 0,
            threads: 128,
        }
    }

    /// (out, early) per order, or the first error.
    fn launch(&self, order: ThreadOrder) -> Result<(Vec<f32>, Vec<f32>), EmuError> {
        let regs = 128 * self.n / 2;
        let mut out = vec![f32::NAN; regs];
        let mut early = vec![f32::NAN; regs];
        let p = WgmmaProbeParams {
            image: self.image.0.as_ptr(),
            a_regs: self
                .a_regs
                .as_ref()
                .map_or(std::ptr::null(), |a| a.as_ptr()),
            c: self.c.as_ptr(),
            out: out.as_mut_ptr(),
            early: early.as_mut_ptr(),
            desc_a: self.desc_a,
            desc_b: self.desc_b,
            image_bytes: self.image.0.len() as i32,
            n: self.n as i32,
            bf16: i32::from(self.bf16),
            scale_d: i32::from(self.scale_d),
            mode: self.mode,
        };
        let shared = (self.image.0.len() - SHARED_BASE) as u32;
        // SAFETY: every buffer covers 128 threads x n/2 accumulators (a_regs 128 x 4), the
        // image its stated length; all live until the launch returns.
        unsafe { common::launch("selftest_wgmma", config(1, self.threads, shared), &p, order) }?;
        Ok((out, early))
    }

    fn each_order(&self, check: impl Fn(ThreadOrder, &[f32], &[f32])) {
        for order in ThreadOrder::all(11) {
            let (out, early) = self
                .launch(order)
                .unwrap_or_else(|e| panic!("{order:?}: {e}"));
            check(order, &out, &early);
        }
    }

    fn error(&self) -> EmuError {
        let mut first: Option<EmuError> = None;
        for order in ThreadOrder::all(12) {
            let e = match self.launch(order) {
                Err(e) => e,
                Ok(_) => panic!("{order:?}: mode {} launched without an error", self.mode),
            };
            if let Some(f) = &first {
                assert_eq!(f.kind, e.kind, "{order:?}: {e}");
            }
            first.get_or_insert(e);
        }
        first.unwrap()
    }
}

/// acc_f32.N<n>[thread][reg] = [row, col].
fn acc_table(t: &Value, n: usize) -> Vec<Vec<(usize, usize)>> {
    t["acc_f32"][format!("N{n}")]
        .as_array()
        .unwrap_or_else(|| panic!("wgmma.json has no acc_f32.N{n}"))
        .iter()
        .map(|th| {
            th.as_array()
                .unwrap()
                .iter()
                .map(|rc| (num(&rc[0]), num(&rc[1])))
                .collect()
        })
        .collect()
}

const A_AT: usize = 0x1000;
const B_AT: usize = 0x2000;
const LBO: usize = 128;
const SBO: usize = 256;

/// An image with A (64 x 16) at A_AT and B (n x 16) at B_AT, both canonical K-major without
/// swizzle (LBO 128, SBO 256), and their descriptors.
fn ab_image(
    n: usize,
    bf: bool,
    a: impl Fn(usize, usize) -> f32,
    b: impl Fn(usize, usize) -> f32,
) -> (Image, u64, u64) {
    let mut img = Image::new(B_AT + (n / 8) * SBO);
    for m in 0..64 {
        for k in 0..16 {
            img.put(k_major_none(A_AT, LBO, SBO, m, k), bits(a(m, k), bf));
        }
    }
    for col in 0..n {
        for k in 0..16 {
            img.put(k_major_none(B_AT, LBO, SBO, col, k), bits(b(col, k), bf));
        }
    }
    (img, desc(A_AT, LBO, SBO, 0), desc(B_AT, LBO, SBO, 0))
}

#[test]
fn the_test_layout_formula_reproduces_the_unswizzled_json_tables() {
    let Some(t) = wgmma_tables() else { return };
    for variant in ["none_lbo1024_sbo128", "none_lbo128_sbo1024"] {
        let v = &t["smem_k_major_f16_64x64"][variant];
        let (start, lbo, sbo) = (num(&v["tile_start"]), num(&v["lbo"]), num(&v["sbo"]));
        let addr = v["addr"].as_array().unwrap();
        for (row, line) in addr.iter().enumerate() {
            for (k, a) in line.as_array().unwrap().iter().enumerate() {
                let j = k / 16;
                let want = k_major_none(start + j * 2 * lbo, lbo, sbo, row, k % 16);
                assert_eq!(num(a), want, "{variant}: row {row} k {k}");
            }
        }
        for (j, d) in v["kstep_descriptors"]
            .as_array()
            .unwrap()
            .iter()
            .enumerate()
        {
            assert_eq!(
                hex(d),
                desc(start + j * 2 * lbo, lbo, sbo, 0),
                "{variant} step {j}"
            );
        }
    }
}

#[test]
fn accumulator_layout_matches_the_table_for_every_n() {
    let _race = common::race_check_full();
    let Some(t) = wgmma_tables() else { return };
    for n in [8, 16, 32, 64, 128, 256] {
        let table = acc_table(&t, n);
        for bf in [false, true] {
            // A[m][0] = m, A[m][1] = 1, B[0][n] = 1, B[1][n] = 64 n: D[m][n] = m + 64 n
            // exactly (README of wgmma.json, check 1); C is NaN and scale-d 0 ignores it.
            let a = |m: usize, k: usize| [m as f32, 1.0][..].get(k).copied().unwrap_or(0.0);
            let b = |col: usize, k: usize| match k {
                0 => 1.0,
                1 => 64.0 * col as f32,
                _ => 0.0,
            };
            let (img, da, db) = ab_image(n, bf, a, b);
            let run = Run::new(n, bf, img, da, db);
            run.each_order(|order, out, _| {
                for (th, regs) in table.iter().enumerate() {
                    assert_eq!(regs.len(), n / 2);
                    for (r, &(row, col)) in regs.iter().enumerate() {
                        let got = out[th * n / 2 + r];
                        let want = (row + 64 * col) as f32;
                        assert_eq!(
                            got, want,
                            "N{n} bf16 {bf} {order:?}: thread {th} reg {r} holds {got}, the table \
                             says D[{row}][{col}] = {want}"
                        );
                    }
                }
            });
        }
    }
}

#[test]
fn scale_d_adds_the_accumulators_and_scale_a_negates() {
    let _race = common::race_check_full();
    let Some(t) = wgmma_tables() else { return };
    let n = 64;
    let table = acc_table(&t, n);
    let mut rng = Rng::new(5);
    let a = |m: usize, k: usize| ((m * 7 + k * 3) % 11) as f32 - 5.0;
    let b = |col: usize, k: usize| ((col * 5 + k) % 9) as f32 - 4.0;
    let (img, da, db) = ab_image(n, false, a, b);
    let dot = |row: usize, col: usize| (0..16).map(|k| a(row, k) * b(col, k)).sum::<f32>();
    for mode in [0, 2, 4] {
        let mut run = Run::new(n, false, Image(img.0.clone()), da, db);
        run.c = (0..128 * n / 2).map(|_| rng.int(-50, 50) as f32).collect();
        run.scale_d = true;
        run.mode = mode;
        run.each_order(|order, out, _| {
            for (th, regs) in table.iter().enumerate() {
                for (r, &(row, col)) in regs.iter().enumerate() {
                    let c = run.c[th * n / 2 + r];
                    let want = match mode {
                        0 => dot(row, col) + c,
                        2 => 2.0 * dot(row, col) + c, // two chained wgmmas, one group
                        _ => c - dot(row, col),       // imm-scale-a = -1
                    };
                    assert_eq!(
                        out[th * n / 2 + r],
                        want,
                        "mode {mode} {order:?} t{th} r{r}"
                    );
                }
            }
        });
    }
}

#[test]
fn a_from_registers_follows_the_register_table() {
    let _race = common::race_check_full();
    let Some(t) = wgmma_tables() else { return };
    let acc16 = acc_table(&t, 16);
    let a_table = t["a_regs_f16"]["table"].as_array().unwrap();
    assert_eq!(a_table.len(), 128);
    for bf in [false, true] {
        // A[m][k] = 16 m + k (f16: exact to 1023; bf16: modulo 251, exact below 256), B = I:
        // D = A (README of wgmma.json, check 2).
        let value = |m: usize, k: usize| {
            let v = 16 * m + k;
            (if bf { v % 251 } else { v }) as f32
        };
        let (img, _, db) = ab_image(16, bf, |_, _| 0.0, |col, k| f32::from(col == k));
        let mut regs = vec![0u32; 128 * 4];
        for (th, tr) in a_table.iter().enumerate() {
            for (reg, halves) in tr.as_array().unwrap().iter().enumerate() {
                for (h, rk) in halves.as_array().unwrap().iter().enumerate() {
                    let b = bits(value(num(&rk[0]), num(&rk[1])), bf);
                    regs[th * 4 + reg] |= u32::from(b) << (16 * h);
                }
            }
        }
        let mut run = Run::new(16, bf, img, 0, db);
        run.a_regs = Some(regs);
        run.each_order(|order, out, _| {
            for (th, rr) in acc16.iter().enumerate() {
                for (r, &(row, col)) in rr.iter().enumerate() {
                    assert_eq!(
                        out[th * 8 + r],
                        value(row, col),
                        "bf16 {bf} {order:?}: thread {th} reg {r} (D[{row}][{col}])"
                    );
                }
            }
        });
    }
}

/// The address of every element of every k-step of the three K-major variants, through the
/// emulator's descriptor decoding, equals the table (README of wgmma.json, check 3).
#[test]
fn descriptors_decode_to_the_canonical_k_major_addresses() {
    let _race = common::race_check_full();
    let Some(t) = wgmma_tables() else { return };
    for variant in ["sw128", "none_lbo1024_sbo128", "none_lbo128_sbo1024"] {
        let v = &t["smem_k_major_f16_64x64"][variant];
        let addr = v["addr"].as_array().unwrap();
        for (j, d) in v["kstep_descriptors"]
            .as_array()
            .unwrap()
            .iter()
            .enumerate()
        {
            for (row, line) in addr.iter().enumerate() {
                for kk in 0..16 {
                    let want = num(&line[16 * j + kk]) as u32;
                    let got = emu::wgmma_operand_address(hex(d), row as u32, kk as u32, false)
                        .unwrap_or_else(|e| panic!("{variant}: {e}"));
                    assert_eq!(got, want, "{variant}: step {j} row {row} k {kk}");
                }
            }
        }
    }
    // The documented examples: start, LBO and SBO decode to the element offsets they imply,
    // and a non-zero base offset is refused rather than guessed.
    let swz = |addr: u32, swizzle: &str| {
        let b = match swizzle {
            "128B" => 3,
            "64B" => 2,
            "32B" => 1,
            _ => 0,
        };
        addr ^ (((addr >> 7) & ((1 << b) - 1)) << 4)
    };
    for e in t["descriptor"]["examples"].as_array().unwrap() {
        let d = hex(&e["u64"]);
        let (start, lbo, sbo) = (
            num(&e["start"]) as u32,
            num(&e["lbo"]) as u32,
            num(&e["sbo"]) as u32,
        );
        let sw = e["swizzle"].as_str().unwrap();
        if num(&e["base_offset"]) != 0 {
            let err = emu::wgmma_operand_address(d, 0, 0, false).unwrap_err();
            assert!(err.contains("base offset"), "{err}");
            continue;
        }
        let at = |mn, k| emu::wgmma_operand_address(d, mn, k, false).unwrap();
        assert_eq!(at(0, 0), swz(start, sw), "{e}");
        assert_eq!(at(8, 0), swz(start + sbo, sw), "{e}: SBO steps 8 rows");
        if sw == "none" {
            assert_eq!(at(0, 8), start + lbo, "{e}: LBO steps 8 k");
            assert_eq!(at(1, 0), start + 16, "{e}: a core matrix row is 16 bytes");
        }
    }
}

/// The same through whole wgmma launches: shared memory holds each element's index, B is
/// the identity, and D returns which element each (row, k) read.
#[test]
fn wgmma_reads_each_variant_from_the_table_addresses() {
    let _race = common::race_check_full();
    let Some(t) = wgmma_tables() else { return };
    let acc16 = acc_table(&t, 16);
    const B_ID: usize = 0x3000;
    for variant in ["sw128", "none_lbo1024_sbo128", "none_lbo128_sbo1024"] {
        let v = &t["smem_k_major_f16_64x64"][variant];
        let start = num(&v["tile_start"]);
        let addr = v["addr"].as_array().unwrap();
        for (j, d) in v["kstep_descriptors"]
            .as_array()
            .unwrap()
            .iter()
            .enumerate()
        {
            let mut got_index = vec![0usize; 64 * 16];
            // Two passes: index % 64 then index / 64 (both exact in f16).
            for pass in 0..2 {
                let mut img = Image::new(B_ID + 2 * SBO);
                for x in (start..start + 8192).step_by(2) {
                    let idx = (x - start) / 2;
                    let code = if pass == 0 { idx % 64 } else { idx / 64 };
                    img.put(x, bits(code as f32, false));
                }
                for col in 0..16 {
                    for k in 0..16 {
                        img.put(
                            k_major_none(B_ID, LBO, SBO, col, k),
                            bits(f32::from(col == k), false),
                        );
                    }
                }
                let run = Run::new(16, false, img, hex(d), desc(B_ID, LBO, SBO, 0));
                let (out, _) = run.launch(ThreadOrder::Shuffle(j as u64)).unwrap();
                for (th, rr) in acc16.iter().enumerate() {
                    for (r, &(row, col)) in rr.iter().enumerate() {
                        let c = out[th * 8 + r] as usize;
                        got_index[row * 16 + col] += if pass == 0 { c } else { 64 * c };
                    }
                }
            }
            for row in 0..64 {
                for kk in 0..16 {
                    let want = (num(&addr[row][16 * j + kk]) - start) / 2;
                    assert_eq!(
                        got_index[row * 16 + kk],
                        want,
                        "{variant} step {j} row {row} k {kk}"
                    );
                }
            }
        }
    }
}

fn small_run(mode: i32) -> Run {
    let (img, da, db) = ab_image(
        64,
        false,
        |m, k| (m + k) as f32,
        |c, k| (c % 3 + k % 2) as f32,
    );
    let mut run = Run::new(64, false, img, da, db);
    run.mode = mode;
    // Finite accumulators before the wgmma (scale-d 0 ignores them): a read before the wait
    // sees NaN only because the emulator poisons them.
    run.c = vec![0.0; 128 * 32];
    run
}

#[test]
fn accumulators_are_poisoned_until_the_wait_that_retires_them() {
    // Every tier: the operands are copied by the threads, fenced for the async proxy.
    let _race = emu::racecheck(true);
    let reference = small_run(0).launch(ThreadOrder::Forward).unwrap().0;
    assert!(reference.iter().all(|v| v.is_finite()));
    // Read before wait_group 0: NaN; after it: the result.
    small_run(1).each_order(|order, out, early| {
        assert!(
            early.iter().all(|v| v.is_nan()),
            "{order:?}: read before the wait"
        );
        assert_eq!(out, &reference[..], "{order:?}");
    });
    // Two groups: after wait_group 1 the first is complete, the second still pending.
    small_run(3).each_order(|order, out, early| {
        assert_eq!(
            out,
            &reference[..],
            "{order:?}: the first group after wait_group 1"
        );
        assert!(
            early.iter().all(|v| v.is_nan()),
            "{order:?}: the second group before wait 0"
        );
    });
}

#[test]
fn misuse_is_an_error_in_every_order() {
    let cases = [
        (5, EmuErrorKind::Warp, "wgmma.fence"),
        (6, EmuErrorKind::Warp, "differ"),
        (7, EmuErrorKind::Warp, "divergent warpgroup"),
        (8, EmuErrorKind::Warp, "setmaxnreg"),
    ];
    for (mode, kind, text) in cases {
        let e = small_run(mode).error();
        assert_eq!(e.kind, kind, "mode {mode}: {e}");
        assert!(e.message.contains(text), "mode {mode}: {e}");
    }
    // A warpgroup is 128 threads: a block of 96 has no complete warpgroup.
    let mut run = small_run(0);
    run.threads = 96;
    let e = run.error();
    assert!(e.message.contains("warpgroup 0, which has only 96"), "{e}");
    // A descriptor with a base offset, and one pointing past the shared memory.
    let mut run = small_run(0);
    run.desc_a |= 5 << 49;
    let e = run.error();
    assert_eq!(e.kind, EmuErrorKind::Address, "{e}");
    assert!(e.message.contains("base offset 5"), "{e}");
    let mut run = small_run(0);
    run.desc_b = desc(0x3f000, LBO, SBO, 0);
    let e = run.error();
    assert!(e.message.contains("outside"), "{e}");
}

/// Evaluates a rank-2 CuTe layout ((shape..),(shape..)):((stride..),(stride..)) at (i, j).
fn cute(shape: [&[usize]; 2], stride: [&[usize]; 2], i: usize, j: usize) -> usize {
    let mut off = 0;
    for (mode, mut c) in [i, j].into_iter().enumerate() {
        for (s, d) in shape[mode].iter().zip(stride[mode]) {
            off += (c % s) * d;
            c /= s;
        }
    }
    off
}

/// MN-major operands (imm-trans = 1) against the PTX ISA's worked examples of the
/// "Canonical Layouts" (MN-major, no swizzle / 32B / 64B, f16: the "exact layout" strings of
/// the figures, in elements, with their LBO and SBO), swizzled with the README's Swizzle<B,4,3>.
#[test]
fn mn_major_operands_follow_the_ptx_worked_examples() {
    let _race = common::race_check_full();
    type Example = (
        u64,
        usize,
        usize,
        [&'static [usize]; 2],
        [&'static [usize]; 2],
        usize,
    );
    let examples: [Example; 3] = [
        (
            0,
            256,
            128,
            [&[8, 1, 2], &[8, 2]],
            [&[1, 8, 64], &[8, 128]],
            16,
        ),
        (
            3,
            256,
            512,
            [&[8, 2, 2], &[8, 2]],
            [&[1, 8, 128], &[16, 256]],
            32,
        ),
        (
            2,
            512,
            1024,
            [&[8, 4, 2], &[8, 2]],
            [&[1, 8, 256], &[32, 512]],
            64,
        ),
    ];
    let start = 0x1000usize;
    for (mode, lbo, sbo, shape, stride, mn_extent) in examples {
        let b = [0, 3, 2, 1][mode as usize];
        let swz = |a: usize| a ^ (((a >> 7) & ((1 << b) - 1)) << 4);
        let d = desc(start, lbo, sbo, mode);
        for mn in 0..mn_extent {
            for k in 0..16 {
                let want = swz(start + 2 * cute(shape, stride, mn, k)) as u32;
                let got = emu::wgmma_operand_address(d, mn as u32, k as u32, true).unwrap();
                assert_eq!(got, want, "swizzle mode {mode}: mn {mn} k {k}");
            }
        }
    }
}
