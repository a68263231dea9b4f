//! What Raft entries carry: client writes and membership changes, versioned.
//!
//! A normal entry's data is empty (the leader's no-op at the start of a term) or:
//!
//! ```text
//!  0        1
//!  +--------+--------------------------------------------------------------+
//!  | format | TLV record (regionkv_engine::codec)                          |
//!  | u8 = 1 |   tag 1 WRITE (nested, repeated): one client write           |
//!  |        |     1 epoch (nested: 1 version, 2 conf_ver)                  |
//!  |        |     2 op (nested, repeated): 1 kind (1 put, 2 delete),       |
//!  |        |       2 key, 3 value (puts only)                             |
//!  +--------+--------------------------------------------------------------+
//! ```
//!
//! Many client writes share one entry (batching); each is checked against the region
//! when applied and succeeds or fails on its own, and the ops of one write apply
//! together or not at all.
//!
//! A membership change is an `EntryConfChangeV2` entry: raft-rs's `ConfChangeV2` in
//! the data, and in the context the epoch it was proposed at and the stores of the
//! peers it adds:
//!
//! ```text
//!  | format u8 = 1 | TLV: 1 epoch (nested), 2 peer (nested, repeated: 1 peer id, 2 store id) |
//! ```

use bytes::Bytes;
use regionkv_engine::codec::{self, DecodeError, DecodeResult, Record};
use regionkv_engine::{Epoch, Peer, PeerId, StoreId};

/// The format this binary writes and the newest it reads.
pub(crate) const FORMAT_VERSION: u8 = 1;

const WRITE: u16 = 1;
const W_EPOCH: u16 = 1;
const W_OP: u16 = 2;
const OP_KIND: u16 = 1;
const OP_KEY: u16 = 2;
const OP_VALUE: u16 = 3;
const EPOCH_VERSION: u16 = 1;
const EPOCH_CONF_VER: u16 = 2;
const CC_EPOCH: u16 = 1;
const CC_PEER: u16 = 2;
const PEER_ID: u16 = 1;
const PEER_STORE: u16 = 2;

/// One change to one key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// Sets `key` to `value`.
    Put {
        /// The key.
        key: Bytes,
        /// The value.
        value: Bytes,
    },
    /// Removes `key`.
    Delete {
        /// The key.
        key: Bytes,
    },
}

impl Op {
    /// The key the op changes.
    pub fn key(&self) -> &[u8] {
        match self {
            Op::Put { key, .. } | Op::Delete { key } => key,
        }
    }

    fn encoded_len(&self) -> usize {
        match self {
            Op::Put { key, value } => 3 * codec::FIELD_HEADER_LEN + 8 + key.len() + value.len(),
            Op::Delete { key } => 2 * codec::FIELD_HEADER_LEN + 8 + key.len(),
        }
    }
}

/// One client write: its ops apply together, if the region is still at `epoch`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Write {
    /// The region's epoch the client routed the write with.
    pub epoch: Epoch,
    /// The changes, applied in order.
    pub ops: Vec<Op>,
}

impl Write {
    /// Bytes this write adds to an entry.
    pub fn encoded_len(&self) -> usize {
        4 * codec::FIELD_HEADER_LEN
            + 16
            + self.ops.iter().map(|op| op.encoded_len() + codec::FIELD_HEADER_LEN).sum::<usize>()
    }
}

fn put_epoch(out: &mut Vec<u8>, epoch: Epoch) {
    codec::put_u64(out, EPOCH_VERSION, epoch.version);
    codec::put_u64(out, EPOCH_CONF_VER, epoch.conf_ver);
}

fn decode_epoch(buf: &[u8]) -> DecodeResult<Epoch> {
    let rec = Record::parse(buf, &[EPOCH_VERSION, EPOCH_CONF_VER], true)?;
    Ok(Epoch {
        version: rec.required(EPOCH_VERSION, "epoch version")?.as_u64()?,
        conf_ver: rec.required(EPOCH_CONF_VER, "epoch conf_ver")?.as_u64()?,
    })
}

/// Encodes client writes as one entry's data.
pub(crate) fn encode_writes<'a>(writes: impl IntoIterator<Item = &'a Write>) -> Vec<u8> {
    let mut out = vec![FORMAT_VERSION];
    for w in writes {
        codec::put_nested(&mut out, WRITE, |out| {
            codec::put_nested(out, W_EPOCH, |out| put_epoch(out, w.epoch));
            for op in &w.ops {
                codec::put_nested(out, W_OP, |out| match op {
                    Op::Put { key, value } => {
                        codec::put_u64(out, OP_KIND, 1);
                        codec::put_field(out, OP_KEY, key);
                        codec::put_field(out, OP_VALUE, value);
                    }
                    Op::Delete { key } => {
                        codec::put_u64(out, OP_KIND, 2);
                        codec::put_field(out, OP_KEY, key);
                    }
                });
            }
        });
    }
    out
}

/// Decodes an entry's client writes; keys and values are slices of `data`. Never
/// panics, whatever `data` holds.
pub(crate) fn decode_writes(data: &Bytes) -> DecodeResult<Vec<Write>> {
    let (&version, body) = data.split_first().ok_or(DecodeError::new(0, "empty command"))?;
    if version != FORMAT_VERSION {
        return Err(DecodeError::new(0, "command of an unknown format version"));
    }
    let mut writes = Vec::new();
    for field in codec::fields(body).map_err(|e| e.shifted(1))? {
        if field.tag != WRITE {
            return Err(DecodeError::new(field.offset + 1, "unknown command"));
        }
        let at = |e: DecodeError| e.shifted(field.offset + 1);
        let rec = Record::parse(field.value, &[W_EPOCH, W_OP], false).map_err(at)?;
        let epoch_field = rec.required(W_EPOCH, "write epoch").map_err(at)?;
        let epoch =
            decode_epoch(epoch_field.value).map_err(|e| at(e.shifted(epoch_field.offset)))?;
        let mut ops = Vec::new();
        for op in rec.repeated(W_OP) {
            let op_at = |e: DecodeError| at(e.shifted(op.offset));
            let o = Record::parse(op.value, &[OP_KIND, OP_KEY, OP_VALUE], false).map_err(op_at)?;
            let key = data.slice_ref(o.required(OP_KEY, "op key").map_err(op_at)?.value);
            ops.push(
                match o.required(OP_KIND, "op kind").and_then(|f| f.as_u64()).map_err(op_at)? {
                    1 => Op::Put {
                        key,
                        value: data
                            .slice_ref(o.required(OP_VALUE, "put value").map_err(op_at)?.value),
                    },
                    2 => Op::Delete { key },
                    _ => return Err(op_at(DecodeError::new(0, "unknown op kind"))),
                },
            );
        }
        writes.push(Write { epoch, ops });
    }
    Ok(writes)
}

/// The context of a membership change entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ChangePeersContext {
    /// The region's epoch when the change was proposed.
    pub epoch: Epoch,
    /// Stores of the peers the change adds (removed peers need none).
    pub peers: Vec<Peer>,
}

pub(crate) fn encode_change_peers(ctx: &ChangePeersContext) -> Vec<u8> {
    let mut out = vec![FORMAT_VERSION];
    codec::put_nested(&mut out, CC_EPOCH, |out| put_epoch(out, ctx.epoch));
    for p in &ctx.peers {
        codec::put_nested(&mut out, CC_PEER, |out| {
            codec::put_u64(out, PEER_ID, p.id.0);
            codec::put_u64(out, PEER_STORE, p.store.0);
        });
    }
    out
}

pub(crate) fn decode_change_peers(data: &[u8]) -> DecodeResult<ChangePeersContext> {
    let (&version, body) =
        data.split_first().ok_or(DecodeError::new(0, "empty change-peers context"))?;
    if version != FORMAT_VERSION {
        return Err(DecodeError::new(0, "change-peers context of an unknown format version"));
    }
    let rec = Record::parse(body, &[CC_EPOCH, CC_PEER], false).map_err(|e| e.shifted(1))?;
    let epoch_field = rec.required(CC_EPOCH, "change-peers epoch").map_err(|e| e.shifted(1))?;
    let epoch = decode_epoch(epoch_field.value).map_err(|e| e.shifted(1 + epoch_field.offset))?;
    let mut peers = Vec::new();
    for p in rec.repeated(CC_PEER) {
        let r = Record::parse(p.value, &[PEER_ID, PEER_STORE], false)
            .map_err(|e| e.shifted(1 + p.offset))?;
        let id = r
            .required(PEER_ID, "peer id")
            .and_then(|f| f.as_u64())
            .map_err(|e| e.shifted(1 + p.offset))?;
        let store = r
            .required(PEER_STORE, "peer store")
            .and_then(|f| f.as_u64())
            .map_err(|e| e.shifted(1 + p.offset))?;
        peers.push(Peer { id: PeerId(id), store: StoreId(store) });
    }
    Ok(ChangePeersContext { epoch, peers })
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn arb_write() -> impl Strategy<Value = Write> {
        let op = prop_oneof![
            (
                proptest::collection::vec(any::<u8>(), 0..20),
                proptest::collection::vec(any::<u8>(), 0..40)
            )
                .prop_map(|(k, v)| Op::Put { key: k.into(), value: v.into() }),
            proptest::collection::vec(any::<u8>(), 0..20)
                .prop_map(|k| Op::Delete { key: k.into() }),
        ];
        (any::<u64>(), any::<u64>(), proptest::collection::vec(op, 0..6))
            .prop_map(|(version, conf_ver, ops)| Write { epoch: Epoch { version, conf_ver }, ops })
    }

    proptest! {
        #[test]
        fn writes_round_trip(writes in proptest::collection::vec(arb_write(), 0..5)) {
            let data = Bytes::from(encode_writes(&writes));
            prop_assert_eq!(decode_writes(&data).unwrap(), writes.clone());
            let estimate: usize = writes.iter().map(Write::encoded_len).sum::<usize>() + 1;
            prop_assert!(data.len() <= estimate, "size estimate {} below actual {}", estimate, data.len());
        }

        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode_writes(&Bytes::from(bytes.clone()));
            let _ = decode_change_peers(&bytes);
        }

        #[test]
        fn change_peers_round_trips(v in any::<u64>(), c in any::<u64>(), peers in proptest::collection::vec((any::<u64>(), any::<u64>()), 0..4)) {
            let ctx = ChangePeersContext {
                epoch: Epoch { version: v, conf_ver: c },
                peers: peers.into_iter().map(|(p, s)| Peer { id: PeerId(p), store: StoreId(s) }).collect(),
            };
            prop_assert_eq!(decode_change_peers(&encode_change_peers(&ctx)).unwrap(), ctx);
        }
    }
}
