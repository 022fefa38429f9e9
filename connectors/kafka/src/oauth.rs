//! SASL OAUTHBEARER: tokens from an OAuth 2.0 token endpoint by the client-credentials grant
//! (RFC 6749, 4.4), as Confluent Cloud, MSK and OAuth-enabled Kafka clusters hand them out.
//! librdkafka asks for a token when it connects and again before the current one expires (at 80%
//! of its lifetime); the request is made then, on the thread that polls the client.
//! (librdkafka's own OIDC client needs libcurl, which fnbroker does not link.)

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rdkafka::client::OAuthToken;
use serde::Deserialize;

use crate::config::Sasl;

/// How long a token request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

/// The lifetime assumed when the endpoint does not say (`expires_in`).
const DEFAULT_LIFETIME_SECS: u64 = 3600;

/// Fetches tokens for one connector.
pub(crate) struct TokenSource {
    connector: String,
    endpoint: String,
    client_id: String,
    client_secret: String,
    scope: Option<String>,
    http: reqwest::Client,
    runtime: tokio::runtime::Handle,
}

impl TokenSource {
    /// The token source of `sasl` (OAUTHBEARER with a `token_endpoint`); needs the runtime the
    /// connector is built on.
    pub(crate) fn new(connector: &str, sasl: &Sasl) -> Result<Arc<Self>, String> {
        let endpoint = sasl
            .token_endpoint
            .clone()
            .ok_or("OAUTHBEARER needs a `token_endpoint`")?;
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| "OAUTHBEARER tokens are fetched on the tokio runtime; none is running")?;
        let mut tls = fnbroker_core::tls::Tls::default()
            .client_config()
            .map_err(|e| format!("tls: {e}"))?;
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .timeout(REQUEST_TIMEOUT)
            .build()
            .map_err(|e| format!("cannot build the token client: {e}"))?;
        Ok(Arc::new(Self {
            connector: connector.to_string(),
            endpoint,
            client_id: sasl.username.clone(),
            client_secret: sasl.password.clone(),
            scope: sasl.scope.clone(),
            http,
            runtime,
        }))
    }

    /// A new token. Blocks the calling thread (librdkafka's poll thread) for the request, which
    /// runs on the runtime from a thread of its own, so this may be called from anywhere.
    pub(crate) fn token(&self) -> Result<OAuthToken, String> {
        let fetched = std::thread::scope(|s| {
            s.spawn(|| self.runtime.block_on(self.fetch()))
                .join()
                .unwrap_or_else(|_| Err("the token request panicked".to_string()))
        });
        match fetched {
            Ok(token) => {
                tracing::debug!(connector = %self.connector, "OAUTHBEARER token fetched");
                Ok(token)
            }
            Err(e) => {
                tracing::warn!(connector = %self.connector, error = %e, "cannot get an OAUTHBEARER token");
                Err(e)
            }
        }
    }

    async fn fetch(&self) -> Result<OAuthToken, String> {
        let endpoint = fnbroker_core::redact::url(&self.endpoint);
        let mut form = url::form_urlencoded::Serializer::new(String::new());
        form.append_pair("grant_type", "client_credentials");
        if let Some(scope) = &self.scope {
            form.append_pair("scope", scope);
        }
        let response = self
            .http
            .post(&self.endpoint)
            .basic_auth(&self.client_id, Some(&self.client_secret))
            .header(
                reqwest::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            .header(reqwest::header::ACCEPT, "application/json")
            .body(form.finish())
            .send()
            .await
            .map_err(|e| format!("token endpoint {endpoint}: {}", e.without_url()))?;
        let status = response.status();
        let body = response
            .bytes()
            .await
            .map_err(|e| format!("token endpoint {endpoint}: {}", e.without_url()))?;
        if !status.is_success() {
            return Err(format!(
                "token endpoint {endpoint} answered {status}: {}",
                excerpt(&body)
            ));
        }
        parse(&body, &self.client_id, now_ms())
            .map_err(|e| format!("token endpoint {endpoint}: {e}"))
    }
}

/// The first 200 characters of an error answer (OAuth errors are `{"error": "..."}`).
fn excerpt(body: &[u8]) -> String {
    String::from_utf8_lossy(body).chars().take(200).collect()
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Reads a token answer: `access_token`, and `expires_in` seconds (an hour when absent).
pub(crate) fn parse(body: &[u8], principal: &str, now_ms: i64) -> Result<OAuthToken, String> {
    #[derive(Deserialize)]
    struct Answer {
        access_token: String,
        #[serde(default)]
        expires_in: Option<u64>,
    }
    let answer: Answer =
        serde_json::from_slice(body).map_err(|e| format!("the answer holds no token: {e}"))?;
    if answer.access_token.is_empty() {
        return Err("the answer's `access_token` is empty".into());
    }
    let secs = answer.expires_in.unwrap_or(DEFAULT_LIFETIME_SECS);
    let lifetime = i64::try_from(secs.saturating_mul(1000)).unwrap_or(i64::MAX);
    Ok(OAuthToken {
        token: answer.access_token,
        principal_name: principal.to_string(),
        lifetime_ms: now_ms.saturating_add(lifetime),
    })
}

/// What a client context answers librdkafka's request for a token.
pub(crate) fn token_for(
    source: Option<&Arc<TokenSource>>,
) -> Result<OAuthToken, Box<dyn std::error::Error>> {
    match source {
        Some(s) => s.token().map_err(Into::into),
        None => Err("OAUTHBEARER needs `sasl.token_endpoint`".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_answer_gives_the_token_and_its_expiry() {
        let t = parse(
            br#"{"access_token":"eyJ.x.y","token_type":"Bearer","expires_in":300}"#,
            "client",
            1_000,
        )
        .expect("token");
        assert_eq!(t.token, "eyJ.x.y");
        assert_eq!(t.principal_name, "client");
        assert_eq!(t.lifetime_ms, 301_000);
        let t = parse(br#"{"access_token":"a"}"#, "c", 0).expect("token");
        assert_eq!(
            t.lifetime_ms, 3_600_000,
            "an hour when the answer does not say"
        );
        assert!(parse(br#"{"error":"invalid_client"}"#, "c", 0).is_err());
        assert!(parse(br#"{"access_token":""}"#, "c", 0).is_err());
        assert!(parse(b"<html>", "c", 0).is_err());
    }
}
