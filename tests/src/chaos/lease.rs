//! The documented failure of lease reads under clock skew, shown on real processes.
//!
//! `LEASE` reads trust the leader's lease: the leader heard from a quorum less than an
//! election timeout ago **by its own monotonic clock**, so (if every clock runs at about the
//! same rate) no other leader can have been elected yet. [`lease_under_slow_clock`] breaks
//! that assumption on purpose: the leader is cut off from its peers and at the same moment
//! its clock (monotonic included, through libfaketime, see [`crate::clock`]) slows to a tenth
//! of real time, without a step. By its clock its lease still holds for ten times as long,
//! while the other nodes elect a new leader and acknowledge a new write. A `LEASE` read on
//! the old leader then returns the old value: a stale read. A `LINEARIZABLE` read on the
//! same node, which asks a quorum (ReadIndex), fails instead of answering.
//!
//! A clock 10 % slow opens the same window, a tenth of the lease long (tens of
//! milliseconds): too narrow to hit on demand, which is why the test slows it further.

use std::time::Duration;

use client::kv::{GetRequest, PutRequest};
use client::{Client, ClientOptions, Consistency, RaftState};

use super::{ChaosConfig, Net, NetFault, quick_options};
use crate::{BoxError, wait_for};

/// The cut-off leader's clock rate: its lease (an election timeout by its clock) lasts ten
/// times longer in real time, seconds in which the others elect a leader and write. With a
/// 10 % slow clock the same failure has a window of a tenth of the lease.
const SLOWED: f64 = 0.1;

/// What [`lease_under_slow_clock`] saw.
#[derive(Debug)]
pub struct LeaseFinding {
    /// The old leader's id.
    pub old_leader: String,
    /// The value a `LEASE` read on the old leader returned after the new write was
    /// acknowledged (`Err` with the error when it refused).
    pub lease_read: Result<Option<String>, String>,
    /// The same for a `LINEARIZABLE` read on the old leader.
    pub linearizable_read: Result<Option<String>, String>,
    /// The value written before the partition.
    pub before: String,
    /// The value written (and acknowledged) by the new leader.
    pub after: String,
}

async fn read(addr: &str, key: &str, consistency: Consistency) -> Result<Option<String>, String> {
    let options = ClientOptions {
        request_timeout: Duration::from_secs(2),
        max_retries: 0,
        no_forward: true,
        ..ClientOptions::default()
    };
    let c = Client::new([addr.to_string()], options).map_err(|e| e.to_string())?;
    let req = GetRequest { key: key.as_bytes().to_vec().into(), consistency: consistency as i32, ..Default::default() };
    let r = c.get_request(req).await.map_err(|e| e.to_string())?;
    Ok(r.kv.filter(|_| r.found).map(|kv| String::from_utf8_lossy(&kv.value).into_owned()))
}

async fn put(client: &Client, key: &str, value: &str) -> Result<(), BoxError> {
    let req = PutRequest {
        key: key.as_bytes().to_vec().into(),
        value: value.as_bytes().to_vec().into(),
        ..Default::default()
    };
    client.put_request(req).await?;
    Ok(())
}

/// Runs the scenario on a 3-node cluster (every node under libfaketime, the leader's clock
/// read on every call so the jump takes effect at once).
pub async fn lease_under_slow_clock(seed: u64) -> Result<LeaseFinding, BoxError> {
    let cfg = ChaosConfig { clock: true, ..ChaosConfig::quick(seed) };
    let mut net = Net::start_with(&cfg, true).await?;
    let key = format!("lease-{seed}");
    let leader = net.leader(&[]).await.ok_or("no leader")?;
    let leader_addr = net.nodes[leader].grpc_addr.clone();
    let all = Client::new(net.endpoints(), crate::test_options())?;
    put(&all, &key, "before").await?;
    // A lease read works while nothing is wrong.
    let fine = read(&leader_addr, &key, Consistency::Lease).await;
    if fine != Ok(Some("before".into())) {
        return Err(format!("a lease read on the healthy leader answered {fine:?}").into());
    }
    // The partition and the clock jump at the same moment.
    net.active.insert(0, NetFault::Isolate(leader));
    net.apply_links();
    net.clocks[leader].set_rate(net.nodes[leader].pid(), SLOWED)?;
    let others: Vec<String> =
        net.nodes.iter().enumerate().filter(|(i, _)| *i != leader).map(|(_, n)| n.grpc_addr.clone()).collect();
    wait_for("the other nodes to elect a new leader", Duration::from_secs(30), || async {
        for addr in &others {
            let Ok(c) = Client::new([addr.clone()], quick_options()) else { continue };
            if c.status().await.is_ok_and(|s| s.state == RaftState::Leader as i32) {
                return true;
            }
        }
        false
    })
    .await?;
    let majority = Client::new(others, crate::test_options())?;
    put(&majority, &key, "after").await?;
    let lease_read = read(&leader_addr, &key, Consistency::Lease).await;
    let linearizable_read = read(&leader_addr, &key, Consistency::Linearizable).await;
    // Heal, so the cluster can stop cleanly.
    net.clocks[leader].set_rate(net.nodes[leader].pid(), 1.0)?;
    net.active.clear();
    net.apply_links();
    for node in &mut net.nodes {
        node.stop();
    }
    Ok(LeaseFinding {
        old_leader: net.nodes[leader].id.clone(),
        lease_read,
        linearizable_read,
        before: "before".into(),
        after: "after".into(),
    })
}
