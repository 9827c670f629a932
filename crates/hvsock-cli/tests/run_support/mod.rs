//! Shared by the `hvsock run` tests: a daemon in a temporary directory,
//! programs started only through `hvsock run` (so the seccomp filter is
//! always there), children killed and reaped on drop, test data.

#![allow(dead_code, reason = "each test file uses a different part")]

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

// The daemon helper of the other CLI tests; these start it with VM `alpha`
// and add what `hvsock run` tests need below.
#[path = "../common/mod.rs"]
mod common;

pub use common::Daemon;

/// The `hvsock` binary under test, never picking up a socket or a shim
/// from the environment.
pub fn hvsock() -> Command {
    let mut c = common::hvsock();
    c.env_remove("HVSOCK_PRELOAD");
    c
}

/// Fails (never skips) when a tool the test needs is missing.
pub fn require(tool: &str) {
    let found = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(
        found,
        "{tool} is needed by this test (.ci/run installs it; apt-get install {tool})"
    );
    let shim = Path::new(env!("CARGO_BIN_EXE_hvsock")).with_file_name("libhvsock_preload.so");
    assert!(
        shim.exists(),
        "{} is missing: build it with `cargo build --release -p hvsock-preload` \
         (cargo test --workspace builds it)",
        shim.display()
    );
}

/// A child process, killed and reaped on drop.
pub struct Guard(pub Child);

impl Guard {
    /// Collects stdout and stderr while waiting up to `limit` for the
    /// exit; kills the child and panics after that.
    pub fn wait_output(mut self, limit: Duration) -> Output {
        fn collect(r: Option<impl Read + Send + 'static>) -> std::thread::JoinHandle<Vec<u8>> {
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                if let Some(mut r) = r {
                    let _ = r.read_to_end(&mut buf);
                }
                buf
            })
        }
        let stdout = collect(self.0.stdout.take());
        let stderr = collect(self.0.stderr.take());
        let deadline = Instant::now() + limit;
        let status = loop {
            if let Some(status) = self.0.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                let _ = self.0.kill();
                panic!("a child did not finish within {limit:?}");
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        Output {
            status,
            stdout: stdout.join().unwrap(),
            stderr: stderr.join().unwrap(),
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Daemon {
    /// `hvsock run [--vm VM] -- PROGRAM ARGS...` against this daemon.
    pub fn run(&self, vm: Option<&str>, program: &str, args: &[&str]) -> Command {
        let mut c = hvsock();
        c.arg("run").arg("--socket").arg(&self.socket);
        if let Some(vm) = vm {
            c.arg("--vm").arg(vm);
        }
        c.arg("--").arg(program).args(args);
        c
    }

    /// Starts `hvsock run ...` in the background.
    pub fn spawn(&self, vm: Option<&str>, program: &str, args: &[&str]) -> Guard {
        Guard(
            self.run(vm, program, args)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("start hvsock run"),
        )
    }

    /// The CID hvsock gave VM `vm`.
    pub fn cid(&self, vm: &str) -> u32 {
        let out = hvsock()
            .args(["vm", "list", "--json", "--socket"])
            .arg(&self.socket)
            .output()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let list = v
            .as_array()
            .or_else(|| v["vms"].as_array())
            .unwrap()
            .clone();
        list.iter()
            .find(|e| e["name"] == vm)
            .and_then(|e| e["cid"].as_u64())
            .unwrap() as u32
    }

    /// Waits until someone listens on vsock `port` (a guest's port, or the
    /// host's service for that port).
    pub fn wait_listening(&self, port: u32) {
        let deadline = Instant::now() + Duration::from_secs(20);
        let guest = format!("port {port}");
        let host = format!("service {port:08x}-facb");
        loop {
            let out = hvsock()
                .args(["stat", "--json", "--socket"])
                .arg(&self.socket)
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&out.stdout);
            if text.contains(&format!("\"{guest}\"")) || text.contains(&host) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "nobody listens on {port}: {text}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Writes `len` bytes of deterministic pseudo-random data to `path`.
pub fn write_data(path: &Path, len: usize, seed: u64) {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut x = seed | 1;
    let mut chunk = vec![0u8; 1 << 16];
    let mut left = len;
    while left > 0 {
        for b in chunk.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let bytes = x.to_le_bytes();
            b.copy_from_slice(&bytes[..b.len()]);
        }
        let n = left.min(chunk.len());
        f.write_all(&chunk[..n]).unwrap();
        left -= n;
    }
    f.flush().unwrap();
}

/// `sha256sum FILE`'s digest.
pub fn sha256(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout)[..64].to_string()
}
