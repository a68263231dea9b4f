//! `regionkv bench ... --plot FILE.svg`: a bench's figures as curves against its client
//! (or thread, writer, region) count, drawn with `plotters` into one SVG: throughput
//! above, latency below. A curve says more than a table: where a rate stops scaling,
//! where a tail grows.
//!
//! Only figures a run measured are drawn: a key whose figure is 0 (a part the run
//! skipped, such as the TCP case with `--in-process-only`) is left out of its curve,
//! and a curve with no point is left out of the chart.

use std::collections::BTreeMap;
use std::path::Path;

use plotters::prelude::*;

/// One named curve: (x, y) points sorted by x.
#[derive(Clone, Debug, PartialEq)]
pub struct Curve {
    /// The legend's text.
    pub name: String,
    /// The points, sorted by x, each y > 0.
    pub points: Vec<(f64, f64)>,
}

/// What a bench can draw: its throughput and latency curves over one x axis.
#[derive(Clone, Debug, PartialEq)]
pub struct Chart {
    /// The title above the chart.
    pub title: String,
    /// What x counts ("client threads", "regions per store", ...).
    pub x_label: String,
    /// Operations per second.
    pub throughput: Vec<Curve>,
    /// Latencies in microseconds.
    pub latency: Vec<Curve>,
}

impl Chart {
    /// A chart with no curve yet.
    pub fn new(title: &str, x_label: &str) -> Self {
        Chart {
            title: title.to_owned(),
            x_label: x_label.to_owned(),
            throughput: Vec::new(),
            latency: Vec::new(),
        }
    }

    /// Adds a throughput curve from a bench map (keys are counts), if it has a point.
    #[must_use]
    pub fn rate(mut self, name: &str, figures: &BTreeMap<String, f64>) -> Self {
        self.throughput.extend(curve(name, figures));
        self
    }

    /// Adds a latency curve from a bench map (keys are counts), if it has a point.
    #[must_use]
    pub fn latency(mut self, name: &str, figures: &BTreeMap<String, f64>) -> Self {
        self.latency.extend(curve(name, figures));
        self
    }
}

/// The curve of a bench map keyed by counts, without the figures the run did not
/// measure (0) and keys that are not numbers; `None` when nothing is left.
pub fn curve(name: &str, figures: &BTreeMap<String, f64>) -> Option<Curve> {
    let mut points: Vec<(f64, f64)> = figures
        .iter()
        .filter_map(|(k, &v)| Some((k.parse::<f64>().ok()?, v)))
        .filter(|&(x, y)| x > 0.0 && y > 0.0 && y.is_finite())
        .collect();
    points.sort_by(|a, b| a.0.total_cmp(&b.0));
    (!points.is_empty()).then(|| Curve { name: name.to_owned(), points })
}

/// Why a chart could not be drawn.
#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    /// The run measured nothing that can be drawn.
    #[error("nothing to plot: the run measured no curve (every figure was skipped)")]
    Empty,
    /// Drawing or writing the file failed.
    #[error("plot {path}: {message}")]
    Draw {
        /// The file asked for.
        path: String,
        /// What plotters said.
        message: String,
    },
}

/// Draws `chart` into the SVG file `path` (replaced if it exists).
pub fn draw(path: &Path, chart: &Chart) -> Result<(), PlotError> {
    if chart.throughput.is_empty() && chart.latency.is_empty() {
        return Err(PlotError::Empty);
    }
    let fail = |e: &dyn std::fmt::Display| PlotError::Draw {
        path: path.display().to_string(),
        message: e.to_string(),
    };
    let root = SVGBackend::new(path, (960, 720)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| fail(&e))?;
    let root = root.titled(&chart.title, ("sans-serif", 22)).map_err(|e| fail(&e))?;
    let (upper, lower) = root.split_vertically(360);
    panel(&upper, &chart.x_label, "operations per second", &chart.throughput)
        .map_err(|e| fail(&e))?;
    panel(&lower, &chart.x_label, "latency (µs)", &chart.latency).map_err(|e| fail(&e))?;
    root.present().map_err(|e| fail(&e))
}

type Area<'a> = DrawingArea<SVGBackend<'a>, plotters::coord::Shift>;
type DrawResult<'a> =
    Result<(), DrawingAreaErrorKind<<SVGBackend<'a> as DrawingBackend>::ErrorType>>;

/// One panel: every curve against a logarithmic x axis (counts grow by factors).
fn panel<'a>(area: &Area<'a>, x_label: &str, y_label: &str, curves: &[Curve]) -> DrawResult<'a> {
    if curves.is_empty() {
        return area.draw(&Text::new(
            format!("{y_label}: not measured in this run"),
            (40, 40),
            ("sans-serif", 16),
        ));
    }
    let points = curves.iter().flat_map(|c| c.points.iter());
    let (x_min, x_max, y_max) = points
        .fold((f64::MAX, f64::MIN, 0.0_f64), |(a, b, c), p| (a.min(p.0), b.max(p.0), c.max(p.1)));
    // A single count still gets an axis around it.
    let (x_lo, x_hi) = if x_max > x_min { (x_min, x_max) } else { (x_min / 2.0, x_max * 2.0) };
    let mut chart = ChartBuilder::on(area)
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(80)
        .build_cartesian_2d((x_lo..x_hi).log_scale(), 0.0..y_max * 1.1)?;
    chart
        .configure_mesh()
        .light_line_style(TRANSPARENT)
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|y| format!("{y:.0}"))
        .x_desc(x_label)
        .y_desc(y_label)
        .draw()?;
    for (i, c) in curves.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(c.points.iter().copied(), color.stroke_width(2)))?
            .label(c.name.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
        chart.draw_series(c.points.iter().map(|&p| Circle::new(p, 3, color.filled())))?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperLeft)
        .draw()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, f64)]) -> BTreeMap<String, f64> {
        pairs.iter().map(|&(k, v)| (k.to_owned(), v)).collect()
    }

    #[test]
    fn a_curve_keeps_measured_points_in_count_order() {
        // BTreeMap orders "16" before "2": the curve must order by the number.
        let c = curve("puts", &map(&[("16", 5.0), ("2", 3.0), ("64", 0.0), ("x", 1.0)])).unwrap();
        assert_eq!(c.points, vec![(2.0, 3.0), (16.0, 5.0)]);
        assert!(curve("none", &map(&[("1", 0.0)])).is_none());
    }

    #[test]
    fn a_chart_is_drawn_with_every_curve_and_its_labels() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.svg");
        let chart = Chart::new("bench cluster", "client threads")
            .rate("puts in process", &map(&[("1", 1000.0), ("16", 9000.0), ("64", 30000.0)]))
            .rate("puts over TCP", &map(&[("1", 700.0), ("64", 0.0)]))
            .latency("put p99", &map(&[("1", 900.0), ("16", 2500.0), ("64", 4000.0)]));
        draw(&path, &chart).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        assert!(svg.starts_with("<svg"), "{}", &svg[..svg.len().min(80)]);
        for text in ["bench cluster", "client threads", "puts in process", "puts over TCP"] {
            assert!(svg.contains(text), "{text} missing");
        }
        assert!(svg.contains("put p99"));
        // One 2-pixel line per curve (legends and axes are 1 pixel wide).
        let curves = svg.split("<polyline").filter(|p| p.contains("stroke-width=\"2\"")).count();
        assert_eq!(curves, 3);
    }

    #[test]
    fn a_run_that_measured_nothing_is_refused_and_writes_no_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.svg");
        let chart = Chart::new("t", "x").rate("r", &map(&[("1", 0.0)]));
        assert!(matches!(draw(&path, &chart), Err(PlotError::Empty)));
        assert!(!path.exists());
    }
}
