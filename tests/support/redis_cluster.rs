//! A local Redis Cluster for tests: 3 masters and 3 replicas on free ports of 127.0.0.1,
//! started with `redis-server --cluster-enabled yes`, joined with `redis-cli --cluster
//! create`, in a temporary directory, and stopped by PID when dropped.
//!
//! Only std, so that the bus's unit tests (`src/bus/tests.rs`) include it too.
#![allow(dead_code, unreachable_pub)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::process::run;

/// How long the cluster may take to form, fail over or settle.
const SETTLE: Duration = Duration::from_secs(30);

/// One `redis-server` of the cluster.
struct Server {
    port: u16,
    child: Option<Child>,
}

/// A running cluster; every server is killed (by PID) and the directory removed on drop.
pub struct RedisCluster {
    servers: Vec<Server>,
    dir: PathBuf,
}

/// A node as `CLUSTER NODES` lists it.
#[derive(Clone, Debug)]
pub struct NodeInfo {
    pub id: String,
    pub port: u16,
    pub master: bool,
    /// For a replica, the id of its master.
    pub master_id: Option<String>,
    pub failed: bool,
    /// Slot ranges served, inclusive.
    pub slots: Vec<(u16, u16)>,
}

impl RedisCluster {
    /// Starts six servers and joins them into 3 masters with one replica each; returns
    /// once every slot is served, the nodes agree and every replica is in sync.
    pub fn start() -> RedisCluster {
        let ports = free_ports(6);
        let dir = std::env::temp_dir().join(format!(
            "cascade-redis-cluster-{}-{}",
            std::process::id(),
            ports[0]
        ));
        std::fs::create_dir_all(&dir).expect("cluster dir");
        let mut cluster = RedisCluster {
            servers: ports
                .iter()
                .map(|&port| Server { port, child: None })
                .collect(),
            dir,
        };
        for port in ports.clone() {
            cluster.launch(port);
        }
        let mut create = Command::new("redis-cli");
        create.args(["--cluster", "create"]);
        for port in &ports {
            create.arg(format!("127.0.0.1:{port}"));
        }
        create.args(["--cluster-replicas", "1", "--cluster-yes"]);
        let created = run(create, SETTLE);
        assert!(
            created.is_some(),
            "redis-cli --cluster create failed or took over {SETTLE:?}"
        );
        cluster.wait_healthy();
        cluster
    }

    /// The seed URLs, comma-separated, as `CASCADE_REDIS_URL` takes them.
    pub fn url(&self) -> String {
        self.servers
            .iter()
            .map(|s| format!("redis://127.0.0.1:{}", s.port))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn launch(&mut self, port: u16) {
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--cluster-enabled", "yes"])
            .args(["--cluster-config-file", &format!("nodes-{port}.conf")])
            // Short enough for a failover within seconds, long enough that a busy
            // two-core machine does not fail masters over by itself.
            .args(["--cluster-node-timeout", "2000"])
            .args(["--cluster-replica-validity-factor", "0"])
            .args(["--cluster-require-full-coverage", "no"])
            .args(["--cluster-allow-replica-migration", "no"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server on PATH");
        self.server(port).child = Some(child);
        let start = Instant::now();
        while self.try_cli(port, &["PING"]).as_deref() != Some("PONG") {
            assert!(
                start.elapsed() < SETTLE,
                "redis-server {port} did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn server(&mut self, port: u16) -> &mut Server {
        self.servers
            .iter_mut()
            .find(|s| s.port == port)
            .expect("a port of this cluster")
    }

    /// Runs one command on the node at `port`; its reply as redis-cli prints it.
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

    /// The ports of the servers currently running.
    fn live_ports(&self) -> Vec<u16> {
        self.servers
            .iter()
            .filter(|s| s.child.is_some())
            .map(|s| s.port)
            .collect()
    }

    /// The cluster as the first live node sees it.
    pub fn nodes(&self) -> Vec<NodeInfo> {
        let port = self.live_ports()[0];
        parse_nodes(&self.cli(port, &["CLUSTER", "NODES"]))
    }

    /// The slot of `key`.
    pub fn slot(&self, key: &str) -> u16 {
        let port = self.live_ports()[0];
        self.cli(port, &["CLUSTER", "KEYSLOT", key])
            .parse()
            .expect("a slot number")
    }

    /// The master serving `slot`.
    pub fn master_of(&self, slot: u16) -> NodeInfo {
        self.serving(slot)
            .unwrap_or_else(|| panic!("no master serves slot {slot}"))
    }

    /// The master serving `slot`, if one does (none while a failover is under way).
    pub fn serving(&self, slot: u16) -> Option<NodeInfo> {
        self.nodes()
            .into_iter()
            .find(|n| n.master && !n.failed && n.slots.iter().any(|&(a, b)| a <= slot && slot <= b))
    }

    /// A replica of the master `master_id`.
    pub fn replica_of(&self, master_id: &str) -> NodeInfo {
        self.nodes()
            .into_iter()
            .find(|n| !n.failed && n.master_id.as_deref() == Some(master_id))
            .unwrap_or_else(|| panic!("master {master_id} has no replica"))
    }

    /// A live master other than `id`.
    pub fn other_master(&self, id: &str) -> NodeInfo {
        self.nodes()
            .into_iter()
            .find(|n| n.master && !n.failed && n.id != id && !n.slots.is_empty())
            .expect("another master")
    }

    /// A graceful failover: the replica at `port` takes over from its master once it has
    /// every write (`CLUSTER FAILOVER`); returns when the cluster agrees.
    pub fn failover(&self, port: u16) {
        assert_eq!(self.cli(port, &["CLUSTER", "FAILOVER"]), "OK");
        self.wait_until("the replica to become master", || {
            self.try_cli(port, &["ROLE"])
                .is_some_and(|role| role.starts_with("master"))
        });
        self.wait_healthy();
    }

    /// SIGKILL of the server at `port`, as a crash.
    pub fn kill(&mut self, port: u16) {
        if let Some(mut child) = self.server(port).child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server at `port` again with its node file: it rejoins the cluster
    /// (a former master as a replica of the node that replaced it).
    pub fn restart(&mut self, port: u16) {
        self.launch(port);
    }

    /// Moves `slot`, keys included, from the master `from` to the master `to` the way
    /// `redis-cli --cluster reshard` does: IMPORTING/MIGRATING, MIGRATE of the keys, then
    /// the new owner announced to every master. `between` runs while the slot is half
    /// moved (keys already on `to`, ownership still on `from`: clients get `ASK`).
    pub fn migrate_slot(&self, slot: u16, from: &NodeInfo, to: &NodeInfo, between: impl FnOnce()) {
        let slot_text = slot.to_string();
        self.cli(
            to.port,
            &["CLUSTER", "SETSLOT", &slot_text, "IMPORTING", &from.id],
        );
        self.cli(
            from.port,
            &["CLUSTER", "SETSLOT", &slot_text, "MIGRATING", &to.id],
        );
        loop {
            let keys = self.cli(from.port, &["CLUSTER", "GETKEYSINSLOT", &slot_text, "100"]);
            let keys: Vec<&str> = keys.lines().filter(|k| !k.is_empty()).collect();
            if keys.is_empty() {
                break;
            }
            let to_port = to.port.to_string();
            let mut args = vec!["MIGRATE", "127.0.0.1", &to_port, "", "0", "5000", "KEYS"];
            args.extend(keys);
            let reply = self.cli(from.port, &args);
            assert!(reply == "OK" || reply == "NOKEY", "MIGRATE: {reply}");
        }
        between();
        for node in self.nodes().iter().filter(|n| n.master && !n.failed) {
            self.cli(
                node.port,
                &["CLUSTER", "SETSLOT", &slot_text, "NODE", &to.id],
            );
        }
        self.wait_until("the slot's new owner to be known", || {
            self.master_of(slot).id == to.id
        });
        self.wait_healthy();
    }

    /// Waits until every live node reports the cluster as `ok`, the nodes agree on the
    /// slots, and every master's replicas are in sync.
    pub fn wait_healthy(&self) {
        self.wait_until("the cluster to be healthy", || {
            let ports = self.live_ports();
            let ok = ports.iter().all(|&port| {
                self.try_cli(port, &["CLUSTER", "INFO"])
                    .is_some_and(|info| info.contains("cluster_state:ok"))
            });
            let mut check = Command::new("redis-cli");
            check.args(["--cluster", "check", &format!("127.0.0.1:{}", ports[0])]);
            let agree = run(check, Duration::from_secs(5)).is_some();
            ok && agree && self.replicas_in_sync()
        });
    }

    /// Every live replica has finished its initial sync.
    fn replicas_in_sync(&self) -> bool {
        self.live_ports().iter().all(|&port| {
            let Some(info) = self.try_cli(port, &["INFO", "replication"]) else {
                return false;
            };
            !info.contains("role:slave")
                || (info.contains("master_link_status:up")
                    && info.contains("master_sync_in_progress:0"))
        })
    }

    fn wait_until(&self, what: &str, mut done: impl FnMut() -> bool) {
        let start = Instant::now();
        while !done() {
            assert!(start.elapsed() < SETTLE, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for server in &mut self.servers {
            if let Some(mut child) = server.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Where the cluster at `url` (as [`RedisCluster::url`] gives it) holds sharded
/// subscriptions: each node's role, its shard channels and the clients subscribed to
/// any. Printed when a stream stalls, to tell a lost subscription from a lost message.
pub fn shard_subscriptions(url: &str) -> String {
    let mut report = String::new();
    for port in url
        .split(',')
        .filter_map(|u| u.rsplit(':').next()?.parse::<u16>().ok())
    {
        let cli = |args: &[&str]| {
            let mut command = Command::new("redis-cli");
            command
                .args(["-h", "127.0.0.1", "-p", &port.to_string()])
                .args(args);
            run(command, Duration::from_secs(5)).unwrap_or_else(|| "(no answer)".into())
        };
        let role = cli(&["ROLE"]);
        let channels = cli(&["PUBSUB", "SHARDCHANNELS"]);
        let clients = cli(&["CLIENT", "LIST"]);
        let subscribed: Vec<&str> = clients
            .lines()
            .filter(|l| !l.contains(" ssub=0 ") && l.contains(" ssub="))
            .collect();
        report.push_str(&format!(
            "{port}: {} channels {:?} subscribed clients {subscribed:#?}\n",
            role.lines().next().unwrap_or("?"),
            channels.lines().collect::<Vec<_>>(),
        ));
    }
    report
}

/// `count` ports of 127.0.0.1 that are free, each with its cluster bus port (+10000).
fn free_ports(count: usize) -> Vec<u16> {
    let mut ports = Vec::new();
    while ports.len() < count {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
        let port = listener.local_addr().expect("local addr").port();
        let bus_free =
            port < 55_000 && std::net::TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok();
        if bus_free && !ports.contains(&port) {
            ports.push(port);
        }
    }
    ports
}

fn parse_nodes(text: &str) -> Vec<NodeInfo> {
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let port = fields
                .get(1)?
                .split('@')
                .next()?
                .rsplit(':')
                .next()?
                .parse()
                .ok()?;
            let flags = fields.get(2)?;
            let slots = fields[8.min(fields.len())..]
                .iter()
                .filter(|s| !s.starts_with('['))
                .filter_map(|s| match s.split_once('-') {
                    Some((a, b)) => Some((a.parse().ok()?, b.parse().ok()?)),
                    None => s.parse().ok().map(|n| (n, n)),
                })
                .collect();
            Some(NodeInfo {
                id: fields[0].to_owned(),
                port,
                master: flags.contains("master"),
                master_id: (fields.get(3)? != &"-").then(|| fields[3].to_owned()),
                failed: flags.contains("fail") && !flags.contains("fail?"),
                slots,
            })
        })
        .collect()
}
