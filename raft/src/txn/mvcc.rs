//! The transactional keyspace of snapshot-isolated transactions (`Db::transaction`):
//! how a user key and its committed versions are laid out as store keys, apart from
//! raw keys (ARCHITECTURE.md, "Transactions").
//!
//! Every store key of the keyspace starts with [`TXN_KEYSPACE`]; a raw key may not
//! (`Db` refuses it), so the two never mix on one key. A user key `k` owns:
//!
//! ```text
//!  lock key      0xFE | escape(k) | 0x00 0x00                 its lock and record live here
//!  version key   0xFE | escape(k) | 0x00 0x00 | !commit_ts    one committed version
//!                                                (u64 big-endian, inverted: newest first)
//!  escape: each 0x00 byte of k becomes 0x00 0xFF; the terminator 0x00 0x00 sorts
//!  below it, so lock keys sort as their user keys do, and a key's versions sit
//!  between its lock key and the next user key's lock key.
//! ```
//!
//! A version's value is one kind byte (1 put, 2 delete) then the value. A region
//! boundary never falls inside one user key's versions: a split key in the keyspace is
//! moved to its user key's lock key ([`split_boundary`]).

use bytes::Bytes;

/// The first byte of every store key of the transactional keyspace.
pub const TXN_KEYSPACE: u8 = 0xFE;

const TERMINATOR: [u8; 2] = [0x00, 0x00];
const ESCAPED_ZERO: [u8; 2] = [0x00, 0xFF];
const TS_LEN: usize = 8;
const VERSION_PUT: u8 = 1;
const VERSION_DELETE: u8 = 2;

/// True if `key` is a store key of the transactional keyspace.
pub fn is_txn_key(key: &[u8]) -> bool {
    key.first() == Some(&TXN_KEYSPACE)
}

/// The lock key of user key `user_key`.
pub fn lock_key(user_key: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(user_key.len() + 3 + TS_LEN);
    out.push(TXN_KEYSPACE);
    for &b in user_key {
        if b == 0 {
            out.extend_from_slice(&ESCAPED_ZERO);
        } else {
            out.push(b);
        }
    }
    out.extend_from_slice(&TERMINATOR);
    Bytes::from(out)
}

/// The key of `user_key`'s version committed at `commit_ts`.
pub fn version_key(user_key: &[u8], commit_ts: u64) -> Bytes {
    let mut out = lock_key(user_key).to_vec();
    out.extend_from_slice(&(!commit_ts).to_be_bytes());
    Bytes::from(out)
}

/// The end (exclusive) of `user_key`'s versions: the smallest key after all of them.
pub fn versions_end(user_key: &[u8]) -> Bytes {
    let mut out = lock_key(user_key).to_vec();
    *out.last_mut().expect("terminator") = 0x01;
    Bytes::from(out)
}

/// Splits a store key of the keyspace into its user key and the rest after the
/// terminator (empty for a lock key, 8 bytes for a version key). `None`: not a key of
/// the keyspace, or not a well-formed one.
fn split(key: &[u8]) -> Option<(Bytes, &[u8])> {
    let body = key.strip_prefix(&[TXN_KEYSPACE])?;
    let mut user = Vec::with_capacity(body.len());
    let mut i = 0;
    while i < body.len() {
        match body[i] {
            0x00 => match body.get(i + 1)? {
                0x00 => return Some((Bytes::from(user), &body[i + 2..])),
                0xFF => {
                    user.push(0);
                    i += 2;
                }
                _ => return None,
            },
            b => {
                user.push(b);
                i += 1;
            }
        }
    }
    None
}

/// The user key of a lock key (`None`: not one).
pub fn decode_lock_key(key: &[u8]) -> Option<Bytes> {
    match split(key)? {
        (user, []) => Some(user),
        _ => None,
    }
}

/// The user key and commit timestamp of a version key (`None`: not one).
pub fn decode_version_key(key: &[u8]) -> Option<(Bytes, u64)> {
    let (user, rest) = split(key)?;
    let ts: [u8; TS_LEN] = rest.try_into().ok()?;
    Some((user, !u64::from_be_bytes(ts)))
}

/// A version's stored value: `Some(value)` for a put, `None` for a delete.
pub fn encode_version_value(value: Option<&[u8]>) -> Bytes {
    match value {
        Some(v) => {
            let mut out = Vec::with_capacity(1 + v.len());
            out.push(VERSION_PUT);
            out.extend_from_slice(v);
            Bytes::from(out)
        }
        None => Bytes::from_static(&[VERSION_DELETE]),
    }
}

/// Decodes a version's stored value (`Err`: not one this binary wrote).
pub fn decode_version_value(stored: &Bytes) -> Result<Option<Bytes>, &'static str> {
    match stored.first() {
        Some(&VERSION_PUT) => Ok(Some(stored.slice(1..))),
        Some(&VERSION_DELETE) if stored.len() == 1 => Ok(None),
        _ => Err("not a version value"),
    }
}

/// Where a region may be split near `key`: a key inside the keyspace is moved back to
/// its user key's lock key, so that a user key's lock and versions stay in one
/// region; any other key is returned as it is.
pub fn split_boundary(key: &[u8]) -> Bytes {
    match split(key) {
        Some((user, _)) if is_txn_key(key) => lock_key(&user),
        _ => Bytes::copy_from_slice(key),
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #[test]
        fn keys_round_trip_and_sort_as_user_keys_then_newest_first(
            a in proptest::collection::vec(any::<u8>(), 0..12),
            b in proptest::collection::vec(any::<u8>(), 0..12),
            ta in any::<u64>(),
            tb in any::<u64>(),
        ) {
            prop_assert_eq!(decode_lock_key(&lock_key(&a)), Some(Bytes::from(a.clone())));
            prop_assert_eq!(decode_version_key(&version_key(&a, ta)), Some((Bytes::from(a.clone()), ta)));
            prop_assert_eq!(decode_lock_key(&version_key(&a, ta)), None);
            prop_assert_eq!(split_boundary(&version_key(&a, ta)), lock_key(&a));
            // A key's lock, then its versions newest first, then the next user key.
            prop_assert!(lock_key(&a) < version_key(&a, ta));
            prop_assert!(version_key(&a, ta) < versions_end(&a));
            if ta != tb {
                prop_assert_eq!(version_key(&a, ta) < version_key(&a, tb), ta > tb);
            }
            if a < b {
                prop_assert!(versions_end(&a) <= lock_key(&b), "{:?} {:?}", a, b);
            }
        }

        #[test]
        fn garbage_never_panics(key in proptest::collection::vec(any::<u8>(), 0..20)) {
            let _ = decode_lock_key(&key);
            let _ = decode_version_key(&key);
            let _ = split_boundary(&key);
            let _ = decode_version_value(&Bytes::from(key));
        }
    }

    #[test]
    fn version_values_round_trip() {
        assert_eq!(
            decode_version_value(&encode_version_value(Some(b"v"))),
            Ok(Some(Bytes::from("v")))
        );
        assert_eq!(decode_version_value(&encode_version_value(None)), Ok(None));
        assert!(decode_version_value(&Bytes::from_static(&[3])).is_err());
        assert!(!is_txn_key(b"raw") && is_txn_key(&lock_key(b"")));
    }
}
