//! A simulated file system that keeps written and durable bytes apart.
//!
//! Each file holds two images: `data` (what reads see, the page cache) and `durable`
//! (what a power loss leaves). `sync_data` copies the byte ranges written since the last
//! sync into `durable`; `sync_dir` does the same for the names in a directory. A
//! [`SimFs::crash`] turns the unsynced difference into one of four outcomes
//! ([`CrashMode`]), and a fault hook can fail any mutating call with the error of your
//! choice. A failed `sync_data` forgets the dirty ranges without persisting them, as
//! Linux does: a later successful sync does not bring them back. As on Linux, the
//! failure is also reported once to every other handle of the file opened before it,
//! at that handle's next `sync_data` (each open file has its own error cursor).
//!
//! Directories are simplified: `create_dir_all` is durable at once.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use parking_lot::Mutex;

use super::{File, FileSystem, OpenMode};

/// Sector size for torn writes: a crash persists whole sectors of unsynced data.
pub const SECTOR_BYTES: u64 = 512;

/// What a crash does to data written but not yet synced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CrashMode {
    /// Every unsynced byte is lost, and unsynced renames, creations and removals revert.
    Lost,
    /// Every unsynced byte reached the disk.
    Persisted,
    /// Unsynced data persisted in whole 512-byte sectors up to a random cut (per file,
    /// in offset order); sectors after the cut are lost.
    Torn {
        /// Seed for the cut points.
        seed: u64,
    },
    /// Every unsynced byte reached the disk, then one bit in unsynced data flipped (per
    /// file that had unsynced data).
    BitFlip {
        /// Seed for the flipped bit.
        seed: u64,
    },
}

/// The kind of a mutating file-system call, as seen by a [`FaultHook`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SimOpKind {
    /// [`File::write_at`].
    Write,
    /// [`File::sync_data`].
    SyncData,
    /// [`File::set_len`].
    SetLen,
    /// [`File::allocate`].
    Allocate,
    /// [`FileSystem::open`] with [`OpenMode::CreateNew`].
    Create,
    /// [`FileSystem::rename`].
    Rename,
    /// [`FileSystem::remove_file`].
    Remove,
    /// [`FileSystem::sync_dir`].
    SyncDir,
}

/// One mutating call, numbered from 1 in the order the simulated machine performs them.
#[derive(Clone, Debug)]
pub struct SimOp {
    /// 1 for the first mutating call, 2 for the next, and so on.
    pub index: u64,
    /// What the call does.
    pub kind: SimOpKind,
    /// The file or directory it acts on.
    pub path: PathBuf,
    /// Offset of a write, or new length of a `set_len` or `allocate`; 0 otherwise.
    pub offset: u64,
    /// Length of a write; 0 otherwise.
    pub len: u64,
}

/// A fault injector: return `Some(error)` to fail the call without effect.
pub type FaultHook = Box<dyn FnMut(&SimOp) -> Option<io::Error> + Send>;

/// A simulated file system; clones share the same disk.
#[derive(Clone)]
pub struct SimFs {
    state: Arc<Mutex<State>>,
}

impl fmt::Debug for SimFs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let st = self.state.lock();
        f.debug_struct("SimFs").field("files", &st.names.len()).field("ops", &st.ops).finish()
    }
}

#[derive(Default)]
struct State {
    /// Names as the running machine sees them.
    names: BTreeMap<PathBuf, u64>,
    /// Names as a crash would leave them: updated by `sync_dir` of the parent.
    durable_names: BTreeMap<PathBuf, u64>,
    dirs: BTreeSet<PathBuf>,
    inodes: HashMap<u64, Inode>,
    next_inode: u64,
    /// Mutating calls performed so far.
    ops: u64,
    /// Mutating calls after this many fail: the machine has stopped.
    halt_after: Option<u64>,
    /// Set by `crash`: this instance is the machine before the power loss.
    dead: bool,
    hook: Option<FaultHook>,
}

#[derive(Default, Clone)]
struct Inode {
    data: Vec<u8>,
    durable: Vec<u8>,
    /// Byte ranges `[start, end)` written since the last successful sync, merged.
    dirty: BTreeMap<u64, u64>,
    /// Writeback errors so far: a handle reports those it has not seen yet.
    errors: u64,
}

impl Inode {
    fn mark_dirty(&mut self, start: u64, end: u64) {
        if start >= end {
            return;
        }
        let (mut start, mut end) = (start, end);
        // Merge with every range that overlaps or touches [start, end).
        let overlapping: Vec<(u64, u64)> =
            self.dirty.range(..=end).filter(|&(_, &e)| e >= start).map(|(&s, &e)| (s, e)).collect();
        for (s, e) in overlapping {
            self.dirty.remove(&s);
            start = start.min(s);
            end = end.max(e);
        }
        self.dirty.insert(start, end);
    }

    fn sync(&mut self) {
        self.durable.resize(self.data.len(), 0);
        let len = self.data.len() as u64;
        for (&s, &e) in &self.dirty {
            let e = e.min(len);
            if s < e {
                self.durable[to_usize(s)..to_usize(e)]
                    .copy_from_slice(&self.data[to_usize(s)..to_usize(e)]);
            }
        }
        self.dirty.clear();
    }

    /// Unsynced bytes as `(offset, len)` runs clipped to the file, in offset order.
    fn dirty_runs(&self) -> Vec<(u64, u64)> {
        let len = self.data.len() as u64;
        self.dirty
            .iter()
            .map(|(&s, &e)| (s, e.min(len)))
            .filter(|&(s, e)| s < e)
            .map(|(s, e)| (s, e - s))
            .collect()
    }

    fn persist(&self, image: &mut Vec<u8>, offset: u64, len: u64) {
        let end = to_usize(offset + len);
        if image.len() < end {
            image.resize(end, 0);
        }
        image[to_usize(offset)..end].copy_from_slice(&self.data[to_usize(offset)..end]);
    }

    /// The file as a power loss in `mode` leaves it.
    fn after_crash(&self, mode: CrashMode, rng: &mut SplitMix) -> Vec<u8> {
        let mut image = self.durable.clone();
        let runs = self.dirty_runs();
        match mode {
            CrashMode::Lost => {}
            CrashMode::Persisted => {
                image.resize(self.data.len(), 0);
                for (offset, len) in runs {
                    self.persist(&mut image, offset, len);
                }
            }
            CrashMode::Torn { .. } => {
                // Sectors holding unsynced bytes, in offset order; keep a random prefix.
                let sectors: BTreeSet<u64> = runs
                    .iter()
                    .flat_map(|&(o, l)| (o / SECTOR_BYTES)..(o + l).div_ceil(SECTOR_BYTES))
                    .collect();
                let keep = rng.below(sectors.len() as u64 + 1);
                let cut = sectors.iter().nth(to_usize(keep)).map_or(u64::MAX, |s| s * SECTOR_BYTES);
                for (offset, len) in runs {
                    let end = (offset + len).min(cut);
                    if offset < end {
                        self.persist(&mut image, offset, end - offset);
                    }
                }
            }
            CrashMode::BitFlip { .. } => {
                image.resize(self.data.len(), 0);
                for &(offset, len) in &runs {
                    self.persist(&mut image, offset, len);
                }
                let total: u64 = runs.iter().map(|&(_, l)| l).sum();
                if total > 0 {
                    let mut pick = rng.below(total);
                    for (offset, len) in runs {
                        if pick < len {
                            image[to_usize(offset + pick)] ^= 1 << rng.below(8);
                            break;
                        }
                        pick -= len;
                    }
                }
            }
        }
        image
    }
}

fn to_usize(v: u64) -> usize {
    usize::try_from(v).expect("simulated files fit in memory")
}

/// A small deterministic generator (`SplitMix64`) so the crate needs no `rand`.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next() % n }
    }
}

/// Why a mutating call did not happen.
enum Refusal {
    /// The machine has stopped or crashed: the call has no effect at all.
    Down(io::Error),
    /// The fault hook failed it.
    Injected(io::Error),
}

fn machine_down() -> io::Error {
    io::Error::other("simulated machine is down")
}

impl Default for SimFs {
    fn default() -> Self {
        Self::new()
    }
}

impl SimFs {
    /// An empty simulated disk.
    pub fn new() -> SimFs {
        let mut state = State::default();
        state.dirs.insert(PathBuf::from("/"));
        SimFs { state: Arc::new(Mutex::new(state)) }
    }

    /// Mutating calls performed so far.
    pub fn op_count(&self) -> u64 {
        self.state.lock().ops
    }

    /// Lets `ops` more mutating calls succeed, then fails every later one, as a machine
    /// that stopped. Call [`SimFs::crash`] afterwards to see what the disk holds.
    pub fn halt_after(&self, ops: u64) {
        let mut st = self.state.lock();
        st.halt_after = Some(st.ops + ops);
    }

    /// Installs a fault hook consulted before every mutating call.
    pub fn set_fault_hook(&self, hook: FaultHook) {
        self.state.lock().hook = Some(hook);
    }

    /// Removes the fault hook.
    pub fn clear_fault_hook(&self) {
        self.state.lock().hook = None;
    }

    /// Bytes written but not yet durable, over all files.
    pub fn unsynced_bytes(&self) -> u64 {
        let st = self.state.lock();
        st.inodes.values().flat_map(Inode::dirty_runs).map(|(_, l)| l).sum()
    }

    /// The current contents of `path` as reads see them, if it exists.
    pub fn contents(&self, path: &Path) -> Option<Vec<u8>> {
        let st = self.state.lock();
        st.names.get(path).map(|ino| st.inodes[ino].data.clone())
    }

    /// Flips bits in both the visible and the durable image of `path` (bit rot).
    pub fn corrupt(&self, path: &Path, offset: u64, xor: u8) -> io::Result<()> {
        let mut st = self.state.lock();
        let ino = *st.names.get(path).ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
        let inode = st.inodes.get_mut(&ino).expect("named inode exists");
        for image in [&mut inode.data, &mut inode.durable] {
            if let Some(byte) = image.get_mut(to_usize(offset)) {
                *byte ^= xor;
            }
        }
        Ok(())
    }

    /// Cuts the power. Returns the disk as the next boot finds it; this instance is
    /// dead afterwards (every call on it or its open files fails).
    #[must_use]
    pub fn crash(&self, mode: CrashMode) -> SimFs {
        let next = self.image_after_crash(mode);
        self.state.lock().dead = true;
        next
    }

    /// The disk as a power loss now would leave it, without stopping this instance.
    #[must_use]
    pub fn image_after_crash(&self, mode: CrashMode) -> SimFs {
        let st = self.state.lock();
        let seed = match mode {
            CrashMode::Torn { seed } | CrashMode::BitFlip { seed } => seed,
            CrashMode::Lost | CrashMode::Persisted => 0,
        };
        let mut rng = SplitMix(seed);
        let names = if mode == CrashMode::Lost { &st.durable_names } else { &st.names };
        let mut next =
            State { dirs: st.dirs.clone(), next_inode: st.next_inode, ..State::default() };
        for (path, &ino) in names {
            next.inodes.entry(ino).or_insert_with(|| {
                let image = st.inodes[&ino].after_crash(mode, &mut rng);
                Inode { data: image.clone(), durable: image, ..Inode::default() }
            });
            next.names.insert(path.clone(), ino);
        }
        next.durable_names = next.names.clone();
        SimFs { state: Arc::new(Mutex::new(next)) }
    }
}

impl State {
    /// Counts a mutating call, applies the halt point and the fault hook.
    fn begin(&mut self, kind: SimOpKind, path: &Path, offset: u64, len: u64) -> io::Result<()> {
        match self.begin_op(kind, path, offset, len) {
            Ok(()) => Ok(()),
            Err(Refusal::Down(e) | Refusal::Injected(e)) => Err(e),
        }
    }

    /// True once the machine stopped (halted or crashed).
    fn is_down(&self) -> bool {
        self.dead || self.halt_after.is_some_and(|h| self.ops >= h)
    }

    fn begin_op(
        &mut self,
        kind: SimOpKind,
        path: &Path,
        offset: u64,
        len: u64,
    ) -> Result<(), Refusal> {
        if self.is_down() {
            return Err(Refusal::Down(machine_down()));
        }
        self.ops += 1;
        let op = SimOp { index: self.ops, kind, path: path.to_owned(), offset, len };
        match self.hook.as_mut().and_then(|hook| hook(&op)) {
            Some(err) => Err(Refusal::Injected(err)),
            None => Ok(()),
        }
    }

    fn check_parent(&self, path: &Path) -> io::Result<()> {
        match path.parent() {
            Some(p) if self.dirs.contains(p) => Ok(()),
            _ => Err(io::Error::new(io::ErrorKind::NotFound, "parent directory does not exist")),
        }
    }
}

impl FileSystem for SimFs {
    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Arc<dyn File>> {
        let mut st = self.state.lock();
        if st.dead {
            return Err(machine_down());
        }
        let ino = match mode {
            OpenMode::Existing => {
                *st.names.get(path).ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?
            }
            OpenMode::CreateNew => {
                st.check_parent(path)?;
                if st.names.contains_key(path) {
                    return Err(io::Error::from(io::ErrorKind::AlreadyExists));
                }
                st.begin(SimOpKind::Create, path, 0, 0)?;
                let ino = st.next_inode;
                st.next_inode += 1;
                st.inodes.insert(ino, Inode::default());
                st.names.insert(path.to_owned(), ino);
                ino
            }
        };
        // A handle reports only the writeback errors that come after its opening (Linux
        // samples the error cursor at open; errors seen by a failed sync are old news).
        let seen = AtomicU64::new(st.inodes[&ino].errors);
        Ok(Arc::new(SimFile { state: self.state.clone(), ino, path: path.to_owned(), seen }))
    }

    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        let mut st = self.state.lock();
        if st.dead {
            return Err(machine_down());
        }
        for dir in path.ancestors() {
            st.dirs.insert(dir.to_owned());
        }
        Ok(())
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let st = self.state.lock();
        if st.dead {
            return Err(machine_down());
        }
        if !st.dirs.contains(dir) {
            return Err(io::Error::from(io::ErrorKind::NotFound));
        }
        let files = st.names.keys().filter(|p| p.parent() == Some(dir));
        let subdirs = st.dirs.iter().filter(|p| p.parent() == Some(dir));
        Ok(files
            .chain(subdirs)
            .filter_map(|p| p.file_name())
            .map(|n| n.to_string_lossy().into_owned())
            .collect())
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut st = self.state.lock();
        if !st.names.contains_key(from) {
            return Err(io::Error::from(io::ErrorKind::NotFound));
        }
        st.check_parent(to)?;
        st.begin(SimOpKind::Rename, from, 0, 0)?;
        let ino = st.names.remove(from).expect("checked above");
        st.names.insert(to.to_owned(), ino);
        Ok(())
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        let mut st = self.state.lock();
        if !st.names.contains_key(path) {
            return Err(io::Error::from(io::ErrorKind::NotFound));
        }
        st.begin(SimOpKind::Remove, path, 0, 0)?;
        st.names.remove(path);
        Ok(())
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let mut st = self.state.lock();
        st.begin(SimOpKind::SyncDir, dir, 0, 0)?;
        let in_dir = |p: &PathBuf| p.parent() == Some(dir);
        st.durable_names.retain(|p, _| !in_dir(p));
        let live: Vec<(PathBuf, u64)> =
            st.names.iter().filter(|(p, _)| in_dir(p)).map(|(p, &i)| (p.clone(), i)).collect();
        st.durable_names.extend(live);
        Ok(())
    }
}

struct SimFile {
    state: Arc<Mutex<State>>,
    ino: u64,
    path: PathBuf,
    /// The inode's writeback errors this handle has reported (read and written under
    /// the state lock).
    seen: AtomicU64,
}

impl fmt::Debug for SimFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimFile")
            .field("path", &self.path)
            .field("ino", &self.ino)
            .finish_non_exhaustive()
    }
}

impl File for SimFile {
    fn write_at(&self, offset: u64, buf: &[u8]) -> io::Result<()> {
        let mut st = self.state.lock();
        st.begin(SimOpKind::Write, &self.path, offset, buf.len() as u64)?;
        let inode = st.inodes.get_mut(&self.ino).expect("open inode exists");
        let end = to_usize(offset) + buf.len();
        if inode.data.len() < end {
            inode.data.resize(end, 0);
        }
        inode.data[to_usize(offset)..end].copy_from_slice(buf);
        inode.mark_dirty(offset, end as u64);
        Ok(())
    }

    /// A [`File::write_at`] (the simulated disk has no cache to bypass), after the same
    /// alignment check as the real one.
    fn write_direct_at(&self, offset: u64, buf: &[u8]) -> io::Result<()> {
        super::check_direct_alignment(offset, buf)?;
        self.write_at(offset, buf)
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let st = self.state.lock();
        if st.dead {
            return Err(machine_down());
        }
        let data = &st.inodes[&self.ino].data;
        let start = to_usize(offset);
        let end = start.checked_add(buf.len()).filter(|&e| e <= data.len());
        let Some(end) = end else {
            return Err(io::Error::from(io::ErrorKind::UnexpectedEof));
        };
        buf.copy_from_slice(&data[start..end]);
        Ok(())
    }

    fn sync_data(&self) -> io::Result<()> {
        let mut st = self.state.lock();
        let result = st.begin_op(SimOpKind::SyncData, &self.path, 0, 0);
        let inode = st.inodes.get_mut(&self.ino).expect("open inode exists");
        match result {
            Ok(()) => {
                inode.sync();
                if self.seen.swap(inode.errors, Ordering::Relaxed) < inode.errors {
                    // Another handle's sync failed since this one's last: its pages
                    // may have been this handle's too.
                    return Err(io::Error::from_raw_os_error(5));
                }
                Ok(())
            }
            // A stopped machine does nothing at all: the dirty data stays in limbo for
            // `crash` to decide.
            Err(Refusal::Down(e)) => Err(e),
            // Linux marks the pages clean after a failed writeback: they are never
            // written, and the next sync has nothing to report.
            Err(Refusal::Injected(e)) => {
                inode.dirty.clear();
                inode.errors += 1;
                self.seen.store(inode.errors, Ordering::Relaxed);
                Err(e)
            }
        }
    }

    fn len(&self) -> io::Result<u64> {
        let st = self.state.lock();
        if st.dead {
            return Err(machine_down());
        }
        Ok(st.inodes[&self.ino].data.len() as u64)
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        let mut st = self.state.lock();
        st.begin(SimOpKind::SetLen, &self.path, len, 0)?;
        let inode = st.inodes.get_mut(&self.ino).expect("open inode exists");
        let old = inode.data.len() as u64;
        inode.data.resize(to_usize(len), 0);
        inode.mark_dirty(old.min(len), old.max(len));
        Ok(())
    }

    fn allocate(&self, len: u64) -> io::Result<()> {
        let mut st = self.state.lock();
        st.begin(SimOpKind::Allocate, &self.path, len, 0)?;
        let inode = st.inodes.get_mut(&self.ino).expect("open inode exists");
        let old = inode.data.len() as u64;
        if len > old {
            inode.data.resize(to_usize(len), 0);
            inode.mark_dirty(old, len);
        }
        Ok(())
    }

    /// Changes nothing: unsynced data may already reach the disk before a sync in
    /// every crash mode but [`CrashMode::Lost`], which stays possible (a hint is no
    /// promise).
    fn start_writeback(&self, _offset: u64, _len: u64) -> io::Result<()> {
        let st = self.state.lock();
        if st.is_down() {
            return Err(machine_down());
        }
        Ok(())
    }

    /// Changes nothing, like [`File::start_writeback`]: the simulated disk has no page
    /// cache to drop, and its crash modes already cover data written back early.
    fn evict_written(&self, offset: u64, len: u64) -> io::Result<()> {
        self.start_writeback(offset, len)
    }

    fn map(&self) -> io::Result<Bytes> {
        let st = self.state.lock();
        if st.dead {
            return Err(machine_down());
        }
        Ok(Bytes::copy_from_slice(&st.inodes[&self.ino].data))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup() -> (SimFs, PathBuf) {
        let fs = SimFs::new();
        let dir = PathBuf::from("/d");
        fs.create_dir_all(&dir).unwrap();
        (fs, dir)
    }

    #[test]
    fn unsynced_data_is_lost_and_synced_data_survives() {
        let (fs, dir) = setup();
        let f = fs.open(&dir.join("a"), OpenMode::CreateNew).unwrap();
        f.write_at(0, b"durable").unwrap();
        f.sync_data().unwrap();
        fs.sync_dir(&dir).unwrap();
        f.write_at(7, b"-volatile").unwrap();
        assert_eq!(fs.unsynced_bytes(), 9);

        let lost = fs.image_after_crash(CrashMode::Lost);
        assert_eq!(lost.contents(&dir.join("a")).unwrap(), b"durable");
        let kept = fs.crash(CrashMode::Persisted);
        assert_eq!(kept.contents(&dir.join("a")).unwrap(), b"durable-volatile");
    }

    #[test]
    fn unsynced_names_revert_when_lost() {
        let (fs, dir) = setup();
        let f = fs.open(&dir.join("a"), OpenMode::CreateNew).unwrap();
        f.write_at(0, b"x").unwrap();
        f.sync_data().unwrap();
        // Data synced but the directory entry was not: a crash may lose the file.
        assert!(fs.image_after_crash(CrashMode::Lost).contents(&dir.join("a")).is_none());
        fs.sync_dir(&dir).unwrap();
        fs.rename(&dir.join("a"), &dir.join("b")).unwrap();
        let after = fs.crash(CrashMode::Lost);
        assert!(after.contents(&dir.join("a")).is_some());
        assert!(after.contents(&dir.join("b")).is_none());
    }

    #[test]
    fn failed_sync_drops_dirty_data_for_good() {
        let (fs, dir) = setup();
        let f = fs.open(&dir.join("a"), OpenMode::CreateNew).unwrap();
        fs.sync_dir(&dir).unwrap();
        f.write_at(0, b"lost").unwrap();
        fs.set_fault_hook(Box::new(|op| {
            (op.kind == SimOpKind::SyncData).then(|| io::Error::from_raw_os_error(5))
        }));
        assert!(f.sync_data().is_err());
        fs.clear_fault_hook();
        // The page cache still shows the data, and the retry "succeeds" ...
        assert_eq!(fs.contents(&dir.join("a")).unwrap(), b"lost");
        f.sync_data().unwrap();
        // ... but the bytes never reached the disk (the new length did).
        assert_eq!(fs.crash(CrashMode::Persisted).contents(&dir.join("a")).unwrap(), [0u8; 4]);
    }

    #[test]
    fn a_failed_sync_is_reported_to_every_handle_opened_before_it_once() {
        let (fs, dir) = setup();
        let path = dir.join("a");
        let (first, second) = (
            fs.open(&path, OpenMode::CreateNew).unwrap(),
            fs.open(&path, OpenMode::Existing).unwrap(),
        );
        first.write_at(0, b"lost").unwrap();
        fs.set_fault_hook(Box::new(|op| {
            (op.kind == SimOpKind::SyncData).then(|| io::Error::from_raw_os_error(5))
        }));
        // The sync of another handle flushed (and lost) the first handle's pages.
        assert!(second.sync_data().is_err());
        fs.clear_fault_hook();
        assert_eq!(first.sync_data().unwrap_err().raw_os_error(), Some(5));
        first.sync_data().unwrap();
        second.sync_data().unwrap();
        // A handle opened after the failure does not report it.
        fs.open(&path, OpenMode::Existing).unwrap().sync_data().unwrap();
    }

    #[test]
    fn torn_crash_keeps_a_sector_prefix() {
        let (fs, dir) = setup();
        let f = fs.open(&dir.join("a"), OpenMode::CreateNew).unwrap();
        fs.sync_dir(&dir).unwrap();
        f.write_at(0, &[7u8; 4096]).unwrap();
        let mut seen = BTreeSet::new();
        for seed in 0..64 {
            let after =
                fs.image_after_crash(CrashMode::Torn { seed }).contents(&dir.join("a")).unwrap();
            assert_eq!(after.len() as u64 % SECTOR_BYTES, 0, "whole sectors only");
            assert!(after.iter().all(|&b| b == 7), "a prefix, never a hole");
            seen.insert(after.len());
        }
        assert!(seen.len() > 4, "cut points vary with the seed: {seen:?}");
    }

    #[test]
    fn bit_flip_hits_exactly_one_unsynced_bit() {
        let (fs, dir) = setup();
        let f = fs.open(&dir.join("a"), OpenMode::CreateNew).unwrap();
        fs.sync_dir(&dir).unwrap();
        f.write_at(0, &[0u8; 100]).unwrap();
        f.sync_data().unwrap();
        f.write_at(100, &[0u8; 100]).unwrap();
        for seed in 0..32 {
            let after =
                fs.image_after_crash(CrashMode::BitFlip { seed }).contents(&dir.join("a")).unwrap();
            let ones: u32 = after.iter().map(|b| b.count_ones()).sum();
            assert_eq!(ones, 1);
            assert!(after[..100].iter().all(|&b| b == 0), "synced bytes are never flipped");
        }
    }

    #[test]
    fn allocate_grows_like_set_len_and_writeback_and_eviction_are_hints() {
        let (fs, dir) = setup();
        let f = fs.open(&dir.join("a"), OpenMode::CreateNew).unwrap();
        fs.sync_dir(&dir).unwrap();
        let before = fs.op_count();
        f.allocate(8).unwrap();
        assert_eq!(fs.op_count(), before + 1, "a mutating call, a crash point");
        assert_eq!(fs.contents(&dir.join("a")).unwrap(), [0u8; 8]);
        f.write_at(0, b"abc").unwrap();
        // Allocating less than the length changes nothing.
        f.allocate(2).unwrap();
        assert_eq!(fs.contents(&dir.join("a")).unwrap(), b"abc\0\0\0\0\0");
        // Writeback is no sync: the new length and bytes can still be lost.
        f.start_writeback(0, 8).unwrap();
        f.evict_written(0, 8).unwrap();
        assert_eq!(fs.op_count(), before + 3, "hints are no mutating calls");
        assert_eq!(fs.unsynced_bytes(), 8);
        assert_eq!(fs.image_after_crash(CrashMode::Lost).contents(&dir.join("a")).unwrap(), b"");
        f.sync_data().unwrap();
        let after = fs.crash(CrashMode::Lost);
        assert_eq!(after.contents(&dir.join("a")).unwrap(), b"abc\0\0\0\0\0");
        assert!(f.start_writeback(0, 8).is_err(), "a crashed machine refuses it");
        assert!(f.evict_written(0, 8).is_err());
    }

    #[test]
    fn direct_writes_are_checked_for_alignment_and_then_plain_writes() {
        use super::super::DIRECT_IO_ALIGN;
        let (fs, dir) = setup();
        let f = fs.open(&dir.join("a"), OpenMode::CreateNew).unwrap();
        let mut raw = vec![7u8; 2 * DIRECT_IO_ALIGN];
        let at = raw.as_ptr().align_offset(DIRECT_IO_ALIGN);
        let buf = &mut raw[at..at + DIRECT_IO_ALIGN];
        let before = fs.op_count();
        assert!(f.write_direct_at(3, buf).is_err());
        assert!(f.write_direct_at(0, &buf[..10]).is_err());
        assert_eq!(fs.op_count(), before, "a refused call does nothing");
        f.write_direct_at(DIRECT_IO_ALIGN as u64, buf).unwrap();
        assert_eq!(fs.op_count(), before + 1);
        assert_eq!(fs.unsynced_bytes(), DIRECT_IO_ALIGN as u64, "as unsynced as any write");
        let contents = fs.contents(&dir.join("a")).unwrap();
        assert_eq!(contents.len(), 2 * DIRECT_IO_ALIGN);
        assert!(contents[DIRECT_IO_ALIGN..].iter().all(|&b| b == 7));
    }

    #[test]
    fn halted_machine_refuses_calls_without_effect() {
        let (fs, dir) = setup();
        let f = fs.open(&dir.join("a"), OpenMode::CreateNew).unwrap();
        fs.halt_after(1);
        f.write_at(0, b"one").unwrap();
        assert!(f.write_at(3, b"two").is_err());
        assert!(f.sync_data().is_err());
        assert_eq!(fs.contents(&dir.join("a")).unwrap(), b"one");
        // The refused sync did not drop the unsynced write: a crash may still keep it.
        assert_eq!(fs.unsynced_bytes(), 3);
        assert_eq!(fs.crash(CrashMode::Persisted).contents(&dir.join("a")).unwrap(), b"one");
    }
}
