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
use fnbroker_core::event::{self, Data, Event, ExtensionValue};

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

/// The line and column of the first bracket (`(`, `[`, `{`) deeper than [`MAX_DEPTH`], or of
/// the operator past [`MAX_OPERATORS`], outside string literals.
fn too_deep_brackets(text: &str) -> Option<(usize, usize)> {
    let (mut depth, mut line, mut column) = (0usize, 1, 0);
    let mut operators = 0usize;
    let mut previous = ' ';
    let mut quote: Option<char> = None;
    let mut escaped = false;
    for c in text.chars() {
        column += 1;
        if c == '\n' {
            line += 1;
            column = 0;
        }
        if let Some(q) = quote {
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, c) if c == q => quote = None,
                _ => {}
            }
            continue;
        }
        match c {
            '"' | '\'' => quote = Some(c),
            '(' | '[' | '{' => {
                depth += 1;
                if depth > MAX_DEPTH {
                    return Some((line, column));
                }
            }
            ')' | ']' | '}' => depth = depth.saturating_sub(1),
            // A selection (`.field`, not the point of a number) is a level of the tree too;
            // `&&`, `||`, `==`, `!=`, `<=` and `>=` count once, at their first character.
            '.' | '+' | '-' | '*' | '/' | '%' | '<' | '>' | '?' | '!' | '&' | '|' | '='
                if !continues_operator(previous, c) =>
            {
                operators += 1;
                if operators > MAX_OPERATORS {
                    return Some((line, column));
                }
            }
            _ => {}
        }
        previous = c;
    }
    None
}

/// The stack the parser gets: it spends a frame per level of the grammar for each level of the
/// expression (over 100 KiB per nested call in a debug build, where 15 nested calls overflowed
/// a Tokio worker's 2 MiB); compiling happens at load, on a thread of its own with this much.
const COMPILE_STACK: usize = 64 * 1024 * 1024;

/// Compiles `text` on a thread with [`COMPILE_STACK`].
fn compile(text: &str) -> Result<cel::Program, CelError> {
    let failed = |message: String| CelError {
        message,
        line: 1,
        column: 1,
    };
    let compiled = std::thread::scope(|scope| {
        std::thread::Builder::new()
            .name("cel-compile".into())
            .stack_size(COMPILE_STACK)
            .spawn_scoped(scope, || cel::Program::compile(text))
            .map_err(|e| failed(format!("cannot start the compiler's thread: {e}")))?
            .join()
            .map_err(|_| failed("the expression could not be compiled".into()))
    })?;
    compiled.map_err(|errors| {
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
    })
}

/// Whether `c`, after `previous`, is no operator of its own: the second character of a
/// two-character operator, or a number's point.
fn continues_operator(previous: char, c: char) -> bool {
    match c {
        // The point of a number (`1.5`) is no selection.
        '.' => previous.is_ascii_digit(),
        '&' | '|' => previous == c,
        '=' => matches!(previous, '!' | '<' | '>' | '='),
        _ => false,
    }
}

/// The depth and the number of nodes of an expression, walked without recursion (the tree may
/// be deeper than a stack allows: that is what is checked).
fn shape(root: &cel::IdedExpr) -> (usize, usize) {
    use cel::common::ast::{EntryExpr, Expr};
    let (mut deepest, mut nodes) = (0, 0);
    let mut stack = vec![(root, 1usize)];
    let mut children: Vec<&cel::IdedExpr> = Vec::new();
    while let Some((node, depth)) = stack.pop() {
        nodes += 1;
        deepest = deepest.max(depth);
        let entries = match &node.expr {
            Expr::Call(call) => {
                children.extend(call.target.as_deref());
                children.extend(&call.args);
                &[][..]
            }
            Expr::Comprehension(c) => {
                children.extend([
                    &c.iter_range,
                    &c.accu_init,
                    &c.loop_cond,
                    &c.loop_step,
                    &c.result,
                ]);
                &[][..]
            }
            Expr::List(list) => {
                children.extend(&list.elements);
                &[][..]
            }
            Expr::Map(map) => &map.entries[..],
            Expr::Struct(s) => &s.entries[..],
            Expr::Select(select) => {
                children.push(&select.operand);
                &[][..]
            }
            Expr::Ident(_) | Expr::Literal(_) | Expr::Unspecified => &[][..],
        };
        for entry in entries {
            match &entry.expr {
                EntryExpr::MapEntry(e) => children.extend([&e.key, &e.value]),
                EntryExpr::StructField(f) => children.push(&f.value),
            }
        }
        stack.extend(children.drain(..).map(|c| (c, depth + 1)));
    }
    (deepest, nodes)
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

/// The longest expression taken, in bytes: a filter, not a program.
pub const MAX_LEN: usize = 16 * 1024;
/// How deep an expression may nest (operators, calls, selections, brackets). The parser and
/// the evaluator recurse per level: a chain of 1,500 `+` overflowed the stack of the thread
/// evaluating it, aborting the process at the first event. Measured on a 2 MiB stack (a Tokio
/// worker's) in a debug build, whose frames are the larger: evaluation overflowed between 50
/// and 60 levels; 40 leaves a margin.
pub const MAX_DEPTH: usize = 40;
/// The most operators an expression may hold, counted before it is parsed (the parser builds
/// its tree a level per operator of a chain; it took 90 on a 2 MiB stack in a debug build).
pub const MAX_OPERATORS: usize = 64;
/// The most nodes an expression may have.
pub const MAX_NODES: usize = 4096;

impl CelExpr {
    /// Compiles `text`, within [`MAX_LEN`], [`MAX_DEPTH`] and [`MAX_NODES`].
    pub fn parse(text: &str) -> Result<Self, CelError> {
        let refused = |message: String| CelError {
            message,
            line: 1,
            column: 1,
        };
        if text.len() > MAX_LEN {
            return Err(refused(format!(
                "the expression is longer than {MAX_LEN} bytes"
            )));
        }
        // Brackets and operators are counted before the parser sees them: it builds the tree
        // recursively, a level per bracket and per operator of a chain.
        if let Some((line, column)) = too_deep_brackets(text) {
            return Err(CelError {
                message: format!(
                    "the expression nests deeper than {MAX_DEPTH} brackets or holds more than {MAX_OPERATORS} operators; split long chains with `in [...]` or several triggers"
                ),
                line,
                column,
            });
        }
        let program = compile(text)?;
        let (depth, nodes) = shape(program.expression());
        if depth > MAX_DEPTH {
            return Err(refused(format!(
                "the expression nests deeper than {MAX_DEPTH} levels (operators, calls, selections); split long chains with `in [...]` or several triggers"
            )));
        }
        if nodes > MAX_NODES {
            return Err(refused(format!(
                "the expression has more than {MAX_NODES} terms"
            )));
        }
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
    use fnbroker_core::cloudevents::{EventBuilder, EventBuilderV10};

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

    /// Before: `size(event.type) + 1 + 1 + ...` with 1,500 terms compiled, and its first
    /// evaluation aborted the process with a stack overflow. Now refused at load; the deepest
    /// expression taken compiles and evaluates on a thread with a Tokio worker's stack (2 MiB)
    /// even in a debug build, whose frames are larger than a release build's.
    #[test]
    fn expressions_are_bounded_so_evaluation_cannot_overflow() {
        let chain = |n: usize| format!("size(event.type){} > 0", " + 1".repeat(n));
        let e = CelExpr::parse(&chain(1500)).expect_err("too deep");
        assert!(e.message.contains("more than 64 operators"), "{e:?}");
        // `event.type` holds the first operator (a selection), each ` + 1` one more.
        assert_eq!(
            (e.line, e.column),
            (1, 18 + 4 * (MAX_OPERATORS - 1)),
            "{e:?}"
        );
        let deep_brackets = format!("{}event.type == 'x'{}", "(".repeat(5000), ")".repeat(5000));
        let e = CelExpr::parse(&deep_brackets).expect_err("too deep");
        assert_eq!((e.line, e.column), (1, MAX_DEPTH + 1), "{e:?}");
        let long = format!("event.type == '{}'", "x".repeat(MAX_LEN));
        assert!(CelExpr::parse(&long).is_err());
        let wide = format!("event.type in [{}]", vec!["'a'"; MAX_NODES].join(","));
        assert!(CelExpr::parse(&wide).is_err());

        let deepest = (1..MAX_DEPTH)
            .rev()
            .find_map(|n| CelExpr::parse(&chain(n)).ok().map(|c| (n, c)));
        let (n, expr) = deepest.expect("some depth is taken");
        assert!(n >= MAX_DEPTH - 5, "only {n} terms taken");
        assert!(
            CelExpr::parse(&chain(MAX_DEPTH + 2))
                .is_err_and(|e| e.message.contains("nests deeper than 40 levels"))
        );
        let e = event(None);
        let got = std::thread::Builder::new()
            .stack_size(2 * 1024 * 1024)
            .spawn(move || expr.eval(&e))
            .expect("spawn")
            .join()
            .expect("no overflow");
        assert_eq!(got, Ok(true));

        // Found by the fuzz target: nested calls cost the parser far more stack per level than
        // operators (15 overflowed a 2 MiB stack in a debug build). Compiled on a stack of its
        // own, the deepest taken evaluates on a 2 MiB one.
        for n in [15, 30, 39] {
            let nested = format!("size({}event.type{}) > 0", "t.f(".repeat(n), ")".repeat(n));
            let e = event(None);
            let outcome = std::thread::Builder::new()
                .stack_size(2 * 1024 * 1024)
                .spawn(move || CelExpr::parse(&nested).map(|c| c.eval(&e)))
                .expect("spawn")
                .join()
                .expect("no overflow");
            assert!(outcome.is_ok() || n > 30, "{n}: {outcome:?}");
        }
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
