//! Applying what changes a region's shape or members (split, merge, membership), and
//! the tasks that splits and merges hand from one core to another.

use protobuf::Message as _;
use raft::eraftpb::{ConfChangeType, ConfChangeV2, Entry, EntryType};
use regionkv_engine::{MergeState, PeerId, Region, RegionId, StoreId};

use super::context::{RAFT_INIT_INDEX, RAFT_INIT_TERM};
use super::output::CoreTask;
use super::{Leadership, StoreCore};
use crate::command::{self, Admin, AdminCmd, Command};
use crate::directory::{DIRECTORY, FIRST_ALLOCATED_ID};
use crate::error::{DropReason, Error, Result};
use crate::log::{IdFloor, LogState};
use crate::replica::{CatchUp, Contents, Replica, ReplicaInit};
use crate::request::AdminResult;

/// Why an admin command must not apply at `index` (`applied + 1` when proposing):
/// checked by the leader before proposing and by every replica when applying, from the
/// region's replicated state only (`floor` is the region's id floor, from its log).
pub(super) fn check_admin(
    replica: &Replica,
    floor: Option<IdFloor>,
    epoch: regionkv_engine::Epoch,
    cmd: &AdminCmd,
    index: u64,
) -> Result<()> {
    let region = &replica.region;
    let stale = || Error::EpochNotMatch { region: region.id, current: vec![region.clone()] };
    let invalid = |reason: &str| Error::InvalidRequest(format!("region {}: {reason}", region.id));
    if region.id == DIRECTORY && *cmd != AdminCmd::ComputeHash {
        return Err(invalid("the cluster directory is never split or merged"));
    }
    let merging = replica.merge.state.filter(|m| index > m.prepare_index);
    let neighbours = |other: &Region| {
        other.id != region.id
            && (other.end.as_ref() == Some(&region.start)
                || region.end.as_ref() == Some(&other.start))
    };
    let same_stores = |other: &Region| {
        let stores = |r: &Region| {
            let mut s: Vec<StoreId> = r.peers.iter().map(|p| p.store).collect();
            s.sort_unstable();
            s
        };
        stores(other) == stores(region)
    };
    match cmd {
        AdminCmd::Split { split_keys, new_ids } => {
            if epoch.version != region.epoch.version {
                return Err(stale());
            }
            if let Some(m) = merging {
                return Err(Error::Merging { region: region.id, target: m.target });
            }
            if split_keys.is_empty() || split_keys.len() != new_ids.len() {
                return Err(invalid("a split needs one new region id per split key"));
            }
            if !split_keys.windows(2).all(|w| w[0] < w[1]) {
                return Err(invalid("split keys are not strictly increasing"));
            }
            let first = &split_keys[0];
            let last = &split_keys[split_keys.len() - 1];
            if *first <= region.start || region.end.as_ref().is_some_and(|end| last >= end) {
                return Err(invalid("split keys must be strictly inside the region"));
            }
            check_split_ids(region, floor, new_ids, index).map_err(|why| invalid(&why))?;
        }
        AdminCmd::PrepareMerge { target } => {
            if epoch != region.epoch {
                return Err(stale());
            }
            if let Some(m) = merging {
                return Err(Error::Merging { region: region.id, target: m.target });
            }
            if !neighbours(target) {
                return Err(invalid("a merge target must be a neighbour"));
            }
            if !same_stores(target) {
                return Err(invalid("a merge target must have replicas on the same stores"));
            }
        }
        AdminCmd::CommitMerge { source, .. } => {
            if epoch != region.epoch {
                return Err(stale());
            }
            if let Some(m) = merging {
                return Err(Error::Merging { region: region.id, target: m.target });
            }
            if !neighbours(source) || !same_stores(source) {
                return Err(invalid("the merge source is not a neighbour on the same stores"));
            }
        }
        // Accepted at any epoch, on any region (the directory too), merging or not: it
        // changes nothing, and the hash names the range and epoch it covered, the same
        // on every replica at the index. Refusing a stale one would only record a
        // refusal in the region's metadata for a command that otherwise writes none.
        AdminCmd::ComputeHash => {}
        AdminCmd::RollbackMerge { prepare_index } => {
            if merging.is_none_or(|m| m.prepare_index != *prepare_index) {
                return Err(invalid("no merge prepared at that index"));
            }
        }
    }
    Ok(())
}

/// Why a committed membership change must not apply, from the entry and the region's
/// replicated state only (every replica decides alike); else the change and its
/// context. regionkv proposes one simple change at a time (never a joint one), and a
/// prepared merge source keeps its members (the merge's commit relies on the members
/// the prepare saw), so a change proposed before the prepare and committed after it is
/// refused. What raft-rs itself would refuse is refused here first: the application
/// must not hand it a change it then rejects.
fn check_conf_change(
    replica: &Replica,
    entry: &Entry,
) -> Result<(ConfChangeV2, command::ChangePeersContext)> {
    let region = replica.region.id;
    let invalid = |why: String| Error::InvalidRequest(format!("region {region}: {why}"));
    if let Some(m) = replica.merge.state.filter(|m| entry.index > m.prepare_index) {
        return Err(Error::Merging { region, target: m.target });
    }
    if entry.get_entry_type() != EntryType::EntryConfChangeV2 {
        return Err(invalid(format!("entry {} is a v1 membership change", entry.index)));
    }
    let cc = ConfChangeV2::parse_from_bytes(&entry.data)
        .map_err(|e| invalid(format!("membership change {}: {e}", entry.index)))?;
    let ctx = command::decode_change_peers(&entry.context)
        .map_err(|e| invalid(format!("membership change {}: {}", entry.index, e.reason)))?;
    let [change] = cc.get_changes() else {
        return Err(invalid(format!("entry {} is not one simple change", entry.index)));
    };
    let id = change.node_id;
    let voters = &replica.conf_state().voters;
    match change.get_change_type() {
        ConfChangeType::AddNode | ConfChangeType::AddLearnerNode => {
            let known = replica.region.peers.iter().any(|p| p.id.0 == id);
            if !known && !ctx.peers.iter().any(|p| p.id.0 == id) {
                return Err(invalid(format!("peer {id} is added without its store")));
            }
            if change.get_change_type() == ConfChangeType::AddLearnerNode
                && voters.len() == 1
                && voters[0] == id
            {
                return Err(invalid(format!("peer {id} is the last voter")));
            }
        }
        ConfChangeType::RemoveNode => {
            if voters.len() == 1 && voters[0] == id {
                return Err(invalid(format!("peer {id} is the last voter")));
            }
        }
    }
    Ok((cc, ctx))
}

/// Why a split of `region` at `index` must not give its new regions `new_ids`: the
/// ids must be ones the directory allocated for this split. Decided from the command
/// and the region's replicated state only, so that every replica decides alike:
///
/// - The directory hands out ids once each, in increasing order, from
///   [`FIRST_ALLOCATED_ID`] (ids below are bootstrap's: stores, the directory's region
///   0, region 1, their peers). So an id below it, or one given twice in the command,
///   was not allocated for this split.
/// - Every id allocated after a region was created is above the region's own id (the
///   region's id was allocated first, or is a bootstrap id): an id at or below the
///   parent's names the parent or a region older than it.
/// - The region records a watermark, its id floor (`LogState::id_floor`): one past the
///   largest id any split of its lineage gave (a split sets it on the parent and its
///   children, a merge gives the target the larger of both, a snapshot carries it).
///   Ids below it were allocated for an earlier split of the lineage (a live child, or
///   one merged away since). A split applied again after a crash between its log write
///   and its engine split finds the floor set by itself, at its own index.
///
/// What this cannot see: an id allocated after the floor was set but for a split of
/// another lineage. The directory never hands one out twice, so only a forged command
/// can name one; `apply_split` then finds it hosted here and the replica halts rather
/// than destroy anything (another replica of the region may not host it, so refusing
/// here could make the replicas disagree).
fn check_split_ids(
    region: &Region,
    floor: Option<IdFloor>,
    new_ids: &[RegionId],
    index: u64,
) -> std::result::Result<(), String> {
    let mut ids: Vec<u64> = new_ids.iter().map(|id| id.0).collect();
    ids.sort_unstable();
    ids.dedup();
    if ids.len() != new_ids.len() {
        return Err("new region ids must be distinct".into());
    }
    let lowest = ids.first().copied().unwrap_or(u64::MAX);
    if lowest < FIRST_ALLOCATED_ID {
        return Err(format!(
            "region id {lowest} was not allocated by the directory (it allocates from \
             {FIRST_ALLOCATED_ID})"
        ));
    }
    if lowest <= region.id.0 {
        return Err(format!(
            "region id {lowest} was allocated before region {} (an older region's)",
            region.id
        ));
    }
    if let Some(floor) = floor.filter(|f| f.set_at != index)
        && lowest < floor.next_id
    {
        return Err(format!(
            "region id {lowest} was allocated for an earlier split (this region's new ids \
             start at {})",
            floor.next_id
        ));
    }
    Ok(())
}

/// The id floor of a merge target after a merge of `source` at `index` (of the
/// target's log): above every id either lineage gave, and above the source's own id.
fn merged_floor(
    target: Option<IdFloor>,
    source_floor: Option<IdFloor>,
    source: RegionId,
    index: u64,
) -> IdFloor {
    let next_id = [target, source_floor]
        .into_iter()
        .flatten()
        .map(|f| f.next_id)
        .chain([source.0 + 1])
        .max()
        .expect("one at least");
    IdFloor { next_id, set_at: index }
}

/// A commit merge waiting for its source replica here to catch up.
pub(super) struct MergeWait {
    pub source: RegionId,
    /// The index the source must apply: its prepare command's.
    pub index: u64,
    /// The prepare command's term.
    pub term: u64,
}

impl StoreCore {
    /// The id floor of `region` (see `check_split_ids`), from its log.
    pub(super) fn id_floor(&self, region: RegionId) -> Option<IdFloor> {
        self.ctx.log.state(region).and_then(|s| s.id_floor)
    }

    /// If `entry` is a commit merge that will apply but whose source replica here has
    /// not reported catching up: what it waits for.
    pub(super) fn merge_wait(&self, region: RegionId, entry: &Entry) -> Option<MergeWait> {
        if entry.get_entry_type() != EntryType::EntryNormal || !command::is_admin(&entry.data) {
            return None;
        }
        let Ok(Command::Admin(admin)) = command::decode(&entry.data) else { return None };
        let AdminCmd::CommitMerge { source, prepare_index, prepare_term } = &admin.cmd else {
            return None;
        };
        let replica = self.replicas.get(&region)?;
        let meta_index =
            self.ctx.engine_of(region).meta_index(region).unwrap_or(replica.checkpoint_index);
        if entry.index <= replica.applied_index
            || entry.index <= meta_index
            || check_admin(replica, self.id_floor(region), admin.epoch, &admin.cmd, entry.index)
                .is_err()
            || replica.merge.source_ready == Some(source.id)
        {
            return None;
        }
        Some(MergeWait { source: source.id, index: *prepare_index, term: *prepare_term })
    }

    /// Applies an admin command. The outer result fails the apply (the store stops);
    /// the inner one is the command's outcome, decided from replicated state only, so
    /// that every replica decides alike.
    pub(super) fn apply_admin(
        &mut self,
        region: RegionId,
        entry: &Entry,
        admin: Admin,
    ) -> Result<Result<AdminResult>> {
        let replica = self.replicas.get_mut(&region).expect("present");
        let meta_index =
            self.ctx.engine_of(region).meta_index(region).unwrap_or(replica.checkpoint_index);
        if entry.index <= meta_index {
            // Applied before a restart: the engine's metadata (and for a split, the
            // children's replicas) reflect it already.
            let engine = self.ctx.engine_of(region);
            replica.region = engine.region(region).ok_or(Error::RegionNotFound { region })?;
            replica.merge.state = engine.merge_state(region);
            return Ok(Err(Error::Dropped { region, reason: DropReason::AppliedBeforeRestart }));
        }
        let floor = self.ctx.log.state(region).and_then(|s| s.id_floor);
        let replica = self.replicas.get_mut(&region).expect("present");
        if let Err(refused) = check_admin(replica, floor, admin.epoch, &admin.cmd, entry.index)
            .and_then(|()| self.check_admin_dups(region, &admin.cmd, false))
        {
            return self.refuse_admin(region, entry, refused);
        }
        let result = match admin.cmd {
            AdminCmd::Split { split_keys, new_ids } => {
                self.apply_split(region, entry, &split_keys, &new_ids)?
            }
            AdminCmd::PrepareMerge { target } => {
                let merge = MergeState {
                    target: target.id,
                    prepare_index: entry.index,
                    prepare_term: entry.term,
                };
                let source = self.ctx.engine.prepare_merge(region, merge, entry.index)?;
                let replica = self.replicas.get_mut(&region).expect("present");
                replica.region = source.clone();
                replica.merge.state = Some(merge);
                replica.fail_unproposed(|| Error::Merging { region, target: target.id });
                tracing::info!(
                    source = region.0,
                    target = target.id.0,
                    index = entry.index,
                    "merge prepared"
                );
                AdminResult::Prepared {
                    source,
                    prepare_index: entry.index,
                    prepare_term: entry.term,
                }
            }
            AdminCmd::CommitMerge { source, prepare_index, prepare_term } => {
                let expected = MergeState { target: region, prepare_index, prepare_term };
                match self.apply_commit_merge(region, entry, source.id, expected)? {
                    Ok(merged) => merged,
                    Err(refused) => return Ok(Err(refused)),
                }
            }
            AdminCmd::ComputeHash => self.compute_hash(region, entry.index),
            AdminCmd::RollbackMerge { .. } => {
                let source = self.ctx.engine.rollback_merge(region, entry.index)?;
                let replica = self.replicas.get_mut(&region).expect("present");
                replica.region = source.clone();
                replica.merge.state = None;
                tracing::info!(source = region.0, index = entry.index, "merge rolled back");
                AdminResult::RolledBack(source)
            }
        };
        if self.replicas.get(&region).is_some_and(|r| r.is_leader()) {
            match &result {
                AdminResult::Split(parts) => {
                    // The parent keeps this leader; each child elects its own.
                    for (i, part) in parts.iter().enumerate() {
                        let leadership =
                            if i == 0 { Leadership::ThisStore } else { Leadership::Unknown };
                        self.report(part, leadership);
                    }
                }
                AdminResult::Prepared { source: r, .. }
                | AdminResult::Merged(r)
                | AdminResult::RolledBack(r) => self.report(&r.clone(), Leadership::ThisStore),
                AdminResult::ImageHash { .. } => {}
            }
        }
        Ok(Ok(result))
    }

    /// Applies a `ComputeHash` at `index`: hashes the region's image as the engine
    /// holds it now (every entry before `index` applied and visible: the apply cut the
    /// round before this command) and keeps `(index, hash)` on the replica. A replay
    /// after a restart starts from a checkpoint at or below `index` and applies the
    /// same entries again, so it computes the same hash.
    fn compute_hash(&mut self, region: RegionId, index: u64) -> AdminResult {
        let replica = self.replicas.get_mut(&region).expect("present");
        let engine = self.ctx.engine_of(region);
        let view = engine.read_view();
        let txn = engine.txn_table(region).unwrap_or_default();
        let hash = crate::image_hash::region_image_hash(&view, &replica.region, &txn);
        replica.image_hash = Some((index, hash));
        tracing::debug!(region = region.0, index, hash, "image hash");
        AdminResult::ImageHash { index, hash }
    }

    /// Refuses the admin command `entry` of `region`: a no-op, whose index the engine
    /// records as reflected in the region's metadata, so that a replay after a restart
    /// skips it rather than decide again from state that may have moved on (a commit
    /// merge refused because of what its source recorded, whose source is gone since).
    fn refuse_admin(
        &mut self,
        region: RegionId,
        entry: &Entry,
        refused: Error,
    ) -> Result<Result<AdminResult>> {
        tracing::info!(region = region.0, index = entry.index, error = %refused, "admin command refused");
        if region != DIRECTORY {
            self.ctx.engine.record_refused(region, entry.index)?;
        }
        Ok(Err(refused))
    }

    /// Applies a commit merge of `source` into `region` (the target), whose prepare the
    /// command says recorded `expected`; refused unless the source's own prepare did.
    fn apply_commit_merge(
        &mut self,
        region: RegionId,
        entry: &Entry,
        source: RegionId,
        expected: MergeState,
    ) -> Result<Result<AdminResult>> {
        // The source replica here applied its log up to the prepare the command names
        // (or cannot get there: see `catch_up`), so what its own prepare recorded is
        // what every store's source replica recorded.
        if self.ctx.engine.region(source).is_none() {
            return Err(Error::Internal(format!(
                "the merge of region {source} into {region} at {} committed, but the source \
                 has no replica here",
                entry.index
            )));
        }
        let recorded = self.ctx.engine.merge_state(source);
        if recorded != Some(expected) {
            let refused = Error::InvalidRequest(format!(
                "commit merge of region {source} into {region}: the source's prepare recorded \
                 {recorded:?}, the command says {expected:?}"
            ));
            let replica = self.replicas.get_mut(&region).expect("present");
            replica.merge.source_ready = None;
            return self.refuse_admin(region, entry, refused);
        }
        // The target takes over the source's lineage: its id floor becomes the larger
        // of both, and above the source's own id (see `check_split_ids`). Durable
        // before the engine's merge, like a split's.
        let floor = merged_floor(self.id_floor(region), self.id_floor(source), source, entry.index);
        let mut write = self.ctx.log.begin_write();
        self.ctx.log.stage_id_floor(&mut write, region, floor)?;
        self.ctx.log.persist(write)?;
        let merged = self.ctx.engine.merge_at(source, region, entry.index)?;
        let replica = self.replicas.get_mut(&region).expect("present");
        replica.region = merged.clone();
        replica.merge.source_ready = None;
        self.send_task(CoreTask::Merged { source });
        tracing::info!(
            source = source.0,
            target = region.0,
            index = entry.index,
            "merge committed"
        );
        Ok(Ok(AdminResult::Merged(merged)))
    }

    /// Splits `region` at the split command `entry`: the children's logs are made
    /// durable first (with the parent's new id floor), then the engine splits (a
    /// checkpoint barrier), then the children's replicas are created. A crash in
    /// between leaves logs of children the engine does not host: they are tombstoned at
    /// the next open, and the split is applied again from the parent's log.
    ///
    /// `check_admin` checked the new ids from replicated state; what only this store
    /// can see is checked here before anything changes: a new id that names a region
    /// hosted here, or a replica here with members (or one destroyed here), is never
    /// destroyed to make room; the error halts this replica. A log left by an
    /// uninitialized replica (created by a child's message, holding nothing) is
    /// replaced.
    fn apply_split(
        &mut self,
        region: RegionId,
        entry: &Entry,
        split_keys: &[Vec<u8>],
        new_ids: &[RegionId],
    ) -> Result<AdminResult> {
        let replica = self.replicas.get(&region).expect("present");
        let conf_state = replica.conf_state();
        let peer_id = replica.id;
        let campaign = replica.is_leader();
        for id in new_ids {
            let hosted =
                self.ctx.engine.region(*id).is_some() || self.ctx.directory.region(*id).is_some();
            let live = self.ctx.log.state(*id).is_some_and(|s| {
                !s.conf_state.voters.is_empty() || !s.conf_state.learners.is_empty()
            });
            let destroyed = self.ctx.log.tombstone(*id).is_some();
            if hosted || live || destroyed {
                return Err(Error::Internal(format!(
                    "the split of region {region} at {} names region {id}, which this store \
                     hosts, has a replica of or destroyed a replica of; nothing was changed",
                    entry.index
                )));
            }
        }
        // The write below is made durable here, on the core's thread, not by the
        // driver's writer: the engine's split that follows must not become durable
        // before the children's logs and the parent's id floor. Every region of this
        // core waits for the WAL fdatasync (and for the split's checkpoints).
        let mut write = self.ctx.log.begin_write();
        let largest = new_ids.iter().map(|id| id.0).max().expect("checked: one id or more");
        let floor = IdFloor { next_id: largest + 1, set_at: entry.index };
        self.ctx.log.stage_id_floor(&mut write, region, floor)?;
        for id in new_ids {
            if self.ctx.log.state(*id).is_some() {
                // An uninitialized replica's log: it holds nothing.
                self.ctx.log.stage_tombstone(&mut write, *id, None);
            }
            let mut state = LogState {
                first_index: RAFT_INIT_INDEX + 1,
                truncated_term: RAFT_INIT_TERM,
                conf_state: conf_state.clone(),
                peer_id: peer_id.0,
                conf_index: RAFT_INIT_INDEX,
                id_floor: Some(floor),
                ..LogState::default()
            };
            state.hard_state.term = RAFT_INIT_TERM;
            state.hard_state.commit = RAFT_INIT_INDEX;
            self.ctx.log.create_region(&mut write, *id, state)?;
        }
        self.ctx.log.persist(write)?;
        let parts =
            self.ctx.engine.split_at(region, split_keys, new_ids, entry.index, RAFT_INIT_INDEX)?;
        let replica = self.replicas.get_mut(&region).expect("present");
        replica.region = parts[0].clone();
        for child in &parts[1..] {
            self.send_task(CoreTask::Adopt { region: child.id, campaign });
        }
        tracing::info!(region = region.0, index = entry.index, children = ?new_ids, "split");
        Ok(AdminResult::Split(parts))
    }

    /// Applies a membership change: raft-rs's configuration and the region's peers. The
    /// outer error fails the apply; the inner one refuses the change (applied as no
    /// change, raft-rs not told, the proposer answered with why).
    ///
    /// Replay after a restart must not apply a change twice: raft-rs's configuration
    /// already reflects entries up to the log's `conf_index`, and the engine's region
    /// reflects admin entries up to its `meta_index`. An accepted change is durable in
    /// the engine before the log's new conf state is, so a replayed entry at or below
    /// `conf_index` but above `meta_index` is one that was refused.
    pub(super) fn apply_conf_change(
        &mut self,
        region: RegionId,
        entry: &Entry,
    ) -> Result<Result<()>> {
        let me = self.ctx.config.store_id;
        let replica = self.replicas.get_mut(&region).expect("present");
        // `None`: nothing recorded; metadata is at least as new as the checkpoint.
        let meta_index =
            self.ctx.engine_of(region).meta_index(region).unwrap_or(replica.checkpoint_index);
        if entry.index <= replica.conf_index {
            if entry.index > meta_index {
                return Ok(Err(Error::InvalidRequest(format!(
                    "the membership change at {} was refused (before a restart)",
                    entry.index
                ))));
            }
            // Applied before a restart, to raft-rs and to the engine.
            replica.region = self
                .ctx
                .engine_of(region)
                .region(region)
                .ok_or(Error::RegionNotFound { region })?;
            if !replica.region.peers.iter().any(|p| p.id == replica.id && p.store == me) {
                replica.removed = true;
            }
            return Ok(Ok(()));
        }
        let (cc, ctx) = match check_conf_change(replica, entry) {
            Ok(checked) => checked,
            Err(refused) => {
                // Refused alike by every replica, raft-rs is not told (it must not be,
                // for a change the application rejects); the log records the index so
                // that a replay knows.
                let cs = replica.conf_state();
                self.ctx.log.stage_conf_state(&mut self.write, region, cs, entry.index)?;
                replica.conf_index = entry.index;
                tracing::info!(region = region.0, index = entry.index, error = %refused, "membership change refused");
                return Ok(Err(refused));
            }
        };
        let cs = replica.raw.apply_conf_change(&cc)?;
        self.ctx.log.stage_conf_state(&mut self.write, region, cs, entry.index)?;
        replica.conf_index = entry.index;
        if entry.index > meta_index {
            let mut peers = replica.region.peers.clone();
            for change in cc.get_changes() {
                let id = PeerId(change.node_id);
                match change.get_change_type() {
                    ConfChangeType::AddNode | ConfChangeType::AddLearnerNode => {
                        if !peers.iter().any(|p| p.id == id) {
                            // Checked by `check_conf_change`.
                            let Some(added) = ctx.peers.iter().find(|p| p.id == id) else {
                                return Err(Error::Internal(format!(
                                    "conf change at {} adds peer {id} without its store",
                                    entry.index
                                )));
                            };
                            peers.push(*added);
                        }
                    }
                    ConfChangeType::RemoveNode => peers.retain(|p| p.id != id),
                }
            }
            replica.region = self.ctx.engine_of(region).change_peers(region, peers, entry.index)?;
        } else {
            replica.region = self
                .ctx
                .engine_of(region)
                .region(region)
                .ok_or(Error::RegionNotFound { region })?;
        }
        self.alive_to.clear(); // the peers changed: found again (`check_liveness`)
        if !replica.region.peers.iter().any(|p| p.id == replica.id && p.store == me) {
            replica.removed = true;
        }
        tracing::info!(region = region.0, index = entry.index, epoch = %replica.region.epoch, peers = ?replica.region.peers, "applied a membership change");
        if replica.is_leader() {
            let changed = replica.region.clone();
            self.report(&changed, Leadership::ThisStore);
        }
        Ok(Ok(()))
    }

    /// Tells a waiting merge target once this source replica applied far enough: up
    /// to the prepare its commit merge names, or its own prepare, if that is another
    /// (then the commit merge is refused: a prepared source applies nothing that could
    /// prepare it again before a rollback, which the merge driver proposes only once
    /// no commit merge can apply). Until then, commits the prepare from this replica's
    /// own log once it holds it durably (see `catch_up`).
    pub(super) fn check_catch_up(&mut self, source: RegionId) {
        let Some(replica) = self.replicas.get_mut(&source) else { return };
        let waiting = std::mem::take(&mut replica.merge.catch_up);
        for catch_up in waiting {
            let replica = self.replicas.get_mut(&source).expect("checked");
            let other_prepare = replica.merge.state.is_some_and(|m| m != catch_up.expected());
            if replica.applied_index >= catch_up.index || other_prepare {
                self.send_task(CoreTask::SourceReady { target: catch_up.target, source });
                continue;
            }
            let (index, term) = (catch_up.index, catch_up.term);
            if replica.committed() < index
                && replica.holds_entry(index, term)
                && self.is_prepare_of(source, index, catch_up.target)
            {
                let replica = self.replicas.get_mut(&source).expect("checked");
                replica.commit_held_entry(index, term);
                self.dirty.insert(source);
            }
            let replica = self.replicas.get_mut(&source).expect("checked");
            replica.merge.catch_up.push(catch_up);
        }
    }

    /// True if entry `index` of `source`'s log here is a prepare merge into `target`.
    fn is_prepare_of(&self, source: RegionId, index: u64, target: RegionId) -> bool {
        let entries = self.ctx.log.entries(source, index, index + 1, None);
        entries.ok().and_then(|e| e.into_iter().next()).is_some_and(|e| {
            matches!(
                command::decode(&e.data),
                Ok(Command::Admin(Admin { cmd: AdminCmd::PrepareMerge { target: t }, .. }))
                    if t.id == target
            )
        })
    }

    /// A merge target here waits for this store's source replica to apply its log up
    /// to the prepare at (`index`, `term`) its commit merge names. That prepare is
    /// committed in the source's group (the merge driver proposes the commit only then,
    /// and only once every source replica's log holds it), so a replica whose log holds
    /// that very entry durably, and it is a prepare naming this target, may commit it
    /// without hearing from the source's leader (which may be gone already); never
    /// another entry (an uncommitted tail of a deposed leader may sit at that index). A
    /// replica that does not hold it yet waits for it: its log may have lost it (a
    /// point-in-time recovery), and its group sends it again.
    ///
    /// A store that has no replica of the source yet (a split it has not applied will
    /// create it: a commit merge a driver proposes has every source replica holding its
    /// prepare, so this is a command no driver sent) keeps the target waiting until the
    /// replica is created, then decides as every other store did.
    fn catch_up(&mut self, source: RegionId, target: RegionId, index: u64, term: u64) {
        let initialized = self.replicas.get(&source).is_some_and(|r| r.is_initialized());
        let Some(replica) = self.replicas.get_mut(&source).filter(|_| initialized) else {
            tracing::info!(
                source = source.0,
                target = target.0,
                "merge source has no replica here yet; the target waits for it"
            );
            self.awaiting_source.entry(source).or_default().push(CatchUp { target, index, term });
            return;
        };
        replica.merge.catch_up.push(CatchUp { target, index, term });
        self.dirty.insert(source);
        self.check_catch_up(source);
    }

    /// Hands the merge targets waiting for `source` to appear (see `catch_up`) to its
    /// replica, now created.
    pub(super) fn source_appeared(&mut self, source: RegionId) {
        for waiting in self.awaiting_source.remove(&source).unwrap_or_default() {
            self.catch_up(source, waiting.target, waiting.index, waiting.term);
        }
    }

    /// Takes a [`CoreTask`] for a region this core owns.
    pub fn on_task(&mut self, task: CoreTask) {
        self.wake(task.region());
        self.tasks.push_back(task);
    }

    /// Queues `task` for the core that owns its region.
    pub(super) fn send_task(&mut self, task: CoreTask) {
        if (self.owns)(task.region()) {
            self.wake(task.region());
            self.tasks.push_back(task);
        } else {
            self.foreign_tasks.push(task);
        }
    }

    /// Runs the tasks queued for this core's regions, in order.
    pub(super) fn run_tasks(&mut self) {
        while let Some(task) = self.tasks.pop_front() {
            let region = task.region();
            if let Err(e) = self.run_task(task) {
                self.on_replica_error(region, &e);
            }
        }
    }

    #[allow(clippy::needless_pass_by_value, reason = "a task is handled once: taking it says so")]
    fn run_task(&mut self, task: CoreTask) -> Result<()> {
        match task {
            CoreTask::Adopt { region, campaign } => {
                match self.replicas.get(&region) {
                    Some(replica) if replica.is_initialized() => return Ok(()),
                    // A replica created by a message of the child's group, holding
                    // nothing: the split tombstoned its log; the child replaces it.
                    Some(_) => {
                        if let Some(mut old) = self.replicas.remove(&region) {
                            old.fail_all(|| Error::RegionNotFound { region });
                        }
                        self.awake.remove(&region);
                        self.note_peers(region);
                    }
                    None => {}
                }
                let hosted = self
                    .ctx
                    .engine_of(region)
                    .region(region)
                    .ok_or(Error::RegionNotFound { region })?;
                let state = self.ctx.log.state(region).ok_or(Error::RegionNotFound { region })?;
                let applied =
                    self.ctx.engine_of(region).image_index(region)?.unwrap_or(RAFT_INIT_INDEX);
                self.add_replica(ReplicaInit {
                    region: hosted,
                    contents: Contents::Data,
                    id: PeerId(state.peer_id),
                    applied_index: applied,
                    conf_index: state.conf_index,
                })?;
                if campaign {
                    let replica = self.replicas.get_mut(&region).expect("just added");
                    replica.raw.campaign()?;
                }
                self.source_appeared(region);
                // Vote requests that came before the split applied here: a campaign
                // of the child's replica on the parent's leader store, most likely.
                self.step_held_votes(region);
                tracing::info!(region = region.0, campaign, "created the replica of a split child");
            }
            CoreTask::CatchUp { source, target, index, term } => {
                self.catch_up(source, target, index, term);
            }
            CoreTask::SourceReady { target, source } => {
                if let Some(replica) = self.replicas.get_mut(&target) {
                    replica.merge.source_ready = Some(source);
                    self.dirty.insert(target);
                }
            }
            CoreTask::Merged { source } => self.destroy(source)?,
        }
        Ok(())
    }
}
