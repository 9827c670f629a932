//! Body of the `server_datagrams` fuzz target, shared with its corpus
//! replay test (`crates/vmbus/tests/fuzz_corpus.rs` includes this file).
//!
//! Drives a [`vmbus::server::Server`] with VMs `a` and `b` through a
//! sequence of events read from the input: clients connecting to the host
//! socket, to a VM's socket or to a VM that does not exist, datagrams of any
//! bytes from any client (live, gone or never connected) with or without
//! descriptors (a sealed memfd of 1 to 63 pages, an unsealed memfd, one or
//! two eventfds), clients going away and time passing.
//!
//! Input: a sequence of operations, each an opcode byte and its operands:
//!
//! | `op % 6` | operands | event |
//! |---|---|---|
//! | 0 | partition byte (`% 4`: root, `a`, `b`, unknown VM) | a new client connects |
//! | 1, 2, 3 | client byte, fd byte, length byte, that many bytes | a datagram |
//! | 4 | client byte | the client is gone |
//! | 5 | seconds byte | time passes, timers run |
//!
//! A client byte picks a client id: `byte % (clients so far + 1)`, so the
//! last value names a client that never existed. The fd byte `% 4` means:
//! none, a sealed memfd of `(byte >> 2) % 64` pages (0: an unsealed one),
//! two eventfds, one eventfd.
//!
//! Asserts: nothing panics; every datagram the server sends goes to a live
//! client, decodes as a VMBus message or an extension event and carries a
//! descriptor only if it is HostConnected or HostIncoming (exactly one
//! then); links: each CreateLink has a new id and joins two live clients,
//! every message that names a link comes after its CreateLink and before
//! its LinkClosed and goes to the right end of it, LinkClosed goes to an
//! end; once every client is gone, the server holds no client and no
//! channel, and every link was closed.

use std::collections::{BTreeMap, BTreeSet};
use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

use vmbus::ext::{Datagram, ExtEvent, Partition};
use vmbus::server::{Action, ClientId, ClientInfo, Input, Server, ServerConfig};
use vmbus::Guid;

/// Reads operands from the front of the input.
struct Bytes<'a>(&'a [u8]);

impl<'a> Bytes<'a> {
    fn byte(&mut self) -> Option<u8> {
        let (&first, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(first)
    }

    fn take(&mut self, len: usize) -> &'a [u8] {
        let (taken, rest) = self.0.split_at(len.min(self.0.len()));
        self.0 = rest;
        taken
    }
}

fn eventfd() -> OwnedFd {
    hvsock_shm::EventFd::new().expect("eventfd").into_fd()
}

fn memfd(pages: usize) -> OwnedFd {
    if pages == 0 {
        // A memfd that is not sealed: the server must refuse it.
        let fd = rustix::fs::memfd_create("fuzz-unsealed", rustix::fs::MemfdFlags::CLOEXEC)
            .expect("memfd_create");
        rustix::fs::ftruncate(&fd, 4096).expect("ftruncate");
        return fd;
    }
    hvsock_shm::SharedMemory::create("fuzz", pages * 4096)
        .expect("memfd")
        .into_fd()
}

fn fds(selector: u8) -> Vec<OwnedFd> {
    match selector % 4 {
        0 => Vec::new(),
        1 => vec![memfd(usize::from(selector >> 2) % 64)],
        2 => vec![eventfd(), eventfd()],
        _ => vec![eventfd()],
    }
}

/// What the driver has seen of links.
#[derive(Default)]
struct Links {
    /// Open links: id → (guest, host).
    open: BTreeMap<u64, (ClientId, ClientId)>,
    /// Every id ever created.
    seen: BTreeSet<u64>,
}

impl Links {
    /// Checks that `to` may be sent a message naming `link` (the guest end
    /// when `guest_end`, else the host end).
    fn check_named(&self, link: u64, to: ClientId, guest_end: bool) {
        let Some(&(guest, host)) = self.open.get(&link) else {
            panic!("a message to {to:?} names link {link}, which is not open");
        };
        let end = if guest_end { guest } else { host };
        assert_eq!(to, end, "link {link} joins {guest:?} and {host:?}");
    }
}

/// Performs every pending action, checking it.
fn drain(server: &mut Server, live: &mut BTreeSet<u64>, links: &mut Links) {
    while let Some(action) = server.poll_action() {
        match action {
            Action::Send { client, bytes, fds } => {
                assert!(
                    live.contains(&client.0),
                    "the server sent to {client:?}, which is not connected"
                );
                let datagram = match Datagram::<ExtEvent>::decode(&bytes) {
                    Ok(d) => d,
                    Err(e) => {
                        panic!("the server sent an undecodable datagram ({e}): {bytes:02x?}")
                    }
                };
                let expected_fds = match &datagram {
                    Datagram::Ext(ExtEvent::HostConnected { link, .. })
                    | Datagram::Ext(ExtEvent::HostIncoming { link, .. }) => {
                        links.check_named(*link, client, false);
                        1
                    }
                    Datagram::Ext(ExtEvent::ChannelLink { link, .. }) => {
                        links.check_named(*link, client, true);
                        0
                    }
                    Datagram::Ext(ExtEvent::LinkClosed { link }) => {
                        let ends = links.open.remove(link);
                        assert!(
                            ends.is_some_and(|(g, h)| client == g || client == h),
                            "LinkClosed {link} to {client:?}, which is not an end of an open link"
                        );
                        0
                    }
                    _ => 0,
                };
                assert_eq!(fds.len(), expected_fds, "{datagram:?}");
            }
            Action::Disconnect { client, .. } => {
                assert!(
                    live.remove(&client.0),
                    "the server disconnected {client:?}, which is not connected"
                );
            }
            Action::CreateLink { link, guest, host } => {
                assert!(
                    live.contains(&guest.0) && live.contains(&host.0) && guest != host,
                    "CreateLink {link} between {guest:?} and {host:?}, not two live clients"
                );
                assert!(links.seen.insert(link), "link id {link} reused");
                links.open.insert(link, (guest, host));
            }
            Action::VmAdded { .. } | Action::VmRemoved { .. } | Action::Stat { .. } => {}
        }
    }
}

/// The fuzz target body.
pub fn server_datagrams(data: &[u8]) {
    let mut server = Server::new(ServerConfig::default());
    let a = server.add_vm("a", None).expect("VM a").id;
    let b = server.add_vm("b", None).expect("VM b").id;
    let mut live = BTreeSet::new();
    let mut links = Links::default();
    drain(&mut server, &mut live, &mut links);
    let mut now = Instant::now();
    let mut next_client = 0u64;
    let mut input = Bytes(data);
    let pick = |byte: u8, clients: u64| ClientId(u64::from(byte) % (clients + 1));
    while let Some(op) = input.byte() {
        match op % 6 {
            0 => {
                let partition = match input.byte().unwrap_or(0) % 4 {
                    0 => Partition::Root,
                    1 => Partition::Vm(a),
                    2 => Partition::Vm(b),
                    _ => Partition::Vm(Guid::from_vsock_port(7)),
                };
                let client = ClientId(next_client);
                next_client += 1;
                live.insert(client.0);
                let info = ClientInfo {
                    partition,
                    pid: 1000 + client.0 as u32,
                    uid: 0,
                };
                server.handle(now, Input::Connected { client, info });
            }
            1..=3 => {
                let client = pick(input.byte().unwrap_or(0), next_client);
                let fds = fds(input.byte().unwrap_or(0));
                let len = usize::from(input.byte().unwrap_or(0));
                let bytes = input.take(len).to_vec();
                if !live.contains(&client.0) {
                    // A driver never delivers for a client it does not
                    // have; skip, but keep the descriptors' cost.
                    continue;
                }
                server.handle(now, Input::Datagram { client, bytes, fds });
            }
            4 => {
                let client = pick(input.byte().unwrap_or(0), next_client);
                // A driver may report a client gone twice (after a
                // Disconnect, say): the server must ignore the repeat.
                live.remove(&client.0);
                server.handle(now, Input::Gone { client });
            }
            _ => {
                now += Duration::from_secs(u64::from(input.byte().unwrap_or(0)));
                server.handle_timeout(now);
            }
        }
        drain(&mut server, &mut live, &mut links);
    }
    while let Some(client) = live.pop_first() {
        server.handle(
            now,
            Input::Gone {
                client: ClientId(client),
            },
        );
        drain(&mut server, &mut live, &mut links);
    }
    assert_eq!(server.client_count(), 0, "clients left after all are gone");
    assert_eq!(
        server.channel_count(),
        0,
        "channels left after every client is gone"
    );
    assert!(
        links.open.is_empty(),
        "links never closed: {:?}",
        links.open
    );
}
