//! Snapshot-isolated transactions (`Db::transaction`) on an in-process `Cluster` of
//! three stores, the transactional keyspace split into several regions at lock keys
//! (ARCHITECTURE.md, "Snapshot isolation"): read-your-writes, a snapshot does not see
//! a later commit, a write-write conflict is refused with nothing of the loser
//! visible, rollback and drop leave nothing, deletes and scans, raw access to the
//! keyspace is refused, and concurrent bank transfers never show read skew, a dirty
//! read or a lost update.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use regionkv::layers::raft::txn::mvcc;
use regionkv::layers::raft::txn::plan::TxnPlan;
use regionkv::{Cluster, Db, Error, Op, TxnReply, TxnState};

/// Three stores; the keyspace split at the lock keys of user keys "g" and "p".
fn cluster(dir: &std::path::Path) -> Cluster {
    let cluster = Cluster::builder().dir(dir).stores(3).build().unwrap();
    cluster.split_keys(&[mvcc::lock_key(b"g"), mvcc::lock_key(b"p")]).unwrap();
    cluster
}

fn text(v: Option<Bytes>) -> Option<String> {
    v.map(|v| String::from_utf8(v.to_vec()).unwrap())
}

#[test]
fn reads_see_own_writes_and_a_snapshot_ignores_later_commits() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = cluster(dir.path());
    let db = cluster.db();
    let mut t = db.transaction().unwrap();
    assert_eq!(t.get("a").unwrap(), None);
    t.put("a", "1");
    t.put("z", "26");
    assert_eq!(text(t.get("a").unwrap()).as_deref(), Some("1"), "read-your-writes");
    t.commit().unwrap();

    let before = db.transaction().unwrap();
    let mut writer = db.transaction().unwrap();
    writer.put("a", "2");
    writer.delete("z");
    writer.commit().unwrap();
    // Started before the commit: the old values.
    assert_eq!(text(before.get("a").unwrap()).as_deref(), Some("1"));
    assert_eq!(text(before.get("z").unwrap()).as_deref(), Some("26"));
    let after = db.transaction().unwrap();
    assert_eq!(text(after.get("a").unwrap()).as_deref(), Some("2"));
    assert_eq!(after.get("z").unwrap(), None, "deleted");
    // Raw access to the keyspace is refused; raw keys do not see transactional ones.
    assert!(matches!(db.get(mvcc::lock_key(b"a")), Err(Error::InvalidRequest(_))));
    assert!(matches!(db.put(mvcc::lock_key(b"a").to_vec(), "x"), Err(Error::InvalidRequest(_))));
    assert_eq!(db.get("a").unwrap(), None);
    assert!(db.scan(.., 100).unwrap().is_empty());
    cluster.shutdown().unwrap();
}

#[test]
fn a_write_write_conflict_is_refused_and_nothing_of_the_loser_is_visible() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = cluster(dir.path());
    let db = cluster.db();
    let mut first = db.transaction().unwrap();
    let mut second = db.transaction().unwrap();
    first.put("k", "first");
    second.put("k", "second");
    second.put("q", "second"); // another region
    first.commit().unwrap();
    let lost = second.commit();
    assert!(matches!(&lost, Err(Error::Conflict { key, .. }) if key.as_ref() == b"k"), "{lost:?}");
    assert!(lost.unwrap_err().is_retryable());
    let now = db.transaction().unwrap();
    assert_eq!(text(now.get("k").unwrap()).as_deref(), Some("first"));
    assert_eq!(now.get("q").unwrap(), None, "nothing of the loser");
    // A rolled-back or dropped transaction leaves nothing.
    let mut rolled = db.transaction().unwrap();
    rolled.put("r", "x");
    rolled.rollback();
    {
        let mut dropped = db.transaction().unwrap();
        dropped.put("s", "x");
    }
    let now = db.transaction().unwrap();
    assert_eq!((now.get("r").unwrap(), now.get("s").unwrap()), (None, None));
    cluster.shutdown().unwrap();
}

#[test]
fn scans_keep_the_newest_visible_version_per_key_and_skip_deletes() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = cluster(dir.path());
    let db = cluster.db();
    let mut t = db.transaction().unwrap();
    for k in ["a", "f", "h", "o", "x"] {
        t.put(k, format!("{k}1"));
    }
    t.commit().unwrap();
    let mut t = db.transaction().unwrap();
    t.put("f", "f2");
    t.delete("o");
    t.commit().unwrap();
    let mut t = db.transaction().unwrap();
    t.put("b", "b-own");
    let rows: Vec<(String, String)> = t
        .scan(.., 100)
        .unwrap()
        .into_iter()
        .map(|(k, v)| (text(Some(k)).unwrap(), text(Some(v)).unwrap()))
        .collect();
    let want: Vec<(String, String)> =
        [("a", "a1"), ("b", "b-own"), ("f", "f2"), ("h", "h1"), ("x", "x1")]
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
    assert_eq!(rows, want);
    let some = t.scan("c".."p", 2).unwrap();
    assert_eq!(some.iter().map(|(k, _)| k.as_ref()).collect::<Vec<_>>(), vec![&b"f"[..], b"h"]);
    cluster.shutdown().unwrap();
}

#[test]
fn a_level_1_transaction_still_resolves_next_to_snapshot_ones() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = cluster(dir.path());
    cluster.split("m").unwrap();
    let db = cluster.db();
    let put = |k: &str, v: &str| Op::Put {
        key: Bytes::copy_from_slice(k.as_bytes()),
        value: Bytes::copy_from_slice(v.as_bytes()),
    };
    // A level-1 transaction over raw keys in two regions, prewritten by hand: its
    // locks and record are format 1.
    let plan = TxnPlan::new(1 << 40, vec![put("a1", "x"), put("z1", "y")], 60_000, None);
    for op in &plan.ops {
        assert_eq!(db.txn_call(plan.prewrite(vec![op.clone()])).unwrap(), TxnReply::Done);
    }
    // A snapshot-isolated one commits meanwhile (format-2 locks and record).
    let mut t = db.transaction().unwrap();
    t.put("a1", "si");
    t.commit().unwrap();
    assert_eq!(
        db.txn_call(plan.commit()).unwrap(),
        TxnReply::Status(TxnState::Committed { commit_ts: None })
    );
    // The secondary's level-1 lock is resolved by a raw reader, into the raw key.
    assert_eq!(text(db.get("z1").unwrap()).as_deref(), Some("y"));
    assert_eq!(text(db.get("a1").unwrap()).as_deref(), Some("x"));
    let t = db.transaction().unwrap();
    assert_eq!(text(t.get("a1").unwrap()).as_deref(), Some("si"));
    assert_eq!(t.get("z1").unwrap(), None, "raw and transactional keys are apart");
    cluster.shutdown().unwrap();
}

const ACCOUNTS: usize = 6;
const START_BALANCE: i64 = 100;

/// Account names, by where they live ("g" and "p" split the keyspace).
type Accounts = [&'static str; ACCOUNTS];
/// Spread over the three regions: transfers across two regions commit in two phases.
const SPREAD: Accounts = ["b", "c", "h", "k", "r", "w"];
/// All in the region below "g": every transfer commits in one phase.
const ONE_REGION: Accounts = ["a", "b", "c", "d", "e", "f"];
/// Four below "g", two above "p": some transfers in one phase, some in two.
const MIXED: Accounts = ["a", "b", "c", "d", "r", "w"];

fn account(accounts: &Accounts, i: usize) -> String {
    format!("{}acct", accounts[i])
}

fn balance(v: Option<Bytes>) -> i64 {
    text(v).map_or(0, |v| v.parse().unwrap())
}

/// Moves `amount` from `from` to `to` in one transaction, retrying conflicts.
fn transfer(db: &Db, accounts: &Accounts, from: usize, to: usize, amount: i64) {
    let (from, to) = (account(accounts, from), account(accounts, to));
    loop {
        let mut t = db.transaction().unwrap();
        // A read that meets a transfer in flight answers `Conflict` (the `Db` does not
        // wait for locks): run the transaction again, as after a commit's conflict.
        let (a, b) = match (t.get(&from), t.get(&to)) {
            (Ok(a), Ok(b)) => (balance(a), balance(b)),
            (Err(e), _) | (_, Err(e)) if e.is_retryable() => {
                std::thread::yield_now();
                continue;
            }
            (Err(e), _) | (_, Err(e)) => panic!("transfer: {e}"),
        };
        t.put(&from, (a - amount).to_string());
        t.put(&to, (b + amount).to_string());
        match t.commit() {
            Ok(()) => return,
            Err(e) if e.is_retryable() => std::thread::yield_now(),
            Err(e) => panic!("transfer: {e}"),
        }
    }
}

#[test]
fn concurrent_transfers_show_no_read_skew_no_dirty_read_and_no_lost_update() {
    bank(&SPREAD);
}

/// The same with every account in one region: every transfer is a one-phase commit
/// whose timestamp its region's leader chooses (above every snapshot read it served).
#[test]
fn concurrent_one_phase_transfers_show_no_read_skew_no_dirty_read_and_no_lost_update() {
    bank(&ONE_REGION);
}

/// One-phase and two-phase transfers on the same accounts.
#[test]
fn concurrent_mixed_transfers_show_no_read_skew_no_dirty_read_and_no_lost_update() {
    bank(&MIXED);
}

/// Concurrent transfers between `accounts` and read-only snapshots: every snapshot
/// (read key by key, and scanned) sums to the total, and so does the end state.
fn bank(accounts: &'static Accounts) {
    let account = |i| account(accounts, i);
    let dir = tempfile::tempdir().unwrap();
    let cluster = cluster(dir.path());
    let db = cluster.db();
    let mut t = db.transaction().unwrap();
    for i in 0..ACCOUNTS {
        t.put(account(i), START_BALANCE.to_string());
    }
    t.commit().unwrap();
    let total = START_BALANCE * i64::try_from(ACCOUNTS).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let (db, stop) = (db.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut snapshots = 0;
                while !stop.load(Ordering::Relaxed) {
                    let t = db.transaction().unwrap();
                    // A read that meets a transfer in flight answers `Conflict`
                    // (retryable): that snapshot is dropped, never summed in part.
                    let read: Result<Vec<_>, _> =
                        (0..ACCOUNTS).map(|i| t.get(account(i))).collect();
                    let scan = t.scan(.., 100);
                    let (read, scan) = match (read, scan) {
                        (Ok(read), Ok(scan)) => (read, scan),
                        (Err(e), _) | (_, Err(e)) if e.is_retryable() => continue,
                        (Err(e), _) | (_, Err(e)) => panic!("a snapshot read: {e}"),
                    };
                    let sum: i64 = read.into_iter().map(balance).sum();
                    assert_eq!(sum, total, "a snapshot at {} sums wrong", t.start_ts());
                    let scanned: i64 = scan.into_iter().map(|(_, v)| balance(Some(v))).sum();
                    assert_eq!(scanned, total, "a scanned snapshot sums wrong");
                    snapshots += 1;
                }
                snapshots
            })
        })
        .collect();
    let writers: Vec<_> = (0..3)
        .map(|w| {
            let db = db.clone();
            std::thread::spawn(move || {
                for n in 0..15 {
                    let from = (w + n) % ACCOUNTS;
                    let to = (w * 2 + n + 1) % ACCOUNTS;
                    if from != to {
                        transfer(&db, accounts, from, to, i64::try_from(n % 7).unwrap() + 1);
                    }
                }
            })
        })
        .collect();
    for w in writers {
        w.join().unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    for r in readers {
        assert!(r.join().unwrap() > 0, "a reader read no snapshot");
    }
    let t = db.transaction().unwrap();
    let sum: i64 = (0..ACCOUNTS).map(|i| balance(t.get(account(i)).unwrap())).sum();
    assert_eq!(sum, total, "an update was lost");
    cluster.shutdown().unwrap();
}
