//! File descriptors do not grow with connections.
//!
//! Signals travel over one link per pair of processes (`vmbus::ext`,
//! "Signals"): two signal socket ends in each of the two processes, however
//! many channels they share; a ring memfd is closed once mapped (a guest
//! also keeps one spare set of rings, made ahead for its next channel, with
//! its memfd). So a process
//! with hundreds of connections holds a handful of descriptors more than
//! with one, not hundreds. The daemon runs in a child process here, so
//! that `/proc/self/fd` counts the endpoints' descriptors only.

mod common;

use std::io::{Read, Write};

use common::*;
use hvsock::{ConnectOptions, Guest, Guid, Host, HvAddr, HvListener, VsockAddr, VsockStream};

const ROLE: &str = "HVSOCK_DESCRIPTORS_DAEMON";

/// The entry point of the daemon child; does nothing in a normal run.
#[test]
fn daemon_child() {
    daemon_child_entry(ROLE);
}

/// Connections held open at once.
const CONNECTIONS: usize = 300;

/// Descriptors this process may gain for [`CONNECTIONS`] connections between
/// one guest and one host process: the link's two socket ends on each side
/// are 4, the guest's spare rings 1; the rest is slack (the standard library or allocator opening something
/// once). One per connection would be 300.
const MAX_GROWTH: usize = 16;

#[test]
fn descriptors_do_not_grow_per_connection() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("hv").join("host.sock");
    let _daemon = ChildDaemon::start(ROLE, &socket);
    let before_endpoints = fd_count();

    let root = Host::connect_daemon_at(&socket).unwrap();
    let guest = Guest::connect_daemon_at(&socket, "alpha").unwrap();
    let listener = HvListener::bind(&root, HvAddr::from_vsock_port(Guid::ZERO, 9700)).unwrap();
    let options = ConnectOptions::seed();
    let connect = || {
        let mut g = VsockStream::connect_with(&guest, VsockAddr::new(2, 9700), &options).unwrap();
        let (mut h, _) = listener.accept().unwrap();
        g.set_read_timeout(Some(HANG)).unwrap();
        h.set_read_timeout(Some(HANG)).unwrap();
        // Both directions once: both ends map their rings and signal.
        g.write_all(b"g").unwrap();
        let mut byte = [0u8; 1];
        h.read_exact(&mut byte).unwrap();
        h.write_all(b"h").unwrap();
        g.read_exact(&mut byte).unwrap();
        (g, h)
    };
    let idle = fd_count();
    let rings_idle = maps_matching("memfd:");
    eprintln!("{before_endpoints} descriptors before the endpoints, {idle} with them");

    let mut pairs = Vec::with_capacity(CONNECTIONS);
    for _ in 0..CONNECTIONS {
        pairs.push(connect());
    }
    let open = fd_count();
    eprintln!(
        "{CONNECTIONS} connections open: {open} descriptors ({} more), {} memfd mappings",
        open - idle,
        maps_matching("memfd:")
    );
    assert!(
        open - idle <= MAX_GROWTH,
        "{CONNECTIONS} connections took {} descriptors (at most {MAX_GROWTH} expected: a link is \
         2 socket ends on each side, shared by every connection of the pair)",
        open - idle
    );
    // Every connection still works, in any order, with all of them open.
    for (i, (g, h)) in pairs.iter_mut().enumerate().rev().step_by(7) {
        assert_moves_data(g, h, &format!("connection {i}"));
    }

    // Closing them gives everything back but the link, which lasts while
    // both processes do.
    drop(pairs);
    let closed = settle(fd_count, |n| n <= open);
    // The link's flags stay mapped, once in each endpoint, and so do the
    // guest's spare rings.
    let rings = settle(|| maps_matching("memfd:"), |n| n <= rings_idle + 3);
    eprintln!("closed: {closed} descriptors, {rings} memfd mappings");
    assert!(
        closed <= open,
        "closing leaked: {open} open, {closed} after"
    );
    assert!(
        rings <= rings_idle + 3,
        "ring mappings: {rings_idle} before, {rings} after closing (the link's flags are 2, the \
         guest's spare rings 1)"
    );

    // A second round reuses the link: no growth at all beyond the first.
    let mut pairs = Vec::with_capacity(CONNECTIONS / 3);
    for _ in 0..CONNECTIONS / 3 {
        pairs.push(connect());
    }
    let again = fd_count();
    assert!(
        again <= open,
        "a second round grew descriptors: {open} in the first, {again} in the second"
    );
    drop(pairs);

    // Without the endpoints, nothing of theirs is left.
    drop((listener, guest, root));
    let after = settle(fd_count, |n| n <= before_endpoints);
    assert!(
        after <= before_endpoints,
        "the endpoints leaked: {before_endpoints} before, {after} after"
    );
    let rings = settle(|| maps_matching("memfd:"), |n| n == 0);
    assert_eq!(rings, 0, "memfd mappings left after the endpoints");
}

#[test]
fn each_peer_process_costs_a_few_descriptors_not_one_per_connection() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("hv").join("host.sock");
    let _daemon = ChildDaemon::start(ROLE, &socket);
    let root = Host::connect_daemon_at(&socket).unwrap();
    let listener = HvListener::bind(&root, HvAddr::from_vsock_port(Guid::ZERO, 9800)).unwrap();
    let options = ConnectOptions::seed();
    // Four guest processes (endpoints, here in one process) of 40
    // connections each: four links, each 2 socket ends in the guest
    // endpoint and 2 in the host endpoint.
    let before = fd_count();
    let mut guests = Vec::new();
    let mut pairs = Vec::new();
    for _ in 0..4 {
        let guest = Guest::connect_daemon_at(&socket, "alpha").unwrap();
        for _ in 0..40 {
            let mut g =
                VsockStream::connect_with(&guest, VsockAddr::new(2, 9800), &options).unwrap();
            let (mut h, _) = listener.accept().unwrap();
            g.set_read_timeout(Some(HANG)).unwrap();
            h.set_read_timeout(Some(HANG)).unwrap();
            assert_moves_data(&mut g, &mut h, "a connection");
            pairs.push((g, h));
        }
        guests.push(guest);
    }
    let grown = fd_count() - before;
    // Per guest endpoint: its control socket, its wake-up eventfd and epoll
    // set, the link's 2 + 2 socket ends and its spare rings' memfd: about
    // 9; allow 12 each.
    eprintln!(
        "4 guest endpoints x 40 connections: {grown} descriptors ({} per guest)",
        grown / 4
    );
    assert!(
        grown <= 4 * 12,
        "4 guests x 40 connections took {grown} descriptors: more than a few per peer process"
    );
    drop(pairs);
    drop(guests);
    let after = settle(fd_count, |n| n <= before);
    assert!(
        after <= before,
        "{before} before, {after} after the guests left"
    );
}
