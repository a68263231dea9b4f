//! Time: ticks, hibernation of quiet groups (leader and followers stop ticking), and the
//! store liveness that wakes the followers of a leader whose store fell silent.

use std::collections::{BTreeSet, HashSet};

use regionkv_engine::{RegionId, StoreId};

use super::StoreCore;
use super::lifecycle::PURGE_EVERY_TICKS;
use super::snapshot::awaits_snapshot_persist;
use crate::config::ReadMode;
use crate::directory::DIRECTORY;
use crate::transport::{Body, Envelope};

/// Election timeouts after which an uninitialized replica that no leader claimed (no
/// append, heartbeat or snapshot) is collected. A leader that adds a replica sends it
/// a heartbeat every heartbeat interval, so only a replica no group wants goes.
pub(super) const UNCLAIMED_ELECTION_TIMEOUTS: u64 = 10;

impl StoreCore {
    /// Advances every group's logical clock by one tick.
    /// Hibernating replicas do not tick; a leader with nothing new since its last tick
    /// whose group is quiescent hibernates first (see `maybe_hibernate`).
    pub fn on_tick(&mut self) {
        self.ticks += 1;
        // Leaders idle long enough try to hibernate before they tick: a quiescent
        // group goes to sleep instead of sending the heartbeat round this tick may owe.
        if let Some(after) = self.hibernate_after() {
            let mut quiet: Vec<RegionId> = self
                .awake
                .iter()
                .copied()
                .filter(|id| {
                    self.replicas.get(id).is_some_and(|r| {
                        r.is_leader() && r.hibernation.idle_ticks.saturating_add(1) >= after
                    })
                })
                .collect();
            quiet.sort_unstable(); // deterministic message order
            for id in quiet {
                self.maybe_hibernate(id);
            }
        }
        let mut halted_leaders = Vec::new();
        let mut unclaimed = Vec::new();
        let unclaimed_after = UNCLAIMED_ELECTION_TIMEOUTS * self.ctx.config.election_ticks as u64;
        for &id in &self.awake {
            let Some(replica) = self.replicas.get_mut(&id) else { continue };
            if self.catching_up.contains_key(&id) {
                continue; // a follower that must not campaign yet (H2)
            }
            // No election tick until an installed snapshot is persisted: raft-rs would
            // panic campaigning (`awaits_snapshot_persist`). A replica that just took
            // a snapshot is a follower: nothing else of its tick is missed.
            if !awaits_snapshot_persist(replica) && replica.raw.tick() {
                self.dirty.insert(id);
            }
            let idle = &mut replica.hibernation.idle_ticks;
            *idle = idle.saturating_add(1);
            if replica.halted.is_some() && replica.is_leader() {
                halted_leaders.push(id);
            }
            if !replica.is_initialized() {
                replica.unclaimed_ticks += 1;
                if replica.unclaimed_ticks > unclaimed_after {
                    unclaimed.push(id);
                }
            }
        }
        halted_leaders.sort_unstable(); // deterministic message order
        for id in halted_leaders {
            self.hand_over_leadership(id);
        }
        unclaimed.sort_unstable();
        self.collect_unclaimed(&unclaimed);
        if self.ticks.is_multiple_of(self.ctx.config.election_ticks as u64) {
            self.poke_sleeping_leaders();
            self.assert_cluster_version();
        }
        self.check_liveness();
        self.propose_image_hashes();
        if self.ticks.is_multiple_of(PURGE_EVERY_TICKS) {
            self.plan_purge();
            self.collect_garbage();
        }
    }

    /// Collects uninitialized replicas that no leader of their group claimed for
    /// [`UNCLAIMED_ELECTION_TIMEOUTS`] election timeouts (a zombie: created by a stale
    /// message, or left when this store was removed before its snapshot came). Their
    /// logs are tombstoned without an epoch: a leader that does want a replica here
    /// creates it again with its next message.
    fn collect_unclaimed(&mut self, regions: &[RegionId]) {
        for &region in regions {
            tracing::info!(region = region.0, "collecting a replica no leader claimed");
            if let Err(e) = self.destroy(region) {
                tracing::warn!(region = region.0, error = %e, "could not collect a replica");
            }
        }
    }

    /// Wakes the groups of replicas here that know no leader but will not campaign to
    /// find one: a replica that restarted as a learner in its own view (its promotion
    /// was in its log but not yet applied) or that may not vote after a cut log (H2).
    /// Their leader may be hibernating: it went to sleep when every replica had
    /// committed the whole log, then this one restarted with an older commit index (a
    /// commit-only hard state is not synced), and a hibernating leader sends nothing.
    /// A voter would campaign, which wakes everyone; these send each peer an append
    /// response for what they hold instead: any message but a heartbeat wakes a region,
    /// and raft-rs takes it as a progress report it already had. Once per election
    /// timeout; awake groups answer with their next heartbeat, so this stops.
    fn poke_sleeping_leaders(&mut self) {
        let mut pokes = Vec::new();
        let mut ids: Vec<RegionId> = self.awake.iter().copied().collect();
        ids.sort_unstable(); // deterministic message order
        for id in ids {
            let Some(replica) = self.replicas.get(&id) else { continue };
            let campaigns = !self.catching_up.contains_key(&id)
                && replica.conf_state().voters.contains(&replica.id.0);
            if !replica.is_initialized() || replica.is_leader() || !replica.knows_no_leader() {
                continue;
            }
            if campaigns {
                continue;
            }
            for peer in &replica.region.peers {
                if peer.id == replica.id {
                    continue;
                }
                let mut msg = raft::eraftpb::Message::default();
                msg.set_msg_type(raft::eraftpb::MessageType::MsgAppendResponse);
                msg.to = peer.id.0;
                msg.from = replica.id.0;
                msg.term = replica.term();
                msg.index = replica.last_index();
                msg.commit = replica.committed();
                pokes.push((id, msg));
            }
        }
        for (region, msg) in pokes {
            self.route(region, vec![msg], super::SendWhen::Now);
        }
    }

    /// Ticks of nothing to do after which a leader tries to hibernate (`None`: never):
    /// the first tick with nothing new since the last. Quiescence needs every follower
    /// to have committed the whole log, which raft-rs's commit broadcast tells them
    /// within a round trip; a group that is not quiescent yet tries again next tick.
    /// With thousands of regions written now and then, a region that sleeps between
    /// writes costs two notices per write instead of a heartbeat round every interval.
    fn hibernate_after(&self) -> Option<u32> {
        let config = &self.ctx.config;
        // A lease holder must tick: check-quorum is what ends its lease.
        (config.hibernate_regions && config.read_mode != ReadMode::Lease).then_some(1)
    }

    /// Hibernates the leader of `region` if its group is quiescent: every replica
    /// holds and has committed the whole log, nothing is proposed, read or moving.
    /// Its followers are told, and stop ticking once their own logs agree.
    fn maybe_hibernate(&mut self, region: RegionId) {
        let me = self.ctx.config.store_id;
        let Some(replica) = self.replicas.get_mut(&region) else { return };
        if !replica.is_quiescent() {
            return;
        }
        replica.hibernation.hibernated = true;
        // Nothing is in flight to a quiescent group's followers: raft-rs's window of
        // appends in flight (`max_inflight_appends` slots per follower) is freed, and
        // allocated again at the next append.
        replica.raw.raft.maybe_free_inflight_buffers();
        // From now on its followers learn commits from the next append or heartbeat, or
        // from the notice that commits (`on_hibernate`), not from a round of their own:
        // with thousands of regions written at random that round was 4 of every
        // write's 10 messages. Admin and membership commands turn it back on until the
        // next sleep (`StoreCore::on_admin`): the replicas of a merge source, and
        // targets waiting for them, learn a prepare's commit at once, as before.
        replica.raw.raft.skip_bcast_commit(true);
        self.awake.remove(&region);
        let (term, epoch, last) = (replica.term(), replica.region.epoch, replica.last_index());
        let followers: Vec<StoreId> =
            replica.region.peers.iter().filter(|p| p.store != me).map(|p| p.store).collect();
        for to in followers {
            self.outbox.push(Envelope {
                region,
                from: me,
                to,
                epoch: Some(epoch),
                range: None,
                body: Body::Hibernate { term, index: last },
            });
        }
        tracing::trace!(region = region.0, term, index = last, "hibernating");
    }

    /// Wakes `region`: it ticks again, and as a leader counts idle time anew.
    pub(super) fn wake(&mut self, region: RegionId) {
        if let Some(replica) = self.replicas.get_mut(&region) {
            replica.wake();
            replica.hibernation.idle_ticks = 0;
            self.awake.insert(region);
        }
    }

    /// Store liveness, for hibernation: tells the other stores this one is alive (the
    /// core that owns the directory's replica speaks for the store), and wakes the
    /// hibernating followers of leaders whose stores fell silent, so they elect anew.
    fn check_liveness(&mut self) {
        let me = self.ctx.config.store_id;
        let config = &self.ctx.config;
        if !config.hibernate_regions {
            return;
        }
        // Several per silence window (two election timeouts).
        let every = (config.election_ticks / 2).max(1) as u64;
        let silent_after = (config.election_ticks * 2) as u64;
        if (self.owns)(DIRECTORY) && self.ticks.is_multiple_of(every) {
            // Which stores to tell is found by a walk over every replica when a replica
            // came or a region's peers changed (those clear the list), and once per
            // silence window besides; it was every time: 10,000 replicas walked four
            // times a second on an idle store.
            if self.alive_to.is_empty() || self.ticks.is_multiple_of(silent_after) {
                let mut stores: BTreeSet<StoreId> = BTreeSet::new();
                for replica in self.replicas.values() {
                    stores.extend(replica.region.peers.iter().map(|p| p.store));
                }
                stores.remove(&me);
                self.alive_to = stores.into_iter().collect();
            }
            for &to in &self.alive_to {
                self.outbox.push(Envelope {
                    region: DIRECTORY,
                    from: me,
                    to,
                    epoch: None,
                    range: None,
                    body: Body::Alive,
                });
            }
        }
        let ticks = self.ticks;
        let silent: HashSet<StoreId> = self
            .store_heard
            .iter()
            .filter(|&(_, &heard)| ticks.saturating_sub(heard) > silent_after)
            .map(|(&store, _)| store)
            .collect();
        if silent.is_empty() {
            return;
        }
        let woken: Vec<RegionId> = self
            .replicas
            .iter()
            .filter(|(_, r)| {
                r.hibernation.hibernated && r.leader_store().is_some_and(|l| silent.contains(&l))
            })
            .map(|(&id, _)| id)
            .collect();
        for region in woken {
            self.wake(region);
        }
    }

    /// A leader's notice that it hibernates: this follower does too if it follows
    /// that leader in that term and its log is complete and committed.
    ///
    /// The notice commits: a leader hibernates only once its log ends at `index` with
    /// a committed entry of its own `term` (`Replica::is_quiescent`). A log that holds
    /// an entry of that index and term durably holds the leader's log up to it (only
    /// that leader made entries of its term; Raft's log matching), so this replica may
    /// commit it. A leader that slept once sends no commit-only round
    /// (`skip_bcast_commit`), so a lone write costs two appends, two responses and two
    /// notices. A notice that comes
    /// late or twice commits nothing that was not committed.
    pub(super) fn on_hibernate(&mut self, region: RegionId, from: StoreId, term: u64, index: u64) {
        let Some(replica) = self.replicas.get_mut(&region) else { return };
        let committed = replica.committed();
        replica.commit_held_entry(index, term);
        if replica.committed() != committed {
            self.dirty.insert(region); // apply what the notice committed
        }
        if replica.may_hibernate_after(from, term, index) {
            replica.hibernation.hibernated = true;
            self.awake.remove(&region);
        }
    }
}
