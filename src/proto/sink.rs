//! A duplication's sink commands over the client protocol: how a source cluster's
//! shipper reaches a follower cluster of `regionkv node` processes (ARCHITECTURE.md,
//! "Duplication (directory records, `Db` surfaces, driver)", shipping).
//!
//! ```text
//!  REQUEST  82 sink { 1 format (1), 2 follower region, 3 command (the `SINK`
//!              command's fields as `regionkv_raft::sink` encodes them: epoch, kind,
//!              dup id, incarnation, source region, ...) }
//!  RESPONSE 83 sink { 1 format (1), and exactly one of
//!              2 applied { 1 index, 2 applied ops, 3 skipped ops,
//!                          4 entry (the engine's sink entry encoding, format byte
//!                            first; absent: none, after a promote) }
//!              3 refused { 1 region, 2 dup id, 3 reason code (0 reserved; a code
//!                          this binary does not know is `Unspecified`) } }
//! ```
//!
//! Routing errors (not leader, stale epoch, a region not here, a store shutting down)
//! are the protocol's error answer, as for a write, so the shipper re-routes and
//! retries. A node from before this request answers `UnsupportedRequest`: the shipper
//! moves the duplication to `Broken(FollowerTooOld)`. A record of a format above 1 is
//! refused as malformed (nothing done); within format 1 unknown tags are skipped.

use regionkv_engine::RegionId;
use regionkv_engine::codec::{self, DecodeError, Field};
use regionkv_engine::sink::SinkEntry;
use regionkv_raft::sink::{self, SinkEntryCmd, SinkRefusal, SinkResult};

use super::records::{D, nested, opt_u64, req_u64};

/// The request's kind.
pub(super) const Q_SINK: u16 = 82;
/// The answer's kind.
pub(super) const R_SINK: u16 = 83;
/// The format of both records this binary writes (and the highest it reads).
pub(super) const SINK_FORMAT: u64 = 1;

const S_FORMAT: u16 = 1;
const S_REGION: u16 = 2;
const S_CMD: u16 = 3;
const A_FORMAT: u16 = 1;
const A_APPLIED: u16 = 2;
const A_REFUSED: u16 = 3;
const P_INDEX: u16 = 1;
const P_APPLIED: u16 = 2;
const P_SKIPPED: u16 = 3;
const P_ENTRY: u16 = 4;
const F_REGION: u16 = 1;
const F_DUP_ID: u16 = 2;
const F_REASON: u16 = 3;

/// A node's answer to a sink request that reached its store's replica.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum SinkAnswer {
    /// Applied (or, for a command applied before, found applied).
    Applied(SinkResult),
    /// Refused by the follower region (`Error::SinkRefused`): nothing changed.
    Refused { region: RegionId, dup_id: u64, reason: SinkRefusal },
}

pub(super) fn put_request(o: &mut Vec<u8>, region: RegionId, cmd: &SinkEntryCmd) {
    codec::put_nested(o, Q_SINK, |o| {
        codec::put_u64(o, S_FORMAT, SINK_FORMAT);
        codec::put_u64(o, S_REGION, region.0);
        codec::put_field(o, S_CMD, &sink::encode_entry_cmd(cmd));
    });
}

/// Checks a record's format: absent or above [`SINK_FORMAT`] is refused.
fn check_format(r: &codec::TlvRecord<'_>, tag: u16) -> D<()> {
    let format = r.required(tag, "sink format missing")?;
    match format.as_u64()? {
        SINK_FORMAT => Ok(()),
        _ => Err(DecodeError::new(
            format.offset,
            "a sink record of a format this binary cannot read",
        )),
    }
}

pub(super) fn request_of(f: &Field<'_>) -> D<(RegionId, SinkEntryCmd)> {
    let r = nested(f, &[S_FORMAT, S_REGION, S_CMD])?;
    check_format(&r, S_FORMAT)?;
    let region = RegionId(req_u64(&r, S_REGION, "sink region missing")?);
    let cmd = r.required(S_CMD, "sink command missing")?;
    let cmd = sink::decode_entry_cmd(cmd.value).map_err(|e| e.shifted(cmd.offset))?;
    Ok((region, cmd))
}

pub(super) fn put_answer(o: &mut Vec<u8>, answer: &SinkAnswer) {
    codec::put_nested(o, R_SINK, |o| {
        codec::put_u64(o, A_FORMAT, SINK_FORMAT);
        match answer {
            SinkAnswer::Applied(result) => codec::put_nested(o, A_APPLIED, |o| {
                codec::put_u64(o, P_INDEX, result.index);
                codec::put_u64(o, P_APPLIED, result.applied_ops as u64);
                codec::put_u64(o, P_SKIPPED, result.skipped_ops as u64);
                if let Some(entry) = &result.entry {
                    codec::put_field(o, P_ENTRY, &entry.encode());
                }
            }),
            SinkAnswer::Refused { region, dup_id, reason } => {
                codec::put_nested(o, A_REFUSED, |o| {
                    codec::put_u64(o, F_REGION, region.0);
                    codec::put_u64(o, F_DUP_ID, *dup_id);
                    codec::put_u64(o, F_REASON, reason.code());
                });
            }
        }
    });
}

fn count(r: &codec::TlvRecord<'_>, tag: u16, what: &'static str) -> D<usize> {
    let f = r.required(tag, what)?;
    usize::try_from(f.as_u64()?).map_err(|_| DecodeError::new(f.offset, "a count above usize"))
}

pub(super) fn answer_of(f: &Field<'_>) -> D<SinkAnswer> {
    let r = nested(f, &[A_FORMAT, A_APPLIED, A_REFUSED])?;
    check_format(&r, A_FORMAT)?;
    match (r.optional(A_APPLIED)?, r.optional(A_REFUSED)?) {
        (Some(a), None) => {
            let p = nested(&a, &[P_INDEX, P_APPLIED, P_SKIPPED, P_ENTRY])?;
            // An entry this binary cannot read (a newer format) is left out: the
            // shipper does not read it.
            let entry = p.optional(P_ENTRY)?.and_then(|e| SinkEntry::decode(e.value).ok());
            Ok(SinkAnswer::Applied(SinkResult {
                index: req_u64(&p, P_INDEX, "sink index missing")?,
                applied_ops: count(&p, P_APPLIED, "applied ops missing")?,
                skipped_ops: count(&p, P_SKIPPED, "skipped ops missing")?,
                entry,
            }))
        }
        (None, Some(x)) => {
            let x = nested(&x, &[F_REGION, F_DUP_ID, F_REASON])?;
            Ok(SinkAnswer::Refused {
                region: RegionId(req_u64(&x, F_REGION, "refused region missing")?),
                dup_id: req_u64(&x, F_DUP_ID, "refused dup id missing")?,
                reason: SinkRefusal::from_code(opt_u64(&x, F_REASON)?.unwrap_or(0)),
            })
        }
        _ => Err(DecodeError::new(f.offset, "a sink answer is applied or refused")),
    }
}

impl SinkAnswer {
    /// The answer as a store in this process gives it.
    pub(crate) fn into_result(self) -> regionkv_raft::Result<SinkResult> {
        match self {
            SinkAnswer::Applied(result) => Ok(result),
            SinkAnswer::Refused { region, dup_id, reason } => {
                Err(regionkv_raft::Error::SinkRefused { region, dup_id, reason })
            }
        }
    }

    /// A store's result as the node answers it: a refusal is an answer, any other
    /// error is the protocol's error answer (`Err`).
    pub(crate) fn of(
        result: regionkv_raft::Result<SinkResult>,
    ) -> Result<SinkAnswer, regionkv_raft::Error> {
        match result {
            Ok(result) => Ok(SinkAnswer::Applied(result)),
            Err(regionkv_raft::Error::SinkRefused { region, dup_id, reason }) => {
                Ok(SinkAnswer::Refused { region, dup_id, reason })
            }
            Err(e) => Err(e),
        }
    }
}
