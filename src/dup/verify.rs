//! `Db::verify_duplication`: per covered source region, the fingerprint of the
//! duplicated range in the source and in the follower at one and the same source
//! position, and whether they match (ARCHITECTURE.md, "Duplication: verify and
//! cutover").
//!
//! The engine cannot read at a past Raft index, so the point is found rather than
//! chosen. Each side's replica hands out its data with its applied index and tables
//! as of one index (`Store::region_view`). The follower is read first: each follower
//! region's pieces of the source region must all hold one mark `M` (the source index
//! the follower applied the range up to). The source is read next, at its applied
//! index `A >= M`. The entries `(M, A]` of the source's log must write no key of the
//! range (`Store::dup_read_log`: the same reader that ships): then the source's data
//! at `A` is its data at `M` over the range, and the two fingerprints are of one
//! position. Otherwise the follower lags (or the log cannot tell: after a restart
//! the outcome of entries applied before it is unknown): the region is read again
//! until the deadline, then reported `Lagging` or `Unknown`, never a mismatch.
//!
//! The follower's regions may be cut differently from the source's: the source
//! region's part of the range is cut at the follower's region boundaries, both sides
//! hash each piece (one read view per region: one index), and the pieces' hashes are
//! combined in key order.

use std::time::{Duration, Instant};

use regionkv_engine::Region;
use regionkv_engine::dup::DupEntry;
use regionkv_engine::sink::SinkSlot;
use regionkv_raft::directory::{DupRecord, DupStatus};
use regionkv_raft::dup_fingerprint::{Fingerprint, KeyRange, RegionFingerprint};

use crate::db::Db;
use crate::defaults::DRIVER_RETRY_PAUSE;
use crate::error::{Error, Result};

/// How long one region is read again while the follower lags.
const VERIFY_WAIT: Duration = Duration::from_secs(20);
/// The most bytes of log one look at `(M, A]` reads.
const LOG_BYTES: usize = 1 << 20;

/// What a verify found in one source region.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VerifyOutcome {
    /// The fingerprints match at `source_index`.
    Match,
    /// They differ at `source_index`: the follower's copy of the range is not the
    /// source's.
    Mismatch,
    /// The follower had not caught up with the writes to the range until the deadline
    /// (not a mismatch: retry).
    Lagging,
    /// No common position could be read (a region or its leader unreachable, a log
    /// that cannot tell after a restart): why.
    Unknown(String),
}

/// One source region of a verify.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegionVerify {
    /// The source region.
    pub region: regionkv_engine::RegionId,
    /// The source position compared (the follower's mark), when one was found.
    pub source_index: Option<u64>,
    /// The source's fingerprint of its part of the range at that position.
    pub source: Option<Fingerprint>,
    /// The follower's.
    pub follower: Option<Fingerprint>,
    /// What was found.
    pub outcome: VerifyOutcome,
}

/// A verify of one duplication.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifyReport {
    /// The duplication.
    pub dup_id: u64,
    /// Its status when the verify began.
    pub status: DupStatus,
    /// Every covered source region, in key order.
    pub regions: Vec<RegionVerify>,
}

impl VerifyReport {
    /// True if every region's fingerprints matched.
    pub fn all_match(&self) -> bool {
        !self.regions.is_empty() && self.regions.iter().all(|r| r.outcome == VerifyOutcome::Match)
    }
}

/// The follower's side of one source region: the mark every piece holds, the pieces
/// (one per follower region, in key order) and their fingerprints.
type FollowerSide = (u64, Vec<KeyRange>, Vec<Fingerprint>);

/// One attempt's result in one region.
enum Attempt {
    Done(RegionVerify),
    Again(VerifyOutcome),
}

/// Combines piece fingerprints in key order.
fn combine(pieces: &[Fingerprint]) -> Fingerprint {
    let mut h = regionkv_raft::dup_fingerprint::RangeHasher::default();
    for p in pieces {
        h.pair(&p.hash.to_le_bytes(), &p.pairs.to_le_bytes());
    }
    Fingerprint { hash: h.finish().hash, pairs: pieces.iter().map(|p| p.pairs).sum() }
}

/// `[start, end)` cut to `region` (`None`: they do not overlap).
pub(crate) fn clip_to(start: &[u8], end: Option<&[u8]>, region: &Region) -> Option<KeyRange> {
    let s = start.max(region.start.as_slice()).to_vec();
    let e = match (end, region.end.as_deref()) {
        (Some(a), Some(b)) => Some(a.min(b).to_vec()),
        (a, b) => a.or(b).map(<[u8]>::to_vec),
    };
    e.as_deref().is_none_or(|e| s.as_slice() < e).then_some((s, e))
}

/// The one mark every piece of `range` holds in `fp`'s sink entry of `(dup, source)`
/// (`None`: not covered whole, of another incarnation, or marks that differ).
fn uniform_mark(
    fp: &RegionFingerprint,
    record: &DupRecord,
    source: u64,
    range: &KeyRange,
) -> Option<u64> {
    let Some(SinkSlot::Known(entry)) = fp.sinks.as_ref()?.get(record.dup_id, source) else {
        return None;
    };
    if entry.incarnation != record.incarnation || entry.seed_id.is_some() {
        return None;
    }
    let pieces = entry.clipped(&range.0, range.1.as_deref()).pieces;
    let first = pieces.first()?;
    let contiguous = pieces.windows(2).all(|w| w[0].end.as_deref() == Some(w[1].start.as_slice()));
    let whole = first.start == range.0 && pieces.last()?.end == range.1;
    let mark = first.mark;
    (contiguous && whole && pieces.iter().all(|p| p.mark == mark)).then_some(mark)
}

impl Db {
    /// Verifies a duplication: for every source region it covers, the fingerprint of
    /// its part of the range in the source and in the follower at one source position
    /// (the follower's mark), and whether they match. A follower that lags is read
    /// again, then reported `Lagging`, never as a mismatch. The follower must be a
    /// cluster in this process (`Cluster::add_duplication_target`) so far. Refused for
    /// a duplication that is not streaming (`Log`, `Paused`, `CuttingOver`): before,
    /// the follower holds no copy; once cut over, it takes writes of its own.
    pub fn verify_duplication(&self, dup_id: u64) -> Result<VerifyReport> {
        let record = self.dup_record(dup_id)?;
        if !matches!(record.status, DupStatus::Log | DupStatus::Paused | DupStatus::CuttingOver) {
            return Err(Error::InvalidRequest(format!(
                "duplication {dup_id} is {}: only a streaming (log, paused or cutting over) \
                 duplication is verified",
                record.status.name()
            )));
        }
        let follower = self.follower_of(&record)?;
        let mut regions = Vec::new();
        for region in self.covered_regions(&record.start, record.end.as_deref()) {
            regions.push(self.verify_region(&record, &region, &follower));
        }
        Ok(VerifyReport { dup_id, status: record.status, regions })
    }

    /// The in-process follower cluster of `record`.
    pub(crate) fn follower_of(&self, record: &DupRecord) -> Result<Db> {
        self.router().backend().dup_target(&record.remote.name).ok_or_else(|| {
            Error::InvalidRequest(format!(
                "duplication {}'s follower {:?} is not a cluster in this process: verify and \
                 cutover reach only those so far",
                record.dup_id, record.remote.name
            ))
        })
    }

    fn verify_region(&self, record: &DupRecord, region: &Region, follower: &Db) -> RegionVerify {
        let start = Instant::now();
        loop {
            let outcome = match self.verify_attempt(record, region, follower) {
                Ok(Attempt::Done(done)) => return done,
                Ok(Attempt::Again(outcome)) => outcome,
                Err(e) => VerifyOutcome::Unknown(e.to_string()),
            };
            if start.elapsed() >= VERIFY_WAIT {
                return RegionVerify {
                    region: region.id,
                    source_index: None,
                    source: None,
                    follower: None,
                    outcome,
                };
            }
            std::thread::sleep(DRIVER_RETRY_PAUSE * 5);
        }
    }

    /// The follower's pieces of `range`: (each follower region's part, its
    /// fingerprint), all at one mark.
    fn follower_side(
        follower: &Db,
        record: &DupRecord,
        source: &Region,
        range: &KeyRange,
    ) -> Result<Option<FollowerSide>> {
        let backend = follower.router().backend();
        let (mut mark, mut pieces, mut fps) = (None, Vec::new(), Vec::new());
        for f in follower.covered_regions(&range.0, range.1.as_deref()) {
            let Some(piece) = clip_to(&range.0, range.1.as_deref(), &f) else { continue };
            let leader = backend.leader_of(f.id).ok_or_else(|| Error::Unavailable {
                waited: Duration::ZERO,
                last: format!("no leader of follower region {}", f.id),
            })?;
            let fp = backend.range_fingerprint(leader, f.id, std::slice::from_ref(&piece))?;
            // A region cut again since it was located: look again.
            if fp.region.start != f.start || fp.region.end != f.end {
                return Ok(None);
            }
            let Some(m) = uniform_mark(&fp, record, source.id.0, &piece) else { return Ok(None) };
            if mark.is_some_and(|held| held != m) {
                return Ok(None);
            }
            mark = Some(m);
            fps.extend(fp.fingerprints);
            pieces.push(piece);
        }
        let covered = pieces.first().is_some_and(|p| p.0 == range.0)
            && pieces.last().is_some_and(|p| p.1 == range.1)
            && pieces.windows(2).all(|w| w[0].1.as_deref() == Some(w[1].0.as_slice()));
        Ok(mark.filter(|_| covered).map(|m| (m, pieces, fps)))
    }

    fn verify_attempt(
        &self,
        record: &DupRecord,
        region: &Region,
        follower: &Db,
    ) -> Result<Attempt> {
        let Some(range) = clip_to(&record.start, record.end.as_deref(), region) else {
            return Ok(Attempt::Again(VerifyOutcome::Unknown("the region left the range".into())));
        };
        let Some((mark, pieces, follower_fps)) =
            Self::follower_side(follower, record, region, &range)?
        else {
            return Ok(Attempt::Again(VerifyOutcome::Lagging));
        };
        let backend = self.router().backend();
        let leader = backend.leader_of(region.id).ok_or_else(|| Error::Unavailable {
            waited: Duration::ZERO,
            last: format!("no leader of source region {}", region.id),
        })?;
        let source = backend.range_fingerprint(leader, region.id, &pieces)?;
        if source.region.start != region.start || source.region.end != region.end {
            return Ok(Attempt::Again(VerifyOutcome::Unknown("the source region changed".into())));
        }
        let confirmed = match source.dups.as_ref().and_then(|t| t.get(record.dup_id)) {
            Some(DupEntry::Known(s)) => s.confirmed,
            _ => None,
        };
        if source.applied < mark || confirmed.is_none_or(|c| c < mark) {
            // A new leader behind the old one: read again.
            return Ok(Attempt::Again(VerifyOutcome::Lagging));
        }
        // The source's log (mark, applied] must write nothing of the range.
        let mut after = mark;
        while after < source.applied {
            let batch = backend.dup_read_log(leader, region.id, after, LOG_BYTES)?;
            if batch.last <= after {
                return Ok(Attempt::Again(VerifyOutcome::Lagging));
            }
            let written = batch.ops.iter().any(|op| {
                op.index <= source.applied
                    && op.key.as_ref() >= range.0.as_slice()
                    && range.1.as_deref().is_none_or(|e| op.key.as_ref() < e)
            });
            if written {
                return Ok(Attempt::Again(VerifyOutcome::Lagging));
            }
            after = batch.last;
        }
        let (s, f) = (combine(&source.fingerprints), combine(&follower_fps));
        Ok(Attempt::Done(RegionVerify {
            region: region.id,
            source_index: Some(mark),
            source: Some(s),
            follower: Some(f),
            outcome: if s == f { VerifyOutcome::Match } else { VerifyOutcome::Mismatch },
        }))
    }
}
