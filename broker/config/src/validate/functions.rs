//! The `functions` section: each function's kind and the settings every kind shares.

use super::*;

pub(super) fn validate_function(name: &str, function: &Function, errors: &mut Errors<'_>) {
    let kinds = function.kinds();
    match kinds.as_slice() {
        [] => errors.at_path(
            &["functions", name],
            format!(
                "function `{name}` must have one of `http`, `exec`, `openfaas`, `openwhisk`, `fission`, `knative`, `fn` or `lambda`"
            ),
        ),
        [kind] => validate_function_kind(name, *kind, errors),
        [_, second, ..] => errors.at_path(
            &["functions", name, second.key()],
            format!(
                "function `{name}` must have exactly one kind, not {}",
                kinds.iter().map(|k| format!("`{}`", k.key())).collect::<Vec<_>>().join(" and ")
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

/// The settings of one function kind: URLs parse with the right scheme, names are not empty,
/// the `tls` block's files are readable.
pub(super) fn validate_function_kind(name: &str, kind: FunctionKind<'_>, errors: &mut Errors<'_>) {
    let web = &["http", "https"];
    let not_empty = |v: &Loc<String>, key: &str, errors: &mut Errors<'_>| {
        if v.trim().is_empty() {
            errors.at(v, format!("function `{name}`: `{key}` must not be empty"));
        }
    };
    match kind {
        FunctionKind::Http(http) => {
            url(&http.url, web, name, errors);
            if let Some(max) = &http.max_reply
                && (!max.is_valid() || max.get() == 0)
            {
                errors.at(
                    max.text(),
                    format!(
                        "function `{name}`: `max_reply` is not a size: `{}` (write `16MiB`, `512KiB` or bytes)",
                        max.text().as_str()
                    ),
                );
            }
        }
        FunctionKind::Exec(exec) => {
            if exec.command.is_empty() || exec.command[0].is_empty() {
                errors.at(
                    &exec.command,
                    format!("function `{name}`: `exec.command` must name a program"),
                );
            }
        }
        FunctionKind::OpenFaas(f) => {
            url(&f.gateway, web, name, errors);
            not_empty(&f.name, "openfaas.name", errors);
            half_a_login(
                &f.gateway,
                &f.username,
                &f.password,
                &format!("function `{name}`"),
                errors,
            );
            if let Some(cb) = &f.callback_url {
                url(cb, web, name, errors);
            }
        }
        FunctionKind::OpenWhisk(f) => {
            url(&f.api, web, name, errors);
            not_empty(&f.action, "openwhisk.action", errors);
            if !f.auth.contains(':') {
                errors.at(
                    &f.auth,
                    format!("function `{name}`: `openwhisk.auth` must be the `uuid:key` string (`wsk property get --auth`)"),
                );
            }
        }
        FunctionKind::Fission(f) => {
            url(&f.router, web, name, errors);
            not_empty(&f.name, "fission.name", errors);
        }
        FunctionKind::Knative(f) => url(&f.url, web, name, errors),
        FunctionKind::Fn(f) => {
            url(&f.endpoint, web, name, errors);
            not_empty(&f.id, "fn.id", errors);
        }
        FunctionKind::Lambda(f) => {
            not_empty(&f.function, "lambda.function", errors);
            if let Some(e) = &f.endpoint {
                url(e, web, name, errors);
            }
            if let Some(r) = &f.region {
                not_empty(r, "lambda.region", errors);
            }
        }
    }
    if let Some(Err(e)) = kind.tls().map(fnbroker_core::tls::Tls::check) {
        errors.placed(
            vec![
                "functions".into(),
                name.into(),
                kind.key().into(),
                "tls".into(),
                e.key.into(),
            ],
            Place::Value,
            format!("function `{name}`: tls: {}", e.message),
        );
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
