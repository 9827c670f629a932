//! `hvsock demo`, the README's first command, run as a real process: it
//! shows each step of the protocol and exits 0 with matching checksums.

use std::process::Command;

#[test]
fn the_demo_shows_every_step_and_succeeds() {
    let out = Command::new(env!("CARGO_BIN_EXE_hvsock"))
        .args(["demo", "--bytes", "8M"])
        .output()
        .expect("run hvsock demo");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for expected in [
        "INITIATE_CONTACT",
        "VERSION_RESPONSE supported true",
        "OFFERCHANNEL relid",
        "(connection from host)",
        "GPADL_HEADER",
        "GPADL_CREATED",
        "OPENCHANNEL relid",
        "OPENCHANNEL_RESULT",
        "RESCIND_CHANNELOFFER",
        "RELID_RELEASED",
        "host -> guest: 8388608 bytes",
        "guest -> host: 8388608 bytes",
        "GB/s",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }
    assert_eq!(text.matches("matches").count(), 2, "{text}");
    assert!(text.trim_end().ends_with("ok"), "{text}");
}

#[test]
fn a_bad_size_is_a_usage_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_hvsock"))
        .args(["demo", "--bytes", "12Q"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown unit"));
}
