//! Replays the cargo-fuzz corpora on the stable toolchain.
//!
//! Every file in `fuzz/corpus/<target>/` (and in `fuzz/artifacts/<target>/`,
//! when a fuzzing run left crash inputs there) goes through the matching
//! `vmbus_ring::fuzzing` function, so a regression on any input the fuzzers
//! ever found interesting fails `cargo test`. Each corpus directory must
//! exist and hold at least one file.
//!
//! To add a target, add its name to the `corpus_tests!` list at the bottom:
//! it must be both a function in `vmbus_ring::fuzzing` and the name of
//! `fuzz/fuzz_targets/<name>.rs`.

use std::collections::BTreeSet;
use std::fs;
use std::panic::catch_unwind;
use std::path::{Path, PathBuf};

/// The `fuzz/` directory of the repository.
fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz")
}

/// The regular files directly inside `dir`, sorted by path.
fn files_in(dir: &Path) -> Vec<PathBuf> {
    let entries = fs::read_dir(dir).unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()));
    let mut files: Vec<PathBuf> = entries
        .map(|entry| entry.expect("directory entry").path())
        .filter(|path| path.is_file())
        .collect();
    files.sort();
    files
}

/// Runs `body` on every corpus file (which must exist) and every artifact of
/// `target`, and fails naming each input that panicked.
fn replay(target: &str, body: fn(&[u8])) {
    let corpus_dir = fuzz_dir().join("corpus").join(target);
    assert!(
        corpus_dir.is_dir(),
        "corpus directory {} is missing",
        corpus_dir.display()
    );
    let mut inputs = files_in(&corpus_dir);
    assert!(
        !inputs.is_empty(),
        "corpus directory {} is empty",
        corpus_dir.display()
    );
    let artifacts_dir = fuzz_dir().join("artifacts").join(target);
    if artifacts_dir.is_dir() {
        inputs.extend(files_in(&artifacts_dir));
    }
    let failures: Vec<String> = inputs
        .iter()
        .filter(|path| {
            let data = fs::read(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
            catch_unwind(|| body(&data)).is_err()
        })
        .map(|path| path.display().to_string())
        .collect();
    assert!(
        failures.is_empty(),
        "{target}: {} of {} inputs panicked:\n{}",
        failures.len(),
        inputs.len(),
        failures.join("\n")
    );
}

/// One test per target, plus a check that the list matches the cargo-fuzz
/// targets built on `vmbus_ring::fuzzing` (targets of other crates may share
/// `fuzz/`).
macro_rules! corpus_tests {
    ($($target:ident),* $(,)?) => {
        $(
            #[test]
            fn $target() {
                replay(stringify!($target), vmbus_ring::fuzzing::$target);
            }
        )*

        #[test]
        fn every_fuzz_target_is_replayed() {
            let listed: BTreeSet<String> = [$(stringify!($target)),*]
                .iter()
                .map(|name| name.to_string())
                .collect();
            let on_disk: BTreeSet<String> = files_in(&fuzz_dir().join("fuzz_targets"))
                .iter()
                .filter(|path| path.extension().is_some_and(|ext| ext == "rs"))
                .filter(|path| {
                    fs::read_to_string(path)
                        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
                        .contains("vmbus_ring::fuzzing::")
                })
                .filter_map(|path| Some(path.file_stem()?.to_str()?.to_owned()))
                .collect();
            assert_eq!(
                listed, on_disk,
                "corpus_tests! and the vmbus_ring targets in fuzz/fuzz_targets/ disagree"
            );
        }
    };
}

corpus_tests! {
    ring_reader,
    ring_inspect,
    ring_ops,
}
