//! Who a relay command is (a guest of VM NAME with `--vm`, else a host
//! process) and what its address arguments mean in that role.
//!
//! Owns [`Side`] (the process's connection to the host, in either role),
//! the role-dependent parsing of `SERVICE` / `ADDR` ([`ListenSpec`],
//! [`ConnectSpec`]), resolving a VM name for a host listener, and the
//! wording of errors a new user meets first: no host running, unknown VM,
//! an address in the wrong form.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use hvsock::addr::{HostTarget, ServiceId, Target, VmRef, VsockAddr};
use hvsock::{Guest, Guid, Host, HvAddr, HvListener, HvStream, VsockListener, VsockStream};
use vmbus::ext::{ExtEvent, ExtRequest, VmInfo};

use crate::conn::{Conn, Listener};
use crate::errors::usage;

/// The accepted forms of a guest's SERVICE, for usage errors.
const GUEST_LISTEN_FORMS: &str =
    "in a guest (--vm NAME), SERVICE is a vsock port: decimal like 5000 or hex like 0x1388";
/// The accepted forms of a guest's ADDR, for usage errors.
const GUEST_CONNECT_FORMS: &str =
    "in a guest (--vm NAME), ADDR is a host port: PORT or CID:PORT, e.g. 5000, 0x1388 or 2:5000";
/// What else a host's ADDR could have meant.
const HOST_CONNECT_HINT: &str = "or add --vm NAME to connect from inside VM NAME to a host port";

/// A process's connection to the host: as a guest of one VM, or as a host
/// (root-partition) process.
#[derive(Debug, Clone)]
pub enum Side {
    /// A guest of [`Guest::vm`].
    Guest(Guest),
    /// A host process, with the host socket (for VM lookups).
    Host {
        /// The connection.
        host: Host,
        /// The host socket.
        socket: PathBuf,
    },
}

/// Joins the host at `socket`: as a guest of `vm`, or as a host process.
pub fn join(socket: &Path, vm: Option<&str>) -> anyhow::Result<Side> {
    let result = match vm {
        Some(vm) => Guest::connect_daemon_at(socket, vm).map(Side::Guest),
        None => Host::connect_daemon_at(socket).map(|host| Side::Host {
            host,
            socket: socket.to_owned(),
        }),
    };
    result.map_err(|e| explain_join(e, socket, vm))
}

/// The error of joining, in words for someone who has not started a host.
fn explain_join(e: io::Error, socket: &Path, vm: Option<&str>) -> anyhow::Error {
    if e.kind() == io::ErrorKind::NotFound && !socket.exists() {
        let vm_arg = vm.map(|vm| format!(" --vm {vm}")).unwrap_or_default();
        return anyhow!(
            "no hvsock host is running at {}; start one with `hvsock host --socket {}{vm_arg}` \
             (or set HVSOCK_SOCKET to the socket of the host you started)",
            socket.display(),
            socket.display()
        );
    }
    match vm {
        Some(vm) => anyhow!(e).context(format!("cannot join VM {vm}")),
        None => anyhow!(e).context(format!(
            "cannot reach the hvsock host at {}",
            socket.display()
        )),
    }
}

/// What to listen on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenSpec {
    /// A guest's vsock port.
    Guest(u32),
    /// A host service, for one VM or (None) all.
    Host {
        /// The VM, if restricted to one.
        vm: Option<VmRef>,
        /// The service.
        service: Guid,
    },
}

/// Parses SERVICE (or, on the host, VM:SERVICE) for the role.
pub fn parse_listen(text: &str, guest: bool) -> anyhow::Result<ListenSpec> {
    if guest {
        if text.contains(':') {
            return Err(usage(format!(
                "invalid SERVICE {text:?}: {GUEST_LISTEN_FORMS} (VM:SERVICE is for host \
                 processes, without --vm)"
            )));
        }
        let service: ServiceId = text
            .parse()
            .map_err(|e| usage(format!("{e}; {GUEST_LISTEN_FORMS}")))?;
        let port = service.port().ok_or_else(|| {
            usage(format!(
                "invalid SERVICE {text:?}: a GUID that is not a vsock port; {GUEST_LISTEN_FORMS}"
            ))
        })?;
        return Ok(ListenSpec::Guest(port));
    }
    let target: Target = text
        .parse()
        .map_err(|e: hvsock::addr::ParseAddrError| usage(e.to_string()))?;
    Ok(ListenSpec::Host {
        vm: target.vm,
        service: target.service.guid(),
    })
}

/// What to connect to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectSpec {
    /// A host port, from a guest.
    Guest(VsockAddr),
    /// A service in a VM, from the host.
    Host(HostTarget),
}

/// Parses ADDR for the role.
pub fn parse_connect(text: &str, guest: bool) -> anyhow::Result<ConnectSpec> {
    if guest {
        let addr: VsockAddr = text
            .parse()
            .map_err(|e| usage(format!("{e}; {GUEST_CONNECT_FORMS}")))?;
        return Ok(ConnectSpec::Guest(addr));
    }
    let target: HostTarget = text
        .parse()
        .map_err(|e| usage(format!("{e}; {HOST_CONNECT_HINT}")))?;
    Ok(ConnectSpec::Host(target))
}

impl std::fmt::Display for ListenSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ListenSpec::Guest(port) => write!(f, "vsock port {port}"),
            ListenSpec::Host { vm: None, service } => {
                write!(f, "service {} of every VM", ServiceId(*service))
            }
            ListenSpec::Host {
                vm: Some(vm),
                service,
            } => write!(f, "{vm}:{}", ServiceId(*service)),
        }
    }
}

impl std::fmt::Display for ConnectSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnectSpec::Guest(addr) => write!(f, "host port {}", addr.port),
            ConnectSpec::Host(target) => write!(f, "{target}"),
        }
    }
}

impl Side {
    /// Listens on `spec` (which must be for this role).
    pub fn listen(&self, spec: &ListenSpec, backlog: usize) -> anyhow::Result<Listener> {
        let result = match (self, spec) {
            (Side::Guest(guest), ListenSpec::Guest(port)) => VsockListener::bind_with(
                guest,
                VsockAddr::new(u32::MAX, *port),
                backlog,
                &hvsock::ConnectOptions::default(),
            )
            .map(Listener::Vsock),
            (Side::Host { host, socket }, ListenSpec::Host { vm, service }) => {
                let vm_id = match vm {
                    None => Guid::ZERO,
                    Some(VmRef::Id(id)) => *id,
                    Some(VmRef::Name(name)) => vm_by_name(socket, name)?.id,
                };
                HvListener::bind_with_backlog(host, HvAddr::new(vm_id, *service), backlog)
                    .map(Listener::Hv)
            }
            _ => bail!("internal error: {spec} is not an address for this role"),
        };
        result.map_err(|e| {
            let hint = match e.kind() {
                io::ErrorKind::AddrInUse => {
                    "; another process listens there: stop it or choose another port"
                }
                _ => "",
            };
            anyhow!("cannot listen on {spec}: {e}{hint}")
        })
    }

    /// Connects to `spec` (which must be for this role) within `timeout`.
    pub fn connect(&self, spec: &ConnectSpec, timeout: Option<Duration>) -> anyhow::Result<Conn> {
        let result = match (self, spec) {
            (Side::Guest(guest), ConnectSpec::Guest(addr)) => VsockStream::connect_timeout(
                guest,
                *addr,
                timeout.unwrap_or(hvsock::DEFAULT_GUEST_CONNECT_TIMEOUT),
            )
            .map(Conn::Vsock),
            (Side::Host { host, .. }, ConnectSpec::Host(target)) => {
                let timeout = timeout.unwrap_or(hvsock::DEFAULT_HOST_CONNECT_TIMEOUT);
                match &target.vm {
                    VmRef::Name(name) => {
                        HvStream::connect_by_name(host, name, target.service.guid(), timeout)
                    }
                    VmRef::Id(id) => HvStream::connect_timeout(
                        host,
                        HvAddr::new(*id, target.service.guid()),
                        timeout,
                    ),
                }
                .map(Conn::Hv)
            }
            _ => bail!("internal error: {spec} is not an address for this role"),
        };
        result.map_err(|e| {
            let hint = match (e.kind(), spec) {
                (io::ErrorKind::NotFound, ConnectSpec::Host(_)) => {
                    " (`hvsock vm list` shows the VMs)"
                }
                (io::ErrorKind::TimedOut, _) => " (a longer --timeout may help)",
                _ => "",
            };
            anyhow!("cannot connect to {spec}: {e}{hint}")
        })
    }
}

/// The VM named `name`, asked of the host at `socket`.
pub fn vm_by_name(socket: &Path, name: &str) -> anyhow::Result<VmInfo> {
    let vms = match crate::vm::ask(socket, &ExtRequest::VmList)? {
        ExtEvent::VmList { vms } => vms,
        other => bail!("unexpected answer from the host: {other:?}"),
    };
    let names: Vec<&str> = vms.iter().map(|v| v.name.as_str()).collect();
    vms.iter()
        .find(|v| v.name == name)
        .cloned()
        .with_context(|| {
            format!(
                "the hvsock host has no VM named {name:?} (its VMs: {}); add it with \
                 `hvsock vm add {name}`",
                if names.is_empty() {
                    "none".to_string()
                } else {
                    names.join(", ")
                }
            )
        })
}
