//! `regionkv bench cluster`: replicated puts next to the bare WAL, same run.
//!
//! Three stores in this process, the in-process transport, real files with fsync on,
//! one region, 128 B values; 1, 16 and 64 client threads. The baseline is the bare WAL
//! with 64 writers on the same disk: a replicated put costs three fsyncs (one per
//! replica, two of them on its critical path) on this machine's one disk and two cores.

use std::collections::BTreeMap;
use std::io;
use std::path::Path;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use serde::Serialize;

use regionkv::Cluster;

/// Client-thread counts measured.
pub const CLIENTS: [usize; 3] = [1, 16, 64];
/// Value size of every put.
pub const VALUE_BYTES: usize = 128;

/// Figures of one `regionkv bench cluster` run.
#[derive(Clone, Debug, Serialize)]
pub struct ClusterBenchReport {
    /// Acknowledged puts per second, keyed by client threads.
    pub put_ops_per_sec: BTreeMap<String, f64>,
    /// 99th-percentile put latency in microseconds, keyed by client threads.
    pub put_p99_us: BTreeMap<String, f64>,
    /// Median put latency in microseconds, keyed by client threads.
    pub put_p50_us: BTreeMap<String, f64>,
    /// The bare WAL with 64 writers of 128 B records, same run (the baseline): the
    /// mean of a measurement before and one after the cluster runs, since this
    /// machine's disk speed drifts over seconds.
    pub wal_append_ops_per_sec_64: f64,
    /// `put_ops_per_sec["64"] / wal_append_ops_per_sec_64` (target >= 0.5).
    pub put_64_vs_wal_64: f64,
    /// Seconds each figure was measured for.
    pub seconds_per_figure: f64,
}

/// Runs the put load of `clients` threads: a warm-up of `warmup` (not measured: a new
/// store zero-fills its first spare WAL segment meanwhile), then `duration` measured.
fn puts(
    cluster: &Cluster,
    clients: usize,
    warmup: Duration,
    duration: Duration,
) -> io::Result<(f64, Vec<u32>)> {
    let db = cluster.db();
    // A leader is elected and the first put succeeds.
    db.put(b"warmup", b"x").map_err(io::Error::other)?;
    let barrier = Arc::new(Barrier::new(clients + 1));
    let threads: Vec<_> = (0..clients)
        .map(|c| {
            let (db, barrier) = (db.clone(), barrier.clone());
            std::thread::spawn(move || -> io::Result<Vec<u32>> {
                let value = vec![b'v'; VALUE_BYTES];
                let mut latencies = Vec::with_capacity(1 << 14);
                barrier.wait();
                let start = Instant::now();
                let mut i = 0u64;
                while start.elapsed() < warmup + duration {
                    let key = format!("c{c:03}-{i:010}");
                    let t0 = Instant::now();
                    db.put(key.as_bytes(), &value).map_err(io::Error::other)?;
                    if start.elapsed() >= warmup {
                        latencies.push(t0.elapsed().as_micros().min(u128::from(u32::MAX)) as u32);
                    }
                    i += 1;
                }
                Ok(latencies)
            })
        })
        .collect();
    barrier.wait();
    let mut all = Vec::new();
    for t in threads {
        all.extend(t.join().map_err(|_| io::Error::other("client panicked"))??);
    }
    let secs = duration.as_secs_f64();
    all.sort_unstable();
    Ok((all.len() as f64 / secs, all))
}

pub(super) fn percentile(sorted: &[u32], p: usize) -> f64 {
    f64::from(sorted.get(sorted.len() * p / 100).copied().unwrap_or_default())
}

/// Runs the measurements in `dir`, `seconds` each.
pub fn run(dir: &Path, seconds: f64, clients: &[usize]) -> io::Result<ClusterBenchReport> {
    let duration = Duration::from_secs_f64(seconds);
    let wal_before = super::wal::append_ops_per_sec(dir, 64, duration)?;
    let mut put_ops_per_sec = BTreeMap::new();
    let mut put_p99_us = BTreeMap::new();
    let mut put_p50_us = BTreeMap::new();
    for &clients in clients {
        let cluster_dir = dir.join(format!("cluster-{clients}"));
        let cluster = Cluster::builder()
            .dir(&cluster_dir)
            .stores(3)
            .tick_interval(Duration::from_millis(20))
            .build()
            .map_err(io::Error::other)?;
        let (rate, latencies) = puts(&cluster, clients, Duration::from_secs(1), duration)?;
        cluster.shutdown().map_err(io::Error::other)?;
        std::fs::remove_dir_all(&cluster_dir)?;
        put_ops_per_sec.insert(clients.to_string(), rate);
        put_p99_us.insert(clients.to_string(), percentile(&latencies, 99));
        put_p50_us.insert(clients.to_string(), percentile(&latencies, 50));
    }
    let wal_after = super::wal::append_ops_per_sec(dir, 64, duration)?;
    let wal_append_ops_per_sec_64 = f64::midpoint(wal_before, wal_after);
    Ok(ClusterBenchReport {
        put_64_vs_wal_64: put_ops_per_sec.get("64").map_or(0.0, |p| p / wal_append_ops_per_sec_64),
        put_ops_per_sec,
        put_p99_us,
        put_p50_us,
        wal_append_ops_per_sec_64,
        seconds_per_figure: seconds,
    })
}

impl ClusterBenchReport {
    /// The report as a table for people.
    pub fn print_table(&self) {
        println!("Replicated puts (3 stores in one process, fsync on, 128 B values):");
        println!(
            "  bare WAL, 64 writers, same disk: {:.0} appends/s",
            self.wal_append_ops_per_sec_64
        );
        println!(
            "  {:>8} {:>12} {:>10} {:>10} {:>12}",
            "clients", "puts/s", "p50 us", "p99 us", "x WAL-64"
        );
        for (k, rate) in &self.put_ops_per_sec {
            println!(
                "  {:>8} {:>12.0} {:>10.0} {:>10.0} {:>12.2}",
                k,
                rate,
                self.put_p50_us[k],
                self.put_p99_us[k],
                rate / self.wal_append_ops_per_sec_64
            );
        }
    }
}
