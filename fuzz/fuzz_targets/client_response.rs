//! Fuzz target: `regionkv::fuzzing::response` (see its doc).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| regionkv::fuzzing::response(data));
