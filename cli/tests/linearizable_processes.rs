//! Linearizability of `Db` calls to three `regionkv node` processes (the real binary,
//! real TCP, real fsync) while their processes are killed with SIGKILL: one at a
//! time, and all three at once (the whole cluster crashes, as in a power loss, except
//! that the kernel keeps what the processes wrote: this tests recovery from the
//! files, not that fsync reached the disk), before they restart from their data dirs.
//! Client threads put, get and delete a few keys spread over three regions; every
//! call is recorded as its client saw it (`regionkv-check`), and each key's history
//! is checked against a register after final reads of every key. Every key is also
//! read right after the whole cluster restarts, before the clients start new calls, so
//! a write acknowledged before the crash and missing after it fails the check; the
//! control test shows that it does.
//!
//! A call that returned an error may or may not have happened (a deadline, a lost
//! connection): a write stays open forever, a read is dropped. Only a refusal before
//! anything was sent (an invalid request) counts as not applied.
//!
//! `PROCESS_LIN_ROUNDS=N` runs N rounds of kills on the same cluster (default 2), each
//! on a fresh set of keys; `PROCESS_LIN_SEED=S` fixes the choice of victims and pauses
//! (the processes' interleaving is not reproducible).

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{CLUSTER, Procs, SECRET};
use parking_lot::Mutex;
use regionkv::{Bytes, Client, Db, Error};
use regionkv_check::{Call, Op, Recorder, Report, XorShift as Rng, check};

const NODES: usize = 3;
const CLIENTS: u64 = 4;
/// Keys per round; the regions split at `k3` and `k6` hold 3, 3 and 2 of them.
const KEYS: u64 = 8;
const SPLITS: [&str; 2] = ["k3", "k6"];
/// Each round splits its middle region at `k5-r<round>` and merges it back, under the
/// clients' traffic.
const MOVING: &str = "k5";
/// Acknowledged calls the test waits for after each kill and restart, so that every
/// fault lands on a cluster that serves.
const PROGRESS: u64 = 40;
/// Liveness bound on waiting for that progress (not a measurement).
const LIVENESS: Duration = Duration::from_secs(90);
/// Each client's deadline per call: most are longer than a restart, so that most
/// calls outlive a kill; the shortest gives up during elections, so some writes have
/// an unknown outcome (and stay open in the history).
const DEADLINES: [Duration; CLIENTS as usize] = [
    Duration::from_secs(10),
    Duration::from_secs(10),
    Duration::from_secs(2),
    Duration::from_millis(300),
];
/// The deadline of the test's own reads of every key.
const READ_DEADLINE: Duration = Duration::from_secs(10);
/// Search states per key before the checker gives up (inconclusive, never passing).
const STATES_MAX: u64 = 2_000_000;

/// A pause of 200 to 1,000 ms.
fn pause(rng: &mut Rng) -> Duration {
    Duration::from_millis(200 + rng.next() % 800)
}

fn key(round: u64, i: u64) -> Bytes {
    Bytes::from(format!("k{i}-r{round}"))
}

/// What the client threads share with the test.
struct Shared {
    recorder: Recorder<Bytes, Bytes>,
    /// Calls that returned Ok.
    acked: AtomicU64,
    /// Calls whose outcome is unknown (open writes, dropped reads).
    unknown: AtomicU64,
    /// The first few errors the calls returned.
    errors: Mutex<BTreeSet<String>>,
    /// The round whose keys the clients use.
    round: AtomicU64,
    /// While set, the clients start no new call (calls in flight go on): the test's
    /// reads right after the whole cluster restarts come before any new write.
    hold: AtomicBool,
    done: AtomicBool,
}

impl Shared {
    fn failed_or_unknown(&self, call: Call, e: &Error) {
        match e {
            // Refused before anything was sent.
            Error::InvalidRequest(_) | Error::CrossRegionBatch { .. } => {
                self.recorder.failed(call);
            }
            _ => {
                self.recorder.unknown(call);
                self.unknown.fetch_add(1, Ordering::Relaxed);
            }
        }
        let mut errors = self.errors.lock();
        if errors.len() < 8 {
            errors.insert(e.to_string());
        }
    }

    /// Records how a put or a delete ended.
    fn written(&self, call: Call, outcome: regionkv::Result<()>) {
        match outcome {
            Ok(()) => {
                self.recorder.ok(call, None);
                self.acked.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => self.failed_or_unknown(call, &e),
        }
    }

    /// A recorded get.
    fn get(&self, db: &Db, key: &Bytes) -> bool {
        let call = self.recorder.invoke(key.clone(), Op::Get);
        match db.get(key) {
            Ok(read) => {
                self.recorder.ok(call, read);
                self.acked.fetch_add(1, Ordering::Relaxed);
                true
            }
            Err(e) => {
                self.failed_or_unknown(call, &e);
                false
            }
        }
    }
}

/// One client thread: random calls on the current round's keys until told to stop.
fn run_client(shared: &Shared, db: &Db, seed: u64, client: u64) {
    let mut rng = Rng::new(seed ^ 0x9E37_79B9_7F4A_7C15 ^ (client + 1));
    let mut n = 0u64;
    while !shared.done.load(Ordering::SeqCst) {
        if shared.hold.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(5));
            continue;
        }
        n += 1;
        let key = key(shared.round.load(Ordering::SeqCst), rng.next() % KEYS);
        match rng.next() % 10 {
            0..=3 => {
                shared.get(db, &key);
            }
            4..=8 => {
                // Every value is unique, so a read names the write it saw.
                let value = Bytes::from(format!("c{client}-{n}"));
                let call = shared.recorder.invoke(key.clone(), Op::Put(value.clone()));
                shared.written(call, db.put(key, value));
            }
            _ => {
                let call = shared.recorder.invoke(key.clone(), Op::Delete);
                shared.written(call, db.delete(key));
            }
        }
    }
}

/// Waits until the clients have had `PROGRESS` more calls acknowledged.
fn wait_progress(procs: &Procs, shared: &Shared, after: &str) {
    let from = shared.acked.load(Ordering::SeqCst);
    let deadline = Instant::now() + LIVENESS;
    while shared.acked.load(Ordering::SeqCst) < from + PROGRESS {
        assert!(
            Instant::now() < deadline,
            "no progress within {LIVENESS:?} after {after}; errors seen: {:?}\n{}",
            shared.errors.lock(),
            procs.logs()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Recorded reads of every key of rounds `0..=last`, each retried until it answers.
fn read_every_key(procs: &Procs, shared: &Shared, db: &Db, last: u64, when: &str) {
    for round in 0..=last {
        for i in 0..KEYS {
            let key = key(round, i);
            let deadline = Instant::now() + LIVENESS;
            while !shared.get(db, &key) {
                assert!(
                    Instant::now() < deadline,
                    "could not read {key:?} {when}; errors seen: {:?}\n{}",
                    shared.errors.lock(),
                    procs.logs()
                );
            }
        }
    }
}

/// Splits the key space at `at`, retrying while the cluster elects its leaders.
fn split(procs: &Procs, client: &Client, at: &str) {
    let deadline = Instant::now() + LIVENESS;
    loop {
        match client.split(at) {
            Ok(_) => return,
            Err(e) if e.is_retryable() && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => panic!("split at {at}: {e}\n{}", procs.logs()),
        }
    }
}

/// What the disks hold when the cluster restarts after its crash.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Disks {
    /// What the nodes wrote: the system under test.
    Kept,
    /// An image of the three data dirs taken before any call was made: every
    /// acknowledged write is lost, and the check must say so (the control).
    RolledBack,
}

/// Copies the directory tree `from` to `to`.
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// Restarts every node (all of them are down).
fn start_all(procs: &mut Procs) {
    for id in 1..=NODES {
        procs.start(id);
    }
}

/// Merges the region that starts at `at` into its left neighbour; done once no region
/// starts there (a merge that failed, or whose answer was lost, is tried again).
fn merge_at(procs: &Procs, client: &Client, at: &str) {
    let deadline = Instant::now() + LIVENESS;
    loop {
        let outcome = client.regions().and_then(|regions| {
            let Some(right) = regions.iter().find(|r| r.region.start == at.as_bytes()) else {
                return Ok(());
            };
            let left = regions
                .iter()
                .find(|r| r.region.end.as_deref() == Some(at.as_bytes()))
                .expect("a region ends where another starts");
            client.merge(left.region.id, right.region.id).map(|_| ())
        });
        match outcome {
            Ok(()) => return,
            Err(e) => {
                assert!(Instant::now() < deadline, "merge at {at}: {e}\n{}", procs.logs());
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

/// What the test does to the cluster, and how often it did it.
struct Nemesis<'a> {
    procs: Procs,
    client: &'a Client,
    shared: &'a Shared,
    /// The test's own reads of every key.
    reader: Db,
    rng: Rng,
    disks: Disks,
    /// The data dirs' image, for [`Disks::RolledBack`].
    image: PathBuf,
    single_kills: u64,
    whole_crashes: u64,
    splits: u64,
    merges: u64,
}

impl Nemesis<'_> {
    /// A split, a node, a merge, a node, the whole cluster, a node. (The control
    /// leaves the regions alone: its disks go back to the regions of its image.)
    fn round(&mut self, round: u64) {
        self.shared.round.store(round, Ordering::SeqCst);
        wait_progress(&self.procs, self.shared, &format!("the start of round {round}"));
        let moving = format!("{MOVING}-r{round}");
        if self.disks == Disks::Kept {
            split(&self.procs, self.client, &moving);
            self.splits += 1;
            wait_progress(&self.procs, self.shared, &format!("the split at {moving}"));
        }
        self.kill_one();
        if self.disks == Disks::Kept {
            merge_at(&self.procs, self.client, &moving);
            self.merges += 1;
            wait_progress(&self.procs, self.shared, &format!("the merge at {moving}"));
        }
        self.kill_one();
        self.crash_all(round);
        self.kill_one();
    }

    /// SIGKILLs a node, and restarts it after a pause.
    fn kill_one(&mut self) {
        let victim = usize::try_from(self.rng.next() % NODES as u64).unwrap() + 1;
        self.procs.kill(victim);
        self.single_kills += 1;
        std::thread::sleep(pause(&mut self.rng));
        self.procs.start(victim);
        wait_progress(&self.procs, self.shared, &format!("node {victim} restarted"));
    }

    /// SIGKILLs every node at once, restarts them after a pause and reads every key.
    fn crash_all(&mut self, round: u64) {
        self.shared.hold.store(true, Ordering::SeqCst);
        self.procs.kill_all();
        self.whole_crashes += 1;
        if self.disks == Disks::RolledBack {
            for id in 1..=NODES {
                std::fs::remove_dir_all(self.procs.data_dir(id)).unwrap();
                copy_dir(&self.image.join(id.to_string()), &self.procs.data_dir(id));
            }
        }
        std::thread::sleep(pause(&mut self.rng));
        start_all(&mut self.procs);
        // Every write acknowledged before the crash must read back.
        read_every_key(&self.procs, self.shared, &self.reader, round, "after the crash");
        self.shared.hold.store(false, Ordering::SeqCst);
        wait_progress(&self.procs, self.shared, "the crash of the whole cluster");
    }
}

/// Starts the cluster, runs `rounds` rounds of kills under the clients, reads every key
/// and checks the history.
fn run(rounds: u64, seed: u64, disks: Disks) -> Report {
    eprintln!("PROCESS_LIN_SEED={seed} PROCESS_LIN_ROUNDS={rounds}");
    let dir = tempfile::tempdir().unwrap();
    let mut procs = Procs::new(dir.path(), NODES);
    start_all(&mut procs);
    let client = Client::connect(&procs.addrs, CLUSTER, SECRET).unwrap();
    for at in SPLITS {
        split(&procs, &client, at);
    }
    let regions = client.regions().unwrap();
    assert!(regions.len() > SPLITS.len(), "{regions:?}");
    let image = dir.path().join("image");
    if disks == Disks::RolledBack {
        procs.kill_all();
        for id in 1..=NODES {
            copy_dir(&procs.data_dir(id), &image.join(id.to_string()));
        }
        start_all(&mut procs);
    }

    let shared = Arc::new(Shared {
        recorder: Recorder::new(),
        acked: AtomicU64::new(0),
        unknown: AtomicU64::new(0),
        errors: Mutex::new(BTreeSet::new()),
        round: AtomicU64::new(0),
        hold: AtomicBool::new(false),
        done: AtomicBool::new(false),
    });
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let db = client.db().with_deadline(DEADLINES[usize::try_from(c).unwrap()]);
            let shared = shared.clone();
            std::thread::spawn(move || run_client(&shared, &db, seed, c))
        })
        .collect();
    let mut nemesis = Nemesis {
        procs,
        client: &client,
        shared: &shared,
        reader: client.db().with_deadline(READ_DEADLINE),
        rng: Rng::new(seed),
        disks,
        image,
        single_kills: 0,
        whole_crashes: 0,
        splits: 0,
        merges: 0,
    };
    for round in 0..rounds {
        nemesis.round(round);
    }
    shared.done.store(true, Ordering::SeqCst);
    for c in clients {
        c.join().unwrap();
    }
    // Settled: every node runs; the final reads close every key's history.
    let procs = &mut nemesis.procs;
    assert!((1..=NODES).all(|id| procs.is_running(id)));
    read_every_key(procs, &shared, &nemesis.reader, rounds - 1, "at the end");

    let history = shared.recorder.history();
    let report = check(&history, STATES_MAX);
    eprintln!(
        "process linearizability: {rounds} rounds, {} calls, {} operations checked on {} keys \
         ({} open writes, {} search states), {} single kills, {} crashes of the whole \
         cluster, {} splits and {} merges under traffic, {} unknown outcomes; first errors: \
         {:?}",
        history.len(),
        report.operations,
        report.keys,
        report.open_writes,
        report.states,
        nemesis.single_kills,
        nemesis.whole_crashes,
        nemesis.splits,
        nemesis.merges,
        shared.unknown.load(Ordering::SeqCst),
        shared.errors.lock(),
    );
    assert_eq!(report.keys as u64, rounds * KEYS, "{report}");
    client.close();
    nemesis.procs.stop_all_by_stdin();
    report
}

fn seed() -> u64 {
    std::env::var("PROCESS_LIN_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or_else(|| {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
        now.map_or(1, |d| u64::try_from(d.as_nanos() % (1 << 63)).unwrap_or(1)) | 1
    })
}

#[test]
fn db_calls_to_sigkilled_node_processes_stay_linearizable() {
    let rounds: u64 =
        std::env::var("PROCESS_LIN_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(2);
    let seed = seed();
    let report = run(rounds.max(1), seed, Disks::Kept);
    assert!(report.is_linearizable(), "PROCESS_LIN_SEED={seed}: {report}");
}

/// The control: the same run, but the cluster comes back from its crash with
/// disks that lost every acknowledged write, and the check must find it out.
#[test]
fn a_cluster_that_lost_acknowledged_writes_is_caught() {
    let seed = seed();
    let report = run(1, seed, Disks::RolledBack);
    assert!(!report.violations.is_empty(), "PROCESS_LIN_SEED={seed}: {report}");
    eprintln!(
        "as expected, {} keys fail; the first:\n{}",
        report.violations.len(),
        report.violations[0]
    );
}
