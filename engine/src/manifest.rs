//! The per-store manifest: format version, clean-shutdown flag, hosted regions, their
//! checkpoints, and background-task state.
//!
//! ```text
//!  0          8          12         16         20         24         28
//!  +----------+----------+----------+----------+----------+----------+---------------+
//!  | magic    | version  | min      | body len | body     | header   | body: fields  |
//!  | 8 bytes  | u32 LE   | reader   | u32 LE   | crc32    | crc32 of | (see codec),  |
//!  |          |          | u32 LE   |          |          | 0..24    | body len bytes|
//!  +----------+----------+----------+----------+----------+----------+---------------+
//! ```
//!
//! The fixed header has its own checksum so that the version can be trusted, and the
//! compatibility gate ([`Compatibility::check`]) can run, before a byte of the body is
//! decoded. The body is a record of tagged fields; a reader looks for every field per
//! record, so a field added in a later version is `None` in an older file, never a
//! guess.
//!
//! Versions:
//!
//! - 1: store id, clean-shutdown flag, next file id, regions with checkpoint parts,
//!   task state.
//! - 2: adds `file_bytes` to checkpoint parts (optional; readers of version 1 skip
//!   it, so the minimum reader stays 1). Migration 1 -> 2 fills it in from the files.
//! - 3: adds `meta_index` to regions: the Raft index of the admin command (membership
//!   change, split, merge) that produced the region's metadata, so that replaying the
//!   log after a restart never applies one twice. The minimum reader becomes 3: a
//!   version-2 binary would drop the field when it rewrites the manifest, so it must
//!   refuse the file instead. Migration 2 -> 3 leaves it `None` (unknown): nothing
//!   recorded it before.
//! - 4: adds to regions `merge` (a merge prepared on this region as its source: the
//!   target and the index and term of the prepare command; a source in this state
//!   takes no writes) and `empty_at` (the region held no keys at this applied index
//!   and has had no checkpoint since: its durable image is empty as of that index, no
//!   file needed). The minimum reader becomes 4: an older binary would drop `merge`
//!   when it rewrites the manifest and let a merging source take writes again.
//!   Migration 3 -> 4 leaves both `None`.
//! - 5: adds the store's `incarnation`, a random number written when the store is
//!   first opened, and its `peer_floor`, an id from the cluster's allocator written
//!   when the store joined a running cluster (every peer of this store has a greater
//!   id). Both travel in the transport handshake, so that peers can tell a store that
//!   lost its disk from the one they knew (ARCHITECTURE.md, "Store identity"). The
//!   minimum reader becomes 5: an older binary would drop them when it rewrites the
//!   manifest, and the next start would take the store for a replaced one. Migration
//!   4 -> 5 leaves both `None` (unknown); the store writes an incarnation as it opens.
//!
//! The manifest is replaced atomically: written in full to `MANIFEST.tmp`, fsynced,
//! renamed over `MANIFEST`, and the directory fsynced.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::io;
use std::path::{Path, PathBuf};

use regionkv_wal::fs::{FileSystem, OpenMode};

use crate::codec::{self, DecodeError, DecodeResult, Decoder, TlvRecord, UnknownTags};
use crate::error::{Error, Result};
use crate::region::{Incarnation, PeerId, Region, RegionId, StoreId, intersect};
use crate::region_map::RegionMap;

/// Identifies a regionkv manifest.
pub(crate) const MAGIC: [u8; 8] = *b"rkvMAN\r\n";
/// The manifest format this binary writes.
pub const MANIFEST_FORMAT_VERSION: u32 = 5;
/// The oldest manifest format this binary can migrate from.
pub const OLDEST_MIGRATABLE_VERSION: u32 = 1;
/// The oldest reader version that can read what this binary writes.
pub const MIN_READER_VERSION: u32 = 5;
/// File name of the manifest inside the engine's directory.
pub const MANIFEST_FILE: &str = "MANIFEST";
/// File name a new manifest is written under before it is renamed.
pub const MANIFEST_TEMP_FILE: &str = "MANIFEST.tmp";
const HEADER_LEN: usize = 28;
/// Largest manifest this binary reads or writes.
pub const MAX_MANIFEST_BYTES: u64 = 256 << 20;

const _: () = assert!(MIN_READER_VERSION <= MANIFEST_FORMAT_VERSION);
const _: () =
    assert!(OLDEST_MIGRATABLE_VERSION >= 1 && OLDEST_MIGRATABLE_VERSION <= MANIFEST_FORMAT_VERSION);

// Store-level fields.
const F_STORE_ID: u16 = 1;
const F_CLEAN_SHUTDOWN: u16 = 2;
const F_NEXT_FILE_ID: u16 = 3;
const F_REGION: u16 = 4;
const F_TASK: u16 = 5;
// Since version 5.
const F_INCARNATION: u16 = 6;
const F_PEER_FLOOR: u16 = 7;
const STORE_TAGS: &[u16] =
    &[F_STORE_ID, F_CLEAN_SHUTDOWN, F_NEXT_FILE_ID, F_REGION, F_TASK, F_INCARNATION, F_PEER_FLOOR];
// Region entry fields.
const R_REGION: u16 = 1;
const R_CHECKPOINT: u16 = 2;
// Since version 3.
const R_META_INDEX: u16 = 3;
// Since version 4.
const R_MERGE: u16 = 4;
const R_EMPTY_AT: u16 = 5;
const REGION_ENTRY_TAGS: &[u16] = &[R_REGION, R_CHECKPOINT, R_META_INDEX, R_MERGE, R_EMPTY_AT];
// Merge state fields (since version 4).
const M_TARGET: u16 = 1;
const M_PREPARE_INDEX: u16 = 2;
const M_PREPARE_TERM: u16 = 3;
const MERGE_TAGS: &[u16] = &[M_TARGET, M_PREPARE_INDEX, M_PREPARE_TERM];
// Checkpoint reference fields.
const C_FILE_ID: u16 = 1;
const C_APPLIED_INDEX: u16 = 2;
const C_START: u16 = 3;
const C_END: u16 = 4;
const C_END_UNBOUNDED: u16 = 5;
/// Since version 2.
const C_FILE_BYTES: u16 = 6;
const CHECKPOINT_TAGS: &[u16] =
    &[C_FILE_ID, C_APPLIED_INDEX, C_START, C_END, C_END_UNBOUNDED, C_FILE_BYTES];
// Task fields.
const T_NAME: u16 = 1;
const T_DATA: u16 = 2;

/// What this binary can do with a manifest of a given format version.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compatibility {
    /// Readable as is.
    Compatible,
    /// Readable, then upgraded by the chained migrations `from -> ... -> to`.
    NeedsMigration {
        /// The version on disk.
        from: u32,
        /// The version this binary writes.
        to: u32,
    },
    /// Written by a newer binary for readers newer than this one: do not decode.
    TooNew {
        /// The version on disk.
        found: u32,
        /// The oldest reader the writer declared compatible.
        min_reader: u32,
    },
}

impl Compatibility {
    /// The gate. No code decodes a manifest body unless this says it may.
    pub fn check(version: u32, min_reader: u32) -> Compatibility {
        match version.cmp(&MANIFEST_FORMAT_VERSION) {
            std::cmp::Ordering::Equal => Compatibility::Compatible,
            // A newer writer that declared us able to read it: its extra fields are
            // optional and skipped.
            std::cmp::Ordering::Greater if min_reader <= MANIFEST_FORMAT_VERSION => {
                Compatibility::Compatible
            }
            std::cmp::Ordering::Greater => Compatibility::TooNew { found: version, min_reader },
            std::cmp::Ordering::Less => {
                Compatibility::NeedsMigration { from: version, to: MANIFEST_FORMAT_VERSION }
            }
        }
    }
}

/// A checkpoint file that holds part (or all) of a region's data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckpointRef {
    /// The file's number: the file is `<file_id as 16 hex digits>.ckpt`.
    pub file_id: u64,
    /// The applied index the file was taken at (for the region it was taken of).
    pub applied_index: u64,
    /// First key of the part of the file that belongs to this region.
    pub start: Vec<u8>,
    /// End of that part; `None` is unbounded.
    pub end: Option<Vec<u8>>,
    /// Length of the whole file (since format version 2; `None` in a part written by
    /// version 1 and not migrated). Checked before the file is mapped.
    pub file_bytes: Option<u64>,
}

/// A merge prepared on a region as its source: from the prepare command on, the region
/// takes no writes and waits to be merged into `target` or rolled back.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MergeState {
    /// The region it merges into.
    pub target: RegionId,
    /// Raft index of the prepare command in the source's log.
    pub prepare_index: u64,
    /// Raft term of that entry.
    pub prepare_term: u64,
}

/// A hosted region and where its durable data is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegionEntry {
    /// The region.
    pub region: Region,
    /// Checkpoint parts that together hold the region's durable image, sorted and
    /// disjoint. Usually one (the latest checkpoint of the region); after a split each
    /// part keeps its share of the parent's file, after a merge the target holds both
    /// sides' parts, until the region's next checkpoint replaces them all.
    pub checkpoints: Vec<CheckpointRef>,
    /// The Raft index of the admin command that produced `region` as it is (since
    /// format version 3; `None` when no such command was recorded).
    pub meta_index: Option<u64>,
    /// The merge this region is the prepared source of (since format version 4).
    pub merge: Option<MergeState>,
    /// The region held no keys at this applied index, and `checkpoints` is empty: the
    /// durable image is empty as of it (since format version 4).
    pub empty_at: Option<u64>,
}

/// The manifest of one store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Manifest {
    /// The format version it was read from, or [`MANIFEST_FORMAT_VERSION`] if new.
    pub format_version: u32,
    /// The store that owns the directory.
    pub store_id: StoreId,
    /// This life of the store's disk (since format version 5; `None` until the store
    /// first opens with a binary that writes it).
    pub incarnation: Option<Incarnation>,
    /// Every peer of this store has a greater id: an id the cluster allocated when the
    /// store joined it (since format version 5; `None` for a store that bootstrapped
    /// its cluster, or from before).
    pub peer_floor: Option<PeerId>,
    /// True if the engine was closed cleanly and nothing changed since.
    pub clean_shutdown: bool,
    /// The next checkpoint file number to use.
    pub next_file_id: u64,
    /// Hosted regions in key order.
    pub regions: Vec<RegionEntry>,
    /// Opaque state of background tasks (duplication, 2PC recovery, ...), by task name.
    /// Each owner versions its own bytes.
    pub tasks: BTreeMap<String, Vec<u8>>,
}

impl Manifest {
    /// An empty manifest of a new store.
    pub fn new(store_id: StoreId) -> Manifest {
        Manifest {
            format_version: MANIFEST_FORMAT_VERSION,
            store_id,
            incarnation: None,
            peer_floor: None,
            clean_shutdown: false,
            next_file_id: 1,
            regions: Vec::new(),
            tasks: BTreeMap::new(),
        }
    }

    /// Encodes in the current format.
    pub fn encode(&self) -> Vec<u8> {
        let mut body = Vec::new();
        codec::put_u64(&mut body, F_STORE_ID, self.store_id.0);
        codec::put_field(&mut body, F_CLEAN_SHUTDOWN, &[u8::from(self.clean_shutdown)]);
        codec::put_u64(&mut body, F_NEXT_FILE_ID, self.next_file_id);
        if let Some(incarnation) = self.incarnation {
            codec::put_u64(&mut body, F_INCARNATION, incarnation.0);
        }
        if let Some(floor) = self.peer_floor {
            codec::put_u64(&mut body, F_PEER_FLOOR, floor.0);
        }
        for entry in &self.regions {
            codec::put_nested(&mut body, F_REGION, |out| {
                codec::put_nested(out, R_REGION, |out| codec::put_region(out, &entry.region));
                for ckpt in &entry.checkpoints {
                    codec::put_nested(out, R_CHECKPOINT, |out| {
                        codec::put_u64(out, C_FILE_ID, ckpt.file_id);
                        codec::put_u64(out, C_APPLIED_INDEX, ckpt.applied_index);
                        codec::put_field(out, C_START, &ckpt.start);
                        codec::put_range_end(out, C_END, C_END_UNBOUNDED, ckpt.end.as_deref());
                        if let Some(bytes) = ckpt.file_bytes {
                            codec::put_u64(out, C_FILE_BYTES, bytes);
                        }
                    });
                }
                if let Some(index) = entry.meta_index {
                    codec::put_u64(out, R_META_INDEX, index);
                }
                if let Some(m) = entry.merge {
                    codec::put_nested(out, R_MERGE, |out| {
                        codec::put_u64(out, M_TARGET, m.target.0);
                        codec::put_u64(out, M_PREPARE_INDEX, m.prepare_index);
                        codec::put_u64(out, M_PREPARE_TERM, m.prepare_term);
                    });
                }
                if let Some(index) = entry.empty_at {
                    codec::put_u64(out, R_EMPTY_AT, index);
                }
            });
        }
        for (name, data) in &self.tasks {
            codec::put_nested(&mut body, F_TASK, |out| {
                codec::put_field(out, T_NAME, name.as_bytes());
                codec::put_field(out, T_DATA, data);
            });
        }
        let mut out = Vec::with_capacity(HEADER_LEN + body.len());
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&MANIFEST_FORMAT_VERSION.to_le_bytes());
        out.extend_from_slice(&MIN_READER_VERSION.to_le_bytes());
        out.extend_from_slice(&u32::try_from(body.len()).unwrap_or(u32::MAX).to_le_bytes());
        out.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
        let crc = crc32fast::hash(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out.extend_from_slice(&body);
        out
    }

    /// Reads the header and runs the gate, without decoding the body. Returns the
    /// format version, the minimum reader version and the gate's verdict.
    pub fn check_header(buf: &[u8]) -> Result<(u32, u32, Compatibility)> {
        Manifest::check_header_inner(buf).map_err(decode_error)
    }

    /// Decodes a manifest the gate allows; [`Compatibility::TooNew`] is refused here
    /// too, before the body is looked at.
    pub fn decode(buf: &[u8]) -> Result<Manifest> {
        Manifest::decode_inner(buf).map_err(decode_error)
    }

    fn check_header_inner(buf: &[u8]) -> DecodeResult<(u32, u32, Compatibility)> {
        let header = buf.get(..HEADER_LEN).ok_or(DecodeError::new(0, "shorter than a header"))?;
        if header[..8] != MAGIC {
            return Err(DecodeError::new(0, "bad magic (not a regionkv manifest)"));
        }
        if codec::u32_at(header, 24) != Some(crc32fast::hash(&header[..24])) {
            return Err(DecodeError::new(24, "header checksum mismatch"));
        }
        let mut d = Decoder::new(&header[8..]);
        let version = d.u32("header")?;
        let min_reader = d.u32("header")?;
        if version == 0 || version < OLDEST_MIGRATABLE_VERSION || min_reader > version {
            return Err(DecodeError::new(8, "impossible format version"));
        }
        Ok((version, min_reader, Compatibility::check(version, min_reader)))
    }

    fn decode_inner(buf: &[u8]) -> DecodeResult<Manifest> {
        let (version, _, compat) = Manifest::check_header_inner(buf)?;
        if let Compatibility::TooNew { .. } = compat {
            return Err(DecodeError::new(8, "format too new for this binary"));
        }
        let mut d = Decoder::new(&buf[16..HEADER_LEN]);
        let body_len = d.u32("header")? as usize;
        let body_crc = d.u32("header")?;
        let body = &buf[HEADER_LEN..];
        if body.len() != body_len {
            return Err(DecodeError::new(16, "body length differs from the file"));
        }
        if crc32fast::hash(body) != body_crc {
            return Err(DecodeError::new(20, "body checksum mismatch"));
        }
        let unknown =
            if version > MANIFEST_FORMAT_VERSION { UnknownTags::Skip } else { UnknownTags::Reject };
        decode_body(body, version, unknown).map_err(|e| e.shifted(HEADER_LEN))
    }
}

/// Edits the engine makes to the next manifest when regions or their images change.
impl Manifest {
    /// The checkpoint parts of region `id` (none if it is not listed).
    pub(crate) fn parts_of(&self, id: RegionId) -> Vec<CheckpointRef> {
        self.regions
            .iter()
            .find(|e| e.region.id == id)
            .map(|e| e.checkpoints.clone())
            .unwrap_or_default()
    }

    /// The numbers of every checkpoint file a region's image refers to.
    pub(crate) fn referenced_files(&self) -> BTreeSet<u64> {
        self.regions.iter().flat_map(|e| e.checkpoints.iter().map(|c| c.file_id)).collect()
    }

    /// Rewrites the region list from `map`. Each region keeps its checkpoint parts
    /// unless `parts_for` gives new ones.
    pub(crate) fn set_regions(
        &mut self,
        map: &RegionMap,
        parts_for: impl Fn(&Region) -> Option<Vec<CheckpointRef>>,
    ) {
        let mut old: HashMap<RegionId, RegionEntry> =
            self.regions.drain(..).map(|e| (e.region.id, e)).collect();
        self.regions = map
            .regions()
            .map(|region| {
                let mut entry = old.remove(&region.id).unwrap_or_else(|| RegionEntry {
                    region: region.clone(),
                    checkpoints: Vec::new(),
                    meta_index: None,
                    merge: None,
                    empty_at: None,
                });
                entry.region = region.clone();
                if let Some(parts) = parts_for(region) {
                    entry.checkpoints = parts;
                    entry.empty_at = None;
                }
                entry
            })
            .collect();
    }

    /// Records that the durable image of each of `ids` is empty as of `index`.
    pub(crate) fn set_empty_at(&mut self, ids: &[RegionId], index: u64) {
        let ids: HashSet<RegionId> = ids.iter().copied().collect();
        for entry in &mut self.regions {
            if ids.contains(&entry.region.id) {
                entry.checkpoints.clear();
                entry.empty_at = Some(index);
            }
        }
    }

    /// Records that the metadata of `ids` was produced by the admin command at `index`.
    pub(crate) fn set_meta_index(&mut self, ids: &[RegionId], index: u64) {
        let ids: HashSet<RegionId> = ids.iter().copied().collect();
        for entry in &mut self.regions {
            if ids.contains(&entry.region.id) {
                entry.meta_index = Some(index);
            }
        }
    }
}

/// The share of `parts` inside `region`.
pub(crate) fn restrict(parts: &[CheckpointRef], region: &Region) -> Vec<CheckpointRef> {
    parts
        .iter()
        .filter_map(|p| {
            let (start, end) =
                intersect((&p.start, p.end.as_deref()), (&region.start, region.end.as_deref()))?;
            Some(CheckpointRef {
                file_id: p.file_id,
                applied_index: p.applied_index,
                start: start.to_vec(),
                end: end.map(<[u8]>::to_vec),
                file_bytes: p.file_bytes,
            })
        })
        .collect()
}

fn decode_error(e: DecodeError) -> Error {
    Error::corruption(MANIFEST_FILE, e.offset as u64, e.reason)
}

fn decode_body(body: &[u8], version: u32, unknown: UnknownTags) -> DecodeResult<Manifest> {
    let rec = TlvRecord::parse(body, STORE_TAGS, unknown)?;
    let store_id = StoreId(rec.required(F_STORE_ID, "store id missing")?.as_u64()?);
    let clean_shutdown =
        rec.required(F_CLEAN_SHUTDOWN, "clean-shutdown flag missing")?.as_bool()?;
    let next_file_id = rec.required(F_NEXT_FILE_ID, "next file id missing")?.as_u64()?;
    let incarnation =
        rec.optional(F_INCARNATION)?.map(|f| f.as_u64()).transpose()?.map(Incarnation);
    let peer_floor = rec.optional(F_PEER_FLOOR)?.map(|f| f.as_u64()).transpose()?.map(PeerId);
    let mut regions: Vec<RegionEntry> = Vec::new();
    for field in rec.repeated(F_REGION) {
        let entry = decode_region_entry(field.value, unknown, next_file_id)
            .map_err(|e| e.shifted(field.offset))?;
        if let Some(prev) = regions.last()
            && prev.region.end.as_ref().is_none_or(|end| *end > entry.region.start)
        {
            return Err(DecodeError::new(field.offset, "regions overlap or are out of order"));
        }
        regions.push(entry);
    }
    let mut tasks = BTreeMap::new();
    for field in rec.repeated(F_TASK) {
        let (name, data) = TlvRecord::parse(field.value, &[T_NAME, T_DATA], unknown)
            .and_then(|t| {
                let name = t.required(T_NAME, "task name missing")?;
                let name = std::str::from_utf8(name.value)
                    .map_err(|_| DecodeError::new(name.offset, "task name is not UTF-8"))?;
                Ok((name.to_owned(), t.required(T_DATA, "task data missing")?.value.to_vec()))
            })
            .map_err(|e| e.shifted(field.offset))?;
        if tasks.insert(name, data).is_some() {
            return Err(DecodeError::new(field.offset, "task state listed twice"));
        }
    }
    Ok(Manifest {
        format_version: version,
        store_id,
        incarnation,
        peer_floor,
        clean_shutdown,
        next_file_id,
        regions,
        tasks,
    })
}

fn decode_region_entry(
    buf: &[u8],
    unknown: UnknownTags,
    next_file_id: u64,
) -> DecodeResult<RegionEntry> {
    let rec = TlvRecord::parse(buf, REGION_ENTRY_TAGS, unknown)?;
    let field = rec.required(R_REGION, "region missing")?;
    let region = codec::decode_region(field.value, unknown).map_err(|e| e.shifted(field.offset))?;
    let mut checkpoints: Vec<CheckpointRef> = Vec::new();
    for field in rec.repeated(R_CHECKPOINT) {
        let ckpt =
            decode_checkpoint_ref(field.value, unknown).map_err(|e| e.shifted(field.offset))?;
        let bad = |reason| Err(DecodeError::new(field.offset, reason));
        if ckpt.file_id >= next_file_id {
            return bad("checkpoint file id not below the next file id");
        }
        let inside = ckpt.start >= region.start
            && match (&ckpt.end, &region.end) {
                (_, None) => true,
                (Some(e), Some(r)) => e <= r,
                (None, Some(_)) => false,
            };
        if !inside || ckpt.end.as_ref().is_some_and(|e| *e <= ckpt.start) {
            return bad("checkpoint part outside its region or empty");
        }
        if let Some(prev) = checkpoints.last()
            && prev.end.as_ref().is_none_or(|end| *end > ckpt.start)
        {
            return bad("checkpoint parts overlap or are out of order");
        }
        checkpoints.push(ckpt);
    }
    let meta_index = rec.optional(R_META_INDEX)?.map(|f| f.as_u64()).transpose()?;
    let merge = match rec.optional(R_MERGE)? {
        None => None,
        Some(field) => {
            Some(decode_merge_state(field.value, unknown).map_err(|e| e.shifted(field.offset))?)
        }
    };
    let empty_at = rec.optional(R_EMPTY_AT)?.map(|f| f.as_u64()).transpose()?;
    if empty_at.is_some() && !checkpoints.is_empty() {
        return Err(DecodeError::new(0, "an empty image listed with checkpoint parts"));
    }
    Ok(RegionEntry { region, checkpoints, meta_index, merge, empty_at })
}

fn decode_merge_state(buf: &[u8], unknown: UnknownTags) -> DecodeResult<MergeState> {
    let rec = TlvRecord::parse(buf, MERGE_TAGS, unknown)?;
    Ok(MergeState {
        target: RegionId(rec.required(M_TARGET, "merge target missing")?.as_u64()?),
        prepare_index: rec.required(M_PREPARE_INDEX, "prepare index missing")?.as_u64()?,
        prepare_term: rec.required(M_PREPARE_TERM, "prepare term missing")?.as_u64()?,
    })
}

fn decode_checkpoint_ref(buf: &[u8], unknown: UnknownTags) -> DecodeResult<CheckpointRef> {
    let rec = TlvRecord::parse(buf, CHECKPOINT_TAGS, unknown)?;
    Ok(CheckpointRef {
        file_id: rec.required(C_FILE_ID, "checkpoint file id missing")?.as_u64()?,
        applied_index: rec.required(C_APPLIED_INDEX, "applied index missing")?.as_u64()?,
        start: rec.required(C_START, "checkpoint start missing")?.value.to_vec(),
        end: codec::range_end(&rec, C_END, C_END_UNBOUNDED)?,
        file_bytes: rec.optional(C_FILE_BYTES)?.map(|f| f.as_u64()).transpose()?,
    })
}

/// One explicit upgrade step of the manifest format.
#[derive(Clone, Copy, Debug)]
pub struct Migration {
    /// The version it upgrades from.
    pub from: u32,
    /// The version it produces (`from + 1`).
    pub to: u32,
    /// What it does, for the log.
    pub description: &'static str,
    /// The step; may read the store's files through the file system.
    pub run: fn(&mut Manifest, &dyn FileSystem, &Path) -> Result<()>,
}

/// Every migration, in order. Each released format version gets one step to the next.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        from: 1,
        to: 2,
        description: "record the length of every checkpoint file",
        run: fill_file_bytes,
    },
    Migration {
        from: 2,
        to: 3,
        description: "regions gain meta_index (unknown for regions written before)",
        run: no_meta_index,
    },
    Migration {
        from: 3,
        to: 4,
        description: "regions gain merge state and empty images (none before)",
        run: no_merge_state,
    },
    Migration {
        from: 4,
        to: 5,
        description: "the store gains an incarnation and a peer floor (unknown before)",
        run: no_incarnation,
    },
];

/// Migration 4 -> 5: no older binary recorded an incarnation or a peer floor.
#[expect(clippy::unnecessary_wraps, reason = "every migration step has the same signature")]
fn no_incarnation(manifest: &mut Manifest, _: &dyn FileSystem, _: &Path) -> Result<()> {
    manifest.incarnation = None;
    manifest.peer_floor = None;
    Ok(())
}

/// Migration 3 -> 4: no region of an older binary was merging or had an empty image.
#[expect(clippy::unnecessary_wraps, reason = "every migration step has the same signature")]
fn no_merge_state(manifest: &mut Manifest, _: &dyn FileSystem, _: &Path) -> Result<()> {
    for entry in &mut manifest.regions {
        entry.merge = None;
        entry.empty_at = None;
    }
    Ok(())
}

/// Migration 2 -> 3: nothing to fill in; `meta_index` stays `None` (unknown).
#[expect(clippy::unnecessary_wraps, reason = "every migration step has the same signature")]
fn no_meta_index(manifest: &mut Manifest, _: &dyn FileSystem, _: &Path) -> Result<()> {
    for entry in &mut manifest.regions {
        entry.meta_index = None;
    }
    Ok(())
}

const _: () = assert!(
    MIGRATIONS.len() as u32 == MANIFEST_FORMAT_VERSION - OLDEST_MIGRATABLE_VERSION,
    "one migration per version step"
);

/// Migration 1 -> 2: `file_bytes` of every checkpoint part, from the file itself.
fn fill_file_bytes(manifest: &mut Manifest, fs: &dyn FileSystem, dir: &Path) -> Result<()> {
    for entry in &mut manifest.regions {
        for part in &mut entry.checkpoints {
            let path = dir.join(crate::checkpoint::file_name(part.file_id));
            let file =
                fs.open(&path, OpenMode::Existing).map_err(|e| Error::io("open", &path, e))?;
            part.file_bytes = Some(file.len().map_err(|e| Error::io("stat", &path, e))?);
        }
    }
    Ok(())
}

/// Runs the chained migrations from `manifest.format_version` to the current version.
pub fn migrate(manifest: &mut Manifest, fs: &dyn FileSystem, dir: &Path) -> Result<Vec<u32>> {
    let mut steps = Vec::new();
    // Bounded by the number of migrations: each step raises the version by one.
    for _ in 0..=MIGRATIONS.len() {
        if manifest.format_version >= MANIFEST_FORMAT_VERSION {
            return Ok(steps);
        }
        let step =
            MIGRATIONS.iter().find(|m| m.from == manifest.format_version).ok_or_else(|| {
                Error::corruption(
                    dir.join(MANIFEST_FILE),
                    8,
                    format!("no migration from manifest version {}", manifest.format_version),
                )
            })?;
        tracing::info!(
            from = step.from,
            to = step.to,
            what = step.description,
            "migrating manifest"
        );
        (step.run)(manifest, fs, dir)?;
        manifest.format_version = step.to;
        steps.push(step.to);
    }
    Err(Error::corruption(dir.join(MANIFEST_FILE), 8, "migration chain does not end"))
}

/// Reads the manifest in `dir`: `None` if there is none. Runs the gate first and
/// returns its verdict with the manifest (migrations are the caller's next step).
pub fn read(fs: &dyn FileSystem, dir: &Path) -> Result<Option<(Manifest, Compatibility)>> {
    let path = dir.join(MANIFEST_FILE);
    let file = match fs.open(&path, OpenMode::Existing) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io("open", &path, e)),
    };
    let len = file.len().map_err(|e| Error::io("stat", &path, e))?;
    if len > MAX_MANIFEST_BYTES {
        return Err(Error::corruption(&path, 0, "manifest larger than the limit"));
    }
    let mut buf = vec![0u8; usize::try_from(len).unwrap_or(usize::MAX)];
    file.read_at(0, &mut buf).map_err(|e| Error::io("read", &path, e))?;
    let corrupt = |e: DecodeError| Error::corruption(&path, e.offset as u64, e.reason);
    let (_, _, compat) = Manifest::check_header_inner(&buf).map_err(corrupt)?;
    if let Compatibility::TooNew { found, min_reader } = compat {
        return Err(Error::TooNew {
            file: path,
            found,
            min_reader,
            supported: MANIFEST_FORMAT_VERSION,
        });
    }
    let manifest = Manifest::decode_inner(&buf).map_err(corrupt)?;
    Ok(Some((manifest, compat)))
}

/// Replaces the manifest in `dir` atomically and durably. An error leaves either the
/// old or the new manifest in place; the caller must treat it as fatal (an fsync is
/// never retried).
pub fn write(fs: &dyn FileSystem, dir: &Path, manifest: &Manifest) -> io::Result<()> {
    let bytes = manifest.encode();
    if bytes.len() as u64 > MAX_MANIFEST_BYTES {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "manifest larger than the limit"));
    }
    let tmp = dir.join(MANIFEST_TEMP_FILE);
    match fs.remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let file = fs.open(&tmp, OpenMode::CreateNew)?;
    file.write_at(0, &bytes)?;
    file.sync_data()?;
    fs.rename(&tmp, &dir.join(MANIFEST_FILE))?;
    fs.sync_dir(dir)
}

/// Path of the manifest in `dir`.
pub fn path(dir: &Path) -> PathBuf {
    dir.join(MANIFEST_FILE)
}

#[cfg(test)]
pub(crate) mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::region::{Epoch, Peer};

    pub(crate) fn sample() -> Manifest {
        let mut m = Manifest::new(StoreId(5));
        m.incarnation = Some(Incarnation(0x5eed_cafe));
        m.peer_floor = Some(PeerId(1004));
        m.clean_shutdown = true;
        m.next_file_id = 9;
        m.regions.push(RegionEntry {
            region: Region {
                id: RegionId(1),
                start: Vec::new(),
                end: Some(b"m".to_vec()),
                epoch: Epoch { version: 2, conf_ver: 3 },
                peers: vec![Peer { id: PeerId(11), store: StoreId(5) }],
            },
            checkpoints: vec![
                CheckpointRef {
                    file_id: 3,
                    applied_index: 40,
                    start: Vec::new(),
                    end: Some(b"g".to_vec()),
                    file_bytes: Some(1000),
                },
                CheckpointRef {
                    file_id: 4,
                    applied_index: 12,
                    start: b"g".to_vec(),
                    end: Some(b"m".to_vec()),
                    file_bytes: None,
                },
            ],
            meta_index: Some(37),
            merge: Some(MergeState { target: RegionId(2), prepare_index: 36, prepare_term: 4 }),
            empty_at: None,
        });
        m.regions.push(RegionEntry {
            region: Region::new(RegionId(2), b"m".to_vec(), None),
            checkpoints: Vec::new(),
            meta_index: None,
            merge: None,
            empty_at: Some(12),
        });
        m.tasks.insert("duplication".into(), b"\x01stage".to_vec());
        m
    }

    #[test]
    fn round_trips() {
        let m = sample();
        assert_eq!(Manifest::decode(&m.encode()).unwrap(), m);
    }

    #[test]
    fn the_gate() {
        let v = MANIFEST_FORMAT_VERSION;
        assert_eq!(Compatibility::check(v, 1), Compatibility::Compatible);
        assert_eq!(Compatibility::check(v + 1, v), Compatibility::Compatible);
        assert_eq!(
            Compatibility::check(v + 1, v + 1),
            Compatibility::TooNew { found: v + 1, min_reader: v + 1 }
        );
        let mut bytes = sample().encode();
        bytes[8..12].copy_from_slice(&(v + 1).to_le_bytes());
        bytes[12..16].copy_from_slice(&(v + 1).to_le_bytes());
        let crc = crc32fast::hash(&bytes[..24]);
        bytes[24..28].copy_from_slice(&crc.to_le_bytes());
        assert!(matches!(Manifest::check_header(&bytes), Ok((_, _, Compatibility::TooNew { .. }))));
        assert!(Manifest::decode(&bytes).is_err(), "a too-new body is never decoded");
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = Manifest::decode(&bytes);
            let mut framed = sample().encode()[..HEADER_LEN].to_vec();
            framed.extend_from_slice(&bytes);
            let _ = Manifest::decode(&framed);
            // A valid frame around random fields exercises the body decoder itself.
            let mut m = sample().encode()[..HEADER_LEN].to_vec();
            m[16..20].copy_from_slice(&(bytes.len() as u32).to_le_bytes());
            m[20..24].copy_from_slice(&crc32fast::hash(&bytes).to_le_bytes());
            let crc = crc32fast::hash(&m[..24]);
            m[24..28].copy_from_slice(&crc.to_le_bytes());
            m.extend_from_slice(&bytes);
            let _ = Manifest::decode(&m);
        }

        #[test]
        fn every_single_bit_flip_is_detected(tasks in 0usize..3) {
            let mut m = sample();
            for i in 0..tasks {
                m.tasks.insert(format!("t{i}"), vec![i as u8; i]);
            }
            let bytes = m.encode();
            for bit in 0..bytes.len() * 8 {
                let mut damaged = bytes.clone();
                damaged[bit / 8] ^= 1 << (bit % 8);
                prop_assert!(Manifest::decode(&damaged).is_err(), "flip of bit {} unnoticed", bit);
            }
        }
    }
}
