//! Images as byte sequences: the sampler (`train::image_sample`) draws what a full forward pass over the
//! growing sequence draws, by incremental decoding or by recomputation alike, and keeps its prompts; the PNG
//! grid (`train::image_grid`) has the documented layout, pixels, background and prompt marker; bad input to
//! either is an error naming the value.

use hourglass::config::{Depth, Positions};
use hourglass::model::lm::{HourglassLM, VOCAB};
use hourglass::rng::SeededRng;
use hourglass::train::image_grid::{
    write_image_grid, GridSpec, BACKGROUND, MARKER_THICKNESS, PROMPT_MARKER,
};
use hourglass::train::image_sample::{sample_images, ImageSampling};
use hourglass::train::sample::{padded_len, pick};
use hourglass::{Cpu, HourGlassConfig};
use std::path::Path;

/// The byte each image sequence starts with (any fixed byte does for these tests).
const START: u8 = 7;
/// The images drawn here: 4 rows of 5 pixels, 20 bytes, ragged against the factors' product 6.
const SIZE: (usize, usize) = (4, 5);
const PIXELS: usize = 20;

/// A small random model: a plain transformer (no factors), one level, or two nested levels.
fn lm(factors: &[usize]) -> HourglassLM<Cpu<f64>> {
    let mut config = HourGlassConfig::reference(2, 16, 0.0, 32, factors);
    config.positions = Positions::Rotary;
    config.depth = match factors.len() {
        0 => Some(Depth::Layers(2)),
        2 => Some(Depth::triple(1, Depth::triple(1, 1, 1), 1)),
        _ => None,
    };
    HourglassLM::new(&Cpu::new(), &config, 11).unwrap()
}

fn bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut rng = SeededRng::new(seed);
    (0..n).map(|_| (rng.next_u64() % 256) as u8).collect()
}

fn sampling(temperature: f64, recompute: bool) -> ImageSampling {
    ImageSampling {
        temperature,
        top_k: 0,
        seed: 5,
        context: PIXELS,
        recompute,
    }
}

#[test]
fn decoded_images_equal_recomputed_ones_and_keep_their_prompts() {
    for factors in [vec![], vec![3], vec![2, 3]] {
        let mut model = lm(&factors);
        // The first row of three images, and no prompt at all.
        let rows: Vec<Vec<u8>> = (0..3).map(|i| bytes(SIZE.1, i)).collect();
        for prompts in [rows, vec![Vec::new(); 2]] {
            let decoded =
                sample_images(&mut model, START, SIZE, &prompts, &sampling(1.0, false)).unwrap();
            let recomputed =
                sample_images(&mut model, START, SIZE, &prompts, &sampling(1.0, true)).unwrap();
            assert_eq!(decoded, recomputed, "factors {factors:?}");
            assert_eq!(decoded.len(), prompts.len());
            for (image, prompt) in decoded.iter().zip(&prompts) {
                assert_eq!(image.len(), PIXELS);
                assert_eq!(&image[..prompt.len()], prompt.as_slice());
            }
            assert_ne!(decoded[0], decoded[1], "each image draws its own pixels");
        }
    }
}

/// Every image's pixels drawn one at a time, each from the logits that a forward pass over the whole image
/// sequence (`[START] + pixels so far`, padded with zeros) gives at its last real position; image `i` draws
/// with `rngs[i]`.
fn drawn_by_full_passes(
    model: &mut HourglassLM<Cpu<f64>>,
    prompts: &[Vec<u8>],
    temperature: f64,
    rngs: &mut [SeededRng],
) -> Vec<Vec<u8>> {
    model.train(false);
    let len = padded_len(model.hourglass.config(), PIXELS).unwrap();
    let mut images = prompts.to_vec();
    for (image, rng) in images.iter_mut().zip(rngs) {
        while image.len() < PIXELS {
            let mut ids = vec![0u32; len];
            ids[0] = START as u32;
            for (t, &pixel) in image.iter().enumerate() {
                ids[t + 1] = pixel as u32;
            }
            let logits = model.forward(&ids, len, 1).unwrap().to_f64_vec().unwrap();
            let last = image.len();
            image.push(pick(
                &logits[last * VOCAB..(last + 1) * VOCAB],
                temperature,
                0,
                rng,
            ));
        }
    }
    images
}

#[test]
fn images_are_what_full_forward_passes_over_the_growing_sequence_draw() {
    for factors in [vec![3], vec![2, 3]] {
        let mut model = lm(&factors);
        // Prompts that end inside a row, and inside a shortening window.
        let prompts: Vec<Vec<u8>> = (0..3).map(|i| bytes(7, 10 + i)).collect();
        // Greedy: every image follows its own prompt.
        let greedy =
            sample_images(&mut model, START, SIZE, &prompts, &sampling(0.0, false)).unwrap();
        let mut unused: Vec<SeededRng> = (0..3).map(SeededRng::new).collect();
        let want = drawn_by_full_passes(&mut model, &prompts, 0.0, &mut unused);
        assert_eq!(greedy, want, "factors {factors:?}");
        // Drawn: the first image from the seed's own stream.
        let drawn =
            sample_images(&mut model, START, SIZE, &prompts, &sampling(1.0, false)).unwrap();
        let mut rng = [SeededRng::new(sampling(1.0, false).seed)];
        let want = drawn_by_full_passes(&mut model, &prompts[..1], 1.0, &mut rng);
        assert_eq!(drawn[0], want[0], "factors {factors:?}");
    }
}

#[test]
fn bad_image_sampling_is_an_error_naming_the_value() {
    let mut model = lm(&[2]);
    let ok = sampling(1.0, false);
    // One prompt of the first row.
    let row = [vec![1u8; 5]];
    let error = |size: (usize, usize), prompts: &[Vec<u8>], options: ImageSampling| {
        sample_images(&mut lm(&[2]), START, size, prompts, &options)
            .unwrap_err()
            .to_string()
    };
    let cases = [
        (error(SIZE, &[], ok), "no images"),
        (
            error(SIZE, &[vec![0; 21]], ok),
            "prompt 1 has 21 pixels, more than the 20",
        ),
        (
            error(SIZE, &[row[0].clone(), vec![0; 6]], ok),
            "prompt 2 has 6 pixels and prompt 1 has 5",
        ),
        (
            error(SIZE, &row, ImageSampling { context: 19, ..ok }),
            "4×5 = 20 pixels",
        ),
        (error((0, 5), &[], ok), "0×5"),
        (
            error((usize::MAX, 2), &[], ok),
            &format!("{}×2", usize::MAX),
        ),
        (error(SIZE, &row, sampling(-1.0, false)), "temperature"),
        (
            error(SIZE, &row, ImageSampling { top_k: 257, ..ok }),
            "top_k 257",
        ),
    ];
    for (err, words) in &cases {
        assert!(err.contains(words), "{err}");
    }
    // A prompt as long as the image draws nothing and is the image.
    let whole = bytes(PIXELS, 1);
    let images = sample_images(&mut model, START, SIZE, &[&whole], &ok).unwrap();
    assert_eq!(images, vec![whole]);
}

#[test]
fn the_grid_has_the_layout_pixels_background_and_prompt_marker_documented() {
    let dir = crate::common::scratch_dir("grid", "layout");
    let path = dir.join("grid.png");
    // Five images of 3 × 2 with distinct gray values, their first row the prompt.
    let spec = GridSpec {
        rows: 3,
        cols: 2,
        scale: 3,
        gap: 2,
        prompt_rows: 1,
    };
    let images: Vec<Vec<u8>> = (0..5)
        .map(|i| (0..6).map(|j| (i * 40 + j * 7) as u8).collect())
        .collect();
    write_image_grid(&path, &images, &spec).unwrap();
    let (width, height, pixels) = crate::common::decode_png(&path);
    // ⌈√5⌉ = 3 columns, 2 rows; cells 2·3 wide and 3·3 + the marker high, a gap around each.
    let (cell_w, cell_h) = (6, 9 + MARKER_THICKNESS);
    assert_eq!(
        (width, height),
        (3 * (cell_w + 2) + 2, 2 * (cell_h + 2) + 2)
    );
    let at = |x: u32, y: u32| pixels[(y * width + x) as usize];
    let mut painted = 0;
    for (i, image) in images.iter().enumerate() {
        let (x0, y0) = (
            2 + (i as u32 % 3) * (cell_w + 2),
            2 + (i as u32 / 3) * (cell_h + 2),
        );
        for (j, &value) in image.iter().enumerate() {
            let (r, c) = ((j / 2) as u32, (j % 2) as u32);
            let shift = if r >= 1 { MARKER_THICKNESS } else { 0 };
            for (dx, dy) in (0..3).flat_map(|dx| (0..3).map(move |dy| (dx, dy))) {
                let (x, y) = (x0 + 3 * c + dx, y0 + 3 * r + shift + dy);
                assert_eq!(at(x, y), [value; 3], "image {i}, pixel {j}");
                painted += 1;
            }
        }
        // The marker under the prompt row, across the cell; background just outside it.
        for x in x0..x0 + cell_w {
            for y in y0 + 3..y0 + 3 + MARKER_THICKNESS {
                assert_eq!(at(x, y), PROMPT_MARKER, "image {i} at ({x}, {y})");
                painted += 1;
            }
        }
        assert_eq!(at(x0 - 1, y0 + 3), BACKGROUND);
        assert_eq!(at(x0 + cell_w, y0 + 3), BACKGROUND);
    }
    // Everything else, the sixth (empty) cell included, is background.
    let background = pixels.iter().filter(|&&p| p == BACKGROUND).count();
    assert_eq!(background + painted, (width * height) as usize);
    assert_eq!(at(0, 0), BACKGROUND);
    assert_eq!(at(2 + 2 * (cell_w + 2), 2 + cell_h + 2), BACKGROUND);
}

#[test]
fn sixteen_images_make_a_square_and_a_marker_only_between_prompt_and_drawn_rows() {
    let dir = crate::common::scratch_dir("grid", "square");
    let path = dir.join("grid.png");
    let images: Vec<Vec<u8>> = (0..16).map(|i| bytes(28 * 28, i)).collect();
    let spec = |prompt_rows| GridSpec {
        rows: 28,
        cols: 28,
        scale: 4,
        gap: 4,
        prompt_rows,
    };
    let markers = |path: &Path| {
        crate::common::decode_png(path)
            .2
            .iter()
            .filter(|&&p| p == PROMPT_MARKER)
            .count()
    };
    // No prompt, or all of the image given: no marker, 4 × 4 cells of 112 × 112.
    for prompt_rows in [0, 28] {
        write_image_grid(&path, &images, &spec(prompt_rows)).unwrap();
        let (width, height, _) = crate::common::decode_png(&path);
        assert_eq!((width, height), (4 * 116 + 4, 4 * 116 + 4));
        assert_eq!(markers(&path), 0);
    }
    // The first 14 rows given: a marker line in each cell.
    write_image_grid(&path, &images, &spec(14)).unwrap();
    let (width, height, _) = crate::common::decode_png(&path);
    assert_eq!(
        (width, height),
        (4 * 116 + 4, 4 * (116 + MARKER_THICKNESS) + 4)
    );
    assert_eq!(markers(&path), 16 * 112 * MARKER_THICKNESS as usize);
}

#[test]
fn bad_grids_are_errors_naming_the_value_and_write_nothing() {
    let dir = crate::common::scratch_dir("grid", "errors");
    let path = dir.join("bad.png");
    let ok = GridSpec {
        rows: 3,
        cols: 2,
        scale: 4,
        gap: 1,
        prompt_rows: 0,
    };
    // One image of 3 × 2.
    let six = [vec![0u8; 6]];
    let cases: [(&[Vec<u8>], GridSpec, &str); 6] = [
        (&[], ok, "no images"),
        (
            &[six[0].clone(), vec![0; 5]],
            ok,
            "image 2 has 5 pixels, not the 3×2 = 6",
        ),
        (&six, GridSpec { scale: 0, ..ok }, "scale 0"),
        (&six, GridSpec { rows: 0, ..ok }, "0×2"),
        (
            &six,
            GridSpec {
                prompt_rows: 4,
                ..ok
            },
            "prompt_rows 4",
        ),
        (
            &six,
            GridSpec {
                scale: 10_000,
                ..ok
            },
            "scale 10000",
        ),
    ];
    for (images, spec, words) in cases {
        let err = write_image_grid(&path, images, &spec)
            .unwrap_err()
            .to_string();
        assert!(err.contains("bad.png") && err.contains(words), "{err}");
        assert!(!path.exists());
    }
    let missing = dir.join("no-such-dir").join("grid.png");
    let err = write_image_grid(&missing, &six, &ok).unwrap_err();
    assert!(err.to_string().contains("no-such-dir"), "{err}");
}
