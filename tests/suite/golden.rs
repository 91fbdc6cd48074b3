//! Golden tests against the PyTorch reference: every case under `tests/fixtures/golden/<case>/` (written by
//! `tools/golden.py`) holds `config.json`, `weights.safetensors`, `input.safetensors` (`x`, `gy`) and
//! `expected.safetensors` (`y`, `gx`, `grad.<name>` for every parameter). `forward_files` on `Cpu<f32>` must
//! produce exactly the expected set of tensors, each within a relative error `||a - b|| / ||b||` of 1e-5.
//!
//! The cases cover the reference model and every component of docs/components.md (linear and attention
//! shortening / upsampling, both attention resampling masks, depth triples, non-causal models, rotary
//! positions); their `config.json` holds the keys of that spec. The rotary cases (`rotary_*`,
//! `rotary-attn_*`, `noncausal-rotary-attn_*`) pin the scheme of docs/components.md, "Positions": it is
//! applied in every transformer layer's self-attention at the level's own positions and not in the attention
//! resamplers' cross-attention (`tools/golden.py` asserts that switching rotary off, or on in the
//! cross-attention too, changes `y` by over 1e-3 relative, far above `REL_TOL`).
//!
//! Gradients that are zero in exact arithmetic (the key bias of every attention without rotary,
//! `grad.*.key.linear.bias` of `self_attn` and of the resampling `attention`: softmax ignores a constant added
//! to all of a query's scores) are float32 rounding noise in both runs, so their relative error means nothing;
//! they are held to an absolute bound instead (see `ZERO_IN_THEORY_RMS`). With rotary, a self-attention's key
//! bias is rotated differently at every position, so its gradient is not zero and is held to `REL_TOL` like
//! any other (the absolute bound applies only where the expected tensor itself is that small). Other
//! gradients that vanish in theory (query and key projections of an attention whose queries see a single key,
//! or only identical keys) are exact zeros in the fixtures, where the relative error is the absolute one.

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

/// Gradients that may vanish in exact arithmetic (see the module docs): only those whose expected values are
/// rounding-noise small (`is_noise`) are held to the absolute bound.
fn zero_in_theory(name: &str) -> bool {
    name.starts_with("grad.") && name.ends_with(".key.linear.bias")
}

/// RMS of `t` below `ZERO_IN_THEORY_RMS`: rounding noise, not a value a relative error can be taken of.
fn is_noise(t: &HostTensor) -> bool {
    norm(t.data.iter().map(|&v| v as f64)) / (t.data.len() as f64).sqrt() < ZERO_IN_THEORY_RMS
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
            .filter(|(n, want)| !(zero_in_theory(n) && is_noise(want)))
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

/// The rotary cases are there and are read as rotary (a config whose key was dropped or misread would run
/// without positions and fail the comparison, but a deleted case would pass silently).
#[test]
fn rotary_cases_present() {
    for name in [
        "rotary_f2x3_s17_b2",
        "rotary-attn_f3x2_s16_b2",
        "noncausal-rotary-attn_f2_s9_b1",
    ] {
        let config = config(&golden_dir().join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(
            config.positions,
            hourglass::config::Positions::Rotary,
            "{name}"
        );
    }
}

/// The same comparison through the built binary, on a reference case and two whose configs use the keys of
/// docs/components.md (one with `"positions": "rotary"`): `hourglass forward` writes a file we read back.
#[test]
fn cli_forward_matches_pytorch() {
    for name in [
        "f2_s8_b2",
        "noncausal-window_f3_s8_b1",
        "rotary-attn_f3x2_s16_b2",
    ] {
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
