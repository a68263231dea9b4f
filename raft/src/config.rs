//! Store configuration.

use std::time::Duration;

use regionkv_engine::StoreId;

use crate::log::RaftLogOptions;

/// How reads are confirmed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ReadMode {
    /// `ReadIndex`: the leader confirms with a quorum that it still leads before serving
    /// a read at its commit index. Linearizable with no clock assumption (the default).
    #[default]
    ReadIndex,
    /// Lease: the leader serves reads without a round trip while its lease lasts. This
    /// assumes that clocks on the stores drift by less than the lease margin (raft-rs
    /// uses the election timeout, so drift must stay well below it), and that a paused
    /// process cannot wake up believing its old lease is still valid.
    Lease,
}

/// How one store runs.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct StoreConfig {
    /// This store's id.
    pub store_id: StoreId,
    /// Time between ticks of every Raft group.
    pub tick_interval: Duration,
    /// Ticks without hearing from a leader before a follower campaigns (raft-rs
    /// randomizes in `[election_ticks, 2 * election_ticks)`).
    pub election_ticks: usize,
    /// Ticks between a leader's heartbeats.
    pub heartbeat_ticks: usize,
    /// Most bytes of client writes batched into one Raft entry.
    pub max_entry_bytes: usize,
    /// Most bytes of entries in one append message.
    pub max_append_bytes: u64,
    /// Most append messages in flight to one follower.
    pub max_inflight_appends: usize,
    /// A region is checkpointed (and its log compacted) once this many bytes of entries
    /// were applied since its last checkpoint.
    pub checkpoint_log_bytes: u64,
    /// Snapshots stream checkpoints in chunks of this size.
    pub snapshot_chunk_bytes: usize,
    /// How reads are confirmed.
    pub read_mode: ReadMode,
    /// Bounds of the Raft log's entry cache.
    pub log: RaftLogOptions,
    /// Let idle regions hibernate: a leader whose group is quiescent (every replica
    /// holds and committed the whole log) stops ticking and sending heartbeats at its
    /// first idle tick, and so do its followers, until a request or a message wakes
    /// them; stores tell each other they are alive so that the followers of a leader
    /// on a silent store wake and elect. Default on. Ignored under
    /// [`ReadMode::Lease`]: a leader that does not tick never notices it lost its
    /// quorum, so its lease would never end.
    pub hibernate_regions: bool,
}

impl StoreConfig {
    /// Defaults for store `store_id`: 100 ms ticks, a 1–2 s election timeout.
    pub fn new(store_id: StoreId) -> StoreConfig {
        StoreConfig {
            store_id,
            tick_interval: Duration::from_millis(100),
            election_ticks: 10,
            heartbeat_ticks: 2,
            max_entry_bytes: 1 << 20,
            max_append_bytes: 1 << 20,
            max_inflight_appends: 256,
            checkpoint_log_bytes: 64 << 20,
            snapshot_chunk_bytes: 1 << 20,
            read_mode: ReadMode::ReadIndex,
            log: RaftLogOptions::default(),
            hibernate_regions: true,
        }
    }

    /// Sets [`StoreConfig::tick_interval`].
    #[must_use]
    pub fn tick_interval(mut self, interval: Duration) -> Self {
        self.tick_interval = interval;
        self
    }

    /// Sets [`StoreConfig::checkpoint_log_bytes`].
    #[must_use]
    pub fn checkpoint_log_bytes(mut self, bytes: u64) -> Self {
        self.checkpoint_log_bytes = bytes;
        self
    }

    /// Sets [`StoreConfig::read_mode`].
    #[must_use]
    pub fn read_mode(mut self, mode: ReadMode) -> Self {
        self.read_mode = mode;
        self
    }

    /// Sets [`StoreConfig::snapshot_chunk_bytes`].
    #[must_use]
    pub fn snapshot_chunk_bytes(mut self, bytes: usize) -> Self {
        self.snapshot_chunk_bytes = bytes;
        self
    }
}
