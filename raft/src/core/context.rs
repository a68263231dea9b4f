//! What a store's cores share: the [`StoreContext`] (configuration, engines, log,
//! observers), and the index and term a split child's log starts at.

use std::sync::Arc;

use regionkv_engine::{Engine, PeerId, RegionId};
use regionkv_wal::CancellationToken;

use crate::config::StoreConfig;
use crate::directory::DIRECTORY;
use crate::log::RaftLog;
use crate::metrics::WriteMetrics;

/// Sees every entry a store applies: `(region, index, term, data)`. For checkers.
pub type ApplyObserver = Box<dyn Fn(RegionId, u64, u64, &[u8]) + Send + Sync>;

/// Chooses a replica's election timeout in ticks, given its region and peer id. Lets a
/// deterministic driver replace raft-rs's thread-local randomness with a seed.
pub type ElectionTicks = Box<dyn Fn(RegionId, PeerId) -> usize + Send + Sync>;

/// Reads the wall clock: milliseconds since the Unix epoch. A leader stamps it into
/// each write that carries a session (what the region's session table goes by); apply
/// never reads it. A deterministic driver replaces it with its virtual clock.
pub type Clock = Box<dyn Fn() -> u64 + Send + Sync>;

/// Called with the region just before a scan runs, on the thread that runs it. A test
/// seam: a test holds a scan here (a gate) to see what the store does meanwhile.
pub type ScanHook = std::sync::Arc<dyn Fn(RegionId) + Send + Sync>;

/// The system clock, as a [`Clock`] reads it (0 before 1970).
pub fn system_clock_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// What a store shares between its cores and drivers.
pub struct StoreContext {
    /// How the store runs.
    pub config: StoreConfig,
    /// The store's engine: every user region.
    pub engine: Engine,
    /// The engine of the cluster directory's replica (region 0, [`DIRECTORY`]).
    pub directory: Engine,
    /// The store's Raft log.
    pub log: Arc<RaftLog>,
    /// Cancelled when the store shuts down; every timeline's token is a child.
    pub cancel: CancellationToken,
    /// Called for every applied entry, if set.
    pub apply_observer: Option<ApplyObserver>,
    /// Fixes each replica's election timeout, if set (else raft-rs randomizes it).
    pub election_ticks: Option<ElectionTicks>,
    /// The wall clock leaders stamp into writes, if set (else [`system_clock_ms`]).
    pub clock: Option<Clock>,
    /// Write-path counters of every core of the store.
    pub metrics: WriteMetrics,
    /// True if opening the WAL cut valid records (a point-in-time recovery past damage
    /// in the last group): records that may have been fsynced and acknowledged, and
    /// with them a region's latest term and vote, are gone (H2; see `StoreCore::open`).
    pub log_cut: bool,
    /// Called before every scan runs, if set (for tests: [`ScanHook`]).
    pub scan_hook: parking_lot::Mutex<Option<ScanHook>>,
    /// The cluster's active version as this store knows it (`crate::version`).
    pub cluster_version: crate::version::ClusterVersionView,
    /// Regions whose gets are answered on the caller's thread (`reader::LocalReads`).
    pub(crate) local_reads: crate::reader::LocalReads,
    /// The failure that stopped the store (the first one), if one did: a log write or
    /// an apply round that failed (see [`StoreContext::stop_on_failure`]).
    failure: parking_lot::Mutex<Option<String>>,
}

impl std::fmt::Debug for StoreContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreContext").field("store", &self.config.store_id).finish_non_exhaustive()
    }
}

/// True if opening `wal` cut valid records past damage (see [`StoreContext::log_cut`]).
pub fn wal_lost_records(wal: &regionkv_wal::Wal) -> bool {
    wal.recovery_report().truncation.as_ref().is_some_and(|t| t.dropped_records > 0)
}

impl StoreContext {
    /// A context with no observers.
    pub fn new(
        config: StoreConfig,
        engine: Engine,
        directory: Engine,
        log: Arc<RaftLog>,
        cancel: CancellationToken,
    ) -> StoreContext {
        StoreContext {
            config,
            engine,
            directory,
            log,
            cancel,
            apply_observer: None,
            election_ticks: None,
            clock: None,
            metrics: WriteMetrics::default(),
            log_cut: false,
            scan_hook: parking_lot::Mutex::new(None),
            cluster_version: crate::version::ClusterVersionView::default(),
            local_reads: crate::reader::LocalReads::default(),
            failure: parking_lot::Mutex::new(None),
        }
    }

    /// Stops the store on a failure of its log or engine: records the failure (the
    /// first one is kept, for status reports) and cancels the store.
    pub(crate) fn stop_on_failure(&self, failure: &dyn std::fmt::Display) {
        self.failure.lock().get_or_insert_with(|| failure.to_string());
        self.cancel.cancel();
    }

    /// The failure that stopped the store, if one did: the one recorded by
    /// `StoreContext::stop_on_failure`, else the one that poisoned the log or an
    /// engine.
    pub fn failure(&self) -> Option<String> {
        self.failure.lock().clone().or_else(|| {
            let poisoned = self.log.wal().failure();
            let poisoned = poisoned.or_else(|| self.engine.failure());
            poisoned.or_else(|| self.directory.failure()).map(|f| f.to_string())
        })
    }

    /// The wall clock now (ms since the Unix epoch): [`StoreContext::clock`] if set.
    pub fn now_ms(&self) -> u64 {
        self.clock.as_ref().map_or_else(system_clock_ms, |clock| clock())
    }

    /// Calls the [`ScanHook`], if one is set, for a scan of `region`.
    pub(crate) fn before_scan(&self, region: RegionId) {
        let hook = self.scan_hook.lock().clone();
        if let Some(hook) = hook {
            hook(region);
        }
    }

    /// The engine that holds `region`: the directory's for [`DIRECTORY`], else the
    /// store's.
    pub fn engine_of(&self, region: RegionId) -> &Engine {
        if region == DIRECTORY { &self.directory } else { &self.engine }
    }
}

/// The Raft index and term a region created by a split starts its log at: its log
/// begins as if entries up to this index, of this term, had been compacted (raft-rs
/// needs a non-zero starting point that no real entry of the child can have reached).
pub const RAFT_INIT_INDEX: u64 = 5;
/// See [`RAFT_INIT_INDEX`].
pub const RAFT_INIT_TERM: u64 = 5;
