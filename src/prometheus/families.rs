//! The counters and gauges of a scrape: one row per metric family, read from a
//! store's figures (`None`: this store does not have it, e.g. a `Cluster`'s stores
//! have no client connections).

use super::StoreFigures;

/// One metric family: its name (after the `regionkv_` prefix; a counter gets
/// `_total`, a byte count `_bytes`), help text, and how to read it.
pub(crate) struct Family {
    pub name: &'static str,
    pub help: &'static str,
    /// Counted in bytes (the unit suffix `_bytes`).
    pub bytes: bool,
    pub get: fn(&StoreFigures) -> Option<u64>,
}

const fn family(
    name: &'static str,
    help: &'static str,
    get: fn(&StoreFigures) -> Option<u64>,
) -> Family {
    Family { name, help, bytes: false, get }
}

const fn bytes(
    name: &'static str,
    help: &'static str,
    get: fn(&StoreFigures) -> Option<u64>,
) -> Family {
    Family { name, help, bytes: true, get }
}

/// Monotonic counts since the store (or node) started.
pub(crate) const COUNTERS: &[Family] = &[
    family("writes_proposed", "Client writes proposed to Raft.", |s| {
        Some(s.metrics.writes_proposed)
    }),
    family(
        "entries_proposed",
        "Raft entries carrying client writes (writes are batched per region).",
        |s| Some(s.metrics.entries_proposed),
    ),
    family("writer_tasks", "Write tasks handed to the pollers' writer threads.", |s| {
        Some(s.metrics.writer_tasks)
    }),
    family("caller_tasks", "Write tasks persisted on a client's own thread.", |s| {
        Some(s.metrics.caller_tasks)
    }),
    family(
        "unknown_kinds_refused",
        "Committed entries of a command kind this binary does not know, refused.",
        |s| Some(s.metrics.unknown_kinds_refused),
    ),
    family("txn_frozen", "Transaction entries a command met frozen and left alone.", |s| {
        Some(s.metrics.txn_frozen)
    }),
    family(
        "txn_resolve_batches",
        "Batched resolves (ResolveMany) this store's leaders proposed.",
        |s| Some(s.metrics.txn_resolve_batches),
    ),
    family("txn_resolve_items", "Transaction parts in those batched resolves.", |s| {
        Some(s.metrics.txn_resolve_items)
    }),
    family("txn_proposed", "Transaction commands this store proposed as a leader.", |s| {
        Some(s.metrics.txn_proposed)
    }),
    family("txn_one_phase_proposed", "One-phase commits among them.", |s| {
        Some(s.metrics.txn_one_phase_proposed)
    }),
    family(
        "txn_entries_proposed",
        "Raft entries those transaction commands were proposed in.",
        |s| Some(s.metrics.txn_entries_proposed),
    ),
    family(
        "gc_versions_collected",
        "Version keys deleted by the version GC chunks this store applied.",
        |s| Some(s.metrics.gc_versions_collected),
    ),
    family("apply_rounds", "Write-batch rounds of the apply loop.", |s| {
        Some(s.metrics.apply.rounds)
    }),
    family("apply_rounds_without_regions", "Apply rounds that prepared no region.", |s| {
        Some(s.metrics.apply.rounds_without_regions)
    }),
    family(
        "apply_rounds_with_several_regions",
        "Apply rounds that prepared two regions or more.",
        |s| Some(s.metrics.apply.rounds_with_several_regions),
    ),
    family(
        "apply_rounds_cut_full",
        "Apply rounds cut because the next write would not fit.",
        |s| Some(s.metrics.apply.rounds_cut_full),
    ),
    family("wal_records", "WAL records appended (seals excluded).", |s| {
        Some(s.metrics.wal.records)
    }),
    family("wal_groups", "WAL groups written (one write and one fdatasync each).", |s| {
        Some(s.metrics.wal.groups)
    }),
    family("wal_fsyncs", "fdatasync calls on WAL segments.", |s| Some(s.metrics.wal.fsyncs)),
    bytes("wal_written", "Bytes written to WAL segments, framing included.", |s| {
        Some(s.metrics.wal.bytes_written)
    }),
    family("wal_segment_rolls", "Times the WAL moved to a new segment.", |s| {
        Some(s.metrics.wal.segment_rolls)
    }),
    family("client_connections", "Client connections that completed the handshake.", |s| {
        s.clients.map(|c| c.connections)
    }),
    family("client_handshake_failures", "Client handshakes refused or failed.", |s| {
        s.clients.map(|c| c.handshake_failures)
    }),
    family(
        "client_bad_frames",
        "Client frames that failed their checks (each closed its connection).",
        |s| s.clients.map(|c| c.bad_frames),
    ),
    family("client_malformed_requests", "Client requests that did not decode.", |s| {
        s.clients.map(|c| c.malformed_requests)
    }),
    family("client_requests", "Client requests served.", |s| s.clients.map(|c| c.requests)),
    family("client_writer_writes", "Answers written by the connections' writer threads.", |s| {
        s.clients.map(|c| c.writer_writes)
    }),
    family("peer_envelopes_queued", "Raft envelopes accepted into a peer's queue.", |s| {
        s.transport.map(|t| t.envelopes_queued)
    }),
    family("peer_envelopes_sent", "Raft envelopes written to a peer connection.", |s| {
        s.transport.map(|t| t.envelopes_sent)
    }),
    family(
        "peer_envelopes_dropped",
        "Raft envelopes dropped (queue full, no address, too large, lost).",
        |s| s.transport.map(|t| t.envelopes_dropped),
    ),
    family("peer_envelopes_received", "Raft envelopes handed to the store's inbox.", |s| {
        s.transport.map(|t| t.envelopes_received)
    }),
    family(
        "peer_envelopes_misaddressed",
        "Raft envelopes received for another store, dropped.",
        |s| s.transport.map(|t| t.envelopes_misaddressed),
    ),
    family("peer_frames_sent", "Batch frames written to peers.", |s| {
        s.transport.map(|t| t.frames_sent)
    }),
    family("peer_frames_sent_inline", "Batch frames written by the sending thread itself.", |s| {
        s.transport.map(|t| t.frames_sent_inline)
    }),
    family("peer_frames_received", "Batch frames read from peers.", |s| {
        s.transport.map(|t| t.frames_received)
    }),
    family(
        "peer_bad_frames",
        "Peer frames that failed a check (each closed its connection).",
        |s| s.transport.map(|t| t.bad_frames),
    ),
    family("peer_handshake_rejections", "Store handshakes that failed, either way round.", |s| {
        s.transport.map(|t| t.handshake_rejections)
    }),
    family(
        "peer_handshakes_completed",
        "Store handshakes that succeeded, either way round.",
        |s| s.transport.map(|t| t.handshakes_completed),
    ),
    family("peer_connect_failures", "Outbound connects to peers that failed.", |s| {
        s.transport.map(|t| t.connect_failures)
    }),
    family("peer_reconnects", "Outbound peer connections established again.", |s| {
        s.transport.map(|t| t.reconnects)
    }),
    family("connections_accepted", "Inbound connections accepted (stores and clients).", |s| {
        s.transport.map(|t| t.connections_accepted)
    }),
];

/// Values at the moment of the scrape.
pub(crate) const GAUGES: &[Family] = &[
    family("regions", "User regions with an initialized replica on this store.", |s| {
        Some(s.metrics.regions)
    }),
    family("leaders", "Of those, the ones this store leads.", |s| Some(s.metrics.leaders)),
    family("hibernating", "Of those, the replicas hibernating (not ticking).", |s| {
        Some(s.metrics.hibernating)
    }),
    family("applied_lag_entries", "Sum over replicas of commit - applied.", |s| {
        Some(s.metrics.applied_lag_total)
    }),
    family("applied_lag_max_entries", "The largest commit - applied of one replica.", |s| {
        Some(s.metrics.applied_lag_max)
    }),
    family("apply_most_regions_in_a_round", "The most regions one apply round prepared.", |s| {
        Some(s.metrics.apply.most_regions_in_a_round as u64)
    }),
    family(
        "gc_safepoint_applied",
        "The largest safepoint of the version GC chunks applied here.",
        |s| Some(s.metrics.gc_safepoint_applied),
    ),
    family(
        "txn_recovery_deferred",
        "1 while the transaction recovery daemon defers every turn.",
        |s| Some(u64::from(s.metrics.txn_recovery_deferred.is_some())),
    ),
    bytes("wal_queued_high_water", "The most bytes ever queued in one open WAL group.", |s| {
        Some(s.metrics.wal.queued_bytes_high_water as u64)
    }),
    family("wal_spare_segments", "Spare WAL segment files ready now.", |s| {
        Some(s.metrics.wal.spare_segments as u64)
    }),
];
