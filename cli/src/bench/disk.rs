//! The disk's own limits (raw fdatasync rate, write bandwidth), measured in the same run
//! as every figure they sit next to.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::{Duration, Instant};

/// Size of the preallocated file the baselines overwrite.
const FILE_BYTES: u64 = 64 << 20;

/// Creates `path`, writes it full of zeros and syncs it, so that later writes overwrite
/// allocated blocks, as the log's preallocated segments do.
fn preallocated(path: &Path) -> io::Result<File> {
    let file = OpenOptions::new().read(true).write(true).create(true).truncate(true).open(path)?;
    let zeros = vec![0u8; 1 << 20];
    for i in 0..FILE_BYTES / (1 << 20) {
        file.write_all_at(&zeros, i << 20)?;
    }
    file.sync_all()?;
    Ok(file)
}

/// One thread overwriting a preallocated file with `block`-byte writes, each followed
/// by fdatasync, for `duration`. Returns (syncs per second, bytes per second).
fn overwrite_and_sync(dir: &Path, block: usize, duration: Duration) -> io::Result<(f64, f64)> {
    let path = dir.join("raw-baseline.dat");
    let file = preallocated(&path)?;
    let buf = vec![0xA5u8; block];
    let slots = FILE_BYTES / block as u64;
    let start = Instant::now();
    let mut ops = 0u64;
    while start.elapsed() < duration || ops < 3 {
        file.write_all_at(&buf, (ops % slots) * block as u64)?;
        file.sync_data()?;
        ops += 1;
    }
    let secs = start.elapsed().as_secs_f64();
    drop(file);
    std::fs::remove_file(&path)?;
    Ok((ops as f64 / secs, (ops * block as u64) as f64 / secs))
}

/// fdatasyncs per second of one thread overwriting 4 KiB blocks.
pub fn raw_fdatasync_ops_per_sec(dir: &Path, duration: Duration) -> io::Result<f64> {
    overwrite_and_sync(dir, 4096, duration).map(|(ops, _)| ops)
}

/// Bytes per second of one thread overwriting 1 MiB blocks, each followed by fdatasync.
pub fn raw_bandwidth_bytes_per_sec(dir: &Path, duration: Duration) -> io::Result<f64> {
    overwrite_and_sync(dir, 1 << 20, duration).map(|(_, bytes)| bytes)
}
