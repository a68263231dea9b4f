//! Bounded little-endian decoding and tag-length-value records, shared by the
//! checkpoint and manifest formats.
//!
//! A record is a sequence of fields:
//!
//! ```text
//!  0        2          6
//!  +--------+----------+----------------+
//!  | tag    | len      | value          |
//!  | u16 LE | u32 LE   | len bytes      |
//!  +--------+----------+----------------+
//! ```
//!
//! Readers look for each field by tag and decide per record whether it is present:
//! a field added in a later format version is simply absent from older records and
//! decodes as `None`. Nothing here panics on any input; every length is checked
//! against the bytes that remain.

use crate::region::{Epoch, Peer, PeerId, Region, RegionId, StoreId};

/// Bytes of a field's tag and length.
pub const FIELD_HEADER_LEN: usize = 6;

/// Why bytes did not decode, and where (relative to the start of the decoded buffer).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DecodeError {
    /// Byte offset of the problem.
    pub offset: usize,
    /// What was wrong.
    pub reason: &'static str,
}

impl DecodeError {
    /// An error at `offset`.
    pub fn new(offset: usize, reason: &'static str) -> DecodeError {
        DecodeError { offset, reason }
    }

    /// The same error, `base` bytes further into an enclosing buffer.
    #[must_use]
    pub fn shifted(self, base: usize) -> DecodeError {
        DecodeError { offset: self.offset + base, reason: self.reason }
    }
}

/// Shorthand for decoding results.
pub type DecodeResult<T> = Result<T, DecodeError>;

/// A cursor over a byte slice that never reads past its end.
#[derive(Debug)]
pub struct Decoder<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Decoder<'a> {
    /// A cursor at the start of `buf`.
    pub fn new(buf: &'a [u8]) -> Decoder<'a> {
        Decoder { buf, pos: 0 }
    }

    /// Bytes read so far.
    pub fn pos(&self) -> usize {
        self.pos
    }

    /// Bytes left to read.
    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// The next `len` bytes; `what` names them in the error if fewer remain.
    pub fn bytes(&mut self, len: usize, what: &'static str) -> DecodeResult<&'a [u8]> {
        let end = self.pos.checked_add(len).filter(|&end| end <= self.buf.len());
        let Some(end) = end else {
            return Err(DecodeError::new(self.pos, what));
        };
        let out = &self.buf[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    /// The next little-endian u16.
    pub fn u16(&mut self, what: &'static str) -> DecodeResult<u16> {
        let b = self.bytes(2, what)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    /// The next little-endian u32.
    pub fn u32(&mut self, what: &'static str) -> DecodeResult<u32> {
        let b = self.bytes(4, what)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// The next little-endian u64.
    pub fn u64(&mut self, what: &'static str) -> DecodeResult<u64> {
        let b = self.bytes(8, what)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }
}

/// Reads a little-endian u32 at `at`, if the slice is long enough.
pub fn u32_at(buf: &[u8], at: usize) -> Option<u32> {
    let b = buf.get(at..at.checked_add(4)?)?;
    Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

/// Appends one field.
pub fn put_field(out: &mut Vec<u8>, tag: u16, value: &[u8]) {
    out.extend_from_slice(&tag.to_le_bytes());
    // Field values are bounded far below 4 GiB by every format's own limits.
    let len = u32::try_from(value.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(value);
}

/// Appends a field holding a u64.
pub fn put_u64(out: &mut Vec<u8>, tag: u16, value: u64) {
    put_field(out, tag, &value.to_le_bytes());
}

/// Appends a field holding a nested record built by `f`.
pub fn put_nested(out: &mut Vec<u8>, tag: u16, f: impl FnOnce(&mut Vec<u8>)) {
    let at = out.len();
    out.extend_from_slice(&tag.to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    f(out);
    let len = u32::try_from(out.len() - at - FIELD_HEADER_LEN).unwrap_or(u32::MAX);
    out[at + 2..at + FIELD_HEADER_LEN].copy_from_slice(&len.to_le_bytes());
}

/// One decoded field: its tag, value, and the value's offset in the record.
#[derive(Clone, Copy, Debug)]
pub struct Field<'a> {
    /// The field's tag.
    pub tag: u16,
    /// The field's value bytes.
    pub value: &'a [u8],
    /// Offset of the value from the start of the parsed buffer.
    pub offset: usize,
}

impl Field<'_> {
    /// The value as a little-endian u64 (exactly 8 bytes).
    pub fn as_u64(&self) -> DecodeResult<u64> {
        match <[u8; 8]>::try_from(self.value) {
            Ok(b) => Ok(u64::from_le_bytes(b)),
            Err(_) => Err(DecodeError::new(self.offset, "a u64 field is not 8 bytes")),
        }
    }

    /// The value as a flag (exactly one byte, 0 or 1).
    pub fn as_bool(&self) -> DecodeResult<bool> {
        match self.value {
            [0] => Ok(false),
            [1] => Ok(true),
            _ => Err(DecodeError::new(self.offset, "a flag field is not one byte of 0 or 1")),
        }
    }
}

/// The fields of a record, in order; fails on a field that runs past the end.
pub fn fields(buf: &[u8]) -> DecodeResult<Vec<Field<'_>>> {
    let mut d = Decoder::new(buf);
    // Sized by a first walk over the headers: one allocation, not a growth series
    // (every command applied is parsed, on the apply path of every write).
    let mut out = Vec::with_capacity(count_fields(buf));
    while d.remaining() > 0 {
        let tag = d.u16("truncated field tag")?;
        let len = d.u32("truncated field length")? as usize;
        let offset = d.pos();
        let value = d.bytes(len, "field runs past the end of its record")?;
        out.push(Field { tag, value, offset });
    }
    Ok(out)
}

/// How many whole fields `buf` starts with (a walk over their headers only).
fn count_fields(buf: &[u8]) -> usize {
    let mut at = 0usize;
    let mut n = 0;
    while let Some(header) = buf.get(at..at + FIELD_HEADER_LEN) {
        let len = u32::from_le_bytes([header[2], header[3], header[4], header[5]]) as usize;
        at = at.saturating_add(FIELD_HEADER_LEN).saturating_add(len);
        n += 1;
    }
    n
}

/// What a decoder does with a field whose tag it does not know.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnknownTags {
    /// An error: the format's version says every tag is known (a record of this
    /// binary's own version, or a format that never grows).
    Reject,
    /// Skipped: the record may come from a newer, compatible writer that added
    /// optional fields this binary reads as absent.
    Skip,
}

/// One TLV record's fields, looked up by tag, with duplicates and unknown tags checked.
/// (Not to be confused with a WAL record, `regionkv_wal::Record`, which holds opaque
/// bytes; a TLV record is what this codec finds inside them.)
///
/// Up to 12 fields are held in place (`INLINE_FIELDS`): every command is parsed on the
/// apply path of every write, and a vector was an allocation per record.
#[derive(Debug)]
pub struct TlvRecord<'a> {
    inline: [Field<'a>; INLINE_FIELDS],
    /// Fields in `inline`.
    len: usize,
    /// Every field, once there are more than fit in `inline`.
    spilled: Vec<Field<'a>>,
}

/// Fields a [`TlvRecord`] holds without allocating.
const INLINE_FIELDS: usize = 12;

impl<'a> TlvRecord<'a> {
    /// Splits `buf` into fields. Tags outside `known` are skipped or an error, as
    /// `unknown` says (after every field was found whole: a truncated record is told
    /// as such first).
    pub fn parse(
        buf: &'a [u8],
        known: &[u16],
        unknown: UnknownTags,
    ) -> DecodeResult<TlvRecord<'a>> {
        const NONE: Field<'static> = Field { tag: 0, value: &[], offset: 0 };
        let mut rec = TlvRecord { inline: [NONE; INLINE_FIELDS], len: 0, spilled: Vec::new() };
        let mut first_unknown = None;
        let mut d = Decoder::new(buf);
        while d.remaining() > 0 {
            let tag = d.u16("truncated field tag")?;
            let len = d.u32("truncated field length")? as usize;
            let offset = d.pos();
            let value = d.bytes(len, "field runs past the end of its record")?;
            if known.contains(&tag) {
                rec.push(Field { tag, value, offset });
            } else if unknown == UnknownTags::Reject {
                first_unknown = first_unknown.or(Some(offset));
            }
        }
        match first_unknown {
            Some(offset) => Err(DecodeError::new(offset, "unknown field tag")),
            None => Ok(rec),
        }
    }

    fn push(&mut self, field: Field<'a>) {
        if self.spilled.is_empty() && self.len < INLINE_FIELDS {
            self.inline[self.len] = field;
            self.len += 1;
        } else {
            if self.spilled.is_empty() {
                self.spilled.reserve(2 * INLINE_FIELDS);
                self.spilled.extend_from_slice(&self.inline);
            }
            self.spilled.push(field);
        }
    }

    fn fields(&self) -> &[Field<'a>] {
        if self.spilled.is_empty() { &self.inline[..self.len] } else { &self.spilled }
    }

    /// The field `tag` if present; an error if it appears more than once.
    pub fn optional(&self, tag: u16) -> DecodeResult<Option<Field<'a>>> {
        let mut found = self.fields().iter().filter(|f| f.tag == tag);
        let first = found.next().copied();
        if let Some(dup) = found.next() {
            return Err(DecodeError::new(dup.offset, "a field that may appear once is repeated"));
        }
        Ok(first)
    }

    /// The field `tag`, which must be present exactly once.
    pub fn required(&self, tag: u16, what: &'static str) -> DecodeResult<Field<'a>> {
        self.optional(tag)?.ok_or(DecodeError::new(0, what))
    }

    /// Every occurrence of the repeated field `tag`.
    pub fn repeated(&self, tag: u16) -> impl Iterator<Item = Field<'a>> + '_ {
        self.fields().iter().filter(move |f| f.tag == tag).copied()
    }
}

// Tags of a region record.
const REGION_ID: u16 = 1;
const REGION_START: u16 = 2;
const REGION_END: u16 = 3;
const REGION_END_UNBOUNDED: u16 = 4;
const REGION_EPOCH_VERSION: u16 = 5;
const REGION_EPOCH_CONF_VER: u16 = 6;
const REGION_PEER: u16 = 7;
const REGION_TAGS: &[u16] = &[
    REGION_ID,
    REGION_START,
    REGION_END,
    REGION_END_UNBOUNDED,
    REGION_EPOCH_VERSION,
    REGION_EPOCH_CONF_VER,
    REGION_PEER,
];
const PEER_ID: u16 = 1;
const PEER_STORE: u16 = 2;

/// Appends the fields of `region`.
pub fn put_region(out: &mut Vec<u8>, region: &Region) {
    put_u64(out, REGION_ID, region.id.0);
    put_field(out, REGION_START, &region.start);
    put_range_end(out, REGION_END, REGION_END_UNBOUNDED, region.end.as_deref());
    put_u64(out, REGION_EPOCH_VERSION, region.epoch.version);
    put_u64(out, REGION_EPOCH_CONF_VER, region.epoch.conf_ver);
    for peer in &region.peers {
        put_nested(out, REGION_PEER, |out| {
            put_u64(out, PEER_ID, peer.id.0);
            put_u64(out, PEER_STORE, peer.store.0);
        });
    }
}

/// Appends a range end: the bounded tag with the key, or the unbounded tag, empty. The
/// two tags keep "unbounded" apart from "field missing".
pub fn put_range_end(out: &mut Vec<u8>, bounded: u16, unbounded: u16, end: Option<&[u8]>) {
    match end {
        Some(end) => put_field(out, bounded, end),
        None => put_field(out, unbounded, &[]),
    }
}

/// Decodes a range end written by [`put_range_end`]: exactly one of the two tags.
pub fn range_end(
    rec: &TlvRecord<'_>,
    bounded: u16,
    unbounded: u16,
) -> DecodeResult<Option<Vec<u8>>> {
    match (rec.optional(bounded)?, rec.optional(unbounded)?) {
        (Some(end), None) => Ok(Some(end.value.to_vec())),
        (None, Some(f)) if f.value.is_empty() => Ok(None),
        (None, Some(f)) => Err(DecodeError::new(f.offset, "unbounded end carries bytes")),
        (Some(f), Some(_)) => Err(DecodeError::new(f.offset, "range end both bounded and not")),
        (None, None) => Err(DecodeError::new(0, "range end missing")),
    }
}

/// Decodes a region record; every field is required except peers (zero or more).
pub fn decode_region(buf: &[u8], unknown: UnknownTags) -> DecodeResult<Region> {
    let rec = TlvRecord::parse(buf, REGION_TAGS, unknown)?;
    let id = RegionId(rec.required(REGION_ID, "region id missing")?.as_u64()?);
    let start = rec.required(REGION_START, "region start missing")?.value.to_vec();
    let end = range_end(&rec, REGION_END, REGION_END_UNBOUNDED)?;
    let version = rec.required(REGION_EPOCH_VERSION, "epoch version missing")?.as_u64()?;
    let conf_ver = rec.required(REGION_EPOCH_CONF_VER, "epoch conf_ver missing")?.as_u64()?;
    let mut peers = Vec::new();
    for field in rec.repeated(REGION_PEER) {
        let peer = TlvRecord::parse(field.value, &[PEER_ID, PEER_STORE], unknown)
            .and_then(|p| {
                Ok(Peer {
                    id: PeerId(p.required(PEER_ID, "peer id missing")?.as_u64()?),
                    store: StoreId(p.required(PEER_STORE, "peer store missing")?.as_u64()?),
                })
            })
            .map_err(|e| e.shifted(field.offset))?;
        peers.push(peer);
    }
    let region = Region { id, start, end, epoch: Epoch { version, conf_ver }, peers };
    if !region.is_valid_range() {
        return Err(DecodeError::new(0, "region range is empty"));
    }
    Ok(region)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn region() -> Region {
        Region {
            id: RegionId(7),
            start: b"a".to_vec(),
            end: None,
            epoch: Epoch { version: 3, conf_ver: 2 },
            peers: vec![Peer { id: PeerId(1), store: StoreId(9) }],
        }
    }

    #[test]
    fn region_round_trips_and_missing_fields_are_errors() {
        let mut buf = Vec::new();
        put_region(&mut buf, &region());
        assert_eq!(decode_region(&buf, UnknownTags::Reject), Ok(region()));
        // Drop the end field: the decoder must not guess "unbounded".
        let fields = fields(&buf).unwrap();
        let mut without_end = Vec::new();
        for f in fields.iter().filter(|f| f.tag != REGION_END_UNBOUNDED) {
            put_field(&mut without_end, f.tag, f.value);
        }
        assert_eq!(
            decode_region(&without_end, UnknownTags::Reject).unwrap_err().reason,
            "range end missing"
        );
        // An unknown tag is an error for our own version, skipped for a newer writer.
        put_u64(&mut buf, 99, 1);
        assert!(decode_region(&buf, UnknownTags::Reject).is_err());
        assert_eq!(decode_region(&buf, UnknownTags::Skip), Ok(region()));
    }

    #[test]
    fn a_record_of_more_fields_than_held_in_place_keeps_them_all_in_order() {
        let mut buf = Vec::new();
        let n = 3 * INLINE_FIELDS as u64;
        for i in 0..n {
            put_u64(&mut buf, 1 + (i % 2) as u16, i);
            put_u64(&mut buf, 9, i); // unknown
        }
        assert!(TlvRecord::parse(&buf, &[1, 2], UnknownTags::Reject).is_err());
        let rec = TlvRecord::parse(&buf, &[1, 2], UnknownTags::Skip).unwrap();
        let ones: Vec<u64> = rec.repeated(1).map(|f| f.as_u64().unwrap()).collect();
        let twos: Vec<u64> = rec.repeated(2).map(|f| f.as_u64().unwrap()).collect();
        assert_eq!(ones, (0..n).step_by(2).collect::<Vec<_>>());
        assert_eq!(twos, (1..n).step_by(2).collect::<Vec<_>>());
        assert!(rec.optional(1).is_err(), "repeated");
        // Truncation is reported before an unknown tag.
        let mut cut = buf.clone();
        cut.truncate(cut.len() - 1);
        let err = TlvRecord::parse(&cut, &[1, 2], UnknownTags::Reject).unwrap_err();
        assert!(format!("{err:?}").contains("past the end"), "{err:?}");
    }

    proptest! {
        #[test]
        fn random_records_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode_region(&bytes, UnknownTags::Reject);
            let _ = decode_region(&bytes, UnknownTags::Skip);
        }
    }
}
