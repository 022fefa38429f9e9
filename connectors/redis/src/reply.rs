//! Reading the server's answers to the stream commands (RESP2 arrays, or RESP3 maps).

use std::collections::HashMap;

use redis::Value;

/// One entry as the server gave it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RawEntry {
    /// The entry id.
    pub(crate) id: String,
    /// Its fields in order; `None` for an entry deleted while pending.
    pub(crate) fields: Option<Vec<(Vec<u8>, Vec<u8>)>>,
}

/// What a consumer group says of itself (`XINFO GROUPS`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct GroupInfo {
    /// Entries not delivered to the group yet (Redis 7; unknown after some deletions).
    pub(crate) lag: Option<u64>,
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        Value::VerbatimString { text, .. } => Some(text.clone()),
        Value::Int(i) => Some(i.to_string()),
        _ => None,
    }
}

fn bytes(v: &Value) -> Vec<u8> {
    match v {
        Value::BulkString(b) => b.clone(),
        other => text(other).unwrap_or_default().into_bytes(),
    }
}

fn int(v: &Value) -> Option<u64> {
    match v {
        Value::Int(i) => u64::try_from(*i).ok(),
        other => text(other)?.parse().ok(),
    }
}

/// The items of an array, set, or the flattened pairs of a map.
fn items(v: &Value) -> Vec<&Value> {
    match v {
        Value::Array(items) | Value::Set(items) => items.iter().collect(),
        Value::Map(pairs) => pairs.iter().flat_map(|(k, v)| [k, v]).collect(),
        Value::Attribute { data, .. } => items(data),
        _ => Vec::new(),
    }
}

/// `[id, [field, value, ...]]` entries (the value nil for an entry deleted while pending), as
/// `XRANGE` and `XCLAIM` answer.
pub(crate) fn entries(v: &Value) -> Vec<RawEntry> {
    items(v)
        .into_iter()
        .filter_map(|entry| {
            let parts = items(entry);
            let id = text(parts.first()?)?;
            let fields = match parts.get(1) {
                None | Some(Value::Nil) => None,
                Some(fields) => Some(
                    items(fields)
                        .chunks(2)
                        .filter(|pair| pair.len() == 2)
                        .map(|pair| (bytes(pair[0]), bytes(pair[1])))
                        .collect(),
                ),
            };
            Some(RawEntry { id, fields })
        })
        .collect()
}

/// The entries of an `XREADGROUP` answer for one stream (`[[stream, entries]]`, or a map of
/// stream to entries; nil when none came in time).
pub(crate) fn read_entries(v: &Value) -> Vec<RawEntry> {
    let mut all = Vec::new();
    match v {
        Value::Map(pairs) => {
            for (_, stream_entries) in pairs {
                all.extend(entries(stream_entries));
            }
        }
        other => {
            for stream in items(other) {
                if let Some(stream_entries) = items(stream).get(1) {
                    all.extend(entries(stream_entries));
                }
            }
        }
    }
    all
}

/// An `XAUTOCLAIM` answer: the next cursor (`0-0` once round) and the entries claimed.
pub(crate) fn claimed(v: &Value) -> (String, Vec<RawEntry>) {
    let parts = items(v);
    let next = parts
        .first()
        .and_then(|c| text(c))
        .unwrap_or_else(|| "0-0".into());
    let claimed = parts.get(1).map(|e| entries(e)).unwrap_or_default();
    (next, claimed)
}

/// A stream entry id (`<ms>-<seq>`) as the pair it is ordered by; an id that is not one sorts
/// first.
pub(crate) fn stream_id(id: &str) -> (u64, u64) {
    let (ms, seq) = id.split_once('-').unwrap_or((id, "0"));
    (ms.parse().unwrap_or(0), seq.parse().unwrap_or(0))
}

/// The delivery count of each entry of an extended `XPENDING` answer
/// (`[[id, consumer, idle, deliveries], ...]`), by id.
pub(crate) fn delivery_counts(v: &Value) -> HashMap<String, u32> {
    items(v)
        .into_iter()
        .filter_map(|row| {
            let row = items(row);
            let id = text(row.first()?)?;
            let count = int(row.get(3)?)?;
            Some((id, u32::try_from(count).unwrap_or(u32::MAX)))
        })
        .collect()
}

/// The group `name` of an `XINFO GROUPS` answer (a list of field-value lists or maps).
pub(crate) fn group_info(v: &Value, name: &str) -> Option<GroupInfo> {
    items(v).into_iter().find_map(|group| {
        let fields: HashMap<String, &Value> = items(group)
            .chunks(2)
            .filter(|pair| pair.len() == 2)
            .filter_map(|pair| Some((text(pair[0])?, pair[1])))
            .collect();
        (fields.get("name").and_then(|n| text(n)).as_deref() == Some(name)).then(|| GroupInfo {
            lag: fields.get("lag").and_then(|l| int(l)),
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    fn entry(id: &str, fields: &[&str]) -> Value {
        Value::Array(vec![
            bulk(id),
            Value::Array(fields.iter().map(|f| bulk(f)).collect()),
        ])
    }

    #[test]
    fn stream_ids_sort_by_time_then_sequence() {
        assert!(stream_id("1700000000000-9") < stream_id("1700000000000-10"));
        assert!(stream_id("999-5") < stream_id("1000-0"));
        assert_eq!(stream_id("junk"), (0, 0));
    }

    #[test]
    fn reads_resp2_and_resp3_answers() {
        let resp2 = Value::Array(vec![Value::Array(vec![
            bulk("s"),
            Value::Array(vec![
                entry("1-0", &["a", "1", "data", "x"]),
                entry("2-0", &[]),
            ]),
        ])]);
        let resp3 = Value::Map(vec![(
            bulk("s"),
            Value::Array(vec![
                entry("1-0", &["a", "1", "data", "x"]),
                entry("2-0", &[]),
            ]),
        )]);
        for v in [resp2, resp3] {
            let got = read_entries(&v);
            assert_eq!(got.len(), 2);
            assert_eq!(got[0].id, "1-0");
            assert_eq!(
                got[0].fields.as_deref(),
                Some(
                    &[
                        (b"a".to_vec(), b"1".to_vec()),
                        (b"data".to_vec(), b"x".to_vec())
                    ][..]
                )
            );
        }
        assert!(read_entries(&Value::Nil).is_empty());
    }

    #[test]
    fn a_deleted_pending_entry_has_no_fields() {
        let v = Value::Array(vec![
            bulk("0-0"),
            Value::Array(vec![Value::Array(vec![bulk("3-0"), Value::Nil])]),
            Value::Array(vec![]),
        ]);
        let (next, got) = claimed(&v);
        assert_eq!(next, "0-0");
        assert_eq!(
            got,
            vec![RawEntry {
                id: "3-0".into(),
                fields: None
            }]
        );
    }

    #[test]
    fn pending_counts_and_group_lag() {
        let v = Value::Array(vec![Value::Array(vec![
            bulk("1-0"),
            bulk("c"),
            Value::Int(10),
            Value::Int(3),
        ])]);
        assert_eq!(delivery_counts(&v).get("1-0"), Some(&3));
        let groups = Value::Array(vec![Value::Array(vec![
            bulk("name"),
            bulk("g"),
            bulk("pending"),
            Value::Int(2),
            bulk("lag"),
            Value::Int(7),
        ])]);
        assert_eq!(group_info(&groups, "g"), Some(GroupInfo { lag: Some(7) }));
        assert_eq!(group_info(&groups, "h"), None);
    }
}
