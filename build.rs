//! Compiles every `kernels/*.cu` to PTX with nvcc and embeds it; reports registers/spills from ptxas.
//!
//! nvcc is looked up in `NVCC`, `CUDA_HOME`/`CUDA_PATH`, `PATH`, then the project's own pinned install
//! (`tools/install-cuda.sh` puts it in `.toolchain/cuda`). Without nvcc the crate builds CPU-only and says
//! so in one warning; `Cuda::new` then returns an error. A kernel that fails to compile fails the build.

use std::env;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A compute target that runs on A100 (sm_80) and H100 (sm_90, by JIT from PTX); nvcc 13.0 emits PTX ISA 9.0,
/// which the CUDA 13.0 driver loads.
const PTX_ARCH: &str = "compute_80";

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
            let name = cu.file_stem().unwrap().to_str().unwrap().to_string();
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
            writeln!(
                modules,
                "    ({name:?}, include_str!({:?})),",
                ptx.display().to_string()
            )
            .unwrap();
            report.push_str(&ptxas_report(nvcc, &ptx, &name));
            built.push(emulator::Module {
                name,
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
    let generated = format!(
        "/// Whether nvcc was found at build time.\npub const NVCC_FOUND: bool = {};\n\
         /// (module name, PTX) for every `kernels/*.cu`.\npub const MODULES: &[(&str, &str)] = &[\n{modules}];\n\
         /// `ptxas -arch=sm_90 -v` for every kernel: registers, shared memory, spills.\n\
         pub const PTXAS_REPORT: &str = include_str!({:?});\n\
         /// The emulated device's libraries (libcuda.so, libcublas.so, libcublasLt.so), if they were built.\n\
         pub const EMULATOR_DIR: Option<&str> = {emulator_dir:?};\n",
        nvcc.is_some(),
        out.join("ptxas-report.txt").display().to_string()
    );
    std::fs::write(out.join("kernels.rs"), generated).unwrap();
}

/// Runs `ptxas -arch=sm_90 -v` on one module; warns (visibly) only when a kernel spills.
fn ptxas_report(nvcc: &Path, ptx: &Path, name: &str) -> String {
    let ptxas = nvcc.with_file_name("ptxas");
    let Ok(output) = Command::new(&ptxas)
        .args(["-arch=sm_90", "-v"])
        .arg(ptx)
        .arg("-o")
        .arg("/dev/null")
        .output()
    else {
        return format!("{name}: ptxas not found beside nvcc\n");
    };
    let text = String::from_utf8_lossy(&output.stderr).to_string();
    assert!(
        output.status.success(),
        "ptxas rejected {name}.ptx:\n{text}"
    );
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
