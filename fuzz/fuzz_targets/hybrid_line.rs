#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| hvsock::fuzzing::hybrid_line(data));
