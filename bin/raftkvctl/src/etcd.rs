//! A minimal client of etcd's v3 KV service, for `raftkvctl bench --target etcd`: the same
//! load generator drives etcd and raftkv, so the two can be compared in one run.
//!
//! Only what a put and a one-key range need is here. The messages are written by hand with
//! prost's derive, numbered as etcd's `etcdserverpb` API numbers its fields (the wire format
//! is the interface: etcd 3.4 and later answer them), and the calls go to the method paths
//! `/etcdserverpb.KV/Put` and `/etcdserverpb.KV/Range`. When raftkv serves the etcd API
//! itself (roadmap), these definitions move into `proto/` and this module goes away.

use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::Channel;

/// etcd's `ResponseHeader`.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct ResponseHeader {
    #[prost(uint64, tag = "1")]
    pub(crate) cluster_id: u64,
    #[prost(uint64, tag = "2")]
    pub(crate) member_id: u64,
    /// The store's revision when the request was applied.
    #[prost(int64, tag = "3")]
    pub(crate) revision: i64,
    #[prost(uint64, tag = "4")]
    pub(crate) raft_term: u64,
}

/// etcd's `PutRequest` (without lease, prev_kv, ignore_value, ignore_lease).
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct PutRequest {
    #[prost(bytes = "vec", tag = "1")]
    pub(crate) key: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    pub(crate) value: Vec<u8>,
}

/// etcd's `PutResponse` (without prev_kv).
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct PutResponse {
    #[prost(message, optional, tag = "1")]
    pub(crate) header: Option<ResponseHeader>,
}

/// etcd's `RangeRequest` (one key or `[key, range_end)`; no revision, sorting or filters).
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct RangeRequest {
    #[prost(bytes = "vec", tag = "1")]
    pub(crate) key: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    pub(crate) range_end: Vec<u8>,
    #[prost(int64, tag = "3")]
    pub(crate) limit: i64,
    /// A member-local read (raftkv's `STALE`); linearizable when false.
    #[prost(bool, tag = "7")]
    pub(crate) serializable: bool,
}

/// etcd's `mvccpb.KeyValue`.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct KeyValue {
    #[prost(bytes = "vec", tag = "1")]
    pub(crate) key: Vec<u8>,
    #[prost(int64, tag = "2")]
    pub(crate) create_revision: i64,
    #[prost(int64, tag = "3")]
    pub(crate) mod_revision: i64,
    #[prost(int64, tag = "4")]
    pub(crate) version: i64,
    #[prost(bytes = "vec", tag = "5")]
    pub(crate) value: Vec<u8>,
    #[prost(int64, tag = "6")]
    pub(crate) lease: i64,
}

/// etcd's `RangeResponse`.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct RangeResponse {
    #[prost(message, optional, tag = "1")]
    pub(crate) header: Option<ResponseHeader>,
    #[prost(message, repeated, tag = "2")]
    pub(crate) kvs: Vec<KeyValue>,
    #[prost(bool, tag = "3")]
    pub(crate) more: bool,
    #[prost(int64, tag = "4")]
    pub(crate) count: i64,
}

const PUT_PATH: &str = "/etcdserverpb.KV/Put";
const RANGE_PATH: &str = "/etcdserverpb.KV/Range";

/// One connection to one etcd member.
#[derive(Clone, Debug)]
pub(crate) struct EtcdKv {
    grpc: tonic::client::Grpc<Channel>,
}

impl EtcdKv {
    /// Connects to `endpoint` (`host:port`, plaintext, as etcd's `--listen-client-urls
    /// http://...`).
    pub(crate) async fn connect(endpoint: &str) -> Result<Self, rpc::channel::ChannelError> {
        let channel = rpc::channel::connect(
            endpoint,
            &rpc::channel::ChannelOptions::default(),
            rpc::channel::Security::Plaintext,
        )
        .await?;
        Ok(Self { grpc: tonic::client::Grpc::new(channel) })
    }

    async fn unary<Req, Resp>(&mut self, path: &'static str, req: Req) -> Result<Resp, tonic::Status>
    where
        Req: prost::Message + Send + Sync + 'static,
        Resp: prost::Message + Default + Send + Sync + 'static,
    {
        self.grpc.ready().await.map_err(|e| tonic::Status::unavailable(format!("etcd connection: {e}")))?;
        let codec = tonic_prost::ProstCodec::<Req, Resp>::default();
        let resp = self.grpc.unary(tonic::Request::new(req), PathAndQuery::from_static(path), codec).await?;
        Ok(resp.into_inner())
    }

    /// Puts `value` at `key`; acknowledged once committed, as etcd does.
    pub(crate) async fn put(&mut self, key: Vec<u8>, value: Vec<u8>) -> Result<PutResponse, tonic::Status> {
        self.unary(PUT_PATH, PutRequest { key, value }).await
    }

    /// Reads one key, linearizable unless `serializable`.
    pub(crate) async fn get(&mut self, key: Vec<u8>, serializable: bool) -> Result<RangeResponse, tonic::Status> {
        self.unary(RANGE_PATH, RangeRequest { key, range_end: Vec::new(), limit: 0, serializable }).await
    }
}

#[cfg(test)]
mod tests {
    use prost::Message as _;

    use super::*;

    /// The bytes etcd's own encoding gives (field numbers of `etcdserverpb`): a put of
    /// k=v is fields 1 and 2; a serializable range sets field 7.
    #[test]
    fn messages_encode_with_etcds_field_numbers() {
        let put = PutRequest { key: b"k".to_vec(), value: b"v".to_vec() };
        assert_eq!(put.encode_to_vec(), [0x0a, 1, b'k', 0x12, 1, b'v']);
        let range = RangeRequest { key: b"k".to_vec(), range_end: Vec::new(), limit: 0, serializable: true };
        assert_eq!(range.encode_to_vec(), [0x0a, 1, b'k', 0x38, 1]);
        // A response header's revision is field 3 of the header, field 1 of the response.
        let resp = PutResponse::decode(&[0x0a, 0x02, 0x18, 0x07][..]).map(|r| r.header.map(|h| h.revision));
        assert_eq!(resp.ok().flatten(), Some(7));
    }
}
