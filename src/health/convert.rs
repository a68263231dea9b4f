//! A store's status report as the monitor takes it: every field a later status schema
//! added stays `None` when the report did not carry it.

use std::time::Duration;

use regionkv_raft::{PeerStatus, StateRole};

use super::observed::{ObservedReplica, ObservedStore, Role};
use crate::proto::StoreStatus;

/// `status`, received at monitor time `now`.
pub(crate) fn observed(status: &StoreStatus, now: Duration) -> ObservedStore {
    ObservedStore {
        store: status.store,
        received_at: now,
        schema: 1,
        binary_version: None,
        max_cluster_version: None,
        boot_id: None,
        report_seq: None,
        state: None,
        replicas: status.peers.iter().map(replica).collect(),
    }
}

fn replica(p: &PeerStatus) -> ObservedReplica {
    ObservedReplica {
        region: p.region.clone(),
        peer: p.peer,
        role: Some(match p.role {
            StateRole::Leader => Role::Leader,
            StateRole::Follower => Role::Follower,
            StateRole::Candidate => Role::Candidate,
            StateRole::PreCandidate => Role::PreCandidate,
        }),
        term: p.term,
        leader: p.leader,
        commit: p.commit,
        applied: p.applied,
        initialized: p.initialized,
        hibernated: p.hibernated,
        first_index: None,
        timeline: None,
        progress: None,
        is_learner: None,
        image_hash: None,
    }
}
