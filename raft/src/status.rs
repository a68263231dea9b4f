//! What a replica reports about itself beyond the first status fields: its role as
//! reported, its timeline's state, a leader's view of each follower. The types of
//! [`PeerStatus`](crate::PeerStatus)'s later fields.
//!
//! Every enum here reserves code 0 for `Unspecified`: a code this binary does not know
//! (from a newer store), or a field an older store did not send, is unknown, never a
//! default (invariant 5, see ARCHITECTURE.md "Rules the code relies on").

use raft::StateRole;
use regionkv_engine::PeerId;

/// A replica's Raft role as it was reported. Unlike
/// [`PeerStatus::role`](crate::PeerStatus::role), which routing reads and which takes an unknown role for
/// "not leader", this keeps the unknown: a role code this binary does not know, or an
/// absent one, is [`ReportedRole::Unspecified`]. A health monitor reads this field
/// only.
///
/// The codes are those the status record carried from its first version.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum ReportedRole {
    /// Unknown: absent, or a code this binary does not know.
    #[default]
    Unspecified = 0,
    /// The group's leader in its term.
    Leader = 3,
    /// A follower.
    Follower = 1,
    /// Campaigning for leadership.
    Candidate = 2,
    /// Asking whether a campaign could win (pre-vote).
    PreCandidate = 4,
}

impl ReportedRole {
    /// The role code on the wire.
    pub fn code(self) -> u64 {
        self as u64
    }

    /// The role of a wire code; an unknown code is `Unspecified`.
    pub fn from_code(code: u64) -> ReportedRole {
        match code {
            1 => ReportedRole::Follower,
            2 => ReportedRole::Candidate,
            3 => ReportedRole::Leader,
            4 => ReportedRole::PreCandidate,
            _ => ReportedRole::Unspecified,
        }
    }

    /// The role routing acts on: an unknown role is a follower, never a leader.
    pub fn routing_role(self) -> StateRole {
        match self {
            ReportedRole::Leader => StateRole::Leader,
            ReportedRole::Candidate => StateRole::Candidate,
            ReportedRole::PreCandidate => StateRole::PreCandidate,
            ReportedRole::Follower | ReportedRole::Unspecified => StateRole::Follower,
        }
    }
}

impl From<StateRole> for ReportedRole {
    fn from(role: StateRole) -> ReportedRole {
        match role {
            StateRole::Leader => ReportedRole::Leader,
            StateRole::Follower => ReportedRole::Follower,
            StateRole::Candidate => ReportedRole::Candidate,
            StateRole::PreCandidate => ReportedRole::PreCandidate,
        }
    }
}

/// Where a replica's apply stream (its region's `Timeline`,
/// `wal/src/lifecycle/timeline.rs`) is in its life, as reported.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum TimelineState {
    /// Unknown: a code this binary does not know.
    #[default]
    Unspecified = 0,
    /// Applying.
    Active = 1,
    /// Shutting down.
    Stopping = 2,
    /// Shut down cleanly.
    Stopped = 3,
    /// Applies nothing more until the store restarts: an apply failed, or the replica
    /// halted (`Error::ReplicaHalted`).
    Broken = 4,
}

impl TimelineState {
    /// The code on the wire.
    pub fn code(self) -> u64 {
        self as u64
    }

    /// The state of a wire code; an unknown code is `Unspecified`.
    pub fn from_code(code: u64) -> TimelineState {
        match code {
            1 => TimelineState::Active,
            2 => TimelineState::Stopping,
            3 => TimelineState::Stopped,
            4 => TimelineState::Broken,
            _ => TimelineState::Unspecified,
        }
    }
}

impl From<regionkv_wal::TimelineState> for TimelineState {
    fn from(state: regionkv_wal::TimelineState) -> TimelineState {
        match state {
            regionkv_wal::TimelineState::Active => TimelineState::Active,
            regionkv_wal::TimelineState::Stopping => TimelineState::Stopping,
            regionkv_wal::TimelineState::Stopped => TimelineState::Stopped,
            regionkv_wal::TimelineState::Broken => TimelineState::Broken,
        }
    }
}

/// How a leader replicates to one follower (raft-rs's progress state).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum ProgressState {
    /// Unknown: a code this binary does not know.
    #[default]
    Unspecified = 0,
    /// The leader probes where the follower's log ends (one append per heartbeat).
    Probe = 1,
    /// The leader streams appends.
    Replicate = 2,
    /// The follower needs, or is receiving, a snapshot.
    Snapshot = 3,
}

impl ProgressState {
    /// The code on the wire.
    pub fn code(self) -> u64 {
        self as u64
    }

    /// The state of a wire code; an unknown code is `Unspecified`.
    pub fn from_code(code: u64) -> ProgressState {
        match code {
            1 => ProgressState::Probe,
            2 => ProgressState::Replicate,
            3 => ProgressState::Snapshot,
            _ => ProgressState::Unspecified,
        }
    }
}

impl From<raft::ProgressState> for ProgressState {
    fn from(state: raft::ProgressState) -> ProgressState {
        match state {
            raft::ProgressState::Probe => ProgressState::Probe,
            raft::ProgressState::Replicate => ProgressState::Replicate,
            raft::ProgressState::Snapshot => ProgressState::Snapshot,
        }
    }
}

/// How a leader sees one other member of its group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FollowerProgress {
    /// The member.
    pub peer: PeerId,
    /// The highest index the leader knows the member's log holds.
    pub matched: u64,
    /// How the leader replicates to it.
    pub state: ProgressState,
    /// raft-rs's check-quorum flag: the leader heard from the member within the last
    /// election timeout. None: unknown (an older store, or not known here).
    pub recent_active: Option<bool>,
    /// Ticks since the leader last heard from the member. None: unknown (an older
    /// store, or not known here: raft-rs does not count them, so this binary sends
    /// none).
    pub ticks_since_heard: Option<u64>,
}
