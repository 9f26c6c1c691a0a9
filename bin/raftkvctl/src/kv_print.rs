//! How the key-value commands print their answers: one [`Printer`] per output format
//! (`-o simple|json|table`), in the manner of etcdctl's printers.
//!
//! The trait's provided methods are the text forms that `simple` and `table` share; the two
//! differ only in how a key-value is shown ([`Printer::kvs`], [`Printer::get`]). [`Json`]
//! replaces every method: one JSON object per answer.

use std::io::Write;

use anyhow::Result;
use client::kv::{DeleteResponse, GetResponse, KeyValue, PutResponse, ResponseHeader, TxnResponse, response_op};
use serde_json::{Value, json};

use crate::Output;

/// The printer of an output format; `terminal`: stdout is a terminal (see [`Simple`]).
pub(crate) fn printer(output: Output, terminal: bool) -> &'static dyn Printer {
    match output {
        Output::Simple if terminal => &Simple { newline_after_value: true },
        Output::Simple => &Simple { newline_after_value: false },
        Output::Json => &Json,
        Output::Table => &Table,
    }
}

/// Prints each key-value command's answer in one output format.
pub(crate) trait Printer {
    /// Keys and values: `get --prefix`, `range`, and the key-values inside other answers.
    fn kvs(&self, out: &mut dyn Write, kvs: &[KeyValue], keys_only: bool) -> Result<()>;

    /// The key `get` found (`resp` is the whole answer, `kv` its key-value).
    fn get(&self, out: &mut dyn Write, resp: &GetResponse, kv: &KeyValue) -> Result<()>;

    /// `put`: `OK`, then the replaced key-value if asked for.
    fn put(&self, out: &mut dyn Write, resp: &PutResponse) -> Result<()> {
        writeln!(out, "OK")?;
        match &resp.prev_kv {
            Some(prev) => self.kvs(out, std::slice::from_ref(prev), false),
            None => Ok(()),
        }
    }

    /// `del`: how many keys were deleted, then the deleted key-values if asked for.
    fn del(&self, out: &mut dyn Write, resp: &DeleteResponse) -> Result<()> {
        writeln!(out, "{}", resp.deleted)?;
        self.kvs(out, &resp.prev_kvs, false)
    }

    /// `range --count-only`.
    fn count(&self, out: &mut dyn Write, count: u64) -> Result<()> {
        writeln!(out, "{count}")?;
        Ok(())
    }

    /// `txn`: `SUCCESS` or `FAILURE`, then each operation's result after a blank line.
    fn txn(&self, out: &mut dyn Write, resp: &TxnResponse) -> Result<()> {
        writeln!(out, "{}", if resp.succeeded { "SUCCESS" } else { "FAILURE" })?;
        for r in &resp.responses {
            writeln!(out)?;
            match &r.response {
                Some(response_op::Response::Put(_)) => writeln!(out, "OK")?,
                Some(response_op::Response::Delete(d)) => writeln!(out, "{}", d.deleted)?,
                Some(response_op::Response::Range(g)) => self.kvs(out, &g.kvs, false)?,
                None => writeln!(out, "(no result)")?,
            }
        }
        Ok(())
    }
}

/// `-o simple`: raw bytes, a key line then a value line; `get` prints the value alone,
/// byte for byte, followed by a newline only on a terminal (where the prompt would
/// otherwise follow the value on its line), so that `get KEY > FILE` writes exactly the
/// stored bytes.
pub(crate) struct Simple {
    /// Whether `get` ends the value with a newline (stdout is a terminal).
    pub(crate) newline_after_value: bool,
}

impl Printer for Simple {
    fn kvs(&self, out: &mut dyn Write, kvs: &[KeyValue], keys_only: bool) -> Result<()> {
        for kv in kvs {
            out.write_all(&kv.key)?;
            writeln!(out)?;
            if !keys_only {
                out.write_all(&kv.value)?;
                writeln!(out)?;
            }
        }
        Ok(())
    }

    fn get(&self, out: &mut dyn Write, _resp: &GetResponse, kv: &KeyValue) -> Result<()> {
        out.write_all(&kv.value)?;
        if self.newline_after_value {
            writeln!(out)?;
        }
        Ok(())
    }
}

/// `-o table`: key-values in columns with their indexes; the rest as [`Simple`].
pub(crate) struct Table;

impl Printer for Table {
    fn kvs(&self, mut out: &mut dyn Write, kvs: &[KeyValue], _keys_only: bool) -> Result<()> {
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
        crate::print_table(&mut out, &["KEY", "VALUE", "CREATE INDEX", "MODIFY INDEX", "VERSION"], &rows)?;
        Ok(())
    }

    fn get(&self, out: &mut dyn Write, _resp: &GetResponse, kv: &KeyValue) -> Result<()> {
        self.kvs(out, std::slice::from_ref(kv), false)
    }
}

/// `-o json`: one JSON object per answer, with the Raft indexes.
pub(crate) struct Json;

impl Printer for Json {
    fn kvs(&self, out: &mut dyn Write, kvs: &[KeyValue], keys_only: bool) -> Result<()> {
        let kvs: Vec<Value> = kvs
            .iter()
            .map(|kv| {
                let mut v = kv_json(kv);
                if keys_only && let Value::Object(o) = &mut v {
                    o.remove("value");
                    o.remove("value_base64");
                }
                v
            })
            .collect();
        writeln!(out, "{}", json!({ "count": kvs.len(), "kvs": kvs }))?;
        Ok(())
    }

    fn get(&self, out: &mut dyn Write, resp: &GetResponse, kv: &KeyValue) -> Result<()> {
        let mut v = kv_json(kv);
        if let Value::Object(o) = &mut v {
            o.insert("index".into(), json!(resp.header.as_ref().map_or(0, |h| h.index)));
            o.insert("header".into(), header_json(resp.header.as_ref()));
        }
        writeln!(out, "{v}")?;
        Ok(())
    }

    fn put(&self, out: &mut dyn Write, resp: &PutResponse) -> Result<()> {
        let prev = resp.prev_kv.as_ref().map_or(Value::Null, kv_json);
        writeln!(out, "{}", json!({ "header": header_json(resp.header.as_ref()), "prev_kv": prev }))?;
        Ok(())
    }

    fn del(&self, out: &mut dyn Write, resp: &DeleteResponse) -> Result<()> {
        let answer = json!({
            "deleted": resp.deleted,
            "index": resp.header.as_ref().map_or(0, |h| h.index),
            "prev_kvs": resp.prev_kvs.iter().map(kv_json).collect::<Vec<_>>(),
        });
        writeln!(out, "{answer}")?;
        Ok(())
    }

    fn count(&self, out: &mut dyn Write, count: u64) -> Result<()> {
        writeln!(out, "{}", json!({ "count": count }))?;
        Ok(())
    }

    fn txn(&self, out: &mut dyn Write, resp: &TxnResponse) -> Result<()> {
        let responses: Vec<Value> = resp.responses.iter().map(|r| txn_op_json(r.response.as_ref())).collect();
        let header = header_json(resp.header.as_ref());
        writeln!(out, "{}", json!({ "succeeded": resp.succeeded, "header": header, "responses": responses }))?;
        Ok(())
    }
}

/// One transaction operation's result as JSON.
fn txn_op_json(response: Option<&response_op::Response>) -> Value {
    match response {
        Some(response_op::Response::Put(p)) => {
            json!({ "put": { "prev_kv": p.prev_kv.as_ref().map_or(Value::Null, kv_json) } })
        }
        Some(response_op::Response::Delete(d)) => json!({ "del": { "deleted": d.deleted } }),
        Some(response_op::Response::Range(g)) => {
            json!({ "get": { "count": g.count, "kvs": g.kvs.iter().map(kv_json).collect::<Vec<_>>() } })
        }
        None => Value::Null,
    }
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

/// A key-value as JSON (also used by `watch -o json`).
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

#[cfg(test)]
mod tests {
    use client::kv::{DeleteResponse as DelResp, RangeResponse, ResponseOp};

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

    fn kv(key: &str, value: &str, index: u64) -> KeyValue {
        KeyValue {
            key: key.as_bytes().to_vec().into(),
            value: value.as_bytes().to_vec().into(),
            create_index: index,
            modify_index: index,
            version: 1,
        }
    }

    fn header(index: u64) -> Option<ResponseHeader> {
        Some(ResponseHeader { index, ..Default::default() })
    }

    /// What `print` writes with each output format: (simple, table, json).
    fn render(print: impl Fn(&dyn Printer, &mut dyn Write) -> Result<()>) -> [String; 3] {
        [Output::Simple, Output::Table, Output::Json].map(|output| {
            let mut buf = Vec::new();
            print(printer(output, true), &mut buf).unwrap_or_else(|e| panic!("{output:?}: {e}"));
            String::from_utf8(buf).unwrap_or_else(|e| panic!("{output:?}: {e}"))
        })
    }

    const TABLE_HEADER: &str = "KEY  VALUE  CREATE INDEX  MODIFY INDEX  VERSION\n";

    #[test]
    fn get_prints_the_value_a_row_or_an_object() {
        let resp = GetResponse { header: header(7), found: true, kv: Some(kv("k", "v", 5)), ..GetResponse::default() };
        let [simple, table, json] = render(|p, out| p.get(out, &resp, &kv("k", "v", 5)));
        assert_eq!(simple, "v\n", "on a terminal");
        let mut piped = Vec::new();
        printer(Output::Simple, false).get(&mut piped, &resp, &kv("k", "v\n\0", 5)).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(piped, b"v\n\0", "not on a terminal: exactly the stored bytes");
        assert_eq!(table, format!("{TABLE_HEADER}k    v      5             5             1\n"));
        let v: Value = serde_json::from_str(&json).unwrap_or_else(|e| panic!("{e}: {json}"));
        assert_eq!((v["key"].as_str(), v["value"].as_str(), v["index"].as_u64()), (Some("k"), Some("v"), Some(7)));
        assert_eq!(v["header"]["index"], 7);
    }

    #[test]
    fn kvs_print_lines_rows_or_a_counted_list() {
        let kvs = [kv("a", "1", 2), kv("b", "2", 3)];
        let [simple, table, json] = render(|p, out| p.kvs(out, &kvs, false));
        assert_eq!(simple, "a\n1\nb\n2\n");
        assert!(table.starts_with(TABLE_HEADER) && table.lines().count() == 3, "{table}");
        let v: Value = serde_json::from_str(&json).unwrap_or_else(|e| panic!("{e}: {json}"));
        assert_eq!((v["count"].as_u64(), v["kvs"][1]["key"].as_str()), (Some(2), Some("b")));
        let [simple, table, _] = render(|p, out| p.kvs(out, &kvs, true));
        assert_eq!(simple, "a\nb\n", "keys only");
        assert_eq!(table.lines().count(), 3, "a table always shows values: {table}");
        let [_, _, json] = render(|p, out| p.kvs(out, &kvs, true));
        let v: Value = serde_json::from_str(&json).unwrap_or_else(|e| panic!("{e}: {json}"));
        assert_eq!((v["kvs"][0]["key"].as_str(), v["kvs"][0].get("value")), (Some("a"), None), "keys only: {json}");
    }

    #[test]
    fn put_prints_ok_and_the_replaced_value() {
        let resp = PutResponse { header: header(9), prev_kv: Some(kv("k", "old", 4)) };
        let [simple, table, json] = render(|p, out| p.put(out, &resp));
        assert_eq!(simple, "OK\nk\nold\n");
        assert!(table.starts_with(&format!("OK\n{TABLE_HEADER}")), "{table}");
        let v: Value = serde_json::from_str(&json).unwrap_or_else(|e| panic!("{e}: {json}"));
        assert_eq!((v["header"]["index"].as_u64(), v["prev_kv"]["value"].as_str()), (Some(9), Some("old")));
        let [simple, _, json] = render(|p, out| p.put(out, &PutResponse { header: header(9), prev_kv: None }));
        assert_eq!(simple, "OK\n");
        assert!(json.contains("\"prev_kv\":null"), "{json}");
    }

    #[test]
    fn del_prints_the_count_and_what_was_deleted() {
        let resp = DelResp { header: header(11), deleted: 1, prev_kvs: vec![kv("k", "v", 3)] };
        let [simple, table, json] = render(|p, out| p.del(out, &resp));
        assert_eq!(simple, "1\nk\nv\n");
        assert!(table.starts_with(&format!("1\n{TABLE_HEADER}")), "{table}");
        let v: Value = serde_json::from_str(&json).unwrap_or_else(|e| panic!("{e}: {json}"));
        assert_eq!((v["deleted"].as_u64(), v["index"].as_u64()), (Some(1), Some(11)));
        assert_eq!(v["prev_kvs"][0]["key"], "k");
        let [simple, table, _] = render(|p, out| p.del(out, &DelResp { deleted: 0, ..DelResp::default() }));
        assert_eq!((simple.as_str(), table), ("0\n", format!("0\n{TABLE_HEADER}")));
    }

    #[test]
    fn count_prints_a_number_or_an_object() {
        assert_eq!(render(|p, out| p.count(out, 42)), ["42\n", "42\n", "{\"count\":42}\n"].map(String::from));
    }

    #[test]
    fn txn_prints_the_outcome_then_each_result() {
        use response_op::Response;
        let ops = [
            Some(Response::Put(PutResponse::default())),
            Some(Response::Delete(DelResp { deleted: 2, ..DelResp::default() })),
            Some(Response::Range(RangeResponse { kvs: vec![kv("k", "v", 1)], count: 1, ..RangeResponse::default() })),
            None,
        ];
        let responses = ops.into_iter().map(|response| ResponseOp { response }).collect();
        let resp = TxnResponse { header: header(20), succeeded: false, responses };
        let [simple, _, json] = render(|p, out| p.txn(out, &resp));
        assert_eq!(simple, "FAILURE\n\nOK\n\n2\n\nk\nv\n\n(no result)\n");
        let v: Value = serde_json::from_str(&json).unwrap_or_else(|e| panic!("{e}: {json}"));
        assert_eq!((v["succeeded"].as_bool(), v["header"]["index"].as_u64()), (Some(false), Some(20)));
        assert_eq!(v["responses"][1]["del"]["deleted"], 2);
        assert_eq!(v["responses"][2]["get"]["kvs"][0]["value"], "v");
        assert!(v["responses"][3].is_null());
    }
}
