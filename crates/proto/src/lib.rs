//! Protocol buffer messages and gRPC client/server stubs of raftkv.
//!
//! The `.proto` files under `proto/` at the workspace root are the source of truth. The Rust
//! code in `src/generated/` is produced from them by `cargo xtask proto` (pure Rust: protox
//! parses the files, tonic-prost-build generates the code; no `protoc`) and committed, so a
//! normal build never runs a code generator. CI runs `cargo xtask proto --check`, which fails
//! when the committed code is stale.
//!
//! # Packages
//! - [`kv::v1`] (`raftkv.v1`): the client key-value API.
//! - [`admin::v1`] (`raftkv.admin.v1`): status and membership administration.
//! - [`raft::v1`] (`raftkv.raft.v1`): Raft traffic between nodes.
//! - [`auth::v1`] (`raftkv.auth.v1`): users, roles, permissions and tokens.
//! - [`kv::forward::v1`] (`raftkv.forward.v1`): the stream of writes a follower forwards to
//!   the leader. It sits under `kv` because its messages carry `raftkv.v1`'s, which the
//!   generated code reaches as its parent's `v1`.
//! - [`etcd`]: etcd's v3 API (`etcdserverpb`, `mvccpb`, `authpb`), as etcd 3.4 numbers it,
//!   served by the `etcd-api` crate.
//! - [`compat`]: the Go seeds' package-less services (`Example`, `RaftAdmin`, `RaftManager`), one
//!   module each.
//!
//! This crate must never depend on any other crate of ours.

#![allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic, rust_2018_idioms)]

pub mod compat;

/// `raftkv.v1`: the client key-value API.
pub mod kv {
    /// Version 1.
    pub mod v1 {
        include!("generated/raftkv.v1.rs");
    }
    /// `raftkv.forward.v1`: the stream of writes a follower forwards to the leader.
    pub mod forward {
        /// Version 1.
        pub mod v1 {
            include!("generated/raftkv.forward.v1.rs");
        }
    }
}

/// `raftkv.admin.v1`: cluster status and membership.
pub mod admin {
    /// Version 1.
    pub mod v1 {
        include!("generated/raftkv.admin.v1.rs");
    }
}

/// `raftkv.raft.v1`: Raft messages between nodes.
pub mod raft {
    /// Version 1.
    pub mod v1 {
        include!("generated/raftkv.raft.v1.rs");
    }
}

/// `raftkv.auth.v1`: users, roles, permissions and tokens.
pub mod auth {
    /// Version 1.
    pub mod v1 {
        include!("generated/raftkv.auth.v1.rs");
    }
}

/// etcd's v3 API: the packages `etcdserverpb`, `mvccpb` and `authpb` (`proto/etcd/`), with
/// etcd's message names, field numbers and method paths.
pub mod etcd {
    /// `etcdserverpb`: the KV, Watch, Cluster, Maintenance and Auth services.
    pub mod etcdserverpb {
        include!("generated/etcdserverpb.rs");
    }
    /// `mvccpb`: key-values and events.
    pub mod mvccpb {
        include!("generated/mvccpb.rs");
    }
    /// `authpb`: users, roles and permissions.
    pub mod authpb {
        include!("generated/authpb.rs");
    }
}

/// The encoded `FileDescriptorSet` of every raftkv proto file, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!("generated/raftkv_descriptor.bin");
