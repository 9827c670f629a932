//! The `hvsock` command: the user's entry point to hvsock.
//!
//! Owns argument parsing, logging set-up and the mapping of errors to exit
//! codes. Each command lives in its own module; protocol logic lives in the
//! library crates, never here.

mod addr;
mod bench;
mod bridge;
mod completions;
mod conn;
mod connect;
mod demo;
mod errors;
mod host;
mod hybrid;
mod listen;
mod progress;
mod relay;
mod ring_dump;
mod run;
mod stat;
mod vm;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Hyper-V sockets in user space.
#[derive(Debug, Parser)]
#[command(name = "hvsock", version, about, long_about = None)]
struct Cli {
    /// More log output (-v: debug, -vv: trace). Logs go to stderr.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the whole stack in one process and show each step: an embedded
    /// host, a VM, a guest service, a host connection, data both ways.
    #[command(after_help = "\
Examples:
  hvsock demo
  hvsock demo --bytes 1G
  hvsock demo --quiet")]
    Demo(demo::DemoArgs),
    /// Work with VMBus ring images.
    #[command(subcommand)]
    Ring(RingCommand),
    /// Run the emulated Hyper-V host in the foreground (Ctrl-C stops it and
    /// removes its sockets).
    #[command(after_help = "\
Host processes connect to the host socket; a process becomes a guest of VM
NAME by connecting to vm-NAME.sock next to it.

Examples:
  hvsock host --vm alpha
  hvsock host --socket /tmp/hv/host.sock --vm alpha --vm beta=3f2504e0-4f89-11d3-9a0c-0305e82c3301
  HVSOCK_SOCKET=/tmp/hv/host.sock hvsock host")]
    Host(host::HostArgs),
    /// Manage the VMs of a running host.
    #[command(subcommand)]
    Vm(vm::VmCommand),
    /// Show a running host's VMs, processes and channels (ring fill, bytes).
    #[command(after_help = "\
Examples:
  hvsock stat
  hvsock stat --json
  hvsock stat --watch --socket /tmp/hv/host.sock")]
    Stat(stat::StatArgs),
    /// Measure hvsock next to a Unix stream socket and TCP over loopback,
    /// in the same run: throughput, round trip, set-up rate, many
    /// connections, CPU per GiB.
    #[command(after_help = "\
Examples:
  hvsock bench --quick
  hvsock bench --only rtt
  hvsock bench --json > bench.json
  hvsock bench --plot docs/throughput.png")]
    Bench(bench::BenchArgs),
    /// Accept hvsock connections and relay each with stdin/stdout (or a
    /// command), like `nc -l`.
    #[command(after_help = "\
Without --vm, a host process listens on SERVICE for every VM (or VM:SERVICE
for one); with --vm NAME, a guest of VM NAME listens on a vsock port. Stdin's
end sends the FIN; the peer's FIN ends the output; exit 0 when both are done,
1 when the connection is reset.

Examples:
  hvsock listen --vm alpha 5000                  # in VM alpha, one client
  hvsock listen -k alpha:5000 > log              # host, clients of alpha, one after another
  hvsock listen --vm alpha -k --max 16 --exec cat 7  # an echo service, 16 at once
  hvsock listen --socket /tmp/hv/host.sock 0x1388")]
    Listen(listen::ListenArgs),
    /// Connect to an hvsock service and relay it with stdin/stdout, like
    /// `nc`.
    #[command(after_help = "\
Without --vm, a host process connects to VM:SERVICE; with --vm NAME, a guest
of VM NAME connects to a host port. Exit 0 when both directions are done, 1
when refused (nobody listening) or reset.

Examples:
  echo hello | hvsock connect alpha:5000         # host -> service 5000 in VM alpha
  hvsock connect --vm alpha 5000 < file          # guest of alpha -> host port 5000
  hvsock connect --progress --size 1G alpha:5000 < big.img
  hvsock connect --timeout 30 3f2504e0-4f89-11d3-9a0c-0305e82c3301:5000")]
    Connect(connect::ConnectArgs),
    /// Relay between TCP, Unix sockets and hvsock, like socat: each
    /// connection accepted on FROM gets its own connection to TO.
    #[command(after_help = "\
Addresses: tcp-listen:[HOST:]PORT (HOST defaults to 127.0.0.1), tcp:HOST:PORT,
unix-listen:PATH, unix:PATH, hv-listen:[VM:]SERVICE, hv:[VM:]SERVICE. With
--vm NAME the hv sides are a guest of VM NAME (a port to listen on, a host
port to connect to). Each direction is half-closed on its own. SIGUSR1
prints the counters (connections, bytes each way); so does the exit
(SIGINT, SIGTERM).

Examples:
  hvsock bridge tcp-listen:8080 hv:alpha:80                 # host TCP 8080 -> port 80 in VM alpha
  hvsock bridge --vm alpha hv-listen:80 tcp:127.0.0.1:8000  # inside alpha: port 80 -> a local web server
  hvsock bridge unix-listen:/tmp/alpha-ssh.sock hv:alpha:22
  hvsock bridge --progress hv-listen:5000 unix:/run/app.sock
  kill -USR1 $(pidof hvsock)                                # print the counters")]
    Bridge(bridge::BridgeArgs),
    /// Serve a VM's vsock as Firecracker / Cloud Hypervisor / OpenVMM do:
    /// a Unix socket that takes `CONNECT <port>` lines.
    #[command(after_help = "\
A host program connects to PATH, writes `CONNECT <port>\\n` (or a service
GUID), reads `OK <n>\\n`, then talks to that port in the VM. No listener, a
malformed or over-long line, or no line within 2 seconds: the socket is
closed with nothing relayed. A guest connecting to host port P reaches the
Unix socket PATH_P, if it exists (the directory is scanned every second).

Examples:
  hvsock hybrid --vm alpha --socket /tmp/alpha.vsock
  printf 'CONNECT 5000\\nhello\\n' | socat - UNIX-CONNECT:/tmp/alpha.vsock
  socat UNIX-LISTEN:/tmp/alpha.vsock_7000,fork EXEC:cat &   # guest connects to host port 7000
  hvsock hybrid --vm alpha --socket /run/alpha.vsock --host-socket /tmp/hv/host.sock")]
    Hybrid(hybrid::HybridArgs),
    /// Print a shell completion script.
    #[command(after_help = "\
Examples:
  hvsock completions bash > ~/.local/share/bash-completion/completions/hvsock
  hvsock completions zsh > ~/.zfunc/_hvsock
  hvsock completions fish > ~/.config/fish/completions/hvsock.fish")]
    Completions(completions::CompletionsArgs),
    /// Run an unmodified AF_VSOCK program over hvsock (LD_PRELOAD shim;
    /// a seccomp filter keeps it off any real vsock device).
    #[command(after_help = "\
With --vm NAME the program is a guest of VM NAME: the host is CID 2. Without
it the program is on the host and reaches a VM by its CID (hvsock vm list).
The shim is libhvsock_preload.so next to the hvsock executable, or
$HVSOCK_PRELOAD.

Examples:
  hvsock run --vm alpha -- socat - VSOCK-CONNECT:2:5000
  hvsock run -- socat VSOCK-LISTEN:5000,fork EXEC:cat
  hvsock run --vm alpha -- python3 server.py")]
    Run(run::RunArgs),
}

#[derive(Debug, Subcommand)]
enum RingCommand {
    /// Decode a ring image: the control page and every packet between the
    /// read and write index.
    #[command(after_help = "\
A ring image is the 4096-byte control page followed by the data area, as a
VMBus ring lies in memory. A corrupt image is reported precisely (field,
offset, reason) after the packets that were valid, and the exit code is 1.

Examples:
  hvsock ring dump examples/rings/hello-fin.ring
  hvsock ring dump --json examples/rings/data-size-lie.ring
  hvsock ring dump --data-size 20480 capture.ring")]
    Dump(ring_dump::DumpArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match &cli.command {
        Command::Demo(args) if !args.quiet => init_demo_logging(cli.verbose),
        _ => init_logging(cli.verbose, matches!(cli.command, Command::Host(_))),
    }
    let result = match cli.command {
        Command::Demo(args) => demo::run(&args),
        Command::Ring(RingCommand::Dump(args)) => ring_dump::run(&args),
        Command::Host(args) => host::run(&args),
        Command::Vm(command) => vm::run(&command),
        Command::Stat(args) => stat::run(&args),
        Command::Bench(args) => bench::run(&args),
        Command::Listen(args) => listen::run(&args),
        Command::Connect(args) => connect::run(&args),
        Command::Bridge(args) => bridge::run(&args),
        Command::Hybrid(args) => hybrid::run(&args),
        Command::Completions(args) => completions::run(&args),
        Command::Run(args) => run::run(&args),
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("hvsock: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// The demo shows the messages on the control sockets (`hvsock::wire`),
/// interleaved with its steps on stdout.
fn init_demo_logging(verbose: u8) {
    let filter = match verbose {
        0 => "warn,hvsock::wire=debug",
        _ => "debug",
    };
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .without_time()
        .with_target(false)
        .with_level(false)
        .with_ansi(false)
        .with_writer(std::io::stdout)
        .init();
}

/// `daemon`: a long-running command, whose lifecycle (info) is logged.
fn init_logging(verbose: u8, daemon: bool) {
    let default = match verbose {
        0 if daemon => "info",
        0 => "warn",
        1 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("HVSOCK_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}
