#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| vmbus::fuzzing::decode_message(data));
