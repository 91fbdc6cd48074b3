//! Byte-level training data: a corpus file read as raw bytes (any text or binary file; the default is the
//! Wikipedia excerpt `tools/fetch-corpus.sh` puts in `data/`), split 90/5/5 by bytes into train / valid / test
//! like enwik8, random training batches, sequential evaluation windows covering a whole split, and the unigram
//! baseline a trained model must beat.
//!
//! Batches are `[seq, batch]` byte ids flattened row-major (`t·batch + b`), the layout
//! [`HourglassLM::loss`](crate::model::lm::HourglassLM::loss) takes, with the targets the next byte of each
//! input.

use crate::error::{Error, Result};
use crate::rng::SeededRng;
use std::fmt;
use std::path::{Path, PathBuf};

/// One of the three parts of a corpus.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Split {
    /// The first 90% of the bytes.
    Train,
    /// The next 5%.
    Valid,
    /// The last 5%.
    Test,
}

impl Split {
    pub const ALL: [Split; 3] = [Split::Train, Split::Valid, Split::Test];

    pub fn name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Valid => "valid",
            Split::Test => "test",
        }
    }
}

impl fmt::Display for Split {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A corpus of bytes split 90/5/5 (train / valid / test) by byte count, in file order: with `n` bytes, train is
/// `[0, ⌊0.9n⌋)`, valid `[⌊0.9n⌋, ⌊0.95n⌋)` and test the rest (enwik8's 90M / 5M / 5M for `n` = 10⁸).
#[derive(Clone, Debug)]
pub struct Corpus {
    bytes: Vec<u8>,
    train_end: usize,
    valid_end: usize,
    /// Where the bytes came from, for error messages: the file's path, or "in-memory corpus".
    source: String,
}

impl Corpus {
    /// Reads a whole file as bytes. A missing or unreadable file is an error naming its path, and so is an
    /// empty one.
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|e| {
            let hint = if e.kind() == std::io::ErrorKind::NotFound {
                " (the default corpus is fetched by tools/fetch-corpus.sh)"
            } else {
                ""
            };
            Error::Io(std::io::Error::new(
                e.kind(),
                format!("data file {}: {e}{hint}", path.display()),
            ))
        })?;
        Self::with_source(bytes, format!("data file {}", path.display()))
    }

    /// A corpus from bytes already in memory; empty bytes are an error.
    pub fn from_bytes(bytes: impl Into<Vec<u8>>) -> Result<Self> {
        Self::with_source(bytes.into(), "in-memory corpus".to_string())
    }

    fn with_source(bytes: Vec<u8>, source: String) -> Result<Self> {
        if bytes.is_empty() {
            return Err(Error::Io(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{source} is empty (0 bytes): nothing to train on"),
            )));
        }
        let n = bytes.len();
        // In u128 so that n·95 cannot overflow for any file that fits in memory.
        let cut = |percent: u128| (n as u128 * percent / 100) as usize;
        Ok(Self {
            train_end: cut(90),
            valid_end: cut(95),
            bytes,
            source,
        })
    }

    /// The path a corpus was loaded from, e.g. `data file data/enwik-excerpt.xml`, or `in-memory corpus`.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Total bytes.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Never true: an empty corpus is refused when it is made.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// All bytes, unsplit.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The bytes of one split.
    pub fn split(&self, split: Split) -> &[u8] {
        &self.bytes[self.range(split)]
    }

    /// The byte range of one split within the whole corpus.
    pub fn range(&self, split: Split) -> std::ops::Range<usize> {
        match split {
            Split::Train => 0..self.train_end,
            Split::Valid => self.train_end..self.valid_end,
            Split::Test => self.valid_end..self.bytes.len(),
        }
    }

    /// Checks `seq` and `batch` are positive and that `split` holds at least `seq + 1` bytes (a window of
    /// `seq` inputs and the byte after it).
    fn check_window(&self, split: Split, seq: usize, batch: usize) -> Result<&[u8]> {
        if seq == 0 || batch == 0 {
            return Err(Error::Config(format!(
                "seq_len {seq} and batch {batch} must both be at least 1"
            )));
        }
        let data = self.split(split);
        if data.len() < seq + 1 {
            return Err(Error::Config(format!(
                "seq_len {seq} is too long for the {split} split of {}: it has {} bytes, and a window needs \
                 seq_len + 1 = {} (the corpus has {} bytes, split 90/5/5); use a shorter seq_len or more data",
                self.source,
                data.len(),
                seq + 1,
                self.bytes.len()
            )));
        }
        Ok(data)
    }

    /// A random training batch: `batch` windows of `seq` consecutive bytes from `split`, each starting at a
    /// uniformly drawn offset (one `rng.next_u64()` per column, in column order). Returns `(inputs, targets)`,
    /// both `[seq, batch]` row-major (`t·batch + b`), with `targets[t·batch + b]` the byte after
    /// `inputs[t·batch + b]`. The same rng state gives the same batch.
    pub fn batch(
        &self,
        split: Split,
        seq: usize,
        batch: usize,
        rng: &mut SeededRng,
    ) -> Result<(Vec<u32>, Vec<u32>)> {
        let data = self.check_window(split, seq, batch)?;
        // Offsets 0..=len-seq-1 keep the last target inside the split.
        let choices = (data.len() - seq) as u64;
        let starts: Vec<usize> = (0..batch)
            .map(|_| (rng.next_u64() % choices) as usize)
            .collect();
        Ok(gather(data, &starts, seq))
    }

    /// Sequential evaluation over all of `split`: non-overlapping windows of `seq` inputs, so that every byte
    /// of the split but the first is a target exactly once (the first has no context). Full windows are grouped
    /// `batch` to an [`EvalBatch`] (the last group may have fewer columns); a remainder shorter than `seq`
    /// comes last as a batch of one column. Weight each batch's mean loss by its `targets.len()` to get the
    /// split's mean.
    pub fn eval_batches(&self, split: Split, seq: usize, batch: usize) -> Result<EvalBatches<'_>> {
        if seq == 0 || batch == 0 {
            return Err(Error::Config(format!(
                "seq_len {seq} and batch {batch} must both be at least 1"
            )));
        }
        let data = self.split(split);
        if data.len() < 2 {
            return Err(Error::Config(format!(
                "the {split} split of {} has {} byte(s), too few to evaluate on (at least 2 are needed; the \
                 corpus has {} bytes, split 90/5/5)",
                self.source,
                data.len(),
                self.bytes.len()
            )));
        }
        Ok(EvalBatches {
            data,
            seq,
            batch,
            next: 0,
        })
    }

    /// The unigram baseline in bits per byte: the cross-entropy, on `split`, of the byte distribution of the
    /// training split with add-one smoothing, `p(c) = (count_train(c) + 1) / (n_train + 256)`. A model that has
    /// learnt anything beyond byte frequencies scores below it.
    pub fn unigram_bits_per_byte(&self, split: Split) -> Result<f64> {
        let eval = self.split(split);
        if eval.is_empty() {
            return Err(Error::Config(format!(
                "the {split} split of {} is empty (the corpus has {} bytes, split 90/5/5): no unigram baseline",
                self.source,
                self.bytes.len()
            )));
        }
        let train = self.split(Split::Train);
        let counts = byte_counts(train);
        let total = train.len() as f64 + 256.0;
        let bits_of: Vec<f64> = counts
            .iter()
            .map(|&c| -((c as f64 + 1.0) / total).log2())
            .collect();
        let eval_counts = byte_counts(eval);
        let bits: f64 = eval_counts
            .iter()
            .zip(&bits_of)
            .map(|(&n, &b)| n as f64 * b)
            .sum();
        Ok(bits / eval.len() as f64)
    }
}

fn byte_counts(bytes: &[u8]) -> [u64; 256] {
    let mut counts = [0u64; 256];
    for &b in bytes {
        counts[b as usize] += 1;
    }
    counts
}

/// `(inputs, targets)` `[seq, batch]` row-major from windows starting at `starts[b]`.
fn gather(data: &[u8], starts: &[usize], seq: usize) -> (Vec<u32>, Vec<u32>) {
    let batch = starts.len();
    let mut inputs = Vec::with_capacity(seq * batch);
    let mut targets = Vec::with_capacity(seq * batch);
    for t in 0..seq {
        for &s in starts {
            inputs.push(data[s + t] as u32);
            targets.push(data[s + t + 1] as u32);
        }
    }
    (inputs, targets)
}

/// One evaluation batch: `inputs` and `targets` `[seq, batch]` row-major (`t·batch + b`), ready for
/// `HourglassLM::loss(&inputs, &targets, seq, batch, false)`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EvalBatch {
    pub inputs: Vec<u32>,
    pub targets: Vec<u32>,
    pub seq: usize,
    pub batch: usize,
    /// The offset within the split of each column's first input byte.
    pub starts: Vec<usize>,
}

/// The iterator of [`Corpus::eval_batches`].
#[derive(Clone, Debug)]
pub struct EvalBatches<'a> {
    data: &'a [u8],
    seq: usize,
    batch: usize,
    /// The split offset of the next window's first input.
    next: usize,
}

impl EvalBatches<'_> {
    /// Bytes still to be predicted.
    fn remaining(&self) -> usize {
        self.data.len() - 1 - self.next
    }
}

impl Iterator for EvalBatches<'_> {
    type Item = EvalBatch;

    fn next(&mut self) -> Option<EvalBatch> {
        let remaining = self.remaining();
        if remaining == 0 {
            return None;
        }
        let full = remaining / self.seq;
        let (seq, columns) = if full > 0 {
            (self.seq, full.min(self.batch))
        } else {
            (remaining, 1)
        };
        let starts: Vec<usize> = (0..columns).map(|c| self.next + c * seq).collect();
        self.next += columns * seq;
        let (inputs, targets) = gather(self.data, &starts, seq);
        Some(EvalBatch {
            inputs,
            targets,
            seq,
            batch: columns,
            starts,
        })
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let remaining = self.remaining();
        let full = remaining / self.seq;
        let n = full.div_ceil(self.batch) + usize::from(!remaining.is_multiple_of(self.seq));
        (n, Some(n))
    }
}

impl ExactSizeIterator for EvalBatches<'_> {}

/// Where the default corpus lives once `tools/fetch-corpus.sh` has run, relative to the repository root.
pub fn default_corpus_path() -> PathBuf {
    PathBuf::from("data/enwik-excerpt.xml")
}
