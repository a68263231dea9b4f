//! What the health monitor knows of each store: the last status report it received,
//! normalized so that every field a newer status schema added is an `Option` (absent
//! is unknown, never a default) and stamped with the monitor's own receive clock.

use std::time::Duration;

use regionkv_engine::{PeerId, Region, StoreId};

/// A replica's role as its store reported it; a role the monitor cannot name (an
/// absent role, or a code from a newer binary) is `None` in [`ObservedReplica::role`],
/// never taken for a follower.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// Leads its group.
    Leader,
    /// Follows a leader (or waits for one).
    Follower,
    /// Campaigns.
    Candidate,
    /// Campaigns before raising its term.
    PreCandidate,
}

/// A store's lifecycle as it reported it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StoreLifecycle {
    /// Takes requests.
    Serving,
    /// Shutting down.
    Stopping,
    /// Stopped on a failure of its log or engine.
    Failed,
    /// Opening: replaying its log.
    Recovering,
}

/// A region's apply stream as its replica reported it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TimelineHealth {
    /// Applies.
    Active,
    /// Stopping with its store.
    Stopping,
    /// Stopped.
    Stopped,
    /// Stopped applying on an error (a halted replica).
    Broken,
}

/// How a leader replicates to one follower.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReplicationState {
    /// Probing for the follower's log end.
    Probe,
    /// Streaming entries.
    Replicate,
    /// Sending a snapshot.
    Snapshot,
}

/// A leader's view of one follower.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObservedProgress {
    /// The follower.
    pub peer: PeerId,
    /// The highest index known replicated on it.
    pub matched: u64,
    /// How the leader replicates to it (`None`: unknown).
    pub state: Option<ReplicationState>,
    /// Heard from within the last election timeout (`None`: unknown).
    pub recent_active: Option<bool>,
    /// Ticks since the leader's store last heard from the follower's store (`None`:
    /// unknown, or never heard).
    pub ticks_since_heard: Option<u64>,
}

/// One replica as its store last reported it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObservedReplica {
    /// The region as the store knows it.
    pub region: Region,
    /// The store's peer.
    pub peer: PeerId,
    /// Its role (`None`: absent or unknown).
    pub role: Option<Role>,
    /// Its term.
    pub term: u64,
    /// The leader it knows of (`None`: it knows none).
    pub leader: Option<PeerId>,
    /// Highest index known committed.
    pub commit: u64,
    /// Highest index applied.
    pub applied: u64,
    /// True once it holds data.
    pub initialized: bool,
    /// True while its group hibernates.
    pub hibernated: bool,
    /// The log's first index (schema 2).
    pub first_index: Option<u64>,
    /// Its apply stream (schema 2).
    pub timeline: Option<TimelineHealth>,
    /// A leader's view of each follower (schema 2; `None` on a follower too).
    pub progress: Option<Vec<ObservedProgress>>,
    /// True if it is a learner (schema 2).
    pub is_learner: Option<bool>,
    /// Its image hash at an index (schema 2, once the cluster version allows it).
    pub image_hash: Option<(u64, u64)>,
    /// A leader's oldest transaction lock's age in ms, 0 if none (schema 2, from the
    /// transactions release on; `None` on a follower too).
    pub oldest_lock_age_ms: Option<u64>,
}

/// One store's last report, as the monitor received it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObservedStore {
    /// The store.
    pub store: StoreId,
    /// When the monitor received it, by the monitor's clock.
    pub received_at: Duration,
    /// The status schema the store implements (1 if it did not say).
    pub schema: u32,
    /// Its binary's version, for people.
    pub binary_version: Option<String>,
    /// The newest cluster version its binary supports.
    pub max_cluster_version: Option<u32>,
    /// Random per start of the store: a change means a restart.
    pub boot_id: Option<u64>,
    /// Numbers the store's reports within one boot.
    pub report_seq: Option<u64>,
    /// Its lifecycle.
    pub state: Option<StoreLifecycle>,
    /// Its replicas.
    pub replicas: Vec<ObservedReplica>,
}

impl ObservedStore {
    /// True if `self` (already held) must not be replaced by `newer`: the same boot and
    /// a report number not above the one held (reports may be reordered on the way).
    pub fn is_newer_than(&self, held: &ObservedStore) -> bool {
        match (self.boot_id, held.boot_id, self.report_seq, held.report_seq) {
            (Some(a), Some(b), Some(sa), Some(sb)) if a == b => sa > sb,
            _ => self.received_at >= held.received_at,
        }
    }
}
