//! The hybrid-vsock handshake of Firecracker, Cloud Hypervisor and OpenVMM,
//! sans-I/O: the `CONNECT` line a host program writes to a VM's Unix socket,
//! the `OK` line it gets back, and the host-side port reported in it.
//!
//! A host program connects to the VM's Unix socket, writes
//! `CONNECT <port>\n` (or `CONNECT <service GUID>\n`, as OpenVMM accepts),
//! reads `OK <n>\n`, and from then on the socket is a stream to the guest's
//! port. `n` is the host-side port of the connection, which the guest sees
//! as its peer's port ([`HostPortAllocator`]).
//!
//! # What the caller does
//!
//! The driver reads from the accepted Unix socket and feeds every read to
//! [`ConnectLineParser::push`] until it returns the target (or an error).
//! Bytes of the last read past the returned count are already stream data
//! for the guest. **Deadline:** a line not complete within [`LINE_TIMEOUT`]
//! of the accept closes the socket; the parser reads no clock, so arming
//! that timer is the driver's job. On an error the driver closes the socket
//! without answering.

use std::collections::BTreeSet;
use std::fmt;
use std::time::Duration;

use vmbus::Guid;

/// Longest `CONNECT` line, newline included.
///
/// `CONNECT ` (8) + a 36-character GUID + `\n` is exactly this long, so a
/// GUID line cannot also carry a `\r`; a port line always fits.
pub const MAX_LINE: usize = 45;

/// How long a client has, from the accept, to finish its `CONNECT` line. The
/// driver closes the socket when it expires.
pub const LINE_TIMEOUT: Duration = Duration::from_secs(2);

/// The first host-side port [`HostPortAllocator`] hands out: 2^30, as
/// Firecracker does.
pub const HOST_PORT_FIRST: u32 = 1 << 30;

/// What a `CONNECT` line asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ConnectTarget {
    /// A guest vsock port (`CONNECT 5000`).
    Port(u32),
    /// A service GUID (`CONNECT 00001388-facb-11e6-bd58-64006a7986d3`),
    /// as OpenVMM accepts. Vsock-shaped or not, it stays a GUID here.
    Service(Guid),
}

impl ConnectTarget {
    /// The service GUID to connect to: the vsock template for a port.
    pub fn service_id(&self) -> Guid {
        match *self {
            ConnectTarget::Port(port) => Guid::from_vsock_port(port),
            ConnectTarget::Service(guid) => guid,
        }
    }
}

impl fmt::Display for ConnectTarget {
    /// The argument of the `CONNECT` line: the port in decimal or the GUID.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConnectTarget::Port(port) => write!(f, "{port}"),
            ConnectTarget::Service(guid) => write!(f, "{guid}"),
        }
    }
}

/// The line a client writes for `target`: `CONNECT <target>\n`.
pub fn connect_line(target: ConnectTarget) -> String {
    format!("CONNECT {target}\n")
}

/// The answer to a good `CONNECT` line: `OK <host_port>\n`.
pub fn ok_line(host_port: u32) -> String {
    format!("OK {host_port}\n")
}

/// Why a `CONNECT` line was refused. The driver closes the socket.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HybridError {
    /// The line does not start with `CONNECT` and a space or tab.
    #[error("expected CONNECT <port> or CONNECT <service GUID>, e.g. CONNECT 5000")]
    Keyword,
    /// The argument is neither a decimal `u32` port nor a GUID.
    #[error(
        "invalid CONNECT target {text:?}: expected a decimal port (0 to 4294967295) \
         like 5000 or a service GUID like 00001388-facb-11e6-bd58-64006a7986d3"
    )]
    BadPort {
        /// The rejected argument, spaces and tabs around it removed.
        text: String,
    },
    /// [`MAX_LINE`] bytes arrived without a newline.
    #[error("CONNECT line longer than {MAX_LINE} bytes")]
    LineTooLong,
    /// The line is not UTF-8.
    #[error("CONNECT line is not UTF-8")]
    NotUtf8,
    /// [`ConnectLineParser::push`] was called again after it returned the
    /// target.
    #[error("the CONNECT line was already parsed")]
    Finished,
}

/// Parses the `CONNECT` line as it arrives, in pieces of any size.
///
/// Accepted, and nothing else:
///
/// - the keyword `CONNECT` in any case, at the very start of the line;
/// - one or more spaces or tabs (Firecracker's clients write one space; some
///   scripts pad, and refusing them would gain nothing);
/// - a decimal port (digits only, no sign, at most `u32::MAX`; leading zeros
///   allowed) or a GUID in its canonical 36-character form, or in braces;
/// - optional trailing spaces or tabs, an optional `\r`, then `\n`;
/// - at most [`MAX_LINE`] bytes in all, newline included.
///
/// The keyword is checked byte by byte as it arrives, so a client speaking
/// some other protocol is refused at its first wrong byte; a line without a
/// newline is refused once it reaches [`MAX_LINE`] bytes. The parser never
/// holds more than [`MAX_LINE`] bytes.
///
/// ```
/// use hvsock::hybrid::{ConnectLineParser, ConnectTarget};
/// let mut p = ConnectLineParser::new();
/// assert_eq!(p.push(b"CONN"), Ok(None));
/// assert_eq!(p.push(b"ECT 5000\nhello"), Ok(Some((ConnectTarget::Port(5000), 9))));
/// ```
#[derive(Debug, Clone, Default)]
pub struct ConnectLineParser {
    line: Vec<u8>,
    state: State,
}

#[derive(Debug, Clone, Default)]
enum State {
    #[default]
    Reading,
    Done,
    Failed(HybridError),
}

/// The keyword, upper case.
const KEYWORD: &[u8; 7] = b"CONNECT";

impl ConnectLineParser {
    /// A parser that has seen nothing yet.
    pub fn new() -> ConnectLineParser {
        ConnectLineParser::default()
    }

    /// Bytes buffered so far (a line not yet complete).
    pub fn buffered(&self) -> usize {
        self.line.len()
    }

    /// Feeds the next bytes read from the socket.
    ///
    /// Returns `Ok(None)` while the line is incomplete (all of `bytes` was
    /// taken), or `Ok(Some((target, n)))` once it is: the first `n` bytes of
    /// `bytes` ended the line and `bytes[n..]` is stream data. After an error
    /// every later call returns the same error; after the target,
    /// [`HybridError::Finished`].
    pub fn push(&mut self, bytes: &[u8]) -> Result<Option<(ConnectTarget, usize)>, HybridError> {
        match &self.state {
            State::Reading => {}
            State::Done => return Err(HybridError::Finished),
            State::Failed(err) => return Err(err.clone()),
        }
        match self.take(bytes) {
            Ok(None) => Ok(None),
            Ok(Some(done)) => {
                self.state = State::Done;
                self.line = Vec::new();
                Ok(Some(done))
            }
            Err(err) => {
                self.state = State::Failed(err.clone());
                self.line = Vec::new();
                Err(err)
            }
        }
    }

    fn take(&mut self, bytes: &[u8]) -> Result<Option<(ConnectTarget, usize)>, HybridError> {
        for (i, &b) in bytes.iter().enumerate() {
            let pos = self.line.len();
            if b == b'\n' {
                return parse_line(&self.line).map(|target| Some((target, i + 1)));
            }
            if pos < KEYWORD.len() {
                if !b.eq_ignore_ascii_case(&KEYWORD[pos]) {
                    return Err(HybridError::Keyword);
                }
            } else if pos == KEYWORD.len() && !matches!(b, b' ' | b'\t') {
                return Err(HybridError::Keyword);
            }
            self.line.push(b);
            // The newline would be byte MAX_LINE + 1.
            if self.line.len() >= MAX_LINE {
                return Err(HybridError::LineTooLong);
            }
        }
        Ok(None)
    }
}

/// Parses a whole line, newline removed.
fn parse_line(line: &[u8]) -> Result<ConnectTarget, HybridError> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if line.len() <= KEYWORD.len() || !line[..KEYWORD.len()].eq_ignore_ascii_case(KEYWORD) {
        return Err(HybridError::Keyword);
    }
    let rest = &line[KEYWORD.len()..];
    if !matches!(rest.first(), Some(b' ' | b'\t')) {
        return Err(HybridError::Keyword);
    }
    let text = std::str::from_utf8(rest).map_err(|_| HybridError::NotUtf8)?;
    let arg = text.trim_matches(|c| c == ' ' || c == '\t');
    let bad = || HybridError::BadPort { text: arg.into() };
    if !arg.is_empty() && arg.bytes().all(|b| b.is_ascii_digit()) {
        return arg.parse().map(ConnectTarget::Port).map_err(|_| bad());
    }
    arg.parse().map(ConnectTarget::Service).map_err(|_| bad())
}

/// Every host-side port is live: the allocator has nothing to hand out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("every host-side hybrid vsock port is in use")]
pub struct HostPortsExhausted;

/// Hands out the host-side port reported in `OK <n>` (sans-I/O).
///
/// As Firecracker does: ports from [`HOST_PORT_FIRST`] (2^30) upward,
/// distinct among live connections; [`HostPortAllocator::release`] when a
/// connection ends. After `u32::MAX` it wraps back to 2^30, skipping ports
/// still live.
///
/// ```
/// use hvsock::hybrid::HostPortAllocator;
/// let mut ports = HostPortAllocator::new();
/// let a = ports.allocate().unwrap();
/// let b = ports.allocate().unwrap();
/// assert_eq!((a, b), (1 << 30, (1 << 30) + 1));
/// assert!(ports.release(a));
/// ```
#[derive(Debug, Clone)]
pub struct HostPortAllocator {
    next: u32,
    live: BTreeSet<u32>,
}

impl Default for HostPortAllocator {
    fn default() -> HostPortAllocator {
        HostPortAllocator::new()
    }
}

impl HostPortAllocator {
    /// An allocator whose first port is 2^30.
    pub fn new() -> HostPortAllocator {
        HostPortAllocator::with_next(HOST_PORT_FIRST)
    }

    /// An allocator whose first candidate is `next` (raised to 2^30 if
    /// below it).
    pub fn with_next(next: u32) -> HostPortAllocator {
        HostPortAllocator {
            next: next.max(HOST_PORT_FIRST),
            live: BTreeSet::new(),
        }
    }

    /// A port not live, now live.
    pub fn allocate(&mut self) -> Result<u32, HostPortsExhausted> {
        // Number of ports in [2^30, u32::MAX]: 3 * 2^30, fits a u64.
        let range = u64::from(u32::MAX - HOST_PORT_FIRST) + 1;
        if self.live.len() as u64 >= range {
            return Err(HostPortsExhausted);
        }
        // Terminates: at least one port in the range is not live.
        loop {
            let port = self.next;
            self.next = port.checked_add(1).unwrap_or(HOST_PORT_FIRST);
            if self.live.insert(port) {
                return Ok(port);
            }
        }
    }

    /// Marks `port` live without handing it out (a port fixed elsewhere, or
    /// state restored after a restart); `false` if it was already live or is
    /// below 2^30.
    pub fn mark_live(&mut self, port: u32) -> bool {
        port >= HOST_PORT_FIRST && self.live.insert(port)
    }

    /// Ends `port`'s life; `false` if it was not live.
    pub fn release(&mut self, port: u32) -> bool {
        self.live.remove(&port)
    }

    /// Whether `port` is live.
    pub fn is_live(&self, port: u32) -> bool {
        self.live.contains(&port)
    }

    /// How many ports are live.
    pub fn live_count(&self) -> usize {
        self.live.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guid_line_is_exactly_max() {
        let line = connect_line(ConnectTarget::Service(Guid::PARENT));
        assert_eq!(line.len(), MAX_LINE);
    }

    #[test]
    fn failed_parser_stays_failed() {
        let mut p = ConnectLineParser::new();
        assert_eq!(p.push(b"X"), Err(HybridError::Keyword));
        assert_eq!(p.push(b"CONNECT 1\n"), Err(HybridError::Keyword));
        assert_eq!(p.buffered(), 0);
    }
}
