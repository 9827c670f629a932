//! The endpoint with an embedded host in this process: races between an
//! application thread giving up and the control thread finishing for it.

use super::*;
use crate::channel::Wait;
use vmbus::daemon::EmbeddedHost;
use vmbus::ext::Partition;

const VM: &str = "alpha";

/// An embedded host with VM alpha, a guest endpoint of it and a host one.
fn endpoints() -> (EmbeddedHost, Endpoint, Endpoint, Guid) {
    let host = EmbeddedHost::start(&[(VM, None)]).unwrap();
    let vm_id = host.vm_id(VM).unwrap();
    let guest = Endpoint::start(host.connect(Partition::Vm(vm_id)).unwrap(), Role::Guest).unwrap();
    let root = Endpoint::start(host.connect(Partition::Root).unwrap(), Role::Host).unwrap();
    (host, guest, root, vm_id)
}

/// Widens the window between a connect's timeout and its taking the lock
/// again, so that the channel opens in it every time.
fn widen_relock_window(ep: &Endpoint) {
    *lock(&ep.shared().relock_delay) = Duration::from_millis(300);
}

#[test]
fn a_guest_connect_that_times_out_as_its_channel_opens_gives_it_back() {
    let (_host, guest, root, _) = endpoints();
    let _listener = root
        .host_listen(Guid::from_vsock_port(7000), Guid::ZERO, 4)
        .unwrap();
    widen_relock_window(&guest);
    let e = guest
        .guest_connect(7000, Duration::ZERO, (6, 6))
        .unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::TimedOut, "{e}");
    let state = guest.shared().lock();
    let held = state
        .guest
        .channels
        .values()
        .filter(|c| {
            matches!(
                c,
                GuestChannel::Open {
                    released: false,
                    ..
                }
            )
        })
        .count();
    // It did open meanwhile (the test is about that case)...
    assert!(
        !state.guest.channels.is_empty(),
        "the channel never opened: the test's window is too narrow"
    );
    // ...and nobody holds it: it is released, not left open for good.
    assert_eq!(held, 0, "a channel nobody will ever release stays open");
}

#[test]
fn a_host_connect_that_times_out_as_it_connects_closes_the_connection() {
    let (_host, guest, root, vm_id) = endpoints();
    let listener = guest.guest_listen(7001, 4, (6, 6)).unwrap();
    widen_relock_window(&root);
    let e = root
        .host_connect(vm_id, None, Guid::from_vsock_port(7001), Duration::ZERO)
        .unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::TimedOut, "{e}");
    // The guest accepted it meanwhile (the case of this test)...
    let accepted = listener.pop().expect("the guest accepted the connection");
    // ...and the host closed it: no connection is left in the host
    // process, and the guest's end reads the end of the stream.
    assert!(
        root.shared().lock().host.conns.is_empty(),
        "the host process keeps a connection nobody holds"
    );
    let mut buf = [0u8; 8];
    let wait = Wait::timeout(false, Some(Duration::from_secs(5)));
    assert_eq!(accepted.io.read(&mut buf, wait).unwrap(), 0);
}
