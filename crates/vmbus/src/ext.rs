//! The extension protocol: what travels on the control sockets besides the
//! VMBus channel messages.
//!
//! On Hyper-V a guest kernel speaks VMBus to the host, and host programs use
//! AF_HYPERV sockets that the host's socket provider serves. Here both kinds
//! of process talk to the emulated host (the daemon, or the embedded host)
//! over one Unix `SOCK_SEQPACKET` socket each, one message per datagram:
//!
//! * A **guest** process (connected to a VM's socket, `vm-NAME.sock`) sends
//!   and receives VMBus channel messages, byte-exact
//!   ([`Message`](crate::Message)), plus the few extension requests a guest
//!   needs that a real guest kernel keeps to itself: which vsock ports it
//!   listens on, so that the host can route a host-initiated connection to
//!   the right process of the VM (a real VM has one kernel; here a VM has
//!   several processes).
//! * A **host** (root-partition) process, connected to `host.sock`, sends
//!   and receives extension messages only: listen on a service, connect to a
//!   VM's service, close a connection, and the administration requests (VMs,
//!   statistics).
//!
//! # Framing
//!
//! Every datagram starts with a u32 (little-endian) message type, as VMBus
//! channel messages do. VMBus types are below 32; an extension message has
//! type [`EXT_MESSAGE_TYPE`], 4 zero bytes, then a JSON document
//! ([`ExtRequest`] from a client, [`ExtEvent`] from the host). [`Datagram`]
//! decodes either kind.
//!
//! # File descriptors (SCM_RIGHTS)
//!
//! | message | direction | fds, in order |
//! |---|---|---|
//! | GPADL_HEADER | guest → host | the sealed memfd holding the rings; PFN `i` is page `i` of it |
//! | [`ExtEvent::Link`] | host → guest or host process | the sealed flags memfd ([`LINK_FLAGS_BYTES`]), the signal socket the receiver waits on, the signal socket the receiver signals |
//! | [`ExtEvent::HostConnected`], [`ExtEvent::HostIncoming`] | host → host process | the memfd holding the rings |
//!
//! Every other message carries none; OPENCHANNEL carries none, as on the wire.
//!
//! The guest owns ring memory, as on Hyper-V: it creates the memfd, seals it
//! against shrinking and sends it with its GPADL. The host process maps it;
//! from then on stream bytes go from one process's ring writer to the other's
//! ring reader and never through the daemon.
//!
//! # Signals: one link per pair of processes, not a pair of lines per channel
//!
//! VMBus signals a guest through one interrupt plus an event-flags bitmap
//! with a bit per relid, so the cost of signalling does not grow with the
//! channels. Here the same holds per *link*: the pair of processes (a guest
//! process and a host process) that share at least one open channel. The
//! host creates a link when the first channel between the two opens and
//! sends each side [`ExtEvent::Link`] with three descriptors: a sealed memfd
//! of [`LINK_FLAGS_BYTES`] holding two bitmaps (the guest sets bits in the
//! one at [`GUEST_TO_HOST_FLAGS`], the host process in the one at
//! [`HOST_TO_GUEST_FLAGS`]; bit `relid % 32` of the little-endian u32 at
//! byte `4 * (relid / 32)`), the receiving end of the signal socket it waits
//! on and the sending end of the one it signals. To signal channel `relid`,
//! a side sets the bit in the bitmap it writes and, only if the bit was
//! clear, sends one byte on its sending end (`MSG_DONTWAIT`; a full buffer
//! means the peer has wake-ups pending), unless the peer asked to be woken
//! otherwise (below); the receiver, on each wake-up, drains its receiving
//! end, then takes (swaps to zero) the words of the relids it serves. A link joins exactly two processes, so a hostile peer
//! can disturb only the signals of its own channels.
//!
//! Each direction is its own `socketpair(AF_UNIX, SOCK_STREAM)`, and each
//! side holds one end of each, never the peer's end. The host turns
//! `SO_PASSRIGHTS` off on the receiving ends (Linux 6.16+), so a peer cannot
//! attach descriptors to a wake-up (their last close would run in the
//! receiver's thread); where the kernel cannot, the receiver never takes a
//! wake-up that carries some and stops listening to that link. An eventfd
//! would not do: it is one open file shared with the peer, who could make
//! it blocking (`F_SETFL`) and fill its counter so that the next signal
//! blocked for ever; nor would a pipe: a peer stalling a page fault while it
//! writes holds the pipe's lock that our read waits for. Links last until either process goes away ([`ExtEvent::LinkClosed`] tells the
//! other). Relids stay at or below [`MAX_RELID`] so that every channel has
//! a bit.
//!
//! ## Waking a sleeping side
//!
//! A byte on a socket costs a `send`, and the receiver an `epoll_wait` and a
//! `recv` to drain it; a futex costs one `FUTEX_WAKE` and one `FUTEX_WAIT`,
//! about 2 us less per wake-up here. So each side has a wake area in the
//! page after the bitmaps ([`GUEST_WAKE_AREA`], [`HOST_WAKE_AREA`]): a state
//! saying how it wants to be woken, a futex word, and its features. A side
//! sets [`WAKE_FEATURE_FUTEX`] in its features when it sees the link. When
//! a side is about to sleep and its peer has that feature, it may sleep on
//! its futex: it reads its futex word, stores [`WAKE_BY_FUTEX`] as its
//! state, takes its bits once more (sequentially consistent, so that a
//! peer that saw the old state set its bit before that look), and only if
//! there were none waits in `FUTEX_WAIT` for the word it read. Otherwise it
//! stores [`WAKE_BY_SOCKET`], takes its bits once more, and waits on its
//! socket. Once awake it stores [`WAKE_NOT_NEEDED`]. To signal, a side sets
//! the relid's bit and, only if it was clear, reads the peer's state:
//! nothing more for [`WAKE_NOT_NEEDED`], increment and `FUTEX_WAKE` for
//! [`WAKE_BY_FUTEX`], a byte on the socket for anything else. A side waiting
//! on links to several peers waits on their sockets (one `epoll_wait`). A
//! hostile peer can only wake us for nothing (a busy loop while it keeps
//! changing the futex word, as a flood of bytes would be) or not wake us,
//! on its own link.
//!
//! A channel learns its link: the guest from [`ExtEvent::ChannelLink`],
//! sent just before a successful OPENCHANNEL_RESULT; the host process from
//! the `relid` and `link` of [`ExtEvent::HostConnected`] or
//! [`ExtEvent::HostIncoming`]. A new link's [`ExtEvent::Link`] always comes
//! before the first message that names it.
//!
//! # Opening a channel
//!
//! A guest opens an offered channel as Linux does: GPADL_HEADER (with the
//! memfd) and its GPADL_BODY messages, GPADL_CREATED back, then OPENCHANNEL
//! and OPENCHANNEL_RESULT back. An hvsock host also sends a guest
//! [`ExtEvent::HostFeatures`] right after ALLOFFERS_DELIVERED; when it names
//! [`FEATURE_PIPELINED_OPEN`], the guest sends OPENCHANNEL right behind the
//! GPADL, without waiting for GPADL_CREATED. The messages are the same bytes;
//! only the wait between them goes, which saves a round trip through the host
//! per connection. The host still answers GPADL_CREATED first; if the GPADL
//! failed, the open fails too (its GPADL does not exist). If the host
//! rescinds the offer in between, the rescind comes instead of the open's
//! result, as it can in the Linux order. A guest that closes an open before
//! both answers are in waits for them, then tears down only what exists.
//!
//! # Ring layout in the memfd
//!
//! As on Hyper-V (PROTOCOL.md 2.1): pages `0 .. guest_to_host_pages` are the
//! guest → host ring (control page, then data), the rest the host → guest
//! ring. [`RingLayout`] carries the split to the host process.
//!
//! # Statistics in the control page
//!
//! hvsock endpoints count the stream bytes they write in the reserved area of
//! the control page of the ring they write, as a u64 at byte offset
//! [`BYTES_WRITTEN_OFFSET`] (FreeBSD keeps a private counter in that area too;
//! peers never rely on it). `hvsock stat` reads it; it is informational only.

use serde::{Deserialize, Serialize};

use crate::messages::Guid;

/// The message type of an extension message (outside VMBus's range).
pub const EXT_MESSAGE_TYPE: u32 = 0x8000_4856;

/// Offset, in the control page of a ring, of the u64 count of stream bytes
/// its writer has written (informational; see the module docs).
pub const BYTES_WRITTEN_OFFSET: usize = 128;

/// Bytes of a link's flags memfd: two bitmaps with a bit per relid, then a
/// page with each side's wake area (see "Waking a sleeping side").
pub const LINK_FLAGS_BYTES: usize = 2 * LINK_BITMAP_BYTES + 4096;

/// Offset in a link's flags memfd of the guest's wake area: how the guest,
/// as the side being woken, wants it done.
pub const GUEST_WAKE_AREA: usize = 2 * LINK_BITMAP_BYTES;

/// Offset in a link's flags memfd of the host process's wake area.
pub const HOST_WAKE_AREA: usize = GUEST_WAKE_AREA + 256;

/// Offset in a wake area of its owner's state (a u32 only the owner
/// writes): [`WAKE_BY_SOCKET`], [`WAKE_NOT_NEEDED`] or [`WAKE_BY_FUTEX`].
pub const WAKE_STATE: usize = 0;

/// Offset in a wake area of the futex word its owner sleeps on (a u32 the
/// waker increments before `FUTEX_WAKE`), a cache line after the state.
pub const WAKE_FUTEX: usize = 64;

/// Offset in a wake area of its owner's features (a u32 the owner sets
/// once): [`WAKE_FEATURE_FUTEX`].
pub const WAKE_FEATURES: usize = 128;

/// Wake state: send a byte on the owner's signal socket (the state a new
/// link starts in, and all that a side without the wake area knows).
pub const WAKE_BY_SOCKET: u32 = 0;

/// Wake state: the owner is awake and looks at its bits before it sleeps
/// again; set the bit and do nothing else.
pub const WAKE_NOT_NEEDED: u32 = 1;

/// Wake state: the owner sleeps in `FUTEX_WAIT` on its [`WAKE_FUTEX`] word;
/// increment the word, then `FUTEX_WAKE` it (a shared, not private, futex).
pub const WAKE_BY_FUTEX: u32 = 2;

/// Wake feature: the owner wakes its peer by futex when the peer asks for
/// it, so the peer may sleep on its futex word instead of its socket.
pub const WAKE_FEATURE_FUTEX: u32 = 1;

/// Bytes of one bitmap of a link (a bit for each relid `0..=MAX_RELID`).
pub const LINK_BITMAP_BYTES: usize = (MAX_RELID as usize + 1) / 8;

/// Offset in a link's flags memfd of the bitmap the guest sets and the host
/// process takes.
pub const GUEST_TO_HOST_FLAGS: usize = 0;

/// Offset in a link's flags memfd of the bitmap the host process sets and
/// the guest takes.
pub const HOST_TO_GUEST_FLAGS: usize = LINK_BITMAP_BYTES;

/// The largest relid the host hands out: every channel has a bit in its
/// link's bitmaps.
pub const MAX_RELID: u32 = 65535;

/// [`ExtEvent::HostFeatures`]: this host handles a guest's messages in
/// order and takes an OPENCHANNEL sent right behind its GPADL_HEADER and
/// bodies, before GPADL_CREATED came back (it answers GPADL_CREATED, then
/// the open's result). A guest may then save the round trip Linux waits for
/// (see "Opening a channel" in the module docs).
pub const FEATURE_PIPELINED_OPEN: &str = "pipelined_open";

/// Largest datagram either side sends (a stat reply may be large).
pub const MAX_DATAGRAM: usize = 1 << 20;

/// How the rings of a channel are laid out in its memfd.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RingLayout {
    /// Pages in the memfd (both rings, control pages included).
    pub total_pages: u32,
    /// Pages of the guest → host ring, control page included (the
    /// OPENCHANNEL `downstream_ringbuffer_pageoffset`).
    pub guest_to_host_pages: u32,
}

/// Which side a process is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Partition {
    /// The root partition (the host): processes connected to `host.sock`.
    Root,
    /// A guest partition: processes connected to that VM's socket.
    Vm(Guid),
}

/// A request from a client to the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum ExtRequest {
    /// Guest: route host-initiated connections to vsock port `port` of this
    /// VM to this process. Answered by [`ExtEvent::GuestListenResult`].
    GuestListen {
        /// The vsock port.
        port: u32,
    },
    /// Guest: stop routing `port` to this process. Not answered.
    GuestUnlisten {
        /// The vsock port.
        port: u32,
    },
    /// Host: accept connections to `service_id` from the VMs `vm_id` names
    /// (a VM id, or ZERO/WILDCARD for all VMs, or CHILDREN). Answered by
    /// [`ExtEvent::HostListenResult`].
    HostListen {
        /// The service.
        service_id: Guid,
        /// Which VMs may connect.
        vm_id: Guid,
    },
    /// Host: stop accepting on `service_id` for `vm_id`. Not answered.
    HostUnlisten {
        /// The service.
        service_id: Guid,
        /// As given to `HostListen`.
        vm_id: Guid,
    },
    /// Host: connect to `service_id` in VM `vm_id` (a VM id, or a VM name
    /// given as `vm_name`). Answered by [`ExtEvent::HostConnected`] or
    /// [`ExtEvent::HostConnectFailed`] with the same `request`.
    HostConnect {
        /// Chosen by the client to match the answer.
        request: u64,
        /// The VM, by id (ZERO when `vm_name` is given).
        vm_id: Guid,
        /// The VM, by name, if not by id.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        vm_name: Option<String>,
        /// The guest service (for a Linux guest: a vsock port's GUID).
        service_id: Guid,
    },
    /// Host: give up a `HostConnect` still in progress (the caller's connect
    /// timed out): its offer is rescinded. Not answered; a `HostConnected`
    /// that crossed this request is to be closed with `HostClose`.
    HostCancel {
        /// The request to give up.
        request: u64,
    },
    /// Host: this connection is finished on the host side; rescind its
    /// channel. Not answered.
    HostClose {
        /// The connection id of `HostConnected` / `HostIncoming`.
        conn: u64,
    },
    /// Admin (host socket only): add a VM. Answered by [`ExtEvent::VmResult`].
    VmAdd {
        /// Its name (letters, digits, `-`, `_`, `.`; at most 64 bytes).
        name: String,
        /// Its id; a new one is made when absent.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<Guid>,
    },
    /// Admin (host socket only): remove a VM, rescinding its channels and
    /// disconnecting its processes. Answered by [`ExtEvent::VmResult`].
    VmRemove {
        /// Its name.
        name: String,
    },
    /// Admin: list the VMs. Answered by [`ExtEvent::VmList`].
    VmList,
    /// Admin (host socket only): everything `hvsock stat` shows. Answered by
    /// [`ExtEvent::Stat`].
    Stat,
}

/// Why a host-initiated connection failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConnectFailure {
    /// Nobody listens on that service in that VM, or the guest refused the
    /// offer (backlog full).
    Refused,
    /// No such VM.
    NoSuchVm,
    /// The guest did not open the channel in time; it was rescinded.
    TimedOut,
    /// The request was malformed (e.g. a service id that no guest can serve).
    Invalid,
}

/// A VM as the host knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmInfo {
    /// Its name.
    pub name: String,
    /// Its id.
    pub id: Guid,
    /// The vsock CID hvsock assigns it (3 and up).
    pub cid: u32,
    /// Processes connected to its socket.
    pub processes: u32,
    /// Its open or opening channels.
    pub channels: u32,
}

/// One channel, for `hvsock stat`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelInfo {
    /// Its relid.
    pub relid: u32,
    /// The VM's name.
    pub vm: String,
    /// Its state ("offered", "gpadl", "open", "rescinded").
    pub state: String,
    /// Whether the host connected (true) or the guest did.
    pub from_host: bool,
    /// The offer's `if_type` (the guest-side service for host connects, the
    /// host service for guest connects).
    pub if_type: Guid,
    /// The offer's `if_instance`.
    pub if_instance: Guid,
    /// Pid of the guest process (0 if unknown).
    pub guest_pid: u32,
    /// Pid of the host process (0 if none yet).
    pub host_pid: u32,
    /// The ring layout, once the GPADL exists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layout: Option<RingLayout>,
    /// Fill of the guest → host ring, bytes used / data size (when mapped).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest_to_host_fill: Option<(u32, u32)>,
    /// Fill of the host → guest ring.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_to_guest_fill: Option<(u32, u32)>,
    /// Stream bytes the guest wrote (from the control page counter).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest_bytes: Option<u64>,
    /// Stream bytes the host wrote.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_bytes: Option<u64>,
}

/// A connected process, for `hvsock stat`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessInfo {
    /// Its pid (from SO_PEERCRED).
    pub pid: u32,
    /// Its partition.
    pub partition: Partition,
    /// Guest ports or host services it listens on, as text.
    pub listening: Vec<String>,
}

/// Everything `hvsock stat` shows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatReport {
    /// The VMs.
    pub vms: Vec<VmInfo>,
    /// The connected processes.
    pub processes: Vec<ProcessInfo>,
    /// The channels.
    pub channels: Vec<ChannelInfo>,
}

/// A message from the host to a client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum ExtEvent {
    /// Answer to [`ExtRequest::GuestListen`].
    GuestListenResult {
        /// The port.
        port: u32,
        /// Why it failed (the port is another process's), if it did.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
    /// Answer to [`ExtRequest::HostListen`].
    HostListenResult {
        /// The service.
        service_id: Guid,
        /// As requested.
        vm_id: Guid,
        /// Why it failed (in use, unknown VM), if it did.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
    /// A host connect succeeded; carries the memfd of the rings.
    HostConnected {
        /// The request it answers.
        request: u64,
        /// The connection id, for `HostClose` and `HostRevoked`.
        conn: u64,
        /// The channel's relid: its bit in the link's bitmaps.
        relid: u32,
        /// The link that carries its signals (see the module docs).
        link: u64,
        /// The VM.
        vm_id: Guid,
        /// The host endpoint's own service id (the offer's `if_instance`).
        endpoint_id: Guid,
        /// The ring layout in the memfd.
        layout: RingLayout,
    },
    /// A host connect failed.
    HostConnectFailed {
        /// The request it answers.
        request: u64,
        /// Why.
        failure: ConnectFailure,
        /// The same, for people.
        message: String,
    },
    /// A guest connected to a service this process listens on; carries the
    /// memfd of the rings.
    HostIncoming {
        /// The connection id, for `HostClose` and `HostRevoked`.
        conn: u64,
        /// The channel's relid: its bit in the link's bitmaps.
        relid: u32,
        /// The link that carries its signals (see the module docs).
        link: u64,
        /// The service connected to.
        service_id: Guid,
        /// The VM filter of the listener that matched.
        listener_vm_id: Guid,
        /// The VM the guest runs in.
        vm_id: Guid,
        /// The guest's endpoint id (for Linux guests, its vsock port's GUID).
        endpoint_id: Guid,
        /// The ring layout in the memfd.
        layout: RingLayout,
    },
    /// A new signal link to a peer process; carries the flags memfd, the
    /// signal socket end to wait on and the one to signal (see the module
    /// docs).
    Link {
        /// The link's id, unique for the host's lifetime.
        link: u64,
    },
    /// To a guest, right after ALLOFFERS_DELIVERED: what this host does
    /// beyond the VMBus sequence. Names a client does not know are ignored;
    /// a guest library older than this event logs it once as undecodable
    /// and keeps the Linux order.
    HostFeatures {
        /// Feature names, such as [`FEATURE_PIPELINED_OPEN`].
        features: Vec<String>,
    },
    /// The peer process of a link is gone; no channel will name it again.
    LinkClosed {
        /// The link.
        link: u64,
    },
    /// To a guest, just before the successful OPENCHANNEL_RESULT of
    /// `relid`: the link that carries the channel's signals.
    ChannelLink {
        /// The channel.
        relid: u32,
        /// The link.
        link: u64,
    },
    /// The guest side of a connection is gone (closed its channel, died, or
    /// its VM was removed): no more data will come and none can be sent.
    HostRevoked {
        /// The connection.
        conn: u64,
        /// Why, for people.
        reason: String,
    },
    /// Answer to `VmAdd` / `VmRemove`.
    VmResult {
        /// The VM, if the request succeeded.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        vm: Option<VmInfo>,
        /// Why it failed, if it did.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
    /// Answer to `VmList`.
    VmList {
        /// The VMs.
        vms: Vec<VmInfo>,
    },
    /// Answer to `Stat`.
    Stat {
        /// The report.
        report: StatReport,
    },
    /// A request was refused (wrong socket for it, malformed). The
    /// connection stays up.
    Refused {
        /// Why.
        reason: String,
    },
}

/// A decoded datagram of the control socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Datagram<T> {
    /// A VMBus channel message.
    Vmbus(crate::Message),
    /// An extension message.
    Ext(T),
}

/// Why a datagram could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum ExtDecodeError {
    /// Not a valid VMBus message.
    #[error("invalid VMBus message: {0}")]
    Vmbus(#[from] crate::DecodeError),
    /// An extension message whose JSON is not valid.
    #[error("invalid extension message: {0}")]
    Json(#[from] serde_json::Error),
    /// Shorter than a message header.
    #[error("a datagram of {0} bytes is shorter than the 8-byte message header")]
    TooShort(usize),
}

impl<T: for<'de> Deserialize<'de>> Datagram<T> {
    /// Decodes a datagram: an extension message or a VMBus message.
    pub fn decode(bytes: &[u8]) -> Result<Self, ExtDecodeError> {
        if bytes.len() < 8 {
            return Err(ExtDecodeError::TooShort(bytes.len()));
        }
        let ty = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
        if ty == EXT_MESSAGE_TYPE {
            Ok(Datagram::Ext(serde_json::from_slice(&bytes[8..])?))
        } else {
            Ok(Datagram::Vmbus(crate::Message::decode(bytes)?))
        }
    }
}

/// Encodes an extension message as a datagram.
pub fn encode_ext<T: Serialize>(message: &T) -> Vec<u8> {
    let mut out = Vec::with_capacity(128);
    out.extend_from_slice(&EXT_MESSAGE_TYPE.to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    serde_json::to_writer(&mut out, message).expect("extension messages always serialize");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ext_round_trip_and_vmbus_passthrough() {
        let request = ExtRequest::HostConnect {
            request: 7,
            vm_id: Guid::ZERO,
            vm_name: Some("alpha".into()),
            service_id: Guid::from_vsock_port(5000),
        };
        let bytes = encode_ext(&request);
        assert_eq!(&bytes[..8], &[0x56, 0x48, 0x00, 0x80, 0, 0, 0, 0]);
        assert_eq!(
            Datagram::<ExtRequest>::decode(&bytes).unwrap(),
            Datagram::Ext(request)
        );
        let vmbus = crate::Message::RequestOffers.encode();
        assert_eq!(
            Datagram::<ExtRequest>::decode(&vmbus).unwrap(),
            Datagram::Vmbus(crate::Message::RequestOffers)
        );
        assert!(Datagram::<ExtRequest>::decode(&[1, 2]).is_err());
        let mut bad = bytes.clone();
        bad.truncate(12);
        assert!(matches!(
            Datagram::<ExtRequest>::decode(&bad),
            Err(ExtDecodeError::Json(_))
        ));
    }

    #[test]
    fn guids_are_text_in_json() {
        let json = serde_json::to_string(&ExtRequest::GuestListen { port: 5 }).unwrap();
        assert_eq!(json, r#"{"op":"guest_listen","port":5}"#);
        let json = serde_json::to_string(&Partition::Vm(Guid::from_vsock_port(1))).unwrap();
        assert_eq!(json, r#"{"vm":"00000001-facb-11e6-bd58-64006a7986d3"}"#);
    }
}
