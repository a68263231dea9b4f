//! Messages in and out: envelopes from other stores step the replicas (creating one for a
//! new member), and raft-rs's messages go out now or once the write persists.

use raft::SnapshotStatus;
use raft::eraftpb::{Message, MessageType};
use regionkv_engine::checkpoint::CheckpointChunks;
use regionkv_engine::{Epoch, PeerId, Region, RegionId, StoreId};

use super::StoreCore;
use super::snapshot::{awaits_snapshot_persist, decode_snapshot_data};
use crate::error::Result;
use crate::log::LogState;
use crate::replica::ReplicaInit;
use crate::transport::{Body, Envelope, KeyRange, SnapshotChunk};

/// Most regions whose early vote requests a store holds (see `hold_vote`).
const MAX_HELD_VOTE_REGIONS: usize = 1024;

/// True for a request for a vote or a pre-vote.
fn is_vote_request(kind: MessageType) -> bool {
    matches!(kind, MessageType::MsgRequestVote | MessageType::MsgRequestPreVote)
}

/// When raft-rs's messages of a ready may leave.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum SendWhen {
    /// At once: a leader's appends and heartbeats go out in parallel with its own fsync.
    Now,
    /// Once the ready's write is durable: votes and append responses promise what is on
    /// disk.
    AfterPersist,
}

impl StoreCore {
    /// Takes envelopes that arrived from other stores.
    pub fn on_envelopes(&mut self, envelopes: Vec<Envelope>) {
        for env in envelopes {
            let region = env.region;
            self.store_heard.insert(env.from, self.ticks);
            if let Err(e) = self.on_envelope(env) {
                tracing::debug!(region = region.0, error = %e, "dropped a message");
            }
        }
    }

    fn on_envelope(&mut self, env: Envelope) -> Result<()> {
        if env.to != self.ctx.config.store_id
            || matches!(env.body, Body::Alive)
            || !(self.owns)(env.region)
            || self.is_below_tombstone(&env)
        {
            return Ok(());
        }
        let Envelope { region, from, epoch, range, body, .. } = env;
        if let Body::Hibernate { term, index } = body {
            self.on_hibernate(region, from, term, index);
            return Ok(());
        }
        if let Body::Gone { peer } = body {
            return self.on_gone(region, from, epoch, PeerId(peer));
        }
        if !self.replicas.contains_key(&region) {
            // A replica added by a membership change learns of its region from the
            // first message; it holds nothing until a snapshot arrives. But not if
            // this store is behind (see `may_create`). A message without a range
            // decides nothing (an unknown range is not an empty one): no replica is
            // created.
            let to = match &body {
                Body::Raft(m) => m.to,
                // The Raft message comes before a snapshot's chunks.
                _ => return Ok(()),
            };
            let Some(range) = range else { return Ok(()) };
            // A store that joined a running cluster hosts only peers above its floor
            // (ARCHITECTURE.md, "Store identity"): a message to an older peer id of
            // this store was meant for a life of it whose disk was lost.
            if self.ctx.engine.peer_floor().is_some_and(|floor| to <= floor.0) {
                tracing::debug!(
                    region = region.0,
                    to,
                    "a message to a peer of an earlier life of this store; dropped"
                );
                return Ok(());
            }
            if !self.may_create(region, epoch, &range) {
                if let Body::Raft(m) = &body
                    && is_vote_request(m.get_msg_type())
                {
                    let to = self.ctx.config.store_id;
                    let range = Some(range);
                    self.hold_vote(Envelope { region, from, to, epoch, range, body });
                }
                return Ok(());
            }
            self.create_uninitialized(region, PeerId(to))?;
        }
        if self.tell_gone(region, from, epoch, &body) {
            return Ok(()); // neither stepped (its vote requests disturb the group) nor waking
        }
        let replica = self.replicas.get_mut(&region).expect("created above");
        // Any message wakes a hibernating replica, but heartbeat traffic: a leader's
        // responses keep coming for a while after it went quiet, and a follower
        // answers a leader's heartbeat without ticking (a heartbeat sent just before
        // the leader's notice may arrive just after it).
        let kind = match &body {
            Body::Raft(m) => Some(m.get_msg_type()),
            _ => None,
        };
        let heartbeat =
            matches!(kind, Some(MessageType::MsgHeartbeat | MessageType::MsgHeartbeatResponse));
        if !heartbeat {
            replica.wake();
            replica.hibernation.idle_ticks = 0;
            self.awake.insert(region);
        }
        let from_leader = matches!(
            kind,
            Some(MessageType::MsgAppend | MessageType::MsgHeartbeat | MessageType::MsgSnapshot)
        ) || matches!(body, Body::SnapshotChunk(_));
        if from_leader {
            replica.unclaimed_ticks = 0;
        }
        match body {
            Body::Hibernate { .. } | Body::Alive | Body::Gone { .. } => {}
            Body::Raft(msg) => {
                if msg.to != replica.id.0 {
                    return Ok(()); // for an older replica of the region on this store
                }
                if msg.get_msg_type() == MessageType::MsgHeartbeat
                    && msg.commit > replica.last_index()
                {
                    // The leader believes this replica holds entries it does not: the
                    // store lost data it had acknowledged (raft-rs would panic here).
                    tracing::warn!(
                        region = region.0,
                        peer = replica.id.0,
                        leader = msg.from,
                        commit = msg.commit,
                        last = replica.last_index(),
                        "a heartbeat names entries this replica does not hold; dropped"
                    );
                    return Ok(());
                }
                replica.known_stores.insert(PeerId(msg.from), from);
                if !replica.is_initialized() && msg.get_msg_type() == MessageType::MsgAppend {
                    let ask = ask_for_snapshot(&msg, replica.id);
                    self.route(region, vec![ask], SendWhen::Now);
                    return Ok(());
                }
                if msg.get_msg_type() == MessageType::MsgSnapshot
                    && !self.may_step_snapshot(region, &msg)
                {
                    return Ok(());
                }
                self.step_message(region, msg)?;
            }
            Body::SnapshotChunk(chunk) => self.on_snapshot_chunk(region, chunk)?,
        }
        self.dirty.insert(region);
        Ok(())
    }

    /// True if `msg`, sent at `epoch`, comes from a peer that a membership change
    /// removed from `region`: this store's replica holds the region at a newer
    /// `conf_ver` than the sender's, and its members do not list the sender's peer. The
    /// sender listed itself at its own epoch (it sends one only once it holds the
    /// region) and a peer id is never used again, so a later change removed it for
    /// good: a follower that holds the entry removing it but never learned that it
    /// committed (ARCHITECTURE.md, "Membership"). No leader sends to it any more.
    fn is_from_removed_peer(&self, region: RegionId, epoch: Option<Epoch>, msg: &Message) -> bool {
        let (Some(replica), Some(epoch)) = (self.replicas.get(&region), epoch) else {
            return false;
        };
        replica.is_initialized()
            && epoch.conf_ver < replica.region.epoch.conf_ver
            && !replica.region.peers.iter().any(|p| p.id.0 == msg.from)
    }

    /// True if `body`, from store `to` at `epoch`, is a Raft message of a peer removed
    /// from `region` (see `is_from_removed_peer`); then tells that peer it is gone:
    /// `Body::Gone` at this replica's epoch and range, at most once an election timeout
    /// per peer (a removed replica campaigns once per timeout, to every member).
    fn tell_gone(
        &mut self,
        region: RegionId,
        to: StoreId,
        epoch: Option<Epoch>,
        body: &Body,
    ) -> bool {
        let Body::Raft(msg) = body else { return false };
        if !self.is_from_removed_peer(region, epoch, msg) {
            return false;
        }
        let peer = PeerId(msg.from);
        let now = self.ticks;
        let every = self.ctx.config.election_ticks as u64;
        let told = self.told_gone.entry(region).or_default();
        told.retain(|(_, at)| now.saturating_sub(*at) < every);
        if told.iter().any(|(p, _)| *p == peer) {
            return true;
        }
        told.push((peer, now));
        let replica = self.replicas.get(&region).expect("checked by the caller");
        tracing::info!(
            region = region.0,
            peer = peer.0,
            store = to.0,
            epoch = %replica.region.epoch,
            "a removed peer sent a message; telling it it is gone"
        );
        self.outbox.push(Envelope {
            region,
            from: self.ctx.config.store_id,
            to,
            epoch: Some(replica.region.epoch),
            range: Some(KeyRange {
                start: replica.region.start.clone(),
                end: replica.region.end.clone(),
            }),
            body: Body::Gone { peer: peer.0 },
        });
        true
    }

    /// Takes a notice from store `from` that peer `peer` of `region` is not a member at
    /// `epoch`: the replica here destroys itself, with a tombstone at that epoch, if it
    /// is that peer, holds the region at an older epoch (a lower `conf_ver`, no higher
    /// version) and `from` hosts one of the region's peers as this replica knows them.
    /// Anything else is refused (logged; nothing changes): a replica that is still a
    /// member, added back under a new peer id, or already past that epoch never goes.
    fn on_gone(
        &mut self,
        region: RegionId,
        from: StoreId,
        epoch: Option<Epoch>,
        peer: PeerId,
    ) -> Result<()> {
        let Some(replica) = self.replicas.get(&region) else { return Ok(()) };
        let me = self.ctx.config.store_id;
        let mine = replica.region.epoch;
        let refused = if !replica.is_initialized() {
            Some("the replica holds nothing yet")
        } else if replica.id != peer {
            Some("it names another peer of this store")
        } else if epoch.is_none_or(|e| e.conf_ver <= mine.conf_ver || e.version < mine.version) {
            Some("its epoch is not newer than the replica's")
        } else if from == me || !replica.region.peers.iter().any(|p| p.store == from) {
            Some("its sender hosts none of the region's peers")
        } else if replica.merge.state.is_some() {
            Some("the replica is a prepared merge source")
        } else {
            None
        };
        if let Some(why) = refused {
            tracing::debug!(
                region = region.0,
                peer = peer.0,
                from = from.0,
                ?epoch,
                why,
                "a notice that a peer is gone refused"
            );
            return Ok(());
        }
        tracing::info!(
            region = region.0,
            peer = peer.0,
            from = from.0,
            ?epoch,
            "this replica was removed from its region (it missed the commit): destroying it"
        );
        self.destroy_gone_at(region, epoch)
    }

    /// Keeps a vote request for a region this store may not create a replica of yet
    /// (see `may_create`): most often a split child's first campaign, from the replica
    /// on the parent's leader store, which applies the split first (it learns the
    /// commit first) and campaigns at once. Dropped, that campaign would fail, the
    /// child would stay without a leader for an election timeout and could be led
    /// from any store. `step_held_votes` steps it once this store's own split created
    /// the child. Held requests expire after two election timeouts; at most
    /// [`MAX_HELD_VOTE_REGIONS`] regions' are kept.
    fn hold_vote(&mut self, env: Envelope) {
        let now = self.ticks;
        let expiry = 2 * self.ctx.config.election_ticks as u64;
        self.held_votes.retain(|_, (at, _)| now.saturating_sub(*at) <= expiry);
        if self.held_votes.len() >= MAX_HELD_VOTE_REGIONS
            && !self.held_votes.contains_key(&env.region)
        {
            return;
        }
        let (at, held) = self.held_votes.entry(env.region).or_default();
        *at = now;
        held.retain(|e| e.from != env.from);
        held.push(env);
    }

    /// Steps the vote requests held for `region` (see `hold_vote`), now that its
    /// replica exists here.
    pub(super) fn step_held_votes(&mut self, region: RegionId) {
        let Some((_, held)) = self.held_votes.remove(&region) else { return };
        for env in held {
            if let Err(e) = self.on_envelope(env) {
                tracing::debug!(region = region.0, error = %e, "dropped a held vote request");
            }
        }
    }

    /// Steps `msg` into `region`'s replica, but a vote or a campaign it may not take
    /// now.
    fn step_message(&mut self, region: RegionId, msg: Message) -> Result<()> {
        let kind = msg.get_msg_type();
        if self.catching_up.contains_key(&region)
            && matches!(
                kind,
                MessageType::MsgRequestVote
                    | MessageType::MsgRequestPreVote
                    | MessageType::MsgTimeoutNow
            )
        {
            // No vote (and no campaign) until caught up past a cut log (H2).
            return Ok(());
        }
        let replica = self.replicas.get_mut(&region).expect("present");
        if kind == MessageType::MsgTimeoutNow && awaits_snapshot_persist(replica) {
            // A transfer waits for the installed snapshot's persist (raft-rs would panic
            // campaigning before it); `on_persisted` steps it.
            replica.snapshot.timeout_now = Some(msg);
            return Ok(());
        }
        replica.raw.step(msg)?;
        Ok(())
    }

    /// True if `env` is for a region whose replica here was destroyed, from that epoch
    /// or an older one (or with no epoch): a member that has not heard of the removal
    /// or merge yet. A newer epoch (this store added back) may create the replica again;
    /// creating it lifts the tombstone.
    fn is_below_tombstone(&self, env: &Envelope) -> bool {
        if self.replicas.contains_key(&env.region) {
            return false;
        }
        self.ctx.log.tombstone(env.region).is_some_and(|t| {
            env.epoch.is_none_or(|e| e.version <= t.version && e.conf_ver <= t.conf_ver)
        })
    }

    /// True if a message of `region`'s group, at `epoch` over `range`, may create a
    /// replica of it here (this store has none). The engine knows every region of the
    /// store, whichever core owns it; one it hosts under this id is a split child
    /// whose replica is being created. A region hosted here that the range overlaps
    /// means this store is behind: its own split (or merge) will create the region,
    /// with its data; it waits for that. Unless every such region is a prepared merge
    /// source gone from the cluster, as the epoch shows (`superseded`): a store that
    /// was cut off while a source merged, whose target split since, so that no
    /// snapshot of the target covers the source any more, but a part split from it
    /// does. That part's snapshot replaces them (`check_snapshot` decides again then);
    /// nothing else would (their groups are gone). A prepared source applied its log
    /// up to its prepare and applies nothing after it but a rollback, so no split of
    /// its own will create `region` here (a lagging replica of another kind might:
    /// only prepared sources are passed over).
    fn may_create(&self, region: RegionId, epoch: Option<Epoch>, range: &KeyRange) -> bool {
        let engine = self.ctx.engine_of(region);
        if engine.region(region).is_some() {
            return false;
        }
        let overlapping = engine.overlapping(&range.start, range.end.as_deref());
        if overlapping.is_empty() {
            return true;
        }
        let Some(epoch) = epoch else { return false };
        let new = Region {
            id: region,
            start: range.start.clone(),
            end: range.end.clone(),
            epoch,
            peers: Vec::new(),
        };
        let replaced: Vec<RegionId> = overlapping.iter().map(|old| old.id).collect();
        overlapping.iter().all(|old| {
            engine.merge_state(old.id).is_some() && self.superseded(old, &new, &replaced).is_ok()
        })
    }

    /// True if raft-rs may take the snapshot message `msg` for `region`: its checkpoint
    /// arrived whole, its data decodes, and `check_snapshot` finds it installable here.
    /// Otherwise it is dropped (the leader sends it again).
    fn may_step_snapshot(&mut self, region: RegionId, msg: &Message) -> bool {
        let meta = msg.get_snapshot().get_metadata();
        let replica = self.replicas.get_mut(&region).expect("present");
        let ready = (replica.snapshot.received.as_ref())
            .is_some_and(|r| (r.index, r.term) == (meta.index, meta.term));
        if !ready {
            // The checkpoint did not arrive whole; the leader sends again.
            tracing::debug!(
                region = region.0,
                index = meta.index,
                "snapshot message without its checkpoint"
            );
            return false;
        }
        let checked = decode_snapshot_data(&msg.get_snapshot().data)
            .map_err(|e| format!("its data does not decode: {}", e.reason))
            .and_then(|_| self.check_snapshot(region, meta.index));
        if let Err(why) = checked {
            tracing::warn!(region = region.0, index = meta.index, reason = %why, "snapshot dropped; the leader sends one again");
            let replica = self.replicas.get_mut(&region).expect("present");
            replica.snapshot.received = None;
            return false;
        }
        true
    }

    /// Creates a replica of `region`, as peer `id`, that holds nothing until its
    /// leader's snapshot arrives.
    fn create_uninitialized(&mut self, region: RegionId, id: PeerId) -> Result<()> {
        let state = LogState { first_index: 1, peer_id: id.0, ..LogState::default() };
        self.ctx.log.create_region(&mut self.write, region, state)?;
        tracing::info!(
            region = region.0,
            peer = id.0,
            "created a replica to be filled by a snapshot"
        );
        self.add_replica(ReplicaInit::awaiting_snapshot(region, id, 0))
    }

    /// Turns raft-rs's messages into envelopes, to send now or once the write persists;
    /// a snapshot message is preceded by its checkpoint's chunks.
    pub(super) fn route(&mut self, region: RegionId, messages: Vec<Message>, when: SendWhen) {
        if messages.is_empty() {
            return;
        }
        let me = self.ctx.config.store_id;
        let chunk_bytes = self.ctx.config.snapshot_chunk_bytes;
        let replica = self.replicas.get_mut(&region).expect("present");
        let initialized = replica.is_initialized();
        let epoch = initialized.then_some(replica.region.epoch);
        let range = initialized.then(|| KeyRange {
            start: replica.region.start.clone(),
            end: replica.region.end.clone(),
        });
        for msg in messages {
            let Some(to) = replica.store_of(PeerId(msg.to)) else {
                tracing::debug!(
                    region = region.0,
                    to = msg.to,
                    "no store known for peer; message dropped"
                );
                continue;
            };
            // Appended in place: one message is one envelope but for a snapshot,
            // whose chunks go first (no vector per message: with thousands of regions
            // written at random, every put routes its own messages).
            let out = match when {
                SendWhen::Now => &mut self.outbox,
                SendWhen::AfterPersist => &mut self.after_persist,
            };
            if msg.get_msg_type() == MessageType::MsgSnapshot {
                let meta = msg.get_snapshot().get_metadata();
                match &replica.snapshot.file {
                    Some(file) if file.header().applied_index == meta.index => {
                        for chunk in CheckpointChunks::new(file, chunk_bytes) {
                            out.push(Envelope {
                                region,
                                from: me,
                                to,
                                epoch,
                                range: range.clone(),
                                body: Body::SnapshotChunk(SnapshotChunk {
                                    index: meta.index,
                                    term: meta.term,
                                    offset: chunk.offset,
                                    file_bytes: chunk.file_bytes,
                                    data: chunk.data,
                                }),
                            });
                        }
                        // The follower confirms by its next append response; a lost
                        // transfer shows as a rejection and a new snapshot.
                        replica.raw.report_snapshot(msg.to, SnapshotStatus::Finish);
                    }
                    _ => {
                        replica.raw.report_snapshot(msg.to, SnapshotStatus::Failure);
                        continue;
                    }
                }
            }
            out.push(Envelope {
                region,
                from: me,
                to,
                epoch,
                range: range.clone(),
                body: Body::Raft(msg),
            });
        }
    }
}

/// The answer of a replica that holds nothing to a leader's entries: it takes its
/// region from a snapshot, never from entries (the engine hosts the region only once
/// one is installed), and a leader whose log still starts at index 1 would send
/// entries. So it rejects them with raft-rs's snapshot request.
fn ask_for_snapshot(append: &Message, me: PeerId) -> Message {
    let mut ask = Message::default();
    ask.set_msg_type(MessageType::MsgAppendResponse);
    ask.to = append.from;
    ask.from = me.0;
    ask.term = append.term;
    ask.index = append.index;
    ask.reject = true;
    ask.request_snapshot = 1;
    ask
}
