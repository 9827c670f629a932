//! `hvsock run [--vm NAME] [--socket PATH] -- CMD ARGS...`: runs an
//! unmodified AF_VSOCK program over hvsock, with the `hvsock-preload` shim
//! (`libhvsock_preload.so`) preloaded.
//!
//! Owns finding the shim, the environment that tells it its role, and the
//! seccomp filter: before exec, this process forbids the real
//! `socket(AF_VSOCK, ..)` and `socketpair(AF_VSOCK, ..)` (EAFNOSUPPORT) for
//! itself and everything it starts, so that a call that slipped past the
//! shim (a static binary, a raw syscall) can never reach a real vsock
//! device on this machine. The shim itself only makes AF_UNIX sockets.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule,
};

use crate::vm::SocketArg;

/// The shim's file name.
const SHIM: &str = "libhvsock_preload.so";
/// Overrides where the shim is.
const ENV_SHIM: &str = "HVSOCK_PRELOAD";
/// What the shim reads (see `hvsock-preload`'s runtime module).
const ENV_SOCKET: &str = "HVSOCK_PRELOAD_SOCKET";
const ENV_VM: &str = "HVSOCK_PRELOAD_VM";
/// `AF_VSOCK`.
const AF_VSOCK: u64 = 40;

/// `hvsock run` arguments.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Run as a guest of VM NAME (the host is CID 2). Without it the
    /// program is in the root partition and connects to VMs by CID.
    #[arg(long, value_name = "NAME")]
    vm: Option<String>,
    #[command(flatten)]
    socket: SocketArg,
    /// The program and its arguments.
    #[arg(last = true, required = true, value_name = "CMD")]
    command: Vec<OsString>,
}

/// Where the shim is: `$HVSOCK_PRELOAD`, else next to this executable.
fn shim_path() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os(ENV_SHIM).filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        if !p.is_file() {
            bail!("{ENV_SHIM}={} is not a file", p.display());
        }
        return Ok(p);
    }
    let exe = std::env::current_exe().context("finding the hvsock executable")?;
    let dir = exe
        .parent()
        .context("the hvsock executable has no directory")?;
    let p = dir.join(SHIM);
    if !p.is_file() {
        bail!(
            "{SHIM} is not next to {} (build it with `cargo build --release -p hvsock-preload`, \
             or set {ENV_SHIM})",
            exe.display()
        );
    }
    Ok(p)
}

/// The seccomp filter: `socket` and `socketpair` with domain AF_VSOCK fail
/// with EAFNOSUPPORT; everything else is allowed.
fn vsock_filter() -> anyhow::Result<BpfProgram> {
    let vsock_domain = || -> anyhow::Result<Vec<SeccompRule>> {
        Ok(vec![SeccompRule::new(vec![SeccompCondition::new(
            0,
            SeccompCmpArgLen::Dword,
            SeccompCmpOp::Eq,
            AF_VSOCK,
        )?])?])
    };
    let rules: BTreeMap<i64, Vec<SeccompRule>> = [
        (libc_sys::SYS_SOCKET, vsock_domain()?),
        (libc_sys::SYS_SOCKETPAIR, vsock_domain()?),
    ]
    .into_iter()
    .collect();
    let arch = std::env::consts::ARCH
        .try_into()
        .map_err(|_| anyhow::anyhow!("seccomp: unsupported architecture"))?;
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc_sys::EAFNOSUPPORT),
        arch,
    )?;
    Ok(filter.try_into()?)
}

/// Syscall numbers of the architectures hvsock builds for, and EAFNOSUPPORT.
mod libc_sys {
    /// `__NR_socket`.
    #[cfg(target_arch = "x86_64")]
    pub const SYS_SOCKET: i64 = 41;
    /// `__NR_socketpair`.
    #[cfg(target_arch = "x86_64")]
    pub const SYS_SOCKETPAIR: i64 = 53;
    /// `__NR_socket`.
    #[cfg(target_arch = "aarch64")]
    pub const SYS_SOCKET: i64 = 198;
    /// `__NR_socketpair`.
    #[cfg(target_arch = "aarch64")]
    pub const SYS_SOCKETPAIR: i64 = 199;
    /// `EAFNOSUPPORT`.
    pub const EAFNOSUPPORT: u32 = 97;
}

/// Runs `hvsock run`: only returns if the program could not be started.
pub fn run(args: &RunArgs) -> anyhow::Result<ExitCode> {
    let shim = shim_path()?;
    let socket = args.socket.path();
    let (program, rest) = args
        .command
        .split_first()
        .context("no command given (hvsock run [--vm NAME] -- CMD ARGS...)")?;
    let mut preload = OsString::from(&shim);
    if let Some(old) = std::env::var_os("LD_PRELOAD").filter(|v| !v.is_empty()) {
        preload.push(":");
        preload.push(old);
    }
    let mut cmd = std::process::Command::new(program);
    cmd.args(rest)
        .env("LD_PRELOAD", preload)
        .env(ENV_SOCKET, &socket);
    match &args.vm {
        Some(vm) => cmd.env(ENV_VM, vm),
        None => cmd.env_remove(ENV_VM),
    };
    let filter = vsock_filter().context("building the seccomp filter")?;
    seccompiler::apply_filter(&filter).context("installing the seccomp filter")?;
    let error = cmd.exec();
    Err(anyhow::Error::new(error).context(format!("starting {}", program.to_string_lossy())))
}
