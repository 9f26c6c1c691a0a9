//! `cargo xtask test [-- ARGS]`: the project's one test command.
//!
//! 1. The testing build of `raftkv` (features `failpoints` and `planted-bugs`), copied to
//!    `target/debug/raftkv-testing/raftkv` for the crash-point and planted-bug tests (see
//!    [`build_testing_binary`]); then `cargo build --workspace --bins`, so the cluster tests
//!    in `tests/` find `target/debug/raftkv` and `target/debug/raftkvctl` (their path is
//!    passed in `RAFTKV_BIN_DIR`).
//! 2. `cargo test --workspace --doc` (nextest does not run doc tests).
//! 3. `cargo nextest run --workspace --no-fail-fast --no-tests=warn ARGS` when cargo-nextest is installed
//!    (profile from `NEXTEST_PROFILE`, see `.config/nextest.toml`), otherwise
//!    `cargo test --workspace --no-fail-fast ARGS`. It runs last, so the output closes on
//!    its summary.
//!
//! Steps 2 and 3 both run even if one fails; the command fails if any step failed.

use std::ffi::OsString;
use std::path::Path;
use std::process::Stdio;
use std::time::Instant;

use anyhow::{Result, bail};

use crate::{cargo, run_checked, target_dir};

pub(crate) fn run(root: &Path, extra: &[OsString]) -> Result<()> {
    let started = Instant::now();
    let bin_dir = target_dir(root).join("debug");

    // Without the binaries no cluster test can run: stop at the first failure here.
    build_testing_binary(root, "debug")?;
    run_checked(cargo(root).args(["build", "--workspace", "--bins"]))?;

    let mut failed = Vec::new();

    // Doc tests first, so the run closes on the main test runner's summary.
    let mut doc = cargo(root);
    doc.args(["test", "--workspace", "--doc"]).env("RAFTKV_BIN_DIR", &bin_dir);
    if let Err(err) = run_checked(&mut doc) {
        eprintln!("test: {err:#}");
        failed.push("doc tests");
    }

    let mut tests = cargo(root);
    if nextest_available(root) {
        // `--no-tests=warn`: a filter that selects nothing is not a failure.
        tests.args(["nextest", "run", "--workspace", "--no-fail-fast", "--no-tests=warn"]);
    } else {
        eprintln!("test: cargo-nextest not found, falling back to `cargo test`");
        tests.args(["test", "--workspace", "--no-fail-fast"]);
    }
    tests.args(extra).env("RAFTKV_BIN_DIR", &bin_dir);
    if let Err(err) = run_checked(&mut tests) {
        eprintln!("test: {err:#}");
        failed.push("tests");
    }

    let elapsed = started.elapsed().as_secs_f64();
    if !failed.is_empty() {
        bail!("failed: {} (after {elapsed:.1}s)", failed.join(", "));
    }
    eprintln!("test: all passed in {elapsed:.1}s");
    Ok(())
}

/// Whether `cargo nextest --version` works.
fn nextest_available(root: &Path) -> bool {
    cargo(root)
        .args(["nextest", "--version"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

/// Builds `raftkv` with the test-only features `failpoints` and `planted-bugs` and copies it
/// to `target/<profile>/raftkv-testing/raftkv` (found by the tests there). Both are inert
/// unless armed by environment variables, and this binary is never the one `cargo build`
/// leaves in `target/<profile>/raftkv`: the normal build runs after it. Cargo keeps each
/// feature set's artifacts apart, so switching between the two builds recompiles nothing.
pub(crate) fn build_testing_binary(root: &Path, profile: &str) -> Result<()> {
    let mut build = cargo(root);
    build.args(["build", "-p", "raftkv", "--features", "failpoints,planted-bugs"]);
    if profile == "release" {
        build.arg("--release");
    }
    run_checked(&mut build)?;
    let dir = target_dir(root).join(profile);
    let testing = dir.join("raftkv-testing");
    std::fs::create_dir_all(&testing)?;
    // Copy (not hard-link): the next normal build replaces target/<profile>/raftkv.
    let tmp = testing.join("raftkv.tmp");
    std::fs::copy(dir.join("raftkv"), &tmp)?;
    std::fs::rename(&tmp, testing.join("raftkv"))?;
    Ok(())
}
