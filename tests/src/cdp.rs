//! Headless Chromium driven through the Chrome DevTools Protocol, for the status page test:
//! [`Browser::open`] starts Debian's `chromium` on a page (its own temporary profile, the
//! DevTools port chosen by the OS), and [`Browser::eval`] evaluates JavaScript in that page,
//! which keeps running between calls (no reload). The WebSocket client is the minimum the
//! protocol needs (masked text frames out, text frames in), over std's blocking sockets.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::BoxError;

/// How long Chromium may take to open its DevTools port.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long one DevTools call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(20);

/// `chromium` (or `chromium-browser`) on `PATH`, if there is one.
#[must_use]
pub fn find_chromium() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .flat_map(|dir| ["chromium", "chromium-browser"].map(|name| dir.join(name)))
        .find(|p| p.is_file())
}

/// A headless Chromium showing one page; killed (by its PID) on drop.
pub struct Browser {
    child: Child,
    ws: Option<TcpStream>,
    next_id: u64,
    /// The profile directory (removed on drop).
    pub dir: tempfile::TempDir,
}

impl Browser {
    /// Starts `chromium` on `url` and connects to the page's DevTools target.
    pub fn open(chromium: &std::path::Path, url: &str) -> Result<Browser, BoxError> {
        let dir = tempfile::tempdir()?;
        let log = std::fs::File::create(dir.path().join("chromium.log"))?;
        let child = Command::new(chromium)
            .args(["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--remote-debugging-port=0"])
            .arg(format!("--user-data-dir={}", dir.path().join("profile").display()))
            .arg("--window-size=1280,900")
            .arg(url)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .spawn()?;
        // Built before connecting, so that a failure to connect still kills the process.
        let mut browser = Browser { child, ws: None, next_id: 0, dir };
        browser.ws = Some(browser.connect(url)?);
        Ok(browser)
    }

    /// Waits for the DevTools port, finds the page showing `url`, and opens its WebSocket.
    fn connect(&mut self, url: &str) -> Result<TcpStream, BoxError> {
        let port_file = self.dir.path().join("profile").join("DevToolsActivePort");
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(port) = std::fs::read_to_string(&port_file).ok().and_then(|t| t.lines().next()?.parse().ok())
                && let Ok(list) = http_get(port, "/json/list")
                && let Some(ws_url) = page_socket(&list, url)
            {
                return websocket(port, &ws_url);
            }
            if let Some(status) = self.child.try_wait()? {
                return Err(format!("chromium exited with {status}; log:\n{}", self.log()).into());
            }
            if Instant::now() > deadline {
                return Err(format!("chromium showed no page within {START_TIMEOUT:?}; log:\n{}", self.log()).into());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Chromium's own output.
    #[must_use]
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("chromium.log")).unwrap_or_default()
    }

    /// Evaluates `expression` in the page and returns its value (by value: JSON).
    pub fn eval(&mut self, expression: &str) -> Result<serde_json::Value, BoxError> {
        self.next_id += 1;
        let id = self.next_id;
        let call = serde_json::json!({
            "id": id,
            "method": "Runtime.evaluate",
            "params": {"expression": expression, "returnByValue": true},
        });
        let ws = self.ws.as_mut().ok_or("not connected")?;
        send_text(ws, call.to_string().as_bytes())?;
        loop {
            let message: serde_json::Value = serde_json::from_slice(&read_message(ws)?)?;
            if message["id"] == id {
                if let Some(e) = message.get("error") {
                    return Err(format!("Runtime.evaluate failed: {e}").into());
                }
                return Ok(message["result"]["result"]["value"].clone());
            }
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The WebSocket URL of the page target showing `url`.
fn page_socket(list: &str, url: &str) -> Option<String> {
    let targets: Vec<serde_json::Value> = serde_json::from_str(list).ok()?;
    targets
        .iter()
        .find(|t| t["type"] == "page" && t["url"].as_str().is_some_and(|u| u.starts_with(url)))
        .and_then(|t| t["webSocketDebuggerUrl"].as_str().map(str::to_string))
}

/// A plain HTTP/1.1 GET on 127.0.0.1; returns the body.
pub fn http_get(port: u16, path: &str) -> Result<String, BoxError> {
    let (status, body) = http_get_status(&format!("127.0.0.1:{port}"), path)?;
    if status != 200 {
        return Err(format!("GET {path}: HTTP {status}").into());
    }
    Ok(body)
}

/// A plain HTTP/1.1 GET of `path` at `addr`; returns the status code and the body (read to
/// its `content-length`, or to the end of the connection).
pub fn http_get_status(addr: &str, path: &str) -> Result<(u16, String), BoxError> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(CALL_TIMEOUT))?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")?;
    let mut reader = BufReader::new(s);
    let mut head = String::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line == "\r\n" {
            break;
        }
        head.push_str(&line);
    }
    let status = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).ok_or("no status line")?;
    let lower = head.to_ascii_lowercase();
    let length = lower.lines().find_map(|l| l.strip_prefix("content-length:")).and_then(|v| v.trim().parse().ok());
    let mut body = Vec::new();
    match length {
        Some(n) => {
            body.resize(n, 0);
            reader.read_exact(&mut body)?;
        }
        None => {
            reader.read_to_end(&mut body)?;
        }
    }
    let body = String::from_utf8(body)?;
    let chunked = lower.contains("transfer-encoding: chunked");
    Ok((status, if chunked { dechunk(&body)? } else { body }))
}

/// The body of a chunked response.
fn dechunk(mut body: &str) -> Result<String, BoxError> {
    let mut out = String::new();
    loop {
        let (size, rest) = body.split_once("\r\n").ok_or("bad chunk")?;
        let size = usize::from_str_radix(size.trim(), 16)?;
        if size == 0 {
            return Ok(out);
        }
        out.push_str(rest.get(..size).ok_or("short chunk")?);
        body = rest.get(size + 2..).ok_or("short chunk")?;
    }
}

/// Opens the WebSocket at `ws_url` (`ws://127.0.0.1:PORT/PATH`).
fn websocket(port: u16, ws_url: &str) -> Result<TcpStream, BoxError> {
    let path = ws_url.split_once(&format!(":{port}")).map(|(_, p)| p).ok_or("bad WebSocket URL")?;
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(CALL_TIMEOUT))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )?;
    let mut reader = BufReader::new(s.try_clone()?);
    let mut status = String::new();
    reader.read_line(&mut status)?;
    if !status.contains(" 101 ") {
        return Err(format!("WebSocket upgrade refused: {status}").into());
    }
    loop {
        let mut line = String::new();
        reader.read_line(&mut line)?;
        if line == "\r\n" || line.is_empty() {
            break;
        }
    }
    if !reader.buffer().is_empty() {
        return Err("unexpected data after the WebSocket upgrade".into());
    }
    Ok(s)
}

/// Sends one masked text frame.
fn send_text(s: &mut TcpStream, payload: &[u8]) -> Result<(), BoxError> {
    let mask = [0x5a, 0x13, 0xc7, 0x2e];
    let mut frame = vec![0x81];
    match payload.len() {
        n if n < 126 => frame.push(0x80 | n as u8),
        n if n <= 0xffff => {
            frame.push(0x80 | 126);
            frame.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            frame.push(0x80 | 127);
            frame.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    s.write_all(&frame)?;
    Ok(())
}

/// Reads one whole message (its frames joined); control frames other than close are skipped.
fn read_message(s: &mut TcpStream) -> Result<Vec<u8>, BoxError> {
    let mut message = Vec::new();
    loop {
        let mut head = [0u8; 2];
        s.read_exact(&mut head)?;
        let (fin, opcode) = (head[0] & 0x80 != 0, head[0] & 0x0f);
        let len = match head[1] & 0x7f {
            126 => {
                let mut b = [0u8; 2];
                s.read_exact(&mut b)?;
                u64::from(u16::from_be_bytes(b))
            }
            127 => {
                let mut b = [0u8; 8];
                s.read_exact(&mut b)?;
                u64::from_be_bytes(b)
            }
            n => u64::from(n),
        };
        let mut payload = vec![0u8; usize::try_from(len)?];
        s.read_exact(&mut payload)?;
        match opcode {
            0x8 => return Err("the browser closed the DevTools connection".into()),
            0x9 | 0xa => continue,
            _ => message.extend_from_slice(&payload),
        }
        if fin {
            return Ok(message);
        }
    }
}
