//! Shipping (so far to a follower cluster in this process): the seed of a region
//! (its pinned image, loaded into the follower's regions behind a fresh seed id),
//! then its log after it, each batch applied by the follower behind its marks, and
//! the source region's `Progress` after each. One step per region per driver turn,
//! on the leader of the region (`driver`).
//!
//! Every step resumes from the region's replicated entry (its stage, seed index and
//! confirmed index), never from memory: a leader change or a restart redoes at most
//! the last batch (the follower skips it by its marks) or the seed (a new seed id:
//! the follower wipes the range again).

use regionkv_engine::Region;
use regionkv_engine::dup::{DupStage, RegionDupState};
use regionkv_raft::Store;
use regionkv_raft::directory::{BrokenReason, DupRecord, DupStatus};
use regionkv_raft::dup::{DupCmd, DupRequest};
use regionkv_raft::sink::{SinkOp, SinkRefusal};

use super::sink::SinkOf;
use crate::db::{Db, ask};
use crate::defaults::DIRECTORY_ATTEMPT_TIMEOUT;
use crate::error::{Error, Result};

/// The most bytes of ops one batch ships.
const BATCH_BYTES: usize = 1 << 20;
/// The most bytes of puts one seed chunk carries.
const CHUNK_BYTES: usize = 256 << 10;
/// The most batches one region ships in one turn.
const BATCHES_PER_TURN: usize = 16;

/// What a step asks of the duplication as a whole.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// Nothing (done, or retried next turn).
    Fine,
    /// The duplication cannot go on: move it to `Broken`.
    Broken(BrokenReason, String),
}

/// Proposes `cmd` on `store`'s replica of `region` and waits for it to apply.
fn propose_wait(store: &Store, region: &Region, cmd: DupCmd) -> Result<()> {
    let (id, epoch) = (region.id, region.epoch);
    match ask(DIRECTORY_ATTEMPT_TIMEOUT, |reply| {
        store.dup(DupRequest { region: id, epoch, cmd, reply });
    }) {
        Some(r) => r.map(drop).map_err(Error::from),
        None => Err(Error::Unavailable {
            waited: DIRECTORY_ATTEMPT_TIMEOUT,
            last: format!("region {id} did not apply a duplication step"),
        }),
    }
}

/// One step of `record` in `region` (led by `store`, its entry `state`), shipping to
/// `follower`.
pub(crate) fn step(
    store: &Store,
    region: &Region,
    record: &DupRecord,
    state: &RegionDupState,
    follower: &Db,
) -> Outcome {
    if state.incarnation != record.incarnation {
        return Outcome::Fine;
    }
    let of = SinkOf {
        dup_id: record.dup_id,
        incarnation: record.incarnation,
        source_region: region.id.0,
    };
    let result = match (record.status, state.stage) {
        // Unseeded: the log from the start on.
        (DupStatus::Log | DupStatus::Paused, DupStage::Prepare) if !record.seed => {
            let at = state.min_ckpt_index;
            propose_wait(store, region, seed_cmd(record, at))
                .and_then(|()| propose_wait(store, region, progress_cmd(record, at)))
        }
        (DupStatus::Prepare | DupStatus::App, DupStage::Prepare | DupStage::Seeding)
            if record.seed =>
        {
            seed(store, region, record, state, follower, of)
        }
        (DupStatus::Log, DupStage::Streaming) => stream(store, region, record, state, follower, of),
        // The cutover: the log up to the region's fence ships; past it no client write
        // to the range applied, so nothing more ships (and nothing reaches a promoted
        // follower).
        (DupStatus::CuttingOver, DupStage::Streaming) if !super::cutover::shipped(state) => {
            stream(store, region, record, state, follower, of)
        }
        _ => Ok(()),
    };
    match result {
        Ok(()) => Outcome::Fine,
        Err(Error::Store(
            e @ (regionkv_raft::Error::DupLogGap { .. }
            | regionkv_raft::Error::DupOutcomeUnknown { .. }),
        )) => Outcome::Broken(BrokenReason::LogGap, e.to_string()),
        Err(Error::Store(e @ regionkv_raft::Error::DupUnsupportedEntry { .. })) => {
            Outcome::Broken(BrokenReason::UnsupportedEntry, e.to_string())
        }
        // Only the follower answers it (the source runs at version 7 or it holds no
        // duplication): its nodes do not know the sink (`UnsupportedRequest`), or it
        // runs below the version of the sink.
        Err(e @ Error::FeatureNotActive { .. }) if is_sink_feature(&e) => {
            Outcome::Broken(BrokenReason::FollowerTooOld, e.to_string())
        }
        Err(e) => {
            tracing::debug!(dup = record.dup_id, region = region.id.0, error = %e, "duplication step deferred");
            Outcome::Fine
        }
    }
}

/// True for the follower's refusal of the sink's version (`duplication-v2`).
fn is_sink_feature(e: &Error) -> bool {
    matches!(e, Error::FeatureNotActive { feature, .. }
        if feature == regionkv_raft::version::DUP_V2.name)
}

/// `[start, end)` cut to the duplicated range (it overlaps it: the region is covered).
fn clip<'a>(
    record: &'a DupRecord,
    start: &'a [u8],
    end: Option<&'a [u8]>,
) -> (&'a [u8], Option<&'a [u8]>) {
    let start = start.max(record.start.as_slice());
    let end = match (end, record.end.as_deref()) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    (start, end)
}

fn seed_cmd(record: &DupRecord, seed_index: u64) -> DupCmd {
    DupCmd::Seeded { dup_id: record.dup_id, incarnation: record.incarnation, seed_index }
}

fn progress_cmd(record: &DupRecord, confirmed: u64) -> DupCmd {
    DupCmd::Progress { dup_id: record.dup_id, incarnation: record.incarnation, confirmed }
}

/// Loads the region's image into the follower, then records it as confirmed. A seed
/// the follower finished already (an earlier attempt ended it, and the source did
/// not record it) is confirmed at the seed index the source recorded: the follower's
/// marks are at or past it, so what ships after it again is skipped there.
fn seed(
    store: &Store,
    region: &Region,
    record: &DupRecord,
    state: &RegionDupState,
    follower: &Db,
    of: SinkOf,
) -> Result<()> {
    let image =
        store.dup_seed_image(region.id, state.seed_index.unwrap_or(state.min_ckpt_index))?;
    if state.stage == DupStage::Prepare {
        propose_wait(store, region, seed_cmd(record, image.index))?;
    }
    let seed_id = getrandom::u64()
        .map_err(|e| Error::Io(std::io::Error::other(format!("no random seed id: {e}"))))?;
    let (start, end) = clip(record, &image.region.start, image.region.end.as_deref());
    match follower.sink_begin(of, seed_id, start, end) {
        Err(Error::Store(regionkv_raft::Error::SinkRefused {
            reason: SinkRefusal::AlreadySeeded,
            ..
        })) => {
            let at = state.seed_index.unwrap_or(image.index);
            return propose_wait(store, region, progress_cmd(record, at));
        }
        other => other?,
    }
    for chunk in image.chunks(CHUNK_BYTES) {
        let puts: Vec<_> = chunk?
            .into_iter()
            .filter(|(k, _)| record.contains(k))
            .map(|(k, v)| (k.to_vec(), v.to_vec()))
            .collect();
        if !puts.is_empty() {
            follower.sink_chunk(of, seed_id, &puts)?;
        }
    }
    follower.sink_end(of, seed_id, image.index, start, end)?;
    propose_wait(store, region, progress_cmd(record, image.index))
}

/// Ships the log after what the follower confirmed, a few batches, then records the
/// new confirmed index.
fn stream(
    store: &Store,
    region: &Region,
    record: &DupRecord,
    state: &RegionDupState,
    follower: &Db,
    of: SinkOf,
) -> Result<()> {
    let held = state.confirmed.unwrap_or(state.min_ckpt_index);
    let (start, end) = clip(record, &region.start, region.end.as_deref());
    let mut confirmed = held;
    for _ in 0..BATCHES_PER_TURN {
        let batch = store.dup_read_log(region.id, confirmed, BATCH_BYTES)?;
        if batch.last <= confirmed {
            break;
        }
        let ops = batch
            .ops
            .into_iter()
            .filter(|op| record.contains(&op.key))
            .map(|op| SinkOp {
                source_index: op.index,
                key: op.key.to_vec(),
                value: op.value.map(|v| v.to_vec()),
            })
            .collect::<Vec<_>>();
        follower.sink_apply(of, start, end, batch.last, &ops)?;
        confirmed = batch.last;
    }
    if confirmed > held {
        propose_wait(store, region, progress_cmd(record, confirmed))?;
    }
    Ok(())
}
