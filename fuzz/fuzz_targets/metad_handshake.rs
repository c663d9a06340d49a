//! libFuzzer entry point of [`grid_tests::fuzzing::metad_handshake`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| grid_tests::fuzzing::metad_handshake(data));
