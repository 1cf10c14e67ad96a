//! The load generator: real clients over real sockets against a separate gateway process.
//!
//! ```text
//! cargo bench --bench load -- <scenario> [options]
//! cargo bench --bench load -- fanout --transport sse --subscribers 1000 --messages 2000
//! cargo bench --bench load -- idle --transport longpoll --connections 5000
//! cargo bench --bench load -- --help
//! ```
//!
//! It builds the gateway with `cargo build --release` (the binary that ships; a bench
//! build would carry dev-dependency features), starts it on a free 127.0.0.1 port pinned
//! with `taskset -c <gateway-cpu>`, pins itself to another core, and reads the gateway's
//! CPU time and resident memory from `/proc/<pid>`. Each run prints a table and appends
//! one JSON line to `benches/results.jsonl`; `scripts/chart.py` draws them.
//!
//! Bounds: every scenario stops at `--duration` (60 s by default, at most 600), every wait
//! gives up at that deadline, and all traffic goes to loopback addresses only. The gateway
//! child is killed by its PID when the run ends.
//!
//! Several nodes on one Redis: `--engine redis --nodes N` starts N gateways, each with
//! `CASCADE_ENGINE=redis`, `CASCADE_REDIS_URL` (`--redis-url`, loopback only) and one
//! `CASCADE_REDIS_PREFIX` unique to the run (`load-<tag>`, its keys deleted afterwards).
//! Subscribers are spread round robin over the nodes and the publishers post to the
//! first, so with two nodes half the deliveries cross Redis pub/sub to the other node.
//! All nodes share the `--gateway-cpu` list (core 0 by default; the generator stays on
//! core 1), so gateway CPU seconds, summed over the nodes, compare with one node's on
//! the same core; the JSON line adds each node's share. The Redis server is not ours and
//! stays unpinned: its CPU and its calls per command over the window (`INFO`) are
//! recorded too.
//!
//! ```text
//! cargo bench --bench load -- fanout --engine redis --nodes 2 --subscribers 1000 --rate 200
//! ```
//!
//! `--engine redis-cluster` starts a Redis Cluster of its own for the run (3 masters, 3
//! replicas, on free ports of 127.0.0.1, `redis-server` and `redis-cli` on PATH, every
//! server stopped by PID afterwards) and points every node at it, with the engine's
//! defaults (a publish waits for one replica). Its servers stay unpinned like a Redis's;
//! their CPU (all six) and their masters' calls are recorded.
//!
//! Going further than one process allows: the open-file limit is per process, and one
//! source address has one ephemeral port range. Run several generators against one
//! gateway (`--url http://127.0.0.1:PORT --pid PID`), each with its own
//! `--source-ips 127.0.0.2,127.0.0.3`, and add their numbers up.
//!
//! Module map: [`gateway`] (the process and `/proc`), [`http`] (a minimal HTTP/1.1
//! client), [`clients`] (subscribers per transport, the publisher), [`peers`] (Nchan and
//! Socket.IO, measured beside Cascade), [`scenarios`], [`report`] (table and JSON
//! line).

#[path = "load/clients.rs"]
mod clients;
#[path = "load/engine.rs"]
mod engine;
#[path = "load/floor.rs"]
mod floor;
#[path = "load/gateway.rs"]
mod gateway;
#[path = "load/hookd.rs"]
mod hookd;
#[path = "load/http.rs"]
mod http;
#[path = "load/peers.rs"]
mod peers;
#[path = "../tests/support/process.rs"]
mod process;
#[path = "../tests/support/redis_cluster.rs"]
mod redis_cluster;
#[path = "load/report.rs"]
mod report;
#[path = "load/scenarios.rs"]
mod scenarios;
#[path = "load/tls.rs"]
mod tls;

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use cascade::config::Transport;
use clap::{CommandFactory, Parser, ValueEnum};
use serde_json::{Map, json};

use engine::EngineChoice;
use gateway::{Gateway, Launch};
use scenarios::Run;

/// What to measure.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Scenario {
    /// Hold --connections connections; gateway RSS per connection.
    Idle,
    /// --subscribers on one channel, --messages at --rate; deliveries, latency, loss, CPU.
    Fanout,
    /// One WebSocket subscriber on each of --channels channels, publishes spread over them.
    Channels,
    /// --clients polling (--transport poll|longpoll) for --seconds; requests/s and CPU.
    Poll,
}

/// What answers the clients.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Server {
    /// The Cascade gateway.
    Cascade,
    /// The floor: one write per delivery and nothing else, to measure what the kernel
    /// alone charges on this machine (no SSE, no idle scenario).
    Floor,
    /// Nchan 1.3.6 on nginx (`apt-get install nginx libnginx-mod-nchan`), the peer the
    /// targets quote: WebSocket or SSE subscribers of one channel (fanout and idle).
    Nchan,
    /// Socket.IO 4.8 on Node (`npm ci --prefix benches/peers`), the other peer quoted:
    /// WebSocket subscribers of one room (fanout and idle).
    Socketio,
}

impl Server {
    fn name(self) -> &'static str {
        match self {
            Server::Cascade => "cascade",
            Server::Floor => "floor",
            Server::Nchan => "nchan",
            Server::Socketio => "socketio",
        }
    }

    /// Whether this is a peer server, spoken to in its own wire.
    fn is_peer(self) -> bool {
        matches!(self, Server::Nchan | Server::Socketio)
    }
}

/// Load scenarios against a Cascade gateway on 127.0.0.1.
#[derive(Parser, Debug)]
#[command(
    name = "load",
    about = "Load scenarios against a Cascade gateway on 127.0.0.1",
    after_help = "Examples:\n  cargo bench --bench load -- fanout --subscribers 100 --messages 1000\n  \
                  cargo bench --bench load -- idle --transport sse --connections 5000\n  \
                  cargo bench --bench load -- poll --transport longpoll --clients 500 --rate 50\n  \
                  cargo bench --bench load -- channels --channels 10000 --messages 50000"
)]
struct Args {
    /// The scenario; without one, this help is printed (so a bare `cargo bench` passes).
    #[arg(value_enum)]
    scenario: Option<Scenario>,
    /// websocket, sse, longpoll or poll [default: websocket; poll for the poll scenario].
    #[arg(long, value_parser = parse_transport)]
    transport: Option<Transport>,
    /// idle: connections to hold.
    #[arg(long, default_value_t = 1000)]
    connections: usize,
    /// fanout, poll: subscribing clients [default: 100].
    #[arg(long, visible_alias = "clients")]
    subscribers: Option<usize>,
    /// Channels the subscribers spread over [default: 1; channels: 10000].
    #[arg(long)]
    channels: Option<usize>,
    /// fanout, channels, poll: each subscriber also follows a quiet channel of its own, as
    /// a user's private channel beside a room.
    #[arg(long)]
    own_channel: bool,
    /// sse, longpoll, poll: each client first asks `/negotiate` on the connection it then
    /// subscribes on, as a browser's ladder client does.
    #[arg(long)]
    negotiate: bool,
    /// Messages to publish [default: fanout 1000, channels 20000, poll rate x seconds].
    #[arg(long)]
    messages: Option<u64>,
    /// Publishes per second in all; 0 is as fast as replies come (in poll: no publisher)
    /// [default: fanout 1000, channels 0, poll 0 or 100 for longpoll].
    #[arg(long)]
    rate: Option<f64>,
    /// Publisher connections; messages stay paced by --rate [default: 4].
    #[arg(long)]
    publishers: Option<usize>,
    /// Messages per publish request: above 1, each request is a batch (a JSON array).
    #[arg(long, default_value_t = 1)]
    batch: u64,
    /// Short-poll interval in ms [default: 2000, the gateway's advice; poll scenario: 0,
    /// back to back].
    #[arg(long)]
    interval_ms: Option<u64>,
    /// poll: how long the clients poll, seconds.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Hard cap on the whole scenario, seconds (at most 600).
    #[arg(long, default_value_t = 60)]
    duration: u64,
    /// After publishing, how long to wait without progress before calling the rest lost.
    #[arg(long, default_value_t = 5)]
    drain_s: u64,
    /// idle: pause between the last confirmation and the memory reading, ms.
    #[arg(long, default_value_t = 1000)]
    settle_ms: u64,
    /// Connections being opened at once (kept below the gateway's listen backlog, 128
    /// today, so that SYN retries do not stretch the establishment time).
    #[arg(long, default_value_t = 100)]
    connect_concurrency: usize,
    /// Subscriber queue of the gateway [default: max(1024, messages), so that a slow
    /// generator shows as latency rather than as cut-off subscribers].
    #[arg(long)]
    queue: Option<usize>,
    /// Engine of the started gateways: memory, redis (every node on one Redis) or
    /// redis-cluster (every node on a local cluster the run starts).
    #[arg(long, value_enum, default_value_t = EngineChoice::Memory)]
    engine: EngineChoice,
    /// Gateway nodes to start (1 to 8); subscribers are spread over them round robin,
    /// publishers post to the first. More than one needs a Redis engine.
    #[arg(long, default_value_t = 1)]
    nodes: usize,
    /// The Redis of --engine redis (loopback only).
    #[arg(long, default_value = "redis://127.0.0.1:6379/0")]
    redis_url: String,
    /// Cascade's subscribers speak Socket.IO on `/socket.io/` (Engine.IO 4 over WebSocket,
    /// the channel asked for in the CONNECT's `auth.channels`), the same client load as
    /// `--server socketio`'s: Cascade and Socket.IO 4.8 side by side on one wire.
    #[arg(long)]
    socketio: bool,
    /// What to start and measure: the Cascade gateway, the floor server (one write per
    /// delivery, no queues or tasks: the least any server spends on this machine), or a
    /// peer (nchan, socketio) for comparison on the same machine.
    #[arg(long, value_enum, default_value_t = Server::Cascade)]
    server: Server,
    /// Run as the floor server on $CASCADE_LISTEN (the load tool starts itself so).
    #[arg(long, hide = true)]
    serve_floor: bool,
    /// Run as the stand-in hooks backend on $CASCADE_LISTEN (the load tool starts itself so).
    #[arg(long, hide = true)]
    serve_hooks: bool,
    /// Turn the gateway's hooks on for these events (comma-separated, e.g.
    /// connect,subscribe,disconnect), answered by a stand-in backend on the generator's
    /// core that accepts every connect as a user of its own.
    #[arg(long, value_name = "EVENTS")]
    hooks: Option<String>,
    /// Attach to a running gateway (http://127.0.0.x:PORT) instead of starting one.
    #[arg(long)]
    url: Option<String>,
    /// With --url: the gateway's PID, for CPU and memory from /proc.
    #[arg(long)]
    pid: Option<u32>,
    /// API key for publishing; the started gateway gets it in CASCADE_API_KEYS.
    #[arg(long, env = "CASCADE_BENCH_API_KEY")]
    api_key: Option<String>,
    /// CPU list for the started gateway (`taskset -c`), or `none`; with --nodes, one
    /// list per node separated by `/` (`0/1`: node 1 on cpu 0, node 2 on cpu 1; nodes
    /// past the last list take the lists again from the first).
    #[arg(long, default_value = "0")]
    gateway_cpu: String,
    /// CPU list for this generator (`taskset -a -p -c`), or `none`.
    #[arg(long, default_value = "1")]
    cpu: String,
    /// Loopback addresses to bind client sockets to, round robin (e.g. 127.0.0.2,127.0.0.3).
    #[arg(long, value_delimiter = ',')]
    source_ips: Vec<IpAddr>,
    /// Nice value for the gateway and this generator (negative: ahead of other work on a
    /// shared machine; needs root). Unchanged by default.
    #[arg(long, allow_negative_numbers = true)]
    nice: Option<i32>,
    /// Extra gateway environment, KEY=VALUE (repeatable; applied last).
    #[arg(long = "env", value_name = "KEY=VALUE")]
    env: Vec<String>,
    /// Gateway binary [default: target/release/cascade, built first].
    #[arg(long)]
    gateway_bin: Option<PathBuf>,
    /// Use the existing target/release/cascade without running `cargo build --release`.
    #[arg(long)]
    no_build: bool,
    /// Where to append the JSON line.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/results.jsonl"))]
    results: PathBuf,
    /// Print the table only; append nothing.
    #[arg(long)]
    no_record: bool,
    /// A free-form note stored with the JSON line.
    #[arg(long)]
    note: Option<String>,
    /// The started gateway serves a certificate made for the run, and every client speaks
    /// TLS to it (ALPN http/1.1; see --h2-streams).
    #[arg(long)]
    tls: bool,
    /// idle, sse, with --tls: SSE streams carried this many to an HTTP/2 connection, as a
    /// browser's; --connections counts streams.
    #[arg(long, default_value_t = 0)]
    h2_streams: usize,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

fn parse_transport(name: &str) -> Result<Transport, String> {
    Transport::from_name(name).ok_or_else(|| "use websocket, sse, longpoll or poll".to_owned())
}

/// The options of a run, with every scenario default resolved.
pub struct Options {
    /// Which scenario.
    pub scenario: Scenario,
    /// Which transport the subscribers use.
    pub transport: Transport,
    /// idle: connections to hold.
    pub connections: usize,
    /// Subscribers (or polling clients).
    pub subscribers: usize,
    /// Channels they spread over.
    pub channels: usize,
    /// Each subscriber also follows a quiet channel of its own.
    pub own_channel: bool,
    /// Each client asks `/negotiate` on its connection first.
    pub negotiate: bool,
    /// The wire the subscribers speak (the server's).
    pub wire: clients::Wire,
    /// Messages to publish.
    pub messages: u64,
    /// Publishes per second; zero is unpaced.
    pub rate: f64,
    /// Publisher connections.
    pub publishers: usize,
    /// Messages per publish request.
    pub batch: u64,
    /// Short-poll interval.
    pub interval: Duration,
    /// The delivery window lasts at least this long (the poll scenario's --seconds).
    pub min_window: Duration,
    /// The scenario's hard cap.
    pub duration: Duration,
    /// Progress-free wait before counting the rest as lost.
    pub drain: Duration,
    /// idle: pause before reading memory.
    pub settle: Duration,
    /// Connections opened at once.
    pub connect_concurrency: usize,
    /// Source addresses for client sockets.
    pub sources: Vec<IpAddr>,
    /// The publishing API key.
    pub api_key: String,
    /// The cores the gateway is pinned to (empty when unpinned or attached).
    pub gateway_cores: Vec<usize>,
    /// The cores this generator is pinned to (empty when unpinned).
    pub generator_cores: Vec<usize>,
    /// idle over TLS: SSE streams per HTTP/2 connection (0: HTTP/1.1, one per client).
    pub h2_streams: usize,
}

fn resolve(args: &Args, scenario: Scenario) -> Result<Options, String> {
    let transport = args.transport.unwrap_or(match scenario {
        Scenario::Poll => Transport::Poll,
        _ => Transport::Websocket,
    });
    if scenario == Scenario::Poll && !matches!(transport, Transport::Poll | Transport::Longpoll) {
        return Err("the poll scenario takes --transport poll or longpoll".to_owned());
    }
    let channels = args.channels.unwrap_or(match scenario {
        Scenario::Channels => 10_000,
        _ => 1,
    });
    let subscribers = match scenario {
        Scenario::Channels => args.subscribers.unwrap_or(channels),
        _ => args.subscribers.unwrap_or(100),
    };
    let rate = args.rate.unwrap_or(match (scenario, transport) {
        (Scenario::Fanout, _) => 1000.0,
        (Scenario::Poll, Transport::Longpoll) => 100.0,
        _ => 0.0,
    });
    let messages = match scenario {
        Scenario::Poll => args.messages.unwrap_or((rate * args.seconds as f64) as u64),
        Scenario::Channels => args.messages.unwrap_or(20_000),
        _ => args.messages.unwrap_or(1000),
    };
    if !(rate.is_finite() && rate >= 0.0) {
        return Err("--rate must be 0 or more".to_owned());
    }
    if args.nodes == 0 || args.nodes > 8 {
        return Err("--nodes must be 1 to 8".to_owned());
    }
    if args.nodes > 1 && !args.engine.shared() {
        return Err(
            "--nodes above 1 needs --engine redis or redis-cluster (memory nodes share nothing)"
                .to_owned(),
        );
    }
    if args.own_channel && scenario == Scenario::Idle {
        return Err("--own-channel is for fanout, channels and poll".to_owned());
    }
    if args.negotiate && transport == Transport::Websocket {
        return Err(
            "--negotiate is for sse, longpoll and poll: a browser opens a WebSocket on a \
             connection of its own"
                .to_owned(),
        );
    }
    if args.server == Server::Floor
        && !(transport != Transport::Sse
            && !args.own_channel
            && !args.negotiate
            && scenario != Scenario::Idle
            && args.engine == EngineChoice::Memory
            && args.nodes == 1
            && args.url.is_none())
    {
        return Err(
            "--server floor runs fanout, channels and poll over websocket, longpoll or poll, \
             one node it starts itself, one channel per subscriber"
                .to_owned(),
        );
    }
    let peer_transport = match args.server {
        Server::Nchan => matches!(transport, Transport::Websocket | Transport::Sse),
        _ => transport == Transport::Websocket,
    };
    if args.server.is_peer()
        && !(peer_transport
            && matches!(scenario, Scenario::Fanout | Scenario::Idle)
            && args.channels.is_none_or(|c| c == 1)
            && !args.own_channel
            && args.nodes == 1
            && args.url.is_none())
    {
        return Err(format!(
            "--server {} runs fanout and idle over websocket (nchan also sse), one channel, \
             one node it starts itself",
            args.server.name()
        ));
    }
    if args.socketio
        && (args.server != Server::Cascade
            || transport != Transport::Websocket
            || !matches!(scenario, Scenario::Fanout | Scenario::Idle))
    {
        return Err("--socketio runs Cascade's fanout and idle over websocket".to_owned());
    }
    if args.batch > 1 && (args.server != Server::Cascade || scenario == Scenario::Idle) {
        return Err("--batch is for Cascade's fanout, channels and poll publishers".to_owned());
    }
    if args.nodes > 1 && args.url.is_some() {
        return Err("--url attaches to one gateway; drop --nodes".to_owned());
    }
    if args.engine == EngineChoice::Redis && !engine::is_loopback_url(&args.redis_url) {
        return Err(format!(
            "--redis-url {:?}: use redis://127.0.0.x:PORT/DB (loopback only)",
            args.redis_url
        ));
    }
    if args.h2_streams > 0
        && !(args.tls && scenario == Scenario::Idle && transport == Transport::Sse)
    {
        return Err("--h2-streams is for the idle scenario over sse with --tls".to_owned());
    }
    if args.tls && (args.server != Server::Cascade || args.url.is_some()) {
        return Err("--tls is for a Cascade gateway this run starts".to_owned());
    }
    if args.duration == 0 || args.duration > 600 {
        return Err("--duration must be 1 to 600 seconds".to_owned());
    }
    if let Some(ip) = args
        .source_ips
        .iter()
        .find(|ip| !gateway::is_loopback(**ip))
    {
        return Err(format!("--source-ips: {ip} is not a loopback address"));
    }
    let interval_ms = args.interval_ms.unwrap_or(match scenario {
        Scenario::Poll => 0,
        _ => 2000,
    });
    Ok(Options {
        scenario,
        transport,
        connections: args.connections,
        subscribers,
        channels,
        own_channel: args.own_channel,
        negotiate: args.negotiate,
        wire: match args.server {
            Server::Cascade if args.socketio => clients::Wire::CascadeSocketio,
            Server::Cascade | Server::Floor => clients::Wire::Cascade,
            Server::Nchan => clients::Wire::Nchan,
            Server::Socketio => clients::Wire::Socketio,
        },
        messages,
        rate,
        publishers: args.publishers.unwrap_or(4),
        batch: args.batch.max(1),
        interval: Duration::from_millis(interval_ms),
        min_window: match scenario {
            Scenario::Poll => Duration::from_secs(args.seconds),
            _ => Duration::ZERO,
        },
        duration: Duration::from_secs(args.duration),
        drain: Duration::from_secs(args.drain_s),
        settle: Duration::from_millis(args.settle_ms),
        connect_concurrency: args.connect_concurrency,
        sources: args.source_ips.clone(),
        api_key: args
            .api_key
            .clone()
            .unwrap_or_else(|| format!("load-{:016x}", fastrand::u64(..))),
        gateway_cores: match (&args.url, args.gateway_cpu.as_str()) {
            (Some(_), _) | (None, "none") => Vec::new(),
            (None, lists) => {
                let mut cores = Vec::new();
                for list in lists.split('/') {
                    cores.extend(
                        gateway::cpu_list(list)
                            .ok_or_else(|| format!("--gateway-cpu: {list:?} is not a CPU list"))?,
                    );
                }
                cores.sort_unstable();
                cores.dedup();
                cores
            }
        },
        generator_cores: match args.cpu.as_str() {
            "none" => Vec::new(),
            list => gateway::cpu_list(list)
                .ok_or_else(|| format!("--cpu: {list:?} is not a CPU list"))?,
        },
        h2_streams: args.h2_streams,
    })
}

/// The gateway's environment: quiet logs, room for the run, the engine, then the
/// caller's overrides.
fn gateway_env(
    args: &Args,
    o: &Options,
    tag: &str,
    redis_url: Option<&str>,
) -> Result<Vec<(String, String)>, String> {
    let queue = args.queue.unwrap_or((o.messages as usize).max(1024));
    let hold_ms = (o.duration.as_secs() + 60) * 1000;
    let mut env: Vec<(String, String)> = [
        ("CASCADE_LOG", "warn".to_owned()),
        ("CASCADE_API_KEYS", o.api_key.clone()),
        ("CASCADE_LIMITS_SUBSCRIBER_QUEUE", queue.to_string()),
        // The default caps are for the internet; here every client is one of ours.
        ("CASCADE_LIMITS_MAX_CONNECTIONS_PER_IP", "0".to_owned()),
        ("CASCADE_LIMITS_MAX_CONNECTIONS", "1000000".to_owned()),
        // History must hold everything a poller may still ask for.
        (
            "CASCADE_HISTORY_MAX_MESSAGES",
            (o.messages as usize).max(1000).to_string(),
        ),
        ("CASCADE_LONGPOLL_MAX_TIMEOUT_MS", hold_ms.to_string()),
        ("CASCADE_LONGPOLL_TIMEOUT_MS", hold_ms.to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    env.push(("CASCADE_ENGINE".to_owned(), args.engine.name().to_owned()));
    if let Some(url) = redis_url {
        env.push(("CASCADE_REDIS_URL".to_owned(), url.to_owned()));
        env.push(("CASCADE_REDIS_PREFIX".to_owned(), redis_prefix(tag)));
    }
    for pair in &args.env {
        let (key, value) = pair
            .split_once('=')
            .ok_or_else(|| format!("--env wants KEY=VALUE, got {pair:?}"))?;
        env.push((key.to_owned(), value.to_owned()));
    }
    Ok(env)
}

/// The Redis key prefix of a run, unique per run so that runs never share history.
fn redis_prefix(tag: &str) -> String {
    format!("load-{tag}")
}

/// The one-minute load average from `/proc/loadavg`.
fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// CPUs online on the machine (not just those this pinned process may use).
fn online_cpus() -> i64 {
    // SAFETY: sysconf has no preconditions.
    i64::from(unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) } as i32)
}

fn cpu_choice(text: &str) -> Option<String> {
    (text != "none").then(|| text.to_owned())
}

/// Node `node`'s CPU list out of `/`-separated lists, round robin.
fn node_cpu(lists: &str, node: usize) -> &str {
    let lists: Vec<&str> = lists.split('/').collect();
    lists[node % lists.len()]
}

fn main() -> ExitCode {
    let args = Args::parse();
    if args.serve_floor || args.serve_hooks {
        let addr = std::env::var("CASCADE_LISTEN")
            .ok()
            .and_then(|a| a.parse().ok());
        let Some(addr) = addr else {
            eprintln!("load: --serve-floor and --serve-hooks want CASCADE_LISTEN=127.0.0.1:PORT");
            return ExitCode::FAILURE;
        };
        let served = if args.serve_hooks {
            hookd::serve(addr)
        } else {
            floor::serve(addr)
        };
        if let Err(error) = served {
            eprintln!("load: stand-in server: {error}");
            return ExitCode::FAILURE;
        }
        return ExitCode::SUCCESS;
    }
    let Some(scenario) = args.scenario else {
        // `cargo bench` runs every bench target; without a scenario this one only explains.
        let _ = Args::command().print_help();
        return ExitCode::SUCCESS;
    };
    match run(&args, scenario) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("load: {error}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args, scenario: Scenario) -> Result<(), String> {
    let opts = resolve(args, scenario)?;
    let load_before = load_average();
    let tag = format!("{:x}", fastrand::u32(..));
    let attached = args.url.is_some();
    // Started before anything else, and before pinning this process: its servers stay
    // unpinned, like a Redis's. Stopped by PID when dropped, at the end of this function.
    let cluster = (args.engine == EngineChoice::RedisCluster && !attached)
        .then(redis_cluster::RedisCluster::start);
    let redis_url = match args.engine {
        EngineChoice::Memory => None,
        EngineChoice::Redis => Some(args.redis_url.clone()),
        EngineChoice::RedisCluster => cluster.as_ref().map(|c| c.url()),
    };
    let mut env = gateway_env(args, &opts, &tag, redis_url.as_deref())?;
    // Started before the gateways, which need its address, and before pinning this
    // process; it runs on the generator's cores and is killed by PID when dropped.
    let mut backend = match &args.hooks {
        Some(events) => {
            let backend = Gateway::spawn(&Launch {
                bin: Some(std::env::current_exe().map_err(|e| format!("this executable: {e}"))?),
                args: vec!["--serve-hooks".to_owned()],
                build: false,
                cpu: cpu_choice(&args.cpu),
                env: Vec::new(),
                node: 0,
                log: Some("load-hooks.log"),
            })?;
            let hooks = [
                ("CASCADE_HOOKS_URL", format!("http://{}", backend.addr)),
                ("CASCADE_HOOKS_EVENTS", events.clone()),
            ];
            // Before the caller's --env, so that those still win.
            let at = env.len() - args.env.len();
            env.splice(at..at, hooks.map(|(k, v)| (k.to_owned(), v)));
            Some(backend)
        }
        None => None,
    };
    // Kept until the run ends: the files are removed on drop.
    let _certificate = match args.tls {
        true => {
            let cert = tls::enable()?;
            env.push((
                "CASCADE_TLS_CERT_FILE".to_owned(),
                cert.cert_file.display().to_string(),
            ));
            env.push((
                "CASCADE_TLS_KEY_FILE".to_owned(),
                cert.key_file.display().to_string(),
            ));
            Some(cert)
        }
        false => None,
    };
    // Children inherit the raised limit, so raise it before starting the gateway.
    let (soft, hard) = gateway::raise_nofile();
    let wanted = opts.connections.max(opts.subscribers) as u64 + 64;
    if soft < wanted {
        eprintln!(
            "load: warning: open-file limit {soft} (hard {hard}) is below the {wanted} this \
             run needs; split it over several generators (see --help)"
        );
    }
    if let Some(nice) = args.nice {
        // Set on this (still single) thread before the gateway and the runtime's threads
        // exist, so all of them inherit it.
        if !gateway::renice(nice) {
            eprintln!("load: warning: could not set nice {nice}");
        }
    }
    let gateway_cpu = cpu_choice(&args.gateway_cpu);
    let gateways = match &args.url {
        Some(url) => vec![Gateway::attach(url, args.pid)?],
        // Started before pinning this process, so the gateways do not inherit our core.
        // Each node takes its own --gateway-cpu list, or all share one. A failure drops
        // (kills) those started.
        None => {
            let (bin, bin_args) = match args.server {
                Server::Cascade => (
                    gateway::release_bin(args.gateway_bin.as_deref(), !args.no_build)?,
                    Vec::new(),
                ),
                Server::Floor => (
                    std::env::current_exe().map_err(|e| format!("this executable: {e}"))?,
                    vec!["--serve-floor".to_owned()],
                ),
                Server::Nchan | Server::Socketio => peers::launch(args.server == Server::Nchan)?,
            };
            let mut gateways = Vec::with_capacity(args.nodes);
            for node in 0..args.nodes {
                gateways.push(Gateway::spawn(&Launch {
                    bin: Some(bin.clone()),
                    args: bin_args.clone(),
                    build: false,
                    cpu: gateway_cpu
                        .as_deref()
                        .map(|lists| node_cpu(lists, node).to_owned()),
                    env: env.clone(),
                    node,
                    log: None,
                })?);
            }
            gateways
        }
    };
    let generator_cpu = cpu_choice(&args.cpu);
    if let Some(cpu) = &generator_cpu {
        if !gateway::pin_self(cpu) {
            eprintln!("load: warning: could not pin the generator to cpu {cpu} (taskset?)");
        }
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("tokio runtime: {e}"))?;
    let redis_url = redis_url.filter(|_| !attached);
    let run_redis_url = redis_url.clone();
    let run_tag = tag.clone();
    let report = runtime.block_on(async move {
        let mut gateways = gateways;
        if let Some(backend) = &mut backend {
            backend.wait_ready(Duration::from_secs(10)).await?;
        }
        for gateway in &mut gateways {
            gateway.wait_ready(Duration::from_secs(10)).await?;
        }
        let run = Run {
            gateways,
            redis_url: run_redis_url,
            deadline: Instant::now() + opts.duration,
            tag: run_tag,
            opts,
        };
        let report = match scenario {
            Scenario::Idle => scenarios::idle(&run).await,
            _ => scenarios::delivery(&run).await,
        };
        // The gateway children are killed here, by PID, when `run` drops.
        drop(run);
        report
    });
    if let Some(url) = redis_url.as_ref().filter(|_| cluster.is_none()) {
        match engine::cleanup(url, &redis_prefix(&tag)) {
            Some(n) => eprintln!("load: deleted {n} Redis keys of this run"),
            None => eprintln!("load: warning: could not delete this run's Redis keys"),
        }
    }
    let mut report = report?;
    report.param("engine", args.engine.name());
    report.param("nodes", args.nodes);
    report.param("server", args.server.name());
    if let Some(events) = &args.hooks {
        report.param("hooks", events.as_str());
    }
    if args.socketio {
        report.param("wire", "socketio");
    }

    let gateway_cpu_text = gateway_cpu.as_deref().unwrap_or("any");
    let generator_cpu_text = generator_cpu.as_deref().unwrap_or("any");
    let server = match args.server {
        Server::Cascade => format!("{} gateway", args.engine.name()),
        other => other.name().to_owned(),
    };
    report.print(&format!(
        "{} x {server} on cpu {gateway_cpu_text}, generator on cpu {generator_cpu_text}, load \
         average {}",
        args.nodes,
        load_before.map_or_else(|| "?".to_owned(), |l| l.to_string())
    ));
    if !args.no_record {
        let mut extra = Map::new();
        extra.insert(
            "machine".into(),
            json!({
                "cpus": online_cpus(),
                "gateway_cpu": gateway_cpu_text,
                "generator_cpu": generator_cpu_text,
                "attached": attached,
                "nice": args.nice,
                // Other work on the machine skews every figure; this says how much there was.
                "loadavg_1m": load_before,
            }),
        );
        let overrides: Map<String, serde_json::Value> = env
            .iter()
            .filter(|(k, _)| k != "CASCADE_API_KEYS")
            .map(|(k, v)| (k.clone(), json!(v)))
            .collect();
        if !attached {
            extra.insert("gateway_env".into(), serde_json::Value::Object(overrides));
        }
        if let Some(note) = &args.note {
            extra.insert("note".into(), json!(note));
        }
        let line = report.to_json(extra);
        report::append(&args.results, &line)
            .map_err(|e| format!("appending to {}: {e}", args.results.display()))?;
        println!("appended to {}", args.results.display());
    }
    Ok(())
}
