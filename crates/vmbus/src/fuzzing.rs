//! Entry points for the fuzz targets and their corpus-replay tests. Not a
//! stable API.
//!
//! Each function takes arbitrary bytes, must never panic on them except
//! through its own assertions, and asserts the crate's invariants.

use crate::messages::{Gpadl, GpadlAssembler, Message, MAX_MESSAGE_SIZE};

/// Decodes `data` as one channel message; if that succeeds, asserts that the
/// message encodes to at most 240 bytes, that the encoding decodes to the
/// same message and that encoding is then stable.
pub fn decode_message(data: &[u8]) {
    let Ok(message) = Message::decode(data) else {
        return;
    };
    let bytes = message.encode();
    assert!(bytes.len() <= MAX_MESSAGE_SIZE);
    assert_eq!(bytes.len(), message.encoded_len());
    // Exact lengths: nothing decode accepted is dropped by encode.
    assert_eq!(bytes.len(), data.len());
    let again = Message::decode(&bytes).expect("an encoded message must decode");
    assert_eq!(again, message);
    assert_eq!(again.encode(), bytes);
}

/// Limit on GPADLs in progress used by [`gpadl_assembly`], small so that
/// the limit is reached.
const FUZZ_LIMIT: usize = 4;

/// Splits `data` into messages (one length byte, then that many bytes; the
/// last message may be shorter) and feeds the decodable ones to a
/// [`GpadlAssembler`]: GPADL_HEADER and GPADL_BODY assemble, GPADL_TEARDOWN
/// cancels. Asserts that every completed GPADL has the page count its header
/// announced and splits back into messages that reassemble to it.
pub fn gpadl_assembly(data: &[u8]) {
    let mut assembler = GpadlAssembler::with_limit(FUZZ_LIMIT);
    let mut rest = data;
    while let Some((&len, tail)) = rest.split_first() {
        let (chunk, tail) = tail.split_at(usize::from(len).min(tail.len()));
        rest = tail;
        let Ok(message) = Message::decode(chunk) else {
            continue;
        };
        let expected_pages = match &message {
            Message::GpadlHeader(h) => Some(h.total_pages()),
            _ => None,
        };
        if let Message::GpadlTeardown { gpadl, .. } = message {
            assembler.cancel(gpadl);
            assert!(!assembler.is_in_progress(gpadl));
            continue;
        }
        let result = assembler.feed(&message);
        assert!(assembler.in_progress() <= FUZZ_LIMIT);
        if let Ok(Some(gpadl)) = result {
            if let Some(pages) = expected_pages {
                assert_eq!(gpadl.pfns.len(), pages);
            }
            check_resplit(&gpadl);
        }
    }
}

/// A completed GPADL must split and reassemble to itself.
fn check_resplit(gpadl: &Gpadl) {
    assert_ne!(gpadl.gpadl, 0);
    let messages = gpadl
        .to_messages()
        .expect("an assembled GPADL must split again");
    let mut fresh = GpadlAssembler::with_limit(1);
    let mut done = None;
    for (i, m) in messages.iter().enumerate() {
        let bytes = m.encode();
        assert_eq!(Message::decode(&bytes).as_ref(), Ok(m));
        let out = fresh.feed(m).expect("a split GPADL must reassemble");
        assert_eq!(out.is_some(), i + 1 == messages.len());
        done = done.or(out);
    }
    assert_eq!(done.as_ref(), Some(gpadl));
}
