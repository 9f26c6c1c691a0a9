//! The `raftkv.v1.KV` service.

use std::time::Duration;

use linearizable::Consistency;
use openraft::async_runtime::WatchReceiver;
use prost::Message;
use proto::kv::v1::kv_client::KvClient;
use proto::kv::v1::kv_server::{Kv, KvServer};
use proto::kv::v1::{
    self as pb, DeleteRequest, DeleteResponse, GetRequest, GetResponse, PutRequest, PutResponse, RangeRequest,
    RangeResponse, ResponseHeader, TxnRequest, TxnResponse, WatchRequest, WatchResponse,
};
use tokio::time::Instant;
use tonic::metadata::MetadataMap;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};
use types::auth::{Access, write_ranges};
use types::{
    CheckedWrite, Command, CommandResult, Expect, KeyRange, RangeOp, WriteCommand, WriteOp, WriteOutcome, WriteResult,
};

use crate::auth::{self, Caller};
use crate::convert;
use crate::forward::{Effect, Forwarding, Routed, deadline, write_to_leader};
use crate::node::DEFAULT_REQUEST_TIMEOUT;
use crate::slow::{DEFAULT_SLOW_REQUEST_THRESHOLD, SlowLog};
use crate::watch::{self, ResponseStream, WatchParams};
use crate::{MAX_DECODE_BYTES, NodeContext, ServiceError, limits};

/// The KV service of one node.
#[derive(Debug, Clone)]
pub struct KvService {
    ctx: NodeContext,
    slow: SlowLog,
}

/// What a write request brings besides its operation.
struct WriteCall {
    timeout: Duration,
    /// How it goes to the leader, when it must.
    route: Forwarding,
}

impl KvService {
    /// A KV service over `ctx`.
    #[must_use]
    pub fn new(ctx: NodeContext) -> Self {
        let slow = SlowLog::new(ctx.id.to_string(), DEFAULT_SLOW_REQUEST_THRESHOLD);
        Self { ctx, slow }
    }

    /// The service with requests slower than `threshold` logged ([`crate::slow`]).
    #[must_use]
    pub fn with_slow_request_threshold(mut self, threshold: Duration) -> Self {
        self.slow = SlowLog::new(self.ctx.id.to_string(), threshold);
        self
    }

    /// The tonic server for this service, with the decode limit applied.
    #[must_use]
    pub fn into_server(self) -> KvServer<Self> {
        KvServer::new(self).max_decoding_message_size(MAX_DECODE_BYTES)
    }

    fn header(&self, index: u64) -> ResponseHeader {
        let h = self.ctx.header_info();
        ResponseHeader { index, node_id: h.node_id, leader_id: h.leader_id, term: h.term, ..Default::default() }
    }

    /// The header of a read served at `level`: for STALE, how far behind it may be.
    fn read_header(&self, level: Consistency) -> ResponseHeader {
        let mut header = self.header(self.ctx.sm.applied_index());
        if level == Consistency::Stale {
            let m = self.ctx.raft.metrics().borrow_watched().clone();
            header.stale = true;
            header.known_committed_index = types::index_of(m.local_committed.as_ref());
            header.millis_since_leader_contact = if m.state == openraft::ServerState::Leader {
                0
            } else {
                self.ctx.leader_contact.millis_since().unwrap_or(u64::MAX)
            };
        }
        header
    }

    /// Reads the common parts of a write request's metadata and checks its size.
    fn write_call<T: Message>(request: &Request<T>) -> Result<WriteCall, ServiceError> {
        limits::check_request_size(request.get_ref().encoded_len())?;
        let timeout = deadline(request.metadata(), DEFAULT_REQUEST_TIMEOUT);
        let until = Instant::now() + timeout;
        Ok(WriteCall { timeout, route: Forwarding::of(request.metadata(), Effect::Write, until) })
    }

    /// The caller of `request` may access `ranges` (built only when authentication is on),
    /// or the call is refused ([`auth::authorize`]).
    fn authorize<T>(
        &self,
        request: &Request<T>,
        ranges: impl FnOnce() -> Vec<(KeyRange, Access)>,
    ) -> Result<Caller, ServiceError> {
        self.authorize_md(request.metadata(), ranges)
    }

    fn authorize_md(
        &self,
        md: &MetadataMap,
        ranges: impl FnOnce() -> Vec<(KeyRange, Access)>,
    ) -> Result<Caller, ServiceError> {
        if !self.ctx.sm.auth_state().enabled {
            return Ok(Caller::Anyone);
        }
        auth::authorize(&self.ctx.sm, md, &ranges())
    }

    /// Proposes a write here, with the user `caller` whose permission was checked (the
    /// state machine checks it again when it applies the write); [`Routed::Leader`] when it
    /// must go to the leader. A write refused at apply answers `PERMISSION_DENIED`.
    async fn propose(
        &self,
        call: &WriteCall,
        caller: Caller,
        cmd: WriteCommand,
    ) -> Result<Routed<WriteOutcome>, ServiceError> {
        let user = match caller {
            Caller::Anyone => None,
            Caller::User(user) => Some(user),
        };
        let cmd = Command::CheckedWrite(CheckedWrite { user, write: cmd });
        Ok(match self.ctx.write(cmd, call.timeout).await? {
            Routed::Done((_, CommandResult::Write(outcome))) => match outcome.result {
                WriteResult::PermissionDenied { user, range, access } => {
                    return Err(auth::denied_at_apply(outcome.index, user.as_deref(), &range, access));
                }
                _ => Routed::Done(outcome),
            },
            Routed::Done((index, other)) => {
                return Err(ServiceError::Internal(format!("the write at index {index} answered {other:?}").into()));
            }
            Routed::Leader(leader) => Routed::Leader(leader),
        })
    }
}

/// A KV client on a channel to the leader, with the decode limit both ways.
fn leader_client(channel: Channel) -> KvClient<Channel> {
    KvClient::new(channel).max_decoding_message_size(MAX_DECODE_BYTES).max_encoding_message_size(MAX_DECODE_BYTES)
}

/// A failed precondition, as the client sees it.
fn precondition_failed(key: &[u8], expected: Expect, current: u64) -> ServiceError {
    let key = String::from_utf8_lossy(key);
    let message = match (expected, current) {
        (Expect::Absent, cur) => format!("compare failed: key {key:?} exists (modify_index {cur}); expected it absent"),
        (Expect::ModifyIndex(e), 0) => format!("compare failed: key {key:?} does not exist; expected modify_index {e}"),
        (Expect::ModifyIndex(e), cur) => {
            format!("compare failed: key {key:?} has modify_index {cur}; expected {e}")
        }
    };
    ServiceError::PreconditionFailed { message, current_index: current }
}

fn consistency(value: i32) -> Result<Consistency, ServiceError> {
    match pb::Consistency::try_from(value) {
        Ok(pb::Consistency::Unspecified | pb::Consistency::Linearizable) => Ok(Consistency::Linearizable),
        Ok(pb::Consistency::Lease) => Ok(Consistency::Lease),
        Ok(pb::Consistency::Stale) => Ok(Consistency::Stale),
        Err(_) => Err(ServiceError::InvalidArgument(format!(
            "consistency {value} is not LINEARIZABLE (1), LEASE (2) or STALE (3)"
        ))),
    }
}

/// The key a transaction is logged by: its first compare's, else its first operation's.
fn txn_key(req: &TxnRequest) -> &[u8] {
    if let Some(c) = req.compare.first() {
        return &c.key;
    }
    req.success.iter().chain(&req.failure).find_map(op_key).map_or(&[], |k| k)
}

/// The key of one transaction operation.
fn op_key(op: &pb::RequestOp) -> Option<&[u8]> {
    match &op.request {
        Some(pb::request_op::Request::Put(p)) => Some(&p.key),
        Some(pb::request_op::Request::Delete(d)) => Some(&d.key),
        Some(pb::request_op::Request::Range(r)) => Some(&r.key),
        None => None,
    }
}

fn unexpected(result: &WriteResult) -> Status {
    ServiceError::Internal(format!("unexpected write result {result:?}").into()).into()
}

#[tonic::async_trait]
impl Kv for KvService {
    async fn put(&self, request: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        let _slow = self.slow.start("KV/Put", request.metadata(), &request.get_ref().key);
        let call = Self::write_call(&request)?;
        let op = convert::put_op(request.get_ref())?;
        let caller = self.authorize(&request, || vec![(KeyRange::Key(op.key.clone()), Access::Write)])?;
        let req = request.into_inner();
        let cmd = WriteCommand { request_id: limits::check_request_id(&req.request_id)?, op: WriteOp::Put(op) };
        match self.propose(&call, caller, cmd).await? {
            Routed::Done(outcome) => match outcome.result {
                WriteResult::Put { prev } => Ok(Response::new(PutResponse {
                    header: Some(self.header(outcome.index)),
                    prev_kv: prev.map(convert::kv),
                })),
                WriteResult::PreconditionFailed { key, expected, current_modify_index } => {
                    Err(precondition_failed(&key, expected, current_modify_index).into())
                }
                other => Err(unexpected(&other)),
            },
            Routed::Leader(leader) => {
                write_to_leader(
                    &self.ctx,
                    leader,
                    call.route,
                    req,
                    |ch, r| async move { leader_client(ch).put(r).await },
                )
                .await
            }
        }
    }

    async fn get(&self, request: Request<GetRequest>) -> Result<Response<GetResponse>, Status> {
        let _slow = self.slow.start("KV/Get", request.metadata(), &request.get_ref().key);
        let started = tokio::time::Instant::now();
        let timeout = deadline(request.metadata(), DEFAULT_REQUEST_TIMEOUT);
        // A blocking read may outlast the default request timeout, but never the caller's
        // deadline: it answers with the current value a little before it.
        let caller = deadline(request.metadata(), limits::MAX_BLOCKING_WAIT * 2);
        let (md, extensions, req) = request.into_parts();
        limits::check_key(&req.key)?;
        let level = consistency(req.consistency)?;
        let wait = limits::check_blocking_wait(req.wait_ms)?.min(caller.mul_f32(0.9));
        self.ctx.read_index(level, timeout).await?;
        // After the barrier: the node has applied every auth change committed before the
        // read arrived, so a revoked permission is refused on every node alike.
        self.authorize_md(&md, || vec![(KeyRange::Key(req.key.to_vec()), Access::Read)])?;
        let mut header = self.read_header(level);
        if req.min_index > 0 {
            // A blocking read waits without working: it gives its place under the overload
            // limits back (watchers are bounded by MAX_WATCHERS instead).
            crate::overload::release(&extensions);
            let wait = wait.saturating_sub(started.elapsed());
            let read = watch::blocking_get(&self.ctx.sm, &req.key, req.min_index, wait).await?;
            header.index = read.index;
            return Ok(Response::new(GetResponse {
                header: Some(header),
                found: read.kv.is_some(),
                kv: read.kv.map(convert::kv),
                abandoned: read.abandoned,
            }));
        }
        let kv = self.ctx.sm.get(&req.key).map_err(ServiceError::from)?;
        Ok(Response::new(GetResponse {
            header: Some(header),
            found: kv.is_some(),
            kv: kv.map(convert::kv),
            abandoned: false,
        }))
    }

    type WatchStream = ResponseStream<WatchResponse>;

    async fn watch(&self, request: Request<WatchRequest>) -> Result<Response<Self::WatchStream>, Status> {
        let range = {
            let req = request.get_ref();
            if req.prefix {
                convert::key_range(&req.key, &[], true)?
            } else {
                limits::check_key(&req.key)?;
                KeyRange::Key(req.key.to_vec())
            }
        };
        let caller = self.authorize(&request, || vec![(range.clone(), Access::Read)])?;
        let req = request.into_inner();
        let permit = auth::WatchPermit::new(&self.ctx.sm, caller, &range);
        let params = WatchParams {
            range,
            start_index: req.start_index,
            keys_only: req.keys_only,
            progress: limits::check_progress_interval(req.progress_interval_ms)?,
            timeout: limits::check_watch_timeout(req.timeout_seconds)?,
            node_id: self.ctx.id.to_string(),
            permit,
        };
        Ok(Response::new(watch::native_stream(self.ctx.sm.clone(), params)?))
    }

    async fn delete(&self, request: Request<DeleteRequest>) -> Result<Response<DeleteResponse>, Status> {
        let _slow = self.slow.start("KV/Delete", request.metadata(), &request.get_ref().key);
        let call = Self::write_call(&request)?;
        let op = convert::delete_op(request.get_ref())?;
        let caller = self.authorize(&request, || vec![(op.range.clone(), Access::Write)])?;
        let req = request.into_inner();
        let cmd = WriteCommand { request_id: limits::check_request_id(&req.request_id)?, op: WriteOp::Delete(op) };
        match self.propose(&call, caller, cmd).await? {
            Routed::Done(outcome) => match outcome.result {
                WriteResult::Delete { deleted, prev } => Ok(Response::new(DeleteResponse {
                    header: Some(self.header(outcome.index)),
                    deleted,
                    prev_kvs: prev.into_iter().map(convert::kv).collect(),
                })),
                WriteResult::PreconditionFailed { key, expected, current_modify_index } => {
                    Err(precondition_failed(&key, expected, current_modify_index).into())
                }
                other => Err(unexpected(&other)),
            },
            Routed::Leader(leader) => {
                write_to_leader(
                    &self.ctx,
                    leader,
                    call.route,
                    req,
                    |ch, r| async move { leader_client(ch).delete(r).await },
                )
                .await
            }
        }
    }

    async fn range(&self, request: Request<RangeRequest>) -> Result<Response<RangeResponse>, Status> {
        let _slow = self.slow.start("KV/Range", request.metadata(), &request.get_ref().key);
        let timeout = deadline(request.metadata(), DEFAULT_REQUEST_TIMEOUT);
        let (md, _, req) = request.into_parts();
        let op: RangeOp = convert::range_op(&req)?;
        let level = consistency(req.consistency)?;
        self.ctx.read_index(level, timeout).await?;
        self.authorize_md(&md, || vec![(op.range.clone(), Access::Read)])?;
        let header = self.read_header(level);
        let range: KeyRange = op.range.clone();
        let found = self.ctx.sm.range(&op, limits::MAX_RANGE_PAGE_BYTES).map_err(ServiceError::from)?;
        Ok(Response::new(convert::range_response(found, &range, Some(header))))
    }

    async fn txn(&self, request: Request<TxnRequest>) -> Result<Response<TxnResponse>, Status> {
        let _slow = self.slow.start("KV/Txn", request.metadata(), txn_key(request.get_ref()));
        let call = Self::write_call(&request)?;
        let txn = convert::txn(request.get_ref())?;
        let op = WriteOp::Txn(txn.clone());
        let caller = self.authorize(&request, || write_ranges(&op))?;
        let req = request.into_inner();
        let cmd = WriteCommand { request_id: limits::check_request_id(&req.request_id)?, op };
        match self.propose(&call, caller, cmd).await? {
            Routed::Done(outcome) => match outcome.result {
                WriteResult::Txn { succeeded, results } => {
                    let branch = if succeeded { &txn.success } else { &txn.failure };
                    let responses = branch.iter().zip(results).map(|(op, r)| convert::txn_op_response(op, r)).collect();
                    Ok(Response::new(TxnResponse { header: Some(self.header(outcome.index)), succeeded, responses }))
                }
                other => Err(unexpected(&other)),
            },
            Routed::Leader(leader) => {
                write_to_leader(
                    &self.ctx,
                    leader,
                    call.route,
                    req,
                    |ch, r| async move { leader_client(ch).txn(r).await },
                )
                .await
            }
        }
    }
}
