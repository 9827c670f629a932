//! A guest echo client (tokio): connects to a host port from VM NAME of a
//! running `hvsock host`, sends a text and prints the echo.
//!
//! `cargo run -p hvsock --example tokio_echo_guest_client -- NAME PORT "text"`

use hvsock::{Guest, VsockAddr};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(vm), Some(port), text) = (args.next(), args.next(), args.next()) else {
        eprintln!("usage: tokio_echo_guest_client VM PORT [TEXT]");
        std::process::exit(2);
    };
    let port: u32 = port.parse().map_err(std::io::Error::other)?;
    let guest = Guest::connect_daemon(&vm)?;
    let mut stream = hvsock::tokio::VsockStream::connect(&guest, VsockAddr::new(2, port)).await?;
    stream
        .write_all(text.as_deref().unwrap_or("hello").as_bytes())
        .await?;
    stream.shutdown().await?;
    let mut reply = String::new();
    stream.read_to_string(&mut reply).await?;
    println!("{reply}");
    Ok(())
}
