//! raftkv's latency figures.
//!
//! - [`Histogram`]: a lock-free histogram of durations (log-linear buckets, about 3 %
//!   precision), recorded from any thread without a lock or an allocation, read as a
//!   [`Snapshot`] (count, sum, max, quantiles, buckets for exporters, differences).
//! - [`WriteStages`]: where the time of a write goes on the node that proposed it, from
//!   proposed through appended, durable, committed and applied to answered: a clock per log
//!   index in a bounded ring, stamped by the log store, the state machine and the service,
//!   and one step histogram and one cumulative histogram per stage. The admin API's
//!   `WriteStages` call reports it (`raftkvctl bench --stages`, `raftkvctl status --stages`).
//!
//! This crate owns the measuring and nothing else. It must never depend on a crate of ours,
//! nor on tokio, tonic, openraft or redb: the log store, the state machine and the service
//! all stamp into it, and none of them may depend on another. `cargo xtask deps` checks this.

mod histogram;
mod stages;

pub use histogram::{BUCKETS, Histogram, Snapshot};
pub use stages::{CLOCK_SLOTS, Report, Stage, StageFigures, Stamp, WriteStages};
