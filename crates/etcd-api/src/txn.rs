//! etcd's Put, DeleteRange and Txn requests, checked as etcd checks them and translated onto
//! raftkv's log operations (`types::WriteOp`), and the transaction's results back.
//!
//! A transaction's compares map onto raftkv's, which hold the same meaning for a missing key
//! (its version and revisions are 0), with two translations: etcd's value compare never
//! holds on a missing key (raftkv's `NOT_EQUAL` would), so each gets an "exists" compare
//! beside it; and negative revision targets (raftkv's are unsigned) are decided here.
//!
//! A put's lease travels beside the write, per key ([`types::LeasedWrite`]): a put with a
//! lease attaches its key, one with `ignore_lease` keeps the key's lease, any other put
//! detaches it, as in etcd. Whether the lease exists is decided when the write is applied.

use proto::etcd::etcdserverpb::compare::{CompareResult, CompareTarget as EtcdTarget, TargetUnion};
use proto::etcd::etcdserverpb::request_op::Request;
use proto::etcd::etcdserverpb::response_op::Response;
use proto::etcd::etcdserverpb::{
    Compare as EtcdCompare, DeleteRangeRequest, DeleteRangeResponse, PutRequest, PutResponse, RangeResponse, RequestOp,
    ResponseHeader, ResponseOp, TxnRequest,
};
use service::limits;
use std::collections::BTreeMap;

use types::auth::Access;
use types::{Compare, CompareOp, CompareTarget, DeleteOp, KeyRange, LeaseAttach, PutOp, Txn, TxnOp, TxnOpResult};

use crate::range::{self, Plan, key_value};
use crate::{EtcdError, signed};

/// The most compares, or operations in one branch, of a transaction: etcd's default
/// `--max-txn-ops` (128). Past it: "etcdserver: too many operations in txn request".
pub const MAX_TXN_OPS: usize = 128;

/// A put, checked in etcd's order. `ignore_value` is the caller's business (it needs the
/// stored value); the value checked here is the request's.
pub(crate) fn put_op(req: &PutRequest) -> Result<PutOp, EtcdError> {
    if req.key.is_empty() {
        return Err(EtcdError::EmptyKey);
    }
    if req.ignore_value && !req.value.is_empty() {
        return Err(EtcdError::ValueProvided);
    }
    if req.ignore_lease && req.lease != 0 {
        return Err(EtcdError::LeaseProvided);
    }
    limits::check_key(&req.key)?;
    limits::check_value(&req.value)?;
    Ok(PutOp { key: req.key.to_vec(), value: req.value.to_vec(), expect: None, prev_kv: req.prev_kv })
}

/// What a put does with its key's lease: none for a plain put (it detaches the key).
pub(crate) fn put_lease(req: &PutRequest) -> Option<LeaseAttach> {
    if req.ignore_lease {
        Some(LeaseAttach::Keep)
    } else if req.lease != 0 {
        Some(LeaseAttach::Lease(req.lease))
    } else {
        None
    }
}

/// Adds what a put of `key` does with its lease to `leases`. One write holds one choice
/// per key: a key put in both branches of a transaction with two different choices is
/// refused.
fn add_lease(
    leases: &mut BTreeMap<Vec<u8>, LeaseAttach>,
    key: &[u8],
    attach: Option<LeaseAttach>,
    other_puts: &[&PutOp],
) -> Result<(), EtcdError> {
    let conflict = || {
        EtcdError::Unsupported(
            "a key put in both branches of a txn must be put with the same lease (or both without one) in raftkv"
                .into(),
        )
    };
    match (attach, leases.get(key)) {
        (Some(a), Some(b)) if a != *b => Err(conflict()),
        (Some(a), None) => {
            if other_puts.iter().any(|p| p.key == key) {
                return Err(conflict());
            }
            leases.insert(key.to_vec(), a);
            Ok(())
        }
        (None, Some(_)) => Err(conflict()),
        _ => Ok(()),
    }
}

/// A delete, checked.
pub(crate) fn delete_op(req: &DeleteRangeRequest) -> Result<DeleteOp, EtcdError> {
    Ok(DeleteOp { range: range::key_range(&req.key, &req.range_end)?, expect: None, prev_kv: req.prev_kv })
}

/// What one compare becomes.
#[derive(Debug, PartialEq)]
enum Translated {
    /// raftkv compares that together hold exactly when etcd's does.
    Compares(Vec<Compare>),
    /// It always holds: nothing to check.
    Holds,
    /// It never holds.
    Fails,
}

fn holds(op: CompareOp, current: i64, target: i64) -> bool {
    match op {
        CompareOp::Equal => current == target,
        CompareOp::NotEqual => current != target,
        CompareOp::Greater => current > target,
        CompareOp::Less => current < target,
    }
}

fn compare(c: &EtcdCompare) -> Result<Translated, EtcdError> {
    if c.key.is_empty() {
        return Err(EtcdError::EmptyKey);
    }
    limits::check_key(&c.key)?;
    if !c.range_end.is_empty() {
        return Err(EtcdError::Unsupported(
            "raftkv compares one key per compare: range_end is not supported in a txn compare yet; give one compare per key".into(),
        ));
    }
    let op = match CompareResult::try_from(c.result) {
        Ok(CompareResult::Equal) => CompareOp::Equal,
        Ok(CompareResult::NotEqual) => CompareOp::NotEqual,
        Ok(CompareResult::Greater) => CompareOp::Greater,
        Ok(CompareResult::Less) => CompareOp::Less,
        Err(_) => {
            return Err(EtcdError::Unsupported(format!(
                "compare result {} is not EQUAL (0), GREATER (1), LESS (2) or NOT_EQUAL (3)",
                c.result
            )));
        }
    };
    let target = EtcdTarget::try_from(c.target).map_err(|_| {
        EtcdError::Unsupported(format!(
            "compare target {} is not VERSION (0), CREATE (1), MOD (2), VALUE (3) or LEASE (4)",
            c.target
        ))
    })?;
    // As etcd's generated getters: the union field of the target, or its zero value.
    let number = |want: fn(&TargetUnion) -> Option<i64>| c.target_union.as_ref().and_then(want).unwrap_or(0);
    let key = c.key.to_vec();
    let revision = |n: i64, make: fn(u64) -> CompareTarget| -> Translated {
        // raftkv's figures are unsigned: a negative target is decided here.
        match u64::try_from(n) {
            Ok(n) => Translated::Compares(vec![Compare { key: key.clone(), op, target: make(n) }]),
            Err(_) if holds(op, 0, n) => Translated::Holds,
            Err(_) => Translated::Fails,
        }
    };
    Ok(match target {
        EtcdTarget::Version => {
            revision(number(|u| if let TargetUnion::Version(v) = u { Some(*v) } else { None }), CompareTarget::Version)
        }
        EtcdTarget::Create => revision(
            number(|u| if let TargetUnion::CreateRevision(v) = u { Some(*v) } else { None }),
            CompareTarget::CreateIndex,
        ),
        EtcdTarget::Mod => revision(
            number(|u| if let TargetUnion::ModRevision(v) = u { Some(*v) } else { None }),
            CompareTarget::ModifyIndex,
        ),
        EtcdTarget::Lease => {
            // A missing key's lease is 0, as in etcd.
            let lease = number(|u| if let TargetUnion::Lease(v) = u { Some(*v) } else { None });
            Translated::Compares(vec![Compare { key, op, target: CompareTarget::Lease(lease) }])
        }
        EtcdTarget::Value => {
            let value = match &c.target_union {
                Some(TargetUnion::Value(v)) => v.to_vec(),
                _ => Vec::new(),
            };
            limits::check_value(&value)?;
            // etcd: a value compare on a missing key never holds.
            Translated::Compares(vec![
                Compare { key: key.clone(), op: CompareOp::Equal, target: CompareTarget::Exists(true) },
                Compare { key, op, target: CompareTarget::Value(value) },
            ])
        }
    })
}

/// A compare that never holds: no key's version is below 0.
fn never(key: Vec<u8>) -> Compare {
    Compare { key, op: CompareOp::Less, target: CompareTarget::Version(0) }
}

fn txn_op(op: &RequestOp) -> Result<(TxnOp, Option<Plan>), EtcdError> {
    match &op.request {
        Some(Request::RequestPut(p)) => {
            if p.ignore_value {
                return Err(EtcdError::Unsupported(
                    "ignore_value is not supported inside a txn yet; compare the key's mod_revision and put its value"
                        .into(),
                ));
            }
            Ok((TxnOp::Put(put_op(p)?), None))
        }
        Some(Request::RequestDeleteRange(d)) => Ok((TxnOp::Delete(delete_op(d)?), None)),
        Some(Request::RequestRange(r)) => {
            if r.revision != 0 {
                return Err(EtcdError::Unsupported(
                    "a range inside a txn reads at the txn's own revision: give revision 0".into(),
                ));
            }
            let plan = range::plan(r)?;
            Ok((TxnOp::Range(plan.op.clone()), Some(plan)))
        }
        Some(Request::RequestTxn(_)) => Err(EtcdError::Unsupported(
            "nested transactions are not supported yet: flatten the txn into one level".into(),
        )),
        None => Err(EtcdError::Unsupported(
            "an empty txn operation: set request_range, request_put or request_delete_range".into(),
        )),
    }
}

/// etcd's `checkIntervals`: in one branch, no key is put twice, and no key put lies in a
/// deleted range (deletes may overlap each other).
fn check_branch(ops: &[TxnOp]) -> Result<(), EtcdError> {
    let deletes: Vec<&KeyRange> =
        ops.iter().filter_map(|op| if let TxnOp::Delete(d) = op { Some(&d.range) } else { None }).collect();
    let mut puts = std::collections::BTreeSet::new();
    for op in ops {
        if let TxnOp::Put(p) = op
            && (!puts.insert(p.key.as_slice()) || deletes.iter().any(|r| r.contains(&p.key)))
        {
            return Err(EtcdError::DuplicateKey);
        }
    }
    Ok(())
}

/// The permissions a transaction needs, as etcd's `checkTxnAuth` lists them: read on each
/// compare's keys and each range, write on each put and delete (and read for a delete's
/// prev_kv), in both branches, nested transactions included. Call it on a checked request.
pub(crate) fn permissions(req: &TxnRequest) -> Result<Vec<(KeyRange, Access)>, EtcdError> {
    let mut needed = Vec::new();
    for c in &req.compare {
        needed.push((range::key_range(&c.key, &c.range_end)?, Access::Read));
    }
    for op in req.success.iter().chain(&req.failure) {
        match &op.request {
            Some(Request::RequestRange(r)) => needed.push((range::plan(r)?.op.range, Access::Read)),
            Some(Request::RequestPut(p)) => needed.push((KeyRange::Key(p.key.to_vec()), Access::Write)),
            Some(Request::RequestDeleteRange(d)) => {
                let keys = range::key_range(&d.key, &d.range_end)?;
                if d.prev_kv {
                    needed.push((keys.clone(), Access::Read));
                }
                needed.push((keys, Access::Write));
            }
            Some(Request::RequestTxn(t)) => needed.extend(permissions(t)?),
            None => {}
        }
    }
    Ok(needed)
}

/// A checked transaction: the log's, and the plans of its ranges for shaping their answers.
#[derive(Debug)]
pub(crate) struct Checked {
    pub(crate) txn: Txn,
    /// What each put does with its key's lease (empty: every put detaches its key).
    pub(crate) leases: BTreeMap<Vec<u8>, LeaseAttach>,
    success: Vec<Option<Plan>>,
    failure: Vec<Option<Plan>>,
}

/// Checks an etcd transaction as etcd does and translates it.
pub(crate) fn txn(req: &TxnRequest) -> Result<Checked, EtcdError> {
    if req.compare.len().max(req.success.len()).max(req.failure.len()) > MAX_TXN_OPS {
        return Err(EtcdError::TooManyOps);
    }
    let mut compares = Vec::with_capacity(req.compare.len());
    for c in &req.compare {
        match compare(c)? {
            Translated::Compares(cs) => compares.extend(cs),
            Translated::Holds => {}
            Translated::Fails => compares.push(never(c.key.to_vec())),
        }
    }
    let branch = |ops: &[RequestOp]| -> Result<(Vec<TxnOp>, Vec<Option<Plan>>), EtcdError> {
        let (ops, plans): (Vec<_>, Vec<_>) = ops.iter().map(txn_op).collect::<Result<Vec<_>, _>>()?.into_iter().unzip();
        check_branch(&ops)?;
        Ok((ops, plans))
    };
    let (success, success_plans) = branch(&req.success)?;
    let (failure, failure_plans) = branch(&req.failure)?;
    let mut leases = BTreeMap::new();
    let puts = |ops: &[TxnOp]| -> Vec<PutOp> {
        ops.iter().filter_map(|op| if let TxnOp::Put(p) = op { Some(p.clone()) } else { None }).collect()
    };
    let (success_puts, failure_puts) = (puts(&success), puts(&failure));
    let requested = |ops: &[RequestOp]| -> Vec<Option<LeaseAttach>> {
        ops.iter()
            .filter_map(|op| if let Some(Request::RequestPut(p)) = &op.request { Some(put_lease(p)) } else { None })
            .collect()
    };
    let (success_leases, failure_leases) = (requested(&req.success), requested(&req.failure));
    for (put, attach) in success_puts.iter().zip(success_leases) {
        add_lease(&mut leases, &put.key, attach, &[])?;
    }
    let before: Vec<&PutOp> = success_puts.iter().collect();
    for (put, attach) in failure_puts.iter().zip(failure_leases) {
        add_lease(&mut leases, &put.key, attach, &before)?;
    }
    Ok(Checked { txn: Txn { compares, success, failure }, leases, success: success_plans, failure: failure_plans })
}

impl Checked {
    /// etcd's answers to the operations of the branch that ran, each with a header carrying
    /// the transaction's revision (as etcd fills them).
    pub(crate) fn responses(&self, succeeded: bool, results: Vec<TxnOpResult>, revision: u64) -> Vec<ResponseOp> {
        let plans = if succeeded { &self.success } else { &self.failure };
        let header = || Some(ResponseHeader { revision: signed(revision), ..Default::default() });
        plans
            .iter()
            .zip(results)
            .map(|(plan, result)| {
                let response = match result {
                    TxnOpResult::Put { prev } => {
                        Response::ResponsePut(PutResponse { header: header(), prev_kv: prev.map(key_value) })
                    }
                    TxnOpResult::Delete { deleted, prev } => Response::ResponseDeleteRange(DeleteRangeResponse {
                        header: header(),
                        deleted: signed(deleted),
                        prev_kvs: prev.into_iter().map(key_value).collect(),
                    }),
                    TxnOpResult::Range(found) => {
                        let (kvs, count, more) = match plan {
                            Some(plan) => {
                                let a = plan.finish(found);
                                (a.kvs, a.count, a.more)
                            }
                            None => (found.kvs.into_iter().map(key_value).collect(), signed(found.count), found.more),
                        };
                        Response::ResponseRange(RangeResponse { header: header(), kvs, more, count })
                    }
                };
                ResponseOp { response: Some(response) }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use proto::etcd::etcdserverpb::RangeRequest;

    use super::*;

    fn put(key: &str) -> RequestOp {
        RequestOp {
            request: Some(Request::RequestPut(PutRequest {
                key: key.as_bytes().to_vec().into(),
                ..Default::default()
            })),
        }
    }

    fn del(key: &str, end: &[u8]) -> RequestOp {
        RequestOp {
            request: Some(Request::RequestDeleteRange(DeleteRangeRequest {
                key: key.as_bytes().to_vec().into(),
                range_end: end.to_vec().into(),
                ..Default::default()
            })),
        }
    }

    #[test]
    fn a_txn_needs_read_on_compares_and_ranges_and_write_on_puts_and_deletes() -> Result<(), EtcdError> {
        let mut prev_del = del("d", b"e");
        if let Some(Request::RequestDeleteRange(d)) = prev_del.request.as_mut() {
            d.prev_kv = true;
        }
        let range = RequestOp {
            request: Some(Request::RequestRange(RangeRequest { key: b"r".to_vec().into(), ..Default::default() })),
        };
        let nested = RequestOp {
            request: Some(Request::RequestTxn(TxnRequest { success: vec![put("n")], ..Default::default() })),
        };
        let req = TxnRequest {
            compare: vec![cmp(EtcdTarget::Version, CompareResult::Equal, TargetUnion::Version(0))],
            success: vec![put("p"), range],
            failure: vec![prev_del, nested],
        };
        let key = |k: &[u8]| KeyRange::Key(k.to_vec());
        let de = KeyRange::Range { start: b"d".to_vec(), end: Some(b"e".to_vec()) };
        assert_eq!(
            permissions(&req)?,
            vec![
                (key(b"k"), Access::Read),
                (key(b"p"), Access::Write),
                (key(b"r"), Access::Read),
                (de.clone(), Access::Read),
                (de, Access::Write),
                (key(b"n"), Access::Write),
            ]
        );
        Ok(())
    }

    fn cmp(target: EtcdTarget, result: CompareResult, union: TargetUnion) -> EtcdCompare {
        EtcdCompare {
            result: result as i32,
            target: target as i32,
            key: b"k".to_vec().into(),
            target_union: Some(union),
            range_end: Default::default(),
        }
    }

    #[test]
    fn too_many_operations_at_and_past_the_limit() {
        let at =
            TxnRequest { success: (0..MAX_TXN_OPS).map(|i| put(&format!("k{i}"))).collect(), ..Default::default() };
        assert!(txn(&at).is_ok());
        let past =
            TxnRequest { success: (0..=MAX_TXN_OPS).map(|i| put(&format!("k{i}"))).collect(), ..Default::default() };
        assert!(matches!(txn(&past), Err(EtcdError::TooManyOps)));
        // etcd counts the largest of the three lists, not their sum.
        let spread = TxnRequest {
            compare: (0..MAX_TXN_OPS)
                .map(|_| cmp(EtcdTarget::Version, CompareResult::Equal, TargetUnion::Version(0)))
                .collect(),
            success: (0..MAX_TXN_OPS).map(|i| put(&format!("k{i}"))).collect(),
            failure: (0..MAX_TXN_OPS).map(|i| put(&format!("k{i}"))).collect(),
        };
        assert!(txn(&spread).is_ok());
    }

    #[test]
    fn duplicate_keys_as_etcd() {
        let two_puts = TxnRequest { success: vec![put("a"), put("a")], ..Default::default() };
        assert!(matches!(txn(&two_puts), Err(EtcdError::DuplicateKey)));
        let put_in_delete = TxnRequest { success: vec![del("a", b"b"), put("a1")], ..Default::default() };
        assert!(matches!(txn(&put_in_delete), Err(EtcdError::DuplicateKey)));
        // Overlapping deletes, and the same key in both branches, are fine in etcd.
        let deletes =
            TxnRequest { success: vec![del("a", b"c"), del("b", b"")], failure: vec![put("a")], ..Default::default() };
        assert!(txn(&deletes).is_ok());
    }

    #[test]
    fn compares_translate_with_etcds_meaning() -> Result<(), EtcdError> {
        // A value compare also requires the key to exist.
        let c = compare(&cmp(EtcdTarget::Value, CompareResult::NotEqual, TargetUnion::Value(b"v".to_vec().into())))?;
        assert_eq!(
            c,
            Translated::Compares(vec![
                Compare { key: b"k".to_vec(), op: CompareOp::Equal, target: CompareTarget::Exists(true) },
                Compare { key: b"k".to_vec(), op: CompareOp::NotEqual, target: CompareTarget::Value(b"v".to_vec()) },
            ])
        );
        let c = compare(&cmp(EtcdTarget::Mod, CompareResult::Greater, TargetUnion::ModRevision(4)))?;
        assert_eq!(
            c,
            Translated::Compares(vec![Compare {
                key: b"k".to_vec(),
                op: CompareOp::Greater,
                target: CompareTarget::ModifyIndex(4)
            }])
        );
        // Lease compares are the key's lease; negative revision targets are decided at once.
        assert_eq!(
            compare(&cmp(EtcdTarget::Lease, CompareResult::Equal, TargetUnion::Lease(7)))?,
            Translated::Compares(vec![Compare {
                key: b"k".to_vec(),
                op: CompareOp::Equal,
                target: CompareTarget::Lease(7)
            }])
        );
        assert_eq!(
            compare(&cmp(EtcdTarget::Version, CompareResult::Greater, TargetUnion::Version(-1)))?,
            Translated::Holds
        );
        assert_eq!(
            compare(&cmp(EtcdTarget::Create, CompareResult::Less, TargetUnion::CreateRevision(-1)))?,
            Translated::Fails
        );
        // A missing union reads as its zero value, as etcd's getters do.
        let mut bare = cmp(EtcdTarget::Version, CompareResult::Equal, TargetUnion::Version(0));
        bare.target_union = None;
        assert_eq!(
            compare(&bare)?,
            Translated::Compares(vec![Compare {
                key: b"k".to_vec(),
                op: CompareOp::Equal,
                target: CompareTarget::Version(0)
            }])
        );
        let mut ranged = bare.clone();
        ranged.range_end = b"z".to_vec().into();
        assert!(matches!(compare(&ranged), Err(EtcdError::Unsupported(_))));
        let mut empty = bare;
        empty.key = Default::default();
        assert!(matches!(compare(&empty), Err(EtcdError::EmptyKey)));
        Ok(())
    }

    #[test]
    fn puts_are_checked_in_etcds_order() {
        let p = |f: fn(&mut PutRequest)| {
            let mut r = PutRequest { key: b"k".to_vec().into(), ..Default::default() };
            f(&mut r);
            put_op(&r)
        };
        assert!(matches!(p(|r| r.key = Default::default()), Err(EtcdError::EmptyKey)));
        assert!(matches!(
            p(|r| {
                r.ignore_value = true;
                r.value = b"v".to_vec().into()
            }),
            Err(EtcdError::ValueProvided)
        ));
        assert!(matches!(
            p(|r| {
                r.ignore_lease = true;
                r.lease = 5
            }),
            Err(EtcdError::LeaseProvided)
        ));
        assert!(p(|r| r.lease = 5).is_ok(), "whether the lease exists is decided when the put applies");
        assert!(p(|r| r.ignore_lease = true).is_ok());
    }

    fn leased_put(key: &str, lease: i64) -> RequestOp {
        RequestOp {
            request: Some(Request::RequestPut(PutRequest {
                key: key.as_bytes().to_vec().into(),
                lease,
                ..Default::default()
            })),
        }
    }

    #[test]
    fn puts_carry_their_lease_per_key() {
        let t = TxnRequest {
            success: vec![leased_put("a", 7), put("b")],
            failure: vec![leased_put("a", 7), leased_put("c", 8)],
            ..Default::default()
        };
        let checked = txn(&t).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            checked.leases,
            BTreeMap::from([(b"a".to_vec(), LeaseAttach::Lease(7)), (b"c".to_vec(), LeaseAttach::Lease(8))])
        );
        let differ =
            TxnRequest { success: vec![leased_put("a", 7)], failure: vec![leased_put("a", 8)], ..Default::default() };
        assert!(matches!(txn(&differ), Err(EtcdError::Unsupported(m)) if m.contains("same lease")));
        let one_without =
            TxnRequest { success: vec![put("a")], failure: vec![leased_put("a", 8)], ..Default::default() };
        assert!(matches!(txn(&one_without), Err(EtcdError::Unsupported(_))));
        let keep = PutRequest { key: b"k".to_vec().into(), ignore_lease: true, ..Default::default() };
        assert_eq!(put_lease(&keep), Some(LeaseAttach::Keep));
    }

    #[test]
    fn nested_txns_and_past_revisions_are_refused_clearly() {
        let nested = TxnRequest {
            success: vec![RequestOp { request: Some(Request::RequestTxn(TxnRequest::default())) }],
            ..Default::default()
        };
        assert!(matches!(txn(&nested), Err(EtcdError::Unsupported(m)) if m.contains("nested")));
        let at_rev = TxnRequest {
            success: vec![RequestOp {
                request: Some(Request::RequestRange(RangeRequest {
                    key: b"k".to_vec().into(),
                    revision: 3,
                    ..Default::default()
                })),
            }],
            ..Default::default()
        };
        assert!(matches!(txn(&at_rev), Err(EtcdError::Unsupported(m)) if m.contains("revision 0")));
    }
}
