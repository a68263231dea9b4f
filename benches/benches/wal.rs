//! The log bench: `writers` threads each appending 128-byte entries and waiting for each
//! to be synced, on regionkv's WAL and on raft-engine, and, on the same 128 B, durable
//! puts to a 3-store regionkv cluster in this process: one report shows the WAL against
//! its peer and what replication keeps of the bare WAL's rate.
//!
//! Rows are `<group>/<system>/<writers>`: `append/regionkv-wal`, `append/raft-engine`,
//! `append/regionkv-3stores-put`. Each system starts fresh in a temporary directory.

use std::path::Path;
use std::sync::Barrier;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use criterion::{
    BenchmarkId, Criterion, SamplingMode, Throughput, criterion_group, criterion_main,
};
use regionkv::layers::wal::{RealFs, Wal, WalOptions};
use tempfile::TempDir;

/// Writer-thread counts.
const WRITERS: [usize; 2] = [1, 64];
/// Bytes of every appended entry (and of every put's value).
const ENTRY_BYTES: usize = 128;
/// The most writer threads any row runs: raft-engine gives each its own Raft group.
const MAX_WRITERS: usize = 64;
/// How often (in appends of one writer) the logs drop what they hold: regionkv's WAL
/// purges below its last append, raft-engine compacts the writer's group, as a store
/// whose regions checkpoint does; both keep their memory and disk bounded.
const COMPACT_EVERY: u64 = 4096;

type BenchError = Box<dyn std::error::Error + Send + Sync>;

/// A log under test, as the writers see it.
trait Log: Send + Sync {
    /// Appends one `ENTRY_BYTES` entry for writer `writer` and returns once it is synced.
    fn append(&self, writer: usize, entry: &[u8]) -> Result<(), BenchError>;
}

/// The systems, in the order of the report's rows.
#[derive(Clone, Copy, Debug)]
enum System {
    /// regionkv's WAL (`regionkv::layers::wal`): group commit, one fdatasync per group.
    RegionkvWal,
    /// raft-engine 0.4: one `LogBatch` of one entry per append, written with `sync`;
    /// each writer is its own Raft group.
    RaftEngine,
    /// An in-process `regionkv::Cluster` of 3 stores: a durable put of a new key.
    Regionkv3StoresPut,
}

impl System {
    const ALL: [System; 3] = [System::RegionkvWal, System::RaftEngine, System::Regionkv3StoresPut];

    fn name(self) -> &'static str {
        match self {
            System::RegionkvWal => "regionkv-wal",
            System::RaftEngine => "raft-engine",
            System::Regionkv3StoresPut => "regionkv-3stores-put",
        }
    }

    fn open(self) -> Result<Opened, BenchError> {
        let dir = tempfile::tempdir()?;
        let log: Box<dyn Log> = match self {
            System::RegionkvWal => Box::new(RegionkvWal::open(dir.path())?),
            System::RaftEngine => Box::new(RaftEngine::open(dir.path())?),
            System::Regionkv3StoresPut => Box::new(Regionkv3Stores::open(dir.path())?),
        };
        Ok(Opened { log, _dir: dir })
    }
}

/// An open system and the directory holding its files.
struct Opened {
    // Field order is drop order: the system closes before its directory is removed.
    log: Box<dyn Log>,
    _dir: TempDir,
}

/// Per-writer append counters (raft-engine's next index, regionkv's next key).
struct Counters([AtomicU64; MAX_WRITERS]);

impl Counters {
    fn new() -> Counters {
        Counters(std::array::from_fn(|_| AtomicU64::new(1)))
    }

    /// Writer `writer`'s next number (each writer is one thread at a time).
    fn next(&self, writer: usize) -> u64 {
        self.0[writer].fetch_add(1, Ordering::Relaxed)
    }
}

struct RegionkvWal {
    wal: Wal,
    appends: Counters,
}

impl RegionkvWal {
    fn open(dir: &Path) -> Result<RegionkvWal, BenchError> {
        let wal = Wal::open(std::sync::Arc::new(RealFs), dir.join("wal"), WalOptions::default())?;
        // Let the background thread prepare its spare segments before any measurement.
        let ready = Instant::now();
        while wal.stats().spare_segments < wal.options().spare_segments
            && ready.elapsed() < Duration::from_secs(10)
        {
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(RegionkvWal { wal, appends: Counters::new() })
    }
}

impl Drop for RegionkvWal {
    fn drop(&mut self) {
        if let Err(e) = self.wal.close() {
            eprintln!("regionkv WAL close failed: {e}");
        }
    }
}

impl Log for RegionkvWal {
    fn append(&self, writer: usize, entry: &[u8]) -> Result<(), BenchError> {
        let lsn = self.wal.append(entry)?;
        if writer == 0 && self.appends.next(0).is_multiple_of(COMPACT_EVERY) {
            self.wal.purge_below(lsn)?;
        }
        Ok(())
    }
}

/// raft-engine's entry type: raft-rs's `Entry` (a protobuf message).
struct EntryExt;

impl raft_engine::MessageExt for EntryExt {
    type Entry = raft::eraftpb::Entry;

    fn index(entry: &raft::eraftpb::Entry) -> u64 {
        entry.index
    }
}

struct RaftEngine {
    engine: raft_engine::Engine,
    next_index: Counters,
}

impl RaftEngine {
    fn open(dir: &Path) -> Result<RaftEngine, BenchError> {
        let config = raft_engine::Config {
            dir: dir.join("raft-engine").to_str().ok_or("a temporary path is not UTF-8")?.into(),
            ..raft_engine::Config::default()
        };
        Ok(RaftEngine { engine: raft_engine::Engine::open(config)?, next_index: Counters::new() })
    }
}

impl Log for RaftEngine {
    fn append(&self, writer: usize, entry: &[u8]) -> Result<(), BenchError> {
        let group = writer as u64 + 1;
        let index = self.next_index.next(writer);
        let mut e = raft::eraftpb::Entry::default();
        e.index = index;
        e.term = 1;
        e.data = regionkv::Bytes::copy_from_slice(entry);
        let mut batch = raft_engine::LogBatch::default();
        batch.add_entries::<EntryExt>(group, &[e])?;
        self.engine.write(&mut batch, true)?;
        if index.is_multiple_of(COMPACT_EVERY) {
            self.engine.compact_to(group, index);
        }
        Ok(())
    }
}

struct Regionkv3Stores {
    cluster: regionkv::Cluster,
    db: regionkv::Db,
    next_key: Counters,
}

impl Regionkv3Stores {
    fn open(dir: &Path) -> Result<Regionkv3Stores, BenchError> {
        let cluster = regionkv::Cluster::builder().dir(dir).stores(3).build()?;
        let db = cluster.db();
        // The first put waits out the election, so no measurement includes it.
        db.put(b"leader?", b"elected")?;
        Ok(Regionkv3Stores { cluster, db, next_key: Counters::new() })
    }
}

impl Drop for Regionkv3Stores {
    fn drop(&mut self) {
        if let Err(e) = self.cluster.shutdown() {
            eprintln!("regionkv cluster shutdown failed: {e}");
        }
    }
}

impl Log for Regionkv3Stores {
    fn append(&self, writer: usize, entry: &[u8]) -> Result<(), BenchError> {
        let key = format!("w{writer:02}-{:012}", self.next_key.next(writer));
        Ok(self.db.put(key.into_bytes(), entry.to_vec())?)
    }
}

/// `writers` threads, spawned for this measurement, share `ops` appends; the clock runs
/// from their release to the last one's end.
fn measure(log: &dyn Log, writers: usize, ops: u64) -> Duration {
    let writers_u64 = writers as u64;
    let barrier = Barrier::new(writers + 1);
    std::thread::scope(|scope| {
        let threads: Vec<_> = (0..writers)
            .map(|w| {
                let share = ops / writers_u64 + u64::from((w as u64) < ops % writers_u64);
                let barrier = &barrier;
                scope.spawn(move || {
                    let entry = [w as u8; ENTRY_BYTES];
                    barrier.wait();
                    for _ in 0..share {
                        log.append(w, &entry).unwrap_or_else(|e| panic!("an append failed: {e}"));
                    }
                })
            })
            .collect();
        barrier.wait();
        let start = Instant::now();
        for t in threads {
            t.join().expect("a writer panicked (its message is above)");
        }
        start.elapsed()
    })
}

fn append(c: &mut Criterion) {
    let mut group = c.benchmark_group("append");
    group.sampling_mode(SamplingMode::Flat);
    group.throughput(Throughput::Elements(1));
    for system in System::ALL {
        let mut opened: Option<Opened> = None;
        for writers in WRITERS {
            group.bench_function(BenchmarkId::new(system.name(), writers), |b| {
                let opened = opened.get_or_insert_with(|| {
                    system.open().unwrap_or_else(|e| panic!("{}: open failed: {e}", system.name()))
                });
                b.iter_custom(|ops| measure(&*opened.log, writers, ops));
            });
        }
    }
    group.finish();
}

/// Short by default, like the `stack` bench; the command line overrides these.
fn config() -> Criterion {
    Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .configure_from_args()
}

criterion_group! {
    name = wal;
    config = config();
    targets = append
}
criterion_main!(wal);
