//! The Autobahn conformance suite's cases 1 to 7 (framing, pings and pongs, reserved bits,
//! opcodes, fragmentation, UTF-8, closing) against this gateway's WebSocket stack, through
//! the test-only echo (`/ws?echo`, see `src/transport/websocket/echo.rs`). kosoku, a port
//! of the suite's runner that drives its own case files, is the client.
//!
//! The suite runs only in a build with the `autobahn` feature: `cargo test --features
//! autobahn --test autobahn`, which scripts/test runs. It needs `python3` with
//! `kosoku==0.1.0` (scripts/test installs it); without it the test fails and says so.
//! A build without the feature checks instead that `/ws?echo` is an ordinary `/ws`.

mod support;

/// Without the feature there is no echo: a binary frame on `/ws?echo` gets the gateway's
/// `error` frame, as on any `/ws`.
#[cfg(not(feature = "autobahn"))]
#[tokio::test]
async fn without_the_feature_there_is_no_echo() {
    use futures_util::{SinkExt, StreamExt};
    use support::{TestServer, within};
    use tokio_tungstenite::tungstenite::Message as Frame;

    let server = TestServer::default().await;
    let url = format!("ws://{}/ws?echo", server.addr);
    let (mut ws, _) = within(tokio_tungstenite::connect_async(url))
        .await
        .expect("handshake");
    within(ws.send(Frame::binary(&b"echo?"[..])))
        .await
        .expect("send");
    let answer = within(ws.next())
        .await
        .expect("an answer")
        .expect("a frame");
    let Frame::Text(text) = answer else {
        panic!("expected the error frame, got {answer:?}");
    };
    assert!(text.contains(r#""op":"error""#), "{text}");
}

/// The suite itself, in a build that has the echo.
#[cfg(feature = "autobahn")]
mod suite {
    use std::collections::BTreeMap;
    use std::path::Path;
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};

    use cascade::config::Config;

    use super::support::TestServer;

    /// The kosoku release the case counts below were taken with.
    const KOSOKU: &str = "0.1.0";

    /// How many cases kosoku 0.1.0 runs for `1.*` to `7.*`: fewer means some did not run.
    const CASES: usize = 246;

    /// A bound on the whole run (it takes seconds; 6.4.x wait two each).
    const RUN_DEADLINE: Duration = Duration::from_secs(300);

    /// Verdicts on the message exchange that conform: `NON-STRICT` diverges from a SHOULD,
    /// `INFORMATIONAL` probes what the RFC leaves open, `UNIMPLEMENTED` marks an optional
    /// feature (extensions) the peer lacks. `FAILED` and `ERROR` do not.
    const BEHAVIOR_ALLOWED: [&str; 4] = ["OK", "NON-STRICT", "INFORMATIONAL", "UNIMPLEMENTED"];

    /// Verdicts on the closing handshake that conform; `FAILED`, `FAILED BY CLIENT`,
    /// `WRONG CODE` and `UNCLEAN` do not.
    const CLOSE_ALLOWED: [&str; 2] = ["OK", "INFORMATIONAL"];

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn autobahn_cases_1_to_7_conform() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let installed = Command::new("python3")
            .args([
                "-c",
                "import importlib.metadata as m; print(m.version('kosoku'))",
            ])
            .output();
        let version = match &installed {
            Ok(out) if out.status.success() => {
                String::from_utf8_lossy(&out.stdout).trim().to_owned()
            }
            _ => String::new(),
        };
        assert_eq!(
            version, KOSOKU,
            "the Autobahn test needs python3 with kosoku=={KOSOKU} \
             (python3 -m pip install kosoku=={KOSOKU}; scripts/test installs it)"
        );

        // The embedded defaults, as a deployment without a config file would have them.
        let config = Config::from_sources("", Vec::<(String, String)>::new()).expect("defaults");
        let server = TestServer::start(config).await;
        let url = format!("ws://{}/ws?echo", server.addr);
        let reports = Path::new(env!("CARGO_TARGET_TMPDIR")).join("autobahn");
        // Reports are named after the server's port: a previous run's would linger.
        let _ = std::fs::remove_dir_all(&reports);
        let mut args = vec![
            root.join("tests/autobahn/run.py").display().to_string(),
            url,
            reports.display().to_string(),
        ];
        args.extend((1..=7).map(|group| format!("{group}.*")));

        let output = tokio::task::spawn_blocking(move || run_bounded(&args, RUN_DEADLINE))
            .await
            .expect("kosoku thread");
        server.shutdown().await;

        let mut counts: BTreeMap<String, usize> = BTreeMap::new();
        let mut failures = Vec::new();
        let mut cases = 0;
        for line in output.lines() {
            let [id, behavior, close] = line.split('\t').collect::<Vec<_>>()[..] else {
                panic!("unexpected line from run.py: {line:?}\n{output}");
            };
            cases += 1;
            *counts.entry(behavior.to_owned()).or_default() += 1;
            if !BEHAVIOR_ALLOWED.contains(&behavior) || !CLOSE_ALLOWED.contains(&close) {
                failures.push(format!("{id}: {behavior}, close {close}"));
            }
        }
        // Shown with --nocapture, and in the output of a failed run.
        println!("Autobahn cases 1-7: {cases} cases, {counts:?}");
        println!("reports: {}", reports.join("index.html").display());
        assert!(
            failures.is_empty(),
            "Autobahn cases that do not conform (details in {}):\n{}",
            reports.join("index.html").display(),
            failures.join("\n")
        );
        assert_eq!(
            cases, CASES,
            "kosoku ran another number of cases:\n{output}"
        );
    }

    /// Runs `python3 args` to the end, killed past `deadline`; its standard output.
    fn run_bounded(args: &[String], deadline: Duration) -> String {
        let mut child = Command::new("python3")
            .args(args)
            .stdout(Stdio::piped())
            .spawn()
            .expect("start python3");
        // The output is a few kilobytes at most: read once the child is done, not meanwhile.
        let started = Instant::now();
        loop {
            match child.try_wait().expect("wait for kosoku") {
                Some(status) => {
                    let mut stdout = String::new();
                    std::io::Read::read_to_string(child.stdout.as_mut().unwrap(), &mut stdout)
                        .expect("read kosoku's output");
                    assert!(status.success(), "kosoku failed ({status}):\n{stdout}");
                    return stdout;
                }
                None if started.elapsed() > deadline => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("kosoku did not finish within {deadline:?}");
                }
                None => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }
}
