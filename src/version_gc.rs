//! The version GC driver (ARCHITECTURE.md, "Version GC"): one per store, run by the
//! transaction daemon's thread (`crate::txn_recovery::TxnDaemon`) every
//! [`GC_INTERVAL`], on the regions its store leads.
//!
//! A turn: (1) the cluster version includes `TXN_V2` (4) and the store is not
//! stopping, else it defers; (2) the safepoint proposed is the oracle's timestamp
//! minus the GC life time ([`GC_LIFE_TIME`], 10 minutes by default), raised in the
//! directory (`DirCmd::SetGcSafepoint`, never lowered: the answer is the one held);
//! (3) each region led here whose GC floor is below the safepoint is planned from the
//! store's own engine (`regionkv_raft::txn::gc::plan`) and its chunks proposed in
//! order (`TxnCmd::CollectVersions`); a chunk that fails ends that region's turn (the
//! next turn plans again: a chunk applied twice deletes nothing more).
//!
//! A transaction older than the life time gets `Error::SnapshotTooOld` from a region
//! that collected: it starts again.

use std::collections::BTreeMap;
use std::time::Duration;

use parking_lot::Mutex;
use regionkv_engine::{RegionId, StoreId};
use regionkv_raft::directory::DIRECTORY;
use regionkv_raft::txn::TxnRequest;
use regionkv_raft::txn::gc::{self, GC_CHUNK_KEYS};
use regionkv_raft::version::TXN_V2;
use regionkv_raft::{StateRole, Store, tso};

use crate::db::{Db, ask};
use crate::error::Result;

/// How long a version stays readable after a newer one replaced it, by default: a
/// transaction may run that long before `SnapshotTooOld`.
pub const GC_LIFE_TIME: Duration = Duration::from_secs(600);

/// How often the driver takes a turn by default.
pub const GC_INTERVAL: Duration = Duration::from_secs(60);

/// How long one chunk may take before the turn leaves it to the next one.
const CHUNK_DEADLINE: Duration = Duration::from_secs(10);

/// What the version GC of one store did and saw.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VersionGcStats {
    /// Turns taken past the gates.
    pub turns: u64,
    /// Turns deferred (the cluster version below 4, or the store stopping).
    pub deferred: u64,
    /// Versions collected (`gc_versions_collected`).
    pub collected: u64,
    /// Chunks applied.
    pub chunks: u64,
    /// Chunks or safepoint raises that failed (the next turn tries again).
    pub errors: u64,
    /// The cluster safepoint the last turn collected at (0: none yet).
    pub safepoint: u64,
    /// The GC floor of each region the last turn went over (`gc_floor{region}`).
    pub floors: BTreeMap<RegionId, u64>,
}

/// The version GC driver of one store.
#[derive(Debug)]
pub(crate) struct VersionGc {
    store: StoreId,
    life: Duration,
    /// One turn at a time; lock order: `turn` before `stats`.
    turn: Mutex<()>,
    stats: Mutex<VersionGcStats>,
}

impl VersionGc {
    pub(crate) fn new(store: StoreId, life: Duration) -> VersionGc {
        VersionGc {
            store,
            life,
            turn: Mutex::new(()),
            stats: Mutex::new(VersionGcStats::default()),
        }
    }

    pub(crate) fn stats(&self) -> VersionGcStats {
        self.stats.lock().clone()
    }

    /// One turn on `store` (see the module docs). `at`: the safepoint to propose
    /// instead of the oracle's timestamp minus the life time (an operator's or a
    /// test's; the directory still never lowers it).
    pub(crate) fn turn(&self, store: &Store, db: &Db, at: Option<u64>) -> Result<VersionGcStats> {
        let _turn = self.turn.lock();
        if store.cluster_version() < TXN_V2.since || store.is_stopping() {
            self.stats.lock().deferred += 1;
            return Ok(self.stats());
        }
        let led: Vec<_> = (store.status().into_iter())
            .filter(|s| s.role == StateRole::Leader && s.region.id != DIRECTORY)
            .map(|s| s.region)
            .collect();
        if led.is_empty() && at.is_none() {
            return Ok(self.stats()); // nothing to collect here: no directory round
        }
        let proposed = if let Some(at) = at {
            at
        } else {
            let now = tso::physical(db.timestamp()?);
            let life = u64::try_from(self.life.as_millis()).unwrap_or(u64::MAX);
            tso::compose(now.saturating_sub(life))
        };
        let safepoint = match db.raise_gc_safepoint(proposed) {
            Ok(held) => held,
            Err(e) => {
                self.stats.lock().errors += 1;
                return Err(e);
            }
        };
        let engine = &store.context().engine;
        let mut floors = BTreeMap::new();
        let (mut collected, mut chunks, mut errors) = (0, 0, 0);
        for region in led {
            if engine.txn_gc_floor(region.id) >= safepoint || safepoint == 0 {
                floors.insert(region.id, engine.txn_gc_floor(region.id));
                continue;
            }
            let plan = gc::plan(&engine.read_view(), &region, safepoint, GC_CHUNK_KEYS);
            for chunk in plan.chunks {
                let deleted = match &chunk {
                    regionkv_raft::TxnCmd::CollectVersions { keys, .. } => keys.len() as u64,
                    _ => 0,
                };
                let answer = ask(CHUNK_DEADLINE, |reply| {
                    store.txn(TxnRequest {
                        region: region.id,
                        epoch: region.epoch,
                        cmd: chunk,
                        reply,
                    });
                });
                match answer {
                    Some(Ok(_)) => {
                        chunks += 1;
                        collected += deleted;
                    }
                    other => {
                        errors += 1;
                        let why = other.map_or("no answer".to_owned(), |r| format!("{r:?}"));
                        tracing::info!(
                            store = self.store.0,
                            region = region.id.0,
                            why,
                            "version gc: a chunk failed (next turn retries)"
                        );
                        break;
                    }
                }
            }
            floors.insert(region.id, engine.txn_gc_floor(region.id));
        }
        let mut stats = self.stats.lock();
        stats.turns += 1;
        stats.collected += collected;
        stats.chunks += chunks;
        stats.errors += errors;
        stats.safepoint = safepoint;
        stats.floors = floors;
        Ok(stats.clone())
    }
}
