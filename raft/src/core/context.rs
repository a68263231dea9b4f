//! What a store's cores share: the [`StoreContext`] (configuration, engines, log,
//! observers), and the index and term a split child's log starts at.

use std::sync::Arc;

use regionkv_engine::{Engine, PeerId, RegionId};
use regionkv_wal::CancellationToken;

use crate::config::StoreConfig;
use crate::directory::DIRECTORY;
use crate::error::{Error, Result};
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
    /// The cluster's active version as this store knows it (`crate::version`). Raise
    /// it with [`StoreContext::learn_cluster_version`], which persists it first.
    pub cluster_version: crate::version::ClusterVersionView,
    /// Held while the learned version is persisted, so that writes of it never go
    /// back.
    version_persist: parking_lot::Mutex<()>,
    /// Regions whose gets are answered on the caller's thread (`reader::LocalReads`).
    pub(crate) local_reads: crate::reader::LocalReads,
    /// Each region's applied index, role and writes not applied, for duplication's
    /// readers off the poller (`dup_source`).
    pub(crate) sources: crate::dup_source::SourceWatches,
    /// Each region's max read timestamp and one-phase commits in flight
    /// (`txn::concurrency`).
    pub(crate) concurrency: crate::txn::concurrency::Concurrency,
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
            version_persist: parking_lot::Mutex::new(()),
            local_reads: crate::reader::LocalReads::default(),
            sources: crate::dup_source::SourceWatches::default(),
            concurrency: crate::txn::concurrency::Concurrency::default(),
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

    /// Loads the cluster version this store learned before (persisted in its
    /// engine's manifest) and the one its directory replica holds, if it hosts one,
    /// into [`StoreContext::cluster_version`]. Call once, before the store's cores
    /// open. Refuses ([`Error::StoreVersionTooNew`]) a store that ran at a version
    /// above its configured [`StoreConfig::cluster_version_max`]: an older binary
    /// must not run it.
    pub fn open_cluster_version(&self) -> Result<()> {
        let supported = self.config.cluster_version_max;
        if let Some(state) = self.engine.task_state(CLUSTER_VERSION_TASK) {
            let ran = decode_learned(&state).ok_or_else(|| {
                Error::Internal(
                    "the cluster version this store persisted does not decode (a newer \
                     binary's format?): run a newer binary"
                        .into(),
                )
            })?;
            if ran > supported {
                return Err(Error::StoreVersionTooNew { ran, supported });
            }
            self.cluster_version.learn(ran);
        }
        if self.directory.region(DIRECTORY).is_some() {
            let held = crate::directory::cluster_version(&self.directory.read_view())?.active;
            if held > supported {
                return Err(Error::StoreVersionTooNew { ran: held, supported });
            }
            self.learn_cluster_version(held)?;
        }
        Ok(())
    }

    /// Learns that the cluster runs at `active` (or newer): persists it in the store's
    /// manifest first (a restart never goes back, and an older binary refuses the
    /// store), then raises [`StoreContext::cluster_version`]. True if the view moved;
    /// a version at or below it changes nothing. An I/O failure is the engine's
    /// (poisoned).
    pub fn learn_cluster_version(&self, active: u32) -> Result<bool> {
        let _one = self.version_persist.lock();
        if active <= self.cluster_version.active() {
            return Ok(false);
        }
        self.engine.set_task_state(CLUSTER_VERSION_TASK, Some(encode_learned(active)))?;
        self.cluster_version.learn(active);
        let supported = self.config.cluster_version_max;
        if active > supported {
            tracing::error!(
                store = self.config.store_id.0,
                active,
                supported,
                "the cluster runs at a version this binary does not support: upgrade this store"
            );
        } else {
            tracing::info!(store = self.config.store_id.0, active, "learned the cluster version");
        }
        Ok(true)
    }

    /// The engine that holds `region`: the directory's for [`DIRECTORY`], else the
    /// store's.
    pub fn engine_of(&self, region: RegionId) -> &Engine {
        if region == DIRECTORY { &self.directory } else { &self.engine }
    }
}

/// The name of the store's learned cluster version in its engine's manifest (a task
/// state: the manifest is versioned, checksummed and written durably, so this needs
/// no file of its own). Its value:
///
/// ```text
///  | format u8 = 1 | TLV: 1 version (u64, at most u32::MAX) |
/// ```
const CLUSTER_VERSION_TASK: &str = "cluster-version";
const LEARNED_FORMAT: u8 = 1;
const LEARNED_VERSION: u16 = 1;

fn encode_learned(version: u32) -> Vec<u8> {
    let mut out = vec![LEARNED_FORMAT];
    regionkv_engine::codec::put_u64(&mut out, LEARNED_VERSION, u64::from(version));
    out
}

/// The persisted version, or `None` if it does not decode (a newer format).
fn decode_learned(buf: &[u8]) -> Option<u32> {
    use regionkv_engine::codec::{TlvRecord, UnknownTags};
    let (&format, body) = buf.split_first()?;
    if format != LEARNED_FORMAT {
        return None;
    }
    let rec = TlvRecord::parse(body, &[LEARNED_VERSION], UnknownTags::Skip).ok()?;
    u32::try_from(rec.required(LEARNED_VERSION, "version").ok()?.as_u64().ok()?).ok()
}

/// The Raft index and term a region created by a split starts its log at: its log
/// begins as if entries up to this index, of this term, had been compacted (raft-rs
/// needs a non-zero starting point that no real entry of the child can have reached).
pub const RAFT_INIT_INDEX: u64 = 5;
/// See [`RAFT_INIT_INDEX`].
pub const RAFT_INIT_TERM: u64 = 5;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_learned_version_round_trips_and_garbage_is_refused() {
        for v in [1, 2, u32::MAX] {
            assert_eq!(decode_learned(&encode_learned(v)), Some(v));
        }
        let buf = encode_learned(7);
        for i in 0..buf.len() {
            let _ = decode_learned(&buf[..i]);
            let mut flipped = buf.clone();
            flipped[i] ^= 0x41;
            let _ = decode_learned(&flipped);
        }
        assert_eq!(decode_learned(&[2, 0]), None);
    }
}
