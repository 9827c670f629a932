//! GPADL messages (GPADL_HEADER, GPADL_BODY), a complete single-range
//! [`Gpadl`], splitting one into messages and reassembling it
//! ([`GpadlAssembler`]) (PROTOCOL.md 5.5).
//!
//! Only single-range GPADLs exist here: that is what hv_sock rings use and
//! what Linux, FreeBSD and OpenVMM's client send. A [`GpadlHeader`] value is
//! always internally consistent (one range, `range_buflen` matching the page
//! count, as many page numbers as fit, a byte range that ends in the last
//! page), so every value encodes to bytes that decode back to it.

use std::collections::HashMap;

use super::consts::{
    MessageType, GPADL_BODY_MAX_PFNS, GPADL_HEADER_MAX_PFNS, GPADL_MAX_PAGES, PAGE_SIZE,
};
use super::error::{DecodeError, FieldError};
use super::wire::*;
use super::Message;

/// GPADL_HEADER (8), guest → host, `28 + 8·n` bytes with `n ≤ 26` page
/// numbers. Built with [`GpadlHeader::new`] or [`Gpadl::split`].
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct GpadlHeader {
    child_relid: u32,
    gpadl: u32,
    range_buflen: u16,
    byte_count: u32,
    byte_offset: u32,
    pfns: Vec<u64>,
}

/// Checks the single-range consistency rules; returns the range's page count.
fn check_range(
    range_buflen: u16,
    byte_count: u32,
    byte_offset: u32,
    carried: usize,
) -> Result<usize, FieldError> {
    if range_buflen < 16 || range_buflen % 8 != 0 {
        return Err(FieldError::RangeBufLen { range_buflen });
    }
    let total = usize::from(range_buflen) / 8 - 1;
    let expected = total.min(GPADL_HEADER_MAX_PFNS);
    if carried != expected {
        return Err(FieldError::HeaderPages {
            carried,
            total,
            expected,
        });
    }
    check_bytes(byte_count, byte_offset, total)?;
    Ok(total)
}

/// The byte range must start in the first page and end in the last one.
fn check_bytes(byte_count: u32, byte_offset: u32, pages: usize) -> Result<(), FieldError> {
    let end = u64::from(byte_offset) + u64::from(byte_count);
    // PAGE_SIZE and usize fit in u64 on every supported target.
    let page = PAGE_SIZE as u64;
    if u64::from(byte_offset) >= page || end.div_ceil(page) != pages as u64 {
        return Err(FieldError::ByteRange {
            byte_offset,
            byte_count,
            pages,
        });
    }
    Ok(())
}

impl GpadlHeader {
    /// Bytes before the page numbers.
    pub const FIXED_LEN: usize = 28;

    /// A GPADL_HEADER for a single range of `(range_buflen − 8) / 8` pages
    /// whose first `pfns.len()` page numbers are carried here.
    ///
    /// Fails unless `range_buflen` is `8 + 8·pages` (pages ≥ 1), `pfns`
    /// holds `min(pages, 26)` entries, `byte_offset < 4096` and
    /// `byte_offset + byte_count` ends in the last page.
    pub fn new(
        child_relid: u32,
        gpadl: u32,
        range_buflen: u16,
        byte_count: u32,
        byte_offset: u32,
        pfns: Vec<u64>,
    ) -> Result<Self, FieldError> {
        check_range(range_buflen, byte_count, byte_offset, pfns.len())?;
        Ok(GpadlHeader {
            child_relid,
            gpadl,
            range_buflen,
            byte_count,
            byte_offset,
            pfns,
        })
    }

    /// The channel the GPADL belongs to (offset 8).
    pub fn child_relid(&self) -> u32 {
        self.child_relid
    }

    /// The GPADL handle (offset 12).
    pub fn gpadl(&self) -> u32 {
        self.gpadl
    }

    /// Bytes of all range descriptors, page arrays included (offset 16):
    /// `8 + 8·pages`.
    pub fn range_buflen(&self) -> u16 {
        self.range_buflen
    }

    /// Number of ranges (offset 18): always 1.
    pub fn rangecount(&self) -> u16 {
        1
    }

    /// Length in bytes of the range's data (offset 20).
    pub fn byte_count(&self) -> u32 {
        self.byte_count
    }

    /// Offset of the data in the first page (offset 24).
    pub fn byte_offset(&self) -> u32 {
        self.byte_offset
    }

    /// The page numbers carried in this message (offset 28 on).
    pub fn pfns(&self) -> &[u64] {
        &self.pfns
    }

    /// Pages in the whole range, as `range_buflen` says.
    pub fn total_pages(&self) -> usize {
        usize::from(self.range_buflen) / 8 - 1
    }

    /// Whether GPADL_BODY messages must follow.
    pub fn needs_body(&self) -> bool {
        self.total_pages() > self.pfns.len()
    }

    pub(crate) fn decode(b: &[u8]) -> Result<Self, DecodeError> {
        let ty = MessageType::GPADL_HEADER;
        if b.len() < Self::FIXED_LEN || (b.len() - Self::FIXED_LEN) % 8 != 0 {
            return Err(DecodeError::Length {
                ty,
                len: b.len(),
                expected: "28 + 8n with n <= 26 page numbers",
            });
        }
        let rangecount = get_u16(b, 18);
        if rangecount != 1 {
            return Err(DecodeError::field(
                ty,
                FieldError::RangeCount { rangecount },
            ));
        }
        let pfns = (Self::FIXED_LEN..b.len())
            .step_by(8)
            .map(|off| get_u64(b, off))
            .collect();
        GpadlHeader::new(
            get_u32(b, 8),
            get_u32(b, 12),
            get_u16(b, 16),
            get_u32(b, 20),
            get_u32(b, 24),
            pfns,
        )
        .map_err(|reason| DecodeError::field(ty, reason))
    }

    pub(crate) fn encode_into(&self, b: &mut [u8]) -> usize {
        put_u32(b, 8, self.child_relid);
        put_u32(b, 12, self.gpadl);
        put_u16(b, 16, self.range_buflen);
        put_u16(b, 18, 1);
        put_u32(b, 20, self.byte_count);
        put_u32(b, 24, self.byte_offset);
        for (i, pfn) in self.pfns.iter().enumerate() {
            put_u64(b, Self::FIXED_LEN + 8 * i, *pfn);
        }
        Self::FIXED_LEN + 8 * self.pfns.len()
    }
}

/// GPADL_BODY (9), guest → host, `16 + 8·n` bytes with `1 ≤ n ≤ 28` page
/// numbers continuing a GPADL_HEADER.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct GpadlBody {
    msgnumber: u32,
    gpadl: u32,
    pfns: Vec<u64>,
}

impl GpadlBody {
    /// Bytes before the page numbers.
    pub const FIXED_LEN: usize = 16;

    /// A GPADL_BODY carrying 1 to 28 page numbers.
    pub fn new(msgnumber: u32, gpadl: u32, pfns: Vec<u64>) -> Result<Self, FieldError> {
        if pfns.is_empty() || pfns.len() > GPADL_BODY_MAX_PFNS {
            return Err(FieldError::BodyPages {
                carried: pfns.len(),
            });
        }
        Ok(GpadlBody {
            msgnumber,
            gpadl,
            pfns,
        })
    }

    /// Message number (offset 8). Linux leaves it 0, OpenVMM treats it as
    /// reserved; it is carried, not interpreted.
    pub fn msgnumber(&self) -> u32 {
        self.msgnumber
    }

    /// The GPADL handle (offset 12).
    pub fn gpadl(&self) -> u32 {
        self.gpadl
    }

    /// The page numbers carried (offset 16 on).
    pub fn pfns(&self) -> &[u64] {
        &self.pfns
    }

    pub(crate) fn decode(b: &[u8]) -> Result<Self, DecodeError> {
        if b.len() < Self::FIXED_LEN + 8 || (b.len() - Self::FIXED_LEN) % 8 != 0 {
            return Err(DecodeError::Length {
                ty: MessageType::GPADL_BODY,
                len: b.len(),
                expected: "16 + 8n with 1 <= n <= 28 page numbers",
            });
        }
        let pfns = (Self::FIXED_LEN..b.len())
            .step_by(8)
            .map(|off| get_u64(b, off))
            .collect();
        GpadlBody::new(get_u32(b, 8), get_u32(b, 12), pfns)
            .map_err(|reason| DecodeError::field(MessageType::GPADL_BODY, reason))
    }

    pub(crate) fn encode_into(&self, b: &mut [u8]) -> usize {
        put_u32(b, 8, self.msgnumber);
        put_u32(b, 12, self.gpadl);
        for (i, pfn) in self.pfns.iter().enumerate() {
            put_u64(b, Self::FIXED_LEN + 8 * i, *pfn);
        }
        Self::FIXED_LEN + 8 * self.pfns.len()
    }
}

/// A complete single-range GPADL: what a guest describes and a host maps.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Gpadl {
    /// The channel it belongs to.
    pub child_relid: u32,
    /// The handle, chosen by the guest, never 0.
    pub gpadl: u32,
    /// Length of the data in bytes.
    pub byte_count: u32,
    /// Offset of the data in the first page (< 4096).
    pub byte_offset: u32,
    /// Page frame numbers (GPA >> 12), 1 to [`GPADL_MAX_PAGES`].
    pub pfns: Vec<u64>,
}

impl Gpadl {
    /// A GPADL for ring memory: offset 0, `byte_count` = all pages
    /// (saturating at `u32::MAX`, far beyond the [`GPADL_MAX_PAGES`] that
    /// [`Gpadl::split`] accepts).
    pub fn ring(child_relid: u32, gpadl: u32, pfns: Vec<u64>) -> Self {
        let bytes = pfns.len().saturating_mul(PAGE_SIZE);
        Gpadl {
            child_relid,
            gpadl,
            byte_count: u32::try_from(bytes).unwrap_or(u32::MAX),
            byte_offset: 0,
            pfns,
        }
    }

    /// The messages that describe this GPADL: a GPADL_HEADER with the first
    /// 26 page numbers and a GPADL_BODY (message number 0, as Linux) for each
    /// further 28.
    pub fn split(&self) -> Result<(GpadlHeader, Vec<GpadlBody>), GpadlError> {
        if self.gpadl == 0 {
            return Err(GpadlError::ZeroHandle);
        }
        let pages = self.pfns.len();
        if pages == 0 || pages > GPADL_MAX_PAGES {
            return Err(GpadlError::PageCount { pages });
        }
        // pages <= GPADL_MAX_PAGES keeps 8 + 8 * pages within u16.
        let range_buflen =
            u16::try_from(8 + 8 * pages).map_err(|_| GpadlError::PageCount { pages })?;
        let first = pages.min(GPADL_HEADER_MAX_PFNS);
        let header = GpadlHeader::new(
            self.child_relid,
            self.gpadl,
            range_buflen,
            self.byte_count,
            self.byte_offset,
            self.pfns[..first].to_vec(),
        )?;
        let bodies = self.pfns[first..]
            .chunks(GPADL_BODY_MAX_PFNS)
            .map(|chunk| GpadlBody::new(0, self.gpadl, chunk.to_vec()))
            .collect::<Result<Vec<_>, _>>()?;
        Ok((header, bodies))
    }

    /// [`Gpadl::split`] as a list of messages, header first.
    pub fn to_messages(&self) -> Result<Vec<Message>, GpadlError> {
        let (header, bodies) = self.split()?;
        let mut out = Vec::with_capacity(1 + bodies.len());
        out.push(Message::GpadlHeader(header));
        out.extend(bodies.into_iter().map(Message::GpadlBody));
        Ok(out)
    }
}

/// Why a GPADL cannot be split or assembled.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GpadlError {
    /// GPADL handle 0 is never valid.
    #[error("GPADL handle 0 is not valid")]
    ZeroHandle,
    /// A GPADL has 1 to 8190 pages.
    #[error("a single-range GPADL has 1 to 8190 pages, not {pages}")]
    PageCount {
        /// Pages given.
        pages: usize,
    },
    /// A header or body field is inconsistent.
    #[error(transparent)]
    Field(#[from] FieldError),
    /// A GPADL_HEADER for a handle that is already being assembled. The
    /// GPADL in progress is kept.
    #[error("GPADL {gpadl:#x} is already being assembled")]
    DuplicateHandle {
        /// The handle.
        gpadl: u32,
    },
    /// A GPADL_BODY for a handle with no GPADL in progress.
    #[error("GPADL_BODY for GPADL {gpadl:#x}, which is not being assembled")]
    UnknownHandle {
        /// The handle.
        gpadl: u32,
    },
    /// A GPADL_BODY carries more pages than `range_buflen` announced. The
    /// GPADL in progress is dropped.
    #[error("GPADL {gpadl:#x} announced {expected} pages but would receive {received}")]
    TooManyPages {
        /// The handle.
        gpadl: u32,
        /// Pages announced by the header.
        expected: usize,
        /// Pages received including this body.
        received: usize,
    },
    /// Too many GPADLs are being assembled at once.
    #[error("more than {limit} GPADLs in progress")]
    TooManyInProgress {
        /// The configured limit.
        limit: usize,
    },
}

/// A GPADL still waiting for bodies.
#[derive(Debug)]
struct Partial {
    child_relid: u32,
    byte_count: u32,
    byte_offset: u32,
    total: usize,
    pfns: Vec<u64>,
}

/// Reassembles GPADLs from GPADL_HEADER and GPADL_BODY messages (the host
/// side). Bodies carry no relid, so GPADLs in progress are told apart by
/// handle alone, which must be unique among them.
///
/// The assembler forgets a GPADL once it is complete: whether a handle is
/// already in use by a created GPADL is for the caller to check. A body that
/// overflows the announced page count drops its GPADL in progress; every
/// other error leaves the assembler as it was. Inconsistent single messages
/// (several ranges, `range_buflen` not matching the pages, ...) never get
/// here: [`Message::decode`] and [`GpadlHeader::new`] reject them.
#[derive(Debug)]
pub struct GpadlAssembler {
    pending: HashMap<u32, Partial>,
    limit: usize,
}

impl Default for GpadlAssembler {
    fn default() -> Self {
        GpadlAssembler::new()
    }
}

impl GpadlAssembler {
    /// Default bound on GPADLs in progress at once.
    pub const DEFAULT_LIMIT: usize = 256;

    /// An assembler with [`GpadlAssembler::DEFAULT_LIMIT`].
    pub fn new() -> Self {
        GpadlAssembler::with_limit(Self::DEFAULT_LIMIT)
    }

    /// An assembler that keeps at most `limit` GPADLs in progress (a GPADL
    /// that fits in its header never counts). Bounds memory against a
    /// hostile guest: at most `limit` × 64 KiB of page numbers.
    pub fn with_limit(limit: usize) -> Self {
        GpadlAssembler {
            pending: HashMap::new(),
            limit,
        }
    }

    /// Takes a GPADL_HEADER; returns the GPADL if it needs no body.
    pub fn header(&mut self, header: &GpadlHeader) -> Result<Option<Gpadl>, GpadlError> {
        let gpadl = header.gpadl();
        if gpadl == 0 {
            return Err(GpadlError::ZeroHandle);
        }
        if self.pending.contains_key(&gpadl) {
            return Err(GpadlError::DuplicateHandle { gpadl });
        }
        if !header.needs_body() {
            return Ok(Some(Gpadl {
                child_relid: header.child_relid(),
                gpadl,
                byte_count: header.byte_count(),
                byte_offset: header.byte_offset(),
                pfns: header.pfns().to_vec(),
            }));
        }
        if self.pending.len() >= self.limit {
            return Err(GpadlError::TooManyInProgress { limit: self.limit });
        }
        self.pending.insert(
            gpadl,
            Partial {
                child_relid: header.child_relid(),
                byte_count: header.byte_count(),
                byte_offset: header.byte_offset(),
                total: header.total_pages(),
                pfns: header.pfns().to_vec(),
            },
        );
        Ok(None)
    }

    /// Takes a GPADL_BODY; returns the GPADL once its last page arrived.
    pub fn body(&mut self, body: &GpadlBody) -> Result<Option<Gpadl>, GpadlError> {
        let gpadl = body.gpadl();
        let partial = self
            .pending
            .get_mut(&gpadl)
            .ok_or(GpadlError::UnknownHandle { gpadl })?;
        let received = partial.pfns.len() + body.pfns().len();
        if received > partial.total {
            let expected = partial.total;
            self.pending.remove(&gpadl);
            return Err(GpadlError::TooManyPages {
                gpadl,
                expected,
                received,
            });
        }
        partial.pfns.extend_from_slice(body.pfns());
        if received < partial.total {
            return Ok(None);
        }
        Ok(self.pending.remove(&gpadl).map(|p| Gpadl {
            child_relid: p.child_relid,
            gpadl,
            byte_count: p.byte_count,
            byte_offset: p.byte_offset,
            pfns: p.pfns,
        }))
    }

    /// Feeds a GPADL_HEADER or GPADL_BODY; any other message is ignored
    /// (`Ok(None)`).
    pub fn feed(&mut self, message: &Message) -> Result<Option<Gpadl>, GpadlError> {
        match message {
            Message::GpadlHeader(h) => self.header(h),
            Message::GpadlBody(b) => self.body(b),
            _ => Ok(None),
        }
    }

    /// Drops a GPADL in progress (e.g. its channel was rescinded). Returns
    /// whether there was one.
    pub fn cancel(&mut self, gpadl: u32) -> bool {
        self.pending.remove(&gpadl).is_some()
    }

    /// Drops every GPADL in progress for channel `child_relid`; returns how
    /// many.
    pub fn cancel_channel(&mut self, child_relid: u32) -> usize {
        let before = self.pending.len();
        self.pending.retain(|_, p| p.child_relid != child_relid);
        before - self.pending.len()
    }

    /// Whether `gpadl` is being assembled.
    pub fn is_in_progress(&self, gpadl: u32) -> bool {
        self.pending.contains_key(&gpadl)
    }

    /// How many GPADLs are being assembled.
    pub fn in_progress(&self) -> usize {
        self.pending.len()
    }
}
