//! Checkpoints: a consistent image of one region at an applied index, as a file format
//! and as files in the engine's directory, written, read back and received.
//!
//! - `format`: the file layout (drawn there), its encoder, and [`CheckpointFile`], a
//!   mapped file verified block by block, streamed in bounded [`CheckpointChunks`].
//! - `writer`: writing one file from a snapshot: temporary name, direct I/O, fsync,
//!   rename, directory fsync.
//! - `load`: mapping a file the manifest refers to and loading its parts into the
//!   memtable.
//! - `receive`: a [`CheckpointReceiver`] that takes the chunks another store streams
//!   and yields a verified, durable [`ReceivedCheckpoint`] to install.
//!
//! A checkpoint file is named by its number (`<16 hex digits>.ckpt`) and never changes
//! once it has that name; the manifest says which files hold which region's image.

mod format;
mod load;
mod receive;
mod writer;

pub use format::{
    CHECKPOINT_FORMAT_VERSION, CheckpointChunk, CheckpointChunks, CheckpointFile, CheckpointHeader,
    CheckpointStats, OLDEST_CHECKPOINT_VERSION, SnapshotMeta,
};
pub(crate) use format::{Encoder, check_header_fits};
pub(crate) use load::{load_part, map_checkpoint, open_and_load_part};
pub use receive::{CheckpointReceiver, MAX_CHECKPOINT_BYTES, ReceivedCheckpoint};
pub(crate) use writer::CheckpointWrite;

/// Suffix of checkpoint files.
const CHECKPOINT_SUFFIX: &str = ".ckpt";
/// Suffix of files being written; removed by recovery.
pub(crate) const TEMP_SUFFIX: &str = ".tmp";

/// The name of checkpoint file `file_id`.
pub(crate) fn file_name(file_id: u64) -> String {
    format!("{file_id:016x}{CHECKPOINT_SUFFIX}")
}

/// The number of the checkpoint file called `name`, if it is one.
pub(crate) fn parse_file_name(name: &str) -> Option<u64> {
    let hex = name.strip_suffix(CHECKPOINT_SUFFIX)?;
    (hex.len() == 16).then(|| u64::from_str_radix(hex, 16).ok()).flatten()
}
