//! Replaying the cargo-fuzz corpora on the stable toolchain: shared by the
//! `fuzz_corpus.rs` test of each crate that has fuzz targets (each includes
//! this file with `#[path]`). Not a fuzz target itself.

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

/// Runs `body` on every corpus file (the corpus must exist and hold at
/// least one) and every artifact of `target`, and fails naming each input
/// that panicked.
pub fn replay(target: &str, body: fn(&[u8])) {
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

/// Names of the targets in `fuzz/fuzz_targets/` whose source `owns` says
/// belong to the calling crate.
pub fn targets_on_disk(owns: impl Fn(&str) -> bool) -> BTreeSet<String> {
    files_in(&fuzz_dir().join("fuzz_targets"))
        .iter()
        .filter(|path| path.extension().is_some_and(|ext| ext == "rs"))
        .filter(|path| {
            owns(
                &fs::read_to_string(path)
                    .unwrap_or_else(|e| panic!("reading {}: {e}", path.display())),
            )
        })
        .filter_map(|path| Some(path.file_stem()?.to_str()?.to_owned()))
        .collect()
}
