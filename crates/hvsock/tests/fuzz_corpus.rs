//! Replays the cargo-fuzz corpora of hvsock's targets on the stable
//! toolchain.
//!
//! Every file in `fuzz/corpus/<target>/` (and in `fuzz/artifacts/<target>/`,
//! when a fuzzing run left crash inputs there) goes through the matching
//! `hvsock::fuzzing` function, so any input the fuzzers found interesting
//! stays a regression test. Each corpus directory must exist and hold at
//! least one file.
//!
//! The `fuzz/` directory holds targets of several crates; this test owns the
//! targets whose source calls `hvsock::fuzzing::`, and checks that list
//! against the `targets!` list at the bottom.

use std::collections::BTreeSet;
use std::fs;
use std::panic::catch_unwind;
use std::path::{Path, PathBuf};

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

/// Names of the targets in `fuzz/fuzz_targets/` that call `hvsock::fuzzing`.
fn hvsock_targets_on_disk() -> BTreeSet<String> {
    files(&fuzz_dir().join("fuzz_targets"))
        .into_iter()
        .filter(|path| path.extension().is_some_and(|ext| ext == "rs"))
        .filter(|path| {
            fs::read_to_string(path)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
                .contains("hvsock::fuzzing::")
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
                replay(stringify!($target), hvsock::fuzzing::$target);
            }
        )*

        #[test]
        fn every_hvsock_fuzz_target_is_replayed() {
            let listed: BTreeSet<String> =
                [$(stringify!($target)),*].iter().map(|t| t.to_string()).collect();
            assert_eq!(listed, hvsock_targets_on_disk());
        }
    };
}

targets! {
    addr_parse,
    hybrid_line,
}
