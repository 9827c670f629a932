//! Body of the `client_messages` fuzz target, shared with its corpus replay
//! test (`crates/vmbus/tests/fuzz_corpus.rs` includes this file).
//!
//! Drives a [`vmbus::client::GuestClient`] with what a hostile host could
//! send (any message, decodable or not) interleaved with what the
//! application may ask (TL connect, open, close).
//!
//! Input: a sequence of operations, each an opcode byte and its operands:
//!
//! | `op % 8` | operands | event |
//! |---|---|---|
//! | 0 ..= 4 | length byte, that many bytes | a datagram from the host, handled if it decodes |
//! | 5 | relid byte, two layout bytes | the application opens channel `relid`; pipelined (OPENCHANNEL right behind the GPADL) if bit 3 of the opcode is set |
//! | 6 | relid byte | the application closes channel `relid` |
//! | 7 | port byte | the application sends a TL connect request |
//!
//! Asserts: nothing panics; every message the client sends is one a guest
//! sends, carries a descriptor only if it is GPADL_HEADER (exactly one
//! then), and encodes to bytes that decode to it again; every event names a
//! channel the host offered; the client never holds more channels than the
//! host offered.

use std::collections::BTreeSet;
use std::os::fd::OwnedFd;
use std::sync::Arc;

use vmbus::client::{Event, GuestClient, Output};
use vmbus::ext::RingLayout;
use vmbus::{Guid, Message};

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

/// Checks every output.
fn drain(client: &mut GuestClient, offered: &BTreeSet<u32>) {
    while let Some(output) = client.poll_output() {
        match output {
            Output::Send { message, fds } => {
                assert!(
                    matches!(
                        message,
                        Message::InitiateContact(_)
                            | Message::RequestOffers
                            | Message::GpadlHeader(_)
                            | Message::GpadlBody(_)
                            | Message::OpenChannel(_)
                            | Message::CloseChannel { .. }
                            | Message::GpadlTeardown { .. }
                            | Message::RelidReleased { .. }
                            | Message::Unload
                            | Message::TlConnectRequest(_)
                    ),
                    "a guest never sends {message:?}"
                );
                // Only GPADL_HEADER carries a descriptor (the rings' memfd);
                // signals go over the link, never with OPENCHANNEL.
                let expected_fds = usize::from(matches!(message, Message::GpadlHeader(_)));
                assert_eq!(
                    fds.len(),
                    expected_fds,
                    "{message:?} with {} fds",
                    fds.len()
                );
                let bytes = message.encode();
                assert_eq!(Message::decode(&bytes).as_ref(), Ok(&message));
            }
            Output::Event(event) => {
                let relid = match event {
                    Event::Offer(ref offer) => Some(offer.child_relid),
                    Event::Opened { relid, .. }
                    | Event::Rescinded { relid }
                    | Event::Released { relid } => Some(relid),
                    _ => None,
                };
                if let Some(relid) = relid {
                    assert!(
                        offered.contains(&relid),
                        "{event:?} names relid {relid}, never offered"
                    );
                }
            }
        }
    }
}

/// The fuzz target body.
pub fn client_messages(data: &[u8]) {
    let fd: Arc<OwnedFd> = Arc::new(hvsock_shm::EventFd::new().expect("eventfd").into_fd());
    let mut client = GuestClient::new();
    let mut offered = BTreeSet::new();
    client.start();
    drain(&mut client, &offered);
    let mut input = Bytes(data);
    while let Some(op) = input.byte() {
        match op % 8 {
            0..=4 => {
                let len = usize::from(input.byte().unwrap_or(0));
                let Ok(message) = Message::decode(input.take(len)) else {
                    continue;
                };
                if let Message::OfferChannel(offer) = &message {
                    offered.insert(offer.child_relid);
                }
                let _ = client.handle(message);
            }
            5 => {
                let relid = u32::from(input.byte().unwrap_or(0));
                let layout = RingLayout {
                    total_pages: u32::from(input.byte().unwrap_or(0)),
                    guest_to_host_pages: u32::from(input.byte().unwrap_or(0)),
                };
                client.set_pipelined_open(op & 8 != 0);
                let _ = client.open(relid, fd.clone(), layout);
            }
            6 => {
                let _ = client.close(u32::from(input.byte().unwrap_or(0)));
            }
            _ => {
                let port = u32::from(input.byte().unwrap_or(0));
                let _ = client.tl_connect(Guid::from_vsock_port(port), Guid::from_vsock_port(5000));
            }
        }
        drain(&mut client, &offered);
        assert!(client.channel_count() <= offered.len());
    }
}
