//! When the host goes away, the endpoints of this process outlive it (an
//! application may hold its `Guest` and `Host` long after), but the ring
//! memory of every stream it drops must go with the stream: nobody is left
//! to close a channel with, and no timer runs to give it back later.
//!
//! A binary of its own: it counts this process's ring mappings, which
//! tests running beside it would change.

mod common;

use std::io::{ErrorKind, Read};

use common::*;
use hvsock::{Guest, Host, HvAddr, HvStream, VsockAddr, VsockListener};

#[test]
fn a_dead_hosts_streams_give_their_rings_back_when_dropped() {
    let before = maps_matching("memfd:hvsock-rings");
    let daemon = TestDaemon::start(&["alpha"]);
    let root = Host::connect_daemon_at(&daemon.socket).unwrap();
    let guest = Guest::connect_daemon_at(&daemon.socket, "alpha").unwrap();
    let listener = VsockListener::bind(&guest, VsockAddr::new(u32::MAX, 8101)).unwrap();
    let vm = vmbus::server::derived_vm_id("alpha");
    let mut pairs = Vec::new();
    for _ in 0..4 {
        let h = HvStream::connect(&root, HvAddr::from_vsock_port(vm, 8101)).unwrap();
        let (g, _) = listener.accept().unwrap();
        g.set_read_timeout(Some(HANG)).unwrap();
        pairs.push((g, h));
    }
    // One guest stream released while the host lives and its host end is
    // still open: it is waiting for the host's close (up to 8 s) when the
    // host goes.
    let (early, early_host) = pairs.pop().unwrap();
    drop(early);
    assert!(maps_matching("memfd:hvsock-rings") > before);

    let _dir = daemon.stop();
    for (g, _) in &pairs {
        let e = (&*g).read(&mut [0u8; 1]).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::ConnectionReset, "{e}");
    }
    drop((pairs, early_host));
    // The endpoints are still held, yet no ring memory is left mapped.
    let left = settle(|| maps_matching("memfd:hvsock-rings"), |n| n <= before);
    assert!(
        left <= before,
        "{left} ring mappings left (before: {before}) with the host gone"
    );
    drop((listener, guest, root));
}
