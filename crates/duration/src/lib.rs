//! The one way a duration is written on raftkv's command lines and in its environment
//! variables: a whole number and a unit, `ms`, `s` or `m` (`500ms`, `2s`, `1m`, `0s`).
//!
//! A bare number is refused with a message that asks for a unit: the node's flags once read
//! one as milliseconds and `raftkvctl`'s as seconds, a trap this rule closes. Both binaries
//! (`raftkv` and `raftkvctl`) parse every duration flag with [`parse`], which has the
//! signature clap's `value_parser` takes.
//!
//! This crate owns that rule and nothing else; it must never depend on a crate of ours (or on
//! tonic, openraft, redb), so any binary can use it. `cargo xtask deps` checks this.

use std::time::Duration;

/// Why a text is not a duration; the message says what to write instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    /// Nothing was given.
    #[error("a duration is needed, such as 500ms, 2s or 1m")]
    Empty,
    /// A number without a unit.
    #[error("{0:?} needs a unit: {0}ms, {0}s or {0}m")]
    NoUnit(String),
    /// A unit other than `ms`, `s` or `m`.
    #[error("{text:?} has an unknown unit {unit:?}; use ms, s or m (such as 500ms, 2s or 1m)")]
    UnknownUnit {
        /// The text given.
        text: String,
        /// The unit found in it.
        unit: String,
    },
    /// The number does not fit in a [`Duration`] of that unit.
    #[error("{0:?} is too long")]
    TooLong(String),
    /// Not a whole number followed by a unit (a sign, a fraction, a word).
    #[error("{0:?} is not a duration such as 500ms, 2s or 1m")]
    Malformed(String),
}

/// Parses a whole number and a unit: `ms`, `s` or `m` (`500ms`, `2s`, `1m`; `0s` is zero).
/// Space around the text is ignored.
///
/// # Errors
/// [`DurationError`]: an empty text, a bare number, an unknown unit, a number too large for
/// its unit, or anything else that is not a number followed by a unit.
pub fn parse(text: &str) -> Result<Duration, DurationError> {
    let text = text.trim();
    if text.is_empty() {
        return Err(DurationError::Empty);
    }
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    if digits.is_empty() {
        return Err(DurationError::Malformed(text.to_string()));
    }
    if unit.is_empty() {
        return Err(DurationError::NoUnit(text.to_string()));
    }
    let to_long = || DurationError::TooLong(text.to_string());
    let n: u64 = digits.parse().map_err(|_| to_long())?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        "m" => n.checked_mul(60).map(Duration::from_secs).ok_or_else(to_long),
        _ if unit.chars().all(|c| c.is_ascii_alphabetic()) => {
            Err(DurationError::UnknownUnit { text: text.to_string(), unit: unit.to_string() })
        }
        _ => Err(DurationError::Malformed(text.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_number_and_a_unit() {
        assert_eq!(parse("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse("1m"), Ok(Duration::from_secs(60)));
        assert_eq!(parse("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse(" 60m "), Ok(Duration::from_secs(3600)));
        assert_eq!(parse("007s"), Ok(Duration::from_secs(7)));
    }

    #[test]
    fn zero_with_a_unit_is_zero() {
        assert_eq!(parse("0s"), Ok(Duration::ZERO));
        assert_eq!(parse("0ms"), Ok(Duration::ZERO));
        assert_eq!(parse("0m"), Ok(Duration::ZERO));
    }

    #[test]
    fn a_bare_number_is_refused_with_a_message_asking_for_a_unit() {
        for bare in ["40", "5", "0", "18446744073709551616"] {
            let err = parse(bare);
            assert_eq!(err, Err(DurationError::NoUnit(bare.to_string())), "{bare}");
        }
        let message = parse("40").err().map(|e| e.to_string()).unwrap_or_default();
        assert_eq!(message, "\"40\" needs a unit: 40ms, 40s or 40m");
    }

    #[test]
    fn empty_is_refused() {
        assert_eq!(parse(""), Err(DurationError::Empty));
        assert_eq!(parse("   "), Err(DurationError::Empty));
        assert!(DurationError::Empty.to_string().contains("500ms"));
    }

    #[test]
    fn an_unknown_unit_is_refused_and_named() {
        for (text, unit) in [("2h", "h"), ("5h", "h"), ("1d", "d"), ("3us", "us"), ("1S", "S"), ("10sec", "sec")] {
            let err = parse(text);
            assert_eq!(err, Err(DurationError::UnknownUnit { text: text.to_string(), unit: unit.to_string() }));
        }
        let message = parse("2h").err().map(|e| e.to_string()).unwrap_or_default();
        assert!(message.contains("unknown unit \"h\"") && message.contains("ms, s or m"), "{message}");
    }

    #[test]
    fn too_long_for_its_unit_is_refused() {
        // The largest count of each unit still fits; one more minute than u64 seconds holds does not.
        assert_eq!(parse("18446744073709551615ms"), Ok(Duration::from_millis(u64::MAX)));
        assert_eq!(parse("18446744073709551615s"), Ok(Duration::from_secs(u64::MAX)));
        assert_eq!(parse("307445734561825860m"), Ok(Duration::from_secs(307_445_734_561_825_860 * 60)));
        for long in ["307445734561825861m", "999999999999999999m", "18446744073709551616ms", "99999999999999999999s"] {
            assert_eq!(parse(long), Err(DurationError::TooLong(long.to_string())), "{long}");
        }
    }

    #[test]
    fn anything_else_is_malformed() {
        for text in ["fast", "ms", "-1s", "+1s", "1.5s", "1 s", "1s2", "1m30s", "½s"] {
            assert_eq!(parse(text), Err(DurationError::Malformed(text.to_string())), "{text}");
        }
        let message = parse("fast").err().map(|e| e.to_string()).unwrap_or_default();
        assert_eq!(message, "\"fast\" is not a duration such as 500ms, 2s or 1m");
    }
}
