//! Linearizability of real `Db` calls on a threaded three-store `Cluster` (real files,
//! real threads) while stores are killed, stopped and restarted, cut off from the
//! others, and the network loses, duplicates and reorders messages: every call is recorded as its
//! client saw it and each key's history is checked against a register
//! (`regionkv-check`). A write that returned an error may or may not have happened, so
//! it stays open; a read that returned an error is dropped.
//!
//! Regression (issue 12, S2): `Db` sent a write again after an attempt whose outcome
//! was unknown (no answer in time, or its store stopped with it in flight), and the
//! store applied it twice: a read saw the value, later writes replaced it, then a read
//! saw it again. Writes now go out in client sessions, numbered once for all their
//! attempts, and a region applies a number at most once (ARCHITECTURE.md, "Exactly
//! once").
//!
//! `LINEARIZABLE_ROUNDS=N` runs N rounds (default 1) with different key sets.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use regionkv::faults::{Action, Rule, Scope};
use regionkv::{Cluster, StoreId};
use regionkv_check::{Recorder, XorShift as Rng, check};

const CLIENTS: u64 = 6;
const OPS_PER_CLIENT: u64 = 300;
const KEYS: u64 = 6;

fn round(round: u64) {
    let dir = tempfile::tempdir().unwrap();
    let cluster = Arc::new(
        Cluster::builder()
            .dir(dir.path())
            .stores(3)
            .tick_interval(Duration::from_millis(20))
            .build()
            .unwrap(),
    );
    // Two regions, so a history spans leaders on different stores.
    cluster.split(format!("r{round}-k3")).unwrap();
    let recorder: Arc<Recorder<Bytes, Bytes>> = Arc::new(Recorder::new());
    let done = Arc::new(AtomicBool::new(false));

    let nemesis = {
        let cluster = cluster.clone();
        let done = done.clone();
        std::thread::spawn(move || {
            let mut turn = 0u64;
            while !done.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(150));
                let id = StoreId(turn % 3 + 1);
                // One store down or cut off at a time: a quorum stays up.
                match turn % 4 {
                    0 => cluster.kill_store(id).unwrap(),
                    1 => cluster.stop_store(id).unwrap(),
                    2 => cluster.faults().isolate(id),
                    _ => {
                        // A flaky network everywhere: loss, duplicates, reordering.
                        for action in [
                            Action::Drop(0.2),
                            Action::Duplicate(0.2),
                            Action::Delay { min: Duration::ZERO, max: Duration::from_millis(30) },
                        ] {
                            cluster.faults().add(Rule { scope: Scope::any(), action });
                        }
                    }
                }
                std::thread::sleep(Duration::from_millis(200));
                cluster.faults().clear();
                cluster.restart_store(id).unwrap();
                turn += 1;
            }
        })
    };

    let clients: Vec<_> = (0..CLIENTS)
        .map(|client| {
            let db = cluster.db().with_deadline(Duration::from_secs(5));
            let recorder = recorder.clone();
            std::thread::spawn(move || {
                // A fixed generator per client, so a run's operations are fixed even if its
                // interleaving is not.
                let mut rng = Rng::new(0x9E37_79B9_7F4A_7C15 ^ (client + 1) ^ (round << 32));
                for n in 0..OPS_PER_CLIENT {
                    let key = Bytes::from(format!("r{round}-k{}", rng.next() % KEYS));
                    // Every value is unique, so a read names the write it saw.
                    let value = Bytes::from(format!("c{client}-{n}"));
                    let pick = rng.next() % 10;
                    common::recorded_call(&db, &recorder, &key, pick, (5, 9), value);
                }
            })
        })
        .collect();
    for c in clients {
        c.join().unwrap();
    }
    done.store(true, Ordering::Relaxed);
    nemesis.join().unwrap();

    let history = recorder.history();
    let report = check(&history, 2_000_000);
    eprintln!("round {round}: {report}");
    assert!(report.is_linearizable(), "round {round}: {report}");
    assert_eq!(history.len() as u64, CLIENTS * OPS_PER_CLIENT);
    cluster.shutdown().unwrap();
}

#[test]
fn db_calls_stay_linearizable_under_crashes_partitions_and_a_flaky_network() {
    let rounds =
        std::env::var("LINEARIZABLE_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(1);
    for r in 0..rounds {
        round(r);
    }
}
