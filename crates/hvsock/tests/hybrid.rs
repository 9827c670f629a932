//! The hybrid-vsock handshake of `hvsock::hybrid`: every accepted `CONNECT`
//! line and every refusal, lines split at every byte boundary, the 45-byte
//! limit, stream data after the newline, the `OK` line and the host-side
//! port allocator.

use hvsock::hybrid::{
    connect_line, ok_line, ConnectLineParser, ConnectTarget, HostPortAllocator, HostPortsExhausted,
    HybridError, HOST_PORT_FIRST, LINE_TIMEOUT, MAX_LINE,
};
use hvsock::Guid;
use proptest::prelude::*;
use std::time::Duration;

type Outcome = Result<Option<(ConnectTarget, usize)>, HybridError>;

/// One push of the whole input.
fn parse(input: &[u8]) -> Outcome {
    ConnectLineParser::new().push(input)
}

/// The input split at `cuts` (ascending offsets); the count is relative to
/// the whole input.
fn parse_split(input: &[u8], cuts: &[usize]) -> Outcome {
    let mut parser = ConnectLineParser::new();
    let mut start = 0;
    for end in cuts.iter().copied().chain([input.len()]) {
        match parser.push(&input[start..end])? {
            None => start = end,
            Some((target, used)) => return Ok(Some((target, start + used))),
        }
    }
    Ok(None)
}

#[track_caller]
fn accepts(line: &str, target: ConnectTarget) {
    let used = line.find('\n').unwrap() + 1;
    assert_eq!(parse(line.as_bytes()), Ok(Some((target, used))), "{line:?}");
}

#[track_caller]
fn refuses(line: &[u8], err: HybridError) {
    assert_eq!(parse(line), Err(err), "{:?}", String::from_utf8_lossy(line));
}

const GUID_TEXT: &str = "00001388-facb-11e6-bd58-64006a7986d3";

#[test]
fn constants() {
    assert_eq!(MAX_LINE, 45);
    assert_eq!(LINE_TIMEOUT, Duration::from_secs(2));
    assert_eq!(HOST_PORT_FIRST, 1_073_741_824);
}

#[test]
fn accepted_lines() {
    let port = ConnectTarget::Port;
    accepts("CONNECT 5000\n", port(5000));
    accepts("connect 5000\n", port(5000));
    accepts("CoNnEcT 5000\n", port(5000));
    accepts("CONNECT 5000\r\n", port(5000));
    accepts("CONNECT 0\n", port(0));
    accepts("CONNECT 4294967295\n", port(u32::MAX));
    accepts("CONNECT 0005000\n", port(5000));
    // Several spaces or tabs between keyword and port, and after it.
    accepts("CONNECT  5000\n", port(5000));
    accepts("CONNECT\t5000\n", port(5000));
    accepts("CONNECT \t 5000\n", port(5000));
    accepts("CONNECT 5000 \n", port(5000));
    accepts("CONNECT 5000\t\r\n", port(5000));
    // A service GUID, as OpenVMM takes it; it stays a GUID.
    let guid: Guid = GUID_TEXT.parse().unwrap();
    accepts(
        &format!("CONNECT {GUID_TEXT}\n"),
        ConnectTarget::Service(guid),
    );
    accepts(
        &format!("connect {}\n", GUID_TEXT.to_uppercase()),
        ConnectTarget::Service(guid),
    );
    accepts(
        &format!("CONNECT {}\n", Guid::PARENT),
        ConnectTarget::Service(Guid::PARENT),
    );
}

#[test]
fn refused_lines() {
    use HybridError::*;
    let bad = |t: &str| BadPort { text: t.into() };
    refuses(b"GET / HTTP/1.1\r\n", Keyword);
    refuses(b"OK 5\n", Keyword);
    refuses(b"\n", Keyword);
    refuses(b" CONNECT 5000\n", Keyword);
    refuses(b"CONNECT5000\n", Keyword);
    refuses(b"CONNECTED 5000\n", Keyword);
    refuses(b"CONNECT\n", Keyword);
    refuses(b"CONNECT\r\n", Keyword);
    refuses(b"CONN\n", Keyword);
    refuses(b"CONNECT \n", bad(""));
    refuses(b"CONNECT \r\n", bad(""));
    refuses(b"CONNECT -1\n", bad("-1"));
    refuses(b"CONNECT +1\n", bad("+1"));
    refuses(b"CONNECT 0x1388\n", bad("0x1388"));
    refuses(b"CONNECT 4294967296\n", bad("4294967296"));
    refuses(b"CONNECT 99999999999999\n", bad("99999999999999"));
    refuses(b"CONNECT 50 00\n", bad("50 00"));
    refuses(b"CONNECT 5000\r\r\n", bad("5000\r"));
    refuses(b"CONNECT 5000\rx\n", bad("5000\rx"));
    refuses(b"CONNECT alpha:5000\n", bad("alpha:5000"));
    refuses(
        b"CONNECT 00001388-facb-11e6-bd58-64006a7986dx\n",
        bad("00001388-facb-11e6-bd58-64006a7986dx"),
    );
    refuses(b"CONNECT \xe2\x82\xac\n", bad("\u{20ac}"));
    refuses(b"CONNECT \xff\n", NotUtf8);
    refuses(b"CONNECT 50\xc3\n", NotUtf8);
    refuses(b"\xffCONNECT 5\n", Keyword);
}

#[test]
fn keyword_refused_at_first_wrong_byte() {
    // No newline needed: the parser stops as soon as the keyword is wrong.
    let mut p = ConnectLineParser::new();
    assert_eq!(p.push(b"CON"), Ok(None));
    assert_eq!(p.push(b"X"), Err(HybridError::Keyword));
    assert_eq!(parse(b"G"), Err(HybridError::Keyword));
    assert_eq!(parse(b"CONNECTX"), Err(HybridError::Keyword));
    assert_eq!(parse(b"CONNECT"), Ok(None));
    assert_eq!(parse(b"CONNECT "), Ok(None));
}

#[test]
fn limit_is_45_bytes_with_the_newline() {
    // Port lines, padded with spaces to the exact length.
    let line = |len: usize| {
        let mut l = format!("CONNECT {}", "0".repeat(len - 10));
        l.push_str("5\n");
        assert_eq!(l.len(), len);
        l
    };
    let ok = line(MAX_LINE);
    accepts(&ok, ConnectTarget::Port(5));
    refuses(line(MAX_LINE + 1).as_bytes(), HybridError::LineTooLong);
    // The GUID line is exactly 45 bytes; with "\r" it is 46.
    let guid: Guid = GUID_TEXT.parse().unwrap();
    let g = format!("CONNECT {GUID_TEXT}\n");
    assert_eq!(g.len(), MAX_LINE);
    accepts(&g, ConnectTarget::Service(guid));
    refuses(
        format!("CONNECT {GUID_TEXT}\r\n").as_bytes(),
        HybridError::LineTooLong,
    );
    let braced = format!("CONNECT {{{GUID_TEXT}}}\n");
    refuses(braced.as_bytes(), HybridError::LineTooLong);
}

#[test]
fn too_long_refused_without_waiting_for_newline() {
    let mut p = ConnectLineParser::new();
    let head = format!("CONNECT {}", " ".repeat(MAX_LINE - 9));
    assert_eq!(head.len(), MAX_LINE - 1);
    assert_eq!(p.push(head.as_bytes()), Ok(None));
    assert_eq!(p.buffered(), MAX_LINE - 1);
    // The 45th byte is not a newline: refused at once, nothing buffered.
    assert_eq!(p.push(b" "), Err(HybridError::LineTooLong));
    assert_eq!(p.buffered(), 0);
    // One big push of garbage after a good keyword.
    let junk = format!("CONNECT {}", "9".repeat(10_000));
    assert_eq!(parse(junk.as_bytes()), Err(HybridError::LineTooLong));
}

#[test]
fn data_after_newline_is_not_consumed() {
    let input = b"CONNECT 5000\nhello\nCONNECT 1\n";
    assert_eq!(parse(input), Ok(Some((ConnectTarget::Port(5000), 13))));
    assert_eq!(&input[13..], b"hello\nCONNECT 1\n");
    // Data arriving in the push that finishes the line.
    let mut p = ConnectLineParser::new();
    assert_eq!(p.push(b"CONNECT 50"), Ok(None));
    assert_eq!(
        p.push(b"00\r\n\x00\xffdata"),
        Ok(Some((ConnectTarget::Port(5000), 4)))
    );
    // Stream data may be longer than MAX_LINE: the limit is on the line.
    let mut long = b"CONNECT 7\n".to_vec();
    long.extend([b'x'; 1000]);
    assert_eq!(parse(&long), Ok(Some((ConnectTarget::Port(7), 10))));
}

#[test]
fn push_after_the_end() {
    let mut p = ConnectLineParser::new();
    assert_eq!(
        p.push(b"CONNECT 1\n"),
        Ok(Some((ConnectTarget::Port(1), 10)))
    );
    assert_eq!(p.push(b"more"), Err(HybridError::Finished));
    let mut p = ConnectLineParser::new();
    assert_eq!(p.push(b"nope"), Err(HybridError::Keyword));
    assert_eq!(p.push(b"CONNECT 1\n"), Err(HybridError::Keyword));
    // An empty push changes nothing.
    let mut p = ConnectLineParser::new();
    assert_eq!(p.push(b""), Ok(None));
    assert_eq!(
        p.push(b"CONNECT 2\n"),
        Ok(Some((ConnectTarget::Port(2), 10)))
    );
}

/// Lines that every test below splits in all ways.
fn sample_inputs() -> Vec<Vec<u8>> {
    let mut inputs: Vec<Vec<u8>> = [
        "CONNECT 5000\n",
        "connect\t\t5000 \r\nDATA",
        "CONNECT 4294967295\r\n",
        "CONNECT 4294967296\n",
        "CONNECT 00001388-facb-11e6-bd58-64006a7986d3\nrest",
        "CONNECT 00001388-facb-11e6-bd58-64006a7986d3\r\n",
        "CONNECT 000000000000000000000000000000000001\n",
        "CONNECT 0000000000000000000000000000000000001\n",
        "CONNEXT 1\n",
        "CONNECT x\n",
        "CONNECT 5000",
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect();
    inputs.push(b"CONNECT \xff\xfe\n".to_vec());
    inputs
}

#[test]
fn every_split_in_two_or_three_gives_the_same_result() {
    for input in sample_inputs() {
        let whole = parse(&input);
        let byte_by_byte: Vec<usize> = (1..input.len()).collect();
        assert_eq!(parse_split(&input, &byte_by_byte), whole);
        for a in 0..=input.len() {
            assert_eq!(parse_split(&input, &[a]), whole, "{input:?} cut at {a}");
            for b in a..=input.len() {
                assert_eq!(
                    parse_split(&input, &[a, b]),
                    whole,
                    "{input:?} cut at {a},{b}"
                );
            }
        }
    }
}

#[test]
fn connect_target_service_id() {
    assert_eq!(
        ConnectTarget::Port(5000).service_id(),
        Guid::from_vsock_port(5000)
    );
    assert_eq!(
        ConnectTarget::Service(Guid::PARENT).service_id(),
        Guid::PARENT
    );
    assert_eq!(
        ConnectTarget::Service(Guid::from_vsock_port(9)).service_id(),
        ConnectTarget::Port(9).service_id()
    );
}

#[test]
fn lines_written() {
    assert_eq!(ok_line(1_073_741_824), "OK 1073741824\n");
    assert_eq!(ok_line(0), "OK 0\n");
    assert_eq!(connect_line(ConnectTarget::Port(5000)), "CONNECT 5000\n");
    assert_eq!(
        connect_line(ConnectTarget::Service(GUID_TEXT.parse().unwrap())),
        format!("CONNECT {GUID_TEXT}\n")
    );
}

#[test]
fn error_messages() {
    assert!(HybridError::Keyword.to_string().contains("CONNECT 5000"));
    let m = HybridError::BadPort { text: "x".into() }.to_string();
    assert!(m.contains("\"x\"") && m.contains("GUID"), "{m}");
    assert!(HybridError::LineTooLong.to_string().contains("45"));
}

// --- host-side ports --------------------------------------------------------

#[test]
fn host_ports_from_2_pow_30_and_distinct() {
    let mut ports = HostPortAllocator::new();
    let got: Vec<u32> = (0..5).map(|_| ports.allocate().unwrap()).collect();
    assert_eq!(got, (0..5).map(|i| HOST_PORT_FIRST + i).collect::<Vec<_>>());
    assert_eq!(ports.live_count(), 5);
    assert!(ports.is_live(HOST_PORT_FIRST + 2));
    assert!(ports.release(HOST_PORT_FIRST + 2));
    assert!(!ports.release(HOST_PORT_FIRST + 2));
    assert!(!ports.is_live(HOST_PORT_FIRST + 2));
    // Released ports are not reused until the counter comes round again.
    assert_eq!(ports.allocate(), Ok(HOST_PORT_FIRST + 5));
    assert_eq!(HostPortAllocator::default().allocate(), Ok(HOST_PORT_FIRST));
    assert_eq!(
        HostPortAllocator::with_next(5).allocate(),
        Ok(HOST_PORT_FIRST)
    );
}

#[test]
fn host_ports_wrap_to_2_pow_30_skipping_live() {
    let mut ports = HostPortAllocator::with_next(u32::MAX - 1);
    // Live connections at the top and the bottom of the range.
    for port in [u32::MAX, HOST_PORT_FIRST, HOST_PORT_FIRST + 2] {
        assert!(ports.mark_live(port));
    }
    assert!(!ports.mark_live(HOST_PORT_FIRST), "already live");
    assert!(!ports.mark_live(HOST_PORT_FIRST - 1), "below the range");
    let got: Vec<u32> = (0..3).map(|_| ports.allocate().unwrap()).collect();
    assert_eq!(
        got,
        [u32::MAX - 1, HOST_PORT_FIRST + 1, HOST_PORT_FIRST + 3]
    );
    assert_eq!(ports.live_count(), 6);
}

#[test]
fn host_ports_wrap_reuses_released() {
    let mut ports = HostPortAllocator::with_next(u32::MAX);
    assert_eq!(ports.allocate(), Ok(u32::MAX));
    assert_eq!(ports.allocate(), Ok(HOST_PORT_FIRST));
    assert!(ports.release(u32::MAX));
    let mut ports = HostPortAllocator::with_next(u32::MAX);
    assert!(ports.mark_live(HOST_PORT_FIRST));
    assert_eq!(ports.allocate(), Ok(u32::MAX));
    assert!(ports.release(u32::MAX));
    // The counter is past the top now; the released top port comes back
    // only after a full turn.
    assert_eq!(ports.allocate(), Ok(HOST_PORT_FIRST + 1));
}

#[test]
fn host_ports_exhaustion_error_displays() {
    assert!(HostPortsExhausted.to_string().contains("in use"));
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(b in prop::collection::vec(any::<u8>(), 0..120)) {
        hvsock::fuzzing::hybrid_line(&b);
    }

    #[test]
    fn line_like_bytes_never_panic(
        chunk: u8,
        s in "(?i:connect)?[ \t]{0,3}[0-9a-f-]{0,40}\r?\n?.{0,5}",
    ) {
        let mut input = vec![chunk];
        input.extend_from_slice(s.as_bytes());
        hvsock::fuzzing::hybrid_line(&input);
    }

    #[test]
    fn port_lines_parse_at_every_split(port: u32, cut in 0usize..20, data in ".{0,10}") {
        let mut input = connect_line(ConnectTarget::Port(port)).into_bytes();
        let used = input.len();
        input.extend_from_slice(data.as_bytes());
        let cut = cut.min(input.len());
        prop_assert_eq!(parse_split(&input, &[cut]), Ok(Some((ConnectTarget::Port(port), used))));
    }

    #[test]
    fn guid_lines_round_trip(bytes: [u8; 16]) {
        let t = ConnectTarget::Service(Guid::from_bytes(bytes));
        let line = connect_line(t);
        prop_assert_eq!(parse(line.as_bytes()), Ok(Some((t, line.len()))));
    }

    #[test]
    fn host_ports_unique_among_live(ops in prop::collection::vec(any::<Option<u8>>(), 0..200), start: u32) {
        // Some(i): release the i-th live port (mod count); None: allocate.
        let mut ports = HostPortAllocator::with_next(start);
        let mut live = std::collections::BTreeSet::new();
        for op in ops {
            match op {
                None => {
                    let p = ports.allocate().unwrap();
                    prop_assert!(p >= HOST_PORT_FIRST);
                    prop_assert!(live.insert(p), "{} handed out twice", p);
                }
                Some(i) if !live.is_empty() => {
                    let p = *live.iter().nth(usize::from(i) % live.len()).unwrap();
                    live.remove(&p);
                    prop_assert!(ports.release(p));
                }
                Some(_) => {}
            }
            prop_assert_eq!(ports.live_count(), live.len());
        }
    }
}
