//! regionkv-raft: the multi-Raft store, built on raft-rs.

// File offsets and lengths are u64 on disk and usize in memory; see the workspace lints.
const _: () = assert!(usize::BITS == 64, "regionkv supports 64-bit targets only");

mod error;
pub mod log;
mod storage;
pub mod transport;

pub use error::{Error, Result};
pub use storage::PeerStorage;
