//! The readable transaction syntax of `raftkvctl txn`, and its JSON form.
//!
//! Readable form (etcdctl's shape): compares, a blank line, success operations, a blank
//! line, failure operations. Lines starting with `#` are comments.
//!
//! ```text
//! value("config") = "v1"
//! mod("lock") = 0
//!
//! put config v2
//! put "key with spaces" "value\n"
//! del --prefix tmp/
//!
//! get config
//! ```
//!
//! Compares: `value|mod|create|version|exists("KEY") OP TARGET` with OP one of `= != > <`;
//! `mod`, `create` and `version` take a number, `value` a string, `exists` true or false.
//! Operations: `put KEY VALUE`, `del [--prefix] KEY`, `get [--prefix] KEY`. Strings may be
//! bare words or double-quoted with `\"`, `\\`, `\n`, `\t` and `\xNN` escapes.
//!
//! JSON form (when the input starts with `{`):
//! `{"compare": [{"key": "k", "target": "value", "op": "=", "value": "v"}],
//!   "success": [{"put": {"key": "k", "value": "v"}}, {"del": {"key": "p/", "prefix": true}}],
//!   "failure": [{"get": {"key": "k"}}], "request_id": "optional"}`.

use anyhow::{Context, Result, bail};
use client::kv::{Compare, DeleteRequest, PutRequest, RangeRequest, RequestOp, TxnRequest, compare, request_op};
use serde_json::Value;

/// Parses either form.
pub(crate) fn parse(input: &str) -> Result<TxnRequest> {
    if input.trim_start().starts_with('{') { parse_json(input) } else { parse_readable(input) }
}

fn parse_readable(input: &str) -> Result<TxnRequest> {
    let mut sections: Vec<Vec<(usize, &str)>> = vec![Vec::new()];
    for (n, line) in input.lines().enumerate() {
        let line = line.trim();
        if line.starts_with('#') {
            continue;
        }
        if line.is_empty() {
            if !sections.last().is_some_and(Vec::is_empty) || sections.len() == 1 {
                sections.push(Vec::new());
            }
            continue;
        }
        if let Some(last) = sections.last_mut() {
            last.push((n + 1, line));
        }
    }
    while sections.last().is_some_and(Vec::is_empty) && sections.len() > 1 {
        sections.pop();
    }
    if sections.len() > 3 {
        bail!("a transaction has at most three sections (compares, success, failure) separated by blank lines");
    }
    let mut req = TxnRequest::default();
    let get = |i: usize| sections.get(i).cloned().unwrap_or_default();
    for (n, line) in get(0) {
        req.compare.push(parse_compare(line).with_context(|| format!("line {n}: {line}"))?);
    }
    for (n, line) in get(1) {
        req.success.push(parse_op(line).with_context(|| format!("line {n}: {line}"))?);
    }
    for (n, line) in get(2) {
        req.failure.push(parse_op(line).with_context(|| format!("line {n}: {line}"))?);
    }
    Ok(req)
}

/// Splits a line into words: bare, or double-quoted with escapes.
fn words(line: &str) -> Result<Vec<Vec<u8>>> {
    let mut out = Vec::new();
    let mut chars = line.chars().peekable();
    while let Some(&c) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
            continue;
        }
        let mut word = Vec::new();
        if c == '"' {
            chars.next();
            loop {
                match chars.next() {
                    None => bail!("unterminated quoted string"),
                    Some('"') => break,
                    Some('\\') => match chars.next() {
                        Some('n') => word.push(b'\n'),
                        Some('t') => word.push(b'\t'),
                        Some('\\') => word.push(b'\\'),
                        Some('"') => word.push(b'"'),
                        Some('x') => {
                            let hex: String = chars.by_ref().take(2).collect();
                            word.push(u8::from_str_radix(&hex, 16).with_context(|| format!("bad escape \\x{hex}"))?);
                        }
                        other => bail!("unknown escape \\{}", other.map(String::from).unwrap_or_default()),
                    },
                    Some(ch) => word.extend_from_slice(ch.encode_utf8(&mut [0; 4]).as_bytes()),
                }
            }
        } else {
            while let Some(&ch) = chars.peek() {
                if ch.is_whitespace() {
                    break;
                }
                word.extend_from_slice(ch.encode_utf8(&mut [0; 4]).as_bytes());
                chars.next();
            }
        }
        out.push(word);
    }
    Ok(out)
}

fn compare_result(op: &str) -> Result<compare::Result> {
    Ok(match op {
        "=" | "==" => compare::Result::Equal,
        "!=" => compare::Result::NotEqual,
        ">" => compare::Result::Greater,
        "<" => compare::Result::Less,
        other => bail!("unknown comparison {other:?}; use =, !=, > or <"),
    })
}

fn target(kind: &str, value: &[u8]) -> Result<compare::Target> {
    let text = String::from_utf8_lossy(value);
    let number = || text.parse::<u64>().with_context(|| format!("{kind} compares with a number, not {text:?}"));
    Ok(match kind {
        "value" => compare::Target::Value(value.to_vec().into()),
        "mod" | "modify" | "modify_index" => compare::Target::ModifyIndex(number()?),
        "create" | "create_index" => compare::Target::CreateIndex(number()?),
        "version" | "ver" => compare::Target::Version(number()?),
        "exists" => compare::Target::Exists(match text.as_ref() {
            "true" => true,
            "false" => false,
            other => bail!("exists compares with true or false, not {other:?}"),
        }),
        other => bail!("unknown compare target {other:?}; use value, mod, create, version or exists"),
    })
}

fn parse_compare(line: &str) -> Result<Compare> {
    // kind("key") OP target
    let open = line.find('(').context("expected TARGET(\"KEY\") OP VALUE")?;
    let close = line.rfind(')').context("expected a closing parenthesis")?;
    let kind = line[..open].trim();
    let key = words(&line[open + 1..close])?;
    let [key] = key.as_slice() else { bail!("expected one key inside the parentheses") };
    let rest = words(&line[close + 1..])?;
    let [op, value] = rest.as_slice() else { bail!("expected an operator and a value after the key") };
    Ok(Compare {
        key: key.clone().into(),
        result: compare_result(&String::from_utf8_lossy(op))? as i32,
        target: Some(target(kind, value)?),
    })
}

fn range_of(key: Vec<u8>, prefix: bool) -> RangeRequest {
    RangeRequest { key: key.into(), prefix, ..Default::default() }
}

fn parse_op(line: &str) -> Result<RequestOp> {
    let w = words(line)?;
    let (verb, args) = w.split_first().context("empty operation")?;
    let prefix = args.first().is_some_and(|a| a.as_slice() == b"--prefix");
    let args = if prefix { &args[1..] } else { args };
    let request = match (verb.as_slice(), args) {
        (b"put", [k, v]) if !prefix => request_op::Request::Put(PutRequest {
            key: k.clone().into(),
            value: v.clone().into(),
            ..Default::default()
        }),
        (b"del" | b"delete", [k]) => {
            request_op::Request::Delete(DeleteRequest { key: k.clone().into(), prefix, ..Default::default() })
        }
        (b"get" | b"range", [k]) => request_op::Request::Range(range_of(k.clone(), prefix)),
        _ => bail!("expected `put KEY VALUE`, `del [--prefix] KEY` or `get [--prefix] KEY`"),
    };
    Ok(RequestOp { request: Some(request) })
}

fn json_bytes(v: &Value, field: &str) -> Result<Vec<u8>> {
    match v.get(field) {
        Some(Value::String(s)) => Ok(s.as_bytes().to_vec()),
        Some(other) => bail!("{field} must be a string, not {other}"),
        None => bail!("missing {field}"),
    }
}

fn json_op(v: &Value) -> Result<RequestOp> {
    let prefix = |o: &Value| o.get("prefix").and_then(Value::as_bool).unwrap_or(false);
    let request = if let Some(p) = v.get("put") {
        request_op::Request::Put(PutRequest {
            key: json_bytes(p, "key")?.into(),
            value: json_bytes(p, "value")?.into(),
            ..Default::default()
        })
    } else if let Some(d) = v.get("del").or_else(|| v.get("delete")) {
        request_op::Request::Delete(DeleteRequest {
            key: json_bytes(d, "key")?.into(),
            prefix: prefix(d),
            ..Default::default()
        })
    } else if let Some(g) = v.get("get").or_else(|| v.get("range")) {
        request_op::Request::Range(range_of(json_bytes(g, "key")?, prefix(g)))
    } else {
        bail!("an operation is {{\"put\": …}}, {{\"del\": …}} or {{\"get\": …}}, not {v}")
    };
    Ok(RequestOp { request: Some(request) })
}

fn parse_json(input: &str) -> Result<TxnRequest> {
    let v: Value = serde_json::from_str(input).context("invalid JSON")?;
    let list = |name: &str| v.get(name).and_then(Value::as_array).cloned().unwrap_or_default();
    let mut req = TxnRequest::default();
    for (i, c) in list("compare").iter().enumerate() {
        let kind = c.get("target").and_then(Value::as_str).with_context(|| format!("compare {i}: missing target"))?;
        let op = c.get("op").and_then(Value::as_str).unwrap_or("=");
        let value = match c.get("value") {
            Some(Value::String(s)) => s.as_bytes().to_vec(),
            Some(Value::Number(n)) => n.to_string().into_bytes(),
            Some(Value::Bool(b)) => b.to_string().into_bytes(),
            _ => bail!("compare {i}: missing value"),
        };
        req.compare.push(Compare {
            key: json_bytes(c, "key").with_context(|| format!("compare {i}"))?.into(),
            result: compare_result(op)? as i32,
            target: Some(target(kind, &value)?),
        });
    }
    for (i, op) in list("success").iter().enumerate() {
        req.success.push(json_op(op).with_context(|| format!("success operation {i}"))?);
    }
    for (i, op) in list("failure").iter().enumerate() {
        req.failure.push(json_op(op).with_context(|| format!("failure operation {i}"))?);
    }
    if let Some(id) = v.get("request_id").and_then(Value::as_str) {
        req.request_id = id.to_string();
    }
    Ok(req)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readable_form() -> Result<()> {
        let req = parse(
            "# lock\nmod(\"lock\") = 0\nvalue(cfg) != \"a b\"\n\nput lock me\ndel --prefix tmp/\n\nget \"lock\"\n",
        )?;
        assert_eq!((req.compare.len(), req.success.len(), req.failure.len()), (2, 2, 1));
        assert_eq!(req.compare[0].target, Some(compare::Target::ModifyIndex(0)));
        assert_eq!(req.compare[1].target, Some(compare::Target::Value(b"a b".to_vec().into())));
        assert_eq!(req.compare[1].result, compare::Result::NotEqual as i32);
        match &req.success[1].request {
            Some(request_op::Request::Delete(d)) => assert!(d.prefix && d.key.as_ref() == b"tmp/"),
            other => panic!("unexpected {other:?}"),
        }
        Ok(())
    }

    #[test]
    fn escapes_and_success_only() -> Result<()> {
        let req = parse("\nput \"k\\x00\\xff\" \"line\\n\"\n")?;
        assert!(req.compare.is_empty());
        match &req.success[0].request {
            Some(request_op::Request::Put(p)) => {
                assert_eq!(p.key.as_ref(), b"k\x00\xff");
                assert_eq!(p.value.as_ref(), b"line\n");
            }
            other => panic!("unexpected {other:?}"),
        }
        Ok(())
    }

    #[test]
    fn errors_name_the_line() {
        let err = parse("mod(k) = x\n").err().map(|e| format!("{e:#}")).unwrap_or_default();
        assert!(err.contains("line 1") && err.contains("number"), "{err}");
        let err = parse("\nfrob k\n").err().map(|e| format!("{e:#}")).unwrap_or_default();
        assert!(err.contains("line 2") && err.contains("put KEY VALUE"), "{err}");
    }

    #[test]
    fn json_form() -> Result<()> {
        let req = parse(
            r#"{"compare":[{"key":"k","target":"version","op":">","value":2}],
                "success":[{"put":{"key":"k","value":"v"}}],"failure":[{"get":{"key":"k","prefix":true}}],
                "request_id":"r-1"}"#,
        )?;
        assert_eq!(req.compare[0].target, Some(compare::Target::Version(2)));
        assert_eq!(req.request_id, "r-1");
        assert!(matches!(&req.failure[0].request, Some(request_op::Request::Range(r)) if r.prefix));
        Ok(())
    }
}
