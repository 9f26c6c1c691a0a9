//! The `raftkv.v1.KV` service.

use linearizable::Consistency;
use proto::kv::v1::kv_client::KvClient;
use proto::kv::v1::kv_server::{Kv, KvServer};
use proto::kv::v1::{
    DeleteRequest, DeleteResponse, GetRequest, GetResponse, KeyValue, PutRequest, PutResponse, ResponseHeader,
};
use tonic::{Request, Response, Status};
use types::{Command, CommandResult};

use crate::forward::{deadline, forward_failed, forwarded_request, may_forward};
use crate::node::{DEFAULT_REQUEST_TIMEOUT, Routed};
use crate::{MAX_DECODE_BYTES, NodeContext, ServiceError, limits};

/// The KV service of one node.
#[derive(Debug, Clone)]
pub struct KvService {
    ctx: NodeContext,
}

impl KvService {
    /// A KV service over `ctx`.
    #[must_use]
    pub fn new(ctx: NodeContext) -> Self {
        Self { ctx }
    }

    /// The tonic server for this service, with the decode limit applied.
    #[must_use]
    pub fn into_server(self) -> KvServer<Self> {
        KvServer::new(self).max_decoding_message_size(MAX_DECODE_BYTES)
    }

    fn header(&self, index: u64) -> ResponseHeader {
        let h = self.ctx.header_info();
        ResponseHeader { index, node_id: h.node_id, leader_id: h.leader_id, term: h.term }
    }

    /// Connects to the leader; a failure here means nothing was sent.
    async fn leader_client(
        &self,
        id: &types::NodeId,
        addr: &str,
        allowed: bool,
    ) -> Result<KvClient<tonic::transport::Channel>, ServiceError> {
        if !allowed {
            return Err(ServiceError::NotLeader { id: id.clone(), addr: Some(addr.to_string()) });
        }
        let ch = self.ctx.forwarder.channel(addr).await.map_err(|e| forward_failed(id, addr, false, true, &e))?;
        Ok(KvClient::new(ch).max_decoding_message_size(MAX_DECODE_BYTES))
    }

    /// Returns the leader's answer, or maps a transport failure.
    fn leader_answer<T>(
        &self,
        id: &types::NodeId,
        addr: &str,
        write: bool,
        r: Result<Response<T>, Status>,
    ) -> Result<Response<T>, Status> {
        match r {
            Ok(resp) => Ok(resp),
            // An answer from the leader's service (it carries our retryable header) passes
            // through unchanged; a status without it came from the transport.
            Err(s)
                if s.metadata().get(crate::error::RETRYABLE_HEADER).is_some()
                    || matches!(s.code(), tonic::Code::InvalidArgument | tonic::Code::OutOfRange) =>
            {
                Err(s)
            }
            Err(s) if matches!(s.code(), tonic::Code::DeadlineExceeded | tonic::Code::Cancelled) => {
                let outcome = if write { "; the write's outcome is unknown" } else { "" };
                Err(ServiceError::DeadlineExceeded(format!("the leader {id} did not answer in time{outcome}")).into())
            }
            Err(s) => {
                self.ctx.forwarder.forget(addr);
                Err(forward_failed(id, addr, true, write, &s).into())
            }
        }
    }
}

#[tonic::async_trait]
impl Kv for KvService {
    async fn put(&self, request: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        let timeout = deadline(request.metadata(), DEFAULT_REQUEST_TIMEOUT);
        let forward = may_forward(request.metadata());
        let req = request.into_inner();
        limits::check_key(&req.key)?;
        limits::check_value(&req.value)?;
        let cmd = Command::Put { key: req.key.to_vec(), value: req.value.to_vec() };
        match self.ctx.write(cmd, timeout).await? {
            Routed::Done((index, _)) => Ok(Response::new(PutResponse { header: Some(self.header(index)) })),
            Routed::Leader { id, addr } => {
                let mut client = self.leader_client(&id, &addr, forward).await?;
                let r = client.put(forwarded_request(req, timeout)).await;
                self.leader_answer(&id, &addr, true, r)
            }
        }
    }

    async fn get(&self, request: Request<GetRequest>) -> Result<Response<GetResponse>, Status> {
        let timeout = deadline(request.metadata(), DEFAULT_REQUEST_TIMEOUT);
        let forward = may_forward(request.metadata());
        let req = request.into_inner();
        limits::check_key(&req.key)?;
        match self.ctx.read_barrier(Consistency::Linearizable, timeout).await? {
            Routed::Done(_) => {
                let index = self.ctx.sm.applied_index();
                let kv = self.ctx.sm.get(&req.key).map_err(|e| ServiceError::Internal(e.to_string()))?;
                Ok(Response::new(GetResponse {
                    header: Some(self.header(index)),
                    found: kv.is_some(),
                    kv: kv.map(|kv| KeyValue {
                        key: kv.key.into(),
                        value: kv.value.into(),
                        create_index: kv.create_index,
                        modify_index: kv.modify_index,
                        version: kv.version,
                    }),
                }))
            }
            Routed::Leader { id, addr } => {
                let mut client = self.leader_client(&id, &addr, forward).await?;
                let r = client.get(forwarded_request(req, timeout)).await;
                self.leader_answer(&id, &addr, false, r)
            }
        }
    }

    async fn delete(&self, request: Request<DeleteRequest>) -> Result<Response<DeleteResponse>, Status> {
        let timeout = deadline(request.metadata(), DEFAULT_REQUEST_TIMEOUT);
        let forward = may_forward(request.metadata());
        let req = request.into_inner();
        limits::check_key(&req.key)?;
        match self.ctx.write(Command::Delete { key: req.key.to_vec() }, timeout).await? {
            Routed::Done((index, result)) => {
                let deleted = match result {
                    CommandResult::Delete { deleted } => deleted,
                    _ => 0,
                };
                Ok(Response::new(DeleteResponse { header: Some(self.header(index)), deleted }))
            }
            Routed::Leader { id, addr } => {
                let mut client = self.leader_client(&id, &addr, forward).await?;
                let r = client.delete(forwarded_request(req, timeout)).await;
                self.leader_answer(&id, &addr, true, r)
            }
        }
    }
}
