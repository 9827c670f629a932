//! `hvsock bridge FROM TO`: socat-like relaying between TCP, Unix sockets
//! and hvsock in either role.
//!
//! Owns the endpoint syntax ([`Endpoint`]), opening each kind, the accept
//! loop (a thread per connection: each accepted FROM connection gets its
//! own TO connection), and the counters report on SIGUSR1 and at exit. The
//! byte moving, with each direction half-closed on its own, is
//! `relay::splice`.

use std::fmt;
use std::io;
use std::net::{TcpListener, TcpStream};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::str::FromStr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context};
use signal_hook::consts::{SIGINT, SIGTERM, SIGUSR1};
use signal_hook::iterator::Signals;

use hvsock::addr::VmRef;

use crate::addr::{join, parse_connect, parse_listen, vm_by_name, ConnectSpec, ListenSpec, Side};
use crate::conn::{Conn, Listener};
use crate::errors::{self, usage};
use crate::progress::Meter;
use crate::relay::{splice, Traffic};
use crate::vm::SocketArg;

/// The accepted endpoint forms.
const FORMS: &str = "expected tcp-listen:[HOST:]PORT, tcp:HOST:PORT, unix-listen:PATH, \
     unix:PATH, hv-listen:[VM:]SERVICE or hv:[VM:]SERVICE, e.g. tcp-listen:8080 or hv:alpha:5000";

/// One side of a bridge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// Accept TCP connections on HOST:PORT (HOST defaults to 127.0.0.1).
    TcpListen(String),
    /// Connect to TCP HOST:PORT.
    Tcp(String),
    /// Accept connections on a Unix socket.
    UnixListen(PathBuf),
    /// Connect to a Unix socket.
    Unix(PathBuf),
    /// Accept hvsock connections: `[VM:]SERVICE` on the host, a port in a
    /// guest.
    HvListen(String),
    /// Connect over hvsock: `VM:SERVICE` on the host, a host port in a
    /// guest.
    Hv(String),
}

impl FromStr for Endpoint {
    type Err = String;

    fn from_str(s: &str) -> Result<Endpoint, String> {
        let bad = || format!("invalid address {s:?}: {FORMS}");
        let (kind, rest) = s.split_once(':').ok_or_else(bad)?;
        if rest.is_empty() {
            return Err(bad());
        }
        let rest = rest.to_string();
        Ok(match kind.to_ascii_lowercase().as_str() {
            "tcp-listen" | "tcp-l" => {
                if rest.contains(':') {
                    Endpoint::TcpListen(rest)
                } else {
                    Endpoint::TcpListen(format!("127.0.0.1:{rest}"))
                }
            }
            "tcp" if rest.contains(':') => Endpoint::Tcp(rest),
            "unix-listen" | "unix-l" => Endpoint::UnixListen(rest.into()),
            "unix" | "unix-connect" => Endpoint::Unix(rest.into()),
            "hv-listen" | "hv-l" => Endpoint::HvListen(rest),
            "hv" => Endpoint::Hv(rest),
            _ => return Err(bad()),
        })
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::TcpListen(a) => write!(f, "tcp-listen:{a}"),
            Endpoint::Tcp(a) => write!(f, "tcp:{a}"),
            Endpoint::UnixListen(p) => write!(f, "unix-listen:{}", p.display()),
            Endpoint::Unix(p) => write!(f, "unix:{}", p.display()),
            Endpoint::HvListen(a) => write!(f, "hv-listen:{a}"),
            Endpoint::Hv(a) => write!(f, "hv:{a}"),
        }
    }
}

impl Endpoint {
    fn listens(&self) -> bool {
        matches!(
            self,
            Endpoint::TcpListen(_) | Endpoint::UnixListen(_) | Endpoint::HvListen(_)
        )
    }

    fn is_hv(&self) -> bool {
        matches!(self, Endpoint::HvListen(_) | Endpoint::Hv(_))
    }
}

/// Arguments of `hvsock bridge`.
#[derive(Debug, clap::Args)]
pub struct BridgeArgs {
    /// Be a guest of VM NAME for the hv-listen: and hv: sides (a port in the
    /// guest, a host port to connect to); without it, a host process.
    #[arg(long, value_name = "NAME")]
    vm: Option<String>,

    /// Show connections, bytes and rate on stderr, when it is a terminal.
    #[arg(long)]
    progress: bool,

    /// Give up connecting to an hv: TO after this many seconds.
    #[arg(long, value_name = "SECONDS")]
    timeout: Option<f64>,

    /// Where connections come from: a listening address (each connection
    /// accepted gets its own connection to TO), or a connecting one (one
    /// connection, then exit).
    #[arg(value_name = "FROM")]
    from: Endpoint,

    /// Where each connection goes: tcp:, unix: or hv:.
    #[arg(value_name = "TO")]
    to: Endpoint,

    #[command(flatten)]
    socket: SocketArg,
}

/// Runs `hvsock bridge`.
pub fn run(args: &BridgeArgs) -> anyhow::Result<ExitCode> {
    errors::finish(bridge(args))
}

/// Everything needed to open TO for each connection.
struct Target {
    to: Endpoint,
    hv: Option<(Side, ConnectSpec)>,
    timeout: Option<Duration>,
}

impl Target {
    fn connect(&self) -> anyhow::Result<Conn> {
        match (&self.to, &self.hv) {
            (_, Some((side, spec))) => side.connect(spec, self.timeout),
            (Endpoint::Tcp(addr), None) => TcpStream::connect(addr.as_str())
                .map(Conn::Tcp)
                .map_err(|e| anyhow!("cannot connect to tcp:{addr}: {e}")),
            (Endpoint::Unix(path), None) => UnixStream::connect(path)
                .map(Conn::Unix)
                .map_err(|e| anyhow!("cannot connect to unix:{}: {e}", path.display())),
            (to, None) => Err(anyhow!("internal error: cannot connect to {to}")),
        }
    }
}

fn bridge(args: &BridgeArgs) -> anyhow::Result<ExitCode> {
    if args.to.listens() {
        return Err(usage(format!(
            "TO must be an address to connect to (tcp:, unix: or hv:), not {}",
            args.to
        )));
    }
    let guest = args.vm.is_some();
    let from_hv = match &args.from {
        Endpoint::HvListen(text) => Some(HvFrom::Listen(parse_listen(text, guest)?)),
        Endpoint::Hv(text) => Some(HvFrom::Connect(parse_connect(text, guest)?)),
        _ => None,
    };
    let to_hv = match &args.to {
        Endpoint::Hv(text) => Some(parse_connect(text, guest)?),
        _ => None,
    };
    if args.vm.is_some() && !args.from.is_hv() && !args.to.is_hv() {
        return Err(usage(
            "--vm applies to hv-listen: and hv: addresses; there are none",
        ));
    }
    let timeout = match args.timeout {
        None => None,
        Some(s) if s.is_finite() && s > 0.0 && s < 1e9 => Some(Duration::from_secs_f64(s)),
        Some(s) => {
            return Err(usage(format!(
                "invalid --timeout {s}: expected seconds > 0"
            )))
        }
    };
    let side = if from_hv.is_some() || to_hv.is_some() {
        Some(join(&args.socket.path(), args.vm.as_deref())?)
    } else {
        None
    };
    // A VM named in TO is checked now, not at the first connection.
    if let (Some(ConnectSpec::Host(target)), Some(Side::Host { socket, .. })) = (&to_hv, &side) {
        if let VmRef::Name(name) = &target.vm {
            vm_by_name(socket, name)?;
        }
    }
    let target = Arc::new(Target {
        to: args.to.clone(),
        hv: to_hv.map(|spec| (side.clone().expect("joined"), spec)),
        timeout,
    });
    let traffic = Arc::new(Traffic::default());
    let names = Arc::new((args.from.to_string(), args.to.to_string()));

    if !args.from.listens() {
        let from = match (&args.from, &from_hv, &side) {
            (_, Some(HvFrom::Connect(spec)), Some(side)) => side.connect(spec, timeout)?,
            (Endpoint::Tcp(addr), ..) => TcpStream::connect(addr.as_str())
                .map(Conn::Tcp)
                .map_err(|e| anyhow!("cannot connect to tcp:{addr}: {e}"))?,
            (Endpoint::Unix(path), ..) => UnixStream::connect(path)
                .map(Conn::Unix)
                .map_err(|e| anyhow!("cannot connect to unix:{}: {e}", path.display()))?,
            _ => unreachable!("FROM connects"),
        };
        let to = target.connect()?;
        let _active = traffic.open();
        let meter = Meter::start("bridge", traffic.clone(), None, args.progress);
        let result = splice(&from, &to, &traffic);
        drop(meter);
        eprintln!("{}", counters(&traffic, &names));
        result.context("relaying")?;
        return Ok(ExitCode::SUCCESS);
    }

    let (listener, cleanup) = match (&args.from, &from_hv, &side) {
        (_, Some(HvFrom::Listen(spec)), Some(side)) => (side.listen(spec, 1024)?, None),
        (Endpoint::TcpListen(addr), ..) => (listen_tcp(addr)?, None),
        (Endpoint::UnixListen(path), ..) => (listen_unix(path)?, Some(path.clone())),
        _ => unreachable!("FROM listens"),
    };
    let shown = match &listener {
        Listener::Tcp(l) => format!("tcp-listen:{}", l.local_addr()?),
        _ => args.from.to_string(),
    };
    watch_signals(traffic.clone(), names.clone(), cleanup)?;
    eprintln!(
        "hvsock bridge: listening on {shown}, relaying to {}",
        args.to
    );
    let _meter = Meter::start("bridge", traffic.clone(), None, args.progress);
    loop {
        let (from, peer) = match listener.accept() {
            Ok(accepted) => accepted,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            // Out of descriptors and the like: pass, keep serving.
            Err(e) if is_transient(&e) => {
                eprintln!("hvsock bridge: accept: {e}");
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
            Err(e) => return Err(anyhow!("accepting on {}: {e}", args.from)),
        };
        let (target, traffic) = (target.clone(), traffic.clone());
        std::thread::spawn(move || {
            let _active = traffic.open();
            let to = match target.connect() {
                Ok(to) => to,
                Err(e) => {
                    eprintln!("hvsock bridge: {e:#}; closing the connection from {peer}");
                    return;
                }
            };
            if let Err(e) = splice(&from, &to, &traffic) {
                tracing::info!("connection from {peer}: {e}");
            }
        });
    }
}

/// FROM over hvsock.
enum HvFrom {
    Listen(ListenSpec),
    Connect(ConnectSpec),
}

fn is_transient(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(code) if code == rustix::io::Errno::MFILE.raw_os_error()
            || code == rustix::io::Errno::NFILE.raw_os_error()
            || code == rustix::io::Errno::NOBUFS.raw_os_error()
            || code == rustix::io::Errno::NOMEM.raw_os_error()
            || code == rustix::io::Errno::CONNABORTED.raw_os_error()
    )
}

fn listen_tcp(addr: &str) -> anyhow::Result<Listener> {
    TcpListener::bind(addr).map(Listener::Tcp).map_err(|e| {
        if e.kind() == io::ErrorKind::AddrInUse {
            anyhow!("cannot listen on tcp:{addr}: the port is in use by another program; choose another port")
        } else {
            anyhow!("cannot listen on tcp:{addr}: {e}")
        }
    })
}

/// Listens on a Unix socket, replacing a stale socket file nobody answers
/// on; a live one is an error.
pub fn listen_unix(path: &Path) -> anyhow::Result<Listener> {
    if path.exists() {
        use std::os::unix::fs::FileTypeExt;
        let is_socket = std::fs::symlink_metadata(path)
            .map(|m| m.file_type().is_socket())
            .unwrap_or(false);
        if !is_socket {
            return Err(anyhow!(
                "cannot listen on {}: it exists and is not a socket; remove it or choose another path",
                path.display()
            ));
        }
        if UnixStream::connect(path).is_ok() {
            return Err(anyhow!(
                "cannot listen on {}: another program is listening there; stop it or choose another path",
                path.display()
            ));
        }
        std::fs::remove_file(path)
            .with_context(|| format!("removing the stale socket {}", path.display()))?;
    }
    UnixListener::bind(path)
        .map(Listener::Unix)
        .with_context(|| format!("cannot listen on {}", path.display()))
}

/// The counters, as printed on SIGUSR1 and at exit.
fn counters(traffic: &Traffic, names: &(String, String)) -> String {
    let (from, to) = names;
    format!(
        "hvsock bridge: {} connections ({} open); {} bytes {from} -> {to}; {} bytes {to} -> {from}",
        traffic.connections.load(Relaxed),
        traffic.active.load(Relaxed),
        traffic.sent.load(Relaxed),
        traffic.received.load(Relaxed),
    )
}

/// SIGUSR1 prints the counters; SIGINT and SIGTERM print them, remove the
/// Unix socket listened on, and exit 0. Signal-hook's iterator runs on its
/// own thread, so no code runs inside a signal handler.
fn watch_signals(
    traffic: Arc<Traffic>,
    names: Arc<(String, String)>,
    cleanup: Option<PathBuf>,
) -> anyhow::Result<()> {
    let mut signals =
        Signals::new([SIGUSR1, SIGINT, SIGTERM]).context("installing signal handlers")?;
    std::thread::spawn(move || {
        for signal in signals.forever() {
            eprintln!("{}", counters(&traffic, &names));
            if signal != SIGUSR1 {
                if let Some(path) = &cleanup {
                    let _ = std::fs::remove_file(path);
                }
                std::process::exit(0);
            }
        }
    });
    Ok(())
}
