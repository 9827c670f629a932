//! `hvsock stat`: what a running host knows — VMs, connected processes,
//! channels with their endpoints, ring sizes, ring fill and stream bytes —
//! as tables or JSON, once or refreshed every second (`--watch`).
//!
//! Owns only formatting. The report comes from the host (`ExtRequest::Stat`),
//! which reads fill levels and byte counters from the rings itself.

use std::fmt::Write as _;
use std::io::Write as _;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::bail;
use vmbus::ext::{ChannelInfo, ExtEvent, ExtRequest, Partition, StatReport};

use crate::vm::{ask, SocketArg};

/// Arguments of `hvsock stat`.
#[derive(Debug, clap::Args)]
pub struct StatArgs {
    /// Print JSON (one document; with --watch, one line per refresh).
    #[arg(long)]
    json: bool,
    /// Refresh once a second until Ctrl-C.
    #[arg(long)]
    watch: bool,
    #[command(flatten)]
    socket: SocketArg,
}

/// Runs the command.
pub fn run(args: &StatArgs) -> anyhow::Result<ExitCode> {
    let path = args.socket.path();
    loop {
        let report = match ask(&path, &ExtRequest::Stat)? {
            ExtEvent::Stat { report } => report,
            other => bail!("unexpected answer from the host: {other:?}"),
        };
        let mut out = std::io::stdout().lock();
        if args.json && args.watch {
            writeln!(out, "{}", serde_json::to_string(&report)?)?;
        } else if args.json {
            writeln!(out, "{}", serde_json::to_string_pretty(&report)?)?;
        } else {
            if args.watch {
                // Home the cursor and clear the screen: refresh in place.
                write!(out, "\x1b[H\x1b[2J")?;
            }
            write!(out, "{}", text(&report))?;
        }
        out.flush()?;
        if !args.watch {
            return Ok(ExitCode::SUCCESS);
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

fn partition(report: &StatReport, p: &Partition) -> String {
    match p {
        Partition::Root => "host".into(),
        Partition::Vm(id) => match report.vms.iter().find(|vm| vm.id == *id) {
            Some(vm) => format!("vm {}", vm.name),
            None => format!("vm {id}"),
        },
    }
}

fn fill(f: Option<(u32, u32)>) -> String {
    match f {
        Some((used, size)) => format!("{used}/{size}"),
        None => "-".into(),
    }
}

fn bytes(b: Option<u64>) -> String {
    b.map_or_else(|| "-".into(), |b| b.to_string())
}

fn rings(ch: &ChannelInfo) -> String {
    match ch.layout {
        Some(l) => format!(
            "{}+{}p",
            l.guest_to_host_pages,
            l.total_pages.saturating_sub(l.guest_to_host_pages)
        ),
        None => "-".into(),
    }
}

/// The report as tables.
fn text(report: &StatReport) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "VMs ({})", report.vms.len());
    if !report.vms.is_empty() {
        let _ = writeln!(
            out,
            "  {:<16} {:<36} {:>4} {:>9} {:>8}",
            "NAME", "ID", "CID", "PROCESSES", "CHANNELS"
        );
    }
    for vm in &report.vms {
        let _ = writeln!(
            out,
            "  {:<16} {:<36} {:>4} {:>9} {:>8}",
            vm.name,
            vm.id.to_string(),
            vm.cid,
            vm.processes,
            vm.channels
        );
    }
    let _ = writeln!(out, "\nProcesses ({})", report.processes.len());
    if !report.processes.is_empty() {
        let _ = writeln!(out, "  {:>8} {:<20} LISTENING", "PID", "PARTITION");
    }
    for p in &report.processes {
        let _ = writeln!(
            out,
            "  {:>8} {:<20} {}",
            p.pid,
            partition(report, &p.partition),
            if p.listening.is_empty() {
                "-".into()
            } else {
                p.listening.join(", ")
            }
        );
    }
    let _ = writeln!(out, "\nChannels ({})", report.channels.len());
    if !report.channels.is_empty() {
        let _ = writeln!(
            out,
            "  {:>5} {:<12} {:<9} {:<5} {:<36} {:<36} {:>8} {:>8} {:>7} {:>13} {:>13} {:>12} {:>12}",
            "RELID",
            "VM",
            "STATE",
            "FROM",
            "IF_TYPE (listening side)",
            "IF_INSTANCE (connecting side)",
            "GUESTPID",
            "HOSTPID",
            "RINGS",
            "G->H FILL",
            "H->G FILL",
            "GUEST BYTES",
            "HOST BYTES"
        );
    }
    for ch in &report.channels {
        let _ = writeln!(
            out,
            "  {:>5} {:<12} {:<9} {:<5} {:<36} {:<36} {:>8} {:>8} {:>7} {:>13} {:>13} {:>12} {:>12}",
            ch.relid,
            ch.vm,
            ch.state,
            if ch.from_host { "host" } else { "guest" },
            ch.if_type.to_string(),
            ch.if_instance.to_string(),
            ch.guest_pid,
            ch.host_pid,
            rings(ch),
            fill(ch.guest_to_host_fill),
            fill(ch.host_to_guest_fill),
            bytes(ch.guest_bytes),
            bytes(ch.host_bytes)
        );
    }
    out
}
