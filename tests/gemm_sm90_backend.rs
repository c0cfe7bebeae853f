//! The sm_90a GEMM chosen at run time: on a device of compute capability 9.0 (modelled by the
//! emulated device) the CUDA backend runs every linear layer on the warp-specialised
//! `gemm_sm90` kernels (TMA, mbarrier ring, wgmma; `kernels/cuda/gemm_sm90.cu`) instead of
//! the mma.sync `gemm` kernels, and a call matches the CPU backend step by step as the
//! mma.sync path does; on 8.0 nothing changes.

mod common;

use std::sync::Arc;

use common::{f64s, rel_l2};
use streamdit::backend::cuda::emu::EmuDevice;
use streamdit::backend::cuda::lower::Step;
use streamdit::backend::cuda::{CudaBackend, DeviceWeights};
use streamdit::backend::Backend;
use streamdit::checkpoint::{DType, Weights};
use streamdit::model::graph::Graph;
use streamdit::text::{stack, ByteEmbedding};

/// One traced call (guidance 4.5: the CFG batch of 2) on an emulated device of compute
/// capability `cc`: the output, each step's (label, module, kernel) and its rel L2 against
/// the CPU backend's trace of the same op.
struct Call {
    out: Vec<f32>,
    cpu_out: Vec<f32>,
    steps: Vec<(String, &'static str, &'static str, f64)>,
}

fn call(cc: (u32, u32)) -> Call {
    call_model(cc, common::emu_profile().model.clone(), None)
}

/// `sms`: the SM count the emulated device reports (persistent sm_90a GEMMs launch at most
/// that many CTAs); none: one CTA per output tile.
fn call_model(cc: (u32, u32), m: streamdit::ModelConfig, sms: Option<u32>) -> Call {
    let weights = Arc::new(Weights::random(&m, 5, DType::F16));
    let graph = Graph::build(&m, 4.5);
    let table = weights.get("text_embed.weight").unwrap().clone();
    let emb = ByteEmbedding::new(table, m.text_len, m.text_dim).unwrap();
    let (prompt, negative) = (emb.embed("a fox in the snow"), emb.embed(""));
    let (text, mask) = stack(&[&prompt, &negative]);
    let mut rng = common::Rng::new(3);
    let x = rng.f32s(m.buffer_elems(), -2.0, 2.0);
    let tau: Vec<f32> = (0..m.latent_frames)
        .map(|f| f as f32 / 8.0 + 0.05)
        .collect();

    let (want, cpu_out) = common::cpu_traced_call(&graph, &weights, &text, &mask, &x, &tau);

    let dev = EmuDevice::new().with_compute_capability(cc);
    let dev = match sms {
        Some(n) => dev.with_multiprocessors(n),
        None => dev,
    };
    let mut gpu = CudaBackend::new(graph, DeviceWeights::Host(&weights), 2, dev).unwrap();
    gpu.set_text(&text, &mask).unwrap();
    let mut out = vec![0.0; x.len()];
    let mut steps = Vec::new();
    gpu.forward_traced(&x, &tau, &mut out, &mut |step, got| {
        let err = rel_l2(&f64s(got), &f64s(&want[&step.trace().op]));
        if let Step::Launch {
            module,
            kernel_name,
            ..
        } = step
        {
            steps.push((step.label().to_string(), *module, *kernel_name, err));
        }
    })
    .unwrap();
    Call {
        out,
        cpu_out,
        steps,
    }
}

#[test]
fn compute_capability_9_runs_the_sm90_gemm_and_matches_the_cpu() {
    let hopper = call((9, 0));
    let ampere = call((8, 0));
    let gemms = |c: &Call, module: &str| c.steps.iter().filter(|s| s.1 == module).count();
    // Every GEMM of the 8.0 call is an sm_90a GEMM in the 9.0 call, none is left behind.
    let n = gemms(&ampere, "gemm");
    assert!(n > 0, "the 8.0 call has GEMMs");
    assert_eq!(gemms(&ampere, "gemm_sm90"), 0);
    assert_eq!(gemms(&hopper, "gemm"), 0, "a mma.sync GEMM on 9.0");
    assert_eq!(gemms(&hopper, "gemm_sm90"), n);
    // Each norm whose output only the next linear layer reads (3 per block and the final
    // layer's: `cost::launches::with_prologues`) runs in that GEMM's prologue: no adaLN
    // launch is left, and the GEMMs reading a norm are the prologue entries. Their row
    // statistics come from the gated-residual GEMM that last updated h, except for the
    // first block's first norm (h from the positional add): one statistics pass.
    let layers = common::emu_profile().model.depth;
    let count = |c: &Call, kernel: &str| c.steps.iter().filter(|s| s.2 == kernel).count();
    let stats = count(&hopper, "ln_stats_rows_warp") + count(&hopper, "ln_stats_row_cta");
    assert_eq!(stats, 1, "row-statistics passes in the 9.0 call");
    let leaving = (hopper.steps.iter())
        .filter(|s| s.2 == "gemm_sm90_gated_residual" && s.0.contains("(row statistics of h"))
        .count();
    assert_eq!(leaving, 3 * layers, "gated residuals leaving statistics");
    let norms = count(&ampere, "adaln_rows_warp") + count(&ampere, "adaln_row_cta");
    assert_eq!(norms, 3 * layers + 1, "the 8.0 call's adaLN launches");
    assert_eq!(
        count(&hopper, "adaln_rows_warp") + count(&hopper, "adaln_row_cta"),
        0,
        "an adaLN launch left in the 9.0 call"
    );
    for (kernel, want) in [
        ("gemm_sm90_ln_bias_f16", 2 * layers),
        ("gemm_sm90_ln_swiglu", layers),
        ("gemm_sm90_ln_bias_f32", 1),
    ] {
        assert_eq!(
            count(&hopper, kernel),
            want,
            "{kernel} launches in the 9.0 call"
        );
    }
    let mut worst = (0.0f64, String::new());
    for (label, module, kernel, err) in &hopper.steps {
        if *module == "gemm_sm90" || kernel.starts_with("ln_stats") {
            println!("{label:<70} {kernel:<26} rel L2 vs cpu {err:.2e}");
        }
        if *err > worst.0 {
            worst = (*err, label.clone());
        }
    }
    let err = rel_l2(&f64s(&hopper.out), &f64s(&hopper.cpu_out));
    let paths = rel_l2(&f64s(&hopper.out), &f64s(&ampere.out));
    println!(
        "9.0 call: output rel L2 vs cpu {err:.2e}, vs the 8.0 (mma.sync) call {paths:.2e}; \
         worst step {:.2e} at {}",
        worst.0, worst.1
    );
    assert!(worst.0 < 1e-2, "{} rel L2 {:.2e}", worst.1, worst.0);
    assert!(err < 1e-2, "output rel L2 {err:.2e}");
    // The two paths sum the same f32 products of the same f16 operands; only the order of
    // the f32 additions may differ.
    assert!(paths < 1e-3, "9.0 vs 8.0 output rel L2 {paths:.2e}");
    // A device that reports 2 SMs gets persistent GEMMs of at most 2 CTAs, each walking
    // several output tiles: the same bits.
    let persistent = call_model((9, 0), common::emu_profile().model.clone(), Some(2));
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(
        bits(&persistent.out),
        bits(&hopper.out),
        "2 persistent CTAs vs one per tile"
    );
}

/// The Wan family on compute capability 9.0: every GEMM of the prompt and call lists of
/// `wan-tiny` is an sm_90a GEMM, the FFN up and text MLP keep their GELU-tanh epilogue
/// (`gemm_sm90_bias_gelu_f16`), and a call with a cache of one committed chunk matches the
/// CPU backend (the tolerance of tests/wan_device.rs) and the 8.0 device call.
#[test]
fn wan_on_compute_capability_9_runs_the_sm90_gelu_gemm_and_matches_the_cpu() {
    use streamdit::backend::cpu::CpuCausal;
    use streamdit::backend::cuda::CudaCausal;
    use streamdit::checkpoint::wan::random_wan;
    use streamdit::{CausalBackend, Profile, Tensor};

    let w = Profile::builtin("wan-tiny").unwrap().wan().unwrap().clone();
    let wt = Arc::new(random_wan(&w, 5, DType::F16));
    let mut rng = common::Rng::new(11);
    let text = Tensor::new(
        vec![w.text_len, w.text_dim],
        rng.f32s(w.text_len * w.text_dim, -1.0, 1.0),
    )
    .unwrap();
    let mask: Vec<f32> = (0..w.text_len)
        .map(|l| f32::from(u8::from(l < 5)))
        .collect();
    let n = w.chunk_frames * w.frame_elems();
    let c = w.chunk_frames as u64;
    let x0 = rng.f32s(n, -2.0, 2.0);
    let x = rng.f32s(n, -2.0, 2.0);
    let t = vec![750.0; w.chunk_frames];

    let mut cpu = CpuCausal::new(&w, wt.clone()).unwrap();
    let mut want = common::poisoned(n);
    cpu.set_text(&text, &mask).unwrap();
    cpu.commit(&x0, w.context_timestep as f32, 0).unwrap();
    cpu.denoise(&x, &t, c, &mut want).unwrap();

    let mut outs = Vec::new();
    for cc in [(9, 0), (8, 0)] {
        let dev = EmuDevice::new().with_compute_capability(cc);
        let mut b = CudaCausal::new(&w, &wt, dev).unwrap();
        let mut modules: Vec<(&str, &str)> = Vec::new();
        let mut collect = |steps: &[Step]| {
            for s in steps {
                if let Step::Launch {
                    module,
                    kernel_name,
                    ..
                } = s
                {
                    modules.push((module, kernel_name));
                }
            }
        };
        collect(b.prompt_steps());
        collect(b.call_steps(2 * w.chunk_frames).unwrap().0);
        let count = |k: &str| modules.iter().filter(|m| m.1 == k).count();
        if cc == (9, 0) {
            assert!(
                modules.iter().all(|m| m.0 != "gemm"),
                "a mma.sync GEMM left on 9.0"
            );
            // The text MLP's first layer in the prompt list, one FFN up per block.
            assert_eq!(count("gemm_sm90_bias_gelu_f16"), 1 + w.depth);
        } else {
            assert_eq!(count("gemm_bias_gelu_f16"), 1 + w.depth);
            assert!(modules.iter().all(|m| m.0 != "gemm_sm90"));
        }
        let mut v = common::poisoned(n);
        b.set_text(&text, &mask).unwrap();
        b.commit(&x0, w.context_timestep as f32, 0).unwrap();
        b.denoise(&x, &t, c, &mut v).unwrap();
        let err = common::assert_close(
            &format!("wan-tiny call on {cc:?}"),
            &v,
            &f64s(&want),
            5e-3,
            5e-3,
        );
        println!(
            "wan-tiny call on {cc:?}: rel L2 vs cpu {:.2e}, max abs err {err:.2e}",
            rel_l2(&f64s(&v), &f64s(&want))
        );
        outs.push(v);
    }
    let paths = rel_l2(&f64s(&outs[0]), &f64s(&outs[1]));
    println!("wan-tiny 9.0 vs 8.0 call: rel L2 {paths:.2e}");
    assert!(paths < 1e-3, "9.0 vs 8.0 output rel L2 {paths:.2e}");
}

/// The Wan family's KV-cache attention on compute capability 9.0: a Wan-shaped model with
/// heads of 128 channels (wan-tiny's layout, width 256 = 2 heads of 128, one block) runs
/// every self-attention on the sm_90a FlashAttention-3-style kernel
/// (`attn_sm90_kvcache_d128`), and a call over a one-chunk cache matches the CPU backend
/// (tests/wan_device.rs's tolerance) and the 8.0 device call (mma.sync attention).
#[test]
fn wan_dh128_on_compute_capability_9_runs_the_sm90_attention_and_matches_the_cpu() {
    use streamdit::backend::cpu::CpuCausal;
    use streamdit::backend::cuda::CudaCausal;
    use streamdit::checkpoint::wan::random_wan;
    use streamdit::{CausalBackend, Profile, Tensor};

    let mut w = Profile::builtin("wan-tiny").unwrap().wan().unwrap().clone();
    w.dim = 256;
    w.heads = 2;
    w.ffn_dim = 128;
    w.depth = 1;
    let wt = Arc::new(random_wan(&w, 6, DType::F16));
    let mut rng = common::Rng::new(12);
    let text = Tensor::new(
        vec![w.text_len, w.text_dim],
        rng.f32s(w.text_len * w.text_dim, -1.0, 1.0),
    )
    .unwrap();
    let mask: Vec<f32> = (0..w.text_len)
        .map(|l| f32::from(u8::from(l < 6)))
        .collect();
    let n = w.chunk_frames * w.frame_elems();
    let c = w.chunk_frames as u64;
    let x0 = rng.f32s(n, -2.0, 2.0);
    let x = rng.f32s(n, -2.0, 2.0);
    let t = vec![625.0; w.chunk_frames];

    let mut cpu = CpuCausal::new(&w, wt.clone()).unwrap();
    let mut want = common::poisoned(n);
    cpu.set_text(&text, &mask).unwrap();
    cpu.commit(&x0, w.context_timestep as f32, 0).unwrap();
    cpu.denoise(&x, &t, c, &mut want).unwrap();

    let mut outs = Vec::new();
    for cc in [(9, 0), (8, 0)] {
        let dev = EmuDevice::new().with_compute_capability(cc);
        let mut b = CudaCausal::new(&w, &wt, dev).unwrap();
        for attended in [w.chunk_frames, 2 * w.chunk_frames] {
            let kernels: Vec<&str> = b
                .call_steps(attended)
                .unwrap()
                .0
                .iter()
                .filter_map(|s| match s {
                    Step::Launch { kernel_name, .. } => Some(*kernel_name),
                    Step::Copy { .. } => None,
                })
                .collect();
            let count = |k: &str| kernels.iter().filter(|n| **n == k).count();
            let (new, old) = (count("attn_sm90_kvcache_d128"), count("attn_kvcache_d128"));
            if cc == (9, 0) {
                assert_eq!((new, old), (w.depth, 0), "9.0, {attended} frames");
            } else {
                assert_eq!((new, old), (0, w.depth), "8.0, {attended} frames");
            }
        }
        let mut v = common::poisoned(n);
        b.set_text(&text, &mask).unwrap();
        b.commit(&x0, w.context_timestep as f32, 0).unwrap();
        b.denoise(&x, &t, c, &mut v).unwrap();
        let err = common::assert_close(
            &format!("dh 128 call on {cc:?}"),
            &v,
            &f64s(&want),
            5e-3,
            5e-3,
        );
        println!(
            "dh 128 call on {cc:?}: rel L2 vs cpu {:.2e}, max abs err {err:.2e}",
            rel_l2(&f64s(&v), &f64s(&want))
        );
        outs.push(v);
    }
    let paths = rel_l2(&f64s(&outs[0]), &f64s(&outs[1]));
    println!("dh 128 9.0 (sm_90a attention) vs 8.0 (mma.sync) call: rel L2 {paths:.2e}");
    assert!(paths < 1e-3, "9.0 vs 8.0 output rel L2 {paths:.2e}");
}

/// StreamDiT's window attention on compute capability 9.0: with a W window of 16 (shift 8,
/// the sm_90a window kernel's contract: W extents multiples of 8) every window attention of
/// the call runs on `attn_sm90_window_d64` (shifted and unshifted blocks) and none on the
/// mma.sync kernel, and the call matches the CPU backend step by step and the 8.0 call; in
/// the emulator's default profile only the blocks whose W window and shift fit the kernel
/// move to it.
#[test]
fn compute_capability_9_runs_the_sm90_window_attention_and_matches_the_cpu() {
    let mut m = common::emu_profile().model.clone();
    m.latent_width = 32;
    m.window = [m.window[0], m.window[1], 16];
    let hopper = call_model((9, 0), m.clone(), None);
    let ampere = call_model((8, 0), m, None);
    let count = |c: &Call, kernel: &str| c.steps.iter().filter(|s| s.2.starts_with(kernel)).count();
    let n = count(&ampere, "attn_window_d");
    assert!(n >= 2, "the 8.0 call has window attention in both blocks");
    assert_eq!(
        count(&hopper, "attn_window_d"),
        0,
        "a mma.sync window attention on 9.0"
    );
    assert_eq!(count(&hopper, "attn_sm90_window_d64"), n);
    for (label, _, kernel, err) in hopper.steps.iter().filter(|s| s.2.starts_with("attn_sm90")) {
        println!("{label:<70} {kernel:<22} rel L2 vs cpu {err:.2e}");
        assert!(*err < 1e-2, "{label}: rel L2 {err:.2e}");
    }
    let err = rel_l2(&f64s(&hopper.out), &f64s(&hopper.cpu_out));
    let paths = rel_l2(&f64s(&hopper.out), &f64s(&ampere.out));
    println!("9.0 call: output rel L2 vs cpu {err:.2e}, vs the 8.0 call {paths:.2e}");
    assert!(err < 1e-2, "output rel L2 {err:.2e}");
    assert!(paths < 1e-2, "9.0 vs 8.0 output rel L2 {paths:.2e}");
    // The emulator profile (`small`, or `tiny` in the full tier): each block's window
    // attention runs on the sm_90a kernel exactly when its W window and W shift are multiples
    // of 8 (tiny: the unshifted blocks, W window 8; its shifted ones, W shift 4, and all of
    // small's, W window 4, stay on mma.sync).
    let default = call((9, 0));
    let m = common::emu_profile().model;
    let fits = |l: usize| {
        m.window[2].is_multiple_of(8)
            && m.window_shift(l)[2].is_multiple_of(8)
            && matches!(m.dim / m.heads, 64 | 128)
    };
    let on_sm90 = (0..m.depth).filter(|&l| fits(l)).count();
    assert_eq!(count(&default, "attn_sm90_window"), on_sm90);
    assert_eq!(count(&default, "attn_window_d"), m.depth - on_sm90);
    assert!(
        m.depth > on_sm90,
        "the default profile keeps some mma.sync window attention"
    );
}
