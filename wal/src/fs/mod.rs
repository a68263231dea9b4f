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
pub(crate) use real::check_direct_alignment;
pub use sim::{CrashMode, FaultHook, SimFs, SimOp, SimOpKind};

/// Alignment, in bytes, of the offset, length and memory address of every
/// [`File::write_direct_at`]: the largest logical block size in use (4 KiB covers
/// 512-byte and 4 KiB devices alike).
pub const DIRECT_IO_ALIGN: usize = 4096;

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

    /// Creates `path` and its missing parents, as [`FileSystem::create_dir_all`] does,
    /// and makes each new directory's entry durable in its parent: a directory that is
    /// not synced into its parent may vanish in a power cut, with every file in it,
    /// however well those files were synced.
    fn create_dir_all_durable(&self, path: &Path) -> io::Result<()> {
        let missing: Vec<&Path> = path
            .ancestors()
            .filter(|p| !p.as_os_str().is_empty())
            .take_while(|p| matches!(self.list(p), Err(e) if e.kind() == io::ErrorKind::NotFound))
            .collect();
        self.create_dir_all(path)?;
        // Top down: a parent's entry is durable before its child's.
        for dir in missing.iter().rev() {
            let parent = dir.parent().filter(|p| !p.as_os_str().is_empty());
            self.sync_dir(parent.unwrap_or(Path::new(".")))?;
        }
        Ok(())
    }
}

/// An open file. Shared between threads; all methods take `&self`.
pub trait File: Send + Sync + fmt::Debug {
    /// Writes all of `buf` at `offset`, extending the file if needed.
    fn write_at(&self, offset: u64, buf: &[u8]) -> io::Result<()>;

    /// Writes all of `buf` at `offset` as [`File::write_at`] does, but from `buf`
    /// straight to the disk where the platform allows (`O_DIRECT`), bypassing the page
    /// cache: for large writes that will not be read back soon, which then cost neither
    /// a copy into the cache nor the cache's memory. `offset`, `buf.len()` and the
    /// address of `buf` must be multiples of [`DIRECT_IO_ALIGN`]: `InvalidInput`
    /// otherwise, on every implementation (the simulator catches a misuse too). Where
    /// direct I/O is unavailable the data goes through the page cache. Durable, like
    /// any write, only after [`File::sync_data`].
    fn write_direct_at(&self, offset: u64, buf: &[u8]) -> io::Result<()>;

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

    /// Allocates disk space for the first `len` bytes (`fallocate`), so that writes
    /// below `len` into a new file allocate no blocks as they go. A file shorter than
    /// `len` grows to `len`, the new bytes reading as zeros, exactly as with
    /// [`File::set_len`] (and, like it, the new length is durable only after
    /// [`File::sync_data`]); a longer file keeps its length and contents. Where the
    /// file system cannot allocate ahead, the file is only extended.
    fn allocate(&self, len: u64) -> io::Result<()>;

    /// Starts writing the data written in `[offset, offset + len)` to the disk, without
    /// waiting for it (`sync_file_range(SYNC_FILE_RANGE_WRITE)` on Linux; nothing
    /// elsewhere), so that a later [`File::sync_data`] has less left to do.
    ///
    /// A hint: it makes nothing durable, and a write error it provokes is reported by
    /// the next `sync_data`, which is still required.
    fn start_writeback(&self, offset: u64, len: u64) -> io::Result<()>;

    /// Waits until the data written in `[offset, offset + len)` is on the disk, then
    /// drops it from the page cache (`sync_file_range` with waits, then
    /// `posix_fadvise(POSIX_FADV_DONTNEED)` on Linux; nothing elsewhere). For large
    /// writes that will not be read back soon: the cache pages are reused by the next
    /// writes instead of taking fresh memory.
    ///
    /// Makes nothing durable: metadata (the file's length) still needs
    /// [`File::sync_data`], which remains required. An error means the data may not
    /// have reached the disk; treat it like a failed `sync_data`.
    fn evict_written(&self, offset: u64, len: u64) -> io::Result<()>;

    /// A read-only image of the whole file, memory-mapped where the platform allows.
    ///
    /// The caller must not write the file while the image is alive; regionkv maps only
    /// files that are immutable (sealed segments, checkpoints).
    fn map(&self) -> io::Result<Bytes>;
}
