//! Spare segment files: zero-filled ahead of need, and recycled after purge.
//!
//! An fdatasync after overwriting blocks that already exist is cheaper than one that
//! also has to allocate blocks or grow the file (measured here: ~1.6x, and `fallocate`
//! does not help because its extents are "unwritten" until first written). So a new
//! segment file is written with zeros in full before it is used, and a purged segment
//! is renamed back into the pool rather than deleted.
//!
//! Recycled files are preferred: the background preparer zero-fills a new spare only
//! when none is ready, since in a store that purges its log (after checkpoints) the
//! purged segments come back faster than they are needed, and zero-filling writes every
//! byte twice. A writer that finds the pool empty waits for a fill in progress rather
//! than start a second one.
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

/// How a new spare's blocks are allocated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fill {
    /// Written with zeros: later overwrites make the cheapest fdatasyncs.
    Zeros,
    /// Only sized (`set_len`): instant, blocks allocated as the log writes them.
    Sparse,
}

#[derive(Debug)]
pub(crate) struct Pool {
    fs: Arc<dyn FileSystem>,
    dir: PathBuf,
    segment_bytes: u64,
    /// Most spares kept by recycling.
    capacity: usize,
    /// A background preparer runs.
    background: bool,
    state: Mutex<PoolState>,
    wake: Condvar,
}

#[derive(Debug)]
struct PoolState {
    spares: Vec<PathBuf>,
    next_no: u64,
    stop: bool,
    /// The preparer is zero-filling a spare.
    filling: bool,
}

impl Pool {
    pub fn new(
        fs: Arc<dyn FileSystem>,
        dir: &Path,
        segment_bytes: u64,
        capacity: usize,
        spares: Vec<(u64, PathBuf)>,
    ) -> Pool {
        let next_no = spares.iter().map(|(n, _)| n + 1).max().unwrap_or(0);
        Pool {
            fs,
            dir: dir.to_owned(),
            segment_bytes,
            capacity,
            background: false,
            state: Mutex::new(PoolState {
                spares: spares.into_iter().map(|(_, p)| p).collect(),
                next_no,
                stop: false,
                filling: false,
            }),
            wake: Condvar::new(),
        }
    }

    /// A ready spare file: one from the pool, or else one made now.
    ///
    /// With a background preparer the writer never waits for a zero-fill: it takes a
    /// sparse file (allocated as it is written; fsyncs cost more until it is full) and
    /// the preparer zero-fills the next spare meanwhile. Without one, it zero-fills
    /// here.
    fn take(&self) -> io::Result<(PathBuf, Fill)> {
        if let Some(path) = self.state.lock().spares.pop() {
            self.wake.notify_all();
            return Ok((path, Fill::Zeros));
        }
        self.wake.notify_all();
        let fill = if self.background { Fill::Sparse } else { Fill::Zeros };
        Ok((self.make(fill)?, fill))
    }

    /// Turns a spare into live segment `id` starting at `start`.
    ///
    /// The spare gets its header and an end marker (a recycled spare holds stale records
    /// after the header) and is synced while still named a spare; then it is renamed and
    /// the directory synced, so the segment appears whole or not at all. Nothing may be
    /// written into it before this returns. Also says whether the file is sparse (made
    /// now, its blocks not written yet: see [`crate::writer::LogWriter`]'s zeroing ahead).
    pub fn install_segment(&self, id: SegmentId, start: Lsn) -> Result<(Segment, bool)> {
        let (spare, allocation) =
            self.take().map_err(|e| Error::io("prepare spare segment", &self.dir, e))?;
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
        Ok((Segment::new(id, start, capacity, file, &path), allocation == Fill::Sparse))
    }

    /// Renames a purged segment into the pool if there is room; otherwise removes it.
    /// The caller syncs the directory.
    pub fn recycle(&self, path: &Path) -> io::Result<()> {
        let mut st = self.state.lock();
        if st.spares.len() >= self.capacity {
            drop(st);
            return self.fs.remove_file(path);
        }
        let spare = self.dir.join(spare_file_name(st.next_no));
        st.next_no += 1;
        self.fs.rename(path, &spare)?;
        st.spares.push(spare);
        drop(st);
        self.wake.notify_all();
        Ok(())
    }

    pub fn spare_count(&self) -> usize {
        self.state.lock().spares.len()
    }

    /// Makes one spare and adds nothing to the pool: the caller gets it.
    fn make(&self, allocation: Fill) -> io::Result<PathBuf> {
        let n = {
            let mut st = self.state.lock();
            st.next_no += 1;
            st.next_no - 1
        };
        let tmp = self.dir.join(format!("spare-{n:016x}.tmp"));
        let path = self.dir.join(spare_file_name(n));
        let file = self.fs.open(&tmp, OpenMode::CreateNew)?;
        match allocation {
            Fill::Zeros => {
                let zeros = vec![0u8; FILL_CHUNK.min(self.segment_bytes as usize)];
                let mut offset = 0;
                while offset < self.segment_bytes {
                    let len = zeros.len().min((self.segment_bytes - offset) as usize);
                    file.write_at(offset, &zeros[..len])?;
                    offset += len as u64;
                }
            }
            Fill::Sparse => file.set_len(self.segment_bytes)?,
        }
        file.sync_data()?;
        self.fs.rename(&tmp, &path)?;
        self.fs.sync_dir(&self.dir)?;
        Ok(path)
    }

    /// Keeps one spare ready until [`Pool::stop`]; runs on its own thread.
    fn run(&self) {
        loop {
            {
                let mut st = self.state.lock();
                while !st.stop && (!st.spares.is_empty() || st.filling) {
                    self.wake.wait(&mut st);
                }
                if st.stop {
                    return;
                }
                st.filling = true;
            }
            let made = self.make(Fill::Zeros);
            let mut st = self.state.lock();
            st.filling = false;
            match made {
                Ok(path) => st.spares.push(path),
                Err(e) => {
                    // Not fatal here: the writer makes spares itself when the pool is
                    // empty, and fails the log if that fails too.
                    tracing::warn!(error = %e, dir = %self.dir.display(), "could not prepare a spare WAL segment; retrying in 1 s");
                    self.wake.notify_all();
                    if !st.stop {
                        self.wake.wait_for(&mut st, Duration::from_secs(1));
                    }
                    continue;
                }
            }
            drop(st);
            self.wake.notify_all();
        }
    }

    /// Starts the background preparer; `take` no longer waits for zero-fills.
    pub fn spawn(self: &mut Arc<Self>) -> io::Result<JoinHandle<()>> {
        Arc::get_mut(self).expect("the preparer starts before the pool is shared").background =
            true;
        let pool = self.clone();
        std::thread::Builder::new().name("wal-spares".into()).spawn(move || pool.run())
    }

    /// Asks the background preparer to exit.
    pub fn stop(&self) {
        self.state.lock().stop = true;
        self.wake.notify_all();
    }
}
