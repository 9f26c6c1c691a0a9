//! etcd's members on raftkv's nodes: member ids, URLs, and how a member that etcd's
//! `MemberAdd` adds becomes a raftkv node.
//!
//! etcd's `MemberAdd` carries only peer URLs; a raftkv node needs an id, a Raft address and a
//! client address. So `MemberAdd`:
//! - picks a new member id (FNV-1a of the cluster id, the peer address and the clock, like
//!   etcd's hash of its peer URLs, cluster name and time), never 0 and never one a member has,
//!   with its first hex digit not 0;
//! - names the new node by that id in hex, 16 digits ([`node_name`]): the id `etcdctl`
//!   prints ("Member 8e9e05c52164694d added ..."), which [`crate::member_id`] maps back to the
//!   same member id, so `member list`, `member promote` and `member remove` find it;
//! - takes the Raft address from the one peer URL (`http://HOST:PORT`), and the client
//!   address is the same address: the operator starts the node with `--raft_id <id>
//!   --raft_addr HOST:PORT --grpc_addr HOST:PORT` (one port for both, which raftkv serves).

use std::time::{SystemTime, UNIX_EPOCH};

use proto::admin::v1::{Member as AdminMember, Suffrage};
use proto::etcd::etcdserverpb::Member;
use service::check_addr;
use types::{NodeId, TypeConfig};

use crate::{EtcdError, member_id};

/// The member id a node id spells: 16 lowercase hex digits, the first not 0.
pub(crate) fn spelled_member_id(name: &str) -> Option<u64> {
    let b = name.as_bytes();
    if b.len() != 16 || b[0] == b'0' || !b.iter().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    u64::from_str_radix(name, 16).ok()
}

/// The raftkv node id of a member id [`new_member_id`] chose: its 16 hex digits.
pub(crate) fn node_name(member: u64) -> String {
    format!("{member:016x}")
}

/// A new member id for a member at `addr`: never 0, first hex digit not 0, not `taken`.
pub(crate) fn new_member_id(cluster_id: u64, addr: &str, taken: impl Fn(u64) -> bool) -> u64 {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    let mut salt = nanos;
    loop {
        let id = member_id(&format!("{cluster_id:x}/{addr}/{salt}")) | (1 << 63);
        if !taken(id) {
            return id;
        }
        salt = salt.wrapping_add(1);
    }
}

/// An address as a URL: `http://` in front unless it has a scheme.
pub(crate) fn url(addr: &str) -> String {
    if addr.contains("://") { addr.to_string() } else { format!("http://{addr}") }
}

/// The `HOST:PORT` of the one peer URL of a MemberAdd or MemberUpdate (`http://` or
/// `https://`). etcd allows several peer URLs; a raftkv node has one Raft address.
pub(crate) fn peer_addr(urls: &[String]) -> Result<String, EtcdError> {
    let [one] = urls else {
        if urls.is_empty() {
            return Err(EtcdError::MemberBadUrls);
        }
        return Err(EtcdError::Unsupported(format!(
            "raftkv takes one peer URL per member (its --raft_addr), not {}: {urls:?}",
            urls.len()
        )));
    };
    let addr = one.strip_prefix("http://").or_else(|| one.strip_prefix("https://")).ok_or(EtcdError::MemberBadUrls)?;
    let addr = addr.strip_suffix('/').unwrap_or(addr);
    check_addr("peer URL", addr).map_err(|_| EtcdError::MemberBadUrls)?;
    Ok(addr.to_string())
}

/// The node of the membership whose member id is `id`.
pub(crate) fn node_of(members: impl Iterator<Item = NodeId>, id: u64) -> Option<NodeId> {
    members.into_iter().find(|n| member_id(n.as_str()) == id)
}

/// The node ids of the membership in `m`.
pub(crate) fn node_ids(m: &openraft::RaftMetrics<TypeConfig>) -> Vec<NodeId> {
    m.membership_config.membership().nodes().map(|(id, _)| id.clone()).collect()
}

/// A member as the Admin service answers it, as etcd's `Member`.
pub(crate) fn from_admin(m: &AdminMember) -> Member {
    Member {
        id: member_id(&m.id),
        name: m.id.clone(),
        peer_ur_ls: vec![url(&m.raft_addr)],
        client_ur_ls: if m.grpc_addr.is_empty() { Vec::new() } else { vec![url(&m.grpc_addr)] },
        is_learner: m.suffrage == Suffrage::Learner as i32,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_added_members_node_name_spells_its_member_id() {
        let id = new_member_id(7, "127.0.0.1:5000", |_| false);
        assert!(id >> 60 != 0, "{id:x}");
        let name = node_name(id);
        assert_eq!(name, format!("{id:x}"), "etcdctl prints it so");
        assert!(NodeId::new(&name).is_ok());
        assert_eq!(member_id(&name), id);
        // Not an id spelled in hex: hashed, as before.
        assert_eq!(spelled_member_id("0123456789abcdef"), None);
        assert_eq!(spelled_member_id("8E9E05C52164694D"), None);
        assert_eq!(spelled_member_id("8e9e05c52164694"), None);
        assert_eq!(spelled_member_id("n1"), None);
        // A taken id is never chosen.
        let again = new_member_id(7, "127.0.0.1:5000", |i| i == id);
        assert_ne!(again, id);
    }

    #[test]
    fn one_http_peer_url_is_taken() {
        assert_eq!(peer_addr(&["http://127.0.0.1:5000".into()]).ok().as_deref(), Some("127.0.0.1:5000"));
        assert_eq!(peer_addr(&["https://h:1/".into()]).ok().as_deref(), Some("h:1"));
        for bad in [vec![], vec!["127.0.0.1:5000".to_string()], vec!["http://h".into()], vec!["http://h:0".into()]] {
            assert!(matches!(peer_addr(&bad), Err(EtcdError::MemberBadUrls)), "{bad:?}");
        }
        let two = peer_addr(&["http://a:1".into(), "http://b:2".into()]);
        assert!(matches!(two, Err(EtcdError::Unsupported(m)) if m.contains("one peer URL")));
    }

    #[test]
    fn addresses_become_urls() {
        assert_eq!(url("127.0.0.1:2379"), "http://127.0.0.1:2379");
        assert_eq!(url("https://a:1"), "https://a:1");
    }
}
