//! The key-value commands of raftkvctl: put, get, del, range, txn.
//!
//! One function per subcommand: it builds the request from the flags, sends it through the
//! client and hands the answer to the output format's [`Printer`] (`kv_print`).

use std::io::{IsTerminal, Read, Write};

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand, ValueEnum};
use client::Client;
use client::kv::{Consistency as PbConsistency, DeleteRequest, GetRequest, PutRequest, RangeRequest};

use crate::kv_print::{Printer, printer};
use crate::{Outcome, Output, txn_syntax};

/// Read consistency, as typed.
#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq, Default)]
pub(crate) enum ConsistencyArg {
    /// Reflects every acknowledged write (the default).
    #[default]
    Linearizable,
    /// Linearizable while the leader's lease holds; assumes clocks advance at similar rates.
    Lease,
    /// The answering node's data, unchecked; may be behind.
    Stale,
}

impl ConsistencyArg {
    fn proto(self) -> i32 {
        (match self {
            ConsistencyArg::Linearizable => PbConsistency::Linearizable,
            ConsistencyArg::Lease => PbConsistency::Lease,
            ConsistencyArg::Stale => PbConsistency::Stale,
        }) as i32
    }
}

#[derive(Subcommand, Debug)]
pub(crate) enum KvCommand {
    /// Set a key to a value (`-` reads the value from stdin, byte for byte).
    #[command(after_help = "\
Examples:
  raftkvctl put greeting hello
  raftkvctl put photo.jpg - < photo.jpg
  raftkvctl put --if-absent lock me          # only if lock does not exist
  raftkvctl put --expect-index 42 config v2  # only if config's modify_index is 42
  raftkvctl put --prev-kv greeting bonjour   # print the value it replaced")]
    Put(PutArgs),
    /// Print a key's value (exit status 1 if it does not exist), or every key of a prefix.
    #[command(after_help = "\
The value is printed byte for byte: a newline follows it only when stdout is a terminal, so
`raftkvctl get KEY > FILE` writes exactly the stored bytes (what `put KEY - < FILE` stored).

Examples:
  raftkvctl get greeting
  raftkvctl get --prefix config/               # key and value lines, for every key
  raftkvctl get --consistency stale greeting   # answered by this node, no check
  raftkvctl -o json get greeting
  raftkvctl -o table get --prefix config/
  raftkvctl get --min-index 42 --wait 30s --command-timeout 40s greeting   # blocks until greeting changes after 42")]
    Get(GetArgs),
    /// Delete a key, a range or a prefix; prints how many keys were deleted.
    #[command(after_help = "\
Examples:
  raftkvctl del greeting
  raftkvctl del --prefix tmp/
  raftkvctl del --range-end b a             # every key in [a, b)
  raftkvctl del --expect-index 42 config    # only if config's modify_index is 42
  raftkvctl del --prev-kv --prefix tmp/     # also print what was deleted")]
    Del(DelArgs),
    /// List keys in a range, following pages to the end (or stopping at --limit).
    #[command(after_help = "\
Examples:
  raftkvctl range a c                 # every key in [a, c)
  raftkvctl range --prefix config/
  raftkvctl range --count-only --prefix logs/
  raftkvctl range --keys-only --limit 10 ''   # the first ten keys")]
    Range(RangeArgs),
    /// Apply a transaction read from stdin: compares, then success and failure operations.
    #[command(after_help = "\
The transaction is read from stdin, in the readable form or as JSON.

Readable form: compares, a blank line, success operations, a blank line, failure
operations. Compares: value|mod|create|version|exists(\"KEY\") =|!=|>|< TARGET.
Operations: put KEY VALUE, del [--prefix] KEY, get [--prefix] KEY. Strings are bare
words or \"quoted\" with \\n, \\t, \\\\, \\\" and \\xNN escapes.

  raftkvctl txn <<'EOF'
  mod(\"lock\") = 0

  put lock me
  put owner me

  get lock
  EOF

JSON form:
  echo '{\"compare\":[{\"key\":\"lock\",\"target\":\"mod\",\"op\":\"=\",\"value\":0}],
         \"success\":[{\"put\":{\"key\":\"lock\",\"value\":\"me\"}}],
         \"failure\":[{\"get\":{\"key\":\"lock\"}}]}' | raftkvctl txn

Prints SUCCESS or FAILURE, then each operation's result.")]
    Txn(TxnArgs),
}

// The flags of `put` (the help text is the variant's, above).
#[derive(Args, Debug)]
pub(crate) struct PutArgs {
    /// The key.
    key: String,
    /// The value, or `-` to read it from stdin.
    value: String,
    /// Apply only if the key does not exist.
    #[arg(long = "if-absent", conflicts_with = "expect_index")]
    if_absent: bool,
    /// Apply only if the key's modify_index is this (compare-and-set).
    #[arg(long = "expect-index")]
    expect_index: Option<u64>,
    /// Print the previous value.
    #[arg(long = "prev-kv")]
    prev_kv: bool,
    /// At-most-once id (by default raftkvctl picks one, so its retries are safe).
    #[arg(long = "request-id", default_value = "")]
    request_id: String,
}

// The flags of `get` (the help text is the variant's, above).
#[derive(Args, Debug)]
pub(crate) struct GetArgs {
    /// The key (or the prefix, with --prefix).
    key: String,
    /// Every key starting with KEY.
    #[arg(long)]
    prefix: bool,
    /// How fresh the answer must be.
    #[arg(long, value_enum, default_value_t)]
    consistency: ConsistencyArg,
    /// Print keys only (with --prefix).
    #[arg(long = "keys-only")]
    keys_only: bool,
    /// Blocking read: wait until the key changes at an index above this one (or --wait
    /// passes), then print its value. The wait also ends a little before
    /// --command-timeout.
    #[arg(long = "min-index", conflicts_with = "prefix")]
    min_index: Option<u64>,
    /// How long a blocking read may wait (default 5m, at most 10m).
    #[arg(long, value_parser = duration::parse, value_name = "DURATION", requires = "min_index")]
    wait: Option<std::time::Duration>,
}

// The flags of `del` (the help text is the variant's, above).
#[derive(Args, Debug)]
pub(crate) struct DelArgs {
    /// The key (or the start of the range).
    key: String,
    /// Every key starting with KEY.
    #[arg(long, conflicts_with = "range_end")]
    prefix: bool,
    /// Delete [KEY, RANGE_END); "\0" for every key from KEY on.
    #[arg(long = "range-end")]
    range_end: Option<String>,
    /// Delete only if the key's modify_index is this (single keys).
    #[arg(long = "expect-index")]
    expect_index: Option<u64>,
    /// Print the deleted keys and values.
    #[arg(long = "prev-kv")]
    prev_kv: bool,
    /// At-most-once id (by default raftkvctl picks one).
    #[arg(long = "request-id", default_value = "")]
    request_id: String,
}

// The flags of `range` (the help text is the variant's, above).
#[derive(Args, Debug)]
pub(crate) struct RangeArgs {
    /// The first key (inclusive).
    start: String,
    /// The end (exclusive); omitted: every key from START on.
    end: Option<String>,
    /// Every key starting with START.
    #[arg(long, conflicts_with = "end")]
    prefix: bool,
    /// At most this many keys.
    #[arg(long, default_value_t = 0)]
    limit: u64,
    /// Print keys only.
    #[arg(long = "keys-only")]
    keys_only: bool,
    /// Print only how many keys the range holds.
    #[arg(long = "count-only")]
    count_only: bool,
    /// How fresh the answer must be.
    #[arg(long, value_enum, default_value_t)]
    consistency: ConsistencyArg,
}

// The flags of `txn` (the help text is the variant's, above).
#[derive(Args, Debug)]
pub(crate) struct TxnArgs {
    /// At-most-once id (by default raftkvctl picks one).
    #[arg(long = "request-id", default_value = "")]
    request_id: String,
}

fn read_stdin() -> Result<Vec<u8>> {
    let mut buf = Vec::new();
    std::io::stdin().lock().read_to_end(&mut buf).context("reading stdin")?;
    Ok(buf)
}

/// Runs a key-value command and prints its answer in `output`'s format.
pub(crate) async fn run(cmd: &KvCommand, client: &Client, output: Output, out: &mut impl Write) -> Result<Outcome> {
    let p = printer(output, std::io::stdout().is_terminal());
    match cmd {
        KvCommand::Put(args) => put(args, client, p, out).await,
        KvCommand::Get(args) if args.prefix => get_prefix(args, client, p, out).await,
        KvCommand::Get(args) => get(args, client, p, out).await,
        KvCommand::Del(args) => del(args, client, p, out).await,
        KvCommand::Range(args) => range(args, client, p, out).await,
        KvCommand::Txn(args) => txn(args, client, p, out).await,
    }
}

async fn put(args: &PutArgs, client: &Client, p: &dyn Printer, out: &mut dyn Write) -> Result<Outcome> {
    let value = if args.value == "-" { read_stdin()? } else { args.value.as_bytes().to_vec() };
    let req = PutRequest {
        key: args.key.as_bytes().to_vec().into(),
        value: value.into(),
        expected_modify_index: args.expect_index,
        if_absent: args.if_absent,
        prev_kv: args.prev_kv,
        request_id: args.request_id.clone(),
    };
    p.put(out, &client.put_request(req).await?)?;
    Ok(Outcome::Ok)
}

/// `get KEY`: one key, or a blocking read with `--min-index`.
async fn get(args: &GetArgs, client: &Client, p: &dyn Printer, out: &mut dyn Write) -> Result<Outcome> {
    let req = GetRequest {
        key: args.key.as_bytes().to_vec().into(),
        consistency: args.consistency.proto(),
        min_index: args.min_index.unwrap_or(0),
        wait_ms: args.wait.map_or(0, |w| u64::try_from(w.as_millis()).unwrap_or(u64::MAX)),
    };
    let resp = client.get_request(req).await?;
    match &resp.kv {
        Some(kv) if resp.found => p.get(out, &resp, kv)?,
        _ => return Ok(Outcome::NotFound(format!("key {:?} not found", args.key))),
    }
    Ok(Outcome::Ok)
}

/// `get --prefix KEY`: every key of the prefix, following pages to the end.
async fn get_prefix(args: &GetArgs, client: &Client, p: &dyn Printer, out: &mut dyn Write) -> Result<Outcome> {
    let req = RangeRequest {
        key: args.key.as_bytes().to_vec().into(),
        prefix: true,
        keys_only: args.keys_only,
        consistency: args.consistency.proto(),
        ..Default::default()
    };
    p.kvs(out, &client.range_all(req).await?, args.keys_only)?;
    Ok(Outcome::Ok)
}

async fn del(args: &DelArgs, client: &Client, p: &dyn Printer, out: &mut dyn Write) -> Result<Outcome> {
    let range_end = match args.range_end.as_deref() {
        Some("\\0") => vec![0],
        Some(e) => e.as_bytes().to_vec(),
        None => Vec::new(),
    };
    let req = DeleteRequest {
        key: args.key.as_bytes().to_vec().into(),
        range_end: range_end.into(),
        prefix: args.prefix,
        expected_modify_index: args.expect_index,
        prev_kv: args.prev_kv,
        request_id: args.request_id.clone(),
    };
    p.del(out, &client.delete_request(req).await?)?;
    Ok(Outcome::Ok)
}

/// `range`: a count, one page (`--limit`), or every page.
async fn range(args: &RangeArgs, client: &Client, p: &dyn Printer, out: &mut dyn Write) -> Result<Outcome> {
    let range_end = match &args.end {
        Some(e) => e.as_bytes().to_vec(),
        None if args.prefix => Vec::new(),
        None => vec![0],
    };
    let req = RangeRequest {
        key: args.start.as_bytes().to_vec().into(),
        range_end: range_end.into(),
        prefix: args.prefix,
        limit: args.limit,
        keys_only: args.keys_only,
        count_only: args.count_only,
        consistency: args.consistency.proto(),
    };
    if args.count_only {
        p.count(out, client.range(req).await?.count)?;
        return Ok(Outcome::Ok);
    }
    let kvs = if args.limit > 0 { client.range(req).await?.kvs } else { client.range_all(req).await? };
    p.kvs(out, &kvs, args.keys_only)?;
    Ok(Outcome::Ok)
}

/// `txn`: the transaction read from stdin (`txn_syntax`).
async fn txn(args: &TxnArgs, client: &Client, p: &dyn Printer, out: &mut dyn Write) -> Result<Outcome> {
    let input = String::from_utf8(read_stdin()?).context("the transaction on stdin is not UTF-8")?;
    if input.trim().is_empty() {
        bail!("no transaction on stdin; see `raftkvctl txn --help`");
    }
    let mut req = txn_syntax::parse(&input)?;
    if !args.request_id.is_empty() {
        req.request_id = args.request_id.clone();
    }
    p.txn(out, &client.txn(req).await?)?;
    Ok(Outcome::Ok)
}
