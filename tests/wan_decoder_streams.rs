//! The Wan-family decoders as a user meets them (issue 17's user-facing half): chosen per
//! stream (the profile's `wan.decoder`, `StreamParams::decoder`, a checkpoint per stream),
//! streamed chunk by chunk with their causal caches so a stream's frames are the bytes of
//! decoding all its latents at once, random weights that equal the file `weights init`
//! writes, and the released `.pth` files (`taew2_1.pth`, `Wan2.1_VAE.pth`, written here the
//! way `torch.save` writes them) read directly, with wrong kinds named.

mod common;
#[path = "common/torch_zip.rs"]
mod torch_zip;

use std::path::PathBuf;

use streamdit::checkpoint::Weights;
use streamdit::decoder::{TaehvDecoder, WanVaeDecoder};
use streamdit::{
    wan_decoder, wan_decoder_weights, write_random_wan_decoder, BackendKind, DType, Decoder,
    DecoderKind, Engine, EngineParams, Profile, StreamParams, WanDecoder, WeightsSource,
};
use torch_zip::{torch_save, Storage};

fn temp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("streamdit-wan-dec-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

fn engine() -> Engine {
    Engine::new(EngineParams {
        profile: Profile::builtin("wan-tiny").unwrap(),
        weights: WeightsSource::Random {
            seed: 5,
            dtype: DType::F16,
        },
        backend: BackendKind::Cpu,
    })
    .unwrap()
}

/// `chunks` chunks of a stream with `decoder`: every chunk's latents and the frames of each.
fn stream(
    e: &Engine,
    decoder: DecoderKind,
    weights: Option<PathBuf>,
    chunks: usize,
) -> (Vec<f32>, Vec<Vec<u8>>) {
    let mut s = e
        .stream(StreamParams {
            prompt: "a lighthouse at dusk".into(),
            seed: Some(9),
            decoder,
            decoder_weights: weights,
            ..StreamParams::default()
        })
        .unwrap();
    assert_eq!(s.frame_size(), (64, 64));
    let (mut latents, mut frames) = (Vec::new(), Vec::new());
    for _ in 0..chunks {
        let mut out = Vec::new();
        s.next_frames(&mut out).unwrap();
        latents.extend_from_slice(s.chunk_latents());
        frames.push(out);
    }
    (latents, frames)
}

/// The stream's frames, chunk by chunk, are the bytes of decoding all its latents in one
/// call; the first chunk of 2 latent frames gives 5 video frames, the next ones 8.
fn check_streamed_equals_whole(kind: WanDecoder, asked: DecoderKind) {
    let e = engine();
    let (latents, frames) = stream(&e, asked, None, 3);
    let frame = 64 * 64 * 3;
    let counts: Vec<usize> = frames.iter().map(|f| f.len() / frame).collect();
    assert_eq!(
        counts,
        [5, 8, 8],
        "{kind:?}: 4T - 3 frames, then 4 per latent frame"
    );
    let w = wan_decoder_weights(e.profile(), kind, None, 5, DType::F16).unwrap();
    let mut whole = wan_decoder(e.profile(), kind, &w).unwrap();
    let mut want = Vec::new();
    whole.decode(&latents, &mut want).unwrap();
    let got: Vec<u8> = frames.concat();
    assert_eq!(got.len(), want.len());
    assert!(
        got == want,
        "{kind:?}: streamed frames differ from the whole decode"
    );
    // Not a constant picture: the random decoder spreads colours.
    let (lo, hi) = got
        .iter()
        .fold((255u8, 0u8), |(a, b), &v| (a.min(v), b.max(v)));
    assert!(hi - lo > 64, "{kind:?}: bytes span only {lo}..{hi}");
}

#[test]
fn the_profile_decoder_is_taehv_and_streams_seamlessly() {
    check_streamed_equals_whole(WanDecoder::Taehv, DecoderKind::Tae);
}

#[test]
fn the_wan_vae_streams_seamlessly() {
    check_streamed_equals_whole(WanDecoder::WanVae, DecoderKind::WanVae);
}

/// A decoder that lost its caches between chunks differs from the stream: the comparison
/// above can fail.
#[test]
fn a_decoder_without_its_caches_is_caught() {
    let e = engine();
    let (latents, frames) = stream(&e, DecoderKind::Taehv, None, 2);
    let p = e.profile();
    let w = wan_decoder_weights(p, WanDecoder::Taehv, None, 5, DType::F16).unwrap();
    let cfg = p.wan().unwrap().taehv_config();
    let mut d = TaehvDecoder::new(&cfg, 8, 8, &w).unwrap();
    let half = latents.len() / 2;
    let mut got = Vec::new();
    Decoder::decode(&mut *d, &latents[..half], &mut got).unwrap();
    d.forget_context();
    Decoder::decode(&mut *d, &latents[half..], &mut got).unwrap();
    assert!(
        got != frames.concat(),
        "a decoder without its caches matched the stream"
    );
}

/// Random decoder weights written by `weights init --decoder` (the released names) decode
/// exactly as the stream's own random weights; the preview stays available.
#[test]
fn written_random_weights_equal_the_streams_own() {
    let e = engine();
    let (_, want) = stream(&e, DecoderKind::Taehv, None, 2);
    let path = temp("taehv.safetensors");
    write_random_wan_decoder(e.profile(), WanDecoder::Taehv, 5, DType::F16, &path).unwrap();
    let (_, got) = stream(&e, DecoderKind::Taehv, Some(path.clone()), 2);
    assert!(got == want, "the written file decodes differently");
    // Another seed's file gives other frames: the file is really read.
    let path6 = temp("taehv-6.safetensors");
    write_random_wan_decoder(e.profile(), WanDecoder::Taehv, 6, DType::F16, &path6).unwrap();
    let (_, other) = stream(&e, DecoderKind::Taehv, Some(path6), 2);
    assert!(other != want, "seed 6's file decodes as seed 5's weights");
    // The same path rewritten with seed 6's weights between two streams of one engine is
    // read again, not served from the engine's cache of decoder weights. The modification
    // time is set apart explicitly: two writes can land in one tick of the file system clock.
    write_random_wan_decoder(e.profile(), WanDecoder::Taehv, 6, DType::F16, &path).unwrap();
    let later = std::time::SystemTime::now() + std::time::Duration::from_secs(5);
    std::fs::File::options()
        .write(true)
        .open(&path)
        .unwrap()
        .set_modified(later)
        .unwrap();
    let (_, rewritten) = stream(&e, DecoderKind::Taehv, Some(path.clone()), 2);
    assert!(
        rewritten == other,
        "a rewritten decoder checkpoint was served from the cache"
    );
    let (_, preview) = stream(&e, DecoderKind::Preview, None, 1);
    assert_eq!(
        preview[0].len(),
        8 * 64 * 64 * 3,
        "the preview gives 4 frames per latent"
    );
}

fn tensors_of(w: &Weights) -> Vec<(String, Vec<usize>, Vec<f32>)> {
    w.iter()
        .map(|(n, t)| (n.to_string(), t.shape.clone(), t.data.clone()))
        .collect()
}

/// `taew2_1.pth` and `Wan2.1_VAE.pth` in the `torch.save` layout (with encoder tensors the
/// decoder ignores) load directly and give the tensors they hold; each is refused, naming
/// the tensor that shows its kind, by the other decoder; a `.pth` from `torch.save` of the
/// legacy format is named.
#[test]
fn released_pth_files_load_directly_and_wrong_kinds_are_named() {
    let p = Profile::builtin("wan-tiny").unwrap();
    let w = p.wan().unwrap();
    let taehv = TaehvDecoder::random_weights(&w.taehv_config(), 3, DType::F16).unwrap();
    let mut t = tensors_of(&taehv);
    t.push(("encoder.0.weight".into(), vec![2, 3], vec![0.5; 6]));
    let taehv_pth = temp("taew2_1.pth");
    std::fs::write(&taehv_pth, torch_save(&t, Storage::F16)).unwrap();
    let got = TaehvDecoder::load_weights(&taehv_pth, &w.taehv_config()).unwrap();
    assert_eq!(got.len(), taehv.len());
    for (name, tensor) in taehv.iter() {
        assert_eq!(got.get(name).unwrap().data, tensor.data, "{name}");
    }

    let vae = WanVaeDecoder::random_weights(&w.wan_vae_config(), 4, DType::F32).unwrap();
    let mut t = tensors_of(&vae);
    t.push(("encoder.conv1.weight".into(), vec![4], vec![1.0; 4]));
    let vae_pth = temp("Wan2.1_VAE.pth");
    std::fs::write(&vae_pth, torch_save(&t, Storage::F32)).unwrap();
    let got = WanVaeDecoder::load_weights(&vae_pth, &w.wan_vae_config()).unwrap();
    for (name, tensor) in vae.iter() {
        assert_eq!(got.get(name).unwrap().data, tensor.data, "{name}");
    }

    // Through a stream: the .pth decodes as the same weights would from memory.
    let e = engine();
    let (latents, frames) = stream(&e, DecoderKind::WanVae, Some(vae_pth.clone()), 1);
    let mut d = wan_decoder(e.profile(), WanDecoder::WanVae, &vae).unwrap();
    let mut want = Vec::new();
    d.decode(&latents, &mut want).unwrap();
    assert_eq!(frames[0], want);

    let m = TaehvDecoder::load_weights(&vae_pth, &w.taehv_config())
        .unwrap_err()
        .to_string();
    assert!(
        m.contains("not a TAEHV decoder checkpoint") && m.contains("decoder.conv1.weight"),
        "{m}"
    );
    let m = WanVaeDecoder::load_weights(&taehv_pth, &w.wan_vae_config())
        .unwrap_err()
        .to_string();
    assert!(
        m.contains("not a Wan VAE decoder checkpoint") && m.contains("decoder.1.weight"),
        "{m}"
    );
    let legacy = temp("legacy.pth");
    std::fs::write(&legacy, [0x80, 0x02, 0x8a, 0x0a, 0x6c, 0xfc]).unwrap();
    let m = TaehvDecoder::load_weights(&legacy, &w.taehv_config())
        .unwrap_err()
        .to_string();
    assert!(m.contains("legacy"), "{m}");
    // The wrong kind through a stream is an error of the stream's creation.
    let m = e
        .stream(StreamParams {
            decoder: DecoderKind::Taehv,
            decoder_weights: Some(vae_pth),
            ..StreamParams::default()
        })
        .err()
        .unwrap()
        .to_string();
    assert!(m.contains("not a TAEHV decoder checkpoint"), "{m}");
}

/// Decoders and weights chosen where they cannot apply get named errors.
#[test]
fn misplaced_choices_are_named() {
    let tiny = Engine::new(EngineParams {
        profile: Profile::builtin("tiny").unwrap(),
        weights: WeightsSource::Random {
            seed: 0,
            dtype: DType::F16,
        },
        backend: BackendKind::Cpu,
    })
    .unwrap();
    let m = tiny
        .stream(StreamParams {
            decoder: DecoderKind::Taehv,
            ..StreamParams::default()
        })
        .err()
        .unwrap()
        .to_string();
    assert!(
        m.contains("Wan-family latents") && m.contains("StreamDiT"),
        "{m}"
    );
    let m = tiny
        .stream(StreamParams {
            decoder_weights: Some("taew2_1.pth".into()),
            ..StreamParams::default()
        })
        .err()
        .unwrap()
        .to_string();
    assert!(
        m.contains("taew2_1.pth") && m.contains("TAE decoder"),
        "{m}"
    );
    let e = engine();
    let m = e
        .stream(StreamParams {
            decoder: DecoderKind::Taehv,
            decoder_weights: Some(temp("missing.safetensors")),
            ..StreamParams::default()
        })
        .err()
        .unwrap()
        .to_string();
    assert!(m.contains("missing.safetensors"), "{m}");
    // A profile naming an unknown decoder, or a Wan VAE for more than 16 channels.
    let text = streamdit::BUILTIN_PROFILES
        .iter()
        .find(|(n, _)| *n == "wan-tiny")
        .unwrap()
        .1;
    let bad = text.replacen("decoder = \"taehv\"", "decoder = \"vae\"", 1);
    let m = Profile::from_toml(&bad, "test").unwrap_err().to_string();
    assert!(m.contains("decoder") && m.contains("vae"), "{m}");
    let bad = text.replacen("vae_dim = 8", "vae_dim = 7", 1);
    let m = Profile::from_toml(&bad, "test").unwrap_err().to_string();
    assert!(m.contains("wan.vae_dim") && m.contains("even"), "{m}");
}
