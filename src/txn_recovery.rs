//! The transaction recovery daemon (ARCHITECTURE.md, "The recovery daemon"): one per
//! store, in a [`Cluster`](crate::Cluster) and in a [`Node`](crate::Node). Every
//! `txn_recover_interval` it takes a turn over the regions its store leads: it resolves
//! the locks whose TTL ran out (asking each lock's primary first), aborts pending
//! records past their TTL, and forgets decided records once old enough, each through
//! [`Db::txn_call`] (Raft commands; it takes no engine lock itself, so it cannot
//! deadlock with a split, a merge or a checkpoint). What to do is planned, sans I/O, by
//! [`regionkv_raft::txn::recovery`].
//!
//! The gates, checked in this order before anything is decoded (the fourth invariant):
//! - G1 [`Gate::LocalFormat`]: the store's engine is open (`Engine::open` runs the
//!   manifest gate and its migrations before any task starts: a store too new never
//!   opens, an older one is migrated first) and not poisoned;
//! - G2 [`Gate::ClusterVersion`]: the active cluster version, as this store knows it,
//!   includes [`TXN`] (a store that has not learned it is at the initial version:
//!   unknown is closed);
//! - G3 [`Gate::RecordFormat`]: per entry, in the planner: an entry of a newer format is
//!   counted and never decoded;
//! - G4 [`Gate::Shutdown`]: the store is not stopping; a command that fails after
//!   shutdown began is counted as cancelled, not as an error.
//!
//! No configuration switch opens a gate. A closed gate defers the turn: nothing is
//! decoded or proposed, it is counted (`deferred{gate}`) and logged at info once per
//! store boot and gate (then at debug). Its marker (the gate, since when, the boot
//! that logged it) is kept in the store engine's manifest, task state `txn.recovery`
//! ([`RecoveryState`]), so it outlives a restart and shows in
//! `StoreMetrics::txn_recovery_deferred`; a turn that passes the gates clears it. Only a `#[cfg(test)]` entry,
//! `recover_once_ungated`, runs a turn past G1 and G2 (never past G3).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::Mutex;
use regionkv_engine::txn::{TxnStatus, TxnTable};
use regionkv_engine::{RegionId, StoreId};
use regionkv_raft::directory::DIRECTORY;
use regionkv_raft::txn::recovery::{
    self, Gate, RecoveryLimits, RecoveryMemory, TurnPlan, plan_turn,
};
use regionkv_raft::txn::recovery_state::RecoveryState;
use regionkv_raft::version::TXN;
use regionkv_raft::{StateRole, Store, TxnCmd, TxnReply, TxnState};
use regionkv_wal::CancellationToken;

use crate::db::Db;
use crate::error::{Error, Result};
use crate::version_gc::{VersionGc, VersionGcStats};

/// How often the daemon takes a turn by default.
pub const TXN_RECOVER_INTERVAL: Duration = Duration::from_secs(5);

/// What the recovery daemon of one store did and saw.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TxnRecoveryStats {
    /// Turns taken past every gate.
    pub turns: u64,
    /// Turns deferred, by the gate that was closed (`txn_recovery_deferred{gate}`).
    pub deferred: BTreeMap<&'static str, u64>,
    /// Locks resolved as committed.
    pub resolved_committed: u64,
    /// Locks resolved as aborted.
    pub resolved_aborted: u64,
    /// Pending records past their TTL that a check aborted.
    pub aborted_in_doubt: u64,
    /// Records forgotten.
    pub forgotten: u64,
    /// Commands that failed (the next turn tries again).
    pub errors: u64,
    /// Commands cut short because the store was stopping.
    pub cancelled: u64,
    /// The last turn: pending records past their TTL (`txn_in_doubt`).
    pub in_doubt: u64,
    /// The last turn: age of the oldest lock (ms).
    pub oldest_lock_age_ms: u64,
    /// The last turn: entries not decoded, by reason (`"too_new"`, `"corrupt"`).
    pub unreadable: BTreeMap<&'static str, u64>,
    /// The last turn: entries frozen, by reason (`"unknown_status"`, `"unknown_op"`).
    pub frozen: BTreeMap<&'static str, u64>,
}

/// What one turn did (for [`Cluster::txn_recover`](crate::Cluster::txn_recover)).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TxnRecoveryTurn {
    /// The store.
    pub store: StoreId,
    /// The gate that deferred the turn, if one did (then nothing below happened).
    pub deferred: Option<Gate>,
    /// The regions it went over (those the store leads).
    pub regions: Vec<RegionId>,
    /// Locks resolved as committed.
    pub resolved_committed: u64,
    /// Locks resolved as aborted.
    pub resolved_aborted: u64,
    /// Pending records past their TTL that a check aborted.
    pub aborted_in_doubt: u64,
    /// Records forgotten.
    pub forgotten: u64,
    /// Commands that failed, with why.
    pub errors: Vec<String>,
    /// Pending records past their TTL seen.
    pub in_doubt: u64,
    /// Entries not decoded, by reason.
    pub unreadable: BTreeMap<&'static str, u64>,
    /// Entries frozen, by reason.
    pub frozen: BTreeMap<&'static str, u64>,
}

/// One entry of a region's transaction tables, for operators
/// ([`Cluster::txn_list`](crate::Cluster::txn_list)).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TxnEntry {
    /// The region (led by `store`).
    pub region: RegionId,
    /// The store that leads it.
    pub store: StoreId,
    /// `"lock"` or `"record"`.
    pub kind: &'static str,
    /// The locked key, or the record's primary key.
    pub key: Bytes,
    /// The transaction (`None`: a lock that could not be read).
    pub txn_id: Option<u64>,
    /// The primary key (a lock's; a record's own key).
    pub primary_key: Option<Bytes>,
    /// `"pending"`, `"committed"`, `"aborted"`, `"locked"` (a readable lock), or why it
    /// was not read or is frozen: `"too_new"`, `"corrupt"`, `"unknown_status"`,
    /// `"unknown_op"`.
    pub state: &'static str,
    /// Since its creation (ms; `None`: unread).
    pub age_ms: Option<u64>,
    /// When it expires (or expired; ms since the Unix epoch; `None`: unread).
    pub expires_at_ms: Option<u64>,
    /// Past its TTL and not decided: a pending record or a lock.
    pub in_doubt: bool,
}

/// The markers of `store`'s current boot in `cache`, loaded from its manifest first if
/// the cache holds none or another boot's.
fn loaded<'c>(cache: &'c mut Option<(u64, RecoveryState)>, store: &Store) -> &'c mut RecoveryState {
    let boot = store.boot_id();
    if cache.as_ref().is_none_or(|(b, _)| *b != boot) {
        *cache = Some((boot, RecoveryState::load(&store.context().engine)));
    }
    &mut cache.as_mut().expect("just loaded").1
}

/// The recovery daemon of one store: its soft state between turns and its counters.
pub(crate) struct TxnRecovery {
    store: StoreId,
    limits: RecoveryLimits,
    /// One turn at a time (the daemon's, an operator's): held for the whole turn.
    /// Lock order: `turn` before `stats` and `markers`.
    turn: Mutex<BTreeMap<RegionId, RecoveryMemory>>,
    stats: Mutex<TxnRecoveryStats>,
    /// The deferred-gate markers as saved in the manifest, loaded in the store boot
    /// they are of (`None`: not loaded yet; a restarted store loads them again).
    markers: Mutex<Option<(u64, RecoveryState)>>,
}

impl TxnRecovery {
    pub(crate) fn new(store: StoreId) -> TxnRecovery {
        TxnRecovery {
            store,
            limits: RecoveryLimits::default(),
            turn: Mutex::new(BTreeMap::new()),
            stats: Mutex::new(TxnRecoveryStats::default()),
            markers: Mutex::new(None),
        }
    }

    /// The same daemon with other bounds (tests: no forget delay).
    #[cfg(test)]
    pub(crate) fn with_limits(mut self, limits: RecoveryLimits) -> TxnRecovery {
        self.limits = limits;
        self
    }

    pub(crate) fn stats(&self) -> TxnRecoveryStats {
        self.stats.lock().clone()
    }

    /// The first closed gate among G1, G2 and G4 for `store` (G3 is per entry).
    pub(crate) fn closed_gate(store: &Store) -> Option<Gate> {
        let ctx = store.context();
        if store.failure().is_some() || ctx.engine.failure().is_some() {
            return Some(Gate::LocalFormat);
        }
        if store.cluster_version() < TXN.since {
            return Some(Gate::ClusterVersion);
        }
        if store.is_stopping() {
            return Some(Gate::Shutdown);
        }
        None
    }

    /// One turn over the regions `store` leads (`only`: that one region), gates first.
    pub(crate) fn turn(&self, store: &Store, db: &Db, only: Option<RegionId>) -> TxnRecoveryTurn {
        if let Some(gate) = Self::closed_gate(store) {
            return self.defer(store, gate);
        }
        self.turn_past_gates(store, db, only)
    }

    /// A turn past G1 and G2 (G3 still holds: it is in the planner): for tests only,
    /// on records that lack optional fields.
    #[cfg(test)]
    pub(crate) fn recover_once_ungated(&self, store: &Store, db: &Db) -> TxnRecoveryTurn {
        self.turn_past_gates(store, db, None)
    }

    fn defer(&self, store: &Store, gate: Gate) -> TxnRecoveryTurn {
        *self.stats.lock().deferred.entry(gate.label()).or_default() += 1;
        let mut markers = self.markers.lock();
        let state = loaded(&mut markers, store);
        let marker = state.marker_mut(gate, store.context().now_ms());
        if marker.logged_boot == Some(store.boot_id()) {
            tracing::debug!(
                store = self.store.0,
                gate = gate.label(),
                "transaction recovery deferred"
            );
        } else {
            marker.logged_boot = Some(store.boot_id());
            tracing::info!(
                store = self.store.0,
                gate = gate.label(),
                since_ms = marker.since_ms,
                "transaction recovery deferred: a gate is closed"
            );
            self.save_markers(store, state);
        }
        TxnRecoveryTurn { store: self.store, deferred: Some(gate), ..TxnRecoveryTurn::default() }
    }

    /// Saves `state`'s markers in the manifest (unless they are saved already), but a
    /// shutdown's (it passes with the process); a failure is logged (the markers are
    /// not authoritative).
    fn save_markers(&self, store: &Store, state: &RecoveryState) {
        let mut saved = state.clone();
        saved.deferred.retain(|m| m.gate != Gate::Shutdown);
        if saved == RecoveryState::load(&store.context().engine) {
            return;
        }
        if let Err(e) = saved.save(&store.context().engine) {
            tracing::debug!(store = self.store.0, error = %e, "transaction recovery markers not saved");
        }
    }

    /// Clears the deferred-gate markers: a turn passed the gates.
    fn clear_markers(&self, store: &Store) {
        let mut markers = self.markers.lock();
        let state = loaded(&mut markers, store);
        if !state.deferred.is_empty() {
            state.deferred.clear();
            self.save_markers(store, state);
        }
    }

    fn turn_past_gates(&self, store: &Store, db: &Db, only: Option<RegionId>) -> TxnRecoveryTurn {
        let mut memories = self.turn.lock();
        self.clear_markers(store);
        let mut out = TxnRecoveryTurn { store: self.store, ..TxnRecoveryTurn::default() };
        let led = led_regions(store, only);
        memories.retain(|region, _| led.contains(region));
        let mut oldest_lock_age_ms = 0;
        for region in led {
            if store.is_stopping() {
                out.deferred = Some(Gate::Shutdown);
                break;
            }
            let Some(table) = store.context().engine.txn_table(region) else { continue };
            out.regions.push(region);
            if table.locks.is_empty() && table.records.is_empty() {
                continue;
            }
            let now_ms = store.context().now_ms();
            let memory = memories.entry(region).or_default();
            let plan = plan_turn(&table, now_ms, &self.limits, memory);
            oldest_lock_age_ms = oldest_lock_age_ms.max(plan.metrics.oldest_lock_age_ms);
            self.run_plan(store, db, &table, &plan, &mut out);
        }
        let mut stats = self.stats.lock();
        if out.deferred.is_some() {
            *stats.deferred.entry(Gate::Shutdown.label()).or_default() += 1;
        } else {
            stats.turns += 1;
        }
        stats.resolved_committed += out.resolved_committed;
        stats.resolved_aborted += out.resolved_aborted;
        stats.aborted_in_doubt += out.aborted_in_doubt;
        stats.forgotten += out.forgotten;
        stats.in_doubt = out.in_doubt;
        stats.oldest_lock_age_ms = oldest_lock_age_ms;
        stats.unreadable.clone_from(&out.unreadable);
        stats.frozen.clone_from(&out.frozen);
        out
    }

    fn run_plan(
        &self,
        store: &Store,
        db: &Db,
        table: &TxnTable,
        plan: &TurnPlan,
        out: &mut TxnRecoveryTurn,
    ) {
        for (reason, n) in &plan.metrics.unreadable {
            *out.unreadable.entry(reason).or_default() += n;
        }
        for (reason, n) in &plan.metrics.frozen {
            *out.frozen.entry(reason).or_default() += n;
        }
        out.in_doubt += plan.metrics.in_doubt as u64;
        for action in &plan.locks {
            let Some(TxnReply::Status(state)) = self.call(store, db, action.check_status(), out)
            else {
                continue;
            };
            let Some(resolve) = action.resolve(&state) else { continue };
            if self.call(store, db, resolve, out).is_some() {
                if matches!(state, TxnState::Committed { .. }) {
                    out.resolved_committed += 1;
                } else {
                    out.resolved_aborted += 1;
                }
            }
        }
        for doubt in &plan.in_doubt {
            if let Some(participants) = &doubt.staging {
                // Async commit: decided by a participant check, never by time alone.
                match db.settle_staging(doubt.txn_id, &doubt.primary_key, participants) {
                    Ok(TxnState::Aborted) => out.aborted_in_doubt += 1,
                    Ok(_) => {}
                    Err(e) => {
                        self.stats.lock().errors += 1;
                        out.errors.push(e.to_string());
                    }
                }
                continue;
            }
            if let Some(TxnReply::Status(TxnState::Aborted)) =
                self.call(store, db, doubt.check_status(), out)
            {
                out.aborted_in_doubt += 1;
            }
        }
        let mut forgotten = Vec::new();
        for forget in &plan.forgets {
            let resolved =
                forget.resolves().into_iter().all(|cmd| self.call(store, db, cmd, out).is_some());
            if resolved {
                forgotten.push((forget.primary_key.clone(), forget.txn_id));
            }
        }
        if let Some(cmd) = plan.forget(table, &forgotten)
            && self.call(store, db, cmd, out).is_some()
        {
            out.forgotten += forgotten.len() as u64;
        }
    }

    /// Proposes one command; `None` if it failed (counted; cancelled once the store is
    /// stopping).
    fn call(
        &self,
        store: &Store,
        db: &Db,
        cmd: TxnCmd,
        out: &mut TxnRecoveryTurn,
    ) -> Option<TxnReply> {
        match db.txn_call(cmd) {
            Ok(reply) => Some(reply),
            Err(e) if store.is_stopping() || matches!(e, Error::Shutdown) => {
                self.stats.lock().cancelled += 1;
                tracing::debug!(store = self.store.0, error = %e, "transaction recovery cancelled");
                None
            }
            Err(e) => {
                self.stats.lock().errors += 1;
                tracing::info!(store = self.store.0, error = %e, "transaction recovery: a command failed (next turn retries)");
                out.errors.push(e.to_string());
                None
            }
        }
    }

    /// The entries of the regions `store` leads (G3 per entry: an entry too new is
    /// listed by its key and reason, never decoded).
    pub(crate) fn list(
        store: &Store,
        in_doubt_only: bool,
        older_than: Option<Duration>,
    ) -> Vec<TxnEntry> {
        let now_ms = store.context().now_ms();
        let min_age_ms = older_than.map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        let mut out = Vec::new();
        for region in led_regions(store, None) {
            let Some(table) = store.context().engine.txn_table(region) else { continue };
            for e in entries(&table, region, now_ms) {
                let old_enough = e.age_ms.is_none_or(|age| age >= min_age_ms);
                if old_enough && (!in_doubt_only || e.in_doubt) {
                    out.push(TxnEntry { store: store_id(store), ..e });
                }
            }
        }
        out
    }
}

/// The daemons of the stores of a `Cluster` (every store in the process) or a `Node`
/// (its one store), and the thread that runs their turns.
pub(crate) struct TxnDaemon {
    interval: Duration,
    /// The version GC of each store (`crate::version_gc`), a turn every `gc_interval`
    /// on the same thread.
    gc: Mutex<BTreeMap<StoreId, Arc<VersionGc>>>,
    gc_life: Duration,
    gc_interval: Duration,
    /// One daemon per store id (it outlives a restart of its store in a `Cluster`).
    per_store: Mutex<BTreeMap<StoreId, Arc<TxnRecovery>>>,
    cancel: CancellationToken,
    thread: Mutex<Option<JoinHandle<()>>>,
    /// Where the stores and a client come from (set by `start`).
    host: Mutex<Option<Arc<StoresFn>>>,
}

/// The stores a daemon thread serves as they are now, and a client to propose through;
/// `None` once their host is gone (the thread ends).
pub(crate) type StoresFn = Box<dyn Fn() -> Option<(Vec<Arc<Store>>, Db)> + Send + Sync>;

impl TxnDaemon {
    /// A daemon whose version GC keeps versions `gc_life` and takes a turn every
    /// `gc_interval`.
    pub(crate) fn with_gc(
        interval: Duration,
        gc_life: Duration,
        gc_interval: Duration,
    ) -> Arc<TxnDaemon> {
        Arc::new(TxnDaemon {
            interval,
            gc: Mutex::new(BTreeMap::new()),
            gc_life,
            gc_interval,
            per_store: Mutex::new(BTreeMap::new()),
            cancel: CancellationToken::new(),
            thread: Mutex::new(None),
            host: Mutex::new(None),
        })
    }

    /// Starts the thread: a turn on every store of `stores` each interval, until
    /// [`TxnDaemon::stop`]. `stores` also serves [`TxnDaemon::recover_host`].
    pub(crate) fn start(self: &Arc<Self>, name: String, stores: StoresFn) -> Result<()> {
        let stores: Arc<StoresFn> = Arc::new(stores);
        *self.host.lock() = Some(stores.clone());
        let daemon = self.clone();
        let handle = std::thread::Builder::new().name(name).spawn(move || {
            let mut next_gc = Instant::now() + daemon.gc_interval;
            // Bounded: each wait is one interval; ends once cancelled or the host is gone.
            while !daemon.cancel.wait_timeout(daemon.interval.min(daemon.gc_interval)) {
                let Some((stores, db)) = stores() else { return };
                let db = db.with_deadline(COMMAND_DEADLINE);
                let gc_due = Instant::now() >= next_gc;
                if gc_due {
                    next_gc = Instant::now() + daemon.gc_interval;
                }
                for store in stores {
                    if daemon.cancel.is_cancelled() {
                        return;
                    }
                    daemon.of(store_id(&store)).turn(&store, &db, None);
                    if gc_due && let Err(e) = daemon.gc_of(store_id(&store)).turn(&store, &db, None)
                    {
                        tracing::debug!(error = %e, "version gc turn deferred");
                    }
                }
            }
        })?;
        *self.thread.lock() = Some(handle);
        Ok(())
    }

    /// One turn now on each of the host's stores (see [`TxnDaemon::recover_now`]).
    pub(crate) fn recover_host(&self, region: Option<RegionId>) -> Vec<TxnRecoveryTurn> {
        let host = self.host.lock().clone();
        match host.and_then(|host| host()) {
            Some((stores, db)) => self.recover_now(&stores, &db, region),
            None => Vec::new(),
        }
    }

    /// Stops the thread (after its current command at worst) and waits for it.
    pub(crate) fn stop(&self) {
        self.cancel.cancel();
        if let Some(handle) = self.thread.lock().take() {
            let _ = handle.join();
        }
    }

    /// The version GC of store `id`.
    pub(crate) fn gc_of(&self, id: StoreId) -> Arc<VersionGc> {
        let life = self.gc_life;
        self.gc.lock().entry(id).or_insert_with(|| Arc::new(VersionGc::new(id, life))).clone()
    }

    /// One version GC turn now on each of `stores` (`at`: the safepoint to propose).
    pub(crate) fn gc_now(
        &self,
        stores: &[Arc<Store>],
        db: &Db,
        at: Option<u64>,
    ) -> Result<Vec<(StoreId, VersionGcStats)>> {
        let db = db.clone().with_deadline(COMMAND_DEADLINE);
        let mut out = Vec::new();
        for store in stores {
            let id = store_id(store);
            out.push((id, self.gc_of(id).turn(store, &db, at)?));
        }
        Ok(out)
    }

    /// Every store's version GC counters.
    pub(crate) fn gc_stats(&self) -> Vec<(StoreId, VersionGcStats)> {
        self.gc.lock().iter().map(|(id, g)| (*id, g.stats())).collect()
    }

    /// The daemon of store `id`.
    pub(crate) fn of(&self, id: StoreId) -> Arc<TxnRecovery> {
        self.per_store.lock().entry(id).or_insert_with(|| Arc::new(TxnRecovery::new(id))).clone()
    }

    /// One turn now on each of `stores` (gates first), `region` only if given.
    pub(crate) fn recover_now(
        &self,
        stores: &[Arc<Store>],
        db: &Db,
        region: Option<RegionId>,
    ) -> Vec<TxnRecoveryTurn> {
        let db = db.clone().with_deadline(COMMAND_DEADLINE);
        stores.iter().map(|s| self.of(store_id(s)).turn(s, &db, region)).collect()
    }

    /// Every store's counters.
    pub(crate) fn stats(&self) -> Vec<(StoreId, TxnRecoveryStats)> {
        self.per_store.lock().iter().map(|(id, d)| (*id, d.stats())).collect()
    }
}

/// How long the daemon retries one command before it leaves it to the next turn.
const COMMAND_DEADLINE: Duration = Duration::from_secs(10);

fn store_id(store: &Store) -> StoreId {
    store.context().config.store_id
}

/// The regions `store` leads now (the directory's excepted: it holds no user keys).
fn led_regions(store: &Store, only: Option<RegionId>) -> Vec<RegionId> {
    store
        .status()
        .into_iter()
        .filter(|s| s.role == StateRole::Leader && s.region.id != DIRECTORY)
        .map(|s| s.region.id)
        .filter(|id| only.is_none_or(|o| o == *id))
        .collect()
}

/// A table's entries, for listing.
fn entries(table: &TxnTable, region: RegionId, now_ms: u64) -> Vec<TxnEntry> {
    let blank = |kind, key: &Bytes, state| TxnEntry {
        region,
        store: StoreId(0),
        kind,
        key: key.clone(),
        txn_id: None,
        primary_key: None,
        state,
        age_ms: None,
        expires_at_ms: None,
        in_doubt: false,
    };
    let mut out = Vec::new();
    for (key, bytes) in &table.locks {
        out.push(match recovery::read_lock(bytes) {
            Err(why) => blank("lock", key, why.reason()),
            Ok(lock) => {
                let unknown = lock.op == regionkv_engine::txn::LockOp::Unspecified;
                TxnEntry {
                    txn_id: Some(lock.txn_id.0),
                    primary_key: Some(lock.primary_key.clone()),
                    state: if unknown { "unknown_op" } else { "locked" },
                    age_ms: Some(now_ms.saturating_sub(lock.created_at_ms)),
                    expires_at_ms: Some(lock.expires_at_ms()),
                    in_doubt: !unknown && now_ms > lock.expires_at_ms(),
                    ..blank("lock", key, "locked")
                }
            }
        });
    }
    for ((primary, txn_id), bytes) in &table.records {
        out.push(match recovery::read_record(bytes) {
            Err(why) => {
                TxnEntry { txn_id: Some(*txn_id), ..blank("record", primary, why.reason()) }
            }
            Ok(record) => {
                let state = match record.status {
                    TxnStatus::Unspecified => "unknown_status",
                    TxnStatus::Pending => "pending",
                    TxnStatus::Committed => "committed",
                    TxnStatus::Aborted => "aborted",
                    TxnStatus::Staging => "staging",
                };
                TxnEntry {
                    txn_id: Some(*txn_id),
                    primary_key: Some(primary.clone()),
                    age_ms: Some(now_ms.saturating_sub(record.created_at_ms)),
                    expires_at_ms: Some(record.expires_at_ms()),
                    in_doubt: matches!(record.status, TxnStatus::Pending | TxnStatus::Staging)
                        && now_ms > record.expires_at_ms(),
                    ..blank("record", primary, state)
                }
            }
        });
    }
    out
}

#[cfg(test)]
mod tests;
