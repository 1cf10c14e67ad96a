//! Short-lived helper processes of the tests (redis-cli and the like), bounded in time.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Runs `command` to completion within `limit` (killing it by PID when it overruns);
/// its trimmed stdout when it succeeded. Its output must fit a pipe's buffer.
pub fn run(mut command: Command, limit: Duration) -> Option<String> {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-cli on PATH");
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().ok()? {
            break status;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    let mut stdout = String::new();
    std::io::Read::read_to_string(&mut child.stdout.take()?, &mut stdout).ok()?;
    status.success().then(|| stdout.trim().to_owned())
}
