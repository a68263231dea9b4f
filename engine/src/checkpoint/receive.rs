//! Receiving a checkpoint streamed from another store: chunks written in order into a
//! temporary file of the engine, verified whole, then made durable under its name.

use std::path::PathBuf;
use std::sync::Arc;

use regionkv_wal::fs::File;

use super::file_name;
use super::format::{CheckpointChunk, CheckpointFile};
use crate::engine::Engine;
use crate::error::{Error, Result};

/// Largest checkpoint a receiver accepts.
pub const MAX_CHECKPOINT_BYTES: u64 = 1 << 40;

/// Receives a checkpoint streamed in chunks into a temporary file of the engine.
#[derive(Debug)]
pub struct CheckpointReceiver {
    engine: Engine,
    file_id: u64,
    tmp: PathBuf,
    file: Option<Arc<dyn File>>,
    next_offset: u64,
    file_bytes: Option<u64>,
}

/// A received checkpoint, durable under its final name and fully verified; install it
/// with [`Engine::install_checkpoint`].
#[derive(Debug)]
pub struct ReceivedCheckpoint {
    pub(crate) file_id: u64,
    pub(crate) file: CheckpointFile,
}

impl ReceivedCheckpoint {
    /// The verified file.
    pub fn file(&self) -> &CheckpointFile {
        &self.file
    }
}

impl CheckpointReceiver {
    /// A receiver writing into `file`, the temporary file `tmp` of checkpoint `file_id`.
    pub(crate) fn new(
        engine: Engine,
        file_id: u64,
        tmp: PathBuf,
        file: Arc<dyn File>,
    ) -> CheckpointReceiver {
        CheckpointReceiver {
            engine,
            file_id,
            tmp,
            file: Some(file),
            next_offset: 0,
            file_bytes: None,
        }
    }

    /// Appends the next chunk; chunks must come in order.
    pub fn push(&mut self, chunk: &CheckpointChunk) -> Result<()> {
        if chunk.offset != self.next_offset {
            return Err(Error::ChunkOutOfOrder { expected: self.next_offset, got: chunk.offset });
        }
        if chunk.file_bytes > MAX_CHECKPOINT_BYTES {
            return Err(Error::TooLarge {
                what: "checkpoint",
                len: chunk.file_bytes,
                max: MAX_CHECKPOINT_BYTES,
            });
        }
        let total = *self.file_bytes.get_or_insert(chunk.file_bytes);
        let end = chunk.offset + chunk.data.len() as u64;
        if total != chunk.file_bytes || end > total {
            return Err(Error::corruption(
                &self.tmp,
                chunk.offset,
                "chunk disagrees on the file size",
            ));
        }
        let file = self.file.as_ref().ok_or(Error::Closed)?;
        file.write_at(chunk.offset, &chunk.data)
            .map_err(|e| self.engine.inner.fail("write", &self.tmp, &e))?;
        self.next_offset = end;
        Ok(())
    }

    /// Checks the file is complete and valid, makes it durable under its final name.
    pub fn finish(mut self) -> Result<ReceivedCheckpoint> {
        let inner = &self.engine.inner;
        let file = self.file.take().ok_or(Error::Closed)?;
        if Some(self.next_offset) != self.file_bytes {
            return Err(Error::corruption(
                &self.tmp,
                self.next_offset,
                "checkpoint transfer incomplete",
            ));
        }
        let data = file.map().map_err(|e| Error::io("map", &self.tmp, e))?;
        let verified = CheckpointFile::open(data, &self.tmp)?;
        file.sync_data().map_err(|e| inner.fail("fsync", &self.tmp, &e))?;
        let path = inner.dir.join(file_name(self.file_id));
        inner.fs.rename(&self.tmp, &path).map_err(|e| inner.fail("rename", &self.tmp, &e))?;
        inner.fs.sync_dir(&inner.dir).map_err(|e| inner.fail("sync_dir", &inner.dir, &e))?;
        self.tmp = PathBuf::new();
        Ok(ReceivedCheckpoint { file_id: self.file_id, file: verified })
    }
}

impl Drop for CheckpointReceiver {
    /// An unfinished transfer leaves no file behind (recovery would remove it too).
    fn drop(&mut self) {
        if !self.tmp.as_os_str().is_empty() {
            let _ = self.engine.inner.fs.remove_file(&self.tmp);
        }
    }
}
