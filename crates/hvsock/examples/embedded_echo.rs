//! Everything in one process: an embedded host with VM "alpha", an echo
//! service in the guest, and the host connecting to it.
//!
//! `cargo run -p hvsock --example embedded_echo`

use std::io::{Read, Write};
use std::net::Shutdown;

use hvsock::{Guest, Host, HvAddr, HvStream, VsockAddr, VsockListener};
use vmbus::daemon::EmbeddedHost;

fn main() -> std::io::Result<()> {
    let host = EmbeddedHost::start(&[("alpha", None)]).map_err(std::io::Error::other)?;
    let vm = host.vm_id("alpha").expect("alpha was just added");

    let guest = Guest::embedded(&host, "alpha")?;
    let listener = VsockListener::bind(&guest, VsockAddr::new(u32::MAX, 5000))?;
    let server = std::thread::spawn(move || -> std::io::Result<()> {
        let (mut stream, peer) = listener.accept()?;
        println!("guest: connection from {peer}");
        let mut request = Vec::new();
        stream.read_to_end(&mut request)?;
        stream.write_all(&request)?;
        Ok(())
    });

    let root = Host::embedded(&host)?;
    let mut stream = HvStream::connect(&root, HvAddr::from_vsock_port(vm, 5000))?;
    stream.write_all(b"hello from the host")?;
    stream.shutdown(Shutdown::Write)?;
    let mut reply = String::new();
    stream.read_to_string(&mut reply)?;
    println!("host: echoed back {reply:?}");
    server.join().expect("the echo thread")?;
    Ok(())
}
