#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| vmbus::fuzzing::gpadl_assembly(data));
