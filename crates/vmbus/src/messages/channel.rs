//! Per-channel messages with a layout of their own: OFFERCHANNEL (with the
//! hv_sock user-defined parameters) and OPENCHANNEL (PROTOCOL.md 5.5).

use super::consts::{
    MessageType, CHANNEL_FLAG_TLNPI_PROVIDER, HVSOCK_OFFER_FLAGS, MESSAGE_SINT, MONITOR_ID_NONE,
};
use super::error::DecodeError;
use super::guid::Guid;
use super::wire::*;

/// Size of the user-defined area of an offer and of an open request.
pub const USER_DEFINED_SIZE: usize = 120;

/// OFFERCHANNEL (1), host → guest, 196 bytes.
///
/// The reserved words at offsets 40..56 and 182 are written as zero and
/// ignored on decode. `monitor_allocated` and `is_dedicated_interrupt` are
/// bit 0 of their fields; other bits are ignored on decode.
///
/// The 120-byte user-defined area is kept raw in `user_defined`, so offers of
/// any channel type survive a decode/encode; for hv_sock offers
/// [`OfferChannel::hvsock_params`] reads it as [`HvsockParams`].
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct OfferChannel {
    /// Interface type GUID (offset 8). For hv_sock: the service id of the
    /// listening side (PROTOCOL.md 4.2).
    pub if_type: Guid,
    /// Interface instance GUID (offset 24). For hv_sock: the endpoint id of
    /// the connecting side.
    pub if_instance: Guid,
    /// Offer flags (offset 56), `CHANNEL_FLAG_*`.
    pub chn_flags: u16,
    /// MMIO space wanted, in MiB (offset 58); 0 for hv_sock.
    pub mmio_megabytes: u16,
    /// The user-defined area (offsets 60..180).
    pub user_defined: [u8; USER_DEFINED_SIZE],
    /// Sub-channel index (offset 180); 0 for hv_sock.
    pub sub_channel_index: u16,
    /// The channel's relid (offset 184).
    pub child_relid: u32,
    /// Monitor id (offset 188); [`MONITOR_ID_NONE`] when unused.
    pub monitor_id: u8,
    /// Whether `monitor_id` is valid (bit 0 of offset 189).
    pub monitor_allocated: bool,
    /// Whether the channel has a dedicated interrupt (bit 0 of offset 190).
    pub is_dedicated_interrupt: bool,
    /// Connection id the guest signals on (offset 192).
    pub connection_id: u32,
}

impl OfferChannel {
    /// Length of the message.
    pub const LEN: usize = 196;

    /// An hv_sock offer with the OpenVMM-style tail of PROTOCOL.md 7.7: flags
    /// 0x2011, no monitor, dedicated interrupt, connection id
    /// `relid + (SINT 2 << 12)` (VTL 0).
    pub fn hvsock(
        child_relid: u32,
        if_type: Guid,
        if_instance: Guid,
        params: &HvsockParams,
    ) -> Self {
        OfferChannel {
            if_type,
            if_instance,
            chn_flags: HVSOCK_OFFER_FLAGS,
            mmio_megabytes: 0,
            user_defined: params.to_user_defined(),
            sub_channel_index: 0,
            child_relid,
            monitor_id: MONITOR_ID_NONE,
            monitor_allocated: false,
            is_dedicated_interrupt: true,
            connection_id: child_relid.wrapping_add(u32::from(MESSAGE_SINT) << 12),
        }
    }

    /// Whether this offer is an hv_sock channel (flag 0x2000).
    pub fn is_hvsock(&self) -> bool {
        self.chn_flags & CHANNEL_FLAG_TLNPI_PROVIDER != 0
    }

    /// The user-defined area read as hv_sock parameters, for hv_sock offers
    /// only.
    pub fn hvsock_params(&self) -> Option<HvsockParams> {
        self.is_hvsock()
            .then(|| HvsockParams::from_user_defined(&self.user_defined))
    }

    pub(crate) fn decode(b: &[u8]) -> Result<Self, DecodeError> {
        super::expect_len(MessageType::OFFERCHANNEL, b, &[Self::LEN], "exactly 196")?;
        Ok(OfferChannel {
            if_type: get_guid(b, 8),
            if_instance: get_guid(b, 24),
            chn_flags: get_u16(b, 56),
            mmio_megabytes: get_u16(b, 58),
            user_defined: get_array(b, 60),
            sub_channel_index: get_u16(b, 180),
            child_relid: get_u32(b, 184),
            monitor_id: get_u8(b, 188),
            monitor_allocated: get_u8(b, 189) & 1 != 0,
            is_dedicated_interrupt: get_u16(b, 190) & 1 != 0,
            connection_id: get_u32(b, 192),
        })
    }

    pub(crate) fn encode_into(&self, b: &mut [u8]) -> usize {
        put_guid(b, 8, &self.if_type);
        put_guid(b, 24, &self.if_instance);
        put_u16(b, 56, self.chn_flags);
        put_u16(b, 58, self.mmio_megabytes);
        put_bytes(b, 60, &self.user_defined);
        put_u16(b, 180, self.sub_channel_index);
        put_u32(b, 184, self.child_relid);
        put_u8(b, 188, self.monitor_id);
        put_u8(b, 189, u8::from(self.monitor_allocated));
        put_u16(b, 190, u16::from(self.is_dedicated_interrupt));
        put_u32(b, 192, self.connection_id);
        Self::LEN
    }
}

/// The user-defined area of an hv_sock offer (OpenVMM's layout; Linux reads
/// only `is_for_guest_accept`).
///
/// Area offsets: `pipe_mode` u32 @0, `is_for_guest_accept` u8 @4,
/// `is_for_guest_container` u8 @5, `version` u32 @6 (unaligned), `silo_id`
/// @10, zero from 26 to 120. On reading, a non-zero byte is `true` and bytes
/// 26..120 are ignored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct HvsockParams {
    /// [`PIPE_MODE_BYTE`](super::PIPE_MODE_BYTE) (0) for hv_sock streams.
    pub pipe_mode: u32,
    /// `true` when the host connected to a guest listener, `false` when the
    /// offer answers a TL_CONNECT_REQUEST (Linux: `conn_from_host`, message
    /// byte 64).
    pub is_for_guest_accept: bool,
    /// Whether the offer is for a container in the guest (0 for hv_sock).
    pub is_for_guest_container: bool,
    /// Parameters version: 0 before RS5, 1 from RS5 on.
    pub version: u32,
    /// Silo id (zero unless a container is involved).
    pub silo_id: Guid,
}

impl HvsockParams {
    /// Reads the parameters from an offer's user-defined area.
    pub fn from_user_defined(area: &[u8; USER_DEFINED_SIZE]) -> Self {
        HvsockParams {
            pipe_mode: get_u32(area, 0),
            is_for_guest_accept: get_u8(area, 4) != 0,
            is_for_guest_container: get_u8(area, 5) != 0,
            version: get_u32(area, 6),
            silo_id: get_guid(area, 10),
        }
    }

    /// Writes the parameters as a user-defined area (unused bytes zero).
    pub fn to_user_defined(&self) -> [u8; USER_DEFINED_SIZE] {
        let mut area = [0u8; USER_DEFINED_SIZE];
        put_u32(&mut area, 0, self.pipe_mode);
        put_u8(&mut area, 4, u8::from(self.is_for_guest_accept));
        put_u8(&mut area, 5, u8::from(self.is_for_guest_container));
        put_u32(&mut area, 6, self.version);
        put_guid(&mut area, 10, &self.silo_id);
        area
    }
}

/// OPENCHANNEL (5), guest → host, 148 bytes (156 with the 6.0 fields).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct OpenChannel {
    /// The channel to open (offset 8).
    pub child_relid: u32,
    /// Echoed in OPENCHANNEL_RESULT (offset 12); Linux uses the relid.
    pub openid: u32,
    /// The GPADL holding both rings (offset 16).
    pub ringbuffer_gpadlhandle: u32,
    /// VP for host → guest interrupts (offset 20).
    pub target_vp: u32,
    /// Page offset of the host → guest ring inside the GPADL, i.e. the
    /// number of pages of the guest's send ring (offset 24).
    pub downstream_ringbuffer_pageoffset: u32,
    /// User data (offsets 28..148); zero for hv_sock.
    pub userdata: [u8; USER_DEFINED_SIZE],
    /// The 6.0 guest-specified signal fields (offsets 148..156), present
    /// only in the 156-byte form.
    pub guest_signal: Option<OpenChannelGuestSignal>,
}

/// The trailing fields of the 156-byte OPENCHANNEL (protocol 6.0).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct OpenChannelGuestSignal {
    /// Connection id the guest wants to be signalled on (offset 148).
    pub connection_id: u32,
    /// Event flag (offset 152).
    pub event_flag: u16,
    /// Flags (offset 154); bit 0 = redirect interrupt.
    pub flags: u16,
}

impl OpenChannel {
    /// Length of the usual form.
    pub const LEN: usize = 148;
    /// Length of the form with [`OpenChannelGuestSignal`].
    pub const LEN_WITH_GUEST_SIGNAL: usize = 156;

    pub(crate) fn decode(b: &[u8]) -> Result<Self, DecodeError> {
        super::expect_len(
            MessageType::OPENCHANNEL,
            b,
            &[Self::LEN, Self::LEN_WITH_GUEST_SIGNAL],
            "148 or 156",
        )?;
        Ok(OpenChannel {
            child_relid: get_u32(b, 8),
            openid: get_u32(b, 12),
            ringbuffer_gpadlhandle: get_u32(b, 16),
            target_vp: get_u32(b, 20),
            downstream_ringbuffer_pageoffset: get_u32(b, 24),
            userdata: get_array(b, 28),
            guest_signal: (b.len() == Self::LEN_WITH_GUEST_SIGNAL).then(|| {
                OpenChannelGuestSignal {
                    connection_id: get_u32(b, 148),
                    event_flag: get_u16(b, 152),
                    flags: get_u16(b, 154),
                }
            }),
        })
    }

    pub(crate) fn encode_into(&self, b: &mut [u8]) -> usize {
        put_u32(b, 8, self.child_relid);
        put_u32(b, 12, self.openid);
        put_u32(b, 16, self.ringbuffer_gpadlhandle);
        put_u32(b, 20, self.target_vp);
        put_u32(b, 24, self.downstream_ringbuffer_pageoffset);
        put_bytes(b, 28, &self.userdata);
        match &self.guest_signal {
            None => Self::LEN,
            Some(s) => {
                put_u32(b, 148, s.connection_id);
                put_u16(b, 152, s.event_flag);
                put_u16(b, 154, s.flags);
                Self::LEN_WITH_GUEST_SIGNAL
            }
        }
    }
}
