//! The compatibility services of the Go seeds, generated from `proto/compat/*.proto`.
//!
//! These proto files have **no package**, like the seeds', so their gRPC method paths are the
//! seeds' (`/Example/Add`, ...). `cargo xtask proto` compiles each file alone into its own
//! module, because package-less files of different seeds may define the same message names.
//! For the same reason each module carries its own file descriptor set for gRPC reflection
//! instead of sharing [`crate::FILE_DESCRIPTOR_SET`].

/// `Example` (xkeyideal/raft-example's `proto/service.proto`): `Add`, `Get`, `Stat`.
pub mod example {
    include!("generated/compat/example.rs");

    /// The encoded `FileDescriptorSet` of `compat/example.proto`, for gRPC reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!("generated/compat/example_descriptor.bin");
}

/// `RaftAdmin` (Jille/raftadmin's `proto/raftadmin.proto`): the 20 admin RPCs over
/// hashicorp/raft, with `Await`/`Forget` operation tokens.
pub mod raftadmin {
    include!("generated/compat/raftadmin.rs");

    /// The encoded `FileDescriptorSet` of `compat/raftadmin.proto`, for gRPC reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!("generated/compat/raftadmin_descriptor.bin");
}

/// `RaftManager` (xkeyideal/raft-manager's `proto/manager.proto`): raftadmin's RPCs with
/// richer GetConfiguration, LastContact, Leader and State answers.
pub mod raftmanager {
    include!("generated/compat/raftmanager.rs");

    /// The encoded `FileDescriptorSet` of `compat/raftmanager.proto`, for gRPC reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!("generated/compat/raftmanager_descriptor.bin");
}
