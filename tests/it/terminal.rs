//! `raftkvctl status --watch` in a real terminal: tmux, on a private server socket, runs it
//! in a shell; the test reads the screen, presses Ctrl-C, and checks that the process is
//! gone and the terminal is as it was (main screen, cursor shown).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use tests::{Cluster, FAST_TIMING, TestResult, binary, wait_for};

/// A tmux server of its own, killed (by its socket) when dropped.
struct Tmux {
    socket: PathBuf,
}

impl Tmux {
    fn run(&self, args: &[&str]) -> std::io::Result<Output> {
        Command::new("tmux").arg("-S").arg(&self.socket).args(args).output()
    }

    fn text(&self, args: &[&str]) -> String {
        self.run(args).map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default()
    }

    /// The visible screen of the pane (wrapped lines joined).
    fn screen(&self) -> String {
        self.text(&["capture-pane", "-p", "-J", "-t", "w"])
    }

    /// `#{alternate_on} #{cursor_flag}`: `1 0` while the watch runs, `0 1` after.
    fn modes(&self) -> String {
        self.text(&["display-message", "-p", "-t", "w", "#{alternate_on} #{cursor_flag}"]).trim().to_string()
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.run(&["kill-server"]);
    }
}

fn running(pid: &str) -> bool {
    Path::new("/proc").join(pid).exists()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs tmux on PATH; .ci/run installs it and runs this with --run-ignored only"]
async fn status_watch_redraws_in_tmux_and_leaves_the_terminal_clean() -> TestResult {
    let cluster = Cluster::start(3, &FAST_TIMING).await?;
    let dir = tempfile::tempdir()?;
    let tmux = Tmux { socket: dir.path().join("tmux.sock") };
    let out = tmux.run(&["new-session", "-d", "-s", "w", "-x", "250", "-y", "50", "sh"])?;
    assert!(out.status.success(), "tmux new-session: {}", String::from_utf8_lossy(&out.stderr));
    let pid_file = dir.path().join("pid");
    // The shell records raftkvctl's pid, then becomes it.
    let line = format!(
        "sh -c 'echo $$ > {}; exec {} --endpoints {} status --watch'",
        pid_file.display(),
        binary("raftkvctl").display(),
        cluster.endpoints().join(",")
    );
    tmux.run(&["send-keys", "-t", "w", "-l", &line])?;
    tmux.run(&["send-keys", "-t", "w", "Enter"])?;
    wait_for("the three members on the watch's screen", Duration::from_secs(30), || async {
        let screen = tmux.screen();
        screen.contains("Every 1s: raftkvctl status")
            && ["n1", "n2", "n3"].iter().all(|id| screen.contains(id))
            && screen.contains("leader:")
    })
    .await
    .map_err(|e| format!("{e}; the screen:\n{}", tmux.screen()))?;
    assert_eq!(tmux.modes(), "1 0", "on the alternate screen, cursor hidden");
    let pid = std::fs::read_to_string(&pid_file)?.trim().to_string();
    assert!(running(&pid), "raftkvctl runs as pid {pid}");

    // The picture is redrawn: the clock in its title moves every second.
    let title = |s: &str| s.lines().next().unwrap_or_default().to_string();
    let first = title(&tmux.screen());
    wait_for("a redraw", Duration::from_secs(10), || async { title(&tmux.screen()) != first }).await?;

    tmux.run(&["send-keys", "-t", "w", "C-c"])?;
    wait_for("raftkvctl to exit on Ctrl-C", Duration::from_secs(10), || async { !running(&pid) }).await?;
    wait_for("the terminal restored", Duration::from_secs(10), || async { tmux.modes() == "0 1" }).await?;
    let screen = tmux.screen();
    assert!(!screen.contains("Every 1s"), "the watch's picture is gone with the alternate screen:\n{screen}");
    assert!(screen.contains("status --watch"), "the shell's screen is back, with the command typed:\n{screen}");
    Ok(())
}
