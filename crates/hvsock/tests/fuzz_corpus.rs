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

#[path = "../../../fuzz/replay.rs"]
mod replay;

use replay::{replay, targets_on_disk};

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
            assert_eq!(listed, targets_on_disk(|source| source.contains("hvsock::fuzzing::")));
        }
    };
}

targets! {
    addr_parse,
    hybrid_line,
}
