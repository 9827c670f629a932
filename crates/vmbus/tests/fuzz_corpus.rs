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

#[path = "../../../fuzz/replay.rs"]
mod replay;

use replay::{replay, targets_on_disk};

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
            assert_eq!(
                listed,
                targets_on_disk(|source| {
                    source.contains("vmbus::fuzzing::") || source.contains("../bodies/")
                })
            );
        }
    };
}

targets! {
    decode_message,
    gpadl_assembly,
    server_datagrams,
    client_messages,
}
