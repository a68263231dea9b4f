//! The simulator's requests: client writes and reads, membership, admin and directory
//! commands, each sent to a store's core and answered through a [`Pending`].

use std::time::Duration;

use regionkv_engine::{Epoch, PeerId, Region, RegionId, StoreId};

use super::{Pending, SimCluster};
use crate::command::{AdminCmd, Op, WriteSession};
use crate::error::{Error, Result};
use crate::request::{
    AdminRequest, AdminResult, ChangePeersRequest, MergeStatus, PeerChange, Query, QueryResult,
    ReadRequest, WriteRequest,
};

impl SimCluster {
    /// Submits a write to `store`'s peer of `region`, at the epoch that store knows.
    pub fn write(&mut self, store: StoreId, region: RegionId, ops: Vec<Op>) -> Pending<()> {
        let epoch = self.region(store, region).map_or(Epoch::INITIAL, |r| r.epoch);
        self.write_at(store, region, epoch, ops)
    }

    /// Submits a write routed with `epoch` (a client whose view may be stale).
    pub fn write_at(
        &mut self,
        store: StoreId,
        region: RegionId,
        epoch: Epoch,
        ops: Vec<Op>,
    ) -> Pending<()> {
        self.submit_write(store, region, epoch, ops, None)
    }

    /// Submits a write of a client session (at the epoch `store` knows): the same
    /// `session` sent again is applied at most once.
    pub fn write_in_session(
        &mut self,
        store: StoreId,
        region: RegionId,
        ops: Vec<Op>,
        session: WriteSession,
    ) -> Pending<()> {
        let epoch = self.region(store, region).map_or(Epoch::INITIAL, |r| r.epoch);
        self.submit_write(store, region, epoch, ops, Some(session))
    }

    /// Submits a write of a client session routed with `epoch` (a client's own view
    /// of the region, which may be stale): how a routing client retries a write whose
    /// outcome it did not learn.
    pub fn write_in_session_at(
        &mut self,
        store: StoreId,
        region: RegionId,
        epoch: Epoch,
        ops: Vec<Op>,
        session: WriteSession,
    ) -> Pending<()> {
        self.submit_write(store, region, epoch, ops, Some(session))
    }

    fn submit_write(
        &mut self,
        store: StoreId,
        region: RegionId,
        epoch: Epoch,
        ops: Vec<Op>,
        session: Option<WriteSession>,
    ) -> Pending<()> {
        let pending = Pending::new();
        match self.running(store) {
            Ok(running) => {
                let reply = pending.reply();
                running.core.on_write(WriteRequest { region, epoch, ops, session, reply });
                self.process(store);
            }
            Err(e) => (pending.reply())(Err(e)),
        }
        pending
    }

    /// Submits writes to several regions and, optionally, an admin command to `store`
    /// at once: they all reach its core before it flushes, so they are proposed and
    /// persisted together and, with one voter, applied in the same pass.
    pub fn submit_together(
        &mut self,
        store: StoreId,
        writes: Vec<(RegionId, Vec<Op>)>,
        admin: Option<(RegionId, AdminCmd)>,
    ) -> (Vec<Pending<()>>, Option<Pending<AdminResult>>) {
        let requests: Vec<_> = writes
            .into_iter()
            .map(|(region, ops)| {
                let epoch = self.region(store, region).map_or(Epoch::INITIAL, |r| r.epoch);
                (region, epoch, ops, Pending::new())
            })
            .collect();
        let admin = admin.map(|(region, cmd)| {
            let epoch = self.region(store, region).map_or(Epoch::INITIAL, |r| r.epoch);
            (region, epoch, cmd, Pending::new())
        });
        let pendings = requests.iter().map(|r| r.3.clone()).collect();
        let admin_pending = admin.as_ref().map(|a| a.3.clone());
        match self.running(store) {
            Ok(running) => {
                for (region, epoch, ops, pending) in requests {
                    running.core.on_write(WriteRequest {
                        region,
                        epoch,
                        ops,
                        session: None,
                        reply: pending.reply(),
                    });
                }
                if let Some((region, epoch, cmd, pending)) = admin {
                    running.core.on_admin(AdminRequest {
                        region,
                        epoch,
                        cmd,
                        reply: pending.reply(),
                    });
                }
                self.process(store);
            }
            Err(e) => {
                let stopped = e.to_string();
                for (_, _, _, pending) in requests {
                    (pending.reply())(Err(Error::Internal(stopped.clone())));
                }
                if let Some((_, _, _, pending)) = admin {
                    (pending.reply())(Err(e));
                }
            }
        }
        (pendings, admin_pending)
    }

    /// Submits a linearizable read to `store`.
    pub fn read(&mut self, store: StoreId, region: RegionId, query: Query) -> Pending<QueryResult> {
        let epoch = self.region(store, region).map_or(Epoch::INITIAL, |r| r.epoch);
        self.read_at(store, region, epoch, query)
    }

    /// Submits a linearizable read routed with `epoch` (a client's view of the region).
    pub fn read_at(
        &mut self,
        store: StoreId,
        region: RegionId,
        epoch: Epoch,
        query: Query,
    ) -> Pending<QueryResult> {
        let pending = Pending::new();
        match self.running(store) {
            Ok(running) => {
                running.core.on_read(ReadRequest { region, epoch, query, reply: pending.reply() });
                self.process(store);
            }
            Err(e) => (pending.reply())(Err(e)),
        }
        pending
    }

    /// Submits a membership change to `store`.
    pub fn change_peers(
        &mut self,
        store: StoreId,
        region: RegionId,
        change: PeerChange,
    ) -> Pending<Region> {
        let pending = Pending::new();
        let epoch = self.region(store, region).map_or(Epoch::INITIAL, |r| r.epoch);
        match self.running(store) {
            Ok(running) => {
                running.core.on_change_peers(ChangePeersRequest {
                    region,
                    epoch,
                    change,
                    reply: pending.reply(),
                });
                self.process(store);
            }
            Err(e) => (pending.reply())(Err(e)),
        }
        pending
    }

    /// Submits a transaction command to `store`'s peer of `region`, at the epoch that
    /// store knows.
    pub fn txn(
        &mut self,
        store: StoreId,
        region: RegionId,
        cmd: crate::txn::TxnCmd,
    ) -> Pending<crate::txn::TxnReply> {
        let epoch = self.region(store, region).map_or(Epoch::INITIAL, |r| r.epoch);
        let pending = Pending::new();
        match self.running(store) {
            Ok(running) => {
                let reply = pending.reply();
                running.core.on_txn(crate::txn::TxnRequest { region, epoch, cmd, reply });
                self.process(store);
            }
            Err(e) => (pending.reply())(Err(e)),
        }
        pending
    }

    /// Submits transaction commands to `store`'s peers of their regions at once (each
    /// at the epoch that store knows): they all reach its core before it flushes, so a
    /// leader at cluster version 5 proposes each region's together.
    pub fn txns_together(
        &mut self,
        store: StoreId,
        cmds: Vec<(RegionId, crate::txn::TxnCmd)>,
    ) -> Vec<Pending<crate::txn::TxnReply>> {
        let requests: Vec<_> = cmds
            .into_iter()
            .map(|(region, cmd)| {
                let epoch = self.region(store, region).map_or(Epoch::INITIAL, |r| r.epoch);
                (region, epoch, cmd, Pending::new())
            })
            .collect();
        let pendings = requests.iter().map(|r| r.3.clone()).collect();
        match self.running(store) {
            Ok(running) => {
                for (region, epoch, cmd, pending) in requests {
                    let reply = pending.reply();
                    running.core.on_txn(crate::txn::TxnRequest { region, epoch, cmd, reply });
                }
                self.process(store);
            }
            Err(e) => {
                let stopped = e.to_string();
                for (_, _, _, pending) in requests {
                    (pending.reply())(Err(Error::Internal(stopped.clone())));
                }
            }
        }
        pendings
    }

    /// Submits a duplication command to `store`'s peer of `region`, at the epoch that
    /// store knows.
    pub fn dup(
        &mut self,
        store: StoreId,
        region: RegionId,
        cmd: crate::dup::DupCmd,
    ) -> Pending<crate::dup::DupReply> {
        let epoch = self.region(store, region).map_or(Epoch::INITIAL, |r| r.epoch);
        let pending = Pending::new();
        match self.running(store) {
            Ok(running) => {
                let reply = pending.reply();
                running.core.on_dup(crate::dup::DupRequest { region, epoch, cmd, reply });
                self.process(store);
            }
            Err(e) => (pending.reply())(Err(e)),
        }
        pending
    }

    /// Submits a sink command to `store`'s peer of `region`; the command's epoch is
    /// replaced by the one that store knows.
    pub fn sink(
        &mut self,
        store: StoreId,
        region: RegionId,
        mut cmd: crate::sink::SinkEntryCmd,
    ) -> Pending<crate::sink::SinkResult> {
        cmd.epoch = self.region(store, region).map_or(Epoch::INITIAL, |r| r.epoch);
        let pending = Pending::new();
        match self.running(store) {
            Ok(running) => {
                let reply = pending.reply();
                running.core.on_sink(crate::sink::SinkRequest { region, cmd, reply });
                self.process(store);
            }
            Err(e) => (pending.reply())(Err(e)),
        }
        pending
    }

    /// Submits an admin command to `store`'s peer of `region`, at the epoch that store
    /// knows.
    pub fn admin(
        &mut self,
        store: StoreId,
        region: RegionId,
        cmd: AdminCmd,
    ) -> Pending<AdminResult> {
        let epoch = self.region(store, region).map_or(Epoch::INITIAL, |r| r.epoch);
        self.admin_at(store, region, epoch, cmd)
    }

    /// Submits an admin command to `store`'s peer of `region`, routed with `epoch`.
    pub fn admin_at(
        &mut self,
        store: StoreId,
        region: RegionId,
        epoch: Epoch,
        cmd: AdminCmd,
    ) -> Pending<AdminResult> {
        let pending = Pending::new();
        match self.running(store) {
            Ok(running) => {
                running.core.on_admin(AdminRequest { region, epoch, cmd, reply: pending.reply() });
                self.process(store);
            }
            Err(e) => (pending.reply())(Err(e)),
        }
        pending
    }

    /// Submits a command for the cluster directory to `store` (its leader, for the
    /// command to be taken); needs [`SimConfig::directory`](super::SimConfig::directory).
    pub fn directory(
        &mut self,
        store: StoreId,
        cmd: &crate::directory::DirCmd,
    ) -> Pending<crate::directory::DirResult> {
        let pending = Pending::new();
        match self.running(store) {
            Ok(running) => {
                running.core.on_directory(cmd, pending.reply());
                self.process(store);
            }
            Err(e) => (pending.reply())(Err(e)),
        }
        pending
    }

    /// Asks `store` (the directory's leader, for it to be served) for `count`
    /// consecutive timestamps (`crate::tso`); needs
    /// [`SimConfig::directory`](super::SimConfig::directory).
    pub fn timestamps(&mut self, store: StoreId, count: u32) -> Pending<u64> {
        let pending = Pending::new();
        match self.running(store) {
            Ok(running) => {
                running.core.on_timestamps(count, pending.reply());
                self.process(store);
            }
            Err(e) => (pending.reply())(Err(e)),
        }
        pending
    }

    /// The merge status of `region` as `store`'s peer (its leader) sees it.
    pub fn merge_status(&self, store: StoreId, region: RegionId) -> Result<MergeStatus> {
        let running = self
            .stores
            .get(&store)
            .and_then(|s| s.running.as_ref())
            .ok_or(Error::Internal(format!("store {store} is not running")))?;
        running.core.merge_status(region)
    }

    /// Runs until `region` has a leader, then `f` on it; retries routing errors until
    /// `max` passes.
    fn on_leader<T>(
        &mut self,
        region: RegionId,
        max: Duration,
        mut f: impl FnMut(&mut SimCluster, StoreId) -> Option<Result<T>>,
    ) -> Result<T> {
        let deadline = self.now + max;
        let mut last = Error::NotLeader { region, leader: None };
        while self.now < deadline {
            let Some(leader) = self.wait_leader(region, deadline.saturating_sub(self.now)) else {
                break;
            };
            match f(self, leader) {
                Some(Err(e)) if e.is_retryable() => {
                    last = e;
                    self.run_for(Duration::from_millis(20));
                }
                Some(result) => return result,
                None => last = Error::Timeout { region },
            }
        }
        Err(last)
    }

    /// Asks `store`'s peer of `region` to hand leadership to `to`.
    pub fn transfer_leader(&mut self, store: StoreId, region: RegionId, to: PeerId) {
        if let Ok(running) = self.running(store) {
            running.core.on_transfer_leader(region, to);
            self.process(store);
        }
    }

    /// Runs until `pending` completes or `max` passes; returns its outcome.
    pub fn wait<T>(&mut self, pending: &Pending<T>, max: Duration) -> Option<Result<T>> {
        self.run_until(max, |_| pending.is_done());
        pending.take()
    }
}

/// Drives admin commands against the simulated cluster's leaders, running virtual
/// time while it waits.
impl crate::merge_driver::RegionAdmin for SimCluster {
    fn admin(&mut self, region: RegionId, epoch: Epoch, cmd: AdminCmd) -> Result<AdminResult> {
        let max = Duration::from_secs(30);
        self.on_leader(region, max, |c, leader| {
            let pending = Pending::new();
            match c.running(leader) {
                Ok(running) => {
                    running.core.on_admin(AdminRequest {
                        region,
                        epoch,
                        cmd: cmd.clone(),
                        reply: pending.reply(),
                    });
                    c.process(leader);
                }
                Err(e) => return Some(Err(e)),
            }
            c.wait(&pending, Duration::from_secs(2))
        })
    }

    fn merge_status(&mut self, region: RegionId) -> Result<MergeStatus> {
        self.on_leader(region, Duration::from_secs(30), |c, leader| {
            Some(SimCluster::merge_status(c, leader, region))
        })
    }

    fn pause(&mut self, duration: Duration) {
        self.run_for(duration);
    }

    fn elapsed(&mut self) -> Duration {
        self.now
    }
}
