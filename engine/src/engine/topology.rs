//! Changes of the hosted regions: insert, remove, split, merge, membership, merge state
//! and installing a received checkpoint, each one transaction of [`Inner::change`].
//!
//! A change is computed on a copy of the region map, made durable by one manifest
//! update, then applied to what lives in memory only (byte charges, pins, the memtable)
//! and published by swapping the map, with every lock held throughout. The barrier
//! variants ([`Engine::split_at`], [`Engine::merge_at`], [`Engine::prepare_merge`],
//! [`Engine::rollback_merge`]) first write a checkpoint of every region they produce,
//! so that the same manifest update switches regions and images together.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

use super::images::ImageState;
use super::{CommitState, Durable, Engine, Inner, RegionState};
use crate::checkpoint::{ReceivedCheckpoint, load_part};
use crate::dup::DupTable;
use crate::error::{Error, Result};
use crate::manifest::{CheckpointRef, Manifest, MergeState, RegionEntry, restrict};
use crate::region::{Peer, Region, RegionId};
use crate::region_map::RegionMap;
use crate::sink::SinkTable;
use crate::txn::TxnTable;

/// A change of the region map being staged by [`Inner::change`]: the state as it is,
/// and the map as the change leaves it.
pub(super) struct Staged<'a> {
    /// The durable state: the manifest as it is, and the next checkpoint file number,
    /// which checkpoints written for the change take.
    pub durable: &'a mut Durable,
    /// Hosted regions and their byte charges, as they are.
    pub regions: &'a RegionState,
    /// The map as the change leaves it; a copy of the current one to begin with.
    pub map: RegionMap,
}

impl Staged<'_> {
    /// The next manifest: the durable one with the changed map as its region list, each
    /// region keeping its checkpoint parts unless `parts_for` gives new ones.
    fn manifest(&self, parts_for: impl Fn(&Region) -> Option<Vec<CheckpointRef>>) -> Manifest {
        let mut next = self.durable.manifest.clone();
        next.set_regions(&self.map, parts_for);
        next
    }

    /// Fails unless every one of `ids` is hosted.
    fn check_hosted(&self, ids: &[RegionId]) -> Result<()> {
        match ids.iter().find(|id| self.regions.map.get(**id).is_none()) {
            Some(&region) => Err(Error::RegionNotFound { region }),
            None => Ok(()),
        }
    }
}

/// A durable change being applied to what lives in memory only, before
/// [`Inner::change`] publishes the new map.
pub(super) struct Publish<'a> {
    pub commit: &'a mut CommitState,
    pub regions: &'a mut RegionState,
}

impl Inner {
    /// Replaces region `id`'s transaction state (`None` or an empty table: none),
    /// keeping the store-wide lock count.
    pub(super) fn set_txn_table(&self, id: RegionId, table: Option<TxnTable>) {
        let mut tables = self.txn.lock();
        let table = table.filter(|t| !t.is_empty());
        let added = table.as_ref().map_or(0, |t| t.lock_count() as u64);
        let old = match table {
            Some(t) => tables.insert(id, t),
            None => tables.remove(&id),
        };
        let removed = old.map_or(0, |t| t.lock_count() as u64);
        let count = self.txn_locks.load(Ordering::Relaxed);
        self.txn_locks.store((count + added).saturating_sub(removed), Ordering::Release);
    }

    /// Runs one change of the region map; every change of the hosted regions goes
    /// through here, in this order:
    ///
    /// 1. takes the durable, commit and region locks (the lock order is written on
    ///    [`Inner`]'s fields) and checks that the engine is usable;
    /// 2. `stage` checks the change and makes it on a copy of the map
    ///    ([`Staged::map`]), writes (and fsyncs) the checkpoints it needs, and returns
    ///    the next manifest; an error here leaves the map and the manifest as they were;
    /// 3. the next manifest is made durable ([`Inner::persist`]);
    /// 4. `publish` updates what lives in memory only: memtable ranges, byte charges,
    ///    pins, sequence numbers;
    /// 5. the changed map replaces the old one.
    ///
    /// Nothing is visible to readers of the map before step 5, and nothing is in
    /// memory that is not durable: after a crash either the whole change is in the
    /// manifest or none of it.
    pub(super) fn change<P, T>(
        &self,
        stage: impl FnOnce(&mut Staged<'_>) -> Result<(Manifest, P)>,
        publish: impl FnOnce(&mut Publish<'_>, P) -> T,
    ) -> Result<T> {
        let mut durable = self.durable.lock();
        self.check_usable()?;
        let mut commit = self.commit.lock();
        let mut regions = self.regions.write();
        let mut staged =
            Staged { durable: &mut durable, regions: &regions, map: regions.map.clone() };
        let (next, staged_for_publish) = stage(&mut staged)?;
        let map = staged.map;
        self.persist(&mut durable, next)?;
        let out = publish(
            &mut Publish { commit: &mut commit, regions: &mut regions },
            staged_for_publish,
        );
        regions.map = map;
        Ok(out)
    }
}

impl Engine {
    /// Hosts a new, empty region in a range this store does not host yet (bootstrap,
    /// or a new replica whose data will come by log replay).
    pub fn insert_region(&self, region: Region) -> Result<()> {
        let (id, start, end) = (region.id, region.start.clone(), region.end.clone());
        self.inner.change(
            |s| {
                s.map.insert(region)?;
                Ok((s.manifest(|_| None), ()))
            },
            |p, ()| {
                let bytes = self.inner.memtable.range_bytes(&start, end.as_deref());
                p.regions.bytes.insert(id, AtomicU64::new(bytes));
            },
        )
    }

    /// Stops hosting region `id` and drops its data. Fails with
    /// [`Error::RegionBusy`] while an open round pins it. Snapshots taken earlier no
    /// longer see the region's keys.
    pub fn remove_region(&self, id: RegionId) -> Result<Region> {
        self.inner.change(
            |s| {
                let pins = self.inner.pins.lock().count(id);
                if pins > 0 {
                    return Err(Error::RegionBusy { region: id, pins });
                }
                let region = s.map.remove(id)?.ok_or(Error::RegionNotFound { region: id })?;
                Ok((s.manifest(|_| None), region))
            },
            |p, region| {
                self.inner.memtable.remove_range(&region.start, region.end.as_deref());
                p.regions.bytes.remove(&id);
                self.inner.sessions.lock().remove(&id);
                self.inner.set_txn_table(id, None);
                self.inner.dups.lock().remove(&id);
                self.inner.with_sinks(|s| s.remove(&id));
                region
            },
        )
    }

    /// Splits region `id` at `split_keys`; see [`RegionMap::split`]. Moves no data:
    /// children inherit the parent's checkpoint parts (each its share), its pins, its
    /// client sessions (a copy each) and its epoch (bumped). Returns the parts in key
    /// order.
    pub fn split(
        &self,
        id: RegionId,
        split_keys: &[Vec<u8>],
        new_ids: &[RegionId],
    ) -> Result<Vec<Region>> {
        self.inner.change(
            |s| {
                s.check_hosted(&[id])?;
                let parts = s.map.split(id, split_keys, new_ids)?;
                let child_bytes = self.child_bytes(&parts);
                let parent_parts = s.durable.manifest.parts_of(id);
                let next = s.manifest(|region| {
                    parts.iter().any(|p| p.id == region.id).then(|| restrict(&parent_parts, region))
                });
                // Not a barrier: no index to restart a duplication at, so every part
                // keeps a copy of the parent's state (no floor is dropped).
                let table = self.inner.dups.lock().get(&id).cloned().unwrap_or_default();
                let dups = parts.iter().map(|p| (p.id, table.clone())).collect();
                let sinks = self.split_sinks(id, &parts);
                Ok((next, (parts, child_bytes, (dups, sinks))))
            },
            |p, (parts, child_bytes, (dups, sinks))| {
                self.on_split(p.regions, id, &parts, &child_bytes, dups, sinks);
                parts
            },
        )
    }

    /// Merges region `source` into its neighbour `target`; see [`RegionMap::merge`].
    /// Moves no data: the target takes over the source's checkpoint parts and pins,
    /// and joins the source's client sessions into its own. Returns the grown target.
    pub fn merge(&self, source: RegionId, target: RegionId) -> Result<Region> {
        self.inner.change(
            |s| {
                s.check_hosted(&[source, target])?;
                let merged = s.map.merge(source, target)?;
                let mut parts = s.durable.manifest.parts_of(source);
                parts.extend(s.durable.manifest.parts_of(target));
                parts.sort_by(|a, b| a.start.cmp(&b.start));
                let next = s.manifest(|region| (region.id == target).then(|| parts.clone()));
                Ok((next, merged))
            },
            |p, merged| {
                let mut table = self.inner.dups.lock().get(&target).cloned().unwrap_or_default();
                if let Some(from) = self.inner.dups.lock().get(&source) {
                    table.join_missing(from);
                }
                let sinks = self.merged_sinks(source, target);
                self.on_merge(p.regions, source, target, table, sinks);
                merged
            },
        )
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
        self.inner.change(
            |s| {
                s.check_hosted(&[id])?;
                let parts = s.map.split(id, split_keys, new_ids)?;
                // The commit lock is held: the snapshot is the state as of the split's
                // index.
                let snapshot = self.read_view();
                // Every part starts with the parent's sessions, and takes the parent's
                // transaction state in its range (and the floor).
                let sessions = self.inner.sessions.lock().get(&id).cloned().unwrap_or_default();
                let txn = self.inner.txn.lock().get(&id).cloned().unwrap_or_default();
                // The parent keeps its duplication state; each child restarts the
                // parent's streams in its own log (`DupTable::for_split_child`).
                let parent_dups = self.inner.dups.lock().get(&id).cloned().unwrap_or_default();
                let dups: Vec<(RegionId, DupTable)> = parts
                    .iter()
                    .enumerate()
                    .map(|(i, part)| {
                        let table = if i == 0 {
                            parent_dups.clone()
                        } else {
                            parent_dups.for_split_child(id, at_index, child_index)
                        };
                        (part.id, table)
                    })
                    .collect();
                // Each part keeps the parent's sink entries, clipped to its range.
                let sinks = self.split_sinks(id, &parts);
                // What each part is charged for: the length its checkpoint is estimated
                // at, and (the children's) the charges that move. Every change to the
                // memtable takes the commit lock, so these are the charges after the
                // checkpoints too.
                let child_bytes = self.child_bytes(&parts);
                let moved: u64 = child_bytes.iter().sum();
                let parent_bytes =
                    s.regions.bytes.get(&id).map_or(0, |b| b.load(Ordering::Relaxed));
                let parent_bytes = parent_bytes.saturating_sub(moved);
                let mut refs = Vec::with_capacity(parts.len());
                for (i, part) in parts.iter().enumerate() {
                    let (applied_index, estimate_bytes) = if i == 0 {
                        (at_index, parent_bytes)
                    } else {
                        (child_index, child_bytes[i - 1])
                    };
                    refs.push(self.write_whole_checkpoint(
                        s.durable,
                        part,
                        applied_index,
                        &snapshot,
                        ImageState {
                            sessions: &sessions,
                            txn: &txn.restricted(&part.start, part.end.as_deref()),
                            dups: &dups[i].1,
                            sinks: &sinks[i].1,
                        },
                        estimate_bytes,
                    )?);
                }
                let position: HashMap<RegionId, usize> =
                    parts.iter().enumerate().map(|(i, p)| (p.id, i)).collect();
                let mut next = s.manifest(|region| {
                    let i = *position.get(&region.id)?;
                    Some(refs[i].iter().cloned().collect())
                });
                next.next_file_id = s.durable.next_file_id;
                if refs[0].is_none() {
                    next.set_empty_at(&[id], at_index);
                }
                let empty: Vec<RegionId> = parts[1..]
                    .iter()
                    .zip(&refs[1..])
                    .filter(|(_, r)| r.is_none())
                    .map(|(p, _)| p.id)
                    .collect();
                next.set_empty_at(&empty, child_index);
                next.set_meta_index(&[id], at_index);
                next.set_meta_index(new_ids, child_index);
                Ok((next, (parts, child_bytes, (dups, sinks))))
            },
            |p, (parts, child_bytes, (dups, sinks))| {
                self.on_split(p.regions, id, &parts, &child_bytes, dups, sinks);
                parts
            },
        )
    }

    /// Merges `source` into `target` as [`Engine::merge`] does, and makes it a
    /// checkpoint barrier: the merged target is checkpointed at `at_index` (the Raft
    /// index of the merge in the target's log) before one manifest update removes the
    /// source and records the target's new range, checkpoint and `meta_index`.
    pub fn merge_at(&self, source: RegionId, target: RegionId, at_index: u64) -> Result<Region> {
        self.inner.change(
            |s| {
                s.check_hosted(&[source, target])?;
                let merged = s.map.merge(source, target)?;
                let snapshot = self.read_view();
                let sessions = {
                    let tables = self.inner.sessions.lock();
                    let mut joined = tables.get(&target).cloned().unwrap_or_default();
                    if let Some(from) = tables.get(&source) {
                        joined.join(from, self.inner.options.session_limits);
                    }
                    joined
                };
                let txn = {
                    let tables = self.inner.txn.lock();
                    let mut joined = tables.get(&target).cloned().unwrap_or_default();
                    if let Some(from) = tables.get(&source) {
                        joined.join(from.clone());
                    }
                    joined
                };
                // The target keeps its duplication state and takes the source's in
                // (`DupTable::merge_from`), depending on the source's log up to its
                // prepare.
                let prepare_index = (s.durable.manifest.regions.iter())
                    .find(|e| e.region.id == source)
                    .and_then(|e| e.merge)
                    .map_or(at_index, |m| m.prepare_index);
                let dups = {
                    let tables = self.inner.dups.lock();
                    let mut joined = tables.get(&target).cloned().unwrap_or_default();
                    if let Some(from) = tables.get(&source) {
                        joined.merge_from(from, source, prepare_index, at_index);
                    }
                    joined
                };
                let sinks = self.merged_sinks(source, target);
                let estimate_bytes = [source, target]
                    .iter()
                    .filter_map(|id| s.regions.bytes.get(id))
                    .map(|b| b.load(Ordering::Relaxed))
                    .sum();
                let whole = self.write_whole_checkpoint(
                    s.durable,
                    &merged,
                    at_index,
                    &snapshot,
                    ImageState { sessions: &sessions, txn: &txn, dups: &dups, sinks: &sinks },
                    estimate_bytes,
                )?;
                let mut next = s.manifest(|region| {
                    (region.id == target).then(|| whole.iter().cloned().collect())
                });
                next.next_file_id = s.durable.next_file_id;
                if whole.is_none() {
                    next.set_empty_at(&[target], at_index);
                }
                next.set_meta_index(&[target], at_index);
                Ok((next, (merged, (dups, sinks))))
            },
            |p, (merged, (dups, sinks))| {
                self.on_merge(p.regions, source, target, dups, sinks);
                merged
            },
        )
    }

    /// Replaces the peers of region `id`, bumping its `conf_ver`.
    ///
    /// `at_index` is the Raft index of the membership change; it is recorded with the
    /// region (see [`Engine::meta_index`]).
    pub fn change_peers(&self, id: RegionId, peers: Vec<Peer>, at_index: u64) -> Result<Region> {
        self.inner.change(
            |s| {
                s.check_hosted(&[id])?;
                let region = s.map.change_peers(id, peers)?;
                let mut next = s.manifest(|_| None);
                next.set_meta_index(&[id], at_index);
                Ok((next, region))
            },
            |_, region| region,
        )
    }

    /// Records that the admin command at `at_index` of region `id`'s log was refused:
    /// the region's metadata reflects it (unchanged), so that a replay after a restart
    /// skips it (see [`Engine::meta_index`]) instead of deciding again from state that
    /// may have moved on since (a merge source gone, say). One manifest update; the
    /// metadata index only rises.
    pub fn record_refused(&self, id: RegionId, at_index: u64) -> Result<()> {
        self.inner.change(
            |s| {
                s.check_hosted(&[id])?;
                let mut next = s.manifest(|_| None);
                let current =
                    next.regions.iter().find(|e| e.region.id == id).and_then(|e| e.meta_index);
                if current.is_none_or(|m| m < at_index) {
                    next.set_meta_index(&[id], at_index);
                }
                Ok((next, ()))
            },
            |_, ()| (),
        )
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
        self.inner.change(
            |s| {
                s.check_hosted(&[id])?;
                let region = s.map.bump_version(id)?;
                let snapshot = self.read_view();
                let sessions = self.inner.sessions.lock().get(&id).cloned().unwrap_or_default();
                let txn = self.inner.txn.lock().get(&id).cloned().unwrap_or_default();
                let dups = self.inner.dups.lock().get(&id).cloned().unwrap_or_default();
                let sinks = self.inner.sinks.lock().get(&id).cloned().unwrap_or_default();
                let estimate_bytes =
                    s.regions.bytes.get(&id).map_or(0, |b| b.load(Ordering::Relaxed));
                let image = self.write_whole_checkpoint(
                    s.durable,
                    &region,
                    at_index,
                    &snapshot,
                    ImageState { sessions: &sessions, txn: &txn, dups: &dups, sinks: &sinks },
                    estimate_bytes,
                )?;
                let mut next =
                    s.manifest(|r| (r.id == id).then(|| image.iter().cloned().collect()));
                next.next_file_id = s.durable.next_file_id;
                if image.is_none() {
                    next.set_empty_at(&[id], at_index);
                }
                next.set_meta_index(&[id], at_index);
                for entry in &mut next.regions {
                    if entry.region.id == id {
                        entry.merge = merge;
                    }
                }
                Ok((next, region))
            },
            |_, region| region,
        )
    }

    /// Hosts the region of a received, verified checkpoint, with exactly the
    /// checkpoint's data, client sessions and transaction state. If this store hosts an older version of the same region
    /// (a lagging replica), it is replaced, data and all, in one manifest update; any
    /// other region overlapping the range is an error.
    pub fn install_checkpoint(&self, received: ReceivedCheckpoint) -> Result<Region> {
        self.install_checkpoint_over(received, &[])
    }

    /// [`Engine::install_checkpoint`], also removing the regions `stale` (data and
    /// all) in the same manifest update: regions this store still hosts whose range
    /// the checkpoint's region took over since (a merge source whose merge committed
    /// while this store was behind). After a crash either they are all there, or the
    /// installed region is. Any other region overlapping the range is an error, and
    /// nothing changes.
    pub fn install_checkpoint_over(
        &self,
        received: ReceivedCheckpoint,
        stale: &[RegionId],
    ) -> Result<Region> {
        let ReceivedCheckpoint { file_id, file } = received;
        let header = file.header();
        let region = &header.region;
        self.inner.change(
            |s| {
                {
                    let pins = self.inner.pins.lock();
                    for id in std::iter::once(&region.id).chain(stale) {
                        let count = pins.count(*id);
                        if count > 0 {
                            return Err(Error::RegionBusy { region: *id, pins: count });
                        }
                    }
                }
                let mut removed = Vec::with_capacity(stale.len());
                for id in stale {
                    if *id == region.id {
                        continue;
                    }
                    removed.push(s.map.remove(*id)?.ok_or(Error::RegionNotFound { region: *id })?);
                }
                // A lagging replica's old version of the region is replaced in the same
                // manifest update: after a crash either the old region or the new one
                // is there.
                let replaced = s.map.remove(region.id)?;
                s.map.insert(region.clone())?;
                let part = CheckpointRef {
                    file_id,
                    applied_index: header.applied_index,
                    start: region.start.clone(),
                    end: region.end.clone(),
                    file_bytes: Some(file.stats().file_bytes),
                };
                let mut next = s.manifest(|r| (r.id == region.id).then(|| vec![part.clone()]));
                next.next_file_id = s.durable.next_file_id;
                // The checkpoint's region is the metadata as of its applied index.
                next.set_meta_index(&[region.id], header.applied_index);
                removed.extend(replaced);
                Ok((next, (removed, part)))
            },
            |p, (removed, part)| {
                for old in &removed {
                    self.inner.memtable.remove_range(&old.start, old.end.as_deref());
                    p.regions.bytes.remove(&old.id);
                    self.inner.set_txn_table(old.id, None);
                    self.inner.dups.lock().remove(&old.id);
                    self.inner.with_sinks(|s| s.remove(&old.id));
                }
                let seq = p.commit.next_seq;
                let entry = RegionEntry {
                    region: region.clone(),
                    checkpoints: vec![part.clone()],
                    meta_index: Some(header.applied_index),
                    merge: None,
                    empty_at: None,
                };
                let (_, bytes) = load_part(&self.inner.memtable, &file, &entry, &part, seq);
                // The region's sessions are the checkpoint's, as of its index.
                let mut sessions = self.inner.sessions.lock();
                match &header.sessions {
                    Some(table) => sessions.insert(region.id, table.clone()),
                    None => sessions.remove(&region.id),
                };
                drop(sessions);
                // And so is its transaction state (none in a file of version 1 or 2).
                self.inner.set_txn_table(region.id, header.txn.clone());
                // And its duplication state (none in a file of versions 1 to 3).
                let mut dups = self.inner.dups.lock();
                match header.dups.clone().filter(|d| !d.is_empty()) {
                    Some(table) => dups.insert(region.id, table),
                    None => dups.remove(&region.id),
                };
                drop(dups);
                // And its sink state (none in a file of versions 1 to 4).
                let table = header.sinks.clone().unwrap_or_default();
                self.inner.with_sinks(|s| super::sinks::put(s, region.id, table));
                p.commit.next_seq += 1;
                self.inner.visible_seq.store(seq, Ordering::Release);
                p.regions.bytes.insert(region.id, AtomicU64::new(bytes));
                region.clone()
            },
        )
    }

    /// The bytes charged to each child of a split (`parts[1..]`): what the memtable
    /// holds in its range. Call with the commit lock held, so that nothing changes them
    /// before the split is published.
    fn child_bytes(&self, parts: &[Region]) -> Vec<u64> {
        parts[1..]
            .iter()
            .map(|part| self.inner.memtable.range_bytes(&part.start, part.end.as_deref()))
            .collect()
    }

    /// After a split of `parent` into `parts` (the parent first): the children's
    /// charges move from the parent to them, rounds that pin the parent pin the
    /// children too, every child starts with a copy of the parent's sessions (a
    /// write the parent applied is recognised by whichever part its keys are in now),
    /// the parent's transaction state is partitioned by key, and every part takes its
    /// duplication state from `dups`.
    fn on_split(
        &self,
        regions: &mut RegionState,
        parent: RegionId,
        parts: &[Region],
        child_bytes: &[u64],
        dups: Vec<(RegionId, DupTable)>,
        sinks: Vec<(RegionId, SinkTable)>,
    ) {
        for (part, &b) in parts[1..].iter().zip(child_bytes) {
            regions.bytes.insert(part.id, AtomicU64::new(b));
        }
        if let Some(b) = regions.bytes.get(&parent) {
            let moved: u64 = child_bytes.iter().sum();
            let left = b.load(Ordering::Relaxed).saturating_sub(moved);
            b.store(left, Ordering::Relaxed);
        }
        let children: Vec<RegionId> = parts[1..].iter().map(|p| p.id).collect();
        self.inner.pins.lock().on_split(parent, &children);
        let mut sessions = self.inner.sessions.lock();
        if let Some(table) = sessions.get(&parent).cloned() {
            for child in &children {
                sessions.insert(*child, table.clone());
            }
        }
        drop(sessions);
        // Locks by key and records by primary key go to the part whose range holds
        // them; every part keeps the parent's floor. No lock is added or dropped.
        let mut tables = self.inner.txn.lock();
        if let Some(mut table) = tables.remove(&parent) {
            for part in &parts[1..] {
                let child = table.take_range(&part.start, part.end.as_deref());
                if !child.is_empty() {
                    tables.insert(part.id, child);
                }
            }
            if !table.is_empty() {
                tables.insert(parent, table);
            }
        }
        drop(tables);
        let mut tables = self.inner.dups.lock();
        for (id, table) in dups {
            if table.is_empty() {
                tables.remove(&id);
            } else {
                tables.insert(id, table);
            }
        }
        drop(tables);
        self.inner.with_sinks(|tables| {
            for (id, table) in sinks {
                super::sinks::put(tables, id, table);
            }
        });
    }

    /// Each part's sink state after a split of `parent` into `parts`: the parent's
    /// entries clipped to the part's range (`SinkTable::restricted`).
    fn split_sinks(&self, parent: RegionId, parts: &[Region]) -> Vec<(RegionId, SinkTable)> {
        let table = self.inner.sinks.lock().get(&parent).cloned().unwrap_or_default();
        (parts.iter()).map(|p| (p.id, table.restricted(&p.start, p.end.as_deref()))).collect()
    }

    /// The target's sink state after a merge of `source` into it: both sides' entries
    /// (`SinkTable::merge_from`: pieces concatenated per entry).
    fn merged_sinks(&self, source: RegionId, target: RegionId) -> SinkTable {
        let tables = self.inner.sinks.lock();
        let mut joined = tables.get(&target).cloned().unwrap_or_default();
        if let Some(from) = tables.get(&source) {
            joined.merge_from(from);
        }
        joined
    }

    /// After a merge of `source` into `target`: the source's charge and pins go to the
    /// target, its sessions join the target's (per session the highest sequence
    /// number: a write either side applied is recognised), and so does its
    /// transaction state (floor: the larger); the target's duplication state becomes
    /// `dups`.
    fn on_merge(
        &self,
        regions: &mut RegionState,
        source: RegionId,
        target: RegionId,
        dups: DupTable,
        sinks: SinkTable,
    ) {
        let moved = regions.bytes.remove(&source).map_or(0, AtomicU64::into_inner);
        if let Some(b) = regions.bytes.get(&target) {
            b.fetch_add(moved, Ordering::Relaxed);
        }
        self.inner.pins.lock().on_merge(source, target);
        let mut sessions = self.inner.sessions.lock();
        if let Some(from) = sessions.remove(&source) {
            let limits = self.inner.options.session_limits;
            sessions.entry(target).or_default().join(&from, limits);
        }
        drop(sessions);
        // The ranges are disjoint: every entry of both, and the larger floor.
        let mut tables = self.inner.txn.lock();
        if let Some(from) = tables.remove(&source) {
            tables.entry(target).or_default().join(from);
        }
        drop(tables);
        let mut tables = self.inner.dups.lock();
        tables.remove(&source);
        if dups.is_empty() {
            tables.remove(&target);
        } else {
            tables.insert(target, dups);
        }
        drop(tables);
        self.inner.with_sinks(|tables| {
            tables.remove(&source);
            super::sinks::put(tables, target, sinks);
        });
    }
}
