//! Membership by intent, over the [`Backend`] seam: a store added to every region (as a
//! learner, filled by a snapshot, caught up, then promoted to a voter) or removed from
//! every region. This is how a store whose disk was lost is replaced (ARCHITECTURE.md,
//! "Store identity"): remove it, start the new node with `--join`, add it back.
//!
//! Each step is one membership change of one region, proposed to its leader at the
//! epoch the leader reports, and decided again from the region as it is after every
//! attempt: an attempt whose outcome is unknown (a lost reply) is never repeated
//! blindly, so running the same intent twice is harmless. A new peer's id comes from
//! the directory's id allocator, so it was never used in any region.

use std::time::Instant;

use regionkv_engine::{Peer, PeerId, Region, RegionId, StoreId};
use regionkv_raft::directory::DIRECTORY;
use regionkv_raft::{ChangePeersRequest, PeerChange, StateRole};

use super::ClusterOps;
use crate::db::ask;
use crate::defaults::{
    ADMIN_ATTEMPT_TIMEOUT, CATCH_UP_DEADLINE, DRIVER_RETRY_PAUSE, MEMBERSHIP_DEADLINE,
};
use crate::error::{Error, Result};
use crate::region_info::RegionInfo;

/// When the directory's own group changes: a store added joins it first (it can then
/// locate keys), a store removed leaves it last.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Directory {
    First,
    Last,
}

/// Bounds the passes over the region table: regions split while a pass runs are
/// picked up by the next one.
const PASSES_MAX: usize = 8;

impl ClusterOps {
    /// Adds store `store` to the directory's group and to every region `regions` lists
    /// that has no peer on it: a new peer (its id from the directory) joins as a
    /// learner, and once the store's replica holds the region and has applied what its
    /// leader had committed, it is promoted to a voter. Returns the regions as they
    /// are afterwards. The store must be running (started with `--join`).
    pub fn add_store(
        &self,
        store: StoreId,
        regions: impl Fn() -> Vec<RegionInfo>,
    ) -> Result<Vec<Region>> {
        let _one = self.admin_lock.lock();
        self.each_region(&regions, Directory::First, |ops, region| ops.add_to_region(store, region))
    }

    /// Removes store `store`'s peer from every region `regions` lists, and from the
    /// directory's group last. Returns the regions as they are afterwards.
    pub fn remove_store(
        &self,
        store: StoreId,
        regions: impl Fn() -> Vec<RegionInfo>,
    ) -> Result<Vec<Region>> {
        let _one = self.admin_lock.lock();
        self.each_region(&regions, Directory::Last, |ops, region| {
            ops.remove_from_region(store, region)
        })
    }

    /// Replaces one peer of `region`: a new peer on `add` (a learner, caught up, then
    /// promoted), then the peer on `remove` removed — add before remove, one membership
    /// change at a time, so the region never has fewer live voters than a majority at
    /// any step (the health monitor's repairs; either side may be absent). `in_charge`
    /// is asked before each step: a caller that is no longer the one to act (the health
    /// monitor of a process that lost the directory's leadership) stops there.
    pub fn replace_in_region(
        &self,
        region: RegionId,
        remove: Option<StoreId>,
        add: Option<StoreId>,
        in_charge: &dyn Fn() -> bool,
    ) -> Result<Region> {
        let _one = self.admin_lock.lock();
        let stop = || Error::InvalidRequest("no longer in charge of repairs".into());
        let mut current = None;
        if let Some(store) = add {
            if !in_charge() {
                return Err(stop());
            }
            current = Some(self.add_to_region(store, region)?);
        }
        if let Some(store) = remove {
            if !in_charge() {
                return Err(stop());
            }
            current = Some(self.remove_from_region(store, region)?);
        }
        current.ok_or_else(|| Error::InvalidRequest("nothing to add or remove".into()))
    }

    /// Sends a read of `region` to each of its replicas on `stores`: a request wakes a
    /// hibernated group, and a group with no leader elects one. Answers are not awaited.
    pub fn wake_region(&self, region: &Region) {
        for p in &region.peers {
            let req = regionkv_raft::ReadRequest {
                region: region.id,
                epoch: region.epoch,
                query: regionkv_raft::Query::Get {
                    key: region.start.clone().into(),
                    read_ts: None,
                },
                reply: Box::new(|_| {}),
            };
            self.backend.read(p.store, req);
        }
    }

    /// Runs `step` on the directory's group and every listed region, passing over the
    /// table again until a pass finds nothing new (regions split meanwhile).
    fn each_region(
        &self,
        regions: &dyn Fn() -> Vec<RegionInfo>,
        directory: Directory,
        mut step: impl FnMut(&ClusterOps, RegionId) -> Result<Region>,
    ) -> Result<Vec<Region>> {
        let mut done: Vec<Region> = Vec::new();
        if directory == Directory::First {
            done.push(step(self, DIRECTORY)?);
        }
        // Bounded by PASSES_MAX.
        for _ in 0..PASSES_MAX {
            let mut todo: Vec<RegionId> = regions().into_iter().map(|i| i.region.id).collect();
            todo.retain(|id| !done.iter().any(|r| r.id == *id));
            if todo.is_empty() {
                break;
            }
            for id in todo {
                done.push(step(self, id)?);
            }
        }
        if directory == Directory::Last {
            done.push(step(self, DIRECTORY)?);
        }
        done.sort_by_key(|r| r.id);
        Ok(done)
    }

    fn add_to_region(&self, store: StoreId, region: RegionId) -> Result<Region> {
        let (_, current, _) = self.leader_view(region, Instant::now() + MEMBERSHIP_DEADLINE)?;
        let peer = match current.peers.iter().find(|p| p.store == store) {
            Some(p) => *p,
            None => Peer { id: PeerId(self.alloc_ids(1)?), store },
        };
        let learner = self.change(region, |r| {
            (!r.peers.iter().any(|p| p.id == peer.id)).then_some(PeerChange::AddLearner(peer))
        })?;
        tracing::info!(region = region.0, store = store.0, peer = peer.id.0, epoch = %learner.epoch, "added a learner; waiting for it to catch up");
        self.wait_caught_up(store, region)?;
        // Until an attempt is known to be applied: promoting a voter again changes
        // nothing, so an attempt whose outcome is unknown may be repeated.
        let voter = self.change(region, |_| Some(PeerChange::AddVoter(peer)))?;
        tracing::info!(region = region.0, store = store.0, peer = peer.id.0, epoch = %voter.epoch, "promoted the learner to a voter");
        Ok(voter)
    }

    fn remove_from_region(&self, store: StoreId, region: RegionId) -> Result<Region> {
        let removed = self.change(region, |r| {
            r.peers.iter().find(|p| p.store == store).map(|p| PeerChange::Remove(p.id))
        })?;
        tracing::info!(region = region.0, store = store.0, epoch = %removed.epoch, "removed the store from the region");
        Ok(removed)
    }

    /// The leader of `region`, the region as it sees it, and its commit index.
    fn leader_view(&self, region: RegionId, deadline: Instant) -> Result<(StoreId, Region, u64)> {
        // Bounded by the deadline; every turn sleeps.
        while Instant::now() < deadline {
            if self.backend.is_shut() {
                return Err(Error::Shutdown);
            }
            if let Some(leader) = self.backend.leader_of(region)
                && let Some(s) = self.backend.peer_status(leader, region)
                && s.role == StateRole::Leader
                && s.initialized
            {
                return Ok((leader, s.region, s.commit));
            }
            std::thread::sleep(DRIVER_RETRY_PAUSE);
        }
        Err(Error::Unavailable {
            waited: MEMBERSHIP_DEADLINE,
            last: format!("region {region} has no leader"),
        })
    }

    /// Proposes the change `decide` makes for the region as its leader sees it, until
    /// one is applied or `decide` finds nothing to do; returns the region then.
    fn change(
        &self,
        region: RegionId,
        mut decide: impl FnMut(&Region) -> Option<PeerChange>,
    ) -> Result<Region> {
        let deadline = Instant::now() + MEMBERSHIP_DEADLINE;
        let mut last = String::from("no attempt");
        // Bounded by the deadline; every failed turn sleeps.
        while Instant::now() < deadline {
            let (leader, current, _) = self.leader_view(region, deadline)?;
            let Some(change) = decide(&current) else { return Ok(current) };
            let epoch = current.epoch;
            match ask(ADMIN_ATTEMPT_TIMEOUT, |reply| {
                self.backend
                    .change_peers(leader, ChangePeersRequest { region, epoch, change, reply });
            }) {
                Some(Ok(changed)) => return Ok(changed),
                Some(Err(e)) if e.is_retryable() || e.is_cancelled() => last = e.to_string(),
                Some(Err(e)) => return Err(e.into()),
                None => last = format!("store {leader} did not answer; the outcome is unknown"),
            }
            tracing::debug!(region = region.0, ?change, last, "membership change not applied yet");
            std::thread::sleep(DRIVER_RETRY_PAUSE);
        }
        Err(Error::Unavailable { waited: MEMBERSHIP_DEADLINE, last })
    }

    /// Waits until `store`'s replica of `region` holds it and has applied what the
    /// region's leader had committed when the wait began.
    fn wait_caught_up(&self, store: StoreId, region: RegionId) -> Result<()> {
        let deadline = Instant::now() + CATCH_UP_DEADLINE;
        let (_, _, target) = self.leader_view(region, deadline)?;
        // Bounded by the deadline; every turn sleeps.
        while Instant::now() < deadline {
            if self.backend.is_shut() {
                return Err(Error::Shutdown);
            }
            if let Some(s) = self.backend.peer_status(store, region)
                && s.initialized
                && s.applied >= target
            {
                return Ok(());
            }
            std::thread::sleep(DRIVER_RETRY_PAUSE * 5);
        }
        Err(Error::Unavailable {
            waited: CATCH_UP_DEADLINE,
            last: format!(
                "store {store} did not catch up on region {region} (index {target}); is it \
                 running, started with --join, and reachable from the region's leader? (A \
                 store whose disk was lost must be removed first: `store remove {store}`)"
            ),
        })
    }
}
