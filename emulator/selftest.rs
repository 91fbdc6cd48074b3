//! The emulator's self-tests (`emulator/tests/*_selftest.cpp`), built beside its libraries as programs that
//! tests/suite/emulator.rs runs: the runtime's (toy kernels through transform.rs and the shim, each planted defect
//! caught), the driver's, cuBLAS/cuBLASLt's and the inline PTX's (every instruction against cases worked by hand).

use super::{
    compile_kernels, link_against_libcuda, run_parallel, transform, write_if_changed, CXX_FLAGS,
};
use std::path::Path;
use std::process::Command;

pub fn build(cxx: &str, emu: &Path, dir: &Path, obj: &Path) -> Result<(), String> {
    let tests = emu.join("tests");
    // The runtime's toy kernels, transformed like the crate's (their names scanned from the source: the
    // self-test has no PTX).
    let kernels_cu = tests.join("runtime_selftest_kernels.cu");
    let text = std::fs::read_to_string(&kernels_cu)
        .map_err(|e| format!("{}: {e}", kernels_cu.display()))?;
    let entries: Vec<String> = text
        .split("extern \"C\" __global__ void ")
        .skip(1)
        .map(|rest| match rest.strip_prefix("__launch_bounds__(") {
            Some(bounded) => bounded.split_once(')').map_or("", |(_, r)| r),
            None => rest,
        })
        .filter_map(|rest| rest.split('(').next())
        .map(|name| name.trim().to_string())
        .collect();
    let host = transform::host_source(
        "runtime_selftest",
        &text,
        &entries,
        &["selftest_seed".into()],
    )?;
    let kernels_cpp = obj.join("runtime_selftest_kernels.cpp");
    write_if_changed(&kernels_cpp, &host)?;
    let kernels_o = obj.join("runtime_selftest_kernels.o");
    let c = compile_kernels(cxx, emu, &[], &kernels_cpp, &kernels_o);
    run_parallel(vec![(
        "emulator/tests/runtime_selftest_kernels.cu".into(),
        c,
    )])?;

    let programs = [
        ("runtime_selftest", vec![kernels_o]),
        ("driver_selftest", vec![]),
        ("blas_selftest", vec![]),
        ("ptx_selftest_main", vec![]),
    ];
    let mut jobs = Vec::new();
    for (name, extra) in programs {
        let mut c = Command::new(cxx);
        c.args(CXX_FLAGS)
            .arg("-O1")
            .arg("-I")
            .arg(emu)
            .arg(tests.join(format!("{name}.cpp")))
            .args(&extra)
            .arg("-o")
            .arg(dir.join(name))
            .arg("-ldl");
        link_against_libcuda(&mut c, dir);
        jobs.push((format!("emulator/tests/{name}.cpp"), c));
    }
    run_parallel(jobs)
}
