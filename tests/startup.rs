//! Start-up: the real binary refuses a configuration it cannot serve before it listens,
//! says what is wrong in words an operator can act on, and warns about configurations
//! that start but cannot work (no publisher possible, an unreachable Redis).

mod support;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::{DEADLINE, TestServer, http};

/// `cascade` with only the given `CASCADE_*` variables (none of the test's own).
fn cascade(env: &[(&str, &str)]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_cascade"));
    for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("CASCADE_")) {
        command.env_remove(key);
    }
    command
        .env("CASCADE_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (key, value) in env {
        command.env(key, value);
    }
    command
}

/// Runs `cascade` to its exit, failing the test if it takes longer than [`DEADLINE`].
fn run_to_exit(mut command: Command) -> Output {
    let mut child = command.spawn().expect("spawn cascade");
    let started = Instant::now();
    while child.try_wait().expect("wait").is_none() {
        if started.elapsed() > DEADLINE {
            let _ = child.kill();
            panic!("cascade did not exit");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().expect("output")
}

/// A port nothing listens on (bound, then released).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// A gateway running as a child, with its log lines as they come.
struct Running {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Running {
    fn spawn(env: &[(&str, &str)]) -> Running {
        let mut child = cascade(env)
            .env("CASCADE_LISTEN", "127.0.0.1:0")
            .spawn()
            .expect("spawn cascade");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, lines) = mpsc::channel();
        // Keeps draining the log so the child never blocks on a full pipe.
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        Running {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// The first log line (from the start) that contains `text`, waiting up to [`DEADLINE`].
    fn line_with(&mut self, text: &str) -> String {
        if let Some(line) = self.seen.iter().find(|l| l.contains(text)) {
            return line.clone();
        }
        let deadline = Instant::now() + DEADLINE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(text) {
                        return line;
                    }
                }
                Err(_) => panic!("no log line with {text:?} in {:#?}", self.seen),
            }
        }
    }

    /// Waits for the "listening" line; returns the address and the lines logged before it.
    fn listening(&mut self) -> (SocketAddr, Vec<String>) {
        let line = self.line_with("listening");
        let addr = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("listen="))
            .and_then(|a| a.parse().ok())
            .expect("a listen= address");
        let at = self.seen.iter().position(|l| *l == line).expect("seen");
        (addr, self.seen[..at].to_vec())
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_short_secret_stops_start_up_before_listening() {
    let port = free_port().to_string();
    let listen = format!("127.0.0.1:{port}");
    let output = run_to_exit(cascade(&[
        ("CASCADE_LISTEN", &listen),
        ("CASCADE_TOKEN_HMAC_SECRET", "too-short"),
    ]));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(stderr.contains("hmac_secret"), "{stderr}");
    assert!(
        !stderr.contains("listening"),
        "it listened before refusing: {stderr}"
    );
    assert!(std::net::TcpStream::connect(&listen).is_err());
}

#[test]
fn a_host_name_in_listen_is_explained() {
    let output = run_to_exit(cascade(&[("CASCADE_LISTEN", "localhost:8080")]));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(stderr.contains("host name"), "{stderr}");
    assert!(stderr.contains("127.0.0.1:8080"), "{stderr}");
    assert!(!stderr.contains("listening"), "{stderr}");
}

#[test]
fn defaults_warn_that_nothing_can_publish() {
    let mut gateway = Running::spawn(&[]);
    let (_, before) = gateway.listening();
    assert!(
        before.iter().any(|l| l.contains("nothing can publish")),
        "{before:#?}"
    );
    // An API key is a publisher: no warning.
    let mut gateway = Running::spawn(&[("CASCADE_API_KEYS", "a-backend-key")]);
    let (_, before) = gateway.listening();
    assert!(
        !before.iter().any(|l| l.contains("nothing can publish")),
        "{before:#?}"
    );
}

#[tokio::test]
async fn an_unreachable_redis_is_warned_about() {
    let url = format!("redis://127.0.0.1:{}/0", free_port());
    let mut gateway = Running::spawn(&[
        ("CASCADE_ENGINE", "redis"),
        ("CASCADE_REDIS_URL", &url),
        ("CASCADE_API_KEYS", "a-backend-key"),
    ]);
    let (addr, _) = gateway.listening();
    let warning = gateway.line_with("does not answer");
    assert!(warning.contains("WARN"), "{warning}");
    assert!(warning.contains("/readyz"), "{warning}");
    let response = http()
        .get(format!("http://{addr}/readyz"))
        .send()
        .await
        .expect("readyz");
    assert_eq!(response.status().as_u16(), 503);
}

#[test]
fn the_token_command_refuses_what_the_gateway_would() {
    let secret = (
        "CASCADE_TOKEN_HMAC_SECRET",
        "0123456789abcdef0123456789abcdef",
    );
    for args in [
        ["--sub", "bad name", "--channels", "room:*"],
        ["--sub", "alice", "--channels", "a b"],
        ["--sub", "alice", "--channels", "room:*,x@y"],
    ] {
        let mut command = cascade(&[secret]);
        command.arg("token").args(args);
        let output = run_to_exit(command);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{args:?} minted a token");
        assert!(output.stdout.is_empty(), "{args:?}");
        assert!(stderr.contains("A-Z a-z 0-9"), "{args:?}: {stderr}");
    }
    let mut command = cascade(&[secret]);
    command.arg("token").args([
        "--sub",
        "alice",
        "--channels",
        "room:*, chat",
        "--publish",
        "*",
    ]);
    let output = run_to_exit(command);
    assert!(output.status.success(), "{output:?}");
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).split('.').count(),
        3
    );
}

/// With the built-in defaults no token can work (no key is configured): a refused publish
/// says what would work, an API key.
#[tokio::test]
async fn a_publish_refused_by_the_defaults_names_the_api_key() {
    let config = cascade::config::Config::from_sources("", Vec::new()).expect("defaults");
    let server = TestServer::start(config).await;
    let response = http()
        .post(server.url("/publish"))
        .body(r#"{"channel":"chat","data":1}"#)
        .send()
        .await
        .expect("publish");
    assert_eq!(response.status().as_u16(), 401);
    let body: Value = response.json().await.expect("JSON");
    assert_eq!(body["error"]["code"], "token_invalid", "{body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("X-Cascade-Api-Key"), "{message}");
    assert!(!message.contains("a token is needed"), "{message}");
    assert_eq!(
        server
            .metric(r#"cascade_errors_total{code="token_invalid"}"#)
            .await,
        1.0
    );
}
