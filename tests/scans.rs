//! A8 (issue 12) through the public API: a store answers a scan with at most one page
//! (10,000 pairs or 4 MiB), so `Db::scan` asks again from each page's resume key; over
//! regions that hold more than a page each, it still returns every pair once, in order,
//! and stops exactly at its limit.

mod common;

use std::time::Duration;

use bytes::Bytes;
use regionkv::WriteBatch;

fn key(i: usize) -> Bytes {
    Bytes::from(format!("key{i:06}"))
}

#[test]
fn a_scan_over_regions_larger_than_a_page_returns_every_pair_once() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = common::one_store(dir.path(), Duration::from_millis(20));
    let db = cluster.db();
    // 3 regions; the first two over the byte cap (about 5 MiB each), the last over the
    // row cap (12,000 small pairs).
    let big = 5_000;
    let n = 2 * big + 12_000;
    let value = |i: usize| if i < 2 * big { Bytes::from(vec![b'v'; 1024]) } else { key(i) };
    for first in (0..n).step_by(500) {
        let mut batch = WriteBatch::new();
        for i in first..n.min(first + 500) {
            batch.put(key(i), value(i));
        }
        db.write(batch).unwrap();
    }
    cluster.split_keys(&[key(big), key(2 * big)]).unwrap();

    let rows = db.scan(.., usize::MAX).unwrap();
    assert_eq!(rows.len(), n);
    for (i, (k, v)) in rows.iter().enumerate() {
        assert_eq!((k, v), (&key(i), &value(i)), "pair {i}: every pair once, in order");
    }
    // A limit between pages, a range inside a region, a range across all three.
    assert_eq!(db.scan(.., 10_001).unwrap().len(), 10_001);
    let inner = db.scan(key(100)..key(4_900), usize::MAX).unwrap();
    assert_eq!(inner.first().map(|r| &r.0), Some(&key(100)));
    assert_eq!(inner.len(), 4_800);
    let across = db.scan(key(4_000)..=key(2 * big + 11_000), 100_000).unwrap();
    assert_eq!(across.len(), 2 * big + 11_000 - 4_000 + 1);
    assert!(across.windows(2).all(|w| w[0].0 < w[1].0), "in key order");
    cluster.shutdown().unwrap();
}
