//! The log reader: a region's applied entries decoded into the raw-key effects they
//! had at apply.

use raft::eraftpb::{Entry, EntryType};
use regionkv_engine::RegionId;

use super::{DupLogBatch, DupOp, SourceWatch, WatchView};
use crate::command::{self, Command, Op};
use crate::directory::DIRECTORY;
use crate::error::{Error, Result};
use crate::log::RaftLog;
use crate::txn::TxnCmd;

/// Entries read from the log per lock of the region's log (see `entries_detached`).
const PAGE: u64 = 256;

/// Reads `region`'s applied entries after `after`, up to `max_bytes` of effects (whole
/// entries; at least one if any), as [`crate::Store::dup_read_log`] documents.
pub(crate) fn read_log(
    log: &RaftLog,
    watch: &SourceWatch,
    view: WatchView,
    region: RegionId,
    after: u64,
    max_bytes: usize,
) -> Result<DupLogBatch> {
    let applied = view.applied;
    let mut batch = DupLogBatch { after, last: after, ..DupLogBatch::default() };
    if after >= applied {
        return Ok(batch);
    }
    let gap = |first_available| Error::DupLogGap { region, first_available };
    let (first, _) = log.bounds(region)?;
    if after + 1 < first {
        return Err(gap(first));
    }
    match view.known_from {
        Some(known) if after >= known => {}
        known_from => {
            return Err(Error::DupOutcomeUnknown {
                region,
                index: after + 1,
                known_from: known_from.unwrap_or(applied),
            });
        }
    }
    let skipped = watch.skipped_in(after + 1, applied);
    let mut next = after + 1;
    let mut ops = Vec::new();
    while next <= applied {
        let high = (next + PAGE).min(applied + 1);
        let entries = log.entries_detached(region, next, high).map_err(|e| match e {
            Error::Compacted { .. } => gap(log.bounds(region).map_or(u64::MAX, |(first, _)| first)),
            e => e,
        })?;
        for entry in &entries {
            ops.clear();
            let skip = skipped.get(&entry.index).map(Vec::as_slice).unwrap_or_default();
            entry_ops(region, entry, skip, &mut ops)?;
            let bytes: usize = ops.iter().map(op_bytes).sum();
            if batch.entries > 0 && batch.bytes + bytes > max_bytes {
                return Ok(batch);
            }
            batch.bytes += bytes;
            batch.ops.append(&mut ops);
            batch.last = entry.index;
            batch.entries += 1;
            if batch.bytes >= max_bytes {
                return Ok(batch);
            }
        }
        next = high;
    }
    Ok(batch)
}

fn op_bytes(op: &DupOp) -> usize {
    op.key.len() + op.value.as_ref().map_or(0, bytes::Bytes::len)
}

/// Appends to `out` the raw-key effects entry `entry` of `region` had at apply, but
/// for its writes at positions `skipped` (refused or skipped at apply).
fn entry_ops(region: RegionId, entry: &Entry, skipped: &[u32], out: &mut Vec<DupOp>) -> Result<()> {
    if entry.get_entry_type() != EntryType::EntryNormal || entry.data.is_empty() {
        return Ok(()); // a membership change or a new leader's no-op
    }
    let unsupported =
        |kind: &'static str| Error::DupUnsupportedEntry { region, index: entry.index, kind };
    let command = match command::decode(&entry.data) {
        Ok(command) => command,
        // Never applied: the replica halts on it.
        Err(_) if command::is_newer_format(&entry.data) => return Err(unsupported("newer format")),
        // Refused at apply whole (damaged, or a kind this binary does not know).
        Err(_) => return Ok(()),
    };
    match command {
        Command::Writes(_) if region == DIRECTORY => {} // refused at apply
        Command::Writes(writes) => {
            for (at, write) in writes.iter().enumerate() {
                if u32::try_from(at).is_ok_and(|at| skipped.contains(&at)) {
                    continue;
                }
                out.extend(write.ops.iter().map(|op| match op {
                    Op::Put { key, value } => {
                        DupOp { index: entry.index, key: key.clone(), value: Some(value.clone()) }
                    }
                    Op::Delete { key } => {
                        DupOp { index: entry.index, key: key.clone(), value: None }
                    }
                }));
            }
        }
        Command::Txn(txn) => check_txn(&txn.cmd).map_err(unsupported)?,
        Command::Txns(txns) => {
            for txn in &txns {
                check_txn(&txn.cmd).map_err(unsupported)?;
            }
        }
        Command::Admin(_) | Command::Directory(_) | Command::Dup(_) => {}
        // Another cluster's writes, applied behind marks: a follower range duplicated
        // on (a chain) is not supported yet.
        Command::Sink(_) => return Err(unsupported("sink")),
    }
    Ok(())
}

/// `Ok` if a transaction command writes no raw key; else the kind that may (its
/// values come from the lock table, not the entry). Prewrites, heartbeats, status
/// checks (an abort drops locks), forgets, participant checks, one-phase commits and
/// version GC touch only the lock and record tables or the transactional keyspace
/// (`crate::txn::mvcc`); a commit or a committing resolve writes what the locks hold.
fn check_txn(cmd: &TxnCmd) -> std::result::Result<(), &'static str> {
    match cmd {
        TxnCmd::Commit { .. } => Err("txn commit"),
        TxnCmd::Resolve { commit: true, .. } => Err("txn resolve (commit)"),
        TxnCmd::ResolveMany { items }
            if items.iter().any(|i| i.commit || i.primary_key.is_some()) =>
        {
            Err("txn resolve many (commit or decide)")
        }
        TxnCmd::Prewrite { .. }
        | TxnCmd::Resolve { .. }
        | TxnCmd::ResolveMany { .. }
        | TxnCmd::CheckStatus { .. }
        | TxnCmd::Heartbeat { .. }
        | TxnCmd::CheckLocks { .. }
        | TxnCmd::OnePhase { .. }
        | TxnCmd::Forget { .. }
        | TxnCmd::CollectVersions { .. } => Ok(()),
    }
}
