//! The admin commands of `raftkvctl`: `member`, `leader`, `status`, `snapshot`, `alarm`, `check`.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use crate::progress::{Progress, Unit};
use anyhow::Result;
use clap::Subcommand;
use client::admin::{AlarmMember, AlarmType, GossipLiveness, StatusResponse, WriteStagesResponse};
use client::{Client, Member, MembershipChangeResponse, RaftState, Suffrage};
use serde_json::{Value, json};

use crate::Output;

#[derive(Subcommand, Debug)]
pub(crate) enum AdminCommand {
    /// Cluster membership: list, add, remove, promote, demote.
    Member {
        #[command(subcommand)]
        command: MemberCommand,
    },
    /// Leadership: transfer it to another voter.
    Leader {
        #[command(subcommand)]
        command: LeaderCommand,
    },
    /// Status of the first reachable node: Raft state, term, leader, indexes, members; with
    /// --cluster, one row per member, each asked at its own address.
    #[command(
        after_help = "Examples:\n  raftkvctl status\n  raftkvctl --endpoints 127.0.0.1:40052 -o json status\n  raftkvctl status --cluster\n  raftkvctl -o json status --cluster\n  raftkvctl status --watch\n  raftkvctl status --cluster --watch\n  raftkvctl --endpoints LEADER status --stages"
    )]
    Status {
        /// Ask every member (at its gRPC address) and print one row each.
        #[arg(long)]
        cluster: bool,
        /// Keep the picture on screen, asked again every second, until Ctrl-C. On a terminal
        /// it is redrawn in place (on the alternate screen, which is left on exit); otherwise
        /// each picture is printed after the last, separated by a blank line.
        #[arg(long, conflicts_with = "stages")]
        watch: bool,
        /// Instead, print where the time of the writes proposed on that node went, stage by
        /// stage, since it started or since the last reset (`bench --stages` resets them).
        /// Ask the leader: it proposes every write.
        #[arg(long, conflicts_with = "cluster")]
        stages: bool,
    },
    /// Make the first reachable node take a snapshot and print its index; `snapshot save FILE`
    /// saves a backup of the cluster's data to FILE.
    #[command(
        args_conflicts_with_subcommands = true,
        after_help = "Examples:\n  raftkvctl snapshot\n  raftkvctl snapshot save backup.rkvs\n  raftkvctl -o json snapshot save /var/backups/raftkv-$(date +%F).rkvs\n\nRestore a saved file into a new one-node cluster with `raftkv restore FILE ...`."
    )]
    Snapshot {
        #[command(subcommand)]
        command: Option<SnapshotCommand>,
        /// How long to wait for the snapshot to be built.
        #[arg(long, default_value = "120s", value_parser = duration::parse, value_name = "DURATION")]
        timeout: Duration,
    },
    /// Compare the members' key-value state (etcdctl's `endpoint hashkv --cluster`): every
    /// member hashes its state at the same applied index; prints one row per member and
    /// exits with status 2 when a member's hash differs from the others', or when the members
    /// could not be compared (unreachable, or writes kept them at different indexes).
    #[command(after_help = "Each member is asked at its own address for the hash of its state once it has applied\n\
                      everything committed before the check (a barrier on the leader). Hashes are compared\n\
                      only between members at the same index: while writes go on, members may answer at\n\
                      different indexes; the check then asks again at the highest (up to 5 rounds). Run it\n\
                      when writes pause for a certain answer.\n\nExamples:\n  raftkvctl check\n  raftkvctl -o json check")]
    Check {
        /// How long each member may take to reach the index and hash its state.
        #[arg(long, default_value = "60s", value_parser = duration::parse, value_name = "DURATION")]
        timeout: Duration,
    },
    /// Alarms (etcdctl's verbs): `list` the active ones, `disarm` them. A NOSPACE alarm makes
    /// the cluster refuse writes that add data; free space first (delete keys, grow the
    /// disk), then disarm.
    #[command(
        after_help = "Examples:\n  raftkvctl alarm list\n  raftkvctl alarm disarm\n  raftkvctl alarm disarm --member n2"
    )]
    Alarm {
        #[command(subcommand)]
        command: AlarmCommand,
    },
}

#[derive(Subcommand, Debug)]
pub(crate) enum AlarmCommand {
    /// List the active alarms: one line per alarm, `memberID:<id> alarm:<TYPE>`.
    List,
    /// Clear the active alarms (of one member with --member), through the Raft log. A member
    /// still short of space raises its alarm again at its next check (within a second).
    Disarm {
        /// Clear this member's alarms only.
        #[arg(long)]
        member: Option<String>,
    },
}

fn alarm_name(a: i32) -> &'static str {
    match AlarmType::try_from(a) {
        Ok(AlarmType::Nospace) => "NOSPACE",
        _ => "NONE",
    }
}

fn alarm_json(a: &AlarmMember) -> Value {
    json!({ "member_id": a.member_id, "alarm": alarm_name(a.alarm), "detail": a.detail, "index": a.index })
}

/// Prints alarms as etcdctl does (`memberID:<id> alarm:<TYPE>`), with what was measured.
fn print_alarms(out: &mut impl Write, output: Output, alarms: &[AlarmMember]) -> std::io::Result<()> {
    if output == Output::Json {
        return writeln!(out, "{}", json!({ "alarms": alarms.iter().map(alarm_json).collect::<Vec<_>>() }));
    }
    for a in alarms {
        writeln!(
            out,
            "memberID:{} alarm:{} ({}; raised at index {})",
            a.member_id,
            alarm_name(a.alarm),
            a.detail,
            a.index
        )?;
    }
    Ok(())
}

#[derive(Subcommand, Debug)]
pub(crate) enum MemberCommand {
    /// Add a node: as a voter (it joins as a learner, catches up, then is promoted), or with
    /// --learner as a learner only.
    #[command(
        after_help = "Examples:\n  raftkvctl member add nodeB --raft-addr 127.0.0.1:50052 --grpc-addr 127.0.0.1:40052\n  raftkvctl member add nodeD --raft-addr 127.0.0.1:50054 --grpc-addr 127.0.0.1:40054 --learner"
    )]
    Add {
        /// The new node's --raft_id.
        id: String,
        /// The new node's --raft_addr.
        #[arg(long = "raft-addr")]
        raft_addr: String,
        /// The new node's --grpc_addr.
        #[arg(long = "grpc-addr")]
        grpc_addr: String,
        /// Add it as a learner (receives the log, does not vote); promote it later.
        #[arg(long)]
        learner: bool,
        /// How long to wait for the node to catch up and join.
        #[arg(long, default_value = "120s", value_parser = duration::parse, value_name = "DURATION")]
        timeout: Duration,
    },
    /// List the members: suffrage, addresses, leader, and (from the leader) how far each has
    /// replicated the log.
    #[command(
        after_help = "Examples:\n  raftkvctl member list\n  raftkvctl -o json member list\n\nMATCHED is the last log index known to be on the member, LAG how many entries it is\nbehind the leader; both come from the leader (\"-\" when it cannot be reached)."
    )]
    List,
    /// Remove a node from the cluster (never the last voter; removing the leader hands
    /// leadership over first).
    #[command(after_help = "Example:\n  raftkvctl member remove nodeC")]
    Remove {
        /// The member's id.
        id: String,
        /// How long to wait.
        #[arg(long, default_value = "60s", value_parser = duration::parse, value_name = "DURATION")]
        timeout: Duration,
    },
    /// Make a learner a voter, once it has caught up.
    #[command(after_help = "Example:\n  raftkvctl member promote nodeD")]
    Promote {
        /// The learner's id.
        id: String,
        /// How long to wait for it to catch up.
        #[arg(long, default_value = "120s", value_parser = duration::parse, value_name = "DURATION")]
        timeout: Duration,
    },
    /// Make a voter a learner (never the last voter; demoting the leader hands leadership
    /// over first).
    #[command(after_help = "Example:\n  raftkvctl member demote nodeC")]
    Demote {
        /// The voter's id.
        id: String,
        /// How long to wait.
        #[arg(long, default_value = "60s", value_parser = duration::parse, value_name = "DURATION")]
        timeout: Duration,
    },
}

#[derive(Subcommand, Debug)]
pub(crate) enum LeaderCommand {
    /// Hand leadership to another voter: the most caught-up one, or the one given with --to.
    /// Returns when the new leader is known.
    #[command(after_help = "Examples:\n  raftkvctl leader transfer\n  raftkvctl leader transfer --to nodeB")]
    Transfer {
        /// The voter to hand leadership to.
        #[arg(long)]
        to: Option<String>,
        /// How long to wait for the new leader.
        #[arg(long, default_value = "30s", value_parser = duration::parse, value_name = "DURATION")]
        timeout: Duration,
    },
}

#[derive(Subcommand, Debug)]
pub(crate) enum SnapshotCommand {
    /// Save a backup: a snapshot holding every write committed before the call, streamed
    /// from the first reachable node and checked (size and CRC32) before it is renamed to FILE.
    #[command(after_help = "Example:\n  raftkvctl snapshot save backup.rkvs")]
    Save {
        /// Where to write the backup.
        file: PathBuf,
        /// How long the whole transfer may take.
        #[arg(long, default_value = "600s", value_parser = duration::parse, value_name = "DURATION")]
        timeout: Duration,
    },
}

fn suffrage(m: &Member) -> &'static str {
    if m.suffrage == Suffrage::Voter as i32 { "voter" } else { "learner" }
}

pub(crate) fn member_json(m: &Member) -> Value {
    json!({
        "id": m.id,
        "suffrage": suffrage(m),
        "raft_addr": m.raft_addr,
        "grpc_addr": m.grpc_addr,
        "is_leader": m.is_leader,
        "matched_index": m.matched_index,
        "lag": m.lag,
    })
}

pub(crate) fn state_name(state: i32) -> &'static str {
    match RaftState::try_from(state) {
        Ok(RaftState::Leader) => "leader",
        Ok(RaftState::Follower) => "follower",
        Ok(RaftState::Candidate) => "candidate",
        Ok(RaftState::Learner) => "learner",
        Ok(RaftState::Shutdown) => "shutdown",
        _ => "unknown",
    }
}

/// Prints `rows` under `header`, columns padded to their widest cell.
fn print_table<const N: usize>(out: &mut impl Write, header: [&str; N], rows: &[[String; N]]) -> std::io::Result<()> {
    let mut widths = header.map(str::len);
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let line = |cells: Vec<&str>| {
        cells.iter().zip(widths).map(|(c, w)| format!("{c:<w$}")).collect::<Vec<_>>().join("  ").trim_end().to_string()
    };
    writeln!(out, "{}", line(header.to_vec()))?;
    for row in rows {
        writeln!(out, "{}", line(row.iter().map(String::as_str).collect()))?;
    }
    Ok(())
}

fn opt(v: Option<u64>) -> String {
    v.map_or_else(|| "-".to_string(), |v| v.to_string())
}

pub(crate) fn print_members(out: &mut impl Write, members: &[Member]) -> std::io::Result<()> {
    let rows: Vec<[String; 7]> = members
        .iter()
        .map(|m| {
            [
                m.id.clone(),
                suffrage(m).into(),
                m.raft_addr.clone(),
                m.grpc_addr.clone(),
                m.is_leader.to_string(),
                opt(m.matched_index),
                opt(m.lag),
            ]
        })
        .collect();
    print_table(out, ["ID", "SUFFRAGE", "RAFT ADDRESS", "GRPC ADDRESS", "LEADER", "MATCHED", "LAG"], &rows)
}

fn print_change(
    out: &mut impl Write,
    output: Output,
    resp: &MembershipChangeResponse,
    done: &str,
    unchanged: &str,
) -> Result<()> {
    if output == Output::Json {
        writeln!(
            out,
            "{}",
            json!({
                "index": resp.index,
                "changed": resp.changed,
                "members": resp.members.iter().map(member_json).collect::<Vec<_>>(),
            })
        )?;
    } else {
        let what = if resp.changed { done } else { unchanged };
        writeln!(out, "{what} (membership index {})", resp.index)?;
        print_members(out, &resp.members)?;
    }
    Ok(())
}

/// The status of the leader (its members carry replication progress) when the leader can be
/// reached; otherwise of the first reachable node.
async fn members(client: &Client) -> Result<StatusResponse> {
    let status = client.status().await?;
    if status.state == RaftState::Leader as i32 {
        return Ok(status);
    }
    let leader = status.members.iter().find(|m| m.is_leader).map(|m| m.grpc_addr.clone());
    if let Some(addr) = leader
        && let Ok(s) = client.status_of(&addr).await
        && s.state == RaftState::Leader as i32
    {
        return Ok(s);
    }
    Ok(status)
}

/// The gRPC address of the node whose status `s` is, as its membership records it.
fn grpc_addr_of(s: &StatusResponse) -> Result<String> {
    match s.members.iter().find(|m| m.id == s.node_id) {
        Some(m) => Ok(m.grpc_addr.clone()),
        None => anyhow::bail!("node {} is not in the membership it reports; cannot address it", s.node_id),
    }
}

/// The gRPC address of the leader, asked through the endpoints.
pub(crate) async fn leader_grpc_addr(client: &Client) -> Result<String> {
    let s = members(client).await?;
    if s.state != RaftState::Leader as i32 {
        anyhow::bail!("no leader could be reached (node {} sees leader {:?})", s.node_id, s.leader_id);
    }
    grpc_addr_of(&s)
}

fn ms(ns: u64) -> f64 {
    ns as f64 / 1e6
}

/// The per-stage timing as JSON: milliseconds.
pub(crate) fn stages_json(s: &WriteStagesResponse) -> Value {
    let stages: Vec<Value> = s
        .stages
        .iter()
        .map(|st| {
            json!({
                "name": st.name,
                "count": st.count,
                "step_p50_ms": ms(st.step_p50_ns),
                "step_p99_ms": ms(st.step_p99_ns),
                "step_mean_ms": if st.count == 0 { 0.0 } else { ms(st.step_sum_ns) / st.count as f64 },
                "step_max_ms": ms(st.step_max_ns),
                "total_p50_ms": ms(st.total_p50_ns),
                "total_p99_ms": ms(st.total_p99_ns),
                "total_max_ms": ms(st.total_max_ns),
                "overtaken": st.overtaken,
            })
        })
        .collect();
    json!({
        "node_id": s.node_id,
        "writes": s.writes,
        "unmatched": s.unmatched,
        "period_s": s.period_ns as f64 / 1e9,
        "stages": stages,
    })
}

/// The per-stage timing as a table: one row per stage, times in milliseconds.
pub(crate) fn print_stages(out: &mut impl Write, s: &WriteStagesResponse) -> std::io::Result<()> {
    writeln!(
        out,
        "Write stages on {} ({} writes over {:.1} s, {} unmatched; ms; STEP from the stage before, TOTAL from proposed):",
        s.node_id,
        s.writes,
        s.period_ns as f64 / 1e9,
        s.unmatched
    )?;
    let f = |ns: u64| format!("{:.3}", ms(ns));
    let rows: Vec<[String; 8]> = s
        .stages
        .iter()
        .map(|st| {
            let mean = st.step_sum_ns.checked_div(st.count).unwrap_or(0);
            [
                st.name.clone(),
                st.count.to_string(),
                f(st.step_p50_ns),
                f(st.step_p99_ns),
                f(mean),
                f(st.total_p50_ns),
                f(st.total_p99_ns),
                st.overtaken.to_string(),
            ]
        })
        .collect();
    print_table(
        out,
        ["STAGE", "COUNT", "STEP P50", "STEP P99", "STEP MEAN", "TOTAL P50", "TOTAL P99", "OVERTAKEN"],
        &rows,
    )
}

fn liveness_name(l: i32) -> &'static str {
    match GossipLiveness::try_from(l) {
        Ok(GossipLiveness::Live) => "live",
        Ok(GossipLiveness::Left) => "left",
        Ok(GossipLiveness::Dead) => "dead",
        _ => "unknown",
    }
}

/// Gossip's view beside the membership, as JSON (`enabled`, `nodes`, `disagreements`).
pub(crate) fn gossip_json(s: &StatusResponse) -> Value {
    let nodes: Vec<Value> = s
        .gossip_nodes
        .iter()
        .map(|g| {
            json!({
                "id": g.id,
                "liveness": liveness_name(g.liveness),
                "member": s.members.iter().any(|m| m.id == g.id),
                "role": g.role,
                "leader_id": g.leader_id,
                "applied_index": g.applied_index,
                "raft_addr": g.raft_addr,
                "grpc_addr": g.grpc_addr,
                "gossip_addr": g.gossip_addr,
                "version": g.version,
            })
        })
        .collect();
    let drops = s.gossip_drops.as_ref().map(|d| {
        json!({
            "unauthenticated": d.unauthenticated,
            "replayed": d.replayed,
            "stale": d.stale,
            "malformed": d.malformed,
            "oversize": d.oversize,
        })
    });
    json!({
        "enabled": s.gossip_enabled,
        "sealed": s.gossip_sealed,
        "dropped": drops,
        "nodes": nodes,
        "disagreements": s.disagreements,
    })
}

/// Gossip's view (as the node that answered sees it), then each disagreement with the
/// membership on a line starting with `!`. Nothing when that node runs without gossip.
pub(crate) fn print_gossip(out: &mut impl Write, s: &StatusResponse) -> std::io::Result<()> {
    if !s.gossip_enabled {
        return Ok(());
    }
    writeln!(out)?;
    writeln!(out, "Gossip, as {} sees it:", s.node_id)?;
    let rows: Vec<[String; 8]> = s
        .gossip_nodes
        .iter()
        .map(|g| {
            let member = s.members.iter().any(|m| m.id == g.id);
            [
                g.id.clone(),
                liveness_name(g.liveness).into(),
                if member { "yes" } else { "no" }.into(),
                if g.role.is_empty() { "-".into() } else { g.role.clone() },
                if g.leader_id.is_empty() { "-".into() } else { g.leader_id.clone() },
                g.applied_index.to_string(),
                g.grpc_addr.clone(),
                g.gossip_addr.clone(),
            ]
        })
        .collect();
    print_table(
        out,
        ["ID", "GOSSIP", "MEMBER", "ROLE", "SEES LEADER", "APPLIED", "GRPC ADDRESS", "GOSSIP ADDRESS"],
        &rows,
    )?;
    if s.disagreements.is_empty() {
        writeln!(out, "Gossip agrees with the membership.")?;
    } else {
        for d in &s.disagreements {
            writeln!(out, "! {d}")?;
        }
    }
    match &s.gossip_drops {
        Some(d) if s.gossip_sealed => writeln!(
            out,
            "Gossip is sealed; datagrams dropped: {} unauthenticated, {} replayed, {} stale, {} malformed, {} too large to send.",
            d.unauthenticated, d.replayed, d.stale, d.malformed, d.oversize
        )?,
        _ => writeln!(out, "Gossip is not sealed (no --gossip-key-file).")?,
    }
    Ok(())
}

const STATUS_HEADER: [&str; 10] =
    ["ID", "GRPC ADDRESS", "STATE", "TERM", "LEADER", "LAST INDEX", "COMMITTED", "APPLIED", "SNAPSHOT", "ERROR"];

fn status_row(id: &str, addr: &str, s: Result<&StatusResponse, &str>) -> [String; 10] {
    match s {
        Ok(s) => [
            id.into(),
            addr.into(),
            state_name(s.state).into(),
            s.term.to_string(),
            if s.leader_id.is_empty() { "-".into() } else { s.leader_id.clone() },
            s.last_log_index.to_string(),
            s.committed_index.to_string(),
            s.applied_index.to_string(),
            s.snapshot_index.to_string(),
            String::new(),
        ],
        Err(e) => [
            id.into(),
            addr.into(),
            "unreachable".into(),
            "-".into(),
            "-".into(),
            "-".into(),
            "-".into(),
            "-".into(),
            "-".into(),
            e.into(),
        ],
    }
}

fn status_json(s: &StatusResponse) -> Value {
    json!({
        "node_id": s.node_id,
        "state": state_name(s.state),
        "term": s.term,
        "leader_id": s.leader_id,
        "last_log_index": s.last_log_index,
        "committed_index": s.committed_index,
        "applied_index": s.applied_index,
        "snapshot_index": s.snapshot_index,
        "purged_index": s.purged_index,
        "membership_index": s.membership_index,
        "members": s.members.iter().map(member_json).collect::<Vec<_>>(),
        "gossip": gossip_json(s),
        "alarms": s.alarms.iter().map(alarm_json).collect::<Vec<_>>(),
    })
}

async fn status(client: &Client, output: Output, cluster: bool, out: &mut impl Write) -> Result<()> {
    let s = client.status().await?;
    if !cluster {
        match output {
            Output::Json => writeln!(out, "{}", status_json(&s))?,
            Output::Table => {
                let addr = s.members.iter().find(|m| m.id == s.node_id).map(|m| m.grpc_addr.as_str()).unwrap_or("");
                print_table(out, STATUS_HEADER, &[status_row(&s.node_id, addr, Ok(&s))])?;
            }
            Output::Simple => {
                writeln!(out, "node:        {}", s.node_id)?;
                writeln!(out, "state:       {}", state_name(s.state))?;
                writeln!(out, "term:        {}", s.term)?;
                writeln!(out, "leader:      {}", if s.leader_id.is_empty() { "(none)" } else { &s.leader_id })?;
                writeln!(out, "last index:  {}", s.last_log_index)?;
                writeln!(out, "committed:   {}", s.committed_index)?;
                writeln!(out, "applied:     {}", s.applied_index)?;
                writeln!(out, "snapshot:    {}", s.snapshot_index)?;
                if s.alarms.is_empty() {
                    writeln!(out, "alarms:      (none)")?;
                }
                for a in &s.alarms {
                    writeln!(out, "alarm:       {} on {}: {}", alarm_name(a.alarm), a.member_id, a.detail)?;
                }
                writeln!(out)?;
                print_members(out, &s.members)?;
                print_gossip(out, &s)?;
            }
        }
        return Ok(());
    }
    let mut rows = Vec::new();
    let mut objects = Vec::new();
    let mut unreachable = 0;
    for m in &s.members {
        match client.status_of(&m.grpc_addr).await {
            Ok(st) => {
                rows.push(status_row(&m.id, &m.grpc_addr, Ok(&st)));
                objects.push(json!({ "id": m.id, "grpc_addr": m.grpc_addr, "status": status_json(&st) }));
            }
            Err(e) => {
                unreachable += 1;
                let e = e.message();
                rows.push(status_row(&m.id, &m.grpc_addr, Err(&e)));
                objects.push(json!({ "id": m.id, "grpc_addr": m.grpc_addr, "error": e }));
            }
        }
    }
    if output == Output::Json {
        writeln!(out, "{}", json!({ "members": objects }))?;
    } else {
        print_table(out, STATUS_HEADER, &rows)?;
    }
    if unreachable > 0 {
        anyhow::bail!("{unreachable} of {} members could not be reached", s.members.len());
    }
    Ok(())
}

/// How many times `check` asks every member again at a higher index when they answered at
/// different indexes (writes in flight).
const CHECK_ROUNDS: usize = 5;

/// One member's answer to `check`.
struct Checked {
    id: String,
    answer: std::result::Result<client::admin::HashKvResponse, String>,
}

/// `raftkvctl check`: see [`AdminCommand::Check`].
async fn check(client: &Client, output: Output, out: &mut impl Write, timeout: Duration) -> Result<()> {
    let status = members(client).await?;
    let mut target = client.barrier(timeout).await?.index;
    let mut answers = Vec::new();
    for round in 1..=CHECK_ROUNDS {
        answers.clear();
        for m in &status.members {
            let answer = client.hash_kv_of(&m.grpc_addr, target, timeout).await.map_err(|e| e.to_string());
            answers.push(Checked { id: m.id.clone(), answer });
        }
        let indexes: std::collections::BTreeSet<u64> =
            answers.iter().filter_map(|c| c.answer.as_ref().ok().map(|h| h.index)).collect();
        match indexes.last() {
            Some(&highest) if indexes.len() > 1 && round < CHECK_ROUNDS => target = highest,
            _ => break,
        }
    }
    // The reference: the hash most members gave at the most common index.
    let mut tally: std::collections::BTreeMap<(u64, u32), usize> = std::collections::BTreeMap::new();
    for h in answers.iter().filter_map(|c| c.answer.as_ref().ok()) {
        *tally.entry((h.index, h.hash)).or_default() += 1;
    }
    let reference = tally.iter().max_by_key(|(_, n)| **n).map(|(k, _)| *k);
    let verdict = |c: &Checked| match (&c.answer, reference) {
        (Err(_), _) => "unreachable",
        (Ok(h), Some((index, _))) if h.index != index => "other index",
        (Ok(h), Some((_, hash))) if h.hash == hash => "match",
        _ => "MISMATCH",
    };
    let all_match = answers.iter().all(|c| verdict(c) == "match");
    if output == Output::Json {
        let rows: Vec<Value> = answers
            .iter()
            .map(|c| match &c.answer {
                Ok(h) => json!({ "id": c.id, "index": h.index, "hash": h.hash, "keys": h.keys, "result": verdict(c) }),
                Err(e) => json!({ "id": c.id, "error": e, "result": verdict(c) }),
            })
            .collect();
        writeln!(out, "{}", json!({ "consistent": all_match, "members": rows }))?;
    } else {
        let rows: Vec<[String; 5]> = answers
            .iter()
            .map(|c| match &c.answer {
                Ok(h) => [
                    c.id.clone(),
                    h.index.to_string(),
                    format!("{:#010x}", h.hash),
                    h.keys.to_string(),
                    verdict(c).to_string(),
                ],
                Err(e) => [c.id.clone(), "-".into(), "-".into(), "-".into(), format!("unreachable: {e}")],
            })
            .collect();
        print_table(out, ["MEMBER", "INDEX", "HASH", "KEYS", "RESULT"], &rows)?;
    }
    if all_match {
        return Ok(());
    }
    let bad: Vec<String> =
        answers.iter().filter(|c| verdict(c) != "match").map(|c| format!("{} ({})", c.id, verdict(c))).collect();
    if answers.iter().any(|c| verdict(c) == "MISMATCH") {
        anyhow::bail!("the members' state differs: {}", bad.join(", "));
    }
    anyhow::bail!(
        "not every member could be compared: {} (members answer at one index only when no write is in flight; run again when writes pause)",
        bad.join(", ")
    )
}

pub(crate) async fn execute(cmd: &AdminCommand, client: &Client, output: Output, out: &mut impl Write) -> Result<()> {
    let json = output == Output::Json;
    match cmd {
        AdminCommand::Check { timeout } => check(client, output, out, *timeout).await?,
        AdminCommand::Member { command } => match command {
            MemberCommand::Add { id, raft_addr, grpc_addr, learner: false, timeout } => {
                let resp = client.add_voter(id, raft_addr, grpc_addr, *timeout).await?;
                let resp = MembershipChangeResponse { index: resp.index, members: resp.members, changed: true };
                if json {
                    print_change(out, output, &resp, "", "")?;
                } else {
                    writeln!(out, "Member {id} is a voter (membership index {})", resp.index)?;
                    print_members(out, &resp.members)?;
                }
            }
            MemberCommand::Add { id, raft_addr, grpc_addr, learner: true, timeout } => {
                let resp = client.add_learner(id, raft_addr, grpc_addr, *timeout).await?;
                let done = format!("Member {id} added as a learner");
                print_change(out, output, &resp, &done, &format!("Member {id} is already a learner"))?;
            }
            MemberCommand::List => {
                let status = members(client).await?;
                if json {
                    let members: Vec<Value> = status.members.iter().map(member_json).collect();
                    writeln!(out, "{}", json!({ "members": members, "gossip": gossip_json(&status) }))?;
                } else {
                    print_members(out, &status.members)?;
                    print_gossip(out, &status)?;
                }
            }
            MemberCommand::Remove { id, timeout } => {
                let resp = client.remove(id, *timeout).await?;
                let unchanged = format!("{id} is not a member; nothing changed");
                print_change(out, output, &resp, &format!("Member {id} removed"), &unchanged)?;
            }
            MemberCommand::Promote { id, timeout } => {
                let resp = client.promote(id, *timeout).await?;
                let unchanged = format!("Member {id} is already a voter");
                print_change(out, output, &resp, &format!("Member {id} promoted to voter"), &unchanged)?;
            }
            MemberCommand::Demote { id, timeout } => {
                let resp = client.demote(id, *timeout).await?;
                let unchanged = format!("Member {id} is already a learner");
                print_change(out, output, &resp, &format!("Member {id} demoted to learner"), &unchanged)?;
            }
        },
        AdminCommand::Leader { command: LeaderCommand::Transfer { to, timeout } } => {
            let resp = client.transfer_leader(to.as_deref(), *timeout).await?;
            if json {
                writeln!(
                    out,
                    "{}",
                    json!({ "previous_leader_id": resp.previous_leader_id, "leader_id": resp.leader_id, "term": resp.term })
                )?;
            } else if resp.previous_leader_id == resp.leader_id {
                writeln!(out, "{} is already the leader (term {})", resp.leader_id, resp.term)?;
            } else {
                writeln!(
                    out,
                    "Leadership transferred from {} to {} (term {})",
                    resp.previous_leader_id, resp.leader_id, resp.term
                )?;
            }
        }
        AdminCommand::Status { stages: true, .. } => {
            let s = client.status().await?;
            let addr = grpc_addr_of(&s)?;
            let stages = client.write_stages_of(&addr, false).await?;
            if json {
                writeln!(out, "{}", stages_json(&stages))?;
            } else {
                print_stages(out, &stages)?;
            }
        }
        AdminCommand::Status { cluster, stages: false, watch: true } => {
            crate::status_watch::run(out, async |frame: &mut Vec<u8>| status(client, output, *cluster, frame).await)
                .await?;
        }
        AdminCommand::Status { cluster, stages: false, watch: false } => status(client, output, *cluster, out).await?,
        AdminCommand::Alarm { command: AlarmCommand::List } => {
            print_alarms(out, output, &client.alarm_list().await?.alarms)?;
        }
        AdminCommand::Alarm { command: AlarmCommand::Disarm { member } } => {
            let before = client.alarm_list().await?.alarms;
            let after = client.alarm_disarm(member.as_deref()).await?.alarms;
            if json {
                writeln!(
                    out,
                    "{}",
                    json!({ "disarmed": before.iter().map(alarm_json).collect::<Vec<_>>(), "alarms": after.iter().map(alarm_json).collect::<Vec<_>>() })
                )?;
            } else {
                for a in &before {
                    writeln!(out, "memberID:{} alarm:{} disarmed", a.member_id, alarm_name(a.alarm))?;
                }
                if !after.is_empty() {
                    writeln!(out, "still active:")?;
                    print_alarms(out, output, &after)?;
                }
            }
        }
        AdminCommand::Snapshot { command: None, timeout } => {
            let resp = client.snapshot(*timeout).await?;
            if json {
                writeln!(out, "{}", json!({ "node_id": resp.node_id, "index": resp.index, "term": resp.term }))?;
            } else {
                writeln!(out, "{}", resp.index)?;
            }
        }
        AdminCommand::Snapshot { command: Some(SnapshotCommand::Save { file, timeout }), .. } => {
            let progress = Progress::new("snapshot save", 0, Unit::Bytes);
            let mut report = |received: u64, size: u64| {
                if received == 0 {
                    progress.set_total(size);
                }
                progress.inc(received.saturating_sub(progress.done()));
            };
            let info = client.backup_to_file_with_progress(file, *timeout, &mut report).await;
            progress.finish();
            let info = info?;
            if json {
                writeln!(
                    out,
                    "{}",
                    json!({
                        "path": file.display().to_string(),
                        "node_id": info.node_id,
                        "index": info.index,
                        "term": info.term,
                        "size": info.size,
                        "crc32": info.crc32,
                    })
                )?;
            } else {
                writeln!(out, "Snapshot saved at {}", file.display())?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: &str, voter: bool, matched: Option<u64>) -> Member {
        Member {
            id: id.into(),
            suffrage: if voter { Suffrage::Voter } else { Suffrage::Learner } as i32,
            raft_addr: format!("{id}:1"),
            grpc_addr: format!("{id}:2"),
            is_leader: id == "a",
            matched_index: matched,
            lag: matched.map(|m| 10 - m),
        }
    }

    #[test]
    fn member_table_has_progress_columns() -> std::io::Result<()> {
        let mut out = Vec::new();
        print_members(&mut out, &[member("a", true, Some(10)), member("bb", false, None)])?;
        let text = String::from_utf8_lossy(&out);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "ID  SUFFRAGE  RAFT ADDRESS  GRPC ADDRESS  LEADER  MATCHED  LAG");
        assert_eq!(lines[1], "a   voter     a:1           a:2           true    10       0");
        assert_eq!(lines[2], "bb  learner   bb:1          bb:2          false   -        -");
        Ok(())
    }

    #[test]
    fn member_json_has_progress() {
        let v = member_json(&member("a", true, Some(7)));
        assert_eq!(v["matched_index"], 7);
        assert_eq!(v["lag"], 3);
        assert_eq!(v["suffrage"], "voter");
        let v = member_json(&member("b", false, None));
        assert!(v["matched_index"].is_null());
    }

    #[test]
    fn stages_print_one_row_per_stage_in_milliseconds() -> std::io::Result<()> {
        let stage = |name: &str, p50: u64| client::admin::WriteStage {
            name: name.into(),
            count: 4,
            step_p50_ns: p50,
            step_p99_ns: 2 * p50,
            step_max_ns: 2 * p50,
            step_sum_ns: 4 * p50,
            total_p50_ns: 3 * p50,
            total_p99_ns: 4 * p50,
            total_max_ns: 4 * p50,
            overtaken: 1,
        };
        let s = WriteStagesResponse {
            node_id: "a".into(),
            writes: 4,
            unmatched: 0,
            period_ns: 2_500_000_000,
            stages: vec![stage("appended", 50_000), stage("durable", 1_000_000)],
        };
        let mut out = Vec::new();
        print_stages(&mut out, &s)?;
        let text = String::from_utf8_lossy(&out);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("Write stages on a (4 writes over 2.5 s, 0 unmatched"), "{}", lines[0]);
        assert_eq!(lines[1], "STAGE     COUNT  STEP P50  STEP P99  STEP MEAN  TOTAL P50  TOTAL P99  OVERTAKEN");
        assert_eq!(lines[3], "durable   4      1.000     2.000     1.000      3.000      4.000      1");
        let v = stages_json(&s);
        assert_eq!(v["stages"][0]["name"], "appended");
        assert_eq!(v["stages"][0]["step_p50_ms"], 0.05);
        assert_eq!(v["stages"][1]["step_mean_ms"], 1.0);
        Ok(())
    }

    #[test]
    fn unreachable_rows_say_why() {
        let row = status_row("c", "c:2", Err("no endpoint reachable"));
        assert_eq!(row[2], "unreachable");
        assert_eq!(row[9], "no endpoint reachable");
    }
}
