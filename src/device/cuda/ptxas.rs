//! What `ptxas -arch=sm_90 -v` reported for every kernel at build time (`modules::PTXAS_REPORT`): registers,
//! shared memory and spills, per kernel and version (`hourglass kernels` prints it). A test holds every kernel
//! to no spills (a stack frame of its own is allowed: double `sincos`'s slow path in `rotary_table_f32` has
//! one).

use super::modules::PTXAS_REPORT;

/// One kernel's resources on sm_90.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelResources {
    /// The `kernels/<module>.cu` it is in.
    pub module: String,
    pub kernel: String,
    pub registers: u32,
    /// Static shared memory.
    pub shared_bytes: u64,
    pub stack_bytes: u64,
    pub spill_store_bytes: u64,
    pub spill_load_bytes: u64,
}

/// The number that starts the comma-separated part of `line` that mentions `what` (`"Used 37 registers,
/// used 1 barriers, 32776 bytes smem"`: 37 for "registers", 32776 for "smem"); 0 without one.
fn field(line: &str, what: &str) -> u64 {
    line.split(',')
        .find(|part| part.contains(what))
        .and_then(|part| part.split_whitespace().find_map(|word| word.parse().ok()))
        .unwrap_or(0)
}

/// Every kernel in the report, in build order; empty when nvcc was not found at build time.
pub fn kernel_resources() -> Vec<KernelResources> {
    parse(PTXAS_REPORT)
}

fn parse(report: &str) -> Vec<KernelResources> {
    let mut out: Vec<KernelResources> = Vec::new();
    let (mut module, mut entry) = (String::new(), String::new());
    // ptxas also lists device functions it did not inline (libdevice's): only entries are kernels.
    let mut in_entry = false;
    for line in report.lines() {
        if let Some(name) = line.strip_prefix("== ") {
            module = name.trim().to_string();
        } else if let Some(rest) = line.split("Compiling entry function '").nth(1) {
            entry = rest.split('\'').next().unwrap_or_default().to_string();
        } else if let Some(rest) = line.split("Function properties for ").nth(1) {
            in_entry = rest.trim() == entry;
            if !in_entry {
                continue;
            }
            out.push(KernelResources {
                module: module.clone(),
                kernel: rest.trim().to_string(),
                registers: 0,
                shared_bytes: 0,
                stack_bytes: 0,
                spill_store_bytes: 0,
                spill_load_bytes: 0,
            });
        } else if let (Some(k), true) = (out.last_mut(), in_entry) {
            if line.contains("stack frame") {
                k.stack_bytes = field(line, "stack frame");
                k.spill_store_bytes = field(line, "spill stores");
                k.spill_load_bytes = field(line, "spill loads");
            } else if line.contains("Used") && line.contains("registers") {
                k.registers = field(line, "registers") as u32;
                k.shared_bytes = field(line, "smem");
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "== attention_mma
ptxas info    : 0 bytes gmem
ptxas info    : Compiling entry function 'attention_mma_fwd_tuned_d64_bf16' for 'sm_90'
ptxas info    : Function properties for attention_mma_fwd_tuned_d64_bf16
    8 bytes stack frame, 4 bytes spill stores, 12 bytes spill loads
ptxas info    : Used 140 registers, used 1 barriers, 32776 bytes smem
ptxas info    : Compile time = 41.585 ms
ptxas info    : Function properties for __internal_accurate_pow
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
== adamw
ptxas info    : Compiling entry function 'adamw_f32' for 'sm_90'
ptxas info    : Function properties for adamw_f32
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 35 registers, used 0 barriers
";

    #[test]
    fn the_report_parses_into_kernels() {
        let kernels = parse(SAMPLE);
        assert_eq!(
            kernels[0],
            KernelResources {
                module: "attention_mma".into(),
                kernel: "attention_mma_fwd_tuned_d64_bf16".into(),
                registers: 140,
                shared_bytes: 32776,
                stack_bytes: 8,
                spill_store_bytes: 4,
                spill_load_bytes: 12,
            }
        );
        assert_eq!((kernels[1].registers, kernels[1].shared_bytes), (35, 0));
        assert_eq!(kernels.len(), 2);
    }

    #[test]
    fn no_kernel_spills() {
        let kernels = kernel_resources();
        if !super::super::modules::NVCC_FOUND {
            println!("skipped: this build has no kernels (nvcc was not found)");
            return;
        }
        assert!(
            kernels.len() >= 40,
            "only {} kernels in the report",
            kernels.len()
        );
        for k in &kernels {
            assert!(
                k.registers > 0 && k.spill_store_bytes == 0 && k.spill_load_bytes == 0,
                "{k:?}"
            );
        }
    }
}
