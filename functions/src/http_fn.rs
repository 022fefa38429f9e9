//! The HTTP function invoker.

use fnbroker_core::function::BuildError;
use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use crate::kinds::http::ContentMode;
use async_trait::async_trait;
use bytes::Bytes;
use fnbroker_core::binding::http::{self as binding, Mode};
use fnbroker_core::event::{self, AttributesReader as _, Event};
use http::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue, RETRY_AFTER};

use crate::client::Endpoint;
use crate::{InvokeError, Invoker, Reply, Success, truncate};

/// POSTs events to an HTTP endpoint over a pooled keep-alive client.
#[derive(Debug, Clone)]
pub struct HttpInvoker {
    endpoint: Endpoint,
    mode: ContentMode,
    headers: HeaderMap,
    topic_header: bool,
}

impl HttpInvoker {
    /// An invoker for `url`, sending in `mode` with the static `headers`, keeping up to
    /// `concurrency` idle connections.
    pub fn new(
        url: &str,
        mode: ContentMode,
        headers: &BTreeMap<String, String>,
        concurrency: usize,
        tls: Option<&fnbroker_core::tls::Tls>,
    ) -> Result<Self, BuildError> {
        Ok(Self {
            endpoint: Endpoint::new(url, concurrency, tls)?,
            mode,
            headers: header_map(headers)?,
            topic_header: false,
        })
    }

    /// Reads replies of at most `bytes` (default 16 MiB).
    pub fn with_max_reply(mut self, bytes: usize) -> Self {
        self.endpoint = self.endpoint.with_max_reply(bytes);
        self
    }

    /// Also sends the event's subject (the topic it came on) as `X-Topic`, as the OpenFaaS
    /// connectors do.
    pub(crate) fn with_topic_header(mut self) -> Self {
        self.topic_header = true;
        self
    }

    /// The request that delivers `event`: the static headers and the event in the content mode
    /// (and `X-Topic` where asked for), as headers and body.
    pub(crate) fn request(&self, event: &Event) -> (HeaderMap, Bytes) {
        // Sized once for the event's attributes and the extensions most events carry: a map
        // grown insert by insert is reallocated (and rehashed) three times on the way.
        let mut headers = HeaderMap::with_capacity(self.headers.len() + EVENT_HEADERS);
        headers.extend(self.headers.iter().map(|(k, v)| (k.clone(), v.clone())));
        if self.topic_header
            && let Some(topic) = event.subject()
            && let Ok(value) = HeaderValue::try_from(topic)
        {
            headers.insert(X_TOPIC, value);
        }
        // The W3C trace context as HTTP carries it, whatever the content mode: the function's
        // own instrumentation continues the trace (binary mode also has it as `ce-traceparent`).
        for name in [TRACEPARENT, TRACESTATE] {
            if let Some(fnbroker_core::event::ExtensionValue::String(v)) =
                event.extension(name.as_str())
                && let Ok(value) = HeaderValue::try_from(v.as_str())
            {
                headers.insert(name, value);
            }
        }
        let body = match self.mode {
            ContentMode::Binary => {
                binding::encode_binary(event, &mut headers);
                event::data_bytes(event).into_owned()
            }
            ContentMode::Structured => {
                headers.insert(
                    CONTENT_TYPE,
                    HeaderValue::from_static(event::STRUCTURED_JSON),
                );
                event::to_json_vec(event)
            }
        };
        (headers, Bytes::from(body))
    }

    /// The request that delivers a batch: the static headers and the events as
    /// `application/cloudevents-batch+json`.
    pub(crate) fn batch_request(&self, events: &[Event]) -> (HeaderMap, Bytes) {
        let mut headers = self.headers.clone();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static(event::BATCH_JSON));
        (headers, Bytes::from(event::batch_to_json_vec(events)))
    }

    /// POSTs a request to the endpoint: a 2xx answer's status, headers and body; any other
    /// status is an [`InvokeError::Status`].
    pub(crate) async fn post(
        &self,
        (headers, body): (HeaderMap, Bytes),
    ) -> Result<(u16, HeaderMap, Bytes), InvokeError> {
        successful(self.endpoint.post(headers, body).await?)
    }

    async fn call(&self, event: &Event) -> Result<Success, InvokeError> {
        let (status, headers, body) = self.post(self.request(event)).await?;
        Ok(Success {
            status,
            reply: decode_reply(&headers, body)?,
        })
    }
}

/// The W3C Trace Context headers.
const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// Headers a request is sized for beyond the static ones: the required attributes, `time`,
/// `subject`, the content type, trace context and a few extensions.
const EVENT_HEADERS: usize = 16;

/// The header the OpenFaaS connectors name the message's topic in.
const X_TOPIC: HeaderName = HeaderName::from_static("x-topic");

/// Sends a request and reads the whole answer: a 2xx answer's status, headers and body; any other
/// status is an [`InvokeError::Status`] (with `Retry-After`).
pub(crate) async fn send(
    request: reqwest::RequestBuilder,
) -> Result<(u16, HeaderMap, Bytes), InvokeError> {
    successful(exchange(request).await?)
}

/// A 2xx answer as it is; any other status as an [`InvokeError::Status`] (with `Retry-After`).
fn successful(
    (status, headers, body): (u16, HeaderMap, Bytes),
) -> Result<(u16, HeaderMap, Bytes), InvokeError> {
    if !(200..300).contains(&status) {
        return Err(status_error(status, &headers, &body));
    }
    Ok((status, headers, body))
}

/// Sends a request and reads the whole answer, whatever its status: for the platforms whose
/// protocol gives some non-2xx answers a meaning of their own.
pub(crate) async fn exchange(
    request: reqwest::RequestBuilder,
) -> Result<(u16, HeaderMap, Bytes), InvokeError> {
    let response = request
        .send()
        .await
        .map_err(|e| InvokeError::Connect(error_chain(&e.without_url())))?;
    let mut response = response;
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let mut reply = crate::client::Reply::new(status, &headers, crate::MAX_REPLY)?;
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| InvokeError::Connect(error_chain(&e.without_url())))?
    {
        if !reply.push(&chunk)? {
            break;
        }
    }
    Ok((status, headers, reply.into_bytes()))
}

/// A non-2xx answer as an error: its status, `Retry-After`, and the start of its body.
pub(crate) fn status_error(status: u16, headers: &HeaderMap, body: &[u8]) -> InvokeError {
    let retry_after = headers
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| parse_retry_after(v, SystemTime::now()));
    InvokeError::Status {
        status,
        retry_after,
        body: truncate(String::from_utf8_lossy(body).trim().to_string(), 512),
    }
}

/// Static headers from the configuration.
pub(crate) fn header_map(headers: &BTreeMap<String, String>) -> Result<HeaderMap, BuildError> {
    let mut map = HeaderMap::new();
    for (k, v) in headers {
        let name = HeaderName::try_from(k.as_str())
            .map_err(|e| format!("invalid header name `{k}`: {e}"))?;
        let value = HeaderValue::try_from(v.as_str())
            .map_err(|e| format!("invalid value of header `{k}`: {e}"))?;
        map.insert(name, value);
    }
    Ok(map)
}

/// A reqwest client for one endpoint ([`crate::client::Setup`]: the same URL, TLS and
/// `server_name` handling as the HTTP kinds' pool), and the URL to request with it.
pub(crate) fn client_for(
    url: &str,
    concurrency: usize,
    tls: Option<&fnbroker_core::tls::Tls>,
) -> Result<(reqwest::Client, reqwest::Url), BuildError> {
    crate::client::Setup::new(url, concurrency, tls)?.reqwest()
}

#[async_trait]
impl Invoker for HttpInvoker {
    async fn invoke(&self, event: &Event, timeout: Duration) -> Result<Success, InvokeError> {
        crate::within(timeout, self.call(event)).await
    }

    async fn invoke_batch(
        &self,
        events: &[Event],
        timeout: Duration,
    ) -> Result<Success, InvokeError> {
        crate::within(timeout, async {
            let (status, headers, body) = self.post(self.batch_request(events)).await?;
            Ok(Success {
                status,
                reply: decode_reply(&headers, body)?,
            })
        })
        .await
    }
}

/// A 2xx answer as a reply: a CloudEvent (binary or structured) as it is, any other non-empty body
/// as raw bytes with its content type.
pub(crate) fn decode_reply(headers: &HeaderMap, body: Bytes) -> Result<Option<Reply>, InvokeError> {
    match binding::mode(headers) {
        Mode::Binary => binding::decode_binary(headers, body.to_vec())
            .map(|e| Some(Reply::Event(Box::new(e))))
            .map_err(|e| InvokeError::InvalidReply(e.0)),
        Mode::Structured => event::from_json_slice(&body)
            .map(|e| Some(Reply::Event(Box::new(e))))
            .map_err(|e| InvokeError::InvalidReply(e.0)),
        Mode::Batch | Mode::Plain if body.is_empty() => Ok(None),
        Mode::Batch | Mode::Plain => Ok(Some(Reply::Raw {
            content_type: binding::content_type(headers).map(str::to_string),
            body,
        })),
    }
}

/// Parses a `Retry-After` value: delay-seconds or an HTTP date (relative to `now`; a date in the
/// past means no delay).
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = httpdate::parse_http_date(value).ok()?;
    Some(when.duration_since(now).unwrap_or(Duration::ZERO))
}

/// An error and its sources, on one line: reqwest's own text hides the cause.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_seconds_and_dates() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
        assert_eq!(parse_retry_after("1", now), Some(Duration::from_secs(1)));
        assert_eq!(
            parse_retry_after(" 120 ", now),
            Some(Duration::from_secs(120))
        );
        let later = httpdate::fmt_http_date(now + Duration::from_secs(30));
        assert_eq!(
            parse_retry_after(&later, now),
            Some(Duration::from_secs(30))
        );
        let earlier = httpdate::fmt_http_date(now - Duration::from_secs(30));
        assert_eq!(parse_retry_after(&earlier, now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("soon", now), None);
    }

    #[test]
    fn plain_and_empty_replies() {
        let mut h = HeaderMap::new();
        assert!(matches!(decode_reply(&h, Bytes::new()), Ok(None)));
        h.insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        match decode_reply(&h, Bytes::from_static(b"hi")) {
            Ok(Some(Reply::Raw { content_type, body })) => {
                assert_eq!(content_type.as_deref(), Some("text/plain"));
                assert_eq!(&body[..], b"hi");
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn invalid_cloud_event_reply_is_an_error() {
        let mut h = HeaderMap::new();
        h.insert("ce-specversion", HeaderValue::from_static("1.0"));
        assert!(matches!(
            decode_reply(&h, Bytes::new()),
            Err(InvokeError::InvalidReply(_))
        ));
    }
}
