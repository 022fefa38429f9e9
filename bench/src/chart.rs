//! Charts of a report, as SVG files next to it (drawn with plotters): the throughput ratio per
//! connector and payload against the 0.9 target, and the latency percentiles of fnbroker and the
//! direct path.

use std::path::Path;

use anyhow::anyhow;
use plotters::prelude::*;

use crate::report::Row;

/// The throughput target, as a ratio to the direct path.
const TARGET: f64 = 0.9;

fn label(row: &Row) -> String {
    let size = if row.size >= 1024 && row.size.is_multiple_of(1024) {
        format!("{} KiB", row.size / 1024)
    } else {
        format!("{} B", row.size)
    };
    format!("{} {size}", row.connector)
}

/// Bars of fnbroker / direct per row, with the target line.
pub(crate) fn ratios(rows: &[Row], path: &Path) -> anyhow::Result<()> {
    let width = 160 + 90 * u32::try_from(rows.len()).unwrap_or(1);
    let root = SVGBackend::new(path, (width, 420)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
    let ratio = |r: &Row| {
        let v = r.ratio();
        if v.is_nan() { 0.0 } else { v }
    };
    let top = rows
        .iter()
        .map(|r| r.ratio_spread().max)
        .filter(|v| !v.is_nan())
        .fold(1.2_f64, f64::max);
    let n = rows.len();
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "fnbroker throughput / direct path (same run; median of the pairs, whisker: range)",
            ("sans-serif", 18),
        )
        .margin(12)
        .x_label_area_size(70)
        .y_label_area_size(50)
        .build_cartesian_2d((0..n).into_segmented(), 0.0..top)
        .map_err(|e| anyhow!("{e}"))?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(n)
        .x_label_formatter(&|x| match x {
            SegmentValue::CenterOf(i) => rows.get(*i).map(label).unwrap_or_default(),
            _ => String::new(),
        })
        .x_label_style(("sans-serif", 12))
        .y_desc("ratio")
        .draw()
        .map_err(|e| anyhow!("{e}"))?;
    chart
        .draw_series(rows.iter().enumerate().map(|(i, r)| {
            let value = ratio(r);
            let colour = if value >= TARGET {
                GREEN.mix(0.7)
            } else {
                RED.mix(0.6)
            };
            let mut bar = Rectangle::new(
                [
                    (SegmentValue::Exact(i), 0.0),
                    (SegmentValue::Exact(i + 1), value),
                ],
                colour.filled(),
            );
            bar.set_margin(0, 0, 12, 12);
            bar
        }))
        .map_err(|e| anyhow!("{e}"))?;
    // The range of the pairs' ratios, as a whisker through the bar.
    chart
        .draw_series(rows.iter().enumerate().filter_map(|(i, r)| {
            let s = r.ratio_spread();
            (!s.min.is_nan() && s.min < s.max).then(|| {
                PathElement::new(
                    [
                        (SegmentValue::CenterOf(i), s.min),
                        (SegmentValue::CenterOf(i), s.max),
                    ],
                    BLACK.stroke_width(2),
                )
            })
        }))
        .map_err(|e| anyhow!("{e}"))?;
    chart
        .draw_series(LineSeries::new(
            [
                (SegmentValue::Exact(0), TARGET),
                (SegmentValue::Exact(n), TARGET),
            ],
            BLUE.stroke_width(2),
        ))
        .map_err(|e| anyhow!("{e}"))?
        .label(format!("target {TARGET}"))
        .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], BLUE.stroke_width(2)));
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .border_style(BLACK)
        .background_style(WHITE.mix(0.8))
        .draw()
        .map_err(|e| anyhow!("{e}"))?;
    root.present().map_err(|e| anyhow!("{e}"))
}

/// The p50, p99 and p99.9 latency of every row, fnbroker solid and the direct path dashed, on a
/// logarithmic scale.
pub(crate) fn latencies(rows: &[Row], path: &Path) -> anyhow::Result<()> {
    let root = SVGBackend::new(path, (720, 460)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
    // The percentiles are in microseconds; the chart speaks milliseconds.
    let finite = |v: f64| v.is_finite() && v > 0.0;
    let values = rows.iter().flat_map(|r| {
        [
            r.latency.p50,
            r.latency.p99,
            r.latency.p999,
            r.direct_latency.p50,
            r.direct_latency.p99,
            r.direct_latency.p999,
        ]
    });
    let (low, high) = values
        .filter(|v| finite(*v))
        .map(|v| v / 1e3)
        .fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(v), hi.max(v)));
    if low > high {
        return Ok(());
    }
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "latency publish -> function, ms (solid: fnbroker, dashed: direct path)",
            ("sans-serif", 16),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..2.0, (low * 0.8..high * 1.25).log_scale())
        .map_err(|e| anyhow!("{e}"))?;
    chart
        .configure_mesh()
        .x_labels(3)
        .x_label_formatter(&|x: &f64| match x.round() as i64 {
            0 => "p50".into(),
            1 => "p99".into(),
            2 => "p99.9".into(),
            _ => String::new(),
        })
        .y_desc("ms")
        .y_label_formatter(&|v: &f64| format!("{v}"))
        .draw()
        .map_err(|e| anyhow!("{e}"))?;
    for (i, r) in rows.iter().enumerate() {
        let colour = Palette99::pick(i).to_rgba();
        let points = |l: &crate::report::Latency| {
            [l.p50, l.p99, l.p999]
                .into_iter()
                .enumerate()
                .filter(|(_, v)| finite(*v))
                .map(|(x, v)| (x as f64, v / 1e3))
                .collect::<Vec<_>>()
        };
        chart
            .draw_series(LineSeries::new(points(&r.latency), colour.stroke_width(2)))
            .map_err(|e| anyhow!("{e}"))?
            .label(label(r))
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], colour.stroke_width(2)));
        chart
            .draw_series(DashedLineSeries::new(
                points(&r.direct_latency),
                4,
                4,
                colour.stroke_width(1),
            ))
            .map_err(|e| anyhow!("{e}"))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .border_style(BLACK)
        .background_style(WHITE.mix(0.8))
        .draw()
        .map_err(|e| anyhow!("{e}"))?;
    root.present().map_err(|e| anyhow!("{e}"))
}
