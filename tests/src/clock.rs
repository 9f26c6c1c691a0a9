//! Clock faults with libfaketime (Debian's `faketime` package): a node started with
//! `LD_PRELOAD=libfaketimeMT.so.1` reads its clocks through libfaketime, which takes the
//! offset and rate from a file the harness rewrites while the node runs ([`FakeClock`]).
//!
//! What is faked (libfaketime 0.9.10, checked here with a probe that printed both clocks
//! while the file changed): `CLOCK_REALTIME` **and** `CLOCK_MONOTONIC` (also `_RAW`,
//! `_COARSE` and `CLOCK_BOOTTIME`), because `FAKETIME_DONT_FAKE_MONOTONIC` is not set; and
//! the timed waits (`nanosleep`, `poll`, `epoll_wait`, `pthread_cond_timedwait`, …) are
//! scaled by the rate. tokio's timers and openraft's election timers and leader lease read
//! `std::time::Instant`, that is `CLOCK_MONOTONIC`, so a skewed node's elections,
//! heartbeats and lease all run on the skewed clock, and a jump of the offset is a jump of
//! the monotonic clock too (forward, it is what a node frozen for a while sees). A rate
//! applies from the
//! process's start, so [`FakeClock::set_rate`] moves the offset to change the rate without a
//! step. The file is read again at most once a second (`FAKETIME_CACHE_DURATION=1`), or on
//! every clock call with [`FakeClock::uncached`].
//!
//! Steps **back** of the monotonic clock (which Linux never makes, but libfaketime can) are
//! left out of the schedules, for what they do to the process rather than to Raft: tokio
//! fires every timer armed after the step at once until the clock catches up (a node stepped
//! back a minute answers every request with a time-out or a reset connection for that
//! minute), and openraft 0.10.0-alpha.37 asserts in debug builds that its lease clock never
//! goes back (`utime.rs:157`, "expect now … must >= self.utime"), so a debug build panics and
//! the node fail-stops. A step back of the wall clock alone (an NTP step) would need
//! `FAKETIME_DONT_FAKE_MONOTONIC=1`, and then no rate fault could reach the timers; raftkv
//! reads the wall clock only for log lines, gossip's generation number at start, and
//! certificate-file time stamps, none of them a Raft decision.

use std::path::{Path, PathBuf};

use crate::BoxError;

/// 10 % fast.
pub const FAST: f64 = 1.1;
/// 10 % slow.
pub const SLOW: f64 = 0.9;
/// A jump (forward): a minute.
pub const MINUTE: f64 = 60.0;
/// The clock's ticks per second in `/proc/PID/stat` (`getconf CLK_TCK`, 100 on Linux).
const CLK_TCK: f64 = 100.0;

/// Every spec line is padded to this width, so each write replaces the whole line.
const SPEC_WIDTH: usize = 24;

/// Where Debian's `faketime` package puts the library (the multi-threaded variant).
const LIBRARIES: [&str; 2] =
    ["/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1", "/usr/lib/aarch64-linux-gnu/faketime/libfaketimeMT.so.1"];

/// The libfaketime library, when installed.
#[must_use]
pub fn library() -> Option<PathBuf> {
    LIBRARIES.iter().map(PathBuf::from).find(|p| p.exists())
}

/// One node's fake clock: the file libfaketime reads, and the environment that loads it.
#[derive(Debug)]
pub struct FakeClock {
    file: PathBuf,
    library: PathBuf,
    cached: bool,
    /// The offset (seconds) and rate written last.
    state: std::sync::Mutex<(f64, f64)>,
}

impl FakeClock {
    /// A clock for node `id`, its file in `dir`, running normally. Fails when libfaketime is
    /// not installed.
    pub fn new(dir: &Path, id: &str) -> Result<Self, BoxError> {
        let library = library().ok_or("libfaketime not found: install Debian's `faketime` package (.ci/run does)")?;
        let clock = Self {
            file: dir.join(format!("{id}.faketime")),
            library,
            cached: true,
            state: std::sync::Mutex::new((0.0, 1.0)),
        };
        clock.write(0.0, 1.0)?;
        Ok(clock)
    }

    /// The node reads the file on every clock call, so a change takes effect at once
    /// (slower; for a test that times a change against an election timeout).
    #[must_use]
    pub fn uncached(mut self) -> Self {
        self.cached = false;
        self
    }

    /// The environment that runs a process on this clock.
    #[must_use]
    pub fn env(&self) -> Vec<(String, String)> {
        let mut env = vec![
            ("LD_PRELOAD".to_string(), self.library.display().to_string()),
            ("FAKETIME_TIMESTAMP_FILE".to_string(), self.file.display().to_string()),
        ];
        if self.cached {
            env.push(("FAKETIME_CACHE_DURATION".to_string(), "1".to_string()));
        } else {
            env.push(("FAKETIME_NO_CACHE".to_string(), "1".to_string()));
        }
        env
    }

    fn state(&self) -> std::sync::MutexGuard<'_, (f64, f64)> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The rate and offset now in force.
    #[must_use]
    pub fn rate(&self) -> f64 {
        self.state().1
    }

    /// Makes the clock of process `pid` run at `rate` from now on **without a step**:
    /// libfaketime applies a rate from the process's start, so the offset is moved by
    /// `uptime × (old rate − rate)` to keep the clock where it is (to within the 10 ms of
    /// `/proc`'s start time). Without a process (not running), only the rate changes.
    pub fn set_rate(&self, pid: Option<u32>, rate: f64) -> Result<(), BoxError> {
        let mut state = self.state();
        let (offset, old) = *state;
        let uptime = pid.map(uptime).transpose()?.unwrap_or(0.0);
        let offset = offset + uptime * (old - rate);
        self.write(offset, rate)?;
        *state = (offset, rate);
        Ok(())
    }

    /// Steps the clock by `secs` (negative: back).
    pub fn jump(&self, secs: f64) -> Result<(), BoxError> {
        let mut state = self.state();
        let (offset, rate) = *state;
        self.write(offset + secs, rate)?;
        *state = (offset + secs, rate);
        Ok(())
    }

    /// Writes libfaketime's spec (an offset in seconds, `x`, a rate; `-60s` would not be read
    /// as negative, `-60 x1` is). The file is overwritten in place with one write of a
    /// fixed-width line (no truncation, no rename: with `FAKETIME_NO_CACHE` libfaketime keeps
    /// reading the file it opened), so the node never reads half a line.
    fn write(&self, offset: f64, rate: f64) -> Result<(), BoxError> {
        use std::io::Write as _;
        let spec = format!("{offset:+.3} x{rate}");
        let line = format!("{spec:<SPEC_WIDTH$}\n");
        if line.len() != SPEC_WIDTH + 1 {
            return Err(format!("clock spec {spec:?} is longer than {SPEC_WIDTH} bytes").into());
        }
        let mut file = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&self.file)?;
        file.write_all(line.as_bytes())?;
        Ok(())
    }
}

/// How long process `pid` has run, in seconds (from `/proc`).
fn uptime(pid: u32) -> Result<f64, BoxError> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Field 22 (start time, in clock ticks since boot), counted after the command name,
    // which ends at the last ')'.
    let after = stat.rsplit_once(')').map(|(_, rest)| rest).ok_or("unreadable /proc stat")?;
    let ticks: f64 = after.split_whitespace().nth(19).ok_or("short /proc stat")?.parse()?;
    let boot: f64 =
        std::fs::read_to_string("/proc/uptime")?.split_whitespace().next().ok_or("unreadable /proc/uptime")?.parse()?;
    Ok((boot - ticks / CLK_TCK).max(0.0))
}
