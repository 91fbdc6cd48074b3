//! The training curves as a PNG: training loss and validation bits per character against the optimiser step,
//! with an optional horizontal baseline (e.g. the unigram bits per byte); and panels of several runs'
//! validation curves side by side (`write_panels_png`: the hourglass against a plain transformer).
//!
//! A chart is drawn with tiny-skia (anti-aliased paths), its text as the glyph outlines of the TTF embedded in
//! the binary (Ubuntu Light, from `epaint_default_fonts`, read by ttf-parser) placed by their advances: the same
//! pixels on any machine, with no system fonts, fontconfig or freetype. The PNG is written atomically (`crate::fs::write_atomic`): a reader never sees half a file.

use std::ops::Range;
use std::path::Path;
use std::sync::OnceLock;

use tiny_skia::{
    FillRule, LineJoin, Paint, PathBuilder, Pixmap, Rect, Stroke, StrokeDash, Transform,
};
use ttf_parser::{Face, GlyphId, OutlineBuilder};

use crate::error::{Error, Result};

/// One run's curves, in bits per character (bits per byte) or, of images, per dimension, against the optimiser
/// step.
pub(crate) struct Curves<'a> {
    pub(crate) title: &'a str,
    /// What the losses are: "bits per character", or "bits per dimension" of images.
    pub(crate) y_label: &'a str,
    /// (step, training loss in bits/char), one point per logged step.
    pub(crate) train: &'a [(u64, f64)],
    /// (step, validation bits/char), one point per evaluation.
    pub(crate) valid: &'a [(u64, f64)],
    /// A horizontal reference line, e.g. ("unigram baseline", 5.13).
    pub(crate) baseline: Option<(&'a str, f64)>,
}

/// A named curve of a panel: `(x, y)` points.
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

/// One chart of several curves against a common x axis.
pub struct Panel {
    pub title: String,
    pub x_label: String,
    /// What the curves are, e.g. "validation bits per character".
    pub y_label: String,
    pub series: Vec<Series>,
}

/// The smallest and largest image sides accepted (smaller leaves no room for the labels; larger is a typo).
const MIN_WIDTH: u32 = 160;
const MIN_HEIGHT: u32 = 120;
const MAX_SIDE: u32 = 16_384;

type Colour = [u8; 3];
const TRAIN_COLOUR: Colour = [31, 119, 180];
const VALID_COLOUR: Colour = [230, 97, 1];
const BASELINE_COLOUR: Colour = [110, 110, 110];
const TEXT_COLOUR: Colour = [30, 30, 30];
const AXIS_COLOUR: Colour = [90, 90, 90];
const GRID_BOLD: Colour = [215, 215, 215];
const GRID_LIGHT: Colour = [238, 238, 238];
/// Panel curve colours, in series order.
const PALETTE: [Colour; 4] = [[31, 119, 180], [230, 97, 1], [44, 160, 44], [148, 103, 189]];

/// Draws the curves (train as a thin line, valid as a thicker line with markers, the baseline dashed) and
/// writes a PNG of `width`x`height` at `path` atomically.
pub(crate) fn write_png(path: &Path, curves: &Curves, width: u32, height: u32) -> Result<()> {
    let steps = |points: &[(u64, f64)]| finite(points.iter().map(|&(s, v)| (s as f64, v)));
    let (train, valid) = (steps(curves.train), steps(curves.valid));
    if train.is_empty() && valid.is_empty() {
        let (t, v) = (curves.train.len(), curves.valid.len());
        let msg = format!("no finite points (train: {t} points, valid: {v} points)");
        return Err(invalid(path, msg));
    }
    let line = |label: &str, points, colour, width, markers| Line {
        label: label.into(),
        points,
        colour,
        width,
        markers,
        dashed: false,
    };
    let chart = Chart {
        title: curves.title,
        x_label: "step",
        y_label: curves.y_label,
        x_is_step: true,
        lines: [
            line("train", train, TRAIN_COLOUR, 0.0025, false),
            line("valid", valid, VALID_COLOUR, 0.005, true),
        ]
        .into_iter()
        .filter(|l| !l.points.is_empty())
        .collect(),
        baseline: curves.baseline,
    };
    render(path, width, height, &[chart], 1)
}

/// Draws `panels` in a grid of `columns` (each panel's y against its x, a line with markers per series, a
/// legend), and writes a PNG of `width`x`height` at `path` atomically.
pub fn write_panels_png(
    path: &Path,
    panels: &[Panel],
    columns: usize,
    width: u32,
    height: u32,
) -> Result<()> {
    if panels.is_empty() || columns == 0 {
        return Err(invalid(path, "no panels to draw".into()));
    }
    let charts: Vec<Chart> = panels
        .iter()
        .map(|panel| Chart {
            title: &panel.title,
            x_label: &panel.x_label,
            y_label: &panel.y_label,
            x_is_step: false,
            lines: panel
                .series
                .iter()
                .zip(PALETTE.iter().cycle())
                .map(|(series, &colour)| Line {
                    label: series.name.clone(),
                    points: finite(series.points.iter().copied()),
                    colour,
                    width: 0.005,
                    markers: true,
                    dashed: false,
                })
                .collect(),
            baseline: None,
        })
        .collect();
    if let Some(empty) = charts
        .iter()
        .find(|c| c.lines.iter().all(|l| l.points.is_empty()))
    {
        let msg = format!("panel {:?} has no finite points", empty.title);
        return Err(invalid(path, msg));
    }
    render(path, width, height, &charts, columns)
}

/// The error for a chart that cannot be drawn, naming its file.
fn invalid(path: &Path, msg: String) -> Error {
    Error::Io(std::io::Error::new(
        std::io::ErrorKind::InvalidInput,
        format!("cannot plot {}: {msg}", path.display()),
    ))
}

/// The points with finite coordinates.
fn finite(points: impl IntoIterator<Item = (f64, f64)>) -> Vec<(f64, f64)> {
    let finite = |(x, y): &(f64, f64)| x.is_finite() && y.is_finite();
    points.into_iter().filter(finite).collect()
}

/// Checks the size, draws `charts` in a grid of `columns`, and writes them as a PNG at `path`.
fn render(path: &Path, width: u32, height: u32, charts: &[Chart], columns: usize) -> Result<()> {
    if !(MIN_WIDTH..=MAX_SIDE).contains(&width) || !(MIN_HEIGHT..=MAX_SIDE).contains(&height) {
        let msg = format!(
            "image size {width}x{height} is outside {MIN_WIDTH}x{MIN_HEIGHT} ..= {MAX_SIDE}x{MAX_SIDE}"
        );
        return Err(invalid(path, msg));
    }
    let font = embedded_font().map_err(|e| invalid(path, e.into()))?;
    let pixmap = Pixmap::new(width, height).expect("a size checked above");
    let mut canvas = Canvas { pixmap, font };
    canvas.pixmap.fill(tiny_skia::Color::WHITE);
    let cell = (
        f64::from(width) / columns as f64,
        f64::from(height) / charts.len().div_ceil(columns) as f64,
    );
    for (i, chart) in charts.iter().enumerate() {
        let corner = ((i % columns) as f64 * cell.0, (i / columns) as f64 * cell.1);
        draw_chart(&mut canvas, chart, corner, cell);
    }
    let png = canvas
        .pixmap
        .encode_png()
        .map_err(|e| invalid(path, format!("PNG encoding failed: {e}")))?;
    Ok(crate::fs::write_atomic(path, &png)?)
}

/// The embedded TTF, parsed once.
fn embedded_font() -> std::result::Result<&'static Face<'static>, &'static str> {
    static FONT: OnceLock<Option<Face<'static>>> = OnceLock::new();
    FONT.get_or_init(|| Face::parse(epaint_default_fonts::UBUNTU_LIGHT, 0).ok())
        .as_ref()
        .ok_or("the embedded font (Ubuntu Light) could not be parsed")
}

/// The image being drawn (anti-aliased, by tiny-skia), and the font its text is set in.
struct Canvas {
    pixmap: Pixmap,
    font: &'static Face<'static>,
}

/// Which point of a text its position gives.
#[derive(Clone, Copy)]
enum Anchor {
    Start,
    Middle,
    End,
}

fn paint(colour: Colour, opacity: f32) -> Paint<'static> {
    let mut paint = Paint::default();
    paint.set_color_rgba8(colour[0], colour[1], colour[2], (opacity * 255.0) as u8);
    paint
}

impl Canvas {
    /// A line through `points`; `dash`: the length of its dashes (gaps are two thirds of that).
    fn polyline(&mut self, points: &[(f64, f64)], colour: Colour, width: f64, dash: Option<f64>) {
        let mut path = PathBuilder::new();
        for (i, &(x, y)) in points.iter().enumerate() {
            match i {
                0 => path.move_to(x as f32, y as f32),
                _ => path.line_to(x as f32, y as f32),
            }
        }
        let Some(path) = path.finish() else {
            return; // fewer than two points
        };
        let dash = dash.map(|d| d as f32);
        let stroke = Stroke {
            width: width as f32,
            line_join: LineJoin::Round,
            dash: dash.and_then(|d| StrokeDash::new(vec![d, d * 2.0 / 3.0], 0.0)),
            ..Stroke::default()
        };
        let paint = paint(colour, 1.0);
        self.pixmap
            .stroke_path(&path, &paint, &stroke, Transform::identity(), None);
    }

    fn circle(&mut self, (x, y): (f64, f64), radius: f64, colour: Colour) {
        if let Some(path) = PathBuilder::from_circle(x as f32, y as f32, radius as f32) {
            self.fill(&path, colour, 1.0, Transform::identity());
        }
    }

    /// A nearly opaque white box with a 1 px `border` (the legend's).
    fn legend_box(&mut self, (x, y): (f64, f64), (w, h): (f64, f64), border: Colour) {
        if let Some(rect) = Rect::from_xywh(x as f32, y as f32, w as f32, h as f32) {
            let path = PathBuilder::from_rect(rect);
            self.fill(&path, [255; 3], 0.9, Transform::identity());
            let (paint, stroke) = (paint(border, 1.0), Stroke::default());
            self.pixmap
                .stroke_path(&path, &paint, &stroke, Transform::identity(), None);
        }
    }

    fn fill(&mut self, path: &tiny_skia::Path, colour: Colour, opacity: f32, transform: Transform) {
        let paint = paint(colour, opacity);
        self.pixmap
            .fill_path(path, &paint, FillRule::Winding, transform, None);
    }

    /// The outlines of `text`'s glyphs in font units (y up), each at its pen position: the sum of the advances
    /// before it (side bearings are in the outlines). Unkerned: this font kerns only through GPOS, which takes a
    /// shaper.
    fn outlines(&self, text: &str) -> Outlines {
        let mut outlines = Outlines {
            path: PathBuilder::new(),
            pen: 0.0,
        };
        for c in text.chars() {
            let glyph = self.font.glyph_index(c).unwrap_or(GlyphId(0)); // 0: the "missing" box
            self.font.outline_glyph(glyph, &mut outlines);
            outlines.pen += f32::from(self.font.glyph_hor_advance(glyph).unwrap_or(0));
        }
        outlines
    }

    /// The width of `text` at `size` px to the em.
    fn text_width(&self, text: &str, size: f64) -> f64 {
        f64::from(self.outlines(text).pen / f32::from(self.font.units_per_em())) * size
    }

    /// `text` at `size` px to the em with its baseline at `y`, anchored at `x`, turned by `degrees` about there.
    fn text(&mut self, (x, y): (f64, f64), size: f64, anchor: Anchor, degrees: f32, text: &str) {
        let Outlines { path, pen: width } = self.outlines(text);
        let Some(path) = path.finish() else {
            return; // blank
        };
        let shift = match anchor {
            Anchor::Start => 0.0,
            Anchor::Middle => width / 2.0,
            Anchor::End => width,
        };
        // Font units (y up) to pixels (y down), then anchored, turned and placed.
        let scale = size as f32 / f32::from(self.font.units_per_em());
        let transform = Transform::from_translate(x as f32, y as f32)
            .pre_rotate(degrees)
            .pre_scale(scale, -scale)
            .pre_translate(-shift, 0.0);
        self.fill(&path, TEXT_COLOUR, 1.0, transform);
    }
}

/// Glyph outlines as ttf-parser reads them, into a path, moved right to the current glyph's pen position.
struct Outlines {
    path: PathBuilder,
    pen: f32,
}

impl OutlineBuilder for Outlines {
    fn move_to(&mut self, x: f32, y: f32) {
        self.path.move_to(self.pen + x, y);
    }
    fn line_to(&mut self, x: f32, y: f32) {
        self.path.line_to(self.pen + x, y);
    }
    fn quad_to(&mut self, x1: f32, y1: f32, x: f32, y: f32) {
        self.path.quad_to(self.pen + x1, y1, self.pen + x, y);
    }
    fn curve_to(&mut self, x1: f32, y1: f32, x2: f32, y2: f32, x: f32, y: f32) {
        let pen = self.pen;
        self.path.cubic_to(pen + x1, y1, pen + x2, y2, pen + x, y);
    }
    fn close(&mut self) {
        self.path.close();
    }
}

/// One chart: what `write_png` draws, and each panel of `write_panels_png`.
struct Chart<'a> {
    title: &'a str,
    x_label: &'a str,
    y_label: &'a str,
    /// x counts optimiser steps: whole-number ticks, labels with k / M suffixes.
    x_is_step: bool,
    lines: Vec<Line>,
    /// Dashed across the chart when near the data, else only named in the legend ("off scale").
    baseline: Option<(&'a str, f64)>,
}

/// A curve and its legend entry.
struct Line {
    label: String,
    points: Vec<(f64, f64)>,
    colour: Colour,
    /// Stroke width, as a fraction of the chart's size.
    width: f64,
    markers: bool,
    dashed: bool,
}

/// Draws `chart` in the cell at `(x0, y0)` of `w`x`h`: title, grid, axes with tick labels and descriptions, the
/// baseline under the curves, and a legend in the upper right corner.
fn draw_chart(canvas: &mut Canvas, chart: &Chart, (x0, y0): (f64, f64), (w, h): (f64, f64)) {
    // Sizes follow the cell: a 960x600 chart has a 24 px title and 15 px tick labels.
    let s = h.min(w * 0.625);
    let px = |f: f64, min: f64| (s * f).max(min);
    let stroke = |f: f64| (s * f).round().max(1.0);
    let (title, desc, tick, margin) = (
        px(0.04, 12.0),
        px(0.029, 10.0),
        px(0.025, 9.0),
        px(0.03, 6.0),
    );
    const MARK: f64 = 5.0; // tick mark length

    let points: Vec<(f64, f64)> = chart
        .lines
        .iter()
        .flat_map(|l| l.points.iter().copied())
        .collect();
    let (xr, yr, show_baseline) = ranges(&points, chart.baseline.map(|(_, b)| b));
    let x_step = tick_step(&xr, 8, if chart.x_is_step { 1.0 } else { 0.0 });
    let y_step = tick_step(&yr, 8, 0.0);
    let x_label = |v| match chart.x_is_step {
        true => step_label(v, x_step, xr.end),
        false => tick_label(v, x_step),
    };
    let y_label = |v| tick_label(v, y_step);
    let (x_grid, y_grid) = (grid(&xr, x_step), grid(&yr, y_step));
    let widest_y = y_grid
        .iter()
        .filter(|g| g.1)
        .map(|&(v, _)| canvas.text_width(&y_label(v), tick))
        .fold(0.0, f64::max);

    let (top, right) = (y0 + margin + title * 1.5, x0 + w - margin);
    let bottom = y0 + h - margin - MARK - tick * 1.3 - desc * 1.3;
    let left = x0 + margin + desc * 1.4 + widest_y + tick * 0.4 + MARK;
    let x_at = |x: f64| left + (x - xr.start) / (xr.end - xr.start) * (right - left);
    let y_at = |y: f64| bottom - (y - yr.start) / (yr.end - yr.start) * (bottom - top);
    // Grid, axes and legend samples on pixel centres, so that they stay crisp.
    let crisp = |v: f64| v.round() + 0.5;
    let (l, b) = (crisp(left), crisp(bottom));

    let title_at = (x0 + w / 2.0, y0 + margin + title * 0.8);
    canvas.text(title_at, title, Anchor::Middle, 0.0, chart.title);
    for &(value, labelled) in &x_grid {
        let x = crisp(x_at(value));
        let colour = if labelled { GRID_BOLD } else { GRID_LIGHT };
        canvas.polyline(&[(x, top), (x, b)], colour, 1.0, None);
        if labelled {
            canvas.polyline(&[(x, b), (x, b + MARK)], AXIS_COLOUR, 1.0, None);
            let at = (x, b + MARK + tick);
            canvas.text(at, tick, Anchor::Middle, 0.0, &x_label(value));
        }
    }
    for &(value, labelled) in &y_grid {
        let y = crisp(y_at(value));
        let colour = if labelled { GRID_BOLD } else { GRID_LIGHT };
        canvas.polyline(&[(l, y), (right, y)], colour, 1.0, None);
        if labelled {
            canvas.polyline(&[(l - MARK, y), (l, y)], AXIS_COLOUR, 1.0, None);
            let at = (l - MARK - tick * 0.3, y + tick * 0.35);
            canvas.text(at, tick, Anchor::End, 0.0, &y_label(value));
        }
    }
    canvas.polyline(&[(l, top), (l, b), (right, b)], AXIS_COLOUR, 1.0, None);
    let x_desc_at = ((left + right) / 2.0, b + MARK + tick * 1.3 + desc);
    canvas.text(x_desc_at, desc, Anchor::Middle, 0.0, chart.x_label);
    let y_desc_at = (x0 + margin + desc, (top + bottom) / 2.0);
    canvas.text(y_desc_at, desc, Anchor::Middle, -90.0, chart.y_label);

    let baseline = chart.baseline.map(|(label, value)| Line {
        label: baseline_label(label, value, show_baseline),
        points: match show_baseline {
            true => vec![(xr.start, value), (xr.end, value)],
            false => Vec::new(),
        },
        colour: BASELINE_COLOUR,
        width: 0.003,
        markers: false,
        dashed: true,
    });
    let (marker, dash) = (px(0.008, 2.5), px(0.014, 4.0));
    for line in baseline.iter().chain(&chart.lines) {
        let points: Vec<_> = line
            .points
            .iter()
            .map(|&(x, y)| (x_at(x), y_at(y)))
            .collect();
        let dash = line.dashed.then_some(dash);
        canvas.polyline(&points, line.colour, stroke(line.width), dash);
        if line.markers {
            points
                .iter()
                .for_each(|&p| canvas.circle(p, marker, line.colour));
        }
    }

    // The legend: train, valid, then the baseline; samples as thick as the valid line, to be seen, and dashed
    // as three dashes and two gaps.
    let entries: Vec<&Line> = chart.lines.iter().chain(&baseline).collect();
    let (row, pad, sample) = (tick * 1.5, px(0.012, 4.0), px(0.05, 20.0));
    let label_width = entries
        .iter()
        .map(|l| canvas.text_width(&l.label, tick))
        .fold(0.0, f64::max);
    let (box_w, box_h) = (
        pad * 3.0 + sample + label_width,
        pad * 2.0 + row * entries.len() as f64,
    );
    let (box_x, box_y) = (right - px(0.02, 4.0) - box_w, top + px(0.02, 4.0));
    canvas.legend_box((box_x, box_y), (box_w, box_h), GRID_BOLD);
    for (i, line) in entries.iter().enumerate() {
        let y = crisp(box_y + pad + row * (i as f64 + 0.5));
        let (from, to) = (box_x + pad, box_x + pad + sample);
        let (width, dash) = (stroke(line.width.max(0.005)), sample * 3.0 / 13.0);
        let dash = line.dashed.then_some(dash);
        canvas.polyline(&[(from, y), (to, y)], line.colour, width, dash);
        if line.markers {
            canvas.circle(((from + to) / 2.0, y), marker, line.colour);
        }
        canvas.text(
            (to + pad, y + tick * 0.35),
            tick,
            Anchor::Start,
            0.0,
            &line.label,
        );
    }
}

/// The axis ranges: x over the steps, y from just under the data's minimum (not 0, so the learning shows) to
/// just over its maximum. Returns whether the baseline is drawn (inside the range, or close enough to extend it).
fn ranges(points: &[(f64, f64)], baseline: Option<f64>) -> (Range<f64>, Range<f64>, bool) {
    let (mut x_min, mut x_max) = (f64::INFINITY, f64::NEG_INFINITY);
    let (mut y_min, mut y_max) = (f64::INFINITY, f64::NEG_INFINITY);
    for &(x, y) in points {
        (x_min, x_max) = (x_min.min(x), x_max.max(x));
        (y_min, y_max) = (y_min.min(y), y_max.max(y));
    }
    // The baseline joins the range when it is within a factor 1.5 of the data (e.g. a curve from 8 to 2 bpc
    // and a unigram baseline of 5.1 shows all three; a baseline of 40 would flatten the curve, so it is only
    // named in the legend).
    let show_baseline = baseline.is_some_and(|b| {
        b.is_finite() && b <= y_max + y_max.abs() * 0.5 && b >= y_min - y_min.abs() / 3.0
    });
    if let (true, Some(b)) = (show_baseline, baseline) {
        (y_min, y_max) = (y_min.min(b), y_max.max(b));
    }
    // Padded on each side, never below 0 for data that is not.
    let padded = |lo: f64, hi: f64, pad: f64| match lo >= 0.0 {
        true => (lo - pad).max(0.0)..hi + pad,
        false => lo - pad..hi + pad,
    };
    let x_span = x_max - x_min;
    let x_range = padded(x_min, x_max, if x_span > 0.0 { x_span * 0.02 } else { 1.0 });
    let y_span = y_max - y_min;
    let y_pad = if y_span > 0.0 {
        y_span * 0.06
    } else {
        (y_max.abs() * 0.05).max(0.05)
    };
    // Half a pad more on top, for the legend.
    let y_range = padded(y_min, y_max + y_pad * 0.5, y_pad);
    (x_range, y_range, show_baseline)
}

/// The spacing of the labelled ticks on `range`: the smallest of 1, 2, 2.5 or 5 times a power of ten, at least
/// `min`, that puts at most `max` ticks on it.
fn tick_step(range: &Range<f64>, max: usize, min: f64) -> f64 {
    let span = range.end - range.start;
    let power = 10f64.powf((span / max as f64).log10().floor());
    let ticks = |step: f64| (range.end / step).floor() - (range.start / step).ceil() + 1.0;
    [1.0, 2.0, 2.5, 5.0, 10.0, 20.0, 25.0, 50.0, 100.0]
        .into_iter()
        .map(|m| m * power)
        .find(|&step| step >= min && ticks(step) <= max as f64)
        .unwrap_or(span.max(min))
}

/// Grid lines on `range` every half `step`, each with whether it is a labelled tick (a multiple of `step`).
fn grid(range: &Range<f64>, step: f64) -> Vec<(f64, bool)> {
    let half = step / 2.0;
    let (first, last) = (
        (range.start / half).ceil() as i64,
        (range.end / half).floor() as i64,
    );
    (first..=last)
        .map(|k| (k as f64 * half, k % 2 == 0))
        .collect()
}

/// A tick label: `value` with as many decimals as the tick spacing `step` needs (none for whole numbers).
fn tick_label(value: f64, step: f64) -> String {
    let decimals = (0..6)
        .find(|&d| {
            let v = step.abs() * 10f64.powi(d);
            (v - v.round()).abs() <= 1e-6 * v.max(1.0)
        })
        .unwrap_or(6) as usize;
    let s = format!("{value:.decimals$}");
    match s.strip_prefix('-') {
        Some(rest) if rest.chars().all(|c| c == '0' || c == '.') => rest.to_string(),
        _ => s,
    }
}

/// A step label: whole numbers, with k / M suffixes on every label of an axis whose labels reach `top` once
/// they get long (0, 2.5k, ..., 12.5k; 0.5M, 1.0M).
fn step_label(value: f64, step: f64, top: f64) -> String {
    let (scale, suffix) = if top >= 1e6 && step >= 1e4 {
        (1e6, "M")
    } else if top >= 1e4 && step >= 10.0 {
        (1e3, "k")
    } else {
        (1.0, "")
    };
    let number = tick_label(value / scale, step / scale);
    if number.chars().all(|c| c == '0' || c == '.') {
        "0".to_string()
    } else {
        format!("{number}{suffix}")
    }
}

/// The legend text for the baseline: its label and value, noting when it lies off the chart.
fn baseline_label(label: &str, value: f64, shown: bool) -> String {
    match shown {
        true => format!("{label} ({value:.2})"),
        false => format!("{label} ({value:.2}, off scale)"),
    }
}

#[cfg(test)]
mod tests;
