//! raftkv's gRPC services: the API boundary.
//!
//! # Brief overview
//! - [`KvService`] (`raftkv.v1.KV`): Put, Get, Delete, Range and Txn on bytes keys and
//!   values, with compare-and-set and at-most-once request ids. Writes go through Raft.
//!   Reads are linearizable by default, served by the node asked: the leader after a
//!   ReadIndex round, a follower after fetching the read index from the leader and applying
//!   that far; `LEASE` and `STALE` are opt-in.
//! - [`AdminService`] (`raftkv.admin.v1.Admin`): Status (with each member's replication
//!   progress on the leader; with gossip, gossip's view and its disagreements with the
//!   membership), membership changes (AddVoter learner-first, AddLearner,
//!   Promote, Demote, Remove), TransferLeader, Snapshot, Backup (a snapshot streamed with a
//!   CRC32 trailer), Barrier and VerifyLeader. The operations themselves are in [`cluster`],
//!   which the engine also uses to hand leadership over before a planned stop.
//! - Forwarding ([`forward`]): what needs the leader answers [`Routed::Leader`] (writes and
//!   every [`cluster`] operation alike), and is forwarded once, by one function, to the
//!   leader's gRPC address, looked up by the leader's id through the resolver chain
//!   (gossip, static peers, the Raft membership; the error's own address last), with
//!   the caller's deadline and a hop guard. A client may opt out; it then gets
//!   `UNAVAILABLE` with the leader's id and address in the metadata. KV writes go over one
//!   long-lived stream per follower ([`ForwardService`] serves it on the leader), the rest
//!   as one unary call each.
//! - Watch and blocking reads (the `watch` module): `KV.Watch` streams and `Get` with
//!   `min_index`, and the seed's `/Example/Watch`, all served by the node asked from its own
//!   state machine's change feed, woken by notification (never polling), bounded per
//!   watcher, told when a snapshot install abandons their state, and ended with
//!   `UNAVAILABLE` at shutdown.
//! - [`readiness`]: whether the node has caught up with the leader it knows (one
//!   linearizable read barrier after it starts or rejoins), for `/readyz` and gRPC health.
//! - Authentication ([`auth`], [`AuthService`]): users, roles and permissions replicated
//!   through the log; [`AuthGuard`] wraps every client-port service and checks the token
//!   and the root role, the KV service checks each request's key range, open watches are
//!   closed when their permission is revoked.
//! - [`ServiceError`]: every failure, and the one table mapping it to gRPC codes.
//! - [`limits`]: the named input limits.
//! - [`overload`]: the client port's concurrency limit, load shedding, byte budget of
//!   request bodies in flight and request timeout ([`overload::OverloadGuard`]).
//! - [`slow`]: the slow-request log (a KV request slower than a threshold, logged once at
//!   warn with its method and key prefix, never its value).
//! - [`watch`]: also the helpers the compat crate's `/Example/Watch` shares.
//!
//! Protobuf types stay in this crate: nothing below it sees them. This crate must never
//! depend on raft-storage or engine, nor directly on redb (the state machine it reads through
//! `fsm` keeps its redb tables to itself); `cargo xtask deps` checks this.

mod admin;
pub mod auth;
mod auth_service;
mod backup;
pub mod cluster;
mod convert;
mod error;
pub mod forward;
mod forward_writes;
mod kv;
pub mod limits;
mod node;
pub mod overload;
pub mod readiness;
pub mod slow;
pub mod watch;

pub use admin::{AdminService, DEFAULT_ADD_VOTER_TIMEOUT, MAX_ADMIN_TIMEOUT, check_addr, members_of, node_id};
pub use auth::AuthGuard;
pub use auth_service::AuthService;
pub use backup::BACKUP_CHUNK_BYTES;
pub use error::{
    CURRENT_INDEX_HEADER, LEADER_ADDR_HEADER, LEADER_ID_HEADER, OLDEST_INDEX_HEADER, RESUME_INDEX_HEADER,
    RETRYABLE_HEADER, ServiceError, UNKNOWN_METHOD_MESSAGE, unknown_method_status,
};
pub use forward::{Forwarder, Hop, Leader, Routed};
pub use forward_writes::ForwardService;
pub use kv::KvService;
pub use limits::MAX_DECODE_BYTES;
pub use node::{DEFAULT_REQUEST_TIMEOUT, HeaderInfo, NodeContext};
