//! The store transport's wire format, version 1: its frames (the shared layout of
//! [`super::frame`] with this protocol's magic, version and kinds), and the codec of
//! batches of envelopes that its BATCH frames carry.
//!
//! ```text
//!  magic "RKVW", version 1; kinds HELLO, PROOF, ACCEPT, REJECT (the handshake, see
//!  [`super::handshake`]) and BATCH
//! ```
//!
//! A connection starts with the handshake and carries only [`FrameKind::Batch`] frames
//! after it. Payloads are TLV records of [`regionkv_engine::codec`]; a reader skips tags
//! it does not know (they come from a newer writer), and every field added after
//! version 1 is optional and decodes as `None` when absent (absent is unknown, never
//! zero).
//!
//! ```text
//!  BATCH   1 envelope (nested, repeated, in send order):
//!            1 region u64, 2 from store u64, 3 to store u64,
//!            4 epoch (nested, optional: absent = unknown): 1 version u64, 2 conf_ver u64,
//!            exactly one of
//!            5 raft message: protobuf `eraftpb.Message` bytes
//!            6 snapshot chunk (nested): 1 index u64, 2 term u64, 3 offset u64,
//!              4 file bytes u64, 5 data
//!            7 key range (nested, optional: absent = unknown): 1 start, and either
//!              2 end or 3 unbounded (empty)
//!            8 hibernate (nested): 1 term u64, 2 index u64
//!            9 alive (empty)
//!            10 gone (nested): 1 peer u64 (the receiver's removed peer; the
//!              envelope's epoch is the one it is not a member of)
//! ```
//!
//! An envelope whose body is none of these (a kind added by a newer writer) is
//! skipped, not the batch around it.
//!
//! The frame and handshake items the store protocol uses are re-exported here, so
//! `transport::wire::{ClusterId, RejectReason, FrameKind, ...}` name them too.

use bytes::Bytes;
use protobuf::Message as _;
use raft::eraftpb::Message;
use regionkv_engine::codec::{self, DecodeError, TlvRecord, UnknownTags};
use regionkv_engine::{Epoch, RegionId, StoreId};

pub use super::frame::{
    FRAME_HEADER_BYTES, FrameFormat, FrameHeader, FrameKind, WireError, begin_frame,
};
pub use super::handshake::{
    ClusterId, HANDSHAKE_FRAME_BYTES_MAX, HandshakeKey, Hello, MAC_BYTES, NONCE_BYTES, Nonce,
    Proof, RejectReason, Role, Transcript,
};
use super::{Body, Envelope, KeyRange, SnapshotChunk};

/// The first four bytes of every frame of the store protocol.
pub const MAGIC: [u8; 4] = *b"RKVW";
/// The wire version this binary speaks (and the only one it reads).
pub const WIRE_VERSION: u8 = 1;

/// The store protocol's frames.
pub const FRAMES: FrameFormat = FrameFormat {
    protocol: "the regionkv wire protocol",
    magic: MAGIC,
    version: WIRE_VERSION,
    kinds: &[
        FrameKind::Hello,
        FrameKind::Proof,
        FrameKind::Accept,
        FrameKind::Reject,
        FrameKind::Batch,
    ],
};
// A header's kind byte must name one kind of the protocol.
const _: () = assert!(FRAMES.kinds_are_distinct(), "the store protocol's kinds differ");

// BATCH fields.
const B_ENVELOPE: u16 = 1;
// Envelope fields.
const E_REGION: u16 = 1;
const E_FROM: u16 = 2;
const E_TO: u16 = 3;
const E_EPOCH: u16 = 4;
const E_RAFT: u16 = 5;
const E_CHUNK: u16 = 6;
/// Since the region work of wire version 1: optional, absent = unknown.
const E_RANGE: u16 = 7;
/// Bodies added with hibernation.
const E_HIBERNATE: u16 = 8;
const E_ALIVE: u16 = 9;
/// Added with the notice to a removed peer; a reader that predates it skips the
/// envelope (an unknown body), so the removed replica goes on as before.
const E_GONE: u16 = 10;
const E_TAGS: &[u16] =
    &[E_REGION, E_FROM, E_TO, E_EPOCH, E_RAFT, E_CHUNK, E_RANGE, E_HIBERNATE, E_ALIVE, E_GONE];
// Gone fields.
const G_PEER: u16 = 1;
// Hibernate fields.
const HB_TERM: u16 = 1;
const HB_INDEX: u16 = 2;

const R_START: u16 = 1;
const R_END: u16 = 2;
const R_END_UNBOUNDED: u16 = 3;
// Epoch fields.
const EP_VERSION: u16 = 1;
const EP_CONF_VER: u16 = 2;
// Snapshot chunk fields.
const C_INDEX: u16 = 1;
const C_TERM: u16 = 2;
const C_OFFSET: u16 = 3;
const C_FILE_BYTES: u16 = 4;
const C_DATA: u16 = 5;
const C_TAGS: &[u16] = &[C_INDEX, C_TERM, C_OFFSET, C_FILE_BYTES, C_DATA];

/// Checks a store-protocol frame header; see [`FrameFormat::parse_header`].
pub fn parse_header(
    header: &[u8; FRAME_HEADER_BYTES],
    payload_bytes_max: u32,
) -> Result<FrameHeader, WireError> {
    FRAMES.parse_header(header, payload_bytes_max)
}

/// Fills the header of a store-protocol frame begun with [`begin_frame`]; see
/// [`FrameFormat::finish`].
pub fn finish_frame(out: &mut [u8], kind: FrameKind) -> Result<(), WireError> {
    FRAMES.finish(out, kind)
}

/// A whole store-protocol frame: header and `payload`.
pub fn encode_frame(kind: FrameKind, payload: &[u8]) -> Result<Vec<u8>, WireError> {
    FRAMES.encode(kind, payload)
}

/// Splits and checks one whole store-protocol frame held in `buf` (exactly one frame,
/// nothing after it). Never panics.
pub fn decode_frame(buf: &[u8], payload_bytes_max: u32) -> Result<(FrameKind, &[u8]), WireError> {
    FRAMES.decode(buf, payload_bytes_max)
}

/// Appends one envelope, as a BATCH payload's ENVELOPE field, to `out`.
pub fn encode_envelope(env: &Envelope, out: &mut Vec<u8>) -> Result<(), WireError> {
    enum Encoded<'a> {
        Raft(Vec<u8>),
        Chunk(&'a SnapshotChunk),
        Hibernate(u64, u64),
        Alive,
        Gone(u64),
    }
    let body = match &env.body {
        Body::Raft(m) => Encoded::Raft(
            m.write_to_bytes().map_err(|e| WireError::Encode(format!("a Raft message: {e}")))?,
        ),
        Body::SnapshotChunk(c) => Encoded::Chunk(c),
        Body::Hibernate { term, index } => Encoded::Hibernate(*term, *index),
        Body::Alive => Encoded::Alive,
        Body::Gone { peer } => Encoded::Gone(*peer),
    };
    codec::put_nested(out, B_ENVELOPE, |out| {
        codec::put_u64(out, E_REGION, env.region.0);
        codec::put_u64(out, E_FROM, env.from.0);
        codec::put_u64(out, E_TO, env.to.0);
        if let Some(epoch) = env.epoch {
            codec::put_nested(out, E_EPOCH, |out| {
                codec::put_u64(out, EP_VERSION, epoch.version);
                codec::put_u64(out, EP_CONF_VER, epoch.conf_ver);
            });
        }
        if let Some(range) = &env.range {
            codec::put_nested(out, E_RANGE, |out| {
                codec::put_field(out, R_START, &range.start);
                codec::put_range_end(out, R_END, R_END_UNBOUNDED, range.end.as_deref());
            });
        }
        match body {
            Encoded::Raft(bytes) => codec::put_field(out, E_RAFT, &bytes),
            Encoded::Chunk(c) => codec::put_nested(out, E_CHUNK, |out| {
                codec::put_u64(out, C_INDEX, c.index);
                codec::put_u64(out, C_TERM, c.term);
                codec::put_u64(out, C_OFFSET, c.offset);
                codec::put_u64(out, C_FILE_BYTES, c.file_bytes);
                codec::put_field(out, C_DATA, &c.data);
            }),
            Encoded::Hibernate(term, index) => codec::put_nested(out, E_HIBERNATE, |out| {
                codec::put_u64(out, HB_TERM, term);
                codec::put_u64(out, HB_INDEX, index);
            }),
            Encoded::Alive => codec::put_field(out, E_ALIVE, &[]),
            Encoded::Gone(peer) => {
                codec::put_nested(out, E_GONE, |out| codec::put_u64(out, G_PEER, peer));
            }
        }
    });
    Ok(())
}

/// A whole BATCH payload of `envelopes`.
pub fn encode_batch(envelopes: &[Envelope]) -> Result<Vec<u8>, WireError> {
    let mut out = Vec::new();
    for env in envelopes {
        encode_envelope(env, &mut out)?;
    }
    Ok(out)
}

/// Decodes a BATCH payload into its envelopes, in order. Snapshot chunk data shares
/// `payload`'s memory. Never panics, whatever `payload` holds.
pub fn decode_batch(payload: &Bytes) -> Result<Vec<Envelope>, WireError> {
    let bad = WireError::malformed("batch");
    let mut out = Vec::new();
    for field in codec::fields(payload).map_err(&bad)? {
        if field.tag != B_ENVELOPE {
            continue; // a newer writer's addition
        }
        if let Some(env) =
            decode_envelope_fields(payload, field.value).map_err(|e| shift(e, field.offset))?
        {
            out.push(env);
        }
    }
    Ok(out)
}

fn shift(e: WireError, base: usize) -> WireError {
    match e {
        WireError::Malformed { what, offset, reason } => {
            WireError::Malformed { what, offset: offset + base, reason }
        }
        other => other,
    }
}

/// Decodes one envelope's nested record `buf`, a slice of `whole`; `None` for an
/// envelope whose body is of a kind this binary does not know.
fn decode_envelope_fields(whole: &Bytes, buf: &[u8]) -> Result<Option<Envelope>, WireError> {
    let bad = WireError::malformed("envelope");
    let all = codec::fields(buf).map_err(&bad)?;
    let rec = TlvRecord::parse(buf, E_TAGS, UnknownTags::Skip).map_err(&bad)?;
    let u64_of = |tag, what| rec.required(tag, what).and_then(|f| f.as_u64()).map_err(&bad);
    let region = RegionId(u64_of(E_REGION, "region missing")?);
    let from = StoreId(u64_of(E_FROM, "from store missing")?);
    let to = StoreId(u64_of(E_TO, "to store missing")?);
    let epoch = match rec.optional(E_EPOCH).map_err(&bad)? {
        None => None,
        Some(f) => Some(decode_epoch(f.value).map_err(|e| shift(e, f.offset))?),
    };
    let range = match rec.optional(E_RANGE).map_err(&bad)? {
        None => None,
        Some(f) => {
            let r =
                TlvRecord::parse(f.value, &[R_START, R_END, R_END_UNBOUNDED], UnknownTags::Skip)
                    .map_err(|e| bad(e.shifted(f.offset)))?;
            let start =
                r.required(R_START, "range start missing").map_err(|e| bad(e.shifted(f.offset)))?;
            let end = codec::range_end(&r, R_END, R_END_UNBOUNDED)
                .map_err(|e| bad(e.shifted(f.offset)))?;
            Some(KeyRange { start: start.value.to_vec(), end })
        }
    };
    let bodies = [E_RAFT, E_CHUNK, E_HIBERNATE, E_ALIVE, E_GONE];
    let mut present = Vec::new();
    for tag in bodies {
        if let Some(f) = rec.optional(tag).map_err(&bad)? {
            present.push((tag, f));
        }
    }
    let body = match present.as_slice() {
        [(E_RAFT, f)] => Body::Raft(
            Message::parse_from_bytes(super::raft_msg::checked(f.value)?)
                .map_err(|e| WireError::Protobuf(e.to_string()))?,
        ),
        [(E_CHUNK, f)] => {
            Body::SnapshotChunk(decode_chunk(whole, f.value).map_err(|e| shift(e, f.offset))?)
        }
        [(E_HIBERNATE, f)] => {
            let h = TlvRecord::parse(f.value, &[HB_TERM, HB_INDEX], UnknownTags::Skip)
                .map_err(|e| bad(e.shifted(f.offset)))?;
            let u64_of = |tag, what| {
                h.required(tag, what).and_then(|x| x.as_u64()).map_err(|e| bad(e.shifted(f.offset)))
            };
            Body::Hibernate {
                term: u64_of(HB_TERM, "hibernate term missing")?,
                index: u64_of(HB_INDEX, "hibernate index missing")?,
            }
        }
        [(E_ALIVE, _)] => Body::Alive,
        [(E_GONE, f)] => {
            let g = TlvRecord::parse(f.value, &[G_PEER], UnknownTags::Skip)
                .map_err(|e| bad(e.shifted(f.offset)))?;
            let peer = g
                .required(G_PEER, "gone peer missing")
                .and_then(|x| x.as_u64())
                .map_err(|e| bad(e.shifted(f.offset)))?;
            Body::Gone { peer }
        }
        [] if all.iter().any(|f| !E_TAGS.contains(&f.tag)) => return Ok(None),
        [] => return Err(bad(DecodeError::new(0, "body missing"))),
        [(_, f), ..] => return Err(bad(DecodeError::new(f.offset, "more than one body"))),
    };
    Ok(Some(Envelope { region, from, to, epoch, range, body }))
}

fn decode_epoch(buf: &[u8]) -> Result<Epoch, WireError> {
    let bad = WireError::malformed("epoch");
    let rec = TlvRecord::parse(buf, &[EP_VERSION, EP_CONF_VER], UnknownTags::Skip).map_err(&bad)?;
    let u64_of = |tag, what| rec.required(tag, what).and_then(|f| f.as_u64()).map_err(&bad);
    Ok(Epoch {
        version: u64_of(EP_VERSION, "epoch version missing")?,
        conf_ver: u64_of(EP_CONF_VER, "epoch conf_ver missing")?,
    })
}

fn decode_chunk(whole: &Bytes, buf: &[u8]) -> Result<SnapshotChunk, WireError> {
    let bad = WireError::malformed("snapshot chunk");
    let rec = TlvRecord::parse(buf, C_TAGS, UnknownTags::Skip).map_err(&bad)?;
    let u64_of = |tag, what| rec.required(tag, what).and_then(|f| f.as_u64()).map_err(&bad);
    let data = rec.required(C_DATA, "chunk data missing").map_err(&bad)?;
    Ok(SnapshotChunk {
        index: u64_of(C_INDEX, "chunk index missing")?,
        term: u64_of(C_TERM, "chunk term missing")?,
        offset: u64_of(C_OFFSET, "chunk offset missing")?,
        file_bytes: u64_of(C_FILE_BYTES, "chunk file bytes missing")?,
        // `data.value` is a slice of `whole`, so this shares its memory.
        data: whole.slice_ref(data.value),
    })
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use raft::eraftpb::{Entry, MessageType};

    use super::*;

    fn raft_env(i: u64, epoch: Option<Epoch>) -> Envelope {
        let mut m = Message::default();
        m.set_msg_type(MessageType::MsgAppend);
        m.term = 7;
        m.index = i;
        m.log_term = 6;
        m.commit = i / 2;
        m.from = 1;
        m.to = 2;
        for k in 0..3u64 {
            let mut e = Entry::default();
            e.index = i + k + 1;
            e.term = 7;
            e.data = Bytes::from(vec![k as u8; (i % 50) as usize]);
            m.entries.push(e);
        }
        Envelope {
            region: RegionId(9),
            from: StoreId(1),
            to: StoreId(2),
            epoch,
            range: epoch.map(|_| KeyRange {
                start: b"m".to_vec(),
                end: i.is_multiple_of(2).then(|| b"t".to_vec()),
            }),
            body: Body::Raft(m),
        }
    }

    fn chunk_env(seq: u32, len: usize) -> Envelope {
        Envelope {
            region: RegionId(3),
            from: StoreId(2),
            to: StoreId(1),
            epoch: Some(Epoch { version: 4, conf_ver: 5 }),
            range: None,
            body: Body::SnapshotChunk(SnapshotChunk {
                index: 100,
                term: 3,
                offset: u64::from(seq) * 1000,
                file_bytes: 2000 + len as u64,
                data: Bytes::from((0..len).map(|b| b as u8).collect::<Vec<_>>()),
            }),
        }
    }

    #[test]
    fn a_batch_round_trips_through_a_frame() {
        let envs = vec![
            raft_env(1, None),
            raft_env(2, Some(Epoch { version: 1, conf_ver: 2 })),
            chunk_env(0, 1000),
            chunk_env(2, 0),
        ];
        let frame = encode_frame(FrameKind::Batch, &encode_batch(&envs).unwrap()).unwrap();
        let (kind, payload) = decode_frame(&frame, u32::MAX).unwrap();
        assert_eq!(kind, FrameKind::Batch);
        assert_eq!(decode_batch(&Bytes::copy_from_slice(payload)).unwrap(), envs);
    }

    #[test]
    fn an_envelope_without_the_optional_epoch_decodes_as_none() {
        // Written the way a writer that never knew the epoch field would: no tag 4.
        let mut payload = Vec::new();
        codec::put_nested(&mut payload, B_ENVELOPE, |out| {
            codec::put_u64(out, E_REGION, 5);
            codec::put_u64(out, E_FROM, 1);
            codec::put_u64(out, E_TO, 2);
            codec::put_field(out, E_RAFT, &Message::default().write_to_bytes().unwrap());
        });
        let envs = decode_batch(&Bytes::from(payload)).unwrap();
        assert_eq!(envs.len(), 1);
        assert_eq!(envs[0].epoch, None, "absent is unknown, never a zero epoch");
        assert_eq!(envs[0].region, RegionId(5));
    }

    #[test]
    fn unknown_tags_from_a_newer_writer_are_skipped() {
        let env = raft_env(3, Some(Epoch { version: 8, conf_ver: 9 }));
        let mut payload = Vec::new();
        // A future top-level item, then the envelope with a future field inside it and
        // inside its epoch.
        codec::put_u64(&mut payload, 77, 1);
        let mut inner = Vec::new();
        encode_envelope(&env, &mut inner).unwrap();
        let fields = codec::fields(&inner).unwrap();
        codec::put_nested(&mut payload, B_ENVELOPE, |out| {
            for f in codec::fields(fields[0].value).unwrap() {
                if f.tag == E_EPOCH {
                    codec::put_nested(out, E_EPOCH, |out| {
                        out.extend_from_slice(f.value);
                        codec::put_field(out, 40, b"future epoch field");
                    });
                } else {
                    codec::put_field(out, f.tag, f.value);
                }
            }
            codec::put_field(out, 41, b"future envelope field");
        });
        assert_eq!(decode_batch(&Bytes::from(payload)).unwrap(), vec![env]);
    }

    fn gone_env() -> Envelope {
        Envelope {
            region: RegionId(1),
            from: StoreId(1),
            to: StoreId(3),
            epoch: Some(Epoch { version: 1, conf_ver: 2 }),
            range: Some(KeyRange { start: Vec::new(), end: None }),
            body: Body::Gone { peer: 3 },
        }
    }

    #[test]
    fn a_gone_notice_has_fixed_bytes_and_round_trips() {
        let env = gone_env();
        let payload = encode_batch(std::slice::from_ref(&env)).unwrap();
        let tlv = |tag: u16, value: &[u8]| {
            let mut out = Vec::new();
            codec::put_field(&mut out, tag, value);
            out
        };
        let u64_tlv = |tag: u16, v: u64| {
            let mut out = Vec::new();
            codec::put_u64(&mut out, tag, v);
            out
        };
        // The layout the module doc gives, field by field (tag 10: 1 peer).
        let epoch = [u64_tlv(EP_VERSION, 1), u64_tlv(EP_CONF_VER, 2)].concat();
        let range = [tlv(R_START, b""), tlv(R_END_UNBOUNDED, b"")].concat();
        let inner = [
            u64_tlv(E_REGION, 1),
            u64_tlv(E_FROM, 1),
            u64_tlv(E_TO, 3),
            tlv(E_EPOCH, &epoch),
            tlv(E_RANGE, &range),
            tlv(10, &u64_tlv(1, 3)),
        ]
        .concat();
        assert_eq!(payload, tlv(B_ENVELOPE, &inner));
        assert_eq!(decode_batch(&Bytes::from(payload)).unwrap(), vec![env]);
    }

    #[test]
    fn an_envelope_of_an_unknown_body_kind_is_skipped_not_its_batch() {
        // A reader that predates a body kind (as one before `Gone` reads tag 10) sees
        // an envelope with no body it knows: it skips it and keeps the others.
        let raft = raft_env(4, None);
        let mut payload = Vec::new();
        codec::put_nested(&mut payload, B_ENVELOPE, |out| {
            codec::put_u64(out, E_REGION, 1);
            codec::put_u64(out, E_FROM, 1);
            codec::put_u64(out, E_TO, 3);
            codec::put_nested(out, 11, |out| codec::put_u64(out, 1, 3));
        });
        encode_envelope(&raft, &mut payload).unwrap();
        assert_eq!(decode_batch(&Bytes::from(payload)).unwrap(), vec![raft]);
        // A gone notice without its peer is malformed, not a notice about peer 0.
        let mut payload = Vec::new();
        codec::put_nested(&mut payload, B_ENVELOPE, |out| {
            codec::put_u64(out, E_REGION, 1);
            codec::put_u64(out, E_FROM, 1);
            codec::put_u64(out, E_TO, 3);
            codec::put_nested(out, E_GONE, |_| {});
        });
        let err = decode_batch(&Bytes::from(payload)).unwrap_err();
        assert!(matches!(err, WireError::Malformed { reason: "gone peer missing", .. }), "{err}");
    }

    #[test]
    fn a_bad_envelope_is_a_typed_error() {
        let mut payload = Vec::new();
        codec::put_nested(&mut payload, B_ENVELOPE, |out| {
            codec::put_u64(out, E_REGION, 5);
            codec::put_u64(out, E_FROM, 1);
            codec::put_u64(out, E_TO, 2);
        });
        let err = decode_batch(&Bytes::from(payload)).unwrap_err();
        assert!(matches!(err, WireError::Malformed { reason: "body missing", .. }), "{err}");
        let mut payload = Vec::new();
        codec::put_nested(&mut payload, B_ENVELOPE, |out| {
            codec::put_u64(out, E_REGION, 5);
            codec::put_u64(out, E_FROM, 1);
            codec::put_u64(out, E_TO, 2);
            codec::put_field(out, E_RAFT, &[0xff; 7]);
        });
        // Garbage where a Raft message belongs: the wire-format walk refuses it before
        // protobuf parses it (`raft_msg.rs`).
        let err = decode_batch(&Bytes::from(payload)).unwrap_err();
        assert!(matches!(err, WireError::Malformed { .. }), "{err}");
        assert!(err.is_corruption());
    }

    #[test]
    fn headers_are_checked_before_the_payload() {
        let frame = encode_frame(FrameKind::Batch, &[1; 100]).unwrap();
        let header: [u8; FRAME_HEADER_BYTES] = frame[..FRAME_HEADER_BYTES].try_into().unwrap();
        assert_eq!(parse_header(&header, 100).unwrap().len, 100);
        assert_eq!(parse_header(&header, 99), Err(WireError::FrameTooLarge { len: 100, max: 99 }));
        let mut v2 = header;
        v2[4] = 2;
        assert!(matches!(
            parse_header(&v2, 100),
            Err(WireError::UnsupportedVersion { found: 2, speaks: WIRE_VERSION, .. })
        ));
        let mut http = header;
        http[..4].copy_from_slice(b"GET ");
        assert!(matches!(parse_header(&http, 100), Err(WireError::BadMagic { .. })));
    }

    fn arb_envelope() -> impl Strategy<Value = Envelope> {
        let epoch = proptest::option::of((any::<u64>(), any::<u64>()))
            .prop_map(|e| e.map(|(version, conf_ver)| Epoch { version, conf_ver }));
        let raft =
            (any::<u64>(), any::<u64>(), 0usize..4, proptest::collection::vec(any::<u8>(), 0..40))
                .prop_map(|(term, index, n, data)| {
                    let mut m = Message::default();
                    m.set_msg_type(MessageType::MsgAppend);
                    m.term = term;
                    m.index = index;
                    for k in 0..n {
                        let mut e = Entry::default();
                        e.index = index.wrapping_add(k as u64);
                        e.data = Bytes::from(data.clone());
                        m.entries.push(e);
                    }
                    Body::Raft(m)
                });
        let chunk = (
            any::<u64>(),
            any::<u64>(),
            any::<u64>(),
            any::<u64>(),
            proptest::collection::vec(any::<u8>(), 0..200),
        )
            .prop_map(|(index, term, offset, file_bytes, data)| {
                Body::SnapshotChunk(SnapshotChunk {
                    index,
                    term,
                    offset,
                    file_bytes,
                    data: Bytes::from(data),
                })
            });
        let range = proptest::option::of((
            proptest::collection::vec(any::<u8>(), 0..8),
            proptest::option::of(proptest::collection::vec(any::<u8>(), 0..8)),
        ))
        .prop_map(|r| r.map(|(start, end)| KeyRange { start, end }));
        let gone = any::<u64>().prop_map(|peer| Body::Gone { peer });
        (any::<u64>(), any::<u64>(), any::<u64>(), epoch, range, prop_oneof![raft, chunk, gone])
            .prop_map(|(region, from, to, epoch, range, body)| Envelope {
                region: RegionId(region),
                from: StoreId(from),
                to: StoreId(to),
                epoch,
                range,
                body,
            })
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = decode_frame(&bytes, 1 << 20);
            let _ = decode_batch(&Bytes::from(bytes.clone()));
            let _ = Hello::decode(&bytes);
            let _ = Proof::decode(&bytes);
            let _ = RejectReason::decode(&bytes);
            if let Some(header) = bytes.first_chunk::<FRAME_HEADER_BYTES>() {
                let _ = parse_header(header, 1 << 20);
            }
        }

        #[test]
        fn random_envelope_fields_never_panic(
            fields in proptest::collection::vec((0u16..8, proptest::collection::vec(any::<u8>(), 0..20)), 0..8)
        ) {
            // Structurally valid TLV with random tags and values reaches the field checks.
            let mut payload = Vec::new();
            codec::put_nested(&mut payload, B_ENVELOPE, |out| {
                for (tag, value) in &fields {
                    codec::put_field(out, *tag, value);
                }
            });
            let _ = decode_batch(&Bytes::from(payload));
        }

        #[test]
        fn batches_round_trip(envs in proptest::collection::vec(arb_envelope(), 0..6)) {
            let frame = encode_frame(FrameKind::Batch, &encode_batch(&envs).unwrap()).unwrap();
            let (kind, payload) = decode_frame(&frame, u32::MAX).unwrap();
            prop_assert_eq!(kind, FrameKind::Batch);
            prop_assert_eq!(decode_batch(&Bytes::copy_from_slice(payload)).unwrap(), envs);
        }

        #[test]
        fn every_single_bit_flip_is_detected(envs in proptest::collection::vec(arb_envelope(), 1..3)) {
            let frame = encode_frame(FrameKind::Batch, &encode_batch(&envs).unwrap()).unwrap();
            for bit in 0..frame.len() * 8 {
                let mut bad = frame.clone();
                bad[bit / 8] ^= 1 << (bit % 8);
                prop_assert!(decode_frame(&bad, u32::MAX).is_err(), "flip of bit {} undetected", bit);
            }
        }
    }
}
