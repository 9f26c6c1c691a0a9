//! The caller's deadline, from the `grpc-timeout` header.

use std::time::Duration;

use tonic::metadata::MetadataMap;

/// The caller's deadline from the `grpc-timeout` header, capped at `max`.
#[must_use]
pub fn deadline(md: &MetadataMap, max: Duration) -> Duration {
    md.get("grpc-timeout").and_then(|v| v.to_str().ok()).and_then(parse_grpc_timeout).map_or(max, |d| d.min(max))
}

/// Parses a `grpc-timeout` value: up to 8 digits and a unit (`H M S m u n`).
#[must_use]
pub fn parse_grpc_timeout(s: &str) -> Option<Duration> {
    if s.len() < 2 || s.len() > 9 {
        return None;
    }
    let (digits, unit) = s.split_at(s.len() - 1);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.checked_mul(3600)?),
        "M" => Duration::from_secs(n.checked_mul(60)?),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}
