//! One full model call of the CPU backend against the naive f64 implementation written
//! straight from docs/streamdit.md (tests/common/naive.rs), and the properties random weights
//! must have: activations O(1) through every block, every sub-layer visible in the output.

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use common::naive::{naive_model_call, NaiveConfig, NaiveWeights};
use common::{f64s, rel_l2, Rng};
use streamdit::backend::cpu::{CpuBackend, OpTrace};
use streamdit::backend::Backend;
use streamdit::checkpoint::{write_random_checkpoint, write_tensors, DType, Weights};
use streamdit::model::graph::{Graph, Op};
use streamdit::model::streamdit::schema::Group;
use streamdit::model::ModelConfig;
use streamdit::text::{stack, ByteEmbedding, TextInput};
use streamdit::{Profile, Tensor};

const ALL: [Group; 3] = [Group::Dit, Group::Preview, Group::TextEmbed];

fn temp(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!(
        "streamdit-model-call-{}-{name}",
        std::process::id()
    ))
}

/// Latents, per-frame noise levels and two prompts' conditions for `m`.
fn inputs(
    m: &ModelConfig,
    weights: &Weights,
    seed: u64,
) -> (Vec<f32>, Vec<f32>, TextInput, TextInput) {
    let mut rng = Rng::new(seed);
    let x = rng.f32s(m.buffer_elems(), -2.0, 2.0);
    let tau: Vec<f32> = (0..m.latent_frames)
        .map(|_| rng.uniform(0.0, 1.0) as f32)
        .collect();
    let table = weights.get("text_embed.weight").unwrap().clone();
    let emb = ByteEmbedding::new(table, m.text_len, m.text_dim).unwrap();
    (x, tau, emb.embed("a paper boat on a river"), emb.embed(""))
}

fn cpu_call(
    graph: Graph,
    weights: Arc<Weights>,
    x: &[f32],
    tau: &[f32],
    branches: &[&TextInput],
) -> Vec<f32> {
    let mut backend = CpuBackend::new(graph, weights).unwrap();
    let (text, mask) = stack(branches);
    backend.set_text(&text, &mask).unwrap();
    let mut v = vec![f32::NAN; x.len()];
    backend.forward(x, tau, &mut v).unwrap();
    v
}

#[test]
fn tiny_model_call_matches_the_naive_f64_model() {
    let m = Profile::builtin("tiny").unwrap().model;
    let path = temp("tiny.safetensors");
    write_random_checkpoint(&m, 21, DType::F16, &path).unwrap();
    let weights = Arc::new(Weights::load(&path, &m, &ALL).unwrap());
    let naive_w = NaiveWeights::load(&path);
    std::fs::remove_file(&path).unwrap();
    let cfg = NaiveConfig::from(&m);
    let (x, tau, cond, uncond) = inputs(&m, &weights, 5);

    for guidance in [1.0f32, 4.5] {
        let branches: Vec<&TextInput> = if guidance == 1.0 {
            vec![&cond]
        } else {
            vec![&cond, &uncond]
        };
        let v = cpu_call(
            Graph::build(&m, guidance),
            weights.clone(),
            &x,
            &tau,
            &branches,
        );
        let (ut, um) = (f64s(&uncond.text.data), f64s(&uncond.mask));
        let negative = (guidance != 1.0).then_some((ut.as_slice(), um.as_slice()));
        let want = naive_model_call(
            &naive_w,
            &cfg,
            &f64s(&x),
            &f64s(&tau),
            &f64s(&cond.text.data),
            &f64s(&cond.mask),
            guidance as f64,
            negative,
        );
        let err = rel_l2(&f64s(&v), &want);
        println!(
            "tiny model call, guidance {guidance}: relative L2 error {err:.3e} against naive f64"
        );
        assert!(
            err < 1e-4,
            "guidance {guidance}: relative L2 {err:.3e} >= 1e-4"
        );
    }
}

/// `tiny`'s width with `streamdit-4b`'s depth: the random init must keep the residual stream
/// O(1) over 28 blocks and every op's output far inside f16 range.
#[test]
fn random_weights_keep_activations_o1_through_28_blocks() {
    let mut m = Profile::builtin("tiny").unwrap().model;
    m.depth = 28;
    let weights = Arc::new(Weights::random(&m, 1, DType::F16));
    let (x, tau, cond, _) = inputs(&m, &weights, 2);
    let mut backend = CpuBackend::new(Graph::build(&m, 1.0), weights).unwrap();
    let (text, mask) = stack(&[&cond]);
    backend.set_text(&text, &mask).unwrap();
    let mut v = vec![f32::NAN; x.len()];
    let mut worst: BTreeMap<String, f32> = BTreeMap::new();
    let mut residual_rms = Vec::new();
    let mut trace = |t: &OpTrace| {
        let max = t.values.iter().fold(0.0f32, |a, v| a.max(v.abs()));
        assert!(
            t.values.iter().all(|v| v.is_finite()),
            "{} is not finite",
            t.output.name
        );
        worst.insert(t.output.name.clone(), max);
        if matches!(t.op, Op::GatedResidual { .. } | Op::Residual { .. }) {
            let rms = (t.values.iter().map(|v| v * v).sum::<f32>() / t.values.len() as f32).sqrt();
            residual_rms.push(rms);
        }
    };
    backend
        .forward_traced(&x, &tau, &mut v, Some(&mut trace))
        .unwrap();
    let (name, max) = worst.iter().max_by(|a, b| a.1.total_cmp(b.1)).unwrap();
    println!("largest |activation| over 28 blocks: {max} in `{name}`");
    println!(
        "residual stream rms: first {:?}, last {:?}",
        residual_rms.first(),
        residual_rms.last()
    );
    // f16 overflows at 65504 and loses integer precision past 2048; stay far below both.
    assert!(*max < 256.0, "`{name}` reaches {max}");
    assert_eq!(residual_rms.len(), 3 * 28);
    for (k, rms) in residual_rms.iter().enumerate() {
        assert!(
            (0.3..20.0).contains(rms),
            "residual rms {rms} after sub-layer {k}"
        );
    }
    let v_rms = (v.iter().map(|v| v * v).sum::<f32>() / v.len() as f32).sqrt();
    assert!((0.1..10.0).contains(&v_rms), "output rms {v_rms}");
}

/// Zeroing any one sub-layer's output projection must change `v`: a checkpoint whose gates
/// hide a sub-layer cannot catch a broken kernel.
#[test]
fn every_sub_layer_changes_the_output() {
    let m = Profile::builtin("tiny").unwrap().model;
    let weights = Weights::random(&m, 4, DType::F16);
    let (x, tau, cond, _) = inputs(&m, &weights, 6);
    let base = cpu_call(
        Graph::build(&m, 1.0),
        Arc::new(Weights::random(&m, 4, DType::F16)),
        &x,
        &tau,
        &[&cond],
    );
    let path = temp("ablated.safetensors");
    for l in 0..m.depth {
        for sub in ["attn.out.weight", "cross.out.weight", "ffn.w2.weight"] {
            let target = format!("blocks.{l}.{sub}");
            let tensors: Vec<(String, Tensor)> = weights
                .iter()
                .map(|(n, t)| {
                    let mut t = t.clone();
                    if n == target {
                        t.data.iter_mut().for_each(|v| *v = 0.0);
                    }
                    (n.to_string(), t)
                })
                .collect();
            let refs: Vec<(&str, &Tensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
            write_tensors(&path, &refs, DType::F32).unwrap();
            let ablated = Arc::new(Weights::load(&path, &m, &ALL).unwrap());
            let v = cpu_call(Graph::build(&m, 1.0), ablated, &x, &tau, &[&cond]);
            let change = rel_l2(&f64s(&v), &f64s(&base));
            assert!(
                change > 1e-3,
                "zeroing `{target}` changes v by only {change:.2e}"
            );
        }
    }
    std::fs::remove_file(&path).unwrap();
}
