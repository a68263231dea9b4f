//! What a store pays in fsyncs: one per write a client waits for, none for a read.
//!
//! Regression (issue 13, cause 1): the Raft log registered every region of a ready in
//! the pending log write, even one with no entries and no hard state to persist, so
//! the writer appended an empty WAL record and fsynced it. A put cost about two fsyncs
//! on one store, and a linearizable get (a read index round, nothing to persist) one.
//! These are counts, not timings: the WAL counts its fsyncs.

mod common;

use std::time::Duration;

use regionkv::Cluster;

fn fsyncs(cluster: &Cluster) -> u64 {
    cluster.wal_stats().iter().map(|(_, s)| s.fsyncs).sum()
}

#[test]
fn a_put_costs_one_fsync_and_a_get_none() {
    const N: u64 = 200;
    let dir = tempfile::tempdir().unwrap();
    let cluster = common::one_store(dir.path(), Duration::from_millis(50));
    let db = cluster.db();
    db.put("warm", "up").unwrap();

    let before = fsyncs(&cluster);
    for i in 0..N {
        db.put(format!("k{i}"), "v").unwrap();
    }
    let puts = fsyncs(&cluster) - before;

    let before = fsyncs(&cluster);
    for i in 0..N {
        assert_eq!(db.get(format!("k{i}")).unwrap().as_deref(), Some(&b"v"[..]));
    }
    let gets = fsyncs(&cluster) - before;
    eprintln!("{N} puts: {puts} fsyncs; {N} gets: {gets} fsyncs");
    // A few more than one per put, and a few for the gets: a tick, the gc sweep or a
    // checkpoint may write meanwhile.
    assert!(puts <= N + N / 10, "{puts} fsyncs for {N} sequential puts");
    assert!(gets <= N / 20, "{gets} fsyncs for {N} gets");
    cluster.shutdown().unwrap();
}
