//! Phase 6 of the demo: transactions. Eight accounts in four regions of a three-store
//! cluster; four threads move money between two accounts each (in different regions),
//! every transfer one `Db::write` batch spanning two regions (two-phase commit), while
//! store 2 is killed and later restarted. Each thread owns its two accounts, so a
//! transfer whose answer was lost (the store died under it) is settled by reading its
//! accounts back: a batch is all or nothing, so the total never changes. At the end
//! the total is read and checked.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use regionkv::{Cluster, Db, WriteBatch};

use super::DemoError;

/// Accounts, two per region.
const ACCOUNTS: [&str; 8] =
    ["acct-a", "acct-b", "acct-f", "acct-g", "acct-n", "acct-o", "acct-t", "acct-u"];
/// Where the regions are cut.
const SPLITS: [&str; 3] = ["acct-e", "acct-m", "acct-s"];
/// Each account's opening balance.
const OPENING: u64 = 1_000;
/// How long the transfers run.
const RUN: Duration = Duration::from_secs(3);
/// The longest the demo waits for any one step.
const STEP_MAX: Duration = Duration::from_secs(60);

fn verify_err(e: impl std::fmt::Display) -> DemoError {
    DemoError::Verify(e.to_string())
}

fn balance(db: &Db, account: &str) -> Result<u64, DemoError> {
    let deadline = Instant::now() + STEP_MAX;
    loop {
        match db.get(account) {
            Ok(Some(v)) => {
                let s = std::str::from_utf8(&v).map_err(verify_err)?;
                return s.parse().map_err(verify_err);
            }
            Ok(None) => return Err(DemoError::Verify(format!("{account} has no balance"))),
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(verify_err(e)),
        }
    }
}

/// One thread's transfers between its two accounts until `stop`; returns how many were
/// acknowledged and how many were settled by reading back.
fn transfers(
    db: &Db,
    (from, to): (&str, &str),
    stop: &AtomicBool,
    seed: u64,
) -> Result<(u64, u64), DemoError> {
    let (mut a, mut b) = (balance(db, from)?, balance(db, to)?);
    let (mut acked, mut settled) = (0, 0);
    let mut x = seed;
    while !stop.load(Ordering::Relaxed) {
        x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        let amount = (x >> 33) % 50;
        let (na, nb) = if x & 1 == 0 && a >= amount {
            (a - amount, b + amount)
        } else if b >= amount {
            (a + amount, b - amount)
        } else {
            continue;
        };
        let mut batch = WriteBatch::new();
        batch.put(from, na.to_string()).put(to, nb.to_string());
        if db.write(batch).is_ok() {
            (a, b) = (na, nb);
            acked += 1;
        } else {
            // Lost or refused: all or nothing, so the accounts say which.
            (a, b) = (balance(db, from)?, balance(db, to)?);
            settled += 1;
        }
    }
    Ok((acked, settled))
}

/// Runs the phase in `dir`.
pub fn bank_phase(dir: &Path, out: &mut dyn Write) -> Result<(), DemoError> {
    let cluster = Cluster::builder()
        .dir(dir)
        .stores(3)
        .tick_interval(Duration::from_millis(20))
        .txn_recover_interval(Duration::from_millis(200))
        .build()
        .map_err(verify_err)?;
    cluster.split_keys(&SPLITS).map_err(verify_err)?;
    let db = cluster.db().with_deadline(Duration::from_secs(10));
    for account in ACCOUNTS {
        db.put(account, OPENING.to_string()).map_err(verify_err)?;
    }
    let total = OPENING * ACCOUNTS.len() as u64;
    writeln!(
        out,
        "   {} accounts of {OPENING} in {} regions (total {total}); 4 threads transfer between regions for {} s",
        ACCOUNTS.len(),
        SPLITS.len() + 1,
        RUN.as_secs()
    )?;
    let stop = Arc::new(AtomicBool::new(false));
    let (acked, settled) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let threads: Vec<_> = (0..4)
        .map(|i| {
            // Thread i owns accounts i and i + 4: always two regions apart.
            let (db, stop, acked, settled) =
                (db.clone(), stop.clone(), acked.clone(), settled.clone());
            std::thread::spawn(move || -> Result<(), DemoError> {
                let (a, s) = transfers(&db, (ACCOUNTS[i], ACCOUNTS[i + 4]), &stop, i as u64)?;
                acked.fetch_add(a, Ordering::Relaxed);
                settled.fetch_add(s, Ordering::Relaxed);
                Ok(())
            })
        })
        .collect();
    let start = Instant::now();
    std::thread::sleep(RUN / 3);
    cluster.kill_store(2).map_err(verify_err)?;
    writeln!(out, "   store 2 killed after {:.1} s", start.elapsed().as_secs_f64())?;
    std::thread::sleep(RUN / 3);
    cluster.restart_store(2).map_err(verify_err)?;
    writeln!(out, "   store 2 restarted after {:.1} s", start.elapsed().as_secs_f64())?;
    std::thread::sleep(RUN / 3);
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().map_err(|_| DemoError::Verify("a transfer thread panicked".into()))??;
    }
    let found: u64 =
        ACCOUNTS.iter().map(|a| balance(&db, a)).collect::<Result<Vec<_>, _>>()?.iter().sum();
    writeln!(
        out,
        "   {} transfers acknowledged, {} settled by reading back; total after: {found}",
        acked.load(Ordering::Relaxed),
        settled.load(Ordering::Relaxed)
    )?;
    if found != total {
        return Err(DemoError::Verify(format!("the total changed: {total} -> {found}")));
    }
    writeln!(out, "   the total is unchanged: every transfer was all or nothing")?;
    cluster.shutdown().map_err(verify_err)?;
    Ok(())
}
