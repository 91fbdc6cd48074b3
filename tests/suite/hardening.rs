//! Regressions of the hardening work, through the library: writers that share a path, the run-folder lock, a NaN
//! validation, parameters made non-finite by the update, exact float round trips, sizes checked before
//! anything is allocated, and a training checkpoint's hourglass loaded where a weights file is.
//! (The CLI's side — flags, SIGTERM, a second process in the same folder — is in `tests/suite/cli_train.rs`.)

use crate::common::expect_err;
use hourglass::checkpoint::{export_params, HostTensor, TensorFile};
use hourglass::config::{Depth, Positions};
use hourglass::fs::write_atomic;
use hourglass::model::lm::HourglassLM;
use hourglass::model::size::{self, Workload};
use hourglass::model::{Parameters, Precision};
use hourglass::run::{forward_config, forward_files};
use hourglass::train::data::Corpus;
use hourglass::train::history::{History, StepLog};
use hourglass::train::sample::{generate, SampleOptions};
use hourglass::train::trainer::Observer;
use hourglass::train::{Outcome, Preset, StepMode, TrainConfig, Trainer};
use hourglass::{Cpu, Error, HourGlass, HourGlassConfig};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

fn cpu() -> Cpu {
    Cpu::new()
}

fn tiny(steps: u64) -> TrainConfig {
    let mut model = HourGlassConfig::reference(2, 16, 0.0, 32, &[2]);
    model.positions = Positions::Rotary;
    TrainConfig {
        model,
        seq_len: 16,
        batch: 4,
        steps,
        warmup_steps: 1,
        seed: 3,
        eval_every: 100,
        eval_batches: 2,
        save_every: 1,
        ..Preset::Cpu.config()
    }
}

/// Training bytes without a `Z`; the validation and test splits (the last 10%) full of them.
fn corpus_with_z_only_after_training() -> Corpus {
    let mut text = "abc cab bca acb ".repeat(90).into_bytes();
    let train_len = text.len();
    text.extend("aZb Zc ".repeat(train_len / 9 / 7 + 1).bytes());
    let corpus = Corpus::from_bytes(text).unwrap();
    let train = corpus.split(hourglass::train::data::Split::Train);
    assert!(
        !train.contains(&b'Z'),
        "the training split must not hold a Z"
    );
    corpus
}

/// Sets every value of tensor `name` in a checkpoint file to `value`.
fn set_all(path: &Path, name: &str, value: f32) {
    let mut file = TensorFile::read(path).unwrap();
    let t = file.tensors.get_mut(name).unwrap();
    t.data.iter_mut().for_each(|v| *v = value);
    file.write(path).unwrap();
}

fn step_of(path: &Path) -> String {
    TensorFile::read(path).unwrap().metadata["optimizer.step"].clone()
}

// ---- 1. writers that share a path (the run folder's lock: `fs`'s unit tests) ------------------------------------------------

#[test]
fn concurrent_atomic_writes_never_expose_a_partial_file() {
    let dir = crate::common::scratch_dir("hard", "concurrent");
    let path = dir.join("checkpoint.safetensors");
    // Two writers with contents of different lengths; a reader must only ever see one of them whole.
    let contents: Vec<Vec<u8>> = (0..2u8)
        .map(|w| vec![w + 1; (1 << 20) + w as usize * 4099])
        .collect();
    write_atomic(&path, &contents[0]).unwrap();
    std::thread::scope(|s| {
        for c in &contents {
            let path = &path;
            s.spawn(move || {
                for _ in 0..40 {
                    write_atomic(path, c).unwrap();
                }
            });
        }
        for _ in 0..400 {
            let seen = std::fs::read(&path).unwrap();
            assert!(
                contents.contains(&seen),
                "a reader saw {} bytes, neither writer's whole file",
                seen.len()
            );
        }
    });
    let left: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        left,
        ["checkpoint.safetensors"],
        "temporary files were left behind"
    );
    std::fs::remove_dir_all(dir).ok();
}

// ---- 2. a NaN validation; non-finite history values round-trip ------------------------------------------

#[test]
fn a_nan_validation_stops_naming_the_step_and_its_history_round_trips() {
    let dir = crate::common::scratch_dir("hard", "nan-valid");
    let ckpt = dir.join("checkpoint.safetensors");
    let corpus = corpus_with_z_only_after_training();
    let mut t = Trainer::new(&cpu(), tiny(2), &corpus).unwrap();
    t.run(&corpus, Some(&ckpt), &AtomicBool::new(false), &mut ())
        .unwrap();
    // The byte Z embeds as huge values: LayerNorm overflows on it, so validation (which reads Z) is NaN while
    // training (which never does) stays finite.
    let mut file = TensorFile::read(&ckpt).unwrap();
    let table = file.tensors.get_mut("embedding.weight").unwrap();
    let d = table.shape[1];
    table.data[b'Z' as usize * d..(b'Z' as usize + 1) * d].fill(3e38);
    file.write(&ckpt).unwrap();
    let saved = std::fs::read(&ckpt).unwrap();

    let mut config = tiny(5);
    config.eval_every = 1;
    config.save_every = 0;
    let mut t = Trainer::resume(&cpu(), &ckpt, Some(config), &corpus).unwrap();
    let err = t
        .run(&corpus, Some(&ckpt), &AtomicBool::new(false), &mut ())
        .unwrap_err();
    assert!(matches!(err, Error::Training(_)), "{err}");
    let msg = err.to_string();
    assert!(msg.contains("validation loss is NaN at step 3"), "{msg}");
    assert_eq!(
        std::fs::read(&ckpt).unwrap(),
        saved,
        "the last checkpoint changed"
    );
    assert!(t.history().valid.last().unwrap().1.is_nan());

    // That history, NaN and all, goes through a checkpoint and comes back.
    let with_nan = dir.join("with-nan.safetensors");
    t.save(&with_nan).unwrap();
    let back = Trainer::resume(&cpu(), &with_nan, None, &corpus).unwrap();
    assert_eq!(
        format!("{:?}", back.history()),
        format!("{:?}", t.history())
    );
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn a_stop_during_a_validation_leaves_it_unlogged_saves_the_step_and_a_resume_runs_it() {
    /// Raises the stop flag once step `at` is logged: during the validation that follows it.
    struct StopAt<'a>(u64, &'a AtomicBool);
    impl Observer for StopAt<'_> {
        fn step(&mut self, log: &StepLog) {
            if log.step == self.0 {
                self.1.store(true, Ordering::SeqCst);
            }
        }
    }
    let dir = crate::common::scratch_dir("hard", "stop-in-validation");
    let ckpt = dir.join("checkpoint.safetensors");
    let corpus = corpus_with_z_only_after_training();
    let mut config = tiny(10);
    (config.eval_every, config.eval_batches, config.save_every) = (3, 0, 0);
    let stop = AtomicBool::new(false);
    let mut t = Trainer::new(&cpu(), config.clone(), &corpus).unwrap();
    let outcome = t
        .run(&corpus, Some(&ckpt), &stop, &mut StopAt(3, &stop))
        .unwrap();
    assert_eq!(outcome, Outcome::Stopped { step: 3 });
    assert!(
        t.history().valid.is_empty(),
        "a validation cut short was logged: {:?}",
        t.history().valid
    );
    assert_eq!(step_of(&ckpt), "3");
    // Resumed, the run validates step 3 first: its history is an uninterrupted run's.
    let go_on = AtomicBool::new(false);
    let mut resumed = Trainer::resume(&cpu(), &ckpt, None, &corpus).unwrap();
    resumed.run(&corpus, Some(&ckpt), &go_on, &mut ()).unwrap();
    let mut whole = Trainer::new(&cpu(), config, &corpus).unwrap();
    whole.run(&corpus, None, &go_on, &mut ()).unwrap();
    assert_eq!(resumed.history().valid, whole.history().valid);
    assert_eq!(whole.history().valid.len(), 4, "steps 3, 6, 9 and 10");
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn non_finite_and_17_digit_history_values_round_trip_exactly() {
    let history = History {
        steps: vec![
            StepLog {
                step: 1,
                bits: 1.7316666666691383,
                lr: 0.00036666666666666667,
                grad_norm: f64::INFINITY,
            },
            StepLog {
                step: 2,
                bits: f64::NAN,
                lr: 1e-300,
                grad_norm: f64::NEG_INFINITY,
            },
        ],
        valid: vec![(1, f64::NAN), (2, 2.709123456789012)],
    };
    let json = serde_json::to_string(&history).unwrap();
    let back: History = serde_json::from_str(&json).unwrap();
    let bits = |h: &History| {
        let mut v: Vec<u64> = h
            .steps
            .iter()
            .flat_map(|s| [s.bits, s.lr, s.grad_norm])
            .map(f64::to_bits)
            .collect();
        v.extend(h.valid.iter().map(|(_, x)| x.to_bits()));
        v
    };
    assert_eq!(bits(&back), bits(&history), "{json}");
    // A NaN written as null by older versions reads back as NaN (their checkpoints resume).
    let old: History = serde_json::from_str(r#"{"steps": [], "valid": [[1, null]]}"#).unwrap();
    assert!(old.valid[0].1.is_nan());
    // Anything else in place of a number is an error naming what was expected.
    let bad = json.replace("\"NaN\"", "\"nan?\"");
    let err = serde_json::from_str::<History>(&bad)
        .unwrap_err()
        .to_string();
    assert!(err.contains("\"inf\""), "{err}");
}

// ---- 3. parameters made non-finite by the update are never checkpointed ---------------------------------

#[test]
fn an_update_that_overflows_is_not_checkpointed() {
    let dir = crate::common::scratch_dir("hard", "overflow");
    let ckpt = dir.join("checkpoint.safetensors");
    let corpus = corpus_with_z_only_after_training();
    let mut t = Trainer::new(&cpu(), tiny(2), &corpus).unwrap();
    t.run(&corpus, Some(&ckpt), &AtomicBool::new(false), &mut ())
        .unwrap();
    // A crafted, finite moment: the next update of norm.bias is far beyond f32.
    set_all(&ckpt, "optimizer.exp_avg.norm.bias", 3e38);
    set_all(&ckpt, "optimizer.exp_avg_sq.norm.bias", 0.0);
    let saved = std::fs::read(&ckpt).unwrap();
    let mut t = Trainer::resume(&cpu(), &ckpt, Some(tiny(5)), &corpus).unwrap();
    let err = t
        .run(&corpus, Some(&ckpt), &AtomicBool::new(false), &mut ())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("after step 3") && err.contains("norm.bias") && err.contains("not writing"),
        "{err}"
    );
    assert_eq!(
        std::fs::read(&ckpt).unwrap(),
        saved,
        "the last checkpoint changed"
    );
    assert_eq!(step_of(&ckpt), "2");
    // And what is there still loads.
    Trainer::resume(&cpu(), &ckpt, None, &corpus).unwrap();
    std::fs::remove_dir_all(dir).ok();
}

// ---- 4. floats read back exactly --------------------------------------------------------------------------

#[test]
fn a_config_reads_back_exactly_and_resumes_with_the_same_17_digit_lr() {
    let mut config = tiny(3);
    config.lr = 0.00036666666666666667;
    config.min_lr = 1.7316666666691383e-5;
    let back = TrainConfig::from_json(&config.to_json()).unwrap();
    assert_eq!(back.lr.to_bits(), config.lr.to_bits());
    assert_eq!(back, config);

    let dir = crate::common::scratch_dir("hard", "float");
    let ckpt = dir.join("checkpoint.safetensors");
    let corpus = corpus_with_z_only_after_training();
    config.steps = 4;
    // Two steps, saved; resumed with the very same settings (a conflict if lr read back one ulp off).
    let mut t = Trainer::new(&cpu(), config.clone(), &corpus).unwrap();
    t.train_step(&corpus).unwrap();
    t.train_step(&corpus).unwrap();
    t.save(&ckpt).unwrap();
    let mut resumed = Trainer::resume(&cpu(), &ckpt, Some(config.clone()), &corpus).unwrap();
    resumed
        .run(&corpus, None, &AtomicBool::new(false), &mut ())
        .unwrap();
    // Its history (the first steps read back from the checkpoint's JSON) is the uninterrupted run's to the
    // last bit; Debug prints the shortest text that tells two f64 apart.
    let mut whole = Trainer::new(&cpu(), config, &corpus).unwrap();
    whole
        .run(&corpus, None, &AtomicBool::new(false), &mut ())
        .unwrap();
    assert_eq!(
        format!("{:?}", resumed.history()),
        format!("{:?}", whole.history())
    );
    std::fs::remove_dir_all(dir).ok();
}

// ---- the configuration of `train`, resolved in the library ------------------------------------------------

#[test]
fn train_settings_layer_preset_file_flags_and_a_resumed_run_s_own() {
    use hourglass::run::train::TrainRequest;
    let dir = crate::common::scratch_dir("hard", "resolve");
    let file = dir.join("t.json");
    std::fs::write(
        &file,
        r#"{"lr": 0.002, "seed": 4, "model": {"n_heads": 8}}"#,
    )
    .unwrap();
    let request = |preset,
                   config_file: Option<PathBuf>,
                   flags: serde_json::Value,
                   resume: Option<PathBuf>| {
        TrainRequest {
            preset,
            config_file,
            flags,
            resume,
            out: None,
            data: None,
            overwrite: false,
            sample_length: 0,
            prompt: "x".into(),
            progress: false,
            graph: true,
        }
    };
    let job = request(
        None,
        Some(file.clone()),
        serde_json::json!({"seed": 7}),
        None,
    )
    .resolve(false)
    .unwrap();
    assert_eq!(
        (job.config.lr, job.config.seed, job.config.model.n_heads),
        (0.002, 7, 8)
    );
    assert_eq!(job.out, PathBuf::from("runs/cpu"));
    let gpu = request(None, None, serde_json::json!({}), None)
        .resolve(true)
        .unwrap();
    // The precision is the trainer's to resolve against the backend (bf16 on a GPU, the element type on the
    // CPU: `the_library_trains_with_the_settings_the_cli_resolves`).
    assert_eq!(
        (gpu.config, gpu.out),
        (Preset::Gpu.config(), PathBuf::from("runs/gpu"))
    );
    assert_eq!(job.config.precision, None);
    expect_err(
        request(
            Some(Preset::Cpu),
            None,
            serde_json::json!({"lr": -1.0}),
            None,
        )
        .resolve(false),
        &["lr (-1)"],
    );

    // A resumed run starts from the checkpoint's settings and writes beside it.
    let corpus = corpus_with_z_only_after_training();
    let ckpt = dir.join("checkpoint.safetensors");
    let mut t = Trainer::new(&cpu(), tiny(1), &corpus).unwrap();
    t.run(&corpus, Some(&ckpt), &AtomicBool::new(false), &mut ())
        .unwrap();
    let job = request(
        None,
        None,
        serde_json::json!({"steps": 9}),
        Some(ckpt.clone()),
    )
    .resolve(false)
    .unwrap();
    // The checkpoint records the precision its run resolved: the element type, on the CPU.
    assert_eq!(
        job.config,
        TrainConfig {
            steps: 9,
            precision: Some(Precision::Element),
            ..tiny(1)
        }
    );
    assert!(job.config.resume_conflicts(&tiny(1)).is_empty());
    assert_eq!(job.out, dir);
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn the_library_trains_with_the_settings_the_cli_resolves() {
    use hourglass::run::train::{train, TrainRequest};
    let dir = crate::common::scratch_dir("hard", "alike");
    let data = dir.join("data.txt");
    std::fs::write(&data, "abc cab bca acb ".repeat(200)).unwrap();
    // `hourglass train --preset cpu` on the CPU, no precision among its flags, records the settings it resolved.
    let flags = serde_json::to_value(tiny(1)).unwrap();
    let job = TrainRequest {
        preset: Some(Preset::Cpu),
        config_file: None,
        flags: flags.clone(),
        resume: None,
        out: Some(dir.join("run")),
        data: Some(data.clone()),
        overwrite: false,
        sample_length: 0,
        prompt: "x".into(),
        progress: false,
        graph: true,
    }
    .resolve(false)
    .unwrap();
    train(&cpu(), "cpu", job, &AtomicBool::new(false)).unwrap();
    let recorded = std::fs::read_to_string(dir.join("run/config.json")).unwrap();
    let recorded = TrainConfig::from_json(&recorded).unwrap();
    // The library, given the same settings, resolves them alike: the element type, steps issued from the host.
    let settings = Preset::Cpu.config().overlay(&flags).unwrap();
    let resolved = settings.resolve(&cpu());
    assert_eq!(
        (resolved.precision(), resolved.step_mode()),
        (Precision::Element, StepMode::Host)
    );
    assert_eq!(resolved.config(), &recorded);
    let library = Trainer::new(&cpu(), settings, &Corpus::load(&data).unwrap()).unwrap();
    assert_eq!(library.settings(), &resolved);
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn a_checkpoint_records_the_precision_and_an_old_one_resumes_in_the_element_type() {
    let dir = crate::common::scratch_dir("hard", "old-precision");
    let corpus = corpus_with_z_only_after_training();
    let saved_config = |path: &Path| -> serde_json::Value {
        let file = TensorFile::read(path).unwrap();
        serde_json::from_str(&file.metadata["train_config"]).unwrap()
    };
    let ckpt = dir.join("ckpt.safetensors");
    let mut t = Trainer::new(&cpu(), tiny(3), &corpus).unwrap();
    t.train_step(&corpus).unwrap();
    t.save(&ckpt).unwrap();
    assert_eq!(saved_config(&ckpt)["precision"], "f32");

    // A checkpoint from before the setting has none: its run trained in the element type, and resumes so.
    let mut old = TensorFile::read(&ckpt).unwrap();
    let mut config = saved_config(&ckpt);
    config.as_object_mut().unwrap().remove("precision");
    old.metadata
        .insert("train_config".into(), config.to_string());
    old.write(&ckpt).unwrap();
    for requested in [None, Some(tiny(3))] {
        let resumed = Trainer::resume(&cpu(), &ckpt, requested, &corpus).unwrap();
        assert_eq!(resumed.config().precision, Some(Precision::Element));
        resumed.save(&ckpt).unwrap();
        assert_eq!(saved_config(&ckpt)["precision"], "f32");
    }

    // A bf16 checkpoint resumed with the precision unset goes on in bf16; another precision is refused.
    let bf16 = TrainConfig {
        precision: Some(Precision::Bf16),
        ..tiny(3)
    };
    let mut t = Trainer::new(&cpu(), bf16, &corpus).unwrap();
    t.train_step(&corpus).unwrap();
    t.save(&ckpt).unwrap();
    let resumed = Trainer::resume(&cpu(), &ckpt, Some(tiny(3)), &corpus).unwrap();
    assert_eq!(resumed.config().precision, Some(Precision::Bf16));
    let f32_run = TrainConfig {
        precision: Some(Precision::Element),
        ..tiny(3)
    };
    expect_err(
        Trainer::resume(&cpu(), &ckpt, Some(f32_run), &corpus),
        &["precision: \"bf16\" -> \"f32\""],
    );
    std::fs::remove_dir_all(dir).ok();
}

// ---- 5, 6. sizes: checked before anything is allocated ---------------------------------------------------

#[test]
fn a_huge_setting_is_an_error_naming_it_not_an_abort() {
    let mut reference = HourGlassConfig::reference(2, 16, 0.0, 32, &[2]);
    reference.d_ff = 1 << 60;
    expect_err(
        HourGlass::from_config(&cpu(), &reference, 0),
        &["d_ff 1152921504606846976"],
    );
    let wide = HourGlassConfig::reference(1, 1_000_000, 0.0, 32, &[2]);
    expect_err(
        HourGlass::from_config(&cpu(), &wide, 0),
        &["d_model 1000000"],
    );
    let wide_dims = HourGlassConfig::reference(1, usize::MAX, 0.0, usize::MAX, &[usize::MAX]);
    expect_err(
        HourGlass::from_config(&cpu(), &wide_dims, 0),
        &["more than"],
    );

    let corpus = corpus_with_z_only_after_training();
    let mut big_batch = tiny(2);
    big_batch.batch = 1_000_000_000_000;
    expect_err(
        Trainer::new(&cpu(), big_batch, &corpus),
        &["training", "batch 1000000000000"],
    );
    let mut overflow = tiny(2);
    overflow.batch = usize::MAX / 2;
    expect_err(
        Trainer::new(&cpu(), overflow, &corpus),
        &["seq_len 16 x batch"],
    );
}

#[test]
fn shapes_beyond_the_address_space_are_errors() {
    expect_err(
        hourglass::Tensor::zeros(&cpu(), &[usize::MAX, 3]),
        &["more elements than can be addressed"],
    );
}

#[test]
fn sampling_an_endless_stream_allocates_nothing_up_front() {
    let lm_config = tiny(1).model;
    let mut lm = HourglassLM::new(&cpu(), &lm_config, 0).unwrap();
    let options = SampleOptions {
        length: usize::MAX,
        temperature: 0.8,
        top_k: 0,
        seed: 0,
        context: 16,
        num_samples: 1,
        recompute: false,
    };
    let mut emitted = 0;
    let err = generate(&mut lm, b"ab", &options, |_| {
        emitted += 1;
        if emitted == 5 {
            Err(Error::Training("the reader went away".into()))
        } else {
            Ok(())
        }
    })
    .unwrap_err();
    assert!(err.to_string().contains("went away"));
    assert_eq!(emitted, 5);
}

#[test]
fn the_parameter_count_from_a_config_is_exact() {
    use hourglass::config::{
        AttentionPooling, AttentionUpsampling, PerLevel, ShorteningKind, UpsamplingKind,
    };
    let base = HourGlassConfig::reference(2, 8, 0.0, 12, &[2, 3]);
    let configs = [
        base.clone(),
        HourGlassConfig {
            shortening: PerLevel::Each(vec![ShorteningKind::Linear, ShorteningKind::Attention]),
            upsampling: PerLevel::Each(vec![UpsamplingKind::Attention, UpsamplingKind::Linear]),
            attention_pooling: AttentionPooling::Linear,
            attention_upsampling: AttentionUpsampling::Linear,
            depth: Some(Depth::triple(2, Depth::triple(0, 3, 1), 1)),
            ..base.clone()
        },
        HourGlassConfig {
            shortening: ShorteningKind::Attention.into(),
            upsampling: UpsamplingKind::Attention.into(),
            ..HourGlassConfig::reference(4, 16, 0.1, 8, &[3])
        },
    ];
    for c in &configs {
        let model = HourGlass::from_config(&cpu(), c, 0).unwrap();
        assert_eq!(
            size::hourglass_params(c).unwrap(),
            model.param_count() as f64,
            "{c:?}"
        );
        for tied in [false, true] {
            let lm = HourglassLM::build(&cpu(), c, 0, tied).unwrap();
            assert_eq!(
                size::lm_params(c, tied).unwrap(),
                lm.param_count() as f64,
                "{c:?}, tied {tied}"
            );
        }
    }
}

#[test]
fn the_memory_estimate_grows_with_each_setting_and_a_lower_limit_refuses() {
    let c = tiny(1).model;
    let work = Workload {
        seq_len: 64,
        batch: 2,
        training: true,
        lm: true,
        tied: false,
        cached_positions: 0,
    };
    let base = size::estimate(&c, work, hourglass::DeviceKind::Cpu, 4).unwrap();
    for (bigger, what) in [
        (
            Workload {
                seq_len: 128,
                ..work
            },
            "seq_len",
        ),
        (Workload { batch: 4, ..work }, "batch"),
    ] {
        let e = size::estimate(&c, bigger, hourglass::DeviceKind::Cpu, 4).unwrap();
        assert!(e.total() > base.total(), "{what}");
    }
    // The CPU's attention matrices grow as the square of the length; the GPU's kernels keep none.
    let long = size::estimate(
        &c,
        Workload {
            seq_len: 60_000,
            ..work
        },
        hourglass::DeviceKind::Cpu,
        4,
    )
    .unwrap();
    assert!(long.attention >= 60_000f64 * 60_000.0 * 4.0, "{long:?}");
    let gpu = size::estimate(&c, work, hourglass::DeviceKind::Cuda(0), 4).unwrap();
    assert_eq!(gpu.attention, 0.0);
    // Inference keeps no optimiser state.
    let eval = size::estimate(
        &c,
        Workload {
            training: false,
            ..work
        },
        hourglass::DeviceKind::Cpu,
        4,
    )
    .unwrap();
    assert!(eval.params < base.params);
    // Decoding's caches, full: per position, each layer's q, k, v (pre and post at full length, the valley
    // at half) and the level's pre outputs and valley outputs.
    assert_eq!(base.caches, 0.0);
    let positions = 1001;
    let decoding = size::estimate(
        &c,
        Workload {
            cached_positions: positions,
            ..work
        },
        hourglass::DeviceKind::Cuda(0),
        4,
    )
    .unwrap();
    let (d, short) = (16.0, 501.0);
    let values = 2.0 * 1001.0 * 3.0 * d + (1001.0 + short) * d + short * 3.0 * d;
    assert_eq!(decoding.caches, values * 2.0 * 4.0);
    assert_eq!(decoding.total(), gpu.total() + decoding.caches);
}

// ---- 6, 8. forward: cheap checks first; a training checkpoint's hourglass -------------------------------

fn x_file(shape: &[usize]) -> TensorFile {
    let n: usize = shape.iter().product();
    let mut f = TensorFile::default();
    f.tensors.insert(
        "x".into(),
        HostTensor {
            shape: shape.to_vec(),
            data: (0..n).map(|i| ((i % 11) as f32 - 5.0) * 0.1).collect(),
        },
    );
    f
}

#[test]
fn forward_runs_a_training_checkpoint_s_hourglass_and_refuses_a_mistyped_config_before_building() {
    let dir = crate::common::scratch_dir("hard", "forward-ckpt");
    let ckpt = dir.join("checkpoint.safetensors");
    let corpus = corpus_with_z_only_after_training();
    let mut t = Trainer::new(&cpu(), tiny(1), &corpus).unwrap();
    t.run(&corpus, Some(&ckpt), &AtomicBool::new(false), &mut ())
        .unwrap();
    let file = TensorFile::read(&ckpt).unwrap();

    // No --config needed: the checkpoint holds its model's settings.
    let config = forward_config(None, &file, &ckpt).unwrap();
    assert_eq!(config, tiny(1).model);
    let y = forward_files(&cpu(), &config, &file, &x_file(&[5, 2, 16])).unwrap();
    // The same numbers as the hourglass exported on its own, as a plain weights file.
    let alone = export_params(&t.lm().hourglass, false).unwrap();
    let y_alone = forward_files(&cpu(), &config, &alone, &x_file(&[5, 2, 16])).unwrap();
    assert_eq!(y.get("y").unwrap(), y_alone.get("y").unwrap());

    // A plain weights file says nothing of its model.
    expect_err(
        forward_config(None, &alone, Path::new("w.safetensors")),
        &["w.safetensors", "--config"],
    );
    // d_model typed 1600 for 16: refused from the counts, before 100x the parameters are built.
    let typo = HourGlassConfig {
        d_model: 1600,
        ..config.clone()
    };
    expect_err(
        forward_files(&cpu(), &typo, &alone, &x_file(&[5, 2, 1600])),
        &["do not belong together", "d_model 1600"],
    );
    // The input's width is checked against the config first of all.
    expect_err(
        forward_files(&cpu(), &config, &alone, &x_file(&[5, 2, 8])),
        &["[5, 2, 8]", "d_model 16"],
    );
    std::fs::remove_dir_all(dir).ok();
}
