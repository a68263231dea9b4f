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
//!    2 primary key                           2 status u64 (1 pending, 2 committed, 3 aborted)
//!    3 op u64 (1 put, 2 delete)              3 primary key
//!    4 value (puts only)                     4 participant key (repeated)
//!    5 created at ms u64                     5 created at ms u64
//!    6 ttl ms u64                            6 ttl ms u64
//!                                            7 last heartbeat ms u64
//!                                            8 coordinator store u64 (optional)
//!                                            9 decided at index u64 (optional)
//! ```

use bytes::Bytes;

use crate::codec::DecodeError;

mod access;
use crate::region::StoreId;

/// The format of the lock and record entries this binary writes.
pub const TXN_FORMAT: u8 = 1;
/// The newest format of lock and record entries this binary decodes.
pub const TXN_FORMAT_MAX_READ: u8 = 1;

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
}

impl Lock {
    /// When the lock expires (ms since the Unix epoch), by its own fields.
    pub fn expires_at_ms(&self) -> u64 {
        self.created_at_ms.saturating_add(self.ttl_ms)
    }

    /// The entry's bytes: format byte, then TLV.
    pub fn encode(&self) -> Vec<u8> {
        unimplemented!("txn-engine")
    }

    /// Decodes an entry, its format byte checked first; never panics.
    pub fn decode(bytes: &[u8]) -> Result<Lock, Unreadable> {
        let _ = bytes;
        unimplemented!("txn-engine")
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
}

impl TxnRecord {
    /// When a pending transaction may be aborted by others (ms since the Unix epoch).
    pub fn expires_at_ms(&self) -> u64 {
        self.last_heartbeat_ms.saturating_add(self.ttl_ms)
    }

    /// The entry's bytes: format byte, then TLV.
    pub fn encode(&self) -> Vec<u8> {
        unimplemented!("txn-engine")
    }

    /// Decodes an entry, its format byte checked first; never panics.
    pub fn decode(bytes: &[u8]) -> Result<TxnRecord, Unreadable> {
        let _ = bytes;
        unimplemented!("txn-engine")
    }
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
}

impl TxnTable {
    /// True if it holds no lock, no record and no floor.
    pub fn is_empty(&self) -> bool {
        self.locks.is_empty() && self.records.is_empty() && self.floor == 0
    }
}
