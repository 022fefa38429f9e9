//! AWS Lambda functions through the Invoke API (`POST /2015-03-31/functions/{name}/invocations`,
//! the Lambda API reference's "Invoke"), signed with Signature Version 4 by the `aws-sigv4` crate.
//!
//! The payload is the event in structured mode (`application/cloudevents+json`). A synchronous
//! invocation (`RequestResponse`) answers 200 with the function's result, which becomes the
//! reply; `X-Amz-Function-Error` on that answer says the function failed (retried, as Lambda's own
//! event source mappings do). An asynchronous one (`Event`) answers 202 once Lambda queued it.
//! Throttling (429) and 5xx are retried; other 4xx (no such function, a refused signature) are
//! final.

use fnbroker_core::function::BuildError;
use std::time::{Duration, SystemTime};

use crate::kinds::lambda::{LambdaFunction, LambdaInvocation};
use async_trait::async_trait;
use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
use aws_sigv4::sign::v4;
use aws_smithy_runtime_api::client::identity::Identity;
use bytes::Bytes;
use fnbroker_core::event::{self, Event};
use http::header::{HeaderMap, HeaderName, HeaderValue};

use crate::http_fn::{client_for, send};
use crate::platforms::endpoint;
use crate::{InvokeError, Invoker, Reply, Success, truncate};

/// AWS credentials: an access key, its secret and, for temporary credentials, a session token.
#[derive(Clone)]
pub struct Credentials {
    /// `AWS_ACCESS_KEY_ID`
    pub access_key_id: String,
    /// `AWS_SECRET_ACCESS_KEY`
    pub secret_access_key: String,
    /// `AWS_SESSION_TOKEN`, for temporary credentials.
    pub session_token: Option<String>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("access_key_id", &self.access_key_id)
            .finish_non_exhaustive()
    }
}

impl Credentials {
    /// The credentials the AWS tools find: `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY` (with
    /// `AWS_SESSION_TOKEN`), else the `profile` (default `AWS_PROFILE`, else `default`) of the
    /// shared credentials file (`AWS_SHARED_CREDENTIALS_FILE`, default `~/.aws/credentials`).
    pub fn from_environment(profile: Option<&str>) -> Result<Self, BuildError> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        if let (Some(id), Some(secret)) = (var("AWS_ACCESS_KEY_ID"), var("AWS_SECRET_ACCESS_KEY")) {
            return Ok(Self {
                access_key_id: id,
                secret_access_key: secret,
                session_token: var("AWS_SESSION_TOKEN"),
            });
        }
        let profile = profile
            .map(str::to_string)
            .or_else(|| var("AWS_PROFILE"))
            .unwrap_or_else(|| "default".into());
        let file = var("AWS_SHARED_CREDENTIALS_FILE")
            .map(std::path::PathBuf::from)
            .or_else(|| var("HOME").map(|h| std::path::Path::new(&h).join(".aws/credentials")))
            .ok_or("no AWS credentials: AWS_ACCESS_KEY_ID is not set and there is no HOME")?;
        let text = std::fs::read_to_string(&file).map_err(|e| {
            let message = format!(
                "no AWS credentials: AWS_ACCESS_KEY_ID is not set and {} cannot be read: {e}",
                file.display()
            );
            BuildError::caused(message, e)
        })?;
        Self::from_profile(&text, &profile).ok_or_else(|| {
            BuildError::new(format!(
                "no AWS credentials: profile `{profile}` of {} has no aws_access_key_id and aws_secret_access_key",
                file.display()
            ))
        })
    }

    /// The credentials of `profile` in a shared credentials file's text (INI: `[profile]`
    /// sections of `key = value` lines, `#` and `;` comments).
    pub fn from_profile(text: &str, profile: &str) -> Option<Self> {
        let mut section = None;
        let (mut id, mut secret, mut token) = (None, None, None);
        for line in text.lines().map(str::trim) {
            if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
                continue;
            }
            if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                section = Some(name.trim().to_string());
                continue;
            }
            if section.as_deref() != Some(profile) {
                continue;
            }
            if let Some((key, value)) = line.split_once('=') {
                let value = Some(value.trim().to_string());
                match key.trim() {
                    "aws_access_key_id" => id = value,
                    "aws_secret_access_key" => secret = value,
                    "aws_session_token" => token = value,
                    _ => {}
                }
            }
        }
        Some(Self {
            access_key_id: id?,
            secret_access_key: secret?,
            session_token: token,
        })
    }
}

/// Invokes a Lambda function per event.
#[derive(Debug, Clone)]
pub struct LambdaInvoker {
    client: reqwest::Client,
    url: reqwest::Url,
    region: String,
    invocation: LambdaInvocation,
    identity: Identity,
}

impl LambdaInvoker {
    /// An invoker of the configured function with `credentials`; the region is the
    /// configuration's, else `AWS_REGION` or `AWS_DEFAULT_REGION`.
    pub fn new(
        f: &LambdaFunction,
        concurrency: usize,
        credentials: Credentials,
    ) -> Result<Self, BuildError> {
        let region = f
            .region
            .as_ref()
            .map(|r| r.to_string())
            .or_else(|| std::env::var("AWS_REGION").ok())
            .or_else(|| std::env::var("AWS_DEFAULT_REGION").ok())
            .filter(|r| !r.is_empty())
            .ok_or("no AWS region: set `region`, AWS_REGION or AWS_DEFAULT_REGION")?;
        let base = match &f.endpoint {
            Some(e) => e.to_string(),
            None => format!("https://lambda.{region}.amazonaws.com"),
        };
        let (client, mut url) = client_for(
            &endpoint(
                &base,
                &["2015-03-31", "functions", &f.function, "invocations"],
            )?,
            concurrency,
            f.tls.as_ref(),
        )?;
        if let Some(q) = &f.qualifier {
            url.query_pairs_mut().append_pair("Qualifier", q);
        }
        let identity = aws_credential_types::Credentials::new(
            credentials.access_key_id,
            credentials.secret_access_key,
            credentials.session_token,
            None,
            "fnbroker",
        )
        .into();
        Ok(Self {
            client,
            url,
            region,
            invocation: f.invocation,
            identity,
        })
    }

    /// The request's headers with the SigV4 signature of `body` (of `content_type`) at `time`.
    fn signed_headers(
        &self,
        body: &[u8],
        content_type: &'static str,
        time: SystemTime,
    ) -> Result<HeaderMap, String> {
        let invocation_type = match self.invocation {
            LambdaInvocation::Sync => "RequestResponse",
            LambdaInvocation::Async => "Event",
        };
        let mut headers = HeaderMap::new();
        headers.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static(content_type),
        );
        headers.insert(
            HeaderName::from_static("x-amz-invocation-type"),
            HeaderValue::from_static(invocation_type),
        );
        let params = v4::SigningParams::builder()
            .identity(&self.identity)
            .region(&self.region)
            .name("lambda")
            .time(time)
            .settings(SigningSettings::default())
            .build()
            .map_err(|e| format!("cannot sign: {e}"))?
            .into();
        let signable = SignableRequest::new(
            "POST",
            self.url.as_str(),
            headers
                .iter()
                .filter_map(|(k, v)| Some((k.as_str(), v.to_str().ok()?))),
            SignableBody::Bytes(body),
        )
        .map_err(|e| format!("cannot sign: {e}"))?;
        let (instructions, _signature) = sign(signable, &params)
            .map_err(|e| format!("cannot sign: {e}"))?
            .into_parts();
        for (name, value) in instructions.headers() {
            let name = HeaderName::try_from(name).map_err(|e| format!("cannot sign: {e}"))?;
            let value = HeaderValue::try_from(value).map_err(|e| format!("cannot sign: {e}"))?;
            headers.insert(name, value);
        }
        Ok(headers)
    }

    /// Invokes the function with `body` (of `content_type`) as its payload.
    async fn call(
        &self,
        body: Vec<u8>,
        content_type: &'static str,
    ) -> Result<Success, InvokeError> {
        let headers = self
            .signed_headers(&body, content_type, SystemTime::now())
            .map_err(InvokeError::Request)?;
        let (status, headers, body) = send(
            self.client
                .post(self.url.clone())
                .headers(headers)
                .body(body),
        )
        .await?;
        if let Some(kind) = headers.get("x-amz-function-error") {
            return Err(InvokeError::Function {
                message: format!(
                    "{}: {}",
                    kind.to_str().unwrap_or("error"),
                    truncate(String::from_utf8_lossy(&body).trim().to_string(), 512)
                ),
                retryable: true,
            });
        }
        Ok(Success {
            status,
            reply: reply(body)?,
        })
    }
}

/// A synchronous result as the reply: a structured CloudEvent as it is, `null` or nothing as no
/// reply, any other JSON as it is.
pub(crate) fn reply(body: Bytes) -> Result<Option<Reply>, InvokeError> {
    let trimmed = body.trim_ascii();
    if trimmed.is_empty() || trimmed == b"null" {
        return Ok(None);
    }
    let looks_like_an_event = serde_json::from_slice::<serde_json::Value>(trimmed)
        .is_ok_and(|v| v.get("specversion").is_some());
    if looks_like_an_event {
        return event::from_json_slice(trimmed)
            .map(|e| Some(Reply::Event(Box::new(e))))
            .map_err(|e| InvokeError::InvalidReply(e.0));
    }
    Ok(Some(Reply::Raw {
        content_type: Some("application/json".into()),
        body,
    }))
}

#[async_trait]
impl Invoker for LambdaInvoker {
    async fn invoke(&self, event: &Event, timeout: Duration) -> Result<Success, InvokeError> {
        crate::within(
            timeout,
            self.call(event::to_json_vec(event), event::STRUCTURED_JSON),
        )
        .await
    }

    /// The payload is the JSON array of the events; the result may name the failed ones.
    async fn invoke_batch(
        &self,
        events: &[Event],
        timeout: Duration,
    ) -> Result<Success, InvokeError> {
        crate::within(
            timeout,
            self.call(event::batch_to_json_vec(events), event::BATCH_JSON),
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profiles_of_a_shared_credentials_file() {
        let text = "[default]\naws_access_key_id = AKIDDEFAULT\naws_secret_access_key=s1\n\n# a comment\n[ci]\naws_access_key_id = AKIDCI\naws_secret_access_key = s2\naws_session_token = tok\n";
        let d = Credentials::from_profile(text, "default").expect("default");
        assert_eq!(
            (d.access_key_id.as_str(), d.session_token),
            ("AKIDDEFAULT", None)
        );
        let ci = Credentials::from_profile(text, "ci").expect("ci");
        assert_eq!(ci.secret_access_key, "s2");
        assert_eq!(ci.session_token.as_deref(), Some("tok"));
        assert!(Credentials::from_profile(text, "other").is_none());
        assert!(
            !format!("{ci:?}").contains("s2"),
            "the secret is not in Debug"
        );
    }

    #[test]
    fn replies_of_a_synchronous_invocation() {
        assert!(matches!(reply(Bytes::from_static(b"null")), Ok(None)));
        assert!(matches!(
            reply(Bytes::from_static(b"{\"ok\":true}")),
            Ok(Some(Reply::Raw { .. }))
        ));
        let event = br#"{"specversion":"1.0","id":"1","source":"/lambda","type":"t.reply"}"#;
        assert!(matches!(
            reply(Bytes::from_static(event)),
            Ok(Some(Reply::Event(_)))
        ));
    }
}
