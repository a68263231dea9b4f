//! Which follower a duplication ships to: a cluster in this process registered under
//! the record's name (`Cluster::add_duplication_target`), or a cluster of `regionkv
//! node` processes reached over the client protocol at the record's addresses, with
//! its cluster id and client secret (`DupRemote`).
//!
//! One connection ([`Client`]) per (duplication, incarnation), dialed by a thread of
//! its own on the first step that needs it (the background turn never waits on a
//! dial; steps wait until it is made) and kept while the duplication ships; a reseed (a new incarnation) or
//! the end of shipping drops it. A follower that cannot be reached is tried again after
//! a backoff that doubles from [`BACKOFF_FIRST`] up to [`BACKOFF_MAX`]; the duplication
//! stays as it is (never `Broken` for it), and the last error is what
//! `Db::duplication_status` reports ([`FollowerLink`]) in this process. A follower
//! that refuses the handshake for its cluster id or secret (`ClusterMismatch`,
//! `BadProof`) is a refusal that will not change by itself: the duplication moves to
//! `Broken(FollowerRejected)`.

use std::collections::{BTreeMap, HashMap};
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::mpsc::{self, Receiver, TryRecvError};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use regionkv_raft::directory::{BrokenReason, DupRecord, DupStatus};
use regionkv_raft::transport::handshake::{ClusterId, RejectReason};

use super::driver::Targets;
use crate::error::Error;
use crate::{Client, Db};

/// The first wait before a follower that could not be reached is tried again.
pub(crate) const BACKOFF_FIRST: Duration = Duration::from_millis(250);
/// The longest wait between two tries.
pub(crate) const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// How long a step waits on the follower before it is deferred to a later turn.
const FOLLOWER_DEADLINE: Duration = Duration::from_secs(5);

/// How this process's shipper reaches a duplication's remote follower.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FollowerLink {
    /// True once a connection to the follower was made (for this incarnation).
    pub connected: bool,
    /// Failed attempts since the last connection.
    pub failed_attempts: u32,
    /// The last error connecting to the follower (`None`: none since it connected).
    pub last_error: Option<String>,
}

/// What a shipping step ships to.
pub(crate) enum Follower {
    /// This follower.
    Ready(Db),
    /// None now (not registered, unreachable, backing off): the step waits.
    NotYet,
    /// The follower refused for good: the duplication breaks.
    Broken(BrokenReason, String),
}

enum Slot {
    /// A thread of its own dials the follower (a dial may wait for its timeouts: the
    /// background turn does not).
    Connecting {
        done: Receiver<Result<Db, Error>>,
        backoff: Duration,
    },
    Connected(Db),
    Waiting {
        next: Instant,
        backoff: Duration,
    },
    Rejected(String),
}

/// The remote followers' connections of one duplication driver.
#[derive(Default)]
pub(crate) struct Remotes {
    slots: Mutex<HashMap<(u64, u32), Slot>>,
}

/// A duplication as this process's link registry names it: its id, creation time and
/// follower (ids are per source cluster; several may run in one process).
type LinkKey = (u64, Option<u64>, String);

static LINKS: Mutex<BTreeMap<LinkKey, FollowerLink>> = Mutex::new(BTreeMap::new());

fn link_key(record: &DupRecord) -> LinkKey {
    (record.dup_id, record.created_at_ms, record.remote.name.clone())
}

fn set_link(record: &DupRecord, f: impl FnOnce(&mut FollowerLink)) {
    let mut links = LINKS.lock().unwrap_or_else(PoisonError::into_inner);
    let link = links.entry(link_key(record)).or_insert(FollowerLink {
        connected: false,
        failed_attempts: 0,
        last_error: None,
    });
    f(link);
}

/// How a shipper of this process reaches `record`'s remote follower; `None` if none
/// here ships it (it ships from another process, or not yet).
pub(crate) fn link_of(record: &DupRecord) -> Option<FollowerLink> {
    LINKS.lock().unwrap_or_else(PoisonError::into_inner).get(&link_key(record)).cloned()
}

/// True while `record` ships (or may): its connection is kept.
fn live(record: &DupRecord) -> bool {
    matches!(
        record.status,
        DupStatus::Init | DupStatus::Prepare | DupStatus::App | DupStatus::Log | DupStatus::Paused
    )
}

impl Remotes {
    /// Drops the connections of duplications that no longer ship, or that were
    /// reseeded (another incarnation).
    pub fn retain(&self, records: &[DupRecord]) {
        let mut slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        slots.retain(|&(dup_id, incarnation), _| {
            records.iter().any(|r| r.dup_id == dup_id && r.incarnation == incarnation && live(r))
        });
        let mut links = LINKS.lock().unwrap_or_else(PoisonError::into_inner);
        // This process forgets the links of the duplications it no longer sees.
        links.retain(|key, _| {
            records.iter().all(|r| r.dup_id != key.0) || records.iter().any(|r| link_key(r) == *key)
        });
    }

    /// The follower `record` ships to, if it can now.
    pub fn follower(&self, targets: &Targets, record: &DupRecord) -> Follower {
        if let Some(db) = targets.read().get(&record.remote.name).cloned() {
            return Follower::Ready(db);
        }
        let (Some(cluster_id), Some(secret)) = (record.remote.cluster_id, &record.remote.secret)
        else {
            return Follower::NotYet;
        };
        let key = (record.dup_id, record.incarnation);
        let mut slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        let (result, backoff) = match slots.get(&key) {
            Some(Slot::Connected(db)) => return Follower::Ready(db.clone()),
            Some(Slot::Rejected(why)) => {
                return Follower::Broken(BrokenReason::FollowerRejected, why.clone());
            }
            Some(Slot::Waiting { next, .. }) if Instant::now() < *next => return Follower::NotYet,
            Some(Slot::Connecting { done, backoff }) => match done.try_recv() {
                Ok(result) => (result, *backoff),
                Err(TryRecvError::Empty) => return Follower::NotYet,
                Err(TryRecvError::Disconnected) => {
                    (Err(Error::Io(std::io::Error::other("the dialing thread failed"))), *backoff)
                }
            },
            waiting => {
                let backoff = match waiting {
                    Some(Slot::Waiting { backoff, .. }) => (*backoff * 2).min(BACKOFF_MAX),
                    _ => BACKOFF_FIRST,
                };
                let (tx, done) = mpsc::channel();
                let (name, secret) = (record.remote.name.clone(), secret.clone());
                let spawned = std::thread::Builder::new()
                    .name("dup-follower-dial".into())
                    .spawn(move || drop(tx.send(connect(&name, cluster_id, &secret))));
                if let Err(e) = spawned {
                    (Err(Error::Io(e)), backoff)
                } else {
                    slots.insert(key, Slot::Connecting { done, backoff });
                    return Follower::NotYet;
                }
            }
        };
        match result {
            Ok(db) => {
                tracing::info!(dup = record.dup_id, to = %record.remote.name, "follower connected");
                set_link(record, |l| {
                    l.connected = true;
                    l.failed_attempts = 0;
                    l.last_error = None;
                });
                slots.insert(key, Slot::Connected(db.clone()));
                Follower::Ready(db)
            }
            Err(Error::Refused {
                addr,
                reason: reason @ (RejectReason::ClusterMismatch | RejectReason::BadProof),
            }) => {
                let why = format!(
                    "the follower at {addr} refused cluster id {cluster_id} and its secret \
                     ({reason})"
                );
                set_link(record, |l| l.last_error = Some(why.clone()));
                slots.insert(key, Slot::Rejected(why.clone()));
                Follower::Broken(BrokenReason::FollowerRejected, why)
            }
            Err(e) => {
                tracing::warn!(
                    dup = record.dup_id,
                    to = %record.remote.name,
                    error = %e,
                    retry_in = ?backoff,
                    "follower not reached"
                );
                set_link(record, |l| {
                    l.connected = false;
                    l.failed_attempts = l.failed_attempts.saturating_add(1);
                    l.last_error = Some(e.to_string());
                });
                slots.insert(key, Slot::Waiting { next: Instant::now() + backoff, backoff });
                Follower::NotYet
            }
        }
    }
}

/// A `Db` of the follower cluster at `addrs` (`host:port,...`).
fn connect(addrs: &str, cluster_id: u64, secret: &[u8]) -> Result<Db, Error> {
    let mut resolved: Vec<SocketAddr> = Vec::new();
    let mut last = None;
    for addr in addrs.split(',').map(str::trim).filter(|a| !a.is_empty()) {
        match addr.to_socket_addrs() {
            Ok(found) => resolved.extend(found),
            Err(e) => last = Some(Error::Io(e)),
        }
    }
    if resolved.is_empty() {
        return Err(last.unwrap_or_else(|| {
            Error::InvalidRequest(format!("no follower address in {addrs:?}"))
        }));
    }
    let client = Client::connect(&resolved, ClusterId(cluster_id), secret)?;
    Ok(client.db().with_deadline(FOLLOWER_DEADLINE))
}
