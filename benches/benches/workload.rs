//! The workloads: keys, values, the preload, and the client threads that run one
//! workload against any `Kv`, so regionkv and its peers run exactly the same code.

use std::sync::Barrier;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::kv::{Kv, KvError, Opened, System};

/// Bytes of every value written.
pub const VALUE_BYTES: usize = 150;
/// Keys written before a read, mixed or scan workload starts.
pub const PRELOAD_KEYS: u64 = 10_000;
/// Pairs read by one scan.
pub const SCAN_KEYS: usize = 1_000;
/// Pairs per durable batch of the preload.
const PRELOAD_BATCH: usize = 500;

// A scan from any of the first `PRELOAD_KEYS - SCAN_KEYS` keys reads a full `SCAN_KEYS`.
const _: () = assert!(PRELOAD_KEYS as usize > SCAN_KEYS);

/// Bytes of every key.
pub const KEY_BYTES: usize = 24;

/// A key: 24 bytes, the hex of a 64-bit mix of `i` (so consecutive writes land all over
/// the key space, as a hashed key would) followed by the hex of `i`'s low 32 bits (so keys
/// are unique: no run writes 2^32 keys).
pub fn key(i: u64) -> [u8; KEY_BYTES] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut key = [0u8; KEY_BYTES];
    let (hashed, plain) = key.split_at_mut(16);
    let mixed = mix(i);
    for (n, byte) in hashed.iter_mut().enumerate() {
        *byte = HEX[((mixed >> (60 - 4 * n)) & 0xf) as usize];
    }
    for (n, byte) in plain.iter_mut().enumerate() {
        *byte = HEX[((i >> (28 - 4 * n)) & 0xf) as usize];
    }
    key
}

/// A 64-bit finaliser: every input bit flips about half of the output bits.
fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// A small per-thread pseudo-random sequence (xorshift64*): which key to read next.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        // Invariant: zero is xorshift's fixed point, so the state starts odd.
        Rng(mix(seed) | 1)
    }

    /// A number in `[0, bound)`.
    fn below(&mut self, bound: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % bound
    }
}

/// What each client operation does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workload {
    /// A durable put of a new key.
    Put,
    /// A get of a random preloaded key.
    Get,
    /// 90 % gets of random preloaded keys, 10 % durable overwrites of random preloaded keys.
    Mixed,
    /// A scan of `SCAN_KEYS` pairs from a random preloaded key.
    Scan,
}

impl Workload {
    /// Whether the workload reads preloaded keys.
    pub fn needs_preload(self) -> bool {
        self != Workload::Put
    }
}

/// The preloaded keys in key order (scans start at one of them).
pub struct Preloaded {
    sorted: Vec<[u8; KEY_BYTES]>,
}

impl Preloaded {
    /// Writes keys `0..PRELOAD_KEYS` into `kv` in durable batches.
    pub fn load(kv: &dyn Kv) -> Preloaded {
        let value = [b'v'; VALUE_BYTES];
        let mut sorted: Vec<[u8; KEY_BYTES]> = (0..PRELOAD_KEYS).map(key).collect();
        for chunk in sorted.chunks(PRELOAD_BATCH) {
            let pairs: Vec<(&[u8], &[u8])> = chunk.iter().map(|k| (&k[..], &value[..])).collect();
            kv.put_batch(&pairs).unwrap_or_else(|e| panic!("the preload failed: {e}"));
        }
        sorted.sort_unstable();
        Preloaded { sorted }
    }
}

/// One workload on one open system, and the state it keeps across measurements.
pub struct Run {
    opened: Opened,
    workload: Workload,
    preloaded: Option<Preloaded>,
    /// The next key number no put has used yet (puts write new keys, in every
    /// measurement).
    next_key: AtomicU64,
    /// Seeds each measurement's random sequences differently.
    measurements: AtomicU64,
}

impl Run {
    /// Opens `system` fresh and preloads it if `workload` reads.
    pub fn start(system: System, workload: Workload) -> Run {
        let opened =
            system.open().unwrap_or_else(|e| panic!("{}: open failed: {e}", system.name()));
        let preloaded = workload.needs_preload().then(|| Preloaded::load(opened.kv()));
        Run {
            opened,
            workload,
            preloaded,
            next_key: AtomicU64::new(PRELOAD_KEYS),
            measurements: AtomicU64::new(0),
        }
    }

    /// One measurement: `threads` client threads, spawned for it, share `ops` operations;
    /// the clock runs from the moment they are all released to the moment the last one
    /// is done.
    pub fn measure(&self, threads: usize, ops: u64) -> Duration {
        let threads_u64 = threads as u64;
        let seed = self.measurements.fetch_add(1, Ordering::Relaxed) * threads_u64;
        let barrier = Barrier::new(threads + 1);
        std::thread::scope(|scope| {
            let clients: Vec<_> = (0..threads_u64)
                .map(|t| {
                    let share = ops / threads_u64 + u64::from(t < ops % threads_u64);
                    let barrier = &barrier;
                    scope.spawn(move || {
                        let mut rng = Rng::new(seed + t);
                        let first = self.next_key.fetch_add(share, Ordering::Relaxed);
                        barrier.wait();
                        for n in 0..share {
                            self.op(&mut rng, first + n);
                        }
                    })
                })
                .collect();
            barrier.wait();
            let start = Instant::now();
            for client in clients {
                client.join().expect("a client thread panicked (its message is above)");
            }
            start.elapsed()
        })
    }

    /// One client operation; `fresh` is a key number no other operation uses.
    fn op(&self, rng: &mut Rng, fresh: u64) {
        const VALUE: [u8; VALUE_BYTES] = [b'w'; VALUE_BYTES];
        let kv = self.opened.kv();
        let workload = self.workload;
        let failed = |e| -> ! { panic!("{workload:?}: a request failed: {e}") };
        match workload {
            Workload::Put => kv.put(&key(fresh), &VALUE).unwrap_or_else(|e| failed(e)),
            Workload::Get => self.get(rng).unwrap_or_else(|e| failed(e)),
            Workload::Mixed if rng.below(10) == 0 => {
                kv.put(&key(rng.below(PRELOAD_KEYS)), &VALUE).unwrap_or_else(|e| failed(e));
            }
            Workload::Mixed => self.get(rng).unwrap_or_else(|e| failed(e)),
            Workload::Scan => {
                let sorted =
                    &self.preloaded.as_ref().expect("a scan runs on preloaded keys").sorted;
                let from = rng.below((sorted.len() - SCAN_KEYS) as u64) as usize;
                let rows = kv.scan(&sorted[from], SCAN_KEYS).unwrap_or_else(|e| failed(e));
                // Every system must do the same work: a full scan, never a short one.
                assert_eq!(rows, SCAN_KEYS, "a scan from a preloaded key came back short");
            }
        }
    }

    /// A get of a random preloaded key, which must be there.
    fn get(&self, rng: &mut Rng) -> Result<(), KvError> {
        let found = self.opened.kv().get(&key(rng.below(PRELOAD_KEYS)))?;
        // Every system must do the same work: a hit, never a miss.
        assert_eq!(found, Some(VALUE_BYTES), "a preloaded key is missing");
        Ok(())
    }
}
