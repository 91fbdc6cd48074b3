//! Grayscale images (one byte per pixel, raster order: 0 black, 255 white) as one PNG grid, e.g. the images a
//! model drew (`train::image_sample`).
//!
//! The layout: `⌈√n⌉` columns and as many rows as the `n` images fill (16 images: 4 × 4; 5: 3 × 2), row by
//! row; each image pixel a square of `scale × scale`; `gap` pixels of `BACKGROUND` around and between the
//! cells (the cells the last row leaves empty are background too). Images completed from a prompt of their
//! first `prompt_rows` rows show where the prompt ends: a line `MARKER_THICKNESS` pixels high in
//! `PROMPT_MARKER` across the cell between the last prompt row and the first drawn one. The line is inserted,
//! not drawn over pixels (a cell is that much taller), so every pixel of the image stays visible.
//!
//! The PNG is written atomically (`crate::fs::write_atomic`): a reader never sees half a file.

use std::path::Path;

use tiny_skia::{IntSize, Pixmap};

use crate::error::{Error, Result};

/// An RGB colour.
pub type Colour = [u8; 3];
/// Around and between the cells, and in empty cells: a blue grey, unlike any gray pixel.
pub const BACKGROUND: Colour = [64, 80, 112];
/// The line between a cell's prompt rows and its drawn rows.
pub const PROMPT_MARKER: Colour = [230, 60, 30];
/// The height of the prompt marker, in PNG pixels.
pub const MARKER_THICKNESS: u32 = 2;
/// The scale the command line draws images at: a 28 × 28 image is 112 × 112, large enough to judge by eye,
/// and 16 of them make a PNG of about 470 × 470.
pub const SCALE: u32 = 4;
/// The gap the command line leaves around and between the cells, in PNG pixels.
pub const GAP: u32 = 4;
/// The largest PNG side accepted (larger is a mistake in the scale or the number of images).
const MAX_SIDE: u32 = 16_384;

/// What the grid shows of each image, and how large.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GridSpec {
    /// Pixel rows of each image.
    pub rows: usize,
    /// Pixel columns of each image.
    pub cols: usize,
    /// PNG pixels per image pixel along each side (4 shows a 28 × 28 image as 112 × 112).
    pub scale: u32,
    /// PNG pixels of background around and between the cells.
    pub gap: u32,
    /// The first `prompt_rows` rows of every image were given and the rest drawn: the prompt marker goes
    /// between them. 0 (all drawn) or `rows` (all given): no marker.
    pub prompt_rows: usize,
}

impl GridSpec {
    /// Images of `rows × cols` at [`SCALE`] with a [`GAP`] between them, the first `prompt_rows` rows given.
    pub(crate) fn new(rows: usize, cols: usize, prompt_rows: usize) -> Self {
        Self {
            rows,
            cols,
            scale: SCALE,
            gap: GAP,
            prompt_rows,
        }
    }
}

/// The sizes a grid of images is drawn with, in PNG pixels.
struct Layout {
    columns: u32,
    cell_width: u32,
    cell_height: u32,
    /// The image row the prompt marker goes above (`prompt_rows`), when there is one; it moves that row and
    /// those below it down by `MARKER_THICKNESS`.
    marker_row: Option<usize>,
    width: u32,
    height: u32,
}

/// Writes `images` (each `spec.rows × spec.cols` bytes) as one PNG grid at `path` (see the module for the
/// layout and the prompt marker). Errors, naming the file and the value: no images, an image of another
/// length, a scale of 0, `prompt_rows` past the image, a PNG larger than 16384 on a side, a path that cannot
/// be written.
pub fn write_image_grid<I: AsRef<[u8]>>(path: &Path, images: &[I], spec: &GridSpec) -> Result<()> {
    let invalid = |msg: String| {
        Error::Io(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("cannot draw {}: {msg}", path.display()),
        ))
    };
    let layout = layout(images.len(), spec).map_err(invalid)?;
    let pixels = spec.rows * spec.cols;
    if let Some((i, image)) = images
        .iter()
        .enumerate()
        .find(|(_, image)| image.as_ref().len() != pixels)
    {
        return Err(invalid(format!(
            "image {} has {} pixels, not the {}×{} = {pixels} of the grid",
            i + 1,
            image.as_ref().len(),
            spec.rows,
            spec.cols
        )));
    }
    let pixmap = draw(images, spec, &layout);
    let png = pixmap
        .encode_png()
        .map_err(|e| invalid(format!("PNG encoding failed: {e}")))?;
    Ok(crate::fs::write_atomic(path, &png)?)
}

/// The layout of `count` images of `spec`, or a message naming the value that rules it out.
fn layout(count: usize, spec: &GridSpec) -> std::result::Result<Layout, String> {
    if count == 0 {
        return Err("no images to draw".into());
    }
    if spec.rows == 0 || spec.cols == 0 || spec.scale == 0 {
        return Err(format!(
            "images of {}×{} pixels at scale {}: each must be at least 1",
            spec.rows, spec.cols, spec.scale
        ));
    }
    if spec.prompt_rows > spec.rows {
        return Err(format!(
            "prompt_rows {} is more than the {} rows of an image",
            spec.prompt_rows, spec.rows
        ));
    }
    let marker_row =
        (spec.prompt_rows > 0 && spec.prompt_rows < spec.rows).then_some(spec.prompt_rows);
    let columns = (1..=count).find(|c| c * c >= count).unwrap_or(count);
    let grid_rows = count.div_ceil(columns);
    let too_large = || {
        format!(
            "{count} images of {}×{} pixels at scale {} with a gap of {} make a PNG larger than \
             {MAX_SIDE} on a side",
            spec.rows, spec.cols, spec.scale, spec.gap
        )
    };
    // `cells` cells of `cell` PNG pixels with a gap before each and after the last.
    let side = |cells: usize, cell: u32| {
        let cells = u32::try_from(cells).ok()?;
        let side = cells
            .checked_mul(cell.checked_add(spec.gap)?)?
            .checked_add(spec.gap)?;
        (side <= MAX_SIDE).then_some(side)
    };
    let scaled = |pixels: usize| u32::try_from(pixels).ok()?.checked_mul(spec.scale);
    let cell_width = scaled(spec.cols).ok_or_else(too_large)?;
    let cell_height = scaled(spec.rows)
        .and_then(|h| {
            h.checked_add(if marker_row.is_some() {
                MARKER_THICKNESS
            } else {
                0
            })
        })
        .ok_or_else(too_large)?;
    Ok(Layout {
        columns: columns as u32,
        cell_width,
        cell_height,
        marker_row,
        width: side(columns, cell_width).ok_or_else(too_large)?,
        height: side(grid_rows, cell_height).ok_or_else(too_large)?,
    })
}

/// The grid of checked `images` as a pixmap.
fn draw<I: AsRef<[u8]>>(images: &[I], spec: &GridSpec, layout: &Layout) -> Pixmap {
    let mut canvas = Canvas {
        rgba: [BACKGROUND[0], BACKGROUND[1], BACKGROUND[2], 255]
            .repeat((layout.width * layout.height) as usize),
        width: layout.width,
    };
    let scale = spec.scale;
    for (i, image) in images.iter().enumerate() {
        let (column, row) = (i as u32 % layout.columns, i as u32 / layout.columns);
        let x0 = spec.gap + column * (layout.cell_width + spec.gap);
        let y0 = spec.gap + row * (layout.cell_height + spec.gap);
        for (r, line) in image.as_ref().chunks(spec.cols).enumerate() {
            let below_marker = layout.marker_row.is_some_and(|m| r >= m);
            let y = y0 + r as u32 * scale + if below_marker { MARKER_THICKNESS } else { 0 };
            for (c, &value) in line.iter().enumerate() {
                let x = x0 + c as u32 * scale;
                canvas.fill((x, y), (scale, scale), [value; 3]);
            }
        }
        if let Some(m) = layout.marker_row {
            let y = y0 + m as u32 * scale;
            canvas.fill(
                (x0, y),
                (layout.cell_width, MARKER_THICKNESS),
                PROMPT_MARKER,
            );
        }
    }
    let size = IntSize::from_wh(layout.width, layout.height).expect("a layout of nonzero sides");
    Pixmap::from_vec(canvas.rgba, size).expect("an opaque RGBA buffer of the layout's size")
}

/// Opaque RGBA pixels, row by row (opaque, so tiny-skia's premultiplied form is the plain one).
struct Canvas {
    rgba: Vec<u8>,
    width: u32,
}

impl Canvas {
    /// Paints the rectangle of `(w, h)` pixels whose top-left corner is `(x, y)`.
    fn fill(&mut self, (x, y): (u32, u32), (w, h): (u32, u32), colour: Colour) {
        let pixel = [colour[0], colour[1], colour[2], 255];
        for row in y..y + h {
            let start = 4 * (row * self.width + x) as usize;
            for dest in self.rgba[start..start + 4 * w as usize].chunks_exact_mut(4) {
                dest.copy_from_slice(&pixel);
            }
        }
    }
}
