//! `hvsock vm add|rm|list`: manage the VMs of a running host over its host
//! socket.
//!
//! Owns the commands' arguments and output, and [`ask`], the one round
//! trip (connect, request, answer) that `hvsock stat` shares. The VM
//! registry itself is the host's (`vmbus::server`).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use vmbus::daemon::{control, default_socket_path, vm_socket_path};
use vmbus::ext::{ExtEvent, ExtRequest, VmInfo};
use vmbus::Guid;

/// The `--socket` option every client command takes.
#[derive(Debug, Clone, clap::Args)]
pub struct SocketArg {
    /// The host socket. Default: $HVSOCK_SOCKET, else
    /// $XDG_RUNTIME_DIR/hvsock/host.sock, else /tmp/hvsock-UID/host.sock.
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
}

impl SocketArg {
    /// The path to use.
    pub fn path(&self) -> PathBuf {
        self.socket.clone().unwrap_or_else(default_socket_path)
    }
}

/// `hvsock vm` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum VmCommand {
    /// Add a VM: the host creates its socket, vm-NAME.sock, next to the host
    /// socket.
    #[command(after_help = "\
Examples:
  hvsock vm add beta
  hvsock vm add gamma --id 3f2504e0-4f89-11d3-9a0c-0305e82c3301")]
    Add(AddArgs),
    /// Remove a VM: its connections are revoked, its processes
    /// disconnected, its socket removed.
    #[command(after_help = "Example:\n  hvsock vm rm beta")]
    Rm(RmArgs),
    /// List the VMs with their ids, CIDs, processes and channels.
    #[command(after_help = "Examples:\n  hvsock vm list\n  hvsock vm list --json")]
    List(ListArgs),
}

/// Arguments of `hvsock vm add`.
#[derive(Debug, clap::Args)]
pub struct AddArgs {
    /// The VM's name (letters, digits, '-', '_', '.'; at most 64).
    name: String,
    /// Its id; derived from the name when absent.
    #[arg(long, value_name = "GUID")]
    id: Option<Guid>,
    #[command(flatten)]
    socket: SocketArg,
}

/// Arguments of `hvsock vm rm`.
#[derive(Debug, clap::Args)]
pub struct RmArgs {
    /// The VM's name.
    name: String,
    #[command(flatten)]
    socket: SocketArg,
}

/// Arguments of `hvsock vm list`.
#[derive(Debug, clap::Args)]
pub struct ListArgs {
    /// Print a JSON array instead of a table.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    socket: SocketArg,
}

/// Sends one request to the host at `path` and returns its answer; a
/// refusal becomes an error.
pub fn ask(path: &Path, request: &ExtRequest) -> anyhow::Result<ExtEvent> {
    let socket = control::connect(path)?;
    let event = control::request(&socket, request)
        .with_context(|| format!("no answer from the host at {}", path.display()))?;
    if let ExtEvent::Refused { reason } = &event {
        bail!("the host at {} refused: {reason}", path.display());
    }
    Ok(event)
}

/// Runs a `hvsock vm` subcommand.
pub fn run(command: &VmCommand) -> anyhow::Result<ExitCode> {
    match command {
        VmCommand::Add(args) => {
            let path = args.socket.path();
            let request = ExtRequest::VmAdd {
                name: args.name.clone(),
                id: args.id,
            };
            let vm = vm_result(ask(&path, &request)?, "add", &args.name)?;
            println!(
                "added VM {} (id {}, CID {}); its processes connect to {}",
                vm.name,
                vm.id,
                vm.cid,
                vm_socket_path(&path, &vm.name).display()
            );
        }
        VmCommand::Rm(args) => {
            let path = args.socket.path();
            let request = ExtRequest::VmRemove {
                name: args.name.clone(),
            };
            let vm = vm_result(ask(&path, &request)?, "remove", &args.name)?;
            println!(
                "removed VM {} ({} processes disconnected, {} channels revoked)",
                vm.name, vm.processes, vm.channels
            );
        }
        VmCommand::List(args) => {
            let path = args.socket.path();
            let vms = match ask(&path, &ExtRequest::VmList)? {
                ExtEvent::VmList { vms } => vms,
                other => bail!("unexpected answer from the host: {other:?}"),
            };
            if args.json {
                let list: Vec<serde_json::Value> = vms
                    .iter()
                    .map(|vm| {
                        let mut v = serde_json::to_value(vm).expect("plain data");
                        v["socket"] = vm_socket_path(&path, &vm.name).display().to_string().into();
                        v
                    })
                    .collect();
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                print!("{}", table(&vms, &path));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn vm_result(event: ExtEvent, what: &str, name: &str) -> anyhow::Result<VmInfo> {
    match event {
        ExtEvent::VmResult { vm: Some(vm), .. } => Ok(vm),
        ExtEvent::VmResult {
            error: Some(error), ..
        } => bail!("cannot {what} VM {name}: {error}"),
        other => bail!("unexpected answer from the host: {other:?}"),
    }
}

fn table(vms: &[VmInfo], host: &Path) -> String {
    if vms.is_empty() {
        return "no VMs; add one with `hvsock vm add NAME`\n".into();
    }
    let width = vms.iter().map(|v| v.name.len()).max().unwrap_or(4).max(4);
    let mut out = format!(
        "{:<width$}  {:<36}  {:>4}  {:>9}  {:>8}  SOCKET\n",
        "NAME", "ID", "CID", "PROCESSES", "CHANNELS"
    );
    for vm in vms {
        out += &format!(
            "{:<width$}  {:<36}  {:>4}  {:>9}  {:>8}  {}\n",
            vm.name,
            vm.id.to_string(),
            vm.cid,
            vm.processes,
            vm.channels,
            vm_socket_path(host, &vm.name).display()
        );
    }
    out
}
