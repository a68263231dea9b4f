//! `regionkv bench txn`: batches of two keys in one region (one Raft write, 1PC) and in
//! two regions (two-phase commit: prewrites on both, the commit on the primary's, the
//! resolve of the other), at 64 client threads on three stores in one process, each
//! next to baselines from the same run: single puts (today's single-region write) and
//! the same two keys written as two single-region batches one after the other (issue
//! 15's "Measure": `single_region_ops_per_sec` against the single-region writes,
//! `two_region_ops_per_sec` against the two batches, the p50 ratio). Also timestamps
//! from the oracle (`Db::timestamp`) per second at 1 and 64 threads, next to the same
//! run's single puts. And snapshot transactions (`Db::transaction`) writing two keys
//! of one region: committed in one phase (one Raft write at a commit timestamp the
//! region's leader chooses) against the same transactions forced to two phases, in
//! the same run, and snapshot transactions writing one key in each of two regions
//! (async commit) against the one-region ones.

use std::io;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use regionkv::layers::raft::txn::mvcc;
use regionkv::{Cluster, Db, WriteBatch};

use super::load::{self, Op};

/// Client threads (issue 15: 64).
pub const CLIENTS: usize = 64;
/// Bytes of every value.
pub const VALUE_BYTES: usize = 150;
/// Where the key space is split: `a...` keys on one side, `z...` on the other.
const SPLIT: &str = "m";

/// Figures of one `regionkv bench txn` run.
#[derive(Clone, Debug, Default, Serialize)]
pub struct TxnBenchReport {
    /// Client threads.
    pub clients: usize,
    /// Two-key batches in one region acknowledged per second (1PC).
    pub single_region_ops_per_sec: f64,
    /// Their median latency (us).
    pub single_region_p50_us: f64,
    /// Two-key batches over two regions acknowledged per second (two-phase commit).
    pub two_region_ops_per_sec: f64,
    /// Their median latency (us).
    pub two_region_p50_us: f64,
    /// Baseline: single puts per second, the single-region write path as it was
    /// before transactions (same run, same cluster).
    pub baseline_single_put_ops_per_sec: f64,
    /// Baseline: the two keys of a two-region batch written as two single-region
    /// batches, one after the other, per second (pairs).
    pub baseline_two_batches_ops_per_sec: f64,
    /// `single_region_ops_per_sec / baseline_single_put_ops_per_sec`.
    pub single_region_vs_single_put: f64,
    /// `two_region_ops_per_sec / baseline_two_batches_ops_per_sec` (target >= 0.45).
    pub two_region_vs_two_batches: f64,
    /// `two_region_p50_us / single_region_p50_us` (target <= 2.2).
    pub two_region_p50_vs_single_region: f64,
    /// Timestamps from the oracle (`Db::timestamp`, one per call) per second, by
    /// client threads (1 and 64); compare with `baseline_single_put_ops_per_sec`.
    pub tso_ops_per_sec: std::collections::BTreeMap<String, f64>,
    /// Snapshot transactions writing two keys of one region, committed in one phase,
    /// per second (each also takes its start timestamp from the oracle).
    pub snapshot_one_phase_ops_per_sec: f64,
    /// Their median latency (us).
    pub snapshot_one_phase_p50_us: f64,
    /// The same transactions forced to two phases (`Transaction::commit_two_phase`).
    pub snapshot_two_phase_ops_per_sec: f64,
    /// Their median latency (us).
    pub snapshot_two_phase_p50_us: f64,
    /// `snapshot_one_phase_ops_per_sec / snapshot_two_phase_ops_per_sec`.
    pub snapshot_one_phase_vs_two_phase: f64,
    /// Snapshot transactions writing one key in each of two regions, committed
    /// asynchronously (each prewrite's leader stamps a minimum commit timestamp; the
    /// caller is answered once both applied), per second.
    pub snapshot_two_region_ops_per_sec: f64,
    /// Their median latency (us).
    pub snapshot_two_region_p50_us: f64,
    /// `snapshot_two_region_p50_us / snapshot_one_phase_p50_us`.
    pub snapshot_two_region_p50_vs_one_region: f64,
    /// Seconds each figure was measured for (after a warm-up of up to 1 s).
    pub seconds_per_figure: f64,
}

fn key(side: &str, tag: &str, c: usize, i: u64) -> String {
    format!("{side}{tag}-{c:03}-{i:010}")
}

fn batch_op(tag: &'static str, second_side: &'static str) -> Arc<Op> {
    let value = vec![b'v'; VALUE_BYTES];
    Arc::new(move |db: &Db, c, i, _: &mut load::Rng| {
        let mut batch = WriteBatch::new();
        batch
            .put(key("a", tag, c, i), value.clone())
            .put(key(second_side, tag, c, i), value.clone());
        db.write(batch).map_err(io::Error::other)
    })
}

fn put_op() -> Arc<Op> {
    let value = vec![b'v'; VALUE_BYTES];
    Arc::new(move |db: &Db, c, i, _: &mut load::Rng| {
        db.put(key("a", "p", c, i), value.clone()).map_err(io::Error::other)
    })
}

fn timestamp_op() -> Arc<Op> {
    Arc::new(|db: &Db, _, _, _: &mut load::Rng| {
        db.timestamp().map(|_| ()).map_err(io::Error::other)
    })
}

fn snapshot_op(tag: &'static str, one_phase: bool, second_side: &'static str) -> Arc<Op> {
    let value = vec![b'v'; VALUE_BYTES];
    Arc::new(move |db: &Db, c, i, _: &mut load::Rng| {
        let mut t = db.transaction().map_err(io::Error::other)?;
        t.put(key("a", tag, c, i), value.clone());
        t.put(key(second_side, tag, c, i), value.clone());
        let committed = if one_phase { t.commit_ts() } else { t.commit_two_phase() };
        committed.map(|_| ()).map_err(io::Error::other)
    })
}

fn two_batches_op() -> Arc<Op> {
    let value = vec![b'v'; VALUE_BYTES];
    Arc::new(move |db: &Db, c, i, _: &mut load::Rng| {
        for side in ["a", "z"] {
            let mut batch = WriteBatch::new();
            batch.put(key(side, "b", c, i), value.clone());
            db.write(batch).map_err(io::Error::other)?;
        }
        Ok(())
    })
}

/// Runs the measurements in `dir`, `seconds` each, with `clients` threads.
pub fn run(dir: &Path, seconds: f64, clients: usize) -> io::Result<TxnBenchReport> {
    let duration = Duration::from_secs_f64(seconds);
    let cluster =
        Cluster::builder().dir(dir.join("txn")).stores(3).build().map_err(io::Error::other)?;
    let result = (|| {
        cluster.split(SPLIT).map_err(io::Error::other)?;
        // The transactional keyspace split the same way, for snapshot transactions
        // across two regions.
        cluster.split(mvcc::lock_key(SPLIT.as_bytes())).map_err(io::Error::other)?;
        let db = cluster.db();
        // Leaders for both regions before the clock starts.
        for side in ["a", "z"] {
            db.put(format!("{side}-warm"), "1").map_err(io::Error::other)?;
        }
        let none = || Ok(0);
        let puts = load::run(&db, clients, duration, &put_op(), &none)?;
        let single = load::run(&db, clients, duration, &batch_op("s", "a"), &none)?;
        let pairs = load::run(&db, clients, duration, &two_batches_op(), &none)?;
        let two = load::run(&db, clients, duration, &batch_op("t", "z"), &none)?;
        // A first commit in each transactional region gives its leader a timestamp.
        for side in ["a", "z"] {
            let mut t = db.transaction().map_err(io::Error::other)?;
            t.put(format!("{side}-warm"), "1");
            t.commit().map_err(io::Error::other)?;
        }
        let si_one = load::run(&db, clients, duration, &snapshot_op("o", true, "b"), &none)?;
        let si_two = load::run(&db, clients, duration, &snapshot_op("w", false, "b"), &none)?;
        let si_async = load::run(&db, clients, duration, &snapshot_op("x", true, "z"), &none)?;
        let mut tso_ops_per_sec = std::collections::BTreeMap::new();
        for threads in [1, CLIENTS] {
            let run = load::run(&db, threads, duration, &timestamp_op(), &none)?;
            tso_ops_per_sec.insert(threads.to_string(), run.per_sec);
        }
        let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { 0.0 };
        Ok(TxnBenchReport {
            clients,
            single_region_ops_per_sec: single.per_sec,
            single_region_p50_us: single.percentile_us(50),
            two_region_ops_per_sec: two.per_sec,
            two_region_p50_us: two.percentile_us(50),
            baseline_single_put_ops_per_sec: puts.per_sec,
            baseline_two_batches_ops_per_sec: pairs.per_sec,
            single_region_vs_single_put: ratio(single.per_sec, puts.per_sec),
            two_region_vs_two_batches: ratio(two.per_sec, pairs.per_sec),
            two_region_p50_vs_single_region: ratio(two.percentile_us(50), single.percentile_us(50)),
            tso_ops_per_sec,
            snapshot_one_phase_ops_per_sec: si_one.per_sec,
            snapshot_one_phase_p50_us: si_one.percentile_us(50),
            snapshot_two_phase_ops_per_sec: si_two.per_sec,
            snapshot_two_phase_p50_us: si_two.percentile_us(50),
            snapshot_one_phase_vs_two_phase: ratio(si_one.per_sec, si_two.per_sec),
            snapshot_two_region_ops_per_sec: si_async.per_sec,
            snapshot_two_region_p50_us: si_async.percentile_us(50),
            snapshot_two_region_p50_vs_one_region: ratio(
                si_async.percentile_us(50),
                si_one.percentile_us(50),
            ),
            seconds_per_figure: seconds,
        })
    })();
    cluster.shutdown().map_err(io::Error::other)?;
    result
}

impl super::Report for TxnBenchReport {
    fn print_table(&self) {
        println!(
            "Three stores in one process, {} clients, two keys of {VALUE_BYTES} B per batch:",
            self.clients
        );
        println!("  {:<36} {:>10} {:>8}", "", "ops/s", "p50 us");
        println!(
            "  {:<36} {:>10.0} {:>8.0}",
            "one region (1PC)", self.single_region_ops_per_sec, self.single_region_p50_us
        );
        println!(
            "  {:<36} {:>10.0} {:>8.0}",
            "two regions (2PC)", self.two_region_ops_per_sec, self.two_region_p50_us
        );
        println!(
            "  {:<36} {:>10.0}",
            "baseline: single puts", self.baseline_single_put_ops_per_sec
        );
        println!(
            "  {:<36} {:>10.0}",
            "baseline: two one-region batches", self.baseline_two_batches_ops_per_sec
        );
        println!(
            "  ratios: 1PC/puts {:.2}, 2PC/two batches {:.2} (target >= 0.45), 2PC p50/1PC p50 {:.2} (target <= 2.2)",
            self.single_region_vs_single_put,
            self.two_region_vs_two_batches,
            self.two_region_p50_vs_single_region
        );
        println!(
            "  {:<36} {:>10.0} {:>8.0}",
            "snapshot txn, one region, 1PC",
            self.snapshot_one_phase_ops_per_sec,
            self.snapshot_one_phase_p50_us
        );
        println!(
            "  {:<36} {:>10.0} {:>8.0}",
            "snapshot txn, one region, 2PC",
            self.snapshot_two_phase_ops_per_sec,
            self.snapshot_two_phase_p50_us
        );
        println!(
            "  {:<36} {:>10.0} {:>8.0}",
            "snapshot txn, two regions, async",
            self.snapshot_two_region_ops_per_sec,
            self.snapshot_two_region_p50_us
        );
        println!(
            "  ratios: snapshot 1PC/2PC {:.2}, snapshot two-region p50/one-region p50 {:.2}",
            self.snapshot_one_phase_vs_two_phase, self.snapshot_two_region_p50_vs_one_region
        );
        for (threads, rate) in load::by_count(&self.tso_ops_per_sec) {
            println!("  {:<36} {rate:>10.0}", format!("timestamps, {threads} threads"));
        }
    }
}
