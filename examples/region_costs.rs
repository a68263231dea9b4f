//! What keys and regions cost a store: resident memory per key and per region, and the
//! put rate and CPU per put with many regions (issue 13's memory and many-region rows).
//!
//! Run it with `cargo run --release --example region_costs -- <what>`, one measurement
//! per process (resident memory never shrinks back, so each starts from a fresh one):
//!
//! - `keys [N]`: one store, one region; the resident set before and after loading `N`
//!   keys (default 1,000,000) of 24 B with 150 B values; prints bytes per key.
//! - `regions [N] [STORES]`: `STORES` stores (default 1); the resident set with one
//!   region, then with `N` (default 10,000); prints bytes per region (every store's
//!   replica of it included).
//! - `puts [N] [SECONDS]`: three stores, `N` regions (default 10,000), 64 clients
//!   putting 128 B values to random regions; prints puts per second, the process's
//!   CPU (user and system, clients included) per put, and per put over the three
//!   stores: WAL records, fsyncs, writer tasks and apply rounds.

#![allow(
    clippy::cast_precision_loss,
    reason = "byte and operation counts become f64 ratios; 2^52 is far beyond any run"
)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use regionkv::{Cluster, WriteBatch};

type Res<T> = Result<T, Box<dyn std::error::Error>>;

/// The resident set of this process in bytes (`/proc/self/statm`, in pages).
fn rss_bytes() -> Res<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm")?;
    let pages: u64 = statm.split_whitespace().nth(1).ok_or("statm")?.parse()?;
    Ok(pages * 4096)
}

/// The resident anonymous and file-backed memory of this process in bytes
/// (`/proc/self/status`: `RssAnon`, `RssFile`).
fn rss_parts() -> Res<(u64, u64)> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let field = |name: &str| -> u64 {
        let line = status.lines().find(|l| l.starts_with(name)).unwrap_or_default();
        let kib = line.split_whitespace().nth(1).and_then(|v| v.parse().ok());
        kib.unwrap_or(0) * 1024
    };
    Ok((field("RssAnon:"), field("RssFile:")))
}

/// CPU seconds of this process so far, user and system (`/proc/self/stat`, ticks of
/// 1/100 s).
fn cpu_seconds() -> Res<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat")?;
    let rest = stat.rsplit_once(") ").map(|(_, r)| r).ok_or("stat")?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|t| t.parse::<u64>().ok()).unwrap_or(0);
    Ok((ticks(11) + ticks(12)) as f64 / 100.0)
}

fn region_key(i: usize) -> String {
    format!("r{i:05}")
}

/// Splits the one region into `n` and waits until each has a leader.
fn make_regions(cluster: &Cluster, n: usize) -> Res<()> {
    if n > 1 {
        let keys: Vec<String> = (1..n).map(region_key).collect();
        cluster.split_keys(&keys)?;
    }
    loop {
        let regions = cluster.regions();
        if regions.len() == n && regions.iter().all(|r| r.leader.is_some()) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Lets the stores settle (elections, hibernation) before a resident-set reading.
fn settle() {
    std::thread::sleep(Duration::from_secs(3));
}

fn keys(n: usize) -> Res<()> {
    let dir = tempfile::tempdir()?;
    let cluster = Cluster::builder().dir(dir.path()).stores(1).build()?;
    let db = cluster.db();
    db.put("warm-up", "v")?;
    settle();
    let empty = rss_bytes()?;
    let empty_parts = rss_parts()?;
    let threads = 8;
    let per_thread = n / threads;
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let db = db.clone();
            std::thread::spawn(move || -> Result<(), regionkv::Error> {
                let value = [b'v'; 150];
                for chunk in (0..per_thread).collect::<Vec<_>>().chunks(200) {
                    let mut batch = WriteBatch::new();
                    for i in chunk {
                        // 24 bytes: "k" + thread (2) + index (21).
                        batch.put(format!("k{t:02}{i:021}"), value.as_slice());
                    }
                    db.write(batch)?;
                }
                Ok(())
            })
        })
        .collect();
    for h in handles {
        h.join().map_err(|_| "loader panicked")??;
    }
    settle();
    let loaded = rss_bytes()?;
    let loaded_parts = rss_parts()?;
    let keys = per_thread * threads;
    println!(
        "keys: {keys} of 24 B + 150 B; RSS empty {:.1} MiB, loaded {:.1} MiB: {:.0} bytes per key",
        empty as f64 / 1_048_576.0,
        loaded as f64 / 1_048_576.0,
        loaded.saturating_sub(empty) as f64 / keys as f64
    );
    println!(
        "  of which anonymous {:.0} and file-backed {:.0} bytes per key",
        loaded_parts.0.saturating_sub(empty_parts.0) as f64 / keys as f64,
        loaded_parts.1.saturating_sub(empty_parts.1) as f64 / keys as f64
    );
    cluster.shutdown()?;
    Ok(())
}

fn regions(n: usize, stores: usize) -> Res<()> {
    let dir = tempfile::tempdir()?;
    let cluster = Cluster::builder().dir(dir.path()).stores(stores).build()?;
    make_regions(&cluster, 1)?;
    settle();
    let one = rss_bytes()?;
    let one_parts = rss_parts()?;
    let t0 = Instant::now();
    make_regions(&cluster, n)?;
    let setup = t0.elapsed();
    settle();
    let many = rss_bytes()?;
    let many_parts = rss_parts()?;
    println!(
        "regions: {n} on {stores} store(s) (setup {:.1} s); RSS with 1 region {:.1} MiB, with {n} {:.1} MiB: {:.0} bytes per region",
        setup.as_secs_f64(),
        one as f64 / 1_048_576.0,
        many as f64 / 1_048_576.0,
        many.saturating_sub(one) as f64 / (n - 1).max(1) as f64
    );
    let per = |a: u64, b: u64| a.saturating_sub(b) as f64 / (n - 1).max(1) as f64;
    println!(
        "  of which anonymous {:.0} and file-backed (mapped checkpoints) {:.0} bytes per region",
        per(many_parts.0, one_parts.0),
        per(many_parts.1, one_parts.1)
    );
    cluster.shutdown()?;
    Ok(())
}

fn puts(n: usize, seconds: f64) -> Res<()> {
    let dir = tempfile::tempdir()?;
    let cluster = Cluster::builder().dir(dir.path()).stores(3).build()?;
    make_regions(&cluster, n)?;
    let db = cluster.db();
    let stop = Arc::new(AtomicBool::new(false));
    let counting = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let clients: Vec<_> = (0..64u64)
        .map(|c| {
            let (db, stop, counting, done) =
                (db.clone(), stop.clone(), counting.clone(), done.clone());
            std::thread::spawn(move || -> Result<(), regionkv::Error> {
                let value = [b'v'; 128];
                let mut rng = 0x9E37_79B9_7F4A_7C15u64 ^ c;
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    let region = (rng % n as u64) as usize;
                    db.put(format!("{}-c{c:02}-{i:08}", region_key(region)), value.as_slice())?;
                    if counting.load(Ordering::Relaxed) {
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    i += 1;
                }
                Ok(())
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(1)); // warm-up
    let totals = |cluster: &Cluster| {
        cluster.metrics().iter().fold([0u64; 4], |t, (_, m)| {
            [
                t[0] + m.wal.records,
                t[1] + m.wal.fsyncs,
                t[2] + m.writer_tasks,
                t[3] + m.apply.rounds,
            ]
        })
    };
    let counts0 = totals(&cluster);
    let (cpu0, t0) = (cpu_seconds()?, Instant::now());
    counting.store(true, Ordering::Relaxed);
    // For a profiler attached from outside (`perf stat -p`): the window starts now.
    println!("measuring for {seconds} s, pid {}", std::process::id());
    std::thread::sleep(Duration::from_secs_f64(seconds));
    counting.store(false, Ordering::Relaxed);
    let (cpu, elapsed) = (cpu_seconds()? - cpu0, t0.elapsed().as_secs_f64());
    let counts = totals(&cluster);
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().map_err(|_| "client panicked")??;
    }
    let ops = done.load(Ordering::Relaxed) as f64;
    println!(
        "puts: {n} regions, 64 clients, {elapsed:.1} s: {:.0} puts/s, {:.1} us CPU per put",
        ops / elapsed,
        1e6 * cpu / ops.max(1.0)
    );
    let per_put = |i: usize| (counts[i] - counts0[i]) as f64 / ops.max(1.0);
    println!(
        "  per put, 3 stores: {:.2} WAL records, {:.2} fsyncs, {:.2} writer tasks, {:.2} apply rounds",
        per_put(0),
        per_put(1),
        per_put(2),
        per_put(3)
    );
    cluster.shutdown()?;
    Ok(())
}

fn main() -> Res<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let count = |i: usize, default: usize| -> usize {
        args.get(i).and_then(|a| a.parse().ok()).unwrap_or(default)
    };
    let seconds = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(5.0);
    match args.first().map(String::as_str) {
        Some("keys") => keys(count(1, 1_000_000)),
        Some("regions") => regions(count(1, 10_000), count(2, 1)),
        Some("puts") => puts(count(1, 10_000), seconds),
        _ => Err("usage: region_costs keys [N] | regions [N] [STORES] | puts [N] [SECONDS]".into()),
    }
}
