//! The CLI on the CUDA device, end to end: `hourglass train --device cuda` (a tiny bf16 model, the default CUDA
//! graph step) whose losses match the same run on the CPU within the bf16 training bound, `hourglass sample
//! --device cuda` drawing the same bytes incrementally as with `--recompute`, the same for a run over images
//! (its grid, and `sample --png` completing test images), and `hourglass forward --device cuda` giving the CPU
//! path's numbers in f32 and bf16.
//!
//! Ignored without a GPU; `HOURGLASS_REQUIRE_GPU=1` makes a missing device fail them. CI runs them on the
//! emulated device (`HOURGLASS_CUDA=emulator`, docs/emulator.md).

use crate::common::cli::{data, expect_ok, hourglass, temp_dir};
use crate::common::{
    norm_f32, rel_err_f32, BF16_LOSS_BOUND, BF16_MODEL_GRAD_BOUND, BF16_MODEL_Y_BOUND,
};
use hourglass::checkpoint::{HostTensor, TensorFile};
use hourglass::device::cuda::device_or_skip;
use hourglass::device::cuda::modules::cubin_for;
use std::path::{Path, PathBuf};

/// Whether a CUDA device is there (else the test says it skipped; with `HOURGLASS_REQUIRE_GPU=1` it fails).
fn have_device(what: &str) -> bool {
    device_or_skip(what).unwrap().is_some()
}

/// A tiny bf16 run on `device` into `out`: every step's training bits per character (history.csv).
fn train(device: &str, data: &Path, out: &Path) -> Vec<f64> {
    let (data, out) = (data.to_str().unwrap(), out.to_str().unwrap());
    #[rustfmt::skip]
    let args = [
        // One preset for both devices (the default differs: gpu with a GPU, cpu otherwise).
        "train", "--preset", "cpu", "--device", device, "--precision", "bf16", "--no-progress", "--data", data,
        "--out", out,
        "--heads", "2", "--d-model", "32", "--d-ff", "64", "--factors", "2", "--depth", "[1,1,1]",
        "--seq-len", "16", "--batch", "4", "--steps", "2", "--warmup-steps", "1", "--eval-every", "2",
        "--eval-batches", "1", "--sample-length", "8", "--dropout=0.1",
    ];
    expect_ok(&hourglass(&args));
    training_bits(Path::new(out))
}

/// Every step's training loss in bits of the run in `out` (the second column of its history.csv).
fn training_bits(out: &Path) -> Vec<f64> {
    let csv = std::fs::read_to_string(out.join("history.csv")).unwrap();
    csv.lines()
        .skip(1)
        .filter_map(|line| line.split(',').nth(1)?.parse::<f64>().ok())
        .collect()
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn train_then_sample_on_cuda_match_the_cpu() {
    if !have_device("train_then_sample_on_cuda_match_the_cpu") {
        return;
    }
    let dir = temp_dir("gpu-train");
    let data = data(&dir);
    let gpu = train("cuda", &data, &dir.join("gpu"));
    let cpu = train("cpu", &data, &dir.join("cpu"));
    // Two steps (the second after an update on the device): bf16 training is chaotic over more, as
    // tests/suite/gpu/train_loop.rs explains.
    assert_eq!(gpu.len(), 2, "one training loss a step: {gpu:?}");
    let worst = gpu
        .iter()
        .zip(&cpu)
        .map(|(g, c)| ((g - c) / c).abs())
        .fold(0.0, f64::max);
    println!("bf16 training losses, cuda vs cpu: {gpu:?} vs {cpu:?}, worst relative difference {worst:.2e}");
    assert!(worst < BF16_LOSS_BOUND, "losses differ by {worst:e}");

    // Incremental decoding on the device draws what recomputing the whole context draws (past a full window).
    let checkpoint = dir.join("gpu/checkpoint.safetensors");
    let sample = |extra: &[&str]| {
        let mut args = vec![
            "sample",
            "--device",
            "cuda",
            "--checkpoint",
            checkpoint.to_str().unwrap(),
            "--length",
            "24",
            "--context",
            "8",
            "--seed",
            "3",
            "--prompt",
            "An ",
        ];
        args.extend(extra);
        expect_ok(&hourglass(&args))
    };
    let decoded = sample(&[]);
    assert!(decoded.len() >= 24, "{decoded:?}");
    assert_eq!(
        decoded,
        sample(&["--recompute"]),
        "decoding and recomputing drew different bytes"
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn forward_on_cuda_gives_the_cpu_numbers_in_f32_and_bf16() {
    if !have_device("forward_on_cuda_gives_the_cpu_numbers_in_f32_and_bf16") {
        return;
    }
    let dir = temp_dir("gpu-forward");
    // A model with every kind of part: attention shortening, linear pooling, window masks, two levels.
    let fixture = Path::new("tests/fixtures/golden/attn-linear-window_f2x3_s9_b1").to_path_buf();
    let arg = |p: PathBuf| p.to_str().unwrap().to_string();
    for precision in ["f32", "bf16"] {
        let run = |device: &str| -> TensorFile {
            let output = dir.join(format!("{device}-{precision}.safetensors"));
            #[rustfmt::skip]
            let args = [
                "forward", "--config", &arg(fixture.join("config.json")),
                "--weights", &arg(fixture.join("weights.safetensors")),
                "--input", &arg(fixture.join("input.safetensors")), "--output", &arg(output.clone()),
                "--device", device, "--precision", precision,
            ];
            expect_ok(&hourglass(&args));
            TensorFile::read(&output).unwrap()
        };
        let (gpu, cpu) = (run("cuda"), run("cpu"));
        assert!(
            cpu.tensors.contains_key("y") && cpu.tensors.len() > 2,
            "y, gx and the gradients"
        );
        for (name, c) in &cpu.tensors {
            let g: &HostTensor = &gpu.tensors[name];
            assert_eq!(g.shape, c.shape, "{precision} {name}");
            let bound = match (precision, name.as_str()) {
                ("f32", _) => 1e-5,
                (_, "y") => BF16_MODEL_Y_BOUND,
                _ => BF16_MODEL_GRAD_BOUND,
            };
            // As tests/suite/gpu/model.rs: a gradient that is zero in exact arithmetic holds rounding noise on both
            // sides, so ||a-b|| <= bound·||b|| + 1e-6·sqrt(n).
            let diff: Vec<f32> = g.data.iter().zip(&c.data).map(|(a, b)| a - b).collect();
            let limit = bound * norm_f32(&c.data) + 1e-6 * (c.data.len() as f64).sqrt();
            let e = rel_err_f32(&g.data, &c.data);
            println!("{precision} {name}: cuda vs cpu {e:.2e}");
            assert!(
                norm_f32(&diff) <= limit,
                "{precision} {name}: cuda vs cpu {e:e}"
            );
        }
    }
    std::fs::remove_dir_all(&dir).ok();
}

/// `hourglass kernels --device cuda`, on an emulated device of compute capability `capability` and with
/// `HOURGLASS_KERNELS=source` when given.
fn kernels_on(capability: Option<&str>, source: Option<&str>) -> std::process::Output {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_hourglass"));
    command.args(["kernels", "--device", "cuda"]);
    if let Some(capability) = capability {
        command.env("HOURGLASS_EMU_COMPUTE_CAPABILITY", capability);
    }
    if let Some(source) = source {
        command.env("HOURGLASS_KERNELS", source);
    }
    command.output().expect("run the hourglass binary")
}

/// What `hourglass kernels --device cuda` says the kernels were loaded from.
fn kernels_loaded_from(capability: Option<&str>, source: Option<&str>) -> String {
    let stdout = expect_ok(&kernels_on(capability, source));
    let line = stdout.lines().next().unwrap_or_default();
    line.split("kernels from ")
        .nth(1)
        .unwrap_or(line)
        .to_string()
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn the_kernels_load_from_the_devices_cubin_else_the_ptx() {
    let Some(cuda) =
        device_or_skip("the_kernels_load_from_the_devices_cubin_else_the_ptx").unwrap()
    else {
        return;
    };
    let images = cuda.kernel_images();
    let expected = match cubin_for(images.compute_capability, [80, 89, 90]) {
        Some(arch) => format!("sm_{arch} cubins"),
        None => "PTX JIT-compiled by the driver".to_string(),
    };
    let loaded = kernels_loaded_from(None, None);
    println!("{loaded}");
    assert!(
        loaded.starts_with(&expected),
        "{loaded}: expected {expected}"
    );
    if !cuda.is_emulated() {
        // A GPU's JIT compile of the PTX takes tens of seconds on a cold cache: tools/gpu-validate.sh times
        // both paths instead.
        return;
    }
    let jit = kernels_loaded_from(None, Some("ptx"));
    assert!(
        jit.starts_with("PTX JIT-compiled by the driver (HOURGLASS_KERNELS=ptx)"),
        "{jit}"
    );
    // The emulated device can be any GPU: each architecture gets its cubin, or the PTX, with every module's
    // kernels and variables found in it.
    for (capability, expected) in [
        ("8.0", "sm_80 cubins; compute capability 8.0"),
        ("8.6", "sm_80 cubins; compute capability 8.6"),
        ("8.9", "sm_89 cubins; compute capability 8.9"),
        ("9.0", "sm_90 cubins; compute capability 9.0"),
        (
            "10.0",
            "PTX JIT-compiled by the driver (no cubin for sm_100); compute capability 10.0",
        ),
    ] {
        let loaded = kernels_loaded_from(Some(capability), None);
        assert!(
            loaded.starts_with(expected),
            "compute capability {capability}: {loaded}"
        );
    }
    // Below the PTX's target (compute_80) nothing loads, and the error says why.
    let out = kernels_on(Some("7.5"), None);
    let stderr = crate::common::cli::text(&out.stderr);
    assert!(
        !out.status.success()
            && stderr.contains("no cubin for sm_75")
            && stderr.contains("NO_BINARY_FOR_GPU"),
        "{stderr}"
    );
}

/// A run over images on `device` (8 × 8 stripes, the tiny image model, bf16, two steps) into `out`: every
/// step's training bits per dimension (history.csv).
fn train_images(device: &str, data: &Path, out: &Path) -> Vec<f64> {
    let config = out.with_extension("json");
    std::fs::write(&config, crate::images::tiny_config(8, 8, 2).to_json()).unwrap();
    // One preset under the file on both devices (without --preset the default differs, and the file leaves
    // the depth to it).
    #[rustfmt::skip]
    let args = [
        "train", "--preset", "cpu", "--config", config.to_str().unwrap(), "--data", data.to_str().unwrap(),
        "--out", out.to_str().unwrap(), "--device", device, "--precision", "bf16", "--no-progress",
    ];
    expect_ok(&hourglass(&args));
    training_bits(out)
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn an_image_run_on_cuda_matches_the_cpu_and_draws_its_grid() {
    if !have_device("an_image_run_on_cuda_matches_the_cpu_and_draws_its_grid") {
        return;
    }
    use crate::images::{image_folder, striped_images};
    let dir = temp_dir("gpu-images");
    let data = image_folder(
        &dir,
        &striped_images(100, 8, 8, 1),
        &striped_images(20, 8, 8, 2),
    );
    let gpu = train_images("cuda", &data, &dir.join("gpu"));
    let cpu = train_images("cpu", &data, &dir.join("cpu"));
    assert_eq!(gpu.len(), 2, "one training loss a step: {gpu:?}");
    let worst = gpu
        .iter()
        .zip(&cpu)
        .map(|(g, c)| ((g - c) / c).abs())
        .fold(0.0, f64::max);
    println!("bf16 image training, bits per dimension, cuda vs cpu: {gpu:?} vs {cpu:?}, worst {worst:.2e}");
    assert!(worst < BF16_LOSS_BOUND, "losses differ by {worst:e}");
    assert!(
        dir.join("gpu/samples.png").is_file(),
        "the run drew no grid"
    );

    // Whole images decoded on the device, completing test images' first rows, are what recomputation draws.
    let checkpoint = dir.join("gpu/checkpoint.safetensors");
    let grid = |name: &str, extra: &[&str]| {
        let png = dir.join(name);
        let mut args = vec![
            "sample",
            "--device",
            "cuda",
            "--checkpoint",
            checkpoint.to_str().unwrap(),
        ];
        args.extend([
            "--png",
            png.to_str().unwrap(),
            "--num-samples",
            "4",
            "--prompt-rows",
            "3",
        ]);
        args.extend(["--data", data.to_str().unwrap(), "--seed", "5"]);
        args.extend(extra);
        expect_ok(&hourglass(&args));
        std::fs::read(png).unwrap()
    };
    assert_eq!(
        grid("decoded.png", &[]),
        grid("recomputed.png", &["--recompute"]),
        "decoding and recomputing drew different images"
    );
    std::fs::remove_dir_all(&dir).ok();
}
