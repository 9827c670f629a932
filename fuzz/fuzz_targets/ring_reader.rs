#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| vmbus_ring::fuzzing::ring_reader(data));
