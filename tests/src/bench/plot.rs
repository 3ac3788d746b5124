//! PNG plots of cost against the number of services (log-log, a line per variant or case, bars
//! from min to max), drawn with plotters' bitmap backend and the DejaVu Sans font.

use std::{
    path::{Path, PathBuf},
    sync::OnceLock,
};

use plotters::{
    prelude::*,
    style::{register_font, FontStyle},
};

use super::{
    error::{BenchError, Result},
    report::{control_summary, packet_summary, traffic_summary, TrafficMetric, TRAFFIC_METRICS},
    results::{ConntrackFill, Method, PacketCase, Results},
    stats::Summary,
    test_run::Hook,
    variants::Variant,
    PLOT_FONT, PLOT_FONT_PACKAGE,
};

const SIZE: (u32, u32) = (960, 600);
const COLORS: [RGBColor; 6] = [
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0xd6, 0x27, 0x28),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0x44, 0x44, 0x44),
    RGBColor(0x94, 0x67, 0xbd),
    RGBColor(0xff, 0x7f, 0x0e),
];

/// One line: a label and (services, summary) points.
struct Series {
    label: String,
    points: Vec<(u32, Summary)>,
}

/// Draws every plot the results have data for into `dir`; returns the files written.
pub fn draw_all(dir: &Path, results: &Results) -> Result<Vec<PathBuf>> {
    register_dejavu()?;
    let sizes = &results.plan.sizes;
    let mut charts: Vec<(String, String, String, Vec<Series>)> = Vec::new();
    for (metric, unit) in TRAFFIC_METRICS {
        let series = Variant::ALL
            .iter()
            .map(|&v| Series {
                label: v.label().to_string(),
                points: points(sizes, |n| traffic_summary(results, v, n, metric)),
            })
            .collect();
        let file = match metric {
            TrafficMetric::ConnectionRate => "new_connections",
            TrafficMetric::ConnectP50 => "connect_latency_p50",
            TrafficMetric::ConnectP99 => "connect_latency_p99",
            TrafficMetric::Throughput => "stream_throughput",
            TrafficMetric::RequestRate => "request_response",
        };
        charts.push((file.into(), metric.label().into(), unit.into(), series));
    }
    for hook in Hook::ALL {
        for fill in [ConntrackFill::Empty, ConntrackFill::NinetyPercent] {
            let series = PACKET_LINES
                .iter()
                .map(|&(label, case, method)| Series {
                    label: label.to_string(),
                    points: points(sizes, |n| {
                        packet_summary(results, hook, fill, n, case, method)
                    }),
                })
                .collect();
            let file = format!(
                "per_packet_{}_conntrack_{}",
                hook.label().to_lowercase(),
                if fill == ConntrackFill::Empty {
                    "empty"
                } else {
                    "90"
                }
            );
            let title = format!("{} per packet, conntrack {}", hook.label(), fill.label());
            charts.push((file, title, "ns".into(), series));
        }
    }
    for (file, title, cells) in [
        (
            "programming",
            "Programming N x 10 endpoints",
            &results.programming,
        ),
        (
            "endpoint_change",
            "One endpoint change",
            &results.endpoint_change,
        ),
    ] {
        let series = Variant::TRANSLATING
            .iter()
            .map(|&v| Series {
                label: v.label().to_string(),
                points: points(sizes, |n| control_summary(cells, v, n)),
            })
            .collect();
        charts.push((file.into(), title.into(), "seconds".into(), series));
    }
    let agent = Series {
        label: "lb-agent VmRSS".into(),
        points: results
            .agent
            .iter()
            .filter_map(|a| Some((a.services, Summary::of(&a.rss_mib)?)))
            .collect(),
    };
    charts.push((
        "agent_rss".into(),
        "lb-agent memory".into(),
        "MiB".into(),
        vec![agent],
    ));

    let mut written = Vec::new();
    for (file, title, unit, series) in charts {
        let series: Vec<Series> = series
            .into_iter()
            .filter(|s| !s.points.is_empty())
            .collect();
        if series.is_empty() {
            continue;
        }
        let path = dir.join(format!("{file}.png"));
        draw(&path, &title, &unit, &series).map_err(|e| BenchError::Plot {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        written.push(path);
    }
    Ok(written)
}

const PACKET_LINES: [(&str, PacketCase, Method); 6] = [
    ("no-op, repeat", PacketCase::NoOp, Method::Repeat),
    (
        "non-service, repeat",
        PacketCase::NonService,
        Method::Repeat,
    ),
    (
        "established, repeat",
        PacketCase::Established,
        Method::Repeat,
    ),
    ("no-op, once", PacketCase::NoOp, Method::Single),
    ("established, once", PacketCase::Established, Method::Single),
    ("new flow, once", PacketCase::NewFlow, Method::Single),
];

fn points(sizes: &[u32], summary: impl Fn(u32) -> Option<Summary>) -> Vec<(u32, Summary)> {
    sizes
        .iter()
        .filter_map(|&n| Some((n, summary(n)?)))
        .collect()
}

fn draw(
    path: &Path,
    title: &str,
    unit: &str,
    series: &[Series],
) -> std::result::Result<(), Box<dyn std::error::Error>> {
    let all = series.iter().flat_map(|s| &s.points);
    let (x_min, x_max) = all.clone().fold((f64::MAX, f64::MIN), |(lo, hi), (n, _)| {
        (lo.min(f64::from(*n)), hi.max(f64::from(*n)))
    });
    let (y_min, y_max) = all.fold((f64::MAX, f64::MIN), |(lo, hi), (_, s)| {
        (lo.min(s.min), hi.max(s.max))
    });
    let x_range = (x_min / 2.0).max(0.5)..x_max * 2.0;
    let y_range = (y_min / 2.0).max(1e-9)..(y_max * 2.0).max(1e-8);

    let root = BitMapBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 24))
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(72)
        .build_cartesian_2d(x_range.log_scale(), y_range.log_scale())?;
    chart
        .configure_mesh()
        .x_desc("services programmed (log)")
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_labels(8)
        .y_label_formatter(&|y| axis_label(*y))
        .y_desc(format!("{unit} (log)"))
        .label_style(("sans-serif", 14))
        .draw()?;
    for (index, line) in series.iter().enumerate() {
        let color = COLORS[index % COLORS.len()];
        let xy: Vec<(f64, f64)> = line
            .points
            .iter()
            .map(|(n, s)| (f64::from(*n), s.median))
            .collect();
        chart
            .draw_series(LineSeries::new(xy.clone(), color.stroke_width(2)))?
            .label(line.label.as_str())
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color.stroke_width(2)));
        chart.draw_series(xy.iter().map(|&p| Circle::new(p, 4, color.filled())))?;
        chart.draw_series(line.points.iter().map(|(n, s)| {
            ErrorBar::new_vertical(f64::from(*n), s.min, s.median, s.max, color, 8)
        }))?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .draw()?;
    root.present()?;
    Ok(())
}

/// A short axis label: 3 significant digits, thousands as k and millions as M.
fn axis_label(value: f64) -> String {
    let (scaled, suffix) = match value.abs() {
        a if a >= 1e6 => (value / 1e6, "M"),
        a if a >= 1e3 => (value / 1e3, "k"),
        _ => (value, ""),
    };
    let digits = if scaled.abs() >= 100.0 || scaled == 0.0 {
        0
    } else {
        (2 - scaled.abs().log10().floor() as i32).max(0) as usize
    };
    let text = format!("{scaled:.digits$}");
    let text = if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.')
    } else {
        &text
    };
    format!("{text}{suffix}")
}

/// Registers DejaVu Sans as plotters' sans-serif font (once per process).
fn register_dejavu() -> Result<()> {
    static REGISTERED: OnceLock<std::result::Result<(), String>> = OnceLock::new();
    REGISTERED
        .get_or_init(|| {
            let bytes = std::fs::read(PLOT_FONT).map_err(|e| {
                format!("{PLOT_FONT}: {e} (install the Debian package {PLOT_FONT_PACKAGE})")
            })?;
            // plotters keeps fonts for the whole process; the font is read once.
            let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            register_font("sans-serif", FontStyle::Normal, bytes)
                .map_err(|_| format!("{PLOT_FONT} is not a usable font"))
        })
        .clone()
        .map_err(|message| BenchError::Plot {
            path: "plots".into(),
            message,
        })
}

#[cfg(test)]
mod tests {
    use super::axis_label;

    #[test]
    fn axis_labels_are_short() {
        assert_eq!(axis_label(10_000.0), "10k");
        assert_eq!(axis_label(2_500.0), "2.5k");
        assert_eq!(axis_label(1_500_000.0), "1.5M");
        assert_eq!(axis_label(0.001), "0.001");
        assert_eq!(axis_label(0.0123), "0.0123");
        assert_eq!(axis_label(150.0), "150");
        assert_eq!(axis_label(20.0), "20");
    }
}
