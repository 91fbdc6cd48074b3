//! The hourglass's baseline, a plain transformer (`shortening_factors: []`, `depth` a number of layers): its
//! config, names, training; and the model FLOPs counted from a config, which put the two side by side.
//! (Its gradients are checked in `tests/suite/gradcheck.rs`, its causality in `tests/suite/causality.rs`.)

use hourglass::config::{Depth, Positions};
use hourglass::model::lm::HourglassLM;
use hourglass::model::size;
use hourglass::model::Parameters;
use hourglass::train::data::Corpus;
use hourglass::train::{Preset, TrainConfig, Trainer};
use hourglass::{Cpu, HourGlass, HourGlassConfig, Tensor};
use std::sync::atomic::AtomicBool;

fn names(config: &HourGlassConfig) -> Vec<String> {
    let model = HourGlass::from_config(&Cpu::<f32>::new(), config, 0).unwrap();
    let mut out = Vec::new();
    model.visit("", &mut |name, _| out.push(name));
    out
}

#[test]
fn a_plain_config_reads_writes_and_names_its_layers() {
    let json = r#"{"n_heads": 2, "d_model": 8, "dropout": 0.0, "d_ff": 16, "shortening_factors": [], "depth": 3}"#;
    let config = HourGlassConfig::from_json(json).unwrap();
    assert_eq!(config, HourGlassConfig::plain(2, 8, 0.0, 16, 3));
    assert_eq!(
        HourGlassConfig::from_json(&config.to_json()).unwrap(),
        config
    );
    let n = names(&config);
    assert_eq!(n.len(), 3 * 16);
    assert!(
        n.contains(&"layers.2.feed_forward.layer2.bias".to_string()),
        "{n:?}"
    );
    assert!(names(&HourGlassConfig::plain(2, 8, 0.0, 16, 1))
        .contains(&"layers.norm_ff.weight".to_string()));
}

#[test]
fn an_empty_factor_list_without_a_layer_count_is_still_an_error() {
    let err = |c: HourGlassConfig| c.validate().unwrap_err().to_string();
    let no_depth = HourGlassConfig::reference(2, 8, 0.0, 16, &[]);
    assert!(err(no_depth).contains("plain transformer"));
    let triple = HourGlassConfig {
        depth: Some(Depth::triple(1, 1, 1)),
        ..HourGlassConfig::reference(2, 8, 0.0, 16, &[])
    };
    assert!(err(triple).contains("give depth as its number of layers"));
    assert!(
        err(HourGlassConfig::plain(2, 8, 0.0, 16, 0)).contains("plain transformer has 0 layers")
    );
    // The reference constructor keeps refusing it.
    assert!(HourGlass::new(2, 8, 0.0, 16, &[]).is_err());
}

#[test]
fn a_plain_transformer_keeps_the_shape_and_trains() {
    let mut model = HourGlass::from_config(
        &Cpu::<f32>::new(),
        &HourGlassConfig::plain(2, 8, 0.1, 16, 2),
        0,
    )
    .unwrap();
    let x = Tensor::from_f64(&Cpu::new(), &[5, 3, 8], &vec![0.3; 120]).unwrap();
    assert_eq!(model.forward(&x).unwrap().shape(), &[5, 3, 8]);

    let corpus = Corpus::from_bytes(
        "plain layers, no shortening at all. "
            .repeat(60)
            .into_bytes(),
    )
    .unwrap();
    let mut model = HourGlassConfig::plain(2, 16, 0.0, 32, 2);
    model.positions = Positions::Rotary;
    let config = TrainConfig {
        model,
        seq_len: 16,
        batch: 4,
        steps: 30,
        warmup_steps: 2,
        eval_every: 30,
        ..Preset::Cpu.config()
    };
    let mut trainer = Trainer::new(&Cpu::<f32>::new(), config, &corpus).unwrap();
    trainer
        .run(&corpus, None, &AtomicBool::new(false), &mut ())
        .unwrap();
    let bits: Vec<f64> = trainer.history().steps.iter().map(|s| s.bits).collect();
    assert!(
        bits[27..].iter().sum::<f64>() < 0.8 * bits[..3].iter().sum::<f64>(),
        "{bits:?}"
    );
    // Sampling needs no padding (the factors' product is 1).
    assert_eq!(
        hourglass::train::sample::padded_len(&trainer.config().model, 7).unwrap(),
        7
    );
}

#[test]
fn the_parameter_count_of_a_plain_config_is_exact() {
    let c = HourGlassConfig::plain(4, 16, 0.0, 24, 3);
    let lm = HourglassLM::build(&Cpu::<f32>::new(), &c, 0, true).unwrap();
    assert_eq!(size::lm_params(&c, true).unwrap(), lm.param_count() as f64);
}

#[test]
fn flops_per_token_follow_the_stated_count() {
    // The enwik8 preset: d 512, d_ff 2048, 5 + 5 layers at 2048, 24 at ceil(2048/3) = 683, causal, the LM head.
    let c = Preset::Enwik8.config().model;
    let (d, f) = (512.0, 2048.0);
    let layer = |len: f64| len * (2.0 * (4.0 * d * d + 2.0 * d * f) + 2.0 * len * d);
    let expected = (10.0 * layer(2048.0) + 24.0 * layer(683.0)) / 2048.0 + 2.0 * d * 256.0;
    let got = size::flops_per_token(&c, 2048, true).unwrap();
    assert!(
        (got - expected).abs() < 1e-9 * expected,
        "{got} vs {expected}"
    );
    // The same layers unshortened cost more per byte, by the attention and projections at full length.
    let plain = HourGlassConfig::plain(8, 512, 0.2, 2048, 34);
    let plain_flops = size::flops_per_token(&plain, 2048, true).unwrap();
    assert!(
        (plain_flops - (34.0 * layer(2048.0) / 2048.0 + 2.0 * d * 256.0)).abs()
            < 1e-6 * plain_flops
    );
    assert!(plain_flops > 2.0 * got);
    // Non-causal attention counts in full.
    let full = HourGlassConfig {
        causal: false,
        ..plain
    };
    let full_flops = size::flops_per_token(&full, 2048, false).unwrap();
    assert!(
        (full_flops - 34.0 * (layer(2048.0) / 2048.0 + 2.0 * 2048.0 * d)).abs() < 1e-6 * full_flops
    );
}

#[test]
fn the_enwik8_preset_counts_140_102_316_flops_per_byte() {
    // The same count as tools/bench_torch_step.py's (checked there against torch.utils.flop_counter), so
    // docs/perf.md can set our step and PyTorch's side by side.
    let c = Preset::Enwik8.config();
    let forward = size::flops_per_token(&c.model, c.seq_len, true).unwrap();
    assert_eq!(forward.round(), 140_102_316.0);
}

#[test]
fn resampler_flops_agree_with_the_python_count() {
    // tools/bench_torch_step.py's model_flops_per_token for the same configs at seq_len 47 (ragged), LM head
    // included: the two sides of docs/perf.md count attention and linear resamplers alike.
    let cases = [
        (
            r#"{"n_heads": 2, "d_model": 32, "dropout": 0.0, "d_ff": 64, "shortening_factors": [3],
                "shortening": "attention", "upsampling": "attention"}"#,
            85103.65957446808,
        ),
        (
            r#"{"n_heads": 2, "d_model": 32, "dropout": 0.0, "d_ff": 64, "shortening_factors": [2, 3],
                "shortening": ["linear", "attention"], "upsampling": ["attention", "linear"],
                "attention_pooling": "linear", "attention_upsampling": "linear",
                "attention_resampling_mask": "window", "depth": [1, [0, 2, 1], 1]}"#,
            95101.27659574468,
        ),
        (
            r#"{"n_heads": 2, "d_model": 32, "dropout": 0.0, "d_ff": 64, "shortening_factors": [2],
                "shortening": "attention", "upsampling": "attention", "causal": false}"#,
            102013.27659574468,
        ),
    ];
    for (json, python) in cases {
        let c = HourGlassConfig::from_json(json).unwrap();
        let ours = size::flops_per_token(&c, 47, true).unwrap();
        assert!(
            (ours - python).abs() < 1e-9 * python,
            "{json}: {ours} vs {python}"
        );
    }
}
