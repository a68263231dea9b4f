//! Replicas come and go (created, bootstrapped, destroyed, shut down), and the
//! store-wide upkeep that ticks run: WAL purge and engine garbage collection.

use raft::eraftpb::ConfState;
use raft::{RawNode, ReadOnlyOption};
use regionkv_engine::{Epoch, PeerId, Region, RegionId};
use regionkv_wal::Timeline;

use super::StoreCore;
use super::context::{RAFT_INIT_INDEX, RAFT_INIT_TERM};
use crate::config::{ReadMode, StoreConfig};
use crate::directory::DIRECTORY;
use crate::error::{Error, Result};
use crate::log::LogState;
use crate::logger::raft_logger;
use crate::replica::{Contents, Replica, ReplicaInit};
use crate::storage::PeerStorage;

/// Purge the WAL, and sweep the engines for versions no snapshot sees, every this many
/// ticks.
pub(super) const PURGE_EVERY_TICKS: u64 = 50;

/// Distinct keys one garbage sweep of an engine looks at. The sweep holds the engine's
/// commit lock (every core's apply waits), so it is short: about a millisecond. At the
/// default 100 ms tick a store sweeps a million keys in about five minutes.
const GC_KEYS_PER_SWEEP: usize = 16 * 1024;

/// Refuses a store configuration raft-rs would refuse for every replica, once, when
/// the store opens (rather than failing each replica as it is created).
pub(super) fn check_config(config: &StoreConfig) -> Result<()> {
    let versions = crate::version::CLUSTER_VERSION_INITIAL..=crate::version::CLUSTER_VERSION_MAX;
    if !versions.contains(&config.cluster_version_max) {
        return Err(Error::InvalidRequest(format!(
            "cluster_version_max {} is outside the versions this binary supports ({} to {}): \
             fix the store configuration",
            config.cluster_version_max,
            versions.start(),
            versions.end()
        )));
    }
    raft_config(config, PeerId(1), 0).validate().map_err(|e| {
        Error::Raft(raft::Error::ConfigInvalid(format!(
            "{e}: fix the store configuration (max_uncommitted_bytes at least \
             max_append_bytes, election_ticks above heartbeat_ticks)"
        )))
    })
}

fn raft_config(config: &StoreConfig, id: PeerId, applied: u64) -> raft::Config {
    raft::Config {
        id: id.0,
        election_tick: config.election_ticks,
        heartbeat_tick: config.heartbeat_ticks,
        applied,
        max_size_per_msg: config.max_append_bytes,
        max_inflight_msgs: config.max_inflight_appends,
        max_uncommitted_size: config.max_uncommitted_bytes,
        max_committed_size_per_ready: config.max_committed_bytes_per_ready,
        check_quorum: true,
        pre_vote: true,
        // A leader broadcasts each commit until it first hibernates; from then on its
        // client writes commit without a round of their own (see `maybe_hibernate`).
        skip_bcast_commit: false,
        read_only_option: match config.read_mode {
            ReadMode::ReadIndex => ReadOnlyOption::Safe,
            ReadMode::Lease => ReadOnlyOption::LeaseBased,
        },
        ..raft::Config::default()
    }
}

impl StoreCore {
    /// Creates the log of a region the engine hosts: it starts after the region's
    /// image (empty for a bootstrapped region; [`RAFT_INIT_INDEX`] for a split child),
    /// with the region's peers as voters.
    pub(super) fn create_log_from_engine(&mut self, region: &Region) -> Result<()> {
        let me = self.ctx.config.store_id;
        let Some(member) = region.peers.iter().find(|p| p.store == me) else {
            return Err(Error::Internal(format!(
                "region {} is hosted here but lists no peer on store {me}",
                region.id
            )));
        };
        let image = self.ctx.engine_of(region.id).image_index(region.id)?.unwrap_or(0);
        let term = match image {
            0 => 0,
            RAFT_INIT_INDEX => RAFT_INIT_TERM,
            _ => {
                return Err(Error::Internal(format!(
                    "region {} has an image at {image} but no log; restore this store from a replica",
                    region.id
                )));
            }
        };
        let mut state = LogState {
            first_index: image + 1,
            truncated_term: term,
            peer_id: member.id.0,
            conf_index: image,
            ..LogState::default()
        };
        state.conf_state.voters = region.peers.iter().map(|p| p.id.0).collect();
        state.hard_state.term = term;
        state.hard_state.commit = image;
        tracing::info!(region = region.id.0, image, "created the log of a hosted region");
        self.ctx.log.create_region(&mut self.write, region.id, state)
    }

    /// A6 (ARCHITECTURE.md, "Store identity"): installing a received snapshot makes the
    /// engine's image durable first and stages the region's new log state for the
    /// writer's next fsync; a crash in between leaves the image past the end of the
    /// log. The checkpoint's header holds what that log state says (the snapshot's
    /// term and members, `SnapshotMeta`), so the log restarts right after the image, as
    /// the install would have left it: the durable term and vote are kept (the term
    /// raised to the snapshot's if lower, with no vote then), the commit index is the
    /// image's. Returns false if the region cannot be recovered (a checkpoint without
    /// that metadata, from a leader that predates it): the region stays down with an
    /// error logged, and the rest of the store opens.
    pub(super) fn recover_interrupted_install(
        &mut self,
        region: &Region,
        image: u64,
    ) -> Result<bool> {
        let id = region.id;
        let (_, last) = self.ctx.log.bounds(id)?;
        if image <= last {
            return Ok(true);
        }
        let header = self.ctx.engine_of(id).latest_checkpoint(id)?.map(|f| f.header().clone());
        let Some((meta, old)) = header
            .filter(|h| h.applied_index == image)
            .and_then(|h| h.snapshot)
            .zip(self.ctx.log.state(id))
        else {
            tracing::error!(
                region = id.0,
                image,
                last,
                "the engine's image is past the end of the log (a crash interrupted a \
                 snapshot install) and its checkpoint does not say the snapshot's term: this \
                 replica stays down; remove it from the region and add it back"
            );
            return Ok(false);
        };
        let mut hard_state = old.hard_state.clone();
        if hard_state.term < meta.term {
            hard_state.term = meta.term;
            hard_state.vote = 0;
        }
        hard_state.commit = image;
        let mut conf_state = ConfState::default();
        conf_state.voters = meta.voters;
        conf_state.learners = meta.learners;
        let state = LogState {
            hard_state,
            conf_state,
            first_index: image + 1,
            truncated_term: meta.term,
            peer_id: old.peer_id,
            conf_index: image,
            // What the log knew beyond the image stays true: the ids its splits may no
            // longer use, and from where it may vote again.
            id_floor: old.id_floor,
            votes_from: old.votes_from,
        };
        self.ctx.log.stage_snapshot(&mut self.write, id, state)?;
        tracing::warn!(
            region = id.0,
            image,
            last,
            term = meta.term,
            "a crash interrupted a snapshot install: the region's log restarts after its image"
        );
        Ok(true)
    }

    /// Starts this store's replica of a region from `init`; its log must exist.
    pub(super) fn add_replica(&mut self, mut init: ReplicaInit) -> Result<()> {
        let region = init.region.id;
        let storage = PeerStorage::new(region, self.ctx.log.clone())?;
        let (first, last) = self.ctx.log.bounds(region)?;
        // raft-rs requires applied >= first_index - 1; a checkpoint older than the
        // compaction point would be a bug (compaction follows checkpoints).
        let applied = init.applied_index.max(first.saturating_sub(1));
        if applied > last {
            return Err(Error::Internal(format!(
                "region {region}: the engine's image is at index {applied}, past the end of the \
                 log ({last}); a crash interrupted a snapshot install: restore this store from \
                 a replica"
            )));
        }
        init.applied_index = applied;
        // An image is written at the applied index, synchronously, while the hard state
        // recording the commit index that allowed the apply is persisted with the next
        // log write: a crash in between leaves the durable commit index behind the
        // image. What was applied was committed, so the commit index moves up to it.
        if let Some(state) = self.ctx.log.state(region)
            && state.hard_state.commit < applied
        {
            let mut hs = state.hard_state;
            hs.commit = applied;
            self.ctx.log.stage(&mut self.write, region, Vec::new(), Some(&hs))?;
        }
        let mut config = raft_config(&self.ctx.config, init.id, applied);
        if let Some(choose) = &self.ctx.election_ticks {
            // One fixed timeout per replica: raft-rs draws from [min, max), so max = min + 1.
            let ticks = choose(region, init.id).max(config.heartbeat_tick + 1);
            config.min_election_tick = ticks;
            config.max_election_tick = ticks + 1;
        }
        let raw = RawNode::new(&config, storage, &raft_logger())?;
        let merge = match init.contents {
            Contents::Data => self.ctx.engine_of(region).merge_state(region),
            Contents::AwaitingSnapshot => None,
        };
        let timeline = Timeline::new(
            format!("store-{}/region-{}", self.ctx.config.store_id, region),
            &self.ctx.cancel,
        );
        self.awake.insert(region);
        self.alive_to.clear(); // found again with this replica's peers (`check_liveness`)
        self.replicas.insert(region, Box::new(Replica::new(init, raw, timeline, merge)));
        self.note_peers(region);
        self.dirty.insert(region);
        Ok(())
    }

    /// Creates a region from nothing on this store (cluster bootstrap): the engine
    /// hosts it empty, its log starts with `region.peers` as voters.
    pub fn bootstrap_region(&mut self, region: Region) -> Result<()> {
        let me = self.ctx.config.store_id;
        let member = *region.peers.iter().find(|p| p.store == me).ok_or_else(|| {
            Error::Internal(format!(
                "bootstrap of region {} that has no peer on store {me}",
                region.id
            ))
        })?;
        let mut conf_state = ConfState::default();
        conf_state.voters = region.peers.iter().map(|p| p.id.0).collect();
        if let Some(existing) = self.replicas.get(&region.id) {
            // A store of a new cluster that is bootstrapped after its peers may have
            // heard from them first: their vote requests created a replica here that
            // holds nothing (`create_uninitialized`; it may have voted). It becomes the
            // bootstrapped replica in place, keeping its term and vote; left waiting for
            // a snapshot, it never got one when no member was bootstrapped enough to
            // commit (the leader makes a snapshot only of an applied index).
            let empty = !existing.is_initialized()
                && existing.id == member.id
                && self
                    .ctx
                    .log
                    .bounds(region.id)
                    .is_ok_and(|(first, last)| first == 1 && last == 0);
            if !empty {
                return Err(Error::RegionExists { region: region.id });
            }
            self.ctx.engine_of(region.id).insert_region(region.clone())?;
            self.ctx.log.stage_conf_state(&mut self.write, region.id, conf_state, 0)?;
            tracing::info!(
                region = region.id.0,
                peer = member.id.0,
                "bootstrapped a region into the empty replica another store's message created"
            );
        } else {
            let state = LogState {
                first_index: 1,
                conf_state,
                peer_id: member.id.0,
                ..LogState::default()
            };
            // Refused before the engine hosts anything (a retried bootstrap).
            if self.ctx.log.state(region.id).is_some() {
                return Err(Error::RegionExists { region: region.id });
            }
            self.ctx.engine_of(region.id).insert_region(region.clone())?;
            self.ctx.log.create_region(&mut self.write, region.id, state)?;
        }
        self.add_replica(ReplicaInit {
            region,
            contents: Contents::Data,
            id: member.id,
            applied_index: 0,
            conf_index: 0,
        })
    }

    /// Removes a replica that a membership change removed.
    pub(super) fn destroy(&mut self, region: RegionId) -> Result<()> {
        self.destroy_gone_at(region, None)
    }

    /// Removes a replica; its tombstone holds `gone_at`, the epoch of the region at
    /// which another store found it removed (`Body::Gone`, `messages.rs`), or else its
    /// own epoch.
    pub(super) fn destroy_gone_at(
        &mut self,
        region: RegionId,
        gone_at: Option<Epoch>,
    ) -> Result<()> {
        let Some(mut replica) = self.replicas.remove(&region) else { return Ok(()) };
        self.awake.remove(&region);
        self.ctx.sources.remove(region);
        self.note_peers(region);
        replica.fail_all(|| Error::RegionNotFound { region });
        // A merged source is gone from the engine already.
        let engine = self.ctx.engine_of(region);
        if replica.is_initialized() && engine.region(region).is_some() {
            engine.remove_region(region)?;
        }
        // The tombstone keeps the epoch of the replica destroyed (none for one that held
        // nothing): messages of that epoch or older never create it again.
        let epoch = replica.is_initialized().then(|| gone_at.unwrap_or(replica.region.epoch));
        self.ctx.log.stage_tombstone(&mut self.write, region, epoch);
        tracing::info!(region = region.0, ?epoch, "removed this store's replica");
        Ok(())
    }

    /// Plans a WAL purge: stages state rewrites for idle regions, and purges what the
    /// plan allows now.
    pub(super) fn plan_purge(&mut self) {
        let plan = self.ctx.log.purge_plan();
        for region in &plan.rewrite {
            if self.replicas.contains_key(region) {
                let _ = self.ctx.log.stage_state_rewrite(&mut self.write, *region);
            }
        }
        self.ctx.log.stage_tombstone_rewrites(&mut self.write, &plan, &self.owns);
        match self.ctx.log.purge(&plan) {
            Ok(0) => {}
            Ok(n) => {
                tracing::debug!(segments = n, below = %plan.purge_below, "purged WAL segments");
            }
            Err(e) => tracing::warn!(error = %e, "WAL purge failed; will retry"),
        }
    }

    /// Drops versions no snapshot can see any more from the store's engines, a bounded
    /// part of the key space per call (each call goes on where the last stopped).
    /// Commits drop what they shadow only when no snapshot needs it; versions a
    /// snapshot held at the time stay until a sweep, and a key that is not written
    /// again gets no other. One core per store sweeps: the one that owns the
    /// directory's region (the engines are shared by every core of the store).
    pub(super) fn collect_garbage(&self) {
        if !(self.owns)(DIRECTORY) {
            return;
        }
        for engine in [&self.ctx.engine, &self.ctx.directory] {
            let swept = engine.gc(GC_KEYS_PER_SWEEP);
            if swept.bytes_freed > 0 {
                tracing::debug!(
                    keys = swept.keys,
                    bytes = swept.bytes_freed,
                    "dropped old versions"
                );
            }
        }
    }

    /// Stops every replica: fails what waits with `Cancelled` (proposals in flight with
    /// `CancelledInFlight`), shuts timelines down.
    pub fn shutdown(&mut self, timeout: std::time::Duration) {
        for replica in self.replicas.values_mut() {
            replica.fail_all(|| Error::Cancelled);
            if let Err(e) = replica.timeline.shutdown(timeout, || Ok(())) {
                tracing::warn!(error = %e, "timeline did not shut down cleanly");
            }
        }
    }
}
