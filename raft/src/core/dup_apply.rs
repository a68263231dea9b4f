//! Duplication in the store core (`crate::dup`): proposing and applying `DUP`
//! commands, the floor both compaction sites stop at, and the duplication checks of
//! splits and merges.

use regionkv_engine::RegionId;
use regionkv_engine::dup::DupTable;

use super::StoreCore;
use super::apply::Applier;
use crate::command::{self, AdminCmd};
use crate::directory::DIRECTORY;
use crate::dup::{DupCmd, DupEntryCmd, DupReply, DupRequest, check_topology};
use crate::error::{Error, Result};
use crate::replica::{Proposed, Replica, Waiting};

/// One replica's log retention as the simulator checks it (D1, ARCHITECTURE.md
/// "Duplication (source side, first part)").
#[doc(hidden)]
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DupRetention {
    /// The region.
    pub region: RegionId,
    /// This store's peer.
    pub peer: regionkv_engine::PeerId,
    /// The log's first index (its compaction point + 1).
    pub first_index: u64,
    /// The region's duplication floor here; `None`: it takes part in none.
    pub floor: Option<u64>,
    /// The index of the last snapshot the replica installed since the store started.
    pub installed_at: Option<u64>,
}

impl StoreCore {
    /// Takes a duplication command: refused below cluster version 6
    /// ([`crate::version::DUP`]: nothing is proposed), checked against the leader's view
    /// (the epoch's version, not a prepared merge source), and proposed alone in its
    /// entry. Every check of the command itself is made when it applies, from
    /// replicated state only.
    pub fn on_dup(&mut self, req: DupRequest) {
        let DupRequest { region, epoch, cmd, reply } = req;
        if region == DIRECTORY {
            self.wake(region);
            reply(Err(Error::InvalidRequest(
                "the cluster directory takes directory commands only".into(),
            )));
            return;
        }
        let checked = self
            .ctx
            .cluster_version
            .check(crate::version::DUP)
            .and_then(|()| match cmd {
                // The fence is checked by every replica's apply of client writes: an
                // older one would neither decode nor enforce it.
                DupCmd::Fence { .. } => self.ctx.cluster_version.check(crate::version::DUP_V3),
                _ => Ok(()),
            })
            .and_then(|()| self.leader_at(region, epoch));
        let replica = match checked {
            Ok(replica) => replica,
            Err(e) => {
                reply(Err(e));
                return;
            }
        };
        let data = command::encode_dup(&DupEntryCmd { epoch, cmd });
        if replica.propose(Proposed::Entry(data), Waiting::Dup(reply)).is_some() {
            self.dirty.insert(region);
        }
    }

    /// Applies a duplication command at `index` (the round before it is committed
    /// first).
    /// The outer result fails the apply; the inner one is the command's outcome, from
    /// the command, the region's epoch version and merge state, and its duplication
    /// state: alike on every replica, and again on a replay after a restart (which
    /// starts from an image holding the state as of its index).
    pub(super) fn apply_dup(
        &mut self,
        region: RegionId,
        index: u64,
        dup: &DupEntryCmd,
        applier: &mut Applier<'_>,
    ) -> Result<Result<DupReply>> {
        if region == DIRECTORY {
            let refused = "a duplication command to the directory";
            return Ok(Err(Error::InvalidRequest(refused.into())));
        }
        // The state is set between rounds: every image written after this holds the
        // data and the state of the same index.
        applier.cut()?;
        let replica = self.replicas.get(&region).expect("present");
        let refused = if let Err(e) = replica.check_version(dup.epoch) {
            Some(e)
        } else {
            replica
                .merge
                .state
                .filter(|m| index > m.prepare_index)
                .map(|m| Error::Merging { region, target: m.target })
        };
        let engine = self.ctx.engine_of(region);
        let mut table = engine.dup_table(region).ok_or(Error::RegionNotFound { region })?;
        let result = match refused {
            Some(e) => Err(e),
            None => crate::dup::apply(&mut table, region, &dup.cmd, index),
        };
        match result {
            Ok(state) => {
                engine.set_dup_table(region, table)?;
                tracing::info!(region = region.0, index, cmd = ?dup.cmd, "duplication command applied");
                Ok(Ok(DupReply { index, state }))
            }
            Err(refused) => {
                tracing::info!(region = region.0, index, cmd = ?dup.cmd, error = %refused, "duplication command refused");
                Ok(Err(refused))
            }
        }
    }

    /// Where a compaction of `region`'s log wanted at `checkpoint_index` may go: no
    /// further than the region's duplication floor, so that the log a duplication
    /// still needs stays (on every replica: the floor is replicated state).
    pub(super) fn compact_to(&self, region: RegionId, checkpoint_index: u64) -> u64 {
        match self.ctx.engine_of(region).dup_floor(region) {
            Some(floor) => checkpoint_index.min(floor),
            None => checkpoint_index,
        }
    }

    /// Why an admin command of `region` must wait for its duplications (a split, or a
    /// merge involving it, while one is preparing or seeding): checked before proposing
    /// and when applying. At apply only the region's own state and a merge source's
    /// (frozen since its prepare: a prepared source refuses every `DUP` command) count,
    /// so every replica decides alike; before proposing, a prepare also looks at the
    /// target's replica here.
    pub(super) fn check_admin_dups(
        &self,
        region: RegionId,
        cmd: &AdminCmd,
        proposing: bool,
    ) -> Result<()> {
        let table = |id: RegionId| self.ctx.engine_of(id).dup_table(id);
        match cmd {
            AdminCmd::Split { .. } => check_topology(table(region).as_ref(), region),
            AdminCmd::PrepareMerge { target } => {
                check_topology(table(region).as_ref(), region)?;
                if proposing {
                    check_topology(table(target.id).as_ref(), target.id)?;
                }
                Ok(())
            }
            AdminCmd::CommitMerge { source, .. } => {
                check_topology(table(region).as_ref(), region)?;
                check_topology(table(source.id).as_ref(), source.id)
            }
            AdminCmd::RollbackMerge { .. } | AdminCmd::ComputeHash => Ok(()),
        }
    }

    /// `replica`'s duplication state, once it holds data.
    pub(super) fn dups_of(&self, replica: &Replica) -> Option<DupTable> {
        if !replica.is_initialized() || replica.region.id == DIRECTORY {
            return None;
        }
        self.ctx.engine_of(replica.region.id).dup_table(replica.region.id)
    }

    /// Every initialized replica's log start, duplication floor and last installed
    /// snapshot: what the simulator's D1 check reads after every event.
    #[doc(hidden)]
    pub fn dup_retention(&self) -> Vec<DupRetention> {
        self.replicas
            .values()
            .filter(|r| r.is_initialized() && r.region.id != DIRECTORY)
            .map(|r| DupRetention {
                region: r.region.id,
                peer: r.id,
                first_index: r.raw.raft.raft_log.first_index(),
                floor: self.ctx.engine_of(r.region.id).dup_floor(r.region.id),
                installed_at: r.snapshot.installed_at,
            })
            .collect()
    }

    /// Duplication's verify (`Store::region_view`): the region's data pinned, with its
    /// applied index and its duplication and sink state, all as of that index (asked
    /// between rounds: nothing applies meanwhile). Any replica answers; one that is not
    /// initialized or halted is `RegionNotFound`.
    pub fn region_view(&self, region: RegionId) -> Result<crate::dup_fingerprint::RegionView> {
        let replica = self.replicas.get(&region).ok_or(Error::RegionNotFound { region })?;
        if region == DIRECTORY || !replica.is_initialized() || replica.halted.is_some() {
            return Err(Error::RegionNotFound { region });
        }
        let engine = self.ctx.engine_of(region);
        Ok(crate::dup_fingerprint::RegionView {
            region: replica.region.clone(),
            applied: replica.applied_index,
            leader: replica.is_leader(),
            view: engine.read_view(),
            dups: engine.dup_table(region),
            sinks: engine.sink_table(region),
        })
    }
}
