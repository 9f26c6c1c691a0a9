//! Unit tests of the state machine: apply, persistence, snapshots.

use std::collections::{BTreeMap, BTreeSet};

use openraft::entry::RaftEntry;
use types::{
    Compare, CompareOp, CompareTarget, DeleteOp, Entry, Expect, KeyRange, Membership, NodeId, NodeInfo, PutOp, Txn,
    TxnOp, TxnOpResult, WriteCommand, WriteOp, WriteOutcome, WriteResult,
};

use super::*;
use redb::ReadableTableMetadata;

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn log_id(index: u64) -> LogId {
    LogId::new(openraft::impls::leader_id_adv::LeaderId { term: 1, node_id: NodeId::from(1) }, index)
}

fn write(index: u64, request_id: Option<&str>, op: WriteOp) -> Entry {
    Entry::new_normal(log_id(index), Command::Write(WriteCommand { request_id: request_id.map(String::from), op }))
}

fn put_op(key: &[u8], value: &[u8]) -> PutOp {
    PutOp { key: key.to_vec(), value: value.to_vec(), expect: None, prev_kv: false }
}

fn put(index: u64, key: &[u8], value: &[u8]) -> Entry {
    write(index, None, WriteOp::Put(put_op(key, value)))
}

fn del(index: u64, key: &[u8]) -> Entry {
    write(index, None, WriteOp::Delete(DeleteOp { range: KeyRange::Key(key.to_vec()), expect: None, prev_kv: false }))
}

/// Applies entries in one batch and returns their write outcomes.
fn apply_results(sm: &StateMachine, entries: &[Entry]) -> Result<Vec<WriteOutcome>, Box<dyn std::error::Error>> {
    let db = sm.db();
    let mut out = Vec::new();
    for r in sm.apply_batch(&db, entries)? {
        match r {
            CommandResult::Write(o) => out.push(o),
            other => return Err(format!("unexpected result {other:?}").into()),
        }
    }
    Ok(out)
}

async fn apply(sm: &mut StateMachine, entries: Vec<Entry>) -> Result<(), io::Error> {
    let stream = futures::stream::iter(entries.into_iter().map(|e| Ok((e, None))));
    sm.apply(stream).await
}

#[tokio::test]
async fn apply_tracks_per_key_indexes() -> TestResult {
    let dir = tempfile::tempdir()?;
    let mut sm = StateMachine::open(dir.path())?;
    apply(&mut sm, vec![put(1, b"a", b"1"), put(2, b"b", b"2"), put(3, b"a", b"3")]).await?;
    let a = sm.get(b"a")?.ok_or("a missing")?;
    assert_eq!((a.value.as_slice(), a.create_index, a.modify_index, a.version), (&b"3"[..], 1, 3, 2));
    apply(&mut sm, vec![del(4, b"a"), del(5, b"missing"), put(6, b"a", b"")]).await?;
    let a = sm.get(b"a")?.ok_or("a missing")?;
    assert_eq!((a.value.len(), a.create_index, a.modify_index, a.version), (0, 6, 6, 1));
    assert_eq!(sm.applied_index(), 6);
    assert_eq!(sm.len()?, 2);
    Ok(())
}

#[tokio::test]
async fn an_apply_batch_stamps_its_entries_applied() -> TestResult {
    let dir = tempfile::tempdir()?;
    let stages = Arc::new(latency::WriteStages::new());
    let mut sm = StateMachine::open_with_stages(dir.path(), Options::default(), stages.clone())?;
    let proposed = stages.now();
    // The log store's moments, by hand: appended, durable, committed.
    stages.appended(1..=2);
    stages.durable(1..=2);
    stages.committed(2);
    apply(&mut sm, vec![put(1, b"a", b"1"), put(2, b"b", b"2")]).await?;
    for index in 1..=2 {
        stages.answered(index, proposed);
    }
    let report = stages.report(false);
    assert_eq!(report.writes, 2);
    assert!(report.stages.iter().all(|s| s.overtaken == 0), "every moment in order: {report:?}");
    Ok(())
}

#[tokio::test]
async fn state_and_applied_id_survive_reopen() -> TestResult {
    let dir = tempfile::tempdir()?;
    let members = Membership::new(
        vec![BTreeSet::from([NodeId::from(1)])],
        BTreeMap::from([(NodeId::from(1), NodeInfo::default())]),
    )?;
    {
        let mut sm = StateMachine::open(dir.path())?;
        apply(&mut sm, vec![Entry::new_membership(log_id(1), members.clone()), put(2, b"k", b"v")]).await?;
    }
    let mut sm = StateMachine::open(dir.path())?;
    let (applied, membership) = sm.applied_state().await?;
    assert_eq!(applied, Some(log_id(2)));
    assert_eq!(membership.membership(), &members);
    assert_eq!(sm.applied_index(), 2);
    assert_eq!(sm.get(b"k")?.map(|kv| kv.value), Some(b"v".to_vec()));
    Ok(())
}

#[tokio::test]
async fn snapshot_installs_into_a_fresh_node() -> TestResult {
    let (d1, d2) = (tempfile::tempdir()?, tempfile::tempdir()?);
    let mut leader = StateMachine::open(d1.path())?;
    let entries: Vec<Entry> = (1..=300).map(|i| put(i, format!("key-{i:04}").as_bytes(), &[i as u8; 100])).collect();
    apply(&mut leader, entries).await?;
    let snap = leader.get_snapshot_builder().await.build_snapshot().await?;
    assert_eq!(snap.meta.last_log_id, Some(log_id(300)));

    let mut follower = StateMachine::open(d2.path())?;
    apply(&mut follower, vec![put(1, b"stale", b"x")]).await?;
    follower.install_snapshot(&snap.meta, snap.snapshot).await?;
    assert_eq!(follower.len()?, 300);
    assert_eq!(follower.get(b"stale")?, None);
    assert_eq!(follower.get(b"key-0007")?, leader.get(b"key-0007")?);
    assert_eq!(follower.applied_index(), 300);
    let current = follower.get_current_snapshot().await?.ok_or("no current snapshot")?;
    assert_eq!(current.meta, snap.meta);

    // The installed state is durable.
    drop(follower);
    let follower = StateMachine::open(d2.path())?;
    assert_eq!(follower.len()?, 300);
    assert_eq!(follower.applied_index(), 300);
    Ok(())
}

#[tokio::test]
async fn corrupt_snapshot_is_refused_and_changes_nothing() -> TestResult {
    let (d1, d2) = (tempfile::tempdir()?, tempfile::tempdir()?);
    let mut leader = StateMachine::open(d1.path())?;
    apply(&mut leader, vec![put(1, b"a", b"1"), put(2, b"b", b"2")]).await?;
    let snap = leader.get_snapshot_builder().await.build_snapshot().await?;

    let mut bytes = Vec::new();
    io::copy(&mut snap.snapshot.reader()?, &mut bytes)?;
    let last = bytes.len() - 10;
    bytes[last] ^= 1;
    let mut incoming = StateMachine::open(d2.path())?.incoming_snapshot()?;
    incoming.write(&bytes)?;
    let corrupt = incoming.finish()?;

    let mut follower = StateMachine::open(d2.path())?;
    apply(&mut follower, vec![put(1, b"mine", b"x")]).await?;
    let err = follower.install_snapshot(&snap.meta, corrupt).await.err().ok_or("corrupt snapshot accepted")?;
    assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
    assert!(err.to_string().contains("snapshot refused"), "{err}");
    assert_eq!(follower.get(b"mine")?.map(|kv| kv.value), Some(b"x".to_vec()));
    assert_eq!(follower.get(b"a")?, None);
    assert_eq!(follower.applied_index(), 1);
    assert!(follower.get_current_snapshot().await?.is_none());
    Ok(())
}

#[tokio::test]
async fn reopen_rebuilds_state_behind_its_snapshot() -> TestResult {
    let (d1, d2) = (tempfile::tempdir()?, tempfile::tempdir()?);
    let mut leader = StateMachine::open(d1.path())?;
    apply(&mut leader, vec![put(1, b"a", b"1"), put(2, b"b", b"2")]).await?;
    let snap = leader.get_snapshot_builder().await.build_snapshot().await?;
    // A node that crashed after keeping the snapshot file but before swapping its state in.
    drop(StateMachine::open(d2.path())?);
    fs::copy(
        &leader.inner.current.lock().map_err(|_| "poisoned")?.as_ref().ok_or("none")?.path,
        d2.path().join(SNAPSHOT_DIR).join(format!("snap-{:020}-0-0.{SNAPSHOT_EXT}", 2)),
    )?;
    let follower = StateMachine::open(d2.path())?;
    assert_eq!(follower.applied_index(), 2);
    assert_eq!(follower.get(b"b")?.map(|kv| kv.value), Some(b"2".to_vec()));
    drop(snap);
    Ok(())
}

#[tokio::test]
async fn a_snapshot_makes_the_state_it_holds_durable() -> TestResult {
    let (d1, d2) = (tempfile::tempdir()?, tempfile::tempdir()?);
    let mut sm = StateMachine::open(d1.path())?;
    // Within DURABLE_APPLY_INTERVAL of the open: a commit that is not fsynced.
    apply(&mut sm, vec![put(1, b"a", b"1"), put(2, b"b", b"2")]).await?;
    let _snap = sm.get_snapshot_builder().await.build_snapshot().await?;
    // What a kill -9 right now leaves: the file as the OS holds it. redb opens it at its
    // last durable commit, which must hold what the snapshot holds, or a restart would
    // find its state behind its snapshot and rebuild everything from the snapshot.
    fs::copy(d1.path().join(DB_FILE), d2.path().join(DB_FILE))?;
    let db = Database::create(d2.path().join(DB_FILE))?;
    let txn = db.begin_read()?;
    let applied: Option<LogId> = match txn.open_table(META)?.get(META_LAST_APPLIED)? {
        Some(v) => Some(codec::decode(v.value())?),
        None => None,
    };
    assert_eq!(types::index_of(applied.as_ref()), 2);
    Ok(())
}

fn cas_put(key: &[u8], value: &[u8], expect: Option<Expect>) -> WriteOp {
    WriteOp::Put(PutOp { key: key.to_vec(), value: value.to_vec(), expect, prev_kv: true })
}

#[test]
fn compare_and_set_applies_only_when_the_precondition_holds() -> TestResult {
    let dir = tempfile::tempdir()?;
    let sm = StateMachine::open(dir.path())?;
    let r = apply_results(
        &sm,
        &[
            write(1, None, cas_put(b"k", b"1", Some(Expect::Absent))),
            write(2, None, cas_put(b"k", b"2", Some(Expect::Absent))),
            write(3, None, cas_put(b"k", b"3", Some(Expect::ModifyIndex(1)))),
            write(4, None, cas_put(b"k", b"4", Some(Expect::ModifyIndex(1)))),
        ],
    )?;
    assert_eq!(r[0].result, WriteResult::Put { prev: None });
    assert_eq!(
        r[1].result,
        WriteResult::PreconditionFailed { key: b"k".to_vec(), expected: Expect::Absent, current_modify_index: 1 }
    );
    assert!(matches!(&r[2].result, WriteResult::Put { prev: Some(kv) } if kv.value == b"1" && kv.modify_index == 1));
    assert_eq!(
        r[3].result,
        WriteResult::PreconditionFailed {
            key: b"k".to_vec(),
            expected: Expect::ModifyIndex(1),
            current_modify_index: 3
        }
    );
    let kv = sm.get(b"k")?.ok_or("k missing")?;
    assert_eq!((kv.value.as_slice(), kv.modify_index, kv.version), (&b"3"[..], 3, 2));
    Ok(())
}

#[test]
fn delete_ranges_and_prefixes() -> TestResult {
    let dir = tempfile::tempdir()?;
    let sm = StateMachine::open(dir.path())?;
    let keys: [&[u8]; 5] = [b"a", b"b/1", b"b/2", b"b\xff", b"c"];
    let entries: Vec<Entry> = keys.iter().enumerate().map(|(i, k)| put(i as u64 + 1, k, b"v")).collect();
    apply_results(&sm, &entries)?;
    let prefix = DeleteOp { range: KeyRange::prefix(b"b/"), expect: None, prev_kv: true };
    let r = apply_results(&sm, &[write(10, None, WriteOp::Delete(prefix))])?;
    match &r[0].result {
        WriteResult::Delete { deleted: 2, prev } => assert_eq!(prev.len(), 2),
        other => panic!("unexpected {other:?}"),
    }
    let rest = DeleteOp { range: KeyRange::Range { start: b"b".to_vec(), end: None }, expect: None, prev_kv: false };
    let r = apply_results(&sm, &[write(11, None, WriteOp::Delete(rest))])?;
    assert_eq!(r[0].result, WriteResult::Delete { deleted: 2, prev: vec![] });
    assert_eq!(sm.len()?, 1);
    assert!(sm.get(b"a")?.is_some());
    Ok(())
}

#[test]
fn ranges_page_and_count() -> TestResult {
    let dir = tempfile::tempdir()?;
    let sm = StateMachine::open(dir.path())?;
    let entries: Vec<Entry> = (0..50u64).map(|i| put(i + 1, format!("k{i:02}").as_bytes(), b"value")).collect();
    apply_results(&sm, &entries)?;
    let op = |start: &[u8], limit| RangeOp {
        range: KeyRange::Range { start: start.to_vec(), end: Some(b"k40".to_vec()) },
        limit,
        keys_only: false,
        count_only: false,
    };
    let mut start = b"k".to_vec();
    let mut seen = Vec::new();
    loop {
        let r = sm.range(&op(&start, 7), usize::MAX)?;
        seen.extend(r.kvs.iter().map(|kv| kv.key.clone()));
        if !r.more {
            break;
        }
        start = r.kvs.last().ok_or("empty page with more")?.key.clone();
        start.push(0);
    }
    assert_eq!(seen.len(), 40);
    assert!(seen.windows(2).all(|w| w[0] < w[1]));
    let counted = sm.range(&RangeOp { count_only: true, ..op(b"k", 0) }, usize::MAX)?;
    assert_eq!((counted.count, counted.kvs.len()), (40, 0));
    let by_bytes = sm.range(&op(b"k", 0), 12)?;
    assert!(by_bytes.more && by_bytes.kvs.len() == 2, "{} keys", by_bytes.kvs.len());
    let keys_only = sm.range(&RangeOp { keys_only: true, ..op(b"k", 1) }, usize::MAX)?;
    assert!(keys_only.kvs[0].value.is_empty() && keys_only.kvs[0].version == 1);
    Ok(())
}

#[test]
fn transactions_pick_a_branch_atomically() -> TestResult {
    let dir = tempfile::tempdir()?;
    let sm = StateMachine::open(dir.path())?;
    apply_results(&sm, &[put(1, b"x", b"1")])?;
    let txn = |value: &[u8]| {
        WriteOp::Txn(Txn {
            compares: vec![Compare {
                key: b"x".to_vec(),
                op: CompareOp::Equal,
                target: CompareTarget::Value(value.to_vec()),
            }],
            success: vec![
                TxnOp::Put(put_op(b"x", b"2")),
                TxnOp::Put(put_op(b"y", b"2")),
                TxnOp::Range(RangeOp { range: KeyRange::prefix(b""), limit: 0, keys_only: false, count_only: false }),
            ],
            failure: vec![TxnOp::Range(RangeOp {
                range: KeyRange::Key(b"x".to_vec()),
                limit: 0,
                keys_only: false,
                count_only: false,
            })],
        })
    };
    let r = apply_results(&sm, &[write(2, None, txn(b"1")), write(3, None, txn(b"1"))])?;
    match &r[0].result {
        WriteResult::Txn { succeeded: true, results } => match &results[2] {
            TxnOpResult::Range(range) => assert_eq!(range.count, 2, "reads see the branch's earlier writes"),
            other => panic!("unexpected {other:?}"),
        },
        other => panic!("unexpected {other:?}"),
    }
    match &r[1].result {
        WriteResult::Txn { succeeded: false, results } => {
            assert!(matches!(&results[0], TxnOpResult::Range(range) if range.kvs[0].value == b"2"));
        }
        other => panic!("unexpected {other:?}"),
    }
    let missing = WriteOp::Txn(Txn {
        compares: vec![Compare { key: b"nope".to_vec(), op: CompareOp::Equal, target: CompareTarget::Exists(false) }],
        success: vec![TxnOp::Put(put_op(b"created", b"1"))],
        failure: vec![],
    });
    let r = apply_results(&sm, &[write(4, None, missing)])?;
    assert!(matches!(r[0].result, WriteResult::Txn { succeeded: true, .. }));
    assert!(sm.get(b"created")?.is_some());
    Ok(())
}

#[tokio::test]
async fn a_request_id_is_applied_once_and_survives_snapshots() -> TestResult {
    let (d1, d2) = (tempfile::tempdir()?, tempfile::tempdir()?);
    let mut sm = StateMachine::open(d1.path())?;
    let r = apply_results(
        &sm,
        &[
            write(1, Some("req-1"), WriteOp::Put(put_op(b"k", b"first"))),
            write(2, Some("req-1"), WriteOp::Put(put_op(b"k", b"second"))),
        ],
    )?;
    assert_eq!((r[0].index, r[0].duplicate), (1, false));
    assert_eq!((r[1].index, r[1].duplicate), (1, true));
    assert_eq!(r[1].result, r[0].result);
    let kv = sm.get(b"k")?.ok_or("k missing")?;
    assert_eq!((kv.value.as_slice(), kv.version), (&b"first"[..], 1));

    let snap = sm.get_snapshot_builder().await.build_snapshot().await?;
    let mut other = StateMachine::open(d2.path())?;
    other.install_snapshot(&snap.meta, snap.snapshot).await?;
    let r = apply_results(&other, &[write(3, Some("req-1"), WriteOp::Put(put_op(b"k", b"third")))])?;
    assert!(r[0].duplicate, "the id was forgotten by the snapshot");
    assert_eq!(other.get(b"k")?.map(|kv| kv.value), Some(b"first".to_vec()));
    Ok(())
}

/// The request-id index of `sm` (as of its last committed apply).
fn request_ids(sm: &StateMachine) -> std::sync::MutexGuard<'_, RequestIds> {
    sm.inner.requests.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[test]
fn request_ids_are_bounded() -> TestResult {
    let dir = tempfile::tempdir()?;
    let sm = StateMachine::open(dir.path())?;
    let db = sm.db();
    let mut ids = request_ids(&sm);
    let txn = db.begin_write()?;
    let change = {
        let mut tables = store::ApplyTables::open(&txn, &ids)?;
        for i in 0..(MAX_REQUEST_IDS + 10) {
            let outcome = WriteOutcome { index: i + 1, duplicate: false, result: WriteResult::Put { prev: None } };
            tables.remember_request(&format!("id-{i}"), &outcome)?;
        }
        tables.forget_old_requests()?;
        tables.finish()
    };
    txn.commit()?;
    ids.commit(change);
    let read = db.begin_read()?;
    let requests = read.open_table(REQUESTS_AT)?;
    assert_eq!(requests.len()?, MAX_REQUEST_IDS);
    assert!(requests.get(1)?.is_none(), "the oldest id is evicted first");
    assert_eq!(requests.first()?.map(|(k, _)| k.value()), Some(11));
    let newest = requests.get(MAX_REQUEST_IDS + 10)?.ok_or("the newest id is missing")?;
    assert_eq!(newest.value().0, format!("id-{}", MAX_REQUEST_IDS + 9));
    assert_eq!(ids.len() as u64, MAX_REQUEST_IDS, "the index holds what the table holds");
    assert_eq!(ids.get("id-0"), None);
    assert_eq!(ids.get("id-10"), Some(11));
    assert_eq!(ids.get(&format!("id-{}", MAX_REQUEST_IDS + 9)), Some(MAX_REQUEST_IDS + 10));
    Ok(())
}

#[tokio::test]
async fn a_request_id_is_remembered_for_max_request_ids_entries_on_every_node() -> TestResult {
    let (d1, d2) = (tempfile::tempdir()?, tempfile::tempdir()?);
    let mut sm = StateMachine::open(d1.path())?;
    let id = |i: u64| format!("id-{i}");
    let first = apply_results(&sm, &[write(1, Some("old"), WriteOp::Put(put_op(b"k", b"1")))])?;
    assert!(!first[0].duplicate);
    // Exactly MAX_REQUEST_IDS entries later the id still counts; one more and it is gone,
    // whether or not its row was swept yet (the batch below crosses no sweep point).
    let at_edge = 1 + MAX_REQUEST_IDS;
    let r = apply_results(&sm, &[write(at_edge, Some("old"), WriteOp::Put(put_op(b"k", b"2")))])?;
    assert_eq!((r[0].index, r[0].duplicate), (1, true));
    let snap = sm.get_snapshot_builder().await.build_snapshot().await?;
    let r = apply_results(&sm, &[write(at_edge + 1, Some("old"), WriteOp::Put(put_op(b"k", b"3")))])?;
    assert_eq!((r[0].index, r[0].duplicate), (at_edge + 1, false), "an expired id applies again");
    // Applied again, the id is remembered at its new index (its old row is not swept yet).
    assert_eq!(request_ids(&sm).get("old"), Some(at_edge + 1));
    let r = apply_results(&sm, &[write(at_edge + 2, Some("old"), WriteOp::Put(put_op(b"k", b"4")))])?;
    assert_eq!((r[0].index, r[0].duplicate), (at_edge + 1, true));
    // A node that installs the snapshot taken at the edge agrees on both answers.
    let mut other = StateMachine::open(d2.path())?;
    other.install_snapshot(&snap.meta, snap.snapshot).await?;
    let r = apply_results(&other, &[write(at_edge + 1, Some("old"), WriteOp::Put(put_op(b"k", b"3")))])?;
    assert_eq!((r[0].index, r[0].duplicate), (at_edge + 1, false));
    // Sweeping removes the expired rows and nothing else.
    let newer = apply_results(&sm, &[write(at_edge + 3, Some(&id(2)), WriteOp::Put(put_op(b"k", b"5")))])?;
    assert!(!newer[0].duplicate);
    let db = sm.db();
    let mut ids = request_ids(&sm);
    assert_eq!(ids.len(), 2, "old and id-2");
    let txn = db.begin_write()?;
    let change = {
        let mut tables = store::ApplyTables::open(&txn, &ids)?;
        let outcome =
            WriteOutcome { index: 3 * MAX_REQUEST_IDS, duplicate: false, result: WriteResult::Put { prev: None } };
        tables.remember_request(&id(3), &outcome)?;
        tables.forget_old_requests()?;
        tables.finish()
    };
    txn.commit()?;
    ids.commit(change);
    let read = db.begin_read()?;
    let requests = read.open_table(REQUESTS_AT)?;
    assert_eq!(requests.len()?, 1, "only the id within the window of the newest index stays");
    assert_eq!(requests.get(3 * MAX_REQUEST_IDS)?.ok_or("id-3 missing")?.value().0, id(3));
    assert_eq!((ids.len(), ids.get(&id(3))), (1, Some(3 * MAX_REQUEST_IDS)), "the index is swept with the table");
    Ok(())
}

#[test]
fn a_failed_apply_batch_leaves_no_request_id_behind() -> TestResult {
    let dir = tempfile::tempdir()?;
    let sm = StateMachine::open(dir.path())?;
    apply_results(&sm, &[write(1, Some("kept"), WriteOp::Put(put_op(b"k", b"1")))])?;
    // A record shorter than its header: a put over it fails, and with it the whole batch.
    {
        let db = sm.db();
        let txn = db.begin_write()?;
        txn.open_table(KV)?.insert(&b"broken"[..], &b"short"[..])?;
        txn.commit()?;
    }
    let failed = apply_results(
        &sm,
        &[
            write(2, Some("lost"), WriteOp::Put(put_op(b"a", b"2"))),
            write(3, None, WriteOp::Put(put_op(b"broken", b"3"))),
        ],
    );
    assert!(failed.is_err(), "the put over a corrupt record fails");
    assert_eq!(request_ids(&sm).get("lost"), None, "the aborted batch's id is not remembered");
    // Applied again (as openraft would after a restart), the write is not a duplicate.
    let r = apply_results(&sm, &[write(2, Some("lost"), WriteOp::Put(put_op(b"a", b"2")))])?;
    assert_eq!((r[0].index, r[0].duplicate), (2, false));
    let r = apply_results(&sm, &[write(3, Some("kept"), WriteOp::Put(put_op(b"k", b"3")))])?;
    assert_eq!((r[0].index, r[0].duplicate), (1, true));
    Ok(())
}

#[tokio::test]
async fn request_ids_of_the_old_table_are_moved_and_still_honoured() -> TestResult {
    let dir = tempfile::tempdir()?;
    drop(StateMachine::open(dir.path())?);
    let put_outcome = |index| WriteOutcome { index, duplicate: false, result: WriteResult::Put { prev: None } };
    {
        // A file as builds before `requests_at` left it: ids keyed by name.
        let db = redb::Database::create(dir.path().join(DB_FILE))?;
        let txn = db.begin_write()?;
        {
            let mut old = txn.open_table(REQUESTS)?;
            old.insert("b-old", codec::encode(&put_outcome(3))?.as_slice())?;
            old.insert("a-old", codec::encode(&put_outcome(5))?.as_slice())?;
            txn.open_table(META)?.insert(META_LAST_APPLIED, codec::encode(&log_id(5))?.as_slice())?;
        }
        txn.delete_table(REQUESTS_AT)?;
        txn.commit()?;
    }
    let sm = StateMachine::open(dir.path())?;
    {
        let db = sm.db();
        let read = db.begin_read()?;
        assert!(!read.list_tables()?.any(|t| t.name() == "requests"), "the old table is deleted");
        let requests = read.open_table(REQUESTS_AT)?;
        assert_eq!(requests.get(3)?.ok_or("b-old not moved")?.value().0, "b-old");
        assert_eq!(requests.get(5)?.ok_or("a-old not moved")?.value().0, "a-old");
    }
    let r = apply_results(
        &sm,
        &[
            write(6, Some("a-old"), WriteOp::Put(put_op(b"k", b"6"))),
            write(7, Some("b-old"), WriteOp::Put(put_op(b"k", b"7"))),
            write(8, Some("new"), WriteOp::Put(put_op(b"k", b"8"))),
        ],
    )?;
    assert_eq!((r[0].index, r[0].duplicate), (5, true));
    assert_eq!((r[1].index, r[1].duplicate), (3, true));
    assert_eq!((r[2].index, r[2].duplicate), (8, false));
    assert_eq!(r[0].result, WriteResult::Put { prev: None });
    // Reopened (nothing left to move), the ids still count.
    drop(sm);
    let sm = StateMachine::open(dir.path())?;
    let r = apply_results(&sm, &[write(9, Some("b-old"), WriteOp::Put(put_op(b"k", b"9")))])?;
    assert_eq!((r[0].index, r[0].duplicate), (3, true));
    Ok(())
}

#[tokio::test]
async fn snapshots_carry_request_ids_in_the_unchanged_stream_format() -> TestResult {
    let (d1, d2) = (tempfile::tempdir()?, tempfile::tempdir()?);
    let put_outcome = |index| WriteOutcome { index, duplicate: false, result: WriteResult::Put { prev: None } };
    // A snapshot as a node keyed by id writes it: requests in id order, not index order.
    let meta = SnapshotMeta { last_log_id: Some(log_id(10)), last_membership: StoredMembership::default() };
    let path = d1.path().join("old.rkvs");
    let mut w = SnapshotWriter::new(File::create(&path)?, &meta)?;
    w.record(b"k", &store::Record::encode(4, 9, 2, 0, b"v"))?;
    w.request("a-id", &codec::encode(&put_outcome(9))?)?;
    w.request("b-id", &codec::encode(&put_outcome(4))?)?;
    w.finish()?.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    let mut sm = StateMachine::open(d2.path())?;
    sm.install_snapshot(&meta, SnapshotFile::open(&path)?).await?;
    let r = apply_results(
        &sm,
        &[
            write(11, Some("a-id"), WriteOp::Put(put_op(b"k", b"11"))),
            write(12, Some("b-id"), WriteOp::Put(put_op(b"k", b"12"))),
        ],
    )?;
    assert_eq!((r[0].index, r[0].duplicate, r[1].index, r[1].duplicate), (9, true, 4, true));
    // What this node builds is the same stream of (id, encoded outcome) pairs, which a
    // node keyed by id installs as it always did.
    let snap = sm.get_snapshot_builder().await.build_snapshot().await?;
    let mut reader = SnapshotReader::new(snap.snapshot.reader()?)?;
    let mut requests = Vec::new();
    while let Some(item) = reader.next_record()? {
        if let snapshot::Item::Request(id, outcome) = item {
            requests.push((id, codec::decode::<WriteOutcome>(&outcome)?));
        }
    }
    assert_eq!(requests, vec![("b-id".to_string(), put_outcome(4)), ("a-id".to_string(), put_outcome(9))]);
    Ok(())
}

#[test]
fn sweeps_happen_once_per_interval() {
    let interval = MAX_REQUEST_IDS / 4;
    assert!(!store::sweep_due(1, interval - 1));
    assert!(store::sweep_due(interval - 1, interval));
    assert!(store::sweep_due(interval, interval), "a batch ending on the multiple sweeps");
    assert!(!store::sweep_due(interval + 1, 2 * interval - 1));
}

#[tokio::test]
async fn applied_changes_reach_watchers_after_commit() -> TestResult {
    use blocking_query::Signal;
    let dir = tempfile::tempdir()?;
    let mut sm = StateMachine::open(dir.path())?;
    let (w, start) = sm.watch(KeyRange::prefix(b"k"), 0)?;
    assert_eq!((start.after, start.backlog.len()), (0, 0));
    let range_del = WriteOp::Delete(DeleteOp { range: KeyRange::prefix(b"k"), expect: None, prev_kv: false });
    let failed = cas_put(b"k1", b"x", Some(Expect::Absent));
    apply(&mut sm, vec![put(1, b"k1", b"a"), put(2, b"other", b"b"), put(3, b"k2", b"c")]).await?;
    apply(&mut sm, vec![write(4, None, failed), write(5, None, range_del)]).await?;
    let mut seen = Vec::new();
    while let Some(Signal::Item(c)) = w.mailbox().try_recv() {
        for e in &c.events {
            seen.push((c.index, e.kind, e.kv.key.clone(), e.kv.value.clone(), e.kv.version));
        }
    }
    assert_eq!(
        seen,
        [
            (1, EventKind::Put, b"k1".to_vec(), b"a".to_vec(), 1),
            (3, EventKind::Put, b"k2".to_vec(), b"c".to_vec(), 1),
            (5, EventKind::Delete, b"k1".to_vec(), Vec::new(), 0),
            (5, EventKind::Delete, b"k2".to_vec(), Vec::new(), 0),
        ],
        "a failed precondition changes nothing and says nothing"
    );
    // The same changes are in the history, and the state read with its index agrees.
    let (_, start) = sm.watch(KeyRange::Key(b"k1".to_vec()), 1)?;
    assert_eq!(start.backlog.iter().map(|c| c.index).collect::<Vec<_>>(), [1, 5]);
    let (found, at) = sm.range_at(
        &RangeOp { range: KeyRange::prefix(b""), limit: 0, keys_only: false, count_only: false },
        usize::MAX,
    )?;
    assert_eq!((found.kvs.len(), at), (1, 5));
    Ok(())
}

#[tokio::test]
async fn installing_a_snapshot_abandons_watchers_and_the_history() -> TestResult {
    use blocking_query::Signal;
    let dir = tempfile::tempdir()?;
    let mut leader = StateMachine::open(&dir.path().join("leader"))?;
    apply(&mut leader, vec![put(1, b"k", b"1"), put(2, b"k", b"2"), put(3, b"k", b"restored")]).await?;
    let snap = leader.get_snapshot_builder().await.build_snapshot().await?;
    let mut follower = StateMachine::open(&dir.path().join("follower"))?;
    apply(&mut follower, vec![put(1, b"k", b"1")]).await?;
    let (w, _) = follower.watch(KeyRange::Key(b"k".to_vec()), 0)?;
    follower.install_snapshot(&snap.meta, snap.snapshot).await?;
    assert_eq!(w.mailbox().try_recv(), Some(Signal::Abandoned(3)));
    assert!(matches!(follower.watch(KeyRange::Key(b"k".to_vec()), 1), Err(Error::Compacted { oldest: 4, .. })));
    apply(&mut follower, vec![put(4, b"k", b"after")]).await?;
    assert!(matches!(w.mailbox().try_recv(), Some(Signal::Item(c)) if c.index == 4));
    // A restart remembers nothing before it: the history starts at the applied index.
    drop(w);
    drop(follower);
    let reopened = StateMachine::open(&dir.path().join("follower"))?;
    assert_eq!(reopened.watch_stats().oldest_index, 5);
    reopened.close_watches();
    assert!(matches!(reopened.watch(KeyRange::Key(b"k".to_vec()), 0), Err(Error::Closed)));
    Ok(())
}

fn alarm(index: u64, member: &str, action: AlarmAction) -> Entry {
    let member = NodeId::new(member).unwrap_or_else(|_| NodeId::from(9));
    Entry::new_normal(log_id(index), Command::Alarm(AlarmCommand { member, kind: AlarmKind::NoSpace, action }))
}

#[tokio::test]
async fn alarms_are_applied_kept_across_reopen_and_carried_by_snapshots() -> TestResult {
    let (d1, d2) = (tempfile::tempdir()?, tempfile::tempdir()?);
    let mut sm = StateMachine::open(d1.path())?;
    let raise = |i, m| alarm(i, m, AlarmAction::Raise { detail: format!("full at {i}") });
    apply(&mut sm, vec![put(1, b"k", b"v"), raise(2, "n2"), raise(3, "n3"), alarm(4, "n3", AlarmAction::Clear)])
        .await?;
    let active = sm.alarms();
    assert_eq!(active.iter().map(|a| (a.member.as_str(), a.index)).collect::<Vec<_>>(), [("n2", 2)]);
    assert_eq!(active[0].detail, "full at 2");

    drop(sm);
    let mut sm = StateMachine::open(d1.path())?;
    assert_eq!(sm.alarms().len(), 1, "alarms are durable state");
    let snap = sm.get_snapshot_builder().await.build_snapshot().await?;
    let mut other = StateMachine::open(d2.path())?;
    other.install_snapshot(&snap.meta, snap.snapshot).await?;
    assert_eq!(other.alarms(), sm.alarms(), "a snapshot carries the alarms");

    // Clearing them all: the next snapshot has none, and installing it clears them.
    apply(&mut sm, vec![alarm(5, "n2", AlarmAction::Clear)]).await?;
    let snap = sm.get_snapshot_builder().await.build_snapshot().await?;
    other.install_snapshot(&snap.meta, snap.snapshot).await?;
    assert!(other.alarms().is_empty());
    Ok(())
}

#[tokio::test]
async fn compaction_gives_deleted_space_back() -> TestResult {
    let dir = tempfile::tempdir()?;
    let mut sm = StateMachine::open(dir.path())?;
    let big = vec![7u8; 64 << 10];
    apply(&mut sm, (1..=64).map(|i| put(i, format!("k{i:03}").as_bytes(), &big)).collect()).await?;
    apply(&mut sm, (65..=128).map(|i| del(i, format!("k{:03}", i - 64).as_bytes())).collect()).await?;
    sm.flush()?;
    let before = sm.db_file_bytes()?;
    assert!(sm.compact(Duration::from_secs(5))?, "nothing was compacted");
    let after = sm.db_file_bytes()?;
    assert!(after < before / 2, "{before} → {after} bytes");
    assert_eq!(sm.len()?, 0);
    apply(&mut sm, vec![put(129, b"after", b"compaction")]).await?;
    assert_eq!(sm.get(b"after")?.map(|kv| kv.value), Some(b"compaction".to_vec()));
    Ok(())
}

fn lease_cmd(index: u64, cmd: types::LeaseCommand) -> Entry {
    Entry::new_normal(log_id(index), Command::Lease(cmd))
}

fn grant(index: u64, id: i64, ttl: i64) -> Entry {
    lease_cmd(index, types::LeaseCommand::Grant { id, ttl })
}

fn revoke(index: u64, id: i64) -> Entry {
    lease_cmd(index, types::LeaseCommand::Revoke { id })
}

/// A put of `key` attached as `attach` says.
fn leased_put(index: u64, key: &[u8], value: &[u8], attach: types::LeaseAttach) -> Entry {
    leased(index, WriteOp::Put(put_op(key, value)), &[(key, attach)])
}

fn leased(index: u64, op: WriteOp, leases: &[(&[u8], types::LeaseAttach)]) -> Entry {
    let write = types::CheckedWrite { user: None, write: WriteCommand { request_id: None, op } };
    let leases = leases.iter().map(|(k, a)| (k.to_vec(), *a)).collect();
    Entry::new_normal(log_id(index), Command::LeasedWrite(types::LeasedWrite { write, leases }))
}

fn results(sm: &StateMachine, entries: &[Entry]) -> Result<Vec<CommandResult>, Error> {
    sm.apply_batch(&sm.db(), entries)
}

fn keys_of(sm: &StateMachine, id: i64) -> Result<Vec<Vec<u8>>, Box<dyn std::error::Error>> {
    Ok(sm.lease(id, true)?.ok_or("no such lease")?.keys)
}

#[test]
fn leases_are_granted_once_and_attach_keys() -> TestResult {
    use types::{LeaseAttach, LeaseOutcome};
    let dir = tempfile::tempdir()?;
    let sm = StateMachine::open(dir.path())?;
    let r = results(&sm, &[grant(1, 7, 5), grant(2, 7, 9), grant(3, 8, 3)])?;
    assert_eq!(
        r,
        [
            CommandResult::Lease(LeaseOutcome::Granted { id: 7, ttl: 5 }),
            CommandResult::Lease(LeaseOutcome::Exists),
            CommandResult::Lease(LeaseOutcome::Granted { id: 8, ttl: 3 }),
        ]
    );
    assert_eq!(sm.leases()?, [(7, 5), (8, 3)], "a refused grant changes nothing");
    // Attach, move to another lease, keep, detach by a plain put.
    let r = apply_results(
        &sm,
        &[
            leased_put(4, b"a", b"1", LeaseAttach::Lease(7)),
            leased_put(5, b"b", b"1", LeaseAttach::Lease(7)),
            leased_put(6, b"c", b"1", LeaseAttach::Lease(8)),
            leased_put(7, b"c", b"2", LeaseAttach::Lease(7)),
            leased_put(8, b"a", b"2", LeaseAttach::Keep),
            put(9, b"b", b"2"),
        ],
    )?;
    assert!(r.iter().all(|o| matches!(o.result, WriteResult::Put { .. })), "{r:?}");
    assert_eq!(sm.get(b"a")?.ok_or("a")?.lease, 7);
    assert_eq!((sm.get(b"a")?.ok_or("a")?.value, sm.get(b"a")?.ok_or("a")?.version), (b"2".to_vec(), 2));
    assert_eq!(sm.get(b"b")?.ok_or("b")?.lease, 0);
    assert_eq!(keys_of(&sm, 7)?, [b"a".to_vec(), b"c".to_vec()]);
    assert_eq!(keys_of(&sm, 8)?, Vec::<Vec<u8>>::new());
    assert_eq!(sm.lease(99, true)?, None);
    // An unknown lease refuses the whole write; a txn checks the branch that runs only.
    let r = apply_results(&sm, &[leased_put(10, b"d", b"1", LeaseAttach::Lease(99))])?;
    assert_eq!(r[0].result, WriteResult::LeaseNotFound { lease: 99 });
    assert_eq!(sm.get(b"d")?, None);
    let txn = |succeed: bool| {
        WriteOp::Txn(Txn {
            compares: vec![Compare {
                key: b"a".to_vec(),
                op: CompareOp::Equal,
                target: CompareTarget::Lease(if succeed { 7 } else { 8 }),
            }],
            success: vec![TxnOp::Put(put_op(b"e", b"1")), TxnOp::Put(put_op(b"f", b"1"))],
            failure: vec![TxnOp::Put(put_op(b"g", b"1"))],
        })
    };
    let attach: &[(&[u8], LeaseAttach)] =
        &[(b"e", LeaseAttach::Lease(8)), (b"f", LeaseAttach::Lease(99)), (b"g", LeaseAttach::Lease(8))];
    let r = apply_results(&sm, &[leased(11, txn(true), attach), leased(12, txn(false), attach)])?;
    assert_eq!(r[0].result, WriteResult::LeaseNotFound { lease: 99 });
    assert!(matches!(r[1].result, WriteResult::Txn { succeeded: false, .. }), "{r:?}");
    assert_eq!((sm.get(b"e")?, sm.get(b"g")?.ok_or("g")?.lease), (None, 8));
    // A delete detaches.
    apply_results(&sm, &[del(13, b"c")])?;
    assert_eq!(keys_of(&sm, 7)?, [b"a".to_vec()]);
    Ok(())
}

#[tokio::test]
async fn a_revoke_deletes_the_keys_with_their_events_at_one_index() -> TestResult {
    use blocking_query::Signal;
    use types::{LeaseAttach, LeaseOutcome};
    let dir = tempfile::tempdir()?;
    let sm = StateMachine::open(dir.path())?;
    results(&sm, &[grant(1, 7, 5)])?;
    apply_results(
        &sm,
        &[
            leased_put(2, b"k1", b"a", LeaseAttach::Lease(7)),
            leased_put(3, b"k2", b"b", LeaseAttach::Lease(7)),
            put(4, b"k3", b"c"),
        ],
    )?;
    let (w, _) = sm.watch(KeyRange::prefix(b"k"), 0)?;
    let r = results(&sm, &[revoke(5, 7), revoke(6, 7)])?;
    assert_eq!(
        r,
        [CommandResult::Lease(LeaseOutcome::Revoked { deleted: 2 }), CommandResult::Lease(LeaseOutcome::NotFound)]
    );
    assert_eq!((sm.get(b"k1")?, sm.get(b"k2")?, sm.len()?, sm.leases()?), (None, None, 1, vec![]));
    let mut seen = Vec::new();
    while let Some(Signal::Item(c)) = w.mailbox().try_recv() {
        for e in &c.events {
            seen.push((c.index, e.kind, e.kv.key.clone(), e.prev.as_ref().map(|p| p.lease)));
        }
    }
    assert_eq!(
        seen,
        [(5, EventKind::Delete, b"k1".to_vec(), Some(7)), (5, EventKind::Delete, b"k2".to_vec(), Some(7))]
    );
    Ok(())
}

#[tokio::test]
async fn leases_survive_reopen_and_travel_in_snapshots() -> TestResult {
    use types::LeaseAttach;
    let (d1, d2) = (tempfile::tempdir()?, tempfile::tempdir()?);
    let mut leader = StateMachine::open(d1.path())?;
    apply(
        &mut leader,
        vec![
            grant(1, 7, 5),
            grant(2, i64::MAX, 9),
            leased_put(3, b"a", b"1", LeaseAttach::Lease(7)),
            leased_put(4, b"z", b"1", LeaseAttach::Lease(i64::MAX)),
            put(5, b"plain", b"1"),
        ],
    )
    .await?;
    let snap = leader.get_snapshot_builder().await.build_snapshot().await?;
    let mut follower = StateMachine::open(d2.path())?;
    follower.install_snapshot(&snap.meta, snap.snapshot).await?;
    for sm in [&leader, &follower] {
        assert_eq!(sm.leases()?, [(7, 5), (i64::MAX, 9)]);
        assert_eq!(keys_of(sm, 7)?, [b"a".to_vec()]);
        assert_eq!(keys_of(sm, i64::MAX)?, [b"z".to_vec()]);
        assert_eq!(sm.get(b"z")?.ok_or("z")?.lease, i64::MAX);
        assert_eq!(sm.get(b"plain")?.ok_or("plain")?.lease, 0);
    }
    assert_eq!(leader.hash_kv()?, follower.hash_kv()?);
    // The installed index works: a revoke on the follower deletes the key.
    apply(&mut follower, vec![revoke(6, 7)]).await?;
    assert_eq!(follower.get(b"a")?, None);
    drop(leader);
    let leader = StateMachine::open(d1.path())?;
    assert_eq!(leader.leases()?, [(7, 5), (i64::MAX, 9)]);
    assert_eq!(keys_of(&leader, 7)?, [b"a".to_vec()]);
    Ok(())
}

#[test]
fn records_without_a_lease_keep_their_old_encoding() -> TestResult {
    let plain = Record::encode(1, 2, 3, 0, b"v");
    assert_eq!(plain.len(), 24 + 1);
    let kv = Record::decode(b"k", &plain, true)?;
    assert_eq!((kv.create_index, kv.modify_index, kv.version, kv.lease, kv.value), (1, 2, 3, 0, b"v".to_vec()));
    let leased = Record::encode(1, 2, 3, 42, b"v");
    let kv = Record::decode(b"k", &leased, true)?;
    assert_eq!((kv.create_index, kv.modify_index, kv.version, kv.lease, kv.value), (1, 2, 3, 42, b"v".to_vec()));
    assert!(Record::decode(b"k", &leased[..28], true).is_err(), "a truncated lease is corrupt");
    Ok(())
}

/// A copy of `state.redb` taken while the state machine is open is what a kill -9 leaves:
/// redb repairs it on open, and that repair is the check of every page's checksum. A damaged
/// copy is never served: redb rolls back to an earlier commit that verifies (the node then
/// catches up from its snapshot and log, as after any rollback), or the file is set aside.
#[tokio::test]
async fn a_state_file_not_shut_down_cleanly_is_verified_by_the_repair() -> TestResult {
    let dir = tempfile::tempdir()?;
    let cache = Options::default().db_cache_bytes;
    let value = b"damage-me-".repeat(100);
    let mut sm = StateMachine::open(dir.path())?;
    apply(&mut sm, (1..=20).map(|i| put(i, format!("k{i}").as_bytes(), &value)).collect()).await?;
    sm.flush()?;
    let crashed = std::fs::read(dir.path().join(DB_FILE))?;
    drop(sm);
    let (_, repaired) = open_db(&dir.path().join(DB_FILE), cache)?;
    assert!(!repaired, "a cleanly closed file was repaired");

    let other = tempfile::tempdir()?;
    let copy = other.path().join(DB_FILE);
    std::fs::write(&copy, &crashed)?;
    let (db, repaired) = open_db(&copy, cache)?;
    assert!(repaired, "the file left open was not repaired");
    assert_eq!(db.begin_read()?.open_table(KV)?.len()?, 20, "the repair lost keys");
    drop(db);

    let mut bytes = crashed;
    let mut at = 0;
    while let Some(pos) = bytes[at..].windows(64).position(|w| w == &value[..64]) {
        let start = at + pos;
        bytes[start..start + 64].iter_mut().for_each(|b| *b ^= 0xff);
        at = start + 64;
    }
    assert!(at > 0, "no value found to damage");
    std::fs::write(&copy, &bytes)?;
    let db = open_checked(&copy, cache)?;
    let flipped: Vec<u8> = value[..64].iter().map(|b| b ^ 0xff).collect();
    let kv = db.begin_read()?.open_table(KV)?;
    for row in kv.iter()? {
        let (_, v) = row?;
        assert!(!v.value().windows(64).any(|w| w == flipped.as_slice()), "a damaged value was served");
    }
    let set_aside = read_dir(other.path())?.into_iter().filter(|p| is_set_aside(p)).count();
    assert!(kv.len()? < 20 || set_aside == 1, "the damaged state was kept");
    Ok(())
}
