//! `regionkv bench cluster`: replicated puts and linearizable gets on three stores,
//! in this process and as three `regionkv node` processes over TCP, next to the bare
//! WAL, same run.
//!
//! In process: three stores, the in-process transport, real files with fsync on, one
//! region, 128 B values; 1, 16 and 64 client threads. The baseline is the bare WAL
//! with 64 writers on the same disk: a replicated put costs three fsyncs (one per
//! replica, two of them on its critical path) on this machine's one disk and two cores.
//!
//! Over TCP: the same load from this process's `Client` to three `regionkv node`
//! processes on 127.0.0.1 (`procs.rs`), and the CPU those processes use per put. Each
//! client count runs on a new cluster: the in-process one, then the processes, so each
//! ratio compares two measurements made seconds apart.

use std::collections::BTreeMap;
use std::io;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use regionkv::{Cluster, Db};

use super::load::{self, Measured, Op};
use super::procs::{self, NodeProcs};

/// Client-thread counts measured.
pub const CLIENTS: [usize; 3] = [1, 16, 64];
/// Value size of every put.
pub const VALUE_BYTES: usize = 128;
/// Keys written before the gets, which read random ones of them.
pub const PRELOAD_KEYS: usize = 10_000;
/// Raft tick of both clusters.
const TICK_MS: u64 = 20;

/// Figures of one `regionkv bench cluster` run. Maps are keyed by client threads.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ClusterBenchReport {
    /// In process: acknowledged puts per second.
    pub put_ops_per_sec: BTreeMap<String, f64>,
    /// In process: 99th-percentile put latency in microseconds.
    pub put_p99_us: BTreeMap<String, f64>,
    /// In process: median put latency in microseconds.
    pub put_p50_us: BTreeMap<String, f64>,
    /// In process: linearizable gets of preloaded keys per second.
    pub get_ops_per_sec: BTreeMap<String, f64>,
    /// In process: CPU of this whole process (stores and clients) per put, in µs.
    pub process_cpu_us_per_put: BTreeMap<String, f64>,
    /// Three `regionkv node` processes on 127.0.0.1, clients over TCP: puts per second
    /// (absent with `--in-process-only`).
    pub put_ops_per_sec_tcp: BTreeMap<String, f64>,
    /// Over TCP: median put latency in microseconds.
    pub put_p50_us_tcp: BTreeMap<String, f64>,
    /// Over TCP: 99th-percentile put latency in microseconds.
    pub put_p99_us_tcp: BTreeMap<String, f64>,
    /// Over TCP: linearizable gets of preloaded keys per second.
    pub get_ops_per_sec_tcp: BTreeMap<String, f64>,
    /// Over TCP: CPU (user + system) of the three node processes over the put window,
    /// in µs, divided by the puts acknowledged in it (target <= 50).
    pub server_cpu_us_per_put: BTreeMap<String, f64>,
    /// `put_ops_per_sec_tcp / put_ops_per_sec` (target >= 0.75 at 64).
    pub put_tcp_vs_in_process: BTreeMap<String, f64>,
    /// `get_ops_per_sec_tcp / get_ops_per_sec` (target >= 0.75 at 64).
    pub get_tcp_vs_in_process: BTreeMap<String, f64>,
    /// The bare WAL with 64 writers of 128 B records, same run (the baseline): the
    /// mean of a measurement before and one after the cluster runs, since this
    /// machine's disk speed drifts over seconds.
    pub wal_append_ops_per_sec_64: f64,
    /// `put_ops_per_sec["64"] / wal_append_ops_per_sec_64` (target >= 0.5).
    pub put_64_vs_wal_64: f64,
    /// Seconds each figure was measured for (after a warm-up of up to 1 s).
    pub seconds_per_figure: f64,
}

/// Puts of new keys, `VALUE_BYTES` each.
fn put_op() -> Arc<Op> {
    let value = vec![b'v'; VALUE_BYTES];
    Arc::new(move |db: &Db, c, i, _: &mut load::Rng| {
        db.put(format!("c{c:03}-{i:010}").into_bytes(), value.clone()).map_err(io::Error::other)
    })
}

fn preload_key(i: u64) -> Vec<u8> {
    format!("pre-{i:08}").into_bytes()
}

/// Linearizable gets of random preloaded keys, each of which must be there.
fn get_op() -> Arc<Op> {
    Arc::new(|db: &Db, _, _, rng: &mut load::Rng| {
        match db.get(preload_key(rng.below(PRELOAD_KEYS as u64))).map_err(io::Error::other)? {
            Some(v) if v.len() == VALUE_BYTES => Ok(()),
            other => Err(io::Error::other(format!("a preloaded key read back {other:?}"))),
        }
    })
}

/// Puts, then the preload, then gets, from `clients` threads on `db`.
fn put_then_get(
    db: &Db,
    clients: usize,
    duration: Duration,
    cpu: &dyn Fn() -> io::Result<u64>,
) -> io::Result<(Measured, Measured)> {
    // A leader is elected and the first put succeeds.
    db.put(b"warmup", b"x").map_err(io::Error::other)?;
    let puts = load::run(db, clients, duration, &put_op(), cpu)?;
    let keys: Vec<Vec<u8>> = (0..PRELOAD_KEYS as u64).map(preload_key).collect();
    load::preload(db, &keys, VALUE_BYTES)?;
    let gets = load::run(db, clients, duration, &get_op(), &|| Ok(0))?;
    Ok((puts, gets))
}

/// What `run` measures.
pub struct Options {
    /// Seconds per figure.
    pub seconds: f64,
    /// Also the three node processes over TCP.
    pub tcp: bool,
    /// Also the bare WAL (before and after the clusters).
    pub wal_baseline: bool,
    /// The node processes run plaintext links (default: sealed).
    pub insecure: bool,
}

/// Runs the measurements in `dir` at each count of `clients`.
pub fn run(dir: &Path, clients: &[usize], options: &Options) -> io::Result<ClusterBenchReport> {
    let Options { seconds, tcp, wal_baseline, insecure } = *options;
    let duration = Duration::from_secs_f64(seconds);
    let wal = || -> io::Result<f64> {
        if wal_baseline { super::wal::append_ops_per_sec(dir, 64, duration) } else { Ok(0.0) }
    };
    let wal_before = wal()?;
    let mut r = ClusterBenchReport { seconds_per_figure: seconds, ..ClusterBenchReport::default() };
    for &clients in clients {
        let key = clients.to_string();
        let cluster_dir = dir.join(format!("cluster-{clients}"));
        let cluster = Cluster::builder()
            .dir(&cluster_dir)
            .stores(3)
            .tick_interval(Duration::from_millis(TICK_MS))
            .build()
            .map_err(io::Error::other)?;
        let measured = put_then_get(&cluster.db(), clients, duration, &|| procs::cpu_us("self"));
        cluster.shutdown().map_err(io::Error::other)?;
        let (puts, gets) = measured?;
        std::fs::remove_dir_all(&cluster_dir)?;
        r.put_ops_per_sec.insert(key.clone(), puts.per_sec);
        r.put_p99_us.insert(key.clone(), puts.percentile_us(99));
        r.put_p50_us.insert(key.clone(), puts.percentile_us(50));
        r.process_cpu_us_per_put.insert(key.clone(), puts.counted_per_op());
        r.get_ops_per_sec.insert(key.clone(), gets.per_sec);
        if !tcp {
            continue;
        }
        let procs_dir = dir.join(format!("nodes-{clients}"));
        let nodes = NodeProcs::start(&procs_dir, TICK_MS, insecure)?;
        let client = nodes.client()?;
        let measured = put_then_get(&client.db(), clients, duration, &|| nodes.cpu_us());
        client.close();
        // The nodes stop (or, on an error above, are killed) before their files go.
        let stopped = nodes.stop();
        let (puts, gets) = measured?;
        stopped?;
        std::fs::remove_dir_all(&procs_dir)?;
        r.put_ops_per_sec_tcp.insert(key.clone(), puts.per_sec);
        r.put_p50_us_tcp.insert(key.clone(), puts.percentile_us(50));
        r.put_p99_us_tcp.insert(key.clone(), puts.percentile_us(99));
        r.server_cpu_us_per_put.insert(key.clone(), puts.counted_per_op());
        r.get_ops_per_sec_tcp.insert(key.clone(), gets.per_sec);
        r.put_tcp_vs_in_process.insert(key.clone(), puts.per_sec / r.put_ops_per_sec[&key]);
        r.get_tcp_vs_in_process.insert(key.clone(), gets.per_sec / r.get_ops_per_sec[&key]);
    }
    let wal_after = wal()?;
    r.wal_append_ops_per_sec_64 = f64::midpoint(wal_before, wal_after);
    r.put_64_vs_wal_64 = match r.put_ops_per_sec.get("64") {
        Some(p) if wal_baseline => p / r.wal_append_ops_per_sec_64,
        _ => 0.0,
    };
    Ok(r)
}

pub(super) fn percentile(sorted: &[u32], p: usize) -> f64 {
    f64::from(sorted.get(sorted.len() * p / 100).copied().unwrap_or_default())
}

impl super::Report for ClusterBenchReport {
    fn chart(&self) -> Option<super::plot::Chart> {
        let chart = super::plot::Chart::new("regionkv bench cluster: 3 stores", "client threads")
            .rate("puts, in process", &self.put_ops_per_sec)
            .rate("gets, in process", &self.get_ops_per_sec)
            .rate("puts, 3 processes over TCP", &self.put_ops_per_sec_tcp)
            .rate("gets, 3 processes over TCP", &self.get_ops_per_sec_tcp)
            .latency("put p50, in process", &self.put_p50_us)
            .latency("put p99, in process", &self.put_p99_us)
            .latency("put p50, over TCP", &self.put_p50_us_tcp)
            .latency("put p99, over TCP", &self.put_p99_us_tcp);
        Some(chart)
    }

    fn print_table(&self) {
        println!("Replicated puts and linearizable gets (3 stores, fsync on, 128 B values):");
        println!(
            "  bare WAL, 64 writers, same disk: {:.0} appends/s",
            self.wal_append_ops_per_sec_64
        );
        println!("  in one process:");
        println!(
            "  {:>8} {:>10} {:>8} {:>8} {:>9} {:>10} {:>11}",
            "clients", "puts/s", "p50 us", "p99 us", "x WAL-64", "gets/s", "CPU us/put"
        );
        for (k, rate) in load::by_count(&self.put_ops_per_sec) {
            println!(
                "  {:>8} {:>10.0} {:>8.0} {:>8.0} {:>9.2} {:>10.0} {:>11.0}",
                k,
                rate,
                self.put_p50_us[k],
                self.put_p99_us[k],
                if self.wal_append_ops_per_sec_64 > 0.0 {
                    rate / self.wal_append_ops_per_sec_64
                } else {
                    0.0
                },
                self.get_ops_per_sec[k],
                self.process_cpu_us_per_put[k],
            );
        }
        if self.put_ops_per_sec_tcp.is_empty() {
            return;
        }
        println!("  three `regionkv node` processes, clients over TCP (x: vs in one process):");
        println!(
            "  {:>8} {:>10} {:>6} {:>8} {:>8} {:>10} {:>6} {:>18}",
            "clients", "puts/s", "x", "p50 us", "p99 us", "gets/s", "x", "server CPU us/put"
        );
        for (k, rate) in load::by_count(&self.put_ops_per_sec_tcp) {
            println!(
                "  {:>8} {:>10.0} {:>6.2} {:>8.0} {:>8.0} {:>10.0} {:>6.2} {:>18.0}",
                k,
                rate,
                self.put_tcp_vs_in_process[k],
                self.put_p50_us_tcp[k],
                self.put_p99_us_tcp[k],
                self.get_ops_per_sec_tcp[k],
                self.get_tcp_vs_in_process[k],
                self.server_cpu_us_per_put[k],
            );
        }
    }
}
