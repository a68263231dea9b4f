//! Fuzz target: `regionkv_raft::fuzzing::handshake` (see its doc).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| regionkv_raft::fuzzing::handshake(data));
