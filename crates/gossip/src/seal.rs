//! Authenticated encryption of every gossip datagram (`--gossip-key-file`).
//!
//! Every node of a cluster holds the same 32-byte key ([`GossipKey`], a file holding it in
//! base64). [`SealedUdpTransport`] is chitchat's UDP transport with each datagram sealed
//! with ChaCha20-Poly1305 (ring):
//!
//! ```text
//! version (1 byte, 1) | session (16 random bytes) | counter (u64 BE) | time (u64 BE, ms) | ciphertext | tag (16)
//! ```
//!
//! - **Session**: each socket picks 16 random bytes when it opens; the key that seals its
//!   datagrams is derived from the cluster key and the session (HKDF-SHA256), and the nonce
//!   is the counter, which goes up by one per datagram, so no nonce is ever used twice under
//!   one key.
//! - **Associated data**: the 33-byte header and the cluster id (`--cluster_id`). A datagram
//!   from another cluster, even one with the same key, fails authentication like a forged
//!   one.
//! - **Replay**: a receiver keeps, per session it has heard from (at most
//!   [`MAX_PEER_SESSIONS`]), the highest counter and which of the [`REPLAY_WINDOW`] below
//!   it have arrived: a counter seen before, or older than the window, is a replay. Its own
//!   session coming back (a datagram reflected to its sender) is one too. The sender's
//!   clock in the header bounds replays across restarts: a datagram more than
//!   [`MAX_CLOCK_SKEW`] away from the receiver's clock is dropped as stale, so nodes' clocks
//!   must agree within that.
//!
//! A dropped datagram changes nothing: it never reaches chitchat. It is counted by reason
//! ([`DropCounts`], through [`Gossip::drops`](crate::Gossip::drops)) and logged at debug
//! level with the sender's address and the reason, never any key material.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chitchat::ChitchatEnvelope;
use chitchat::transport::{RecvOutcome, SendOutcome, Socket, Transport};
use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, UnboundKey};
use ring::hkdf::{HKDF_SHA256, Prk, Salt};
use ring::rand::{SecureRandom, SystemRandom};
use secrets::Secret;

/// The length of the gossip key, in bytes (before base64).
pub const KEY_LEN: usize = 32;
/// How far a datagram's time may be from the receiver's clock; past it, the datagram is
/// dropped as stale.
pub const MAX_CLOCK_SKEW: Duration = Duration::from_secs(60);
/// How many counters below the highest one seen from a session are still accepted (once
/// each): datagrams reordered by the network by up to this many.
pub const REPLAY_WINDOW: u64 = 128;
/// How many senders' sessions a receiver remembers; past it, the one heard from least
/// recently is forgotten (its next datagram is then checked against the clock only).
pub const MAX_PEER_SESSIONS: usize = 1024;
/// The largest UDP payload (IPv4); chitchat fills datagrams up to this, and a sealed one
/// that no longer fits is not sent (counted as `oversize`).
pub const MAX_DATAGRAM: usize = 65_507;

const VERSION: u8 = 1;
const SESSION_LEN: usize = 16;
const HEADER_LEN: usize = 1 + SESSION_LEN + 8 + 8;
const TAG_LEN: usize = 16;
const HKDF_SALT: &[u8] = b"raftkv gossip v1";

/// Why a gossip key file cannot be used; the message names the file, never its contents.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// Unreadable, or readable by the group or others.
    #[error("--gossip-key-file: {0}")]
    File(#[from] secrets::SecretFileError),
    /// Not base64 of 32 bytes.
    #[error(
        "--gossip-key-file {}: not a gossip key; it must hold {KEY_LEN} random bytes in base64 \
         (make one with `head -c 32 /dev/urandom | base64 > FILE && chmod 600 FILE`)",
        path.display()
    )]
    Format {
        /// The file.
        path: std::path::PathBuf,
    },
}

/// The cluster's gossip key: 32 bytes every node shares. `Debug` shows nothing of it.
#[derive(Clone)]
pub struct GossipKey {
    prk: Prk,
}

impl std::fmt::Debug for GossipKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("GossipKey(<redacted>)")
    }
}

impl GossipKey {
    /// Reads a key file: 32 bytes in standard base64, surrounding white space ignored. The
    /// file must be readable by its owner only ([`secrets::read_private`]).
    ///
    /// # Errors
    /// [`KeyError`] naming the file (and the `chmod` to run when it is too open).
    pub fn from_file(path: &Path) -> Result<Self, KeyError> {
        let text = secrets::read_private(path)?;
        let bytes = decode_base64(trim(text.expose())).ok_or_else(|| KeyError::Format { path: path.to_path_buf() })?;
        let bytes: [u8; KEY_LEN] =
            bytes.expose().try_into().map_err(|_| KeyError::Format { path: path.to_path_buf() })?;
        Ok(Self::from_bytes(bytes))
    }

    /// A key from its bytes.
    #[must_use]
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        let secret = Secret::new(bytes.to_vec());
        Self { prk: Salt::new(HKDF_SHA256, HKDF_SALT).extract(secret.expose()) }
    }

    /// The ChaCha20-Poly1305 key of one session.
    fn session_key(&self, session: &[u8; SESSION_LEN]) -> LessSafeKey {
        let info = [session.as_slice()];
        // `expand` fails only for an output longer than 255 hash lengths; 32 bytes is not.
        let okm = self.prk.expand(&info, &CHACHA20_POLY1305).unwrap_or_else(|_| unreachable!("32-byte HKDF output"));
        LessSafeKey::new(UnboundKey::from(okm))
    }
}

fn trim(b: &[u8]) -> &[u8] {
    let start = b.iter().position(|c| !c.is_ascii_whitespace()).unwrap_or(b.len());
    let end = b.iter().rposition(|c| !c.is_ascii_whitespace()).map_or(start, |e| e + 1);
    &b[start..end]
}

/// Standard base64 (with padding) to bytes; `None` when it is not.
fn decode_base64(text: &[u8]) -> Option<Secret> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.decode(text).ok().map(Secret::new)
}

/// Why a datagram was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reject {
    /// Too short, an unknown version, or not a chitchat message once opened.
    Malformed,
    /// The tag does not match: forged, changed on the way, sealed with another key or for
    /// another cluster id.
    Unauthenticated,
    /// A counter seen before or older than the window, or this node's own session.
    Replayed,
    /// Its time is more than [`MAX_CLOCK_SKEW`] from this node's clock.
    Stale,
}

impl Reject {
    fn as_str(self) -> &'static str {
        match self {
            Reject::Malformed => "malformed",
            Reject::Unauthenticated => "unauthenticated (forged, another key, or another cluster id)",
            Reject::Replayed => "replayed",
            Reject::Stale => "stale (clocks differ by more than the allowed skew, or an old datagram)",
        }
    }
}

/// Gossip datagrams dropped since the node started, by reason.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DropCounts {
    /// Failed authentication: forged, altered, sealed with another key or for another
    /// cluster id (a node without the key sends such datagrams too).
    pub unauthenticated: u64,
    /// Replayed: a counter already seen, older than the replay window, or this node's own.
    pub replayed: u64,
    /// Outside the clock window ([`MAX_CLOCK_SKEW`]).
    pub stale: u64,
    /// Too short, an unknown format, or not a chitchat message.
    pub malformed: u64,
    /// Not sent: larger than [`MAX_DATAGRAM`] once sealed.
    pub oversize: u64,
}

impl DropCounts {
    /// Every datagram dropped on receipt.
    #[must_use]
    pub fn received(&self) -> u64 {
        self.unauthenticated + self.replayed + self.stale + self.malformed
    }
}

/// The live counters behind [`DropCounts`], shared by a socket and its [`crate::Gossip`].
#[derive(Debug, Default)]
pub(crate) struct DropCounters {
    unauthenticated: AtomicU64,
    replayed: AtomicU64,
    stale: AtomicU64,
    malformed: AtomicU64,
    oversize: AtomicU64,
}

impl DropCounters {
    fn count(&self, reason: Reject) {
        let c = match reason {
            Reject::Malformed => &self.malformed,
            Reject::Unauthenticated => &self.unauthenticated,
            Reject::Replayed => &self.replayed,
            Reject::Stale => &self.stale,
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> DropCounts {
        DropCounts {
            unauthenticated: self.unauthenticated.load(Ordering::Relaxed),
            replayed: self.replayed.load(Ordering::Relaxed),
            stale: self.stale.load(Ordering::Relaxed),
            malformed: self.malformed.load(Ordering::Relaxed),
            oversize: self.oversize.load(Ordering::Relaxed),
        }
    }
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn nonce(counter: u64) -> Nonce {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&counter.to_be_bytes());
    Nonce::assume_unique_for_key(n)
}

fn aad<'a>(header: &[u8], cluster_id: &[u8], buf: &'a mut Vec<u8>) -> Aad<&'a [u8]> {
    buf.clear();
    buf.extend_from_slice(header);
    buf.extend_from_slice(cluster_id);
    Aad::from(buf.as_slice())
}

/// One sender's replay state.
struct PeerSession {
    key: LessSafeKey,
    highest: u64,
    /// Bit `i`: counter `highest - i` has arrived.
    seen: u128,
    last_heard: u64,
}

impl PeerSession {
    fn is_new(&self, counter: u64) -> bool {
        counter > self.highest || {
            let back = self.highest - counter;
            back < REPLAY_WINDOW && self.seen & (1u128 << back) == 0
        }
    }

    fn record(&mut self, counter: u64) {
        if counter > self.highest {
            let shift = counter - self.highest;
            self.seen = if shift >= 128 { 0 } else { self.seen << shift };
            self.seen |= 1;
            self.highest = counter;
        } else {
            self.seen |= 1u128 << (self.highest - counter);
        }
    }
}

/// Seals outgoing and opens incoming datagrams for one socket.
pub(crate) struct Sealer {
    key: GossipKey,
    cluster_id: Vec<u8>,
    session: [u8; SESSION_LEN],
    session_key: LessSafeKey,
    counter: u64,
    peers: HashMap<[u8; SESSION_LEN], PeerSession>,
    aad: Vec<u8>,
}

impl Sealer {
    pub(crate) fn new(key: GossipKey, cluster_id: &str) -> Result<Self, ring::error::Unspecified> {
        let mut session = [0u8; SESSION_LEN];
        SystemRandom::new().fill(&mut session)?;
        let session_key = key.session_key(&session);
        Ok(Self {
            key,
            cluster_id: cluster_id.as_bytes().to_vec(),
            session,
            session_key,
            counter: 0,
            peers: HashMap::new(),
            aad: Vec::new(),
        })
    }

    /// `plain` sealed into `out` (cleared first), stamped with `now` (ms since the epoch).
    pub(crate) fn seal(&mut self, plain: &[u8], now: u64, out: &mut Vec<u8>) {
        let counter = self.counter;
        self.counter += 1;
        out.clear();
        out.push(VERSION);
        out.extend_from_slice(&self.session);
        out.extend_from_slice(&counter.to_be_bytes());
        out.extend_from_slice(&now.to_be_bytes());
        let mut body = out.split_off(HEADER_LEN);
        body.extend_from_slice(plain);
        let aad = aad(out, &self.cluster_id, &mut self.aad);
        // Sealing fails only past ChaCha20's 256 GiB per message limit.
        if self.session_key.seal_in_place_append_tag(nonce(counter), aad, &mut body).is_err() {
            unreachable!("a datagram is far below ChaCha20-Poly1305's message limit");
        }
        out.extend_from_slice(&body);
    }

    /// Checks and decrypts `datagram` in place, received at `now`; the plaintext.
    fn open<'a>(&mut self, datagram: &'a mut [u8], now: u64) -> Result<&'a [u8], Reject> {
        if datagram.len() < HEADER_LEN + TAG_LEN || datagram[0] != VERSION {
            return Err(Reject::Malformed);
        }
        let (header, body) = datagram.split_at_mut(HEADER_LEN);
        let mut session = [0u8; SESSION_LEN];
        session.copy_from_slice(&header[1..=SESSION_LEN]);
        let counter =
            u64::from_be_bytes(header[1 + SESSION_LEN..HEADER_LEN - 8].try_into().map_err(|_| Reject::Malformed)?);
        let sent = u64::from_be_bytes(header[HEADER_LEN - 8..].try_into().map_err(|_| Reject::Malformed)?);
        if session == self.session {
            return Err(Reject::Replayed);
        }
        let aad = aad(header, &self.cluster_id, &mut self.aad);
        let known = self.peers.get(&session);
        let fresh_key;
        let key = match known {
            Some(p) => &p.key,
            None => {
                fresh_key = self.key.session_key(&session);
                &fresh_key
            }
        };
        let plain = key.open_in_place(nonce(counter), aad, body).map_err(|_| Reject::Unauthenticated)?;
        if now.abs_diff(sent) > u64::try_from(MAX_CLOCK_SKEW.as_millis()).unwrap_or(u64::MAX) {
            return Err(Reject::Stale);
        }
        match self.peers.get_mut(&session) {
            Some(p) if !p.is_new(counter) => return Err(Reject::Replayed),
            Some(p) => {
                p.record(counter);
                p.last_heard = now;
            }
            None => {
                self.forget_oldest_if_full();
                let key = self.key.session_key(&session);
                self.peers.insert(session, PeerSession { key, highest: counter, seen: 1, last_heard: now });
            }
        }
        Ok(plain)
    }

    fn forget_oldest_if_full(&mut self) {
        if self.peers.len() < MAX_PEER_SESSIONS {
            return;
        }
        if let Some(oldest) = self.peers.iter().min_by_key(|(_, p)| p.last_heard).map(|(s, _)| *s) {
            self.peers.remove(&oldest);
        }
    }
}

/// chitchat's UDP transport with every datagram sealed (see the module documentation).
pub struct SealedUdpTransport {
    key: GossipKey,
    cluster_id: String,
    drops: Arc<DropCounters>,
}

impl std::fmt::Debug for SealedUdpTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SealedUdpTransport").field("cluster_id", &self.cluster_id).finish_non_exhaustive()
    }
}

impl SealedUdpTransport {
    /// A transport sealing with `key` for `cluster_id`, counting drops into `drops`.
    pub(crate) fn new(key: GossipKey, cluster_id: &str, drops: Arc<DropCounters>) -> Self {
        Self { key, cluster_id: cluster_id.to_string(), drops }
    }
}

#[async_trait::async_trait]
impl Transport for SealedUdpTransport {
    async fn open(&self, listen_addr: SocketAddr) -> anyhow::Result<Box<dyn Socket>> {
        let socket = tokio::net::UdpSocket::bind(listen_addr)
            .await
            .map_err(|e| anyhow::anyhow!("failed to bind to {listen_addr}/UDP for gossip: {e}"))?;
        let sealer = Sealer::new(self.key.clone(), &self.cluster_id)
            .map_err(|_| anyhow::anyhow!("no randomness for a gossip session"))?;
        Ok(Box::new(SealedSocket {
            socket,
            sealer,
            drops: self.drops.clone(),
            plain: Vec::with_capacity(MAX_DATAGRAM),
            sealed: Vec::with_capacity(MAX_DATAGRAM),
            recv: vec![0; u16::MAX as usize].into_boxed_slice(),
        }))
    }
}

struct SealedSocket {
    socket: tokio::net::UdpSocket,
    sealer: Sealer,
    drops: Arc<DropCounters>,
    plain: Vec<u8>,
    sealed: Vec<u8>,
    recv: Box<[u8]>,
}

/// As chitchat's UDP socket: errors that do not mean the socket is broken.
fn is_transient(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::OutOfMemory | std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::ConnectionRefused
    )
}

#[async_trait::async_trait]
impl Socket for SealedSocket {
    fn local_addr(&self) -> anyhow::Result<SocketAddr> {
        Ok(self.socket.local_addr()?)
    }

    async fn send(&mut self, to: SocketAddr, envelope: ChitchatEnvelope) -> anyhow::Result<SendOutcome> {
        self.plain.clear();
        envelope.serialize(&mut self.plain);
        self.sealer.seal(&self.plain, now_ms(), &mut self.sealed);
        if self.sealed.len() > MAX_DATAGRAM {
            self.drops.oversize.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(to = %to, len = self.sealed.len(), max = MAX_DATAGRAM, "gossip datagram too large once sealed; not sent");
            anyhow::bail!("a sealed gossip datagram of {} bytes exceeds {MAX_DATAGRAM}", self.sealed.len());
        }
        let num_bytes_sent = self.socket.send_to(&self.sealed, to).await?;
        Ok(SendOutcome { num_bytes_sent })
    }

    async fn recv(&mut self) -> anyhow::Result<RecvOutcome> {
        loop {
            let (len, from_addr) = match self.socket.recv_from(&mut self.recv).await {
                Ok(r) => r,
                Err(e) if is_transient(&e) => continue,
                Err(e) => return Err(anyhow::anyhow!("fatal UDP recv error: {e}")),
            };
            let opened = self
                .sealer
                .open(&mut self.recv[..len], now_ms())
                .and_then(|mut plain| ChitchatEnvelope::deserialize(&mut plain).map_err(|_| Reject::Malformed));
            match opened {
                Ok(envelope) => return Ok(RecvOutcome { from_addr, envelope, num_bytes_received: len }),
                Err(reason) => {
                    self.drops.count(reason);
                    tracing::debug!(from = %from_addr, len, reason = reason.as_str(), "gossip datagram dropped");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> GossipKey {
        GossipKey::from_bytes([b; KEY_LEN])
    }

    fn sealer(k: u8, cluster: &str) -> Sealer {
        Sealer::new(key(k), cluster).unwrap_or_else(|e| panic!("{e}"))
    }

    fn sealed(s: &mut Sealer, plain: &[u8], now: u64) -> Vec<u8> {
        let mut out = Vec::new();
        s.seal(plain, now, &mut out);
        out
    }

    const NOW: u64 = 1_800_000_000_000;

    #[test]
    fn a_sealed_datagram_opens_once_on_the_same_key_and_cluster() {
        let (mut a, mut b) = (sealer(1, "c"), sealer(1, "c"));
        let d = sealed(&mut a, b"hello gossip", NOW);
        assert_eq!(d.len(), HEADER_LEN + 12 + TAG_LEN);
        assert!(!d.windows(5).any(|w| w == b"hello"), "the payload travels encrypted");
        assert_eq!(b.open(&mut d.clone(), NOW + 5).map(<[u8]>::to_vec), Ok(b"hello gossip".to_vec()));
        assert_eq!(b.open(&mut d.clone(), NOW + 6), Err(Reject::Replayed));
    }

    #[test]
    fn forged_foreign_and_wrongly_keyed_datagrams_fail_authentication() {
        let mut b = sealer(1, "c");
        let good = sealed(&mut sealer(1, "c"), b"x", NOW);
        for i in [0, 1, 20, 30, good.len() - 1] {
            let mut bad = good.clone();
            bad[i] ^= 0x40;
            let want = if i == 0 { Reject::Malformed } else { Reject::Unauthenticated };
            assert_eq!(b.open(&mut bad, NOW), Err(want), "byte {i} flipped");
        }
        assert_eq!(b.open(&mut sealed(&mut sealer(1, "other"), b"x", NOW), NOW), Err(Reject::Unauthenticated));
        assert_eq!(b.open(&mut sealed(&mut sealer(2, "c"), b"x", NOW), NOW), Err(Reject::Unauthenticated));
        assert_eq!(b.open(&mut b"short".to_vec(), NOW), Err(Reject::Malformed));
        assert_eq!(
            b.open(&mut good.clone(), NOW).map(<[u8]>::to_vec),
            Ok(b"x".to_vec()),
            "the tampering left no state"
        );
    }

    #[test]
    fn reflected_and_stale_datagrams_are_dropped() {
        let mut a = sealer(1, "c");
        let own = sealed(&mut a, b"x", NOW);
        assert_eq!(a.open(&mut own.clone(), NOW), Err(Reject::Replayed), "its own datagram sent back");
        let skew = u64::try_from(MAX_CLOCK_SKEW.as_millis()).unwrap_or(u64::MAX);
        let mut b = sealer(1, "c");
        assert_eq!(b.open(&mut sealed(&mut a, b"x", NOW - skew - 1), NOW), Err(Reject::Stale));
        assert_eq!(b.open(&mut sealed(&mut a, b"x", NOW + skew + 1), NOW), Err(Reject::Stale));
        assert!(b.open(&mut sealed(&mut a, b"x", NOW - skew), NOW).is_ok(), "at the limit");
    }

    #[test]
    fn the_replay_window_accepts_reordering_within_it_and_nothing_twice() {
        let mut a = sealer(1, "c");
        let mut b = sealer(1, "c");
        let window = usize::try_from(REPLAY_WINDOW).unwrap_or(128);
        let ds: Vec<Vec<u8>> = (0..window + 10).map(|_| sealed(&mut a, b"x", NOW)).collect();
        assert!(b.open(&mut ds[5].clone(), NOW).is_ok());
        assert!(b.open(&mut ds[2].clone(), NOW).is_ok(), "reordered, within the window");
        assert!(b.open(&mut ds[window + 9].clone(), NOW).is_ok());
        // Counter 10 is exactly REPLAY_WINDOW - 1 below the highest: still accepted, once.
        assert!(b.open(&mut ds[10].clone(), NOW).is_ok(), "the oldest counter the window holds");
        assert_eq!(b.open(&mut ds[10].clone(), NOW), Err(Reject::Replayed));
        assert_eq!(b.open(&mut ds[9].clone(), NOW), Err(Reject::Replayed), "below the window");
        assert_eq!(b.open(&mut ds[window + 9].clone(), NOW), Err(Reject::Replayed));
    }

    #[test]
    fn sessions_past_the_limit_forget_the_least_recent() {
        let mut b = sealer(1, "c");
        for i in 0..=MAX_PEER_SESSIONS as u64 {
            assert!(b.open(&mut sealed(&mut sealer(1, "c"), b"x", NOW + i), NOW + i).is_ok());
        }
        assert_eq!(b.peers.len(), MAX_PEER_SESSIONS);
    }

    #[test]
    fn key_files_are_base64_of_32_bytes_and_never_shown() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("gossip.key");
        let write = |text: &str| -> std::io::Result<()> {
            std::fs::write(&path, text)?;
            #[cfg(unix)]
            std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
            Ok(())
        };
        write("AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0eHyA=\n")?;
        let k = GossipKey::from_file(&path)?;
        let expected: Vec<u8> = (1..=32).collect();
        let mut a = Sealer::new(k.clone(), "c").map_err(|e| e.to_string())?;
        let mut b = Sealer::new(GossipKey::from_bytes(expected.try_into().map_err(|_| "len")?), "c")
            .map_err(|e| e.to_string())?;
        assert!(b.open(&mut sealed(&mut a, b"x", NOW), NOW).is_ok(), "the file's key is the bytes it encodes");
        assert_eq!(format!("{k:?}"), "GossipKey(<redacted>)");
        for bad in ["", "AQID", "not base64 at all!!", "AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0eHyAh"] {
            write(bad)?;
            let e = GossipKey::from_file(&path).err().ok_or("accepted")?.to_string();
            assert!(e.contains("--gossip-key-file") && e.contains("32 random bytes"), "{e}");
        }
        #[cfg(unix)]
        {
            std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o644))?;
            let e = GossipKey::from_file(&path).err().ok_or("accepted")?.to_string();
            assert!(e.contains(&format!("chmod 600 {}", path.display())), "{e}");
        }
        Ok(())
    }
}
