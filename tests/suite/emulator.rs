//! The emulated CUDA device's own self-tests (docs/emulator.md), built beside it by build.rs: the runtime (toy
//! kernels: a reduction exact under every schedule, each planted defect caught by its check), the driver API, the
//! cuBLAS/cuBLASLt GEMMs and every inline-PTX instruction against cases worked by hand from the PTX ISA.
//!
//! They need no GPU, only the emulator build (nvcc and g++ at build time). Without it each test prints
//! "skipped"; with `HOURGLASS_CUDA=emulator` or `HOURGLASS_REQUIRE_GPU=1` a missing build fails it.

use std::path::PathBuf;
use std::process::Command;

/// The self-test program `name`, or `None` (after saying so) when this build has no emulator.
fn program(name: &str) -> Option<PathBuf> {
    let Some(dir) = hourglass::device::cuda::emulator::library_dir() else {
        let required = std::env::var("HOURGLASS_CUDA").is_ok_and(|v| v == "emulator")
            || std::env::var("HOURGLASS_REQUIRE_GPU").is_ok_and(|v| v == "1");
        assert!(
            !required,
            "{name}: this build has no emulated device (nvcc and g++ are needed at build time)"
        );
        eprintln!("skipped: {name}: this build has no emulated device");
        return None;
    };
    Some(PathBuf::from(dir).join(name))
}

/// Runs a self-test program and fails with its output unless it exits 0.
fn run(mut command: Command, what: &str) {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success(),
        "{what} failed ({}):\n{text}",
        output.status
    );
}

/// Runs a self-test program under each of the emulator's thread schedules (a race shows as a result that
/// depends on the schedule).
fn run_under_every_schedule(exe: &std::path::Path, what: &str) {
    for schedule in ["inorder", "reversed", "random:7", "skewed"] {
        let mut c = Command::new(exe);
        c.env("HOURGLASS_EMU_SCHEDULE", schedule);
        run(c, &format!("{what}, schedule {schedule}"));
    }
}

#[test]
fn runtime_selftest_passes_under_every_schedule() {
    if let Some(exe) = program("runtime_selftest") {
        run_under_every_schedule(&exe, "runtime self-test");
    }
}

#[test]
fn driver_selftest_passes() {
    let Some(exe) = program("driver_selftest") else {
        return;
    };
    let mut c = Command::new(&exe);
    c.arg(exe.with_file_name("libcuda.so"));
    run(c, "driver self-test");
}

#[test]
fn blas_selftest_passes() {
    let Some(exe) = program("blas_selftest") else {
        return;
    };
    run(Command::new(exe), "cuBLAS/cuBLASLt self-test");
}

#[test]
fn ptx_selftest_passes_under_every_schedule() {
    if let Some(exe) = program("ptx_selftest_main") {
        run_under_every_schedule(&exe, "inline PTX self-test");
    }
}
