//! regionkv-raft: the multi-Raft store, built on raft-rs.

// File offsets and lengths are u64 on disk and usize in memory; see the workspace lints.
const _: () = assert!(usize::BITS == 64, "regionkv supports 64-bit targets only");

pub mod admin;
mod command;
mod config;
mod core;
pub mod directory;
mod error;
pub mod log;
mod logger;
mod mailbox;
mod metrics;
mod peer;
pub mod sim;
mod storage;
mod store;
pub mod transport;

pub use command::{AdminCmd, Op, Write};
pub use config::{ReadMode, StoreConfig};
pub use core::{
    ApplyObserver, ApplyStats, Control, ElectionTicks, Output, PeerStatus, RAFT_INIT_INDEX,
    RAFT_INIT_TERM, StoreContext, StoreCore, WriteTask,
};
pub use error::{DropReason, Error, MergeAbortReason, Result};
pub use metrics::{StoreMetrics, WriteMetrics};
pub use peer::{
    AdminRequest, AdminResult, ChangePeersRequest, MergeStatus, PeerChange, Query, QueryResult,
    ReadRequest, Reply, WriteRequest,
};
pub use raft::StateRole;
pub use storage::PeerStorage;
pub use store::{Store, StoreOptions};
