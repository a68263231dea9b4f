//! Fuzz target: `regionkv::fuzzing::client_frame` (see its doc).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| regionkv::fuzzing::client_frame(data));
