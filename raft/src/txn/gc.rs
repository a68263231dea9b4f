//! Version GC of the transactional keyspace (ARCHITECTURE.md, "Version GC"): what a
//! region's leader proposes once the cluster safepoint moved past the region's GC
//! floor, planned sans I/O from a read view of the region.
//!
//! At safepoint `s`, for each user key, every version older than the newest one
//! committed at or below `s` goes, and that newest one too if it is a delete. A
//! snapshot at or above `s` reads exactly what it read before (its newest visible
//! version is kept, or it was a delete and reads as absent either way); one below `s`
//! is refused by the region (`Error::SnapshotTooOld`) once the floor is `s`. Locks
//! live in the transaction tables, not in the data: they are never collected;
//! versions above `s` never are.
//!
//! The plan is [`TxnCmd::CollectVersions`] chunks of at most `chunk_keys` keys (at
//! least one chunk, which raises the floor even when nothing is to go). Each user
//! key's versions are listed oldest first: a delete collected as the newest below
//! goes after every older put of its key, so a key cut across two chunks (or a
//! crash between them) never reads an older put where it read nothing. Each chunk
//! raises the floor to `s` in its own round, published before that round's deletions
//! (`Engine::commit_writes`), and lists exact keys: its apply is decided by the entry
//! alone, and a chunk applied again deletes nothing more.

use bytes::Bytes;
use regionkv_engine::{ReadView, Region};

use super::{TxnCmd, mvcc};

/// Keys per chunk by default: a few hundred short keys, far below an entry's limit.
pub const GC_CHUNK_KEYS: usize = 256;

/// What a plan found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GcPlan {
    /// The chunks to propose, in order (never empty).
    pub chunks: Vec<TxnCmd>,
    /// Version keys the plan deletes.
    pub collected: u64,
    /// Version keys it looked at.
    pub scanned: u64,
}

/// Plans the version GC of `region` (as seen through `view`) at `safepoint`.
pub fn plan(view: &ReadView, region: &Region, safepoint: u64, chunk_keys: usize) -> GcPlan {
    let chunk_keys = chunk_keys.max(1);
    // The region's part of the keyspace.
    let low = [mvcc::TXN_KEYSPACE];
    let high = [mvcc::TXN_KEYSPACE + 1];
    let start: &[u8] = if region.start.as_slice() > &low[..] { &region.start } else { &low };
    let end: &[u8] = match region.end.as_deref() {
        Some(e) if e < &high[..] => e,
        _ => &high,
    };
    let mut out = GcPlan::default();
    let mut keys: Vec<Bytes> = Vec::new();
    if start < end {
        // The user key being walked, and whether its newest version at or below the
        // safepoint was met already (every later one of it, older, goes).
        let mut current: Option<Bytes> = None;
        let mut kept_below = false;
        // The current user key's versions to delete, newest first as scanned.
        let mut of_key: Vec<Bytes> = Vec::new();
        view.for_each(start, Some(end), |key, value| {
            let Some((user, ts)) = mvcc::decode_version_key(key) else { return true };
            out.scanned += 1;
            if current.as_ref() != Some(&user) {
                current = Some(user);
                kept_below = false;
                keys.extend(of_key.drain(..).rev());
            }
            if ts > safepoint {
                return true; // above the safepoint: never collected
            }
            if kept_below {
                of_key.push(Bytes::copy_from_slice(key));
            } else {
                kept_below = true;
                // The newest at or below: kept, unless it is a delete (or unreadable as a
                // version: then kept, never guessed).
                let stored = Bytes::copy_from_slice(value);
                if mvcc::decode_version_value(&stored) == Ok(None) {
                    of_key.push(Bytes::copy_from_slice(key));
                }
            }
            true
        });
        keys.extend(of_key.drain(..).rev());
    }
    out.collected = keys.len() as u64;
    let mut chunks: Vec<TxnCmd> = keys
        .chunks(chunk_keys)
        .map(|c| TxnCmd::CollectVersions { safepoint, keys: c.to_vec() })
        .collect();
    if chunks.is_empty() {
        chunks.push(TxnCmd::CollectVersions { safepoint, keys: Vec::new() });
    }
    out.chunks = chunks;
    out
}

/// Why a committed `CollectVersions` must not apply: a key that is not a version key
/// committed at or below the safepoint (decided from the entry alone).
pub(crate) fn check(safepoint: u64, keys: &[Bytes]) -> Result<(), String> {
    for key in keys {
        match mvcc::decode_version_key(key) {
            Some((_, ts)) if ts <= safepoint => {}
            _ => {
                return Err(format!(
                    "a version GC at safepoint {safepoint} names key {key:?}, not a version \
                     committed at or below it"
                ));
            }
        }
    }
    Ok(())
}
