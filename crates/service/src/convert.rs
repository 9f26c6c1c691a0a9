//! Checks client requests and turns them into log operations, and turns results back into
//! protobuf. Every rule a request must follow is checked here, before anything is proposed.

use proto::kv::v1 as pb;
use types::{
    Compare, CompareOp, CompareTarget, DeleteOp, Expect, KeyRange, KeyValue, PutOp, RangeOp, RangeResult, Txn, TxnOp,
    TxnOpResult,
};

use crate::ServiceError;
use crate::limits::{self, MAX_TXN_OPS};

fn invalid(msg: impl Into<String>) -> ServiceError {
    ServiceError::InvalidArgument(msg.into())
}

/// Resolves `key`, `range_end` and `prefix` into a [`KeyRange`] (etcd's convention).
pub(crate) fn key_range(key: &[u8], range_end: &[u8], prefix: bool) -> Result<KeyRange, ServiceError> {
    if key.len() > limits::MAX_KEY_BYTES {
        limits::check_key(key)?;
    }
    if range_end.len() > limits::MAX_KEY_BYTES {
        return Err(invalid(format!(
            "range_end is {} bytes; the limit (MAX_KEY_BYTES) is {} bytes",
            range_end.len(),
            limits::MAX_KEY_BYTES
        )));
    }
    if prefix {
        if !range_end.is_empty() {
            return Err(invalid("give either prefix or range_end, not both"));
        }
        return Ok(KeyRange::prefix(key));
    }
    match range_end {
        [] => {
            limits::check_key(key)?;
            Ok(KeyRange::Key(key.to_vec()))
        }
        [0] => Ok(KeyRange::Range { start: key.to_vec(), end: None }),
        end if end < key => Err(invalid(format!(
            "invalid range: range_end {:?} sorts before key {:?}, so [key, range_end) holds nothing; swap them, or give range_end \"\\0\" for every key from key on",
            String::from_utf8_lossy(end),
            String::from_utf8_lossy(key)
        ))),
        end => Ok(KeyRange::Range { start: key.to_vec(), end: Some(end.to_vec()) }),
    }
}

/// The range's end as a client continues with it (`"\0"` for no end, empty for one key).
pub(crate) fn range_end_bytes(range: &KeyRange) -> Vec<u8> {
    match range {
        KeyRange::Key(_) => Vec::new(),
        KeyRange::Range { end: Some(end), .. } => end.clone(),
        KeyRange::Range { end: None, .. } => vec![0],
    }
}

fn expect(expected_modify_index: Option<u64>, if_absent: bool) -> Result<Option<Expect>, ServiceError> {
    match (expected_modify_index, if_absent) {
        (Some(_), true) => Err(invalid("give either expected_modify_index or if_absent, not both")),
        (Some(0), false) => Err(invalid("expected_modify_index 0 never matches an existing key; use if_absent")),
        (Some(i), false) => Ok(Some(Expect::ModifyIndex(i))),
        (None, true) => Ok(Some(Expect::Absent)),
        (None, false) => Ok(None),
    }
}

/// A put, checked.
pub(crate) fn put_op(req: &pb::PutRequest) -> Result<PutOp, ServiceError> {
    limits::check_key(&req.key)?;
    limits::check_value(&req.value)?;
    Ok(PutOp {
        key: req.key.to_vec(),
        value: req.value.to_vec(),
        expect: expect(req.expected_modify_index, req.if_absent)?,
        prev_kv: req.prev_kv,
    })
}

/// A delete, checked.
pub(crate) fn delete_op(req: &pb::DeleteRequest) -> Result<DeleteOp, ServiceError> {
    let range = key_range(&req.key, &req.range_end, req.prefix)?;
    let expect = expect(req.expected_modify_index, false)?;
    if expect.is_some() && !matches!(range, KeyRange::Key(_)) {
        return Err(invalid("expected_modify_index applies to a single key, not to a range or prefix"));
    }
    Ok(DeleteOp { range, expect, prev_kv: req.prev_kv })
}

/// A range read, checked.
pub(crate) fn range_op(req: &pb::RangeRequest) -> Result<RangeOp, ServiceError> {
    Ok(RangeOp {
        range: key_range(&req.key, &req.range_end, req.prefix)?,
        limit: req.limit,
        keys_only: req.keys_only,
        count_only: req.count_only,
    })
}

fn compare(c: &pb::Compare) -> Result<Compare, ServiceError> {
    limits::check_key(&c.key)?;
    let op = match pb::compare::Result::try_from(c.result) {
        Ok(pb::compare::Result::Equal) => CompareOp::Equal,
        Ok(pb::compare::Result::NotEqual) => CompareOp::NotEqual,
        Ok(pb::compare::Result::Greater) => CompareOp::Greater,
        Ok(pb::compare::Result::Less) => CompareOp::Less,
        Err(_) => return Err(invalid(format!("compare result {} is not EQUAL, NOT_EQUAL, GREATER or LESS", c.result))),
    };
    use pb::compare::Target;
    let target = match &c.target {
        Some(Target::Value(v)) => {
            limits::check_value(v)?;
            CompareTarget::Value(v.to_vec())
        }
        Some(Target::ModifyIndex(i)) => CompareTarget::ModifyIndex(*i),
        Some(Target::CreateIndex(i)) => CompareTarget::CreateIndex(*i),
        Some(Target::Version(v)) => CompareTarget::Version(*v),
        Some(Target::Exists(e)) => {
            if matches!(op, CompareOp::Greater | CompareOp::Less) {
                return Err(invalid("an `exists` compare takes EQUAL or NOT_EQUAL"));
            }
            CompareTarget::Exists(*e)
        }
        None => return Err(invalid("a compare needs a target: value, modify_index, create_index, version or exists")),
    };
    Ok(Compare { key: c.key.to_vec(), op, target })
}

fn txn_op(op: &pb::RequestOp, branch: &str, n: usize) -> Result<TxnOp, ServiceError> {
    use pb::request_op::Request;
    let at = |msg: &str| invalid(format!("{branch} operation {n}: {msg}"));
    match &op.request {
        Some(Request::Put(p)) => {
            if p.expected_modify_index.is_some() || p.if_absent || !p.request_id.is_empty() {
                return Err(at("a put in a transaction takes no precondition or request_id; use compares"));
            }
            Ok(TxnOp::Put(put_op(p)?))
        }
        Some(Request::Delete(d)) => {
            if d.expected_modify_index.is_some() || !d.request_id.is_empty() {
                return Err(at("a delete in a transaction takes no precondition or request_id; use compares"));
            }
            Ok(TxnOp::Delete(delete_op(d)?))
        }
        Some(Request::Range(r)) => Ok(TxnOp::Range(range_op(r)?)),
        None => Err(at("empty operation: set put, delete or range")),
    }
}

/// Refuses a branch that writes the same key twice (two puts of one key, or a put or delete
/// inside another delete's range).
fn check_branch(ops: &[TxnOp], branch: &str) -> Result<(), ServiceError> {
    let writes: Vec<KeyRange> = ops
        .iter()
        .filter_map(|op| match op {
            TxnOp::Put(p) => Some(KeyRange::Key(p.key.clone())),
            TxnOp::Delete(d) => Some(d.range.clone()),
            TxnOp::Range(_) => None,
        })
        .collect();
    for (i, a) in writes.iter().enumerate() {
        for b in &writes[i + 1..] {
            if a.overlaps(b) {
                return Err(invalid(format!(
                    "the {branch} branch writes the same key more than once ({}); a key may be written once per branch",
                    describe(a)
                )));
            }
        }
    }
    Ok(())
}

fn describe(r: &KeyRange) -> String {
    match r {
        KeyRange::Key(k) => format!("key {:?}", String::from_utf8_lossy(k)),
        KeyRange::Range { start, .. } => format!("range from {:?}", String::from_utf8_lossy(start)),
    }
}

/// A transaction, checked.
pub(crate) fn txn(req: &pb::TxnRequest) -> Result<Txn, ServiceError> {
    let total = req.compare.len() + req.success.len() + req.failure.len();
    if total > MAX_TXN_OPS {
        return Err(invalid(format!(
            "transaction has {total} operations (compares and both branches); the limit (MAX_TXN_OPS) is {MAX_TXN_OPS}"
        )));
    }
    let compares = req.compare.iter().map(compare).collect::<Result<Vec<_>, _>>()?;
    let success =
        req.success.iter().enumerate().map(|(n, op)| txn_op(op, "success", n)).collect::<Result<Vec<_>, _>>()?;
    let failure =
        req.failure.iter().enumerate().map(|(n, op)| txn_op(op, "failure", n)).collect::<Result<Vec<_>, _>>()?;
    check_branch(&success, "success")?;
    check_branch(&failure, "failure")?;
    Ok(Txn { compares, success, failure })
}

/// A key-value in protobuf.
pub(crate) fn kv(kv: KeyValue) -> pb::KeyValue {
    pb::KeyValue {
        key: kv.key.into(),
        value: kv.value.into(),
        create_index: kv.create_index,
        modify_index: kv.modify_index,
        version: kv.version,
    }
}

/// A range result in protobuf, with where to continue.
pub(crate) fn range_response(
    result: RangeResult,
    range: &KeyRange,
    header: Option<pb::ResponseHeader>,
) -> pb::RangeResponse {
    let next_key = if result.more {
        result.kvs.last().map(|kv| {
            let mut k = kv.key.clone();
            k.push(0);
            k
        })
    } else {
        None
    };
    pb::RangeResponse {
        header,
        count: result.count,
        more: result.more,
        next_key: next_key.unwrap_or_default().into(),
        range_end: range_end_bytes(range).into(),
        kvs: result.kvs.into_iter().map(kv).collect(),
    }
}

/// One transaction operation's result in protobuf.
pub(crate) fn txn_op_response(op: &TxnOp, result: TxnOpResult) -> pb::ResponseOp {
    use pb::response_op::Response;
    let response = match (op, result) {
        (_, TxnOpResult::Put { prev }) => Response::Put(pb::PutResponse { header: None, prev_kv: prev.map(kv) }),
        (_, TxnOpResult::Delete { deleted, prev }) => {
            Response::Delete(pb::DeleteResponse { header: None, deleted, prev_kvs: prev.into_iter().map(kv).collect() })
        }
        (TxnOp::Range(r), TxnOpResult::Range(found)) => Response::Range(range_response(found, &r.range, None)),
        (_, TxnOpResult::Range(found)) => {
            Response::Range(range_response(found, &KeyRange::Range { start: Vec::new(), end: None }, None))
        }
    };
    pb::ResponseOp { response: Some(response) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(key: &str) -> pb::RequestOp {
        pb::RequestOp {
            request: Some(pb::request_op::Request::Put(pb::PutRequest {
                key: key.as_bytes().to_vec().into(),
                ..Default::default()
            })),
        }
    }

    fn del_prefix(key: &str) -> pb::RequestOp {
        pb::RequestOp {
            request: Some(pb::request_op::Request::Delete(pb::DeleteRequest {
                key: key.as_bytes().to_vec().into(),
                prefix: true,
                ..Default::default()
            })),
        }
    }

    fn err(r: Result<impl std::fmt::Debug, ServiceError>) -> String {
        r.err().map(|e| e.to_string()).unwrap_or_default()
    }

    #[test]
    fn ranges_follow_etcd() -> Result<(), ServiceError> {
        assert_eq!(key_range(b"a", b"", false)?, KeyRange::Key(b"a".to_vec()));
        assert_eq!(key_range(b"a", b"\0", false)?, KeyRange::Range { start: b"a".to_vec(), end: None });
        assert_eq!(key_range(b"a/", b"", true)?, KeyRange::prefix(b"a/"));
        assert_eq!(key_range(b"", b"\0", false)?, KeyRange::Range { start: vec![], end: None });
        assert!(err(key_range(b"", b"", false)).contains("key is empty"));
        assert!(err(key_range(b"a", b"b", true)).contains("not both"));
        // An end before the start is a mistake (swapped arguments), not an empty range.
        let swapped = err(key_range(b"b", b"a", false));
        assert!(swapped.contains("invalid range") && swapped.contains("sorts before key"), "{swapped}");
        assert!(err(key_range(b"b", b"\x00\x01", false)).contains("invalid range"));
        // [a, a) is empty but well formed, as in etcd.
        assert_eq!(key_range(b"a", b"a", false)?, KeyRange::Range { start: b"a".to_vec(), end: Some(b"a".to_vec()) });
        Ok(())
    }

    #[test]
    fn transactions_are_checked() {
        let ok = pb::TxnRequest { success: vec![put("a"), put("b")], failure: vec![put("a")], ..Default::default() };
        assert!(txn(&ok).is_ok(), "the same key in two branches is fine");
        let dup = pb::TxnRequest { success: vec![put("a"), put("a")], ..Default::default() };
        assert!(err(txn(&dup)).contains("same key more than once"));
        let inside = pb::TxnRequest { success: vec![del_prefix("a/"), put("a/1")], ..Default::default() };
        assert!(err(txn(&inside)).contains("same key more than once"));
        let big = pb::TxnRequest { success: (0..129).map(|i| put(&format!("k{i}"))).collect(), ..Default::default() };
        assert!(err(txn(&big)).contains("MAX_TXN_OPS"));
        let at_limit =
            pb::TxnRequest { success: (0..128).map(|i| put(&format!("k{i}"))).collect(), ..Default::default() };
        assert!(txn(&at_limit).is_ok());
        let mut cas = pb::PutRequest { key: b"k".to_vec().into(), if_absent: true, ..Default::default() };
        let with_cas = pb::TxnRequest {
            success: vec![pb::RequestOp { request: Some(pb::request_op::Request::Put(cas.clone())) }],
            ..Default::default()
        };
        assert!(err(txn(&with_cas)).contains("no precondition"));
        cas.if_absent = false;
        cas.expected_modify_index = Some(0);
        assert!(err(put_op(&cas)).contains("use if_absent"));
    }
}
