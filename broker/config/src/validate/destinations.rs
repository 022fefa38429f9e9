//! Replies and dead letters: a connector's topic (with its kind's keys) or a function.

use super::*;

#[allow(clippy::too_many_arguments)]
pub(super) fn validate_destination(
    connectors: &BTreeMap<String, ConnectorConfig>,
    functions: &BTreeMap<String, Function>,
    registry: &Registry,
    dest: &mut Destination,
    tname: &str,
    what: &str,
    base: Vec<String>,
    findings: &RefCell<Vec<Finding>>,
    errors: &mut Errors<'_>,
) {
    let kind = dest
        .connector
        .as_ref()
        .and_then(|c| connectors.get(c.as_str()))
        .and_then(|c| registry.get(c.kind()));
    match (&dest.connector, &dest.function) {
        (Some(c), None) => match kind {
            None if !connectors.contains_key(c.as_str()) => errors.at(
                c,
                format!("unknown connector `{}` in {what} of trigger `{tname}`", **c),
            ),
            None => {}
            Some(kind) if !kind.capabilities().publishes => errors.at(
                c,
                format!("{what} of trigger `{tname}`: connector `{}` ({}) cannot publish; name a function instead", **c, kind.kind()),
            ),
            Some(_) if dest.topic.as_deref().is_none_or(str::is_empty) => {
                errors.at(c, format!("{what} of trigger `{tname}` needs a `topic`"));
            }
            Some(_) => {}
        },
        (None, Some(f)) => {
            if !functions.contains_key(f.as_str()) {
                errors.at(f, format!("unknown function `{}` in {what} of trigger `{tname}`", **f));
            }
        }
        (Some(c), Some(_)) => errors.at(
            c,
            format!("{what} of trigger `{tname}` names both a connector and a function; choose one"),
        ),
        (None, None) => errors.placed(
            base.clone(),
            Place::Key,
            format!("{what} of trigger `{tname}` needs a `connector` and `topic`, or a `function`"),
        ),
    }
    let owner = format!("{what} of trigger `{tname}`");
    match kind.filter(|_| dest.function.is_none()) {
        Some(kind) => {
            let parsed = parse_keys(
                &base,
                &owner,
                dest.keys.object(),
                |v, ignored| kind.parse_destination(v, ignored),
                |path| {
                    let takes = kind_keys(kind, 2);
                    let with = if takes.is_empty() {
                        String::new()
                    } else {
                        format!(", {}", listed(&takes))
                    };
                    format!(
                        "{owner}: `{}` does not apply to {} destination (it takes `connector`, `topic`{with})",
                        path.join("."),
                        with_article(kind.kind())
                    )
                },
                errors,
            );
            if let Some(settings) = parsed {
                let report = Report::new(findings, base, owner);
                kind.validate_destination(&settings, dest.topic.as_deref(), &report);
                dest.keys.set(settings);
            }
        }
        None => {
            // A function destination, or a connector already reported: no kind's keys apply.
            for key in dest.keys.raw().keys() {
                let message = if dest.function.is_some() {
                    format!(
                        "{owner}: `{key}` does not apply to a function destination (it takes `function`)"
                    )
                } else {
                    format!("{owner}: unknown key `{key}`")
                };
                errors.placed(
                    [&base[..], std::slice::from_ref(key)].concat(),
                    Place::Key,
                    message,
                );
            }
        }
    }
}
