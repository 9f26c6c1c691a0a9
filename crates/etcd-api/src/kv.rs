//! `etcdserverpb.KV`: Range, Put, DeleteRange and Txn over raftkv's write and read paths.

use std::collections::BTreeMap;
use std::time::Duration;

use linearizable::Consistency;
use prost::Message;
use proto::etcd::etcdserverpb::kv_client::KvClient;
use proto::etcd::etcdserverpb::kv_server::{Kv, KvServer};
use proto::etcd::etcdserverpb::{
    CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse, PutRequest, PutResponse,
    RangeRequest, RangeResponse, TxnRequest, TxnResponse,
};
use service::forward::{Effect, Forwarding, deadline, to_leader};
use service::{DEFAULT_REQUEST_TIMEOUT, MAX_DECODE_BYTES, Routed, ServiceError, limits};
use tokio::time::Instant;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};
use types::auth::Access;
use types::{
    CheckedWrite, Command, CommandResult, Compare, CompareOp, CompareTarget, KeyRange, KeyValue, LeaseAttach,
    LeasedWrite, PutOp, RangeOp, Txn, TxnOp, TxnOpResult, WriteCommand, WriteOp, WriteOutcome, WriteResult,
};

use crate::range::{self, MAX_RANGE_RESPONSE_BYTES, key_value};
use crate::{EtcdError, Node, auth, signed, txn};

/// How many times a put with `ignore_value` re-reads a key that keeps changing under it
/// before it gives up (each attempt is one compare-and-set through the log).
pub const MAX_IGNORE_VALUE_ATTEMPTS: usize = 16;

/// How long a read at a past revision waits for the changes it read to reach the change
/// feed's history (normally no time at all: they are published right after the commit).
const PUBLISH_WAIT: Duration = Duration::from_secs(1);

/// The `etcdserverpb.KV` service of one node.
#[derive(Debug, Clone)]
pub struct EtcdKv {
    node: Node,
}

/// A client of the leader's etcd KV service, with the decode limit both ways.
fn leader_client(channel: Channel) -> KvClient<Channel> {
    KvClient::new(channel).max_decoding_message_size(MAX_DECODE_BYTES).max_encoding_message_size(MAX_DECODE_BYTES)
}

fn unexpected(result: &WriteResult) -> EtcdError {
    EtcdError::Service(ServiceError::Internal(format!("unexpected write result {result:?}").into()))
}

/// The deadline of a write request and how it goes to the leader; its size checked.
fn write_call<T: Message>(request: &Request<T>) -> Result<(Duration, Forwarding), EtcdError> {
    limits::check_request_size(request.get_ref().encoded_len())?;
    let timeout = deadline(request.metadata(), DEFAULT_REQUEST_TIMEOUT);
    Ok((timeout, Forwarding::of(request.metadata(), Effect::Write, Instant::now() + timeout)))
}

impl EtcdKv {
    pub(crate) fn new(node: Node) -> Self {
        Self { node }
    }

    /// The tonic server for this service, with the decode limit applied.
    #[must_use]
    pub fn into_server(self) -> KvServer<Self> {
        KvServer::new(self).max_decoding_message_size(MAX_DECODE_BYTES)
    }

    /// The caller may access `ranges` (built only while authentication is on), as etcd
    /// checks it ([`auth::authorize`]); the caller, `None` while authentication is off.
    fn authorize(
        &self,
        md: &tonic::metadata::MetadataMap,
        ranges: impl FnOnce() -> Result<Vec<(KeyRange, Access)>, EtcdError>,
    ) -> Result<Option<String>, EtcdError> {
        let state = self.node.ctx.sm.auth_state();
        if !state.enabled {
            return Ok(None);
        }
        auth::authorize(&state, md, &ranges()?)
    }

    /// Proposes `op` here, as `user`'s (checked again when it is applied, as raftkv's own
    /// writes: a permission revoked meanwhile refuses it), its puts doing with their keys'
    /// leases what `leases` says; [`Routed::Leader`] when it must go to the leader. A lease
    /// that does not exist when the write applies is etcd's "requested lease not found".
    async fn write(
        &self,
        user: Option<String>,
        op: WriteOp,
        leases: BTreeMap<Vec<u8>, LeaseAttach>,
        timeout: Duration,
    ) -> Result<Routed<WriteOutcome>, EtcdError> {
        let write = CheckedWrite { user, write: WriteCommand { request_id: None, op } };
        let cmd = if leases.is_empty() {
            Command::CheckedWrite(write)
        } else {
            Command::LeasedWrite(LeasedWrite { write, leases })
        };
        Ok(match self.node.ctx.write(cmd, timeout).await? {
            Routed::Done((_, CommandResult::Write(WriteOutcome { result: WriteResult::LeaseNotFound { .. }, .. }))) => {
                return Err(EtcdError::LeaseNotFound);
            }
            Routed::Done((_, CommandResult::Write(outcome))) => {
                if let WriteResult::PermissionDenied { user, range, access } = &outcome.result {
                    tracing::info!(index = outcome.index, ?user, range = %types::auth::RangeDisplay(range), %access, "etcd write refused at apply: its permission was gone");
                    return Err(EtcdError::PermissionDenied);
                }
                Routed::Done(outcome)
            }
            Routed::Done((index, other)) => {
                return Err(
                    ServiceError::Internal(format!("the write at index {index} answered {other:?}").into()).into()
                );
            }
            Routed::Leader(leader) => Routed::Leader(leader),
        })
    }

    /// A put with `ignore_value`: the key keeps its value and gets a new revision. raftkv's
    /// put always carries a value, so this is a compare-and-set on the key's mod revision
    /// with the value last seen; when the key changed meanwhile, the transaction's failure
    /// branch reads it again, and the put is retried (at most [`MAX_IGNORE_VALUE_ATTEMPTS`]
    /// times). A key absent when the transaction applies is etcd's "key not found".
    async fn put_keeping_value(
        &self,
        user: Option<String>,
        op: PutOp,
        leases: BTreeMap<Vec<u8>, LeaseAttach>,
        timeout: Duration,
    ) -> Result<Routed<(u64, Option<KeyValue>)>, EtcdError> {
        let until = Instant::now() + timeout;
        // A local read: it may be stale, which only costs an attempt (the compare decides).
        let mut seen = self.node.ctx.sm.get(&op.key)?;
        let read = TxnOp::Range(RangeOp {
            range: KeyRange::Key(op.key.clone()),
            limit: 1,
            keys_only: false,
            count_only: false,
        });
        for _ in 0..MAX_IGNORE_VALUE_ATTEMPTS {
            let txn = match &seen {
                None => Txn {
                    compares: vec![Compare {
                        key: op.key.clone(),
                        op: CompareOp::Equal,
                        target: CompareTarget::Exists(false),
                    }],
                    success: vec![],
                    failure: vec![read.clone()],
                },
                Some(kv) => Txn {
                    compares: vec![Compare {
                        key: op.key.clone(),
                        op: CompareOp::Equal,
                        target: CompareTarget::ModifyIndex(kv.modify_index),
                    }],
                    success: vec![TxnOp::Put(PutOp { value: kv.value.clone(), ..op.clone() })],
                    failure: vec![read.clone()],
                },
            };
            let remaining = until.saturating_duration_since(Instant::now());
            let outcome = match self.write(user.clone(), WriteOp::Txn(txn), leases.clone(), remaining).await? {
                Routed::Done(outcome) => outcome,
                Routed::Leader(leader) => return Ok(Routed::Leader(leader)),
            };
            match (outcome.result, &seen) {
                (WriteResult::Txn { succeeded: true, .. }, None) => return Err(EtcdError::KeyNotFound),
                (WriteResult::Txn { succeeded: true, mut results }, Some(_)) => match results.pop() {
                    Some(TxnOpResult::Put { prev }) => return Ok(Routed::Done((outcome.index, prev))),
                    other => {
                        return Err(unexpected(&WriteResult::Txn {
                            succeeded: true,
                            results: other.into_iter().collect(),
                        }));
                    }
                },
                (WriteResult::Txn { succeeded: false, mut results }, _) => match results.pop() {
                    Some(TxnOpResult::Range(found)) => seen = found.kvs.into_iter().next(),
                    other => {
                        return Err(unexpected(&WriteResult::Txn {
                            succeeded: false,
                            results: other.into_iter().collect(),
                        }));
                    }
                },
                (other, _) => return Err(unexpected(&other)),
            }
        }
        Err(ServiceError::FailedPrecondition(format!(
            "put with ignore_value: the key changed under each of {MAX_IGNORE_VALUE_ATTEMPTS} attempts (MAX_IGNORE_VALUE_ATTEMPTS); retry"
        ))
        .into())
    }

    /// A put with `ignore_lease` (and a value): the key keeps its lease, and must exist
    /// when the put applies (etcd's "key not found" otherwise): a transaction whose one
    /// compare is the key's existence.
    async fn put_keeping_lease(
        &self,
        user: Option<String>,
        op: PutOp,
        leases: BTreeMap<Vec<u8>, LeaseAttach>,
        timeout: Duration,
    ) -> Result<Routed<(u64, Option<KeyValue>)>, EtcdError> {
        let txn = Txn {
            compares: vec![Compare { key: op.key.clone(), op: CompareOp::Equal, target: CompareTarget::Exists(true) }],
            success: vec![TxnOp::Put(op)],
            failure: vec![],
        };
        match self.write(user, WriteOp::Txn(txn), leases, timeout).await? {
            Routed::Done(WriteOutcome { index, result: WriteResult::Txn { succeeded: true, mut results }, .. }) => {
                match results.pop() {
                    Some(TxnOpResult::Put { prev }) => Ok(Routed::Done((index, prev))),
                    other => {
                        Err(unexpected(&WriteResult::Txn { succeeded: true, results: other.into_iter().collect() }))
                    }
                }
            }
            Routed::Done(WriteOutcome { result: WriteResult::Txn { succeeded: false, .. }, .. }) => {
                Err(EtcdError::KeyNotFound)
            }
            Routed::Done(other) => Err(unexpected(&other.result)),
            Routed::Leader(leader) => Ok(Routed::Leader(leader)),
        }
    }

    /// Whether a read at `revision` can be answered from the state at `applied` for `range`:
    /// etcd keeps every old revision until a compaction; raftkv keeps the current state and
    /// the watch history, so it answers a past revision exactly when that history shows no
    /// change to the range after it (the state then is the state now), and refuses it as
    /// compacted otherwise.
    async fn check_revision(&self, revision: i64, applied: u64, range: &KeyRange) -> Result<(), EtcdError> {
        let revision = u64::try_from(revision).unwrap_or(0);
        if revision > applied {
            return Err(EtcdError::FutureRevision);
        }
        if revision < self.node.ctx.sm.compacted_revision() {
            return Err(EtcdError::Compacted);
        }
        if revision == applied {
            return Ok(());
        }
        // The state machine publishes a batch's changes to the history just before it
        // publishes its applied index: once the index shows `applied` (at once, or within
        // the moment between the two), every change up to it is in the history.
        let mut published = self.node.ctx.sm.subscribe_applied();
        let _ = tokio::time::timeout(PUBLISH_WAIT, published.wait_for(|a| *a >= applied)).await;
        let (watcher, start) = match self.node.ctx.sm.watch(range.clone(), revision + 1) {
            Ok(w) => w,
            Err(fsm::Error::Compacted { .. }) => return Err(EtcdError::Compacted),
            Err(e) => return Err(e.into()),
        };
        // Changes applied but still not published are not in the backlog: unknown, so refused.
        let unchanged = watcher.published() >= applied && start.backlog.iter().all(|c| c.index > applied);
        if unchanged { Ok(()) } else { Err(EtcdError::Compacted) }
    }

    async fn do_range(&self, request: Request<RangeRequest>) -> Result<RangeResponse, EtcdError> {
        let timeout = deadline(request.metadata(), DEFAULT_REQUEST_TIMEOUT);
        let (md, _, req) = request.into_parts();
        let plan = range::plan(&req)?;
        let level = if req.serializable { Consistency::Stale } else { Consistency::Linearizable };
        self.node.ctx.read_index(level, timeout).await?;
        // After the barrier, as raftkv's own reads: every auth change committed before the
        // read arrived is applied here, so a revoked permission is refused on every node.
        self.authorize(&md, || Ok(vec![(plan.op.range.clone(), Access::Read)]))?;
        let (found, applied) = self.node.ctx.sm.range_at(&plan.op, MAX_RANGE_RESPONSE_BYTES)?;
        if plan.truncated(&found) {
            return Err(EtcdError::TooLarge(format!(
                "the range holds more than {MAX_RANGE_RESPONSE_BYTES} bytes of keys and values (MAX_RANGE_RESPONSE_BYTES); read it in pages with a limit"
            )));
        }
        if req.revision != 0 {
            self.check_revision(req.revision, applied, &plan.op.range).await?;
        }
        let answer = plan.finish(found);
        Ok(RangeResponse {
            header: Some(self.node.header(applied)),
            kvs: answer.kvs,
            more: answer.more,
            count: answer.count,
        })
    }

    async fn do_put(&self, request: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        let (timeout, how) = write_call(&request)?;
        let (md, _, req) = request.into_parts();
        let op = txn::put_op(&req)?;
        // etcd: write on the key, and read for prev_kv. raftkv also reads the key to keep
        // its value for ignore_value (a compare-and-set of the value it read).
        let user = self.authorize(&md, || {
            let key = KeyRange::Key(op.key.clone());
            let mut ranges = vec![(key.clone(), Access::Write)];
            if req.prev_kv || req.ignore_value {
                ranges.push((key, Access::Read));
            }
            Ok(ranges)
        })?;
        let leases: BTreeMap<_, _> = txn::put_lease(&req).map(|a| (op.key.clone(), a)).into_iter().collect();
        let done = if req.ignore_value {
            self.put_keeping_value(user, op, leases, timeout).await?
        } else if req.ignore_lease {
            self.put_keeping_lease(user, op, leases, timeout).await?
        } else {
            match self.write(user, WriteOp::Put(op), leases, timeout).await? {
                Routed::Done(WriteOutcome { index, result: WriteResult::Put { prev }, .. }) => {
                    Routed::Done((index, prev))
                }
                Routed::Done(other) => return Err(unexpected(&other.result).into()),
                Routed::Leader(leader) => Routed::Leader(leader),
            }
        };
        match done {
            Routed::Done((index, prev)) => {
                Ok(Response::new(PutResponse { header: Some(self.node.header(index)), prev_kv: prev.map(key_value) }))
            }
            Routed::Leader(leader) => {
                to_leader(&self.node.ctx, leader, how, req, |ch, r| async move { leader_client(ch).put(r).await }).await
            }
        }
    }

    async fn do_delete(&self, request: Request<DeleteRangeRequest>) -> Result<Response<DeleteRangeResponse>, Status> {
        let (timeout, how) = write_call(&request)?;
        let (md, _, req) = request.into_parts();
        let op = txn::delete_op(&req)?;
        // etcd: write on the range, and read for prev_kv.
        let user = self.authorize(&md, || {
            let mut ranges = vec![(op.range.clone(), Access::Write)];
            if req.prev_kv {
                ranges.push((op.range.clone(), Access::Read));
            }
            Ok(ranges)
        })?;
        match self.write(user, WriteOp::Delete(op), BTreeMap::new(), timeout).await? {
            Routed::Done(WriteOutcome { index, result: WriteResult::Delete { deleted, prev }, .. }) => {
                Ok(Response::new(DeleteRangeResponse {
                    header: Some(self.node.header(index)),
                    deleted: signed(deleted),
                    prev_kvs: prev.into_iter().map(key_value).collect(),
                }))
            }
            Routed::Done(other) => Err(unexpected(&other.result).into()),
            Routed::Leader(leader) => {
                to_leader(
                    &self.node.ctx,
                    leader,
                    how,
                    req,
                    |ch, r| async move { leader_client(ch).delete_range(r).await },
                )
                .await
            }
        }
    }

    /// Compacts the change history at `revision` on every node, through the log
    /// (`Command::Compact`): watches and reads at a revision before it are refused as
    /// compacted from then on. The current state is untouched (raftkv keeps no old values);
    /// `physical` changes nothing (there is nothing to remove from disk).
    async fn do_compact(&self, request: Request<CompactionRequest>) -> Result<Response<CompactionResponse>, Status> {
        let (timeout, how) = write_call(&request)?;
        let req = request.into_inner();
        let revision = u64::try_from(req.revision).unwrap_or(0);
        let sm = &self.node.ctx.sm;
        if revision > sm.applied_index() {
            // This node may only lag: catch up with the leader's commit before refusing.
            self.node.ctx.read_index(Consistency::Linearizable, timeout).await.map_err(EtcdError::from)?;
            if revision > sm.applied_index() {
                return Err(EtcdError::FutureRevision.into());
            }
        }
        if revision <= sm.compacted_revision() || revision == 0 {
            return Err(EtcdError::Compacted.into());
        }
        match self.node.ctx.write(Command::Compact(revision), timeout).await.map_err(EtcdError::from)? {
            Routed::Done((index, _)) => {
                tracing::info!(revision, index, "etcd compaction applied");
                Ok(Response::new(CompactionResponse { header: Some(self.node.header(index)) }))
            }
            Routed::Leader(leader) => {
                to_leader(&self.node.ctx, leader, how, req, |ch, r| async move { leader_client(ch).compact(r).await })
                    .await
            }
        }
    }

    async fn do_txn(&self, request: Request<TxnRequest>) -> Result<Response<TxnResponse>, Status> {
        let (timeout, how) = write_call(&request)?;
        let (md, _, req) = request.into_parts();
        let checked = txn::txn(&req)?;
        let user = self.authorize(&md, || txn::permissions(&req))?;
        match self.write(user, WriteOp::Txn(checked.txn.clone()), checked.leases.clone(), timeout).await? {
            Routed::Done(WriteOutcome { index, result: WriteResult::Txn { succeeded, results }, .. }) => {
                Ok(Response::new(TxnResponse {
                    header: Some(self.node.header(index)),
                    succeeded,
                    responses: checked.responses(succeeded, results, index),
                }))
            }
            Routed::Done(other) => Err(unexpected(&other.result).into()),
            Routed::Leader(leader) => {
                to_leader(&self.node.ctx, leader, how, req, |ch, r| async move { leader_client(ch).txn(r).await }).await
            }
        }
    }
}

#[tonic::async_trait]
impl Kv for EtcdKv {
    async fn range(&self, request: Request<RangeRequest>) -> Result<Response<RangeResponse>, Status> {
        Ok(Response::new(self.do_range(request).await?))
    }

    async fn put(&self, request: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        self.do_put(request).await
    }

    async fn delete_range(
        &self,
        request: Request<DeleteRangeRequest>,
    ) -> Result<Response<DeleteRangeResponse>, Status> {
        self.do_delete(request).await
    }

    async fn txn(&self, request: Request<TxnRequest>) -> Result<Response<TxnResponse>, Status> {
        self.do_txn(request).await
    }

    async fn compact(&self, request: Request<CompactionRequest>) -> Result<Response<CompactionResponse>, Status> {
        self.do_compact(request).await
    }
}
