//! Linearizability of `Db` calls on a one-store `Cluster`, where writes run on their
//! callers' threads when the poller is idle (the caller's turn, `raft/src/store/solo.rs`)
//! and through the poller otherwise: 8 clients race for the turn, and the store is
//! killed and restarted under them, so acknowledged writes of both paths must survive
//! a crash. Every call is recorded as its client saw it and each key's history is
//! checked against a register (`regionkv-check`).
//!
//! Issue 13: a put on one store cost four thread wake-ups; the caller's turn removes
//! them. This test guards what it must not change: every answer is as if the calls
//! happened one at a time, across both paths and a crash.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use regionkv_check::{Recorder, XorShift as Rng, check};

const CLIENTS: u64 = 8;
const OPS_PER_CLIENT: u64 = 250;
const KEYS: u64 = 4;

#[test]
fn db_calls_on_one_store_stay_linearizable_across_callers_turns_and_a_kill() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = Arc::new(common::one_store(dir.path(), Duration::from_millis(20)));
    let recorder: Arc<Recorder<Bytes, Bytes>> = Arc::new(Recorder::new());
    let done = Arc::new(AtomicBool::new(false));
    let nemesis = {
        let (cluster, done) = (cluster.clone(), done.clone());
        std::thread::spawn(move || {
            let mut kills = 0;
            while !done.load(Ordering::Relaxed) && kills < 3 {
                std::thread::sleep(Duration::from_millis(100));
                cluster.kill_store(1).unwrap();
                std::thread::sleep(Duration::from_millis(50));
                cluster.restart_store(1).unwrap();
                kills += 1;
            }
        })
    };
    let clients: Vec<_> = (0..CLIENTS)
        .map(|client| {
            let db = cluster.db().with_deadline(Duration::from_secs(5));
            let recorder = recorder.clone();
            std::thread::spawn(move || {
                let mut rng = Rng::new(0x5DEE_CE66_D1CE_4E5B ^ (client + 1));
                for n in 0..OPS_PER_CLIENT {
                    let key = Bytes::from(format!("k{}", rng.next() % KEYS));
                    // Every value is unique, so a read names the write it saw.
                    let value = Bytes::from(format!("c{client}-{n}"));
                    let pick = rng.next() % 10;
                    common::recorded_call(&db, &recorder, &key, pick, (4, 9), value);
                }
            })
        })
        .collect();
    for c in clients {
        c.join().unwrap();
    }
    done.store(true, Ordering::Relaxed);
    nemesis.join().unwrap();

    let metrics = cluster.metrics();
    let (caller, writer) =
        metrics.iter().fold((0, 0), |(c, w), (_, m)| (c + m.caller_tasks, w + m.writer_tasks));
    eprintln!(
        "write tasks since the last restart: {caller} on callers' threads, {writer} on the writer"
    );
    let history = recorder.history();
    let report = check(&history, 2_000_000);
    eprintln!("{report}");
    assert!(report.is_linearizable(), "{report}");
    assert_eq!(history.len() as u64, CLIENTS * OPS_PER_CLIENT);
    cluster.shutdown().unwrap();
}
