//! `hvsock ring dump` run as a real process on the shipped example images
//! and on broken input: output, JSON and exit codes.

use std::path::PathBuf;
use std::process::{Command, Output};

fn image(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples/rings")
        .join(name)
}

fn hvsock(args: &[&std::ffi::OsStr]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_hvsock"))
        .args(args)
        .output()
        .expect("run hvsock")
}

fn dump(name: &str, json: bool) -> Output {
    let path = image(name);
    let mut args = vec!["ring".as_ref(), "dump".as_ref()];
    if json {
        args.push("--json".as_ref());
    }
    args.push(path.as_os_str());
    hvsock(&args)
}

#[test]
fn a_sound_image_is_listed_packet_by_packet() {
    let out = dump("hello-fin.ring", false);
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("write_index      0x00048 (72)"), "{text}");
    assert!(text.contains("pending_send_sz  0x01018 (4120)"), "{text}");
    assert!(text.contains("packets: 2"), "{text}");
    assert!(text.contains("|hello|"), "{text}");
    assert!(text.contains("data_size 0  (FIN)"), "{text}");
    assert!(text.contains("ok: every packet is valid"), "{text}");
}

#[test]
fn a_corrupt_image_names_field_offset_and_reason_after_the_valid_packets() {
    let out = dump("data-size-lie.ring", false);
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("|fine|"),
        "the valid packet comes first: {text}"
    );
    assert!(
        text.contains("CORRUPT: ring corrupt at data offset 0x28: pipe data_size 16384 exceeds the 8 data bytes the packet carries"),
        "{text}"
    );
}

#[test]
fn json_is_one_document_with_the_packets_and_the_corruption() {
    let out = dump("data-size-lie.ring", true);
    assert_eq!(out.status.code(), Some(1));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["ok"], false);
    assert_eq!(doc["control"]["write_index"], 80);
    assert_eq!(doc["packets"][0]["preview_ascii"], "fine");
    assert_eq!(doc["corruption"]["kind"], "pipe_data_beyond_packet");
    assert_eq!(doc["corruption"]["location"]["offset"], 40);

    let out = dump("wrapped-stream.ring", true);
    assert_eq!(out.status.code(), Some(0));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["ok"], true);
    assert_eq!(doc["packets"].as_array().unwrap().len(), 3);
}

#[test]
fn a_bad_index_is_reported_with_its_control_page_offset() {
    let out = dump("bad-write-index.ring", false);
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text.contains("CORRUPT: ring corrupt at control page offset 0x0: write_index 0x29 is not a multiple of 8"),
        "{text}"
    );
}

#[test]
fn unreadable_or_short_files_fail_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.ring");
    let out = hvsock(&["ring".as_ref(), "dump".as_ref(), missing.as_os_str()]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains("cannot read the ring image") && err.contains("missing.ring"),
        "{err}"
    );

    let short = dir.path().join("short.ring");
    std::fs::write(&short, [0u8; 100]).unwrap();
    let out = hvsock(&["ring".as_ref(), "dump".as_ref(), short.as_os_str()]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains("is not a ring image") && err.contains("100 bytes"),
        "{err}"
    );

    let out = hvsock(&[
        "ring".as_ref(),
        "dump".as_ref(),
        "--data-size".as_ref(),
        "5000".as_ref(),
        image("hello-fin.ring").as_os_str(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("multiple of 4096"), "{err}");
}

#[test]
fn usage_errors_exit_2() {
    let out = hvsock(&["ring".as_ref(), "dump".as_ref()]);
    assert_eq!(out.status.code(), Some(2));
}
