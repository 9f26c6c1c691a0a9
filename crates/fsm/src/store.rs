//! The state machine's redb tables and the pure logic of applying writes to them.

use std::collections::{BTreeMap, HashMap};

use redb::{ReadableTable, Table, TableDefinition, WriteTransaction};
use types::{
    Compare, CompareOp, CompareTarget, DeleteOp, Expect, KeyRange, KeyValue, LeaseAttach, LeaseCommand, LeaseId,
    LeaseOutcome, LogId, PutOp, RangeOp, RangeResult, StoredMembership, Txn, TxnOp, TxnOpResult, WriteCommand, WriteOp,
    WriteOutcome, WriteResult, codec,
};

use crate::Error;
use crate::changes::{Event, EventKind};

/// Key → stored record ([`Record`]).
pub(crate) const KV: TableDefinition<'_, &[u8], &[u8]> = TableDefinition::new("kv");
/// etcd lease id → its granted TTL in seconds ([`types::lease`]).
pub(crate) const LEASES: TableDefinition<'_, i64, i64> = TableDefinition::new("leases");
/// [`lease_key`] (lease id, key) → nothing: the keys attached to each lease, in key order per
/// lease. An index of what the `kv` records say (each record names its lease); rebuilt from
/// them when a snapshot is installed.
pub(crate) const LEASE_KEYS: TableDefinition<'_, &[u8], ()> = TableDefinition::new("lease_keys");

/// Named values: [`META_LAST_APPLIED`], [`META_MEMBERSHIP`].
pub(crate) const META: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("sm_meta");
/// Log index → (request id, the encoded [`WriteOutcome`] of the write that carried it, first
/// applied at that index). Keyed by index so each apply appends to the table's rightmost leaf
/// and the sweep of expired ids is one range removal from its left end; [`RequestIds`] finds
/// an id's index. Rows of expired ids may stay until the next sweep (see [`MAX_REQUEST_IDS`]).
pub(crate) const REQUESTS_AT: TableDefinition<'_, u64, (&str, &[u8])> = TableDefinition::new("requests_at");
/// Request id → the encoded [`WriteOutcome`] of its first application: how request ids were
/// remembered before [`REQUESTS_AT`]. No longer written; [`crate::open_db`] moves its rows
/// into [`REQUESTS_AT`] and deletes it from older files.
pub(crate) const REQUESTS: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("requests");
/// Log index → request id: what evicted the oldest ids until request ids were remembered
/// by log-index window. No longer written; [`crate::open_db`] deletes it from older files.
pub(crate) const REQUESTS_BY_INDEX: TableDefinition<'_, u64, &str> = TableDefinition::new("requests_by_index");

/// The log id of the last applied entry, written in the same transaction as its effects.
pub(crate) const META_LAST_APPLIED: &str = "last_applied";
/// The last membership applied, written in the same transaction as the entry carrying it.
pub(crate) const META_MEMBERSHIP: &str = "membership";
/// The active alarms (an encoded `Vec<types::Alarm>`), written in the same transaction as
/// the entry that changed them.
pub(crate) const META_ALARMS: &str = "alarms";

/// How far back request ids are remembered for at-most-once writes, in log entries: a
/// write with an id applied at index `j` is answered as a duplicate by a write with the same
/// id at index `i` while `i - j <= MAX_REQUEST_IDS`. Each entry carries at most one id, so at
/// most this many ids count at once. The rule depends on the log alone, so every node (and
/// every snapshot) agrees on which ids are remembered, whenever rows are physically removed.
pub const MAX_REQUEST_IDS: u64 = 65_536;

/// Expired request ids are removed from the table each time the applied index crosses a
/// multiple of this, in one pass (rather than one eviction per write).
const REQUEST_SWEEP_INTERVAL: u64 = MAX_REQUEST_IDS / 4;

/// The oldest write index whose request id a write at `index` still honours.
pub(crate) fn oldest_remembered(index: u64) -> u64 {
    index.saturating_sub(MAX_REQUEST_IDS)
}

/// Whether the entries `first..=last` cross a multiple of [`REQUEST_SWEEP_INTERVAL`].
pub(crate) fn sweep_due(first: u64, last: u64) -> bool {
    first.saturating_sub(1) / REQUEST_SWEEP_INTERVAL != last / REQUEST_SWEEP_INTERVAL
}

/// The largest total of keys and values one transaction's reads return; each read gets what
/// the earlier ones left, and always at least one key.
pub const TXN_READ_BUDGET_BYTES: usize = 1 << 20;

/// The stored form of one key: its indexes, its lease when it has one, then its value.
///
/// `create_index u64 LE | modify_index u64 LE | version u64 LE | [lease i64 LE] | value`
///
/// The top bit of the version word ([`LEASED`]) says the lease is there: records written
/// before leases existed (and every key without a lease) have no lease bytes, so they read
/// as they always did.
pub(crate) struct Record;

const HEADER: usize = 24;
/// What a stored record holds besides its value: (create_index, modify_index, version),
/// the lease (0 for none), and where the value starts.
type Parts = ((u64, u64, u64), LeaseId, usize);

/// Set in the stored version word of a record that carries a lease (a version never gets
/// near 2^63).
const LEASED: u64 = 1 << 63;

impl Record {
    pub(crate) fn encode(create_index: u64, modify_index: u64, version: u64, lease: LeaseId, value: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER + 8 + value.len());
        out.extend_from_slice(&create_index.to_le_bytes());
        out.extend_from_slice(&modify_index.to_le_bytes());
        if lease == 0 {
            out.extend_from_slice(&version.to_le_bytes());
        } else {
            out.extend_from_slice(&(version | LEASED).to_le_bytes());
            out.extend_from_slice(&lease.to_le_bytes());
        }
        out.extend_from_slice(value);
        out
    }

    fn word(rec: &[u8], i: usize) -> [u8; 8] {
        let mut b = [0u8; 8];
        b.copy_from_slice(&rec[i * 8..i * 8 + 8]);
        b
    }

    /// The indexes, the lease (0 for none) and where the value starts.
    fn parts(rec: &[u8]) -> Result<Parts, Error> {
        if rec.len() < HEADER {
            return Err(Error::CorruptRecord("shorter than its 24-byte header"));
        }
        let version = u64::from_le_bytes(Self::word(rec, 2));
        let indexes =
            (u64::from_le_bytes(Self::word(rec, 0)), u64::from_le_bytes(Self::word(rec, 1)), version & !LEASED);
        if version & LEASED == 0 {
            return Ok((indexes, 0, HEADER));
        }
        if rec.len() < HEADER + 8 {
            return Err(Error::CorruptRecord("marked leased but shorter than its header and lease"));
        }
        Ok((indexes, i64::from_le_bytes(Self::word(rec, 3)), HEADER + 8))
    }

    /// The lease a stored record names (0 for none).
    pub(crate) fn lease(rec: &[u8]) -> Result<LeaseId, Error> {
        Ok(Self::parts(rec)?.1)
    }

    pub(crate) fn decode(key: &[u8], rec: &[u8], with_value: bool) -> Result<KeyValue, Error> {
        let ((create_index, modify_index, version), lease, start) = Self::parts(rec)?;
        let value = if with_value { rec[start..].to_vec() } else { Vec::new() };
        Ok(KeyValue { key: key.to_vec(), value, create_index, modify_index, version, lease })
    }
}

/// The [`LEASE_KEYS`] key of `key` attached to lease `id`: the id (u64 BE, so one lease's
/// keys are one contiguous range), then the key.
pub(crate) fn lease_key(id: LeaseId, key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + key.len());
    out.extend_from_slice(&id.cast_unsigned().to_be_bytes());
    out.extend_from_slice(key);
    out
}

/// The keys attached to lease `id`, in key order, from the [`LEASE_KEYS`] index.
pub(crate) fn lease_keys<T: ReadableTable<&'static [u8], ()>>(index: &T, id: LeaseId) -> Result<Vec<Vec<u8>>, Error> {
    let start = id.cast_unsigned().to_be_bytes();
    let mut keys = Vec::new();
    let iter = match id.cast_unsigned().checked_add(1) {
        Some(end) => index.range::<&[u8]>(start.as_slice()..end.to_be_bytes().as_slice())?,
        None => index.range::<&[u8]>(start.as_slice()..)?,
    };
    for row in iter {
        let (k, _) = row?;
        keys.push(k.value()[8..].to_vec());
    }
    Ok(keys)
}

/// Reads one key from any table of the `KV` shape.
pub(crate) fn get<T: ReadableTable<&'static [u8], &'static [u8]>>(
    kv: &T,
    key: &[u8],
) -> Result<Option<KeyValue>, Error> {
    match kv.get(key)? {
        Some(rec) => Ok(Some(Record::decode(key, rec.value(), true)?)),
        None => Ok(None),
    }
}

/// Reads a range: at most `limit` keys (0: no limit) and about `max_bytes` of keys and values
/// (always at least one key), with the count of the whole range.
pub(crate) fn range<T: ReadableTable<&'static [u8], &'static [u8]>>(
    kv: &T,
    op: &RangeOp,
    max_bytes: usize,
) -> Result<RangeResult, Error> {
    let mut result = RangeResult::default();
    let mut bytes = 0usize;
    let mut push = |k: &[u8], rec: &[u8], result: &mut RangeResult| -> Result<(), Error> {
        result.count += 1;
        if op.count_only {
            return Ok(());
        }
        let full =
            (op.limit > 0 && result.kvs.len() as u64 >= op.limit) || (!result.kvs.is_empty() && bytes >= max_bytes);
        if full {
            result.more = true;
            return Ok(());
        }
        let kv = Record::decode(k, rec, !op.keys_only)?;
        bytes += kv.key.len() + kv.value.len();
        result.kvs.push(kv);
        Ok(())
    };
    match &op.range {
        KeyRange::Key(k) => {
            if let Some(rec) = kv.get(k.as_slice())? {
                push(k, rec.value(), &mut result)?;
            }
        }
        KeyRange::Range { start, end } => {
            let iter = match end {
                Some(end) if end.as_slice() <= start.as_slice() => return Ok(result),
                Some(end) => kv.range::<&[u8]>(start.as_slice()..end.as_slice())?,
                None => kv.range::<&[u8]>(start.as_slice()..)?,
            };
            for item in iter {
                let (k, rec) = item?;
                push(k.value(), rec.value(), &mut result)?;
            }
        }
    }
    Ok(result)
}

fn precondition(current: Option<&KeyValue>, expect: Option<Expect>, key: &[u8]) -> Option<WriteResult> {
    let expected = expect?;
    let holds = match (expected, current) {
        (Expect::Absent, None) => true,
        (Expect::ModifyIndex(i), Some(kv)) => kv.modify_index == i,
        _ => false,
    };
    (!holds).then(|| WriteResult::PreconditionFailed {
        key: key.to_vec(),
        expected,
        current_modify_index: current.map_or(0, |kv| kv.modify_index),
    })
}

/// The event of `prev`'s deletion at `index`.
fn deleted(prev: KeyValue, index: u64) -> Event {
    Event {
        kind: EventKind::Delete,
        kv: KeyValue {
            key: prev.key.clone(),
            value: Vec::new(),
            create_index: 0,
            modify_index: index,
            version: 0,
            lease: 0,
        },
        prev: Some(prev),
    }
}

/// What each put of one write does with its key's lease: the write's [`types::LeasedWrite`]
/// map (empty for a plain write: every put detaches its key).
type Leases<'a> = &'a BTreeMap<Vec<u8>, LeaseAttach>;

/// The tables holding the keys and their leases.
pub(crate) struct Data<'t> {
    kv: Table<'t, &'static [u8], &'static [u8]>,
    leases: Table<'t, LeaseId, i64>,
    lease_keys: Table<'t, &'static [u8], ()>,
}

impl Data<'_> {
    /// The first lease a put of `ops` names that does not exist.
    fn missing_lease<'o>(
        &self,
        puts: impl Iterator<Item = &'o PutOp>,
        leases: Leases<'_>,
    ) -> Result<Option<LeaseId>, Error> {
        for p in puts {
            if let Some(LeaseAttach::Lease(id)) = leases.get(&p.key)
                && self.leases.get(*id)?.is_none()
            {
                return Ok(Some(*id));
            }
        }
        Ok(None)
    }

    /// Moves `key` from lease `old` to lease `new` in the index.
    fn relink(&mut self, key: &[u8], old: LeaseId, new: LeaseId) -> Result<(), Error> {
        if old == new {
            return Ok(());
        }
        if old != 0 {
            self.lease_keys.remove(lease_key(old, key).as_slice())?;
        }
        if new != 0 {
            self.lease_keys.insert(lease_key(new, key).as_slice(), ())?;
        }
        Ok(())
    }

    fn put(
        &mut self,
        index: u64,
        op: &PutOp,
        leases: Leases<'_>,
        events: &mut Vec<Event>,
    ) -> Result<WriteResult, Error> {
        let current = get(&self.kv, &op.key)?;
        if let Some(failed) = precondition(current.as_ref(), op.expect, &op.key) {
            return Ok(failed);
        }
        let old_lease = current.as_ref().map_or(0, |kv| kv.lease);
        let lease = match leases.get(&op.key) {
            None => 0,
            Some(LeaseAttach::Keep) => old_lease,
            Some(LeaseAttach::Lease(id)) => *id,
        };
        let (create, version) = current.as_ref().map_or((index, 1), |kv| (kv.create_index, kv.version + 1));
        self.kv.insert(op.key.as_slice(), Record::encode(create, index, version, lease, &op.value).as_slice())?;
        self.relink(&op.key, old_lease, lease)?;
        events.push(Event {
            kind: EventKind::Put,
            kv: KeyValue {
                key: op.key.clone(),
                value: op.value.clone(),
                create_index: create,
                modify_index: index,
                version,
                lease,
            },
            prev: current.clone(),
        });
        Ok(WriteResult::Put { prev: if op.prev_kv { current } else { None } })
    }

    fn delete(&mut self, index: u64, op: &DeleteOp, events: &mut Vec<Event>) -> Result<WriteResult, Error> {
        if let (KeyRange::Key(key), Some(_)) = (&op.range, op.expect) {
            let current = get(&self.kv, key)?;
            if let Some(failed) = precondition(current.as_ref(), op.expect, key) {
                return Ok(failed);
            }
        }
        let found = range(
            &self.kv,
            // With the values: the events carry each key's last value (etcd's `prev_kv`).
            &RangeOp { range: op.range.clone(), limit: 0, keys_only: false, count_only: false },
            usize::MAX,
        )?;
        for k in &found.kvs {
            self.kv.remove(k.key.as_slice())?;
            self.relink(&k.key, k.lease, 0)?;
            events.push(deleted(k.clone(), index));
        }
        let deleted = found.kvs.len() as u64;
        Ok(WriteResult::Delete { deleted, prev: if op.prev_kv { found.kvs } else { Vec::new() } })
    }
}

fn compare(kv: &Table<'_, &[u8], &[u8]>, c: &Compare) -> Result<bool, Error> {
    let current = get(kv, &c.key)?;
    compare_with(current.as_ref(), c)
}

fn compare_with(current: Option<&KeyValue>, c: &Compare) -> Result<bool, Error> {
    let ord = |a: u64, b: u64| match c.op {
        CompareOp::Equal => a == b,
        CompareOp::NotEqual => a != b,
        CompareOp::Greater => a > b,
        CompareOp::Less => a < b,
    };
    Ok(match &c.target {
        CompareTarget::Value(v) => match &current {
            None => c.op == CompareOp::NotEqual,
            Some(kv) => match c.op {
                CompareOp::Equal => kv.value == *v,
                CompareOp::NotEqual => kv.value != *v,
                CompareOp::Greater => kv.value > *v,
                CompareOp::Less => kv.value < *v,
            },
        },
        CompareTarget::ModifyIndex(i) => ord(current.map_or(0, |kv| kv.modify_index), *i),
        CompareTarget::CreateIndex(i) => ord(current.map_or(0, |kv| kv.create_index), *i),
        CompareTarget::Version(v) => ord(current.map_or(0, |kv| kv.version), *v),
        CompareTarget::Lease(l) => {
            let lease = current.map_or(0, |kv| kv.lease);
            match c.op {
                CompareOp::Equal => lease == *l,
                CompareOp::NotEqual => lease != *l,
                CompareOp::Greater => lease > *l,
                CompareOp::Less => lease < *l,
            }
        }
        CompareTarget::Exists(e) => match c.op {
            CompareOp::Equal => current.is_some() == *e,
            CompareOp::NotEqual => current.is_some() != *e,
            // Refused by the service; never true here.
            CompareOp::Greater | CompareOp::Less => false,
        },
    })
}

impl Data<'_> {
    fn txn(&mut self, index: u64, t: &Txn, leases: Leases<'_>, events: &mut Vec<Event>) -> Result<WriteResult, Error> {
        let mut succeeded = true;
        for c in &t.compares {
            if !compare(&self.kv, c)? {
                succeeded = false;
                break;
            }
        }
        let branch = if succeeded { &t.success } else { &t.failure };
        // etcd checks the leases of the branch that runs before any of it applies.
        let puts = branch.iter().filter_map(|op| if let TxnOp::Put(p) = op { Some(p) } else { None });
        if let Some(lease) = self.missing_lease(puts, leases)? {
            return Ok(WriteResult::LeaseNotFound { lease });
        }
        let mut results = Vec::with_capacity(branch.len());
        let mut budget = TXN_READ_BUDGET_BYTES;
        for op in branch {
            let r = match op {
                TxnOp::Put(p) => match self.put(index, p, leases, events)? {
                    WriteResult::Put { prev } => TxnOpResult::Put { prev },
                    other => return Err(Error::Invariant(format!("a put answered {other:?}"))),
                },
                TxnOp::Delete(d) => match self.delete(index, d, events)? {
                    WriteResult::Delete { deleted, prev } => TxnOpResult::Delete { deleted, prev },
                    other => return Err(Error::Invariant(format!("a delete answered {other:?}"))),
                },
                TxnOp::Range(r) => {
                    let found = range(&self.kv, r, budget)?;
                    let used: usize = found.kvs.iter().map(|kv| kv.key.len() + kv.value.len()).sum();
                    budget = budget.saturating_sub(used);
                    TxnOpResult::Range(found)
                }
            };
            results.push(r);
        }
        Ok(WriteResult::Txn { succeeded, results })
    }

    /// Grants or revokes a lease at `index`; a revoke deletes every key attached to it, each
    /// with its delete event.
    fn lease(&mut self, index: u64, cmd: &LeaseCommand, events: &mut Vec<Event>) -> Result<LeaseOutcome, Error> {
        match *cmd {
            LeaseCommand::Grant { id, ttl } => {
                if self.leases.get(id)?.is_some() {
                    return Ok(LeaseOutcome::Exists);
                }
                self.leases.insert(id, ttl)?;
                Ok(LeaseOutcome::Granted { id, ttl })
            }
            LeaseCommand::Revoke { id } => {
                if self.leases.remove(id)?.is_none() {
                    return Ok(LeaseOutcome::NotFound);
                }
                let keys = lease_keys(&self.lease_keys, id)?;
                for key in &keys {
                    self.lease_keys.remove(lease_key(id, key).as_slice())?;
                    if let Some(prev) = get(&self.kv, key)? {
                        self.kv.remove(key.as_slice())?;
                        events.push(deleted(prev, index));
                    }
                }
                Ok(LeaseOutcome::Revoked { deleted: keys.len() as u64 })
            }
        }
    }
}

/// Where each remembered request id was applied: request id → the log index of the
/// [`REQUESTS_AT`] row holding its outcome. An in-memory index of that table, so a lookup is
/// one hash probe plus one `get` by index, and an apply writes one row at the table's right
/// end instead of one in a table keyed by (random) ids.
///
/// It only ever reflects **committed** transactions: it is built from the table when the
/// state machine is opened and when a snapshot is installed ([`RequestIds::load`]), and an
/// apply batch changes it only after its transaction commits ([`RequestIds::commit`]); a batch
/// that fails leaves it as it was. Every entry `(id, i)` has its row at `i` in the table, and
/// the sweep removes the rows and the entries below the same index, so the map holds no more
/// ids than the table: at most about 1.25 × [`MAX_REQUEST_IDS`] (81,920). Each costs a
/// `Box<str>` and a `u64` in the hash table (24 bytes + 1 control byte per bucket, 131,072
/// buckets ≈ 3.3 MiB at that size) plus the id's own heap allocation (a 32-byte malloc
/// chunk for the `client` crate's ~24-byte ids, ≈ 2.6 MiB; 144 bytes for a 128-byte id, the
/// service's `MAX_REQUEST_ID_BYTES`, ≈ 11.3 MiB): about 6 MiB typically, 15 MiB at worst.
#[derive(Debug, Default)]
pub(crate) struct RequestIds {
    by_id: HashMap<Box<str>, u64>,
}

impl RequestIds {
    /// Builds the index from the rows of [`REQUESTS_AT`] (read in index order, so an id
    /// applied again after it expired maps to its newest row).
    pub(crate) fn load<T: ReadableTable<u64, (&'static str, &'static [u8])>>(table: &T) -> Result<Self, Error> {
        let mut by_id = HashMap::with_capacity(usize::try_from(table.len()?).unwrap_or(0));
        for row in table.iter()? {
            let (index, value) = row?;
            let (id, _) = value.value();
            by_id.insert(Box::from(id), index.value());
        }
        Ok(Self { by_id })
    }

    /// The log index whose row holds `id`'s outcome, if the id is remembered.
    pub(crate) fn get(&self, id: &str) -> Option<u64> {
        self.by_id.get(id).copied()
    }

    /// The number of ids held.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.by_id.len()
    }

    /// Takes in what a batch did, once its transaction has committed.
    pub(crate) fn commit(&mut self, change: RequestChange) {
        self.by_id.extend(change.added);
        if let Some(oldest) = change.swept_below {
            self.by_id.retain(|_, index| *index >= oldest);
        }
    }
}

/// What an apply batch did to the remembered request ids, for [`RequestIds::commit`] once
/// its transaction has committed (dropped unused when it does not).
#[derive(Debug, Default)]
pub(crate) struct RequestChange {
    /// The ids the batch remembered, with the index of their row.
    added: HashMap<Box<str>, u64>,
    /// The rows below this index were removed (a sweep).
    swept_below: Option<u64>,
}

/// The tables an apply batch writes, opened once per batch rather than once per entry.
pub(crate) struct ApplyTables<'t, 'r> {
    data: Data<'t>,
    requests: Table<'t, u64, (&'static str, &'static [u8])>,
    /// The committed index of request ids; this batch's own are in `change`.
    ids: &'r RequestIds,
    change: RequestChange,
    /// The newest write index seen, which says which ids have expired.
    newest: u64,
}

impl<'t, 'r> ApplyTables<'t, 'r> {
    pub(crate) fn open(txn: &'t WriteTransaction, ids: &'r RequestIds) -> Result<Self, Error> {
        let data =
            Data { kv: txn.open_table(KV)?, leases: txn.open_table(LEASES)?, lease_keys: txn.open_table(LEASE_KEYS)? };
        Ok(Self { data, requests: txn.open_table(REQUESTS_AT)?, ids, change: RequestChange::default(), newest: 0 })
    }

    /// What this batch did to the request ids, for [`RequestIds::commit`] after the commit.
    pub(crate) fn finish(self) -> RequestChange {
        self.change
    }

    /// Applies a lease grant or revoke at log index `index`.
    pub(crate) fn apply_lease(
        &mut self,
        index: u64,
        cmd: &LeaseCommand,
        events: &mut Vec<Event>,
    ) -> Result<LeaseOutcome, Error> {
        self.data.lease(index, cmd, events)
    }

    /// The outcome remembered for `id`, if a write at `index` still honours it.
    fn remembered(&self, id: &str, index: u64) -> Result<Option<WriteOutcome>, Error> {
        let Some(at) = self.change.added.get(id).copied().or_else(|| self.ids.get(id)) else { return Ok(None) };
        // An expired row not yet swept is forgotten already: the write applies again.
        if at < oldest_remembered(index) {
            return Ok(None);
        }
        let row = self.requests.get(at)?.ok_or_else(|| {
            Error::Invariant(format!("request id {id:?} is indexed at {at} but the requests_at table has no row there"))
        })?;
        let (stored_id, outcome) = row.value();
        if stored_id != id {
            return Err(Error::Invariant(format!(
                "request id {id:?} is indexed at {at} but that row holds {stored_id:?}"
            )));
        }
        Ok(Some(codec::decode(outcome)?))
    }

    /// Applies one client write at log index `index`: at most once per request id. Every
    /// key it changes is recorded in `events`, in order.
    /// `leases` says what each put does with its key's lease (empty: every put detaches).
    pub(crate) fn apply_write(
        &mut self,
        index: u64,
        cmd: &WriteCommand,
        leases: Leases<'_>,
        events: &mut Vec<Event>,
    ) -> Result<WriteOutcome, Error> {
        self.newest = self.newest.max(index);
        if let Some(id) = &cmd.request_id
            && let Some(mut outcome) = self.remembered(id, index)?
        {
            outcome.duplicate = true;
            return Ok(outcome);
        }
        let result = match &cmd.op {
            WriteOp::Put(p) => match self.data.missing_lease(std::iter::once(p), leases)? {
                Some(lease) => WriteResult::LeaseNotFound { lease },
                None => self.data.put(index, p, leases, events)?,
            },
            WriteOp::Delete(d) => self.data.delete(index, d, events)?,
            WriteOp::Txn(t) => self.data.txn(index, t, leases, events)?,
        };
        let outcome = WriteOutcome { index, duplicate: false, result };
        if let Some(id) = &cmd.request_id {
            self.remember_request(id, &outcome)?;
        }
        Ok(outcome)
    }

    /// Stores a request id's outcome: one row appended at its index in [`REQUESTS_AT`];
    /// [`Self::forget_old_requests`] removes it once it has expired.
    pub(crate) fn remember_request(&mut self, id: &str, outcome: &WriteOutcome) -> Result<(), Error> {
        self.newest = self.newest.max(outcome.index);
        let encoded = codec::encode(outcome)?;
        if let Some(old) = self.requests.insert(outcome.index, (id, encoded.as_slice()))? {
            let (old_id, _) = old.value();
            return Err(Error::Invariant(format!(
                "two request ids at log index {}: {old_id:?} and {id:?}",
                outcome.index
            )));
        }
        self.change.added.insert(Box::from(id), outcome.index);
        Ok(())
    }

    /// Removes every request id that no write after the newest one seen can honour (see
    /// [`MAX_REQUEST_IDS`]): one range removal of the rows below the oldest index still
    /// honoured, from the left end of [`REQUESTS_AT`]. The apply calls it when [`sweep_due`],
    /// so the table holds at most about 1.25 × `MAX_REQUEST_IDS` rows.
    pub(crate) fn forget_old_requests(&mut self) -> Result<(), Error> {
        let oldest = oldest_remembered(self.newest + 1);
        self.requests.retain_in(..oldest, |_, _| false)?;
        self.change.added.retain(|_, index| *index >= oldest);
        self.change.swept_below = Some(self.change.swept_below.map_or(oldest, |s| s.max(oldest)));
        Ok(())
    }
}

/// Records the last applied log id and, when given, the membership and the alarms, in `txn`.
pub(crate) fn write_applied(
    txn: &WriteTransaction,
    last_applied: &LogId,
    membership: Option<&StoredMembership>,
    alarms: Option<&[types::Alarm]>,
) -> Result<(), Error> {
    let mut meta = txn.open_table(META)?;
    meta.insert(META_LAST_APPLIED, codec::encode(last_applied)?.as_slice())?;
    if let Some(m) = membership {
        meta.insert(META_MEMBERSHIP, codec::encode(m)?.as_slice())?;
    }
    if let Some(a) = alarms {
        meta.insert(META_ALARMS, codec::encode(&a.to_vec())?.as_slice())?;
    }
    Ok(())
}

/// The active alarms stored in `meta` (none when the key is absent: older files).
pub(crate) fn read_alarms<T: ReadableTable<&'static str, &'static [u8]>>(meta: &T) -> Result<Vec<types::Alarm>, Error> {
    match meta.get(META_ALARMS)? {
        Some(v) => Ok(codec::decode(v.value())?),
        None => Ok(Vec::new()),
    }
}
