//! Results: a human table on stdout and one JSON line appended to `benches/results.jsonl`
//! (scenario, transport, parameters, results, commit, timestamp), which
//! `scripts/chart.py` turns into `docs/bench.svg`.

use std::io::Write as _;
use std::path::Path;
use std::process::Command;

use cascade::config::Transport;
use serde_json::{Map, Value, json};

/// The outcome of one scenario run.
pub struct Report {
    scenario: &'static str,
    transport: Transport,
    params: Map<String, Value>,
    results: Map<String, Value>,
}

/// KiB to MiB.
pub fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// Microseconds to milliseconds.
pub fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

/// Rounds floats to four significant digits so the JSON lines stay readable.
fn tidy(value: Value) -> Value {
    match value.as_f64() {
        Some(x) if value.is_f64() && x.is_finite() && x != 0.0 => {
            let digits = 3 - x.abs().log10().floor() as i32;
            let scale = 10f64.powi(digits.max(0));
            json!((x * scale).round() / scale)
        }
        _ => value,
    }
}

impl Report {
    /// An empty report.
    pub fn new(scenario: &'static str, transport: Transport) -> Self {
        Report {
            scenario,
            transport,
            params: Map::new(),
            results: Map::new(),
        }
    }

    /// Records a parameter of the run.
    pub fn param(&mut self, key: &str, value: impl Into<Value>) {
        self.params.insert(key.to_owned(), tidy(value.into()));
    }

    /// Records a result; `None` (e.g. no `/proc` without a PID) becomes `null`.
    pub fn result(&mut self, key: &str, value: impl Into<Value>) {
        self.results.insert(key.to_owned(), tidy(value.into()));
    }

    /// Prints the run as a two-column table.
    pub fn print(&self, context: &str) {
        println!();
        println!(
            "cascade load: {} over {} ({context})",
            self.scenario,
            self.transport.name()
        );
        let params: Vec<String> = self
            .params
            .iter()
            .map(|(k, v)| format!("{k}={}", show(v)))
            .collect();
        println!("  {}", params.join(" "));
        let width = self.results.keys().map(String::len).max().unwrap_or(0);
        println!("  {}", "-".repeat(width + 14));
        for (key, value) in &self.results {
            println!("  {key:<width$}  {:>12}", show(value));
        }
        println!();
    }

    /// The JSON line for `benches/results.jsonl`.
    pub fn to_json(&self, extra: Map<String, Value>) -> Value {
        let (commit, dirty) = git_commit();
        let mut line = Map::new();
        line.insert("scenario".into(), json!(self.scenario));
        line.insert("transport".into(), json!(self.transport.name()));
        line.insert("params".into(), Value::Object(self.params.clone()));
        line.insert("results".into(), Value::Object(self.results.clone()));
        line.insert("commit".into(), json!(commit));
        line.insert("dirty".into(), json!(dirty));
        line.insert("timestamp".into(), json!(timestamp()));
        line.extend(extra);
        Value::Object(line)
    }
}

fn show(value: &Value) -> String {
    match value {
        Value::Null => "-".to_owned(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Appends one line to `path`, creating it if needed.
pub fn append(path: &Path, line: &Value) -> std::io::Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    writeln!(file, "{line}")
}

/// `git rev-parse --short HEAD` and whether the work tree has changes.
fn git_commit() -> (String, bool) {
    let dir = crate::gateway::workspace();
    let commit = Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .current_dir(&dir)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|| "unknown".to_owned());
    let dirty = Command::new("git")
        .args(["status", "--porcelain", "--untracked-files=no"])
        .current_dir(&dir)
        .output()
        .is_ok_and(|o| !o.stdout.is_empty());
    (commit, dirty)
}

/// Now as RFC 3339 UTC, e.g. `2026-11-28T12:41:16Z`.
fn timestamp() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs()) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}
