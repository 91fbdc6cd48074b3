//! Golden tests against the PyTorch reference: every case under `tests/fixtures/golden/<case>/` (written by
//! `tools/golden.py`) holds `config.json`, `weights.safetensors`, `input.safetensors` (`x`, `gy`) and
//! `expected.safetensors` (`y`, `gx`, `grad.<name>` for every parameter). `forward_files` on `Cpu<f32>` must
//! produce exactly the expected set of tensors, each within a relative error `||a - b|| / ||b||` of 1e-5.
//!
//! The cases cover the reference model and every component of docs/components.md (linear and attention
//! shortening / upsampling, both attention resampling masks, depth triples, non-causal models); their
//! `config.json` holds the keys of that spec.
//!
//! Gradients that are zero in exact arithmetic (every attention's key bias, `grad.*.key.linear.bias` of
//! `self_attn` and of the resampling `attention`: softmax ignores a constant added to all of a query's
//! scores) are float32 rounding noise in both runs, so their relative error means nothing; they are held to
//! an absolute bound instead (see `ZERO_IN_THEORY_RMS`). Other gradients that vanish in theory (query and key
//! projections of an attention whose queries see a single key, or only identical keys) are exact zeros in
//! the fixtures, where the relative error is the absolute one.

use hourglass::checkpoint::{HostTensor, TensorFile};
use hourglass::run::forward_files;
use hourglass::{Cpu, HourGlassConfig};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Largest accepted `||ours - pytorch|| / ||pytorch||`.
const REL_TOL: f64 = 1e-5;

/// For tensors that are zero in theory: largest accepted RMS of `ours - pytorch`, and the largest RMS the
/// expected tensor itself may have (anything bigger is not rounding noise and is held to `REL_TOL`).
const ZERO_IN_THEORY_RMS: f64 = 1e-6;

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/golden")
}

/// Every case directory, sorted; panics (fails the test) when there is none.
fn cases() -> Vec<PathBuf> {
    let dir = golden_dir();
    let mut cases: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.is_dir())
        .collect();
    cases.sort();
    assert!(
        !cases.is_empty(),
        "no golden cases under {} (generate them with tools/golden.py)",
        dir.display()
    );
    cases
}

fn read(case: &Path, file: &str) -> TensorFile {
    let path = case.join(file);
    TensorFile::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn config(case: &Path) -> hourglass::Result<HourGlassConfig> {
    HourGlassConfig::from_file(&case.join("config.json"))
}

fn norm(v: impl Iterator<Item = f64>) -> f64 {
    v.map(|a| a * a).sum::<f64>().sqrt()
}

/// `||a - b|| / ||b||` in f64, infinite if anything is not finite (so NaN never passes).
fn rel_err(a: &HostTensor, b: &HostTensor) -> f64 {
    let (diff, nb) = diff_norms(a, b);
    if nb == 0.0 {
        diff
    } else {
        diff / nb
    }
}

/// `(||a - b||, ||b||)`, both infinite if anything is not finite.
fn diff_norms(a: &HostTensor, b: &HostTensor) -> (f64, f64) {
    assert_eq!(a.data.len(), b.data.len());
    if a.data.iter().chain(&b.data).any(|v| !v.is_finite()) {
        return (f64::INFINITY, f64::INFINITY);
    }
    let diff = norm(
        a.data
            .iter()
            .zip(&b.data)
            .map(|(&x, &y)| x as f64 - y as f64),
    );
    let nb = norm(b.data.iter().map(|&y| y as f64));
    (diff, nb)
}

/// Gradients that vanish in exact arithmetic (see the module docs).
fn zero_in_theory(name: &str) -> bool {
    name.starts_with("grad.") && name.ends_with(".key.linear.bias")
}

/// Compares every tensor of `expected` with `got`; returns one line per failure.
fn compare(case: &str, got: &TensorFile, expected: &TensorFile) -> Vec<String> {
    let mut failures = Vec::new();
    let got_names: Vec<&String> = got.tensors.keys().collect();
    let want_names: Vec<&String> = expected.tensors.keys().collect();
    if got_names != want_names {
        failures.push(format!(
            "{case}: output names differ\n  missing: {:?}\n  extra:   {:?}",
            want_names
                .iter()
                .filter(|n| !got.tensors.contains_key(n.as_str()))
                .collect::<Vec<_>>(),
            got_names
                .iter()
                .filter(|n| !expected.tensors.contains_key(n.as_str()))
                .collect::<Vec<_>>()
        ));
    }
    for (name, want) in &expected.tensors {
        let Some(have) = got.tensors.get(name) else {
            continue;
        };
        if have.shape != want.shape {
            failures.push(format!(
                "{case}: {name} has shape {:?}, expected {:?}",
                have.shape, want.shape
            ));
            continue;
        }
        let rel = rel_err(have, want);
        if rel < REL_TOL {
            continue;
        }
        if zero_in_theory(name) {
            let (diff, nb) = diff_norms(have, want);
            let rms = |v: f64| v / (want.data.len() as f64).sqrt();
            if rms(nb) < ZERO_IN_THEORY_RMS && rms(diff) < ZERO_IN_THEORY_RMS {
                continue;
            }
        }
        failures.push(format!(
            "{case}: {name} {:?}: relative error {rel:.3e} >= {REL_TOL:e}",
            want.shape
        ));
    }
    failures
}

#[test]
fn golden_cases_match_pytorch() {
    let mut failures = Vec::new();
    for case in cases() {
        let name = case.file_name().unwrap().to_string_lossy().into_owned();
        let expected = read(&case, "expected.safetensors");
        // A case that cannot be loaded or run is a failure of its own; the other cases are still compared.
        let got = config(&case).and_then(|config| {
            forward_files(
                &Cpu::<f32>::new(),
                &config,
                &read(&case, "weights.safetensors"),
                &read(&case, "input.safetensors"),
            )
        });
        let got = match got {
            Ok(got) => got,
            Err(e) => {
                println!("{name}: FAILED to run: {e}");
                failures.push(format!("{name}: forward_files failed: {e}"));
                continue;
            }
        };
        let worst = expected
            .tensors
            .iter()
            .filter(|(n, _)| !zero_in_theory(n))
            .filter_map(|(n, want)| got.tensors.get(n).map(|have| (n, rel_err(have, want))))
            .max_by(|a, b| a.1.total_cmp(&b.1));
        if let Some((worst_name, worst_rel)) = worst {
            println!(
                "{name}: {} tensors, worst relative error {worst_rel:.3e} ({worst_name})",
                expected.tensors.len()
            );
        }
        failures.extend(compare(&name, &got, &expected));
    }
    assert!(
        failures.is_empty(),
        "{} failure(s):\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// The same comparison through the built binary, on a reference case and one whose config uses the keys of
/// docs/components.md: `hourglass forward` writes a file we read back.
#[test]
fn cli_forward_matches_pytorch() {
    for name in ["f2_s8_b2", "noncausal-window_f3_s8_b1"] {
        cli_forward_case(&golden_dir().join(name));
    }
}

fn cli_forward_case(case: &Path) {
    let name = case.file_name().unwrap().to_string_lossy().into_owned();
    let out_dir = std::env::temp_dir().join(format!(
        "hourglass-golden-cli-{}-{name}",
        std::process::id()
    ));
    std::fs::create_dir_all(&out_dir).unwrap();
    let output = out_dir.join("out.safetensors");
    let result = Command::new(env!("CARGO_BIN_EXE_hourglass"))
        .arg("forward")
        .arg("--config")
        .arg(case.join("config.json"))
        .arg("--weights")
        .arg(case.join("weights.safetensors"))
        .arg("--input")
        .arg(case.join("input.safetensors"))
        .arg("--output")
        .arg(&output)
        .args(["--device", "cpu"])
        .output()
        .expect("run the hourglass binary");
    assert!(
        result.status.success(),
        "hourglass forward failed ({}): {}",
        result.status,
        String::from_utf8_lossy(&result.stderr)
    );
    let got = TensorFile::read(&output).expect("read the CLI's output");
    std::fs::remove_dir_all(&out_dir).ok();
    let failures = compare(&name, &got, &read(case, "expected.safetensors"));
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
