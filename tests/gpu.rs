//! The real CUDA backend against the CPU reference, for the machine with a GPU: every
//! module loads (the image chosen for the device's compute capability), the device's shared
//! memory limit is the one its architecture documents, a `tiny` stream matches the CPU
//! backend, the device TAE decoder and the device encoders (TAE, TAEHV) match the CPU's,
//! and a `wan-tiny` stream (KV cache with eviction and sink, a prompt switch) matches the
//! CPU backend, and a dh = 128 Wan call (on compute capability 9.0 the sm_90a attention
//! and GEMMs) matches it too.
//!
//! Without a device each test prints why and returns, unless `STREAMDIT_REQUIRE_GPU=1`
//! (what `tests/gpu.sh` sets on the GPU machine): then a missing device fails the test, so
//! a broken driver setup there cannot pass as a skip. `tests/gpu-bundle.sh` builds this
//! target (`cargo test --no-run`) for that machine, which has no compiler.

mod common;

use common::{f64s, rel_l2, Rng};
use streamdit::backend::cuda::device::Device;
use streamdit::backend::cuda::limits;
use streamdit::backend::cuda::real::{self, CudaDevice};
use streamdit::checkpoint::{DType, Weights};
use streamdit::decoder::{DeviceTae, TaeDecoder};
use streamdit::model::profile::DecoderConfig;
use streamdit::model::tae::TaeGraph;
use streamdit::{BackendKind, Engine, EngineParams, Profile, StreamParams, WeightsSource};

/// The device to test, or `None` (after saying why) when there is none and none is
/// required.
fn device() -> Option<CudaDevice> {
    let required = std::env::var("STREAMDIT_REQUIRE_GPU").is_ok_and(|v| v == "1");
    match streamdit_kernels::kernels_built()
        .map_err(|e| e.to_string())
        .and_then(|_| CudaDevice::probe(0).map_err(|e| e.to_string()))
    {
        Ok(dev) => {
            eprintln!("device: {} ({})", dev.describe(), dev.uuid());
            Some(dev)
        }
        Err(why) if required => panic!("STREAMDIT_REQUIRE_GPU=1 but no usable device: {why}"),
        Err(why) => {
            eprintln!("skipped: no usable CUDA device ({why})");
            None
        }
    }
}

/// The binaries carry cubins for every module and PTX a CUDA 13.0 driver can JIT. Checked
/// by tests/gpu-bundle.sh (`STREAMDIT_REQUIRE_KERNELS=1`) before it packs a bundle;
/// otherwise a build without nvcc just says so.
#[test]
fn kernels_are_embedded() {
    if let Err(why) = streamdit_kernels::kernels_built() {
        let required = std::env::var("STREAMDIT_REQUIRE_KERNELS").is_ok_and(|v| v == "1");
        assert!(!required, "{why}");
        eprintln!("skipped: {why}");
        return;
    }
    for m in streamdit_kernels::MODULE_IMAGES {
        assert_eq!(
            m.cubins.len(),
            m.targets.cubins.len(),
            "{}: cubins",
            m.module
        );
        let ptx = m
            .ptx
            .as_ref()
            .unwrap_or_else(|| panic!("{}: no PTX", m.module));
        assert!(
            ptx.isa <= streamdit_kernels::arch::OLDEST_DRIVER_PTX_ISA,
            "{}: PTX ISA {:?}",
            m.module,
            ptx.isa
        );
    }
}

/// Every module loads on the device from the image chosen for its compute capability (a
/// cubin on the architectures built for), and the Hopper-only modules only on 9.0.
#[test]
fn every_module_loads_from_its_image() {
    let Some(mut dev) = device() else { return };
    let (major, minor) = dev.capability();
    let cc = (major as u32, minor as u32);
    for module in streamdit_kernels::MODULES {
        let images = streamdit_kernels::module_images(module).unwrap();
        let Some(image) = images.choose(cc) else {
            eprintln!(
                "{module}: no image for {cc:?} (built for {:?})",
                images.targets
            );
            assert_ne!(cc, (9, 0), "every module runs on sm_90");
            continue;
        };
        // Any kernel of the module: looking it up loads the module.
        let kernel = streamdit_kernels::KERNEL_RESOURCES
            .iter()
            .find(|r| r.module == *module)
            .map(|r| r.kernel)
            .unwrap_or_else(|| panic!("{module}: no kernel in the resource report"));
        dev.kernel(module, kernel)
            .unwrap_or_else(|e| panic!("{module} ({}): {e}", image.describe()));
        eprintln!("{module}: loaded {}", image.describe());
        if [(8, 0), (8, 6), (8, 9), (9, 0)].contains(&cc) {
            assert!(
                matches!(image, streamdit_kernels::Image::Cubin(_)),
                "{module}: a cubin exists for {cc:?}, not {}",
                image.describe()
            );
        }
    }
    for note in dev.jit_notes() {
        eprintln!("JIT: {note}");
    }
}

/// The opt-in shared memory the device reports is the documented one of its architecture,
/// the number the lowering fits launches to.
#[test]
fn shared_memory_limit_is_the_architectures() {
    let Some(dev) = device() else { return };
    let limit = dev.shared_memory_limit();
    eprintln!("MAX_SHARED_MEMORY_PER_BLOCK_OPTIN: {limit} B");
    let want = match dev.capability() {
        (8, 0) => Some(limits::OPTIN_SM80),
        (8, 6) | (8, 9) => Some(limits::OPTIN_SM86),
        (9, 0) => Some(limits::OPTIN_SM90),
        _ => None,
    };
    if let Some(want) = want {
        assert_eq!(limit, want);
    }
    assert!(real::uuid::is_valid(dev.uuid()), "{}", dev.uuid());
}

/// The clean latents of `chunks` chunks of a `profile` stream on `backend` (random weights,
/// seed 5), the prompt switched before chunk `switch_at`.
fn stream_chunks(
    profile: &str,
    backend: BackendKind,
    guidance: Option<f32>,
    chunks: usize,
    switch_at: usize,
) -> Vec<Vec<f32>> {
    let engine = Engine::new(EngineParams {
        profile: Profile::builtin(profile).unwrap(),
        weights: WeightsSource::Random {
            seed: 5,
            dtype: DType::F16,
        },
        backend,
    })
    .unwrap();
    assert_eq!(
        engine.backend_choice().0,
        backend,
        "{}",
        engine.backend_choice().1
    );
    let mut stream = engine
        .stream(StreamParams {
            prompt: "a paper boat on a river".into(),
            seed: Some(17),
            guidance,
            ..Default::default()
        })
        .unwrap();
    (0..chunks)
        .map(|k| {
            if k == switch_at {
                stream.set_prompt("a lighthouse at night");
            }
            stream.next_latents().unwrap().to_vec()
        })
        .collect()
}

/// A `tiny` stream on the GPU (prefill, steady calls, a prompt switch; with and without
/// guidance) within 1e-2 relative L2 of the CPU backend, the bound the emulated device meets
/// in tests/cuda_backend.rs (f16 weights and GEMM inputs against f32).
#[test]
fn tiny_stream_on_the_gpu_matches_the_cpu() {
    let Some(dev) = device() else { return };
    drop(dev);
    for guidance in [1.0, 4.5] {
        let gpu = stream_chunks("tiny", BackendKind::Cuda, Some(guidance), 4, 2);
        let cpu = stream_chunks("tiny", BackendKind::Cpu, Some(guidance), 4, 2);
        for (k, (g, c)) in gpu.iter().zip(&cpu).enumerate() {
            assert!(g.iter().all(|v| v.is_finite()), "chunk {k}: non-finite");
            let err = rel_l2(&f64s(g), &f64s(c));
            println!("guidance {guidance}: chunk {k}: relative L2 gpu vs cpu {err:.3e}");
            assert!(err < 1e-2, "guidance {guidance}, chunk {k}: {err:.3e}");
        }
    }
}

/// A `wan-tiny` stream on the GPU (enough chunks to fill the window, evict after the sink,
/// and switch the prompt) within 1e-2 relative L2 of the CPU backend per chunk: the device
/// path computes in f16 where the CPU computes in f32. `wan_tiny_stream_bound_holds_on_the_
/// emulator` below checks the same bound on the emulated device wherever the tests run.
#[test]
fn wan_tiny_stream_on_the_gpu_matches_the_cpu() {
    let Some(dev) = device() else { return };
    drop(dev);
    wan_tiny_against_cpu(BackendKind::Cuda);
}

fn wan_tiny_against_cpu(backend: BackendKind) {
    let dev = stream_chunks("wan-tiny", backend, None, 6, 3);
    let cpu = stream_chunks("wan-tiny", BackendKind::Cpu, None, 6, 3);
    for (k, (g, c)) in dev.iter().zip(&cpu).enumerate() {
        assert!(g.iter().all(|v| v.is_finite()), "chunk {k}: non-finite");
        let err = rel_l2(&f64s(g), &f64s(c));
        println!("wan-tiny chunk {k}: relative L2 {backend:?} vs cpu {err:.3e}");
        assert!(err < 1e-2, "wan-tiny chunk {k}: {err:.3e}");
    }
}

/// The bound of `wan_tiny_stream_on_the_gpu_matches_the_cpu` on the emulated device, so the
/// GPU test's tolerance is known to be met by the same launches.
#[test]
fn wan_tiny_stream_bound_holds_on_the_emulator() {
    wan_tiny_against_cpu(BackendKind::Emu);
}

/// The Hopper path of the Wan family on the GPU: a Wan-shaped model with heads of 128
/// (wan-tiny's layout at width 256, one block) runs one call over a one-chunk cache within
/// tests/wan_device.rs's `5e-3 + 5e-3 |v|` of the CPU backend; on compute capability 9.0
/// its call list must hold the sm_90a attention (`attn_sm90_kvcache_d128`) and GEMMs,
/// elsewhere the mma.sync kernels. The emulated device meets the same bound
/// (tests/gemm_sm90_backend.rs, `wan_dh128_...`).
#[test]
fn wan_dh128_call_on_the_gpu_matches_the_cpu() {
    use std::sync::Arc;
    use streamdit::backend::cpu::CpuCausal;
    use streamdit::backend::cuda::lower::Step;
    use streamdit::backend::cuda::CudaCausal;
    use streamdit::checkpoint::wan::random_wan;
    use streamdit::{CausalBackend, Tensor};

    let Some(dev) = device() else { return };
    let hopper = dev.compute_capability() == (9, 0);
    let mut w = Profile::builtin("wan-tiny").unwrap().wan().unwrap().clone();
    w.dim = 256;
    w.heads = 2;
    w.ffn_dim = 128;
    w.depth = 1;
    let wt = Arc::new(random_wan(&w, 6, DType::F16));
    let mut rng = Rng::new(12);
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

    let mut b = CudaCausal::new(&w, &wt, dev).unwrap();
    let kernels: Vec<&str> = b
        .call_steps(2 * w.chunk_frames)
        .unwrap()
        .0
        .iter()
        .filter_map(|s| match s {
            Step::Launch { kernel_name, .. } => Some(*kernel_name),
            Step::Copy { .. } => None,
        })
        .collect();
    let sm90 = kernels.contains(&"attn_sm90_kvcache_d128");
    assert_eq!(
        sm90, hopper,
        "sm_90a attention selected: {sm90}, cc 9.0: {hopper}"
    );
    assert_eq!(kernels.contains(&"attn_kvcache_d128"), !hopper);
    assert_eq!(kernels.contains(&"gemm_sm90_bias_gelu_f16"), hopper);
    let mut v = common::poisoned(n);
    b.set_text(&text, &mask).unwrap();
    b.commit(&x0, w.context_timestep as f32, 0).unwrap();
    b.denoise(&x, &t, c, &mut v).unwrap();
    let err = common::assert_close("dh 128 call on the gpu", &v, &f64s(&want), 5e-3, 5e-3);
    println!(
        "dh 128 call (sm_90a path: {hopper}): rel L2 vs cpu {:.2e}, max abs err {err:.2e}",
        rel_l2(&f64s(&v), &f64s(&want))
    );
}

/// The device TAE decoder on the GPU against the CPU decoder (f32) on `tiny`'s decoder
/// widths, chunk by chunk with the temporal caches on the device; the bounds of
/// tests/decoder_device.rs (f16 activations through ~60 layers).
#[test]
fn device_tae_decoder_on_the_gpu_matches_the_cpu() {
    let Some(dev) = device() else { return };
    let (c, h, w) = (8, 8, 12);
    let dec = DecoderConfig {
        widths: vec![64, 64, 32, 16],
        groups: 8,
    };
    let graph = TaeGraph::new(&dec, c, h, w).unwrap();
    let weights = Weights::random_decoder(&dec, c, 3, DType::F32).unwrap();
    let latents = Rng::new(7).f32s(3 * c * h * w, -2.0, 2.0);
    let want = TaeDecoder::new(graph.clone(), &weights)
        .unwrap()
        .decode_f32(&latents)
        .unwrap();
    let mut gpu = DeviceTae::new(graph, &weights, 2, dev).unwrap();
    let fe = c * h * w;
    let mut got = gpu.decode_f32(&latents[..fe]).unwrap();
    got.extend(gpu.decode_f32(&latents[fe..]).unwrap());
    assert_eq!(got.len(), want.len());
    assert!(got.iter().all(|v| v.is_finite()));
    let want64 = f64s(&want);
    let rms = (want64.iter().map(|v| v * v).sum::<f64>() / want64.len() as f64).sqrt();
    let max = got
        .iter()
        .zip(&want64)
        .map(|(&g, &w)| (g as f64 - w).abs())
        .fold(0.0, f64::max);
    let l2 = rel_l2(&f64s(&got), &want64);
    println!(
        "device TAE decoder vs CPU: rel L2 {l2:.2e}, max err / RMS {:.2e}",
        max / rms
    );
    assert!(
        l2 <= 1e-2 && max <= 5e-2 * rms,
        "rel L2 {l2}, max {max}, rms {rms}"
    );
}

/// The device encoders on the GPU against the CPU encoders (f32), chunk by chunk with their
/// caches on the device: the TAE encoder at `tiny`'s widths and the TAEHV encoder at
/// `taew2_1`'s width 64; the bounds of tests/encoder_device.rs.
#[test]
fn device_encoders_on_the_gpu_match_the_cpu() {
    if device().is_none() {
        return;
    }
    let check = |what: &str, got: &[f32], want: &[f32]| {
        assert_eq!(got.len(), want.len());
        assert!(got.iter().all(|v| v.is_finite()));
        let want64 = f64s(want);
        let rms = (want64.iter().map(|v| v * v).sum::<f64>() / want64.len() as f64).sqrt();
        let max = got
            .iter()
            .zip(&want64)
            .map(|(&g, &w)| (g as f64 - w).abs())
            .fold(0.0, f64::max);
        let l2 = rel_l2(&f64s(got), &want64);
        println!(
            "{what} vs CPU: rel L2 {l2:.2e}, max err / RMS {:.2e}",
            max / rms
        );
        assert!(
            l2 <= 1e-2 && max <= 5e-2 * rms,
            "{what}: rel L2 {l2}, max {max}, rms {rms}"
        );
    };
    let dec = DecoderConfig {
        widths: vec![64, 64, 32, 16],
        groups: 8,
    };
    let (c, h, w) = (8, 6, 8);
    let graph = TaeGraph::encoder(&dec, c, h, w).unwrap();
    let weights = Weights::random_encoder(&dec, c, 3, DType::F32).unwrap();
    let frame = 64 * h * w * 3;
    let x = Rng::new(7).f32s(12 * frame, -1.0, 1.0);
    let want = streamdit::decoder::TaeEncoder::new(graph.clone(), &weights)
        .unwrap()
        .encode_f32(&x)
        .unwrap();
    let mut gpu = DeviceTae::new(graph, &weights, 2, device().unwrap()).unwrap();
    let mut got = gpu.encode_f32(&x[..4 * frame]).unwrap();
    got.extend(gpu.encode_f32(&x[4 * frame..]).unwrap());
    check("device TAE encoder", &got, &want);

    let cfg = streamdit::model::taehv_encoder::TaehvEncoderConfig::taew2_1();
    let (h, w) = (48, 64);
    let weights = streamdit::decoder::TaehvEncoder::random_weights(&cfg, 3, DType::F32).unwrap();
    let frame = h * w * 3;
    let x = Rng::new(8).f32s(12 * frame, 0.0, 1.0);
    let want = streamdit::decoder::TaehvEncoder::new(&cfg, h, w, &weights)
        .unwrap()
        .encode_f32(&x)
        .unwrap();
    let mut gpu =
        streamdit::decoder::DeviceEncoder::taehv(&cfg, h, w, &weights, 2, device().unwrap())
            .unwrap();
    let mut got = gpu.encode_f32(&x[..4 * frame]).unwrap();
    got.extend(gpu.encode_f32(&x[4 * frame..]).unwrap());
    check("device TAEHV encoder", &got, &want);
}

/// The scripts this target travels with parse (`bash -n`), so a syntax error is found
/// here rather than on the GPU machine.
#[test]
fn gpu_scripts_parse() {
    for script in ["tests/gpu.sh", "tests/gpu-bundle.sh"] {
        if !std::path::Path::new(script).exists() {
            eprintln!("{script}: not in the working directory, not checked");
            continue;
        }
        let out = std::process::Command::new("bash")
            .args(["-n", script])
            .output()
            .expect("bash runs");
        assert!(
            out.status.success(),
            "{script}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
