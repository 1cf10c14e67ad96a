//! The gateway under test: a child process started from the release build (or one that
//! is already running, with `--url`), and what `/proc` and `/metrics` say about it.
//!
//! The child is started with a cleared `CASCADE_*` environment plus the run's overrides,
//! so that a result depends only on what the JSON line records. It is killed by its PID
//! when the run ends, however it ends.

use std::fs::File;
use std::net::{IpAddr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::http::Conn;

/// How to start the gateway.
pub struct Launch {
    /// The binary; `None` means the workspace's `target/release/cascade`.
    pub bin: Option<PathBuf>,
    /// Arguments for the binary.
    pub args: Vec<String>,
    /// Whether to run `cargo build --release --bin cascade` first.
    pub build: bool,
    /// CPU list for `taskset -c`, or `None` to leave the gateway unpinned.
    pub cpu: Option<String>,
    /// `CASCADE_*` variables, in the order given (later ones win).
    pub env: Vec<(String, String)>,
    /// Node number (0 for the first); names the log file when several nodes run.
    pub node: usize,
    /// The log file's name in the target directory, instead of one named by `node`.
    pub log: Option<&'static str>,
}

/// The gateway under test.
pub struct Gateway {
    /// Where it listens (always a loopback address).
    pub addr: SocketAddr,
    /// Its process, for `/proc` statistics; unknown when attached without `--pid`.
    pub pid: Option<u32>,
    child: Option<Child>,
    log: Option<PathBuf>,
}

/// The workspace this bench was built from.
pub fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Where the load tool writes its logs and a peer's files: the build's target directory.
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| workspace().join("target"), PathBuf::from)
}

/// The release gateway binary: `bin` if given, else `target/release/cascade`, built
/// first when `build` is set.
pub fn release_bin(bin: Option<&Path>, build: bool) -> Result<PathBuf, String> {
    match (bin, build) {
        (Some(bin), _) => Ok(bin.to_path_buf()),
        (None, true) => build_release(),
        (None, false) => Ok(target_dir().join("release").join("cascade")),
    }
}

/// Builds the release gateway with the plain `cargo build --release` (the binary that
/// ships, without the dev-dependency features a bench build would unify into it).
pub fn build_release() -> Result<PathBuf, String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    eprintln!("load: building the gateway: {cargo} build --release --bin cascade");
    let status = Command::new(&cargo)
        .args(["build", "--release", "--bin", "cascade"])
        .current_dir(workspace())
        .status()
        .map_err(|e| format!("could not run {cargo}: {e}"))?;
    if !status.success() {
        return Err(format!(
            "`cargo build --release` failed ({status}); fix the build, or pass \
             --no-build to use an existing target/release/cascade"
        ));
    }
    Ok(target_dir().join("release").join("cascade"))
}

/// A port that was free a moment ago on 127.0.0.1.
fn free_port() -> Result<u16, String> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("no free port: {e}"))?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|e| e.to_string())
}

impl Gateway {
    /// Starts the gateway as a child process on a free loopback port.
    pub fn spawn(launch: &Launch) -> Result<Self, String> {
        let bin = release_bin(launch.bin.as_deref(), launch.build)?;
        if !bin.is_file() {
            return Err(format!(
                "{} does not exist: run `cargo build --release` first (or drop --no-build)",
                bin.display()
            ));
        }
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        let mut command = match &launch.cpu {
            Some(cpu) => {
                let mut c = Command::new("taskset");
                c.args(["-c", cpu]).arg(&bin);
                c
            }
            None => Command::new(&bin),
        };
        command.args(&launch.args);
        for (name, _) in std::env::vars() {
            if name.starts_with("CASCADE_") {
                command.env_remove(name);
            }
        }
        command.env("CASCADE_LISTEN", addr.to_string());
        command.envs(launch.env.iter().map(|(k, v)| (k, v)));
        let log = match (launch.log, launch.node) {
            (Some(name), _) => target_dir().join(name),
            (None, 0) => target_dir().join("load-gateway.log"),
            (None, n) => target_dir().join(format!("load-gateway-{}.log", n + 1)),
        };
        let stderr = File::create(&log)
            .map(Stdio::from)
            .unwrap_or_else(|_| Stdio::null());
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .map_err(|e| format!("could not start {}: {e}", bin.display()))?;
        // taskset execs the gateway, so the child's PID is the gateway's.
        let pid = child.id();
        Ok(Gateway {
            addr,
            pid: Some(pid),
            child: Some(child),
            log: Some(log),
        })
    }

    /// A gateway that is already running at `url` (loopback only).
    pub fn attach(url: &str, pid: Option<u32>) -> Result<Self, String> {
        let host = url
            .trim_start_matches("http://")
            .trim_start_matches("ws://")
            .split('/')
            .next()
            .unwrap_or("");
        let addr: SocketAddr = host
            .parse()
            .map_err(|_| format!("--url wants http://127.0.0.x:PORT, got {url:?}"))?;
        if !is_loopback(addr.ip()) {
            return Err(format!(
                "{addr} is not a loopback address: load goes to 127.0.0.0/8 only"
            ));
        }
        Ok(Gateway {
            addr,
            pid,
            child: None,
            log: None,
        })
    }

    /// Waits until `/healthz` answers, failing early if the child exits.
    pub async fn wait_ready(&mut self, within: Duration) -> Result<(), String> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(child) = &mut self.child {
                if let Ok(Some(status)) = child.try_wait() {
                    return Err(format!(
                        "the gateway exited at start-up ({status}); see {}",
                        self.log_path()
                    ));
                }
            }
            let answered = async {
                let mut conn = Conn::open(self.addr, None).await.ok()?;
                let (status, _) = conn.request("GET", "/healthz", &[], b"").await.ok()?;
                Some(status)
            };
            if tokio::time::timeout(Duration::from_secs(1), answered).await == Ok(Some(200)) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "the gateway at {} did not answer /healthz within {within:?}",
                    self.addr
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The gateway's log file, when this tool started it.
    pub fn log_path(&self) -> String {
        self.log
            .as_deref()
            .map_or_else(|| "its own log".to_owned(), |p| p.display().to_string())
    }

    /// Resident memory and CPU time, when the PID is known.
    pub fn stats(&self) -> Option<ProcStats> {
        proc_stats(self.pid?)
    }

    /// Reads one sample from `/metrics`, e.g. `cascade_connections{transport="longpoll"}`.
    pub async fn metric(&self, sample: &str) -> Option<f64> {
        let mut conn = Conn::open(self.addr, None).await.ok()?;
        let (status, body) = conn.request("GET", "/metrics", &[], b"").await.ok()?;
        if status != 200 {
            return None;
        }
        let text = std::str::from_utf8(&body).ok()?;
        text.lines()
            .find_map(|line| line.strip_prefix(sample)?.strip_prefix(' '))
            .and_then(|value| value.trim().parse().ok())
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Whether `ip` is on this machine's loopback (127.0.0.0/8 or ::1).
pub fn is_loopback(ip: IpAddr) -> bool {
    ip.is_loopback()
}

/// What `/proc` says about a process.
#[derive(Clone, Copy, Debug)]
pub struct ProcStats {
    /// Resident set size, KiB (`VmRSS`).
    pub rss_kib: u64,
    /// User plus system CPU time, seconds.
    pub cpu_s: f64,
}

/// Reads `VmRSS` from `/proc/<pid>/status` and `utime + stime` from `/proc/<pid>/stat`.
pub fn proc_stats(pid: u32) -> Option<ProcStats> {
    read_stats(Path::new(&format!("/proc/{pid}")))
}

/// The same for this process.
pub fn own_stats() -> Option<ProcStats> {
    read_stats(Path::new("/proc/self"))
}

fn read_stats(dir: &Path) -> Option<ProcStats> {
    let status = std::fs::read_to_string(dir.join("status")).ok()?;
    let rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    let stat = std::fs::read_to_string(dir.join("stat")).ok()?;
    // The command name may contain spaces; fields are counted after its closing paren.
    let after_comm = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = after_comm.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13 after comm.
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(ProcStats {
        rss_kib,
        cpu_s: ticks as f64 / clock_ticks(),
    })
}

/// Time a set of CPUs spent, from `/proc/stat`, in clock ticks.
#[derive(Clone, Copy, Debug, Default)]
pub struct CoreTimes {
    /// Every state.
    pub total: u64,
    /// Idle and waiting for I/O.
    pub idle: u64,
    /// Serving soft interrupts (on loopback, much of TCP receive work lands here).
    pub softirq: u64,
}

impl CoreTimes {
    /// Reads the times of `cpus` (none when the list is empty).
    pub fn read(cpus: &[usize]) -> Option<Self> {
        if cpus.is_empty() {
            return None;
        }
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let mut times = CoreTimes::default();
        for cpu in cpus {
            let name = format!("cpu{cpu}");
            let line = stat
                .lines()
                .find(|l| l.split_whitespace().next() == Some(name.as_str()))?;
            let fields: Vec<u64> = line
                .split_whitespace()
                .skip(1)
                .filter_map(|f| f.parse().ok())
                .collect();
            // user nice system idle iowait irq softirq steal ...
            times.total += fields.iter().take(8).sum::<u64>();
            times.idle += fields.get(3)? + fields.get(4)?;
            times.softirq += fields.get(6)?;
        }
        Some(times)
    }

    /// The (busy, softirq) fractions between two readings.
    pub fn fractions(before: Option<Self>, after: Option<Self>) -> Option<(f64, f64)> {
        let (a, b) = (before?, after?);
        let total = b.total.checked_sub(a.total).filter(|t| *t > 0)? as f64;
        let idle = b.idle.saturating_sub(a.idle) as f64;
        let softirq = b.softirq.saturating_sub(a.softirq) as f64;
        Some((1.0 - idle / total, softirq / total))
    }
}

/// Parses a `taskset` CPU list (`0`, `0,2`, `1-3`); `None` for anything else.
pub fn cpu_list(text: &str) -> Option<Vec<usize>> {
    let mut cpus = Vec::new();
    for part in text.split(',') {
        match part.split_once('-') {
            Some((lo, hi)) => {
                cpus.extend(lo.trim().parse::<usize>().ok()?..=hi.trim().parse().ok()?)
            }
            None => cpus.push(part.trim().parse().ok()?),
        }
    }
    Some(cpus)
}

/// `sysconf(_SC_CLK_TCK)`, the unit of `/proc/<pid>/stat` times (100 on Linux).
fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 { ticks as f64 } else { 100.0 }
}

/// Raises this process's soft open-file limit to its hard limit; children inherit it.
/// Returns the (soft, hard) limit in force afterwards.
pub fn raise_nofile() -> (u64, u64) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return (0, 0);
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                limit = raised;
            }
        }
    }
    (limit.rlim_cur, limit.rlim_max)
}

/// Sets the calling thread's nice value; threads and processes started from it inherit
/// it. Returns whether it worked.
pub fn renice(nice: i32) -> bool {
    // SAFETY: setpriority has no memory-safety preconditions; 0 is the calling thread.
    unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, nice) == 0 }
}

/// Pins every thread of this process to `cpu` with `taskset -a -p -c`; call it before
/// the runtime starts its threads. Returns whether it worked.
pub fn pin_self(cpu: &str) -> bool {
    Command::new("taskset")
        .args(["-a", "-p", "-c", cpu, &std::process::id().to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}
