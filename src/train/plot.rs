//! The training curves as a PNG: training loss and validation bits per character against the optimiser step,
//! with an optional horizontal baseline (e.g. the unigram bits per byte); and panels of several runs'
//! validation curves side by side (`write_panels_png`: the hourglass against a plain transformer).
//!
//! Text is rendered from a TTF embedded in the binary (Ubuntu Light, from `epaint_default_fonts`) through the
//! pure-Rust `ab_glyph` rasteriser, so a chart has real labels on any machine: no system fonts, fontconfig or
//! freetype. plotters lays the text out (its `ab_glyph` feature measures advances and kerning correctly), but
//! its 0.3.7 glyph drawing drops each glyph's side bearing ("val id", "bitsper"), so `Canvas` wraps the bitmap
//! backend and draws the glyphs itself at their true pen positions.
//!
//! The chart is drawn into an in-memory RGB buffer, encoded with `png`, written to `path` + ".tmp" and renamed
//! over `path`, so a reader never sees a half-written file.

use std::ops::Range;
use std::path::Path;
use std::sync::OnceLock;

use ab_glyph::{Font, FontRef, ScaleFont};
use plotters::coord::types::RangedCoordf64;
use plotters::element::DashedPathElement;
use plotters::prelude::*;
use plotters::style::{register_font, FontStyle};
use plotters_backend::{
    text_anchor::{HPos, VPos},
    BackendColor, BackendCoord, DrawingErrorKind,
};

use crate::error::{Error, Result};

/// One run's curves, in bits per character (bits per byte), against the optimiser step.
pub struct Curves<'a> {
    pub title: &'a str,
    /// (step, training loss in bits/char), one point per logged step.
    pub train: &'a [(u64, f64)],
    /// (step, validation bits/char), one point per evaluation.
    pub valid: &'a [(u64, f64)],
    /// A horizontal reference line, e.g. ("unigram baseline", 5.13).
    pub baseline: Option<(&'a str, f64)>,
}

/// The smallest and largest image sides accepted (smaller leaves no room for the labels; larger is a typo).
const MIN_WIDTH: u32 = 160;
const MIN_HEIGHT: u32 = 120;
const MAX_SIDE: u32 = 16_384;

/// The family name the embedded font is registered under (plotters' default family, so nothing falls through).
const FONT: &str = "sans-serif";

const TRAIN_COLOUR: RGBColor = RGBColor(31, 119, 180);
const VALID_COLOUR: RGBColor = RGBColor(230, 97, 1);
const BASELINE_COLOUR: RGBColor = RGBColor(110, 110, 110);
const TEXT_COLOUR: RGBColor = RGBColor(30, 30, 30);
const AXIS_COLOUR: RGBColor = RGBColor(90, 90, 90);
const GRID_BOLD: RGBColor = RGBColor(215, 215, 215);
const GRID_LIGHT: RGBColor = RGBColor(238, 238, 238);

/// Draws the curves (train as a thin line, valid as a thicker line with markers, baseline dashed or grey) and
/// writes a PNG of `width`x`height` at `path` atomically (write `path` + ".tmp", then rename).
pub fn write_png(path: &Path, curves: &Curves, width: u32, height: u32) -> Result<()> {
    let train = finite(curves.train);
    let valid = finite(curves.valid);
    if train.is_empty() && valid.is_empty() {
        return Err(invalid(
            path,
            format!(
                "no finite points (train: {} points, valid: {} points)",
                curves.train.len(),
                curves.valid.len()
            ),
        ));
    }
    render(path, width, height, |canvas| {
        draw(canvas, curves.title, &train, &valid, curves.baseline)
    })
}

/// The error for a chart that cannot be drawn, naming its file.
fn invalid(path: &Path, msg: String) -> Error {
    Error::Io(std::io::Error::new(
        std::io::ErrorKind::InvalidInput,
        format!("cannot plot {}: {msg}", path.display()),
    ))
}

/// Checks the size, draws with `paint` into an in-memory bitmap, and writes it as a PNG at `path` atomically.
fn render(
    path: &Path,
    width: u32,
    height: u32,
    paint: impl FnOnce(Canvas) -> DrawResult,
) -> Result<()> {
    if !(MIN_WIDTH..=MAX_SIDE).contains(&width) || !(MIN_HEIGHT..=MAX_SIDE).contains(&height) {
        return Err(invalid(
            path,
            format!(
                "image size {width}x{height} is outside {MIN_WIDTH}x{MIN_HEIGHT} ..= {MAX_SIDE}x{MAX_SIDE}"
            ),
        ));
    }
    let font = embedded_font().map_err(|e| invalid(path, e.to_string()))?;
    let mut rgb = vec![0u8; width as usize * height as usize * 3];
    paint(Canvas::new(&mut rgb, (width, height), font))
        .map_err(|e| invalid(path, format!("drawing failed: {e}")))?;
    let bytes = encode_png(&rgb, width, height)
        .map_err(|e| invalid(path, format!("PNG encoding failed: {e}")))?;
    Ok(crate::fs::write_atomic(path, &bytes)?)
}

/// The points with a finite value, as plot coordinates.
fn finite(points: &[(u64, f64)]) -> Vec<(f64, f64)> {
    points
        .iter()
        .filter(|(_, v)| v.is_finite())
        .map(|&(s, v)| (s as f64, v))
        .collect()
}

/// The embedded TTF, parsed and registered with plotters (for text layout) once per process.
fn embedded_font() -> std::result::Result<&'static FontRef<'static>, String> {
    static FONT_REF: OnceLock<std::result::Result<FontRef<'static>, String>> = OnceLock::new();
    FONT_REF
        .get_or_init(|| {
            let bytes = epaint_default_fonts::UBUNTU_LIGHT;
            let bad = || "the embedded font (Ubuntu Light) could not be parsed".to_string();
            register_font(FONT, FontStyle::Normal, bytes).map_err(|_| bad())?;
            FontRef::try_from_slice(bytes).map_err(|_| bad())
        })
        .as_ref()
        .map_err(Clone::clone)
}

/// The bitmap backend with its text drawn by us: the glyphs of the embedded font at their pen positions (side
/// bearings, kerning and sub-pixel offsets included), in the box plotters' layout gave the text, honouring the
/// anchor and the rotation (the y axis label). Everything else goes straight to the bitmap backend.
struct Canvas<'a> {
    inner: BitMapBackend<'a>,
    font: &'static FontRef<'static>,
}

impl<'a> Canvas<'a> {
    fn new(rgb: &'a mut [u8], size: (u32, u32), font: &'static FontRef<'static>) -> Self {
        Canvas {
            inner: BitMapBackend::with_buffer(rgb, size),
            font,
        }
    }
}

type BackendResult<E> = std::result::Result<(), DrawingErrorKind<E>>;

impl<'a> DrawingBackend for Canvas<'a> {
    type ErrorType = <BitMapBackend<'a> as DrawingBackend>::ErrorType;

    fn get_size(&self) -> (u32, u32) {
        self.inner.get_size()
    }
    fn ensure_prepared(&mut self) -> BackendResult<Self::ErrorType> {
        self.inner.ensure_prepared()
    }
    fn present(&mut self) -> BackendResult<Self::ErrorType> {
        self.inner.present()
    }
    fn draw_pixel(
        &mut self,
        point: BackendCoord,
        color: BackendColor,
    ) -> BackendResult<Self::ErrorType> {
        self.inner.draw_pixel(point, color)
    }
    fn draw_line<S: plotters_backend::BackendStyle>(
        &mut self,
        from: BackendCoord,
        to: BackendCoord,
        style: &S,
    ) -> BackendResult<Self::ErrorType> {
        self.inner.draw_line(from, to, style)
    }
    fn draw_rect<S: plotters_backend::BackendStyle>(
        &mut self,
        upper_left: BackendCoord,
        bottom_right: BackendCoord,
        style: &S,
        fill: bool,
    ) -> BackendResult<Self::ErrorType> {
        self.inner.draw_rect(upper_left, bottom_right, style, fill)
    }
    fn draw_path<S: plotters_backend::BackendStyle, I: IntoIterator<Item = BackendCoord>>(
        &mut self,
        path: I,
        style: &S,
    ) -> BackendResult<Self::ErrorType> {
        self.inner.draw_path(path, style)
    }
    fn draw_circle<S: plotters_backend::BackendStyle>(
        &mut self,
        center: BackendCoord,
        radius: u32,
        style: &S,
        fill: bool,
    ) -> BackendResult<Self::ErrorType> {
        self.inner.draw_circle(center, radius, style, fill)
    }
    fn fill_polygon<S: plotters_backend::BackendStyle, I: IntoIterator<Item = BackendCoord>>(
        &mut self,
        vert: I,
        style: &S,
    ) -> BackendResult<Self::ErrorType> {
        self.inner.fill_polygon(vert, style)
    }
    fn blit_bitmap(
        &mut self,
        pos: BackendCoord,
        (iw, ih): (u32, u32),
        src: &[u8],
    ) -> BackendResult<Self::ErrorType> {
        self.inner.blit_bitmap(pos, (iw, ih), src)
    }

    fn draw_text<TStyle: plotters_backend::BackendTextStyle>(
        &mut self,
        text: &str,
        style: &TStyle,
        pos: BackendCoord,
    ) -> BackendResult<Self::ErrorType> {
        let color = style.color();
        if color.alpha == 0.0 {
            return Ok(());
        }
        // The box plotters laid the text out in (the same one `estimate_text_size` reports), placed by the
        // anchor as plotters' default `draw_text` does.
        let ((min_x, min_y), (max_x, max_y)) = style
            .layout_box(text)
            .map_err(|e| DrawingErrorKind::FontError(Box::new(e)))?;
        let (width, height) = (max_x - min_x, max_y - min_y);
        let dx = match style.anchor().h_pos {
            HPos::Left => 0,
            HPos::Right => -width,
            HPos::Center => -width / 2,
        };
        let dy = match style.anchor().v_pos {
            VPos::Top => 0,
            VPos::Center => -height / 2,
            VPos::Bottom => -height,
        };
        let transform = style.transform();
        let (w, h) = self.get_size();
        let font = self.font.as_scaled(style.size() as f32);
        // The baseline sits a descender above the box's bottom, so capitals and descenders fill the box.
        let baseline = height as f32 + font.descent();
        let mut caret = 0f32;
        let mut prev = None;
        for c in text.chars() {
            let id = font.glyph_id(c);
            if let Some(prev) = prev {
                caret += font.kern(prev, id);
            }
            prev = Some(id);
            let glyph = id.with_scale_and_position(font.scale(), ab_glyph::point(caret, baseline));
            caret += font.h_advance(id);
            let Some(outline) = font.outline_glyph(glyph) else {
                continue; // a space
            };
            let bounds = outline.px_bounds();
            let (ox, oy) = (
                bounds.min.x as i32 + dx - min_x,
                bounds.min.y as i32 + dy - min_y,
            );
            let mut result = Ok(());
            outline.draw(|gx, gy, coverage| {
                if result.is_err() || coverage <= 0.0 {
                    return;
                }
                let (x, y) = transform.transform(ox + gx as i32, oy + gy as i32);
                let (x, y) = (pos.0 + x, pos.1 + y);
                if x >= 0 && y >= 0 && (x as u32) < w && (y as u32) < h {
                    let alpha = color.alpha * f64::from(coverage.min(1.0));
                    result = self.inner.draw_pixel(
                        (x, y),
                        BackendColor {
                            alpha,
                            rgb: color.rgb,
                        },
                    );
                }
            });
            result?;
        }
        Ok(())
    }
}

/// The axis ranges: x over the steps, y from just under the data's minimum (not 0, so the learning shows) to
/// just over its maximum. Returns whether the baseline is drawn (inside the range, or close enough to extend it).
fn ranges(points: &[(f64, f64)], baseline: Option<f64>) -> (Range<f64>, Range<f64>, bool) {
    let (mut x_min, mut x_max) = (f64::INFINITY, f64::NEG_INFINITY);
    let (mut y_min, mut y_max) = (f64::INFINITY, f64::NEG_INFINITY);
    for &(x, y) in points {
        x_min = x_min.min(x);
        x_max = x_max.max(x);
        y_min = y_min.min(y);
        y_max = y_max.max(y);
    }
    // The baseline joins the range when it is within a factor 1.5 of the data (e.g. a curve from 8 to 2 bpc
    // and a unigram baseline of 5.1 shows all three; a baseline of 40 would flatten the curve, so it is only
    // named in the legend).
    let show_baseline = baseline.is_some_and(|b| {
        b.is_finite() && b <= y_max + y_max.abs() * 0.5 && b >= y_min - y_min.abs() / 3.0
    });
    if let (true, Some(b)) = (show_baseline, baseline) {
        y_min = y_min.min(b);
        y_max = y_max.max(b);
    }

    let x_span = x_max - x_min;
    let x_pad = if x_span > 0.0 { x_span * 0.02 } else { 1.0 };
    let x_lo = if x_min >= 0.0 {
        (x_min - x_pad).max(0.0)
    } else {
        x_min - x_pad
    };
    let x_range = x_lo..x_max + x_pad;

    let y_span = y_max - y_min;
    let y_pad = if y_span > 0.0 {
        y_span * 0.06
    } else {
        (y_max.abs() * 0.05).max(0.05)
    };
    let y_lo = if y_min >= 0.0 {
        (y_min - y_pad).max(0.0)
    } else {
        y_min - y_pad
    };
    // A little more room on top for the legend.
    let y_range = y_lo..y_max + y_pad * 1.5;
    (x_range, y_range, show_baseline)
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

/// The spacing of the labelled ticks plotters puts on `range` when asked for at most `n` (1, 2 or 5 times a
/// power of ten); 1 when it puts fewer than two.
fn tick_step(range: &Range<f64>, n: usize) -> f64 {
    let points = RangedCoordf64::from(range.clone()).key_points(n);
    match points.as_slice() {
        [a, b, ..] => b - a,
        _ => 1.0,
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
    if shown {
        format!("{label} ({value:.2})")
    } else {
        format!("{label} ({value:.2}, off scale)")
    }
}

type DrawResult = std::result::Result<(), Box<dyn std::error::Error>>;

fn draw(
    canvas: Canvas,
    title: &str,
    train: &[(f64, f64)],
    valid: &[(f64, f64)],
    baseline: Option<(&str, f64)>,
) -> DrawResult {
    let all: Vec<(f64, f64)> = train.iter().chain(valid).copied().collect();
    let (x_range, y_range, show_baseline) = ranges(&all, baseline.map(|(_, b)| b));

    // Sizes follow the image: a 960x600 chart has a 26 px title and 17 px tick labels.
    let (width, height) = canvas.get_size();
    let s = f64::from(height).min(f64::from(width) * 0.625);
    let px = |f: f64, min: f64| (s * f).max(min);
    let (title_size, desc_size, tick_size) = (px(0.044, 12.0), px(0.032, 10.0), px(0.028, 9.0));
    let font = |size: f64| (FONT, size).into_font().color(&TEXT_COLOUR);
    let glyphs = canvas.font;
    let text_width = |text: &str, size: f64| {
        let f = glyphs.as_scaled(size as f32);
        text.chars()
            .map(|c| f.h_advance(f.glyph_id(c)))
            .sum::<f32>() as f64
    };
    let line_w = |f: f64| (s * f).round().max(1.0) as u32;

    let root = canvas.into_drawing_area();
    root.fill(&WHITE)?;

    // Whole steps only: a short x range gets fewer labels rather than fractional ones.
    let x_labels = 8usize
        .min((x_range.end - x_range.start).floor() as usize + 1)
        .max(2);
    let y_labels = 8;
    let (x_step, y_step) = (tick_step(&x_range, x_labels), tick_step(&y_range, y_labels));
    let x_fmt = move |v: &f64| step_label(*v, x_step, x_range.end);
    let y_fmt = move |v: &f64| tick_label(*v, y_step);
    // The label areas fit what goes in them: tick marks, tick labels (the widest y label, measured) and the
    // axis description, with gaps (text boxes are `size / 1.24` high).
    let widest_y = RangedCoordf64::from(y_range.clone())
        .key_points(y_labels)
        .iter()
        .map(|v| text_width(&y_fmt(v), tick_size))
        .fold(0.0, f64::max);
    let x_area = 5.0 + tick_size * 1.2 + desc_size * 1.3 + px(0.01, 2.0);
    let y_area = 5.0 + widest_y + tick_size * 0.6 + desc_size * 1.3 + px(0.01, 2.0);

    let mut chart = ChartBuilder::on(&root)
        .caption(title, font(title_size))
        .margin(px(0.03, 6.0) as u32)
        .x_label_area_size(x_area.ceil() as u32)
        .y_label_area_size(y_area.ceil() as u32)
        .build_cartesian_2d(x_range.clone(), y_range.clone())?;

    chart
        .configure_mesh()
        .x_desc("step")
        .y_desc("bits per character")
        .axis_desc_style(font(desc_size))
        .label_style(font(tick_size))
        .x_labels(x_labels)
        .y_labels(y_labels)
        .x_label_formatter(&x_fmt)
        .y_label_formatter(&y_fmt)
        .max_light_lines(1)
        .bold_line_style(GRID_BOLD.stroke_width(1))
        .light_line_style(GRID_LIGHT.stroke_width(1))
        .axis_style(AXIS_COLOUR.stroke_width(1))
        .draw()?;

    // The legend's line samples, as long as its sample column less a gap.
    let legend_area = px(0.06, 26.0) as u32;
    let sample = (legend_area as i32 * 4 / 5).max(12);
    let sample_w = line_w(0.004) + 1;
    let dash = px(0.014, 4.0) as u32;
    let baseline_style = BASELINE_COLOUR.stroke_width(line_w(0.003));
    // The baseline first, under the curves; its legend entry comes last (train, valid, baseline).
    if let (true, Some((_, value))) = (show_baseline, baseline) {
        let points = [(x_range.start, value), (x_range.end, value)];
        chart.draw_series(DashedLineSeries::new(
            points,
            dash,
            dash * 2 / 3,
            baseline_style,
        ))?;
    }
    if !train.is_empty() {
        let style = TRAIN_COLOUR.mix(0.85).stroke_width(line_w(0.0025));
        chart
            .draw_series(LineSeries::new(train.iter().copied(), style))?
            .label("train")
            .legend(move |(x, y)| {
                PathElement::new(
                    vec![(x, y), (x + sample, y)],
                    TRAIN_COLOUR.stroke_width(sample_w - 1),
                )
            });
    }
    if !valid.is_empty() {
        let style = VALID_COLOUR.stroke_width(line_w(0.005));
        let marker = px(0.008, 2.5) as u32;
        chart.draw_series(LineSeries::new(valid.iter().copied(), style))?;
        // Solid markers on top of the line, one per evaluation.
        chart
            .draw_series(
                valid
                    .iter()
                    .map(|&p| Circle::new(p, marker, VALID_COLOUR.filled())),
            )?
            .label("valid")
            .legend(move |(x, y)| {
                EmptyElement::at((x, y))
                    + PathElement::new(vec![(0, 0), (sample, 0)], style)
                    + Circle::new((sample / 2, 0), marker, VALID_COLOUR.filled())
            });
    }
    if let Some((label, value)) = baseline {
        // An empty series that only carries the legend entry (noting "off scale" when the line is not drawn).
        chart
            .draw_series(std::iter::empty::<PathElement<(f64, f64)>>())?
            .label(baseline_label(label, value, show_baseline))
            .legend(move |(x, y)| {
                let (dash, gap) = ((sample / 4).max(3), (sample / 7).max(2));
                DashedPathElement::new(
                    vec![(x, y), (x + sample, y)],
                    dash,
                    gap,
                    BASELINE_COLOUR.stroke_width(sample_w),
                )
            });
    }

    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .margin(px(0.02, 4.0) as u32)
        .legend_area_size(legend_area)
        .label_font(font(tick_size))
        .background_style(WHITE.mix(0.9))
        .border_style(GRID_BOLD.stroke_width(1))
        .draw()?;

    root.present()?;
    Ok(())
}

/// A named curve of a panel: `(x, bits per character)` points.
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

/// One chart of several curves against a common x axis.
pub struct Panel {
    pub title: String,
    pub x_label: String,
    pub series: Vec<Series>,
}

/// Curve colours, in series order.
const PALETTE: [RGBColor; 4] = [
    RGBColor(31, 119, 180),
    RGBColor(230, 97, 1),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
];

/// Draws `panels` in a grid of `columns` (bits per character against each panel's x, a line with markers per
/// series, a legend), and writes a PNG of `width`x`height` at `path` atomically.
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
    let has_points = |p: &Panel| {
        p.series
            .iter()
            .any(|s| s.points.iter().any(|(x, y)| x.is_finite() && y.is_finite()))
    };
    if let Some(p) = panels.iter().find(|p| !has_points(p)) {
        return Err(invalid(
            path,
            format!("panel {:?} has no finite points", p.title),
        ));
    }
    render(path, width, height, |canvas| {
        draw_panels(canvas, panels, columns)
    })
}

fn draw_panels(canvas: Canvas, panels: &[Panel], columns: usize) -> DrawResult {
    let rows = panels.len().div_ceil(columns);
    let (width, height) = canvas.get_size();
    let s = (f64::from(height) / rows as f64).min(f64::from(width) / columns as f64 * 0.625);
    let px = |f: f64, min: f64| (s * f).max(min);
    let (title_size, desc_size, tick_size) = (px(0.044, 12.0), px(0.034, 10.0), px(0.03, 9.0));
    let font = |size: f64| (FONT, size).into_font().color(&TEXT_COLOUR);
    let root = canvas.into_drawing_area();
    root.fill(&WHITE)?;
    for (area, panel) in root.split_evenly((rows, columns)).iter().zip(panels) {
        let points: Vec<(f64, f64)> = panel
            .series
            .iter()
            .flat_map(|s| s.points.iter().copied())
            .filter(|(x, y)| x.is_finite() && y.is_finite())
            .collect();
        let (x_range, y_range, _) = ranges(&points, None);
        let (x_step, y_step) = (tick_step(&x_range, 6), tick_step(&y_range, 8));
        let x_fmt = move |v: &f64| tick_label(*v, x_step);
        let y_fmt = move |v: &f64| tick_label(*v, y_step);
        let mut chart = ChartBuilder::on(area)
            .caption(&panel.title, font(title_size))
            .margin(px(0.03, 6.0) as u32)
            .x_label_area_size((tick_size * 1.5 + desc_size * 1.6 + 8.0) as u32)
            .y_label_area_size((tick_size * 3.0 + desc_size * 1.6 + 8.0) as u32)
            .build_cartesian_2d(x_range, y_range)?;
        chart
            .configure_mesh()
            .x_desc(panel.x_label.as_str())
            .y_desc("validation bits per character")
            .axis_desc_style(font(desc_size))
            .label_style(font(tick_size))
            .x_labels(6)
            .y_labels(8)
            .x_label_formatter(&x_fmt)
            .y_label_formatter(&y_fmt)
            .max_light_lines(1)
            .bold_line_style(GRID_BOLD.stroke_width(1))
            .light_line_style(GRID_LIGHT.stroke_width(1))
            .axis_style(AXIS_COLOUR.stroke_width(1))
            .draw()?;
        let line = (s * 0.005).round().max(1.0) as u32;
        let marker = px(0.008, 2.5) as u32;
        let sample = px(0.05, 20.0) as i32;
        for (series, colour) in panel.series.iter().zip(PALETTE.iter().cycle()) {
            let colour = *colour;
            let pts: Vec<(f64, f64)> = series
                .points
                .iter()
                .copied()
                .filter(|(x, y)| x.is_finite() && y.is_finite())
                .collect();
            chart.draw_series(LineSeries::new(
                pts.iter().copied(),
                colour.stroke_width(line),
            ))?;
            chart
                .draw_series(pts.iter().map(|&p| Circle::new(p, marker, colour.filled())))?
                .label(series.name.as_str())
                .legend(move |(x, y)| {
                    EmptyElement::at((x, y))
                        + PathElement::new(vec![(0, 0), (sample, 0)], colour.stroke_width(line))
                        + Circle::new((sample / 2, 0), marker, colour.filled())
                });
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .margin(px(0.02, 4.0) as u32)
            .legend_area_size(sample as u32 + 6)
            .label_font(font(tick_size))
            .background_style(WHITE.mix(0.9))
            .border_style(GRID_BOLD.stroke_width(1))
            .draw()?;
    }
    root.present()?;
    Ok(())
}

fn encode_png(
    rgb: &[u8],
    width: u32,
    height: u32,
) -> std::result::Result<Vec<u8>, png::EncodingError> {
    let mut bytes = Vec::new();
    let mut encoder = png::Encoder::new(&mut bytes, width, height);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header()?;
    writer.write_image_data(rgb)?;
    writer.finish()?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    type Series = Vec<(u64, f64)>;

    const PNG_SIGNATURE: [u8; 8] = [0x89, b'P', b'N', b'G', 0x0d, 0x0a, 0x1a, 0x0a];

    /// A fresh directory under the system temp dir, removed when dropped.
    struct TempDir(PathBuf);
    impl TempDir {
        fn new(tag: &str) -> Self {
            use std::sync::atomic::{AtomicU64, Ordering};
            static N: AtomicU64 = AtomicU64::new(0);
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos());
            let dir = std::env::temp_dir().join(format!(
                "hourglass-plot-{tag}-{}-{nanos}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            std::fs::create_dir_all(&dir).unwrap();
            TempDir(dir)
        }
    }
    impl Drop for TempDir {
        fn drop(&mut self) {
            std::fs::remove_dir_all(&self.0).ok();
        }
    }

    /// Decodes a PNG: (width, height, RGB bytes).
    fn decode(path: &Path) -> (u32, u32, Vec<u8>) {
        let bytes = std::fs::read(path).unwrap();
        assert_eq!(bytes[..8], PNG_SIGNATURE, "{} is not a PNG", path.display());
        let decoder = png::Decoder::new(std::io::Cursor::new(bytes));
        let mut reader = decoder.read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size()];
        let info = reader.next_frame(&mut buf).unwrap();
        assert_eq!(info.color_type, png::ColorType::Rgb);
        buf.truncate(info.buffer_size());
        (info.width, info.height, buf)
    }

    fn distinct_colours(rgb: &[u8]) -> usize {
        let mut set = std::collections::HashSet::new();
        for px in rgb.chunks_exact(3) {
            set.insert([px[0], px[1], px[2]]);
        }
        set.len()
    }

    /// A training curve from 8 bpc down to about 2, noisy, and a validation point every 100 steps.
    fn run_curves() -> (Series, Series) {
        let bpc = |s: u64| 2.0 + 6.0 * (-(s as f64) / 350.0).exp();
        let train = (0..=2000u64)
            .step_by(10)
            .map(|s| {
                (
                    s,
                    bpc(s) + 0.15 * ((s as f64 * 0.37).sin() + (s as f64 * 1.3).cos()) / 2.0,
                )
            })
            .collect();
        let valid = (0..=2000u64)
            .step_by(100)
            .map(|s| (s, bpc(s) + 0.08))
            .collect();
        (train, valid)
    }

    #[test]
    fn writes_a_png_of_the_requested_size_with_something_drawn() {
        let dir = TempDir::new("full");
        let (train, valid) = run_curves();
        let curves = Curves {
            title: "hourglass on enwik8: bits per character",
            train: &train,
            valid: &valid,
            baseline: Some(("unigram baseline", 5.13)),
        };
        let path = dir.0.join("curve.png");
        write_png(&path, &curves, 960, 600).unwrap();
        let (w, h, rgb) = decode(&path);
        assert_eq!((w, h), (960, 600));
        // Anti-aliased text and lines in three colours on white: far more than a handful of colours.
        assert!(
            distinct_colours(&rgb) > 50,
            "only {} colours",
            distinct_colours(&rgb)
        );
        // The series colours appear (train slightly blended, valid exactly).
        let has = |c: [u8; 3]| rgb.chunks_exact(3).any(|p| p == c);
        assert!(has([VALID_COLOUR.0, VALID_COLOUR.1, VALID_COLOUR.2]));
        // No temporary file is left behind.
        assert!(!dir.0.join("curve.png.tmp").exists());

        // Overwriting an existing file works, at another size.
        write_png(&path, &curves, 400, 300).unwrap();
        let (w, h, _) = decode(&path);
        assert_eq!((w, h), (400, 300));
    }

    #[test]
    fn panels_draw_every_series_in_its_colour_and_refuse_empty_ones() {
        let dir = TempDir::new("panels");
        let (_, valid) = run_curves();
        let series = |name: &str, shift: f64| super::Series {
            name: name.into(),
            points: valid.iter().map(|&(s, v)| (s as f64, v + shift)).collect(),
        };
        let panel = |title: &str| Panel {
            title: title.into(),
            x_label: "training seconds".into(),
            series: vec![series("plain", 0.3), series("hourglass", 0.0)],
        };
        let path = dir.0.join("panels.png");
        write_panels_png(&path, &[panel("a"), panel("b"), panel("c")], 2, 900, 700).unwrap();
        let (w, h, rgb) = decode(&path);
        assert_eq!((w, h), (900, 700));
        for c in &PALETTE[..2] {
            assert!(
                rgb.chunks_exact(3).any(|p| p == [c.0, c.1, c.2]),
                "{c:?} missing"
            );
        }
        assert!(!rgb
            .chunks_exact(3)
            .any(|p| p == [PALETTE[2].0, PALETTE[2].1, PALETTE[2].2]));
        let empty = Panel {
            series: vec![super::Series {
                name: "nan".into(),
                points: vec![(1.0, f64::NAN)],
            }],
            ..panel("empty")
        };
        let err = write_panels_png(&path, &[panel("a"), empty], 2, 900, 700).unwrap_err();
        assert!(
            err.to_string().contains("\"empty\" has no finite points"),
            "{err}"
        );
        assert!(write_panels_png(&path, &[], 2, 900, 700).is_err());
        assert!(write_panels_png(&path, &[panel("a")], 1, 10, 10).is_err());
    }

    #[test]
    fn other_curve_shapes_draw() {
        let dir = TempDir::new("shapes");
        let (train, valid) = run_curves();
        let curves = |title, train, valid, baseline| Curves {
            title,
            train,
            valid,
            baseline,
        };
        let cases = [
            curves("train only", &train, &[], None),
            curves("valid only", &[], &valid, Some(("unigram", 5.13))),
            curves("baseline far off", &train, &valid, Some(("huge", 400.0))),
            curves(
                "baseline below",
                &train[150..],
                &valid[15..],
                Some(("low", 0.5)),
            ),
            curves(
                "flat",
                &[(0, 3.0), (10, 3.0), (20, 3.0)],
                &[],
                Some(("same", 3.0)),
            ),
            curves(
                "big steps",
                &[(0, 4.0), (2_500_000, 1.2)],
                &[(1_000_000, 1.5)],
                None,
            ),
            curves("negative values", &[(1, -0.5), (2, -0.7)], &[], None),
        ];
        for (i, c) in cases.iter().enumerate() {
            let (path, title) = (dir.0.join(format!("{i}.png")), c.title);
            write_png(&path, c, 640, 400).unwrap_or_else(|e| panic!("{title}: {e}"));
            let (w, h, rgb) = decode(&path);
            assert_eq!((w, h), (640, 400), "{title}");
            assert!(distinct_colours(&rgb) > 20, "{title}");
        }
    }

    #[test]
    fn empty_input_is_an_error_naming_the_path() {
        let dir = TempDir::new("empty");
        let path = dir.0.join("empty.png");
        let curves = Curves {
            title: "empty",
            train: &[],
            valid: &[],
            baseline: Some(("unigram", 5.0)),
        };
        let err = write_png(&path, &curves, 640, 400).unwrap_err();
        assert!(err.to_string().contains("empty.png"), "{err}");
        assert!(err.to_string().contains("no finite points"), "{err}");
        assert!(!path.exists());

        // Only non-finite points is just as empty.
        let nan = [(0, f64::NAN), (1, f64::INFINITY)];
        let curves = Curves {
            title: "nan",
            train: &nan,
            valid: &nan,
            baseline: None,
        };
        assert!(write_png(&path, &curves, 640, 400).is_err());
        assert!(!path.exists());
    }

    #[test]
    fn bad_sizes_and_paths_are_errors() {
        let dir = TempDir::new("bad");
        let train = [(0, 5.0), (1, 4.0)];
        let curves = Curves {
            title: "t",
            train: &train,
            valid: &[],
            baseline: None,
        };
        for (w, h) in [(0, 0), (10, 400), (640, 5), (100_000, 400)] {
            let err = write_png(&dir.0.join("s.png"), &curves, w, h).unwrap_err();
            assert!(err.to_string().contains("image size"), "{err}");
        }
        let missing = dir.0.join("no-such-dir").join("c.png");
        let err = write_png(&missing, &curves, 640, 400).unwrap_err();
        assert!(err.to_string().contains("no-such-dir"), "{err}");
    }

    #[test]
    fn nan_points_are_skipped() {
        let dir = TempDir::new("nan");
        let train = [
            (0, 8.0),
            (10, f64::NAN),
            (20, 4.0),
            (30, f64::INFINITY),
            (40, 3.0),
            (50, f64::NEG_INFINITY),
        ];
        let valid = [(0, f64::NAN), (40, 3.2)];
        let curves = Curves {
            title: "with NaN",
            train: &train,
            valid: &valid,
            baseline: Some(("b", f64::NAN)),
        };
        let path = dir.0.join("nan.png");
        write_png(&path, &curves, 640, 400).unwrap();
        let (w, h, rgb) = decode(&path);
        assert_eq!((w, h), (640, 400));
        assert!(distinct_colours(&rgb) > 20);

        // The range comes from the finite points only.
        let (x, y, shown) = ranges(&finite(&train), Some(f64::NAN));
        assert!(!shown);
        assert!(
            x.start.is_finite()
                && x.end.is_finite()
                && x.start <= 0.0
                && x.end >= 40.0
                && x.end < 45.0
        );
        assert!(y.start.is_finite() && y.end.is_finite() && y.start <= 3.0 && y.end >= 8.0);
    }

    #[test]
    fn one_point_draws() {
        let dir = TempDir::new("one");
        let valid = [(100, 2.5)];
        let curves = Curves {
            title: "one point",
            train: &[],
            valid: &valid,
            baseline: None,
        };
        let path = dir.0.join("one.png");
        write_png(&path, &curves, 480, 320).unwrap();
        let (w, h, rgb) = decode(&path);
        assert_eq!((w, h), (480, 320));
        assert!(rgb
            .chunks_exact(3)
            .any(|p| p == [VALID_COLOUR.0, VALID_COLOUR.1, VALID_COLOUR.2]));

        let (x, y, _) = ranges(&finite(&valid), None);
        assert!(x.start < 100.0 && x.end > 100.0, "{x:?}");
        assert!(y.start < 2.5 && y.end > 2.5, "{y:?}");
    }

    #[test]
    fn y_range_starts_near_the_data_and_takes_in_a_near_baseline() {
        let pts = [(0.0, 8.0), (1000.0, 2.0)];
        let (_, y, shown) = ranges(&pts, Some(5.1));
        assert!(shown);
        assert!(y.start > 1.0 && y.start < 2.0, "{y:?}");
        assert!(y.end > 8.0 && y.end < 9.5, "{y:?}");

        // A baseline under the curve but close is taken in; one far above is not.
        let pts = [(0.0, 3.0), (1000.0, 2.0)];
        let (_, y, shown) = ranges(&pts, Some(1.6));
        assert!(shown && y.start < 1.6, "{y:?}");
        let (_, y, shown) = ranges(&pts, Some(40.0));
        assert!(!shown && y.end < 4.0, "{y:?}");
    }

    #[test]
    fn tick_labels() {
        assert_eq!(tick_label(2.5, 0.5), "2.5");
        assert_eq!(tick_label(3.0, 1.0), "3");
        assert_eq!(tick_label(2.25, 0.05), "2.25");
        assert_eq!(tick_label(-0.0, 0.5), "0.0");
        assert_eq!(step_label(500.0, 100.0, 2000.0), "500");
        assert_eq!(step_label(12_500.0, 2_500.0, 15_000.0), "12.5k");
        assert_eq!(step_label(5_000.0, 5_000.0, 20_000.0), "5k");
        assert_eq!(step_label(0.0, 5_000.0, 20_000.0), "0");
        assert_eq!(step_label(2_000_000.0, 500_000.0, 2e6), "2.0M");
        assert_eq!(step_label(2_000_000.0, 1_000_000.0, 3e6), "2M");
        assert_eq!(tick_step(&(0.0..10.0), 8), 2.0);
        assert_eq!(tick_step(&(1.7..8.6), 8), 1.0);
    }

    /// Writes the example chart to /tmp/curve_example.png to look at (cargo test -- --ignored example_png).
    #[test]
    #[ignore]
    fn example_png() {
        let (train, valid) = run_curves();
        let curves = Curves {
            title: "hourglass on enwik8: bits per character",
            train: &train,
            valid: &valid,
            baseline: Some(("unigram baseline", 5.13)),
        };
        write_png(Path::new("/tmp/curve_example.png"), &curves, 960, 600).unwrap();
    }
}
