//! `raftkvctl status --watch`: the status picture, asked again every [`REFRESH`] until
//! interrupted.
//!
//! On a terminal it is redrawn in place with plain ANSI sequences (no raw mode, no terminal
//! library, so it works over ssh and in any terminal that speaks VT100): the alternate
//! screen and a hidden cursor while it runs, both given back when it ends, on Ctrl-C
//! (SIGINT), SIGTERM, SIGHUP, an error writing, or a panic. Elsewhere (a pipe, a file) each
//! picture is printed after the last, with no escape sequences.

use std::io::Write;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Result;
use tokio::signal::unix::{SignalKind, signal};

/// How often the picture is refreshed.
pub(crate) const REFRESH: Duration = Duration::from_secs(1);

/// Enter the alternate screen, hide the cursor.
const ENTER: &str = "\x1b[?1049h\x1b[?25l";
/// Show the cursor, leave the alternate screen (the shell's screen comes back as it was).
const LEAVE: &str = "\x1b[?25h\x1b[?1049l";
/// Cursor to the top left.
const HOME: &str = "\x1b[H";
/// Clear to the end of the line.
const CLEAR_LINE: &str = "\x1b[K";
/// Clear from the cursor to the end of the screen.
const CLEAR_BELOW: &str = "\x1b[J";

/// Gives the terminal back when dropped, however the watch ends (stdout's lock is
/// reentrant: this writes through it even while the caller holds it).
struct Screen;

impl Screen {
    fn enter(out: &mut impl Write) -> std::io::Result<Self> {
        out.write_all(ENTER.as_bytes())?;
        out.flush()?;
        Ok(Self)
    }
}

impl Drop for Screen {
    fn drop(&mut self) {
        // Nothing more can be done if the terminal is gone.
        let mut out = std::io::stdout();
        let _ = out.write_all(LEAVE.as_bytes());
        let _ = out.flush();
    }
}

/// Runs the watch: `render` writes one picture into the buffer it is given; an error it
/// returns is shown below what it wrote, and the watch goes on.
pub(crate) async fn run<W: Write>(out: &mut W, mut render: impl AsyncFnMut(&mut Vec<u8>) -> Result<()>) -> Result<()> {
    let terminal = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    let mut hangup = signal(SignalKind::hangup())?;
    let screen = if terminal { Some(Screen::enter(out)?) } else { None };
    loop {
        let mut frame =
            format!("Every {}s: raftkvctl status (Ctrl-C to quit)  {}\n\n", REFRESH.as_secs(), clock()).into_bytes();
        let step = async {
            if let Err(e) = render(&mut frame).await {
                frame.extend_from_slice(format!("\nerror: {}\n", crate::error_text(&e)).as_bytes());
            }
            tokio::time::sleep(REFRESH).await;
        };
        // The picture is shown as soon as it is complete; the wait before the next runs on.
        let shown = tokio::select! {
            () = step => true,
            _ = interrupt.recv() => false,
            _ = terminate.recv() => false,
            _ = hangup.recv() => false,
        };
        if !shown {
            return Ok(());
        }
        match &screen {
            Some(Screen) => draw(out, &frame)?,
            None => {
                out.write_all(&frame)?;
                writeln!(out)?;
                out.flush()?;
            }
        }
    }
}

/// Redraws the screen with `frame`: each line overwrites the last picture's and clears what
/// is left of it; whatever was below is cleared.
fn draw(out: &mut impl Write, frame: &[u8]) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(frame.len() + 256);
    buf.extend_from_slice(HOME.as_bytes());
    for line in frame.split(|b| *b == b'\n') {
        buf.extend_from_slice(line);
        buf.extend_from_slice(CLEAR_LINE.as_bytes());
        buf.push(b'\n');
    }
    buf.extend_from_slice(CLEAR_BELOW.as_bytes());
    out.write_all(&buf)?;
    out.flush()
}

/// The time of day, UTC, as `HH:MM:SS UTC`.
fn clock() -> String {
    let secs = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()) % 86_400;
    format!("{:02}:{:02}:{:02} UTC", secs / 3600, secs / 60 % 60, secs % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_redraw_overwrites_each_line_and_clears_below() -> std::io::Result<()> {
        let mut out = Vec::new();
        draw(&mut out, b"a\nbb")?;
        assert_eq!(String::from_utf8_lossy(&out), "\x1b[Ha\x1b[K\nbb\x1b[K\n\x1b[J");
        Ok(())
    }
}
