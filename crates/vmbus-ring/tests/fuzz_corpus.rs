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

#[path = "../../../fuzz/replay.rs"]
mod replay;

use replay::{replay, targets_on_disk};

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
            let on_disk = targets_on_disk(|source| source.contains("vmbus_ring::fuzzing::"));
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
