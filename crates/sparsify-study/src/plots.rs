//! The study's PNG figures, drawn with `plotters` (font embedded: DejaVu Sans).

use std::path::Path;
use std::sync::Once;

use image::codecs::png::PngEncoder;
use image::{ColorType, ImageEncoder};
use plotters::prelude::*;
use plotters::style::{register_font, FontStyle};

use crate::error::{Result, StudyError};

/// One line of a chart.
#[derive(Debug, Clone)]
pub struct Series {
    /// The legend entry.
    pub label: String,
    /// `(x, y)` points in order of x.
    pub points: Vec<(f64, f64)>,
}

/// How the x axis is drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XAxis {
    /// Linear, labels with two decimals (sparsity levels).
    Linear,
    /// Logarithmic, labels as byte sizes.
    LogBytes,
}

/// Figure size in pixels.
const WIDTH: u32 = 960;
const HEIGHT: u32 = 640;

static FONT: Once = Once::new();
const DEJAVU: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");

fn font() {
    FONT.call_once(|| {
        // The embedded font is a valid TrueType file; a failure here would only lose labels.
        let _ = register_font("sans-serif", FontStyle::Normal, DEJAVU);
    });
}

const COLORS: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
];

/// `1.5 MB`-style labels.
pub fn human_bytes(b: f64) -> String {
    let units = ["B", "kB", "MB", "GB", "TB"];
    let mut v = b;
    let mut u = 0;
    while v >= 1000.0 && u + 1 < units.len() {
        v /= 1000.0;
        u += 1;
    }
    if v >= 100.0 {
        format!("{v:.0} {}", units[u])
    } else {
        format!("{v:.1} {}", units[u])
    }
}

fn bounds(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = values
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
            (a.min(v), b.max(v))
        });
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    let pad = ((hi - lo) * 0.05).max(hi.abs() * 1e-3).max(1e-9);
    (lo - pad, hi + pad)
}

/// Draws a line chart (lines with points) as a PNG to `path`, all or nothing: drawn in memory,
/// then written by the library's atomic writer (temp file, fsync, rename).
pub fn line_chart(
    path: &Path,
    title: &str,
    x_desc: &str,
    y_desc: &str,
    x_axis: XAxis,
    series: &[Series],
) -> Result<()> {
    font();
    let tx = |x: f64| match x_axis {
        XAxis::Linear => x,
        XAxis::LogBytes => x.max(1.0).log10(),
    };
    let (x0, x1) = bounds(series.iter().flat_map(|s| s.points.iter().map(|p| tx(p.0))));
    let (y0, y1) = bounds(series.iter().flat_map(|s| s.points.iter().map(|p| p.1)));
    let err = |e: &dyn std::fmt::Display| StudyError::Plot(format!("{}: {e}", path.display()));
    let mut rgb = vec![0u8; (WIDTH * HEIGHT * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut rgb, (WIDTH, HEIGHT)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(&e))?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 24))
            .margin(16)
            .x_label_area_size(48)
            .y_label_area_size(72)
            .build_cartesian_2d(x0..x1, y0..y1)
            .map_err(|e| err(&e))?;
        let xfmt = |v: &f64| match x_axis {
            XAxis::Linear => format!("{v:.2}"),
            XAxis::LogBytes => human_bytes(10f64.powf(*v)),
        };
        chart
            .configure_mesh()
            .x_desc(x_desc)
            .y_desc(y_desc)
            .x_label_formatter(&xfmt)
            .label_style(("sans-serif", 14))
            .axis_desc_style(("sans-serif", 16))
            .draw()
            .map_err(|e| err(&e))?;
        for (k, s) in series.iter().enumerate() {
            let color = COLORS[k % COLORS.len()];
            let pts: Vec<(f64, f64)> = s.points.iter().map(|&(x, y)| (tx(x), y)).collect();
            chart
                .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))
                .map_err(|e| err(&e))?
                .label(s.label.clone())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
                });
            chart
                .draw_series(pts.into_iter().map(|p| Circle::new(p, 3, color.filled())))
                .map_err(|e| err(&e))?;
        }
        chart
            .configure_series_labels()
            .label_font(("sans-serif", 14))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .position(SeriesLabelPosition::UpperRight)
            .draw()
            .map_err(|e| err(&e))?;
        root.present().map_err(|e| err(&e))?;
    }
    let mut png = Vec::new();
    PngEncoder::new(&mut png)
        .write_image(&rgb, WIDTH, HEIGHT, ColorType::Rgb8)
        .map_err(|e| err(&e))?;
    data_sparsifier::format::write_atomic(path, &png).map_err(StudyError::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_a_png() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.png");
        let s = Series {
            label: "a".into(),
            points: vec![(1e3, 0.5), (1e6, 0.7)],
        };
        line_chart(&path, "t", "x", "y", XAxis::LogBytes, &[s]).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(&bytes[1..4], b"PNG");
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temp file left"
        );
        assert_eq!(human_bytes(1_500_000.0), "1.5 MB");
    }
}
