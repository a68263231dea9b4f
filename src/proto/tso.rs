//! The timestamp oracle's records of the client protocol (since cluster version 3):
//! a request for `count` consecutive timestamps, answered with the first of them by
//! the node whose store leads the directory (any other answers `NotLeader`).
//!
//! ```text
//!  REQUEST  37 timestamps { 1 count (1 to 2^18) }
//!  RESPONSE 54 timestamps { 1 first }
//! ```
//!
//! A node from before the oracle answers `UnsupportedRequest`, which the client turns
//! into `FeatureNotActive`.

use regionkv_engine::codec::{self, DecodeError, Field};

use super::records::{nested, req_u64};

type D<T> = Result<T, DecodeError>;

/// The request's kind.
pub(super) const Q_TIMESTAMPS: u16 = 37;
/// The answer's kind.
pub(super) const R_TIMESTAMPS: u16 = 54;
const TQ_COUNT: u16 = 1;
const TR_FIRST: u16 = 1;

pub(super) fn put_request(o: &mut Vec<u8>, count: u32) {
    codec::put_nested(o, Q_TIMESTAMPS, |o| codec::put_u64(o, TQ_COUNT, u64::from(count)));
}

pub(super) fn request_of(f: &Field<'_>) -> D<u32> {
    let r = nested(f, &[TQ_COUNT])?;
    let count = req_u64(&r, TQ_COUNT, "count missing")?;
    u32::try_from(count).map_err(|_| DecodeError::new(f.offset, "count over u32"))
}

pub(super) fn put_answer(o: &mut Vec<u8>, first: u64) {
    codec::put_nested(o, R_TIMESTAMPS, |o| codec::put_u64(o, TR_FIRST, first));
}

pub(super) fn answer_of(f: &Field<'_>) -> D<u64> {
    req_u64(&nested(f, &[TR_FIRST])?, TR_FIRST, "first timestamp missing")
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use super::super::*;

    fn golden(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("src/proto/golden").join(name)
    }

    use regionkv_raft::directory::{DirCmd, DirResult};

    /// The requests, and the directory command that saves the limit (nodes send it to
    /// each other as any directory command).
    fn requests() -> Vec<Request> {
        vec![
            Request::Timestamps { count: 1 },
            Request::Timestamps { count: 1 << 18 },
            Request::Directory { cmd: DirCmd::SaveTsLimit { limit: 1_700_000_003_000 << 18 } },
        ]
    }

    fn answers() -> Vec<Result<Response, RemoteError>> {
        vec![
            Ok(Response::Timestamps(1_700_000_000_000 << 18 | 5)),
            Ok(Response::Directory(DirResult::TsLimit {
                previous: 1_700_000_000_000 << 18,
                limit: 1_700_000_003_000 << 18,
            })),
        ]
    }

    /// Each payload after its length (u32, little endian).
    fn golden_bytes() -> Vec<u8> {
        let reqs = requests().into_iter().enumerate().map(|(i, r)| encode_request(i as u64, &r));
        let answers = answers().into_iter().enumerate().map(|(i, a)| encode_response(i as u64, &a));
        let mut out = Vec::new();
        for payload in reqs.chain(answers) {
            out.extend_from_slice(&u32::try_from(payload.len()).unwrap().to_le_bytes());
            out.extend_from_slice(&payload);
        }
        out
    }

    #[test]
    fn timestamp_records_round_trip_and_garbage_never_panics() {
        for (i, r) in requests().into_iter().enumerate() {
            let buf = encode_request(i as u64, &r);
            assert_eq!(decode_request(&buf).unwrap(), (i as u64, r));
            for cut in 0..buf.len() {
                let _ = decode_request(&buf[..cut]);
                let mut flipped = buf.clone();
                flipped[cut] ^= 0x41;
                let _ = decode_request(&flipped);
            }
        }
        for (i, a) in answers().into_iter().enumerate() {
            let buf = encode_response(i as u64, &a);
            assert_eq!(decode_response(&buf).unwrap(), (i as u64, a));
            for cut in 0..buf.len() {
                let _ = decode_response(&buf[..cut]);
            }
        }
    }

    #[test]
    fn the_golden_timestamp_records_are_what_this_binary_writes() {
        let file = std::fs::read(golden("tso-v1.bin")).expect("tso-v1.bin");
        assert_eq!(file, golden_bytes(), "this binary writes the timestamp records as it did");
        let mut rest = file.as_slice();
        let mut payloads = Vec::new();
        while let Some((len, tail)) = rest.split_first_chunk::<4>() {
            let (payload, tail) = tail.split_at(u32::from_le_bytes(*len) as usize);
            payloads.push(payload);
            rest = tail;
        }
        let (reqs, answers_part) = payloads.split_at(requests().len());
        let decoded: Vec<Request> = reqs.iter().map(|p| decode_request(p).unwrap().1).collect();
        assert_eq!(decoded, requests());
        let decoded: Vec<_> = answers_part.iter().map(|p| decode_response(p).unwrap().1).collect();
        assert_eq!(decoded, answers());
    }

    #[test]
    #[ignore = "writes the golden file of the timestamp records (only if it is new)"]
    fn regenerate_tso_golden() {
        std::fs::write(golden("tso-v1.bin"), golden_bytes()).unwrap();
    }
}
