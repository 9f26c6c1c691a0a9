//! `cargo xtask deps`: check the crate dependency rules of ARCHITECTURE.md.
//!
//! The rules live in one table, [`RULES`]. For each crate of the table that is a workspace
//! member, `cargo tree -p CRATE -e normal --target all --prefix none --format {p}` lists its
//! normal-dependency tree once (and once more with `--depth 1` when the rule has direct-only
//! entries); any forbidden package found there is a violation. Dev- and build-dependencies
//! are not checked. A crate of the table that is not (yet) in the workspace is reported as
//! skipped, not as a failure.
//!
//! Then a text check: no source file of `crates/` or `bin/` outside `crates/rpc` builds a
//! tonic `Endpoint` or `Server` ([`check_transport_builders`]).

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::{cargo, display_cmd};

/// One row of the dependency rules: `krate` must never depend on any of `never` (anywhere
/// in its normal-dependency tree) nor directly on any of `never_direct`.
///
/// A direct-only rule is for a package that may come in through another crate of ours but
/// must not be used by `krate` itself: `types` depends on openraft (it holds the openraft
/// type configuration), so `resolver`, which needs `types::NodeId`, reaches openraft through
/// it; what the rule forbids is `resolver` naming openraft in its own manifest.
pub(crate) struct Rule {
    pub(crate) krate: &'static str,
    pub(crate) never: &'static [&'static str],
    pub(crate) never_direct: &'static [&'static str],
}

/// Every library crate of the workspace (the packages that [`RULES`] may name as ours).
pub(crate) const OUR_CRATES: &[&str] = &[
    "duration",
    "latency",
    "proto",
    "types",
    "raft-storage",
    "fsm",
    "resolver",
    "gossip",
    "linearizable",
    "blocking-query",
    "raft-network",
    "rpc",
    "service",
    "compat",
    "etcd-api",
    "engine",
    "client",
    "proc-harness",
    "telemetry",
    "secrets",
];

/// The dependency rules of ARCHITECTURE.md: crate → what it must never depend on.
#[rustfmt::skip]
pub(crate) const RULES: &[Rule] = &[
    Rule { krate: "duration", never: &["tonic", "openraft", "redb", "chitchat", "proto", "types", "raft-storage", "fsm", "resolver", "gossip", "linearizable", "blocking-query", "raft-network", "rpc", "service", "compat", "engine", "client"], never_direct: &[] },
    Rule { krate: "latency", never: &["tokio", "tonic", "openraft", "redb", "chitchat", "proto", "types", "raft-storage", "fsm", "resolver", "gossip", "linearizable", "blocking-query", "raft-network", "rpc", "service", "compat", "engine", "client", "duration", "proc-harness", "secrets"], never_direct: &[] },
    Rule { krate: "proto", never: &["types", "raft-storage", "fsm", "resolver", "gossip", "linearizable", "blocking-query", "raft-network", "rpc", "service", "compat", "engine", "client", "duration", "proc-harness", "latency", "secrets", "telemetry", "etcd-api"], never_direct: &[] },
    Rule { krate: "types", never: &["tonic", "redb", "chitchat", "proto", "raft-storage", "fsm", "resolver", "gossip", "linearizable", "blocking-query", "raft-network", "rpc", "service", "compat", "engine", "client", "duration", "proc-harness", "latency", "secrets", "telemetry", "etcd-api"], never_direct: &[] },
    Rule { krate: "raft-storage", never: &["tonic", "fsm", "service", "engine", "chitchat"], never_direct: &[] },
    Rule { krate: "fsm", never: &["tonic", "chitchat", "gossip", "raft-storage", "service", "engine"], never_direct: &[] },
    Rule { krate: "resolver", never: &["tonic", "chitchat", "gossip"], never_direct: &["openraft"] },
    Rule { krate: "gossip", never: &["tonic", "redb", "fsm", "raft-storage", "service", "engine"], never_direct: &["openraft"] },
    Rule { krate: "linearizable", never: &["tonic", "redb", "chitchat", "proto", "rpc", "raft-storage", "fsm", "resolver", "gossip", "raft-network", "service", "compat", "engine", "client"], never_direct: &[] },
    Rule { krate: "blocking-query", never: &["tonic"], never_direct: &["openraft"] },
    Rule { krate: "rpc", never: &["openraft", "redb", "chitchat", "proto", "types", "raft-storage", "fsm", "resolver", "gossip", "linearizable", "blocking-query", "raft-network", "service", "compat", "engine", "client", "duration"], never_direct: &[] },
    Rule { krate: "raft-network", never: &["service", "compat", "engine", "client", "raft-storage", "chitchat"], never_direct: &["redb"] },
    Rule { krate: "service", never: &["raft-storage", "compat", "engine", "client", "etcd-api"], never_direct: &["redb"] },
    Rule { krate: "compat", never: &["raft-storage", "engine", "client"], never_direct: &["redb"] },
    Rule { krate: "etcd-api", never: &["raft-storage", "compat", "engine", "client"], never_direct: &["redb"] },
    Rule { krate: "client", never: &["openraft", "redb", "engine", "service", "fsm", "raft-storage"], never_direct: &[] },
    Rule { krate: "telemetry", never: &["raft-storage", "compat", "engine", "client"], never_direct: &["redb", "tonic"] },
    Rule { krate: "secrets", never: &["tokio", "tonic", "openraft", "redb", "chitchat", "ring", "proto", "types", "raft-storage", "fsm", "resolver", "gossip", "linearizable", "blocking-query", "raft-network", "rpc", "service", "compat", "engine", "client", "duration", "proc-harness", "latency"], never_direct: &[] },
    Rule { krate: "proc-harness", never: &["tokio", "tonic", "proto", "types", "raft-storage", "fsm", "resolver", "gossip", "linearizable", "blocking-query", "raft-network", "rpc", "service", "compat", "engine", "client", "duration"], never_direct: &[] },
];

pub(crate) fn run(root: &Path) -> Result<()> {
    let members = workspace_members(root)?;
    // (crate, forbidden package, message)
    let mut violations: Vec<(&str, &str, String)> = Vec::new();
    let mut checked = 0;
    for rule in RULES {
        if !members.contains(rule.krate) {
            println!("skipped: crate {} not in workspace", rule.krate);
            continue;
        }
        checked += 1;
        let before = violations.len();
        if !rule.never.is_empty() {
            let tree = tree_packages(root, rule.krate, None)?;
            for &forbidden in rule.never {
                if tree.contains(forbidden) {
                    let message = format!("{} depends on {forbidden}", rule.krate);
                    violations.push((rule.krate, forbidden, message));
                }
            }
        }
        if !rule.never_direct.is_empty() {
            let direct = tree_packages(root, rule.krate, Some(1))?;
            for &forbidden in rule.never_direct {
                if direct.contains(forbidden) {
                    let message = format!("{} depends directly on {forbidden}", rule.krate);
                    violations.push((rule.krate, forbidden, message));
                }
            }
        }
        if violations.len() == before {
            println!("ok: {}", rule.krate);
        } else {
            for (_, _, message) in &violations[before..] {
                println!("VIOLATION: {message}");
            }
        }
    }
    if !violations.is_empty() {
        // Show how each forbidden package gets in, to help whoever fixes it.
        for (krate, forbidden, _) in &violations {
            print_inverted_tree(root, krate, forbidden);
        }
        let messages: Vec<&str> = violations.iter().map(|(_, _, m)| m.as_str()).collect();
        bail!("{} dependency rule violation(s):\n  {}", violations.len(), messages.join("\n  "));
    }
    println!("deps: {checked} of {} crates checked, no violations", RULES.len());
    check_transport_builders(root)
}

/// What builds a tonic endpoint or server; only [`TRANSPORT_HOME`] may say it.
const TRANSPORT_BUILDERS: &[&str] = &["Endpoint::", "transport::Endpoint", "Server::builder", "transport::Server"];
/// The one crate that builds endpoints and servers (where TLS is configured).
const TRANSPORT_HOME: &str = "crates/rpc/";

/// Checks that no source file of `crates/` or `bin/` but those of [`TRANSPORT_HOME`] (and
/// the generated protobuf code and vendored crates) builds a tonic endpoint or server: a text search of every
/// line that is not a comment.
fn check_transport_builders(root: &Path) -> Result<()> {
    let mut files = Vec::new();
    for dir in ["crates", "bin"] {
        rust_files(&root.join(dir), &mut files)?;
    }
    let mut found = Vec::new();
    for file in files {
        let rel = file.strip_prefix(root).unwrap_or(&file).to_string_lossy().replace('\\', "/");
        let exempt = ["crates/proto/src/generated/", "crates/vendor/"];
        if rel.starts_with(TRANSPORT_HOME) || exempt.iter().any(|e| rel.starts_with(e)) {
            continue;
        }
        let text = std::fs::read_to_string(&file).with_context(|| format!("reading {rel}"))?;
        found.extend(transport_builder_lines(&text).into_iter().map(|n| format!("{rel}:{n}")));
    }
    if !found.is_empty() {
        bail!(
            "only {TRANSPORT_HOME} may build a tonic endpoint or server (rpc::channel, rpc::server); found at:\n  {}",
            found.join("\n  ")
        );
    }
    println!("ok: tonic endpoints and servers are built in {TRANSPORT_HOME} only");
    Ok(())
}

/// The 1-based numbers of the lines of `text` that build an endpoint or a server.
fn transport_builder_lines(text: &str) -> Vec<usize> {
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim_start().starts_with("//"))
        .filter(|(_, line)| TRANSPORT_BUILDERS.iter().any(|p| line.contains(p)))
        .map(|(i, _)| i + 1)
        .collect()
}

/// Every `.rs` file below `dir`, `target` directories left out.
fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) -> Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            if path.file_name().is_some_and(|n| n != "target") {
                rust_files(&path, out)?;
            }
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    Ok(())
}

/// The package names of the workspace members, from `cargo metadata --no-deps`.
fn workspace_members(root: &Path) -> Result<BTreeSet<String>> {
    let mut cmd = cargo(root);
    cmd.args(["metadata", "--no-deps", "--format-version", "1"]);
    let stdout = output(&mut cmd)?;
    let metadata: serde_json::Value = serde_json::from_str(&stdout).context("parsing `cargo metadata` output")?;
    let packages = metadata["packages"].as_array().context("`cargo metadata` output has no packages")?;
    Ok(packages.iter().filter_map(|p| p["name"].as_str().map(str::to_owned)).collect())
}

/// The names of the packages in the normal-dependency tree of `krate` (down to `depth`
/// levels if given), `krate` itself excluded. A package of ours counts only as the path
/// package inside this workspace, so that a registry crate with the same name (a crate
/// called `engine` on crates.io, say) is not mistaken for it.
fn tree_packages(root: &Path, krate: &str, depth: Option<u32>) -> Result<BTreeSet<String>> {
    let mut cmd = cargo(root);
    cmd.args([
        "tree", "--quiet", "-p", krate, "-e", "normal", "--target", "all", "--prefix", "none", "--format", "{p}",
    ]);
    if let Some(depth) = depth {
        cmd.args(["--depth", &depth.to_string()]);
    }
    let stdout = output(&mut cmd)?;
    Ok(parse_tree(&stdout, root))
}

/// Parses `cargo tree --prefix none --format {p}` output (see [`tree_packages`]).
fn parse_tree(stdout: &str, root: &Path) -> BTreeSet<String> {
    let root_marker = format!("({}", root.display());
    let mut names = BTreeSet::new();
    // The first line is the crate itself.
    for line in stdout.lines().skip(1) {
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        let local = line.contains(&root_marker);
        if OUR_CRATES.contains(&name) && !local {
            continue;
        }
        names.insert(name.to_owned());
    }
    names
}

/// Prints `cargo tree -p KRATE -e normal -i FORBIDDEN`: the paths by which it gets in.
fn print_inverted_tree(root: &Path, krate: &str, forbidden: &str) {
    let mut cmd = cargo(root);
    cmd.args(["tree", "--quiet", "-p", krate, "-e", "normal", "--target", "all", "-i", forbidden]);
    if let Ok(tree) = output(&mut cmd) {
        println!("\nhow {krate} reaches {forbidden}:\n{tree}");
    }
}

/// Runs `cmd` and returns its stdout; fails with its stderr unless it exits 0.
fn output(cmd: &mut Command) -> Result<String> {
    let line = display_cmd(cmd);
    let out = cmd.output().with_context(|| format!("cannot run `{line}`"))?;
    if !out.status.success() {
        bail!("`{line}` failed ({}):\n{}", out.status, String::from_utf8_lossy(&out.stderr));
    }
    String::from_utf8(out.stdout).with_context(|| format!("`{line}` printed invalid UTF-8"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_tree_keeps_our_path_crates_and_registry_crates() {
        let root = Path::new("/w");
        let out = "fsm v0.1.0 (/w/crates/fsm)\n\
                   openraft v0.10.0-alpha.37\n\
                   types v0.1.0 (/w/crates/types)\n\
                   engine v9.9.9\n\
                   tonic v0.14.9 (*)\n";
        let names = parse_tree(out, root);
        let want: BTreeSet<String> = ["openraft", "types", "tonic"].into_iter().map(String::from).collect();
        assert_eq!(names, want);
    }

    #[test]
    fn rules_name_known_crates_only() {
        for rule in RULES {
            assert!(OUR_CRATES.contains(&rule.krate), "{}", rule.krate);
            assert!(!rule.never.contains(&rule.krate), "{}", rule.krate);
            assert!(!rule.never_direct.contains(&rule.krate), "{}", rule.krate);
        }
    }

    /// The row of `rule` in the dependency table of ARCHITECTURE.md.
    fn markdown_row(rule: &Rule) -> String {
        let cell = |names: &[&str]| {
            if names.is_empty() {
                String::from("—")
            } else {
                names.iter().map(|n| format!("`{n}`")).collect::<Vec<_>>().join(", ")
            }
        };
        format!("| `{}` | {} | {} |", rule.krate, cell(rule.never), cell(rule.never_direct))
    }

    #[test]
    fn architecture_md_shows_the_rules_as_they_are() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../ARCHITECTURE.md");
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        for rule in RULES {
            let row = markdown_row(rule);
            assert!(text.lines().any(|line| line.trim() == row), "ARCHITECTURE.md lacks the rule row\n{row}");
        }
    }

    #[test]
    fn transport_builders_are_found_outside_comments() {
        let text = "// Endpoint::from_shared in a comment\nlet e = Endpoint::from_shared(a)?;\nServer::builder()\nClientError::NoEndpoints\n";
        assert_eq!(transport_builder_lines(text), vec![2, 3]);
    }

    #[test]
    fn proto_and_types_depend_on_none_of_ours() {
        for krate in ["proto", "types"] {
            let rule = RULES.iter().find(|r| r.krate == krate).unwrap_or_else(|| panic!("no rule for {krate}"));
            for &ours in OUR_CRATES.iter().filter(|&&c| c != krate) {
                assert!(rule.never.contains(&ours), "{krate} is not forbidden from depending on {ours}");
            }
        }
    }
}
