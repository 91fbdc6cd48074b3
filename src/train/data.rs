//! Byte-level training data: a corpus file read as raw bytes (any text or binary file; the default is the
//! Wikipedia excerpt `tools/fetch-corpus.sh` puts in `data/`), split 90/5/5 by bytes into train / valid / test
//! like enwik8, random training batches, sequential evaluation windows covering a whole split, and the unigram
//! baseline a trained model must beat.
//!
//! Or images (`Corpus::images`, e.g. Fashion-MNIST read by `train::images`): one byte per pixel, each image a
//! sequence of its own, never a window across two. Its inputs are [`START`] and the image's pixels but the
//! last, its targets every pixel, so the mean loss scores every pixel, the first (predicted from the start
//! alone) included: divided by ln 2 it is bits per dimension as the image-modelling literature reports it.
//!
//! Batches are `[seq, batch]` byte ids flattened row-major (`t·batch + b`), the layout
//! [`HourglassLM::loss`](crate::model::lm::HourglassLM::loss) takes, with the targets the next byte of each
//! input.

use super::images::{default_image_folder, load_image_folder, Images};
use crate::error::{Error, Result};
use crate::rng::SeededRng;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::path::{Path, PathBuf};

/// The input before an image's first pixel, which is therefore predicted from nothing but the start: the
/// vocabulary stays the 256 bytes, so the start is one of them. It is the rarest pixel value of Fashion-MNIST's
/// training images (0.09% of them; 0, the background, is half), so that it is unlike the blank margin after it;
/// the choice matters little: with 0 instead, 400 steps of the CPU preset scored 3.319 bits per dimension
/// against 3.312.
pub const START: u8 = 251;

/// Training images held out for validation (`Corpus::images`), at most: 2,000 of Fashion-MNIST's 60,000 (the
/// 10,000 test images stay for `hourglass eval`), so that the validation at the end of a CPU run, 1.6M pixels
/// of forward passes, takes under a minute on two cores, while averaging over many more images than a
/// periodic validation's few batches.
pub const VALID_IMAGES: usize = 2000;

/// What a corpus holds, and so how its bytes become sequences; a training run records it
/// (`TrainConfig::data`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum DataKind {
    /// A stream of bytes (text), read in windows that start anywhere.
    #[default]
    Bytes,
    /// Whole images of `rows × cols` one-byte pixels, raster order: one image a sequence of `rows · cols`.
    Images { rows: usize, cols: usize },
}

impl DataKind {
    /// How a run on this data names its losses.
    pub fn units(self) -> Units {
        match self {
            DataKind::Bytes => Units {
                long: "bits per character",
                short: "bpc",
                key: "bits_per_char",
                baseline: "unigram baseline",
                baseline_key: "unigram",
            },
            DataKind::Images { .. } => Units {
                long: "bits per dimension",
                short: "bpd",
                key: "bits_per_dim",
                baseline: "training-set pixel-histogram baseline",
                baseline_key: "pixel_histogram",
            },
        }
    }

    /// Reads the data of this kind at `path`: a file of bytes, or an image folder (`train::images`) whose
    /// images must be `rows × cols`.
    pub fn open(self, path: &Path) -> Result<Corpus> {
        match self {
            DataKind::Bytes => Corpus::load(path),
            DataKind::Images { .. } => {
                let corpus = load_image_folder(path)?;
                if corpus.kind() != self {
                    return Err(Error::Config(format!(
                        "{} holds {}, but the run is over {self}",
                        corpus.source(),
                        corpus.kind()
                    )));
                }
                Ok(corpus)
            }
        }
    }

    /// Where the data of this kind is read from unless told: `data/enwik-excerpt.xml`
    /// (`tools/fetch-corpus.sh`) or `data/fashion-mnist` (`tools/fetch-images.sh`).
    pub(crate) fn default_path(self) -> PathBuf {
        match self {
            DataKind::Bytes => default_corpus_path(),
            DataKind::Images { .. } => default_image_folder(),
        }
    }
}

impl fmt::Display for DataKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DataKind::Bytes => f.write_str("bytes"),
            DataKind::Images { rows, cols } => write!(f, "{rows}x{cols} images"),
        }
    }
}

/// The words a run's printouts, curve and logs name its losses with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Units {
    /// "bits per character" or "bits per dimension".
    pub long: &'static str,
    /// "bpc" or "bpd".
    pub short: &'static str,
    /// In CSV and JSON keys: "bits_per_char" or "bits_per_dim".
    pub key: &'static str,
    /// What `Corpus::unigram_bits_per_byte` is called.
    pub baseline: &'static str,
    /// The same in JSON keys.
    pub baseline_key: &'static str,
}

/// One of the three parts of a corpus.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Split {
    /// The first 90% of the bytes; of images, the training images but the last [`VALID_IMAGES`].
    Train,
    /// The next 5%; of images, the training images held out.
    Valid,
    /// The last 5%; of images, the test images.
    Test,
}

impl Split {
    pub const ALL: [Split; 3] = [Split::Train, Split::Valid, Split::Test];

    pub(crate) fn name(self) -> &'static str {
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
/// `[0, ⌊0.9n⌋)`, valid `[⌊0.9n⌋, ⌊0.95n⌋)` and test the rest (enwik8's 90M / 5M / 5M for `n` = 10⁸). Or a
/// corpus of whole images (`Corpus::images`), split by image.
#[derive(Clone, Debug)]
pub struct Corpus {
    bytes: Vec<u8>,
    train_end: usize,
    valid_end: usize,
    /// Where the bytes came from, for error messages: the file's path, or "in-memory corpus".
    source: String,
    kind: DataKind,
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
            kind: DataKind::Bytes,
        })
    }

    /// A corpus of whole images: Train is `train` but its last `min(VALID_IMAGES, count / 10)` images, which
    /// are Valid (a tenth of a small set, so that one of a few hundred images still trains on most of them),
    /// and Test is `test`. Errors unless the two have one size and `train` holds at least 10 images.
    pub fn images(train: Images, test: Images, source: impl Into<String>) -> Result<Self> {
        let source = source.into();
        let (rows, cols) = (train.rows(), train.cols());
        if (test.rows(), test.cols()) != (rows, cols) {
            return Err(Error::Config(format!(
                "{source}: the training images are {rows}x{cols} but the test images {}x{}",
                test.rows(),
                test.cols()
            )));
        }
        let held_out = VALID_IMAGES.min(train.count() / 10);
        if held_out == 0 {
            return Err(Error::Config(format!(
                "{source} has {} training image(s), too few to hold a tenth out for validation (at least 10 \
                 are needed)",
                train.count()
            )));
        }
        let valid_end = train.pixels().len();
        let train_end = valid_end - held_out * train.size();
        let mut bytes = train.into_pixels();
        bytes.extend_from_slice(test.pixels());
        Ok(Self {
            bytes,
            train_end,
            valid_end,
            source,
            kind: DataKind::Images { rows, cols },
        })
    }

    /// Bytes, or images of one size.
    pub fn kind(&self) -> DataKind {
        self.kind
    }

    /// A split's size in the corpus's units: `304487 bytes`, or `2000 images`.
    pub fn describe(&self, split: Split) -> String {
        let bytes = self.split(split).len();
        match self.kind {
            DataKind::Bytes => format!("{bytes} bytes"),
            DataKind::Images { rows, cols } => format!("{} images", bytes / (rows * cols)),
        }
    }

    /// Bytes of a split read before its first target: the first byte of a text, which has no context; none of
    /// images, whose first pixel is predicted from [`START`].
    fn unscored(&self) -> usize {
        match self.kind {
            DataKind::Bytes => 1,
            DataKind::Images { .. } => 0,
        }
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
    /// `seq` inputs and the byte after it); of images, that `seq` is one image's pixels.
    fn check_window(&self, split: Split, seq: usize, batch: usize) -> Result<&[u8]> {
        self.check_shape(seq, batch)?;
        let data = self.split(split);
        if self.kind != DataKind::Bytes {
            return Ok(data);
        }
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

    /// Checks `seq` and `batch` are positive, and of images that `seq` is `rows · cols`.
    fn check_shape(&self, seq: usize, batch: usize) -> Result<()> {
        if seq == 0 || batch == 0 {
            return Err(Error::Config(format!(
                "seq_len {seq} and batch {batch} must both be at least 1"
            )));
        }
        match self.kind {
            DataKind::Images { rows, cols } if seq != rows * cols => Err(Error::Config(format!(
                "seq_len {seq} does not fit {}: each of its {rows}x{cols} images is one sequence, so seq_len \
                 must be {rows}·{cols} = {}",
                self.source,
                rows * cols
            ))),
            _ => Ok(()),
        }
    }

    /// A random training batch: `batch` windows of `seq` consecutive bytes from `split`, each starting at a
    /// uniformly drawn offset (one `rng.next_u64()` per column, in column order); of images, `batch` whole
    /// images drawn alike. Returns `(inputs, targets)`, both `[seq, batch]` row-major (`t·batch + b`), with
    /// `targets[t·batch + b]` the byte after `inputs[t·batch + b]` (of images: `inputs` are [`START`] and
    /// the image but its last pixel, `targets` the image). The same rng state gives the same batch.
    pub fn batch(
        &self,
        split: Split,
        seq: usize,
        batch: usize,
        rng: &mut SeededRng,
    ) -> Result<(Vec<u32>, Vec<u32>)> {
        let data = self.check_window(split, seq, batch)?;
        // Text: offsets 0..=len-seq-1 keep the last target inside the split. Images: the starts of images.
        let (choices, stride) = match self.kind {
            DataKind::Bytes => (data.len() - seq, 1),
            DataKind::Images { .. } => (data.len() / seq, seq),
        };
        let starts: Vec<usize> = (0..batch)
            .map(|_| (rng.next_u64() % choices as u64) as usize * stride)
            .collect();
        Ok(self.gather(data, &starts, seq))
    }

    /// Sequential evaluation over all of `split`: non-overlapping windows of `seq` inputs, so that every byte
    /// of the split but the first is a target exactly once (the first has no context); of images, every image
    /// once, every pixel a target. Full windows are grouped `batch` to an [`EvalBatch`] (the last group may
    /// have fewer columns); a remainder shorter than `seq` (never of images) comes last as a batch of one
    /// column. Weight each batch's mean loss by its `targets.len()` to get the split's mean.
    pub fn eval_batches(&self, split: Split, seq: usize, batch: usize) -> Result<EvalBatches<'_>> {
        self.check_shape(seq, batch)?;
        let data = self.split(split);
        if data.len() < 1 + self.unscored() {
            return Err(Error::Config(format!(
                "the {split} split of {} has {} byte(s), too few to evaluate on (at least 2 are needed; the \
                 corpus has {} bytes, split 90/5/5)",
                self.source,
                data.len(),
                self.bytes.len()
            )));
        }
        Ok(EvalBatches {
            corpus: self,
            data,
            seq,
            batch,
            next: 0,
        })
    }

    /// `(inputs, targets)` `[seq, batch]` row-major from the windows (text) or images at `starts[b]` of
    /// `data`: every input the byte before its target, but an image's first, [`START`].
    fn gather(&self, data: &[u8], starts: &[usize], seq: usize) -> (Vec<u32>, Vec<u32>) {
        let first_target = self.unscored();
        let mut inputs = Vec::with_capacity(seq * starts.len());
        let mut targets = Vec::with_capacity(seq * starts.len());
        for t in 0..seq {
            for &s in starts {
                let target = s + first_target + t;
                let input = if target == s { START } else { data[target - 1] };
                inputs.push(input as u32);
                targets.push(data[target] as u32);
            }
        }
        (inputs, targets)
    }

    /// The unigram baseline in bits per byte: the cross-entropy, on `split`, of the byte distribution of the
    /// training split with add-one smoothing, `p(c) = (count_train(c) + 1) / (n_train + 256)`. A model that has
    /// learnt anything beyond byte frequencies scores below it. Of images, every pixel scored by the training
    /// images' pixel histogram: the baseline of a model that knows nothing of where a pixel is or what is
    /// around it.
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

/// One evaluation batch: `inputs` and `targets` `[seq, batch]` row-major (`t·batch + b`), ready for
/// `HourglassLM::loss(&inputs, &targets, seq, batch, false)`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EvalBatch {
    pub inputs: Vec<u32>,
    pub targets: Vec<u32>,
    pub seq: usize,
    pub batch: usize,
    /// The offset within the split of each column's first input byte; of images, of each column's image.
    pub starts: Vec<usize>,
}

/// The iterator of [`Corpus::eval_batches`].
#[derive(Clone, Debug)]
pub struct EvalBatches<'a> {
    corpus: &'a Corpus,
    data: &'a [u8],
    seq: usize,
    batch: usize,
    /// The split offset of the next window's first input.
    next: usize,
}

impl EvalBatches<'_> {
    /// Bytes still to be predicted.
    fn remaining(&self) -> usize {
        self.data.len() - self.corpus.unscored() - self.next
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
        let (inputs, targets) = self.corpus.gather(self.data, &starts, seq);
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
