//! Snapshots and checkpoints: receiving a snapshot in chunks and installing it, preparing
//! one for a follower that fell behind, and checkpointing (and compacting) as logs grow.
//!
//! A snapshot message carries raft-rs's metadata (index, term, members) and, in its
//! data, the region's replicated state that lives in its Raft log rather than in the
//! checkpoint:
//!
//! ```text
//!  | format u8 = 1 | TLV (regionkv_engine::codec), every field optional:            |
//!  |   1 id floor: the lowest id a split may give a new region   2 the index that set it |
//! ```
//!
//! Empty data (a snapshot of a binary from before it) decodes as no id floor.

use raft::eraftpb::{EntryType, Snapshot};
use regionkv_engine::codec::{self, DecodeError, DecodeResult, TlvRecord, UnknownTags};
use regionkv_engine::{CheckpointChunk, Region, RegionId, SnapshotMeta};

use super::StoreCore;
use super::output::CoreTask;
use crate::command::{self, Admin, AdminCmd, Command};
use crate::error::{Error, Result};
use crate::log::{IdFloor, LogState};
use crate::replica::{Contents, Incoming, Received, Replica};
use crate::transport::SnapshotChunk;

/// The format of a snapshot message's data.
const SNAPSHOT_DATA_VERSION: u8 = 1;
const D_ID_FLOOR: u16 = 1;
const D_ID_FLOOR_INDEX: u16 = 2;

/// A snapshot's data: the region's state kept in its log (see the module docs).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct SnapshotData {
    pub id_floor: Option<IdFloor>,
}

pub(super) fn encode_snapshot_data(data: &SnapshotData) -> Vec<u8> {
    let mut out = vec![SNAPSHOT_DATA_VERSION];
    if let Some(floor) = data.id_floor {
        codec::put_u64(&mut out, D_ID_FLOOR, floor.next_id);
        codec::put_u64(&mut out, D_ID_FLOOR_INDEX, floor.set_at);
    }
    out
}

/// Decodes a snapshot's data; never panics, whatever `bytes` holds.
pub(super) fn decode_snapshot_data(bytes: &[u8]) -> DecodeResult<SnapshotData> {
    let Some((&version, body)) = bytes.split_first() else {
        return Ok(SnapshotData::default());
    };
    if version != SNAPSHOT_DATA_VERSION {
        return Err(DecodeError::new(0, "snapshot data of an unknown format version"));
    }
    let rec = TlvRecord::parse(body, &[D_ID_FLOOR, D_ID_FLOOR_INDEX], UnknownTags::Skip)
        .map_err(|e| e.shifted(1))?;
    let optional = |tag| rec.optional(tag).and_then(|f| f.map(|f| f.as_u64()).transpose());
    let id_floor = match (optional(D_ID_FLOOR)?, optional(D_ID_FLOOR_INDEX)?) {
        (Some(next_id), Some(set_at)) => Some(IdFloor { next_id, set_at }),
        (None, None) => None,
        _ => return Err(DecodeError::new(1, "an id floor without its index")),
    };
    Ok(SnapshotData { id_floor })
}

/// True while `replica` installed a snapshot whose ready is not persisted yet; it must
/// not campaign then (no election tick, no `MsgTimeoutNow` stepped).
///
/// raft-rs learns that the snapshot is applied only once it is persisted (it requires
/// applied <= persisted; `on_persisted`), and it forgets the snapshot as soon as the
/// ready that carries it is advanced (`advance_append_async` makes it stable). In
/// between, a campaign (raft-rs's `hup`, for an election timeout or a transfer) reads
/// the committed entries it takes as unapplied, from its old applied index + 1, out of
/// the log, which starts after the snapshot: raft-rs panics on the `Compacted` error,
/// and the store's poller stops. The window closes with the persist; a transfer that
/// arrived in it is stepped then (delayed, as the network may delay any message).
pub(super) fn awaits_snapshot_persist(replica: &Replica) -> bool {
    replica.snapshot.installed.is_some()
}

impl StoreCore {
    pub(super) fn on_snapshot_chunk(
        &mut self,
        region: RegionId,
        chunk: SnapshotChunk,
    ) -> Result<()> {
        let replica = self.replicas.get_mut(&region).expect("checked by caller");
        let transfer = &mut replica.snapshot;
        if chunk.offset == 0 {
            transfer.incoming = Some(Incoming {
                index: chunk.index,
                term: chunk.term,
                next_offset: 0,
                receiver: self.ctx.engine_of(region).receive_checkpoint()?,
            });
        }
        let Some(incoming) = transfer.incoming.as_mut() else { return Ok(()) };
        if (incoming.index, incoming.term, incoming.next_offset)
            != (chunk.index, chunk.term, chunk.offset)
        {
            transfer.incoming = None; // a chunk went missing: drop the transfer, the leader resends
            return Ok(());
        }
        let last = chunk.is_last();
        let data = CheckpointChunk {
            offset: chunk.offset,
            file_bytes: chunk.file_bytes,
            data: chunk.data,
        };
        incoming.next_offset = chunk.offset + data.data.len() as u64;
        if let Err(e) = incoming.receiver.push(&data) {
            transfer.incoming = None;
            return Err(e.into());
        }
        if last {
            let done = transfer.incoming.take().expect("checked");
            let checkpoint = done.receiver.finish()?;
            transfer.received = Some(Received { index: done.index, term: done.term, checkpoint });
        }
        Ok(())
    }

    /// Makes a snapshot raft-rs asked for: a checkpoint of the region as applied now.
    pub(super) fn prepare_snapshot(&mut self, region: RegionId) -> Result<()> {
        let Some(replica) = self.replicas.get_mut(&region) else { return Ok(()) };
        let wanted = replica.snapshot.slot.lock().wanted.take();
        let Some(wanted) = wanted else { return Ok(()) };
        // A merge source makes no snapshot: a replica that needs one cannot have the
        // prepare command in its log, and the merge waits (or rolls back) instead.
        if replica.applied_index < wanted
            || !replica.is_initialized()
            || replica.merge.state.is_some()
        {
            replica.snapshot.slot.lock().wanted = Some(wanted);
            return Ok(());
        }
        let term = self.ctx.log.term(region, replica.applied_index)?;
        let engine = self.ctx.engine_of(region);
        // The header records the snapshot's term and members: a receiver that crashes
        // after installing the checkpoint, before its log says so, restarts the region's
        // log from them (`lifecycle.rs`, `recover_interrupted_install`).
        let conf = replica.conf_state();
        let snapshot = SnapshotMeta { term, voters: conf.voters.clone(), learners: conf.learners };
        let meta = engine.checkpoint_for_snapshot(region, replica.applied_index, snapshot)?;
        let file = engine.latest_checkpoint(region)?.ok_or_else(|| {
            Error::Internal(format!(
                "checkpoint of region {} at {} not found",
                region.0, meta.applied_index
            ))
        })?;
        replica.checkpoint_index = replica.applied_index;
        replica.applied_bytes_since_checkpoint = 0;
        let mut snap = Snapshot::default();
        snap.mut_metadata().index = replica.applied_index;
        snap.mut_metadata().term = term;
        snap.mut_metadata().set_conf_state(replica.conf_state());
        let id_floor = self.ctx.log.state(region).and_then(|s| s.id_floor);
        snap.data = encode_snapshot_data(&SnapshotData { id_floor }).into();
        replica.snapshot.slot.lock().ready = Some(snap);
        replica.snapshot.file = Some(file);
        let checkpoint_index = replica.checkpoint_index;
        // Never past the region's duplication floor (`compact_to`).
        tracing::info!(region = region.0, index = checkpoint_index, "prepared a snapshot");
        let to = self.compact_to(region, checkpoint_index);
        self.ctx.log.stage_compaction(&mut self.write, region, to)?;
        Ok(())
    }

    /// Why the snapshot of `region` at `index`, whose checkpoint arrived whole, must not
    /// be stepped (the leader sends it again later); else the regions hosted here that
    /// installing it replaces. Checked before raft-rs sees the message, and again
    /// before the install:
    ///
    /// - H3: the checkpoint must be of this region, at the snapshot's index (the
    ///   engine installs whatever region the checkpoint's header names);
    /// - A2: every other region hosted here that overlaps it must be a stale one, gone
    ///   from the cluster (see `superseded`). Those are replaced in the same manifest
    ///   update as the install. Anything else (a region this store still needs, a
    ///   split parent that will split itself) means this store is not ready for the
    ///   snapshot.
    pub(super) fn check_snapshot(
        &self,
        region: RegionId,
        index: u64,
    ) -> std::result::Result<Vec<RegionId>, String> {
        let replica = self.replicas.get(&region).ok_or("no replica")?;
        let received = replica.snapshot.received.as_ref().ok_or("no checkpoint received")?;
        let header = received.checkpoint.file().header();
        if header.region.id != region || header.applied_index != index {
            return Err(format!(
                "the checkpoint is of region {} at {}, the snapshot of region {region} at \
                 {index}",
                header.region.id, header.applied_index
            ));
        }
        let new = &header.region;
        let engine = self.ctx.engine_of(region);
        let overlapping: Vec<Region> = (engine.overlapping(&new.start, new.end.as_deref()))
            .into_iter()
            .filter(|old| old.id != region)
            .collect();
        let stale: Vec<RegionId> = overlapping.iter().map(|old| old.id).collect();
        for old in &overlapping {
            self.superseded(old, new, &stale)?;
        }
        Ok(stale)
    }

    /// Why region `old`, hosted here, is not known to be gone from the cluster given
    /// that region `new` (another id, overlapping it) reached `new.epoch` (a state its
    /// group applied: a snapshot's checkpoint, or the epoch a message of its group
    /// carries), with the regions `replaced` along with it. It is gone if both hold
    /// (A2, ARCHITECTURE.md "Snapshots"):
    ///
    /// - `new` is at a higher version and holds `old`'s start key. A region holds its
    ///   start key from its creation to its end (a split leaves it the leftmost part,
    ///   and a merge into it only extends it to the right: a leader refuses a merge
    ///   into a right neighbour, `on_admin`), and each time a key changes regions (a
    ///   split, a merge) the version of the region holding it grows. So `new` took
    ///   that key after `old` held it at its version, which only `old`'s end allows:
    ///   `old` was merged away (possibly into a region that split since: `new` may be
    ///   its target or a part of it). This also covers an older version of part of
    ///   `new`'s range, and a merge source replaced by its target's snapshot;
    /// - no replica here may still have to merge it: a merge target named by `old`'s
    ///   merge state or by a prepare in its log, hosted here at a version below
    ///   `new`'s and not `replaced` with it, may still apply the commit, which needs
    ///   `old`'s replica (`catch_up`). A target that will apply it is at a
    ///   version below the commit's, itself below `new`'s (`new` took the key from
    ///   the merged target or a later region), so one at `new`'s version or above will
    ///   not; until then this store waits (the target applies the commit, which
    ///   removes `old`).
    pub(super) fn superseded(
        &self,
        old: &Region,
        new: &Region,
        replaced: &[RegionId],
    ) -> std::result::Result<(), String> {
        if old.epoch.version >= new.epoch.version || !new.contains(&old.start) {
            return Err(format!(
                "it overlaps region {} (version {}), which is not an older part of region {} \
                 (version {})",
                old.id, old.epoch.version, new.id, new.epoch.version
            ));
        }
        let engine = self.ctx.engine_of(old.id);
        // A prepared source applied its log up to its prepare and applies nothing
        // after it but a rollback: only its prepare's target can still commit it here.
        let targets = match engine.merge_state(old.id) {
            Some(merge) => vec![merge.target],
            None => self.prepared_targets(old.id)?,
        };
        for target in targets {
            if target == new.id || replaced.contains(&target) {
                // Its snapshot is past the commit (it holds `old`'s start key), or it
                // goes with `old` and applies nothing more.
                continue;
            }
            let pending = self
                .ctx
                .engine_of(target)
                .region(target)
                .filter(|t| t.epoch.version < new.epoch.version);
            if let Some(t) = pending {
                return Err(format!(
                    "region {} may still be merged into region {} here (version {}), which \
                     has to apply the merge first",
                    old.id, t.id, t.epoch.version
                ));
            }
        }
        Ok(())
    }

    /// The merge targets named by the prepares in `region`'s log here.
    fn prepared_targets(&self, region: RegionId) -> std::result::Result<Vec<RegionId>, String> {
        let unreadable = |e: Error| format!("the log of region {region} is unreadable: {e}");
        let (first, last) = self.ctx.log.bounds(region).map_err(unreadable)?;
        if first > last {
            return Ok(Vec::new());
        }
        let entries = self.ctx.log.entries(region, first, last + 1, None).map_err(unreadable)?;
        Ok(entries
            .iter()
            .filter(|e| e.get_entry_type() == EntryType::EntryNormal && command::is_admin(&e.data))
            .filter_map(|e| match command::decode(&e.data) {
                Ok(Command::Admin(Admin { cmd: AdminCmd::PrepareMerge { target }, .. })) => {
                    Some(target.id)
                }
                _ => None,
            })
            .collect())
    }

    /// Installs a received snapshot: the engine takes the checkpoint (durably), with the
    /// stale regions it replaces (see `check_snapshot`), then the log restarts after it
    /// and the replaced regions' replicas go.
    pub(super) fn install_snapshot(&mut self, region: RegionId, snap: &Snapshot) -> Result<()> {
        let meta = snap.get_metadata();
        // Checked before the message was stepped; what changed since halts the replica.
        let replaced = self.check_snapshot(region, meta.index).map_err(|why| {
            Error::Internal(format!("the snapshot of region {region} at {}: {why}", meta.index))
        })?;
        let replica = self.replicas.get_mut(&region).expect("present");
        let Some(Received { index, term, checkpoint }) = replica.snapshot.received.take() else {
            return Err(Error::Internal(format!(
                "snapshot of region {} at {} without its checkpoint",
                region.0, meta.index
            )));
        };
        if (index, term) != (meta.index, meta.term) {
            return Err(Error::Internal(format!(
                "snapshot {}/{} does not match the received checkpoint {index}/{term}",
                meta.index, meta.term
            )));
        }
        // Checked before the message was stepped (`on_envelope`).
        let data = decode_snapshot_data(&snap.data).unwrap_or_default();
        let installed =
            self.ctx.engine_of(region).install_checkpoint_over(checkpoint, &replaced)?;
        let state = LogState {
            hard_state: replica.hard_state(),
            conf_state: meta.get_conf_state().clone(),
            first_index: meta.index + 1,
            truncated_term: meta.term,
            peer_id: replica.id.0,
            conf_index: meta.index,
            id_floor: data.id_floor,
            ..LogState::default()
        };
        self.ctx.log.stage_snapshot(&mut self.write, region, state)?;
        replica.region = installed;
        self.alive_to.clear(); // the peers may differ: found again (`check_liveness`)
        replica.contents = Contents::Data;
        replica.applied_index = meta.index;
        replica.checkpoint_index = meta.index;
        replica.conf_index = meta.index;
        replica.applied_bytes_since_checkpoint = 0;
        replica.merge.state = None;
        replica.snapshot.installed_at = Some(meta.index);
        tracing::info!(region = region.0, index = meta.index, ?replaced, "installed a snapshot");
        for old in replaced {
            // The engine no longer hosts it: its replica goes (on the core that owns it).
            self.send_task(CoreTask::Merged { source: old });
        }
        if region == crate::directory::DIRECTORY {
            // A new replica of the directory learns the cluster version it holds.
            let held = crate::directory::cluster_version(&self.ctx.directory.read_view())?;
            self.ctx.learn_cluster_version(held.active)?;
        }
        self.source_appeared(region);
        Ok(())
    }

    /// Checkpoints a region once enough log has been applied since the last, and
    /// compacts its log up to the checkpoint.
    pub(super) fn maybe_checkpoint(&mut self, region: RegionId) -> Result<()> {
        let Some(replica) = self.replicas.get_mut(&region) else { return Ok(()) };
        if !replica.is_initialized()
            || replica.applied_bytes_since_checkpoint < self.ctx.config.checkpoint_log_bytes
            || replica.applied_index <= replica.checkpoint_index
            || replica.merge.state.is_some()
        {
            return Ok(());
        }
        self.checkpoint_now(region)
    }

    /// Checkpoints `region` at its applied index now and compacts its log (never past
    /// its duplication floor). Between rounds only.
    fn checkpoint_now(&mut self, region: RegionId) -> Result<()> {
        let replica = self.replicas.get_mut(&region).expect("checked by the caller");
        self.ctx.engine_of(region).checkpoint(region, replica.applied_index)?;
        replica.checkpoint_index = replica.applied_index;
        replica.applied_bytes_since_checkpoint = 0;
        replica.snapshot.file = None;
        replica.snapshot.slot.lock().ready = None;
        let checkpoint_index = replica.checkpoint_index;
        // Never past the region's duplication floor (`compact_to`).
        let to = self.compact_to(region, checkpoint_index);
        self.ctx.log.stage_compaction(&mut self.write, region, to)?;
        tracing::debug!(
            region = region.0,
            index = checkpoint_index,
            to,
            "checkpointed and compacted"
        );
        Ok(())
    }

    /// Duplication's seed (`Store::dup_seed_image`): makes sure the region's latest
    /// checkpoint is at or past `min_index`, checkpointing it now if it is not (the
    /// same checkpoint and compaction as `maybe_checkpoint`, whatever the bytes
    /// applied since). Returns the checkpoint's index. Refused where this store does
    /// not lead the region, while it is a prepared merge source (no checkpoint then),
    /// and with [`Error::EntryUnavailable`] if it has not applied `min_index` yet.
    pub fn on_dup_checkpoint(&mut self, region: RegionId, min_index: u64) -> Result<u64> {
        let replica = self.replicas.get_mut(&region).ok_or(Error::RegionNotFound { region })?;
        if !replica.is_leader() {
            return Err(Error::NotLeader { region, leader: replica.leader_store() });
        }
        if !replica.is_initialized() || replica.halted.is_some() {
            return Err(Error::RegionNotFound { region });
        }
        if let Some(merge) = replica.merge.state {
            return Err(Error::Merging { region, target: merge.target });
        }
        if replica.applied_index < min_index {
            return Err(Error::EntryUnavailable { region, index: min_index });
        }
        let latest = self.ctx.engine_of(region).latest_checkpoint(region)?;
        let replica = self.replicas.get_mut(&region).expect("checked above");
        if let Some(file) = latest.filter(|f| f.header().applied_index >= min_index) {
            return Ok(file.header().applied_index);
        }
        let index = replica.applied_index;
        self.checkpoint_now(region)?;
        self.dirty.insert(region); // the compaction staged goes with the next write
        Ok(index)
    }
}
