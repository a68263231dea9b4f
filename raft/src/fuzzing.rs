//! Entry points of the fuzz targets (`fuzz/` at the repository root): each decodes
//! arbitrary bytes as one of this crate's disk or network formats, must never panic,
//! and checks that what decodes encodes to something that decodes to the same. Not part
//! of the API (hidden from the docs); the unit tests below run them on the golden
//! files and on encoded values, so `cargo test` covers them without the fuzzer.

use bytes::Bytes;

use crate::command::{self, Command};
use crate::transport::handshake::{Hello, Proof, RejectReason, identity_of};
use crate::transport::wire;
use crate::txn::recovery_state::RecoveryState;

/// The payload bound the frame targets check frames against.
pub const PAYLOAD_BYTES_MAX: u32 = 1 << 20;

/// One record of the Raft log (the payload of one WAL record): it never panics.
pub fn log_record(data: &[u8]) {
    if let Ok(items) = crate::log::batch::decode(data) {
        let _ = format!("{items:?}");
    }
}

/// The data of a Raft entry: a command that decodes re-encodes to one that decodes to
/// the same.
pub fn command(data: &[u8]) {
    let data = Bytes::copy_from_slice(data);
    let Ok(cmd) = command::decode(&data) else { return };
    let again = encode(&cmd);
    assert_eq!(command::decode(&Bytes::from(again)), Ok(cmd));
}

/// Encodes a command as its entry's data, whatever its kind.
fn encode(cmd: &Command) -> Vec<u8> {
    match cmd {
        Command::Writes(writes) => command::encode_writes(writes),
        Command::Admin(admin) => command::encode_admin(admin),
        Command::Directory(dir) => command::encode_directory(dir),
        Command::Txn(txn) => command::encode_txn(txn),
        Command::Txns(txns) => {
            let each: Vec<Vec<u8>> = txns.iter().map(command::encode_txn).collect();
            command::encode_txns(&each.iter().map(Vec::as_slice).collect::<Vec<_>>())
        }
        Command::Dup(dup) => command::encode_dup(dup),
        Command::Sink(sink) => command::encode_sink(sink),
    }
}

/// A whole store-protocol frame: one that decodes re-encodes to the same bytes; a
/// BATCH payload is decoded as [`batch`] does.
pub fn store_frame(data: &[u8]) {
    let Ok((kind, payload)) = wire::decode_frame(data, PAYLOAD_BYTES_MAX) else { return };
    assert_eq!(wire::encode_frame(kind, payload).expect("a frame that decoded"), data);
    batch(payload);
}

/// A BATCH payload of envelopes (Raft messages among them): one that decodes
/// re-encodes to one that decodes to the same envelopes.
pub fn batch(data: &[u8]) {
    let Ok(envelopes) = wire::decode_batch(&Bytes::copy_from_slice(data)) else { return };
    let again = wire::encode_batch(&envelopes).expect("envelopes that decoded");
    let decoded = wire::decode_batch(&Bytes::from(again)).expect("a batch this binary wrote");
    assert!(decoded == envelopes, "a batch decodes to what it was");
}

/// A handshake message, by the first byte: a hello (and the identity in it), a proof,
/// a rejection. One that decodes re-encodes to one that decodes to the same.
pub fn handshake(data: &[u8]) {
    let Some((&kind, payload)) = data.split_first() else { return };
    match kind % 3 {
        0 => {
            let _ = identity_of(payload);
            if let Ok(hello) = Hello::decode(payload) {
                assert_eq!(Hello::decode(&hello.encode()).ok(), Some(hello));
            }
        }
        1 => {
            if let Ok(proof) = Proof::decode(payload) {
                assert_eq!(Proof::decode(&proof.encode()).ok(), Some(proof));
            }
        }
        _ => {
            if let Ok(reason) = RejectReason::decode(payload) {
                assert_eq!(RejectReason::decode(&reason.encode()).ok(), Some(reason));
            }
        }
    }
}

/// The transaction-recovery state a store keeps on disk: one that decodes re-encodes
/// to one that decodes to the same.
pub fn recovery_state(data: &[u8]) {
    if let Ok(state) = RecoveryState::decode(data) {
        assert_eq!(RecoveryState::decode(&state.encode()), Ok(state));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn golden(name: &str) -> Vec<u8> {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
        std::fs::read(dir.join(name)).expect("a golden file")
    }

    fn with_prefixes(data: &[u8], f: fn(&[u8])) {
        for cut in 0..=data.len() {
            f(&data[..cut]);
        }
    }

    #[test]
    fn the_entry_points_take_the_golden_files_and_their_prefixes() {
        for name in ["raft-log-v1.bin", "raft-log-v2.bin"] {
            let bytes = golden(name);
            assert!(crate::log::batch::decode(&bytes).is_ok());
            with_prefixes(&bytes, log_record);
        }
        let state = golden("txn-recovery-state-v1.bin");
        assert!(RecoveryState::decode(&state).is_ok());
        with_prefixes(&state, recovery_state);
    }

    /// Writes the seeds of the targets that have no golden file into the fuzz corpus
    /// (`fuzz/corpus/<target>/`), from this binary's encoders.
    #[test]
    #[ignore = "writes fuzz seeds; run when a format changes"]
    fn write_fuzz_seeds() {
        use crate::command::{Op, Write, WriteSession};
        use crate::transport::frame::FrameKind;
        use crate::transport::handshake::{ClusterId, HandshakeKey, Role, Transcript};
        use crate::transport::{Body, Envelope};
        use raft::eraftpb::{ConfState, Entry, Message, MessageType};
        use regionkv_engine::{Epoch, RegionId, SessionId, StoreId};

        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus");
        let write = |target: &str, name: &str, bytes: &[u8]| {
            let dir = root.join(target);
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join(name), bytes).unwrap();
        };
        let w = Write {
            epoch: Epoch { version: 2, conf_ver: 1 },
            ops: vec![
                Op::Put { key: Bytes::from_static(b"k"), value: Bytes::from_static(b"v") },
                Op::Delete { key: Bytes::from_static(b"d") },
            ],
            session: Some(WriteSession { id: SessionId(3), seq: 4 }),
            time_ms: Some(5),
        };
        let cmd = command::encode_writes([&w]);
        assert!(command::decode(&Bytes::from(cmd.clone())).is_ok());
        write("raft_command", "writes", &cmd);

        let mut m = Message::default();
        m.set_msg_type(MessageType::MsgAppend);
        m.to = 2;
        m.from = 1;
        m.term = 3;
        let mut e = Entry::default();
        e.index = 4;
        e.data = cmd.into();
        m.mut_entries().push(e);
        let mut cs = ConfState::default();
        cs.voters = vec![1, 2];
        m.mut_snapshot().mut_metadata().set_conf_state(cs);
        let env = Envelope {
            region: RegionId(1),
            from: StoreId(1),
            to: StoreId(2),
            epoch: Some(Epoch { version: 2, conf_ver: 1 }),
            range: None,
            body: Body::Raft(m),
        };
        let batch = wire::encode_batch(&[env]).unwrap();
        assert_eq!(wire::decode_batch(&Bytes::from(batch.clone())).unwrap().len(), 1);
        write("store_batch", "raft", &batch);
        write("store_frame", "batch", &wire::encode_frame(FrameKind::Batch, &batch).unwrap());

        let hello = Hello { cluster: ClusterId(7), store: StoreId(1), nonce: [9; 32], link: None };
        write(
            "store_frame",
            "hello",
            &wire::encode_frame(FrameKind::Hello, &hello.encode()).unwrap(),
        );
        let transcript = Transcript {
            cluster: ClusterId(7),
            connector: StoreId(1),
            acceptor: StoreId(2),
            connector_nonce: [1; 32],
            acceptor_nonce: [2; 32],
        };
        let key = HandshakeKey::derive(b"a secret of sixteen bytes");
        let proof = Proof::make(&key, Role::Connector, &transcript);
        for (kind, name, payload) in [
            (0, "hello", hello.encode()),
            (1, "proof", proof.encode()),
            (2, "reject", RejectReason::from_code(1).encode()),
        ] {
            let mut data = vec![kind];
            data.extend(payload);
            write("store_handshake", name, &data);
        }
    }
}
