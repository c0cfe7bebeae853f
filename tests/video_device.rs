//! The Wan-family decoders lowered to a device (`DeviceVideo`, docs/taehv.md "On the
//! device") on the emulated device: TAEHV at the wan-tiny profile's toy sizes (widths 32,
//! 16, 8, 8; 4 latent channels, padded to 8 on the device; 8x8 latents, 64x64 video)
//! against the CPU decoder (f32) on the same random weights in the released names, chunked
//! against whole, a decoder that loses its caches between chunks caught, graph replay
//! against launch by launch, one small decode under the race checker, bad latents named,
//! the toy Wan VAE whole and its blocks (chunked = whole, lost caches caught, the race
//! checker), and the engine choosing them for a Wan stream on `--backend emu`.

mod common;

use common::{f64s, rel_l2, Rng};
use streamdit::backend::cuda::emu::EmuDevice;
use streamdit::checkpoint::video as vc;
use streamdit::checkpoint::Weights;
use streamdit::decoder::VideoDecoder;
use streamdit::decoder::{DeviceVideo, TaehvDecoder};
use streamdit::model::taehv::{self, TaehvConfig};
use streamdit::model::video_ops::{Builder, ConvFlags, RgbRange, VideoGraph, VideoOp};
use streamdit::model::wan_vae::{self, WanVaeConfig};
use streamdit::{
    wan_decoder, wan_decoder_weights, BackendKind, DType, Decoder, DecoderKind, Engine,
    EngineParams, Profile, StreamParams, Tensor, WanDecoder, WeightsSource,
};

/// wan-tiny's latent channels and size.
const C: usize = 4;
const H: usize = 8;
const W: usize = 8;

/// wan-tiny's toy TAEHV (`taehv_widths = [32, 16, 8, 8]`).
fn cfg() -> TaehvConfig {
    TaehvConfig {
        latent_channels: C,
        widths: [32, 16, 8, 8],
        ..TaehvConfig::taew2_1()
    }
}

fn setup(seed: u64, h: usize, w: usize) -> (VideoGraph, Weights) {
    let graph = taehv::graph(&cfg(), h, w).unwrap();
    let weights = TaehvDecoder::random_weights(&cfg(), seed, DType::F32).unwrap();
    (graph, weights)
}

/// Latents like the DiT's output: roughly unit normal (uniform with variance 1).
fn latents(seed: u64, frames: usize, h: usize, w: usize) -> Vec<f32> {
    Rng::new(seed).f32s(frames * C * h * w, -1.732, 1.732)
}

fn emu(graph: &VideoGraph, weights: &Weights, max_frames: usize) -> DeviceVideo<EmuDevice> {
    DeviceVideo::new(graph.clone(), weights, max_frames, EmuDevice::new()).unwrap()
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

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// f16 weights and activations through TAEHV's 26 convolutions: within 1% relative L2 of
/// the f32 CPU decoder, no value off by more than 5% of the output's RMS (the TAE device
/// decoder's bounds). Measured: see the test's output.
const REL_L2: f64 = 1e-2;
const MAX_OVER_RMS: f64 = 5e-2;

#[test]
fn device_taehv_matches_the_cpu_decoder_chunk_by_chunk() {
    let (graph, weights) = setup(3, H, W);
    let x = latents(7, 4, H, W);
    let mut cpu = TaehvDecoder::new(&cfg(), H, W, &weights).unwrap();
    let want = cpu.decode_f32(&x).unwrap();
    // wan-tiny's chunks: 2 latent frames (5 video frames at the start, then 8).
    let mut dev = emu(&graph, &weights, 2);
    let fe = C * H * W;
    let mut got = dev.decode_f32(&x[..2 * fe]).unwrap();
    assert_eq!(got.len(), 5 * 64 * 64 * 3);
    got.extend(dev.decode_f32(&x[2 * fe..]).unwrap());
    let (max, l2) = errors(&got, &want);
    eprintln!("device vs CPU TAEHV, chunks of 2 + 2: rel L2 {l2:.2e}, max err / RMS {max:.2e}");
    assert!(
        l2 <= REL_L2 && max <= MAX_OVER_RMS,
        "rel L2 {l2}, max/RMS {max}"
    );

    // A restart decodes like a fresh decoder: the caches do not leak into a new stream.
    dev.reset();
    let again = dev.decode_f32(&x[..2 * fe]).unwrap();
    assert_eq!(
        bits(&again),
        bits(&got[..again.len()]),
        "reset starts a new stream"
    );
}

/// The launches do not depend on how a stream is cut: every kernel computes each output
/// element from the same inputs in the same order whatever the chunk's frame count, so the
/// device decoder's chunked output is the whole decode's, bit for bit.
#[test]
fn chunked_equals_whole_bit_for_bit() {
    let (graph, weights) = setup(4, H, W);
    let x = latents(8, 4, H, W);
    let whole = emu(&graph, &weights, 4).decode_f32(&x).unwrap();
    let fe = C * H * W;
    let mut dev = emu(&graph, &weights, 2);
    let mut chunked = Vec::new();
    for piece in [&x[..fe], &x[fe..3 * fe], &x[3 * fe..]] {
        chunked.extend(dev.decode_f32(piece).unwrap());
    }
    assert_eq!(chunked.len(), (4 * 4 - 3) * 64 * 64 * 3);
    assert_eq!(
        bits(&chunked),
        bits(&whole),
        "chunks of 1 + 2 + 1 vs 4 at once"
    );
}

/// A decoder whose caches are zeroed between chunks differs from the whole decode by far
/// more than the f16 bound: the comparisons above can fail.
#[test]
fn a_device_decoder_without_its_caches_is_caught() {
    let (graph, weights) = setup(5, H, W);
    let x = latents(9, 4, H, W);
    let want = TaehvDecoder::new(&cfg(), H, W, &weights)
        .unwrap()
        .decode_f32(&x)
        .unwrap();
    let fe = C * H * W;
    let mut dev = emu(&graph, &weights, 2);
    let mut got = dev.decode_f32(&x[..2 * fe]).unwrap();
    dev.forget_context().unwrap();
    got.extend(dev.decode_f32(&x[2 * fe..]).unwrap());
    let (max, l2) = errors(&got, &want);
    eprintln!("without caches: rel L2 {l2:.2e}, max err / RMS {max:.2e}");
    assert!(
        l2 > 5.0 * REL_L2 || max > 5.0 * MAX_OVER_RMS,
        "a decoder that lost its caches stayed within the bound: rel L2 {l2}, max/RMS {max}"
    );
}

#[test]
fn graph_replay_equals_eager_launches() {
    let (graph, weights) = setup(6, H, W);
    let x = latents(10, 2, H, W);
    let mut eager = emu(&graph, &weights, 1);
    eager.set_graphs(false);
    let mut replay = emu(&graph, &weights, 1);
    let fe = C * H * W;
    for piece in x.chunks(fe) {
        let a = eager.decode_f32(piece).unwrap();
        let b = replay.decode_f32(piece).unwrap();
        assert_eq!(bits(&a), bits(&b));
    }
}

/// Every launch of a stream-start chunk and of the chunk after it (the cached past) under
/// the race checker, on 2x2 latents: a race fails the decode, and the instrumented kernels
/// give the bits of the plain ones.
#[test]
fn device_taehv_is_race_free() {
    let (graph, weights) = setup(7, 2, 2);
    let x = latents(11, 2, 2, 2);
    let fe = C * 2 * 2;
    let mut plain = emu(&graph, &weights, 1);
    let mut checked = emu(&graph, &weights, 1);
    for piece in x.chunks(fe) {
        let a = plain.decode_f32(piece).unwrap();
        let b = {
            let _race = streamdit_kernels::emu::racecheck(true);
            checked.decode_f32(piece).unwrap()
        };
        assert!(a.iter().all(|v| v.is_finite()));
        assert_eq!(bits(&a), bits(&b));
    }
}

#[test]
fn bad_latents_and_unlowered_ops_are_named_errors() {
    let (graph, weights) = setup(1, H, W);
    let mut dev = emu(&graph, &weights, 2);
    let fe = C * H * W;
    // Not a whole number of latent frames.
    let e = dev.decode_f32(&vec![0.5; fe + 3]).unwrap_err().to_string();
    assert!(
        e.contains("TAEHV decoder latents") && e.contains("multiple"),
        "{e}"
    );
    // The wrong channel count or size.
    for shape in [[1, C + 1, H, W], [1, C, H, W + 2]] {
        let t = Tensor::new(shape.to_vec(), vec![0.5; shape.iter().product()]).unwrap();
        let e = dev.decode_tensor(&t).unwrap_err().to_string();
        assert!(e.contains(&format!("[n, {C}, {H}, {W}]")), "{e}");
    }
    // Not finite.
    let mut x = latents(2, 1, H, W);
    x[5] = f32::NAN;
    let e = dev.decode_f32(&x).unwrap_err().to_string();
    assert!(e.contains("TAEHV decoder latents"), "{e}");
    // A missing tensor is named.
    let mut tensors = weights.into_tensors();
    tensors.remove("decoder.9.conv.2.weight");
    let broken = Weights::from_tensors("test", tensors);
    let e = DeviceVideo::new(graph, &broken, 1, EmuDevice::new())
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("decoder.9.conv.2.weight"), "{e}");
}

/// The whole toy Wan VAE (wan-tiny's: base width 8, 4 latent channels) on the emulator
/// against the CPU decoder, chunked as a stream pops it (1 + 2 latent frames).
#[test]
fn device_wan_vae_matches_the_cpu_decoder() {
    let vae = WanVaeConfig {
        z_dim: C,
        dim: 8,
        latent_mean: WanVaeConfig::wan2_1().latent_mean[..C].to_vec(),
        latent_std: WanVaeConfig::wan2_1().latent_std[..C].to_vec(),
        ..WanVaeConfig::wan2_1()
    };
    let g = wan_vae::graph(&vae, H, W).unwrap();
    let w = streamdit::WanVaeDecoder::random_weights(&vae, 1, DType::F32).unwrap();
    let x = latents(13, 3, H, W);
    let want = VideoDecoder::new(g.clone(), &w)
        .unwrap()
        .decode_f32(&x)
        .unwrap();
    let mut dev = emu(&g, &w, 2);
    let fe = C * H * W;
    let mut got = dev.decode_f32(&x[..fe]).unwrap();
    got.extend(dev.decode_f32(&x[fe..]).unwrap());
    let (max, l2) = errors(&got, &want);
    eprintln!("device vs CPU Wan VAE, chunks of 1 + 2: rel L2 {l2:.2e}, max err / RMS {max:.2e}");
    assert!(
        l2 <= REL_L2 && max <= MAX_OVER_RMS,
        "rel L2 {l2}, max/RMS {max}"
    );
}

/// The Wan VAE's lowered ops, in a list made with its own block builders: the
/// de-normalisation (on the host), `conv2` (1x1x1, 4 channels padded to 8), a causal
/// 3x3x3 convolution, a residual block with its 1x1 shortcut (32 -> 16), and a temporal
/// resample (the causal 3x1x1 `time_conv` with the first-frame bypass, then the 2x
/// upsampling 3x3 convolution), on 4x4 latents.
fn vae_blocks() -> (VideoGraph, Weights) {
    let flags = |bias| ConvFlags {
        upsample: false,
        bias,
        conv3d: true,
        gain: 1.0,
    };
    let mut b = Builder::new(C, 4, 4);
    b.push(VideoOp::Denormalize {
        mean: vec![0.1, -0.2, 0.3, 0.0],
        std: vec![1.5, 0.5, 2.0, 1.0],
    });
    b.conv("conv2".into(), C, [1, 1], flags(true));
    b.conv("decoder.conv1".into(), 32, [3, 3], flags(true));
    wan_vae::residual(&mut b, "decoder.upsamples.0", 16);
    wan_vae::resample(&mut b, "decoder.upsamples.1", true);
    let g = b.finish("Wan VAE blocks", RgbRange::Signed, 2).unwrap();
    let w = vc::random(&g, 3, vc::WAN_VAE_COUNTER, DType::F32);
    (g, w)
}

#[test]
fn device_wan_vae_blocks_match_the_cpu_and_stream_seamlessly() {
    let (graph, weights) = vae_blocks();
    let fe = C * 4 * 4;
    let x = latents(12, 3, 4, 4);
    let want = VideoDecoder::new(graph.clone(), &weights)
        .unwrap()
        .decode_f32(&x)
        .unwrap();
    let mut dev = emu(&graph, &weights, 2);
    let mut got = dev.decode_f32(&x[..fe]).unwrap();
    // The first latent frame is 1 frame (keep_first), each later one 2.
    assert_eq!(got.len(), 8 * 8 * 8);
    got.extend(dev.decode_f32(&x[fe..]).unwrap());
    let (max, l2) = errors(&got, &want);
    eprintln!(
        "device vs CPU Wan VAE blocks, chunks of 1 + 2: rel L2 {l2:.2e}, max err / RMS {max:.2e}"
    );
    assert!(
        l2 <= REL_L2 && max <= MAX_OVER_RMS,
        "rel L2 {l2}, max/RMS {max}"
    );
    let whole = emu(&graph, &weights, 3).decode_f32(&x).unwrap();
    assert_eq!(bits(&got), bits(&whole), "chunks of 1 + 2 vs 3 at once");
    // Restart: the caches of the first stream do not leak into the next.
    dev.reset();
    let again = dev.decode_f32(&x[..fe]).unwrap();
    assert_eq!(bits(&again), bits(&got[..again.len()]));
    // Losing the caches between chunks is caught.
    let mut lost = emu(&graph, &weights, 2);
    let mut bad = lost.decode_f32(&x[..fe]).unwrap();
    lost.forget_context().unwrap();
    bad.extend(lost.decode_f32(&x[fe..]).unwrap());
    let (max, l2) = errors(&bad, &want);
    assert!(l2 > 5.0 * REL_L2 || max > 5.0 * MAX_OVER_RMS, "{l2} {max}");
    // Every launch under the race checker gives the same bits.
    let mut checked = emu(&graph, &weights, 2);
    let _race = streamdit_kernels::emu::racecheck(true);
    let mut raced = checked.decode_f32(&x[..fe]).unwrap();
    raced.extend(checked.decode_f32(&x[fe..]).unwrap());
    assert_eq!(bits(&raced), bits(&got));
}

/// A Wan stream on `--backend emu` decodes TAEHV on the (emulated) device: its frames are
/// the device decoder's bytes for its latents, close to (not equal to) the CPU decoder's.
#[test]
fn the_engine_decodes_taehv_and_the_wan_vae_on_the_device_for_emu_streams() {
    let e = Engine::new(EngineParams {
        profile: Profile::builtin("wan-tiny").unwrap(),
        weights: WeightsSource::Random {
            seed: 5,
            dtype: DType::F16,
        },
        backend: BackendKind::Emu,
    })
    .unwrap();
    let mut s = e
        .stream(StreamParams {
            prompt: "a lighthouse at dusk".into(),
            seed: Some(9),
            decoder: DecoderKind::Taehv,
            ..StreamParams::default()
        })
        .unwrap();
    let (mut x, mut frames) = (Vec::new(), Vec::new());
    for _ in 0..2 {
        s.next_frames(&mut frames).unwrap();
        x.extend_from_slice(s.chunk_latents());
    }
    assert_eq!(frames.len(), (5 + 8) * 64 * 64 * 3);
    let w = wan_decoder_weights(e.profile(), WanDecoder::Taehv, None, 5, DType::F16).unwrap();
    let graph = taehv::graph(&cfg(), H, W).unwrap();
    let mut dev = emu(&graph, &w, 4);
    let mut want = Vec::new();
    Decoder::decode(&mut dev, &x, &mut want).unwrap();
    assert!(
        frames == want,
        "the stream's frames are the device decoder's"
    );
    let mut cpu = wan_decoder(e.profile(), WanDecoder::Taehv, &w).unwrap();
    let mut on_cpu = Vec::new();
    cpu.decode(&x, &mut on_cpu).unwrap();
    let far = frames
        .iter()
        .zip(&on_cpu)
        .filter(|(a, b)| a.abs_diff(**b) > 4)
        .count();
    assert!(
        frames != on_cpu,
        "f16 on the device is not the f32 CPU decoder bit for bit"
    );
    assert!(
        far * 1000 <= frames.len(),
        "{far} bytes differ by more than 4 levels"
    );

    // The Wan VAE too: the engine's decoder is the device one (close to the CPU's, not it).
    let wv = wan_decoder_weights(e.profile(), WanDecoder::WanVae, None, 5, DType::F16).unwrap();
    let mut on_dev = Vec::new();
    let mut vae = e.decoder(DecoderKind::WanVae).unwrap();
    vae.decode(&x, &mut on_dev).unwrap();
    let mut on_cpu = Vec::new();
    let mut cpu = wan_decoder(e.profile(), WanDecoder::WanVae, &wv).unwrap();
    cpu.decode(&x, &mut on_cpu).unwrap();
    assert_eq!(on_dev.len(), on_cpu.len());
    let far = on_dev
        .iter()
        .zip(&on_cpu)
        .filter(|(a, b)| a.abs_diff(**b) > 4)
        .count();
    assert!(
        on_dev != on_cpu,
        "the Wan VAE decoded on the device, in f16"
    );
    assert!(
        far * 1000 <= on_dev.len(),
        "{far} bytes differ by more than 4 levels"
    );
}
