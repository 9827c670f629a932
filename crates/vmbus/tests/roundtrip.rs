//! Property tests: every message value survives encode/decode, and decoding
//! arbitrary bytes never panics (and round-trips whatever it accepts).

use proptest::prelude::*;
use proptest::strategy::Union;
use vmbus::messages::*;

fn guid() -> impl Strategy<Value = Guid> {
    prop_oneof![
        any::<[u8; 16]>().prop_map(Guid::from_bytes),
        any::<u32>().prop_map(Guid::from_vsock_port),
    ]
}

fn area() -> impl Strategy<Value = [u8; USER_DEFINED_SIZE]> {
    prop::collection::vec(any::<u8>(), USER_DEFINED_SIZE).prop_map(|v| {
        let mut a = [0u8; USER_DEFINED_SIZE];
        a.copy_from_slice(&v);
        a
    })
}

fn offer() -> impl Strategy<Value = OfferChannel> {
    (
        (guid(), guid(), any::<u16>(), any::<u16>(), area()),
        (
            any::<u16>(),
            any::<u32>(),
            any::<u8>(),
            any::<bool>(),
            any::<bool>(),
            any::<u32>(),
        ),
    )
        .prop_map(
            |(
                (if_type, if_instance, chn_flags, mmio_megabytes, user_defined),
                (sub_channel_index, child_relid, monitor_id, monitor_allocated, dedicated, conn),
            )| OfferChannel {
                if_type,
                if_instance,
                chn_flags,
                mmio_megabytes,
                user_defined,
                sub_channel_index,
                child_relid,
                monitor_id,
                monitor_allocated,
                is_dedicated_interrupt: dedicated,
                connection_id: conn,
            },
        )
}

fn open() -> impl Strategy<Value = OpenChannel> {
    (
        any::<[u32; 5]>(),
        area(),
        prop::option::of(any::<(u32, u16, u16)>()),
    )
        .prop_map(|(w, userdata, signal)| OpenChannel {
            child_relid: w[0],
            openid: w[1],
            ringbuffer_gpadlhandle: w[2],
            target_vp: w[3],
            downstream_ringbuffer_pageoffset: w[4],
            userdata,
            guest_signal: signal.map(
                |(connection_id, event_flag, flags)| OpenChannelGuestSignal {
                    connection_id,
                    event_flag,
                    flags,
                },
            ),
        })
}

/// A consistent GPADL_HEADER: 1..=8190 pages, a byte range ending in the
/// last page.
fn gpadl_header() -> impl Strategy<Value = GpadlHeader> {
    (1usize..=GPADL_MAX_PAGES, 0u32..4096)
        .prop_flat_map(|(pages, offset)| {
            let end_max = (pages * PAGE_SIZE) as u32;
            let end_min = ((pages - 1) * PAGE_SIZE) as u32 + 1;
            let lo = end_min.max(offset + 1) - offset;
            let hi = end_max - offset;
            (
                Just(pages),
                Just(offset),
                lo..=hi,
                any::<(u32, u32)>(),
                prop::collection::vec(any::<u64>(), pages.min(GPADL_HEADER_MAX_PFNS)),
            )
        })
        .prop_map(|(pages, offset, count, (relid, handle), pfns)| {
            GpadlHeader::new(relid, handle, (8 + 8 * pages) as u16, count, offset, pfns)
                .expect("strategy builds consistent headers")
        })
}

fn gpadl_body() -> impl Strategy<Value = GpadlBody> {
    (
        any::<(u32, u32)>(),
        prop::collection::vec(any::<u64>(), 1..=GPADL_BODY_MAX_PFNS),
    )
        .prop_map(|((n, handle), pfns)| GpadlBody::new(n, handle, pfns).expect("1..=28 pages"))
}

fn version_ext() -> impl Strategy<Value = VersionResponseExt> {
    prop_oneof![
        Just(VersionResponseExt::None),
        any::<u32>().prop_map(|f| VersionResponseExt::Features {
            supported_features: f
        }),
        any::<(u32, u64, u64)>().prop_map(|(f, a, b)| {
            VersionResponseExt::FeaturesAndMonitorPages {
                supported_features: f,
                parent_to_child_monitor_page_gpa: a,
                child_to_parent_monitor_page_gpa: b,
            }
        }),
    ]
}

fn message() -> impl Strategy<Value = Message> {
    Union::new(vec![
        offer().prop_map(Message::OfferChannel).boxed(),
        any::<u32>()
            .prop_map(|child_relid| Message::RescindChannelOffer { child_relid })
            .boxed(),
        Just(Message::RequestOffers).boxed(),
        Just(Message::AllOffersDelivered).boxed(),
        open().prop_map(Message::OpenChannel).boxed(),
        any::<(u32, u32, u32)>()
            .prop_map(|(child_relid, openid, status)| Message::OpenChannelResult {
                child_relid,
                openid,
                status,
            })
            .boxed(),
        any::<u32>()
            .prop_map(|child_relid| Message::CloseChannel { child_relid })
            .boxed(),
        gpadl_header().prop_map(Message::GpadlHeader).boxed(),
        gpadl_body().prop_map(Message::GpadlBody).boxed(),
        any::<(u32, u32, u32)>()
            .prop_map(
                |(child_relid, gpadl, creation_status)| Message::GpadlCreated {
                    child_relid,
                    gpadl,
                    creation_status,
                },
            )
            .boxed(),
        any::<(u32, u32)>()
            .prop_map(|(child_relid, gpadl)| Message::GpadlTeardown { child_relid, gpadl })
            .boxed(),
        any::<u32>()
            .prop_map(|gpadl| Message::GpadlTorndown { gpadl })
            .boxed(),
        any::<u32>()
            .prop_map(|child_relid| Message::RelidReleased { child_relid })
            .boxed(),
        (any::<(u32, u32, u64, u64, u64)>(), prop::option::of(guid()))
            .prop_map(|((v, vp, info, m1, m2), client_id)| {
                Message::InitiateContact(InitiateContact {
                    vmbus_version_requested: v,
                    target_vcpu: vp,
                    interrupt_page_or_target_info: info,
                    parent_to_child_monitor_page_gpa: m1,
                    child_to_parent_monitor_page_gpa: m2,
                    client_id,
                })
            })
            .boxed(),
        (any::<(bool, u8, u32)>(), version_ext())
            .prop_map(|((ok, state, id), ext)| {
                Message::VersionResponse(VersionResponse {
                    version_supported: ok,
                    connection_state: state,
                    msg_conn_id: id,
                    ext,
                })
            })
            .boxed(),
        Just(Message::Unload).boxed(),
        Just(Message::UnloadResponse).boxed(),
        (guid(), guid(), prop::option::of(guid()))
            .prop_map(|(guest_endpoint_id, host_service_id, silo_id)| {
                Message::TlConnectRequest(TlConnectRequest {
                    guest_endpoint_id,
                    host_service_id,
                    silo_id,
                })
            })
            .boxed(),
        (guid(), guid(), any::<u32>())
            .prop_map(|(endpoint_id, service_id, status)| {
                Message::TlConnectResult(TlConnectResult {
                    endpoint_id,
                    service_id,
                    status,
                })
            })
            .boxed(),
    ])
}

/// Bytes that often look like a message: a known-ish type word, a length
/// that is often valid, random contents.
fn plausible_bytes() -> impl Strategy<Value = Vec<u8>> {
    let lens = prop_oneof![
        Just(8usize),
        Just(12),
        Just(16),
        Just(20),
        Just(40),
        Just(44),
        Just(56),
        Just(148),
        Just(156),
        Just(196),
        (0usize..=26).prop_map(|n| 28 + 8 * n),
        (0usize..=28).prop_map(|n| 16 + 8 * n),
        0usize..=300,
    ];
    (0u32..=31, lens).prop_flat_map(|(ty, len)| {
        prop::collection::vec(any::<u8>(), len).prop_map(move |mut v| {
            if v.len() >= 4 {
                v[..4].copy_from_slice(&ty.to_le_bytes());
            }
            v
        })
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2048))]

    #[test]
    fn encode_then_decode_is_identity(m in message()) {
        let bytes = m.encode();
        prop_assert!(bytes.len() <= MAX_MESSAGE_SIZE);
        prop_assert_eq!(bytes.len(), m.encoded_len());
        prop_assert_eq!(&bytes[..4], &m.message_type().0.to_le_bytes()[..]);
        prop_assert_eq!(&bytes[4..8], &[0u8; 4][..]);
        prop_assert_eq!(Message::decode(&bytes), Ok(m));
    }

    #[test]
    fn decode_arbitrary_bytes_never_panics(data in prop::collection::vec(any::<u8>(), 0..=300)) {
        vmbus::fuzzing::decode_message(&data);
        if data.len() > MAX_MESSAGE_SIZE {
            prop_assert_eq!(Message::decode(&data), Err(DecodeError::TooLong { len: data.len() }));
        }
    }

    #[test]
    fn decode_plausible_bytes_round_trips(data in plausible_bytes()) {
        vmbus::fuzzing::decode_message(&data);
    }

    #[test]
    fn guid_text_round_trip(bytes in any::<[u8; 16]>()) {
        let g = Guid::from_bytes(bytes);
        let text = g.to_string();
        prop_assert_eq!(text.len(), 36);
        prop_assert_eq!(text.parse::<Guid>(), Ok(g));
        prop_assert_eq!(text.to_uppercase().parse::<Guid>(), Ok(g));
    }

    #[test]
    fn guid_parse_never_panics(s in "\\PC{0,40}") {
        let _ = s.parse::<Guid>();
    }

    #[test]
    fn vsock_port_round_trip(port in any::<u32>()) {
        prop_assert_eq!(Guid::from_vsock_port(port).vsock_port(), Some(port));
    }
}
