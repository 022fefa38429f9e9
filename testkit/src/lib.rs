//! Test helpers shared by fnbroker's crates: where the CloudEvents conformance data is (vendored in
//! `tests/conformance`), and a reader for the Gherkin scenarios of its protocol binding features.
#![forbid(unsafe_code)]

use std::path::PathBuf;

/// The folder of the conformance data: `FNBROKER_CONFORMANCE_DIR`, or the copy vendored into the
/// repository (`tests/conformance`, with its licence), so that a fresh clone tests itself.
pub fn conformance_dir() -> PathBuf {
    std::env::var_os("FNBROKER_CONFORMANCE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/conformance"))
}

/// Reads a file of the conformance data, panicking (never skipping) when it is missing.
pub fn read_conformance_file(name: &str) -> String {
    let path = conformance_dir().join(name);
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("conformance file {} is missing: {e}", path.display()))
}

/// One scenario outline of the feature file.
#[derive(Debug, Default)]
pub struct Scenario {
    /// The scenario's title.
    pub name: String,
    /// The message doc string (`Given an HTTP request` / `Given a Kafka message with payload`).
    pub message: String,
    /// The `Kafka headers` table, if any.
    pub headers: Vec<(String, String)>,
    /// The expected attributes.
    pub attributes: Vec<(String, String)>,
    /// The expected data, as JSON text.
    pub data: Option<String>,
    /// The rows of the `Examples` table, as (column, value) pairs.
    pub examples: Vec<Vec<(String, String)>>,
}

fn table_row(line: &str) -> Vec<String> {
    line.trim()
        .trim_matches('|')
        .split('|')
        .map(|c| c.trim().to_string())
        .collect()
}

/// A small reader for the Gherkin these files use: scenario outlines with one request doc
/// string, an attribute table, a data doc string and an examples table.
pub fn parse_feature(text: &str) -> Vec<Scenario> {
    let lines: Vec<&str> = text.lines().collect();
    let mut scenarios = Vec::new();
    let mut i = 0;
    let mut current: Option<Scenario> = None;
    let doc_string = |i: &mut usize| -> String {
        // `lines[*i]` is the opening `"""`; its indentation is removed from every line.
        let indent = lines[*i].len() - lines[*i].trim_start().len();
        *i += 1;
        let mut out = Vec::new();
        while *i < lines.len() && lines[*i].trim() != "\"\"\"" {
            out.push(lines[*i].get(indent..).unwrap_or("").to_string());
            *i += 1;
        }
        out.join("\n")
    };
    while i < lines.len() {
        let line = lines[i].trim();
        if let Some(name) = line
            .strip_prefix("Scenario Outline:")
            .or_else(|| line.strip_prefix("Scenario:"))
        {
            scenarios.extend(current.take());
            current = Some(Scenario {
                name: name.trim().to_string(),
                ..Default::default()
            });
        } else if let Some(s) = current.as_mut() {
            if line.starts_with("Given an HTTP request")
                || line.starts_with("Given a Kafka message")
            {
                i += 1;
                s.message = doc_string(&mut i);
            } else if line.starts_with("And Kafka headers") {
                i += 2; // skip the header row
                while i < lines.len() && lines[i].trim().starts_with('|') {
                    let row = table_row(lines[i]);
                    s.headers.push((row[0].clone(), row[1].clone()));
                    i += 1;
                }
                continue;
            } else if line.starts_with("Then the attributes are") {
                i += 2; // skip the header row
                while i < lines.len() && lines[i].trim().starts_with('|') {
                    let row = table_row(lines[i]);
                    s.attributes.push((row[0].clone(), row[1].clone()));
                    i += 1;
                }
                continue;
            } else if line.starts_with("And the data is equal to the following JSON") {
                i += 1;
                s.data = Some(doc_string(&mut i));
            } else if line.starts_with("Examples:") {
                i += 1;
                let header = table_row(lines[i]);
                i += 1;
                while i < lines.len() && lines[i].trim().starts_with('|') {
                    let row = table_row(lines[i]);
                    s.examples.push(header.iter().cloned().zip(row).collect());
                    i += 1;
                }
                continue;
            }
        }
        i += 1;
    }
    scenarios.extend(current);
    scenarios
}

/// Replaces every `<column>` of an example row in `text`.
pub fn substitute(text: &str, example: &[(String, String)]) -> String {
    example.iter().fold(text.to_string(), |t, (k, v)| {
        t.replace(&format!("<{k}>"), v)
    })
}

/// Every case of a feature: each scenario once per example row (once when it has none), with the
/// row substituted into the name, the message, the headers and the attributes.
pub fn cases(feature: &str) -> Vec<Scenario> {
    let mut out = Vec::new();
    for s in parse_feature(feature) {
        let examples = if s.examples.is_empty() {
            vec![Vec::new()]
        } else {
            s.examples.clone()
        };
        for ex in &examples {
            let sub = |pairs: &[(String, String)]| -> Vec<(String, String)> {
                pairs
                    .iter()
                    .map(|(k, v)| (k.clone(), substitute(v, ex)))
                    .collect()
            };
            out.push(Scenario {
                name: substitute(&s.name, ex),
                message: substitute(&s.message, ex),
                headers: sub(&s.headers),
                attributes: sub(&s.attributes),
                data: s.data.clone(),
                examples: Vec::new(),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh clone has nothing beside it: the data and its licence live in the repository.
    #[test]
    fn conformance_data_is_vendored_in_the_repository() {
        let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .canonicalize()
            .expect("repository root");
        let dir = repo.join("tests/conformance");
        for file in [
            "LICENSE",
            "README.md",
            "valid-events.json",
            "invalid-events.json",
            "valid-batches.json",
            "invalid-batches.json",
            "http-protocol-binding.feature",
            "kafka-protocol-binding.feature",
            "cesql_tck/LICENSE",
        ] {
            assert!(dir.join(file).is_file(), "{file} is not vendored");
        }
        if std::env::var_os("FNBROKER_CONFORMANCE_DIR").is_none() {
            let used = conformance_dir().canonicalize().expect("conformance dir");
            assert!(
                used.starts_with(&repo),
                "{} is outside the repository",
                used.display()
            );
        }
    }
}
