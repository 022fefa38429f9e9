//! Decoding of PostgreSQL's `pgoutput` logical replication messages (protocol version 1, text
//! values) into row changes with typed JSON values. Begin and Commit come parsed from the
//! replication client; this module reads the rest: Relation, Type, Insert, Update, Delete and
//! Truncate (others, such as Origin, are skipped).

use std::collections::HashMap;

use base64::Engine as _;
use serde_json::{Map, Value};

/// A column of a relation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Column {
    pub(crate) name: String,
    /// The type's OID.
    pub(crate) type_oid: u32,
}

/// A table as the stream describes it (sent before its first change, again when it changes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Relation {
    pub(crate) schema: String,
    pub(crate) table: String,
    pub(crate) columns: Vec<Column>,
}

impl Relation {
    /// `schema.table`.
    pub(crate) fn qualified(&self) -> String {
        format!("{}.{}", self.schema, self.table)
    }
}

/// What a change did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    Insert,
    Update,
    Delete,
    Truncate,
}

impl Op {
    /// The name in event types: `insert`, `update`, `delete`, `truncate`.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Op::Insert => "insert",
            Op::Update => "update",
            Op::Delete => "delete",
            Op::Truncate => "truncate",
        }
    }
}

/// One row change (or the truncation of one table).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Change {
    pub(crate) op: Op,
    pub(crate) schema: String,
    pub(crate) table: String,
    /// The new row (insert, update).
    pub(crate) new: Option<Map<String, Value>>,
    /// The old row, or its key (update and delete, as the table's replica identity allows).
    pub(crate) old: Option<Map<String, Value>>,
}

/// A message that could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DecodeError(pub(crate) String);

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "pgoutput: {}", self.0)
    }
}

/// A cursor over one message's bytes.
struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.bytes.len() < n {
            return Err(DecodeError("message truncated".into()));
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }
    fn i16(&mut self) -> Result<i16, DecodeError> {
        let b = self.take(2)?;
        Ok(i16::from_be_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32, DecodeError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn i32(&mut self) -> Result<i32, DecodeError> {
        let b = self.take(4)?;
        Ok(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn cstr(&mut self) -> Result<String, DecodeError> {
        let end = self
            .bytes
            .iter()
            .position(|b| *b == 0)
            .ok_or_else(|| DecodeError("string without its terminator".into()))?;
        let s = text(&self.bytes[..end]);
        self.bytes = &self.bytes[end + 1..];
        Ok(s)
    }
}

/// The relations of one replication stream, by OID, and the changes read with them.
#[derive(Debug, Default)]
pub(crate) struct Decoder {
    relations: HashMap<u32, Relation>,
}

impl Decoder {
    /// Reads one message: the changes it holds (none for a Relation, Type or other message).
    pub(crate) fn decode(&mut self, message: &[u8]) -> Result<Vec<Change>, DecodeError> {
        let mut r = Reader { bytes: message };
        match r.u8()? {
            b'R' => {
                let oid = r.u32()?;
                let schema = r.cstr()?;
                let table = r.cstr()?;
                let _replica_identity = r.u8()?;
                let n = r.i16()?;
                let mut columns = Vec::with_capacity(usize::try_from(n).unwrap_or(0));
                for _ in 0..n {
                    let _flags = r.u8()?;
                    let name = r.cstr()?;
                    let type_oid = r.u32()?;
                    let _typmod = r.i32()?;
                    columns.push(Column { name, type_oid });
                }
                self.relations.insert(
                    oid,
                    Relation {
                        schema,
                        table,
                        columns,
                    },
                );
                Ok(Vec::new())
            }
            b'I' => {
                let relation = self.relation(r.u32()?)?;
                expect(&mut r, b'N')?;
                let new = tuple(&mut r, relation)?;
                Ok(vec![change(Op::Insert, relation, Some(new), None)])
            }
            b'U' => {
                let relation = self.relation(r.u32()?)?;
                let mut old = None;
                let mut kind = r.u8()?;
                if kind == b'K' || kind == b'O' {
                    old = Some(tuple(&mut r, relation)?);
                    kind = r.u8()?;
                }
                if kind != b'N' {
                    return Err(DecodeError(format!(
                        "update: unexpected `{}`",
                        kind as char
                    )));
                }
                let new = tuple(&mut r, relation)?;
                Ok(vec![change(Op::Update, relation, Some(new), old)])
            }
            b'D' => {
                let relation = self.relation(r.u32()?)?;
                let kind = r.u8()?;
                if kind != b'K' && kind != b'O' {
                    return Err(DecodeError(format!(
                        "delete: unexpected `{}`",
                        kind as char
                    )));
                }
                let old = tuple(&mut r, relation)?;
                Ok(vec![change(Op::Delete, relation, None, Some(old))])
            }
            b'T' => {
                let n = r.u32()?;
                let _options = r.u8()?;
                (0..n)
                    .map(|_| {
                        let relation = self.relation(r.u32()?)?;
                        Ok(change(Op::Truncate, relation, None, None))
                    })
                    .collect()
            }
            // Type (custom types are sent as text anyway), Origin, logical messages.
            _ => Ok(Vec::new()),
        }
    }

    fn relation(&self, oid: u32) -> Result<&Relation, DecodeError> {
        self.relations.get(&oid).ok_or_else(|| {
            DecodeError(format!("a change of relation {oid} before its description"))
        })
    }
}

fn expect(r: &mut Reader<'_>, byte: u8) -> Result<(), DecodeError> {
    let got = r.u8()?;
    if got == byte {
        Ok(())
    } else {
        Err(DecodeError(format!(
            "expected `{}`, found `{}`",
            byte as char, got as char
        )))
    }
}

fn change(
    op: Op,
    relation: &Relation,
    new: Option<Map<String, Value>>,
    old: Option<Map<String, Value>>,
) -> Change {
    Change {
        op,
        schema: relation.schema.clone(),
        table: relation.table.clone(),
        new,
        old,
    }
}

/// TupleData: the columns' values, typed. An unchanged TOASTed value (not sent) is left out.
fn tuple(r: &mut Reader<'_>, relation: &Relation) -> Result<Map<String, Value>, DecodeError> {
    let n = r.i16()?;
    let mut row = Map::new();
    for i in 0..usize::try_from(n).unwrap_or(0) {
        let column = relation.columns.get(i).ok_or_else(|| {
            DecodeError(format!(
                "{} has {} columns, a row {n}",
                relation.qualified(),
                relation.columns.len()
            ))
        })?;
        match r.u8()? {
            b'n' => {
                row.insert(column.name.clone(), Value::Null);
            }
            b'u' => {}
            b't' => {
                let len = usize::try_from(r.i32()?)
                    .map_err(|_| DecodeError("negative value length".into()))?;
                let value = text(r.take(len)?);
                row.insert(column.name.clone(), typed(column.type_oid, value));
            }
            other => {
                return Err(DecodeError(format!(
                    "column `{}`: value kind `{}` (binary values are not asked for)",
                    column.name, other as char
                )));
            }
        }
    }
    Ok(row)
}

/// OIDs of the built-in types read into JSON values other than strings.
mod oid {
    pub(super) const BOOL: u32 = 16;
    pub(super) const BYTEA: u32 = 17;
    pub(super) const INT8: u32 = 20;
    pub(super) const INT2: u32 = 21;
    pub(super) const INT4: u32 = 23;
    pub(super) const OID: u32 = 26;
    pub(super) const JSON: u32 = 114;
    pub(super) const FLOAT4: u32 = 700;
    pub(super) const FLOAT8: u32 = 701;
    pub(super) const JSONB: u32 = 3802;
}

/// A value in PostgreSQL's text output, as JSON: booleans and integers as JSON, floats as JSON
/// numbers when finite, `json` and `jsonb` as the JSON they hold, `bytea` as base64; everything
/// else, `numeric` included (a JSON number would lose its precision in most readers), as its text.
pub(crate) fn typed(type_oid: u32, text: String) -> Value {
    match type_oid {
        oid::BOOL => Value::Bool(text == "t"),
        oid::INT2 | oid::INT4 | oid::INT8 | oid::OID => text
            .parse::<i64>()
            .map(Value::from)
            .unwrap_or(Value::String(text)),
        oid::FLOAT4 | oid::FLOAT8 => text
            .parse::<f64>()
            .ok()
            .and_then(serde_json::Number::from_f64)
            .map(Value::Number)
            .unwrap_or(Value::String(text)),
        oid::JSON | oid::JSONB => serde_json::from_str(&text).unwrap_or(Value::String(text)),
        oid::BYTEA => match text.strip_prefix("\\x").map(hex) {
            Some(Some(bytes)) => {
                Value::String(base64::engine::general_purpose::STANDARD.encode(bytes))
            }
            _ => Value::String(text),
        },
        _ => Value::String(text),
    }
}

fn hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Text the server sent (UTF-8 for a database in UTF-8), with U+FFFD for bytes that are not.
/// Checked with `str::from_utf8` first: its ASCII fast path is several times quicker than
/// `from_utf8_lossy`'s chunk walk, which took 5% of fnbroker's CPU on 4 KiB text columns
/// (perf, the benchmark's PostgreSQL 4 KiB row).
fn text(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(s) => s.to_owned(),
        Err(_) => String::from_utf8_lossy(bytes).into_owned(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn text_is_utf8_with_replacement_characters() {
        assert_eq!(super::text(b"caf\xc3\xa9"), "caf\u{e9}");
        assert_eq!(super::text(b"a\xffb"), "a\u{fffd}b");
        assert_eq!(super::text(b""), "");
    }

    use super::*;

    fn cstr(out: &mut Vec<u8>, s: &str) {
        out.extend_from_slice(s.as_bytes());
        out.push(0);
    }

    fn relation_message() -> Vec<u8> {
        let mut m = vec![b'R'];
        m.extend_from_slice(&16384u32.to_be_bytes());
        cstr(&mut m, "public");
        cstr(&mut m, "orders");
        m.push(b'd');
        let columns: [(&str, u32); 6] = [
            ("id", oid::INT8),
            ("paid", oid::BOOL),
            ("total", 1700),
            ("doc", oid::JSONB),
            ("blob", oid::BYTEA),
            ("note", 25),
        ];
        m.extend_from_slice(&(columns.len() as i16).to_be_bytes());
        for (name, oid) in columns {
            m.push(u8::from(name == "id"));
            cstr(&mut m, name);
            m.extend_from_slice(&oid.to_be_bytes());
            m.extend_from_slice(&(-1i32).to_be_bytes());
        }
        m
    }

    fn tuple_data(m: &mut Vec<u8>, values: &[Option<&str>]) {
        m.extend_from_slice(&(values.len() as i16).to_be_bytes());
        for v in values {
            match v {
                None => m.push(b'n'),
                Some(v) => {
                    m.push(b't');
                    m.extend_from_slice(&(v.len() as i32).to_be_bytes());
                    m.extend_from_slice(v.as_bytes());
                }
            }
        }
    }

    #[test]
    fn inserts_updates_deletes_and_truncates_with_typed_values() {
        let mut d = Decoder::default();
        assert!(d.decode(&relation_message()).expect("relation").is_empty());
        let row = [
            Some("7"),
            Some("t"),
            Some("12345678901234567890.12"),
            Some(r#"{"a": [1, 2]}"#),
            Some("\\x00ff"),
            None,
        ];
        let mut insert = vec![b'I'];
        insert.extend_from_slice(&16384u32.to_be_bytes());
        insert.push(b'N');
        tuple_data(&mut insert, &row);
        let changes = d.decode(&insert).expect("insert");
        assert_eq!(changes.len(), 1);
        let new = changes[0].new.as_ref().expect("new");
        assert_eq!(
            Value::Object(new.clone()),
            serde_json::json!({
                "id": 7, "paid": true, "total": "12345678901234567890.12",
                "doc": {"a": [1, 2]}, "blob": "AP8=", "note": null
            })
        );
        assert_eq!(
            (changes[0].op, changes[0].table.as_str()),
            (Op::Insert, "orders")
        );

        let mut update = vec![b'U'];
        update.extend_from_slice(&16384u32.to_be_bytes());
        update.push(b'O');
        tuple_data(&mut update, &row);
        update.push(b'N');
        tuple_data(
            &mut update,
            &[Some("7"), Some("f"), None, None, None, Some("x")],
        );
        let u = &d.decode(&update).expect("update")[0];
        assert_eq!(u.op, Op::Update);
        assert_eq!(u.old.as_ref().expect("old")["paid"], true);
        assert_eq!(u.new.as_ref().expect("new")["paid"], false);

        let mut delete = vec![b'D'];
        delete.extend_from_slice(&16384u32.to_be_bytes());
        delete.push(b'K');
        tuple_data(&mut delete, &[Some("7"), None, None, None, None, None]);
        let del = &d.decode(&delete).expect("delete")[0];
        assert_eq!((del.op, del.new.is_none()), (Op::Delete, true));
        assert_eq!(del.old.as_ref().expect("key")["id"], 7);

        let mut truncate = vec![b'T'];
        truncate.extend_from_slice(&1u32.to_be_bytes());
        truncate.push(0);
        truncate.extend_from_slice(&16384u32.to_be_bytes());
        let t = d.decode(&truncate).expect("truncate");
        assert_eq!((t[0].op, t[0].schema.as_str()), (Op::Truncate, "public"));
    }

    #[test]
    fn a_change_before_its_relation_or_a_truncated_message_is_an_error() {
        let mut d = Decoder::default();
        let mut insert = vec![b'I'];
        insert.extend_from_slice(&1u32.to_be_bytes());
        assert!(d.decode(&insert).is_err());
        assert!(d.decode(&relation_message()[..10]).is_err());
    }

    #[test]
    fn floats_that_json_cannot_hold_stay_text() {
        assert_eq!(
            typed(oid::FLOAT8, "NaN".into()),
            Value::String("NaN".into())
        );
        assert_eq!(typed(oid::FLOAT8, "1.5".into()), serde_json::json!(1.5));
        assert_eq!(
            typed(oid::INT8, "9223372036854775807".into()),
            serde_json::json!(i64::MAX)
        );
    }
}
