//! The Wan 2.1 VAE encoder on the CPU (docs/wan_vae.md "The encoder") against a naive f64
//! reference written from that page in the reference's own chunked form (the first frame
//! alone, then chunks of 4, with its feature-cache slots); the output shapes (`1 + 4k` frames
//! give `1 + k` latent frames); any chunking gives the bits of encoding at once, and an
//! encoder that loses its caches between chunks is caught; random weights keep activations
//! O(1); checkpoints load from the decoder's file in both namings; bad inputs, missing
//! tensors and files of another kind are named errors. Then a Wan video-to-video stream with
//! the Wan VAE decoder encodes its input with this encoder.

mod common;
#[path = "common/taehv_naive.rs"]
mod taehv_naive;
#[path = "common/wan_vae_enc_naive.rs"]
mod wan_vae_enc_naive;
#[path = "common/wan_vae_naive.rs"]
mod wan_vae_naive;

use std::collections::BTreeMap;
use std::path::PathBuf;

use common::{assert_close, Rng};
use streamdit::checkpoint::{self, DType, Weights};
use streamdit::decoder::{TaehvDecoder, WanVaeDecoder, WanVaeEncoder};
use streamdit::model::taehv::TaehvConfig;
use streamdit::model::wan_vae::WanVaeConfig;
use streamdit::model::wan_vae_encoder::{self, diffusers_name};
use streamdit::{
    write_random_wan_decoder, DecoderKind, Engine, Profile, StreamParams, Tensor, WanDecoder,
};
use wan_vae_enc_naive::NaiveWanVaeEncoder;
use wan_vae_naive::NaiveWanVae;

/// The Wan VAE with base width 8 (encoder stage widths 8, 8, 16, 32, 32).
fn tiny() -> WanVaeConfig {
    WanVaeConfig {
        dim: 8,
        ..WanVaeConfig::wan2_1()
    }
}

/// `t` video frames `[t, h, w, 3]` in `[-1, 1]`, Wan's input range.
fn video(seed: u64, t: usize, h: usize, w: usize) -> Vec<f32> {
    Rng::new(seed).f32s(t * h * w * 3, -1.0, 1.0)
}

fn naive<'a>(cfg: &WanVaeConfig, w: &'a BTreeMap<String, Tensor>) -> NaiveWanVaeEncoder<'a> {
    NaiveWanVaeEncoder {
        vae: NaiveWanVae {
            w,
            dims: [0; 5],
            blocks_per_stage: 0,
            temporal: [false; 3],
            mean: Vec::new(),
            std: Vec::new(),
        },
        dims: wan_vae_encoder::dims(cfg),
        num_res_blocks: cfg.num_res_blocks,
        temporal: wan_vae_encoder::temporal_downsample(cfg),
        z_dim: cfg.z_dim,
        mean: cfg.latent_mean.iter().map(|&v| v as f64).collect(),
        std: cfg.latent_std.iter().map(|&v| v as f64).collect(),
    }
}

/// The engine, fed all frames at once, against the naive reference fed the first frame
/// alone and then chunks of 4. Tolerance `2e-5 + 2e-5 |ref|` per latent value (f32 against
/// f64 through 30 layers; the latents are O(1)).
#[test]
fn encoder_matches_naive_reference() {
    let cfg = tiny();
    let (t, h, w) = (9, 16, 24);
    let weights = WanVaeEncoder::random_weights(&cfg, 41, DType::F32).unwrap();
    let x = video(42, t, h, w);
    let mut enc = WanVaeEncoder::new(&cfg, h, w, &weights).unwrap();
    let got = enc.encode_f32(&x).unwrap();
    let tensors = weights.into_tensors();
    let want = naive(&cfg, &tensors).encode(&x, (t, h, w));
    let rms = (want.iter().map(|v| v * v).sum::<f64>() / want.len() as f64).sqrt();
    println!("Wan VAE encoder (dim 8) reference latents rms {rms:.3}");
    assert!(rms > 0.05, "the reference latents are near zero: {rms}");
    let err = assert_close("Wan VAE encoder (dim 8) vs naive", &got, &want, 2e-5, 2e-5);
    println!("Wan VAE encoder vs naive: max |err| {err:.2e}");
}

#[test]
fn one_plus_4k_frames_give_one_plus_k_latent_frames() {
    let cfg = tiny();
    let (h, w) = (16, 24);
    let weights = WanVaeEncoder::random_weights(&cfg, 43, DType::F32).unwrap();
    let mut enc = WanVaeEncoder::new(&cfg, h, w, &weights).unwrap();
    assert_eq!(enc.frame_size(), (24, 16));
    assert_eq!(enc.frames_per_latent(), 4);
    let latent = 16 * (h / 8) * (w / 8);
    for k in 0..3 {
        enc.reset();
        assert_eq!(enc.frames_for(1 + k), 1 + 4 * k);
        let z = enc.encode_f32(&video(44, 1 + 4 * k, h, w)).unwrap();
        assert_eq!(z.len(), (1 + k) * latent, "1 + 4*{k} frames");
        assert!(z.iter().all(|v| v.is_finite()));
        // Later chunks: 4 frames per latent frame.
        assert_eq!(enc.frames_for(2), 8);
        let z = enc.encode_f32(&video(45, 4 * (k + 1), h, w)).unwrap();
        assert_eq!(z.len(), (k + 1) * latent);
    }
    assert!(enc.encode_f32(&[]).unwrap().is_empty());
}

/// Encodes `x` in chunks of `sizes` frames from a reset, calling `between` after each.
fn chunked(
    enc: &mut WanVaeEncoder,
    x: &[f32],
    frame: usize,
    sizes: &[usize],
    mut between: impl FnMut(&mut WanVaeEncoder),
) -> Vec<f32> {
    enc.reset();
    let (mut out, mut at) = (Vec::new(), 0);
    for &n in sizes {
        out.extend(enc.encode_f32(&x[at * frame..(at + n) * frame]).unwrap());
        at += n;
        between(enc);
    }
    out
}

#[test]
fn chunked_encoding_equals_whole_encoding() {
    let cfg = tiny();
    let (t, h, w) = (13, 16, 16);
    let weights = WanVaeEncoder::random_weights(&cfg, 47, DType::F32).unwrap();
    let mut enc = WanVaeEncoder::new(&cfg, h, w, &weights).unwrap();
    let frame = h * w * 3;
    let x = video(48, t, h, w);
    let whole = enc.encode_f32(&x).unwrap();
    for sizes in [vec![1, 4, 4, 4], vec![5, 8], vec![9, 4], vec![1, 12]] {
        let got = chunked(&mut enc, &x, frame, &sizes, |_| {});
        assert!(
            got == whole,
            "chunks {sizes:?} differ from the whole encode"
        );
        // The planted bug: an encoder that loses its causal context between chunks.
        let lost = chunked(&mut enc, &x, frame, &sizes, |e| e.forget_context());
        let worst = lost
            .iter()
            .zip(&whole)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(
            worst > 1e-3,
            "chunks {sizes:?} without caches still match ({worst:e}): the test cannot see a missing cache"
        );
    }
    // Without a reset the stream goes on: a second first frame is refused (it takes 4k).
    enc.reset();
    let first = enc.encode_f32(&x[..frame]).unwrap();
    assert_eq!(first[..], whole[..first.len()]);
    assert!(enc.encode_f32(&x[..frame]).is_err());
}

/// Every op's output rms within bounds, every value finite: the random weights make a
/// usable encoder (latents O(1), neither vanishing nor exploding).
#[test]
fn random_weights_keep_activations_order_one() {
    let cfg = tiny();
    let (h, w) = (32, 32);
    let weights = WanVaeEncoder::random_weights(&cfg, 49, DType::F16).unwrap();
    let mut enc = WanVaeEncoder::new(&cfg, h, w, &weights).unwrap();
    let kinds: Vec<&str> = enc.graph().steps.iter().map(|s| s.op.kind()).collect();
    let (mut lo, mut hi) = (f64::INFINITY, 0.0f64);
    let z = enc
        .encode_observed(&video(50, 5, h, w), |i, out| {
            assert!(out.iter().all(|v| v.is_finite()), "op {i} ({})", kinds[i]);
            let rms =
                (out.iter().map(|&v| f64::from(v).powi(2)).sum::<f64>() / out.len() as f64).sqrt();
            lo = lo.min(rms);
            hi = hi.max(rms);
        })
        .unwrap();
    println!("Wan VAE encoder op output rms in [{lo:.3}, {hi:.3}]");
    assert!(lo > 0.02 && hi < 50.0, "rms range [{lo}, {hi}]");
    assert_eq!(z.len(), 2 * 16 * 4 * 4);
}

fn temp_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("streamdit-wan-vae-enc-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn write(path: &std::path::Path, t: &BTreeMap<String, Tensor>) {
    let refs: Vec<(&str, &Tensor)> = t.iter().map(|(n, t)| (n.as_str(), t)).collect();
    checkpoint::write_tensors(path, &refs, DType::F32).unwrap();
}

#[test]
fn checkpoints_load_from_the_decoders_file_and_bad_ones_are_named() {
    let dir = temp_dir();
    let cfg = tiny();
    // One file with both halves, as Wan2.1_VAE.pth holds them; then diffusers' names.
    let enc = WanVaeEncoder::random_weights(&cfg, 51, DType::F32).unwrap();
    let dec = WanVaeDecoder::random_weights(&cfg, 52, DType::F32).unwrap();
    let mut both: BTreeMap<String, Tensor> = dec.into_tensors();
    both.extend(enc.iter().map(|(n, t)| (n.to_string(), t.clone())));
    let original = dir.join("wan_2.1_vae.safetensors");
    write(&original, &both);
    let decoder_names: BTreeMap<String, Tensor> =
        WanVaeDecoder::random_weights(&cfg, 52, DType::F32)
            .unwrap()
            .iter()
            .map(|(n, t)| {
                (
                    streamdit::model::wan_vae::diffusers_name(&cfg, n),
                    t.clone(),
                )
            })
            .collect();
    let mut diff = decoder_names;
    diff.extend(enc.iter().map(|(n, t)| (diffusers_name(n), t.clone())));
    let diffusers = dir.join("diffusion_pytorch_model.safetensors");
    write(&diffusers, &diff);
    let a = WanVaeEncoder::load_weights(&original, &cfg).unwrap();
    let b = WanVaeEncoder::load_weights(&diffusers, &cfg).unwrap();
    assert!(a.iter().eq(enc.iter()), "original names round trip");
    assert!(b.iter().eq(enc.iter()), "diffusers names round trip");
    // The decoder still reads its own half of the same file.
    assert!(WanVaeDecoder::load_weights(&original, &cfg).is_ok());
    // The file `weights init` writes for the Wan VAE holds both halves, in either naming.
    for diffusers in [false, true] {
        let init = dir.join(format!("init-{diffusers}.safetensors"));
        WanVaeDecoder::write_random(&init, &cfg, 51, DType::F32, diffusers).unwrap();
        let got = WanVaeEncoder::load_weights(&init, &cfg).unwrap();
        assert!(
            got.iter().eq(enc.iter()),
            "weights init file, diffusers {diffusers}"
        );
        assert!(WanVaeDecoder::load_weights(&init, &cfg).is_ok());
    }

    let err = |e: streamdit::Error| e.to_string();
    // A TAEHV file is named by the tensor that shows its kind.
    let taehv = TaehvConfig::taew2_1();
    let taehv_file = dir.join("taew2_1.safetensors");
    TaehvDecoder::write_random(&taehv_file, &taehv, 5, DType::F16).unwrap();
    let msg = err(WanVaeEncoder::load_weights(&taehv_file, &cfg).unwrap_err());
    assert!(
        msg.contains("not a Wan VAE") && msg.contains("`decoder.1.weight`"),
        "{msg}"
    );
    // A decoder-only file: the first missing encoder tensor is named.
    let dec_only = dir.join("decoder_only.safetensors");
    write(
        &dec_only,
        &WanVaeDecoder::random_weights(&cfg, 52, DType::F32)
            .unwrap()
            .into_tensors(),
    );
    let msg = err(WanVaeEncoder::load_weights(&dec_only, &cfg).unwrap_err());
    assert!(msg.contains("encoder.conv1.weight"), "{msg}");
    // A mis-shaped and a missing tensor in memory.
    let mut t = enc.into_tensors();
    t.insert(
        "encoder.downsamples.5.time_conv.weight".into(),
        Tensor::zeros(vec![16, 16, 1, 1, 1]),
    );
    let msg =
        err(WanVaeEncoder::new(&cfg, 8, 8, &Weights::from_tensors("mem", t.clone())).unwrap_err());
    assert!(
        msg.contains("encoder.downsamples.5.time_conv.weight") && msg.contains("[16, 16, 3, 1, 1]"),
        "{msg}"
    );
    t.remove("encoder.downsamples.5.time_conv.weight");
    let msg = err(WanVaeEncoder::new(&cfg, 8, 8, &Weights::from_tensors("mem", t)).unwrap_err());
    assert!(
        msg.contains("encoder.downsamples.5.time_conv.weight"),
        "{msg}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_inputs_and_sizes_are_named() {
    let cfg = tiny();
    let weights = WanVaeEncoder::random_weights(&cfg, 53, DType::F32).unwrap();
    for (h, w) in [(12, 16), (16, 0), (0, 8)] {
        let msg = WanVaeEncoder::new(&cfg, h, w, &weights)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("Wan VAE encoder"), "{h}x{w}: {msg}");
    }
    let (h, w) = (8, 16);
    let frame = h * w * 3;
    let mut enc = WanVaeEncoder::new(&cfg, h, w, &weights).unwrap();
    // The first chunk takes 1 + 4k frames: 4 are refused, so is a partial frame.
    let msg = enc.encode_f32(&video(54, 4, h, w)).unwrap_err().to_string();
    assert!(msg.contains("1 + 4k video frames"), "{msg}");
    let msg = enc
        .encode_f32(&vec![0.0; frame + 5])
        .unwrap_err()
        .to_string();
    assert!(msg.contains("Wan VAE encoder input"), "{msg}");
    let mut x = video(55, 5, h, w);
    x[7] = f32::NAN;
    let msg = enc.encode_f32(&x).unwrap_err().to_string();
    assert!(msg.contains("element 7") && msg.contains("NaN"), "{msg}");
    // After the first chunk, 4k frames: 5 are refused.
    enc.encode_f32(&video(56, 1, h, w)).unwrap();
    let msg = enc.encode_f32(&video(57, 5, h, w)).unwrap_err().to_string();
    assert!(msg.contains("4k video frames"), "{msg}");
    assert!(enc.encode_rgb(&vec![128u8; 4 * frame]).is_ok());
}

// --- Wan video-to-video with the Wan VAE decoder: its encoder is this one. ---

use common::wan_tiny::SEED;
const SIDE: usize = 64;
const FRAME: usize = SIDE * SIDE * 3;

use common::wan_tiny::{engine as wan_engine, sdedit_reference, text};

fn vae_params() -> StreamParams {
    StreamParams {
        text: Some(text()),
        seed: Some(5),
        decoder: DecoderKind::WanVae,
        ..Default::default()
    }
}

fn rgb(frames: usize) -> Vec<u8> {
    let mut rng = Rng::new(11);
    (0..frames * FRAME).map(|_| rng.below(256) as u8).collect()
}

/// `n` chunks of a video-to-video stream with `strength`, pushing what each call needs.
fn v2v(e: &Engine, strength: f32, rgb: &[u8], n: usize) -> Vec<Vec<f32>> {
    let mut s = e.video_stream(vae_params(), strength).unwrap();
    let (mut at, mut out) = (0, Vec::new());
    while out.len() < n {
        let need = s.input_frames_needed();
        if need > 0 {
            s.push_video_frames(&rgb[at * FRAME..(at + need) * FRAME])
                .unwrap();
            at += need;
            assert_eq!(s.input_frames_needed(), 0);
        }
        if s.step().unwrap() {
            out.push(s.chunk_latents().to_vec());
        }
    }
    out
}

/// docs/wan.md's SDEdit rule driven through a backend of its own, the input encoded by the
/// Wan VAE encoder: chunk 0 from frames `0 .. 4c - 3`, chunk `k` from the next `4c`.
fn reference(strength: f64, rgb: &[u8], chunks: usize) -> Vec<Vec<f32>> {
    let p = Profile::builtin("wan-tiny").unwrap();
    let w = p.wan().unwrap();
    let cfg = w.wan_vae_config();
    let ew = WanVaeEncoder::random_weights(&cfg, SEED, DType::F32).unwrap();
    let mut enc = WanVaeEncoder::new(&cfg, SIDE, SIDE, &ew).unwrap();
    let c = w.chunk_frames;
    sdedit_reference(strength, chunks, |k| {
        let (from, to) = ((4 * c * k).saturating_sub(3), 4 * c * (k + 1) - 3);
        enc.encode_rgb(&rgb[from * FRAME..to * FRAME]).unwrap()
    })
    .0
}

#[test]
fn wan_v2v_with_the_vae_decoder_encodes_with_the_vae_encoder() {
    let e = wan_engine();
    // Strength 1 is text-to-video (with the same decoder) bit for bit.
    let mut t2v = e.stream(vae_params()).unwrap();
    let want: Vec<Vec<f32>> = (0..2)
        .map(|_| t2v.next_latents().unwrap().to_vec())
        .collect();
    let video = rgb(13);
    assert!(
        v2v(&e, 1.0, &video, 2) == want,
        "strength 1 differs from text-to-video"
    );
    // The first chunk of 2 latent frames needs 1 + 4 frames; the first frame is encoded
    // alone, then groups of 4 (3 wait for a fourth).
    let mut s = e.video_stream(vae_params(), 0.7).unwrap();
    assert!(s.is_video_to_video());
    assert_eq!(s.input_frames_needed(), 5);
    s.push_video_frames(&video[..4 * FRAME]).unwrap();
    assert_eq!(s.input_frames_needed(), 1);
    let err = s.step().unwrap_err().to_string();
    assert!(err.contains("needs input latent frames"), "{err}");
    s.push_video_frames(&video[4 * FRAME..5 * FRAME]).unwrap();
    assert_eq!(s.input_frames_needed(), 0);
    let first = s.next_latents().unwrap().to_vec();
    // The stream decodes with the Wan VAE decoder: 4c - 3 frames for the first chunk, so
    // output frame f is the edit of input frame f.
    let mut frames = Vec::new();
    assert_eq!(s.decode_chunk(&mut frames).unwrap(), 5);
    assert_eq!(s.input_frames_needed(), 8);
    s.push_video_frames(&video[5 * FRAME..]).unwrap();
    let second = s.next_latents().unwrap().to_vec();
    assert_eq!(s.decode_chunk(&mut frames).unwrap(), 8);
    assert_eq!(frames.len(), 13 * FRAME);
    // The SDEdit rule with this encoder's latents, and different from text-to-video.
    let reference = reference(0.7, &video, 2);
    assert!(
        first == reference[0] && second == reference[1],
        "the stream differs from the rule"
    );
    assert!(first != want[0]);
}

/// The end of an input encoded by the Wan VAE encoder: its chunks of input are `4c - 3`
/// frames, then `4c` (5, 13, 21, .. frames end chunks with `c = 2`), which the end's note
/// counts; the stream writes exactly as many frames as were pushed.
#[test]
fn a_wan_vae_input_ends_mid_chunk_counted_from_its_short_first_chunk() {
    let e = wan_engine();
    let video = rgb(13);
    for (n, mid) in [
        (5, None),
        (13, None),
        (3, Some("mid-chunk: 3 of a 5-frame chunk of input")),
        (8, Some("mid-chunk: 3 of a 8-frame chunk of input")),
    ] {
        let mut s = e.video_stream(vae_params(), 0.7).unwrap();
        s.push_video_frames(&video[..n * FRAME]).unwrap();
        let end = s.end_input().unwrap();
        assert_eq!(end.input_startup_frames, 3);
        assert_eq!(end.mid_chunk(), mid.is_some(), "{n}: {end}");
        let note = end.to_string();
        assert!(mid.is_none_or(|m| note.contains(m)), "{n}: {note}");
        let mut out = Vec::new();
        while s.next_frames(&mut out).unwrap() > 0 {}
        assert!(s.finished());
        assert_eq!(out.len(), n * FRAME, "{n}: {note}");
    }
}

/// The stream's encoder reads `encoder.*` and `conv1.*` from the decoder's file (the one
/// `weights init` writes holds both halves); a file of another kind is a named error.
#[test]
fn wan_v2v_reads_the_encoder_from_the_decoders_file() {
    let e = wan_engine();
    let dir = std::env::temp_dir().join(format!("streamdit-wan-vae-v2v-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("wan_vae.safetensors");
    // The same seed and dtype as the engine's random weights: the same encoder.
    write_random_wan_decoder(e.profile(), WanDecoder::WanVae, SEED, DType::F32, &file).unwrap();
    let video = rgb(5);
    let first = |params: StreamParams| {
        let mut s = e.video_stream(params, 0.7).unwrap();
        s.push_video_frames(&video).unwrap();
        s.next_latents().unwrap().to_vec()
    };
    let from_file = first(StreamParams {
        decoder_weights: Some(file),
        ..vae_params()
    });
    assert!(
        from_file == first(vae_params()),
        "file and random encoders differ"
    );
    let taehv = dir.join("taew2_1.safetensors");
    write_random_wan_decoder(e.profile(), WanDecoder::Taehv, SEED, DType::F32, &taehv).unwrap();
    let params = StreamParams {
        decoder_weights: Some(taehv),
        ..vae_params()
    };
    let Err(err) = e.video_stream(params, 0.7) else {
        panic!("a TAEHV file accepted as the Wan VAE encoder's");
    };
    let err = err.to_string();
    assert!(err.contains("not a Wan VAE"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}
