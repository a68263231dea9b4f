//! Errors on the wire of the client protocol: [`ErrorCode`], [`RemoteError`], and the
//! conversions from and to the Raft layer's and the facade's errors.

use std::time::Duration;

use regionkv_engine::codec::{self, Field};
use regionkv_engine::{Region, RegionId, StoreId};
use regionkv_raft::{DropReason, MergeAbortReason};

use super::records::{D, nested, opt_u64, put_region, region_of};
use super::txn::{
    E_CONFLICT_TS, E_EXPIRES_AT, E_FLOOR, E_KEY, E_LOCK_START_TS, E_PRIMARY_KEY, E_START_TS,
    E_TERM, E_TXN_ID, TxnFields,
};
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
    /// Since the version gate: the command needs a newer cluster version (fields 8 to
    /// 10 say which); not retryable.
    FeatureNotActive,
    /// Since the version gate: a finalize was refused, nothing proposed (fields 11 and
    /// 12 say which store holds it back).
    UpgradeRefused,
    /// Since transactions: a key holds another transaction's lock (fields 13 to 16).
    Locked,
    /// Since transactions: the transaction is aborted (field 14).
    TxnAborted,
    /// Since transactions: the transaction has no record (fields 14 and 17).
    TxnNotFound,
    /// Since transactions: the transaction is below its region's floor (14 and 17).
    TxnTooOld,
    /// Since snapshot isolation: a write-write conflict (fields 13, 19 and 20).
    WriteConflict,
    /// Since one-phase snapshot commits: the region's leader needs a fresh timestamp
    /// (fields 2 and 23).
    ReadTsUnsynced,
    /// Since version GC: a snapshot below its region's GC floor (fields 19, the read
    /// timestamp, and 17, the floor).
    SnapshotTooOld,
    /// Since duplication: a client write to a follower's read-only standby range
    /// (field 2 the region, the reason field the duplication id).
    StandbyReadOnly,
    /// Since cutover: a client write to a source range fenced by a cutover (field 2
    /// the region, the reason field the duplication id).
    DupFenced,
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
    ErrorCode::FeatureNotActive,
    ErrorCode::UpgradeRefused,
    ErrorCode::Locked,
    ErrorCode::TxnAborted,
    ErrorCode::TxnNotFound,
    ErrorCode::TxnTooOld,
    ErrorCode::WriteConflict,
    ErrorCode::ReadTsUnsynced,
    ErrorCode::SnapshotTooOld,
    ErrorCode::StandbyReadOnly,
    ErrorCode::DupFenced,
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
    /// A boxed slice, not a `Vec`: the record stays under clippy's large-error bound.
    pub regions: Box<[Region]>,
    pub target: Option<RegionId>,
    /// The code of the reason of a `Dropped` ([`DropReason`]) or `MergeAborted`
    /// ([`MergeAbortReason`]) error.
    pub reason: Option<u64>,
    /// Boxed, not a `String`: the record stays under clippy's large-error bound.
    pub message: Box<str>,
    /// The fields of a version error (feature not active, upgrade refused), boxed:
    /// most errors have none.
    pub version: Option<Box<VersionFields>>,
    /// The fields of a transaction refusal, boxed: most errors have none.
    pub txn: Option<Box<TxnFields>>,
}

/// The fields of a version error; each absent is unknown, never made up.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct VersionFields {
    /// Feature not active: the feature, the active and the needed version.
    pub feature: Option<String>,
    pub active: Option<u64>,
    pub needed: Option<u64>,
    /// Upgrade refused: the store, and the newest version it reported supporting
    /// (the target is in `needed`).
    pub store: Option<StoreId>,
    pub supported: Option<u64>,
}

pub(super) const E_CODE: u16 = 1;
const E_REGION: u16 = 2;
const E_LEADER: u16 = 3;
const E_REGIONS: u16 = 4;
const E_MESSAGE: u16 = 5;
const E_TARGET: u16 = 6;
/// Since 0.1: optional, absent = unknown (decodes as an `Unspecified` reason).
const E_REASON: u16 = 7;
/// Since the version gate, each optional: absent = unknown, never made up.
const E_FEATURE: u16 = 8;
const E_ACTIVE: u16 = 9;
const E_NEEDED: u16 = 10;
const E_STORE: u16 = 11;
const E_SUPPORTED: u16 = 12;
// Since transactions, 13 to 17, each optional: in `txn.rs`.
const E_TAGS: &[u16] = &[
    E_CODE,
    E_REGION,
    E_LEADER,
    E_REGIONS,
    E_MESSAGE,
    E_TARGET,
    E_REASON,
    E_FEATURE,
    E_ACTIVE,
    E_NEEDED,
    E_STORE,
    E_SUPPORTED,
    E_KEY,
    E_TXN_ID,
    E_PRIMARY_KEY,
    E_EXPIRES_AT,
    E_FLOOR,
    E_LOCK_START_TS,
    E_START_TS,
    E_CONFLICT_TS,
    E_TERM,
];

impl RemoteError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> RemoteError {
        RemoteError {
            code,
            region: None,
            leader: None,
            regions: Box::default(),
            target: None,
            reason: None,
            message: message.into().into_boxed_str(),
            version: None,
            txn: None,
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
        if let Some(t) = &self.txn {
            t.encode(o);
        }
        let Some(v) = &self.version else { return };
        if let Some(feature) = &v.feature {
            codec::put_field(o, E_FEATURE, feature.as_bytes());
        }
        for (tag, value) in [
            (E_ACTIVE, v.active),
            (E_NEEDED, v.needed),
            (E_STORE, v.store.map(|s| s.0)),
            (E_SUPPORTED, v.supported),
        ] {
            if let Some(value) = value {
                codec::put_u64(o, tag, value);
            }
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
                .unwrap_or_default()
                .into_boxed_str(),
            version: {
                let v = VersionFields {
                    feature: r
                        .optional(E_FEATURE)?
                        .map(|f| String::from_utf8_lossy(f.value).into_owned()),
                    active: opt_u64(&r, E_ACTIVE)?,
                    needed: opt_u64(&r, E_NEEDED)?,
                    store: opt_u64(&r, E_STORE)?.map(StoreId),
                    supported: opt_u64(&r, E_SUPPORTED)?,
                };
                (v != VersionFields::default()).then(|| Box::new(v))
            },
            txn: TxnFields::decode(&r)?,
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
        let RemoteError {
            code,
            region,
            leader,
            regions,
            target,
            reason,
            message,
            version: v,
            txn: t,
        } = self;
        let t = t.map(|t| *t).unwrap_or_default();
        let VersionFields { feature, active, needed, .. } = v.map(|v| *v).unwrap_or_default();
        let missing = |what: &str| {
            E::Malformed(format!(
                "a node answered {code:?} without the {what}, which is unknown ({message})"
            ))
        };
        let region = || region.ok_or_else(|| missing("region"));
        Ok(match code {
            ErrorCode::NotLeader => E::NotLeader { region: region()?, leader },
            ErrorCode::EpochNotMatch => {
                E::EpochNotMatch { region: region()?, current: regions.into_vec() }
            }
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
            ErrorCode::ReplicaHalted => {
                E::ReplicaHalted { region: region()?, reason: message.into() }
            }
            ErrorCode::InvalidRequest
            | ErrorCode::CrossRegionBatch
            | ErrorCode::TooLarge
            | ErrorCode::NotAllowed
            | ErrorCode::UpgradeRefused => E::InvalidRequest(message.into()),
            // The raft error names a feature this binary knows (a static name); one it
            // does not know is refused as invalid, with the node's words.
            ErrorCode::FeatureNotActive => match self_feature(feature.as_deref()) {
                Some(feature) => E::FeatureNotActive {
                    feature,
                    active: version(active).ok_or_else(|| missing("active version"))?,
                    needed: version(needed).ok_or_else(|| missing("needed version"))?,
                },
                None => E::InvalidRequest(message.into()),
            },
            ErrorCode::Malformed => E::Malformed(message.into()),
            ErrorCode::Locked => E::Locked {
                key: t.key.ok_or_else(|| missing("locked key"))?,
                txn_id: t.txn_id.ok_or_else(|| missing("transaction id"))?,
                primary_key: t.primary_key.ok_or_else(|| missing("primary key"))?,
                // Unknown: never expired (an absent field never shortens a lease).
                expires_at_ms: t.expires_at_ms.unwrap_or(u64::MAX),
                lock_start_ts: t.lock_start_ts,
            },
            ErrorCode::WriteConflict => E::WriteConflict {
                key: t.key.ok_or_else(|| missing("conflicting key"))?,
                start_ts: t.start_ts.ok_or_else(|| missing("start timestamp"))?,
                conflict_ts: t.conflict_ts.ok_or_else(|| missing("conflict timestamp"))?,
            },
            ErrorCode::TxnAborted => {
                E::TxnAborted { txn_id: t.txn_id.ok_or_else(|| missing("transaction id"))? }
            }
            // Unknown floor: 0 (nothing is taken for finished).
            ErrorCode::TxnNotFound => E::TxnNotFound {
                txn_id: t.txn_id.ok_or_else(|| missing("transaction id"))?,
                floor: t.floor.unwrap_or(0),
            },
            ErrorCode::ReadTsUnsynced => E::ReadTsUnsynced {
                region: region()?,
                term: t.term.ok_or_else(|| missing("leader's term"))?,
            },
            ErrorCode::TxnTooOld => E::TxnTooOld {
                txn_id: t.txn_id.ok_or_else(|| missing("transaction id"))?,
                floor: t.floor.unwrap_or(0),
            },
            ErrorCode::SnapshotTooOld => E::SnapshotTooOld {
                read_ts: t.start_ts.ok_or_else(|| missing("read timestamp"))?,
                floor: t.floor.ok_or_else(|| missing("gc floor"))?,
            },
            ErrorCode::StandbyReadOnly | ErrorCode::DupFenced => {
                dup_refusal(code, region()?, reason.ok_or_else(|| missing("duplication id"))?)
            }
            ErrorCode::Unspecified
            | ErrorCode::StoreFailed
            | ErrorCode::UnsupportedRequest
            | ErrorCode::Unavailable => E::Internal(format!("a remote node failed: {message}")),
        })
    }

    /// The error as the facade returns it (for requests a node drives: split, merge,
    /// regions, finalize).
    pub fn into_facade(self) -> Error {
        match self.code {
            ErrorCode::FeatureNotActive | ErrorCode::UpgradeRefused => self.into_version_error(),
            // In flight when its node or connection stopped: the outcome is unknown.
            ErrorCode::Unavailable | ErrorCode::CancelledInFlight => {
                Error::Unavailable { waited: Duration::ZERO, last: self.message.into() }
            }
            ErrorCode::CrossRegionBatch
            | ErrorCode::InvalidRequest
            | ErrorCode::TooLarge
            | ErrorCode::NotAllowed => Error::InvalidRequest(self.message.into()),
            ErrorCode::UnsupportedRequest => Error::Protocol(format!(
                "the node does not support this request ({}); upgrade the node",
                self.message
            )),
            ErrorCode::Cancelled => Error::Shutdown,
            _ => Error::Store(self.into_raft()),
        }
    }
}

/// The duplication refusal `code` names (`StandbyReadOnly` or `DupFenced`).
fn dup_refusal(code: ErrorCode, region: RegionId, dup_id: u64) -> regionkv_raft::Error {
    if code == ErrorCode::DupFenced {
        regionkv_raft::Error::DupFenced { region, dup_id }
    } else {
        regionkv_raft::Error::StandbyReadOnly { region, dup_id }
    }
}

impl RemoteError {
    /// A feature-not-active or upgrade-refused error as the facade returns it; one
    /// without the fields it needs says so.
    fn into_version_error(self) -> Error {
        let v = self.version.as_deref().cloned().unwrap_or_default();
        let incomplete = || {
            Error::Protocol(format!(
                "a node answered {:?} without its fields ({})",
                self.code, self.message
            ))
        };
        match self.code {
            ErrorCode::FeatureNotActive => {
                match (v.feature, version(v.active), version(v.needed)) {
                    (Some(feature), Some(active), Some(needed)) => {
                        Error::FeatureNotActive { feature, active, needed }
                    }
                    _ => incomplete(),
                }
            }
            _ => match (v.store, version(v.needed)) {
                (Some(store), Some(target)) => {
                    Error::UpgradeRefused { store, target, supported: version(v.supported) }
                }
                _ => incomplete(),
            },
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
                out.regions = current.clone().into_boxed_slice();
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
                out.message = reason.to_string().into();
            }
            E::Dropped { region, reason } => {
                out.code = ErrorCode::Dropped;
                out.region = Some(*region);
                out.reason = Some(reason.code());
                out.message = reason.to_string().into();
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
                out.message = reason.as_str().into();
            }
            E::InvalidRequest(m) => {
                out.code = ErrorCode::InvalidRequest;
                out.message = m.as_str().into();
            }
            E::Malformed(m) => {
                out.code = ErrorCode::Malformed;
                out.message = m.as_str().into();
            }
            E::FeatureNotActive { feature, active, needed } => {
                out.code = ErrorCode::FeatureNotActive;
                out.version = Some(Box::new(VersionFields {
                    feature: Some((*feature).to_owned()),
                    active: Some(u64::from(*active)),
                    needed: Some(u64::from(*needed)),
                    ..VersionFields::default()
                }));
            }
            E::StandbyReadOnly { region, dup_id } | E::DupFenced { region, dup_id } => {
                let fenced = matches!(e, E::DupFenced { .. });
                out.code = if fenced { ErrorCode::DupFenced } else { ErrorCode::StandbyReadOnly };
                (out.region, out.reason) = (Some(*region), Some(*dup_id));
            }
            E::ReadTsUnsynced { region, term } => {
                out.code = ErrorCode::ReadTsUnsynced;
                out.region = Some(*region);
                out.txn = Some(Box::new(TxnFields { term: Some(*term), ..TxnFields::default() }));
            }
            E::Locked { .. }
            | E::WriteConflict { .. }
            | E::TxnAborted { .. }
            | E::TxnNotFound { .. }
            | E::TxnTooOld { .. }
            | E::SnapshotTooOld { .. } => {
                if let Some((code, fields)) = TxnFields::of(e) {
                    out.code = code;
                    out.txn = Some(Box::new(fields));
                }
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
            Error::FeatureNotActive { feature, active, needed } => {
                let mut out = RemoteError::new(ErrorCode::FeatureNotActive, e.to_string());
                out.version = Some(Box::new(VersionFields {
                    feature: Some(feature.clone()),
                    active: Some(u64::from(*active)),
                    needed: Some(u64::from(*needed)),
                    ..VersionFields::default()
                }));
                out
            }
            Error::UpgradeRefused { store, target, supported } => {
                let mut out = RemoteError::new(ErrorCode::UpgradeRefused, e.to_string());
                out.version = Some(Box::new(VersionFields {
                    store: Some(*store),
                    needed: Some(u64::from(*target)),
                    supported: supported.map(u64::from),
                    ..VersionFields::default()
                }));
                out
            }
            Error::Shutdown => RemoteError::new(ErrorCode::Cancelled, e.to_string()),
            _ => RemoteError::new(ErrorCode::StoreFailed, e.to_string()),
        }
    }
}

/// A version field that fits a `u32` (`None`: absent or out of range, unknown).
fn version(v: Option<u64>) -> Option<u32> {
    v.and_then(|v| u32::try_from(v).ok())
}

/// The static name of a feature this binary knows, by its name on the wire.
fn self_feature(name: Option<&str>) -> Option<&'static str> {
    let name = name?;
    regionkv_raft::version::FEATURES.iter().find(|f| f.name == name).map(|f| f.name)
}
