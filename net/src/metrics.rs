//! Per-shard, per-operation figures: request and error counts, latency
//! histograms (HdrHistogram, µs), bytes in and out, connections; plus the
//! engine's figures. The same list answers the `Stats` request and renders
//! as Prometheus text on `/metrics`.

use hdrhistogram::Histogram;
use std::cell::{Cell, RefCell};
use std::fmt::Write;
use tessera_engine::EngineStats;
use tessera_protocol::message::Metric;

/// The operations a request can carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpKind {
    Hello,
    Ping,
    Get,
    Put,
    Delete,
    Scan,
    Batch,
    Stats,
    Topology,
    ReadAt,
    Txn,
    Invalid,
}

const OPS: [OpKind; 12] = [
    OpKind::Hello,
    OpKind::Ping,
    OpKind::Get,
    OpKind::Put,
    OpKind::Delete,
    OpKind::Scan,
    OpKind::Batch,
    OpKind::Stats,
    OpKind::Topology,
    OpKind::ReadAt,
    OpKind::Txn,
    OpKind::Invalid,
];

impl OpKind {
    pub fn name(self) -> &'static str {
        match self {
            OpKind::Hello => "hello",
            OpKind::Ping => "ping",
            OpKind::Get => "get",
            OpKind::Put => "put",
            OpKind::Delete => "delete",
            OpKind::Scan => "scan",
            OpKind::Batch => "batch",
            OpKind::Stats => "stats",
            OpKind::Topology => "topology",
            OpKind::ReadAt => "read_at",
            OpKind::Txn => "txn",
            OpKind::Invalid => "invalid",
        }
    }

    fn index(self) -> usize {
        OPS.iter().position(|&o| o == self).expect("listed")
    }
}

/// Figures of one shard. Single-threaded: the shard owns it.
pub struct ShardMetrics {
    requests: [Cell<u64>; OPS.len()],
    errors: [Cell<u64>; OPS.len()],
    latency_us: RefCell<Vec<Histogram<u64>>>,
    pub bytes_in: Cell<u64>,
    pub bytes_out: Cell<u64>,
    pub connections_open: Cell<u64>,
    pub connections_refused: Cell<u64>,
    /// Hellos with a wrong or missing token (their connections closed).
    pub auth_failures: Cell<u64>,
    /// TLS handshakes that failed or timed out.
    pub tls_handshake_failures: Cell<u64>,
    pub forwarded: Cell<u64>,
    /// Transactions this shard coordinated, by outcome.
    pub txn_committed: Cell<u64>,
    pub txn_condition_failed: Cell<u64>,
    pub txn_conflicts: Cell<u64>,
    /// Of the committed, those that needed two-phase commit.
    pub txn_two_phase: Cell<u64>,
}

impl Default for ShardMetrics {
    fn default() -> Self {
        ShardMetrics {
            requests: Default::default(),
            errors: Default::default(),
            latency_us: RefCell::new(
                OPS.iter()
                    .map(|_| Histogram::new_with_bounds(1, 60_000_000, 2).expect("bounds"))
                    .collect(),
            ),
            bytes_in: Cell::new(0),
            bytes_out: Cell::new(0),
            connections_open: Cell::new(0),
            connections_refused: Cell::new(0),
            auth_failures: Cell::new(0),
            tls_handshake_failures: Cell::new(0),
            forwarded: Cell::new(0),
            txn_committed: Cell::new(0),
            txn_condition_failed: Cell::new(0),
            txn_conflicts: Cell::new(0),
            txn_two_phase: Cell::new(0),
        }
    }
}

fn bump(c: &Cell<u64>, by: u64) {
    c.set(c.get() + by);
}

impl ShardMetrics {
    pub fn record(&self, op: OpKind, latency_us: u64, error: bool) {
        let i = op.index();
        bump(&self.requests[i], 1);
        if error {
            bump(&self.errors[i], 1);
        }
        let _ = self.latency_us.borrow_mut()[i].record(latency_us.max(1));
    }

    pub fn add(c: &Cell<u64>, by: u64) {
        bump(c, by);
    }

    /// Every figure of this shard, named Prometheus-style (labels inside
    /// the name; the shard label is added on rendering).
    pub fn snapshot(&self, shard: u32, engine: &EngineStats) -> Vec<Metric> {
        let mut out = Vec::new();
        let mut push = |name: String, value: f64| out.push(Metric { name, shard, value });
        let hists = self.latency_us.borrow();
        for op in OPS {
            let i = op.index();
            let n = self.requests[i].get();
            if n == 0 {
                continue;
            }
            push(format!("requests_total{{op=\"{}\"}}", op.name()), n as f64);
            push(
                format!("errors_total{{op=\"{}\"}}", op.name()),
                self.errors[i].get() as f64,
            );
            for q in [0.5, 0.9, 0.99, 0.999] {
                push(
                    format!(
                        "request_latency_us{{op=\"{}\",quantile=\"{q}\"}}",
                        op.name()
                    ),
                    hists[i].value_at_quantile(q) as f64,
                );
            }
            // A summary's sum and count (the sum from the histogram's
            // buckets, 3 significant digits).
            let h = &hists[i];
            push(
                format!("request_latency_us_sum{{op=\"{}\"}}", op.name()),
                (h.mean() * h.len() as f64).round(),
            );
            push(
                format!("request_latency_us_count{{op=\"{}\"}}", op.name()),
                h.len() as f64,
            );
            // The same as a Prometheus histogram (cumulative buckets, in
            // seconds), whose rate over a window gives recent latency; the
            // quantiles above are over the shard's life.
            for bound_us in DURATION_BUCKETS_US {
                push(
                    format!(
                        "request_duration_seconds_bucket{{op=\"{}\",le=\"{}\"}}",
                        op.name(),
                        bound_us as f64 / 1e6
                    ),
                    h.count_between(0, bound_us) as f64,
                );
            }
            push(
                format!(
                    "request_duration_seconds_bucket{{op=\"{}\",le=\"+Inf\"}}",
                    op.name()
                ),
                h.len() as f64,
            );
            push(
                format!("request_duration_seconds_sum{{op=\"{}\"}}", op.name()),
                // The summary's whole microseconds: unrounded, a sum of
                // 132 µs printed as 0.00013199999999999998.
                (h.mean() * h.len() as f64).round() / 1e6,
            );
            push(
                format!("request_duration_seconds_count{{op=\"{}\"}}", op.name()),
                h.len() as f64,
            );
        }
        push("bytes_in_total".into(), self.bytes_in.get() as f64);
        push("bytes_out_total".into(), self.bytes_out.get() as f64);
        push(
            "connections_open".into(),
            self.connections_open.get() as f64,
        );
        push(
            "connections_refused_total".into(),
            self.connections_refused.get() as f64,
        );
        push(
            "auth_failures_total".into(),
            self.auth_failures.get() as f64,
        );
        push(
            "tls_handshake_failures_total".into(),
            self.tls_handshake_failures.get() as f64,
        );
        push("forwarded_total".into(), self.forwarded.get() as f64);
        push("memtable_bytes".into(), engine.memtable_bytes as f64);
        push(
            "immutable_memtables".into(),
            engine.immutable_memtables as f64,
        );
        push("cache_bytes".into(), engine.cache_bytes as f64);
        push("cache_hits_total".into(), engine.cache_hits as f64);
        push("cache_misses_total".into(), engine.cache_misses as f64);
        push("row_cache_bytes".into(), engine.row_cache_bytes as f64);
        push("row_cache_hits_total".into(), engine.row_cache_hits as f64);
        push(
            "row_cache_misses_total".into(),
            engine.row_cache_misses as f64,
        );
        push(
            "table_resident_bytes".into(),
            engine.table_resident_bytes as f64,
        );
        push("wal_syncs_total".into(), engine.wal_syncs as f64);
        push("wal_bytes_total".into(), engine.wal_bytes as f64);
        push("wal_groups_total".into(), engine.wal_groups as f64);
        push("wal_errors_total".into(), engine.wal_errors as f64);
        push("write_stalls_total".into(), engine.write_stalls as f64);
        push(
            "writes_failing".into(),
            f64::from(u8::from(engine.writes_failing.is_some())),
        );
        push("l0_stops_total".into(), engine.l0_stops as f64);
        push("flushes_total".into(), engine.flushes as f64);
        push("flush_errors_total".into(), engine.flush_errors as f64);
        push("compactions_total".into(), engine.compactions as f64);
        push(
            "compaction_errors_total".into(),
            engine.compaction_errors as f64,
        );
        push(
            "compaction_bytes_written_total".into(),
            engine.compaction_bytes_written as f64,
        );
        for (outcome, n) in [
            ("committed", &self.txn_committed),
            ("condition_failed", &self.txn_condition_failed),
            ("conflict", &self.txn_conflicts),
        ] {
            push(
                format!("txn_total{{outcome=\"{outcome}\"}}"),
                n.get() as f64,
            );
        }
        push(
            "txn_two_phase_total".into(),
            self.txn_two_phase.get() as f64,
        );
        push("txn_intents".into(), engine.txn_intents as f64);
        push("txn_prepared".into(), engine.txn_prepared as f64);
        push("txn_decisions".into(), engine.txn_decisions as f64);
        push(
            "retention_watermark_ts".into(),
            engine.retention_watermark_ts as f64,
        );
        push("read_holds".into(), engine.read_holds as f64);
        for (level, n) in engine.level_tables.iter().enumerate() {
            push(format!("level_tables{{level=\"{level}\"}}"), *n as f64);
        }
        for (level, n) in engine.level_bytes.iter().enumerate() {
            push(format!("level_bytes{{level=\"{level}\"}}"), *n as f64);
        }
        out
    }
}

/// The one metric family a summary's lines belong to.
const SUMMARY: &str = "request_latency_us";

/// The one histogram family, and its buckets' upper bounds (µs).
const HISTOGRAM: &str = "request_duration_seconds";
const DURATION_BUCKETS_US: [u64; 13] = [
    50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 1_000_000,
];

/// A metric's name without its labels.
fn base_name(m: &Metric) -> &str {
    m.name.split_once('{').map_or(m.name.as_str(), |(b, _)| b)
}

/// The family a metric belongs to: its name, but a summary's or a
/// histogram's `_bucket`, `_sum` and `_count` belong to it.
fn family(m: &Metric) -> &str {
    match base_name(m) {
        b if b.starts_with(SUMMARY) => SUMMARY,
        b if b.starts_with(HISTOGRAM) => HISTOGRAM,
        b => b,
    }
}

/// Renders metrics as Prometheus text exposition format: each family's
/// lines together (every shard's; `metrics` lists shard after shard),
/// after its one `# TYPE` line: `_total` counters, the latency summary,
/// gauges.
pub fn render_prometheus(metrics: &[Metric]) -> String {
    let mut families: Vec<&str> = Vec::new();
    for m in metrics {
        if !families.contains(&family(m)) {
            families.push(family(m));
        }
    }
    let mut out = String::new();
    for name in families {
        let kind = match name {
            SUMMARY => "summary",
            HISTOGRAM => "histogram",
            n if n.ends_with("_total") => "counter",
            _ => "gauge",
        };
        let _ = writeln!(out, "# TYPE tessera_{name} {kind}");
        for m in metrics.iter().filter(|m| family(m) == name) {
            let labels = match m.name.split_once('{') {
                Some((_, rest)) => format!("{{shard=\"{}\",{rest}", m.shard),
                None => format!("{{shard=\"{}\"}}", m.shard),
            };
            let _ = writeln!(out, "tessera_{}{labels} {}", base_name(m), m.value);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_lines_carry_the_shard_label() {
        let m = ShardMetrics::default();
        m.record(OpKind::Get, 40, false);
        m.record(OpKind::Get, 60, true);
        let text = render_prometheus(&m.snapshot(1, &EngineStats::default()));
        assert!(
            text.contains("tessera_requests_total{shard=\"1\",op=\"get\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("tessera_errors_total{shard=\"1\",op=\"get\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("tessera_memtable_bytes{shard=\"1\"} 0\n"),
            "{text}"
        );
        assert!(!text.contains("op=\"put\""));
    }

    /// A histogram's sum is whole microseconds, in seconds: the mean times
    /// the count printed 29 µs as 0.000028999999999999997.
    #[test]
    fn a_duration_sum_prints_its_microseconds_exactly() {
        let m = ShardMetrics::default();
        for us in [4, 4, 4, 4, 4, 4, 5] {
            m.record(OpKind::Put, us, false);
        }
        let text = render_prometheus(&m.snapshot(0, &EngineStats::default()));
        let line = "tessera_request_duration_seconds_sum{shard=\"0\",op=\"put\"} 0.000029\n";
        assert!(text.contains(line), "{text}");
    }

    /// The exposition format wants each family's lines in one group after
    /// its one `# TYPE` line; the shards' lists come one after the other.
    #[test]
    fn prometheus_families_are_grouped_and_typed_across_shards() {
        let m = ShardMetrics::default();
        m.record(OpKind::Get, 40, false);
        m.record(OpKind::Get, 60, false);
        let mut all = m.snapshot(0, &EngineStats::default());
        all.extend(m.snapshot(1, &EngineStats::default()));
        let text = render_prometheus(&all);
        let mut seen: Vec<String> = Vec::new();
        let mut current = String::new();
        for line in text.lines() {
            if let Some(typed) = line.strip_prefix("# TYPE ") {
                let (name, _) = typed.split_once(' ').unwrap();
                assert!(
                    !seen.contains(&name.to_string()),
                    "{name} typed twice:\n{text}"
                );
                seen.push(name.to_string());
                current = name.to_string();
                continue;
            }
            let name = line.split(['{', ' ']).next().unwrap();
            let part = |suffix: &str| name == current.clone() + suffix;
            let belongs = name == current
                || (current == "tessera_request_latency_us" && (part("_sum") || part("_count")))
                || (current == "tessera_request_duration_seconds"
                    && (part("_bucket") || part("_sum") || part("_count")));
            assert!(belongs, "{name} outside its group (in {current}):\n{text}");
        }
        for (family, kind) in [
            ("tessera_requests_total", "counter"),
            ("tessera_memtable_bytes", "gauge"),
            ("tessera_request_latency_us", "summary"),
            ("tessera_request_duration_seconds", "histogram"),
        ] {
            assert!(
                text.contains(&format!("# TYPE {family} {kind}\n")),
                "{text}"
            );
        }
        assert!(text.contains("tessera_requests_total{shard=\"0\",op=\"get\"} 2\n"));
        assert!(text.contains("tessera_requests_total{shard=\"1\",op=\"get\"} 2\n"));
        assert!(text.contains("tessera_request_latency_us_count{shard=\"1\",op=\"get\"} 2\n"));
        assert!(text.contains("tessera_request_latency_us_sum{shard=\"0\",op=\"get\"} 100\n"));
        // 40 and 60 µs: one under 50 µs, both under 100 µs, cumulative.
        for (le, n) in [("0.00005", 1), ("0.0001", 2), ("1", 2), ("+Inf", 2)] {
            let line = format!(
                "tessera_request_duration_seconds_bucket{{shard=\"1\",op=\"get\",le=\"{le}\"}} {n}\n"
            );
            assert!(text.contains(&line), "{line}{text}");
        }
        assert!(text.contains("tessera_request_duration_seconds_count{shard=\"0\",op=\"get\"} 2\n"));
        assert!(
            text.contains("tessera_request_duration_seconds_sum{shard=\"0\",op=\"get\"} 0.0001\n")
        );
    }
}
