//! Errors on the wire of the client protocol: [`ErrorCode`], [`RemoteError`], and the
//! conversions from and to the Raft layer's and the facade's errors.

use std::time::Duration;

use regionkv_engine::codec::{self, Field};
use regionkv_engine::{Region, RegionId, StoreId};
use regionkv_raft::{DropReason, MergeAbortReason};

use super::records::{D, nested, opt_u64, put_region, region_of};
use crate::error::Error;

/// What kind of error a node answered with. Code 0 is reserved: a code this binary
/// does not know (from a newer node) decodes as `Unspecified`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ErrorCode {
    Unspecified,
    NotLeader,
    EpochNotMatch,
    KeyNotInRegion,
    RegionNotFound,
    RegionExists,
    Merging,
    MergeAborted,
    Dropped,
    Cancelled,
    Timeout,
    InvalidRequest,
    Malformed,
    StoreFailed,
    UnsupportedRequest,
    Unavailable,
    CrossRegionBatch,
    TooLarge,
    /// Since 0.1: the store stopped with the request in flight; the outcome is unknown.
    CancelledInFlight,
    /// A raw command (admin, directory, membership change) from a client: only nodes
    /// send those; clients ask for split, merge and membership by intent.
    NotAllowed,
    /// Since 0.1: this store's replica of the region stopped applying its log; the
    /// region is served by its other replicas (retry there).
    ReplicaHalted,
}

const ERROR_CODES: &[ErrorCode] = &[
    ErrorCode::Unspecified,
    ErrorCode::NotLeader,
    ErrorCode::EpochNotMatch,
    ErrorCode::KeyNotInRegion,
    ErrorCode::RegionNotFound,
    ErrorCode::RegionExists,
    ErrorCode::Merging,
    ErrorCode::MergeAborted,
    ErrorCode::Dropped,
    ErrorCode::Cancelled,
    ErrorCode::Timeout,
    ErrorCode::InvalidRequest,
    ErrorCode::Malformed,
    ErrorCode::StoreFailed,
    ErrorCode::UnsupportedRequest,
    ErrorCode::Unavailable,
    ErrorCode::CrossRegionBatch,
    ErrorCode::TooLarge,
    ErrorCode::CancelledInFlight,
    ErrorCode::NotAllowed,
    ErrorCode::ReplicaHalted,
];

impl ErrorCode {
    /// The code on the wire: the position in `ERROR_CODES` (append only).
    fn code(self) -> u64 {
        ERROR_CODES.iter().position(|&c| c == self).unwrap_or(0) as u64
    }

    fn from_code(code: u64) -> ErrorCode {
        usize::try_from(code)
            .ok()
            .and_then(|i| ERROR_CODES.get(i))
            .copied()
            .unwrap_or(ErrorCode::Unspecified)
    }
}

/// An error as it crosses the wire: a code and the fields the client needs to route
/// and retry as a local client would. A field the node did not send is `None` or
/// empty: unknown, never made up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct RemoteError {
    pub code: ErrorCode,
    pub region: Option<RegionId>,
    pub leader: Option<StoreId>,
    pub regions: Vec<Region>,
    pub target: Option<RegionId>,
    /// The code of the reason of a `Dropped` ([`DropReason`]) or `MergeAborted`
    /// ([`MergeAbortReason`]) error.
    pub reason: Option<u64>,
    pub message: String,
}

pub(super) const E_CODE: u16 = 1;
const E_REGION: u16 = 2;
const E_LEADER: u16 = 3;
const E_REGIONS: u16 = 4;
const E_MESSAGE: u16 = 5;
const E_TARGET: u16 = 6;
/// Since 0.1: optional, absent = unknown (decodes as an `Unspecified` reason).
const E_REASON: u16 = 7;
const E_TAGS: &[u16] = &[E_CODE, E_REGION, E_LEADER, E_REGIONS, E_MESSAGE, E_TARGET, E_REASON];

impl RemoteError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> RemoteError {
        RemoteError {
            code,
            region: None,
            leader: None,
            regions: Vec::new(),
            target: None,
            reason: None,
            message: message.into(),
        }
    }

    pub(super) fn encode(&self, o: &mut Vec<u8>) {
        codec::put_u64(o, E_CODE, self.code.code());
        if let Some(r) = self.region {
            codec::put_u64(o, E_REGION, r.0);
        }
        if let Some(l) = self.leader {
            codec::put_u64(o, E_LEADER, l.0);
        }
        for r in &self.regions {
            put_region(o, E_REGIONS, r);
        }
        codec::put_field(o, E_MESSAGE, self.message.as_bytes());
        if let Some(t) = self.target {
            codec::put_u64(o, E_TARGET, t.0);
        }
        if let Some(reason) = self.reason {
            codec::put_u64(o, E_REASON, reason);
        }
    }

    pub(super) fn decode(f: &Field<'_>) -> D<RemoteError> {
        let r = nested(f, E_TAGS)?;
        Ok(RemoteError {
            code: ErrorCode::from_code(opt_u64(&r, E_CODE)?.unwrap_or(0)),
            region: opt_u64(&r, E_REGION)?.map(RegionId),
            leader: opt_u64(&r, E_LEADER)?.map(StoreId),
            regions: r.repeated(E_REGIONS).map(|f| region_of(&f)).collect::<D<_>>()?,
            target: opt_u64(&r, E_TARGET)?.map(RegionId),
            reason: opt_u64(&r, E_REASON)?,
            message: r
                .optional(E_MESSAGE)?
                .map(|m| String::from_utf8_lossy(m.value).into_owned())
                .unwrap_or_default(),
        })
    }

    /// The error as the Raft layer would have returned it in this process. Fields a
    /// retry needs but the node did not send are `None`/empty (unknown), never made up:
    /// an error that cannot be told without its region (or merge target) becomes
    /// [`regionkv_raft::Error::Malformed`], saying which field was missing. A reason
    /// code this binary does not know (or none) is `Unspecified`.
    pub fn into_raft(self) -> regionkv_raft::Error {
        self.try_into_raft().unwrap_or_else(|missing| missing)
    }

    /// [`RemoteError::into_raft`], or the error that says which field was missing.
    fn try_into_raft(self) -> Result<regionkv_raft::Error, regionkv_raft::Error> {
        use regionkv_raft::Error as E;
        let RemoteError { code, region, leader, regions, target, reason, message } = self;
        let missing = |what: &str| {
            E::Malformed(format!(
                "a node answered {code:?} without the {what}, which is unknown ({message})"
            ))
        };
        let region = || region.ok_or_else(|| missing("region"));
        Ok(match code {
            ErrorCode::NotLeader => E::NotLeader { region: region()?, leader },
            ErrorCode::EpochNotMatch => E::EpochNotMatch { region: region()?, current: regions },
            ErrorCode::KeyNotInRegion => {
                E::KeyNotInRegion { region: region()?, current: regions.into_iter().next() }
            }
            ErrorCode::RegionNotFound => E::RegionNotFound { region: region()? },
            ErrorCode::RegionExists => E::RegionExists { region: region()? },
            ErrorCode::Merging => E::Merging {
                region: region()?,
                target: target.ok_or_else(|| missing("merge target"))?,
            },
            ErrorCode::MergeAborted => E::MergeAborted {
                region: region()?,
                reason: MergeAbortReason::from_code(reason.unwrap_or(0)),
            },
            ErrorCode::Dropped => {
                E::Dropped { region: region()?, reason: DropReason::from_code(reason.unwrap_or(0)) }
            }
            ErrorCode::Timeout => E::Timeout { region: region()? },
            ErrorCode::Cancelled => E::Cancelled,
            ErrorCode::CancelledInFlight => E::CancelledInFlight { region: region()? },
            ErrorCode::ReplicaHalted => E::ReplicaHalted { region: region()?, reason: message },
            ErrorCode::InvalidRequest
            | ErrorCode::CrossRegionBatch
            | ErrorCode::TooLarge
            | ErrorCode::NotAllowed => E::InvalidRequest(message),
            ErrorCode::Malformed => E::Malformed(message),
            ErrorCode::Unspecified
            | ErrorCode::StoreFailed
            | ErrorCode::UnsupportedRequest
            | ErrorCode::Unavailable => E::Internal(format!("a remote node failed: {message}")),
        })
    }

    /// The error as the facade returns it (for requests a node drives: split, merge,
    /// regions).
    pub fn into_facade(self) -> Error {
        match self.code {
            // In flight when its node or connection stopped: the outcome is unknown.
            ErrorCode::Unavailable | ErrorCode::CancelledInFlight => {
                Error::Unavailable { waited: Duration::ZERO, last: self.message }
            }
            ErrorCode::CrossRegionBatch
            | ErrorCode::InvalidRequest
            | ErrorCode::TooLarge
            | ErrorCode::NotAllowed => Error::InvalidRequest(self.message),
            ErrorCode::UnsupportedRequest => Error::Protocol(format!(
                "the node does not support this request ({}); upgrade the node",
                self.message
            )),
            ErrorCode::Cancelled => Error::Shutdown,
            _ => Error::Store(self.into_raft()),
        }
    }
}

impl From<&regionkv_raft::Error> for RemoteError {
    fn from(e: &regionkv_raft::Error) -> RemoteError {
        use regionkv_raft::Error as E;
        let mut out = RemoteError::new(ErrorCode::StoreFailed, e.to_string());
        match e {
            E::NotLeader { region, leader } => {
                out.code = ErrorCode::NotLeader;
                out.region = Some(*region);
                out.leader = *leader;
            }
            E::EpochNotMatch { region, current } => {
                out.code = ErrorCode::EpochNotMatch;
                out.region = Some(*region);
                out.regions.clone_from(current);
            }
            E::KeyNotInRegion { region, current } => {
                out.code = ErrorCode::KeyNotInRegion;
                out.region = Some(*region);
                out.regions = current.iter().cloned().collect();
            }
            E::RegionNotFound { region } => {
                out.code = ErrorCode::RegionNotFound;
                out.region = Some(*region);
            }
            E::RegionExists { region } => {
                out.code = ErrorCode::RegionExists;
                out.region = Some(*region);
            }
            E::Merging { region, target } => {
                out.code = ErrorCode::Merging;
                out.region = Some(*region);
                out.target = Some(*target);
            }
            E::MergeAborted { region, reason } => {
                out.code = ErrorCode::MergeAborted;
                out.region = Some(*region);
                out.reason = Some(reason.code());
                out.message = reason.to_string();
            }
            E::Dropped { region, reason } => {
                out.code = ErrorCode::Dropped;
                out.region = Some(*region);
                out.reason = Some(reason.code());
                out.message = reason.to_string();
            }
            E::Cancelled => out.code = ErrorCode::Cancelled,
            E::CancelledInFlight { region } => {
                out.code = ErrorCode::CancelledInFlight;
                out.region = Some(*region);
            }
            E::Timeout { region } => {
                out.code = ErrorCode::Timeout;
                out.region = Some(*region);
            }
            E::ReplicaHalted { region, reason } => {
                out.code = ErrorCode::ReplicaHalted;
                out.region = Some(*region);
                out.message.clone_from(reason);
            }
            E::InvalidRequest(m) => {
                out.code = ErrorCode::InvalidRequest;
                out.message.clone_from(m);
            }
            E::Malformed(m) => {
                out.code = ErrorCode::Malformed;
                out.message.clone_from(m);
            }
            // A store's own failure (I/O, corruption, a bug): the message says which.
            _ => {}
        }
        out
    }
}

impl From<&Error> for RemoteError {
    fn from(e: &Error) -> RemoteError {
        match e {
            Error::Store(e) => RemoteError::from(e),
            Error::Unavailable { .. } => RemoteError::new(ErrorCode::Unavailable, e.to_string()),
            Error::CrossRegionBatch { .. } => {
                RemoteError::new(ErrorCode::CrossRegionBatch, e.to_string())
            }
            Error::InvalidRequest(m) => RemoteError::new(ErrorCode::InvalidRequest, m.clone()),
            Error::Shutdown => RemoteError::new(ErrorCode::Cancelled, e.to_string()),
            _ => RemoteError::new(ErrorCode::StoreFailed, e.to_string()),
        }
    }
}
