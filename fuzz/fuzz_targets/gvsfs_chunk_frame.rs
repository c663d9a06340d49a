//! libFuzzer entry point of [`grid_tests::fuzzing::gvsfs_chunk_frame`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| grid_tests::fuzzing::gvsfs_chunk_frame(data));
