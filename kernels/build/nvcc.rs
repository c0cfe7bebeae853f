//! Compiling one module with nvcc: its PTX, a cubin per architecture with the `ptxas -v`
//! report of each kernel, and SASS instruction counts from `cuobjdump -sass`.
//!
//! Included by `build.rs` and by `tests/nvcc_gates.rs` (`#[path]`), so the test of the
//! Hopper-only rule compiles its fixture exactly as the build compiles a module.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The CUDA tools next to nvcc.
pub struct Tools {
    pub nvcc: PathBuf,
    pub ptxas: PathBuf,
    /// Absent: no SASS counts (the gates that need them say so).
    pub cuobjdump: Option<PathBuf>,
}

impl Tools {
    pub fn beside(nvcc: &Path) -> Tools {
        let bin = nvcc.parent().unwrap_or(Path::new("."));
        let cuobjdump = bin.join("cuobjdump");
        Tools {
            nvcc: nvcc.to_path_buf(),
            ptxas: bin.join("ptxas"),
            cuobjdump: cuobjdump.is_file().then_some(cuobjdump),
        }
    }

    /// `release 13.0, V13.0.88` from `nvcc --version`.
    pub fn version(&self) -> Result<String, String> {
        Ok(run(Command::new(&self.nvcc).arg("--version"))?
            .lines()
            .find(|l| l.contains("release"))
            .unwrap_or("unknown version")
            .trim()
            .to_string())
    }
}

/// What ptxas reported for one kernel on one architecture, and its SASS counts.
#[derive(Clone, Debug, Default)]
pub struct Resources {
    pub kernel: String,
    pub arch: String,
    pub registers: u32,
    pub shared_bytes: u32,
    pub stack_frame_bytes: u32,
    pub spill_store_bytes: u32,
    pub spill_load_bytes: u32,
    /// Whether the SASS was disassembled (the counts below are meaningful).
    pub sass: bool,
    pub hmma: u32,
    pub ldsm: u32,
    pub ldgsts: u32,
    pub ldg128: u32,
    /// Warpgroup mma (wgmma.mma_async) and TMA tensor loads (cp.async.bulk.tensor).
    pub hgmma: u32,
    pub utmaldg: u32,
    /// Named-barrier arrivals (bar.arrive id, count).
    pub bar_arv: u32,
    /// ptxas serialized the function's wgmma (its note C7518, "Potential Performance Loss:
    /// wgmma.mma_async instructions are serialized ...").
    pub wgmma_serialized: bool,
}

/// One compiled module: its PTX file, a cubin per architecture, and the per-kernel reports.
pub struct Compiled {
    pub ptx: PathBuf,
    pub cubins: Vec<(String, PathBuf)>,
    pub resources: Vec<Resources>,
}

/// Runs `cmd`; its stderr and stdout, or an error with both and the command line.
pub fn run(cmd: &mut Command) -> Result<String, String> {
    let shown = format!("{cmd:?}");
    let output = cmd
        .output()
        .map_err(|e| format!("cannot run {shown}: {e}"))?;
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    if !output.status.success() {
        let stdout = String::from_utf8_lossy(&output.stdout);
        let program = Path::new(cmd.get_program()).file_name().unwrap_or_default();
        return Err(format!(
            "{} failed ({}): {}\n{stdout}\ncommand: {shown}",
            program.to_string_lossy(),
            output.status,
            stderr.trim()
        ));
    }
    Ok(stderr + &String::from_utf8_lossy(&output.stdout))
}

/// Compiles `source` (module `name`) into `out`: `name.ptx` for `ptx_arch` (one nvcc
/// front-end run), then `name.<arch>.cubin` by ptxas for each of `cubins` (from that PTX,
/// or for an arch-specific target from PTX of the same target), with `ptxas -v` parsed, and
/// `cuobjdump -sass` counted for the archs in `sass`.
#[allow(clippy::too_many_arguments)]
pub fn compile_module(
    tools: &Tools,
    name: &str,
    source: &Path,
    include: &Path,
    cubins: &[&str],
    ptx_arch: &str,
    sass: &[&str],
    out: &Path,
) -> Result<Compiled, String> {
    let ptx = out.join(format!("{name}.ptx"));
    run(Command::new(&tools.nvcc)
        .args(["--ptx", "-std=c++17", &format!("-arch={ptx_arch}"), "-I"])
        .arg(include)
        .arg("-o")
        .arg(&ptx)
        .arg(source))?;
    let mut compiled = Compiled {
        ptx: ptx.clone(),
        cubins: Vec::new(),
        resources: Vec::new(),
    };
    for &arch in cubins {
        let cubin = out.join(format!("{name}.{arch}.cubin"));
        let report = run(Command::new(&tools.ptxas)
            .args(["-v", &format!("-arch={arch}"), "-o"])
            .arg(&cubin)
            .arg(&ptx))
        .map_err(|e| format!("{name}.cu for {arch}: {e}"))?;
        let mut table = parse_ptxas(&report, arch);
        if let (Some(cuobjdump), true) = (&tools.cuobjdump, sass.contains(&arch)) {
            let text = run(Command::new(cuobjdump).arg("-sass").arg(&cubin))?;
            count_sass(&text, &mut table);
        }
        compiled.resources.extend(table);
        compiled.cubins.push((arch.to_string(), cubin));
    }
    Ok(compiled)
}

fn number_before(text: &str, unit: &str) -> Option<u32> {
    let i = text.find(unit)?;
    text[..i].split_whitespace().last()?.parse().ok()
}

/// Reads `ptxas -v`: per entry function, "N bytes stack frame, N bytes spill stores, N bytes
/// spill loads" and "Used N registers, ..., N bytes smem".
pub fn parse_ptxas(report: &str, arch: &str) -> Vec<Resources> {
    let mut table: Vec<Resources> = Vec::new();
    let mut props_for: Option<String> = None;
    let mut serialized: Vec<String> = Vec::new();
    for line in report.lines() {
        if let Some(rest) = line.split("Compiling entry function '").nth(1) {
            let name = rest.split('\'').next().unwrap_or_default().to_string();
            table.push(Resources {
                kernel: name,
                arch: arch.to_string(),
                ..Default::default()
            });
        } else if let Some(rest) = line.split("Function properties for ").nth(1) {
            props_for = Some(rest.trim().to_string());
        } else if line.contains("bytes stack frame") {
            let target = props_for.take();
            if let Some(r) = table
                .iter_mut()
                .rev()
                .find(|r| Some(&r.kernel) == target.as_ref())
            {
                r.stack_frame_bytes = number_before(line, "bytes stack frame").unwrap_or(0);
                r.spill_store_bytes = number_before(line, "bytes spill stores").unwrap_or(0);
                r.spill_load_bytes = number_before(line, "bytes spill loads").unwrap_or(0);
            }
        } else if line.contains("wgmma.mma_async instructions are serialized") {
            // "... in the function 'NAME'": possibly before the function's own report.
            let name = line
                .split("in the function '")
                .nth(1)
                .and_then(|r| r.split('\'').next());
            if let Some(name) = name {
                if let Some(r) = table.iter_mut().find(|r| r.kernel == name) {
                    r.wgmma_serialized = true;
                } else {
                    serialized.push(name.to_string());
                }
            }
        } else if line.contains("Used") && line.contains("registers") {
            if let Some(r) = table.last_mut() {
                r.registers = number_before(line, "registers").unwrap_or(0);
                r.shared_bytes = number_before(line, "bytes smem").unwrap_or(0);
            }
        }
    }
    for r in &mut table {
        if serialized.contains(&r.kernel) {
            r.wgmma_serialized = true;
        }
    }
    table
}

/// Counts, per function in `cuobjdump -sass`, the instructions the quality gates look for:
/// HMMA (tensor core mma), LDSM (ldmatrix), LDGSTS (cp.async), 128-bit global loads, and on
/// sm_90a HGMMA (wgmma.mma_async) and UTMALDG (cp.async.bulk.tensor loads).
pub fn count_sass(sass: &str, table: &mut [Resources]) {
    let mut current: Option<usize> = None;
    for line in sass.lines() {
        if let Some(rest) = line.split("Function : ").nth(1) {
            let name = rest.trim();
            current = table.iter().position(|r| r.kernel == name);
            if let Some(i) = current {
                table[i].sass = true;
            }
            continue;
        }
        let Some(i) = current else { continue };
        let Some(code) = line.split("*/").nth(1) else {
            continue;
        };
        let mut tokens = code.split_whitespace();
        let mut op = tokens.next().unwrap_or_default();
        if op.starts_with('@') {
            op = tokens.next().unwrap_or_default(); // after the predicate
        }
        let r = &mut table[i];
        if op.starts_with("HMMA") {
            r.hmma += 1;
        } else if op.starts_with("LDSM") {
            r.ldsm += 1;
        } else if op.starts_with("LDGSTS") {
            r.ldgsts += 1;
        } else if op.starts_with("LDG") && op.contains(".128") {
            r.ldg128 += 1;
        } else if op.starts_with("HGMMA") {
            r.hgmma += 1;
        } else if op.starts_with("UTMALDG") {
            r.utmaldg += 1;
        } else if op.starts_with("BAR.ARV") {
            r.bar_arv += 1;
        }
    }
}
