//! Criterion benches of the engine, each next to its baseline:
//!
//! - `apply`: one round of 16 puts (16-byte keys, 100-byte values) into a region that
//!   already holds 200 000 keys, against 16 inserts into a bare crossbeam `SkipMap`
//!   of the same size;
//! - `read`: a point get and a scan of 100 keys at a snapshot;
//! - `checkpoint`: writing (durably, on the real disk) and verifying a checkpoint of
//!   50 000 keys.
//!
//! `cargo bench -p regionkv-engine --bench engine`; `regionkv bench engine` gives the
//! same picture at 1 M keys with ratios.

use std::sync::Arc;
use std::time::Duration;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use crossbeam_skiplist::SkipMap;
use regionkv_engine::{CheckpointFile, Engine, EngineOptions, Epoch, Region, RegionId, StoreId};
use regionkv_wal::RealFs;
use regionkv_wal::fs::{FileSystem, OpenMode};

const ROUND: usize = 16;
const PRELOAD: u64 = 200_000;

fn key(i: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k.copy_from_slice(format!("{:016x}", i.wrapping_mul(0x9E37_79B9_7F4A_7C15)).as_bytes());
    k
}

fn value(i: u64) -> [u8; 100] {
    [(i & 0xff) as u8; 100]
}

fn engine_with(dir: &std::path::Path, keys: u64) -> (Engine, Epoch) {
    let engine = Engine::open(Arc::new(RealFs), dir, EngineOptions::new(StoreId(1))).unwrap();
    engine.insert_region(Region::whole(RegionId(1))).unwrap();
    let epoch = engine.region(RegionId(1)).unwrap().epoch;
    for chunk in (0..keys).collect::<Vec<_>>().chunks(1000) {
        let mut round = engine.begin_round();
        round.prepare_for_region(RegionId(1), epoch).unwrap();
        for &i in chunk {
            round.put(&key(i), &value(i)).unwrap();
        }
        round.commit().unwrap();
    }
    (engine, epoch)
}

fn apply(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let (engine, epoch) = engine_with(dir.path(), PRELOAD);
    let raw = SkipMap::new();
    for i in 0..PRELOAD {
        raw.insert(key(i).to_vec(), value(i).to_vec());
    }
    let mut group = c.benchmark_group("apply");
    group.throughput(Throughput::Elements(ROUND as u64));
    let mut next = PRELOAD;
    group.bench_function("engine_round_of_16", |b| {
        b.iter(|| {
            let mut round = engine.begin_round();
            round.prepare_for_region(RegionId(1), epoch).unwrap();
            for _ in 0..ROUND {
                round.put(&key(next), &value(next)).unwrap();
                next += 1;
            }
            round.commit().unwrap()
        });
    });
    let mut next = PRELOAD;
    group.bench_function("raw_skiplist_16_inserts", |b| {
        b.iter(|| {
            for _ in 0..ROUND {
                raw.insert(key(next).to_vec(), value(next).to_vec());
                next += 1;
            }
        });
    });
    group.finish();

    let mut group = c.benchmark_group("read");
    let snapshot = engine.read_view();
    let mut i = 0u64;
    group.bench_function("get", |b| {
        b.iter(|| {
            i = (i + 7919) % PRELOAD;
            snapshot.get(&key(i))
        });
    });
    group.throughput(Throughput::Elements(100));
    group.bench_function("scan_100", |b| {
        b.iter(|| {
            i = (i + 7919) % PRELOAD;
            snapshot.scan(&key(i), None, 100)
        });
    });
    group.finish();
}

fn checkpoint(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let (engine, _) = engine_with(dir.path(), 50_000);
    let bytes = engine.checkpoint(RegionId(1), 1).unwrap().stats.file_bytes;
    let mut group = c.benchmark_group("checkpoint");
    group.sample_size(10).measurement_time(Duration::from_secs(5));
    group.throughput(Throughput::Bytes(bytes));
    let mut index = 1;
    group.bench_function("write_50k_keys_durably", |b| {
        b.iter(|| {
            index += 1;
            engine.checkpoint(RegionId(1), index).unwrap()
        });
    });
    let path = engine.checkpoint(RegionId(1), index + 1).unwrap().path;
    group.bench_function("map_and_verify_50k_keys", |b| {
        b.iter_batched(
            || RealFs.open(&path, OpenMode::Existing).unwrap().map().unwrap(),
            |data| CheckpointFile::open(data, &path).unwrap(),
            BatchSize::LargeInput,
        );
    });
    group.finish();
}

criterion_group!(benches, apply, checkpoint);
criterion_main!(benches);
