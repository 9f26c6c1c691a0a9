//! The compatibility services: the gRPC APIs of the Go seeds, served over raftkv's own.
//!
//! Each is a thin adapter in its own module; the proto files are under `proto/compat/` and
//! have no package, like the seeds', so the method paths are the seeds' own.
//!
//! Every adapter calls raftkv's native services (`service`) and reads the node through
//! `service::NodeContext`; nothing here is reached by the native services, and this crate
//! must never depend on `engine`, `raft-storage` or `client` (`cargo xtask deps` checks this).
//!
//! - [`example`]: `Example` (xkeyideal/raft-example): `Add`, `Get` (linearizable or a local
//!   stale read), `Stat`, over the native KV service.
//! - [`leader_health`]: `grpc.health.v1.Health` reporting `quis.RaftLeader` SERVING only on
//!   the leader (Jille/raft-grpc-leader-rpc), so `raftadmin --leader multi:///a,b,c` and
//!   other health-checking clients find the leader.
//! - [`raftadmin`] and [`raftmanager`]: `RaftAdmin` (Jille/raftadmin) and `RaftManager`
//!   (xkeyideal/raft-manager), the hashicorp/raft admin API with operation tokens
//!   ([`operations`]), both over one implementation on the native Admin and KV services
//!   ([`hashicorp`]).

pub mod example;
pub mod hashicorp;
pub mod leader_health;
pub mod operations;
pub mod raftadmin;
pub mod raftmanager;

pub use example::ExampleService;
pub use hashicorp::{HashicorpAdmin, StopRequest};
pub use leader_health::{LeaderHealth, RAFT_LEADER_SERVICE};
pub use operations::Operations;
pub use raftadmin::RaftAdminService;
pub use raftmanager::RaftManagerService;
