//! regionkv-raft: the multi-Raft store, built on raft-rs.

// File offsets and lengths are u64 on disk and usize in memory; see the workspace lints.
const _: () = assert!(usize::BITS == 64, "regionkv supports 64-bit targets only");

mod command;
mod config;
mod core;
pub mod directory;
mod error;
pub mod log;
mod logger;
mod mailbox;
pub mod merge_driver;
mod metrics;
mod replica;
mod request;
pub mod sim;
mod storage;
mod store;
pub mod transport;

pub use command::{AdminCmd, Op, Write};
pub use config::{ReadMode, StoreConfig};
pub use core::{
    ApplyObserver, CoreTask, ElectionTicks, Output, RAFT_INIT_INDEX, RAFT_INIT_TERM, StoreContext,
    StoreCore, WriteTask,
};
pub use error::{Error, Result};
pub use metrics::{ApplyStats, StoreMetrics, WriteMetrics};
pub use raft::StateRole;
pub use replica::PeerStatus;
pub use request::{
    AdminRequest, AdminResult, ChangePeersRequest, MergeStatus, PeerChange, Query, QueryResult,
    ReadRequest, Reply, WriteRequest,
};
pub use storage::PeerStorage;
pub use store::{Store, StoreOptions};
