//! `hourglass train` and `hourglass sample` end to end on a tiny corpus written here: the outputs, resume,
//! Ctrl-C, the config file, and every bad input as `error: ...` with exit status 2.

use crate::common::cli::{data, expect_cli_err, expect_ok, hourglass, temp_dir, text, Running};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

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

/// A `forward` input file in `dir`: x [4, 1, 16] for TINY's model.
fn x_input(dir: &Path) -> PathBuf {
    let mut x = hourglass::checkpoint::TensorFile::default();
    x.tensors.insert(
        "x".into(),
        hourglass::checkpoint::HostTensor {
            shape: vec![4, 1, 16],
            data: vec![0.5; 64],
        },
    );
    let input = dir.join("x.safetensors");
    x.write(&input).unwrap();
    input
}

/// Two steps of the cpu preset with `extra` flags (for flags that TINY already sets).
fn short_preset_run(extra: &[&str]) -> Output {
    let mut args = vec![
        "train",
        "--device",
        "cpu",
        "--no-progress",
        "--steps",
        "2",
        "--warmup-steps",
        "1",
    ];
    args.extend(extra);
    hourglass(&args)
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
    // --recompute draws the same bytes (past a sliding window: --context 8); --num-samples prints each.
    let sample = |extra: &[&str]| {
        let mut args = vec![
            "sample",
            "--checkpoint",
            c,
            "--prompt",
            "<page>",
            "--length",
            "30",
            "--context",
            "8",
            "--seed",
            "4",
            "--device",
            "cpu",
        ];
        args.extend_from_slice(extra);
        let out = hourglass(&args);
        expect_ok(&out);
        out.stdout
    };
    assert_eq!(sample(&[]), sample(&["--recompute"]));
    let batch = String::from_utf8_lossy(&sample(&["--num-samples", "2"])).into_owned();
    assert!(
        batch.contains("--- sample 1 ---") && batch.contains("--- sample 2 ---"),
        "{batch}"
    );

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

/// Starts an endless run into `out_dir` (checkpoints every 5 steps) and returns once its first checkpoint
/// exists.
#[cfg(unix)]
fn endless_run(data: &Path, out_dir: &Path, extra: &[&str]) -> Running {
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
    args.extend(extra);
    let run = Running::hourglass(&args);
    let ckpt = out_dir.join("checkpoint.safetensors");
    let start = Instant::now();
    while !ckpt.exists() {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "no checkpoint appeared"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    run
}

/// Long enough for any stop this file waits for; a run still going then is stuck.
const PROMPTLY: Duration = Duration::from_secs(30);

/// Ctrl-C (SIGINT) and SIGTERM (kill, timeout, schedulers) save a checkpoint at the next step boundary and
/// exit cleanly; the run resumes from it.
#[cfg(unix)]
#[test]
fn ctrl_c_and_sigterm_save_and_exit() {
    for sig in ["INT", "TERM"] {
        stop_saves_and_resumes(sig);
    }
}

#[cfg(unix)]
fn stop_saves_and_resumes(sig: &str) {
    let dir = temp_dir(&format!("signal-{sig}"));
    let data = data(&dir);
    let out_dir = dir.join("run");
    let ckpt = out_dir.join("checkpoint.safetensors");
    let run = endless_run(&data, &out_dir, &[]);
    run.signal(sig);
    let out = run.finish_within(PROMPTLY);
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

/// A second run into a folder that a live run holds is refused; a finished run's folder is not silently
/// replaced; a run killed with SIGKILL leaves a lock that the next run takes over.
#[cfg(unix)]
#[test]
fn one_run_per_folder() {
    let dir = temp_dir("folder");
    let data = data(&dir);
    let out_dir = dir.join("run");
    let (d, o) = (data.to_str().unwrap(), out_dir.to_str().unwrap());
    let ckpt = out_dir.join("checkpoint.safetensors");
    let c = ckpt.to_str().unwrap();
    let live = endless_run(&data, &out_dir, &[]);
    expect_cli_err(
        &train(&["--data", d, "--out", o, "--steps", "2", "--overwrite"]),
        &[
            "in use by another running hourglass",
            &format!("process {}", live.id()),
        ],
    );
    expect_cli_err(
        &hourglass(&[
            "train", "--resume", c, "--data", d, "--steps", "1000001", "--device", "cpu",
        ]),
        &["in use"],
    );
    live.signal("TERM");
    expect_ok(&live.finish_within(PROMPTLY));

    // Finished: a fresh run there is refused, naming the ways forward; --overwrite replaces it.
    expect_cli_err(
        &train(&["--data", d, "--out", o, "--steps", "2"]),
        &["already holds a run", "--resume", "--overwrite"],
    );
    expect_ok(&train(&[
        "--data",
        d,
        "--out",
        o,
        "--steps",
        "2",
        "--overwrite",
    ]));
    let file = hourglass::checkpoint::TensorFile::read(&ckpt).unwrap();
    assert_eq!(file.metadata["optimizer.step"], "2");

    // Killed outright: its lock goes with it, and the run resumes.
    let killed = endless_run(&data, &out_dir, &["--overwrite"]);
    killed.signal("KILL");
    killed.finish_within(PROMPTLY);
    let step: u64 = hourglass::checkpoint::TensorFile::read(&ckpt)
        .unwrap()
        .metadata["optimizer.step"]
        .parse()
        .unwrap();
    expect_ok(&hourglass(&[
        "train",
        "--resume",
        c,
        "--data",
        d,
        "--steps",
        &(step + 1).to_string(),
        "--device",
        "cpu",
        "--no-progress",
        "--sample-length",
        "0",
    ]));
    std::fs::remove_dir_all(dir).ok();
}

/// The step a stopped run reports on stdout (`stopped at step N: saved ...`).
fn stopped_step(stdout: &str) -> u64 {
    stdout
        .split("stopped at step ")
        .nth(1)
        .and_then(|rest| rest.split(':').next())
        .and_then(|step| step.parse().ok())
        .unwrap_or_else(|| panic!("no stop reported: {stdout}"))
}

fn checkpoint_step(path: &Path) -> u64 {
    hourglass::checkpoint::TensorFile::read(path)
        .unwrap()
        .metadata["optimizer.step"]
        .parse()
        .unwrap()
}

/// GNU `timeout` sends SIGTERM to the command and then to its process group: the run gets it twice within a
/// moment. That is one request to stop (save, then exit 0), not "twice: quit without saving"; checked with
/// two SIGTERMs 30 ms apart in the middle of a step (one step here takes most of a second), then under
/// `timeout` itself.
#[cfg(unix)]
#[test]
fn a_signal_that_comes_twice_at_once_saves_and_stops_as_under_timeout() {
    let dir = temp_dir("signal-twice");
    let data = data(&dir);
    let out_dir = dir.join("run");
    let ckpt = out_dir.join("checkpoint.safetensors");
    let slow_steps = ["--accum", "200"];
    let run = endless_run(&data, &out_dir, &slow_steps);
    run.signal("TERM");
    std::thread::sleep(Duration::from_millis(30));
    run.signal("TERM");
    let out = run.finish_within(PROMPTLY);
    let stdout = expect_ok(&out);
    assert!(
        !text(&out.stderr).contains("interrupted twice"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(checkpoint_step(&ckpt), stopped_step(&stdout));

    if Command::new("timeout").arg("--version").output().is_err() {
        eprintln!("no timeout command: its part is skipped");
        return;
    }
    let mut args = vec![
        "--preserve-status",
        "3",
        env!("CARGO_BIN_EXE_hourglass"),
        "train",
    ];
    args.extend(TINY);
    args.extend(slow_steps);
    let (d, o) = (data.to_str().unwrap(), out_dir.to_str().unwrap());
    args.extend(["--data", d, "--out", o, "--steps", "1000000", "--overwrite"]);
    let out = Command::new("timeout").args(&args).output().unwrap();
    let stdout = expect_ok(&out);
    assert_eq!(checkpoint_step(&ckpt), stopped_step(&stdout));
    std::fs::remove_dir_all(dir).ok();
}

/// Two Ctrl-C's further apart than one request still quit at once, in the middle of a step (here one long
/// step: thousands of micro-batches), without saving.
#[cfg(unix)]
#[test]
fn two_ctrl_c_a_moment_apart_quit_at_once() {
    let dir = temp_dir("ctrl-c-twice");
    let data = data(&dir);
    let out_dir = dir.join("run");
    let mut args = vec!["train"];
    args.extend(TINY);
    let (d, o) = (data.to_str().unwrap(), out_dir.to_str().unwrap());
    args.extend(["--data", d, "--out", o, "--steps", "10", "--accum", "20000"]);
    let mut run = Running::hourglass(&args);
    run.wait_for_stdout(PROMPTLY, |out| text(out).contains("unigram baseline"));
    run.signal("INT");
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        run.is_running(),
        "the first step ended before the test could go on"
    );
    let second = Instant::now();
    run.signal("INT");
    let out = run.finish_within(PROMPTLY);
    assert!(
        second.elapsed() < Duration::from_secs(10),
        "{:?}",
        second.elapsed()
    );
    assert_eq!(out.status.code(), Some(130), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("interrupted twice: exiting now without saving"),
        "{}",
        text(&out.stderr)
    );
    assert!(!out_dir.join("checkpoint.safetensors").exists());
    std::fs::remove_dir_all(dir).ok();
}

/// SIGTERM stops every long loop: the sample at the end of a run (which has saved; exit 0), `sample` (exit
/// 130, the bytes so far printed) and `eval` (exit 130, no result).
#[cfg(unix)]
#[test]
fn a_signal_stops_the_end_of_run_sample_a_sample_and_an_evaluation() {
    let dir = temp_dir("signal-loops");
    let data = data(&dir);
    let out_dir = dir.join("run");
    let (d, o) = (data.to_str().unwrap(), out_dir.to_str().unwrap());
    let endless = "100000000";
    let mut args = vec!["train"];
    args.extend(TINY);
    let length = args.iter().position(|&a| a == "--sample-length").unwrap() + 1;
    args[length] = endless;
    args.extend(["--data", d, "--out", o, "--steps", "3"]);
    let mut run = Running::hourglass(&args);
    let sampling = |out: &[u8]| {
        let out = text(out);
        out.split("top-k 0):\n")
            .nth(1)
            .is_some_and(|s| s.len() > 20)
    };
    run.wait_for_stdout(PROMPTLY, sampling);
    run.signal("TERM");
    let out = run.finish_within(PROMPTLY);
    let stdout = expect_ok(&out);
    assert!(stdout.contains("validation:"), "{stdout}");
    assert!(
        text(&out.stderr).contains("sampling stopped after"),
        "{}",
        text(&out.stderr)
    );
    let ckpt = out_dir.join("checkpoint.safetensors");
    assert_eq!(checkpoint_step(&ckpt), 3);

    let c = ckpt.to_str().unwrap();
    let mut run = Running::hourglass(&[
        "sample",
        "--checkpoint",
        c,
        "--length",
        endless,
        "--device",
        "cpu",
    ]);
    run.wait_for_stdout(PROMPTLY, |out| out.len() > 50);
    run.signal("TERM");
    let out = run.finish_within(PROMPTLY);
    assert_eq!(out.status.code(), Some(130), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("sampling stopped after"),
        "{}",
        text(&out.stderr)
    );
    assert!(out.stdout.starts_with(b"The ") && out.stdout.len() > 50);

    // The training split of a 4 MB file: about a minute of evaluation.
    let big = dir.join("big.txt");
    std::fs::write(&big, std::fs::read(&data).unwrap().repeat(800)).unwrap();
    let run = Running::hourglass(&[
        "eval",
        "--checkpoint",
        c,
        "--data",
        big.to_str().unwrap(),
        "--split",
        "train",
        "--device",
        "cpu",
        "--no-progress",
    ]);
    std::thread::sleep(Duration::from_secs(1));
    run.signal("TERM");
    let out = run.finish_within(Duration::from_secs(20));
    assert_eq!(out.status.code(), Some(130), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("evaluation stopped before the end of the train split"),
        "{}",
        text(&out.stderr)
    );
    assert!(!text(&out.stdout).contains("bits per character"));
    std::fs::remove_dir_all(dir).ok();
}

/// A checkpoint whose weights are finite but overflow f32 arithmetic: `eval` and `sample` are errors naming
/// it, never "NaN bits per character" or bytes drawn from NaN logits.
#[test]
fn a_checkpoint_whose_weights_overflow_is_an_error_for_eval_and_sample() {
    let dir = temp_dir("overflow");
    let data = data(&dir);
    let out_dir = dir.join("run");
    let (d, o) = (data.to_str().unwrap(), out_dir.to_str().unwrap());
    expect_ok(&train(&["--data", d, "--out", o, "--steps", "2"]));
    let ckpt = out_dir.join("checkpoint.safetensors");
    let mut file = hourglass::checkpoint::TensorFile::read(&ckpt).unwrap();
    let embedding = file.tensors.get_mut("embedding.weight").unwrap();
    embedding.data.fill(3e38);
    file.write(&ckpt).unwrap();
    let c = ckpt.to_str().unwrap();
    let out = hourglass(&["eval", "--checkpoint", c, "--data", d, "--device", "cpu"]);
    expect_cli_err(&out, &[c, "test split", "overflow"]);
    assert!(!text(&out.stdout).contains("bits per character"));
    for recompute in [&[][..], &["--recompute"]] {
        let mut args = vec!["sample", "--checkpoint", c, "--device", "cpu"];
        args.extend(recompute);
        let out = hourglass(&args);
        expect_cli_err(&out, &[c, "logits of generated byte 1", "overflow"]);
        assert_eq!(out.stdout, b"The ", "nothing drawn");
    }
    std::fs::remove_dir_all(dir).ok();
}

/// `sample` sizes its decoder's caches by what the run reaches (prompt + length, at most the context), and
/// counts them in the memory estimate: a context far beyond the run costs nothing, one the run would fill
/// beyond memory is refused before anything is allocated, naming --context.
#[test]
fn sampling_sizes_its_caches_by_the_run_and_refuses_naming_the_context() {
    let dir = temp_dir("sample-context");
    let data = data(&dir);
    let out_dir = dir.join("run");
    let (d, o) = (data.to_str().unwrap(), out_dir.to_str().unwrap());
    expect_ok(&train(&["--data", d, "--out", o, "--steps", "2"]));
    let ckpt = out_dir.join("checkpoint.safetensors");
    let sample = |checkpoint: &Path, limit: &str, extra: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_hourglass"))
            .args(["sample", "--device", "cpu", "--checkpoint"])
            .arg(checkpoint)
            .args(extra)
            .env("HOURGLASS_MEMORY_LIMIT", limit)
            .output()
            .unwrap()
    };
    let huge = usize::MAX.to_string();
    for context in ["10000000", &huge] {
        for recompute in [&[][..], &["--recompute"]] {
            let flags = [&["--length", "3", "--context", context], recompute].concat();
            let out = sample(&ckpt, "64M", &flags);
            expect_ok(&out);
            assert_eq!(out.stdout.len(), "The ".len() + 3 + 1);
        }
    }
    // Caches for 100M positions (no forward pass longer than the prompt: no slide) do not fit in 1 GB.
    let out = sample(
        &ckpt,
        "1G",
        &["--context", "200000000", "--length", "100000000"],
    );
    expect_cli_err(
        &out,
        &[
            "--context 200000000",
            "decoding caches",
            "100000003 positions",
        ],
    );

    // A checkpoint trained with seq_len 10^12 samples with its default context.
    let mut file = hourglass::checkpoint::TensorFile::read(&ckpt).unwrap();
    let mut config: serde_json::Value =
        serde_json::from_str(&file.metadata["train_config"]).unwrap();
    config["seq_len"] = serde_json::json!(1_000_000_000_000u64);
    file.metadata
        .insert("train_config".into(), config.to_string());
    let long = dir.join("long.safetensors");
    file.write(&long).unwrap();
    for recompute in [&[][..], &["--recompute"]] {
        let out = sample(&long, "64M", &[&["--length", "3"], recompute].concat());
        expect_ok(&out);
        assert_eq!(out.stdout.len(), "The ".len() + 3 + 1);
    }
    std::fs::remove_dir_all(dir).ok();
}

/// A run that takes over a folder removes the temporary files of writes killed halfway (their process is
/// gone), and keeps a live process's.
#[test]
fn a_run_removes_the_temporary_files_of_killed_writes() {
    let dir = temp_dir("stale");
    let data = data(&dir);
    let out_dir = dir.join("run");
    std::fs::create_dir_all(&out_dir).unwrap();
    let stale = out_dir.join(".checkpoint.safetensors.999999999.0.tmp");
    let live = out_dir.join(format!(".history.json.{}.4.tmp", std::process::id()));
    for file in [&stale, &live] {
        std::fs::write(file, b"half a file").unwrap();
    }
    let (d, o) = (data.to_str().unwrap(), out_dir.to_str().unwrap());
    let out = train(&["--data", d, "--out", o, "--steps", "2"]);
    expect_ok(&out);
    assert!(!stale.exists(), "the stale temporary file is still there");
    assert!(live.exists(), "a live process's temporary file was removed");
    assert!(text(&out.stderr).contains(".checkpoint.safetensors.999999999.0.tmp"));
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn numeric_flags_take_negative_values_and_refuse_non_finite_ones_naming_the_flag() {
    let dir = temp_dir("flags");
    let data = data(&dir);
    let never = dir.join("never");
    let (d, o) = (data.to_str().unwrap(), never.to_str().unwrap());
    let cases: [(&[&str], &[&str]); 7] = [
        (&["--lr", "-1"], &["lr", "-1"]),
        (&["--lr", "NaN"], &["--lr", "NaN is not a finite number"]),
        (&["--lr", "inf"], &["--lr", "inf is not a finite number"]),
        (&["--dropout", "NaN"], &["--dropout", "not a finite number"]),
        (&["--min-lr=-inf"], &["--min-lr", "not a finite number"]),
        (&["--batch", "-1"], &["--batch", "-1"]),
        (&["--weight-decay", "-0.5"], &["weight_decay", "-0.5"]),
    ];
    for (flags, needles) in cases {
        let out = short_preset_run(&[&["--data", d, "--out", o], flags].concat());
        expect_cli_err(&out, needles);
        assert!(
            !text(&out.stderr).contains("unexpected argument"),
            "{flags:?}: {}",
            text(&out.stderr)
        );
    }
    for (flags, needles) in [
        (&["--temperature", "-1"][..], &["temperature", "-1"][..]),
        (
            &["--temperature", "NaN"],
            &["--temperature", "not a finite number"],
        ),
        (&["--top-k", "-3"], &["--top-k", "-3"]),
    ] {
        let mut args = vec![
            "sample",
            "--checkpoint",
            "none.safetensors",
            "--device",
            "cpu",
        ];
        args.extend(flags);
        expect_cli_err(&hourglass(&args), needles);
    }
    assert!(!never.exists(), "a refused run created its output folder");
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn every_flag_is_checked_before_the_first_step() {
    let dir = temp_dir("early");
    let data = data(&dir);
    let never = dir.join("never");
    let started = std::time::Instant::now();
    let out = train(&[
        "--data",
        data.to_str().unwrap(),
        "--out",
        never.to_str().unwrap(),
        "--steps",
        "1000000",
        "--prompt",
        "",
    ]);
    expect_cli_err(&out, &["--sample-length", "prompt is empty"]);
    assert!(
        started.elapsed().as_secs() < 60,
        "the empty prompt was found only after training"
    );
    assert!(!never.exists());
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn sizes_beyond_the_machine_are_errors_naming_the_setting() {
    let dir = temp_dir("sizes");
    let data = data(&dir);
    let never = dir.join("never");
    let (d, o) = (data.to_str().unwrap(), never.to_str().unwrap());
    for (flags, needles) in [
        (
            &["--d-ff", "1152921504606846976"][..],
            &["d_ff 1152921504606846976"][..],
        ),
        (
            &[
                "--d-model",
                "1000000",
                "--heads",
                "1",
                "--positions",
                "none",
            ],
            &["d_model 1000000"],
        ),
        (
            &["--batch", "1000000000000"],
            &["batch 1000000000000", "HOURGLASS_MEMORY_LIMIT"],
        ),
    ] {
        expect_cli_err(
            &short_preset_run(&[&["--data", d, "--out", o], flags].concat()),
            needles,
        );
    }
    assert!(!never.exists());

    // A model shortening by 60000 trains on 16-byte sequences, but sampling pads the context to 60000: the
    // CPU attention's 60000 x 60000 matrices are refused up front.
    let run = dir.join("run");
    expect_ok(&short_preset_run(&[
        "--data",
        d,
        "--out",
        run.to_str().unwrap(),
        "--heads",
        "2",
        "--d-model",
        "16",
        "--d-ff",
        "32",
        "--seq-len",
        "16",
        "--batch",
        "2",
        "--factors",
        "60000",
        "--sample-length",
        "0",
    ]));
    // The same run with its end-of-run sample is refused before the first step.
    let out = Command::new(env!("CARGO_BIN_EXE_hourglass"))
        .args([
            "train",
            "--device",
            "cpu",
            "--steps",
            "2",
            "--warmup-steps",
            "1",
            "--data",
            d,
        ])
        .args([
            "--out",
            never.to_str().unwrap(),
            "--factors",
            "60000",
            "--sample-length",
            "10",
        ])
        .env("HOURGLASS_MEMORY_LIMIT", "4G")
        .output()
        .unwrap();
    expect_cli_err(
        &out,
        &[
            "--sample-length 10",
            "the sample after training",
            "attention matrices",
        ],
    );
    assert!(!never.exists());
    let out = Command::new(env!("CARGO_BIN_EXE_hourglass"))
        .args(["sample", "--device", "cpu", "--checkpoint"])
        .arg(run.join("checkpoint.safetensors"))
        .env("HOURGLASS_MEMORY_LIMIT", "4G")
        .output()
        .unwrap();
    expect_cli_err(
        &out,
        &[
            "sampling",
            "shortening_factors [60000]",
            "attention matrices",
        ],
    );
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn forward_runs_a_training_checkpoint_without_a_config() {
    let dir = temp_dir("forward-ckpt");
    let data = data(&dir);
    let run = dir.join("run");
    expect_ok(&train(&[
        "--data",
        data.to_str().unwrap(),
        "--out",
        run.to_str().unwrap(),
        "--steps",
        "2",
    ]));
    let input = x_input(&dir);
    let ckpt = run.join("checkpoint.safetensors");
    let output = dir.join("y.safetensors");
    let args = |weights: &Path| {
        let mut a = vec![
            "forward".to_string(),
            "--weights".into(),
            weights.display().to_string(),
        ];
        a.extend([
            "--input".into(),
            input.display().to_string(),
            "--output".into(),
            output.display().to_string(),
        ]);
        a
    };
    let out = Command::new(env!("CARGO_BIN_EXE_hourglass"))
        .args(args(&ckpt))
        .output()
        .unwrap();
    let stdout = expect_ok(&out);
    assert!(stdout.contains("y [4, 1, 16]"), "{stdout}");
    // A plain weights file does not say what model it is for.
    let mut weights = hourglass::checkpoint::TensorFile::read(&ckpt).unwrap();
    weights.metadata.clear();
    let plain = dir.join("plain.safetensors");
    weights.write(&plain).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_hourglass"))
        .args(args(&plain))
        .output()
        .unwrap();
    expect_cli_err(&out, &["plain.safetensors", "--config"]);
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn a_plain_transformer_trains_from_the_cli() {
    let dir = temp_dir("plain");
    let data = data(&dir);
    let run = dir.join("run");
    let out = short_preset_run(&[
        "--data",
        data.to_str().unwrap(),
        "--out",
        run.to_str().unwrap(),
        "--factors",
        "none",
        "--depth",
        "2",
        "--d-model",
        "16",
        "--heads",
        "2",
        "--d-ff",
        "32",
        "--seq-len",
        "16",
        "--sample-length",
        "5",
    ]);
    expect_ok(&out);
    let config = std::fs::read_to_string(run.join("config.json")).unwrap();
    assert!(
        config.contains("\"shortening_factors\": []") && config.contains("\"depth\": 2"),
        "{config}"
    );
    expect_cli_err(
        &short_preset_run(&["--data", data.to_str().unwrap(), "--factors", "2,x"]),
        &["--factors", "\"x\" is not a factor"],
    );
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn precision_is_a_setting_recorded_resumed_and_checked() {
    let dir = temp_dir("precision");
    let data = data(&dir);
    let run = dir.join("run");
    let common = [
        "--data",
        data.to_str().unwrap(),
        "--out",
        run.to_str().unwrap(),
    ];
    let mut args = common.to_vec();
    args.extend(["--steps", "3", "--precision", "bf16"]);
    let stdout = expect_ok(&train(&args));
    assert!(stdout.contains("in bf16"), "{stdout}");
    let config = std::fs::read_to_string(run.join("config.json")).unwrap();
    assert!(config.contains("\"precision\": \"bf16\""), "{config}");
    // A resumed run keeps the checkpoint's precision, and refuses another.
    let ckpt = run.join("checkpoint.safetensors");
    let resume = |extra: &[&str]| {
        let mut a = vec![
            "train",
            "--device",
            "cpu",
            "--no-progress",
            "--sample-length",
            "0",
        ];
        a.extend([
            "--data",
            data.to_str().unwrap(),
            "--resume",
            ckpt.to_str().unwrap(),
        ]);
        a.extend(extra);
        hourglass(&a)
    };
    expect_cli_err(
        &resume(&["--steps", "4", "--precision", "f32"]),
        &["precision"],
    );
    let stdout = expect_ok(&resume(&["--steps", "4"]));
    assert!(stdout.contains("in bf16"), "{stdout}");
    // A fresh CPU run defaults to f32; a precision that does not exist is refused by name.
    let mut args = common.to_vec();
    args.extend(["--steps", "2", "--overwrite"]);
    assert!(expect_ok(&train(&args)).contains("in f32"));
    let mut args = common.to_vec();
    args.extend(["--precision", "f16"]);
    expect_cli_err(&train(&args), &["f16", "bf16"]);
    // forward takes --precision too.
    let input = x_input(&dir);
    let forward = |precision: &str| {
        let output = dir.join(format!("y-{precision}.safetensors"));
        let out = hourglass(&[
            "forward",
            "--weights",
            run.join("checkpoint.safetensors").to_str().unwrap(),
            "--input",
            input.to_str().unwrap(),
            "--output",
            output.to_str().unwrap(),
            "--precision",
            precision,
        ]);
        expect_ok(&out);
        hourglass::checkpoint::TensorFile::read(&output)
            .unwrap()
            .get("y")
            .unwrap()
            .data
            .clone()
    };
    let (y32, y16) = (forward("f32"), forward("bf16"));
    assert_ne!(y32, y16, "bf16 rounds the GEMM operands");
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn kernels_lists_every_attention_version_with_its_registers() {
    let out = hourglass(&["kernels"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    if !hourglass::device::cuda::NVCC_FOUND {
        assert!(text.contains("nvcc was not found"), "{text}");
        return;
    }
    for kernel in [
        "attention_fwd_d64_f32",
        "attention_mma_fwd_d64_bf16",
        "attention_mma_fwd_tuned_d64_bf16",
        "attention_mma_bwd_dq_tuned_d64_bf16",
    ] {
        let line = text
            .lines()
            .find(|l| l.split_whitespace().nth(1) == Some(kernel))
            .unwrap_or_else(|| panic!("{kernel} is not listed:\n{text}"));
        let registers: u32 = line.split_whitespace().nth(2).unwrap().parse().unwrap();
        assert!(registers > 0, "{line}");
    }
}
