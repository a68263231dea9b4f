//! Reading records back: by Lsn, or in order from an Lsn.
//!
//! Sealed segments are read through their memory-mapped image and payloads are
//! zero-copy slices of it; the active segment is read with `pread` into a buffer.
//! Readers see only records below the durable end, and every record's checksums are
//! verified on every read.

use std::sync::Arc;

use bytes::Bytes;

use crate::error::{Error, Result};
use crate::lsn::Lsn;
use crate::record::{self, Decoded, HEADER_LEN, RecordKind};
use crate::segment::Segment;
use crate::writer::Shared;

/// A record read from the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// Where the record sits; the value its append returned.
    pub lsn: Lsn,
    /// The bytes that were appended.
    pub payload: Bytes,
}

/// Active-segment reads are buffered in chunks of this size.
const CHUNK_BYTES: usize = 256 << 10;

/// A buffered window over the active segment's file.
#[derive(Debug, Default)]
struct Window {
    offset: u64,
    bytes: Vec<u8>,
}

impl Window {
    /// Makes `[offset, offset + len)` resident (never past `limit`) and returns it.
    fn get(&mut self, segment: &Segment, offset: u64, len: u64, limit: u64) -> Result<&[u8]> {
        let want_end = (offset + len).min(limit);
        let have_end = self.offset + self.bytes.len() as u64;
        if offset < self.offset || want_end > have_end {
            let read_end = (offset + (CHUNK_BYTES as u64).max(len)).min(limit);
            self.bytes.resize(to_usize(read_end - offset), 0);
            segment
                .file
                .read_at(offset, &mut self.bytes)
                .map_err(|e| Error::io("read", &segment.path, e))?;
            self.offset = offset;
        }
        let start = to_usize(offset - self.offset);
        Ok(&self.bytes[start..start + to_usize(want_end - offset)])
    }
}

fn to_usize(v: u64) -> usize {
    usize::try_from(v).expect("segment offsets fit in memory")
}

/// Reads the record at `lsn` of `segment`, not reading at or past `limit`.
/// Returns its kind, payload and the Lsn after it.
fn read_at(
    segment: &Segment,
    lsn: Lsn,
    limit: Lsn,
    window: &mut Window,
) -> Result<(RecordKind, Bytes, Lsn)> {
    let offset = segment.offset_of(lsn);
    let limit_offset = segment.offset_of(limit);
    let damaged = |why: &str| {
        Error::corruption(
            segment.id,
            offset,
            format!("reading lsn {lsn}: {why} (or {lsn} is not a record's Lsn)"),
        )
    };
    if segment.end.is_some() {
        let image = segment.image()?;
        return match record::decode(&image[to_usize(offset)..to_usize(limit_offset)], lsn) {
            Decoded::Record(frame) => {
                let start = to_usize(offset) + HEADER_LEN;
                let payload = image.slice(start..start + frame.payload.len());
                Ok((frame.kind, payload, lsn.advance(frame.encoded_len() as u64)))
            }
            Decoded::End => Err(damaged("zeros instead of a record")),
            Decoded::Invalid(why) => Err(damaged(why.as_str())),
        };
    }
    let header = window.get(segment, offset, HEADER_LEN as u64, limit_offset)?;
    let len = record::peek_len(header, lsn).unwrap_or(0) as u64;
    let bytes = window.get(segment, offset, HEADER_LEN as u64 + len, limit_offset)?;
    match record::decode(bytes, lsn) {
        Decoded::Record(frame) => Ok((
            frame.kind,
            Bytes::copy_from_slice(frame.payload),
            lsn.advance(frame.encoded_len() as u64),
        )),
        Decoded::End => Err(damaged("zeros instead of a record")),
        Decoded::Invalid(why) => Err(damaged(why.as_str())),
    }
}

impl Shared {
    /// The live segments from the one holding `lsn` on, and the durable end; checks
    /// that `lsn` is readable (`lsn == end` is allowed: an empty tail).
    fn snapshot_from(&self, lsn: Lsn) -> Result<(Vec<Arc<Segment>>, Lsn)> {
        let segments = self.segments.read();
        let end = self.durable_end();
        let first = segments.front().map_or(end, |s| s.start);
        if lsn < first || lsn > end {
            return Err(Error::LsnOutOfRange { lsn, first, end });
        }
        let index = segments.partition_point(|s| s.start <= lsn).saturating_sub(1);
        Ok((segments.range(index..).cloned().collect(), end))
    }

    /// Reads the record at `lsn`.
    pub fn read(&self, lsn: Lsn) -> Result<Record> {
        let (segments, end) = self.snapshot_from(lsn)?;
        if lsn == end {
            let first = segments.first().map_or(end, |s| s.start);
            return Err(Error::LsnOutOfRange { lsn, first, end });
        }
        let segment = &segments[0];
        let limit = segment.end.unwrap_or(end).min(end);
        if lsn >= limit {
            // Between the last record of a sealed segment and its end: not a record.
            return Err(Error::NoRecord { lsn });
        }
        match read_at(segment, lsn, limit, &mut Window::default())? {
            (RecordKind::Data, payload, _) => Ok(Record { lsn, payload }),
            (RecordKind::Seal, ..) => Err(Error::NoRecord { lsn }),
        }
    }

    /// Iterates over the records from `lsn` to the durable end as of now.
    pub fn iter_from(&self, lsn: Lsn) -> Result<WalIter> {
        let (segments, end) = self.snapshot_from(lsn)?;
        Ok(WalIter { segments, index: 0, next: lsn, end, window: Window::default(), done: false })
    }
}

/// Records in Lsn order, from a start position to the durable end when the iterator was
/// made. Yields an error (and then stops) at damage.
#[derive(Debug)]
pub struct WalIter {
    segments: Vec<Arc<Segment>>,
    index: usize,
    next: Lsn,
    end: Lsn,
    window: Window,
    done: bool,
}

impl Iterator for WalIter {
    type Item = Result<Record>;

    fn next(&mut self) -> Option<Self::Item> {
        while !self.done && self.next < self.end {
            let segment = &self.segments[self.index];
            let limit = segment.end.unwrap_or(self.end).min(self.end);
            if self.next >= limit {
                // This segment is done; the next one starts where it ended.
                self.index += 1;
                self.window = Window::default();
                match self.segments.get(self.index) {
                    Some(next) => self.next = next.start,
                    None => self.done = true,
                }
                continue;
            }
            match read_at(segment, self.next, limit, &mut self.window) {
                Ok((kind, payload, after)) => {
                    let lsn = self.next;
                    self.next = after;
                    if kind == RecordKind::Data {
                        return Some(Ok(Record { lsn, payload }));
                    }
                }
                Err(e) => {
                    self.done = true;
                    return Some(Err(e));
                }
            }
        }
        None
    }
}
