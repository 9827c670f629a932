//! `hvsock host`: runs the emulated Hyper-V host in the foreground until
//! SIGINT or SIGTERM, then removes its sockets.
//!
//! Owns argument parsing, printing where the host listens and turning
//! signals into a clean shutdown (signal-hook's iterator on a thread, so no
//! code runs inside a signal handler). The host itself is
//! `vmbus::daemon::Daemon`.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use vmbus::daemon::{default_socket_path, Daemon, DaemonConfig};
use vmbus::server::ServerConfig;
use vmbus::Guid;

/// Arguments of `hvsock host`.
#[derive(Debug, clap::Args)]
pub struct HostArgs {
    /// The host socket; VM sockets (vm-NAME.sock) go next to it. Default:
    /// $HVSOCK_SOCKET, else $XDG_RUNTIME_DIR/hvsock/host.sock, else
    /// /tmp/hvsock-UID/host.sock.
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,

    /// A VM to create at start, by name, optionally with its id
    /// (repeatable). Without an id, one is derived from the name.
    #[arg(long = "vm", value_name = "NAME[=GUID]", value_parser = parse_vm)]
    vms: Vec<(String, Option<Guid>)>,

    /// Seconds an offered channel may stay unopened before it is rescinded.
    #[arg(long, value_name = "SECONDS", default_value_t = 30)]
    offer_timeout: u64,
}

/// Parses `NAME` or `NAME=GUID`.
pub fn parse_vm(text: &str) -> Result<(String, Option<Guid>), String> {
    match text.split_once('=') {
        None => Ok((text.to_string(), None)),
        Some((name, id)) => {
            let id = id
                .parse::<Guid>()
                .map_err(|e| format!("{id:?} is not a GUID: {e}"))?;
            Ok((name.to_string(), Some(id)))
        }
    }
}

/// Raises the soft limit on open files to the hard one: each connection
/// holds three descriptors in the host.
fn raise_fd_limit() {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current < limit.maximum {
        limit.current = limit.maximum;
        if let Err(e) = setrlimit(Resource::Nofile, limit) {
            tracing::debug!("could not raise the open-file limit: {e}");
        }
    }
}

/// Writes to stdout, ignoring errors (stdout may be a closed pipe).
fn say(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes());
    let _ = out.flush();
}

/// Runs the host until a signal stops it.
pub fn run(args: &HostArgs) -> anyhow::Result<ExitCode> {
    raise_fd_limit();
    let socket = args.socket.clone().unwrap_or_else(default_socket_path);
    let config = DaemonConfig {
        socket: socket.clone(),
        vms: args.vms.clone(),
        server: ServerConfig {
            offer_timeout: Duration::from_secs(args.offer_timeout),
            ..ServerConfig::default()
        },
        allowed_uids: None,
    };
    let daemon = Daemon::bind(config)?;
    let handle = daemon.shutdown_handle();
    let mut signals =
        Signals::new([SIGINT, SIGTERM]).context("cannot install the SIGINT/SIGTERM handlers")?;
    let signals_handle = signals.handle();
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            if let Some(signal) = signals.forever().next() {
                tracing::info!(signal, "stopping on a signal");
                handle.shutdown();
            }
        })
        .context("cannot start the signal thread")?;

    // Where it listens, for people and scripts. A closed stdout must not
    // stop the host, so write errors are ignored.
    let mut banner = format!("hvsock host listening on {}\n", socket.display());
    for (vm, path) in daemon.vms() {
        banner += &format!(
            "  VM {} (id {}, CID {}) on {}\n",
            vm.name,
            vm.id,
            vm.cid,
            path.display()
        );
    }
    banner += "stop with Ctrl-C (SIGINT) or SIGTERM\n";
    say(&banner);

    daemon.run()?;
    signals_handle.close();
    say("hvsock host stopped; its sockets are removed\n");
    Ok(ExitCode::SUCCESS)
}
