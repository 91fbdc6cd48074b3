//! Images as training data: the IDX files of MNIST and Fashion-MNIST (LeCun et al.'s format: a 16-byte header,
//! then one unsigned byte per pixel, image after image, rows in raster order) and the folder
//! `tools/fetch-images.sh` fills, read into a [`Corpus`] of whole images (`Corpus::images`).

use super::data::Corpus;
use crate::error::{Error, Result};
use std::path::{Path, PathBuf};

/// The training images' file name in a Fashion-MNIST (or MNIST) folder.
pub const TRAIN_FILE: &str = "train-images-idx3-ubyte";
/// The test images' file name.
pub const TEST_FILE: &str = "t10k-images-idx3-ubyte";

/// An IDX file's magic number for unsigned bytes in 3 dimensions (images × rows × columns).
const IDX_IMAGES_MAGIC: u32 = 0x0000_0803;
/// The magic number and the three dimensions, big-endian u32 each.
const IDX_HEADER_BYTES: usize = 16;

/// Images of one size with one byte per pixel, in raster order, one after another.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Images {
    rows: usize,
    cols: usize,
    pixels: Vec<u8>,
}

impl Images {
    /// `pixels` as images of `rows × cols`; errors unless they hold a whole, positive number of such images.
    pub fn new(rows: usize, cols: usize, pixels: Vec<u8>) -> Result<Self> {
        let size = rows.checked_mul(cols).unwrap_or(0);
        if size == 0 || pixels.is_empty() || !pixels.len().is_multiple_of(size) {
            return Err(Error::Config(format!(
                "{} pixels are not a whole, positive number of {rows}x{cols} images",
                pixels.len()
            )));
        }
        Ok(Self { rows, cols, pixels })
    }

    /// Pixel rows of each image.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Pixel columns of each image.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Pixels per image: `rows · cols`.
    pub fn size(&self) -> usize {
        self.rows * self.cols
    }

    /// How many images.
    pub fn count(&self) -> usize {
        self.pixels.len() / self.size()
    }

    /// Every pixel, image after image.
    pub fn pixels(&self) -> &[u8] {
        &self.pixels
    }

    /// Every pixel, image after image, without a copy.
    pub(crate) fn into_pixels(self) -> Vec<u8> {
        self.pixels
    }
}

/// Reads an IDX file of images (magic 0x00000803: unsigned bytes, 3 dimensions). A missing or unreadable
/// file, a header that is cut short, another magic number, a dimension of 0, or a length other than the 16-byte
/// header plus `images · rows · columns` bytes is an error naming the file and what is wrong.
pub fn read_idx_images(path: &Path) -> Result<Images> {
    let bytes = std::fs::read(path).map_err(|e| {
        Error::Io(std::io::Error::new(
            e.kind(),
            format!("image file {}: {e}", path.display()),
        ))
    })?;
    parse_idx_images(&bytes).map_err(|what| {
        Error::Io(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("image file {}: {what}", path.display()),
        ))
    })
}

/// The images of an IDX file's bytes, or what is wrong with them.
fn parse_idx_images(bytes: &[u8]) -> std::result::Result<Images, String> {
    if bytes.len() < IDX_HEADER_BYTES {
        return Err(format!(
            "truncated: {} bytes, fewer than the {IDX_HEADER_BYTES} of an IDX header",
            bytes.len()
        ));
    }
    let word = |i: usize| u32::from_be_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
    let magic = word(0);
    if magic != IDX_IMAGES_MAGIC {
        return Err(format!(
            "magic number 0x{magic:08x}, expected 0x{IDX_IMAGES_MAGIC:08x} (IDX images: unsigned bytes, 3 \
             dimensions)"
        ));
    }
    let [count, rows, cols] = [word(4), word(8), word(12)].map(|d| d as usize);
    if count == 0 || rows == 0 || cols == 0 {
        return Err(format!(
            "the header gives {count} images of {rows}x{cols}: every dimension must be at least 1"
        ));
    }
    let expected = count
        .checked_mul(rows)
        .and_then(|n| n.checked_mul(cols))
        .and_then(|n| n.checked_add(IDX_HEADER_BYTES));
    if expected != Some(bytes.len()) {
        let need = expected.map_or("more than can be counted".to_string(), |n| n.to_string());
        return Err(format!(
            "{} bytes, but the header's {count} images of {rows}x{cols} need {IDX_HEADER_BYTES} + \
             {count}·{rows}·{cols} = {need} ({})",
            bytes.len(),
            if expected.is_some_and(|n| n < bytes.len()) {
                "too long"
            } else {
                "truncated"
            }
        ));
    }
    Images::new(rows, cols, bytes[IDX_HEADER_BYTES..].to_vec()).map_err(|e| e.to_string())
}

/// Reads a Fashion-MNIST (or MNIST) folder: [`TRAIN_FILE`] and [`TEST_FILE`], whose images must have the
/// same size, as a corpus of whole images (`Corpus::images`: the training images less a held-out tail for
/// validation, and the test images). A missing folder or file names `tools/fetch-images.sh`, which fetches it.
pub fn load_image_folder(dir: &Path) -> Result<Corpus> {
    let read = |name: &str| {
        let path = dir.join(name);
        read_idx_images(&path).map_err(|e| match e {
            Error::Io(io) if io.kind() == std::io::ErrorKind::NotFound => Error::Io(std::io::Error::new(
                io.kind(),
                format!("{io} (Fashion-MNIST is fetched into data/fashion-mnist by tools/fetch-images.sh)"),
            )),
            other => other,
        })
    };
    let (train, test) = (read(TRAIN_FILE)?, read(TEST_FILE)?);
    if (train.rows, train.cols) != (test.rows, test.cols) {
        return Err(Error::Config(format!(
            "image folder {}: {TRAIN_FILE} holds {}x{} images but {TEST_FILE} {}x{}; both must be one size",
            dir.display(),
            train.rows,
            train.cols,
            test.rows,
            test.cols
        )));
    }
    Corpus::images(train, test, format!("image folder {}", dir.display()))
}

/// Where Fashion-MNIST lives once `tools/fetch-images.sh` has run, relative to the repository root.
pub fn default_image_folder() -> PathBuf {
    PathBuf::from("data/fashion-mnist")
}
