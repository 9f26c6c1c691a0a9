//! `raftkv recover` and `raftkv restore`: offline operations on a stopped node's data.

#![allow(clippy::print_stdout)] // these commands report what they wrote on stdout

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use resolver::{parse_addr, parse_peer as parse_voter};
use types::{NodeId, NodeInfo};

#[derive(Subcommand, Debug)]
pub(crate) enum Offline {
    /// Disaster recovery after a loss of quorum: make the stopped node --raft_id the only
    /// voter (or the voters given) of its cluster, keeping its data.
    ///
    /// Everything in this node's log becomes committed, then the node starts as the leader
    /// of a new term. Run it on ONE survivor only, the one with the highest last log index;
    /// remove the other nodes' directories and let them join again, empty. The old members
    /// must never come back with their old data.
    #[command(after_help = RECOVER_EXAMPLES)]
    Recover(RecoverArgs),
    /// Seed a new one-node cluster from a backup (`raftkvctl snapshot save FILE`): the file is
    /// verified whole first, installed, and this node becomes the only voter. Other nodes then
    /// join it normally.
    #[command(after_help = RESTORE_EXAMPLES)]
    Restore(RestoreArgs),
}

const RECOVER_EXAMPLES: &str = "\
Examples (nodeB and nodeC are lost; nodeA survives, stopped):
  raftkv recover --raft_id nodeA --raft_data_dir /tmp/raftkv
  raftkv --raft_id nodeA --grpc_addr localhost:40051 --raft_addr localhost:50051 --raft_data_dir /tmp/raftkv
  rm -rf /tmp/raftkv/nodeB && raftkv --raft_id nodeB ... --join localhost:40051
With other voters (they must start with no state):
  raftkv recover --raft_id nodeA --raft_data_dir /tmp/raftkv \\
    --voters nodeA=localhost:50051@localhost:40051,nodeD=localhost:50054@localhost:40054";

const RESTORE_EXAMPLES: &str = "\
Example:
  raftkvctl --endpoints localhost:40051 snapshot save backup.rkvs
  raftkv restore backup.rkvs --raft_id nodeX --raft_data_dir /tmp/new --raft_addr localhost:50061 --grpc_addr localhost:40061
  raftkv --raft_id nodeX --raft_data_dir /tmp/new --raft_addr localhost:50061 --grpc_addr localhost:40061";

#[derive(Args, Debug)]
pub(crate) struct RecoverArgs {
    /// The surviving node's id.
    #[arg(long = "raft_id", alias = "raft-id", value_parser = crate::parse_id)]
    raft_id: NodeId,
    /// Its base data directory (its data is in <raft_data_dir>/<raft_id>/).
    #[arg(long = "raft_data_dir", alias = "raft-data-dir", default_value_os_t = std::env::temp_dir())]
    raft_data_dir: PathBuf,
    /// The voters of the recovered cluster, as ID=RAFT_ADDR@GRPC_ADDR, comma-separated; they
    /// must include this node. Default: this node alone, at the addresses its membership
    /// records.
    #[arg(long, value_delimiter = ',', value_parser = parse_voter, value_name = "ID=RAFT@GRPC")]
    voters: Vec<(NodeId, NodeInfo)>,
}

#[derive(Args, Debug)]
pub(crate) struct RestoreArgs {
    /// The backup file.
    file: PathBuf,
    /// The new node's id.
    #[arg(long = "raft_id", alias = "raft-id", value_parser = crate::parse_id)]
    raft_id: NodeId,
    /// Its base data directory; <raft_data_dir>/<raft_id>/ must not exist or be empty.
    #[arg(long = "raft_data_dir", alias = "raft-data-dir", default_value_os_t = std::env::temp_dir())]
    raft_data_dir: PathBuf,
    /// The address the node will serve Raft traffic on (recorded in the membership).
    #[arg(long = "raft_addr", alias = "raft-addr", default_value = "localhost:50051", value_parser = parse_addr)]
    raft_addr: String,
    /// The address the node will serve clients on (recorded in the membership).
    #[arg(long = "grpc_addr", alias = "grpc-addr", default_value = "localhost:40051", value_parser = parse_addr)]
    grpc_addr: String,
}

pub(crate) fn run(cmd: Offline) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the runtime")?;
    match cmd {
        Offline::Recover(args) => {
            let voters = if args.voters.is_empty() {
                None
            } else {
                let mut map = BTreeMap::new();
                for (id, info) in args.voters {
                    if map.insert(id.clone(), info).is_some() {
                        bail!("--voters names {id} twice");
                    }
                }
                Some(map)
            };
            let forced = runtime.block_on(engine::offline::recover(&args.raft_data_dir, &args.raft_id, voters))?;
            println!(
                "Recovered {}: its log ended at index {} (term {}); the new membership is entry {} in term {}.",
                args.raft_id, forced.previous_last_index, forced.previous_last_term, forced.index, forced.term
            );
            for (id, info) in &forced.voters {
                println!("  voter {id}  raft {}  grpc {}", info.raft_addr, info.grpc_addr);
            }
            println!(
                "Start it as before. Remove the lost nodes' directories before they come back, and let them join again."
            );
        }
        Offline::Restore(args) => {
            let me = NodeInfo { raft_addr: args.raft_addr.clone(), grpc_addr: args.grpc_addr.clone() };
            let (progress, bar) = crate::progress::restore();
            let restored = runtime.block_on(engine::offline::restore(
                &args.file,
                &args.raft_data_dir,
                &args.raft_id,
                me,
                progress,
            ));
            if let Some(bar) = bar {
                bar.finish_and_clear();
            }
            let forced = restored?;
            println!(
                "Restored {} (snapshot at index {}, term {}) as a new one-node cluster of {}.",
                args.file.display(),
                forced.previous_last_index,
                forced.previous_last_term,
                args.raft_id
            );
            println!(
                "Start it with: raftkv --raft_id {} --raft_data_dir {} --raft_addr {} --grpc_addr {}",
                args.raft_id,
                args.raft_data_dir.display(),
                args.raft_addr,
                args.grpc_addr
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn voters_parse() {
        let (id, info) = parse_voter("nodeA=localhost:50051@127.0.0.1:40051").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(id.as_str(), "nodeA");
        assert_eq!(info.raft_addr, "localhost:50051");
        assert_eq!(info.grpc_addr, "127.0.0.1:40051");
        for bad in ["nodeA", "nodeA=h:1", "nodeA=h:1@h", "a/b=h:1@h:2", "a=h:0@h:2"] {
            assert!(parse_voter(bad).is_err(), "{bad}");
        }
    }
}
