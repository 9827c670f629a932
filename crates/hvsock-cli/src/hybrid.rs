//! `hvsock hybrid`: the hybrid vsock front of Firecracker, Cloud Hypervisor
//! and OpenVMM for one VM, so that their host tooling works unchanged.
//!
//! Host → guest: a program connects to the Unix socket PATH, writes
//! `CONNECT <port>\n` (parsed by `hvsock::hybrid::ConnectLineParser`, within
//! `LINE_TIMEOUT` of the accept), the front connects to that port in the VM
//! as a host process, answers `OK <n>\n` (n from `HostPortAllocator`) and
//! relays; bytes after the newline are stream data. Anything wrong — no
//! listener, a malformed or over-long line, a line not finished in time —
//! closes that socket with nothing relayed; the front keeps serving.
//!
//! Guest → host: a guest connecting to host port P reaches the Unix socket
//! `PATH_P`. The host API has no "any service" listener, so the front
//! listens, as a host process, on each port P for which `PATH_P` exists,
//! re-scanning the directory every `--rescan` seconds; ports without a
//! socket have no listener and are refused at once by the host.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};
use hvsock::hybrid::{ok_line, ConnectLineParser, HostPortAllocator, LINE_TIMEOUT};
use hvsock::{Guid, Host, HvAddr, HvListener, HvStream};
use rustix::event::{poll, PollFd, PollFlags, Timespec};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use crate::addr::{join, vm_by_name, Side};
use crate::bridge::listen_unix;
use crate::conn::{Conn, Listener};
use crate::errors::{self, usage};
use crate::relay::{splice, Traffic};

/// How long the front waits for the guest to accept a host → guest
/// connection (nobody listening is refused at once).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Arguments of `hvsock hybrid`.
#[derive(Debug, clap::Args)]
pub struct HybridArgs {
    /// The VM whose vsock the front serves.
    #[arg(long, value_name = "NAME")]
    vm: String,

    /// The hybrid vsock Unix socket to create (Firecracker's uds_path).
    /// Guest connections to host port P go to the Unix socket PATH_P.
    #[arg(long, value_name = "PATH")]
    socket: PathBuf,

    /// The hvsock host socket. Default: $HVSOCK_SOCKET, else
    /// $XDG_RUNTIME_DIR/hvsock/host.sock, else /tmp/hvsock-UID/host.sock.
    #[arg(long, value_name = "PATH")]
    host_socket: Option<PathBuf>,

    /// Seconds between scans for new or removed PATH_P sockets.
    #[arg(long, value_name = "SECONDS", default_value_t = 1.0)]
    rescan: f64,
}

/// Runs `hvsock hybrid`.
pub fn run(args: &HybridArgs) -> anyhow::Result<ExitCode> {
    errors::finish(front(args))
}

fn front(args: &HybridArgs) -> anyhow::Result<ExitCode> {
    if !(args.rescan.is_finite() && args.rescan > 0.0 && args.rescan < 1e6) {
        return Err(usage(format!(
            "invalid --rescan {}: expected seconds > 0",
            args.rescan
        )));
    }
    let rescan = Duration::from_secs_f64(args.rescan);
    let host_socket = args
        .host_socket
        .clone()
        .unwrap_or_else(vmbus::daemon::default_socket_path);
    let Side::Host { host, .. } = join(&host_socket, None)? else {
        unreachable!("joined as a host process")
    };
    let vm = vm_by_name(&host_socket, &args.vm)?;
    let Listener::Unix(listener) = listen_unix(&args.socket)? else {
        unreachable!("a Unix listener")
    };
    watch_signals(args.socket.clone())?;
    {
        let (host, base) = (host.clone(), args.socket.clone());
        std::thread::spawn(move || guest_to_host(&host, vm.id, &base, rescan));
    }
    eprintln!(
        "hvsock hybrid: listening on {} for VM {}; guest connections to host port P go to {}_P",
        args.socket.display(),
        vm.name,
        args.socket.display()
    );
    let ports = Arc::new(Mutex::new(HostPortAllocator::new()));
    let traffic = Arc::new(Traffic::default());
    for client in listener.incoming() {
        let client = match client {
            Ok(client) => client,
            Err(e) => {
                tracing::warn!("accept on {}: {e}", args.socket.display());
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        let (host, vm, ports, traffic) = (
            host.clone(),
            vm.name.clone(),
            ports.clone(),
            traffic.clone(),
        );
        std::thread::spawn(move || {
            if let Err(e) = host_to_guest(client, &host, &vm, &ports, &traffic) {
                tracing::info!("hybrid client: {e:#}");
            }
        });
    }
    Err(anyhow!("the listener on {} ended", args.socket.display()))
}

/// Serves one host program: the CONNECT line, the guest connection, `OK`,
/// then the relay. Any error drops `client` with nothing relayed.
fn host_to_guest(
    mut client: UnixStream,
    host: &Host,
    vm: &str,
    ports: &Mutex<HostPortAllocator>,
    traffic: &Traffic,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + LINE_TIMEOUT;
    let mut parser = ConnectLineParser::new();
    let mut buf = [0u8; 4096];
    let (target, early) = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(anyhow!("no CONNECT line within {LINE_TIMEOUT:?}"));
        }
        client.set_read_timeout(Some(left))?;
        let n = match client.read(&mut buf) {
            Ok(0) => return Err(anyhow!("closed before the CONNECT line ended")),
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Err(anyhow!("no CONNECT line within {LINE_TIMEOUT:?}"))
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e.into()),
        };
        if let Some((target, used)) = parser.push(&buf[..n])? {
            // Bytes past the newline are already stream data.
            break (target, buf[used..n].to_vec());
        }
    };
    client.set_read_timeout(None)?;
    let guest = HvStream::connect_by_name(host, vm, target.service_id(), CONNECT_TIMEOUT)
        .with_context(|| format!("CONNECT {target}"))?;
    let port = ports.lock().unwrap_or_else(|e| e.into_inner()).allocate()?;
    let result = (|| {
        client.write_all(ok_line(port).as_bytes())?;
        (&guest).write_all(&early)?;
        let _active = traffic.open();
        splice(&Conn::Unix(client), &Conn::Hv(guest), traffic)
    })();
    ports
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .release(port);
    result.with_context(|| format!("relaying CONNECT {target} (host port {port})"))
}

/// The ports P for which `base`_P exists.
fn scan(base: &Path) -> BTreeSet<u32> {
    let (Some(dir), Some(name)) = (base.parent(), base.file_name()) else {
        return BTreeSet::new();
    };
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let prefix = format!("{}_", name.to_string_lossy());
    let Ok(entries) = std::fs::read_dir(dir) else {
        return BTreeSet::new();
    };
    entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let digits = name.strip_prefix(&prefix)?;
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            digits.parse().ok()
        })
        .collect()
}

/// Guest → host: listens on the ports that have a `base`_P socket and
/// relays each accepted connection to it. Runs for the life of the process.
fn guest_to_host(host: &Host, vm_id: Guid, base: &Path, rescan: Duration) {
    let mut listeners: BTreeMap<u32, HvListener> = BTreeMap::new();
    let mut warned = BTreeSet::new();
    let traffic = Arc::new(Traffic::default());
    let mut next_scan = Instant::now();
    loop {
        if Instant::now() >= next_scan {
            let wanted = scan(base);
            listeners.retain(|port, _| wanted.contains(port));
            warned.retain(|port| wanted.contains(port));
            for &port in &wanted {
                if listeners.contains_key(&port) {
                    continue;
                }
                match HvListener::bind(host, HvAddr::from_vsock_port(vm_id, port)) {
                    Ok(listener) => {
                        let _ = listener.set_nonblocking(true);
                        tracing::info!("forwarding host port {port} to {}_{port}", base.display());
                        listeners.insert(port, listener);
                    }
                    Err(e) => {
                        if warned.insert(port) {
                            eprintln!("hvsock hybrid: cannot listen on host port {port}: {e}");
                        }
                    }
                }
            }
            next_scan = Instant::now() + rescan;
        }
        let wait = next_scan.saturating_duration_since(Instant::now());
        let timeout = Timespec {
            tv_sec: wait.as_secs() as i64,
            tv_nsec: i64::from(wait.subsec_nanos()),
        };
        {
            let mut fds: Vec<PollFd<'_>> = listeners
                .values()
                .map(|l| PollFd::new(l, PollFlags::IN))
                .collect();
            let _ = poll(&mut fds, Some(&timeout));
        }
        for (&port, listener) in &listeners {
            loop {
                match listener.accept() {
                    Ok((guest, peer)) => {
                        let path = PathBuf::from(format!("{}_{port}", base.display()));
                        let traffic = traffic.clone();
                        std::thread::spawn(move || {
                            let local = match UnixStream::connect(&path) {
                                Ok(local) => local,
                                Err(e) => {
                                    eprintln!(
                                        "hvsock hybrid: {peer} -> host port {port}: cannot connect to {}: {e}",
                                        path.display()
                                    );
                                    return;
                                }
                            };
                            let _active = traffic.open();
                            if let Err(e) = splice(&Conn::Hv(guest), &Conn::Unix(local), &traffic) {
                                tracing::info!("{peer} -> host port {port}: {e}");
                            }
                        });
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => {
                        tracing::warn!("accept on host port {port}: {e}");
                        break;
                    }
                }
            }
        }
    }
}

/// SIGINT and SIGTERM remove the front's socket and exit 0.
fn watch_signals(socket: PathBuf) -> anyhow::Result<()> {
    let mut signals = Signals::new([SIGINT, SIGTERM]).context("installing signal handlers")?;
    std::thread::spawn(move || {
        if signals.forever().next().is_some() {
            let _ = std::fs::remove_file(&socket);
            std::process::exit(0);
        }
    });
    Ok(())
}
