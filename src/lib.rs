//! regionkv: an embeddable, Raft-replicated, region-sharded key-value engine.
//!
//! The facade: an in-process [`Cluster`] (stores on real files in this process), a
//! [`Db`] client (routing and retries hidden), and the layers underneath re-exported:
//! [`wal`] (the durable log), [`engine`] (the MVCC state machine) and [`raft`] (the
//! multi-Raft store).

mod autosplit;
mod backend;
mod cluster;
mod db;
mod error;
mod router;

pub mod bench;
pub mod demo;

pub use autosplit::SplitPolicy;
pub use cluster::{Cluster, ClusterBuilder, RegionInfo};
pub use db::{Db, WriteBatch};
pub use error::{Error, Result};
pub use regionkv_engine as engine;
pub use regionkv_raft as raft;
pub use regionkv_wal as wal;

/// The README's examples, compiled and run as doctests so that they stay true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
