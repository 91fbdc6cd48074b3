//! Sampling: the logits used for each new byte are exactly what the model computes for that position inside a
//! longer sequence (the padding to a multiple of the shortening factors cannot leak, and no pooling window is
//! partial), greedy and top-k behave, the same seed gives the same text, and bad options are errors.

use crate::common::rel_err;
use hourglass::checkpoint::{export_params, import_params};
use hourglass::config::{Depth, Positions};
use hourglass::model::lm::{HourglassLM, VOCAB};
use hourglass::rng::SeededRng;
use hourglass::train::sample::{
    generate, generate_all, generate_until, next_logits, pick, SampleFootprint, SampleOptions,
};
use hourglass::{Cpu, HourGlassConfig};
use std::sync::atomic::{AtomicBool, Ordering};

fn lm(factors: &[usize]) -> HourglassLM<Cpu<f64>> {
    let mut config = HourGlassConfig::reference(2, 16, 0.0, 32, factors);
    config.positions = Positions::Rotary;
    if factors.len() == 2 {
        config.depth = Some(Depth::triple(1, Depth::triple(1, 1, 1), 1));
    }
    HourglassLM::new(&Cpu::new(), &config, 11).unwrap()
}

fn bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut rng = SeededRng::new(seed);
    (0..n).map(|_| (rng.next_u64() % 256) as u8).collect()
}

#[test]
fn each_prediction_equals_the_models_output_inside_a_longer_sequence() {
    for factors in [vec![3], vec![2, 3]] {
        let mut model = lm(&factors);
        model.train(false);
        let product: usize = factors.iter().product();
        let long = bytes(4 * product, 3);
        let ids: Vec<u32> = long.iter().map(|&b| b as u32).collect();
        let full = model
            .forward(&ids, long.len(), 1)
            .unwrap()
            .to_f64_vec()
            .unwrap();
        // Every prefix length, the ragged ones included.
        for t in 1..=long.len() {
            let got = next_logits(&mut model, &long[..t]).unwrap();
            let want = &full[(t - 1) * VOCAB..t * VOCAB];
            let e = rel_err(&got, want);
            assert!(
                e < 1e-12,
                "factors {factors:?}, prefix {t}: relative error {e:e}"
            );
        }
    }
}

#[test]
fn without_padding_a_ragged_prefix_would_differ() {
    // The property above is not vacuous: the unpadded forward of a ragged prefix gives other logits.
    let mut model = lm(&[3]);
    model.train(false);
    let long = bytes(12, 4);
    let ids: Vec<u32> = long.iter().map(|&b| b as u32).collect();
    let full = model.forward(&ids, 12, 1).unwrap().to_f64_vec().unwrap();
    let t = 5;
    let short = model
        .forward(&ids[..t], t, 1)
        .unwrap()
        .to_f64_vec()
        .unwrap();
    let e = rel_err(&short[(t - 1) * VOCAB..], &full[(t - 1) * VOCAB..t * VOCAB]);
    assert!(e > 1e-6, "relative error {e:e}");
}

#[test]
fn greedy_top_k_and_seeds() {
    let mut model = lm(&[2]);
    let options = |temperature, top_k, seed| SampleOptions {
        length: 12,
        temperature,
        top_k,
        seed,
        context: 8,
        num_samples: 1,
        recompute: false,
    };
    let prompt = b"hourglass";
    let greedy = generate(&mut model, prompt, &options(0.0, 0, 1), |_| Ok(())).unwrap();
    // Greedy picks the arg-max of the very logits `next_logits` gives with the context window of the module
    // doc: at most 8 bytes, back to the last 4 when a ninth comes.
    let mut text = prompt.to_vec();
    let mut start = prompt.len() - 8;
    for &b in &greedy {
        let logits = next_logits(&mut model, &text[start..]).unwrap();
        let best = (0..VOCAB)
            .max_by(|&a, &b| logits[a].total_cmp(&logits[b]).then(b.cmp(&a)))
            .unwrap();
        assert_eq!(b as usize, best);
        text.push(b);
        if text.len() - start > 8 {
            start = text.len() - 4;
        }
    }
    // top-k 1 is greedy whatever the temperature; the same seed repeats; streaming sees every byte in order.
    let top1 = generate(&mut model, prompt, &options(1.5, 1, 9), |_| Ok(())).unwrap();
    assert_eq!(top1, greedy);
    let mut streamed = Vec::new();
    let a = generate(&mut model, prompt, &options(1.0, 0, 7), |b| {
        streamed.push(b);
        Ok(())
    })
    .unwrap();
    assert_eq!(streamed, a);
    let b = generate(&mut model, prompt, &options(1.0, 0, 7), |_| Ok(())).unwrap();
    let c = generate(&mut model, prompt, &options(1.0, 0, 8), |_| Ok(())).unwrap();
    assert_eq!(a, b);
    assert_ne!(a, c);
}

#[test]
fn decoding_and_recomputation_draw_the_same_bytes_and_batches_are_independent_draws() {
    for factors in [vec![3], vec![2, 3]] {
        let mut model = lm(&factors);
        let options = SampleOptions {
            // 40 bytes through a 12-byte window: it slides several times.
            length: 40,
            temperature: 1.0,
            top_k: 0,
            seed: 5,
            context: 12,
            num_samples: 3,
            recompute: false,
        };
        let prompt = b"sand";
        let cached = generate_all(&mut model, prompt, &options, |_, _| Ok(())).unwrap();
        let recomputed = generate_all(
            &mut model,
            prompt,
            &SampleOptions {
                recompute: true,
                ..options
            },
            |_, _| Ok(()),
        )
        .unwrap();
        assert_eq!(cached, recomputed, "factors {factors:?}");
        let single = SampleOptions {
            num_samples: 1,
            ..options
        };
        let first = generate(&mut model, prompt, &single, |_| Ok(())).unwrap();
        assert_eq!(first, cached[0], "the first of a batch is the sample alone");
        assert_ne!(cached[0], cached[1]);
        assert_ne!(cached[1], cached[2]);
    }
}

#[test]
fn pick_follows_the_distribution_and_top_k() {
    // Logits ln(1), ln(2), ln(3), ln(4) over 4 bytes: frequencies 0.1, 0.2, 0.3, 0.4.
    let logits: Vec<f64> = [1.0f64, 2.0, 3.0, 4.0].iter().map(|p| p.ln()).collect();
    let mut rng = SeededRng::new(2);
    let n = 40_000;
    let mut counts = [0usize; 4];
    for _ in 0..n {
        counts[pick(&logits, 1.0, 0, &mut rng) as usize] += 1;
    }
    for (i, &c) in counts.iter().enumerate() {
        let want = (i + 1) as f64 / 10.0;
        assert!((c as f64 / n as f64 - want).abs() < 0.01, "{counts:?}");
    }
    // top-k 2 keeps bytes 3 and 2 only, in ratio 4 : 3.
    let mut counts = [0usize; 4];
    for _ in 0..n {
        counts[pick(&logits, 1.0, 2, &mut rng) as usize] += 1;
    }
    assert_eq!(counts[0] + counts[1], 0, "{counts:?}");
    assert!(
        (counts[3] as f64 / n as f64 - 4.0 / 7.0).abs() < 0.01,
        "{counts:?}"
    );
}

#[test]
fn bad_sampling_options_are_errors() {
    let mut model = lm(&[2]);
    let ok = SampleOptions {
        length: 3,
        temperature: 1.0,
        top_k: 0,
        seed: 0,
        context: 8,
        num_samples: 1,
        recompute: false,
    };
    let cases = [
        (b"".as_slice(), ok, "prompt is empty"),
        (
            b"x",
            SampleOptions {
                temperature: -1.0,
                ..ok
            },
            "temperature",
        ),
        (
            b"x",
            SampleOptions {
                temperature: f64::NAN,
                ..ok
            },
            "temperature",
        ),
        (b"x", SampleOptions { top_k: 257, ..ok }, "top_k 257"),
        (b"x", SampleOptions { context: 0, ..ok }, "context"),
        (
            b"x",
            SampleOptions {
                num_samples: 0,
                ..ok
            },
            "num_samples",
        ),
    ];
    for (prompt, options, words) in cases {
        let err = generate(&mut model, prompt, &options, |_| Ok(())).unwrap_err();
        assert!(err.to_string().contains(words), "{err}");
    }
}

/// Options for `length` bytes through a window of `context`, one sample, decoding.
fn options(length: usize, context: usize) -> SampleOptions {
    SampleOptions {
        length,
        temperature: 1.0,
        top_k: 0,
        seed: 3,
        context,
        num_samples: 1,
        recompute: false,
    }
}

#[test]
fn the_footprint_is_what_the_window_reaches() {
    // The window of the module doc, walked byte by byte: the widest window a draw reads, and the longest
    // read in one pass (by a fresh decoder: the first window, and each after a slide).
    let walk = |prompt: usize, length: usize, context: usize| {
        let (mut len, mut start) = (prompt, prompt.saturating_sub(context));
        let (mut widest, mut longest_read, mut fresh) = (0, 0, true);
        for _ in 0..length {
            widest = widest.max(len - start);
            if fresh {
                longest_read = longest_read.max(len - start);
                fresh = false;
            }
            len += 1;
            if len - start > context {
                start = len - context.div_ceil(2);
                fresh = true;
            }
        }
        (widest, longest_read)
    };
    for prompt in [1, 2, 5, 9, 20] {
        for length in [0, 1, 2, 3, 7, 8, 30] {
            for context in [1, 2, 3, 8, 9] {
                let (widest, longest_read) = walk(prompt, length, context);
                let decoding = options(length, context);
                assert_eq!(
                    decoding.footprint(prompt),
                    SampleFootprint {
                        longest_pass: longest_read,
                        cached_positions: widest,
                    },
                    "prompt {prompt}, length {length}, context {context}"
                );
                let recomputing = SampleOptions {
                    recompute: true,
                    ..decoding
                };
                assert_eq!(
                    recomputing.footprint(prompt),
                    SampleFootprint {
                        longest_pass: widest,
                        cached_positions: 0,
                    }
                );
            }
        }
    }
    // A context far beyond the run costs only what the run reaches.
    assert_eq!(
        options(3, usize::MAX).footprint(4),
        SampleFootprint {
            longest_pass: 4,
            cached_positions: 6,
        }
    );
    assert_eq!(
        options(usize::MAX, usize::MAX)
            .footprint(4)
            .cached_positions,
        usize::MAX
    );
}

#[test]
fn a_context_far_beyond_the_run_allocates_only_what_the_run_reaches() {
    let mut model = lm(&[2, 3]);
    for context in [usize::MAX, 1 << 40] {
        for recompute in [false, true] {
            let bytes = generate(
                &mut model,
                b"sand",
                &SampleOptions {
                    recompute,
                    ..options(5, context)
                },
                |_| Ok(()),
            )
            .unwrap();
            assert_eq!(bytes.len(), 5);
        }
    }
}

#[test]
fn a_raised_stop_flag_ends_sampling_with_the_bytes_drawn() {
    let mut model = lm(&[2]);
    let stop = AtomicBool::new(false);
    let mut seen = 0;
    let drawn = generate_until(
        &mut model,
        b"ab",
        &options(usize::MAX, 16),
        &stop,
        |_, _| {
            seen += 1;
            if seen == 5 {
                stop.store(true, Ordering::SeqCst);
            }
            Ok(())
        },
    )
    .unwrap();
    assert_eq!(drawn.len(), 1);
    assert_eq!(drawn[0].len(), 5);
}

#[test]
fn logits_that_are_not_finite_are_an_error_not_a_draw() {
    let mut model = HourglassLM::new(
        &Cpu::<f32>::new(),
        &HourGlassConfig::reference(2, 16, 0.0, 32, &[2]),
        1,
    )
    .unwrap();
    // Finite weights whose arithmetic overflows f32 (LayerNorm of rows of 3e38).
    let mut weights = export_params(&model, false).unwrap();
    weights
        .tensors
        .get_mut("embedding.weight")
        .unwrap()
        .data
        .fill(3e38);
    import_params(&mut model, &weights).unwrap();
    for recompute in [false, true] {
        let sampling = SampleOptions {
            recompute,
            ..options(4, 8)
        };
        let err = generate(&mut model, b"ab", &sampling, |_| Ok(()))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("logits of generated byte 1") && err.contains("overflow"),
            "{err}"
        );
    }
}
