//! The real file system: `std::fs`, `pwrite`/`pread`, `fdatasync`, `mmap`.

use std::fs;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use bytes::Bytes;

use super::{DIRECT_IO_ALIGN, File, FileSystem, OpenMode};

/// The operating system's file system.
#[derive(Clone, Copy, Debug, Default)]
pub struct RealFs;

impl FileSystem for RealFs {
    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Arc<dyn File>> {
        let mut options = fs::OpenOptions::new();
        options.read(true).write(true);
        if mode == OpenMode::CreateNew {
            options.create_new(true);
        }
        let file = options.open(path)?;
        Ok(Arc::new(RealFile {
            file,
            path: path.to_owned(),
            direct: OnceLock::new(),
            direct_refused: AtomicBool::new(false),
        }))
    }

    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        fs::create_dir_all(path)
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in fs::read_dir(dir)? {
            names.push(entry?.file_name().to_string_lossy().into_owned());
        }
        Ok(names)
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        fs::rename(from, to)
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        fs::remove_file(path)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        fs::File::open(dir)?.sync_all()
    }
}

#[derive(Debug)]
struct RealFile {
    file: fs::File,
    path: PathBuf,
    /// The same file opened again with `O_DIRECT` for [`File::write_direct_at`], on
    /// first use; `None` where that is not possible.
    direct: OnceLock<Option<fs::File>>,
    /// Set once the file system refused a direct write: later ones are buffered.
    direct_refused: AtomicBool,
}

/// `InvalidInput` unless `offset`, `buf.len()` and `buf`'s address are multiples of
/// [`DIRECT_IO_ALIGN`].
pub(crate) fn check_direct_alignment(offset: u64, buf: &[u8]) -> io::Result<()> {
    let align = DIRECT_IO_ALIGN as u64;
    if offset.is_multiple_of(align)
        && buf.len().is_multiple_of(DIRECT_IO_ALIGN)
        && buf.as_ptr().align_offset(DIRECT_IO_ALIGN) == 0
    {
        Ok(())
    } else {
        Err(io::Error::new(io::ErrorKind::InvalidInput, "direct write not aligned"))
    }
}

impl RealFile {
    /// Opens the file again, with `O_DIRECT`: through `/proc/self/fd`, which names this
    /// very file even if it was renamed since.
    #[cfg(target_os = "linux")]
    fn open_direct(&self) -> Option<fs::File> {
        use std::os::unix::fs::OpenOptionsExt;
        let proc_path = format!("/proc/self/fd/{}", self.file.as_raw_fd());
        let opened =
            fs::OpenOptions::new().write(true).custom_flags(libc::O_DIRECT).open(proc_path);
        match opened {
            Ok(file) => Some(file),
            Err(e) => {
                tracing::debug!(path = %self.path.display(), error = %e, "no direct I/O");
                None
            }
        }
    }

    #[cfg(not(target_os = "linux"))]
    fn open_direct(&self) -> Option<fs::File> {
        None
    }

    /// Extends the file with zeros to `len` bytes if it is shorter.
    fn extend_to(&self, len: u64) -> io::Result<()> {
        if self.file.metadata()?.len() < len {
            self.file.set_len(len)?;
        }
        Ok(())
    }
}

impl File for RealFile {
    fn write_at(&self, offset: u64, buf: &[u8]) -> io::Result<()> {
        self.file.write_all_at(buf, offset)
    }

    fn write_direct_at(&self, offset: u64, buf: &[u8]) -> io::Result<()> {
        check_direct_alignment(offset, buf)?;
        if !self.direct_refused.load(Ordering::Relaxed)
            && let Some(direct) = self.direct.get_or_init(|| self.open_direct())
        {
            match direct.write_all_at(buf, offset) {
                Ok(()) => return Ok(()),
                // The file system does not do direct I/O after all (EINVAL): nothing
                // was written; go through the cache from now on.
                Err(e) if e.kind() == io::ErrorKind::InvalidInput => {
                    tracing::debug!(path = %self.path.display(), "direct writes refused");
                    self.direct_refused.store(true, Ordering::Relaxed);
                }
                Err(e) => return Err(e),
            }
        }
        self.file.write_all_at(buf, offset)
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }

    fn sync_data(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    fn len(&self) -> io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.file.set_len(len)
    }

    #[cfg(target_os = "linux")]
    #[allow(unsafe_code, reason = "fallocate(2) has no std wrapper; see SAFETY")]
    fn allocate(&self, len: u64) -> io::Result<()> {
        /// Attempts interrupted by a signal before giving up.
        const MAX_INTERRUPTED: usize = 16;
        let end = i64::try_from(len).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        if end == 0 {
            return Ok(());
        }
        let mut interrupted = 0;
        loop {
            // SAFETY: fallocate takes a file descriptor and integers, no pointers; the
            // descriptor is owned by `self.file` and open for writing for its lifetime.
            let rc = unsafe { libc::fallocate(self.file.as_raw_fd(), 0, 0, end) };
            if rc == 0 {
                return Ok(());
            }
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EINTR) if interrupted < MAX_INTERRUPTED => interrupted += 1,
                // The file system cannot allocate ahead: extend the file instead.
                Some(libc::EOPNOTSUPP) => return self.extend_to(len),
                _ => return Err(e),
            }
        }
    }

    #[cfg(not(target_os = "linux"))]
    fn allocate(&self, len: u64) -> io::Result<()> {
        self.extend_to(len)
    }

    #[cfg(target_os = "linux")]
    #[allow(unsafe_code, reason = "sync_file_range(2) has no std wrapper; see SAFETY")]
    fn start_writeback(&self, offset: u64, len: u64) -> io::Result<()> {
        let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
            return Err(io::Error::from(io::ErrorKind::InvalidInput));
        };
        // SAFETY: sync_file_range takes a file descriptor, integers and flags, no
        // pointers; the descriptor is owned by `self.file` and open for its lifetime.
        let rc = unsafe {
            libc::sync_file_range(self.file.as_raw_fd(), offset, len, libc::SYNC_FILE_RANGE_WRITE)
        };
        if rc == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
    }

    #[cfg(not(target_os = "linux"))]
    fn start_writeback(&self, _offset: u64, _len: u64) -> io::Result<()> {
        Ok(())
    }

    #[cfg(target_os = "linux")]
    #[allow(unsafe_code, reason = "sync_file_range(2), posix_fadvise(2): no std wrappers")]
    fn evict_written(&self, offset: u64, len: u64) -> io::Result<()> {
        let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
            return Err(io::Error::from(io::ErrorKind::InvalidInput));
        };
        let fd = self.file.as_raw_fd();
        let wait = libc::SYNC_FILE_RANGE_WAIT_BEFORE
            | libc::SYNC_FILE_RANGE_WRITE
            | libc::SYNC_FILE_RANGE_WAIT_AFTER;
        // SAFETY: both calls take a file descriptor, integers and flags, no pointers;
        // the descriptor is owned by `self.file` and open for its lifetime.
        let rc = unsafe { libc::sync_file_range(fd, offset, len, wait) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: as above. Dropping clean pages changes no data; only dirty pages
        // could hold unwritten data, and the wait above wrote them.
        let rc = unsafe { libc::posix_fadvise(fd, offset, len, libc::POSIX_FADV_DONTNEED) };
        // posix_fadvise returns the error number instead of setting errno.
        if rc == 0 { Ok(()) } else { Err(io::Error::from_raw_os_error(rc)) }
    }

    #[cfg(not(target_os = "linux"))]
    fn evict_written(&self, _offset: u64, _len: u64) -> io::Result<()> {
        Ok(())
    }

    #[allow(unsafe_code, reason = "memory-mapping a file is unsafe by nature; see SAFETY")]
    fn map(&self) -> io::Result<Bytes> {
        if self.len()? == 0 {
            return Ok(Bytes::new());
        }
        // SAFETY: the mapping is read-only, and regionkv maps only files it no longer
        // writes (sealed segments, finished checkpoints). Such files are removed or
        // renamed, never truncated or rewritten, while a mapping may be alive: purge
        // recycles a segment only when no image of it is referenced (Bytes::is_unique).
        let map = unsafe { memmap2::Mmap::map(&self.file)? };
        tracing::trace!(path = %self.path.display(), len = map.len(), "mapped file");
        Ok(Bytes::from_owner(map))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocate_extends_with_zeros_and_writeback_and_eviction_keep_the_data() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("a");
        let f = RealFs.open(&path, OpenMode::CreateNew)?;
        f.allocate(1 << 20)?;
        assert_eq!(f.len()?, 1 << 20);
        let mut head = [1u8; 16];
        f.read_at(0, &mut head)?;
        assert_eq!(head, [0; 16], "allocated bytes read as zeros");
        f.write_at(0, b"written")?;
        f.start_writeback(0, 7)?;
        f.evict_written(0, 4096)?;
        // A shorter allocation keeps the length and the data.
        f.allocate(4)?;
        assert_eq!(f.len()?, 1 << 20);
        f.sync_data()?;
        let mut back = [0u8; 7];
        f.read_at(0, &mut back)?;
        assert_eq!(&back, b"written");
        f.set_len(7)?;
        assert_eq!(std::fs::read(&path)?, b"written");
        f.allocate(0)?;
        assert_eq!(f.len()?, 7, "allocating nothing changes nothing");
        Ok(())
    }

    #[test]
    fn direct_writes_need_alignment_and_read_back() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("d");
        let f = RealFs.open(&path, OpenMode::CreateNew)?;
        let mut raw = vec![0u8; 3 * DIRECT_IO_ALIGN];
        let at = raw.as_ptr().align_offset(DIRECT_IO_ALIGN);
        raw.iter_mut().enumerate().for_each(|(i, b)| *b = (i % 251) as u8);
        let buf = &raw[at..at + 2 * DIRECT_IO_ALIGN];
        for misaligned in [
            f.write_direct_at(1, buf),
            f.write_direct_at(0, &buf[..100]),
            f.write_direct_at(0, &raw[at + 1..at + 1 + DIRECT_IO_ALIGN]),
        ] {
            assert_eq!(misaligned.map_err(|e| e.kind()), Err(io::ErrorKind::InvalidInput));
        }
        f.write_at(0, b"cached first")?;
        f.write_direct_at(DIRECT_IO_ALIGN as u64, buf)?;
        f.write_direct_at(0, &buf[..DIRECT_IO_ALIGN])?;
        f.sync_data()?;
        let back = std::fs::read(&path)?;
        assert_eq!(back.len(), 3 * DIRECT_IO_ALIGN);
        assert_eq!(&back[..DIRECT_IO_ALIGN], &buf[..DIRECT_IO_ALIGN], "the cache is not stale");
        assert_eq!(&back[DIRECT_IO_ALIGN..], buf);
        Ok(())
    }
}
