//! Gateway and Redis processes for multi-node tests: real binaries, stopped by PID.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use futures_util::StreamExt;

use super::{DEADLINE, SseClient, WsClient, within};

/// A gateway running as a child process of the test.
pub struct Node {
    child: Child,
    pub addr: SocketAddr,
    log: Arc<Mutex<Vec<String>>>,
}

impl Node {
    /// Starts `cascade` on an ephemeral port with the given `CASCADE_*` overrides.
    pub fn spawn(env: &[(&str, &str)]) -> Node {
        let mut command = Command::new(env!("CARGO_BIN_EXE_cascade"));
        // Only the variables given here configure the node, not the test's environment.
        for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("CASCADE_")) {
            command.env_remove(key);
        }
        command
            .env("CASCADE_LISTEN", "127.0.0.1:0")
            .env("CASCADE_LOG", "info");
        for (key, value) in env {
            command.env(key, value);
        }
        Node::start(command)
    }

    /// Runs `command`, a `cascade` whose arguments and environment the caller set (it must
    /// listen on a port of 127.0.0.1, and log at info), until it logs its listen address.
    pub fn start(mut command: Command) -> Node {
        command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = command.spawn().expect("spawn cascade");
        let stderr = child.stderr.take().expect("stderr");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        // Keeps draining the log so the child never blocks on a full pipe.
        let lines = log.clone();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let addr = line
                    .split_whitespace()
                    .find_map(|w| w.strip_prefix("listen="))
                    .and_then(|a| a.parse::<SocketAddr>().ok());
                lines.lock().unwrap().push(line);
                if let Some(addr) = addr {
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(addr);
                    }
                }
            }
        });
        let Ok(addr) = rx.recv_timeout(DEADLINE) else {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "cascade did not print its listen address; its log: {:#?}",
                log.lock().unwrap()
            );
        };
        Node { child, addr, log }
    }

    /// The lines the node has logged so far: every start-up line once `spawn` returned.
    pub fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL: the node vanishes without draining, as in a crash.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub async fn ws(&self) -> WsClient {
        let url = format!("ws://{}/ws", self.addr);
        let (ws, _) = within(tokio_tungstenite::connect_async(url))
            .await
            .expect("websocket connect");
        WsClient { ws }
    }

    pub async fn sse(&self, query: &str, last_event_id: Option<&str>) -> SseClient {
        let mut request = reqwest::Client::new().get(self.url(&format!("/sse?{query}")));
        if let Some(id) = last_event_id {
            request = request.header("Last-Event-ID", id);
        }
        let response = within(request.send()).await.expect("sse connect");
        SseClient {
            status: response.status().as_u16(),
            headers: response.headers().clone(),
            stream: response.bytes_stream().boxed(),
            buffer: BytesMut::new(),
            comments: 0,
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A private redis-server with an append-only file, so that a restart keeps its data.
pub struct RedisServer {
    child: Option<Child>,
    pub port: u16,
    dir: PathBuf,
}

impl RedisServer {
    pub fn start() -> RedisServer {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let dir = std::env::temp_dir().join(format!("cascade-redis-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("redis dir");
        let mut server = RedisServer {
            child: None,
            port,
            dir,
        };
        server.restart();
        server
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Stops the server abruptly (SIGKILL by PID); the AOF keeps what was acknowledged.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts (again) on the same port and directory, waiting until it answers.
    pub fn restart(&mut self) {
        self.stop();
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args([
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
            ])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server on PATH");
        self.child = Some(child);
        let start = std::time::Instant::now();
        while !redis_answers(self.port) {
            assert!(start.elapsed() < DEADLINE, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn redis_answers(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(200)));
    let mut reply = [0u8; 7];
    stream.write_all(b"PING\r\n").is_ok()
        && stream.read_exact(&mut reply).is_ok()
        && &reply == b"+PONG\r\n"
}
