//! Bus-level and hv_sock connect messages: INITIATE_CONTACT,
//! VERSION_RESPONSE, TL_CONNECT_REQUEST and TL_CONNECT_RESULT (PROTOCOL.md
//! 5.5).

use super::consts::MessageType;
use super::error::DecodeError;
use super::guid::Guid;
use super::wire::*;

/// INITIATE_CONTACT (14), guest → host, 40 bytes (56 with a client id).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct InitiateContact {
    /// The proposed protocol version (offset 8), `VERSION_*`.
    pub vmbus_version_requested: u32,
    /// VP that receives control messages (offset 12).
    pub target_vcpu: u32,
    /// Offset 16, 8 bytes. Below 5.0: the interrupt page GPA. From 5.0 on:
    /// byte 0 the message SINT, byte 1 the VTL, bytes 4..8 feature flags
    /// (6.0); see [`InitiateContact::target_info`] and the accessors.
    pub interrupt_page_or_target_info: u64,
    /// Monitor page 1 GPA, parent → child (offset 24).
    pub parent_to_child_monitor_page_gpa: u64,
    /// Monitor page 2 GPA, child → parent (offset 32).
    pub child_to_parent_monitor_page_gpa: u64,
    /// Client id (offset 40), only in the 56-byte 6.0 form.
    pub client_id: Option<Guid>,
}

impl InitiateContact {
    /// Length of the usual form.
    pub const LEN: usize = 40;
    /// Length of the form with a client id.
    pub const LEN_WITH_CLIENT_ID: usize = 56;

    /// Packs the ≥ 5.0 meaning of offset 16: message SINT, VTL and feature
    /// flags.
    pub const fn target_info(sint: u8, vtl: u8, feature_flags: u32) -> u64 {
        (sint as u64) | ((vtl as u64) << 8) | ((feature_flags as u64) << 32)
    }

    /// The message SINT (≥ 5.0 meaning of byte 16).
    pub const fn message_sint(&self) -> u8 {
        self.interrupt_page_or_target_info.to_le_bytes()[0]
    }

    /// The VTL (≥ 5.0 meaning of byte 17).
    pub const fn vtl(&self) -> u8 {
        self.interrupt_page_or_target_info.to_le_bytes()[1]
    }

    /// The feature flags (6.0 meaning of bytes 20..24).
    pub const fn feature_flags(&self) -> u32 {
        (self.interrupt_page_or_target_info >> 32) as u32
    }

    pub(crate) fn decode(b: &[u8]) -> Result<Self, DecodeError> {
        super::expect_len(
            MessageType::INITIATE_CONTACT,
            b,
            &[Self::LEN, Self::LEN_WITH_CLIENT_ID],
            "40 or 56",
        )?;
        Ok(InitiateContact {
            vmbus_version_requested: get_u32(b, 8),
            target_vcpu: get_u32(b, 12),
            interrupt_page_or_target_info: get_u64(b, 16),
            parent_to_child_monitor_page_gpa: get_u64(b, 24),
            child_to_parent_monitor_page_gpa: get_u64(b, 32),
            client_id: (b.len() == Self::LEN_WITH_CLIENT_ID).then(|| get_guid(b, 40)),
        })
    }

    pub(crate) fn encode_into(&self, b: &mut [u8]) -> usize {
        put_u32(b, 8, self.vmbus_version_requested);
        put_u32(b, 12, self.target_vcpu);
        put_u64(b, 16, self.interrupt_page_or_target_info);
        put_u64(b, 24, self.parent_to_child_monitor_page_gpa);
        put_u64(b, 32, self.child_to_parent_monitor_page_gpa);
        match &self.client_id {
            None => Self::LEN,
            Some(id) => {
                put_guid(b, 40, id);
                Self::LEN_WITH_CLIENT_ID
            }
        }
    }
}

/// VERSION_RESPONSE (15), host → guest: 16 bytes, or 20/40 on 6.0.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct VersionResponse {
    /// Whether the proposed version is accepted (offset 8; any non-zero
    /// byte reads as `true`, `true` is written as 1).
    pub version_supported: bool,
    /// `CONNECTION_STATE_*` (offset 9).
    pub connection_state: u8,
    /// Offset 12: on ≥ 5.0 the connection id for later guest messages
    /// (OpenVMM: "selected version or connection id").
    pub msg_conn_id: u32,
    /// The 6.0 tail, which decides the length.
    pub ext: VersionResponseExt,
}

/// The optional 6.0 tail of a VERSION_RESPONSE.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum VersionResponseExt {
    /// The 16-byte form.
    #[default]
    None,
    /// The 20-byte form: supported feature flags at offset 16.
    Features {
        /// Supported feature flags (offset 16).
        supported_features: u32,
    },
    /// The 40-byte form: feature flags, 4 bytes of padding (ignored on
    /// decode), then the host's monitor pages.
    FeaturesAndMonitorPages {
        /// Supported feature flags (offset 16).
        supported_features: u32,
        /// Monitor page GPA, parent → child (offset 24).
        parent_to_child_monitor_page_gpa: u64,
        /// Monitor page GPA, child → parent (offset 32).
        child_to_parent_monitor_page_gpa: u64,
    },
}

impl VersionResponse {
    /// Length of the usual form.
    pub const LEN: usize = 16;
    /// Length of the form with feature flags.
    pub const LEN_WITH_FEATURES: usize = 20;
    /// Length of the form with feature flags and monitor pages.
    pub const LEN_WITH_MONITOR_PAGES: usize = 40;

    pub(crate) fn decode(b: &[u8]) -> Result<Self, DecodeError> {
        super::expect_len(
            MessageType::VERSION_RESPONSE,
            b,
            &[
                Self::LEN,
                Self::LEN_WITH_FEATURES,
                Self::LEN_WITH_MONITOR_PAGES,
            ],
            "16, 20 or 40",
        )?;
        let ext = match b.len() {
            Self::LEN_WITH_FEATURES => VersionResponseExt::Features {
                supported_features: get_u32(b, 16),
            },
            Self::LEN_WITH_MONITOR_PAGES => VersionResponseExt::FeaturesAndMonitorPages {
                supported_features: get_u32(b, 16),
                parent_to_child_monitor_page_gpa: get_u64(b, 24),
                child_to_parent_monitor_page_gpa: get_u64(b, 32),
            },
            _ => VersionResponseExt::None,
        };
        Ok(VersionResponse {
            version_supported: get_u8(b, 8) != 0,
            connection_state: get_u8(b, 9),
            msg_conn_id: get_u32(b, 12),
            ext,
        })
    }

    pub(crate) fn encode_into(&self, b: &mut [u8]) -> usize {
        put_u8(b, 8, u8::from(self.version_supported));
        put_u8(b, 9, self.connection_state);
        put_u32(b, 12, self.msg_conn_id);
        match self.ext {
            VersionResponseExt::None => Self::LEN,
            VersionResponseExt::Features { supported_features } => {
                put_u32(b, 16, supported_features);
                Self::LEN_WITH_FEATURES
            }
            VersionResponseExt::FeaturesAndMonitorPages {
                supported_features,
                parent_to_child_monitor_page_gpa,
                child_to_parent_monitor_page_gpa,
            } => {
                put_u32(b, 16, supported_features);
                put_u64(b, 24, parent_to_child_monitor_page_gpa);
                put_u64(b, 32, child_to_parent_monitor_page_gpa);
                Self::LEN_WITH_MONITOR_PAGES
            }
        }
    }
}

/// TL_CONNECT_REQUEST (21), guest → host, 40 bytes (56 with a silo id, on
/// ≥ 5.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TlConnectRequest {
    /// The guest's endpoint (offset 8); vsock-shaped, `Data1` = guest port.
    pub guest_endpoint_id: Guid,
    /// The host service (offset 24); vsock-shaped, `Data1` = host port.
    pub host_service_id: Guid,
    /// Silo id (offset 40), only in the 56-byte form. Linux never sends it.
    pub silo_id: Option<Guid>,
}

impl TlConnectRequest {
    /// Length of the usual form.
    pub const LEN: usize = 40;
    /// Length of the form with a silo id.
    pub const LEN_WITH_SILO_ID: usize = 56;

    pub(crate) fn decode(b: &[u8]) -> Result<Self, DecodeError> {
        super::expect_len(
            MessageType::TL_CONNECT_REQUEST,
            b,
            &[Self::LEN, Self::LEN_WITH_SILO_ID],
            "40 or 56",
        )?;
        Ok(TlConnectRequest {
            guest_endpoint_id: get_guid(b, 8),
            host_service_id: get_guid(b, 24),
            silo_id: (b.len() == Self::LEN_WITH_SILO_ID).then(|| get_guid(b, 40)),
        })
    }

    pub(crate) fn encode_into(&self, b: &mut [u8]) -> usize {
        put_guid(b, 8, &self.guest_endpoint_id);
        put_guid(b, 24, &self.host_service_id);
        match &self.silo_id {
            None => Self::LEN,
            Some(id) => {
                put_guid(b, 40, id);
                Self::LEN_WITH_SILO_ID
            }
        }
    }
}

/// TL_CONNECT_RESULT (23), host → guest, 44 bytes: a refused
/// TL_CONNECT_REQUEST (success is signalled by an offer instead).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TlConnectResult {
    /// Endpoint id copied from the request (offset 8).
    pub endpoint_id: Guid,
    /// Service id copied from the request (offset 24).
    pub service_id: Guid,
    /// NTSTATUS (offset 40), kept as its raw 32 bits, e.g.
    /// [`STATUS_CONNECTION_REFUSED`](super::STATUS_CONNECTION_REFUSED).
    pub status: u32,
}

impl TlConnectResult {
    /// Length of the message.
    pub const LEN: usize = 44;

    pub(crate) fn decode(b: &[u8]) -> Result<Self, DecodeError> {
        super::expect_len(
            MessageType::TL_CONNECT_RESULT,
            b,
            &[Self::LEN],
            "exactly 44",
        )?;
        Ok(TlConnectResult {
            endpoint_id: get_guid(b, 8),
            service_id: get_guid(b, 24),
            status: get_u32(b, 40),
        })
    }

    pub(crate) fn encode_into(&self, b: &mut [u8]) -> usize {
        put_guid(b, 8, &self.endpoint_id);
        put_guid(b, 24, &self.service_id);
        put_u32(b, 40, self.status);
        Self::LEN
    }
}
