//! The binary encoding of everything raftkv stores or sends that is not protobuf.
//!
//! A value is encoded as one format byte ([`FORMAT_V1`]) followed by its postcard
//! encoding. postcard is compact and fast, and it is not self-describing, so a reader must
//! know the type; the format byte lets a later build change the encoding and still read old
//! data. openraft warns that its serde representation may change between versions, which is
//! one more reason to keep the byte.

use serde::Serialize;
pub use serde::de::DeserializeOwned;

/// The current (and only) format: postcard.
pub const FORMAT_V1: u8 = 1;

/// A value could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CodecError {
    /// The input is empty: not even a format byte.
    #[error("empty input: no format byte")]
    Empty,
    /// The format byte is one this build does not know.
    #[error("unknown format byte {0}; this build reads format {FORMAT_V1}")]
    UnknownFormat(u8),
    /// postcard refused the bytes or the value.
    #[error("postcard: {0}")]
    Postcard(#[from] postcard::Error),
}

/// Encodes `value` behind the format byte.
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, CodecError> {
    let mut out = vec![FORMAT_V1];
    out = postcard::to_extend(value, out)?;
    Ok(out)
}

/// Decodes a value written by [`encode`].
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    match bytes.split_first() {
        None => Err(CodecError::Empty),
        Some((&FORMAT_V1, rest)) => Ok(postcard::from_bytes(rest)?),
        Some((&other, _)) => Err(CodecError::UnknownFormat(other)),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use openraft::entry::RaftEntry;

    use super::*;
    use crate::{Command, Entry, LogId, Membership, NodeId, NodeInfo, Vote};

    fn id(s: &str) -> NodeId {
        NodeId::new(s).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn entries_round_trip() -> Result<(), CodecError> {
        let log_id = LogId::new(openraft::impls::leader_id_adv::LeaderId { term: 3, node_id: id("a") }, 7);
        let put = crate::PutOp { key: b"k\0\xff".to_vec(), value: vec![1, 2], expect: None, prev_kv: false };
        let normal = Entry::new_normal(
            log_id.clone(),
            Command::Write(crate::WriteCommand { request_id: Some("r1".into()), op: crate::WriteOp::Put(put) }),
        );
        let nodes = BTreeMap::from([
            (id("a"), NodeInfo { raft_addr: "127.0.0.1:1".into(), grpc_addr: "127.0.0.1:2".into() }),
            (id("b"), NodeInfo::default()),
        ]);
        let membership = Membership::new(vec![BTreeSet::from([id("a")])], nodes).unwrap_or_else(|e| panic!("{e}"));
        let member_entry = Entry::new_membership(log_id.clone(), membership);
        let blank = Entry::new_blank(log_id);
        for e in [normal, member_entry, blank] {
            let back: Entry = decode(&encode(&e)?)?;
            assert_eq!(back, e);
        }
        let vote = Vote::new(5, id("b"));
        assert_eq!(decode::<Vote>(&encode(&vote)?)?, vote);
        Ok(())
    }

    #[test]
    fn refuses_unknown_format_and_garbage() {
        assert!(matches!(decode::<u64>(&[]), Err(CodecError::Empty)));
        assert!(matches!(decode::<u64>(&[9, 1]), Err(CodecError::UnknownFormat(9))));
        assert!(matches!(decode::<Command>(&[FORMAT_V1, 7, 7]), Err(CodecError::Postcard(_))));
    }
}
