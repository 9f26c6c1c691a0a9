//! `cargo xtask chaos --schedules N [--seed S] [--secs T] [--debug] [--clock]
//! [--client-links] [--wan-secs W]`: the long fault-injection tier.
//!
//! Builds the binaries (release unless `--debug`), then runs the ignored test
//! `chaos::chaos_long` of the test binary `it` (`tests/it/chaos.rs`) with `CHAOS_SCHEDULES`,
//! `CHAOS_SEED` and `CHAOS_SECS`, through `cargo test` (not nextest, whose slow-test timeout
//! would end a long run). The test prints each schedule's report, every failing seed with the
//! command that replays it, and a summary line. A failing schedule keeps every node's log and
//! the harness's record of its faults and membership calls in `target/chaos-failures/seed-N/`
//! (`RAFTKV_CHAOS_KEEP_DIR`). `--clock` sets `CHAOS_CLOCK=1` (clock faults mixed in),
//! `--client-links` `CHAOS_CLIENT_LINKS=1` (client-link faults mixed in);
//! `--wan-secs W` then runs the test `netns::wan_profile_keeps_its_leader` with
//! `RAFTKV_WAN_SECS=W`.
//! xtask itself depends on no crate of ours but the process harness, `proc-harness`.

use std::path::Path;

use anyhow::Result;

use crate::{cargo, run_checked, target_dir};

/// What `cargo xtask chaos` runs.
pub(crate) struct Options {
    pub(crate) schedules: u64,
    pub(crate) seed: Option<u64>,
    pub(crate) secs: u64,
    pub(crate) release: bool,
    pub(crate) clock: bool,
    pub(crate) client_links: bool,
    pub(crate) wan_secs: Option<u64>,
}

pub(crate) fn run(root: &Path, o: &Options) -> Result<()> {
    let profile = if o.release { "release" } else { "debug" };
    let mut build = cargo(root);
    build.args(["build", "--workspace", "--bins"]);
    if o.release {
        build.arg("--release");
    }
    run_checked(&mut build)?;
    let seed = o.seed.unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_secs() % 1_000_000)
    });
    // One test of the binary `it`, by its exact name (`--ignored` for an ignored one).
    let test = |name: &str, ignored: bool| {
        let mut test = cargo(root);
        test.args(["test", "-p", "tests", "--test", "it"]);
        if o.release {
            test.arg("--release");
        }
        test.arg("--");
        if ignored {
            test.arg("--ignored");
        }
        test.args(["--exact", name, "--nocapture"])
            .env("RAFTKV_BIN_DIR", target_dir(root).join(profile))
            .env("RAFTKV_CHAOS_KEEP_DIR", target_dir(root).join("chaos-failures"));
        test
    };
    if o.schedules > 0 {
        let (schedules, secs, clock) = (o.schedules, o.secs, o.clock);
        eprintln!(
            "chaos: {schedules} schedules from seed {seed}, {secs}s each ({profile} build, clock faults: {clock})"
        );
        let mut chaos = test("chaos::chaos_long", true);
        chaos
            .env("CHAOS_SCHEDULES", schedules.to_string())
            .env("CHAOS_SEED", seed.to_string())
            .env("CHAOS_SECS", secs.to_string())
            .env("CHAOS_CLOCK", u8::from(clock).to_string())
            .env("CHAOS_CLIENT_LINKS", u8::from(o.client_links).to_string());
        run_checked(&mut chaos)?;
    }
    if let Some(wan) = o.wan_secs {
        eprintln!("chaos: the WAN profile for {wan}s ({profile} build)");
        let mut wan_test = test("netns::wan_profile_keeps_its_leader", false);
        wan_test.env("RAFTKV_WAN_SECS", wan.to_string());
        run_checked(&mut wan_test)?;
    }
    Ok(())
}
