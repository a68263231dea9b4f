//! A region's durable image as the engine keeps it: checkpoints written for a region
//! (alone or as part of a region change), found, streamed, and received from elsewhere.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use regionkv_wal::fs::{FileSystem, OpenMode};

use super::{CheckpointMeta, Durable, Engine, Inner};
use crate::IdHashMap;
use crate::checkpoint::{
    CheckpointChunks, CheckpointFile, CheckpointHeader, CheckpointReceiver, CheckpointStats,
    CheckpointWrite, SnapshotMeta, TEMP_SUFFIX, check_header_fits, file_name, load_part,
    map_checkpoint, open_and_load_part,
};
use crate::dup::DupTable;
use crate::error::{Error, Result};
use crate::manifest::{CheckpointRef, Manifest};
use crate::memtable::Memtable;
use crate::read_view::ReadView;
use crate::region::{Region, RegionId, intersect};
use crate::sessions::{SessionLimits, SessionTable};
use crate::sink::SinkTable;
use crate::txn::TxnTable;

impl Engine {
    /// Writes a checkpoint of region `id`: its live keys, its client sessions and its
    /// transaction state at the latest committed round, labelled with `applied_index`, which the caller asserts
    /// is the Raft index of that state (call it between apply rounds). Written to a temporary file, fsynced,
    /// renamed, the directory fsynced; then the manifest points the region at it, and
    /// the files it replaces are removed.
    pub fn checkpoint(&self, id: RegionId, applied_index: u64) -> Result<CheckpointMeta> {
        self.checkpoint_with(id, applied_index, None)
    }

    /// [`Engine::checkpoint`] for a Raft snapshot: the file's header also records
    /// `snapshot` (the term at `applied_index` and the voters and learners then), so
    /// that a store that installs it and crashes before its log says so can restart the
    /// region's log right after the image.
    pub fn checkpoint_for_snapshot(
        &self,
        id: RegionId,
        applied_index: u64,
        snapshot: SnapshotMeta,
    ) -> Result<CheckpointMeta> {
        self.checkpoint_with(id, applied_index, Some(snapshot))
    }

    fn checkpoint_with(
        &self,
        id: RegionId,
        applied_index: u64,
        snapshot_meta: Option<SnapshotMeta>,
    ) -> Result<CheckpointMeta> {
        let mut durable = self.inner.durable.lock();
        self.inner.check_usable()?;
        // Region changes take the durable lock too, so the region is stable from here.
        let region = self.region(id).ok_or(Error::RegionNotFound { region: id })?;
        // The data and the transaction state of one committed round: a round publishes
        // both under the commit lock.
        // The duplication state is set between rounds by the thread that applies the
        // region, the one that asks for this checkpoint: read with them, it is the
        // state as of the same index.
        // So is the sink state (set after the round holding its data committed).
        let (snapshot, txn, dups, sinks) = {
            let _commit = self.inner.commit.lock();
            let txn = self.inner.txn.lock().get(&id).cloned();
            let dups = self.inner.dups.lock().get(&id).cloned();
            (self.read_view(), txn, dups, self.inner.sinks.lock().get(&id).cloned())
        };
        let sessions = self.inner.sessions.lock().get(&id).cloned().unwrap_or_default();
        let file_id = durable.next_file_id;
        durable.next_file_id += 1;
        let header = CheckpointHeader {
            region: region.clone(),
            applied_index,
            sessions: (!sessions.is_empty()).then_some(sessions),
            snapshot: snapshot_meta,
            txn: txn.filter(|t| !t.is_empty()),
            dups: dups.filter(|d| !d.is_empty()),
            sinks: sinks.filter(|s| !s.is_empty()),
        };
        // What the region is charged for is a little more than its checkpoint takes
        // (see `Inner::write_checkpoint`).
        let charged =
            (self.inner.regions.read().bytes.get(&id)).map_or(0, |b| b.load(Ordering::Relaxed));
        let stats = self.inner.write_checkpoint(file_id, &header, &snapshot, charged)?;
        let mut next = durable.manifest.clone();
        next.next_file_id = durable.next_file_id;
        let whole = CheckpointRef {
            file_id,
            applied_index,
            start: region.start.clone(),
            end: region.end.clone(),
            file_bytes: Some(stats.file_bytes),
        };
        let map = self.region_map();
        next.set_regions(&map, |r| (r.id == id).then(|| vec![whole.clone()]));
        self.inner.persist(&mut durable, next)?;
        Ok(CheckpointMeta {
            region,
            applied_index,
            seq: snapshot.seq(),
            file_id,
            path: self.inner.dir.join(file_name(file_id)),
            stats,
        })
    }

    /// The region's latest checkpoint, if the region's durable image is exactly one
    /// checkpoint of the region as it is now (none after a split or merge until the
    /// next [`Engine::checkpoint`]). Mapped and fully verified.
    pub fn latest_checkpoint(&self, id: RegionId) -> Result<Option<CheckpointFile>> {
        let durable = self.inner.durable.lock();
        let Some(entry) = durable.manifest.regions.iter().find(|e| e.region.id == id) else {
            return Err(Error::RegionNotFound { region: id });
        };
        let [part] = entry.checkpoints.as_slice() else { return Ok(None) };
        let file = map_checkpoint(self.inner.fs.as_ref(), &self.inner.dir, part)?;
        let h = file.header();
        let whole = h.region.id == id && h.region.start == part.start && h.region.end == part.end;
        Ok(whole.then_some(file))
    }

    /// Streams the region's latest checkpoint in chunks of at most `chunk_bytes`.
    pub fn checkpoint_chunks(&self, id: RegionId, chunk_bytes: usize) -> Result<CheckpointChunks> {
        let file = self.latest_checkpoint(id)?.ok_or(Error::RegionNotFound { region: id })?;
        Ok(CheckpointChunks::new(&file, chunk_bytes))
    }

    /// Starts receiving a checkpoint streamed from another store.
    pub fn receive_checkpoint(&self) -> Result<CheckpointReceiver> {
        let file_id = {
            let mut durable = self.inner.durable.lock();
            self.inner.check_usable()?;
            durable.next_file_id += 1;
            durable.next_file_id - 1
        };
        let tmp = self.inner.dir.join(format!("{}{TEMP_SUFFIX}", file_name(file_id)));
        let file = self
            .inner
            .fs
            .open(&tmp, OpenMode::CreateNew)
            .map_err(|e| self.inner.fail("create received checkpoint", &tmp, &e))?;
        Ok(CheckpointReceiver::new(self.clone(), file_id, tmp, file))
    }

    /// The applied index of region `id`'s durable image, if the image is one whole
    /// checkpoint of the region as it is or known to be empty: what a restart starts
    /// replaying the log after. `None` if the region is not hosted or its image is made
    /// of parts of older regions' checkpoints (after [`Engine::split`] or
    /// [`Engine::merge`]) or of nothing recorded (a bootstrapped region).
    pub fn image_index(&self, id: RegionId) -> Result<Option<u64>> {
        let empty_at = {
            let durable = self.inner.durable.lock();
            let entry = durable.manifest.regions.iter().find(|e| e.region.id == id);
            entry.ok_or(Error::RegionNotFound { region: id })?.empty_at
        };
        match empty_at {
            Some(index) => Ok(Some(index)),
            None => Ok(self.latest_checkpoint(id)?.map(|f| f.header().applied_index)),
        }
    }

    /// Writes a checkpoint of `region` (as given, not as the map has it) from
    /// `snapshot`, with `sessions` as its session table and `txn` as its transaction
    /// state and `dups` as its duplication state; the caller records it in the next
    /// manifest. Writes nothing and returns `None` if the region holds no keys, no
    /// sessions, no transaction state, no duplication and no sink state: its image is empty
    /// (`empty_at`).
    /// `estimate_bytes` is about how long the file will be (what the region is charged
    /// for; see `Inner::write_checkpoint`); the callers hold the region map's lock, so
    /// they pass it in.
    pub(super) fn write_whole_checkpoint(
        &self,
        durable: &mut Durable,
        region: &Region,
        applied_index: u64,
        snapshot: &ReadView,
        image: ImageState<'_>,
        estimate_bytes: u64,
    ) -> Result<Option<CheckpointRef>> {
        let ImageState { sessions, txn, dups, sinks } = image;
        if sessions.is_empty()
            && txn.is_empty()
            && dups.is_empty()
            && sinks.is_empty()
            && snapshot.scan(&region.start, region.end.as_deref(), 1).is_empty()
        {
            return Ok(None);
        }
        let file_id = durable.next_file_id;
        durable.next_file_id += 1;
        let header = CheckpointHeader {
            region: region.clone(),
            applied_index,
            sessions: (!sessions.is_empty()).then(|| sessions.clone()),
            snapshot: None,
            txn: (!txn.is_empty()).then(|| txn.clone()),
            dups: (!dups.is_empty()).then(|| dups.clone()),
            sinks: (!sinks.is_empty()).then(|| sinks.clone()),
        };
        let stats = self.inner.write_checkpoint(file_id, &header, snapshot, estimate_bytes)?;
        Ok(Some(CheckpointRef {
            file_id,
            applied_index,
            start: region.start.clone(),
            end: region.end.clone(),
            file_bytes: Some(stats.file_bytes),
        }))
    }
}

/// What a checkpoint holds besides the region's data: its client sessions, its
/// transaction state, its duplication state and its sink state.
#[derive(Clone, Copy)]
pub(super) struct ImageState<'a> {
    pub sessions: &'a SessionTable,
    pub txn: &'a TxnTable,
    pub dups: &'a DupTable,
    pub sinks: &'a SinkTable,
}

impl Inner {
    /// Writes checkpoint file `file_id` of `header.region` from `snapshot` (see
    /// [`CheckpointWrite`]); a failure latches the engine failed. `estimate_bytes` is
    /// about how long the file will be (the region's memory charge: a little more).
    pub(super) fn write_checkpoint(
        &self,
        file_id: u64,
        header: &CheckpointHeader,
        snapshot: &ReadView,
        estimate_bytes: u64,
    ) -> Result<CheckpointStats> {
        check_header_fits(header)?;
        let write = CheckpointWrite {
            fs: self.fs.as_ref(),
            dir: &self.dir,
            buffer_bytes: self.options.checkpoint_write_buffer_bytes,
            memtable: &self.memtable,
            seq: snapshot.seq().0,
            file_id,
            header,
            estimate_bytes,
        };
        write.run(|op, path, e| self.fail(op, path, e))
    }
}

/// What [`load_images`] loaded.
pub(super) struct Loaded {
    pub memtable: Memtable,
    pub sessions: IdHashMap<RegionId, SessionTable>,
    pub txn: IdHashMap<RegionId, TxnTable>,
    pub dups: IdHashMap<RegionId, DupTable>,
    pub sinks: IdHashMap<RegionId, SinkTable>,
    /// Bytes charged per region with a checkpoint part.
    pub bytes: IdHashMap<RegionId, AtomicU64>,
    /// The last sequence number used.
    pub seq: u64,
    /// Key/value pairs loaded.
    pub entries: u64,
}

/// Loads the checkpoints `manifest` lists (at open): each part at its own sequence
/// number, the session tables of the files each region's image is made of (joined, as
/// a merge joins them; the parts of a split share their parent's file, so each gets a
/// copy), their transaction state (each part's range of it, joined; the floor is
/// the largest), their duplication state (the region's own file first, then any
/// entry of another duplication the other files hold: nothing is dropped), and their
/// sink state (each part's range of it, merged as a merge does).
pub(super) fn load_images(
    fs: &dyn FileSystem,
    dir: &Path,
    manifest: &Manifest,
    limits: SessionLimits,
) -> Result<Loaded> {
    let memtable = Memtable::new();
    let mut sessions: IdHashMap<RegionId, SessionTable> = IdHashMap::default();
    let mut txn: IdHashMap<RegionId, TxnTable> = IdHashMap::default();
    let mut dups: IdHashMap<RegionId, DupTable> = IdHashMap::default();
    let mut sinks: IdHashMap<RegionId, SinkTable> = IdHashMap::default();
    let mut seq = 0u64;
    let mut loaded_entries = 0;
    let mut files: HashMap<u64, CheckpointFile> = HashMap::new();
    let mut bytes: IdHashMap<RegionId, AtomicU64> = IdHashMap::default();
    for entry in &manifest.regions {
        for part in &entry.checkpoints {
            seq += 1;
            // A file is verified as its first part loads (one pass over it); the
            // parts of other regions that share it load from the verified image.
            let (entries, charged) = if let Some(file) = files.get(&part.file_id) {
                load_part(&memtable, file, entry, part, seq)
            } else {
                let (file, entries, charged) =
                    open_and_load_part(fs, dir, &memtable, entry, part, seq)?;
                files.insert(part.file_id, file);
                (entries, charged)
            };
            loaded_entries += entries;
            bytes.entry(entry.region.id).or_default().fetch_add(charged, Ordering::Relaxed);
            if let Some(table) = files.get(&part.file_id).and_then(|f| f.header().sessions.as_ref())
            {
                sessions.entry(entry.region.id).or_default().join(table, limits);
            }
            if let Some(table) = files.get(&part.file_id).and_then(|f| f.header().txn.as_ref())
                && let Some((start, end)) = intersect(
                    (&part.start, part.end.as_deref()),
                    (&entry.region.start, entry.region.end.as_deref()),
                )
            {
                let part_table = table.restricted(start, end);
                txn.entry(entry.region.id).or_default().join(part_table);
            }
            if let Some(table) = files.get(&part.file_id).and_then(|f| f.header().sinks.as_ref())
                && let Some((start, end)) = intersect(
                    (&part.start, part.end.as_deref()),
                    (&entry.region.start, entry.region.end.as_deref()),
                )
            {
                sinks.entry(entry.region.id).or_default().join_part(table, start, end);
            }
        }
        let mut own_first: Vec<&CheckpointFile> =
            entry.checkpoints.iter().filter_map(|part| files.get(&part.file_id)).collect();
        own_first.sort_by_key(|f| f.header().region.id != entry.region.id);
        for file in own_first {
            if let Some(table) = &file.header().dups {
                dups.entry(entry.region.id).or_default().join_missing(table);
            }
        }
    }
    txn.retain(|_, t| !t.is_empty());
    dups.retain(|_, t| !t.is_empty());
    sinks.retain(|_, t| !t.is_empty());
    Ok(Loaded { memtable, sessions, txn, dups, sinks, bytes, seq, entries: loaded_entries })
}
