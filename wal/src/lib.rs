//! regionkv-wal: the durable log that every region of a store shares.
//!
//! One [`Wal`] per store holds the Raft entries of all its regions, interleaved. It is
//! the only thing that makes an acknowledged write survive a crash, so it is built to
//! be *obviously* durable and fast next to the disk's own fdatasync rate:
//!
//! - **Group commit** ([`Wal::append`]): any number of threads append at once; one
//!   leader writes the whole queued group and issues one fdatasync (the next group may
//!   be written and synced meanwhile; outcomes are published in group order), and every
//!   appender learns its [`Lsn`] only after the fsync that covers its record returned
//!   `Ok`, and every earlier group's too. The
//!   queue is bounded, so a flood of appenders meets backpressure, not unbounded memory.
//! - **Fail-stop on I/O errors**: an fsync error is never retried. The log latches;
//!   in-flight appenders get [`Error::Indeterminate`], later ones [`Error::Poisoned`];
//!   reopening recovers from what is on disk.
//! - **Segments** are preallocated (zero-filled) files that are recycled after purge:
//!   overwriting allocated blocks makes fdatasync cheaper. Every segment header carries
//!   a magic and a format version; every record a length, kind and two CRC32s, one of
//!   them salted with the record's Lsn so stale bytes in recycled files never pass.
//! - **Recovery** ([`RecoveryMode`]) cuts a torn tail but reports damage to anything
//!   that was acknowledged, proven by the durable position every record carries.
//! - **Reads** ([`Wal::read`], [`Wal::iter_from`]) verify checksums every time and read
//!   sealed segments through mmap.
//! - **Metrics** ([`Wal::stats`]): counters, and [`Histogram`]s of fsync latency and
//!   group size; the same lock-free histogram serves the layers above.
//! - **Lifecycle** ([`lifecycle`]): cancellation tokens, gates and [`Timeline`]s give
//!   the rest of the store an ordered, bounded, quiet shutdown.
//! - **The file-system seam** ([`fs`]): the log, and everything else in regionkv that
//!   touches disk, works through [`FileSystem`], so a simulator ([`SimFs`]) can crash it
//!   after any I/O and check what survives.
//!
//! What this crate is not: it knows nothing of regions, Raft or keys. Its records are
//! opaque bytes, and a [`Timeline`]'s positions are whatever its caller orders by.
//!
//! ```
//! use std::sync::Arc;
//! use regionkv_wal::{RealFs, Wal, WalOptions};
//!
//! let dir = tempfile::tempdir()?;
//! let wal = Wal::open(Arc::new(RealFs), dir.path(), WalOptions::default().segment_bytes(1 << 20))?;
//! let threads: Vec<_> = (0..4u8)
//!     .map(|t| {
//!         let wal = wal.clone();
//!         std::thread::spawn(move || wal.append(&[t; 100]))
//!     })
//!     .collect();
//! for t in threads {
//!     t.join().unwrap()?; // durable once this returns Ok
//! }
//! let records: Vec<_> = wal.iter_from(wal.first_lsn())?.collect::<Result<_, _>>()?;
//! assert_eq!(records.len(), 4);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

// File offsets and lengths are u64 on disk and usize in memory; see the workspace lints.
const _: () = assert!(usize::BITS == 64, "regionkv supports 64-bit targets only");

mod error;
pub mod fs;
#[doc(hidden)]
pub mod fuzzing;
mod group_commit;
mod histogram;
pub mod lifecycle;
mod log;
mod lsn;
mod pool;
mod reader;
mod record;
mod recovery;
mod segment;
mod sync;
mod writer;

pub use error::{Error, ErrorClass, Result};
pub use fs::{CrashMode, FileSystem, RealFs, SimFs};
pub use histogram::{Histogram, HistogramSnapshot};
pub use lifecycle::{CancellationToken, Gate, IngestError, Timeline, TimelineState};
pub use log::{SparePreparation, SyncPolicy, Wal, WalOptions, WalStats};
pub use lsn::{Lsn, SegmentId};
pub use reader::{Record, WalIter};
pub use recovery::{RecoveryMode, RecoveryReport, Truncation};
