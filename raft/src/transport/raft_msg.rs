//! The shape check a Raft message from the network passes before the protobuf crate
//! parses it: a cheap walk over the protobuf wire format that refuses, with a typed
//! [`WireError::Malformed`], anything the Raft messages' schema cannot produce and
//! that could make a parser recurse: a group (wire types 3 and 4, which proto3 never
//! writes and which a parser skips by recursing in some protobuf versions), a broken
//! field, and nesting beyond the schema's own (a message field is walked only where the
//! schema has one: `Message` > `Snapshot` > `SnapshotMetadata` > `ConfState`, and
//! `Message` > `Entry`, so the walk itself is at most [`DEPTH_MAX`] deep). Unknown
//! length-delimited fields are bytes to the parser, never parsed, so they are not
//! walked. Valid messages of any raft-rs version pass unchanged.

use super::frame::WireError;

/// The deepest nesting of message fields in a Raft message (a `Message` is depth 1).
pub const DEPTH_MAX: usize = 4;

const WHAT: &str = "Raft message";

/// The messages of the schema whose nested message fields the walk follows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Schema {
    Message,
    Snapshot,
    SnapshotMetadata,
    /// `Entry` and `ConfState`: no message fields.
    Leaf,
}

impl Schema {
    /// The schema of field `number`, if it is a message field of `self`.
    fn child(self, number: u64) -> Option<Schema> {
        match (self, number) {
            (Schema::Message, 7) | (Schema::SnapshotMetadata, 1) => Some(Schema::Leaf),
            (Schema::Message, 9) => Some(Schema::Snapshot),
            (Schema::Snapshot, 2) => Some(Schema::SnapshotMetadata),
            _ => None,
        }
    }
}

/// Checks the shape of an encoded `eraftpb::Message` (see the module doc); returns it
/// for the parser. Never panics, whatever `buf` holds.
pub fn checked(buf: &[u8]) -> Result<&[u8], WireError> {
    walk(buf, 0, Schema::Message, 1)?;
    Ok(buf)
}

fn refuse(offset: usize, reason: &'static str) -> WireError {
    WireError::Malformed { what: WHAT, offset, reason }
}

/// Reads a varint at `*at`, moving past it.
fn varint(buf: &[u8], base: usize, at: &mut usize) -> Result<u64, WireError> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let Some(&b) = buf.get(*at) else {
            return Err(refuse(base + *at, "a varint cut short"));
        };
        *at += 1;
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err(refuse(base + *at, "a varint of more than ten bytes"))
}

/// Walks the fields of one message of `schema` at nesting `depth`; `base` is the
/// offset of `buf` in the whole message (for errors).
fn walk(buf: &[u8], base: usize, schema: Schema, depth: usize) -> Result<(), WireError> {
    let mut at = 0;
    while at < buf.len() {
        let key_at = at;
        let key = varint(buf, base, &mut at)?;
        let skip = match key & 7 {
            0 => {
                varint(buf, base, &mut at)?;
                0
            }
            1 => 8,
            5 => 4,
            2 => {
                let len = usize::try_from(varint(buf, base, &mut at)?).unwrap_or(usize::MAX);
                let value = buf
                    .get(at..at.saturating_add(len))
                    .ok_or_else(|| refuse(base + key_at, "a field longer than its message"))?;
                if let Some(child) = schema.child(key >> 3) {
                    if depth >= DEPTH_MAX {
                        return Err(refuse(base + key_at, "nested deeper than a Raft message"));
                    }
                    walk(value, base + at, child, depth + 1)?;
                }
                len
            }
            3 | 4 => return Err(refuse(base + key_at, "a group, which no Raft message has")),
            _ => return Err(refuse(base + key_at, "an unknown protobuf wire type")),
        };
        at = at
            .checked_add(skip)
            .filter(|&end| end <= buf.len())
            .ok_or_else(|| refuse(base + key_at, "a field longer than its message"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use protobuf::Message as _;
    use raft::eraftpb::{ConfState, Entry, Message, MessageType, Snapshot};

    use super::*;

    /// A message with every nested message field of the schema filled in.
    fn full_message() -> Message {
        let mut m = Message::default();
        m.set_msg_type(MessageType::MsgSnapshot);
        m.to = 2;
        m.from = 1;
        m.term = 7;
        let mut e = Entry::default();
        e.index = 5;
        e.data = b"data".to_vec().into();
        m.mut_entries().push(e);
        let mut snap = Snapshot::default();
        snap.data = b"snapshot".to_vec().into();
        let mut cs = ConfState::default();
        cs.voters = vec![1, 2, 3];
        snap.mut_metadata().set_conf_state(cs);
        snap.mut_metadata().index = 9;
        m.set_snapshot(snap);
        m.context = b"ctx".to_vec().into();
        m
    }

    #[test]
    fn valid_messages_pass_unchanged() {
        let bytes = full_message().write_to_bytes().unwrap();
        assert_eq!(checked(&bytes).unwrap(), bytes.as_slice());
        assert!(checked(&[]).is_ok(), "an empty message is a default message");
        // An unknown length-delimited field is bytes to the parser, not walked.
        let mut unknown = bytes.clone();
        unknown.extend_from_slice(&[0xfa, 0x01, 3, 0x1b, 0x1b, 0x1b]);
        assert!(checked(&unknown).is_ok());
        assert!(Message::parse_from_bytes(&unknown).is_ok());
    }

    /// A message of a hundred thousand nested groups (the shape that overflows the
    /// stack of a parser that recurses into groups) is refused with a typed error
    /// before any parser sees it.
    #[test]
    fn deeply_nested_groups_are_refused_with_a_typed_error() {
        let mut bytes = full_message().write_to_bytes().unwrap();
        let start_group = [0x83, 0x06]; // field 96, wire type 3
        for _ in 0..100_000 {
            bytes.extend_from_slice(&start_group);
        }
        match checked(&bytes) {
            Err(WireError::Malformed { what: WHAT, reason, .. }) => {
                assert_eq!(reason, "a group, which no Raft message has");
            }
            other => panic!("refused as malformed, not {other:?}"),
        }
        // Inside a nested message too (an entry holding a group).
        let mut entry = Entry::default().write_to_bytes().unwrap();
        entry.extend_from_slice(&start_group);
        let mut m = vec![0x3a, u8::try_from(entry.len()).unwrap()];
        m.extend_from_slice(&entry);
        assert!(matches!(checked(&m), Err(WireError::Malformed { .. })));
    }

    /// Through the store protocol's batch decoder: an envelope whose Raft message ends
    /// in fifty thousand nested groups is refused as a malformed Raft message (it used
    /// to reach the protobuf parser).
    #[test]
    fn a_batch_with_deeply_nested_groups_is_refused_before_the_parser() {
        use crate::transport::{Body, Envelope, wire};
        use regionkv_engine::{RegionId, StoreId};

        // The context field (tag 12) of this length takes 100,000 bytes in all: the
        // room of 50,000 two-byte group tags, patched in below.
        let filler = 0x5a;
        let mut m = full_message();
        m.context = vec![filler; 99_996].into();
        let env = Envelope {
            region: RegionId(1),
            from: StoreId(1),
            to: StoreId(2),
            epoch: None,
            range: None,
            body: Body::Raft(m),
        };
        let mut payload = wire::encode_batch(&[env]).unwrap();
        let field = [0x62, 0x9c, 0x8d, 0x06];
        let at = payload.windows(4).position(|w| w == field).expect("the context field");
        let end = at + 4 + 99_996;
        assert!(payload[at + 4..end].iter().all(|&b| b == filler));
        for pair in payload[at..end].chunks_exact_mut(2) {
            pair.copy_from_slice(&[0x83, 0x06]);
        }
        match wire::decode_batch(&payload.into()) {
            Err(WireError::Malformed { what: WHAT, .. }) => {}
            other => panic!("refused as a malformed Raft message, not {:?}", other.err()),
        }
    }

    #[test]
    fn broken_wire_format_is_refused() {
        let bytes = full_message().write_to_bytes().unwrap();
        for cut in 1..bytes.len() {
            // Never panics; a cut inside a field is refused.
            let _ = checked(&bytes[..cut]);
        }
        assert!(checked(&[0x0f]).is_err(), "wire type 7");
        assert!(checked(&[0x08; 11]).is_err(), "a varint cut short");
        assert!(checked(&[0x4a, 5, 0]).is_err(), "a snapshot longer than its message");
    }
}
