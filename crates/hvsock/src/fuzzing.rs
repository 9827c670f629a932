//! Fuzz target bodies, shared by the cargo-fuzz targets under `fuzz/` and the
//! test that replays their corpora on the stable toolchain.
//!
//! Each function takes arbitrary bytes and must not panic, whatever they
//! hold; the assertions inside check invariants that hold for any input.

use std::fmt::{Debug, Display};
use std::str::FromStr;

use crate::addr::{parse_u32, HostTarget, HvAddr, ServiceId, Target, VmRef, VsockAddr};
use crate::hybrid::{connect_line, ConnectLineParser, ConnectTarget, HybridError, MAX_LINE};

/// The address parsers on arbitrary text (invalid UTF-8 replaced): every
/// value parsed writes a text that parses back to it, and writing is
/// stable.
pub fn addr_parse(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let text: &str = &text;
    round_trip::<VsockAddr>(text);
    round_trip::<ServiceId>(text);
    round_trip::<VmRef>(text);
    let host = round_trip::<HostTarget>(text);
    let target = round_trip::<Target>(text);
    let hv = round_trip::<HvAddr>(text);
    if let Some(n) = parse_u32(text) {
        assert_eq!(parse_u32(&n.to_string()), Some(n));
        assert_eq!(parse_u32(&format!("{n:#x}")), Some(n));
    }
    // The forms agree: VM:SERVICE is a Target with a VM, an HvAddr is a
    // HostTarget with a VM id.
    if let Some(host) = &host {
        assert_eq!(target.as_ref(), Some(&Target::from(host.clone())));
    }
    if let Some(hv) = hv {
        assert_eq!(host, Some(HostTarget::from(hv)));
    }
}

/// Parses `text` as `T`; if it parses, checks the round trip and returns
/// the value; if not, formats the error.
fn round_trip<T>(text: &str) -> Option<T>
where
    T: FromStr + Display + PartialEq + Debug,
    T::Err: Display,
{
    match text.parse::<T>() {
        Ok(value) => {
            let shown = value.to_string();
            match shown.parse::<T>() {
                Ok(again) => {
                    assert_eq!(again, value, "{text:?} -> {shown:?}");
                    assert_eq!(again.to_string(), shown);
                }
                Err(err) => panic!("{text:?} -> {shown:?} does not parse: {err}"),
            }
            Some(value)
        }
        Err(err) => {
            assert!(!err.to_string().is_empty());
            None
        }
    }
}

/// The `CONNECT` line parser: the first byte picks a chunk size, the rest is
/// what the client sent. Whole and in chunks the result is the same; a
/// target ends at the first newline, within [`MAX_LINE`] bytes, and its
/// canonical line parses back to it.
pub fn hybrid_line(data: &[u8]) {
    let Some((&chunk, input)) = data.split_first() else {
        return;
    };
    let whole = feed(input, input.len().max(1));
    assert_eq!(feed(input, 1 + usize::from(chunk % 16)), whole);
    assert_eq!(feed(input, 1), whole);

    match &whole {
        Ok(Some((target, used))) => {
            assert!(*used <= MAX_LINE);
            assert_eq!(input[used - 1], b'\n');
            assert!(!input[..used - 1].contains(&b'\n'));
            let line = connect_line(*target);
            assert!(line.len() <= MAX_LINE);
            assert_eq!(feed(line.as_bytes(), 1), Ok(Some((*target, line.len()))));
            if let ConnectTarget::Port(port) = target {
                assert_eq!(target.service_id().vsock_port(), Some(*port));
            }
        }
        Ok(None) => {
            assert!(input.len() < MAX_LINE);
            assert!(!input.contains(&b'\n'));
        }
        Err(HybridError::LineTooLong) => {
            assert!(input.len() >= MAX_LINE);
            assert!(!input[..MAX_LINE].contains(&b'\n'));
        }
        Err(err) => assert!(!err.to_string().is_empty()),
    }
}

/// Feeds `input` to a fresh parser `chunk` bytes at a time; returns the
/// outcome with the count of `input` bytes used.
fn feed(input: &[u8], chunk: usize) -> Result<Option<(ConnectTarget, usize)>, HybridError> {
    let mut parser = ConnectLineParser::new();
    let mut offset = 0;
    for piece in input.chunks(chunk) {
        match parser.push(piece)? {
            None => {
                assert!(parser.buffered() < MAX_LINE);
                offset += piece.len();
            }
            Some((target, used)) => {
                assert!((1..=piece.len()).contains(&used));
                assert_eq!(parser.push(b"x"), Err(HybridError::Finished));
                return Ok(Some((target, offset + used)));
            }
        }
    }
    Ok(None)
}
