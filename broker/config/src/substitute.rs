//! `${NAME}`, `${NAME:-default}` and `${file:PATH}` substituted inside the string values of the
//! parsed YAML, never into its text: a value can never add structure, whatever it holds (a
//! `#`, a newline, a quote, `", "` in a list). Vector interpolates after parsing for the same
//! reason.
//!
//! How, while keeping every error at its line and column: each reference (outside comments) is
//! first masked with characters of the same count that YAML reads as plain text, so that
//! `{ password: ${PW} }` still parses; the masked text is parsed into a tree of located scalars;
//! each string value holding references is expanded and written back in its place as one YAML
//! scalar (plain when the value is a plain word or number, so `port: ${PORT}` stays a number;
//! double-quoted and escaped otherwise), with as many line breaks as it spanned. `$${` is a
//! literal `${`.

use serde_saphyr::Spanned;

use super::load::{Errors, Node, comment_start, yaml_options};

/// The largest file `${file:PATH}` reads: a secret, not a data set.
pub(crate) const MAX_FILE: u64 = 1024 * 1024;

/// Masks stand in for `{`, each character of the reference, and `}`: private-use characters,
/// which YAML reads as text in any context.
const OPEN: char = '\u{E000}';
const INNER: char = '\u{E001}';
const CLOSE: char = '\u{E002}';

/// One reference as written.
struct Ref {
    /// Where its mask is in the masked text (bytes).
    start: usize,
    end: usize,
    /// The text between the braces.
    inner: String,
    /// `$${...}`: a literal `${...}`.
    literal: bool,
    line: u64,
    column: u64,
}

/// The text with every reference's value substituted inside the scalar that holds it; errors
/// (an unset variable, an unreadable file) at their places.
pub(crate) fn substitute(
    text: &str,
    env: &impl Fn(&str) -> Option<String>,
    errors: &mut Errors<'_>,
) -> String {
    if !text.contains("${") {
        return text.to_string();
    }
    let (masked, refs) = mask(text, errors);
    if refs.is_empty() {
        return text.to_string();
    }
    // A document that does not parse is left as it is: the parse proper reports why, in place.
    let Ok(tree) = serde_saphyr::from_str_with_options::<Spanned<Node>>(&masked, yaml_options())
    else {
        return text.to_string();
    };
    let mut scalars = Vec::new();
    string_values(&tree, &mut scalars);
    scalars.sort_by_key(|s| s.start);
    scalars.dedup_by_key(|s| s.start);

    let mut out = String::with_capacity(text.len());
    let mut at = 0;
    let mut next_ref = 0;
    for scalar in scalars {
        let inside: Vec<&Ref> = refs
            .iter()
            .filter(|r| r.start >= scalar.start && r.end <= scalar.end)
            .collect();
        if inside.is_empty() || scalar.start < at {
            continue;
        }
        let Some(value) = expand(&scalar.value, &inside, env, errors) else {
            continue;
        };
        let start = block_indicator(&masked, scalar.start).unwrap_or(scalar.start);
        out.push_str(&unmask(&masked[at..start], &refs, at, &mut next_ref));
        let source = &masked[start..scalar.end];
        let plain = !source.starts_with(['"', '\'', '|', '>']);
        out.push_str(&render(&value, plain));
        for _ in 0..source.matches('\n').count() {
            out.push('\n');
        }
        at = scalar.end;
        next_ref = refs.partition_point(|r| r.start < at);
    }
    out.push_str(&unmask(&masked[at..], &refs, at, &mut next_ref));
    out
}

/// Where the indicator (`|`, `>-`, `|+2`) of a block scalar whose content starts at `start`
/// is: a block scalar's span is its content, and the indicator goes with it.
fn block_indicator(text: &str, start: usize) -> Option<usize> {
    let before = text.get(..start)?.trim_end_matches([' ', '\t', '\n', '\r']);
    let header = before.trim_end_matches(|c: char| c == '+' || c == '-' || c.is_ascii_digit());
    header.ends_with(['|', '>']).then(|| header.len() - 1)
}

/// The text with each reference outside comments masked, and the references.
fn mask(text: &str, errors: &mut Errors<'_>) -> (String, Vec<Ref>) {
    let mut out = String::with_capacity(text.len() + 64);
    let mut refs = Vec::new();
    for (lineno, whole) in text.split_inclusive('\n').enumerate() {
        // A comment is kept as it is: `# or token: ${NATS_TOKEN}` must not need the variable.
        let (line, comment) = whole.split_at(comment_start(whole));
        let mut rest = line;
        let mut column = 1u64;
        while let Some(i) = rest.find('$') {
            out.push_str(&rest[..i]);
            column += rest[..i].chars().count() as u64;
            let after = &rest[i..];
            let (literal, open) = if after.starts_with("$${") {
                (true, 3)
            } else if after.starts_with("${") {
                (false, 2)
            } else {
                out.push('$');
                rest = &after[1..];
                column += 1;
                continue;
            };
            let Some(close) = after.find('}') else {
                errors.push(
                    lineno as u64 + 1,
                    column,
                    "unclosed `${` (write `$${` for a literal)",
                );
                out.push_str(after);
                rest = "";
                break;
            };
            let inner = &after[open..close];
            let start = out.len();
            out.push_str(if literal { "$$" } else { "$" });
            out.push(OPEN);
            out.extend(inner.chars().map(|_| INNER));
            out.push(CLOSE);
            refs.push(Ref {
                start,
                end: out.len(),
                inner: inner.to_string(),
                literal,
                line: lineno as u64 + 1,
                column,
            });
            column += after[..=close].chars().count() as u64;
            rest = &after[close + 1..];
        }
        out.push_str(rest);
        out.push_str(comment);
    }
    (out, refs)
}

/// `masked[offset..]`'s references as they were written (those in keys, or in values that were
/// not expanded).
fn unmask(segment: &str, refs: &[Ref], offset: usize, next: &mut usize) -> String {
    let mut out = String::with_capacity(segment.len());
    let mut at = 0;
    while let Some(r) = refs.get(*next) {
        if r.start >= offset + segment.len() {
            break;
        }
        let start = r.start - offset;
        out.push_str(&segment[at..start]);
        out.push_str(if r.literal { "$${" } else { "${" });
        out.push_str(&r.inner);
        out.push('}');
        at = r.end - offset;
        *next += 1;
    }
    out.push_str(&segment[at..]);
    out
}

/// A scalar's value with its masked references expanded, in order; `None` when the value does
/// not hold them as written (an escape sequence made one).
fn expand(
    value: &str,
    refs: &[&Ref],
    env: &impl Fn(&str) -> Option<String>,
    errors: &mut Errors<'_>,
) -> Option<String> {
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    for r in refs {
        let mask: String = std::iter::once(OPEN)
            .chain(r.inner.chars().map(|_| INNER))
            .chain(std::iter::once(CLOSE))
            .collect();
        let lead = if r.literal { "$$" } else { "$" };
        let whole = format!("{lead}{mask}");
        let i = rest.find(&whole)?;
        out.push_str(&rest[..i]);
        rest = &rest[i + whole.len()..];
        if r.literal {
            out.push_str("${");
            out.push_str(&r.inner);
            out.push('}');
            continue;
        }
        if let Some(path) = r.inner.strip_prefix("file:") {
            match read_secret(path) {
                Ok(content) => out.push_str(&content),
                Err(e) => errors.push(r.line, r.column, e),
            }
            continue;
        }
        let (name, default) = match r.inner.split_once(":-") {
            Some((n, d)) => (n, Some(d)),
            None => (r.inner.as_str(), None),
        };
        let valid_name = !name.is_empty()
            && !name.starts_with(|c: char| c.is_ascii_digit())
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid_name {
            errors.push(
                r.line,
                r.column,
                format!("invalid environment variable reference `${{{}}}`", r.inner),
            );
            continue;
        }
        match (env(name), default) {
            (Some(v), _) => out.push_str(&v),
            (None, Some(d)) => out.push_str(d),
            (None, None) => errors.push(
                r.line,
                r.column,
                format!("environment variable `{name}` is not set"),
            ),
        }
    }
    out.push_str(rest);
    Some(out)
}

/// A file's content less its trailing newline (a mounted secret): a regular file of at most
/// [`MAX_FILE`] bytes; anything else (a device, a FIFO, a directory, a larger file) is refused
/// before it is read.
pub(crate) fn read_secret(path: &str) -> Result<String, String> {
    use std::io::Read as _;
    let refused = |why: String| format!("cannot read the secret file `{path}`: {why}");
    let meta = std::fs::metadata(path).map_err(|e| refused(e.to_string()))?;
    if !meta.is_file() {
        return Err(refused("not a regular file".into()));
    }
    if meta.len() > MAX_FILE {
        return Err(refused(format!(
            "larger than {} KiB ({} bytes)",
            MAX_FILE / 1024,
            meta.len()
        )));
    }
    let file = std::fs::File::open(path).map_err(|e| refused(e.to_string()))?;
    let mut content = String::new();
    // The size is checked again while reading: the file may have grown since.
    file.take(MAX_FILE + 1)
        .read_to_string(&mut content)
        .map_err(|e| refused(e.to_string()))?;
    if content.len() as u64 > MAX_FILE {
        return Err(refused(format!("larger than {} KiB", MAX_FILE / 1024)));
    }
    Ok(content.trim_end_matches(['\n', '\r']).to_string())
}

/// A value written as one YAML scalar: plain when it was plain and is a word or number that
/// reads the same, double-quoted with every special character escaped otherwise.
fn render(value: &str, plain: bool) -> String {
    let word = !value.is_empty()
        && !value.starts_with(['-', '.', '+'])
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '+'));
    if plain && word {
        return value.to_string();
    }
    let mut out = String::with_capacity(value.len() + 2);
    out.push('"');
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() || matches!(c, '\u{2028}' | '\u{2029}' | '\u{feff}') => {
                out.push_str(&format!("\\u{:04x}", u32::from(c)));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A string value and where it was written (bytes of the masked text).
struct Scalar {
    start: usize,
    end: usize,
    value: String,
}

/// The string values under `node` (keys are not substituted), with where they were written.
fn string_values(node: &Spanned<Node>, out: &mut Vec<Scalar>) {
    match &node.value {
        Node::Scalar(Some(value)) => {
            let span = node.defined.span();
            if let (Some(start), Some(len)) = (span.byte_offset(), span.byte_len())
                && let (Ok(start), Ok(len)) = (usize::try_from(start), usize::try_from(len))
            {
                out.push(Scalar {
                    start,
                    end: start + len,
                    value: value.clone(),
                });
            }
        }
        Node::Scalar(None) => {}
        Node::Seq(items) => items.iter().for_each(|i| string_values(i, out)),
        Node::Map(entries) => entries.iter().for_each(|(_, v)| string_values(v, out)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(text: &str, env: &[(&str, &str)]) -> (String, Vec<String>) {
        let mut errors = Errors::new("t.yaml");
        let env = |name: &str| {
            env.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| (*v).to_string())
        };
        let out = substitute(text, &env, &mut errors);
        let listed = errors
            .list
            .iter()
            .map(|e| format!("{}:{} {}", e.line, e.column, e.message))
            .collect();
        (out, listed)
    }

    /// Each value the issue measured with the release binary, before: cut at `#`, a new
    /// top-level key, a broken file, a second bearer token.
    #[test]
    fn a_value_never_adds_structure() {
        #[derive(Debug, serde::Deserialize)]
        struct Doc {
            key: String,
            list: Vec<String>,
            quoted: String,
            flow: std::collections::BTreeMap<String, String>,
            port: u16,
        }
        let text = "key: ${A}\nlist: [\"${B}\", other]\nquoted: \"x ${C} y\"\nflow: { p: ${D} }\nport: ${P}\n";
        let (out, errors) = run(
            text,
            &[
                ("A", "abc #def"),
                ("B", "realtoken\", \"injected"),
                ("C", "q\"uote\nnew: line"),
                ("D", "x\ny: z"),
                ("P", "8080"),
            ],
        );
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(out.lines().count(), text.lines().count(), "{out}");
        let doc: Doc = serde_saphyr::from_str(&out).expect("parses");
        assert_eq!(doc.key, "abc #def");
        assert_eq!(doc.list, ["realtoken\", \"injected", "other"]);
        assert_eq!(doc.quoted, "x q\"uote\nnew: line y");
        assert_eq!(doc.flow.get("p").map(String::as_str), Some("x\ny: z"));
        assert_eq!(doc.flow.len(), 1);
        assert_eq!(doc.port, 8080);
    }

    #[test]
    fn comments_keys_and_literals_are_left_alone_and_errors_are_placed() {
        let text =
            "a: 1 # or token: ${UNSET_ONE}\nb: \"$${KEEP}\"\nc: ${UNSET_TWO}\nd: ${E:-fallback}\n";
        let (out, errors) = run(text, &[]);
        assert_eq!(errors, ["3:4 environment variable `UNSET_TWO` is not set"]);
        assert!(
            out.starts_with("a: 1 # or token: ${UNSET_ONE}\nb: \"${KEEP}\"\n"),
            "{out}"
        );
        assert!(out.ends_with("d: fallback\n"), "{out}");
        // A block scalar keeps its line count, so the lines after it keep their numbers.
        let (out, errors) = run("s: |\n  one ${X}\n  two\nafter: ${UNSET}\n", &[("X", "1")]);
        assert_eq!(errors, ["4:8 environment variable `UNSET` is not set"]);
        assert!(out.starts_with("s: \"one 1\\ntwo\\n\"\n\n\n"), "{out}");
        assert!(
            out.lines().nth(3).is_some_and(|l| l.starts_with("after: ")),
            "{out}"
        );
    }

    #[test]
    fn secret_files_are_regular_files_of_at_most_a_mebibyte() {
        let dir = tempfile::tempdir().expect("tempdir");
        let secret = dir.path().join("secret");
        std::fs::write(&secret, "s3cret\n").expect("write");
        let (out, errors) = run(&format!("a: ${{file:{}}}\n", secret.display()), &[]);
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(out, "a: s3cret\n");
        let big = dir.path().join("big");
        std::fs::write(&big, vec![b'x'; MAX_FILE as usize + 1]).expect("write");
        let err = read_secret(&big.display().to_string()).expect_err("too large");
        assert!(err.contains("larger than 1024 KiB"), "{err}");
        let err = read_secret("/dev/zero").expect_err("a device");
        assert!(err.contains("not a regular file"), "{err}");
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).expect("mkfifo");
        // Would hang forever if it were opened.
        let err = read_secret(&fifo.display().to_string()).expect_err("a FIFO");
        assert!(err.contains("not a regular file"), "{err}");
        let (_, errors) = run(
            &format!("a: 1\nb: ${{file:{}/nope}}\n", dir.path().display()),
            &[],
        );
        assert_eq!(errors.len(), 1);
        assert!(
            errors[0].starts_with("2:4 cannot read the secret file `"),
            "{errors:?}"
        );
    }
}
