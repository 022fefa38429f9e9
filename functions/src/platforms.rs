//! The serverless platforms whose invocation is an HTTP POST with the event in CloudEvents binary
//! mode, to a URL the platform's own conventions make: Knative, Fission, Fn and OpenFaaS's
//! synchronous path. (OpenWhisk and Lambda speak their own protocols: see their modules.)

use fnbroker_core::function::BuildError;
use std::collections::BTreeMap;

use crate::kinds::fission::FissionFunction;
use crate::kinds::fn_project::FnFunction;
use crate::kinds::http::ContentMode;
use crate::kinds::knative::KnativeFunction;
use crate::kinds::openfaas::OpenFaasFunction;
use base64::Engine as _;

use crate::HttpInvoker;

/// A Knative service: CloudEvents binary mode to its URL (or `${K_SINK}`); a CloudEvent in the
/// answer is the reply.
pub(crate) fn knative(f: &KnativeFunction, concurrency: usize) -> Result<HttpInvoker, BuildError> {
    HttpInvoker::new(
        &f.url,
        ContentMode::Binary,
        &BTreeMap::new(),
        concurrency,
        f.tls.as_ref(),
    )
}

/// A Fission function through its router: `/fission-function/<name>` in the default namespace,
/// `/fission-function/<namespace>/<name>` in another (the router's `UrlForFunction`).
pub(crate) fn fission(f: &FissionFunction, concurrency: usize) -> Result<HttpInvoker, BuildError> {
    let mut path = vec!["fission-function"];
    if let Some(ns) = f.namespace.as_deref().filter(|ns| *ns != "default") {
        path.push(ns);
    }
    path.push(&f.name);
    HttpInvoker::new(
        &endpoint(&f.router, &path)?,
        ContentMode::Binary,
        &BTreeMap::new(),
        concurrency,
        f.tls.as_ref(),
    )
}

/// An Fn Project function: `POST {endpoint}/invoke/{id}`, a synchronous invocation
/// (`Fn-Invoke-Type: sync`); the function's output is the reply.
pub(crate) fn fn_project(f: &FnFunction, concurrency: usize) -> Result<HttpInvoker, BuildError> {
    let headers = BTreeMap::from([("Fn-Invoke-Type".to_string(), "sync".to_string())]);
    HttpInvoker::new(
        &endpoint(&f.endpoint, &["invoke", &f.id])?,
        ContentMode::Binary,
        &headers,
        concurrency,
        f.tls.as_ref(),
    )
}

/// An OpenFaaS function: `POST {gateway}/function/{name}[.{namespace}]` (`/async-function/` with
/// `async: true`) with the event's data as the body, its attributes as `ce-` headers, the topic as `X-Topic` (as the
/// OpenFaaS connectors send it) and the gateway's basic authentication.
pub(crate) fn openfaas(
    f: &OpenFaasFunction,
    concurrency: usize,
) -> Result<HttpInvoker, BuildError> {
    let headers = openfaas_auth(f).into_iter().collect();
    let path = if f.asynchronous {
        "async-function"
    } else {
        "function"
    };
    Ok(HttpInvoker::new(
        &endpoint(&f.gateway, &[path, &openfaas_name(f)])?,
        ContentMode::Binary,
        &headers,
        concurrency,
        f.tls.as_ref(),
    )?
    .with_topic_header())
}

/// `name.namespace`, as the gateway addresses a function outside its default namespace.
pub(crate) fn openfaas_name(f: &OpenFaasFunction) -> String {
    match f.namespace.as_deref().filter(|ns| !ns.is_empty()) {
        Some(ns) => format!("{}.{ns}", f.name.as_str()),
        None => f.name.to_string(),
    }
}

/// The gateway's basic authentication, as a header.
pub(crate) fn openfaas_auth(f: &OpenFaasFunction) -> Option<(String, String)> {
    let value = basic_login(f.username.as_deref(), f.password.as_deref())?;
    Some(("Authorization".into(), value))
}

/// An `Authorization` value for a user and password given together (neither: none).
pub(crate) fn basic_login(user: Option<&str>, password: Option<&str>) -> Option<String> {
    Some(basic(user?, password?))
}

/// An `Authorization` value for basic authentication.
pub(crate) fn basic(user: &str, password: &str) -> String {
    let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    format!("Basic {token}")
}

/// `base` with `segments` appended to its path, each one percent-encoded.
pub(crate) fn endpoint(base: &str, segments: &[&str]) -> Result<String, BuildError> {
    let mut url = url::Url::parse(base)
        .map_err(|e| format!("invalid URL `{}`: {e}", fnbroker_core::redact::url(base)))?;
    url.path_segments_mut()
        .map_err(|()| format!("`{}` cannot have a path", fnbroker_core::redact::url(base)))?
        .pop_if_empty()
        .extend(segments);
    Ok(url.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_append_encoded_segments() {
        assert_eq!(
            endpoint("http://gw:8080", &["function", "a.b"]).map_err(|e| e.to_string()),
            Ok("http://gw:8080/function/a.b".to_string())
        );
        assert_eq!(
            endpoint("http://gw:8080/prefix/", &["invoke", "01J/x"]).map_err(|e| e.to_string()),
            Ok("http://gw:8080/prefix/invoke/01J%2Fx".to_string())
        );
    }

    #[test]
    fn basic_authentication_is_rfc_7617() {
        // RFC 7617, section 2: Aladdin / open sesame.
        assert_eq!(
            basic("Aladdin", "open sesame"),
            "Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ=="
        );
    }
}
