//! Turning measurements into what a person reads: the final table per
//! operation (throughput and p50/p90/p99/p99.9/p99.99/max), errors by kind,
//! JSON for scripts, HdrHistogram percentile-distribution (`.hgrm`) files,
//! and an SVG with the latency percentile spectrum and throughput over time.

use crate::runner::{new_histogram, ThreadResult};
use crate::workload::OpKind;
use hdrhistogram::Histogram;
use plotters::prelude::*;
use serde_json::json;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

pub const QUANTILES: [(f64, &str); 6] = [
    (0.5, "p50"),
    (0.9, "p90"),
    (0.99, "p99"),
    (0.999, "p99.9"),
    (0.9999, "p99.99"),
    (1.0, "max"),
];

/// Merged results of a run.
pub struct Summary {
    pub seconds: f64,
    pub histograms: BTreeMap<OpKind, Histogram<u64>>,
    pub errors: BTreeMap<String, u64>,
    /// (second since start, completed ops in that second).
    pub timeline: Vec<(f64, f64)>,
    /// Cores' worth of CPU the load generator used, and threads it had.
    pub cpu_cores_used: f64,
    pub threads: usize,
    /// Open loop: how late (µs) the load generator took requests up after
    /// their scheduled time (its own delay); empty in closed loop.
    pub send_lag: Histogram<u64>,
}

/// Open loop: a p99 lag above this means the load generator fell behind
/// its schedule, and the latencies include its own delay.
const SEND_LAG_WARN_US: u64 = 1000;

impl Summary {
    pub fn merge(
        results: Vec<ThreadResult>,
        seconds: f64,
        timeline: Vec<(f64, f64)>,
        cpu_cores_used: f64,
        threads: usize,
    ) -> Summary {
        let mut histograms: BTreeMap<OpKind, Histogram<u64>> = BTreeMap::new();
        let mut errors = BTreeMap::new();
        let mut send_lag = new_histogram();
        for r in results {
            send_lag.add(&r.send_lag).expect("same bounds");
            for (kind, h) in OpKind::ALL.iter().zip(r.histograms) {
                if !h.is_empty() {
                    histograms
                        .entry(*kind)
                        .or_insert_with(new_histogram)
                        .add(&h)
                        .expect("same bounds");
                }
            }
            for (k, n) in r.errors {
                *errors.entry(k).or_insert(0) += n;
            }
        }
        Summary {
            seconds,
            histograms,
            errors,
            timeline,
            cpu_cores_used,
            threads,
            send_lag,
        }
    }

    /// Open loop: whether the load generator took requests up late enough
    /// (p99 over 1 ms) that the latencies measure its own delay too.
    pub fn behind_schedule(&self) -> bool {
        !self.send_lag.is_empty() && self.send_lag.value_at_quantile(0.99) > SEND_LAG_WARN_US
    }

    pub fn total_ops(&self) -> u64 {
        self.histograms.values().map(|h| h.len()).sum()
    }

    /// True when the load generator itself was the likely bottleneck.
    pub fn saturated(&self) -> bool {
        self.cpu_cores_used > 0.9 * self.threads as f64
    }

    pub fn text(&self, header: &str) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "{header}");
        let _ = writeln!(
            out,
            "{:<8} {:>12} {:>12} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
            "op", "ops", "ops/s", "p50 ms", "p90 ms", "p99 ms", "p99.9 ms", "p99.99", "max ms"
        );
        for (kind, h) in &self.histograms {
            let _ = write!(
                out,
                "{:<8} {:>12} {:>12.0}",
                kind.name(),
                h.len(),
                h.len() as f64 / self.seconds
            );
            for (q, _) in QUANTILES {
                let _ = write!(out, " {:>9.3}", h.value_at_quantile(q) as f64 / 1000.0);
            }
            out.push('\n');
        }
        let _ = writeln!(
            out,
            "total    {:>12} {:>12.0}",
            self.total_ops(),
            self.total_ops() as f64 / self.seconds
        );
        if self.errors.is_empty() {
            let _ = writeln!(out, "errors: none");
        } else {
            let list: Vec<String> = self
                .errors
                .iter()
                .map(|(k, n)| format!("{k} {n}"))
                .collect();
            let _ = writeln!(out, "errors: {}", list.join(", "));
        }
        if !self.send_lag.is_empty() {
            let _ = writeln!(
                out,
                "open loop: the load generator took requests up p50 {:.3} / p99 {:.3} / max {:.3} ms after they were due{}",
                self.send_lag.value_at_quantile(0.5) as f64 / 1000.0,
                self.send_lag.value_at_quantile(0.99) as f64 / 1000.0,
                self.send_lag.max() as f64 / 1000.0,
                if self.behind_schedule() {
                    " -- WARNING: the load generator fell behind its schedule; latencies include its own delay"
                } else {
                    ""
                }
            );
        }
        let _ = writeln!(
            out,
            "load generator CPU: {:.2} cores of {} threads{}",
            self.cpu_cores_used,
            self.threads,
            if self.saturated() {
                " -- WARNING: the load generator is saturated; figures measure it, not the server"
            } else {
                ""
            }
        );
        out
    }

    pub fn json(&self, context: serde_json::Value) -> serde_json::Value {
        let ops: serde_json::Map<String, serde_json::Value> = self
            .histograms
            .iter()
            .map(|(kind, h)| {
                let mut o = json!({"ops": h.len(), "ops_per_sec": h.len() as f64 / self.seconds});
                for (q, name) in QUANTILES {
                    o[format!("{name}_us")] = json!(h.value_at_quantile(q));
                }
                (kind.name().to_string(), o)
            })
            .collect();
        json!({
            "context": context,
            "seconds": self.seconds,
            "ops_per_sec": self.total_ops() as f64 / self.seconds,
            "operations": ops,
            "errors": self.errors,
            "load_generator_cpu_cores": self.cpu_cores_used,
            "load_generator_saturated": self.saturated(),
            "send_lag_us": (!self.send_lag.is_empty()).then(|| json!({
                "p50": self.send_lag.value_at_quantile(0.5),
                "p99": self.send_lag.value_at_quantile(0.99),
                "max": self.send_lag.max(),
            })),
            "load_generator_behind_schedule": self.behind_schedule(),
            "timeline": self.timeline.iter().map(|(t, r)| json!({"second": t, "ops_per_sec": r})).collect::<Vec<_>>(),
        })
    }

    /// Writes `<prefix>.<op>.hgrm` percentile distributions (µs, as
    /// HdrHistogram's `outputPercentileDistribution` with scaling 1000 → ms).
    pub fn write_hgrm(&self, prefix: &str) -> std::io::Result<Vec<String>> {
        let mut written = Vec::new();
        for (kind, h) in &self.histograms {
            let path = format!("{prefix}.{}.hgrm", kind.name());
            std::fs::write(&path, hgrm(h))?;
            written.push(path);
        }
        Ok(written)
    }

    /// Draws latency by percentile (log scale of 1/(1-p)) per operation, and
    /// throughput over time, into one SVG.
    pub fn plot(&self, path: &Path, title: &str) -> anyhow::Result<()> {
        let root = SVGBackend::new(path, (1000, 800)).into_drawing_area();
        root.fill(&WHITE)?;
        let (top, bottom) = root.split_vertically(480);
        let max_x = 6.0; // up to 99.9999%
        let max_ms = self
            .histograms
            .values()
            .map(|h| h.max() as f64 / 1000.0)
            .fold(0.01, f64::max)
            * 1.1;
        let mut chart = ChartBuilder::on(&top)
            .caption(
                format!("{title}: latency by percentile"),
                ("sans-serif", 22),
            )
            .margin(12)
            .margin_right(40)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(0.0..max_x, 0.0..max_ms)?;
        chart
            .configure_mesh()
            .x_desc("percentile")
            .y_desc("latency (ms)")
            .x_label_formatter(&|x| {
                let p = 100.0 * (1.0 - 10f64.powf(-x));
                format!("{}%", trim(p))
            })
            .draw()?;
        for (i, (kind, h)) in self.histograms.iter().enumerate() {
            let color = Palette99::pick(i).to_rgba();
            let points: Vec<(f64, f64)> = h
                .iter_quantiles(4)
                .map(|v| {
                    let q: f64 = v.quantile_iterated_to().min(0.999_999);
                    (-(1.0 - q).log10(), v.value_iterated_to() as f64 / 1000.0)
                })
                .filter(|(x, _)| *x <= max_x)
                .collect();
            chart
                .draw_series(LineSeries::new(points, color.stroke_width(2)))?
                .label(kind.name())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
                });
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .position(SeriesLabelPosition::UpperLeft)
            .draw()?;
        let max_t = self
            .timeline
            .last()
            .map(|(t, _)| *t)
            .unwrap_or(1.0)
            .max(1.0);
        let max_rate = self.timeline.iter().map(|(_, r)| *r).fold(1.0, f64::max) * 1.1;
        let mut chart = ChartBuilder::on(&bottom)
            .caption("throughput over time", ("sans-serif", 22))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(0.0..max_t, 0.0..max_rate)?;
        chart
            .configure_mesh()
            .x_desc("seconds")
            .y_desc("ops/s")
            .y_label_formatter(&|y| format!("{:.0}k", y / 1000.0))
            .draw()?;
        chart.draw_series(LineSeries::new(
            self.timeline.iter().copied(),
            BLUE.stroke_width(2),
        ))?;
        root.present()?;
        Ok(())
    }
}

fn trim(p: f64) -> String {
    let s = format!("{p:.4}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// Writes `text` to standard output. A reader that has gone
/// (`tessera-bench ... | head`) took what it wanted: not an error
/// (`print!` panicked there).
pub fn to_stdout(text: &str) -> anyhow::Result<()> {
    use anyhow::Context as _;
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(e).context("writing the report")
        }
        _ => Ok(()),
    }
}

/// HdrHistogram's percentile distribution text (values in ms).
pub fn hgrm(h: &Histogram<u64>) -> String {
    let mut out = String::from("       Value     Percentile TotalCount 1/(1-Percentile)\n\n");
    let mut total = 0;
    for v in h.iter_quantiles(5) {
        total += v.count_since_last_iteration();
        let q = v.quantile_iterated_to();
        let inverse = if q < 1.0 {
            format!("{:.2}", 1.0 / (1.0 - q))
        } else {
            "inf".into()
        };
        let _ = writeln!(
            out,
            "{:>12.3} {:>14.12} {:>10} {:>14}",
            v.value_iterated_to() as f64 / 1000.0,
            q,
            total,
            inverse
        );
    }
    let mean = h.mean() / 1000.0;
    let _ = writeln!(
        out,
        "#[Mean    = {mean:>12.3}, StdDeviation   = {:>12.3}]",
        h.stdev() / 1000.0
    );
    let _ = writeln!(
        out,
        "#[Max     = {:>12.3}, Total count    = {:>12}]",
        h.max() as f64 / 1000.0,
        h.len()
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn summary(lags_us: &[u64]) -> Summary {
        let mut send_lag = new_histogram();
        for &lag in lags_us {
            send_lag.record(lag).unwrap();
        }
        let result = ThreadResult {
            histograms: OpKind::ALL.iter().map(|_| new_histogram()).collect(),
            errors: HashMap::new(),
            send_lag,
        };
        Summary::merge(vec![result], 1.0, Vec::new(), 0.1, 1)
    }

    #[test]
    fn an_open_loop_run_says_how_late_its_requests_went_out_and_warns_when_behind() {
        let closed = summary(&[]);
        assert!(!closed.behind_schedule());
        assert!(!closed.text("").contains("open loop"));
        assert!(closed.json(json!({}))["send_lag_us"].is_null());

        let on_time = summary(&[20; 100]);
        assert!(!on_time.behind_schedule());
        let text = on_time.text("");
        assert!(
            text.contains("p50 0.020 / p99 0.020") && !text.contains("WARNING"),
            "{text}"
        );

        let behind = summary(&[[20; 98].as_slice(), &[5000, 9000]].concat());
        assert!(behind.behind_schedule());
        assert!(behind.text("").contains("fell behind its schedule"));
        let json = behind.json(json!({}));
        assert_eq!(json["load_generator_behind_schedule"], true);
        assert_eq!(json["send_lag_us"]["max"], behind.send_lag.max());
    }
}
