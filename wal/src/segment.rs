//! Segment files: header, names, and the in-memory list of live segments.
//!
//! A segment is a preallocated file of `segment_bytes` bytes: a 64-byte header, then
//! records back to back, then zeros (new file) or stale bytes (recycled file).
//!
//! ```text
//!  0          8          12         16                24                32         60        64
//!  +----------+----------+----------+-----------------+-----------------+----------+---------+
//!  | magic    | version  | hdr len  | segment id      | start lsn       | zero     | crc32   |
//!  | 8 bytes  | u32 LE   | u32 LE   | u64 LE          | u64 LE          | 28 bytes | of 0..60|
//!  +----------+----------+----------+-----------------+-----------------+----------+---------+
//! ```
//!
//! The record at file offset `o` has Lsn `start + (o - 64)`. A segment is *sealed* once
//! the next one exists: its records end exactly where the next segment's start Lsn says,
//! and it is made durable before the next header is written, so a sealed segment is
//! always complete on disk.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use bytes::Bytes;

use crate::error::{Error, Result};
use crate::fs::File;
use crate::lsn::{Lsn, SegmentId};

/// Identifies a regionkv WAL segment; `\r\n` catches text-mode mangling.
pub(crate) const MAGIC: [u8; 8] = *b"rkvWAL\r\n";
/// The segment format this binary writes and the newest it reads.
pub(crate) const FORMAT_VERSION: u32 = 1;
/// Bytes before the first record.
pub(crate) const SEGMENT_HEADER_LEN: u64 = 64;
const HEADER_LEN: usize = SEGMENT_HEADER_LEN as usize;

const _: () = assert!(HEADER_LEN >= 36, "the header's fields and checksum must fit");

/// The decoded fixed header of a segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct SegmentHeader {
    pub id: SegmentId,
    pub start: Lsn,
}

/// Why a segment header did not decode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum HeaderError {
    Short,
    Magic,
    Checksum,
    Length,
    Version(u32),
}

impl HeaderError {
    pub fn into_error(self, segment: SegmentId) -> Error {
        let reason = match self {
            HeaderError::Short => "segment shorter than its header",
            HeaderError::Magic => "bad segment magic (not a regionkv WAL segment)",
            HeaderError::Checksum => "segment header checksum mismatch",
            HeaderError::Length => "segment header declares a wrong header length",
            HeaderError::Version(found) => {
                return Error::UnsupportedFormat { segment, found, supported: FORMAT_VERSION };
            }
        };
        Error::corruption(segment, 0, reason)
    }
}

impl SegmentHeader {
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut buf = [0u8; HEADER_LEN];
        buf[0..8].copy_from_slice(&MAGIC);
        buf[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        buf[12..16].copy_from_slice(&(HEADER_LEN as u32).to_le_bytes());
        buf[16..24].copy_from_slice(&self.id.0.to_le_bytes());
        buf[24..32].copy_from_slice(&self.start.0.to_le_bytes());
        let crc = crc32fast::hash(&buf[..HEADER_LEN - 4]);
        buf[HEADER_LEN - 4..].copy_from_slice(&crc.to_le_bytes());
        buf
    }

    /// Decodes a header; never panics. The version is checked before the checksum so a
    /// newer format reports itself as such rather than as damage.
    pub fn decode(buf: &[u8]) -> Result<SegmentHeader, HeaderError> {
        let buf = buf.get(..HEADER_LEN).ok_or(HeaderError::Short)?;
        if buf[0..8] != MAGIC {
            return Err(HeaderError::Magic);
        }
        let u32_at = |at: usize| u32::from_le_bytes(buf[at..at + 4].try_into().expect("4 bytes"));
        let u64_at = |at: usize| u64::from_le_bytes(buf[at..at + 8].try_into().expect("8 bytes"));
        let version = u32_at(8);
        if version != FORMAT_VERSION {
            return Err(HeaderError::Version(version));
        }
        if u32_at(HEADER_LEN - 4) != crc32fast::hash(&buf[..HEADER_LEN - 4]) {
            return Err(HeaderError::Checksum);
        }
        if u64::from(u32_at(12)) != SEGMENT_HEADER_LEN
            || buf[32..HEADER_LEN - 4].iter().any(|&b| b != 0)
        {
            return Err(HeaderError::Length);
        }
        Ok(SegmentHeader { id: SegmentId(u64_at(16)), start: Lsn(u64_at(24)) })
    }
}

/// File name of a live segment.
pub(crate) fn segment_file_name(id: SegmentId) -> String {
    format!("{id}.wal")
}

/// File name of a ready, unused segment file.
pub(crate) fn spare_file_name(n: u64) -> String {
    format!("spare-{n:016x}.wal")
}

/// What a file name in the log directory is.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum FileName {
    Segment(SegmentId),
    Spare(u64),
    /// Left by an interrupted spare creation.
    Temp,
    Other,
}

pub(crate) fn parse_file_name(name: &str) -> FileName {
    let hex16 = |s: &str| (s.len() == 16).then(|| u64::from_str_radix(s, 16).ok()).flatten();
    if let Some(n) =
        name.strip_prefix("spare-").and_then(|s| s.strip_suffix(".wal")).and_then(hex16)
    {
        FileName::Spare(n)
    } else if let Some(id) = name.strip_suffix(".wal").and_then(hex16) {
        FileName::Segment(SegmentId(id))
    } else if Path::new(name).extension().is_some_and(|ext| ext == "tmp") {
        FileName::Temp
    } else {
        FileName::Other
    }
}

/// A live segment.
#[derive(Debug)]
pub(crate) struct Segment {
    pub id: SegmentId,
    pub start: Lsn,
    /// Where its records end; `None` while it is the active segment.
    pub end: Option<Lsn>,
    /// The file's size, fixed when it was made.
    pub capacity: u64,
    pub file: Arc<dyn File>,
    pub path: PathBuf,
    /// The memory-mapped image, made on first read of a sealed segment.
    image: OnceLock<Bytes>,
}

impl Segment {
    pub fn new(id: SegmentId, start: Lsn, capacity: u64, file: Arc<dyn File>, path: &Path) -> Self {
        Segment {
            id,
            start,
            end: None,
            capacity,
            file,
            path: path.to_owned(),
            image: OnceLock::new(),
        }
    }

    /// The same file, sealed at `end`.
    pub fn sealed(&self, end: Lsn) -> Segment {
        Segment {
            id: self.id,
            start: self.start,
            end: Some(end),
            capacity: self.capacity,
            file: self.file.clone(),
            path: self.path.clone(),
            image: OnceLock::new(),
        }
    }

    /// File offset of `lsn`, which must be in this segment.
    pub fn offset_of(&self, lsn: Lsn) -> u64 {
        SEGMENT_HEADER_LEN + (lsn.0 - self.start.0)
    }

    /// Lsn at file offset `offset`.
    pub fn lsn_at(&self, offset: u64) -> Lsn {
        Lsn(self.start.0 + (offset - SEGMENT_HEADER_LEN))
    }

    /// The Lsn one past the last byte this segment could hold.
    pub fn limit(&self) -> Lsn {
        self.lsn_at(self.capacity)
    }

    /// The read-only image of a sealed segment (memory-mapped on the real disk).
    pub fn image(&self) -> Result<&Bytes> {
        debug_assert!(self.end.is_some(), "only sealed segments are mapped");
        if let Some(image) = self.image.get() {
            return Ok(image);
        }
        let image = self.file.map().map_err(|e| Error::io("mmap", &self.path, e))?;
        Ok(self.image.get_or_init(|| image))
    }

    /// True if a reader may still hold bytes of this segment's image or this handle.
    pub fn in_use(self: &Arc<Self>) -> bool {
        Arc::strong_count(self) > 1 || self.image.get().is_some_and(|image| !image.is_unique())
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn names_round_trip() {
        assert_eq!(
            parse_file_name(&segment_file_name(SegmentId(42))),
            FileName::Segment(SegmentId(42))
        );
        assert_eq!(parse_file_name(&spare_file_name(7)), FileName::Spare(7));
        assert_eq!(parse_file_name("spare-0000000000000007.tmp"), FileName::Temp);
        assert_eq!(parse_file_name("42.wal"), FileName::Other);
        assert_eq!(parse_file_name("MANIFEST"), FileName::Other);
    }

    #[test]
    fn a_newer_version_is_reported_as_such() {
        let mut buf = SegmentHeader { id: SegmentId(1), start: Lsn(0) }.encode();
        buf[8] = 2;
        assert_eq!(SegmentHeader::decode(&buf), Err(HeaderError::Version(2)));
        assert!(matches!(
            HeaderError::Version(2).into_error(SegmentId(1)),
            Error::UnsupportedFormat { found: 2, supported: 1, .. }
        ));
    }

    proptest! {
        #[test]
        fn header_round_trips(id in any::<u64>(), start in any::<u64>()) {
            let h = SegmentHeader { id: SegmentId(id), start: Lsn(start) };
            prop_assert_eq!(SegmentHeader::decode(&h.encode()), Ok(h));
        }

        #[test]
        fn every_header_bit_flip_is_detected(id in any::<u64>(), start in any::<u64>()) {
            let h = SegmentHeader { id: SegmentId(id), start: Lsn(start) }.encode();
            for bit in 0..h.len() * 8 {
                let mut damaged = h;
                damaged[bit / 8] ^= 1 << (bit % 8);
                prop_assert!(SegmentHeader::decode(&damaged).is_err(), "bit {} unnoticed", bit);
            }
        }

        #[test]
        fn random_headers_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..80)) {
            let _ = SegmentHeader::decode(&bytes);
        }
    }
}
