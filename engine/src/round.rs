//! Write batch rounds (`TiKV`'s invariant): an apply round is a guard whose end always
//! resets the batch.
//!
//! A round prepares regions in turn; puts and deletes buffer for the current one. The
//! state a round can be in:
//!
//! - *initial*: no current region, nothing prepared, no pin held, nothing buffered.
//!   A new round starts here, and every end ([`ApplyRound::commit`],
//!   [`ApplyRound::clear`], drop) returns here, whether or not anything was written.
//! - *open*: a current region, the regions prepared before it, their pins, and zero
//!   or more buffered writes. "No keys buffered" ([`ApplyRound::is_empty`]) is a
//!   different question from "round over": a round that prepared a region and wrote
//!   nothing still holds a pin until it ends.
//!
//! The upstream bug this shape rules out: a batch that prepared region B and wrote
//! nothing was not cleared, so B stayed marked prepared; the next round prepared A
//! and then B, found B "prepared but not current", and panicked. Here a round cannot
//! leak state into the next one (each round is a new value, and its end resets it),
//! and coming back to an earlier region inside one round is the typed error
//! [`Error::RegionAlreadyPrepared`], never a panic.
//!
//! Pins: preparing a region pins it in the engine's pin ledger (`pins.rs`) under the
//! round's id, so the region cannot be removed while the round may still write to it;
//! a round's end releases everything listed under its id, exactly once.
//!
//! Sessions: [`ApplyRound::session_write`] decides whether a client's write is new to
//! the current region and records it in the region's session table at once, so that
//! the next write of the round sees it; the round keeps how to undo it, and undoes it
//! unless it commits. A region's table is changed only by the thread that applies the
//! region (one round at a time) and by region changes, which the Raft layer makes
//! between rounds.
//!
//! Transaction state (`crate::txn`): changes of a region's locks, records and floor
//! (`ApplyRound::set_txn_lock`, `set_txn_record`, `raise_txn_floor`) go to an overlay
//! in the round, which the round's own reads see (`txn_lock`, `txn_record`,
//! `txn_floor`); [`ApplyRound::commit`] publishes the data first and the overlay
//! after it, and every other end drops the overlay.

use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::memtable::{Batch, Seq};
use crate::pins::RoundId;
use crate::region::{Epoch, Region, RegionId, in_range};
use crate::sessions::{SessionId, SessionWrite, Undo};
use crate::txn::TxnOverlay;

/// The region a round currently writes to, as it was when prepared.
#[derive(Debug)]
struct Prepared {
    region: Region,
}

/// One apply round: a guard over the engine's write batch. See the module docs.
///
/// ```
/// # use std::sync::Arc;
/// # use regionkv_engine::{Engine, EngineOptions, Region, RegionId, StoreId};
/// # let engine = Engine::open(Arc::new(regionkv_wal::SimFs::new()), "/e", EngineOptions::new(StoreId(1)))?;
/// # engine.insert_region(Region::whole(RegionId(1)))?;
/// let epoch = engine.region(RegionId(1)).unwrap().epoch;
/// let mut round = engine.begin_round();
/// round.prepare_for_region(RegionId(1), epoch)?;
/// round.put(b"k", b"v")?;
/// let seq = round.commit()?; // visible to snapshots taken from now on
/// assert!(seq.is_some());
///
/// let mut empty = engine.begin_round();
/// empty.prepare_for_region(RegionId(1), epoch)?;
/// drop(empty); // wrote nothing: the pin is released all the same
/// assert_eq!(engine.pins(RegionId(1)), 0);
/// # Ok::<(), regionkv_engine::Error>(())
/// ```
#[derive(Debug)]
#[must_use = "a round applies nothing until commit() is called"]
pub struct ApplyRound<'e> {
    engine: &'e Engine,
    id: RoundId,
    current: Option<Prepared>,
    /// Regions prepared in this round, in order; the last is the current one.
    prepared: Vec<RegionId>,
    writes: Batch,
    /// Bytes of `writes`.
    bytes: usize,
    /// How to undo this round's changes of session tables, in the order they were made.
    sessions_undo: Vec<(RegionId, Undo)>,
    /// Scratch for one session write's undo steps (kept: a vector per write otherwise).
    session_steps: Vec<Undo>,
    /// This round's changes of transaction state, per region in the order prepared
    /// (`txn/access.rs`): published when the round commits, after its data.
    pub(crate) txn: Vec<(RegionId, TxnOverlay)>,
}

impl Engine {
    /// Starts an apply round. See [`ApplyRound`].
    pub fn begin_round(&self) -> ApplyRound<'_> {
        ApplyRound::new(self, self.next_round_id())
    }
}

impl<'e> ApplyRound<'e> {
    fn new(engine: &'e Engine, id: RoundId) -> ApplyRound<'e> {
        ApplyRound {
            engine,
            id,
            current: None,
            prepared: Vec::new(),
            writes: Batch::new(),
            bytes: 0,
            sessions_undo: Vec::new(),
            session_steps: Vec::new(),
            txn: Vec::new(),
        }
    }

    /// Makes `region` the current region of the round, after checking that the store
    /// hosts it at exactly `epoch`, and pins it until the round ends.
    ///
    /// Preparing the current region again re-checks its epoch (and picks up its range
    /// after a split or merge). Preparing a region that was current earlier in this
    /// round is [`Error::RegionAlreadyPrepared`]. On error the round is unchanged.
    pub fn prepare_for_region(&mut self, region: RegionId, epoch: Epoch) -> Result<()> {
        let is_current = self.current.as_ref().is_some_and(|c| c.region.id == region);
        if is_current && self.current.as_ref().is_some_and(|c| c.region.epoch == epoch) {
            // Pinned already, and its range is the one held: an epoch changes with
            // every change of range. The map is checked all the same (below), without
            // a copy of the region for every write of a batch.
            return self.engine.check_epoch(region, epoch);
        }
        if !is_current && self.prepared.contains(&region) {
            return Err(Error::RegionAlreadyPrepared { region });
        }
        // Checked against the map even for the current region: a split or merge since
        // it was prepared changed its epoch and range. Pinning twice is a no-op.
        let found = self.engine.pin_for_round(self.id, region, epoch)?;
        if !is_current {
            self.prepared.push(region);
        }
        self.current = Some(Prepared { region: found });
        Ok(())
    }

    /// Buffers `key = value` for the current region.
    pub fn put(&mut self, key: &[u8], value: &[u8]) -> Result<()> {
        self.check_write(key, value.len())?;
        self.writes.put(key, value);
        self.bytes += key.len() + value.len();
        Ok(())
    }

    /// Buffers a deletion of `key` for the current region.
    pub fn delete(&mut self, key: &[u8]) -> Result<()> {
        self.check_write(key, 0)?;
        self.writes.delete(key);
        self.bytes += key.len();
        Ok(())
    }

    fn check_write(&self, key: &[u8], value_len: usize) -> Result<()> {
        let limits = self.engine.limits();
        if key.len() > limits.max_key_bytes {
            return Err(too_large("key", key.len(), limits.max_key_bytes));
        }
        if value_len > limits.max_value_bytes {
            return Err(too_large("value", value_len, limits.max_value_bytes));
        }
        self.check_key(key, value_len).map(|_| ())
    }

    /// Checks that `key` fits and is in the current region, and that `more` bytes
    /// with it fit the round; returns the current region's id.
    pub(crate) fn check_key(&self, key: &[u8], more: usize) -> Result<RegionId> {
        let limits = self.engine.limits();
        if key.len() > limits.max_key_bytes {
            return Err(too_large("key", key.len(), limits.max_key_bytes));
        }
        let region = self.region_of(key)?;
        let after = self.bytes + key.len() + more;
        if after > limits.max_round_bytes {
            return Err(too_large("round", after, limits.max_round_bytes));
        }
        Ok(region)
    }

    /// The current region, if it holds `key` ([`Error::KeyNotInRegion`] otherwise).
    pub(crate) fn region_of(&self, key: &[u8]) -> Result<RegionId> {
        let region = &self.current.as_ref().ok_or(Error::NoRegionPrepared)?.region;
        if !in_range(key, &region.start, region.end.as_deref()) {
            return Err(Error::KeyNotInRegion {
                key: key.to_vec(),
                region: Box::new(region.clone()),
            });
        }
        Ok(region.id)
    }

    /// Counts `n` bytes of transaction state against the round's bound (checked by
    /// [`ApplyRound::check_key`] first).
    pub(crate) fn add_bytes(&mut self, n: usize) {
        self.bytes += n;
    }

    /// Takes a client's write numbered `seq` in session `id` for the current region,
    /// stamped `time_ms` by the leader that took it: [`SessionWrite::Fresh`] if the
    /// region has not applied it (buffer its changes now), or
    /// [`SessionWrite::AlreadyApplied`] (a retry: its changes must not be buffered
    /// again). Either way the use is recorded in the region's session table, undone if
    /// the round does not commit.
    pub fn session_write(&mut self, id: SessionId, seq: u64, time_ms: u64) -> Result<SessionWrite> {
        let current = self.current.as_ref().ok_or(Error::NoRegionPrepared)?;
        let (region, steps) = (current.region.id, &mut self.session_steps);
        Ok(self.engine.session_write(region, id, seq, time_ms, steps, &mut self.sessions_undo))
    }

    /// True if the current region applied write `seq` of session `id` already (or one
    /// numbered after it), in this round or before: a peek that records nothing, for a
    /// command whose refusals must leave its number unused.
    pub fn session_applied(&self, id: SessionId, seq: u64) -> Result<bool> {
        let current = self.current.as_ref().ok_or(Error::NoRegionPrepared)?;
        Ok(self.engine.session_applied(current.region.id, id, seq))
    }

    /// True if no key is buffered (the round may still hold prepared regions or
    /// changes of transaction state).
    pub fn is_empty(&self) -> bool {
        self.writes.is_empty()
    }

    /// True if the round changed no transaction state (see `txn/access.rs`).
    pub fn txn_unchanged(&self) -> bool {
        self.txn.is_empty()
    }

    /// The engine the round applies to.
    pub(crate) fn engine(&self) -> &'e Engine {
        self.engine
    }

    /// The current region, as it was when prepared.
    pub(crate) fn current(&self) -> Result<&Region> {
        self.current.as_ref().map(|p| &p.region).ok_or(Error::NoRegionPrepared)
    }

    /// Number of buffered writes.
    pub fn len(&self) -> usize {
        self.writes.len()
    }

    /// The current region, if one is prepared.
    pub fn current_region(&self) -> Option<RegionId> {
        self.current.as_ref().map(|p| p.region.id)
    }

    /// Regions prepared in this round so far, in order.
    pub fn prepared_regions(&self) -> &[RegionId] {
        &self.prepared
    }

    /// Applies the buffered writes atomically (one sequence number per write; a
    /// snapshot sees all of them or none) and ends the round; its session changes stand
    /// if it succeeds and are undone if it fails; its changes of transaction state are
    /// published after its data if it succeeds, and dropped if it fails. Returns the sequence
    /// number of the last write, or `None` if nothing was buffered. Whatever the
    /// outcome, the round is reset and its pins released.
    pub fn commit(mut self) -> Result<Option<Seq>> {
        let writes = std::mem::take(&mut self.writes);
        let txn = std::mem::take(&mut self.txn);
        let result = self.engine.commit_writes(writes, &self.prepared, txn);
        if result.is_ok() {
            // The session changes stand with the data.
            self.sessions_undo.clear();
        }
        self.reset();
        result
    }

    /// Discards buffered writes, session changes, changes of transaction state and
    /// prepared regions, and releases the pins; the round stays usable, back at its
    /// initial state. Calling it twice is harmless.
    pub fn clear(&mut self) {
        self.reset();
    }

    fn reset(&mut self) {
        self.current = None;
        self.writes.clear();
        self.txn.clear();
        self.bytes = 0;
        if !self.sessions_undo.is_empty() {
            self.engine.undo_sessions(std::mem::take(&mut self.sessions_undo));
        }
        if !self.prepared.is_empty() {
            self.prepared.clear();
            self.engine.release_round(self.id);
        }
    }
}

impl Drop for ApplyRound<'_> {
    /// Ending a round without commit discards its writes and releases its pins.
    fn drop(&mut self) {
        self.reset();
    }
}

fn too_large(what: &'static str, len: usize, max: usize) -> Error {
    Error::TooLarge { what, len: len as u64, max: max as u64 }
}
