//! `HOURGLASS_CUDA=emulator`: the CUDA backend on the emulated device (docs/emulator.md) instead of a GPU.
//!
//! build.rs compiles the emulator as `libcuda.so`, `libcublas.so` and `libcublasLt.so` (emulator/). Loading them
//! by path before cudarc's first call is all it takes: cudarc opens the libraries by name, and the dynamic
//! loader answers a name with an already-loaded library of that SONAME. Everything above the driver API (this
//! crate's host code, cudarc) runs unchanged.

use crate::error::{Error, Result};
use std::sync::OnceLock;

/// Which CUDA `HOURGLASS_CUDA` asks for: the machine's driver (unset, or `driver`), or the emulator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CudaSource {
    Driver,
    Emulator,
}

impl CudaSource {
    /// `HOURGLASS_CUDA`: `driver` (the default) or `emulator`; any other value is an error naming it.
    pub(crate) fn from_env() -> Result<Self> {
        match std::env::var("HOURGLASS_CUDA").as_deref() {
            Err(_) | Ok("") | Ok("driver") => Ok(Self::Driver),
            Ok("emulator") => Ok(Self::Emulator),
            Ok(other) => Err(Error::Cuda(format!(
                "HOURGLASS_CUDA={other:?}: expected \"driver\" or \"emulator\""
            ))),
        }
    }
}

/// The libraries, loaded once per process (they stay loaded: cudarc keeps their symbols).
static LOADED: OnceLock<std::result::Result<(), String>> = OnceLock::new();

/// Loads the emulator's libraries (from `HOURGLASS_EMULATOR_DIR`, else where build.rs put them) so that
/// cudarc's driver and cuBLAS calls reach them. Must run before cudarc's first call in the process.
pub(crate) fn load() -> Result<()> {
    LOADED
        .get_or_init(|| {
            let dir = library_dir()
                .ok_or("this build has no emulated device (it needs nvcc and g++ at build time)")?;
            for lib in ["libcuda.so", "libcublas.so", "libcublasLt.so"] {
                let path = std::path::Path::new(&dir).join(lib);
                // SAFETY: the emulator's libraries run no code at load time beyond C++ static constructors that
                // fill its kernel registry.
                let library = unsafe {
                    libloading::os::unix::Library::open(
                        Some(&path),
                        libloading::os::unix::RTLD_NOW | libloading::os::unix::RTLD_GLOBAL,
                    )
                }
                .map_err(|e| format!("loading the emulated device from {}: {e}", path.display()))?;
                // Kept for the life of the process, as cudarc keeps the driver's.
                std::mem::forget(library);
            }
            Ok(())
        })
        .clone()
        .map_err(Error::Cuda)
}

/// Where the emulator's libraries and self-test programs are: `HOURGLASS_EMULATOR_DIR`, else where build.rs
/// put them; `None` when this build has none.
pub fn library_dir() -> Option<String> {
    std::env::var("HOURGLASS_EMULATOR_DIR")
        .ok()
        .or_else(|| super::modules::EMULATOR_DIR.map(str::to_string))
}

/// The directory of planted-bug variant `variant` (emulator/planted.rs): a kernels library with one defect,
/// which `HOURGLASS_EMU_KERNELS_FROM=<that directory>` loads in place of the real one, and `check`, naming what
/// must catch it. `None` when this build has no emulator.
pub fn planted_dir(variant: &str) -> Option<std::path::PathBuf> {
    library_dir().map(|dir| std::path::Path::new(&dir).join("planted").join(variant))
}

/// The PTX that build.rs made of `kernels/<module>.cu`, for tests that load a module through cudarc themselves;
/// `None` when this build has none.
pub fn module_ptx(module: &str) -> Option<String> {
    std::fs::read_to_string(std::path::Path::new(env!("OUT_DIR")).join(format!("{module}.ptx")))
        .ok()
}

/// Whether this process runs CUDA on the emulator (its libraries are loaded).
pub(crate) fn active() -> bool {
    matches!(LOADED.get(), Some(Ok(())))
}
