//! Requests in: client writes and reads, membership changes, admin and directory
//! commands are checked here and become raft-rs proposals (writes batched per turn).

use raft::eraftpb::{ConfChangeSingle, ConfChangeType, ConfChangeV2};
use regionkv_engine::{Epoch, PeerId, RegionId};

use super::StoreCore;
use super::admin_apply::check_admin;
use crate::command::{self, Admin, AdminCmd, ChangePeersContext, TxnEntry, Write};
use crate::directory::{DIRECTORY, DirCmd, DirResult};
use crate::error::{DropReason, Error, Result};
use crate::replica::{Proposed, QueuedTxn, Replica, Waiting};
use crate::request::{
    AdminRequest, AdminResult, ChangePeersRequest, PeerChange, ReadRequest, Reply, WriteRequest,
};
use crate::txn::concurrency::LeaderAt;
use crate::txn::plan::MAX_TXN_KEYS;
use crate::txn::{TxnCmd, TxnRequest};

impl StoreCore {
    /// The replica of `region`, woken, if it leads its group: the first check of every
    /// request.
    pub(super) fn leader(&mut self, region: RegionId) -> Result<&mut Replica> {
        self.wake(region);
        let replica = self.replicas.get_mut(&region).ok_or(Error::RegionNotFound { region })?;
        if let Some(reason) = &replica.halted {
            return Err(Error::ReplicaHalted { region, reason: reason.clone() });
        }
        if !replica.is_leader() {
            return Err(replica.not_leader());
        }
        Ok(replica)
    }

    /// The replica of `region` if it leads its group at `epoch`'s version and is not a
    /// prepared merge source: the checks every command of a region's keys starts with.
    pub(super) fn leader_at(&mut self, region: RegionId, epoch: Epoch) -> Result<&mut Replica> {
        let replica = self.leader(region)?;
        replica.check_version(epoch)?;
        replica.check_not_merging()?;
        Ok(replica)
    }

    /// Takes a client write: it waits in the replica's batch for the end of the turn
    /// (`propose_batch`). A write with a session is stamped with this leader's clock:
    /// the time its region's session table will go by when it applies.
    pub fn on_write(&mut self, req: WriteRequest) {
        let WriteRequest { region, epoch, ops, session, reply } = req;
        if region == DIRECTORY {
            self.wake(region);
            reply(Err(Error::InvalidRequest(
                "the cluster directory takes directory commands only".into(),
            )));
            return;
        }
        // Times the write from here to its successful reply.
        let reply = self.ctx.metrics.timed(reply);
        let time_ms = session.map(|_| self.ctx.now_ms());
        // A key a sink holds is a read-only standby: refused early here too.
        if let Err(e) = self.check_standby(region, &ops) {
            reply(Err(e));
            return;
        }
        let write = Write { epoch, ops, session, time_ms };
        let max = self.ctx.log.max_entry_bytes();
        let replica = match self.leader_at(region, epoch).and_then(|replica| {
            replica.check_keys(&write.ops)?;
            // An entry larger than a WAL record could never be persisted (A3 in
            // ARCHITECTURE.md's Raft log section): refused here, the store goes on.
            let len = command::encoded_writes_len([&write]);
            if len > max {
                return Err(Error::InvalidRequest(format!(
                    "a write of {len} bytes exceeds the largest Raft entry this store's \
                     WAL holds ({max} bytes): split it into smaller writes"
                )));
            }
            Ok(replica)
        }) {
            Ok(replica) => replica,
            Err(e) => {
                reply(Err(e));
                return;
            }
        };
        replica.proposals.batch.push((write, reply));
        self.dirty.insert(region);
    }

    /// Takes a transaction command (`crate::txn`): checked against the leader's view
    /// (the cluster version, the epoch, every key in the region, not merging), stamped
    /// with this leader's clock (the time every replica's apply goes by) and, from
    /// cluster version 5 ([`crate::version::TXN_V3`]), queued for the end of the turn,
    /// where the turn's commands share entries (`propose_txns`); below it, proposed
    /// alone in its entry at once. Checked again when applied, from replicated state
    /// only.
    pub fn on_txn(&mut self, req: TxnRequest) {
        let TxnRequest { region, epoch, mut cmd, reply } = req;
        if region == DIRECTORY {
            self.wake(region);
            reply(Err(Error::InvalidRequest(
                "the cluster directory takes directory commands only".into(),
            )));
            return;
        }
        let now_ms = self.ctx.now_ms();
        let max = self.ctx.log.max_entry_bytes();
        let mut gate = self.ctx.cluster_version.check(crate::version::TXN);
        // A prewrite's session is new at version 4: below it, the prewrite goes as
        // before, without one (applied as it comes; ARCHITECTURE.md, "Exactly once").
        if let TxnCmd::Prewrite { session, .. } = &mut cmd
            && session.is_some()
            && self.ctx.cluster_version.check(crate::version::TXN_V2).is_err()
        {
            *session = None;
        }
        if gate.is_ok() && cmd.needs_v2() {
            gate = self.ctx.cluster_version.check(crate::version::TXN_V2);
        }
        if gate.is_ok() && cmd.needs_v3() {
            gate = self.ctx.cluster_version.check(crate::version::TXN_V3);
        }
        let ctx = self.ctx.clone();
        let checked = gate.and_then(|()| self.leader_at(region, epoch)).and_then(|replica| {
            let r = &replica.region;
            let outside = || Error::KeyNotInRegion { region, current: Some(r.clone()) };
            if cmd.keys().iter().any(|key| !r.contains(key)) {
                return Err(outside());
            }
            check_shape(&cmd, r, outside)?;
            Ok(replica)
        });
        let replica = match checked {
            Ok(replica) => replica,
            Err(e) => {
                reply(Err(e));
                return;
            }
        };
        let batch = match &cmd {
            TxnCmd::ResolveMany { items } => Some(items.len()),
            _ => None,
        };
        // A one-phase commit: its commit timestamp chosen above every read recorded,
        // and its keys locked in memory until it is answered (`txn::concurrency`).
        let (cmd, reply) = match cmd {
            TxnCmd::OnePhase { start_ts, ops, synced, session, .. } => {
                match one_phase(&ctx, replica, start_ts, ops, (synced, session), reply) {
                    Some(taken) => taken,
                    None => return,
                }
            }
            // Async commit of a snapshot transaction: its minimum commit timestamp
            // chosen the same way, its keys locked in memory until it is answered.
            TxnCmd::Prewrite { min_commit: Some(asked), .. } => {
                match min_commit(&ctx, replica, cmd, asked.synced, reply) {
                    Some(taken) => taken,
                    None => return,
                }
            }
            cmd => (cmd, reply),
        };
        let one_phase = matches!(cmd, TxnCmd::OnePhase { .. });
        let data = command::encode_txn(&TxnEntry { epoch, now_ms, cmd });
        // As for writes (A3 in ARCHITECTURE.md's Raft log section).
        if data.len() > max {
            reply(Err(Error::InvalidRequest(format!(
                "a transaction command of {} bytes exceeds the largest Raft entry this store's WAL holds ({max} bytes): split the transaction",
                data.len()
            ))));
            return;
        }
        let queued = QueuedTxn { data, reply, one_phase, resolve_items: batch };
        if ctx.cluster_version.check(crate::version::TXN_V3).is_ok() {
            replica.proposals.txns.push(queued);
            self.dirty.insert(region);
        } else if propose_txns(replica, &ctx.metrics, vec![queued]) {
            self.dirty.insert(region);
        }
    }

    /// Proposes the transaction commands taken this turn (cluster version 5 on) as few
    /// entries as the size bound allows, in the order they came: each entry holds
    /// whole commands, never more than a WAL record (A3), and a lone one keeps its own
    /// entry's shape (`command::encode_txns`).
    pub(super) fn propose_txns(&mut self, region: RegionId) {
        let max = self.ctx.config.max_entry_bytes.min(self.ctx.log.max_entry_bytes());
        let Some(replica) = self.replicas.get_mut(&region) else { return };
        if replica.proposals.txns.is_empty() {
            return;
        }
        let queued = std::mem::take(&mut replica.proposals.txns);
        let mut chunk = Vec::new();
        let mut bytes = command::ENCODED_TXNS_BYTES;
        for txn in queued {
            let len = txn.data.len().saturating_sub(1);
            if !chunk.is_empty() && bytes + len > max {
                propose_txns(replica, &self.ctx.metrics, std::mem::take(&mut chunk));
                bytes = command::ENCODED_TXNS_BYTES;
            }
            bytes += len;
            chunk.push(txn);
        }
        propose_txns(replica, &self.ctx.metrics, chunk);
    }

    /// Takes a linearizable read: it waits for the end of the turn (`issue_reads`).
    pub fn on_read(&mut self, req: ReadRequest) {
        // A get of a region this store alone votes in needs no `ReadIndex` round
        // (`reader::LocalReads`); the threaded store tries that before it queues.
        let Some(req) = self.ctx.local_reads.serve(&self.ctx, req) else { return };
        let region = req.region;
        // A snapshot read is recorded on arrival (`txn::concurrency`): a one-phase
        // commit proposed from now on lands above it.
        if let Err(e) = self.ctx.concurrency.observe_read(region, &req.query) {
            (req.reply)(Err(e));
            return;
        }
        match self.leader(region).and_then(|replica| {
            replica.check_version(req.epoch)?;
            replica.check_readable()?;
            Ok(replica)
        }) {
            Ok(replica) => replica.reads.unissued.push(req),
            Err(e) => {
                (req.reply)(Err(e));
                return;
            }
        }
        self.dirty.insert(region);
    }

    /// Sends the reads taken this turn to raft-rs as one `ReadIndex` request, once this
    /// leader has committed an entry of its term (raft-rs drops a request before).
    ///
    /// A round goes out every turn, even with another in flight. Holding a turn's reads
    /// until the round before is confirmed doubled the gets per round (13.6 to 30 at 64
    /// clients, 3.8 to 7.8 at 16: issue 13, three stores in one process), but the
    /// poller then slept between rounds: more context switches and more CPU per get,
    /// fewer gets per second at both client counts.
    pub(super) fn issue_reads(&mut self, region: RegionId) {
        let Some(replica) = self.replicas.get_mut(&region) else { return };
        if replica.reads.unissued.is_empty() || !replica.has_committed_in_its_term() {
            return;
        }
        let reads = &mut replica.reads;
        let ctx = reads.next_ctx;
        reads.next_ctx += 1;
        replica.raw.read_index(ctx.to_le_bytes().to_vec());
        let unissued = std::mem::take(&mut reads.unissued);
        reads.pending.entry(ctx).or_default().extend(unissued);
    }

    /// Takes a membership change (one peer at a time).
    pub fn on_change_peers(&mut self, req: ChangePeersRequest) {
        let ChangePeersRequest { region, epoch, change, reply } = req;
        let replica = match self.leader(region).and_then(|replica| {
            if epoch != replica.region.epoch {
                let current = vec![replica.region.clone()];
                return Err(Error::EpochNotMatch { region, current });
            }
            replica.check_not_merging()?;
            Ok(replica)
        }) {
            Ok(replica) => replica,
            Err(e) => {
                reply(Err(e));
                return;
            }
        };
        let mut single = ConfChangeSingle::default();
        let mut added = Vec::new();
        match change {
            PeerChange::AddVoter(p) => {
                single.set_change_type(ConfChangeType::AddNode);
                single.node_id = p.id.0;
                added.push(p);
            }
            PeerChange::AddLearner(p) => {
                single.set_change_type(ConfChangeType::AddLearnerNode);
                single.node_id = p.id.0;
                added.push(p);
            }
            PeerChange::Remove(id) => {
                single.set_change_type(ConfChangeType::RemoveNode);
                single.node_id = id.0;
            }
        }
        let mut cc = ConfChangeV2::default();
        cc.mut_changes().push(single);
        let context = command::encode_change_peers(&ChangePeersContext { epoch, peers: added });
        let proposed = Proposed::ConfChange { context, change: cc };
        replica.raw.raft.skip_bcast_commit(false); // see `maybe_hibernate`
        if replica.propose(proposed, Waiting::ChangePeers(reply)).is_some() {
            self.dirty.insert(region);
        }
    }

    /// Takes an admin command (split, prepare, commit or roll back a merge). It is
    /// checked here against the leader's view, and again when applied, where the
    /// decision is made from replicated state only. A merge into a right neighbour is
    /// refused here.
    pub fn on_admin(&mut self, req: AdminRequest) {
        let AdminRequest { region, epoch, cmd, reply } = req;
        let floor = self.id_floor(region);
        // A kind newer than the first release is refused until the cluster runs at
        // the version that introduced it (`crate::version`): nothing is proposed.
        let gate = match cmd {
            AdminCmd::ComputeHash => self.ctx.cluster_version.check(crate::version::IMAGE_HASH),
            _ => Ok(()),
        };
        let dups = self.check_admin_dups(region, &cmd, true);
        let replica = match gate.and(dups).and_then(|()| self.leader(region)).and_then(|replica| {
            check_admin(replica, floor, epoch, &cmd, replica.applied_index + 1)?;
            // A user key's lock and versions stay in one region
            // (`mvcc::split_boundary`). Checked before propose only, like the merge
            // rule below: a replica running a binary from before the transactional
            // keyspace applies the same split, so no replica refuses what another applies.
            if let AdminCmd::Split { split_keys, .. } = &cmd
                && split_keys.iter().any(|k| {
                    crate::txn::mvcc::is_txn_key(k)
                        && crate::txn::mvcc::decode_lock_key(k).is_none()
                })
            {
                return Err(Error::InvalidRequest(
                    "a split key in the transactional keyspace must be a lock key \
                     (see mvcc::split_boundary)"
                        .into(),
                ));
            }
            // A region merges into its left neighbour only, so that every region keeps
            // its start key for its whole life: the proof that a hosted region is gone
            // (`StoreCore::superseded`) rests on it. Checked before propose, so logs
            // written by earlier binaries still apply as they did.
            if let AdminCmd::PrepareMerge { target } = &cmd
                && target.end.as_ref() != Some(&replica.region.start)
            {
                return Err(Error::InvalidRequest(format!(
                    "region {} merges into its left neighbour only, not into region {}",
                    region, target.id
                )));
            }
            if let AdminCmd::PrepareMerge { .. } = cmd
                && replica.has_pending_conf_change()
            {
                let reason = DropReason::ConfChangePending;
                return Err(Error::Dropped { region, reason });
            }
            Ok(replica)
        }) {
            Ok(replica) => replica,
            Err(e) => {
                reply(Err(e));
                return;
            }
        };
        let data = command::encode_admin(&Admin { epoch, cmd });
        replica.raw.raft.skip_bcast_commit(false); // see `maybe_hibernate`
        if replica.propose(Proposed::Entry(data), Waiting::Admin(reply)).is_some() {
            self.dirty.insert(region);
        }
    }

    /// Proposes a `ComputeHash` on each awake region this store leads whose turn
    /// came (`StoreConfig::image_hash_interval`; the first turn staggered by region id,
    /// so that regions do not all hash on one tick), while the cluster version allows
    /// it. A hibernating region is not woken for it: its turn waits until something
    /// else wakes it (a write, which is when its image changes). The result lands on
    /// every replica's status; the reply is not awaited.
    pub(super) fn propose_image_hashes(&mut self) {
        let Some(every) = self.ctx.config.image_hash_ticks() else { return };
        if self.ctx.cluster_version.check(crate::version::IMAGE_HASH).is_err() {
            return;
        }
        let ticks = self.ticks;
        let mut due = Vec::new();
        for &id in &self.awake {
            let Some(replica) = self.replicas.get_mut(&id) else { continue };
            if !replica.is_leader() || replica.halted.is_some() {
                continue;
            }
            let at = *replica.image_hash_due.get_or_insert_with(|| {
                ticks + 1 + id.0.wrapping_mul(0x9e37_79b9_7f4a_7c15) % every
            });
            if ticks >= at {
                replica.image_hash_due = Some(ticks + every);
                due.push((id, replica.region.epoch));
            }
        }
        due.sort_unstable_by_key(|(id, _)| *id); // deterministic proposal order
        for (region, epoch) in due {
            let reply: Reply<AdminResult> = Box::new(|_| {});
            self.on_admin(AdminRequest { region, epoch, cmd: AdminCmd::ComputeHash, reply });
        }
    }

    /// Takes a command for the cluster directory (this store must lead it).
    pub fn on_directory(&mut self, cmd: &DirCmd, reply: Reply<DirResult>) {
        if matches!(cmd, DirCmd::RecordHealth { .. })
            && let Err(e) = self.ctx.cluster_version.check(crate::version::HEALTH_AUDIT)
        {
            reply(Err(e));
            return;
        }
        if matches!(cmd, DirCmd::SaveTsLimit { .. })
            && let Err(e) = self.ctx.cluster_version.check(crate::version::TXN)
        {
            reply(Err(e));
            return;
        }
        if matches!(cmd, DirCmd::SetGcSafepoint { .. })
            && let Err(e) = self.ctx.cluster_version.check(crate::version::TXN_V2)
        {
            reply(Err(e));
            return;
        }
        if matches!(cmd, DirCmd::AddDup { .. } | DirCmd::AlterDup(_) | DirCmd::DropDup { .. })
            && let Err(e) = self.ctx.cluster_version.check(crate::version::DUP_V2)
        {
            reply(Err(e));
            return;
        }
        if let DirCmd::AlterDup(a) = cmd
            && (crate::directory::dups::is_cutover_status(a.to)
                || crate::directory::dups::is_cutover_status(a.from))
            && let Err(e) = self.ctx.cluster_version.check(crate::version::DUP_V3)
        {
            reply(Err(e));
            return;
        }
        let replica = match self.leader(DIRECTORY) {
            Ok(replica) => replica,
            Err(e) => {
                reply(Err(e));
                return;
            }
        };
        let data = command::encode_directory(cmd);
        replica.raw.raft.skip_bcast_commit(false); // see `maybe_hibernate`
        if replica.propose(Proposed::Entry(data), Waiting::Directory(reply)).is_some() {
            self.dirty.insert(DIRECTORY);
        }
    }

    /// Proposes this store's view of the cluster version to the directory if this
    /// store leads it, has applied all it knows committed, and the directory holds an
    /// older version. This is how a new cluster starts at the version its first stores
    /// chose at bootstrap (each learned it before creating the directory's replica), and
    /// it re-asserts only a version the store learned from the directory or from that
    /// bootstrap: a finalized one, so no older replica can be left behind by it. Never
    /// above the store's own maximum; idempotent if two land.
    pub(super) fn assert_cluster_version(&mut self) {
        let view = self.ctx.cluster_version.active();
        if view > self.ctx.config.cluster_version_max {
            return;
        }
        let Some(replica) = self.replicas.get(&DIRECTORY) else { return };
        if !replica.is_leader()
            || replica.halted.is_some()
            || !replica.is_initialized()
            || replica.applied_index < replica.raw.raft.raft_log.committed
        {
            return;
        }
        let held = match crate::directory::cluster_version(&self.ctx.directory.read_view()) {
            Ok(held) => held.active,
            Err(e) => {
                tracing::warn!(error = %e, "the directory's cluster version does not decode");
                return;
            }
        };
        if held >= view {
            return;
        }
        tracing::info!(held, view, "proposing this store's cluster version to the directory");
        self.wake(DIRECTORY);
        let by = self.ctx.config.store_id;
        self.on_directory(&DirCmd::SetClusterVersion { target: view, by }, Box::new(|_| {}));
    }

    /// Asks the leader of `region` to hand leadership to `to`.
    pub fn on_transfer_leader(&mut self, region: RegionId, to: PeerId) {
        self.wake(region);
        if let Some(replica) = self.replicas.get_mut(&region) {
            replica.raw.transfer_leader(to.0);
            self.dirty.insert(region);
        }
    }

    /// Proposes the writes batched this turn as few entries as the size bound allows.
    pub(super) fn propose_batch(&mut self, region: RegionId) {
        // Never more than a WAL record holds, whatever the configuration says.
        let max = self.ctx.config.max_entry_bytes.min(self.ctx.log.max_entry_bytes());
        let Some(replica) = self.replicas.get_mut(&region) else { return };
        if replica.proposals.batch.is_empty() {
            return;
        }
        let batch = std::mem::take(&mut replica.proposals.batch);
        let mut writes = Vec::new();
        let mut replies = Vec::new();
        let mut bytes = 0;
        let mut chunks = Vec::new();
        for (write, reply) in batch {
            let len = write.encoded_len();
            if !writes.is_empty() && command::ENCODED_WRITES_BYTES + bytes + len > max {
                chunks.push((std::mem::take(&mut writes), std::mem::take(&mut replies)));
                bytes = 0;
            }
            bytes += len;
            writes.push(write);
            replies.push(reply);
        }
        chunks.push((writes, replies));
        for (writes, replies) in chunks {
            if !replica.is_leader() {
                for reply in replies {
                    reply(Err(replica.not_leader()));
                }
                continue;
            }
            let data = command::encode_writes(&writes);
            if replica.propose(Proposed::Entry(data), Waiting::Writes(replies)).is_some() {
                self.ctx.metrics.on_proposed(writes.len());
            }
        }
    }
}

/// Proposes `chunk` (transaction commands that fit one entry, each already checked
/// alone against the entry bound) as one entry, if this replica still leads; each
/// proposer learns its own outcome. True if it was proposed.
fn propose_txns(
    replica: &mut Replica,
    metrics: &crate::metrics::WriteMetrics,
    chunk: Vec<QueuedTxn>,
) -> bool {
    if chunk.is_empty() {
        return false;
    }
    if !replica.is_leader() {
        for txn in chunk {
            (txn.reply)(Err(replica.not_leader()));
        }
        return false;
    }
    let data = {
        let parts: Vec<&[u8]> = chunk.iter().map(|t| t.data.as_slice()).collect();
        command::encode_txns(&parts)
    };
    let counts: Vec<(bool, Option<usize>)> =
        chunk.iter().map(|t| (t.one_phase, t.resolve_items)).collect();
    let waiting = if chunk.len() == 1 {
        Waiting::Txn(chunk.into_iter().next().expect("one").reply)
    } else {
        Waiting::Txns(chunk.into_iter().map(|t| t.reply).collect())
    };
    if replica.propose(Proposed::Entry(data), waiting).is_none() {
        return false;
    }
    metrics.on_txn_entry_proposed();
    for (one_phase, resolve_items) in counts {
        metrics.on_txn_proposed(one_phase);
        if let Some(items) = resolve_items {
            metrics.on_resolve_batch(items);
        }
    }
    true
}

/// Takes a one-phase commit's in-memory locks and chooses its commit timestamp
/// (`txn::concurrency`): the command to propose, stamped, and its reply, which
/// releases the locks once it is answered (applied and visible, refused, or dropped).
/// `None`: refused, and answered.
fn one_phase(
    ctx: &std::sync::Arc<super::StoreContext>,
    replica: &Replica,
    start_ts: u64,
    ops: Vec<crate::command::Op>,
    (synced, session): (Option<crate::txn::SyncedTs>, Option<crate::command::WriteSession>),
    reply: Reply<crate::txn::TxnReply>,
) -> Option<(TxnCmd, Reply<crate::txn::TxnReply>)> {
    let region = replica.region.id;
    let at = LeaderAt { region, term: replica.term(), epoch_version: replica.region.epoch.version };
    let keys: Vec<bytes::Bytes> =
        ops.iter().map(|op| bytes::Bytes::copy_from_slice(op.key())).collect();
    let commit_ts = match ctx.concurrency.begin_one_phase(at, start_ts, &keys, synced) {
        Ok(ts) => ts,
        Err(e) => {
            reply(Err(e));
            return None;
        }
    };
    let guard = Release { ctx: ctx.clone(), region, keys };
    let reply: Reply<crate::txn::TxnReply> = Box::new(move |result| {
        drop(guard);
        reply(result);
    });
    let cmd = TxnCmd::OnePhase { start_ts, ops, commit_ts: Some(commit_ts), synced: None, session };
    Some((cmd, reply))
}

/// Stamps the minimum commit timestamp of an async-commit snapshot prewrite `cmd`
/// (`txn::concurrency`, exactly as a one-phase commit's timestamp) and takes its
/// keys' in-memory locks: the command to propose, stamped, and its reply, which
/// releases them once it is answered. `None`: refused, and answered.
fn min_commit(
    ctx: &std::sync::Arc<super::StoreContext>,
    replica: &Replica,
    mut cmd: TxnCmd,
    synced: Option<crate::txn::SyncedTs>,
    reply: Reply<crate::txn::TxnReply>,
) -> Option<(TxnCmd, Reply<crate::txn::TxnReply>)> {
    let TxnCmd::Prewrite { start_ts: Some(start_ts), ops, min_commit, .. } = &mut cmd else {
        reply(Err(Error::InvalidRequest(
            "a prewrite asking for a minimum commit timestamp needs its start timestamp".into(),
        )));
        return None;
    };
    let region = replica.region.id;
    let at = LeaderAt { region, term: replica.term(), epoch_version: replica.region.epoch.version };
    let keys: Vec<bytes::Bytes> =
        ops.iter().map(|op| bytes::Bytes::copy_from_slice(op.key())).collect();
    let ts = match ctx.concurrency.begin_one_phase(at, *start_ts, &keys, synced) {
        Ok(ts) => ts,
        Err(e) => {
            reply(Err(e));
            return None;
        }
    };
    *min_commit = Some(crate::txn::MinCommit { ts: Some(ts), synced: None });
    let guard = Release { ctx: ctx.clone(), region, keys };
    let reply: Reply<crate::txn::TxnReply> = Box::new(move |result| {
        drop(guard);
        reply(result);
    });
    Some((cmd, reply))
}

/// Releases a one-phase commit's in-memory locks when dropped: when its reply is
/// called, or dropped uncalled.
struct Release {
    ctx: std::sync::Arc<super::StoreContext>,
    region: RegionId,
    keys: Vec<bytes::Bytes>,
}

impl Drop for Release {
    fn drop(&mut self) {
        self.ctx.concurrency.release(self.region, &self.keys);
    }
}

/// A transaction command's shape against its region `r` (the leader's check before
/// proposing): the primary's record in the region, and the key-count bounds.
fn check_shape(
    cmd: &TxnCmd,
    r: &regionkv_engine::Region,
    outside: impl Fn() -> Error,
) -> Result<(), Error> {
    match &cmd {
        TxnCmd::Prewrite { primary_key, ops, record, .. } => {
            if record.is_some() && !r.contains(primary_key) {
                return Err(outside());
            }
            if ops.len() > MAX_TXN_KEYS
                || record.as_ref().is_some_and(|i| i.participants.len() > MAX_TXN_KEYS)
            {
                return Err(Error::InvalidRequest(format!(
                    "a transaction writes {MAX_TXN_KEYS} keys at most"
                )));
            }
        }
        TxnCmd::ResolveMany { .. } if cmd.keys().len() > 4 * MAX_TXN_KEYS => {
            return Err(Error::InvalidRequest(format!(
                "a batched resolve names {} keys at most",
                4 * MAX_TXN_KEYS
            )));
        }
        TxnCmd::OnePhase { ops, .. } if ops.len() > MAX_TXN_KEYS => {
            return Err(Error::InvalidRequest(format!(
                "a transaction writes {MAX_TXN_KEYS} keys at most"
            )));
        }
        TxnCmd::CollectVersions { safepoint, keys } => {
            crate::txn::gc::check(*safepoint, keys).map_err(Error::InvalidRequest)?;
        }
        TxnCmd::Resolve { keys, .. } | TxnCmd::CheckLocks { keys, .. }
            if keys.len() > MAX_TXN_KEYS =>
        {
            return Err(Error::InvalidRequest(format!(
                "a resolve names {MAX_TXN_KEYS} keys at most"
            )));
        }
        _ => {}
    }
    Ok(())
}
