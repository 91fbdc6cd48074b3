//! `train::plot`'s unit tests (its private helpers too): sizes, colours, ranges, tick labels and errors.

use super::*;
use crate::testing::TempDir;

/// Checks the PNG signature and decodes: (width, height, RGB of every pixel, all opaque).
fn decode(path: &Path) -> (u32, u32, Vec<Colour>) {
    let bytes = std::fs::read(path).unwrap();
    assert_eq!(bytes[..8], [0x89, b'P', b'N', b'G', 0x0d, 0x0a, 0x1a, 0x0a]);
    let pixmap = Pixmap::decode_png(&bytes).unwrap();
    let pixels = pixmap
        .pixels()
        .iter()
        .map(|p| {
            assert_eq!(p.alpha(), 255);
            [p.red(), p.green(), p.blue()]
        })
        .collect();
    (pixmap.width(), pixmap.height(), pixels)
}

fn distinct(pixels: &[Colour]) -> usize {
    pixels
        .iter()
        .collect::<std::collections::HashSet<_>>()
        .len()
}

type Steps = Vec<(u64, f64)>;

/// A training curve from 8 bpc down to about 2, noisy, and a validation point every 100 steps.
fn run_curves() -> (Steps, Steps) {
    let bpc = |s: u64| 2.0 + 6.0 * (-(s as f64) / 350.0).exp();
    let noise = |s: f64| 0.15 * ((s * 0.37).sin() + (s * 1.3).cos()) / 2.0;
    let train = (0..=2000)
        .step_by(10)
        .map(|s| (s, bpc(s) + noise(s as f64)));
    let valid = (0..=2000).step_by(100).map(|s| (s, bpc(s) + 0.08));
    (train.collect(), valid.collect())
}

fn curves<'a>(train: &'a [(u64, f64)], valid: &'a [(u64, f64)], baseline: f64) -> Curves<'a> {
    let baseline = Some(("unigram baseline", baseline));
    Curves {
        title: "hourglass on enwik8: bits per character",
        y_label: "bits per character",
        train,
        valid,
        baseline,
    }
}

fn panels(valid: &[(u64, f64)]) -> Vec<Panel> {
    let series = |name: &str, shift: f64| Series {
        name: name.into(),
        points: valid.iter().map(|&(s, v)| (s as f64, v + shift)).collect(),
    };
    let panel = |title: &str| Panel {
        title: title.into(),
        x_label: "training seconds".into(),
        y_label: "validation bits per character".into(),
        series: vec![series("plain", 0.3), series("hourglass", 0.0)],
    };
    vec![
        panel("context 512: against time"),
        panel("context 512: against compute"),
    ]
}

#[test]
fn writes_a_png_of_the_requested_size_in_the_curves_colours() {
    let dir = TempDir::new("plot-full");
    let (train, valid) = run_curves();
    let path = dir.path().join("curve.png");
    write_png(&path, &curves(&train, &valid, 5.13), 960, 600).unwrap();
    let (w, h, pixels) = decode(&path);
    assert_eq!((w, h), (960, 600));
    // Anti-aliased text and lines on white: far more than a handful of colours, the curves' among them.
    assert!(distinct(&pixels) > 50, "only {} colours", distinct(&pixels));
    for colour in [TRAIN_COLOUR, VALID_COLOUR, BASELINE_COLOUR] {
        assert!(pixels.contains(&colour), "{colour:?} missing");
    }
    // Overwriting an existing file works, at another size, and leaves no temporary file behind.
    write_png(&path, &curves(&train, &valid, 5.13), 400, 300).unwrap();
    assert_eq!(decode(&path).0, 400);
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
}

#[test]
fn other_curve_shapes_draw() {
    let dir = TempDir::new("plot-shapes");
    let (train, valid) = run_curves();
    let with_nan = [
        (0, 8.0),
        (10, f64::NAN),
        (20, 4.0),
        (30, f64::INFINITY),
        (40, 3.0),
    ];
    let cases = [
        curves(&train, &[], f64::NAN),
        curves(&[], &valid, 5.13),
        curves(&train, &valid, 400.0),
        curves(&train[150..], &valid[15..], 0.5),
        curves(&[(0, 3.0), (10, 3.0), (20, 3.0)], &[], 3.0),
        curves(&[(0, 4.0), (2_500_000, 1.2)], &[(1_000_000, 1.5)], 2.0),
        curves(&[(1, -0.5), (2, -0.7)], &[], -0.6),
        curves(&with_nan, &[(0, f64::NAN), (40, 3.2)], f64::NAN),
        curves(&[], &[(100, 2.5)], 2.6),
    ];
    for (i, c) in cases.iter().enumerate() {
        let path = dir.path().join(format!("{i}.png"));
        write_png(&path, c, 640, 400).unwrap_or_else(|e| panic!("case {i}: {e}"));
        let (w, h, pixels) = decode(&path);
        assert_eq!((w, h), (640, 400), "case {i}");
        assert!(distinct(&pixels) > 20, "case {i}");
    }
}

#[test]
fn panels_draw_every_series_in_its_colour_and_refuse_empty_ones() {
    let dir = TempDir::new("plot-panels");
    let path = dir.path().join("panels.png");
    let mut panels = panels(&run_curves().1);
    write_panels_png(&path, &panels, 2, 900, 700).unwrap();
    let (w, h, pixels) = decode(&path);
    assert_eq!((w, h), (900, 700));
    assert!(pixels.contains(&PALETTE[0]) && pixels.contains(&PALETTE[1]));
    assert!(
        !pixels.contains(&PALETTE[2]),
        "a third colour for two series"
    );

    panels[1].series = vec![Series {
        name: "nan".into(),
        points: vec![(1.0, f64::NAN)],
    }];
    let err = write_panels_png(&path, &panels, 2, 900, 700).unwrap_err();
    assert!(
        err.to_string()
            .contains("\"context 512: against compute\" has no finite points"),
        "{err}"
    );
    assert!(write_panels_png(&path, &[], 2, 900, 700).is_err());
    assert!(write_panels_png(&path, &panels[..1], 1, 10, 10).is_err());
}

#[test]
fn no_finite_points_bad_sizes_and_bad_paths_are_errors_naming_the_file() {
    let dir = TempDir::new("plot-errors");
    let path = dir.path().join("empty.png");
    let nan = [(0, f64::NAN), (1, f64::INFINITY)];
    for (train, valid) in [(&[][..], &[][..]), (&nan[..], &nan[..])] {
        let err = write_png(&path, &curves(train, valid, 5.0), 640, 400).unwrap_err();
        assert!(
            err.to_string().contains("empty.png: no finite points"),
            "{err}"
        );
        assert!(!path.exists());
    }
    let train = [(0, 5.0), (1, 4.0)];
    for (w, h) in [(0, 0), (10, 400), (640, 5), (100_000, 400)] {
        let err = write_png(&path, &curves(&train, &[], 5.0), w, h).unwrap_err();
        assert!(err.to_string().contains("image size"), "{err}");
    }
    let missing = dir.path().join("no-such-dir").join("c.png");
    let err = write_png(&missing, &curves(&train, &[], 5.0), 640, 400).unwrap_err();
    assert!(err.to_string().contains("no-such-dir"), "{err}");
}

#[test]
fn ranges_start_near_the_data_and_take_in_a_near_baseline() {
    let (x, y, shown) = ranges(&[(0.0, 8.0), (1000.0, 2.0)], Some(5.1));
    assert!(
        shown && x.start == 0.0 && x.end > 1000.0 && x.end < 1050.0,
        "{x:?}"
    );
    assert!(
        y.start > 1.0 && y.start < 2.0 && y.end > 8.0 && y.end < 9.5,
        "{y:?}"
    );
    // A baseline under the curve but close is taken in; one far above or not finite is not.
    let pts = [(0.0, 3.0), (1000.0, 2.0)];
    let (_, y, shown) = ranges(&pts, Some(1.6));
    assert!(shown && y.start < 1.6, "{y:?}");
    for far in [40.0, f64::NAN] {
        let (_, y, shown) = ranges(&pts, Some(far));
        assert!(!shown && y.end < 4.0, "{y:?}");
    }
    // One point gets a range around it.
    let (x, y, _) = ranges(&[(100.0, 2.5)], None);
    assert!(x.start < 100.0 && x.end > 100.0 && y.start < 2.5 && y.end > 2.5);
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
    assert_eq!(tick_step(&(0.0..10.0), 8, 0.0), 2.0);
    assert_eq!(tick_step(&(1.7..8.6), 8, 0.0), 1.0);
    assert_eq!(tick_step(&(0.0..17_600.0), 8, 1.0), 2_500.0);
    // Steps are whole: a short step range gets fewer ticks, not fractional ones.
    assert_eq!(tick_step(&(99.0..101.0), 8, 1.0), 1.0);
    assert_eq!(
        grid(&(0.9..2.1), 1.0),
        [(1.0, true), (1.5, false), (2.0, true)]
    );
    assert_eq!(
        baseline_label("unigram", 5.126, false),
        "unigram (5.13, off scale)"
    );
}

#[test]
fn text_is_measured_in_the_embedded_font() {
    let font = embedded_font().unwrap();
    let canvas = Canvas {
        pixmap: Pixmap::new(1, 1).unwrap(),
        font,
    };
    // Ubuntu Light at 20 px to the em: about 8 px a character.
    let width = canvas.text_width("bits per character", 20.0);
    assert!(width > 120.0 && width < 180.0, "{width}");
    assert_eq!(canvas.text_width("", 20.0), 0.0);
}

/// Writes the example charts to /tmp/curve_example.png and /tmp/panels_example.png, to look at
/// (cargo test --lib -- --ignored example_pngs).
#[test]
#[ignore]
fn example_pngs() {
    let (train, valid) = run_curves();
    let path = Path::new("/tmp/curve_example.png");
    write_png(path, &curves(&train, &valid, 5.13), 960, 600).unwrap();
    let path = Path::new("/tmp/panels_example.png");
    write_panels_png(path, &panels(&valid), 2, 1400, 560).unwrap();
}
