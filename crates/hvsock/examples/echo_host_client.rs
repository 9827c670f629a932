//! A host echo client (blocking): connects to VM:PORT through a running
//! `hvsock host`, sends a line and prints what comes back.
//!
//! `cargo run -p hvsock --example echo_host_client -- NAME PORT "some text"`

use std::io::{Read, Write};
use std::net::Shutdown;

use hvsock::{Guid, Host, HvStream, DEFAULT_HOST_CONNECT_TIMEOUT};

fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(vm), Some(port), text) = (args.next(), args.next(), args.next()) else {
        eprintln!("usage: echo_host_client VM PORT [TEXT]");
        std::process::exit(2);
    };
    let port: u32 = port.parse().map_err(std::io::Error::other)?;
    let host = Host::connect_daemon()?;
    let mut stream = HvStream::connect_by_name(
        &host,
        &vm,
        Guid::from_vsock_port(port),
        DEFAULT_HOST_CONNECT_TIMEOUT,
    )?;
    stream.write_all(text.as_deref().unwrap_or("hello").as_bytes())?;
    stream.shutdown(Shutdown::Write)?;
    let mut reply = String::new();
    stream.read_to_string(&mut reply)?;
    println!("{reply}");
    Ok(())
}
