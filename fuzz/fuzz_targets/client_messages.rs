#![no_main]

#[path = "../bodies/client_messages.rs"]
mod body;

libfuzzer_sys::fuzz_target!(|data: &[u8]| body::client_messages(data));
