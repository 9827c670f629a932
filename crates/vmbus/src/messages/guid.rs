//! The [`Guid`] type: 16 bytes in Microsoft wire order, its canonical text
//! form, the vsock service-id template and the well-known Hyper-V VM ids
//! (PROTOCOL.md 4.1 and 4.4).

use std::fmt;
use std::str::FromStr;

/// A GUID as it travels in VMBus messages.
///
/// The 16 bytes are stored in Microsoft wire order: `Data1` (u32,
/// little-endian), `Data2` (u16, little-endian), `Data3` (u16, little-endian),
/// then `Data4` (8 bytes, as written). The text form
/// `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx` prints `Data1`, `Data2` and `Data3`
/// as big-endian numbers, so the text and the wire bytes differ in order for
/// the first three groups:
///
/// ```
/// use vmbus::Guid;
/// let g: Guid = "00001234-facb-11e6-bd58-64006a7986d3".parse().unwrap();
/// assert_eq!(g.as_bytes()[..8], [0x34, 0x12, 0x00, 0x00, 0xcb, 0xfa, 0xe6, 0x11]);
/// assert_eq!(g.vsock_port(), Some(0x1234));
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Guid([u8; 16]);

/// `Data4` of the vsock template, shared by every vsock-shaped GUID.
const VSOCK_DATA4: [u8; 8] = [0xbd, 0x58, 0x64, 0x00, 0x6a, 0x79, 0x86, 0xd3];

impl Guid {
    /// The all-zero GUID (`HV_GUID_ZERO`): a listener on it accepts from all
    /// partitions.
    pub const ZERO: Guid = Guid([0; 16]);
    /// `HV_GUID_WILDCARD`, the same value as [`Guid::ZERO`].
    pub const WILDCARD: Guid = Guid([0; 16]);
    /// `HV_GUID_BROADCAST`, all bits set (no documented meaning).
    pub const BROADCAST: Guid = Guid([0xff; 16]);
    /// `HV_GUID_CHILDREN` (90db8b89-0d35-4f79-8ce9-49ea0ac8b7cd): a listener
    /// on it accepts from this partition's children.
    pub const CHILDREN: Guid = Guid::from_fields(
        0x90db_8b89,
        0x0d35,
        0x4f79,
        [0x8c, 0xe9, 0x49, 0xea, 0x0a, 0xc8, 0xb7, 0xcd],
    );
    /// `HV_GUID_LOOPBACK` (e0e16197-dd56-4a10-9195-5ee7a155a838): connect to
    /// the same partition.
    pub const LOOPBACK: Guid = Guid::from_fields(
        0xe0e1_6197,
        0xdd56,
        0x4a10,
        [0x91, 0x95, 0x5e, 0xe7, 0xa1, 0x55, 0xa8, 0x38],
    );
    /// `HV_GUID_PARENT` (a42e7cda-d03f-480c-9cc2-a4de20abb878): connect to the
    /// parent partition.
    pub const PARENT: Guid = Guid::from_fields(
        0xa42e_7cda,
        0xd03f,
        0x480c,
        [0x9c, 0xc2, 0xa4, 0xde, 0x20, 0xab, 0xb8, 0x78],
    );
    /// `HV_GUID_SILOHOST` (36bd0c5c-7276-4223-88ba-7d03b654c568): the silo
    /// (Windows container) host.
    pub const SILOHOST: Guid = Guid::from_fields(
        0x36bd_0c5c,
        0x7276,
        0x4223,
        [0x88, 0xba, 0x7d, 0x03, 0xb6, 0x54, 0xc5, 0x68],
    );
    /// The vsock service-id template, 00000000-facb-11e6-bd58-64006a7986d3.
    /// Port `P` is the template with `Data1 = P`.
    pub const VSOCK_TEMPLATE: Guid = Guid::from_fields(0, 0xfacb, 0x11e6, VSOCK_DATA4);

    /// Wraps 16 bytes that are already in wire order.
    pub const fn from_bytes(wire: [u8; 16]) -> Guid {
        Guid(wire)
    }

    /// The 16 wire-order bytes.
    pub const fn to_bytes(self) -> [u8; 16] {
        self.0
    }

    /// The 16 wire-order bytes, borrowed.
    pub const fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }

    /// Builds a GUID from its four fields, as they read in the text form.
    pub const fn from_fields(data1: u32, data2: u16, data3: u16, data4: [u8; 8]) -> Guid {
        let d1 = data1.to_le_bytes();
        let d2 = data2.to_le_bytes();
        let d3 = data3.to_le_bytes();
        Guid([
            d1[0], d1[1], d1[2], d1[3], d2[0], d2[1], d3[0], d3[1], data4[0], data4[1], data4[2],
            data4[3], data4[4], data4[5], data4[6], data4[7],
        ])
    }

    /// `Data1`, the first text group (the vsock port of a vsock-shaped GUID;
    /// Linux matches offers on it alone).
    pub const fn data1(&self) -> u32 {
        u32::from_le_bytes([self.0[0], self.0[1], self.0[2], self.0[3]])
    }

    /// `Data2`, the second text group.
    pub const fn data2(&self) -> u16 {
        u16::from_le_bytes([self.0[4], self.0[5]])
    }

    /// `Data3`, the third text group.
    pub const fn data3(&self) -> u16 {
        u16::from_le_bytes([self.0[6], self.0[7]])
    }

    /// `Data4`, the last 8 bytes (fourth and fifth text groups).
    pub const fn data4(&self) -> [u8; 8] {
        let b = &self.0;
        [b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]]
    }

    /// The service GUID of vsock port `port`:
    /// `{port:08x}-facb-11e6-bd58-64006a7986d3`.
    pub const fn from_vsock_port(port: u32) -> Guid {
        Guid::from_fields(port, 0xfacb, 0x11e6, VSOCK_DATA4)
    }

    /// Whether this GUID is vsock-shaped: its last 12 wire bytes equal the
    /// template's.
    pub fn is_vsock(&self) -> bool {
        self.0[4..] == Guid::VSOCK_TEMPLATE.0[4..]
    }

    /// The vsock port of a vsock-shaped GUID (`Data1`), `None` for any other
    /// GUID.
    pub fn vsock_port(&self) -> Option<u32> {
        self.is_vsock().then(|| self.data1())
    }
}

impl From<[u8; 16]> for Guid {
    fn from(wire: [u8; 16]) -> Guid {
        Guid(wire)
    }
}

impl From<Guid> for [u8; 16] {
    fn from(g: Guid) -> [u8; 16] {
        g.0
    }
}

impl fmt::Display for Guid {
    /// Lower-case canonical form, `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d4 = self.data4();
        write!(
            f,
            "{:08x}-{:04x}-{:04x}-{:02x}{:02x}-{:02x}{:02x}{:02x}{:02x}{:02x}{:02x}",
            self.data1(),
            self.data2(),
            self.data3(),
            d4[0],
            d4[1],
            d4[2],
            d4[3],
            d4[4],
            d4[5],
            d4[6],
            d4[7]
        )
    }
}

impl fmt::Debug for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Guid({self})")
    }
}

/// Why a string is not a GUID in canonical text form.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseGuidError {
    /// The text (without braces) is not 36 characters long.
    #[error("a GUID has 36 characters (xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx), got {len}")]
    Length {
        /// Length of the text in bytes, braces removed.
        len: usize,
    },
    /// A `-` is missing at one of positions 8, 13, 18, 23.
    #[error("expected '-' at position {pos} of the GUID")]
    Separator {
        /// Byte position (braces removed).
        pos: usize,
    },
    /// A character that should be a hex digit is not.
    #[error("expected a hex digit at position {pos} of the GUID")]
    Digit {
        /// Byte position (braces removed).
        pos: usize,
    },
}

impl FromStr for Guid {
    type Err = ParseGuidError;

    /// Parses `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`, hex digits in either
    /// case, optionally wrapped in `{}` (the Windows registry form).
    fn from_str(s: &str) -> Result<Guid, ParseGuidError> {
        let s = s
            .strip_prefix('{')
            .and_then(|t| t.strip_suffix('}'))
            .unwrap_or(s);
        let text = s.as_bytes();
        if text.len() != 36 {
            return Err(ParseGuidError::Length { len: text.len() });
        }
        // The 16 bytes in text order (Data1..Data3 big-endian as printed).
        let mut be = [0u8; 16];
        let mut nibble = 0usize;
        for (pos, &c) in text.iter().enumerate() {
            if matches!(pos, 8 | 13 | 18 | 23) {
                if c != b'-' {
                    return Err(ParseGuidError::Separator { pos });
                }
                continue;
            }
            let v = char::from(c)
                .to_digit(16)
                .ok_or(ParseGuidError::Digit { pos })?;
            // `v` < 16, so the narrowing cannot lose bits.
            be[nibble / 2] |= (v as u8) << if nibble % 2 == 0 { 4 } else { 0 };
            nibble += 1;
        }
        let data1 = u32::from_be_bytes([be[0], be[1], be[2], be[3]]);
        let data2 = u16::from_be_bytes([be[4], be[5]]);
        let data3 = u16::from_be_bytes([be[6], be[7]]);
        let mut data4 = [0u8; 8];
        data4.copy_from_slice(&be[8..]);
        Ok(Guid::from_fields(data1, data2, data3, data4))
    }
}

/// GUIDs travel in the text form in the JSON of the extension protocol.
impl serde::Serialize for Guid {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Guid {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_round_trip_and_case() {
        let text = "3f2504e0-4f89-11d3-9a0c-0305e82c3301";
        let g: Guid = text.parse().unwrap();
        assert_eq!(
            g.to_bytes(),
            [
                0xe0, 0x04, 0x25, 0x3f, 0x89, 0x4f, 0xd3, 0x11, 0x9a, 0x0c, 0x03, 0x05, 0xe8, 0x2c,
                0x33, 0x01
            ]
        );
        assert_eq!(g.to_string(), text);
        assert_eq!(
            "{3F2504E0-4F89-11D3-9A0C-0305E82C3301}".parse::<Guid>(),
            Ok(g)
        );
    }

    #[test]
    fn parse_errors() {
        assert_eq!(
            "3f2504e0-4f89-11d3-9a0c-0305e82c330".parse::<Guid>(),
            Err(ParseGuidError::Length { len: 35 })
        );
        assert_eq!(
            "3f2504e0-4f89-11d3+9a0c-0305e82c3301".parse::<Guid>(),
            Err(ParseGuidError::Separator { pos: 18 })
        );
        assert_eq!(
            "3f2504e0-4f89-11d3-9a0c-0305e82c330g".parse::<Guid>(),
            Err(ParseGuidError::Digit { pos: 35 })
        );
        // A multi-byte character must not be split or panic.
        assert!("3f2504e0-4f89-11d3-9a0c-0305e82c33é"
            .parse::<Guid>()
            .is_err());
        assert!("{3f2504e0-4f89-11d3-9a0c-0305e82c3301"
            .parse::<Guid>()
            .is_err());
    }

    #[test]
    fn vsock_shape() {
        assert_eq!(Guid::from_vsock_port(7).vsock_port(), Some(7));
        assert_eq!(Guid::VSOCK_TEMPLATE.vsock_port(), Some(0));
        assert_eq!(Guid::PARENT.vsock_port(), None);
        let mut b = Guid::from_vsock_port(7).to_bytes();
        b[15] ^= 1;
        assert_eq!(Guid::from_bytes(b).vsock_port(), None);
        let mut b = Guid::from_vsock_port(7).to_bytes();
        b[4] ^= 1;
        assert!(!Guid::from_bytes(b).is_vsock());
    }
}
