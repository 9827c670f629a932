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

/// A host endpoint over a socket pair whose other end the test plays the
/// daemon on (contact answered).
fn fake_host_endpoint() -> (Endpoint, OwnedFd) {
    use rustix::net::{socketpair, AddressFamily, SocketFlags, SocketType};
    let (ours, daemon) = socketpair(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )
    .unwrap();
    let starting = std::thread::spawn(move || Endpoint::start(ours, Role::Host));
    assert_eq!(next_request(&daemon), ExtRequest::VmList);
    send_event(&daemon, &ExtEvent::VmList { vms: Vec::new() }, &[]);
    (starting.join().unwrap().unwrap(), daemon)
}

fn next_request(daemon: &OwnedFd) -> ExtRequest {
    let mut buf = vec![0u8; vmbus::ext::MAX_DATAGRAM];
    let (n, _) = hvsock_shm::recv_with_fds(daemon, &mut buf, 4).unwrap();
    match Datagram::<ExtRequest>::decode(&buf[..n]).unwrap() {
        Datagram::Ext(r) => r,
        other => panic!("{other:?}"),
    }
}

fn send_event(daemon: &OwnedFd, event: &ExtEvent, fds: &[BorrowedFd<'_>]) {
    hvsock_shm::send_with_fds(daemon, &encode_ext(event), fds).unwrap();
}

/// The same window as the connects', in a listen: the listen request times
/// out, and before it takes the lock again the host says yes and routes a
/// connection to the listener (registered before asking). The listener is
/// then forgotten and dropped with that connection in its queue: never
/// released, no HostClose, the peer's stream never ends.
#[test]
fn a_host_listen_that_times_out_as_a_connection_arrives_gives_it_back() {
    let (root, daemon) = fake_host_endpoint();
    *lock(&root.shared().relock_delay) = Duration::from_secs(2);
    let service = Guid::from_vsock_port(7002);
    let listening = {
        let root = root.clone();
        std::thread::spawn(move || root.host_listen(service, Guid::ZERO, 4).map(|_| ()))
    };
    assert!(matches!(
        next_request(&daemon),
        ExtRequest::HostListen { .. }
    ));
    std::thread::sleep(REQUEST_TIMEOUT + Duration::from_millis(500));
    // The listen has given up and waits to take the lock again.
    let flags = hvsock_shm::SharedMemory::create("link", vmbus::ext::LINK_FLAGS_BYTES).unwrap();
    let (a_wait, a_signal) = hvsock_shm::signal_pair().unwrap();
    let (b_wait, b_signal) = hvsock_shm::signal_pair().unwrap();
    send_event(
        &daemon,
        &ExtEvent::Link { link: 5 },
        &[flags.as_fd(), a_wait.as_fd(), b_signal.as_fd()],
    );
    send_event(
        &daemon,
        &ExtEvent::HostListenResult {
            service_id: service,
            vm_id: Guid::ZERO,
            error: None,
        },
        &[],
    );
    let rings = PreparedRings::create(6, 6).unwrap();
    send_event(
        &daemon,
        &ExtEvent::HostIncoming {
            conn: 1,
            relid: 3,
            link: 5,
            service_id: service,
            listener_vm_id: Guid::ZERO,
            vm_id: Guid::from_vsock_port(0xabc),
            endpoint_id: Guid::from_vsock_port(0x4003),
            layout: rings.layout,
        },
        &[rings.memfd.as_fd()],
    );
    let e = listening.join().unwrap().unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::TimedOut, "{e}");
    let _ = (a_signal, b_wait);
    assert!(
        root.shared().lock().host.conns.is_empty(),
        "the host process keeps a connection nobody holds (never HostClose'd)"
    );
}
