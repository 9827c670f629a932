//! A host echo server (tokio): listens on a vsock-shaped service for every
//! VM of a running `hvsock host`; one task per connection.
//!
//! `cargo run -p hvsock --example tokio_echo_host_server -- PORT`
//! then, in a guest: `hvsock connect --vm NAME PORT`

use hvsock::{Guid, Host, HvAddr};

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let Some(port) = std::env::args().nth(1) else {
        eprintln!("usage: tokio_echo_host_server PORT");
        std::process::exit(2);
    };
    let port: u32 = port.parse().map_err(std::io::Error::other)?;
    let host = Host::connect_daemon()?;
    let listener =
        hvsock::tokio::HvListener::bind(&host, HvAddr::from_vsock_port(Guid::ZERO, port)).await?;
    println!(
        "echoing on service {} for every VM",
        Guid::from_vsock_port(port)
    );
    loop {
        let (stream, peer) = listener.accept().await?;
        tokio::spawn(async move {
            let (mut reader, mut writer) = stream.into_split();
            let moved = tokio::io::copy(&mut reader, &mut writer).await;
            println!("{peer}: {moved:?} bytes echoed");
        });
    }
}
