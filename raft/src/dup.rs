//! Duplication, the source side's replicated per-region state: the `DUP` commands that
//! start, advance and stop one duplication in one region, and the rule that keeps the
//! region's log for it (ARCHITECTURE.md, "Duplication (source side, first part)").
//!
//! The state itself is the engine's (`regionkv_engine::dup`): one entry per
//! duplication, carried in every image of the region. A command is applied by every
//! replica at the same index, from the command and that state only; every check is a
//! refusal (a typed error to the proposer, nothing changed):
//!
//! - `Start { dup_id, incarnation }` creates the entry in `Prepare` with
//!   `min_ckpt_index` = the Raft index of the `Start` entry itself (>= 1, decided once
//!   by the log: nothing recomputes it, on any replica, after any restart). A `Start`
//!   of a higher incarnation replaces the entry (a reseed); of the same or a lower one
//!   it is refused.
//! - `Seeded { dup_id, incarnation, seed_index }`: `Prepare` -> `Seeding`, with
//!   `min_ckpt_index <= seed_index <= ` the index applied before it.
//! - `Progress { dup_id, incarnation, confirmed }`: `Seeding`/`Streaming` ->
//!   `Streaming`; `confirmed` never goes down (from `seed_index`, then from the last
//!   `confirmed`) nor past the index applied before it.
//! - `Stop { dup_id }` drops the entry and releases its floor.
//! - `Fence { dup_id, incarnation, start, end }` (cluster version 8,
//!   `crate::version::DUP_V3`): a `Streaming` entry gets the cutover's fence at this
//!   command's index; from it on the region refuses client writes to keys of
//!   `[start, end)` (`Error::DupFenced`, at apply and before proposing). Fencing a
//!   fenced entry again changes nothing (a resumed cutover). `Progress` goes on
//!   (the log up to the fence still ships); `Stop` drops the fence with the entry.
//!
//! A command names the epoch it was routed with; one of another `version` is refused
//! (`EpochNotMatch`). Only the version is compared, as for client writes: every change
//! of it is a checkpoint barrier, so a replay after a restart meets the same version,
//! while a membership change (`conf_ver`) is not one and would make a replay decide
//! otherwise. A prepared merge source refuses every kind (`Merging`): its state must
//! stay as its prepare saw it until the merge commits or rolls back.
//!
//! The floor (`DupTable::floor`) bounds both compaction sites (`core/snapshot.rs`):
//! the log after it stays on every replica, since every replica applies the same
//! state.
//!
//! ```text
//!  | format u8 = 1 | TLV: tag 4 DUP (nested)                                           |
//!  |   1 epoch (nested)   2 kind: 1 start, 2 seeded, 3 progress, 4 stop               |
//!  |     (0 reserved: damage; above 4: a kind this binary does not know)              |
//!  |   3 dup id   4 incarnation (start, seeded, progress)                             |
//!  |   5 reserved (a start's min ckpt index: never sent, the entry's index is it)     |
//!  |   6 seed index (seeded)   7 confirmed (progress)                                 |
//!  |   kind 5 fence (version 8): 3, 4, and 8 range start, 9 range end or             |
//!  |     10 range end unbounded (empty)                                               |
//! ```

use regionkv_engine::codec::{self, DecodeError, DecodeResult, TlvRecord, UnknownTags};
use regionkv_engine::dup::{DupEntry, DupFence, DupStage, DupTable, RegionDupState};
use regionkv_engine::{Epoch, RegionId};

use crate::error::{Error, Result};
use crate::request::Reply;

const D_EPOCH: u16 = 1;
const D_KIND: u16 = 2;
const D_DUP_ID: u16 = 3;
const D_INCARNATION: u16 = 4;
const D_SEED_INDEX: u16 = 6;
const D_CONFIRMED: u16 = 7;
const D_START: u16 = 8;
const D_END: u16 = 9;
const D_END_UNBOUNDED: u16 = 10;
const TAGS: &[u16] = &[
    D_EPOCH,
    D_KIND,
    D_DUP_ID,
    D_INCARNATION,
    D_SEED_INDEX,
    D_CONFIRMED,
    D_START,
    D_END,
    D_END_UNBOUNDED,
];
const KIND_START: u64 = 1;
const KIND_SEEDED: u64 = 2;
const KIND_PROGRESS: u64 = 3;
const KIND_STOP: u64 = 4;
const KIND_FENCE: u64 = 5;

/// The reason of the decode error for a kind this binary does not know.
pub(crate) const UNKNOWN_DUP: &str = "unknown dup command";

/// One change to one duplication's state in one region.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DupCmd {
    /// Creates the entry in `Prepare`; its `min_ckpt_index` is this command's index.
    Start {
        /// The duplication.
        dup_id: u64,
        /// Its incarnation (a higher one replaces the entry: a reseed).
        incarnation: u32,
    },
    /// `Prepare` -> `Seeding`: the image at `seed_index` is being shipped.
    Seeded {
        /// The duplication.
        dup_id: u64,
        /// Its incarnation (must be the entry's).
        incarnation: u32,
        /// The image's index: at or after `min_ckpt_index`, at or before the index
        /// applied before this command.
        seed_index: u64,
    },
    /// `Seeding`/`Streaming` -> `Streaming`: the other cluster confirmed the log up to
    /// `confirmed`.
    Progress {
        /// The duplication.
        dup_id: u64,
        /// Its incarnation (must be the entry's).
        incarnation: u32,
        /// Never below the entry's seed index or last confirmed index.
        confirmed: u64,
    },
    /// Drops the entry: its floor no longer holds the log.
    Stop {
        /// The duplication.
        dup_id: u64,
    },
    /// The cutover's fence: a `Streaming` entry refuses client writes to the range
    /// from this command on (cluster version 8).
    Fence {
        /// The duplication.
        dup_id: u64,
        /// Its incarnation.
        incarnation: u32,
        /// The duplicated range's first key.
        start: Vec<u8>,
        /// The key past the duplicated range (`None`: unbounded).
        end: Option<Vec<u8>>,
    },
}

impl DupCmd {
    /// The duplication the command is about.
    pub fn dup_id(&self) -> u64 {
        match self {
            DupCmd::Start { dup_id, .. }
            | DupCmd::Seeded { dup_id, .. }
            | DupCmd::Progress { dup_id, .. }
            | DupCmd::Stop { dup_id }
            | DupCmd::Fence { dup_id, .. } => *dup_id,
        }
    }
}

/// A `DUP` command and the epoch it was routed with: one entry's data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct DupEntryCmd {
    pub epoch: Epoch,
    pub cmd: DupCmd,
}

/// A `DUP` command for a region's leader to propose (`StoreCore::on_dup`).
pub struct DupRequest {
    /// The region.
    pub region: RegionId,
    /// The region's epoch as the caller knows it.
    pub epoch: Epoch,
    /// The command.
    pub cmd: DupCmd,
    /// Called once it is applied (or refused).
    pub reply: Reply<DupReply>,
}

/// What an applied `DUP` command left.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DupReply {
    /// The command's Raft index.
    pub index: u64,
    /// The duplication's entry after it (`None` after a stop).
    pub state: Option<RegionDupState>,
}

/// Why a `DUP` command was refused ([`Error::DupRefused`]). Code 0 is reserved.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DupRefusal {
    /// No reason given, or one this binary does not know.
    Unspecified,
    /// The region has no entry of the duplication.
    NotFound,
    /// The entry exists at this incarnation or a higher one.
    AlreadyStarted,
    /// The command's incarnation is not the entry's.
    WrongIncarnation,
    /// The entry is not in a stage the command moves from.
    WrongStage,
    /// `seed_index` is below `min_ckpt_index` or past the applied index.
    SeedOutOfRange,
    /// `confirmed` is below what is confirmed (or seeded) already.
    StaleProgress,
    /// `confirmed` is past the applied index.
    ProgressAhead,
    /// The entry's stage is one this binary does not know, or the region holds an
    /// entry of a newer format: frozen until a newer binary (or an explicit stop of a
    /// readable entry) moves it.
    Frozen,
    /// The directory's duplication may not move between these two statuses.
    InvalidTransition,
    /// The directory holds a duplication of this id already.
    Exists,
}

impl DupRefusal {
    /// The reason's code.
    pub fn code(self) -> u64 {
        match self {
            DupRefusal::Unspecified => 0,
            DupRefusal::NotFound => 1,
            DupRefusal::AlreadyStarted => 2,
            DupRefusal::WrongIncarnation => 3,
            DupRefusal::WrongStage => 4,
            DupRefusal::SeedOutOfRange => 5,
            DupRefusal::StaleProgress => 6,
            DupRefusal::ProgressAhead => 7,
            DupRefusal::Frozen => 8,
            DupRefusal::InvalidTransition => 9,
            DupRefusal::Exists => 10,
        }
    }
}

impl std::fmt::Display for DupRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DupRefusal::Unspecified => "unspecified",
            DupRefusal::NotFound => "the region has no entry of the duplication",
            DupRefusal::AlreadyStarted => "started already at this incarnation or a newer one",
            DupRefusal::WrongIncarnation => "another incarnation",
            DupRefusal::WrongStage => "not in a stage this command moves from",
            DupRefusal::SeedOutOfRange => {
                "seed index below min_ckpt_index or past the applied index"
            }
            DupRefusal::StaleProgress => "confirmed index below the one recorded",
            DupRefusal::ProgressAhead => "confirmed index past the applied index",
            DupRefusal::Frozen => "frozen (a stage or format this binary does not know)",
            DupRefusal::InvalidTransition => "not a transition a duplication may make",
            DupRefusal::Exists => "a duplication of this id exists",
        })
    }
}

/// Writes a `DUP` command's fields (the body of tag 4).
pub(crate) fn encode(out: &mut Vec<u8>, entry: &DupEntryCmd) {
    codec::put_nested(out, D_EPOCH, |out| crate::command::put_epoch(out, entry.epoch));
    match &entry.cmd {
        DupCmd::Start { dup_id, incarnation } => {
            codec::put_u64(out, D_KIND, KIND_START);
            codec::put_u64(out, D_DUP_ID, *dup_id);
            codec::put_u64(out, D_INCARNATION, u64::from(*incarnation));
        }
        DupCmd::Seeded { dup_id, incarnation, seed_index } => {
            codec::put_u64(out, D_KIND, KIND_SEEDED);
            codec::put_u64(out, D_DUP_ID, *dup_id);
            codec::put_u64(out, D_INCARNATION, u64::from(*incarnation));
            codec::put_u64(out, D_SEED_INDEX, *seed_index);
        }
        DupCmd::Progress { dup_id, incarnation, confirmed } => {
            codec::put_u64(out, D_KIND, KIND_PROGRESS);
            codec::put_u64(out, D_DUP_ID, *dup_id);
            codec::put_u64(out, D_INCARNATION, u64::from(*incarnation));
            codec::put_u64(out, D_CONFIRMED, *confirmed);
        }
        DupCmd::Stop { dup_id } => {
            codec::put_u64(out, D_KIND, KIND_STOP);
            codec::put_u64(out, D_DUP_ID, *dup_id);
        }
        DupCmd::Fence { dup_id, incarnation, start, end } => {
            codec::put_u64(out, D_KIND, KIND_FENCE);
            codec::put_u64(out, D_DUP_ID, *dup_id);
            codec::put_u64(out, D_INCARNATION, u64::from(*incarnation));
            codec::put_field(out, D_START, start);
            codec::put_range_end(out, D_END, D_END_UNBOUNDED, end.as_deref());
        }
    }
}

/// Reads a `DUP` command's fields; never panics.
pub(crate) fn decode(buf: &[u8]) -> DecodeResult<DupEntryCmd> {
    let rec = TlvRecord::parse(buf, TAGS, UnknownTags::Reject)?;
    let epoch_field = rec.required(D_EPOCH, "dup epoch")?;
    let epoch = crate::command::decode_epoch(epoch_field.value)
        .map_err(|e| e.shifted(epoch_field.offset))?;
    let u64_of = |tag, what| rec.required(tag, what).and_then(|f| f.as_u64());
    let incarnation = || {
        u32::try_from(u64_of(D_INCARNATION, "dup incarnation")?)
            .map_err(|_| DecodeError::new(0, "dup incarnation above u32"))
    };
    let dup_id = u64_of(D_DUP_ID, "dup id")?;
    let cmd = match u64_of(D_KIND, "dup kind")? {
        KIND_START => DupCmd::Start { dup_id, incarnation: incarnation()? },
        KIND_SEEDED => DupCmd::Seeded {
            dup_id,
            incarnation: incarnation()?,
            seed_index: u64_of(D_SEED_INDEX, "seed index")?,
        },
        KIND_PROGRESS => DupCmd::Progress {
            dup_id,
            incarnation: incarnation()?,
            confirmed: u64_of(D_CONFIRMED, "confirmed index")?,
        },
        KIND_STOP => DupCmd::Stop { dup_id },
        KIND_FENCE => DupCmd::Fence {
            dup_id,
            incarnation: incarnation()?,
            start: rec.required(D_START, "fence start")?.value.to_vec(),
            end: codec::range_end(&rec, D_END, D_END_UNBOUNDED)?,
        },
        0 => return Err(DecodeError::new(0, "dup kind 0")),
        _ => return Err(DecodeError::new(0, UNKNOWN_DUP)),
    };
    Ok(DupEntryCmd { epoch, cmd })
}

/// Applies `cmd` at Raft `index` to `table` (region `region`'s state, as of
/// `index - 1`): the entry it leaves, or why it is refused (then `table` is
/// unchanged). Decided from the command, the table and the index only.
pub(crate) fn apply(
    table: &mut DupTable,
    region: RegionId,
    cmd: &DupCmd,
    index: u64,
) -> Result<Option<RegionDupState>> {
    let dup_id = cmd.dup_id();
    let refused = |reason| Error::DupRefused { region, dup_id, reason };
    if table.is_frozen() {
        return Err(refused(DupRefusal::Frozen));
    }
    let applied = index.saturating_sub(1);
    let entry = match table.get(dup_id) {
        Some(DupEntry::Known(s)) => Some(s.clone()),
        Some(DupEntry::Unreadable(_)) => return Err(refused(DupRefusal::Frozen)),
        None => None,
    };
    let next = match (cmd, entry) {
        (DupCmd::Start { incarnation, .. }, existing) => {
            if existing.is_some_and(|s| s.incarnation >= *incarnation) {
                return Err(refused(DupRefusal::AlreadyStarted));
            }
            RegionDupState {
                dup_id,
                incarnation: *incarnation,
                stage: DupStage::Prepare,
                min_ckpt_index: index,
                seed_index: None,
                confirmed: None,
                depends_on: Vec::new(),
                started_at_index: index,
                fence: None,
            }
        }
        (DupCmd::Stop { .. }, Some(_)) => {
            table.remove(dup_id);
            return Ok(None);
        }
        (_, None) => return Err(refused(DupRefusal::NotFound)),
        (DupCmd::Seeded { incarnation, seed_index, .. }, Some(s)) => {
            check_moves(&s, *incarnation, &[DupStage::Prepare]).map_err(refused)?;
            if *seed_index < s.min_ckpt_index || *seed_index > applied {
                return Err(refused(DupRefusal::SeedOutOfRange));
            }
            RegionDupState { stage: DupStage::Seeding, seed_index: Some(*seed_index), ..s }
        }
        (DupCmd::Progress { incarnation, confirmed, .. }, Some(s)) => {
            check_moves(&s, *incarnation, &[DupStage::Seeding, DupStage::Streaming])
                .map_err(refused)?;
            let at_least = s.confirmed.or(s.seed_index).unwrap_or(s.min_ckpt_index);
            if *confirmed < at_least {
                return Err(refused(DupRefusal::StaleProgress));
            }
            if *confirmed > applied {
                return Err(refused(DupRefusal::ProgressAhead));
            }
            RegionDupState { stage: DupStage::Streaming, confirmed: Some(*confirmed), ..s }
        }
        (DupCmd::Fence { incarnation, start, end, .. }, Some(s)) => {
            check_moves(&s, *incarnation, &[DupStage::Streaming]).map_err(refused)?;
            if s.fence.is_some() {
                return Ok(Some(s));
            }
            let fence = DupFence { start: start.clone(), end: end.clone(), at_index: index };
            RegionDupState { fence: Some(fence), ..s }
        }
    };
    table.set(next.clone());
    Ok(Some(next))
}

/// Why an entry `s` may not move on with a command of `incarnation` that moves from
/// one of `from`.
fn check_moves(
    s: &RegionDupState,
    incarnation: u32,
    from: &[DupStage],
) -> std::result::Result<(), DupRefusal> {
    if s.is_frozen() {
        return Err(DupRefusal::Frozen);
    }
    if s.incarnation != incarnation {
        return Err(DupRefusal::WrongIncarnation);
    }
    if !from.contains(&s.stage) {
        return Err(DupRefusal::WrongStage);
    }
    Ok(())
}

/// Why a split or merge involving a region with duplication state `table` must wait:
/// an entry is preparing or seeding (its image and stream cover the region as it is),
/// frozen or unreadable. A typed, retryable refusal.
pub(crate) fn check_topology(table: Option<&DupTable>, region: RegionId) -> Result<()> {
    match table.and_then(DupTable::holding_topology) {
        Some(dup_id) => Err(Error::DuplicationSeeding { region, dup_id }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn round_trip(cmd: DupCmd) {
        let entry = DupEntryCmd { epoch: Epoch { version: 3, conf_ver: 2 }, cmd };
        let mut out = Vec::new();
        encode(&mut out, &entry);
        assert_eq!(decode(&out).unwrap(), entry);
    }

    #[test]
    fn every_kind_round_trips() {
        round_trip(DupCmd::Start { dup_id: 1, incarnation: 2 });
        round_trip(DupCmd::Seeded { dup_id: 1, incarnation: 2, seed_index: 40 });
        round_trip(DupCmd::Progress { dup_id: 1, incarnation: 2, confirmed: 50 });
        round_trip(DupCmd::Stop { dup_id: 1 });
        round_trip(DupCmd::Fence { dup_id: 1, incarnation: 2, start: b"a".to_vec(), end: None });
        round_trip(DupCmd::Fence {
            dup_id: 1,
            incarnation: 2,
            start: Vec::new(),
            end: Some(b"q".to_vec()),
        });
    }

    #[test]
    fn the_fence_golden_bytes_never_change() {
        let cmd = DupCmd::Fence { dup_id: 3, incarnation: 1, start: b"k".to_vec(), end: None };
        let mut out = Vec::new();
        encode(&mut out, &DupEntryCmd { epoch: Epoch { version: 2, conf_ver: 1 }, cmd });
        let fields = codec::fields(&out).unwrap();
        let tags: Vec<u16> = fields.iter().map(|f| f.tag).collect();
        assert_eq!(tags, vec![1, 2, 3, 4, 8, 10]);
        assert_eq!(fields[1].value, 5u64.to_le_bytes(), "kind 5 is fence");
        assert_eq!(fields[2].value, 3u64.to_le_bytes());
        assert_eq!(fields[3].value, 1u64.to_le_bytes());
        assert_eq!(fields[4].value, b"k");
        assert!(fields[5].value.is_empty(), "unbounded end");
    }

    #[test]
    fn a_fence_needs_a_streaming_entry_of_its_incarnation_and_a_second_changes_nothing() {
        let r = RegionId(1);
        let fence = |incarnation| DupCmd::Fence {
            dup_id: 7,
            incarnation,
            start: b"b".to_vec(),
            end: Some(b"m".to_vec()),
        };
        let mut t = DupTable::default();
        apply(&mut t, r, &DupCmd::Start { dup_id: 7, incarnation: 1 }, 12).unwrap();
        let before = t.clone();
        for (cmd, want) in
            [(fence(1), DupRefusal::WrongStage), (fence(2), DupRefusal::WrongIncarnation)]
        {
            match apply(&mut t, r, &cmd, 13) {
                Err(Error::DupRefused { reason, .. }) => assert_eq!(reason, want),
                other => panic!("{other:?}"),
            }
            assert_eq!(t, before);
        }
        apply(&mut t, r, &DupCmd::Seeded { dup_id: 7, incarnation: 1, seed_index: 12 }, 13)
            .unwrap();
        apply(&mut t, r, &DupCmd::Progress { dup_id: 7, incarnation: 1, confirmed: 13 }, 14)
            .unwrap();
        let s = apply(&mut t, r, &fence(1), 20).unwrap().unwrap();
        assert_eq!(s.fence.as_ref().map(|f| f.at_index), Some(20));
        assert_eq!((t.fenced_of(b"c"), t.fenced_of(b"m")), (Some(7), None));
        let again = apply(&mut t, r, &fence(1), 25).unwrap().unwrap();
        assert_eq!(again.fence.map(|f| f.at_index), Some(20), "the first fence stays");
        // Progress goes on past the fence.
        apply(&mut t, r, &DupCmd::Progress { dup_id: 7, incarnation: 1, confirmed: 25 }, 26)
            .unwrap();
        assert_eq!(t.fenced_of(b"c"), Some(7));
        apply(&mut t, r, &DupCmd::Stop { dup_id: 7 }, 27).unwrap();
        assert_eq!(t.fenced_of(b"c"), None);
    }

    #[test]
    fn the_start_index_is_min_ckpt_index_and_every_check_is_a_refusal_that_changes_nothing() {
        let r = RegionId(1);
        let mut t = DupTable::default();
        let s = apply(&mut t, r, &DupCmd::Start { dup_id: 7, incarnation: 1 }, 12).unwrap();
        assert_eq!(s.as_ref().map(|s| (s.min_ckpt_index, s.stage)), Some((12, DupStage::Prepare)));
        assert_eq!(t.floor(), Some(12));
        let before = t.clone();
        let refusals = [
            (DupCmd::Start { dup_id: 7, incarnation: 1 }, 13, DupRefusal::AlreadyStarted),
            (
                DupCmd::Progress { dup_id: 7, incarnation: 1, confirmed: 12 },
                13,
                DupRefusal::WrongStage,
            ),
            (
                DupCmd::Seeded { dup_id: 7, incarnation: 2, seed_index: 12 },
                13,
                DupRefusal::WrongIncarnation,
            ),
            (
                DupCmd::Seeded { dup_id: 7, incarnation: 1, seed_index: 11 },
                13,
                DupRefusal::SeedOutOfRange,
            ),
            (
                DupCmd::Seeded { dup_id: 7, incarnation: 1, seed_index: 13 },
                13,
                DupRefusal::SeedOutOfRange,
            ),
            (DupCmd::Stop { dup_id: 8 }, 13, DupRefusal::NotFound),
        ];
        for (cmd, index, want) in refusals {
            match apply(&mut t, r, &cmd, index) {
                Err(Error::DupRefused { reason, .. }) => assert_eq!(reason, want, "{cmd:?}"),
                other => panic!("{cmd:?}: {other:?}"),
            }
            assert_eq!(t, before, "{cmd:?} changed nothing");
        }
        apply(&mut t, r, &DupCmd::Seeded { dup_id: 7, incarnation: 1, seed_index: 12 }, 13)
            .unwrap();
        assert_eq!(t.floor(), Some(12));
        apply(&mut t, r, &DupCmd::Progress { dup_id: 7, incarnation: 1, confirmed: 14 }, 15)
            .unwrap();
        assert_eq!(t.floor(), Some(14));
        let before = t.clone();
        for (confirmed, want) in [(13, DupRefusal::StaleProgress), (16, DupRefusal::ProgressAhead)]
        {
            let cmd = DupCmd::Progress { dup_id: 7, incarnation: 1, confirmed };
            match apply(&mut t, r, &cmd, 16) {
                Err(Error::DupRefused { reason, .. }) => assert_eq!(reason, want),
                other => panic!("{other:?}"),
            }
            assert_eq!(t, before);
        }
        assert!(check_topology(Some(&t), r).is_ok(), "streaming splits and merges");
        apply(&mut t, r, &DupCmd::Stop { dup_id: 7 }, 17).unwrap();
        assert_eq!(t.floor(), None);
    }

    #[test]
    fn kinds_this_binary_does_not_know_are_told_apart() {
        let mut out = Vec::new();
        codec::put_nested(&mut out, D_EPOCH, |out| crate::command::put_epoch(out, Epoch::INITIAL));
        codec::put_u64(&mut out, D_KIND, 9);
        codec::put_u64(&mut out, D_DUP_ID, 1);
        assert_eq!(decode(&out).unwrap_err().reason, UNKNOWN_DUP);
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..100)) {
            let _ = decode(&bytes);
        }
    }
}
