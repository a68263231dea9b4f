//! [`PeerStorage`]: raft-rs's view of one region's log on this store.

use std::sync::Arc;

use parking_lot::Mutex;
use raft::eraftpb::{Entry, Snapshot};
use raft::{GetEntriesContext, RaftState, StorageError};
use regionkv_engine::RegionId;

use crate::error::Error;
use crate::log::{RaftLog, RegionHandle};

/// What raft-rs reads when it asks for a snapshot of this peer.
#[derive(Debug, Default)]
pub(crate) struct SnapshotSlot {
    /// The latest snapshot prepared for sending (metadata; the data is a checkpoint
    /// streamed separately), if any.
    pub ready: Option<Snapshot>,
    /// Set when raft-rs asked for a snapshot newer than the ready one: the peer
    /// prepares one on its next turn.
    pub wanted: Option<u64>,
}

/// One region's log as raft-rs sees it: a handle on the store's [`RaftLog`].
#[derive(Clone, Debug)]
pub struct PeerStorage {
    region: RegionId,
    log: Arc<RaftLog>,
    handle: RegionHandle,
    snapshot: Arc<Mutex<SnapshotSlot>>,
}

impl PeerStorage {
    /// The storage of `region`, whose log must exist.
    pub(crate) fn new(region: RegionId, log: Arc<RaftLog>) -> Result<PeerStorage, Error> {
        let handle = log.handle(region)?;
        Ok(PeerStorage { region, log, handle, snapshot: Arc::default() })
    }

    pub(crate) fn snapshot_slot(&self) -> &Arc<Mutex<SnapshotSlot>> {
        &self.snapshot
    }

    /// The handle on this region's log (staging through it skips the store's table
    /// of regions).
    pub(crate) fn handle(&self) -> &RegionHandle {
        &self.handle
    }
}

fn to_raft(e: Error) -> raft::Error {
    match e {
        Error::Compacted { .. } => raft::Error::Store(StorageError::Compacted),
        Error::EntryUnavailable { .. } => raft::Error::Store(StorageError::Unavailable),
        other => raft::Error::Store(StorageError::Other(Box::new(other))),
    }
}

impl raft::Storage for PeerStorage {
    fn initial_state(&self) -> raft::Result<RaftState> {
        let state = self
            .log
            .state(self.region)
            .ok_or_else(|| to_raft(Error::RegionNotFound { region: self.region }))?;
        Ok(RaftState { hard_state: state.hard_state, conf_state: state.conf_state })
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        self.log.entries_in(&self.handle, low, high, max_size.into()).map_err(to_raft)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        RaftLog::term_in(&self.handle, idx).map_err(to_raft)
    }

    fn first_index(&self) -> raft::Result<u64> {
        RaftLog::bounds_in(&self.handle).map(|(first, _)| first).map_err(to_raft)
    }

    fn last_index(&self) -> raft::Result<u64> {
        RaftLog::bounds_in(&self.handle).map(|(_, last)| last).map_err(to_raft)
    }

    fn snapshot(&self, request_index: u64, to: u64) -> raft::Result<Snapshot> {
        let mut slot = self.snapshot.lock();
        // A snapshot made before `to` was added does not list it: raft-rs on `to` would
        // ignore it, again and again. A new one is made.
        let lists = |snap: &Snapshot| {
            let cs = snap.get_metadata().get_conf_state();
            cs.voters.contains(&to) || cs.learners.contains(&to)
        };
        match &slot.ready {
            Some(snap) if snap.get_metadata().index >= request_index && lists(snap) => {
                Ok(snap.clone())
            }
            _ => {
                slot.wanted = Some(request_index);
                Err(raft::Error::Store(StorageError::SnapshotTemporarilyUnavailable))
            }
        }
    }
}
