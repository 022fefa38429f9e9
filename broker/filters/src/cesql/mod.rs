//! CloudEvents SQL (CESQL v1): a parser and an evaluator, small and exact, passing the whole TCK.
//!
//! An expression is parsed once ([`Expr::parse`]) and evaluated against any [`Attributes`]
//! ([`Expr::eval`]). Evaluation is total, as the specification wants: it always yields a value,
//! together with the first error met, if any (complete evaluation mode). Comparing attributes with
//! literals borrows both, so the common filters allocate nothing.
//!
//! Error semantics, as the TCK pins them down:
//! - an operand whose evaluation raised an error makes its operator return the zero value of its
//!   result type (`false`, `0`, `""`) with that error, without computing;
//! - a failed implicit cast raises a cast error and continues with the zero value of the target
//!   type (`NOT 10` is `true` with a cast error);
//! - an operator's own failure (division by zero) returns its zero value with the error.

mod eval;
mod parse;

use eval::eval;

use std::borrow::Cow;
use std::fmt;

/// The kinds of CESQL errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The expression does not parse.
    Parse,
    /// A math error (division by zero, overflow).
    Math,
    /// An implicit or explicit cast failed.
    Cast,
    /// The expression names an attribute the event does not have.
    MissingAttribute,
    /// No function of that name and arity.
    MissingFunction,
    /// A function failed on its arguments.
    FunctionEvaluation,
    /// Anything else.
    Generic,
}

/// A parse error, with the 1-based character position in the expression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    /// 1-based position of the offending character.
    pub position: usize,
    /// What is wrong.
    pub message: String,
}

/// How deep an expression may nest: parentheses, `NOT`s, function calls and operators in a
/// chain all count. Deeper expressions are refused at parse time, where they are, so that neither
/// parsing nor evaluation can exhaust the stack (CESQL leaves the limit to implementations).
pub const MAX_DEPTH: usize = 100;

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "at position {}: {}", self.position, self.message)
    }
}

impl std::error::Error for ParseError {}

/// A CESQL value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value<'a> {
    /// A boolean.
    Bool(bool),
    /// A 32-bit integer.
    Int(i32),
    /// A string.
    Str(Cow<'a, str>),
}

/// Where the evaluator reads context attributes and extensions from.
pub trait Attributes {
    /// The attribute `name` (lowercase), or `None` when the event does not have it.
    fn attribute(&self, name: &str) -> Option<Value<'_>>;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ty {
    Bool,
    Int,
    Str,
}

impl Value<'_> {
    fn ty(&self) -> Ty {
        match self {
            Value::Bool(_) => Ty::Bool,
            Value::Int(_) => Ty::Int,
            Value::Str(_) => Ty::Str,
        }
    }

    fn zero(ty: Ty) -> Value<'static> {
        match ty {
            Ty::Bool => Value::Bool(false),
            Ty::Int => Value::Int(0),
            Ty::Str => Value::Str(Cow::Borrowed("")),
        }
    }
}

/// Casts, as the `INT`, `BOOL` and `STRING` functions do. `Err` carries the zero value.
fn to_int(v: &Value<'_>) -> Result<i32, i32> {
    match v {
        Value::Int(i) => Ok(*i),
        Value::Bool(b) => Ok(i32::from(*b)),
        Value::Str(s) => s.trim().parse::<i32>().map_err(|_| 0),
    }
}

fn to_bool(v: &Value<'_>) -> Result<bool, bool> {
    match v {
        Value::Bool(b) => Ok(*b),
        Value::Int(i) => Ok(*i != 0),
        Value::Str(s) if s.eq_ignore_ascii_case("true") => Ok(true),
        Value::Str(s) if s.eq_ignore_ascii_case("false") => Ok(false),
        Value::Str(_) => Err(false),
    }
}

fn to_str<'a>(v: &Value<'a>) -> Cow<'a, str> {
    match v {
        Value::Str(s) => s.clone(),
        Value::Bool(b) => Cow::Borrowed(if *b { "true" } else { "false" }),
        Value::Int(i) => Cow::Owned(i.to_string()),
    }
}

fn cast<'a>(v: Value<'a>, ty: Ty, err: &mut Option<ErrorKind>) -> Value<'a> {
    let cast_failed = |err: &mut Option<ErrorKind>| {
        err.get_or_insert(ErrorKind::Cast);
    };
    match ty {
        Ty::Int => Value::Int(to_int(&v).unwrap_or_else(|z| {
            cast_failed(err);
            z
        })),
        // Implicitly, an integer is no boolean (`NOT 10` is a cast error); `BOOL(10)` is.
        Ty::Bool => match v {
            Value::Int(_) => {
                cast_failed(err);
                Value::Bool(false)
            }
            other => Value::Bool(to_bool(&other).unwrap_or_else(|z| {
                cast_failed(err);
                z
            })),
        },
        Ty::Str => Value::Str(to_str(&v)),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BinOp {
    And,
    Or,
    Xor,
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    Add,
    Sub,
    Mul,
    Div,
    Mod,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Func {
    Length,
    Concat,
    ConcatWs,
    Lower,
    Upper,
    Trim,
    Left,
    Right,
    Substring,
    Abs,
    Int,
    Bool,
    String,
}

impl Func {
    fn lookup(name: &str, arity: usize) -> Option<Func> {
        let f = match name.to_ascii_uppercase().as_str() {
            "LENGTH" if arity == 1 => Func::Length,
            "CONCAT" => Func::Concat,
            "CONCAT_WS" if arity >= 1 => Func::ConcatWs,
            "LOWER" if arity == 1 => Func::Lower,
            "UPPER" if arity == 1 => Func::Upper,
            "TRIM" if arity == 1 => Func::Trim,
            "LEFT" if arity == 2 => Func::Left,
            "RIGHT" if arity == 2 => Func::Right,
            "SUBSTRING" if arity == 2 || arity == 3 => Func::Substring,
            "ABS" if arity == 1 => Func::Abs,
            "INT" if arity == 1 => Func::Int,
            "BOOL" if arity == 1 => Func::Bool,
            "STRING" if arity == 1 => Func::String,
            _ => return None,
        };
        Some(f)
    }

    fn name(self) -> &'static str {
        match self {
            Func::Length => "LENGTH",
            Func::Concat => "CONCAT",
            Func::ConcatWs => "CONCAT_WS",
            Func::Lower => "LOWER",
            Func::Upper => "UPPER",
            Func::Trim => "TRIM",
            Func::Left => "LEFT",
            Func::Right => "RIGHT",
            Func::Substring => "SUBSTRING",
            Func::Abs => "ABS",
            Func::Int => "INT",
            Func::Bool => "BOOL",
            Func::String => "STRING",
        }
    }

    /// The parameter types, the last one repeating for variadic functions.
    fn param(self, i: usize) -> Option<Ty> {
        match (self, i) {
            (Func::Int | Func::Bool | Func::String, _) => None,
            (Func::Left | Func::Right, 1) | (Func::Substring, 1 | 2) | (Func::Abs, _) => {
                Some(Ty::Int)
            }
            _ => Some(Ty::Str),
        }
    }

    fn result(self) -> Ty {
        match self {
            Func::Length | Func::Abs | Func::Int => Ty::Int,
            Func::Bool => Ty::Bool,
            _ => Ty::Str,
        }
    }
}

/// One element of a compiled `LIKE` pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Pat {
    Char(char),
    One,
    Many,
}

/// A parsed CESQL expression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expr(Node);

#[derive(Debug, Clone, PartialEq, Eq)]
enum Node {
    Lit(Value<'static>),
    Ident(String),
    Not(Box<Node>),
    Neg(Box<Node>),
    Bin(BinOp, Box<Node>, Box<Node>),
    Like(Box<Node>, Vec<Pat>, bool),
    In(Box<Node>, Vec<Node>, bool),
    Exists(String),
    Call(Func, Vec<Node>),
    Missing(Vec<Node>),
}

impl Expr {
    /// Parses an expression.
    pub fn parse(text: &str) -> Result<Expr, ParseError> {
        parse::parse(text).map(Expr)
    }

    /// Evaluates the expression: its value, and the first error met.
    pub fn eval<'a>(&'a self, attrs: &'a dyn Attributes) -> (Value<'a>, Option<ErrorKind>) {
        let mut err = None;
        let v = eval(&self.0, attrs, &mut err);
        (v, err)
    }

    /// Whether `attrs` passes the expression as a filter: boolean `true` and no error.
    pub fn matches(&self, attrs: &dyn Attributes) -> bool {
        matches!(self.eval(attrs), (Value::Bool(true), None))
    }
}

/// The sub-expression that decided an evaluation (for `fnbroker explain`): the operand of
/// `AND`/`OR`/`NOT` that made the whole true or false, as text, with its value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// The deciding sub-expression, written back as CESQL.
    pub expression: String,
    /// Its value (`true`, `'text'`, `3`) or, when it failed, the error.
    pub outcome: String,
}

impl Expr {
    /// The sub-expression that decided whether `attrs` passes: through `NOT`, and through the
    /// operand of `AND` that is not true (else the last one) or of `OR` that is true (else the
    /// last one), an operand that fails deciding for both, down to the first node that is neither.
    pub fn decide(&self, attrs: &dyn Attributes) -> Decision {
        // An operand's error is the whole expression's (`eval` stops at the first), so an
        // operand that fails decides as much as one that is false under `AND`.
        let value = |n: &Node| {
            let mut err = None;
            let v = eval(n, attrs, &mut err);
            err.map_or(Some(matches!(v, Value::Bool(true))), |_| None)
        };
        let mut node = &self.0;
        loop {
            node = match node {
                Node::Not(x) => x,
                Node::Bin(BinOp::And, l, r) => match value(l) {
                    Some(true) => r,
                    _ => l,
                },
                Node::Bin(BinOp::Or, l, r) => match value(l) {
                    Some(false) => r,
                    _ => l,
                },
                _ => break,
            };
        }
        let mut err = None;
        let value = eval(node, attrs, &mut err);
        Decision {
            expression: node.to_string(),
            outcome: match err {
                Some(kind) => format!("fails: {kind:?}"),
                None => match value {
                    Value::Bool(b) => b.to_string(),
                    Value::Int(i) => i.to_string(),
                    Value::Str(s) => quote(&s),
                },
            },
        }
    }
}

/// A string literal as CESQL writes it.
fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "\\'"))
}

impl BinOp {
    fn text(self) -> &'static str {
        match self {
            BinOp::And => "AND",
            BinOp::Or => "OR",
            BinOp::Xor => "XOR",
            BinOp::Eq => "=",
            BinOp::Ne => "!=",
            BinOp::Lt => "<",
            BinOp::Le => "<=",
            BinOp::Gt => ">",
            BinOp::Ge => ">=",
            BinOp::Add => "+",
            BinOp::Sub => "-",
            BinOp::Mul => "*",
            BinOp::Div => "/",
            BinOp::Mod => "%",
        }
    }
}

/// The expression written back as CESQL; nested operations in parentheses, so the text reads
/// as the tree was parsed.
impl std::fmt::Display for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let operand = |f: &mut std::fmt::Formatter<'_>, n: &Node| match n {
            Node::Bin(..) | Node::Like(..) | Node::In(..) => write!(f, "({n})"),
            _ => write!(f, "{n}"),
        };
        let list = |f: &mut std::fmt::Formatter<'_>, items: &[Node]| {
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    f.write_str(", ")?;
                }
                write!(f, "{item}")?;
            }
            Ok(())
        };
        match self {
            Node::Lit(Value::Str(s)) => f.write_str(&quote(s)),
            Node::Lit(Value::Int(i)) => write!(f, "{i}"),
            Node::Lit(Value::Bool(b)) => f.write_str(if *b { "TRUE" } else { "FALSE" }),
            Node::Ident(name) => f.write_str(name),
            Node::Not(x) => {
                f.write_str("NOT ")?;
                operand(f, x)
            }
            Node::Neg(x) => {
                f.write_str("-")?;
                operand(f, x)
            }
            Node::Bin(op, l, r) => {
                operand(f, l)?;
                write!(f, " {} ", op.text())?;
                operand(f, r)
            }
            Node::Like(x, pattern, negated) => {
                operand(f, x)?;
                f.write_str(if *negated { " NOT LIKE " } else { " LIKE " })?;
                let text: String = pattern
                    .iter()
                    .map(|p| match p {
                        Pat::Many => "%".to_string(),
                        Pat::One => "_".to_string(),
                        Pat::Char(c @ ('%' | '_')) => format!("\\{c}"),
                        Pat::Char(c) => c.to_string(),
                    })
                    .collect();
                f.write_str(&quote(&text))
            }
            Node::In(x, set, negated) => {
                operand(f, x)?;
                f.write_str(if *negated { " NOT IN (" } else { " IN (" })?;
                list(f, set)?;
                f.write_str(")")
            }
            Node::Exists(name) => write!(f, "EXISTS {name}"),
            Node::Call(func, args) => {
                write!(f, "{}(", func.name())?;
                list(f, args)?;
                f.write_str(")")
            }
            Node::Missing(args) => {
                f.write_str("<unknown function>(")?;
                list(f, args)?;
                f.write_str(")")
            }
        }
    }
}

/// Events are what CESQL expressions read: extensions keep their type (boolean, integer),
/// everything else is a string (`time` in RFC 3339, UTC).
impl Attributes for fnbroker_core::Event {
    fn attribute(&self, name: &str) -> Option<Value<'_>> {
        use fnbroker_core::event::{ExtensionValue, attribute};
        match self.extension(name) {
            Some(ExtensionValue::Boolean(b)) => Some(Value::Bool(*b)),
            Some(ExtensionValue::Integer(i)) => i32::try_from(*i).ok().map(Value::Int),
            _ => attribute(self, name).map(Value::Str),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::eval::{compile_like, like};
    use super::*;
    use std::collections::HashMap;

    struct Map(HashMap<&'static str, Value<'static>>);
    impl Attributes for Map {
        fn attribute(&self, name: &str) -> Option<Value<'_>> {
            self.0.get(name).cloned()
        }
    }

    fn eval(expr: &str) -> (Value<'static>, Option<ErrorKind>) {
        let attrs = Map(HashMap::from([("id", Value::Str(Cow::Borrowed("x")))]));
        let e = Expr::parse(expr).expect("parses");
        let (v, err) = e.eval(&attrs);
        (
            match v {
                Value::Str(s) => Value::Str(Cow::Owned(s.into_owned())),
                Value::Bool(b) => Value::Bool(b),
                Value::Int(i) => Value::Int(i),
            },
            err,
        )
    }

    #[test]
    fn the_deciding_sub_expression_is_found_and_written_back() {
        let attrs = Map(HashMap::from([
            ("type", Value::Str(Cow::Borrowed("com.example.temp"))),
            ("celsius", Value::Str(Cow::Borrowed("28"))),
        ]));
        let decide = |text: &str| {
            let d = Expr::parse(text).expect("parses").decide(&attrs);
            format!("{} => {}", d.expression, d.outcome)
        };
        assert_eq!(
            decide("type LIKE 'com.%' AND INT(celsius) > 30"),
            "INT(celsius) > 30 => false"
        );
        assert_eq!(
            decide("type = 'x' AND INT(celsius) > 30"),
            "type = 'x' => false"
        );
        assert_eq!(
            decide("type = 'x' OR NOT (missing IN ('a', 'b\\'s'))"),
            "missing IN ('a', 'b\\'s') => fails: MissingAttribute"
        );
        assert_eq!(
            decide("(type = 'x' OR celsius = '28') OR c"),
            "celsius = '28' => true"
        );
        assert_eq!(decide("(a OR TRUE) OR c"), "a => fails: MissingAttribute");
        assert_eq!(decide("LOWER(type)"), "LOWER(type) => 'com.example.temp'");
        // What is written back parses to the same tree.
        for text in [
            "a = 1 + 2 * 3 AND NOT b LIKE 'x\\%_' OR EXISTS c",
            "-(1 - 2) <= ABS(x) XOR y NOT IN (1, 'z')",
        ] {
            let e = Expr::parse(text).expect("parses");
            assert_eq!(
                Expr::parse(&e.0.to_string()).expect("re-parses"),
                e,
                "{}",
                e.0
            );
        }
    }

    #[test]
    fn precedence_and_errors() {
        assert_eq!(eval("4 * 2 + 4 / 2"), (Value::Int(10), None));
        assert_eq!(eval("NOT 10"), (Value::Bool(true), Some(ErrorKind::Cast)));
        assert_eq!(
            eval("NOT missing"),
            (Value::Bool(false), Some(ErrorKind::MissingAttribute))
        );
        assert_eq!(
            eval("true and (1 != 1 / 0)"),
            (Value::Bool(false), Some(ErrorKind::Math))
        );
        assert_eq!(
            eval("ABS(-2147483648)"),
            (Value::Int(i32::MAX), Some(ErrorKind::Math))
        );
    }

    #[test]
    fn parse_errors_have_positions() {
        let e = Expr::parse("type = 'x' AND (").expect_err("unclosed");
        assert_eq!(e.position, 17);
        let e = Expr::parse("x LIKE 123").expect_err("pattern");
        assert_eq!(e.position, 8);
    }

    #[test]
    fn deep_nesting_is_a_located_parse_error() {
        let nots = format!("{}TRUE", "NOT ".repeat(10_000));
        let e = Expr::parse(&nots).expect_err("too many NOTs");
        assert_eq!(e.position, 4 * (MAX_DEPTH - 1) + 1, "{e}");
        assert!(e.message.contains("deeper than 100"), "{e}");
        let parens = "(".repeat(10_000);
        let e = Expr::parse(&parens).expect_err("too many parentheses");
        assert_eq!(e.position, MAX_DEPTH + 1, "{e}");
        let minus = format!("{}1", "- ".repeat(10_000));
        assert!(Expr::parse(&minus).is_err());
        let chain = vec!["id = 'x'"; 10_000].join(" AND ");
        let e = Expr::parse(&chain).expect_err("too long a chain");
        assert!(e.position > 1, "{e}");
        let calls = format!("{}1{}", "ABS(".repeat(10_000), ")".repeat(10_000));
        assert!(Expr::parse(&calls).is_err());
        // Chains at several precedence levels, each short, add up: the tree is measured.
        let sum = vec!["1"; 60].join(" + ");
        let mixed = format!("{sum} = {}", vec!["1"; 60].join(" * "));
        assert!(
            Expr::parse(&mixed).is_ok(),
            "two chains side by side are not deep"
        );
        let deep = format!("{} AND ({sum}) = 1", vec!["TRUE"; 60].join(" AND "));
        let e = Expr::parse(&deep).expect_err("a chain inside a chain");
        assert!(e.position > 1, "{e}");
        // What is accepted evaluates within the stack of a small thread.
        let limit = format!("{}TRUE", "NOT ".repeat(MAX_DEPTH - 2));
        let expr = Expr::parse(&limit).expect("at the limit");
        std::thread::Builder::new()
            .stack_size(256 * 1024)
            .spawn(move || assert_eq!(eval_owned(&expr), Value::Bool(true)))
            .expect("thread")
            .join()
            .expect("no stack overflow");
    }

    fn eval_owned(expr: &Expr) -> Value<'static> {
        let attrs = Map(HashMap::new());
        match expr.eval(&attrs).0 {
            Value::Bool(b) => Value::Bool(b),
            Value::Int(i) => Value::Int(i),
            Value::Str(s) => Value::Str(Cow::Owned(s.into_owned())),
        }
    }

    #[test]
    fn like_patterns() {
        let m = |t: &str, p: &str| like(t, &compile_like(p));
        assert!(m("azzzbzzzc", "a%b%c"));
        assert!(!m("ab.cde", ".%.%."));
        assert!(m("a_b_c", "a\\_b\\_c"));
        assert!(!m("abc", "a\\_b\\_c"));
        assert!(m("ab\\c", "ab\\c"));
    }
}
