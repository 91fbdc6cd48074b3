//! `hourglass train` and `hourglass sample` end to end on a tiny corpus written here: the outputs, resume,
//! Ctrl-C, the config file, and every bad input as `error: ...` with exit status 2.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn hourglass(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_hourglass"))
        .args(args)
        .output()
        .expect("run the hourglass binary")
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("hourglass-cli-{name}-{}", std::process::id()));
    std::fs::remove_dir_all(&dir).ok();
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A small text file to train on.
fn data(dir: &Path) -> PathBuf {
    let path = dir.join("text.txt");
    let text = "<page><title>Hourglass</title><text>An hourglass measures time with sand. </text></page>\n"
        .repeat(60);
    std::fs::write(&path, text).unwrap();
    path
}

const TINY: [&str; 26] = [
    "--device",
    "cpu",
    "--no-progress",
    "--heads",
    "2",
    "--d-model",
    "16",
    "--d-ff",
    "32",
    "--factors",
    "2",
    "--depth",
    "[1,1,1]",
    "--seq-len",
    "16",
    "--batch",
    "4",
    "--warmup-steps",
    "2",
    "--eval-every",
    "3",
    "--eval-batches",
    "2",
    "--sample-length",
    "10",
    "--dropout=0.1",
];

fn train(extra: &[&str]) -> Output {
    let mut args = vec!["train"];
    args.extend(TINY);
    args.extend(extra);
    hourglass(&args)
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[track_caller]
fn expect_ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "status {:?}\nstdout: {}\nstderr: {}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

#[track_caller]
fn expect_cli_err(out: &Output, needles: &[&str]) {
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "exit status; stderr: {stderr}");
    assert!(stderr.contains("error: "), "stderr: {stderr}");
    assert!(!stderr.contains("panicked"), "stderr: {stderr}");
    for n in needles {
        assert!(
            stderr.contains(n),
            "stderr does not mention {n:?}: {stderr}"
        );
    }
}

#[test]
fn train_writes_everything_then_sample_and_resume_work() {
    let dir = temp_dir("train");
    let data = data(&dir);
    let out_dir = dir.join("run");
    let (d, o) = (data.to_str().unwrap(), out_dir.to_str().unwrap());
    let stdout = expect_ok(&train(&["--data", d, "--out", o, "--steps", "6"]));
    for needle in [
        "unigram baseline",
        "validation:",
        "bits per character",
        "sample",
        "wrote",
    ] {
        assert!(stdout.contains(needle), "stdout lacks {needle:?}: {stdout}");
    }
    let png = std::fs::read(out_dir.join("curve.png")).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    let csv = std::fs::read_to_string(out_dir.join("history.csv")).unwrap();
    assert_eq!(csv.lines().count(), 7, "{csv}");
    assert!(
        csv.lines().nth(3).unwrap().split(',').nth(2).unwrap() != "",
        "{csv}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out_dir.join("history.json")).unwrap())
            .unwrap();
    assert!(json["final_valid_bits_per_char"].as_f64().unwrap() > 0.0);
    let config = std::fs::read_to_string(out_dir.join("config.json")).unwrap();
    assert!(config.contains("\"d_model\": 16"), "{config}");

    // Sample: the prompt, then exactly --length bytes, streamed to stdout.
    let ckpt = out_dir.join("checkpoint.safetensors");
    let c = ckpt.to_str().unwrap();
    let out = hourglass(&[
        "sample",
        "--checkpoint",
        c,
        "--prompt",
        "<page>",
        "--length",
        "25",
        "--device",
        "cpu",
    ]);
    expect_ok(&out);
    assert_eq!(out.stdout.len(), "<page>".len() + 25 + 1);
    assert!(out.stdout.starts_with(b"<page>"));

    // Eval on the validation split reproduces the run's final validation.
    let out = hourglass(&[
        "eval",
        "--checkpoint",
        c,
        "--data",
        d,
        "--split",
        "valid",
        "--device",
        "cpu",
    ]);
    let stdout = expect_ok(&out);
    let bits: f64 = stdout
        .split(": ")
        .nth(1)
        .and_then(|t| t.split(' ').next())
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("{stdout}"));
    let fin = json["final_valid_bits_per_char"].as_f64().unwrap();
    assert!((bits - fin).abs() < 1e-4, "eval {bits} vs the run's {fin}");
    let out = hourglass(&["eval", "--checkpoint", "no-such.safetensors", "--data", d]);
    expect_cli_err(&out, &["no-such.safetensors"]);

    // Resume to 9 steps: same settings (taken from the checkpoint), three more steps.
    let out = hourglass(&[
        "train",
        "--resume",
        c,
        "--data",
        d,
        "--steps",
        "9",
        "--device",
        "cpu",
        "--no-progress",
        "--sample-length",
        "0",
    ]);
    let stdout = expect_ok(&out);
    assert!(
        stdout.contains("resuming") && stdout.contains("at step 6"),
        "{stdout}"
    );
    let csv = std::fs::read_to_string(out_dir.join("history.csv")).unwrap();
    assert_eq!(csv.lines().count(), 10, "{csv}");

    // A checkpoint from another config, and other data.
    let out = hourglass(&[
        "train",
        "--resume",
        c,
        "--data",
        d,
        "--d-model",
        "32",
        "--device",
        "cpu",
    ]);
    expect_cli_err(&out, &["another configuration", "model.d_model: 16 -> 32"]);
    let other = dir.join("other.txt");
    std::fs::write(&other, "other bytes altogether. ".repeat(100)).unwrap();
    let out = hourglass(&[
        "train",
        "--resume",
        c,
        "--data",
        other.to_str().unwrap(),
        "--device",
        "cpu",
    ]);
    expect_cli_err(&out, &["trained on", "--data"]);
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn a_config_file_is_laid_over_the_preset_and_flags_over_it() {
    let dir = temp_dir("config");
    let data = data(&dir);
    let file = dir.join("t.json");
    std::fs::write(
        &file,
        r#"{"lr": 0.002, "seed": 4, "model": {"n_heads": 4}}"#,
    )
    .unwrap();
    let out_dir = dir.join("run");
    let out = train(&[
        "--data",
        data.to_str().unwrap(),
        "--out",
        out_dir.to_str().unwrap(),
        "--steps",
        "2",
        "--config",
        file.to_str().unwrap(),
        "--seed",
        "7",
    ]);
    expect_ok(&out);
    let written: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out_dir.join("config.json")).unwrap())
            .unwrap();
    assert_eq!(written["lr"], 0.002);
    assert_eq!(written["seed"], 7, "flags win over the file");
    assert_eq!(written["model"]["n_heads"], 2, "flags win over the file");
    assert_eq!(written["model"]["d_model"], 16);

    std::fs::write(&file, r#"{"learning_rate": 0.1}"#).unwrap();
    let out = train(&[
        "--data",
        data.to_str().unwrap(),
        "--config",
        file.to_str().unwrap(),
    ]);
    expect_cli_err(&out, &["t.json", "learning_rate"]);
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn bad_data_and_settings_are_clear_errors() {
    let dir = temp_dir("bad");
    // No output folder may appear for a run that fails its checks.
    let never = dir.join("never");
    let never = never.to_str().unwrap();
    let missing = dir.join("missing.txt");
    let empty = dir.join("empty.txt");
    std::fs::write(&empty, "").unwrap();
    let small = dir.join("small.txt");
    std::fs::write(&small, "just a few bytes").unwrap();
    let data = data(&dir);
    let cases: [(&Path, &[&str], &[&str]); 5] = [
        (&missing, &[], &["missing.txt"]),
        (&empty, &[], &["empty.txt", "empty"]),
        (&small, &[], &["seq_len 16", "small.txt"]),
        (&data, &["--beta1", "1.5"], &["beta1 (1.5)"]),
        (&data, &["--depth", "[1,2"], &["--depth"]),
    ];
    for (file, extra, needles) in cases {
        let mut args = vec![
            "--out",
            never,
            "--data",
            file.to_str().unwrap(),
            "--steps",
            "2",
        ];
        args.extend(extra);
        expect_cli_err(&train(&args), needles);
    }
    // A weights file is not a training checkpoint.
    let bogus = dir.join("bogus.safetensors");
    std::fs::write(&bogus, b"not a checkpoint").unwrap();
    let out = hourglass(&[
        "sample",
        "--checkpoint",
        bogus.to_str().unwrap(),
        "--device",
        "cpu",
    ]);
    expect_cli_err(&out, &["bogus.safetensors"]);
    assert!(
        !Path::new(never).exists(),
        "a failed run created its output folder"
    );
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn a_diverging_run_stops_naming_the_step_and_keeps_the_last_checkpoint() {
    let dir = temp_dir("diverge");
    let data = data(&dir);
    let out_dir = dir.join("run");
    let out = train(&[
        "--data",
        data.to_str().unwrap(),
        "--out",
        out_dir.to_str().unwrap(),
        "--steps",
        "50",
        "--lr",
        "1e12",
        "--clip",
        "0",
        "--save-every",
        "1",
    ]);
    expect_cli_err(
        &out,
        &[
            "training loss is",
            "at step",
            "the last checkpoint",
            "is unchanged",
        ],
    );
    // The checkpoint it names loads and resumes.
    let stderr = text(&out.stderr);
    let step: u64 = stderr
        .split("(step ")
        .nth(1)
        .unwrap()
        .split(')')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let ckpt = out_dir.join("checkpoint.safetensors");
    let file = hourglass::checkpoint::TensorFile::read(&ckpt).unwrap();
    assert_eq!(file.metadata["optimizer.step"], step.to_string());
    std::fs::remove_dir_all(dir).ok();
}

/// Ctrl-C (SIGINT) saves a checkpoint at the next step boundary and exits cleanly; the run resumes from it.
#[cfg(unix)]
#[test]
fn ctrl_c_saves_and_exits() {
    use std::process::Stdio;
    use std::time::{Duration, Instant};
    let dir = temp_dir("ctrlc");
    let data = data(&dir);
    let out_dir = dir.join("run");
    let mut args = vec!["train"];
    args.extend(TINY);
    args.extend([
        "--data",
        data.to_str().unwrap(),
        "--out",
        out_dir.to_str().unwrap(),
        "--steps",
        "1000000",
        "--save-every",
        "5",
    ]);
    let child = Command::new(env!("CARGO_BIN_EXE_hourglass"))
        .args(&args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let ckpt = out_dir.join("checkpoint.safetensors");
    let start = Instant::now();
    while !ckpt.exists() {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "no checkpoint appeared"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let out = child.wait_with_output().unwrap();
    let stdout = expect_ok(&out);
    assert!(stdout.contains("stopped at step"), "{stdout}");
    assert!(
        text(&out.stderr).contains("interrupted"),
        "{}",
        text(&out.stderr)
    );
    let step: u64 = stdout
        .split("stopped at step ")
        .nth(1)
        .unwrap()
        .split(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let out = hourglass(&[
        "train",
        "--resume",
        ckpt.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--steps",
        &(step + 2).to_string(),
        "--device",
        "cpu",
        "--no-progress",
        "--sample-length",
        "0",
    ]);
    let stdout = expect_ok(&out);
    assert!(stdout.contains(&format!("at step {step}")), "{stdout}");
    std::fs::remove_dir_all(dir).ok();
}
