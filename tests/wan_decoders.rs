//! The Wan-family decoders on the CPU (docs/taehv.md, docs/wan_vae.md) against naive f64
//! references written from those docs: TAEHV whole (in taehv.py's parallel form), the Wan
//! VAE block by block and whole (in the reference's one-latent-frame-per-call form with its
//! feature-cache slots). Then: any chunking gives the bits of decoding at once, a decoder
//! that loses its caches between chunks is caught, random weights keep activations O(1)
//! with spread colours, and bad inputs and checkpoints get named errors.

mod common;
#[path = "common/taehv_naive.rs"]
mod taehv_naive;
#[path = "common/wan_vae_naive.rs"]
mod wan_vae_naive;

use std::collections::BTreeMap;
use std::path::PathBuf;

use common::{assert_close, Rng};
use streamdit::checkpoint::video as vc;
use streamdit::checkpoint::{self, DType, Weights};
use streamdit::decoder::{Decoder, TaehvDecoder, VideoDecoder, WanVaeDecoder};
use streamdit::model::profile::DecoderConfig;
use streamdit::model::taehv::TaehvConfig;
use streamdit::model::video_ops::{Builder, ConvFlags, RgbRange};
use streamdit::model::wan_vae::{self, WanVaeConfig};
use streamdit::Tensor;
use taehv_naive::NaiveTaehv;
use wan_vae_naive::{Cache, NaiveWanVae};

/// Latents like the DiT's output: roughly unit normal (uniform with variance 1).
fn latents(seed: u64, n: usize) -> Vec<f32> {
    Rng::new(seed).f32s(n, -1.732, 1.732)
}

/// TAEHV with small widths, every layer kind still present.
fn tiny_taehv() -> TaehvConfig {
    TaehvConfig {
        widths: [32, 16, 8, 8],
        ..TaehvConfig::taew2_1()
    }
}

/// The Wan VAE with base width 8 (stage widths 32, 32, 32, 16, 8).
fn tiny_wan() -> WanVaeConfig {
    WanVaeConfig {
        dim: 8,
        ..WanVaeConfig::wan2_1()
    }
}

fn naive_taehv<'a>(cfg: &TaehvConfig, w: &'a BTreeMap<String, Tensor>) -> NaiveTaehv<'a> {
    NaiveTaehv {
        w,
        widths: cfg.widths,
        time_up: cfg.time_upscale,
        space_up: cfg.space_upscale,
    }
}

fn naive_wan<'a>(cfg: &WanVaeConfig, w: &'a BTreeMap<String, Tensor>) -> NaiveWanVae<'a> {
    NaiveWanVae {
        w,
        dims: cfg.dims(),
        blocks_per_stage: cfg.num_res_blocks + 1,
        temporal: cfg.temporal_upsample,
        mean: cfg.latent_mean.iter().map(|&v| v as f64).collect(),
        std: cfg.latent_std.iter().map(|&v| v as f64).collect(),
    }
}

fn check_taehv_against_naive(cfg: &TaehvConfig, (t, h, w): (usize, usize, usize), seed: u64) {
    let weights = TaehvDecoder::random_weights(cfg, seed, DType::F32).unwrap();
    let z = latents(seed + 1, t * 16 * h * w);
    let mut dec = TaehvDecoder::new(cfg, h, w, &weights).unwrap();
    let got = dec.decode_f32(&z).unwrap();
    let tensors = weights.into_tensors();
    let want = naive_taehv(cfg, &tensors).decode(&z, t, 16, h, w);
    assert_eq!(got.len(), (4 * t - 3) * 64 * h * w * 3, "4T - 3 frames");
    let rms = (want.iter().map(|v| v * v).sum::<f64>() / want.len() as f64).sqrt();
    println!("TAEHV {:?} reference output rms {rms:.3}", cfg.widths);
    assert_close(
        &format!("TAEHV {:?} vs naive", cfg.widths),
        &got,
        &want,
        2e-5,
        2e-5,
    );
}

#[test]
fn taehv_matches_naive_reference() {
    check_taehv_against_naive(&tiny_taehv(), (3, 2, 3), 11);
    // The released widths (256, 128, 64, 64) on a 1x2 latent.
    check_taehv_against_naive(&TaehvConfig::taew2_1(), (2, 1, 2), 12);
}

/// One block graph of the Wan VAE, its random weights, and the naive block applied to
/// input frames one at a time with the reference's cache slots.
struct Block {
    name: &'static str,
    dec: VideoDecoder,
    weights: BTreeMap<String, Tensor>,
    shape: (usize, usize, usize),
}

fn wan_block(
    name: &'static str,
    (c, h, w): (usize, usize, usize),
    build: impl Fn(&mut Builder),
    seed: u64,
) -> Block {
    let mut b = Builder::new(c, h, w);
    build(&mut b);
    let graph = b.finish("Wan VAE block", RgbRange::Signed, 1).unwrap();
    let weights = vc::random(&graph, seed, 0x0400_0000, DType::F32);
    let dec = VideoDecoder::new(graph, &weights).unwrap();
    Block {
        name,
        dec,
        weights: weights.into_tensors(),
        shape: (c, h, w),
    }
}

#[test]
fn wan_vae_blocks_match_naive_reference() {
    let cfg = WanVaeConfig::wan2_1();
    let p = "decoder.upsamples.4";
    let blocks = [
        wan_block(
            "ResidualBlock(192, 384) with shortcut",
            (192, 2, 2),
            |b| wan_vae::residual(b, p, 384),
            1,
        ),
        wan_block(
            "ResidualBlock(96, 96)",
            (96, 3, 2),
            |b| wan_vae::residual(b, p, 96),
            2,
        ),
        wan_block(
            "AttentionBlock(384)",
            (384, 2, 3),
            |b| wan_vae::attention(b, "decoder.middle.1"),
            3,
        ),
        wan_block(
            "Resample(64, upsample3d)",
            (64, 2, 3),
            |b| wan_vae::resample(b, p, true),
            4,
        ),
        wan_block(
            "Resample(64, upsample2d)",
            (64, 3, 2),
            |b| wan_vae::resample(b, p, false),
            5,
        ),
    ];
    let t = 4;
    for mut blk in blocks {
        let (c, h, w) = blk.shape;
        let x = latents(7, t * c * h * w);
        let got = blk.dec.decode_f32(&x).unwrap();
        // The naive block on one frame at a time, its cache slots carried.
        let naive = naive_wan(&cfg, &blk.weights);
        let mut cache = Cache::new();
        let mut want = Vec::new();
        let frame = c * h * w;
        for f in 0..t {
            let xf = taehv_naive::Video::from_latents(&x[f * frame..(f + 1) * frame], 1, c, h, w);
            cache.idx = 0;
            let y = match blk.name {
                n if n.starts_with("Residual") => {
                    let cout = if c == 192 { 384 } else { c };
                    naive.residual(&xf, p, cout, &mut cache)
                }
                n if n.starts_with("Attention") => naive.attention(&xf, "decoder.middle.1"),
                n => naive.resample(&xf, p, n.contains("3d"), &mut cache),
            };
            want.extend(y.channels_last());
        }
        assert_close(blk.name, &got, &want, 2e-5, 2e-5);
    }
}

/// The Wan VAE decoder at base width 8 against the naive reference, the naive fed one
/// latent frame per call like `WanVAE_.decode`, the engine all frames at once.
#[test]
fn wan_vae_matches_naive_reference() {
    let cfg = tiny_wan();
    let (t, h, w) = (3, 2, 3);
    let weights = WanVaeDecoder::random_weights(&cfg, 21, DType::F32).unwrap();
    let z = latents(22, t * 16 * h * w);
    let mut dec = WanVaeDecoder::new(&cfg, h, w, &weights).unwrap();
    let got = dec.decode_f32(&z).unwrap();
    assert_eq!(
        got.len(),
        (1 + 4 * (t - 1)) * 64 * h * w * 3,
        "1 + 4(T-1) frames"
    );
    let tensors = weights.into_tensors();
    let want = naive_wan(&cfg, &tensors).decode(&z, (t, 16, h, w), &mut Cache::new());
    let rms = (want.iter().map(|v| v * v).sum::<f64>() / want.len() as f64).sqrt();
    println!("Wan VAE (dim 8) reference output rms {rms:.3}");
    assert_close("Wan VAE (dim 8) vs naive", &got, &want, 2e-5, 2e-5);
}

/// Decodes `z` (`n` latent frames of `frame` elements) in chunks of `sizes`, calling
/// `between` after each chunk; returns the concatenated output and the frames per chunk.
fn chunked(
    dec: &mut VideoDecoder,
    z: &[f32],
    frame: usize,
    sizes: &[usize],
    mut between: impl FnMut(&mut VideoDecoder),
) -> (Vec<f32>, Vec<usize>) {
    dec.reset();
    let (mut out, mut counts, mut at) = (Vec::new(), Vec::new(), 0);
    let (w, h) = dec.frame_size();
    for &n in sizes {
        let y = dec.decode_f32(&z[at * frame..(at + n) * frame]).unwrap();
        counts.push(y.len() / (w * h * 3));
        out.extend(y);
        at += n;
        between(dec);
    }
    (out, counts)
}

/// Whole = chunked bit for bit, the frame counts `4 n1 - 3, 4 n2, ...`, and a planted
/// missing cache (the caches zeroed between chunks) makes the comparison fail.
fn check_chunking(dec: &mut VideoDecoder, t: usize, seed: u64) {
    let g = dec.graph().clone();
    let frame = g.latent_channels * g.latent_height * g.latent_width;
    let z = latents(seed, t * frame);
    let whole = dec.decode_f32(&z).unwrap();
    for sizes in [vec![2, 2, 1], vec![1; t], vec![1, 3, 1], vec![4, 1]] {
        let (got, counts) = chunked(dec, &z, frame, &sizes, |_| {});
        let want_counts: Vec<usize> = sizes
            .iter()
            .enumerate()
            .map(|(i, &n)| 4 * n - if i == 0 { 3 } else { 0 })
            .collect();
        assert_eq!(counts, want_counts, "{}: frames per chunk", g.family);
        assert!(
            got == whole,
            "{}: chunks {sizes:?} differ from the whole decode",
            g.family
        );
        // The planted bug: a decoder that loses its causal context between chunks.
        let (lost, _) = chunked(dec, &z, frame, &sizes, |d| d.forget_context());
        let worst = lost
            .iter()
            .zip(&whole)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(
            worst > 1e-2,
            "{}: chunks {sizes:?} without caches still match ({worst:e}): the test cannot see a missing cache",
            g.family
        );
    }
    println!("{}: whole = chunked, bit for bit", g.family);
    // Without a reset the stream goes on: the same latents decode differently.
    dec.reset();
    let fresh = dec.decode_f32(&z[..frame]).unwrap();
    let again = dec.decode_f32(&z[..frame]).unwrap();
    assert_eq!(fresh[..], whole[..fresh.len()]);
    assert_ne!(
        again.len(),
        fresh.len(),
        "the first chunk gives 1 frame, later ones 4"
    );
}

#[test]
fn chunked_decoding_equals_whole_decoding() {
    let cfg = tiny_taehv();
    let weights = TaehvDecoder::random_weights(&cfg, 31, DType::F32).unwrap();
    check_chunking(&mut TaehvDecoder::new(&cfg, 2, 3, &weights).unwrap(), 5, 32);
    let cfg = tiny_wan();
    let weights = WanVaeDecoder::random_weights(&cfg, 33, DType::F32).unwrap();
    check_chunking(
        &mut WanVaeDecoder::new(&cfg, 2, 3, &weights).unwrap(),
        5,
        34,
    );
}

/// Per op output rms within [lo, hi], every value finite, and the RGB bytes spread.
fn check_scales(name: &str, dec: &mut VideoDecoder, t: usize, seed: u64, bounds: (f64, f64)) {
    let g = dec.graph().clone();
    let z = latents(
        seed,
        t * g.latent_channels * g.latent_height * g.latent_width,
    );
    let (mut lo, mut hi) = ((f64::INFINITY, 0), (0.0f64, 0));
    dec.decode_observed(&z, |i, out| {
        assert!(
            out.iter().all(|v| v.is_finite()),
            "{name}: op {i} is not finite"
        );
        let rms = (out.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / out.len() as f64).sqrt();
        if rms < lo.0 {
            lo = (rms, i);
        }
        if rms > hi.0 {
            hi = (rms, i);
        }
    })
    .unwrap();
    println!(
        "{name}: op output rms from {:.3} (op {} {}) to {:.3} (op {} {})",
        lo.0,
        lo.1,
        g.steps[lo.1].op.kind(),
        hi.0,
        hi.1,
        g.steps[hi.1].op.kind()
    );
    assert!(
        lo.0 > bounds.0 && hi.0 < bounds.1,
        "{name}: activations out of O(1)"
    );
    let mut bytes = Vec::new();
    dec.reset();
    dec.decode(&z, &mut bytes).unwrap();
    let n = bytes.len() as f64;
    let mut hist = [0usize; 256];
    bytes.iter().for_each(|&b| hist[b as usize] += 1);
    let clipped = (hist[0] + hist[255]) as f64 / n;
    let mean = bytes.iter().map(|&b| b as f64).sum::<f64>() / n;
    let std = (bytes
        .iter()
        .map(|&b| (b as f64 - mean).powi(2))
        .sum::<f64>()
        / n)
        .sqrt();
    println!(
        "{name}: RGB bytes mean {mean:.1}, std {std:.1}, clipped {:.2}%",
        clipped * 100.0
    );
    assert!(clipped < 0.05, "{name}: saturated");
    assert!(std > 20.0, "{name}: flat (byte std {std:.1})");
    assert!((64.0..192.0).contains(&mean), "{name}: mean byte {mean:.1}");
}

#[test]
fn random_weights_keep_activations_order_one() {
    let cfg = TaehvConfig::taew2_1();
    let weights = TaehvDecoder::random_weights(&cfg, 41, DType::F16).unwrap();
    let mut dec = TaehvDecoder::new(&cfg, 4, 4, &weights).unwrap();
    check_scales("TAEHV taew2_1", &mut dec, 2, 42, (0.05, 20.0));
    let cfg = WanVaeConfig::wan2_1();
    let weights = WanVaeDecoder::random_weights(&cfg, 43, DType::F16).unwrap();
    let mut dec = WanVaeDecoder::new(&cfg, 2, 2, &weights).unwrap();
    check_scales("Wan 2.1 VAE", &mut dec, 2, 44, (0.05, 20.0));
}

fn temp_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("streamdit-wan-decoders-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn write(path: &std::path::Path, t: &BTreeMap<String, Tensor>) {
    let refs: Vec<(&str, &Tensor)> = t.iter().map(|(n, t)| (n.as_str(), t)).collect();
    checkpoint::write_tensors(path, &refs, DType::F16).unwrap();
}

#[test]
fn checkpoints_load_in_released_names_and_bad_ones_are_named() {
    let dir = temp_dir();
    let (taehv, wan) = (tiny_taehv(), tiny_wan());
    // Round trips: TAEHV, the Wan VAE in original and in diffusers names.
    let taehv_file = dir.join("taew2_1.safetensors");
    TaehvDecoder::write_random(&taehv_file, &taehv, 5, DType::F16).unwrap();
    let loaded = TaehvDecoder::load_weights(&taehv_file, &taehv).unwrap();
    let random = TaehvDecoder::random_weights(&taehv, 5, DType::F16).unwrap();
    assert!(loaded.iter().eq(random.iter()), "TAEHV round trip");
    let original = dir.join("wan_2.1_vae.safetensors");
    let diffusers = dir.join("diffusion_pytorch_model.safetensors");
    WanVaeDecoder::write_random(&original, &wan, 6, DType::F16, false).unwrap();
    WanVaeDecoder::write_random(&diffusers, &wan, 6, DType::F16, true).unwrap();
    let a = WanVaeDecoder::load_weights(&original, &wan).unwrap();
    let b = WanVaeDecoder::load_weights(&diffusers, &wan).unwrap();
    assert!(
        a.iter().eq(b.iter()),
        "original and diffusers names give the same weights"
    );

    // The wrong kind, named by the tensor that shows it.
    let err = |e: streamdit::Error| e.to_string();
    let msg = err(WanVaeDecoder::load_weights(&taehv_file, &wan).unwrap_err());
    assert!(
        msg.contains("not a Wan VAE decoder") && msg.contains("`decoder.1.weight`"),
        "{msg}"
    );
    let msg = err(TaehvDecoder::load_weights(&original, &taehv).unwrap_err());
    assert!(
        msg.contains("not a TAEHV decoder") && msg.contains("`decoder.conv1.weight`"),
        "{msg}"
    );
    let tae = Weights::random_decoder(
        &DecoderConfig {
            widths: vec![64, 64, 32, 16],
            groups: 8,
        },
        8,
        0,
        DType::F16,
    )
    .unwrap();
    let tae_file = dir.join("tae.safetensors");
    write(&tae_file, &tae.into_tensors());
    let msg = err(TaehvDecoder::load_weights(&tae_file, &taehv).unwrap_err());
    assert!(
        msg.contains("`decoder.conv_in_t.weight`") && msg.contains("docs/tae.md"),
        "{msg}"
    );
    // A `.pth` is read directly (tests/wan_decoder_streams.rs); a missing one is named.
    let msg = err(TaehvDecoder::load_weights(dir.join("taew2_1.pth"), &taehv).unwrap_err());
    assert!(msg.contains("taew2_1.pth"), "{msg}");

    // A mis-shaped tensor (a 48-channel latent, as in taew2_2) and a missing one.
    let mut t = random.into_tensors();
    t.insert("decoder.1.weight".into(), Tensor::zeros(vec![32, 48, 3, 3]));
    let bad = dir.join("bad.safetensors");
    write(&bad, &t);
    let msg = err(TaehvDecoder::load_weights(&bad, &taehv).unwrap_err());
    assert!(
        msg.contains("decoder.1.weight")
            && msg.contains("[32, 16, 3, 3]")
            && msg.contains("[32, 48, 3, 3]"),
        "{msg}"
    );
    let msg =
        err(TaehvDecoder::new(&taehv, 2, 2, &Weights::from_tensors("mem", t.clone())).unwrap_err());
    assert!(
        msg.contains("decoder.1.weight") && msg.contains("[32, 48, 3, 3]"),
        "{msg}"
    );
    t.remove("decoder.1.weight");
    t.remove("decoder.15.conv.2.bias");
    write(&bad, &t);
    let msg = err(TaehvDecoder::load_weights(&bad, &taehv).unwrap_err());
    assert!(
        msg.contains("decoder.1.weight") && msg.contains("none"),
        "{msg}"
    );
    let mut d = a.into_tensors();
    d.remove("decoder.upsamples.7.time_conv.bias");
    let msg = err(WanVaeDecoder::new(&wan, 2, 2, &Weights::from_tensors("mem", d)).unwrap_err());
    assert!(msg.contains("decoder.upsamples.7.time_conv.bias"), "{msg}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_latents_and_sizes_are_named() {
    let cfg = tiny_taehv();
    let weights = TaehvDecoder::random_weights(&cfg, 1, DType::F32).unwrap();
    let mut dec = TaehvDecoder::new(&cfg, 2, 3, &weights).unwrap();
    let mut out = Vec::new();
    let msg = dec.decode(&[0.0; 7], &mut out).unwrap_err().to_string();
    assert!(
        msg.contains("TAEHV decoder latents") && msg.contains("C*H*W = 96"),
        "{msg}"
    );
    // Wrong channel count: 8 channels where taew2_1 has 16.
    let z = Tensor::new(vec![2, 8, 2, 3], latents(1, 96)).unwrap();
    let msg = dec.decode_tensor(&z, &mut out).unwrap_err().to_string();
    assert!(
        msg.contains("[n, 16, 2, 3]") && msg.contains("[2, 8, 2, 3]"),
        "{msg}"
    );
    assert!(
        out.is_empty() && dec.at_stream_start(),
        "nothing decoded, stream not started"
    );
    dec.decode(&[], &mut out).unwrap();
    assert!(out.is_empty() && dec.at_stream_start());
    let ok = Tensor::new(vec![2, 16, 2, 3], latents(2, 192)).unwrap();
    dec.decode_tensor(&ok, &mut out).unwrap();
    assert_eq!(out.len(), 5 * 16 * 24 * 3);
    assert_eq!((dec.frames_per_latent(), dec.startup_frames()), (4, 3));
    // A chunk too long for memory: an error before anything is allocated.
    let mut b = Builder::new(1, 1, 1);
    let flags = ConvFlags {
        upsample: false,
        bias: true,
        conv3d: false,
        gain: 1.0,
    };
    b.conv("wide".into(), 1 << 20, [1, 1], flags);
    let g = b.finish("wide test", RgbRange::Unit, 1).unwrap();
    let weights = vc::random(&g, 0, 0x0500_0000, DType::F32);
    let mut wide = VideoDecoder::new(g, &weights).unwrap();
    let msg = wide.decode_f32(&vec![0.5; 4097]).unwrap_err().to_string();
    assert!(
        msg.contains("chunk of 4097 latent frames") && msg.contains("fewer latent frames"),
        "{msg}"
    );
    assert!(wide.at_stream_start());
    // Absurd sizes.
    let wan = tiny_wan();
    let w = WanVaeDecoder::random_weights(&wan, 1, DType::F32).unwrap();
    for (h, ww) in [(0, 3), (2, 100_000)] {
        let msg = WanVaeDecoder::new(&wan, h, ww, &w).unwrap_err().to_string();
        assert!(msg.contains("latent height and width"), "{msg}");
    }
}
