//! Cross-region transactions, the engine's part: each region's lock table and
//! transaction-record table, their on-disk formats, and the gate every reader of them
//! passes (ARCHITECTURE.md, "Transactions").
//!
//! Both tables are range-partitioned by user key like data: a lock by the key it locks,
//! a record by its transaction's primary key. So they move with split and merge, are
//! written into each checkpoint of their region, and are replicated state: they change
//! only when a write-batch round that changed them commits (`ApplyRound::set_txn_lock`,
//! `set_txn_record`, `set_txn_floor`), and are published to readers after the round's
//! data (a reader that checks a key's lock before it takes its read view never misses
//! a resolved value).
//!
//! Every entry is kept as it was encoded, behind its own format byte: a reader decodes
//! an entry only after it checked that byte ([`TXN_FORMAT_MAX_READ`]); an entry of a
//! newer format is kept, moved and checkpointed byte for byte, and never decoded
//! ([`Unreadable::TooNew`]). Fields are TLV (`crate::codec`); unknown tags are skipped
//! by length, never stop the parse; a missing optional field is `None`, and `None` never
//! shortens a lease, decides an outcome or makes a lock look expired. A status or op
//! code of 0 or one this binary does not know decodes as `Unspecified`: the entry is
//! frozen (neither committed nor aborted; counted and reported).
//!
//! ```text
//!  lock (format 1)                         record (format 1)
//!  | format u8 = 1 | TLV:                  | format u8 = 1 | TLV:
//!    1 txn id u64                            1 txn id u64
//!    2 primary key                           2 status u64 (1 pending, 2 committed, 3 aborted,
//!                                              4 staging)
//!    3 op u64 (1 put, 2 delete)              3 primary key
//!    4 value (puts only)                     4 participant key (repeated)
//!    5 created at ms u64                     5 created at ms u64
//!    6 ttl ms u64                            6 ttl ms u64
//!    7 start ts u64 (optional, format 2)     7 last heartbeat ms u64
//!    8 min commit ts u64 (optional)
//!                                            8 coordinator store u64 (optional)
//!                                            9 decided at index u64 (optional)
//!                                           10 start ts u64 (optional, format 2)
//!                                           11 commit ts u64 (optional, format 2)
//!                                           12 min commit ts u64 (optional)
//! ```
//!
//! Format 2 adds the snapshot-isolation fields (`start_ts`, `commit_ts`, all
//! optional). An entry that sets any of them is written with format byte 2, so a
//! binary that reads format 1 only freezes it rather than commit it the format-1 way
//! (straight into its key, not as a version); an entry without them is format 1, byte
//! for byte as a format-1 binary writes it.
//!
//! The minimum commit timestamp (lock tag 8, record tag 12; cluster version 5, async
//! commit of snapshot transactions) keeps format 2: it is set only beside `start_ts`.
//! A format-2 binary that does not know the tag skips it and takes the lock for a
//! two-phase one, which a reader waits for rather than reads past (the safe side).
//!
//! Status 4, `Staging` (async commit, cluster version 4), changes no field's shape: a
//! staging record is format 1 (or 2), and a binary that does not know code 4 decodes
//! it `Unspecified` and freezes it: it never commits, aborts or forgets it.

use bytes::Bytes;

use crate::codec::{self, DecodeError, DecodeResult, Field, TlvRecord, UnknownTags};
use crate::region::StoreId;

mod access;
mod table;

pub(crate) use table::TxnOverlay;

/// The format of the lock and record entries this binary writes without a
/// snapshot-isolation field.
pub const TXN_FORMAT: u8 = 1;
/// The format of an entry that sets a snapshot-isolation field (`start_ts`,
/// `commit_ts`).
pub const TXN_FORMAT_SI: u8 = 2;
/// The newest format of lock and record entries this binary decodes.
pub const TXN_FORMAT_MAX_READ: u8 = 2;

/// A transaction's id: allocated by the cluster directory, unique, never reused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TxnId(pub u64);

impl std::fmt::Display for TxnId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// What a lock will do to its key when its transaction commits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LockOp {
    /// Code 0, or a code this binary does not know: the lock is frozen.
    Unspecified,
    /// Sets the key to the lock's value.
    Put,
    /// Removes the key.
    Delete,
}

/// A lock on one key, held by a transaction between its prewrite and its resolve.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lock {
    /// The transaction that holds it.
    pub txn_id: TxnId,
    /// The transaction's primary key: where its record (its decision) lives.
    pub primary_key: Bytes,
    /// What committing does to the key.
    pub op: LockOp,
    /// The value a `Put` writes (`None` for a `Delete`).
    pub value: Option<Bytes>,
    /// The proposing leader's clock (ms since the Unix epoch) when the lock was written.
    pub created_at_ms: u64,
    /// How long after `created_at_ms` the lock may be resolved by someone else.
    pub ttl_ms: u64,
    /// The snapshot-isolated transaction's start timestamp (format 2); `None`: a
    /// level-1 lock, committed straight into its key.
    pub start_ts: Option<u64>,
    /// Async commit of a snapshot-isolated transaction (cluster version 5): the
    /// transaction commits at or above it (its region's leader stamped it above every
    /// snapshot read it had served on the region). `None`: a two-phase or level-1 lock.
    pub min_commit_ts: Option<u64>,
}

impl Lock {
    /// When the lock expires (ms since the Unix epoch), by its own fields.
    pub fn expires_at_ms(&self) -> u64 {
        self.created_at_ms.saturating_add(self.ttl_ms)
    }

    /// The entry's bytes: format byte, then TLV.
    pub fn encode(&self) -> Vec<u8> {
        let value_len = self.value.as_ref().map_or(0, Bytes::len);
        let mut out = Vec::with_capacity(
            1 + 6 * codec::FIELD_HEADER_LEN + 32 + self.primary_key.len() + value_len,
        );
        let si = self.start_ts.is_some() || self.min_commit_ts.is_some();
        out.push(if si { TXN_FORMAT_SI } else { TXN_FORMAT });
        codec::put_u64(&mut out, L_TXN_ID, self.txn_id.0);
        codec::put_field(&mut out, L_PRIMARY_KEY, &self.primary_key);
        codec::put_u64(&mut out, L_OP, self.op.code());
        if let Some(value) = &self.value {
            codec::put_field(&mut out, L_VALUE, value);
        }
        codec::put_u64(&mut out, L_CREATED_AT_MS, self.created_at_ms);
        codec::put_u64(&mut out, L_TTL_MS, self.ttl_ms);
        if let Some(ts) = self.start_ts {
            codec::put_u64(&mut out, L_START_TS, ts);
        }
        if let Some(ts) = self.min_commit_ts {
            codec::put_u64(&mut out, L_MIN_COMMIT_TS, ts);
        }
        out
    }

    /// Decodes an entry, its format byte checked first; never panics.
    pub fn decode(bytes: &[u8]) -> Result<Lock, Unreadable> {
        let body = check_format(bytes)?;
        let decoded = (|| -> DecodeResult<Lock> {
            let rec = TlvRecord::parse(body, LOCK_TAGS, UnknownTags::Skip)?;
            let op = LockOp::from_code(u64_of(&rec, L_OP, "lock op missing")?);
            let value = rec.optional(L_VALUE)?.map(|f| Bytes::copy_from_slice(f.value));
            if op == LockOp::Put && value.is_none() {
                return Err(DecodeError::new(0, "a put lock without its value"));
            }
            Ok(Lock {
                txn_id: TxnId(u64_of(&rec, L_TXN_ID, "lock txn id missing")?),
                primary_key: bytes_of(rec.required(L_PRIMARY_KEY, "lock primary key missing")?),
                op,
                value,
                created_at_ms: u64_of(&rec, L_CREATED_AT_MS, "lock created at missing")?,
                ttl_ms: u64_of(&rec, L_TTL_MS, "lock ttl missing")?,
                start_ts: rec.optional(L_START_TS)?.map(|f| f.as_u64()).transpose()?,
                min_commit_ts: rec.optional(L_MIN_COMMIT_TS)?.map(|f| f.as_u64()).transpose()?,
            })
        })();
        decoded.map_err(|e| Unreadable::Corrupt(e.shifted(1)))
    }
}

impl LockOp {
    /// The op's code in an entry (0: unspecified).
    pub fn code(&self) -> u64 {
        match self {
            LockOp::Unspecified => 0,
            LockOp::Put => 1,
            LockOp::Delete => 2,
        }
    }

    /// The op of `code`: `Unspecified` for 0 and every code this binary does not know.
    pub fn from_code(code: u64) -> LockOp {
        match code {
            1 => LockOp::Put,
            2 => LockOp::Delete,
            _ => LockOp::Unspecified,
        }
    }
}

/// Where a transaction's decision stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TxnStatus {
    /// Code 0, or a code this binary does not know: the record is frozen.
    Unspecified,
    /// Prewritten; not decided.
    Pending,
    /// Decided: every lock commits.
    Committed,
    /// Decided: every lock is dropped.
    Aborted,
    /// Async commit (code 4): every prewrite was sent at once, and the transaction is
    /// committed as soon as all of them are applied. Not decided yet: it becomes
    /// `Committed` once every participant key is known locked by it, `Aborted` once
    /// one is known never to be (`raft::txn::staging`).
    Staging,
}

/// A transaction's record, in its primary key's region: its decision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TxnRecord {
    /// The transaction.
    pub txn_id: TxnId,
    /// Its status.
    pub status: TxnStatus,
    /// Its primary key (the record's place).
    pub primary_key: Bytes,
    /// Every key it writes, the primary included.
    pub participants: Vec<Bytes>,
    /// The proposing leader's clock when the record was created.
    pub created_at_ms: u64,
    /// How long after its last heartbeat the transaction may be aborted by others.
    pub ttl_ms: u64,
    /// The last heartbeat (at first `created_at_ms`).
    pub last_heartbeat_ms: u64,
    /// The store whose client coordinated it, for diagnostics.
    pub coordinator: Option<StoreId>,
    /// The Raft index of the command that decided it.
    pub decided_at_index: Option<u64>,
    /// The snapshot-isolated transaction's start timestamp (format 2); `None`: a
    /// level-1 transaction.
    pub start_ts: Option<u64>,
    /// Its commit timestamp, set when it commits (format 2).
    pub commit_ts: Option<u64>,
    /// Async commit of a snapshot-isolated transaction (cluster version 5): the
    /// minimum commit timestamp the primary's prewrite stamped (the one its locks in
    /// this region hold); a decision commits at or above it.
    pub min_commit_ts: Option<u64>,
}

impl TxnRecord {
    /// When a pending transaction may be aborted by others (ms since the Unix epoch).
    pub fn expires_at_ms(&self) -> u64 {
        self.last_heartbeat_ms.saturating_add(self.ttl_ms)
    }

    /// The entry's bytes: format byte, then TLV.
    pub fn encode(&self) -> Vec<u8> {
        let keys: usize = self.participants.iter().map(|k| k.len() + codec::FIELD_HEADER_LEN).sum();
        let mut out = Vec::with_capacity(
            1 + 8 * (codec::FIELD_HEADER_LEN + 8) + self.primary_key.len() + keys,
        );
        let si =
            self.start_ts.is_some() || self.commit_ts.is_some() || self.min_commit_ts.is_some();
        out.push(if si { TXN_FORMAT_SI } else { TXN_FORMAT });
        codec::put_u64(&mut out, R_TXN_ID, self.txn_id.0);
        codec::put_u64(&mut out, R_STATUS, self.status.code());
        codec::put_field(&mut out, R_PRIMARY_KEY, &self.primary_key);
        for key in &self.participants {
            codec::put_field(&mut out, R_PARTICIPANT, key);
        }
        codec::put_u64(&mut out, R_CREATED_AT_MS, self.created_at_ms);
        codec::put_u64(&mut out, R_TTL_MS, self.ttl_ms);
        codec::put_u64(&mut out, R_LAST_HEARTBEAT_MS, self.last_heartbeat_ms);
        if let Some(store) = self.coordinator {
            codec::put_u64(&mut out, R_COORDINATOR, store.0);
        }
        if let Some(index) = self.decided_at_index {
            codec::put_u64(&mut out, R_DECIDED_AT_INDEX, index);
        }
        if let Some(ts) = self.start_ts {
            codec::put_u64(&mut out, R_START_TS, ts);
        }
        if let Some(ts) = self.commit_ts {
            codec::put_u64(&mut out, R_COMMIT_TS, ts);
        }
        if let Some(ts) = self.min_commit_ts {
            codec::put_u64(&mut out, R_MIN_COMMIT_TS, ts);
        }
        out
    }

    /// Decodes an entry, its format byte checked first; never panics.
    pub fn decode(bytes: &[u8]) -> Result<TxnRecord, Unreadable> {
        let body = check_format(bytes)?;
        let decoded = (|| -> DecodeResult<TxnRecord> {
            let rec = TlvRecord::parse(body, RECORD_TAGS, UnknownTags::Skip)?;
            let optional_u64 = |tag| rec.optional(tag)?.map(|f| f.as_u64()).transpose();
            Ok(TxnRecord {
                txn_id: TxnId(u64_of(&rec, R_TXN_ID, "record txn id missing")?),
                status: TxnStatus::from_code(u64_of(&rec, R_STATUS, "record status missing")?),
                primary_key: bytes_of(rec.required(R_PRIMARY_KEY, "record primary key missing")?),
                participants: rec.repeated(R_PARTICIPANT).map(bytes_of).collect(),
                created_at_ms: u64_of(&rec, R_CREATED_AT_MS, "record created at missing")?,
                ttl_ms: u64_of(&rec, R_TTL_MS, "record ttl missing")?,
                last_heartbeat_ms: u64_of(
                    &rec,
                    R_LAST_HEARTBEAT_MS,
                    "record last heartbeat missing",
                )?,
                coordinator: optional_u64(R_COORDINATOR)?.map(StoreId),
                decided_at_index: optional_u64(R_DECIDED_AT_INDEX)?,
                start_ts: optional_u64(R_START_TS)?,
                commit_ts: optional_u64(R_COMMIT_TS)?,
                min_commit_ts: optional_u64(R_MIN_COMMIT_TS)?,
            })
        })();
        decoded.map_err(|e| Unreadable::Corrupt(e.shifted(1)))
    }
}

impl TxnStatus {
    /// The status's code in an entry (0: unspecified).
    pub fn code(self) -> u64 {
        match self {
            TxnStatus::Unspecified => 0,
            TxnStatus::Pending => 1,
            TxnStatus::Committed => 2,
            TxnStatus::Aborted => 3,
            TxnStatus::Staging => 4,
        }
    }

    /// The status of `code`: `Unspecified` for 0 and every code this binary does not
    /// know.
    pub fn from_code(code: u64) -> TxnStatus {
        match code {
            1 => TxnStatus::Pending,
            2 => TxnStatus::Committed,
            3 => TxnStatus::Aborted,
            4 => TxnStatus::Staging,
            _ => TxnStatus::Unspecified,
        }
    }
}

// Tags of a lock entry (format 1). Never renumbered or retyped (the schema test in
// `tests/golden.rs` pins them); a later field takes a new tag.
const L_TXN_ID: u16 = 1;
const L_PRIMARY_KEY: u16 = 2;
const L_OP: u16 = 3;
const L_VALUE: u16 = 4;
const L_CREATED_AT_MS: u16 = 5;
const L_TTL_MS: u16 = 6;
// Format 2.
const L_START_TS: u16 = 7;
// Async commit of snapshot transactions (cluster version 5); still format 2.
const L_MIN_COMMIT_TS: u16 = 8;
const LOCK_TAGS: &[u16] = &[
    L_TXN_ID,
    L_PRIMARY_KEY,
    L_OP,
    L_VALUE,
    L_CREATED_AT_MS,
    L_TTL_MS,
    L_START_TS,
    L_MIN_COMMIT_TS,
];
// Tags of a record entry (format 1).
const R_TXN_ID: u16 = 1;
const R_STATUS: u16 = 2;
const R_PRIMARY_KEY: u16 = 3;
const R_PARTICIPANT: u16 = 4;
const R_CREATED_AT_MS: u16 = 5;
const R_TTL_MS: u16 = 6;
const R_LAST_HEARTBEAT_MS: u16 = 7;
const R_COORDINATOR: u16 = 8;
const R_DECIDED_AT_INDEX: u16 = 9;
// Format 2.
const R_START_TS: u16 = 10;
const R_COMMIT_TS: u16 = 11;
// Async commit of snapshot transactions (cluster version 5); still format 2.
const R_MIN_COMMIT_TS: u16 = 12;
const RECORD_TAGS: &[u16] = &[
    R_TXN_ID,
    R_STATUS,
    R_PRIMARY_KEY,
    R_PARTICIPANT,
    R_CREATED_AT_MS,
    R_TTL_MS,
    R_LAST_HEARTBEAT_MS,
    R_COORDINATOR,
    R_DECIDED_AT_INDEX,
    R_START_TS,
    R_COMMIT_TS,
    R_MIN_COMMIT_TS,
];

/// The TLV body of an entry whose format byte this binary reads; nothing after a
/// newer format byte is looked at.
fn check_format(bytes: &[u8]) -> Result<&[u8], Unreadable> {
    match bytes.split_first() {
        None => Err(Unreadable::Corrupt(DecodeError::new(0, "empty entry"))),
        Some((&0, _)) => Err(Unreadable::Corrupt(DecodeError::new(0, "entry format 0"))),
        Some((&format, _)) if format > TXN_FORMAT_MAX_READ => Err(Unreadable::TooNew { format }),
        Some((_, body)) => Ok(body),
    }
}

fn u64_of(rec: &TlvRecord<'_>, tag: u16, what: &'static str) -> DecodeResult<u64> {
    rec.required(tag, what)?.as_u64()
}

fn bytes_of(field: Field<'_>) -> Bytes {
    Bytes::copy_from_slice(field.value)
}

/// Why a lock or record entry was not decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Unreadable {
    /// Written in a format newer than [`TXN_FORMAT_MAX_READ`]: not decoded at all.
    TooNew {
        /// The entry's format byte.
        format: u8,
    },
    /// Damaged, or a required field is missing.
    Corrupt(DecodeError),
}

impl Unreadable {
    /// A short reason, for metrics labels: `"too_new"` or `"corrupt"`.
    pub fn reason(&self) -> &'static str {
        match self {
            Unreadable::TooNew { .. } => "too_new",
            Unreadable::Corrupt(_) => "corrupt",
        }
    }
}

/// The format byte of an encoded entry (`None`: empty).
pub fn format_of(bytes: &[u8]) -> Option<u8> {
    bytes.first().copied()
}

/// One region's transaction state: what a checkpoint holds, and what a split
/// partitions and a merge joins. Entries are kept encoded (see the module docs).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TxnTable {
    /// Locks by the key they lock.
    pub locks: std::collections::BTreeMap<Bytes, Bytes>,
    /// Records by (primary key, txn id).
    pub records: std::collections::BTreeMap<(Bytes, u64), Bytes>,
    /// Transaction ids below it are finished here: a prewrite below it is refused.
    pub floor: u64,
    /// The version GC's floor: the cluster safepoint the region last collected its
    /// transactional keyspace's versions at (0: never). A snapshot read, prewrite or
    /// commit with a start timestamp below it is refused (`SnapshotTooOld`): what it
    /// would read may be gone. Raised before the data of the round that raises it is
    /// visible (`Engine::commit_writes`); a split copies it, a merge takes the larger.
    pub gc_floor: u64,
}

impl TxnTable {
    /// True if it holds no lock, no record and no floor.
    pub fn is_empty(&self) -> bool {
        self.locks.is_empty() && self.records.is_empty() && self.floor == 0 && self.gc_floor == 0
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn lock() -> Lock {
        Lock {
            min_commit_ts: None,
            txn_id: TxnId(41),
            primary_key: Bytes::from_static(b"alpha"),
            op: LockOp::Put,
            value: Some(Bytes::from_static(b"v1")),
            created_at_ms: 1_700_000_000_000,
            ttl_ms: 3_000,
            start_ts: None,
        }
    }

    fn record() -> TxnRecord {
        TxnRecord {
            min_commit_ts: None,
            txn_id: TxnId(41),
            status: TxnStatus::Pending,
            primary_key: Bytes::from_static(b"alpha"),
            participants: vec![Bytes::from_static(b"alpha"), Bytes::from_static(b"omega")],
            created_at_ms: 1_700_000_000_000,
            ttl_ms: 3_000,
            last_heartbeat_ms: 1_700_000_001_000,
            coordinator: Some(StoreId(2)),
            decided_at_index: None,
            start_ts: None,
            commit_ts: None,
        }
    }

    /// The entry with its fields rewritten by `edit` (tag, value) -> kept fields.
    fn rewrite(entry: &[u8], edit: impl Fn(u16, &[u8]) -> Vec<(u16, Vec<u8>)>) -> Vec<u8> {
        let mut out = vec![entry[0]];
        for f in codec::fields(&entry[1..]).unwrap() {
            for (tag, value) in edit(f.tag, f.value) {
                codec::put_field(&mut out, tag, &value);
            }
        }
        out
    }

    #[test]
    fn entries_round_trip_and_optional_fields_may_be_absent() {
        assert_eq!(Lock::decode(&lock().encode()), Ok(lock()));
        assert_eq!(TxnRecord::decode(&record().encode()), Ok(record()));
        let delete = Lock { op: LockOp::Delete, value: None, ..lock() };
        assert_eq!(Lock::decode(&delete.encode()), Ok(delete));
        let bare = TxnRecord { coordinator: None, decided_at_index: None, ..record() };
        assert_eq!(TxnRecord::decode(&bare.encode()), Ok(bare));
    }

    #[test]
    fn a_newer_format_is_too_new_and_nothing_after_its_byte_is_read() {
        // Whatever follows the byte (here: not even TLV), the answer is the same.
        for tail in [&b""[..], b"\xff\xff\xff", &lock().encode()[1..]] {
            let mut entry = vec![TXN_FORMAT_MAX_READ + 1];
            entry.extend_from_slice(tail);
            assert_eq!(Lock::decode(&entry), Err(Unreadable::TooNew { format: 3 }));
            assert_eq!(TxnRecord::decode(&entry), Err(Unreadable::TooNew { format: 3 }));
        }
        assert!(matches!(Lock::decode(&[]), Err(Unreadable::Corrupt(_))));
        assert!(matches!(Lock::decode(&[0]), Err(Unreadable::Corrupt(_))), "format 0");
        assert_eq!(format_of(&lock().encode()), Some(TXN_FORMAT));
        assert_eq!(Unreadable::TooNew { format: 9 }.reason(), "too_new");
    }

    #[test]
    fn a_snapshot_field_makes_format_2_and_none_keeps_format_1_byte_for_byte() {
        let si_lock = Lock { start_ts: Some(7), ..lock() };
        assert_eq!(format_of(&si_lock.encode()), Some(TXN_FORMAT_SI));
        assert_eq!(Lock::decode(&si_lock.encode()), Ok(si_lock.clone()));
        // Format 1 is what a format-1 binary writes: the same bytes minus the field.
        let mut v1 = si_lock.encode();
        v1.truncate(v1.len() - codec::FIELD_HEADER_LEN - 8);
        v1[0] = TXN_FORMAT;
        assert_eq!(v1, lock().encode());
        for (start_ts, commit_ts) in [(Some(5), None), (None, Some(9)), (Some(5), Some(9))] {
            let r = TxnRecord { start_ts, commit_ts, ..record() };
            assert_eq!(format_of(&r.encode()), Some(TXN_FORMAT_SI));
            assert_eq!(TxnRecord::decode(&r.encode()), Ok(r));
        }
        assert_eq!(format_of(&record().encode()), Some(TXN_FORMAT));
    }

    #[test]
    fn unknown_tags_are_skipped_and_later_known_fields_still_read() {
        // An unknown field first: the parse goes on past it (it never stops early).
        let entry = rewrite(&record().encode(), |tag, v| {
            let mut out = Vec::new();
            if tag == 1 {
                out.push((99, b"from a newer writer".to_vec()));
            }
            out.push((tag, v.to_vec()));
            out
        });
        assert_eq!(TxnRecord::decode(&entry), Ok(record()));
    }

    #[test]
    fn a_missing_required_field_is_corrupt() {
        for tag in [1u16, 2, 3, 5, 6] {
            let entry = rewrite(&lock().encode(), |t, v| {
                if t == tag { Vec::new() } else { vec![(t, v.to_vec())] }
            });
            assert!(matches!(Lock::decode(&entry), Err(Unreadable::Corrupt(_))), "lock tag {tag}");
        }
        // A put without its value cannot be committed: corrupt, not a put of nothing.
        let entry =
            rewrite(
                &lock().encode(),
                |t, v| {
                    if t == 4 { Vec::new() } else { vec![(t, v.to_vec())] }
                },
            );
        assert!(matches!(Lock::decode(&entry), Err(Unreadable::Corrupt(_))));
        for tag in [1u16, 2, 3, 5, 6, 7] {
            let entry = rewrite(&record().encode(), |t, v| {
                if t == tag { Vec::new() } else { vec![(t, v.to_vec())] }
            });
            let result = TxnRecord::decode(&entry);
            assert!(matches!(result, Err(Unreadable::Corrupt(_))), "record tag {tag}");
        }
    }

    #[test]
    fn unknown_codes_decode_as_unspecified() {
        // Status 4 (staging) is known since async commit; an older binary ran this
        // test with 4 among the unknown codes: it freezes a staging record.
        for code in [0u64, 5, u64::MAX] {
            let entry = rewrite(&record().encode(), |t, v| {
                vec![(t, if t == 2 { code.to_le_bytes().to_vec() } else { v.to_vec() })]
            });
            assert_eq!(TxnRecord::decode(&entry).unwrap().status, TxnStatus::Unspecified);
        }
        let staging = rewrite(&record().encode(), |t, v| {
            vec![(t, if t == 2 { 4u64.to_le_bytes().to_vec() } else { v.to_vec() })]
        });
        assert_eq!(TxnRecord::decode(&staging).unwrap().status, TxnStatus::Staging);
        for code in [0u64, 4, u64::MAX] {
            let entry = rewrite(&lock().encode(), |t, v| {
                vec![(t, if t == 3 { code.to_le_bytes().to_vec() } else { v.to_vec() })]
            });
            assert_eq!(Lock::decode(&entry).unwrap().op, LockOp::Unspecified);
        }
    }

    fn bytes_of_len(max: usize) -> impl Strategy<Value = Bytes> {
        proptest::collection::vec(any::<u8>(), 0..max).prop_map(Bytes::from)
    }

    fn any_lock() -> impl Strategy<Value = Lock> {
        (
            (any::<u64>(), bytes_of_len(16), 0u64..4, bytes_of_len(24)),
            (any::<u64>(), any::<u64>(), proptest::option::of(any::<u64>())),
        )
            .prop_map(
                |((id, primary_key, op, value), (created_at_ms, ttl_ms, start_ts))| {
                    let op = LockOp::from_code(op);
                    let value = (op == LockOp::Put || value.len() % 2 == 1).then_some(value);
                    Lock {
                        min_commit_ts: None,
                        txn_id: TxnId(id),
                        primary_key,
                        op,
                        value,
                        created_at_ms,
                        ttl_ms,
                        start_ts,
                    }
                },
            )
    }

    fn any_record() -> impl Strategy<Value = TxnRecord> {
        (
            (any::<u64>(), 0u64..5, bytes_of_len(16)),
            proptest::collection::vec(bytes_of_len(8), 0..5),
            (any::<u64>(), any::<u64>(), any::<u64>()),
            (
                proptest::option::of(any::<u64>()),
                proptest::option::of(any::<u64>()),
                proptest::option::of(any::<u64>()),
                proptest::option::of(any::<u64>()),
            ),
        )
            .prop_map(|((id, status, primary_key), participants, times, optional)| {
                TxnRecord {
                    min_commit_ts: None,
                    txn_id: TxnId(id),
                    status: TxnStatus::from_code(status),
                    primary_key,
                    participants,
                    created_at_ms: times.0,
                    ttl_ms: times.1,
                    last_heartbeat_ms: times.2,
                    coordinator: optional.0.map(StoreId),
                    decided_at_index: optional.1,
                    start_ts: optional.2,
                    commit_ts: optional.3,
                }
            })
    }

    proptest! {
        #[test]
        fn every_entry_round_trips(lock in any_lock(), record in any_record()) {
            prop_assert_eq!(Lock::decode(&lock.encode()), Ok(lock));
            prop_assert_eq!(TxnRecord::decode(&record.encode()), Ok(record));
        }

        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..120)) {
            let _ = Lock::decode(&bytes);
            let _ = TxnRecord::decode(&bytes);
            let mut v1 = vec![TXN_FORMAT];
            v1.extend_from_slice(&bytes);
            let _ = Lock::decode(&v1);
            let _ = TxnRecord::decode(&v1);
        }

        #[test]
        fn single_bit_flips_never_panic(lock in any_lock(), record in any_record()) {
            for entry in [lock.encode(), record.encode()] {
                for bit in 0..entry.len() * 8 {
                    let mut flipped = entry.clone();
                    flipped[bit / 8] ^= 1 << (bit % 8);
                    let _ = Lock::decode(&flipped);
                    let _ = TxnRecord::decode(&flipped);
                }
            }
        }
    }
}
