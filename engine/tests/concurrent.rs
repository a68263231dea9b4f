//! Snapshots stay consistent while a writer commits, splits leaves and sweeps garbage.
//!
//! The writer moves value between accounts, one transfer per round, so the sum over
//! all accounts is constant in every committed state. Readers take snapshots, scan
//! every account and check the sum, then read again at the same snapshot and must see
//! exactly the same data, however many commits and GC sweeps ran in between.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use regionkv_engine::{Engine, EngineOptions, Region, RegionId, StoreId};
use regionkv_wal::SimFs;

const ACCOUNTS: u64 = 300;
const START_BALANCE: u64 = 1000;
const ROUNDS: u64 = 3000;

fn account(i: u64) -> Vec<u8> {
    format!("account-{i:05}").into_bytes()
}

fn balance(v: &[u8]) -> u64 {
    // Values are 8 bytes of balance followed by padding (big values make leaves split).
    u64::from_le_bytes(v[..8].try_into().expect("8-byte balance"))
}

fn value(b: u64) -> Vec<u8> {
    let mut v = b.to_le_bytes().to_vec();
    v.resize(120, 0xab);
    v
}

#[test]
fn snapshots_are_consistent_under_concurrent_commits_and_gc()
-> Result<(), Box<dyn std::error::Error>> {
    let engine = Engine::open(Arc::new(SimFs::new()), "/c", EngineOptions::new(StoreId(1)))?;
    engine.insert_region(Region::whole(RegionId(1)))?;
    let epoch = engine.region(RegionId(1)).ok_or("no region")?.epoch;
    let mut round = engine.begin_round();
    round.prepare_for_region(RegionId(1), epoch)?;
    for i in 0..ACCOUNTS {
        round.put(&account(i), &value(START_BALANCE))?;
    }
    round.commit()?;
    let done = AtomicBool::new(false);
    std::thread::scope(|scope| -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        let readers: Vec<_> = (0..2)
            .map(|_| {
                scope.spawn(|| {
                    let mut checks = 0u64;
                    // Bounded: the writer finishes after ROUNDS rounds.
                    while !done.load(Ordering::Acquire) || checks == 0 {
                        let snap = engine.read_view();
                        let first = snap.scan(b"account-", Some(b"account-~"), usize::MAX);
                        assert_eq!(first.len() as u64, ACCOUNTS);
                        let sum: u64 = first.iter().map(|(_, v)| balance(v)).sum();
                        assert_eq!(
                            sum,
                            ACCOUNTS * START_BALANCE,
                            "a torn round at {:?}",
                            snap.seq()
                        );
                        std::thread::yield_now();
                        let again = snap.scan(b"account-", Some(b"account-~"), usize::MAX);
                        assert_eq!(first, again, "a snapshot changed under a reader");
                        let k = account(checks % ACCOUNTS);
                        assert_eq!(
                            snap.get(&k).as_deref(),
                            first.iter().find(|(key, _)| key[..] == k[..]).map(|(_, v)| &v[..])
                        );
                        checks += 1;
                    }
                    checks
                })
            })
            .collect();
        let mut balances = vec![START_BALANCE; ACCOUNTS as usize];
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        for r in 0..ROUNDS {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let (from, to) = ((x % ACCOUNTS) as usize, ((x >> 32) % ACCOUNTS) as usize);
            let amount = (x >> 16) % 50;
            if from == to || balances[from] < amount {
                continue;
            }
            balances[from] -= amount;
            balances[to] += amount;
            let mut round = engine.begin_round();
            round.prepare_for_region(RegionId(1), epoch)?;
            round.put(&account(from as u64), &value(balances[from]))?;
            round.put(&account(to as u64), &value(balances[to]))?;
            round.commit()?;
            if r % 64 == 0 {
                engine.gc(100);
            }
        }
        done.store(true, Ordering::Release);
        for reader in readers {
            let checks = reader.join().map_err(|_| "a reader panicked")?;
            assert!(checks > 0);
        }
        Ok(())
    })
    .map_err(|e| e.to_string())?;
    // With no snapshot left, a full sweep leaves one version per account.
    engine.gc(usize::MAX);
    engine.gc(usize::MAX);
    assert_eq!(engine.memory().entries as u64, ACCOUNTS);
    Ok(())
}
