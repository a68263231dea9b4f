//! regionkv: an embeddable, Raft-replicated, region-sharded key-value engine.
//!
//! The facade, all at the crate root:
//!
//! - three ways to reach a cluster: an in-process [`Cluster`] (stores on real files in
//!   this process, built with [`ClusterBuilder`]), a [`Node`] (one store in this
//!   process, replicating over TCP with the stores of other nodes and serving other
//!   processes over the client protocol; configured by [`NodeConfig`]), and a
//!   [`Client`] of such nodes;
//! - from any of them a [`Db`] handle (routing and retries hidden) for `put`, `get`,
//!   `delete`, `scan` (any [`IntoKeyRange`]) and atomic [`WriteBatch`]es, which take
//!   keys and values in every [`IntoBytes`] form;
//! - one [`Error`] type (with [`Error::is_retryable`]) and [`Result`];
//! - the ids and records the facade hands back: [`RegionId`], [`StoreId`], [`PeerId`],
//!   [`Region`], [`Epoch`], [`RegionInfo`], [`PeerStatus`], [`StateRole`],
//!   [`RegionRecord`], [`StoreStatus`], [`StoreMetrics`], [`ClusterId`], ...
//!
//! The layers underneath stay reachable, for embedding one of them alone, but only
//! through [`layers`]: [`layers::wal`] (the durable log), [`layers::engine`] (the MVCC
//! state machine) and [`layers::raft`] (the multi-Raft store). Their APIs are lower
//! level and change more often than the facade's.
//!
//! ```
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = tempfile::tempdir()?;
//! let cluster = regionkv::Cluster::builder().dir(dir.path()).stores(3).build()?;
//! let db = cluster.db();
//! db.put("apple", "red")?; // answered once a quorum has it on disk
//! db.put("banana", "yellow")?;
//! let parts = cluster.split("b")?; // two regions now; the client follows
//! assert_eq!(parts.len(), 2);
//! assert_eq!(db.scan(.., 10)?.len(), 2); // a scan crosses regions
//! cluster.kill_store(3)?; // a crash: two of three stores keep a quorum
//! db.delete("apple")?;
//! cluster.restart_store(3)?;
//! assert_eq!(db.get("apple")?, None);
//! cluster.shutdown()?;
//! # Ok(())
//! # }
//! ```

mod autosplit;
mod backend;
mod cluster;
mod control;
mod db;
mod defaults;
mod dup;
mod error;
#[doc(hidden)]
pub mod fuzzing;
pub mod health;
mod node;
mod prometheus;
mod proto;
mod region_info;
mod remote;
mod router;
mod server;
mod status_http;
mod txn_recovery;
mod version_gc;

pub use autosplit::SplitPolicy;
pub use cluster::{Cluster, ClusterBuilder};
pub use control::{ReplicaHash, StoreVersion, UpgradeStatus};
#[doc(hidden)]
pub use db::TxnSeams;
pub use db::{Db, IntoBytes, IntoKeyRange, LockWait, Transaction, TxnOutcome, WriteBatch};
pub use dup::{
    BrokenReason, CutoverReport, DupReport, DupSpec, DupTarget, DuplicationStatus, FollowerLink,
    RegionCutover, RegionDupReport, RegionVerify, VerifyOutcome, VerifyReport,
};
pub use error::{Error, Result};
pub use node::{InitialClusterState, Node, NodeConfig};
pub use proto::{Capacity, STATUS_SCHEMA, StoreState, StoreStatus};
pub use region_info::RegionInfo;
pub use regionkv_raft::txn::recovery::Gate as TxnGate;
pub use remote::{Client, ClientOptions};
pub use server::ClientStats;
pub use txn_recovery::{TXN_RECOVER_INTERVAL, TxnEntry, TxnRecoveryStats, TxnRecoveryTurn};
pub use version_gc::{GC_INTERVAL, GC_LIFE_TIME, VersionGcStats};

// Ids, records and settings that the facade's signatures name, from the layers.
pub use bytes::Bytes;
pub use regionkv_engine::{Epoch, Peer, PeerId, Region, RegionId, StoreId};
pub use regionkv_raft::directory::RegionRecord;
pub use regionkv_raft::transport::tcp::{TcpError, TcpStats};
pub use regionkv_raft::transport::wire::{ClusterId, RejectReason};
pub use regionkv_raft::{
    ApplyStats, Error as StoreError, FollowerProgress, Op, PeerStatus, ProgressState, ReadMode,
    RecordInit, ReportedRole, StateRole, StoreMetrics, TimelineState, TxnCmd, TxnReply, TxnState,
};
pub use regionkv_wal::{HistogramSnapshot, WalStats};

/// Network faults for testing an application on an in-process [`Cluster`]
/// ([`Cluster::faults`]): rules that drop, delay or duplicate messages, scoped by
/// sending and receiving store, region and Raft message type.
pub mod faults {
    pub use regionkv_raft::transport::local::{Action, Faults, Rule, Scope};
}

/// The crates underneath the facade, for embedding one layer alone: the durable log,
/// the MVCC engine, the multi-Raft store. Lower level than the facade, and less stable.
pub mod layers {
    pub use regionkv_engine as engine;
    pub use regionkv_raft as raft;
    pub use regionkv_wal as wal;
}

/// The README's examples, compiled and run as doctests so that they stay true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
