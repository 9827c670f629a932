//! Golden vectors of PROTOCOL.md 4.4, 7.5, 7.6, 7.7 and 7.8: every message is
//! encoded to exactly the documented bytes and those bytes decode to it.

use vmbus::messages::*;

/// Parses a hex dump row ("15 00 00 ...") into bytes.
fn hex(text: &str) -> Vec<u8> {
    text.split_whitespace()
        .map(|b| u8::from_str_radix(b, 16).expect("hex byte"))
        .collect()
}

/// A `len`-byte message, zero except for the dump rows given as
/// `(offset, "hex bytes")`.
fn dump(len: usize, rows: &[(usize, &str)]) -> Vec<u8> {
    let mut out = vec![0u8; len];
    for &(off, row) in rows {
        let bytes = hex(row);
        out[off..off + bytes.len()].copy_from_slice(&bytes);
    }
    out
}

#[track_caller]
fn assert_golden(message: &Message, bytes: &[u8]) {
    assert_eq!(message.encode(), bytes, "encoding of {message:?}");
    assert_eq!(message.encoded_len(), bytes.len());
    assert_eq!(Message::decode(bytes).as_ref(), Ok(message));
    let mut buf = [0xAAu8; MAX_MESSAGE_SIZE];
    let len = message.encode_into(&mut buf);
    assert_eq!(&buf[..len], bytes, "encode_into must zero padding");
}

fn g(text: &str) -> Guid {
    text.parse().expect("GUID text")
}

// ---- 7.5 and 4.4: GUIDs -------------------------------------------------

#[test]
fn vector_e_port_to_guid() {
    let cases = [
        (
            0x1234,
            "00001234-facb-11e6-bd58-64006a7986d3",
            "34 12 00 00 cb fa e6 11 bd 58 64 00 6a 79 86 d3",
        ),
        (
            1024,
            "00000400-facb-11e6-bd58-64006a7986d3",
            "00 04 00 00 cb fa e6 11 bd 58 64 00 6a 79 86 d3",
        ),
        (
            0x7FFF_FFFF,
            "7fffffff-facb-11e6-bd58-64006a7986d3",
            "ff ff ff 7f cb fa e6 11 bd 58 64 00 6a 79 86 d3",
        ),
    ];
    for (port, text, wire) in cases {
        let guid = Guid::from_vsock_port(port);
        assert_eq!(guid.as_bytes().to_vec(), hex(wire), "port {port:#x}");
        assert_eq!(guid.to_string(), text);
        assert_eq!(g(text), guid);
        assert_eq!(guid.vsock_port(), Some(port));
    }
}

#[test]
fn well_known_guids_wire_bytes() {
    let cases = [
        (
            Guid::ZERO,
            "00000000-0000-0000-0000-000000000000",
            "00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00",
        ),
        (
            Guid::WILDCARD,
            "00000000-0000-0000-0000-000000000000",
            "00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00",
        ),
        (
            Guid::BROADCAST,
            "ffffffff-ffff-ffff-ffff-ffffffffffff",
            "ff ff ff ff ff ff ff ff ff ff ff ff ff ff ff ff",
        ),
        (
            Guid::CHILDREN,
            "90db8b89-0d35-4f79-8ce9-49ea0ac8b7cd",
            "89 8b db 90 35 0d 79 4f 8c e9 49 ea 0a c8 b7 cd",
        ),
        (
            Guid::LOOPBACK,
            "e0e16197-dd56-4a10-9195-5ee7a155a838",
            "97 61 e1 e0 56 dd 10 4a 91 95 5e e7 a1 55 a8 38",
        ),
        (
            Guid::PARENT,
            "a42e7cda-d03f-480c-9cc2-a4de20abb878",
            "da 7c 2e a4 3f d0 0c 48 9c c2 a4 de 20 ab b8 78",
        ),
        (
            Guid::SILOHOST,
            "36bd0c5c-7276-4223-88ba-7d03b654c568",
            "5c 0c bd 36 76 72 23 42 88 ba 7d 03 b6 54 c5 68",
        ),
        (
            Guid::VSOCK_TEMPLATE,
            "00000000-facb-11e6-bd58-64006a7986d3",
            "00 00 00 00 cb fa e6 11 bd 58 64 00 6a 79 86 d3",
        ),
    ];
    for (guid, text, wire) in cases {
        assert_eq!(guid.as_bytes().to_vec(), hex(wire), "{text}");
        assert_eq!(guid.to_string(), text);
        assert_eq!(g(text), guid);
    }
    assert_eq!(Guid::PARENT.vsock_port(), None);
    assert_eq!(Guid::ZERO.vsock_port(), None);
}

// ---- 7.6: TL connect ----------------------------------------------------

fn vector_f_bytes() -> Vec<u8> {
    dump(
        40,
        &[
            (0x00, "15 00 00 00 00 00 00 00 01 04 00 00 cb fa e6 11"),
            (0x10, "bd 58 64 00 6a 79 86 d3 34 12 00 00 cb fa e6 11"),
            (0x20, "bd 58 64 00 6a 79 86 d3"),
        ],
    )
}

#[test]
fn vector_f_tl_connect_request() {
    let request = TlConnectRequest {
        guest_endpoint_id: Guid::from_vsock_port(0x401),
        host_service_id: Guid::from_vsock_port(0x1234),
        silo_id: None,
    };
    assert_golden(&Message::TlConnectRequest(request), &vector_f_bytes());
}

#[test]
fn vector_f_tl_connect_request_with_silo_id() {
    let mut bytes = vector_f_bytes();
    bytes.extend_from_slice(&[0u8; 16]);
    assert_eq!(bytes.len(), 56);
    let request = TlConnectRequest {
        guest_endpoint_id: Guid::from_vsock_port(0x401),
        host_service_id: Guid::from_vsock_port(0x1234),
        silo_id: Some(Guid::ZERO),
    };
    assert_golden(&Message::TlConnectRequest(request), &bytes);
}

#[test]
fn vector_f_tl_connect_result_refused() {
    let bytes = dump(
        44,
        &[
            (0x00, "17 00 00 00 00 00 00 00 01 04 00 00 cb fa e6 11"),
            (0x10, "bd 58 64 00 6a 79 86 d3 34 12 00 00 cb fa e6 11"),
            (0x20, "bd 58 64 00 6a 79 86 d3 36 02 00 c0"),
        ],
    );
    let result = TlConnectResult {
        endpoint_id: Guid::from_vsock_port(0x401),
        service_id: Guid::from_vsock_port(0x1234),
        status: STATUS_CONNECTION_REFUSED,
    };
    assert_golden(&Message::TlConnectResult(result), &bytes);
}

// ---- 7.7: OFFERCHANNEL --------------------------------------------------

fn vector_g_bytes() -> Vec<u8> {
    dump(
        196,
        &[
            (0x00, "01 00 00 00 00 00 00 00 34 12 00 00 cb fa e6 11"),
            (0x10, "bd 58 64 00 6a 79 86 d3 e0 04 25 3f 89 4f d3 11"),
            (0x20, "9a 0c 03 05 e8 2c 33 01 00 00 00 00 00 00 00 00"),
            (0x30, "00 00 00 00 00 00 00 00 11 20 00 00 00 00 00 00"),
            (0x40, "01 00 01 00 00 00 00 00 00 00 00 00 00 00 00 00"),
            (0x50, "00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00"),
            (0xb0, "00 00 00 00 00 00 00 00 1e 00 00 00 ff 00 01 00"),
            (0xc0, "1e 20 00 00"),
        ],
    )
}

fn vector_g2_bytes() -> Vec<u8> {
    dump(
        196,
        &[
            (0x00, "01 00 00 00 00 00 00 00 34 12 00 00 cb fa e6 11"),
            (0x10, "bd 58 64 00 6a 79 86 d3 01 04 00 00 cb fa e6 11"),
            (0x20, "bd 58 64 00 6a 79 86 d3 00 00 00 00 00 00 00 00"),
            (0x30, "00 00 00 00 00 00 00 00 11 20 00 00 00 00 00 00"),
            (0x40, "00 00 01 00 00 00 00 00 00 00 00 00 00 00 00 00"),
            (0xb0, "00 00 00 00 00 00 00 00 1f 00 00 00 ff 00 01 00"),
            (0xc0, "1f 20 00 00"),
        ],
    )
}

fn hvsock_params(is_for_guest_accept: bool) -> HvsockParams {
    HvsockParams {
        pipe_mode: PIPE_MODE_BYTE,
        is_for_guest_accept,
        is_for_guest_container: false,
        version: HVSOCK_PARAMS_VERSION_RS5,
        silo_id: Guid::ZERO,
    }
}

#[test]
fn vector_g_offer_host_initiated() {
    let host_endpoint = g("3f2504e0-4f89-11d3-9a0c-0305e82c3301");
    let mut user_defined = [0u8; USER_DEFINED_SIZE];
    user_defined[4] = 1; // is_for_guest_accept
    user_defined[6] = 1; // params version 1
    let offer = OfferChannel {
        if_type: Guid::from_vsock_port(0x1234),
        if_instance: host_endpoint,
        chn_flags: 0x2011,
        mmio_megabytes: 0,
        user_defined,
        sub_channel_index: 0,
        child_relid: 30,
        monitor_id: 0xFF,
        monitor_allocated: false,
        is_dedicated_interrupt: true,
        connection_id: 0x201E,
    };
    let bytes = vector_g_bytes();
    assert_golden(&Message::OfferChannel(offer.clone()), &bytes);

    // The convenience constructor builds the same offer.
    let built = OfferChannel::hvsock(
        30,
        Guid::from_vsock_port(0x1234),
        host_endpoint,
        &hvsock_params(true),
    );
    assert_eq!(built, offer);

    // Guest interpretation (PROTOCOL.md 7.7).
    assert!(offer.is_hvsock());
    assert_eq!(offer.if_type.vsock_port(), Some(0x1234));
    assert_eq!(offer.if_instance.data1(), 0x3F25_04E0);
    assert_eq!(offer.hvsock_params(), Some(hvsock_params(true)));
    assert_eq!(bytes[0x40], 1);
}

#[test]
fn vector_g2_offer_guest_initiated() {
    let offer = OfferChannel::hvsock(
        31,
        Guid::from_vsock_port(0x1234),
        Guid::from_vsock_port(0x401),
        &hvsock_params(false),
    );
    assert_golden(&Message::OfferChannel(offer.clone()), &vector_g2_bytes());
    assert_eq!(offer.connection_id, 0x201F);
    let params = offer.hvsock_params().expect("hv_sock offer");
    assert!(!params.is_for_guest_accept);
}

#[test]
fn offer_without_tlnpi_flag_has_no_hvsock_params() {
    let mut bytes = vector_g_bytes();
    bytes[0x39] = 0x00; // chn_flags 0x0011
    let Ok(Message::OfferChannel(offer)) = Message::decode(&bytes) else {
        panic!("offer must decode");
    };
    assert_eq!(offer.chn_flags, 0x0011);
    assert_eq!(offer.hvsock_params(), None);
    // The user-defined area is kept raw.
    assert_eq!(offer.user_defined[..8], [0, 0, 0, 0, 1, 0, 1, 0]);
}

// ---- 7.8: channel setup and teardown ------------------------------------

#[test]
fn vector_gpadl_header_12_pages() {
    let bytes = dump(
        124,
        &[
            (0x00, "08 00 00 00 00 00 00 00 1e 00 00 00 10 1e 0e 00"),
            (0x10, "68 00 01 00 00 c0 00 00 00 00 00 00 00 10 00 00"),
            (0x20, "00 00 00 00 01 10 00 00 00 00 00 00 02 10 00 00"),
            (0x30, "00 00 00 00 03 10 00 00 00 00 00 00 04 10 00 00"),
            (0x40, "00 00 00 00 05 10 00 00 00 00 00 00 06 10 00 00"),
            (0x50, "00 00 00 00 07 10 00 00 00 00 00 00 08 10 00 00"),
            (0x60, "00 00 00 00 09 10 00 00 00 00 00 00 0a 10 00 00"),
            (0x70, "00 00 00 00 0b 10 00 00 00 00 00 00"),
        ],
    );
    let pfns: Vec<u64> = (0x1000..0x100C).collect();
    let header = GpadlHeader::new(30, 0xE1E10, 104, 49152, 0, pfns.clone()).expect("valid");
    assert_golden(&Message::GpadlHeader(header.clone()), &bytes);
    assert_eq!(header.rangecount(), 1);
    assert_eq!(header.total_pages(), 12);
    assert!(!header.needs_body());

    // The split helper produces exactly this header and no body.
    let gpadl = Gpadl::ring(30, FIRST_LINUX_GPADL_HANDLE, pfns);
    let (split_header, bodies) = gpadl.split().expect("valid GPADL");
    assert_eq!(split_header, header);
    assert!(bodies.is_empty());
}

#[test]
fn vector_gpadl_created() {
    assert_golden(
        &Message::GpadlCreated {
            child_relid: 30,
            gpadl: 0xE1E10,
            creation_status: STATUS_SUCCESS,
        },
        &hex("0a 00 00 00 00 00 00 00 1e 00 00 00 10 1e 0e 00 00 00 00 00"),
    );
}

#[test]
fn vector_openchannel() {
    let bytes = dump(
        148,
        &[(
            0,
            "05 00 00 00 00 00 00 00 1e 00 00 00 1e 00 00 00 10 1e 0e 00 00 00 00 00 06 00 00 00",
        )],
    );
    let open = OpenChannel {
        child_relid: 30,
        openid: 30,
        ringbuffer_gpadlhandle: 0xE1E10,
        target_vp: 0,
        downstream_ringbuffer_pageoffset: 6,
        userdata: [0; USER_DEFINED_SIZE],
        guest_signal: None,
    };
    assert_golden(&Message::OpenChannel(open), &bytes);
}

#[test]
fn openchannel_156_byte_form() {
    let mut bytes = dump(
        156,
        &[(
            0,
            "05 00 00 00 00 00 00 00 1e 00 00 00 1e 00 00 00 10 1e 0e 00 00 00 00 00 06 00 00 00",
        )],
    );
    bytes[148..156].copy_from_slice(&hex("1e 20 00 00 05 00 01 00"));
    let open = OpenChannel {
        child_relid: 30,
        openid: 30,
        ringbuffer_gpadlhandle: 0xE1E10,
        target_vp: 0,
        downstream_ringbuffer_pageoffset: 6,
        userdata: [0; USER_DEFINED_SIZE],
        guest_signal: Some(OpenChannelGuestSignal {
            connection_id: 0x201E,
            event_flag: 5,
            flags: 1,
        }),
    };
    assert_golden(&Message::OpenChannel(open), &bytes);
}

#[test]
fn vector_openchannel_result() {
    assert_golden(
        &Message::OpenChannelResult {
            child_relid: 30,
            openid: 30,
            status: STATUS_SUCCESS,
        },
        &hex("06 00 00 00 00 00 00 00 1e 00 00 00 1e 00 00 00 00 00 00 00"),
    );
}

#[test]
fn vector_rescind_close_teardown_torndown_released() {
    assert_golden(
        &Message::RescindChannelOffer { child_relid: 30 },
        &hex("02 00 00 00 00 00 00 00 1e 00 00 00"),
    );
    assert_golden(
        &Message::CloseChannel { child_relid: 30 },
        &hex("07 00 00 00 00 00 00 00 1e 00 00 00"),
    );
    assert_golden(
        &Message::GpadlTeardown {
            child_relid: 30,
            gpadl: 0xE1E10,
        },
        &hex("0b 00 00 00 00 00 00 00 1e 00 00 00 10 1e 0e 00"),
    );
    assert_golden(
        &Message::GpadlTorndown { gpadl: 0xE1E10 },
        &hex("0c 00 00 00 00 00 00 00 10 1e 0e 00"),
    );
    assert_golden(
        &Message::RelidReleased { child_relid: 30 },
        &hex("0d 00 00 00 00 00 00 00 1e 00 00 00"),
    );
}

// ---- bring-up messages (layouts of PROTOCOL.md 5.5, no published dump) --

#[test]
fn header_only_messages() {
    assert_golden(&Message::RequestOffers, &hex("03 00 00 00 00 00 00 00"));
    assert_golden(
        &Message::AllOffersDelivered,
        &hex("04 00 00 00 00 00 00 00"),
    );
    assert_golden(&Message::Unload, &hex("10 00 00 00 00 00 00 00"));
    assert_golden(&Message::UnloadResponse, &hex("11 00 00 00 00 00 00 00"));
}

#[test]
fn initiate_contact_layout() {
    let contact = InitiateContact {
        vmbus_version_requested: VERSION_WIN10_V5_3,
        target_vcpu: 1,
        interrupt_page_or_target_info: InitiateContact::target_info(MESSAGE_SINT, 0, 0),
        parent_to_child_monitor_page_gpa: 0x1_2345_6000,
        child_to_parent_monitor_page_gpa: 0x7000,
        client_id: None,
    };
    let bytes = dump(
        40,
        &[
            (0x00, "0e 00 00 00 00 00 00 00 03 00 05 00 01 00 00 00"),
            (0x10, "02 00 00 00 00 00 00 00 00 60 45 23 01 00 00 00"),
            (0x20, "00 70 00 00 00 00 00 00"),
        ],
    );
    assert_golden(&Message::InitiateContact(contact), &bytes);
    assert_eq!(contact.message_sint(), 2);
    assert_eq!(contact.vtl(), 0);

    let with_id = InitiateContact {
        vmbus_version_requested: VERSION_COPPER,
        interrupt_page_or_target_info: InitiateContact::target_info(2, 1, 0xA5),
        client_id: Some(Guid::PARENT),
        ..contact
    };
    let mut bytes = bytes;
    bytes[8..12].copy_from_slice(&hex("00 00 06 00"));
    bytes[16..24].copy_from_slice(&hex("02 01 00 00 a5 00 00 00"));
    bytes.extend_from_slice(Guid::PARENT.as_bytes());
    assert_golden(&Message::InitiateContact(with_id), &bytes);
    assert_eq!(with_id.vtl(), 1);
    assert_eq!(with_id.feature_flags(), 0xA5);
}

#[test]
fn version_response_layouts() {
    let base = VersionResponse {
        version_supported: true,
        connection_state: CONNECTION_STATE_SUCCESSFUL,
        msg_conn_id: 4,
        ext: VersionResponseExt::None,
    };
    assert_golden(
        &Message::VersionResponse(base),
        &hex("0f 00 00 00 00 00 00 00 01 00 00 00 04 00 00 00"),
    );
    let features = VersionResponse {
        ext: VersionResponseExt::Features {
            supported_features: 0x11,
        },
        ..base
    };
    assert_golden(
        &Message::VersionResponse(features),
        &hex("0f 00 00 00 00 00 00 00 01 00 00 00 04 00 00 00 11 00 00 00"),
    );
    let monitor = VersionResponse {
        ext: VersionResponseExt::FeaturesAndMonitorPages {
            supported_features: 0x11,
            parent_to_child_monitor_page_gpa: 0x8000,
            child_to_parent_monitor_page_gpa: 0x9000,
        },
        ..base
    };
    assert_golden(
        &Message::VersionResponse(monitor),
        &dump(
            40,
            &[
                (0x00, "0f 00 00 00 00 00 00 00 01 00 00 00 04 00 00 00"),
                (0x10, "11 00 00 00 00 00 00 00 00 80 00 00 00 00 00 00"),
                (0x20, "00 90 00 00 00 00 00 00"),
            ],
        ),
    );
}
