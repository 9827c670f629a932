//! The example ring images shipped in `examples/rings/` (used by the README
//! and by `hvsock ring dump` tests) are exactly what the writer produces for
//! the PROTOCOL.md vectors, and the inspector reads them as it should.
//!
//! `HVSOCK_BLESS=1 cargo test -p vmbus-ring --test images` rewrites them.

use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;

use vmbus_ring::inspect::inspect;
use vmbus_ring::layout::{GUEST_MAX_SEND_DATA, SEED_PENDING_SEND_SIZE};
use vmbus_ring::mem::word;
use vmbus_ring::{init_control_page, CorruptionKind, HeapRingMem, PipeWriter, RingMem, RingWriter};

fn images_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples/rings")
}

fn check(name: &str, image: &[u8]) {
    let path = images_dir().join(name);
    if std::env::var_os("HVSOCK_BLESS").is_some() {
        std::fs::write(&path, image).unwrap();
    }
    let shipped = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(
        shipped == image,
        "{name} differs from what the writer produces"
    );
}

fn guest_writer(mem: &HeapRingMem) -> PipeWriter<&HeapRingMem> {
    let writer = PipeWriter::new(RingWriter::new(mem).unwrap(), GUEST_MAX_SEND_DATA as u32);
    writer.ring().set_pending_send_size(SEED_PENDING_SEND_SIZE);
    writer
}

/// Vectors 7.1-7.3: "hello" then the FIN in a 24 KiB data area.
fn hello_fin() -> Vec<u8> {
    let mem = HeapRingMem::new(24576);
    init_control_page(&mem, 1);
    let mut writer = guest_writer(&mem);
    writer.write(b"hello").unwrap();
    let _ = writer.commit().unwrap();
    writer.write_fin().unwrap();
    let _ = writer.commit().unwrap();
    mem.to_image()
}

#[test]
fn hello_fin_image() {
    let image = hello_fin();
    check("hello-fin.ring", &image);
    let inspection = inspect(&image, None).unwrap();
    assert_eq!(inspection.corruption, None);
    assert_eq!(inspection.packets.len(), 2);
    assert_eq!(inspection.packets[0].preview, b"hello");
    assert_eq!(inspection.packets[1].pipe.data_size, 0);
    assert_eq!(inspection.control.write_index, 72);
}

#[test]
fn wrapped_stream_image() {
    // The seed's 20 KiB data area, read part-way, with a packet that wraps.
    let mem = HeapRingMem::new(20480);
    init_control_page(&mem, 1);
    mem.store_control(word::WRITE_INDEX, 16384, Relaxed);
    mem.store_control(word::READ_INDEX, 16384, Relaxed);
    let mut writer = guest_writer(&mem);
    let text = b"The quick brown fox jumps over the lazy dog. ".repeat(100);
    assert_eq!(writer.write(&text[..3000]).unwrap(), 3000);
    assert_eq!(writer.write(&text[3000..4100]).unwrap(), 1100);
    writer.write_fin().unwrap();
    let _ = writer.commit().unwrap();
    let image = mem.to_image();
    check("wrapped-stream.ring", &image);
    let inspection = inspect(&image, None).unwrap();
    assert_eq!(inspection.corruption, None);
    let sizes: Vec<u32> = inspection
        .packets
        .iter()
        .map(|p| p.pipe.data_size)
        .collect();
    assert_eq!(sizes, [3000, 1100, 0]);
    assert!(
        inspection.packets[1].offset > inspection.packets[2].offset,
        "wraps"
    );
}

#[test]
fn data_size_lie_image() {
    // Vector 7.9: "hello" whose pipe header claims 16384 bytes, after a
    // valid packet so that the dump shows both.
    let mem = HeapRingMem::new(24576);
    init_control_page(&mem, 1);
    let mut writer = guest_writer(&mem);
    writer.write(b"fine").unwrap();
    writer.write(b"hello").unwrap();
    let _ = writer.commit().unwrap();
    mem.write_data(40 + 20, &16384u32.to_le_bytes());
    let image = mem.to_image();
    check("data-size-lie.ring", &image);
    let inspection = inspect(&image, None).unwrap();
    assert_eq!(inspection.packets.len(), 1);
    let corruption = inspection.corruption.unwrap();
    assert_eq!(corruption.location, vmbus_ring::Location::Data(40));
    assert_eq!(
        corruption.kind,
        CorruptionKind::PipeDataBeyondPacket {
            data_size: 16384,
            room: 8
        }
    );
}

#[test]
fn bad_write_index_image() {
    let mut image = hello_fin();
    image[..4].copy_from_slice(&41u32.to_le_bytes());
    check("bad-write-index.ring", &image);
    let inspection = inspect(&image, None).unwrap();
    assert!(inspection.packets.is_empty());
    assert!(matches!(
        inspection.corruption.unwrap().kind,
        CorruptionKind::IndexUnaligned { value: 41, .. }
    ));
}

#[test]
fn images_that_are_not_rings_are_refused() {
    assert!(inspect(&[0u8; 100], None).is_err());
    assert!(inspect(&vec![0u8; 4096 + 5000], None).is_err());
    assert!(inspect(&hello_fin(), Some(4096 * 100)).is_err());
    // A smaller data size than the file holds is fine: only those pages count.
    assert!(inspect(&hello_fin(), Some(4096)).is_ok());
}
