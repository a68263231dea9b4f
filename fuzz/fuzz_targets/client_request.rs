//! Fuzz target: `regionkv::fuzzing::request` (see its doc).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| regionkv::fuzzing::request(data));
