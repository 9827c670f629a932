//! Tests of the server state machine, one state at a time: a constructor
//! per state (`offered_*`, `with_gpadl`, `opened`), message templates and
//! `#[track_caller]` expectations, real memfds where rings are involved
//! (eventfds only as descriptors a message must not carry), the links
//! between pairs of processes, and explicit `now` for every timeout.

use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hvsock_shm::{EventFd, Mapping, SharedMemory};
use proptest::prelude::*;

use super::*;
use crate::ext::{encode_ext, ConnectFailure, ExtEvent, ExtRequest, Partition};
use crate::messages::{
    Gpadl, InitiateContact, Message, OpenChannel, TlConnectRequest, VERSION_WIN10,
    VERSION_WIN10_V4_1, VERSION_WIN10_V5, VERSION_WIN8_1,
};

const SERVICE_PORT: u32 = 0x1234;
const GUEST_PORT: u32 = 0x401;
const PAGES: u32 = 12;
const SPLIT: u32 = 6;

fn service() -> Guid {
    Guid::from_vsock_port(SERVICE_PORT)
}

/// Raises the soft descriptor limit to the hard one (tests with many
/// channels hold thousands of descriptors).
fn raise_fd_limit() {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut limit = getrlimit(Resource::Nofile);
    limit.current = limit.maximum;
    let _ = setrlimit(Resource::Nofile, limit);
}

// ---- message templates ----

fn initiate(version: u32) -> Message {
    Message::InitiateContact(InitiateContact {
        vmbus_version_requested: version,
        target_vcpu: 0,
        interrupt_page_or_target_info: InitiateContact::target_info(2, 0, 0),
        parent_to_child_monitor_page_gpa: 0,
        child_to_parent_monitor_page_gpa: 0,
        client_id: None,
    })
}

fn tl_connect(guest_port: u32, host_port: u32) -> Message {
    Message::TlConnectRequest(TlConnectRequest {
        guest_endpoint_id: Guid::from_vsock_port(guest_port),
        host_service_id: Guid::from_vsock_port(host_port),
        silo_id: None,
    })
}

fn open_msg(relid: u32, gpadl: u32, split: u32) -> Message {
    Message::OpenChannel(OpenChannel {
        child_relid: relid,
        openid: relid,
        ringbuffer_gpadlhandle: gpadl,
        target_vp: 0,
        downstream_ringbuffer_pageoffset: split,
        userdata: [0; 120],
        guest_signal: None,
    })
}

fn gpadl_msgs(relid: u32, handle: u32, pfns: Vec<u64>) -> Vec<Message> {
    Gpadl::ring(relid, handle, pfns).to_messages().unwrap()
}

fn eventfds() -> Vec<OwnedFd> {
    vec![
        EventFd::new().unwrap().into_fd(),
        EventFd::new().unwrap().into_fd(),
    ]
}

/// The GPADL handle the harness uses for channel `relid`: distinct per
/// channel, since a guest may not reuse one; 0xE1E10 for relid 1.
fn gpadl_handle(relid: u32) -> u32 {
    0xE1E0F_u32.wrapping_add(relid)
}

fn memfd(pages: u32) -> SharedMemory {
    SharedMemory::create("server-test", pages as usize * PAGE_SIZE).unwrap()
}

fn dup(mem: &SharedMemory) -> OwnedFd {
    mem.as_fd().try_clone_to_owned().unwrap()
}

// ---- the harness ----

struct Harness {
    server: Server,
    now: Instant,
    alpha: Guid,
    next_client: u64,
    /// Links seen in CreateLink actions: (guest, host) → link. Client ids
    /// are never reused here, so entries of gone clients do no harm.
    links: HashMap<(ClientId, ClientId), u64>,
}

/// A channel in some state, with who is on each side.
#[derive(Debug, Clone, Copy)]
struct Setup {
    host: ClientId,
    guest: ClientId,
    relid: u32,
    /// For host connects.
    request: u64,
    from_host: bool,
    /// The guest endpoint (guest connects).
    endpoint: Guid,
    /// The filter of the host listener that matched (guest connects).
    listener_vm_id: Guid,
}

/// An open channel.
struct Opened {
    setup: Setup,
    conn: u64,
    /// The link of the guest and host processes.
    link: u64,
    guest_mem: SharedMemory,
    host_fds: Vec<Arc<OwnedFd>>,
}

impl Harness {
    fn new() -> Self {
        Self::with_config(ServerConfig::default())
    }

    fn with_config(config: ServerConfig) -> Self {
        let mut server = Server::new(config);
        let alpha = server.add_vm("alpha", None).unwrap().id;
        let mut h = Harness {
            server,
            now: Instant::now(),
            alpha,
            next_client: 1,
            links: HashMap::new(),
        };
        assert!(matches!(h.next(), Some(Action::VmAdded { .. })));
        h.expect_nothing();
        h
    }

    fn next(&mut self) -> Option<Action> {
        self.server.poll_action()
    }

    fn connect(&mut self, partition: Partition) -> ClientId {
        let client = ClientId(self.next_client);
        self.next_client += 1;
        let pid = 1000 + client.0 as u32;
        self.server.handle(
            self.now,
            Input::Connected {
                client,
                info: ClientInfo {
                    partition,
                    pid,
                    uid: 0,
                },
            },
        );
        client
    }

    fn host(&mut self) -> ClientId {
        self.connect(Partition::Root)
    }

    /// A guest of alpha that has agreed on VMBus 5.0.
    fn guest(&mut self) -> ClientId {
        self.guest_with_version(VERSION_WIN10_V5)
    }

    fn guest_with_version(&mut self, version: u32) -> ClientId {
        let g = self.connect(Partition::Vm(self.alpha));
        self.vmbus(g, initiate(version));
        let Message::VersionResponse(r) = self.expect_vmbus(g) else {
            panic!("expected VERSION_RESPONSE")
        };
        assert!(r.version_supported);
        g
    }

    fn datagram(&mut self, client: ClientId, bytes: Vec<u8>, fds: Vec<OwnedFd>) {
        self.server
            .handle(self.now, Input::Datagram { client, bytes, fds });
    }

    fn vmbus(&mut self, client: ClientId, message: Message) {
        self.vmbus_fds(client, message, Vec::new());
    }

    fn vmbus_fds(&mut self, client: ClientId, message: Message, fds: Vec<OwnedFd>) {
        self.datagram(client, message.encode(), fds);
    }

    fn ext(&mut self, client: ClientId, request: ExtRequest) {
        self.datagram(client, encode_ext(&request), Vec::new());
    }

    fn gone(&mut self, client: ClientId) {
        self.server.handle(self.now, Input::Gone { client });
    }

    #[track_caller]
    fn expect_send(&mut self, to: ClientId) -> (Vec<u8>, Vec<Arc<OwnedFd>>) {
        match self.next() {
            Some(Action::Send { client, bytes, fds }) if client == to => (bytes, fds),
            other => panic!("expected a datagram to {to:?}, got {other:?}"),
        }
    }

    #[track_caller]
    fn expect_vmbus(&mut self, to: ClientId) -> Message {
        let (bytes, fds) = self.expect_send(to);
        assert!(fds.is_empty(), "VMBus messages to guests carry no fds");
        match Datagram::<ExtEvent>::decode(&bytes) {
            Ok(Datagram::Vmbus(m)) => m,
            other => panic!("expected a VMBus message, got {other:?}"),
        }
    }

    #[track_caller]
    fn expect_event(&mut self, to: ClientId) -> (ExtEvent, Vec<Arc<OwnedFd>>) {
        let (bytes, fds) = self.expect_send(to);
        match Datagram::<ExtEvent>::decode(&bytes) {
            Ok(Datagram::Ext(e)) => (e, fds),
            other => panic!("expected an extension event, got {other:?}"),
        }
    }

    #[track_caller]
    fn expect_disconnect(&mut self, who: ClientId) -> String {
        match self.next() {
            Some(Action::Disconnect { client, reason }) if client == who => reason,
            other => panic!("expected {who:?} to be disconnected, got {other:?}"),
        }
    }

    /// A CreateLink for this pair; returns the link.
    #[track_caller]
    fn expect_create_link(&mut self, guest: ClientId, host: ClientId) -> u64 {
        match self.next() {
            Some(Action::CreateLink {
                link,
                guest: g,
                host: h,
            }) if (g, h) == (guest, host) => {
                let known = self.links.insert((guest, host), link);
                assert_eq!(known, None, "a second CreateLink for one pair");
                assert!(
                    !self
                        .links
                        .iter()
                        .any(|(k, l)| *l == link && *k != (guest, host)),
                    "link {link} was given to another pair"
                );
                link
            }
            other => panic!("expected a CreateLink for {guest:?} and {host:?}, got {other:?}"),
        }
    }

    #[track_caller]
    fn expect_channel_link(&mut self, guest: ClientId, relid: u32) -> u64 {
        let (event, fds) = self.expect_event(guest);
        assert!(fds.is_empty(), "ChannelLink carries no fds");
        match event {
            ExtEvent::ChannelLink { relid: r, link } if r == relid => link,
            other => panic!("expected ChannelLink for relid {relid}, got {other:?}"),
        }
    }

    #[track_caller]
    fn expect_link_closed(&mut self, to: ClientId, link: u64) {
        let (event, fds) = self.expect_event(to);
        assert!(fds.is_empty(), "LinkClosed carries no fds");
        assert_eq!(event, ExtEvent::LinkClosed { link });
    }

    #[track_caller]
    fn expect_nothing(&mut self) {
        if let Some(action) = self.next() {
            panic!("expected no action, got {action:?}");
        }
    }

    #[track_caller]
    fn expect_offer(&mut self, to: ClientId) -> OfferChannel {
        match self.expect_vmbus(to) {
            Message::OfferChannel(o) => o,
            other => panic!("expected OFFERCHANNEL, got {other:?}"),
        }
    }

    #[track_caller]
    fn expect_rescind(&mut self, to: ClientId, relid: u32) {
        assert_eq!(
            self.expect_vmbus(to),
            Message::RescindChannelOffer { child_relid: relid }
        );
    }

    #[track_caller]
    fn expect_ok(&mut self, to: ClientId) {
        let (event, _) = self.expect_event(to);
        match event {
            ExtEvent::HostListenResult { error: None, .. }
            | ExtEvent::GuestListenResult { error: None, .. } => {}
            other => panic!("expected a successful listen, got {other:?}"),
        }
    }

    // ---- state constructors ----

    /// A host process listening on [`service`] for all VMs.
    fn listening_host(&mut self) -> ClientId {
        let host = self.host();
        self.ext(
            host,
            ExtRequest::HostListen {
                service_id: service(),
                vm_id: Guid::ZERO,
            },
        );
        self.expect_ok(host);
        host
    }

    /// A guest process listening on vsock port [`SERVICE_PORT`].
    fn listening_guest(&mut self) -> ClientId {
        let guest = self.guest();
        self.ext(guest, ExtRequest::GuestListen { port: SERVICE_PORT });
        self.expect_ok(guest);
        guest
    }

    /// Guest-initiated: TL_CONNECT_REQUEST answered by an offer.
    #[track_caller]
    fn offered_by_guest(&mut self) -> Setup {
        let host = self.listening_host();
        let guest = self.guest();
        self.offer_to(host, guest, GUEST_PORT)
    }

    #[track_caller]
    fn offer_to(&mut self, host: ClientId, guest: ClientId, port: u32) -> Setup {
        self.vmbus(guest, tl_connect(port, SERVICE_PORT));
        let offer = self.expect_offer(guest);
        assert_eq!(offer.if_type, service());
        assert_eq!(offer.if_instance, Guid::from_vsock_port(port));
        assert!(!offer.hvsock_params().unwrap().is_for_guest_accept);
        self.expect_nothing();
        Setup {
            host,
            guest,
            relid: offer.child_relid,
            request: 0,
            from_host: false,
            endpoint: Guid::from_vsock_port(port),
            listener_vm_id: Guid::ZERO,
        }
    }

    /// Host-initiated: HostConnect answered by an offer to the listening
    /// guest.
    #[track_caller]
    fn offered_by_host(&mut self) -> Setup {
        let guest = self.listening_guest();
        let host = self.host();
        self.host_connect_to(host, guest, 7)
    }

    /// A host connect to service() in alpha (by id) that must fail at once:
    /// how it failed and the message.
    #[track_caller]
    fn host_connect_failure(&mut self, host: ClientId, request: u64) -> (ConnectFailure, String) {
        let vm_id = self.alpha;
        self.ext(
            host,
            ExtRequest::HostConnect {
                request,
                vm_id,
                vm_name: None,
                service_id: service(),
            },
        );
        match self.expect_event(host).0 {
            ExtEvent::HostConnectFailed {
                request: answered,
                failure,
                message,
            } => {
                assert_eq!(answered, request);
                (failure, message)
            }
            other => panic!("expected HostConnectFailed, got {other:?}"),
        }
    }

    #[track_caller]
    fn host_connect_to(&mut self, host: ClientId, guest: ClientId, request: u64) -> Setup {
        self.ext(
            host,
            ExtRequest::HostConnect {
                request,
                vm_id: Guid::ZERO,
                vm_name: Some("alpha".into()),
                service_id: service(),
            },
        );
        let offer = self.expect_offer(guest);
        assert_eq!(offer.if_type, service());
        assert!(offer.if_instance.vsock_port().unwrap() >= FIRST_HOST_PORT);
        assert!(offer.hvsock_params().unwrap().is_for_guest_accept);
        self.expect_nothing();
        Setup {
            host,
            guest,
            relid: offer.child_relid,
            request,
            from_host: true,
            endpoint: Guid::ZERO,
            listener_vm_id: Guid::ZERO,
        }
    }

    /// The guest described its rings (12 pages) with GPADL [`gpadl_handle`].
    #[track_caller]
    fn with_gpadl(&mut self, s: Setup) -> SharedMemory {
        let mem = self.send_gpadl(s);
        self.expect_gpadl_created(s);
        self.expect_nothing();
        mem
    }

    /// The guest sends GPADL_HEADER (with the memfd) and bodies for 12
    /// pages; nothing is read back.
    fn send_gpadl(&mut self, s: Setup) -> SharedMemory {
        let mem = memfd(PAGES);
        let msgs = gpadl_msgs(
            s.relid,
            gpadl_handle(s.relid),
            (0..u64::from(PAGES)).collect(),
        );
        let mut fds = vec![dup(&mem)];
        for m in msgs {
            let f = if matches!(m, Message::GpadlHeader(_)) {
                std::mem::take(&mut fds)
            } else {
                Vec::new()
            };
            self.vmbus_fds(s.guest, m, f);
        }
        mem
    }

    #[track_caller]
    fn expect_gpadl_created(&mut self, s: Setup) {
        assert_eq!(
            self.expect_vmbus(s.guest),
            Message::GpadlCreated {
                child_relid: s.relid,
                gpadl: gpadl_handle(s.relid),
                creation_status: 0
            }
        );
    }

    /// The guest opened the channel: the pair's link is created if it is
    /// their first channel, the guest hears the link then the result, and
    /// the host side gets its event with the memfd only.
    #[track_caller]
    fn opened(&mut self, s: Setup) -> Opened {
        let guest_mem = self.with_gpadl(s);
        self.vmbus(s.guest, open_msg(s.relid, gpadl_handle(s.relid), SPLIT));
        self.expect_open(s, guest_mem)
    }

    /// What [`opened`](Self::opened) checks after the guest's OPENCHANNEL.
    #[track_caller]
    fn expect_open(&mut self, s: Setup, guest_mem: SharedMemory) -> Opened {
        let link = match self.links.get(&(s.guest, s.host)) {
            Some(&link) => link,
            None => self.expect_create_link(s.guest, s.host),
        };
        assert_eq!(self.expect_channel_link(s.guest, s.relid), link);
        assert_eq!(
            self.expect_vmbus(s.guest),
            Message::OpenChannelResult {
                child_relid: s.relid,
                openid: s.relid,
                status: 0
            }
        );
        let (event, host_fds) = self.expect_event(s.host);
        let layout = RingLayout {
            total_pages: PAGES,
            guest_to_host_pages: SPLIT,
        };
        let conn = match event {
            ExtEvent::HostIncoming {
                conn,
                relid,
                link: l_id,
                service_id,
                listener_vm_id,
                vm_id,
                endpoint_id,
                layout: l,
            } if !s.from_host => {
                assert_eq!((relid, l_id), (s.relid, link));
                assert_eq!(service_id, service());
                assert_eq!(listener_vm_id, s.listener_vm_id);
                assert_eq!(vm_id, self.alpha);
                assert_eq!(endpoint_id, s.endpoint);
                assert_eq!(l, layout);
                conn
            }
            ExtEvent::HostConnected {
                request,
                conn,
                relid,
                link: l_id,
                vm_id,
                layout: l,
                ..
            } if s.from_host => {
                assert_eq!((relid, l_id), (s.relid, link));
                assert_eq!(request, s.request);
                assert_eq!(vm_id, self.alpha);
                assert_eq!(l, layout);
                conn
            }
            other => panic!("unexpected host event {other:?}"),
        };
        assert_eq!(host_fds.len(), 1, "only the rings' memfd");
        self.expect_nothing();
        Opened {
            setup: s,
            conn,
            link,
            guest_mem,
            host_fds,
        }
    }

    /// The host closed an open channel: it is rescinded.
    #[track_caller]
    fn rescinded(&mut self, o: &Opened) {
        self.ext(o.setup.host, ExtRequest::HostClose { conn: o.conn });
        self.expect_rescind(o.setup.guest, o.setup.relid);
        self.expect_nothing();
    }

    /// The guest's full teardown after a rescind: CLOSECHANNEL (ignored),
    /// GPADL_TEARDOWN (answered), RELID_RELEASED.
    #[track_caller]
    fn guest_teardown(&mut self, s: Setup) {
        self.vmbus(
            s.guest,
            Message::CloseChannel {
                child_relid: s.relid,
            },
        );
        self.expect_nothing();
        self.vmbus(
            s.guest,
            Message::GpadlTeardown {
                child_relid: s.relid,
                gpadl: gpadl_handle(s.relid),
            },
        );
        assert_eq!(
            self.expect_vmbus(s.guest),
            Message::GpadlTorndown {
                gpadl: gpadl_handle(s.relid)
            }
        );
        self.vmbus(
            s.guest,
            Message::RelidReleased {
                child_relid: s.relid,
            },
        );
        self.expect_nothing();
    }
}

// ---- bring-up ----

#[test]
fn version_negotiation_accepts_the_configured_range_only() {
    let mut h = Harness::new();
    let g = h.connect(Partition::Vm(h.alpha));
    for refused in [0x0006_0000, VERSION_WIN8_1] {
        h.vmbus(g, initiate(refused));
        let Message::VersionResponse(r) = h.expect_vmbus(g) else {
            panic!()
        };
        assert!(!r.version_supported, "{refused:#x}");
    }
    // Still no version: anything else is a violation... after a proper one.
    h.vmbus(g, initiate(VERSION_WIN10_V5));
    let Message::VersionResponse(r) = h.expect_vmbus(g) else {
        panic!()
    };
    assert!(r.version_supported);
    assert_eq!(r.msg_conn_id, 4);
    assert_eq!(Message::VersionResponse(r).encode().len(), 16);
    h.vmbus(g, Message::RequestOffers);
    assert_eq!(h.expect_vmbus(g), Message::AllOffersDelivered);
    // Then what this host does beyond the VMBus sequence.
    let (features, fds) = h.expect_event(g);
    assert!(fds.is_empty());
    assert_eq!(
        features,
        ExtEvent::HostFeatures {
            features: vec![crate::ext::FEATURE_PIPELINED_OPEN.to_string()],
        }
    );

    let g4 = h.connect(Partition::Vm(h.alpha));
    h.vmbus(g4, initiate(VERSION_WIN10));
    let Message::VersionResponse(r) = h.expect_vmbus(g4) else {
        panic!()
    };
    assert!(r.version_supported);
    assert_eq!(r.msg_conn_id, 0);
    // A second INITIATE_CONTACT after agreement is a violation.
    h.vmbus(g4, initiate(VERSION_WIN10));
    assert!(h.expect_disconnect(g4).contains("INITIATE_CONTACT after"));
    h.expect_nothing();
}

#[test]
fn messages_before_a_version_disconnect_the_guest() {
    let mut h = Harness::new();
    let g = h.connect(Partition::Vm(h.alpha));
    h.vmbus(g, Message::RequestOffers);
    let reason = h.expect_disconnect(g);
    assert!(reason.contains("before a VMBus version"), "{reason}");
    // A disconnected client's late datagrams and its Gone are ignored.
    h.vmbus(g, Message::RequestOffers);
    h.gone(g);
    h.expect_nothing();
}

#[test]
fn unknown_vm_partitions_are_refused_at_connect() {
    let mut h = Harness::new();
    let c = h.connect(Partition::Vm(Guid::from_vsock_port(99)));
    assert!(h.expect_disconnect(c).contains("no VM"));
    assert_eq!(h.server.client_count(), 0);
}

// ---- guest-initiated connections ----

#[test]
fn guest_connect_end_to_end_shares_the_rings_with_the_host() {
    let mut h = Harness::new();
    let s = h.offered_by_guest();
    assert_eq!(s.relid, 1);
    let o = h.opened(s);
    // The host's memfd is the guest's memory.
    let host_mem = SharedMemory::from_fd(
        o.host_fds[0].try_clone().unwrap(),
        PAGES as usize * PAGE_SIZE,
    )
    .unwrap();
    let host_map = Mapping::new(&host_mem).unwrap();
    let guest_map = Mapping::new(&o.guest_mem).unwrap();
    guest_map.write(4096 + 8, b"from the guest").unwrap();
    let mut buf = [0u8; 14];
    host_map.read(4096 + 8, &mut buf).unwrap();
    assert_eq!(&buf, b"from the guest");

    h.rescinded(&o);
    h.guest_teardown(s);
    assert_eq!(h.server.channel_count(), 0);
    // The relid is free again.
    let again = h.offer_to(s.host, s.guest, GUEST_PORT + 1);
    assert_eq!(again.relid, 1);
}

#[test]
fn guest_connect_without_listener_is_refused_promptly() {
    let mut h = Harness::new();
    let g = h.guest();
    h.vmbus(g, tl_connect(GUEST_PORT, SERVICE_PORT));
    let Message::TlConnectResult(r) = h.expect_vmbus(g) else {
        panic!()
    };
    assert_eq!(r.status, STATUS_CONNECTION_REFUSED);
    assert_eq!(r.endpoint_id, Guid::from_vsock_port(GUEST_PORT));
    assert_eq!(r.service_id, service());
    // Byte-exact against PROTOCOL.md 7.6.
    let expected: Vec<u8> = [
        &[0x17, 0, 0, 0, 0, 0, 0, 0][..],
        &Guid::from_vsock_port(0x401).to_bytes(),
        &Guid::from_vsock_port(0x1234).to_bytes(),
        &[0x36, 0x02, 0x00, 0xc0],
    ]
    .concat();
    assert_eq!(Message::TlConnectResult(r).encode(), expected);
    h.expect_nothing();
    // 4.0 has no TL_CONNECT_RESULT: nothing is sent.
    let old = h.guest_with_version(VERSION_WIN10);
    h.vmbus(old, tl_connect(GUEST_PORT, SERVICE_PORT));
    h.expect_nothing();
    // From 4.1 on it is.
    let g41 = h.guest_with_version(VERSION_WIN10_V4_1);
    h.vmbus(g41, tl_connect(GUEST_PORT, SERVICE_PORT));
    assert!(matches!(h.expect_vmbus(g41), Message::TlConnectResult(_)));
}

#[test]
fn a_busy_guest_endpoint_is_refused() {
    let mut h = Harness::new();
    let s = h.offered_by_guest();
    let other = h.guest();
    h.vmbus(other, tl_connect(GUEST_PORT, SERVICE_PORT));
    assert!(matches!(h.expect_vmbus(other), Message::TlConnectResult(_)));
    // Once rescinded, the endpoint may connect again.
    h.ext(
        s.host,
        ExtRequest::HostUnlisten {
            service_id: service(),
            vm_id: Guid::ZERO,
        },
    );
    h.server.handle_timeout(h.now + Duration::from_secs(31));
    h.expect_rescind(s.guest, s.relid);
    h.ext(
        s.host,
        ExtRequest::HostListen {
            service_id: service(),
            vm_id: h.alpha,
        },
    );
    h.expect_ok(s.host);
    let again = h.offer_to(s.host, other, GUEST_PORT);
    assert_eq!(again.relid, 2, "relid 1 is not released yet");
}

#[test]
fn host_listener_filters_exact_vm_before_wildcards() {
    let mut h = Harness::new();
    let wildcard = h.listening_host();
    let exact = h.host();
    h.ext(
        exact,
        ExtRequest::HostListen {
            service_id: service(),
            vm_id: h.alpha,
        },
    );
    h.expect_ok(exact);
    let g = h.guest();
    let s = h.offer_to(exact, g, GUEST_PORT);
    let o = h.opened(Setup {
        listener_vm_id: h.alpha,
        ..s
    });
    let _ = (wildcard, o);
    // A listener for an unknown VM id is refused; CHILDREN is accepted.
    h.ext(
        exact,
        ExtRequest::HostListen {
            service_id: service(),
            vm_id: Guid::from_vsock_port(5),
        },
    );
    let (event, _) = h.expect_event(exact);
    assert!(matches!(
        event,
        ExtEvent::HostListenResult { error: Some(_), .. }
    ));
    h.ext(
        exact,
        ExtRequest::HostListen {
            service_id: Guid::from_vsock_port(9),
            vm_id: Guid::CHILDREN,
        },
    );
    h.expect_ok(exact);
}

#[test]
fn listeners_belong_to_one_process() {
    let mut h = Harness::new();
    let first = h.listening_host();
    let second = h.host();
    h.ext(
        second,
        ExtRequest::HostListen {
            service_id: service(),
            vm_id: Guid::ZERO,
        },
    );
    let (event, _) = h.expect_event(second);
    let ExtEvent::HostListenResult { error: Some(e), .. } = event else {
        panic!("{event:?}")
    };
    assert!(e.contains("in use"), "{e}");
    // The same process may repeat itself.
    h.ext(
        first,
        ExtRequest::HostListen {
            service_id: service(),
            vm_id: Guid::ZERO,
        },
    );
    h.expect_ok(first);

    let g1 = h.listening_guest();
    let g2 = h.guest();
    h.ext(g2, ExtRequest::GuestListen { port: SERVICE_PORT });
    let (event, _) = h.expect_event(g2);
    assert!(matches!(
        event,
        ExtEvent::GuestListenResult { error: Some(_), .. }
    ));
    // Once the first unlistens, the second may.
    h.ext(g1, ExtRequest::GuestUnlisten { port: SERVICE_PORT });
    h.ext(g2, ExtRequest::GuestListen { port: SERVICE_PORT });
    h.expect_ok(g2);
}

// ---- host-initiated connections ----

#[test]
fn host_connect_end_to_end() {
    let mut h = Harness::new();
    let s = h.offered_by_host();
    let o = h.opened(s);
    let host_mem = SharedMemory::from_fd(
        o.host_fds[0].try_clone().unwrap(),
        PAGES as usize * PAGE_SIZE,
    )
    .unwrap();
    Mapping::new(&host_mem)
        .unwrap()
        .write(7 * 4096, b"from the host")
        .unwrap();
    let mut buf = [0u8; 13];
    Mapping::new(&o.guest_mem)
        .unwrap()
        .read(7 * 4096, &mut buf)
        .unwrap();
    assert_eq!(&buf, b"from the host");
    // The guest closes first: the host hears at once, the channel is
    // rescinded.
    h.vmbus(
        s.guest,
        Message::CloseChannel {
            child_relid: s.relid,
        },
    );
    let (event, _) = h.expect_event(s.host);
    assert!(matches!(event, ExtEvent::HostRevoked { conn, .. } if conn == o.conn));
    h.expect_rescind(s.guest, s.relid);
    h.expect_nothing();
    // The host's late close is harmless.
    h.ext(s.host, ExtRequest::HostClose { conn: o.conn });
    h.expect_nothing();
    h.guest_teardown(s);
}

#[test]
fn host_connect_refusals() {
    let mut h = Harness::new();
    let host = h.host();
    let expect_failure = |h: &mut Harness, request: ExtRequest, want: ConnectFailure| {
        h.ext(host, request);
        let (event, _) = h.expect_event(host);
        match event {
            ExtEvent::HostConnectFailed { failure, .. } => assert_eq!(failure, want),
            other => panic!("{other:?}"),
        }
        h.expect_nothing();
    };
    let connect = |vm_name: Option<&str>, vm_id: Guid, service_id: Guid| ExtRequest::HostConnect {
        request: 1,
        vm_id,
        vm_name: vm_name.map(Into::into),
        service_id,
    };
    expect_failure(
        &mut h,
        connect(Some("nope"), Guid::ZERO, service()),
        ConnectFailure::NoSuchVm,
    );
    expect_failure(
        &mut h,
        connect(None, Guid::from_vsock_port(3), service()),
        ConnectFailure::NoSuchVm,
    );
    let alpha = h.alpha;
    expect_failure(
        &mut h,
        connect(None, alpha, Guid::CHILDREN),
        ConnectFailure::Refused,
    );
    expect_failure(
        &mut h,
        connect(None, alpha, service()),
        ConnectFailure::Refused,
    );
}

#[test]
fn a_guest_refuses_an_offer_by_releasing_it() {
    let mut h = Harness::new();
    let s = h.offered_by_host();
    h.vmbus(
        s.guest,
        Message::RelidReleased {
            child_relid: s.relid,
        },
    );
    let (event, _) = h.expect_event(s.host);
    assert!(matches!(
        event,
        ExtEvent::HostConnectFailed {
            request: 7,
            failure: ConnectFailure::Refused,
            ..
        }
    ));
    h.expect_nothing();
    assert_eq!(h.server.channel_count(), 0);
    let again = h.host_connect_to(s.host, s.guest, 8);
    assert_eq!(again.relid, s.relid);
}

#[test]
fn host_endpoint_ports_count_up_from_0x80000000() {
    let mut h = Harness::new();
    let guest = h.listening_guest();
    let host = h.host();
    for i in 0..3u32 {
        h.ext(
            host,
            ExtRequest::HostConnect {
                request: u64::from(i),
                vm_id: h.alpha,
                vm_name: None,
                service_id: service(),
            },
        );
        let offer = h.expect_offer(guest);
        assert_eq!(
            offer.if_instance,
            Guid::from_vsock_port(FIRST_HOST_PORT + i)
        );
    }
    // A duplicate request id in progress is invalid.
    assert_eq!(h.host_connect_failure(host, 1).0, ConnectFailure::Invalid);
}

#[test]
fn host_cancel_rescinds_the_offer() {
    let mut h = Harness::new();
    let s = h.offered_by_host();
    let _mem = h.with_gpadl(s);
    h.ext(s.host, ExtRequest::HostCancel { request: s.request });
    h.expect_rescind(s.guest, s.relid);
    h.expect_nothing();
    // The guest's open after the rescind is ignored.
    h.vmbus(s.guest, open_msg(s.relid, 0xE1E10, SPLIT));
    h.expect_nothing();
    h.guest_teardown(s);
}

// ---- timeouts ----

#[test]
fn unopened_offers_time_out() {
    let mut h = Harness::new();
    let s = h.offered_by_host();
    let deadline = h.now + Duration::from_secs(30);
    assert_eq!(h.server.next_timeout(), Some(deadline));
    h.server.handle_timeout(deadline - Duration::from_millis(1));
    h.expect_nothing();
    h.server.handle_timeout(deadline);
    let (event, _) = h.expect_event(s.host);
    assert!(matches!(
        event,
        ExtEvent::HostConnectFailed {
            failure: ConnectFailure::TimedOut,
            ..
        }
    ));
    h.expect_rescind(s.guest, s.relid);
    h.expect_nothing();
    assert_eq!(h.server.next_timeout(), None);
    // The relid stays taken until released.
    let s2 = h.host_connect_to(s.host, s.guest, 8);
    assert_ne!(s2.relid, s.relid);
    h.vmbus(
        s.guest,
        Message::RelidReleased {
            child_relid: s.relid,
        },
    );
    h.expect_nothing();
    let s3 = h.host_connect_to(s.host, s.guest, 9);
    assert_eq!(s3.relid, s.relid);
}

#[test]
fn guest_offers_time_out_quietly_and_open_channels_never_do() {
    let mut h = Harness::with_config(ServerConfig {
        offer_timeout: Duration::from_secs(5),
        ..ServerConfig::default()
    });
    let s = h.offered_by_guest();
    let g2 = h.guest();
    let open = h.offer_to(s.host, g2, GUEST_PORT + 1);
    let _o = h.opened(open);
    h.server.handle_timeout(h.now + Duration::from_secs(5));
    h.expect_rescind(s.guest, s.relid);
    h.expect_nothing();
    h.server.handle_timeout(h.now + Duration::from_secs(3600));
    h.expect_nothing();
}

// ---- rescind in every state ----

#[test]
fn host_close_at_every_state() {
    // Offered (host connect): cancel. With a GPADL: cancel. Open: close.
    for stage in 0..3 {
        let mut h = Harness::new();
        let s = h.offered_by_host();
        let _mem;
        match stage {
            0 => h.ext(s.host, ExtRequest::HostCancel { request: s.request }),
            1 => {
                _mem = h.with_gpadl(s);
                h.ext(s.host, ExtRequest::HostCancel { request: s.request });
            }
            _ => {
                let o = h.opened(s);
                h.ext(s.host, ExtRequest::HostClose { conn: o.conn });
            }
        }
        h.expect_rescind(s.guest, s.relid);
        h.expect_nothing();
        // After the rescind: CLOSECHANNEL and OPENCHANNEL are ignored.
        h.vmbus(
            s.guest,
            Message::CloseChannel {
                child_relid: s.relid,
            },
        );
        h.vmbus(s.guest, open_msg(s.relid, 0xE1E10, SPLIT));
        h.expect_nothing();
        if stage > 0 {
            h.vmbus(
                s.guest,
                Message::GpadlTeardown {
                    child_relid: s.relid,
                    gpadl: 0xE1E10,
                },
            );
            assert_eq!(
                h.expect_vmbus(s.guest),
                Message::GpadlTorndown { gpadl: 0xE1E10 }
            );
        }
        h.vmbus(
            s.guest,
            Message::RelidReleased {
                child_relid: s.relid,
            },
        );
        h.expect_nothing();
        assert_eq!(h.server.channel_count(), 0, "stage {stage}");
    }
}

#[test]
fn a_gpadl_for_a_rescinded_channel_fails() {
    let mut h = Harness::new();
    let s = h.offered_by_host();
    h.ext(s.host, ExtRequest::HostCancel { request: s.request });
    h.expect_rescind(s.guest, s.relid);
    let mem = memfd(PAGES);
    let msgs = gpadl_msgs(s.relid, 0xE1E10, (0..u64::from(PAGES)).collect());
    h.vmbus_fds(s.guest, msgs[0].clone(), vec![dup(&mem)]);
    assert!(matches!(
        h.expect_vmbus(s.guest),
        Message::GpadlCreated {
            creation_status: STATUS_UNSUCCESSFUL,
            ..
        }
    ));
}

// ---- client death in every state ----

#[test]
fn guest_death_at_every_state() {
    for stage in 0..3 {
        let mut h = Harness::new();
        let s = h.offered_by_host();
        let _keep;
        let mut link = None;
        match stage {
            0 => {}
            1 => _keep = Some(h.with_gpadl(s)),
            _ => {
                let o = h.opened(s);
                link = Some(o.link);
                _keep = Some(o.guest_mem);
            }
        }
        h.gone(s.guest);
        let (event, _) = h.expect_event(s.host);
        match (stage, event) {
            (0 | 1, ExtEvent::HostConnectFailed { request: 7, .. }) => {}
            (2, ExtEvent::HostRevoked { .. }) => {}
            (_, other) => panic!("stage {stage}: {other:?}"),
        }
        // A link exists once a channel opened; it closes after the channels.
        if let Some(link) = link {
            h.expect_link_closed(s.host, link);
        }
        h.expect_nothing();
        // Its relids are free at once and its listeners are gone.
        assert_eq!(h.server.channel_count(), 0);
        assert_eq!(h.host_connect_failure(s.host, 8).0, ConnectFailure::Refused);
        let g = h.listening_guest();
        let again = h.host_connect_to(s.host, g, 9);
        assert_eq!(again.relid, 1);
    }
}

#[test]
fn host_death_at_every_state() {
    for (stage, from_host) in [(0, false), (1, false), (2, false), (0, true), (2, true)] {
        let mut h = Harness::new();
        let s = if from_host {
            h.offered_by_host()
        } else {
            h.offered_by_guest()
        };
        let _keep;
        let mut link = None;
        match stage {
            0 => {}
            1 => _keep = Some(h.with_gpadl(s)),
            _ => {
                let o = h.opened(s);
                link = Some(o.link);
                _keep = Some(o.guest_mem);
            }
        }
        h.gone(s.host);
        h.expect_rescind(s.guest, s.relid);
        if let Some(link) = link {
            h.expect_link_closed(s.guest, link);
        }
        h.expect_nothing();
        // Its listeners are gone: a new guest connect is refused.
        if !from_host {
            h.vmbus(s.guest, tl_connect(GUEST_PORT + 1, SERVICE_PORT));
            assert!(matches!(
                h.expect_vmbus(s.guest),
                Message::TlConnectResult(_)
            ));
        }
        // The guest still releases the relid normally.
        h.vmbus(
            s.guest,
            Message::RelidReleased {
                child_relid: s.relid,
            },
        );
        h.expect_nothing();
        assert_eq!(h.server.channel_count(), 0);
    }
}

#[test]
fn unload_rescinds_everything_and_resets_the_session() {
    let mut h = Harness::new();
    let s = h.offered_by_host();
    let o = h.opened(s);
    let host = s.host;
    let s2 = h.host_connect_to(host, s.guest, 8);
    h.vmbus(s.guest, Message::Unload);
    let (e1, _) = h.expect_event(host);
    assert!(matches!(e1, ExtEvent::HostRevoked { conn, .. } if conn == o.conn));
    h.expect_rescind(s.guest, s.relid);
    let (e2, _) = h.expect_event(host);
    assert!(matches!(e2, ExtEvent::HostConnectFailed { request: 8, .. }));
    h.expect_rescind(s.guest, s2.relid);
    assert_eq!(h.expect_vmbus(s.guest), Message::UnloadResponse);
    h.expect_nothing();
    assert_eq!(h.server.channel_count(), 0);
    // It may contact again.
    h.vmbus(s.guest, initiate(VERSION_WIN10_V5));
    assert!(matches!(
        h.expect_vmbus(s.guest),
        Message::VersionResponse(_)
    ));
}

// ---- GPADL and OPENCHANNEL validation ----

#[test]
fn gpadl_validation() {
    let pfns = |n: u64| (0..n).collect::<Vec<u64>>();
    type MakeGpadl = Box<dyn Fn(u32) -> (Vec<Message>, OwnedFd)>;
    let cases: Vec<(&str, MakeGpadl)> = vec![
        (
            "pfns out of order",
            Box::new(move |r| {
                let mut p = pfns(12);
                p.swap(1, 2);
                (gpadl_msgs(r, 5, p), dup(&memfd(12)))
            }),
        ),
        (
            "memfd too small",
            Box::new(move |r| (gpadl_msgs(r, 5, pfns(12)), dup(&memfd(4)))),
        ),
        (
            "not sealed",
            Box::new(move |r| {
                let fd = rustix::fs::memfd_create("x", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
                rustix::fs::ftruncate(&fd, 12 * 4096).unwrap();
                (gpadl_msgs(r, 5, pfns(12)), fd)
            }),
        ),
        (
            "not a memfd",
            Box::new(move |r| {
                (
                    gpadl_msgs(r, 5, pfns(12)),
                    EventFd::new().unwrap().into_fd(),
                )
            }),
        ),
        (
            "byte offset",
            Box::new(move |r| {
                let mut g = Gpadl::ring(r, 5, pfns(12));
                g.byte_offset = 16;
                g.byte_count -= 16;
                (g.to_messages().unwrap(), dup(&memfd(12)))
            }),
        ),
        (
            "wrong relid",
            Box::new(move |r| (gpadl_msgs(r + 100, 5, pfns(12)), dup(&memfd(12)))),
        ),
    ];
    for (what, make) in cases {
        let mut h = Harness::new();
        let s = h.offered_by_host();
        let (msgs, fd) = make(s.relid);
        let mut fd = Some(fd);
        for m in msgs {
            let fds = if matches!(m, Message::GpadlHeader(_)) {
                fd.take().into_iter().collect()
            } else {
                Vec::new()
            };
            h.vmbus_fds(s.guest, m, fds);
        }
        match h.expect_vmbus(s.guest) {
            Message::GpadlCreated {
                creation_status, ..
            } => assert_eq!(creation_status, STATUS_UNSUCCESSFUL, "{what}"),
            other => panic!("{what}: {other:?}"),
        }
        h.expect_nothing();
        // The channel may still get a good GPADL.
        let _mem = h.with_gpadl(s);
    }
}

#[test]
fn an_openchannel_right_behind_its_gpadl_opens_after_gpadl_created() {
    // FEATURE_PIPELINED_OPEN: GPADL_CREATED first, then what an open sends.
    for from_host in [false, true] {
        let mut h = Harness::new();
        let s = if from_host {
            h.offered_by_host()
        } else {
            h.offered_by_guest()
        };
        let mem = h.send_gpadl(s);
        h.vmbus(s.guest, open_msg(s.relid, gpadl_handle(s.relid), SPLIT));
        h.expect_gpadl_created(s);
        let o = h.expect_open(s, mem);
        h.rescinded(&o);
    }
    // Behind a GPADL that failed, the open fails too.
    let mut h = Harness::new();
    let s = h.offered_by_host();
    let msgs = gpadl_msgs(s.relid, 5, (0..u64::from(PAGES)).collect());
    let mut fd = Some(dup(&memfd(4)));
    for m in msgs {
        h.vmbus_fds(s.guest, m, fd.take().into_iter().collect());
    }
    h.vmbus(s.guest, open_msg(s.relid, 5, SPLIT));
    assert!(matches!(
        h.expect_vmbus(s.guest),
        Message::GpadlCreated { creation_status, .. } if creation_status == STATUS_UNSUCCESSFUL
    ));
    assert!(matches!(
        h.expect_vmbus(s.guest),
        Message::OpenChannelResult { status, .. } if status == STATUS_UNSUCCESSFUL
    ));
    h.expect_nothing();
    // The offer stands: a good GPADL and open still work.
    let _o = h.opened(s);
}

/// A real [`GuestClient`](crate::client::GuestClient) that has agreed a
/// version and holds the offer of `s`, pipelining its opens or not.
fn real_client(s: Setup, offer: OfferChannel, pipelined: bool) -> crate::client::GuestClient {
    use crate::messages::{VersionResponse, VersionResponseExt};
    let mut client = crate::client::GuestClient::new();
    client.start();
    client
        .handle(Message::VersionResponse(VersionResponse {
            version_supported: true,
            connection_state: 0,
            msg_conn_id: 4,
            ext: VersionResponseExt::None,
        }))
        .unwrap();
    client.handle(Message::AllOffersDelivered).unwrap();
    client.handle(Message::OfferChannel(offer)).unwrap();
    assert_eq!(client.channel_count(), 1, "relid {}", s.relid);
    while client.poll_output().is_some() {}
    client.set_pipelined_open(pipelined);
    client
}

/// Passes messages between `client` and the server until neither has more;
/// returns the client's events and the guest's disconnection, if any.
fn drive(
    h: &mut Harness,
    guest: ClientId,
    client: &mut crate::client::GuestClient,
) -> (Vec<crate::client::Event>, Option<String>) {
    use crate::client::Output;
    let (mut events, mut dropped) = (Vec::new(), None);
    loop {
        let mut moved = false;
        while let Some(output) = client.poll_output() {
            moved = true;
            match output {
                Output::Send { message, fds } => {
                    let fds = fds.iter().map(|f| f.as_fd().try_clone_to_owned().unwrap());
                    h.vmbus_fds(guest, message, fds.collect());
                }
                Output::Event(e) => events.push(e),
            }
        }
        while let Some(action) = h.next() {
            moved = true;
            match action {
                Action::Send {
                    client: c, bytes, ..
                } if c == guest => {
                    if let Ok(Datagram::Vmbus(m)) = Datagram::<ExtEvent>::decode(&bytes) {
                        client.handle(m).expect("the server keeps the protocol");
                    }
                }
                Action::Disconnect { client: c, reason } if c == guest => dropped = Some(reason),
                _ => {}
            }
        }
        if !moved {
            return (events, dropped);
        }
    }
}

#[test]
fn a_client_that_abandons_an_open_stays_connected_and_frees_the_channel() {
    // The client closes right after opening, before any answer, on rings
    // the host refuses (a memfd too small) or accepts; in both orders.
    for pipelined in [false, true] {
        for good_rings in [false, true] {
            let mut h = Harness::new();
            let s = h.offered_by_host();
            let offer = OfferChannel::hvsock(
                s.relid,
                service(),
                s.endpoint,
                &crate::messages::HvsockParams {
                    is_for_guest_accept: true,
                    ..Default::default()
                },
            );
            let mut client = real_client(s, offer, pipelined);
            let mem = memfd(if good_rings { PAGES } else { 4 });
            let layout = RingLayout {
                total_pages: PAGES,
                guest_to_host_pages: SPLIT,
            };
            client.open(s.relid, Arc::new(dup(&mem)), layout).unwrap();
            client.close(s.relid).unwrap();
            let (events, dropped) = drive(&mut h, s.guest, &mut client);
            let case = format!("pipelined {pipelined}, good rings {good_rings}");
            assert_eq!(dropped, None, "{case}");
            assert!(
                events
                    .iter()
                    .any(|e| matches!(e, crate::client::Event::Released { .. })),
                "{case}: {events:?}"
            );
            assert_eq!(client.channel_count(), 0, "{case}");
            assert_eq!(h.server.channel_count(), 0, "{case}");
        }
    }
}

#[test]
fn a_host_connect_whose_open_failed_is_told_why_when_the_guest_gives_it_back() {
    let mut h = Harness::new();
    let s = h.offered_by_host();
    let _mem = h.with_gpadl(s);
    // A ring split the server refuses.
    h.vmbus(s.guest, open_msg(s.relid, gpadl_handle(s.relid), 1));
    assert!(matches!(
        h.expect_vmbus(s.guest),
        Message::OpenChannelResult { status, .. } if status == STATUS_UNSUCCESSFUL
    ));
    // The guest tears its GPADL down and refuses the offer.
    h.vmbus(
        s.guest,
        Message::GpadlTeardown {
            child_relid: s.relid,
            gpadl: gpadl_handle(s.relid),
        },
    );
    assert_eq!(
        h.expect_vmbus(s.guest),
        Message::GpadlTorndown {
            gpadl: gpadl_handle(s.relid)
        }
    );
    h.vmbus(
        s.guest,
        Message::RelidReleased {
            child_relid: s.relid,
        },
    );
    match h.expect_event(s.host).0 {
        ExtEvent::HostConnectFailed {
            request,
            failure,
            message,
        } => {
            assert_eq!((request, failure), (s.request, ConnectFailure::Refused));
            assert!(message.contains("open of the channel failed"), "{message}");
            assert!(message.contains("ring split"), "{message}");
        }
        other => panic!("expected HostConnectFailed, got {other:?}"),
    }
    h.expect_nothing();
    assert_eq!(h.server.channel_count(), 0);
}

#[test]
fn a_large_gpadl_arrives_in_bodies() {
    let mut h = Harness::new();
    let s = h.offered_by_host();
    let pages = 100u32;
    let mem = memfd(pages);
    let msgs = gpadl_msgs(s.relid, 9, (0..u64::from(pages)).collect());
    assert!(msgs.len() > 3);
    let mut fd = Some(dup(&mem));
    for m in msgs {
        let fds = fd.take().into_iter().collect();
        h.vmbus_fds(s.guest, m, fds);
        // Only the header carries the fd; no answer before the last body.
    }
    assert!(matches!(
        h.expect_vmbus(s.guest),
        Message::GpadlCreated {
            creation_status: 0,
            gpadl: 9,
            ..
        }
    ));
    // A duplicate handle on another channel fails.
    let s2 = h.host_connect_to(s.host, s.guest, 8);
    h.vmbus_fds(
        s.guest,
        gpadl_msgs(s2.relid, 9, vec![0, 1, 2, 3])[0].clone(),
        vec![dup(&memfd(4))],
    );
    assert!(matches!(
        h.expect_vmbus(s.guest),
        Message::GpadlCreated {
            creation_status: STATUS_UNSUCCESSFUL,
            ..
        }
    ));
    // Open with 50 + 50 pages.
    h.vmbus(s.guest, open_msg(s.relid, 9, 50));
    let link = h.expect_create_link(s.guest, s.host);
    assert_eq!(h.expect_channel_link(s.guest, s.relid), link);
    assert!(matches!(
        h.expect_vmbus(s.guest),
        Message::OpenChannelResult { status: 0, .. }
    ));
    let (event, _) = h.expect_event(s.host);
    assert!(matches!(
        event,
        ExtEvent::HostConnected {
            layout: RingLayout {
                total_pages: 100,
                guest_to_host_pages: 50
            },
            ..
        }
    ));
}

#[test]
fn openchannel_validation() {
    for (gpadl, split) in [
        (0xE1E10, 0),
        (0xE1E10, 1),
        (0xE1E10, 11),
        (0xE1E10, 12),
        (0xE1E10, 99),
        (0x1, 6),
    ] {
        let mut h = Harness::new();
        let s = h.offered_by_guest();
        let _mem = h.with_gpadl(s);
        h.vmbus(s.guest, open_msg(s.relid, gpadl, split));
        assert!(
            matches!(
                h.expect_vmbus(s.guest),
                Message::OpenChannelResult {
                    status: STATUS_UNSUCCESSFUL,
                    ..
                }
            ),
            "gpadl {gpadl:#x} split {split}"
        );
        h.expect_nothing();
    }
    // No GPADL at all.
    let mut h = Harness::new();
    let s = h.offered_by_guest();
    h.vmbus(s.guest, open_msg(s.relid, 0xE1E10, SPLIT));
    assert!(matches!(
        h.expect_vmbus(s.guest),
        Message::OpenChannelResult {
            status: STATUS_UNSUCCESSFUL,
            ..
        }
    ));
    // Open twice: the second is refused, the channel stays open.
    let mut h = Harness::new();
    let s = h.offered_by_guest();
    let o = h.opened(s);
    h.vmbus(s.guest, open_msg(s.relid, 0xE1E10, SPLIT));
    assert!(matches!(
        h.expect_vmbus(s.guest),
        Message::OpenChannelResult {
            status: STATUS_UNSUCCESSFUL,
            ..
        }
    ));
    h.rescinded(&o);
}

#[test]
fn wrong_descriptor_counts_disconnect() {
    let cases: Vec<(Message, usize)> = vec![
        (Message::RequestOffers, 1),
        (gpadl_msgs(1, 5, vec![0, 1, 2, 3])[0].clone(), 0),
        (gpadl_msgs(1, 5, vec![0, 1, 2, 3])[0].clone(), 2),
        (open_msg(1, 5, 2), 1),
        // The older protocol's OPENCHANNEL, with two eventfds.
        (open_msg(1, 5, 2), 2),
    ];
    for (message, n) in cases {
        let mut h = Harness::new();
        let s = h.offered_by_guest();
        let fds = (0..n).map(|_| EventFd::new().unwrap().into_fd()).collect();
        h.vmbus_fds(s.guest, message.clone(), fds);
        let reason = h.expect_disconnect(s.guest);
        assert!(reason.contains("file descriptors"), "{reason}");
        // The host side hears nothing (the channel was only offered) and
        // keeps working.
        h.expect_nothing();
        h.ext(s.host, ExtRequest::VmList);
        assert!(matches!(h.expect_event(s.host).0, ExtEvent::VmList { .. }));
    }
}

#[test]
fn an_openchannel_with_eventfds_disconnects_the_guest_and_says_why() {
    let mut h = Harness::new();
    let s = h.offered_by_guest();
    let _mem = h.with_gpadl(s);
    h.vmbus_fds(s.guest, open_msg(s.relid, 0xE1E10, SPLIT), eventfds());
    let reason = h.expect_disconnect(s.guest);
    assert!(
        reason.contains("came with 2 file descriptors; it must carry 0"),
        "{reason}"
    );
    assert!(
        reason.starts_with("OPENCHANNEL") && reason.contains("link"),
        "{reason}"
    );
    // Nothing opened, so no link was made; the channel just ends.
    h.expect_nothing();
    assert_eq!(h.server.channel_count(), 0);
    assert!(h.server.links.is_empty());
}

#[test]
fn messages_for_channels_of_others_disconnect() {
    let mut h = Harness::new();
    let s = h.offered_by_guest();
    let other = h.guest();
    h.vmbus(
        other,
        Message::CloseChannel {
            child_relid: s.relid,
        },
    );
    assert!(h
        .expect_disconnect(other)
        .contains("not offered to this guest"));
    let other = h.guest();
    h.vmbus(
        other,
        Message::GpadlTeardown {
            child_relid: s.relid,
            gpadl: 1,
        },
    );
    assert!(h.expect_disconnect(other).contains("GPADL_TEARDOWN"));
    let other = h.guest();
    h.vmbus(other, Message::RescindChannelOffer { child_relid: 1 });
    assert!(h.expect_disconnect(other).contains("host-to-guest"));
    h.expect_nothing();
}

// ---- relids ----

#[test]
fn relids_are_reused_only_after_release() {
    let mut h = Harness::new();
    let host = h.listening_host();
    let guest = h.guest();
    let setups: Vec<Setup> = (0..5).map(|i| h.offer_to(host, guest, 2000 + i)).collect();
    assert_eq!(
        setups.iter().map(|s| s.relid).collect::<Vec<_>>(),
        [1, 2, 3, 4, 5]
    );
    // Rescind 2 and 4 (timeouts do it for guest offers).
    h.server.handle_timeout(h.now + Duration::from_secs(30));
    for r in 1..=5 {
        h.expect_rescind(guest, r);
    }
    let s6 = h.offer_to(host, guest, 3000);
    assert_eq!(s6.relid, 6);
    for r in [4, 2] {
        h.vmbus(guest, Message::RelidReleased { child_relid: r });
    }
    assert_eq!(h.offer_to(host, guest, 3001).relid, 2);
    assert_eq!(h.offer_to(host, guest, 3002).relid, 4);
    assert_eq!(h.offer_to(host, guest, 3003).relid, 7);
    // Releasing twice is a violation.
    h.vmbus(guest, Message::RelidReleased { child_relid: 1 });
    h.vmbus(guest, Message::RelidReleased { child_relid: 1 });
    assert!(h.expect_disconnect(guest).contains("RELID_RELEASED"));
}

#[test]
fn a_thousand_channels_at_once() {
    raise_fd_limit();
    let mut h = Harness::new();
    let guest = h.listening_guest();
    let host = h.host();
    let mut conns = std::collections::HashSet::new();
    for i in 0..1000u64 {
        let s = h.host_connect_to(host, guest, i);
        assert_eq!(u64::from(s.relid), i + 1);
        let mem = memfd(4);
        h.vmbus_fds(
            guest,
            gpadl_msgs(s.relid, 0x100 + s.relid, vec![0, 1, 2, 3])[0].clone(),
            vec![dup(&mem)],
        );
        assert!(matches!(
            h.expect_vmbus(guest),
            Message::GpadlCreated {
                creation_status: 0,
                ..
            }
        ));
        h.vmbus(guest, open_msg(s.relid, 0x100 + s.relid, 2));
        // One link for the pair, made by the first open only.
        if i == 0 {
            h.expect_create_link(guest, host);
        }
        let link = h.expect_channel_link(guest, s.relid);
        assert!(matches!(
            h.expect_vmbus(guest),
            Message::OpenChannelResult { status: 0, .. }
        ));
        let (ExtEvent::HostConnected { conn, link: l, .. }, fds) = h.expect_event(host) else {
            panic!()
        };
        assert_eq!(l, link);
        assert_eq!(fds.len(), 1);
        assert!(conns.insert(conn));
    }
    let link = h.links[&(guest, host)];
    let (report, rings) = h.server.stat();
    assert_eq!(report.channels.len(), 1000);
    assert_eq!(rings.len(), 1000);
    assert_eq!(report.vms[0].channels, 1000);
    // The guest dies: every host connection is revoked at once.
    h.gone(guest);
    for _ in 0..1000 {
        assert!(matches!(
            h.expect_event(host).0,
            ExtEvent::HostRevoked { .. }
        ));
    }
    h.expect_link_closed(host, link);
    h.expect_nothing();
    assert_eq!(h.server.channel_count(), 0);
}

#[test]
fn relids_stop_at_the_cap_and_connects_are_refused_cleanly() {
    let mut h = Harness::new();
    h.server.max_relid = 3;
    let guest = h.listening_guest();
    let host = h.listening_host();
    let relids: Vec<u32> = (0..3)
        .map(|i| h.host_connect_to(host, guest, i).relid)
        .collect();
    assert_eq!(relids, [1, 2, 3]);
    // A host connect beyond the cap fails at once, saying why.
    let (failure, message) = h.host_connect_failure(host, 3);
    assert_eq!(failure, ConnectFailure::Refused);
    assert!(message.contains("no relid is free"), "{message}");
    h.expect_nothing();
    // A guest connect beyond the cap is refused with TL_CONNECT_RESULT.
    h.vmbus(guest, tl_connect(GUEST_PORT, SERVICE_PORT));
    let Message::TlConnectResult(r) = h.expect_vmbus(guest) else {
        panic!()
    };
    assert_eq!(r.status, STATUS_CONNECTION_REFUSED);
    h.expect_nothing();
    // Once the guest gives one back, it is handed out again; the cap holds.
    h.vmbus(guest, Message::RelidReleased { child_relid: 2 });
    assert!(matches!(
        h.expect_event(host).0,
        ExtEvent::HostConnectFailed { request: 1, .. }
    ));
    assert_eq!(h.offer_to(host, guest, GUEST_PORT).relid, 2);
    assert_eq!(h.server.alloc_relid(), None);
}

#[test]
fn the_cap_is_max_relid() {
    let mut h = Harness::new();
    assert_eq!(h.server.max_relid, MAX_RELID);
    // Pretend every relid below MAX_RELID is taken.
    h.server.next_relid = MAX_RELID;
    let s = h.offered_by_host();
    assert_eq!(s.relid, MAX_RELID);
    assert_eq!(h.host_connect_failure(s.host, 8).0, ConnectFailure::Refused);
    // Released, MAX_RELID folds back into the counter and comes again.
    h.vmbus(
        s.guest,
        Message::RelidReleased {
            child_relid: MAX_RELID,
        },
    );
    assert!(matches!(
        h.expect_event(s.host).0,
        ExtEvent::HostConnectFailed { request: 7, .. }
    ));
    assert_eq!(h.server.next_relid, MAX_RELID);
    assert_eq!(h.host_connect_to(s.host, s.guest, 9).relid, MAX_RELID);
}

// ---- links ----

#[test]
fn the_first_open_of_a_pair_creates_its_link_before_anything_names_it() {
    let mut h = Harness::new();
    let s = h.offered_by_guest();
    let _mem = h.with_gpadl(s);
    h.vmbus(s.guest, open_msg(s.relid, 0xE1E10, SPLIT));
    // In this order: CreateLink, ChannelLink to the guest, the result, the
    // host's HostIncoming with the memfd only.
    let Some(Action::CreateLink { link, guest, host }) = h.next() else {
        panic!("expected CreateLink first")
    };
    assert_eq!((link, guest, host), (1, s.guest, s.host));
    let (event, fds) = h.expect_event(s.guest);
    assert_eq!(
        event,
        ExtEvent::ChannelLink {
            relid: s.relid,
            link
        }
    );
    assert!(fds.is_empty());
    assert_eq!(
        h.expect_vmbus(s.guest),
        Message::OpenChannelResult {
            child_relid: s.relid,
            openid: s.relid,
            status: 0
        }
    );
    let (event, fds) = h.expect_event(s.host);
    let ExtEvent::HostIncoming { relid, link: l, .. } = event else {
        panic!("{event:?}")
    };
    assert_eq!((relid, l), (s.relid, link));
    assert_eq!(fds.len(), 1);
    SharedMemory::from_fd(fds[0].try_clone().unwrap(), PAGES as usize * PAGE_SIZE)
        .expect("the one fd is the rings' memfd");
    h.expect_nothing();
}

#[test]
fn links_are_per_pair_of_processes() {
    let mut h = Harness::new();
    let host = h.listening_host();
    let guest = h.listening_guest();
    let first = h.offer_to(host, guest, GUEST_PORT);
    let first = h.opened(first);
    // A second channel of the same pair reuses the link (`opened` would
    // fail on a CreateLink it does not expect).
    let second = h.offer_to(host, guest, GUEST_PORT + 1);
    let second = h.opened(second);
    assert_eq!(second.link, first.link);
    // So does one in the other direction.
    let third = h.host_connect_to(host, guest, 1);
    assert_eq!(h.opened(third).link, first.link);
    // Another host process: another link.
    let other_host = h.host();
    let s = h.host_connect_to(other_host, guest, 1);
    let other = h.opened(s);
    assert_ne!(other.link, first.link);
    // Another guest process of the same host: another link again.
    let other_guest = h.guest();
    let s = h.offer_to(host, other_guest, GUEST_PORT + 2);
    let third_link = h.opened(s).link;
    assert!(third_link != first.link && third_link != other.link);
    assert_eq!(h.server.links.len(), 3);
    // Channels ending does not end the link: it lasts as long as the pair.
    h.rescinded(&first);
    h.guest_teardown(first.setup);
    h.rescinded(&second);
    h.guest_teardown(second.setup);
    let again = h.offer_to(host, guest, GUEST_PORT + 3);
    assert_eq!(h.opened(again).link, first.link);
    // A failed open makes no link.
    let lonely = h.guest();
    let s = h.offer_to(host, lonely, GUEST_PORT + 4);
    h.vmbus(lonely, open_msg(s.relid, 0xE1E10, SPLIT));
    assert!(matches!(
        h.expect_vmbus(lonely),
        Message::OpenChannelResult {
            status: STATUS_UNSUCCESSFUL,
            ..
        }
    ));
    h.expect_nothing();
    assert_eq!(h.server.links.len(), 3);
}

#[test]
fn a_host_process_leaving_closes_its_links_for_the_guests() {
    let mut h = Harness::new();
    let host = h.listening_host();
    let other_host = h.host();
    let g1 = h.listening_guest();
    let g2 = h.guest();
    let a = h.offer_to(host, g1, GUEST_PORT);
    let a = h.opened(a);
    let b = h.offer_to(host, g2, GUEST_PORT + 1);
    let b = h.opened(b);
    let c = h.host_connect_to(other_host, g1, 1);
    let c = h.opened(c);
    h.gone(host);
    // Channels end first, then each guest hears its link is closed.
    h.expect_rescind(g1, a.setup.relid);
    h.expect_rescind(g2, b.setup.relid);
    h.expect_link_closed(g1, a.link);
    h.expect_link_closed(g2, b.link);
    h.expect_nothing();
    assert_eq!(h.server.links.len(), 1);
    // The other host's link with g1 is untouched: its channel still works
    // and new ones reuse the link.
    let d = h.host_connect_to(other_host, g1, 2);
    assert_eq!(h.opened(d).link, c.link);
}

#[test]
fn a_guest_process_leaving_closes_its_links_for_the_hosts() {
    let mut h = Harness::new();
    let h1 = h.listening_host();
    let h2 = h.host();
    let guest = h.listening_guest();
    let other_guest = h.guest();
    let a = h.offer_to(h1, guest, GUEST_PORT);
    let a = h.opened(a);
    let b = h.host_connect_to(h2, guest, 1);
    let b = h.opened(b);
    let c = h.offer_to(h1, other_guest, GUEST_PORT + 1);
    let c = h.opened(c);
    // Disconnected for breaking the protocol: the same as leaving.
    h.vmbus(guest, Message::RescindChannelOffer { child_relid: 1 });
    for (host, o) in [(h1, &a), (h2, &b)] {
        let (event, _) = h.expect_event(host);
        assert!(matches!(event, ExtEvent::HostRevoked { conn, .. } if conn == o.conn));
    }
    h.expect_link_closed(h1, a.link);
    h.expect_link_closed(h2, b.link);
    assert!(h.expect_disconnect(guest).contains("host-to-guest"));
    h.expect_nothing();
    // The other guest's link with h1 stays.
    assert_eq!(h.server.links.len(), 1);
    let d = h.offer_to(h1, other_guest, GUEST_PORT + 2);
    assert_eq!(h.opened(d).link, c.link);
    // Link ids are not reused.
    let g3 = h.guest();
    let e = h.offer_to(h1, g3, GUEST_PORT + 3);
    assert_eq!(h.opened(e).link, 4);
}

// ---- administration ----

#[test]
fn admin_requests_need_the_host_socket() {
    let mut h = Harness::new();
    let g = h.guest();
    for request in [
        ExtRequest::VmAdd {
            name: "beta".into(),
            id: None,
        },
        ExtRequest::VmRemove {
            name: "alpha".into(),
        },
        ExtRequest::Stat,
    ] {
        h.ext(g, request);
        assert!(matches!(h.expect_event(g).0, ExtEvent::Refused { .. }));
    }
    let host = h.host();
    h.ext(
        host,
        ExtRequest::VmAdd {
            name: "beta".into(),
            id: None,
        },
    );
    let Some(Action::VmAdded { vm }) = h.next() else {
        panic!()
    };
    assert_eq!(vm.name, "beta");
    assert_eq!(vm.cid, 4);
    assert_eq!(vm.id, derived_vm_id("beta"));
    let (event, _) = h.expect_event(host);
    assert!(matches!(
        event,
        ExtEvent::VmResult {
            vm: Some(_),
            error: None
        }
    ));
    // A guest sees only its own VM.
    h.ext(g, ExtRequest::VmList);
    let ExtEvent::VmList { vms } = h.expect_event(g).0 else {
        panic!()
    };
    assert_eq!(vms.len(), 1);
    assert_eq!(vms[0].name, "alpha");
    assert_eq!(vms[0].processes, 1);
    h.ext(host, ExtRequest::VmList);
    let ExtEvent::VmList { vms } = h.expect_event(host).0 else {
        panic!()
    };
    assert_eq!(vms.iter().map(|v| v.cid).collect::<Vec<_>>(), [3, 4]);
    // Errors are answered, not fatal.
    for request in [
        ExtRequest::VmAdd {
            name: "beta".into(),
            id: None,
        },
        ExtRequest::VmAdd {
            name: "bad name!".into(),
            id: None,
        },
        ExtRequest::VmAdd {
            name: "gamma".into(),
            id: Some(Guid::CHILDREN),
        },
        ExtRequest::VmRemove {
            name: "nope".into(),
        },
    ] {
        h.ext(host, request);
        assert!(matches!(
            h.expect_event(host).0,
            ExtEvent::VmResult {
                vm: None,
                error: Some(_)
            }
        ));
    }
    h.ext(host, ExtRequest::Stat);
    let Some(Action::Stat { client, report, .. }) = h.next() else {
        panic!()
    };
    assert_eq!(client, host);
    assert_eq!(report.vms.len(), 2);
    assert_eq!(report.processes.len(), 2);
}

#[test]
fn removing_a_vm_ends_its_channels_and_disconnects_its_processes() {
    let mut h = Harness::new();
    let s = h.offered_by_host();
    let o = h.opened(s);
    let s2 = h.host_connect_to(s.host, s.guest, 8);
    let exact = h.host();
    h.ext(
        exact,
        ExtRequest::HostListen {
            service_id: service(),
            vm_id: h.alpha,
        },
    );
    h.expect_ok(exact);
    h.ext(
        s.host,
        ExtRequest::VmRemove {
            name: "alpha".into(),
        },
    );
    let (e, _) = h.expect_event(s.host);
    assert!(matches!(e, ExtEvent::HostRevoked { conn, .. } if conn == o.conn));
    let (e, _) = h.expect_event(s.host);
    assert!(matches!(e, ExtEvent::HostConnectFailed { request, .. } if request == s2.request));
    // The guest process goes with its VM, and its link with it.
    h.expect_link_closed(s.host, o.link);
    assert!(h.expect_disconnect(s.guest).contains("removed"));
    assert!(matches!(h.next(), Some(Action::VmRemoved { name, .. }) if name == "alpha"));
    assert!(matches!(
        h.expect_event(s.host).0,
        ExtEvent::VmResult { vm: Some(_), .. }
    ));
    h.expect_nothing();
    assert_eq!(h.server.channel_count(), 0);
    assert!(h.server.vms().is_empty());
    // The name may come back, with the same derived id.
    let again = h.server.add_vm("alpha", None).unwrap();
    assert_eq!(again.id, h.alpha);
}

#[test]
fn derived_ids_are_stable_and_distinct() {
    assert_eq!(derived_vm_id("alpha"), derived_vm_id("alpha"));
    assert_ne!(derived_vm_id("alpha"), derived_vm_id("beta"));
    assert_eq!(derived_vm_id("alpha").data3() >> 12, 8);
    let mut s = Server::new(ServerConfig::default());
    s.add_vm("a", Some(Guid::from_vsock_port(1))).unwrap();
    assert!(matches!(
        s.add_vm("b", Some(Guid::from_vsock_port(1))),
        Err(VmError::IdInUse { .. })
    ));
    assert!(matches!(
        s.add_vm(&"x".repeat(65), None),
        Err(VmError::InvalidName { .. })
    ));
    assert!(matches!(
        s.add_vm("", None),
        Err(VmError::InvalidName { .. })
    ));
}

// ---- garbage ----

#[test]
fn garbage_disconnects_only_the_sender() {
    let mut h = Harness::new();
    let s = h.offered_by_guest();
    let o = h.opened(s);
    let bad_guest = h.guest();
    h.datagram(bad_guest, vec![1, 2, 3], Vec::new());
    assert!(h.expect_disconnect(bad_guest).contains("undecodable"));
    let bad_host = h.host();
    h.vmbus(bad_host, Message::RequestOffers);
    assert!(h
        .expect_disconnect(bad_host)
        .contains("only guests speak VMBus"));
    let bad_host = h.host();
    h.datagram(bad_host, encode_ext(&ExtRequest::VmList), eventfds());
    assert!(h.expect_disconnect(bad_host).contains("file descriptors"));
    let bad_host = h.host();
    h.ext(bad_host, ExtRequest::GuestListen { port: 1 });
    assert!(h.expect_disconnect(bad_host).contains("guest request"));
    let bad_guest = h.guest();
    h.ext(bad_guest, ExtRequest::HostClose { conn: o.conn });
    assert!(h.expect_disconnect(bad_guest).contains("host request"));
    let mut json = encode_ext(&ExtRequest::VmList);
    json.truncate(10);
    let bad_host = h.host();
    h.datagram(bad_host, json, Vec::new());
    assert!(h
        .expect_disconnect(bad_host)
        .contains("invalid extension message"));
    h.expect_nothing();
    // The good pair is untouched.
    h.rescinded(&o);
}

#[test]
fn the_guest_initiated_offer_matches_protocol_vector_g2() {
    // PROTOCOL.md 7.7 (g2): guest port 0x401 -> host port 0x1234, relid 31.
    let mut expected = vec![0u8; 196];
    expected[0] = 1;
    expected[8..24].copy_from_slice(&Guid::from_vsock_port(0x1234).to_bytes());
    expected[24..40].copy_from_slice(&Guid::from_vsock_port(0x401).to_bytes());
    expected[0x38..0x3a].copy_from_slice(&[0x11, 0x20]);
    expected[0x42] = 1;
    expected[0xb8] = 0x1f;
    expected[0xbc] = 0xff;
    expected[0xbe] = 1;
    expected[0xc0..0xc4].copy_from_slice(&[0x1f, 0x20, 0, 0]);
    // Spot-check the hand-built vector against the text of 7.7.
    assert_eq!(
        &expected[0x30..0x40],
        &[0, 0, 0, 0, 0, 0, 0, 0, 0x11, 0x20, 0, 0, 0, 0, 0, 0]
    );

    let mut h = Harness::new();
    let host = h.listening_host();
    let guest = h.guest();
    for i in 0..30 {
        h.offer_to(host, guest, 5000 + i);
    }
    h.vmbus(guest, tl_connect(0x401, 0x1234));
    let (bytes, _) = h.expect_send(guest);
    assert_eq!(bytes, expected);
}

#[test]
fn the_host_initiated_offer_has_the_vector_g_layout() {
    // PROTOCOL.md 7.7 (g) differs from our offer only in the endpoint GUID
    // (ours is vsock-shaped, port 0x80000000) and the relid.
    let mut h = Harness::new();
    let s = h.offered_by_host();
    let _ = s;
    let offer = OfferChannel::hvsock(
        30,
        service(),
        "3f2504e0-4f89-11d3-9a0c-0305e82c3301".parse().unwrap(),
        &HvsockParams {
            pipe_mode: 0,
            is_for_guest_accept: true,
            is_for_guest_container: false,
            version: 1,
            silo_id: Guid::ZERO,
        },
    );
    let bytes = Message::OfferChannel(offer).encode();
    assert_eq!(&bytes[0x40..0x44], &[1, 0, 1, 0]);
    assert_eq!(
        &bytes[0xb8..0xc4],
        &[0x1e, 0, 0, 0, 0xff, 0, 1, 0, 0x1e, 0x20, 0, 0]
    );
}

// ---- fuzz-style ----

#[derive(Debug, Clone)]
enum Step {
    Connect {
        root: bool,
    },
    Bytes {
        client: usize,
        bytes: Vec<u8>,
        fds: usize,
    },
    Message {
        client: usize,
        message: u8,
        relid: u32,
        value: u32,
        fds: usize,
    },
    Gone {
        client: usize,
    },
    Tick {
        secs: u8,
    },
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        any::<bool>().prop_map(|root| Step::Connect { root }),
        (
            0..6usize,
            proptest::collection::vec(any::<u8>(), 0..300),
            0..3usize
        )
            .prop_map(|(client, bytes, fds)| Step::Bytes { client, bytes, fds }),
        (0..6usize, 0..16u8, 0..6u32, any::<u32>(), 0..3usize).prop_map(
            |(client, message, relid, value, fds)| Step::Message {
                client,
                message,
                relid,
                value,
                fds
            }
        ),
        (0..6usize).prop_map(|client| Step::Gone { client }),
        (0..40u8).prop_map(|secs| Step::Tick { secs }),
    ]
}

fn fuzz_message(message: u8, relid: u32, value: u32) -> Vec<u8> {
    let m = match message {
        0 => initiate(if value % 2 == 0 {
            VERSION_WIN10_V5
        } else {
            value
        }),
        1 => Message::RequestOffers,
        2 => tl_connect(value % 4, SERVICE_PORT),
        3 => gpadl_msgs(
            relid,
            value % 3 + 1,
            (0..u64::from(value % 40 + 1)).collect(),
        )[0]
        .clone(),
        4 => Message::GpadlBody(GpadlBody::new(0, value % 3 + 1, vec![26, 27]).unwrap()),
        5 => open_msg(relid, value % 3 + 1, value % 8),
        6 => Message::CloseChannel { child_relid: relid },
        7 => Message::GpadlTeardown {
            child_relid: relid,
            gpadl: value % 3 + 1,
        },
        8 => Message::RelidReleased { child_relid: relid },
        9 => Message::Unload,
        10 => {
            return encode_ext(&ExtRequest::HostListen {
                service_id: service(),
                vm_id: if value % 2 == 0 {
                    Guid::ZERO
                } else {
                    derived_vm_id("alpha")
                },
            })
        }
        11 => return encode_ext(&ExtRequest::GuestListen { port: SERVICE_PORT }),
        12 => {
            return encode_ext(&ExtRequest::HostConnect {
                request: u64::from(value % 4),
                vm_id: Guid::ZERO,
                vm_name: Some("alpha".into()),
                service_id: service(),
            })
        }
        13 => {
            return encode_ext(&ExtRequest::HostClose {
                conn: u64::from(value % 8),
            })
        }
        14 => {
            return encode_ext(&ExtRequest::HostCancel {
                request: u64::from(value % 4),
            })
        }
        _ => return encode_ext(&ExtRequest::Stat),
    };
    m.encode()
}

fn fuzz_fds(n: usize, value: u32) -> Vec<OwnedFd> {
    (0..n)
        .map(|i| {
            if i == 0 && value % 3 != 0 {
                dup(&memfd(value % 40 + 1))
            } else {
                EventFd::new().unwrap().into_fd()
            }
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn random_input_from_random_clients_never_panics(steps in proptest::collection::vec(step(), 1..80)) {
        let mut h = Harness::new();
        let mut clients: Vec<ClientId> = Vec::new();
        let mut now = h.now;
        for step in steps {
            match step {
                Step::Connect { root } => {
                    let p = if root { Partition::Root } else { Partition::Vm(h.alpha) };
                    clients.push(h.connect(p));
                }
                Step::Bytes { client, bytes, fds } => {
                    if let Some(&c) = clients.get(client) {
                        h.datagram(c, bytes, fuzz_fds(fds, 0));
                    }
                }
                Step::Message { client, message, relid, value, fds } => {
                    if let Some(&c) = clients.get(client) {
                        h.datagram(c, fuzz_message(message, relid, value), fuzz_fds(fds, value));
                    }
                }
                Step::Gone { client } => {
                    if let Some(&c) = clients.get(client) {
                        h.gone(c);
                    }
                }
                Step::Tick { secs } => {
                    now += Duration::from_secs(u64::from(secs));
                    h.server.handle_timeout(now);
                }
            }
            while let Some(action) = h.next() {
                if let Action::Send { bytes, .. } = action {
                    prop_assert!(Datagram::<ExtEvent>::decode(&bytes).is_ok());
                }
            }
            // Invariants: every channel's clients exist, deadlines only for
            // offered channels.
            for ch in h.server.channels.values() {
                prop_assert!(h.server.clients.contains_key(&ch.guest));
            }
            for (_, relid) in &h.server.deadlines {
                let offered = matches!(
                    h.server.channels.get(relid).map(|c| c.state),
                    Some(ChannelState::Offered { .. })
                );
                prop_assert!(offered);
            }
            for relid in &h.server.free_relids {
                prop_assert!(!h.server.channels.contains_key(relid));
                prop_assert!(*relid < h.server.next_relid);
            }
            // Links join a live guest and a live host process, one each.
            for (guest, host) in h.server.links.keys() {
                let is = |c: &ClientId, root: bool| {
                    h.server.clients.get(c).is_some_and(|c| c.guest.is_none() == root)
                };
                prop_assert!(is(guest, false) && is(host, true));
            }
        }
        // Everybody leaves: nothing remains.
        for c in clients {
            h.gone(c);
        }
        while h.next().is_some() {}
        prop_assert_eq!(h.server.channel_count(), 0);
        prop_assert_eq!(h.server.next_timeout(), None);
        prop_assert!(h.server.links.is_empty());
    }
}

// ---- a real client against the server, in any interleaving ----

/// What goes wrong with the open in [`interleaving`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Trouble {
    None,
    /// The memfd is too small for the GPADL: GPADL_CREATED fails.
    GpadlRefused,
    /// OPENCHANNEL names a ring split the server refuses.
    OpenRefused,
}

/// How the host side withdraws the offer in [`interleaving`], if it does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Withdrawal {
    Never,
    HostGone,
    OfferTimeout,
}

/// A real client opens an offered channel of `pages` pages while messages
/// in each direction wait in a queue; `picks` chooses, step by step, what
/// happens next: a message delivered either way, the application's
/// close(), or the withdrawal. When nothing is left to happen the
/// application closes (once, or again after a rescind or a failed open).
/// Whatever the order, the guest must stay connected and its relid must
/// be given back exactly once, with the channel gone on both sides.
fn interleaving(
    pipelined: bool,
    trouble: Trouble,
    withdrawal: Withdrawal,
    from_host: bool,
    pages: u32,
    picks: &[u8],
) -> Result<(), String> {
    use crate::client::{Event, Output};
    use std::collections::VecDeque;
    let mut h = Harness::new();
    let s = if from_host {
        h.offered_by_host()
    } else {
        h.offered_by_guest()
    };
    let offer = OfferChannel::hvsock(
        s.relid,
        service(),
        s.endpoint,
        &crate::messages::HvsockParams {
            is_for_guest_accept: from_host,
            ..Default::default()
        },
    );
    let mut client = real_client(s, offer, pipelined);
    let mem = memfd(if trouble == Trouble::GpadlRefused {
        4
    } else {
        pages
    });
    let layout = RingLayout {
        total_pages: pages,
        guest_to_host_pages: SPLIT,
    };
    client.open(s.relid, Arc::new(dup(&mem)), layout).unwrap();

    /// Everything in flight and everything seen so far.
    #[derive(Default)]
    struct Run {
        to_server: VecDeque<(Message, Vec<OwnedFd>)>,
        to_client: VecDeque<Message>,
        released_events: usize,
        released_msgs: usize,
        must_close: bool,
        dropped: Option<String>,
        trace: Vec<String>,
    }
    let pump = |run: &mut Run, client: &mut crate::client::GuestClient, h: &mut Harness| {
        while let Some(output) = client.poll_output() {
            match output {
                Output::Send { mut message, fds } => {
                    if let (Trouble::OpenRefused, Message::OpenChannel(open)) =
                        (trouble, &mut message)
                    {
                        open.downstream_ringbuffer_pageoffset = pages;
                    }
                    if matches!(message, Message::RelidReleased { .. }) {
                        run.released_msgs += 1;
                    }
                    run.trace
                        .push(format!("guest sends {}", message.message_type()));
                    let fds = fds.iter().map(|f| f.as_fd().try_clone_to_owned().unwrap());
                    run.to_server.push_back((message, fds.collect()));
                }
                Output::Event(event) => {
                    run.trace.push(format!("guest event {event:?}"));
                    match event {
                        Event::Released { .. } => run.released_events += 1,
                        Event::Rescinded { .. } => run.must_close = true,
                        Event::Opened { status, .. } if status != 0 => run.must_close = true,
                        _ => {}
                    }
                }
            }
        }
        while let Some(action) = h.next() {
            match action {
                Action::Send {
                    client: c, bytes, ..
                } if c == s.guest => {
                    if let Ok(Datagram::Vmbus(m)) = Datagram::<ExtEvent>::decode(&bytes) {
                        run.to_client.push_back(m);
                    }
                }
                Action::Disconnect { client: c, reason } if c == s.guest => {
                    run.dropped = Some(reason);
                }
                _ => {}
            }
        }
    };
    let mut run = Run::default();
    let mut closes = 0;
    let mut withdrawn = withdrawal == Withdrawal::Never;
    pump(&mut run, &mut client, &mut h);
    let mut picks = picks.iter().copied().chain(std::iter::repeat(0));
    for _ in 0..400 {
        let mut choices = Vec::new();
        if !run.to_server.is_empty() {
            choices.push(0);
        }
        if !run.to_client.is_empty() {
            choices.push(1);
        }
        if closes < 2 && client.channel_count() > 0 {
            choices.push(2);
        }
        if !withdrawn {
            choices.push(3);
        }
        if choices.is_empty() {
            let closing =
                client.channel_count() > 0 && (closes == 0 || run.must_close) && closes < 3;
            if !closing {
                break;
            }
            run.must_close = false;
            choices.push(2);
        }
        let pick = picks.next().unwrap_or(0);
        match choices[usize::from(pick) % choices.len()] {
            0 => {
                let (message, fds) = run.to_server.pop_front().unwrap();
                h.vmbus_fds(s.guest, message, fds);
            }
            1 => {
                let message = run.to_client.pop_front().unwrap();
                run.trace
                    .push(format!("guest gets {}", message.message_type()));
                // Answers the host sent before it saw a release name a relid
                // the client no longer has: errors the caller logs, no more.
                let _ = client.handle(message);
            }
            2 => {
                closes += 1;
                run.trace.push("application closes".into());
                client.close(s.relid).map_err(|e| e.to_string())?;
            }
            _ => {
                withdrawn = true;
                run.trace.push(format!("withdrawal: {withdrawal:?}"));
                match withdrawal {
                    Withdrawal::HostGone => h.gone(s.host),
                    Withdrawal::OfferTimeout => {
                        let later = h.now + Duration::from_secs(3600);
                        h.server.handle_timeout(later);
                    }
                    Withdrawal::Never => unreachable!("never offered as a choice"),
                }
            }
        }
        pump(&mut run, &mut client, &mut h);
    }
    let Run {
        released_events,
        released_msgs,
        dropped,
        trace,
        ..
    } = run;
    let problems: Vec<String> = [
        dropped.map(|why| format!("the guest was disconnected: {why}")),
        (released_events != 1).then(|| format!("{released_events} Released events")),
        (released_msgs != 1).then(|| format!("{released_msgs} RELID_RELEASED sent")),
        (client.channel_count() != 0).then(|| "the client still holds the channel".into()),
        (h.server.channel_count() != 0).then(|| "the server still holds the channel".into()),
    ]
    .into_iter()
    .flatten()
    .collect();
    if problems.is_empty() {
        Ok(())
    } else {
        Err(format!("{problems:?}\n{}", trace.join("\n")))
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 4096, ..ProptestConfig::default() })]

    #[test]
    fn a_real_client_gives_every_channel_back_once_whatever_the_interleaving(
        pipelined in any::<bool>(),
        trouble in prop_oneof![
            Just(Trouble::None),
            Just(Trouble::GpadlRefused),
            Just(Trouble::OpenRefused)
        ],
        withdrawal in prop_oneof![
            Just(Withdrawal::Never),
            Just(Withdrawal::HostGone),
            Just(Withdrawal::OfferTimeout)
        ],
        from_host in any::<bool>(),
        // 200 pages need GPADL_BODY messages.
        pages in prop_oneof![Just(PAGES), Just(200u32)],
        picks in proptest::collection::vec(any::<u8>(), 0..48),
    ) {
        let outcome = interleaving(pipelined, trouble, withdrawal, from_host, pages, &picks);
        prop_assert!(outcome.is_ok(), "{}", outcome.unwrap_err());
    }
}
