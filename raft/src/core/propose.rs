//! Requests in: client writes and reads, membership changes, admin and directory
//! commands are checked here and become raft-rs proposals (writes batched per turn).

use raft::eraftpb::{ConfChangeSingle, ConfChangeType, ConfChangeV2};
use regionkv_engine::{PeerId, RegionId};

use super::StoreCore;
use super::admin_apply::check_admin;
use crate::command::{self, Admin, AdminCmd, ChangePeersContext, Write};
use crate::directory::{DIRECTORY, DirCmd, DirResult};
use crate::error::Error;
use crate::peer::{
    AdminRequest, ChangePeersRequest, PeerChange, Proposal, ReadRequest, Reply, Waiting,
    WriteRequest,
};

impl StoreCore {
    /// Takes a client write.
    pub fn on_write(&mut self, req: WriteRequest) {
        self.wake(req.region);
        if req.region == DIRECTORY {
            (req.reply)(Err(Error::InvalidRequest(
                "the cluster directory takes directory commands only".into(),
            )));
            return;
        }
        let Some(peer) = self.peers.get_mut(&req.region) else {
            (req.reply)(Err(Error::RegionNotFound { region: req.region }));
            return;
        };
        if !peer.is_leader() {
            let e = peer.not_leader();
            (req.reply)(Err(e));
            return;
        }
        if let Err(e) = peer.check_version(req.epoch).and_then(|()| peer.check_not_merging()) {
            (req.reply)(Err(e));
            return;
        }
        if req.ops.iter().any(|op| !peer.region.contains(op.key())) {
            (req.reply)(Err(Error::KeyNotInRegion {
                region: peer.region.id,
                current: Some(peer.region.clone()),
            }));
            return;
        }
        let write = Write { epoch: req.epoch, ops: req.ops };
        peer.batch_bytes += write.encoded_len();
        peer.batch.push((write, self.ctx.metrics.timed(req.reply)));
        self.dirty.insert(req.region);
    }

    /// Takes a linearizable read.
    pub fn on_read(&mut self, req: ReadRequest) {
        self.wake(req.region);
        let Some(peer) = self.peers.get_mut(&req.region) else {
            (req.reply)(Err(Error::RegionNotFound { region: req.region }));
            return;
        };
        if !peer.is_leader() {
            let e = peer.not_leader();
            (req.reply)(Err(e));
            return;
        }
        if let Err(e) = peer.check_version(req.epoch) {
            (req.reply)(Err(e));
            return;
        }
        peer.reads_unissued.push(req);
        self.dirty.insert(peer.region.id);
    }

    /// Sends the reads taken this turn to raft-rs as one `ReadIndex` request, once this
    /// leader has committed an entry of its term (raft-rs drops a request before).
    pub(super) fn issue_reads(&mut self, region: RegionId) {
        let Some(peer) = self.peers.get_mut(&region) else { return };
        if peer.reads_unissued.is_empty() || !peer.raw.raft.commit_to_current_term() {
            return;
        }
        let ctx = peer.next_read_ctx;
        peer.next_read_ctx += 1;
        peer.raw.read_index(ctx.to_le_bytes().to_vec());
        let reads = std::mem::take(&mut peer.reads_unissued);
        peer.reads_pending.entry(ctx).or_default().extend(reads);
    }

    /// Takes a membership change (one peer at a time).
    pub fn on_change_peers(&mut self, req: ChangePeersRequest) {
        self.wake(req.region);
        let Some(peer) = self.peers.get_mut(&req.region) else {
            (req.reply)(Err(Error::RegionNotFound { region: req.region }));
            return;
        };
        if !peer.is_leader() {
            let e = peer.not_leader();
            (req.reply)(Err(e));
            return;
        }
        if req.epoch != peer.region.epoch {
            (req.reply)(Err(Error::EpochNotMatch {
                region: req.region,
                current: vec![peer.region.clone()],
            }));
            return;
        }
        if let Err(e) = peer.check_not_merging() {
            (req.reply)(Err(e));
            return;
        }
        let mut single = ConfChangeSingle::default();
        let mut added = Vec::new();
        match req.change {
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
        let context =
            command::encode_change_peers(&ChangePeersContext { epoch: req.epoch, peers: added });
        let before = peer.raw.raft.raft_log.last_index();
        if let Err(e) = peer.raw.propose_conf_change(context, cc) {
            (req.reply)(Err(e.into()));
            return;
        }
        let index = peer.raw.raft.raft_log.last_index();
        if index == before {
            (req.reply)(Err(Error::Dropped {
                region: req.region,
                reason: "raft-rs dropped the proposal",
            }));
            return;
        }
        peer.proposals.push_back(Proposal {
            index,
            term: peer.raw.raft.term,
            waiting: Waiting::ChangePeers(req.reply),
        });
        self.dirty.insert(req.region);
    }

    /// Takes an admin command (split, prepare, commit or roll back a merge). It is
    /// checked here against the leader's view, and again when applied, where the
    /// decision is made from replicated state only.
    pub fn on_admin(&mut self, req: AdminRequest) {
        self.wake(req.region);
        let Some(peer) = self.peers.get_mut(&req.region) else {
            (req.reply)(Err(Error::RegionNotFound { region: req.region }));
            return;
        };
        if !peer.is_leader() {
            let e = peer.not_leader();
            (req.reply)(Err(e));
            return;
        }
        if let Err(e) = check_admin(peer, req.epoch, &req.cmd, peer.applied_index + 1) {
            (req.reply)(Err(e));
            return;
        }
        if let AdminCmd::PrepareMerge { .. } = req.cmd
            && peer.raw.raft.pending_conf_index > peer.applied_index
        {
            (req.reply)(Err(Error::Dropped {
                region: req.region,
                reason: "a membership change is pending; merge after it applied",
            }));
            return;
        }
        let data = command::encode_admin(&Admin { epoch: req.epoch, cmd: req.cmd });
        let before = peer.raw.raft.raft_log.last_index();
        if let Err(e) = peer.raw.propose(Vec::new(), data) {
            (req.reply)(Err(e.into()));
            return;
        }
        let index = peer.raw.raft.raft_log.last_index();
        if index == before {
            (req.reply)(Err(Error::Dropped {
                region: req.region,
                reason: "raft-rs dropped the proposal",
            }));
            return;
        }
        peer.proposals.push_back(Proposal {
            index,
            term: peer.raw.raft.term,
            waiting: Waiting::Admin(req.reply),
        });
        self.dirty.insert(req.region);
    }

    /// Takes a command for the cluster directory (this store must lead it).
    pub fn on_directory(&mut self, cmd: &DirCmd, reply: Reply<DirResult>) {
        self.wake(DIRECTORY);
        let Some(peer) = self.peers.get_mut(&DIRECTORY) else {
            reply(Err(Error::RegionNotFound { region: DIRECTORY }));
            return;
        };
        if !peer.is_leader() {
            reply(Err(peer.not_leader()));
            return;
        }
        let before = peer.raw.raft.raft_log.last_index();
        if let Err(e) = peer.raw.propose(Vec::new(), command::encode_directory(cmd)) {
            reply(Err(e.into()));
            return;
        }
        let index = peer.raw.raft.raft_log.last_index();
        if index == before {
            reply(Err(Error::Dropped {
                region: DIRECTORY,
                reason: "raft-rs dropped the proposal",
            }));
            return;
        }
        peer.proposals.push_back(Proposal {
            index,
            term: peer.raw.raft.term,
            waiting: Waiting::Directory(reply),
        });
        self.dirty.insert(DIRECTORY);
    }

    /// Asks the leader of `region` to hand leadership to `to`.
    pub fn on_transfer_leader(&mut self, region: RegionId, to: PeerId) {
        self.wake(region);
        if let Some(peer) = self.peers.get_mut(&region) {
            peer.raw.transfer_leader(to.0);
            self.dirty.insert(region);
        }
    }

    /// Proposes the writes batched this turn as few entries as the size bound allows.
    pub(super) fn propose_batch(&mut self, region: RegionId) {
        let max = self.ctx.config.max_entry_bytes;
        let Some(peer) = self.peers.get_mut(&region) else { return };
        if peer.batch.is_empty() {
            return;
        }
        let batch = std::mem::take(&mut peer.batch);
        peer.batch_bytes = 0;
        let mut writes = Vec::new();
        let mut replies = Vec::new();
        let mut bytes = 0;
        let mut chunks = Vec::new();
        for (write, reply) in batch {
            let len = write.encoded_len();
            if !writes.is_empty() && bytes + len > max {
                chunks.push((std::mem::take(&mut writes), std::mem::take(&mut replies)));
                bytes = 0;
            }
            bytes += len;
            writes.push(write);
            replies.push(reply);
        }
        chunks.push((writes, replies));
        for (writes, replies) in chunks {
            if !peer.is_leader() {
                for reply in replies {
                    reply(Err(peer.not_leader()));
                }
                continue;
            }
            let data = command::encode_writes(&writes);
            let before = peer.raw.raft.raft_log.last_index();
            match peer.raw.propose(Vec::new(), data) {
                Ok(()) if peer.raw.raft.raft_log.last_index() > before => {
                    self.ctx.metrics.on_proposed(writes.len());
                    let index = peer.raw.raft.raft_log.last_index();
                    peer.proposals.push_back(Proposal {
                        index,
                        term: peer.raw.raft.term,
                        waiting: Waiting::Writes(replies),
                    });
                }
                Ok(()) => {
                    for reply in replies {
                        reply(Err(Error::Dropped {
                            region,
                            reason: "raft-rs dropped the proposal",
                        }));
                    }
                }
                Err(e) => {
                    let reason = if matches!(e, raft::Error::ProposalDropped) {
                        "proposal dropped (leadership changing)"
                    } else {
                        "proposal refused"
                    };
                    for reply in replies {
                        reply(Err(Error::Dropped { region, reason }));
                    }
                }
            }
        }
    }
}
