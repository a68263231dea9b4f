//! A load driver for profiling group commit: `writers` threads each append 128-byte
//! records and wait for each to be durable, for a few seconds; prints the rate and the
//! WAL's counters (groups, fsyncs, group sizes, fsync latency).
//!
//! `cargo run -p regionkv-wal --release --example append_load -- [writers] [seconds]`
//! (set `REGIONKV_BENCH_DIR` to measure another disk than the temporary directory's).
//! Run it under `perf stat`, `perf record -g` or `strace -c -f` to see where time goes.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use regionkv_wal::{RealFs, Wal, WalOptions};

#[allow(clippy::cast_precision_loss, reason = "rates for a person to read")]
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let writers: usize = args.next().map_or(Ok(64), |a| a.parse())?;
    let seconds: f64 = args.next().map_or(Ok(3.0), |a| a.parse())?;
    let dir = match std::env::var_os("REGIONKV_BENCH_DIR") {
        Some(dir) => tempfile::tempdir_in(dir)?,
        None => tempfile::tempdir()?,
    };
    let wal = Wal::open(Arc::new(RealFs), dir.path().join("wal"), WalOptions::default())?;
    let ready = Instant::now();
    while wal.stats().spare_segments < wal.options().spare_segments
        && ready.elapsed() < Duration::from_secs(10)
    {
        std::thread::sleep(Duration::from_millis(5));
    }
    let stop = Arc::new(AtomicBool::new(false));
    let appends = Arc::new(AtomicU64::new(0));
    let barrier = Arc::new(Barrier::new(writers + 1));
    let threads: Vec<_> = (0..writers)
        .map(|w| {
            let (wal, stop, appends, barrier) =
                (wal.clone(), stop.clone(), appends.clone(), barrier.clone());
            std::thread::spawn(move || {
                let payload = [w as u8; 128];
                barrier.wait();
                let mut mine = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let lsn = wal.append(&payload).expect("append");
                    mine += 1;
                    if w == 0 && mine.is_multiple_of(4096) {
                        wal.purge_below(lsn).expect("purge");
                    }
                }
                appends.fetch_add(mine, Ordering::Relaxed);
            })
        })
        .collect();
    let before = wal.stats();
    barrier.wait();
    let start = Instant::now();
    std::thread::sleep(Duration::from_secs_f64(seconds));
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().expect("a writer panicked");
    }
    let elapsed = start.elapsed().as_secs_f64();
    let stats = wal.stats();
    let n = appends.load(Ordering::Relaxed);
    let groups = stats.groups - before.groups;
    println!(
        "writers {writers}: {:.0} appends/s, {groups} groups, {} fsyncs, {:.1} records/group \
         (p50 {}, p99 {}, max {}), fsync p50 {} us p99 {} us",
        n as f64 / elapsed,
        stats.fsyncs - before.fsyncs,
        n as f64 / groups.max(1) as f64,
        stats.group_records.p50(),
        stats.group_records.p99(),
        stats.group_records.max(),
        stats.fsync_latency_us.p50(),
        stats.fsync_latency_us.p99(),
    );
    wal.close()?;
    Ok(())
}
