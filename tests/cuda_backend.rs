//! The CUDA backend's whole launch plan on the emulated device: a `tiny` stream against the
//! CPU backend (prefill, steady steps, a prompt switch, with and without guidance), graph
//! replay against eager launches, and the errors of the backend choice. One step of the
//! replayed run runs every kernel under the emulator's race checker (`emu::racecheck`).

mod common;

use std::time::Instant;

use common::{f64s, rel_l2};
use streamdit::backend::cuda::device::ThreadOrder;
use streamdit::backend::cuda::emu::EmuDevice;
use streamdit::backend::cuda::{CudaBackend, DeviceWeights};
use streamdit::backend::{Backend, StepParams};
use streamdit::checkpoint::{DType, Weights};
use streamdit::model::graph::Graph;
use streamdit::stream::schedule::Schedule;
use streamdit::text::{stack, ByteEmbedding};
use streamdit::{BackendKind, Engine, EngineParams, Profile, StreamParams, WeightsSource};

fn engine(backend: BackendKind) -> Engine {
    Engine::new(EngineParams {
        profile: common::emu_profile(),
        weights: WeightsSource::Random {
            seed: 5,
            dtype: DType::F16,
        },
        backend,
    })
    .unwrap()
}

/// `chunks` clean chunks of a stream, switching the prompt before chunk `switch_at`.
fn stream_chunks(
    backend: BackendKind,
    guidance: f32,
    chunks: usize,
    switch_at: usize,
) -> Vec<Vec<f32>> {
    let engine = engine(backend);
    let mut stream = engine
        .stream(StreamParams {
            prompt: "a paper boat on a river".into(),
            seed: Some(17),
            guidance: Some(guidance),
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

/// The done-when of the CUDA backend: every emitted chunk of a stream on the emulated
/// device within 1e-2 relative L2 of the CPU backend (f16 weights and GEMM inputs against
/// f32 throughout). The prompt switches before the third chunk, so chunks 2 and 3 also show
/// that the switch recomputed the context and every layer's K/V on the device. The default
/// tier streams `tests/profiles/small.toml` with CFG; `STREAMDIT_FULL=1` streams `tiny`
/// (3 prefill and 4 steady calls for 4 chunks) with and without CFG.
#[test]
fn tiny_stream_on_the_emulator_matches_the_cpu() {
    let guidances: &[f32] = if common::full() { &[1.0, 4.5] } else { &[4.5] };
    for &guidance in guidances {
        let start = Instant::now();
        let emu = stream_chunks(BackendKind::Emu, guidance, 4, 2);
        let emu_s = start.elapsed().as_secs_f64();
        let cpu = stream_chunks(BackendKind::Cpu, guidance, 4, 2);
        let unswitched = stream_chunks(BackendKind::Cpu, guidance, 4, usize::MAX);
        assert_ne!(cpu[2], unswitched[2], "the switch must change later chunks");
        for (k, (e, c)) in emu.iter().zip(&cpu).enumerate() {
            assert!(e.iter().all(|v| v.is_finite()), "chunk {k}: non-finite");
            let err = rel_l2(&f64s(e), &f64s(c));
            println!("guidance {guidance}: chunk {k}: relative L2 emu vs cpu {err:.3e}");
            assert!(err < 1e-2, "guidance {guidance}, chunk {k}: {err:.3e}");
        }
        println!("guidance {guidance}: 4 chunks on the emulator in {emu_s:.1} s");
    }
}

/// Asserts `a` and `b` equal bit for bit, reporting the first difference only.
fn assert_bits(what: &str, a: &[f32], b: &[f32]) {
    assert_eq!(a.len(), b.len(), "{what}: lengths");
    let differ = a
        .iter()
        .zip(b)
        .filter(|(x, y)| x.to_bits() != y.to_bits())
        .count();
    if let Some(i) = (0..a.len()).find(|&i| a[i].to_bits() != b[i].to_bits()) {
        panic!(
            "{what}: {differ} of {} values differ; first at {i}: {} vs {}",
            a.len(),
            a[i],
            b[i]
        );
    }
}

/// Steps of a CFG stream ([`common::emu_profile`]) run through a backend on the emulator:
/// popped chunks and the final buffer.
fn run_steps(graphs: bool, order: ThreadOrder) -> (Vec<Vec<f32>>, Vec<f32>) {
    run_steps_prefetching(graphs, order, Prefetch::None, None)
}

/// What to prefetch before every step.
#[derive(Clone, Copy, PartialEq)]
enum Prefetch {
    None,
    /// Alternately the step that follows (what the stream does: it must be taken) and a
    /// step that does not come (it must be dropped without a trace).
    NextAndWrong,
}

/// `race_checked`: the step whose launches run under the race checker (a race fails it).
fn run_steps_prefetching(
    graphs: bool,
    order: ThreadOrder,
    prefetch: Prefetch,
    race_checked: Option<u64>,
) -> (Vec<Vec<f32>>, Vec<f32>) {
    let profile = common::emu_profile();
    let m = profile.model.clone();
    let weights = Weights::random(&m, 5, DType::F16);
    let mut dev = EmuDevice::new();
    dev.set_thread_order(order);
    let chunk = profile.stream.chunk_frames;
    let mut backend = CudaBackend::new(
        Graph::build(&m, 3.0),
        DeviceWeights::Host(&weights),
        chunk,
        dev,
    )
    .unwrap();
    backend.set_graphs(graphs).unwrap();
    let table = weights.get("text_embed.weight").unwrap().clone();
    let emb = ByteEmbedding::new(table, m.text_len, m.text_dim).unwrap();
    let (prompt, negative) = (emb.embed("a fox in the snow"), emb.embed(""));
    let (text, mask) = stack(&[&prompt, &negative]);
    backend.set_text(&text, &mask).unwrap();
    backend.reset(23, 0).unwrap();
    let schedule = Schedule::new(&profile.stream);
    let mut popped = Vec::new();
    let mut next = m.latent_frames as u64;
    for i in 0..5 {
        let s = schedule.step(i);
        let params = StepParams {
            tau: s.tau.clone(),
            dtau: s.dtau.clone(),
            pop: s.pop.then_some(next),
        };
        match prefetch {
            Prefetch::None => {}
            Prefetch::NextAndWrong if i % 2 == 0 => backend.prefetch(&params).unwrap(),
            Prefetch::NextAndWrong => {
                let mut wrong = params.clone();
                wrong.dtau.iter_mut().for_each(|d| *d = 0.5);
                wrong.pop = Some(next + 100);
                backend.prefetch(&wrong).unwrap();
            }
        }
        let mut out = vec![f32::NAN; chunk * m.frame_elems()];
        let _race = (race_checked == Some(i)).then(|| streamdit_kernels::emu::racecheck(true));
        backend
            .step(
                &StepParams {
                    tau: s.tau,
                    dtau: s.dtau,
                    pop: s.pop.then_some(next),
                },
                &mut out,
            )
            .unwrap();
        if s.pop {
            next += chunk as u64;
            popped.push(out);
        }
    }
    let mut buffer = vec![f32::NAN; m.buffer_elems()];
    backend.read_buffer(&mut buffer).unwrap();
    (popped, buffer)
}

/// A streaming step writes tau, dtau and the control block through one pinned block copied
/// on the compute stream: no synchronous host-to-device copy per step (there were three),
/// while the values still reach the kernels (the chunks match eager launches, below).
#[test]
fn steps_make_no_synchronous_host_copies() {
    let profile = Profile::builtin("tiny").unwrap();
    let m = profile.model.clone();
    let weights = Weights::random(&m, 5, DType::F16);
    let chunk = profile.stream.chunk_frames;
    let mut backend = CudaBackend::new(
        Graph::build(&m, 1.0),
        DeviceWeights::Host(&weights),
        chunk,
        EmuDevice::new(),
    )
    .unwrap();
    let table = weights.get("text_embed.weight").unwrap().clone();
    let emb = ByteEmbedding::new(table, m.text_len, m.text_dim).unwrap();
    let (text, mask) = stack(&[&emb.embed("a fox in the snow")]);
    backend.set_text(&text, &mask).unwrap();
    backend.reset(23, 0).unwrap();
    let schedule = Schedule::new(&profile.stream);
    let mut next = m.latent_frames as u64;
    let mut out = vec![f32::NAN; chunk * m.frame_elems()];
    for graphs in [true, false] {
        backend.set_graphs(graphs).unwrap();
        for i in 0..3 {
            let s = schedule.step(i);
            let before = backend.device().synchronous_writes();
            let params = StepParams {
                tau: s.tau,
                dtau: s.dtau,
                pop: s.pop.then_some(next),
            };
            backend.step(&params, &mut out).unwrap();
            let writes = backend.device().synchronous_writes() - before;
            assert_eq!(writes, 0, "graphs {graphs}, step {i}: synchronous writes");
            if s.pop {
                next += chunk as u64;
            }
        }
    }
}

/// One captured step graph replayed for prefill and steady steps gives the same bits as
/// launching the same list eagerly, in another thread order.
#[test]
fn graph_replay_is_bit_identical_to_eager_launches() {
    let (eager_chunks, eager_buffer) = run_steps(false, ThreadOrder::Forward);
    // The first replayed step (every kernel of a CFG model call and the Euler update) runs
    // under the race checker: no race, and the instrumented kernels give the same bits.
    let (replay_chunks, replay_buffer) =
        run_steps_prefetching(true, ThreadOrder::Shuffle(9), Prefetch::None, Some(0));
    let profile = common::emu_profile();
    let schedule = Schedule::new(&profile.stream);
    let pops = (0..5).filter(|&i| schedule.step(i).pop).count();
    assert!(
        pops >= 2,
        "5 steps pop {pops} chunks: need prefill and steady steps"
    );
    assert_eq!(eager_chunks.len(), pops);
    for (k, (a, b)) in eager_chunks.iter().zip(&replay_chunks).enumerate() {
        assert_bits(&format!("chunk {k}"), a, b);
    }
    assert_bits("buffer", &eager_buffer, &replay_buffer);
    // A prefetched step is taken when it is the next one and dropped when it is not.
    let (chunks, buffer) =
        run_steps_prefetching(true, ThreadOrder::Forward, Prefetch::NextAndWrong, None);
    for (k, (a, b)) in eager_chunks.iter().zip(&chunks).enumerate() {
        assert_bits(&format!("prefetched chunk {k}"), a, b);
    }
    assert_bits("prefetched buffer", &eager_buffer, &buffer);
}

/// A device with less shared memory per block than a kernel needs (modelled on the
/// emulator) refuses the backend when it is built, naming the kernel, its bytes and the
/// limit, instead of failing at a launch; with enough, the same backend builds.
#[test]
fn a_device_without_the_shared_memory_refuses_the_backend() {
    let profile = Profile::builtin("tiny").unwrap();
    let m = profile.model.clone();
    let weights = Weights::random(&m, 5, DType::F16);
    let build = |limit: u32| {
        CudaBackend::new(
            Graph::build(&m, 1.0),
            DeviceWeights::Host(&weights),
            profile.stream.chunk_frames,
            EmuDevice::new().with_shared_memory_limit(limit),
        )
    };
    // tiny's GEMMs need 64 KiB (its attention, head dim 64, 57 984 B): below that, the
    // first list's first GEMM is refused.
    let err = build(60_000).err().unwrap().to_string();
    for part in [
        "Prompt op 0",
        "gemm_bias_f32",
        "65536 B",
        "60000 B",
        "MAX_SHARED_MEMORY_PER_BLOCK_OPTIN",
    ] {
        assert!(err.contains(part), "{part:?} in {err}");
    }
    assert!(build(99 * 1024).is_ok(), "an sm_86-sized device runs tiny");
}

/// Misuse of the backend is an error naming what is missing.
#[test]
fn cuda_backend_misuse_is_an_error() {
    let profile = Profile::builtin("tiny").unwrap();
    let m = profile.model.clone();
    let weights = Weights::random(&m, 5, DType::F16);
    let graph = Graph::build(&m, 1.0);
    let err = CudaBackend::new(
        graph.clone(),
        DeviceWeights::Host(&weights),
        m.latent_frames,
        EmuDevice::new(),
    )
    .err()
    .unwrap()
    .to_string();
    assert!(err.contains("chunk frames"), "{err}");
    let mut b =
        CudaBackend::new(graph, DeviceWeights::Host(&weights), 2, EmuDevice::new()).unwrap();
    let step = StepParams {
        tau: vec![0.0; m.latent_frames],
        dtau: vec![0.0; m.latent_frames],
        pop: None,
    };
    let err = b.step(&step, &mut []).unwrap_err().to_string();
    assert!(err.contains("set_text"), "{err}");
    let mut v = vec![0.0; m.buffer_elems()];
    let err = b
        .forward(&v.clone(), &[0.0; 3], &mut v)
        .unwrap_err()
        .to_string();
    assert!(err.contains("set_text"), "{err}");

    // Out of device memory names the allocation.
    let dev = EmuDevice::new().with_memory_limit(1 << 20);
    let err = CudaBackend::new(Graph::build(&m, 1.0), DeviceWeights::Host(&weights), 2, dev)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("model memory"), "{err}");
}

/// Without a driver, `cuda` is an error naming the driver and `auto` falls back to the CPU
/// saying why. (On a machine with a GPU the first half is skipped.)
#[test]
fn backend_choice_without_a_gpu() {
    if streamdit::backend::cuda::real::CudaDevice::new(0).is_ok() {
        println!("a CUDA device is present: the no-GPU paths are not reachable here");
        return;
    }
    let err = Engine::new(EngineParams {
        profile: Profile::builtin("tiny").unwrap(),
        weights: WeightsSource::Random {
            seed: 0,
            dtype: DType::F16,
        },
        backend: BackendKind::Cuda,
    })
    .err()
    .unwrap()
    .to_string();
    // Without nvcc the kernels are the missing piece, otherwise the driver.
    assert!(
        err.contains("kernels not built") || err.contains("libcuda"),
        "{err}"
    );
    let e = engine(BackendKind::Auto);
    let (kind, why) = e.backend_choice();
    assert_eq!(kind, BackendKind::Cpu);
    // The reason is the probe's error: the same piece `cuda` named.
    assert!(
        why.starts_with("auto: using the CPU, the CUDA probe failed (")
            && (why.contains("kernels not built") || why.contains("libcuda")),
        "{why}"
    );
    let emu = engine(BackendKind::Emu);
    let backend = emu.create_backend(1.0).unwrap();
    assert_eq!(backend.name(), "emu");
}

/// One model call step by step: after every launch the tensor it wrote is compared with the
/// CPU backend's value of the same graph op (relative L2, printed), so a wrong kernel or
/// lowering is named by its op, not found as a wrong final output.
#[test]
fn every_step_of_a_call_matches_the_cpu_trace() {
    use std::sync::Arc;

    for guidance in [1.0, 4.5] {
        let profile = common::emu_profile();
        let m = profile.model.clone();
        let weights = Arc::new(Weights::random(&m, 5, DType::F16));
        let graph = Graph::build(&m, guidance);
        let table = weights.get("text_embed.weight").unwrap().clone();
        let emb = ByteEmbedding::new(table, m.text_len, m.text_dim).unwrap();
        let (prompt, negative) = (emb.embed("a fox in the snow"), emb.embed(""));
        let branches = if graph.batch == 2 {
            vec![&prompt, &negative]
        } else {
            vec![&prompt]
        };
        let (text, mask) = stack(&branches);
        let mut rng = common::Rng::new(3);
        let x = rng.f32s(m.buffer_elems(), -2.0, 2.0);
        let tau: Vec<f32> = (0..m.latent_frames)
            .map(|f| f as f32 / 8.0 + 0.05)
            .collect();

        let (want, v_cpu) = common::cpu_traced_call(&graph, &weights, &text, &mask, &x, &tau);

        let mut gpu =
            CudaBackend::new(graph, DeviceWeights::Host(&weights), 2, EmuDevice::new()).unwrap();
        gpu.set_text(&text, &mask).unwrap();
        let mut v_gpu = vec![0.0; x.len()];
        let mut worst = (0.0f64, String::new());
        gpu.forward_traced(&x, &tau, &mut v_gpu, &mut |step, got| {
            let t = step.trace();
            let err = rel_l2(&f64s(got), &f64s(&want[&t.op]));
            println!("guidance {guidance}: {:<70} rel L2 {err:.2e}", step.label());
            if err > worst.0 {
                worst = (err, step.label().to_string());
            }
        })
        .unwrap();
        let err = rel_l2(&f64s(&v_gpu), &f64s(&v_cpu));
        println!(
            "guidance {guidance}: output rel L2 {err:.2e}; worst step {:.2e} at {}",
            worst.0, worst.1
        );
        assert!(
            worst.0 < 1e-2,
            "guidance {guidance}: {} rel L2 {:.2e}",
            worst.1,
            worst.0
        );
        assert!(err < 1e-2, "guidance {guidance}: output rel L2 {err:.2e}");
    }
}

/// Weights generated on the device are those `weights init --dtype f16` writes, bit for bit
/// (every DiT tensor, including the per-row ranges of the adaLN tables).
#[test]
fn device_random_weights_equal_the_checkpoint_init() {
    use streamdit::model::graph::Kind;
    let m = common::emu_profile().model;
    let host = Weights::random(&m, 41, DType::F16);
    let graph = Graph::build(&m, 1.0);
    let mut b = CudaBackend::new(
        graph.clone(),
        DeviceWeights::Random { seed: 41 },
        2,
        EmuDevice::new(),
    )
    .unwrap();
    let mut tensors = 0;
    for (id, t) in graph.tensors.iter().enumerate() {
        if t.kind != Kind::Weight {
            continue;
        }
        let got = b.read_tensor(id).unwrap();
        assert_bits(&t.name, &got, &host.get(&t.name).unwrap().data);
        tensors += 1;
    }
    // Every block has at least its qkv, output, FFN and adaLN tensors beside the globals.
    assert!(tensors > 8 * m.depth, "{tensors} weight tensors");
}

/// A checkpoint's tensors reach the device as f16, converted on the way from bf16 and f32
/// exactly as the host path rounds them, and an engine on the device keeps no host copy of
/// the DiT weights.
#[test]
fn checkpoint_weights_upload_from_the_memory_map() {
    use streamdit::checkpoint::{write_random_checkpoint, Checkpoint};
    use streamdit::model::graph::Kind;
    use streamdit::model::streamdit::schema::Group;
    let m = Profile::builtin("tiny").unwrap().model;
    for dtype in [DType::BF16, DType::F32, DType::F16] {
        let path = std::env::temp_dir().join(format!(
            "streamdit-cuda-backend-{}-{dtype}.safetensors",
            std::process::id()
        ));
        write_random_checkpoint(&m, 8, dtype, &path).unwrap();
        let host = Weights::load(&path, &m, &[Group::Dit]).unwrap();
        let ckpt = Checkpoint::open(&path).unwrap();
        let graph = Graph::build(&m, 1.0);
        let mut b = CudaBackend::new(
            graph.clone(),
            DeviceWeights::Checkpoint(&ckpt),
            2,
            EmuDevice::new(),
        )
        .unwrap();
        for (id, t) in graph.tensors.iter().enumerate() {
            if t.kind == Kind::Weight {
                let want: Vec<f32> = host
                    .get(&t.name)
                    .unwrap()
                    .data
                    .iter()
                    .map(|&v| DType::F16.round(v))
                    .collect();
                assert_bits(
                    &format!("{dtype} {}", t.name),
                    &b.read_tensor(id).unwrap(),
                    &want,
                );
            }
        }
        let engine = Engine::new(EngineParams {
            profile: Profile::builtin("tiny").unwrap(),
            weights: WeightsSource::File(path.clone()),
            backend: BackendKind::Emu,
        })
        .unwrap();
        assert!(engine.weights().get("blocks.0.attn.qkv.weight").is_err());
        assert!(engine.weights().get("preview.weight").is_ok());
        engine.create_backend(1.0).unwrap();
        std::fs::remove_file(&path).unwrap();
    }
}
