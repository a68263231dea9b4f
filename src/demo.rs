//! `regionkv demo`: the main job, on a temporary directory, verified end to end.
//!
//! Today it exercises the durable log, the layer every write goes through:
//! 1. measure the disk's raw fdatasync rate;
//! 2. many writer threads append with group commit; each append returns only after the
//!    fsync that covers it;
//! 3. close cleanly, reopen under `AbsoluteConsistency`, and verify every acknowledged
//!    record, byte for byte, at the position its append returned;
//! 4. append more, stop without closing, tear the tail as a power loss mid-write would,
//!    reopen under `TolerateTornTail`, and verify again: the torn record is cut, nothing
//!    acknowledged is lost.
//!
//! It grows with every layer that lands (engine, Raft, regions).

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

use regionkv_wal::{Lsn, RealFs, RecoveryMode, Wal, WalOptions};

use crate::bench::disk;

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
}

impl DemoOptions {
    /// The defaults of `regionkv demo` in `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        DemoOptions { dir: dir.into(), writers: 64, records: 200_000, record_bytes: 128 }
    }
}

/// What the demo measured and verified.
#[derive(Clone, Debug)]
pub struct DemoReport {
    /// The disk's raw fdatasync rate in this run.
    pub raw_fdatasync_ops_per_sec: f64,
    /// Group-commit appends per second.
    pub appends_per_sec: f64,
    /// Median and 99th-percentile append latency.
    pub p50_us: u32,
    /// 99th-percentile append latency.
    pub p99_us: u32,
    /// Mean records per fdatasync.
    pub records_per_fsync: f64,
    /// Acknowledged records found intact after the clean reopen and after the torn tail.
    pub verified: u64,
    /// Bytes recovery cut at the torn tail (0 if none).
    pub torn_tail_cut_at: Option<u64>,
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
        while threads.iter().any(|t| !t.is_finished()) {
            let _ = write!(
                out,
                "\r   {:>9} / {} acknowledged",
                done.load(Ordering::Relaxed),
                opts.records
            );
            let _ = out.flush();
            std::thread::sleep(Duration::from_millis(200));
        }
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

/// Runs the demo, printing progress and results to `out`.
pub fn run(opts: &DemoOptions, out: &mut dyn Write) -> Result<DemoReport, DemoError> {
    let wal_dir = opts.dir.join("wal");
    writeln!(out, "regionkv demo in {}", opts.dir.display())?;
    writeln!(out, "\n1. the disk: one thread overwriting 4 KiB blocks with fdatasync")?;
    let raw = disk::raw_fdatasync_ops_per_sec(&opts.dir, Duration::from_secs(1))?;
    writeln!(out, "   {raw:.0} fdatasync/s")?;

    writeln!(
        out,
        "\n2. {} writers append {} records of {} B with group commit",
        opts.writers, opts.records, opts.record_bytes
    )?;
    let wal = Wal::open(Arc::new(RealFs), &wal_dir, options())?;
    let phase = append_phase(&wal, opts, out)?;
    let stats = wal.stats();
    let appends_per_sec = phase.acked.len() as f64 / phase.seconds;
    let records_per_fsync = stats.records as f64 / stats.fsyncs.max(1) as f64;
    writeln!(
        out,
        "\r   {:>9} / {} acknowledged in {:.2} s",
        phase.acked.len(),
        opts.records,
        phase.seconds
    )?;
    writeln!(
        out,
        "   {appends_per_sec:.0} appends/s = {:.1}x the raw fdatasync rate; {records_per_fsync:.1} records per fdatasync; latency p50 {} us, p99 {} us; {} segment rolls",
        appends_per_sec / raw,
        phase.percentile(50),
        phase.percentile(99),
        stats.segment_rolls,
    )?;

    writeln!(
        out,
        "\n3. clean close, reopen under AbsoluteConsistency, verify every acknowledged record"
    )?;
    wal.close()?;
    drop(wal);
    let wal = Wal::open(
        Arc::new(RealFs),
        &wal_dir,
        options().recovery(RecoveryMode::AbsoluteConsistency),
    )?;
    let verified = verify(&wal, &phase.acked, opts.record_bytes)?;
    writeln!(
        out,
        "   {verified} records intact (clean shutdown: {})",
        wal.recovery_report().clean
    )?;

    writeln!(out, "\n4. append more, stop without closing, tear the tail, recover")?;
    let (cut_at, verified, reason) = torn_tail_phase(wal, &wal_dir, phase.acked.clone(), opts)?;
    writeln!(
        out,
        "   torn record at offset {cut_at} cut ({reason}); {verified} acknowledged records intact"
    )?;

    writeln!(out, "\nverified: every acknowledged write survived a clean restart and a torn tail")?;
    Ok(DemoReport {
        raw_fdatasync_ops_per_sec: raw,
        appends_per_sec,
        p50_us: phase.percentile(50),
        p99_us: phase.percentile(99),
        records_per_fsync,
        verified,
        torn_tail_cut_at: Some(cut_at),
    })
}
