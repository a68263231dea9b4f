//! The leader's side of a group: frame, write, roll; then the sync, on a lane handle.
//!
//! Two groups may be in flight (`group_commit.rs`): one's fdatasync runs while the next
//! is written and synced. Each sync goes through its own *lane*, a separate open file
//! handle of the active segment, one lane per group in flight. Linux reports a
//! writeback error to each open file once (an error cursor per open file): had two
//! concurrent fdatasyncs shared one handle, the error for the earlier group's pages
//! could be reported to the later group's call alone, and the earlier group, whose call
//! returned `Ok`, would be published durable. With a handle per lane, every sync sees
//! every error since its lane's previous sync, and a lane never has two in flight.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use parking_lot::RwLock;

use crate::error::{Error, Result};
use crate::fs::{File, FileSystem, OpenMode};
use crate::group_commit::{Cause, GroupBuf, GroupWriter, MAX_IN_FLIGHT, PendingSync};
use crate::histogram::Histogram;
use crate::lsn::Lsn;
use crate::pool::Pool;
use crate::record::{self, HEADER_LEN, RecordKind};
use crate::segment::{SEGMENT_HEADER_LEN, Segment};

/// State shared by the writer, readers and purge.
#[derive(Debug)]
pub(crate) struct Shared {
    pub fs: Arc<dyn FileSystem>,
    pub dir: PathBuf,
    /// Live segments, oldest first; the last is the active one.
    pub segments: RwLock<VecDeque<Arc<Segment>>>,
    /// One past the last durable byte: readers see only records below it.
    pub durable_end: AtomicU64,
    pub pool: Arc<Pool>,
    pub io: IoCounters,
}

impl Shared {
    pub fn durable_end(&self) -> Lsn {
        Lsn(self.durable_end.load(Ordering::Acquire))
    }

    /// Moves the durable end up to `end`, the end of bytes an fsync just covered; a
    /// lower `end` (a later publication of bytes a whole-segment sync covered already)
    /// leaves it as it is: the durable end only moves forward (P7).
    fn publish_durable(&self, end: Lsn) {
        self.durable_end.fetch_max(end.0, Ordering::AcqRel);
    }
}

/// Counters kept by the writer.
#[derive(Debug, Default)]
pub(crate) struct IoCounters {
    pub fsyncs: AtomicU64,
    pub bytes_written: AtomicU64,
    pub segment_rolls: AtomicU64,
    /// Microseconds each segment fdatasync took (measured only, never acted on).
    pub fsync_latency: Histogram,
    /// Records in each group written (seals excluded).
    pub group_records: Histogram,
}

/// Writes groups into the active segment; owned by the group-commit kernel, so only the
/// current leader touches it.
#[derive(Debug)]
pub(crate) struct LogWriter {
    shared: Arc<Shared>,
    active: Arc<Segment>,
    /// The active segment's sync lanes: its file opened once more per group in flight.
    lanes: [Arc<dyn File>; MAX_IN_FLIGHT],
    /// File offset of the next record in the active segment.
    offset: u64,
    /// In a sparse active segment, the file offset below which its blocks have been
    /// written (records or zeros); `None` once the whole file has been.
    zeroed_to: Option<u64>,
    /// File offset below which this writer has written the active segment's pages
    /// whole (see [`PAGE`]).
    paged_to: u64,
}

/// The page cache's unit. A write that covers only part of a page not in the cache
/// makes the kernel read that block from disk first, inside the `write` call. A spare
/// zero-filled with direct writes is not in the cache, so a small record entering a
/// new page would pay that read (one in ten 418 B appends, measured: 55 µs instead of
/// 12 µs per `write`); the last run of a group is padded with zeros to the end of its
/// last page when it enters pages this writer has not written yet, and the records
/// after it then find that page in the cache. The zeros lie past every record, where a
/// spare holds zeros or stale records anyway.
const PAGE: u64 = 4096;

/// Bytes of zeros a writer puts ahead of its records in a sparse segment.
///
/// An fdatasync after a write into blocks the file system has not allocated yet also
/// commits the allocation (a journal commit on ext4), which costs about as much again
/// as the data's own flush; a write over blocks already written costs only the data.
/// A fresh log's first segment, and a segment made while no spare was ready, are
/// sparse (zero-filling 64 MiB before the first append would delay it), so the writer
/// zeroes them a chunk at a time ahead of its records: one dearer fdatasync per chunk
/// instead of every one.
const ZERO_AHEAD: u64 = 1 << 20;

impl LogWriter {
    /// `sparse`: the active segment's blocks past `offset` have never been written.
    pub fn new(
        shared: Arc<Shared>,
        active: Arc<Segment>,
        offset: u64,
        sparse: bool,
    ) -> Result<LogWriter> {
        shared.durable_end.store(active.lsn_at(offset).0, Ordering::Release);
        let lanes = open_lanes(&shared, &active)?;
        let zeroed_to = sparse.then_some(offset);
        Ok(LogWriter { shared, active, lanes, offset, zeroed_to, paged_to: offset })
    }

    /// In a sparse segment, writes zeros from where the written blocks end to
    /// [`ZERO_AHEAD`] past `end` (capped at the file's size) if `end` passes them. Only
    /// blocks at or past every record written so far are zeroed, so no record is
    /// overwritten; the zeros need no sync of their own (a crash leaves the same zeros,
    /// or a hole that reads as zeros).
    fn zero_ahead(&mut self, end: u64) -> Result<()> {
        let Some(from) = self.zeroed_to.filter(|&z| end > z) else { return Ok(()) };
        let to = (end + ZERO_AHEAD).min(self.active.capacity);
        let zeros = vec![0u8; usize::try_from(to - from).expect("ZERO_AHEAD fits in memory")];
        self.active
            .file
            .write_at(from, &zeros)
            .map_err(|e| Error::io("write", &self.active.path, e))?;
        self.shared.io.bytes_written.fetch_add(to - from, Ordering::Relaxed);
        self.zeroed_to = (to < self.active.capacity).then_some(to);
        Ok(())
    }

    /// Writes the records of `group`, rolling segments as needed; see
    /// [`GroupWriter::write_group`]. The records of the last segment written are not
    /// synced yet.
    fn write_records(&mut self, group: &mut GroupBuf, lsns: &mut Vec<Lsn>) -> Result<()> {
        let count = group.slots.len();
        // Every write ends with an all-zero header, the end marker: recovery then tells a
        // clean end (zeros) from a torn write (bad bytes), even in a recycled segment
        // full of stale records. The marker of a run that ends before the next record's
        // slot is that slot's still-blank header; after the last record, these zeros.
        let body = group.bytes.len();
        group.bytes.resize(body + HEADER_LEN, 0);
        let mut i = 0;
        while i < count {
            // Frame the longest run of records that fits in the active segment ...
            let run_start = group.slots[i].offset;
            let mut end = self.offset;
            let mut j = i;
            while j < count && end + group.encoded_len(j) as u64 <= self.active.capacity {
                let slot = group.slots[j];
                let lsn = self.active.lsn_at(end);
                let header = &mut group.bytes[slot.offset..];
                // Stamped with the published durable end: every byte below it is durable.
                let durable = self.shared.durable_end();
                record::write_header(header, lsn, slot.kind, slot.len, slot.pcrc, durable);
                lsns.push(lsn);
                end += group.encoded_len(j) as u64;
                j += 1;
            }
            // ... write it with its end marker in one call ...
            if j > i {
                let marker = (HEADER_LEN as u64).min(self.active.capacity - end);
                let mut run_len =
                    usize::try_from(end - self.offset + marker).expect("runs fit in memory");
                let run_end = self.offset + run_len as u64;
                if j == count && run_end > self.paged_to {
                    // The last run: the bytes after it in `group` are ours to zero.
                    let paged = run_end.next_multiple_of(PAGE).min(self.active.capacity);
                    run_len += usize::try_from(paged - run_end).expect("a page fits in memory");
                    let need = run_start + run_len;
                    if group.bytes.len() < need {
                        group.bytes.resize(need, 0);
                    }
                    self.paged_to = paged;
                }
                self.zero_ahead(self.offset + run_len as u64)?;
                let run = &group.bytes[run_start..run_start + run_len];
                self.active
                    .file
                    .write_at(self.offset, run)
                    .map_err(|e| Error::io("write", &self.active.path, e))?;
                self.shared.io.bytes_written.fetch_add(run.len() as u64, Ordering::Relaxed);
                self.offset = end;
            }
            // ... and continue in a fresh segment if records remain.
            if j < count {
                if self.offset == SEGMENT_HEADER_LEN {
                    // Append checks record sizes against the segment size; a record that
                    // does not fit an empty segment means those checks were bypassed.
                    return Err(Error::RecordTooLarge {
                        len: group.slots[j].len as usize,
                        max: usize::try_from(self.active.capacity - SEGMENT_HEADER_LEN)
                            .unwrap_or(usize::MAX),
                    });
                }
                self.roll()?;
            }
            i = j;
        }
        group.bytes.truncate(body);
        Ok(())
    }

    /// Makes everything written durable and publishes the new durable end. Called only
    /// with no group in flight (`GroupCommit::with_writer`, `close`).
    pub fn sync(&mut self) -> Result<()> {
        sync_file(&self.shared, &self.active, self.active.file.as_ref())?;
        self.shared.publish_durable(self.active.lsn_at(self.offset));
        Ok(())
    }

    /// Seals the active segment and makes a spare the next one.
    ///
    /// The finished segment is synced first, so the existence of a next segment proves
    /// it complete; [`Pool::install_segment`] then makes the next one appear whole.
    /// The durable end is not published here: a group in flight may still be syncing,
    /// and outcomes are published in group order by the kernel.
    fn roll(&mut self) -> Result<()> {
        sync_file(&self.shared, &self.active, self.active.file.as_ref())?;
        let end = self.active.lsn_at(self.offset);
        let id = self.active.id.next();
        let (next, sparse) = self.shared.pool.install_segment(id, end)?;
        let next = Arc::new(next);
        let lanes = open_lanes(&self.shared, &next)?;
        {
            let mut segments = self.shared.segments.write();
            let last = segments.back_mut().expect("the active segment is listed");
            *last = Arc::new(last.sealed(end));
            segments.push_back(next.clone());
        }
        tracing::debug!(segment = %id, start = %end, "rolled to a new WAL segment");
        self.shared.io.segment_rolls.fetch_add(1, Ordering::Relaxed);
        self.active = next;
        self.lanes = lanes;
        self.offset = SEGMENT_HEADER_LEN;
        self.zeroed_to = sparse.then_some(SEGMENT_HEADER_LEN);
        self.paged_to = SEGMENT_HEADER_LEN;
        Ok(())
    }

    /// Writes the seal record of a clean close, and syncs.
    pub fn seal(&mut self) -> Result<()> {
        let mut group = GroupBuf::default();
        group.push(RecordKind::Seal, &[], record::payload_crc(&[]));
        self.write_records(&mut group, &mut Vec::with_capacity(1))?;
        self.sync()
    }
}

/// Opens the sync lanes of `segment`.
fn open_lanes(shared: &Shared, segment: &Segment) -> Result<[Arc<dyn File>; MAX_IN_FLIGHT]> {
    let mut lanes = Vec::with_capacity(MAX_IN_FLIGHT);
    for _ in 0..MAX_IN_FLIGHT {
        let file = shared
            .fs
            .open(&segment.path, OpenMode::Existing)
            .map_err(|e| Error::io("open", &segment.path, e))?;
        lanes.push(file);
    }
    Ok(lanes.try_into().expect("MAX_IN_FLIGHT lanes"))
}

/// One fdatasync of `file`, a handle of `segment`, counted and timed.
fn sync_file(shared: &Shared, segment: &Segment, file: &dyn File) -> Result<()> {
    let started = Instant::now();
    file.sync_data().map_err(|e| Error::io("fdatasync", &segment.path, e))?;
    shared.io.fsync_latency.record_duration(started.elapsed());
    shared.io.fsyncs.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

fn poisoned(e: &Error) -> Cause {
    tracing::error!(error = %e, "WAL write failed; the log is now poisoned and must be reopened");
    Arc::from(e.to_string())
}

/// A written group's sync: its lane of the segment it ended in, and its end.
#[derive(Debug)]
pub(crate) struct PendingGroup {
    shared: Arc<Shared>,
    segment: Arc<Segment>,
    lane: Arc<dyn File>,
    end: Lsn,
}

impl PendingSync for PendingGroup {
    fn sync(&self) -> Result<(), Cause> {
        // Every earlier segment was synced whole before its successor was installed.
        sync_file(&self.shared, &self.segment, self.lane.as_ref()).map_err(|e| poisoned(&e))
    }

    fn publish(self) {
        self.shared.publish_durable(self.end);
    }
}

impl GroupWriter for LogWriter {
    type Pending = PendingGroup;

    fn write_group(
        &mut self,
        group: &mut GroupBuf,
        lsns: &mut Vec<Lsn>,
        lane: usize,
    ) -> Result<PendingGroup, Cause> {
        let _span = tracing::trace_span!("wal.write_group", records = group.slots.len()).entered();
        self.shared.io.group_records.record(group.slots.len() as u64);
        self.write_records(group, lsns).map_err(|e| poisoned(&e))?;
        Ok(PendingGroup {
            shared: self.shared.clone(),
            segment: self.active.clone(),
            lane: self.lanes[lane].clone(),
            end: self.active.lsn_at(self.offset),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::io;

    use super::*;
    use crate::fs::{SimFs, SimOpKind};
    use crate::lsn::SegmentId;

    fn writer(fs: &SimFs) -> LogWriter {
        let fs: Arc<dyn FileSystem> = Arc::new(fs.clone());
        let dir = PathBuf::from("/wal");
        fs.create_dir_all(&dir).unwrap();
        let pool = Arc::new(Pool::new(fs.clone(), &dir, 64 << 10, 0, Vec::new()));
        let (first, sparse) = pool.install_segment(SegmentId(1), Lsn::ZERO).unwrap();
        let first = Arc::new(first);
        let shared = Arc::new(Shared {
            fs,
            dir,
            segments: RwLock::new(VecDeque::from([first.clone()])),
            durable_end: AtomicU64::new(0),
            pool,
            io: IoCounters::default(),
        });
        LogWriter::new(shared, first, SEGMENT_HEADER_LEN, sparse).unwrap()
    }

    fn group(payload: &[u8]) -> GroupBuf {
        let mut group = GroupBuf::default();
        group.push(RecordKind::Data, payload, record::payload_crc(payload));
        group
    }

    #[test]
    fn a_writeback_error_caught_by_the_later_groups_sync_fails_the_earlier_one_too() {
        let fs = SimFs::new();
        let mut writer = writer(&fs);
        let mut lsns = Vec::new();
        let first = writer.write_group(&mut group(b"first"), &mut lsns, 0).unwrap();
        let second = writer.write_group(&mut group(b"second"), &mut lsns, 1).unwrap();
        // The second group's fdatasync runs first, flushes the first group's pages too,
        // and fails: the kernel drops them all.
        fs.set_fault_hook(Box::new(|op| {
            (op.kind == SimOpKind::SyncData).then(|| io::Error::from_raw_os_error(5))
        }));
        assert!(second.sync().is_err());
        fs.clear_fault_hook();
        // The first group's own fdatasync, on its own lane, must not report success
        // for pages that never reached the disk.
        assert!(first.sync().is_err(), "a lost group would be published durable");
    }
}
