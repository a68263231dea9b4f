//! The checkpoint file format: one region's image at an applied index as header, sorted
//! blocks, index and footer, each checksummed; encoded, verified and streamed in chunks.
//!
//! ```text
//!  +----------+---------+---------+-----+-------------+---------+----------+
//!  | header   | block 0 | block 1 | ... | block n - 1 | index   | footer   |
//!  +----------+---------+---------+-----+-------------+---------+----------+
//!
//!  header
//!  0          8          12         16         20                     20+n      24+n
//!  +----------+----------+----------+----------+----------------------+---------+
//!  | magic    | version  | flags 0  | n        | n bytes: fields      | crc32   |
//!  | 8 bytes  | u32 LE   | u32 LE   | u32 LE   | (region, applied     | of      |
//!  |          |          |          |          |  index, sessions,    | 0..20+n |
//!  |          |          |          |          |  snapshot): below    |         |
//!  +----------+----------+----------+----------+----------------------+---------+
//!
//!  header fields (TLV, see codec): 1 region (nested), 2 applied index u64, and since
//!  version 2, both optional:
//!    3 sessions (nested; absent: none): the region's table of client sessions
//!      (`crate::sessions`): 1 clock ms, 2 session (nested, repeated: 1 id, 2 last
//!      applied seq, 3 last used ms)
//!    4 snapshot (nested; only in a checkpoint made for a Raft snapshot):
//!      1 term u64, 2 voter* u64, 3 learner* u64
//!  since version 3, optional:
//!    5 txn (nested; absent: none): the region's transaction state (`crate::txn`):
//!      1 floor u64, 2 lock (nested, repeated: 1 key, 2 entry bytes), 3 record
//!      (nested, repeated: 1 primary key, 2 txn id u64, 3 entry bytes), 4 version
//!      GC floor u64 (optional, written only when set; cluster version 4)
//!  since version 4, optional:
//!    6 dups (nested; absent: none): the region's duplication state (`crate::dup`):
//!      1 entry (nested, repeated: 1 dup id u64, 2 entry bytes, behind their own
//!      format byte)
//!  since version 5, optional:
//!    7 sinks (nested; absent: none): the region's sink state (`crate::sink`):
//!      1 entry (nested, repeated: 1 dup id u64, 2 source region u64, 3 entry bytes,
//!      behind their own format byte)
//!
//!  block (sorted entries, keys strictly increasing across the whole file)
//!  0          4          8          12                                12+n      16+n
//!  +----------+----------+----------+----------------------------------+---------+
//!  | n        | entries  | flags 0  | entries: klen u32 LE, vlen u32   | crc32   |
//!  | u32 LE   | u32 LE   | u32 LE   | LE, key, value; n bytes in all   | 0..12+n |
//!  +----------+----------+----------+----------------------------------+---------+
//!
//!  index
//!  0          4          8
//!  +----------+----------+-----------------------------------------------+---------+
//!  | blocks   | flags 0  | per block: offset u64, len u32 (whole block), | crc32   |
//!  | u32 LE   | u32 LE   | entries u32, first key len u32, first key     | of all  |
//!  +----------+----------+-----------------------------------------------+---------+
//!
//!  footer
//!  0           8           12          16          24          32        36      40
//!  +-----------+-----------+-----------+-----------+-----------+---------+-------+
//!  | index off | index len | blocks    | entries   | kv bytes  | "CKPT"  | crc32 |
//!  | u64 LE    | u32 LE    | u32 LE    | u64 LE    | u64 LE    |         | 0..36 |
//!  +-----------+-----------+-----------+-----------+-----------+---------+-------+
//! ```
//!
//! A checkpoint is written once, to a temporary name, fsynced, renamed and the
//! directory fsynced; it is never modified afterwards, so readers map it. Opening one
//! checks every checksum, every length, the order of every key and that every key is
//! inside the region, before anything is loaded.
//!
//! Versions:
//!
//! - 1: region and applied index in the header.
//! - 2: adds two optional header fields. `sessions`: the region's table of client
//!   sessions (a version-1 file decodes with `sessions: None`, an empty table:
//!   version-1 binaries applied writes without sessions). `snapshot`: a checkpoint a
//!   leader made for a Raft snapshot records the term of the entry at the applied
//!   index and the voters and learners then, so that a store that crashed after
//!   installing it, before its log said so, can restart the region's log right after
//!   the image. Version-1 files still open (both fields `None`; either field in a
//!   version-1 file is corruption); a version-1 binary refuses version-2 files. A
//!   version-1 file is never rewritten, only replaced by the region's next checkpoint.
//! - 3: adds the optional header field `txn`: the region's locks, transaction records
//!   and floor, each lock and record copied as its own versioned entry (never decoded
//!   here). Version-1 and version-2 files still open with `txn: None`, an empty table
//!   (those binaries had no transactions); the field in such a file is corruption; a
//!   version-2 binary refuses version-3 files. The header body bound grows for
//!   version 3 (see [`MAX_HEADER_BODY_BYTES_V3`]). Older files are never rewritten,
//!   only replaced by the region's next checkpoint.
//! - 4: adds the optional header field `dups`: the region's duplication state as of the
//!   applied index, one entry per duplication behind its own format byte (an entry of
//!   a newer format is kept unread; see `crate::dup`). Files of versions 1 to 3 still
//!   open with `dups: None` (no duplication existed); the field in such a file is
//!   corruption; a version-3 binary refuses version-4 files, so it never drops the
//!   state (and with it the region's log-retention floor) by rewriting the image.
//! - 5: adds the optional header field `sinks`: the region's sink state (follower side
//!   of duplication) as of the applied index, one entry per (duplication, source
//!   region) behind its own format byte (see `crate::sink`). Files of versions 1 to 4
//!   open with `sinks: None` (no sink existed); the field in such a file is
//!   corruption; a version-4 binary refuses version-5 files, so it never drops the
//!   marks that make the follower's apply exactly-once by rewriting the image.

use std::path::Path;

use bytes::Bytes;

use crate::codec::{self, DecodeError, DecodeResult, Decoder, TlvRecord, UnknownTags};
use crate::dup::DupTable;
use crate::error::{Error, Result};
use crate::region::{Region, in_range};
use crate::sessions::{ENCODED_SESSION_BYTES, SessionLimits, SessionTable};
use crate::sink::SinkTable;
use crate::txn::TxnTable;

/// Identifies a regionkv checkpoint; `\r\n` catches text-mode mangling.
pub(crate) const MAGIC: [u8; 8] = *b"rkvCKP\r\n";
/// Marks the footer.
const FOOTER_MAGIC: [u8; 4] = *b"CKPT";
/// The checkpoint format this binary writes and the newest it reads.
pub const CHECKPOINT_FORMAT_VERSION: u32 = 5;
/// The oldest checkpoint format this binary reads.
pub const OLDEST_CHECKPOINT_VERSION: u32 = 1;
const HEADER_FIXED_LEN: usize = 20;
const BLOCK_HEADER_LEN: usize = 12;
/// Bytes in front of each entry's key: its key and value lengths.
const ENTRY_HEADER_LEN: usize = 8;
const CRC_LEN: usize = 4;
const INDEX_FIXED_LEN: usize = 8;
/// Bytes of the footer.
pub(crate) const FOOTER_LEN: usize = 40;
/// A block is closed once it holds at least this many bytes of entries.
pub(crate) const BLOCK_TARGET_BYTES: usize = 64 << 10;
/// Largest header body of versions 1 and 2: a region record with a few peers and two
/// keys, and a full session table.
const MAX_HEADER_BODY_BYTES: usize = 1 << 20;
/// Largest header body since version 3, which adds the region's transaction state.
/// Locks carry the values their transactions write (each up to the engine's
/// `max_value_bytes`, 32 MiB by default; one prewrite round up to `max_round_bytes`,
/// 256 MiB), and a region holds the locks of every transaction pending in it, so no
/// small bound holds: this one is what the header's u32 length and the engine's
/// 2^31 limits on keys and values allow. The bound only refuses a damaged length early
/// (the body is checksummed and must lie inside the file anyway); what matters is
/// that the writer never makes a file it cannot read back: a header above it is
/// refused before the file is written ([`check_header_fits`]).
pub(crate) const MAX_HEADER_BODY_BYTES_V3: usize = (u32::MAX / 2) as usize;

const _: () = assert!(
    SessionLimits::MAX_SESSIONS * ENCODED_SESSION_BYTES + (256 << 10) <= MAX_HEADER_BODY_BYTES,
    "a full session table leaves a quarter of the header to the region record"
);
const _: () =
    assert!(MAX_HEADER_BODY_BYTES < MAX_HEADER_BODY_BYTES_V3, "the header bound only grows");

const _: () = assert!(FOOTER_LEN == 8 + 4 + 4 + 8 + 8 + 4 + 4, "footer fields fill it");
const _: () = assert!(BLOCK_TARGET_BYTES < u32::MAX as usize / 2, "block lengths fit u32");

// Header fields.
const HDR_REGION: u16 = 1;
const HDR_APPLIED_INDEX: u16 = 2;
/// Since version 2.
const HDR_SESSIONS: u16 = 3;
/// Since version 2.
const HDR_SNAPSHOT: u16 = 4;
/// Since version 3.
const HDR_TXN: u16 = 5;
/// Since version 4.
const HDR_DUPS: u16 = 6;
const HDR_SINKS: u16 = 7;
const HDR_TAGS_V1: &[u16] = &[HDR_REGION, HDR_APPLIED_INDEX];
const HDR_TAGS_V2: &[u16] = &[HDR_REGION, HDR_APPLIED_INDEX, HDR_SESSIONS, HDR_SNAPSHOT];
const HDR_TAGS_V3: &[u16] = &[HDR_REGION, HDR_APPLIED_INDEX, HDR_SESSIONS, HDR_SNAPSHOT, HDR_TXN];
const HDR_TAGS_V4: &[u16] =
    &[HDR_REGION, HDR_APPLIED_INDEX, HDR_SESSIONS, HDR_SNAPSHOT, HDR_TXN, HDR_DUPS];
const HDR_TAGS: &[u16] =
    &[HDR_REGION, HDR_APPLIED_INDEX, HDR_SESSIONS, HDR_SNAPSHOT, HDR_TXN, HDR_DUPS, HDR_SINKS];
// Snapshot fields.
const S_TERM: u16 = 1;
const S_VOTER: u16 = 2;
const S_LEARNER: u16 = 3;
const SNAPSHOT_TAGS: &[u16] = &[S_TERM, S_VOTER, S_LEARNER];

/// What a checkpoint says about itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckpointHeader {
    /// The region as it was when the checkpoint was taken.
    pub region: Region,
    /// The Raft index the image reflects: every entry up to it is applied, none after.
    pub applied_index: u64,
    /// The region's client sessions as of `applied_index`; `None`: none (an empty
    /// table, or a version-1 file, written before sessions existed).
    pub sessions: Option<SessionTable>,
    /// The Raft snapshot this checkpoint was made for (since format version 2; `None`
    /// in other checkpoints and in version-1 files).
    pub snapshot: Option<SnapshotMeta>,
    /// The region's transaction state as of `applied_index` (since format version 3);
    /// `None`: none (an empty table, or a file of version 1 or 2, written before
    /// transactions existed).
    pub txn: Option<TxnTable>,
    /// The region's duplication state as of `applied_index` (since format version 4);
    /// `None`: none (the region takes part in no duplication, or a file of version 1
    /// to 3, written before duplication existed).
    pub dups: Option<DupTable>,
    /// The region's sink state as of `applied_index` (since format version 5);
    /// `None`: none (the region sinks no duplication, or a file of version 1 to 4,
    /// written before sinks existed).
    pub sinks: Option<SinkTable>,
}

/// Fails with [`Error::TooLarge`] if `header` would not fit the header bound: the
/// file could not be read back.
pub(crate) fn check_header_fits(header: &CheckpointHeader) -> Result<()> {
    // Everything but the transaction state fits the bound of version 2.
    let len = header.txn.as_ref().map_or(0, |t| codec::FIELD_HEADER_LEN + t.encoded_len())
        + header.dups.as_ref().map_or(0, |d| codec::FIELD_HEADER_LEN + d.encoded_len())
        + header.sinks.as_ref().map_or(0, |s| codec::FIELD_HEADER_LEN + s.encoded_len());
    let max = MAX_HEADER_BODY_BYTES_V3 - MAX_HEADER_BODY_BYTES;
    if len > max {
        return Err(Error::TooLarge {
            what: "transaction, duplication and sink state",
            len: len as u64,
            max: max as u64,
        });
    }
    Ok(())
}

/// What a Raft snapshot says about its image beyond the applied index: enough to
/// restart the region's log right after the image (the engine only stores it).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct SnapshotMeta {
    /// The Raft term of the entry at the applied index.
    pub term: u64,
    /// The voting peers at the applied index.
    pub voters: Vec<u64>,
    /// The non-voting peers (learners) at the applied index.
    pub learners: Vec<u64>,
}

/// Totals of a checkpoint, from its footer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CheckpointStats {
    /// Key/value pairs.
    pub entries: u64,
    /// Sum of key and value lengths.
    pub kv_bytes: u64,
    /// Blocks.
    pub blocks: u32,
    /// Length of the whole file.
    pub file_bytes: u64,
}

fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn len_u32(len: usize) -> u32 {
    // Every length written here is bounded by the format's limits (block target,
    // key and value limits), all far below 4 GiB.
    u32::try_from(len).unwrap_or(u32::MAX)
}

/// Encodes a checkpoint as a stream of bytes handed to `sink` in pieces of at least
/// `flush_bytes` (the last may be shorter). The sink gets the buffer itself and may
/// swap in another one (to hand the full one to a writer thread without a copy).
pub(crate) struct Encoder<'s> {
    out: Vec<u8>,
    /// File offset of `out[0]`.
    out_offset: u64,
    flush_bytes: usize,
    sink: &'s mut dyn FnMut(u64, &mut Vec<u8>) -> std::io::Result<()>,
    /// Start of the open block in `out`, if one is open.
    block_start: Option<usize>,
    block_entries: u32,
    index: Vec<u8>,
    /// Offset in `index` of the open block's entry.
    index_at: usize,
    blocks: u32,
    entries: u64,
    kv_bytes: u64,
}

impl<'s> Encoder<'s> {
    pub fn new(
        header: &CheckpointHeader,
        flush_bytes: usize,
        sink: &'s mut dyn FnMut(u64, &mut Vec<u8>) -> std::io::Result<()>,
    ) -> Encoder<'s> {
        let mut body = Vec::new();
        codec::put_nested(&mut body, HDR_REGION, |out| codec::put_region(out, &header.region));
        codec::put_u64(&mut body, HDR_APPLIED_INDEX, header.applied_index);
        if let Some(sessions) = &header.sessions {
            codec::put_nested(&mut body, HDR_SESSIONS, |out| sessions.encode(out));
        }
        if let Some(snap) = &header.snapshot {
            codec::put_nested(&mut body, HDR_SNAPSHOT, |out| {
                codec::put_u64(out, S_TERM, snap.term);
                for &id in &snap.voters {
                    codec::put_u64(out, S_VOTER, id);
                }
                for &id in &snap.learners {
                    codec::put_u64(out, S_LEARNER, id);
                }
            });
        }
        if let Some(txn) = &header.txn {
            codec::put_nested(&mut body, HDR_TXN, |out| txn.encode(out));
        }
        if let Some(dups) = &header.dups {
            codec::put_nested(&mut body, HDR_DUPS, |out| dups.encode(out));
        }
        if let Some(sinks) = &header.sinks {
            codec::put_nested(&mut body, HDR_SINKS, |out| sinks.encode(out));
        }
        let mut out = Vec::with_capacity(flush_bytes + BLOCK_TARGET_BYTES * 2);
        out.extend_from_slice(&MAGIC);
        put_u32(&mut out, CHECKPOINT_FORMAT_VERSION);
        put_u32(&mut out, 0);
        put_u32(&mut out, len_u32(body.len()));
        out.extend_from_slice(&body);
        let crc = crc32fast::hash(&out);
        put_u32(&mut out, crc);
        let mut index = Vec::new();
        index.extend_from_slice(&[0; INDEX_FIXED_LEN]);
        Encoder {
            out,
            out_offset: 0,
            flush_bytes,
            sink,
            block_start: None,
            block_entries: 0,
            index_at: 0,
            index,
            blocks: 0,
            entries: 0,
            kv_bytes: 0,
        }
    }

    /// Appends one pair; keys must come in strictly increasing order. (The engine
    /// uses [`Encoder::push_encoded`]; this encodes independently of the memtable.)
    #[cfg(test)]
    pub fn push(&mut self, key: &[u8], value: &[u8]) -> std::io::Result<()> {
        let start = self.open_block(key);
        put_u32(&mut self.out, len_u32(key.len()));
        put_u32(&mut self.out, len_u32(value.len()));
        self.out.extend_from_slice(key);
        self.out.extend_from_slice(value);
        self.entry_added(start, (key.len() + value.len()) as u64)
    }

    /// Appends one pair given as its block entry (`klen u32 LE, vlen u32 LE, key,
    /// value`), copied as it is; keys must come in strictly increasing order.
    pub fn push_encoded(&mut self, key: &[u8], entry: &[u8]) -> std::io::Result<()> {
        debug_assert!(
            codec::u32_at(entry, 0) == Some(len_u32(key.len()))
                && entry.get(ENTRY_HEADER_LEN..ENTRY_HEADER_LEN + key.len()) == Some(key),
            "an encoded entry of this key"
        );
        let start = self.open_block(key);
        self.out.extend_from_slice(entry);
        self.entry_added(start, (entry.len() - ENTRY_HEADER_LEN) as u64)
    }

    /// Opens a block starting at `key` unless one is open; returns its start in `out`.
    fn open_block(&mut self, key: &[u8]) -> usize {
        if let Some(start) = self.block_start {
            return start;
        }
        let start = self.out.len();
        self.out.extend_from_slice(&[0; BLOCK_HEADER_LEN]);
        self.index_at = self.index.len();
        self.index.extend_from_slice(&(self.out_offset + start as u64).to_le_bytes());
        self.index.extend_from_slice(&[0; 8]); // len and entries, set on close
        put_u32(&mut self.index, len_u32(key.len()));
        self.index.extend_from_slice(key);
        self.block_start = Some(start);
        start
    }

    /// Counts an entry of `kv` key and value bytes just appended to the block at
    /// `start`; closes the block once full, and hands the buffer on once full.
    fn entry_added(&mut self, start: usize, kv: u64) -> std::io::Result<()> {
        self.block_entries += 1;
        self.entries += 1;
        self.kv_bytes += kv;
        if self.out.len() - start - BLOCK_HEADER_LEN >= BLOCK_TARGET_BYTES {
            self.close_block();
            if self.out.len() >= self.flush_bytes {
                self.flush()?;
            }
        }
        Ok(())
    }

    fn close_block(&mut self) {
        let Some(start) = self.block_start.take() else { return };
        let n = self.out.len() - start - BLOCK_HEADER_LEN;
        self.out[start..start + 4].copy_from_slice(&len_u32(n).to_le_bytes());
        self.out[start + 4..start + 8].copy_from_slice(&self.block_entries.to_le_bytes());
        let crc = crc32fast::hash(&self.out[start..]);
        put_u32(&mut self.out, crc);
        // Patch this block's index entry: len and entries follow its offset.
        let whole = len_u32(self.out.len() - start);
        let at = self.index_at;
        self.index[at + 8..at + 12].copy_from_slice(&whole.to_le_bytes());
        self.index[at + 12..at + 16].copy_from_slice(&self.block_entries.to_le_bytes());
        self.block_entries = 0;
        self.blocks += 1;
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if !self.out.is_empty() {
            let len = self.out.len() as u64;
            (self.sink)(self.out_offset, &mut self.out)?;
            self.out_offset += len;
            self.out.clear();
        }
        Ok(())
    }

    /// Writes the index and footer and flushes everything; returns the totals.
    pub fn finish(mut self) -> std::io::Result<CheckpointStats> {
        self.close_block();
        let index_offset = self.out_offset + self.out.len() as u64;
        self.index[0..4].copy_from_slice(&self.blocks.to_le_bytes());
        let crc = crc32fast::hash(&self.index);
        put_u32(&mut self.index, crc);
        self.out.extend_from_slice(&self.index);
        let mut footer = Vec::with_capacity(FOOTER_LEN);
        footer.extend_from_slice(&index_offset.to_le_bytes());
        put_u32(&mut footer, len_u32(self.index.len()));
        put_u32(&mut footer, self.blocks);
        footer.extend_from_slice(&self.entries.to_le_bytes());
        footer.extend_from_slice(&self.kv_bytes.to_le_bytes());
        footer.extend_from_slice(&FOOTER_MAGIC);
        let crc = crc32fast::hash(&footer);
        put_u32(&mut footer, crc);
        self.out.extend_from_slice(&footer);
        let file_bytes = self.out_offset + self.out.len() as u64;
        self.flush()?;
        Ok(CheckpointStats {
            entries: self.entries,
            kv_bytes: self.kv_bytes,
            blocks: self.blocks,
            file_bytes,
        })
    }
}

/// One block as listed by the index.
#[derive(Clone, Copy, Debug)]
struct BlockHandle {
    offset: usize,
    len: usize,
    entries: u32,
}

/// A verified checkpoint image (memory-mapped on the real disk).
#[derive(Clone, Debug)]
pub struct CheckpointFile {
    data: Bytes,
    header: CheckpointHeader,
    blocks: Vec<BlockHandle>,
    stats: CheckpointStats,
}

impl CheckpointFile {
    /// Decodes and verifies a whole checkpoint. `path` names it in errors.
    pub fn open(data: Bytes, path: &Path) -> Result<CheckpointFile> {
        Self::open_visiting(data, path, |_, _| {})
    }

    /// [`CheckpointFile::open`], calling `visit(key, pair)` for every pair in key
    /// order (the pair encoded as its block stores it, see
    /// [`CheckpointFile::for_each_encoded`]) as soon as the pair and its block are
    /// verified: loading needs one pass over the file instead of two. If it fails, the
    /// pairs visited are from a file that is not valid: the caller must drop them.
    pub(crate) fn open_visiting(
        data: Bytes,
        path: &Path,
        visit: impl FnMut(&[u8], &[u8]),
    ) -> Result<CheckpointFile> {
        let corrupt = |e: DecodeError| Error::corruption(path, e.offset as u64, e.reason);
        let version = codec::u32_at(&data, 8);
        if data.len() >= 12 && data[..8] == MAGIC {
            let found = version.unwrap_or(0);
            if found > CHECKPOINT_FORMAT_VERSION {
                return Err(Error::TooNew {
                    file: path.to_owned(),
                    found,
                    min_reader: found,
                    supported: CHECKPOINT_FORMAT_VERSION,
                });
            }
        }
        Self::decode(data, visit).map_err(corrupt)
    }

    /// How many pairs and key and value bytes the footer announces, if it is intact;
    /// nothing else is checked (for sizing buffers before [`CheckpointFile::open`]).
    pub(crate) fn size_hint(data: &[u8]) -> Option<(u64, u64)> {
        let footer = data.get(data.len().checked_sub(FOOTER_LEN)?..)?;
        if codec::u32_at(footer, 36) != Some(crc32fast::hash(&footer[..36])) {
            return None;
        }
        let mut f = Decoder::new(&footer[16..32]);
        Some((f.u64("footer").ok()?, f.u64("footer").ok()?))
    }

    #[allow(clippy::too_many_lines, reason = "one pass over the layout, in file order")]
    fn decode(data: Bytes, mut visit: impl FnMut(&[u8], &[u8])) -> DecodeResult<CheckpointFile> {
        let err = DecodeError::new;
        let buf: &[u8] = &data;
        // Header.
        if buf.len() < HEADER_FIXED_LEN + CRC_LEN + FOOTER_LEN {
            return Err(err(0, "file shorter than a header and a footer"));
        }
        if buf[..8] != MAGIC {
            return Err(err(0, "bad magic (not a regionkv checkpoint)"));
        }
        let mut d = Decoder::new(&buf[8..]);
        let version = d.u32("header")?;
        if !(OLDEST_CHECKPOINT_VERSION..=CHECKPOINT_FORMAT_VERSION).contains(&version) {
            return Err(err(8, "unsupported checkpoint format version"));
        }
        let flags = d.u32("header")?;
        let body_len = d.u32("header")? as usize;
        let max_body = if version < 3 { MAX_HEADER_BODY_BYTES } else { MAX_HEADER_BODY_BYTES_V3 };
        if body_len > max_body {
            return Err(err(16, "header body length out of bounds"));
        }
        let header_end = HEADER_FIXED_LEN + body_len;
        let Some(header_crc) = codec::u32_at(buf, header_end) else {
            return Err(err(16, "header runs past the end of the file"));
        };
        if header_crc != crc32fast::hash(&buf[..header_end]) {
            return Err(err(header_end, "header checksum mismatch"));
        }
        if flags != 0 {
            return Err(err(12, "unknown header flags"));
        }
        let header = decode_header_body(&buf[HEADER_FIXED_LEN..header_end], version)
            .map_err(|e| e.shifted(HEADER_FIXED_LEN))?;
        let data_start = header_end + CRC_LEN;

        // Footer.
        let footer_at = buf.len() - FOOTER_LEN;
        let footer = &buf[footer_at..];
        if codec::u32_at(footer, 36) != Some(crc32fast::hash(&footer[..36])) {
            return Err(err(footer_at, "footer checksum mismatch"));
        }
        if footer[32..36] != FOOTER_MAGIC {
            return Err(err(footer_at + 32, "bad footer magic"));
        }
        let mut f = Decoder::new(footer);
        let index_offset = f.u64("footer")?;
        let index_len = f.u32("footer")? as usize;
        let blocks = f.u32("footer")?;
        let entries = f.u64("footer")?;
        let kv_bytes = f.u64("footer")?;
        let index_start = usize::try_from(index_offset).unwrap_or(usize::MAX);
        if index_start < data_start
            || index_start.checked_add(index_len) != Some(footer_at)
            || index_len < INDEX_FIXED_LEN + CRC_LEN
        {
            return Err(err(footer_at, "index position out of bounds"));
        }

        // Index.
        let index = &buf[index_start..footer_at];
        let (index_body, index_crc) = index.split_at(index_len - CRC_LEN);
        if codec::u32_at(index_crc, 0) != Some(crc32fast::hash(index_body)) {
            return Err(err(index_start, "index checksum mismatch"));
        }
        let mut d = Decoder::new(index_body);
        let count = d.u32("index")?;
        if d.u32("index")? != 0 {
            return Err(err(index_start + 4, "unknown index flags"));
        }
        if count != blocks {
            return Err(err(index_start, "index and footer disagree on the block count"));
        }
        let mut handles = Vec::new();
        let mut expected_offset = data_start;
        let mut prev_key: Option<&[u8]> = None;
        let mut total_entries = 0u64;
        let mut total_kv = 0u64;
        for _ in 0..count {
            let at = index_start + d.pos();
            let offset = usize::try_from(d.u64("index entry")?).unwrap_or(usize::MAX);
            let len = d.u32("index entry")? as usize;
            let n_entries = d.u32("index entry")?;
            let klen = d.u32("index entry")? as usize;
            let first_key = d.bytes(klen, "index entry key")?;
            if offset != expected_offset {
                return Err(err(at, "blocks are not contiguous"));
            }
            let end = offset.checked_add(len).filter(|&e| e <= index_start);
            let Some(end) = end else {
                return Err(err(at, "block runs past the index"));
            };
            let block = &buf[offset..end];
            let stats = verify_block(
                block,
                n_entries,
                first_key,
                &mut prev_key,
                &header.region,
                &mut visit,
            )
            .map_err(|e| e.shifted(offset))?;
            total_entries += stats.0;
            total_kv += stats.1;
            handles.push(BlockHandle { offset, len, entries: n_entries });
            expected_offset = end;
        }
        if d.remaining() != 0 {
            return Err(err(index_start + d.pos(), "trailing bytes in the index"));
        }
        if expected_offset != index_start {
            return Err(err(expected_offset, "bytes between the last block and the index"));
        }
        if total_entries != entries || total_kv != kv_bytes {
            return Err(err(footer_at, "footer totals differ from the blocks"));
        }
        let stats = CheckpointStats { entries, kv_bytes, blocks, file_bytes: buf.len() as u64 };
        Ok(CheckpointFile { data, header, blocks: handles, stats })
    }

    /// The header: region and applied index.
    pub fn header(&self) -> &CheckpointHeader {
        &self.header
    }

    /// Totals from the footer (verified against the blocks).
    pub fn stats(&self) -> CheckpointStats {
        self.stats
    }

    /// The whole file.
    pub fn bytes(&self) -> &Bytes {
        &self.data
    }

    /// Calls `f(key, value)` for every pair in key order.
    pub fn for_each(&self, mut f: impl FnMut(&[u8], &[u8])) {
        for block in 0..self.blocks.len() {
            self.for_each_in_block(block, &mut f);
        }
    }

    /// How many data blocks the file holds (for walking it a block at a time with
    /// [`CheckpointFile::for_each_in_block`]).
    pub fn block_count(&self) -> usize {
        self.blocks.len()
    }

    /// Calls `f(key, value)` for every pair of data block `block` (of
    /// [`CheckpointFile::block_count`]), in key order; the slices are of
    /// [`CheckpointFile::bytes`]. Nothing for a block past the last.
    pub fn for_each_in_block(&self, block: usize, mut f: impl FnMut(&[u8], &[u8])) {
        let Some(block) = self.blocks.get(block) else { return };
        let body = &self.data[block.offset + BLOCK_HEADER_LEN..block.offset + block.len - 4];
        let mut d = Decoder::new(body);
        for _ in 0..block.entries {
            // Verified at open; a failure here cannot happen, and stops the walk.
            let Ok((k, v)) = next_entry(&mut d) else { return };
            f(k, v);
        }
    }
}

impl CheckpointFile {
    /// Calls `f(key, entry)` for every pair in key order, where `entry` is the pair as
    /// the block stores it (`klen u32 LE, vlen u32 LE, key, value`): loading copies
    /// each pair with one `memcpy`.
    pub(crate) fn for_each_encoded(&self, mut f: impl FnMut(&[u8], &[u8])) {
        for block in &self.blocks {
            let body = &self.data[block.offset + BLOCK_HEADER_LEN..block.offset + block.len - 4];
            let mut at = 0;
            for _ in 0..block.entries {
                // Verified at open; a failure here cannot happen, and stops the walk.
                let (Some(klen), Some(vlen)) =
                    (codec::u32_at(body, at), codec::u32_at(body, at + 4))
                else {
                    return;
                };
                let key_at = at + ENTRY_HEADER_LEN;
                let end = key_at + klen as usize + vlen as usize;
                let (Some(key), Some(entry)) =
                    (body.get(key_at..key_at + klen as usize), body.get(at..end))
                else {
                    return;
                };
                f(key, entry);
                at = end;
            }
        }
    }
}

fn next_entry<'a>(d: &mut Decoder<'a>) -> DecodeResult<(&'a [u8], &'a [u8])> {
    let klen = d.u32("entry header")? as usize;
    let vlen = d.u32("entry header")? as usize;
    let key = d.bytes(klen, "entry key runs past its block")?;
    let value = d.bytes(vlen, "entry value runs past its block")?;
    Ok((key, value))
}

/// Checks one block, handing every pair to `visit` once it is checked; returns
/// (entries, kv bytes).
fn verify_block<'a>(
    block: &'a [u8],
    entries: u32,
    first_key: &[u8],
    prev_key: &mut Option<&'a [u8]>,
    region: &Region,
    visit: &mut impl FnMut(&[u8], &[u8]),
) -> DecodeResult<(u64, u64)> {
    let err = DecodeError::new;
    if block.len() < BLOCK_HEADER_LEN + CRC_LEN {
        return Err(err(0, "block shorter than its framing"));
    }
    let (body, crc) = block.split_at(block.len() - CRC_LEN);
    if codec::u32_at(crc, 0) != Some(crc32fast::hash(body)) {
        return Err(err(0, "block checksum mismatch"));
    }
    let mut d = Decoder::new(body);
    let n = d.u32("block header")? as usize;
    let count = d.u32("block header")?;
    let flags = d.u32("block header")?;
    if n != d.remaining() || count != entries || flags != 0 || count == 0 {
        return Err(err(0, "block header disagrees with the index"));
    }
    let mut kv = 0u64;
    for i in 0..count {
        let at = d.pos();
        let (key, value) = next_entry(&mut d).map_err(|e| e.shifted(0))?;
        if i == 0 && key != first_key {
            return Err(err(at, "first key differs from the index"));
        }
        if prev_key.is_some_and(|p| p >= key) {
            return Err(err(at, "keys are not strictly increasing"));
        }
        if !in_range(key, &region.start, region.end.as_deref()) {
            return Err(err(at, "key outside the region"));
        }
        *prev_key = Some(key);
        kv += (key.len() + value.len()) as u64;
        visit(key, &body[at..d.pos()]);
    }
    if d.remaining() != 0 {
        return Err(err(d.pos(), "trailing bytes in a block"));
    }
    Ok((u64::from(count), kv))
}

/// Decodes the header fields of a file of format `version` (a version-1 file has
/// neither the session table nor the snapshot field, a version-2 file no transaction
/// state, a version-3 file no duplication state, a version-4 file no sink state: their
/// tags are unknown there).
fn decode_header_body(body: &[u8], version: u32) -> DecodeResult<CheckpointHeader> {
    let tags = match version {
        1 => HDR_TAGS_V1,
        2 => HDR_TAGS_V2,
        3 => HDR_TAGS_V3,
        4 => HDR_TAGS_V4,
        _ => HDR_TAGS,
    };
    let rec = TlvRecord::parse(body, tags, UnknownTags::Reject)?;
    let region_field = rec.required(HDR_REGION, "checkpoint region missing")?;
    let region = codec::decode_region(region_field.value, UnknownTags::Reject)
        .map_err(|e| e.shifted(region_field.offset))?;
    let applied_index = rec.required(HDR_APPLIED_INDEX, "applied index missing")?.as_u64()?;
    let sessions = match rec.optional(HDR_SESSIONS)? {
        Some(f) => Some(SessionTable::decode(f.value).map_err(|e| e.shifted(f.offset))?),
        None => None,
    };
    let snapshot = match rec.optional(HDR_SNAPSHOT)? {
        Some(field) => Some(decode_snapshot(field.value).map_err(|e| e.shifted(field.offset))?),
        None => None,
    };
    let txn = match rec.optional(HDR_TXN)? {
        Some(f) => Some(
            TxnTable::decode(f.value, &region.start, region.end.as_deref())
                .map_err(|e| e.shifted(f.offset))?,
        ),
        None => None,
    };
    let dups = match rec.optional(HDR_DUPS)? {
        Some(f) => Some(DupTable::decode(f.value).map_err(|e| e.shifted(f.offset))?),
        None => None,
    };
    let sinks = match rec.optional(HDR_SINKS)? {
        Some(f) => Some(SinkTable::decode(f.value).map_err(|e| e.shifted(f.offset))?),
        None => None,
    };
    Ok(CheckpointHeader { region, applied_index, sessions, snapshot, txn, dups, sinks })
}

fn decode_snapshot(buf: &[u8]) -> DecodeResult<SnapshotMeta> {
    let rec = TlvRecord::parse(buf, SNAPSHOT_TAGS, UnknownTags::Reject)?;
    let term = rec.required(S_TERM, "snapshot term missing")?.as_u64()?;
    let ids = |tag| rec.repeated(tag).map(|f| f.as_u64()).collect::<DecodeResult<Vec<u64>>>();
    Ok(SnapshotMeta { term, voters: ids(S_VOTER)?, learners: ids(S_LEARNER)? })
}

/// A piece of a checkpoint file in transit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckpointChunk {
    /// Offset of `data` in the file.
    pub offset: u64,
    /// Length of the whole file.
    pub file_bytes: u64,
    /// The bytes.
    pub data: Bytes,
}

/// Streams a checkpoint file in bounded chunks (for Raft snapshots and duplication).
/// The bytes are slices of the mapped file: no copies.
#[derive(Debug)]
pub struct CheckpointChunks {
    data: Bytes,
    offset: usize,
    chunk_bytes: usize,
}

impl CheckpointChunks {
    /// Chunks of at most `chunk_bytes` (at least 1) of `file`.
    pub fn new(file: &CheckpointFile, chunk_bytes: usize) -> CheckpointChunks {
        CheckpointChunks { data: file.data.clone(), offset: 0, chunk_bytes: chunk_bytes.max(1) }
    }
}

impl Iterator for CheckpointChunks {
    type Item = CheckpointChunk;

    fn next(&mut self) -> Option<CheckpointChunk> {
        if self.offset >= self.data.len() {
            return None;
        }
        let end = (self.offset + self.chunk_bytes).min(self.data.len());
        let chunk = CheckpointChunk {
            offset: self.offset as u64,
            file_bytes: self.data.len() as u64,
            data: self.data.slice(self.offset..end),
        };
        self.offset = end;
        Some(chunk)
    }
}

#[cfg(test)]
#[path = "format_tests.rs"]
pub(crate) mod tests;
