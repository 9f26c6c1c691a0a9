//! `/status.json`: this node's picture of the cluster, which the status page polls (its
//! fields are documented in docs/metrics.md).

use std::collections::BTreeMap;

use gossip::{PeerState, View};
use openraft::ServerState;
use openraft::async_runtime::WatchReceiver;
use serde::Serialize;

use crate::Sources;
use crate::history::{LeaderChange, Sample, now_ms};

/// The whole document.
#[derive(Debug, Serialize)]
pub struct Status {
    /// The node that answered.
    pub node: String,
    /// Its Raft state: `leader`, `follower`, `candidate`, `learner`, `shutdown`.
    pub state: &'static str,
    /// The term.
    pub term: u64,
    /// The leader it knows.
    pub leader: Option<String>,
    /// Whether it is ready (`/readyz`), and if not, why.
    pub ready: bool,
    /// What readiness is missing.
    pub ready_reason: String,
    /// Its last log index.
    pub last_log_index: u64,
    /// Its committed index.
    pub committed_index: u64,
    /// Its applied index.
    pub applied_index: u64,
    /// The members, voters first.
    pub members: Vec<Member>,
    /// Gossip's view, when gossip is on.
    pub gossip: Option<GossipStatus>,
    /// The last leader changes this node saw, newest first.
    pub leader_changes: Vec<LeaderChange>,
    /// One sample a second, oldest first.
    pub history: Vec<Sample>,
    /// When this was made, in milliseconds since the Unix epoch.
    pub now_ms: u64,
}

/// One member.
#[derive(Debug, Serialize)]
pub struct Member {
    /// Its id.
    pub id: String,
    /// `leader`, `follower` (a voter) or `learner`.
    pub role: &'static str,
    /// `voter` or `learner`.
    pub suffrage: &'static str,
    /// Its Raft address (the membership's).
    pub raft_addr: String,
    /// Its client address (the membership's).
    pub grpc_addr: String,
    /// On the leader: the last index replicated to it. Elsewhere `null`.
    pub matched_index: Option<u64>,
    /// The applied index it publishes over gossip (`null` without gossip).
    pub applied_index: Option<u64>,
    /// Entries behind: on the leader from replication, elsewhere from gossip's applied
    /// indexes (behind the highest one); `null` when unknown.
    pub lag: Option<u64>,
    /// What gossip says of it: `live`, `dead`, `left`, or `null` (unknown, or gossip off).
    pub gossip: Option<String>,
}

/// Gossip's view.
#[derive(Debug, Serialize)]
pub struct GossipStatus {
    /// Every node gossip knows.
    pub nodes: Vec<GossipNode>,
    /// Where gossip and the membership disagree, in words.
    pub disagreements: Vec<String>,
}

/// One node as gossip sees it.
#[derive(Debug, Serialize)]
pub struct GossipNode {
    /// Its id.
    pub id: String,
    /// `live`, `dead` or `left`.
    pub liveness: String,
    /// The role it publishes.
    pub role: String,
    /// The leader it sees.
    pub leader: Option<String>,
    /// The applied index it publishes.
    pub applied_index: u64,
    /// Its advertised Raft address.
    pub raft_addr: String,
    /// Its advertised client address.
    pub grpc_addr: String,
}

fn state_name(s: ServerState) -> &'static str {
    match s {
        ServerState::Leader => "leader",
        ServerState::Follower => "follower",
        ServerState::Candidate => "candidate",
        ServerState::Learner => "learner",
        ServerState::Shutdown => "shutdown",
    }
}

/// The status now.
pub async fn status(src: &Sources) -> Status {
    let m = src.raft.metrics().borrow_watched().clone();
    let view = match &src.gossip {
        Some(g) => Some(g.view().await),
        None => None,
    };
    let members = members(&m, view.as_ref());
    let gossip = view.as_ref().map(|v| gossip_status(v, &m));
    let ready = src.ready.borrow().clone();
    Status {
        node: src.id.to_string(),
        state: state_name(m.state),
        term: m.current_term,
        leader: m.current_leader.as_ref().map(ToString::to_string),
        ready: ready.ready,
        ready_reason: ready.reason,
        last_log_index: m.last_log_index.unwrap_or(0),
        committed_index: types::index_of(m.local_committed.as_ref()),
        applied_index: types::index_of(m.last_applied.as_ref()),
        members,
        gossip,
        leader_changes: src.history.leader_changes(),
        history: src.history.samples(),
        now_ms: now_ms(),
    }
}

fn members(m: &openraft::RaftMetrics<types::TypeConfig>, view: Option<&View>) -> Vec<Member> {
    let gossiped = |id: &types::NodeId| view.and_then(|v| v.get(id));
    let highest = view.and_then(|v| v.values().map(|p| p.meta.applied_index).max());
    service::cluster::members(m)
        .into_iter()
        .map(|s| {
            let peer: Option<&PeerState> = gossiped(&s.id);
            let applied = peer.map(|p| p.meta.applied_index);
            let lag = s.lag.or_else(|| Some(highest?.saturating_sub(applied?)));
            Member {
                role: if s.is_leader {
                    "leader"
                } else if s.voter {
                    "follower"
                } else {
                    "learner"
                },
                suffrage: if s.voter { "voter" } else { "learner" },
                id: s.id.to_string(),
                raft_addr: s.node.raft_addr,
                grpc_addr: s.node.grpc_addr,
                matched_index: s.matched_index,
                applied_index: applied,
                lag,
                gossip: peer.map(|p| p.liveness.to_string()),
            }
        })
        .collect()
}

fn gossip_status(view: &View, m: &openraft::RaftMetrics<types::TypeConfig>) -> GossipStatus {
    let members: BTreeMap<types::NodeId, types::NodeInfo> =
        m.membership_config.membership().nodes().map(|(id, n)| (id.clone(), n.clone())).collect();
    GossipStatus {
        nodes: view
            .values()
            .map(|p| GossipNode {
                id: p.meta.id.to_string(),
                liveness: p.liveness.to_string(),
                role: p.meta.role.clone(),
                leader: p.meta.leader.as_ref().map(ToString::to_string),
                applied_index: p.meta.applied_index,
                raft_addr: p.meta.addrs.raft_addr.clone(),
                grpc_addr: p.meta.addrs.grpc_addr.clone(),
            })
            .collect(),
        disagreements: gossip::compare(view, &members).iter().map(ToString::to_string).collect(),
    }
}
