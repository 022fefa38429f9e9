//! Webhooks as their senders shape them: a path's `{name}` segments, and `from.attributes`,
//! templates that make a plain request's `id`, `type`, `subject`, `source`, `time`,
//! `dataschema` or extensions of its headers and path segments (GitHub's `X-GitHub-Event` and
//! `X-GitHub-Delivery`, Stripe's and Shopify's own).
//!
//! A template is text with placeholders: `{header:NAME}` (the request header, its first value),
//! `{path:NAME}` (the path segment the topic's `{NAME}` matched) or `{path:N}` (the N-th
//! segment, from 1), percent-decoded; `{{` and `}}` are braces. Templates apply to plain
//! requests only: a CloudEvent's attributes are its sender's.

use std::collections::BTreeMap;

use fnbroker_core::event::{self, AttributesWriter, Event};
use http::{HeaderMap, HeaderName};

/// A path as a trigger's `topic` names it: literal segments and `{name}` segments (a whole
/// segment: letters, digits, `_`), each of which takes any one non-empty segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Pattern {
    segments: Vec<Segment>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Param(String),
}

/// The segments of a path after the leading `/` (none for `/`).
fn split(path: &str) -> Vec<&str> {
    let rest = path.strip_prefix('/').unwrap_or(path);
    if rest.is_empty() {
        Vec::new()
    } else {
        rest.split('/').collect()
    }
}

impl Pattern {
    /// Parses a topic; an error names a parameter that appears twice.
    pub(crate) fn parse(topic: &str) -> Result<Self, String> {
        let mut segments = Vec::new();
        for segment in split(topic) {
            // Only a whole segment `{name}` is a parameter; any other brace is a character of
            // the path, as it was before parameters existed.
            let Some(name) = segment
                .strip_prefix('{')
                .and_then(|s| s.strip_suffix('}'))
                .filter(|n| is_param_name(n))
            else {
                segments.push(Segment::Literal(segment.to_string()));
                continue;
            };
            if segments
                .iter()
                .any(|s| matches!(s, Segment::Param(p) if p == name))
            {
                return Err(format!("the path parameter `{name}` appears twice"));
            }
            segments.push(Segment::Param(name.to_string()));
        }
        Ok(Self { segments })
    }

    /// Whether the topic has `{name}` segments (else only its own path matches it).
    pub(crate) fn has_params(&self) -> bool {
        self.segments.iter().any(|s| matches!(s, Segment::Param(_)))
    }

    /// Whether `name` is one of its parameters.
    fn has_param(&self, name: &str) -> bool {
        self.segments
            .iter()
            .any(|s| matches!(s, Segment::Param(p) if p == name))
    }

    /// Whether `path` matches.
    pub(crate) fn matches(&self, path: &str) -> bool {
        let segments = split(path);
        segments.len() == self.segments.len()
            && self.segments.iter().zip(&segments).all(|(s, p)| match s {
                Segment::Literal(l) => l == p,
                Segment::Param(_) => !p.is_empty(),
            })
    }

    /// Whether some path matches both patterns.
    pub(crate) fn overlaps(&self, other: &Pattern) -> bool {
        self.segments.len() == other.segments.len()
            && self
                .segments
                .iter()
                .zip(&other.segments)
                .all(|(a, b)| match (a, b) {
                    (Segment::Literal(a), Segment::Literal(b)) => a == b,
                    _ => true,
                })
    }

    /// The value `path` gives the parameter `name` (percent-decoded), when it matches.
    fn param(&self, path: &str, name: &str) -> Option<String> {
        let at = self
            .segments
            .iter()
            .position(|s| matches!(s, Segment::Param(p) if p == name))?;
        split(path).get(at).map(|s| decoded(s))
    }
}

fn is_param_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

fn decoded(segment: &str) -> String {
    percent_encoding::percent_decode_str(segment)
        .decode_utf8_lossy()
        .into_owned()
}

/// One placeholder or piece of text of a template.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Text(String),
    Header(HeaderName),
    Param(String),
    Segment(usize),
}

/// A parsed template.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Template {
    pieces: Vec<Piece>,
}

impl Template {
    fn parse(text: &str, pattern: &Pattern) -> Result<Self, String> {
        let mut pieces = Vec::new();
        let mut literal = String::new();
        let mut chars = text.char_indices().peekable();
        while let Some((at, c)) = chars.next() {
            match c {
                '{' if chars.peek().is_some_and(|(_, n)| *n == '{') => {
                    chars.next();
                    literal.push('{');
                }
                '}' if chars.peek().is_some_and(|(_, n)| *n == '}') => {
                    chars.next();
                    literal.push('}');
                }
                '}' => return Err("a lone `}` (write `}}` for a brace)".into()),
                '{' => {
                    let rest = &text[at + 1..];
                    let end = rest
                        .find('}')
                        .ok_or("a `{` is not closed (write `{{` for a brace)")?;
                    let inner = &rest[..end];
                    for _ in 0..=inner.chars().count() {
                        chars.next();
                    }
                    if !literal.is_empty() {
                        pieces.push(Piece::Text(std::mem::take(&mut literal)));
                    }
                    pieces.push(placeholder(inner, pattern)?);
                }
                c => literal.push(c),
            }
        }
        if !literal.is_empty() {
            pieces.push(Piece::Text(literal));
        }
        Ok(Self { pieces })
    }

    /// The text for one request, or what it lacks.
    fn render(&self, headers: &HeaderMap, pattern: &Pattern, path: &str) -> Result<String, String> {
        let mut out = String::new();
        for piece in &self.pieces {
            match piece {
                Piece::Text(t) => out.push_str(t),
                Piece::Header(name) => {
                    let value = headers
                        .get(name)
                        .ok_or_else(|| format!("the request has no `{name}` header"))?;
                    let value = std::str::from_utf8(value.as_bytes())
                        .map_err(|_| format!("header `{name}` is not UTF-8"))?;
                    out.push_str(value.trim());
                }
                Piece::Param(name) => out.push_str(
                    &pattern
                        .param(path, name)
                        .ok_or_else(|| format!("the path has no `{name}` segment"))?,
                ),
                Piece::Segment(n) => out.push_str(
                    &split(path)
                        .get(n - 1)
                        .map(|s| decoded(s))
                        .ok_or_else(|| format!("the path has no segment {n}"))?,
                ),
            }
        }
        Ok(out)
    }

    /// Where its value comes from, for `fnbroker explain`.
    fn describe(&self) -> String {
        let mut parts = Vec::new();
        for piece in &self.pieces {
            match piece {
                Piece::Text(_) => {}
                Piece::Header(h) => parts.push(format!("header `{h}`")),
                Piece::Param(p) => parts.push(format!("path segment `{{{p}}}`")),
                Piece::Segment(n) => parts.push(format!("path segment {n}")),
            }
        }
        if parts.is_empty() {
            "the trigger's `attributes` (fixed text)".into()
        } else {
            format!("the trigger's `attributes`: {}", parts.join(", "))
        }
    }
}

fn placeholder(inner: &str, pattern: &Pattern) -> Result<Piece, String> {
    let (kind, arg) = inner.split_once(':').ok_or_else(|| {
        format!("`{{{inner}}}`: write `{{header:NAME}}`, `{{path:NAME}}` or `{{path:N}}`")
    })?;
    match kind.trim() {
        "header" => HeaderName::from_bytes(arg.trim().as_bytes())
            .map(Piece::Header)
            .map_err(|_| format!("`{arg}` is not a header name")),
        "path" => {
            let arg = arg.trim();
            if let Ok(n) = arg.parse::<usize>() {
                if n == 0 {
                    return Err("path segments count from 1".into());
                }
                return Ok(Piece::Segment(n));
            }
            if pattern.has_param(arg) {
                Ok(Piece::Param(arg.to_string()))
            } else {
                Err(format!(
                    "`{{path:{arg}}}`: the topic has no `{{{arg}}}` segment"
                ))
            }
        }
        other => Err(format!(
            "`{{{other}:...}}` is no placeholder: write `{{header:NAME}}` or `{{path:...}}`"
        )),
    }
}

/// The attributes a trigger's `from.attributes` sets, parsed: what a request is refused for
/// lacking is known per request, what is wrong with a template at load.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Attributes {
    templates: Vec<(String, Template)>,
}

/// The attributes `from.attributes` may not set: the binding's own.
const NOT_SETTABLE: [&str; 4] = ["specversion", "datacontenttype", "data", "data_base64"];

impl Attributes {
    /// Parses `attributes` for a path of `pattern`; every problem, each with its attribute.
    pub(crate) fn parse(
        attributes: &BTreeMap<String, String>,
        pattern: &Pattern,
    ) -> Result<Self, Vec<(String, String)>> {
        let mut templates = Vec::new();
        let mut errors = Vec::new();
        for (name, text) in attributes {
            if NOT_SETTABLE.contains(&name.as_str()) {
                errors.push((
                    name.clone(),
                    format!("`{name}` is the binding's to set, not a template's"),
                ));
                continue;
            }
            if !event::is_valid_attribute_name(name) {
                errors.push((
                    name.clone(),
                    format!("`{name}` is not an attribute name (lowercase letters and digits)"),
                ));
                continue;
            }
            match Template::parse(text, pattern) {
                Ok(t) => templates.push((name.clone(), t)),
                Err(e) => errors.push((name.clone(), e)),
            }
        }
        if errors.is_empty() {
            Ok(Self { templates })
        } else {
            Err(errors)
        }
    }

    /// Whether there is nothing to set.
    pub(crate) fn is_empty(&self) -> bool {
        self.templates.is_empty()
    }

    /// Sets the attributes of a plain request's event from its headers and `path`; an error
    /// (for a `400`) names what the request lacks or what value is not valid.
    pub(crate) fn apply(
        &self,
        event: &mut Event,
        headers: &HeaderMap,
        pattern: &Pattern,
        path: &str,
    ) -> Result<(), String> {
        for (name, template) in &self.templates {
            let value = template
                .render(headers, pattern, path)
                .map_err(|e| format!("{e} (this path's `{name}` is made of it)"))?;
            set(event, name, &value).map_err(|e| format!("`{name}` {e}"))?;
        }
        Ok(())
    }

    /// Each attribute set, and where its value comes from.
    pub(crate) fn provenance(&self) -> Vec<(String, String)> {
        self.templates
            .iter()
            .map(|(name, t)| (name.clone(), t.describe()))
            .collect()
    }
}

/// Sets one attribute from text, checked as a binary-mode header's value would be.
fn set(event: &mut Event, name: &str, value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Err("would be empty".into());
    }
    if value.chars().any(char::is_control) {
        return Err("would hold a control character".into());
    }
    match name {
        "id" => {
            event.set_id(value);
        }
        "source" => {
            event.set_source(value);
        }
        "type" => {
            event.set_type(value);
        }
        "subject" => {
            event.set_subject(Some(value));
        }
        "time" => {
            let t = event::parse_time(value).map_err(|e| format!("is not a time: {}", e.0))?;
            event.set_time(Some(t));
        }
        "dataschema" => {
            let url = value
                .parse::<url::Url>()
                .map_err(|e| format!("is not an absolute URI: {e}"))?;
            event.set_dataschema(Some(url));
        }
        _ => {
            event.set_extension(name, value);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    fn attrs(pairs: &[(&str, &str)], topic: &str) -> Result<Attributes, Vec<(String, String)>> {
        let map = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Attributes::parse(&map, &Pattern::parse(topic).expect("pattern"))
    }

    fn plain() -> Event {
        event::normalize(
            event::PlainMessage {
                kind: "http",
                connector: "web",
                topic: "/gh",
                ..Default::default()
            },
            b"{}".to_vec(),
        )
    }

    #[test]
    fn github_headers_become_type_and_id() {
        let a = attrs(
            &[
                ("type", "com.github.{header:X-GitHub-Event}"),
                ("id", "{header:X-GitHub-Delivery}"),
            ],
            "/gh",
        )
        .expect("valid");
        let mut headers = HeaderMap::new();
        headers.insert("x-github-event", HeaderValue::from_static("push"));
        headers.insert("x-github-delivery", HeaderValue::from_static("72d3162e"));
        let mut e = plain();
        a.apply(&mut e, &headers, &Pattern::parse("/gh").expect("p"), "/gh")
            .expect("applies");
        assert_eq!(
            event::attribute(&e, "type").as_deref(),
            Some("com.github.push")
        );
        assert_eq!(event::attribute(&e, "id").as_deref(), Some("72d3162e"));
        headers.remove("x-github-delivery");
        let err = a
            .apply(
                &mut plain(),
                &headers,
                &Pattern::parse("/gh").expect("p"),
                "/gh",
            )
            .expect_err("lacks the header");
        assert_eq!(
            err,
            "the request has no `x-github-delivery` header (this path's `id` is made of it)"
        );
    }

    #[test]
    fn path_segments_by_name_and_number_and_braces() {
        let topic = "/shops/{shop}/hooks";
        let p = Pattern::parse(topic).expect("pattern");
        assert!(p.has_params());
        assert!(p.matches("/shops/caf%C3%A9/hooks"));
        assert!(!p.matches("/shops//hooks"));
        assert!(!p.matches("/shops/a/hooks/x"));
        let a = attrs(
            &[
                ("subject", "{path:shop}/{path:3}"),
                ("tenant", "{{{path:2}}}"),
            ],
            topic,
        )
        .expect("valid");
        let mut e = plain();
        a.apply(&mut e, &HeaderMap::new(), &p, "/shops/caf%C3%A9/hooks")
            .expect("applies");
        assert_eq!(
            event::attribute(&e, "subject").as_deref(),
            Some("café/hooks")
        );
        assert_eq!(event::attribute(&e, "tenant").as_deref(), Some("{café}"));
    }

    #[test]
    fn bad_templates_and_patterns_are_named() {
        let errors = attrs(
            &[
                ("type", "{header:}"),
                ("id", "{nope:x}"),
                ("subject", "{path:shop}"),
                ("specversion", "1.0"),
                ("Bad", "x"),
                ("source", "{header:x"),
            ],
            "/gh",
        )
        .expect_err("invalid");
        let by: BTreeMap<_, _> = errors.into_iter().collect();
        assert!(by["type"].contains("not a header name"), "{by:?}");
        assert!(by["id"].contains("no placeholder"), "{by:?}");
        assert!(by["subject"].contains("no `{shop}` segment"), "{by:?}");
        assert!(by["specversion"].contains("binding's"), "{by:?}");
        assert!(by["Bad"].contains("not an attribute name"), "{by:?}");
        assert!(by["source"].contains("not closed"), "{by:?}");
        // Braces that do not make a whole segment `{name}` are characters of the path.
        let literal = Pattern::parse("/a/{b}x/${LIT}").expect("literal");
        assert!(!literal.has_params());
        assert!(literal.matches("/a/{b}x/${LIT}"));
        assert!(Pattern::parse("/a/{b}/{b}").is_err());
        let (a, b) = (
            Pattern::parse("/a/{x}").expect("p"),
            Pattern::parse("/{y}/b").expect("p"),
        );
        assert!(a.overlaps(&b));
        assert!(!a.overlaps(&Pattern::parse("/b/{x}").expect("p")));
    }

    #[test]
    fn values_are_checked_as_attributes() {
        let p = Pattern::parse("/t").expect("p");
        let mut h = HeaderMap::new();
        h.insert("x-time", HeaderValue::from_static("yesterday"));
        h.insert("x-empty", HeaderValue::from_static(""));
        let time = attrs(&[("time", "{header:x-time}")], "/t").expect("valid");
        assert!(
            time.apply(&mut plain(), &h, &p, "/t")
                .expect_err("not a time")
                .starts_with("`time` is not a time")
        );
        let empty = attrs(&[("id", "{header:x-empty}")], "/t").expect("valid");
        assert_eq!(
            empty.apply(&mut plain(), &h, &p, "/t").expect_err("empty"),
            "`id` would be empty"
        );
    }
}
