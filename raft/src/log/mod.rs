//! The Raft log of every region of a store, on the store's one WAL.
//!
//! Entries of all regions are interleaved in one [`Wal`]: each write of the store (one
//! or more regions' ready) is one WAL record (encoded by the `batch` module). In memory, every region keeps
//! an index from Raft index to the record and span holding the entry, the entries
//! cached (bounded), and its state (hard state, conf state, compaction point).
//!
//! The flow follows raft-rs's asynchronous ready:
//! 1. the Raft thread [`RaftLog::stage`]s a ready's entries and state into a
//!    [`LogWrite`]: they are readable through the peer's storage at once, as raft-rs
//!    requires before `advance_append_async`;
//! 2. the driver makes the write durable: a store's writer thread with
//!    [`RaftLog::persist_all`] (one WAL record for every write it has queued,
//!    group-committed with the other writers'), the simulator with
//!    [`RaftLog::persist`]; either returns once the record is durable, and the index
//!    then records where each entry went;
//! 3. the Raft thread calls `on_persist_ready`, and only then sends the messages that
//!    acknowledge the entries.
//!
//! One write is persisted on the Raft thread itself, outside any writer: applying a
//! split persists its children's new logs with [`RaftLog::persist`] (a WAL append and
//! fdatasync) before the engine splits, and every region of that thread waits for it.
//!
//! Writes of one region must be persisted in the order they were staged (the core that
//! owns a region hands its writes, in order, to one writer), since recovery replays
//! records in WAL order.
//!
//! Opening replays every record to rebuild the index. [`RaftLog::purge_plan`] tells
//! how far the WAL may be purged (below every entry not yet compacted and every
//! region's latest state record) and which regions' state should be rewritten so that
//! an idle region does not hold old segments forever; the rewrite is staged like any
//! other write, so a region's records keep their order.

pub(crate) mod batch;
mod cut;
mod detached;
mod region;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use bytes::Bytes;
use parking_lot::{Mutex, RwLock};
use raft::eraftpb::{ConfState, Entry, HardState};
use regionkv_engine::{Epoch, IdHashMap, RegionId};
use regionkv_wal::{Lsn, Wal};

use self::batch::Item;
pub use self::batch::{IdFloor, LogState};
use self::cut::{Part, Placed, plan_records};
use self::region::{Location, RegionLog, UnconfirmedStart, entry_bytes};
use crate::error::{Error, Result};

/// Bounds of the log's memory.
#[derive(Clone, Copy, Debug)]
pub struct RaftLogOptions {
    /// Bytes of durable entries kept cached per region after a write; older ones are
    /// read back from the WAL when needed (a lagging follower).
    pub region_cache_bytes: usize,
    /// Bytes of entries cached over all regions; past it, written regions keep none.
    pub total_cache_bytes: usize,
}

impl Default for RaftLogOptions {
    fn default() -> Self {
        RaftLogOptions { region_cache_bytes: 1 << 20, total_cache_bytes: 256 << 20 }
    }
}

/// One region's part of a write.
#[derive(Debug, Default)]
struct RegionWrite {
    entries: Vec<Entry>,
    /// The region's whole state after this write, if it changed.
    state: Option<LogState>,
    /// The log is removed first (then `state`, if set, creates it anew).
    tombstone: Option<Removal>,
}

/// A tombstone being written: the epoch of the replica destroyed, if it was one.
#[derive(Clone, Copy, Debug)]
struct Removal {
    epoch: Option<Epoch>,
}

/// A destroyed replica's tombstone: the epoch it had, and the record holding it.
#[derive(Clone, Copy, Debug)]
struct Tombstone {
    epoch: Epoch,
    /// The latest record holding it (`None`: staged, not durable yet).
    lsn: Option<Lsn>,
}

/// Changes staged for one WAL record; made durable by [`RaftLog::persist`].
#[derive(Debug)]
pub struct LogWrite {
    id: u64,
    /// In the order regions were first staged (the order they are encoded in).
    regions: Vec<(RegionId, RegionWrite)>,
    /// Position of each region in `regions` once they are more than
    /// [`SCANNED_REGIONS`] (a write may span thousands of regions); empty until then.
    positions: IdHashMap<RegionId, usize>,
}

/// Regions of a write found by a scan of `LogWrite::regions` rather than through
/// `LogWrite::positions`: most writes hold one region (a put on a lone store: its
/// entry, then its commit), and a map would be allocated for every one of them.
const SCANNED_REGIONS: usize = 8;

impl LogWrite {
    /// True if nothing was staged.
    pub fn is_empty(&self) -> bool {
        self.regions.is_empty()
    }

    /// The term of every hard state in the write, by region (for checkers: what a
    /// region's durable term is once the write persisted).
    pub fn terms(&self) -> impl Iterator<Item = (RegionId, u64)> + '_ {
        self.regions.iter().filter_map(|(id, w)| w.state.as_ref().map(|s| (*id, s.hard_state.term)))
    }

    fn region(&mut self, region: RegionId) -> &mut RegionWrite {
        let regions = &mut self.regions;
        let at = if regions.len() <= SCANNED_REGIONS {
            if let Some(at) = regions.iter().position(|(id, _)| *id == region) {
                at
            } else {
                regions.push((region, RegionWrite::default()));
                if regions.len() > SCANNED_REGIONS {
                    self.positions =
                        regions.iter().enumerate().map(|(at, (id, _))| (*id, at)).collect();
                }
                regions.len() - 1
            }
        } else {
            *self.positions.entry(region).or_insert_with(|| {
                regions.push((region, RegionWrite::default()));
                regions.len() - 1
            })
        };
        &mut self.regions[at].1
    }
}

/// The newer of two epochs of one region (each half only grows).
fn newer_of(a: Epoch, b: Epoch) -> Epoch {
    Epoch { version: a.version.max(b.version), conf_ver: a.conf_ver.max(b.conf_ver) }
}

/// One region's log, held directly (see [`RaftLog::handle`]).
#[derive(Clone, Debug)]
pub(crate) struct RegionHandle {
    region: RegionId,
    log: Arc<Mutex<RegionLog>>,
}

impl RegionHandle {
    /// The log, unless it was tombstoned since the handle was taken.
    fn lock(&self) -> Result<parking_lot::MutexGuard<'_, RegionLog>> {
        let log = self.log.lock();
        if log.removed {
            return Err(Error::RegionNotFound { region: self.region });
        }
        Ok(log)
    }
}

/// How far the WAL could be purged now.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct PurgePlan {
    /// Every record below this Lsn is no longer needed.
    pub purge_below: Lsn,
    /// Regions whose latest state record is older than their entries: rewriting their
    /// state lets a later purge pass it.
    pub rewrite: Vec<RegionId>,
    /// Tombstones held in records older than every region's entries: rewritten like
    /// idle regions' states, so that a purge never loses one.
    pub rewrite_tombstones: Vec<RegionId>,
}

/// The Raft logs of all regions of a store.
#[derive(Debug)]
pub struct RaftLog {
    wal: Wal,
    // Lock order: `regions` before any region's mutex, and before `tombstones`; never
    // the reverse.
    regions: RwLock<IdHashMap<RegionId, Arc<Mutex<RegionLog>>>>,
    /// Destroyed replicas' epochs, by region (A10 in ARCHITECTURE.md's Regions
    /// section): messages at or below are dropped; a region created again loses its.
    tombstones: Mutex<IdHashMap<RegionId, Tombstone>>,
    /// Records a staged write will make obsolete (its compaction, snapshot or
    /// tombstone), by write id: the oldest record the durable state still needs. Held
    /// back from purges until that write is durable, since a crash before it leaves the
    /// old state in force.
    holds: Mutex<Vec<(u64, Lsn)>>,
    cached_bytes: AtomicUsize,
    next_write: AtomicU64,
    options: RaftLogOptions,
}

impl RaftLog {
    /// Rebuilds the logs from `wal`, replaying every record.
    pub fn open(wal: Wal, options: RaftLogOptions) -> Result<RaftLog> {
        let mut regions: IdHashMap<RegionId, RegionLog> = IdHashMap::default();
        let mut tombstones: IdHashMap<RegionId, Tombstone> = IdHashMap::default();
        let mut records = 0u64;
        for record in wal.iter_from(wal.first_lsn())? {
            let record = record?;
            records += 1;
            let corrupt = |reason: String| Error::LogCorruption { lsn: record.lsn, reason };
            let items = batch::decode(&record.payload)
                .map_err(|e| corrupt(format!("{} at byte {}", e.reason, e.offset)))?;
            for item in items {
                match item {
                    Item::Entries { region, first_index, spans } => {
                        // No state yet: the region's older records were purged, after a
                        // compaction whose state record comes later (`recover_entries`).
                        let log = regions.entry(region).or_insert_with(|| {
                            let state = LogState { first_index, ..LogState::default() };
                            let mut log = RegionLog::new(state);
                            log.unconfirmed_start = Some(UnconfirmedStart {
                                after: None,
                                at: first_index,
                                lsn: record.lsn,
                            });
                            log
                        });
                        log.recover_entries(first_index, &spans, record.lsn)
                            .map_err(|e| corrupt(format!("region {}: {e}", region.0)))?;
                    }
                    Item::State { region, state } => {
                        if state.first_index == 0 {
                            return Err(corrupt(format!("region {}: first index 0", region.0)));
                        }
                        match regions.get_mut(&region) {
                            // The log starts after a purge (see `recover_entries`): an
                            // older state than the compaction that allowed it, kept
                            // for its hard and conf state.
                            Some(log)
                                if log.unconfirmed_start.is_some()
                                    && state.first_index < log.state.first_index =>
                            {
                                log.set_state(LogState {
                                    first_index: log.state.first_index,
                                    truncated_term: log.state.truncated_term,
                                    ..state
                                });
                            }
                            Some(log) if state.first_index < log.state.first_index => {
                                return Err(corrupt(format!(
                                    "region {}: compaction point went back",
                                    region.0
                                )));
                            }
                            Some(log) => {
                                if log.unconfirmed_start.take().is_some()
                                    && state.first_index == log.state.first_index
                                {
                                    // The compaction the purge followed: it knows the
                                    // term before the log's first entry.
                                    log.state.truncated_term = state.truncated_term;
                                }
                                log.set_state(state);
                            }
                            None => {
                                tombstones.remove(&region); // created again
                                regions.insert(region, RegionLog::new(state));
                            }
                        }
                        regions.get_mut(&region).expect("just set").state_lsn = Some(record.lsn);
                    }
                    Item::Tombstone { region, epoch } => {
                        regions.remove(&region);
                        if let Some(epoch) = epoch {
                            tombstones.insert(region, Tombstone { epoch, lsn: Some(record.lsn) });
                        }
                    }
                }
            }
        }
        // A log that starts after a purge must have been compacted that far by a state
        // record after those entries; if none came, entries it needs are gone.
        if let Some((region, gap)) =
            regions.iter().find_map(|(id, log)| log.unconfirmed_start.map(|gap| (*id, gap)))
        {
            let reason = match gap.after {
                Some(after) => {
                    format!("region {}: entries at {} leave a gap after {after}", region.0, gap.at)
                }
                None => format!("entries of region {} before any state of it", region.0),
            };
            return Err(Error::LogCorruption { lsn: gap.lsn, reason });
        }
        tracing::info!(
            records,
            regions = regions.len(),
            tombstones = tombstones.len(),
            "recovered the Raft log"
        );
        let regions =
            regions.into_iter().map(|(id, log)| (id, Arc::new(Mutex::new(log)))).collect();
        Ok(RaftLog {
            wal,
            regions: RwLock::new(regions),
            tombstones: Mutex::new(tombstones),
            holds: Mutex::new(Vec::new()),
            cached_bytes: AtomicUsize::new(0),
            next_write: AtomicU64::new(1),
            options,
        })
    }

    /// The WAL underneath.
    pub fn wal(&self) -> &Wal {
        &self.wal
    }

    /// Regions that have a log.
    pub fn region_ids(&self) -> Vec<RegionId> {
        self.regions.read().keys().copied().collect()
    }

    fn region(&self, region: RegionId) -> Result<Arc<Mutex<RegionLog>>> {
        self.regions.read().get(&region).cloned().ok_or(Error::RegionNotFound { region })
    }

    /// A handle on `region`'s log for the `*_in` readers: a peer keeps one so that
    /// raft-rs's frequent bound and term queries skip the map of thousands of regions.
    pub(crate) fn handle(&self, region: RegionId) -> Result<RegionHandle> {
        Ok(RegionHandle { region, log: self.region(region)? })
    }

    /// The current (possibly not yet durable) state of a region's log.
    pub fn state(&self, region: RegionId) -> Option<LogState> {
        self.regions.read().get(&region).map(|log| log.lock().state.clone())
    }

    /// Starts a new write.
    pub fn begin_write(&self) -> LogWrite {
        LogWrite {
            id: self.next_write.fetch_add(1, Ordering::Relaxed),
            regions: Vec::new(),
            positions: IdHashMap::default(),
        }
    }

    /// Creates a region's log with `state` (a new peer); it is persisted with `write`.
    pub fn create_region(
        &self,
        write: &mut LogWrite,
        region: RegionId,
        state: LogState,
    ) -> Result<()> {
        if state.first_index == 0 {
            return Err(Error::Internal(format!("region {} created with first index 0", region.0)));
        }
        let mut regions = self.regions.write();
        if regions.contains_key(&region) {
            return Err(Error::RegionExists { region });
        }
        regions.insert(region, Arc::new(Mutex::new(RegionLog::new(state.clone()))));
        self.tombstones.lock().remove(&region);
        write.region(region).state = Some(state);
        Ok(())
    }

    /// Stages a ready's entries and hard state for `region`: readable at once, durable
    /// once `write` is persisted.
    pub fn stage(
        &self,
        write: &mut LogWrite,
        region: RegionId,
        entries: Vec<Entry>,
        hard_state: Option<&HardState>,
    ) -> Result<()> {
        if entries.is_empty() && hard_state.is_none() {
            // Nothing to persist: the region stays out of the write, which would
            // otherwise cost an empty WAL record and its fsync.
            return Ok(());
        }
        self.stage_locked(write, region, &mut self.region(region)?.lock(), entries, hard_state);
        Ok(())
    }

    /// [`RaftLog::stage`] for a replica's turn, through its handle (no lookup in the
    /// table of regions). A hard state whose term and vote are the log's is taken as
    /// [`RaftLog::keep_commit`] takes it: kept in memory, no state record for it. With
    /// thousands of regions written at random most writes of a follower carry one (its
    /// commit index moved with the entries); nothing depends on a commit index being
    /// durable (see `keep_commit`).
    pub(crate) fn stage_in(
        &self,
        write: &mut LogWrite,
        handle: &RegionHandle,
        entries: Vec<Entry>,
        hard_state: Option<&HardState>,
    ) -> Result<()> {
        let mut log = handle.lock()?;
        let kept = &log.state.hard_state;
        match hard_state {
            Some(hs) if (hs.term, hs.vote) == (kept.term, kept.vote) => {
                log.state.hard_state = hs.clone();
                self.stage_locked(write, handle.region, &mut log, entries, None);
            }
            hs => self.stage_locked(write, handle.region, &mut log, entries, hs),
        }
        Ok(())
    }

    fn stage_locked(
        &self,
        write: &mut LogWrite,
        region: RegionId,
        log: &mut RegionLog,
        entries: Vec<Entry>,
        hard_state: Option<&HardState>,
    ) {
        if entries.is_empty() && hard_state.is_none() {
            return;
        }
        let added = log.stage(&entries, write.id);
        self.cached_bytes.fetch_add(added, Ordering::Relaxed);
        let w = write.region(region);
        if let Some(first) = entries.first() {
            // Later entries of the same region in the same write replace from their index.
            w.entries.retain(|e| e.index < first.index);
            w.entries.extend(entries);
        }
        if let Some(hs) = hard_state {
            log.state.hard_state = hs.clone();
            w.state = Some(log.state.clone());
        }
    }

    /// Takes a hard state that moved only its commit index (raft-rs's `must_sync` is
    /// false): kept in memory, and written with the region's next state record rather
    /// than costing one now. Nothing depends on it being durable: after a crash the
    /// commit index is learned again from the leader (and open raises it to whatever
    /// the engine's images already hold).
    pub fn keep_commit(&self, region: RegionId, hard_state: &HardState) -> Result<()> {
        let log = self.region(region)?;
        let mut log = log.lock();
        debug_assert_eq!(
            (log.state.hard_state.term, log.state.hard_state.vote),
            (hard_state.term, hard_state.vote),
            "only the commit index may change without a sync"
        );
        log.state.hard_state = hard_state.clone();
        Ok(())
    }

    /// Stages a new conf state for `region`, produced by applying entry `index`.
    pub fn stage_conf_state(
        &self,
        write: &mut LogWrite,
        region: RegionId,
        conf_state: ConfState,
        index: u64,
    ) -> Result<()> {
        let log = self.region(region)?;
        let mut log = log.lock();
        log.state.conf_state = conf_state;
        log.state.conf_index = index;
        write.region(region).state = Some(log.state.clone());
        Ok(())
    }

    /// Stages `region`'s new id floor (set by a split or merge; see
    /// [`LogState::id_floor`]).
    pub fn stage_id_floor(
        &self,
        write: &mut LogWrite,
        region: RegionId,
        floor: IdFloor,
    ) -> Result<()> {
        let log = self.region(region)?;
        let mut log = log.lock();
        log.state.id_floor = Some(floor);
        write.region(region).state = Some(log.state.clone());
        Ok(())
    }

    /// Stages `region`'s votes-from index (see [`LogState::votes_from`]), or clears it.
    pub fn stage_votes_from(
        &self,
        write: &mut LogWrite,
        region: RegionId,
        index: Option<u64>,
    ) -> Result<()> {
        let log = self.region(region)?;
        let mut log = log.lock();
        log.state.votes_from = index;
        write.region(region).state = Some(log.state.clone());
        Ok(())
    }

    /// Stages a compaction: entries up to `index` (whose term is `term`) are no longer
    /// needed, because a checkpoint at `index` or later is durable.
    pub fn stage_compaction(
        &self,
        write: &mut LogWrite,
        region: RegionId,
        index: u64,
    ) -> Result<()> {
        let log = self.region(region)?;
        let mut log = log.lock();
        if index < log.state.first_index {
            return Ok(());
        }
        let Some(term) = log.term(index) else {
            return Err(Error::Internal(format!(
                "compaction of region {} to {index} beyond its log",
                region.0
            )));
        };
        let mut state = log.state.clone();
        state.first_index = index + 1;
        state.truncated_term = term;
        let freed = log.cached_bytes;
        self.hold(write, log.min_lsn());
        log.set_state(state.clone());
        self.cached_bytes.fetch_sub(freed - log.cached_bytes, Ordering::Relaxed);
        write.region(region).state = Some(state);
        Ok(())
    }

    /// Holds `lsn` (what the durable state of a region needs now) back from purges
    /// until `write`, which makes it obsolete, is durable.
    fn hold(&self, write: &LogWrite, lsn: Option<Lsn>) {
        if let Some(lsn) = lsn {
            self.holds.lock().push((write.id, lsn));
        }
    }

    /// Stages a snapshot: the log restarts after `state.first_index - 1`. The snapshot's
    /// data must already be durable in the engine.
    pub fn stage_snapshot(
        &self,
        write: &mut LogWrite,
        region: RegionId,
        state: LogState,
    ) -> Result<()> {
        let log = self.region(region)?;
        let mut log = log.lock();
        let before = log.cached_bytes;
        self.hold(write, log.min_lsn());
        log.set_state(state.clone());
        self.cached_bytes.fetch_sub(before - log.cached_bytes, Ordering::Relaxed);
        let w = write.region(region);
        w.entries.clear();
        w.state = Some(state);
        Ok(())
    }

    /// Stages the region's current state again, so its old state record stops holding
    /// back a purge (see [`RaftLog::purge_plan`]).
    pub fn stage_state_rewrite(&self, write: &mut LogWrite, region: RegionId) -> Result<()> {
        let log = self.region(region)?;
        let state = log.lock().state.clone();
        write.region(region).state.get_or_insert(state);
        Ok(())
    }

    /// Stages the removal of a region's log. `epoch`: the epoch of the replica being
    /// destroyed, kept as the region's tombstone (messages of that epoch or older are
    /// dropped, see [`RaftLog::tombstone`]); `None` for a log that never held a replica
    /// (a leftover of an interrupted split, an uninitialized replica collected).
    pub fn stage_tombstone(&self, write: &mut LogWrite, region: RegionId, epoch: Option<Epoch>) {
        if let Some(log) = self.regions.write().remove(&region) {
            let mut log = log.lock();
            self.hold(write, log.min_lsn());
            log.removed = true;
            self.cached_bytes.fetch_sub(log.cached_bytes, Ordering::Relaxed);
        }
        if let Some(epoch) = epoch {
            let mut tombstones = self.tombstones.lock();
            let newest = tombstones.get(&region).map_or(epoch, |t| newer_of(t.epoch, epoch));
            tombstones.insert(region, Tombstone { epoch: newest, lsn: None });
        }
        let w = write.region(region);
        *w = RegionWrite { tombstone: Some(Removal { epoch }), ..RegionWrite::default() };
    }

    /// The epoch of the replica of `region` that was destroyed here, if one was (and
    /// the region was not created again since).
    pub fn tombstone(&self, region: RegionId) -> Option<Epoch> {
        self.tombstones.lock().get(&region).map(|t| t.epoch)
    }

    /// Stages the tombstones `plan` says to rewrite, for regions `owns` accepts (the
    /// core that owns a region writes all of its records, in order).
    pub fn stage_tombstone_rewrites(
        &self,
        write: &mut LogWrite,
        plan: &PurgePlan,
        owns: impl Fn(RegionId) -> bool,
    ) {
        let tombstones = self.tombstones.lock();
        for region in plan.rewrite_tombstones.iter().filter(|r| owns(**r)) {
            if let Some(t) = tombstones.get(region) {
                let w = write.region(*region);
                if w.state.is_none() && w.tombstone.is_none() {
                    w.tombstone = Some(Removal { epoch: Some(t.epoch) });
                }
            }
        }
    }

    /// Makes a staged write durable: one WAL append (group-committed with other
    /// writers), returning once it is fsynced.
    #[allow(
        clippy::needless_pass_by_value,
        reason = "a staged write is persisted once: taking it keeps callers from reusing it"
    )]
    pub fn persist(&self, write: LogWrite) -> Result<Lsn> {
        self.persist_all(std::slice::from_ref(&write))
    }

    /// The largest entry data (plus context) a WAL record of this log holds, alone:
    /// a proposal larger than this is refused (it could never be persisted).
    pub(crate) fn max_entry_bytes(&self) -> usize {
        /// Room kept for an entry's context (raft-rs's, for a conf change).
        const CONTEXT_ROOM: usize = 256;
        let empty = batch::entry_encoded_len(&Entry::default());
        let overhead = 1 + batch::ENTRIES_ITEM_BYTES + empty + CONTEXT_ROOM;
        self.wal.options().max_payload().saturating_sub(overhead)
    }

    /// Makes several staged writes durable, in order, in as few WAL records as the
    /// WAL's largest record allows (a writer that fell behind catches up with one
    /// record where it can). Returns the last record's Lsn.
    ///
    /// Records are cut (A3 in ARCHITECTURE.md's Raft log section) between writes
    /// first; a write too large for one record between its regions; a region's part
    /// too large for one record between its entries. Every record is durable before
    /// the next is appended, so a crash between two records looks like an earlier
    /// crash to each region: its log ends at a prefix of what was staged. When a
    /// region's entries are cut, its state goes in the first record with its commit
    /// index lowered to the last entry there (a durable commit index past the log's
    /// end would stop raft-rs at the next start), and whole in the last record.
    pub fn persist_all(&self, writes: &[LogWrite]) -> Result<Lsn> {
        let _span = tracing::debug_span!("raft_log.persist_all", writes = writes.len()).entered();
        let max = self.wal.options().max_payload();
        let records = plan_records(writes, max)?;
        let mut lsn = None;
        for record in records {
            let (payload, spans) = record.encoder.finish();
            debug_assert!(payload.len() <= max, "planned within the WAL's record limit");
            let at = self.wal.append(&payload)?;
            self.on_record_durable(writes, &record.placed, spans, at);
            lsn = Some(at);
        }
        // Every record of these writes is durable: what their compactions, snapshots
        // and tombstones made obsolete may be purged now.
        self.holds.lock().retain(|(id, _)| writes.iter().all(|w| w.id != *id));
        Ok(lsn.expect("a plan has one record or more"))
    }

    /// Notes where the items of one durable record went.
    fn on_record_durable(
        &self,
        writes: &[LogWrite],
        placed: &[Placed],
        spans: Vec<Vec<batch::EntrySpan>>,
        lsn: Lsn,
    ) {
        let mut spans = spans.into_iter();
        let regions = self.regions.read();
        for p in placed {
            let write = &writes[p.write];
            let (region, w) = &write.regions[p.region];
            match p.item {
                Part::Tombstone => {
                    if w.tombstone.is_some_and(|r| r.epoch.is_some())
                        && let Some(t) = self.tombstones.lock().get_mut(region)
                    {
                        t.lsn = Some(lsn);
                    }
                }
                Part::State => {
                    if let Some(log) = regions.get(region) {
                        log.lock().state_lsn = Some(lsn);
                    }
                }
                Part::Entries { first_index } => {
                    let entry_spans = spans.next().expect("one span list per ENTRIES item");
                    if let Some(log) = regions.get(region) {
                        let mut log = log.lock();
                        log.on_persisted(first_index, &entry_spans, lsn, write.id);
                        self.evict(&mut log);
                    }
                }
            }
        }
    }

    fn evict(&self, log: &mut RegionLog) {
        let keep = if self.cached_bytes.load(Ordering::Relaxed) > self.options.total_cache_bytes {
            0
        } else {
            self.options.region_cache_bytes
        };
        let freed = log.evict(keep);
        self.cached_bytes.fetch_sub(freed, Ordering::Relaxed);
    }

    /// Entries `[low, high)` of `region`, at most `max_bytes` of them but at least one.
    pub fn entries(
        &self,
        region: RegionId,
        low: u64,
        high: u64,
        max_bytes: Option<u64>,
    ) -> Result<Vec<Entry>> {
        self.entries_in(&self.handle(region)?, low, high, max_bytes)
    }

    /// [`RaftLog::entries`] through a handle.
    pub(crate) fn entries_in(
        &self,
        handle: &RegionHandle,
        low: u64,
        high: u64,
        max_bytes: Option<u64>,
    ) -> Result<Vec<Entry>> {
        let region = handle.region;
        let log = handle.lock()?;
        if low < log.first_index() {
            return Err(Error::Compacted { region, index: low });
        }
        if high > log.last_index() + 1 {
            return Err(Error::EntryUnavailable { region, index: high - 1 });
        }
        let mut out = Vec::with_capacity((high - low) as usize);
        let mut bytes = 0u64;
        let mut record: Option<(Lsn, Bytes)> = None;
        for index in low..high {
            let slot = log.slot(index).expect("checked against the log's bounds");
            let entry = match (&slot.cached, slot.location) {
                (Some(e), _) => e.clone(),
                (None, Location::Durable { lsn, span }) => {
                    if record.as_ref().is_none_or(|(l, _)| *l != lsn) {
                        record = Some((lsn, self.wal.read(lsn)?.payload));
                    }
                    let payload = &record.as_ref().expect("read above").1;
                    batch::entry_at(payload, span, index).map_err(|e| Error::LogCorruption {
                        lsn,
                        reason: format!(
                            "entry {index} of region {}: {} at byte {}",
                            region.0, e.reason, e.offset
                        ),
                    })?
                }
                (None, Location::Pending { .. }) => {
                    unreachable!("pending entries are always cached")
                }
            };
            bytes += entry_bytes(&entry) as u64;
            if !out.is_empty() && max_bytes.is_some_and(|max| bytes > max) {
                break;
            }
            out.push(entry);
        }
        Ok(out)
    }

    /// The term of entry `index` of `region`, for `index` in `[first - 1, last]`.
    pub fn term(&self, region: RegionId, index: u64) -> Result<u64> {
        Self::term_in(&self.handle(region)?, index)
    }

    /// [`RaftLog::term`] through a handle.
    pub(crate) fn term_in(handle: &RegionHandle, index: u64) -> Result<u64> {
        let region = handle.region;
        let log = handle.lock()?;
        if index + 1 < log.first_index() {
            return Err(Error::Compacted { region, index });
        }
        log.term(index).ok_or(Error::EntryUnavailable { region, index })
    }

    /// First and last index of `region`'s log.
    pub fn bounds(&self, region: RegionId) -> Result<(u64, u64)> {
        Self::bounds_in(&self.handle(region)?)
    }

    /// [`RaftLog::bounds`] through a handle.
    pub(crate) fn bounds_in(handle: &RegionHandle) -> Result<(u64, u64)> {
        let log = handle.lock()?;
        Ok((log.first_index(), log.last_index()))
    }

    /// How far the WAL may be purged, and which regions' states to rewrite first.
    pub fn purge_plan(&self) -> PurgePlan {
        let end = self.wal.end_lsn();
        let regions = self.regions.read();
        let mut entries_floor = end;
        let mut states = Vec::with_capacity(regions.len());
        for (&id, log) in regions.iter() {
            let log = log.lock();
            let first_entry = log.slots.iter().find_map(|s| match s.location {
                Location::Durable { lsn, .. } => Some(lsn),
                Location::Pending { .. } => None,
            });
            if let Some(lsn) = first_entry {
                entries_floor = entries_floor.min(lsn);
            }
            states.push((id, log.min_lsn().unwrap_or(end), log.state_lsn));
        }
        let mut rewrite: Vec<RegionId> = states
            .iter()
            .filter(|(_, _, state)| state.is_some_and(|s| s < entries_floor))
            .map(|(id, _, _)| *id)
            .collect();
        rewrite.sort_unstable();
        // A tombstone not durable yet holds nothing back: its record comes later.
        let tombstones: Vec<(RegionId, Lsn)> = self
            .tombstones
            .lock()
            .iter()
            .filter_map(|(&id, t)| t.lsn.map(|lsn| (id, lsn)))
            .collect();
        let mut rewrite_tombstones: Vec<RegionId> =
            tombstones.iter().filter(|(_, lsn)| *lsn < entries_floor).map(|(id, _)| *id).collect();
        rewrite_tombstones.sort_unstable();
        let holds: Vec<Lsn> = self.holds.lock().iter().map(|(_, lsn)| *lsn).collect();
        let purge_below = states
            .iter()
            .map(|(_, min, _)| *min)
            .chain(tombstones.iter().map(|(_, lsn)| *lsn))
            .chain(holds)
            .min()
            .unwrap_or(end)
            .min(end);
        PurgePlan { purge_below, rewrite, rewrite_tombstones }
    }

    /// Purges WAL segments wholly below `plan.purge_below`. Returns segments removed.
    pub fn purge(&self, plan: &PurgePlan) -> Result<usize> {
        Ok(self.wal.purge_below(plan.purge_below)?)
    }
}

#[cfg(test)]
mod tests;
