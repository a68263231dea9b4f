//! [`Wal`]: the log as its users see it.

use std::collections::VecDeque;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use parking_lot::{Mutex, RwLock};

use crate::error::{Error, Result};
use crate::fs::FileSystem;
use crate::group_commit::{GroupCommit, Limits};
use crate::histogram::HistogramSnapshot;
use crate::lsn::{Lsn, SegmentId};
use crate::pool::Pool;
use crate::reader::{Record, WalIter};
use crate::record::{self, HEADER_LEN, RecordKind};
use crate::recovery::{self, RecoveryMode, RecoveryReport};
use crate::segment::{SEGMENT_HEADER_LEN, Segment};
use crate::writer::{IoCounters, LogWriter, Shared};

/// When appends are made durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyncPolicy {
    /// Group commit (the default): appends that arrive while a group is being written
    /// share the next write and fdatasync. A leader may linger `max_delay_us` for more
    /// appenders first (`PostgreSQL`'s `commit_delay`): fewer fsyncs, more latency.
    Batched {
        /// Microseconds a leader waits before writing; 0 writes at once.
        max_delay_us: u64,
    },
    /// Every append is written and fdatasynced on its own. Durability is the same; it is
    /// the baseline that group commit is measured against.
    EveryWrite,
}

impl Default for SyncPolicy {
    fn default() -> Self {
        SyncPolicy::Batched { max_delay_us: 0 }
    }
}

/// Whether spare segments are prepared ahead of need on a background thread.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SparePreparation {
    /// A `wal-spares` thread keeps a zero-filled spare ready when no recycled one is
    /// (the default).
    #[default]
    Background,
    /// Spares are made by the writer when it needs one: no thread, so the sequence of
    /// file-system calls is deterministic (simulation).
    OnDemand,
}

/// How to open a [`Wal`].
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct WalOptions {
    /// Size of every segment file, header included. Default 64 MiB.
    pub segment_bytes: u64,
    /// Bytes queued for the next group before appenders wait. Default 4 MiB.
    pub max_group_bytes: usize,
    /// When appends are synced. Default: group commit.
    pub sync: SyncPolicy,
    /// How recovery treats a damaged end of log. Default: [`RecoveryMode::TolerateTornTail`].
    pub recovery: RecoveryMode,
    /// A position the caller knows to be durable (persisted elsewhere); damage below it
    /// is always corruption. Default [`Lsn::ZERO`].
    pub durable_floor: Lsn,
    /// Most purged segment files kept for reuse. Default 2. With
    /// [`SparePreparation::Background`] one zero-filled spare is also kept ready
    /// whenever none is.
    pub spare_segments: usize,
    /// How spares are prepared. Default: in the background.
    pub spare_preparation: SparePreparation,
}

impl Default for WalOptions {
    fn default() -> Self {
        WalOptions {
            segment_bytes: 64 << 20,
            max_group_bytes: 4 << 20,
            sync: SyncPolicy::default(),
            recovery: RecoveryMode::default(),
            durable_floor: Lsn::ZERO,
            spare_segments: 2,
            spare_preparation: SparePreparation::default(),
        }
    }
}

impl WalOptions {
    /// Sets [`WalOptions::segment_bytes`].
    #[must_use]
    pub fn segment_bytes(mut self, bytes: u64) -> Self {
        self.segment_bytes = bytes;
        self
    }

    /// Sets [`WalOptions::max_group_bytes`].
    #[must_use]
    pub fn max_group_bytes(mut self, bytes: usize) -> Self {
        self.max_group_bytes = bytes;
        self
    }

    /// Sets [`WalOptions::sync`].
    #[must_use]
    pub fn sync(mut self, sync: SyncPolicy) -> Self {
        self.sync = sync;
        self
    }

    /// Sets [`WalOptions::recovery`].
    #[must_use]
    pub fn recovery(mut self, mode: RecoveryMode) -> Self {
        self.recovery = mode;
        self
    }

    /// Sets [`WalOptions::durable_floor`].
    #[must_use]
    pub fn durable_floor(mut self, lsn: Lsn) -> Self {
        self.durable_floor = lsn;
        self
    }

    /// Sets [`WalOptions::spare_segments`].
    #[must_use]
    pub fn spare_segments(mut self, count: usize) -> Self {
        self.spare_segments = count;
        self
    }

    /// Sets [`WalOptions::spare_preparation`].
    #[must_use]
    pub fn spare_preparation(mut self, preparation: SparePreparation) -> Self {
        self.spare_preparation = preparation;
        self
    }

    /// The largest payload one record can carry with these options.
    pub fn max_payload(&self) -> usize {
        let room = self.segment_bytes.saturating_sub(SEGMENT_HEADER_LEN + HEADER_LEN as u64);
        usize::try_from(room.min(u64::from(u32::MAX))).unwrap_or(usize::MAX)
    }

    fn validate(&self) -> Result<()> {
        const MIN_SEGMENT: u64 = 4096;
        if self.segment_bytes < MIN_SEGMENT {
            return Err(Error::InvalidOptions(format!(
                "segment_bytes is {}, the minimum is {MIN_SEGMENT}",
                self.segment_bytes
            )));
        }
        if self.max_group_bytes == 0 {
            return Err(Error::InvalidOptions("max_group_bytes must be at least 1".into()));
        }
        Ok(())
    }
}

/// Counters of a [`Wal`] since it was opened.
///
/// The average group size is `records / groups`; [`WalStats::group_records`] has its
/// distribution.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct WalStats {
    /// Records appended (groups' members), seals excluded.
    pub records: u64,
    /// Groups written.
    pub groups: u64,
    /// fdatasync calls on segments.
    pub fsyncs: u64,
    /// Bytes written to segments, framing included.
    pub bytes_written: u64,
    /// Times the log moved to a new segment.
    pub segment_rolls: u64,
    /// The most bytes ever queued in one open group: the backpressure bound at work.
    pub queued_bytes_high_water: usize,
    /// Spare segment files ready now.
    pub spare_segments: usize,
    /// How long each fdatasync of a segment took, in microseconds (one sample per
    /// [`WalStats::fsyncs`]).
    pub fsync_latency_us: HistogramSnapshot,
    /// Records per group written (one sample per group; seals excluded).
    pub group_records: HistogramSnapshot,
}

/// A durable, group-committed, checksummed log shared by all regions of a store.
///
/// Cloning is cheap; clones share the log. Any number of threads may append at once.
///
/// ```
/// use std::sync::Arc;
/// use regionkv_wal::{RealFs, Wal, WalOptions};
///
/// let dir = tempfile::tempdir()?;
/// let options = WalOptions::default().segment_bytes(1 << 20);
/// let wal = Wal::open(Arc::new(RealFs), dir.path(), options.clone())?;
/// let lsn = wal.append(b"hello")?; // returns once the record is fsynced
/// wal.close()?;
///
/// let wal = Wal::open(Arc::new(RealFs), dir.path(), options)?;
/// assert_eq!(&wal.read(lsn)?.payload[..], b"hello");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug)]
pub struct Wal {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    shared: Arc<Shared>,
    kernel: GroupCommit<LogWriter>,
    options: WalOptions,
    report: RecoveryReport,
    spares_thread: Mutex<Option<JoinHandle<()>>>,
    purges: AtomicU64,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.shared.pool.stop();
        if let Some(thread) = self.spares_thread.lock().take() {
            let _ = thread.join();
        }
    }
}

impl Wal {
    /// Opens the log in `dir`, creating it if the directory holds none, and recovers it
    /// as `options.recovery` says. See [`RecoveryMode`].
    pub fn open(
        fs: Arc<dyn FileSystem>,
        dir: impl AsRef<Path>,
        options: WalOptions,
    ) -> Result<Wal> {
        options.validate()?;
        let dir = dir.as_ref().to_path_buf();
        fs.create_dir_all_durable(&dir).map_err(|e| Error::io("create directory", &dir, e))?;
        let recovered = recovery::recover(
            fs.as_ref(),
            &dir,
            options.segment_bytes,
            options.recovery,
            options.durable_floor,
        )?;
        let mut pool = Arc::new(Pool::new(
            fs.clone(),
            &dir,
            options.segment_bytes,
            options.spare_segments,
            recovered.spares,
        ));
        let spares_thread = match options.spare_preparation {
            SparePreparation::Background => {
                Some(pool.spawn().map_err(|e| Error::io("spawn wal-spares thread", &dir, e))?)
            }
            SparePreparation::OnDemand => None,
        };
        let mut report = recovered.report;
        // A recovered tail segment counts as written through (a sparse one only costs
        // dearer fdatasyncs until the next segment).
        let (segments, tail_offset, sparse) = if recovered.segments.is_empty() {
            let (first, sparse) = pool.install_segment(SegmentId(1), Lsn::ZERO)?;
            report.segments = 1;
            (VecDeque::from([Arc::new(first)]), SEGMENT_HEADER_LEN, sparse)
        } else {
            (recovered.segments, recovered.tail_offset, false)
        };
        let active = segments.back().expect("at least one segment").clone();
        let shared = Arc::new(Shared {
            fs,
            dir,
            segments: RwLock::new(segments),
            durable_end: AtomicU64::new(0),
            pool: pool.clone(),
            io: IoCounters::default(),
        });
        let writer = LogWriter::new(shared.clone(), active, tail_offset, sparse)?;
        let limits = match options.sync {
            SyncPolicy::Batched { max_delay_us } => Limits {
                max_group_bytes: options.max_group_bytes,
                max_group_records: usize::MAX,
                delay: (max_delay_us > 0).then(|| Duration::from_micros(max_delay_us)),
            },
            SyncPolicy::EveryWrite => Limits {
                max_group_bytes: options.max_group_bytes,
                max_group_records: 1,
                delay: None,
            },
        };
        tracing::info!(
            dir = %shared.dir.display(),
            segments = report.segments,
            first = %report.first_lsn,
            end = %report.end_lsn,
            clean = report.clean,
            "opened WAL"
        );
        Ok(Wal {
            inner: Arc::new(Inner {
                shared,
                kernel: GroupCommit::new(writer, limits),
                options,
                report,
                spares_thread: Mutex::new(spares_thread),
                purges: AtomicU64::new(0),
            }),
        })
    }

    /// Appends one record and returns its Lsn once it is durable.
    ///
    /// On [`Error::Indeterminate`] the record may or may not be in the log after a
    /// reopen; on any other error it was not written.
    pub fn append(&self, payload: &[u8]) -> Result<Lsn> {
        let _span = tracing::trace_span!("wal.append", bytes = payload.len()).entered();
        self.check_len(payload)?;
        let mut lsn = Vec::with_capacity(1);
        self.inner.kernel.commit(
            RecordKind::Data,
            &[(payload, record::payload_crc(payload))],
            &mut lsn,
        )?;
        Ok(lsn[0])
    }

    fn check_len(&self, payload: &[u8]) -> Result<()> {
        let max = self.inner.options.max_payload();
        if payload.len() > max {
            return Err(Error::RecordTooLarge { len: payload.len(), max });
        }
        Ok(())
    }

    /// Records appended and still waiting for the next group write: how deep the
    /// group-commit queue is right now (zero when no appender waits).
    pub fn queued_records(&self) -> usize {
        self.inner.kernel.queued_records()
    }

    /// Reads the record at `lsn`, verifying its checksums.
    pub fn read(&self, lsn: Lsn) -> Result<Record> {
        self.inner.shared.read(lsn)
    }

    /// Iterates over the records from `lsn` (a record's Lsn, or [`Wal::first_lsn`]) to
    /// the durable end as of this call.
    pub fn iter_from(&self, lsn: Lsn) -> Result<WalIter> {
        self.inner.shared.iter_from(lsn)
    }

    /// The first position still in the log.
    pub fn first_lsn(&self) -> Lsn {
        self.inner.shared.segments.read().front().map_or(Lsn::ZERO, |s| s.start)
    }

    /// One past the last durable record: the Lsn the next record will get unless a
    /// segment rolls first.
    pub fn end_lsn(&self) -> Lsn {
        self.inner.shared.durable_end()
    }

    /// Removes every segment that lies wholly below `lsn` (never the active one),
    /// recycling files into the spare pool. Returns how many segments went.
    ///
    /// Segments go oldest first, each removal made durable before the next, so a crash
    /// mid-purge leaves the live segments consecutive.
    pub fn purge_below(&self, lsn: Lsn) -> Result<usize> {
        let shared = &self.inner.shared;
        let mut victims: VecDeque<Arc<Segment>> = {
            let mut segments = shared.segments.write();
            let mut victims = VecDeque::new();
            while segments.len() > 1 && segments[0].end.is_some_and(|end| end <= lsn) {
                victims.push_back(segments.pop_front().expect("checked non-empty"));
            }
            victims
        };
        let mut purged = 0;
        while let Some(segment) = victims.pop_front() {
            let result = if segment.in_use() {
                // A reader still holds it: unlink (its open handle keeps the old bytes)
                // rather than recycle, which would overwrite them.
                shared.fs.remove_file(&segment.path)
            } else {
                shared.pool.recycle(&segment.path)
            };
            let result = result.and_then(|()| shared.fs.sync_dir(&shared.dir));
            if let Err(e) = result {
                // Put the survivors back so the live list matches the files.
                let mut segments = shared.segments.write();
                segments.push_front(segment.clone());
                while let Some(v) = victims.pop_back() {
                    segments.push_front(v);
                }
                return Err(Error::io("purge segment", &segment.path, e));
            }
            purged += 1;
        }
        self.inner.purges.fetch_add(purged as u64, Ordering::Relaxed);
        Ok(purged)
    }

    /// Waits for every group in flight, then fsyncs the active segment.
    pub fn sync(&self) -> Result<()> {
        let result = self.inner.kernel.with_writer(LogWriter::sync)?;
        result.inspect_err(|e| self.inner.kernel.fail(Arc::from(e.to_string())))
    }

    /// Closes the log cleanly: waits for queued appends, writes the seal that lets the
    /// next open run under [`RecoveryMode::AbsoluteConsistency`], and syncs. Later
    /// appends get [`Error::Closed`].
    pub fn close(&self) -> Result<()> {
        let result = self.inner.kernel.close(LogWriter::seal)?;
        result.inspect_err(|e| self.inner.kernel.fail(Arc::from(e.to_string())))?;
        self.inner.shared.pool.stop();
        tracing::info!(dir = %self.inner.shared.dir.display(), end = %self.end_lsn(), "closed WAL");
        Ok(())
    }

    /// The options the log was opened with.
    pub fn options(&self) -> &WalOptions {
        &self.inner.options
    }

    /// What recovery found when this log was opened.
    pub fn recovery_report(&self) -> &RecoveryReport {
        &self.inner.report
    }

    /// The failure that poisoned the log, if any.
    pub fn failure(&self) -> Option<Arc<str>> {
        self.inner.kernel.failure()
    }

    /// The directory the log lives in.
    pub fn dir(&self) -> &Path {
        &self.inner.shared.dir
    }

    /// Counters since open.
    pub fn stats(&self) -> WalStats {
        let kernel = self.inner.kernel.stats();
        let io = &self.inner.shared.io;
        WalStats {
            records: kernel.records,
            groups: kernel.groups,
            fsyncs: io.fsyncs.load(Ordering::Relaxed),
            bytes_written: io.bytes_written.load(Ordering::Relaxed),
            segment_rolls: io.segment_rolls.load(Ordering::Relaxed),
            queued_bytes_high_water: kernel.queued_bytes_high_water,
            spare_segments: self.inner.shared.pool.spare_count(),
            fsync_latency_us: io.fsync_latency.snapshot(),
            group_records: io.group_records.snapshot(),
        }
    }
}
