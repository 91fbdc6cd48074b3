//! `hourglass sample --png` and the grid a training run over images draws, end to end on a tiny model of 8 × 8
//! striped images written here (`images::image_folder`): the PNG's size follows the grid's layout, prompts
//! keep the test images' first rows under the marker, a seed gives the same bytes (decoded or recomputed),
//! the flags of the other kind of model are errors naming them, memory is checked, and a signal stops the
//! drawing with nothing written.

use crate::common::cli::{expect_cli_err, expect_ok, hourglass, temp_dir, text, Running};
use crate::images::{image_folder, striped_images, tiny_config};
use hourglass::train::image_grid::{GAP, MARKER_THICKNESS, PROMPT_MARKER, SCALE};
use hourglass::train::images::Images;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

const ROWS: usize = 8;
const COLS: usize = 8;

/// A tiny model trained for 3 steps on 8 × 8 stripes through the CLI (which draws its grid of 16 images at
/// the end), with the folder it was trained on and its test images.
struct Trained {
    dir: PathBuf,
    data: PathBuf,
    test: Images,
    run: PathBuf,
    stdout: String,
}

impl Trained {
    fn new(name: &str) -> Self {
        let dir = temp_dir(&format!("image-cli-{name}"));
        let test = striped_images(20, ROWS, COLS, 2);
        let data = image_folder(&dir, &striped_images(100, ROWS, COLS, 1), &test);
        let config = dir.join("tiny.json");
        std::fs::write(&config, tiny_config(ROWS, COLS, 3).to_json()).unwrap();
        let run = dir.join("run");
        let stdout = expect_ok(&hourglass(&[
            "train",
            "--config",
            config.to_str().unwrap(),
            "--data",
            data.to_str().unwrap(),
            "--out",
            run.to_str().unwrap(),
            "--device",
            "cpu",
            "--no-progress",
        ]));
        Self {
            dir,
            data,
            test,
            run,
            stdout,
        }
    }

    fn checkpoint(&self) -> PathBuf {
        self.run.join("checkpoint.safetensors")
    }

    /// `hourglass sample` of the checkpoint on the CPU, with `flags`.
    fn sample(&self, flags: &[&str]) -> Output {
        let checkpoint = self.checkpoint();
        let mut args = vec!["sample", "--device", "cpu", "--checkpoint"];
        args.push(checkpoint.to_str().unwrap());
        args.extend(flags);
        hourglass(&args)
    }

    /// A path in the scratch folder, as the flag's text.
    fn path(&self, name: &str) -> String {
        self.dir.join(name).to_str().unwrap().to_string()
    }
}

impl Drop for Trained {
    fn drop(&mut self) {
        std::fs::remove_dir_all(&self.dir).ok();
    }
}

/// The PNG size of a grid of `n` images of 8 × 8 with `prompt_rows` given (`train::image_grid`'s layout at
/// the command line's scale): ⌈√n⌉ columns, a gap around every cell, the marker's height in every cell when
/// some rows are given and some drawn.
fn grid_size(n: usize, prompt_rows: usize) -> (u32, u32) {
    let columns = (1..=n).find(|c| c * c >= n).unwrap();
    let grid_rows = n.div_ceil(columns);
    let marker = if prompt_rows > 0 && prompt_rows < ROWS {
        MARKER_THICKNESS
    } else {
        0
    };
    let (cell_w, cell_h) = (COLS as u32 * SCALE, ROWS as u32 * SCALE + marker);
    (
        columns as u32 * (cell_w + GAP) + GAP,
        grid_rows as u32 * (cell_h + GAP) + GAP,
    )
}

#[test]
fn a_run_over_images_draws_a_grid_at_its_end() {
    let t = Trained::new("train");
    let samples = t.run.join("samples.png");
    assert!(
        t.stdout
            .contains("drawing 16 images of 8x8 (temperature 0.8, top-k 0, seed 0)")
            && t.stdout.contains(&format!("wrote {}", samples.display())),
        "{}",
        t.stdout
    );
    let (width, height, _) = crate::common::decode_png(&samples);
    assert_eq!((width, height), grid_size(16, 0));

    // The grid is one of the run's files: a fresh run into the folder is refused naming it, and one that
    // replaces the run but draws nothing (--sample-length 0) leaves no stale grid behind.
    let config = t.dir.join("tiny.json");
    let train = |extra: &[&str]| {
        let mut args = vec![
            "train",
            "--config",
            config.to_str().unwrap(),
            "--data",
            t.data.to_str().unwrap(),
            "--out",
            t.run.to_str().unwrap(),
            "--device",
            "cpu",
            "--no-progress",
        ];
        args.extend(extra);
        hourglass(&args)
    };
    for name in [
        "checkpoint.safetensors",
        "config.json",
        "curve.png",
        "history.csv",
        "history.json",
    ] {
        std::fs::remove_file(t.run.join(name)).unwrap();
    }
    expect_cli_err(&train(&[]), &["already holds a run", "samples.png"]);
    let stdout = expect_ok(&train(&["--overwrite", "--sample-length", "0"]));
    assert!(!stdout.contains("drawing"), "{stdout}");
    assert!(!samples.exists(), "the replaced run's grid is still there");
}

#[test]
fn sample_png_writes_a_grid_of_the_images_drawn_the_same_for_a_seed() {
    let t = Trained::new("sample");
    let (a, b, c, d) = (
        t.path("a.png"),
        t.path("b.png"),
        t.path("c.png"),
        t.path("d.png"),
    );
    // 16 images unless told.
    let stdout = expect_ok(&t.sample(&["--png", &a]));
    assert!(
        stdout.contains("drawing 16 images of 8x8 (temperature 0.8, top-k 0, seed 0)")
            && stdout.contains(&format!("wrote {a}")),
        "{stdout}"
    );
    assert_eq!(
        crate::common::decode_png(Path::new(&a)).0,
        grid_size(16, 0).0
    );
    // Five: 3 columns, 2 rows. The same seed gives the same PNG, decoded or recomputed; another seed another.
    let five = |png: &str, extra: &[&str]| {
        let seed = if extra.contains(&"--seed") {
            &[][..]
        } else {
            &["--seed", "3"]
        };
        let flags = [&["--png", png, "--num-samples", "5"], seed, extra].concat();
        expect_ok(&t.sample(&flags));
        std::fs::read(png).unwrap()
    };
    let first = five(&a, &[]);
    let (width, height, _) = crate::common::decode_png(Path::new(&a));
    assert_eq!((width, height), grid_size(5, 0));
    assert_eq!(first, five(&b, &[]), "the same seed, other bytes");
    assert_eq!(first, five(&c, &["--recompute"]), "recomputed, other bytes");
    assert_ne!(
        first,
        five(&d, &["--seed", "4"]),
        "another seed, the same bytes"
    );
}

#[test]
fn prompt_rows_keep_the_first_rows_of_the_test_images_above_the_marker() {
    let t = Trained::new("prompt-rows");
    let png = t.path("completed.png");
    let data = t.data.to_str().unwrap();
    let (n, k) = (5, 3);
    let stdout = expect_ok(&t.sample(&[
        "--png",
        &png,
        "--num-samples",
        &n.to_string(),
        "--prompt-rows",
        &k.to_string(),
        "--data",
        data,
        "--temperature",
        "1",
    ]));
    assert!(
        stdout.contains("after the first 3 rows of test images 1 to 5 of image folder"),
        "{stdout}"
    );
    let (width, height, pixels) = crate::common::decode_png(Path::new(&png));
    assert_eq!((width, height), grid_size(n, k));
    let (cell_w, cell_h) = (COLS as u32 * SCALE, ROWS as u32 * SCALE + MARKER_THICKNESS);
    let at = |x: u32, y: u32| pixels[(y * width + x) as usize];
    for (i, image) in t.test.pixels().chunks(ROWS * COLS).take(n).enumerate() {
        let (x0, y0) = (
            GAP + (i as u32 % 3) * (cell_w + GAP),
            GAP + (i as u32 / 3) * (cell_h + GAP),
        );
        for (r, row) in image.chunks(COLS).take(k).enumerate() {
            for (c, &value) in row.iter().enumerate() {
                let (x, y) = (x0 + c as u32 * SCALE, y0 + r as u32 * SCALE);
                assert_eq!(at(x, y), [value; 3], "image {i}, row {r}, column {c}");
            }
        }
        for y in 0..MARKER_THICKNESS {
            for x in 0..cell_w {
                assert_eq!(at(x0 + x, y0 + k as u32 * SCALE + y), PROMPT_MARKER);
            }
        }
        // The drawn rows are gray pixels too, below the marker.
        let y = y0 + k as u32 * SCALE + MARKER_THICKNESS;
        let [r, g, b] = at(x0, y);
        assert!(r == g && g == b, "image {i}: {:?}", [r, g, b]);
    }
}

#[test]
fn flags_for_the_other_kind_of_model_are_errors_naming_them() {
    let t = Trained::new("flags");
    let png = t.path("never.png");
    let data = t.data.to_str().unwrap();
    let missing_folder = t.path("no/such/folder/x.png");
    let folder = t.dir.to_str().unwrap();
    let nowhere = t.path("nowhere");
    let cases: Vec<(Vec<&str>, Vec<&str>)> = vec![
        (vec![], vec!["a model of 8x8 images", "--png FILE"]),
        (
            vec!["--png", &png, "--prompt", "The "],
            vec!["--prompt \"The \"", "8x8 images", "for a model of text"],
        ),
        (vec!["--png", &png, "--length", "9"], vec!["--length 9"]),
        (vec!["--png", &png, "--context", "64"], vec!["--context 64"]),
        (
            vec!["--png", &png, "--prompt-rows", "0"],
            vec!["--prompt-rows 0", "8 rows", "fewer than 8"],
        ),
        (
            vec!["--png", &png, "--prompt-rows", "8"],
            vec!["--prompt-rows 8", "8 rows"],
        ),
        (
            vec![
                "--png",
                &png,
                "--prompt-rows",
                "2",
                "--data",
                data,
                "--num-samples",
                "21",
            ],
            vec!["--num-samples 21", "holds 20 images"],
        ),
        (
            vec!["--png", &png, "--data", data],
            vec!["--data", "only with --prompt-rows"],
        ),
        (
            vec!["--png", &png, "--prompt-rows", "2", "--data", &nowhere],
            vec!["nowhere", "train-images-idx3-ubyte"],
        ),
        (
            vec!["--png", &missing_folder],
            vec!["--png", "no/such/folder", "does not exist"],
        ),
        (vec!["--png", folder], vec!["--png", "is a folder"]),
        (
            vec!["--png", &png, "--num-samples", "0"],
            vec!["num_samples must be at least 1"],
        ),
        (vec!["--png", &png, "--top-k", "300"], vec!["top_k 300"]),
    ];
    for (flags, needles) in cases {
        let out = t.sample(&flags);
        expect_cli_err(&out, &needles);
        assert!(out.stdout.is_empty(), "{flags:?}: {}", text(&out.stdout));
    }
    assert!(!Path::new(&png).exists());

    // The checkpoint relabelled as a model of text: the image flags are refused, and it prints text.
    let mut file = hourglass::checkpoint::TensorFile::read(&t.checkpoint()).unwrap();
    let mut config: serde_json::Value =
        serde_json::from_str(&file.metadata["train_config"]).unwrap();
    config.as_object_mut().unwrap().remove("data");
    file.metadata
        .insert("train_config".into(), config.to_string());
    let as_text = t.dir.join("text.safetensors");
    file.write(&as_text).unwrap();
    let sample = |flags: &[&str]| {
        let mut args = vec!["sample", "--device", "cpu", "--checkpoint"];
        args.push(as_text.to_str().unwrap());
        args.extend(flags);
        hourglass(&args)
    };
    for (flags, needle) in [
        (&["--png", &png][..], "--png"),
        (&["--prompt-rows", "2"], "--prompt-rows 2"),
        (&["--data", data], "--data"),
    ] {
        expect_cli_err(
            &sample(flags),
            &[needle, "a model of bytes", "model of images"],
        );
    }
    let out = sample(&["--length", "5", "--prompt", "ab"]);
    expect_ok(&out);
    assert_eq!(out.stdout.len(), "ab".len() + 5 + 1);
}

#[test]
fn drawing_images_is_checked_against_memory_naming_the_number_of_images() {
    let t = Trained::new("memory");
    let png = t.path("never.png");
    let out = Command::new(env!("CARGO_BIN_EXE_hourglass"))
        .args(["sample", "--device", "cpu", "--png", &png])
        .args(["--num-samples", "10000000", "--checkpoint"])
        .arg(t.checkpoint())
        .env("HOURGLASS_MEMORY_LIMIT", "1G")
        .output()
        .unwrap();
    expect_cli_err(
        &out,
        &["drawing 10000000 images of 8x8", "--num-samples 10000000"],
    );
    assert!(!Path::new(&png).exists());
}

#[cfg(unix)]
#[test]
fn a_signal_stops_the_drawing_and_writes_nothing() {
    let t = Trained::new("signal");
    let png = t.path("never.png");
    let checkpoint = t.checkpoint();
    let mut run = Running::hourglass(&[
        "sample",
        "--device",
        "cpu",
        "--recompute",
        "--num-samples",
        "4000",
        "--png",
        &png,
        "--checkpoint",
        checkpoint.to_str().unwrap(),
    ]);
    run.wait_for_stdout(Duration::from_secs(60), |out| {
        text(out).contains("drawing 4000 images")
    });
    run.signal("TERM");
    let out = run.finish_within(Duration::from_secs(60));
    assert_eq!(out.status.code(), Some(130), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("sampling stopped after")
            && text(&out.stderr).contains("not written"),
        "{}",
        text(&out.stderr)
    );
    assert!(!Path::new(&png).exists());
}
