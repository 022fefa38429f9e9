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
        let tokens = lex(text)?;
        let mut p = Parser {
            tokens,
            pos: 0,
            end: text.chars().count() + 1,
            depth: 0,
        };
        let node = p.or()?;
        if let Some(t) = p.peek() {
            return Err(p.error_at(t.at, format!("unexpected {}", t.tok)));
        }
        // The parser refuses deep nesting where it meets it; operands of long chains at several
        // precedence levels can still add up: the tree itself is measured, without recursion.
        if depth(&node) > MAX_DEPTH {
            return Err(p.error_at(1, too_deep()));
        }
        Ok(Expr(node))
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

/// Evaluates `n`; on an error in an operand, returns the zero value of `ty` with it.
macro_rules! operand {
    ($node:expr, $attrs:expr, $err:expr, $zero:expr) => {{
        let mut e = None;
        let v = eval($node, $attrs, &mut e);
        if let Some(k) = e {
            $err.get_or_insert(k);
            return $zero;
        }
        v
    }};
}

fn eval<'a>(n: &'a Node, attrs: &'a dyn Attributes, err: &mut Option<ErrorKind>) -> Value<'a> {
    match n {
        Node::Lit(v) => match v {
            Value::Str(s) => Value::Str(Cow::Borrowed(s.as_ref())),
            other => other.clone(),
        },
        Node::Ident(name) => match attrs.attribute(name) {
            Some(v) => v,
            None => {
                err.get_or_insert(ErrorKind::MissingAttribute);
                Value::Bool(false)
            }
        },
        Node::Exists(name) => Value::Bool(attrs.attribute(name).is_some()),
        Node::Not(x) => {
            let v = operand!(x, attrs, err, Value::Bool(false));
            match cast(v, Ty::Bool, err) {
                Value::Bool(b) => Value::Bool(!b),
                _ => Value::Bool(false),
            }
        }
        Node::Neg(x) => {
            let v = operand!(x, attrs, err, Value::Int(0));
            match cast(v, Ty::Int, err) {
                Value::Int(i) => Value::Int(i.checked_neg().unwrap_or_else(|| {
                    err.get_or_insert(ErrorKind::Math);
                    i
                })),
                _ => Value::Int(0),
            }
        }
        Node::Bin(op, l, r) => binary(*op, l, r, attrs, err),
        Node::Like(x, pattern, negated) => {
            let v = operand!(x, attrs, err, Value::Bool(false));
            let s = to_str(&v);
            Value::Bool(like(&s, pattern) != *negated)
        }
        Node::In(x, set, negated) => {
            let v = operand!(x, attrs, err, Value::Bool(false));
            let ty = v.ty();
            let mut found = false;
            for item in set {
                let e = operand!(item, attrs, err, Value::Bool(false));
                if cast(e, ty, err) == v {
                    found = true;
                    break;
                }
            }
            Value::Bool(found != *negated)
        }
        Node::Call(f, args) => call(*f, args, attrs, err),
        Node::Missing(_) => {
            err.get_or_insert(ErrorKind::MissingFunction);
            Value::Bool(false)
        }
    }
}

fn binary<'a>(
    op: BinOp,
    l: &'a Node,
    r: &'a Node,
    attrs: &'a dyn Attributes,
    err: &mut Option<ErrorKind>,
) -> Value<'a> {
    let f = Value::Bool(false);
    match op {
        BinOp::And | BinOp::Or | BinOp::Xor => {
            let lv = operand!(l, attrs, err, f);
            let lb = matches!(cast(lv, Ty::Bool, err), Value::Bool(true));
            match (op, lb) {
                (BinOp::And, false) => return Value::Bool(false),
                (BinOp::Or, true) => return Value::Bool(true),
                _ => {}
            }
            let rv = operand!(r, attrs, err, Value::Bool(false));
            let rb = matches!(cast(rv, Ty::Bool, err), Value::Bool(true));
            Value::Bool(match op {
                BinOp::And => lb && rb,
                BinOp::Or => lb || rb,
                _ => lb != rb,
            })
        }
        BinOp::Eq | BinOp::Ne => {
            let lv = operand!(l, attrs, err, f);
            let rv = operand!(r, attrs, err, Value::Bool(false));
            // `=` is ambiguous: the right operand's type decides what the left is cast to.
            let lv = cast(lv, rv.ty(), err);
            Value::Bool((lv == rv) == (op == BinOp::Eq))
        }
        _ => {
            let zero = if matches!(op, BinOp::Lt | BinOp::Le | BinOp::Gt | BinOp::Ge) {
                Value::Bool(false)
            } else {
                Value::Int(0)
            };
            let lv = operand!(l, attrs, err, zero);
            let rv = operand!(r, attrs, err, zero);
            let (Value::Int(a), Value::Int(b)) = (cast(lv, Ty::Int, err), cast(rv, Ty::Int, err))
            else {
                return zero;
            };
            let math = |err: &mut Option<ErrorKind>| {
                err.get_or_insert(ErrorKind::Math);
                Value::Int(0)
            };
            match op {
                BinOp::Lt => Value::Bool(a < b),
                BinOp::Le => Value::Bool(a <= b),
                BinOp::Gt => Value::Bool(a > b),
                BinOp::Ge => Value::Bool(a >= b),
                BinOp::Add => a.checked_add(b).map_or_else(|| math(err), Value::Int),
                BinOp::Sub => a.checked_sub(b).map_or_else(|| math(err), Value::Int),
                BinOp::Mul => a.checked_mul(b).map_or_else(|| math(err), Value::Int),
                BinOp::Div => a.checked_div(b).map_or_else(|| math(err), Value::Int),
                BinOp::Mod => a.checked_rem(b).map_or_else(|| math(err), Value::Int),
                _ => zero,
            }
        }
    }
}

fn call<'a>(
    f: Func,
    args: &'a [Node],
    attrs: &'a dyn Attributes,
    err: &mut Option<ErrorKind>,
) -> Value<'a> {
    let zero = Value::zero(f.result());
    let mut values = Vec::with_capacity(args.len());
    for (i, a) in args.iter().enumerate() {
        let v = operand!(a, attrs, err, zero);
        values.push(match f.param(i) {
            Some(ty) => cast(v, ty, err),
            None => v,
        });
    }
    let s = |i: usize| match values.get(i) {
        Some(Value::Str(s)) => s.clone(),
        _ => Cow::Borrowed(""),
    };
    let n = |i: usize| match values.get(i) {
        Some(Value::Int(n)) => *n,
        _ => 0,
    };
    let fail = |err: &mut Option<ErrorKind>, v: Value<'a>| {
        err.get_or_insert(ErrorKind::FunctionEvaluation);
        v
    };
    match f {
        Func::Int => cast(values.swap_remove(0), Ty::Int, err),
        Func::Bool => Value::Bool(to_bool(&values[0]).unwrap_or_else(|z| {
            err.get_or_insert(ErrorKind::Cast);
            z
        })),
        Func::String => cast(values.swap_remove(0), Ty::Str, err),
        Func::Length => Value::Int(i32::try_from(s(0).chars().count()).unwrap_or(i32::MAX)),
        Func::Concat => Value::Str(Cow::Owned((0..values.len()).map(s).collect())),
        Func::ConcatWs => {
            let parts: Vec<Cow<'_, str>> = (1..values.len()).map(s).collect();
            Value::Str(Cow::Owned(parts.join(s(0).as_ref())))
        }
        Func::Lower => Value::Str(Cow::Owned(s(0).to_lowercase())),
        Func::Upper => Value::Str(Cow::Owned(s(0).to_uppercase())),
        Func::Trim => Value::Str(Cow::Owned(s(0).trim().to_string())),
        Func::Left | Func::Right => {
            let text = s(0);
            let k = n(1);
            if k < 0 {
                return fail(err, Value::Str(text));
            }
            let chars: Vec<char> = text.chars().collect();
            let k = usize::try_from(k).unwrap_or(0).min(chars.len());
            let part: String = if f == Func::Left {
                chars[..k].iter().collect()
            } else {
                chars[chars.len() - k..].iter().collect()
            };
            Value::Str(Cow::Owned(part))
        }
        Func::Substring => {
            let chars: Vec<char> = s(0).chars().collect();
            let len = i64::try_from(chars.len()).unwrap_or(i64::MAX);
            let pos = i64::from(n(1));
            let empty = Value::Str(Cow::Borrowed(""));
            if pos > len || pos < -len || (values.len() == 3 && n(2) < 0) {
                return fail(err, empty);
            }
            if pos == 0 {
                return empty;
            }
            let start = if pos > 0 { pos - 1 } else { len + pos };
            let start = usize::try_from(start).unwrap_or(0);
            let end = if values.len() == 3 {
                (start + usize::try_from(n(2)).unwrap_or(0)).min(chars.len())
            } else {
                chars.len()
            };
            Value::Str(Cow::Owned(chars[start..end].iter().collect()))
        }
        Func::Abs => {
            let v = n(0);
            match v.checked_abs() {
                Some(a) => Value::Int(a),
                None => {
                    err.get_or_insert(ErrorKind::Math);
                    Value::Int(i32::MAX)
                }
            }
        }
    }
}

/// `%`, `_` and `\`-escapes over characters, with backtracking on the last `%`. Walks the text
/// by byte offsets of whole characters, so a match allocates nothing.
fn like(text: &str, pattern: &[Pat]) -> bool {
    let next_len = |at: usize| text[at..].chars().next().map_or(1, char::len_utf8);
    let (mut i, mut j) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while let Some(c) = text[i..].chars().next() {
        match pattern.get(j) {
            Some(Pat::Char(p)) if *p == c => {
                i += c.len_utf8();
                j += 1;
            }
            Some(Pat::One) => {
                i += c.len_utf8();
                j += 1;
            }
            Some(Pat::Many) => {
                star = Some((j, i));
                j += 1;
            }
            _ => match star {
                Some((sj, si)) => {
                    let resume = si + next_len(si);
                    j = sj + 1;
                    i = resume;
                    star = Some((sj, resume));
                }
                None => return false,
            },
        }
    }
    pattern[j..].iter().all(|p| *p == Pat::Many)
}

fn compile_like(pattern: &str) -> Vec<Pat> {
    let mut out = Vec::with_capacity(pattern.len());
    let mut chars = pattern.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if matches!(chars.peek(), Some('%' | '_')) => {
                out.extend(chars.next().map(Pat::Char));
            }
            '%' => out.push(Pat::Many),
            '_' => out.push(Pat::One),
            c => out.push(Pat::Char(c)),
        }
    }
    out
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    Int(i64),
    Str(String),
    Word(String),
    Sym(&'static str),
}

impl fmt::Display for Tok {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Tok::Int(i) => write!(f, "number {i}"),
            Tok::Str(s) => write!(f, "string '{s}'"),
            Tok::Word(w) => write!(f, "`{w}`"),
            Tok::Sym(s) => write!(f, "`{s}`"),
        }
    }
}

#[derive(Debug, Clone)]
struct Token {
    tok: Tok,
    /// 1-based character position.
    at: usize,
}

fn lex(text: &str) -> Result<Vec<Token>, ParseError> {
    let chars: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let at = i + 1;
        if c.is_whitespace() {
            i += 1;
            continue;
        }
        if c.is_ascii_digit() {
            let start = i;
            while i < chars.len() && chars[i].is_ascii_digit() {
                i += 1;
            }
            let digits: String = chars[start..i].iter().collect();
            let n = digits.parse::<i64>().map_err(|_| ParseError {
                position: at,
                message: format!("number {digits} is too large"),
            })?;
            out.push(Token {
                tok: Tok::Int(n),
                at,
            });
            continue;
        }
        if c == '\'' || c == '"' {
            let mut s = String::new();
            i += 1;
            loop {
                match chars.get(i) {
                    None => {
                        return Err(ParseError {
                            position: at,
                            message: "unterminated string".into(),
                        });
                    }
                    Some('\\') if chars.get(i + 1) == Some(&c) => {
                        s.push(c);
                        i += 2;
                    }
                    Some(ch) if *ch == c => {
                        i += 1;
                        break;
                    }
                    Some(ch) => {
                        s.push(*ch);
                        i += 1;
                    }
                }
            }
            out.push(Token {
                tok: Tok::Str(s),
                at,
            });
            continue;
        }
        if c.is_ascii_alphanumeric() || c == '_' {
            let start = i;
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            out.push(Token {
                tok: Tok::Word(chars[start..i].iter().collect()),
                at,
            });
            continue;
        }
        let two: String = chars[i..(i + 2).min(chars.len())].iter().collect();
        let sym = match two.as_str() {
            "!=" => Some("!="),
            "<>" => Some("<>"),
            "<=" => Some("<="),
            ">=" => Some(">="),
            _ => None,
        };
        if let Some(s) = sym {
            out.push(Token {
                tok: Tok::Sym(s),
                at,
            });
            i += 2;
            continue;
        }
        let sym = match c {
            '=' => "=",
            '<' => "<",
            '>' => ">",
            '+' => "+",
            '-' => "-",
            '*' => "*",
            '/' => "/",
            '%' => "%",
            '(' => "(",
            ')' => ")",
            ',' => ",",
            other => {
                return Err(ParseError {
                    position: at,
                    message: format!("unexpected character `{other}`"),
                });
            }
        };
        out.push(Token {
            tok: Tok::Sym(sym),
            at,
        });
        i += 1;
    }
    Ok(out)
}

struct Parser {
    tokens: Vec<Token>,
    pos: usize,
    end: usize,
    /// How deep the parser is in the expression's tree.
    depth: usize,
}

fn too_deep() -> String {
    format!(
        "the expression nests deeper than {MAX_DEPTH} levels (parentheses, NOTs, calls and chained operators); use IN for long lists"
    )
}

/// The depth of a tree, measured with a stack of its own (a deep tree must not overflow ours).
fn depth(root: &Node) -> usize {
    let mut deepest = 0;
    let mut stack = vec![(root, 1)];
    while let Some((node, d)) = stack.pop() {
        deepest = deepest.max(d);
        match node {
            Node::Lit(_) | Node::Ident(_) | Node::Exists(_) => {}
            Node::Not(n) | Node::Neg(n) | Node::Like(n, _, _) => stack.push((n, d + 1)),
            Node::Bin(_, l, r) => {
                stack.push((l, d + 1));
                stack.push((r, d + 1));
            }
            Node::In(n, set, _) => {
                stack.push((n, d + 1));
                stack.extend(set.iter().map(|x| (x, d + 1)));
            }
            Node::Call(_, args) | Node::Missing(args) => {
                stack.extend(args.iter().map(|x| (x, d + 1)));
            }
        }
    }
    deepest
}

impl Parser {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.pos)
    }

    fn error_at(&self, position: usize, message: String) -> ParseError {
        ParseError { position, message }
    }

    /// One level deeper, refused past [`MAX_DEPTH`] at the token that goes too deep.
    fn descend(&mut self, at: usize) -> Result<(), ParseError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(self.error_at(at, too_deep()));
        }
        Ok(())
    }

    fn here(&self) -> usize {
        self.peek().map_or(self.end, |t| t.at)
    }

    fn keyword(&mut self, kw: &str) -> bool {
        if matches!(self.peek(), Some(Token { tok: Tok::Word(w), .. }) if w.eq_ignore_ascii_case(kw))
        {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn keyword_ahead(&self, offset: usize, kw: &str) -> bool {
        matches!(self.tokens.get(self.pos + offset), Some(Token { tok: Tok::Word(w), .. }) if w.eq_ignore_ascii_case(kw))
    }

    fn sym(&mut self, s: &str) -> bool {
        if matches!(self.peek(), Some(Token { tok: Tok::Sym(x), .. }) if *x == s) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn expect(&mut self, s: &str) -> Result<(), ParseError> {
        if self.sym(s) {
            Ok(())
        } else {
            let found = self
                .peek()
                .map_or("the end".to_string(), |t| t.tok.to_string());
            Err(self.error_at(self.here(), format!("expected `{s}`, found {found}")))
        }
    }

    fn binary_level(
        &mut self,
        next: fn(&mut Parser) -> Result<Node, ParseError>,
        ops: &[(&str, BinOp)],
        keywords: bool,
    ) -> Result<Node, ParseError> {
        let mut left = next(self)?;
        // Each operator of a chain puts what came before one level deeper.
        let outer = self.depth;
        'outer: loop {
            for (s, op) in ops {
                let at = self.here();
                let hit = if keywords {
                    self.keyword(s)
                } else {
                    self.sym(s)
                };
                if hit {
                    self.descend(at)?;
                    let right = next(self)?;
                    left = Node::Bin(*op, Box::new(left), Box::new(right));
                    continue 'outer;
                }
            }
            self.depth = outer;
            return Ok(left);
        }
    }

    fn or(&mut self) -> Result<Node, ParseError> {
        // Every nested expression (parentheses, arguments, IN lists) starts here.
        let outer = self.depth;
        self.descend(self.here())?;
        let node = self.binary_level(Parser::xor, &[("OR", BinOp::Or)], true)?;
        self.depth = outer;
        Ok(node)
    }

    fn xor(&mut self) -> Result<Node, ParseError> {
        self.binary_level(Parser::and, &[("XOR", BinOp::Xor)], true)
    }

    fn and(&mut self) -> Result<Node, ParseError> {
        self.binary_level(Parser::not, &[("AND", BinOp::And)], true)
    }

    fn not(&mut self) -> Result<Node, ParseError> {
        let at = self.here();
        if self.keyword("NOT") {
            let outer = self.depth;
            self.descend(at)?;
            let inner = self.not()?;
            self.depth = outer;
            return Ok(Node::Not(Box::new(inner)));
        }
        self.comparison()
    }

    fn comparison(&mut self) -> Result<Node, ParseError> {
        let left = self.additive()?;
        let ops = [
            ("=", BinOp::Eq),
            ("!=", BinOp::Ne),
            ("<>", BinOp::Ne),
            ("<=", BinOp::Le),
            (">=", BinOp::Ge),
            ("<", BinOp::Lt),
            (">", BinOp::Gt),
        ];
        for (s, op) in ops {
            if self.sym(s) {
                let right = self.additive()?;
                return Ok(Node::Bin(op, Box::new(left), Box::new(right)));
            }
        }
        let negated = if self.keyword_ahead(0, "NOT")
            && (self.keyword_ahead(1, "LIKE") || self.keyword_ahead(1, "IN"))
        {
            self.pos += 1;
            true
        } else {
            false
        };
        if self.keyword("LIKE") {
            let at = self.here();
            return match self.peek().cloned() {
                Some(Token {
                    tok: Tok::Str(p), ..
                }) => {
                    self.pos += 1;
                    Ok(Node::Like(Box::new(left), compile_like(&p), negated))
                }
                _ => Err(self.error_at(at, "LIKE needs a string literal pattern".into())),
            };
        }
        if self.keyword("IN") {
            self.expect("(")?;
            let mut set = vec![self.or()?];
            while self.sym(",") {
                set.push(self.or()?);
            }
            self.expect(")")?;
            return Ok(Node::In(Box::new(left), set, negated));
        }
        Ok(left)
    }

    fn additive(&mut self) -> Result<Node, ParseError> {
        self.binary_level(
            Parser::multiplicative,
            &[("+", BinOp::Add), ("-", BinOp::Sub)],
            false,
        )
    }

    fn multiplicative(&mut self) -> Result<Node, ParseError> {
        self.binary_level(
            Parser::unary,
            &[("*", BinOp::Mul), ("/", BinOp::Div), ("%", BinOp::Mod)],
            false,
        )
    }

    fn unary(&mut self) -> Result<Node, ParseError> {
        let outer = self.depth;
        let at = self.here();
        if self.sym("-") {
            // A minus right before a number is part of the literal: -2147483648 is valid.
            if let Some(Token {
                tok: Tok::Int(n),
                at,
            }) = self.peek().cloned()
            {
                self.pos += 1;
                return i32::try_from(-n)
                    .map(|v| Node::Lit(Value::Int(v)))
                    .map_err(|_| self.error_at(at, format!("-{n} is not a 32-bit integer")));
            }
            self.descend(at)?;
            let inner = self.unary()?;
            self.depth = outer;
            return Ok(Node::Neg(Box::new(inner)));
        }
        if self.keyword_ahead(0, "NOT") {
            self.pos += 1;
            self.descend(at)?;
            let inner = self.unary()?;
            self.depth = outer;
            return Ok(Node::Not(Box::new(inner)));
        }
        self.primary()
    }

    fn primary(&mut self) -> Result<Node, ParseError> {
        let Some(token) = self.peek().cloned() else {
            return Err(self.error_at(self.end, "unexpected end of the expression".into()));
        };
        self.pos += 1;
        match token.tok {
            Tok::Int(n) => i32::try_from(n)
                .map(|v| Node::Lit(Value::Int(v)))
                .map_err(|_| self.error_at(token.at, format!("{n} is not a 32-bit integer"))),
            Tok::Str(s) => Ok(Node::Lit(Value::Str(Cow::Owned(s)))),
            Tok::Sym("(") => {
                let inner = self.or()?;
                self.expect(")")?;
                Ok(inner)
            }
            Tok::Word(w) if w.eq_ignore_ascii_case("true") => Ok(Node::Lit(Value::Bool(true))),
            Tok::Word(w) if w.eq_ignore_ascii_case("false") => Ok(Node::Lit(Value::Bool(false))),
            Tok::Word(w) if w.eq_ignore_ascii_case("EXISTS") => match self.peek().cloned() {
                Some(Token {
                    tok: Tok::Word(name),
                    ..
                }) => {
                    self.pos += 1;
                    Ok(Node::Exists(name.to_ascii_lowercase()))
                }
                _ => Err(self.error_at(self.here(), "EXISTS needs an attribute name".into())),
            },
            Tok::Word(w) if self.sym("(") => {
                let mut args = Vec::new();
                if !self.sym(")") {
                    args.push(self.or()?);
                    while self.sym(",") {
                        args.push(self.or()?);
                    }
                    self.expect(")")?;
                }
                Ok(match Func::lookup(&w, args.len()) {
                    Some(f) => Node::Call(f, args),
                    None => Node::Missing(args),
                })
            }
            Tok::Word(w) => {
                if w.chars().all(|c| c.is_ascii_alphanumeric()) {
                    Ok(Node::Ident(w.to_ascii_lowercase()))
                } else {
                    Err(self.error_at(token.at, format!("`{w}` is not an attribute name")))
                }
            }
            other => Err(self.error_at(token.at, format!("unexpected {other}"))),
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
