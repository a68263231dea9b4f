//! regionkv-engine: the state machine every region replica of a store applies its
//! committed Raft log into.
//!
//! One [`Engine`] per store holds the data of all regions the store hosts in one
//! in-memory MVCC map, and makes it durable (together with the Raft log, which is
//! `regionkv-wal`'s job) through per-region checkpoints and a per-store manifest.
//! The modules follow a write:
//!
//! - [`region`], [`RegionMap`]: region metadata and the map of hosted regions, a
//!   partition of the key space that every change keeps (typed errors otherwise).
//! - [`ApplyRound`]: the write batch of one apply round, a guard whose end always
//!   resets it (`TiKV`'s invariant): prepare a region at its epoch, put/delete, commit.
//! - [`sessions`]: each region's table of client sessions (the last applied sequence
//!   number of each), changed in the same round as the data, so that a retried write
//!   applies at most once.
//! - [`txn`]: each region's transaction locks, records and floor (entries kept
//!   encoded behind their own format byte), changed through the round and published
//!   after its data when it commits; split, merged and checkpointed with the region.
//! - [`dup`]: each region's duplication state (one entry per duplication, behind its
//!   own format byte), set by the Raft layer's `DUP` commands, carried in every image
//!   of the region, and moved by split and merge; its floor bounds log compaction.
//! - [`sink`]: each follower region's sink state (per duplication and source region,
//!   the source index applied up to, by key range), set by the Raft layer's `SINK`
//!   commands with the data they write, carried in every image, clipped by splits and
//!   concatenated by merges.
//! - the memtable: one ordered map of `(key, sequence number)` versions for every
//!   region, kept in immutable copy-on-write leaves of sorted entries (measured against
//!   a crossbeam skip list: less than half the memory per key, scans and checkpoints
//!   at memory speed); [`ReadView`]s read at a sequence number and pin what they see;
//!   commits and [`Engine::gc`] drop what nobody can see.
//! - [`checkpoint`]: a region's image at an applied index: written through the
//!   file-system seam (temp file, fsync, rename, directory fsync), read back through
//!   `mmap` with every block checked, and streamed in bounded chunks.
//! - [`manifest`]: format versions, clean-shutdown flag, regions, their checkpoints,
//!   background-task state; replaced atomically; read only through the compatibility
//!   gate, with explicit migrations.
//!
//! What this crate is not: it knows no Raft, no network and no clients. Which writes
//! are committed, which applied index a checkpoint stands for, and log replay after a
//! restart are the Raft layer's (`regionkv-raft`).
//!
//! ```
//! use std::sync::Arc;
//! use regionkv_engine::{Engine, EngineOptions, Region, RegionId, StoreId};
//! use regionkv_wal::SimFs;
//!
//! let fs = Arc::new(SimFs::new()); // or regionkv_wal::RealFs
//! let engine = Engine::open(fs.clone(), "/store", EngineOptions::new(StoreId(1)))?;
//! engine.insert_region(Region::whole(RegionId(1)))?;
//!
//! // Apply a round of writes, then split the region without moving data.
//! let epoch = engine.region(RegionId(1)).unwrap().epoch;
//! let mut round = engine.begin_round();
//! round.prepare_for_region(RegionId(1), epoch)?;
//! round.put(b"apple", b"red")?;
//! round.put(b"kiwi", b"green")?;
//! round.commit()?;
//! let parts = engine.split(RegionId(1), &[b"b".to_vec()], &[RegionId(2)])?;
//! assert_eq!(parts[1].start, b"b");
//!
//! // A checkpoint of region 2 survives a restart.
//! engine.checkpoint(RegionId(2), 7)?;
//! engine.close()?;
//! drop(engine);
//! let engine = Engine::open(fs, "/store", EngineOptions::new(StoreId(1)))?;
//! let snap = engine.read_view();
//! assert_eq!(snap.get(b"kiwi").as_deref(), Some(&b"green"[..]));
//! assert_eq!(snap.get(b"apple"), None); // region 1 was never checkpointed
//! # Ok::<(), regionkv_engine::Error>(())
//! ```

// File offsets and lengths are u64 on disk and usize in memory; see the workspace lints.
const _: () = assert!(usize::BITS == 64, "regionkv supports 64-bit targets only");

pub mod checkpoint;
pub mod codec;
pub mod dup;
mod engine;
mod error;
#[doc(hidden)]
pub mod fuzzing;
pub mod id_hash;
pub mod manifest;
mod memtable;
mod pins;
mod read_view;
pub mod region;
mod region_map;
mod round;
pub mod sessions;
pub mod sink;
pub mod txn;

pub use checkpoint::{
    CheckpointChunk, CheckpointChunks, CheckpointFile, CheckpointHeader, CheckpointReceiver,
    CheckpointStats, MAX_CHECKPOINT_BYTES, ReceivedCheckpoint, SnapshotMeta,
};
pub use engine::{CheckpointMeta, Engine, EngineOptions, GcStats, MemoryStats, RecoveryInfo};
pub use error::{Error, ErrorClass, RegionChangeError, Result};
pub use id_hash::{IdBuildHasher, IdHashMap, IdHashSet, IdHasher};
pub use manifest::{Compatibility, Manifest, MergeState};
pub use memtable::{ENTRY_OVERHEAD_BYTES, MAX_SEQ, Seq};
pub use read_view::ReadView;
pub use region::{Epoch, Incarnation, Peer, PeerId, Region, RegionId, StoreId};
pub use region_map::{RegionMap, SlotView};
pub use round::ApplyRound;
pub use sessions::{SessionId, SessionLimits, SessionTable, SessionUse, SessionWrite};
