//! Reading an OpenFaaS gateway's functions for discovery: `GET {gateway}/system/functions`
//! (with `?namespace=` for each namespace asked for) answers the deployed functions as the
//! gateway's `FunctionStatus` JSON (`name`, `image`, `namespace`, `replicas`, `annotations`,
//! `labels`...). A function's `topic` annotation lists the topics it gets, comma-separated, as
//! the OpenFaaS connector-sdk reads it.

use std::collections::BTreeMap;

use fnbroker_config::OpenFaasDiscovery;
use http::header::{AUTHORIZATION, HeaderValue};
use serde::Deserialize;

use crate::http_fn::{client_for, error_chain};
use crate::platforms::{basic_login, endpoint};

/// A function the gateway lists with topics.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Discovered {
    /// The function's name.
    pub name: String,
    /// Its namespace, as the gateway answered it.
    pub namespace: Option<String>,
    /// The topics of its `topic` annotation.
    pub topics: Vec<String>,
}

#[derive(Deserialize)]
struct FunctionStatus {
    name: String,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    annotations: Option<BTreeMap<String, String>>,
}

/// The topics a `topic` annotation names: comma-separated, trimmed, empty ones skipped.
pub fn topics(annotation: &str) -> Vec<String> {
    let mut topics: Vec<String> = annotation
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(str::to_string)
        .collect();
    topics.sort();
    topics.dedup();
    topics
}

/// Reads a gateway's functions.
#[derive(Debug, Clone)]
pub struct Gateway {
    client: reqwest::Client,
    functions: reqwest::Url,
    /// `/system/namespaces`, read each time when the entry asks for every namespace (`*`).
    all_namespaces: Option<reqwest::Url>,
    namespaces: Vec<String>,
    auth: Option<HeaderValue>,
}

impl Gateway {
    /// A reader of the entry's gateway.
    pub fn new(d: &OpenFaasDiscovery) -> Result<Self, fnbroker_core::function::BuildError> {
        let (client, functions) = client_for(
            &endpoint(&d.gateway, &["system", "functions"])?,
            2,
            d.tls.as_ref(),
        )?;
        let auth = basic_login(d.username.as_deref(), d.password.as_deref())
            .map(HeaderValue::try_from)
            .transpose()
            .map_err(|_| "the gateway's credentials hold characters a header cannot")?;
        let all_namespaces = match d.namespaces.iter().any(|n| n == "*") {
            true => Some(
                reqwest::Url::parse(&endpoint(&d.gateway, &["system", "namespaces"])?)
                    .map_err(|e| e.to_string())?,
            ),
            false => None,
        };
        Ok(Self {
            client,
            functions,
            all_namespaces,
            namespaces: d.namespaces.clone(),
            auth,
        })
    }

    /// Every function with topics, in every namespace asked for (the default one when none).
    pub async fn functions(&self) -> Result<Vec<Discovered>, String> {
        let mut found = Vec::new();
        let namespaces = match &self.all_namespaces {
            Some(url) => {
                let body = self.get(url.clone(), "/system/namespaces").await?;
                serde_json::from_slice::<Vec<String>>(&body).map_err(|e| {
                    format!("/system/namespaces answered no list of namespaces: {e}")
                })?
            }
            None => self.namespaces.clone(),
        };
        if namespaces.is_empty() {
            found.extend(self.read(None).await?);
        }
        for ns in &namespaces {
            found.extend(self.read(Some(ns)).await?);
        }
        found.sort();
        Ok(found)
    }

    async fn read(&self, namespace: Option<&str>) -> Result<Vec<Discovered>, String> {
        let mut url = self.functions.clone();
        if let Some(ns) = namespace {
            url.query_pairs_mut().append_pair("namespace", ns);
        }
        let body = self.get(url, "/system/functions").await?;
        let list: Vec<FunctionStatus> = serde_json::from_slice(&body)
            .map_err(|e| format!("/system/functions answered no function list: {e}"))?;
        Ok(list
            .into_iter()
            .filter_map(|f| {
                let topics = topics(f.annotations.as_ref()?.get("topic")?);
                (!topics.is_empty()).then(|| Discovered {
                    name: f.name,
                    namespace: f.namespace.or_else(|| namespace.map(str::to_string)),
                    topics,
                })
            })
            .collect())
    }

    /// A GET of the gateway's API with its authentication: the body of a 2xx answer.
    async fn get(&self, url: reqwest::Url, what: &str) -> Result<bytes::Bytes, String> {
        let mut request = self.client.get(url);
        if let Some(auth) = &self.auth {
            request = request.header(AUTHORIZATION, auth.clone());
        }
        let response = request
            .timeout(std::time::Duration::from_secs(10))
            .send()
            .await
            .map_err(|e| error_chain(&e.without_url()))?;
        let status = response.status();
        let body = response
            .bytes()
            .await
            .map_err(|e| error_chain(&e.without_url()))?;
        if !status.is_success() {
            return Err(format!(
                "{what} answered {status}: {}",
                crate::truncate(String::from_utf8_lossy(&body).trim().to_string(), 200)
            ));
        }
        Ok(body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn annotations_are_comma_separated_topics() {
        assert_eq!(topics(" a.b, c ,,a.b"), ["a.b", "c"]);
        assert!(topics(" , ").is_empty());
    }
}
