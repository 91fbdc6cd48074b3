//! The kernels' code as the build embedded it (build.rs): every `kernels/*.cu` as PTX and as cubins for the GPUs
//! people use. `load` gives the device the cubin it can run (the driver's binary compatibility: the same major
//! version, a minor not above the device's, so sm_80 runs on sm_86 but never on sm_90) and falls back to the
//! PTX, which the driver JIT-compiles (ptxas takes 10-20 s on each attention module on a cold cache), for any
//! other GPU or a cubin the driver refuses. `KernelImages` says which was loaded and how long it took.

use crate::error::{Error, Result};
use cudarc::driver::sys::CUdeviceptr;
use cudarc::driver::{CudaContext, CudaFunction, CudaStream, DevicePtr};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

mod embedded {
    /// One `kernels/<name>.cu`: its PTX, and its cubin for each architecture in build.rs's `CUBIN_ARCHS`
    /// (as `(major * 10 + minor, bytes)`).
    pub(crate) struct Module {
        pub(crate) name: &'static str,
        pub(crate) ptx: &'static str,
        pub(crate) cubins: &'static [(u32, &'static [u8])],
    }
    include!(concat!(env!("OUT_DIR"), "/kernels.rs"));
}
pub use embedded::NVCC_FOUND;
pub(crate) use embedded::{ATTENTION_SEED, EMULATOR_DIR, MODULES, PTXAS_REPORT};

/// What one module was loaded from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KernelImage {
    /// The embedded machine code for `sm_<arch>`.
    Cubin { arch: u32 },
    /// The PTX, JIT-compiled by the driver; `why` says why no cubin was used.
    Ptx { why: String },
}

/// Which code `Cuda::new` loaded for the device, and how long loading every module took.
#[derive(Clone, Debug)]
pub struct KernelImages {
    /// The device's compute capability, as `major * 10 + minor`.
    pub compute_capability: u32,
    /// Each module's image, by module name, in build order.
    pub modules: Vec<(String, KernelImage)>,
    pub seconds: f64,
}

impl std::fmt::Display for KernelImages {
    /// "sm_90 cubins; compute capability 9.0, loaded in 0.31 s", or what each module was loaded from when they
    /// differ.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let describe = |image: &KernelImage| match image {
            KernelImage::Cubin { arch } => format!("sm_{arch} cubins"),
            KernelImage::Ptx { why } => format!("PTX JIT-compiled by the driver ({why})"),
        };
        let first = self.modules.first().map(|(_, image)| image);
        if self.modules.iter().all(|(_, image)| Some(image) == first) {
            write!(f, "{}", first.map_or("no modules".into(), describe))?;
        } else {
            let each: Vec<String> = self
                .modules
                .iter()
                .map(|(name, image)| format!("{name}: {}", describe(image)))
                .collect();
            write!(f, "{}", each.join("; "))?;
        }
        write!(
            f,
            "; compute capability {}.{}, loaded in {:.2} s",
            self.compute_capability / 10,
            self.compute_capability % 10,
            self.seconds
        )
    }
}

/// The embedded cubin a device of compute capability `device` (`major * 10 + minor`) can run, of those built
/// for `archs`: the same major version, the highest minor not above the device's.
pub fn cubin_for(device: u32, archs: impl IntoIterator<Item = u32>) -> Option<u32> {
    archs
        .into_iter()
        .filter(|arch| arch / 10 == device / 10 && arch % 10 <= device % 10)
        .max()
}

/// Every module loaded into `ctx`: its kernels by name, the attention modules' seed constants by module name,
/// and what was loaded.
pub(crate) struct Loaded {
    pub(crate) functions: HashMap<String, CudaFunction>,
    pub(crate) attention_seeds: HashMap<String, CUdeviceptr>,
    pub(crate) images: KernelImages,
}

/// Loads every module into `ctx`: from the device's cubin when `use_cubins` and there is one, else the PTX.
pub(crate) fn load(
    ctx: &Arc<CudaContext>,
    stream: &Arc<CudaStream>,
    use_cubins: bool,
) -> Result<Loaded> {
    let start = Instant::now();
    let err =
        |what: String| move |e: cudarc::driver::DriverError| Error::Cuda(format!("{what}: {e:?}"));
    let (major, minor) = ctx
        .compute_capability()
        .map_err(err("reading the compute capability".into()))?;
    let device = (major * 10 + minor) as u32;
    let mut loaded = Loaded {
        functions: HashMap::new(),
        attention_seeds: HashMap::new(),
        images: KernelImages {
            compute_capability: device,
            modules: Vec::new(),
            seconds: 0.0,
        },
    };
    for module in MODULES {
        let cubin =
            cubin_for(device, module.cubins.iter().map(|(arch, _)| *arch)).filter(|_| use_cubins);
        let from_cubin = cubin.map(|arch| {
            let bytes = module.cubins.iter().find(|(a, _)| *a == arch).unwrap().1;
            (
                arch,
                ctx.load_module(cudarc::nvrtc::Ptx::from_binary(bytes.to_vec())),
            )
        });
        let (handle, image) = match from_cubin {
            Some((arch, Ok(handle))) => (handle, KernelImage::Cubin { arch }),
            refused => {
                let why = match refused {
                    Some((arch, Err(e))) => {
                        format!("the driver refused the sm_{arch} cubin: {e:?}")
                    }
                    _ if !use_cubins => "HOURGLASS_KERNELS=ptx".to_string(),
                    _ => format!("no cubin for sm_{device}"),
                };
                let handle = ctx
                    .load_module(cudarc::nvrtc::Ptx::from_src(module.ptx))
                    .map_err(err(format!(
                        "loading kernels/{}.cu PTX ({why})",
                        module.name
                    )))?;
                (handle, KernelImage::Ptx { why })
            }
        };
        if module.ptx.contains(ATTENTION_SEED) {
            let symbol = handle
                .get_global(ATTENTION_SEED, stream)
                .map_err(err(format!(
                    "kernels/{}.cu's {ATTENTION_SEED}",
                    module.name
                )))?;
            let (address, _done) = symbol.device_ptr(stream);
            loaded
                .attention_seeds
                .insert(module.name.to_string(), address);
        }
        for name in kernel_names(module.ptx) {
            let function = handle
                .load_function(name)
                .map_err(err(format!("kernel {name} of kernels/{}.cu", module.name)))?;
            loaded.functions.insert(name.to_string(), function);
        }
        loaded.images.modules.push((module.name.to_string(), image));
    }
    loaded.images.seconds = start.elapsed().as_secs_f64();
    Ok(loaded)
}

/// The kernels of a PTX module: its `.visible .entry` names (a cubin built from it has the same).
fn kernel_names(ptx: &str) -> impl Iterator<Item = &str> {
    ptx.lines().filter_map(|l| {
        let rest = l.trim_start().strip_prefix(".visible .entry ")?;
        Some(rest.split('(').next()?.trim())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_device_runs_the_cubin_of_its_major_version_at_or_below_its_minor() {
        let built = [80, 89, 90];
        assert_eq!(cubin_for(80, built), Some(80));
        assert_eq!(cubin_for(86, built), Some(80)); // A10, RTX 30
        assert_eq!(cubin_for(87, built), Some(80));
        assert_eq!(cubin_for(89, built), Some(89));
        assert_eq!(cubin_for(90, built), Some(90));
        assert_eq!(cubin_for(75, built), None);
        assert_eq!(cubin_for(100, built), None); // Blackwell: the PTX
        assert_eq!(cubin_for(120, built), None);
        assert_eq!(cubin_for(86, [89, 90]), None);
    }

    /// nvcc's whole-program PTX gives module variables internal linkage (build.rs: `export_host_variables`);
    /// a symbol the driver cannot see by name fails at `Cuda::new`, or, for a kernel, at its first launch.
    #[test]
    fn every_symbol_the_host_looks_up_is_visible() {
        if !NVCC_FOUND {
            println!("skipped: this build has no kernels (nvcc was not found)");
            return;
        }
        let mut seed_modules = 0;
        for module in MODULES {
            for line in module.ptx.lines() {
                if line.contains(".entry ") {
                    assert!(
                        line.trim_start().starts_with(".visible .entry "),
                        "kernels/{}.cu: a kernel that is not .visible: {line}",
                        module.name
                    );
                }
            }
            if module.ptx.contains(ATTENTION_SEED) {
                seed_modules += 1;
                let declaration = module
                    .ptx
                    .lines()
                    .find(|l| l.starts_with('.') && l.contains(&format!(" {ATTENTION_SEED};")))
                    .unwrap_or_else(|| {
                        panic!("kernels/{}.cu declares no {ATTENTION_SEED}", module.name)
                    });
                assert!(
                    declaration.starts_with(".visible .const "),
                    "kernels/{}.cu: {declaration}",
                    module.name
                );
            }
            assert_eq!(
                module.cubins.len(),
                3,
                "kernels/{}.cu's cubins",
                module.name
            );
        }
        assert_eq!(
            seed_modules, 2,
            "attention.cu and attention_mma.cu read {ATTENTION_SEED}"
        );
        let entries: usize = MODULES.iter().map(|m| kernel_names(m.ptx).count()).sum();
        assert!(entries >= 40, "only {entries} kernels in the PTX");
    }
}
