//! `raftkvctl watch`: prints the changes to a key or a prefix as they come, resuming on
//! another endpoint after a disconnect without losing or repeating a change.

use std::io::Write;

use anyhow::Result;
use client::kv::event::EventType;
use client::kv::watch_response::Kind;
use client::kv::{Event, KeyValue, WatchResponse};
use client::{Client, WatchOptions};
use serde_json::{Value, json};

use crate::Output;
use crate::kv_print::kv_json;

/// The watch command's arguments.
#[derive(Debug, clap::Args)]
pub(crate) struct WatchArgs {
    /// The key (or the prefix, with --prefix).
    key: String,
    /// Every key starting with KEY.
    #[arg(long)]
    prefix: bool,
    /// Start with the changes at this index (replayed from the node's history); without it,
    /// only changes from now on.
    #[arg(long = "from", value_name = "INDEX")]
    from: Option<u64>,
    /// Print keys without values.
    #[arg(long = "keys-only")]
    keys_only: bool,
    /// Also print progress messages (every change up to INDEX was printed).
    #[arg(long)]
    progress: bool,
    /// How often the server sends progress (e.g. 10s).
    #[arg(long = "progress-interval", value_parser = duration::parse, value_name = "DURATION")]
    progress_interval: Option<std::time::Duration>,
    /// Exit after printing this many events.
    #[arg(long = "max-events")]
    max_events: Option<u64>,
}

/// One printed line per event: `INDEX PUT KEY VALUE` or `INDEX DELETE KEY`; after a snapshot
/// install on the serving node `INDEX ABANDONED`, then `INDEX STATE KEY VALUE` per key
/// restored. `-o json`: one object per line.
pub(crate) async fn run(args: &WatchArgs, client: &Client, output: Output, out: &mut impl Write) -> Result<()> {
    let options = WatchOptions {
        prefix: args.prefix,
        start_index: args.from.unwrap_or(0),
        keys_only: args.keys_only,
        progress_interval: args.progress_interval,
        timeout_seconds: 0,
    };
    let mut stream = client.watch(args.key.as_bytes().to_vec(), options);
    let mut printed = 0u64;
    loop {
        let msg = stream.next().await?;
        for line in lines(&msg, output == Output::Json, args.progress, args.keys_only) {
            out.write_all(&line)?;
            out.write_all(b"\n")?;
        }
        out.flush()?;
        if Kind::try_from(msg.kind) == Ok(Kind::Events) {
            printed += msg.events.len() as u64;
            if args.max_events.is_some_and(|max| printed >= max) {
                return Ok(());
            }
        }
    }
}

fn event_json(index: u64, e: &Event) -> Value {
    let kind = if e.r#type == EventType::Delete as i32 { "delete" } else { "put" };
    let mut v = e.kv.as_ref().map_or_else(|| json!({}), kv_json);
    if let Value::Object(o) = &mut v {
        o.insert("type".into(), json!(kind));
        o.insert("index".into(), json!(index));
        if kind == "delete" {
            o.remove("value");
        }
    }
    v
}

fn simple_line(parts: &[&[u8]]) -> Vec<u8> {
    parts.join(&b' ')
}

fn kv_line(index: u64, what: &str, kv: &KeyValue, with_value: bool) -> Vec<u8> {
    let index = index.to_string();
    let mut parts: Vec<&[u8]> = vec![index.as_bytes(), what.as_bytes(), &kv.key];
    if with_value {
        parts.push(&kv.value);
    }
    simple_line(&parts)
}

/// The lines printed for one message.
fn lines(msg: &WatchResponse, json: bool, progress: bool, keys_only: bool) -> Vec<Vec<u8>> {
    let kind = Kind::try_from(msg.kind).unwrap_or(Kind::Events);
    let mut out = Vec::new();
    match kind {
        Kind::Events => {
            for e in &msg.events {
                let Some(kv) = &e.kv else { continue };
                if json {
                    out.push(event_json(msg.index, e).to_string().into_bytes());
                } else if e.r#type == EventType::Delete as i32 {
                    out.push(kv_line(msg.index, "DELETE", kv, false));
                } else {
                    out.push(kv_line(msg.index, "PUT", kv, !keys_only));
                }
            }
        }
        Kind::Abandoned => {
            if json {
                let kvs: Vec<Value> = msg.kvs.iter().map(kv_json).collect();
                out.push(
                    json!({ "type": "abandoned", "index": msg.index, "kvs": kvs, "more": msg.more })
                        .to_string()
                        .into_bytes(),
                );
            } else {
                out.push(format!("{} ABANDONED", msg.index).into_bytes());
                out.extend(msg.kvs.iter().map(|kv| kv_line(msg.index, "STATE", kv, !keys_only)));
            }
        }
        Kind::Progress if progress => {
            if json {
                out.push(json!({ "type": "progress", "index": msg.index }).to_string().into_bytes());
            } else {
                out.push(format!("{} PROGRESS", msg.index).into_bytes());
            }
        }
        Kind::Progress | Kind::Created | Kind::Timeout => {}
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(key: &str, value: &str, index: u64) -> Event {
        Event {
            r#type: EventType::Put as i32,
            kv: Some(KeyValue {
                key: key.as_bytes().to_vec().into(),
                value: value.as_bytes().to_vec().into(),
                create_index: 3,
                modify_index: index,
                version: 2,
            }),
        }
    }

    #[test]
    fn events_print_one_line_each() {
        let del = Event {
            r#type: EventType::Delete as i32,
            kv: Some(KeyValue { key: b"b".to_vec().into(), modify_index: 7, ..Default::default() }),
        };
        let msg = WatchResponse {
            kind: Kind::Events as i32,
            index: 7,
            events: vec![put("a", "x y", 7), del],
            ..Default::default()
        };
        assert_eq!(lines(&msg, false, false, false), [b"7 PUT a x y".to_vec(), b"7 DELETE b".to_vec()]);
        let json: Vec<Value> =
            lines(&msg, true, false, false).iter().filter_map(|l| serde_json::from_slice(l).ok()).collect();
        assert_eq!(
            json[0],
            json!({"type": "put", "index": 7, "key": "a", "value": "x y", "create_index": 3, "modify_index": 7, "version": 2})
        );
        assert_eq!(json[1]["type"], "delete");
        assert!(json[1].get("value").is_none());
    }

    #[test]
    fn progress_prints_only_when_asked() {
        let msg = WatchResponse { kind: Kind::Progress as i32, index: 9, ..Default::default() };
        assert!(lines(&msg, false, false, false).is_empty());
        assert_eq!(lines(&msg, false, true, false), [b"9 PROGRESS".to_vec()]);
    }
}
