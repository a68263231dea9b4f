//! The facade's defaults table: what [`ClusterBuilder`](crate::ClusterBuilder) and
//! [`NodeConfig`](crate::NodeConfig) start from, and every wait of the facade's own.
//!
//! Settings (ticks and checkpoints are the store's own defaults, from
//! [`StoreConfig`], so a `Cluster`, a `Node` and a bare store cannot disagree):
//!
//! | setting | default | where |
//! |---|---|---|
//! | Raft tick | 50 ms (elections after 10-20 ticks) | [`TICK_INTERVAL`] = `StoreConfig::DEFAULT_TICK_INTERVAL` |
//! | checkpoint after applied log | 64 MiB | [`CHECKPOINT_LOG_BYTES`] = `StoreConfig::DEFAULT_CHECKPOINT_LOG_BYTES` |
//! | WAL segment | 64 MiB | `WalOptions::default()` |
//! | stores of a `Cluster` | 3 | [`STORES`] |
//! | poller threads per store | 1 | [`POLLERS`] |
//! | automatic split and merge | see `SplitPolicy::default` | `autosplit.rs` |
//! | replica image hash (`ComputeHash`) per awake led region, from cluster version 2 | every 10 min | [`IMAGE_HASH_INTERVAL`] = `StoreConfig::DEFAULT_IMAGE_HASH_INTERVAL` |
//!
//! Waits (each loop that uses one is bounded by it):
//!
//! | wait | default | constant |
//! |---|---|---|
//! | a `Db` call, all attempts | 10 s (`Db::with_deadline`) | [`DB_DEADLINE`] |
//! | a `Db` write, all attempts, whatever the deadline | 5 min | [`DB_WRITE_RETRY_MAX`] |
//! | one attempt of a `Db` call | 2 s | [`DB_ATTEMPT_TIMEOUT`] |
//! | pause between `Db` attempts | 1 ms, doubling up to 100 ms | [`DB_FIRST_BACKOFF`], [`DB_MAX_BACKOFF`] |
//! | one attempt of a directory command | 2 s | [`DIRECTORY_ATTEMPT_TIMEOUT`] |
//! | allocating region ids from the directory | 10 s | [`ALLOC_IDS_DEADLINE`] |
//! | a split following a region that changes under it | 10 s | [`SPLIT_DEADLINE`] |
//! | an admin request (split, merge step) finding its leader | 10 s | [`ADMIN_DEADLINE`] |
//! | one attempt of an admin request | 5 s | [`ADMIN_ATTEMPT_TIMEOUT`] |
//! | pause between attempts of the cluster driver | 20 ms | [`DRIVER_RETRY_PAUSE`] |
//! | region reports forwarded to the directory | every 100 ms | [`REPORT_INTERVAL`] |
//! | one report to the directory before it is deferred | 2 s | [`REPORT_DEADLINE`] |
//! | a node's shutdown waiting for admin requests in flight | 15 s | [`NODE_TASKS_TIMEOUT`] |
//! | one membership change of one region (store add or remove) | 30 s | [`MEMBERSHIP_DEADLINE`] |
//! | a store added to a region catching up (its snapshot) | 120 s | [`CATCH_UP_DEADLINE`] |
//!
//! The client protocol's timeouts live with it (`remote.rs`), the store's inside
//! `regionkv-raft`.

use std::time::Duration;

use regionkv_raft::StoreConfig;

/// Time between Raft ticks of a `Cluster`'s or a `Node`'s store.
pub(crate) const TICK_INTERVAL: Duration = StoreConfig::DEFAULT_TICK_INTERVAL;
/// A region is checkpointed after this many bytes of applied log.
pub(crate) const CHECKPOINT_LOG_BYTES: u64 = StoreConfig::DEFAULT_CHECKPOINT_LOG_BYTES;
/// How often each awake region a `Cluster`'s or a `Node`'s store leads hashes its
/// replicas' images (`StoreConfig::image_hash_interval`).
pub(crate) const IMAGE_HASH_INTERVAL: Duration = StoreConfig::DEFAULT_IMAGE_HASH_INTERVAL;
/// Stores of a new `Cluster`.
pub(crate) const STORES: usize = 3;
/// Poller threads per store.
pub(crate) const POLLERS: usize = 1;

/// How long a `Db` call keeps trying (all attempts).
pub(crate) const DB_DEADLINE: Duration = Duration::from_secs(10);
/// The longest a `Db` write keeps retrying, whatever its deadline: half the time a
/// region remembers a client session, so that its last retry is still recognised.
pub(crate) const DB_WRITE_RETRY_MAX: Duration =
    Duration::from_millis(regionkv_engine::SessionLimits::DEFAULT.ttl_ms / 2);
/// How long one attempt of a `Db` call waits for its store before trying elsewhere.
pub(crate) const DB_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(2);
/// The first pause between attempts of a `Db` call; it doubles each time.
pub(crate) const DB_FIRST_BACKOFF: Duration = Duration::from_millis(1);
/// The longest pause between attempts of a `Db` call.
pub(crate) const DB_MAX_BACKOFF: Duration = Duration::from_millis(100);

/// How long one attempt of a directory command waits for the directory's leader.
pub(crate) const DIRECTORY_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long allocating region ids from the directory keeps trying.
pub(crate) const ALLOC_IDS_DEADLINE: Duration = Duration::from_secs(10);
/// How long a split keeps following a region whose epoch changes under it.
pub(crate) const SPLIT_DEADLINE: Duration = Duration::from_secs(10);
/// How long an admin request keeps trying to reach its region's leader.
pub(crate) const ADMIN_DEADLINE: Duration = Duration::from_secs(10);
/// How long one attempt of an admin request waits for the leader's answer.
pub(crate) const ADMIN_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);
/// The pause between attempts of directory commands and admin requests.
pub(crate) const DRIVER_RETRY_PAUSE: Duration = Duration::from_millis(20);
/// How often the background work forwards region reports to the directory.
pub(crate) const REPORT_INTERVAL: Duration = Duration::from_millis(100);
/// How long one report to the directory keeps trying before it waits for the next turn.
pub(crate) const REPORT_DEADLINE: Duration = Duration::from_secs(2);
/// How long a node's shutdown waits for admin requests in flight.
pub(crate) const NODE_TASKS_TIMEOUT: Duration = Duration::from_secs(15);
/// How long one membership change of one region (a step of a store add or remove)
/// keeps trying.
pub(crate) const MEMBERSHIP_DEADLINE: Duration = Duration::from_secs(30);
/// How long a store added to a region may take to catch up (receive the region's
/// snapshot and apply what its leader had committed) before it is promoted.
pub(crate) const CATCH_UP_DEADLINE: Duration = Duration::from_secs(120);
