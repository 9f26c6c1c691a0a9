//! Project automation for raftkv, run as `cargo xtask <command>`.
//!
//! - `proto [--check]`: generate (or check) the Rust code of the `.proto` files.
//!
//! xtask keeps its dependencies few and never depends on the raftkv crates: it drives them
//! through cargo and the built binaries, as a user would.

#![allow(clippy::print_stdout, clippy::print_stderr)]

mod proto;

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "raftkv project automation")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Generate the Rust code of proto/**/*.proto into crates/proto/src/generated.
    Proto {
        /// Fail if the committed generated code differs from fresh output; write nothing.
        #[arg(long)]
        check: bool,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let root = workspace_root()?;
    match cli.command {
        Cmd::Proto { check } => proto::run(&root, check),
    }
}

/// The workspace root: the parent of this crate's manifest directory.
fn workspace_root() -> Result<PathBuf> {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest
        .parent()
        .map(PathBuf::from)
        .context("xtask has no parent directory")
}
