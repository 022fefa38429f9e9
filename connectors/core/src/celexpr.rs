//! `cel` filters: a [Common Expression Language](https://cel.dev) expression over the event,
//! the language of Dapr's routing rules and Kubernetes' validation rules. The expression sees
//! one variable, `event`: every context attribute and extension by name (`event.type`,
//! `event.subject`; integers and booleans of extensions keep their type, the rest is text), and
//! `event.data`: the data parsed as JSON when it is JSON, else the text, else the bytes.
//!
//! The expression is compiled once. Only the attributes whose names the expression contains are
//! put into `event`, and the data is parsed only when it mentions `data`, so attribute-only
//! filters never touch the payload. An event passes only when the
//! expression yields `true`; an evaluation error (a member of data that is not JSON, a missing
//! attribute, a type mismatch) does not match.

use std::collections::HashMap;
use std::sync::Arc;

pub use crate::cesql::Decision;
use crate::event::{self, Data, Event, ExtensionValue};

/// A compiled `cel` filter.
#[derive(Clone)]
pub struct CelExpr {
    program: Arc<cel::Program>,
    /// The standard library, built once (building it per evaluation cost 9 µs).
    env: Arc<cel::Env>,
    /// The expression's text: an attribute whose name it does not contain cannot be read, and
    /// is not put into `event` (nor is the data parsed unless it says `data`).
    text: Arc<str>,
    reads_data: bool,
}

impl std::fmt::Debug for CelExpr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CelExpr")
            .field("reads_data", &self.reads_data)
            .finish_non_exhaustive()
    }
}

/// Why an expression does not compile, and where in it (1-based line and column).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CelError {
    /// What is wrong.
    pub message: String,
    /// The line in the expression.
    pub line: usize,
    /// The column in that line.
    pub column: usize,
}

impl CelExpr {
    /// Compiles `text`.
    pub fn parse(text: &str) -> Result<Self, CelError> {
        let program = cel::Program::compile(text).map_err(|errors| {
            let first = errors.errors.first();
            let (line, column) = first.map_or((1, 1), |e| {
                // The parser's positions are 1-based already.
                (
                    usize::try_from(e.pos.0).unwrap_or(1).max(1),
                    usize::try_from(e.pos.1).unwrap_or(1).max(1),
                )
            });
            CelError {
                message: first.map_or_else(|| "invalid expression".into(), |e| e.msg.clone()),
                line,
                column,
            }
        })?;
        if !program.references().has_variable("event") {
            return Err(CelError {
                message: "the expression does not read `event`, so it is the same for every event"
                    .into(),
                line: 1,
                column: 1,
            });
        }
        Ok(Self {
            program: Arc::new(program),
            env: Arc::new(cel::Env::stdlib()),
            text: Arc::from(text),
            reads_data: text.contains("data"),
        })
    }

    /// What the expression yields for `event`: `Ok(true)` passes; `Ok(false)` and a value that
    /// is not a boolean do not; `Err` says why it could not be evaluated.
    pub fn eval(&self, event: &Event) -> Result<bool, String> {
        let mut context = cel::Context::with_env(Arc::clone(&self.env));
        context.add_variable_from_value("event", self.value_of(event));
        match self.program.execute(&context) {
            Ok(cel::Value::Bool(b)) => Ok(b),
            Ok(other) => Err(format!("the expression yields {other:?}, not a boolean")),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Whether `event` passes.
    pub fn matches(&self, event: &Event) -> bool {
        self.eval(event) == Ok(true)
    }

    /// The sub-expression that decided whether `event` passes (for `fnbroker explain`): through
    /// `!`, and through the operand of `&&` that is not true or of `||` that is true (an operand
    /// that fails decides too; else the last one), down to the first node that is neither.
    pub fn decide(&self, event: &Event) -> Decision {
        use cel::common::ast::{Expr, operators};
        let mut context = cel::Context::with_env(Arc::clone(&self.env));
        context.add_variable_from_value("event", self.value_of(event));
        let value = |e: &cel::IdedExpr| cel::Value::resolve(e, &context);
        let mut node = self.program.expression();
        while let Expr::Call(call) = &node.expr {
            let args = &call.args;
            node = match (call.func_name.as_str(), args.as_slice()) {
                (operators::LOGICAL_NOT, [x]) => x,
                (operators::LOGICAL_AND, [_, .., last]) => args
                    .iter()
                    .find(|a| !matches!(value(a), Ok(cel::Value::Bool(true))))
                    .unwrap_or(last),
                (operators::LOGICAL_OR, [_, .., last]) => args
                    .iter()
                    .find(|a| matches!(value(a), Ok(cel::Value::Bool(true)) | Err(_)))
                    .unwrap_or(last),
                _ => break,
            };
        }
        Decision {
            expression: self.text_of(node),
            outcome: match value(node) {
                Ok(cel::Value::Bool(b)) => b.to_string(),
                Ok(cel::Value::Int(i)) => i.to_string(),
                Ok(cel::Value::UInt(u)) => u.to_string(),
                Ok(cel::Value::Float(f)) => f.to_string(),
                Ok(cel::Value::String(s)) => format!("{:?}", s.as_str()),
                Ok(cel::Value::Null) => "null".into(),
                Ok(other) => format!("{other:?}"),
                Err(e) => format!("fails: {e}"),
            },
        }
    }

    /// The text of a node: from the first to the last character any node under it was parsed
    /// from, with the name and the closing parentheses of calls the span leaves out.
    fn text_of(&self, node: &cel::IdedExpr) -> String {
        let info = self.program.source_info();
        let mut span: Option<(u32, u32)> = None;
        let mut stack = vec![node];
        while let Some(n) = stack.pop() {
            if let Some((start, stop)) = info.offset_for(n.id) {
                span = Some(span.map_or((start, stop), |(a, b)| (a.min(start), b.max(stop))));
            }
            match &n.expr {
                cel::common::ast::Expr::Call(call) => {
                    stack.extend(call.target.as_deref());
                    stack.extend(call.args.iter());
                }
                cel::common::ast::Expr::Select(select) => stack.push(&select.operand),
                cel::common::ast::Expr::List(list) => stack.extend(list.elements.iter()),
                _ => {}
            }
        }
        let text: &str = &self.text;
        let Some((start, stop)) = span else {
            return text.to_string();
        };
        let mut start = usize::try_from(start).unwrap_or(0).min(text.len());
        while !text.is_char_boundary(start) {
            start -= 1;
        }
        // A global call's node is at its parenthesis: take its name too.
        if text[start..].starts_with('(') {
            let name = text[..start]
                .trim_end_matches(|c: char| c.is_ascii_alphanumeric() || c == '_')
                .len();
            start = name;
        }
        // `stop` is the offset of the last character.
        let mut end = usize::try_from(stop)
            .map_or(usize::MAX, |s| s.saturating_add(1))
            .min(text.len())
            .max(start);
        while !text.is_char_boundary(end) {
            end += 1;
        }
        let Some(mut part) = text.get(start..end).map(str::to_string) else {
            return text.to_string();
        };
        let mut open = part
            .matches(['(', '['])
            .count()
            .saturating_sub(part.matches([')', ']']).count());
        for c in text[end..].chars() {
            if open == 0 {
                break;
            }
            if c == ')' || c == ']' {
                open -= 1;
            }
            part.push(c);
        }
        part.trim().to_string()
    }

    /// The `event` variable.
    fn value_of(&self, event: &Event) -> cel::Value {
        let mut map: HashMap<String, cel::Value> = HashMap::new();
        for name in [
            "specversion",
            "id",
            "source",
            "type",
            "subject",
            "datacontenttype",
            "dataschema",
            "time",
        ] {
            if !self.text.contains(name) {
                continue;
            }
            if let Some(v) = event::attribute(event, name) {
                map.insert(
                    name.to_string(),
                    cel::Value::String(Arc::new(v.into_owned())),
                );
            }
        }
        for (name, value) in event.iter_extensions() {
            if !self.text.contains(name) {
                continue;
            }
            let value = match value {
                ExtensionValue::String(s) => cel::Value::String(Arc::new(s.clone())),
                ExtensionValue::Boolean(b) => cel::Value::Bool(*b),
                ExtensionValue::Integer(i) => cel::Value::Int(*i),
            };
            map.insert(name.to_string(), value);
        }
        if self.reads_data
            && let Some(data) = data_value(event)
        {
            map.insert("data".to_string(), data);
        }
        cel::Value::from(map)
    }
}

/// The event's data for the expression: JSON parsed, else text, else bytes.
fn data_value(event: &Event) -> Option<cel::Value> {
    match event.data()? {
        Data::Json(v) => cel::to_value(v).ok(),
        Data::String(s) => Some(
            serde_json::from_str::<serde_json::Value>(s)
                .ok()
                .and_then(|v| cel::to_value(v).ok())
                .unwrap_or_else(|| cel::Value::String(Arc::new(s.clone()))),
        ),
        Data::Binary(b) => Some(
            serde_json::from_slice::<serde_json::Value>(b)
                .ok()
                .and_then(|v| cel::to_value(v).ok())
                .unwrap_or_else(|| match std::str::from_utf8(b) {
                    Ok(s) => cel::Value::String(Arc::new(s.to_string())),
                    Err(_) => cel::Value::Bytes(Arc::new(b.clone())),
                }),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cloudevents::{EventBuilder, EventBuilderV10};

    fn event(data: Option<(&str, Vec<u8>)>) -> Event {
        let mut b = EventBuilderV10::new()
            .id("1")
            .source("mqtt://iot/sensors/kitchen/temperature")
            .ty("com.example.temperature")
            .subject("sensors/kitchen/temperature")
            .extension("floor", 3_i64)
            .extension("simulated", false);
        if let Some((ct, bytes)) = data {
            b = b.data(ct, bytes);
        }
        b.build().unwrap_or_else(|e| panic!("{e}"))
    }

    fn passes(expr: &str, e: &Event) -> Result<bool, String> {
        CelExpr::parse(expr)
            .unwrap_or_else(|e| panic!("{expr}: {e:?}"))
            .eval(e)
    }

    #[test]
    fn attributes_and_typed_extensions() {
        let e = event(None);
        assert_eq!(
            passes("event.type == 'com.example.temperature'", &e),
            Ok(true)
        );
        assert_eq!(
            passes("event.subject.startsWith('sensors/kitchen')", &e),
            Ok(true)
        );
        assert_eq!(passes("event.floor > 2 && !event.simulated", &e), Ok(true));
        assert_eq!(passes("event.type == 'other'", &e), Ok(false));
        assert_eq!(passes("has(event.dataschema)", &e), Ok(false));
    }

    #[test]
    fn json_data_is_parsed_from_bytes_and_text() {
        let hot = event(Some((
            "application/json",
            br#"{"celsius": 31.5, "room": "kitchen"}"#.to_vec(),
        )));
        let cold = event(Some(("application/json", br#"{"celsius": 12}"#.to_vec())));
        let expr = "event.type == 'com.example.temperature' && event.data.celsius > 30";
        assert_eq!(passes(expr, &hot), Ok(true));
        assert_eq!(passes(expr, &cold), Ok(false));
        assert_eq!(
            passes("event.data.room in ['kitchen', 'hall']", &hot),
            Ok(true)
        );
    }

    /// Data that is not JSON is text (or bytes); reading a member of it is an error, which
    /// does not match.
    #[test]
    fn data_that_is_not_json() {
        let text = event(Some(("text/plain", b"31.5 C".to_vec())));
        assert_eq!(passes("event.data.startsWith('31')", &text), Ok(true));
        let member = passes("event.data.celsius > 30", &text);
        assert!(member.is_err(), "{member:?}");
        assert!(
            !CelExpr::parse("event.data.celsius > 30")
                .map(|c| c.matches(&text))
                .unwrap_or(true)
        );
        let bytes = event(Some(("application/octet-stream", vec![0xff, 0x00])));
        assert_eq!(passes("size(event.data) == 2", &bytes), Ok(true));
    }

    #[test]
    fn a_value_that_is_not_a_boolean_does_not_match() {
        let r = passes("event.floor + 1", &event(None));
        assert!(r.is_err_and(|e| e.contains("not a boolean")));
    }

    #[test]
    fn the_deciding_sub_expression_is_found() {
        let hot = event(Some(("application/json", br#"{"celsius": 31.5}"#.to_vec())));
        let decide = |expr: &str| {
            let d = CelExpr::parse(expr)
                .unwrap_or_else(|e| panic!("{expr}: {e:?}"))
                .decide(&hot);
            format!("{} => {}", d.expression, d.outcome)
        };
        assert_eq!(
            decide("event.type == 'com.example.temperature' && event.data.celsius > 40"),
            "event.data.celsius > 40 => false"
        );
        assert_eq!(
            decide("event.type.startsWith('org.') && event.data.celsius > 40"),
            "event.type.startsWith('org.') => false"
        );
        assert_eq!(
            decide("event.floor == 1 || !(size(event.subject) > 3)"),
            "size(event.subject) > 3 => true"
        );
        assert!(
            decide("event.data.missing > 1 || event.floor == 3")
                .starts_with("event.data.missing > 1 => fails: "),
            "{}",
            decide("event.data.missing > 1 || event.floor == 3")
        );
        assert_eq!(
            decide("event.floor + 1 == 4"),
            "event.floor + 1 == 4 => true"
        );
    }

    #[test]
    fn errors_say_where() {
        let e = CelExpr::parse("event.type ==\n  'a' &&& x").err();
        let e = e.unwrap_or_else(|| panic!("must not compile"));
        assert_eq!((e.line, e.column), (2, 9), "the third `&`: {e:?}");
        assert!(
            CelExpr::parse("1 == 1").is_err(),
            "a constant expression is refused"
        );
    }
}
