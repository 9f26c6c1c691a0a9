//! The key-value commands of raftkvctl: put, get, del, range, txn.

use std::io::{Read, Write};

use anyhow::{Context, Result, bail};
use clap::{Subcommand, ValueEnum};
use client::Client;
use client::kv::{
    Consistency as PbConsistency, DeleteRequest, GetRequest, KeyValue, PutRequest, RangeRequest, ResponseHeader,
    response_op,
};
use serde_json::{Value, json};

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
    Put {
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
    },
    /// Print a key's value (exit status 1 if it does not exist), or every key of a prefix.
    #[command(after_help = "\
Examples:
  raftkvctl get greeting
  raftkvctl get --prefix config/               # key and value lines, for every key
  raftkvctl get --consistency stale greeting   # answered by this node, no check
  raftkvctl -o json get greeting
  raftkvctl -o table get --prefix config/
  raftkvctl get --min-index 42 --wait 30s --command-timeout 40s greeting   # blocks until greeting changes after 42")]
    Get {
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
    },
    /// Delete a key, a range or a prefix; prints how many keys were deleted.
    #[command(after_help = "\
Examples:
  raftkvctl del greeting
  raftkvctl del --prefix tmp/
  raftkvctl del --range-end b a             # every key in [a, b)
  raftkvctl del --expect-index 42 config    # only if config's modify_index is 42
  raftkvctl del --prev-kv --prefix tmp/     # also print what was deleted")]
    Del {
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
    },
    /// List keys in a range, following pages to the end (or stopping at --limit).
    #[command(after_help = "\
Examples:
  raftkvctl range a c                 # every key in [a, c)
  raftkvctl range --prefix config/
  raftkvctl range --count-only --prefix logs/
  raftkvctl range --keys-only --limit 10 ''   # the first ten keys")]
    Range {
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
    },
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
    Txn {
        /// At-most-once id (by default raftkvctl picks one).
        #[arg(long = "request-id", default_value = "")]
        request_id: String,
    },
}

/// Standard base64, for keys and values that are not UTF-8 in JSON output.
fn base64(bytes: &[u8]) -> String {
    const TABLE: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], chunk.get(1).copied().unwrap_or(0), chunk.get(2).copied().unwrap_or(0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (i, shift) in [18, 12, 6, 0].into_iter().enumerate() {
            if i <= chunk.len() {
                out.push(TABLE[((n >> shift) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Puts `bytes` in a JSON object: as `name` when UTF-8, else as `name_base64`.
fn put_bytes(obj: &mut serde_json::Map<String, Value>, name: &str, bytes: &[u8]) {
    match std::str::from_utf8(bytes) {
        Ok(s) => obj.insert(name.to_string(), Value::String(s.to_string())),
        Err(_) => obj.insert(format!("{name}_base64"), Value::String(base64(bytes))),
    };
}

pub(crate) fn kv_json(kv: &KeyValue) -> Value {
    let mut obj = serde_json::Map::new();
    put_bytes(&mut obj, "key", &kv.key);
    put_bytes(&mut obj, "value", &kv.value);
    obj.insert("create_index".into(), json!(kv.create_index));
    obj.insert("modify_index".into(), json!(kv.modify_index));
    obj.insert("version".into(), json!(kv.version));
    Value::Object(obj)
}

fn header_json(h: Option<&ResponseHeader>) -> Value {
    match h {
        Some(h) => json!({
            "index": h.index, "node_id": h.node_id, "leader_id": h.leader_id, "term": h.term,
            "stale": h.stale, "known_committed_index": h.known_committed_index,
            "millis_since_leader_contact": h.millis_since_leader_contact,
        }),
        None => Value::Null,
    }
}

fn print_kvs(out: &mut impl Write, output: Output, kvs: &[KeyValue], keys_only: bool) -> Result<()> {
    match output {
        Output::Table => {
            let rows: Vec<Vec<String>> = kvs
                .iter()
                .map(|kv| {
                    vec![
                        String::from_utf8_lossy(&kv.key).into_owned(),
                        String::from_utf8_lossy(&kv.value).into_owned(),
                        kv.create_index.to_string(),
                        kv.modify_index.to_string(),
                        kv.version.to_string(),
                    ]
                })
                .collect();
            crate::print_table(out, &["KEY", "VALUE", "CREATE INDEX", "MODIFY INDEX", "VERSION"], &rows)?;
        }
        _ => {
            for kv in kvs {
                out.write_all(&kv.key)?;
                writeln!(out)?;
                if !keys_only {
                    out.write_all(&kv.value)?;
                    writeln!(out)?;
                }
            }
        }
    }
    Ok(())
}

fn read_stdin() -> Result<Vec<u8>> {
    let mut buf = Vec::new();
    std::io::stdin().lock().read_to_end(&mut buf).context("reading stdin")?;
    Ok(buf)
}

pub(crate) async fn run(cmd: &KvCommand, client: &Client, output: Output, out: &mut impl Write) -> Result<Outcome> {
    let json = output == Output::Json;
    match cmd {
        KvCommand::Put { key, value, if_absent, expect_index, prev_kv, request_id } => {
            let value = if value == "-" { read_stdin()? } else { value.as_bytes().to_vec() };
            let resp = client
                .put_request(PutRequest {
                    key: key.as_bytes().to_vec().into(),
                    value: value.into(),
                    expected_modify_index: *expect_index,
                    if_absent: *if_absent,
                    prev_kv: *prev_kv,
                    request_id: request_id.clone(),
                })
                .await?;
            if json {
                let prev = resp.prev_kv.as_ref().map_or(Value::Null, kv_json);
                writeln!(out, "{}", json!({ "header": header_json(resp.header.as_ref()), "prev_kv": prev }))?;
            } else {
                writeln!(out, "OK")?;
                if let Some(prev) = &resp.prev_kv {
                    print_kvs(out, output, std::slice::from_ref(prev), false)?;
                }
            }
        }
        KvCommand::Get { key, prefix, consistency, keys_only, min_index, wait } => {
            if *prefix {
                let kvs = client
                    .range_all(RangeRequest {
                        key: key.as_bytes().to_vec().into(),
                        prefix: true,
                        keys_only: *keys_only,
                        consistency: consistency.proto(),
                        ..Default::default()
                    })
                    .await?;
                if json {
                    writeln!(
                        out,
                        "{}",
                        json!({ "count": kvs.len(), "kvs": kvs.iter().map(kv_json).collect::<Vec<_>>() })
                    )?;
                } else {
                    print_kvs(out, output, &kvs, *keys_only)?;
                }
                return Ok(Outcome::Ok);
            }
            let resp = client
                .get_request(GetRequest {
                    key: key.as_bytes().to_vec().into(),
                    consistency: consistency.proto(),
                    min_index: min_index.unwrap_or(0),
                    wait_ms: wait.map_or(0, |w| u64::try_from(w.as_millis()).unwrap_or(u64::MAX)),
                })
                .await?;
            let kv = match resp.kv {
                Some(kv) if resp.found => kv,
                _ => return Ok(Outcome::NotFound(format!("key {key:?} not found"))),
            };
            match output {
                Output::Json => {
                    let mut v = kv_json(&kv);
                    if let Value::Object(o) = &mut v {
                        o.insert("index".into(), json!(resp.header.as_ref().map_or(0, |h| h.index)));
                        o.insert("header".into(), header_json(resp.header.as_ref()));
                    }
                    writeln!(out, "{v}")?;
                }
                Output::Table => print_kvs(out, output, &[kv], false)?,
                Output::Simple => {
                    out.write_all(&kv.value)?;
                    writeln!(out)?;
                }
            }
        }
        KvCommand::Del { key, prefix, range_end, expect_index, prev_kv, request_id } => {
            let range_end = match range_end.as_deref() {
                Some("\\0") => vec![0],
                Some(e) => e.as_bytes().to_vec(),
                None => Vec::new(),
            };
            let resp = client
                .delete_request(DeleteRequest {
                    key: key.as_bytes().to_vec().into(),
                    range_end: range_end.into(),
                    prefix: *prefix,
                    expected_modify_index: *expect_index,
                    prev_kv: *prev_kv,
                    request_id: request_id.clone(),
                })
                .await?;
            if json {
                writeln!(
                    out,
                    "{}",
                    json!({
                        "deleted": resp.deleted,
                        "index": resp.header.as_ref().map_or(0, |h| h.index),
                        "prev_kvs": resp.prev_kvs.iter().map(kv_json).collect::<Vec<_>>(),
                    })
                )?;
            } else {
                writeln!(out, "{}", resp.deleted)?;
                print_kvs(out, output, &resp.prev_kvs, false)?;
            }
        }
        KvCommand::Range { start, end, prefix, limit, keys_only, count_only, consistency } => {
            let range_end = match end {
                Some(e) => e.as_bytes().to_vec(),
                None if *prefix => Vec::new(),
                None => vec![0],
            };
            let req = RangeRequest {
                key: start.as_bytes().to_vec().into(),
                range_end: range_end.into(),
                prefix: *prefix,
                limit: *limit,
                keys_only: *keys_only,
                count_only: *count_only,
                consistency: consistency.proto(),
            };
            if *count_only {
                let page = client.range(req).await?;
                if json {
                    writeln!(out, "{}", json!({ "count": page.count }))?;
                } else {
                    writeln!(out, "{}", page.count)?;
                }
                return Ok(Outcome::Ok);
            }
            let kvs = if *limit > 0 { client.range(req).await?.kvs } else { client.range_all(req).await? };
            if json {
                writeln!(out, "{}", json!({ "count": kvs.len(), "kvs": kvs.iter().map(kv_json).collect::<Vec<_>>() }))?;
            } else {
                print_kvs(out, output, &kvs, *keys_only)?;
            }
        }
        KvCommand::Txn { request_id } => {
            let input = String::from_utf8(read_stdin()?).context("the transaction on stdin is not UTF-8")?;
            if input.trim().is_empty() {
                bail!("no transaction on stdin; see `raftkvctl txn --help`");
            }
            let mut req = txn_syntax::parse(&input)?;
            if !request_id.is_empty() {
                req.request_id = request_id.clone();
            }
            let resp = client.txn(req).await?;
            if json {
                let responses: Vec<Value> = resp
                    .responses
                    .iter()
                    .map(|r| match &r.response {
                        Some(response_op::Response::Put(p)) => {
                            json!({ "put": { "prev_kv": p.prev_kv.as_ref().map_or(Value::Null, kv_json) } })
                        }
                        Some(response_op::Response::Delete(d)) => json!({ "del": { "deleted": d.deleted } }),
                        Some(response_op::Response::Range(g)) => {
                            json!({ "get": { "count": g.count, "kvs": g.kvs.iter().map(kv_json).collect::<Vec<_>>() } })
                        }
                        None => Value::Null,
                    })
                    .collect();
                writeln!(
                    out,
                    "{}",
                    json!({ "succeeded": resp.succeeded, "header": header_json(resp.header.as_ref()), "responses": responses })
                )?;
            } else {
                writeln!(out, "{}", if resp.succeeded { "SUCCESS" } else { "FAILURE" })?;
                for r in &resp.responses {
                    writeln!(out)?;
                    match &r.response {
                        Some(response_op::Response::Put(_)) => writeln!(out, "OK")?,
                        Some(response_op::Response::Delete(d)) => writeln!(out, "{}", d.deleted)?,
                        Some(response_op::Response::Range(g)) => print_kvs(out, output, &g.kvs, false)?,
                        None => writeln!(out, "(no result)")?,
                    }
                }
            }
        }
    }
    Ok(Outcome::Ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_the_standard() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(&[0xff, 0x00, 0xfe, 0x01]), "/wD+AQ==");
    }

    #[test]
    fn binary_bytes_go_to_base64_fields() {
        let v = kv_json(&KeyValue { key: vec![0xff].into(), value: b"ok".to_vec().into(), ..Default::default() });
        assert_eq!(v["key_base64"], "/w==");
        assert_eq!(v["value"], "ok");
    }
}
