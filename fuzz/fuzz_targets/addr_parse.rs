#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| hvsock::fuzzing::addr_parse(data));
