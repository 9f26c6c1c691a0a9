//! Input limits, named and checked in one place.
//!
//! Past a limit a request is refused with `INVALID_ARGUMENT`, a message naming the limit and
//! the size received, and nothing is written.

use crate::ServiceError;

/// The longest key accepted, in bytes (4 KiB).
pub const MAX_KEY_BYTES: usize = 4 << 10;
/// The largest value accepted, in bytes (1 MiB).
pub const MAX_VALUE_BYTES: usize = 1 << 20;
/// The largest encoded request the gRPC server decodes, in bytes (2 MiB). Larger messages
/// are refused by tonic with `OUT_OF_RANGE` before any handler runs.
pub const MAX_DECODE_BYTES: usize = 2 << 20;

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
    fn value_limits() {
        assert!(check_value(&[]).is_ok());
        assert!(check_value(&vec![0u8; MAX_VALUE_BYTES]).is_ok());
        let err = check_value(&vec![0u8; MAX_VALUE_BYTES + 1]).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("1048577 bytes") && err.contains("MAX_VALUE_BYTES"), "{err}");
    }
}
