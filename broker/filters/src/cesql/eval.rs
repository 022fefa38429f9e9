//! Evaluation: an expression's value over an event's attributes, total as the specification
//! wants (a value always, with the first error met).

use std::borrow::Cow;

use super::*;

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

pub(super) fn eval<'a>(
    n: &'a Node,
    attrs: &'a dyn Attributes,
    err: &mut Option<ErrorKind>,
) -> Value<'a> {
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

pub(super) fn binary<'a>(
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

pub(super) fn call<'a>(
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
pub(super) fn like(text: &str, pattern: &[Pat]) -> bool {
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

pub(super) fn compile_like(pattern: &str) -> Vec<Pat> {
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
