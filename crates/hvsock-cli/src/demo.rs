//! `hvsock demo`: the whole stack in one process, step by step.
//!
//! Starts an embedded host with one VM, a service in the guest, connects
//! from the host, moves data both ways with a checksum, half-closes each
//! direction and closes, printing the VMBus and host messages as they pass
//! and the throughput. Exits 0 only if every byte arrived intact.

use std::io::{Read, Write};
use std::net::Shutdown;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context};
use hvsock::{Guest, Host, HvAddr, HvStream, VsockAddr, VsockListener};
use vmbus::daemon::EmbeddedHost;

/// Arguments of `hvsock demo`.
#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Bytes to move in each direction (suffixes K, M, G).
    #[arg(long, default_value = "256M", value_parser = parse_size)]
    bytes: u64,

    /// Do not print the messages, only the steps and the result.
    #[arg(long, short)]
    pub quiet: bool,
}

/// Parses sizes like `4096`, `64K`, `256M`, `1G`.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let (digits, unit) = match text.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => text.split_at(i),
        None => (text, ""),
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{text:?} is not a size (examples: 4096, 64K, 256M, 1G)"))?;
    let scale = match unit.to_ascii_uppercase().as_str() {
        "" | "B" => 1,
        "K" | "KB" | "KIB" => 1 << 10,
        "M" | "MB" | "MIB" => 1 << 20,
        "G" | "GB" | "GIB" => 1 << 30,
        _ => return Err(format!("unknown unit {unit:?} (use K, M or G)")),
    };
    n.checked_mul(scale)
        .ok_or_else(|| format!("{text} is too large"))
}

/// The port the demo's guest service listens on.
const PORT: u32 = 5000;

fn step(text: &str) {
    println!("\n== {text}");
}

/// A fast order-sensitive checksum of a byte stream (64-bit FNV-1a over
/// 8-byte words, bytes at the end).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct Checksum(u64, u64);

impl Checksum {
    fn new() -> Self {
        Checksum(0xcbf2_9ce4_8422_2325, 0)
    }

    fn update(&mut self, data: &[u8]) {
        // Keep byte order exact whatever the read sizes: fold bytes one at
        // a time until 8-aligned in the stream, then whole words.
        let mut rest = data;
        while self.1 % 8 != 0 && !rest.is_empty() {
            self.byte(rest[0]);
            rest = &rest[1..];
        }
        let mut words = rest.chunks_exact(8);
        for word in &mut words {
            let w = u64::from_le_bytes(word.try_into().expect("8 bytes"));
            self.0 = (self.0 ^ w).wrapping_mul(0x0100_0000_01b3).rotate_left(5);
            self.1 += 8;
        }
        for &b in words.remainder() {
            self.byte(b);
        }
    }

    fn byte(&mut self, b: u8) {
        self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        self.1 += 1;
    }
}

/// Writes `total` bytes of a pattern, returning their checksum.
fn send(mut stream: impl Write, total: u64) -> std::io::Result<Checksum> {
    let mut block = vec![0u8; 1 << 20];
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    for chunk in block.chunks_mut(8) {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        chunk.copy_from_slice(&state.to_le_bytes()[..chunk.len()]);
    }
    let mut sum = Checksum::new();
    let mut sent = 0u64;
    let mut round = 0u8;
    while sent < total {
        // Vary the blocks so that a lost or repeated block shows.
        block[0] = round;
        round = round.wrapping_add(1);
        let n = (total - sent).min(block.len() as u64) as usize;
        stream.write_all(&block[..n])?;
        sum.update(&block[..n]);
        sent += n as u64;
    }
    Ok(sum)
}

/// Reads to the end of the stream, returning the checksum of what came.
fn receive(mut stream: impl Read) -> std::io::Result<Checksum> {
    let mut buf = vec![0u8; 256 << 10];
    let mut sum = Checksum::new();
    loop {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            return Ok(sum);
        }
        sum.update(&buf[..n]);
    }
}

fn rate(bytes: u64, since: Instant) -> String {
    let secs = since.elapsed().as_secs_f64();
    format!(
        "{:.1} MiB in {:.3} s = {:.2} GB/s",
        bytes as f64 / (1 << 20) as f64,
        secs,
        bytes as f64 / secs / 1e9
    )
}

/// Runs the demo.
pub fn run(args: &DemoArgs) -> anyhow::Result<ExitCode> {
    let total = args.bytes;
    step(
        "1. Start an embedded Hyper-V host with one VM, \"demo\" (no daemon, all in this process)",
    );
    let host = EmbeddedHost::start(&[("demo", None)]).context("starting the embedded host")?;
    let vm = host.vm_id("demo").context("the demo VM is missing")?;
    println!("VM demo has id {vm}");

    step("2. A guest process joins VM demo: VMBus version negotiation and offers");
    let guest = Guest::embedded(&host, "demo").context("joining the VM")?;
    println!("agreed VMBus version {:#x}", guest.vmbus_version());

    step(&format!(
        "3. The guest listens on vsock port {PORT} (service {})",
        hvsock::Guid::from_vsock_port(PORT)
    ));
    let listener = VsockListener::bind(&guest, VsockAddr::new(u32::MAX, PORT))?;

    step("4. The host connects: offer, GPADL (the guest's memfd), open; the first channel of a pair of processes brings their signal link");
    let root = Host::embedded(&host).context("joining as a host process")?;
    let host_stream = HvStream::connect(&root, HvAddr::from_vsock_port(vm, PORT))?;
    let (guest_stream, peer) = listener.accept()?;
    println!("guest accepted a connection from host port {}", peer.port);

    step(&format!(
        "5. Data, host -> guest then guest -> host ({} MiB each, checksummed; the host is out of the data path)",
        total >> 20
    ));
    let reader = {
        let guest_stream = guest_stream.try_clone()?;
        std::thread::spawn(move || receive(&guest_stream))
    };
    let started = Instant::now();
    let sent_down = send(&host_stream, total)?;
    step("6. FIN: the host shuts down its writing side; the guest reads to the end");
    host_stream.shutdown(Shutdown::Write)?;
    let got_down = reader.join().expect("the guest's reader")?;
    println!("host -> guest: {}", rate(total, started));

    let reader = {
        let host_stream = host_stream.try_clone()?;
        std::thread::spawn(move || receive(&host_stream))
    };
    let started = Instant::now();
    let sent_up = send(&guest_stream, total)?;
    guest_stream.shutdown(Shutdown::Write)?;
    let got_up = reader.join().expect("the host's reader")?;
    println!("guest -> host: {}", rate(total, started));

    step("7. Close: both sides drop their streams; the host rescinds the channel, the guest releases it");
    drop(host_stream);
    drop(guest_stream);
    drop(listener);
    // Give the control messages of the close a moment to pass, so that the
    // log shows them before the host stops.
    std::thread::sleep(std::time::Duration::from_millis(200));
    // Then stop the endpoints and the host (their threads end), so that no
    // late line of the log can come after the result.
    drop(root);
    drop(guest);
    drop(host);

    step("8. Result");
    let down_ok = sent_down == got_down;
    let up_ok = sent_up == got_up;
    println!(
        "host -> guest: {} bytes, checksum {:016x} {}",
        got_down.1,
        got_down.0,
        if down_ok { "matches" } else { "DIFFERS" }
    );
    println!(
        "guest -> host: {} bytes, checksum {:016x} {}",
        got_up.1,
        got_up.0,
        if up_ok { "matches" } else { "DIFFERS" }
    );
    if !(down_ok && up_ok) {
        bail!("the data arrived damaged");
    }
    println!("ok");
    Ok(ExitCode::SUCCESS)
}
