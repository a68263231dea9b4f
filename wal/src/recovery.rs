//! Opening a log: find the segments, verify them, and decide where the log ends.
//!
//! Sealed segments (every one but the last) were synced before their successor was
//! created, so they must verify completely and end exactly where the next segment
//! starts; any damage in them is [`Error::Corruption`] in every mode.
//!
//! The last segment ends at the first position that does not hold a valid record. Every
//! write leaves an all-zero header (the end marker) after its last record, so zeros
//! there mean a clean end, while bad bytes mean a torn write or damage, even in a
//! recycled segment full of stale records (those fail their Lsn-salted checksums). What
//! happens at a bad stop depends on what is known to be durable, and on the mode:
//!
//! 1. Every byte after the stop is searched for records that are valid at their
//!    position. Each one carries the durable end at the time it was written, so a later
//!    record whose `durable` passes the stop proves the stop lies in acknowledged data:
//!    that is corruption, never a torn tail. The caller's `durable_floor` (a position it
//!    persisted elsewhere, such as a checkpoint or a Raft commit) counts the same way.
//! 2. Otherwise the stop is beyond every durably referenced position, and:
//!    - [`RecoveryMode::AbsoluteConsistency`]: the log must end with a seal (a clean
//!      close) and nothing valid may follow; anything else is an error.
//!    - [`RecoveryMode::TolerateTornTail`]: a damaged or missing record followed by
//!      nothing valid, or by one contiguous run of valid records, is a torn tail and
//!      is cut (the run dropped with it, see *Holes* below); damage followed by two or
//!      more runs (a second hole) is corruption.
//!    - [`RecoveryMode::PointInTime`]: the log is cut at the stop, dropping any valid
//!      records after it.
//!
//! # Holes: two groups in flight
//!
//! The writer has up to two groups in flight (`group_commit.rs`): group N+1 is written,
//! and may be synced, while N's fdatasync runs. If N's fdatasync fails, the kernel
//! drops N's dirty pages, yet N+1's may reach the disk, and after a power loss the
//! segment holds a hole (zeros, or a recycled file's stale bytes) where N was, then
//! N+1's valid records. None of them was acknowledged: N failed, and outcomes are
//! published in group order, so N+1 got [`Error::Indeterminate`] too. Such a run is
//! recognised by the two facts below, and `TolerateTornTail` cuts it with the hole:
//!
//! - (a) no record after the stop has a `durable` stamp past the stop (rule 1), and
//! - (b) the records after the stop form one run, back to back, with no second hole
//!   (only N's lost pages precede N+1's records; the run may start with records of N
//!   that survived in later pages). Two runs are refused, and `PointInTime` cuts them.
//!
//! No bound on the hole's length is needed beyond (a): group N+2 is written only after
//! N published (at most two in flight), so every record of N+2 and later is stamped
//! past N's end. With (a), the stop and everything after it therefore lie in the stop's
//! group and the one after it: at most two groups' bytes, whatever `max_group_bytes`
//! was when they were written (the option may change between opens, so it is not
//! checked against).
//!
//! Can this cut drop an acknowledged record? Only if the stop lies in an acknowledged
//! group G whose damage came after its fdatasync (bit rot, a misdirected write) and the
//! only records after it belong to G itself or to G+1 written while G synced. That is
//! the ambiguity the log has always had for its final acknowledged group with nothing
//! after it (rot there is cut as a torn tail too): no later record vouches for G, and
//! the bytes cannot tell rot from a lost write. Two in flight widen "nothing after it"
//! to "only the group written during its sync", nothing more. Whatever the caller made
//! durable elsewhere is still protected by `durable_floor`: a floor past the stop is
//! corruption in every mode (rule 1), so a store passing its persisted commit index as
//! the floor never loses a committed entry to this cut.
//!
//! A cut zeroes the bytes from the stop to the end of the last valid record found after
//! it, so a later recovery cannot resurrect them, then syncs the file and directory.
//! Finally the part of the tail not proven durable by a record's `durable` stamp is
//! written again and synced: after a failed fsync the kernel may hold pages it will
//! never write, and rewriting them is the only way to make what recovery read true.

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::fs::{File, FileSystem, OpenMode};
use crate::lsn::{Lsn, SegmentId};
use crate::record::{self, Decoded, HEADER_LEN, RecordKind};
use crate::segment::{FileName, SEGMENT_HEADER_LEN, Segment, SegmentHeader, parse_file_name};

/// How recovery treats damage at the end of the log.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RecoveryMode {
    /// For a log that was closed cleanly: it must end with the seal of that close, and
    /// any bad record is an error.
    AbsoluteConsistency,
    /// After a crash (the default): a torn record at the very end of the last segment,
    /// beyond every durably referenced position, is cut; other damage is an error.
    #[default]
    TolerateTornTail,
    /// For replicated stores that can catch up from a leader: cut at the first bad
    /// record of the last segment, even if valid records follow, provided it is beyond
    /// every durably referenced position. What was cut must be fetched from a peer
    /// before this replica votes.
    PointInTime,
}

/// Where recovery cut the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Truncation {
    /// The segment that was cut.
    pub segment: SegmentId,
    /// File offset of the cut.
    pub offset: u64,
    /// The log's end after the cut.
    pub lsn: Lsn,
    /// Why the bytes there were not a record.
    pub reason: String,
    /// Valid records found after the cut and dropped with it: in `PointInTime`, any; in
    /// `TolerateTornTail`, one run of unacknowledged records (see the module docs).
    pub dropped_records: usize,
}

/// What [`crate::Wal::open`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecoveryReport {
    /// The mode recovery ran in.
    pub mode: RecoveryMode,
    /// True if the log ended with the seal of a clean close.
    pub clean: bool,
    /// Set if recovery cut the log.
    pub truncation: Option<Truncation>,
    /// Live segments after recovery.
    pub segments: usize,
    /// The first readable position.
    pub first_lsn: Lsn,
    /// One past the last record.
    pub end_lsn: Lsn,
}

/// The log as found on disk, ready to be written.
pub(crate) struct Recovered {
    pub segments: VecDeque<Arc<Segment>>,
    /// File offset where the next record goes in the last segment.
    pub tail_offset: u64,
    pub spares: Vec<(u64, PathBuf)>,
    pub report: RecoveryReport,
}

/// Files found in the log directory.
struct Listing {
    segments: BTreeMap<SegmentId, PathBuf>,
    spares: Vec<(u64, PathBuf)>,
}

fn list(fs: &dyn FileSystem, dir: &Path, segment_bytes: u64) -> Result<Listing> {
    let names = fs.list(dir).map_err(|e| Error::io("list", dir, e))?;
    let mut listing = Listing { segments: BTreeMap::new(), spares: Vec::new() };
    let mut removed = false;
    for name in names {
        let path = dir.join(&name);
        match parse_file_name(&name) {
            FileName::Segment(id) => {
                listing.segments.insert(id, path);
            }
            FileName::Spare(n) => {
                let file =
                    fs.open(&path, OpenMode::Existing).map_err(|e| Error::io("open", &path, e))?;
                if file.len().map_err(|e| Error::io("stat", &path, e))? == segment_bytes {
                    listing.spares.push((n, path));
                } else {
                    // A spare of another segment size (the option changed): not usable.
                    fs.remove_file(&path).map_err(|e| Error::io("remove", &path, e))?;
                    removed = true;
                }
            }
            FileName::Temp => {
                fs.remove_file(&path).map_err(|e| Error::io("remove", &path, e))?;
                removed = true;
            }
            FileName::Other => {
                tracing::debug!(file = %path.display(), "ignoring unknown file in the WAL directory");
            }
        }
    }
    if removed {
        fs.sync_dir(dir).map_err(|e| Error::io("fsync directory", dir, e))?;
    }
    Ok(listing)
}

fn open_segment(fs: &dyn FileSystem, id: SegmentId, path: &Path) -> Result<Segment> {
    let file = fs.open(path, OpenMode::Existing).map_err(|e| Error::io("open", path, e))?;
    let capacity = file.len().map_err(|e| Error::io("stat", path, e))?;
    let mut buf = [0u8; SEGMENT_HEADER_LEN as usize];
    if capacity < SEGMENT_HEADER_LEN {
        return Err(Error::corruption(id, 0, "segment shorter than its header"));
    }
    file.read_at(0, &mut buf).map_err(|e| Error::io("read", path, e))?;
    let header = SegmentHeader::decode(&buf).map_err(|e| e.into_error(id))?;
    if header.id != id {
        return Err(Error::corruption(
            id,
            0,
            format!("segment header names segment {}", header.id),
        ));
    }
    Ok(Segment::new(id, header.start, capacity, file, path))
}

/// Verifies a sealed segment: every record valid, ending exactly at `end`.
fn verify_sealed(segment: &Segment) -> Result<()> {
    let end = segment.end.expect("verify_sealed takes sealed segments");
    let image = segment.image()?;
    let end_offset = segment.offset_of(end);
    if end_offset > segment.capacity {
        return Err(Error::corruption(
            segment.id,
            0,
            "the next segment starts beyond this one's end",
        ));
    }
    let mut offset = SEGMENT_HEADER_LEN;
    while offset < end_offset {
        let bytes = &image[to_usize(offset)..to_usize(end_offset)];
        match record::decode(bytes, segment.lsn_at(offset)) {
            Decoded::Record(frame) => offset += frame.encoded_len() as u64,
            Decoded::End => {
                return Err(Error::corruption(segment.id, offset, "zeros inside a sealed segment"));
            }
            Decoded::Invalid(why) => {
                return Err(Error::corruption(segment.id, offset, why.as_str()));
            }
        }
    }
    Ok(())
}

/// Valid records found after a stop by trying every offset.
#[derive(Debug, Default)]
struct Later {
    count: usize,
    /// Maximal runs of back-to-back records among them (each starts where no record of
    /// the previous run ended).
    runs: usize,
    first_offset: Option<u64>,
    /// End offset of the last one.
    end: u64,
    /// Highest `durable` stamp among them.
    max_durable: Lsn,
}

fn find_later(segment: &Segment, image: &[u8], from: u64) -> Later {
    let mut later = Later::default();
    let mut offset = to_usize(from);
    while offset + HEADER_LEN <= image.len() {
        // Cheap filter before the checksum: a plausible kind and zero reserved bytes.
        let plausible =
            matches!(image[offset + 12], 1 | 2) && image[offset + 13..offset + 16] == [0, 0, 0];
        if plausible
            && let Decoded::Record(frame) =
                record::decode(&image[offset..], segment.lsn_at(offset as u64))
        {
            if later.count == 0 || later.end != offset as u64 {
                later.runs += 1;
            }
            later.count += 1;
            later.first_offset.get_or_insert(offset as u64);
            later.max_durable = later.max_durable.max(frame.durable);
            offset += frame.encoded_len();
            later.end = offset as u64;
            continue;
        }
        offset += 1;
    }
    later
}

fn to_usize(v: u64) -> usize {
    usize::try_from(v).expect("segment offsets fit in memory")
}

/// What scanning the last segment decided.
struct Tail {
    offset: u64,
    clean: bool,
    truncation: Option<Truncation>,
    /// End offset of the bytes to zero when cutting.
    zero_to: u64,
    /// File offset below which records are proven durable by a later `durable` stamp.
    proven: u64,
}

fn scan_tail(segment: &Segment, mode: RecoveryMode, floor: Lsn) -> Result<Tail> {
    let image = segment.file.map().map_err(|e| Error::io("mmap", &segment.path, e))?;
    let capacity = (image.len() as u64).min(segment.capacity);
    let mut offset = SEGMENT_HEADER_LEN;
    let mut last_kind = None;
    let mut proven = SEGMENT_HEADER_LEN;
    let stop = loop {
        if capacity - offset < HEADER_LEN as u64 {
            break None; // no record fits here: the segment is full
        }
        let lsn = segment.lsn_at(offset);
        match record::decode(&image[to_usize(offset)..to_usize(capacity)], lsn) {
            Decoded::Record(frame) => {
                last_kind = Some(frame.kind);
                if frame.durable > segment.start {
                    proven = proven.max(segment.offset_of(frame.durable.min(lsn)));
                }
                offset += frame.encoded_len() as u64;
            }
            // The end marker every write leaves after its last record.
            Decoded::End => break None,
            Decoded::Invalid(why) => break Some(why),
        }
    };
    let later = find_later(segment, &image[..to_usize(capacity)], offset + 1);
    let stop_lsn = segment.lsn_at(offset);
    let referenced = floor.max(later.max_durable);
    let reason = stop.map_or("zeros where the log should continue", |why| why.as_str());
    let followed = || {
        format!("{reason}, followed by valid records at offset {}", later.first_offset.unwrap_or(0))
    };

    // Damage below a durably referenced position is corruption in every mode (P3).
    if stop_lsn < referenced {
        return Err(Error::corruption(
            segment.id,
            offset,
            format!("{reason}, below the durably referenced position {referenced}"),
        ));
    }
    let clean_end = stop.is_none() && later.count == 0;
    let sealed = last_kind == Some(RecordKind::Seal);
    let marker_end = (offset + HEADER_LEN as u64).min(capacity);
    let keep = |clean| Tail { offset, clean, truncation: None, zero_to: marker_end, proven };
    match mode {
        RecoveryMode::AbsoluteConsistency if clean_end && sealed => Ok(keep(true)),
        RecoveryMode::AbsoluteConsistency if clean_end => {
            Err(Error::NotCleanlyClosed { segment: segment.id, offset })
        }
        RecoveryMode::AbsoluteConsistency if later.count > 0 => {
            Err(Error::corruption(segment.id, offset, followed()))
        }
        RecoveryMode::AbsoluteConsistency => Err(Error::corruption(segment.id, offset, reason)),
        _ if clean_end => Ok(keep(sealed)),
        // One run after the stop may be the group written while the stop's group
        // synced, and is cut below; a second hole is more than two groups in flight
        // can leave (see the module docs).
        RecoveryMode::TolerateTornTail if later.runs > 1 => Err(Error::corruption(
            segment.id,
            offset,
            format!(
                "{}, in {} runs with holes between them (not a torn tail; \
                 RecoveryMode::PointInTime would cut the log here)",
                followed(),
                later.runs
            ),
        )),
        RecoveryMode::TolerateTornTail | RecoveryMode::PointInTime => Ok(Tail {
            offset,
            clean: false,
            truncation: Some(Truncation {
                segment: segment.id,
                offset,
                lsn: stop_lsn,
                reason: reason.to_owned(),
                dropped_records: later.count,
            }),
            zero_to: later.end.max(marker_end),
            proven,
        }),
    }
}

/// Applies a cut and makes the recovered tail durable (see the module docs).
fn settle_tail(fs: &dyn FileSystem, dir: &Path, segment: &Segment, tail: &Tail) -> Result<()> {
    let file: &dyn File = segment.file.as_ref();
    let path = &segment.path;
    if tail.proven < tail.offset {
        let mut unproven = vec![0u8; to_usize(tail.offset - tail.proven)];
        file.read_at(tail.proven, &mut unproven).map_err(|e| Error::io("read", path, e))?;
        file.write_at(tail.proven, &unproven).map_err(|e| Error::io("write", path, e))?;
    }
    // The end marker, and over a cut the bytes that must never be read again.
    let zeros = vec![0u8; to_usize(tail.zero_to - tail.offset)];
    file.write_at(tail.offset, &zeros).map_err(|e| Error::io("write", path, e))?;
    file.sync_data().map_err(|e| Error::io("fdatasync", path, e))?;
    if tail.truncation.is_some() {
        fs.sync_dir(dir).map_err(|e| Error::io("fsync directory", dir, e))?;
    }
    Ok(())
}

/// Finds, verifies and settles the log in `dir`. An empty directory yields no segments.
pub(crate) fn recover(
    fs: &dyn FileSystem,
    dir: &Path,
    segment_bytes: u64,
    mode: RecoveryMode,
    floor: Lsn,
) -> Result<Recovered> {
    let listing = list(fs, dir, segment_bytes)?;
    let mut report = RecoveryReport {
        mode,
        clean: false,
        truncation: None,
        segments: listing.segments.len(),
        first_lsn: Lsn::ZERO,
        end_lsn: Lsn::ZERO,
    };
    if listing.segments.is_empty() {
        if floor > Lsn::ZERO {
            return Err(Error::corruption(
                SegmentId(0),
                0,
                format!(
                    "the log directory holds no segments, but position {floor} is durably referenced"
                ),
            ));
        }
        if mode == RecoveryMode::AbsoluteConsistency {
            return Err(Error::NotCleanlyClosed { segment: SegmentId(0), offset: 0 });
        }
        return Ok(Recovered {
            segments: VecDeque::new(),
            tail_offset: 0,
            spares: listing.spares,
            report,
        });
    }

    let ids: Vec<SegmentId> = listing.segments.keys().copied().collect();
    if let Some(pair) = ids.windows(2).find(|w| w[1] != w[0].next()) {
        return Err(Error::corruption(
            pair[0].next(),
            0,
            "segment file missing from the middle of the log",
        ));
    }
    let mut segments: Vec<Segment> = listing
        .segments
        .iter()
        .map(|(&id, path)| open_segment(fs, id, path))
        .collect::<Result<_>>()?;

    // Seal every segment but the last at its successor's start, and verify it.
    for i in 0..segments.len() - 1 {
        let next_start = segments[i + 1].start;
        if next_start < segments[i].start || next_start > segments[i].limit() {
            return Err(Error::corruption(
                segments[i + 1].id,
                0,
                "segment start does not follow its predecessor",
            ));
        }
        segments[i] = segments[i].sealed(next_start);
        verify_sealed(&segments[i])?;
    }

    let last = segments.last().expect("at least one segment");
    let tail = scan_tail(last, mode, floor)?;
    settle_tail(fs, dir, last, &tail)?;
    if let Some(cut) = &tail.truncation {
        tracing::warn!(
            segment = %cut.segment,
            offset = cut.offset,
            lsn = %cut.lsn,
            reason = %cut.reason,
            dropped_records = cut.dropped_records,
            ?mode,
            "cut the WAL at a damaged tail beyond every acknowledged write"
        );
    }
    report.clean = tail.clean;
    report.truncation = tail.truncation;
    report.first_lsn = segments[0].start;
    report.end_lsn = last.lsn_at(tail.offset);
    Ok(Recovered {
        segments: segments.into_iter().map(Arc::new).collect(),
        tail_offset: tail.offset,
        spares: listing.spares,
        report,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::SimFs;
    use crate::segment::segment_file_name;

    const CAPACITY: u64 = 4096;
    const PAYLOAD: &[u8] = b"sixteen bytes ..";
    /// Bytes one test record occupies.
    const REC: u64 = (HEADER_LEN + PAYLOAD.len()) as u64;

    /// A last segment (id 1, starting at Lsn 0) holding a record at each `(offset,
    /// durable stamp)`, zeros elsewhere.
    fn segment_with(records: &[(u64, u64)]) -> (SimFs, PathBuf) {
        let fs = SimFs::new();
        let dir = PathBuf::from("/wal");
        fs.create_dir_all(&dir).unwrap();
        let path = dir.join(segment_file_name(SegmentId(1)));
        let file = fs.open(&path, OpenMode::CreateNew).unwrap();
        let mut image = vec![0u8; to_usize(CAPACITY)];
        let header = crate::segment::SegmentHeader { id: SegmentId(1), start: Lsn::ZERO };
        image[..to_usize(SEGMENT_HEADER_LEN)].copy_from_slice(&header.encode());
        for &(offset, durable) in records {
            let lsn = Lsn(offset - SEGMENT_HEADER_LEN);
            let bytes = record::encode(lsn, RecordKind::Data, PAYLOAD, Lsn(durable));
            image[to_usize(offset)..to_usize(offset + REC)].copy_from_slice(&bytes);
        }
        file.write_at(0, &image).unwrap();
        (fs, dir)
    }

    /// Record offsets: two durable records, then a hole of one record (a group whose
    /// fdatasync failed and whose pages the kernel dropped).
    const A: u64 = SEGMENT_HEADER_LEN;
    const B: u64 = A + REC;
    const HOLE: u64 = B + REC;
    /// The stop's Lsn: the end of B.
    const STOP: u64 = HOLE - SEGMENT_HEADER_LEN;

    #[test]
    fn one_run_after_a_hole_with_stamps_below_it_is_an_unacknowledged_tail() {
        // The run is the group written while the hole's group synced: stamped with the
        // durable end then, at most the stop.
        let run = [(HOLE + REC, STOP), (HOLE + 2 * REC, STOP)];
        let (fs, dir) = segment_with(&[(A, 0), (B, 0), run[0], run[1]]);
        let recovered = recover(&fs, &dir, CAPACITY, RecoveryMode::TolerateTornTail, Lsn::ZERO)
            .expect("a torn tail");
        let cut = recovered.report.truncation.expect("cut");
        assert_eq!((cut.offset, cut.lsn, cut.dropped_records), (HOLE, Lsn(STOP), 2));
        assert_eq!(recovered.report.end_lsn, Lsn(STOP));
        // The run is zeroed, so no later recovery finds it again.
        let image = fs.contents(&dir.join(segment_file_name(SegmentId(1)))).unwrap();
        assert!(image[to_usize(HOLE)..to_usize(HOLE + 3 * REC)].iter().all(|&b| b == 0));
        let again = recover(&fs, &dir, CAPACITY, RecoveryMode::TolerateTornTail, Lsn::ZERO)
            .expect("clean now");
        assert_eq!(again.report.truncation, None);
        assert_eq!(again.report.end_lsn, Lsn(STOP));
    }

    #[test]
    fn a_run_after_a_hole_stamped_past_it_proves_the_hole_acknowledged() {
        let (fs, dir) =
            segment_with(&[(A, 0), (B, 0), (HOLE + REC, STOP), (HOLE + 2 * REC, STOP + REC)]);
        for mode in [RecoveryMode::TolerateTornTail, RecoveryMode::PointInTime] {
            let err = recover(&fs, &dir, CAPACITY, mode, Lsn::ZERO).err().expect("corruption");
            assert!(
                matches!(&err, Error::Corruption { offset: HOLE, reason, .. } if reason.contains("durably referenced")),
                "{mode:?}: {err}"
            );
        }
    }

    #[test]
    fn two_runs_after_a_hole_are_not_a_torn_tail() {
        // A second hole: more than the one group written while another syncs.
        let records = [(A, 0), (B, 0), (HOLE + REC, STOP), (HOLE + 3 * REC, STOP)];
        let (fs, dir) = segment_with(&records);
        let err = recover(&fs, &dir, CAPACITY, RecoveryMode::TolerateTornTail, Lsn::ZERO)
            .err()
            .expect("corruption");
        assert!(
            matches!(&err, Error::Corruption { offset: HOLE, reason, .. } if reason.contains("2 runs")),
            "{err}"
        );
        // PointInTime cuts it, dropping both runs.
        let recovered =
            recover(&fs, &dir, CAPACITY, RecoveryMode::PointInTime, Lsn::ZERO).expect("cut");
        assert_eq!(recovered.report.truncation.map(|t| t.dropped_records), Some(2));
    }

    #[test]
    fn a_durable_floor_past_the_hole_refuses_the_cut() {
        let (fs, dir) = segment_with(&[(A, 0), (B, 0), (HOLE + REC, STOP)]);
        let floor = Lsn(STOP + 1);
        let err = recover(&fs, &dir, CAPACITY, RecoveryMode::TolerateTornTail, floor)
            .err()
            .expect("corruption");
        assert!(matches!(err, Error::Corruption { offset: HOLE, .. }), "{err}");
    }
}
