//! raftkv's gRPC wire rules, in one place, for every side: the nodes' services, the Raft
//! network, leader forwarding and the client library.
//!
//! # Brief overview
//! - [`metadata`]: every `x-raftkv-*` metadata key, declared once.
//! - [`limits`]: the transport limits both ports apply (decode size, HTTP/2 streams,
//!   header block, rapid reset).
//! - [`status`]: what is read from or rewritten in a status: [`never_sent`] (whether a failed
//!   call certainly never left this process, from hyper's errors), the rewording of tonic's
//!   decode-limit and unknown-method answers.
//! - [`deadline`]: the caller's deadline from `grpc-timeout`.
//! - [`channel`]: the one place a [`tonic::transport::Endpoint`] is built
//!   ([`channel::endpoint`]), and [`channel::Pool`], the reused channels per address.
//! - [`metered`]: [`metered::MetricsLayer`], per-RPC counts and latency by service, method
//!   and status code, which [`server::serve`] puts on every server.
//! - [`server`]: the one place a [`tonic::transport::Server`] is built ([`server::serve`]).
//! - [`tls`]: TLS for both ports and every channel (rustls, ring provider): the files,
//!   re-read when they change, and the node-id rule of the Raft port.
//!
//! `cargo xtask deps` checks that no other crate builds an endpoint or a server, so TLS and
//! other transport settings have one home. This crate depends on no crate of ours and on
//! nothing of the server side (openraft, redb): the client library uses it too.

pub mod channel;
pub mod deadline;
pub mod limits;
pub mod metadata;
pub mod metered;
pub mod server;
pub mod status;
pub mod tls;

pub use status::never_sent;
