//! The control messages of one hv_sock connection, encoded and decoded.
//!
//! Owns the micro-benchmark of `vmbus::messages`: what a guest and the host
//! encode and decode per connection (TL_CONNECT_REQUEST, the offer, the
//! GPADL of a default ring pair in its header and bodies, OPENCHANNEL and
//! its result), one message at a time, and the GPADL reassembled from its
//! messages as the daemon does. Not the I/O: sending and receiving are
//! measured by `hvsock bench --only setup`.
//!
//! `cargo bench -p vmbus --bench messages`

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput};
use vmbus::messages::{MAX_MESSAGE_SIZE, USER_DEFINED_SIZE};
use vmbus::{
    Gpadl, GpadlAssembler, Guid, HvsockParams, Message, OfferChannel, OpenChannel, TlConnectRequest,
};

/// Pages of the default ring pair (52 per direction).
const RING_PAIR_PAGES: u64 = 104;

fn connection_messages() -> Vec<(&'static str, Message)> {
    let local = Guid::from_vsock_port(0x8000_1234);
    let remote = Guid::from_vsock_port(5000);
    let offer = OfferChannel::hvsock(7, remote, local, &HvsockParams::default());
    let gpadl = Gpadl::ring(7, 0x1e5e, (0..RING_PAIR_PAGES).collect());
    let mut messages = vec![
        (
            "tl_connect_request",
            Message::TlConnectRequest(TlConnectRequest {
                guest_endpoint_id: local,
                host_service_id: remote,
                silo_id: None,
            }),
        ),
        ("offer_channel", Message::OfferChannel(offer)),
    ];
    for (i, m) in gpadl
        .to_messages()
        .expect("a valid GPADL")
        .into_iter()
        .enumerate()
    {
        messages.push((if i == 0 { "gpadl_header" } else { "gpadl_body" }, m));
    }
    messages.push((
        "open_channel",
        Message::OpenChannel(OpenChannel {
            child_relid: 7,
            openid: 7,
            ringbuffer_gpadlhandle: 0x1e5e,
            target_vp: 0,
            downstream_ringbuffer_pageoffset: 52,
            userdata: [0; USER_DEFINED_SIZE],
            guest_signal: None,
        }),
    ));
    messages.push((
        "open_channel_result",
        Message::OpenChannelResult {
            child_relid: 7,
            openid: 7,
            status: 0,
        },
    ));
    messages
}

fn bench_messages(c: &mut Criterion) {
    let mut group = c.benchmark_group("messages");
    let mut seen = std::collections::BTreeSet::new();
    for (name, message) in connection_messages() {
        // One of each kind: the GPADL bodies are alike.
        if !seen.insert(name) {
            continue;
        }
        let bytes = message.encode();
        group.throughput(Throughput::Bytes(bytes.len() as u64));
        group.bench_function(BenchmarkId::new("encode", name), |b| {
            let mut buf = [0u8; MAX_MESSAGE_SIZE];
            b.iter(|| black_box(&message).encode_into(&mut buf));
        });
        group.bench_function(BenchmarkId::new("decode", name), |b| {
            b.iter(|| Message::decode(black_box(&bytes)).expect("decodes"));
        });
    }
    group.finish();

    // The daemon's side of a GPADL: every message of a default ring pair's
    // GPADL decoded and fed to the assembler until the GPADL is whole.
    let encoded: Vec<Vec<u8>> = Gpadl::ring(7, 0x1e5e, (0..RING_PAIR_PAGES).collect())
        .to_messages()
        .expect("a valid GPADL")
        .iter()
        .map(Message::encode)
        .collect();
    c.bench_function("gpadl/assemble_104_pages", |b| {
        b.iter(|| {
            let mut assembler = GpadlAssembler::new();
            let mut whole = None;
            for bytes in &encoded {
                let message = Message::decode(black_box(bytes)).expect("decodes");
                whole = assembler.feed(&message).expect("assembles");
            }
            whole.expect("the last message completes the GPADL")
        });
    });
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    bench_messages(&mut c);
    c.final_summary();
}
