//! The training loop on a tiny corpus made here: loss falls, the same seed gives the same run, a resumed run
//! equals an uninterrupted one bit for bit, Ctrl-C (the stop flag) saves and stops, and every bad input
//! (empty data, seq_len longer than the data, a checkpoint from another config or other data, a NaN loss,
//! a weights file that is not a training checkpoint) is a clear error.

use crate::common::expect_err;
use hourglass::checkpoint::TensorFile;
use hourglass::config::Positions;
use hourglass::model::Parameters;
use hourglass::train::data::Corpus;
use hourglass::train::history::StepLog;
use hourglass::train::trainer::Observer;
use hourglass::train::{Outcome, Preset, StepMode, TrainConfig, Trainer};
use hourglass::{Cpu, Error, HourGlassConfig};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

fn cpu() -> Cpu {
    Cpu::new()
}

fn corpus() -> Corpus {
    let text =
        "the quick brown fox jumps over the lazy dog; pack my box with five dozen liquor jugs. "
            .repeat(40);
    Corpus::from_bytes(text.into_bytes()).unwrap()
}

fn tiny(steps: u64) -> TrainConfig {
    let mut model = HourGlassConfig::reference(2, 16, 0.1, 32, &[2]);
    model.positions = Positions::Rotary;
    TrainConfig {
        model,
        tie_embedding: false,
        seq_len: 16,
        batch: 4,
        accum: 2,
        steps,
        lr: 3e-3,
        min_lr: 3e-4,
        warmup_steps: 2,
        seed: 5,
        eval_every: 2,
        eval_batches: 2,
        save_every: 3,
        ..Preset::Cpu.config()
    }
}

fn params(trainer: &mut Trainer<Cpu>) -> Vec<f32> {
    let mut out = Vec::new();
    trainer
        .lm()
        .visit("", &mut |_, p| out.extend(p.value.to_vec().unwrap()));
    out
}

fn losses(trainer: &Trainer<Cpu>) -> Vec<f64> {
    trainer.history().steps.iter().map(|s| s.bits).collect()
}

fn run(trainer: &mut Trainer<Cpu>, ckpt: Option<&Path>) -> Outcome {
    trainer
        .run(&corpus(), ckpt, &AtomicBool::new(false), &mut ())
        .unwrap()
}

#[test]
fn loss_falls_and_validation_is_logged() {
    let mut config = tiny(40);
    config.eval_every = 10;
    let mut t = Trainer::new(&cpu(), config, &corpus()).unwrap();
    assert_eq!(run(&mut t, None), Outcome::Finished);
    let l = losses(&t);
    assert_eq!(l.len(), 40);
    let first = l[..4].iter().sum::<f64>() / 4.0;
    let last = l[36..].iter().sum::<f64>() / 4.0;
    assert!(last < 0.7 * first, "loss fell only from {first} to {last}");
    let steps: Vec<u64> = t.history().valid.iter().map(|v| v.0).collect();
    assert_eq!(steps, [10, 20, 30, 40]);
    let valid = &t.history().valid;
    assert!(
        valid[3].1 < valid[0].1,
        "validation did not improve: {valid:?}"
    );
}

#[test]
fn the_same_seed_gives_the_same_run_and_another_seed_does_not() {
    let go = |seed| {
        let mut c = tiny(4);
        c.seed = seed;
        let mut t = Trainer::new(&cpu(), c, &corpus()).unwrap();
        run(&mut t, None);
        losses(&t)
    };
    assert_eq!(go(1), go(1));
    assert_ne!(go(1), go(2));
}

/// A trainer for `config` whose steps are issued in `mode`.
fn trainer_in(mode: StepMode, config: TrainConfig) -> Trainer<Cpu> {
    let mut t = Trainer::new(&cpu(), config, &corpus()).unwrap();
    t.set_step_mode(mode).unwrap();
    t
}

fn resumed_in(mode: StepMode, ckpt: &Path, config: Option<TrainConfig>) -> Trainer<Cpu> {
    let mut t = Trainer::resume(&cpu(), ckpt, config, &corpus()).unwrap();
    t.set_step_mode(mode).unwrap();
    t
}

#[test]
fn resume_equals_an_uninterrupted_run() {
    resume_case(StepMode::Host);
}

#[test]
fn device_steps_resume_exactly_too() {
    resume_case(StepMode::Device);
}

fn resume_case(mode: StepMode) {
    let dir = crate::common::scratch_dir("train-loop", &format!("resume-{mode:?}"));
    let ckpt = dir.join("ckpt.safetensors");
    // Uninterrupted: 7 steps.
    let mut whole = trainer_in(mode, tiny(7));
    run(&mut whole, None);

    // Interrupted after step 3 by the stop flag (what Ctrl-C raises), then resumed in a fresh trainer.
    struct Raise<'a>(u64, &'a AtomicBool);
    impl Observer for Raise<'_> {
        fn step(&mut self, log: &StepLog) {
            if log.step == self.0 {
                self.1.store(true, Ordering::SeqCst);
            }
        }
    }
    let mut first = trainer_in(mode, tiny(7));
    let stop = AtomicBool::new(false);
    let outcome = first
        .run(&corpus(), Some(&ckpt), &stop, &mut Raise(3, &stop))
        .unwrap();
    assert_eq!(outcome, Outcome::Stopped { step: 3 });
    assert_eq!(first.step_count(), 3);

    let mut resumed = resumed_in(mode, &ckpt, None);
    assert_eq!(resumed.step_count(), 3);
    // Evaluation in between (it runs forward passes) must not change what follows.
    resumed
        .evaluate(
            &corpus(),
            hourglass::train::data::Split::Valid,
            1,
            &mut |_, _| {},
        )
        .unwrap();
    assert_eq!(run(&mut resumed, Some(&ckpt)), Outcome::Finished);

    assert_eq!(
        losses(&resumed),
        losses(&whole),
        "losses differ after resume"
    );
    assert_eq!(resumed.history().valid, whole.history().valid);
    assert_eq!(
        params(&mut resumed),
        params(&mut whole),
        "parameters differ"
    );
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn device_steps_match_the_host_path_and_report_one_step_late() {
    let mut host = trainer_in(StepMode::Host, tiny(6));
    run(&mut host, None);
    let mut device = trainer_in(StepMode::Device, tiny(6));
    let steps = |logs: Vec<StepLog>| logs.iter().map(|l| l.step).collect::<Vec<_>>();
    assert_eq!(
        steps(device.queue_step(&corpus()).unwrap()),
        Vec::<u64>::new()
    );
    assert_eq!(steps(device.queue_step(&corpus()).unwrap()), [1]);
    assert!(
        device
            .save(&crate::common::scratch_dir("train-loop", "queued").join("x"))
            .is_err(),
        "saving with a step in flight"
    );
    assert_eq!(steps(device.finish_steps().unwrap()), [2]);
    run(&mut device, None);
    close_runs(&mut host, &mut device, 1e-5);
    // In bf16 too (the optimiser rewrites each weight's bf16 copy from the device-side state as well); an f32
    // difference in the clipping factor can move a bf16 operand by one unit, hence the wider bound.
    let bf16 = TrainConfig {
        precision: Some(hourglass::model::Precision::Bf16),
        ..tiny(6)
    };
    let (mut host, mut device) = (
        trainer_in(StepMode::Host, bf16.clone()),
        trainer_in(StepMode::Device, bf16),
    );
    run(&mut host, None);
    run(&mut device, None);
    close_runs(&mut host, &mut device, 1e-3);
}

/// Two runs of the same steps: the same steps and learning rates, losses and norms within f32 rounding, and
/// parameters within `bound` (relative, as a whole).
fn close_runs(host: &mut Trainer<Cpu>, device: &mut Trainer<Cpu>, bound: f64) {
    let (h, d) = (host.history().clone(), device.history().clone());
    assert_eq!(d.steps.len(), h.steps.len());
    for (a, b) in h.steps.iter().zip(&d.steps) {
        assert_eq!((a.step, a.lr), (b.step, b.lr));
        // The device keeps the mean loss, the clipping factor and the norm's square in f32.
        assert!((a.bits - b.bits).abs() < 1e-6 * a.bits, "{a:?} vs {b:?}");
        let norm = (a.grad_norm - b.grad_norm).abs() / a.grad_norm;
        assert!(norm < 1e-6, "{a:?} vs {b:?}");
    }
    let (p_host, p_device) = (params(host), params(device));
    let num: f64 = p_host
        .iter()
        .zip(&p_device)
        .map(|(a, b)| ((a - b) as f64).powi(2))
        .sum();
    let den: f64 = p_host.iter().map(|a| (*a as f64).powi(2)).sum();
    let e = (num / den).sqrt();
    assert!(e < bound, "parameters differ by {e:e}");
}

#[test]
fn graph_steps_need_a_backend_that_captures() {
    let mut t = Trainer::new(&cpu(), tiny(2), &corpus()).unwrap();
    let err = t.set_step_mode(StepMode::Graph).unwrap_err().to_string();
    assert!(err.contains("CUDA"), "{err}");
}

#[test]
fn empty_or_missing_data_is_an_error() {
    expect_err(Corpus::from_bytes(Vec::new()), &["empty"]);
    let missing = crate::common::scratch_dir("train-loop", "missing").join("no-such-file.txt");
    expect_err(
        Corpus::load(&missing),
        &["no-such-file.txt", "fetch-corpus"],
    );
}

#[test]
fn a_sequence_longer_than_the_data_is_an_error() {
    let mut config = tiny(2);
    config.seq_len = 10_000;
    expect_err(
        Trainer::new(&cpu(), config, &corpus()),
        &["seq_len 10000", "bytes"],
    );
}

#[test]
fn a_bad_setting_is_an_error_naming_it() {
    for (patch, words) in [
        (r#"{"batch": 0}"#, vec!["batch"]),
        (r#"{"beta2": 1.5}"#, vec!["beta2", "1.5"]),
        (r#"{"clip": -1}"#, vec!["clip"]),
        (r#"{"warmup_steps": 9, "steps": 3}"#, vec!["warmup_steps"]),
        (r#"{"model": {"d_model": 15}}"#, vec!["15"]),
        (r#"{"learning_rate": 1}"#, vec!["learning_rate"]),
    ] {
        let patch: serde_json::Value = serde_json::from_str(patch).unwrap();
        let result = tiny(3)
            .overlay(&patch)
            .and_then(|c| c.validate().map(|_| c));
        expect_err(result, &words);
    }
}

#[test]
fn config_files_and_presets_round_trip() {
    for preset in [Preset::Cpu, Preset::Gpu, Preset::Enwik8] {
        let c = preset.config();
        c.validate().unwrap();
        assert_eq!(TrainConfig::from_json(&c.to_json()).unwrap(), c);
    }
    let paper = Preset::Enwik8.config();
    assert_eq!(
        (paper.model.d_model, paper.model.n_heads, paper.model.d_ff),
        (512, 8, 2048)
    );
    assert_eq!(paper.model.shortening_factors, [3]);
    assert_eq!(
        serde_json::to_string(&paper.model.depth).unwrap(),
        "[5,24,5]"
    );
    assert_eq!((paper.seq_len, paper.batch), (2048, 8));
    assert_eq!((paper.beta1, paper.beta2, paper.lr), (0.9, 0.98, 4.1e-4));
    assert_eq!((paper.warmup_steps, paper.model.dropout), (4000, 0.2));

    let patch = serde_json::json!({"lr": 1e-3, "model": {"d_model": 32}});
    let c = tiny(3).overlay(&patch).unwrap();
    assert_eq!((c.lr, c.model.d_model, c.model.n_heads), (1e-3, 32, 2));
}

#[test]
fn a_checkpoint_from_another_config_or_other_data_is_refused() {
    let dir = crate::common::scratch_dir("train-loop", "other-config");
    let ckpt = dir.join("ckpt.safetensors");
    let mut t = Trainer::new(&cpu(), tiny(2), &corpus()).unwrap();
    run(&mut t, Some(&ckpt));

    let mut other = tiny(2);
    other.model.d_model = 32;
    other.lr = 1e-2;
    let msg = expect_err(
        Trainer::resume(&cpu(), &ckpt, Some(other), &corpus()),
        &[
            "another configuration",
            "model.d_model: 16 -> 32",
            "lr: 0.003 -> 0.01",
        ],
    );
    assert!(msg.contains(&ckpt.display().to_string()), "{msg}");

    // Run length and bookkeeping may change.
    let mut longer = tiny(4);
    longer.eval_every = 1;
    let mut t = Trainer::resume(&cpu(), &ckpt, Some(longer), &corpus()).unwrap();
    assert_eq!(t.step_count(), 2);
    run(&mut t, None);
    assert_eq!(t.step_count(), 4);

    // The same bytes from a file resume fine; other bytes do not.
    let same = dir.join("same.txt");
    std::fs::write(&same, corpus().bytes()).unwrap();
    Trainer::resume(&cpu(), &ckpt, None, &Corpus::load(&same).unwrap()).unwrap();
    let other_data = Corpus::from_bytes(b"something else entirely, ".repeat(60)).unwrap();
    expect_err(
        Trainer::resume(&cpu(), &ckpt, None, &other_data),
        &["trained on", "--data"],
    );

    // A weights file without training metadata, and a truncated checkpoint.
    let weights = dir.join("weights.safetensors");
    hourglass::checkpoint::export_params(t.lm(), false)
        .unwrap()
        .write(&weights)
        .unwrap();
    expect_err(
        Trainer::resume(&cpu(), &weights, None, &corpus()),
        &["not a training checkpoint"],
    );
    let bytes = std::fs::read(&ckpt).unwrap();
    let cut = dir.join("cut.safetensors");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    expect_err(
        Trainer::resume(&cpu(), &cut, None, &corpus()),
        &["truncated"],
    );
    // A NaN in a saved moment.
    let mut file = TensorFile::read(&ckpt).unwrap();
    let name = file
        .tensors
        .keys()
        .find(|n| n.starts_with("optimizer.exp_avg_sq."))
        .unwrap()
        .clone();
    file.tensors.get_mut(&name).unwrap().data[0] = f32::NAN;
    let nan = dir.join("nan.safetensors");
    file.write(&nan).unwrap();
    expect_err(
        Trainer::resume(&cpu(), &nan, None, &corpus()),
        &[&name, "NaN"],
    );
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn a_nan_loss_stops_naming_the_step_and_keeps_the_last_checkpoint() {
    nan_case(StepMode::Host);
}

#[test]
fn a_nan_loss_stops_device_steps_the_same_way() {
    nan_case(StepMode::Device);
}

fn nan_case(mode: StepMode) {
    let dir = crate::common::scratch_dir("train-loop", &format!("nan-{mode:?}"));
    let ckpt = dir.join("ckpt.safetensors");
    let mut t = trainer_in(mode, tiny(3));
    run(&mut t, Some(&ckpt));
    let saved = std::fs::read(&ckpt).unwrap();
    let before = params(&mut t);

    // Poison one parameter: the next step's loss is NaN.
    let mut t = resumed_in(mode, &ckpt, Some(tiny(6)));
    crate::common::poison(t.lm(), "head.bias");
    let err = t
        .run(&corpus(), Some(&ckpt), &AtomicBool::new(false), &mut ())
        .unwrap_err();
    assert!(matches!(err, Error::Training(_)), "{err}");
    let msg = err.to_string();
    assert!(msg.contains("NaN") && msg.contains("step 4"), "{msg}");
    assert_eq!(
        t.step_count(),
        3,
        "the failed step must not update anything"
    );
    let mut after = params(&mut t);
    let poisoned = after.iter().position(|v| v.is_nan()).unwrap();
    after[poisoned] = before[poisoned];
    assert_eq!(after, before, "a parameter changed in the failed step");
    assert_eq!(
        std::fs::read(&ckpt).unwrap(),
        saved,
        "the checkpoint changed"
    );
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn a_run_too_big_for_memory_says_what_the_estimate_budgeted() {
    let config = TrainConfig {
        batch: 1_000_000_000_000,
        ..tiny(2)
    };
    expect_err(
        Trainer::new(&cpu(), config, &corpus()),
        &[
            "activations",
            "one training step at a time, in any step mode",
        ],
    );
}

#[test]
fn steps_go_on_after_a_nan_stop() {
    for mode in [StepMode::Host, StepMode::Device] {
        let mut whole = trainer_in(mode, tiny(5));
        run(&mut whole, None);
        let mut t = trainer_in(mode, tiny(5));
        crate::common::stop_on_a_nan_and_go_on(&mut t, &corpus());
        // The NaN step and the one queued behind it changed nothing; the retried step was applied and reported;
        // `run` validated step 2 first (taken by `train_step`, its validation was due).
        assert_eq!(losses(&t), losses(&whole), "{mode:?}");
        assert_eq!(t.history().steps, whole.history().steps, "{mode:?}");
        assert_eq!(t.history().valid, whole.history().valid, "{mode:?}");
        assert_eq!(params(&mut t), params(&mut whole), "{mode:?}");
    }
}

#[test]
fn the_checkpoint_is_replaced_atomically() {
    let dir = crate::common::scratch_dir("train-loop", "atomic");
    let ckpt = dir.join("ckpt.safetensors");
    let mut t = Trainer::new(&cpu(), tiny(3), &corpus()).unwrap();
    run(&mut t, Some(&ckpt));
    // Only the checkpoint is left: no temporary files.
    let names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["ckpt.safetensors"]);
    // It loads as a plain weights file too (the optimiser state is skipped).
    let file = TensorFile::read(&ckpt).unwrap();
    let mut lm = hourglass::model::lm::HourglassLM::new(&cpu(), &tiny(3).model, 99).unwrap();
    hourglass::checkpoint::import_params(&mut lm, &file).unwrap();
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn a_tied_head_trains_and_its_checkpoint_has_no_head_weight() {
    let dir = crate::common::scratch_dir("train-loop", "tied");
    let ckpt = dir.join("ckpt.safetensors");
    let mut config = tiny(30);
    config.tie_embedding = true;
    config.eval_every = 30;
    let mut t = Trainer::new(&cpu(), config.clone(), &corpus()).unwrap();
    run(&mut t, Some(&ckpt));
    let l = losses(&t);
    assert!(
        l[27..].iter().sum::<f64>() < 0.8 * l[..3].iter().sum::<f64>(),
        "{l:?}"
    );
    let file = TensorFile::read(&ckpt).unwrap();
    assert!(file.tensors.contains_key("head.bias"));
    assert!(!file.tensors.contains_key("head.weight"));
    // Resuming it as untied is another configuration.
    config.tie_embedding = false;
    expect_err(
        Trainer::resume(&cpu(), &ckpt, Some(config), &corpus()),
        &["tie_embedding: true -> false"],
    );
    std::fs::remove_dir_all(dir).ok();
}
