//! regionkv: an embeddable, Raft-replicated, region-sharded key-value engine.
//!
//! The facade re-exports the layers underneath. Today that is the durable log
//! ([`wal`]); the engine, Raft store and client API land on top of it.

pub use regionkv_wal as wal;

pub mod bench;
pub mod demo;
