//! The `functions` section: each function's kind and the settings every kind shares.

use super::*;

pub(super) fn validate_function(
    name: &str,
    function: &mut Function,
    registry: &Registry,
    using: &FunctionUse<'_>,
    findings: &RefCell<Vec<Finding>>,
    errors: &mut Errors<'_>,
) {
    let kinds: Vec<String> = function
        .kinds()
        .iter()
        .map(|k| k.kind().to_string())
        .collect();
    let known = |kind: &str| registry.function(kind).is_some();
    for unknown in kinds.iter().filter(|k| !known(k)) {
        let names: Vec<String> = registry
            .functions()
            .map(|k| k.kind())
            .chain(crate::FUNCTION_KEYS)
            .map(String::from)
            .collect();
        let hint = suggestion_among(unknown, &names)
            .map_or(String::new(), |s| format!("; did you mean `{s}`?"));
        errors.placed(
            vec!["functions".into(), name.into(), unknown.clone()],
            Place::Key,
            format!("unknown key `{unknown}` in `functions.{name}`{hint}"),
        );
    }
    let named: Vec<&String> = kinds.iter().filter(|k| known(k)).collect();
    match named.as_slice() {
        [] if kinds.is_empty() => errors.at_path(
            &["functions", name],
            format!("function `{name}` must have one of {}", one_of(registry)),
        ),
        [] => {}
        [_] => {
            if let Some(entry) = function.kinds_mut().iter_mut().find(|k| known(k.kind())) {
                validate_function_kind(name, entry, registry, using, findings, errors);
            }
        }
        [_, second, ..] => errors.at_path(
            &["functions", name, second.as_str()],
            format!(
                "function `{name}` must have exactly one kind, not {}",
                named
                    .iter()
                    .map(|k| format!("`{k}`"))
                    .collect::<Vec<_>>()
                    .join(" and ")
            ),
        ),
    }
    if let Some(t) = &function.timeout {
        duration(t, &format!("functions.{name}.timeout"), errors);
    }
    if *function.concurrency == 0 {
        errors.at(
            &function.concurrency,
            format!("function `{name}`: `concurrency` must be at least 1"),
        );
    }
    if let Some(r) = &function.rate_limit {
        if *r.per_second == 0 {
            errors.at(
                &r.per_second,
                format!("function `{name}`: `rate_limit.per_second` must be at least 1"),
            );
        }
        if let Some(b) = r.burst.as_ref().filter(|b| ***b == 0) {
            errors.at(
                b,
                format!("function `{name}`: `rate_limit.burst` must be at least 1"),
            );
        }
    }
    if let Some(b) = &function.circuit_breaker {
        let ratio = *b.failure_ratio;
        if !(ratio > 0.0 && ratio <= 1.0) {
            errors.at(
                &b.failure_ratio,
                format!("function `{name}`: `circuit_breaker.failure_ratio` must be above 0 and at most 1, not {ratio}"),
            );
        }
        if *b.min_calls == 0 {
            errors.at(
                &b.min_calls,
                format!("function `{name}`: `circuit_breaker.min_calls` must be at least 1"),
            );
        }
        duration(
            &b.window,
            &format!("functions.{name}.circuit_breaker.window"),
            errors,
        );
        duration(
            &b.open_for,
            &format!("functions.{name}.circuit_breaker.open_for"),
            errors,
        );
    }
}

/// The kinds, for a message: "`http`, `exec` or `lambda`".
fn one_of(registry: &Registry) -> String {
    let kinds: Vec<String> = registry
        .functions()
        .map(|k| format!("`{}`", k.kind()))
        .collect();
    match kinds.split_last() {
        Some((last, rest)) if !rest.is_empty() => format!("{} or {last}", rest.join(", ")),
        Some((last, _)) => last.clone(),
        None => "a kind (this build has none)".into(),
    }
}

/// The settings of one function kind, parsed into the kind's type and checked by its plugin
/// (URLs parse with the right scheme, names are not empty), and its `tls` block's files.
fn validate_function_kind(
    name: &str,
    entry: &mut FunctionKindConfig,
    registry: &Registry,
    using: &FunctionUse<'_>,
    findings: &RefCell<Vec<Finding>>,
    errors: &mut Errors<'_>,
) {
    let Some(kind) = registry.function(entry.kind()) else {
        return;
    };
    let base = vec![
        "functions".to_string(),
        name.to_string(),
        kind.kind().to_string(),
    ];
    let owner = format!("function `{name}`");
    let parsed = parse_keys(
        &base,
        &owner,
        entry.raw().clone(),
        |v, ignored| kind.parse_settings(v, ignored),
        |path| {
            let mut generator = schemars::SchemaGenerator::default();
            unknown_key(
                &base,
                path,
                &schema_keys(&kind.schema(&mut generator), &generator),
            )
        },
        errors,
    );
    if let Some(settings) = parsed {
        let report = Report::new(findings, base, owner);
        kind.validate(&settings, using, &report);
        report.tls(kind.tls(&settings));
        entry.set_settings(settings);
    }
}

/// A gateway login is a user and a password together, or neither.
pub(super) fn half_a_login(
    at: &Loc<String>,
    username: &Option<String>,
    password: &Option<String>,
    owner: &str,
    errors: &mut Errors<'_>,
) {
    if username.is_some() != password.is_some() {
        errors.at(
            at,
            format!("{owner}: `openfaas` needs both `username` and `password`, or neither"),
        );
    }
}
