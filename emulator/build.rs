//! Build step of the emulated CUDA device (docs/emulator.md), called by the crate's build.rs after nvcc: every
//! `kernels/*.cu` and `*.cuh` passed through `transform.rs` and compiled for the host with g++ (its memory
//! accesses instrumented by `-fsanitize=thread`, whose hooks the emulator's runtime defines), one shared library
//! per module; the emulator itself (`emulator/*.cpp`) as `libcuda.so`; and `libcublas.so` / `libcublasLt.so`
//! as empty libraries that depend on it. `HOURGLASS_CUDA=emulator` loads them in place of NVIDIA's.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};

#[path = "planted.rs"]
mod planted;
#[path = "selftest.rs"]
mod selftest;
#[path = "transform.rs"]
mod transform;

/// The emulator's own sources, in link order (those present: the emulator is built in parts).
const EMULATOR_SOURCES: &[&str] = &[
    "runtime.cpp",
    "ptx.cpp",
    "ptx_selftest.cpp",
    "driver.cpp",
    "blas.cpp",
];

const CXX_FLAGS: &[&str] = &["-std=c++17", "-fPIC", "-pthread", "-Wall", "-Wextra", "-g0"];

/// Kernels compiled for the host: every load and store reports to the runtime's sanitizer; no FMA contraction
/// (the CPU reference does not contract either).
const KERNEL_FLAGS: &[&str] = &[
    "-O1",
    "-ffp-contract=off",
    "-fsanitize=thread",
    "--param=tsan-instrument-func-entry-exit=0",
    "-Wno-unknown-pragmas",
];

/// A kernels module: its name, source, and the PTX nvcc made of it.
pub struct Module {
    pub name: String,
    pub source: PathBuf,
    pub ptx: PathBuf,
}

/// Builds the emulator into `out/emulator` and returns that directory; `Err` says why it could not be built
/// (no g++, not x86-64 Linux, a compile error), which the caller reports as a warning.
pub fn build(root: &Path, out: &Path, modules: &[Module]) -> Result<PathBuf, String> {
    if !(cfg!(target_os = "linux") && cfg!(target_arch = "x86_64")) {
        return Err("the emulated device is built on x86-64 Linux only".into());
    }
    let cxx = std::env::var("CXX").unwrap_or_else(|_| "g++".into());
    let emu = root.join("emulator");
    let dir = out.join("emulator");
    let src = dir.join("src");
    let obj = dir.join("obj");
    for d in [&dir, &src, &obj] {
        std::fs::create_dir_all(d).map_err(|e| format!("{}: {e}", d.display()))?;
    }

    // Transformed kernel sources: headers as they are included, each .cu with its module's registry.
    let kernels = root.join("kernels");
    let mut entries_of = std::collections::HashMap::new();
    for m in modules {
        let ptx =
            std::fs::read_to_string(&m.ptx).map_err(|e| format!("{}: {e}", m.ptx.display()))?;
        entries_of.insert(m.source.clone(), (ptx_entries(&ptx), ptx_globals(&ptx)));
    }
    for entry in std::fs::read_dir(&kernels).map_err(|e| e.to_string())? {
        let path = entry.map_err(|e| e.to_string())?.path();
        let Some(ext) = path.extension().and_then(|e| e.to_str()) else {
            continue;
        };
        if ext != "cu" && ext != "cuh" {
            continue;
        }
        let text =
            std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let name = path.file_stem().unwrap().to_string_lossy().to_string();
        let (entries, globals) = entries_of.get(&path).cloned().unwrap_or_default();
        let host = transform::host_source(&name, &text, &entries, &globals)
            .map_err(|e| format!("transforming {}: {e}", path.display()))?;
        let file = path.file_name().unwrap();
        let target = src.join(if ext == "cu" {
            format!("{}.cpp", name)
        } else {
            file.to_string_lossy().into()
        });
        write_if_changed(&target, &host)?;
    }

    // libcuda.so: the emulator.
    let mut jobs = Vec::new();
    let mut objects = Vec::new();
    for s in EMULATOR_SOURCES {
        let source = emu.join(s);
        if !source.exists() {
            continue;
        }
        let o = obj.join(format!("{s}.o"));
        let mut c = Command::new(&cxx);
        c.args(CXX_FLAGS)
            .arg("-O2")
            .arg("-I")
            .arg(&emu)
            .arg("-c")
            .arg(&source)
            .arg("-o")
            .arg(&o);
        jobs.push((format!("emulator/{s}"), c));
        objects.push(o);
    }
    run_parallel(jobs)?;
    let libcuda = dir.join("libcuda.so");
    let mut link = Command::new(&cxx);
    link.arg("-shared")
        .args(&objects)
        .arg("-o")
        .arg(&libcuda)
        .args(["-Wl,-soname,libcuda.so", "-ldl", "-pthread"]);
    run("linking libcuda.so", link)?;

    // libcublas.so, libcublasLt.so: nothing of their own, libcuda.so as a dependency.
    let empty = obj.join("empty.c");
    write_if_changed(
        &empty,
        "/* symbols come from libcuda.so (emulator/blas.cpp) */\n",
    )?;
    let mut jobs = Vec::new();
    for lib in ["libcublas.so", "libcublasLt.so"] {
        let mut c = Command::new(&cxx);
        c.arg("-shared")
            .args(["-x", "c"])
            .arg(&empty)
            .arg("-o")
            .arg(dir.join(lib))
            .arg(format!("-Wl,-soname,{lib}"));
        link_against_libcuda(&mut c, &dir);
        jobs.push((lib.to_string(), c));
    }

    // One library per kernels module: compiled with the sanitizer's instrumentation, linked without libtsan
    // (libcuda.so defines the hooks).
    for m in modules {
        let cpp = src.join(format!("{}.cpp", m.name));
        let o = obj.join(format!("kernels_{}.o", m.name));
        let c = compile_kernels(&cxx, &emu, &[&src], &cpp, &o);
        jobs.push((format!("kernels/{}.cu (host build)", m.name), c));
    }
    run_parallel(jobs)?;
    let mut jobs = Vec::new();
    for m in modules {
        let mut c = Command::new(&cxx);
        c.arg("-shared")
            .arg(obj.join(format!("kernels_{}.o", m.name)))
            .arg("-o")
            .arg(dir.join(format!("libhgemu_kernels_{}.so", m.name)));
        link_against_libcuda(&mut c, &dir);
        jobs.push((
            format!("linking the host build of kernels/{}.cu", m.name),
            c,
        ));
    }
    run_parallel(jobs)?;
    selftest::build(&cxx, &emu, &dir, &obj)?;
    planted::build(&cxx, root, &emu, &dir, &src, modules)?;
    Ok(dir)
}

/// The host build of one transformed kernels file: instrumented for the sanitizer, the shim force-included,
/// `includes` (transformed headers) first on the include path.
fn compile_kernels(cxx: &str, emu: &Path, includes: &[&Path], cpp: &Path, o: &Path) -> Command {
    let mut c = Command::new(cxx);
    c.args(CXX_FLAGS)
        .args(KERNEL_FLAGS)
        .arg("-include")
        .arg(emu.join("shim/cuda_shim.h"));
    for dir in includes {
        c.arg("-I").arg(dir);
    }
    c.arg("-I")
        .arg(emu.join("shim"))
        .arg("-I")
        .arg(emu)
        .arg("-c")
        .arg(cpp)
        .arg("-o")
        .arg(o);
    c
}

fn link_against_libcuda(c: &mut Command, dir: &Path) {
    c.arg("-L")
        .arg(dir)
        .args(["-Wl,--no-as-needed", "-lcuda", "-Wl,-rpath,$ORIGIN"]);
}

/// `.entry` names of a PTX module.
fn ptx_entries(ptx: &str) -> Vec<String> {
    ptx.lines()
        .filter_map(|l| l.split(".entry ").nth(1))
        .map(|rest| {
            rest.split(|c: char| c == '(' || c.is_whitespace())
                .next()
                .unwrap_or("")
                .to_string()
        })
        .filter(|n| !n.is_empty())
        .collect()
}

/// Module-scope `.const` / `.global` variable names of a PTX module (what `cuModuleGetGlobal` can find).
fn ptx_globals(ptx: &str) -> Vec<String> {
    ptx.lines()
        .filter(|l| !l.starts_with(char::is_whitespace))
        .filter(|l| {
            let words: Vec<&str> = l.split_whitespace().collect();
            words
                .iter()
                .take(3)
                .any(|w| *w == ".const" || *w == ".global")
        })
        .filter_map(|l| {
            let decl = l.split([';', '[', '=']).next()?;
            decl.split_whitespace().last().map(str::to_string)
        })
        .collect()
}

fn write_if_changed(path: &Path, text: &str) -> Result<(), String> {
    if std::fs::read_to_string(path).is_ok_and(|old| old == text) {
        return Ok(());
    }
    std::fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))
}

fn run(what: &str, mut c: Command) -> Result<(), String> {
    let output = c
        .output()
        .map_err(|e| format!("{what}: cannot run the C++ compiler: {e}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{what} failed:\n{}",
            String::from_utf8_lossy(&output.stderr)
        ))
    }
}

/// Runs the commands two at a time (the 2-core machines this builds on), failing on the first error.
fn run_parallel(jobs: Vec<(String, Command)>) -> Result<(), String> {
    let width = std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .max(2);
    let mut pending = jobs.into_iter();
    let mut running: Vec<(String, Child)> = Vec::new();
    loop {
        while running.len() < width {
            let Some((what, mut c)) = pending.next() else {
                break;
            };
            let child = c
                .stderr(std::process::Stdio::piped())
                .spawn()
                .map_err(|e| format!("{what}: cannot run the C++ compiler: {e}"))?;
            running.push((what, child));
        }
        if running.is_empty() {
            return Ok(());
        }
        let (what, child) = running.remove(0);
        let output = child
            .wait_with_output()
            .map_err(|e| format!("{what}: {e}"))?;
        if !output.status.success() {
            return Err(format!(
                "{what} failed:\n{}",
                String::from_utf8_lossy(&output.stderr)
            ));
        }
    }
}
