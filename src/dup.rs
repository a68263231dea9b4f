//! Duplication to another cluster, as a client asks for it (`Db::add_duplication` and
//! the rest) and as the background work of a cluster drives it (`driver`).
//!
//! A duplication is a record in the directory (`regionkv_raft::directory::dups`) whose
//! status moves through `Init -> Prepare -> App -> Log <-> Paused`, `Broken` and
//! `Removed`; each source region it covers holds its own replicated state (its floor:
//! the log it keeps for the duplication; `regionkv_raft::dup`). What is built so far:
//! the records and their transitions, the start of every covered region (its floor)
//! and the move to `Prepare` once every one holds it, pause and resume, removal (every
//! region's state stopped, then the record dropped), and the status of each. Shipping
//! to the follower cluster is not built yet.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use regionkv_engine::RegionId;
use regionkv_engine::dup::{DupEntry, RegionDupState};
use regionkv_raft::directory::{DirCmd, DirResult, DupAlteration, DupRecord, DupRemote, DupStatus};

use crate::db::Db;
use crate::error::{Error, Result};

mod cutover;
pub(crate) mod driver;
mod remote;
mod ship;
pub(crate) mod sink;
mod verify;

pub use cutover::{CutoverReport, RegionCutover};
pub use verify::{RegionVerify, VerifyOutcome, VerifyReport};

pub use regionkv_raft::directory::{BrokenReason, DupStatus as DuplicationStatus};
pub use remote::FollowerLink;

/// What to duplicate, and where to.
#[derive(Clone, Debug)]
pub struct DupSpec {
    /// The first key duplicated.
    pub start: Vec<u8>,
    /// The key past the last duplicated (`None`: unbounded).
    pub end: Option<Vec<u8>>,
    /// The follower cluster.
    pub target: DupTarget,
    /// False: the follower is not seeded with an image of the range (the caller
    /// vouches that it holds the range already); only the log after the start ships.
    pub seed: bool,
}

impl DupSpec {
    /// The whole key space, to `target`, seeded.
    pub fn all(target: DupTarget) -> DupSpec {
        DupSpec { start: Vec::new(), end: None, target, seed: true }
    }
}

/// The follower cluster of a duplication.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DupTarget {
    /// A cluster in this process, by the name it was registered under.
    InProcess(String),
    /// A cluster of `regionkv node` processes.
    Remote {
        /// Some of its nodes' client addresses (`host:port`).
        addrs: Vec<String>,
        /// Its cluster id.
        cluster_id: u64,
        /// Its client secret.
        secret: Vec<u8>,
    },
}

/// One duplication as it stands: its record (without the follower's secret) and each
/// covered source region's state, as its leader reports it.
#[derive(Clone, Debug)]
pub struct DupReport {
    /// The duplication's id.
    pub dup_id: u64,
    /// Its status.
    pub status: DupStatus,
    /// Its incarnation (one more on every reseed).
    pub incarnation: u32,
    /// Why it is broken, if it is.
    pub broken: Option<BrokenReason>,
    /// The duplicated range's first key.
    pub start: Vec<u8>,
    /// The key past the duplicated range (`None`: unbounded).
    pub end: Option<Vec<u8>>,
    /// The follower cluster: a name, or its addresses.
    pub target: String,
    /// Seeded or not.
    pub seed: bool,
    /// Every region the range covers.
    pub regions: Vec<RegionDupReport>,
    /// How this process's shipper reaches a follower in other processes (`None`:
    /// unknown here: no shipper of this process ships it, or the follower is in
    /// process).
    pub follower: Option<FollowerLink>,
}

/// One source region of a duplication.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegionDupReport {
    /// The region.
    pub region: RegionId,
    /// Its state as its leader applied it: `None` if it holds none (not started yet,
    /// or stopped), or if no leader answered (`leader` is `None` then).
    pub state: Option<RegionDupState>,
    /// True if the leader holds an entry of a format or stage this binary does not
    /// know (the duplication is frozen in that region).
    pub frozen: bool,
    /// The store whose replica leads the region, if one answered.
    pub leader: Option<regionkv_engine::StoreId>,
}

fn now_ms() -> Option<u64> {
    let since = SystemTime::now().duration_since(UNIX_EPOCH).ok()?;
    u64::try_from(since.as_millis()).ok()
}

impl Db {
    pub(crate) fn dup_command(&self, cmd: &DirCmd) -> Result<Option<DupRecord>> {
        match self.router().backend().dup_command(cmd, self.deadline())? {
            DirResult::Dup { record } => Ok(record.map(|r| *r)),
            other => Err(Error::Protocol(format!("a duplication command was answered {other:?}"))),
        }
    }

    /// Adds a duplication of `spec`'s range to its target; answers its id. The
    /// duplication starts in `Init`: the background work of the cluster starts every
    /// region it covers (each then keeps its log for it) and moves it on. Needs
    /// cluster version 7.
    pub fn add_duplication(&self, spec: DupSpec) -> Result<u64> {
        let remote = match spec.target {
            DupTarget::InProcess(name) => DupRemote { name, cluster_id: None, secret: None },
            DupTarget::Remote { addrs, cluster_id, secret } => DupRemote {
                name: addrs.join(","),
                cluster_id: Some(cluster_id),
                secret: Some(secret),
            },
        };
        // The directory's one id space (transactions' ids come from it too).
        let dup_id = self.router().backend().txn_ids(1, self.deadline())?;
        let record = DupRecord {
            dup_id,
            status: DupStatus::Init,
            incarnation: 1,
            start: spec.start,
            end: spec.end,
            remote,
            seed: spec.seed,
            broken: None,
            created_at_ms: now_ms(),
        };
        self.dup_command(&DirCmd::AddDup { record: Box::new(record) })?;
        Ok(dup_id)
    }

    fn alter_duplication(&self, dup_id: u64, from: DupStatus, to: DupStatus) -> Result<()> {
        let alteration = DupAlteration { dup_id, from, to, reason: None };
        self.dup_command(&DirCmd::AlterDup(alteration)).map(drop)
    }

    pub(crate) fn dup_record(&self, dup_id: u64) -> Result<DupRecord> {
        let records = self.router().backend().dups().ok_or_else(|| Error::Unavailable {
            waited: Duration::ZERO,
            last: "no replica of the directory answered".into(),
        })?;
        records.into_iter().find(|r| r.dup_id == dup_id).ok_or(Error::Store(
            regionkv_raft::Error::DupRefused {
                region: regionkv_raft::directory::DIRECTORY,
                dup_id,
                reason: regionkv_raft::dup::DupRefusal::NotFound,
            },
        ))
    }

    /// Pauses a duplication that ships its log (`Log -> Paused`): nothing ships, and
    /// every region keeps its log for it.
    pub fn pause_duplication(&self, dup_id: u64) -> Result<()> {
        self.alter_duplication(dup_id, DupStatus::Log, DupStatus::Paused)
    }

    /// Resumes a paused duplication (`Paused -> Log`), from what the follower
    /// confirmed.
    pub fn resume_duplication(&self, dup_id: u64) -> Result<()> {
        self.alter_duplication(dup_id, DupStatus::Paused, DupStatus::Log)
    }

    /// Seeds a broken duplication again (`Broken -> Prepare`, one more incarnation).
    pub fn reseed_duplication(&self, dup_id: u64) -> Result<()> {
        self.alter_duplication(dup_id, DupStatus::Broken, DupStatus::Prepare)
    }

    /// Removes a duplication: every region drops its state (and its floor), then the
    /// record goes. From any status; removing a removed one changes nothing.
    pub fn remove_duplication(&self, dup_id: u64) -> Result<()> {
        // A status read from a replica may lag: the move names it, and a move from a
        // status the directory no longer holds is refused; read again then.
        let mut last = None;
        for _ in 0..8 {
            let record = self.dup_record(dup_id)?;
            if record.status == DupStatus::Removed {
                return Ok(());
            }
            match self.alter_duplication(dup_id, record.status, DupStatus::Removed) {
                Ok(()) => return Ok(()),
                Err(Error::Store(e @ regionkv_raft::Error::DupRefused { .. })) => {
                    last = Some(e);
                    std::thread::sleep(crate::defaults::DRIVER_RETRY_PAUSE);
                }
                Err(e) => return Err(e),
            }
        }
        Err(Error::Store(last.unwrap_or(regionkv_raft::Error::Internal("no attempt".into()))))
    }

    /// The regions covering `[start, end)`, in key order, as routing finds them
    /// (possibly stale; a region that no store answers for ends the walk).
    pub(crate) fn covered_regions(
        &self,
        start: &[u8],
        end: Option<&[u8]>,
    ) -> Vec<regionkv_engine::Region> {
        let mut out: Vec<regionkv_engine::Region> = Vec::new();
        let mut key = start.to_vec();
        // Bounded: each step moves past a region's end, or stops.
        while let Some(record) = self.router().locate(&key) {
            let region = record.region;
            if out.last().is_some_and(|last| last.id == region.id) {
                break;
            }
            let next = region.end.clone();
            out.push(region);
            match next {
                Some(next) if end.is_none_or(|end| next.as_slice() < end) && next > key => {
                    key = next;
                }
                _ => break,
            }
        }
        out
    }

    /// Every duplication (or only `dup_id`), with each covered region's state.
    pub fn duplication_status(&self, dup_id: Option<u64>) -> Result<Vec<DupReport>> {
        let backend = self.router().backend();
        let records = backend.dups().ok_or_else(|| Error::Unavailable {
            waited: Duration::ZERO,
            last: "no replica of the directory answered".into(),
        })?;
        let mut out = Vec::new();
        for record in records.into_iter().filter(|r| dup_id.is_none_or(|id| r.dup_id == id)) {
            let mut reports = Vec::new();
            for region in self.covered_regions(&record.start, record.end.as_deref()) {
                let region = region.id;
                let leader = backend.leader_of(region);
                let table =
                    leader.and_then(|s| backend.peer_status(s, region)).and_then(|s| s.dups);
                let entry = table.as_ref().and_then(|t| t.get(record.dup_id)).cloned();
                let (state, frozen) = match entry {
                    Some(DupEntry::Known(state)) => {
                        let frozen = state.is_frozen();
                        (Some(state), frozen)
                    }
                    Some(DupEntry::Unreadable(_)) => (None, true),
                    None => (None, false),
                };
                reports.push(RegionDupReport { region, state, frozen, leader });
            }
            let follower = remote::link_of(&record);
            out.push(DupReport {
                follower,
                dup_id: record.dup_id,
                status: record.status,
                incarnation: record.incarnation,
                broken: record.broken,
                start: record.start,
                end: record.end,
                target: record.remote.name,
                seed: record.seed,
                regions: reports,
            });
        }
        if let Some(id) = dup_id
            && out.is_empty()
        {
            return Err(Error::InvalidRequest(format!("no duplication {id}")));
        }
        Ok(out)
    }
}
