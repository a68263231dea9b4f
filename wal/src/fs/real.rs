//! The real file system: `std::fs`, `pwrite`/`pread`, `fdatasync`, `mmap`.

use std::fs;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;

use super::{File, FileSystem, OpenMode};

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
        Ok(Arc::new(RealFile { file, path: path.to_owned() }))
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
}

impl File for RealFile {
    fn write_at(&self, offset: u64, buf: &[u8]) -> io::Result<()> {
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
