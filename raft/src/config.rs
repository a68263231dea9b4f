//! Store configuration: [`StoreConfig`], with the defaults table of every store knob
//! (the facade's `Cluster` and `Node` start from the same constants).

use std::time::Duration;

use regionkv_engine::StoreId;

use crate::log::RaftLogOptions;
use crate::version::CLUSTER_VERSION_MAX;

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
    /// process cannot wake up believing its old lease is still valid. Regions never
    /// hibernate in this mode ([`StoreConfig::hibernate_regions`] is ignored).
    Lease,
}

/// How one store runs.
///
/// The defaults, one constant each (the facade's `Cluster` and `Node` start from the
/// same constants, so that they cannot disagree with a bare store):
///
/// | knob | default | constant |
/// |---|---|---|
/// | [`tick_interval`](Self::tick_interval) | 50 ms | [`DEFAULT_TICK_INTERVAL`](Self::DEFAULT_TICK_INTERVAL) |
/// | [`election_ticks`](Self::election_ticks) | 10 ticks (an election timeout of 0.5-1 s) | [`DEFAULT_ELECTION_TICKS`](Self::DEFAULT_ELECTION_TICKS) |
/// | [`heartbeat_ticks`](Self::heartbeat_ticks) | 2 ticks (100 ms) | [`DEFAULT_HEARTBEAT_TICKS`](Self::DEFAULT_HEARTBEAT_TICKS) |
/// | [`max_entry_bytes`](Self::max_entry_bytes) | 1 MiB | [`DEFAULT_MAX_ENTRY_BYTES`](Self::DEFAULT_MAX_ENTRY_BYTES) |
/// | [`max_append_bytes`](Self::max_append_bytes) | 1 MiB | [`DEFAULT_MAX_APPEND_BYTES`](Self::DEFAULT_MAX_APPEND_BYTES) |
/// | [`max_inflight_appends`](Self::max_inflight_appends) | 256 | [`DEFAULT_MAX_INFLIGHT_APPENDS`](Self::DEFAULT_MAX_INFLIGHT_APPENDS) |
/// | [`max_uncommitted_bytes`](Self::max_uncommitted_bytes) | 32 MiB | [`DEFAULT_MAX_UNCOMMITTED_BYTES`](Self::DEFAULT_MAX_UNCOMMITTED_BYTES) |
/// | [`max_committed_bytes_per_ready`](Self::max_committed_bytes_per_ready) | 16 MiB | [`DEFAULT_MAX_COMMITTED_BYTES_PER_READY`](Self::DEFAULT_MAX_COMMITTED_BYTES_PER_READY) |
/// | [`checkpoint_log_bytes`](Self::checkpoint_log_bytes) | 64 MiB | [`DEFAULT_CHECKPOINT_LOG_BYTES`](Self::DEFAULT_CHECKPOINT_LOG_BYTES) |
/// | [`snapshot_chunk_bytes`](Self::snapshot_chunk_bytes) | 1 MiB | [`DEFAULT_SNAPSHOT_CHUNK_BYTES`](Self::DEFAULT_SNAPSHOT_CHUNK_BYTES) |
/// | [`scan_rows_max`](Self::scan_rows_max) | 10,000 rows | [`DEFAULT_SCAN_ROWS_MAX`](Self::DEFAULT_SCAN_ROWS_MAX) |
/// | [`scan_bytes_max`](Self::scan_bytes_max) | 4 MiB | [`DEFAULT_SCAN_BYTES_MAX`](Self::DEFAULT_SCAN_BYTES_MAX) |
/// | [`read_mode`](Self::read_mode) | [`ReadMode::ReadIndex`] | |
/// | [`log`](Self::log) | [`RaftLogOptions::default`] | |
/// | [`hibernate_regions`](Self::hibernate_regions) | on (never under [`ReadMode::Lease`]) | |
/// | [`image_hash_interval`](Self::image_hash_interval) | off (a `Cluster` or `Node`: 10 min) | [`DEFAULT_IMAGE_HASH_INTERVAL`](Self::DEFAULT_IMAGE_HASH_INTERVAL) |
/// | [`cluster_version_max`](Self::cluster_version_max) | [`CLUSTER_VERSION_MAX`] | |
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
    /// Most bytes of entries a leader holds proposed but not committed (raft-rs's
    /// `max_uncommitted_size`): past it, proposals are dropped (retryable) until the
    /// group commits ([`DropReason::UncommittedLimit`](crate::DropReason::UncommittedLimit)).
    /// Bounds what a leader stages while its disk or its followers lag. At least
    /// [`max_append_bytes`](Self::max_append_bytes) (raft-rs refuses less).
    pub max_uncommitted_bytes: u64,
    /// Most bytes of committed entries handed to apply in one ready (raft-rs's
    /// `max_committed_size_per_ready`); the rest come in the next ready.
    pub max_committed_bytes_per_ready: u64,
    /// A region is checkpointed (and its log compacted) once this many bytes of entries
    /// were applied since its last checkpoint.
    pub checkpoint_log_bytes: u64,
    /// Snapshots stream checkpoints in chunks of this size.
    pub snapshot_chunk_bytes: usize,
    /// Most rows one scan answers, whatever its limit: a scan that reaches it stops
    /// and says where to resume ([`Page::resume`](crate::Page::resume)); the client
    /// asks again from there.
    pub scan_rows_max: usize,
    /// Most bytes (keys plus values) one scan answers, whatever its limit: the scan
    /// stops before the row that would cross it (a first row is always answered, so
    /// a scan moves on) and says where to resume.
    pub scan_bytes_max: usize,
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
    /// quorum, so its lease would never end. So `true` means "hibernate when the read
    /// mode allows it"; with `ReadMode::Lease` no region ever hibernates, whatever this
    /// says.
    pub hibernate_regions: bool,
    /// How often the leader of each awake region proposes a `ComputeHash` (every
    /// replica hashes its image at that index: `PeerStatus::image_hash`), staggered by
    /// region, and only while the cluster version allows it (`version::IMAGE_HASH`).
    /// A hibernating region is not woken for it. `None` (the default of a bare store):
    /// never; the facade's `Cluster` and `Node` use
    /// [`DEFAULT_IMAGE_HASH_INTERVAL`](Self::DEFAULT_IMAGE_HASH_INTERVAL).
    pub image_hash_interval: Option<Duration>,
    /// The newest cluster version this store runs at (`crate::version`): what it
    /// reports as its supported maximum (a finalize waits for every store's), what
    /// its replicas halt above, and the versions of the command kinds it knows (a kind
    /// introduced later is one it does not know). [`CLUSTER_VERSION_MAX`] by default;
    /// lower only to run a store as an older binary would (tests, the simulator).
    /// Between [`CLUSTER_VERSION_INITIAL`](crate::version::CLUSTER_VERSION_INITIAL) and
    /// [`CLUSTER_VERSION_MAX`].
    pub cluster_version_max: u32,
    /// Bytes of data (keys and values written) one write-batch round of an apply pass
    /// takes before it is cut and the pass goes on in a fresh round; `None` (the
    /// default): the engine's `max_round_bytes`. A write is never cut in two, nor is
    /// one key's resolve. Lower only to cut rounds often (the simulator's
    /// `SimConfig::round_bytes`): what is applied must not depend on where the cuts fall.
    pub apply_round_bytes: Option<usize>,
}

impl StoreConfig {
    /// The caps of one scan on this store.
    pub fn scan_caps(&self) -> crate::request::ScanCaps {
        crate::request::ScanCaps { rows_max: self.scan_rows_max, bytes_max: self.scan_bytes_max }
    }

    /// The facade's [`StoreConfig::image_hash_interval`]: 10 minutes per region.
    pub const DEFAULT_IMAGE_HASH_INTERVAL: Duration = Duration::from_secs(600);
    /// Default [`StoreConfig::tick_interval`].
    pub const DEFAULT_TICK_INTERVAL: Duration = Duration::from_millis(50);
    /// Default [`StoreConfig::election_ticks`].
    pub const DEFAULT_ELECTION_TICKS: usize = 10;
    /// Default [`StoreConfig::heartbeat_ticks`].
    pub const DEFAULT_HEARTBEAT_TICKS: usize = 2;
    /// Default [`StoreConfig::max_entry_bytes`].
    pub const DEFAULT_MAX_ENTRY_BYTES: usize = 1 << 20;
    /// Default [`StoreConfig::max_append_bytes`].
    pub const DEFAULT_MAX_APPEND_BYTES: u64 = 1 << 20;
    /// Default [`StoreConfig::max_inflight_appends`].
    pub const DEFAULT_MAX_INFLIGHT_APPENDS: usize = 256;
    /// Default [`StoreConfig::max_uncommitted_bytes`]: half the default WAL record
    /// limit (64 MiB segments).
    pub const DEFAULT_MAX_UNCOMMITTED_BYTES: u64 = 32 << 20;
    /// Default [`StoreConfig::max_committed_bytes_per_ready`].
    pub const DEFAULT_MAX_COMMITTED_BYTES_PER_READY: u64 = 16 << 20;
    /// Default [`StoreConfig::checkpoint_log_bytes`].
    pub const DEFAULT_CHECKPOINT_LOG_BYTES: u64 = 64 << 20;
    /// Default [`StoreConfig::snapshot_chunk_bytes`].
    pub const DEFAULT_SNAPSHOT_CHUNK_BYTES: usize = 1 << 20;
    /// Default [`StoreConfig::scan_rows_max`]: a page of 10,000 rows.
    pub const DEFAULT_SCAN_ROWS_MAX: usize = 10_000;
    /// Default [`StoreConfig::scan_bytes_max`]: 4 MiB, far below the client
    /// protocol's 64 MiB response bound even with the framing of 10,000 rows.
    pub const DEFAULT_SCAN_BYTES_MAX: usize = 4 << 20;

    /// The defaults of the table above for store `store_id`.
    pub fn new(store_id: StoreId) -> StoreConfig {
        StoreConfig {
            store_id,
            tick_interval: Self::DEFAULT_TICK_INTERVAL,
            election_ticks: Self::DEFAULT_ELECTION_TICKS,
            heartbeat_ticks: Self::DEFAULT_HEARTBEAT_TICKS,
            max_entry_bytes: Self::DEFAULT_MAX_ENTRY_BYTES,
            max_append_bytes: Self::DEFAULT_MAX_APPEND_BYTES,
            max_inflight_appends: Self::DEFAULT_MAX_INFLIGHT_APPENDS,
            max_uncommitted_bytes: Self::DEFAULT_MAX_UNCOMMITTED_BYTES,
            max_committed_bytes_per_ready: Self::DEFAULT_MAX_COMMITTED_BYTES_PER_READY,
            checkpoint_log_bytes: Self::DEFAULT_CHECKPOINT_LOG_BYTES,
            snapshot_chunk_bytes: Self::DEFAULT_SNAPSHOT_CHUNK_BYTES,
            scan_rows_max: Self::DEFAULT_SCAN_ROWS_MAX,
            scan_bytes_max: Self::DEFAULT_SCAN_BYTES_MAX,
            read_mode: ReadMode::ReadIndex,
            log: RaftLogOptions::default(),
            hibernate_regions: true,
            image_hash_interval: None,
            cluster_version_max: CLUSTER_VERSION_MAX,
            apply_round_bytes: None,
        }
    }

    /// Sets [`StoreConfig::image_hash_interval`].
    #[must_use]
    pub fn image_hash_interval(mut self, interval: Option<Duration>) -> Self {
        self.image_hash_interval = interval;
        self
    }

    /// [`StoreConfig::image_hash_interval`] in ticks (at least one), if set.
    pub(crate) fn image_hash_ticks(&self) -> Option<u64> {
        let tick = self.tick_interval.as_nanos().max(1);
        self.image_hash_interval
            .map(|i| u64::try_from(i.as_nanos() / tick).unwrap_or(u64::MAX).max(1))
    }

    /// Sets [`StoreConfig::cluster_version_max`].
    #[must_use]
    pub fn cluster_version_max(mut self, version: u32) -> Self {
        self.cluster_version_max = version;
        self
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
