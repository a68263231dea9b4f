//! The exposition of known figures: every family typed, samples labelled with the
//! store, histogram buckets exact at their boundaries, cumulative, ending at `+Inf`.

use regionkv_wal::Histogram;

use super::*;

fn figures(store: u64) -> StoreFigures {
    let mut m = StoreMetrics::default();
    m.regions = 3;
    m.leaders = 2;
    m.writes_proposed = 40;
    m.wal.bytes_written = 4096;
    let latency = Histogram::new();
    // 15 µs, 16 µs (the first boundary: not below it), 23 µs, 24 µs, and 20 s (+Inf).
    for us in [15, 16, 23, 24, 20_000_000] {
        latency.record(us);
    }
    m.write_latency_us = latency.snapshot();
    let groups = Histogram::new();
    for n in [1, 1, 2, 3, 4, 100] {
        groups.record(n);
    }
    m.wal.group_records = groups.snapshot();
    StoreFigures {
        store: StoreId(store),
        metrics: Box::new(m),
        clients: (store == 1).then(ClientStats::default),
        transport: None,
    }
}

#[test]
fn every_boundary_starts_a_bucket_so_its_count_is_exact() {
    for edge in latency_edges_us().into_iter().chain(size_edges()) {
        assert!(Histogram::is_bucket_start(edge), "{edge} is inside a bucket");
    }
    let edges = latency_edges_us();
    assert!(edges.windows(2).all(|w| w[0] < w[1]), "{edges:?}");
}

#[test]
fn a_scrape_of_two_stores_is_typed_labelled_and_cumulative() {
    let text = render(Scrape { stores: vec![figures(1), figures(2)], health: None });
    assert!(text.ends_with("# EOF\n"), "{text}");
    assert!(text.contains("# TYPE regionkv_writes_proposed counter\n"), "{text}");
    assert!(text.contains("regionkv_writes_proposed_total{store=\"1\"} 40\n"), "{text}");
    assert!(text.contains("regionkv_writes_proposed_total{store=\"2\"} 40\n"), "{text}");
    assert!(text.contains("regionkv_regions{store=\"2\"} 3\n"), "{text}");
    assert!(text.contains("regionkv_wal_written_bytes_total{store=\"1\"} 4096\n"), "{text}");
    // Client counters only where there are some (store 1), none for the transport.
    assert!(text.contains("regionkv_client_requests_total{store=\"1\"} 0\n"), "{text}");
    assert!(!text.contains("regionkv_client_requests_total{store=\"2\"}"), "{text}");
    assert!(!text.contains("peer_envelopes"), "{text}");
    // Latency in seconds: below 16 µs one sample, below 24 µs three, +Inf all five.
    assert!(text.contains("# TYPE regionkv_write_latency_seconds histogram\n"), "{text}");
    for line in [
        "regionkv_write_latency_seconds_bucket{le=\"0.000016\",store=\"1\"} 1\n",
        "regionkv_write_latency_seconds_bucket{le=\"0.000024\",store=\"1\"} 3\n",
        "regionkv_write_latency_seconds_bucket{le=\"16.777216\",store=\"1\"} 4\n",
        "regionkv_write_latency_seconds_bucket{le=\"+Inf\",store=\"1\"} 5\n",
        "regionkv_write_latency_seconds_count{store=\"1\"} 5\n",
        // Sizes: at most 1 two groups, at most 3 four, at most 127 all six.
        "regionkv_wal_group_records_bucket{le=\"1.0\",store=\"2\"} 2\n",
        "regionkv_wal_group_records_bucket{le=\"3.0\",store=\"2\"} 4\n",
        "regionkv_wal_group_records_bucket{le=\"127.0\",store=\"2\"} 6\n",
    ] {
        assert!(text.contains(line), "no {line:?} in {text}");
    }
}

#[test]
fn buckets_accumulate_to_the_count() {
    let h = Histogram::new();
    for v in (0..5000).map(|i| i * 37 % 4_000_000) {
        h.record(v);
    }
    let s = h.snapshot();
    let b = buckets(&s, &latency_edges_us(), micros_to_seconds);
    assert_eq!(b.iter().map(|&(_, n)| n).sum::<u64>(), s.count());
    assert_eq!(b.last().map(|&(le, _)| le), Some(f64::INFINITY));
}
