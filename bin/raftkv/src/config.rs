//! The configuration layers: flags, then `RAFTKV_*` environment variables, then the TOML file
//! of `--config FILE`, then the built-in defaults (the first that sets a key wins).
//!
//! Every flag that has a `RAFTKV_*` environment variable is also a file key: the key is the
//! flag's argument id (the field name of [`Args`], `heartbeat_interval`), and its
//! environment variable must be `RAFTKV_` and the key in capitals (a unit test checks this).
//! So adding a flag is one field: `#[arg(long = "metrics-addr", env = "RAFTKV_METRICS_ADDR")]
//! metrics_addr: String` is also `metrics_addr = "..."` in the file.
//!
//! clap already puts flags before environment variables before defaults. The file goes in
//! between by replacing, before the final parse, the default of each key it sets with its
//! value ([`with_file`]); each value is first checked alone with the flag's own parser
//! ([`check_value`]), so a bad one is refused naming the key and the file's line, and a
//! flag or an environment variable given for the same key still wins.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use clap::builder::Resettable;
use clap::parser::ValueSource;
use clap::{Arg, ArgAction, ArgMatches, Command, CommandFactory, FromArgMatches};
use toml::Spanned;

use crate::Args;

/// The prefix of every environment variable of the node.
pub(crate) const ENV_PREFIX: &str = "RAFTKV_";

/// One key the file sets: its value as the flag would take it, and its line.
#[derive(Debug, Clone)]
pub(crate) struct FileEntry {
    key: String,
    /// The flag's value(s), as typed on a command line.
    values: Vec<String>,
    line: usize,
}

/// The keys a configuration file sets.
#[derive(Debug, Clone, Default)]
pub(crate) struct FileLayer {
    path: Option<PathBuf>,
    entries: Vec<FileEntry>,
}

impl FileLayer {
    fn entry(&self, key: &str) -> Option<&FileEntry> {
        self.entries.iter().find(|e| e.key == key)
    }
}

/// The parsed flags, with the matches that say where each value came from.
pub(crate) struct Parsed {
    pub(crate) args: Args,
    matches: ArgMatches,
    file: FileLayer,
}

/// Whether `arg` is a configuration key: it has a `RAFTKV_*` variable (not `--config` itself).
fn is_key(arg: &Arg) -> bool {
    arg.get_id() != "config" && arg.get_env().is_some_and(|e| e.to_string_lossy().starts_with(ENV_PREFIX))
}

/// Parses `argv` through every layer. A clap error (usage, `--help`, `--version`) is returned
/// as such, to be shown by clap; a file that cannot be used is an `anyhow` error naming the
/// file, the line and the key.
pub(crate) fn parse(argv: Vec<OsString>) -> Result<Parsed, ParseError> {
    let file = match config_path(&argv) {
        Some(path) => load(&path).map_err(ParseError::File)?,
        None => FileLayer::default(),
    };
    let matches = with_file(Args::command(), &file).try_get_matches_from(argv).map_err(ParseError::Clap)?;
    let args = Args::from_arg_matches(&matches).map_err(ParseError::Clap)?;
    Ok(Parsed { args, matches, file })
}

/// Why the flags could not be parsed.
#[derive(Debug)]
pub(crate) enum ParseError {
    /// Usage, help or version: clap shows it and exits.
    Clap(clap::Error),
    /// The configuration file cannot be used.
    File(anyhow::Error),
}

/// The `--config` path (flag or `RAFTKV_CONFIG`), read with every other error ignored: the
/// final parse reports those.
fn config_path(argv: &[OsString]) -> Option<PathBuf> {
    let matches = Args::command().ignore_errors(true).try_get_matches_from(argv).ok()?;
    matches.get_one::<PathBuf>("config").cloned()
}

/// `cmd` with the file's values as the defaults of their keys (a key the file sets is no
/// longer required: the file gave it).
fn with_file(mut cmd: Command, file: &FileLayer) -> Command {
    for entry in &file.entries {
        let values = entry.values.clone();
        cmd = cmd.mut_arg(&entry.key, |a| {
            a.required(false).required_unless_present(Resettable::Reset).default_values(values)
        });
    }
    cmd
}

/// Reads and checks a configuration file.
fn load(path: &Path) -> Result<FileLayer> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading the config file {}", path.display()))?;
    let mut layer = parse_file(&text, &path.display().to_string())?;
    layer.path = Some(path.to_path_buf());
    Ok(layer)
}

/// The 1-based line of byte `offset` in `text`.
fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())].iter().filter(|b| **b == b'\n').count() + 1
}

/// Parses a configuration file's text (`name` is how errors name the file).
fn parse_file(text: &str, name: &str) -> Result<FileLayer> {
    let table: BTreeMap<Spanned<String>, Spanned<toml::Value>> =
        toml::from_str(text).map_err(|e| anyhow!("{name}: not valid TOML: {}", e.to_string().trim_end()))?;
    let cmd = Args::command();
    let mut entries = Vec::new();
    for (key, value) in table {
        let line = line_of(text, key.span().start);
        let at = format!("{name}:{line}: key `{}`", key.get_ref());
        let Some(arg) = cmd.get_arguments().find(|a| a.get_id() == key.get_ref().as_str() && is_key(a)) else {
            let hint = cmd
                .get_arguments()
                .find(|a| is_key(a) && a.get_id().as_str() == key.get_ref().replace('-', "_"))
                .map(|a| format!(" (did you mean `{}`?)", a.get_id()))
                .unwrap_or_default();
            bail!("{name}:{line}: unknown key `{}`{hint}; docs/config.md lists every key", key.get_ref());
        };
        let values = flag_values(arg, value.get_ref()).map_err(|e| anyhow!("{at}: {e}"))?;
        check_value(arg, &values).map_err(|e| anyhow!("{at}: {e}"))?;
        entries.push(FileEntry { key: key.into_inner(), values, line });
    }
    Ok(FileLayer { path: None, entries })
}

/// Whether `arg` takes a list (comma-separated on the command line).
fn is_list(arg: &Arg) -> bool {
    arg.get_value_delimiter().is_some()
}

/// A TOML value as the flag's value(s), as they would be typed.
fn flag_values(arg: &Arg, value: &toml::Value) -> Result<Vec<String>, String> {
    let scalar = |v: &toml::Value| match v {
        toml::Value::String(s) => Ok(s.clone()),
        toml::Value::Integer(i) => Ok(i.to_string()),
        toml::Value::Float(f) => Ok(f.to_string()),
        toml::Value::Boolean(b) => Ok(b.to_string()),
        other => Err(format!("expected a string, a number or a boolean, not {}", other.type_str())),
    };
    match value {
        toml::Value::Array(items) if is_list(arg) => {
            if items.is_empty() {
                return Err("an empty list sets nothing; leave the key out".into());
            }
            items.iter().map(scalar).collect()
        }
        toml::Value::Array(_) => Err("expected one value, not a list".into()),
        v if matches!(arg.get_action(), ArgAction::SetTrue) && !matches!(v, toml::Value::Boolean(_)) => {
            Err(format!("expected true or false, not {}", v.type_str()))
        }
        v => Ok(vec![scalar(v)?]),
    }
}

/// Checks values with the flag's own parser, alone (no environment, no other flag), and
/// returns what the parser says is wrong.
fn check_value(arg: &Arg, values: &[String]) -> Result<(), String> {
    let probe = arg.clone().required(false).required_unless_present(Resettable::Reset).env(None);
    let Some(long) = probe.get_long().map(str::to_string) else { return Ok(()) };
    let mut argv = vec!["raftkv".to_string()];
    if matches!(arg.get_action(), ArgAction::SetTrue) {
        // A switch: `true` is the flag given, `false` is the flag left out.
        if values.first().is_some_and(|v| v == "true") {
            argv.push(format!("--{long}"));
        }
    } else {
        argv.extend(values.iter().map(|v| format!("--{long}={v}")));
    }
    match Command::new("raftkv").arg(probe).try_get_matches_from(argv) {
        Ok(_) => Ok(()),
        Err(e) => Err(clap_reason(&e, values)),
    }
}

/// What a clap error says about a value, without clap's usage lines.
fn clap_reason(e: &clap::Error, values: &[String]) -> String {
    let shown = values.join(",");
    match std::error::Error::source(e) {
        Some(why) => format!("invalid value {shown:?}: {why}"),
        None => {
            let rendered = e.render().to_string();
            let first = rendered.lines().next().unwrap_or("invalid value").trim_start_matches("error: ");
            // clap names the flag; the file's reader knows it by its key.
            format!("invalid value {shown:?} ({first})")
        }
    }
}

/// Where the value of key `id` came from.
fn source(parsed: &Parsed, arg: &Arg) -> String {
    let id = arg.get_id().as_str();
    match parsed.matches.value_source(id) {
        Some(ValueSource::CommandLine) => format!("flag --{}", arg.get_long().unwrap_or(id)),
        Some(ValueSource::EnvVariable) => {
            format!("env {}", arg.get_env().map(|e| e.to_string_lossy().into_owned()).unwrap_or_default())
        }
        _ => match (parsed.file.entry(id), &parsed.file.path) {
            (Some(entry), Some(path)) => format!("file {}:{}", path.display(), entry.line),
            _ => "default".into(),
        },
    }
}

/// A key's effective value as TOML, `None` when it has none.
fn toml_value(parsed: &Parsed, arg: &Arg) -> Option<toml::Value> {
    let id = arg.get_id().as_str();
    let raw: Vec<String> = parsed.matches.get_raw(id)?.map(|v| v.to_string_lossy().into_owned()).collect();
    if is_list(arg) {
        return Some(toml::Value::Array(raw.into_iter().map(toml::Value::String).collect()));
    }
    let m = &parsed.matches;
    if let Ok(Some(b)) = m.try_get_one::<bool>(id) {
        return Some(toml::Value::Boolean(*b));
    }
    let integer = m
        .try_get_one::<u64>(id)
        .ok()
        .flatten()
        .and_then(|v| i64::try_from(*v).ok())
        .or_else(|| m.try_get_one::<usize>(id).ok().flatten().and_then(|v| i64::try_from(*v).ok()));
    if let Some(i) = integer {
        return Some(toml::Value::Integer(i));
    }
    if let Ok(Some(f)) = m.try_get_one::<f64>(id) {
        return Some(toml::Value::Float(*f));
    }
    raw.into_iter().next().map(toml::Value::String)
}

/// The effective configuration as a TOML file (usable as `--config`), each key followed by
/// where its value came from; keys with no value are listed as comments.
pub(crate) fn render(parsed: &Parsed) -> String {
    let cmd = Args::command();
    let mut out = String::from(
        "# raftkv's effective configuration. Each key is set by, first to last: a flag, an\n\
         # environment variable, the config file, the default (docs/config.md).\n",
    );
    for arg in cmd.get_arguments().filter(|a| is_key(a)) {
        let id = arg.get_id().as_str();
        let from = source(parsed, arg);
        let _ = match toml_value(parsed, arg) {
            Some(v) => writeln!(out, "{id} = {v}  # {from}"),
            None => writeln!(out, "# {id} is not set  # {from}"),
        };
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_with(file: &str, argv: &[&str]) -> Result<Parsed, String> {
        let layer = parse_file(file, "c.toml").map_err(|e| e.to_string())?;
        let argv: Vec<OsString> = argv.iter().map(OsString::from).collect();
        let matches = with_file(Args::command(), &layer).try_get_matches_from(argv).map_err(|e| e.to_string())?;
        let args = Args::from_arg_matches(&matches).map_err(|e| e.to_string())?;
        Ok(Parsed { args, matches, file: FileLayer { path: Some("c.toml".into()), ..layer } })
    }

    #[test]
    fn every_key_has_its_env_variable_and_its_documentation() {
        let docs = include_str!("../../../docs/config.md");
        let cmd = Args::command();
        for arg in cmd.get_arguments().filter(|a| is_key(a)) {
            let id = arg.get_id().as_str();
            let env = arg.get_env().map(|e| e.to_string_lossy().into_owned()).unwrap_or_default();
            assert_eq!(env, format!("{ENV_PREFIX}{}", id.to_uppercase()), "the variable of key {id}");
            assert!(docs.contains(&format!("| `{id}` |")), "docs/config.md has no row for `{id}`");
        }
    }

    #[test]
    fn the_file_sets_keys_of_every_type() {
        let file = "raft_id = \"n1\"\nheartbeat_interval = \"200ms\"\nsnapshot_threshold = 10\n\
                    gossip_phi_threshold = 6.5\nraft_bootstrap = true\ninsecure = true\n\
                    gossip_seeds = [\"a:1\", \"b:2\"]\n";
        let p = parse_with(file, &["raftkv"]).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(p.args.raft_id.as_ref().map(types::NodeId::as_str), Some("n1"));
        assert_eq!(p.args.heartbeat_interval, std::time::Duration::from_millis(200));
        assert_eq!(p.args.snapshot_threshold, 10);
        assert!((p.args.gossip_phi_threshold - 6.5).abs() < f64::EPSILON);
        assert!(p.args.raft_bootstrap && p.args.insecure);
        assert_eq!(p.args.gossip_seeds, ["a:1", "b:2"]);
        let printed = render(&p);
        assert!(printed.contains("heartbeat_interval = \"200ms\"  # file c.toml:2\n"), "{printed}");
        assert!(printed.contains("snapshot_threshold = 10  # file c.toml:3\n"), "{printed}");
        assert!(printed.contains("gossip_seeds = [\"a:1\", \"b:2\"]  # file c.toml:7\n"), "{printed}");
        assert!(printed.contains("election_timeout = \"1s\"  # default\n"), "{printed}");
        assert!(printed.contains("# cert_file is not set  # default\n"), "{printed}");
    }

    #[test]
    fn a_flag_beats_the_file() {
        let p = parse_with("raft_id = \"n1\"\nsnapshot_threshold = 10\n", &["raftkv", "--snapshot_threshold=20"])
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(p.args.snapshot_threshold, 20);
        assert!(render(&p).contains("snapshot_threshold = 20  # flag --snapshot_threshold\n"));
        let p = parse_with("raft_id = \"n1\"\ninsecure = true\n", &["raftkv"]).unwrap_or_else(|e| panic!("{e}"));
        assert!(p.args.insecure, "a switch set in the file");
    }

    #[test]
    fn bad_files_are_refused_naming_the_line_and_the_key() {
        let cases = [
            ("raft_id = \"n\"\nheartbeat_intervall = \"1s\"\n", "c.toml:2: unknown key `heartbeat_intervall`"),
            (
                "\n\nheartbeat-interval = \"1s\"\n",
                "c.toml:3: unknown key `heartbeat-interval` (did you mean `heartbeat_interval`?)",
            ),
            (
                "heartbeat_interval = \"40\"\n",
                "c.toml:1: key `heartbeat_interval`: invalid value \"40\": \"40\" needs a unit",
            ),
            ("\nsnapshot_threshold = -1\n", "c.toml:2: key `snapshot_threshold`: invalid value \"-1\""),
            ("snapshot_threshold = \"many\"\n", "c.toml:1: key `snapshot_threshold`: invalid value \"many\""),
            ("raft_id = \"a/b\"\n", "c.toml:1: key `raft_id`: invalid value \"a/b\""),
            ("insecure = \"yes\"\n", "c.toml:1: key `insecure`: expected true or false, not string"),
            ("raft_addr = [\"a:1\"]\n", "c.toml:1: key `raft_addr`: expected one value, not a list"),
            ("[gossip]\naddr = \"a\"\n", "c.toml:1: unknown key `gossip`"),
            ("config = \"other.toml\"\n", "c.toml:1: unknown key `config`"),
            ("raft_id = \n", "c.toml: not valid TOML"),
        ];
        for (file, expected) in cases {
            let e = parse_with(file, &["raftkv", "--raft_id=n"]).err().unwrap_or_default();
            assert!(e.starts_with(expected) || e.contains(expected), "{file:?}: expected {expected:?}, got {e:?}");
        }
    }
}
