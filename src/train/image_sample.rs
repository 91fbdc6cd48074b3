//! Drawing whole images from a model trained on images as byte sequences (one byte per pixel, raster order,
//! after a start byte): each image is `[start] + prompt` followed by the model's own pixels until it has
//! `rows · cols` of them, every image of a call in one batch.
//!
//! The pixels come from the text sampler's loop (`train::sample`): incremental decoding by default, a forward
//! pass over the whole sequence for each pixel with `recompute`, the same pixels either way for the same seed.
//! An image never needs the window to slide: its longest context, the start byte and every pixel but the
//! last, is `rows · cols` bytes, which must fit the model's `context`. `sample_images_until` stops at a flag
//! (Ctrl-C) like the text sampler's `generate_until`, and reports each pixel drawn (for a progress bar).

use crate::error::{Error, Result};
use crate::model::lm::HourglassLM;
use crate::ops::Backend;
use crate::train::sample::{generate_after_each, SampleOptions};
use std::sync::atomic::AtomicBool;

/// How to draw the pixels.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ImageSampling {
    /// Softmax temperature; 0 picks the most likely pixel every time (greedy).
    pub temperature: f64,
    /// Draw only among the `top_k` most likely pixel values; 0 = all 256.
    pub top_k: usize,
    /// Seeds the draws: image `i` of a call draws from the stream of sequence `i` of
    /// `train::sample::generate_all`, the first image from `seed` itself.
    pub seed: u64,
    /// The most bytes the model reads at once (its training `seq_len`): an image takes `rows · cols`.
    pub context: usize,
    /// A forward pass over the whole sequence for every pixel instead of incremental decoding (same pixels).
    pub recompute: bool,
}

impl ImageSampling {
    /// The text sampler's settings for drawing `count` images of `rows × cols` as one batch after prompts of
    /// `given` pixels each (every sequence starts from the start byte and its prompt: `1 + given` bytes), so
    /// that a caller can check them, and what they ask of memory, before drawing. Errors name the value: an
    /// empty or oversized image, a prompt longer than an image, no images, bad sampling options.
    pub(crate) fn text_options(
        &self,
        (rows, cols): (usize, usize),
        given: usize,
        count: usize,
    ) -> Result<SampleOptions> {
        let pixels = image_pixels(rows, cols, self.context)?;
        if given > pixels {
            return Err(Error::Config(format!(
                "a prompt of {given} pixels is longer than an image of {rows}×{cols} = {pixels}"
            )));
        }
        if count == 0 {
            return Err(Error::Config(
                "no images to draw: ask for at least one".into(),
            ));
        }
        let options = SampleOptions {
            length: pixels - given,
            temperature: self.temperature,
            top_k: self.top_k,
            seed: self.seed,
            context: pixels,
            num_samples: count,
            recompute: self.recompute,
        };
        // Every sequence holds at least the start byte, so only the options themselves can be wrong.
        options.validate(&[0])?;
        Ok(options)
    }
}

/// Draws one image of `rows × cols` pixels after each of `prompts` (the first pixels of that image in raster
/// order, e.g. its first `k` rows; all of one length, possibly empty), the model fed `start` before them.
/// Returns every image whole, prompt included, in the order of `prompts`. The model is put in evaluation
/// mode. Errors name the value: no prompts, an empty or oversized image, a prompt longer than an image or
/// unlike the others in length, bad sampling options, logits that are not finite.
pub fn sample_images<B: Backend, P: AsRef<[u8]>>(
    lm: &mut HourglassLM<B>,
    start: u8,
    size: (usize, usize),
    prompts: &[P],
    sampling: &ImageSampling,
) -> Result<Vec<Vec<u8>>> {
    sample_images_until(
        lm,
        start,
        size,
        prompts,
        sampling,
        &AtomicBool::new(false),
        |_| {},
    )
}

/// [`sample_images`] that stops once `stop` is raised (Ctrl-C, SIGTERM; read before each pixel), returning
/// the images as far as they were drawn: each its prompt and the same number of drawn pixels, fewer than an
/// image holds. `drawn(n)` is called once the `n`-th pixel after the prompt has been drawn for every image
/// (for a progress bar).
pub(crate) fn sample_images_until<B: Backend, P: AsRef<[u8]>>(
    lm: &mut HourglassLM<B>,
    start: u8,
    (rows, cols): (usize, usize),
    prompts: &[P],
    sampling: &ImageSampling,
    stop: &AtomicBool,
    mut drawn: impl FnMut(usize),
) -> Result<Vec<Vec<u8>>> {
    let pixels = image_pixels(rows, cols, sampling.context)?;
    let given = prompt_length(prompts, pixels)?;
    let options = sampling.text_options((rows, cols), given, prompts.len())?;
    let contexts: Vec<Vec<u8>> = prompts
        .iter()
        .map(|prompt| [&[start], prompt.as_ref()].concat())
        .collect();
    let contexts: Vec<&[u8]> = contexts.iter().map(Vec::as_slice).collect();
    let last = prompts.len() - 1;
    let mut count = 0;
    let images = generate_after_each(lm, &contexts, &options, stop, |i, _| {
        // The images of a batch get their pixels in turn: the last one's completes a pixel of all.
        if i == last {
            count += 1;
            drawn(count);
        }
        Ok(())
    })?;
    Ok(prompts
        .iter()
        .zip(images)
        .map(|(prompt, drawn)| [prompt.as_ref(), &drawn].concat())
        .collect())
}

/// The pixels of a `rows × cols` image, or an error naming the size when it is empty, cannot be counted, or
/// is longer than `context` (the model would read more than it takes).
fn image_pixels(rows: usize, cols: usize, context: usize) -> Result<usize> {
    let pixels = rows
        .checked_mul(cols)
        .filter(|&p| p > 0)
        .ok_or_else(|| {
            Error::Config(format!(
                "an image of {rows}×{cols} pixels: both sides must be at least 1 and the product countable"
            ))
        })?;
    if pixels > context {
        return Err(Error::Config(format!(
            "an image of {rows}×{cols} = {pixels} pixels needs the model to read {pixels} bytes (the start \
             byte and all but the last pixel), more than its context of {context}"
        )));
    }
    Ok(pixels)
}

/// The length every prompt shares, or an error naming the prompt that is longer than an image of `pixels`
/// or unlike the first in length, or saying there are none.
fn prompt_length<P: AsRef<[u8]>>(prompts: &[P], pixels: usize) -> Result<usize> {
    let given = prompts.first().map(|p| p.as_ref().len()).ok_or_else(|| {
        Error::Config("no images to draw: give at least one prompt (possibly empty)".into())
    })?;
    for (i, prompt) in prompts.iter().enumerate() {
        let len = prompt.as_ref().len();
        if len > pixels {
            return Err(Error::Config(format!(
                "prompt {} has {len} pixels, more than the {pixels} of an image",
                i + 1
            )));
        }
        if len != given {
            return Err(Error::Config(format!(
                "prompt {} has {len} pixels and prompt 1 has {given}: the images of one call are drawn as \
                 a batch, from prompts of one length",
                i + 1
            )));
        }
    }
    Ok(given)
}
