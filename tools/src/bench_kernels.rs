//! `streamdit bench --kernels`: every GEMM shape of a profile's model call on each GEMM path
//! the device has — our mma.sync kernel, our sm_90a kernel (compute capability 9.0) and
//! cuBLAS (a GPU with libcublas) — side by side on the same inputs, as time, TFLOP/s, ratio
//! to cuBLAS and largest difference from the mma.sync result; then every attention shape of
//! a StreamDiT call (window, shifted window, cross) or the Wan family's attention over its
//! KV cache on our attention paths (mma.sync, and the sm_90a kernels on 9.0), with TFLOP/s, share of the device's dense FP16 peak
//! and the CTAs launched (cuBLAS has no attention); then, on compute capability 9.0, each
//! linear shape that reads a LayerNorm / adaLN output as adaLN + GEMM against the GEMM with
//! the LayerNorm prologue.

use std::path::Path;

use serde_json::json;
use streamdit::inspect::{
    attention_shapes, kernel_bench, wan_attention_shape, AttentionShape, GemmShape, GpuSpec,
    KernelDevice, Op,
};
use streamdit::{BackendKind, Error, Result};

use crate::common::{load_profile, print_stdout, ModelArgs};

/// The distinct linear shapes `(m, n, k)` of the profile's call with how often each runs,
/// largest first; its attention shapes; and the linear shapes that read a LayerNorm / adaLN
/// output (the norm + GEMM rows), largest first.
type Shapes = (Vec<GemmShape>, Vec<AttentionShape>, Vec<GemmShape>);

fn profile_shapes(model: &ModelArgs) -> Result<Shapes> {
    let profile = load_profile(&model.profile, &model.text_dir)?;
    let guidance = if profile.family == streamdit::Family::Wan {
        1.0
    } else {
        profile.run.guidance
    };
    let (graph, _) = crate::plan_wan::graph(&profile, guidance, None)?;
    let mut shapes: Vec<GemmShape> = Vec::new();
    let mut prologues: Vec<GemmShape> = Vec::new();
    let count = |list: &mut Vec<GemmShape>, (m, n, k)| match list
        .iter_mut()
        .find(|s| (s.m, s.n, s.k) == (m, n, k))
    {
        Some(s) => s.count += 1,
        None => list.push(GemmShape { m, n, k, count: 1 }),
    };
    for (i, op) in graph.call_ops.iter().enumerate() {
        let Op::Linear { x, w, .. } = *op else {
            continue;
        };
        let (xs, ws) = (&graph.tensors[x].shape, &graph.tensors[w].shape);
        if xs.len() != 2 || ws.len() != 2 {
            continue;
        }
        let dims = (xs[0], ws[0], xs[1]);
        count(&mut shapes, dims);
        let reads_norm = i > 0
            && matches!(graph.call_ops[i - 1], Op::LayerNorm { out, .. } | Op::AdaLn { out, .. } if out == x);
        if reads_norm {
            count(&mut prologues, dims);
        }
    }
    shapes.sort_by(|a, b| b.flops().total_cmp(&a.flops()));
    prologues.sort_by(|a, b| b.flops().total_cmp(&a.flops()));
    // The Wan family's attention runs over its KV cache (one shape: a full cache).
    let attention = if profile.family == streamdit::Family::Wan {
        vec![wan_attention_shape(profile.wan()?)]
    } else {
        attention_shapes(&graph)
    };
    Ok((shapes, attention, prologues))
}

/// The dense FP16 tensor-core peak (TFLOP/s) of the GPU `device` names, when `plan` knows it.
fn peak_tflops(device: &str) -> Option<f64> {
    let upper = device.to_uppercase().replace(' ', "");
    GpuSpec::ALL
        .iter()
        .find(|g| upper.contains(&g.key.to_uppercase()))
        .map(|g| g.fp16_tflops)
}

/// `MxNxK[,MxNxK...]`.
fn parse_shapes(text: &str) -> Result<Vec<GemmShape>> {
    text.split(',')
        .map(|item| {
            let dims: Vec<usize> = item
                .trim()
                .split('x')
                .map(|d| d.trim().parse::<usize>())
                .collect::<std::result::Result<_, _>>()
                .map_err(|e| {
                    Error::Invalid(format!("--kernel-shapes: {item:?} is not MxNxK ({e})"))
                })?;
            match dims[..] {
                [m, n, k] if m > 0 && n > 0 && k > 0 => Ok(GemmShape { m, n, k, count: 1 }),
                _ => Err(Error::Invalid(format!(
                    "--kernel-shapes: {item:?} is not MxNxK with three positive sizes"
                ))),
            }
        })
        .collect()
}

/// Runs the comparison and prints it (and writes it as JSON to `json`).
pub(crate) fn run(
    model: &ModelArgs,
    shapes: Option<&str>,
    reps: usize,
    json_path: Option<&Path>,
) -> Result<()> {
    let on = match model.backend {
        BackendKind::Cuda | BackendKind::Auto => KernelDevice::Gpu(0),
        BackendKind::Emu => KernelDevice::Emulator,
        BackendKind::Cpu => {
            return Err(Error::Invalid(
                "--kernels times the device's GEMM kernels: use --backend cuda (a GPU) or \
                 emu (the emulator), not cpu"
                    .into(),
            ))
        }
    };
    let (shapes, attention, prologues) = match shapes {
        Some(text) => (parse_shapes(text)?, Vec::new(), Vec::new()),
        None => profile_shapes(model)?,
    };
    let bench = kernel_bench(on, &shapes, &attention, &prologues, reps)?;
    let mut text = format!("GEMM kernels on {}\n", bench.device);
    match &bench.cublas {
        Ok(v) => text += &format!("cuBLAS {v}: cublasGemmEx, f16 in and out, f32 compute\n"),
        Err(why) => text += &format!("cuBLAS not compared: {why}\n"),
    }
    if on == KernelDevice::Emulator {
        text += "times are the emulator's wall clock, not a GPU's\n";
    }
    text += &format!(
        "{:>22} {:>5} {:>9} {:>10} {:>9} {:>10} {:>10}\n",
        "M x N x K", "count", "path", "ms", "TFLOP/s", "vs cuBLAS", "rel diff"
    );
    let mut rows = Vec::new();
    for row in &bench.rows {
        let s = row.shape;
        let blas = row.paths.iter().find(|p| p.path == "cublas").map(|p| p.ms);
        for p in &row.paths {
            let ratio = blas.map(|b| b / p.ms);
            text += &format!(
                "{:>22} {:>5} {:>9} {:>10.4} {:>9.2} {:>10} {:>10.2e}\n",
                format!("{}x{}x{}", s.m, s.n, s.k),
                s.count,
                p.path,
                p.ms,
                p.tflops,
                ratio.map_or("-".into(), |r| format!("{r:.2}x")),
                p.rel_diff
            );
            rows.push(json!({
                "m": s.m, "n": s.n, "k": s.k, "count": s.count, "path": p.path,
                "ms": p.ms, "tflops": p.tflops, "speed_vs_cublas": ratio,
                "rel_diff_vs_mma_sync": if p.rel_diff.is_finite() { json!(p.rel_diff) } else { json!(null) },
            }));
        }
    }
    let peak = peak_tflops(&bench.device);
    let mut attn_rows = Vec::new();
    if !bench.attention.is_empty() {
        text += &format!(
            "attention kernels (cuBLAS has no attention; share of the dense FP16 peak {}):\n",
            peak.map_or("unknown for this device".into(), |p| format!("{p} TFLOP/s"))
        );
        text += &format!(
            "{:>52} {:>5} {:>9} {:>8} {:>10} {:>9} {:>6} {:>10} {:>10}\n",
            "shape", "count", "path", "CTAs", "ms", "TFLOP/s", "peak", "rel diff", "vs CPU"
        );
    }
    for row in &bench.attention {
        let s = row.shape;
        for p in &row.paths {
            let share = peak.map(|pk| p.tflops / pk);
            text += &format!(
                "{:>52} {:>5} {:>9} {:>8} {:>10.4} {:>9.2} {:>6} {:>10.2e} {:>10}\n",
                s.label(),
                s.count,
                p.path,
                p.ctas,
                p.ms,
                p.tflops,
                share.map_or("-".into(), |v| format!("{:.0}%", 100.0 * v)),
                p.rel_diff,
                p.rel_l2_cpu.map_or("-".into(), |e| format!("{e:.2e}"))
            );
            attn_rows.push(json!({
                "shape": s.label(), "count": s.count, "flops": s.flops(), "path": p.path,
                "kernel": p.kernel, "ctas": p.ctas,
                "unpacked_ctas": row.unpacked_ctas.map(|c| c * s.heads * s.batch),
                "ms": p.ms, "tflops": p.tflops, "share_of_peak": share,
                "rel_diff_vs_mma_sync": if p.rel_diff.is_finite() { json!(p.rel_diff) } else { json!(null) },
                "rel_l2_vs_cpu": p.rel_l2_cpu,
            }));
        }
        if let Some(u) = row.unpacked_ctas {
            text += &format!(
                "{:>52} window CTAs before the packed tile list: {}\n",
                "",
                u * s.heads * s.batch
            );
        }
    }
    let mut prologue_rows = Vec::new();
    if !bench.prologues.is_empty() {
        text += "norm + GEMM (compute capability 9.0): adaLN then the GEMM, against the GEMM \
                 forming A itself after a statistics pass (stats+ln) or from the residual \
                 GEMM's statistics (ln):\n";
        text += &format!(
            "{:>22} {:>5} {:>12} {:>10} {:>9} {:>12} {:>10}\n",
            "M x N x K", "count", "path", "ms", "TFLOP/s", "vs unfused", "rel diff"
        );
    }
    for row in &bench.prologues {
        let s = row.shape;
        let unfused = row.paths.first().map(|p| p.ms);
        for p in &row.paths {
            let speed = unfused.map(|u| u / p.ms);
            text += &format!(
                "{:>22} {:>5} {:>12} {:>10.4} {:>9.2} {:>12} {:>10.2e}\n",
                format!("{}x{}x{}", s.m, s.n, s.k),
                s.count,
                p.path,
                p.ms,
                p.tflops,
                speed.map_or("-".into(), |r| format!("{r:.2}x")),
                p.rel_diff
            );
            prologue_rows.push(json!({
                "m": s.m, "n": s.n, "k": s.k, "count": s.count, "path": p.path,
                "ms": p.ms, "tflops": p.tflops, "speed_vs_unfused": speed,
                "rel_diff_vs_unfused": if p.rel_diff.is_finite() { json!(p.rel_diff) } else { json!(null) },
            }));
        }
    }
    if let Some(path) = json_path {
        let report = json!({
            "device": bench.device,
            "cublas": bench.cublas.as_ref().ok(),
            "cublas_missing_reason": bench.cublas.as_ref().err(),
            "emulated": on == KernelDevice::Emulator,
            "reps": reps,
            "gemms": rows,
            "attention": attn_rows,
            "prologues": prologue_rows,
        });
        let json = serde_json::to_string_pretty(&report)
            .map_err(|e| Error::Invalid(format!("JSON report: {e}")))?;
        streamdit::files::write_atomic(path, json.as_bytes())?;
    }
    print_stdout(&text)
}

/// The best measured rate (FLOP/s) of the CPU backend's GEMM over the three largest linear
/// shapes of `graph`'s call, and those shapes as text.
pub(crate) fn cpu_gemm_peak(graph: &streamdit::inspect::Graph) -> (f64, String) {
    use streamdit::inspect::Op;
    let mut shapes: Vec<(usize, usize, usize)> = graph
        .call_ops
        .iter()
        .filter_map(|op| match *op {
            Op::Linear { x, w, .. } => {
                let (xs, ws) = (&graph.tensors[x].shape, &graph.tensors[w].shape);
                (xs.len() == 2 && ws.len() == 2).then(|| (xs[0], xs[1], ws[0]))
            }
            _ => None,
        })
        .collect();
    shapes.sort_by_key(|&(t, k, n)| std::cmp::Reverse(t * k * n));
    shapes.dedup();
    shapes.truncate(3);
    let peak = shapes
        .iter()
        .map(|&(t, k, n)| streamdit::inspect::cpu_linear_rate(t, k, n, 10))
        .fold(0.0, f64::max);
    let text = shapes
        .iter()
        .map(|(t, k, n)| format!("{t}x{k}x{n}"))
        .collect::<Vec<_>>()
        .join(", ");
    (peak, text)
}
