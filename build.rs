//! Compiles every `kernels/*.cu` to PTX with nvcc and embeds it; reports registers/spills from ptxas.
//!
//! nvcc is looked up in `NVCC`, `CUDA_HOME`/`CUDA_PATH`, `PATH`, then the project's own pinned install
//! (`tools/install-cuda.sh` puts it in `.toolchain/cuda`). Without nvcc the crate builds CPU-only and says
//! so in one warning; `Cuda::new` then returns an error. A kernel that fails to compile fails the build.

use std::env;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The PTX's virtual target: loads on every GPU from A100 (sm_80) on, which the driver JIT-compiles it for. nvcc
/// 13.0 emits PTX ISA 9.0, which the CUDA 13.0 driver loads.
const PTX_ARCH: &str = "compute_80";

/// The GPUs whose machine code is embedded beside the PTX, so that `Cuda::new` loads it instead of JIT-compiling
/// the PTX (ptxas takes 10-20 s on each attention module): A100 (sm_80, which also runs on sm_86), L4 and RTX 40
/// (sm_89), H100 and H200 (sm_90). Any other GPU gets the PTX.
const CUBIN_ARCHS: &[u32] = &[80, 89, 90];

/// The architecture whose ptxas report (registers, shared memory, spills) `hourglass kernels` prints.
const REPORT_ARCH: u32 = 90;

/// Module variables the host looks up by name (`cuModuleGetGlobal`), as (Rust constant, PTX name).
const HOST_VARIABLES: &[(&str, &str)] = &[("ATTENTION_SEED", "attention_dropout_seed")];

#[path = "emulator/build.rs"]
mod emulator;

fn find_nvcc(root: &Path) -> Option<PathBuf> {
    let exe = |p: PathBuf| p.is_file().then_some(p);
    if let Some(p) = env::var_os("NVCC") {
        return exe(PathBuf::from(p));
    }
    for var in ["CUDA_HOME", "CUDA_PATH"] {
        if let Some(p) = env::var_os(var).and_then(|h| exe(PathBuf::from(h).join("bin/nvcc"))) {
            return Some(p);
        }
    }
    if let Some(p) = env::var_os("PATH")
        .and_then(|path| env::split_paths(&path).find_map(|d| exe(d.join("nvcc"))))
    {
        return Some(p);
    }
    exe(root.join(".toolchain/cuda/nvidia/cu13/bin/nvcc"))
}

fn main() {
    let root = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let out = PathBuf::from(env::var("OUT_DIR").unwrap());
    println!("cargo:rerun-if-changed=kernels");
    println!("cargo:rerun-if-changed=emulator");
    println!("cargo:rerun-if-env-changed=CXX");
    println!("cargo:rerun-if-changed=.toolchain/cuda/.pinned-13.0.88");
    for var in ["NVCC", "CUDA_HOME", "CUDA_PATH", "PATH"] {
        println!("cargo:rerun-if-env-changed={var}");
    }

    let mut kernels: Vec<PathBuf> = std::fs::read_dir(root.join("kernels"))
        .map(|dir| dir.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    kernels.retain(|p| p.extension().is_some_and(|e| e == "cu"));
    kernels.sort();

    let nvcc = find_nvcc(&root);
    let mut modules = String::new();
    let mut report = String::new();
    let mut built = Vec::new();
    if let Some(nvcc) = &nvcc {
        for cu in &kernels {
            println!("cargo:rerun-if-changed={}", cu.display());
        }
        let names: Vec<String> = kernels
            .iter()
            .map(|cu| cu.file_stem().unwrap().to_str().unwrap().to_string())
            .collect();
        in_parallel(kernels.len(), |i| {
            compile_ptx(nvcc, &root, &kernels[i], &out)
        });
        let jobs: Vec<(usize, u32)> = (0..kernels.len())
            .flat_map(|m| CUBIN_ARCHS.iter().map(move |&arch| (m, arch)))
            .collect();
        let reports = in_parallel(jobs.len(), |j| {
            let (m, arch) = jobs[j];
            compile_cubin(nvcc, &out, &names[m], arch)
        });
        for (m, (name, cu)) in names.iter().zip(&kernels).enumerate() {
            let ptx = out.join(format!("{name}.ptx"));
            let cubins: String = CUBIN_ARCHS
                .iter()
                .map(|arch| {
                    let cubin = out.join(format!("{name}.sm_{arch}.cubin"));
                    format!(
                        "({arch}, include_bytes!({:?})), ",
                        cubin.display().to_string()
                    )
                })
                .collect();
            writeln!(
                modules,
                "    Module {{ name: {name:?}, ptx: include_str!({:?}), cubins: &[{cubins}] }},",
                ptx.display().to_string()
            )
            .unwrap();
            let at = jobs
                .iter()
                .position(|&job| job == (m, REPORT_ARCH))
                .unwrap();
            report.push_str(&reports[at]);
            built.push(emulator::Module {
                name: name.clone(),
                source: cu.clone(),
                ptx,
            });
        }
    } else {
        println!("cargo:warning=nvcc not found: building CPU-only (run tools/install-cuda.sh, or set NVCC/CUDA_HOME)");
    }
    std::fs::write(out.join("ptxas-report.txt"), &report).unwrap();
    // The emulated device needs the PTX (its modules load it) and a C++ compiler for the kernels' host build.
    let emulator_dir = match nvcc {
        Some(_) => match emulator::build(&root, &out, &built) {
            Ok(dir) => Some(dir.display().to_string()),
            Err(e) => {
                println!(
                    "cargo:warning=the emulated CUDA device was not built: {}",
                    e.lines().next().unwrap_or("")
                );
                eprintln!("{e}");
                None
            }
        },
        None => None,
    };
    let host_variables: String = HOST_VARIABLES
        .iter()
        .map(|(constant, name)| {
            format!("/// A module variable the host looks up by name (made `.visible`).\npub(crate) const {constant}: &str = {name:?};\n")
        })
        .collect();
    let generated = format!(
        "/// Whether nvcc was found at build time.\npub const NVCC_FOUND: bool = {};\n\
         /// Every `kernels/*.cu`: its PTX and its cubins.\npub(crate) const MODULES: &[Module] = &[\n{modules}];\n\
         /// `ptxas -arch=sm_{REPORT_ARCH} -v` for every kernel: registers, shared memory, spills.\n\
         pub(crate) const PTXAS_REPORT: &str = include_str!({:?});\n\
         {host_variables}\
         /// The emulated device's libraries (libcuda.so, libcublas.so, libcublasLt.so), if they were built.\n\
         pub(crate) const EMULATOR_DIR: Option<&str> = {emulator_dir:?};\n",
        nvcc.is_some(),
        out.join("ptxas-report.txt").display().to_string()
    );
    std::fs::write(out.join("kernels.rs"), generated).unwrap();
}

/// Runs `job(0..n)` on as many threads as cargo allows this build (`NUM_JOBS`); the results in index order. A
/// panic in a job (a compile error) fails the build.
fn in_parallel<T: Send>(n: usize, job: impl Fn(usize) -> T + Sync) -> Vec<T> {
    let threads = env::var("NUM_JOBS")
        .ok()
        .and_then(|j| j.parse().ok())
        .unwrap_or(1usize)
        .clamp(1, n.max(1));
    let next = std::sync::atomic::AtomicUsize::new(0);
    let results = std::sync::Mutex::new((0..n).map(|_| None).collect::<Vec<Option<T>>>());
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= n {
                    break;
                }
                let value = job(i);
                results.lock().unwrap()[i] = Some(value);
            });
        }
    });
    results
        .into_inner()
        .unwrap()
        .into_iter()
        .map(Option::unwrap)
        .collect()
}

/// nvcc: `kernels/<name>.cu` -> `<name>.ptx` in `out`, with the host's variables made `.visible`.
fn compile_ptx(nvcc: &Path, root: &Path, cu: &Path, out: &Path) {
    let name = cu.file_stem().unwrap().to_str().unwrap();
    let ptx = out.join(format!("{name}.ptx"));
    let status = Command::new(nvcc)
        .args([
            "-ptx",
            "-O3",
            "-std=c++17",
            &format!("-arch={PTX_ARCH}"),
            "-lineinfo",
        ])
        .arg("-I")
        .arg(root.join("kernels"))
        .arg(cu)
        .arg("-o")
        .arg(&ptx)
        .status()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", nvcc.display()));
    assert!(status.success(), "nvcc failed on {}", cu.display());
    let text = std::fs::read_to_string(&ptx).unwrap();
    std::fs::write(&ptx, export_host_variables(&text, name)).unwrap();
}

/// nvcc's whole-program mode gives every module variable internal linkage (a `.const` without `.visible`, a
/// LOCAL symbol in the cubin), and no attribute changes that short of `-rdc`, which also changes the code
/// (measured: attention_mma's registers differ). The host looks `HOST_VARIABLES` up by name, so their
/// declarations are made `.visible` here; one this does not find fails the build.
fn export_host_variables(ptx: &str, module: &str) -> String {
    let mut out = String::with_capacity(ptx.len() + 64);
    for line in ptx.lines() {
        let declared = (line.starts_with(".const ") || line.starts_with(".global "))
            .then(|| {
                line.split([';', '[', '='])
                    .next()?
                    .split_whitespace()
                    .last()
            })
            .flatten();
        if declared.is_some_and(|d| HOST_VARIABLES.iter().any(|(_, name)| *name == d)) {
            out.push_str(".visible ");
        }
        out.push_str(line);
        out.push('\n');
    }
    for (_, name) in HOST_VARIABLES {
        let visible = out
            .lines()
            .any(|l| l.starts_with(".visible ") && l.contains(&format!(" {name};")));
        assert!(
            visible || !ptx.contains(name),
            "{module}.ptx uses {name} but declares it in a form build.rs does not make .visible"
        );
    }
    out
}

/// ptxas: `<name>.ptx` -> `<name>.sm_<arch>.cubin`, without the debug sections (`-lineinfo`'s copy of the PTX
/// would triple its size; the PTX keeps the line table for profilers). Returns the `-v` report (registers,
/// shared memory, spills) and warns, visibly, when a kernel spills.
fn compile_cubin(nvcc: &Path, out: &Path, name: &str, arch: u32) -> String {
    let ptxas = nvcc.with_file_name("ptxas");
    let output = Command::new(&ptxas)
        .args([&format!("-arch=sm_{arch}"), "-v", "--suppress-debug-info"])
        .arg(out.join(format!("{name}.ptx")))
        .arg("-o")
        .arg(out.join(format!("{name}.sm_{arch}.cubin")))
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", ptxas.display()));
    let text = String::from_utf8_lossy(&output.stderr).to_string();
    assert!(
        output.status.success(),
        "ptxas -arch=sm_{arch} rejected {name}.ptx:\n{text}"
    );
    if arch != REPORT_ARCH {
        return String::new();
    }
    let mut function = String::new();
    for line in text.lines() {
        if let Some(rest) = line.split("Function properties for ").nth(1) {
            function = rest.trim().to_string();
        }
        if line.contains("spill stores")
            && !line.contains(" 0 bytes spill stores, 0 bytes spill loads")
        {
            println!(
                "cargo:warning=ptxas: {name}/{function} spills: {}",
                line.trim()
            );
        }
    }
    format!("== {name}\n{text}")
}
