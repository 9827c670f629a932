//! Numbers of the VMBus control plane: message types, protocol versions,
//! offer flags, status codes and size limits (PROTOCOL.md 5 and 10).

use std::fmt;

/// The `msgtype` word at offset 0 of every channel message.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MessageType(pub u32);

impl MessageType {
    /// 0, never valid.
    pub const INVALID: MessageType = MessageType(0);
    /// 1, host → guest: a channel exists.
    pub const OFFERCHANNEL: MessageType = MessageType(1);
    /// 2, host → guest: a channel is withdrawn.
    pub const RESCIND_CHANNELOFFER: MessageType = MessageType(2);
    /// 3, guest → host: send all offers.
    pub const REQUESTOFFERS: MessageType = MessageType(3);
    /// 4, host → guest: all pre-existing offers were sent.
    pub const ALLOFFERS_DELIVERED: MessageType = MessageType(4);
    /// 5, guest → host: open a channel on a GPADL.
    pub const OPENCHANNEL: MessageType = MessageType(5);
    /// 6, host → guest: answer to OPENCHANNEL.
    pub const OPENCHANNEL_RESULT: MessageType = MessageType(6);
    /// 7, guest → host: close a channel.
    pub const CLOSECHANNEL: MessageType = MessageType(7);
    /// 8, guest → host: first message of a GPADL.
    pub const GPADL_HEADER: MessageType = MessageType(8);
    /// 9, guest → host: continuation of a GPADL.
    pub const GPADL_BODY: MessageType = MessageType(9);
    /// 10, host → guest: answer to a complete GPADL.
    pub const GPADL_CREATED: MessageType = MessageType(10);
    /// 11, guest → host: remove a GPADL.
    pub const GPADL_TEARDOWN: MessageType = MessageType(11);
    /// 12, host → guest: answer to GPADL_TEARDOWN.
    pub const GPADL_TORNDOWN: MessageType = MessageType(12);
    /// 13, guest → host: a rescinded relid may be reused.
    pub const RELID_RELEASED: MessageType = MessageType(13);
    /// 14, guest → host: propose a protocol version.
    pub const INITIATE_CONTACT: MessageType = MessageType(14);
    /// 15, host → guest: answer to INITIATE_CONTACT.
    pub const VERSION_RESPONSE: MessageType = MessageType(15);
    /// 16, guest → host: the guest leaves VMBus.
    pub const UNLOAD: MessageType = MessageType(16);
    /// 17, host → guest: answer to UNLOAD.
    pub const UNLOAD_RESPONSE: MessageType = MessageType(17);
    /// 18, reserved-channel open (not used by hv_sock).
    pub const OPEN_RESERVED_CHANNEL: MessageType = MessageType(18);
    /// 19, reserved-channel close (not used by hv_sock).
    pub const CLOSE_RESERVED_CHANNEL: MessageType = MessageType(19);
    /// 20, reserved-channel close answer (not used by hv_sock).
    pub const CLOSE_RESERVED_RESPONSE: MessageType = MessageType(20);
    /// 21, guest → host: hv_sock connect to a host service.
    pub const TL_CONNECT_REQUEST: MessageType = MessageType(21);
    /// 22, guest → host: retarget a channel's interrupt (not used by hv_sock).
    pub const MODIFYCHANNEL: MessageType = MessageType(22);
    /// 23, host → guest: hv_sock connect refused.
    pub const TL_CONNECT_RESULT: MessageType = MessageType(23);
    /// 24, answer to MODIFYCHANNEL (not used by hv_sock).
    pub const MODIFYCHANNEL_RESPONSE: MessageType = MessageType(24);
    /// 25, 6.0 feature (not used by hv_sock).
    pub const MODIFY_CONNECTION: MessageType = MessageType(25);
    /// 26, 6.0 feature (not used by hv_sock).
    pub const MODIFY_CONNECTION_RESPONSE: MessageType = MessageType(26);
    /// 27, 6.0 feature (not used by hv_sock).
    pub const PAUSE: MessageType = MessageType(27);
    /// 28, 6.0 feature (not used by hv_sock).
    pub const PAUSE_RESPONSE: MessageType = MessageType(28);
    /// 29, 6.0 feature (not used by hv_sock).
    pub const RESUME: MessageType = MessageType(29);

    /// The protocol name of the type (`"OFFERCHANNEL"`), or `None` for a
    /// number VMBus does not define.
    pub fn name(self) -> Option<&'static str> {
        const NAMES: [&str; 30] = [
            "INVALID",
            "OFFERCHANNEL",
            "RESCIND_CHANNELOFFER",
            "REQUESTOFFERS",
            "ALLOFFERS_DELIVERED",
            "OPENCHANNEL",
            "OPENCHANNEL_RESULT",
            "CLOSECHANNEL",
            "GPADL_HEADER",
            "GPADL_BODY",
            "GPADL_CREATED",
            "GPADL_TEARDOWN",
            "GPADL_TORNDOWN",
            "RELID_RELEASED",
            "INITIATE_CONTACT",
            "VERSION_RESPONSE",
            "UNLOAD",
            "UNLOAD_RESPONSE",
            "OPEN_RESERVED_CHANNEL",
            "CLOSE_RESERVED_CHANNEL",
            "CLOSE_RESERVED_RESPONSE",
            "TL_CONNECT_REQUEST",
            "MODIFYCHANNEL",
            "TL_CONNECT_RESULT",
            "MODIFYCHANNEL_RESPONSE",
            "MODIFY_CONNECTION",
            "MODIFY_CONNECTION_RESPONSE",
            "PAUSE",
            "PAUSE_RESPONSE",
            "RESUME",
        ];
        usize::try_from(self.0)
            .ok()
            .and_then(|i| NAMES.get(i))
            .copied()
    }
}

impl fmt::Display for MessageType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => write!(f, "{name} ({})", self.0),
            None => write!(f, "message type {}", self.0),
        }
    }
}

impl fmt::Debug for MessageType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Largest channel message, header included (the SynIC payload size).
pub const MAX_MESSAGE_SIZE: usize = 240;
/// Size of the message header (`msgtype` and 4 bytes of padding).
pub const HEADER_SIZE: usize = 8;

/// Size of a page on the wire, whatever the OS page size.
pub const PAGE_SIZE: usize = 4096;
/// Page numbers that fit in a GPADL_HEADER (28 + 8·26 = 236 bytes).
pub const GPADL_HEADER_MAX_PFNS: usize = 26;
/// Page numbers that fit in a GPADL_BODY (16 + 8·28 = 240 bytes).
pub const GPADL_BODY_MAX_PFNS: usize = 28;
/// Most pages a single-range GPADL can describe: `range_buflen` is a u16
/// and equals `8 + 8·pages`.
pub const GPADL_MAX_PAGES: usize = (u16::MAX as usize - 8) / 8;
/// The first GPADL handle Linux allocates (it counts up from here). A
/// handle is never 0.
pub const FIRST_LINUX_GPADL_HANDLE: u32 = 0x000E_1E10;

/// Protocol version 0.13 (Windows Server 2008).
pub const VERSION_WS2008: u32 = 0x0000_000D;
/// Protocol version 1.1 (Windows 7).
pub const VERSION_WIN7: u32 = 0x0001_0001;
/// Protocol version 2.4 (Windows 8).
pub const VERSION_WIN8: u32 = 0x0002_0004;
/// Protocol version 3.0 (Windows 8.1).
pub const VERSION_WIN8_1: u32 = 0x0003_0000;
/// Protocol version 4.0 (Windows 10): the minimum for hv_sock.
pub const VERSION_WIN10: u32 = 0x0004_0000;
/// Protocol version 4.1 (Windows 10 RS3): the host may send TL_CONNECT_RESULT.
pub const VERSION_WIN10_V4_1: u32 = 0x0004_0001;
/// Protocol version 5.0: message connection id 4 and `msg_conn_id`; hv_sock
/// rings may exceed 6 pages.
pub const VERSION_WIN10_V5: u32 = 0x0005_0000;
/// Protocol version 5.1 (Windows 10 RS4).
pub const VERSION_WIN10_V5_1: u32 = 0x0005_0001;
/// Protocol version 5.2 (Windows 10 RS5): TL_CONNECT_REQUEST may carry a silo id.
pub const VERSION_WIN10_V5_2: u32 = 0x0005_0002;
/// Protocol version 5.3 (Iron): MODIFYCHANNEL is acknowledged.
pub const VERSION_WIN10_V5_3: u32 = 0x0005_0003;
/// Protocol version 6.0 (Copper): feature flags in INITIATE_CONTACT and
/// VERSION_RESPONSE.
pub const VERSION_COPPER: u32 = 0x0006_0000;
/// The oldest version hv_sock runs on.
pub const MIN_HVSOCK_VERSION: u32 = VERSION_WIN10;
/// Every known version, newest first: the order in which a guest proposes
/// them.
pub const KNOWN_VERSIONS: [u32; 11] = [
    VERSION_COPPER,
    VERSION_WIN10_V5_3,
    VERSION_WIN10_V5_2,
    VERSION_WIN10_V5_1,
    VERSION_WIN10_V5,
    VERSION_WIN10_V4_1,
    VERSION_WIN10,
    VERSION_WIN8_1,
    VERSION_WIN8,
    VERSION_WIN7,
    VERSION_WS2008,
];

/// Connection id for guest → host messages below version 5.0.
pub const MESSAGE_CONNECTION_ID_LEGACY: u32 = 1;
/// Connection id for INITIATE_CONTACT from version 5.0 on (later messages
/// use the `msg_conn_id` of VERSION_RESPONSE).
pub const MESSAGE_CONNECTION_ID: u32 = 4;
/// The SINT on which host → guest messages arrive.
pub const MESSAGE_SINT: u8 = 2;

/// `chn_flags` 0x0001: enumerate a device interface (OpenVMM sets it for hv_sock).
pub const CHANNEL_FLAG_ENUMERATE_DEVICE_INTERFACE: u16 = 0x0001;
/// `chn_flags` 0x0002 (Linux: server supports transfer pages; OpenVMM:
/// confidential ring buffer).
pub const CHANNEL_FLAG_SERVER_SUPPORTS_TRANSFER_PAGES: u16 = 0x0002;
/// `chn_flags` 0x0004 (Linux: server supports GPADLs; OpenVMM: confidential
/// external memory).
pub const CHANNEL_FLAG_SERVER_SUPPORTS_GPADLS: u16 = 0x0004;
/// `chn_flags` 0x0008 (OpenVMM: require pinned external memory).
pub const CHANNEL_FLAG_REQUIRE_PINNED_EXTERNAL_MEMORY: u16 = 0x0008;
/// `chn_flags` 0x0010: named-pipe mode (set for hv_sock).
pub const CHANNEL_FLAG_NAMED_PIPE_MODE: u16 = 0x0010;
/// `chn_flags` 0x0100: loopback offer.
pub const CHANNEL_FLAG_LOOPBACK_OFFER: u16 = 0x0100;
/// `chn_flags` 0x0200: parent offer.
pub const CHANNEL_FLAG_PARENT_OFFER: u16 = 0x0200;
/// `chn_flags` 0x0400: request monitored notification.
pub const CHANNEL_FLAG_REQUEST_MONITORED_NOTIFICATION: u16 = 0x0400;
/// `chn_flags` 0x2000: TLNPI provider offer, i.e. an hv_sock channel. The
/// only bit guests test.
pub const CHANNEL_FLAG_TLNPI_PROVIDER: u16 = 0x2000;
/// The flags OpenVMM puts in hv_sock offers: TLNPI provider, named-pipe
/// mode, enumerate device interface (0x2011).
pub const HVSOCK_OFFER_FLAGS: u16 = CHANNEL_FLAG_TLNPI_PROVIDER
    | CHANNEL_FLAG_NAMED_PIPE_MODE
    | CHANNEL_FLAG_ENUMERATE_DEVICE_INTERFACE;

/// `monitorid` meaning "no monitor" (what OpenVMM sends for hv_sock).
pub const MONITOR_ID_NONE: u8 = 0xFF;
/// `target_vp` meaning "no particular VP" (OpenVMM).
pub const TARGET_VP_NONE: u32 = 0xFFFF_FFFF;

/// hv_sock `pipe_mode`: byte stream.
pub const PIPE_MODE_BYTE: u32 = 0;
/// hv_sock `pipe_mode`: message pipe.
pub const PIPE_MODE_MESSAGE: u32 = 4;
/// hv_sock offer parameters version before Windows 10 RS5.
pub const HVSOCK_PARAMS_VERSION_PRE_RS5: u32 = 0;
/// hv_sock offer parameters version from Windows 10 RS5 on (silo id valid).
pub const HVSOCK_PARAMS_VERSION_RS5: u32 = 1;

/// VERSION_RESPONSE `connection_state`: connected.
pub const CONNECTION_STATE_SUCCESSFUL: u8 = 0;
/// VERSION_RESPONSE `connection_state`: the host lacks resources.
pub const CONNECTION_STATE_LOW_RESOURCES: u8 = 1;
/// VERSION_RESPONSE `connection_state`: unknown failure.
pub const CONNECTION_STATE_UNKNOWN_FAILURE: u8 = 2;

/// NTSTATUS success.
pub const STATUS_SUCCESS: u32 = 0;
/// NTSTATUS generic failure (OpenVMM's GPADL_CREATED error status).
pub const STATUS_UNSUCCESSFUL: u32 = 0x8000_FFFF;
/// NTSTATUS connection refused (TL_CONNECT_RESULT when no service listens).
pub const STATUS_CONNECTION_REFUSED: u32 = 0xC000_0236;
