//! [`Engine`]: one store's state machine, as the Raft layer sees it: opening and
//! recovery, the read side, apply-round plumbing, garbage collection and shutdown.
//!
//! The rest of `Engine` is in the child modules: changes of the hosted regions
//! (`topology`: insert, remove, split, merge, membership, merge state, installing a
//! received checkpoint, all through one transaction, `Inner::change`) and a region's
//! durable image (`images`: writing, finding, streaming and receiving checkpoints).

mod dups;
mod images;
mod sinks;
mod topology;

use images::Loaded;

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use parking_lot::{Mutex, RwLock};
use regionkv_wal::fs::FileSystem;

use crate::IdHashMap;
use crate::checkpoint::{self, CheckpointStats};
use crate::dup::DupTable;
use crate::error::{Error, Result};
use crate::manifest::{self, Compatibility, Manifest, MergeState};
use crate::memtable::{Batch, MAX_SEQ, Memtable, Seq, Visibility};
use crate::pins::{PinLedger, RoundId};
use crate::read_view::ReadView;
use crate::region::{Epoch, Incarnation, PeerId, Region, RegionId, StoreId, in_range};
use crate::region_map::RegionMap;
use crate::sessions::{SessionId, SessionLimits, SessionTable, SessionWrite, Undo};
use crate::sink::SinkTable;
use crate::txn::{TxnOverlay, TxnTable};

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
    /// How long, and how many, client sessions each region remembers (see
    /// [`SessionLimits`]). Every store of a cluster must use the same limits.
    pub session_limits: SessionLimits,
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
            session_limits: SessionLimits::DEFAULT,
        }
    }

    /// Sets [`EngineOptions::session_limits`].
    #[must_use]
    pub fn session_limits(mut self, limits: SessionLimits) -> Self {
        self.session_limits = limits;
        self
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
        let sessions = self.session_limits;
        if sessions.ttl_ms == 0
            || !(1..=SessionLimits::MAX_SESSIONS).contains(&sessions.max_sessions)
        {
            return Err(Error::InvalidOptions(format!(
                "session limits need a TTL above 0 and 1 to {} sessions",
                SessionLimits::MAX_SESSIONS
            )));
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
    bytes: IdHashMap<RegionId, AtomicU64>,
}

#[derive(Debug)]
struct Durable {
    /// The manifest as last made durable.
    manifest: Manifest,
    /// Next checkpoint file number (>= the manifest's; never reused in one run).
    next_file_id: u64,
}

/// The shared state of an [`Engine`].
///
/// Lock order: `durable` -> `commit` -> `regions` -> `pins` -> `snapshots` ->
/// `sessions` -> `txn` -> `dups` -> `sinks`. A thread holding one of them takes only locks further
/// right;
/// each field repeats its place.
/// The `failure` latch may be taken under any of them and holds none while it is held.
#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) fs: Arc<dyn FileSystem>,
    pub(crate) dir: PathBuf,
    options: EngineOptions,
    /// Changed only under `commit`; read by anyone (leaves are shared by `Arc`).
    pub(crate) memtable: Memtable,
    /// Lock 1 of 9, taken first: serializes every file-system change (checkpoints,
    /// the manifest) and every change of the region map.
    durable: Mutex<Durable>,
    /// Lock 2 of 9 (after `durable`, if both): serializes every change of the memtable
    /// and of the regions' byte charges.
    commit: Mutex<CommitState>,
    /// Lock 3 of 9 (after `durable` and `commit`, if held): the region map, written
    /// only by `Inner::change`.
    regions: RwLock<RegionState>,
    /// Lock 4 of 9 (after `regions`, if held): which open rounds pin which regions.
    pins: Mutex<PinLedger>,
    /// Lock 5 of 9: live snapshots, sequence number -> how many.
    pub(crate) read_views: Mutex<BTreeMap<u64, u32>>,
    /// Lock 6 of 9 (after `regions`, if held; never with `txn`): the client sessions
    /// of each hosted region (absent: none). Changed by the rounds of the thread that
    /// applies the region (see `round.rs`) and by region changes (`topology.rs`).
    pub(crate) sessions: Mutex<IdHashMap<RegionId, SessionTable>>,
    /// Lock 7 of 9 (after `commit` and `regions`, if held): the
    /// transaction state of each hosted region (absent: empty). Changed when a round
    /// that changed it commits, under `commit`, after the round's data is visible
    /// (`Engine::publish_txn`), and by region changes (`topology.rs`).
    pub(crate) txn: Mutex<IdHashMap<RegionId, TxnTable>>,
    /// Locks held in `txn` over all regions; changed only with `txn` held. A reader
    /// that finds 0 skips every lock lookup (`Engine::has_txn_locks`).
    pub(crate) txn_locks: AtomicU64,
    /// Lock 8 of 9: the duplication state of each hosted region (absent:
    /// none; `crate::dup`). Changed by the thread that applies the region
    /// (`Engine::set_dup_table`, between rounds) and by region changes (`topology.rs`).
    pub(crate) dups: Mutex<IdHashMap<RegionId, DupTable>>,
    /// Lock 9 of 9, taken last: the sink state of each hosted region (absent: none;
    /// `crate::sink`). Changed like `dups`: by the thread that applies the region
    /// (`Engine::set_sink_table`, between rounds) and by region changes.
    pub(crate) sinks: Mutex<IdHashMap<RegionId, SinkTable>>,
    /// Regions in `sinks`; a write check that finds 0 looks nothing up.
    pub(crate) sink_regions: AtomicU64,
    /// Every write up to this sequence number is applied; snapshots read at it.
    pub(crate) visible_seq: AtomicU64,
    next_round: AtomicU64,
    /// The first mutating file-system failure; once set, every change is refused.
    failure: Mutex<Option<Arc<str>>>,
    closed: AtomicBool,
    recovery: RecoveryInfo,
}

/// The in-memory MVCC state machine of one store. See the crate docs.
///
/// Cloning is cheap; clones share the engine.
#[derive(Clone, Debug)]
pub struct Engine {
    pub(crate) inner: Arc<Inner>,
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
        fs.create_dir_all_durable(&dir).map_err(|e| Error::io("create_dir_all", &dir, e))?;
        let names = fs.list(&dir).map_err(|e| Error::io("list", &dir, e))?;
        let mut recovery = RecoveryInfo::default();

        let (mut manifest, compat) = if let Some(found) = manifest::read(fs.as_ref(), &dir)? {
            found
        } else {
            {
                if names.iter().any(|n| checkpoint::parse_file_name(n).is_some()) {
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
        let referenced = manifest.referenced_files();
        for name in &names {
            let stale = name.ends_with(checkpoint::TEMP_SUFFIX)
                || checkpoint::parse_file_name(name).is_some_and(|id| !referenced.contains(&id));
            if stale {
                let path = dir.join(name);
                fs.remove_file(&path).map_err(|e| Error::io("remove", &path, e))?;
                recovery.removed_files.push(name.clone());
            }
        }
        if !recovery.removed_files.is_empty() {
            fs.sync_dir(&dir).map_err(|e| Error::io("sync_dir", &dir, e))?;
        }

        let Loaded { memtable, sessions, txn, dups, sinks, mut bytes, seq, entries } =
            images::load_images(fs.as_ref(), &dir, &manifest, options.session_limits)?;
        recovery.entries_loaded = entries;
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
            read_views: Mutex::new(BTreeMap::new()),
            sessions: Mutex::new(sessions),
            txn_locks: AtomicU64::new(txn.values().map(|t| t.lock_count() as u64).sum()),
            txn: Mutex::new(txn),
            dups: Mutex::new(dups),
            sink_regions: AtomicU64::new(sinks.len() as u64),
            sinks: Mutex::new(sinks),
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

    /// A fresh id for an apply round (`Engine::begin_round`, in `round.rs`, which owns
    /// rounds: the engine knows their pins and limits, never the round type).
    pub(crate) fn next_round_id(&self) -> RoundId {
        self.inner.next_round.fetch_add(1, Ordering::Relaxed)
    }

    /// A consistent read view at the latest committed round. It pins the versions it
    /// can see until dropped.
    pub fn read_view(&self) -> ReadView {
        ReadView::register(&self.inner)
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

    /// Drops versions no snapshot can see any more, looking at up to `max_keys`
    /// distinct keys from where the previous call stopped. Versions shadowed while no
    /// snapshot needed them are dropped at commit already; this sweep catches those a
    /// snapshot held at the time.
    ///
    /// The Raft store runs the sweep on a timer (`regionkv-raft`'s core, beside its log
    /// purge); an embedder of the engine alone calls it itself, or a key that is never
    /// written again keeps the versions a snapshot held.
    pub fn gc(&self, max_keys: usize) -> GcStats {
        let inner = &*self.inner;
        let mut commit = inner.commit.lock();
        let vis = inner.visibility();
        let regions = inner.regions.read();
        let mut cache = RegionCache::new(&regions, &[]);
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

    /// This life of the store's disk, if one was recorded (see [`Incarnation`]).
    pub fn incarnation(&self) -> Option<Incarnation> {
        self.inner.durable.lock().manifest.incarnation
    }

    /// The store's incarnation: the recorded one, or else `fresh`, recorded durably
    /// before this returns. The caller draws `fresh` at random (the simulator from its
    /// seed); it is written once per life of the disk.
    pub fn ensure_incarnation(&self, fresh: Incarnation) -> Result<Incarnation> {
        let mut durable = self.inner.durable.lock();
        if let Some(known) = durable.manifest.incarnation {
            return Ok(known);
        }
        self.inner.check_usable()?;
        let mut next = durable.manifest.clone();
        next.incarnation = Some(fresh);
        self.inner.persist(&mut durable, next)?;
        tracing::info!(dir = %self.inner.dir.display(), incarnation = %fresh, "recorded the store's incarnation");
        Ok(fresh)
    }

    /// The floor of this store's peer ids, if one was recorded: every peer of the
    /// store has a greater id (set when the store joins a running cluster).
    pub fn peer_floor(&self) -> Option<PeerId> {
        self.inner.durable.lock().manifest.peer_floor
    }

    /// Records the floor of this store's peer ids durably, before returning.
    pub fn set_peer_floor(&self, floor: PeerId) -> Result<()> {
        let mut durable = self.inner.durable.lock();
        self.inner.check_usable()?;
        let mut next = durable.manifest.clone();
        next.peer_floor = Some(floor);
        self.inner.persist(&mut durable, next)
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

    /// The merge region `id` is the prepared source of, if any.
    pub fn merge_state(&self, id: RegionId) -> Option<MergeState> {
        let durable = self.inner.durable.lock();
        durable.manifest.regions.iter().find(|e| e.region.id == id).and_then(|e| e.merge)
    }

    /// Region `id`'s client sessions (a copy), if the region is hosted.
    pub fn sessions(&self, id: RegionId) -> Option<SessionTable> {
        self.region(id)?;
        Some(self.inner.sessions.lock().get(&id).cloned().unwrap_or_default())
    }

    /// Takes a write of session `id` numbered `seq`, stamped `time_ms`, into region
    /// `region`'s table (see [`SessionTable`]); the changes are pushed to `undo`.
    pub(crate) fn session_write(
        &self,
        region: RegionId,
        id: SessionId,
        seq: u64,
        time_ms: u64,
        steps: &mut Vec<Undo>,
        undo: &mut Vec<(RegionId, Undo)>,
    ) -> SessionWrite {
        steps.clear();
        let limits = self.inner.options.session_limits;
        let outcome = (self.inner.sessions.lock().entry(region).or_default())
            .write(id, seq, time_ms, limits, steps);
        undo.extend(steps.drain(..).map(|step| (region, step)));
        outcome
    }

    /// True if region `region`'s table holds session `id` at `seq` or after (see
    /// [`ApplyRound::session_applied`](crate::ApplyRound::session_applied)).
    pub(crate) fn session_applied(&self, region: RegionId, id: SessionId, seq: u64) -> bool {
        let sessions = self.inner.sessions.lock();
        sessions.get(&region).and_then(|t| t.get(id)).is_some_and(|u| seq <= u.last_seq)
    }

    /// Reverts session changes (a round that did not commit), the last first.
    pub(crate) fn undo_sessions(&self, undo: Vec<(RegionId, Undo)>) {
        let mut sessions = self.inner.sessions.lock();
        for (region, step) in undo.into_iter().rev() {
            sessions.entry(region).or_default().undo(step);
        }
        sessions.retain(|_, t| !t.is_empty() || t.now_ms() > 0);
    }

    /// The limits of the regions' session tables.
    pub fn session_limits(&self) -> SessionLimits {
        self.inner.options.session_limits
    }

    /// The most bytes of keys and values one apply round may buffer.
    pub fn max_round_bytes(&self) -> usize {
        self.limits().max_round_bytes
    }

    /// The largest key a round takes.
    pub fn max_key_bytes(&self) -> usize {
        self.limits().max_key_bytes
    }

    /// The largest value a round takes.
    pub fn max_value_bytes(&self) -> usize {
        self.limits().max_value_bytes
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

    /// Checks that the store hosts region `id` at exactly `epoch` (a region a round
    /// pinned already: see `ApplyRound::prepare_for_region`).
    pub(crate) fn check_epoch(&self, id: RegionId, epoch: Epoch) -> Result<()> {
        let regions = self.inner.regions.read();
        match regions.map.get(id) {
            None => Err(Error::RegionNotFound { region: id }),
            Some(region) if region.epoch != epoch => {
                drop(regions);
                Err(self.epoch_not_match(id, epoch))
            }
            Some(_) => Ok(()),
        }
    }

    pub(crate) fn release_round(&self, round: RoundId) {
        self.inner.pins.lock().release_round(round);
    }

    /// Applies `batch`, written to the regions `prepared` (a round's: where the charge
    /// of each key is looked up first), then publishes `txn`, the round's changes of
    /// transaction state, once the data is visible (both under the commit lock: a
    /// region change or checkpoint sees both or neither).
    pub(crate) fn commit_writes(
        &self,
        batch: Batch,
        prepared: &[RegionId],
        txn: Vec<(RegionId, TxnOverlay)>,
    ) -> Result<Option<Seq>> {
        self.inner.check_usable()?;
        if batch.is_empty() && txn.is_empty() {
            return Ok(None);
        }
        let inner = &*self.inner;
        let mut commit = inner.commit.lock();
        // A version GC's floor goes up BEFORE the data that deletes below it is
        // visible: a snapshot read that checks the floor after taking its view never
        // misses a floor its view's deletions were made under (`TxnTable::gc_floor`).
        if txn.iter().any(|(_, o)| o.gc_floor.is_some()) {
            self.publish_gc_floors(&txn);
        }
        let seq = if batch.is_empty() {
            None
        } else {
            Some(self.apply_batch(&mut commit, batch, prepared)?)
        };
        if !txn.is_empty() {
            self.publish_txn(txn);
        }
        drop(commit);
        Ok(seq)
    }

    /// Applies a non-empty `batch` with the commit lock held; publishes it.
    fn apply_batch(
        &self,
        commit: &mut CommitState,
        mut batch: Batch,
        prepared: &[RegionId],
    ) -> Result<Seq> {
        let inner = &*self.inner;
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
        let mut cache = RegionCache::new(&regions, prepared);
        inner.memtable.apply(&batch, &vis, &mut |key, delta| {
            if let Some(b) = cache.lookup(&regions, key).and_then(|id| regions.bytes.get(&id)) {
                add_signed(b, delta);
            }
        });
        commit.next_seq = last + 1;
        inner.visible_seq.store(last, Ordering::Release);
        Ok(Seq(last))
    }

    /// Raises the version GC floors a round sets (call with the commit lock held,
    /// before its data is visible). A floor whose region is gone is dropped with it.
    fn publish_gc_floors(&self, txn: &[(RegionId, TxnOverlay)]) {
        let inner = &*self.inner;
        let regions = inner.regions.read();
        let mut tables = inner.txn.lock();
        for (prepared, overlay) in txn {
            if let (Some(floor), Some(r)) = (overlay.gc_floor, regions.map.get(*prepared)) {
                let table = tables.entry(r.id).or_default();
                table.gc_floor = table.gc_floor.max(floor);
            }
        }
    }

    /// Applies a committed round's changes of transaction state to the tables (call
    /// with the commit lock held, after the round's data is visible). Each lock goes
    /// to the region holding its key, each record to the region holding its primary
    /// key: the region the round prepared, unless a region change moved the key since
    /// (an entry whose key no hosted region holds is dropped with its range).
    fn publish_txn(&self, txn: Vec<(RegionId, TxnOverlay)>) {
        let inner = &*self.inner;
        let regions = inner.regions.read();
        let mut tables = inner.txn.lock();
        let mut added = 0u64;
        let mut removed = 0u64;
        let mut touched = Vec::new();
        for (prepared, overlay) in txn {
            let home = regions.map.get(prepared);
            let region_of = |key: &[u8]| match home {
                Some(r) if in_range(key, &r.start, r.end.as_deref()) => Some(r.id),
                _ => regions.map.region_for_key(key).map(|r| r.id),
            };
            for (key, lock) in overlay.locks {
                let Some(id) = region_of(&key) else { continue };
                touched.push(id);
                let table = tables.entry(id).or_default();
                match lock {
                    Some(entry) => {
                        if table.locks.insert(key, entry).is_none() {
                            added += 1;
                        }
                    }
                    None => {
                        if table.locks.remove(&key).is_some() {
                            removed += 1;
                        }
                    }
                }
            }
            for (id_key, record) in overlay.records {
                let Some(id) = region_of(&id_key.0) else { continue };
                touched.push(id);
                let table = tables.entry(id).or_default();
                match record {
                    Some(entry) => table.records.insert(id_key, entry),
                    None => table.records.remove(&id_key),
                };
            }
            if let (Some(floor), Some(r)) = (overlay.floor, home) {
                let table = tables.entry(r.id).or_default();
                table.floor = table.floor.max(floor);
            }
        }
        // A table emptied here is dropped (absent: empty); only the touched ones.
        touched.sort_unstable();
        touched.dedup();
        for id in touched {
            if tables.get(&id).is_some_and(TxnTable::is_empty) {
                tables.remove(&id);
            }
        }
        let count = inner.txn_locks.load(Ordering::Relaxed);
        inner.txn_locks.store((count + added).saturating_sub(removed), Ordering::Release);
        debug_assert_eq!(
            inner.txn_locks.load(Ordering::Relaxed),
            tables.values().map(|t| t.lock_count() as u64).sum::<u64>(),
            "the store-wide lock count is the tables'"
        );
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

/// Finds the region of each key charged by a commit: the last one found, else the
/// round's prepared regions (sorted by start key: a binary search over a few warm
/// entries), else the whole region map. It borrows the regions from the map the caller
/// holds locked. With thousands of regions written at random nearly every key is in a
/// region other than the last, and a descent of the map of every region was a cold
/// walk per key (measured at 10,000 regions).
struct RegionCache<'a> {
    last: Option<&'a Region>,
    prepared: Vec<&'a Region>,
}

impl<'a> RegionCache<'a> {
    fn new(regions: &'a RegionState, prepared: &[RegionId]) -> RegionCache<'a> {
        let mut sorted: Vec<&Region> =
            prepared.iter().filter_map(|&id| regions.map.get(id)).collect();
        sorted.sort_unstable_by(|a, b| a.start.cmp(&b.start));
        RegionCache { last: None, prepared: sorted }
    }

    fn lookup(&mut self, regions: &'a RegionState, key: &[u8]) -> Option<RegionId> {
        let holds = |r: &Region| in_range(key, &r.start, r.end.as_deref());
        if let Some(region) = self.last
            && holds(region)
        {
            return Some(region.id);
        }
        let after = self.prepared.partition_point(|r| r.start.as_slice() <= key);
        let region = match after.checked_sub(1).map(|i| self.prepared[i]) {
            Some(region) if holds(region) => region,
            _ => regions.map.region_for_key(key)?,
        };
        self.last = Some(region);
        Some(region.id)
    }
}

impl Inner {
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
    pub(crate) fn fail(&self, op: &str, path: &Path, e: &io::Error) -> Error {
        let cause: Arc<str> = format!("{op} on {}: {e}", path.display()).into();
        tracing::error!(%cause, "engine failed; reopen to recover");
        let mut failure = self.failure.lock();
        let cause = failure.get_or_insert(cause).clone();
        Error::Poisoned { cause }
    }

    /// What a writer may drop now; call with the commit lock held.
    fn visibility(&self) -> Visibility {
        let snapshots = self.read_views.lock();
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
        let dropped: Vec<u64> = durable
            .manifest
            .referenced_files()
            .difference(&next.referenced_files())
            .copied()
            .collect();
        durable.manifest = next;
        if !dropped.is_empty() {
            // Unreferenced files are garbage: a failure here only leaves them for the
            // next open to remove.
            for id in dropped {
                let path = self.dir.join(checkpoint::file_name(id));
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
}
