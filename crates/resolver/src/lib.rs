//! Node id → addresses.
//!
//! This crate owns the answer to "where is node X": its Raft address and its gRPC (client)
//! address. Everything is keyed by [`NodeId`], never by address (the Go seed looked a
//! node-id-keyed map up by Raft address, and forwarding failed in gossip mode).
//!
//! # Brief overview
//! - [`Resolver`]: the trait: resolve an id, set an id's addresses, remove an id.
//! - [`AddressMap`]: the one implementation that holds entries, labelled with its
//!   [`Source`]:
//!   - [`AddressMap::membership`], kept equal to the Raft membership by the engine (every
//!     member's addresses as it gave them when it joined);
//!   - [`AddressMap::gossip`], kept equal to the live nodes gossip reports by the `gossip`
//!     crate (the addresses each live node publishes now);
//!   - [`StaticPeers`] builds a static one from the `--peers` flag or a peers file (see
//!     [`parse_peers`] for the syntax); nothing is hard-coded.
//! - [`Chain`]: asks several resolvers in order; the first that knows the id answers.
//!
//! The engine's chain is gossip, then static peers, then the membership: what a live node
//! says about itself now beats what an operator wrote at start, which beats what the node
//! said when it joined. So a node restarted on new ports is reached at its new addresses
//! as soon as gossip has seen it, and without gossip or peers the membership still answers.
//!
//! This crate must never depend on openraft directly (it reaches openraft's types only
//! through `types`) or on tonic or chitchat: it maps ids to strings. `cargo xtask deps`
//! checks the first two.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::path::Path;
use std::sync::{Arc, PoisonError, RwLock};

pub use types::{NodeId, NodeInfo};

/// What can go wrong building a static resolver.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ResolverError {
    /// A peer entry is malformed.
    #[error("{origin}: {source}")]
    Invalid {
        /// The flag or file it came from (`--peers`, `--peers_file PATH`).
        origin: String,
        /// What is wrong with it.
        source: PeerError,
    },
    /// An id is named twice with different addresses.
    #[error("{origin} names {id} twice with different addresses")]
    Conflict {
        /// The flag or file of the second entry.
        origin: String,
        /// The id.
        id: NodeId,
    },
    /// The peers file could not be read.
    #[error("reading the peers file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
}

impl ResolverError {
    fn invalid(origin: &str, source: PeerError) -> Self {
        ResolverError::Invalid { origin: origin.to_string(), source }
    }
}

/// Why a peer entry ([`PEER_SYNTAX`]) or an address was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PeerError {
    /// The entry is not `ID=RAFT_ADDR@GRPC_ADDR`.
    #[error("{entry:?} is not {PEER_SYNTAX}")]
    Syntax {
        /// The entry.
        entry: String,
    },
    /// The entry's id is not a valid node id.
    #[error("{entry:?}: {source}")]
    Id {
        /// The entry.
        entry: String,
        /// Why the id is refused.
        source: types::InvalidNodeId,
    },
    /// An address is not `HOST:PORT` with a port from 1 to 65535.
    #[error("{addr:?} is not HOST:PORT with a port from 1 to 65535")]
    Addr {
        /// The address.
        addr: String,
    },
}

/// Maps a node id to its addresses.
pub trait Resolver: Send + Sync + Debug {
    /// The addresses of `id`, if this resolver knows them.
    fn resolve(&self, id: &NodeId) -> Option<NodeInfo>;

    /// Sets the addresses of `id`.
    fn set(&self, id: NodeId, info: NodeInfo);

    /// Forgets `id`.
    fn remove(&self, id: &NodeId);

    /// The addresses of `id` from this resolver, or else `known` (addresses that came with
    /// the question, such as the leader's entry in a Raft error, which may be older).
    fn resolve_or(&self, id: &NodeId, known: Option<NodeInfo>) -> Option<NodeInfo> {
        self.resolve(id).or(known)
    }
}

/// Where an [`AddressMap`]'s entries come from (for logs and `Debug`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The `--peers` flag or a peers file.
    Static,
    /// The Raft membership.
    Membership,
    /// Gossip's live nodes.
    Gossip,
}

/// A map of node id → addresses, safe to share between threads.
#[derive(Debug)]
pub struct AddressMap {
    source: Source,
    nodes: RwLock<BTreeMap<NodeId, NodeInfo>>,
}

impl AddressMap {
    /// An empty map for entries from `source`.
    #[must_use]
    pub fn new(source: Source) -> Self {
        Self { source, nodes: RwLock::new(BTreeMap::new()) }
    }

    /// An empty map the engine keeps equal to the Raft membership.
    #[must_use]
    pub fn membership() -> Self {
        Self::new(Source::Membership)
    }

    /// An empty map the `gossip` crate keeps equal to gossip's live nodes.
    #[must_use]
    pub fn gossip() -> Self {
        Self::new(Source::Gossip)
    }

    /// Where the entries come from.
    #[must_use]
    pub fn source(&self) -> Source {
        self.source
    }

    /// Replaces every entry with `nodes`.
    pub fn replace_all(&self, nodes: impl IntoIterator<Item = (NodeId, NodeInfo)>) {
        let fresh: BTreeMap<_, _> = nodes.into_iter().collect();
        *self.nodes.write().unwrap_or_else(PoisonError::into_inner) = fresh;
    }

    /// Every entry.
    #[must_use]
    pub fn all(&self) -> BTreeMap<NodeId, NodeInfo> {
        self.nodes.read().unwrap_or_else(PoisonError::into_inner).clone()
    }
}

impl Resolver for AddressMap {
    fn resolve(&self, id: &NodeId) -> Option<NodeInfo> {
        self.nodes.read().unwrap_or_else(PoisonError::into_inner).get(id).cloned()
    }

    fn set(&self, id: NodeId, info: NodeInfo) {
        self.nodes.write().unwrap_or_else(PoisonError::into_inner).insert(id, info);
    }

    fn remove(&self, id: &NodeId) {
        self.nodes.write().unwrap_or_else(PoisonError::into_inner).remove(id);
    }
}

/// Builds the static resolver from `--peers` and `--peers_file`.
#[derive(Debug)]
pub struct StaticPeers;

impl StaticPeers {
    /// A static resolver holding the entries of `flag` (the `--peers` value, may be empty)
    /// and of the file at `file`, if given. An id named twice with different addresses is
    /// an error.
    pub fn build(flag: &str, file: Option<&Path>) -> Result<AddressMap, ResolverError> {
        let map = AddressMap::new(Source::Static);
        let mut seen = BTreeMap::new();
        let mut add = |origin: &str, entries: Vec<(NodeId, NodeInfo)>| {
            for (id, info) in entries {
                if let Some(old) = seen.insert(id.clone(), info.clone())
                    && old != info
                {
                    return Err(ResolverError::Conflict { origin: origin.to_string(), id });
                }
                map.set(id, info);
            }
            Ok(())
        };
        add("--peers", parse_peers(flag).map_err(|source| ResolverError::invalid("--peers", source))?)?;
        if let Some(path) = file {
            let origin = format!("--peers_file {}", path.display());
            let text = std::fs::read_to_string(path)
                .map_err(|source| ResolverError::Read { path: path.display().to_string(), source })?;
            add(&origin, parse_peers(&text).map_err(|source| ResolverError::invalid(&origin, source))?)?;
        }
        Ok(map)
    }
}

/// The syntax of one peer: `ID=RAFT_ADDR@GRPC_ADDR`, as in `raftkv recover --voters`.
pub const PEER_SYNTAX: &str = "ID=RAFT_ADDR@GRPC_ADDR (e.g. nodeA=localhost:50051@localhost:40051)";

/// Parses peers separated by commas or newlines, each [`PEER_SYNTAX`]; blank entries and
/// `#` comments (to the end of the line) are skipped.
///
/// # Errors
/// The first entry that is not [`PEER_SYNTAX`] ([`parse_peer`]).
pub fn parse_peers(text: &str) -> Result<Vec<(NodeId, NodeInfo)>, PeerError> {
    text.lines()
        .map(|line| line.split_once('#').map_or(line, |(before, _)| before))
        .flat_map(|line| line.split(','))
        .map(str::trim)
        .filter(|entry| !entry.is_empty())
        .map(parse_peer)
        .collect()
}

/// Parses one [`PEER_SYNTAX`] entry.
///
/// # Errors
/// [`PeerError`]: not the syntax, a bad id, or a bad address.
pub fn parse_peer(s: &str) -> Result<(NodeId, NodeInfo), PeerError> {
    let bad = || PeerError::Syntax { entry: s.to_string() };
    let (id, addrs) = s.split_once('=').ok_or_else(bad)?;
    let (raft, grpc) = addrs.split_once('@').ok_or_else(bad)?;
    let id = NodeId::new(id).map_err(|source| PeerError::Id { entry: s.to_string(), source })?;
    Ok((id, NodeInfo { raft_addr: parse_addr(raft)?, grpc_addr: parse_addr(grpc)? }))
}

/// `HOST:PORT` with a port from 1 to 65535: an address others can reach.
///
/// # Errors
/// [`PeerError::Addr`] otherwise.
pub fn parse_addr(s: &str) -> Result<String, PeerError> {
    let ok = s.rsplit_once(':').is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p != 0));
    if ok { Ok(s.to_string()) } else { Err(PeerError::Addr { addr: s.to_string() }) }
}

/// Asks each resolver in order; the first that knows the id answers. `set` and `remove` go
/// to the first resolver (the chain's own overrides, if the engine puts one there).
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

    fn set(&self, id: NodeId, info: NodeInfo) {
        if let Some(first) = self.sources.first() {
            first.set(id, info);
        }
    }

    fn remove(&self, id: &NodeId) {
        if let Some(first) = self.sources.first() {
            first.remove(id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(raft: &str, grpc: &str) -> NodeInfo {
        NodeInfo { raft_addr: raft.into(), grpc_addr: grpc.into() }
    }

    fn id(s: &str) -> NodeId {
        NodeId::new(s).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn address_map_follows_replacements() {
        let r = AddressMap::membership();
        let a = NodeId::from(1);
        r.set(a.clone(), info("r1", "g1"));
        assert_eq!(r.resolve(&a), Some(info("r1", "g1")));
        r.replace_all([(NodeId::from(2), info("r2", "g2"))]);
        assert_eq!(r.resolve(&a), None);
        assert_eq!(r.all().len(), 1);
        r.remove(&NodeId::from(2));
        assert!(r.all().is_empty());
        assert_eq!(r.source(), Source::Membership);
    }

    #[test]
    fn chain_asks_in_order() {
        let first = Arc::new(AddressMap::gossip());
        let second = Arc::new(AddressMap::membership());
        let n = NodeId::from(7);
        second.set(n.clone(), info("old", "old"));
        let chain = Chain::new(vec![first.clone(), second]);
        assert_eq!(chain.resolve(&n).map(|i| i.grpc_addr), Some("old".into()));
        first.set(n.clone(), info("new", "new"));
        assert_eq!(chain.resolve(&n).map(|i| i.grpc_addr), Some("new".into()));
        chain.remove(&n);
        assert_eq!(chain.resolve(&n).map(|i| i.grpc_addr), Some("old".into()), "remove goes to the first source");
        assert_eq!(chain.resolve(&NodeId::from(8)), None);
        assert_eq!(chain.resolve_or(&NodeId::from(8), Some(info("k", "k"))), Some(info("k", "k")));
    }

    #[test]
    fn peers_parse_from_flag_and_file_syntax() {
        let peers =
            parse_peers("nodeA=localhost:50051@localhost:40051, nodeB=h:2@h:3").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(peers.len(), 2);
        assert_eq!(peers[0], (id("nodeA"), info("localhost:50051", "localhost:40051")));
        let file = "# the cluster\nnodeA=a:1@a:2\n\nnodeB=b:1@b:2 # second\n";
        assert_eq!(parse_peers(file).map(|p| p.len()), Ok(2));
        assert_eq!(parse_peers(""), Ok(vec![]));
        for bad in ["nodeA", "nodeA=a:1", "nodeA=a:1@a", "a/b=a:1@a:2", "nodeA=a:0@a:2", "=a:1@a:2"] {
            let e = parse_peers(bad).err().map(|e| e.to_string()).unwrap_or_default();
            assert!(!e.is_empty(), "{bad} should be refused");
        }
        assert!(
            parse_peer("nodeA=a:1").err().map(|e| e.to_string()).unwrap_or_default().contains("ID=RAFT_ADDR@GRPC_ADDR")
        );
    }

    #[test]
    fn static_peers_name_their_origin() {
        let map = StaticPeers::build("nodeA=a:1@a:2", None).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(map.resolve(&id("nodeA")), Some(info("a:1", "a:2")));
        assert_eq!(map.source(), Source::Static);
        let e = StaticPeers::build("nodeA", None).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.starts_with("--peers: "), "{e}");
        let dir = std::env::temp_dir().join(format!("resolver-test-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let file = dir.join("peers");
        std::fs::write(&file, "nodeA=x:1@x:2\n").unwrap_or_else(|e| panic!("{e}"));
        let e = StaticPeers::build("nodeA=a:1@a:2", Some(&file)).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("--peers_file") && e.contains("names nodeA twice"), "{e}");
        let missing = dir.join("missing");
        let e = StaticPeers::build("", Some(&missing)).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("reading the peers file"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
