//! Proof that the emulator's race checker finds races: planted-race variants of real kernels
//! (`// streamdit-emu-variant: NAME` in the .cu files, compiled only for the emulator) are
//! each reported as `EmuErrorKind::Race`, the message naming the kind of hazard and both
//! accesses, and the unmodified kernels on the same inputs run clean under the checker with
//! right results.
//!
//! - GEMM (`gemm.cu`): `no_tile_sync` leaves out the main loop's `__syncthreads` (ldmatrix of
//!   another thread's cp.async data); `refill_before_sync` issues the refill of a ring slot
//!   before the barrier, a write-after-read across a loop iteration that no thread order can
//!   expose (the emulator lands cp.async data at the wait, so its results stay right).
//! - Attention (`attention.cu`, the shared core): `no_gain_sync` leaves out the barrier after
//!   the Q and gain copies; `no_key_sync` the key loop's barrier.
//! - Row softmax (`vae.cu`): `no_reduce_sync` leaves out the block reduction's barrier
//!   between the warps' partial writes and their reads.
//! - Hopper self-tests (`emu_selftest_sm90.cu`): `no_full_wait` (the consumer's wgmma reads a
//!   stage without waiting on its full mbarrier), `early_release` (the stage is released
//!   before the wgmma reading it retired) and `no_proxy_fence` (threads write wgmma operands
//!   without `fence.proxy.async`).

mod common;
#[path = "common/hopper_tile.rs"]
mod hopper_tile;

use common::{config, race_checked, Rng, WgmmaProbeParams, SHARED_BASE};
use half::f16;
use streamdit_kernels::attention::{self, CrossShape};
use streamdit_kernels::emu::{self, EmuError, EmuErrorKind, Kernel, LaunchConfig, ThreadOrder};
use streamdit_kernels::gemm;
use streamdit_kernels::tma::Swizzle;
use streamdit_kernels::vae;

/// `kernels/cuda/<file>:<line>` of the one source line of `file` that contains `needle`: the
/// site a report must name (found in the source, so that edits elsewhere do not break it).
fn site(file: &str, needle: &str) -> String {
    common::site_in(&format!("cuda/{file}"), needle)
}

/// The error must be a race whose report contains every needle (the hazard kind and the two
/// sites).
fn assert_race<S: AsRef<str>>(label: &str, r: Result<(), EmuError>, needles: &[S]) {
    let e = match r {
        Ok(()) => panic!("{label}: the planted race was not reported"),
        Err(e) => e,
    };
    assert_eq!(e.kind, EmuErrorKind::Race, "{label}: {e}");
    for n in needles {
        let n = n.as_ref();
        assert!(e.message.contains(n), "{label}: no {n:?} in: {e}");
    }
    eprintln!("{label}: {e}");
}

fn random_f16(rng: &mut Rng, n: usize, range: f32) -> (Vec<u16>, Vec<f64>) {
    let bits: Vec<u16> = (0..n)
        .map(|_| f16::from_f32(rng.nonzero(-range, range)).to_bits())
        .collect();
    let vals = bits.iter().map(|&b| f64::from(f16::from_bits(b))).collect();
    (bits, vals)
}

// ---------------------------------------------------------------------------------------
// GEMM: one 128 x 128 block over K = 192, six k-tiles through the 4-stage ring, so slots are
// refilled after being read.
// ---------------------------------------------------------------------------------------

const GM: usize = 128;
const GN: usize = 128;
const GK: usize = 192;

struct Gemm {
    a: Vec<u16>,
    w: Vec<u16>,
    want: Vec<f64>,
    tol: Vec<f64>,
    config: LaunchConfig,
}

impl Gemm {
    fn new() -> Self {
        let mut rng = Rng::new(5);
        let (a, av) = random_f16(&mut rng, GM * GK, 1.0);
        let (w, wv) = random_f16(&mut rng, GN * GK, 0.15);
        let mut want = vec![0.0; GM * GN];
        let mut tol = vec![0.0; GM * GN];
        for i in 0..GM {
            for j in 0..GN {
                let (mut s, mut abs) = (0.0, 0.0);
                for k in 0..GK {
                    let p = av[i * GK + k] * wv[j * GK + k];
                    s += p;
                    abs += p.abs();
                }
                want[i * GN + j] = s;
                // f32 accumulation of K products, then the f16 store.
                tol[i * GN + j] =
                    (GK as f64 + 2.0) * 2f64.powi(-24) * abs + 2f64.powi(-10) * s.abs();
            }
        }
        let config = gemm::bias_f16_config(GM, GN, GK).unwrap();
        Gemm {
            a,
            w,
            want,
            tol,
            config,
        }
    }

    /// Launches `kernel` (gemm_bias_f16 or a variant of it); the output on success.
    fn launch(&self, kernel: Kernel, order: ThreadOrder) -> Result<Vec<u16>, EmuError> {
        let mut out = vec![0xffffu16; GM * GN];
        let p = gemm::GemmBiasF16Params {
            a: self.a.as_ptr(),
            w: self.w.as_ptr(),
            bias: std::ptr::null(),
            out: out.as_mut_ptr(),
            m: GM as i32,
            n: GN as i32,
            k: GK as i32,
        };
        // SAFETY: a (M, K), w (N, K), no bias, out (M, N): what bias_f16_config checked.
        unsafe { emu::launch_with(kernel, self.config, &p, order) }?;
        Ok(out)
    }

    fn check(&self, label: &str, out: &[u16]) {
        for (i, &bits) in out.iter().enumerate() {
            let got = f64::from(f16::from_bits(bits));
            let err = (got - self.want[i]).abs();
            assert!(
                err <= self.tol[i],
                "{label}: element {i}: got {got}, want {}, tol {:e}",
                self.want[i],
                self.tol[i]
            );
        }
    }
}

fn gemm_variant(name: &str) -> Kernel {
    emu::variant(gemm::KERNEL_BIAS_F16, name).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn gemm_is_clean_and_a_missing_tile_barrier_is_reported() {
    let g = Gemm::new();
    let kernel = emu::kernel(gemm::KERNEL_BIAS_F16).unwrap();
    race_checked(|| {
        for order in ThreadOrder::all(1) {
            let out = g
                .launch(kernel, order)
                .unwrap_or_else(|e| panic!("clean GEMM {order:?}: {e}"));
            g.check(&format!("clean GEMM under the checker {order:?}"), &out);
        }
        let r = g.launch(gemm_variant("no_tile_sync"), ThreadOrder::Forward);
        assert_race(
            "GEMM without the tile barrier",
            r.map(drop),
            &[
                "read-after-write".to_string(),
                "write-after-read".to_string(),
                format!("cp.async at {}", site("gemm.cu", "cp_async_16_zfill(s_a +")),
                format!("ldmatrix at {}", site("gemm.cu", "ldmatrix_x4(af[i]")),
                "the cp.async copy of thread".to_string(),
            ],
        );
    });
}

#[test]
fn gemm_refill_before_the_barrier_is_a_write_after_read_only_the_checker_finds() {
    let g = Gemm::new();
    let planted = gemm_variant("refill_before_sync");
    // Without the checker the planted race is invisible: every order gives the right result.
    for order in ThreadOrder::all(2) {
        let _off = emu::racecheck(false);
        let out = g
            .launch(planted, order)
            .unwrap_or_else(|e| panic!("{order:?}: {e}"));
        g.check(
            &format!("refill_before_sync without the checker {order:?}"),
            &out,
        );
    }
    race_checked(|| {
        let r = g.launch(planted, ThreadOrder::Shuffle(9));
        assert_race(
            "GEMM refilling a slot before the barrier",
            r.map(drop),
            &[
                "write-after-read: the write is not ordered after the read".to_string(),
                format!(
                    "first:  ldmatrix at {}",
                    site("gemm.cu", "ldmatrix_x4(r, s_w")
                ),
                format!(
                    "second: cp.async at {}",
                    site("gemm.cu", "cp_async_16_zfill(s_w +")
                ),
            ],
        );
        // Only the refill is unordered: the reads of freshly landed tiles are not reported.
        let e = g.launch(planted, ThreadOrder::Forward).unwrap_err();
        assert!(!e.message.contains("read-after-write"), "{e}");
    });
}

// ---------------------------------------------------------------------------------------
// Attention: cross-attention, dh 64, 64 queries over 300 text keys (five 64-key tiles
// through the 3-stage ring), with the RMSNorm gains.
// ---------------------------------------------------------------------------------------

struct Cross {
    shape: CrossShape,
    q: Vec<u16>,
    kv: Vec<u16>,
    gq: Vec<u16>,
    gk: Vec<u16>,
    mask: Vec<f32>,
}

impl Cross {
    fn new() -> Self {
        let shape = CrossShape {
            batch: 1,
            tokens: 64,
            text_len: 300,
            heads: 1,
            head_dim: 64,
        };
        let mut rng = Rng::new(17);
        let d = shape.heads * shape.head_dim;
        let (q, _) = random_f16(&mut rng, shape.tokens * d, 1.0);
        let (kv, _) = random_f16(&mut rng, shape.text_len * 2 * d, 1.0);
        let (gq, _) = random_f16(&mut rng, shape.head_dim, 1.5);
        let (gk, _) = random_f16(&mut rng, shape.head_dim, 1.5);
        let mask = (0..shape.text_len).map(|l| f32::from(l % 7 != 3)).collect();
        Cross {
            shape,
            q,
            kv,
            gq,
            gk,
            mask,
        }
    }

    fn launch(&self, variant: Option<&str>, order: ThreadOrder) -> Result<Vec<u16>, EmuError> {
        let launch = attention::cross_config(&self.shape).unwrap();
        let kernel = match variant {
            None => emu::kernel(launch.kernel),
            Some(v) => emu::variant(launch.kernel, v),
        }
        .unwrap_or_else(|e| panic!("{e}"));
        let mut out = vec![0xffffu16; self.q.len()];
        let p = attention::AttnCrossParams {
            q: self.q.as_ptr(),
            kv: self.kv.as_ptr(),
            mask: self.mask.as_ptr(),
            gq: self.gq.as_ptr(),
            gk: self.gk.as_ptr(),
            out: out.as_mut_ptr(),
            tokens: self.shape.tokens as i32,
            text_len: self.shape.text_len as i32,
            heads: self.shape.heads as i32,
        };
        // SAFETY: q (tokens, D), kv (text_len, 2D), mask (text_len), gains (dh), out
        // (tokens, D): the extents cross_config checked for this shape; all live until the
        // launch returns.
        unsafe { emu::launch_with(kernel, launch.config, &p, order) }?;
        Ok(out)
    }
}

#[test]
fn attention_is_clean_and_missing_barriers_are_reported() {
    let c = Cross::new();
    race_checked(|| {
        // Clean, and the same output as without the checker (attention.rs checks the values).
        let plain = {
            let _off = emu::racecheck(false);
            c.launch(None, ThreadOrder::Forward).unwrap()
        };
        for order in ThreadOrder::all(4) {
            let out = c
                .launch(None, order)
                .unwrap_or_else(|e| panic!("clean attention {order:?}: {e}"));
            assert_eq!(out, plain, "{order:?}");
        }
        assert_race(
            "attention without the barrier after the gain copies",
            c.launch(Some("no_gain_sync"), ThreadOrder::Forward)
                .map(drop),
            &[
                "read-after-write".to_string(),
                format!(
                    "first:  cp.async at {}",
                    site("common/attention_core.cuh", "cp_async_16(s_gq + tid * 8")
                ),
                // The gain read of the Q normalization, by a thread outside warp 0.
                site(
                    "common/attention_core.cuh",
                    "*reinterpret_cast<const uint4*>(gain + c * 8)",
                ),
                "by thread (32,0,0)".to_string(),
            ],
        );
        assert_race(
            "attention without the key loop's barrier",
            c.launch(Some("no_key_sync"), ThreadOrder::Reverse)
                .map(drop),
            &[
                "read-after-write".to_string(),
                "write-after-read".to_string(),
                format!(
                    "ldmatrix at {}",
                    site("common/attention_core.cuh", "ldmatrix_x4(r, s_k + swz")
                ),
                format!(
                    "cp.async at {}",
                    site("common/attention_core.cuh", "cp_async_16_zfill(s_k + swz")
                ),
            ],
        );
    });
}

// ---------------------------------------------------------------------------------------
// The Wan VAE's row softmax: its block reduction.
// ---------------------------------------------------------------------------------------

/// Runs `softmax_rows_f16` (or a variant) on 3 rows of 300 random scores.
fn softmax_launch(variant: Option<&str>, order: ThreadOrder) -> Result<Vec<u16>, EmuError> {
    let (rows, cols, ld) = (3usize, 300usize, 304usize);
    let mut rng = Rng::new(31);
    let s: Vec<f32> = (0..rows * ld).map(|_| rng.nonzero(-20.0, 20.0)).collect();
    let mut p = vec![0x7fffu16; rows * ld];
    let config = vae::softmax_rows_launch(rows, cols, ld).unwrap();
    let kernel = match variant {
        None => emu::kernel(vae::KERNEL_SOFTMAX_ROWS),
        Some(v) => emu::variant(vae::KERNEL_SOFTMAX_ROWS, v),
    }
    .unwrap_or_else(|e| panic!("{e}"));
    let params = vae::SoftmaxRowsParams {
        s: s.as_ptr(),
        p: p.as_mut_ptr(),
        rows: rows as i32,
        cols: cols as i32,
        ld: ld as i32,
        scale: 0.25,
    };
    // SAFETY: s and p (rows, ld), as softmax_rows_launch validated; params mirrors
    // SoftmaxRowsParams (the variant has the same parameters).
    unsafe { emu::launch_with(kernel, config, &params, order) }?;
    Ok(p)
}

#[test]
fn softmax_is_clean_and_a_missing_reduction_barrier_is_reported() {
    race_checked(|| {
        for order in ThreadOrder::all(31) {
            let p = softmax_launch(None, order)
                .unwrap_or_else(|e| panic!("clean softmax {order:?}: {e}"));
            assert!(p.iter().all(|&b| !f16::from_bits(b).is_nan()), "{order:?}");
        }
        assert_race(
            "softmax without the reduction barrier",
            softmax_launch(Some("no_reduce_sync"), ThreadOrder::Reverse).map(drop),
            &[
                "read-after-write".to_string(),
                site("vae.cu", "if (lane == 0) red[warp] = v;"),
            ],
        );
    });
}

// ---------------------------------------------------------------------------------------
// Hopper: the TMA -> mbarrier -> wgmma tile, and the wgmma probe.
// ---------------------------------------------------------------------------------------

#[test]
fn hopper_tile_is_clean_and_a_missing_mbarrier_wait_is_reported() {
    let tile = hopper_tile::Tile::random(64, 192, 21);
    let (want, abs) = tile.reference();
    let clean = emu::kernel("selftest_hopper_tile").unwrap();
    let variant = |v: &str| emu::variant("selftest_hopper_tile", v).unwrap();
    race_checked(|| {
        let got = tile
            .launch(Swizzle::B64, clean, ThreadOrder::Reverse)
            .unwrap_or_else(|e| panic!("clean tile: {e}"));
        hopper_tile::check("clean tile under the checker", &got, &want, &abs, 192);
        assert_race(
            "tile without the full-barrier wait",
            tile.launch(Swizzle::B64, variant("no_full_wait"), ThreadOrder::Forward)
                .map(drop),
            &[
                "read-after-write".to_string(),
                format!(
                    "first:  cp.async.bulk.tensor at {}",
                    site(
                        "emu_selftest_sm90.cu",
                        "case 2: ptx::tma_load_3d(dst, map, bar"
                    )
                ),
                format!(
                    "second: wgmma.mma_async.f32.f16 at {}",
                    site(
                        "emu_selftest_sm90.cu",
                        "ptx::wgmma_f16_ss<N>(acc, tile_desc("
                    )
                ),
                "the TMA load issued by thread (0,0,0)".to_string(),
                "the wgmma of warpgroup 1".to_string(),
            ],
        );
        assert_race(
            "tile releasing a stage before its wgmma retired",
            tile.launch(Swizzle::B64, variant("early_release"), ThreadOrder::Reverse)
                .map(drop),
            &[
                "write-after-read",
                "first:  wgmma.mma_async.f32.f16 at",
                "second: cp.async.bulk.tensor at",
            ],
        );
    });
}

/// One m64n8k16 wgmma on an image of f16 ones (A at 0x1000, B at 0x2000, K-major without
/// swizzle, LBO 128, SBO 256): every accumulator is 16.
fn wgmma_probe(kernel: Kernel) -> Result<Vec<f32>, EmuError> {
    const A_AT: u64 = 0x1000;
    const B_AT: u64 = 0x2000;
    let desc = |start: u64| (start >> 4) | (128 >> 4) << 16 | (256 >> 4) << 32;
    let image = [0x00u8, 0x3c].repeat((B_AT as usize + 256) / 2);
    let c = vec![0.0f32; 128 * 4];
    let mut out = vec![f32::NAN; 128 * 4];
    let mut early = vec![f32::NAN; 128 * 4];
    let p = WgmmaProbeParams {
        image: image.as_ptr(),
        a_regs: std::ptr::null(),
        c: c.as_ptr(),
        out: out.as_mut_ptr(),
        early: early.as_mut_ptr(),
        desc_a: desc(A_AT),
        desc_b: desc(B_AT),
        image_bytes: image.len() as i32,
        n: 8,
        bf16: 0,
        scale_d: 0,
        mode: 0,
    };
    let shared = (image.len() - SHARED_BASE) as u32;
    // SAFETY: the image has image_bytes bytes; c, out and early hold 128 threads x n/2.
    unsafe { emu::launch_with(kernel, config(1, 128, shared), &p, ThreadOrder::Shuffle(5)) }?;
    Ok(out)
}

#[test]
fn wgmma_operands_written_without_a_proxy_fence_are_reported() {
    race_checked(|| {
        let out = wgmma_probe(emu::kernel("selftest_wgmma").unwrap())
            .unwrap_or_else(|e| panic!("clean probe: {e}"));
        assert!(out.iter().all(|&v| v == 16.0), "{out:?}");
        let planted = emu::variant("selftest_wgmma", "no_proxy_fence").unwrap();
        assert_race(
            "wgmma probe without fence.proxy.async",
            wgmma_probe(planted).map(drop),
            &[
                "generic-proxy write read by the async proxy without fence.proxy.async".to_string(),
                format!(
                    "first:  code at {}",
                    site("emu_selftest_sm90.cu", "smem[i - base] = p.image[i]")
                ),
                "second: wgmma.mma_async.f32.f16 at".to_string(),
                "the wgmma of warpgroup 0".to_string(),
            ],
        );
    });
}
