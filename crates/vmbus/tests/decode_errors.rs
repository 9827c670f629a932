//! Typed decode errors for wrong lengths and unknown types, per message type.

use vmbus::messages::*;

fn msg(ty: u32, len: usize) -> Vec<u8> {
    let mut b = vec![0u8; len];
    if len >= 4 {
        b[..4].copy_from_slice(&ty.to_le_bytes());
    }
    b
}

#[test]
fn lengths_outside_the_frame() {
    assert_eq!(Message::decode(&[]), Err(DecodeError::TooShort { len: 0 }));
    assert_eq!(
        Message::decode(&msg(3, 7)),
        Err(DecodeError::TooShort { len: 7 })
    );
    assert_eq!(
        Message::decode(&msg(1, 241)),
        Err(DecodeError::TooLong { len: 241 })
    );
    assert_eq!(
        Message::decode(&msg(3, 300)),
        Err(DecodeError::TooLong { len: 300 })
    );
}

#[test]
fn unknown_and_unsupported_types() {
    assert_eq!(
        Message::decode(&msg(0, 8)),
        Err(DecodeError::UnknownType { msgtype: 0 })
    );
    assert_eq!(
        Message::decode(&msg(30, 8)),
        Err(DecodeError::UnknownType { msgtype: 30 })
    );
    assert_eq!(
        Message::decode(&msg(0xFFFF_FFFF, 8)),
        Err(DecodeError::UnknownType {
            msgtype: 0xFFFF_FFFF
        })
    );
    for ty in [18, 19, 20, 22, 24, 25, 26, 27, 28, 29] {
        let err = Message::decode(&msg(ty, 16)).unwrap_err();
        assert_eq!(
            err,
            DecodeError::Unsupported {
                ty: MessageType(ty)
            }
        );
        assert_eq!(err.message_type(), Some(MessageType(ty)));
    }
    let text = DecodeError::Unsupported {
        ty: MessageType::MODIFYCHANNEL,
    }
    .to_string();
    assert!(text.contains("MODIFYCHANNEL"), "{text}");
}

/// For each fixed-layout type: the lengths it accepts. Every other length
/// from 8 to 240 must give `DecodeError::Length` naming the type.
#[test]
fn every_type_accepts_only_its_lengths() {
    let table: &[(u32, &[usize])] = &[
        (1, &[196]),
        (2, &[12]),
        (3, &[8]),
        (4, &[8]),
        (5, &[148, 156]),
        (6, &[20]),
        (7, &[12]),
        (10, &[20]),
        (11, &[16]),
        (12, &[12]),
        (13, &[12]),
        (14, &[40, 56]),
        (15, &[16, 20, 40]),
        (16, &[8]),
        (17, &[8]),
        (21, &[40, 56]),
        (23, &[44]),
    ];
    for &(ty, ok) in table {
        for len in 8..=MAX_MESSAGE_SIZE {
            let result = Message::decode(&msg(ty, len));
            if ok.contains(&len) {
                let m = result.unwrap_or_else(|e| panic!("type {ty} len {len}: {e}"));
                assert_eq!(m.message_type(), MessageType(ty));
                assert_eq!(m.encode(), msg(ty, len));
            } else {
                match result {
                    Err(DecodeError::Length { ty: t, len: l, .. }) => {
                        assert_eq!((t, l), (MessageType(ty), len));
                    }
                    other => panic!("type {ty} len {len}: {other:?}"),
                }
            }
        }
    }
}

#[test]
fn errors_name_type_field_and_reason() {
    let err = Message::decode(&msg(5, 150)).unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("OPENCHANNEL (5)") && text.contains("150") && text.contains("148 or 156"),
        "{text}"
    );

    let mut header = msg(8, 28);
    header[16] = 16; // range_buflen: one page
    header[18] = 3; // rangecount
    let err = Message::decode(&header).unwrap_err();
    assert_eq!(err.message_type(), Some(MessageType::GPADL_HEADER));
    let text = err.to_string();
    assert!(
        text.contains("GPADL_HEADER") && text.contains("rangecount") && text.contains('3'),
        "{text}"
    );
}

#[test]
fn reserved_bytes_are_ignored_and_normalised() {
    // Header padding and offer reserved words set: decode ignores them,
    // re-encoding writes zeros, and the message is unchanged.
    let mut b = msg(2, 12);
    b[4..8].copy_from_slice(&[1, 2, 3, 4]);
    b[8] = 30;
    let m = Message::decode(&b).unwrap();
    assert_eq!(m, Message::RescindChannelOffer { child_relid: 30 });
    assert_eq!(m.encode(), [2, 0, 0, 0, 0, 0, 0, 0, 30, 0, 0, 0]);

    let mut offer = msg(1, 196);
    offer[40..56].fill(0x77);
    offer[182] = 9;
    offer[189] = 0xFE; // bit 0 clear: not allocated
    offer[190] = 0x02; // bit 0 clear: not dedicated
    let Message::OfferChannel(o) = Message::decode(&offer).unwrap() else {
        panic!("offer");
    };
    assert!(!o.monitor_allocated);
    assert!(!o.is_dedicated_interrupt);
    offer[189] = 0x01;
    offer[190] = 0xFF;
    let Message::OfferChannel(o) = Message::decode(&offer).unwrap() else {
        panic!("offer");
    };
    assert!(o.monitor_allocated);
    assert!(o.is_dedicated_interrupt);
    let again = Message::OfferChannel(o.clone()).encode();
    assert!(again[40..56].iter().all(|&x| x == 0));
    assert_eq!((again[182], again[189], again[190]), (0, 1, 1));
    assert_eq!(Message::decode(&again), Ok(Message::OfferChannel(o)));
}
