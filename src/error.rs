//! The facade's one error type, [`Error`], classified for callers by
//! [`Error::is_retryable`]; and [`Result`].

use std::time::Duration;

use regionkv_engine::{RegionId, StoreId};

/// What went wrong, and whether trying again can help.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The cluster could not serve the request before the deadline (no leader, stores
    /// down, or retries exhausted). For a write the outcome is unknown: it may have
    /// been applied.
    #[error("no answer within {waited:?} ({last}); for a write the outcome is unknown")]
    Unavailable {
        /// How long the client tried.
        waited: Duration,
        /// The last error seen.
        last: String,
    },
    /// A write batch touches keys of more than one region, and the cluster cannot
    /// write it atomically: only where transactions are not available (a transaction
    /// command whose keys span regions, e.g. [`Db::txn_call`](crate::Db::txn_call)).
    /// Since cluster version 3, [`Db::write`](crate::Db::write) writes such a batch by
    /// two-phase commit; below it, it answers [`Error::FeatureNotActive`].
    #[error(
        "the batch spans regions {}; batches are atomic within one region only: \
         split it by region",
        id_list(regions)
    )]
    CrossRegionBatch {
        /// The regions the batch touches, as far as routing knows them: the region of
        /// its first key, then the region of a key outside it unless no store could
        /// say which (absent, never made up).
        regions: Vec<RegionId>,
    },
    /// A key of the batch holds another transaction's lock that cannot be resolved
    /// now (its transaction is alive, or its record cannot be read here), and the
    /// client does not wait ([`LockWait::NoWait`](crate::LockWait), the default) or
    /// waited its timeout. Nothing of the batch was written; retry.
    #[error("key {key:?} is locked by transaction {txn_id}; nothing was written, retry")]
    Conflict {
        /// The locked key.
        key: bytes::Bytes,
        /// The transaction holding it.
        txn_id: u64,
    },
    /// The transaction was aborted (by a reader or the recovery daemon, after its
    /// TTL): nothing of the batch was or will be written; retry.
    #[error("transaction {txn_id} was aborted; nothing was written, retry")]
    TxnAborted {
        /// The transaction.
        txn_id: u64,
    },
    /// A snapshot transaction started at `read_ts`, below the version GC floor of a
    /// region it read or wrote (versions it could see may be collected): nothing was
    /// read or written. Not retryable within the transaction: start a new one
    /// ([`Db::transaction`](crate::Db::transaction)), which reads the latest values.
    #[error(
        "transaction snapshot {read_ts} is older than the version GC floor {floor}; start a \
         new transaction"
    )]
    SnapshotTooOld {
        /// The transaction's start timestamp.
        read_ts: u64,
        /// The region's GC floor (the safepoint it collected at).
        floor: u64,
    },
    /// The commit of a two-phase batch was sent and no definite outcome came back
    /// before the deadline: it is committed or aborted, not known which. Ask later
    /// with [`Db::txn_outcome`](crate::Db::txn_outcome)`(txn_id, primary_key)`. Not
    /// retryable as such: writing the batch again may apply it twice.
    #[error(
        "the outcome of transaction {txn_id} is unknown; ask db.txn_outcome({txn_id}, \
         {primary_key:?}) later"
    )]
    Indeterminate {
        /// The transaction.
        txn_id: u64,
        /// Its primary key: where its record is.
        primary_key: bytes::Bytes,
    },
    /// The request is invalid (empty key, too large, ...).
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// The cluster is shut down.
    #[error("the cluster is shut down")]
    Shutdown,
    /// Refused before anything was proposed: the command kind needs a newer cluster
    /// version than the active one. Upgrade every store, then finalize the upgrade
    /// ([`Cluster::finalize_upgrade`](crate::Cluster::finalize_upgrade), `regionkv
    /// client upgrade finalize`).
    #[error(
        "{feature} needs cluster version {needed}, the cluster runs at {active}; upgrade \
         every store, then finalize the upgrade"
    )]
    FeatureNotActive {
        /// The feature.
        feature: String,
        /// The active cluster version, as the refusing store knew it.
        active: u32,
        /// The version that introduced the feature.
        needed: u32,
    },
    /// A finalize was refused, nothing proposed: a store of the cluster did not
    /// positively report that it supports the target version.
    #[error("{}", upgrade_refused(*store, *target, *supported))]
    UpgradeRefused {
        /// The store that holds the finalize back.
        store: StoreId,
        /// The version asked for.
        target: u32,
        /// The newest version the store reported supporting; `None`: it reported none
        /// (a binary from before the version gate, or it did not answer).
        supported: Option<u32>,
    },
    /// A store failed in a way that needs attention (I/O, corruption).
    #[error(transparent)]
    Store(regionkv_raft::Error),
    /// Files could not be prepared, or a node could not be reached.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// The handshake with a node failed: one side refused the other.
    #[error(
        "the handshake with the node at {addr} failed: {reason}; check that both use the \
         same cluster id and cluster secret"
    )]
    Refused {
        /// The node's address.
        addr: std::net::SocketAddr,
        /// Why, as the node said.
        reason: regionkv_raft::transport::wire::RejectReason,
    },
    /// A node answered with bytes that are not the client protocol this binary speaks.
    #[error("client protocol error: {0}; are the client and the node the same version?")]
    Protocol(String),
    /// A node's configuration is unusable.
    #[error("invalid node configuration: {0}; fix the configuration file or flags")]
    Config(String),
    /// A node's data directory holds no store, and the node was not told whether to
    /// bootstrap a new cluster or join a running one.
    #[error(
        "the data dir {} holds no store. To start a new cluster, start each of its first \
         nodes once with --bootstrap (initial_cluster_state = \"new\"); to add this node to \
         a running cluster, or to bring back a store whose disk was lost, start it with \
         --join (initial_cluster_state = \"existing\") and add it with `regionkv client \
         store add ID ADDR` (after `regionkv client store remove ID` for a lost store)",
        data_dir.display()
    )]
    NotInitialized {
        /// The node's data directory.
        data_dir: std::path::PathBuf,
    },
    /// The TCP transport of a node could not start (an address in use, ...).
    #[error(transparent)]
    Transport(#[from] regionkv_raft::transport::tcp::TcpError),
}

impl From<regionkv_raft::Error> for Error {
    fn from(e: regionkv_raft::Error) -> Error {
        match e {
            regionkv_raft::Error::FeatureNotActive { feature, active, needed } => {
                Error::FeatureNotActive { feature: feature.to_owned(), active, needed }
            }
            regionkv_raft::Error::TxnAborted { txn_id } => Error::TxnAborted { txn_id },
            regionkv_raft::Error::SnapshotTooOld { read_ts, floor } => {
                Error::SnapshotTooOld { read_ts, floor }
            }
            e => Error::Store(e),
        }
    }
}

fn upgrade_refused(store: StoreId, target: u32, supported: Option<u32>) -> String {
    match supported {
        Some(max) => format!(
            "finalize to cluster version {target} refused: store {store} supports cluster \
             versions up to {max}; upgrade its binary, then finalize again"
        ),
        None => format!(
            "finalize to cluster version {target} refused: store {store} reports no supported \
             cluster version (it runs a binary from before the version gate, or it did not \
             answer); upgrade it or bring it up, then finalize again"
        ),
    }
}

impl Error {
    /// True if retrying the same request later may succeed. Exhaustive on purpose.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Unavailable { .. } | Error::Conflict { .. } | Error::TxnAborted { .. } => true,
            Error::Store(e) => e.is_retryable(),
            Error::CrossRegionBatch { .. }
            | Error::SnapshotTooOld { .. }
            | Error::Indeterminate { .. }
            | Error::InvalidRequest(_)
            | Error::FeatureNotActive { .. }
            | Error::UpgradeRefused { .. }
            | Error::Shutdown
            | Error::Io(_)
            | Error::Refused { .. }
            | Error::Protocol(_)
            | Error::Config(_)
            | Error::NotInitialized { .. }
            | Error::Transport(_) => false,
        }
    }
}

/// `[1, 7]`: region ids as a list of numbers, for messages.
fn id_list(ids: &[RegionId]) -> String {
    let ids: Vec<String> = ids.iter().map(ToString::to_string).collect();
    format!("[{}]", ids.join(", "))
}

/// Shorthand for results of the facade.
pub type Result<T, E = Error> = std::result::Result<T, E>;
