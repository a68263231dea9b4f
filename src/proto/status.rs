//! Status reports: a store's [`StoreStatus`] and its replicas' [`PeerStatus`], their
//! wire records, and the status schemas a sender may write them in.
//!
//! ```text
//!  store status  1 store  2 peer status*  3 metrics                     (schema 1)
//!                4 status schema  5 binary version  6 boot id  7 report seq
//!                8 store state (0 unspecified, 1 serving, 2 stopping, 3 failed,
//!                  4 recovering)  9 failure
//!                10 capacity { 1 disk total bytes, 2 disk available bytes,
//!                              3 memtable bytes }
//!                12 peer set complete                              (schema 2)
//!                (11 and 13: the cluster version gate's)
//!  peer status   1 region  2 peer  3 role (0 unspecified, 1 follower, 2 candidate,
//!                3 leader, 4 pre-candidate)  4 term  5 leader  6 commit  7 applied
//!                8 last index  9 initialized  10 hibernated            (schema 1)
//!                11 first index  12 timeline (0 unspecified, 1 active, 2 stopping,
//!                3 stopped, 4 broken)  13 merge pending
//!                14 progress { 1 follower* { 1 peer, 2 matched, 3 state (0
//!                  unspecified, 1 probe, 2 replicate, 3 snapshot), 4 recent active,
//!                  5 ticks since heard } }
//!                15 is learner  17 oldest lock age (ms; leaders)  18 image hash
//!                { 1 index, 2 hash }  19 halted                        (schema 2)
//!                16 duplications (the region's `DupTable` as the engine encodes it;
//!                absent: unknown)
//! ```
//!
//! Every field after schema 1's is optional: absent decodes as `None` (unknown, never
//! a default), a reader skips tags it does not know, and an enum code it does not know
//! is `Unspecified`. A role code this binary does not know is a follower for routing
//! ([`PeerStatus::role`]) and `Unspecified` for a monitor
//! ([`PeerStatus::reported_role`]).

use regionkv_engine::PeerId;
use regionkv_engine::StoreId;
use regionkv_engine::codec::{self, DecodeError, Field, TlvRecord};
use regionkv_engine::dup::DupTable;
use regionkv_raft::{
    FollowerProgress, PeerStatus, ProgressState, ReportedRole, StateRole, Store, StoreMetrics,
    TimelineState,
};

use super::records::{D, metrics_of, nested, opt_u64, put_flag, put_metrics, put_region};
use super::records::{region_of, req_u64};

/// The highest status schema this binary implements (what it sends as
/// [`StoreStatus::status_schema`]).
pub const STATUS_SCHEMA: u32 = 2;

/// Which fields a status record carries: a sender writes its own schema's; a reader
/// of an older schema skips the later ones. The simulator writes reports as older
/// senders would with it ([`encode_store_status`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum StatusSchema {
    /// The first release: store, peers (tags 1 to 10), metrics.
    #[cfg_attr(not(test), allow(dead_code, reason = "the health monitor's matrix uses it"))]
    V1,
    /// Status v2: the schema, version, boot, state and capacity of the store; first
    /// index, timeline, progress and the rest of each replica.
    V2,
}

impl StatusSchema {
    /// The schema this binary writes.
    pub(crate) const CURRENT: StatusSchema = StatusSchema::V2;

    /// Its number, as [`StoreStatus::status_schema`] carries it.
    #[cfg_attr(not(test), allow(dead_code, reason = "the health monitor's matrix reads it"))]
    pub(crate) fn number(self) -> u32 {
        match self {
            StatusSchema::V1 => 1,
            StatusSchema::V2 => 2,
        }
    }
}

const _: () = assert!(STATUS_SCHEMA == 2, "StatusSchema::CURRENT is V2");

/// One store's status as it reports it.
///
/// Every field after `metrics` was added with status schema 2: `None` is unknown (a
/// store of an older binary, or not known to the sender), never a default.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct StoreStatus {
    /// The store.
    pub store: StoreId,
    /// Its replicas: region, role, term, indexes.
    pub peers: Vec<PeerStatus>,
    /// Its metrics; `None` from a node that does not report them (added after the
    /// first release of protocol v1: absent is not empty).
    pub metrics: Option<StoreMetrics>,
    /// The highest status schema the sender implements (this binary:
    /// [`STATUS_SCHEMA`]). None: a sender of schema 1.
    pub status_schema: Option<u32>,
    /// The sender's binary version (its `regionkv` crate version, `"0.1.0"`). None:
    /// unknown (an older store): it counts as not upgraded.
    pub binary_version: Option<String>,
    /// Drawn at random when the store started: another one means a restart. None:
    /// unknown (an older store).
    pub boot_id: Option<u64>,
    /// The number of this report among those the store answered since it started
    /// (per `boot_id`: 1, 2, ...): a report not newer than one kept is stale. None:
    /// unknown (an older store).
    pub report_seq: Option<u64>,
    /// Where the store is in its life. None: unknown (an older store).
    pub store_state: Option<StoreState>,
    /// The failure that stopped the store, with `store_state` `Failed`. None: no
    /// failure, or unknown (an older store: see `store_state`).
    pub failure: Option<String>,
    /// The store's disk and memory. None: unknown (an older store).
    pub capacity: Option<Capacity>,
    /// True if `peers` lists every replica the store hosts (false: a part of the store
    /// did not answer in time). None: unknown (an older store).
    pub peer_set_complete: Option<bool>,
    /// Tag 11: the cluster version the store runs at, as it knows it; `None` from a
    /// store before the version gate.
    pub cluster_version_active: Option<u32>,
    /// Tag 13: the newest cluster version the store supports; `None` from a store
    /// before the version gate: it has not upgraded (a finalize waits for it).
    pub max_cluster_version: Option<u32>,
}

impl StoreStatus {
    /// The status of `store` with only its replicas: every later field `None`.
    pub fn new(store: StoreId, peers: Vec<PeerStatus>) -> StoreStatus {
        StoreStatus {
            store,
            peers,
            metrics: None,
            status_schema: None,
            binary_version: None,
            boot_id: None,
            report_seq: None,
            store_state: None,
            failure: None,
            capacity: None,
            peer_set_complete: None,
            cluster_version_active: None,
            max_cluster_version: None,
        }
    }

    /// The report of running store `id` now: every field this binary knows, numbered
    /// with the store's next report number. Every status producer (`Node::status`,
    /// the server's status request, `Cluster::store_status`) calls this.
    pub(crate) fn of_store(id: StoreId, store: &Store) -> StoreStatus {
        // The number first: reports are numbered in the order they began.
        let report_seq = store.next_report_seq();
        let (peers, complete) = store.status_report();
        let failure = store.failure();
        let state = if failure.is_some() {
            StoreState::Failed
        } else if store.is_stopping() {
            StoreState::Stopping
        } else {
            StoreState::Serving
        };
        let engine = &store.context().engine;
        let disk = rustix::fs::statvfs(engine.dir()).ok();
        let capacity = Capacity {
            disk_total_bytes: disk.as_ref().map(|d| d.f_blocks.saturating_mul(d.f_frsize)),
            disk_available_bytes: disk.as_ref().map(|d| d.f_bavail.saturating_mul(d.f_frsize)),
            memtable_bytes: Some(engine.memory().total_bytes),
        };
        StoreStatus {
            store: id,
            peers,
            metrics: Some(store.metrics()),
            status_schema: Some(STATUS_SCHEMA),
            binary_version: Some(env!("CARGO_PKG_VERSION").to_owned()),
            boot_id: Some(store.boot_id()),
            report_seq: Some(report_seq),
            store_state: Some(state),
            failure,
            capacity: Some(capacity),
            peer_set_complete: Some(complete),
            cluster_version_active: Some(store.cluster_version()),
            max_cluster_version: Some(store.cluster_version_max()),
        }
    }

    /// This status as a reader of this binary gets it from a sender of `schema`: the
    /// fields that schema does not have are `None` (for the simulator's stores of
    /// older binaries).
    #[cfg_attr(not(test), allow(dead_code, reason = "the health monitor's matrix uses it"))]
    pub(crate) fn as_sent_by(&self, schema: StatusSchema) -> StoreStatus {
        let bytes = encode_store_status(self, schema);
        decode_store_status(&bytes, StatusSchema::CURRENT)
            .expect("a status this binary encodes decodes")
    }
}

/// Where a store is in its life, as it reports it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum StoreState {
    /// Unknown: a code this binary does not know.
    #[default]
    Unspecified = 0,
    /// Running.
    Serving = 1,
    /// Shutting down (or stopped without a failure).
    Stopping = 2,
    /// Stopped by a failure of its log or engine (an I/O failure, a poisoned engine):
    /// [`StoreStatus::failure`] says which. A restart recovers from disk.
    Failed = 3,
    /// Opening: recovering from its log. (This binary answers only once open, so it
    /// never sends it.)
    Recovering = 4,
}

impl StoreState {
    fn from_code(code: u64) -> StoreState {
        match code {
            1 => StoreState::Serving,
            2 => StoreState::Stopping,
            3 => StoreState::Failed,
            4 => StoreState::Recovering,
            _ => StoreState::Unspecified,
        }
    }
}

/// A store's disk and memory, as it reports them. Each figure is `None` when the
/// store could not read it (a directory that is not on a real file system, an older
/// store).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Capacity {
    /// Bytes of the file system that holds the store's directory.
    pub disk_total_bytes: Option<u64>,
    /// Bytes of it available to the store's user.
    pub disk_available_bytes: Option<u64>,
    /// Bytes charged to the memtable of the store's user regions.
    pub memtable_bytes: Option<u64>,
}

// ---- the store status record ----

pub(super) const ST_STORE: u16 = 1;
const ST_PEER: u16 = 2;
pub(super) const ST_METRICS: u16 = 3;
const ST_SCHEMA: u16 = 4;
const ST_BINARY_VERSION: u16 = 5;
const ST_BOOT_ID: u16 = 6;
const ST_REPORT_SEQ: u16 = 7;
const ST_STATE: u16 = 8;
const ST_FAILURE: u16 = 9;
const ST_CAPACITY: u16 = 10;
const ST_CLUSTER_VERSION_ACTIVE: u16 = 11;
const ST_PEER_SET_COMPLETE: u16 = 12;
const ST_MAX_CLUSTER_VERSION: u16 = 13;
const ST_TAGS_V1: &[u16] = &[ST_STORE, ST_PEER, ST_METRICS];
const ST_TAGS_V2: &[u16] = &[
    ST_STORE,
    ST_PEER,
    ST_METRICS,
    ST_SCHEMA,
    ST_BINARY_VERSION,
    ST_BOOT_ID,
    ST_REPORT_SEQ,
    ST_STATE,
    ST_FAILURE,
    ST_CAPACITY,
    ST_CLUSTER_VERSION_ACTIVE,
    ST_PEER_SET_COMPLETE,
    ST_MAX_CLUSTER_VERSION,
];
const CAP_DISK_TOTAL: u16 = 1;
const CAP_DISK_AVAILABLE: u16 = 2;
const CAP_MEMTABLE: u16 = 3;

/// A store status record, as a sender of `schema` writes it.
pub(crate) fn encode_store_status(s: &StoreStatus, schema: StatusSchema) -> Vec<u8> {
    let mut out = Vec::new();
    put_store_status_fields(&mut out, s, schema);
    out
}

/// Decodes a store status record as a reader of `schema` does (one of an older schema
/// skips the later fields). Never panics.
pub(crate) fn decode_store_status(buf: &[u8], schema: StatusSchema) -> D<StoreStatus> {
    store_status_in(buf, schema)
}

pub(super) fn put_store_status_fields(o: &mut Vec<u8>, s: &StoreStatus, schema: StatusSchema) {
    codec::put_u64(o, ST_STORE, s.store.0);
    for p in &s.peers {
        put_peer_status_as(o, ST_PEER, p, schema);
    }
    if let Some(m) = &s.metrics {
        put_metrics(o, ST_METRICS, m);
    }
    if schema < StatusSchema::V2 {
        return;
    }
    let put_u64 = |o: &mut Vec<u8>, tag, v: Option<u64>| {
        if let Some(v) = v {
            codec::put_u64(o, tag, v);
        }
    };
    put_u64(o, ST_SCHEMA, s.status_schema.map(u64::from));
    if let Some(v) = &s.binary_version {
        codec::put_field(o, ST_BINARY_VERSION, v.as_bytes());
    }
    put_u64(o, ST_BOOT_ID, s.boot_id);
    put_u64(o, ST_REPORT_SEQ, s.report_seq);
    put_u64(o, ST_STATE, s.store_state.map(|st| st as u64));
    if let Some(f) = &s.failure {
        codec::put_field(o, ST_FAILURE, f.as_bytes());
    }
    if let Some(c) = &s.capacity {
        codec::put_nested(o, ST_CAPACITY, |o| {
            put_u64(o, CAP_DISK_TOTAL, c.disk_total_bytes);
            put_u64(o, CAP_DISK_AVAILABLE, c.disk_available_bytes);
            put_u64(o, CAP_MEMTABLE, c.memtable_bytes);
        });
    }
    if let Some(c) = s.peer_set_complete {
        put_flag(o, ST_PEER_SET_COMPLETE, c);
    }
    put_u64(o, ST_CLUSTER_VERSION_ACTIVE, s.cluster_version_active.map(u64::from));
    put_u64(o, ST_MAX_CLUSTER_VERSION, s.max_cluster_version.map(u64::from));
}

/// Decodes the store status record in `f`, as this binary reads it.
pub(super) fn store_status_of(f: &Field<'_>) -> D<StoreStatus> {
    store_status_in(f.value, StatusSchema::CURRENT).map_err(|e| e.shifted(f.offset))
}

fn store_status_in(buf: &[u8], schema: StatusSchema) -> D<StoreStatus> {
    let tags = if schema < StatusSchema::V2 { ST_TAGS_V1 } else { ST_TAGS_V2 };
    let r = super::records::parse(buf, tags)?;
    let mut s = StoreStatus::new(
        StoreId(req_u64(&r, ST_STORE, "store missing")?),
        r.repeated(ST_PEER).map(|p| peer_status_as(&p, schema)).collect::<D<_>>()?,
    );
    s.metrics = r.optional(ST_METRICS)?.map(|m| metrics_of(&m)).transpose()?;
    // A reader of schema 1 knows none of the later tags: `parse` skipped them.
    s.status_schema = match r.optional(ST_SCHEMA)? {
        Some(f) => Some(
            u32::try_from(f.as_u64()?)
                .map_err(|_| DecodeError::new(f.offset, "status schema out of range"))?,
        ),
        None => None,
    };
    s.binary_version = opt_str(&r, ST_BINARY_VERSION, "binary version is not UTF-8")?;
    s.boot_id = opt_u64(&r, ST_BOOT_ID)?;
    s.report_seq = opt_u64(&r, ST_REPORT_SEQ)?;
    s.store_state = opt_u64(&r, ST_STATE)?.map(StoreState::from_code);
    s.failure = opt_str(&r, ST_FAILURE, "failure is not UTF-8")?;
    s.capacity = match r.optional(ST_CAPACITY)? {
        Some(f) => {
            let c = nested(&f, &[CAP_DISK_TOTAL, CAP_DISK_AVAILABLE, CAP_MEMTABLE])?;
            Some(Capacity {
                disk_total_bytes: opt_u64(&c, CAP_DISK_TOTAL)?,
                disk_available_bytes: opt_u64(&c, CAP_DISK_AVAILABLE)?,
                memtable_bytes: opt_u64(&c, CAP_MEMTABLE)?,
            })
        }
        None => None,
    };
    s.peer_set_complete = opt_flag(&r, ST_PEER_SET_COMPLETE)?;
    let version = |tag| -> D<Option<u32>> {
        match r.optional(tag)? {
            Some(f) => u32::try_from(f.as_u64()?)
                .map(Some)
                .map_err(|_| DecodeError::new(f.offset, "cluster version over u32")),
            None => Ok(None),
        }
    };
    s.cluster_version_active = version(ST_CLUSTER_VERSION_ACTIVE)?;
    s.max_cluster_version = version(ST_MAX_CLUSTER_VERSION)?;
    Ok(s)
}

fn opt_str(r: &TlvRecord<'_>, tag: u16, what: &'static str) -> D<Option<String>> {
    r.optional(tag)?
        .map(|f| {
            std::str::from_utf8(f.value)
                .map(str::to_owned)
                .map_err(|_| DecodeError::new(f.offset, what))
        })
        .transpose()
}

fn opt_flag(r: &TlvRecord<'_>, tag: u16) -> D<Option<bool>> {
    r.optional(tag)?.map(|f| f.as_bool()).transpose()
}

// ---- the peer status record ----

const PS_REGION: u16 = 1;
const PS_PEER: u16 = 2;
const PS_ROLE: u16 = 3;
const PS_TERM: u16 = 4;
const PS_LEADER: u16 = 5;
const PS_COMMIT: u16 = 6;
const PS_APPLIED: u16 = 7;
const PS_LAST: u16 = 8;
const PS_INITIALIZED: u16 = 9;
const PS_HIBERNATED: u16 = 10;
const PS_FIRST_INDEX: u16 = 11;
const PS_TIMELINE: u16 = 12;
const PS_MERGE_PENDING: u16 = 13;
const PS_PROGRESS: u16 = 14;
const PS_IS_LEARNER: u16 = 15;
// 16: the region's duplication table (`DupTable::encode`), since cluster version 7's
// binary; absent is unknown. 17 came after the schema-2 golden file was written (transactions): a
// reader of that file's time skips it, and its absence is `None`.
const PS_DUPS: u16 = 16;
const PS_OLDEST_LOCK_AGE: u16 = 17;
const PS_IMAGE_HASH: u16 = 18;
const PS_HALTED: u16 = 19;
const PS_TAGS_V1: &[u16] = &[
    PS_REGION,
    PS_PEER,
    PS_ROLE,
    PS_TERM,
    PS_LEADER,
    PS_COMMIT,
    PS_APPLIED,
    PS_LAST,
    PS_INITIALIZED,
    PS_HIBERNATED,
];
const PS_TAGS_V2: &[u16] = &[
    PS_REGION,
    PS_PEER,
    PS_ROLE,
    PS_TERM,
    PS_LEADER,
    PS_COMMIT,
    PS_APPLIED,
    PS_LAST,
    PS_INITIALIZED,
    PS_HIBERNATED,
    PS_FIRST_INDEX,
    PS_TIMELINE,
    PS_MERGE_PENDING,
    PS_PROGRESS,
    PS_IS_LEARNER,
    PS_OLDEST_LOCK_AGE,
    PS_IMAGE_HASH,
    PS_HALTED,
    PS_DUPS,
];
const PG_FOLLOWER: u16 = 1;
const PF_PEER: u16 = 1;
const PF_MATCHED: u16 = 2;
const PF_STATE: u16 = 3;
const PF_RECENT_ACTIVE: u16 = 4;
const PF_TICKS_SINCE_HEARD: u16 = 5;
const IH_INDEX: u16 = 1;
const IH_HASH: u16 = 2;

/// The role code a status carries: `role`'s, except that a follower whose reported
/// role is unknown is sent as 0 (unknown), so a status passed on keeps the unknown.
fn role_code(s: &PeerStatus) -> u64 {
    if s.role == StateRole::Follower && s.reported_role == ReportedRole::Unspecified {
        return ReportedRole::Unspecified.code();
    }
    ReportedRole::from(s.role).code()
}

/// The role routing takes from a code; an unknown code (0, or from a newer node) is a
/// follower: an unknown role is never taken for leadership.
pub(super) fn role_of(code: u64) -> StateRole {
    ReportedRole::from_code(code).routing_role()
}

/// Appends a peer status record as this binary writes it.
pub(super) fn put_peer_status(o: &mut Vec<u8>, tag: u16, s: &PeerStatus) {
    put_peer_status_as(o, tag, s, StatusSchema::CURRENT);
}

fn put_peer_status_as(o: &mut Vec<u8>, tag: u16, s: &PeerStatus, schema: StatusSchema) {
    codec::put_nested(o, tag, |o| {
        put_region(o, PS_REGION, &s.region);
        codec::put_u64(o, PS_PEER, s.peer.0);
        let role = match schema {
            // A first-release sender always knew its role.
            StatusSchema::V1 => ReportedRole::from(s.role).code(),
            StatusSchema::V2 => role_code(s),
        };
        codec::put_u64(o, PS_ROLE, role);
        codec::put_u64(o, PS_TERM, s.term);
        if let Some(l) = s.leader {
            codec::put_u64(o, PS_LEADER, l.0);
        }
        codec::put_u64(o, PS_COMMIT, s.commit);
        codec::put_u64(o, PS_APPLIED, s.applied);
        codec::put_u64(o, PS_LAST, s.last_index);
        put_flag(o, PS_INITIALIZED, s.initialized);
        put_flag(o, PS_HIBERNATED, s.hibernated);
        if schema < StatusSchema::V2 {
            return;
        }
        if let Some(i) = s.first_index {
            codec::put_u64(o, PS_FIRST_INDEX, i);
        }
        if let Some(t) = s.timeline {
            codec::put_u64(o, PS_TIMELINE, t.code());
        }
        if let Some(m) = s.merge_pending {
            put_flag(o, PS_MERGE_PENDING, m);
        }
        if let Some(progress) = &s.progress {
            codec::put_nested(o, PS_PROGRESS, |o| {
                for p in progress {
                    codec::put_nested(o, PG_FOLLOWER, |o| put_follower(o, p));
                }
            });
        }
        if let Some(l) = s.is_learner {
            put_flag(o, PS_IS_LEARNER, l);
        }
        if let Some(age) = s.oldest_lock_age_ms {
            codec::put_u64(o, PS_OLDEST_LOCK_AGE, age);
        }
        if let Some((index, hash)) = s.image_hash {
            codec::put_nested(o, PS_IMAGE_HASH, |o| {
                codec::put_u64(o, IH_INDEX, index);
                codec::put_u64(o, IH_HASH, hash);
            });
        }
        if let Some(h) = &s.halted {
            codec::put_field(o, PS_HALTED, h.as_bytes());
        }
        if let Some(dups) = &s.dups {
            codec::put_nested(o, PS_DUPS, |o| dups.encode(o));
        }
    });
}

fn put_follower(o: &mut Vec<u8>, p: &FollowerProgress) {
    codec::put_u64(o, PF_PEER, p.peer.0);
    codec::put_u64(o, PF_MATCHED, p.matched);
    codec::put_u64(o, PF_STATE, p.state.code());
    if let Some(a) = p.recent_active {
        put_flag(o, PF_RECENT_ACTIVE, a);
    }
    if let Some(t) = p.ticks_since_heard {
        codec::put_u64(o, PF_TICKS_SINCE_HEARD, t);
    }
}

/// Decodes a peer status record as this binary reads it.
pub(super) fn peer_status_of(f: &Field<'_>) -> D<PeerStatus> {
    peer_status_as(f, StatusSchema::CURRENT)
}

fn peer_status_as(f: &Field<'_>, schema: StatusSchema) -> D<PeerStatus> {
    let tags = if schema < StatusSchema::V2 { PS_TAGS_V1 } else { PS_TAGS_V2 };
    let r = nested(f, tags)?;
    let flag = |tag, what| r.required(tag, what).and_then(|f| f.as_bool());
    let role = opt_u64(&r, PS_ROLE)?.unwrap_or(0);
    let progress = match r.optional(PS_PROGRESS)? {
        Some(p) => {
            let p = nested(&p, &[PG_FOLLOWER])?;
            Some(p.repeated(PG_FOLLOWER).map(|f| follower_of(&f)).collect::<D<_>>()?)
        }
        None => None,
    };
    let image_hash = match r.optional(PS_IMAGE_HASH)? {
        Some(h) => {
            let h = nested(&h, &[IH_INDEX, IH_HASH])?;
            Some((
                req_u64(&h, IH_INDEX, "image hash index missing")?,
                req_u64(&h, IH_HASH, "image hash missing")?,
            ))
        }
        None => None,
    };
    Ok(PeerStatus {
        region: region_of(&r.required(PS_REGION, "region missing")?)?,
        peer: PeerId(req_u64(&r, PS_PEER, "peer missing")?),
        role: role_of(role),
        term: req_u64(&r, PS_TERM, "term missing")?,
        leader: opt_u64(&r, PS_LEADER)?.map(PeerId),
        commit: req_u64(&r, PS_COMMIT, "commit missing")?,
        applied: req_u64(&r, PS_APPLIED, "applied missing")?,
        last_index: req_u64(&r, PS_LAST, "last index missing")?,
        initialized: flag(PS_INITIALIZED, "initialized missing")?,
        hibernated: flag(PS_HIBERNATED, "hibernated missing")?,
        reported_role: ReportedRole::from_code(role),
        first_index: opt_u64(&r, PS_FIRST_INDEX)?,
        timeline: opt_u64(&r, PS_TIMELINE)?.map(TimelineState::from_code),
        merge_pending: opt_flag(&r, PS_MERGE_PENDING)?,
        progress,
        is_learner: opt_flag(&r, PS_IS_LEARNER)?,
        image_hash,
        halted: opt_str(&r, PS_HALTED, "halt reason is not UTF-8")?,
        oldest_lock_age_ms: opt_u64(&r, PS_OLDEST_LOCK_AGE)?,
        dups: r
            .optional(PS_DUPS)?
            .map(|f| DupTable::decode(f.value).map_err(|e| e.shifted(f.offset)))
            .transpose()?,
        // The sink state is not on the client wire: unknown.
        sinks: None,
    })
}

fn follower_of(f: &Field<'_>) -> D<FollowerProgress> {
    let r = nested(f, &[PF_PEER, PF_MATCHED, PF_STATE, PF_RECENT_ACTIVE, PF_TICKS_SINCE_HEARD])?;
    Ok(FollowerProgress {
        peer: PeerId(req_u64(&r, PF_PEER, "follower peer missing")?),
        matched: req_u64(&r, PF_MATCHED, "follower matched index missing")?,
        state: ProgressState::from_code(opt_u64(&r, PF_STATE)?.unwrap_or(0)),
        recent_active: opt_flag(&r, PF_RECENT_ACTIVE)?,
        ticks_since_heard: opt_u64(&r, PF_TICKS_SINCE_HEARD)?,
    })
}
