//! [`NodeId`], the id of a node as a user types it.

use std::borrow::Borrow;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// The id of a node: the string given with `--raft_id` (`nodeA`).
///
/// It is cheap to clone. A valid id is 1 to [`NodeId::MAX_LEN`] bytes of ASCII letters,
/// digits, `-`, `_` and `.`, so it is safe in file names (data lives in
/// `<raft_data_dir>/<raft_id>/`) and in log lines.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct NodeId(Arc<str>);

/// Why a string is not a valid [`NodeId`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidNodeId {
    /// The id is empty.
    #[error("node id is empty")]
    Empty,
    /// The id is longer than [`NodeId::MAX_LEN`] bytes.
    #[error("node id is {len} bytes long; the limit is {max} bytes")]
    TooLong {
        /// The length received.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The id has a character outside `[A-Za-z0-9._-]`.
    #[error("node id {id:?} has the character {ch:?}; use only ASCII letters, digits, '-', '_' and '.'")]
    BadChar {
        /// The id received.
        id: String,
        /// The first character refused.
        ch: char,
    },
}

impl NodeId {
    /// The longest id accepted, in bytes.
    pub const MAX_LEN: usize = 64;

    /// Checks `s` and makes an id of it.
    pub fn new(s: &str) -> Result<Self, InvalidNodeId> {
        if s.is_empty() {
            return Err(InvalidNodeId::Empty);
        }
        if s.len() > Self::MAX_LEN {
            return Err(InvalidNodeId::TooLong { len: s.len(), max: Self::MAX_LEN });
        }
        if let Some(ch) = s.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))) {
            return Err(InvalidNodeId::BadChar { id: s.to_string(), ch });
        }
        if s == "." || s == ".." {
            return Err(InvalidNodeId::BadChar { id: s.to_string(), ch: '.' });
        }
        Ok(Self(Arc::from(s)))
    }

    /// The id as a string slice.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for NodeId {
    type Err = InvalidNodeId;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

/// Numeric ids, as openraft's storage test suite builds them (`1` becomes `"1"`).
impl From<u64> for NodeId {
    fn from(n: u64) -> Self {
        Self(Arc::from(n.to_string()))
    }
}

impl Borrow<str> for NodeId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", &*self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_usual_ids() {
        for s in ["nodeA", "node-1", "a.b_c", "1"] {
            assert_eq!(NodeId::new(s).map(|n| n.to_string()), Ok(s.to_string()));
        }
    }

    #[test]
    fn refuses_bad_ids() {
        assert_eq!(NodeId::new(""), Err(InvalidNodeId::Empty));
        assert!(matches!(NodeId::new("a/b"), Err(InvalidNodeId::BadChar { ch: '/', .. })));
        assert!(matches!(NodeId::new(".."), Err(InvalidNodeId::BadChar { .. })));
        assert!(matches!(NodeId::new("a b"), Err(InvalidNodeId::BadChar { ch: ' ', .. })));
        let long = "x".repeat(NodeId::MAX_LEN + 1);
        assert!(matches!(NodeId::new(&long), Err(InvalidNodeId::TooLong { .. })));
        assert!(NodeId::new(&"x".repeat(NodeId::MAX_LEN)).is_ok());
    }
}
