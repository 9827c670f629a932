//! How the relay commands (`listen`, `connect`, `bridge`, `hybrid`) end:
//! a message a new user understands on stderr and an exit code — 0 done,
//! 1 a connection refused, reset or any other failure, 2 a usage error
//! (clap's own usage errors exit 2 too).
//!
//! Owns [`Usage`], the error for arguments that parse but make no sense
//! (an address in the wrong form for the role), and [`finish`], which the
//! commands' `run` functions end with so that `main` stays unchanged.

use std::fmt;
use std::process::ExitCode;

/// Exit code for a usage error, as clap uses.
pub const USAGE: u8 = 2;

/// A usage error: the message says what was expected.
#[derive(Debug)]
pub struct Usage(pub String);

impl fmt::Display for Usage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Usage {}

/// A usage error as an `anyhow::Error`.
pub fn usage(message: impl Into<String>) -> anyhow::Error {
    Usage(message.into()).into()
}

/// Prints `error` (with its causes) and returns its exit code.
pub fn report(error: &anyhow::Error) -> ExitCode {
    eprintln!("hvsock: {error:#}");
    if error.downcast_ref::<Usage>().is_some() {
        eprintln!("Try 'hvsock help' or the command's --help for the accepted forms.");
        ExitCode::from(USAGE)
    } else {
        ExitCode::FAILURE
    }
}

/// Turns a command's result into its exit code, printing the error.
pub fn finish(result: anyhow::Result<ExitCode>) -> anyhow::Result<ExitCode> {
    Ok(result.unwrap_or_else(|e| report(&e)))
}
