//! Replays the cargo-fuzz corpora of vmbus's targets on the stable
//! toolchain.
//!
//! Every file in `fuzz/corpus/<target>/` (and in `fuzz/artifacts/<target>/`,
//! when a fuzzing run left crash inputs there) goes through the same body
//! the fuzz target runs, so any input the fuzzers found interesting stays a
//! regression test. Each corpus directory must exist and hold at least one
//! file.
//!
//! Two kinds of bodies: `decode_message` and `gpadl_assembly` live in
//! `vmbus::fuzzing`; `server_datagrams` and `client_messages` drive the
//! public state machines and live in `fuzz/bodies/`, which both the fuzz
//! target and this test include. The `fuzz/` directory holds targets of
//! several crates; this test owns the targets whose source calls
//! `vmbus::fuzzing::` or includes a file of `fuzz/bodies/`, and checks that
//! list against the `targets!` list at the bottom.

use std::collections::BTreeSet;
use std::fs;
use std::panic::catch_unwind;
use std::path::{Path, PathBuf};

#[path = "../../../fuzz/bodies/server_datagrams.rs"]
mod server_datagrams_body;

#[path = "../../../fuzz/bodies/client_messages.rs"]
mod client_messages_body;

/// The bodies, by target name.
mod bodies {
    pub use super::client_messages_body::client_messages;
    pub use super::server_datagrams_body::server_datagrams;
    pub use vmbus::fuzzing::{decode_message, gpadl_assembly};
}

/// The `fuzz/` directory of the repository.
fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz")
}

/// Regular files directly in `dir`, sorted; none if `dir` does not exist.
fn files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut found: Vec<PathBuf> = entries
        .map(|entry| entry.expect("directory entry").path())
        .filter(|path| path.is_file())
        .collect();
    found.sort();
    found
}

/// Feeds every corpus and artifact file of `target` to `body`; fails with
/// the list of inputs that panicked.
fn replay(target: &str, body: fn(&[u8])) {
    let corpus = fuzz_dir().join("corpus").join(target);
    let mut inputs = files(&corpus);
    assert!(
        !inputs.is_empty(),
        "{} is missing or empty",
        corpus.display()
    );
    inputs.extend(files(&fuzz_dir().join("artifacts").join(target)));
    let panicked: Vec<String> = inputs
        .iter()
        .filter(|path| {
            let data = fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            catch_unwind(|| body(&data)).is_err()
        })
        .map(|path| path.display().to_string())
        .collect();
    assert!(
        panicked.is_empty(),
        "{target}: {} of {} inputs panicked:\n{}",
        panicked.len(),
        inputs.len(),
        panicked.join("\n")
    );
}

/// Names of the targets in `fuzz/fuzz_targets/` that belong to vmbus.
fn vmbus_targets_on_disk() -> BTreeSet<String> {
    files(&fuzz_dir().join("fuzz_targets"))
        .into_iter()
        .filter(|path| path.extension().is_some_and(|ext| ext == "rs"))
        .filter(|path| {
            let text =
                fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            text.contains("vmbus::fuzzing::") || text.contains("../bodies/")
        })
        .filter_map(|path| Some(path.file_stem()?.to_str()?.to_owned()))
        .collect()
}

/// One test per target, and one that the list matches `fuzz_targets/`.
macro_rules! targets {
    ($($target:ident),* $(,)?) => {
        $(
            #[test]
            fn $target() {
                replay(stringify!($target), bodies::$target);
            }
        )*

        #[test]
        fn every_vmbus_fuzz_target_is_replayed() {
            let listed: BTreeSet<String> =
                [$(stringify!($target)),*].iter().map(|t| t.to_string()).collect();
            assert_eq!(listed, vmbus_targets_on_disk());
        }
    };
}

targets! {
    decode_message,
    gpadl_assembly,
    server_datagrams,
    client_messages,
}
