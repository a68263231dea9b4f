//! regionkv-raft: the multi-Raft store, built on raft-rs.
//!
//! A store hosts one replica of each of its regions' Raft groups, on one WAL (the Raft
//! log of every region) and one engine (their data). The crate is the consensus and
//! replication layer; it is not the client API (the `regionkv` facade routes requests
//! to region leaders) and stores no data itself (`regionkv-engine` does).
//!
//! A write's path through the modules: `request` (what a store takes) -> `store` (the
//! threaded driver: pollers and writers) -> `core` (the step functions: propose,
//! the Ready loop, apply; see its docs for the life of a put) with `replica` (one
//! region's raft-rs node) -> `log` (the Raft log on the WAL) and `transport` (to the
//! other stores) -> back in `core`, applied into the engine. `sim` drives the same core
//! deterministically; `merge_driver` runs a merge across two regions; `directory` is
//! the cluster's region directory, itself a Raft group.

// File offsets and lengths are u64 on disk and usize in memory; see the workspace lints.
const _: () = assert!(usize::BITS == 64, "regionkv supports 64-bit targets only");

mod command;
mod config;
mod core;
pub mod directory;
pub mod dup;
pub mod dup_fingerprint;
mod dup_source;
mod error;
#[doc(hidden)]
pub mod fuzzing;
pub mod identity;
pub mod image_hash;
mod index;
pub mod log;
mod logger;
mod mailbox;
pub mod merge_driver;
mod metrics;
mod reader;
mod replica;
mod request;
pub mod sim;
pub mod sink;
mod status;
mod storage;
mod store;
pub mod transport;
pub mod tso;
pub mod txn;
pub mod version;

pub use command::{AdminCmd, Op, Write, WriteSession};
pub use config::{ReadMode, StoreConfig};
pub use core::{
    ApplyObserver, Clock, CoreTask, DupRetention, ElectionTicks, Output, RAFT_INIT_INDEX,
    RAFT_INIT_TERM, ScanHook, StoreContext, StoreCore, WriteTask, system_clock_ms,
};
pub use dup_source::{DupLogBatch, DupOp, DupSeedImage, SeedChunks};
pub use error::{DropReason, Error, MergeAbortReason, Result};
pub use index::RaftIndex;
pub use metrics::{ApplyStats, StoreMetrics, WriteMetrics};
pub use raft::StateRole;
pub use replica::PeerStatus;
pub use request::{
    AdminRequest, AdminResult, ChangePeersRequest, MergeStatus, Page, PeerChange, Query,
    QueryResult, ReadRequest, Reply, ScanCaps, WriteRequest, scan_page,
};
pub use status::{FollowerProgress, ProgressState, ReportedRole, TimelineState};
pub use storage::PeerStorage;
pub use store::{Store, StoreOptions};
pub use txn::{MinCommit, RecordInit, SyncedTs, TxnCmd, TxnReply, TxnRequest, TxnState};
