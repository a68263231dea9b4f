//! `regionkv demo`: the main job, on a temporary directory, verified end to end.
//!
//! 1. The disk: its raw fdatasync rate, the yardstick for everything after.
//! 2. The log: many writer threads append with group commit (each append returns only
//!    after the fsync covering it), close cleanly, reopen under `AbsoluteConsistency`
//!    and verify every acknowledged record at its position; then tear the tail as a
//!    power loss mid-write would and verify that recovery cuts it and loses nothing.
//! 3. The cluster: three stores replicate through Raft; the key space is split into
//!    four regions; clients write keys while one store is killed (abruptly, as a
//!    crash) and later restarted; two regions are merged back; every acknowledged key
//!    is then read back through the client and found on every replica, and the region
//!    table is printed.
//! 4. The whole cluster is stopped cleanly, reopened from its files, and checked again.
//! 5. The health monitor (`demo/health.rs`): three nodes over TCP and a spare; one node
//!    is killed past the (shortened) dead timeout and its replicas are replaced on the
//!    spare; what the monitor reports meanwhile, and its audit, are printed.
//! 6. Transactions (`demo/bank.rs`): threads move money between accounts in different
//!    regions (each transfer one batch over two regions) while a store is killed and
//!    restarted; the total is checked.

#![allow(
    clippy::cast_precision_loss,
    reason = "counts become f64 rates; 2^52 operations is far beyond any run"
)]

use std::collections::HashMap;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use regionkv_engine::StoreId;
use regionkv_wal::{Lsn, RealFs, RecoveryMode, Wal, WalOptions};

use crate::bench::disk;
use crate::progress::{Counter, Mode};
use regionkv::Cluster;

mod bank;
mod dup;
mod health;

/// What to run.
#[derive(Clone, Debug)]
pub struct DemoOptions {
    /// Directory for the demo's files (a temporary one from the CLI).
    pub dir: PathBuf,
    /// Concurrent writer threads.
    pub writers: usize,
    /// Records to append in the group-commit phase.
    pub records: u64,
    /// Payload bytes per record.
    pub record_bytes: usize,
    /// Keys written to the cluster.
    pub keys: u64,
    /// Concurrent cluster clients.
    pub clients: usize,
    /// How long phases show their progress (a bar on a terminal, else lines).
    pub progress: Mode,
}

impl DemoOptions {
    /// The defaults of `regionkv demo` in `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        DemoOptions {
            dir: dir.into(),
            writers: 64,
            records: 100_000,
            record_bytes: 128,
            keys: 20_000,
            clients: 16,
            progress: Mode::Lines,
        }
    }
}

/// A failed verification: something acknowledged is not there.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// An I/O or log error.
    #[error(transparent)]
    Io(#[from] io::Error),
    /// The log refused an operation.
    #[error(transparent)]
    Wal(#[from] regionkv_wal::Error),
    /// Verification failed.
    #[error("verification failed: {0}")]
    Verify(String),
}

fn payload(writer: u64, seq: u64, len: usize) -> Vec<u8> {
    let mut p = vec![0u8; len.max(16)];
    p[..8].copy_from_slice(&writer.to_le_bytes());
    p[8..16].copy_from_slice(&seq.to_le_bytes());
    for (i, b) in p[16..].iter_mut().enumerate() {
        *b = (writer.wrapping_mul(31) ^ seq.wrapping_mul(7) ^ i as u64) as u8;
    }
    p
}

fn options() -> WalOptions {
    WalOptions::default().segment_bytes(8 << 20)
}

/// Checks that every acknowledged record is in `wal` at its Lsn, byte for byte.
fn verify(wal: &Wal, acked: &HashMap<Lsn, (u64, u64)>, len: usize) -> Result<u64, DemoError> {
    let mut found = 0;
    for record in wal.iter_from(wal.first_lsn())? {
        let record = record?;
        if let Some(&(writer, seq)) = acked.get(&record.lsn) {
            if record.payload[..] != payload(writer, seq, len)[..] {
                return Err(DemoError::Verify(format!(
                    "record at {} differs from what was acknowledged",
                    record.lsn
                )));
            }
            found += 1;
        }
    }
    if found != acked.len() as u64 {
        return Err(DemoError::Verify(format!(
            "{} acknowledged records, {found} found",
            acked.len()
        )));
    }
    Ok(found)
}

/// Writes a torn record at the log's end, as a power loss during a write leaves it.
fn tear_tail(dir: &Path, end: Lsn) -> io::Result<u64> {
    let newest = fs::read_dir(dir)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.extension().is_some_and(|x| x == "wal") && !p.to_string_lossy().contains("spare-")
        })
        .max()
        .ok_or_else(|| io::Error::other("no segment"))?;
    let file = fs::OpenOptions::new().read(true).write(true).open(&newest)?;
    let mut header = [0u8; 64];
    file.read_exact_at(&mut header, 0)?;
    let start = u64::from_le_bytes(header[24..32].try_into().expect("8 bytes"));
    let offset = 64 + (end.0 - start);
    // A plausible header whose record never fully reached the disk.
    let mut torn = vec![0xA5u8; 300];
    torn[12] = 1;
    file.write_all_at(&torn, offset)?;
    file.sync_data()?;
    Ok(offset)
}

/// Acknowledged records: Lsn -> (writer, sequence number).
type Acked = HashMap<Lsn, (u64, u64)>;

/// What the group-commit phase produced.
struct AppendPhase {
    acked: Acked,
    /// Append latencies in microseconds, sorted.
    latencies_us: Vec<u32>,
    seconds: f64,
}

impl AppendPhase {
    fn percentile(&self, p: usize) -> u32 {
        self.latencies_us.get(self.latencies_us.len() * p / 100).copied().unwrap_or_default()
    }
}

/// Phase 2: `opts.writers` threads append `opts.records` records, showing progress.
fn append_phase(
    wal: &Wal,
    opts: &DemoOptions,
    out: &mut dyn Write,
) -> Result<AppendPhase, DemoError> {
    let next = AtomicU64::new(0);
    let done = AtomicU64::new(0);
    let start = Instant::now();
    let per_writer = std::thread::scope(|s| {
        let threads: Vec<_> = (0..opts.writers as u64)
            .map(|writer| {
                let (next, done) = (&next, &done);
                s.spawn(move || {
                    let mut acked = Vec::new();
                    let mut latencies = Vec::new();
                    while next.fetch_add(1, Ordering::Relaxed) < opts.records {
                        let seq = acked.len() as u64;
                        let t0 = Instant::now();
                        let lsn = wal.append(&payload(writer, seq, opts.record_bytes))?;
                        latencies.push(t0.elapsed().as_micros().min(u128::from(u32::MAX)) as u32);
                        acked.push((lsn, (writer, seq)));
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok::<_, regionkv_wal::Error>((acked, latencies))
                })
            })
            .collect();
        let mut shown = Counter::new(opts.progress, opts.records, "records acknowledged");
        while threads.iter().any(|t| !t.is_finished()) {
            let _ = shown.set(done.load(Ordering::Relaxed), out);
            std::thread::sleep(Duration::from_millis(200));
        }
        shown.finish();
        threads
            .into_iter()
            .map(|t| t.join().map_err(|_| DemoError::Verify("a writer panicked".into())))
            .collect::<Vec<_>>()
    });
    let mut phase = AppendPhase {
        acked: HashMap::new(),
        latencies_us: Vec::new(),
        seconds: start.elapsed().as_secs_f64(),
    };
    for result in per_writer {
        let (acked, latencies) = result??;
        phase.acked.extend(acked);
        phase.latencies_us.extend(latencies);
    }
    phase.latencies_us.sort_unstable();
    Ok(phase)
}

/// Phase 4: append more, stop without closing, tear the tail, recover and verify.
/// Returns the offset recovery cut at and the records verified.
fn torn_tail_phase(
    wal: Wal,
    wal_dir: &Path,
    mut acked: Acked,
    opts: &DemoOptions,
) -> Result<(u64, u64, String), DemoError> {
    for seq in 0..1000u64 {
        let lsn = wal.append(&payload(u64::MAX, seq, opts.record_bytes))?;
        acked.insert(lsn, (u64::MAX, seq));
    }
    let end = wal.end_lsn();
    drop(wal);
    let torn_at = tear_tail(wal_dir, end)?;
    let wal = Wal::open(Arc::new(RealFs), wal_dir, options())?;
    let Some(cut) = wal.recovery_report().truncation.clone() else {
        return Err(DemoError::Verify(format!(
            "the torn tail at offset {torn_at} was not detected"
        )));
    };
    let verified = verify(&wal, &acked, opts.record_bytes)?;
    wal.close()?;
    Ok((cut.offset, verified, cut.reason))
}

fn cluster_key(i: u64) -> String {
    format!("key-{i:08}")
}

fn cluster_value(i: u64) -> String {
    format!("value-{i}-{}", "x".repeat((i % 40) as usize))
}

/// `clients` threads write the keys of `range`; returns the acknowledged keys and
/// their latencies. A write whose deadline passes (a store just died) has an unknown
/// outcome and is simply not counted as acknowledged.
fn write_keys(
    cluster: &Cluster,
    clients: usize,
    range: std::ops::Range<u64>,
    done: &AtomicU64,
) -> Result<(Vec<u64>, Vec<u32>), DemoError> {
    let next = AtomicU64::new(range.start);
    let db = cluster.db();
    let per_client = std::thread::scope(|s| {
        let threads: Vec<_> = (0..clients)
            .map(|_| {
                let (db, next, end) = (db.clone(), &next, range.end);
                s.spawn(move || {
                    let mut acked = Vec::new();
                    let mut latencies = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= end {
                            break;
                        }
                        let t0 = Instant::now();
                        if db.put(cluster_key(i), cluster_value(i)).is_ok() {
                            latencies
                                .push(t0.elapsed().as_micros().min(u128::from(u32::MAX)) as u32);
                            acked.push(i);
                            done.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    (acked, latencies)
                })
            })
            .collect();
        threads
            .into_iter()
            .map(|t| t.join().map_err(|_| DemoError::Verify("a client panicked".into())))
            .collect::<Vec<_>>()
    });
    let mut acked = Vec::new();
    let mut latencies = Vec::new();
    for r in per_client {
        let (a, l) = r?;
        acked.extend(a);
        latencies.extend(l);
    }
    Ok((acked, latencies))
}

/// Checks every acknowledged key through the client (linearizable scans, a page at a
/// time), then on every replica once it has caught up.
fn verify_cluster(cluster: &Cluster, acked: &[u64]) -> Result<u64, DemoError> {
    let db = cluster.db();
    let mut seen = std::collections::HashMap::new();
    let mut start = cluster_key(0).into_bytes();
    loop {
        let page = db
            .scan(start.as_slice().., 1000)
            .map_err(|e| DemoError::Verify(format!("scan: {e}")))?;
        let Some((last, _)) = page.last() else { break };
        start = [last.as_ref(), b"\0"].concat();
        for (k, v) in page {
            seen.insert(k, v);
        }
    }
    for &i in acked {
        let got = seen.get(cluster_key(i).as_bytes());
        if got.map(AsRef::<[u8]>::as_ref) != Some(cluster_value(i).as_bytes()) {
            return Err(DemoError::Verify(format!("{} holds {got:?}", cluster_key(i))));
        }
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    for store in cluster.store_ids() {
        for &i in acked {
            loop {
                let local = cluster
                    .local_get(store, cluster_key(i).as_bytes())
                    .map_err(|e| DemoError::Verify(e.to_string()))?;
                if local.as_deref() == Some(cluster_value(i).as_bytes()) {
                    break;
                }
                if Instant::now() > deadline {
                    return Err(DemoError::Verify(format!(
                        "store {store} lacks {}",
                        cluster_key(i)
                    )));
                }
                std::thread::sleep(Duration::from_millis(10)); // a replica still catching up
            }
        }
    }
    Ok(acked.len() as u64)
}

/// The region table: each region's range, epoch, leader and replicas' progress.
fn print_regions(cluster: &Cluster, out: &mut dyn Write) -> io::Result<()> {
    writeln!(
        out,
        "   {:>7} {:>14} {:>14} {:>8} {:>7}  replicas (store: applied)",
        "region", "start", "end", "version", "leader"
    )?;
    let show = |k: &[u8]| {
        if k.is_empty() { "\"\"".to_owned() } else { String::from_utf8_lossy(k).into_owned() }
    };
    for info in cluster.regions() {
        let r = &info.region;
        let replicas: Vec<String> =
            info.replicas.iter().map(|(s, p)| format!("{}: {}", s.0, p.applied)).collect();
        writeln!(
            out,
            "   {:>7} {:>14} {:>14} {:>8} {:>7}  {}",
            r.id.0,
            show(&r.start),
            r.end.as_deref().map_or_else(|| "(end)".to_owned(), show),
            r.epoch.version,
            info.leader.map_or_else(|| "-".to_owned(), |l| l.0.to_string()),
            replicas.join(", ")
        )?;
    }
    Ok(())
}

fn build_cluster(dir: &Path) -> Result<Cluster, DemoError> {
    Cluster::builder()
        .dir(dir)
        .stores(3)
        .tick_interval(Duration::from_millis(20))
        .build()
        .map_err(|e| DemoError::Verify(e.to_string()))
}

/// Phases 3 and 4: the replicated cluster, a store killed and restarted mid-way, then
/// a full clean restart.
fn cluster_phase(opts: &DemoOptions, out: &mut dyn Write) -> Result<(), DemoError> {
    let dir = opts.dir.join("cluster");
    let cluster = build_cluster(&dir)?;
    let victim = StoreId(2);
    let bounds = [0, opts.keys / 3, 2 * opts.keys / 3, opts.keys];
    let done = AtomicU64::new(0);
    let mut acked = Vec::new();
    let mut latencies = Vec::new();
    // Four regions from the start: writes spread over them, and the client follows.
    let split_at: Vec<String> = bounds[1..3]
        .iter()
        .chain([opts.keys / 2].iter())
        .map(|&i| cluster_key(i))
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let parts =
        cluster.split_keys(&split_at).map_err(|e| DemoError::Verify(format!("split: {e}")))?;
    writeln!(
        out,
        "   split the key space into {} regions at {}",
        parts.len(),
        split_at.join(", ")
    )?;
    let start = Instant::now();
    let mut shown = Counter::new(opts.progress, opts.keys, "keys acknowledged");
    for (part, window) in bounds.windows(2).enumerate() {
        let at = done.load(Ordering::Relaxed);
        if part == 1 {
            cluster.kill_store(victim).map_err(|e| DemoError::Verify(e.to_string()))?;
            let line =
                format!("   store {victim} killed after {at} keys; writing on with two stores");
            shown.say(&line, out)?;
        } else if part == 2 {
            cluster.restart_store(victim).map_err(|e| DemoError::Verify(e.to_string()))?;
            let line = format!(
                "   store {victim} restarted after {at} keys; it recovers from its files and catches up"
            );
            shown.say(&line, out)?;
        }
        let (a, l) = std::thread::scope(|s| -> Result<_, DemoError> {
            let writer =
                s.spawn(|| write_keys(&cluster, opts.clients, window[0]..window[1], &done));
            while !writer.is_finished() {
                shown.set(done.load(Ordering::Relaxed), out)?;
                std::thread::sleep(Duration::from_millis(100));
            }
            writer.join().map_err(|_| DemoError::Verify("writer panicked".into()))?
        })?;
        acked.extend(a);
        latencies.extend(l);
    }
    shown.finish();
    let secs = start.elapsed().as_secs_f64();
    latencies.sort_unstable();
    let pct = |p: usize| latencies.get(latencies.len() * p / 100).copied().unwrap_or_default();
    let puts_per_sec = acked.len() as f64 / secs;
    writeln!(
        out,
        "   {:>8} / {} keys acknowledged in {secs:.2} s: {puts_per_sec:.0} puts/s, latency p50 {} us, p99 {} us",
        acked.len(),
        opts.keys,
        pct(50),
        pct(99)
    )?;
    // Merge the two right-most regions back (every replica must hold the source's log,
    // so the restarted store must have caught up: the merge waits for it).
    let regions = cluster.regions();
    if let [.., left, right] = regions.as_slice() {
        let merge_start = Instant::now();
        let merged = cluster
            .merge(left.region.id, right.region.id)
            .map_err(|e| DemoError::Verify(format!("merge: {e}")))?;
        writeln!(
            out,
            "   merged region {} into region {} in {:.0} ms: {} regions now",
            right.region.id.0,
            merged.id.0,
            merge_start.elapsed().as_secs_f64() * 1000.0,
            regions.len() - 1
        )?;
    }
    let verified = verify_cluster(&cluster, &acked)?;
    writeln!(
        out,
        "   every acknowledged key reads back and is on all three replicas ({verified} keys)"
    )?;
    print_regions(&cluster, out)?;

    writeln!(out, "\n4. stop the whole cluster cleanly, reopen it from its files, verify again")?;
    cluster.shutdown().map_err(|e| DemoError::Verify(e.to_string()))?;
    drop(cluster);
    let cluster = build_cluster(&dir)?;
    let verified_again = verify_cluster(&cluster, &acked)?;
    writeln!(out, "   {verified_again} keys intact after the restart")?;
    cluster.shutdown().map_err(|e| DemoError::Verify(e.to_string()))?;
    Ok(())
}

/// Runs the demo, printing progress and results to `out`.
pub fn run(opts: &DemoOptions, out: &mut dyn Write) -> Result<(), DemoError> {
    let wal_dir = opts.dir.join("wal");
    writeln!(out, "regionkv demo in {}", opts.dir.display())?;
    writeln!(out, "\n1. the disk: one thread overwriting 4 KiB blocks with fdatasync")?;
    let raw = disk::raw_fdatasync_ops_per_sec(&opts.dir, Duration::from_secs(1))?;
    writeln!(out, "   {raw:.0} fdatasync/s")?;

    let records = opts.records;
    writeln!(
        out,
        "\n2. the log: {} writers append {records} records of {} B with group commit",
        opts.writers, opts.record_bytes
    )?;
    let wal = Wal::open(Arc::new(RealFs), &wal_dir, options())?;
    let phase = append_phase(&wal, opts, out)?;
    let stats = wal.stats();
    let appends_per_sec = phase.acked.len() as f64 / phase.seconds;
    let records_per_fsync = stats.records as f64 / stats.fsyncs.max(1) as f64;
    writeln!(
        out,
        "   {:>9} / {records} acknowledged in {:.2} s",
        phase.acked.len(),
        phase.seconds
    )?;
    writeln!(
        out,
        "   {appends_per_sec:.0} appends/s = {:.1}x the raw fdatasync rate; {records_per_fsync:.1} records per fdatasync; latency p50 {} us, p99 {} us",
        appends_per_sec / raw,
        phase.percentile(50),
        phase.percentile(99),
    )?;
    wal.close()?;
    drop(wal);
    let strict = options().recovery(RecoveryMode::AbsoluteConsistency);
    let wal = Wal::open(Arc::new(RealFs), &wal_dir, strict)?;
    let verified = verify(&wal, &phase.acked, opts.record_bytes)?;
    let clean = wal.recovery_report().clean;
    writeln!(
        out,
        "   closed and reopened under AbsoluteConsistency: {verified} records intact (clean shutdown: {clean})"
    )?;
    let (cut_at, verified, reason) = torn_tail_phase(wal, &wal_dir, phase.acked.clone(), opts)?;
    writeln!(
        out,
        "   a torn record at the tail (offset {cut_at}) is cut ({reason}); {verified} acknowledged records intact"
    )?;

    writeln!(
        out,
        "\n3. the cluster: three stores replicate {} keys from {} clients; store 2 is killed and restarted mid-way",
        opts.keys, opts.clients
    )?;
    cluster_phase(opts, out)?;

    writeln!(
        out,
        "\n5. the health monitor: three nodes over TCP and a spare; node 3 is killed and stays down past the dead timeout"
    )?;
    health::health_phase(&opts.dir.join("health"), out)?;

    writeln!(
        out,
        "\n6. transactions: money moves between accounts in different regions while store 2 is killed and restarted"
    )?;
    bank::bank_phase(&opts.dir.join("bank"), out)?;

    writeln!(
        out,
        "\n7. duplication: a key range is seeded into a second cluster, then its log ships while a source store is killed and restarted"
    )?;
    dup::dup_phase(&opts.dir.join("dup"), out)?;

    writeln!(
        out,
        "\nverified: every acknowledged write survived a torn log tail, splits and a merge, a killed store, a full restart, a dead store's replacement, cross-region transfers, and a duplication to a second cluster"
    )?;
    Ok(())
}
