//! What the bench reads from the operating system: CPU time (getrusage),
//! resident memory and open descriptors (/proc), the open-file limit, and a
//! description of the machine.

use std::path::Path;

use nix::sys::resource::{getrusage, UsageWho};
use serde::Serialize;

/// User plus system CPU seconds this process has used so far (all threads).
pub fn cpu_seconds() -> f64 {
    match getrusage(UsageWho::RUSAGE_SELF) {
        Ok(usage) => {
            let t = |tv: nix::sys::time::TimeVal| tv.tv_sec() as f64 + tv.tv_usec() as f64 * 1e-6;
            t(usage.user_time()) + t(usage.system_time())
        }
        Err(_) => 0.0,
    }
}

/// Resident set size in KiB of `pid` (this process if `None`).
pub fn rss_kib(pid: Option<u32>) -> Option<u64> {
    let path = match pid {
        Some(pid) => format!("/proc/{pid}/status"),
        None => "/proc/self/status".into(),
    };
    let status = std::fs::read_to_string(path).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Open file descriptors of `pid` (this process if `None`).
pub fn fd_count(pid: Option<u32>) -> Option<u64> {
    let path = match pid {
        Some(pid) => format!("/proc/{pid}/fd"),
        None => "/proc/self/fd".into(),
    };
    // Reading the directory opens one more descriptor; it is not counted
    // here for another process and is subtracted for ourselves.
    let n = std::fs::read_dir(path).ok()?.count() as u64;
    Some(if pid.is_none() {
        n.saturating_sub(1)
    } else {
        n
    })
}

/// Raises the soft open-file limit to the hard one; returns the soft limit
/// in force afterwards.
pub fn raise_fd_limit() -> u64 {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current < limit.maximum {
        limit.current = limit.maximum;
        let _ = setrlimit(Resource::Nofile, limit);
    }
    getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX)
}

/// The machine a run was taken on.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    /// `model name` of /proc/cpuinfo.
    pub cpu: String,
    /// CPUs this process may run on.
    pub cores: usize,
    /// The kernel release.
    pub kernel: String,
    /// Total memory, KiB.
    pub memory_kib: u64,
    /// 1-, 5- and 15-minute load averages when the run started.
    pub load_start: [f64; 3],
    /// The same when it ended.
    pub load_end: [f64; 3],
    /// The soft open-file limit during the run (after raising it).
    pub nofile_limit: u64,
    /// The hvsock version that ran.
    pub hvsock: String,
}

fn read(path: impl AsRef<Path>) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// The three load averages.
pub fn loads() -> [f64; 3] {
    let text = read("/proc/loadavg");
    let mut it = text.split_whitespace().map(|s| s.parse().unwrap_or(0.0));
    [
        it.next().unwrap_or(0.0),
        it.next().unwrap_or(0.0),
        it.next().unwrap_or(0.0),
    ]
}

impl Machine {
    /// Describes this machine now.
    pub fn describe(nofile_limit: u64) -> Machine {
        let cpuinfo = read("/proc/cpuinfo");
        let cpu = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .and_then(|rest| rest.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
            .unwrap_or_else(|| "unknown".into());
        let memory_kib = read("/proc/meminfo")
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0);
        Machine {
            cpu,
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            kernel: read("/proc/sys/kernel/osrelease").trim().to_string(),
            memory_kib,
            load_start: loads(),
            load_end: [0.0; 3],
            nofile_limit,
            hvsock: env!("CARGO_PKG_VERSION").to_string(),
        }
    }
}

/// User plus system CPU seconds of another process, from /proc/PID/stat
/// (clock ticks, assumed 100 per second as on every Linux configuration
/// in use).
pub fn proc_cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) start at the
    // state, field 3; utime and stime are fields 14 and 15.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}
