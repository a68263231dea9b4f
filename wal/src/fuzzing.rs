//! Entry points of the fuzz targets (`fuzz/` at the repository root): each decodes
//! arbitrary bytes as one of this crate's on-disk formats, must never panic, and checks
//! that what decodes encodes back to what it was. Not part of the API (hidden from the
//! docs); the unit tests below run them on hand-made inputs, so `cargo test` covers
//! them without the fuzzer.

use std::path::Path;

use crate::fs::{FileSystem, OpenMode, SimFs};
use crate::lsn::{Lsn, SegmentId};
use crate::record::{self, Decoded};
use crate::recovery::{RecoveryMode, recover};
use crate::segment::{SegmentHeader, segment_file_name};

/// The capacity the segment target recovers its segment with.
pub const SEGMENT_BYTES: u64 = 4096;

/// One WAL record: the first 8 bytes are its Lsn (little endian), the rest the bytes at
/// that position. A record that decodes re-encodes to the bytes it came from.
pub fn record(data: &[u8]) {
    let Some((lsn, buf)) = data.split_first_chunk::<8>() else { return };
    let lsn = Lsn(u64::from_le_bytes(*lsn));
    if let Decoded::Record(frame) = record::decode(buf, lsn) {
        let mut again = vec![0u8; record::HEADER_LEN];
        let len = u32::try_from(frame.payload.len()).expect("a payload that decoded");
        let pcrc = record::payload_crc(frame.payload);
        record::write_header(&mut again, lsn, frame.kind, len, pcrc, frame.durable);
        again.extend_from_slice(frame.payload);
        assert_eq!(again.as_slice(), &buf[..frame.encoded_len()], "a record re-encodes as it was");
        assert_eq!(record::decode(&again, lsn), Decoded::Record(frame));
    }
}

/// A segment header: one that decodes re-encodes to the bytes it came from.
pub fn segment_header(data: &[u8]) {
    if let Ok(header) = SegmentHeader::decode(data) {
        let again = header.encode();
        assert_eq!(SegmentHeader::decode(&again), Ok(header));
    }
}

/// A log directory holding one segment file with these bytes (the first byte picks the
/// recovery mode): recovery never panics, and a log it recovered recovers again clean,
/// at the same end.
pub fn segment(data: &[u8]) {
    let Some((&mode, image)) = data.split_first() else { return };
    let mode = match mode % 3 {
        0 => RecoveryMode::AbsoluteConsistency,
        1 => RecoveryMode::TolerateTornTail,
        _ => RecoveryMode::PointInTime,
    };
    let fs = SimFs::new();
    let dir = Path::new("/wal");
    fs.create_dir_all(dir).expect("a directory in memory");
    let file = fs
        .open(&dir.join(segment_file_name(SegmentId(1))), OpenMode::CreateNew)
        .expect("a file in memory");
    file.write_at(0, image).expect("a write in memory");
    drop(file);
    let Ok(first) = recover(&fs, dir, SEGMENT_BYTES, mode, Lsn::ZERO) else { return };
    let again = recover(&fs, dir, SEGMENT_BYTES, mode, Lsn::ZERO)
        .expect("a log that recovered once recovers again");
    assert_eq!(again.report.truncation, None, "the first recovery left a clean tail");
    assert_eq!(again.report.end_lsn, first.report.end_lsn);
    assert_eq!(again.tail_offset, first.tail_offset);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::RecordKind;

    #[test]
    fn the_entry_points_take_valid_and_damaged_inputs() {
        let lsn = Lsn(64);
        let mut data = lsn.0.to_le_bytes().to_vec();
        data.extend(record::encode(lsn, RecordKind::Data, b"payload", Lsn(3)));
        record(&data);
        for cut in 0..data.len() {
            record(&data[..cut]);
        }
        let header = SegmentHeader { id: SegmentId(1), start: Lsn::ZERO }.encode();
        segment_header(&header);
        let mut image = vec![1u8];
        image.extend_from_slice(&header);
        image.resize(1 + crate::segment::SEGMENT_HEADER_LEN as usize, 0);
        image.extend(record::encode(Lsn::ZERO, RecordKind::Data, b"payload", Lsn::ZERO));
        for mode in 0..3 {
            image[0] = mode;
            segment(&image);
            segment(&image[..image.len() - 3]);
        }
    }
}
