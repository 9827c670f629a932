//! `hvsock listen`: accept hvsock connections and relay each with stdin and
//! stdout, or with a command (`--exec`), like `nc -l`.
//!
//! Owns the command's arguments and its serving loop: one client and exit
//! (the listener is closed once a client is accepted, as `nc -l` does), or
//! `-k` one client after another, or `--max N` at once. The relaying is
//! `relay.rs`'s; what SERVICE means in each role is `addr.rs`'s.

use std::process::ExitCode;
use std::sync::{Arc, Condvar, Mutex};

use anyhow::Context;

use crate::addr::{join, parse_listen};
use crate::conn::{Conn, Listener};
use crate::errors;
use crate::relay::{relay_exec, relay_stdio, StdinPump, Traffic};
use crate::vm::SocketArg;

/// Arguments of `hvsock listen`.
#[derive(Debug, clap::Args)]
pub struct ListenArgs {
    /// Listen as a guest of VM NAME (SERVICE is then a vsock port); without
    /// it, listen as a host process.
    #[arg(long, value_name = "NAME")]
    vm: Option<String>,

    /// Keep listening after a client is done: serve clients one after
    /// another (or several at once with --max).
    #[arg(short = 'k', long)]
    keep_open: bool,

    /// Serve up to N clients at once (implies -k). Without --exec, the
    /// clients share stdin and stdout.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    max: Option<u32>,

    /// Run `sh -c CMD` for each connection, the connection on its stdin and
    /// stdout (stderr stays this process's).
    #[arg(long, value_name = "CMD")]
    exec: Option<String>,

    /// Pending connections the host queues before refusing more.
    #[arg(long, value_name = "N", default_value_t = hvsock::DEFAULT_BACKLOG)]
    backlog: usize,

    /// What to listen on. In a guest (--vm): a vsock port (5000, 0x1388).
    /// On the host: SERVICE (a port or a service GUID) for every VM, or
    /// VM:SERVICE for one.
    #[arg(value_name = "SERVICE")]
    service: String,

    #[command(flatten)]
    socket: SocketArg,
}

/// Runs `hvsock listen`.
pub fn run(args: &ListenArgs) -> anyhow::Result<ExitCode> {
    errors::finish(serve(args))
}

fn serve(args: &ListenArgs) -> anyhow::Result<ExitCode> {
    let spec = parse_listen(&args.service, args.vm.is_some())?;
    let side = join(&args.socket.path(), args.vm.as_deref())?;
    let listener = side.listen(&spec, args.backlog)?;
    match &args.vm {
        Some(vm) => eprintln!("hvsock: listening on {spec} in VM {vm}"),
        None => eprintln!("hvsock: listening on {spec}"),
    }
    let traffic = Arc::new(Traffic::default());
    let stdin = args.exec.is_none().then(StdinPump::start);
    let keep = args.keep_open || args.max.is_some();
    if !keep {
        let (conn, peer) = listener.accept().context("accepting a connection")?;
        drop(listener);
        serve_one(
            &conn,
            &peer,
            args.exec.as_deref(),
            stdin.as_deref(),
            &traffic,
        )?;
        return Ok(ExitCode::SUCCESS);
    }
    serve_many(&listener, args, stdin, traffic)
}

/// `-k`: clients one after another, or up to `--max` at once; runs until
/// the listener fails (the host went away) or the process is stopped.
fn serve_many(
    listener: &Listener,
    args: &ListenArgs,
    stdin: Option<Arc<StdinPump>>,
    traffic: Arc<Traffic>,
) -> anyhow::Result<ExitCode> {
    let max = args.max.unwrap_or(1);
    let slots = Arc::new((Mutex::new(0u32), Condvar::new()));
    loop {
        {
            let (busy, freed) = &*slots;
            let mut busy = busy.lock().unwrap_or_else(|e| e.into_inner());
            while *busy >= max {
                busy = freed.wait(busy).unwrap_or_else(|e| e.into_inner());
            }
            *busy += 1;
        }
        let (conn, peer) = listener.accept().context("accepting a connection")?;
        let (slots, stdin, traffic) = (slots.clone(), stdin.clone(), traffic.clone());
        let exec = args.exec.clone();
        std::thread::spawn(move || {
            if let Err(e) = serve_one(&conn, &peer, exec.as_deref(), stdin.as_deref(), &traffic) {
                eprintln!("hvsock: {e:#}");
            }
            drop(conn);
            let (busy, freed) = &*slots;
            *busy.lock().unwrap_or_else(|e| e.into_inner()) -= 1;
            freed.notify_one();
        });
    }
}

fn serve_one(
    conn: &Conn,
    peer: &str,
    exec: Option<&str>,
    stdin: Option<&StdinPump>,
    traffic: &Traffic,
) -> anyhow::Result<()> {
    tracing::info!("connection from {peer}");
    let _active = traffic.open();
    match (exec, stdin) {
        (Some(command), _) => {
            let status = relay_exec(conn, command, traffic)
                .with_context(|| format!("connection from {peer}"))?;
            if !status.success() {
                tracing::warn!("`{command}` for {peer} ended with {status}");
            }
        }
        (None, Some(stdin)) => {
            relay_stdio(conn, stdin, traffic).with_context(|| format!("connection from {peer}"))?
        }
        (None, None) => unreachable!("stdin is pumped when there is no command"),
    }
    tracing::info!("{peer} done");
    Ok(())
}
