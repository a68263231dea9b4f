//! An in-process network of stores, with fault injection.
//!
//! [`Faults`] decides the fate of each envelope from rules scoped by sender, receiver,
//! region and Raft message type: drop (with a probability), duplicate, delay (which
//! reorders). Partitions and isolation are sets of drop rules. The same `Faults` serve
//! [`LocalNetwork`] (real threads and time) and the deterministic simulator (virtual
//! time and a seeded generator).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex, RwLock};
use raft::eraftpb::MessageType;
use regionkv_engine::{RegionId, StoreId};

use super::{Body, Envelope, Inbox, Transport};

/// Which envelopes a rule applies to; `None` matches anything.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Scope {
    /// Sending store.
    pub from: Option<StoreId>,
    /// Receiving store.
    pub to: Option<StoreId>,
    /// Region.
    pub region: Option<RegionId>,
    /// Raft message type (snapshot chunks match `MsgSnapshot`).
    pub msg_type: Option<MessageType>,
}

impl Scope {
    /// Every envelope.
    pub fn any() -> Scope {
        Scope::default()
    }

    /// Envelopes from `from` to `to`.
    pub fn between(from: StoreId, to: StoreId) -> Scope {
        Scope { from: Some(from), to: Some(to), ..Scope::default() }
    }

    fn matches(&self, env: &Envelope) -> bool {
        let msg_type = match &env.body {
            Body::Raft(m) => m.get_msg_type(),
            Body::SnapshotChunk(_) => MessageType::MsgSnapshot,
            // Liveness traffic (and the notice that a peer is gone) counts as
            // heartbeats for fault rules.
            Body::Hibernate { .. } | Body::Alive | Body::Gone { .. } => MessageType::MsgHeartbeat,
        };
        self.from.is_none_or(|s| s == env.from)
            && self.to.is_none_or(|s| s == env.to)
            && self.region.is_none_or(|r| r == env.region)
            && self.msg_type.is_none_or(|t| t == msg_type)
    }
}

/// What happens to matching envelopes.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Action {
    /// Dropped with this probability (1.0: always).
    Drop(f64),
    /// Delivered twice with this probability.
    Duplicate(f64),
    /// Held for a uniformly random time in `[min, max]`; delays reorder messages.
    Delay {
        /// Shortest delay.
        min: Duration,
        /// Longest delay.
        max: Duration,
    },
}

/// A scoped action.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rule {
    /// Which envelopes.
    pub scope: Scope,
    /// What happens to them.
    pub action: Action,
}

/// The fate of one envelope.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fate {
    /// How many copies arrive: 0 (dropped), 1, or 2 (duplicated).
    pub copies: u8,
    /// How long they are held first.
    pub delay: Duration,
}

/// A source of randomness for fault decisions.
pub trait FaultRng {
    /// A uniform value in `[0, 1)`.
    fn unit(&mut self) -> f64;
}

/// A small deterministic generator (`SplitMix64`) for fault decisions.
#[derive(Clone, Debug)]
pub struct SplitMix(pub u64);

impl SplitMix {
    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

impl FaultRng for SplitMix {
    #[allow(clippy::cast_precision_loss, reason = "both values have 53 bits: exact in f64")]
    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// The fault rules of a network. Clones share the rules.
#[derive(Clone, Debug, Default)]
pub struct Faults {
    rules: Arc<RwLock<Vec<Rule>>>,
}

impl Faults {
    /// No faults.
    pub fn new() -> Faults {
        Faults::default()
    }

    /// Adds a rule.
    pub fn add(&self, rule: Rule) {
        self.rules.write().push(rule);
    }

    /// Removes every rule.
    pub fn clear(&self) {
        self.rules.write().clear();
    }

    /// Cuts every link between a store of `a` and a store of `b`, both ways.
    pub fn partition(&self, a: &[StoreId], b: &[StoreId]) {
        let mut rules = self.rules.write();
        for &x in a {
            for &y in b {
                rules.push(Rule { scope: Scope::between(x, y), action: Action::Drop(1.0) });
                rules.push(Rule { scope: Scope::between(y, x), action: Action::Drop(1.0) });
            }
        }
    }

    /// Cuts `store` off from everyone, both ways.
    pub fn isolate(&self, store: StoreId) {
        let mut rules = self.rules.write();
        rules.push(Rule {
            scope: Scope { from: Some(store), ..Scope::any() },
            action: Action::Drop(1.0),
        });
        rules.push(Rule {
            scope: Scope { to: Some(store), ..Scope::any() },
            action: Action::Drop(1.0),
        });
    }

    /// Decides what happens to `env`: every matching rule applies, in order.
    pub fn decide(&self, env: &Envelope, rng: &mut dyn FaultRng) -> Fate {
        let rules = self.rules.read();
        let mut fate = Fate { copies: 1, delay: Duration::ZERO };
        for rule in rules.iter().filter(|r| r.scope.matches(env)) {
            match rule.action {
                Action::Drop(p) => {
                    if rng.unit() < p {
                        fate.copies = 0;
                    }
                }
                Action::Duplicate(p) => {
                    if fate.copies == 1 && rng.unit() < p {
                        fate.copies = 2;
                    }
                }
                Action::Delay { min, max } => {
                    let span = max.saturating_sub(min).as_secs_f64();
                    fate.delay += min + Duration::from_secs_f64(span * rng.unit());
                }
            }
        }
        fate
    }

    /// True if no rule is set (the common fast path).
    pub fn is_empty(&self) -> bool {
        self.rules.read().is_empty()
    }
}

/// Counters of a [`LocalNetwork`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetworkStats {
    /// Envelopes handed to the network.
    pub sent: u64,
    /// Envelopes delivered to an inbox (duplicates count twice).
    pub delivered: u64,
    /// Envelopes dropped by a rule or because the receiver was not registered.
    pub dropped: u64,
}

/// An in-process network: stores register an [`Inbox`] and send through a
/// [`LocalTransport`]. Clones share the network.
#[derive(Clone)]
pub struct LocalNetwork {
    inner: Arc<Inner>,
}

struct Inner {
    inboxes: RwLock<HashMap<StoreId, Arc<dyn Inbox>>>,
    faults: Faults,
    rng: Mutex<SplitMix>,
    delayed: Mutex<BinaryHeap<Reverse<Delayed>>>,
    wake: Condvar,
    stop: std::sync::atomic::AtomicBool,
    timer: Mutex<Option<JoinHandle<()>>>,
    sent: AtomicU64,
    delivered: AtomicU64,
    dropped: AtomicU64,
    next_seq: AtomicU64,
}

struct Delayed {
    at: Instant,
    seq: u64,
    envelope: Envelope,
}

impl PartialEq for Delayed {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Delayed {}
impl PartialOrd for Delayed {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Delayed {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

impl std::fmt::Debug for LocalNetwork {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalNetwork").field("stats", &self.stats()).finish_non_exhaustive()
    }
}

impl LocalNetwork {
    /// A network with no stores and no faults; `seed` drives fault decisions.
    pub fn new(seed: u64) -> LocalNetwork {
        let inner = Arc::new(Inner {
            inboxes: RwLock::default(),
            faults: Faults::new(),
            rng: Mutex::new(SplitMix(seed)),
            delayed: Mutex::default(),
            wake: Condvar::new(),
            stop: std::sync::atomic::AtomicBool::new(false),
            timer: Mutex::new(None),
            sent: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            next_seq: AtomicU64::new(0),
        });
        let timer = {
            let inner = Arc::downgrade(&inner);
            std::thread::Builder::new()
                .name("local-net-timer".into())
                .spawn(move || timer_loop(&inner))
        };
        match timer {
            Ok(handle) => *inner.timer.lock() = Some(handle),
            Err(e) => {
                tracing::warn!(error = %e, "no timer thread: delay rules will deliver at once");
            }
        }
        LocalNetwork { inner }
    }

    /// The network's fault rules.
    pub fn faults(&self) -> &Faults {
        &self.inner.faults
    }

    /// Connects `store`: envelopes addressed to it go to `inbox`.
    pub fn register(&self, store: StoreId, inbox: Arc<dyn Inbox>) {
        self.inner.inboxes.write().insert(store, inbox);
    }

    /// Disconnects `store` (stopped or crashed): envelopes to it are dropped.
    pub fn unregister(&self, store: StoreId) {
        self.inner.inboxes.write().remove(&store);
    }

    /// A transport that sends as `store`.
    pub fn transport(&self, store: StoreId) -> LocalTransport {
        LocalTransport { network: self.clone(), store }
    }

    /// Counters so far.
    pub fn stats(&self) -> NetworkStats {
        NetworkStats {
            sent: self.inner.sent.load(Ordering::Relaxed),
            delivered: self.inner.delivered.load(Ordering::Relaxed),
            dropped: self.inner.dropped.load(Ordering::Relaxed),
        }
    }

    fn route(&self, envelopes: Vec<Envelope>) {
        let inner = &self.inner;
        inner.sent.fetch_add(envelopes.len() as u64, Ordering::Relaxed);
        let mut now: HashMap<StoreId, Vec<Envelope>> = HashMap::new();
        if inner.faults.is_empty() {
            for env in envelopes {
                now.entry(env.to).or_default().push(env);
            }
        } else {
            let mut rng = inner.rng.lock();
            let mut delayed = Vec::new();
            for env in envelopes {
                let fate = inner.faults.decide(&env, &mut *rng);
                if fate.copies == 0 {
                    inner.dropped.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                for _ in 0..fate.copies {
                    let env = env.clone();
                    if fate.delay.is_zero() {
                        now.entry(env.to).or_default().push(env);
                    } else {
                        delayed.push(Delayed {
                            at: Instant::now() + fate.delay,
                            seq: inner.next_seq.fetch_add(1, Ordering::Relaxed),
                            envelope: env,
                        });
                    }
                }
            }
            drop(rng);
            if !delayed.is_empty() {
                inner.delayed.lock().extend(delayed.into_iter().map(Reverse));
                inner.wake.notify_all();
            }
        }
        self.deliver_now(now);
    }

    fn deliver_now(&self, batches: HashMap<StoreId, Vec<Envelope>>) {
        let inboxes = self.inner.inboxes.read();
        for (store, batch) in batches {
            match inboxes.get(&store) {
                Some(inbox) => {
                    self.inner.delivered.fetch_add(batch.len() as u64, Ordering::Relaxed);
                    inbox.deliver(batch);
                }
                None => {
                    self.inner.dropped.fetch_add(batch.len() as u64, Ordering::Relaxed);
                }
            }
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        self.wake.notify_all();
        if let Some(t) = self.timer.lock().take() {
            // The timer holds only a weak reference; it sees the stop flag and leaves.
            if t.thread().id() != std::thread::current().id() {
                let _ = t.join();
            }
        }
    }
}

/// Delivers delayed envelopes when their time comes.
fn timer_loop(inner: &std::sync::Weak<Inner>) {
    loop {
        let Some(strong) = inner.upgrade() else { return };
        if strong.stop.load(Ordering::Acquire) {
            return;
        }
        let mut due = HashMap::<StoreId, Vec<Envelope>>::new();
        {
            let mut heap = strong.delayed.lock();
            let now = Instant::now();
            while heap.peek().is_some_and(|Reverse(d)| d.at <= now) {
                let Reverse(d) = heap.pop().expect("peeked");
                due.entry(d.envelope.to).or_default().push(d.envelope);
            }
            if due.is_empty() {
                let wait = heap.peek().map_or(Duration::from_millis(50), |Reverse(d)| d.at - now);
                strong.wake.wait_for(&mut heap, wait.min(Duration::from_millis(50)));
                continue;
            }
        }
        LocalNetwork { inner: strong }.deliver_now(due);
    }
}

/// Sends as one store over a [`LocalNetwork`].
#[derive(Clone, Debug)]
pub struct LocalTransport {
    network: LocalNetwork,
    store: StoreId,
}

impl Transport for LocalTransport {
    fn send(&self, envelopes: Vec<Envelope>) {
        debug_assert!(
            envelopes.iter().all(|e| e.from == self.store),
            "envelopes are sent as their store"
        );
        self.network.route(envelopes);
    }
}

#[cfg(test)]
mod tests {
    use raft::eraftpb::Message;

    use super::*;

    struct Collect(Mutex<Vec<Envelope>>);

    impl Inbox for Collect {
        fn deliver(&self, envelopes: Vec<Envelope>) {
            self.0.lock().extend(envelopes);
        }
    }

    fn env(from: u64, to: u64, t: MessageType) -> Envelope {
        let mut m = Message::default();
        m.set_msg_type(t);
        Envelope {
            region: RegionId(1),
            from: StoreId(from),
            to: StoreId(to),
            epoch: None,
            range: None,
            body: Body::Raft(m),
        }
    }

    #[test]
    fn rules_drop_duplicate_and_partition_by_scope() {
        let faults = Faults::new();
        let mut rng = SplitMix(7);
        assert_eq!(faults.decide(&env(1, 2, MessageType::MsgAppend), &mut rng).copies, 1);
        faults.partition(&[StoreId(1)], &[StoreId(2), StoreId(3)]);
        assert_eq!(faults.decide(&env(1, 2, MessageType::MsgAppend), &mut rng).copies, 0);
        assert_eq!(faults.decide(&env(3, 1, MessageType::MsgAppend), &mut rng).copies, 0);
        assert_eq!(faults.decide(&env(2, 3, MessageType::MsgAppend), &mut rng).copies, 1);
        faults.clear();
        faults.add(Rule {
            scope: Scope { msg_type: Some(MessageType::MsgHeartbeat), ..Scope::any() },
            action: Action::Duplicate(1.0),
        });
        assert_eq!(faults.decide(&env(1, 2, MessageType::MsgHeartbeat), &mut rng).copies, 2);
        assert_eq!(faults.decide(&env(1, 2, MessageType::MsgAppend), &mut rng).copies, 1);
        faults.clear();
        faults.add(Rule { scope: Scope::any(), action: Action::Drop(0.5) });
        let dropped = (0..1000)
            .filter(|_| faults.decide(&env(1, 2, MessageType::MsgAppend), &mut rng).copies == 0)
            .count();
        assert!((350..650).contains(&dropped), "about half: {dropped}");
    }

    #[test]
    fn the_network_delivers_drops_and_delays() {
        let net = LocalNetwork::new(1);
        let inbox = Arc::new(Collect(Mutex::default()));
        net.register(StoreId(2), inbox.clone());
        let t = net.transport(StoreId(1));
        t.send(vec![env(1, 2, MessageType::MsgAppend), env(1, 3, MessageType::MsgAppend)]);
        assert_eq!(inbox.0.lock().len(), 1);
        assert_eq!(net.stats(), NetworkStats { sent: 2, delivered: 1, dropped: 1 });
        net.faults().add(Rule {
            scope: Scope::any(),
            action: Action::Delay {
                min: Duration::from_millis(20),
                max: Duration::from_millis(30),
            },
        });
        t.send(vec![env(1, 2, MessageType::MsgHeartbeat)]);
        assert_eq!(inbox.0.lock().len(), 1, "held back");
        let deadline = Instant::now() + Duration::from_secs(10);
        while inbox.0.lock().len() < 2 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(inbox.0.lock().len(), 2, "delivered after the delay");
    }
}
