//! `hvsock connect`: connect to an hvsock service and relay it with stdin
//! and stdout, like `nc`.
//!
//! Owns the command's arguments; the relaying is `relay.rs`'s, what ADDR
//! means in each role is `addr.rs`'s, the optional progress bar is
//! `progress.rs`'s.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use crate::addr::{join, parse_connect};
use crate::errors::{self, usage};
use crate::progress::Meter;
use crate::relay::{relay_stdio, StdinPump, Traffic};
use crate::vm::SocketArg;

/// Arguments of `hvsock connect`.
#[derive(Debug, clap::Args)]
pub struct ConnectArgs {
    /// Connect as a guest of VM NAME (ADDR is then a host port); without
    /// it, connect as a host process.
    #[arg(long, value_name = "NAME")]
    vm: Option<String>,

    /// Give up connecting after this many seconds (default: 2 in a guest,
    /// 10 on the host). Nobody listening is refused at once.
    #[arg(long, value_name = "SECONDS")]
    timeout: Option<f64>,

    /// Show bytes, rate (and ETA with --size) on stderr, when it is a
    /// terminal.
    #[arg(long)]
    progress: bool,

    /// Bytes expected in both directions together, for the progress bar's
    /// ETA (suffixes K, M, G).
    #[arg(long, value_name = "BYTES", value_parser = crate::demo::parse_size)]
    size: Option<u64>,

    /// Where to connect. In a guest (--vm): a host port, PORT or CID:PORT
    /// (5000, 2:5000). On the host: VM:SERVICE (alpha:5000).
    #[arg(value_name = "ADDR")]
    addr: String,

    #[command(flatten)]
    socket: SocketArg,
}

/// Runs `hvsock connect`.
pub fn run(args: &ConnectArgs) -> anyhow::Result<ExitCode> {
    errors::finish(connect(args))
}

fn connect(args: &ConnectArgs) -> anyhow::Result<ExitCode> {
    let spec = parse_connect(&args.addr, args.vm.is_some())?;
    let timeout = match args.timeout {
        None => None,
        Some(s) if s.is_finite() && s > 0.0 && s < 1e9 => Some(Duration::from_secs_f64(s)),
        Some(s) => {
            return Err(usage(format!(
                "invalid --timeout {s}: expected seconds > 0"
            )))
        }
    };
    let side = join(&args.socket.path(), args.vm.as_deref())?;
    let stdin = StdinPump::start();
    let conn = side.connect(&spec, timeout)?;
    let traffic = Arc::new(Traffic::default());
    let _active = traffic.open();
    let meter = Meter::start(&spec.to_string(), traffic.clone(), args.size, args.progress);
    let result = relay_stdio(&conn, &stdin, &traffic);
    drop(meter);
    result.map_err(|e| anyhow::anyhow!(e).context(format!("connection to {spec}")))?;
    Ok(ExitCode::SUCCESS)
}
