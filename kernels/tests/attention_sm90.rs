//! The Hopper (sm_90a) attention over a KV cache (`kernels/cuda/attention_sm90.cu`:
//! FlashAttention-3 style, TMA -> 2-stage mbarrier ring -> wgmma for Q K^T from shared memory
//! and for P V with P from registers) in the emulator.
//!
//! Each case draws fresh random non-zero f16 queries and a random f16 cache (every slot,
//! attended or not), a frame table that attends some slots in a scrambled order, and compares
//! the kernel's output (poisoned first: 0xffff is NaN, so an unwritten element fails) with an
//! f64 reference computed from the same f16 inputs, by relative L2 error, which must be at
//! most twice that of a **plain f16 attention** on the same inputs (tests/attention.rs's
//! acceptance rule: f16 scores, f16 softmax, f16 P, f32 sums) and at most 2e-3. Every case
//! runs in forward, reverse and shuffled thread order, which must agree bit for bit; the
//! first order of each default case runs under the race checker. For dh = 128 the mma.sync
//! kernel `attn_kvcache_d128` runs on the same inputs and its error is printed beside it.
//!
//! Planted races (test-only variants of the kernel): a ring slot released before the P V
//! wgmma that reads it retired, and a P V that does not wait for its V tile; both must be
//! reported with both sites. Plus the shape contract and the ptxas / SASS gates.

mod common;

use common::{race_checked, Rng};
use half::f16;
use streamdit_kernels::attention_sm90::{self as fa3, Buffers};
use streamdit_kernels::emu::{self, EmuError, EmuErrorKind, ThreadOrder};
use streamdit_kernels::wan_attention::{self, AttnKvCacheParams, KvCacheShape};

const REL_L2_MAX: f64 = 2e-3;

fn r16(x: f32) -> f32 {
    f16::from_f32(x).to_f32()
}

fn random_f16(rng: &mut Rng, n: usize, range: f32) -> (Vec<u16>, Vec<f32>) {
    let bits: Vec<u16> = (0..n)
        .map(|_| f16::from_f32(rng.nonzero(-range, range)).to_bits())
        .collect();
    let vals = bits.iter().map(|&b| f16::from_bits(b).to_f32()).collect();
    (bits, vals)
}

struct Inputs {
    shape: KvCacheShape,
    q: Vec<u16>,
    cache: Vec<u16>,
    table: Vec<i32>,
    /// f64 reference and plain f16 result, (tokens, D).
    want: Vec<f64>,
    plain: Vec<f64>,
}

fn inputs(seed: u64, shape: KvCacheShape, table: Vec<i32>) -> Inputs {
    wan_attention::check_attended(&table, shape.frames, shape.cache_slots).unwrap();
    let (dh, p) = (shape.head_dim, shape.frame_tokens);
    let d = shape.heads * dh;
    let mut rng = Rng::new(seed);
    let (q, qf) = random_f16(&mut rng, shape.tokens * d, 2.0);
    let (cache, cf) = random_f16(&mut rng, shape.cache_slots * p * 2 * d, 2.0);
    let keys: Vec<usize> = table
        .iter()
        .flat_map(|&s| (0..p).map(move |t| s as usize * p + t))
        .collect();
    let scale = 1.0 / (dh as f64).sqrt();
    let scale16 = r16(scale as f32);
    let mut want = vec![0.0; shape.tokens * d];
    let mut plain = vec![0.0; shape.tokens * d];
    for i in 0..shape.tokens {
        for h in 0..shape.heads {
            let qr = &qf[i * d + h * dh..][..dh];
            let k = |j: usize| &cf[j * 2 * d + h * dh..][..dh];
            let v = |j: usize| &cf[j * 2 * d + d + h * dh..][..dh];
            // f64.
            let s: Vec<f64> = keys
                .iter()
                .map(|&j| {
                    qr.iter()
                        .zip(k(j))
                        .map(|(&a, &b)| a as f64 * b as f64)
                        .sum::<f64>()
                        * scale
                })
                .collect();
            let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let e: Vec<f64> = s.iter().map(|&x| (x - m).exp()).collect();
            let sum: f64 = e.iter().sum();
            let o = &mut want[i * d + h * dh..][..dh];
            for (w, &j) in e.iter().zip(&keys) {
                for (o, &vv) in o.iter_mut().zip(v(j)) {
                    *o += w / sum * vv as f64;
                }
            }
            // Plain f16: every intermediate tensor rounded to f16.
            let x: Vec<f32> = keys
                .iter()
                .map(|&j| {
                    let s = r16(qr.iter().zip(k(j)).map(|(a, b)| a * b).sum::<f32>());
                    r16(s * scale16)
                })
                .collect();
            let m = x.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
            let e: Vec<f32> = x.iter().map(|&x| r16(r16(x - m).exp())).collect();
            let sum = r16(e.iter().sum::<f32>());
            let mut acc = vec![0.0f32; dh];
            for (e, &j) in e.iter().zip(&keys) {
                let pr = r16(e / sum);
                for (o, &vv) in acc.iter_mut().zip(v(j)) {
                    *o += pr * vv;
                }
            }
            for (o, a) in plain[i * d + h * dh..][..dh].iter_mut().zip(acc) {
                *o = f64::from(r16(a));
            }
        }
    }
    Inputs {
        shape,
        q,
        cache,
        table,
        want,
        plain,
    }
}

fn rel_l2(got: &[f64], want: &[f64]) -> f64 {
    let (mut num, mut den) = (0.0, 0.0);
    for (&g, &w) in got.iter().zip(want) {
        let e = if g.is_finite() { g - w } else { f64::INFINITY };
        num += e * e;
        den += w * w;
    }
    (num / den).sqrt()
}

/// Runs `kernel` (the entry or a variant of it) on a poisoned output; the output bits.
fn launch(inp: &Inputs, kernel: emu::Kernel, order: ThreadOrder) -> Result<Vec<u16>, EmuError> {
    let s = &inp.shape;
    let mut out = vec![0xffffu16; s.tokens * s.heads * s.head_dim];
    let (_, config) = fa3::config(s).unwrap();
    let b = Buffers {
        q: inp.q.as_ptr(),
        cache: inp.cache.as_ptr(),
        frame_slots: inp.table.as_ptr(),
        out: out.as_mut_ptr(),
    };
    let params = fa3::params_emulated(s, &b).unwrap_or_else(|e| panic!("{e}"));
    // SAFETY: the maps describe q (tokens, D) and the cache (slots * P, 2D), their vectors;
    // the table holds `frames` valid slots (checked in `inputs`); out is (tokens, D); all
    // live until the launch returns.
    unsafe { emu::launch_with(kernel, config, &params, order) }?;
    Ok(out)
}

fn to_f64(bits: &[u16]) -> Vec<f64> {
    bits.iter().map(|&b| f16::from_bits(b).to_f64()).collect()
}

/// The mma.sync kernel (`attn_kvcache_d128`) on the same inputs: its rel L2 vs f64.
fn mma_sync_error(inp: &Inputs) -> f64 {
    let s = &inp.shape;
    let l = wan_attention::kvcache_config(s).unwrap();
    let mut out = vec![0xffffu16; s.tokens * s.heads * s.head_dim];
    let p = AttnKvCacheParams {
        q: inp.q.as_ptr(),
        cache: inp.cache.as_ptr(),
        frame_slots: inp.table.as_ptr(),
        out: out.as_mut_ptr(),
        tokens: s.tokens as i32,
        frame_tokens: s.frame_tokens as i32,
        frames: s.frames as i32,
        heads: s.heads as i32,
    };
    let k = emu::kernel(l.kernel).unwrap();
    // SAFETY: as in `launch`, with the pointer layout of attn_kvcache.
    unsafe { emu::launch_with(k, l.config, &p, ThreadOrder::Forward) }.unwrap();
    rel_l2(&to_f64(&out), &inp.want)
}

/// The case in every order (the first race-checked when `checked`): the error rules, and
/// the same bits in every order.
fn check(label: &str, inp: &Inputs, checked: bool) {
    let _race = common::race_check_full();
    let s = &inp.shape;
    let (name, _) = fa3::config(s).unwrap();
    let kernel = emu::kernel(name).unwrap_or_else(|e| panic!("{e}"));
    let plain = rel_l2(&inp.plain, &inp.want);
    let mut first: Option<Vec<u16>> = None;
    for (i, order) in ThreadOrder::all(7).into_iter().enumerate() {
        let _check = common::race_check_case(checked && i == 0);
        let t = std::time::Instant::now();
        let out = launch(inp, kernel, order).unwrap_or_else(|e| panic!("{label} {order:?}: {e}"));
        let rel = rel_l2(&to_f64(&out), &inp.want);
        eprintln!(
            "{label} {name} tokens {} P {} frames {} heads {} {order:?}{}: rel L2 {rel:.2e}, \
             plain f16 {plain:.2e}, ratio {:.2}, {:.2} s",
            s.tokens,
            s.frame_tokens,
            s.frames,
            s.heads,
            if emu::racecheck_enabled() {
                " (race-checked)"
            } else {
                ""
            },
            rel / plain,
            t.elapsed().as_secs_f64()
        );
        assert!(
            rel <= 2.0 * plain && rel <= REL_L2_MAX,
            "{label} {order:?}: rel L2 {rel:e}, plain f16 {plain:e}"
        );
        match &first {
            None => first = Some(out),
            Some(f) => assert!(*f == out, "{label}: {order:?} differs from the first order"),
        }
    }
    if s.head_dim == 128 {
        eprintln!(
            "{label}: attn_kvcache_d128 (mma.sync) on the same inputs: rel L2 {:.2e}",
            mma_sync_error(inp)
        );
    }
}

fn shape(
    tokens: usize,
    p: usize,
    frames: usize,
    heads: usize,
    dh: usize,
    slots: usize,
) -> KvCacheShape {
    KvCacheShape {
        tokens,
        frame_tokens: p,
        frames,
        heads,
        head_dim: dh,
        cache_slots: slots,
    }
}

/// dh = 64: one ragged query tile (70 of 128 rows: the second consumer has 6), frames of
/// 35 tokens (one key tile each, 93 keys masked), three frames: the 2-slot ring wraps.
#[test]
fn d64_ragged_frames_and_query_tile() {
    let inp = inputs(1, shape(70, 35, 3, 2, 64, 5), vec![3, 0, 4]);
    check("d64", &inp, true);
}

/// dh = 128: two query tiles (the second 72 rows), frames of 150 tokens (a full and a
/// 22-key tile each), six key tiles over three slots in scrambled order.
#[test]
fn d128_two_key_tiles_per_frame() {
    let inp = inputs(2, shape(200, 150, 3, 2, 128, 4), vec![2, 0, 3]);
    check("d128", &inp, true);
}

/// STREAMDIT_FULL=1: Wan2.1-1.3B's width (12 heads of 128) on 8 x 13 frames, a chunk of 3
/// attending a 6-frame window; and dh = 64 at 8 heads with a 260-token frame.
#[test]
fn full_wan_width() {
    if !common::full() {
        return;
    }
    let inp = inputs(3, shape(312, 104, 6, 12, 128, 7), vec![6, 0, 1, 5, 2, 3]);
    check("1.3B width", &inp, false);
    let inp = inputs(4, shape(260, 260, 2, 8, 64, 2), vec![1, 0]);
    check("d64 wide", &inp, false);
}

/// The V operand of `P V` is read through MN-major, 128-byte-swizzled descriptors (LBO = one
/// 64-channel box of 128 keys, SBO 1024, start + 2 KiB per 16 keys): for the descriptors the
/// kernel builds, the emulator's decoding must read B(channel n, key k) of step kk exactly
/// where TMA's SWIZZLE_128B put V row 16 kk + k, channel n, per the `tma_sw128_f16_64x64`
/// table of `shared/ptx/wgmma.json` (written from the CUDA guide, apart from the emulator):
/// the first 64 keys of both boxes of a dh = 128 tile.
#[test]
fn v_descriptors_read_where_tma_wrote() {
    let Some(tables) = common::wgmma_tables() else {
        return;
    };
    let offsets = tables["tma_sw128_f16_64x64"]["offset"].as_array().unwrap();
    let box_bytes = u64::from(fa3::BLOCK_KV) * 128;
    let v_tile = 0x8000u64; // any 1024-aligned slot start
                            // "Matrix Descriptor Format": start, LBO, SBO (each >> 4, 14 bits), 128B swizzle = 1.
    let desc = |start: u64| {
        (start >> 4 & 0x3fff) | (box_bytes >> 4 & 0x3fff) << 16 | (1024u64 >> 4) << 32 | 1u64 << 62
    };
    for kk in 0..4u64 {
        let d = desc(v_tile + 2048 * kk);
        for n in 0..128u64 {
            for k in 0..16u64 {
                let key = (16 * kk + k) as usize;
                let (b, c) = (n / 64, (n % 64) as usize);
                let want = v_tile + b * box_bytes + common::num(&offsets[key][c]) as u64;
                let got = emu::wgmma_operand_address(d, n as u32, k as u32, true).unwrap();
                assert_eq!(u64::from(got), want, "step {kk}: channel {n}, key {key}");
            }
        }
    }
}

/// [`common::site_in`] attention_sm90.cu.
fn site(needle: &str) -> String {
    common::site_in("cuda/attention_sm90.cu", needle)
}

fn assert_race(label: &str, r: Result<Vec<u16>, EmuError>, needles: &[String]) {
    let e = match r {
        Ok(_) => panic!("{label}: the planted race was not reported"),
        Err(e) => e,
    };
    assert_eq!(e.kind, EmuErrorKind::Race, "{label}: {e}");
    for n in needles {
        assert!(e.message.contains(n.as_str()), "{label}: no {n:?} in: {e}");
    }
    eprintln!("{label}: {e}");
}

/// The ring's two protocols, each broken in a test-only variant, are reported with both
/// sites; the unmodified kernel is clean on the same inputs (three key tiles: both slots
/// refilled).
#[test]
fn planted_pipeline_races_are_reported() {
    let inp = inputs(5, shape(64, 40, 3, 1, 64, 3), vec![1, 2, 0]);
    race_checked(|| {
        let clean = emu::kernel(fa3::KERNEL_D64).unwrap();
        let out = launch(&inp, clean, ThreadOrder::Shuffle(5))
            .unwrap_or_else(|e| panic!("clean kernel under the checker: {e}"));
        let rel = rel_l2(&to_f64(&out), &inp.want);
        assert!(rel <= REL_L2_MAX, "clean kernel: rel L2 {rel:e}");

        let pv = format!(
            "wgmma.mma_async.f32.f16 (A in registers) at {}",
            // The P V step shared with the window kernel (common/fa3_core.cuh).
            common::site_in(
                "cuda/common/fa3_core.cuh",
                "ptx::wgmma_f16_rs<kDh, 1, 1, 1>"
            )
        );
        let tma_v = format!(
            "cp.async.bulk.tensor at {}",
            site("ptx::tma_load_3d(v + b * T::kKvBox")
        );
        let early = emu::variant(fa3::KERNEL_D64, "early_release").unwrap();
        assert_race(
            "slot released before its P V retired",
            launch(&inp, early, ThreadOrder::Reverse),
            &[
                "write-after-read".to_string(),
                format!("first:  {pv}"),
                "second: cp.async.bulk.tensor at kernels/cuda/attention_sm90.cu:".to_string(),
                "the wgmma of warpgroup".to_string(),
                "the TMA load issued by thread".to_string(),
            ],
        );
        let no_wait = emu::variant(fa3::KERNEL_D64, "no_v_wait").unwrap();
        assert_race(
            "P V without the V barrier wait",
            launch(&inp, no_wait, ThreadOrder::Forward),
            &[
                "read-after-write".to_string(),
                format!("first:  {tma_v}"),
                format!("second: {pv}"),
            ],
        );
    });
}

/// FA3's intra-warpgroup overlap (common/fa3_core.cuh, `fa3_consume`: the softmax of tile it
/// while the P V of tile it - 1 runs) gives every output the bits of the serial walk (the
/// variant `serial`: S, softmax, P V per tile), in several thread orders, for both head
/// dims and a walk of 6 key tiles (both ring stages refilled).
#[test]
fn the_overlapped_walk_equals_the_serial_walk_bit_for_bit() {
    for (seed, s, table) in [
        (21, shape(70, 35, 3, 2, 64, 5), vec![4, 0, 2]),
        (22, shape(200, 150, 3, 2, 128, 4), vec![3, 1, 0]),
    ] {
        let inp = inputs(seed, s, table);
        let kernel = if s.head_dim == 64 {
            fa3::KERNEL_D64
        } else {
            fa3::KERNEL_D128
        };
        let overlapped = emu::kernel(kernel).unwrap();
        let serial = emu::variant(kernel, "serial").unwrap();
        let want = launch(&inp, serial, ThreadOrder::Forward).unwrap();
        assert!(
            want.iter().all(|&b| b != 0xffff),
            "{kernel}: every output written"
        );
        for order in [
            ThreadOrder::Forward,
            ThreadOrder::Reverse,
            ThreadOrder::Shuffle(7),
        ] {
            let got = launch(&inp, overlapped, order).unwrap();
            assert!(got == want, "{kernel} {order:?}: the overlap changed bits");
        }
    }
}

/// The two consumers' ping-pong turns (common/fa3_core.cuh, `Fa3PingPong`) are live named
/// barriers: a hand-over without the wait it pairs with is reported at the block's exit,
/// naming consumer 0's turn barrier (1) and the arrival's line.
#[test]
fn an_unpaired_ping_pong_turn_is_reported() {
    let inp = inputs(6, shape(64, 40, 3, 1, 64, 3), vec![1, 2, 0]);
    let unpaired = emu::variant(fa3::KERNEL_D64, "unpaired_turn").unwrap();
    for order in [ThreadOrder::Forward, ThreadOrder::Reverse] {
        let e = launch(&inp, unpaired, order).expect_err("an arrival left at exit");
        assert_eq!(e.kind, EmuErrorKind::Barrier, "{order:?}: {e}");
        assert!(
            e.message.contains("named barrier 1:")
                && e.message.contains("128 of the phase's 256 threads arrived")
                && e.message.contains("cuda/common/fa3_core.cuh"),
            "{order:?}: {e}"
        );
    }
}

#[test]
fn shapes_outside_the_contract_are_errors() {
    let bad = |s: KvCacheShape, needle: &str| {
        let e = fa3::config(&s).expect_err("must be rejected");
        assert!(e.contains(needle), "error {e:?} lacks {needle:?}");
        eprintln!("rejected: {e}");
    };
    bad(shape(64, 16, 1, 2, 16, 1), "dh = 16");
    bad(
        shape(0, 16, 1, 2, 64, 1),
        "attn_sm90_kvcache_d64: tokens (0)",
    );
    bad(
        shape(64, 16, 3, 2, 128, 2),
        "3 attended frames exceed the cache's 2 slots",
    );
    bad(shape(64, 16, 1, 70000, 64, 1), "heads = 70000");
    let s = shape(64, 16, 1, 1, 64, 1);
    let null = Buffers {
        q: std::ptr::null(),
        cache: std::ptr::null(),
        frame_slots: std::ptr::null(),
        out: std::ptr::null_mut(),
    };
    let e = fa3::params_emulated(&s, &null).unwrap_err();
    assert!(e.contains("must not be null"), "{e}");
}

/// The sm_90a cubin: no spills or stack, at most the 168 registers 384 threads allow at
/// launch (the consumers raise theirs with setmaxnreg); Q K^T and P V are HGMMA (dh / 16 and
/// 128 / 16 per key tile) fed by UTMALDG, with no mma.sync, ldmatrix or cp.async.
#[test]
fn attention_sm90_sass_and_resources() {
    if !common::nvcc_built() {
        return;
    }
    for (kernel, dh) in [(fa3::KERNEL_D64, 64u32), (fa3::KERNEL_D128, 128)] {
        let r = common::resources("attention_sm90", kernel, "sm_90a");
        eprintln!(
            "{kernel} sm_90a: {} regs, {} B static smem + {} B dynamic, stack {}, spills {}/{}, \
             HGMMA {}, UTMALDG {}, BAR.ARV {}, HMMA {}, LDSM {}, LDGSTS {}",
            r.registers,
            r.shared_bytes,
            fa3::shared_bytes(dh),
            r.stack_frame_bytes,
            r.spill_store_bytes,
            r.spill_load_bytes,
            r.hgmma,
            r.utmaldg,
            r.bar_arv,
            r.hmma,
            r.ldsm,
            r.ldgsts
        );
        assert!(r.sass, "{kernel}: SASS not counted: {r:?}");
        assert_eq!(
            (r.spill_store_bytes, r.spill_load_bytes, r.stack_frame_bytes),
            (0, 0, 0),
            "{kernel} spills: {r:?}"
        );
        assert!(r.registers <= 168, "{kernel}: {r:?}");
        assert!(
            r.hgmma >= dh / 16 + fa3::BLOCK_KV / 16 && r.utmaldg >= 2,
            "{kernel}: Q K^T and P V must be HGMMA fed by UTMALDG: {r:?}"
        );
        assert_eq!((r.hmma, r.ldsm, r.ldgsts), (0, 0, 0), "{kernel}: {r:?}");
        // The ping-pong's hand-overs (consumer 0's first turn and every tile's).
        assert!(r.bar_arv >= 2, "{kernel}: no named-barrier arrival: {r:?}");
        assert!(
            !r.wgmma_serialized,
            "{kernel}: ptxas serialized its wgmma (C7518): {r:?}"
        );
    }
}
