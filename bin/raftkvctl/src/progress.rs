//! Progress of long work (`bench`, `snapshot save`), on stderr so that stdout keeps only the
//! answer: a bar (indicatif) when stderr is a terminal, otherwise one line at most every
//! [`PROGRESS_LOG_INTERVAL`] (`raftkvctl: snapshot save: 12.0 MiB of 48.0 MiB (25%)`), so a
//! log of a long run in a script or CI shows it moving.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

/// How often a progress line is printed when stderr is not a terminal.
pub(crate) const PROGRESS_LOG_INTERVAL: Duration = Duration::from_secs(5);

/// What is counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Unit {
    /// Requests.
    Requests,
    /// Bytes.
    Bytes,
}

/// The progress of one piece of work; clones share it.
#[derive(Debug, Clone)]
pub(crate) struct Progress(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    what: String,
    unit: Unit,
    total: AtomicU64,
    done: AtomicU64,
    bar: Option<ProgressBar>,
    /// When the last line was printed (no bar).
    last_line: Mutex<Instant>,
}

impl Progress {
    /// Progress of `what`, out of `total` (0: not known yet, see [`Progress::set_total`]).
    pub(crate) fn new(what: &str, total: u64, unit: Unit) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let template = match unit {
                Unit::Requests => "{msg} [{bar:40}] {pos}/{len} requests, {per_sec}, eta {eta}",
                Unit::Bytes => "{msg} [{bar:40}] {bytes}/{total_bytes}, {bytes_per_sec}, eta {eta}",
            };
            let style = ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar());
            ProgressBar::new(total).with_style(style.progress_chars("=> ")).with_message(what.to_string())
        });
        Self(Arc::new(Inner {
            what: what.to_string(),
            unit,
            total: AtomicU64::new(total),
            done: AtomicU64::new(0),
            bar,
            last_line: Mutex::new(Instant::now()),
        }))
    }

    /// Sets the total, once it is known.
    pub(crate) fn set_total(&self, total: u64) {
        self.0.total.store(total, Ordering::Relaxed);
        if let Some(bar) = &self.0.bar {
            bar.set_length(total);
        }
    }

    /// Counts `n` more done.
    pub(crate) fn inc(&self, n: u64) {
        let done = self.0.done.fetch_add(n, Ordering::Relaxed) + n;
        match &self.0.bar {
            Some(bar) => bar.inc(n),
            None => {
                let Ok(mut last) = self.0.last_line.lock() else { return };
                if last.elapsed() >= PROGRESS_LOG_INTERVAL {
                    *last = Instant::now();
                    #[allow(clippy::print_stderr)] // progress goes to stderr, beside errors
                    {
                        eprintln!("raftkvctl: {}", self.line(done));
                    }
                }
            }
        }
    }

    /// The progress line for `done`.
    fn line(&self, done: u64) -> String {
        let total = self.0.total.load(Ordering::Relaxed);
        let amount = |n: u64| match self.0.unit {
            Unit::Requests => n.to_string(),
            #[allow(clippy::cast_precision_loss)] // a figure for people
            Unit::Bytes => format!("{:.1} MiB", n as f64 / f64::from(1 << 20)),
        };
        let unit = if self.0.unit == Unit::Requests { " requests" } else { "" };
        if total == 0 {
            return format!("{}: {}{unit}", self.0.what, amount(done));
        }
        format!("{}: {} of {}{unit} ({}%)", self.0.what, amount(done), amount(total), done.saturating_mul(100) / total)
    }

    /// How much is done so far.
    pub(crate) fn done(&self) -> u64 {
        self.0.done.load(Ordering::Relaxed)
    }

    /// Ends the bar (removed from the screen: the answer follows on stdout).
    pub(crate) fn finish(&self) {
        if let Some(bar) = &self.0.bar {
            bar.finish_and_clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_say_how_far_in_the_unit() {
        let p = Progress::new("bench put", 200, Unit::Requests);
        assert_eq!(p.line(50), "bench put: 50 of 200 requests (25%)");
        let p = Progress::new("snapshot save", 0, Unit::Bytes);
        assert_eq!(p.line(3 << 20), "snapshot save: 3.0 MiB");
        p.set_total(12 << 20);
        assert_eq!(p.line(3 << 20), "snapshot save: 3.0 MiB of 12.0 MiB (25%)");
    }
}
