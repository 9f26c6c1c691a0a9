//! How far `raftkv restore` is: a bar (indicatif) on stderr when it is a terminal, otherwise
//! a log line at most every [`PROGRESS_LOG_INTERVAL`] and one at the end
//! (`restore progress read_mib=12.0 total_mib=48.0 percent=25`), so a log of a long restore
//! in a script shows it moving.

use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use engine::offline::RestoreProgress;
use indicatif::{ProgressBar, ProgressStyle};

/// How often a progress line is logged when stderr is not a terminal.
pub(crate) const PROGRESS_LOG_INTERVAL: Duration = Duration::from_secs(5);

/// The renderer of a restore's progress: a bar on a terminal, log lines otherwise.
pub(crate) fn restore() -> (RestoreProgress, Option<ProgressBar>) {
    if std::io::stderr().is_terminal() {
        let style =
            ProgressStyle::with_template("restore [{bar:40}] {bytes}/{total_bytes}, {bytes_per_sec}, eta {eta}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> ");
        let bar = ProgressBar::new(0).with_style(style);
        let shown = bar.clone();
        let progress = RestoreProgress::new(move |done, total| {
            shown.set_length(total);
            shown.set_position(done);
        });
        return (progress, Some(bar));
    }
    let last = Mutex::new(Instant::now());
    let progress = RestoreProgress::new(move |done, total| {
        let Ok(mut last) = last.lock() else { return };
        if done >= total || last.elapsed() >= PROGRESS_LOG_INTERVAL {
            *last = Instant::now();
            log_line(done, total);
        }
    });
    (progress, None)
}

/// One progress line: bytes read of the total, in MiB, and the percentage.
fn log_line(done: u64, total: u64) {
    let (read_mib, total_mib) = (mib(done), mib(total));
    tracing::info!(read_mib, total_mib, percent = percent(done, total), "restore progress");
}

#[allow(clippy::cast_precision_loss)] // a figure for people
fn mib(bytes: u64) -> f64 {
    (bytes as f64 / f64::from(1 << 20) * 10.0).round() / 10.0
}

/// `done` of `total` in whole percent (100 when there is nothing to do).
fn percent(done: u64, total: u64) -> u64 {
    done.saturating_mul(100).checked_div(total).unwrap_or(100)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_are_for_people() {
        assert_eq!(percent(12 << 20, 48 << 20), 25);
        assert_eq!(percent(0, 0), 100);
        assert!((mib(3 << 20) - 3.0).abs() < f64::EPSILON);
        assert!((mib(1_500_000) - 1.4).abs() < f64::EPSILON);
    }
}
