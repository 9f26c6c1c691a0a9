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
