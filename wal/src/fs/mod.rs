//! The file-system seam.
//!
//! Everything durable in regionkv goes through [`FileSystem`] and [`File`], so the same
//! store code runs on the real disk ([`RealFs`]) and on a simulated one ([`SimFs`]) that
//! keeps written and durable bytes apart, crashes, tears writes and injects errors.
//!
//! # Contract
//!
//! - Writes are positional (`pwrite`); there is no file cursor.
//! - Written data is visible to reads at once, but survives a crash only after
//!   [`File::sync_data`] returned `Ok`.
//! - Creating, renaming or removing a file survives a crash only after
//!   [`FileSystem::sync_dir`] on its parent directory returned `Ok`.
//! - After `sync_data` failed, the data written since the last successful sync may be
//!   lost even if a later `sync_data` succeeds (Linux drops the dirty pages). Callers
//!   must treat a failed sync as fatal and never retry it.

mod real;
mod sim;

use std::fmt;
use std::io;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;

pub use real::RealFs;
pub use sim::{CrashMode, FaultHook, SimFs, SimOp, SimOpKind};

/// How [`FileSystem::open`] treats a missing or existing file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpenMode {
    /// Open an existing file; fail with `NotFound` if it is missing.
    Existing,
    /// Create a new, empty file; fail with `AlreadyExists` if it is there.
    CreateNew,
}

/// A directory tree of files: the real one or a simulated one.
pub trait FileSystem: Send + Sync + fmt::Debug {
    /// Opens `path` for reading and writing.
    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Arc<dyn File>>;

    /// Creates `path` and its missing parents.
    fn create_dir_all(&self, path: &Path) -> io::Result<()>;

    /// Names of the entries directly inside `dir`, in no particular order.
    fn list(&self, dir: &Path) -> io::Result<Vec<String>>;

    /// Renames `from` to `to`, replacing `to` if it exists. Atomic.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;

    /// Removes the file at `path`. Open handles keep reading its old contents.
    fn remove_file(&self, path: &Path) -> io::Result<()>;

    /// Makes creations, renames and removals inside `dir` durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
}

/// An open file. Shared between threads; all methods take `&self`.
pub trait File: Send + Sync + fmt::Debug {
    /// Writes all of `buf` at `offset`, extending the file if needed.
    fn write_at(&self, offset: u64, buf: &[u8]) -> io::Result<()>;

    /// Fills `buf` from `offset`; `UnexpectedEof` if the file ends first.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()>;

    /// Makes the data written so far durable (`fdatasync`).
    fn sync_data(&self) -> io::Result<()>;

    /// The file's length in bytes.
    fn len(&self) -> io::Result<u64>;

    /// True if the file is empty.
    fn is_empty(&self) -> io::Result<bool> {
        Ok(self.len()? == 0)
    }

    /// Truncates or extends (with zeros) the file to `len` bytes.
    fn set_len(&self, len: u64) -> io::Result<()>;

    /// A read-only image of the whole file, memory-mapped where the platform allows.
    ///
    /// The caller must not write the file while the image is alive; regionkv maps only
    /// files that are immutable (sealed segments, checkpoints).
    fn map(&self) -> io::Result<Bytes>;
}
