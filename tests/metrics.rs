//! Metrics through the public API: after writes through a `Cluster`, the stores'
//! metrics account for every acknowledged write, every leader and every region, and
//! the WAL reports its fsyncs and group sizes. No timing thresholds: latencies are only
//! checked to be counted and consistent.

use std::time::{Duration, Instant};

use regionkv::{Cluster, StateRole, StoreId, StoreMetrics};

const WRITES: usize = 200;
const WRITERS: usize = 4;

fn key(i: usize) -> String {
    format!("key{i:04}")
}

/// Waits (bounded) until `check` passes on fresh metrics, and returns the last ones.
fn settle(
    cluster: &Cluster,
    mut check: impl FnMut(&[(StoreId, StoreMetrics)]) -> bool,
) -> Vec<(StoreId, StoreMetrics)> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let metrics = cluster.metrics();
        if check(&metrics) || Instant::now() >= deadline {
            return metrics;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// User regions each store leads, from the peers' status.
fn led_per_store(cluster: &Cluster) -> Vec<(StoreId, u64)> {
    let mut out: Vec<(StoreId, u64)> = cluster
        .status()
        .into_iter()
        .map(|(store, peers)| {
            let led = peers
                .iter()
                .filter(|p| p.initialized && p.region.id.0 != 0 && p.role == StateRole::Leader)
                .count() as u64;
            (store, led)
        })
        .collect();
    out.sort_by_key(|(s, _)| *s);
    out
}

#[test]
fn metrics_account_for_every_write_leader_and_region() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let cluster = Cluster::builder()
        .dir(dir.path())
        .stores(3)
        .pollers(2) // a store adds up the figures of its pollers
        .tick_interval(Duration::from_millis(20))
        .build()?;
    cluster.split(key(WRITES / 2))?;
    let regions = cluster.regions().len() as u64;
    assert_eq!(regions, 2);

    let before: u64 = cluster.metrics().iter().map(|(_, m)| m.write_latency_us.count()).sum();
    std::thread::scope(|s| {
        for t in 0..WRITERS {
            let db = cluster.db();
            s.spawn(move || {
                for i in (t..WRITES).step_by(WRITERS) {
                    db.put(key(i), format!("v{i}")).unwrap();
                }
            });
        }
    });

    let metrics = settle(&cluster, |all| {
        all.len() == 3
            && all.iter().all(|(_, m)| m.regions == regions)
            && all.iter().map(|(_, m)| m.leaders).sum::<u64>() == regions
    });
    assert_eq!(metrics.len(), 3, "every store reports");

    // Every acknowledged write was timed, by the store that led its region.
    let acked: u64 = metrics.iter().map(|(_, m)| m.write_latency_us.count()).sum();
    assert!(acked - before >= WRITES as u64, "{acked} writes timed, {WRITES} acknowledged");
    let proposed: u64 = metrics.iter().map(|(_, m)| m.writes_proposed).sum();
    let entries: u64 = metrics.iter().map(|(_, m)| m.entries_proposed).sum();
    assert!(proposed >= acked, "every acknowledged write was proposed: {proposed} < {acked}");
    assert!((1..=proposed).contains(&entries), "{entries} entries for {proposed} writes");

    for (store, m) in &metrics {
        // Every store hosts a replica of every region; leaders are among them.
        assert_eq!(m.regions, regions, "store {store}: {m:?}");
        assert!(m.leaders <= m.regions && m.hibernating <= m.regions, "store {store}: {m:?}");
        assert!(m.applied_lag_max <= m.applied_lag_total, "store {store}: {m:?}");
        let w = &m.write_latency_us;
        assert!(w.p50() <= w.p99() && w.p99() <= w.max(), "store {store}: {w:?}");
        // The WAL: fsyncs timed, groups of at least one record each.
        let wal = &m.wal;
        assert!(wal.fsyncs > 0 && wal.fsync_latency_us.count() > 0, "store {store}: {wal:?}");
        assert!(wal.groups > 0 && wal.group_records.count() > 0, "store {store}: {wal:?}");
        let smallest_group = wal.group_records.buckets().next().map(|(bucket, _)| bucket);
        assert!(smallest_group >= Some(1), "store {store}: an empty group: {wal:?}");
        assert!(wal.group_records.p50() >= 1, "store {store}: {wal:?}");
        assert!(m.apply.rounds > 0, "store {store} applied entries: {m:?}");
    }
    assert_eq!(metrics.iter().map(|(_, m)| m.leaders).sum::<u64>(), regions, "{metrics:?}");

    // Each store's leader count is the number of regions its peers lead (taken at two
    // moments; a leadership change in between is retried).
    let mut agree = false;
    for _ in 0..50 {
        let led = led_per_store(&cluster);
        let counted: Vec<(StoreId, u64)> =
            cluster.metrics().into_iter().map(|(s, m)| (s, m.leaders)).collect();
        if led == counted {
            agree = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(agree, "leaders in metrics differ from the peers' roles");

    cluster.shutdown()?;
    Ok(())
}

/// `Cluster::prometheus_text`: one labelled sample per store of each family, and the
/// leaders' put counters account for every acknowledged put.
#[test]
fn a_cluster_renders_every_store_in_prometheus_text() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::builder().dir(dir.path()).stores(3).build().unwrap();
    let db = cluster.db();
    for i in 0..30 {
        db.put(key(i), "v").unwrap();
    }
    let text = cluster.prometheus_text();
    assert!(text.ends_with("# EOF\n"), "{text}");
    let mut proposed = 0;
    for store in cluster.store_ids() {
        let regions = format!("regionkv_regions{{store=\"{}\"}} 1\n", store.0);
        assert!(text.contains(&regions), "no {regions:?} in {text}");
        let prefix = format!("regionkv_writes_proposed_total{{store=\"{}\"}} ", store.0);
        let line = text.lines().find(|l| l.starts_with(&prefix)).expect("a put counter");
        proposed += line[prefix.len()..].parse::<u64>().unwrap();
        let inf =
            format!("regionkv_write_latency_seconds_bucket{{le=\"+Inf\",store=\"{}\"}}", store.0);
        assert!(text.contains(&inf), "no {inf:?} in {text}");
    }
    assert!(proposed >= 30, "30 puts, {proposed} proposed: {text}");
}
