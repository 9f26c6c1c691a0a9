//! Input limits, named and checked in one place.
//!
//! Past a limit a request is refused with `INVALID_ARGUMENT`, a message naming the limit and
//! the size received, and nothing is written; the connection keeps serving.

use crate::ServiceError;

/// The longest key accepted, in bytes (4 KiB).
pub const MAX_KEY_BYTES: usize = 4 << 10;
/// The largest value accepted, in bytes (1 MiB).
pub const MAX_VALUE_BYTES: usize = 1 << 20;
/// The largest encoded request a handler accepts, in bytes (1.5 MiB).
pub const MAX_REQUEST_BYTES: usize = 3 << 19;
/// The largest gRPC message the server decodes, in bytes (2 MiB). A larger one is refused
/// before any handler runs (answered `INVALID_ARGUMENT` by [`decode_limit_status`]).
pub const MAX_DECODE_BYTES: usize = 2 << 20;
/// The most operations a transaction may hold: compares and both branches together.
pub const MAX_TXN_OPS: usize = 128;
/// The longest request id accepted, in bytes.
pub const MAX_REQUEST_ID_BYTES: usize = 128;
/// About the most key and value bytes one Range page returns (always at least one key).
pub const MAX_RANGE_PAGE_BYTES: usize = 1 << 20;

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

/// Rewrites tonic's answer to a message over [`MAX_DECODE_BYTES`] (`OUT_OF_RANGE`, "decoded
/// message length too large: found N bytes, the limit is: M bytes") into the
/// `INVALID_ARGUMENT` every other limit answers, naming the limit. Other statuses pass.
pub fn decode_limit_status(code: tonic::Code, message: &str) -> Option<(tonic::Code, String)> {
    if code != tonic::Code::OutOfRange || !message.contains("decoded message length too large") {
        return None;
    }
    let found = message.split("found ").nth(1).and_then(|r| r.split(' ').next()).unwrap_or("?");
    Some((
        tonic::Code::InvalidArgument,
        format!("message is {found} bytes; the gRPC limit (MAX_DECODE_BYTES) is {MAX_DECODE_BYTES} bytes"),
    ))
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
    fn value_limits() {
        assert!(check_value(&[]).is_ok());
        assert!(check_value(&vec![0u8; MAX_VALUE_BYTES]).is_ok());
        let err = check_value(&vec![0u8; MAX_VALUE_BYTES + 1]).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("1048577 bytes") && err.contains("MAX_VALUE_BYTES"), "{err}");
    }
}
