//! Fuzz target bodies, shared by the cargo-fuzz targets under `fuzz/` and the
//! tests that replay their corpora on the stable toolchain.
//!
//! Each function takes arbitrary bytes and must neither panic nor loop
//! forever, whatever they hold; the assertions inside check invariants that
//! hold for any input.

use std::sync::atomic::Ordering::Relaxed;

use crate::inspect::inspect;
use crate::layout::{MAX_RECV_DATA, MAX_RECV_PACKET};
use crate::mem::{word, HeapRingMem, RingMem, CONTROL_PAGE_SIZE};
use crate::pipe::{PipeReader, PipeWriter};
use crate::reader::RingReader;
use crate::writer::RingWriter;

/// A reader over a hostile ring: the first bytes pick the data size and the
/// read sizes, the rest is the control page and data area as the peer wrote
/// them. Reads until the ring is empty, broken or at its end.
pub fn ring_reader(data: &[u8]) {
    let Some((&pages, rest)) = data.split_first() else {
        return;
    };
    let Some((&read_size, image)) = rest.split_first() else {
        return;
    };
    let data_len = 4096 * (1 + usize::from(pages % 5));
    let mut bytes = image.to_vec();
    bytes.resize(CONTROL_PAGE_SIZE + data_len, 0);
    let Some(mem) = HeapRingMem::from_image(&bytes) else {
        return;
    };
    let Ok(ring) = RingReader::new(&mem, MAX_RECV_PACKET as u32) else {
        return;
    };
    let mut reader = PipeReader::new(ring, MAX_RECV_DATA as u32);
    let mut buf = vec![0u8; 1 + usize::from(read_size) * 67];
    let mut total = 0usize;
    // Each successful read consumes at least one packet of at least 24 bytes
    // or returns 0, so this loop is bounded by the data size.
    for _ in 0..=data_len / 8 {
        let _ = reader.peek(&mut buf[..1]);
        match reader.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => total += n,
        }
        let _ = reader.commit();
    }
    assert!(total <= data_len, "read more bytes than the ring holds");
    let read_index = mem.load_control(word::READ_INDEX, Relaxed) as usize;
    assert!(read_index < data_len && read_index % 8 == 0);
}

/// The inspector over an arbitrary image: the first byte picks an optional
/// data size.
pub fn ring_inspect(data: &[u8]) {
    let Some((&choice, image)) = data.split_first() else {
        return;
    };
    let data_size = (choice != 0).then(|| 4096 * usize::from(choice % 8));
    if let Ok(inspection) = inspect(image, data_size) {
        let covered: u32 = inspection.packets.iter().map(|p| p.total_len).sum();
        assert!(covered <= inspection.used, "packets beyond the write index");
    }
}

/// Random operations of a writer and a reader on one ring against a queue
/// model: whatever sequence the bytes encode, every byte written comes out
/// once, in order, and the ring is never completely full.
pub fn ring_ops(data: &[u8]) {
    let mem = HeapRingMem::new(4096 * (1 + usize::from(data.first().copied().unwrap_or(0) % 3)));
    let Ok(ring_writer) = RingWriter::new(&mem) else {
        return;
    };
    let Ok(ring_reader) = RingReader::new(&mem, MAX_RECV_PACKET as u32) else {
        return;
    };
    let mut writer = PipeWriter::new(ring_writer, 4088);
    let mut reader = PipeReader::new(ring_reader, MAX_RECV_DATA as u32);
    let mut model = std::collections::VecDeque::new();
    let mut uncommitted = Vec::new();
    let mut next_byte = 0u8;
    let mut buf = vec![0u8; 70_000];
    for chunk in data.chunks(3).skip(1) {
        let size = usize::from(u16::from_le_bytes([chunk[0], *chunk.get(1).unwrap_or(&0)])) % 9000;
        match chunk.get(2).copied().unwrap_or(0) % 4 {
            0 => {
                let bytes: Vec<u8> = (0..size)
                    .map(|_| {
                        next_byte = next_byte.wrapping_add(1);
                        next_byte
                    })
                    .collect();
                let n = writer.write(&bytes).expect("an honest ring never breaks");
                uncommitted.extend_from_slice(&bytes[..n]);
                // Bytes not written are not part of the stream.
                next_byte = next_byte.wrapping_sub((size - n) as u8);
            }
            1 => {
                let _ = writer.commit().expect("commit");
                model.extend(uncommitted.drain(..));
            }
            2 => {
                let n = reader.read(&mut buf[..size]).expect("read");
                for &byte in &buf[..n] {
                    assert_eq!(Some(byte), model.pop_front(), "stream corrupted");
                }
                assert!(n == size || model.is_empty(), "short read with data left");
            }
            _ => {
                let _ = reader.commit().expect("commit");
            }
        }
        let w = mem.load_control(word::WRITE_INDEX, Relaxed);
        let r = mem.load_control(word::READ_INDEX, Relaxed);
        assert!(crate::layout::free(w, r, mem.data_len() as u32) >= 8);
    }
}
