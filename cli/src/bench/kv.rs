//! `regionkv bench kv`: one store as an embedded key-value store: durable puts and
//! linearizable gets at 1, 2, 16 and 64 client threads, 1,000-key scans, and the WAL's
//! fsyncs per put, through the public API (`Cluster` with one store, fsync on).
//!
//! The workload is the criterion `stack` bench's (`benches/`): 24-byte keys in hashed
//! order, 150 B values, 10,000 preloaded keys for the reads, so these figures sit next
//! to fjall's and redb's rows there. Each put figure runs on a new store; the reads run
//! on one new store holding only the preload.

use std::collections::BTreeMap;
use std::io;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use regionkv::{Cluster, Db};

use super::load::{self, Measured, Op};

/// Client-thread counts of the puts and gets.
pub const THREADS: [usize; 4] = [1, 2, 16, 64];
/// Bytes of every key.
pub const KEY_BYTES: usize = 24;
/// Bytes of every value.
pub const VALUE_BYTES: usize = 150;
/// Keys written before the reads.
pub const PRELOAD_KEYS: u64 = 10_000;
/// Pairs one scan reads.
pub const SCAN_KEYS: usize = 1_000;

/// Figures of one `regionkv bench kv` run. Maps are keyed by client threads.
#[derive(Clone, Debug, Default, Serialize)]
pub struct KvBenchReport {
    /// Acknowledged durable puts of new keys per second.
    pub put_ops_per_sec: BTreeMap<String, f64>,
    /// Median put latency in microseconds.
    pub put_p50_us: BTreeMap<String, f64>,
    /// 99th-percentile put latency in microseconds.
    pub put_p99_us: BTreeMap<String, f64>,
    /// The WAL's fsyncs (its `WalStats::fsyncs`) over the put window, per put.
    pub fsyncs_per_put: BTreeMap<String, f64>,
    /// Linearizable gets of random preloaded keys per second.
    pub get_ops_per_sec: BTreeMap<String, f64>,
    /// The WAL's fsyncs over the get window, per get (a read needs none).
    pub fsyncs_per_get: BTreeMap<String, f64>,
    /// Scans of 1,000 pairs from a random preloaded key per second, one thread.
    pub scan_1000_per_sec: f64,
    /// Seconds each figure was measured for (after a warm-up of up to 1 s).
    pub seconds_per_figure: f64,
}

/// A 64-bit finaliser: every input bit flips about half of the output bits.
fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Key `i` of client `c`: the hex of a mix of both (hashed order), then `i`'s low bits.
fn key(c: u64, i: u64) -> Vec<u8> {
    let key = format!("{:016x}{:08x}", mix(c << 40 | i), i & 0xffff_ffff).into_bytes();
    debug_assert_eq!(key.len(), KEY_BYTES);
    key
}

/// Preloaded key `i` (client number `0xffff`, which no put uses).
fn preloaded(i: u64) -> Vec<u8> {
    key(0xffff, i)
}

/// The WAL's fsyncs so far, over every store.
fn fsyncs(cluster: &Cluster) -> u64 {
    cluster.wal_stats().iter().map(|(_, s)| s.fsyncs).sum()
}

fn one_store(dir: &Path) -> io::Result<Cluster> {
    let cluster = Cluster::builder().dir(dir).stores(1).build().map_err(io::Error::other)?;
    // A linearizable read needs a leader: the first one waits out the election.
    cluster.db().get(b"leader?").map_err(io::Error::other)?;
    Ok(cluster)
}

fn put_op() -> Arc<Op> {
    let value = vec![b'v'; VALUE_BYTES];
    Arc::new(move |db: &Db, c, i, _: &mut load::Rng| {
        db.put(key(c as u64, i), value.clone()).map_err(io::Error::other)
    })
}

fn get_op() -> Arc<Op> {
    Arc::new(|db: &Db, _, _, rng: &mut load::Rng| {
        match db.get(preloaded(rng.below(PRELOAD_KEYS))).map_err(io::Error::other)? {
            Some(v) if v.len() == VALUE_BYTES => Ok(()),
            other => Err(io::Error::other(format!("a preloaded key read back {other:?}"))),
        }
    })
}

/// Scans from a random one of the first `PRELOAD_KEYS - SCAN_KEYS` sorted keys, so each
/// reads a full `SCAN_KEYS` pairs.
fn scan_op(sorted: Vec<Vec<u8>>) -> Arc<Op> {
    let starts = (sorted.len() - SCAN_KEYS) as u64;
    Arc::new(move |db: &Db, _, _, rng: &mut load::Rng| {
        let from = sorted[rng.below(starts) as usize].clone();
        let rows = db.scan(from.., SCAN_KEYS).map_err(io::Error::other)?;
        if rows.len() == SCAN_KEYS {
            Ok(())
        } else {
            Err(io::Error::other(format!("a scan read {} pairs, not {SCAN_KEYS}", rows.len())))
        }
    })
}

/// Runs `f` on a new one-store cluster in `dir`, shuts it down and removes its files.
fn with_store<T>(dir: &Path, f: impl FnOnce(&Cluster) -> io::Result<T>) -> io::Result<T> {
    let cluster = one_store(dir)?;
    let out = f(&cluster);
    cluster.shutdown().map_err(io::Error::other)?;
    let out = out?;
    std::fs::remove_dir_all(dir)?;
    Ok(out)
}

/// Runs the measurements in `dir`, `seconds` each, at each count of `threads`; the
/// reads (preload, gets, scans) only if `reads`.
pub fn run(dir: &Path, seconds: f64, threads: &[usize], reads: bool) -> io::Result<KvBenchReport> {
    let duration = Duration::from_secs_f64(seconds);
    let mut r = KvBenchReport { seconds_per_figure: seconds, ..KvBenchReport::default() };
    for &t in threads {
        let puts: Measured = with_store(&dir.join(format!("kv-put-{t}")), |cluster| {
            load::run(&cluster.db(), t, duration, &put_op(), &|| Ok(fsyncs(cluster)))
        })?;
        let k = t.to_string();
        r.put_ops_per_sec.insert(k.clone(), puts.per_sec);
        r.put_p50_us.insert(k.clone(), puts.percentile_us(50));
        r.put_p99_us.insert(k.clone(), puts.percentile_us(99));
        r.fsyncs_per_put.insert(k, puts.counted_per_op());
    }
    if !reads {
        return Ok(r);
    }
    with_store(&dir.join("kv-read"), |cluster| {
        let db = cluster.db();
        let mut sorted: Vec<Vec<u8>> = (0..PRELOAD_KEYS).map(preloaded).collect();
        load::preload(&db, &sorted, VALUE_BYTES)?;
        sorted.sort_unstable();
        for &t in threads {
            let gets = load::run(&db, t, duration, &get_op(), &|| Ok(fsyncs(cluster)))?;
            r.get_ops_per_sec.insert(t.to_string(), gets.per_sec);
            r.fsyncs_per_get.insert(t.to_string(), gets.counted_per_op());
        }
        r.scan_1000_per_sec = load::run(&db, 1, duration, &scan_op(sorted), &|| Ok(0))?.per_sec;
        Ok(())
    })?;
    Ok(r)
}

impl super::Report for KvBenchReport {
    fn chart(&self) -> Option<super::plot::Chart> {
        let chart = super::plot::Chart::new("regionkv bench kv: one store", "client threads")
            .rate("durable puts", &self.put_ops_per_sec)
            .rate("linearizable gets", &self.get_ops_per_sec)
            .latency("put p50", &self.put_p50_us)
            .latency("put p99", &self.put_p99_us);
        Some(chart)
    }

    fn print_table(&self) {
        println!(
            "One store (in process, fsync on, {KEY_BYTES} B keys, {VALUE_BYTES} B values, \
             {PRELOAD_KEYS} preloaded keys for the reads):"
        );
        println!(
            "  {:>8} {:>10} {:>8} {:>8} {:>12} {:>12} {:>12}",
            "threads", "puts/s", "p50 us", "p99 us", "fsyncs/put", "gets/s", "fsyncs/get"
        );
        for (k, rate) in load::by_count(&self.put_ops_per_sec) {
            println!(
                "  {:>8} {:>10.0} {:>8.0} {:>8.0} {:>12.2} {:>12.0} {:>12.3}",
                k,
                rate,
                self.put_p50_us[k],
                self.put_p99_us[k],
                self.fsyncs_per_put[k],
                self.get_ops_per_sec.get(k).copied().unwrap_or_default(),
                self.fsyncs_per_get.get(k).copied().unwrap_or_default(),
            );
        }
        println!("  scans of {SCAN_KEYS} pairs, 1 thread: {:.0}/s", self.scan_1000_per_sec);
    }
}
