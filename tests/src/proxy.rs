//! A userspace TCP proxy per directed link, which the fault harness controls.
//!
//! A [`Link`] listens on 127.0.0.1 (port from the OS) and forwards every connection to its
//! target, byte for byte, in both directions. Each direction has a [`Mode`]:
//!
//! - `Pass`: bytes go through at once;
//! - `Delay { base, jitter }`: each chunk is held `base ± jitter` (order is kept);
//! - `Blackhole`: bytes read are dropped and the connection stays open (a partition; new
//!   connections are accepted and go nowhere). A connection that lost bytes is closed when
//!   the direction passes again, so a healed link never carries a stream with a hole in it
//!   (as a real TCP connection would time out and be replaced).
//!
//! [`Link::reset`] closes every open connection (a connection reset). The harness gives
//! each node, through static `--peers`, one link per peer for Raft traffic and one for
//! forwarded client calls, so the link a byte travels on names its source and destination.
//! "Forward" is from the connecting node to the target, "backward" the answers.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};

use crate::BoxError;

/// What one direction of a link does with bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// Forward at once.
    #[default]
    Pass,
    /// Forward each chunk after `base ± jitter`.
    Delay {
        /// The delay.
        base: Duration,
        /// At most this much more or less.
        jitter: Duration,
    },
    /// Drop everything.
    Blackhole,
}

/// Both directions of a link, and how many resets were asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LinkState {
    /// From the connecting side to the target.
    pub forward: Mode,
    /// From the target back to the connecting side.
    pub backward: Mode,
    resets: u64,
}

/// One directed link: a listener and the connections it carries.
pub struct Link {
    addr: SocketAddr,
    target: Arc<Mutex<Option<SocketAddr>>>,
    state: watch::Sender<LinkState>,
    accept: tokio::task::JoinHandle<()>,
}

impl Link {
    /// Binds a listener on 127.0.0.1 and starts accepting; connections are refused (closed)
    /// until a target is set.
    pub async fn start(seed: u64) -> Result<Self, BoxError> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let target: Arc<Mutex<Option<SocketAddr>>> = Arc::new(Mutex::new(None));
        let (state, _) = watch::channel(LinkState::default());
        let (t, s) = (target.clone(), state.clone());
        let accept = tokio::spawn(async move {
            let mut n = 0u64;
            while let Ok((inbound, _)) = listener.accept().await {
                n += 1;
                let to = *t.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                let Some(to) = to else { continue };
                let _ = inbound.set_nodelay(true);
                tokio::spawn(carry(inbound, to, s.subscribe(), seed.wrapping_add(n)));
            }
        });
        Ok(Self { addr, target, state, accept })
    }

    /// The address to connect to.
    #[must_use]
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Where new connections go.
    pub fn set_target(&self, to: SocketAddr) {
        *self.target.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(to);
    }

    /// Sets both directions' modes (open connections follow at once).
    pub fn set(&self, forward: Mode, backward: Mode) {
        self.state.send_modify(|s| {
            s.forward = forward;
            s.backward = backward;
        });
    }

    /// The current modes.
    #[must_use]
    pub fn state(&self) -> LinkState {
        *self.state.borrow()
    }

    /// Closes every open connection.
    pub fn reset(&self) {
        self.state.send_modify(|s| s.resets += 1);
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        self.accept.abort();
        // Open connections end with the last sender of the state channel.
        self.reset();
    }
}

/// Carries one connection until either side closes, a reset, or a healed hole.
async fn carry(inbound: TcpStream, to: SocketAddr, state: watch::Receiver<LinkState>, seed: u64) {
    let Ok(Ok(outbound)) = tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(to)).await else {
        return;
    };
    let _ = outbound.set_nodelay(true);
    let (in_read, in_write) = inbound.into_split();
    let (out_read, out_write) = outbound.into_split();
    let (fwd_tx, fwd_rx) = mpsc::unbounded_channel();
    let (bwd_tx, bwd_rx) = mpsc::unbounded_channel();
    tokio::select! {
        () = pump(in_read, fwd_tx, state.clone(), true, seed) => {}
        () = pump(out_read, bwd_tx, state, false, seed ^ 0x5555) => {}
        () = deliver(fwd_rx, out_write) => {}
        () = deliver(bwd_rx, in_write) => {}
    }
}

type Chunk = (tokio::time::Instant, Vec<u8>);

/// Reads one direction and queues each chunk with the time to deliver it.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    to: mpsc::UnboundedSender<Chunk>,
    mut state: watch::Receiver<LinkState>,
    forward: bool,
    seed: u64,
) {
    let mut rng = crate::chaos::Rng::new(seed);
    let resets = state.borrow().resets;
    let mode = |s: &LinkState| if forward { s.forward } else { s.backward };
    let mut holed = false;
    let mut last = tokio::time::Instant::now();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        tokio::select! {
            read = from.read(&mut buf) => {
                let n = match read {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                let now = tokio::time::Instant::now();
                let at = match mode(&state.borrow()) {
                    Mode::Blackhole => {
                        holed = true;
                        continue;
                    }
                    Mode::Pass => now,
                    Mode::Delay { base, jitter } => {
                        let j = u64::try_from(jitter.as_micros()).unwrap_or(0);
                        let offset = if j == 0 { 0 } else { rng.below(2 * j + 1) };
                        let micros = u64::try_from(base.as_micros()).unwrap_or(0) + offset;
                        now + Duration::from_micros(micros.saturating_sub(j))
                    }
                };
                last = last.max(at);
                if to.send((last, buf[..n].to_vec())).is_err() {
                    return;
                }
            }
            changed = state.changed() => {
                if changed.is_err() {
                    return;
                }
                let s = *state.borrow();
                if s.resets != resets || (holed && mode(&s) != Mode::Blackhole) {
                    return;
                }
            }
        }
    }
}

/// Writes queued chunks when they are due.
async fn deliver(mut from: mpsc::UnboundedReceiver<Chunk>, mut to: tokio::net::tcp::OwnedWriteHalf) {
    while let Some((at, bytes)) = from.recv().await {
        tokio::time::sleep_until(at).await;
        if to.write_all(&bytes).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn echo_server() -> Result<SocketAddr, BoxError> {
        let l = TcpListener::bind("127.0.0.1:0").await?;
        let addr = l.local_addr()?;
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    while let Ok(n) = s.read(&mut buf).await {
                        if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        Ok(addr)
    }

    async fn roundtrip(s: &mut TcpStream, msg: &[u8], within: Duration) -> Option<Vec<u8>> {
        s.write_all(msg).await.ok()?;
        let mut buf = vec![0u8; msg.len()];
        tokio::time::timeout(within, s.read_exact(&mut buf)).await.ok()?.ok()?;
        Some(buf)
    }

    #[tokio::test]
    async fn pass_delay_blackhole_reset() -> Result<(), BoxError> {
        let link = Link::start(1).await?;
        link.set_target(echo_server().await?);
        let mut s = TcpStream::connect(link.addr()).await?;
        assert_eq!(roundtrip(&mut s, b"one", Duration::from_secs(5)).await.as_deref(), Some(&b"one"[..]));

        link.set(Mode::Delay { base: Duration::from_millis(300), jitter: Duration::ZERO }, Mode::Pass);
        let t = std::time::Instant::now();
        assert_eq!(roundtrip(&mut s, b"two", Duration::from_secs(5)).await.as_deref(), Some(&b"two"[..]));
        assert!(t.elapsed() >= Duration::from_millis(290), "not delayed: {:?}", t.elapsed());

        // One way: requests pass, answers are dropped.
        link.set(Mode::Pass, Mode::Blackhole);
        assert_eq!(roundtrip(&mut s, b"three", Duration::from_millis(500)).await, None);
        // Healing closes the connection that lost bytes; a new one works.
        link.set(Mode::Pass, Mode::Pass);
        let mut buf = [0u8; 16];
        let closed = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await?;
        assert!(matches!(closed, Ok(0) | Err(_)), "the holed connection stayed open");
        let mut s = TcpStream::connect(link.addr()).await?;
        assert_eq!(roundtrip(&mut s, b"four", Duration::from_secs(5)).await.as_deref(), Some(&b"four"[..]));

        link.reset();
        let closed = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await?;
        assert!(matches!(closed, Ok(0) | Err(_)), "reset left the connection open");
        Ok(())
    }
}
