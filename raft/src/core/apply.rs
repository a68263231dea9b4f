//! Committed entries in: they are applied into the pass's write-batch round, the
//! proposals waiting for them are resolved, and confirmed reads are served.

use raft::eraftpb::{Entry, EntryType};
use regionkv_engine::{ApplyRound, Engine, Region, RegionId, SessionWrite};

use super::StoreCore;
use super::admin_apply::MergeWait;
use super::output::CoreTask;
use crate::command::{self, Command, Op, Write};
use crate::directory::{self, DIRECTORY, DirResult};
use crate::error::{DropReason, Error, Result};
use crate::index::RaftIndex;
use crate::metrics::ApplyStats;
use crate::replica::{Paused, Replica, Waiting};
use crate::request::{AdminResult, Query, QueryResult, Reply};

fn ingest_error(e: Error) -> regionkv_wal::IngestError<RaftIndex> {
    regionkv_wal::IngestError::Apply(Box::new(e))
}

fn op_value_len(op: &Op) -> usize {
    match op {
        Op::Put { value, .. } => value.len(),
        Op::Delete { .. } => 0,
    }
}

/// The write-batch round of one flush pass over every region it touches, and the
/// replies waiting for it.
pub(super) struct Applier<'e> {
    engine: &'e Engine,
    stats: ApplyStats,
    round: ApplyRound<'e>,
    /// Bytes of keys and values buffered in `round`.
    bytes: usize,
    max_bytes: usize,
    /// Each client write's reply, its region and its outcome, answered once the round
    /// commits.
    replies: Vec<(Reply<()>, RegionId, Result<()>)>,
    /// Set when a region's apply failed: the round may hold part of a write and must
    /// not be committed.
    failed: bool,
}

impl<'e> Applier<'e> {
    /// A pass's round over `engine`.
    pub(super) fn new(engine: &'e Engine) -> Applier<'e> {
        Applier {
            engine,
            stats: ApplyStats::default(),
            round: engine.begin_round(),
            bytes: 0,
            max_bytes: engine.max_round_bytes(),
            replies: Vec::new(),
            failed: false,
        }
    }

    /// Records that a region's apply failed: the round is dropped, uncommitted.
    pub(super) fn fail(&mut self) {
        self.failed = true;
    }

    /// Ends the pass: commits the round (dropped, uncommitted, if an apply failed)
    /// and answers every client whose write it held. If the round is dropped at
    /// shutdown, its writes are committed entries that were not applied here: they
    /// apply after the restart, so their outcome is unknown to the client
    /// ([`Error::CancelledInFlight`]).
    pub(super) fn finish(mut self, stats: &mut ApplyStats) -> Result<()> {
        let result = if self.failed {
            Err(Error::Internal("an apply failed; the round is dropped".into()))
        } else {
            self.cut()
        };
        stats.add(&self.stats);
        let replies = std::mem::take(&mut self.replies);
        match &result {
            Ok(()) => replies.into_iter().for_each(|(reply, _, r)| reply(r)),
            Err(e) => {
                let cancelled = e.is_cancelled();
                for (reply, region, _) in replies {
                    reply(Err(if cancelled {
                        Error::CancelledInFlight { region }
                    } else {
                        Error::Internal(format!("apply failed: {e}"))
                    }));
                }
            }
        }
        result
    }

    /// Commits the current round (its writes become visible) and opens a fresh one.
    fn cut(&mut self) -> Result<()> {
        if self.failed {
            return Err(Error::Internal("an apply failed; the round is dropped".into()));
        }
        let full = std::mem::replace(&mut self.round, self.engine.begin_round());
        self.bytes = 0;
        self.stats.count(full.prepared_regions().len());
        if let Err(e) = full.commit() {
            self.failed = true;
            return Err(e.into());
        }
        Ok(())
    }

    /// Buffers one client write, whole: it never straddles two rounds. The outer error
    /// is a failure of the apply itself; the inner result is the write's own outcome (a
    /// stale epoch or a key outside the region refuses just this write).
    ///
    /// A write with a session that the region applied already (a retry whose first
    /// answer was lost: the same session and number, in this entry, an earlier one, or
    /// before a split or merge) is not applied again and is answered with the first
    /// outcome, success; its use is recorded in the region's session table, in this
    /// round (see `regionkv_engine::sessions`). Only applied writes are recorded: a
    /// refused one may come again and apply.
    fn write(&mut self, replica: &Replica, write: &Write) -> Result<Result<()>> {
        if let Err(refused) = check_write(replica, write) {
            return Ok(Err(refused));
        }
        let bytes: usize = write.ops.iter().map(|op| op.key().len() + op_value_len(op)).sum();
        if self.bytes + bytes > self.max_bytes && !self.round.is_empty() {
            self.cut()?;
        }
        let region = &replica.region;
        self.round.prepare_for_region(region.id, region.epoch)?;
        if let Some(session) = write.session {
            let time_ms = write.time_ms.unwrap_or(0);
            if self.round.session_write(session.id, session.seq, time_ms)?
                == SessionWrite::AlreadyApplied
            {
                return Ok(Ok(()));
            }
        }
        for op in &write.ops {
            // An error here leaves part of the write buffered; it fails the whole
            // apply (the round is dropped uncommitted), never commits a part.
            match op {
                Op::Put { key, value } => self.round.put(key, value)?,
                Op::Delete { key } => self.round.delete(key)?,
            }
        }
        self.bytes += bytes;
        Ok(Ok(()))
    }
}

/// Why a committed client write must not apply, if it must not.
fn check_write(replica: &Replica, write: &Write) -> Result<()> {
    replica.check_version(write.epoch)?;
    replica.check_keys(&write.ops)
}

/// Matches an applied entry with the proposals waiting at or before its index: the
/// one with the same index and term gets the entry's outcome; any other was
/// overwritten by a new leader and is dropped.
fn resolve_proposals(
    replica: &mut Replica,
    entry: &Entry,
    outcome: Outcome,
    replies: &mut Vec<(Reply<()>, RegionId, Result<()>)>,
) {
    let region = replica.region.id;
    let dropped = || Error::Dropped { region, reason: DropReason::Overwritten };
    let mismatch = || Error::Internal("a proposal matched an entry of another kind".into());
    let mut outcome = Some(outcome);
    let in_flight = &mut replica.proposals.in_flight;
    while in_flight.front().is_some_and(|p| p.index <= entry.index) {
        let proposal = in_flight.pop_front().expect("checked");
        let matched = proposal.index == entry.index && proposal.term == entry.term;
        match proposal.waiting {
            Waiting::Admin(reply) if matched => match outcome.take() {
                Some(Outcome::Admin(result)) => reply(result),
                _ => reply(Err(mismatch())),
            },
            Waiting::Admin(reply) => reply(Err(dropped())),
            Waiting::Directory(reply) if matched => match outcome.take() {
                Some(Outcome::Directory(result)) => reply(result),
                _ => reply(Err(mismatch())),
            },
            Waiting::Directory(reply) => reply(Err(dropped())),
            Waiting::Writes(waiting) if matched => {
                let results = match outcome.take() {
                    Some(Outcome::Writes(results)) => results,
                    _ => Vec::new(),
                };
                let mut results = results.into_iter();
                for reply in waiting {
                    let r = results.next().unwrap_or_else(|| {
                        Err(Error::Internal("fewer results than writes".into()))
                    });
                    replies.push((reply, region, r));
                }
            }
            Waiting::Writes(waiting) => {
                replies.extend(waiting.into_iter().map(|reply| (reply, region, Err(dropped()))));
            }
            // raft-rs turns a conf change proposed while another is pending into an
            // empty entry at the same index and term: that one changed nothing.
            Waiting::ChangePeers(reply)
                if matched && entry.get_entry_type() == EntryType::EntryConfChangeV2 =>
            {
                reply(Ok(replica.region.clone()));
            }
            Waiting::ChangePeers(reply) => reply(Err(dropped())),
        }
    }
}

/// What applying one entry produced, for the proposal waiting on it.
enum Outcome {
    /// A no-op or membership change (whose proposer is answered when it applies).
    Nothing,
    /// One result per client write of the entry.
    Writes(Vec<Result<()>>),
    /// An admin command's result.
    Admin(Result<AdminResult>),
    /// A directory command's result.
    Directory(Result<DirResult>),
}

fn run_query(
    snapshot: &regionkv_engine::ReadView,
    region: &Region,
    query: &Query,
) -> Result<QueryResult> {
    match query {
        Query::Get { key } => {
            if !region.contains(key) {
                return Err(Error::KeyNotInRegion {
                    region: region.id,
                    current: Some(region.clone()),
                });
            }
            Ok(QueryResult::Value(snapshot.get(key)))
        }
        Query::Scan { start, end, limit } => {
            let start = start.as_ref().max(region.start.as_slice());
            let end = match (end.as_deref(), region.end.as_deref()) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            Ok(QueryResult::Rows(snapshot.scan(start, end, *limit)))
        }
    }
}

impl StoreCore {
    /// Applies committed entries of one region into the pass's round, each through
    /// the region's timeline. A commit merge whose source replica here has not caught
    /// up yet holds itself and everything after it back (`MergeProgress::paused`).
    pub(super) fn apply(
        &mut self,
        region: RegionId,
        entries: Vec<Entry>,
        applier: &mut Applier<'_>,
    ) -> Result<()> {
        let replica = self.replicas.get_mut(&region).expect("present");
        if let Some(paused) = replica.merge.paused.as_mut() {
            paused.entries.extend(entries);
            return Ok(());
        }
        let timeline = replica.timeline.clone();
        let mut entries = entries.into_iter();
        while let Some(entry) = entries.next() {
            if let Some(MergeWait { source, index, term }) = self.merge_wait(region, &entry) {
                let held: Vec<Entry> = std::iter::once(entry).chain(entries).collect();
                tracing::info!(
                    target = region.0,
                    source = source.0,
                    index,
                    "merge waits for its source to catch up"
                );
                let replica = self.replicas.get_mut(&region).expect("present");
                replica.merge.paused = Some(Paused { source, entries: held });
                self.send_task(CoreTask::CatchUp { source, target: region, index, term });
                return Ok(());
            }
            timeline
                .ingest(RaftIndex(entry.index), || {
                    self.apply_entry(region, &entry, applier).map_err(ingest_error)
                })
                .map_err(|e| {
                    if e.is_cancelled() {
                        Error::Cancelled
                    } else {
                        Error::Internal(format!("apply of region {} failed: {e}", region.0))
                    }
                })?;
        }
        Ok(())
    }

    /// Applies one committed entry and resolves the proposal waiting for it.
    fn apply_entry(
        &mut self,
        region: RegionId,
        entry: &Entry,
        applier: &mut Applier<'_>,
    ) -> Result<()> {
        let replica = self.replicas.get_mut(&region).expect("present");
        if entry.index <= replica.applied_index {
            return Ok(()); // applied before a restart, or by a snapshot
        }
        replica.applied_bytes_since_checkpoint += entry.data.len() as u64;
        if let Some(observe) = &self.ctx.apply_observer {
            observe(region, entry.index, entry.term, &entry.data);
        }
        let outcome = match entry.get_entry_type() {
            EntryType::EntryNormal if entry.data.is_empty() => Outcome::Nothing, // a new leader's no-op
            EntryType::EntryNormal => match command::decode(&entry.data).map_err(|e| {
                Error::Internal(format!("undecodable entry {}: {}", entry.index, e.reason))
            })? {
                Command::Writes(writes) if region == DIRECTORY => {
                    let refused = || Error::InvalidRequest("client writes to the directory".into());
                    Outcome::Writes(writes.iter().map(|_| Err(refused())).collect())
                }
                Command::Writes(writes) => {
                    let mut results = Vec::with_capacity(writes.len());
                    for write in &writes {
                        results.push(applier.write(replica, write)?);
                    }
                    Outcome::Writes(results)
                }
                Command::Directory(cmd) if region == DIRECTORY => {
                    let epoch = replica.region.epoch;
                    Outcome::Directory(Ok(directory::apply(&self.ctx.directory, epoch, &cmd)?))
                }
                Command::Directory(_) => Outcome::Directory(Err(Error::InvalidRequest(
                    "a directory command outside the directory".into(),
                ))),
                Command::Admin(admin) => {
                    // Admin commands change durable metadata; the data before them
                    // (of every region in the round) lands first.
                    applier.cut()?;
                    Outcome::Admin(self.apply_admin(region, entry, admin)?)
                }
            },
            EntryType::EntryConfChange | EntryType::EntryConfChangeV2 => {
                applier.cut()?;
                self.apply_conf_change(region, entry)?;
                Outcome::Nothing
            }
        };
        let replica = self.replicas.get_mut(&region).expect("present");
        replica.applied_index = entry.index;
        resolve_proposals(replica, entry, outcome, &mut applier.replies);
        Ok(())
    }

    /// Serves confirmed reads whose index has been applied.
    pub(super) fn serve_reads(&mut self, region: RegionId) {
        let Some(replica) = self.replicas.get_mut(&region) else { return };
        let applied = replica.applied_index;
        while replica.reads.ready.front().is_some_and(|(index, _)| *index <= applied) {
            let (_, reads) = replica.reads.ready.pop_front().expect("peeked");
            let snapshot = self.ctx.engine_of(region).read_view();
            for read in reads {
                let result = replica
                    .check_version(read.epoch)
                    .and_then(|()| run_query(&snapshot, &replica.region, &read.query));
                (read.reply)(result);
            }
        }
    }
}
