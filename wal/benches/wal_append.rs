//! Group-commit appends with fsync on, next to the raw baseline of the same disk: one
//! thread overwriting a preallocated file with 4 KiB writes + fdatasync.
//!
//! `cargo bench -p regionkv-wal --bench wal_append` (set `REGIONKV_BENCH_DIR` to measure
//! another disk than the temporary directory's).

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use regionkv_wal::{RealFs, Wal, WalOptions};

fn bench_dir() -> tempfile::TempDir {
    match std::env::var_os("REGIONKV_BENCH_DIR") {
        Some(dir) => tempfile::tempdir_in(PathBuf::from(dir)).expect("bench dir"),
        None => tempfile::tempdir().expect("temp dir"),
    }
}

/// The disk's limit: 4 KiB overwrites of a preallocated file, each fdatasynced.
fn raw_fdatasync(c: &mut Criterion) {
    let dir = bench_dir();
    let path = dir.path().join("raw.dat");
    let file =
        OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&path).unwrap();
    let slots = 4096u64;
    let block = vec![0u8; 4096];
    for slot in 0..slots {
        file.write_all_at(&block, slot * 4096).unwrap();
    }
    file.sync_all().unwrap();
    let mut group = c.benchmark_group("raw");
    group.throughput(Throughput::Elements(1));
    let mut slot = 0;
    group.bench_function("fdatasync_4k_overwrite", |b| {
        b.iter(|| {
            file.write_all_at(&block, (slot % slots) * 4096).unwrap();
            file.sync_data().unwrap();
            slot += 1;
        });
    });
    group.finish();
}

/// `writers` threads share `iters` appends of `record` bytes; returns the wall time.
fn appends(wal: &Wal, writers: usize, record: usize, iters: u64) -> Duration {
    let per_writer = iters.div_ceil(writers as u64);
    let barrier = Arc::new(Barrier::new(writers + 1));
    let threads: Vec<_> = (0..writers)
        .map(|_| {
            let (wal, barrier) = (wal.clone(), barrier.clone());
            std::thread::spawn(move || {
                let payload = vec![7u8; record];
                barrier.wait();
                for _ in 0..per_writer {
                    wal.append(&payload).unwrap();
                }
            })
        })
        .collect();
    barrier.wait();
    let start = Instant::now();
    for t in threads {
        t.join().unwrap();
    }
    start.elapsed()
}

fn wal_append(c: &mut Criterion) {
    for record in [128usize, 4096] {
        let mut group = c.benchmark_group(format!("wal_append_{record}B"));
        group.sample_size(10).measurement_time(Duration::from_secs(3));
        for writers in [1usize, 4, 16, 64] {
            let dir = bench_dir();
            let wal = Wal::open(Arc::new(RealFs), dir.path(), WalOptions::default()).unwrap();
            group.throughput(Throughput::Elements(1));
            group.bench_with_input(
                BenchmarkId::from_parameter(writers),
                &writers,
                |b, &writers| {
                    b.iter_custom(|iters| {
                        let elapsed = appends(&wal, writers, record, iters);
                        // Steady state: purged segments are recycled, as in a store.
                        wal.purge_below(wal.end_lsn()).unwrap();
                        elapsed
                    });
                },
            );
        }
        group.finish();
    }
}

criterion_group!(benches, raw_fdatasync, wal_append);
criterion_main!(benches);
