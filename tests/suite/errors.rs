//! Every bad input gives an `Err` (never a panic, never a silent wrong answer) whose message names the
//! offending shape or value; and the CLI turns errors into `error: <message>` on stderr with exit status 2.

use crate::common::cli::hourglass;
use crate::common::expect_err;
use hourglass::checkpoint::{export_params, import_params, HostTensor, TensorFile};
use hourglass::config::{Depth, PerLevel};
use hourglass::run::forward_files;
use hourglass::{Cpu, Error, HourGlass, HourGlassConfig, Tensor};
use std::path::PathBuf;

fn config() -> HourGlassConfig {
    HourGlassConfig::reference(2, 8, 0.1, 16, &[2])
}

fn cpu() -> Cpu<f32> {
    Cpu::new()
}

fn model() -> HourGlass<Cpu<f32>> {
    let mut m = HourGlass::from_config(&cpu(), &config(), 7).expect("model");
    m.train(false);
    m
}

/// A checkpoint holding exactly the model's parameters.
fn weights() -> TensorFile {
    export_params(&model(), false).expect("export")
}

fn host(shape: &[usize]) -> HostTensor {
    let n: usize = shape.iter().product();
    HostTensor {
        shape: shape.to_vec(),
        data: (0..n).map(|i| ((i % 7) as f32 - 3.0) * 0.1).collect(),
    }
}

fn input_with(tensors: &[(&str, &[usize])]) -> TensorFile {
    let mut f = TensorFile::default();
    for (name, shape) in tensors {
        f.tensors.insert(name.to_string(), host(shape));
    }
    f
}

fn run(weights: &TensorFile, input: &TensorFile) -> hourglass::Result<TensorFile> {
    forward_files(&cpu(), &config(), weights, input)
}

fn x(shape: &[usize]) -> Tensor<Cpu<f32>> {
    Tensor::from_f64(&cpu(), shape, &vec![0.25; shape.iter().product()]).expect("tensor")
}

// ---- configuration ---------------------------------------------------------------------------------------

#[test]
fn d_model_not_divisible_by_n_heads() {
    let c = HourGlassConfig {
        n_heads: 3,
        d_model: 8,
        ..config()
    };
    expect_err(c.validate(), &["d_model 8", "n_heads 3"]);
    expect_err(
        HourGlass::from_config(&cpu(), &c, 0),
        &["d_model 8", "n_heads 3"],
    );
    expect_err(
        HourGlass::new(4, 10, 0.1, 32, &[2]),
        &["d_model 10", "n_heads 4"],
    );
}

#[test]
fn empty_factor_list() {
    let c = HourGlassConfig {
        shortening_factors: vec![],
        ..config()
    };
    expect_err(
        HourGlass::from_config(&cpu(), &c, 0),
        &["shortening_factors", "empty"],
    );
}

#[test]
fn zero_factor() {
    let c = HourGlassConfig {
        shortening_factors: vec![2, 0],
        ..config()
    };
    expect_err(
        HourGlass::from_config(&cpu(), &c, 0),
        &["shortening_factors[1]", "[2, 0]"],
    );
}

#[test]
fn zero_sizes_in_config() {
    for (c, needle) in [
        (
            HourGlassConfig {
                d_model: 0,
                ..config()
            },
            "d_model (0)",
        ),
        (
            HourGlassConfig {
                n_heads: 0,
                ..config()
            },
            "n_heads (0)",
        ),
        (
            HourGlassConfig {
                d_ff: 0,
                ..config()
            },
            "d_ff (0)",
        ),
    ] {
        expect_err(HourGlass::from_config(&cpu(), &c, 0), &[needle]);
    }
}

#[test]
fn dropout_outside_unit_interval() {
    for p in [1.0, 1.5, -0.1, f64::NAN, f64::INFINITY] {
        let c = HourGlassConfig {
            dropout: p,
            ..config()
        };
        expect_err(
            HourGlass::from_config(&cpu(), &c, 0),
            &["dropout", &format!("{p}")],
        );
    }
    expect_err(
        HourGlassConfig::from_json(
            r#"{"n_heads": 2, "d_model": 8, "dropout": 1.0, "d_ff": 16, "shortening_factors": [2]}"#,
        ),
        &["dropout", "1"],
    );
}

#[test]
fn unknown_config_key() {
    let msg = expect_err(
        HourGlassConfig::from_json(
            r#"{"n_heads": 2, "d_model": 8, "dropout": 0.1, "d_ff": 16, "shortening_factors": [2], "n_layers": 3}"#,
        ),
        &["n_layers"],
    );
    assert!(msg.contains("unknown field"), "{msg}");
}

#[test]
fn missing_config_key() {
    expect_err(
        HourGlassConfig::from_json(r#"{"n_heads": 2, "d_model": 8, "dropout": 0.1, "d_ff": 16}"#),
        &["shortening_factors"],
    );
}

#[test]
fn invalid_json() {
    expect_err(
        HourGlassConfig::from_json(r#"{"n_heads": 2, "d_model": 8,"#),
        &["invalid config JSON"],
    );
    expect_err(
        HourGlassConfig::from_json(
            r#"{"n_heads": -2, "d_model": 8, "dropout": 0.1, "d_ff": 16, "shortening_factors": [2]}"#,
        ),
        &["-2"],
    );
}

// ---- component configuration (docs/components.md) ---------------------------------------------------------

/// The JSON of a valid two-level config ([2, 3]) plus `extra` keys.
fn json_with(extra: &str) -> String {
    format!(
        r#"{{"n_heads": 2, "d_model": 8, "dropout": 0.1, "d_ff": 16, "shortening_factors": [2, 3], {extra}}}"#
    )
}

#[test]
fn unknown_component_kind() {
    for (extra, needles) in [
        (r#""shortening": "pool""#, &["shortening", "pool"][..]),
        (r#""shortening": ["avg", "max"]"#, &["shortening", "max"]),
        (r#""upsampling": "repeat""#, &["upsampling", "repeat"]),
        (
            r#""upsampling": ["naive", "bilinear"]"#,
            &["upsampling", "bilinear"],
        ),
        (
            r#""attention_pooling": "attention""#,
            &["attention_pooling", "`attention`"],
        ),
        (
            r#""attention_upsampling": "attention""#,
            &["attention_upsampling", "`attention`"],
        ),
        (
            r#""attention_resampling_mask": "diagonal""#,
            &["attention_resampling_mask", "diagonal"],
        ),
        (r#""shortening": 3"#, &["shortening", "3"]),
        (r#""causal": "yes""#, &["yes"]),
    ] {
        let msg = expect_err(HourGlassConfig::from_json(&json_with(extra)), needles);
        assert!(msg.contains("invalid config JSON"), "{extra}: {msg}");
    }
    // Every kind the spec names is accepted, alone and per level.
    for extra in [
        r#""shortening": "avg", "upsampling": "naive""#,
        r#""shortening": "linear", "upsampling": "linear""#,
        r#""shortening": "attention", "upsampling": "attention""#,
        r#""shortening": ["avg", "attention"], "upsampling": ["attention", "linear"]"#,
        r#""attention_pooling": "linear", "attention_upsampling": "linear""#,
        r#""attention_resampling_mask": "window", "causal": false"#,
    ] {
        HourGlassConfig::from_json(&json_with(extra)).unwrap_or_else(|e| panic!("{extra}: {e}"));
    }
}

#[test]
fn per_level_list_of_the_wrong_length() {
    expect_err(
        HourGlassConfig::from_json(&json_with(r#""shortening": ["avg"]"#)),
        &["shortening", r#"["avg"]"#, "[2, 3]"],
    );
    expect_err(
        HourGlassConfig::from_json(&json_with(
            r#""upsampling": ["naive", "linear", "attention"]"#,
        )),
        &["upsampling", r#"["naive","linear","attention"]"#, "[2, 3]"],
    );
    let c = HourGlassConfig {
        shortening: PerLevel::Each(vec![]),
        ..config()
    };
    expect_err(
        HourGlass::from_config(&cpu(), &c, 0),
        &["shortening", "[]", "[2]"],
    );
}

#[test]
fn depth_that_does_not_match_the_factors() {
    for (depth, needles) in [
        // A number where a nested triple is needed (two factors, one level of nesting).
        (
            "[1, 1, 1]",
            &["depth [1, 1, 1]", "[2, 3]", "needs a triple"][..],
        ),
        ("2", &["depth 2", "needs a triple"]),
        // A triple where a number is needed: too deep, or pre/post nested.
        (
            "[1, [1, [1, 1, 1], 1], 1]",
            &["depth [1, [1, [1, 1, 1], 1], 1]", "innermost", "[1, 1, 1]"],
        ),
        (
            "[[1, 1, 1], [1, 1, 1], 1]",
            &["pre of level 0", "[1, 1, 1]"],
        ),
        (
            "[1, [1, 1, [2, 2, 2]], 1]",
            &["post of level 1", "[2, 2, 2]"],
        ),
        // Not a triple, not a number of layers.
        ("[1, [1, 1], 1]", &["[1,1]", "triple"]),
        ("[1, [1, 1, 1, 1], 1]", &["[1,1,1,1]", "triple"]),
        ("[1, [1, -1, 1], 1]", &["-1"]),
        ("[1, [1, 1.5, 1], 1]", &["1.5"]),
        (r#"[1, [1, "x", 1], 1]"#, &[r#""x""#]),
    ] {
        expect_err(
            HourGlassConfig::from_json(&json_with(&format!(r#""depth": {depth}"#))),
            needles,
        );
    }
    // The same from Rust.
    let c = HourGlassConfig {
        depth: Some(Depth::triple(1, Depth::triple(1, 1, 1), 1)),
        ..config()
    };
    expect_err(
        HourGlass::from_config(&cpu(), &c, 0),
        &["depth [1, [1, 1, 1], 1]", "[2]", "must be a number"],
    );
}

#[test]
fn innermost_valley_without_layers() {
    expect_err(
        HourGlassConfig::from_json(&json_with(r#""depth": [1, [1, 0, 1], 1]"#)),
        &["depth [1, [1, 0, 1], 1]", "innermost level 1", "0 layers"],
    );
    let c = HourGlassConfig {
        depth: Some(Depth::triple(2, 0, 2)),
        ..config()
    };
    expect_err(c.validate(), &["depth [2, 0, 2]", "0 layers"]);
    expect_err(HourGlass::from_config(&cpu(), &c, 0), &["0 layers"]);
    // Empty pre and post stacks are fine.
    HourGlassConfig::from_json(&json_with(r#""depth": [0, [0, 1, 0], 0]"#)).unwrap();
}

#[test]
fn cli_bad_component_config() {
    let (dir, [_, w, i, o]) = cli_files("cli-bad-components");
    for (name, extra, needles) in [
        (
            "kind.json",
            r#""shortening": "pool""#,
            &["shortening", "pool"][..],
        ),
        (
            "depth.json",
            r#""depth": [1, 0, 1]"#,
            &["depth [1, 0, 1]", "0 layers"],
        ),
    ] {
        let bad = dir.join(name);
        std::fs::write(
            &bad,
            format!(
                r#"{{"n_heads": 2, "d_model": 8, "dropout": 0.1, "d_ff": 16, "shortening_factors": [2], {extra}}}"#
            ),
        )
        .unwrap();
        let out = hourglass(&[
            "forward",
            "--config",
            bad.to_str().unwrap(),
            "--weights",
            &w,
            "--input",
            &i,
            "--output",
            &o,
        ]);
        expect_cli_err(&out, needles);
    }
}

// ---- inputs ----------------------------------------------------------------------------------------------

#[test]
fn zero_seq_len_or_batch() {
    let mut m = model();
    expect_err(m.forward(&x(&[0, 2, 8])), &["[0, 2, 8]"]);
    expect_err(m.forward(&x(&[3, 0, 8])), &["[3, 0, 8]"]);
    expect_err(
        run(&weights(), &input_with(&[("x", &[0, 2, 8])])),
        &["[0, 2, 8]"],
    );
    expect_err(
        run(&weights(), &input_with(&[("x", &[3, 0, 8])])),
        &["[3, 0, 8]"],
    );
}

#[test]
fn zero_width_input() {
    let mut m = model();
    expect_err(m.forward(&x(&[3, 2, 0])), &["[3, 2, 0]", "d_model 8"]);
    expect_err(
        run(&weights(), &input_with(&[("x", &[3, 2, 0])])),
        &["[3, 2, 0]"],
    );
}

#[test]
fn input_of_wrong_rank() {
    let mut m = model();
    expect_err(m.forward(&x(&[6, 8])), &["[6, 8]"]);
    expect_err(m.forward(&x(&[1, 3, 2, 8])), &["[1, 3, 2, 8]"]);
    for shape in [&[6, 8][..], &[1, 3, 2, 8], &[]] {
        expect_err(
            run(&weights(), &input_with(&[("x", shape)])),
            &[&format!("{shape:?}"), "rank 3"],
        );
    }
}

#[test]
fn input_of_wrong_width() {
    let mut m = model();
    expect_err(m.forward(&x(&[3, 2, 6])), &["[3, 2, 6]", "d_model 8"]);
    expect_err(
        run(&weights(), &input_with(&[("x", &[3, 2, 6])])),
        &["[3, 2, 6]", "d_model 8"],
    );
}

#[test]
fn gradient_of_wrong_shape() {
    let mut m = model();
    m.forward(&x(&[3, 2, 8])).unwrap();
    expect_err(m.backward(&x(&[4, 2, 8])), &["[4, 2, 8]", "[3, 2, 8]"]);
    expect_err(
        run(
            &weights(),
            &input_with(&[("x", &[3, 2, 8]), ("gy", &[3, 1, 8])]),
        ),
        &["gy", "[3, 1, 8]", "[3, 2, 8]"],
    );
}

#[test]
fn missing_x_or_unknown_input_tensor() {
    expect_err(
        run(&weights(), &input_with(&[("gy", &[3, 2, 8])])),
        &["x", "missing"],
    );
    expect_err(
        run(
            &weights(),
            &input_with(&[("x", &[3, 2, 8]), ("mask", &[3])]),
        ),
        &["mask"],
    );
}

#[test]
fn non_finite_input() {
    for (name, bad) in [("x", f32::NAN), ("gy", f32::INFINITY)] {
        let mut input = input_with(&[("x", &[3, 2, 8]), ("gy", &[3, 2, 8])]);
        input.tensors.get_mut(name).unwrap().data[5] = bad;
        expect_err(
            run(&weights(), &input),
            &[name, &format!("{bad}"), "index 5"],
        );
    }
}

#[test]
fn backward_before_forward() {
    let mut m = model();
    expect_err(
        m.backward(&x(&[3, 2, 8])),
        &["backward called before forward"],
    );
    // And a second backward for one forward.
    let y = m.forward(&x(&[3, 2, 8])).unwrap();
    m.backward(&y).unwrap();
    expect_err(m.backward(&y), &["backward called before forward"]);
}

// ---- checkpoints -----------------------------------------------------------------------------------------

#[test]
fn checkpoint_missing_tensor() {
    let mut w = weights();
    w.tensors.remove("post.norm_ff.weight").unwrap();
    expect_err(
        import_params(&mut model(), &w),
        &["post.norm_ff.weight", "missing"],
    );
    expect_err(
        run(&w, &input_with(&[("x", &[3, 2, 8])])),
        &["post.norm_ff.weight", "missing"],
    );
}

#[test]
fn checkpoint_extra_tensor() {
    let mut w = weights();
    w.tensors.insert("post.extra.weight".into(), host(&[8]));
    expect_err(import_params(&mut model(), &w), &["post.extra.weight"]);
    expect_err(
        run(&w, &input_with(&[("x", &[3, 2, 8])])),
        &["post.extra.weight"],
    );
}

#[test]
fn checkpoint_misshaped_tensor() {
    let mut w = weights();
    w.tensors
        .insert("pre.feed_forward.layer1.weight".into(), host(&[8, 16]));
    expect_err(
        import_params(&mut model(), &w),
        &["pre.feed_forward.layer1.weight", "[8, 16]", "[16, 8]"],
    );
    // Same element count, wrong rank.
    w.tensors
        .insert("pre.feed_forward.layer1.weight".into(), host(&[128]));
    expect_err(
        run(&w, &input_with(&[("x", &[3, 2, 8])])),
        &["pre.feed_forward.layer1.weight", "[128]"],
    );
}

#[test]
fn weights_far_smaller_than_the_config_are_counted_and_every_size_setting_named() {
    // An empty weights file holds 0 values (an f64 sum of none would print as -0); depth, which multiplied
    // the count here, is named with the other settings.
    let mut deep = config();
    deep.depth = Some(Depth::triple(40, 40, 40));
    let input = input_with(&[("x", &[3, 2, 8])]);
    let msg = expect_err(
        forward_files(&cpu(), &deep, &TensorFile::default(), &input),
        &[
            "hold 0 parameter values",
            "d_model 8",
            "shortening_factors [2]",
            "depth [40, 40, 40]",
        ],
    );
    assert!(!msg.contains("-0"), "{msg}");
    expect_err(
        forward_files(&cpu(), &deep, &weights(), &input),
        &["do not belong together", "depth [40, 40, 40]"],
    );
}

#[test]
fn checkpoint_with_nan() {
    let mut w = weights();
    w.tensors
        .get_mut("shortened.self_attn.value.linear.bias")
        .unwrap()
        .data[3] = f32::NAN;
    expect_err(
        import_params(&mut model(), &w),
        &["shortened.self_attn.value.linear.bias", "NaN", "index 3"],
    );
    // Through a file: the value survives serialisation and is still caught.
    let w = TensorFile::from_bytes(&w.to_bytes().unwrap()).unwrap();
    expect_err(
        run(&w, &input_with(&[("x", &[3, 2, 8])])),
        &["shortened.self_attn.value.linear.bias", "NaN"],
    );
}

#[test]
fn non_f32_tensor() {
    let values: Vec<u8> = [1.0f64, 2.0, 3.0, 4.0]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    let view =
        safetensors::tensor::TensorView::new(safetensors::Dtype::F64, vec![2, 2], &values).unwrap();
    let bytes = safetensors::serialize(vec![("pre.norm_ff.weight", view)], None).unwrap();
    expect_err(
        TensorFile::from_bytes(&bytes),
        &["pre.norm_ff.weight", "F64", "F32"],
    );
    let path = crate::common::scratch_dir("errors", "f64").join("w.safetensors");
    std::fs::write(&path, &bytes).unwrap();
    expect_err(
        TensorFile::read(&path),
        &["pre.norm_ff.weight", "F64", "w.safetensors"],
    );
}

#[test]
fn truncated_file() {
    let bytes = weights().to_bytes().unwrap();
    for cut in [bytes.len() - 1, bytes.len() / 2, 9, 4, 0] {
        expect_err(
            TensorFile::from_bytes(&bytes[..cut]),
            &["truncated or corrupt"],
        );
    }
    let path = crate::common::scratch_dir("errors", "truncated").join("w.safetensors");
    std::fs::write(&path, &bytes[..bytes.len() - 10]).unwrap();
    expect_err(
        TensorFile::read(&path),
        &["w.safetensors", "truncated or corrupt"],
    );
}

#[test]
fn corrupt_file() {
    let garbage: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    expect_err(
        TensorFile::from_bytes(&garbage),
        &["not a valid safetensors file"],
    );
    // A plausible header length followed by a header that is not JSON.
    let mut bad = 16u64.to_le_bytes().to_vec();
    bad.extend_from_slice(b"{not json at all");
    expect_err(
        TensorFile::from_bytes(&bad),
        &["not a valid safetensors file"],
    );
    // A valid header whose offsets point past the data.
    let mut lying = Vec::new();
    let header = br#"{"x":{"dtype":"F32","shape":[1000],"data_offsets":[0,4000]}}"#;
    lying.extend_from_slice(&(header.len() as u64).to_le_bytes());
    lying.extend_from_slice(header);
    lying.extend_from_slice(&[0u8; 16]);
    expect_err(
        TensorFile::from_bytes(&lying),
        &["not a valid safetensors file"],
    );
}

#[test]
fn missing_file() {
    let path = crate::common::scratch_dir("errors", "missing").join("nowhere.safetensors");
    expect_err(TensorFile::read(&path), &["nowhere.safetensors"]);
    expect_err(
        HourGlassConfig::from_file(&path.with_extension("json")),
        &["nowhere.json"],
    );
}

#[test]
fn errors_are_typed() {
    assert!(matches!(
        HourGlassConfig::from_json("{"),
        Err(Error::Config(_))
    ));
    assert!(matches!(
        TensorFile::from_bytes(b"junk"),
        Err(Error::Checkpoint(_))
    ));
    assert!(matches!(
        model().forward(&x(&[3, 2, 6])),
        Err(Error::Shape(_))
    ));
}

// ---- the command line ------------------------------------------------------------------------------------

/// `crate::common::cli::expect_cli_err`, with the error the first thing on stderr (nothing printed before it).
#[track_caller]
fn expect_cli_err(out: &std::process::Output, needles: &[&str]) {
    crate::common::cli::expect_cli_err(out, needles);
    let stderr = crate::common::cli::text(&out.stderr);
    assert!(stderr.starts_with("error: "), "stderr: {stderr}");
}

/// Writes a valid config, weights and input into a scratch directory; returns their paths.
fn cli_files(name: &str) -> (PathBuf, [String; 4]) {
    let dir = crate::common::scratch_dir("errors", name);
    let c = dir.join("c.json");
    std::fs::write(&c, config().to_json()).unwrap();
    let w = dir.join("w.safetensors");
    weights().write(&w).unwrap();
    let i = dir.join("i.safetensors");
    input_with(&[("x", &[3, 2, 8])]).write(&i).unwrap();
    let o = dir.join("o.safetensors");
    let s = |p: PathBuf| p.to_string_lossy().into_owned();
    (dir, [s(c), s(w), s(i), s(o)])
}

#[test]
fn cli_missing_file() {
    let (dir, [c, w, _, o]) = cli_files("cli-missing");
    let missing = dir.join("does-not-exist.safetensors");
    let out = hourglass(&[
        "forward",
        "--config",
        &c,
        "--weights",
        &w,
        "--input",
        missing.to_str().unwrap(),
        "--output",
        &o,
    ]);
    expect_cli_err(&out, &["does-not-exist.safetensors"]);
    assert!(!PathBuf::from(&o).exists(), "no output on error");
}

#[test]
fn cli_bad_input_shape_and_config() {
    let (dir, [c, w, i, o]) = cli_files("cli-bad");
    let bad_input = dir.join("bad.safetensors");
    input_with(&[("x", &[3, 2, 6])]).write(&bad_input).unwrap();
    let out = hourglass(&[
        "forward",
        "--config",
        &c,
        "--weights",
        &w,
        "--input",
        bad_input.to_str().unwrap(),
        "--output",
        &o,
    ]);
    expect_cli_err(&out, &["[3, 2, 6]"]);

    let bad_config = dir.join("bad.json");
    std::fs::write(
        &bad_config,
        r#"{"n_heads": 3, "d_model": 8, "dropout": 0.1, "d_ff": 16, "shortening_factors": [2]}"#,
    )
    .unwrap();
    let out = hourglass(&[
        "forward",
        "--config",
        bad_config.to_str().unwrap(),
        "--weights",
        &w,
        "--input",
        &i,
        "--output",
        &o,
    ]);
    expect_cli_err(&out, &["d_model 8", "n_heads 3"]);

    // An output path in a directory that does not exist.
    let nowhere = dir.join("no-such-dir").join("o.safetensors");
    let out = hourglass(&[
        "forward",
        "--config",
        &c,
        "--weights",
        &w,
        "--input",
        &i,
        "--output",
        nowhere.to_str().unwrap(),
    ]);
    expect_cli_err(&out, &["no-such-dir"]);
}

#[test]
fn cli_forward_succeeds_on_good_files() {
    let (_, [c, w, i, o]) = cli_files("cli-good");
    let out = hourglass(&[
        "forward",
        "--config",
        &c,
        "--weights",
        &w,
        "--input",
        &i,
        "--output",
        &o,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got = TensorFile::read(std::path::Path::new(&o)).unwrap();
    assert_eq!(got.tensors.keys().collect::<Vec<_>>(), ["y"]);
    assert_eq!(got.get("y").unwrap().shape, [3, 2, 8]);
}

#[test]
fn cli_cuda_errors_cleanly_without_gpu_and_runs_with_one() {
    let (_, [c, w, i, o]) = cli_files("cli-cuda");
    let out = hourglass(&[
        "forward",
        "--config",
        &c,
        "--weights",
        &w,
        "--input",
        &i,
        "--output",
        &o,
        "--device",
        "cuda",
    ]);
    // Without a usable GPU: a clean error that names CUDA (exit 2, no panic). With one: an output file.
    if out.status.success() {
        let written = TensorFile::read(std::path::Path::new(&o)).unwrap();
        assert!(written.tensors.contains_key("y"));
    } else {
        assert!(
            std::env::var("HOURGLASS_REQUIRE_GPU").as_deref() != Ok("1"),
            "HOURGLASS_REQUIRE_GPU=1 but --device cuda failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        expect_cli_err(&out, &["cuda"]);
    }
}

#[test]
fn cli_usage_error() {
    let out = hourglass(&["forward", "--config"]);
    assert_eq!(out.status.code(), Some(2));
    let out = hourglass(&["demo", "--device", "tpu"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("tpu"));
}

#[test]
fn unwritable_output() {
    let dir = crate::common::scratch_dir("errors", "unwritable");
    let w = weights();
    expect_err(
        w.write(&dir.join("no-such-dir").join("w.safetensors")),
        &["no-such-dir", "cannot write"],
    );
    // The output path is a directory: the rename fails, and no temporary file is left behind.
    let target = dir.join("a-directory");
    std::fs::create_dir_all(target.join("inside")).unwrap();
    expect_err(w.write(&target), &["a-directory"]);
    let left: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left, ["a-directory"], "temporary file left behind");
}
