//! `regionkv bench wal`: group-commit appends at 1, 4, 16 and 64 writers, next to the
//! disk's raw fdatasync rate and bandwidth.

use std::collections::BTreeMap;
use std::io;
use std::path::Path;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use regionkv_wal::{RealFs, Wal, WalOptions};
use serde::Serialize;

use super::disk;

/// Writer-thread counts measured for small records.
pub const WRITERS: [usize; 4] = [1, 4, 16, 64];
/// Payload of the small-record runs.
pub const SMALL_RECORD_BYTES: usize = 128;
/// Payload of the bandwidth run.
pub const BIG_RECORD_BYTES: usize = 1 << 20;

/// Figures of one `regionkv bench wal` run; every ratio is to a baseline of this run.
#[derive(Clone, Debug, Serialize)]
pub struct WalBenchReport {
    /// One thread overwriting a preallocated file with 4 KiB writes + fdatasync.
    pub raw_fdatasync_ops_per_sec: f64,
    /// Appends of 128 B records per second, keyed by writer threads.
    pub append_ops_per_sec: BTreeMap<String, f64>,
    /// 99th-percentile append latency in microseconds, keyed by writer threads.
    pub append_p99_us: BTreeMap<String, f64>,
    /// Records per fdatasync (mean group size), keyed by writer threads.
    pub records_per_fsync: BTreeMap<String, f64>,
    /// One thread overwriting a preallocated file with 1 MiB writes + fdatasync.
    pub raw_bandwidth_bytes_per_sec: f64,
    /// One thread appending 1 MiB records to a log in steady state: purged segments are
    /// recycled, as in a store whose regions checkpoint.
    pub append_bandwidth_bytes_per_sec: f64,
    /// The same on a log that is never purged, so every segment is a fresh file that
    /// must be zero-filled first (each byte is written twice).
    pub append_bandwidth_fresh_log_bytes_per_sec: f64,
    /// `append_ops_per_sec["1"]` / `raw_fdatasync_ops_per_sec` (target >= 0.8).
    pub one_writer_vs_raw_fdatasync: f64,
    /// `append_ops_per_sec["64"]` / `raw_fdatasync_ops_per_sec` (target >= 15).
    pub sixty_four_writers_vs_raw_fdatasync: f64,
    /// `append_bandwidth_bytes_per_sec` / `raw_bandwidth_bytes_per_sec` (target >= 0.7).
    pub bandwidth_vs_raw: f64,
    /// Seconds each figure was measured for.
    pub seconds_per_figure: f64,
}

/// What one append run measured.
struct AppendRun {
    ops_per_sec: f64,
    bytes_per_sec: f64,
    p99_us: f64,
    records_per_fsync: f64,
}

/// How the log is kept during a run.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Upkeep {
    /// Purge everything sealed every `PURGE_EVERY_BYTES`, as a checkpointing store does.
    SteadyState,
    /// Never purge: every segment is a new file.
    FreshLog,
}

const PURGE_EVERY_BYTES: usize = 16 << 20;

/// `writers` threads append `record_bytes` records to a new log for `duration`.
fn append_run(
    dir: &Path,
    writers: usize,
    record_bytes: usize,
    duration: Duration,
    upkeep: Upkeep,
) -> io::Result<AppendRun> {
    let wal_dir = dir.join(format!("wal-{writers}-{record_bytes}"));
    let wal =
        Wal::open(Arc::new(RealFs), &wal_dir, WalOptions::default()).map_err(io::Error::other)?;
    // Let the background thread finish preparing spare segments before measuring.
    let ready = Instant::now();
    while wal.stats().spare_segments < wal.options().spare_segments
        && ready.elapsed() < Duration::from_secs(10)
    {
        std::thread::sleep(Duration::from_millis(5));
    }
    let before = wal.stats();
    let barrier = Arc::new(Barrier::new(writers + 1));
    let threads: Vec<_> = (0..writers)
        .map(|t| {
            let (wal, barrier) = (wal.clone(), barrier.clone());
            std::thread::Builder::new().name(format!("bench-writer-{t}")).spawn(
                move || -> io::Result<Vec<u32>> {
                    let payload = vec![t as u8; record_bytes];
                    let mut latencies_us = Vec::with_capacity(1 << 16);
                    let purge_every = PURGE_EVERY_BYTES.div_ceil(record_bytes);
                    barrier.wait();
                    let start = Instant::now();
                    while start.elapsed() < duration {
                        let t0 = Instant::now();
                        let lsn = wal.append(&payload).map_err(io::Error::other)?;
                        latencies_us
                            .push(t0.elapsed().as_micros().min(u128::from(u32::MAX)) as u32);
                        if upkeep == Upkeep::SteadyState
                            && t == 0
                            && latencies_us.len() % purge_every == 0
                        {
                            wal.purge_below(lsn).map_err(io::Error::other)?;
                        }
                    }
                    Ok(latencies_us)
                },
            )
        })
        .collect::<io::Result<_>>()?;
    barrier.wait();
    let start = Instant::now();
    let mut latencies = Vec::new();
    for t in threads {
        latencies.extend(t.join().map_err(|_| io::Error::other("bench writer panicked"))??);
    }
    let secs = start.elapsed().as_secs_f64();
    let after = wal.stats();
    wal.close().map_err(io::Error::other)?;
    drop(wal);
    std::fs::remove_dir_all(&wal_dir)?;
    latencies.sort_unstable();
    let ops = latencies.len() as f64;
    let p99 = latencies.get(latencies.len() * 99 / 100).copied().unwrap_or_default();
    Ok(AppendRun {
        ops_per_sec: ops / secs,
        bytes_per_sec: ops * record_bytes as f64 / secs,
        p99_us: f64::from(p99),
        records_per_fsync: (after.records - before.records) as f64
            / (after.fsyncs - before.fsyncs).max(1) as f64,
    })
}

/// Appends per second of `writers` threads appending 128 B records to a log in steady
/// state (the baseline other benches compare against).
pub fn append_ops_per_sec(dir: &Path, writers: usize, duration: Duration) -> io::Result<f64> {
    append_run(dir, writers, SMALL_RECORD_BYTES, duration, Upkeep::SteadyState)
        .map(|r| r.ops_per_sec)
}

/// Runs every measurement in `dir` (on the disk to be measured), `seconds` each.
pub fn run(dir: &Path, seconds: f64) -> io::Result<WalBenchReport> {
    let duration = Duration::from_secs_f64(seconds);
    let raw_fdatasync_ops_per_sec = disk::raw_fdatasync_ops_per_sec(dir, duration)?;
    let mut append_ops_per_sec = BTreeMap::new();
    let mut append_p99_us = BTreeMap::new();
    let mut records_per_fsync = BTreeMap::new();
    for writers in WRITERS {
        let run = append_run(dir, writers, SMALL_RECORD_BYTES, duration, Upkeep::SteadyState)?;
        append_ops_per_sec.insert(writers.to_string(), run.ops_per_sec);
        append_p99_us.insert(writers.to_string(), run.p99_us);
        records_per_fsync.insert(writers.to_string(), run.records_per_fsync);
    }
    let raw_bandwidth_bytes_per_sec = disk::raw_bandwidth_bytes_per_sec(dir, duration)?;
    let append_bandwidth_bytes_per_sec =
        append_run(dir, 1, BIG_RECORD_BYTES, duration, Upkeep::SteadyState)?.bytes_per_sec;
    let append_bandwidth_fresh_log_bytes_per_sec =
        append_run(dir, 1, BIG_RECORD_BYTES, duration, Upkeep::FreshLog)?.bytes_per_sec;
    Ok(WalBenchReport {
        one_writer_vs_raw_fdatasync: append_ops_per_sec["1"] / raw_fdatasync_ops_per_sec,
        sixty_four_writers_vs_raw_fdatasync: append_ops_per_sec["64"] / raw_fdatasync_ops_per_sec,
        bandwidth_vs_raw: append_bandwidth_bytes_per_sec / raw_bandwidth_bytes_per_sec,
        raw_fdatasync_ops_per_sec,
        append_ops_per_sec,
        append_p99_us,
        records_per_fsync,
        raw_bandwidth_bytes_per_sec,
        append_bandwidth_bytes_per_sec,
        append_bandwidth_fresh_log_bytes_per_sec,
        seconds_per_figure: seconds,
    })
}

impl super::Report for WalBenchReport {
    fn chart(&self) -> Option<super::plot::Chart> {
        let chart = super::plot::Chart::new("regionkv bench wal: synced appends", "writer threads")
            .rate("appends", &self.append_ops_per_sec)
            .latency("append p99", &self.append_p99_us);
        Some(chart)
    }

    fn print_table(&self) {
        println!("WAL appends (128 B records, fsync on), next to the raw disk, same run:");
        println!(
            "  raw fdatasync (4 KiB overwrite, 1 thread)  {:>12.0} ops/s",
            self.raw_fdatasync_ops_per_sec
        );
        println!(
            "  {:>8} {:>14} {:>10} {:>12} {:>14}",
            "writers", "appends/s", "x raw", "p99 us", "records/fsync"
        );
        for writers in WRITERS {
            let key = writers.to_string();
            println!(
                "  {:>8} {:>14.0} {:>10.2} {:>12.0} {:>14.1}",
                writers,
                self.append_ops_per_sec[&key],
                self.append_ops_per_sec[&key] / self.raw_fdatasync_ops_per_sec,
                self.append_p99_us[&key],
                self.records_per_fsync[&key],
            );
        }
        let mib = |b: f64| b / f64::from(1 << 20);
        println!(
            "  bandwidth: raw {:.0} MiB/s; appends of 1 MiB {:.0} MiB/s ({:.2}x) with recycled \
             segments, {:.0} MiB/s ({:.2}x) on a never-purged log (zero-fills every segment)",
            mib(self.raw_bandwidth_bytes_per_sec),
            mib(self.append_bandwidth_bytes_per_sec),
            self.bandwidth_vs_raw,
            mib(self.append_bandwidth_fresh_log_bytes_per_sec),
            self.append_bandwidth_fresh_log_bytes_per_sec / self.raw_bandwidth_bytes_per_sec,
        );
    }
}
