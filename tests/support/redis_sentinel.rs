//! A local Sentinel-managed Redis for tests: one master, one replica and three sentinels
//! (quorum 2) on free ports of 127.0.0.1, in a temporary directory, stopped by PID when
//! dropped.
//!
//! Only std, so that the bus's unit tests (`src/bus/tests.rs`) include it too.
#![allow(dead_code, unreachable_pub)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::process::run;

/// The name the sentinels monitor the master under.
pub const MASTER_NAME: &str = "cascade-test";

/// How long the set may take to form, fail over or settle.
const SETTLE: Duration = Duration::from_secs(40);

/// One process: a data server or a sentinel.
struct Server {
    port: u16,
    child: Option<Child>,
    /// Stopped (SIGSTOP): its connections stay open and it answers nothing.
    paused: bool,
}

/// A running set; every process is killed (by PID) and the directory removed on drop.
pub struct RedisSentinel {
    /// The two data servers; which is master changes with failovers.
    data: Vec<Server>,
    sentinels: Vec<Server>,
    dir: PathBuf,
}

impl RedisSentinel {
    /// Starts a master, its replica and three sentinels; returns once the replica is in
    /// sync and every sentinel knows the replica and the two other sentinels.
    pub fn start() -> RedisSentinel {
        let ports = free_ports(5);
        let dir = std::env::temp_dir().join(format!(
            "cascade-redis-sentinel-{}-{}",
            std::process::id(),
            ports[0]
        ));
        std::fs::create_dir_all(&dir).expect("sentinel dir");
        let mut set = RedisSentinel {
            data: ports[..2]
                .iter()
                .map(|&port| Server {
                    port,
                    child: None,
                    paused: false,
                })
                .collect(),
            sentinels: ports[2..]
                .iter()
                .map(|&port| Server {
                    port,
                    child: None,
                    paused: false,
                })
                .collect(),
            dir,
        };
        let (master, replica) = (ports[0], ports[1]);
        set.launch_data(master, None);
        set.launch_data(replica, Some(master));
        for &port in &ports[2..] {
            set.launch_sentinel(port, master);
        }
        set.wait_settled();
        set
    }

    /// `redis+sentinel://` with every sentinel, as `CASCADE_REDIS_URL` takes it.
    pub fn url(&self) -> String {
        let hosts: Vec<String> = self
            .sentinels
            .iter()
            .map(|s| format!("127.0.0.1:{}", s.port))
            .collect();
        format!("redis+sentinel://{}/{MASTER_NAME}", hosts.join(","))
    }

    /// The port of the master as the first answering sentinel names it.
    pub fn master_port(&self) -> Option<u16> {
        self.live_sentinels().find_map(|s| {
            let reply = self.try_cli(
                s.port,
                &["SENTINEL", "get-master-addr-by-name", MASTER_NAME],
            )?;
            reply.lines().nth(1)?.trim().parse().ok()
        })
    }

    /// Fails over by hand (`SENTINEL FAILOVER`) and returns once the sentinels name the
    /// new master; the old one rejoins as a replica later (see [`Self::wait_settled`]).
    pub fn failover(&self) {
        let old = self.master_port().expect("a master");
        let port = self.live_sentinels().next().expect("a sentinel").port;
        let reply = self.cli(port, &["SENTINEL", "FAILOVER", MASTER_NAME]);
        assert_eq!(reply, "OK", "SENTINEL FAILOVER");
        self.wait_until("the sentinels to name a new master", || {
            self.master_port().is_some_and(|now| now != old)
        });
    }

    /// Kills the master (SIGKILL) and returns once the sentinels name its replica.
    pub fn kill_master(&mut self) -> u16 {
        let old = self.master_port().expect("a master");
        let server = self
            .data
            .iter_mut()
            .find(|s| s.port == old)
            .expect("master");
        if let Some(mut child) = server.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.wait_until("the sentinels to promote the replica", || {
            self.master_port().is_some_and(|now| now != old)
        });
        old
    }

    /// Starts a killed data server again, empty; the sentinels make it a replica of the
    /// current master. Returns once it is in sync.
    pub fn restart(&mut self, port: u16) {
        self.launch_data(port, None);
        self.wait_settled();
    }

    fn launch_data(&mut self, port: u16, replica_of: Option<u16>) {
        let mut command = Command::new("redis-server");
        command
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&self.dir);
        if let Some(master) = replica_of {
            command.args(["--replicaof", "127.0.0.1", &master.to_string()]);
        }
        let child = spawn(command);
        self.data
            .iter_mut()
            .find(|s| s.port == port)
            .expect("a data port")
            .child = Some(child);
        self.wait_until("redis-server to start", || {
            self.try_cli(port, &["PING"]).as_deref() == Some("PONG")
        });
    }

    fn launch_sentinel(&mut self, port: u16, master: u16) {
        let conf = self.dir.join(format!("sentinel-{port}.conf"));
        // Sentinel rewrites its file, so each has its own. Down after 1 s: failovers
        // within seconds; the failover timeout bounds a stuck one.
        let text = format!(
            "port {port}\nbind 127.0.0.1\ndir {dir}\n\
             sentinel monitor {MASTER_NAME} 127.0.0.1 {master} 2\n\
             sentinel down-after-milliseconds {MASTER_NAME} 1000\n\
             sentinel failover-timeout {MASTER_NAME} 5000\n\
             sentinel parallel-syncs {MASTER_NAME} 1\n",
            dir = self.dir.display()
        );
        std::fs::write(&conf, text).expect("sentinel conf");
        let mut command = Command::new("redis-server");
        command.arg(&conf).arg("--sentinel");
        let child = spawn(command);
        self.sentinels
            .iter_mut()
            .find(|s| s.port == port)
            .expect("a sentinel port")
            .child = Some(child);
        self.wait_until("redis-sentinel to start", || {
            self.try_cli(port, &["PING"]).as_deref() == Some("PONG")
        });
    }

    /// Every data server runs, the master has a replica in sync, and every sentinel
    /// names that master and knows the replica and the two other sentinels.
    pub fn wait_settled(&self) {
        self.wait_until("the sentinel set to settle", || {
            let Some(master) = self.master_port() else {
                return false;
            };
            let in_sync = self.data.iter().filter(|s| s.port != master).all(|s| {
                self.try_cli(s.port, &["INFO", "replication"])
                    .is_some_and(|info| {
                        info.contains(&format!("master_port:{master}"))
                            && info.contains("master_link_status:up")
                    })
            });
            in_sync
                && self.live_sentinels().all(|s| {
                    let named = self
                        .try_cli(
                            s.port,
                            &["SENTINEL", "get-master-addr-by-name", MASTER_NAME],
                        )
                        .is_some_and(|r| r.lines().nth(1) == Some(&master.to_string()));
                    let peers = self
                        .try_cli(s.port, &["SENTINEL", "sentinels", MASTER_NAME])
                        .map_or(0, |r| r.lines().filter(|l| *l == "runid").count());
                    let replicas = self
                        .try_cli(s.port, &["SENTINEL", "replicas", MASTER_NAME])
                        .is_some_and(|r| !r.contains("s_down") && r.lines().any(|l| l == "slave"));
                    named && peers == 2 && replicas
                })
        });
    }

    /// Stops (SIGSTOP) or continues (SIGCONT) the sentinel `index`.
    pub fn pause_sentinel(&mut self, index: usize, paused: bool) {
        let sentinel = &mut self.sentinels[index];
        let pid = sentinel.child.as_ref().expect("a running sentinel").id();
        let signal = if paused { "-STOP" } else { "-CONT" };
        let mut command = Command::new("kill");
        command.args([signal, &pid.to_string()]);
        assert!(
            run(command, Duration::from_secs(5)).is_some(),
            "kill {signal} {pid}"
        );
        sentinel.paused = paused;
    }

    fn live_sentinels(&self) -> impl Iterator<Item = &Server> {
        self.sentinels.iter().filter(|s| !s.paused)
    }

    fn wait_until(&self, what: &str, mut done: impl FnMut() -> bool) {
        let start = Instant::now();
        while !done() {
            assert!(start.elapsed() < SETTLE, "waited {SETTLE:?} for {what}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Runs one command on the process at `port`; its reply as redis-cli prints it.
    pub fn cli(&self, port: u16, args: &[&str]) -> String {
        self.try_cli(port, args)
            .unwrap_or_else(|| panic!("redis-cli -p {port} {args:?} failed"))
    }

    fn try_cli(&self, port: u16, args: &[&str]) -> Option<String> {
        let mut command = Command::new("redis-cli");
        command
            .args(["-h", "127.0.0.1", "-p", &port.to_string()])
            .args(args);
        run(command, Duration::from_secs(5))
    }
}

impl Drop for RedisSentinel {
    fn drop(&mut self) {
        for server in self.data.iter_mut().chain(self.sentinels.iter_mut()) {
            if let Some(mut child) = server.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn spawn(mut command: Command) -> Child {
    command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server on PATH")
}

/// `count` distinct free ports of 127.0.0.1.
fn free_ports(count: usize) -> Vec<u16> {
    let mut ports = Vec::new();
    while ports.len() < count {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
        let port = listener.local_addr().expect("local addr").port();
        if !ports.contains(&port) {
            ports.push(port);
        }
    }
    ports
}
