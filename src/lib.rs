//! regionkv: an embeddable, Raft-replicated, region-sharded key-value engine.
//!
//! The facade: an in-process [`Cluster`] (stores on real files in this process), a
//! [`Node`] (one store in this process, replicating over TCP with the stores of other
//! nodes and serving other processes over the client protocol), a [`Client`] of such
//! nodes, a [`Db`] handle (routing and retries hidden) from any of them, and the layers
//! underneath re-exported:
//! [`wal`] (the durable log), [`engine`] (the MVCC state machine) and [`raft`] (the
//! multi-Raft store).
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
mod error;
mod node;
pub mod proto;
mod remote;
mod router;
mod server;

pub use autosplit::SplitPolicy;
pub use cluster::{Cluster, ClusterBuilder, RegionInfo};
pub use db::{Db, KeyRange, WriteBatch};
pub use error::{Error, Result};
pub use node::{Node, NodeConfig};
pub use proto::StoreStatus;
pub use regionkv_engine as engine;
pub use regionkv_raft as raft;
pub use regionkv_raft::StoreMetrics;
pub use regionkv_raft::transport::wire::ClusterId;
pub use regionkv_wal as wal;
pub use remote::Client;
pub use server::ClientStats;

/// The README's examples, compiled and run as doctests so that they stay true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
