//! The ring test vectors of PROTOCOL.md section 7, byte for byte: what the
//! writer puts in the ring, what the reader makes of it, and the signal
//! decisions on both sides.

use std::sync::atomic::Ordering::Relaxed;

use vmbus_ring::layout::{
    GUEST_MAX_SEND_DATA, MAX_RECV_DATA, MAX_RECV_PACKET, SEED_PENDING_SEND_SIZE,
};
use vmbus_ring::mem::word;
use vmbus_ring::{
    init_control_page, CorruptionKind, HeapRingMem, IndexField, Location, PipeReader, PipeWriter,
    RingMem, RingReader, RingWriter,
};

/// The vectors use a 7-page ring: a 24 KiB data area.
const DATA: usize = 24576;

fn guest_ring() -> HeapRingMem {
    let mem = HeapRingMem::new(DATA);
    init_control_page(&mem, 1);
    mem
}

fn data(mem: &HeapRingMem, offset: usize, len: usize) -> Vec<u8> {
    let mut out = vec![0; len];
    mem.read_data(offset, &mut out);
    out
}

fn writer(mem: &HeapRingMem) -> PipeWriter<&HeapRingMem> {
    PipeWriter::new(RingWriter::new(mem).unwrap(), GUEST_MAX_SEND_DATA as u32)
}

fn reader(mem: &HeapRingMem) -> PipeReader<&HeapRingMem> {
    PipeReader::new(
        RingReader::new(mem, MAX_RECV_PACKET as u32).unwrap(),
        MAX_RECV_DATA as u32,
    )
}

const HELLO: [u8; 40] = [
    0x06, 0x00, 0x02, 0x00, 0x04, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x01, 0x00, 0x00, 0x00, 0x05, 0x00, 0x00, 0x00, 0x68, 0x65, 0x6c, 0x6c, 0x6f, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
];

const FIN_AT_40: [u8; 32] = [
    0x06, 0x00, 0x02, 0x00, 0x03, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x28, 0x00, 0x00, 0x00,
];

#[test]
fn vector_b_hello_at_offset_0_signals_the_reader() {
    let mem = guest_ring();
    let mut w = writer(&mem);
    assert_eq!(w.write(b"hello").unwrap(), 5);
    assert!(
        w.commit().unwrap(),
        "empty -> non-empty with the mask clear must signal"
    );
    assert_eq!(data(&mem, 0, 40), HELLO);
    assert_eq!(mem.load_control(word::WRITE_INDEX, Relaxed), 40);
}

#[test]
fn vector_a_control_page_after_the_write() {
    let mem = guest_ring();
    let mut w = writer(&mem);
    w.ring().set_pending_send_size(SEED_PENDING_SEND_SIZE);
    w.write(b"hello").unwrap();
    let _ = w.commit().unwrap();
    let mut expected = vec![0u8; 4096];
    expected[..16].copy_from_slice(&[0x28, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x18, 0x10, 0, 0]);
    expected[0x40] = 1;
    assert_eq!(&mem.to_image()[..4096], &expected[..]);
}

#[test]
fn vector_c_fin_after_hello_does_not_signal() {
    let mem = guest_ring();
    let mut w = writer(&mem);
    w.ring().set_pending_send_size(SEED_PENDING_SEND_SIZE);
    w.write(b"hello").unwrap();
    assert!(w.commit().unwrap());
    w.write_fin().unwrap();
    assert!(
        !w.commit().unwrap(),
        "the reader has not caught up: no signal"
    );
    assert_eq!(data(&mem, 40, 32), FIN_AT_40);
    assert_eq!(mem.load_control(word::WRITE_INDEX, Relaxed), 72);

    // The reader consumes both packets, ends at 72 and owes the writer no
    // signal: 24504 bytes were free before, more than 4120.
    let mut r = reader(&mem);
    let mut buf = [0u8; 16];
    assert_eq!(r.read(&mut buf).unwrap(), 5);
    assert_eq!(&buf[..5], b"hello");
    assert!(r.fin_received());
    assert!(!r.commit().unwrap());
    assert_eq!(mem.load_control(word::READ_INDEX, Relaxed), 72);
    assert_eq!(r.read(&mut buf).unwrap(), 0, "end of stream");
}

#[test]
fn vector_d_a_packet_that_wraps() {
    let mem = guest_ring();
    mem.store_control(word::WRITE_INDEX, 24544, Relaxed);
    mem.store_control(word::READ_INDEX, 24544, Relaxed);
    let mut w = writer(&mem);
    assert_eq!(w.write(b"ABCDEFGHIJKLMNOPQRST").unwrap(), 20);
    assert!(w.commit().unwrap(), "the ring was empty: signal");
    assert_eq!(
        data(&mem, 0x5fe0, 32),
        [
            0x06, 0x00, 0x02, 0x00, 0x06, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
            0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x14, 0x00, 0x00, 0x00, 0x41, 0x42, 0x43, 0x44,
            0x45, 0x46, 0x47, 0x48,
        ]
    );
    assert_eq!(
        data(&mem, 0, 24),
        [
            0x49, 0x4a, 0x4b, 0x4c, 0x4d, 0x4e, 0x4f, 0x50, 0x51, 0x52, 0x53, 0x54, 0x00, 0x00,
            0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xe0, 0x5f, 0x00, 0x00,
        ]
    );
    assert_eq!(mem.load_control(word::WRITE_INDEX, Relaxed), 24);

    let mut r = reader(&mem);
    assert_eq!(r.ring_mut().available().unwrap(), 56);
    let mut buf = [0u8; 64];
    assert_eq!(r.read(&mut buf).unwrap(), 20);
    assert_eq!(&buf[..20], b"ABCDEFGHIJKLMNOPQRST");
}

#[test]
fn seed_worked_example_of_writable_space() {
    // PROTOCOL.md 3.5: an empty 20480-byte data area takes four 4088-byte
    // packets, then 3928 bytes, then nothing, and the FIN still fits.
    let mem = HeapRingMem::new(20480);
    init_control_page(&mem, 1);
    let mut w = writer(&mem);
    let big = vec![7u8; 4088 * 4 + 5000];
    assert_eq!(w.writable().unwrap(), 20408);
    assert_eq!(w.write(&big).unwrap(), 4088 * 4 + 3928);
    assert_eq!(w.ring().cached_free(), 40);
    assert_eq!(w.write(&big).unwrap(), 0);
    w.write_fin().unwrap();
    let _ = w.commit().unwrap();
    assert_eq!(
        w.ring().cached_free(),
        8,
        "the ring is never completely full"
    );
}

/// A ring holding `bytes` at offset 0 with `write_index = len`.
fn ring_with(bytes: &[u8]) -> HeapRingMem {
    let mem = HeapRingMem::new(DATA);
    init_control_page(&mem, 1);
    mem.write_data(0, bytes);
    mem.store_control(word::WRITE_INDEX, bytes.len() as u32, Relaxed);
    mem
}

fn first_error(mem: &HeapRingMem) -> vmbus_ring::Corruption {
    let mut r = reader(mem);
    let mut buf = [0u8; 64];
    r.read(&mut buf).expect_err("the packet must be rejected")
}

#[test]
fn vector_h_data_size_lie_is_rejected() {
    let mut bytes = HELLO;
    bytes[20..24].copy_from_slice(&0x4000u32.to_le_bytes());
    let error = first_error(&ring_with(&bytes));
    assert_eq!(error.location, Location::Data(0));
    assert_eq!(
        error.kind,
        CorruptionKind::PipeDataBeyondPacket {
            data_size: 16384,
            room: 8
        }
    );
}

#[test]
fn vector_h_descriptor_malformations_are_rejected() {
    let cases: [([u8; 8], CorruptionKind); 5] = [
        (
            [6, 0, 1, 0, 4, 0, 0, 0],
            CorruptionKind::DescriptorOffset { offset8: 1 },
        ),
        (
            [6, 0, 2, 0, 1, 0, 0, 0],
            CorruptionKind::DescriptorLength {
                len8: 1,
                offset8: 2,
            },
        ),
        (
            [6, 0, 2, 0, 0x0c, 0x0c, 0, 0],
            CorruptionKind::PacketBeyondAvailable {
                len: 24672,
                available: 40,
            },
        ),
        (
            [6, 0, 2, 0, 4, 0, 2, 0],
            CorruptionKind::PacketFlags { flags: 2 },
        ),
        (
            [5, 0, 2, 0, 4, 0, 0, 0],
            CorruptionKind::PacketType { packet_type: 5 },
        ),
    ];
    for (descriptor, expected) in cases {
        let mut bytes = HELLO;
        bytes[..8].copy_from_slice(&descriptor);
        let error = first_error(&ring_with(&bytes));
        assert_eq!(error.kind, expected, "descriptor {descriptor:02x?}");
    }
}

#[test]
fn vector_h_bad_write_indices_are_rejected() {
    for (value, expected) in [
        (
            41,
            CorruptionKind::IndexUnaligned {
                field: IndexField::WriteIndex,
                value: 41,
            },
        ),
        (
            24576,
            CorruptionKind::IndexOutOfRange {
                field: IndexField::WriteIndex,
                value: 24576,
                data_size: 24576,
            },
        ),
    ] {
        let mem = ring_with(&HELLO);
        let mut r = reader(&mem);
        mem.store_control(word::WRITE_INDEX, value, Relaxed);
        let mut buf = [0u8; 8];
        let error = r.read(&mut buf).expect_err("bad index");
        assert_eq!(error.kind, expected);
        assert_eq!(error.location, Location::Control(0));
        // The ring stays broken even if the peer repairs the index.
        mem.store_control(word::WRITE_INDEX, 40, Relaxed);
        assert_eq!(r.read(&mut buf).unwrap_err().kind, expected);
    }
}

#[test]
fn a_read_index_moved_backwards_breaks_the_writer() {
    let mem = guest_ring();
    let mut w = writer(&mem);
    w.write(&[1; 100]).unwrap();
    let _ = w.commit().unwrap();
    let mut r = reader(&mem);
    let mut buf = [0u8; 100];
    assert_eq!(r.read(&mut buf).unwrap(), 100);
    let _ = r.commit().unwrap();
    w.write(&[2; 10]).unwrap();
    let _ = w.commit().unwrap();
    // The peer moves read_index back to 0, as if it wanted the data again.
    mem.store_control(word::READ_INDEX, 0, Relaxed);
    let error = w.writable().unwrap_err();
    assert!(
        matches!(
            error.kind,
            CorruptionKind::IndexMoved {
                field: IndexField::ReadIndex,
                value: 0,
                ..
            }
        ),
        "{error}"
    );
}

#[test]
fn a_write_index_moved_backwards_breaks_the_reader() {
    let mem = guest_ring();
    let mut w = writer(&mem);
    w.write(&[1; 100]).unwrap();
    w.write(&[1; 100]).unwrap();
    let _ = w.commit().unwrap();
    let mut r = reader(&mem);
    let mut buf = [0u8; 50];
    r.read(&mut buf).unwrap();
    // Back to the middle of the first packet's slot.
    mem.store_control(word::WRITE_INDEX, 8, Relaxed);
    let _ = r.read(&mut [0u8; 500]);
    let error = r.ring_mut().available().unwrap_err();
    assert!(
        matches!(error.kind, CorruptionKind::IndexMoved { .. }),
        "{error}"
    );
}

#[test]
fn data_after_fin_is_corruption() {
    let mem = guest_ring();
    let mut w = writer(&mem);
    w.write_fin().unwrap();
    let _ = w.commit().unwrap();
    // A second, hostile writer keeps writing after the FIN.
    let mut hostile = writer(&mem);
    hostile.write(b"more").unwrap();
    let _ = hostile.commit().unwrap();
    let mut r = reader(&mem);
    let error = r.read(&mut [0u8; 8]).unwrap_err();
    assert_eq!(error.kind, CorruptionKind::DataAfterFin { data_size: 4 });
}

#[test]
fn reader_signals_the_writer_when_free_space_crosses_pending_send_size() {
    let mem = HeapRingMem::new(20480);
    init_control_page(&mem, 1);
    let mut w = writer(&mem);
    w.ring().set_pending_send_size(SEED_PENDING_SEND_SIZE);
    let payload = vec![9u8; 20480];
    assert_eq!(w.write(&payload).unwrap(), 4 * 4088 + 3928);
    let _ = w.commit().unwrap();
    let mut r = reader(&mem);
    let mut buf = vec![0u8; 4088];
    // Consuming the first 4120-byte packet: free goes from 40 to 4160 > 4120.
    assert_eq!(r.read(&mut buf).unwrap(), 4088);
    assert!(r.commit().unwrap(), "crossing 4120 upward must signal");
    assert_eq!(r.read(&mut buf).unwrap(), 4088);
    assert!(!r.commit().unwrap(), "already above: no second signal");
}

#[test]
fn no_signal_without_the_feature_bit() {
    let mem = HeapRingMem::new(20480);
    init_control_page(&mem, 0);
    let mut w = writer(&mem);
    w.ring().set_pending_send_size(SEED_PENDING_SEND_SIZE);
    w.write(&vec![9u8; 20480]).unwrap();
    let _ = w.commit().unwrap();
    let mut r = reader(&mem);
    r.read(&mut vec![0u8; 4088]).unwrap();
    assert!(!r.commit().unwrap());
}

#[test]
fn a_masked_reader_is_not_signalled() {
    let mem = guest_ring();
    let mut r = reader(&mem);
    r.ring().mask();
    let mut w = writer(&mem);
    w.write(b"x").unwrap();
    assert!(!w.commit().unwrap());
    assert_eq!(
        r.ring_mut().unmask().unwrap(),
        40,
        "unmask re-checks and finds the packet"
    );
}

#[test]
fn a_packet_larger_than_the_ring_is_refused_not_full() {
    let mem = HeapRingMem::new(4096);
    let mut w = RingWriter::new(&mem).unwrap();
    let big = vec![0u8; 4096];
    assert!(matches!(
        w.write_packet(6, 0, 0, &[&big]),
        Err(vmbus_ring::WriteError::TooLarge { .. })
    ));
}
