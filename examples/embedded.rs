//! An embedded, replicated key-value store in one process: three stores on real files,
//! a client that routes by key, a split, a merge, a crash of one store, and a reopen.
//!
//! Run it with `cargo run --release --example embedded`.

use regionkv::{Cluster, SplitPolicy, WriteBatch};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let open = || {
        Cluster::builder()
            .dir(dir.path())
            .stores(3)
            // Regions split past 10,000 keys on their own; small neighbours merge.
            .split_policy(SplitPolicy::default().split_above(64 << 20, 10_000))
            .build()
    };
    let cluster = open()?;
    let db = cluster.db(); // Clone + Send + Sync: share it between threads

    // Writes return once a quorum has them on disk and they are applied.
    for i in 0..1000 {
        db.put(format!("user/{i:04}"), format!("name {i}"))?;
    }
    let mut batch = WriteBatch::new();
    batch.put("user/0000", "renamed").delete("user/0001");
    db.write(batch)?; // atomic (within one region)

    // Cut the key space in two; the client follows without the caller noticing.
    let parts = cluster.split("user/0500")?;
    println!("split into regions {} and {}", parts[0].id, parts[1].id);
    let page = db.scan("user/0498".."user/0502", 10)?; // across both regions
    println!("a scan across the split: {} rows", page.len());

    // A store crashes (nothing flushed); the other two keep serving.
    cluster.kill_store(3)?;
    db.put("user/after-crash", "still writable")?;
    cluster.restart_store(3)?; // recovers from its files and catches up

    // Merge the two regions back (waits for every replica to hold the source's log).
    let merged = cluster.merge(parts[0].id, parts[1].id)?;
    println!("merged back into region {}", merged.id);

    for info in cluster.regions() {
        println!(
            "region {} [{:?}, {:?}) leader {:?}",
            info.region.id,
            String::from_utf8_lossy(&info.region.start),
            info.region.end.as_deref().map(String::from_utf8_lossy),
            info.leader
        );
    }

    // A clean stop, then everything is back after a reopen.
    cluster.shutdown()?;
    drop(cluster);
    let cluster = open()?;
    let db = cluster.db();
    assert_eq!(db.get("user/0000")?.as_deref(), Some(&b"renamed"[..]));
    assert_eq!(db.get("user/0001")?, None);
    assert_eq!(db.get("user/after-crash")?.as_deref(), Some(&b"still writable"[..]));
    println!("reopened: {} keys", db.scan(.., usize::MAX)?.len());
    cluster.shutdown()?;
    Ok(())
}
