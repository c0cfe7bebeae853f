//! Builds the kernels twice:
//! 1. the CUDA-on-CPU emulator: every `cuda/*.cu` compiled as C++17 by the host compiler
//!    (after `emu/cuda_emu.h`) into one static library with the runtime `emu/*.cpp`; each
//!    file a second time instrumented for the race checker (`-fsanitize=thread`, kernels
//!    renamed inside a namespace), and once more per `// streamdit-emu-variant: NAME` line
//!    with `EMU_VARIANT_<NAME>` defined (test-only variants, e.g. a planted race);
//! 2. with nvcc, when one is found: per module the images a device loads (`src/arch.rs`
//!    decides which): a cubin per real architecture (sm_80, sm_86, sm_89, sm_90; sm_90a
//!    only for modules marked Hopper-only by `// streamdit-arch: sm_90a` on their first
//!    line) and PTX as the JIT fallback for other architectures, plus the `ptxas -v` report
//!    of every cubin and the SASS counts of some (`KERNEL_RESOURCES`, read by the gates).
//!
//! The emulator and the nvcc modules compile concurrently (`NUM_JOBS` threads for nvcc).
//! Without nvcc the build succeeds and the generated code says why the kernels were not
//! built. Everything is written to `$OUT_DIR/kernels_generated.rs`.

use std::env;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

#[allow(dead_code)]
#[path = "src/arch.rs"]
mod arch;
#[path = "build/generate.rs"]
mod generate;
#[path = "build/nvcc.rs"]
mod nvcc;

/// One `cuda/*.cu` file.
#[derive(Clone)]
pub struct Module {
    pub name: String,
    pub source: PathBuf,
    pub emu_kernels: Vec<String>,
    /// What nvcc makes of it (from its first line).
    pub targets: arch::Targets,
    /// `// streamdit-emu-variant: NAME` lines.
    pub variants: Vec<String>,
}

/// One module compiled by nvcc.
pub struct BuiltModule {
    pub ptx: PathBuf,
    /// `.version` of the PTX.
    pub ptx_isa: (u32, u32),
    pub cubins: Vec<(String, PathBuf)>,
    pub resources: Vec<nvcc::Resources>,
}

/// Every module compiled by nvcc.
pub struct Built {
    pub nvcc: String,
    pub version: String,
    /// In the order of the module list.
    pub modules: Vec<BuiltModule>,
}

fn main() {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("cargo sets this"));
    let out = PathBuf::from(env::var("OUT_DIR").expect("cargo sets this"));
    let cuda_dir = manifest.join("cuda");
    let emu_dir = manifest.join("emu");

    for var in ["CUDA_HOME", "CUDA_PATH", "STREAMDIT_NVCC", "NVCC_CCBIN"] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    let mut watched = vec![manifest.join("src/arch.rs")];
    for dir in [&cuda_dir, &emu_dir, &manifest.join("build")] {
        println!("cargo:rerun-if-changed={}", dir.display());
        collect_files(dir, &mut watched);
    }
    for f in &watched {
        println!("cargo:rerun-if-changed={}", f.display());
    }

    let modules = match find_modules(&cuda_dir) {
        Ok(m) => m,
        Err(e) => panic!("kernels/cuda: {e}"),
    };
    let nvcc = find_nvcc(&manifest);
    if let Ok(path) = &nvcc {
        println!("cargo:rerun-if-changed={}", path.display());
    }
    // The emulator (one host compiler job) and the nvcc modules run side by side.
    let outcome = std::thread::scope(|s| {
        let emulator = s.spawn(|| build_emulator(&modules, &emu_dir, &cuda_dir, &out));
        let outcome = nvcc.and_then(|nvcc| build_modules(&nvcc, &modules, &cuda_dir, &out));
        if let Err(panic) = emulator.join() {
            std::panic::resume_unwind(panic);
        }
        outcome
    });
    match &outcome {
        Err(reason) => {
            let first = reason.lines().next().unwrap_or_default();
            println!("cargo:warning=CUDA kernels not built: {first}");
        }
        Ok(built) => {
            let (major, minor) = arch::OLDEST_DRIVER_PTX_ISA;
            if let Some(m) = built.modules.iter().find(|m| m.ptx_isa > (major, minor)) {
                println!(
                    "cargo:warning=the PTX is ISA {}.{} ({}): a CUDA 13.0 driver JITs at most \
                     {major}.{minor}; kernels/scripts/install-nvcc.sh installs the pinned nvcc",
                    m.ptx_isa.0, m.ptx_isa.1, built.version
                );
            }
        }
    }
    let generated = generate::generate(&modules, &outcome);
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
/// kernels the emulator can launch, its first line its nvcc targets (`src/arch.rs`).
fn find_modules(cuda_dir: &Path) -> Result<Vec<Module>, String> {
    let mut files = Vec::new();
    collect_files(cuda_dir, &mut files);
    files
        .into_iter()
        .filter(|p| p.parent() == Some(cuda_dir) && p.extension().is_some_and(|e| e == "cu"))
        .map(|source| {
            let text =
                fs::read_to_string(&source).map_err(|e| format!("{}: {e}", source.display()))?;
            let targets =
                arch::targets_of(&text).map_err(|e| format!("{}: {e}", source.display()))?;
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
            let variants = text
                .lines()
                .filter_map(|l| l.trim().strip_prefix("// streamdit-emu-variant:"))
                .filter_map(|rest| rest.split_whitespace().next())
                .map(str::to_string)
                .collect();
            Ok(Module {
                name,
                source,
                emu_kernels,
                targets,
                variants,
            })
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

/// Compiles every module with nvcc on `NUM_JOBS` threads (each takes the next module).
fn build_modules(
    nvcc_path: &Path,
    modules: &[Module],
    cuda_dir: &Path,
    out: &Path,
) -> Result<Built, String> {
    let tools = nvcc::Tools::beside(nvcc_path);
    let version = tools.version()?;
    let jobs = env::var("NUM_JOBS")
        .ok()
        .and_then(|j| j.parse::<usize>().ok())
        .unwrap_or(1)
        .clamp(1, modules.len().max(1));
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<Result<BuiltModule, String>>>> =
        Mutex::new((0..modules.len()).map(|_| None).collect());
    std::thread::scope(|s| {
        for _ in 0..jobs {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(m) = modules.get(i) else { break };
                let result = build_module(&tools, m, cuda_dir, out);
                results.lock().expect("no worker panics")[i] = Some(result);
            });
        }
    });
    let modules = results
        .into_inner()
        .expect("no worker panics")
        .into_iter()
        .map(|r| r.expect("every module taken"))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Built {
        nvcc: nvcc_path.display().to_string(),
        version,
        modules,
    })
}

fn build_module(
    tools: &nvcc::Tools,
    m: &Module,
    cuda_dir: &Path,
    out: &Path,
) -> Result<BuiltModule, String> {
    let t = m.targets;
    let compiled = nvcc::compile_module(
        tools, &m.name, &m.source, cuda_dir, t.cubins, t.ptx, t.sass, out,
    )?;
    let text = fs::read_to_string(&compiled.ptx).map_err(|e| format!("{}: {e}", m.name))?;
    let (ptx_isa, target) = arch::ptx_header(&text)
        .ok_or_else(|| format!("{}.ptx: no .version / .target header", m.name))?;
    if target != t.ptx {
        return Err(format!(
            "{}.ptx: .target {target}, expected {}",
            m.name, t.ptx
        ));
    }
    Ok(BuiltModule {
        ptx: compiled.ptx,
        ptx_isa,
        cubins: compiled.cubins,
        resources: compiled.resources,
    })
}
