//! The client load every `regionkv bench` of the public API runs: `clients` threads,
//! each calling one operation on a `Db` in a loop, a warm-up that is not counted, then a
//! measured window, with a counter (CPU time, fsyncs) read at both ends of the window.

use std::collections::BTreeMap;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Barrier, OnceLock};
use std::time::{Duration, Instant};

use regionkv::Db;

use crate::progress::{Counter, Mode};

/// How each measured figure shows its progress; set once by `main` before a bench
/// runs (unset, as in unit tests, nothing is shown).
static PROGRESS: OnceLock<Mode> = OnceLock::new();

/// Shows each figure's progress from now on: a bar on stdout over the figure's
/// seconds, or one line on stderr per figure (stdout may carry `--json`).
pub fn show_progress(mode: Mode) {
    let _ = PROGRESS.set(mode);
}

/// Sleeps until `until`, drawing the figure's bar (from `start`) if one is shown.
fn wait_showing(start: Instant, until: Instant, clients: usize) {
    let total = until.saturating_duration_since(start).as_millis() as u64;
    match PROGRESS.get() {
        Some(Mode::Bar) => {
            let mut out = io::stdout();
            let mut bar = Counter::new(Mode::Bar, total, &format!("ms, {clients} clients"));
            while Instant::now() < until {
                let _ = bar.set(start.elapsed().as_millis() as u64, &mut out);
                std::thread::sleep(Duration::from_millis(100).min(until - Instant::now()));
            }
            bar.finish();
        }
        Some(Mode::Lines) => {
            eprintln!("bench: {clients} clients for {:.1} s", total as f64 / 1000.0);
            std::thread::sleep(until.saturating_duration_since(Instant::now()));
        }
        None => std::thread::sleep(until.saturating_duration_since(Instant::now())),
    }
}

/// One client operation: `(db, client thread, its call number, its random numbers)`.
pub type Op = dyn Fn(&Db, usize, u64, &mut Rng) -> io::Result<()> + Send + Sync;

/// What one load measured over its window.
pub struct Measured {
    /// Operations completed in the window, per second.
    pub per_sec: f64,
    /// Latencies (µs) of the operations completed in the window, sorted.
    pub latencies_us: Vec<u32>,
    /// Operations completed in the window.
    pub ops: u64,
    /// The counter's growth over the window.
    pub counted: u64,
}

impl Measured {
    /// The `p`th percentile latency in µs.
    pub fn percentile_us(&self, p: usize) -> f64 {
        super::cluster::percentile(&self.latencies_us, p)
    }

    /// The counter's growth per operation.
    pub fn counted_per_op(&self) -> f64 {
        self.counted as f64 / self.ops.max(1) as f64
    }
}

/// The warm-up before each measured window: 1 s (a new store zero-fills its first spare
/// WAL segment meanwhile), or the window's length if that is shorter.
pub fn warmup(duration: Duration) -> Duration {
    duration.min(Duration::from_secs(1))
}

/// A small per-thread pseudo-random sequence (xorshift64).
pub struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        // Invariant: zero is xorshift's fixed point, so the state is never zero.
        Rng(0x9E37_79B9_7F4A_7C15 ^ seed.wrapping_mul(0xBF58_476D_1CE4_E5B9) | 1)
    }

    /// A number in `[0, bound)`.
    pub fn below(&mut self, bound: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % bound.max(1)
    }
}

/// Runs `op` from `clients` threads on clones of `db` for `warmup(duration) + duration`;
/// `counter` is read when the window opens and when it closes.
pub fn run(
    db: &Db,
    clients: usize,
    duration: Duration,
    op: &Arc<Op>,
    counter: &dyn Fn() -> io::Result<u64>,
) -> io::Result<Measured> {
    let warmup = warmup(duration);
    let barrier = Arc::new(Barrier::new(clients + 1));
    let done = Arc::new(AtomicU64::new(0));
    let threads: Vec<_> = (0..clients)
        .map(|c| {
            let (db, barrier, op, done) = (db.clone(), barrier.clone(), op.clone(), done.clone());
            std::thread::Builder::new().name(format!("bench-client-{c}")).spawn(
                move || -> io::Result<Vec<u32>> {
                    let mut rng = Rng::new(c as u64);
                    let mut latencies = Vec::with_capacity(1 << 12);
                    barrier.wait();
                    let start = Instant::now();
                    let mut i = 0u64;
                    while start.elapsed() < warmup + duration {
                        let t0 = Instant::now();
                        op(&db, c, i, &mut rng)?;
                        if start.elapsed() >= warmup {
                            latencies
                                .push(t0.elapsed().as_micros().min(u128::from(u32::MAX)) as u32);
                        }
                        i += 1;
                    }
                    done.fetch_add(latencies.len() as u64, Ordering::Relaxed);
                    Ok(latencies)
                },
            )
        })
        .collect::<io::Result<_>>()?;
    barrier.wait();
    let start = Instant::now();
    std::thread::sleep(warmup);
    let before = counter()?;
    wait_showing(start, start + warmup + duration, clients);
    let after = counter()?;
    let mut latencies_us = Vec::new();
    for t in threads {
        latencies_us.extend(t.join().map_err(|_| io::Error::other("a client panicked"))??);
    }
    latencies_us.sort_unstable();
    let ops = done.load(Ordering::Relaxed);
    Ok(Measured {
        per_sec: ops as f64 / duration.as_secs_f64(),
        latencies_us,
        ops,
        counted: after.saturating_sub(before),
    })
}

/// Writes `keys` (each with a `value_bytes` value) in durable batches of 500.
pub fn preload(db: &Db, keys: &[Vec<u8>], value_bytes: usize) -> io::Result<()> {
    let value = vec![b'p'; value_bytes];
    for chunk in keys.chunks(500) {
        let mut batch = regionkv::WriteBatch::new();
        for key in chunk {
            batch.put(key.clone(), value.clone());
        }
        db.write(batch).map_err(io::Error::other)?;
    }
    Ok(())
}

/// The keys of a figure keyed by thread count, in numeric order ("2" before "16").
pub fn by_count(map: &BTreeMap<String, f64>) -> Vec<(&String, f64)> {
    let mut rows: Vec<(&String, f64)> = map.iter().map(|(k, v)| (k, *v)).collect();
    rows.sort_by_key(|(k, _)| k.parse::<usize>().unwrap_or(usize::MAX));
    rows
}
