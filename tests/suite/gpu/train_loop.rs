//! The training loop and sampling on the GPU against the CPU: the same config and data give the same losses
//! (to f32 rounding, step by step; in bf16 against the bf16 CPU reference within bounds calibrated here on
//! the CPU), two GPU runs give identical bits, a resumed GPU run equals an uninterrupted one, and the
//! sampler's logits match. Steps without host round trips (`StepMode::Device`) agree with the host path to
//! f32 rounding, and replayed as a CUDA graph (`StepMode::Graph`) equal them bit for bit, one launch a step;
//! a graph run stops on a NaN as the host path does, resumes exactly, and goes on after the NaN's cause is
//! gone. Graph steps of two trainers on one device interleave as each alone; a staged copy is refused inside
//! a capture; a graph run holds one step's activations, not the uncaptured first step's besides.
//!
//! The GPU tests are ignored without a GPU: `cargo test --test suite -- gpu::train_loop:: --include-ignored` (prints
//! "skipped" without a device; fails with `HOURGLASS_REQUIRE_GPU=1`).

use crate::common::{rel_err, BF16_LOSS_BOUND, BF16_PARAMS_BOUND};
use hourglass::config::Positions;
use hourglass::device::cuda::device_or_skip;
use hourglass::model::{Parameters, Precision};
use hourglass::train::data::Corpus;
use hourglass::train::history::StepLog;
use hourglass::train::sample::next_logits;
use hourglass::train::trainer::Observer;
use hourglass::train::{Outcome, Preset, StepMode, TrainConfig, Trainer};
use hourglass::{Backend, BackendCore, Cpu, Cuda, HourGlassConfig, Tensor, Tokens};
use std::sync::atomic::{AtomicBool, Ordering};

fn corpus() -> Corpus {
    let text = "<page><title>Sand</title><text>An hourglass measures time with falling sand.</text></page>\n"
        .repeat(60);
    Corpus::from_bytes(text.into_bytes()).unwrap()
}

/// Ragged on purpose: seq_len 21 is not a multiple of the factors [2, 3].
fn config(steps: u64) -> TrainConfig {
    let mut model = HourGlassConfig::reference(4, 64, 0.1, 128, &[2, 3]);
    model.positions = Positions::Rotary;
    TrainConfig {
        model,
        tie_embedding: true,
        seq_len: 21,
        batch: 3,
        accum: 2,
        steps,
        lr: 2e-3,
        min_lr: 2e-4,
        warmup_steps: 2,
        seed: 3,
        eval_every: 3,
        eval_batches: 2,
        save_every: 0,
        // Unset, CUDA would train in bf16 (`a_library_run_on_cuda_trains_as_the_cli_does`).
        precision: Some(Precision::Element),
        ..Preset::Cpu.config()
    }
}

fn train<B: Backend>(backend: &B, steps: u64) -> (Vec<f64>, Vec<f64>) {
    train_in(backend, steps, Precision::Element)
}

fn train_in<B: Backend>(backend: &B, steps: u64, precision: Precision) -> (Vec<f64>, Vec<f64>) {
    let config = TrainConfig {
        precision: Some(precision),
        ..config(steps)
    };
    let run = run_in(backend, config, StepMode::Host);
    (run.losses, run.params)
}

/// What a run leaves: each step's loss (bits) and gradient norm, the validations, the final parameters.
#[derive(Debug, PartialEq)]
struct Run {
    losses: Vec<f64>,
    norms: Vec<f64>,
    valid: Vec<(u64, f64)>,
    params: Vec<f64>,
}

fn run_in<B: Backend>(backend: &B, config: TrainConfig, mode: StepMode) -> Run {
    let mut t = Trainer::new(backend, config, &corpus()).unwrap();
    t.set_step_mode(mode).unwrap();
    let outcome = t
        .run(&corpus(), None, &AtomicBool::new(false), &mut ())
        .unwrap();
    assert_eq!(outcome, Outcome::Finished);
    finished(&mut t)
}

fn finished<B: Backend>(t: &mut Trainer<B>) -> Run {
    let mut params = Vec::new();
    t.lm()
        .visit("", &mut |_, p| params.extend(p.value.to_f64_vec().unwrap()));
    let h = t.history();
    Run {
        losses: h.steps.iter().map(|s| s.bits).collect(),
        norms: h.steps.iter().map(|s| s.grad_norm).collect(),
        valid: h.valid.clone(),
        params,
    }
}

/// A config near the enwik8 preset's shapes (heads of 64: the tuned attention kernels; dropout everywhere),
/// small enough for a test; on the emulated device (docs/emulator.md) the same heads of 64 in a narrower,
/// shorter model (2 heads, d_ff 256, seq_len 64, batch 2), which the full one on a real GPU covers.
fn wide(cuda: &Cuda, steps: u64) -> TrainConfig {
    let (heads, d_ff, seq_len, batch) = match cuda.is_emulated() {
        true => (2, 256, 64, 2),
        false => (4, 1024, 128, 4),
    };
    if cuda.is_emulated() {
        println!("emulated device: the wide config at {heads} heads, d_ff {d_ff}, seq_len {seq_len}, batch {batch}");
    }
    let mut model = HourGlassConfig::reference(heads, 64 * heads, 0.2, d_ff, &[3]);
    model.positions = Positions::Rotary;
    TrainConfig {
        model,
        seq_len,
        batch,
        eval_every: 2,
        ..config(steps)
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn gpu_training_matches_the_cpu_and_repeats_exactly() {
    let Some(cuda) = device_or_skip("gpu training loop").unwrap() else {
        return;
    };
    let (cpu_losses, cpu_params) = train(&Cpu::<f32>::new(), 6);
    let (gpu_losses, gpu_params) = train(&cuda, 6);
    for (step, (g, c)) in gpu_losses.iter().zip(&cpu_losses).enumerate() {
        assert!(
            ((g - c) / c).abs() < 1e-4,
            "step {}: gpu {g} vs cpu {c}",
            step + 1
        );
    }
    let e = rel_err(&gpu_params, &cpu_params);
    assert!(e < 1e-4, "parameters after 6 steps: relative error {e:e}");
    let (again_losses, again_params) = train(&cuda, 6);
    assert_eq!(again_losses, gpu_losses, "a second GPU run differs");
    assert_eq!(again_params, gpu_params, "a second GPU run differs");
}

/// Relative error of each step's loss (the largest), and of the final parameters.
fn training_errors(a: &(Vec<f64>, Vec<f64>), b: &(Vec<f64>, Vec<f64>)) -> (f64, f64) {
    let loss =
        a.0.iter()
            .zip(&b.0)
            .map(|(x, y)| ((x - y) / y).abs())
            .fold(0.0, f64::max);
    (loss, rel_err(&a.1, &b.1))
}

#[test]
fn bf16_training_bounds_are_a_fifth_of_the_cpu_noise_floor() {
    let f32_run = train_in(&Cpu::<f32>::new(), 6, Precision::Element);
    let bf16_run = train_in(&Cpu::<f32>::new(), 6, Precision::Bf16);
    let (loss, params) = training_errors(&bf16_run, &f32_run);
    println!("f32 vs bf16 on the CPU: losses {loss:.2e}, parameters {params:.2e}");
    assert!(loss >= 5.0 * BF16_LOSS_BOUND, "loss floor {loss:e}");
    assert!(
        params >= 5.0 * BF16_PARAMS_BOUND,
        "parameter floor {params:e}"
    );
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn gpu_bf16_training_matches_the_bf16_cpu_reference() {
    let Some(cuda) = device_or_skip("gpu bf16 training loop").unwrap() else {
        return;
    };
    // Two steps, held to half the f32-vs-bf16 distance of the same two steps, not to BF16_LOSS_BOUND: bf16
    // training is chaotic. A weight whose f32 value differs in the last bit (the GPU sums in another order) can
    // round to the other bf16 neighbour, a 2^-8 change that later steps amplify. On the emulated device
    // (2026-12-06) one step left every parameter of the CLI's tiny model within 2.2e-6 of the CPU's, two steps of
    // this one ended 3.5e-5 (losses) and 1.1e-3 (parameters) apart, and six steps 2.3e-4 and 2.1e-3: the
    // f32-vs-bf16 floor itself. The parameters get the floor itself as their bound: a gradient that is zero in
    // exact arithmetic (the key biases') holds rounding noise on both sides, and AdamW's first steps turn the
    // noise into whole ±lr updates whose signs differ. A misplaced rounding or a wrong update lands above both.
    let steps = 2;
    let cpu = train_in(&Cpu::<f32>::new(), steps, Precision::Bf16);
    let cpu_f32 = train_in(&Cpu::<f32>::new(), steps, Precision::Element);
    let gpu = train_in(&cuda, steps, Precision::Bf16);
    let (loss, params) = training_errors(&gpu, &cpu);
    let (loss_floor, params_floor) = training_errors(&cpu_f32, &cpu);
    println!(
        "{steps} steps, gpu vs cpu in bf16: losses {loss:.2e}, parameters {params:.2e}; \
         f32 vs bf16 on the cpu: {loss_floor:.2e}, {params_floor:.2e}"
    );
    assert!(loss < loss_floor / 2.0, "losses differ by {loss:e}");
    assert!(params < params_floor, "parameters differ by {params:e}");
    assert_eq!(
        train_in(&cuda, steps, Precision::Bf16),
        gpu,
        "a second GPU run differs"
    );
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn gpu_resume_equals_an_uninterrupted_run() {
    let Some(cuda) = device_or_skip("gpu resume").unwrap() else {
        return;
    };
    let dir = std::env::temp_dir().join(format!("hourglass-gpu-resume-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ckpt = dir.join("ckpt.safetensors");
    let (whole, _) = train(&cuda, 5);

    struct Raise<'a>(&'a AtomicBool);
    impl Observer for Raise<'_> {
        fn step(&mut self, log: &StepLog) {
            if log.step == 2 {
                self.0.store(true, Ordering::SeqCst);
            }
        }
    }
    let stop = AtomicBool::new(false);
    let mut first = Trainer::new(&cuda, config(5), &corpus()).unwrap();
    first.set_step_mode(StepMode::Host).unwrap();
    let outcome = first
        .run(&corpus(), Some(&ckpt), &stop, &mut Raise(&stop))
        .unwrap();
    assert_eq!(outcome, Outcome::Stopped { step: 2 });
    let mut resumed = Trainer::resume(&cuda, &ckpt, None, &corpus()).unwrap();
    resumed.set_step_mode(StepMode::Host).unwrap();
    resumed
        .run(&corpus(), Some(&ckpt), &AtomicBool::new(false), &mut ())
        .unwrap();
    let losses: Vec<f64> = resumed.history().steps.iter().map(|s| s.bits).collect();
    assert_eq!(losses, whole);
    std::fs::remove_dir_all(dir).ok();
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn a_library_run_on_cuda_trains_as_the_cli_does() {
    let Some(cuda) = device_or_skip("a library run's settings on cuda").unwrap() else {
        return;
    };
    let dir = std::env::temp_dir().join(format!("hourglass-gpu-defaults-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ckpt = dir.join("ckpt.safetensors");
    // No precision set, no step mode chosen: bf16, one CUDA graph a step, as `hourglass train --device cuda`.
    let gpu = Preset::Gpu.config().resolve(&cuda);
    assert_eq!(
        (gpu.precision(), gpu.step_mode()),
        (Precision::Bf16, StepMode::Graph)
    );
    let unset = TrainConfig {
        precision: None,
        ..config(2)
    };
    let mut t = Trainer::new(&cuda, unset, &corpus()).unwrap();
    assert_eq!(
        (t.config().precision, t.step_mode()),
        (Some(Precision::Bf16), StepMode::Graph)
    );
    t.run(&corpus(), Some(&ckpt), &AtomicBool::new(false), &mut ())
        .unwrap();
    let bf16 = TrainConfig {
        precision: Some(Precision::Bf16),
        ..config(2)
    };
    assert_eq!(finished(&mut t), run_in(&cuda, bf16, StepMode::Graph));
    // The checkpoint records bf16, and a resumed run goes on in it, one graph a step.
    let resumed = Trainer::resume(&cuda, &ckpt, None, &corpus()).unwrap();
    assert_eq!(
        (resumed.config().precision, resumed.step_mode()),
        (Some(Precision::Bf16), StepMode::Graph)
    );
    std::fs::remove_dir_all(dir).ok();
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn gpu_sampling_logits_match_the_cpu() {
    let Some(cuda) = device_or_skip("gpu sampling").unwrap() else {
        return;
    };
    let c = config(1);
    let mut cpu_lm =
        hourglass::model::lm::HourglassLM::build(&Cpu::<f32>::new(), &c.model, 9, true).unwrap();
    let mut gpu_lm = hourglass::model::lm::HourglassLM::build(&cuda, &c.model, 9, true).unwrap();
    let context = b"An hourglass measures";
    for t in [1, 5, 6, 13, context.len()] {
        let a = next_logits(&mut gpu_lm, &context[..t]).unwrap();
        let b = next_logits(&mut cpu_lm, &context[..t]).unwrap();
        let e = rel_err(&a, &b);
        assert!(e < 1e-5, "prefix {t}: relative error {e:e}");
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn a_graph_replays_the_device_step_bit_for_bit() {
    let Some(cuda) = device_or_skip("graph replay").unwrap() else {
        return;
    };
    for precision in [Precision::Element, Precision::Bf16] {
        for (name, config) in [("small", config(6)), ("wide", wide(&cuda, 5))] {
            let config = TrainConfig {
                precision: Some(precision),
                ..config
            };
            let device = run_in(&cuda, config.clone(), StepMode::Device);
            let graph = run_in(&cuda, config.clone(), StepMode::Graph);
            assert_eq!(graph, device, "{name} in {precision}: graph vs uncaptured");
            let host = run_in(&cuda, config, StepMode::Host);
            let loss = host
                .losses
                .iter()
                .zip(&device.losses)
                .map(|(h, d)| ((h - d) / h).abs())
                .fold(0.0, f64::max);
            let params = rel_err(&device.params, &host.params);
            println!(
                "{name} in {precision}: device vs host: losses {loss:.2e}, parameters {params:.2e}"
            );
            assert!(
                loss < 1e-5,
                "{name} in {precision}: losses differ by {loss:e}"
            );
            assert!(
                params < 1e-4,
                "{name} in {precision}: parameters differ by {params:e}"
            );
        }
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn a_replayed_step_is_one_launch() {
    let Some(cuda) = device_or_skip("graph launches").unwrap() else {
        return;
    };
    let config = TrainConfig {
        precision: Some(Precision::Bf16),
        ..wide(&cuda, 6)
    };
    let per_step = |mode| {
        let mut t = Trainer::new(&cuda, config.clone(), &corpus()).unwrap();
        t.set_step_mode(mode).unwrap();
        for _ in 0..3 {
            t.queue_step(&corpus()).unwrap();
        }
        let before = cuda.launches();
        t.queue_step(&corpus()).unwrap();
        let launches = cuda.launches() - before;
        t.finish_steps().unwrap();
        launches
    };
    let (device, graph) = (per_step(StepMode::Device), per_step(StepMode::Graph));
    println!("launches a step: {device} issued by the host, {graph} replayed");
    assert_eq!(graph, 1);
    assert!(device > 100, "{device} launches a step uncaptured");
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn a_graph_run_stops_on_a_nan_and_resumes_exactly() {
    let Some(cuda) = device_or_skip("graph nan and resume").unwrap() else {
        return;
    };
    let dir = std::env::temp_dir().join(format!("hourglass-gpu-graph-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ckpt = dir.join("ckpt.safetensors");
    let config = TrainConfig {
        precision: Some(Precision::Bf16),
        save_every: 3,
        ..config(6)
    };
    let whole = run_in(&cuda, config.clone(), StepMode::Graph);

    // Stopped after step 3 (a checkpoint), resumed in a fresh trainer: the same run.
    struct Raise<'a>(&'a AtomicBool);
    impl Observer for Raise<'_> {
        fn step(&mut self, log: &StepLog) {
            if log.step == 3 {
                self.0.store(true, Ordering::SeqCst);
            }
        }
    }
    let stop = AtomicBool::new(false);
    let mut first = Trainer::new(&cuda, config.clone(), &corpus()).unwrap();
    first.set_step_mode(StepMode::Graph).unwrap();
    let outcome = first
        .run(&corpus(), Some(&ckpt), &stop, &mut Raise(&stop))
        .unwrap();
    assert_eq!(outcome, Outcome::Stopped { step: 3 });
    let saved = std::fs::read(&ckpt).unwrap();
    let mut resumed = Trainer::resume(&cuda, &ckpt, None, &corpus()).unwrap();
    resumed.set_step_mode(StepMode::Graph).unwrap();
    resumed
        .run(&corpus(), Some(&ckpt), &AtomicBool::new(false), &mut ())
        .unwrap();
    assert_eq!(finished(&mut resumed), whole, "a resumed graph run differs");

    // Poisoned after the capture: the graph is captured again around the new buffer, and the NaN stops the
    // run at step 5, which changes nothing.
    std::fs::write(&ckpt, &saved).unwrap();
    let mut t = Trainer::resume(&cuda, &ckpt, None, &corpus()).unwrap();
    t.set_step_mode(StepMode::Graph).unwrap();
    t.train_step(&corpus()).unwrap();
    let before = finished(&mut t).params;
    crate::common::poison(t.lm(), "head.bias");
    let err = t
        .run(&corpus(), Some(&ckpt), &AtomicBool::new(false), &mut ())
        .unwrap_err()
        .to_string();
    assert!(err.contains("NaN") && err.contains("step 5"), "{err}");
    assert_eq!(t.step_count(), 4);
    let after = finished(&mut t).params;
    let changed = before
        .iter()
        .zip(&after)
        .filter(|(b, a)| b != a && !a.is_nan())
        .count();
    assert_eq!(changed, 0, "the failed step changed {changed} parameters");
    assert_eq!(
        std::fs::read(&ckpt).unwrap(),
        saved,
        "the checkpoint changed"
    );
    std::fs::remove_dir_all(dir).ok();
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn a_graph_run_goes_on_after_a_nan_stop() {
    let Some(cuda) = device_or_skip("graph run after a nan").unwrap() else {
        return;
    };
    let whole = run_in(&cuda, config(5), StepMode::Graph);
    let mut t = Trainer::new(&cuda, config(5), &corpus()).unwrap();
    t.set_step_mode(StepMode::Graph).unwrap();
    crate::common::stop_on_a_nan_and_go_on(&mut t, &corpus());
    // The NaN step and the one queued behind it changed nothing; the retried step was applied and reported.
    assert_eq!(finished(&mut t), whole);
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn graph_steps_of_two_trainers_interleave_as_each_alone() {
    let Some(cuda) = device_or_skip("two graph trainers").unwrap() else {
        return;
    };
    // Another model and more micro-batches (more dropout seeds staged) for the second.
    let mut other = config(4);
    other.model.d_ff = 64;
    other.accum = 3;
    let configs = [config(4), other];
    let mut trainers: Vec<Trainer<Cuda>> = configs
        .iter()
        .map(|c| {
            let mut t = Trainer::new(&cuda, c.clone(), &corpus()).unwrap();
            t.set_step_mode(StepMode::Graph).unwrap();
            t
        })
        .collect();
    // A host-path reduction over other tensors between the steps.
    let bystander =
        hourglass::model::lm::HourglassLM::build(&cuda, &config(1).model, 9, true).unwrap();
    for _ in 0..4 {
        for t in &mut trainers {
            t.queue_step(&corpus()).unwrap();
            hourglass::train::grad_norm(&bystander).unwrap();
        }
    }
    let interleaved: Vec<Run> = trainers
        .iter_mut()
        .map(|t| {
            t.finish_steps().unwrap();
            finished(t)
        })
        .collect();
    // Alone afterwards: the interleaved steps came first on this device, so the seed table grew under them.
    for (run, config) in interleaved.iter().zip(configs) {
        let accum = config.accum;
        let alone = run_in(&cuda, config, StepMode::Graph);
        assert_eq!(
            (&run.losses, &run.norms, &run.params),
            (&alone.losses, &alone.norms, &alone.params),
            "accum {accum}: interleaved vs alone"
        );
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn staged_copies_are_refused_while_capturing() {
    let Some(cuda) = device_or_skip("staged copies in a capture").unwrap() else {
        return;
    };
    let mut state = Tensor::zeros(&cuda, &[8]).unwrap();
    let mut ids = Tokens::zeros(&cuda, 4, 256).unwrap();
    // The seed table's slot, so that staging into it is a copy (not a growth, refused on its own).
    BackendCore::stage_seeds(&cuda, &[1]).unwrap();
    cuda.begin_capture().unwrap();
    let refused = [
        cuda.write_async(state.storage_mut().unwrap(), 0, &[1.0; 8])
            .err(),
        ids.write_async(&[1, 2, 3, 4]).err(),
        BackendCore::stage_seeds(&cuda, &[7]).err(),
        cuda.read_async(state.storage().unwrap()).err(),
    ];
    // An empty graph, or none: nothing was recorded.
    let _ = cuda.end_capture();
    for (what, error) in ["state", "ids", "seeds", "read"].iter().zip(refused) {
        let msg = error
            .unwrap_or_else(|| panic!("the {what} copy was not refused"))
            .to_string();
        assert!(
            msg.contains("pinned staging buffer") && msg.contains("captured step"),
            "{what}: {msg}"
        );
    }
    // After the capture they go through again.
    cuda.write_async(state.storage_mut().unwrap(), 0, &[2.0; 8])
        .unwrap();
    let read = cuda.read_async(state.storage().unwrap()).unwrap();
    assert_eq!(cuda.finish_read(read).unwrap(), [2.0; 8]);
}

/// Whether this process runs `test` alone: in the parent, runs the test binary again with that test only and
/// fails with its output if it fails (false: the parent's work is done); in that child, true. For what
/// counts the device's memory, which tests running beside it in one process would disturb.
fn in_a_process_of_its_own(test: &str) -> bool {
    const CHILD: &str = "HOURGLASS_TEST_ALONE";
    if std::env::var(CHILD).is_ok_and(|v| v == test) {
        return true;
    }
    let exe = std::env::current_exe().expect("the test binary");
    // The test's name as libtest knows it: this module's path less the crate's name.
    let (_, module) = module_path!()
        .split_once("::")
        .expect("a module of the suite");
    let name = format!("{module}::{test}");
    let out = std::process::Command::new(exe)
        .args([&name, "--exact", "--include-ignored", "--nocapture"])
        .env(CHILD, test)
        .output()
        .expect("running the test binary as a child");
    let text = String::from_utf8_lossy(&out.stdout) + String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{test}, alone in a child:\n{text}");
    // A name that matched nothing would pass without running anything.
    assert!(
        text.contains("1 passed"),
        "{name} did not run in the child:\n{text}"
    );
    println!("{text}");
    false
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn a_graph_run_holds_one_step_of_activations() {
    if !in_a_process_of_its_own("a_graph_run_holds_one_step_of_activations") {
        return;
    }
    let Some(cuda) = device_or_skip("graph memory").unwrap() else {
        return;
    };
    let mut t = Trainer::new(&cuda, config(3), &corpus()).unwrap();
    t.set_step_mode(StepMode::Graph).unwrap();
    // The first step runs uncaptured (its activations from the default pool), then the next is captured
    // (its activations from the graph's own pool).
    t.queue_step(&corpus()).unwrap();
    t.finish_steps().unwrap();
    let in_use = cuda.memory_in_use().unwrap().unwrap();
    let freed = cuda.memory_high_water().unwrap().unwrap() - in_use;
    let cached = cuda.memory_cached().unwrap().unwrap();
    let graph = cuda.graph_memory_high_water().unwrap();
    println!(
        "after the capture: {in_use} bytes in use, {cached} cached by the default pool; the first step freed \
         {freed}, the graph holds {graph}"
    );
    assert!(freed > 0 && graph > 0);
    assert!(
        cached < freed / 4,
        "the default pool still holds {cached} bytes of the {freed} the uncaptured step freed"
    );
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn gpu_decoding_matches_recomputation_and_the_cpu() {
    use hourglass::config::{PerLevel, ShorteningKind, UpsamplingKind};
    use hourglass::model::decode::Decoder;
    use hourglass::model::lm::{HourglassLM, VOCAB};
    let Some(cuda) = device_or_skip("gpu decoding").unwrap() else {
        return;
    };
    let mut attention = config(1).model;
    attention.shortening = PerLevel::All(ShorteningKind::Attention);
    attention.upsampling = PerLevel::All(UpsamplingKind::Attention);
    let text = b"An hourglass measures time with falling sand.";
    for (name, model) in [("reference", config(1).model), ("attention", attention)] {
        // bf16: one bf16 unit (2^-8). The GPU rounds the same values as the CPU but sums in other orders, so a
        // value near a rounding boundary can round the other way (the emulated device measured 2.4e-3 for the
        // attention resamplers, 2026-12-06); decoding against recomputation on one device stays exact.
        for (precision, bound) in [(Precision::Element, 1e-5), (Precision::Bf16, 3.9e-3)] {
            let mut gpu_lm = HourglassLM::build(&cuda, &model, 9, true).unwrap();
            let mut cpu_lm = HourglassLM::build(&Cpu::<f32>::new(), &model, 9, true).unwrap();
            gpu_lm.set_precision(precision);
            cpu_lm.set_precision(precision);
            let mut gpu = Decoder::new(&gpu_lm, text.len(), 1).unwrap();
            let mut cpu = Decoder::new(&cpu_lm, text.len(), 1).unwrap();
            let (mut vs_recompute, mut vs_cpu) = (0.0f64, 0.0f64);
            // The first 5 bytes read in one pass (prefill), the rest stepped.
            let prompt: &[&[u8]] = &[&text[..5]];
            for t in 4..text.len() {
                let (g, c) = if t == 4 {
                    (
                        gpu.prefill(&mut gpu_lm, prompt).unwrap(),
                        cpu.prefill(&mut cpu_lm, prompt).unwrap(),
                    )
                } else {
                    let byte = [text[t]];
                    (
                        gpu.step(&mut gpu_lm, &byte).unwrap(),
                        cpu.step(&mut cpu_lm, &byte).unwrap(),
                    )
                };
                let (g, c) = (g.to_f64_vec().unwrap(), c.to_f64_vec().unwrap());
                let full = next_logits(&mut gpu_lm, &text[..=t]).unwrap();
                assert_eq!(g.len(), VOCAB);
                vs_recompute = vs_recompute.max(rel_err(&g, &full));
                vs_cpu = vs_cpu.max(rel_err(&g, &c));
            }
            println!("{name} in {precision}: decoding vs recomputation {vs_recompute:.2e}, vs the CPU {vs_cpu:.2e}");
            assert!(
                vs_recompute < bound,
                "{name} in {precision}: {vs_recompute:e}"
            );
            assert!(vs_cpu < bound, "{name} in {precision}: {vs_cpu:e}");
        }
    }
}
