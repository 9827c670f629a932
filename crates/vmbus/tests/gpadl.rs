//! GPADL splitting and reassembly, and the typed errors for inconsistent
//! GPADL input (PROTOCOL.md 5.5).

use proptest::prelude::*;
use vmbus::messages::*;

fn ring(pages: u64) -> Gpadl {
    Gpadl::ring(
        30,
        FIRST_LINUX_GPADL_HANDLE,
        (0x1000..0x1000 + pages).collect(),
    )
}

/// Feeds messages through encode/decode into `asm`; returns the completed
/// GPADL and asserts it completes exactly on the last message.
#[track_caller]
fn assemble(asm: &mut GpadlAssembler, messages: &[Message]) -> Gpadl {
    let mut done = None;
    for (i, m) in messages.iter().enumerate() {
        let wire = m.encode();
        assert!(wire.len() <= MAX_MESSAGE_SIZE);
        let decoded = Message::decode(&wire).expect("split messages decode");
        let out = asm.feed(&decoded).expect("split messages assemble");
        assert_eq!(out.is_some(), i + 1 == messages.len(), "message {i}");
        done = done.or(out);
    }
    done.expect("complete")
}

#[test]
fn split_and_assemble_1_to_200_pages() {
    for pages in 1..=200u64 {
        let gpadl = ring(pages);
        let messages = gpadl.to_messages().expect("valid");
        let n = pages as usize;
        let bodies = n.saturating_sub(26).div_ceil(28);
        assert_eq!(messages.len(), 1 + bodies, "{pages} pages");
        let Message::GpadlHeader(h) = &messages[0] else {
            panic!("header first");
        };
        assert_eq!(h.pfns().len(), n.min(26));
        assert_eq!(usize::from(h.range_buflen()), 8 + 8 * n);
        assert_eq!(h.byte_count() as usize, n * 4096);
        for (j, m) in messages[1..].iter().enumerate() {
            let Message::GpadlBody(b) = m else {
                panic!("bodies after the header");
            };
            let expect = if j + 1 < bodies {
                28
            } else {
                (n - 26) - 28 * j
            };
            assert_eq!(b.pfns().len(), expect);
            assert_eq!(b.gpadl(), FIRST_LINUX_GPADL_HANDLE);
            assert_eq!(b.msgnumber(), 0);
        }
        let mut asm = GpadlAssembler::new();
        assert_eq!(assemble(&mut asm, &messages), gpadl);
        assert_eq!(asm.in_progress(), 0);
    }
}

#[test]
fn largest_gpadl_splits_and_assembles() {
    let gpadl = ring(GPADL_MAX_PAGES as u64);
    let messages = gpadl.to_messages().expect("8190 pages fit");
    assert_eq!(messages.len(), 1 + (GPADL_MAX_PAGES - 26).div_ceil(28));
    assert_eq!(assemble(&mut GpadlAssembler::new(), &messages), gpadl);
    assert_eq!(
        ring(GPADL_MAX_PAGES as u64 + 1).split(),
        Err(GpadlError::PageCount { pages: 8191 })
    );
}

#[test]
fn split_rejects_bad_gpadls() {
    assert_eq!(ring(0).split(), Err(GpadlError::PageCount { pages: 0 }));
    let mut zero = ring(3);
    zero.gpadl = 0;
    assert_eq!(zero.split(), Err(GpadlError::ZeroHandle));
    let mut short = ring(3);
    short.byte_count = 4096; // ends in page 1 of 3
    assert_eq!(
        short.split(),
        Err(GpadlError::Field(FieldError::ByteRange {
            byte_offset: 0,
            byte_count: 4096,
            pages: 3
        }))
    );
    let mut offset = ring(2);
    offset.byte_offset = 4096;
    offset.byte_count = 4096;
    assert!(matches!(
        offset.split(),
        Err(GpadlError::Field(FieldError::ByteRange { .. }))
    ));
    // A range may start inside the first page and end inside the last one.
    let mut partial = ring(2);
    partial.byte_offset = 100;
    partial.byte_count = 4000;
    let messages = partial.to_messages().expect("valid");
    assert_eq!(assemble(&mut GpadlAssembler::new(), &messages), partial);
}

#[test]
fn interleaved_gpadls_assemble_independently() {
    let a = ring(60);
    let mut b = Gpadl::ring(
        31,
        FIRST_LINUX_GPADL_HANDLE + 1,
        (0x9000..0x9000 + 90).collect(),
    );
    b.byte_count -= 10;
    let ma = a.to_messages().unwrap();
    let mb = b.to_messages().unwrap();
    let mut asm = GpadlAssembler::new();
    let mut done = Vec::new();
    for i in 0..ma.len().max(mb.len()) {
        for m in [ma.get(i), mb.get(i)].into_iter().flatten() {
            if let Some(g) = asm.feed(m).unwrap() {
                done.push(g);
            }
        }
    }
    assert_eq!(done, vec![a, b]);
    assert_eq!(asm.in_progress(), 0);
}

#[test]
fn assembler_rejects_inconsistent_input() {
    let (header, bodies) = ring(60).split().unwrap(); // 26 + 28 + 6
    assert_eq!(bodies.len(), 2);
    let handle = FIRST_LINUX_GPADL_HANDLE;

    // A body before any header.
    let mut asm = GpadlAssembler::new();
    assert_eq!(
        asm.body(&bodies[0]),
        Err(GpadlError::UnknownHandle { gpadl: handle })
    );

    // A second header for a handle in progress; the first is kept.
    assert_eq!(asm.header(&header), Ok(None));
    assert_eq!(
        asm.header(&header),
        Err(GpadlError::DuplicateHandle { gpadl: handle })
    );
    assert!(asm.is_in_progress(handle));

    // More pages than range_buflen announced: 26 + 28 + 28 > 60.
    assert_eq!(asm.body(&bodies[0]), Ok(None));
    assert_eq!(
        asm.body(&bodies[0]),
        Err(GpadlError::TooManyPages {
            gpadl: handle,
            expected: 60,
            received: 82
        })
    );
    assert!(
        !asm.is_in_progress(handle),
        "an overflowing GPADL is dropped"
    );
    assert_eq!(
        asm.body(&bodies[1]),
        Err(GpadlError::UnknownHandle { gpadl: handle })
    );

    // Handle 0.
    let h0 = GpadlHeader::new(30, 0, 8 + 8 * 30, 30 * 4096, 0, (0..26).collect()).unwrap();
    assert_eq!(asm.header(&h0), Err(GpadlError::ZeroHandle));

    // Cancel.
    assert_eq!(asm.header(&header), Ok(None));
    assert!(asm.cancel(handle));
    assert!(!asm.cancel(handle));
    assert_eq!(
        asm.body(&bodies[0]),
        Err(GpadlError::UnknownHandle { gpadl: handle })
    );
    assert_eq!(asm.header(&header), Ok(None));
    assert_eq!(asm.cancel_channel(30), 1);
    assert_eq!(asm.in_progress(), 0);
}

#[test]
fn assembler_limits_gpadls_in_progress() {
    let mut asm = GpadlAssembler::with_limit(2);
    for handle in 1..=2u32 {
        let (h, _) = Gpadl::ring(1, handle, (0..40).collect()).split().unwrap();
        assert_eq!(asm.header(&h), Ok(None));
    }
    let (h3, _) = Gpadl::ring(1, 3, (0..40).collect()).split().unwrap();
    assert_eq!(
        asm.header(&h3),
        Err(GpadlError::TooManyInProgress { limit: 2 })
    );
    // A GPADL that fits in its header does not count against the limit.
    let (small, _) = Gpadl::ring(1, 4, (0..10).collect()).split().unwrap();
    assert!(matches!(asm.header(&small), Ok(Some(_))));
}

// ---- decode-level GPADL checks ------------------------------------------

/// A GPADL_HEADER's bytes with `n` page numbers and the given fields.
fn header_bytes(range_buflen: u16, rangecount: u16, byte_count: u32, n: usize) -> Vec<u8> {
    let mut b = vec![0u8; 28 + 8 * n];
    b[0] = 8;
    b[8] = 30;
    b[12..16].copy_from_slice(&0xE1E10u32.to_le_bytes());
    b[16..18].copy_from_slice(&range_buflen.to_le_bytes());
    b[18..20].copy_from_slice(&rangecount.to_le_bytes());
    b[20..24].copy_from_slice(&byte_count.to_le_bytes());
    b
}

#[track_caller]
fn field_error(bytes: &[u8], ty: MessageType, reason: FieldError) {
    let field = reason.field();
    assert_eq!(
        Message::decode(bytes),
        Err(DecodeError::Field { ty, field, reason })
    );
}

#[test]
fn gpadl_header_decode_errors() {
    assert!(Message::decode(&header_bytes(104, 1, 49152, 12)).is_ok());
    field_error(
        &header_bytes(104, 2, 49152, 12),
        MessageType::GPADL_HEADER,
        FieldError::RangeCount { rangecount: 2 },
    );
    field_error(
        &header_bytes(104, 0, 49152, 12),
        MessageType::GPADL_HEADER,
        FieldError::RangeCount { rangecount: 0 },
    );
    field_error(
        &header_bytes(100, 1, 49152, 12),
        MessageType::GPADL_HEADER,
        FieldError::RangeBufLen { range_buflen: 100 },
    );
    field_error(
        &header_bytes(8, 1, 0, 0),
        MessageType::GPADL_HEADER,
        FieldError::RangeBufLen { range_buflen: 8 },
    );
    // More pages in the header than range_buflen says.
    field_error(
        &header_bytes(96, 1, 45056, 12),
        MessageType::GPADL_HEADER,
        FieldError::HeaderPages {
            carried: 12,
            total: 11,
            expected: 11,
        },
    );
    // Fewer pages in the header than fit.
    field_error(
        &header_bytes(8 + 8 * 40, 1, 40 * 4096, 20),
        MessageType::GPADL_HEADER,
        FieldError::HeaderPages {
            carried: 20,
            total: 40,
            expected: 26,
        },
    );
    field_error(
        &header_bytes(104, 1, 49153, 12),
        MessageType::GPADL_HEADER,
        FieldError::ByteRange {
            byte_offset: 0,
            byte_count: 49153,
            pages: 12,
        },
    );
    // Length not 28 + 8n.
    let mut odd = header_bytes(104, 1, 49152, 12);
    odd.push(0);
    assert!(matches!(
        Message::decode(&odd),
        Err(DecodeError::Length {
            ty: MessageType::GPADL_HEADER,
            len: 125,
            ..
        })
    ));
    assert!(matches!(
        Message::decode(&odd[..20]),
        Err(DecodeError::Length {
            ty: MessageType::GPADL_HEADER,
            len: 20,
            ..
        })
    ));
}

#[test]
fn gpadl_body_decode_errors() {
    let mut body = vec![0u8; 16 + 8 * 28];
    body[0] = 9;
    assert!(Message::decode(&body).is_ok());
    for len in [8, 12, 16, 17, 23, 25] {
        assert!(
            matches!(
                Message::decode(&body[..len]),
                Err(DecodeError::Length {
                    ty: MessageType::GPADL_BODY,
                    ..
                })
            ),
            "len {len}"
        );
    }
    assert_eq!(
        GpadlBody::new(0, 1, Vec::new()),
        Err(FieldError::BodyPages { carried: 0 })
    );
    assert_eq!(
        GpadlBody::new(0, 1, vec![0; 29]),
        Err(FieldError::BodyPages { carried: 29 })
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn split_assemble_round_trip(
        pfns in prop::collection::vec(any::<u64>(), 1..=600),
        handle in 1u32..,
        relid in any::<u32>(),
    ) {
        let gpadl = Gpadl::ring(relid, handle, pfns);
        let messages = gpadl.to_messages().unwrap();
        let mut asm = GpadlAssembler::new();
        prop_assert_eq!(assemble(&mut asm, &messages), gpadl);
    }

    #[test]
    fn assembly_of_arbitrary_streams_never_panics(data in prop::collection::vec(any::<u8>(), 0..2000)) {
        vmbus::fuzzing::gpadl_assembly(&data);
    }

    #[test]
    fn assembly_of_mixed_valid_streams(
        sizes in prop::collection::vec((1u64..120, 1u32..6), 1..6),
        order in prop::collection::vec(any::<u8>(), 0..64),
    ) {
        // Valid GPADL messages (some sharing a handle), shuffled a bit and
        // length-prefixed as the fuzz harness expects.
        let mut messages: Vec<Message> = sizes
            .iter()
            .flat_map(|&(pages, handle)| {
                Gpadl::ring(1, handle, (0..pages).collect()).to_messages().unwrap()
            })
            .collect();
        for (i, &o) in order.iter().enumerate() {
            let n = messages.len();
            messages.swap(i % n, usize::from(o) % n);
        }
        let mut stream = Vec::new();
        for m in &messages {
            let bytes = m.encode();
            stream.push(bytes.len() as u8);
            stream.extend_from_slice(&bytes);
        }
        vmbus::fuzzing::gpadl_assembly(&stream);
    }
}
