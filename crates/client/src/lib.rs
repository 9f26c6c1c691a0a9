//! The Rust client of raftkv, used by `raftkvctl` and the cluster tests.
//!
//! # Brief overview
//! [`Client`] holds a list of endpoints (any nodes of one cluster). Every call:
//! - connects eagerly, with a timeout, and moves to the next endpoint when a connection
//!   cannot be made: nothing was sent, so that is always safe;
//! - sets a deadline on the request;
//! - retries a failed request only when the server marked it safe (`x-raftkv-retryable:
//!   true`: certainly not applied), or when it is a read; it follows the leader hint in
//!   the error when there is one. A write whose outcome is unknown is never retried.
//!
//! Servers forward writes to the leader themselves, so a client may talk to any node.
//!
//! TLS: [`ClientOptions::tls`] names the CA the nodes' certificates must chain to and,
//! for nodes with `--client-cert-auth`, the client's certificate and key
//! ([`ClientTlsFiles`]); each node's certificate is verified for the host of its endpoint.
//!
//! Authentication: [`ClientOptions::token`], or [`Client::authenticate`] with a user name
//! and password, puts a token in the `authorization` metadata of every later call; the
//! calls that manage users and roles are in [`auth`]. A client that knows the password
//! ([`Client::authenticate`], or [`ClientOptions::credentials`]) authenticates again, once
//! per call, when a call is refused `UNAUTHENTICATED` with a token (it expired after the
//! server's `--auth-token-ttl`, or authentication was re-enabled) or, given only
//! [`ClientOptions::credentials`], without one yet, then repeats the call:
//! such a refusal comes before anything is done, so repeating it is safe for every call.
//!
//! Admin calls (membership, leadership, snapshots, backups) are in [`admin`]. Watches, which
//! resume on another endpoint after a disconnect with no gap and no repeat, are in [`watch`].
//!
//! This crate must never depend on the server side (openraft, redb, the engine).

pub mod admin;
pub mod auth;
mod retry;
pub mod watch;

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, RwLock};
use std::time::Duration;

use proto::admin::v1::admin_client::AdminClient;
use proto::admin::v1::{AddVoterRequest, AddVoterResponse, StatusRequest, StatusResponse};
use proto::kv::v1::kv_client::KvClient;
use proto::kv::v1::{
    DeleteRequest, DeleteResponse, GetRequest, GetResponse, PutRequest, PutResponse, RangeRequest, RangeResponse,
    TxnRequest, TxnResponse,
};
use retry::{Attempts, Kind, Step};
use rpc::channel::{ChannelOptions, Pool};
use rpc::metadata::{NO_FORWARD_HEADER, RETRYABLE_HEADER};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::Channel;

pub use proto::admin::v1::{Member, MembershipChangeResponse, RaftState, Suffrage};
pub use proto::kv::v1 as kv;
pub use proto::kv::v1::{Consistency, KeyValue};
pub use watch::{WatchOptions, WatchStream};

pub use rpc::never_sent;
pub use rpc::tls::ClientTlsFiles;

/// The largest message the client decodes (the server's decode limit).
const MAX_MESSAGE_BYTES: usize = rpc::limits::MAX_DECODE_BYTES;

/// What a client call can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// No endpoint was given.
    #[error("no endpoints given")]
    NoEndpoints,
    /// An endpoint is not a valid `HOST:PORT`.
    #[error("invalid endpoint {0:?}: expected HOST:PORT")]
    InvalidEndpoint(String),
    /// No endpoint could be reached.
    #[error("no endpoint reachable ({endpoints}): {last}")]
    Unreachable {
        /// The endpoints tried.
        endpoints: String,
        /// The last connection error.
        last: String,
    },
    /// The server answered with an error.
    #[error("{}: {}", .0.code(), status_text(.0))]
    Status(tonic::Status),
    /// A backup stream was malformed, short, or failed its checksum; nothing was saved.
    #[error("backup refused: {0}")]
    Backup(String),
    /// The TLS files cannot be used (the message names the file).
    #[error("TLS: {0}")]
    Tls(#[from] rpc::tls::TlsError),
    /// The token given cannot be sent (the message never repeats it).
    #[error("invalid token: {0}")]
    InvalidToken(String),
    /// A token was already set on this client.
    #[error("this client already has a token; it authenticates again by itself when it expires")]
    AlreadyAuthenticated,
    /// A local file operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The OS error.
        source: std::io::Error,
    },
}

/// A status's message, followed by the errors of its source chain that the message does
/// not already say (a transport failure's status says only "transport error"; why, such as
/// a TLS alert, is in its sources).
fn status_text(status: &tonic::Status) -> String {
    let mut text = status.message().to_string();
    if let Some(source) = std::error::Error::source(status) {
        let chain = rpc::status::error_chain(source);
        if !text.contains(&chain) {
            text = if text.is_empty() { chain } else { format!("{text}: {chain}") };
        }
    }
    text
}

impl ClientError {
    /// The gRPC status, when the server answered.
    #[must_use]
    pub fn status(&self) -> Option<&tonic::Status> {
        match self {
            ClientError::Status(s) => Some(s),
            _ => None,
        }
    }

    /// The error as a person reads it: for a server's answer, its message alone (with the
    /// causes a transport failure carries), without the gRPC code's description that
    /// [`Display`](std::fmt::Display) puts first; every other error as displayed.
    #[must_use]
    pub fn message(&self) -> String {
        match self {
            ClientError::Status(s) => status_text(s),
            other => other.to_string(),
        }
    }
}

/// Settings of a [`Client`].
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// How long connecting to one endpoint may take.
    pub connect_timeout: Duration,
    /// The deadline of each request.
    pub request_timeout: Duration,
    /// How many times a retryable failure is retried.
    pub max_retries: u32,
    /// Give every write without a request id one, so it can be retried safely after a
    /// failure whose outcome is unknown.
    pub auto_request_ids: bool,
    /// Ask nodes not to forward to the leader: a follower then answers with the leader's
    /// address, and the client goes there itself.
    pub no_forward: bool,
    /// TLS: the CA the nodes' certificates must chain to and, for a port with
    /// `--client-cert-auth`, the client's certificate and key. `None`: plaintext. Each
    /// node's certificate is verified for the host of its endpoint (an IP address or a
    /// name).
    pub tls: Option<rpc::tls::ClientTlsFiles>,
    /// A bearer token (from `Auth.Authenticate`) sent with every call, when the cluster has
    /// authentication on; [`Client::authenticate`] sets one from a user name and password.
    pub token: Option<String>,
    /// A user name and password to authenticate again with when the token expires (or to
    /// get the first token with, on the first call that needs one, when
    /// [`ClientOptions::token`] is none).
    pub credentials: Option<Credentials>,
}

/// A user name and password. Its `Debug` never shows the password.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The user name.
    pub name: String,
    /// The password.
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials").field("name", &self.name).field("password", &"<redacted>").finish()
    }
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(2),
            request_timeout: Duration::from_secs(10),
            max_retries: 8,
            auto_request_ids: true,
            no_forward: false,
            tls: None,
            token: None,
            credentials: None,
        }
    }
}

/// A raftkv client over a list of endpoints.
#[derive(Debug)]
pub struct Client {
    endpoints: Mutex<Vec<String>>,
    channels: Pool,
    preferred: AtomicUsize,
    options: ClientOptions,
    /// Prefix of the request ids this client assigns.
    client_id: String,
    next_request: AtomicU64,
    /// The `authorization` value of every call, once known; replaced when it is refreshed.
    token: RwLock<Option<MetadataValue<Ascii>>>,
    /// What the token is refreshed with, once known.
    credentials: Mutex<Option<Credentials>>,
    /// Held while the token is refreshed, so calls refused together authenticate once.
    refreshing: tokio::sync::Mutex<()>,
}

/// What every request of one client carries besides its message: the no-forward flag and
/// the token. Cheap to copy into each attempt.
#[derive(Clone, Copy)]
pub(crate) struct CallMeta<'a> {
    no_forward: bool,
    /// The client's token, read when each attempt is sent (so a refreshed one is used).
    token: &'a RwLock<Option<MetadataValue<Ascii>>>,
}

impl CallMeta<'_> {
    /// The same, for a call that must be answered by the node asked (never forwarded).
    fn here(self) -> Self {
        Self { no_forward: false, ..self }
    }
}

/// The `authorization` value for `token`; the error never repeats the token.
fn bearer(token: &str) -> Result<MetadataValue<Ascii>, ClientError> {
    format!("Bearer {token}")
        .parse()
        .map_err(|_| ClientError::InvalidToken("it holds characters a gRPC header cannot carry".into()))
}

impl Client {
    /// A client over `endpoints` (`HOST:PORT` each). Nothing is connected yet.
    pub fn new(
        endpoints: impl IntoIterator<Item = impl Into<String>>,
        options: ClientOptions,
    ) -> Result<Self, ClientError> {
        let endpoints: Vec<String> =
            endpoints.into_iter().map(Into::into).filter(|e: &String| !e.trim().is_empty()).collect();
        if endpoints.is_empty() {
            return Err(ClientError::NoEndpoints);
        }
        for e in &endpoints {
            let ok = e.rsplit_once(':').is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok());
            if !ok {
                return Err(ClientError::InvalidEndpoint(e.clone()));
            }
        }
        let tls = options.tls.clone().map(rpc::tls::ClientTls::new).transpose()?.map(std::sync::Arc::new);
        let channel_options = ChannelOptions { connect_timeout: Some(options.connect_timeout), keepalive: None };
        let token = RwLock::new(options.token.as_deref().map(bearer).transpose()?);
        let credentials = Mutex::new(options.credentials.clone());
        Ok(Self {
            endpoints: Mutex::new(endpoints),
            channels: Pool::with_tls(channel_options, tls),
            preferred: AtomicUsize::new(0),
            options,
            client_id: client_id(),
            next_request: AtomicU64::new(1),
            token,
            credentials,
            refreshing: tokio::sync::Mutex::new(()),
        })
    }

    fn endpoints(&self) -> Vec<String> {
        self.endpoints.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    async fn connect(&self, addr: &str) -> Result<Channel, rpc::channel::ChannelError> {
        self.channels.connect(addr, None).await
    }

    fn forget(&self, addr: &str) {
        self.channels.forget(addr);
    }

    /// Runs `call` against the endpoints until it succeeds or a failure must be returned:
    /// the loop around [`retry::decide`], walking the endpoints with [`retry::Attempts`].
    async fn run<T, F, Fut>(&self, kind: Kind, timeout: Duration, call: F) -> Result<T, ClientError>
    where
        F: Fn(Channel, Duration) -> Fut,
        Fut: std::future::Future<Output = Result<T, tonic::Status>>,
    {
        self.run_with(kind, timeout, true, call).await
    }

    /// [`Client::run`]; with `refresh`, a call refused `UNAUTHENTICATED` with a token is
    /// repeated once after authenticating again, when the client knows the password.
    async fn run_with<T, F, Fut>(&self, kind: Kind, timeout: Duration, refresh: bool, call: F) -> Result<T, ClientError>
    where
        F: Fn(Channel, Duration) -> Fut,
        Fut: std::future::Future<Output = Result<T, tonic::Status>>,
    {
        let mut at = Attempts::new(self.endpoints(), self.preferred.load(Ordering::Relaxed));
        let mut refreshed = !refresh;
        loop {
            if at.round_done() {
                if at.retries >= self.options.max_retries
                    || at.last_connect_error.is_empty()
                    || at.all_certificates_refused()
                {
                    let last = std::mem::take(&mut at.last_connect_error);
                    return Err(ClientError::Unreachable { endpoints: at.endpoints.join(","), last });
                }
                // Every endpoint refused the connection: wait a little and go round again.
                at.retries += 1;
                tokio::time::sleep(at.backoff()).await;
                at.restart_round();
            }
            let (idx, addr) = at.current();
            let channel = match self.connect(&addr).await {
                Ok(ch) => ch,
                Err(e) => {
                    tracing::debug!(endpoint = %addr, error = %e, "cannot connect");
                    if rpc::status::certificate_refused(&e.to_string()) {
                        at.certificate_refused(format!("{addr}: {e}"));
                    } else {
                        at.unreachable(format!("{addr}: {e}"));
                    }
                    continue;
                }
            };
            let sent = self.current_token();
            let status = match call(channel, timeout).await {
                Ok(v) => {
                    self.preferred.store(idx, Ordering::Relaxed);
                    return Ok(v);
                }
                Err(status) => status,
            };
            // Refused before anything was done: authenticate again and repeat, once. With
            // credentials but no token yet, this is where the first token is fetched.
            if status.code() == tonic::Code::Unauthenticated
                && !refreshed
                && (sent.is_some() || self.credentials().is_some())
            {
                refreshed = true;
                if self.refresh_token(sent).await? {
                    continue;
                }
            }
            let decision = retry::decide(kind, &status, at.retries, self.options.max_retries);
            if decision.forget_channel {
                self.forget(&addr);
            }
            match decision.next {
                Step::NextEndpoint => {
                    tracing::debug!(endpoint = %addr, error = %status.message(), "cannot reconnect");
                    let why = rpc::status::refusal(&status).unwrap_or_else(|| status.message().to_string());
                    at.unreachable(format!("{addr}: {why}"));
                }
                Step::Fail => return Err(ClientError::Status(status)),
                Step::Retry { leader } => {
                    at.retries += 1;
                    tracing::debug!(endpoint = %addr, code = ?status.code(), message = status.message(), "retrying");
                    self.go_to(&mut at, leader);
                    tokio::time::sleep(at.backoff()).await;
                }
            }
        }
    }

    /// Points `at` at the leader when a status named it (remembering a new address for the
    /// client's later calls), else at the next endpoint.
    fn go_to(&self, at: &mut Attempts, leader: Option<String>) {
        match leader {
            Some(leader) => {
                if at.follow(leader.clone()) {
                    self.endpoints.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(leader);
                }
            }
            None => at.next_endpoint(),
        }
    }

    /// What this client's requests carry.
    pub(crate) fn meta(&self) -> CallMeta<'_> {
        CallMeta { no_forward: self.options.no_forward, token: &self.token }
    }

    /// The `authorization` value calls carry now.
    pub(crate) fn current_token(&self) -> Option<MetadataValue<Ascii>> {
        self.token.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    fn set_token(&self, token: MetadataValue<Ascii>) {
        *self.token.write().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(token);
    }

    fn credentials(&self) -> Option<Credentials> {
        self.credentials.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// After a call carrying `failed` was refused `UNAUTHENTICATED`: authenticates again
    /// with the client's credentials, unless another call already did. Returns whether the
    /// call should be repeated (false: the client knows no password).
    pub(crate) fn refresh_token(
        &self,
        failed: Option<MetadataValue<Ascii>>,
    ) -> Pin<Box<dyn Future<Output = Result<bool, ClientError>> + Send + '_>> {
        Box::pin(async move {
            let Some(creds) = self.credentials() else { return Ok(false) };
            let _one = self.refreshing.lock().await;
            if self.current_token() != failed {
                return Ok(true);
            }
            let token = self.fetch_token(&creds.name, &creds.password).await?;
            self.set_token(bearer(&token)?);
            tracing::info!(user = %creds.name, "the token was refused; authenticated again");
            Ok(true)
        })
    }

    fn request<T>(message: T, timeout: Duration, meta: CallMeta<'_>) -> tonic::Request<T> {
        let mut r = tonic::Request::new(message);
        r.set_timeout(timeout);
        if meta.no_forward {
            r.metadata_mut().insert(NO_FORWARD_HEADER, tonic::metadata::MetadataValue::from_static("true"));
        }
        if let Some(token) = meta.token.read().unwrap_or_else(std::sync::PoisonError::into_inner).as_ref() {
            r.metadata_mut().insert(rpc::metadata::AUTHORIZATION_HEADER, token.clone());
        }
        r
    }

    fn kv(ch: Channel) -> KvClient<Channel> {
        KvClient::new(ch).max_decoding_message_size(MAX_MESSAGE_BYTES).max_encoding_message_size(MAX_MESSAGE_BYTES * 2)
    }

    /// A fresh request id for a write that has none: this client's id and a counter.
    fn request_id(&self, given: String) -> String {
        if !given.is_empty() || !self.options.auto_request_ids {
            return given;
        }
        format!("{}-{}", self.client_id, self.next_request.fetch_add(1, Ordering::Relaxed))
    }

    /// How a write may be retried: like a read when it carries a request id (the server
    /// answers a retry with the first result), otherwise only when the server says so.
    fn write_kind(request_id: &str) -> Kind {
        if request_id.is_empty() { Kind::Write } else { Kind::IdempotentWrite }
    }

    /// Sets `key` to `value`.
    pub async fn put(&self, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> Result<PutResponse, ClientError> {
        self.put_request(PutRequest { key: key.into().into(), value: value.into().into(), ..Default::default() }).await
    }

    /// Sends a put with every option (compare-and-set, previous value, request id). Without
    /// a request id one is assigned when [`ClientOptions::auto_request_ids`] is on.
    pub async fn put_request(&self, mut req: PutRequest) -> Result<PutResponse, ClientError> {
        req.request_id = self.request_id(req.request_id);
        let nf = self.meta();
        self.run(Self::write_kind(&req.request_id), self.options.request_timeout, |ch, t| {
            let req = req.clone();
            async move { Self::kv(ch).put(Self::request(req, t, nf)).await.map(tonic::Response::into_inner) }
        })
        .await
    }

    /// Reads `key` (linearizable).
    pub async fn get(&self, key: impl Into<Vec<u8>>) -> Result<GetResponse, ClientError> {
        self.get_request(GetRequest { key: key.into().into(), ..Default::default() }).await
    }

    /// Reads one key at the consistency level the request names.
    pub async fn get_request(&self, req: GetRequest) -> Result<GetResponse, ClientError> {
        let nf = self.meta();
        self.run(Kind::Read, self.options.request_timeout, |ch, t| {
            let req = req.clone();
            async move { Self::kv(ch).get(Self::request(req, t, nf)).await.map(tonic::Response::into_inner) }
        })
        .await
    }

    /// Deletes `key`.
    pub async fn delete(&self, key: impl Into<Vec<u8>>) -> Result<DeleteResponse, ClientError> {
        self.delete_request(DeleteRequest { key: key.into().into(), ..Default::default() }).await
    }

    /// Sends a delete with every option (range or prefix, compare-and-delete, previous
    /// values, request id).
    pub async fn delete_request(&self, mut req: DeleteRequest) -> Result<DeleteResponse, ClientError> {
        req.request_id = self.request_id(req.request_id);
        let nf = self.meta();
        self.run(Self::write_kind(&req.request_id), self.options.request_timeout, |ch, t| {
            let req = req.clone();
            async move { Self::kv(ch).delete(Self::request(req, t, nf)).await.map(tonic::Response::into_inner) }
        })
        .await
    }

    /// Reads one page of a range.
    pub async fn range(&self, req: RangeRequest) -> Result<RangeResponse, ClientError> {
        let nf = self.meta();
        self.run(Kind::Read, self.options.request_timeout, |ch, t| {
            let req = req.clone();
            async move { Self::kv(ch).range(Self::request(req, t, nf)).await.map(tonic::Response::into_inner) }
        })
        .await
    }

    /// Reads a whole range, following the pages to the end. Each page is read at the
    /// request's consistency level; pages are not one snapshot (like etcd's paginated get
    /// without a revision).
    pub async fn range_all(&self, mut req: RangeRequest) -> Result<Vec<KeyValue>, ClientError> {
        let mut out = Vec::new();
        loop {
            let page = self.range(req.clone()).await?;
            out.extend(page.kvs);
            if !page.more {
                return Ok(out);
            }
            req.key = page.next_key;
            req.range_end = page.range_end;
            req.prefix = false;
        }
    }

    /// Sends a transaction.
    pub async fn txn(&self, mut req: TxnRequest) -> Result<TxnResponse, ClientError> {
        req.request_id = self.request_id(req.request_id);
        let nf = self.meta();
        self.run(Self::write_kind(&req.request_id), self.options.request_timeout, |ch, t| {
            let req = req.clone();
            async move { Self::kv(ch).txn(Self::request(req, t, nf)).await.map(tonic::Response::into_inner) }
        })
        .await
    }

    /// The status of the first reachable endpoint.
    pub async fn status(&self) -> Result<StatusResponse, ClientError> {
        let nf = self.meta();
        self.run(Kind::Read, self.options.request_timeout, |ch, t| async move {
            AdminClient::new(ch).status(Self::request(StatusRequest {}, t, nf)).await.map(tonic::Response::into_inner)
        })
        .await
    }

    /// Adds a node as a voter: as a learner first, promoted once caught up. Succeeds at once
    /// when it is already a voter with these addresses.
    pub async fn add_voter(
        &self,
        id: &str,
        raft_addr: &str,
        grpc_addr: &str,
        timeout: Duration,
    ) -> Result<AddVoterResponse, ClientError> {
        let req = AddVoterRequest {
            id: id.into(),
            raft_addr: raft_addr.into(),
            grpc_addr: grpc_addr.into(),
            if_membership_index: None,
        };
        // Adding a voter is idempotent, so it may be retried like a read.
        let nf = self.meta();
        self.run(Kind::Read, timeout, |ch, t| {
            let req = req.clone();
            async move { AdminClient::new(ch).add_voter(Self::request(req, t, nf)).await.map(tonic::Response::into_inner) }
        })
        .await
    }
}

/// A client id unlikely to repeat: the time and this process's id, hashed.
fn client_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    // RandomState is seeded from the OS per process, so two clients started at the same
    // nanosecond still differ.
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(nanos);
    h.write_u32(std::process::id());
    format!("c{:016x}", h.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refused_connections_were_never_sent() {
        let mut refused = tonic::Status::unavailable("transport error");
        refused.set_source(std::sync::Arc::new(std::io::Error::from(std::io::ErrorKind::ConnectionRefused)));
        assert!(never_sent(&refused));
        assert!(never_sent(&tonic::Status::unavailable("tcp connect error")));
        let mut reset = tonic::Status::unavailable("transport error");
        reset.set_source(std::sync::Arc::new(std::io::Error::from(std::io::ErrorKind::ConnectionReset)));
        assert!(!never_sent(&reset));
        assert!(!never_sent(&tonic::Status::unavailable("connection closed")));
        assert!(never_sent(&tonic::Status::cancelled("operation was canceled: connection closed")));
        assert!(!never_sent(&tonic::Status::cancelled("the server cancelled the call")));
        assert!(!never_sent(&tonic::Status::unknown("operation was canceled")));
    }

    #[test]
    fn endpoints_are_checked() {
        assert!(matches!(Client::new(Vec::<String>::new(), ClientOptions::default()), Err(ClientError::NoEndpoints)));
        assert!(matches!(Client::new(["localhost"], ClientOptions::default()), Err(ClientError::InvalidEndpoint(_))));
        assert!(Client::new(["127.0.0.1:1", "localhost:2"], ClientOptions::default()).is_ok());
    }

    #[tokio::test]
    async fn unreachable_endpoints_are_reported() {
        // Port 1 on loopback: nothing listens there, the connection is refused at once.
        let options = ClientOptions { max_retries: 1, ..ClientOptions::default() };
        let client = Client::new(["127.0.0.1:1"], options).unwrap_or_else(|e| panic!("{e}"));
        match client.get("k").await {
            Err(ClientError::Unreachable { endpoints, .. }) => assert_eq!(endpoints, "127.0.0.1:1"),
            other => panic!("expected Unreachable, got {other:?}"),
        }
    }
}
