//! Helpers the relay, bridge, hybrid and error tests share: the `hvsock`
//! binary as a command, a host daemon in a temporary directory, child
//! processes killed and reaped on drop, reads that fail instead of hanging,
//! and deterministic test data with a checksum.

#![allow(dead_code, reason = "each test file uses a different subset")]

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStderr, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How long any single step may take before the test fails instead of
/// hanging. Generous: this is a deadlock detector, not a timing assertion.
pub const PATIENCE: Duration = Duration::from_secs(60);

/// The `hvsock` binary, with nothing picked up from the environment.
pub fn hvsock() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_hvsock"));
    c.env_remove("HVSOCK_SOCKET").env("HVSOCK_LOG", "warn");
    c
}

/// A child process, killed and reaped on drop.
#[derive(Debug)]
pub struct Proc {
    pub child: Child,
    pub stderr: Option<BufReader<ChildStderr>>,
}

impl Proc {
    /// Spawns `cmd` with stdin/stdout piped and stderr piped.
    pub fn spawn(mut cmd: Command) -> Proc {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn hvsock");
        let stderr = child.stderr.take().map(BufReader::new);
        Proc { child, stderr }
    }

    /// Reads stderr lines until one contains `text`; panics at EOF.
    #[track_caller]
    pub fn wait_for_stderr(&mut self, text: &str) -> String {
        let stderr = self.stderr.as_mut().expect("stderr piped");
        let mut seen = String::new();
        loop {
            let mut line = String::new();
            let n = stderr.read_line(&mut line).unwrap();
            assert!(n > 0, "stderr ended without {text:?}; it said:\n{seen}");
            if line.contains(text) {
                return line;
            }
            seen += &line;
        }
    }

    /// Reads the rest of stderr on a thread, so the child never blocks on
    /// a full pipe; the text comes back through the receiver at EOF.
    pub fn drain_stderr(&mut self) -> mpsc::Receiver<String> {
        let (tx, rx) = mpsc::channel();
        if let Some(mut stderr) = self.stderr.take() {
            std::thread::spawn(move || {
                let mut text = String::new();
                let _ = stderr.read_to_string(&mut text);
                let _ = tx.send(text);
            });
        }
        rx
    }

    /// Waits for the exit; panics after [`PATIENCE`].
    #[track_caller]
    pub fn wait(&mut self) -> ExitStatus {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "process did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends `signal` to the process.
    pub fn signal(&self, signal: rustix::process::Signal) {
        let pid = rustix::process::Pid::from_raw(self.child.id() as i32).unwrap();
        rustix::process::kill_process(pid, signal).unwrap();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A running `hvsock host` in its own temporary directory.
#[derive(Debug)]
pub struct Daemon {
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    proc: Proc,
}

impl Daemon {
    /// Starts a host with the VMs `vms`; returns once its sockets exist.
    pub fn start(vms: &[&str]) -> Daemon {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("hv").join("host.sock");
        let mut cmd = hvsock();
        cmd.arg("host").arg("--socket").arg(&socket);
        for vm in vms {
            cmd.arg("--vm").arg(vm);
        }
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start hvsock host");
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        assert!(line.starts_with("hvsock host listening on"), "{line:?}");
        // Keep reading so the host never blocks on its stdout.
        std::thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()));
        Daemon {
            dir,
            socket,
            proc: Proc {
                child,
                stderr: None,
            },
        }
    }

    /// `hvsock ARGS --socket HOST_SOCKET`.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = hvsock();
        c.args(args).arg("--socket").arg(&self.socket);
        c
    }

    /// A path in the temporary directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Starts `hvsock listen ARGS` and waits until it listens.
    pub fn listen(&self, args: &[&str]) -> Proc {
        let mut args = args.to_vec();
        args.insert(0, "listen");
        let mut p = Proc::spawn(self.cmd(&args));
        p.wait_for_stderr("listening on");
        p
    }
}

/// Runs `cmd` with `input` on stdin to completion (failing after
/// [`PATIENCE`] rather than hanging).
#[track_caller]
pub fn run_with_input(mut cmd: Command, input: &[u8]) -> Output {
    use std::io::Write;
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let (tx, rx) = mpsc::channel();
    let pid = child.id();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let out = match rx.recv_timeout(PATIENCE) {
        Ok(out) => out.unwrap(),
        Err(_) => {
            let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
            panic!("process {pid} did not finish");
        }
    };
    writer.join().unwrap();
    out
}

/// `out`'s stderr as text.
pub fn stderr_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Asserts success and returns stdout.
#[track_caller]
pub fn ok(out: &Output) -> Vec<u8> {
    assert!(
        out.status.success(),
        "exit {:?}\nstderr: {}",
        out.status,
        stderr_of(out)
    );
    out.stdout.clone()
}

/// Reads exactly `n` bytes from `r` on a thread; panics after
/// [`PATIENCE`] instead of hanging.
#[track_caller]
pub fn read_exact_patiently<R: Read + Send + 'static>(mut r: R, n: usize) -> (R, Vec<u8>) {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; n];
        let result = r.read_exact(&mut buf).map(|()| buf);
        let _ = tx.send((r, result));
    });
    let (r, result) = rx.recv_timeout(PATIENCE).expect("read did not finish");
    (r, result.expect("read"))
}

/// Deterministic pseudo-random bytes for stream `seed` (an LCG).
pub fn data(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (x >> 56) as u8
        })
        .collect()
}

/// FNV-1a, the checksum both ends compute.
pub fn checksum(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf29ce484222325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x100000001b3)
    })
}

/// Whether `path` exists (for waiting on sockets).
pub fn exists(path: &Path) -> bool {
    path.exists()
}
