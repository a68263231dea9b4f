//! A store's status report as the monitor takes it: every field a later status schema
//! added stays `None` when the report did not carry it, and a role or state code the
//! monitor cannot name stays unknown (never coerced to a follower).

use std::time::Duration;

use regionkv_raft::{FollowerProgress, PeerStatus, ProgressState, ReportedRole, TimelineState};

use super::observed::{
    ObservedProgress, ObservedReplica, ObservedStore, ReplicationState, Role, StoreLifecycle,
    TimelineHealth,
};
use crate::proto::{StoreState, StoreStatus};

/// `status`, received at monitor time `now`.
pub(crate) fn observed(status: &StoreStatus, now: Duration) -> ObservedStore {
    ObservedStore {
        store: status.store,
        received_at: now,
        schema: status.status_schema.unwrap_or(1),
        binary_version: status.binary_version.clone(),
        max_cluster_version: None,
        boot_id: status.boot_id,
        report_seq: status.report_seq,
        state: status.store_state.and_then(|s| match s {
            StoreState::Serving => Some(StoreLifecycle::Serving),
            StoreState::Stopping => Some(StoreLifecycle::Stopping),
            StoreState::Failed => Some(StoreLifecycle::Failed),
            StoreState::Recovering => Some(StoreLifecycle::Recovering),
            StoreState::Unspecified => None,
        }),
        replicas: status.peers.iter().map(replica).collect(),
    }
}

fn replica(p: &PeerStatus) -> ObservedReplica {
    ObservedReplica {
        region: p.region.clone(),
        peer: p.peer,
        role: match p.reported_role {
            ReportedRole::Leader => Some(Role::Leader),
            ReportedRole::Follower => Some(Role::Follower),
            ReportedRole::Candidate => Some(Role::Candidate),
            ReportedRole::PreCandidate => Some(Role::PreCandidate),
            ReportedRole::Unspecified => None,
        },
        term: p.term,
        leader: p.leader,
        commit: p.commit,
        applied: p.applied,
        initialized: p.initialized,
        hibernated: p.hibernated,
        first_index: p.first_index,
        timeline: p.timeline.and_then(|t| match t {
            TimelineState::Active => Some(TimelineHealth::Active),
            TimelineState::Stopping => Some(TimelineHealth::Stopping),
            TimelineState::Stopped => Some(TimelineHealth::Stopped),
            TimelineState::Broken => Some(TimelineHealth::Broken),
            TimelineState::Unspecified => None,
        }),
        progress: p.progress.as_ref().map(|ps| ps.iter().map(progress).collect()),
        is_learner: p.is_learner,
        image_hash: p.image_hash,
        oldest_lock_age_ms: p.oldest_lock_age_ms,
    }
}

fn progress(f: &FollowerProgress) -> ObservedProgress {
    ObservedProgress {
        peer: f.peer,
        matched: f.matched,
        state: match f.state {
            ProgressState::Probe => Some(ReplicationState::Probe),
            ProgressState::Replicate => Some(ReplicationState::Replicate),
            ProgressState::Snapshot => Some(ReplicationState::Snapshot),
            ProgressState::Unspecified => None,
        },
        recent_active: f.recent_active,
        ticks_since_heard: f.ticks_since_heard,
    }
}
