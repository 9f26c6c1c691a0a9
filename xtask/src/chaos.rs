//! `cargo xtask chaos --schedules N [--seed S] [--secs T] [--debug]`: the long
//! fault-injection tier.
//!
//! Builds the binaries (release unless `--debug`), then runs the ignored test
//! `chaos::chaos_long` of the test binary `it` (`tests/it/chaos.rs`) with `CHAOS_SCHEDULES`,
//! `CHAOS_SEED` and `CHAOS_SECS`, through `cargo test` (not nextest, whose slow-test timeout
//! would end a long run). The test prints each schedule's report, every failing seed with the
//! command that replays it, and a summary line. A failing schedule keeps every node's log and
//! the harness's record of its faults and membership calls in `target/chaos-failures/seed-N/`
//! (`RAFTKV_CHAOS_KEEP_DIR`).
//! xtask itself depends on no crate of ours but the process harness, `proc-harness`.

use std::path::Path;

use anyhow::Result;

use crate::{cargo, run_checked, target_dir};

pub(crate) fn run(root: &Path, schedules: u64, seed: Option<u64>, secs: u64, release: bool) -> Result<()> {
    let profile = if release { "release" } else { "debug" };
    let mut build = cargo(root);
    build.args(["build", "--workspace", "--bins"]);
    if release {
        build.arg("--release");
    }
    run_checked(&mut build)?;
    let seed = seed.unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_secs() % 1_000_000)
    });
    eprintln!("chaos: {schedules} schedules from seed {seed}, {secs}s each ({profile} build)");
    let mut test = cargo(root);
    test.args(["test", "-p", "tests", "--test", "it"]);
    if release {
        test.arg("--release");
    }
    test.args(["--", "--ignored", "--exact", "chaos::chaos_long", "--nocapture"])
        .env("RAFTKV_BIN_DIR", target_dir(root).join(profile))
        .env("RAFTKV_CHAOS_KEEP_DIR", target_dir(root).join("chaos-failures"))
        .env("CHAOS_SCHEDULES", schedules.to_string())
        .env("CHAOS_SEED", seed.to_string())
        .env("CHAOS_SECS", secs.to_string());
    run_checked(&mut test)
}
