//! Injected I/O failures (P13): after an fsync or write error nothing more is
//! acknowledged, the log is poisoned, and a reopen recovers (P1–P3).

use std::collections::BTreeMap;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier};

use regionkv_wal::fs::{SimOp, SimOpKind};
use regionkv_wal::{CrashMode, Error, ErrorClass, Lsn, SimFs, SparePreparation, Wal, WalOptions};

fn options() -> WalOptions {
    WalOptions::default()
        .segment_bytes(64 << 10)
        .spare_segments(1)
        .spare_preparation(SparePreparation::OnDemand)
}

fn eio() -> io::Error {
    io::Error::from_raw_os_error(5)
}

/// Fails the `nth` call of `kind` from now on (1-based), once.
fn fail_nth(fs: &SimFs, kind: SimOpKind, nth: u64, error: fn() -> io::Error) {
    let seen = AtomicU64::new(0);
    fs.set_fault_hook(Box::new(move |op: &SimOp| {
        (op.kind == kind && seen.fetch_add(1, Ordering::Relaxed) + 1 == nth).then(error)
    }));
}

fn read_all(wal: &Wal) -> BTreeMap<Lsn, Vec<u8>> {
    wal.iter_from(wal.first_lsn())
        .unwrap()
        .map(|r| r.map(|r| (r.lsn, r.payload.to_vec())))
        .collect::<Result<_, _>>()
        .unwrap()
}

#[test]
fn fsync_eio_acknowledges_nothing_and_poisons_the_log() {
    let fs = SimFs::new();
    let wal = Wal::open(Arc::new(fs.clone()), "/wal", options()).unwrap();
    let before = wal.append(b"before").unwrap();
    fail_nth(&fs, SimOpKind::SyncData, 1, eio);

    let err = wal.append(b"during").unwrap_err();
    assert!(matches!(err, Error::Indeterminate { .. }), "{err}");
    assert_eq!(err.class(), ErrorClass::Fatal);
    fs.clear_fault_hook();
    // Never retried: a working disk does not un-poison the log.
    let err = wal.append(b"after").unwrap_err();
    assert!(matches!(err, Error::Poisoned { .. }), "{err}");
    assert!(wal.failure().is_some());
    assert!(matches!(wal.sync(), Err(Error::Poisoned { .. })));
    assert!(matches!(wal.close(), Err(Error::Poisoned { .. })), "no clean seal after a failure");
    drop(wal);

    // After a power loss the failed group is gone (its pages were dropped), the
    // acknowledged record is there, and the log works again.
    let disk = fs.crash(CrashMode::Lost);
    let wal = Wal::open(Arc::new(disk), "/wal", options()).unwrap();
    let records = read_all(&wal);
    assert_eq!(records.get(&before).map(Vec::as_slice), Some(&b"before"[..]));
    assert!(records.values().all(|p| p != b"after"), "a poisoned append never lands");
    wal.append(b"again").unwrap();
}

/// The fsyncgate case: after a failed fsync the page cache still shows the data but
/// the disk never got it. Reopening without a reboot must not build on those pages.
#[test]
fn reopen_after_fsync_eio_rewrites_what_the_kernel_dropped() {
    let fs = SimFs::new();
    let wal = Wal::open(Arc::new(fs.clone()), "/wal", options()).unwrap();
    let first = wal.append(b"first").unwrap();
    fail_nth(&fs, SimOpKind::SyncData, 1, eio);
    assert!(matches!(wal.append(b"in limbo"), Err(Error::Indeterminate { .. })));
    fs.clear_fault_hook();
    drop(wal);

    // Same boot: the cache shows "in limbo", so recovery keeps it ...
    let wal = Wal::open(Arc::new(fs.clone()), "/wal", options()).unwrap();
    let seen = read_all(&wal);
    assert!(seen.values().any(|p| p == b"in limbo"));
    let later = wal.append(b"later").unwrap();
    drop(wal);

    // ... and made it durable, so a power loss now loses nothing recovery showed, and
    // the later record (whose header says everything before it is durable) is not
    // preceded by a hole.
    let wal = Wal::open(Arc::new(fs.crash(CrashMode::Lost)), "/wal", options()).unwrap();
    let after = read_all(&wal);
    assert_eq!(after.get(&first).map(Vec::as_slice), Some(&b"first"[..]));
    assert_eq!(after.get(&later).map(Vec::as_slice), Some(&b"later"[..]));
    assert_eq!(after.len(), seen.len() + 1);
}

#[test]
fn enospc_on_write_is_indeterminate_and_says_so() {
    let fs = SimFs::new();
    let wal = Wal::open(Arc::new(fs.clone()), "/wal", options()).unwrap();
    fail_nth(&fs, SimOpKind::Write, 1, || io::Error::from(io::ErrorKind::StorageFull));
    let err = wal.append(b"x").unwrap_err();
    assert!(matches!(&err, Error::Indeterminate { cause } if cause.contains("write")), "{err}");
    fs.clear_fault_hook();
    assert!(matches!(wal.append(b"y"), Err(Error::Poisoned { .. })));
}

/// Eight appenders; the 40th fdatasync fails. Returns the acknowledged records; the
/// log is dropped, not closed.
fn appenders_through_a_failed_sync(fs: &SimFs) -> Vec<(Lsn, Vec<u8>)> {
    let wal = Wal::open(Arc::new(fs.clone()), "/wal", options()).unwrap();
    let failing = Arc::new(AtomicBool::new(false));
    {
        let failing = failing.clone();
        let syncs = AtomicU64::new(0);
        fs.set_fault_hook(Box::new(move |op| {
            // The 40th fsync fails; every later call succeeds, to prove nothing retries.
            let fail =
                op.kind == SimOpKind::SyncData && syncs.fetch_add(1, Ordering::Relaxed) == 39;
            if fail {
                failing.store(true, Ordering::SeqCst);
            }
            fail.then(eio)
        }));
    }
    let threads = 8;
    let barrier = Arc::new(Barrier::new(threads));
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let (wal, barrier) = (wal.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                let mut acked = Vec::new();
                let mut failed_at = None;
                for i in 0..200u32 {
                    let payload = [t as u8, i as u8, (i >> 8) as u8];
                    match wal.append(&payload) {
                        Ok(lsn) => {
                            assert!(failed_at.is_none(), "acknowledged after a failure");
                            acked.push((lsn, payload.to_vec()));
                        }
                        Err(e) => {
                            assert_eq!(e.class(), ErrorClass::Fatal, "{e}");
                            failed_at.get_or_insert(i);
                        }
                    }
                }
                acked
            })
        })
        .collect();
    let acked: Vec<(Lsn, Vec<u8>)> = handles.into_iter().flat_map(|h| h.join().unwrap()).collect();
    assert!(failing.load(Ordering::SeqCst));
    fs.clear_fault_hook();
    acked
}

/// With two groups in flight, the failed group's pages are dropped while the next
/// group, written during its sync, may reach the disk: after a power loss recovery
/// finds a hole followed by unacknowledged records, and cuts them as a torn tail.
#[test]
fn a_failed_group_fails_every_member_and_nothing_after_it_succeeds() {
    let fs = SimFs::new();
    let acked = appenders_through_a_failed_sync(&fs);
    let wal = Wal::open(Arc::new(fs.crash(CrashMode::Lost)), "/wal", options()).unwrap();
    let records = read_all(&wal);
    for (lsn, payload) in acked {
        assert_eq!(records.get(&lsn), Some(&payload), "acknowledged record at {lsn:?} lost");
    }
}

/// The same without a reboot (fsyncgate with two groups in flight): the cache still
/// shows both unpublished groups, and recovery must make what it shows durable.
#[test]
fn reopen_after_a_failed_group_rewrites_both_groups_in_flight() {
    let fs = SimFs::new();
    let acked = appenders_through_a_failed_sync(&fs);
    let wal = Wal::open(Arc::new(fs.clone()), "/wal", options()).unwrap();
    let seen = read_all(&wal);
    let later = wal.append(b"later").unwrap();
    drop(wal);
    let wal = Wal::open(Arc::new(fs.crash(CrashMode::Lost)), "/wal", options()).unwrap();
    assert_eq!(wal.recovery_report().truncation, None, "nothing recovery showed was lost");
    let after = read_all(&wal);
    for (lsn, payload) in acked.iter().chain(&seen.into_iter().collect::<Vec<_>>()) {
        assert_eq!(after.get(lsn), Some(payload), "record at {lsn:?} lost");
    }
    assert_eq!(after.get(&later).map(Vec::as_slice), Some(&b"later"[..]));
}

#[test]
fn a_flood_of_appenders_stays_within_the_queue_bound() {
    let max_group_bytes = 256 << 10;
    let record = 16 << 10;
    let options = options().segment_bytes(4 << 20).max_group_bytes(max_group_bytes);
    let wal = Wal::open(Arc::new(SimFs::new()), "/wal", options).unwrap();
    let handles: Vec<_> = (0..64)
        .map(|t: u8| {
            let wal = wal.clone();
            std::thread::spawn(move || {
                for _ in 0..20 {
                    wal.append(&vec![t; record]).unwrap();
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let stats = wal.stats();
    assert_eq!(stats.records, 64 * 20);
    // 64 threads each holding a 16 KiB record could queue 1 MiB; the bound holds it
    // to one group's worth.
    assert!(
        stats.queued_bytes_high_water <= max_group_bytes,
        "queued {} bytes, bound {max_group_bytes}",
        stats.queued_bytes_high_water
    );
    assert!(stats.groups < stats.records, "appenders shared groups: {stats:?}");
}
