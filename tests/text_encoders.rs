//! Text encoders against an independent f64 reference written here from the formulas (T5:
//! RMS norm without mean, bidirectional relative position buckets, no attention scale,
//! gated tanh-GELU or ReLU; CLIP: pre-norm causal blocks, quick_gelu or erf-GELU), on small
//! random models written as Hugging Face folders and read back through the loading path.
//! Also: tokenizers, folder errors, sharded weights, and the conditioning assembly.

mod common;

use std::path::{Path, PathBuf};

use common::naive::NaiveWeights;
use common::Rng;
use serde_json::Value;
use streamdit::checkpoint::{write_tensors, DType};
use streamdit::model::profile::{RandomEncoderConfig, TextConfig, TextEncoderConfig};
use streamdit::text::clip::ClipEncoder;
use streamdit::text::conditioner::{Adapters, Conditioner};
use streamdit::text::random::random_model;
use streamdit::text::t5::T5Encoder;
use streamdit::text::tokenize::{byte_tokens, PromptTokenizer};
use streamdit::{Error, Tensor};

const ATOL: f64 = 1e-4;
const RTOL: f64 = 1e-4;

/// A fresh folder under the temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!(
            "streamdit-text-{}-{name}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A seed that changes every run (printed, so a failure can be replayed).
fn fresh_seed(what: &str) -> u64 {
    let s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    eprintln!("{what}: input seed {s}");
    s
}

fn spec(
    d_model: usize,
    heads: usize,
    d_kv: Option<usize>,
    act: &str,
    seed: u64,
) -> RandomEncoderConfig {
    RandomEncoderConfig {
        d_model,
        layers: 2,
        heads,
        d_ff: 40,
        d_kv,
        act: Some(act.into()),
        per_layer_bias: false,
        seed,
    }
}

fn write_folder(kind: &str, s: &RandomEncoderConfig, bytes: bool, name: &str) -> TempDir {
    let dir = TempDir::new(name);
    random_model(kind, s, bytes)
        .unwrap()
        .write_folder(&dir.0)
        .unwrap();
    dir
}

fn config(dir: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap()
}

fn num(c: &Value, k: &str) -> usize {
    c[k].as_u64().unwrap_or_else(|| panic!("config field {k}")) as usize
}

/// Random ids below `vocab` and a mask whose last `pads` entries are 0.
fn inputs(rng: &mut Rng, len: usize, vocab: usize, pads: usize) -> (Vec<u32>, Vec<f32>) {
    let ids = (0..len).map(|_| rng.below(vocab) as u32).collect();
    let mask = (0..len)
        .map(|i| if i + pads < len { 1.0 } else { 0.0 })
        .collect();
    (ids, mask)
}

fn check(got: &Tensor, want: &[f64], what: &str) -> f64 {
    check_tol(got, want, what, ATOL, RTOL)
}

fn check_tol(got: &Tensor, want: &[f64], what: &str, atol: f64, rtol: f64) -> f64 {
    assert_eq!(got.data.len(), want.len(), "{what}: length");
    let mut worst = 0.0f64;
    for (i, (&g, &w)) in got.data.iter().zip(want).enumerate() {
        let err = (g as f64 - w).abs();
        let budget = atol + rtol * w.abs();
        assert!(
            err <= budget,
            "{what}: element {i}: got {g}, want {w} (err {err:e} > {budget:e})"
        );
        worst = worst.max(err / budget);
    }
    let scale = want.iter().map(|w| w.abs()).fold(0.0, f64::max);
    assert!(
        scale > 0.1,
        "{what}: the reference output is degenerate (max |ref| {scale})"
    );
    eprintln!(
        "{what}: worst error {:.3} of the budget (max |ref| {scale:.3})",
        worst
    );
    worst
}

// ---------------------------------------------------------------- the f64 reference

fn rows(w: &NaiveWeights, name: &str) -> Vec<f64> {
    w.tensors
        .get(name)
        .unwrap_or_else(|| panic!("reference: no tensor {name}"))
        .1
        .clone()
}

fn rms(x: &[f64], g: &[f64], eps: f64) -> Vec<f64> {
    let d = g.len();
    x.chunks(d)
        .flat_map(|r| {
            let ms = r.iter().map(|a| a * a).sum::<f64>() / d as f64;
            let inv = 1.0 / (ms + eps).sqrt();
            r.iter()
                .zip(g)
                .map(move |(a, g)| a * inv * g)
                .collect::<Vec<_>>()
        })
        .collect()
}

fn ln(x: &[f64], g: &[f64], b: &[f64], eps: f64) -> Vec<f64> {
    let d = g.len();
    x.chunks(d)
        .flat_map(|r| {
            let m = r.iter().sum::<f64>() / d as f64;
            let v = r.iter().map(|a| (a - m) * (a - m)).sum::<f64>() / d as f64;
            let inv = 1.0 / (v + eps).sqrt();
            r.iter()
                .zip(g)
                .zip(b)
                .map(move |((a, g), b)| (a - m) * inv * g + b)
                .collect::<Vec<_>>()
        })
        .collect()
}

/// `x [t, k] W^T (+ b)` with `W [n, k]`.
fn lin(x: &[f64], w: &[f64], b: Option<&[f64]>, t: usize) -> Vec<f64> {
    let k = x.len() / t;
    let n = w.len() / k;
    common::naive::linear(x, w, b, t, k, n)
}

fn gelu_tanh(x: f64) -> f64 {
    0.5 * x * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x.powi(3))).tanh())
}

/// erf by Simpson's rule on `2/sqrt(pi) exp(-t^2)` (independent of the engine's series).
fn erf(x: f64) -> f64 {
    let n = 2000;
    let h = x / n as f64;
    let f = |t: f64| (-t * t).exp();
    let mut s = f(0.0) + f(x);
    for i in 1..n {
        s += if i % 2 == 1 { 4.0 } else { 2.0 } * f(i as f64 * h);
    }
    s * h / 3.0 * 2.0 / std::f64::consts::PI.sqrt()
}

/// Bidirectional T5 bucket of `rel = key - query`.
fn bucket(rel: i64, buckets: usize, max_distance: usize) -> usize {
    let half = buckets / 2;
    let base = if rel > 0 { half } else { 0 };
    let n = rel.unsigned_abs() as f64;
    let exact = (half / 2) as f64;
    if n < exact {
        return base + n as usize;
    }
    let large = exact
        + ((n / exact).ln() / (max_distance as f64 / exact).ln() * (half as f64 - exact)).floor();
    base + (large as usize).min(half - 1)
}

/// Softmax attention of one head over visible keys; `score(i, j)` is the full score.
#[allow(clippy::too_many_arguments)]
fn attend(
    len: usize,
    dk: usize,
    v: &[f64],
    inner: usize,
    e: usize,
    visible: impl Fn(usize, usize) -> bool,
    score: impl Fn(usize, usize) -> f64,
    out: &mut [f64],
) {
    for i in 0..len {
        let s: Vec<Option<f64>> = (0..len)
            .map(|j| visible(i, j).then(|| score(i, j)))
            .collect();
        let m = s
            .iter()
            .flatten()
            .cloned()
            .fold(f64::NEG_INFINITY, f64::max);
        let z: f64 = s.iter().flatten().map(|x| (x - m).exp()).sum();
        for (j, sj) in s.iter().enumerate() {
            if let Some(sj) = sj {
                let p = (sj - m).exp() / z;
                for c in 0..dk {
                    out[i * inner + e * dk + c] += p * v[j * inner + e * dk + c];
                }
            }
        }
    }
}

fn ref_t5(dir: &Path, ids: &[u32], mask: &[f32]) -> Vec<f64> {
    let c = config(dir);
    let w = NaiveWeights::load(dir.join("model.safetensors"));
    let (d, h, dk) = (num(&c, "d_model"), num(&c, "num_heads"), num(&c, "d_kv"));
    let (nb, md) = (
        num(&c, "relative_attention_num_buckets"),
        num(&c, "relative_attention_max_distance"),
    );
    let eps = c["layer_norm_epsilon"].as_f64().unwrap();
    let ffp = c["feed_forward_proj"].as_str().unwrap().to_string();
    let gated = ffp.starts_with("gated-");
    let act = |x: f64| match ffp.as_str() {
        "gated-gelu" => gelu_tanh(x),
        "gated-silu" => x / (1.0 + (-x).exp()),
        "relu" => x.max(0.0),
        other => panic!("reference: feed_forward_proj {other}"),
    };
    let umt5 = c["model_type"] == "umt5";
    let l = ids.len();
    let inner = h * dk;
    let emb = rows(&w, "shared.weight");
    let mut x: Vec<f64> = ids
        .iter()
        .flat_map(|&i| emb[i as usize * d..(i as usize + 1) * d].to_vec())
        .collect();
    let mut table = Vec::new();
    for b in 0..num(&c, "num_layers") {
        let p = |s: &str| format!("encoder.block.{b}.layer.{s}");
        if b == 0 || umt5 {
            table = rows(&w, &p("0.SelfAttention.relative_attention_bias.weight"));
        }
        let n = rms(&x, &rows(&w, &p("0.layer_norm.weight")), eps);
        let q = lin(&n, &rows(&w, &p("0.SelfAttention.q.weight")), None, l);
        let k = lin(&n, &rows(&w, &p("0.SelfAttention.k.weight")), None, l);
        let v = lin(&n, &rows(&w, &p("0.SelfAttention.v.weight")), None, l);
        let mut o = vec![0.0; l * inner];
        for e in 0..h {
            attend(
                l,
                dk,
                &v,
                inner,
                e,
                |_, j| mask[j] != 0.0,
                |i, j| {
                    let dot: f64 = (0..dk)
                        .map(|c| q[i * inner + e * dk + c] * k[j * inner + e * dk + c])
                        .sum();
                    dot + table[bucket(j as i64 - i as i64, nb, md) * h + e]
                },
                &mut o,
            );
        }
        let a = lin(&o, &rows(&w, &p("0.SelfAttention.o.weight")), None, l);
        x.iter_mut().zip(&a).for_each(|(x, a)| *x += a);
        let n = rms(&x, &rows(&w, &p("1.layer_norm.weight")), eps);
        let u: Vec<f64> = if gated {
            let g = lin(&n, &rows(&w, &p("1.DenseReluDense.wi_0.weight")), None, l);
            let u = lin(&n, &rows(&w, &p("1.DenseReluDense.wi_1.weight")), None, l);
            g.iter().zip(&u).map(|(g, u)| act(*g) * u).collect()
        } else {
            lin(&n, &rows(&w, &p("1.DenseReluDense.wi.weight")), None, l)
                .iter()
                .map(|a| act(*a))
                .collect()
        };
        let f = lin(&u, &rows(&w, &p("1.DenseReluDense.wo.weight")), None, l);
        x.iter_mut().zip(&f).for_each(|(x, f)| *x += f);
    }
    rms(&x, &rows(&w, "encoder.final_layer_norm.weight"), eps)
}

fn ref_clip(dir: &Path, ids: &[u32], mask: &[f32]) -> Vec<f64> {
    let c = config(dir);
    let w = NaiveWeights::load(dir.join("model.safetensors"));
    let (d, h) = (num(&c, "hidden_size"), num(&c, "num_attention_heads"));
    let eps = c["layer_norm_eps"].as_f64().unwrap();
    let act = |x: f64| match c["hidden_act"].as_str().unwrap() {
        "quick_gelu" => x / (1.0 + (-1.702 * x).exp()),
        "gelu" => 0.5 * x * (1.0 + erf(x / 2f64.sqrt())),
        a => panic!("reference: act {a}"),
    };
    let l = ids.len();
    let dh = d / h;
    let tok = rows(&w, "text_model.embeddings.token_embedding.weight");
    let pos = rows(&w, "text_model.embeddings.position_embedding.weight");
    let mut x: Vec<f64> = ids
        .iter()
        .enumerate()
        .flat_map(|(t, &i)| (0..d).map(move |c| (i as usize, t, c)))
        .map(|(i, t, c)| tok[i * d + c] + pos[t * d + c])
        .collect();
    for y in 0..num(&c, "num_hidden_layers") {
        let p = |s: &str| format!("text_model.encoder.layers.{y}.{s}");
        let lin_b = |x: &[f64], name: &str| {
            lin(
                x,
                &rows(&w, &p(&format!("{name}.weight"))),
                Some(&rows(&w, &p(&format!("{name}.bias")))),
                l,
            )
        };
        let n = ln(
            &x,
            &rows(&w, &p("layer_norm1.weight")),
            &rows(&w, &p("layer_norm1.bias")),
            eps,
        );
        let (q, k, v) = (
            lin_b(&n, "self_attn.q_proj"),
            lin_b(&n, "self_attn.k_proj"),
            lin_b(&n, "self_attn.v_proj"),
        );
        let mut o = vec![0.0; l * d];
        for e in 0..h {
            attend(
                l,
                dh,
                &v,
                d,
                e,
                |i, j| j <= i && mask[j] != 0.0,
                |i, j| {
                    (0..dh)
                        .map(|c| q[i * d + e * dh + c] * k[j * d + e * dh + c])
                        .sum::<f64>()
                        / (dh as f64).sqrt()
                },
                &mut o,
            );
        }
        let a = lin_b(&o, "self_attn.out_proj");
        x.iter_mut().zip(&a).for_each(|(x, a)| *x += a);
        let n = ln(
            &x,
            &rows(&w, &p("layer_norm2.weight")),
            &rows(&w, &p("layer_norm2.bias")),
            eps,
        );
        let u: Vec<f64> = lin_b(&n, "mlp.fc1").into_iter().map(act).collect();
        let f = lin_b(&u, "mlp.fc2");
        x.iter_mut().zip(&f).for_each(|(x, f)| *x += f);
    }
    ln(
        &x,
        &rows(&w, "text_model.final_layer_norm.weight"),
        &rows(&w, "text_model.final_layer_norm.bias"),
        eps,
    )
}

// ---------------------------------------------------------------- encoders vs reference

fn t5_case(name: &str, act: &str, umt5: bool, bytes: bool) {
    let mut s = spec(32, 4, Some(6), act, 11);
    s.per_layer_bias = umt5;
    let dir = write_folder("t5", &s, bytes, name);
    let enc = T5Encoder::load(&dir.0).unwrap();
    let mut rng = Rng::new(fresh_seed(name));
    // 14 tokens reach relative distance 13: beyond max_exact (2 of 8 buckets), so the
    // logarithmic buckets and their clamp are exercised.
    let (ids, mask) = inputs(&mut rng, 14, enc.config.vocab_size, 3);
    let got = enc.forward(&ids, &mask).unwrap();
    assert_eq!(got.shape, vec![14, 32]);
    check(&got, &ref_t5(&dir.0, &ids, &mask), name);
}

#[test]
fn t5_gated_gelu_matches_the_reference() {
    t5_case("t5-gated-gelu", "gated-gelu", false, false);
}

#[test]
fn t5_relu_matches_the_reference() {
    t5_case("t5-relu", "relu", false, false);
}

#[test]
fn t5_gated_silu_as_ul2_matches_the_reference() {
    t5_case("t5-gated-silu", "gated-silu", false, false);
}

#[test]
fn umt5_with_a_bias_per_block_matches_the_reference() {
    t5_case("umt5", "gated-gelu", true, false);
}

#[test]
fn byt5_matches_the_reference() {
    t5_case("byt5", "gated-gelu", false, true);
}

fn clip_case(name: &str, act: &str) {
    let dir = write_folder("clip", &spec(32, 4, None, act, 5), false, name);
    let enc = ClipEncoder::load(&dir.0).unwrap();
    let mut rng = Rng::new(fresh_seed(name));
    let (ids, mask) = inputs(&mut rng, 10, enc.config.vocab_size, 2);
    let got = enc.forward(&ids, &mask).unwrap();
    check(&got, &ref_clip(&dir.0, &ids, &mask), name);
}

#[test]
fn clip_quick_gelu_matches_the_reference() {
    clip_case("clip-quick-gelu", "quick_gelu");
}

#[test]
fn clip_gelu_matches_the_reference() {
    clip_case("clip-gelu", "gelu");
}

/// The emulated device: the encoders' linear layers through the engine's FP16 GEMM kernel
/// on the kernel emulator (f16 inputs and weights, f32 accumulation), against the same f64
/// reference with an f16 tolerance.
#[test]
fn encoders_on_the_emulated_device_match_the_reference_in_f16() {
    use streamdit::backend::cuda::emu::EmuDevice;
    use streamdit::backend::cuda::text::DeviceLinear;
    use streamdit::text::exec::LinearExec;
    let mut rng = Rng::new(fresh_seed("emu"));
    let t5_dir = write_folder(
        "t5",
        &spec(32, 4, Some(8), "gated-gelu", 31),
        false,
        "emu-t5",
    );
    let t5 = T5Encoder::load(&t5_dir.0).unwrap();
    let (ids, mask) = inputs(&mut rng, 12, t5.config.vocab_size, 2);
    let mut exec = DeviceLinear::new(EmuDevice::new());
    assert_eq!(exec.name(), "emu");
    let got = t5.forward_with(&mut exec, &ids, &mask).unwrap();
    let want = ref_t5(&t5_dir.0, &ids, &mask);
    check_tol(&got, &want, "t5 on emu", 5e-3, 5e-3);
    let rel = common::rel_l2(&common::f64s(&got.data), &want);
    assert!(rel < 1e-2, "t5 on emu: relative L2 {rel:e}");
    // The f32 CPU path is far closer: the device really ran in f16.
    let cpu = t5.forward(&ids, &mask).unwrap();
    assert!(common::rel_l2(&common::f64s(&cpu.data), &want) < rel);
    let clip_dir = write_folder(
        "clip",
        &spec(32, 4, None, "quick_gelu", 32),
        false,
        "emu-clip",
    );
    let clip = ClipEncoder::load(&clip_dir.0).unwrap();
    let (ids, mask) = inputs(&mut rng, 9, clip.config.vocab_size, 1);
    let mut exec = DeviceLinear::new(EmuDevice::new());
    let got = clip.forward_with(&mut exec, &ids, &mask).unwrap();
    let want = ref_clip(&clip_dir.0, &ids, &mask);
    check_tol(&got, &want, "clip on emu", 5e-3, 5e-3);
    let rel = common::rel_l2(&common::f64s(&got.data), &want);
    assert!(rel < 1e-2, "clip on emu: relative L2 {rel:e}");
    eprintln!("emu: relative L2 t5/clip within 1e-2");
}

#[test]
fn t5_padding_does_not_reach_real_tokens() {
    let dir = write_folder("t5", &spec(32, 4, None, "gated-gelu", 3), false, "t5-pad");
    let enc = T5Encoder::load(&dir.0).unwrap();
    let mut rng = Rng::new(fresh_seed("t5-pad"));
    let (mut ids, mask) = inputs(&mut rng, 9, enc.config.vocab_size, 4);
    let a = enc.forward(&ids, &mask).unwrap();
    ids[8] = (ids[8] + 1) % enc.config.vocab_size as u32;
    let b = enc.forward(&ids, &mask).unwrap();
    assert_eq!(
        a.data[..5 * 32],
        b.data[..5 * 32],
        "a pad id changed a real token's output"
    );
}

// ---------------------------------------------------------------- sharded weights and errors

/// Splits `model.safetensors` into two shards with an index.
fn shard(dir: &Path) {
    let w = NaiveWeights::load(dir.join("model.safetensors"));
    let mut names: Vec<&String> = w.tensors.keys().collect();
    names.sort();
    let half = names.len() / 2;
    let mut map = serde_json::Map::new();
    for (k, part) in [&names[..half], &names[half..]].iter().enumerate() {
        let file = format!("model-0000{}-of-00002.safetensors", k + 1);
        let tensors: Vec<(String, Tensor)> = part
            .iter()
            .map(|n| {
                let (s, v) = &w.tensors[*n];
                (
                    n.to_string(),
                    Tensor::new(s.clone(), v.iter().map(|&x| x as f32).collect()).unwrap(),
                )
            })
            .collect();
        let refs: Vec<(&str, &Tensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
        write_tensors(&dir.join(&file), &refs, DType::F32).unwrap();
        for n in part.iter() {
            map.insert(n.to_string(), Value::String(file.clone()));
        }
    }
    let index = serde_json::json!({ "metadata": {}, "weight_map": map });
    std::fs::write(dir.join("model.safetensors.index.json"), index.to_string()).unwrap();
    std::fs::remove_file(dir.join("model.safetensors")).unwrap();
}

#[test]
fn sharded_weights_load_like_a_single_file() {
    let dir = write_folder("t5", &spec(32, 4, None, "gated-gelu", 9), false, "sharded");
    let single = T5Encoder::load(&dir.0).unwrap();
    let (ids, mask) = (vec![4, 5, 6, 1], vec![1.0; 4]);
    let want = single.forward(&ids, &mask).unwrap();
    shard(&dir.0);
    let got = T5Encoder::load(&dir.0)
        .unwrap()
        .forward(&ids, &mask)
        .unwrap();
    assert_eq!(got, want);
    std::fs::remove_file(dir.0.join("model-00002-of-00002.safetensors")).unwrap();
    let e = T5Encoder::load(&dir.0)
        .err()
        .expect("a missing shard must fail")
        .to_string();
    assert!(
        e.contains("model-00002-of-00002.safetensors") && e.contains("missing"),
        "{e}"
    );
}

fn edit_config(dir: &Path, key: &str, value: Value) {
    let mut c = config(dir);
    c[key] = value;
    std::fs::write(dir.join("config.json"), c.to_string()).unwrap();
}

#[test]
fn folder_errors_are_named() {
    let dir = write_folder("t5", &spec(32, 4, None, "gated-gelu", 2), false, "errors");
    // A config that disagrees with the weights names the tensor and both shapes.
    edit_config(&dir.0, "d_model", 48.into());
    match T5Encoder::load(&dir.0) {
        Err(Error::Tensor {
            tensor,
            expected,
            found,
            ..
        }) => {
            assert_eq!(tensor, "shared.weight");
            assert!(
                expected.contains("48") && found.contains("32"),
                "{expected} / {found}"
            );
        }
        other => panic!("expected a tensor error, got {:?}", other.err()),
    }
    edit_config(&dir.0, "d_model", 32.into());
    edit_config(&dir.0, "num_layers", 3.into());
    let e = T5Encoder::load(&dir.0).err().unwrap().to_string();
    assert!(
        e.contains("field `num_layers` declares 3 layers but the weights hold 2")
            && e.contains("encoder.block.2.layer.0.SelfAttention.q.weight` is missing"),
        "{e}"
    );
    edit_config(&dir.0, "num_layers", 2.into());
    edit_config(&dir.0, "feed_forward_proj", "gated-swiglu".into());
    let e = T5Encoder::load(&dir.0).err().unwrap().to_string();
    assert!(
        e.contains("feed_forward_proj") && e.contains("gated-gelu") && e.contains("swiglu"),
        "{e}"
    );
    edit_config(&dir.0, "feed_forward_proj", "relu".into());
    let e = T5Encoder::load(&dir.0).err().unwrap().to_string();
    assert!(e.contains("DenseReluDense.wi.weight"), "{e}");
    edit_config(&dir.0, "feed_forward_proj", "gated-gelu".into());
    assert!(T5Encoder::load(&dir.0).is_ok());
    std::fs::remove_file(dir.0.join("model.safetensors")).unwrap();
    let e = T5Encoder::load(&dir.0).err().unwrap().to_string();
    assert!(
        e.contains("model.safetensors") && e.contains("found neither"),
        "{e}"
    );
    std::fs::remove_file(dir.0.join("config.json")).unwrap();
    let e = ClipEncoder::load(&dir.0).err().unwrap().to_string();
    assert!(e.contains("config.json"), "{e}");
    let e = PromptTokenizer::from_file(&dir.0.join("nope.json"), 8)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("nope.json"), "{e}");
    // A CLIP config with an unknown activation.
    let clip = write_folder(
        "clip",
        &spec(32, 4, None, "quick_gelu", 2),
        false,
        "errors-clip",
    );
    edit_config(&clip.0, "hidden_act", "swiglu".into());
    let e = ClipEncoder::load(&clip.0).err().unwrap().to_string();
    assert!(e.contains("hidden_act") && e.contains("swiglu"), "{e}");
}

// ---------------------------------------------------------------- tokenizers

fn tokenizer(kind: &str, len: usize) -> (TempDir, PromptTokenizer) {
    let dir = write_folder(
        kind,
        &spec(32, 4, None, if kind == "t5" { "relu" } else { "gelu" }, 0),
        false,
        &format!("tok-{kind}"),
    );
    let tok = PromptTokenizer::from_file(&dir.0.join("tokenizer.json"), len).unwrap();
    (dir, tok)
}

#[test]
fn t5_tokenizer_gives_the_expected_ids() {
    let (_dir, tok) = tokenizer("t5", 8);
    // <pad> 0, </s> 1, <unk> 2, ▁ 3, then ▁a 4, ▁the 5, ▁cat 6, ▁dog 7, ▁on 8, ...
    let (ids, mask) = tok.encode("The cat on a dog", 8).unwrap();
    assert_eq!(ids, vec![5, 6, 8, 4, 7, 1, 0, 0]);
    assert_eq!(mask, vec![1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0]);
    // Empty: just the end token.
    let (ids, mask) = tok.encode("", 8).unwrap();
    assert_eq!(ids, vec![1, 0, 0, 0, 0, 0, 0, 0]);
    assert_eq!(mask.iter().sum::<f32>(), 1.0);
    // Very long: cut to the length, the end token kept last.
    let long = "a cat ".repeat(10_000);
    let (ids, mask) = tok.encode(&long, 8).unwrap();
    assert_eq!(ids, vec![4, 6, 4, 6, 4, 6, 4, 1]);
    assert_eq!(mask, vec![1.0; 8]);
    // Non-ASCII: pieces the vocabulary lacks become <unk>, never an error.
    let (ids, _) = tok.encode("a 猫", 8).unwrap();
    assert_eq!(&ids[..2], &[4, 3]);
    assert!(
        ids[2..ids.iter().position(|&i| i == 1).unwrap()]
            .iter()
            .all(|&i| i == 2),
        "{ids:?}"
    );
}

#[test]
fn clip_tokenizer_gives_the_expected_ids() {
    let (dir, tok) = tokenizer("clip", 6);
    let json: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.0.join("tokenizer.json")).unwrap())
            .unwrap();
    let vocab = json["model"]["vocab"].as_object().unwrap();
    let id = |t: &str| vocab[t].as_u64().unwrap() as u32;
    let (bos, eos) = (id("<|startoftext|>"), id("<|endoftext|>"));
    // Ids 0..256 are the byte characters in code point order ('!' first), 256.. the same
    // with the word end `</w>`: `a</w>` is 256 + ('a' - '!').
    assert_eq!(id("a</w>"), 256 + (b'a' - b'!') as u32);
    let (ids, mask) = tok.encode("A cat", 6).unwrap();
    assert_eq!(ids, vec![bos, 320, id("cat</w>"), eos, eos, eos]);
    assert_eq!(mask, vec![1.0, 1.0, 1.0, 1.0, 0.0, 0.0]);
    let (ids, _) = tok.encode("", 6).unwrap();
    assert_eq!(&ids[..2], &[bos, eos]);
    let (ids, mask) = tok.encode(&"the dog ".repeat(5000), 6).unwrap();
    assert_eq!(
        ids,
        vec![
            bos,
            id("the</w>"),
            id("dog</w>"),
            id("the</w>"),
            id("dog</w>"),
            eos
        ]
    );
    assert_eq!(mask, vec![1.0; 6]);
    // Non-ASCII through bytes: é is C3 A9, the byte characters Ã and ©.
    let (ids, _) = tok.encode("é", 6).unwrap();
    assert_eq!(&ids[..4], &[bos, id("Ã"), id("©</w>"), eos]);
}

#[test]
fn byt5_bytes_are_the_expected_ids() {
    let (ids, mask) = byte_tokens("é!", 6);
    assert_eq!(ids, vec![0xC3 + 3, 0xA9 + 3, b'!' as u32 + 3, 1, 0, 0]);
    assert_eq!(mask, vec![1.0, 1.0, 1.0, 1.0, 0.0, 0.0]);
    let (ids, _) = byte_tokens(&"x".repeat(100_000), 4);
    assert_eq!(
        ids,
        vec![b'x' as u32 + 3; 3]
            .into_iter()
            .chain([1])
            .collect::<Vec<_>>()
    );
    assert_eq!(byte_tokens("", 2), (vec![1, 0], vec![1.0, 0.0]));
}

// ---------------------------------------------------------------- conditioning assembly

fn entry(
    name: &str,
    kind: &str,
    len: usize,
    dir: Option<&Path>,
    random: Option<RandomEncoderConfig>,
) -> TextEncoderConfig {
    TextEncoderConfig {
        name: name.into(),
        kind: kind.into(),
        len,
        dir: dir.map(|d| d.display().to_string()),
        tokenizer: None,
        random,
    }
}

#[test]
fn conditioning_concatenates_adapted_encoders_and_caches_prompts() {
    let t5_dir = write_folder("t5", &spec(32, 4, None, "gated-gelu", 21), false, "cond-t5");
    let clip_dir = write_folder(
        "clip",
        &spec(24, 4, None, "quick_gelu", 22),
        false,
        "cond-clip",
    );
    let dim = 32;
    let text = TextConfig {
        device: None,
        encoders: vec![
            entry("t5", "t5", 6, Some(&t5_dir.0), None),
            entry("clip", "clip", 5, Some(&clip_dir.0), None),
        ],
    };
    // The CLIP encoder is 24 wide: its adapter [32, 24] + bias comes from the DiT checkpoint;
    // the T5 is already Dtxt wide and has none (identity).
    let mut rng = Rng::new(fresh_seed("adapter"));
    let aw = Tensor::new(vec![dim, 24], rng.f32s(dim * 24, -0.3, 0.3)).unwrap();
    let ab = Tensor::new(vec![dim], rng.f32s(dim, -0.3, 0.3)).unwrap();
    let ckpt_dir = TempDir::new("cond-ckpt");
    let ckpt_path = ckpt_dir.0.join("dit.safetensors");
    write_tensors(
        &ckpt_path,
        &[
            ("text_adapter.clip.weight", &aw),
            ("text_adapter.clip.bias", &ab),
        ],
        DType::F32,
    )
    .unwrap();
    let ckpt = streamdit::checkpoint::Checkpoint::open(&ckpt_path).unwrap();
    let cond = Conditioner::new(&text, dim, &Adapters::Checkpoint(&ckpt), None).unwrap();
    let prompt = "a red car in the rain";
    let got = cond.encode(prompt).unwrap();
    assert_eq!(got.text.shape, vec![11, dim]);
    // Reference: each encoder alone on its own tokens, the adapter applied in f64.
    let t5 = T5Encoder::load(&t5_dir.0).unwrap();
    let (ids, m1) = PromptTokenizer::from_file(&t5_dir.0.join("tokenizer.json"), 6)
        .unwrap()
        .encode(prompt, 6)
        .unwrap();
    let h1 = t5.forward(&ids, &m1).unwrap();
    let clip = ClipEncoder::load(&clip_dir.0).unwrap();
    let (ids, m2) = PromptTokenizer::from_file(&clip_dir.0.join("tokenizer.json"), 5)
        .unwrap()
        .encode(prompt, 5)
        .unwrap();
    let h2 = clip.forward(&ids, &m2).unwrap();
    let adapted = common::naive::linear(
        &common::f64s(&h2.data),
        &common::f64s(&aw.data),
        Some(&common::f64s(&ab.data)),
        5,
        24,
        dim,
    );
    let want: Vec<f64> = common::f64s(&h1.data).into_iter().chain(adapted).collect();
    check(&got.text, &want, "assembled context");
    assert_eq!(got.mask, [m1, m2].concat());
    assert_eq!(got.mask, vec![1., 1., 1., 1., 1., 1., 1., 1., 1., 1., 1.]);
    // The cache: the same prompt again runs no encoder; another prompt runs them once.
    assert_eq!(cond.encoder_runs(), 1);
    let again = cond.encode(prompt).unwrap();
    assert!(std::sync::Arc::ptr_eq(&got, &again));
    assert_eq!(cond.encoder_runs(), 1);
    let other = cond.encode("a dog").unwrap();
    assert_eq!(cond.encoder_runs(), 2);
    assert_ne!(other.text, got.text);
    assert_eq!(other.mask, vec![1., 1., 1., 0., 0., 0., 1., 1., 1., 1., 0.]);
    // Without the adapter in the checkpoint, a 24-wide encoder is an error naming it.
    let empty = ckpt_dir.0.join("empty.safetensors");
    write_tensors(&empty, &[("other", &ab)], DType::F32).unwrap();
    let ckpt = streamdit::checkpoint::Checkpoint::open(&empty).unwrap();
    let e = Conditioner::new(&text, dim, &Adapters::Checkpoint(&ckpt), None)
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("text_adapter.clip.weight") && e.contains("[32, 24]"),
        "{e}"
    );
}

#[test]
fn tiny_random_encoders_equal_their_written_folders() {
    let profile = streamdit::Profile::builtin("tiny").unwrap();
    let dim = profile.model.text_dim;
    let mem = Conditioner::new(&profile.text, dim, &Adapters::Random { seed: 0 }, None).unwrap();
    assert!(
        mem.notes().iter().all(|n| n.contains("RANDOM")),
        "{:?}",
        mem.notes()
    );
    let root = TempDir::new("tiny-folders");
    let mut text = profile.text.clone();
    for e in &mut text.encoders {
        let d = root.0.join(&e.name);
        let bytes = e.tokenizer.as_deref() == Some("bytes");
        random_model(&e.kind, e.random.as_ref().unwrap(), bytes)
            .unwrap()
            .write_folder(&d)
            .unwrap();
        e.dir = Some(d.display().to_string());
        e.tokenizer = None; // ByT5 is recognised from its tokenizer_config.json.
    }
    let disk = Conditioner::new(&text, dim, &Adapters::Random { seed: 0 }, None).unwrap();
    let prompt = "a cat walking on the street at night, 東京";
    let (a, b) = (mem.encode(prompt).unwrap(), disk.encode(prompt).unwrap());
    assert_eq!(a.text, b.text);
    assert_eq!(a.mask, b.mask);
    assert_eq!(a.text.shape, vec![profile.model.text_len, dim]);
    assert!(a.text.data.iter().all(|v| v.is_finite()));
}

#[test]
fn engine_caches_prompts_and_can_run_text_on_the_emulated_device() {
    use streamdit::checkpoint::DType;
    use streamdit::{BackendKind, Engine, EngineParams, Profile, StreamParams, WeightsSource};
    let mut profile = Profile::builtin("tiny").unwrap();
    let weights = WeightsSource::Random {
        seed: 3,
        dtype: DType::F16,
    };
    let cpu = Engine::new(EngineParams {
        profile: profile.clone(),
        weights: weights.clone(),
        backend: BackendKind::Cpu,
    })
    .unwrap();
    let enc = cpu.text_encoders().clone();
    assert_eq!(enc.device(), "cpu");
    let a = cpu.encode_prompt("a cat").unwrap();
    assert_eq!(enc.encoder_runs(), 1);
    let mut stream = cpu
        .stream(StreamParams {
            prompt: "a cat".into(),
            ..Default::default()
        })
        .unwrap();
    stream.step().unwrap();
    assert_eq!(
        enc.encoder_runs(),
        1,
        "the stream reuses the engine's cached prompt"
    );
    stream.set_prompt("a dog");
    assert_eq!(
        enc.encoder_runs(),
        1,
        "a switch is encoded at the next call"
    );
    stream.step().unwrap();
    assert_eq!(
        enc.encoder_runs(),
        2,
        "a prompt switch costs one encoder run"
    );
    stream.set_prompt("a cat");
    stream.step().unwrap();
    assert_eq!(
        enc.encoder_runs(),
        2,
        "switching back is served from the cache"
    );

    profile.text.device = Some("backend".into());
    let emu = Engine::new(EngineParams {
        profile,
        weights,
        backend: BackendKind::Emu,
    })
    .unwrap();
    assert_eq!(emu.text_encoders().device(), "emu");
    let b = emu.encode_prompt("a cat").unwrap();
    assert_eq!(a.mask, b.mask);
    assert_ne!(a.text, b.text, "the device computes in f16");
    let rel = common::rel_l2(&common::f64s(&b.text.data), &common::f64s(&a.text.data));
    eprintln!("tiny context on emu vs cpu: relative L2 {rel:e}");
    assert!(rel < 1e-2, "{rel:e}");
}

/// A full CLIPModel folder: the text numbers under `text_config`, vision tensors beside the
/// text ones; the text encoder reads its part and ignores the rest.
#[test]
fn a_full_clip_model_folder_loads_its_text_tower() {
    let dir = write_folder("clip", &spec(32, 4, None, "gelu", 8), false, "clipmodel");
    let text_only = ClipEncoder::load(&dir.0).unwrap();
    let (ids, mask) = (vec![3, 9, 200, 17], vec![1.0, 1.0, 1.0, 0.0]);
    let want = text_only.forward(&ids, &mask).unwrap();
    let text_config = config(&dir.0);
    let full = serde_json::json!({
        "architectures": ["CLIPModel"],
        "model_type": "clip",
        "projection_dim": 16,
        "text_config": text_config,
        "vision_config": { "hidden_size": 48, "num_hidden_layers": 1 },
    });
    std::fs::write(dir.0.join("config.json"), full.to_string()).unwrap();
    let w = NaiveWeights::load(dir.0.join("model.safetensors"));
    let mut tensors: Vec<(String, Tensor)> = w
        .tensors
        .iter()
        .map(|(n, (s, v))| {
            let t = Tensor::new(s.clone(), v.iter().map(|&x| x as f32).collect()).unwrap();
            (n.clone(), t)
        })
        .collect();
    tensors.push((
        "vision_model.embeddings.class_embedding".into(),
        Tensor::new(vec![48], vec![0.5; 48]).unwrap(),
    ));
    tensors.push((
        "text_projection.weight".into(),
        Tensor::new(vec![16, 32], vec![0.25; 16 * 32]).unwrap(),
    ));
    let refs: Vec<(&str, &Tensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    write_tensors(&dir.0.join("model.safetensors"), &refs, DType::F32).unwrap();
    let got = ClipEncoder::load(&dir.0)
        .unwrap()
        .forward(&ids, &mask)
        .unwrap();
    assert_eq!(got, want);
}

/// A checkpoint written by `weights init` holds the DiT's schema only: for an encoder that
/// needs an adapter it stands for the random adapters of its seed, the same values
/// `--random-weights SEED` uses.
#[test]
fn a_random_checkpoint_stands_for_the_random_adapters_of_its_seed() {
    let profile = streamdit::Profile::builtin("tiny").unwrap();
    let dir = TempDir::new("random-ckpt");
    let path = dir.0.join("tiny.safetensors");
    streamdit::checkpoint::write_random_checkpoint(&profile.model, 7, DType::F16, &path).unwrap();
    let ckpt = streamdit::checkpoint::Checkpoint::open(&path).unwrap();
    let text = TextConfig {
        device: None,
        encoders: vec![
            entry("a", "t5", 20, None, Some(spec(32, 4, None, "relu", 1))),
            entry("b", "clip", 12, None, Some(spec(48, 4, None, "gelu", 2))),
        ],
    };
    let dim = profile.model.text_dim;
    let from_file = Conditioner::new(&text, dim, &Adapters::Checkpoint(&ckpt), None).unwrap();
    let seeded = Conditioner::new(&text, dim, &Adapters::Random { seed: 7 }, None).unwrap();
    let other = Conditioner::new(&text, dim, &Adapters::Random { seed: 8 }, None).unwrap();
    let p = "a dog on the sea";
    let got = from_file.encode(p).unwrap();
    assert_eq!(got.text.shape, vec![32, dim]);
    assert_eq!(got.text, seeded.encode(p).unwrap().text);
    assert_ne!(got.text, other.encode(p).unwrap().text);
}

/// A `tokenizer.json` with the structure of OpenAI CLIP's own (NFC + whitespace Replace +
/// Lowercase, the Split regex with `\p{L}`/`\p{N}` classes, byte-level, BPE with `</w>`,
/// RobertaProcessing), read by the `tokenizers` build the engine uses (fancy-regex, no onig).
#[test]
fn a_tokenizer_json_shaped_like_openai_clip_reads_and_tokenizes() {
    let mut vocab = serde_json::Map::new();
    let tokens = [
        "a",
        "c",
        "f",
        "h",
        "o",
        "p",
        "s",
        "t",
        "a</w>",
        "o</w>",
        "f</w>",
        "s</w>",
        "2</w>",
        "!</w>",
        "ph",
        "pho",
        "phot",
        "photo</w>",
        "of</w>",
        "ca",
        "cat",
        "cats</w>",
    ];
    for (i, t) in tokens.iter().enumerate() {
        vocab.insert(t.to_string(), i.into());
    }
    vocab.insert("<|startoftext|>".into(), 100.into());
    vocab.insert("<|endoftext|>".into(), 101.into());
    let special = |id: u32, content: &str| {
        serde_json::json!({"id": id, "content": content, "single_word": false, "lstrip": false,
            "rstrip": false, "normalized": true, "special": true})
    };
    let json = serde_json::json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [special(100, "<|startoftext|>"), special(101, "<|endoftext|>")],
        "normalizer": {"type": "Sequence", "normalizers": [
            {"type": "NFC"},
            {"type": "Replace", "pattern": {"Regex": "\\s+"}, "content": " "},
            {"type": "Lowercase"}]},
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex":
                "<\\|startoftext\\|>|<\\|endoftext\\|>|'s|'t|'re|'ve|'m|'ll|'d|[\\p{L}]+|[\\p{N}]|[^\\s\\p{L}\\p{N}]+"},
             "behavior": "Removed", "invert": true},
            {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false}]},
        "post_processor": {"type": "RobertaProcessing", "sep": ["<|endoftext|>", 101],
            "cls": ["<|startoftext|>", 100], "trim_offsets": false, "add_prefix_space": false},
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": "<|endoftext|>",
            "continuing_subword_prefix": "", "end_of_word_suffix": "</w>", "fuse_unk": false,
            "byte_fallback": false, "vocab": vocab,
            "merges": ["p h", "ph o", "pho t", "phot o</w>", "o f</w>", "c a", "ca t", "cat s</w>"]}
    });
    let dir = TempDir::new("clip-json");
    let path = dir.0.join("tokenizer.json");
    std::fs::write(&path, json.to_string()).unwrap();
    let tok = PromptTokenizer::from_file(&path, 10).unwrap();
    let (ids, mask) = tok.encode("A  Photo of 2 CATS!", 10).unwrap();
    assert_eq!(ids, vec![100, 8, 17, 18, 12, 21, 13, 101, 101, 101]);
    assert_eq!(mask.iter().sum::<f32>(), 8.0);
    // Truncation keeps both specials; unknown bytes (é) map to the unk token.
    let (ids, _) = tok.encode(&"cats ".repeat(1000), 4).unwrap();
    assert_eq!(ids, vec![100, 21, 21, 101]);
    let (ids, _) = tok.encode("é", 10).unwrap();
    assert_eq!(ids[0], 100);
    assert!(ids[1..].iter().all(|&i| i == 101), "{ids:?}");
}

// ------------------------------------------------- layouts, layer counts, bad values

/// Rewrites the folder's `model.safetensors` with every tensor renamed by `rename` (`None`
/// drops it) and `edit` applied to the values.
fn rewrite_weights(
    dir: &Path,
    rename: impl Fn(&str) -> Option<String>,
    edit: impl Fn(&str, &mut Tensor),
) {
    let w = NaiveWeights::load(dir.join("model.safetensors"));
    let tensors: Vec<(String, Tensor)> = w
        .tensors
        .iter()
        .filter_map(|(n, (s, v))| {
            let mut t = Tensor::new(s.clone(), v.iter().map(|&x| x as f32).collect()).unwrap();
            edit(n, &mut t);
            rename(n).map(|n| (n, t))
        })
        .collect();
    let refs: Vec<(&str, &Tensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    write_tensors(&dir.join("model.safetensors"), &refs, DType::F32).unwrap();
}

/// transformers 5.x saves a CLIPTextModel without the `text_model.` prefix; a bare T5 stack
/// has no `encoder.` prefix. Both load and give exactly the prefixed folder's output.
#[test]
fn prefixless_layouts_load_like_the_prefixed_ones() {
    let (ids, mask) = (vec![3, 9, 60, 17, 5], vec![1.0, 1.0, 1.0, 1.0, 0.0]);
    let clip = write_folder("clip", &spec(32, 4, None, "gelu", 8), false, "clip-v5");
    let want = ClipEncoder::load(&clip.0)
        .unwrap()
        .forward(&ids, &mask)
        .unwrap();
    rewrite_weights(
        &clip.0,
        |n| n.strip_prefix("text_model.").map(String::from),
        |_, _| {},
    );
    let names = NaiveWeights::load(clip.0.join("model.safetensors"));
    assert!(names
        .tensors
        .contains_key("embeddings.token_embedding.weight"));
    let got = ClipEncoder::load(&clip.0)
        .unwrap()
        .forward(&ids, &mask)
        .unwrap();
    assert_eq!(got, want);

    let t5 = write_folder(
        "t5",
        &spec(32, 4, Some(6), "gated-gelu", 9),
        false,
        "t5-bare",
    );
    let want = T5Encoder::load(&t5.0)
        .unwrap()
        .forward(&ids, &mask)
        .unwrap();
    // The stack alone: `block.*`, `final_layer_norm.weight`, the table as `embed_tokens`.
    rewrite_weights(
        &t5.0,
        |n| match n {
            "shared.weight" => Some("embed_tokens.weight".into()),
            _ => n.strip_prefix("encoder.").map(String::from),
        },
        |_, _| {},
    );
    let got = T5Encoder::load(&t5.0)
        .unwrap()
        .forward(&ids, &mask)
        .unwrap();
    assert_eq!(got, want);

    // Neither layout: the error names both names it looked for.
    rewrite_weights(&t5.0, |n| Some(format!("model.{n}")), |_, _| {});
    let e = T5Encoder::load(&t5.0).err().unwrap().to_string();
    assert!(
        e.contains("`encoder.final_layer_norm.weight` or `final_layer_norm.weight`"),
        "{e}"
    );
}

#[test]
fn a_config_declaring_another_layer_count_than_the_weights_is_refused() {
    let t5 = write_folder(
        "t5",
        &spec(32, 4, None, "gated-gelu", 4),
        false,
        "t5-layers",
    );
    for (n, found) in [(1, "exists"), (3, "is missing")] {
        edit_config(&t5.0, "num_layers", n.into());
        let e = T5Encoder::load(&t5.0).err().unwrap().to_string();
        let want = format!("field `num_layers` declares {n} layers but the weights hold 2");
        assert!(e.contains(&want) && e.contains(found), "{e}");
    }
    // An absurd count is refused by the config's bound before any layer is looked for.
    edit_config(&t5.0, "num_layers", 1_000_000_000.into());
    let e = T5Encoder::load(&t5.0).err().unwrap().to_string();
    assert!(
        e.contains("field `num_layers`") && e.contains("at most 1024"),
        "{e}"
    );
    let clip = write_folder("clip", &spec(32, 4, None, "gelu", 4), false, "clip-layers");
    edit_config(&clip.0, "num_hidden_layers", 1.into());
    let e = ClipEncoder::load(&clip.0).err().unwrap().to_string();
    assert!(
        e.contains("field `num_hidden_layers` declares 1 layers but the weights hold 2")
            && e.contains("`text_model.encoder.layers.1.self_attn.q_proj.weight` exists"),
        "{e}"
    );
}

#[test]
fn a_non_finite_encoder_weight_is_refused_by_name() {
    let clip = write_folder("clip", &spec(32, 4, None, "gelu", 6), false, "clip-nan");
    let bad = "text_model.encoder.layers.1.mlp.fc1.weight";
    rewrite_weights(
        &clip.0,
        |n| Some(n.to_string()),
        |n, t| {
            if n == bad {
                t.data[33] = f32::NAN;
            }
        },
    );
    match ClipEncoder::load(&clip.0) {
        Err(Error::Tensor {
            tensor,
            expected,
            found,
            ..
        }) => {
            assert_eq!(tensor, bad);
            assert_eq!(expected, "finite values");
            assert_eq!(found, "NaN at index 33 ([1, 1])");
        }
        other => panic!("expected a tensor error, got {:?}", other.err()),
    }
}
