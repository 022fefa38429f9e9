//! Apache OpenWhisk actions, through the platform's REST API (`docs/rest_api.md` and
//! `core/controller/src/main/resources/apiv1swagger.json` of apache/openwhisk):
//!
//! - `POST {api}/api/v1/namespaces/{ns}/actions/{action}?blocking=true&result=true`, basic
//!   authentication from the `uuid:key` string, the parameters as a JSON object;
//! - 200: the action's result; 502 with `{"error": ...}`: the action failed (an application or
//!   developer error: final, not retried); 429 and other 5xx: retried;
//! - 202 `{"activationId": ...}`: the blocking wait ran out before the action finished; the
//!   activation record is polled (`GET .../activations/{id}`, 404 until it exists) within the
//!   attempt's time.

use fnbroker_core::function::BuildError;
use std::time::Duration;

use crate::kinds::openwhisk::OpenWhiskFunction;
use async_trait::async_trait;
use bytes::Bytes;
use fnbroker_core::event::{self, AttributesReader as _, Event};
use http::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue};
use serde_json::{Map, Value};

use crate::http_fn::{client_for, exchange, status_error};
use crate::platforms::{basic, endpoint};
use crate::{InvokeError, Invoker, Reply, Success, truncate};

/// The parameter under which an action finds the event's CloudEvents attributes.
pub const ATTRIBUTES_PARAMETER: &str = "__ce";

/// Invokes an OpenWhisk action per event.
#[derive(Debug, Clone)]
pub struct OpenWhiskInvoker {
    client: reqwest::Client,
    invoke: reqwest::Url,
    activations: reqwest::Url,
    auth: HeaderValue,
}

impl OpenWhiskInvoker {
    /// An invoker of the configured action.
    pub fn new(f: &OpenWhiskFunction, concurrency: usize) -> Result<Self, BuildError> {
        let action: Vec<&str> = f.action.split('/').filter(|s| !s.is_empty()).collect();
        let mut path = vec!["api", "v1", "namespaces", f.namespace.as_str(), "actions"];
        path.extend(&action);
        let (client, mut invoke) =
            client_for(&endpoint(&f.api, &path)?, concurrency, f.tls.as_ref())?;
        invoke.set_query(Some("blocking=true&result=true"));
        // The same URL (and `server_name` rewriting) with `actions/<action>` replaced by
        // `activations`.
        let mut activations = invoke.clone();
        activations.set_query(None);
        {
            let mut segments = activations
                .path_segments_mut()
                .map_err(|()| "the API URL cannot have a path".to_string())?;
            for _ in 0..=action.len() {
                segments.pop();
            }
            segments.push("activations");
        }
        let (user, key) = f
            .auth
            .split_once(':')
            .ok_or("`auth` must be the `uuid:key` string")?;
        let auth = HeaderValue::try_from(basic(user, key))
            .map_err(|_| "`auth` holds characters a header cannot".to_string())?;
        Ok(Self {
            client,
            invoke,
            activations,
            auth,
        })
    }

    async fn call(&self, event: &Event) -> Result<Success, InvokeError> {
        let body = serde_json::to_vec(&parameters(event)).unwrap_or_default();
        let (status, headers, body) = exchange(
            self.client
                .post(self.invoke.clone())
                .header(AUTHORIZATION, self.auth.clone())
                .header(CONTENT_TYPE, "application/json")
                .body(body),
        )
        .await?;
        match status {
            200 => Ok(result(status, body)),
            202 => {
                let id = serde_json::from_slice::<Value>(&body)
                    .ok()
                    .and_then(|v| v.get("activationId")?.as_str().map(str::to_string))
                    .ok_or_else(|| {
                        InvokeError::InvalidReply("a 202 without an `activationId`".into())
                    })?;
                self.wait_for(&id).await
            }
            502 if error_result(&body).is_some() => Err(InvokeError::Function {
                message: error_result(&body).unwrap_or_default(),
                retryable: false,
            }),
            _ => Err(status_error(status, &headers, &body)),
        }
    }

    /// Polls the activation record until it exists (the caller's timeout bounds the wait).
    async fn wait_for(&self, id: &str) -> Result<Success, InvokeError> {
        let mut url = self.activations.clone();
        url.path_segments_mut()
            .map_err(|()| InvokeError::Connect("the API URL has no path".into()))?
            .push(id);
        let mut pause = Duration::from_millis(50);
        loop {
            let (status, headers, body) = exchange(
                self.client
                    .get(url.clone())
                    .header(AUTHORIZATION, self.auth.clone()),
            )
            .await?;
            match status {
                200 => return activation_outcome(&body),
                404 => {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(1));
                }
                _ => return Err(status_error(status, &headers, &body)),
            }
        }
    }
}

#[async_trait]
impl Invoker for OpenWhiskInvoker {
    async fn invoke(&self, event: &Event, timeout: Duration) -> Result<Success, InvokeError> {
        crate::within(timeout, self.call(event)).await
    }
}

/// The action's parameters: the data's members when it is a JSON object, else the data under
/// `data` (JSON, a string, or base64 for binary data); the attributes under [`ATTRIBUTES_PARAMETER`].
fn parameters(event: &Event) -> Value {
    let data = event::data_bytes(event);
    let mut params = match serde_json::from_slice::<Value>(&data) {
        Ok(Value::Object(members)) => members,
        Ok(other) => Map::from_iter([("data".to_string(), other)]),
        Err(_) if data.is_empty() => Map::new(),
        Err(_) => match std::str::from_utf8(&data) {
            Ok(text) => Map::from_iter([("data".to_string(), Value::String(text.into()))]),
            Err(_) => {
                use base64::Engine as _;
                let b64 = base64::engine::general_purpose::STANDARD.encode(&data);
                Map::from_iter([("data_base64".to_string(), Value::String(b64))])
            }
        },
    };
    let mut attributes: Map<String, Value> = event::binary_attributes(event)
        .map(|(name, value)| (name.to_string(), Value::String(value.into_owned())))
        .collect();
    if let Some(ct) = event.datacontenttype() {
        attributes.insert("datacontenttype".into(), Value::String(ct.to_string()));
    }
    params.insert(ATTRIBUTES_PARAMETER.into(), Value::Object(attributes));
    Value::Object(params)
}

/// A 200's result as the reply: a non-empty JSON object.
fn result(status: u16, body: Bytes) -> Success {
    let empty = matches!(
        serde_json::from_slice::<Value>(&body),
        Ok(Value::Object(ref m)) if m.is_empty()
    ) || body.is_empty();
    Success {
        status,
        reply: (!empty).then(|| Reply::Raw {
            content_type: Some("application/json".into()),
            body,
        }),
    }
}

/// The `error` of a failed action's result (`{"error": ...}`), as text.
fn error_result(body: &[u8]) -> Option<String> {
    let error = serde_json::from_slice::<Value>(body)
        .ok()?
        .get("error")?
        .clone();
    Some(truncate(
        match error {
            Value::String(s) => s,
            other => other.to_string(),
        },
        512,
    ))
}

/// An activation record's outcome: `response.success` with its `result`; a `whisk internal
/// error` is retried, an application or developer error is final.
pub(crate) fn activation_outcome(body: &[u8]) -> Result<Success, InvokeError> {
    let record: Value = serde_json::from_slice(body)
        .map_err(|e| InvokeError::InvalidReply(format!("activation record: {e}")))?;
    let response = record.get("response").cloned().unwrap_or(Value::Null);
    let result = response.get("result").cloned().unwrap_or(Value::Null);
    if response.get("success").and_then(Value::as_bool) == Some(true) {
        let body = serde_json::to_vec(&result).unwrap_or_default();
        return Ok(self::result(200, Bytes::from(body)));
    }
    let status = response
        .get("status")
        .and_then(Value::as_str)
        .unwrap_or("unknown");
    let message = error_result(&serde_json::to_vec(&result).unwrap_or_default())
        .unwrap_or_else(|| status.to_string());
    Err(InvokeError::Function {
        message: format!("{status}: {message}"),
        retryable: status == "whisk internal error",
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(data: &'static [u8], content_type: &str) -> Event {
        event::normalize(
            event::PlainMessage {
                kind: "nats",
                connector: "bus",
                topic: "orders",
                id: Some("1".into()),
                time: None,
                content_type: Some(content_type),
                partition_key: None,
                traceparent: None,
                tracestate: None,
            },
            data.to_vec(),
        )
    }

    #[test]
    fn parameters_are_the_objects_members_with_the_attributes_aside() {
        let p = parameters(&event(br#"{"celsius": 31}"#, "application/json"));
        assert_eq!(p["celsius"], 31);
        assert_eq!(p[ATTRIBUTES_PARAMETER]["specversion"], "1.0");
        assert_eq!(p[ATTRIBUTES_PARAMETER]["subject"], "orders");
        assert_eq!(
            p[ATTRIBUTES_PARAMETER]["datacontenttype"],
            "application/json"
        );
        let p = parameters(&event(b"[1,2]", "application/json"));
        assert_eq!(p["data"], serde_json::json!([1, 2]));
        let p = parameters(&event(b"hello", "text/plain"));
        assert_eq!(p["data"], "hello");
        let p = parameters(&event(b"\xff\x00", "application/octet-stream"));
        assert_eq!(p["data_base64"], "/wA=");
    }

    #[test]
    fn activation_records() {
        let ok = br#"{"response": {"status": "success", "success": true, "result": {"n": 1}}}"#;
        assert!(matches!(
            activation_outcome(ok),
            Ok(Success {
                reply: Some(Reply::Raw { .. }),
                ..
            })
        ));
        let app = br#"{"response": {"status": "application error", "success": false, "result": {"error": "bad input"}}}"#;
        match activation_outcome(app) {
            Err(e @ InvokeError::Function { .. }) => {
                assert!(!e.is_retryable());
                assert!(e.to_string().contains("bad input"), "{e}");
            }
            other => panic!("unexpected {other:?}"),
        }
        let internal = br#"{"response": {"status": "whisk internal error", "success": false, "result": {"error": "no invoker"}}}"#;
        assert!(activation_outcome(internal).is_err_and(|e| e.is_retryable()));
    }
}
