//! [`StoreMetrics`]: what a store reports about itself, and the write-path counters
//! ([`WriteMetrics`]) its cores share.
//!
//! Every figure here is *measured only*: the cores record wall-clock latencies with
//! [`Instant`] but never read them back, so a simulated store stays deterministic.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use regionkv_wal::{Histogram, HistogramSnapshot, WalStats};

use crate::request::Reply;

/// Write-path counters shared by the cores of one store (in its [`StoreContext`]).
///
/// [`StoreContext`]: crate::StoreContext
#[derive(Debug, Default)]
pub struct WriteMetrics {
    /// Microseconds from a write reaching a core to its successful reply.
    latency: Arc<Histogram>,
    /// Client writes proposed (inside entries raft-rs accepted).
    writes_proposed: AtomicU64,
    /// Entries proposed that carry client writes.
    entries_proposed: AtomicU64,
    /// Write tasks handed to writer threads.
    writer_tasks: AtomicU64,
    /// Write tasks persisted by a caller running its poller's core (`store/solo.rs`).
    caller_tasks: AtomicU64,
    /// Committed entries of a kind this binary does not know, refused (a no-op).
    unknown_kinds_refused: AtomicU64,
    /// Transaction entries (locks, records) a command met frozen and left alone.
    txn_frozen: AtomicU64,
    /// `ResolveMany` commands proposed by this store's leaders.
    txn_resolve_batches: AtomicU64,
    /// Items (one transaction's part each) in them.
    txn_resolve_items: AtomicU64,
    /// Transaction commands proposed, and one-phase commits among them.
    txn_proposed: AtomicU64,
    txn_one_phase_proposed: AtomicU64,
    /// Entries those commands were proposed in (several share one from version 5).
    txn_entries_proposed: AtomicU64,
    /// Version keys named by the version GC chunks this store applied.
    gc_versions_collected: AtomicU64,
    /// The largest safepoint of those chunks.
    gc_safepoint_applied: AtomicU64,
}

impl WriteMetrics {
    /// Wraps `reply` so that a successful outcome records the time since now.
    pub(crate) fn timed(&self, reply: Reply<()>) -> Reply<()> {
        let started = Instant::now();
        let latency = Arc::clone(&self.latency);
        Box::new(move |result| {
            if result.is_ok() {
                latency.record_duration(started.elapsed());
            }
            reply(result);
        })
    }

    /// Counts one proposed entry carrying `writes` client writes.
    pub(crate) fn on_proposed(&self, writes: usize) {
        self.entries_proposed.fetch_add(1, Ordering::Relaxed);
        self.writes_proposed.fetch_add(writes as u64, Ordering::Relaxed);
    }

    /// Counts one write task handed to a writer thread.
    pub(crate) fn on_writer_task(&self) {
        self.writer_tasks.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one write task persisted on a caller's thread.
    pub(crate) fn on_caller_task(&self) {
        self.caller_tasks.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one committed entry of a kind this binary does not know, refused.
    pub(crate) fn on_unknown_kind_refused(&self) {
        self.unknown_kinds_refused.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one transaction entry (lock or record) met frozen: too new, damaged, or
    /// of an unknown status or op, neither committed nor aborted.
    pub(crate) fn on_txn_frozen(&self) {
        self.txn_frozen.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one `ResolveMany` proposed with `items` items.
    pub(crate) fn on_resolve_batch(&self, items: usize) {
        self.txn_resolve_batches.fetch_add(1, Ordering::Relaxed);
        self.txn_resolve_items.fetch_add(items as u64, Ordering::Relaxed);
    }

    /// Counts one transaction command proposed (`one_phase`: a one-phase commit).
    pub(crate) fn on_txn_proposed(&self, one_phase: bool) {
        self.txn_proposed.fetch_add(1, Ordering::Relaxed);
        if one_phase {
            self.txn_one_phase_proposed.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts one entry of transaction commands proposed (one command or several).
    pub(crate) fn on_txn_entry_proposed(&self) {
        self.txn_entries_proposed.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one version GC chunk (`TxnCmd::CollectVersions`) applied at `safepoint`,
    /// naming `keys` version keys.
    pub(crate) fn on_versions_collected(&self, safepoint: u64, keys: usize) {
        self.gc_versions_collected.fetch_add(keys as u64, Ordering::Relaxed);
        self.gc_safepoint_applied.fetch_max(safepoint, Ordering::Relaxed);
    }

    /// Fills in the store-wide write-path figures of `m`.
    pub(crate) fn fill(&self, m: &mut StoreMetrics) {
        m.write_latency_us = self.latency.snapshot();
        m.writes_proposed = self.writes_proposed.load(Ordering::Relaxed);
        m.entries_proposed = self.entries_proposed.load(Ordering::Relaxed);
        m.writer_tasks = self.writer_tasks.load(Ordering::Relaxed);
        m.caller_tasks = self.caller_tasks.load(Ordering::Relaxed);
        m.unknown_kinds_refused = self.unknown_kinds_refused.load(Ordering::Relaxed);
        m.txn_frozen = self.txn_frozen.load(Ordering::Relaxed);
        m.txn_resolve_batches = self.txn_resolve_batches.load(Ordering::Relaxed);
        m.txn_resolve_items = self.txn_resolve_items.load(Ordering::Relaxed);
        m.txn_proposed = self.txn_proposed.load(Ordering::Relaxed);
        m.txn_one_phase_proposed = self.txn_one_phase_proposed.load(Ordering::Relaxed);
        m.txn_entries_proposed = self.txn_entries_proposed.load(Ordering::Relaxed);
        m.gc_versions_collected = self.gc_versions_collected.load(Ordering::Relaxed);
        m.gc_safepoint_applied = self.gc_safepoint_applied.load(Ordering::Relaxed);
    }
}

/// A store's metrics at one moment ([`Store::metrics`](crate::Store::metrics)).
///
/// Replica figures cover user regions only (not the cluster directory's group) and
/// initialized replicas only (not one waiting for its first snapshot).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct StoreMetrics {
    /// Regions with a replica on this store.
    pub regions: u64,
    /// Of those, the ones this store leads.
    pub leaders: u64,
    /// Of those, the replicas hibernating (not ticking).
    pub hibernating: u64,
    /// Sum over replicas of `commit - applied`: entries known committed here and not
    /// applied yet.
    pub applied_lag_total: u64,
    /// The largest `commit - applied` of one replica.
    pub applied_lag_max: u64,
    /// Microseconds from a client write reaching the store to its successful reply
    /// (commit by a quorum and apply included); one sample per acknowledged write.
    pub write_latency_us: HistogramSnapshot,
    /// Client writes proposed to Raft.
    pub writes_proposed: u64,
    /// Raft entries those writes were proposed in (writes are batched per region).
    pub entries_proposed: u64,
    /// Write tasks the store's pollers handed to their writer threads (each a thread
    /// wake-up there and back); readies with nothing to persist are not among them
    /// when nothing is in flight. Not sent over the client protocol (0 there).
    pub writer_tasks: u64,
    /// Write tasks persisted on a client's own thread, which ran its poller's core
    /// because the poller was idle and hosts no replica with a peer elsewhere (no
    /// thread wake-up). Not sent over the client protocol (0 there).
    pub caller_tasks: u64,
    /// Committed entries of a command kind this binary does not know, refused as
    /// malformed while the cluster version said none could exist (ARCHITECTURE.md,
    /// "Cluster versions"). Not sent over the client protocol (0 there).
    pub unknown_kinds_refused: u64,
    /// Transaction entries (locks, records) that a transaction command met frozen (a
    /// newer format, damage, an unknown status or op) and left alone: neither
    /// committed nor aborted (ARCHITECTURE.md, "Transactions"). Counted on every
    /// replica that applies the command. Not sent over the client protocol (0 there).
    pub txn_frozen: u64,
    /// The transaction recovery daemon's first closed gate and since when (ms since
    /// the Unix epoch, by the store's clock) it has deferred every turn, across
    /// restarts (its markers in the manifest's task state `txn.recovery`,
    /// `crate::txn::recovery_state`); `None`: no turn deferred since the last one that
    /// ran (or no daemon on this store). Not sent over the client protocol (`None`
    /// there).
    pub txn_recovery_deferred: Option<(crate::txn::recovery::Gate, u64)>,
    /// Async commit's batched resolves (`ResolveMany`) this store's leaders proposed,
    /// each one Raft write for many transactions' parts. Not sent over the client
    /// protocol (0 there).
    pub txn_resolve_batches: u64,
    /// The transactions' parts (items) in those batches: items per batch is how well
    /// resolves are batched. Not sent over the client protocol (0 there).
    pub txn_resolve_items: u64,
    /// Transaction commands (`TxnCmd`) this store proposed as a leader: a snapshot
    /// transaction committed in one phase costs one, in two phases three or more.
    /// Not sent over the client protocol (0 there).
    pub txn_proposed: u64,
    /// One-phase commits (`TxnCmd::OnePhase`) among them.
    pub txn_one_phase_proposed: u64,
    /// Raft entries those transaction commands were proposed in: from cluster version
    /// 5 the commands a leader takes in one turn share entries, so
    /// `txn_proposed / txn_entries_proposed` is how well they are batched. Not sent
    /// over the client protocol (0 there).
    pub txn_entries_proposed: u64,
    /// Version keys deleted by the version GC chunks (`TxnCmd::CollectVersions`) this
    /// store applied since it started, counted on every replica that applies one (a
    /// chunk applied again, which deletes nothing more, counts again). Not sent over
    /// the client protocol (0 there).
    pub gc_versions_collected: u64,
    /// The largest safepoint a version GC chunk applied on this store carried since it
    /// started (0: none): the region GC floors here reached it. Not sent over the
    /// client protocol (0 there).
    pub gc_safepoint_applied: u64,
    /// Write-batch rounds of the apply loop.
    pub apply: ApplyStats,
    /// The store's WAL: fsyncs, their latency, group sizes.
    pub wal: WalStats,
}

impl StoreMetrics {
    /// Client writes per proposed entry (0 before the first proposal): how well
    /// batching works.
    pub fn writes_per_entry(&self) -> f64 {
        if self.entries_proposed == 0 {
            return 0.0;
        }
        #[expect(clippy::cast_precision_loss, reason = "a ratio for display")]
        let ratio = self.writes_proposed as f64 / self.entries_proposed as f64;
        ratio
    }

    /// Adds the per-core figures of `other` (replicas, apply rounds) to these; the
    /// store-wide ones (write path, WAL) are left as they are.
    pub(crate) fn add_replicas(&mut self, other: &StoreMetrics) {
        self.regions += other.regions;
        self.leaders += other.leaders;
        self.hibernating += other.hibernating;
        self.applied_lag_total += other.applied_lag_total;
        self.applied_lag_max = self.applied_lag_max.max(other.applied_lag_max);
        self.apply.add(&other.apply);
    }
}

/// Write-batch rounds this core committed, by how many regions each prepared (the
/// apply loop's shape, for tests and metrics).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ApplyStats {
    /// Rounds committed.
    pub rounds: u64,
    /// Rounds that prepared no region (a pass that applied nothing, or only admin
    /// commands, which are barriers outside rounds).
    pub rounds_without_regions: u64,
    /// Rounds that prepared two regions or more.
    pub rounds_with_several_regions: u64,
    /// The most regions one round prepared.
    pub most_regions_in_a_round: usize,
    /// Rounds cut because the next write (or a resolve's next key) would not fit
    /// their bytes; the pass went on in a fresh round.
    pub rounds_cut_full: u64,
}

impl ApplyStats {
    pub(crate) fn count(&mut self, prepared: usize) {
        self.rounds += 1;
        self.rounds_without_regions += u64::from(prepared == 0);
        self.rounds_with_several_regions += u64::from(prepared >= 2);
        self.most_regions_in_a_round = self.most_regions_in_a_round.max(prepared);
    }

    pub(crate) fn add(&mut self, other: &ApplyStats) {
        self.rounds += other.rounds;
        self.rounds_without_regions += other.rounds_without_regions;
        self.rounds_with_several_regions += other.rounds_with_several_regions;
        self.rounds_cut_full += other.rounds_cut_full;
        self.most_regions_in_a_round =
            self.most_regions_in_a_round.max(other.most_regions_in_a_round);
    }
}
