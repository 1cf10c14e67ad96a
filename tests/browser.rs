//! The tests that need tools from outside Cargo. Runs the browser tests
//! (`tests/browser/*.test.mjs`: Node's test runner driving Debian's headless Chromium
//! through playwright-core) against this build's gateway binary, so that `cargo test` runs
//! every test of the project; and checks that promtool, which tests/metrics.rs runs when it
//! is there, is installed.
//!
//! Needs `node`, `/usr/bin/chromium`, the npm devDependencies (`npm ci`) and `promtool`;
//! `scripts/test` installs them. Without one, its test fails and says what is missing: it
//! never skips. This binary is named `zz_browser` in Cargo.toml so that it runs last:
//! plain `cargo test` stops at the first binary that fails, and a missing tool should not
//! keep the other suites from running.

use std::path::Path;
use std::process::Command;

/// How to get what is missing, in every failure message.
const INSTALL: &str = "scripts/test installs what is missing";

#[test]
fn browser_tests_pass_in_headless_chromium() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let missing: Vec<&str> = [
        (
            Command::new("node").arg("--version").output().is_ok(),
            "node (apt-get install nodejs)",
        ),
        (
            Path::new("/usr/bin/chromium").exists(),
            "/usr/bin/chromium (apt-get install chromium)",
        ),
        (
            root.join("node_modules/playwright-core").exists(),
            "node_modules (npm ci)",
        ),
        (
            std::env::var_os("CASCADE_TEST_PYTHON").is_some()
                || root.join(".venv-tests/bin/python").exists(),
            ".venv-tests (pip install -r tests/python/requirements.txt)",
        ),
    ]
    .into_iter()
    .filter_map(|(present, what)| (!present).then_some(what))
    .collect();
    assert!(
        missing.is_empty(),
        "the browser tests need: {} ({INSTALL})",
        missing.join(", ")
    );
    // tls.test.mjs's certificate, made here so that the machine needs no openssl.
    let certs = std::env::temp_dir().join(format!("cascade-browser-tls-{}", std::process::id()));
    std::fs::create_dir_all(&certs).expect("certificate dir");
    let made = rcgen::generate_simple_self_signed(["localhost".to_owned(), "127.0.0.1".to_owned()])
        .expect("rcgen");
    let (cert, key) = (certs.join("cert.pem"), certs.join("key.pem"));
    std::fs::write(&cert, made.cert.pem()).expect("write cert");
    std::fs::write(&key, made.signing_key.serialize_pem()).expect("write key");
    let status = Command::new("node")
        .args(["--test", "--test-timeout=120000", "tests/browser/"])
        .env("CASCADE_BIN", env!("CARGO_BIN_EXE_cascade"))
        .env("CASCADE_TEST_TLS_CERT", &cert)
        .env("CASCADE_TEST_TLS_KEY", &key)
        .current_dir(root)
        .status()
        .expect("run node --test");
    let _ = std::fs::remove_dir_all(&certs);
    assert!(status.success(), "browser tests failed: {status}");
}

/// tests/metrics.rs checks the exposition, the alert rules and the dashboard's queries
/// with promtool, and skips those checks (with a note) where it is missing; this is where
/// a missing promtool fails.
#[test]
fn promtool_is_installed() {
    let found = Command::new("promtool").arg("--version").output();
    assert!(
        found.is_ok_and(|out| out.status.success()),
        "promtool is not on PATH, so tests/metrics.rs skipped its promtool checks \
         (apt-get install prometheus; {INSTALL})"
    );
}
