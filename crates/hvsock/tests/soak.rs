//! Soak: many concurrent connections of random lifetimes moving random data
//! with checksums in both directions and both roles (host → guest and
//! guest → host connects), for `HVSOCK_SOAK_MINUTES` minutes (default 0.5).
//! Zero mismatches; RSS, descriptors and ring mappings flat.
//!
//! ```sh
//! cargo test --release -p hvsock --test soak -- --ignored soak
//! HVSOCK_SOAK_MINUTES=30 cargo test --release -p hvsock --test soak -- --ignored soak
//! ```

mod common;

use std::io::{Read, Write};
use std::net::Shutdown;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use hvsock::{
    Guest, Guid, Host, HvAddr, HvListener, HvStream, VsockAddr, VsockListener, VsockStream,
};

/// Worker threads, each making one connection after another.
const WORKERS: usize = 16;

#[test]
#[ignore = "long: run with --ignored soak"]
fn soak() {
    let minutes: f64 = std::env::var("HVSOCK_SOAK_MINUTES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.5);
    let duration = Duration::from_secs_f64(minutes * 60.0);
    let d = TestDaemon::start(&["alpha"]);
    let vm = vmbus::server::derived_vm_id("alpha");
    let root = Host::connect_daemon_at(&d.socket).unwrap();
    let guest = Guest::connect_daemon_at(&d.socket, "alpha").unwrap();
    let hv_listener =
        Arc::new(HvListener::bind(&root, HvAddr::from_vsock_port(Guid::ZERO, 9500)).unwrap());
    let vs_listener =
        Arc::new(VsockListener::bind(&guest, VsockAddr::new(u32::MAX, 9501)).unwrap());
    // `stop` ends the workers' loops; `done` (set once every worker has
    // finished its last connection) ends the acceptors'.
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicBool::new(false));
    let (connections, bytes, mismatches) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
    );
    let mut rng = Rng::from_env("soak");

    // Acceptors: each accepted stream gets a thread that reads the
    // connector's bytes, checks the checksum the connector sends first,
    // and answers with its own bytes and checksum.
    fn serve(mut s: impl Read + Write, mismatches: &AtomicU64) {
        let mut head = [0u8; 32];
        if s.read_exact(&mut head).is_err() {
            return;
        }
        let len = u64::from_le_bytes(head[0..8].try_into().unwrap()) as usize;
        let sum = u64::from_le_bytes(head[8..16].try_into().unwrap());
        let back_seed = u64::from_le_bytes(head[16..24].try_into().unwrap());
        let back_len = u64::from_le_bytes(head[24..32].try_into().unwrap()) as usize;
        let mut got = Fnv::default();
        let mut buf = vec![0u8; 32768];
        let mut left = len;
        while left > 0 {
            let n = s
                .read(&mut buf[..left.min(32768)])
                .expect("the acceptor reads");
            assert!(n > 0, "EOF {left} bytes early");
            got.update(&buf[..n]);
            left -= n;
        }
        if got.0 != sum {
            mismatches.fetch_add(1, Relaxed);
        }
        send_random(&mut s, back_seed, back_len).expect("the acceptor writes");
    }
    let acceptors: Vec<_> = [0, 1]
        .into_iter()
        .map(|which| {
            let (hv, vs, done, mismatches) = (
                hv_listener.clone(),
                vs_listener.clone(),
                done.clone(),
                mismatches.clone(),
            );
            std::thread::spawn(move || {
                while !done.load(Relaxed) {
                    let mismatches = mismatches.clone();
                    if which == 0 {
                        if let Ok((s, _)) = hv.accept() {
                            std::thread::spawn(move || serve(s, &mismatches));
                        }
                    } else if let Ok((s, _)) = vs.accept() {
                        std::thread::spawn(move || serve(s, &mismatches));
                    }
                }
            })
        })
        .collect();

    let started = Instant::now();
    let mut samples: Vec<(u64, usize, usize)> = Vec::new();
    std::thread::scope(|scope| {
        for w in 0..WORKERS {
            let mut rng = Rng::new(rng.next_u64());
            let (guest, root, stop) = (&guest, &root, &stop);
            let (connections, bytes, mismatches) = (&connections, &bytes, &mismatches);
            scope.spawn(move || {
                while !stop.load(Relaxed) {
                    let mut s: Box<dyn ReadWrite> = if w % 2 == 0 {
                        Box::new(VsockStream::connect(guest, VsockAddr::new(2, 9500)).unwrap())
                    } else {
                        Box::new(
                            HvStream::connect(root, HvAddr::from_vsock_port(vm, 9501)).unwrap(),
                        )
                    };
                    // Random lifetime: up to 2 MiB each way.
                    let (e1, e2) = (1 + rng.below(21), 1 + rng.below(21));
                    let len = rng.below(1 << e1) as usize;
                    let back_len = rng.below(1 << e2) as usize;
                    let (seed, back_seed) = (rng.next_u64(), rng.next_u64());
                    let sum = send_random(&mut std::io::sink(), seed, len).unwrap();
                    let mut head = Vec::new();
                    for v in [len as u64, sum, back_seed, back_len as u64] {
                        head.extend_from_slice(&v.to_le_bytes());
                    }
                    s.write_all(&head).unwrap();
                    send_random(&mut s, seed, len).unwrap();
                    s.shut_write();
                    let (n, got) = recv_all(&mut s).unwrap();
                    let expected = send_random(&mut std::io::sink(), back_seed, back_len).unwrap();
                    if (n, got) != (back_len, expected) {
                        mismatches.fetch_add(1, Relaxed);
                    }
                    connections.fetch_add(1, Relaxed);
                    bytes.fetch_add((len + back_len) as u64, Relaxed);
                }
            });
        }
        // Sample resources every few seconds.
        while started.elapsed() < duration {
            std::thread::sleep(Duration::from_secs(2).min(duration));
            samples.push((rss_kib(), fd_count(), maps_matching("memfd:")));
        }
        stop.store(true, Relaxed);
    });
    // Wake the acceptors with one connection each, then join them.
    done.store(true, Relaxed);
    let _ = VsockStream::connect(&guest, VsockAddr::new(2, 9500));
    let _ = HvStream::connect(&root, HvAddr::from_vsock_port(vm, 9501));
    for a in acceptors {
        a.join().unwrap();
    }
    let n = connections.load(Relaxed);
    let mb = bytes.load(Relaxed) as f64 / 1e6;
    eprintln!(
        "soak: {n} connections, {mb:.0} MB in {:?}; samples (RSS KiB, fds, ring maps): first {:?}, last {:?}",
        started.elapsed(),
        samples.first(),
        samples.last()
    );
    assert_eq!(mismatches.load(Relaxed), 0, "checksum mismatches");
    assert!(n > 0);
    // Flat: the second half of the run never exceeds the first half's peak
    // by more than a margin (the allocator's high-water mark may move a
    // little; a leak per connection would not fit).
    if samples.len() >= 4 {
        let half = samples.len() / 2;
        let peak = |s: &[(u64, usize, usize)]| {
            (
                s.iter().map(|x| x.0).max().unwrap(),
                s.iter().map(|x| x.1).max().unwrap(),
                s.iter().map(|x| x.2).max().unwrap(),
            )
        };
        let (rss1, fd1, map1) = peak(&samples[..half]);
        let (rss2, fd2, map2) = peak(&samples[half..]);
        assert!(
            rss2 <= rss1 + rss1 / 4 + 8192,
            "RSS grew: {rss1} -> {rss2} KiB"
        );
        assert!(fd2 <= fd1 + 8 * WORKERS, "fds grew: {fd1} -> {fd2}");
        assert!(
            map2 <= map1 + 2 * WORKERS,
            "ring mappings grew: {map1} -> {map2}"
        );
    }
}

trait ReadWrite: Read + Write {
    fn shut_write(&self);
}

impl ReadWrite for VsockStream {
    fn shut_write(&self) {
        self.shutdown(Shutdown::Write).unwrap();
    }
}

impl ReadWrite for HvStream {
    fn shut_write(&self) {
        self.shutdown(Shutdown::Write).unwrap();
    }
}
