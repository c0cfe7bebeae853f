//! Builds the kernels twice:
//! 1. the CUDA-on-CPU emulator: every `cuda/*.cu` compiled as C++17 by the host compiler
//!    (after `emu/cuda_emu.h`) into one static library with the runtime `emu/*.cpp`; each
//!    file a second time instrumented for the race checker (`-fsanitize=thread`, kernels
//!    renamed inside a namespace), and once more per `// streamdit-emu-variant: NAME` line
//!    with `EMU_VARIANT_<NAME>` defined (test-only variants, e.g. a planted race);
//! 2. with nvcc, when one is found: PTX for sm_80, and `ptxas -v` for sm_80 and sm_90, whose
//!    report (registers, shared memory, spills) becomes `KERNEL_RESOURCES`. Modules whose
//!    first line is `// streamdit-arch: sm_90a` are skipped (they need another target).
//!
//! Without nvcc the build succeeds and the generated code says why the kernels were not
//! built. Everything is written to `$OUT_DIR/kernels_generated.rs`.

use std::env;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Architectures ptxas checks; PTX is generated for the first.
const ARCHS: [&str; 2] = ["sm_80", "sm_90"];

#[derive(Clone)]
struct Module {
    name: String,
    source: PathBuf,
    emu_kernels: Vec<String>,
    /// `// streamdit-arch: sm_90a` on the first line: nvcc must not build it for sm_80.
    arch: Option<String>,
    /// `// streamdit-emu-variant: NAME` lines.
    variants: Vec<String>,
}

#[derive(Default)]
struct Resources {
    kernel: String,
    arch: String,
    registers: u32,
    shared_bytes: u32,
    stack_frame_bytes: u32,
    spill_store_bytes: u32,
    spill_load_bytes: u32,
    hmma: u32,
    ldsm: u32,
    ldgsts: u32,
    ldg128: u32,
}

fn main() {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("cargo sets this"));
    let out = PathBuf::from(env::var("OUT_DIR").expect("cargo sets this"));
    let cuda_dir = manifest.join("cuda");
    let emu_dir = manifest.join("emu");

    for var in ["CUDA_HOME", "CUDA_PATH", "STREAMDIT_NVCC", "NVCC_CCBIN"] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    println!("cargo:rerun-if-changed={}", cuda_dir.display());
    println!("cargo:rerun-if-changed={}", emu_dir.display());
    let mut watched = Vec::new();
    collect_files(&cuda_dir, &mut watched);
    collect_files(&emu_dir, &mut watched);
    for f in &watched {
        println!("cargo:rerun-if-changed={}", f.display());
    }

    let modules = find_modules(&cuda_dir);
    build_emulator(&modules, &emu_dir, &cuda_dir, &out);
    // Modules marked for another architecture (sm_90a) are emulated but not built for sm_80.
    let modules: Vec<Module> = modules.into_iter().filter(|m| m.arch.is_none()).collect();

    let nvcc = find_nvcc(&manifest);
    if let Ok(path) = &nvcc {
        println!("cargo:rerun-if-changed={}", path.display());
    }
    let outcome = nvcc.and_then(|nvcc| build_ptx(&nvcc, &modules, &cuda_dir, &out));
    if let Err(reason) = &outcome {
        let first = reason.lines().next().unwrap_or_default();
        println!("cargo:warning=CUDA kernels not built: {first}");
    }
    let generated = generate(&modules, &outcome);
    fs::write(out.join("kernels_generated.rs"), generated).expect("write OUT_DIR");
}

fn collect_files(dir: &Path, acc: &mut Vec<PathBuf>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    paths.sort();
    for p in paths {
        if p.is_dir() {
            collect_files(&p, acc);
        } else {
            acc.push(p);
        }
    }
}

/// `cuda/*.cu`, each a module; its `EMU_REGISTER_KERNEL(name, Params)` lines name the
/// kernels the emulator can launch.
fn find_modules(cuda_dir: &Path) -> Vec<Module> {
    let mut files = Vec::new();
    collect_files(cuda_dir, &mut files);
    files
        .into_iter()
        .filter(|p| p.parent() == Some(cuda_dir) && p.extension().is_some_and(|e| e == "cu"))
        .map(|source| {
            let text = fs::read_to_string(&source).unwrap_or_default();
            let emu_kernels = text
                .lines()
                .filter_map(|l| l.trim().strip_prefix("EMU_REGISTER_KERNEL("))
                .filter_map(|rest| rest.split(',').next())
                .map(|name| name.trim().to_string())
                .collect();
            let name = source
                .file_stem()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned();
            let arch = text
                .lines()
                .next()
                .and_then(|l| l.trim().strip_prefix("// streamdit-arch:"))
                .map(|a| a.trim().to_string());
            let variants = text
                .lines()
                .filter_map(|l| l.trim().strip_prefix("// streamdit-emu-variant:"))
                .filter_map(|rest| rest.split_whitespace().next())
                .map(str::to_string)
                .collect();
            Module {
                name,
                source,
                emu_kernels,
                arch,
                variants,
            }
        })
        .collect()
}

/// The `#include <...>` lines of every source under `cuda/`: the instrumented copies include
/// them before opening their namespace, so that a .cu file's own includes of them are no-ops.
fn system_includes(cuda_dir: &Path) -> String {
    let mut files = Vec::new();
    collect_files(cuda_dir, &mut files);
    let mut seen = std::collections::BTreeSet::new();
    for f in files {
        let text = fs::read_to_string(&f).unwrap_or_default();
        for l in text.lines() {
            let l = l.trim();
            if l.starts_with("#include <") {
                seen.insert(l.to_string());
            }
        }
    }
    seen.into_iter().map(|l| l + "\n").collect()
}

/// A wrapper that compiles `m` inside namespace `ns` with each kernel renamed `prefix<name>`.
fn instrumented_wrapper(
    m: &Module,
    defines: &str,
    includes: &str,
    ns: &str,
    prefix: &str,
) -> String {
    let mut text = format!("{defines}#include \"cuda_emu.h\"\n{includes}");
    for k in &m.emu_kernels {
        let _ = writeln!(text, "#define {k} {prefix}{k}");
    }
    let _ = write!(
        text,
        "namespace {ns} {{\n// The kernels' block-scope `extern __shared__ ... smem[]` names the runtime's.\n\
         extern thread_local unsigned char smem[] __asm__(\"smem\");\n#include \"{}\"\n}}\n",
        m.source.display().to_string().replace('\\', "/")
    );
    text
}

fn build_emulator(modules: &[Module], emu_dir: &Path, cuda_dir: &Path, out: &Path) {
    let base = || {
        let mut build = cc::Build::new();
        build
            .cpp(true)
            .std("c++17")
            .opt_level(2)
            .include(emu_dir)
            .include(emu_dir.join("shim"))
            .include(cuda_dir)
            .flag_if_supported("-Wno-unused-parameter")
            // 64-byte aligned parameter structs (tensor maps): only a note on an old ABI change
            .flag_if_supported("-Wno-psabi");
        build
    };
    let mut build = base();
    let mut runtime = Vec::new();
    collect_files(emu_dir, &mut runtime);
    for f in runtime
        .iter()
        .filter(|p| p.parent() == Some(emu_dir) && p.extension().is_some_and(|e| e == "cpp"))
    {
        build.file(f);
    }
    // The race-checking copies and the test-only variants: every memory access instrumented.
    let mut instrumented = base();
    instrumented.flag("-fsanitize=thread");
    let includes = system_includes(cuda_dir);
    let mut registry = String::from("#include \"emu_runtime.h\"\nextern \"C\" {\n");
    let mut entries = String::new();
    let mut variant_decls = String::new();
    let mut variant_entries = String::new();
    let mut variant_count = 0usize;
    for m in modules {
        // A .cu file is compiled as C++ after the dialect header; this wrapper keeps the
        // original path in diagnostics.
        let wrapper = out.join(format!("emu_{}.cpp", m.name));
        let text = format!(
            "#include \"cuda_emu.h\"\n#include \"{}\"\n",
            m.source.display().to_string().replace('\\', "/")
        );
        fs::write(&wrapper, text).expect("write OUT_DIR");
        build.file(wrapper);
        let rc = out.join(format!("emu_rc_{}.cpp", m.name));
        let text = instrumented_wrapper(
            m,
            "#define EMU_RACECHECK_BUILD 1\n",
            &includes,
            &format!("emu_rc_{}", m.name),
            "emu_rc_",
        );
        fs::write(&rc, text).expect("write OUT_DIR");
        instrumented.file(rc);
        for v in &m.variants {
            let ns = format!("emu_var_{}_{v}", m.name);
            let path = out.join(format!("{ns}.cpp"));
            let text = instrumented_wrapper(
                m,
                &format!("#define EMU_VARIANT_NAME \"{v}\"\n#define EMU_VARIANT_{v} 1\n"),
                &includes,
                &ns,
                &format!("{ns}_"),
            );
            fs::write(&path, text).expect("write OUT_DIR");
            instrumented.file(path);
            let _ = writeln!(variant_decls, "namespace {ns} {{");
            for k in &m.emu_kernels {
                let _ = writeln!(
                    variant_decls,
                    "extern const EmuKernel emu_variant_kernel_{k};"
                );
                let _ = write!(variant_entries, "&{ns}::emu_variant_kernel_{k}, ");
                variant_count += 1;
            }
            variant_decls.push_str("}\n");
        }
        for k in &m.emu_kernels {
            let _ = writeln!(registry, "extern const EmuKernel emu_kernel_{k};");
            let _ = write!(entries, "&emu_kernel_{k}, ");
        }
    }
    let count = modules.iter().map(|m| m.emu_kernels.len()).sum::<usize>();
    let _ = write!(
        registry,
        "extern const EmuKernel* const emu_kernel_table[];\n\
         const EmuKernel* const emu_kernel_table[] = {{{entries}nullptr}};\n\
         extern const size_t emu_kernel_table_len;\n\
         const size_t emu_kernel_table_len = {count};\n}}\n{variant_decls}extern \"C\" {{\n\
         extern const EmuKernel* const emu_variant_table[];\n\
         const EmuKernel* const emu_variant_table[] = {{{variant_entries}nullptr}};\n\
         extern const size_t emu_variant_table_len;\n\
         const size_t emu_variant_table_len = {variant_count};\n}}\n"
    );
    let registry_path = out.join("emu_registry.cpp");
    fs::write(&registry_path, registry).expect("write OUT_DIR");
    build.file(registry_path);
    for object in instrumented.compile_intermediates() {
        build.object(object);
    }
    build.compile("streamdit_kernels_emu");
}

/// nvcc from `STREAMDIT_NVCC`, `CUDA_HOME`/`CUDA_PATH`, `PATH`, or the PyPI wheels in
/// `<repo>/.venv` (kernels/scripts/install-nvcc.sh).
fn find_nvcc(manifest: &Path) -> Result<PathBuf, String> {
    if let Some(p) = env::var_os("STREAMDIT_NVCC") {
        let p = PathBuf::from(p);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(format!("STREAMDIT_NVCC={} is not a file", p.display()))
        };
    }
    let mut candidates = Vec::new();
    for var in ["CUDA_HOME", "CUDA_PATH"] {
        if let Some(home) = env::var_os(var) {
            candidates.push(PathBuf::from(home).join("bin").join("nvcc"));
        }
    }
    if let Some(path) = env::var_os("PATH") {
        candidates.extend(env::split_paths(&path).map(|d| d.join("nvcc")));
    }
    if let Some(repo) = manifest.parent() {
        let lib = repo.join(".venv").join("lib");
        let mut pythons: Vec<PathBuf> = fs::read_dir(&lib)
            .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default();
        pythons.sort();
        for py in pythons.iter().rev() {
            candidates.push(py.join("site-packages/nvidia/cu13/bin/nvcc"));
        }
    }
    candidates.into_iter().find(|p| p.is_file()).ok_or_else(|| {
        "nvcc not found in $STREAMDIT_NVCC, $CUDA_HOME/bin, $CUDA_PATH/bin, PATH or \
         <repo>/.venv (run kernels/scripts/install-nvcc.sh)"
            .to_string()
    })
}

fn run(cmd: &mut Command) -> Result<String, String> {
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

struct Built {
    nvcc: String,
    version: String,
    resources: Vec<(String, Resources)>,
}

fn build_ptx(
    nvcc: &Path,
    modules: &[Module],
    cuda_dir: &Path,
    out: &Path,
) -> Result<Built, String> {
    let bin = nvcc.parent().unwrap_or(Path::new("."));
    let ptxas = bin.join("ptxas");
    let cuobjdump = bin.join("cuobjdump");
    let version = run(Command::new(nvcc).arg("--version"))?
        .lines()
        .find(|l| l.contains("release"))
        .unwrap_or("unknown version")
        .trim()
        .to_string();
    let mut resources = Vec::new();
    for m in modules {
        let ptx = out.join(format!("{}.ptx", m.name));
        run(Command::new(nvcc)
            .args(["--ptx", "-std=c++17", "-arch=sm_80", "-I"])
            .arg(cuda_dir)
            .arg("-o")
            .arg(&ptx)
            .arg(&m.source))?;
        for arch in ARCHS {
            let cubin = out.join(format!("{}.{arch}.cubin", m.name));
            let report = run(Command::new(&ptxas)
                .args(["-v", &format!("-arch={arch}"), "-o"])
                .arg(&cubin)
                .arg(&ptx))?;
            let mut table = parse_ptxas(&report, arch);
            if cuobjdump.is_file() {
                let sass = run(Command::new(&cuobjdump).arg("-sass").arg(&cubin))?;
                count_sass(&sass, &mut table);
            }
            resources.extend(table.into_iter().map(|r| (m.name.clone(), r)));
        }
    }
    Ok(Built {
        nvcc: nvcc.display().to_string(),
        version,
        resources,
    })
}

fn number_before(text: &str, unit: &str) -> Option<u32> {
    let i = text.find(unit)?;
    text[..i].split_whitespace().last()?.parse().ok()
}

/// Reads `ptxas -v`: per entry function, "N bytes stack frame, N bytes spill stores, N bytes
/// spill loads" and "Used N registers, ..., N bytes smem".
fn parse_ptxas(report: &str, arch: &str) -> Vec<Resources> {
    let mut table: Vec<Resources> = Vec::new();
    let mut props_for: Option<String> = None;
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
        } else if line.contains("Used") && line.contains("registers") {
            if let Some(r) = table.last_mut() {
                r.registers = number_before(line, "registers").unwrap_or(0);
                r.shared_bytes = number_before(line, "bytes smem").unwrap_or(0);
            }
        }
    }
    table
}

/// Counts, per function in `cuobjdump -sass`, the instructions the quality gates look for:
/// HMMA (tensor core mma), LDSM (ldmatrix), LDGSTS (cp.async), 128-bit global loads.
fn count_sass(sass: &str, table: &mut [Resources]) {
    let mut current: Option<usize> = None;
    for line in sass.lines() {
        if let Some(rest) = line.split("Function : ").nth(1) {
            let name = rest.trim();
            current = table.iter().position(|r| r.kernel == name);
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
        }
    }
}

fn generate(modules: &[Module], outcome: &Result<Built, String>) -> String {
    let mut g = String::from("// @generated by kernels/build.rs\n");
    let names: Vec<&str> = modules.iter().map(|m| m.name.as_str()).collect();
    let _ = writeln!(g, "/// The modules (`kernels/cuda/*.cu`), by file stem.");
    let _ = writeln!(g, "pub static MODULES: &[&str] = &{names:?};");
    match outcome {
        Ok(built) => {
            let _ = writeln!(
                g,
                "/// What build.rs did with nvcc.\npub static BUILD_STATUS: BuildStatus = \
                 BuildStatus::Built {{ nvcc: {:?}, version: {:?} }};",
                built.nvcc, built.version
            );
            let _ = writeln!(g, "/// ptxas -v per kernel and architecture.");
            let _ = writeln!(g, "pub static KERNEL_RESOURCES: &[KernelResources] = &[");
            for (module, r) in &built.resources {
                let _ = writeln!(
                    g,
                    "    KernelResources {{ module: {module:?}, kernel: {:?}, arch: {:?}, \
                     registers: {}, shared_bytes: {}, stack_frame_bytes: {}, \
                     spill_store_bytes: {}, spill_load_bytes: {}, hmma: {}, ldsm: {}, \
                     ldgsts: {}, ldg128: {} }},",
                    r.kernel,
                    r.arch,
                    r.registers,
                    r.shared_bytes,
                    r.stack_frame_bytes,
                    r.spill_store_bytes,
                    r.spill_load_bytes,
                    r.hmma,
                    r.ldsm,
                    r.ldgsts,
                    r.ldg128
                );
            }
            let _ = writeln!(g, "];");
            let _ = writeln!(g, "fn ptx_source(module: &str) -> Option<&'static str> {{");
            let _ = writeln!(g, "    match module {{");
            for m in modules {
                let _ = writeln!(
                    g,
                    "        {:?} => Some(include_str!(concat!(env!(\"OUT_DIR\"), \"/{}.ptx\"))),",
                    m.name, m.name
                );
            }
            let _ = writeln!(g, "        _ => None,\n    }}\n}}");
        }
        Err(reason) => {
            let _ = writeln!(
                g,
                "/// What build.rs did with nvcc.\npub static BUILD_STATUS: BuildStatus = \
                 BuildStatus::NotBuilt {{ reason: {reason:?} }};"
            );
            let _ = writeln!(
                g,
                "/// ptxas -v per kernel and architecture (none: not built)."
            );
            let _ = writeln!(g, "pub static KERNEL_RESOURCES: &[KernelResources] = &[];");
            let _ = writeln!(
                g,
                "fn ptx_source(_module: &str) -> Option<&'static str> {{ None }}"
            );
        }
    }
    g
}
