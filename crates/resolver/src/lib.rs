//! Node id → addresses.
//!
//! Everything is keyed by [`NodeId`], never by address (the Go seed looked a node-id-keyed
//! map up by Raft address, and forwarding failed).
//!
//! # Brief overview
//! - [`Resolver`]: the trait: resolve, and the id's addresses ([`NodeInfo`]).
//! - [`MembershipResolver`]: a map the engine keeps equal to the Raft membership, which
//!   stores every member's Raft and gRPC addresses. It is the source of truth.
//! - [`Chain`]: asks several resolvers in order and returns the first answer; later
//!   sources (static peers, gossip) are appended behind the membership.
//!
//! This crate must never depend on openraft directly (it reaches openraft's types only
//! through `types`) or on tonic: it maps ids to strings. `cargo xtask deps` checks both.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::sync::{Arc, RwLock};

pub use types::{NodeId, NodeInfo};

/// Maps a node id to its addresses.
pub trait Resolver: Send + Sync + Debug {
    /// The addresses of `id`, if this resolver knows them.
    fn resolve(&self, id: &NodeId) -> Option<NodeInfo>;
}

/// The addresses of every member of the Raft membership, kept current by the engine.
#[derive(Debug, Default)]
pub struct MembershipResolver {
    nodes: RwLock<BTreeMap<NodeId, NodeInfo>>,
}

impl MembershipResolver {
    /// An empty resolver.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Replaces every entry with `nodes` (the members of the latest membership).
    pub fn replace_all(&self, nodes: impl IntoIterator<Item = (NodeId, NodeInfo)>) {
        let fresh: BTreeMap<_, _> = nodes.into_iter().collect();
        let mut map = self.nodes.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        *map = fresh;
    }

    /// Sets the addresses of one node.
    pub fn set(&self, id: NodeId, info: NodeInfo) {
        self.nodes.write().unwrap_or_else(std::sync::PoisonError::into_inner).insert(id, info);
    }

    /// Forgets one node.
    pub fn remove(&self, id: &NodeId) {
        self.nodes.write().unwrap_or_else(std::sync::PoisonError::into_inner).remove(id);
    }

    /// Every known node.
    #[must_use]
    pub fn all(&self) -> BTreeMap<NodeId, NodeInfo> {
        self.nodes.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }
}

impl Resolver for MembershipResolver {
    fn resolve(&self, id: &NodeId) -> Option<NodeInfo> {
        self.nodes.read().unwrap_or_else(std::sync::PoisonError::into_inner).get(id).cloned()
    }
}

/// Asks each resolver in order; the first that knows the id answers.
#[derive(Debug, Default, Clone)]
pub struct Chain {
    sources: Vec<Arc<dyn Resolver>>,
}

impl Chain {
    /// A chain of `sources`, asked in this order.
    #[must_use]
    pub fn new(sources: Vec<Arc<dyn Resolver>>) -> Self {
        Self { sources }
    }
}

impl Resolver for Chain {
    fn resolve(&self, id: &NodeId) -> Option<NodeInfo> {
        self.sources.iter().find_map(|s| s.resolve(id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(raft: &str, grpc: &str) -> NodeInfo {
        NodeInfo { raft_addr: raft.into(), grpc_addr: grpc.into() }
    }

    #[test]
    fn membership_resolver_follows_replacements() {
        let r = MembershipResolver::new();
        let a = NodeId::from(1);
        r.set(a.clone(), info("r1", "g1"));
        assert_eq!(r.resolve(&a), Some(info("r1", "g1")));
        r.replace_all([(NodeId::from(2), info("r2", "g2"))]);
        assert_eq!(r.resolve(&a), None);
        assert_eq!(r.all().len(), 1);
        r.remove(&NodeId::from(2));
        assert!(r.all().is_empty());
    }

    #[test]
    fn chain_asks_in_order() {
        let first = Arc::new(MembershipResolver::new());
        let second = Arc::new(MembershipResolver::new());
        let id = NodeId::from(7);
        second.set(id.clone(), info("old", "old"));
        let chain = Chain::new(vec![first.clone(), second]);
        assert_eq!(chain.resolve(&id).map(|i| i.grpc_addr), Some("old".into()));
        first.set(id.clone(), info("new", "new"));
        assert_eq!(chain.resolve(&id).map(|i| i.grpc_addr), Some("new".into()));
        assert_eq!(chain.resolve(&NodeId::from(8)), None);
    }
}
