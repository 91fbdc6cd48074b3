//! Incremental decoding (`model::decode`): at every position, the logits from the per-level caches equal the
//! full recomputation's (`train::sample::next_logits` over the context so far) — in f64 to 1e-9 and in f32 to
//! 1e-5, for every kind of shortening and upsampling, both resampling masks, nested levels with depth stacks,
//! rotary positions or none, a plain transformer, bf16, and batches of several sequences.

use crate::common::rel_err;
use hourglass::config::{
    AttentionPooling, AttentionUpsampling, Depth, PerLevel, Positions, ResamplingMask,
    ShorteningKind, UpsamplingKind,
};
use hourglass::device::Element;
use hourglass::model::decode::Decoder;
use hourglass::model::lm::{HourglassLM, VOCAB};
use hourglass::model::Precision;
use hourglass::ops::Backend;
use hourglass::rng::SeededRng;
use hourglass::train::sample::next_logits;
use hourglass::{Cpu, HourGlassConfig};

fn bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut rng = SeededRng::new(seed);
    (0..n).map(|_| (rng.next_u64() % 256) as u8).collect()
}

/// Every kind of model the decoder supports, named.
fn configs() -> Vec<(String, HourGlassConfig)> {
    let base = |factors: &[usize]| {
        let mut c = HourGlassConfig::reference(2, 16, 0.1, 32, factors);
        c.positions = Positions::Rotary;
        c
    };
    let mut all = vec![
        ("reference [3]".to_string(), base(&[3])),
        ("plain".to_string(), {
            let mut c = base(&[]);
            c.depth = Some(Depth::Layers(2));
            c
        }),
        (
            "nested [2, 3], depth [2, [1, 2, 1], 1], no positions".to_string(),
            {
                let mut c = base(&[2, 3]);
                c.positions = Positions::None;
                c.depth = Some(Depth::triple(2, Depth::triple(1, 2, 1), 1));
                c
            },
        ),
    ];
    for shortening in [
        ShorteningKind::Avg,
        ShorteningKind::Linear,
        ShorteningKind::Attention,
    ] {
        for upsampling in [
            UpsamplingKind::Naive,
            UpsamplingKind::Linear,
            UpsamplingKind::Attention,
        ] {
            for mask in [ResamplingMask::Funnel, ResamplingMask::Window] {
                let attention = shortening == ShorteningKind::Attention
                    || upsampling == UpsamplingKind::Attention;
                if mask == ResamplingMask::Window && !attention {
                    continue;
                }
                let mut c = base(&[2, 3]);
                c.shortening = PerLevel::All(shortening);
                c.upsampling = PerLevel::All(upsampling);
                c.attention_resampling_mask = mask;
                c.attention_pooling = AttentionPooling::Linear;
                c.attention_upsampling = AttentionUpsampling::Linear;
                all.push((format!("{shortening:?} / {upsampling:?} / {mask:?}"), c));
            }
        }
    }
    all
}

/// The largest relative error, over positions `0..n` of `batch` random sequences, between the decoder's logits
/// and recomputation's: the first `prefill` positions read in one pass, the others stepped.
fn worst_error<B: Backend>(
    lm: &mut HourglassLM<B>,
    n: usize,
    batch: usize,
    seed: u64,
    prefill: usize,
) -> f64 {
    lm.train(false);
    let texts: Vec<Vec<u8>> = (0..batch).map(|b| bytes(n, seed + b as u64)).collect();
    let mut decoder = Decoder::new(lm, n, batch).unwrap();
    let mut worst = 0.0f64;
    let start = match prefill {
        0 => 0,
        p => {
            let heads: Vec<&[u8]> = texts.iter().map(|t| &t[..p]).collect();
            let logits = decoder.prefill(lm, &heads).unwrap().to_f64_vec().unwrap();
            for (b, text) in texts.iter().enumerate() {
                let want = next_logits(lm, &text[..p]).unwrap();
                worst = worst.max(rel_err(&logits[b * VOCAB..(b + 1) * VOCAB], &want));
            }
            p
        }
    };
    for t in start..n {
        let column: Vec<u8> = texts.iter().map(|text| text[t]).collect();
        let logits = decoder.step(lm, &column).unwrap().to_f64_vec().unwrap();
        for (b, text) in texts.iter().enumerate() {
            let want = next_logits(lm, &text[..=t]).unwrap();
            let got = &logits[b * VOCAB..(b + 1) * VOCAB];
            worst = worst.max(rel_err(got, &want));
        }
    }
    worst
}

fn lm<T: Element>(config: &HourGlassConfig, seed: u64) -> HourglassLM<Cpu<T>> {
    HourglassLM::build(&Cpu::<T>::new(), config, seed, seed.is_multiple_of(2)).unwrap()
}

#[test]
fn decoding_equals_recomputation_in_f64_for_every_kind_of_model() {
    for (i, (name, config)) in configs().into_iter().enumerate() {
        // 20 positions: ragged against 2, 3 and 6; several windows at every level.
        let mut model = lm::<f64>(&config, i as u64);
        // Every byte stepped, then prompts read in one pass: shorter than a window, ragged, longer.
        for prefill in [0, 1, 5, 13] {
            let e = worst_error(&mut model, 20, 1, 7, prefill);
            assert!(e < 1e-9, "{name}, prefill {prefill}: relative error {e:e}");
        }
    }
}

/// In bf16 a decoding step's one-row products sum in another order than the pass over every row, and an f32
/// difference of one rounding can move a bf16 operand by one unit (2^-8 relative) downstream.
const BF16_BOUND: f64 = 2e-3;

#[test]
fn decoding_equals_recomputation_in_f32_and_bf16_with_batches() {
    for (i, (name, config)) in configs().into_iter().enumerate().step_by(3) {
        let mut model = lm::<f32>(&config, 100 + i as u64);
        let e = worst_error(&mut model, 14, 3, 9, 7);
        assert!(e < 1e-5, "{name} in f32: relative error {e:e}");
        model.set_precision(Precision::Bf16);
        let e = worst_error(&mut model, 14, 2, 9, 0);
        assert!(e < BF16_BOUND, "{name} in bf16: relative error {e:e}");
    }
}

#[test]
fn caches_that_grow_as_positions_come_decode_exactly() {
    // 150 positions: the full-length caches start at 64 rows and grow twice (to 128, then to the capacity),
    // the shortened ones once; stepped from the start, and after a prompt read past the first size.
    let (_, nested) = configs().swap_remove(2);
    let mut model = lm::<f64>(&nested, 4);
    for prefill in [0, 70] {
        let e = worst_error(&mut model, 150, 1, 3, prefill);
        assert!(e < 1e-9, "prefill {prefill}: relative error {e:e}");
    }
}

#[test]
fn a_full_decoder_says_so_and_a_model_that_is_not_causal_cannot_decode() {
    let mut config = HourGlassConfig::reference(2, 16, 0.0, 32, &[2]);
    let mut model = lm::<f64>(&config, 1);
    let mut decoder = Decoder::new(&model, 2, 1).unwrap();
    decoder.step(&mut model, b"a").unwrap();
    decoder.step(&mut model, b"b").unwrap();
    let err = decoder.step(&mut model, b"c").unwrap_err().to_string();
    assert!(err.contains("2 positions"), "{err}");
    let err = decoder.step(&mut model, b"cd").unwrap_err().to_string();
    assert!(err.contains("batch of 1"), "{err}");
    config.causal = false;
    let err = Decoder::new(&lm::<f64>(&config, 1), 8, 1)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("causal"), "{err}");
}
