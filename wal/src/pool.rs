//! Spare segment files: zero-filled ahead of need, and recycled after purge.
//!
//! An fdatasync after overwriting blocks that already exist is cheaper than one that
//! also has to allocate blocks or grow the file (measured here: ~1.6x, and `fallocate`
//! does not help because its extents are "unwritten" until first written). So a new
//! segment file is written with zeros in full before it is used, and a purged segment
//! is renamed back into the pool rather than deleted.
//!
//! A spare is made as `spare-N.tmp`, zero-filled, synced, renamed to `spare-N.wal`, and
//! the directory synced; a crash leaves either a complete spare or a `.tmp` that the
//! next open deletes. A recycled spare still holds its old records; they cannot be
//! mistaken for new ones because every record header is checksummed with its Lsn.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use parking_lot::{Condvar, Mutex};

use crate::error::{Error, Result};
use crate::fs::{FileSystem, OpenMode};
use crate::lsn::{Lsn, SegmentId};
use crate::record::HEADER_LEN;
use crate::segment::{
    SEGMENT_HEADER_LEN, Segment, SegmentHeader, segment_file_name, spare_file_name,
};

/// Zeros are written in chunks of this size.
const FILL_CHUNK: usize = 1 << 20;

#[derive(Debug)]
pub(crate) struct Pool {
    fs: Arc<dyn FileSystem>,
    dir: PathBuf,
    segment_bytes: u64,
    /// Spares to keep ready ahead of need.
    target: usize,
    state: Mutex<PoolState>,
    wake: Condvar,
}

#[derive(Debug)]
struct PoolState {
    spares: Vec<PathBuf>,
    next_no: u64,
    stop: bool,
}

impl Pool {
    pub fn new(
        fs: Arc<dyn FileSystem>,
        dir: &Path,
        segment_bytes: u64,
        target: usize,
        spares: Vec<(u64, PathBuf)>,
    ) -> Pool {
        let next_no = spares.iter().map(|(n, _)| n + 1).max().unwrap_or(0);
        Pool {
            fs,
            dir: dir.to_owned(),
            segment_bytes,
            target,
            state: Mutex::new(PoolState {
                spares: spares.into_iter().map(|(_, p)| p).collect(),
                next_no,
                stop: false,
            }),
            wake: Condvar::new(),
        }
    }

    /// A ready spare file: one from the pool, or one made now if the pool is empty.
    fn take(&self) -> io::Result<PathBuf> {
        let taken = self.state.lock().spares.pop();
        self.wake.notify_all();
        match taken {
            Some(path) => Ok(path),
            None => self.make(),
        }
    }

    /// Turns a spare into live segment `id` starting at `start`.
    ///
    /// The spare gets its header and an end marker (a recycled spare holds stale records
    /// after the header) and is synced while still named a spare; then it is renamed and
    /// the directory synced, so the segment appears whole or not at all. Nothing may be
    /// written into it before this returns.
    pub fn install_segment(&self, id: SegmentId, start: Lsn) -> Result<Segment> {
        let spare = self.take().map_err(|e| Error::io("prepare spare segment", &self.dir, e))?;
        let file =
            self.fs.open(&spare, OpenMode::Existing).map_err(|e| Error::io("open", &spare, e))?;
        let mut header = [0u8; SEGMENT_HEADER_LEN as usize + HEADER_LEN];
        header[..SEGMENT_HEADER_LEN as usize]
            .copy_from_slice(&SegmentHeader { id, start }.encode());
        file.write_at(0, &header).map_err(|e| Error::io("write", &spare, e))?;
        file.sync_data().map_err(|e| Error::io("fdatasync", &spare, e))?;
        let path = self.dir.join(segment_file_name(id));
        self.fs.rename(&spare, &path).map_err(|e| Error::io("rename", &spare, e))?;
        self.fs.sync_dir(&self.dir).map_err(|e| Error::io("fsync directory", &self.dir, e))?;
        let capacity = file.len().map_err(|e| Error::io("stat", &path, e))?;
        Ok(Segment::new(id, start, capacity, file, &path))
    }

    /// Renames a purged segment into the pool if there is room; otherwise removes it.
    /// The caller syncs the directory.
    pub fn recycle(&self, path: &Path) -> io::Result<()> {
        let mut st = self.state.lock();
        if st.spares.len() >= self.target {
            drop(st);
            return self.fs.remove_file(path);
        }
        let spare = self.dir.join(spare_file_name(st.next_no));
        st.next_no += 1;
        self.fs.rename(path, &spare)?;
        st.spares.push(spare);
        Ok(())
    }

    pub fn spare_count(&self) -> usize {
        self.state.lock().spares.len()
    }

    /// Makes one zero-filled spare and adds nothing to the pool: the caller gets it.
    fn make(&self) -> io::Result<PathBuf> {
        let n = {
            let mut st = self.state.lock();
            st.next_no += 1;
            st.next_no - 1
        };
        let tmp = self.dir.join(format!("spare-{n:016x}.tmp"));
        let path = self.dir.join(spare_file_name(n));
        let file = self.fs.open(&tmp, OpenMode::CreateNew)?;
        let zeros =
            vec![0u8; FILL_CHUNK.min(usize::try_from(self.segment_bytes).unwrap_or(FILL_CHUNK))];
        let mut offset = 0;
        while offset < self.segment_bytes {
            let n =
                zeros.len().min(usize::try_from(self.segment_bytes - offset).unwrap_or(usize::MAX));
            file.write_at(offset, &zeros[..n])?;
            offset += n as u64;
        }
        file.sync_data()?;
        self.fs.rename(&tmp, &path)?;
        self.fs.sync_dir(&self.dir)?;
        Ok(path)
    }

    /// Keeps `target` spares ready until [`Pool::stop`]; runs on its own thread.
    fn run(&self) {
        loop {
            {
                let mut st = self.state.lock();
                while !st.stop && st.spares.len() >= self.target {
                    self.wake.wait(&mut st);
                }
                if st.stop {
                    return;
                }
            }
            match self.make() {
                Ok(path) => self.state.lock().spares.push(path),
                Err(e) => {
                    // Not fatal here: the writer makes spares itself when the pool is
                    // empty, and fails the log if that fails too.
                    tracing::warn!(error = %e, dir = %self.dir.display(), "could not prepare a spare WAL segment; retrying in 1 s");
                    let mut st = self.state.lock();
                    if !st.stop {
                        self.wake.wait_for(&mut st, Duration::from_secs(1));
                    }
                }
            }
        }
    }

    /// Starts the background preparer.
    pub fn spawn(self: &Arc<Self>) -> io::Result<JoinHandle<()>> {
        let pool = self.clone();
        std::thread::Builder::new().name("wal-spares".into()).spawn(move || pool.run())
    }

    /// Asks the background preparer to exit.
    pub fn stop(&self) {
        self.state.lock().stop = true;
        self.wake.notify_all();
    }
}
