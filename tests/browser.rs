//! Runs the browser tests (`tests/browser/*.test.mjs`: Node's test runner driving Debian's
//! headless Chromium through playwright-core) against this build's gateway binary, so that
//! `cargo test` runs every test of the project.
//!
//! Needs `node`, `/usr/bin/chromium` and the npm devDependencies (`npm ci`); `.ci/run`
//! installs them. Without them this test fails and says what is missing: it never skips.

use std::path::Path;
use std::process::Command;

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
    ]
    .into_iter()
    .filter_map(|(present, what)| (!present).then_some(what))
    .collect();
    assert!(
        missing.is_empty(),
        "the browser tests need: {} — .ci/run installs them",
        missing.join(", ")
    );
    let status = Command::new("node")
        .args(["--test", "--test-timeout=120000", "tests/browser/"])
        .env("CASCADE_BIN", env!("CARGO_BIN_EXE_cascade"))
        .current_dir(root)
        .status()
        .expect("run node --test");
    assert!(status.success(), "browser tests failed: {status}");
}
