//! A store's figures in the Prometheus text format (`OpenMetrics` 1.0 text, which
//! Prometheus scrapes): every counter and gauge of [`StoreMetrics`], the client and
//! peer connection counters, the health monitor's report where this process runs it,
//! and the latency and group-size histograms with their bucket boundaries.
//! `regionkv node --status-addr` serves it (`status_http.rs`); `Cluster::prometheus_text`
//! renders it for every store of a `Cluster`.
//!
//! Every sample carries the label `store`. Histogram boundaries are starts of the
//! store's log-linear buckets (`regionkv_wal::Histogram`), so each cumulative count is
//! exact: a latency is recorded in whole microseconds, rounded down, so the samples
//! below `E` microseconds are exactly the durations below `E`, published as
//! `le="E/1e6"` (seconds); a group size is a whole number, so the sizes below `E`
//! are those at most `E - 1`, published as `le="E-1"`.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::{Registry, Unit};
use regionkv_raft::StoreMetrics;
use regionkv_raft::transport::tcp::TcpStats;
use regionkv_wal::HistogramSnapshot;

use crate::StoreId;
use crate::health::{HealthReport, Liveness};
use crate::server::ClientStats;

mod families;
#[cfg(test)]
mod tests;

use families::{COUNTERS, Family, GAUGES};

/// The content type of [`render`]'s text.
pub(crate) const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// What one store reports in a scrape.
#[derive(Debug)]
pub(crate) struct StoreFigures {
    pub store: StoreId,
    pub metrics: Box<StoreMetrics>,
    /// The client protocol's counters (a node's; `None` in a `Cluster`).
    pub clients: Option<ClientStats>,
    /// The store transport's counters (a node's; `None` in a `Cluster`).
    pub transport: Option<TcpStats>,
}

/// One scrape: the stores of this process and the health monitor's last report, if
/// this process runs the acting monitor.
#[derive(Debug, Default)]
pub(crate) struct Scrape {
    pub stores: Vec<StoreFigures>,
    /// The store whose process runs the monitor, and its report.
    pub health: Option<(StoreId, HealthReport)>,
}

/// The scrape as `OpenMetrics` text, ending with `# EOF`.
pub(crate) fn render(scrape: Scrape) -> String {
    let mut registry = Registry::with_prefix("regionkv");
    registry.register_collector(Box::new(scrape));
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &registry)
        .expect("writing to a String does not fail");
    out
}

/// The `store` label of `store`'s samples.
fn store_label(store: StoreId) -> [(&'static str, String); 1] {
    [("store", store.0.to_string())]
}

/// Latency histogram boundaries, in microseconds: two per power of two (`2^e` and
/// `1.5 * 2^e`) from 16 µs to 2^24 µs (16.8 s), each the start of a bucket.
pub(crate) fn latency_edges_us() -> Vec<u64> {
    let mut edges = Vec::new();
    for e in 4..24 {
        edges.push(1u64 << e);
        edges.push(3u64 << (e - 1));
    }
    edges.push(1 << 24);
    edges
}

/// Group size boundaries (records per group, exclusive): powers of two up to 2^16.
pub(crate) fn size_edges() -> Vec<u64> {
    (1..=16).map(|e| 1u64 << e).collect()
}

/// `h` as Prometheus buckets `(le, samples in the bucket)` (the encoder accumulates
/// them), the last `+Inf`; `le` of each exclusive edge `e` is `le_of(e)`.
pub(crate) fn buckets(
    h: &HistogramSnapshot,
    edges: &[u64],
    le_of: fn(u64) -> f64,
) -> Vec<(f64, u64)> {
    let mut out = Vec::with_capacity(edges.len() + 1);
    let mut below = 0;
    for &edge in edges {
        let cumulative = h.count_below(edge);
        out.push((le_of(edge), cumulative - below));
        below = cumulative;
    }
    out.push((f64::INFINITY, h.count() - below));
    out
}

#[expect(clippy::cast_precision_loss, reason = "boundaries and sums for a dashboard")]
fn micros_to_seconds(us: u64) -> f64 {
    us as f64 / 1e6
}

#[expect(clippy::cast_precision_loss, reason = "sizes below 2^16")]
fn size_le(edge: u64) -> f64 {
    (edge - 1) as f64
}

#[expect(clippy::cast_precision_loss, reason = "a sum for a dashboard")]
fn as_f64(n: u64) -> f64 {
    n as f64
}

/// A conversion of a bucket boundary or a sum for the exposition.
type ToF64 = fn(u64) -> f64;

/// A histogram of every store's [`StoreMetrics`].
struct HistogramFamily<'a> {
    name: &'static str,
    help: &'static str,
    /// Microsecond samples published in seconds (else whole numbers, as they are).
    seconds: bool,
    pick: fn(&StoreMetrics) -> &HistogramSnapshot,
    /// Exclusive boundaries, each the start of a bucket.
    edges: &'a [u64],
}

impl Collector for Scrape {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for family in COUNTERS {
            self.encode_family(&mut encoder, family, MetricType::Counter)?;
        }
        for family in GAUGES {
            self.encode_family(&mut encoder, family, MetricType::Gauge)?;
        }
        self.encode_histograms(&mut encoder)?;
        self.encode_health(&mut encoder)
    }
}

impl Scrape {
    fn encode_family(
        &self,
        encoder: &mut DescriptorEncoder,
        family: &Family,
        kind: MetricType,
    ) -> Result<(), std::fmt::Error> {
        let values: Vec<(StoreId, u64)> =
            self.stores.iter().filter_map(|s| (family.get)(s).map(|v| (s.store, v))).collect();
        if values.is_empty() {
            return Ok(());
        }
        let unit = family.bytes.then_some(Unit::Bytes);
        let mut metric =
            encoder.encode_descriptor(family.name, family.help, unit.as_ref(), kind)?;
        for (store, value) in values {
            let labels = store_label(store);
            let sample = metric.encode_family(&labels)?;
            if kind == MetricType::Counter {
                ConstCounter::new(value).encode(sample)?;
            } else {
                ConstGauge::new(value).encode(sample)?;
            }
        }
        Ok(())
    }

    fn encode_histograms(&self, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let latency = latency_edges_us();
        let sizes = size_edges();
        let histograms = [
            HistogramFamily {
                name: "write_latency",
                help: "Time from a client write reaching the store to its successful reply.",
                seconds: true,
                pick: |m| &m.write_latency_us,
                edges: &latency,
            },
            HistogramFamily {
                name: "wal_fsync_latency",
                help: "Time of each fdatasync of a WAL segment.",
                seconds: true,
                pick: |m| &m.wal.fsync_latency_us,
                edges: &latency,
            },
            HistogramFamily {
                name: "wal_group_records",
                help: "Records per WAL group written (seals excluded).",
                seconds: false,
                pick: |m| &m.wal.group_records,
                edges: &sizes,
            },
        ];
        for family in histograms {
            let unit = family.seconds.then_some(Unit::Seconds);
            let (le_of, sum_of): (ToF64, ToF64) = if family.seconds {
                (micros_to_seconds, micros_to_seconds)
            } else {
                (size_le, as_f64)
            };
            let mut metric = encoder.encode_descriptor(
                family.name,
                family.help,
                unit.as_ref(),
                MetricType::Histogram,
            )?;
            for s in &self.stores {
                let h = (family.pick)(&s.metrics);
                let labels = store_label(s.store);
                metric.encode_family(&labels)?.encode_histogram::<NoLabelSet>(
                    sum_of(h.sum()),
                    h.count(),
                    &buckets(h, family.edges, le_of),
                    None,
                )?;
            }
        }
        Ok(())
    }

    /// The monitor's report: detections per analysis, stores per liveness, and its
    /// running totals (insufficient information, repairs, deferred turns).
    fn encode_health(&self, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some((store, report)) = &self.health else { return Ok(()) };
        let id = store.0.to_string();
        let labelled = |extra: Vec<(&'static str, String)>| {
            let mut l = vec![("store", id.clone())];
            l.extend(extra);
            l
        };
        let mut detections = std::collections::BTreeMap::<&str, u64>::new();
        for d in &report.detections {
            *detections.entry(d.code.name()).or_default() += 1;
        }
        let mut m = encoder.encode_descriptor(
            "health_detections",
            "Problems the health monitor detected in its last turn, by analysis.",
            None,
            MetricType::Gauge,
        )?;
        for (analysis, n) in detections {
            ConstGauge::new(n)
                .encode(m.encode_family(&labelled(vec![("analysis", analysis.into())]))?)?;
        }
        let mut liveness = [("up", 0u64), ("down", 0), ("unknown", 0)];
        for s in &report.stores {
            let i = match s.liveness {
                Liveness::Up => 0,
                Liveness::Down { .. } => 1,
                Liveness::Unknown => 2,
            };
            liveness[i].1 += 1;
        }
        let mut m = encoder.encode_descriptor(
            "health_stores",
            "Stores by liveness, as the health monitor judges them.",
            None,
            MetricType::Gauge,
        )?;
        for (state, n) in liveness {
            ConstGauge::new(n)
                .encode(m.encode_family(&labelled(vec![("liveness", state.into())]))?)?;
        }
        let mut m = encoder.encode_descriptor(
            "health_insufficient",
            "Analyses that could not conclude for want of a field, since the monitor started.",
            None,
            MetricType::Counter,
        )?;
        for (code, field, n) in &report.insufficient_total {
            let l =
                labelled(vec![("analysis", code.name().into()), ("field", field.name().into())]);
            ConstCounter::new(*n).encode(m.encode_family(&l)?)?;
        }
        let mut m = encoder.encode_descriptor(
            "health_repairs",
            "Repairs the health monitor carried out since it started, by kind and result.",
            None,
            MetricType::Counter,
        )?;
        for (kind, result, n) in &report.repairs_total {
            let l = labelled(vec![("kind", kind.name().into()), ("result", result.clone())]);
            ConstCounter::new(*n).encode(m.encode_family(&l)?)?;
        }
        let mut m = encoder.encode_descriptor(
            "health_repairs_deferred",
            "Monitor turns whose repairs waited for the cluster version.",
            None,
            MetricType::Counter,
        )?;
        ConstCounter::new(report.repairs_deferred).encode(m.encode_family(&labelled(vec![]))?)?;
        Ok(())
    }
}
