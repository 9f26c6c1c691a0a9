//! What a failing chaos schedule leaves behind: the harness's own record of what it did
//! ([`Journal`]: every fault, every membership call and its result, with times) and a copy
//! of every node's log, kept under `target/chaos-failures/seed-N/` ([`keep`]). A passing
//! schedule keeps nothing.
//!
//! The directory is `RAFTKV_CHAOS_KEEP_DIR` when set (`cargo xtask chaos` sets it), else
//! `chaos-failures/` in the Cargo target directory the test executable runs from (the
//! nearest ancestor holding Cargo's `CACHEDIR.TAG`), else in the system's temporary
//! directory.

use std::fmt::Display;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// The harness's record of one schedule, line by line, each stamped with the time since the
/// record began.
#[derive(Debug)]
pub struct Journal {
    start: Instant,
    lines: Mutex<Vec<String>>,
}

impl Default for Journal {
    fn default() -> Self {
        Self::new()
    }
}

impl Journal {
    /// An empty record starting now; its first line gives the wall-clock time.
    #[must_use]
    pub fn new() -> Self {
        let journal = Journal { start: Instant::now(), lines: Mutex::new(Vec::new()) };
        let unix = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        journal.note(format_args!("record started at unix time {unix}"));
        journal
    }

    /// Appends `what`, stamped `t+SECONDS`.
    pub fn note(&self, what: impl Display) {
        let line = format!("t+{:8.3}s {what}", self.start.elapsed().as_secs_f64());
        self.lines.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(line);
    }

    /// Every line so far.
    #[must_use]
    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }
}

/// Where failing schedules are kept (see the module documentation).
#[must_use]
pub fn failures_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("RAFTKV_CHAOS_KEEP_DIR") {
        return PathBuf::from(dir);
    }
    let exe = std::env::current_exe().unwrap_or_default();
    target_dir_of(&exe).unwrap_or_else(std::env::temp_dir).join("chaos-failures")
}

/// The Cargo target directory `path` lies in: its nearest ancestor holding `CACHEDIR.TAG`.
fn target_dir_of(path: &Path) -> Option<PathBuf> {
    path.ancestors().skip(1).find(|dir| dir.join("CACHEDIR.TAG").is_file()).map(Path::to_path_buf)
}

/// Replaces `dest` with a copy of every node's log (`(id, path)`, kept as `ID.log`; a node
/// that never wrote one is skipped), the journal (`harness.log`) and `summary` (what
/// failed, `summary.txt`).
pub fn keep(dest: &Path, logs: &[(String, PathBuf)], journal: &Journal, summary: &str) -> io::Result<()> {
    match std::fs::remove_dir_all(dest) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    std::fs::create_dir_all(dest)?;
    for (id, path) in logs {
        match std::fs::copy(path, dest.join(format!("{id}.log"))) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    let mut text = journal.lines().join("\n");
    text.push('\n');
    std::fs::write(dest.join("harness.log"), text)?;
    std::fs::write(dest.join("summary.txt"), format!("{summary}\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journal_stamps_lines_in_order() {
        let j = Journal::new();
        j.note("fault IsolateLeader n1");
        j.note(format_args!("promote n2: {}", "refused"));
        let lines = j.lines();
        assert_eq!(lines.len(), 3, "{lines:?}");
        assert!(lines[0].contains("record started at unix time"), "{lines:?}");
        assert!(lines[1].starts_with("t+") && lines[1].ends_with("s fault IsolateLeader n1"), "{lines:?}");
        assert!(lines[2].ends_with("s promote n2: refused"), "{lines:?}");
    }

    #[test]
    fn keep_copies_every_log_and_the_journal_and_replaces_an_older_copy() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        let n1 = dir.path().join("n1.log");
        std::fs::write(&n1, "n1 line\n")?;
        let dest = dir.path().join("failures").join("seed-7");
        std::fs::create_dir_all(&dest)?;
        std::fs::write(dest.join("stale.log"), "from an older run")?;
        let journal = Journal::new();
        journal.note("promote n2 -> FailedPrecondition");
        let logs = vec![("n1".to_string(), n1), ("n2".to_string(), dir.path().join("never-started.log"))];
        keep(&dest, &logs, &journal, "after healing: timed out")?;
        assert_eq!(std::fs::read_to_string(dest.join("n1.log"))?, "n1 line\n");
        assert!(!dest.join("n2.log").exists());
        assert!(!dest.join("stale.log").exists(), "an older copy must be replaced");
        assert!(std::fs::read_to_string(dest.join("harness.log"))?.contains("promote n2 -> FailedPrecondition"));
        assert_eq!(std::fs::read_to_string(dest.join("summary.txt"))?, "after healing: timed out\n");
        Ok(())
    }

    #[test]
    fn the_target_dir_is_the_ancestor_with_cachedir_tag() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        let target = dir.path().join("target");
        let deps = target.join("debug").join("deps");
        std::fs::create_dir_all(&deps)?;
        assert_eq!(target_dir_of(&deps.join("chaos-0123")), None);
        std::fs::write(target.join("CACHEDIR.TAG"), "Signature: 8a477f597d28d172789f06886806bc55\n")?;
        assert_eq!(target_dir_of(&deps.join("chaos-0123")), Some(target));
        Ok(())
    }
}
