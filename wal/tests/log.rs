//! Behaviour of the log through its public API: append, read, iterate, roll, purge,
//! recycle, reopen, close.

use std::path::Path;
use std::sync::Arc;

use regionkv_wal::fs::FileSystem;
use regionkv_wal::{
    CrashMode, Error, Lsn, RealFs, RecoveryMode, SimFs, SparePreparation, Wal, WalOptions,
};

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn sim_options() -> WalOptions {
    WalOptions::default()
        .segment_bytes(4096)
        .spare_segments(2)
        .spare_preparation(SparePreparation::OnDemand)
}

fn payload(i: usize) -> Vec<u8> {
    let len = 10 + (i * 37) % 300;
    (0..len).map(|j| (i * 31 + j) as u8).collect()
}

fn read_all(wal: &Wal) -> Result<Vec<(Lsn, Vec<u8>)>, Error> {
    wal.iter_from(wal.first_lsn())?.map(|r| r.map(|r| (r.lsn, r.payload.to_vec()))).collect()
}

#[test]
fn appends_read_back_by_lsn_and_in_order_across_segments() -> TestResult {
    let fs = Arc::new(SimFs::new());
    let wal = Wal::open(fs.clone(), "/wal", sim_options())?;
    let mut written = Vec::new();
    for i in 0..200 {
        written.push((wal.append(&payload(i))?, payload(i)));
    }
    assert!(wal.stats().segment_rolls > 5, "small segments roll: {:?}", wal.stats());
    assert_eq!(read_all(&wal)?, written);
    for (lsn, data) in &written {
        assert_eq!(&wal.read(*lsn)?.payload[..], &data[..]);
    }
    assert!(matches!(wal.read(wal.end_lsn()), Err(Error::LsnOutOfRange { .. })));
    Ok(())
}

#[test]
fn clean_close_reopens_under_absolute_consistency_and_appends_continue() -> TestResult {
    let fs = Arc::new(SimFs::new());
    let wal = Wal::open(fs.clone(), "/wal", sim_options())?;
    let mut written: Vec<_> = (0..50)
        .map(|i| Ok((wal.append(&payload(i))?, payload(i))))
        .collect::<Result<_, Error>>()?;
    wal.close()?;
    assert!(matches!(wal.append(b"late"), Err(Error::Closed)));
    drop(wal);

    let strict = sim_options().recovery(RecoveryMode::AbsoluteConsistency);
    let wal = Wal::open(fs.clone(), "/wal", strict.clone())?;
    assert!(wal.recovery_report().clean);
    assert_eq!(read_all(&wal)?, written);
    written.push((wal.append(b"after reopen")?, b"after reopen".to_vec()));
    drop(wal); // no close: not clean

    let err = Wal::open(fs.clone(), "/wal", strict).unwrap_err();
    assert!(matches!(err, Error::NotCleanlyClosed { .. }), "{err}");
    let wal = Wal::open(fs, "/wal", sim_options())?;
    assert!(!wal.recovery_report().clean);
    assert_eq!(read_all(&wal)?, written);
    Ok(())
}

#[test]
fn purge_recycles_whole_segments_below_the_lsn() -> TestResult {
    let fs = Arc::new(SimFs::new());
    let wal = Wal::open(fs.clone(), "/wal", sim_options())?;
    let lsns: Vec<Lsn> = (0..200).map(|i| wal.append(&payload(i))).collect::<Result<_, _>>()?;
    let keep_from = lsns[120];
    let purged = wal.purge_below(keep_from)?;
    assert!(purged > 0);
    assert!(wal.first_lsn() <= keep_from);
    assert!(wal.first_lsn() > lsns[0]);
    let names = fs.list(Path::new("/wal"))?;
    let spares = names.iter().filter(|n| n.starts_with("spare-")).count();
    assert!(spares >= 1, "purged files are recycled: {names:?}");
    // Everything from keep_from is still readable, before and after reopen.
    let expect: Vec<_> = (120..200).map(|i| (lsns[i], payload(i))).collect();
    let tail = |wal: &Wal| -> Result<Vec<_>, Error> {
        Ok(read_all(wal)?.into_iter().filter(|(l, _)| *l >= keep_from).collect())
    };
    assert_eq!(tail(&wal)?, expect);
    // Recycled files are reused, and their stale records never reappear.
    let more: Vec<_> = (200..400)
        .map(|i| Ok((wal.append(&payload(i))?, payload(i))))
        .collect::<Result<_, Error>>()?;
    drop(wal);
    let wal = Wal::open(Arc::new(fs.crash(CrashMode::Persisted)), "/wal", sim_options())?;
    let mut all = expect;
    all.extend(more);
    assert_eq!(tail(&wal)?, all);
    Ok(())
}

#[test]
fn oversized_records_are_refused_and_the_log_stays_usable() -> TestResult {
    let wal = Wal::open(Arc::new(SimFs::new()), "/wal", sim_options())?;
    let max = wal.options().max_payload();
    assert!(matches!(wal.append(&vec![1u8; max + 1]), Err(Error::RecordTooLarge { .. })));
    let lsn = wal.append(&vec![2u8; max])?;
    assert_eq!(wal.read(lsn)?.payload.len(), max);
    Ok(())
}

/// A fresh log's first segment is made sparse (no spare is ready yet), and an
/// fdatasync over blocks never written also commits their allocation. The writer
/// zeroes a chunk ahead of its records, so after one small append the file already
/// holds written blocks well past it (before: only the blocks of the header and the
/// record), and the records read back after a reopen.
#[test]
fn a_sparse_first_segment_is_zeroed_ahead_of_the_records() -> TestResult {
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir()?;
    let options = WalOptions::default().segment_bytes(8 << 20);
    let wal = Wal::open(Arc::new(RealFs), dir.path(), options.clone())?;
    let lsn = wal.append(b"one small record")?;
    let segment = std::fs::read_dir(dir.path())?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<Vec<_>, _>>()?
        .into_iter()
        .find(|p| p.file_name().is_some_and(|n| n.to_string_lossy() == "0000000000000001.wal"))
        .ok_or("no first segment file")?;
    let allocated = std::fs::metadata(&segment)?.blocks() * 512;
    assert!(
        allocated >= 1 << 20,
        "{} holds {allocated} bytes of written blocks after one append",
        segment.display()
    );
    drop(wal);
    let wal = Wal::open(Arc::new(RealFs), dir.path(), options)?;
    assert_eq!(&wal.read(lsn)?.payload[..], b"one small record");
    Ok(())
}

#[test]
fn real_disk_round_trip_with_background_spares() -> TestResult {
    let dir = tempfile::tempdir()?;
    let options = WalOptions::default().segment_bytes(64 << 10);
    let wal = Wal::open(Arc::new(RealFs), dir.path(), options.clone())?;
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let wal = wal.clone();
            std::thread::spawn(move || -> Result<Vec<(Lsn, Vec<u8>)>, Error> {
                (0..100)
                    .map(|i| Ok((wal.append(&payload(t * 1000 + i))?, payload(t * 1000 + i))))
                    .collect()
            })
        })
        .collect();
    let mut written: Vec<_> =
        threads.into_iter().flat_map(|t| t.join().unwrap().unwrap()).collect();
    written.sort();
    let stats = wal.stats();
    assert_eq!(stats.records, 800);
    assert!(stats.fsyncs < 800, "concurrent appends share fsyncs: {stats:?}");
    // The histograms see every group and every fsync, and account for every record.
    assert_eq!(stats.group_records.count(), stats.groups, "{stats:?}");
    assert_eq!(stats.group_records.sum(), stats.records, "{stats:?}");
    assert!(stats.group_records.max() >= 1 && stats.group_records.p50() >= 1, "{stats:?}");
    assert_eq!(stats.fsync_latency_us.count(), stats.fsyncs, "{stats:?}");
    assert!(stats.fsync_latency_us.max() >= stats.fsync_latency_us.p99(), "{stats:?}");
    wal.close()?;
    drop(wal);
    let wal = Wal::open(
        Arc::new(RealFs),
        dir.path(),
        options.recovery(RecoveryMode::AbsoluteConsistency),
    )?;
    assert_eq!(read_all(&wal)?, written);
    Ok(())
}
