//! Fuzz target: `regionkv::fuzzing::status` (see its doc).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| regionkv::fuzzing::status(data));
