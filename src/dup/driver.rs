//! The background work of duplication (one turn every [`DUP_DRIVE_INTERVAL`], inside
//! the cluster's `Background` turn), in two parts:
//!
//! - **Per region**, on each store for the regions it leads: a region covered by a
//!   live duplication (`Init` to `Paused`) that holds no entry of it (or one of an
//!   older incarnation) gets a `Start` proposed (its floor: the log from the `Start`
//!   on is kept); one covered by a `Removed` or `Broken` duplication that holds an
//!   entry gets a `Stop` (its floor released).
//! - **Cluster level**, on the store that leads the directory: `Init` moves to
//!   `Prepare` (or to `Log` without a seed) once every covered region's leader holds
//!   an entry of this incarnation; a `Removed` record is dropped once none does.
//!
//! Each step is a Raft command that checks what it moves from (the directory's status
//! change names the status it leaves; a region's `Start` is refused if the entry
//! exists), so a step taken twice, or by two drivers at once, is taken once. A
//! duplication whose status this binary does not know (`Unspecified`) is left alone:
//! frozen.

use std::sync::Arc;
use std::time::{Duration, Instant};

use regionkv_engine::Region;
use regionkv_engine::dup::{DupEntry, DupTable};
use regionkv_raft::directory::{
    self, DIRECTORY, DirCmd, DupAlteration, DupRecord, DupStatus, RegionRecord,
};
use regionkv_raft::dup::{DupCmd, DupRequest};
use regionkv_raft::{StateRole, Store};

use crate::backend::directory_dups;
use crate::control::ClusterOps;

/// How often the driver looks at the duplications.
pub(crate) const DUP_DRIVE_INTERVAL: Duration = Duration::from_millis(200);

/// The longest the driver waits for one directory command.
const DUP_DIRECTORY_DEADLINE: Duration = Duration::from_secs(2);

/// The duplication driver of one cluster driver (`Background`).
pub(crate) struct DupDriver {
    next: Instant,
}

impl DupDriver {
    pub fn new() -> DupDriver {
        DupDriver { next: Instant::now() }
    }

    /// One turn over `stores` (those this driver runs in process).
    pub fn turn(&mut self, ops: &ClusterOps, stores: &[Arc<Store>]) {
        if Instant::now() < self.next {
            return;
        }
        self.next = Instant::now() + DUP_DRIVE_INTERVAL;
        // A local replica of the directory first (no call), else any.
        let records = match stores.iter().find_map(|s| directory_dups(s)) {
            Some(records) => records,
            None => match ops.backend().dups() {
                Some(records) => records,
                None => return,
            },
        };
        if records.is_empty() {
            return;
        }
        for store in stores {
            drive_regions(store, &records);
        }
        if let Some(leader) = stores.iter().find(|s| leads_directory(s)) {
            drive_cluster(ops, leader, &records);
        }
    }
}

fn leads_directory(store: &Store) -> bool {
    store.peer_status(DIRECTORY).is_some_and(|s| s.role == StateRole::Leader)
}

/// What the region's entry of `record` needs next, if anything.
pub(crate) fn region_step(record: &DupRecord, entry: Option<&DupEntry>) -> Option<DupCmd> {
    let dup_id = record.dup_id;
    match record.status {
        DupStatus::Removed | DupStatus::Broken => entry.map(|_| DupCmd::Stop { dup_id }),
        DupStatus::Init
        | DupStatus::Prepare
        | DupStatus::App
        | DupStatus::Log
        | DupStatus::Paused => match entry {
            None => Some(DupCmd::Start { dup_id, incarnation: record.incarnation }),
            Some(DupEntry::Known(s)) if s.incarnation < record.incarnation => {
                Some(DupCmd::Start { dup_id, incarnation: record.incarnation })
            }
            Some(_) => None,
        },
        // Frozen (a status of a newer binary), or one not listed: leave it.
        _ => None,
    }
}

fn drive_regions(store: &Store, records: &[DupRecord]) {
    for peer in store.status() {
        if peer.role != StateRole::Leader || !peer.initialized || peer.region.id == DIRECTORY {
            continue;
        }
        let table = peer.dups.unwrap_or_default();
        for record in records {
            if !covers(record, &peer.region) {
                continue;
            }
            if let Some(cmd) = region_step(record, table.get(record.dup_id)) {
                propose(store, &peer.region, cmd);
            }
        }
    }
}

fn covers(record: &DupRecord, region: &Region) -> bool {
    record.overlaps(&region.start, region.end.as_deref())
}

fn propose(store: &Store, region: &Region, cmd: DupCmd) {
    let id = region.id;
    tracing::debug!(region = id.0, ?cmd, "duplication step proposed");
    store.dup(DupRequest {
        region: id,
        epoch: region.epoch,
        cmd,
        reply: Box::new(move |r| {
            if let Err(e) = r {
                // A refusal is a step taken already, or one the next turn retries.
                tracing::debug!(region = id.0, error = %e, "duplication step not taken");
            }
        }),
    });
}

/// The cluster-level step of `record`, on the store that leads the directory.
fn drive_cluster(ops: &ClusterOps, leader: &Store, records: &[DupRecord]) {
    let view = leader.context().directory.read_view();
    let regions = match directory::regions(&view) {
        Ok(regions) => regions,
        Err(e) => {
            tracing::warn!(error = %e, "the directory's regions do not read");
            return;
        }
    };
    for record in records {
        let covered: Vec<&RegionRecord> =
            regions.iter().filter(|r| covers(record, &r.region)).collect();
        let to = match record.status {
            DupStatus::Init => {
                let started = |t: &DupTable| {
                    matches!(t.get(record.dup_id),
                        Some(DupEntry::Known(s)) if s.incarnation == record.incarnation)
                };
                if !all_leaders(ops, &covered, started) {
                    continue;
                }
                if record.seed { DupStatus::Prepare } else { DupStatus::Log }
            }
            DupStatus::Removed => {
                if all_leaders(ops, &covered, |t| t.get(record.dup_id).is_none()) {
                    let cmd = DirCmd::DropDup { dup_id: record.dup_id };
                    if let Err(e) = ops.directory(&cmd, DUP_DIRECTORY_DEADLINE) {
                        tracing::debug!(dup = record.dup_id, error = %e, "duplication not dropped yet");
                    }
                }
                continue;
            }
            _ => continue,
        };
        let alteration =
            DupAlteration { dup_id: record.dup_id, from: record.status, to, reason: None };
        match ops.directory(&DirCmd::AlterDup(alteration), DUP_DIRECTORY_DEADLINE) {
            Ok(_) => tracing::info!(
                dup = record.dup_id,
                from = record.status.name(),
                to = to.name(),
                "duplication moved"
            ),
            Err(e) => tracing::debug!(dup = record.dup_id, error = %e, "duplication not moved yet"),
        }
    }
}

/// True if every region's leader answers with a table that passes `check`.
fn all_leaders(
    ops: &ClusterOps,
    regions: &[&RegionRecord],
    check: impl Fn(&DupTable) -> bool,
) -> bool {
    let backend = ops.backend();
    regions.iter().all(|r| {
        let id = r.region.id;
        let Some(leader) = backend.leader_of(id) else { return false };
        backend.peer_status(leader, id).and_then(|s| s.dups).is_some_and(|t| check(&t))
    })
}
