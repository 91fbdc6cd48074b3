//! Images as training data: the IDX reader on good and bad files, a corpus of whole images (sequences that
//! never cross from one image into the next, every pixel scored), bits per dimension checked by hand, a short
//! training run, the `fashion-mnist` preset on either device, and `hourglass train` / `eval` end to end on
//! synthetic images written here (never the download).

use crate::common::expect_err;
use hourglass::config::HourGlassConfig;
use hourglass::model::lm::{Head, HourglassLM};
use hourglass::model::size;
use hourglass::rng::SeededRng;
use hourglass::run::train::TrainRequest;
use hourglass::train::data::{Corpus, DataKind, Split, START, VALID_IMAGES};
use hourglass::train::images::{load_image_folder, read_idx_images, Images, TEST_FILE, TRAIN_FILE};
use hourglass::train::trainer::evaluate;
use hourglass::train::{Preset, TrainConfig, Trainer};
use hourglass::Cpu;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::AtomicBool;

/// An IDX image file's bytes: the magic, the three dimensions, then `pixels`.
fn idx_bytes(magic: u32, [count, rows, cols]: [u32; 3], pixels: &[u8]) -> Vec<u8> {
    let mut bytes = Vec::new();
    for word in [magic, count, rows, cols] {
        bytes.extend(word.to_be_bytes());
    }
    bytes.extend(pixels);
    bytes
}

/// `count` images of `rows × cols`, random pixels from `seed` (so that no two are alike).
fn random_images(count: usize, rows: usize, cols: usize, seed: u64) -> Images {
    let mut rng = SeededRng::new(seed);
    let pixels = (0..count * rows * cols)
        .map(|_| rng.next_u64() as u8)
        .collect();
    Images::new(rows, cols, pixels).unwrap()
}

/// `count` images with something to learn: diagonal stripes at one of four phases, the phase the only
/// randomness.
pub(crate) fn striped_images(count: usize, rows: usize, cols: usize, seed: u64) -> Images {
    let mut rng = SeededRng::new(seed);
    let mut pixels = Vec::with_capacity(count * rows * cols);
    for _ in 0..count {
        let phase = (rng.next_u64() % 4) as usize;
        for r in 0..rows {
            pixels.extend((0..cols).map(|c| [0u8, 80, 160, 240][(r + c + phase) % 4]));
        }
    }
    Images::new(rows, cols, pixels).unwrap()
}

fn write_idx(path: &Path, images: &Images) {
    let dims = [images.count(), images.rows(), images.cols()].map(|d| d as u32);
    std::fs::write(path, idx_bytes(0x803, dims, images.pixels())).unwrap();
}

/// A Fashion-MNIST-like folder in `dir`: `train` and `test` as IDX files under their usual names.
pub(crate) fn image_folder(dir: &Path, train: &Images, test: &Images) -> PathBuf {
    write_idx(&dir.join(TRAIN_FILE), train);
    write_idx(&dir.join(TEST_FILE), test);
    dir.to_path_buf()
}

// ---- the IDX reader -----------------------------------------------------------------------------------------

#[test]
fn reads_an_idx_image_file() {
    let dir = crate::common::scratch_dir("images", "idx-good");
    let path = dir.join("good-idx3-ubyte");
    let pixels: Vec<u8> = (0..3 * 2 * 4).map(|i| i as u8 * 10).collect();
    std::fs::write(&path, idx_bytes(0x803, [3, 2, 4], &pixels)).unwrap();
    let images = read_idx_images(&path).unwrap();
    assert_eq!(
        (images.count(), images.rows(), images.cols(), images.size()),
        (3, 2, 4, 8)
    );
    assert_eq!(images.pixels(), &pixels[..]);
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn a_bad_idx_file_is_an_error_naming_the_file_and_the_fault() {
    let dir = crate::common::scratch_dir("images", "idx-bad");
    let pixels = vec![7u8; 3 * 2 * 4];
    let good = idx_bytes(0x803, [3, 2, 4], &pixels);
    let cases: Vec<(&str, Vec<u8>, &[&str])> = vec![
        ("empty", Vec::new(), &["truncated", "0 bytes"]),
        (
            "short-header",
            good[..10].to_vec(),
            &["truncated", "10 bytes"],
        ),
        (
            "short-pixels",
            good[..good.len() - 1].to_vec(),
            &["truncated", "39 bytes", "= 40"],
        ),
        (
            "long",
            [&good[..], &[0]].concat(),
            &["too long", "41 bytes", "= 40"],
        ),
        (
            "labels-magic",
            idx_bytes(0x801, [3, 2, 4], &pixels),
            &["magic number 0x00000801", "0x00000803"],
        ),
        (
            "floats-magic",
            idx_bytes(0x0d03, [3, 2, 4], &pixels),
            &["magic number 0x00000d03"],
        ),
        (
            "no-rows",
            idx_bytes(0x803, [3, 0, 4], &[]),
            &["3 images of 0x4", "at least 1"],
        ),
        (
            "no-images",
            idx_bytes(0x803, [0, 2, 4], &[]),
            &["0 images of 2x4"],
        ),
        (
            "dims-overflow",
            idx_bytes(0x803, [u32::MAX, u32::MAX, u32::MAX], &pixels),
            &["more than can be counted"],
        ),
    ];
    for (name, bytes, words) in cases {
        let path = dir.join(name);
        std::fs::write(&path, bytes).unwrap();
        let msg = expect_err(read_idx_images(&path), words);
        assert!(msg.contains(name), "{msg:?} does not name the file {name}");
    }
    expect_err(
        read_idx_images(&dir.join("missing")),
        &["image file", "missing"],
    );
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn an_image_folder_needs_both_files_of_one_size() {
    let dir = crate::common::scratch_dir("images", "folder");
    expect_err(
        load_image_folder(&dir),
        &[TRAIN_FILE, "tools/fetch-images.sh"],
    );
    write_idx(&dir.join(TRAIN_FILE), &random_images(20, 3, 3, 1));
    expect_err(
        load_image_folder(&dir),
        &[TEST_FILE, "tools/fetch-images.sh"],
    );
    write_idx(&dir.join(TEST_FILE), &random_images(5, 3, 4, 2));
    expect_err(load_image_folder(&dir), &["3x3", "3x4", "one size"]);
    write_idx(&dir.join(TEST_FILE), &random_images(5, 3, 3, 2));
    let corpus = load_image_folder(&dir).unwrap();
    assert_eq!(corpus.kind(), DataKind::Images { rows: 3, cols: 3 });
    // A run's settings name the image size: another size is refused with both named.
    expect_err(
        DataKind::Images { rows: 28, cols: 28 }.open(&dir),
        &["3x3 images", "28x28 images"],
    );
    std::fs::remove_dir_all(dir).ok();
}

// ---- the corpus of whole images -----------------------------------------------------------------------------

#[test]
fn splits_are_whole_images_with_a_held_out_tail() {
    let train = random_images(60, 2, 3, 1);
    let test = random_images(7, 2, 3, 2);
    let c = Corpus::images(train.clone(), test.clone(), "synthetic").unwrap();
    // A tenth of a small set is held out.
    assert_eq!(c.split(Split::Train), &train.pixels()[..54 * 6]);
    assert_eq!(c.split(Split::Valid), &train.pixels()[54 * 6..]);
    assert_eq!(c.split(Split::Test), test.pixels());
    assert_eq!(
        Split::ALL.map(|s| c.describe(s)),
        ["54 images", "6 images", "7 images"]
    );
    // Of a large one, VALID_IMAGES.
    let c = Corpus::images(random_images(25_000, 1, 1, 3), test_1x1(), "large").unwrap();
    assert_eq!(c.split(Split::Valid).len(), VALID_IMAGES);
    expect_err(
        Corpus::images(random_images(9, 2, 3, 1), test, "nine"),
        &["nine", "9 training image(s)"],
    );
    expect_err(
        Corpus::images(random_images(20, 2, 3, 1), test_1x1(), "mixed"),
        &["2x3", "1x1"],
    );
}

fn test_1x1() -> Images {
    random_images(3, 1, 1, 9)
}

/// Which image of `images` (each `size` pixels) `column` is, asserting that it is one whole.
#[track_caller]
fn which_image(images: &[u8], size: usize, column: &[u32]) -> usize {
    let column: Vec<u8> = column.iter().map(|&p| p as u8).collect();
    let found: Vec<usize> = images
        .chunks(size)
        .enumerate()
        .filter(|(_, image)| *image == &column[..])
        .map(|(i, _)| i)
        .collect();
    assert_eq!(found.len(), 1, "column {column:?} is not one whole image");
    found[0]
}

/// Column `b` of a `[seq, batch]` row-major batch.
fn column(flat: &[u32], batch: usize, b: usize) -> Vec<u32> {
    flat.iter().skip(b).step_by(batch).copied().collect()
}

/// Every column's targets are one whole image of the split, its inputs START and that image but its last pixel.
#[track_caller]
fn check_columns(
    split: &[u8],
    size: usize,
    inputs: &[u32],
    targets: &[u32],
    batch: usize,
) -> Vec<usize> {
    assert_eq!((inputs.len(), targets.len()), (size * batch, size * batch));
    (0..batch)
        .map(|b| {
            let (x, y) = (column(inputs, batch, b), column(targets, batch, b));
            let image = which_image(split, size, &y);
            assert_eq!(x[0], START as u32);
            assert_eq!(x[1..], y[..size - 1]);
            image
        })
        .collect()
}

#[test]
fn sequences_never_cross_from_one_image_into_the_next() {
    let (rows, cols) = (3, 4);
    let size = rows * cols;
    let c = Corpus::images(
        random_images(100, rows, cols, 4),
        random_images(23, rows, cols, 5),
        "synthetic",
    )
    .unwrap();
    // Training batches: whole random images, all of the split drawn in time.
    let mut rng = SeededRng::new(0);
    let mut seen = [false; 90];
    for _ in 0..200 {
        let (inputs, targets) = c.batch(Split::Train, size, 5, &mut rng).unwrap();
        for image in check_columns(c.split(Split::Train), size, &inputs, &targets, 5) {
            seen[image] = true;
        }
    }
    assert!(seen.iter().all(|&s| s), "some training images never drawn");
    // Evaluation: every image of the split exactly once, in order; the last batch short.
    for (split, count) in [(Split::Valid, 10usize), (Split::Test, 23)] {
        let batches: Vec<_> = c.eval_batches(split, size, 4).unwrap().collect();
        assert_eq!(batches.len(), count.div_ceil(4));
        let mut images = Vec::new();
        for b in &batches {
            assert_eq!(b.seq, size);
            let found = check_columns(c.split(split), size, &b.inputs, &b.targets, b.batch);
            assert_eq!(b.starts, found.iter().map(|i| i * size).collect::<Vec<_>>());
            images.extend(found);
        }
        assert_eq!(images, (0..count).collect::<Vec<_>>(), "{split}");
        // Every pixel of the split is a target once.
        let targets: usize = batches.iter().map(|b| b.targets.len()).sum();
        assert_eq!(targets, c.split(split).len());
    }
}

#[test]
fn a_seq_len_other_than_rows_times_cols_is_a_config_error() {
    let c = Corpus::images(
        random_images(20, 3, 4, 1),
        random_images(2, 3, 4, 2),
        "synthetic",
    )
    .unwrap();
    let mut rng = SeededRng::new(0);
    for seq in [11, 13, 24] {
        expect_err(
            c.batch(Split::Train, seq, 2, &mut rng),
            &[&format!("seq_len {seq}"), "3x4", "= 12"],
        );
        expect_err(
            c.eval_batches(Split::Valid, seq, 2),
            &[&format!("seq_len {seq}"), "= 12"],
        );
    }
    let config = TrainConfig {
        seq_len: 700,
        ..Preset::FashionMnist.config()
    };
    expect_err(
        config.validate(),
        &["seq_len 700", "28x28 images", "rows·cols"],
    );
    // A text run's settings on images, and an image run's on text, are refused by the trainer.
    let text = Corpus::from_bytes(vec![1u8; 4000]).unwrap();
    let tiny = tiny_config(3, 4, 1);
    expect_err(
        Trainer::new(&Cpu::<f32>::new(), tiny.clone(), &text),
        &["3x4 images", "in-memory corpus holds bytes"],
    );
    let as_text = TrainConfig {
        data: DataKind::Bytes,
        ..tiny
    };
    expect_err(
        Trainer::new(&Cpu::<f32>::new(), as_text, &c),
        &["data bytes", "3x4 images"],
    );
}

/// A tiny hourglass over `rows × cols` images, one step of warm-up.
pub(crate) fn tiny_config(rows: usize, cols: usize, steps: u64) -> TrainConfig {
    let mut model = HourGlassConfig::reference(2, 16, 0.0, 32, &[2]);
    model.positions = hourglass::config::Positions::Rotary;
    TrainConfig {
        model,
        seq_len: rows * cols,
        batch: 8,
        steps,
        warmup_steps: 1,
        lr: 1e-2,
        min_lr: 1e-3,
        eval_every: steps,
        eval_batches: 0,
        save_every: 0,
        data: DataKind::Images { rows, cols },
        ..Preset::FashionMnist.config()
    }
}

// ---- bits per dimension --------------------------------------------------------------------------------------

#[test]
fn bits_per_dimension_is_the_mean_over_every_pixel_the_first_included() {
    let cpu = Cpu::<f64>::new();
    let (rows, cols) = (2, 4);
    let size = rows * cols;
    let test = random_images(5, rows, cols, 7);
    let c = Corpus::images(random_images(10, rows, cols, 6), test.clone(), "tiny").unwrap();
    let mut lm = HourglassLM::build(&cpu, &tiny_config(rows, cols, 1).model, 3, false).unwrap();
    lm.train(false);
    let bits = evaluate(&mut lm, &c, Split::Test, [size, 2], 0, &mut |_, _| {}).unwrap();
    // By hand: each image alone, its logits from `forward`, −log2 softmax of every pixel.
    let mut total = 0.0;
    for image in test.pixels().chunks(size) {
        let mut inputs = vec![START as u32];
        inputs.extend(image[..size - 1].iter().map(|&p| p as u32));
        let logits = lm.forward(&inputs, size, 1).unwrap().to_f64_vec().unwrap();
        for (row, &pixel) in logits.chunks(256).zip(image) {
            let max = row.iter().cloned().fold(f64::MIN, f64::max);
            let log_sum = max + row.iter().map(|l| (l - max).exp()).sum::<f64>().ln();
            total += (log_sum - row[pixel as usize]) / std::f64::consts::LN_2;
        }
    }
    let by_hand = total / test.pixels().len() as f64;
    assert!(
        (bits - by_hand).abs() < 1e-9,
        "eval {bits} vs by hand {by_hand}"
    );

    // A head of zeros predicts every byte alike: exactly 8 bits per dimension.
    let Head::Untied(head) = &mut lm.head else {
        panic!("an untied head")
    };
    head.weight.value.fill_zero().unwrap();
    head.bias.value.fill_zero().unwrap();
    let bits = evaluate(&mut lm, &c, Split::Test, [size, 3], 0, &mut |_, _| {}).unwrap();
    assert!((bits - 8.0).abs() < 1e-12, "{bits}");
}

#[test]
fn the_baseline_is_the_training_images_pixel_histogram() {
    // Training pixels 0 and 255 alike (the held-out tail too), test pixels all 0: −log2 of 0's smoothed
    // frequency among the training split's pixels.
    let train = Images::new(1, 2, [0u8, 255].repeat(20)).unwrap();
    let test = Images::new(1, 2, vec![0; 6]).unwrap();
    let c = Corpus::images(train, test, "two values").unwrap();
    let n = c.split(Split::Train).len() as f64;
    let expected = -((n / 2.0 + 1.0) / (n + 256.0)).log2();
    let got = c.unigram_bits_per_byte(Split::Test).unwrap();
    assert!((got - expected).abs() < 1e-12, "{got} vs {expected}");
    assert_eq!(DataKind::Images { rows: 1, cols: 2 }.units().short, "bpd");
    assert_eq!(DataKind::Bytes.units().short, "bpc");
}

#[test]
fn a_short_run_on_a_few_hundred_images_lowers_bits_per_dimension() {
    let (rows, cols) = (4, 4);
    let c = Corpus::images(
        striped_images(300, rows, cols, 1),
        striped_images(20, rows, cols, 2),
        "stripes",
    )
    .unwrap();
    let mut trainer = Trainer::new(&Cpu::<f32>::new(), tiny_config(rows, cols, 40), &c).unwrap();
    let before = trainer
        .evaluate(&c, Split::Valid, 0, &mut |_, _| {})
        .unwrap();
    trainer
        .run(&c, None, &AtomicBool::new(false), &mut ())
        .unwrap();
    let after = trainer
        .evaluate(&c, Split::Valid, 0, &mut |_, _| {})
        .unwrap();
    // Each image is its phase (2 bits) and then determined: far below the start's ~8 bits per dimension, and
    // below the pixel histogram's 2.
    let histogram = c.unigram_bits_per_byte(Split::Valid).unwrap();
    assert!(
        after < 0.5 * before && after < histogram,
        "{before} -> {after} bpd (histogram {histogram})"
    );
    let logged = trainer.history().valid.last().unwrap().1;
    assert_eq!(
        logged, after,
        "the run's own validation covers the whole split"
    );
}

// ---- the preset --------------------------------------------------------------------------------------------

#[test]
fn the_preset_is_a_larger_model_on_a_gpu() {
    let (cpu, gpu) = (
        Preset::FashionMnist.for_device(false),
        Preset::FashionMnist.for_device(true),
    );
    assert_eq!(cpu, Preset::FashionMnist.config());
    for c in [&cpu, &gpu] {
        c.validate().unwrap();
        assert_eq!(c.seq_len, 784);
        assert_eq!(c.data, DataKind::Images { rows: 28, cols: 28 });
        assert_eq!(c.model.shortening_factors.iter().product::<usize>(), 28);
    }
    let params = |c: &TrainConfig| size::lm_params(&c.model, c.tie_embedding).unwrap();
    assert!(
        params(&gpu) > 20.0 * params(&cpu),
        "{} vs {} parameters",
        params(&gpu),
        params(&cpu)
    );
    assert!(gpu.batch * gpu.steps as usize > cpu.batch * cpu.steps as usize);
    // The text presets do not depend on the device.
    for p in [Preset::Cpu, Preset::Gpu, Preset::Enwik8] {
        assert_eq!(p.for_device(true), p.for_device(false));
        assert!(!p.config().to_json().contains("\"data\""));
    }

    // `hourglass train --preset fashion-mnist` resolves the device's model, the image folder and its own
    // output folder.
    let request = |on_gpu| {
        TrainRequest {
            preset: Some(Preset::FashionMnist),
            config_file: None,
            flags: serde_json::json!({}),
            resume: None,
            out: None,
            data: None,
            overwrite: false,
            sample_length: 0,
            prompt: String::new(),
            progress: false,
            graph: true,
        }
        .resolve(on_gpu)
        .unwrap()
    };
    let (on_cpu, on_gpu) = (request(false), request(true));
    assert_eq!((on_cpu.config, on_gpu.config), (cpu, gpu.clone()));
    assert_eq!(on_gpu.data, PathBuf::from("data/fashion-mnist"));
    assert_eq!(on_gpu.out, PathBuf::from("runs/fashion-mnist"));
    // The image kind survives the JSON of config.json and checkpoints.
    assert_eq!(TrainConfig::from_json(&gpu.to_json()).unwrap(), gpu);
}

// ---- the CLI -----------------------------------------------------------------------------------------------

fn hourglass(args: &[&str], cwd: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_hourglass"))
        .args(args)
        .current_dir(cwd)
        .output()
        .expect("run the hourglass binary")
}

#[track_caller]
fn stdout_of(out: &Output) -> String {
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(
        out.status.success(),
        "status {:?}\nstdout: {stdout}\nstderr: {stderr}",
        out.status
    );
    stdout.into_owned()
}

#[track_caller]
fn expect_cli_err(out: &Output, words: &[&str]) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    for w in words {
        assert!(
            stderr.contains(w),
            "stderr does not mention {w:?}: {stderr}"
        );
    }
}

/// The number after the last `label` in `text`.
#[track_caller]
fn number_after(text: &str, label: &str) -> f64 {
    text.rsplit(label)
        .next()
        .filter(|_| text.contains(label))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.trim_end_matches([';', ',']).parse().ok())
        .unwrap_or_else(|| panic!("no number after {label:?} in {text}"))
}

#[test]
fn train_and_eval_the_preset_on_synthetic_images() {
    let dir = crate::common::scratch_dir("images", "cli");
    let data = image_folder(
        &dir,
        &striped_images(300, 28, 28, 1),
        &striped_images(20, 28, 28, 2),
    );
    let out_dir = dir.join("run");
    let (d, o) = (data.to_str().unwrap(), out_dir.to_str().unwrap());
    let train = |extra: &[&str]| {
        let mut args = vec![
            "train",
            "--preset",
            "fashion-mnist",
            "--device",
            "cpu",
            "--no-progress",
            "--data",
            d,
            "--out",
            o,
            "--steps",
            "3",
            "--warmup-steps",
            "1",
            "--eval-every",
            "2",
            "--eval-batches",
            "1",
        ];
        args.extend(extra);
        hourglass(&args, &dir)
    };
    let stdout = stdout_of(&train(&[]));
    for needle in [
        "270 images train / 30 images valid",
        "training-set pixel-histogram baseline on the validation split",
        "bpd",
        "validation: ",
        "bits per dimension on the whole split (30 images)",
    ] {
        assert!(stdout.contains(needle), "stdout lacks {needle:?}: {stdout}");
    }
    assert!(
        !stdout.contains("bits per character") && !stdout.contains("bpc"),
        "{stdout}"
    );
    let valid = number_after(&stdout, "validation: ");
    let baseline = number_after(&stdout, "pixel-histogram baseline ");
    assert!(valid.is_finite() && baseline > 1.0, "{stdout}");
    let csv = std::fs::read_to_string(out_dir.join("history.csv")).unwrap();
    assert!(
        csv.starts_with("step,train_bits_per_dim,valid_bits_per_dim,"),
        "{csv}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out_dir.join("history.json")).unwrap())
            .unwrap();
    let logged = json["final_valid_bits_per_dim"].as_f64().unwrap();
    assert!((logged - valid).abs() < 1e-3, "{logged} vs {valid}");
    assert!(json["pixel_histogram_valid_bits_per_dim"]
        .as_f64()
        .is_some());
    let config = std::fs::read_to_string(out_dir.join("config.json")).unwrap();
    let config = TrainConfig::from_json(&config).unwrap();
    assert_eq!(config.data, DataKind::Images { rows: 28, cols: 28 });
    // In place of a text sample, 16 images as a 4 × 4 grid: 112-pixel cells (28 at scale 4), 4-pixel gaps.
    assert!(stdout.contains("drawing 16 images of 28x28"), "{stdout}");
    let grid = std::fs::read(out_dir.join("samples.png")).unwrap();
    let grid = tiny_skia::Pixmap::decode_png(&grid).unwrap();
    assert_eq!((grid.width(), grid.height()), (468, 468));

    // Eval knows from the checkpoint that it is over images: the test images, in bits per dimension.
    let ckpt = out_dir.join("checkpoint.safetensors");
    let c = ckpt.to_str().unwrap();
    let eval = |split: &str| {
        stdout_of(&hourglass(
            &[
                "eval",
                "--checkpoint",
                c,
                "--data",
                d,
                "--split",
                split,
                "--device",
                "cpu",
            ],
            &dir,
        ))
    };
    let test = eval("test");
    assert!(
        test.contains("test split of image folder")
            && test.contains("(20 images)")
            && test.contains("bits per dimension; training-set pixel-histogram baseline"),
        "{test}"
    );
    // On the validation images it reproduces the run's final validation.
    let again = number_after(&eval("valid"), "(30 images): ");
    assert!(
        (again - logged).abs() < 1e-4,
        "eval {again} vs the run's {logged}"
    );

    // Resuming continues the run over the same images.
    let stdout = stdout_of(&hourglass(
        &[
            "train",
            "--resume",
            c,
            "--data",
            d,
            "--steps",
            "4",
            "--device",
            "cpu",
            "--no-progress",
        ],
        &dir,
    ));
    assert!(
        stdout.contains("at step 3") && stdout.contains("bpd"),
        "{stdout}"
    );

    // Bad settings and missing data are errors that say what to do.
    expect_cli_err(
        &train(&["--overwrite", "--seq-len", "100"]),
        &["seq_len 100", "28x28 images"],
    );
    let elsewhere = crate::common::scratch_dir("images", "cli-no-data");
    let out = hourglass(
        &[
            "train",
            "--preset",
            "fashion-mnist",
            "--device",
            "cpu",
            "--steps",
            "1",
            "--warmup-steps",
            "0",
        ],
        &elsewhere,
    );
    expect_cli_err(&out, &["data/fashion-mnist", "tools/fetch-images.sh"]);
    let out = hourglass(&["eval", "--checkpoint", c, "--device", "cpu"], &elsewhere);
    expect_cli_err(&out, &["data/fashion-mnist", "tools/fetch-images.sh"]);
    std::fs::remove_dir_all(dir).ok();
    std::fs::remove_dir_all(elsewhere).ok();
}
