//! Planted-bug tests of the emulated CUDA device (docs/emulator.md: "a sanitizer that has never caught anything
//! proves nothing"). emulator/planted.rs builds copies of real kernels with one defect each, from the
//! current `kernels/` source; each runs here under the emulator through the crate's own ops and must fail with
//! the right check's message:
//!
//! | variant                       | defect                                              | caught by            |
//! |-------------------------------|-----------------------------------------------------|----------------------|
//! | `mma_fragment_swapped`        | A registers a1, a2 swapped in the mma operand list  | parity with the CPU  |
//! | `ldmatrix_missing_trans`      | the tuned kernels' ldmatrix without `.trans`        | parity with the CPU  |
//! | `syncthreads_removed`         | the barrier before a stage is refilled              | racecheck            |
//! | `cp_async_wait_group_missing` | the wait for the current tile's copies              | racecheck (in flight)|
//! | `tile_bound_off_by_one`       | `j <= len` in a staged tile's row bound             | memcheck             |
//! | `out_of_bounds_store`         | shortened length `seq / factor + 1`                 | memcheck             |
//! | `unwritten_read`              | LayerNorm backward's partials half written          | initcheck            |
//!
//! A swapped fragment register or a missing `.trans` moves values without any invalid access: no sanitizer can
//! see them, and the comparison with the CPU reference must (the tensor-core attention's bf16 measure,
//! `crate::common::bf16_attn_agreement`). Then the driver's rules, with the real kernels: a launch with more than
//! 48 KiB of static plus dynamic shared memory is refused, and a stream synchronisation during capture fails
//! with CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED and invalidates the capture. Every scenario also runs with the
//! real kernels (or within the rule) and must pass there.
//!
//! Each test runs this test binary again as a child (`planted_child`) with `HOURGLASS_CUDA=emulator`,
//! `HOURGLASS_EMU_KERNELS_FROM=<the variant's directory>` and `HOURGLASS_PLANTED_SCENARIO` naming what to run,
//! so that each variant gets a process of its own, and judges the child's exit status and output. The shapes
//! are the smallest that show each defect. The tests are ignored by default (`-- --include-ignored`); without
//! the emulator build each prints "skipped", and with `HOURGLASS_CUDA=emulator` or `HOURGLASS_REQUIRE_GPU=1` a
//! missing build fails it.

use crate::common::attention::AttnCase;
use crate::common::{bf16_attn_agreement, random_f32, rel_err_f32, Outputs};
use cudarc::driver::sys::{CUgraphInstantiate_flags, CUstreamCaptureMode};
use cudarc::driver::{CudaContext, CudaSlice, CudaStream, LaunchConfig, PushKernelArg};
use hourglass::device::cuda::emulator;
use hourglass::device::cuda::{AttnVersion, Cuda, CudaOptions};
use hourglass::ops::attention::AttnMask;
use hourglass::ops::{layernorm, shorten};
use hourglass::{BackendCore, Cpu, Error, Result, Tensor};
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;

/// The child's scenario, by name (unset: `planted_child` does nothing).
const SCENARIO: &str = "HOURGLASS_PLANTED_SCENARIO";
/// The line a child prints after its scenario passed, before the scenario's name.
const PASSED: &str = "planted scenario passed: ";
/// The sanitizer's checks: a finding reads "<check>: kernel <name>, block ..., thread ...: ...".
const CHECKS: [&str; 4] = ["memcheck", "racecheck", "synccheck", "initcheck"];

// ---- The child: one scenario through the crate's public API ------------------------------------------------

/// Causal self-attention of 191 = 3·64 − 1 rows, one head of 32: three key tiles, so that a stage is refilled
/// while read (a removed barrier); the last tile one row short of whole (an off-by-one in its bound).
const ATTN: AttnCase = AttnCase {
    batch: 1,
    heads: 1,
    q_len: 191,
    kv_len: 191,
    d_head: 32,
    mask: AttnMask::Causal,
    dropout: None,
};

/// The bf16 attention on the `version` kernels (forward and backward, in both layouts) against the bf16 CPU
/// reference; a mismatch fails naming the parity comparison.
fn attention(version: AttnVersion) -> Result<()> {
    let gpu = Cuda::with_options(
        0,
        CudaOptions {
            attention: version,
            ..CudaOptions::from_env()?
        },
    )?;
    let cpu = ATTN.run_bf16(&Cpu::<f32>::new())?;
    let got = ATTN.run_bf16(&gpu)?;
    for ((name, c), (_, g)) in cpu.iter().zip(&got) {
        let row_len = if name.ends_with("lse") {
            1
        } else {
            ATTN.d_head
        };
        let agreement = bf16_attn_agreement(g, c, row_len);
        if let Some(failure) = agreement.failure() {
            panic!("parity: bf16 attention ({version:?}) {name}: {failure} against the bf16 CPU reference ({agreement})");
        }
    }
    Ok(())
}

/// f32 outputs of the GPU against the CPU's (relative error below 1e-5); a mismatch names the parity comparison.
fn compare(what: &str, cpu: &Outputs, gpu: &Outputs) {
    for ((name, c), (_, g)) in cpu.iter().zip(gpu) {
        let e = rel_err_f32(g, c);
        assert!(
            e < 1e-5,
            "parity: {what} {name}: relative error {e:e} against the CPU"
        );
    }
}

/// ShiftRight + AvgPool shortening, forward and backward, of 8 positions by 2 (a whole number of windows).
fn shortening() -> Result<()> {
    fn on<B: shorten::ShortenOps + BackendCore<Elem = f32>>(b: &B) -> Result<Outputs> {
        let shape = [8, 1, 16];
        let x = Tensor::from_slice(b, &shape, &random_f32(1, shape.iter().product()))?;
        let short = shorten::forward(&x, 2, 1)?;
        let dshort = Tensor::from_slice(b, short.shape(), &random_f32(2, short.len()))?;
        let dx = shorten::backward(&dshort, &shape, 2, 1)?;
        Ok(vec![("short", short.to_vec()?), ("dx", dx.to_vec()?)])
    }
    compare(
        "shortening",
        &on(&Cpu::<f32>::new())?,
        &on(&Cuda::first()?)?,
    );
    Ok(())
}

/// LayerNorm forward and backward of 6 rows of 40 (the one-kernel backward).
fn layer_norm() -> Result<()> {
    fn on<B: layernorm::LayerNormOps + BackendCore<Elem = f32>>(b: &B) -> Result<Outputs> {
        let (rows, d) = (6, 40);
        let x = Tensor::from_slice(b, &[rows, d], &random_f32(1, rows * d))?;
        let gamma = Tensor::from_slice(b, &[d], &random_f32(2, d))?;
        let beta = Tensor::from_slice(b, &[d], &random_f32(3, d))?;
        let (y, saved) = layernorm::forward(&x, &gamma, &beta)?;
        let dy = Tensor::from_slice(b, &[rows, d], &random_f32(4, rows * d))?;
        let mut dgamma = Tensor::from_slice(b, &[d], &random_f32(5, d))?;
        let mut dbeta = Tensor::from_slice(b, &[d], &random_f32(6, d))?;
        let dx = layernorm::backward(&x, &gamma, &saved, &dy, &mut dgamma, &mut dbeta)?;
        Ok(vec![
            ("y", y.to_vec()?),
            ("dx", dx.to_vec()?),
            ("dgamma", dgamma.to_vec()?),
            ("dbeta", dbeta.to_vec()?),
        ])
    }
    compare("layernorm", &on(&Cpu::<f32>::new())?, &on(&Cuda::first()?)?);
    Ok(())
}

fn driver_err(what: &str) -> impl Fn(cudarc::driver::DriverError) -> Error + '_ {
    move |e| Error::Cuda(format!("{what}: {e:?}"))
}

/// A context and stream of the emulated device through cudarc alone (the crate's `Cuda` is opened first, which
/// loads the emulator's libraries).
fn raw_stream() -> Result<(Arc<CudaContext>, Arc<CudaStream>)> {
    Cuda::first()?;
    let ctx = CudaContext::new(0).map_err(driver_err("cuCtxCreate"))?;
    // SAFETY: one stream; nothing here needs cudarc's cross-stream events.
    unsafe { ctx.disable_event_tracking() };
    let stream = ctx.new_stream().map_err(driver_err("cuStreamCreate"))?;
    Ok((ctx, stream))
}

fn zeros(stream: &Arc<CudaStream>, n: usize) -> Result<CudaSlice<f32>> {
    stream
        .alloc_zeros::<f32>(n)
        .map_err(driver_err("cuMemAllocAsync"))
}

/// `layernorm_bwd_f32` at d 768 launched through cudarc with `warps` warps, each with 2·768 f32 sums of dynamic
/// shared memory: 8 warps ask for 49152 bytes, which with the kernel's static bytes exceed the 48 KiB a launch
/// gets (the launch the crate's LayerNorm backward made before its fix); with `warps` 0, as many as fit.
fn layernorm_backward_launch(warps: usize) -> Result<()> {
    let (ctx, stream) = raw_stream()?;
    let ptx =
        emulator::module_ptx("layernorm").ok_or_else(|| Error::Cuda("no layernorm PTX".into()))?;
    let module = ctx
        .load_module(cudarc::nvrtc::Ptx::from_src(ptx))
        .map_err(driver_err("cuModuleLoadData"))?;
    let f = module
        .load_function("layernorm_bwd_f32")
        .map_err(driver_err("cuModuleGetFunction"))?;
    let (rows, d) = (16usize, 768usize);
    let warp_bytes = 2 * d * 4;
    let static_bytes = f
        .shared_size_bytes()
        .map_err(driver_err("cuFuncGetAttribute"))? as usize;
    let warps = if warps == 0 {
        (48 * 1024 - static_bytes) / warp_bytes
    } else {
        warps
    };
    let blocks = rows.div_ceil(warps);
    let (x, gamma, mean, rstd, dy) = (
        zeros(&stream, rows * d)?,
        zeros(&stream, d)?,
        zeros(&stream, rows)?,
        zeros(&stream, rows)?,
        zeros(&stream, rows * d)?,
    );
    let (mut dx, mut part, mut dgamma, mut dbeta) = (
        zeros(&stream, rows * d)?,
        zeros(&stream, blocks * 2 * d)?,
        zeros(&stream, d)?,
        zeros(&stream, d)?,
    );
    let mut ticket = stream
        .alloc_zeros::<u32>(1)
        .map_err(driver_err("cuMemAllocAsync"))?;
    let (n_rows, width) = (rows as i64, d as i32);
    let config = LaunchConfig {
        grid_dim: (blocks as u32, 1, 1),
        block_dim: (32 * warps as u32, 1, 1),
        shared_mem_bytes: (warps * warp_bytes) as u32,
    };
    let mut launch = stream.launch_builder(&f);
    launch
        .arg(&x)
        .arg(&gamma)
        .arg(&mean)
        .arg(&rstd)
        .arg(&dy)
        .arg(&mut dx)
        .arg(&mut part)
        .arg(&mut dgamma)
        .arg(&mut dbeta)
        .arg(&mut ticket)
        .arg(&n_rows)
        .arg(&width);
    // SAFETY: the arguments are layernorm_bwd_f32's, every buffer of the size it reads and writes.
    unsafe { launch.launch(config) }.map_err(driver_err(&format!(
        "cuLaunchKernel(layernorm_bwd_f32, {} bytes of dynamic shared memory beside {static_bytes} static)",
        warps * warp_bytes
    )))?;
    stream
        .synchronize()
        .map_err(driver_err("cuStreamSynchronize"))?;
    Ok(())
}

/// A kernel (`scale_f32`) captured into a graph and replayed; with `sync`, the stream is synchronised during
/// the capture, which the driver refuses, and the capture's end then reports it invalidated.
fn capture(sync: bool) -> Result<()> {
    let (ctx, stream) = raw_stream()?;
    let ptx = emulator::module_ptx("elementwise")
        .ok_or_else(|| Error::Cuda("no elementwise PTX".into()))?;
    let module = ctx
        .load_module(cudarc::nvrtc::Ptx::from_src(ptx))
        .map_err(driver_err("cuModuleLoadData"))?;
    let f = module
        .load_function("scale_f32")
        .map_err(driver_err("cuModuleGetFunction"))?;
    let n = 256usize;
    let mut x = stream
        .clone_htod(&vec![1.0f32; n])
        .map_err(driver_err("cuMemcpyHtoDAsync"))?;
    stream
        .begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
        .map_err(driver_err("cuStreamBeginCapture"))?;
    let (len, factor) = (n as i64, 2.0f32);
    let mut launch = stream.launch_builder(&f);
    launch.arg(&mut x).arg(&len).arg(&factor);
    // SAFETY: scale_f32(float* x, long n, float factor) over the n elements of x.
    unsafe { launch.launch(LaunchConfig::for_num_elems(n as u32)) }
        .map_err(driver_err("cuLaunchKernel"))?;
    if sync {
        if let Err(e) = stream.synchronize() {
            let end = stream
                .end_capture(CUgraphInstantiate_flags(0))
                .map(|g| g.is_some());
            return Err(Error::Cuda(format!(
                "cuStreamSynchronize during the capture: {e:?}; then cuStreamEndCapture: {end:?}"
            )));
        }
    }
    let graph = stream
        .end_capture(CUgraphInstantiate_flags(0))
        .map_err(driver_err("cuStreamEndCapture"))?
        .ok_or_else(|| Error::Cuda("the capture made no graph".into()))?;
    graph.launch().map_err(driver_err("cuGraphLaunch"))?;
    let y = stream.clone_dtoh(&x).map_err(driver_err("cuMemcpyDtoH"))?;
    assert!(
        y.iter().all(|&v| v == 2.0),
        "the replayed graph did not scale by 2"
    );
    Ok(())
}

/// Runs the scenario the parent names; nothing when run directly.
#[test]
#[ignore = "a child of the planted-bug tests below"]
fn planted_child() -> Result<()> {
    let Ok(scenario) = std::env::var(SCENARIO) else {
        return Ok(());
    };
    match scenario.as_str() {
        "attention-simple" => attention(AttnVersion::Simple),
        "attention-tuned" => attention(AttnVersion::Tuned),
        "shortening" => shortening(),
        "layernorm" => layer_norm(),
        "shared-memory-over-48k" => layernorm_backward_launch(8),
        "shared-memory-within-48k" => layernorm_backward_launch(0),
        "capture" => capture(false),
        "sync-during-capture" => capture(true),
        other => panic!("{SCENARIO}={other}: no such scenario"),
    }?;
    // What the parent looks for: the scenario ran (not a test filter that matched nothing) and passed.
    println!("{PASSED}{scenario}");
    Ok(())
}

// ---- The parent: a child per scenario, its outcome judged -----------------------------------------------------

/// The emulator's directory, or `None` (after saying so) when this build has none and none is required.
fn emulator_or_skip(what: &str) -> Option<PathBuf> {
    let dir = emulator::library_dir()
        .map(PathBuf::from)
        .filter(|d| d.join("libcuda.so").is_file());
    if dir.is_none() {
        let required = std::env::var("HOURGLASS_CUDA").is_ok_and(|v| v == "emulator")
            || std::env::var("HOURGLASS_REQUIRE_GPU").is_ok_and(|v| v == "1");
        assert!(
            !required,
            "{what}: this build has no emulated device (nvcc and g++ are needed at build time)"
        );
        eprintln!("skipped: {what}: this build has no emulated device");
    }
    dir
}

/// Runs `scenario` in a child, with the kernels of planted-bug `variant` or the real ones: (passed, output).
fn child(scenario: &str, variant: Option<&str>) -> (bool, String) {
    let exe = std::env::current_exe().expect("the test binary");
    // The child test's name as libtest knows it: its module path less the crate's name.
    let (_, module) = module_path!()
        .split_once("::")
        .expect("a module of the suite");
    let name = format!("{module}::planted_child");
    let mut c = Command::new(exe);
    c.args([
        "--exact",
        &name,
        "--include-ignored",
        "--nocapture",
        "--test-threads",
        "1",
    ])
    .env("HOURGLASS_CUDA", "emulator")
    .env(SCENARIO, scenario)
    .env_remove("HOURGLASS_EMU_KERNELS_FROM");
    if let Some(v) = variant {
        let dir = emulator::planted_dir(v).expect("the emulator's directory");
        assert!(
            dir.is_dir(),
            "planted-bug variant {v}: {} is missing (emulator/planted.rs builds it)",
            dir.display()
        );
        c.env("HOURGLASS_EMU_KERNELS_FROM", dir);
    }
    let out = c.output().expect("running the test binary as a child");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// The first line of `text` containing `needle`.
fn line_with<'a>(text: &'a str, needle: &str) -> Option<&'a str> {
    text.lines().find(|l| l.contains(needle))
}

/// Variant `variant` must make `scenario` fail, caught by the check that emulator/planted.rs names for it (its
/// `check` file: the check, then a phrase of its message).
fn caught(variant: &str, scenario: &str) {
    let what = format!("planted bug {variant}");
    if emulator_or_skip(&what).is_none() {
        return;
    }
    let dir = emulator::planted_dir(variant).expect("the emulator's directory");
    let expected = std::fs::read_to_string(dir.join("check"))
        .unwrap_or_else(|e| panic!("{what}: {}: {e}", dir.join("check").display()));
    let (check, phrase) = expected
        .trim()
        .split_once('\n')
        .expect("a check and a phrase");
    let (passed, out) = child(scenario, Some(variant));
    assert!(
        line_with(&out, "HOURGLASS_EMU_KERNELS_FROM: loading").is_some(),
        "{what}: the child did not load the variant's kernels:\n{out}"
    );
    assert!(
        !passed,
        "{what}: {scenario} passed; the defect went unnoticed:\n{out}"
    );
    let line = if check == "parity" {
        // No sanitizer can see it: the run is clean, and the comparison with the CPU fails.
        for c in CHECKS {
            assert!(
                line_with(&out, &format!("{c}: kernel")).is_none(),
                "{what}: unexpected {c} finding:\n{out}"
            );
        }
        line_with(&out, "parity:")
    } else {
        line_with(&out, &format!("{check}: kernel"))
    };
    let line = line.unwrap_or_else(|| panic!("{what}: failed, but not by {check}:\n{out}"));
    assert!(
        line.contains(phrase),
        "{what}: caught by {check}, but without {phrase:?}: {line}"
    );
    println!("{what}: caught by {check}: {}", line.trim());
}

/// `scenario` with the real kernels must pass (the control of the variants that break it).
fn passes(scenario: &str) {
    let what = format!("{scenario} with the real kernels");
    if emulator_or_skip(&what).is_none() {
        return;
    }
    let (passed, out) = child(scenario, None);
    assert!(passed, "{what} failed:\n{out}");
    assert!(
        out.lines()
            .any(|l| l.ends_with(&format!("{PASSED}{scenario}"))),
        "{what}: the child did not run it:\n{out}"
    );
}

/// `scenario` with the real kernels must fail with a driver error whose output has every one of `phrases`.
fn refused(scenario: &str, phrases: &[&str]) {
    if emulator_or_skip(scenario).is_none() {
        return;
    }
    let (passed, out) = child(scenario, None);
    assert!(!passed, "{scenario}: the driver allowed it:\n{out}");
    for p in phrases {
        let line = line_with(&out, p)
            .unwrap_or_else(|| panic!("{scenario}: no {p:?} in the output:\n{out}"));
        println!("{scenario}: {}", line.trim());
    }
}

#[test]
#[ignore = "runs the emulated CUDA device"]
fn swapped_mma_fragment_register_fails_parity() {
    caught("mma_fragment_swapped", "attention-simple");
}

#[test]
#[ignore = "runs the emulated CUDA device"]
fn ldmatrix_without_trans_fails_parity() {
    caught("ldmatrix_missing_trans", "attention-tuned");
}

#[test]
#[ignore = "runs the emulated CUDA device"]
fn removed_syncthreads_is_a_racecheck_finding() {
    caught("syncthreads_removed", "attention-tuned");
}

#[test]
#[ignore = "runs the emulated CUDA device"]
fn missing_cp_async_wait_group_is_a_racecheck_finding() {
    caught("cp_async_wait_group_missing", "attention-tuned");
}

#[test]
#[ignore = "runs the emulated CUDA device"]
fn off_by_one_tile_bound_is_a_memcheck_finding() {
    caught("tile_bound_off_by_one", "attention-tuned");
}

#[test]
#[ignore = "runs the emulated CUDA device"]
fn out_of_bounds_store_is_a_memcheck_finding() {
    caught("out_of_bounds_store", "shortening");
}

#[test]
#[ignore = "runs the emulated CUDA device"]
fn read_of_unwritten_memory_is_an_initcheck_finding() {
    caught("unwritten_read", "layernorm");
}

#[test]
#[ignore = "runs the emulated CUDA device"]
fn too_much_shared_memory_is_refused_at_launch() {
    refused(
        "shared-memory-over-48k",
        &[
            "exceed the 48 KiB a launch gets",
            "CUDA_ERROR_INVALID_VALUE",
        ],
    );
}

#[test]
#[ignore = "runs the emulated CUDA device"]
fn synchronising_during_capture_is_refused_and_invalidates_it() {
    refused(
        "sync-during-capture",
        &[
            "CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED",
            "CUDA_ERROR_STREAM_CAPTURE_INVALIDATED",
        ],
    );
}

#[test]
#[ignore = "runs the emulated CUDA device"]
fn the_scenarios_pass_with_the_real_kernels() {
    for scenario in [
        "attention-simple",
        "attention-tuned",
        "shortening",
        "layernorm",
        "shared-memory-within-48k",
        "capture",
    ] {
        passes(scenario);
    }
}
