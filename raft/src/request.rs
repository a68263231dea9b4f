//! The requests a store takes (writes, reads, membership changes, admin commands) and
//! what they answer; each carries the [`Reply`] that receives its outcome.

use bytes::Bytes;
use regionkv_engine::{Epoch, MergeState, PeerId, Region, RegionId};

use crate::command::{AdminCmd, Op, WriteSession};
use crate::error::Result;

/// A callback that receives the outcome of a request.
pub type Reply<T> = Box<dyn FnOnce(Result<T>) + Send>;

/// A client write to one region.
pub struct WriteRequest {
    /// The region the client routed the write to.
    pub region: RegionId,
    /// The region's epoch as the client knows it.
    pub epoch: Epoch,
    /// The changes; they apply together or not at all.
    pub ops: Vec<Op>,
    /// The client's session and the write's number in it, the same for every retry:
    /// the write then applies at most once, however often it is sent. `None`: applied
    /// each time it is sent (a retry after an unknown outcome may apply it twice).
    pub session: Option<WriteSession>,
    /// Called once the write is applied (or refused).
    pub reply: Reply<()>,
}

/// What a read asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Query {
    /// The value of one key.
    Get {
        /// The key.
        key: Bytes,
        /// The snapshot timestamp a transaction reads at (`Transaction::get`), so that
        /// the region can refuse a read below what it collected (`SnapshotTooOld`).
        /// `None`: a raw read, checked against nothing. The region also records it before it reads
        /// (`txn::concurrency`: a one-phase commit lands above it).
        read_ts: Option<u64>,
    },
    /// Up to `limit` pairs with `start <= key < end` (`end == None`: to the region's end),
    /// and no more than the store's caps (`StoreConfig::scan_rows_max`,
    /// `scan_bytes_max`): a capped answer says where to resume ([`Page::resume`]).
    Scan {
        /// First key (inclusive).
        start: Bytes,
        /// Last key (exclusive).
        end: Option<Bytes>,
        /// Most pairs returned.
        limit: usize,
        /// As for `Get`: the snapshot timestamp of a transaction's scan; `None`: raw.
        read_ts: Option<u64>,
    },
}

impl Query {
    /// The snapshot timestamp the read is made at (`None`: a raw read).
    pub fn read_ts(&self) -> Option<u64> {
        match self {
            Query::Get { read_ts, .. } | Query::Scan { read_ts, .. } => *read_ts,
        }
    }
}

/// What a read returns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum QueryResult {
    /// The value of a `Get`.
    Value(Option<Bytes>),
    /// The pairs of a `Scan`, in key order, and whether the store's caps cut it short.
    Rows(Page),
}

/// One answer to a scan: its pairs in key order, and where to resume if the store's
/// caps stopped it before its limit and its range's end.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Page {
    /// The pairs, in key order.
    pub rows: Vec<(Bytes, Bytes)>,
    /// `Some(key)`: the store's caps stopped the scan; `key` is the first pair not
    /// answered, and a scan from it continues exactly after `rows`. `None`: the scan
    /// reached its limit or the end of its range (a complete answer).
    pub resume: Option<Bytes>,
}

impl Page {
    /// A complete answer: `rows` and nothing to resume.
    pub fn complete(rows: Vec<(Bytes, Bytes)>) -> Page {
        Page { rows, resume: None }
    }
}

/// The caps of one scan (a store's `StoreConfig::scan_rows_max`, `scan_bytes_max`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ScanCaps {
    /// Most rows.
    pub rows_max: usize,
    /// Most bytes of keys and values (a first row is answered whatever its size).
    pub bytes_max: usize,
}

/// Up to `limit` live pairs of `view` with `start <= key < end`, stopping at `caps`
/// (never reading past them): the one scan loop of the store's reads and of a node's
/// local scan.
///
/// Every key and value of the page is copied once, into one buffer that the page's
/// `Bytes` share (one allocation per page, not two per row: for a 1,000-row scan the
/// per-row allocations and frees were the largest cost after the memtable walk). A
/// row kept by the caller keeps the page's buffer alive with it.
pub fn scan_page(
    view: &regionkv_engine::ReadView,
    start: &[u8],
    end: Option<&[u8]>,
    limit: usize,
    caps: ScanCaps,
) -> Page {
    let mut page = Page::default();
    if limit == 0 {
        return page;
    }
    let rows_max = caps.rows_max.max(1);
    let mut bytes = 0usize;
    let mut buf: Vec<u8> = Vec::new();
    // (key length, value length) of each row, laid end to end in `buf`.
    let mut lens: Vec<(usize, usize)> = Vec::new();
    view.for_each(start, end, |key, value| {
        let size = key.len() + value.len();
        if lens.len() >= rows_max
            || (!lens.is_empty() && bytes.saturating_add(size) > caps.bytes_max)
        {
            // Capped: this pair is the first one not answered.
            page.resume = Some(Bytes::copy_from_slice(key));
            return false;
        }
        bytes += size;
        buf.extend_from_slice(key);
        buf.extend_from_slice(value);
        lens.push((key.len(), value.len()));
        // The client's own limit ends the scan: a complete answer.
        lens.len() < limit
    });
    if buf.capacity() > buf.len() + buf.len() / 4 {
        buf.shrink_to_fit(); // the page's rows hold the buffer: no more than they need
    }
    let buf = Bytes::from(buf);
    page.rows.reserve_exact(lens.len());
    let mut at = 0;
    for (k, v) in lens {
        page.rows.push((buf.slice(at..at + k), buf.slice(at + k..at + k + v)));
        at += k + v;
    }
    page
}

/// A linearizable read of one region.
pub struct ReadRequest {
    /// The region.
    pub region: RegionId,
    /// The region's epoch as the client knows it.
    pub epoch: Epoch,
    /// What to read.
    pub query: Query,
    /// Called with the result.
    pub reply: Reply<QueryResult>,
}

/// One membership change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeerChange {
    /// Add a voting replica.
    AddVoter(regionkv_engine::Peer),
    /// Add a non-voting replica (it catches up without affecting quorums).
    AddLearner(regionkv_engine::Peer),
    /// Remove a replica.
    Remove(PeerId),
}

/// A membership change of one region.
pub struct ChangePeersRequest {
    /// The region.
    pub region: RegionId,
    /// The region's epoch as the caller knows it.
    pub epoch: Epoch,
    /// The change.
    pub change: PeerChange,
    /// Called with the region after the change is applied.
    pub reply: Reply<Region>,
}

/// A change to a region's shape (split, merge), proposed to its leader.
pub struct AdminRequest {
    /// The region.
    pub region: RegionId,
    /// The region's epoch as the caller knows it.
    pub epoch: Epoch,
    /// The command.
    pub cmd: AdminCmd,
    /// Called with the outcome once the command is applied (or refused).
    pub reply: Reply<AdminResult>,
}

/// What an applied admin command produced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AdminResult {
    /// The regions of a split, in key order; the first is the parent.
    Split(Vec<Region>),
    /// A merge source, prepared: it takes no writes until merged or rolled back.
    Prepared {
        /// The source as the prepare left it.
        source: Region,
        /// Index of the prepare command in the source's log.
        prepare_index: u64,
        /// Its term.
        prepare_term: u64,
    },
    /// The target of a merge, grown over the source's range.
    Merged(Region),
    /// A merge source after its rollback: it takes writes again.
    RolledBack(Region),
    /// The leader's hash of its image of the region at the `ComputeHash` command's
    /// index (`crate::image_hash`).
    ImageHash {
        /// The command's index.
        index: u64,
        /// The hash.
        hash: u64,
    },
}

/// A merge source as its leader sees it, for whoever drives the merge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MergeStatus {
    /// The region.
    pub region: Region,
    /// The merge prepared on it, if any.
    pub merge: Option<MergeState>,
    /// True once every replica's log holds the prepare command: the merge may commit
    /// (a lagging replica can then finish applying its own log).
    pub all_matched: bool,
}
