//! Every loader a user's file reaches — training checkpoints (resume, sample, eval, forward), model and
//! training configs, forward's input — fed truncated, bit-flipped and size-inflated versions of good files.
//! Each must answer with `Ok` or an `Err`; a panic is caught and reported with the mutation that caused it
//! (an abort would end the test binary, which fails too).
//!
//! The mutations are seeded, so a failure names a case that can be replayed. A memory limit keeps a
//! mutation that asks for a larger (but possible) model from taking this machine's memory.

use hourglass::checkpoint::{HostTensor, TensorFile};
use hourglass::rng::SeededRng;
use hourglass::run::train::{self, EvalJob, SampleJob};
use hourglass::run::{forward_config, forward_files};
use hourglass::train::data::{Corpus, Split};
use hourglass::train::{Preset, TrainConfig, Trainer};
use hourglass::{Cpu, HourGlassConfig};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

fn cpu() -> Cpu {
    Cpu::new()
}

/// One mutation of a good file: what was done, and the bytes.
struct Case {
    name: String,
    bytes: Vec<u8>,
}

/// Truncations (every length up to 64, then spread over the file), single-bit flips and byte overwrites at
/// seeded positions (half of them in the first 4 KiB, where headers and metadata live), and the same bytes
/// with every decimal number in the text part replaced by much larger ones.
fn mutations(good: &[u8], seed: u64, flips: usize) -> Vec<Case> {
    let mut cases = Vec::new();
    let n = good.len();
    let mut lengths: Vec<usize> = (0..64.min(n)).collect();
    lengths.extend((1..40).map(|i| i * n / 40));
    lengths.push(n - 1);
    for len in lengths {
        cases.push(Case {
            name: format!("truncated to {len} of {n} bytes"),
            bytes: good[..len].to_vec(),
        });
    }
    let mut rng = SeededRng::new(seed);
    for i in 0..flips {
        let span = if i % 2 == 0 { n.min(4096) } else { n };
        let at = (rng.next_u64() as usize) % span;
        let mut bytes = good.to_vec();
        if i % 3 == 0 {
            bytes[at] = rng.next_u64() as u8;
            cases.push(Case {
                name: format!("byte {at} set to {}", bytes[at]),
                bytes,
            });
        } else {
            let bit = rng.next_u64() % 8;
            bytes[at] ^= 1 << bit;
            cases.push(Case {
                name: format!("bit {bit} of byte {at} flipped"),
                bytes,
            });
        }
    }
    for (from, to) in [
        ("16", "1600000000000"),
        ("2", "4294967297"),
        ("4", "18446744073709551615"),
        ("1", "99999999"),
    ] {
        if let Some(at) = find(good, from.as_bytes()) {
            let mut bytes = good[..at].to_vec();
            bytes.extend(to.as_bytes());
            bytes.extend(&good[at + from.len()..]);
            cases.push(Case {
                name: format!("the first {from:?} inflated to {to:?}"),
                bytes,
            });
        }
    }
    // safetensors: a header length far beyond the file.
    if n >= 8 {
        let mut bytes = good.to_vec();
        bytes[..8].copy_from_slice(&(u64::MAX / 3).to_le_bytes());
        cases.push(Case {
            name: "header length inflated".into(),
            bytes,
        });
    }
    cases
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Runs `load` on every case (written to `path` first); returns the cases that panicked.
fn survive(cases: &[Case], path: &Path, mut load: impl FnMut(&Path)) -> Vec<String> {
    let mut panics = Vec::new();
    for case in cases {
        std::fs::write(path, &case.bytes).unwrap();
        if catch_unwind(AssertUnwindSafe(|| load(path))).is_err() {
            panics.push(case.name.clone());
        }
    }
    panics
}

fn tiny() -> TrainConfig {
    let mut model = HourGlassConfig::reference(2, 16, 0.0, 32, &[2]);
    model.positions = hourglass::config::Positions::Rotary;
    TrainConfig {
        model,
        seq_len: 16,
        batch: 4,
        steps: 1,
        warmup_steps: 1,
        eval_batches: 1,
        ..Preset::Cpu.config()
    }
}

fn temp_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("hourglass-fuzz-{}", std::process::id()));
    std::fs::remove_dir_all(&dir).ok();
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn loaders_answer_every_mangled_file_with_a_result_never_a_panic() {
    // Set once, before any thread of this binary reads it (this is the binary's only test).
    std::env::set_var("HOURGLASS_MEMORY_LIMIT", "64M");
    let dir = temp_dir();
    let corpus_bytes = "a tiny corpus for a tiny model; it only has to load. ".repeat(40);
    let data = dir.join("data.txt");
    std::fs::write(&data, &corpus_bytes).unwrap();
    let corpus = Corpus::load(&data).unwrap();
    let good = dir.join("good.safetensors");
    let mut trainer = Trainer::new(&cpu(), tiny(), &corpus).unwrap();
    trainer
        .run(&corpus, Some(&good), &AtomicBool::new(false), &mut ())
        .unwrap();
    let checkpoint = std::fs::read(&good).unwrap();
    let mut x = TensorFile::default();
    x.tensors.insert(
        "x".into(),
        HostTensor {
            shape: vec![5, 2, 16],
            data: (0..160).map(|i| (i % 7) as f32 * 0.1).collect(),
        },
    );
    let input = x.to_bytes().unwrap();
    let mut panics = Vec::new();
    let mangled = dir.join("mangled");

    // Training checkpoints, through every command that reads one.
    let cases = mutations(&checkpoint, 1, 300);
    let loads = std::cell::Cell::new(0usize);
    panics.extend(survive(&cases, &mangled, |path| {
        if Trainer::resume(&cpu(), path, None, &corpus).is_ok() {
            loads.set(loads.get() + 1);
        }
        let _ = train::sample(
            &cpu(),
            SampleJob {
                prompt: Some("a ".into()),
                length: Some(2),
                ..SampleJob::new(path)
            },
            &AtomicBool::new(false),
        );
        let _ = train::evaluate(
            &cpu(),
            EvalJob {
                checkpoint: path.to_path_buf(),
                data: Some(data.clone()),
                split: Split::Valid,
                progress: false,
            },
            &AtomicBool::new(false),
        );
        if let Ok(file) = TensorFile::read(path) {
            if let Ok(config) = forward_config(None, &file, path) {
                let _ = forward_files(&cpu(), &config, &file, &x);
            }
        }
    }));
    // Most bit flips land in tensor values and still load: the good path stays exercised.
    assert!(
        loads.get() > 50,
        "only {} mutated checkpoints loaded",
        loads.get()
    );

    // Forward's input file.
    let config = tiny().model;
    let weights = TensorFile::read(&good).unwrap();
    panics.extend(survive(&mutations(&input, 2, 200), &mangled, |path| {
        if let Ok(input) = TensorFile::read(path) {
            let _ = forward_files(&cpu(), &config, &weights, &input);
        }
    }));

    // The model config of `forward --config`, and the training config of `train --config`.
    let model_json = config.to_json().into_bytes();
    panics.extend(survive(&mutations(&model_json, 3, 200), &mangled, |path| {
        if let Ok(c) = HourGlassConfig::from_file(path) {
            let _ = hourglass::HourGlass::from_config(&cpu(), &c, 0);
        }
    }));
    let train_json = tiny().to_json().into_bytes();
    panics.extend(survive(&mutations(&train_json, 4, 200), &mangled, |path| {
        if let Ok(c) = tiny().overlay_file(path) {
            let _ = Trainer::new(&cpu(), c, &corpus);
        }
    }));

    assert!(panics.is_empty(), "these mutations panicked: {panics:#?}");
    std::fs::remove_dir_all(dir).ok();
}
