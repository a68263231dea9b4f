//! What the bank anomaly checkers (`sim_txn_bank`, `sim_si_bank`) share: an account's
//! value (its balance and the ids of the transfers that moved it), the tests' own
//! deterministic choices, a store crashing between two steps of a protocol, and a
//! routed transaction command that a coordinator gives up on.

use std::time::Duration;

use bytes::Bytes;
use regionkv_engine::StoreId;
use regionkv_raft::sim::{SimCluster, WALL_CLOCK_START_MS};
use regionkv_raft::{Error, TxnCmd, TxnReply};
use regionkv_wal::CrashMode;

use super::{SECOND, region_for};

/// Every account's balance before the first transfer.
pub const INITIAL: i64 = 100;

/// An account's value: its balance, then the ids of the transfers applied to it.
pub fn encode(balance: i64, history: &[u64]) -> Bytes {
    let ids: Vec<String> = history.iter().map(u64::to_string).collect();
    Bytes::from(format!("{balance};{}", ids.join(",")))
}

/// The balance and history of an account's value.
pub fn decode(value: &[u8]) -> (i64, Vec<u64>) {
    let text = std::str::from_utf8(value).expect("utf-8");
    let (balance, ids) = text.split_once(';').expect("balance;history");
    let history = ids.split(',').filter(|s| !s.is_empty()).map(|s| s.parse().unwrap()).collect();
    (balance.parse().unwrap(), history)
}

/// The stores' wall clock (what a lock's expiry is measured against).
pub fn wall_ms(c: &SimCluster) -> u64 {
    WALL_CLOCK_START_MS + u64::try_from(c.now().as_millis()).expect("small")
}

/// Sends `cmd` to the leader of the region holding `key`, again and again until it is
/// answered (every transaction command is idempotent) or `max` passes (`None`: the
/// coordinator gives up, the outcome unknown to it).
pub fn send(
    c: &mut SimCluster,
    key: &[u8],
    cmd: &TxnCmd,
    max: Duration,
) -> Option<Result<TxnReply, Error>> {
    let deadline = c.now() + max;
    while c.now() < deadline {
        let Some(region) = region_for(c, key) else {
            c.run_for(Duration::from_millis(20));
            continue;
        };
        let Some(leader) = c.wait_leader(region.id, SECOND) else { continue };
        let pending = c.txn(leader, region.id, cmd.clone());
        match c.wait(&pending, Duration::from_millis(500)) {
            Some(Ok(reply)) => return Some(Ok(reply)),
            Some(Err(e)) if e.is_retryable() || e.is_cancelled() => {
                c.run_for(Duration::from_millis(20));
            }
            Some(Err(e)) => return Some(Err(e)),
            None => {}
        }
    }
    None
}

/// A deterministic generator for the test's own choices (the simulator has its own).
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Between two steps of the protocol: maybe crash a store (one at a time, back before
/// the next crash; every crash mode), maybe give up. True: the coordinator gives up
/// here.
pub fn between_steps(c: &mut SimCluster, rng: &mut Rng, down: &mut Option<StoreId>) -> bool {
    if let Some(store) = down.take() {
        c.restart(store).expect("restart");
    }
    if rng.below(4) == 0 {
        let store = StoreId(1 + rng.below(3));
        let mode = match rng.below(3) {
            0 => CrashMode::Lost,
            1 => CrashMode::Persisted,
            _ => CrashMode::Torn { seed: rng.next() },
        };
        c.crash(store, mode);
        *down = Some(store);
    }
    rng.below(8) == 0
}
