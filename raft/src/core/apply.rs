//! Committed entries in: they are applied into the pass's write-batch round, the
//! proposals waiting for them are resolved, and confirmed reads are served.

use std::sync::Arc;

use raft::eraftpb::{Entry, EntryType};
use regionkv_engine::{ApplyRound, Engine, Region, RegionId, SessionWrite};

use super::StoreCore;
use super::admin_apply::MergeWait;
use super::output::CoreTask;
use crate::command::{self, Command, Op, Write};
use crate::directory::{self, DIRECTORY, DirCmd, DirResult};
use crate::error::{DropReason, Error, Result};
use crate::index::RaftIndex;
use crate::mailbox::Mailbox;
use crate::metrics::ApplyStats;
use crate::reader::{ScanJob, Scans, clamp, first_lock};
use crate::replica::{Paused, Replica, Waiting};
use crate::request::{AdminResult, Query, QueryResult, Reply};
use crate::txn::TxnReply;

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
    pub(super) engine: &'e Engine,
    stats: ApplyStats,
    pub(super) round: ApplyRound<'e>,
    /// Bytes of keys and values buffered in `round`.
    pub(super) bytes: usize,
    /// The most bytes one write may hold (the engine's round bound).
    pub(super) max_bytes: usize,
    /// The bytes past which the round is cut before the next write
    /// (`StoreConfig::apply_round_bytes`, at most `max_bytes`).
    pub(super) cut_bytes: usize,
    /// Each client write's and transaction command's reply, its region and its
    /// outcome, answered once the round commits.
    replies: Held,
    /// A transaction command applied in this pass: a lock may be in the round before
    /// the engine publishes it, so `Engine::has_txn_locks` alone does not say that no
    /// key holds one.
    pub(super) txn_applied: bool,
    /// Set when a region's apply failed: the round may hold part of a write and must
    /// not be committed.
    failed: bool,
    /// Every failure so far was the shutdown's doing (a timeline or the engine closed
    /// under the apply): the dropped round is [`Error::Cancelled`], not a failure.
    cancelled: bool,
}

impl<'e> Applier<'e> {
    /// A pass's round over `engine`, cut past `round_bytes` of data (`None`: the
    /// engine's round bound).
    pub(super) fn new(engine: &'e Engine, round_bytes: Option<usize>) -> Applier<'e> {
        let max_bytes = engine.max_round_bytes();
        Applier {
            engine,
            stats: ApplyStats::default(),
            round: engine.begin_round(),
            bytes: 0,
            max_bytes,
            cut_bytes: round_bytes.map_or(max_bytes, |b| b.min(max_bytes)),
            replies: Held::default(),
            txn_applied: false,
            failed: false,
            cancelled: true,
        }
    }

    /// Records that a region's apply failed: the round is dropped, uncommitted.
    /// `cancelled` says the shutdown stopped it (every error after shutdown began is a
    /// cancellation, ARCHITECTURE.md "The five invariants"); one real failure makes the
    /// whole drop a failure.
    pub(super) fn fail(&mut self, cancelled: bool) {
        self.failed = true;
        self.cancelled &= cancelled;
    }

    /// Why the round was dropped: cancelled by the shutdown, or an apply failed.
    fn dropped(&self) -> Error {
        if self.cancelled {
            Error::Cancelled
        } else {
            Error::Internal("an apply failed; the round is dropped".into())
        }
    }

    /// True once the round cannot be committed (a commit failed, or `fail`).
    pub(super) fn has_failed(&self) -> bool {
        self.failed
    }

    /// Ends the pass: commits the round (dropped, uncommitted, if an apply failed)
    /// and answers every client whose write it held. If the round is dropped at
    /// shutdown, its writes are committed entries that were not applied here: they
    /// apply after the restart, so their outcome is unknown to the client
    /// ([`Error::CancelledInFlight`]).
    pub(super) fn finish(mut self, stats: &mut ApplyStats) -> Result<()> {
        let result = if self.failed { Err(self.dropped()) } else { self.cut() };
        stats.add(&self.stats);
        let Held { writes, txns } = std::mem::take(&mut self.replies);
        match &result {
            Ok(()) => {
                for (reply, _, r) in writes {
                    reply(r);
                }
                for (reply, _, r) in txns {
                    reply(r);
                }
            }
            Err(e) => {
                let cancelled = e.is_cancelled();
                let error = |region| {
                    if cancelled {
                        Error::CancelledInFlight { region }
                    } else {
                        Error::Internal(format!("apply failed: {e}"))
                    }
                };
                for (reply, region, _) in writes {
                    reply(Err(error(region)));
                }
                for (reply, region, _) in txns {
                    reply(Err(error(region)));
                }
            }
        }
        result
    }

    /// Commits the current round (its writes become visible) and opens a fresh one.
    pub(super) fn cut(&mut self) -> Result<()> {
        if self.failed {
            return Err(self.dropped());
        }
        let full = std::mem::replace(&mut self.round, self.engine.begin_round());
        self.bytes = 0;
        self.stats.count(full.prepared_regions().len());
        if let Err(e) = full.commit() {
            let e = Error::from(e);
            self.fail(e.is_cancelled());
            return Err(e);
        }
        Ok(())
    }

    /// [`Self::cut`] because the next change would not fit the round (counted).
    pub(super) fn cut_full(&mut self) -> Result<()> {
        self.stats.rounds_cut_full += 1;
        self.cut()
    }

    /// Buffers one client write, whole: it never straddles two rounds. The outer error
    /// is a failure of the apply itself; the inner result is the write's own outcome (a
    /// stale epoch, a key outside the region or over the engine's limits refuses just
    /// this write). Every check runs before the first op is buffered, so a refused
    /// write leaves nothing in the round.
    ///
    /// A write with a session that the region applied already (a retry whose first
    /// answer was lost: the same session and number, in this entry, an earlier one, or
    /// before a split or merge) is not applied again and is answered with the first
    /// outcome, success; its use is recorded in the region's session table, in this
    /// round (see `regionkv_engine::sessions`). Only applied writes are recorded: a
    /// refused one may come again and apply.
    fn write(&mut self, replica: &Replica, write: &Write) -> Result<Written> {
        if let Err(refused) = check_write(replica, write).and_then(|()| self.check_limits(write)) {
            return Ok(Written::Refused(refused));
        }
        // A key a duplication's sink holds is a read-only standby (ARCHITECTURE.md,
        // "Duplication (follower side: the sink)"): the sink state is set between
        // rounds, so this is the state as of the entry before.
        let region_id = replica.region.id;
        if let Some(dup_id) = self.engine.standby_of(region_id, write.ops.iter().map(Op::key)) {
            return Ok(Written::Refused(Error::StandbyReadOnly { region: region_id, dup_id }));
        }
        // A key a cutover fences (ARCHITECTURE.md, "Duplication: verify and cutover"):
        // the duplication state is set between rounds, so this is the state as of the
        // entry before; every write applied after the fence's entry is checked here.
        if let Some(dup_id) = self.engine.fenced_of(region_id, write.ops.iter().map(Op::key)) {
            return Ok(Written::Refused(Error::DupFenced { region: region_id, dup_id }));
        }
        let bytes: usize = write.ops.iter().map(|op| op.key().len() + op_value_len(op)).sum();
        if self.bytes + bytes > self.cut_bytes && !self.round.is_empty() {
            self.cut_full()?;
        }
        let region = &replica.region;
        self.round.prepare_for_region(region.id, region.epoch)?;
        // A key holding a lock (readable or not) refuses the whole write; with no lock
        // anywhere, no lookup (ARCHITECTURE.md, "Transactions").
        if (self.txn_applied || self.engine.has_txn_locks())
            && let Some(locked) = self.first_locked(write.ops.iter().map(Op::key))?
        {
            return Ok(Written::Refused(locked));
        }
        if let Some(session) = write.session {
            let time_ms = write.time_ms.unwrap_or(0);
            if self.round.session_write(session.id, session.seq, time_ms)?
                == SessionWrite::AlreadyApplied
            {
                return Ok(Written::AlreadyApplied);
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
        Ok(Written::Applied)
    }
}

/// What [`Applier::write`] did with one client write.
enum Written {
    /// Its ops are in the round.
    Applied,
    /// Its session applied it already: nothing written, answered as a success.
    AlreadyApplied,
    /// Refused: nothing written.
    Refused(Error),
}

impl Applier<'_> {
    /// Refuses a write the engine would refuse part of: a key or value over its limits,
    /// or more bytes than one round takes. Depends on the write and the store's
    /// configuration only (every store of a cluster runs with the same limits).
    fn check_limits(&self, write: &Write) -> Result<()> {
        let (max_key, max_value) = (self.engine.max_key_bytes(), self.engine.max_value_bytes());
        let mut bytes = 0usize;
        for op in &write.ops {
            let (key, value) = (op.key().len(), op_value_len(op));
            if key > max_key || value > max_value {
                return Err(Error::InvalidRequest(format!(
                    "a key of {key} bytes or a value of {value} bytes is over the limits \
                     ({max_key} and {max_value} bytes)"
                )));
            }
            bytes = bytes.saturating_add(key + value);
        }
        if bytes > self.max_bytes {
            return Err(Error::InvalidRequest(format!(
                "a write of {bytes} bytes is over the limit of {} bytes",
                self.max_bytes
            )));
        }
        Ok(())
    }
}

/// Why a committed client write must not apply, if it must not.
fn check_write(replica: &Replica, write: &Write) -> Result<()> {
    replica.check_version(write.epoch)?;
    replica.check_keys(&write.ops)
}

/// Applies an entry's client writes, each on its own; the positions of those that
/// wrote nothing (refused, or skipped as applied already) go to the region's watch,
/// for duplication's log reader.
fn apply_writes(
    replica: &Replica,
    index: u64,
    writes: &[Write],
    applier: &mut Applier<'_>,
) -> Result<Vec<Result<()>>> {
    let mut results = Vec::with_capacity(writes.len());
    let mut skipped = Vec::new();
    for (at, write) in writes.iter().enumerate() {
        let result = match applier.write(replica, write)? {
            Written::Applied => Ok(()),
            Written::AlreadyApplied => {
                skipped.push(u32::try_from(at).unwrap_or(u32::MAX));
                Ok(())
            }
            Written::Refused(e) => {
                skipped.push(u32::try_from(at).unwrap_or(u32::MAX));
                Err(e)
            }
        };
        results.push(result);
    }
    if !skipped.is_empty()
        && let Some(source) = &replica.source
    {
        source.skip(index, skipped);
    }
    Ok(results)
}

/// Gives `replica` its region's watch (`dup_source`) if it has none yet: outcomes of
/// the writes it applies from now on are recorded, those before are not known here.
fn start_source(ctx: &super::StoreContext, replica: &mut Replica) {
    if replica.source.is_none() {
        let source = ctx.sources.get_or_create(replica.region.id);
        source.start(replica.applied_index);
        replica.source = Some(source);
    }
}

/// Replies held until the round that holds their outcome commits.
#[derive(Default)]
struct Held {
    writes: Vec<(Reply<()>, RegionId, Result<()>)>,
    txns: Vec<(Reply<TxnReply>, RegionId, Result<TxnReply>)>,
}

/// Matches an applied entry with the proposals waiting at or before its index: the
/// one with the same index and term gets the entry's outcome; any other was
/// overwritten by a new leader and is dropped.
fn resolve_proposals(replica: &mut Replica, entry: &Entry, outcome: Outcome, held: &mut Held) {
    let replies = &mut held.writes;
    let region = replica.region.id;
    let dropped = || Error::Dropped { region, reason: DropReason::Overwritten };
    let mismatch = || Error::Internal("a proposal matched an entry of another kind".into());
    let refused = match &outcome {
        Outcome::Refused(why) => Some(refusal(why)),
        _ => None,
    };
    let mut outcome = Some(outcome);
    let in_flight = &mut replica.proposals.in_flight;
    while in_flight.front().is_some_and(|p| p.index <= entry.index) {
        let proposal = in_flight.pop_front().expect("checked");
        let matched = proposal.index == entry.index && proposal.term == entry.term;
        if matched && let Some(why) = &refused {
            let refused = || refusal(why);
            match proposal.waiting {
                Waiting::Writes(waiting) => {
                    replies
                        .extend(waiting.into_iter().map(|reply| (reply, region, Err(refused()))));
                }
                waiting => waiting.fail(refused),
            }
            continue;
        }
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
            Waiting::Txn(reply) if matched => {
                let result = match outcome.take() {
                    Some(Outcome::Txn(result)) => result,
                    _ => Err(mismatch()),
                };
                held.txns.push((reply, region, result));
            }
            Waiting::Txn(reply) => reply(Err(dropped())),
            Waiting::Txns(waiting) if matched => {
                let results = match outcome.take() {
                    Some(Outcome::Txns(results)) => results,
                    _ => Vec::new(),
                };
                let mut results = results.into_iter();
                for reply in waiting {
                    let r = results.next().unwrap_or_else(|| Err(mismatch()));
                    held.txns.push((reply, region, r));
                }
            }
            Waiting::Txns(waiting) => waiting.into_iter().for_each(|reply| reply(Err(dropped()))),
            Waiting::Dup(reply) if matched => match outcome.take() {
                Some(Outcome::Dup(result)) => reply(result),
                _ => reply(Err(mismatch())),
            },
            Waiting::Dup(reply) => reply(Err(dropped())),
            Waiting::Sink(reply) if matched => match outcome.take() {
                Some(Outcome::Sink(result)) => reply(result),
                _ => reply(Err(mismatch())),
            },
            Waiting::Sink(reply) => reply(Err(dropped())),
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
    /// A transaction command's result (answered once its round commits).
    Txn(Result<TxnReply>),
    /// One result per transaction command of a batch, in order (answered likewise).
    Txns(Vec<Result<TxnReply>>),
    /// A duplication command's result.
    Dup(Result<crate::dup::DupReply>),
    /// A sink command's result.
    Sink(Result<crate::sink::SinkResult>),
    /// Refused whole (it does not decode, or a membership change that must not
    /// apply), alike on every replica: why.
    Refused(Error),
}

/// A copy of `error`, a refusal, for one more of the proposers waiting on it.
fn refusal(error: &Error) -> Error {
    match error {
        Error::Merging { region, target } => Error::Merging { region: *region, target: *target },
        Error::EpochNotMatch { region, current } => {
            Error::EpochNotMatch { region: *region, current: current.clone() }
        }
        Error::Malformed(why) => Error::Malformed(why.clone()),
        Error::DuplicationSeeding { region, dup_id } => {
            Error::DuplicationSeeding { region: *region, dup_id: *dup_id }
        }
        Error::DupRefused { region, dup_id, reason } => {
            Error::DupRefused { region: *region, dup_id: *dup_id, reason: *reason }
        }
        Error::SinkRefused { region, dup_id, reason } => {
            Error::SinkRefused { region: *region, dup_id: *dup_id, reason: *reason }
        }
        Error::StandbyReadOnly { region, dup_id } => {
            Error::StandbyReadOnly { region: *region, dup_id: *dup_id }
        }
        Error::DupFenced { region, dup_id } => {
            Error::DupFenced { region: *region, dup_id: *dup_id }
        }
        other => Error::InvalidRequest(other.to_string()),
    }
}

/// The value of `key` in `view`, if `region` holds the key.
fn get(view: &regionkv_engine::ReadView, region: &Region, key: &[u8]) -> Result<QueryResult> {
    if !region.contains(key) {
        return Err(Error::KeyNotInRegion { region: region.id, current: Some(region.clone()) });
    }
    Ok(QueryResult::Value(view.get(key)))
}

/// Applies a transaction entry's command, or each of a batch's in order, on its own,
/// as if it had its own entry: a refusal changes nothing, and its neighbours apply.
fn txn_outcome(
    ctx: &super::StoreContext,
    replica: &Replica,
    cmd: Command,
    index: u64,
    applier: &mut Applier<'_>,
) -> Result<Outcome> {
    let refused = || Error::InvalidRequest("a transaction command to the directory".into());
    // A binary configured for version 3 only reads a staging record as an older
    // binary does: an unknown status.
    let knows_staging = ctx.config.cluster_version_max >= crate::version::TXN_V2.since;
    let at = (index, knows_staging);
    let directory = replica.region.id == DIRECTORY;
    Ok(match cmd {
        Command::Txn(_) if directory => Outcome::Txn(Err(refused())),
        Command::Txn(txn) => Outcome::Txn(applier.txn(replica, &txn, at, &ctx.metrics)?),
        Command::Txns(txns) => {
            let mut results = Vec::with_capacity(txns.len());
            for txn in &txns {
                results.push(if directory {
                    Err(refused())
                } else {
                    applier.txn(replica, txn, at, &ctx.metrics)?
                });
            }
            Outcome::Txns(results)
        }
        _ => Outcome::Refused(Error::Internal("not a transaction entry".into())),
    })
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
        if replica.halted.is_some() {
            return Ok(()); // applies nothing more (see `StoreCore::halt`)
        }
        start_source(&self.ctx, replica);
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
                .map_err(|e| match e {
                    // The apply's own error, with its class (a store failure or not).
                    regionkv_wal::IngestError::Apply(inner) => match inner.downcast::<Error>() {
                        Ok(e) => *e,
                        Err(other) => Error::Internal(other.to_string()),
                    },
                    e if e.is_cancelled() => Error::Cancelled,
                    e => Error::Internal(format!("apply of region {} failed: {e}", region.0)),
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
        if entry.get_entry_type() != EntryType::EntryNormal || command::is_admin(&entry.data) {
            // A membership change or an admin command may let another peer commit or
            // move keys: no get is answered off the poller from here until the replica
            // is listed again after the round (`publish_reads`).
            self.unlist_reads(region);
        }
        let decoded = match entry.get_entry_type() {
            EntryType::EntryNormal if !entry.data.is_empty() => Some(command::decode(&entry.data)),
            _ => None,
        };
        if let Some(refused) = decoded.as_ref().and_then(|d| self.unknown_kind(region, entry, d)) {
            let replica = self.replicas.get_mut(&region).expect("present");
            replica.applied_index = entry.index;
            resolve_proposals(replica, entry, Outcome::Refused(refused?), &mut applier.replies);
            return Ok(());
        }
        let replica = self.replicas.get_mut(&region).expect("present");
        let outcome = match entry.get_entry_type() {
            EntryType::EntryNormal if entry.data.is_empty() => Outcome::Nothing, // a new leader's no-op
            EntryType::EntryNormal => match decoded.expect("decoded above") {
                Err(_) if command::is_newer_format(&entry.data) => {
                    // A newer binary's command: this one cannot know what it does, so
                    // it must not guess (the replica halts; see ReplicaHalted).
                    return Err(Error::Internal(format!(
                        "entry {} holds a command of a newer format",
                        entry.index
                    )));
                }
                Err(e) => {
                    tracing::info!(region = region.0, index = entry.index, reason = %e.reason, "undecodable entry refused");
                    Outcome::Refused(Error::Malformed(format!(
                        "entry {} does not decode: {} at byte {}",
                        entry.index, e.reason, e.offset
                    )))
                }
                Ok(command) => match command {
                    Command::Writes(writes) if region == DIRECTORY => {
                        let refused =
                            || Error::InvalidRequest("client writes to the directory".into());
                        Outcome::Writes(writes.iter().map(|_| Err(refused())).collect())
                    }
                    Command::Writes(writes) => {
                        Outcome::Writes(apply_writes(replica, entry.index, &writes, applier)?)
                    }
                    Command::Directory(cmd) if region == DIRECTORY => {
                        let epoch = replica.region.epoch;
                        let supported = self.ctx.config.cluster_version_max;
                        if let DirCmd::SetClusterVersion { target, .. } = cmd
                            && target > supported
                        {
                            // Every other replica may run there: this one cannot (its
                            // replica halts, the store goes on).
                            return Err(Error::ClusterVersionTooNew { active: target, supported });
                        }
                        let result =
                            directory::apply(&self.ctx.directory, epoch, &cmd, entry.index)?;
                        if let Ok(DirResult::ClusterVersion { active }) = &result {
                            self.ctx.learn_cluster_version(*active)?;
                        }
                        Outcome::Directory(result)
                    }
                    Command::Directory(_) => Outcome::Directory(Err(Error::InvalidRequest(
                        "a directory command outside the directory".into(),
                    ))),
                    cmd @ (Command::Txn(_) | Command::Txns(_)) => {
                        txn_outcome(&self.ctx, replica, cmd, entry.index, applier)?
                    }
                    Command::Dup(dup) => {
                        Outcome::Dup(self.apply_dup(region, entry.index, &dup, applier)?)
                    }
                    Command::Sink(sink) => {
                        Outcome::Sink(self.apply_sink(region, entry.index, &sink, applier)?)
                    }
                    Command::Admin(admin) => {
                        // Admin commands change durable metadata; the data before them
                        // (of every region in the round) lands first.
                        applier.cut()?;
                        Outcome::Admin(self.apply_admin(region, entry, admin)?)
                    }
                },
            },
            EntryType::EntryConfChange | EntryType::EntryConfChangeV2 => {
                applier.cut()?;
                match self.apply_conf_change(region, entry)? {
                    Ok(()) => Outcome::Nothing,
                    Err(refused) => Outcome::Refused(refused),
                }
            }
        };
        let replica = self.replicas.get_mut(&region).expect("present");
        replica.applied_index = entry.index;
        resolve_proposals(replica, entry, outcome, &mut applier.replies);
        Ok(())
    }

    /// What to do with an entry whose command is of a kind this binary does not know
    /// (as decoded, or one introduced after the store's configured
    /// `cluster_version_max`): `None` if it is not one; a refusal (a no-op, alike on
    /// every replica of this binary) while the store's view of the cluster version is
    /// at or below its maximum, since no such kind can exist yet; an error that halts
    /// the replica once the view is above it, since the kind may be legitimate
    /// (ARCHITECTURE.md, "Cluster versions").
    fn unknown_kind(
        &mut self,
        region: RegionId,
        entry: &Entry,
        decoded: &regionkv_engine::codec::DecodeResult<Command>,
    ) -> Option<Result<Error>> {
        let supported = self.ctx.config.cluster_version_max;
        let what = match decoded {
            Err(e) if command::is_unknown_kind(e) => e.reason.to_string(),
            Ok(command) if command.since() > supported => {
                format!("a command of cluster version {}", command.since())
            }
            _ => return None,
        };
        let active = self.ctx.cluster_version.active();
        if active > supported {
            return Some(Err(Error::ClusterVersionTooNew { active, supported }));
        }
        if self.unknown_kinds_logged.insert(region) {
            tracing::info!(
                region = region.0,
                index = entry.index,
                what,
                active,
                "refused an entry of a kind this binary does not know: the cluster version \
                 says none can exist yet (logged once per region)"
            );
        }
        self.ctx.metrics.on_unknown_kind_refused();
        Some(Ok(Error::Malformed(format!(
            "entry {} holds a command of a kind this binary does not know ({what}), which \
             cluster version {active} cannot carry",
            entry.index
        ))))
    }

    /// Serves confirmed reads whose index has been applied: each is checked here (epoch,
    /// readable) against the engine's view at the applied index; a get is answered at
    /// once, a scan runs where `self.scans` says (the poller's reader thread under
    /// `Store`, so that it holds up no other region of the poller; inline in the
    /// simulator).
    ///
    /// Gets stay on the poller on purpose. Measured (issue 13, three stores in one
    /// process, 64 clients, 2 cores): the poller spent about 10 % of its time on the
    /// lookups and over half on waking the callers, one wake each, which no thread can
    /// avoid; handing each batch's gets with its view to a gets thread per poller cut
    /// the leader poller's share, but the freed poller issued more, smaller `ReadIndex`
    /// rounds (more follower and writer work) and every batch cost one more wake: CPU
    /// per get about doubled (23 to 48 µs) and context switches per get rose from 2.4 to
    /// 4.1. Look at this again on more cores.
    pub(super) fn serve_reads(&mut self, region: RegionId) {
        let Some(replica) = self.replicas.get_mut(&region) else { return };
        let applied = replica.applied_index;
        let caps = self.ctx.config.scan_caps();
        let engine = self.ctx.engine_of(region);
        while replica.reads.ready.front().is_some_and(|(index, _)| *index <= applied) {
            let (_, mut reads) = replica.reads.ready.pop_front().expect("peeked");
            // Every lock is looked up before the view is taken (`reader::first_lock`);
            // scans clamped first. Nothing is looked up while the store holds no lock.
            let mut locks = Vec::new();
            if engine.has_txn_locks() {
                for read in &mut reads {
                    if let Query::Scan { start, end, .. } = &mut read.query {
                        let (s, e) = clamp(&replica.region, start.clone(), end.take());
                        (*start, *end) = (s, e);
                    }
                    locks.push(first_lock(engine, &replica.region, &read.query));
                }
            }
            let view = engine.read_view();
            for (i, read) in reads.into_iter().enumerate() {
                let lock = locks.get_mut(i).and_then(Option::take);
                // A snapshot read is admitted against the view just taken
                // (`txn::read_ts`); a raw read skips it.
                let checked = replica
                    .check_version(read.epoch)
                    .and_then(|()| replica.check_readable())
                    .and_then(|()| match read.query.read_ts() {
                        Some(ts) => crate::txn::read_ts::admit(engine, region, ts),
                        None => Ok(()),
                    });
                match (checked, read.query) {
                    (Err(e), _) => (read.reply)(Err(e)),
                    (Ok(()), Query::Get { key, .. }) => {
                        let answer =
                            get(&view, &replica.region, &key).and_then(|value| match &lock {
                                Some((key, encoded)) => Err(crate::txn::locked(key, encoded)),
                                None => Ok(value),
                            });
                        (read.reply)(answer);
                    }
                    (Ok(()), Query::Scan { start, end, limit, .. }) => {
                        let (start, end) = clamp(&replica.region, start, end);
                        let job = ScanJob {
                            region,
                            view: view.clone(),
                            start,
                            end,
                            limit,
                            caps,
                            lock,
                            reply: read.reply,
                        };
                        self.scans.submit(&self.ctx, job);
                    }
                }
            }
        }
    }

    /// Lists `region` in the store's `LocalReads` (its gets answered on the caller's
    /// thread) if its replica may serve them so (`Replica::reads_locally`), with its
    /// current shape, or takes it off the list. Called once what the replica applied is
    /// visible (never with entries of it in an uncommitted round).
    pub(super) fn publish_reads(&mut self, region: RegionId) {
        self.publish_source(region);
        let Some(replica) = self.replicas.get_mut(&region) else {
            self.ctx.local_reads.remove(region);
            return;
        };
        let want = (region != DIRECTORY
            && !self.catching_up.contains_key(&region)
            && replica.reads_locally())
        .then_some(replica.region.epoch);
        if replica.reads.local == want {
            return;
        }
        replica.reads.local = want;
        match want {
            Some(_) => self.ctx.local_reads.insert(&replica.region),
            None => self.ctx.local_reads.remove(region),
        }
    }

    /// Publishes to `region`'s watch (`dup_source`) what its replica applied (visible
    /// now) and whether it leads: duplication's readers go by it.
    fn publish_source(&mut self, region: RegionId) {
        let Some(replica) = self.replicas.get_mut(&region) else { return };
        if !replica.is_initialized() {
            return;
        }
        start_source(&self.ctx, replica);
        let leader = replica.is_leader() && replica.halted.is_none();
        let log = &self.ctx.log;
        if let Some(source) = &replica.source {
            source.publish(replica.applied_index, leader, || {
                log.bounds(region).map_or(0, |(first, _)| first)
            });
        }
    }

    /// Takes `region` off the store's `LocalReads`, if it is listed.
    pub(super) fn unlist_reads(&mut self, region: RegionId) {
        if let Some(replica) = self.replicas.get_mut(&region)
            && replica.reads.local.take().is_some()
        {
            self.ctx.local_reads.remove(region);
        }
    }

    /// Runs this core's confirmed scans on the reader thread behind `queue` from now
    /// on (`Store` does, one reader per poller); a new core runs them inline.
    pub(crate) fn serve_scans_on(&mut self, queue: Arc<Mailbox<ScanJob>>) {
        self.scans = Scans::Reader(queue);
    }
}
