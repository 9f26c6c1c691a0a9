//! Unit tests of the state machine: apply, persistence, snapshots.

use std::collections::{BTreeMap, BTreeSet};

use openraft::entry::RaftEntry;
use types::{Entry, Membership, NodeId, NodeInfo};

use super::*;

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn log_id(index: u64) -> LogId {
    LogId::new(openraft::impls::leader_id_adv::LeaderId { term: 1, node_id: NodeId::from(1) }, index)
}

fn put(index: u64, key: &[u8], value: &[u8]) -> Entry {
    Entry::new_normal(log_id(index), Command::Put { key: key.to_vec(), value: value.to_vec() })
}

fn del(index: u64, key: &[u8]) -> Entry {
    Entry::new_normal(log_id(index), Command::Delete { key: key.to_vec() })
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
