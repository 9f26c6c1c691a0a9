//! Range as etcd answers it: the request's key range, what to fetch from the state machine,
//! and etcd's post-processing of what was fetched (the revision filters, the sort, the
//! limit), in etcd 3.4's order (`applierV3backend.Range` in etcd's `apply.go`).

use std::cmp::Ordering;

use proto::etcd::etcdserverpb::RangeRequest;
use proto::etcd::etcdserverpb::range_request::{SortOrder, SortTarget};
use proto::etcd::mvccpb;
use service::limits;
use types::{KeyRange, KeyValue, RangeOp, RangeResult};

use crate::{EtcdError, signed};

/// The most bytes of keys and values one Range answers (64 MiB). etcd has no such bound of
/// its own (its clients accept up to 2 GiB); raftkv reads a range whole into memory, so a
/// range past it is refused with `RESOURCE_EXHAUSTED`, and the message says to page with
/// `limit`. (A range inside a transaction is bounded by the state machine's own read budget
/// and answers `more` instead, since the transaction has already been applied.)
pub const MAX_RANGE_RESPONSE_BYTES: usize = 64 << 20;

/// etcd's `[key, range_end)`: one key when `range_end` is empty, every key from `key` on
/// when it is `"\0"`; an end at or before the key selects nothing (as in etcd).
pub(crate) fn key_range(key: &[u8], range_end: &[u8]) -> Result<KeyRange, EtcdError> {
    if key.is_empty() {
        return Err(EtcdError::EmptyKey);
    }
    limits::check_key(key)?;
    if range_end.len() > limits::MAX_KEY_BYTES {
        limits::check_key(range_end)?;
    }
    Ok(match range_end {
        [] => KeyRange::Key(key.to_vec()),
        [0] => KeyRange::Range { start: key.to_vec(), end: None },
        end if end <= key => KeyRange::Range { start: key.to_vec(), end: Some(key.to_vec()) },
        end => KeyRange::Range { start: key.to_vec(), end: Some(end.to_vec()) },
    })
}

/// A checked Range request: what to read, and how to shape the answer.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    /// What the state machine reads.
    pub(crate) op: RangeOp,
    order: SortOrder,
    target: SortTarget,
    /// The caller's limit (0: none).
    limit: usize,
    keys_only: bool,
    min_mod: i64,
    max_mod: i64,
    min_create: i64,
    max_create: i64,
}

/// Checks `req` and plans its read. The revision is the caller's business.
pub(crate) fn plan(req: &RangeRequest) -> Result<Plan, EtcdError> {
    let range = key_range(&req.key, &req.range_end)?;
    let order = SortOrder::try_from(req.sort_order).map_err(|_| EtcdError::InvalidSortOption)?;
    let target = SortTarget::try_from(req.sort_target).map_err(|_| EtcdError::InvalidSortOption)?;
    let limit = usize::try_from(req.limit.max(0)).unwrap_or(usize::MAX);
    let fetch_all = order != SortOrder::None
        || req.min_mod_revision != 0
        || req.max_mod_revision != 0
        || req.min_create_revision != 0
        || req.max_create_revision != 0;
    // etcd fetches one more than the limit to know whether more remain.
    let fetch = if fetch_all || limit == 0 { 0 } else { limit.saturating_add(1) };
    let op = RangeOp {
        range,
        limit: fetch as u64,
        // A sort by value needs the values; they are dropped afterwards.
        keys_only: req.keys_only && target != SortTarget::Value,
        count_only: req.count_only,
    };
    Ok(Plan {
        op,
        order,
        target,
        limit,
        keys_only: req.keys_only,
        min_mod: req.min_mod_revision,
        max_mod: req.max_mod_revision,
        min_create: req.min_create_revision,
        max_create: req.max_create_revision,
    })
}

/// What a Range answers: the key-values, the count and `more`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Answer {
    pub(crate) kvs: Vec<mvccpb::KeyValue>,
    pub(crate) count: i64,
    pub(crate) more: bool,
}

impl Plan {
    /// Whether `found`, read with [`Plan::op`], was cut short by the state machine's byte
    /// bound rather than by the limit: the answer would be incomplete.
    pub(crate) fn truncated(&self, found: &RangeResult) -> bool {
        found.more && (self.op.limit == 0 || (found.kvs.len() as u64) < self.op.limit)
    }

    /// etcd's post-processing of what was read: the revision filters, the sort, the limit.
    pub(crate) fn finish(&self, found: RangeResult) -> Answer {
        let count = signed(found.count);
        let mut kvs: Vec<KeyValue> = found
            .kvs
            .into_iter()
            .filter(|kv| {
                let (m, c) = (signed(kv.modify_index), signed(kv.create_index));
                !(self.max_mod != 0 && m > self.max_mod
                    || self.min_mod != 0 && m < self.min_mod
                    || self.max_create != 0 && c > self.max_create
                    || self.min_create != 0 && c < self.min_create)
            })
            .collect();
        let mut order = self.order;
        if self.target != SortTarget::Key && order == SortOrder::None {
            // etcd: the store answers in key order, so only another target sorts by default.
            order = SortOrder::Ascend;
        }
        if order != SortOrder::None {
            let target = self.target;
            let by = move |a: &KeyValue, b: &KeyValue| -> Ordering {
                match target {
                    SortTarget::Key => a.key.cmp(&b.key),
                    SortTarget::Version => a.version.cmp(&b.version),
                    SortTarget::Create => a.create_index.cmp(&b.create_index),
                    SortTarget::Mod => a.modify_index.cmp(&b.modify_index),
                    SortTarget::Value => a.value.cmp(&b.value),
                }
            };
            // Stable: ties stay in key order (etcd's sort leaves their order unspecified).
            match order {
                SortOrder::Descend => kvs.sort_by(|a, b| by(b, a)),
                _ => kvs.sort_by(by),
            }
        }
        let mut more = false;
        if self.limit > 0 && kvs.len() > self.limit {
            kvs.truncate(self.limit);
            more = true;
        }
        let keys_only = self.keys_only;
        let kvs = kvs
            .into_iter()
            .map(|mut kv| {
                if keys_only {
                    kv.value.clear();
                }
                key_value(kv)
            })
            .collect();
        Answer { kvs, count, more }
    }
}

/// A raftkv key-value as etcd's: revisions are log indexes.
pub(crate) fn key_value(kv: KeyValue) -> mvccpb::KeyValue {
    mvccpb::KeyValue {
        key: kv.key.into(),
        create_revision: signed(kv.create_index),
        mod_revision: signed(kv.modify_index),
        version: signed(kv.version),
        value: kv.value.into(),
        lease: kv.lease,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(key: &str, value: &str, create: u64, modify: u64, version: u64) -> KeyValue {
        KeyValue { key: key.into(), value: value.into(), create_index: create, modify_index: modify, version, lease: 0 }
    }

    /// Four keys in key order, as the state machine answers.
    fn stored() -> RangeResult {
        RangeResult {
            kvs: vec![kv("a", "3", 5, 9, 2), kv("b", "1", 3, 3, 1), kv("c", "4", 4, 8, 3), kv("d", "2", 6, 6, 1)],
            count: 4,
            more: false,
        }
    }

    fn keys(a: &Answer) -> Vec<String> {
        a.kvs.iter().map(|kv| String::from_utf8_lossy(&kv.key).into_owned()).collect()
    }

    fn req(f: impl FnOnce(&mut RangeRequest)) -> RangeRequest {
        let mut r = RangeRequest { key: b"a".to_vec().into(), range_end: vec![0].into(), ..Default::default() };
        f(&mut r);
        r
    }

    #[test]
    fn key_ranges_follow_etcd() -> Result<(), EtcdError> {
        assert_eq!(key_range(b"a", b"")?, KeyRange::Key(b"a".to_vec()));
        assert_eq!(key_range(b"a", b"\0")?, KeyRange::Range { start: b"a".to_vec(), end: None });
        assert_eq!(key_range(b"a", b"c")?, KeyRange::Range { start: b"a".to_vec(), end: Some(b"c".to_vec()) });
        // An end before the key is an empty range in etcd, not an error.
        assert_eq!(key_range(b"b", b"a")?, KeyRange::Range { start: b"b".to_vec(), end: Some(b"b".to_vec()) });
        assert!(matches!(key_range(b"", b"\0"), Err(EtcdError::EmptyKey)));
        Ok(())
    }

    #[test]
    fn limits_fetch_one_more_unless_sorting_or_filtering() -> Result<(), EtcdError> {
        assert_eq!(plan(&req(|r| r.limit = 2))?.op.limit, 3);
        assert_eq!(plan(&req(|_| {}))?.op.limit, 0);
        assert_eq!(
            plan(&req(|r| {
                r.limit = 2;
                r.sort_order = SortOrder::Descend as i32;
            }))?
            .op
            .limit,
            0
        );
        assert_eq!(
            plan(&req(|r| {
                r.limit = 2;
                r.min_mod_revision = 4;
            }))?
            .op
            .limit,
            0
        );
        assert!(matches!(plan(&req(|r| r.sort_order = 7)), Err(EtcdError::InvalidSortOption)));
        assert!(matches!(plan(&req(|r| r.sort_target = 9)), Err(EtcdError::InvalidSortOption)));
        Ok(())
    }

    #[test]
    fn sorts_filters_and_limits_as_etcd() -> Result<(), EtcdError> {
        let p = plan(&req(|r| {
            r.sort_order = SortOrder::Descend as i32;
            r.sort_target = SortTarget::Mod as i32;
        }))?;
        assert_eq!(keys(&p.finish(stored())), ["a", "c", "d", "b"]);
        // Another target without an order sorts ascending.
        let p = plan(&req(|r| r.sort_target = SortTarget::Value as i32))?;
        assert_eq!(keys(&p.finish(stored())), ["b", "d", "a", "c"]);
        let p = plan(&req(|r| {
            r.sort_order = SortOrder::Ascend as i32;
            r.sort_target = SortTarget::Create as i32;
            r.limit = 2;
        }))?;
        let a = p.finish(stored());
        assert_eq!((keys(&a), a.more, a.count), (vec!["b".to_string(), "c".to_string()], true, 4));
        // The filters prune; the count stays the range's.
        let p = plan(&req(|r| {
            r.min_mod_revision = 4;
            r.max_create_revision = 5;
        }))?;
        let a = p.finish(stored());
        assert_eq!((keys(&a), a.count), (vec!["a".to_string(), "c".to_string()], 4));
        // Keys only, even when sorted by value.
        let p = plan(&req(|r| {
            r.keys_only = true;
            r.sort_target = SortTarget::Value as i32;
        }))?;
        assert!(!p.op.keys_only, "a sort by value needs the values");
        let a = p.finish(stored());
        assert!(a.kvs.iter().all(|kv| kv.value.is_empty()));
        assert_eq!(keys(&a), ["b", "d", "a", "c"]);
        Ok(())
    }

    #[test]
    fn a_limit_reports_more() -> Result<(), EtcdError> {
        let p = plan(&req(|r| r.limit = 2))?;
        let mut found = stored();
        found.kvs.truncate(3);
        found.more = true;
        assert!(!p.truncated(&found), "cut by the fetch limit");
        let a = p.finish(found);
        assert_eq!((keys(&a), a.more), (vec!["a".to_string(), "b".to_string()], true));
        let mut exact = stored();
        exact.kvs.truncate(2);
        assert!(!p.finish(exact).more, "exactly the limit: nothing more");
        Ok(())
    }

    #[test]
    fn a_range_cut_by_bytes_is_truncated() -> Result<(), EtcdError> {
        let p = plan(&req(|_| {}))?;
        let mut cut = stored();
        cut.kvs.truncate(1);
        cut.more = true;
        assert!(p.truncated(&cut));
        assert!(!p.truncated(&stored()));
        let limited = plan(&req(|r| r.limit = 3))?;
        let mut cut = stored();
        cut.kvs.truncate(2);
        cut.more = true;
        assert!(limited.truncated(&cut), "fewer than the fetch limit, yet more");
        Ok(())
    }
}
