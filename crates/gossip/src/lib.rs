//! Gossip discovery for raftkv.
//!
//! Status: this crate holds the names of the keys each node will publish over gossip, in
//! one place, and nothing else yet. The chitchat-based discovery itself (`--gossip_addr`,
//! `--gossip_seeds`, cluster ids, failure detection, join and leave events, a resolver
//! backed by gossip) is the gossip issue's work; no flag or code path uses gossip today, and
//! addresses come from the Raft membership.
//!
//! Gossip is advisory: it will never change the Raft membership by itself.
//!
//! This crate must never depend on openraft directly: it may reach openraft's types only
//! through `types` (`cargo xtask deps` checks this).

/// The gossip keys a node publishes about itself.
pub mod keys {
    /// The node's id (`--raft_id`).
    pub const NODE_ID: &str = "node_id";
    /// The node's Raft address.
    pub const RAFT_ADDR: &str = "raft_addr";
    /// The node's client (gRPC) address.
    pub const GRPC_ADDR: &str = "grpc_addr";
}

#[cfg(test)]
mod tests {
    use super::keys;

    #[test]
    fn keys_are_distinct() {
        let all = [keys::NODE_ID, keys::RAFT_ADDR, keys::GRPC_ADDR];
        for (i, a) in all.iter().enumerate() {
            assert!(all[i + 1..].iter().all(|b| a != b));
        }
    }
}
