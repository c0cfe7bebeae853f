//! The TAE decoder on the CPU (docs/tae.md) against an independent naive f64 implementation
//! written here from the spec: whole-sequence decoding with replicate padding done the
//! obvious way, channels-first layout, direct loops. Then: chunked decoding equals decoding
//! at once, random weights give O(1) activations and a spread of colours with every branch
//! visible, and missing or mis-shaped tensors are named.

mod common;

use std::collections::BTreeMap;

use common::tae_naive::{tiny_dec, write_checkpoint, Naive, A, C};
use common::{assert_close, Rng};
use streamdit::checkpoint::{DType, Weights};
use streamdit::decoder::{Decoder, TaeDecoder};
use streamdit::model::profile::DecoderConfig;
use streamdit::model::tae::TaeGraph;
use streamdit::Tensor;

impl Naive<'_> {
    fn ups(&self, x: &A, name: &str) -> A {
        let (h, w) = (2 * x.h, 2 * x.w);
        let mut up = A {
            h,
            w,
            v: vec![0.0; x.t * x.c * h * w],
            ..*x
        };
        for t in 0..x.t {
            for c in 0..x.c {
                for y in 0..h {
                    for xx in 0..w {
                        up.v[((t * x.c + c) * h + y) * w + xx] = x.at(t, c, y / 2, xx / 2);
                    }
                }
            }
        }
        self.conv2d(&up, name)
    }

    fn upt(&self, x: &A, name: &str) -> A {
        let frame = x.c * x.h * x.w;
        let mut v = Vec::with_capacity(2 * x.v.len());
        for f in x.v.chunks(frame) {
            v.extend_from_slice(f);
            v.extend_from_slice(f);
        }
        let rep = A {
            t: 2 * x.t,
            v,
            ..*x
        };
        self.conv_t(&rep, name)
    }

    /// docs/tae.md's decoder over the whole sequence `z [T, C, h, w]`; returns `[4T, 8h, 8w, 3]`.
    fn decode(&self, z: &[f32], t: usize, h: usize, w: usize, widths: [usize; 4]) -> Vec<f64> {
        let [c0, c1, c2, c3] = widths;
        let x = A {
            t,
            c: C,
            h,
            w,
            v: z.iter().map(|&v| v as f64).collect(),
        };
        let x = self.conv2d(&x, "conv_in");
        let mut x = self.conv_t(&x, "conv_in_t");
        x = self.res(&x, "mid.res.0", c0);
        x = self.attn(&x, "mid.attn");
        x = self.res(&x, "mid.res.1", c0);
        for j in 0..3 {
            x = self.res(&x, &format!("up.0.res.{j}"), c1);
        }
        x = self.ups(&x, "up.0.ups");
        x = self.upt(&x, "up.0.upt");
        for j in 0..3 {
            x = self.res(&x, &format!("up.1.res.{j}"), c1);
        }
        x = self.ups(&x, "up.1.ups");
        x = self.upt(&x, "up.1.upt");
        for j in 0..3 {
            x = self.res(&x, &format!("up.2.res.{j}"), c2);
        }
        x = self.ups(&x, "up.2.ups");
        for j in 0..3 {
            x = self.res(&x, &format!("up.3.res.{j}"), c3);
        }
        x = self.gn(&x, "norm_out", true);
        x = self.conv2d(&x, "conv_out");
        // [T][3][H][W] -> [T][H][W][3]
        let mut out = vec![0.0; x.v.len()];
        for tt in 0..x.t {
            for c in 0..3 {
                for q in 0..x.h * x.w {
                    out[(tt * x.h * x.w + q) * 3 + c] = x.v[(tt * 3 + c) * x.h * x.w + q];
                }
            }
        }
        out
    }
}

fn random_weights(seed: u64) -> Weights {
    Weights::random_decoder(&tiny_dec(), C, seed, DType::F32).unwrap()
}

fn decoder(weights: &Weights, h: usize, w: usize) -> TaeDecoder {
    TaeDecoder::new(TaeGraph::new(&tiny_dec(), C, h, w).unwrap(), weights).unwrap()
}

/// Latents like the DiT's output: roughly unit normal (uniform with variance 1).
fn latents(rng: &mut Rng, frames: usize, h: usize, w: usize) -> Vec<f32> {
    rng.f32s(frames * C * h * w, -1.732, 1.732)
}

#[test]
fn matches_naive_reference() {
    let (t, h, w) = (3, 4, 6);
    let weights = random_weights(17);
    let z = latents(&mut Rng::new(5), t, h, w);
    let mut dec = decoder(&weights, h, w);
    let got = dec.decode_f32(&z).unwrap();
    let tensors = weights.into_tensors();
    let naive = Naive {
        w: &tensors,
        groups: 8,
        head_dim: 64,
        prefix: "decoder",
    };
    let want = naive.decode(&z, t, h, w, [64, 64, 32, 16]);
    assert_eq!(got.len(), 4 * t * 8 * h * 8 * w * 3);
    let spread = want.iter().map(|v| v * v).sum::<f64>() / want.len() as f64;
    println!("reference output rms {:.3}", spread.sqrt());
    assert_close("tiny TAE vs naive", &got, &want, 1e-4, 1e-4);
}

#[test]
fn chunked_equals_whole_sequence() {
    let (t, h, w) = (5, 4, 6);
    let weights = random_weights(3);
    let z = latents(&mut Rng::new(9), t, h, w);
    let frame = C * h * w;
    let mut dec = decoder(&weights, h, w);
    let whole = dec.decode_f32(&z).unwrap();
    let want: Vec<f64> = whole.iter().map(|&v| v as f64).collect();
    for sizes in [vec![2, 2, 1], vec![1; 5], vec![1, 3, 1]] {
        dec.reset();
        let mut got = Vec::new();
        let mut at = 0;
        for n in &sizes {
            got.extend(dec.decode_f32(&z[at * frame..(at + n) * frame]).unwrap());
            at += n;
        }
        assert_close(
            &format!("chunks {sizes:?} vs whole"),
            &got,
            &want,
            1e-5,
            1e-5,
        );
    }
    // Without a reset the caches carry on: the same latents decode differently.
    let again = dec.decode_f32(&z[..frame]).unwrap();
    dec.reset();
    let fresh = dec.decode_f32(&z[..frame]).unwrap();
    assert_eq!(fresh[..], whole[..fresh.len()]);
    assert_ne!(again, fresh, "the caches must carry context between chunks");
}

/// Random weights on random latents: no saturation, no flat grey, and each residual and
/// attention branch changes the output (ablating it moves the RGB output by a visible amount).
#[test]
fn random_weights_spread_colours_and_use_every_branch() {
    let (t, h, w) = (2, 8, 8);
    let weights = random_weights(1);
    let z = latents(&mut Rng::new(2), t, h, w);
    let mut dec = decoder(&weights, h, w);
    let out = dec.decode_f32(&z).unwrap();
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
    let deciles: Vec<usize> = (0..10)
        .map(|d| hist[d * 256 / 10..(d + 1) * 256 / 10].iter().sum())
        .collect();
    println!(
        "RGB bytes: mean {mean:.1}, std {std:.1}, clipped {:.2}%, per tenth of the range {deciles:?}",
        clipped * 100.0
    );
    assert!(
        clipped < 0.05,
        "saturated: {:.1}% at 0 or 255",
        clipped * 100.0
    );
    assert!(std > 25.0, "flat: byte std {std:.1}");
    assert!((64.0..192.0).contains(&mean), "mean byte {mean:.1}");
    assert!(
        deciles.iter().all(|&c| c as f64 > 0.001 * n),
        "a tenth of the range is nearly empty: {deciles:?}"
    );
    assert!(out.iter().all(|v| v.is_finite()));

    // Ablations: zero the last layer of a branch, measure the relative change of the output.
    let base = weights.into_tensors();
    let norm = out.iter().map(|v| (*v as f64).powi(2)).sum::<f64>().sqrt();
    let mut branches = vec!["mid.attn.out".to_string()];
    for (stage, blocks) in [
        ("mid", 2),
        ("up.0", 3),
        ("up.1", 3),
        ("up.2", 3),
        ("up.3", 3),
    ] {
        for j in 0..blocks {
            branches.push(format!("{stage}.res.{j}.conv2_t"));
        }
    }
    let mut smallest = (f64::INFINITY, String::new());
    for b in &branches {
        let mut t = base.clone();
        for suffix in ["weight", "bias"] {
            let x = t.get_mut(&format!("decoder.{b}.{suffix}")).unwrap();
            x.data.iter_mut().for_each(|v| *v = 0.0);
        }
        let ablated = Weights::from_tensors("ablated", t);
        let got = decoder(&ablated, h, w).decode_f32(&z).unwrap();
        let diff = got
            .iter()
            .zip(&out)
            .map(|(a, b)| ((a - b) as f64).powi(2))
            .sum::<f64>()
            .sqrt()
            / norm;
        if diff < smallest.0 {
            smallest = (diff, b.clone());
        }
    }
    println!(
        "smallest relative change from ablating a branch: {:.3} ({})",
        smallest.0, smallest.1
    );
    assert!(
        smallest.0 > 0.05,
        "branch {} barely changes the output ({:.4})",
        smallest.1,
        smallest.0
    );
}

#[test]
fn missing_or_misshaped_tensors_are_named() {
    let graph = || TaeGraph::new(&tiny_dec(), C, 4, 4).unwrap();
    // A checkpoint without decoder tensors.
    let dit_only = Weights::from_tensors("dit.safetensors", BTreeMap::new());
    let msg = TaeDecoder::new(graph(), &dit_only).unwrap_err().to_string();
    assert!(
        msg.contains("decoder.conv_in.weight") && msg.contains("dit.safetensors"),
        "{msg}"
    );
    // A wrong shape, from a file.
    let mut t = random_weights(4).into_tensors();
    t.insert(
        "decoder.up.1.upt.weight".into(),
        Tensor::zeros(vec![64, 64, 2]),
    );
    let path = write_checkpoint("decoder", &t);
    let msg = Weights::load_decoder(&path, &tiny_dec(), C)
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("decoder.up.1.upt.weight")
            && msg.contains("[64, 64, 3]")
            && msg.contains("[64, 64, 2]"),
        "{msg}"
    );
    let in_memory = Weights::from_tensors("mem", t.clone());
    let msg = TaeDecoder::new(graph(), &in_memory)
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("decoder.up.1.upt.weight") && msg.contains("[64, 64, 2]"),
        "{msg}"
    );
    // A missing one, from a file.
    t.remove("decoder.mid.attn.k.bias");
    write_checkpoint("decoder", &t);
    let msg = Weights::load_decoder(&path, &tiny_dec(), C)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("decoder.mid.attn.k.bias"), "{msg}");
    std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
    // Latents of the wrong size.
    let mut dec = TaeDecoder::new(graph(), &random_weights(4)).unwrap();
    let err = dec.decode_f32(&[0.0; 7]).unwrap_err().to_string();
    assert!(err.contains("C*H*W = 128"), "{err}");
    assert!(dec.decode_f32(&[]).unwrap().is_empty());
}

/// A stream decodes its chunks with one TAE decoder whose caches carry over: its frames are
/// the decoder's frames of the chunk latents in order, and the preview stays available.
#[test]
fn streams_decode_chunks_with_carried_caches() {
    use streamdit::WeightsSource;
    use streamdit::{BackendKind, DecoderKind, Engine, EngineParams, Profile, StreamParams};
    let engine = Engine::new(EngineParams {
        profile: Profile::builtin("tiny").unwrap(),
        weights: WeightsSource::Random {
            seed: 2,
            dtype: DType::F16,
        },
        backend: BackendKind::Cpu,
    })
    .unwrap();
    let params = StreamParams {
        prompt: "a kite".into(),
        ..Default::default()
    };
    let mut stream = engine.stream(params.clone()).unwrap();
    let mut dec = engine.tae_decoder().unwrap();
    let (mut got, mut want) = (Vec::new(), Vec::new());
    for _ in 0..2 {
        assert_eq!(stream.next_frames(&mut got).unwrap(), 8);
        dec.decode(stream.chunk_latents(), &mut want).unwrap();
    }
    assert!(got == want, "stream frames differ from chunked decoding");
    let mut preview = engine
        .stream(StreamParams {
            decoder: DecoderKind::Preview,
            ..params
        })
        .unwrap();
    let mut frames = Vec::new();
    preview.next_frames(&mut frames).unwrap();
    let mut want = Vec::new();
    engine
        .preview_decoder()
        .unwrap()
        .decode(preview.chunk_latents(), &mut want)
        .unwrap();
    assert!(frames == want);
}

/// Random weights keep every op's output O(1) (f16-safe, neither vanishing nor growing) for
/// `tiny`'s decoder and for `streamdit-4b`'s widths (on a small latent, to stay fast).
#[test]
fn random_weights_keep_activations_order_one() {
    for (widths, groups, h, w, seed) in [
        (vec![64, 64, 32, 16], 8, 8, 8, 6u64),
        (vec![512, 512, 256, 128], 32, 2, 2, 7),
    ] {
        let dec = DecoderConfig { widths, groups };
        let weights = Weights::random_decoder(&dec, C, seed, DType::F16).unwrap();
        let graph = TaeGraph::new(&dec, C, h, w).unwrap();
        let kinds: Vec<String> = graph
            .steps
            .iter()
            .map(|s| streamdit::cost::tae_op_kind(&s.op).to_string())
            .collect();
        let mut decoder = TaeDecoder::new(graph, &weights).unwrap();
        let z = latents(&mut Rng::new(seed), 2, h, w);
        let (mut lo, mut hi, mut max_abs) = ((f64::INFINITY, 0), (0.0f64, 0), 0.0f32);
        decoder
            .decode_observed(&z, |i, out| {
                let rms = (out.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / out.len() as f64)
                    .sqrt();
                if rms < lo.0 {
                    lo = (rms, i);
                }
                if rms > hi.0 {
                    hi = (rms, i);
                }
                max_abs = out.iter().fold(max_abs, |m, v| m.max(v.abs()));
                assert!(out.iter().all(|v| v.is_finite()), "op {i} is not finite");
            })
            .unwrap();
        println!(
            "widths {:?}: op output rms from {:.3} (op {} {}) to {:.3} (op {} {}), max |x| {max_abs:.1}",
            dec.widths, lo.0, lo.1, kinds[lo.1], hi.0, hi.1, kinds[hi.1]
        );
        assert!(lo.0 > 0.1 && hi.0 < 10.0 && max_abs < 200.0);
    }
}
