//! Tests of the guest client, one state at a time.

use std::os::fd::OwnedFd;
use std::sync::Arc;

use super::*;
use crate::messages::{
    HvsockParams, VersionResponse, VersionResponseExt, STATUS_CONNECTION_REFUSED,
};

fn fd() -> Arc<OwnedFd> {
    Arc::new(std::fs::File::open("/dev/null").unwrap().into())
}

fn drain(client: &mut GuestClient) -> Vec<Output> {
    std::iter::from_fn(|| client.poll_output()).collect()
}

#[track_caller]
fn sent(outputs: &[Output]) -> Vec<&Message> {
    outputs
        .iter()
        .filter_map(|o| match o {
            Output::Send { message, .. } => Some(message),
            Output::Event(_) => None,
        })
        .collect()
}

fn events(outputs: &[Output]) -> Vec<&Event> {
    outputs
        .iter()
        .filter_map(|o| match o {
            Output::Event(e) => Some(e),
            Output::Send { .. } => None,
        })
        .collect()
}

fn version_response(supported: bool) -> Message {
    Message::VersionResponse(VersionResponse {
        version_supported: supported,
        connection_state: 0,
        msg_conn_id: 4,
        ext: VersionResponseExt::None,
    })
}

/// A client that has agreed a version and received all offers.
fn connected() -> GuestClient {
    let mut client = GuestClient::new();
    client.start();
    client.handle(version_response(true)).unwrap();
    client.handle(Message::AllOffersDelivered).unwrap();
    drain(&mut client);
    client
}

fn offer(relid: u32) -> OfferChannel {
    OfferChannel::hvsock(
        relid,
        Guid::from_vsock_port(5000),
        Guid::from_vsock_port(1234),
        &HvsockParams {
            is_for_guest_accept: true,
            ..HvsockParams::default()
        },
    )
}

const LAYOUT: RingLayout = RingLayout {
    total_pages: 12,
    guest_to_host_pages: 6,
};

/// A client with channel `relid` offered.
fn offered(relid: u32) -> GuestClient {
    let mut client = connected();
    client.handle(Message::OfferChannel(offer(relid))).unwrap();
    drain(&mut client);
    client
}

/// A client with channel `relid` open; returns the GPADL handle.
fn open(relid: u32) -> (GuestClient, u32) {
    let mut client = offered(relid);
    client.open(relid, fd(), LAYOUT).unwrap();
    let out = drain(&mut client);
    let Message::GpadlHeader(header) = sent(&out)[0] else {
        panic!("no GPADL header")
    };
    let gpadl = header.gpadl();
    client
        .handle(Message::GpadlCreated {
            child_relid: relid,
            gpadl,
            creation_status: 0,
        })
        .unwrap();
    client
        .handle(Message::OpenChannelResult {
            child_relid: relid,
            openid: relid,
            status: 0,
        })
        .unwrap();
    drain(&mut client);
    (client, gpadl)
}

// Tests for contact.

#[test]
fn negotiation_falls_back_to_older_versions_then_requests_offers() {
    let mut client = GuestClient::new();
    client.start();
    let out = drain(&mut client);
    let Message::InitiateContact(first) = sent(&out)[0] else {
        panic!()
    };
    assert_eq!(first.vmbus_version_requested, VERSION_WIN10_V5_3);
    assert_eq!(first.message_sint(), MESSAGE_SINT);
    client.handle(version_response(false)).unwrap();
    let out = drain(&mut client);
    let Message::InitiateContact(second) = sent(&out)[0] else {
        panic!()
    };
    assert_eq!(second.vmbus_version_requested, VERSION_WIN10_V5_2);
    client.handle(version_response(true)).unwrap();
    assert!(matches!(
        sent(&drain(&mut client))[..],
        [Message::RequestOffers]
    ));
    client.handle(Message::AllOffersDelivered).unwrap();
    assert_eq!(
        events(&drain(&mut client)),
        [&Event::Connected {
            version: VERSION_WIN10_V5_2
        }]
    );
}

#[test]
fn a_host_that_refuses_every_version_is_reported() {
    let mut client = GuestClient::new();
    client.start();
    for _ in 0..PROPOSED_VERSIONS.len() {
        client.handle(version_response(false)).unwrap();
    }
    let out = drain(&mut client);
    assert_eq!(events(&out), [&Event::ContactRefused]);
    assert!(client.tl_connect(Guid::ZERO, Guid::ZERO).is_err());
}

#[test]
fn messages_before_contact_are_protocol_errors() {
    let mut client = GuestClient::new();
    assert!(client.handle(Message::OfferChannel(offer(1))).is_err());
    assert!(client.handle(Message::AllOffersDelivered).is_err());
    client.start();
    assert!(
        client.handle(Message::RequestOffers).is_err(),
        "a guest message"
    );
}

// Tests for connecting.

#[test]
fn tl_connect_sends_the_request_and_reports_a_refusal() {
    let mut client = connected();
    let (local, remote) = (Guid::from_vsock_port(0x401), Guid::from_vsock_port(0x1234));
    client.tl_connect(local, remote).unwrap();
    let out = drain(&mut client);
    let Message::TlConnectRequest(request) = sent(&out)[0] else {
        panic!()
    };
    assert_eq!(
        (request.guest_endpoint_id, request.host_service_id),
        (local, remote)
    );
    client
        .handle(Message::TlConnectResult(crate::messages::TlConnectResult {
            endpoint_id: local,
            service_id: remote,
            status: STATUS_CONNECTION_REFUSED,
        }))
        .unwrap();
    assert_eq!(
        events(&drain(&mut client)),
        [&Event::TlConnectRefused {
            endpoint_id: local,
            service_id: remote,
            status: STATUS_CONNECTION_REFUSED
        }]
    );
}

// Tests for the offered state.

#[test]
fn an_offer_is_reported_and_a_reused_relid_refused() {
    let mut client = connected();
    client.handle(Message::OfferChannel(offer(30))).unwrap();
    assert_eq!(events(&drain(&mut client)), [&Event::Offer(offer(30))]);
    assert_eq!(
        client.handle(Message::OfferChannel(offer(30))),
        Err(ClientError::RelidInUse(30))
    );
    assert_eq!(client.channel_count(), 1);
}

#[test]
fn refusing_an_offer_releases_its_relid_at_once() {
    let mut client = offered(30);
    client.close(30).unwrap();
    let out = drain(&mut client);
    assert!(matches!(
        sent(&out)[..],
        [Message::RelidReleased { child_relid: 30 }]
    ));
    assert_eq!(events(&out), [&Event::Released { relid: 30 }]);
    assert_eq!(client.channel_count(), 0);
}

#[test]
fn a_rescinded_offer_is_reported_then_released_on_close() {
    let mut client = offered(30);
    client
        .handle(Message::RescindChannelOffer { child_relid: 30 })
        .unwrap();
    assert_eq!(
        events(&drain(&mut client)),
        [&Event::Rescinded { relid: 30 }]
    );
    assert!(client.open(30, fd(), LAYOUT).is_err());
    client.close(30).unwrap();
    assert!(matches!(
        sent(&drain(&mut client))[..],
        [Message::RelidReleased { child_relid: 30 }]
    ));
}

// Tests for opening.

#[test]
fn open_sends_the_gpadl_with_the_memfd_then_openchannel_without_descriptors() {
    let mut client = offered(30);
    let memfd = fd();
    client.open(30, memfd.clone(), LAYOUT).unwrap();
    let out = drain(&mut client);
    let Output::Send {
        message: Message::GpadlHeader(header),
        fds,
    } = &out[0]
    else {
        panic!("{out:?}")
    };
    assert_eq!(out.len(), 1, "12 pages fit the header");
    assert!(Arc::ptr_eq(&fds[0], &memfd) && fds.len() == 1);
    assert_eq!(header.gpadl(), FIRST_LINUX_GPADL_HANDLE);
    assert_eq!(header.pfns(), (0..12).collect::<Vec<u64>>());
    assert_eq!(header.byte_count(), 12 * 4096);
    client
        .handle(Message::GpadlCreated {
            child_relid: 30,
            gpadl: header.gpadl(),
            creation_status: 0,
        })
        .unwrap();
    let out = drain(&mut client);
    let Output::Send {
        message: Message::OpenChannel(open),
        fds,
    } = &out[0]
    else {
        panic!("{out:?}")
    };
    assert!(
        fds.is_empty(),
        "signals travel over the link, not with OPENCHANNEL"
    );
    assert_eq!(open.downstream_ringbuffer_pageoffset, 6);
    assert_eq!(open.ringbuffer_gpadlhandle, header.gpadl());
    client
        .handle(Message::OpenChannelResult {
            child_relid: 30,
            openid: 30,
            status: 0,
        })
        .unwrap();
    expect_opened(&mut client, 30, 0);
}

#[test]
fn large_rings_need_gpadl_bodies_and_only_the_header_carries_the_fd() {
    let mut client = offered(7);
    let layout = RingLayout {
        total_pages: 128,
        guest_to_host_pages: 64,
    };
    client.open(7, fd(), layout).unwrap();
    let out = drain(&mut client);
    assert_eq!(out.len(), 1 + (128 - 26usize).div_ceil(28));
    for (i, o) in out.iter().enumerate() {
        let Output::Send { fds, .. } = o else {
            panic!()
        };
        assert_eq!(fds.len(), usize::from(i == 0));
    }
}

#[test]
fn a_layout_with_a_ring_of_one_page_is_refused() {
    let mut client = offered(7);
    let layout = RingLayout {
        total_pages: 3,
        guest_to_host_pages: 1,
    };
    assert!(matches!(
        client.open(7, fd(), layout),
        Err(ClientError::Layout(_))
    ));
}

#[test]
fn gpadl_answers_for_unknown_handles_or_channels_are_errors() {
    let mut client = offered(30);
    client.open(30, fd(), LAYOUT).unwrap();
    drain(&mut client);
    assert_eq!(
        client.handle(Message::GpadlCreated {
            child_relid: 30,
            gpadl: 99,
            creation_status: 0
        }),
        Err(ClientError::UnknownGpadl(99))
    );
    assert_eq!(
        client.handle(Message::GpadlCreated {
            child_relid: 31,
            gpadl: FIRST_LINUX_GPADL_HANDLE,
            creation_status: 0
        }),
        Err(ClientError::UnknownRelid(31))
    );
}

#[test]
fn a_failed_gpadl_is_reported_and_the_channel_can_be_closed() {
    let mut client = offered(30);
    client.open(30, fd(), LAYOUT).unwrap();
    drain(&mut client);
    client
        .handle(Message::GpadlCreated {
            child_relid: 30,
            gpadl: FIRST_LINUX_GPADL_HANDLE,
            creation_status: 0x8000_ffff,
        })
        .unwrap();
    expect_opened(&mut client, 30, 0x8000_ffff);
    client.close(30).unwrap();
    assert!(matches!(
        sent(&drain(&mut client))[..],
        [Message::RelidReleased { child_relid: 30 }]
    ));
}

/// A pipelined open of `relid` (12 pages): the sends, in order.
fn pipelined_open(relid: u32) -> (GuestClient, Vec<Output>) {
    let mut client = offered(relid);
    client.set_pipelined_open(true);
    client.open(relid, fd(), LAYOUT).unwrap();
    let out = drain(&mut client);
    (client, out)
}

fn gpadl_created(relid: u32, creation_status: u32) -> Message {
    Message::GpadlCreated {
        child_relid: relid,
        gpadl: FIRST_LINUX_GPADL_HANDLE,
        creation_status,
    }
}

fn open_result(relid: u32, status: u32) -> Message {
    Message::OpenChannelResult {
        child_relid: relid,
        openid: relid,
        status,
    }
}

/// The client's only output is the open's result.
#[track_caller]
fn expect_opened(client: &mut GuestClient, relid: u32, status: u32) {
    assert_eq!(events(&drain(client)), [&Event::Opened { relid, status }]);
}

#[test]
fn a_pipelined_open_sends_openchannel_right_behind_the_gpadl() {
    let (mut client, out) = pipelined_open(30);
    let [Message::GpadlHeader(header), Message::OpenChannel(open)] = &sent(&out)[..] else {
        panic!("{out:?}")
    };
    assert_eq!(open.ringbuffer_gpadlhandle, header.gpadl());
    assert_eq!(open.downstream_ringbuffer_pageoffset, 6);
    // The same OPENCHANNEL bytes as after GPADL_CREATED (the Linux order).
    let mut linux = offered(30);
    linux.open(30, fd(), LAYOUT).unwrap();
    drain(&mut linux);
    linux.handle(gpadl_created(30, 0)).unwrap();
    assert_eq!(sent(&drain(&mut linux)), [sent(&out)[1]]);

    // GPADL_CREATED comes first and is only noted; the result opens it.
    client.handle(gpadl_created(30, 0)).unwrap();
    assert!(drain(&mut client).is_empty());
    client.handle(open_result(30, 0)).unwrap();
    expect_opened(&mut client, 30, 0);
    // Open: closing tears the GPADL down.
    client.close(30).unwrap();
    assert!(matches!(
        sent(&drain(&mut client))[..],
        [
            Message::CloseChannel { child_relid: 30 },
            Message::GpadlTeardown {
                child_relid: 30,
                ..
            }
        ]
    ));
}

#[test]
fn a_pipelined_open_whose_gpadl_fails_reports_the_gpadl_status_once() {
    let (mut client, _) = pipelined_open(30);
    client.handle(gpadl_created(30, 0x8000_ffff)).unwrap();
    assert!(drain(&mut client).is_empty(), "the open's result is due");
    client.handle(open_result(30, 0xc000_0001)).unwrap();
    expect_opened(&mut client, 30, 0x8000_ffff);
    // No GPADL to tear down: only the relid goes back.
    client.close(30).unwrap();
    assert!(matches!(
        sent(&drain(&mut client))[..],
        [Message::RelidReleased { child_relid: 30 }]
    ));
}

#[test]
fn a_pipelined_open_rejects_answers_out_of_order_or_inconsistent() {
    // The result before GPADL_CREATED: the host broke its own order.
    let (mut client, _) = pipelined_open(30);
    assert!(client.handle(open_result(30, 0)).is_err());
    // A success for an open whose GPADL failed is an error, and the
    // channel is still reported failed.
    let (mut client, _) = pipelined_open(31);
    client.handle(gpadl_created(31, 0x8000_ffff)).unwrap();
    assert!(client.handle(open_result(31, 0)).is_err());
    expect_opened(&mut client, 31, 0x8000_ffff);
}

#[test]
fn closing_an_open_before_its_answers_waits_for_them_then_tears_down_what_exists() {
    // Both answers good: the channel opened, so CLOSECHANNEL and the
    // teardown, then the release after the rescind.
    let (mut client, _) = pipelined_open(30);
    client.close(30).unwrap();
    assert!(
        drain(&mut client).is_empty(),
        "nothing known to tear down yet"
    );
    client.handle(gpadl_created(30, 0)).unwrap();
    assert!(drain(&mut client).is_empty(), "the open's answer is due");
    client.handle(open_result(30, 0)).unwrap();
    let out = drain(&mut client);
    assert!(events(&out).is_empty());
    assert!(matches!(
        sent(&out)[..],
        [
            Message::CloseChannel { child_relid: 30 },
            Message::GpadlTeardown {
                child_relid: 30,
                ..
            }
        ]
    ));
    client
        .handle(Message::GpadlTorndown {
            gpadl: FIRST_LINUX_GPADL_HANDLE,
        })
        .unwrap();
    client
        .handle(Message::RescindChannelOffer { child_relid: 30 })
        .unwrap();
    assert_eq!(
        events(&drain(&mut client)),
        [&Event::Released { relid: 30 }]
    );
}

#[test]
fn closing_an_open_whose_gpadl_fails_gives_back_only_the_relid() {
    // Closed before the GPADL's answer, and closed after it: either way no
    // teardown of a GPADL the host never created, and the relid goes back
    // once the open's (failed) answer is in.
    for close_first in [true, false] {
        let (mut client, _) = pipelined_open(30);
        if close_first {
            client.close(30).unwrap();
        }
        client.handle(gpadl_created(30, 0x8000_ffff)).unwrap();
        if !close_first {
            client.close(30).unwrap();
        }
        assert!(drain(&mut client).is_empty(), "close_first {close_first}");
        client.handle(open_result(30, 0xc000_0001)).unwrap();
        let out = drain(&mut client);
        assert!(
            matches!(sent(&out)[..], [Message::RelidReleased { child_relid: 30 }]),
            "close_first {close_first}: {out:?}"
        );
        assert_eq!(events(&out), [&Event::Released { relid: 30 }]);
    }
}

#[test]
fn a_failed_open_tears_its_gpadl_down_and_is_released_without_a_rescind() {
    for pipelined in [false, true] {
        let mut client = offered(30);
        client.set_pipelined_open(pipelined);
        client.open(30, fd(), LAYOUT).unwrap();
        drain(&mut client);
        client.handle(gpadl_created(30, 0)).unwrap();
        drain(&mut client);
        client.handle(open_result(30, 0xc000_0001)).unwrap();
        expect_opened(&mut client, 30, 0xc000_0001);
        // A second answer is a protocol error and opens nothing.
        assert!(client.handle(open_result(30, 0)).is_err());
        assert!(drain(&mut client).is_empty());
        // Never opened: no CLOSECHANNEL, and the offer is refused as soon
        // as the GPADL is gone (the host may never rescind it).
        client.close(30).unwrap();
        assert!(matches!(
            sent(&drain(&mut client))[..],
            [Message::GpadlTeardown {
                child_relid: 30,
                ..
            }]
        ));
        client
            .handle(Message::GpadlTorndown {
                gpadl: FIRST_LINUX_GPADL_HANDLE,
            })
            .unwrap();
        let out = drain(&mut client);
        assert!(matches!(
            sent(&out)[..],
            [Message::RelidReleased { child_relid: 30 }]
        ));
        assert_eq!(events(&out), [&Event::Released { relid: 30 }]);
    }
}

#[test]
fn a_rescind_of_an_abandoned_open_releases_it_without_a_teardown() {
    let (mut client, _) = pipelined_open(30);
    client.close(30).unwrap();
    client
        .handle(Message::RescindChannelOffer { child_relid: 30 })
        .unwrap();
    let out = drain(&mut client);
    assert!(matches!(
        sent(&out)[..],
        [
            Message::CloseChannel { child_relid: 30 },
            Message::RelidReleased { child_relid: 30 }
        ]
    ));
    assert_eq!(events(&out), [&Event::Released { relid: 30 }]);
    // Answers the host sent before it saw the release name a relid we no
    // longer have: errors for the caller to log, nothing more.
    assert!(client.handle(gpadl_created(30, 0)).is_err());
    assert_eq!(client.channel_count(), 0);
}

#[test]
fn a_rescind_while_opening_is_reported() {
    let mut client = offered(30);
    client.open(30, fd(), LAYOUT).unwrap();
    drain(&mut client);
    client
        .handle(Message::RescindChannelOffer { child_relid: 30 })
        .unwrap();
    assert_eq!(
        events(&drain(&mut client)),
        [&Event::Rescinded { relid: 30 }]
    );
    client.close(30).unwrap();
    assert!(matches!(
        sent(&drain(&mut client))[..],
        [
            Message::CloseChannel { child_relid: 30 },
            Message::RelidReleased { child_relid: 30 }
        ]
    ));
}

// Tests for the open state and teardown.

#[test]
fn host_first_close_rescind_then_close_and_release() {
    let (mut client, _) = open(30);
    client
        .handle(Message::RescindChannelOffer { child_relid: 30 })
        .unwrap();
    assert_eq!(
        events(&drain(&mut client)),
        [&Event::Rescinded { relid: 30 }]
    );
    assert_eq!(
        client.handle(Message::RescindChannelOffer { child_relid: 30 }),
        Err(ClientError::Unexpected(
            crate::messages::MessageType::RESCIND_CHANNELOFFER
        )),
        "a second rescind"
    );
    client.close(30).unwrap();
    let out = drain(&mut client);
    assert!(matches!(
        sent(&out)[..],
        [
            Message::CloseChannel { child_relid: 30 },
            Message::RelidReleased { child_relid: 30 }
        ]
    ));
    assert_eq!(events(&out), [&Event::Released { relid: 30 }]);
}

#[test]
fn guest_first_close_tears_down_then_releases_after_torndown_and_rescind() {
    for torndown_first in [true, false] {
        let (mut client, gpadl) = open(30);
        client.close(30).unwrap();
        assert!(matches!(
            sent(&drain(&mut client))[..],
            [
                Message::CloseChannel { child_relid: 30 },
                Message::GpadlTeardown {
                    child_relid: 30,
                    ..
                }
            ]
        ));
        let torndown = Message::GpadlTorndown { gpadl };
        let rescind = Message::RescindChannelOffer { child_relid: 30 };
        let (a, b) = if torndown_first {
            (torndown, rescind)
        } else {
            (rescind, torndown)
        };
        client.handle(a).unwrap();
        assert!(drain(&mut client).is_empty(), "released only after both");
        client.handle(b).unwrap();
        let out = drain(&mut client);
        assert!(matches!(
            sent(&out)[..],
            [Message::RelidReleased { child_relid: 30 }]
        ));
        assert_eq!(events(&out), [&Event::Released { relid: 30 }]);
        assert_eq!(client.channel_count(), 0);
        // The relid may now be offered again.
        client.handle(Message::OfferChannel(offer(30))).unwrap();
    }
}

#[test]
fn unknown_relids_in_host_messages_are_errors_and_change_nothing() {
    let (mut client, _) = open(30);
    assert_eq!(
        client.handle(Message::RescindChannelOffer { child_relid: 31 }),
        Err(ClientError::UnknownRelid(31))
    );
    assert_eq!(
        client.handle(Message::GpadlTorndown { gpadl: 5 }),
        Err(ClientError::UnknownGpadl(5))
    );
    assert!(client
        .handle(Message::OpenChannelResult {
            child_relid: 30,
            openid: 30,
            status: 0
        })
        .is_err());
    assert_eq!(client.channel_count(), 1);
}
