//! TMA tensor loads and mbarriers in the emulator: the 128-byte swizzle against the
//! `tma_sw128_f16_64x64` table of `shared/ptx/wgmma.json`, and read back through the table's
//! wgmma descriptors; boxes of rank 1 to 5 with every swizzle, element strides, padded
//! strides and out-of-bounds fill against a model written from the CUDA Programming Guide;
//! loads that have not landed before the wait; mbarrier phases, and the deadlocks and misuse
//! the emulator must report. Every launch runs in forward, reverse and shuffled order.
#![allow(clippy::needless_range_loop)] // index loops mirror the tensor-map coordinates

mod common;

use common::{config, hex, num, wgmma_tables, SHARED_BASE};
use half::f16;
use streamdit_kernels::emu::{self, EmuError, EmuErrorKind, ThreadOrder};
use streamdit_kernels::tma::{
    DataType, Interleave, L2Promotion, OobFill, Swizzle, TensorMap, Tiled,
};

#[repr(C, align(64))]
#[derive(Clone, Copy)]
struct TmaProbeParams {
    map: TensorMap,
    out: *mut u8,
    coords: [i32; 5],
    rank: i32,
    box_bytes: i32,
    dst_offset: i32,
    mode: i32,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct MbarrierProbeParams {
    out: *mut i32,
    mode: i32,
}

fn tiled(
    dt: DataType,
    dims: &[u64],
    strides: &[u64],
    bx: &[u32],
    es: &[u32],
    sw: Swizzle,
) -> Tiled {
    Tiled {
        data_type: dt,
        global_address: 0,
        global_dim: dims.to_vec(),
        global_strides: strides.to_vec(),
        box_dim: bx.to_vec(),
        element_strides: es.to_vec(),
        interleave: Interleave::None,
        swizzle: sw,
        l2_promotion: L2Promotion::None,
        oob_fill: OobFill::Zero,
    }
}

/// Loads the box at `coords` of `t` over `global` (its address filled in) and returns the
/// box's shared-memory bytes.
fn load(
    t: &Tiled,
    global: &[u8],
    coords: &[i32],
    dst_offset: i32,
    mode: i32,
    order: ThreadOrder,
) -> Result<Vec<u8>, EmuError> {
    let mut t = t.clone();
    // SAFETY-free: the address is only recorded here; the launch below reads through it.
    t.global_address = global.as_ptr() as u64;
    let map = t.encode_emulated().unwrap_or_else(|e| panic!("{e}"));
    let box_bytes = t.box_bytes() as usize;
    let mut out = vec![0x5au8; box_bytes];
    let mut c = [0i32; 5];
    c[..coords.len()].copy_from_slice(coords);
    let p = TmaProbeParams {
        map,
        out: out.as_mut_ptr(),
        coords: c,
        rank: t.rank() as i32,
        box_bytes: box_bytes as i32,
        dst_offset,
        mode,
    };
    let shared = (1024 + dst_offset as usize + box_bytes + 1024) as u32;
    // SAFETY: the tensor map describes `global` (every in-bounds element lies inside it, the
    // callers size it so), `out` holds box_bytes, and both outlive the launch.
    unsafe { common::launch("selftest_tma", config(1, 64, shared), &p, order) }?;
    Ok(out)
}

/// Where TMA puts each byte of the box, from the CUDA Programming Guide ("The Swizzle
/// Modes") and the PTX ISA (cp.async.bulk.tensor): box elements dense in dimension order
/// (dimension 0 innermost; ceil(box / elementStride) elements along the others), then the
/// 16-byte chunk index XOR the 128-byte row index modulo span / 16 of the shared address
/// (the box starts 1024-byte aligned); out-of-bounds elements are zeros (or all-ones NaN).
fn model(t: &Tiled, global: &[u8], coords: &[i32], nan_fill: bool) -> Vec<u8> {
    let es = t.data_type.size() as usize;
    let rank = t.rank();
    let mut n = [1usize; 5];
    for i in 0..rank {
        n[i] = if i == 0 {
            t.box_dim[0] as usize
        } else {
            (t.box_dim[i] as usize).div_ceil(t.element_strides[i] as usize)
        };
    }
    let row_bytes = n[0] * es;
    let w = (t.swizzle.span() / 16).max(1) as usize;
    let mut out = vec![0u8; t.box_bytes() as usize];
    let mut row = 0usize;
    for e4 in 0..n[4] {
        for e3 in 0..n[3] {
            for e2 in 0..n[2] {
                for e1 in 0..n[1] {
                    let e = [0, e1, e2, e3, e4];
                    for e0 in 0..n[0] {
                        let lin = row * row_bytes + e0 * es;
                        let at = lin ^ (((lin >> 7) & (w - 1)) << 4);
                        let mut inside = true;
                        let mut off = 0i64;
                        for i in 0..rank {
                            let step = if i == 0 {
                                e0
                            } else {
                                e[i] * t.element_strides[i] as usize
                            };
                            let c = i64::from(coords[i]) + step as i64;
                            inside &= c >= 0 && c < t.global_dim[i] as i64;
                            off += c * if i == 0 {
                                es as i64
                            } else {
                                t.global_strides[i - 1] as i64
                            };
                        }
                        for b in 0..es {
                            out[at + b] = if inside {
                                global[off as usize + b]
                            } else if nan_fill {
                                0xff
                            } else {
                                0
                            };
                        }
                    }
                    row += 1;
                }
            }
        }
    }
    out
}

#[test]
fn swizzle_128b_places_every_element_as_the_table_says() {
    let _race = common::race_check_full();
    let Some(tables) = wgmma_tables() else { return };
    let offsets = tables["tma_sw128_f16_64x64"]["offset"].as_array().unwrap();
    // A [64, 64] u16 tensor holding row * 64 + col, the box its whole self.
    let global: Vec<u8> = (0..64 * 64u16).flat_map(|v| v.to_le_bytes()).collect();
    let t = tiled(
        DataType::U16,
        &[64, 64],
        &[128],
        &[64, 64],
        &[1, 1],
        Swizzle::B128,
    );
    for order in ThreadOrder::all(3) {
        let out = load(&t, &global, &[0, 0], 0, 0, order).unwrap();
        for (row, line) in offsets.iter().enumerate() {
            for (col, off) in line.as_array().unwrap().iter().enumerate() {
                let o = num(off);
                let got = u16::from_le_bytes([out[o], out[o + 1]]);
                assert_eq!(
                    got as usize,
                    row * 64 + col,
                    "{order:?}: element ({row}, {col}) at {o}"
                );
            }
        }
    }
}

/// README of wgmma.json, check 4: the TMA-placed 128B-swizzled tile read back through the
/// table's sw128 k-step descriptors returns the logical tile (rows and columns as f16 codes).
#[test]
fn a_swizzled_tma_tile_reads_back_through_the_sw128_descriptors() {
    let _race = common::race_check_full();
    let Some(tables) = wgmma_tables() else { return };
    let v = &tables["smem_k_major_f16_64x64"]["sw128"];
    let start = num(&v["tile_start"]);
    let descs: Vec<u64> = v["kstep_descriptors"]
        .as_array()
        .unwrap()
        .iter()
        .map(hex)
        .collect();
    let t = tiled(
        DataType::F16,
        &[64, 64],
        &[128],
        &[64, 64],
        &[1, 1],
        Swizzle::B128,
    );
    for (what, code) in [("row", 0usize), ("column", 1)] {
        let global: Vec<u8> = (0..64 * 64usize)
            .flat_map(|i| {
                let v = if code == 0 { i / 64 } else { i % 64 };
                f16::from_f32(v as f32).to_bits().to_le_bytes()
            })
            .collect();
        let tile = load(&t, &global, &[0, 0], 0, 0, ThreadOrder::Forward).unwrap();
        for (j, &d) in descs.iter().enumerate() {
            let got = wgmma_identity(&tile, start, d);
            for m in 0..64 {
                for n in 0..16 {
                    let want = if code == 0 { m } else { 16 * j + n };
                    assert_eq!(
                        got[m][n] as usize, want,
                        "{what} code, step {j}: D[{m}][{n}]"
                    );
                }
            }
        }
    }
}

/// D (64 x 16) = A B with A from descriptor `desc` over `tile` placed at shared `start`, and
/// B the identity (unswizzled K-major at 0x4000): D[m][n] = A[m][n] of the k-step.
fn wgmma_identity(tile: &[u8], start: usize, desc: u64) -> Vec<[f32; 16]> {
    use common::WgmmaProbeParams as P;
    const B_AT: usize = 0x4000;
    let mut image = vec![0u8; B_AT + 512];
    image[start..start + tile.len()].copy_from_slice(tile);
    for col in 0..16 {
        for k in 0..16 {
            let a = B_AT + (col % 8) * 16 + (col / 8) * 256 + (k % 8) * 2 + (k / 8) * 128;
            let one = f16::from_f32(if col == k { 1.0 } else { 0.0 }).to_bits();
            image[a..a + 2].copy_from_slice(&one.to_le_bytes());
        }
    }
    let desc_b = (B_AT as u64 >> 4) | (128u64 >> 4) << 16 | (256u64 >> 4) << 32;
    let c = vec![0.0f32; 128 * 8];
    let mut out = vec![f32::NAN; 128 * 8];
    let mut early = vec![f32::NAN; 128 * 8];
    let p = P {
        image: image.as_ptr(),
        a_regs: std::ptr::null(),
        c: c.as_ptr(),
        out: out.as_mut_ptr(),
        early: early.as_mut_ptr(),
        desc_a: desc,
        desc_b,
        image_bytes: image.len() as i32,
        n: 16,
        bf16: 0,
        scale_d: 0,
        mode: 0,
    };
    let shared = (image.len() - SHARED_BASE) as u32;
    // SAFETY: buffers sized for 128 threads x 8 accumulators; the image as stated.
    unsafe {
        common::launch(
            "selftest_wgmma",
            config(1, 128, shared),
            &p,
            ThreadOrder::Forward,
        )
    }
    .unwrap();
    // D layout of wgmma m64n16 (checked against the table in emu_wgmma.rs).
    let mut d = vec![[f32::NAN; 16]; 64];
    for t in 0..128 {
        for r in 0..8 {
            let row = 16 * (t / 32) + (t % 32) / 4 + 8 * ((r >> 1) & 1);
            let col = 8 * (r >> 2) + 2 * (t % 4) + (r & 1);
            d[row][col] = out[t * 8 + r];
        }
    }
    d
}

#[test]
fn boxes_of_every_rank_swizzle_stride_and_edge_match_the_model() {
    let _race = common::race_check_full();
    // (map, coords, global bytes, NaN fill)
    let pattern = |n: usize| -> Vec<u8> { (0..n).map(|i| (i * 7 + i / 251) as u8).collect() };
    let mut nan_map = tiled(
        DataType::F32,
        &[8, 3, 4, 2],
        &[48, 160, 704],
        &[8, 2, 2, 2],
        &[1, 1, 1, 1],
        Swizzle::None,
    );
    nan_map.oob_fill = OobFill::NanRequestZeroFma;
    let cases: Vec<(Tiled, Vec<i32>, usize, bool)> = vec![
        // rank 1, f16: the right edge is out of bounds.
        (
            tiled(DataType::F16, &[100], &[], &[64], &[1], Swizzle::None),
            vec![60],
            200,
            false,
        ),
        // rank 2, 64B swizzle, padded rows (96 bytes for 40 f16), both edges out of bounds.
        (
            tiled(
                DataType::F16,
                &[40, 30],
                &[96],
                &[32, 8],
                &[1, 1],
                Swizzle::B64,
            ),
            vec![16, 26],
            96 * 30,
            false,
        ),
        // rank 2, 32B swizzle, a negative start.
        (
            tiled(
                DataType::U16,
                &[24, 12],
                &[48],
                &[16, 6],
                &[1, 1],
                Swizzle::B32,
            ),
            vec![-8, -2],
            48 * 12,
            false,
        ),
        // rank 3, element stride 2 along dimension 1 (ceil(5 / 2) = 3 rows), 32B swizzle.
        (
            tiled(
                DataType::F16,
                &[16, 20, 3],
                &[32, 640],
                &[16, 5, 2],
                &[1, 2, 1],
                Swizzle::B32,
            ),
            vec![0, 3, 1],
            640 * 3,
            false,
        ),
        // rank 4, f32, NaN fill, strides not in increasing order.
        (nan_map, vec![-4, 2, 3, 1], 1400, true),
        // rank 5, bytes, 128B swizzle over 128-byte rows.
        (
            tiled(
                DataType::U8,
                &[160, 2, 2, 2, 3],
                &[160, 320, 640, 1280],
                &[128, 1, 2, 2, 2],
                &[1, 1, 1, 1, 1],
                Swizzle::B128,
            ),
            vec![8, 1, 1, 0, 2],
            1280 * 3,
            false,
        ),
    ];
    for (i, (t, coords, bytes, nan)) in cases.iter().enumerate() {
        let global = pattern(*bytes);
        let want = model(t, &global, coords, *nan);
        for order in ThreadOrder::all(i as u64) {
            let got =
                load(t, &global, coords, 0, 0, order).unwrap_or_else(|e| panic!("case {i}: {e}"));
            assert_eq!(
                got,
                want,
                "case {i} (rank {}, {:?}) {order:?}",
                t.rank(),
                t.swizzle
            );
        }
    }
}

#[test]
fn a_load_lands_only_for_a_wait_and_misuse_is_an_error() {
    let global: Vec<u8> = (0..64 * 64 * 2).map(|i| i as u8).collect();
    let t = tiled(
        DataType::F16,
        &[64, 64],
        &[128],
        &[64, 64],
        &[1, 1],
        Swizzle::B128,
    );
    // Read without waiting for the phase: the box still holds the poisoned shared memory.
    for order in ThreadOrder::all(9) {
        let out = load(&t, &global, &[0, 0], 0, 1, order).unwrap();
        assert!(
            out.iter().all(|&b| b == 0xff),
            "{order:?}: the load landed before any wait"
        );
    }
    // Under the race checker that read is a race in every order, the waited-for one is not.
    let want = load(&t, &global, &[0, 0], 0, 0, ThreadOrder::Forward).unwrap();
    for order in ThreadOrder::all(10) {
        let _race = emu::racecheck(true);
        let out = load(&t, &global, &[0, 0], 0, 0, order).unwrap();
        assert_eq!(out, want, "{order:?}");
        let e = load(&t, &global, &[0, 0], 0, 1, order).unwrap_err();
        assert_eq!(e.kind, EmuErrorKind::Race, "{order:?}: {e}");
        assert!(e.message.contains("read-after-write"), "{e}");
        assert!(e.message.contains("cp.async.bulk.tensor at"), "{e}");
        assert!(
            e.message.contains("the TMA load issued by thread (0,0,0)"),
            "{e}"
        );
    }
    let e = load(&t, &global, &[0, 0], 64, 0, ThreadOrder::Forward).unwrap_err();
    assert!(e.message.contains("128-byte aligned"), "{e}");
    let narrow = tiled(
        DataType::F16,
        &[64, 64],
        &[128],
        &[32, 8],
        &[1, 1],
        Swizzle::B128,
    );
    let e = load(&narrow, &global, &[0, 0], 0, 0, ThreadOrder::Forward).unwrap_err();
    assert!(e.message.contains("not modelled"), "{e}");
}

fn mbarrier(mode: i32, order: ThreadOrder) -> Result<Vec<i32>, EmuError> {
    let mut out = vec![-1i32; 64];
    let p = MbarrierProbeParams {
        out: out.as_mut_ptr(),
        mode,
    };
    // SAFETY: out holds 64 ints, one per thread.
    unsafe { common::launch("selftest_mbarrier", config(1, 64, 0), &p, order) }?;
    Ok(out)
}

#[test]
fn mbarrier_phases_order_the_rounds_and_deadlocks_are_reported() {
    for order in ThreadOrder::all(4) {
        // The rounds reuse the two slots: the race checker must find them ordered.
        let _race = emu::racecheck(true);
        let out = mbarrier(0, order).unwrap();
        assert!(
            out.iter().all(|&b| b == 0),
            "{order:?}: mismatches per thread {out:?}"
        );
    }
    let cases = [
        (1, EmuErrorKind::Deadlock, "tx-count 16"),
        (2, EmuErrorKind::Trap, "not initialized"),
        (3, EmuErrorKind::Trap, "count 0"),
        (4, EmuErrorKind::Deadlock, "parity 1"),
    ];
    for (mode, kind, text) in cases {
        for order in ThreadOrder::all(mode as u64) {
            let e = mbarrier(mode, order).unwrap_err();
            assert_eq!(e.kind, kind, "mode {mode} {order:?}: {e}");
            assert!(e.message.contains(text), "mode {mode} {order:?}: {e}");
        }
    }
}
