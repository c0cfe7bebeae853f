//! One 64 x N tile through TMA -> mbarrier -> wgmma -> store in the emulator
//! (`selftest_hopper_tile` in kernels/cuda/emu_selftest_sm90.cu: a producer warpgroup issuing
//! TMA loads into a 2-stage mbarrier ring, a consumer warpgroup on wgmma m64nNk16), for every
//! swizzle mode with the canonical K-major layout it implies, on random f16 inputs, the
//! output poisoned, every thread order, against a CPU f32 reference; and under the race
//! checker: clean as written, and the planted early stage release reported.

mod common;
#[path = "common/hopper_tile.rs"]
mod hopper_tile;

use hopper_tile::{all_swizzles, check, Tile};
use streamdit_kernels::emu::{self, EmuErrorKind, ThreadOrder};
use streamdit_kernels::tma::Swizzle;

#[test]
fn tma_mbarrier_wgmma_tile_matches_the_reference_for_every_swizzle() {
    let _race = common::race_check_full();
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
