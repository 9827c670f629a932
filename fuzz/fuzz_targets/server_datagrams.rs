#![no_main]

#[path = "../bodies/server_datagrams.rs"]
mod body;

libfuzzer_sys::fuzz_target!(|data: &[u8]| body::server_datagrams(data));
