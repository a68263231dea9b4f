//! [`Engine`]: one store's state machine, as the Raft layer sees it.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use bytes::Bytes;
use parking_lot::{Mutex, RwLock};
use regionkv_wal::fs::{DIRECT_IO_ALIGN, File, FileSystem, OpenMode};

use crate::checkpoint::{
    CheckpointChunk, CheckpointChunks, CheckpointFile, CheckpointHeader, CheckpointStats, Encoder,
};
use crate::error::{Error, Result};
use crate::manifest::{self, CheckpointRef, Compatibility, Manifest, MergeState, RegionEntry};
use crate::memtable::{Batch, Found, MAX_SEQ, Memtable, Seq, Visibility};
use crate::pins::{PinLedger, RoundId};
use crate::region::{Epoch, Peer, Region, RegionId, StoreId, in_range, intersect};
use crate::region_map::RegionMap;
use crate::round::ApplyRound;

/// Suffix of checkpoint files.
const CHECKPOINT_SUFFIX: &str = ".ckpt";
/// Suffix of files being written; removed by recovery.
const TEMP_SUFFIX: &str = ".tmp";
/// Pieces a checkpoint writer leaves in the page cache behind the one it writes
/// (their writeback is under way) before it drops them; see `DirectWriter`.
const EVICT_BEHIND_BUFFERS: usize = 2;
/// Largest checkpoint a receiver accepts.
pub const MAX_CHECKPOINT_BYTES: u64 = 1 << 40;

/// How to open an [`Engine`].
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct EngineOptions {
    /// The store this engine belongs to; checked against the manifest.
    pub store_id: StoreId,
    /// Largest key. Default 64 KiB.
    pub max_key_bytes: usize,
    /// Largest value. Default 32 MiB.
    pub max_value_bytes: usize,
    /// Largest sum of key and value bytes buffered in one apply round. Default 256 MiB.
    pub max_round_bytes: usize,
    /// Checkpoint bytes buffered between writes to the file. Default 4 MiB.
    pub checkpoint_write_buffer_bytes: usize,
}

impl EngineOptions {
    /// Defaults for store `store_id`.
    pub fn new(store_id: StoreId) -> EngineOptions {
        EngineOptions {
            store_id,
            max_key_bytes: 64 << 10,
            max_value_bytes: 32 << 20,
            max_round_bytes: 256 << 20,
            checkpoint_write_buffer_bytes: 4 << 20,
        }
    }

    /// Sets [`EngineOptions::checkpoint_write_buffer_bytes`].
    #[must_use]
    pub fn checkpoint_write_buffer_bytes(mut self, bytes: usize) -> Self {
        self.checkpoint_write_buffer_bytes = bytes;
        self
    }

    /// Sets [`EngineOptions::max_round_bytes`].
    #[must_use]
    pub fn max_round_bytes(mut self, bytes: usize) -> Self {
        self.max_round_bytes = bytes;
        self
    }

    fn validate(&self) -> Result<()> {
        if self.max_key_bytes == 0 || self.max_key_bytes > u32::MAX as usize / 2 {
            return Err(Error::InvalidOptions("max_key_bytes must be in 1..2^31".into()));
        }
        if self.max_value_bytes > u32::MAX as usize / 2 {
            return Err(Error::InvalidOptions("max_value_bytes must be below 2^31".into()));
        }
        if self.checkpoint_write_buffer_bytes == 0 {
            return Err(Error::InvalidOptions("checkpoint_write_buffer_bytes must be > 0".into()));
        }
        Ok(())
    }
}

/// Size limits a round checks.
#[derive(Clone, Copy, Debug)]
#[allow(clippy::struct_field_names, reason = "the names of EngineOptions' fields")]
pub(crate) struct Limits {
    pub max_key_bytes: usize,
    pub max_value_bytes: usize,
    pub max_round_bytes: usize,
}

/// What [`Engine::open`] found and did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RecoveryInfo {
    /// True if the directory was new.
    pub created: bool,
    /// True if the engine had been closed cleanly.
    pub clean_shutdown: bool,
    /// Manifest versions migrated through, in order (empty if none).
    pub migrated_to: Vec<u32>,
    /// Regions hosted.
    pub regions: usize,
    /// Key/value pairs loaded from checkpoints.
    pub entries_loaded: u64,
    /// Leftover files removed (temporary and unreferenced checkpoint files).
    pub removed_files: Vec<String>,
}

/// A checkpoint just written.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct CheckpointMeta {
    /// The region as it was checkpointed.
    pub region: Region,
    /// The applied index given by the caller.
    pub applied_index: u64,
    /// The snapshot the image was read at.
    pub seq: Seq,
    /// The file's number.
    pub file_id: u64,
    /// The file.
    pub path: PathBuf,
    /// Totals.
    pub stats: CheckpointStats,
}

/// Memory held by the memtable.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct MemoryStats {
    /// Bytes charged for every entry (see [`crate::ENTRY_OVERHEAD_BYTES`]).
    pub total_bytes: u64,
    /// Entries (versions and tombstones).
    pub entries: usize,
    /// Bytes charged per hosted region, in key order.
    pub regions: Vec<(RegionId, u64)>,
}

/// What one [`Engine::gc`] call did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct GcStats {
    /// Distinct keys looked at.
    pub keys: usize,
    /// Bytes freed.
    pub bytes_freed: u64,
    /// True if the sweep reached the end of the key space (the next call starts over).
    pub wrapped: bool,
}

/// Serialized by `Inner::commit`.
#[derive(Debug)]
struct CommitState {
    /// The sequence number of the next write.
    next_seq: u64,
    /// Where the next GC sweep continues.
    gc_cursor: Option<Vec<u8>>,
}

#[derive(Debug)]
struct RegionState {
    map: RegionMap,
    /// Bytes charged per hosted region; updated under the commit lock.
    bytes: HashMap<RegionId, AtomicU64>,
}

#[derive(Debug)]
struct Durable {
    /// The manifest as last made durable.
    manifest: Manifest,
    /// Next checkpoint file number (>= the manifest's; never reused in one run).
    next_file_id: u64,
}

#[derive(Debug)]
pub(crate) struct Inner {
    fs: Arc<dyn FileSystem>,
    dir: PathBuf,
    options: EngineOptions,
    memtable: Memtable,
    // Lock order: durable -> commit -> regions -> pins -> snapshots. The durable lock
    // serializes every file-system change (checkpoints, manifest), the commit lock every
    // change of the memtable and of region byte counts.
    durable: Mutex<Durable>,
    commit: Mutex<CommitState>,
    regions: RwLock<RegionState>,
    pins: Mutex<PinLedger>,
    /// Live snapshots: sequence number -> how many.
    snapshots: Mutex<BTreeMap<u64, u32>>,
    /// Every write up to this sequence number is applied; snapshots read at it.
    visible_seq: AtomicU64,
    next_round: AtomicU64,
    failure: Mutex<Option<Arc<str>>>,
    closed: AtomicBool,
    recovery: RecoveryInfo,
}

/// The in-memory MVCC state machine of one store. See the crate docs.
///
/// Cloning is cheap; clones share the engine.
#[derive(Clone, Debug)]
pub struct Engine {
    inner: Arc<Inner>,
}

fn checkpoint_name(file_id: u64) -> String {
    format!("{file_id:016x}{CHECKPOINT_SUFFIX}")
}

fn parse_checkpoint_name(name: &str) -> Option<u64> {
    let hex = name.strip_suffix(CHECKPOINT_SUFFIX)?;
    (hex.len() == 16).then(|| u64::from_str_radix(hex, 16).ok()).flatten()
}

impl Engine {
    /// Opens (or creates) the engine in `dir`: reads the manifest through the
    /// compatibility gate, runs migrations, removes leftover temporary and
    /// unreferenced files, and loads every hosted region's checkpoints.
    pub fn open(
        fs: Arc<dyn FileSystem>,
        dir: impl AsRef<Path>,
        options: EngineOptions,
    ) -> Result<Engine> {
        options.validate()?;
        let dir = dir.as_ref().to_owned();
        fs.create_dir_all(&dir).map_err(|e| Error::io("create_dir_all", &dir, e))?;
        let names = fs.list(&dir).map_err(|e| Error::io("list", &dir, e))?;
        let mut recovery = RecoveryInfo::default();

        let (mut manifest, compat) = if let Some(found) = manifest::read(fs.as_ref(), &dir)? {
            found
        } else {
            {
                if names.iter().any(|n| parse_checkpoint_name(n).is_some()) {
                    return Err(Error::corruption(
                        manifest::path(&dir),
                        0,
                        "manifest missing but checkpoint files present",
                    ));
                }
                recovery.created = true;
                (Manifest::new(options.store_id), Compatibility::Compatible)
            }
        };
        if manifest.store_id != options.store_id {
            return Err(Error::StoreMismatch {
                expected: options.store_id,
                found: manifest.store_id,
            });
        }
        if let Compatibility::NeedsMigration { .. } = compat {
            recovery.migrated_to = manifest::migrate(&mut manifest, fs.as_ref(), &dir)?;
        }
        recovery.clean_shutdown = manifest.clean_shutdown;
        let map = RegionMap::with_regions(manifest.regions.iter().map(|e| e.region.clone()))
            .map_err(|e| Error::corruption(manifest::path(&dir), 0, e.to_string()))?;

        // Leftovers: temporary files of interrupted writes, and checkpoint files that
        // no durable manifest references (written but never installed, or replaced).
        let referenced: BTreeSet<u64> =
            manifest.regions.iter().flat_map(|e| e.checkpoints.iter().map(|c| c.file_id)).collect();
        for name in &names {
            let stale = name.ends_with(TEMP_SUFFIX)
                || parse_checkpoint_name(name).is_some_and(|id| !referenced.contains(&id));
            if stale {
                let path = dir.join(name);
                fs.remove_file(&path).map_err(|e| Error::io("remove", &path, e))?;
                recovery.removed_files.push(name.clone());
            }
        }
        if !recovery.removed_files.is_empty() {
            fs.sync_dir(&dir).map_err(|e| Error::io("sync_dir", &dir, e))?;
        }

        // Load checkpoints: each part at its own sequence number.
        let memtable = Memtable::new();
        let mut seq = 0u64;
        let mut files: HashMap<u64, CheckpointFile> = HashMap::new();
        let mut bytes: HashMap<RegionId, AtomicU64> = HashMap::new();
        for entry in &manifest.regions {
            for part in &entry.checkpoints {
                seq += 1;
                // A file is verified as its first part loads (one pass over it); the
                // parts of other regions that share it load from the verified image.
                let (entries, charged) = if let Some(file) = files.get(&part.file_id) {
                    load_part(&memtable, file, entry, part, seq)
                } else {
                    let (file, entries, charged) =
                        open_and_load_part(fs.as_ref(), &dir, &memtable, entry, part, seq)?;
                    files.insert(part.file_id, file);
                    (entries, charged)
                };
                recovery.entries_loaded += entries;
                bytes.entry(entry.region.id).or_default().fetch_add(charged, Ordering::Relaxed);
            }
        }
        drop(files);
        for region in map.regions() {
            bytes.entry(region.id).or_default();
        }
        recovery.regions = map.len();

        // From now on a crash is not a clean shutdown.
        manifest.clean_shutdown = false;
        manifest.format_version = manifest::MANIFEST_FORMAT_VERSION;
        manifest::write(fs.as_ref(), &dir, &manifest)
            .map_err(|e| Error::io("write manifest", manifest::path(&dir), e))?;

        let next_file_id = manifest.next_file_id;
        let inner = Inner {
            fs,
            dir,
            options,
            memtable,
            durable: Mutex::new(Durable { manifest, next_file_id }),
            commit: Mutex::new(CommitState { next_seq: seq + 1, gc_cursor: None }),
            regions: RwLock::new(RegionState { map, bytes }),
            pins: Mutex::new(PinLedger::default()),
            snapshots: Mutex::new(BTreeMap::new()),
            visible_seq: AtomicU64::new(seq),
            next_round: AtomicU64::new(1),
            failure: Mutex::new(None),
            closed: AtomicBool::new(false),
            recovery,
        };
        tracing::info!(dir = %inner.dir.display(), recovery = ?inner.recovery, "engine opened");
        Ok(Engine { inner: Arc::new(inner) })
    }

    /// What [`Engine::open`] found and did.
    pub fn recovery(&self) -> &RecoveryInfo {
        &self.inner.recovery
    }

    /// The directory of the engine.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// Starts an apply round. See [`ApplyRound`].
    pub fn begin_round(&self) -> ApplyRound<'_> {
        ApplyRound::new(self, self.inner.next_round.fetch_add(1, Ordering::Relaxed))
    }

    /// A consistent read view at the latest committed round. It pins the versions it
    /// can see until dropped.
    pub fn snapshot(&self) -> Snapshot {
        let mut snapshots = self.inner.snapshots.lock();
        // Read under the registry lock: a commit publishes its sequence number before
        // it reads the registry to decide what to prune (see `commit_writes`).
        let seq = self.inner.visible_seq.load(Ordering::Acquire);
        *snapshots.entry(seq).or_insert(0) += 1;
        Snapshot { inner: self.inner.clone(), seq }
    }

    /// The sequence number of the latest committed write.
    pub fn visible_seq(&self) -> Seq {
        Seq(self.inner.visible_seq.load(Ordering::Acquire))
    }

    /// Hosted regions in key order.
    pub fn regions(&self) -> Vec<Region> {
        self.inner.regions.read().map.regions().cloned().collect()
    }

    /// The hosted region `id`.
    pub fn region(&self, id: RegionId) -> Option<Region> {
        self.inner.regions.read().map.get(id).cloned()
    }

    /// The hosted region containing `key`.
    pub fn region_for_key(&self, key: &[u8]) -> Option<Region> {
        self.inner.regions.read().map.region_for_key(key).cloned()
    }

    /// Hosted regions overlapping `[start, end)` (`end == None`: unbounded).
    pub fn overlapping(&self, start: &[u8], end: Option<&[u8]>) -> Vec<Region> {
        self.inner.regions.read().map.overlapping(start, end).cloned().collect()
    }

    /// A copy of the region map.
    pub fn region_map(&self) -> RegionMap {
        self.inner.regions.read().map.clone()
    }

    /// Open rounds that pin region `id`.
    pub fn pins(&self, id: RegionId) -> u32 {
        self.inner.pins.lock().count(id)
    }

    /// Pins held over all regions (zero when no round is open).
    pub fn total_pins(&self) -> u64 {
        let pins = self.inner.pins.lock();
        debug_assert!(pins.is_consistent());
        pins.total()
    }

    /// Memory charged to the memtable, in total and per region.
    pub fn memory(&self) -> MemoryStats {
        let regions = self.inner.regions.read();
        MemoryStats {
            total_bytes: self.inner.memtable.bytes(),
            entries: self.inner.memtable.len(),
            regions: regions
                .map
                .regions()
                .map(|r| {
                    let b = regions.bytes.get(&r.id).map_or(0, |b| b.load(Ordering::Relaxed));
                    (r.id, b)
                })
                .collect(),
        }
    }

    /// Hosts a new, empty region in a range this store does not host yet (bootstrap,
    /// or a new replica whose data will come by log replay).
    pub fn insert_region(&self, region: Region) -> Result<()> {
        let mut durable = self.inner.durable.lock();
        self.inner.check_usable()?;
        let _commit = self.inner.commit.lock();
        let mut regions = self.inner.regions.write();
        let mut map = regions.map.clone();
        let (id, start, end) = (region.id, region.start.clone(), region.end.clone());
        map.insert(region)?;
        let mut next = durable.manifest.clone();
        set_regions(&mut next, &map, |_| None);
        self.inner.persist(&mut durable, next)?;
        let bytes = self.inner.memtable.range_bytes(&start, end.as_deref());
        regions.bytes.insert(id, AtomicU64::new(bytes));
        regions.map = map;
        Ok(())
    }

    /// Stops hosting region `id` and drops its data. Fails with
    /// [`Error::RegionBusy`] while an open round pins it. Snapshots taken earlier no
    /// longer see the region's keys.
    pub fn remove_region(&self, id: RegionId) -> Result<Region> {
        let mut durable = self.inner.durable.lock();
        self.inner.check_usable()?;
        let _commit = self.inner.commit.lock();
        let mut regions = self.inner.regions.write();
        let pins = self.inner.pins.lock().count(id);
        if pins > 0 {
            return Err(Error::RegionBusy { region: id, pins });
        }
        let mut map = regions.map.clone();
        let region = map.remove(id)?.ok_or(Error::RegionNotFound { region: id })?;
        let mut next = durable.manifest.clone();
        set_regions(&mut next, &map, |_| None);
        self.inner.persist(&mut durable, next)?;
        self.inner.memtable.remove_range(&region.start, region.end.as_deref());
        regions.bytes.remove(&id);
        regions.map = map;
        Ok(region)
    }

    /// Splits region `id` at `split_keys`; see [`RegionMap::split`]. Moves no data:
    /// children inherit the parent's checkpoint parts (each its share), its pins and
    /// its epoch (bumped). Returns the parts in key order.
    pub fn split(
        &self,
        id: RegionId,
        split_keys: &[Vec<u8>],
        new_ids: &[RegionId],
    ) -> Result<Vec<Region>> {
        let mut durable = self.inner.durable.lock();
        self.inner.check_usable()?;
        let _commit = self.inner.commit.lock();
        let mut regions = self.inner.regions.write();
        if regions.map.get(id).is_none() {
            return Err(Error::RegionNotFound { region: id });
        }
        let mut map = regions.map.clone();
        let parts = map.split(id, split_keys, new_ids)?;
        let parent_parts = parts_of(&durable.manifest, id);
        let mut next = durable.manifest.clone();
        set_regions(&mut next, &map, |region| {
            parts.iter().any(|p| p.id == region.id).then(|| restrict(&parent_parts, region))
        });
        self.inner.persist(&mut durable, next)?;
        let mut moved = 0u64;
        for part in &parts[1..] {
            let b = self.inner.memtable.range_bytes(&part.start, part.end.as_deref());
            moved += b;
            regions.bytes.insert(part.id, AtomicU64::new(b));
        }
        if let Some(b) = regions.bytes.get(&id) {
            let left = b.load(Ordering::Relaxed).saturating_sub(moved);
            b.store(left, Ordering::Relaxed);
        }
        let children: Vec<RegionId> = parts[1..].iter().map(|p| p.id).collect();
        self.inner.pins.lock().on_split(id, &children);
        regions.map = map;
        Ok(parts)
    }

    /// Merges region `source` into its neighbour `target`; see [`RegionMap::merge`].
    /// Moves no data: the target takes over the source's checkpoint parts and pins.
    /// Returns the grown target.
    pub fn merge(&self, source: RegionId, target: RegionId) -> Result<Region> {
        let mut durable = self.inner.durable.lock();
        self.inner.check_usable()?;
        let _commit = self.inner.commit.lock();
        let mut regions = self.inner.regions.write();
        for id in [source, target] {
            if regions.map.get(id).is_none() {
                return Err(Error::RegionNotFound { region: id });
            }
        }
        let mut map = regions.map.clone();
        let merged = map.merge(source, target)?;
        let mut parts = parts_of(&durable.manifest, source);
        parts.extend(parts_of(&durable.manifest, target));
        parts.sort_by(|a, b| a.start.cmp(&b.start));
        let mut next = durable.manifest.clone();
        set_regions(&mut next, &map, |region| (region.id == target).then(|| parts.clone()));
        self.inner.persist(&mut durable, next)?;
        let moved = regions.bytes.remove(&source).map_or(0, AtomicU64::into_inner);
        if let Some(b) = regions.bytes.get(&target) {
            b.fetch_add(moved, Ordering::Relaxed);
        }
        self.inner.pins.lock().on_merge(source, target);
        regions.map = map;
        Ok(merged)
    }

    /// Splits region `id` as [`Engine::split`] does, and makes the result a checkpoint
    /// barrier: every resulting region is checkpointed (the parent at `at_index`, the
    /// Raft index of the split; each child at `child_index`, where its own log starts)
    /// before one manifest update switches regions, checkpoints and `meta_index`
    /// together. After a crash either nothing of the split is durable, or all of it:
    /// no region's durable state ever depends on another region's log.
    pub fn split_at(
        &self,
        id: RegionId,
        split_keys: &[Vec<u8>],
        new_ids: &[RegionId],
        at_index: u64,
        child_index: u64,
    ) -> Result<Vec<Region>> {
        let mut durable = self.inner.durable.lock();
        self.inner.check_usable()?;
        let _commit = self.inner.commit.lock();
        let mut regions = self.inner.regions.write();
        if regions.map.get(id).is_none() {
            return Err(Error::RegionNotFound { region: id });
        }
        let mut map = regions.map.clone();
        let parts = map.split(id, split_keys, new_ids)?;
        // The commit lock is held: the snapshot is the state as of the split's index.
        let snapshot = self.snapshot();
        // What each part is charged for: the length its checkpoint is estimated at, and
        // (the children's) the charges that move below. Every change to the memtable
        // takes the commit lock, so these are the charges after the checkpoints too.
        let child_bytes: Vec<u64> = parts[1..]
            .iter()
            .map(|part| self.inner.memtable.range_bytes(&part.start, part.end.as_deref()))
            .collect();
        let moved: u64 = child_bytes.iter().sum();
        let parent_bytes =
            regions.bytes.get(&id).map_or(0, |b| b.load(Ordering::Relaxed)).saturating_sub(moved);
        let mut refs = Vec::with_capacity(parts.len());
        for (i, part) in parts.iter().enumerate() {
            let (applied_index, estimate_bytes) =
                if i == 0 { (at_index, parent_bytes) } else { (child_index, child_bytes[i - 1]) };
            refs.push(self.write_whole_checkpoint(
                &mut durable,
                part,
                applied_index,
                &snapshot,
                estimate_bytes,
            )?);
        }
        let mut next = durable.manifest.clone();
        next.next_file_id = durable.next_file_id;
        let position: HashMap<RegionId, usize> =
            parts.iter().enumerate().map(|(i, p)| (p.id, i)).collect();
        set_regions(&mut next, &map, |region| {
            let i = *position.get(&region.id)?;
            Some(refs[i].iter().cloned().collect())
        });
        if refs[0].is_none() {
            set_empty_at(&mut next, &[id], at_index);
        }
        let empty: Vec<RegionId> = parts[1..]
            .iter()
            .zip(&refs[1..])
            .filter(|(_, r)| r.is_none())
            .map(|(p, _)| p.id)
            .collect();
        set_empty_at(&mut next, &empty, child_index);
        set_meta_index(&mut next, &[id], at_index);
        set_meta_index(&mut next, new_ids, child_index);
        self.inner.persist(&mut durable, next)?;
        for (part, &b) in parts[1..].iter().zip(&child_bytes) {
            regions.bytes.insert(part.id, AtomicU64::new(b));
        }
        if let Some(b) = regions.bytes.get(&id) {
            let left = b.load(Ordering::Relaxed).saturating_sub(moved);
            b.store(left, Ordering::Relaxed);
        }
        let children: Vec<RegionId> = parts[1..].iter().map(|p| p.id).collect();
        self.inner.pins.lock().on_split(id, &children);
        regions.map = map;
        Ok(parts)
    }

    /// Merges `source` into `target` as [`Engine::merge`] does, and makes it a
    /// checkpoint barrier: the merged target is checkpointed at `at_index` (the Raft
    /// index of the merge in the target's log) before one manifest update removes the
    /// source and records the target's new range, checkpoint and `meta_index`.
    pub fn merge_at(&self, source: RegionId, target: RegionId, at_index: u64) -> Result<Region> {
        let mut durable = self.inner.durable.lock();
        self.inner.check_usable()?;
        let _commit = self.inner.commit.lock();
        let mut regions = self.inner.regions.write();
        for id in [source, target] {
            if regions.map.get(id).is_none() {
                return Err(Error::RegionNotFound { region: id });
            }
        }
        let mut map = regions.map.clone();
        let merged = map.merge(source, target)?;
        let snapshot = self.snapshot();
        let estimate_bytes = [source, target]
            .iter()
            .filter_map(|id| regions.bytes.get(id))
            .map(|b| b.load(Ordering::Relaxed))
            .sum();
        let whole = self.write_whole_checkpoint(
            &mut durable,
            &merged,
            at_index,
            &snapshot,
            estimate_bytes,
        )?;
        let mut next = durable.manifest.clone();
        next.next_file_id = durable.next_file_id;
        set_regions(&mut next, &map, |region| {
            (region.id == target).then(|| whole.iter().cloned().collect())
        });
        if whole.is_none() {
            set_empty_at(&mut next, &[target], at_index);
        }
        set_meta_index(&mut next, &[target], at_index);
        self.inner.persist(&mut durable, next)?;
        let moved = regions.bytes.remove(&source).map_or(0, AtomicU64::into_inner);
        if let Some(b) = regions.bytes.get(&target) {
            b.fetch_add(moved, Ordering::Relaxed);
        }
        self.inner.pins.lock().on_merge(source, target);
        regions.map = map;
        Ok(merged)
    }

    /// Writes a checkpoint of `region` (as given, not as the map has it) from
    /// `snapshot`; the caller records it in the next manifest. Writes nothing and
    /// returns `None` if the region holds no keys: its image is empty (`empty_at`).
    /// `estimate_bytes` is about how long the file will be (what the region is charged
    /// for; see `Inner::write_checkpoint`); the callers hold the region map's lock, so
    /// they pass it in.
    fn write_whole_checkpoint(
        &self,
        durable: &mut Durable,
        region: &Region,
        applied_index: u64,
        snapshot: &Snapshot,
        estimate_bytes: u64,
    ) -> Result<Option<CheckpointRef>> {
        if snapshot.scan(&region.start, region.end.as_deref(), 1).is_empty() {
            return Ok(None);
        }
        let file_id = durable.next_file_id;
        durable.next_file_id += 1;
        let header = CheckpointHeader { region: region.clone(), applied_index };
        let stats = self.inner.write_checkpoint(file_id, &header, snapshot, estimate_bytes)?;
        Ok(Some(CheckpointRef {
            file_id,
            applied_index,
            start: region.start.clone(),
            end: region.end.clone(),
            file_bytes: Some(stats.file_bytes),
        }))
    }

    /// Replaces the peers of region `id`, bumping its `conf_ver`.
    ///
    /// `at_index` is the Raft index of the membership change; it is recorded with the
    /// region (see [`Engine::meta_index`]).
    pub fn change_peers(&self, id: RegionId, peers: Vec<Peer>, at_index: u64) -> Result<Region> {
        let mut durable = self.inner.durable.lock();
        self.inner.check_usable()?;
        let mut regions = self.inner.regions.write();
        if regions.map.get(id).is_none() {
            return Err(Error::RegionNotFound { region: id });
        }
        let mut map = regions.map.clone();
        let region = map.change_peers(id, peers)?;
        let mut next = durable.manifest.clone();
        set_regions(&mut next, &map, |_| None);
        set_meta_index(&mut next, &[id], at_index);
        self.inner.persist(&mut durable, next)?;
        regions.map = map;
        Ok(region)
    }

    /// Writes a checkpoint of region `id`: its live keys at the latest committed round,
    /// labelled with `applied_index`, which the caller asserts is the Raft index of that
    /// state (call it between apply rounds). Written to a temporary file, fsynced,
    /// renamed, the directory fsynced; then the manifest points the region at it, and
    /// the files it replaces are removed.
    pub fn checkpoint(&self, id: RegionId, applied_index: u64) -> Result<CheckpointMeta> {
        let mut durable = self.inner.durable.lock();
        self.inner.check_usable()?;
        // Region changes take the durable lock too, so the region is stable from here.
        let region = self.region(id).ok_or(Error::RegionNotFound { region: id })?;
        let snapshot = self.snapshot();
        let file_id = durable.next_file_id;
        durable.next_file_id += 1;
        let header = CheckpointHeader { region: region.clone(), applied_index };
        // What the region is charged for is a little more than its checkpoint takes
        // (see `Inner::write_checkpoint`).
        let charged =
            (self.inner.regions.read().bytes.get(&id)).map_or(0, |b| b.load(Ordering::Relaxed));
        let stats = self.inner.write_checkpoint(file_id, &header, &snapshot, charged)?;
        let mut next = durable.manifest.clone();
        next.next_file_id = durable.next_file_id;
        let whole = CheckpointRef {
            file_id,
            applied_index,
            start: region.start.clone(),
            end: region.end.clone(),
            file_bytes: Some(stats.file_bytes),
        };
        let map = self.region_map();
        set_regions(&mut next, &map, |r| (r.id == id).then(|| vec![whole.clone()]));
        self.inner.persist(&mut durable, next)?;
        Ok(CheckpointMeta {
            region,
            applied_index,
            seq: Seq(snapshot.seq),
            file_id,
            path: self.inner.dir.join(checkpoint_name(file_id)),
            stats,
        })
    }

    /// The region's latest checkpoint, if the region's durable image is exactly one
    /// checkpoint of the region as it is now (none after a split or merge until the
    /// next [`Engine::checkpoint`]). Mapped and fully verified.
    pub fn latest_checkpoint(&self, id: RegionId) -> Result<Option<CheckpointFile>> {
        let durable = self.inner.durable.lock();
        let Some(entry) = durable.manifest.regions.iter().find(|e| e.region.id == id) else {
            return Err(Error::RegionNotFound { region: id });
        };
        let [part] = entry.checkpoints.as_slice() else { return Ok(None) };
        let file = map_checkpoint(self.inner.fs.as_ref(), &self.inner.dir, part)?;
        let h = file.header();
        let whole = h.region.id == id && h.region.start == part.start && h.region.end == part.end;
        Ok(whole.then_some(file))
    }

    /// Streams the region's latest checkpoint in chunks of at most `chunk_bytes`.
    pub fn checkpoint_chunks(&self, id: RegionId, chunk_bytes: usize) -> Result<CheckpointChunks> {
        let file = self.latest_checkpoint(id)?.ok_or(Error::RegionNotFound { region: id })?;
        Ok(CheckpointChunks::new(&file, chunk_bytes))
    }

    /// Starts receiving a checkpoint streamed from another store.
    pub fn receive_checkpoint(&self) -> Result<CheckpointReceiver> {
        let file_id = {
            let mut durable = self.inner.durable.lock();
            self.inner.check_usable()?;
            durable.next_file_id += 1;
            durable.next_file_id - 1
        };
        let tmp = self.inner.dir.join(format!("{}{TEMP_SUFFIX}", checkpoint_name(file_id)));
        let file = self
            .inner
            .fs
            .open(&tmp, OpenMode::CreateNew)
            .map_err(|e| self.inner.fail("create received checkpoint", &tmp, &e))?;
        Ok(CheckpointReceiver {
            engine: self.clone(),
            file_id,
            tmp,
            file: Some(file),
            next_offset: 0,
            file_bytes: None,
        })
    }

    /// Hosts the region of a received, verified checkpoint, with exactly the
    /// checkpoint's data. If this store hosts an older version of the same region
    /// (a lagging replica), it is replaced, data and all, in one manifest update; any
    /// other region overlapping the range is an error.
    pub fn install_checkpoint(&self, received: ReceivedCheckpoint) -> Result<Region> {
        let ReceivedCheckpoint { file_id, file } = received;
        let mut durable = self.inner.durable.lock();
        self.inner.check_usable()?;
        let mut commit = self.inner.commit.lock();
        let mut regions = self.inner.regions.write();
        let header = file.header().clone();
        let region = header.region.clone();
        let pins = self.inner.pins.lock().count(region.id);
        if pins > 0 {
            return Err(Error::RegionBusy { region: region.id, pins });
        }
        let mut map = regions.map.clone();
        // A lagging replica's old version of the region is replaced in the same
        // manifest update: after a crash either the old region or the new one is there.
        let replaced = map.remove(region.id)?;
        map.insert(region.clone())?;
        let part = CheckpointRef {
            file_id,
            applied_index: header.applied_index,
            start: region.start.clone(),
            end: region.end.clone(),
            file_bytes: Some(file.stats().file_bytes),
        };
        let mut next = durable.manifest.clone();
        next.next_file_id = durable.next_file_id;
        set_regions(&mut next, &map, |r| (r.id == region.id).then(|| vec![part.clone()]));
        // The checkpoint's region is the metadata as of its applied index.
        set_meta_index(&mut next, &[region.id], header.applied_index);
        self.inner.persist(&mut durable, next)?;
        if let Some(old) = &replaced {
            self.inner.memtable.remove_range(&old.start, old.end.as_deref());
            regions.bytes.remove(&old.id);
        }
        let seq = commit.next_seq;
        let entry = RegionEntry {
            region: region.clone(),
            checkpoints: vec![part.clone()],
            meta_index: Some(header.applied_index),
            merge: None,
            empty_at: None,
        };
        let (_, bytes) = load_part(&self.inner.memtable, &file, &entry, &part, seq);
        commit.next_seq += 1;
        self.inner.visible_seq.store(seq, Ordering::Release);
        regions.bytes.insert(region.id, AtomicU64::new(bytes));
        regions.map = map;
        Ok(region)
    }

    /// Drops versions no snapshot can see any more, looking at up to `max_keys`
    /// distinct keys from where the previous call stopped. Versions shadowed while no
    /// snapshot needed them are dropped at commit already; this sweep catches those a
    /// snapshot held at the time.
    pub fn gc(&self, max_keys: usize) -> GcStats {
        let inner = &*self.inner;
        let mut commit = inner.commit.lock();
        let vis = inner.visibility();
        let regions = inner.regions.read();
        let mut cache = RegionCache::default();
        let cursor = commit.gc_cursor.take().unwrap_or_default();
        let (next, keys, bytes_freed) =
            inner.memtable.gc(&cursor, max_keys, &vis, &mut |key, delta| {
                if let Some(b) = cache.lookup(&regions, key).and_then(|id| regions.bytes.get(&id)) {
                    add_signed(b, delta);
                }
            });
        let wrapped = next.is_none();
        commit.gc_cursor = next;
        GcStats { keys, bytes_freed, wrapped }
    }

    /// Opaque state of background task `name`, as last stored.
    pub fn task_state(&self, name: &str) -> Option<Vec<u8>> {
        self.inner.durable.lock().manifest.tasks.get(name).cloned()
    }

    /// Stores (or with `None` removes) the state of background task `name` durably,
    /// before returning.
    pub fn set_task_state(&self, name: &str, state: Option<Vec<u8>>) -> Result<()> {
        let mut durable = self.inner.durable.lock();
        self.inner.check_usable()?;
        let mut next = durable.manifest.clone();
        match state {
            Some(state) => next.tasks.insert(name.to_owned(), state),
            None => next.tasks.remove(name),
        };
        self.inner.persist(&mut durable, next)
    }

    /// The failure that poisoned the engine, if any.
    pub fn failure(&self) -> Option<Arc<str>> {
        self.inner.failure.lock().clone()
    }

    /// Marks the engine closed and records a clean shutdown in the manifest. Later
    /// changes fail with [`Error::Closed`]; snapshots keep working.
    pub fn close(&self) -> Result<()> {
        let mut durable = self.inner.durable.lock();
        self.inner.check_usable()?;
        let mut next = durable.manifest.clone();
        next.clean_shutdown = true;
        self.inner.persist(&mut durable, next)?;
        self.inner.closed.store(true, Ordering::Release);
        Ok(())
    }

    /// The Raft index of the admin command that produced region `id`'s metadata as it
    /// is, if one was recorded (`None` for a region bootstrapped here, or written by a
    /// format before version 3). A replayed admin command at or below it is already
    /// reflected and must not be applied again.
    pub fn meta_index(&self, id: RegionId) -> Option<u64> {
        let durable = self.inner.durable.lock();
        durable.manifest.regions.iter().find(|e| e.region.id == id).and_then(|e| e.meta_index)
    }

    /// The applied index of region `id`'s durable image, if the image is one whole
    /// checkpoint of the region as it is or known to be empty: what a restart starts
    /// replaying the log after. `None` if the region is not hosted or its image is made
    /// of parts of older regions' checkpoints (after [`Engine::split`] or
    /// [`Engine::merge`]) or of nothing recorded (a bootstrapped region).
    pub fn image_index(&self, id: RegionId) -> Result<Option<u64>> {
        let empty_at = {
            let durable = self.inner.durable.lock();
            let entry = durable.manifest.regions.iter().find(|e| e.region.id == id);
            entry.ok_or(Error::RegionNotFound { region: id })?.empty_at
        };
        match empty_at {
            Some(index) => Ok(Some(index)),
            None => Ok(self.latest_checkpoint(id)?.map(|f| f.header().applied_index)),
        }
    }

    /// The merge region `id` is the prepared source of, if any.
    pub fn merge_state(&self, id: RegionId) -> Option<MergeState> {
        let durable = self.inner.durable.lock();
        durable.manifest.regions.iter().find(|e| e.region.id == id).and_then(|e| e.merge)
    }

    /// Records that region `id` is the prepared source of `merge` (the prepare command
    /// at `at_index`), bumping its `version`: writes routed before are refused from
    /// now on, and it takes none until [`Engine::merge_at`] or
    /// [`Engine::rollback_merge`]. A checkpoint barrier like [`Engine::split_at`]:
    /// durable, region and image together, before it returns.
    pub fn prepare_merge(&self, id: RegionId, merge: MergeState, at_index: u64) -> Result<Region> {
        self.change_merge_state(id, Some(merge), at_index)
    }

    /// Cancels the merge prepared on region `id` (the rollback command at `at_index`),
    /// bumping its `version` again; a checkpoint barrier as well.
    pub fn rollback_merge(&self, id: RegionId, at_index: u64) -> Result<Region> {
        self.change_merge_state(id, None, at_index)
    }

    /// Bumps the version of region `id` and sets its merge state, at a checkpoint
    /// barrier. Every change of a region's version is one: writes are checked against
    /// the version they were routed with, so replaying the log after a restart must
    /// start after the last version change, never before it with the new version.
    fn change_merge_state(
        &self,
        id: RegionId,
        merge: Option<MergeState>,
        at_index: u64,
    ) -> Result<Region> {
        let mut durable = self.inner.durable.lock();
        self.inner.check_usable()?;
        let _commit = self.inner.commit.lock();
        let mut regions = self.inner.regions.write();
        if regions.map.get(id).is_none() {
            return Err(Error::RegionNotFound { region: id });
        }
        let mut map = regions.map.clone();
        let region = map.bump_version(id)?;
        let snapshot = self.snapshot();
        let estimate_bytes = regions.bytes.get(&id).map_or(0, |b| b.load(Ordering::Relaxed));
        let image = self.write_whole_checkpoint(
            &mut durable,
            &region,
            at_index,
            &snapshot,
            estimate_bytes,
        )?;
        let mut next = durable.manifest.clone();
        next.next_file_id = durable.next_file_id;
        set_regions(&mut next, &map, |r| (r.id == id).then(|| image.iter().cloned().collect()));
        if image.is_none() {
            set_empty_at(&mut next, &[id], at_index);
        }
        set_meta_index(&mut next, &[id], at_index);
        for entry in &mut next.regions {
            if entry.region.id == id {
                entry.merge = merge;
            }
        }
        self.inner.persist(&mut durable, next)?;
        regions.map = map;
        Ok(region)
    }

    /// The most bytes of keys and values one apply round may buffer.
    pub fn max_round_bytes(&self) -> usize {
        self.limits().max_round_bytes
    }

    pub(crate) fn limits(&self) -> Limits {
        let o = &self.inner.options;
        Limits {
            max_key_bytes: o.max_key_bytes,
            max_value_bytes: o.max_value_bytes,
            max_round_bytes: o.max_round_bytes,
        }
    }

    pub(crate) fn epoch_not_match(&self, id: RegionId, requested: Epoch) -> Error {
        let regions = self.inner.regions.read();
        let mut current: Vec<Region> = regions.map.get(id).cloned().into_iter().collect();
        current.extend(regions.map.neighbours(id));
        Error::EpochNotMatch { region: id, requested, current }
    }

    /// Checks `id` is hosted at `epoch` and pins it for `round`.
    pub(crate) fn pin_for_round(
        &self,
        round: RoundId,
        id: RegionId,
        epoch: Epoch,
    ) -> Result<Region> {
        let regions = self.inner.regions.read();
        let region = regions.map.get(id).ok_or(Error::RegionNotFound { region: id })?;
        if region.epoch != epoch {
            drop(regions);
            return Err(self.epoch_not_match(id, epoch));
        }
        // Pinned while the region lock is held, so a removal cannot slip in between.
        self.inner.pins.lock().pin(round, id);
        Ok(region.clone())
    }

    pub(crate) fn release_round(&self, round: RoundId) {
        self.inner.pins.lock().release_round(round);
    }

    pub(crate) fn commit_writes(&self, mut batch: Batch) -> Result<Option<Seq>> {
        self.inner.check_usable()?;
        if batch.is_empty() {
            return Ok(None);
        }
        let inner = &*self.inner;
        let mut commit = inner.commit.lock();
        let first = commit.next_seq;
        let last = first + batch.len() as u64 - 1;
        if last > MAX_SEQ {
            return Err(Error::InvalidOptions("sequence numbers exhausted".into()));
        }
        batch.set_seqs(first);
        batch.sort();
        // Snapshots registered from here until `last` is published read at `visible`,
        // which the visibility rule keeps.
        let vis = inner.visibility();
        let regions = inner.regions.read();
        let mut cache = RegionCache::default();
        inner.memtable.apply(&batch, &vis, &mut |key, delta| {
            if let Some(b) = cache.lookup(&regions, key).and_then(|id| regions.bytes.get(&id)) {
                add_signed(b, delta);
            }
        });
        commit.next_seq = last + 1;
        inner.visible_seq.store(last, Ordering::Release);
        Ok(Some(Seq(last)))
    }
}

fn add_signed(counter: &AtomicU64, delta: i64) {
    if delta >= 0 {
        counter.fetch_add(delta.cast_unsigned(), Ordering::Relaxed);
    } else {
        let d = delta.unsigned_abs();
        let _ = counter
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| Some(v.saturating_sub(d)));
    }
}

/// Remembers the last region looked up by key: a round's writes come region by region.
#[derive(Default)]
struct RegionCache {
    last: Option<(Vec<u8>, Option<Vec<u8>>, RegionId)>,
}

impl RegionCache {
    fn lookup(&mut self, regions: &RegionState, key: &[u8]) -> Option<RegionId> {
        if let Some((start, end, id)) = &self.last
            && in_range(key, start, end.as_deref())
        {
            return Some(*id);
        }
        let region = regions.map.region_for_key(key)?;
        self.last = Some((region.start.clone(), region.end.clone(), region.id));
        Some(region.id)
    }
}

/// The checkpoint parts of region `id` in `manifest`.
fn parts_of(manifest: &Manifest, id: RegionId) -> Vec<CheckpointRef> {
    manifest
        .regions
        .iter()
        .find(|e| e.region.id == id)
        .map(|e| e.checkpoints.clone())
        .unwrap_or_default()
}

/// The share of `parts` inside `region`.
fn restrict(parts: &[CheckpointRef], region: &Region) -> Vec<CheckpointRef> {
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

/// Rewrites the manifest's region list from `map`. Each region keeps its checkpoint
/// parts unless `parts_for` gives new ones.
fn set_regions(
    manifest: &mut Manifest,
    map: &RegionMap,
    parts_for: impl Fn(&Region) -> Option<Vec<CheckpointRef>>,
) {
    let mut old: HashMap<RegionId, RegionEntry> =
        manifest.regions.drain(..).map(|e| (e.region.id, e)).collect();
    manifest.regions = map
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
fn set_empty_at(manifest: &mut Manifest, ids: &[RegionId], index: u64) {
    let ids: HashSet<RegionId> = ids.iter().copied().collect();
    for entry in &mut manifest.regions {
        if ids.contains(&entry.region.id) {
            entry.checkpoints.clear();
            entry.empty_at = Some(index);
        }
    }
}

/// Records that the metadata of `ids` was produced by the admin command at `index`.
fn set_meta_index(manifest: &mut Manifest, ids: &[RegionId], index: u64) {
    let ids: HashSet<RegionId> = ids.iter().copied().collect();
    for entry in &mut manifest.regions {
        if ids.contains(&entry.region.id) {
            entry.meta_index = Some(index);
        }
    }
}

/// Maps and verifies the file of `part`, after checking its length if the manifest
/// recorded one.
fn map_checkpoint(fs: &dyn FileSystem, dir: &Path, part: &CheckpointRef) -> Result<CheckpointFile> {
    let (data, path) = map_checkpoint_unverified(fs, dir, part)?;
    CheckpointFile::open(data, &path)
}

/// The image of the file of `part` and its path, after checking its length if the
/// manifest recorded one; not verified yet.
fn map_checkpoint_unverified(
    fs: &dyn FileSystem,
    dir: &Path,
    part: &CheckpointRef,
) -> Result<(Bytes, PathBuf)> {
    let path = dir.join(checkpoint_name(part.file_id));
    let file = fs.open(&path, OpenMode::Existing).map_err(|e| Error::io("open", &path, e))?;
    if let Some(expected) = part.file_bytes {
        let len = file.len().map_err(|e| Error::io("stat", &path, e))?;
        if len != expected {
            return Err(Error::corruption(
                &path,
                len.min(expected),
                format!("file is {len} bytes, the manifest says {expected}"),
            ));
        }
    }
    let data = file.map().map_err(|e| Error::io("map", &path, e))?;
    Ok((data, path))
}

/// [`map_checkpoint`] and [`load_part`] in one pass over the file: pairs are loaded as
/// they are verified, and installed only if the whole file verifies (measured on an
/// open of 118 MiB, 1 M keys: median 70-99 ms -> 49-72 ms, against verifying first and
/// reading the file again to load it).
fn open_and_load_part(
    fs: &dyn FileSystem,
    dir: &Path,
    memtable: &Memtable,
    entry: &RegionEntry,
    part: &CheckpointRef,
    seq: u64,
) -> Result<(CheckpointFile, u64, u64)> {
    let (data, path) = map_checkpoint_unverified(fs, dir, part)?;
    let region = &entry.region;
    let Some((start, end)) =
        intersect((&part.start, part.end.as_deref()), (&region.start, region.end.as_deref()))
    else {
        return Ok((CheckpointFile::open(data, &path)?, 0, 0));
    };
    let (entries, kv_bytes) = CheckpointFile::size_hint(&data).unwrap_or((0, data.len() as u64));
    let estimate = (usize::try_from(entries).unwrap_or(0), usize::try_from(kv_bytes).unwrap_or(0));
    memtable.load_sorted(start, end, seq, estimate, |push| {
        CheckpointFile::open_visiting(data, &path, |k, pair| {
            if in_range(k, start, end) {
                push(k, pair);
            }
        })
    })
}

/// Inserts the pairs of `file` inside `part` (and its region) at `seq`; returns how
/// many and the bytes charged for them. The range holds no entries before (a fresh
/// engine or an absent range).
fn load_part(
    memtable: &Memtable,
    file: &CheckpointFile,
    entry: &RegionEntry,
    part: &CheckpointRef,
    seq: u64,
) -> (u64, u64) {
    let region = &entry.region;
    let Some((start, end)) =
        intersect((&part.start, part.end.as_deref()), (&region.start, region.end.as_deref()))
    else {
        return (0, 0);
    };
    let stats = file.stats();
    let estimate =
        (usize::try_from(stats.entries).unwrap_or(0), usize::try_from(stats.kv_bytes).unwrap_or(0));
    let loaded = memtable.load_sorted(start, end, seq, estimate, |push| {
        file.for_each_encoded(|k, pair| {
            if in_range(k, start, end) {
                push(k, pair);
            }
        });
        Ok::<(), std::convert::Infallible>(())
    });
    match loaded {
        Ok(((), entries, charged)) => (entries, charged),
    }
}

impl Inner {
    /// Encodes the checkpoint of `header.region` at `snapshot` into `sink`.
    fn encode_checkpoint(
        &self,
        header: &CheckpointHeader,
        snapshot: &Snapshot,
        sink: &mut dyn FnMut(u64, &mut Vec<u8>) -> io::Result<()>,
    ) -> Result<CheckpointStats> {
        let mut encoder = Encoder::new(header, self.options.checkpoint_write_buffer_bytes, sink);
        let mut error = None;
        let region = &header.region;
        self.memtable.scan_encoded(
            &region.start,
            region.end.as_deref(),
            snapshot.seq,
            |k, entry| match encoder.push_encoded(k, entry) {
                Ok(()) => true,
                Err(e) => {
                    error = Some(e);
                    false
                }
            },
        );
        let io_error = |e| Error::io("write checkpoint", PathBuf::new(), e);
        if let Some(e) = error {
            return Err(io_error(e));
        }
        encoder.finish().map_err(io_error)
    }

    fn check_usable(&self) -> Result<()> {
        if let Some(cause) = self.failure.lock().clone() {
            return Err(Error::Poisoned { cause });
        }
        if self.closed.load(Ordering::Acquire) {
            return Err(Error::Closed);
        }
        Ok(())
    }

    /// Latches the engine failed after a mutating file-system call failed.
    fn fail(&self, op: &str, path: &Path, e: &io::Error) -> Error {
        let cause: Arc<str> = format!("{op} on {}: {e}", path.display()).into();
        tracing::error!(%cause, "engine failed; reopen to recover");
        let mut failure = self.failure.lock();
        let cause = failure.get_or_insert(cause).clone();
        Error::Poisoned { cause }
    }

    /// What a writer may drop now; call with the commit lock held.
    fn visibility(&self) -> Visibility {
        let snapshots = self.snapshots.lock();
        let live =
            if snapshots.is_empty() { Vec::new() } else { snapshots.keys().copied().collect() };
        Visibility { snapshots: live, visible: self.visible_seq.load(Ordering::Acquire) }
    }

    /// Makes `next` the durable manifest, then removes checkpoint files it no longer
    /// references.
    fn persist(&self, durable: &mut Durable, next: Manifest) -> Result<()> {
        let path = manifest::path(&self.dir);
        manifest::write(self.fs.as_ref(), &self.dir, &next)
            .map_err(|e| self.fail("write manifest", &path, &e))?;
        let referenced = |m: &Manifest| -> BTreeSet<u64> {
            m.regions.iter().flat_map(|e| e.checkpoints.iter().map(|c| c.file_id)).collect()
        };
        let dropped: Vec<u64> =
            referenced(&durable.manifest).difference(&referenced(&next)).copied().collect();
        durable.manifest = next;
        if !dropped.is_empty() {
            // Unreferenced files are garbage: a failure here only leaves them for the
            // next open to remove.
            for id in dropped {
                let path = self.dir.join(checkpoint_name(id));
                if let Err(e) = self.fs.remove_file(&path) {
                    tracing::warn!(path = %path.display(), error = %e, "could not remove old checkpoint");
                }
            }
            if let Err(e) = self.fs.sync_dir(&self.dir) {
                tracing::warn!(error = %e, "could not sync the directory after removals");
            }
        }
        Ok(())
    }

    /// Writes the checkpoint of `header.region` at `snapshot` to a temporary file, makes
    /// it durable and renames it to the name of `file_id`. `estimate_bytes` is about
    /// how long the file will be (the region's memory charge: a little more).
    fn write_checkpoint(
        &self,
        file_id: u64,
        header: &CheckpointHeader,
        snapshot: &Snapshot,
        estimate_bytes: u64,
    ) -> Result<CheckpointStats> {
        let started = Instant::now();
        let name = checkpoint_name(file_id);
        let path = self.dir.join(&name);
        let tmp = self.dir.join(format!("{name}{TEMP_SUFFIX}"));
        let file =
            self.fs.open(&tmp, OpenMode::CreateNew).map_err(|e| self.fail("create", &tmp, &e))?;
        // Blocks allocated in one call up front rather than as writeback finds them:
        // measured 2-10% faster with the early writeback below, 10-30% without. Only a
        // hint: if it fails, the writes allocate as they go (and fail if they must).
        if estimate_bytes > 0
            && let Err(e) = file.allocate(estimate_bytes)
        {
            tracing::warn!(path = %tmp.display(), error = %e, "could not allocate the checkpoint");
        }
        // A writer thread writes full buffers while this one encodes the next: scanning
        // and writing overlap. At most three buffers exist (one filling, one queued,
        // one being written); they circulate between the two threads. The writer sends
        // the stream on with direct I/O; see `DirectWriter`.
        let buffer_bytes = self.options.checkpoint_write_buffer_bytes;
        let (to_writer, queued) = std::sync::mpsc::sync_channel::<(u64, Vec<u8>)>(1);
        let (to_encoder, spare) = std::sync::mpsc::sync_channel::<Vec<u8>>(2);
        let outcome =
            std::thread::scope(|scope| -> io::Result<(Result<CheckpointStats>, io::Result<()>)> {
                let writer = std::thread::Builder::new().name("ckpt-writer".into()).spawn_scoped(
                    scope,
                    || -> io::Result<()> {
                        let mut out = DirectWriter::new(file.as_ref(), buffer_bytes);
                        for (offset, buf) in queued {
                            debug_assert_eq!(offset, out.position(), "buffers come in order");
                            out.write(&buf)?;
                            // The encoder may have finished; then the buffer is not needed.
                            let _ = to_encoder.try_send(buf);
                        }
                        out.finish()
                    },
                )?;
                let mut sink = |offset: u64, buf: &mut Vec<u8>| -> io::Result<()> {
                    let next =
                        spare.try_recv().unwrap_or_else(|_| Vec::with_capacity(buffer_bytes * 2));
                    let full = std::mem::replace(buf, next);
                    to_writer
                        .send((offset, full))
                        .map_err(|_| io::Error::other("the checkpoint writer stopped"))
                };
                let encoded = self.encode_checkpoint(header, snapshot, &mut sink);
                drop(to_writer);
                let written =
                    writer.join().unwrap_or_else(|_| Err(io::Error::other("writer panicked")));
                Ok((encoded, written))
            });
        let (encoded, written) = outcome.map_err(|e| self.fail("spawn writer", &tmp, &e))?;
        // The writer's error is the cause when both failed (the encoder then only saw
        // the channel close).
        written.map_err(|e| self.fail("write", &tmp, &e))?;
        let stats = encoded.map_err(|e| match e {
            Error::Io { source, .. } => self.fail("write", &tmp, &source),
            other => other,
        })?;
        let written_at = started.elapsed();
        // The allocation usually overshoots, and the last direct write is padded: cut
        // the file to what was encoded.
        let len = file.len().map_err(|e| self.fail("stat", &tmp, &e))?;
        if len > stats.file_bytes {
            file.set_len(stats.file_bytes).map_err(|e| self.fail("truncate", &tmp, &e))?;
        }
        file.sync_data().map_err(|e| self.fail("fsync", &tmp, &e))?;
        let synced_at = started.elapsed();
        self.fs.rename(&tmp, &path).map_err(|e| self.fail("rename", &tmp, &e))?;
        self.fs.sync_dir(&self.dir).map_err(|e| self.fail("sync_dir", &self.dir, &e))?;
        tracing::debug!(
            path = %path.display(),
            bytes = stats.file_bytes,
            written_us = written_at.as_micros(),
            synced_us = synced_at.as_micros(),
            renamed_us = started.elapsed().as_micros(),
            "checkpoint written"
        );
        Ok(stats)
    }
}

/// Writes a stream of bytes to the start of a file in pieces aligned for direct I/O
/// ([`File::write_direct_at`]), through a staging buffer; the last piece is padded
/// with zeros (the caller trims the file to the stream's length).
///
/// Why direct I/O: a buffered write costs a copy into the page cache plus the cache's
/// pages, which are fresh memory for a new file, and fresh memory is slow to touch on a
/// VM that hands freed memory back to its host (the copy took 124-340 ms of CPU for 118
/// MiB instead of 27-55 ms after a few idle seconds). Measured on 118 MiB, same runs:
/// buffered with drop-behind 109-268 ms (writer CPU 31-58 ms), direct 82-147 ms (writer
/// CPU 11-25 ms, the copy into the stage). Nothing reads a checkpoint soon after it is
/// written (a restart, a snapshot to send).
///
/// Where the file system refuses direct I/O, the same calls go through the page cache;
/// then the early writeback and drop-behind below keep the cache small and the final
/// fsync short (measured: fsync 45-55 ms -> 1-8 ms; checkpoint 364-587 -> 158-204 ms).
/// On direct writes they find nothing to do.
struct DirectWriter<'f> {
    file: &'f dyn File,
    /// Holds the stage at `stage_at`, aligned.
    buf: Vec<u8>,
    stage_at: usize,
    stage_len: usize,
    /// Bytes in the stage.
    filled: usize,
    /// File offset of the stage.
    offset: u64,
    /// Pieces written whose pages may still be cached, oldest first.
    behind: VecDeque<(u64, u64)>,
}

impl<'f> DirectWriter<'f> {
    /// A writer with a stage of about `stage_bytes` (at least one aligned block).
    fn new(file: &'f dyn File, stage_bytes: usize) -> DirectWriter<'f> {
        let stage_len = stage_bytes.max(1).next_multiple_of(DIRECT_IO_ALIGN);
        let buf = vec![0u8; stage_len + DIRECT_IO_ALIGN];
        let stage_at = buf.as_ptr().align_offset(DIRECT_IO_ALIGN);
        // A Vec<u8> is at least byte-aligned, so some offset below the alignment works.
        assert!(stage_at < DIRECT_IO_ALIGN, "a stage fits in the buffer");
        DirectWriter {
            file,
            buf,
            stage_at,
            stage_len,
            filled: 0,
            offset: 0,
            behind: VecDeque::with_capacity(EVICT_BEHIND_BUFFERS + 1),
        }
    }

    /// Bytes of the stream taken so far.
    fn position(&self) -> u64 {
        self.offset + self.filled as u64
    }

    /// Appends `data` to the stream, writing every stage it fills.
    fn write(&mut self, mut data: &[u8]) -> io::Result<()> {
        // Bounded: every pass takes at least one byte or writes a full stage.
        while !data.is_empty() {
            let n = data.len().min(self.stage_len - self.filled);
            let at = self.stage_at + self.filled;
            self.buf[at..at + n].copy_from_slice(&data[..n]);
            self.filled += n;
            data = &data[n..];
            if self.filled == self.stage_len {
                self.write_stage()?;
            }
        }
        Ok(())
    }

    /// Writes the stage, padded to the alignment, and empties it.
    fn write_stage(&mut self) -> io::Result<()> {
        let len = self.filled.next_multiple_of(DIRECT_IO_ALIGN);
        let stage = &mut self.buf[self.stage_at..self.stage_at + len];
        stage[self.filled..].fill(0);
        self.file.write_direct_at(self.offset, stage)?;
        let len = len as u64;
        self.file.start_writeback(self.offset, len)?;
        self.behind.push_back((self.offset, len));
        if self.behind.len() > EVICT_BEHIND_BUFFERS
            && let Some((offset, len)) = self.behind.pop_front()
        {
            self.file.evict_written(offset, len)?;
        }
        self.offset += len;
        self.filled = 0;
        Ok(())
    }

    /// Writes what is left of the stream, padded.
    fn finish(mut self) -> io::Result<()> {
        if self.filled > 0 { self.write_stage() } else { Ok(()) }
    }
}

/// A consistent read view of the whole store at one sequence number.
///
/// Holding it keeps every version it can see in memory; drop it when done.
#[derive(Debug)]
pub struct Snapshot {
    inner: Arc<Inner>,
    seq: u64,
}

impl Snapshot {
    /// The sequence number it reads at.
    pub fn seq(&self) -> Seq {
        Seq(self.seq)
    }

    /// The value of `key`, if it has one.
    pub fn get(&self, key: &[u8]) -> Option<Bytes> {
        match self.inner.memtable.get(key, self.seq) {
            Found::Value(v) => Some(v),
            Found::Deleted | Found::Missing => None,
        }
    }

    /// Up to `limit` live pairs with keys in `[start, end)` (`end == None`:
    /// unbounded), in key order.
    pub fn scan(&self, start: &[u8], end: Option<&[u8]>, limit: usize) -> Vec<(Bytes, Bytes)> {
        let mut out = Vec::new();
        self.inner.memtable.scan(start, end, self.seq, limit, |k, v| {
            out.push((Bytes::copy_from_slice(k), Bytes::copy_from_slice(v)));
            true
        });
        out
    }

    /// Calls `f(key, value)` for the live pairs in `[start, end)` in key order until it
    /// returns false; no copies.
    pub fn for_each(&self, start: &[u8], end: Option<&[u8]>, f: impl FnMut(&[u8], &[u8]) -> bool) {
        self.inner.memtable.scan(start, end, self.seq, usize::MAX, f);
    }
}

impl Clone for Snapshot {
    fn clone(&self) -> Self {
        *self.inner.snapshots.lock().entry(self.seq).or_insert(0) += 1;
        Snapshot { inner: self.inner.clone(), seq: self.seq }
    }
}

impl Drop for Snapshot {
    fn drop(&mut self) {
        let mut snapshots = self.inner.snapshots.lock();
        if let Some(n) = snapshots.get_mut(&self.seq) {
            *n -= 1;
            if *n == 0 {
                snapshots.remove(&self.seq);
            }
        }
    }
}

/// Receives a checkpoint streamed in chunks into a temporary file of the engine.
#[derive(Debug)]
pub struct CheckpointReceiver {
    engine: Engine,
    file_id: u64,
    tmp: PathBuf,
    file: Option<Arc<dyn File>>,
    next_offset: u64,
    file_bytes: Option<u64>,
}

/// A received checkpoint, durable under its final name and fully verified; install it
/// with [`Engine::install_checkpoint`].
#[derive(Debug)]
pub struct ReceivedCheckpoint {
    file_id: u64,
    file: CheckpointFile,
}

impl ReceivedCheckpoint {
    /// The verified file.
    pub fn file(&self) -> &CheckpointFile {
        &self.file
    }
}

impl CheckpointReceiver {
    /// Appends the next chunk; chunks must come in order.
    pub fn push(&mut self, chunk: &CheckpointChunk) -> Result<()> {
        if chunk.offset != self.next_offset {
            return Err(Error::ChunkOutOfOrder { expected: self.next_offset, got: chunk.offset });
        }
        if chunk.file_bytes > MAX_CHECKPOINT_BYTES {
            return Err(Error::TooLarge {
                what: "checkpoint",
                len: chunk.file_bytes,
                max: MAX_CHECKPOINT_BYTES,
            });
        }
        let total = *self.file_bytes.get_or_insert(chunk.file_bytes);
        let end = chunk.offset + chunk.data.len() as u64;
        if total != chunk.file_bytes || end > total {
            return Err(Error::corruption(
                &self.tmp,
                chunk.offset,
                "chunk disagrees on the file size",
            ));
        }
        let file = self.file.as_ref().ok_or(Error::Closed)?;
        file.write_at(chunk.offset, &chunk.data)
            .map_err(|e| self.engine.inner.fail("write", &self.tmp, &e))?;
        self.next_offset = end;
        Ok(())
    }

    /// Checks the file is complete and valid, makes it durable under its final name.
    pub fn finish(mut self) -> Result<ReceivedCheckpoint> {
        let inner = &self.engine.inner;
        let file = self.file.take().ok_or(Error::Closed)?;
        if Some(self.next_offset) != self.file_bytes {
            return Err(Error::corruption(
                &self.tmp,
                self.next_offset,
                "checkpoint transfer incomplete",
            ));
        }
        let data = file.map().map_err(|e| Error::io("map", &self.tmp, e))?;
        let verified = CheckpointFile::open(data, &self.tmp)?;
        file.sync_data().map_err(|e| inner.fail("fsync", &self.tmp, &e))?;
        let path = inner.dir.join(checkpoint_name(self.file_id));
        inner.fs.rename(&self.tmp, &path).map_err(|e| inner.fail("rename", &self.tmp, &e))?;
        inner.fs.sync_dir(&inner.dir).map_err(|e| inner.fail("sync_dir", &inner.dir, &e))?;
        self.tmp = PathBuf::new();
        Ok(ReceivedCheckpoint { file_id: self.file_id, file: verified })
    }
}

impl Drop for CheckpointReceiver {
    /// An unfinished transfer leaves no file behind (recovery would remove it too).
    fn drop(&mut self) {
        if !self.tmp.as_os_str().is_empty() {
            let _ = self.engine.inner.fs.remove_file(&self.tmp);
        }
    }
}
