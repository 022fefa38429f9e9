//! Parsing: the lexer and a recursive-descent parser with a bound on nesting.

use super::eval::compile_like;
use super::*;

/// Parses an expression into its tree.
pub(super) fn parse(text: &str) -> Result<Node, ParseError> {
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
    Ok(node)
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Tok {
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
pub(super) struct Token {
    tok: Tok,
    /// 1-based character position.
    at: usize,
}

pub(super) fn lex(text: &str) -> Result<Vec<Token>, ParseError> {
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

pub(super) struct Parser {
    tokens: Vec<Token>,
    pos: usize,
    end: usize,
    /// How deep the parser is in the expression's tree.
    depth: usize,
}

pub(super) fn too_deep() -> String {
    format!(
        "the expression nests deeper than {MAX_DEPTH} levels (parentheses, NOTs, calls and chained operators); use IN for long lists"
    )
}

/// The depth of a tree, measured with a stack of its own (a deep tree must not overflow ours).
pub(super) fn depth(root: &Node) -> usize {
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
