//! The byte corpus: 90/5/5 splits, random batches in the `[seq, batch]` layout `HourglassLM::loss` takes,
//! sequential evaluation windows, the unigram baseline and every bad input. Tiny corpora made here, never the
//! download.

use hourglass::rng::SeededRng;
use hourglass::train::data::{Corpus, Split};
use hourglass::Error;

/// `n` bytes, each distinct from its neighbours, so a window's position is recoverable from its bytes.
fn counting(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i % 251) as u8).collect()
}

#[test]
fn splits_are_90_5_5_by_bytes_in_file_order() {
    let c = Corpus::from_bytes(counting(1000)).unwrap();
    assert_eq!(c.len(), 1000);
    assert_eq!(c.range(Split::Train), 0..900);
    assert_eq!(c.range(Split::Valid), 900..950);
    assert_eq!(c.range(Split::Test), 950..1000);
    assert_eq!(c.split(Split::Valid), &counting(1000)[900..950]);
    // Sizes that do not divide: floors, and the three parts still cover every byte once.
    let c = Corpus::from_bytes(counting(1237)).unwrap();
    let sizes: Vec<usize> = Split::ALL.iter().map(|&s| c.split(s).len()).collect();
    assert_eq!(sizes, [1113, 62, 62]);
    assert_eq!(c.range(Split::Train).end, c.range(Split::Valid).start);
    assert_eq!(c.range(Split::Valid).end, c.range(Split::Test).start);
    assert_eq!(sizes.iter().sum::<usize>(), 1237);
}

#[test]
fn loads_a_file_as_raw_bytes() {
    let dir = crate::common::scratch_dir("data", "load");
    let path = dir.join("corpus.bin");
    let bytes: Vec<u8> = (0..=255u8).cycle().take(700).collect();
    std::fs::write(&path, &bytes).unwrap();
    let c = Corpus::load(&path).unwrap();
    assert_eq!(c.bytes(), &bytes[..]);
    assert!(c.source().contains("corpus.bin"), "{}", c.source());
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn batch_layout_is_seq_major_and_targets_are_the_next_byte() {
    let c = Corpus::from_bytes(counting(2000)).unwrap();
    let (seq, batch) = (7, 5);
    let train = c.split(Split::Train);
    let mut rng = SeededRng::new(3);
    for _ in 0..20 {
        let (inputs, targets) = c.batch(Split::Train, seq, batch, &mut rng).unwrap();
        assert_eq!(inputs.len(), seq * batch);
        assert_eq!(targets.len(), seq * batch);
        for b in 0..batch {
            // Column b is one contiguous window of the split; targets are the inputs shifted by one.
            let col: Vec<u32> = (0..seq).map(|t| inputs[t * batch + b]).collect();
            let tcol: Vec<u32> = (0..seq).map(|t| targets[t * batch + b]).collect();
            let start = (0..train.len() - seq)
                .find(|&s| (0..seq).all(|t| train[s + t] as u32 == col[t]))
                .expect("column is a window of the train split");
            for t in 0..seq {
                assert_eq!(tcol[t], train[start + t + 1] as u32, "b {b} t {t}");
            }
        }
    }
}

#[test]
fn batches_stay_inside_their_split_and_reach_its_end() {
    // Each split a different constant byte: any byte from another split would show.
    let mut bytes = vec![1u8; 90];
    bytes.extend([2u8; 5]);
    bytes.extend([3u8; 5]);
    let c = Corpus::from_bytes(bytes).unwrap();
    let mut rng = SeededRng::new(11);
    for (split, byte) in [(Split::Train, 1), (Split::Valid, 2), (Split::Test, 3)] {
        for _ in 0..50 {
            let (i, t) = c.batch(split, 4, 3, &mut rng).unwrap();
            assert!(
                i.iter().chain(&t).all(|&x| x == byte),
                "{split}: {i:?} {t:?}"
            );
        }
    }
    // seq = len - 1 has exactly one window: the whole split.
    let c = Corpus::from_bytes(counting(100)).unwrap();
    let (i, t) = c.batch(Split::Valid, 4, 2, &mut rng).unwrap();
    assert_eq!(i, [90, 90, 91, 91, 92, 92, 93, 93]);
    assert_eq!(t, [91, 91, 92, 92, 93, 93, 94, 94]);
}

#[test]
fn batches_are_deterministic_per_seed() {
    let c = Corpus::from_bytes(counting(5000)).unwrap();
    let draw = |seed: u64| {
        let mut rng = SeededRng::new(seed);
        (0..4)
            .map(|_| c.batch(Split::Train, 16, 4, &mut rng).unwrap())
            .collect::<Vec<_>>()
    };
    assert_eq!(draw(42), draw(42));
    assert_ne!(draw(42), draw(43));
    // Successive batches from one rng differ.
    let d = draw(42);
    assert_ne!(d[0], d[1]);
}

#[test]
fn eval_windows_cover_the_split_exactly_once() {
    let c = Corpus::from_bytes(counting(2000)).unwrap();
    for split in Split::ALL {
        let data = c.split(split);
        for (seq, batch) in [
            (1, 1),
            (7, 3),
            (10, 1),
            (16, 4),
            (99, 2),
            (data.len() - 1, 5),
            (5000, 2),
        ] {
            let mut predicted = vec![0usize; data.len()];
            let iter = c.eval_batches(split, seq, batch).unwrap();
            let expected_len = iter.len();
            let mut n = 0;
            for eb in iter {
                n += 1;
                assert!(eb.seq <= seq && eb.seq >= 1);
                assert!(eb.batch <= batch && eb.batch >= 1);
                assert_eq!(eb.inputs.len(), eb.seq * eb.batch);
                assert_eq!(eb.targets.len(), eb.seq * eb.batch);
                assert_eq!(eb.starts.len(), eb.batch);
                for (b, &s) in eb.starts.iter().enumerate() {
                    for t in 0..eb.seq {
                        assert_eq!(eb.inputs[t * eb.batch + b], data[s + t] as u32);
                        assert_eq!(eb.targets[t * eb.batch + b], data[s + t + 1] as u32);
                        predicted[s + t + 1] += 1;
                    }
                }
            }
            assert_eq!(
                n, expected_len,
                "{split} seq {seq} batch {batch}: size_hint"
            );
            // Every byte but the first (no context) is predicted exactly once.
            assert_eq!(predicted[0], 0);
            assert!(
                predicted[1..].iter().all(|&k| k == 1),
                "{split} seq {seq} batch {batch}: {predicted:?}"
            );
        }
    }
}

#[test]
fn eval_groups_full_windows_then_the_remainder() {
    // Valid split: 100 bytes, 99 targets; seq 10, batch 4 → 4 + 4 + 1 full windows, then 9 bytes.
    let c = Corpus::from_bytes(counting(2000)).unwrap();
    let shapes: Vec<(usize, usize, Vec<usize>)> = c
        .eval_batches(Split::Valid, 10, 4)
        .unwrap()
        .map(|e| (e.seq, e.batch, e.starts))
        .collect();
    assert_eq!(
        shapes,
        [
            (10, 4, vec![0, 10, 20, 30]),
            (10, 4, vec![40, 50, 60, 70]),
            (10, 1, vec![80]),
            (9, 1, vec![90]),
        ]
    );
}

#[test]
fn unigram_baseline_of_a_known_distribution() {
    // Train: 45 'a', 45 'b'; valid: 5 'a'; test: 4 'b', 1 'c'.
    let mut bytes = vec![b'a'; 45];
    bytes.extend([b'b'; 45]);
    bytes.extend([b'a'; 5]);
    bytes.extend([b'b', b'b', b'b', b'b', b'c']);
    let c = Corpus::from_bytes(bytes).unwrap();
    let total: f64 = 90.0 + 256.0;
    let valid = c.unigram_bits_per_byte(Split::Valid).unwrap();
    approx::assert_relative_eq!(valid, -(46.0 / total).log2(), max_relative = 1e-12);
    let test = c.unigram_bits_per_byte(Split::Test).unwrap();
    let expected = (4.0 * -(46.0 / total).log2() + -(1.0 / total).log2()) / 5.0;
    approx::assert_relative_eq!(test, expected, max_relative = 1e-12);

    // Uniform bytes: train holds every byte value equally often, so every byte costs log2(256) = 8 bits.
    let bytes: Vec<u8> = (0..=255u8).cycle().take(256 * 40).collect();
    let c = Corpus::from_bytes(bytes).unwrap();
    let bpb = c.unigram_bits_per_byte(Split::Valid).unwrap();
    approx::assert_relative_eq!(bpb, 8.0, max_relative = 1e-3);
    // On its own training split, a skewed distribution scores its entropy (up to smoothing): 3/4, 1/4.
    let mut bytes = Vec::new();
    for _ in 0..10_000 {
        bytes.extend([b'x', b'x', b'x', b'y']);
    }
    let c = Corpus::from_bytes(bytes).unwrap();
    // Train is the first 36,000 bytes: 27,000 'x', 9,000 'y'; add-one over 256 values.
    let bpb = c.unigram_bits_per_byte(Split::Train).unwrap();
    let (px, py): (f64, f64) = (27_001.0 / 36_256.0, 9_001.0 / 36_256.0);
    let expected = -(0.75f64 * px.log2() + 0.25 * py.log2());
    approx::assert_relative_eq!(bpb, expected, max_relative = 1e-12);
    let h = -(0.75f64 * 0.75f64.log2() + 0.25 * 0.25f64.log2());
    assert!(bpb > h && bpb < h + 0.02, "{bpb} vs entropy {h}");
}

fn message(e: Error) -> String {
    e.to_string()
}

#[test]
fn missing_file_is_an_error_naming_the_path() {
    let path = crate::common::scratch_dir("data", "missing").join("no-such-corpus.xml");
    let e = message(Corpus::load(&path).unwrap_err());
    assert!(e.contains("no-such-corpus.xml"), "{e}");
    assert!(e.contains("fetch-corpus"), "{e}");
}

#[test]
fn empty_file_is_an_error_naming_the_path() {
    let dir = crate::common::scratch_dir("data", "empty");
    let path = dir.join("empty-corpus.txt");
    std::fs::write(&path, b"").unwrap();
    let e = message(Corpus::load(&path).unwrap_err());
    assert!(e.contains("empty-corpus.txt") && e.contains("empty"), "{e}");
    let e = message(Corpus::from_bytes(Vec::new()).unwrap_err());
    assert!(e.contains("empty"), "{e}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_directory_is_an_error_naming_the_path() {
    let dir = crate::common::scratch_dir("data", "dir-as-corpus");
    let e = message(Corpus::load(&dir).unwrap_err());
    assert!(e.contains("dir-as-corpus"), "{e}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn seq_longer_than_the_split_is_an_error_naming_the_values() {
    let dir = crate::common::scratch_dir("data", "short");
    let path = dir.join("short.txt");
    std::fs::write(&path, counting(100)).unwrap();
    let c = Corpus::load(&path).unwrap();
    let mut rng = SeededRng::new(0);
    // Valid has 5 bytes: seq 4 fits (5 = 4 + 1), seq 5 does not.
    assert!(c.batch(Split::Valid, 4, 1, &mut rng).is_ok());
    let e = message(c.batch(Split::Valid, 5, 1, &mut rng).unwrap_err());
    for part in ["seq_len 5", "valid", "5 bytes", "short.txt"] {
        assert!(e.contains(part), "missing {part:?}: {e}");
    }
    let e = message(c.batch(Split::Train, 4096, 2, &mut rng).unwrap_err());
    for part in ["seq_len 4096", "train", "90 bytes"] {
        assert!(e.contains(part), "missing {part:?}: {e}");
    }
    // Zero sizes.
    let e = message(c.batch(Split::Train, 0, 2, &mut rng).unwrap_err());
    assert!(e.contains("seq_len 0"), "{e}");
    let e = message(c.batch(Split::Train, 4, 0, &mut rng).unwrap_err());
    assert!(e.contains("batch 0"), "{e}");
    let e = message(c.eval_batches(Split::Valid, 0, 1).unwrap_err());
    assert!(e.contains("seq_len 0"), "{e}");
    let e = message(c.eval_batches(Split::Valid, 4, 0).unwrap_err());
    assert!(e.contains("batch 0"), "{e}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn splits_too_small_to_evaluate_are_errors() {
    // 10 bytes: train 9, valid 0, test 1.
    let c = Corpus::from_bytes(counting(10)).unwrap();
    assert_eq!(c.split(Split::Valid).len(), 0);
    let e = message(c.eval_batches(Split::Valid, 4, 1).unwrap_err());
    assert!(e.contains("valid") && e.contains("0 byte"), "{e}");
    let e = message(c.eval_batches(Split::Test, 4, 1).unwrap_err());
    assert!(e.contains("test") && e.contains("1 byte"), "{e}");
    let e = message(c.unigram_bits_per_byte(Split::Valid).unwrap_err());
    assert!(e.contains("valid") && e.contains("empty"), "{e}");
    let mut rng = SeededRng::new(0);
    let e = message(c.batch(Split::Test, 1, 1, &mut rng).unwrap_err());
    assert!(e.contains("seq_len 1") && e.contains("test"), "{e}");
}
