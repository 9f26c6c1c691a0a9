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
///
/// The size is computed first, so the buffer is allocated once: grown by doubling, a group
/// of entries was copied several times over, and each larger buffer faulted in fresh pages.
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, CodecError> {
    let size = postcard::experimental::serialized_size(value)?;
    let mut out = Vec::with_capacity(1 + size);
    out.push(FORMAT_V1);
    out = postcard::to_extend(value, out)?;
    debug_assert_eq!(out.len(), 1 + size, "postcard's size pass and its encoding disagree");
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

    /// The byte fields are written as byte strings (`serde_bytes`) since the codec was made
    /// faster; before, they were sequences of `u8`. postcard writes both the same way, so
    /// logs, outcomes and snapshots written by earlier builds still decode. These mirrors
    /// are the types as they were declared before.
    #[test]
    fn byte_fields_encode_as_earlier_builds_wrote_them() -> Result<(), CodecError> {
        #[derive(serde::Serialize)]
        struct PutOpBefore {
            key: Vec<u8>,
            value: Vec<u8>,
            expect: Option<crate::Expect>,
            prev_kv: bool,
        }
        #[derive(serde::Serialize)]
        enum KeyRangeBefore {
            #[allow(dead_code, reason = "only the second variant is encoded")]
            Key(Vec<u8>),
            Range {
                start: Vec<u8>,
                end: Option<Vec<u8>>,
            },
        }
        let value: Vec<u8> = (0..=255).chain(0..50).collect();
        let now = crate::PutOp { key: b"k\0\xff".to_vec(), value: value.clone(), expect: None, prev_kv: true };
        let before = PutOpBefore { key: b"k\0\xff".to_vec(), value, expect: None, prev_kv: true };
        assert_eq!(encode(&now)?, encode(&before)?);
        let encoded = encode(&now)?;
        // Format byte, key length and key, value length (306 as a varint) and its first byte.
        assert_eq!(&encoded[..8], &[FORMAT_V1, 3, b'k', 0, 0xff, 0xb2, 0x02, 0]);
        assert_eq!(decode::<crate::PutOp>(&encoded)?, now);
        for end in [None, Some(b"b".to_vec())] {
            let now = crate::KeyRange::Range { start: b"a".to_vec(), end: end.clone() };
            let before = KeyRangeBefore::Range { start: b"a".to_vec(), end };
            assert_eq!(encode(&now)?, encode(&before)?);
            assert_eq!(decode::<crate::KeyRange>(&encode(&before)?)?, now);
        }
        Ok(())
    }
}
