//! The seed image: a region's raw keys at an applied index, from a checkpoint file
//! the image holds (mapped: a later checkpoint that replaces the file, or its removal,
//! does not take the image away while it is read; the kernel keeps a mapped file until
//! it is unmapped).

use std::collections::VecDeque;

use bytes::Bytes;
use regionkv_engine::{CheckpointFile, Region};

use crate::error::Result;
use crate::txn::mvcc;

/// A region's raw keyspace at an applied index, pinned (see the module docs).
///
/// Only raw keys: every key of the transactional keyspace (its first byte
/// [`mvcc::TXN_KEYSPACE`], which a raw key may not start with) is left out; the
/// transaction and session tables and the duplication state are in the checkpoint's
/// header, never among its pairs.
#[derive(Clone, Debug)]
pub struct DupSeedImage {
    /// The applied index the image reflects: every entry up to it, none after.
    pub index: u64,
    /// The region (range and epoch) at that index.
    pub region: Region,
    file: CheckpointFile,
}

impl DupSeedImage {
    pub(crate) fn new(file: CheckpointFile) -> DupSeedImage {
        let header = file.header();
        DupSeedImage { index: header.applied_index, region: header.region.clone(), file }
    }

    /// The image's raw pairs in key order, in chunks of at most `max_bytes` of keys and
    /// values (a chunk holds one pair at least, whatever its size). An empty region
    /// gives no chunk. The keys and values share the mapped file (no copy).
    pub fn chunks(
        &self,
        max_bytes: usize,
    ) -> impl Iterator<Item = Result<Vec<(Bytes, Bytes)>>> + '_ {
        SeedChunks {
            file: &self.file,
            next_block: 0,
            pending: VecDeque::new(),
            bytes: 0,
            max_bytes,
        }
    }
}

/// The iterator of [`DupSeedImage::chunks`]: reads the file a block at a time.
#[derive(Debug)]
pub struct SeedChunks<'a> {
    file: &'a CheckpointFile,
    next_block: usize,
    pending: VecDeque<(Bytes, Bytes)>,
    /// Bytes of keys and values in `pending`.
    bytes: usize,
    max_bytes: usize,
}

impl SeedChunks<'_> {
    fn load_block(&mut self) {
        let data = self.file.bytes();
        let (pending, bytes) = (&mut self.pending, &mut self.bytes);
        self.file.for_each_in_block(self.next_block, |k, v| {
            if !mvcc::is_txn_key(k) {
                *bytes += k.len() + v.len();
                pending.push_back((data.slice_ref(k), data.slice_ref(v)));
            }
        });
        self.next_block += 1;
    }
}

impl Iterator for SeedChunks<'_> {
    type Item = Result<Vec<(Bytes, Bytes)>>;

    fn next(&mut self) -> Option<Self::Item> {
        while self.bytes < self.max_bytes && self.next_block < self.file.block_count() {
            self.load_block();
        }
        let mut chunk = Vec::new();
        let mut bytes = 0;
        while let Some((k, v)) = self.pending.front() {
            let len = k.len() + v.len();
            if !chunk.is_empty() && bytes + len > self.max_bytes {
                break;
            }
            bytes += len;
            self.bytes -= len;
            chunk.push(self.pending.pop_front().expect("peeked"));
        }
        (!chunk.is_empty()).then_some(Ok(chunk))
    }
}
