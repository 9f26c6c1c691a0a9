//! Input limits, named and checked in one place.
//!
//! Past a limit a request is refused with `INVALID_ARGUMENT`, a message naming the limit and
//! the size received, and nothing is written; the connection keeps serving.

use std::time::Duration;

use crate::ServiceError;

/// The longest key accepted, in bytes (4 KiB).
pub const MAX_KEY_BYTES: usize = 4 << 10;
/// The largest value accepted, in bytes (1 MiB).
pub const MAX_VALUE_BYTES: usize = 1 << 20;
/// The largest encoded request a handler accepts, in bytes (1.5 MiB).
pub const MAX_REQUEST_BYTES: usize = 3 << 19;
/// The most operations a transaction may hold: compares and both branches together.
pub const MAX_TXN_OPS: usize = 128;
/// The longest request id accepted, in bytes.
pub const MAX_REQUEST_ID_BYTES: usize = 128;
/// About the most key and value bytes one Range page returns (always at least one key).
pub const MAX_RANGE_PAGE_BYTES: usize = 1 << 20;

/// The transport limits, applied by [`rpc::server::serve`] on both ports.
pub use rpc::limits::{
    MAX_CONCURRENT_STREAMS, MAX_DECODE_BYTES, MAX_HEADER_LIST_BYTES, MAX_PENDING_ACCEPT_RESET_STREAMS,
};
pub use rpc::status::decode_limit_status;

/// How long a blocking read waits when it names no `wait_ms` (Consul's default).
pub const DEFAULT_BLOCKING_WAIT: Duration = Duration::from_secs(5 * 60);
/// The longest `wait_ms` of a blocking read (Consul's cap).
pub const MAX_BLOCKING_WAIT: Duration = Duration::from_secs(10 * 60);
/// How often a watch sends a PROGRESS message when it names no interval.
pub const DEFAULT_PROGRESS_INTERVAL: Duration = Duration::from_secs(10);
/// The shortest progress interval a watch may ask for.
pub const MIN_PROGRESS_INTERVAL: Duration = Duration::from_millis(100);
/// The longest progress interval a watch may ask for.
pub const MAX_PROGRESS_INTERVAL: Duration = Duration::from_secs(3600);
/// The longest `timeout_seconds` of a watch (one day).
pub const MAX_WATCH_TIMEOUT_SECONDS: i64 = 86_400;
/// About the most bytes of events or keys one watch message carries; more of the same index
/// continue in the next message (`more`).
pub const WATCH_MESSAGE_BYTES: usize = 1 << 20;

/// Checks a blocking read's `wait_ms`: 0 means [`DEFAULT_BLOCKING_WAIT`]; at most
/// [`MAX_BLOCKING_WAIT`].
pub fn check_blocking_wait(wait_ms: u64) -> Result<Duration, ServiceError> {
    let wait = if wait_ms == 0 { DEFAULT_BLOCKING_WAIT } else { Duration::from_millis(wait_ms) };
    if wait > MAX_BLOCKING_WAIT {
        return Err(ServiceError::InvalidArgument(format!(
            "wait_ms is {wait_ms}; the limit (MAX_BLOCKING_WAIT) is {} ms",
            MAX_BLOCKING_WAIT.as_millis()
        )));
    }
    Ok(wait)
}

/// Checks a watch's `progress_interval_ms`: 0 means [`DEFAULT_PROGRESS_INTERVAL`]; from
/// [`MIN_PROGRESS_INTERVAL`] to [`MAX_PROGRESS_INTERVAL`].
pub fn check_progress_interval(ms: u64) -> Result<Duration, ServiceError> {
    if ms == 0 {
        return Ok(DEFAULT_PROGRESS_INTERVAL);
    }
    let d = Duration::from_millis(ms);
    if d < MIN_PROGRESS_INTERVAL || d > MAX_PROGRESS_INTERVAL {
        return Err(ServiceError::InvalidArgument(format!(
            "progress_interval_ms is {ms}; it must be 0 (the default, {} ms) or from {} (MIN_PROGRESS_INTERVAL) to {} (MAX_PROGRESS_INTERVAL)",
            DEFAULT_PROGRESS_INTERVAL.as_millis(),
            MIN_PROGRESS_INTERVAL.as_millis(),
            MAX_PROGRESS_INTERVAL.as_millis()
        )));
    }
    Ok(d)
}

/// Checks a watch's `timeout_seconds`: 0 means none; 1 to [`MAX_WATCH_TIMEOUT_SECONDS`].
pub fn check_watch_timeout(seconds: i64) -> Result<Option<Duration>, ServiceError> {
    match seconds {
        0 => Ok(None),
        1..=MAX_WATCH_TIMEOUT_SECONDS => Ok(Some(Duration::from_secs(seconds.unsigned_abs()))),
        _ => Err(ServiceError::InvalidArgument(format!(
            "timeout_seconds is {seconds}; it must be 0 (none) or from 1 to {MAX_WATCH_TIMEOUT_SECONDS} (MAX_WATCH_TIMEOUT_SECONDS)"
        ))),
    }
}

/// Checks a key: not empty, at most [`MAX_KEY_BYTES`].
pub fn check_key(key: &[u8]) -> Result<(), ServiceError> {
    if key.is_empty() {
        return Err(ServiceError::InvalidArgument("key is empty; a key needs at least 1 byte".into()));
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(ServiceError::InvalidArgument(format!(
            "key is {} bytes; the limit (MAX_KEY_BYTES) is {MAX_KEY_BYTES} bytes",
            key.len()
        )));
    }
    Ok(())
}

/// Checks a value: at most [`MAX_VALUE_BYTES`].
pub fn check_value(value: &[u8]) -> Result<(), ServiceError> {
    if value.len() > MAX_VALUE_BYTES {
        return Err(ServiceError::InvalidArgument(format!(
            "value is {} bytes; the limit (MAX_VALUE_BYTES) is {MAX_VALUE_BYTES} bytes",
            value.len()
        )));
    }
    Ok(())
}

/// Checks the encoded size of a whole request against [`MAX_REQUEST_BYTES`].
pub fn check_request_size(encoded_len: usize) -> Result<(), ServiceError> {
    if encoded_len > MAX_REQUEST_BYTES {
        return Err(ServiceError::InvalidArgument(format!(
            "request is {encoded_len} bytes; the limit (MAX_REQUEST_BYTES) is {MAX_REQUEST_BYTES} bytes"
        )));
    }
    Ok(())
}

/// Checks a request id: empty (none) or 1 to [`MAX_REQUEST_ID_BYTES`] bytes.
pub fn check_request_id(id: &str) -> Result<Option<String>, ServiceError> {
    if id.len() > MAX_REQUEST_ID_BYTES {
        return Err(ServiceError::InvalidArgument(format!(
            "request_id is {} bytes; the limit (MAX_REQUEST_ID_BYTES) is {MAX_REQUEST_ID_BYTES} bytes",
            id.len()
        )));
    }
    Ok((!id.is_empty()).then(|| id.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_limits() {
        assert!(check_key(&[0u8; MAX_KEY_BYTES]).is_ok());
        let err = check_key(&[0u8; MAX_KEY_BYTES + 1]).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("4097 bytes") && err.contains("MAX_KEY_BYTES"), "{err}");
        assert!(check_key(b"").is_err());
    }

    #[test]
    fn request_limits() {
        assert!(check_request_size(MAX_REQUEST_BYTES).is_ok());
        assert!(check_request_size(MAX_REQUEST_BYTES + 1).is_err());
        assert_eq!(check_request_id("").ok(), Some(None));
        assert!(check_request_id(&"x".repeat(MAX_REQUEST_ID_BYTES)).is_ok());
        assert!(check_request_id(&"x".repeat(MAX_REQUEST_ID_BYTES + 1)).is_err());
    }

    #[test]
    fn decode_limit_is_reworded() {
        let msg = "Error, decoded message length too large: found 2097200 bytes, the limit is: 2097152 bytes";
        let (code, text) =
            decode_limit_status(tonic::Code::OutOfRange, msg).unwrap_or((tonic::Code::Ok, String::new()));
        assert_eq!(code, tonic::Code::InvalidArgument);
        assert!(text.contains("2097200 bytes") && text.contains("MAX_DECODE_BYTES"), "{text}");
        assert!(decode_limit_status(tonic::Code::OutOfRange, "other").is_none());
    }

    #[test]
    fn watch_and_blocking_limits_at_and_past_the_limit() {
        assert_eq!(check_blocking_wait(0).ok(), Some(DEFAULT_BLOCKING_WAIT));
        let max = u64::try_from(MAX_BLOCKING_WAIT.as_millis()).unwrap_or(u64::MAX);
        assert_eq!(check_blocking_wait(max).ok(), Some(MAX_BLOCKING_WAIT));
        let err = check_blocking_wait(max + 1).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("MAX_BLOCKING_WAIT"), "{err}");

        assert_eq!(check_progress_interval(0).ok(), Some(DEFAULT_PROGRESS_INTERVAL));
        assert_eq!(check_progress_interval(100).ok(), Some(MIN_PROGRESS_INTERVAL));
        assert_eq!(check_progress_interval(3_600_000).ok(), Some(MAX_PROGRESS_INTERVAL));
        for bad in [99, 3_600_001] {
            let err = check_progress_interval(bad).err().map(|e| e.to_string()).unwrap_or_default();
            assert!(err.contains("MIN_PROGRESS_INTERVAL"), "{err}");
        }

        assert_eq!(check_watch_timeout(0).ok(), Some(None));
        assert_eq!(check_watch_timeout(MAX_WATCH_TIMEOUT_SECONDS).ok(), Some(Some(Duration::from_secs(86_400))));
        for bad in [-1, MAX_WATCH_TIMEOUT_SECONDS + 1] {
            let err = check_watch_timeout(bad).err().map(|e| e.to_string()).unwrap_or_default();
            assert!(err.contains("MAX_WATCH_TIMEOUT_SECONDS"), "{err}");
        }
    }

    #[test]
    fn value_limits() {
        assert!(check_value(&[]).is_ok());
        assert!(check_value(&vec![0u8; MAX_VALUE_BYTES]).is_ok());
        let err = check_value(&vec![0u8; MAX_VALUE_BYTES + 1]).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("1048577 bytes") && err.contains("MAX_VALUE_BYTES"), "{err}");
    }
}
