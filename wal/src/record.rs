//! Record framing: how one record sits in a segment.
//!
//! ```text
//!  0         4         8         12    13        16                  24
//!  +---------+---------+---------+-----+---------+-------------------+-------------+
//!  | hcrc    | pcrc    | len     |kind | zero    | durable (Lsn)     | payload ... |
//!  | u32 LE  | u32 LE  | u32 LE  | u8  | [u8; 3] | u64 LE            | len bytes   |
//!  +---------+---------+---------+-----+---------+-------------------+-------------+
//!
//!  pcrc = crc32(payload)
//!  hcrc = crc32(lsn as u64 LE ++ bytes 4..24)
//! ```
//!
//! - `hcrc` is salted with the record's own Lsn, which is not stored. A record left in a
//!   recycled segment by an earlier use of the file therefore fails its check at any
//!   position of the new use, and a stale record can never be taken for a live one.
//! - `durable` is the log's durable end when the record was written: every byte below
//!   it had been fsynced. A later record thus proves that earlier damage is in data that
//!   was acknowledged, which recovery reports instead of truncating.
//! - A header of 24 zero bytes marks the end of written data (zero-filled segments);
//!   a real header is never all zero because `kind` is never 0.
//! - The payload's checksum is computed by the appending thread, outside the log's
//!   lock; the header's, by the group-commit leader once the Lsn is known.

use crate::lsn::Lsn;

/// Bytes of framing in front of every payload.
pub(crate) const HEADER_LEN: usize = 24;

/// What a record is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum RecordKind {
    /// A payload appended by a user of the log.
    Data = 1,
    /// Written by a clean close: the log ended here in an orderly way.
    Seal = 2,
}

impl RecordKind {
    fn from_u8(v: u8) -> Option<RecordKind> {
        match v {
            1 => Some(RecordKind::Data),
            2 => Some(RecordKind::Seal),
            _ => None,
        }
    }
}

/// Checksum of a payload, as stored in `pcrc`.
pub(crate) fn payload_crc(payload: &[u8]) -> u32 {
    crc32fast::hash(payload)
}

fn header_crc(lsn: Lsn, rest: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&lsn.0.to_le_bytes());
    h.update(rest);
    h.finalize()
}

/// Fills `header` for a record at `lsn` whose payload follows it.
pub(crate) fn write_header(
    header: &mut [u8],
    lsn: Lsn,
    kind: RecordKind,
    payload_len: u32,
    pcrc: u32,
    durable: Lsn,
) {
    let header = &mut header[..HEADER_LEN];
    header[4..8].copy_from_slice(&pcrc.to_le_bytes());
    header[8..12].copy_from_slice(&payload_len.to_le_bytes());
    header[12] = kind as u8;
    header[13..16].fill(0);
    header[16..24].copy_from_slice(&durable.0.to_le_bytes());
    let hcrc = header_crc(lsn, &header[4..HEADER_LEN]);
    header[0..4].copy_from_slice(&hcrc.to_le_bytes());
}

/// Encodes a whole record into a new buffer (tests and small writes).
#[cfg(test)]
pub(crate) fn encode(lsn: Lsn, kind: RecordKind, payload: &[u8], durable: Lsn) -> Vec<u8> {
    let mut out = vec![0u8; HEADER_LEN + payload.len()];
    let len = u32::try_from(payload.len()).expect("test payloads are small");
    write_header(&mut out, lsn, kind, len, payload_crc(payload), durable);
    out[HEADER_LEN..].copy_from_slice(payload);
    out
}

/// A record that passed every check.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Frame<'a> {
    pub kind: RecordKind,
    pub durable: Lsn,
    pub payload: &'a [u8],
}

impl Frame<'_> {
    /// Bytes the record occupies, framing included.
    pub fn encoded_len(&self) -> usize {
        HEADER_LEN + self.payload.len()
    }
}

/// Why bytes at a position are not a record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Invalid {
    /// Fewer bytes remain than a header or the announced payload needs.
    Truncated,
    /// The header's checksum does not match (damage, a torn write, or stale bytes).
    HeaderChecksum,
    /// The header checks out but names a kind this binary does not know.
    UnknownKind,
    /// Bytes that must be zero are not.
    ReservedBits,
    /// The payload's checksum does not match.
    PayloadChecksum,
}

impl Invalid {
    pub fn as_str(self) -> &'static str {
        match self {
            Invalid::Truncated => "record runs past the end of the segment",
            Invalid::HeaderChecksum => "record header checksum mismatch",
            Invalid::UnknownKind => "unknown record kind",
            Invalid::ReservedBits => "reserved header bytes are not zero",
            Invalid::PayloadChecksum => "record payload checksum mismatch",
        }
    }
}

/// What the bytes at a position hold.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Decoded<'a> {
    /// A valid record.
    Record(Frame<'a>),
    /// Zeros: nothing was ever written here.
    End,
    /// Something that is not a valid record at this Lsn.
    Invalid(Invalid),
}

/// Decodes the record at the start of `buf`, which is the segment from `lsn` onwards.
/// Never panics, whatever `buf` holds.
pub(crate) fn decode(buf: &[u8], lsn: Lsn) -> Decoded<'_> {
    let Some(header) = buf.get(..HEADER_LEN) else {
        return if buf.iter().all(|&b| b == 0) {
            Decoded::End
        } else {
            Decoded::Invalid(Invalid::Truncated)
        };
    };
    if header.iter().all(|&b| b == 0) {
        return Decoded::End;
    }
    let u32_at = |at: usize| u32::from_le_bytes(header[at..at + 4].try_into().expect("4 bytes"));
    if u32_at(0) != header_crc(lsn, &header[4..]) {
        return Decoded::Invalid(Invalid::HeaderChecksum);
    }
    let Some(kind) = RecordKind::from_u8(header[12]) else {
        return Decoded::Invalid(Invalid::UnknownKind);
    };
    if header[13..16] != [0, 0, 0] {
        return Decoded::Invalid(Invalid::ReservedBits);
    }
    let len = u32_at(8) as usize;
    let Some(payload) = buf.get(HEADER_LEN..).and_then(|rest| rest.get(..len)) else {
        return Decoded::Invalid(Invalid::Truncated);
    };
    if u32_at(4) != payload_crc(payload) {
        return Decoded::Invalid(Invalid::PayloadChecksum);
    }
    let durable = Lsn(u64::from_le_bytes(header[16..24].try_into().expect("8 bytes")));
    Decoded::Record(Frame { kind, durable, payload })
}

/// The payload length announced by a header that passed its checksum, if any; lets a
/// reader of the active segment size its second read. Never panics.
pub(crate) fn peek_len(header: &[u8], lsn: Lsn) -> Option<usize> {
    let header = header.get(..HEADER_LEN)?;
    let hcrc = u32::from_le_bytes(header[0..4].try_into().ok()?);
    (hcrc == header_crc(lsn, &header[4..]))
        .then(|| u32::from_le_bytes(header[8..12].try_into().expect("4 bytes")) as usize)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn zeros_are_the_end_and_a_record_is_never_zero() {
        assert_eq!(decode(&[0u8; 100], Lsn(5)), Decoded::End);
        assert_eq!(decode(&[0u8; 3], Lsn(5)), Decoded::End);
        let rec = encode(Lsn(0), RecordKind::Data, b"", Lsn(0));
        assert!(rec.iter().any(|&b| b != 0));
    }

    #[test]
    fn a_record_does_not_decode_at_another_lsn() {
        let rec = encode(Lsn(64), RecordKind::Data, b"payload", Lsn(0));
        assert!(matches!(decode(&rec, Lsn(64)), Decoded::Record(_)));
        assert_eq!(decode(&rec, Lsn(65)), Decoded::Invalid(Invalid::HeaderChecksum));
        assert_eq!(decode(&rec, Lsn(64 + (1 << 32))), Decoded::Invalid(Invalid::HeaderChecksum));
    }

    #[test]
    fn unknown_kind_with_a_valid_checksum_is_rejected() {
        let mut rec = encode(Lsn(8), RecordKind::Data, b"abc", Lsn(0));
        rec[12] = 9;
        let hcrc = header_crc(Lsn(8), &rec[4..HEADER_LEN]);
        rec[0..4].copy_from_slice(&hcrc.to_le_bytes());
        assert_eq!(decode(&rec, Lsn(8)), Decoded::Invalid(Invalid::UnknownKind));
    }

    proptest! {
        #[test]
        fn round_trips(
            lsn in any::<u64>(),
            durable in any::<u64>(),
            payload in proptest::collection::vec(any::<u8>(), 0..600),
            seal in any::<bool>(),
            trailing in proptest::collection::vec(any::<u8>(), 0..32),
        ) {
            let kind = if seal { RecordKind::Seal } else { RecordKind::Data };
            let mut buf = encode(Lsn(lsn), kind, &payload, Lsn(durable));
            let len = buf.len();
            buf.extend_from_slice(&trailing);
            let Decoded::Record(frame) = decode(&buf, Lsn(lsn)) else {
                panic!("a fresh record must decode");
            };
            prop_assert_eq!(frame.kind, kind);
            prop_assert_eq!(frame.durable, Lsn(durable));
            prop_assert_eq!(frame.payload, &payload[..]);
            prop_assert_eq!(frame.encoded_len(), len);
            prop_assert_eq!(peek_len(&buf, Lsn(lsn)), Some(payload.len()));
        }

        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256), lsn in any::<u64>()) {
            let _ = decode(&bytes, Lsn(lsn));
            let _ = peek_len(&bytes, Lsn(lsn));
        }

        #[test]
        fn every_single_bit_flip_is_detected(
            lsn in any::<u64>(),
            payload in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            let rec = encode(Lsn(lsn), RecordKind::Data, &payload, Lsn(lsn / 2));
            for bit in 0..rec.len() * 8 {
                let mut damaged = rec.clone();
                damaged[bit / 8] ^= 1 << (bit % 8);
                let decoded = decode(&damaged, Lsn(lsn));
                prop_assert!(
                    !matches!(decoded, Decoded::Record(_)),
                    "flip of bit {} went unnoticed", bit
                );
            }
        }

        #[test]
        fn truncation_is_detected(payload in proptest::collection::vec(any::<u8>(), 1..64), cut in 1usize..64) {
            let rec = encode(Lsn(1), RecordKind::Data, &payload, Lsn(0));
            let cut = cut.min(rec.len() - 1);
            prop_assert!(!matches!(decode(&rec[..rec.len() - cut], Lsn(1)), Decoded::Record(_)));
        }
    }
}
