//! Store identity: this store's incarnation, and the book of the incarnation each peer
//! store was last accepted with (ARCHITECTURE.md, "Store identity").
//!
//! A store id names a member of many Raft groups; what it promised there (votes,
//! acknowledged entries) lives on its disk. A store that lost its disk and came back
//! under the same id must not take part under its old peer ids: it would vote with an
//! empty log and could elect a leader without acknowledged writes. So every store has
//! an identity ([`StoreIdentity`]), kept in its engine's manifest and sent in the
//! transport's handshake:
//!
//! - an [`Incarnation`], drawn at random when the engine is first opened: it changes
//!   exactly when the disk does;
//! - for a store that joined a running cluster (`--join`), a peer floor: an id the
//!   cluster's allocator handed out when it joined. Peer ids come from the same
//!   allocator, so every peer added to this store afterwards has a greater id, and
//!   every peer id of an earlier life of the store is at most the floor. The store
//!   never creates a replica for a peer id at or below its floor (a message to one
//!   is stale: it was meant for the store that lost its disk).
//!
//! Every store keeps a [`PeerBook`]: the incarnation it last accepted for each peer
//! store, durably (in its engine's manifest, as the task state [`PEER_BOOK_TASK`]), so
//! that a restart of this store does not forget them. [`PeerBook::admit`] is the rule,
//! run by the transport for every authenticated peer (the TCP handshake, in both
//! directions; the simulator's network, per delivery):
//!
//! - an incarnation the book does not know for that store is recorded and accepted
//!   (a new store, or a store from before incarnations);
//! - the known incarnation is accepted;
//! - another incarnation is refused while a region this store hosts lists that store
//!   under a peer id of an earlier life (at or below the new life's floor; any peer id
//!   if it has no floor): the store was replaced, and must be removed from those
//!   regions (`store remove`) and, started with `--join`, added back under new peer
//!   ids (`store add`). Otherwise the new incarnation is recorded and accepted;
//! - a peer that sends no incarnation (a binary from before them) is accepted and
//!   nothing is recorded: absent is unknown, not a change.

use std::collections::BTreeMap;
use std::fmt;

use parking_lot::Mutex;
use regionkv_engine::codec::{self, DecodeError, TlvRecord, UnknownTags};
use regionkv_engine::{Engine, Incarnation, PeerId, StoreId};

use crate::error::{Error, Result};
pub use crate::transport::handshake::StoreIdentity;

/// The name of the book's state in the engine's manifest.
pub const PEER_BOOK_TASK: &str = "peer-incarnations";
/// The version byte that starts the book's encoding.
const BOOK_VERSION: u8 = 1;
// Fields: one `PEER` per store, holding its store id and incarnation.
const B_PEER: u16 = 1;
const P_STORE: u16 = 1;
const P_INCARNATION: u16 = 2;

/// A fresh incarnation from the operating system's randomness.
pub fn fresh_incarnation() -> Result<Incarnation> {
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes)
        .map_err(|e| Error::Internal(format!("no randomness for a store incarnation: {e}")))?;
    Ok(Incarnation(u64::from_le_bytes(bytes)))
}

/// What [`PeerBook::admit`] decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    /// Accept the peer.
    Accepted,
    /// Refuse it: the store was replaced and is still a member of a region here.
    Replaced {
        /// The incarnation this store knew.
        known: Incarnation,
        /// The one the peer has now.
        found: Incarnation,
    },
}

/// The incarnation each peer store was last accepted with; see the module docs.
pub struct PeerBook {
    me: StoreId,
    /// This store's identity; its floor is set once, when the store joins a cluster.
    identity: Mutex<StoreIdentity>,
    /// The store's engine: the book is kept in its manifest; with `directory`, the
    /// regions whose peers say which stores are members here.
    engine: Engine,
    directory: Engine,
    /// Lock held while a change is made durable: admissions are rare (one per
    /// connection) and must not record two incarnations of a store at once.
    known: Mutex<BTreeMap<StoreId, Incarnation>>,
}

impl fmt::Debug for PeerBook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PeerBook")
            .field("me", &self.me)
            .field("identity", &*self.identity.lock())
            .field("known", &*self.known.lock())
            .finish_non_exhaustive()
    }
}

impl PeerBook {
    /// The book of store `me` (of `incarnation`), as `engine`'s manifest keeps it
    /// with the store's peer floor; membership is read from the regions of `engine`
    /// and `directory`.
    pub fn open(
        me: StoreId,
        incarnation: Incarnation,
        engine: Engine,
        directory: Engine,
    ) -> Result<PeerBook> {
        let identity = Mutex::new(StoreIdentity { incarnation, peer_floor: engine.peer_floor() });
        let known = match engine.task_state(PEER_BOOK_TASK) {
            Some(bytes) => decode(&bytes).map_err(|e| {
                Error::Internal(format!(
                    "the peer incarnations in {}'s manifest do not decode at byte {}: {}",
                    engine.dir().display(),
                    e.offset,
                    e.reason
                ))
            })?,
            None => BTreeMap::new(),
        };
        Ok(PeerBook { me, identity, engine, directory, known: Mutex::new(known) })
    }

    /// This store's identity, as its handshake sends it.
    pub fn identity(&self) -> StoreIdentity {
        *self.identity.lock()
    }

    /// This store's incarnation.
    pub fn incarnation(&self) -> Incarnation {
        self.identity.lock().incarnation
    }

    /// Records this store's peer floor (an id the cluster allocated as it joined)
    /// durably; before its transport starts, so that every handshake carries it.
    pub fn set_peer_floor(&self, floor: PeerId) -> Result<()> {
        let mut identity = self.identity.lock();
        self.engine.set_peer_floor(floor)?;
        identity.peer_floor = Some(floor);
        Ok(())
    }

    /// The incarnation last accepted for each peer store.
    pub fn known(&self) -> BTreeMap<StoreId, Incarnation> {
        self.known.lock().clone()
    }

    /// True if a region hosted here lists a peer on `store` with an id at or below
    /// `floor` (any id if `floor` is `None`): a peer of an earlier life of the store.
    pub fn lists_old_peer(&self, store: StoreId, floor: Option<PeerId>) -> bool {
        let old = |p: &regionkv_engine::Peer| p.store == store && floor.is_none_or(|f| p.id <= f);
        [&self.engine, &self.directory]
            .iter()
            .any(|e| e.regions().iter().any(|r| r.peers.iter().any(old)))
    }

    /// Decides whether `store`, which proved the cluster secret and says it is
    /// `found`, may exchange Raft traffic with this store (see the module docs). A
    /// newly accepted incarnation is durable before this returns; if it cannot be
    /// recorded (the engine failed), the peer is refused as replaced would be, with
    /// the error logged.
    pub fn admit(&self, store: StoreId, found: Option<StoreIdentity>) -> Admission {
        let Some(StoreIdentity { incarnation: found, peer_floor }) = found else {
            return Admission::Accepted;
        };
        let mut known = self.known.lock();
        let previous = known.get(&store).copied();
        match previous {
            Some(k) if k == found => return Admission::Accepted,
            Some(k) if self.lists_old_peer(store, peer_floor) => {
                return Admission::Replaced { known: k, found };
            }
            Some(_) | None => {}
        }
        let mut next = known.clone();
        next.insert(store, found);
        if let Err(e) = self.engine.set_task_state(PEER_BOOK_TASK, Some(encode(&next))) {
            tracing::error!(store = self.me.0, peer = store.0, error = %e, "cannot record a peer's incarnation; refusing it");
            return Admission::Replaced { known: previous.unwrap_or_default(), found };
        }
        *known = next;
        match previous {
            None => {
                tracing::debug!(store = self.me.0, peer = store.0, incarnation = %found, "recorded a peer's incarnation");
            }
            Some(old) => {
                tracing::info!(store = self.me.0, peer = store.0, old = %old, new = %found, "store {store} has a new incarnation; no region here lists a peer of its earlier life, so it is accepted");
            }
        }
        Admission::Accepted
    }
}

/// The log line and refusal detail for a replaced store.
pub fn replaced_message(store: StoreId, known: Incarnation, found: Incarnation) -> String {
    format!(
        "store {store} was replaced: remove it and add it back (its incarnation is {found}, \
         this store knew {known}; run `regionkv client store remove {store}`, start the new \
         node with --join, then `regionkv client store add {store} ADDR`)"
    )
}

fn encode(known: &BTreeMap<StoreId, Incarnation>) -> Vec<u8> {
    let mut out = vec![BOOK_VERSION];
    for (store, incarnation) in known {
        codec::put_nested(&mut out, B_PEER, |o| {
            codec::put_u64(o, P_STORE, store.0);
            codec::put_u64(o, P_INCARNATION, incarnation.0);
        });
    }
    out
}

fn decode(bytes: &[u8]) -> std::result::Result<BTreeMap<StoreId, Incarnation>, DecodeError> {
    match bytes.first() {
        Some(&BOOK_VERSION) => {}
        Some(_) => return Err(DecodeError::new(0, "unknown version of the peer book")),
        None => return Err(DecodeError::new(0, "empty peer book")),
    }
    let rec =
        TlvRecord::parse(&bytes[1..], &[B_PEER], UnknownTags::Skip).map_err(|e| e.shifted(1))?;
    let mut known = BTreeMap::new();
    for field in rec.repeated(B_PEER) {
        let p = TlvRecord::parse(field.value, &[P_STORE, P_INCARNATION], UnknownTags::Skip)
            .map_err(|e| e.shifted(1 + field.offset))?;
        let store = p.required(P_STORE, "peer store missing")?.as_u64()?;
        let incarnation = p.required(P_INCARNATION, "peer incarnation missing")?.as_u64()?;
        known.insert(StoreId(store), Incarnation(incarnation));
    }
    Ok(known)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use regionkv_engine::{EngineOptions, Peer, PeerId, Region, RegionId};
    use regionkv_wal::SimFs;

    use super::*;

    fn engines(fs: &Arc<SimFs>) -> (Engine, Engine) {
        let open = |dir| Engine::open(fs.clone(), dir, EngineOptions::new(StoreId(1))).unwrap();
        (open("/s/engine"), open("/s/directory"))
    }

    #[test]
    fn a_replaced_member_is_refused_until_no_region_lists_it_and_the_book_is_durable() {
        let fs = Arc::new(SimFs::new());
        let (engine, directory) = engines(&fs);
        let peers = [1, 2].map(|s| Peer { id: PeerId(s), store: StoreId(s) }).to_vec();
        engine.insert_region(Region { peers, ..Region::whole(RegionId(1)) }).unwrap();
        let book =
            PeerBook::open(StoreId(1), Incarnation(10), engine.clone(), directory.clone()).unwrap();
        let id = |i, floor: Option<u64>| {
            Some(StoreIdentity { incarnation: Incarnation(i), peer_floor: floor.map(PeerId) })
        };
        assert_eq!(book.admit(StoreId(2), id(20, None)), Admission::Accepted);
        assert_eq!(book.admit(StoreId(2), id(20, None)), Admission::Accepted);
        assert_eq!(book.admit(StoreId(2), None), Admission::Accepted, "unknown is no change");
        let replaced = Admission::Replaced { known: Incarnation(20), found: Incarnation(21) };
        assert_eq!(book.admit(StoreId(2), id(21, None)), replaced, "bootstrapped again");
        assert_eq!(book.admit(StoreId(2), id(21, Some(1000))), replaced, "joined, peer 2 is old");
        // A restart of this store remembers what it accepted.
        drop(book);
        let book =
            PeerBook::open(StoreId(1), Incarnation(10), engine.clone(), directory.clone()).unwrap();
        assert_eq!(book.known().get(&StoreId(2)), Some(&Incarnation(20)));
        assert_eq!(book.admit(StoreId(2), id(21, Some(1000))), replaced);
        // Store 2 removed from every region here, and added back under a peer id above
        // its new floor: its new incarnation is accepted.
        let peers = vec![Peer { id: PeerId(1), store: StoreId(1) }];
        engine.change_peers(RegionId(1), peers.clone(), 5).unwrap();
        let back = [peers[0], Peer { id: PeerId(1001), store: StoreId(2) }].to_vec();
        engine.change_peers(RegionId(1), back, 6).unwrap();
        assert_eq!(book.admit(StoreId(2), id(21, None)), replaced, "no floor: any peer is old");
        assert_eq!(book.admit(StoreId(2), id(21, Some(1000))), Admission::Accepted);
        assert_eq!(book.known().get(&StoreId(2)), Some(&Incarnation(21)));
        // The store's own floor is durable.
        book.set_peer_floor(PeerId(7)).unwrap();
        let again =
            PeerBook::open(StoreId(1), Incarnation(10), engine.clone(), directory.clone()).unwrap();
        assert_eq!(again.identity().peer_floor, Some(PeerId(7)));
        assert_eq!(decode(&encode(&book.known())).unwrap(), book.known());
        assert!(decode(&[2]).is_err() && decode(&[]).is_err());
    }
}
