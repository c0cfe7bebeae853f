//! The TAE decoder lowered to the decoder kernels (`DeviceTae`), on the emulated device,
//! against the CPU decoder (f32) on the same random weights and latents: chunk by chunk with
//! the temporal caches carried on the device, a stream restart, and graph replay against
//! launch-by-launch execution, and one small decode under the emulator's race checker.

mod common;

use common::{f64s, rel_l2, Rng};
use streamdit::backend::cuda::emu::EmuDevice;
use streamdit::checkpoint::{DType, Weights};
use streamdit::decoder::DeviceTae;
use streamdit::decoder::{Decoder, TaeDecoder};
use streamdit::model::profile::DecoderConfig;
use streamdit::model::tae::TaeGraph;

const C: usize = 8;
/// A small latent frame (32x48 video) keeps the emulator to seconds.
const H: usize = 4;
const W: usize = 6;

fn setup(seed: u64) -> (TaeGraph, Weights) {
    setup_hw(seed, H, W)
}

fn setup_hw(seed: u64, h: usize, w: usize) -> (TaeGraph, Weights) {
    // The full tier decodes with `tiny`'s widths (64, 64, 32, 16); the default tier with
    // narrower upper stages (the first stays 64: its attention runs at head dim 64).
    let dec = DecoderConfig {
        widths: if common::full() {
            vec![64, 64, 32, 16]
        } else {
            vec![64, 32, 16, 16]
        },
        groups: 8,
    };
    let graph = TaeGraph::new(&dec, C, h, w).unwrap();
    let weights = Weights::random_decoder(&dec, C, seed, DType::F32).unwrap();
    (graph, weights)
}

/// Largest error relative to the output's RMS, and the relative L2 error.
fn errors(got: &[f32], want: &[f32]) -> (f64, f64) {
    assert_eq!(got.len(), want.len());
    assert!(got.iter().all(|v| v.is_finite()), "every value written");
    let want64 = f64s(want);
    let rms = (want64.iter().map(|v| v * v).sum::<f64>() / want64.len() as f64).sqrt();
    let max = got
        .iter()
        .zip(&want64)
        .map(|(&g, &w)| (g as f64 - w).abs())
        .fold(0.0, f64::max);
    (max / rms, rel_l2(&f64s(got), &want64))
}

/// f16 storage of every activation through the decoder's ~60 layers: the device output is
/// within 1% (relative L2) of the f32 CPU decoder and no value is off by more than 5% of the
/// output's RMS. Measured: see the test's output.
const REL_L2: f64 = 1e-2;
const MAX_OVER_RMS: f64 = 5e-2;

#[test]
fn device_decoder_matches_the_cpu_decoder_chunk_by_chunk() {
    let (graph, weights) = setup(3);
    let mut rng = Rng::new(7);
    let latents = rng.f32s(3 * C * H * W, -2.0, 2.0);
    let mut cpu = TaeDecoder::new(graph.clone(), &weights).unwrap();
    let want = cpu.decode_f32(&latents).unwrap();

    let mut dev = DeviceTae::new(graph, &weights, 2, EmuDevice::new()).unwrap();
    // One frame (the stream start), then two (cached context), as a stream pops them.
    let fe = C * H * W;
    let mut got = dev.decode_f32(&latents[..fe]).unwrap();
    got.extend(dev.decode_f32(&latents[fe..]).unwrap());
    let (max, l2) = errors(&got, &want);
    eprintln!(
        "device vs CPU decoder, chunks of 1 then 2: rel L2 {l2:.2e}, max err / RMS {max:.2e}"
    );
    assert!(
        l2 <= REL_L2 && max <= MAX_OVER_RMS,
        "rel L2 {l2}, max/RMS {max}"
    );

    // A restart decodes like a fresh decoder: the caches are replaced by the first frame.
    dev.reset();
    let again = dev.decode_f32(&latents[..fe]).unwrap();
    assert_eq!(
        again,
        got[..again.len()].to_vec(),
        "reset starts a new stream"
    );

    // Bytes, as streams take them.
    let mut bytes = Vec::new();
    dev.reset();
    dev.decode(&latents[..fe], &mut bytes).unwrap();
    assert_eq!(bytes.len(), 4 * 8 * H * 8 * W * 3);
}

#[test]
fn device_decoder_graph_replay_equals_eager_launches() {
    let (graph, weights) = setup(5);
    let mut rng = Rng::new(9);
    let latents = rng.f32s(C * H * W, -2.0, 2.0);
    let mut eager = DeviceTae::new(graph.clone(), &weights, 1, EmuDevice::new()).unwrap();
    eager.set_graphs(false);
    let mut replay = DeviceTae::new(graph, &weights, 1, EmuDevice::new()).unwrap();
    let a = eager.decode_f32(&latents).unwrap();
    let b = replay.decode_f32(&latents).unwrap();
    assert!(a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()));
}

/// Every decoder kernel (convolutions, GroupNorm, the mid-block attention, the layout
/// kernels) of one stream-start frame under the race checker: a race fails the decode, and
/// the instrumented kernels give the bits of the plain ones. A 2 x 2 latent (16 x 16
/// pixels) keeps the checked decode to seconds: the checker costs several times the plain
/// emulation (kernels/README.md, "Race checker").
#[test]
fn device_decoder_is_race_free() {
    let (graph, weights) = setup_hw(4, 2, 2);
    let mut rng = Rng::new(11);
    let latents = rng.f32s(C * 2 * 2, -2.0, 2.0);
    let mut plain = DeviceTae::new(graph.clone(), &weights, 1, EmuDevice::new()).unwrap();
    let mut checked = DeviceTae::new(graph, &weights, 1, EmuDevice::new()).unwrap();
    let a = plain.decode_f32(&latents).unwrap();
    let b = {
        let _race = streamdit_kernels::emu::racecheck(true);
        checked.decode_f32(&latents).unwrap()
    };
    assert!(a.iter().all(|v| v.is_finite()));
    assert!(a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()));
}

#[test]
fn device_decoder_names_missing_tensors() {
    let (graph, weights) = setup(1);
    let mut tensors = weights.into_tensors();
    tensors.remove("decoder.mid.attn.q.bias");
    let weights = Weights::from_tensors("test", tensors);
    let err = DeviceTae::new(graph, &weights, 1, EmuDevice::new())
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("decoder.mid.attn.q.bias"), "{err}");
}

/// `device_memory` (what `streamdit plan` prints) is what the device decoder allocates.
#[test]
fn device_memory_report_equals_the_allocation() {
    let (graph, weights) = setup(2);
    let report = streamdit::decoder::tae::device_memory(&graph, 2).unwrap();
    let dev = DeviceTae::new(graph, &weights, 2, EmuDevice::new()).unwrap();
    assert_eq!(report.total, dev.device_bytes());
    assert_eq!(
        report.weights + report.activations + report.context + report.caches + report.scratch,
        report.total
    );
    assert!(report.buffers >= 2 && report.activations >= report.buffers * report.buffer_bytes);
}

/// The decoder's launches are fitted to the device's shared memory per block when its
/// lists are lowered (at the first decode of a chunk size): below what its narrowest
/// convolution needs (48 KiB) that is an error naming the kernel, the bytes and the limit,
/// before any launch; at an sm_86-sized limit it decodes.
#[test]
fn device_decoder_refuses_a_device_without_the_shared_memory() {
    let (graph, weights) = setup(4);
    let latents = Rng::new(1).f32s(C * H * W, -2.0, 2.0);
    let small = EmuDevice::new().with_shared_memory_limit(40_000);
    let mut dec = DeviceTae::new(graph.clone(), &weights, 1, small).unwrap();
    let err = dec.decode_f32(&latents).err().unwrap().to_string();
    for part in ["needs", "40000 B", "MAX_SHARED_MEMORY_PER_BLOCK_OPTIN"] {
        assert!(err.contains(part), "{part:?} in {err}");
    }
    let sm86 = EmuDevice::new().with_shared_memory_limit(99 * 1024);
    let mut dec = DeviceTae::new(graph, &weights, 1, sm86).unwrap();
    assert!(dec.decode_f32(&latents).is_ok());
}
