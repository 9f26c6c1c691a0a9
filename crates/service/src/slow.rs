//! The slow-request log: a KV request that takes longer than a threshold (`raftkv
//! --slow-request-threshold`, default [`DEFAULT_SLOW_REQUEST_THRESHOLD`]) is logged once, at
//! warn, when it ends (answered, failed or dropped by a client that gave up): its method, the
//! first [`SLOW_LOG_KEY_PREFIX_BYTES`] bytes of its key (never its value), this node and how
//! long it took.
//!
//! A request forwarded to the leader is logged by the node the client asked, which measured
//! the whole of it; the leader does not log it again.

use std::fmt;
use std::time::Duration;

use tokio::time::Instant;
use tonic::metadata::MetadataMap;

/// The default threshold.
pub const DEFAULT_SLOW_REQUEST_THRESHOLD: Duration = Duration::from_secs(1);

/// At most this many bytes of a key are logged: enough to tell which keys are slow, and a
/// key is not the place for a secret, but a value may be.
pub const SLOW_LOG_KEY_PREFIX_BYTES: usize = 32;

/// The slow-request log of one node.
#[derive(Debug, Clone)]
pub struct SlowLog {
    node: String,
    threshold: Duration,
}

impl SlowLog {
    /// Logs requests of node `node` slower than `threshold`.
    #[must_use]
    pub fn new(node: impl Into<String>, threshold: Duration) -> Self {
        Self { node: node.into(), threshold }
    }

    /// Starts timing a request of `method` on `key`; it is logged when the guard drops, if
    /// slow. A request forwarded here (`md` carries the mark) is not timed: the node that
    /// forwarded it logs it.
    #[must_use]
    pub fn start<'a>(&'a self, method: &'static str, md: &MetadataMap, key: &[u8]) -> Option<SlowGuard<'a>> {
        if md.get(rpc::metadata::FORWARDED_HEADER).is_some() {
            return None;
        }
        let len = key.len().min(SLOW_LOG_KEY_PREFIX_BYTES);
        let mut prefix = [0; SLOW_LOG_KEY_PREFIX_BYTES];
        prefix[..len].copy_from_slice(&key[..len]);
        Some(SlowGuard { log: self, method, prefix, len, truncated: key.len() > len, started: Instant::now() })
    }
}

/// Times one request; logs it on drop if it was slow.
#[derive(Debug)]
pub struct SlowGuard<'a> {
    log: &'a SlowLog,
    method: &'static str,
    prefix: [u8; SLOW_LOG_KEY_PREFIX_BYTES],
    len: usize,
    truncated: bool,
    started: Instant,
}

/// A key prefix as logged: printable ASCII as is, other bytes escaped, `…` when cut.
struct KeyPrefix<'a>(&'a [u8], bool);

impl fmt::Display for KeyPrefix<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0.escape_ascii())?;
        if self.1 { f.write_str("…") } else { Ok(()) }
    }
}

impl Drop for SlowGuard<'_> {
    fn drop(&mut self) {
        let elapsed = self.started.elapsed();
        if elapsed < self.log.threshold {
            return;
        }
        tracing::warn!(
            method = self.method,
            key_prefix = %KeyPrefix(&self.prefix[..self.len], self.truncated),
            node = %self.log.node,
            elapsed_ms = u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX),
            threshold_ms = u64::try_from(self.log.threshold.as_millis()).unwrap_or(u64::MAX),
            "slow request"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_prefixes_are_cut_and_escaped() {
        assert_eq!(KeyPrefix(b"config/a", false).to_string(), "config/a");
        assert_eq!(KeyPrefix(b"a\xff\n", true).to_string(), "a\\xff\\n…");
        let log = SlowLog::new("n1", Duration::ZERO);
        let long = [b'k'; SLOW_LOG_KEY_PREFIX_BYTES + 1];
        let guard = log.start("KV/Put", &MetadataMap::new(), &long).unwrap_or_else(|| panic!("timed"));
        assert_eq!((guard.len, guard.truncated), (SLOW_LOG_KEY_PREFIX_BYTES, true));
        let mut forwarded = MetadataMap::new();
        forwarded.insert(rpc::metadata::FORWARDED_HEADER, tonic::metadata::MetadataValue::from_static("1"));
        assert!(log.start("KV/Put", &forwarded, b"k").is_none(), "the forwarding node logs it");
    }
}
