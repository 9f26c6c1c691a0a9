//! The cluster tests: one test binary, `it`, one module per area, all on real `raftkv`
//! processes on 127.0.0.1 started through the harness of the `tests` library
//! (`tests/src/lib.rs`).
//!
//! One binary rather than one per area, so that the harness and its dependencies are linked
//! once, not once per area. A module's tests are named `MODULE::TEST`: `cargo nextest run -p
//! tests -E 'test(/^kv::/)'` runs the kv tests. `.config/nextest.toml` runs them one at a
//! time (test group `cluster`).

mod admin;
mod auth;
mod bad_input;
mod chaos;
mod clock;
mod cluster;
mod compat;
mod config;
mod corrupt;
mod disk;
mod etcd;
mod etcd_auth;
mod etcd_lease;
mod etcd_maint;
mod etcd_watch;
mod faults;
mod gossip;
mod hashicorp;
mod kv;
mod netns;
mod observability;
mod overload;
mod stages;
mod terminal;
mod tls;
mod watch;
