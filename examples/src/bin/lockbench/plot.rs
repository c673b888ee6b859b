//! `--plot FILE.svg`: the latency distribution of every implementation, one panel per scenario,
//! as cumulative distributions on a log-scale latency axis (a line further left is faster; the
//! height at a latency is the share of cycles at most that slow).

use std::path::Path;

use anyhow::{anyhow, Result};
use plotters::prelude::*;

use crate::impls::Kind;
use crate::report::Report;
use crate::simple::Sequential;

/// Points per line: enough for a smooth curve, few enough for a small file.
const POINTS: usize = 300;

struct Panel {
    title: String,
    what: &'static str,
    lines: Vec<(Kind, Vec<u64>)>,
}

fn panels(report: &Report) -> Vec<Panel> {
    let mut out = Vec::new();
    let sequential = |seq: &Option<Sequential>, title: &str| {
        seq.as_ref().map(|seq| Panel {
            title: title.to_owned(),
            what: "lock + release",
            lines: seq
                .rows
                .iter()
                .map(|r| (r.kind, r.samples.clone()))
                .collect(),
        })
    };
    out.extend(sequential(&report.reused, "one task, one key reused"));
    out.extend(sequential(&report.fresh, "one task, a new key every cycle"));
    let tasks = report.distinct_tasks;
    for (rows, title) in [
        (
            &report.distinct,
            format!("{tasks} tasks, each on its own key"),
        ),
        (
            &report.distinct_fresh,
            format!("{tasks} tasks, a new key every cycle"),
        ),
    ] {
        if !rows.is_empty() {
            out.push(Panel {
                title,
                what: "lock + release",
                lines: rows.iter().map(|d| (d.kind, d.samples.clone())).collect(),
            });
        }
    }
    for procs in [1, 2] {
        let lines: Vec<(Kind, Vec<u64>)> = report
            .contended
            .iter()
            .filter(|r| r.procs == procs && r.waiters == 100 && r.body.is_zero())
            .map(|r| (r.kind, r.a.handoff_samples.clone()))
            .collect();
        if !lines.is_empty() {
            out.push(Panel {
                title: format!("one key, {procs} proc × 100 waiters, body 0"),
                what: "handoff",
                lines,
            });
        }
    }
    for p in &mut out {
        p.lines.retain(|(_, s)| !s.is_empty());
    }
    out.retain(|p| !p.lines.is_empty());
    out
}

fn color(kind: Kind) -> RGBColor {
    match kind {
        Kind::Raw => RGBColor(0, 0, 0),
        Kind::FencedFloor => RGBColor(150, 150, 150),
        Kind::Lockattr => RGBColor(214, 39, 40),
        Kind::LockattrFenced => RGBColor(255, 152, 150),
        Kind::Rslock => RGBColor(31, 119, 180),
        Kind::Rslock2ms => RGBColor(23, 190, 207),
        Kind::Spin => RGBColor(44, 160, 44),
    }
}

fn short_label(kind: Kind) -> &'static str {
    match kind {
        Kind::Raw => "raw floor",
        Kind::FencedFloor => "fenced floor (diagnostic)",
        Kind::Lockattr => "lockattr",
        Kind::LockattrFenced => "lockattr, fenced(true) (diagnostic)",
        Kind::Rslock => "rslock 0.10",
        Kind::Rslock2ms => "rslock 0.10, 2 ms retry",
        Kind::Spin => "SET NX spin",
    }
}

/// Latency in µs, kept above zero for the log axis.
fn micros(ns: u64) -> f64 {
    (ns as f64 / 1e3).max(0.1)
}

/// The cumulative distribution of ascending `samples` as (µs, share) points.
fn cdf(samples: &[u64]) -> Vec<(f64, f64)> {
    let n = samples.len();
    (0..=POINTS)
        .map(|i| {
            let idx = i * (n - 1) / POINTS;
            (micros(samples[idx]), (idx + 1) as f64 / n as f64)
        })
        .collect()
}

/// The `q` quantile (0..=1) of ascending, non-empty `samples`.
fn quantile(samples: &[u64], q: f64) -> u64 {
    let idx = ((samples.len() - 1) as f64 * q).round() as usize;
    samples[idx.min(samples.len() - 1)]
}

/// Draws every scenario of `report` that has samples into an SVG file at `path`.
pub fn draw(report: &Report, path: &Path) -> Result<()> {
    let panels = panels(report);
    if panels.is_empty() {
        return Err(anyhow!("no latency samples to plot"));
    }
    let rows = panels.len().div_ceil(2);
    let height = 60 + 380 * u32::try_from(rows).unwrap_or(1);
    let root = SVGBackend::new(path, (1200, height)).into_drawing_area();
    let err = |e: &dyn std::fmt::Display| anyhow!("plotting: {e}");
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let commit = report
        .header
        .iter()
        .find(|(k, _)| k == "commit")
        .map_or("", |(_, v)| v.as_str());
    let root = root
        .titled(
            &format!(
                "lockbench latency distributions (cumulative; log latency axis), commit {commit}"
            ),
            ("sans-serif", 22),
        )
        .map_err(|e| err(&e))?;
    let areas = root.split_evenly((rows, 2));
    for (area, panel) in areas.iter().zip(&panels) {
        let lo = panel
            .lines
            .iter()
            .map(|(_, s)| micros(quantile(s, 0.001)))
            .fold(f64::INFINITY, f64::min)
            / 1.3;
        let hi = panel
            .lines
            .iter()
            .map(|(_, s)| micros(quantile(s, 0.999)))
            .fold(0.0, f64::max)
            * 1.3;
        let hi = hi.max(lo * 10.0);
        let mut chart = ChartBuilder::on(area)
            .caption(&panel.title, ("sans-serif", 17))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(50)
            .build_cartesian_2d((lo..hi).log_scale(), 0.0..1.0)
            .map_err(|e| err(&e))?;
        chart
            .configure_mesh()
            // Few labels: on a range shorter than a few decades the log axis would label every
            // minor step, and the labels run into each other.
            .x_labels(6)
            .y_labels(11)
            .x_desc(format!("{} latency, µs (log scale)", panel.what))
            .y_desc("share of samples ≤ x")
            .x_label_formatter(&|v| {
                if *v >= 10.0 {
                    format!("{v:.0}")
                } else {
                    format!("{v:.1}")
                }
            })
            .y_label_formatter(&|v| format!("{v:.1}"))
            .draw()
            .map_err(|e| err(&e))?;
        for (kind, samples) in &panel.lines {
            let c = color(*kind);
            let points: Vec<(f64, f64)> = cdf(samples)
                .into_iter()
                .filter(|(x, _)| *x >= lo && *x <= hi)
                .collect();
            chart
                .draw_series(LineSeries::new(points, c.stroke_width(2)))
                .map_err(|e| err(&e))?
                .label(short_label(*kind))
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2))
                });
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK.mix(0.3))
            .draw()
            .map_err(|e| err(&e))?;
    }
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cdf_runs_from_the_first_sample_to_all_of_them() {
        let samples: Vec<u64> = (1..=1000).map(|i| i * 1000).collect();
        let points = cdf(&samples);
        assert_eq!(points.len(), POINTS + 1);
        assert_eq!(points[0], (1.0, 0.001));
        assert_eq!(points[POINTS], (1000.0, 1.0));
        assert!(points
            .windows(2)
            .all(|w| w[0].0 <= w[1].0 && w[0].1 <= w[1].1));
        assert_eq!(quantile(&samples, 0.5), 501_000);
    }
}
