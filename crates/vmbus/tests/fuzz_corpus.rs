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

/// A hand-built `server_datagrams` input that opens a channel, so that the
/// body's link checks (CreateLink before ChannelLink and HostIncoming, one
/// memfd with HostIncoming, LinkClosed when a process leaves) run whatever
/// the corpus holds: corpus files recorded before links existed open
/// channels with two eventfds, which is now refused. A second guest sends
/// that older OPENCHANNEL and must be dropped without disturbing the pair.
#[test]
fn server_datagrams_opens_a_channel_over_a_link() {
    use vmbus::ext::{encode_ext, ExtRequest};
    use vmbus::messages::{InitiateContact, OpenChannel, VERSION_WIN10_V5};
    use vmbus::{Gpadl, Guid, Message, TlConnectRequest};

    let mut input = Vec::new();
    let connect = |input: &mut Vec<u8>, partition: u8| input.extend([0, partition]);
    // Op 1: client byte, fd byte (0 none, 1 | pages << 2 a sealed memfd,
    // 2 two eventfds), length byte, the datagram.
    let datagram = |input: &mut Vec<u8>, client: u8, fds: u8, bytes: Vec<u8>| {
        let len = u8::try_from(bytes.len()).expect("a datagram of the input fits 255 bytes");
        input.extend([1, client, fds, len]);
        input.extend(bytes);
    };
    let service = Guid::from_vsock_port(80);
    let contact = Message::InitiateContact(InitiateContact {
        vmbus_version_requested: VERSION_WIN10_V5,
        target_vcpu: 0,
        interrupt_page_or_target_info: 0,
        parent_to_child_monitor_page_gpa: 0,
        child_to_parent_monitor_page_gpa: 0,
        client_id: None,
    })
    .encode();
    let tl_connect = |port: u32| {
        Message::TlConnectRequest(TlConnectRequest {
            guest_endpoint_id: Guid::from_vsock_port(port),
            host_service_id: service,
            silo_id: None,
        })
        .encode()
    };
    let open = |relid: u32| {
        Message::OpenChannel(OpenChannel {
            child_relid: relid,
            openid: relid,
            ringbuffer_gpadlhandle: 1,
            target_vp: 0,
            downstream_ringbuffer_pageoffset: 2,
            userdata: [0; 120],
            guest_signal: None,
        })
        .encode()
    };
    connect(&mut input, 0); // client 0: a host process
    connect(&mut input, 1); // client 1: a guest of VM a
    connect(&mut input, 1); // client 2: another guest of VM a
    datagram(
        &mut input,
        0,
        0,
        encode_ext(&ExtRequest::HostListen {
            service_id: service,
            vm_id: Guid::ZERO,
        }),
    );
    for (guest, relid) in [(1u8, 1u32), (2, 2)] {
        datagram(&mut input, guest, 0, contact.clone());
        datagram(&mut input, guest, 0, tl_connect(1024 + relid));
        let header = Gpadl::ring(relid, 1, (0..4).collect())
            .to_messages()
            .unwrap()[0]
            .encode();
        datagram(&mut input, guest, 1 | (4 << 2), header);
    }
    datagram(&mut input, 1, 0, open(1));
    datagram(&mut input, 2, 2, open(2));
    // The host process leaves first: the guest is told its link is closed.
    input.extend([4, 0]);
    bodies::server_datagrams(&input);
}
