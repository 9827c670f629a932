//! The `hvsock` command: the user's entry point to hvsock.
//!
//! Owns argument parsing, logging set-up and the mapping of errors to exit
//! codes. Each command lives in its own module; protocol logic lives in the
//! library crates, never here.

mod ring_dump;

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
    /// Work with VMBus ring images.
    #[command(subcommand)]
    Ring(RingCommand),
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
    init_logging(cli.verbose);
    let result = match cli.command {
        Command::Ring(RingCommand::Dump(args)) => ring_dump::run(&args),
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("hvsock: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(verbose: u8) {
    let default = match verbose {
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
