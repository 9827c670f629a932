//! A guest echo server (blocking): listens on a vsock port in VM NAME of a
//! running `hvsock host` and echoes every connection, one thread each.
//!
//! `cargo run -p hvsock --example echo_guest_server -- NAME PORT`
//! then, from the host: `hvsock connect NAME:PORT`

use std::io::{Read, Write};

use hvsock::{Guest, VsockAddr, VsockListener};

fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(vm), Some(port)) = (args.next(), args.next()) else {
        eprintln!("usage: echo_guest_server VM PORT");
        std::process::exit(2);
    };
    let port: u32 = port.parse().map_err(std::io::Error::other)?;
    let guest = Guest::connect_daemon(&vm)?;
    let listener = VsockListener::bind(&guest, VsockAddr::new(u32::MAX, port))?;
    println!("echoing on vsock port {port} in VM {vm}");
    for stream in listener.incoming() {
        let mut stream = stream?;
        std::thread::spawn(move || {
            let mut buf = [0u8; 65536];
            loop {
                match stream.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if stream.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                }
            }
        });
    }
    Ok(())
}
