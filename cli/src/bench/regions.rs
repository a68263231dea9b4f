//! `regionkv bench regions`: many regions per store.
//!
//! Three stores in this process, real files with fsync on, 128 B values, 64 clients
//! each writing to random regions: the put rate with 1, 100, 1,000 and 10,000 regions
//! per store (all regions on all three stores), measured in the same run so that the
//! ratio to the one-region rate is the figure. Then, on the 10,000-region cluster left
//! idle, the CPU the whole process uses (hibernated regions cost nothing per tick),
//! and the latency of single splits and merges on a small cluster.

use std::collections::BTreeMap;
use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use serde::Serialize;

use regionkv::Cluster;

/// Regions per store measured.
pub const REGIONS: [usize; 4] = [1, 100, 1000, 10_000];
/// Client threads.
pub const CLIENTS: usize = 64;
/// Value size of every put.
pub const VALUE_BYTES: usize = 128;

/// Figures of one `regionkv bench regions` run.
#[derive(Clone, Debug, Serialize)]
pub struct RegionsBenchReport {
    /// Acknowledged puts per second with 64 clients, keyed by regions per store.
    pub put_ops_per_sec_by_regions: BTreeMap<String, f64>,
    /// Median put latency in microseconds, keyed by regions per store.
    pub put_p50_us_by_regions: BTreeMap<String, f64>,
    /// 99th-percentile put latency in microseconds, keyed by regions per store.
    pub put_p99_us_by_regions: BTreeMap<String, f64>,
    /// The rate with the most regions over the rate with one (target >= 0.5).
    pub put_most_vs_one_region: f64,
    /// CPU of the whole process (3 stores) holding the most regions, idle, in percent
    /// of one core (target < 5).
    pub idle_cpu_percent_10000: f64,
    /// Seconds the idle CPU was measured for.
    pub idle_seconds: f64,
    /// Share of replicas hibernating when the idle measurement began.
    pub idle_hibernated_share: f64,
    /// Median time of one split (allocate an id, propose, apply on the leader).
    pub split_ms_p50: f64,
    /// Median time of one merge (prepare, wait for every replica, commit).
    pub merge_ms_p50: f64,
    /// Seconds it took to create the regions and elect their leaders, by region count.
    pub setup_seconds_by_regions: BTreeMap<String, f64>,
    /// Client threads.
    pub clients: usize,
    /// Seconds each rate was measured for.
    pub seconds_per_figure: f64,
}

fn cluster(dir: &Path) -> io::Result<Cluster> {
    Cluster::builder().dir(dir).stores(3).build().map_err(io::Error::other)
}

fn region_key(i: usize) -> String {
    format!("r{i:05}")
}

/// Cuts the first region into `n` and waits until each has a leader.
fn make_regions(cluster: &Cluster, n: usize) -> io::Result<()> {
    if n > 1 {
        let keys: Vec<String> = (1..n).map(region_key).collect();
        cluster.split_keys(&keys).map_err(io::Error::other)?;
    }
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let regions = cluster.regions();
        if regions.len() == n && regions.iter().all(|r| r.leader.is_some()) {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(io::Error::other(format!("{n} regions did not all elect leaders")));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// What the clients measured over one figure's duration.
struct Puts {
    per_sec: f64,
    p50_us: f64,
    p99_us: f64,
}

/// 64 clients put to random regions for `warmup + duration`; the rate and latency
/// over `duration`.
fn puts(
    cluster: &Cluster,
    regions: usize,
    warmup: Duration,
    duration: Duration,
) -> io::Result<Puts> {
    let db = cluster.db();
    let barrier = Arc::new(Barrier::new(CLIENTS + 1));
    let counted = Arc::new(AtomicU64::new(0));
    let threads: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let (db, barrier, counted) = (db.clone(), barrier.clone(), counted.clone());
            std::thread::spawn(move || -> io::Result<Vec<u32>> {
                let value = vec![b'v'; VALUE_BYTES];
                let mut latencies = Vec::new();
                let mut rng = 0x9E37_79B9_7F4A_7C15u64 ^ (c as u64);
                barrier.wait();
                let start = Instant::now();
                let mut i = 0u64;
                while start.elapsed() < warmup + duration {
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    let region = (rng % regions as u64) as usize;
                    let key = format!("{}-c{c:02}-{i:08}", region_key(region));
                    let t = Instant::now();
                    db.put(key.as_bytes(), &value).map_err(io::Error::other)?;
                    if start.elapsed() >= warmup {
                        counted.fetch_add(1, Ordering::Relaxed);
                        latencies.push(u32::try_from(t.elapsed().as_micros()).unwrap_or(u32::MAX));
                    }
                    i += 1;
                }
                Ok(latencies)
            })
        })
        .collect();
    barrier.wait();
    let mut latencies = Vec::new();
    for t in threads {
        latencies.extend(t.join().map_err(|_| io::Error::other("client panicked"))??);
    }
    latencies.sort_unstable();
    Ok(Puts {
        per_sec: counted.load(Ordering::Relaxed) as f64 / duration.as_secs_f64(),
        p50_us: super::cluster::percentile(&latencies, 50),
        p99_us: super::cluster::percentile(&latencies, 99),
    })
}

/// CPU seconds this process used so far (user + system, all threads).
fn process_cpu_seconds() -> io::Result<f64> {
    super::procs::cpu_us("self").map(|us| us as f64 / 1e6)
}

/// The share of replicas that hibernate.
fn hibernated_share(cluster: &Cluster) -> f64 {
    let (mut all, mut quiet) = (0usize, 0usize);
    for (_, peers) in cluster.status() {
        all += peers.len();
        quiet += peers.iter().filter(|p| p.hibernated).count();
    }
    quiet as f64 / all.max(1) as f64
}

/// Waits until nearly every replica hibernates, then measures the process's CPU.
fn idle_cpu(cluster: &Cluster, seconds: f64) -> io::Result<(f64, f64)> {
    let deadline = Instant::now() + Duration::from_secs(120);
    while hibernated_share(cluster) < 0.99 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(500));
    }
    let share = hibernated_share(cluster);
    let before = process_cpu_seconds()?;
    let start = Instant::now();
    std::thread::sleep(Duration::from_secs_f64(seconds));
    let cpu = process_cpu_seconds()? - before;
    Ok((100.0 * cpu / start.elapsed().as_secs_f64(), share))
}

fn median_ms(mut samples: Vec<Duration>) -> f64 {
    samples.sort_unstable();
    samples.get(samples.len() / 2).map_or(0.0, |d| d.as_secs_f64() * 1e3)
}

/// Times `count` single splits, then merges them all back.
fn split_and_merge(dir: &Path, count: usize) -> io::Result<(f64, f64)> {
    let cluster = cluster(dir)?;
    let db = cluster.db();
    for i in 0..=count {
        db.put(format!("{}-x", region_key(i)), b"v").map_err(io::Error::other)?;
    }
    let mut splits = Vec::new();
    for i in 1..=count {
        let t0 = Instant::now();
        cluster.split(region_key(i)).map_err(io::Error::other)?;
        splits.push(t0.elapsed());
    }
    let mut merges = Vec::new();
    loop {
        let regions = cluster.regions();
        if regions.len() < 2 {
            break;
        }
        let (left, right) =
            (regions[regions.len() - 2].region.id, regions[regions.len() - 1].region.id);
        let t0 = Instant::now();
        cluster.merge(left, right).map_err(io::Error::other)?;
        merges.push(t0.elapsed());
    }
    cluster.shutdown().map_err(io::Error::other)?;
    Ok((median_ms(splits), median_ms(merges)))
}

/// Runs the measurements in `dir`: each rate for `seconds`, the idle CPU for
/// `idle_seconds`, with the region counts given.
pub fn run(
    dir: &Path,
    seconds: f64,
    idle_seconds: f64,
    region_counts: &[usize],
) -> io::Result<RegionsBenchReport> {
    let duration = Duration::from_secs_f64(seconds);
    let mut put_ops_per_sec_by_regions = BTreeMap::new();
    let mut put_p50_us_by_regions = BTreeMap::new();
    let mut put_p99_us_by_regions = BTreeMap::new();
    let mut setup_seconds_by_regions = BTreeMap::new();
    let mut idle = (0.0, 0.0);
    let most = region_counts.iter().copied().max().unwrap_or(1);
    for &n in region_counts {
        let cluster_dir = dir.join(format!("regions-{n}"));
        let cluster = cluster(&cluster_dir)?;
        let t0 = Instant::now();
        make_regions(&cluster, n)?;
        setup_seconds_by_regions.insert(n.to_string(), t0.elapsed().as_secs_f64());
        let measured = puts(&cluster, n, Duration::from_secs(1), duration)?;
        put_ops_per_sec_by_regions.insert(n.to_string(), measured.per_sec);
        put_p50_us_by_regions.insert(n.to_string(), measured.p50_us);
        put_p99_us_by_regions.insert(n.to_string(), measured.p99_us);
        if n == most {
            idle = idle_cpu(&cluster, idle_seconds)?;
        }
        cluster.shutdown().map_err(io::Error::other)?;
        std::fs::remove_dir_all(&cluster_dir)?;
    }
    let (split_ms_p50, merge_ms_p50) = split_and_merge(&dir.join("split-merge"), 20)?;
    let one = put_ops_per_sec_by_regions.get("1").copied().unwrap_or(0.0);
    let at_most = put_ops_per_sec_by_regions.get(&most.to_string()).copied().unwrap_or(0.0);
    Ok(RegionsBenchReport {
        put_most_vs_one_region: if one > 0.0 { at_most / one } else { 0.0 },
        put_ops_per_sec_by_regions,
        put_p50_us_by_regions,
        put_p99_us_by_regions,
        idle_cpu_percent_10000: idle.0,
        idle_seconds,
        idle_hibernated_share: idle.1,
        split_ms_p50,
        merge_ms_p50,
        setup_seconds_by_regions,
        clients: CLIENTS,
        seconds_per_figure: seconds,
    })
}

impl super::Report for RegionsBenchReport {
    fn chart(&self) -> Option<super::plot::Chart> {
        let title = format!("regionkv bench regions: puts at {} clients", self.clients);
        let chart = super::plot::Chart::new(&title, "regions per store")
            .rate("puts", &self.put_ops_per_sec_by_regions)
            .latency("put p50", &self.put_p50_us_by_regions)
            .latency("put p99", &self.put_p99_us_by_regions);
        Some(chart)
    }

    fn print_table(&self) {
        println!(
            "Many regions (3 stores in one process, fsync on, {CLIENTS} clients, 128 B values):"
        );
        println!(
            "  {:>8} {:>12} {:>10} {:>10} {:>10} {:>10}",
            "regions", "puts/s", "x 1 region", "p50 ms", "p99 ms", "setup s"
        );
        let one = self.put_ops_per_sec_by_regions.get("1").copied().unwrap_or(0.0);
        let mut rows: Vec<(&String, &f64)> = self.put_ops_per_sec_by_regions.iter().collect();
        rows.sort_by_key(|(k, _)| k.parse::<usize>().unwrap_or(0));
        for (k, rate) in rows {
            let ms = |m: &BTreeMap<String, f64>| m.get(k).copied().unwrap_or(0.0) / 1000.0;
            println!(
                "  {:>8} {:>12.0} {:>10.2} {:>10.2} {:>10.2} {:>10.1}",
                k,
                rate,
                if one > 0.0 { rate / one } else { 0.0 },
                ms(&self.put_p50_us_by_regions),
                ms(&self.put_p99_us_by_regions),
                self.setup_seconds_by_regions.get(k).copied().unwrap_or(0.0)
            );
        }
        println!(
            "  idle, most regions: {:.2}% of one core over {:.0} s ({:.1}% of replicas hibernating)",
            self.idle_cpu_percent_10000,
            self.idle_seconds,
            100.0 * self.idle_hibernated_share
        );
        println!(
            "  split p50: {:.1} ms, merge p50: {:.1} ms",
            self.split_ms_p50, self.merge_ms_p50
        );
    }
}
