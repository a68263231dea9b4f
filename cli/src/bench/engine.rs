//! `regionkv bench engine`: the engine next to baselines measured in the same run.
//!
//! - apply: rounds of 16 puts (16-byte keys, 100-byte values, one thread) into one
//!   region, against a bare crossbeam-skiplist insert loop of the same keys and values
//!   (each twice, alternating, best of two: the machine may be shared);
//! - reads: point gets and range scans at a snapshot;
//! - memory: resident bytes the engine's memtable adds per key beyond key and value
//!   (process RSS before and after the apply phase, which runs first, on a fresh heap);
//! - warm-up: memory and page cache are touched once before anything is timed (a fresh
//!   virtual machine pays several times more for the first touch of a page);
//! - checkpoints: writing one region's checkpoint (temp file, fsync, rename, directory
//!   fsync, manifest) and loading it into a fresh engine (open: map, verify every
//!   block, insert), against the disk's raw sequential bandwidth (1 MiB writes, each
//!   followed by fdatasync, into a preallocated file).

#![allow(clippy::cast_precision_loss, reason = "rates of counts far below 2^52")]

use std::fs::OpenOptions;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_skiplist::SkipMap;
use regionkv_engine::{CheckpointFile, Engine, EngineOptions, Region, RegionId, StoreId};
use regionkv_wal::RealFs;
use regionkv_wal::fs::{FileSystem, OpenMode};
use serde::Serialize;

/// Keys per apply round.
const ROUND_KEYS: usize = 16;
const KEY_BYTES: usize = 16;
const VALUE_BYTES: usize = 100;
const RAW_WRITE_CHUNK_BYTES: usize = 1 << 20;

/// What `regionkv bench engine` measured. Rates are per second of wall time.
#[derive(Clone, Debug, Serialize)]
pub struct EngineBenchReport {
    /// Keys in the data set.
    pub keys: u64,
    /// True if the quick (smaller) configuration ran.
    pub quick: bool,
    /// Keys applied per second, in rounds of 16.
    pub apply_keys_per_sec: f64,
    /// Inserts per second into a bare crossbeam `SkipMap<Vec<u8>, Vec<u8>>`.
    pub raw_skiplist_inserts_per_sec: f64,
    /// `apply_keys_per_sec / raw_skiplist_inserts_per_sec` (target >= 0.7).
    pub apply_vs_raw_skiplist: f64,
    /// Point reads per second at a snapshot (random existing keys).
    pub get_per_sec: f64,
    /// Keys per second returned by scans of 1000 keys from random starts.
    pub scan_keys_per_sec: f64,
    /// Resident bytes per key beyond the key and value (target <= 64).
    pub memory_overhead_bytes_per_key: f64,
    /// Bytes per key the engine's own accounting charges beyond key and value.
    pub memory_charged_overhead_bytes_per_key: f64,
    /// Size of the checkpoint file.
    pub checkpoint_file_bytes: u64,
    /// Checkpoint file bytes written per second, durable (fsync, rename, dir fsync,
    /// manifest); best of two.
    pub checkpoint_write_bytes_per_sec: f64,
    /// Checkpoint file bytes loaded per second by opening a fresh engine on it (warm
    /// page cache); best of two.
    pub checkpoint_load_bytes_per_sec: f64,
    /// Checkpoint file bytes verified per second (mmap, every checksum, key order), no
    /// insertion: the format's own cost within the load.
    pub checkpoint_verify_bytes_per_sec: f64,
    /// Raw sequential write bandwidth: 1 MiB writes, each followed by fdatasync, into a
    /// preallocated file.
    pub raw_write_bandwidth_bytes_per_sec: f64,
    /// Raw write bandwidth of the checkpoint's own pattern: a new file, 1 MiB writes,
    /// one fdatasync at the end (page-cache allocation of a new file included).
    pub raw_new_file_write_bytes_per_sec: f64,
    /// `checkpoint_write_bytes_per_sec / raw_write_bandwidth_bytes_per_sec` (target >= 0.5).
    pub checkpoint_write_vs_raw: f64,
    /// `checkpoint_write_bytes_per_sec / raw_new_file_write_bytes_per_sec`.
    pub checkpoint_write_vs_raw_new_file: f64,
    /// `checkpoint_load_bytes_per_sec / raw_write_bandwidth_bytes_per_sec` (target >= 0.5).
    pub checkpoint_load_vs_raw: f64,
}

impl super::Report for EngineBenchReport {
    fn print_table(&self) {
        let mib = |b: f64| b / f64::from(1u32 << 20);
        let mode = if self.quick { "quick" } else { "full" };
        println!(
            "engine bench ({mode}): {} keys of {KEY_BYTES} B, values of {VALUE_BYTES} B",
            self.keys
        );
        println!("{:<44} {:>16}", "measure", "value");
        let rows: [(&str, String); 16] = [
            ("apply (rounds of 16), keys/s", format!("{:.0}", self.apply_keys_per_sec)),
            ("raw skiplist inserts/s", format!("{:.0}", self.raw_skiplist_inserts_per_sec)),
            (
                "  apply / raw skiplist (target >= 0.70)",
                format!("{:.2}", self.apply_vs_raw_skiplist),
            ),
            ("get/s", format!("{:.0}", self.get_per_sec)),
            ("scan keys/s", format!("{:.0}", self.scan_keys_per_sec)),
            (
                "memory overhead B/key, resident (<= 64)",
                format!("{:.1}", self.memory_overhead_bytes_per_key),
            ),
            (
                "memory overhead B/key, charged",
                format!("{:.1}", self.memory_charged_overhead_bytes_per_key),
            ),
            ("checkpoint file MiB", format!("{:.1}", mib(self.checkpoint_file_bytes as f64))),
            ("checkpoint write MiB/s", format!("{:.0}", mib(self.checkpoint_write_bytes_per_sec))),
            ("checkpoint load MiB/s", format!("{:.0}", mib(self.checkpoint_load_bytes_per_sec))),
            (
                "checkpoint verify MiB/s",
                format!("{:.0}", mib(self.checkpoint_verify_bytes_per_sec)),
            ),
            (
                "raw write MiB/s (1 MiB + fdatasync)",
                format!("{:.0}", mib(self.raw_write_bandwidth_bytes_per_sec)),
            ),
            (
                "raw new-file write MiB/s (1 fdatasync)",
                format!("{:.0}", mib(self.raw_new_file_write_bytes_per_sec)),
            ),
            (
                "  checkpoint write / raw (target >= 0.50)",
                format!("{:.2}", self.checkpoint_write_vs_raw),
            ),
            (
                "  checkpoint write / raw new-file",
                format!("{:.2}", self.checkpoint_write_vs_raw_new_file),
            ),
            (
                "  checkpoint load / raw (target >= 0.50)",
                format!("{:.2}", self.checkpoint_load_vs_raw),
            ),
        ];
        for (name, value) in rows {
            println!("{name:<44} {value:>16}");
        }
    }
}

/// `SplitMix64`: deterministic keys without a `rand` dependency.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// 16-byte keys in pseudo-random order (hex of a mixed counter) and 100-byte values.
fn data_set(n: usize) -> (Vec<[u8; KEY_BYTES]>, Vec<[u8; VALUE_BYTES]>) {
    let keys = (0..n as u64)
        .map(|i| {
            let mut k = [0u8; KEY_BYTES];
            k.copy_from_slice(format!("{:016x}", mix(i)).as_bytes());
            k
        })
        .collect();
    let values = (0..n as u64)
        .map(|i| {
            let mut v = [0u8; VALUE_BYTES];
            for (j, b) in v.iter_mut().enumerate() {
                *b = (mix(i ^ (j as u64) << 40) & 0xff) as u8;
            }
            v
        })
        .collect();
    (keys, values)
}

fn per_sec(count: f64, elapsed: Duration) -> f64 {
    count / elapsed.as_secs_f64().max(1e-9)
}

/// Resident set size of this process, from `/proc/self/statm`.
fn resident_bytes() -> io::Result<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm")?;
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| io::Error::other("unexpected /proc/self/statm"))?;
    Ok(pages * 4096)
}

fn to_io(e: regionkv_engine::Error) -> io::Error {
    io::Error::other(e)
}

/// Runs the engine bench in `dir` (which it fills with an engine directory and a raw
/// bandwidth file). `quick` uses 100 000 keys instead of 1 000 000.
pub fn run(dir: &Path, quick: bool) -> io::Result<EngineBenchReport> {
    let n = if quick { 100_000 } else { 1_000_000 };
    let (keys, values) = data_set(n);
    let engine_dir = dir.join("engine");
    let options = EngineOptions::new(StoreId(1));

    // Warm up first: on a fresh virtual machine the first touch of guest memory is
    // several times slower than later ones, which would bill whichever phase runs
    // first. Touch (then free) more memory than the run needs, and measure the raw disk
    // baselines, which also cycles page-cache memory.
    warm_memory(if quick { 256 << 20 } else { 2 << 30 });
    let bytes_estimate = (n * (KEY_BYTES + VALUE_BYTES + 16)) as u64;
    let raw_bandwidth = raw_write_bandwidth(dir, bytes_estimate.max(64 << 20))?;
    let raw_new_file = raw_new_file_bandwidth(dir, bytes_estimate)?;

    // Apply first, on a heap that holds little else, so the RSS delta is the memtable.
    let rss_before = resident_bytes()?;
    let (engine, apply) = apply_all(&engine_dir, &options, &keys, &values)?;
    let rss_after = resident_bytes()?;
    let payload = (KEY_BYTES + VALUE_BYTES) as f64;
    let memory_overhead = (rss_after.saturating_sub(rss_before)) as f64 / n as f64 - payload;
    let charged = engine.memory().total_bytes as f64 / n as f64 - payload;

    // Reads at a snapshot.
    let snapshot = engine.read_view();
    let gets = n.min(500_000);
    let start = Instant::now();
    let mut found = 0usize;
    for i in 0..gets {
        let k = &keys[(mix(i as u64 + 7) % n as u64) as usize];
        found += usize::from(snapshot.get(k).is_some());
    }
    let get = start.elapsed();
    if found != gets {
        return Err(io::Error::other(format!("gets found {found} of {gets} keys")));
    }
    let scans = (n / 1000).max(1);
    let start = Instant::now();
    let mut scanned = 0usize;
    for i in 0..scans {
        let from = &keys[(mix(i as u64 + 11) % n as u64) as usize];
        scanned += snapshot.scan(from, None, 1000).len();
    }
    let scan = start.elapsed();
    drop(snapshot);

    // Checkpoint write (twice: the second replaces the first), then load into a fresh
    // engine (twice); the faster run of each counts.
    let mut write = Duration::MAX;
    let mut meta = None;
    for index in [n as u64, n as u64 + 1] {
        let start = Instant::now();
        meta = Some(engine.checkpoint(RegionId(1), index).map_err(to_io)?);
        write = write.min(start.elapsed());
    }
    let meta = meta.ok_or_else(|| io::Error::other("no checkpoint"))?;
    engine.close().map_err(to_io)?;
    drop(engine);
    let file_bytes = meta.stats.file_bytes;
    let start = Instant::now();
    let data = RealFs.open(&meta.path, OpenMode::Existing)?.map()?;
    let verified = CheckpointFile::open(data, &meta.path).map_err(to_io)?;
    let verify = start.elapsed();
    drop(verified);
    let mut load = Duration::MAX;
    for _ in 0..2 {
        let start = Instant::now();
        let reopened =
            Engine::open(Arc::new(RealFs), &engine_dir, options.clone()).map_err(to_io)?;
        load = load.min(start.elapsed());
        if reopened.recovery().entries_loaded != n as u64 {
            return Err(io::Error::other("the checkpoint did not load every key"));
        }
        reopened.close().map_err(to_io)?;
    }

    // Baseline: a bare skip list, same keys and values. The machine may be shared, so
    // apply and baseline each run twice, alternating, and the faster run counts.
    let raw_first = raw_inserts(&keys, &values);
    let (second, apply_second) = apply_all(&dir.join("engine-2"), &options, &keys, &values)?;
    drop(second);
    let raw_second = raw_inserts(&keys, &values);
    let apply = apply.min(apply_second);
    let raw_insert = raw_first.min(raw_second);

    let write_rate = per_sec(file_bytes as f64, write);
    let load_rate = per_sec(file_bytes as f64, load);
    let apply_rate = per_sec(n as f64, apply);
    let raw_rate = per_sec(n as f64, raw_insert);
    Ok(EngineBenchReport {
        keys: n as u64,
        quick,
        apply_keys_per_sec: apply_rate,
        raw_skiplist_inserts_per_sec: raw_rate,
        apply_vs_raw_skiplist: apply_rate / raw_rate,
        get_per_sec: per_sec(gets as f64, get),
        scan_keys_per_sec: per_sec(scanned as f64, scan),
        memory_overhead_bytes_per_key: memory_overhead,
        memory_charged_overhead_bytes_per_key: charged,
        checkpoint_file_bytes: file_bytes,
        checkpoint_write_bytes_per_sec: write_rate,
        checkpoint_load_bytes_per_sec: load_rate,
        checkpoint_verify_bytes_per_sec: per_sec(file_bytes as f64, verify),
        raw_write_bandwidth_bytes_per_sec: raw_bandwidth,
        raw_new_file_write_bytes_per_sec: raw_new_file,
        checkpoint_write_vs_raw: write_rate / raw_bandwidth,
        checkpoint_write_vs_raw_new_file: write_rate / raw_new_file,
        checkpoint_load_vs_raw: load_rate / raw_bandwidth,
    })
}

/// Sequential 1 MiB writes, each followed by fdatasync, over a preallocated file of
/// about `bytes` bytes; returns bytes per second.
fn raw_write_bandwidth(dir: &Path, bytes: u64) -> io::Result<f64> {
    let chunks = bytes.div_ceil(RAW_WRITE_CHUNK_BYTES as u64);
    let path = dir.join("raw-bandwidth.dat");
    let file = OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&path)?;
    let buf: Vec<u8> = (0..RAW_WRITE_CHUNK_BYTES).map(|i| (mix(i as u64) & 0xff) as u8).collect();
    // Preallocate with real blocks (written and synced), as the WAL does.
    let zeros = vec![0u8; RAW_WRITE_CHUNK_BYTES];
    for i in 0..chunks {
        file.write_all_at(&zeros, i * RAW_WRITE_CHUNK_BYTES as u64)?;
    }
    file.sync_all()?;
    let start = Instant::now();
    for i in 0..chunks {
        file.write_all_at(&buf, i * RAW_WRITE_CHUNK_BYTES as u64)?;
        file.sync_data()?;
    }
    let elapsed = start.elapsed();
    drop(file);
    std::fs::remove_file(&path)?;
    Ok(per_sec((chunks * RAW_WRITE_CHUNK_BYTES as u64) as f64, elapsed))
}

/// Opens an engine in `dir` with one region and applies every key in rounds of 16.
fn apply_all(
    dir: &Path,
    options: &EngineOptions,
    keys: &[[u8; KEY_BYTES]],
    values: &[[u8; VALUE_BYTES]],
) -> io::Result<(Engine, Duration)> {
    let engine = Engine::open(Arc::new(RealFs), dir, options.clone()).map_err(to_io)?;
    engine.insert_region(Region::whole(RegionId(1))).map_err(to_io)?;
    let epoch = engine.region(RegionId(1)).map(|r| r.epoch).unwrap_or_default();
    let start = Instant::now();
    for (ks, vs) in keys.chunks(ROUND_KEYS).zip(values.chunks(ROUND_KEYS)) {
        let mut round = engine.begin_round();
        round.prepare_for_region(RegionId(1), epoch).map_err(to_io)?;
        for (k, v) in ks.iter().zip(vs) {
            round.put(k, v).map_err(to_io)?;
        }
        round.commit().map_err(to_io)?;
    }
    Ok((engine, start.elapsed()))
}

/// Inserts every key into a bare crossbeam skip list; returns the time it took.
fn raw_inserts(keys: &[[u8; KEY_BYTES]], values: &[[u8; VALUE_BYTES]]) -> Duration {
    let raw = SkipMap::new();
    let start = Instant::now();
    for (k, v) in keys.iter().zip(values) {
        raw.insert(k.to_vec(), v.to_vec());
    }
    let elapsed = start.elapsed();
    drop(raw);
    elapsed
}

/// Touches `bytes` of fresh memory once, then returns it to the system.
fn warm_memory(bytes: usize) {
    let mut buf = vec![0u8; bytes];
    for i in (0..bytes).step_by(4096) {
        buf[i] = 1;
    }
    std::hint::black_box(&buf);
}

/// Sequential 1 MiB writes into a new file of about `bytes` bytes, then one
/// fdatasync: how a checkpoint is written. Returns bytes per second.
fn raw_new_file_bandwidth(dir: &Path, bytes: u64) -> io::Result<f64> {
    let chunks = bytes.div_ceil(RAW_WRITE_CHUNK_BYTES as u64);
    let path = dir.join("raw-new-file.dat");
    let buf: Vec<u8> = (0..RAW_WRITE_CHUNK_BYTES).map(|i| (mix(i as u64) & 0xff) as u8).collect();
    let start = Instant::now();
    let file = OpenOptions::new().read(true).write(true).create_new(true).open(&path)?;
    for i in 0..chunks {
        file.write_all_at(&buf, i * RAW_WRITE_CHUNK_BYTES as u64)?;
    }
    file.sync_data()?;
    let elapsed = start.elapsed();
    drop(file);
    std::fs::remove_file(&path)?;
    Ok(per_sec((chunks * RAW_WRITE_CHUNK_BYTES as u64) as f64, elapsed))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::Report as _;

    #[test]
    fn quick_run_reports_sane_numbers() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        let report = run(dir.path(), true)?;
        assert_eq!(report.keys, 100_000);
        for (name, v) in [
            ("apply", report.apply_keys_per_sec),
            ("raw", report.raw_skiplist_inserts_per_sec),
            ("get", report.get_per_sec),
            ("scan", report.scan_keys_per_sec),
            ("ckpt write", report.checkpoint_write_bytes_per_sec),
            ("ckpt load", report.checkpoint_load_bytes_per_sec),
            ("ckpt verify", report.checkpoint_verify_bytes_per_sec),
            ("raw bw", report.raw_write_bandwidth_bytes_per_sec),
            ("raw new file bw", report.raw_new_file_write_bytes_per_sec),
        ] {
            assert!(v.is_finite() && v > 0.0, "{name}: {v}");
        }
        // The checkpoint holds at least the keys and values.
        assert!(report.checkpoint_file_bytes >= 100_000 * (KEY_BYTES + VALUE_BYTES) as u64);
        assert!(report.memory_charged_overhead_bytes_per_key > 0.0);
        let json = serde_json::to_value(&report).map_err(io::Error::other)?;
        for key in [
            "apply_keys_per_sec",
            "raw_skiplist_inserts_per_sec",
            "get_per_sec",
            "scan_keys_per_sec",
            "checkpoint_write_bytes_per_sec",
            "checkpoint_load_bytes_per_sec",
            "memory_overhead_bytes_per_key",
            "raw_write_bandwidth_bytes_per_sec",
        ] {
            assert!(json.get(key).is_some_and(serde_json::Value::is_number), "{key}");
        }
        Ok(())
    }

    /// The full run (1 M keys), printed; until the CLI is wired up:
    /// `cargo test -p regionkv --release full_engine_bench -- --ignored --nocapture`.
    #[test]
    #[ignore = "a benchmark, not a test: takes ~10 s and 1 GiB of disk"]
    fn full_engine_bench() -> io::Result<()> {
        let dir =
            tempfile::tempdir_in(std::env::var_os("BENCH_DIR").unwrap_or_else(|| ".".into()))?;
        let report = run(dir.path(), false)?;
        report.print_table();
        println!("{}", serde_json::to_string_pretty(&report).map_err(io::Error::other)?);
        Ok(())
    }
}
