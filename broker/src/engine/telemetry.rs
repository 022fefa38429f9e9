//! OpenTelemetry traces. Each event a trigger takes gets a span (`process <trigger>`, a consumer
//! span) whose parent is the trace context the message carried (the `traceparent`/`tracestate`
//! extension, which every binding also fills from the protocol's own `traceparent` header); each
//! delivery attempt is a child (`invoke <function>`, a client span) whose context the function
//! request carries as its W3C `traceparent` header; each reply or dead-letter publish is a child
//! (`publish <topic>`, a producer span), and the reply or dead letter carries the event span's
//! context on. Spans are batched and exported by OTLP (HTTP/protobuf or gRPC).
//!
//! Off (no `telemetry`, no `OTEL_EXPORTER_OTLP_*` endpoint), nothing here runs: the engine holds
//! `None` and makes no span.

use std::collections::HashMap;

use anyhow::Context as _;
use fnbroker_config as config;
use fnbroker_core::event::{AttributesReader, Event, ExtensionValue};
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator as _};
use opentelemetry::trace::{SpanKind, Status, TraceContextExt as _, Tracer as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::{WithExportConfig as _, WithHttpConfig as _, WithTonicConfig as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracer, SdkTracerProvider};

/// The tracer of a running fnbroker.
pub(crate) struct Telemetry {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
}

/// The first of the environment variables `names` that is set and not empty.
fn env(names: &[&str]) -> Option<String> {
    names
        .iter()
        .find_map(|n| std::env::var(n).ok().filter(|v| !v.trim().is_empty()))
}

impl Telemetry {
    /// Starts the exporter when `telemetry` or the `OTEL_*` environment asks for one.
    pub(crate) fn start(cfg: Option<&config::Telemetry>) -> anyhow::Result<Option<Self>> {
        if env(&["OTEL_SDK_DISABLED"]).is_some_and(|v| v.eq_ignore_ascii_case("true")) {
            return Ok(None);
        }
        let otlp = cfg.and_then(|c| c.otlp.clone());
        let env_endpoint = env(&[
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "OTEL_EXPORTER_OTLP_ENDPOINT",
        ]);
        if otlp.is_none() && env_endpoint.is_none() {
            return Ok(None);
        }
        let otlp = otlp.unwrap_or_default();
        let protocol = match otlp.protocol {
            Some(p) => p,
            None => match env(&[
                "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
                "OTEL_EXPORTER_OTLP_PROTOCOL",
            ])
            .as_deref()
            {
                Some("grpc") => config::OtlpProtocol::Grpc,
                Some("http/protobuf") | None => config::OtlpProtocol::HttpProtobuf,
                Some(other) => anyhow::bail!(
                    "telemetry: OTEL_EXPORTER_OTLP_PROTOCOL `{other}` is not supported (grpc or http/protobuf)"
                ),
            },
        };
        let endpoint = otlp.endpoint.as_ref().map(|e| e.as_str().to_string());
        let exporter = match protocol {
            config::OtlpProtocol::HttpProtobuf => {
                let mut b = opentelemetry_otlp::SpanExporter::builder().with_http();
                if let Some(e) = endpoint {
                    b = b.with_endpoint(http_traces_url(&e));
                }
                if !otlp.headers.is_empty() {
                    b = b.with_headers(otlp.headers.clone().into_iter().collect::<HashMap<_, _>>());
                }
                b.build()
            }
            config::OtlpProtocol::Grpc => {
                let mut b = opentelemetry_otlp::SpanExporter::builder().with_tonic();
                if let Some(e) = endpoint {
                    b = b.with_endpoint(e);
                }
                if !otlp.headers.is_empty() {
                    let mut metadata = tonic::metadata::MetadataMap::new();
                    for (k, v) in &otlp.headers {
                        let key = tonic::metadata::MetadataKey::from_bytes(k.as_bytes())
                            .with_context(|| format!("telemetry.otlp.headers: `{k}`"))?;
                        let value = v
                            .parse()
                            .with_context(|| format!("telemetry.otlp.headers: `{k}`"))?;
                        metadata.insert(key, value);
                    }
                    b = b.with_metadata(metadata);
                }
                b.build()
            }
        }
        .context("telemetry: cannot make the OTLP exporter")?;
        let ratio = cfg
            .and_then(|c| c.sample_ratio)
            .or_else(|| env(&["OTEL_TRACES_SAMPLER_ARG"]).and_then(|v| v.parse().ok()))
            .unwrap_or(1.0);
        let mut resource = opentelemetry_sdk::Resource::builder();
        match cfg.and_then(|c| c.service_name.clone()) {
            Some(name) => resource = resource.with_service_name(name),
            None if env(&["OTEL_SERVICE_NAME"]).is_none() => {
                resource = resource.with_service_name("fnbroker");
            }
            None => {}
        }
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
                ratio,
            ))))
            .with_resource(
                resource
                    .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
                    .build(),
            )
            .build();
        let tracer = opentelemetry::trace::TracerProvider::tracer(&provider, "fnbroker");
        tracing::info!(protocol = ?protocol, sample_ratio = ratio, "traces exported by OTLP");
        Ok(Some(Self { provider, tracer }))
    }

    /// Exports what is still batched; called once the engine stopped.
    pub(crate) fn shutdown(&self) {
        // Bounded: a collector that is down must not hold the exit past `shutdown_timeout`.
        if let Err(e) = self
            .provider
            .shutdown_with_timeout(std::time::Duration::from_secs(3))
        {
            tracing::warn!(error = %e, "telemetry: the last spans could not be exported");
        }
    }

    /// The span of `event` taken by `trigger`, child of the context the event carries.
    pub(crate) fn delivery(&self, trigger: &str, function: &str, event: &Event) -> Delivery {
        let parent = TraceContextPropagator::new().extract(&Carried(event));
        let span = self
            .tracer
            .span_builder(format!("process {trigger}"))
            .with_kind(SpanKind::Consumer)
            .with_attributes([
                KeyValue::new("fnbroker.trigger", trigger.to_string()),
                KeyValue::new("faas.invoked_name", function.to_string()),
                KeyValue::new("cloudevents.event_id", event.id().to_string()),
                KeyValue::new("cloudevents.event_type", event.ty().to_string()),
                KeyValue::new("cloudevents.event_source", event.source().to_string()),
            ])
            .start_with_context(&self.tracer, &parent);
        Delivery {
            cx: parent.with_span(span),
        }
    }

    fn child(&self, parent: &Context, name: String, kind: SpanKind, attrs: Vec<KeyValue>) -> Child {
        let span = self
            .tracer
            .span_builder(name)
            .with_kind(kind)
            .with_attributes(attrs)
            .start_with_context(&self.tracer, parent);
        Child {
            cx: parent.with_span(span),
        }
    }
}

/// `endpoint` with `/v1/traces` when it names no path (the exporter takes a programmatic
/// endpoint as the full URL).
fn http_traces_url(endpoint: &str) -> String {
    match url::Url::parse(endpoint) {
        Ok(u) if u.path() == "/" || u.path().is_empty() => {
            format!("{}/v1/traces", endpoint.trim_end_matches('/'))
        }
        _ => endpoint.to_string(),
    }
}

/// The event span of one trigger and one event.
pub(crate) struct Delivery {
    cx: Context,
}

/// A span under a [`Delivery`]: an attempt or a publish.
pub(crate) struct Child {
    cx: Context,
}

impl Delivery {
    /// A delivery attempt's span, and the event as the function gets it: carrying the attempt's
    /// context (same trace, the attempt as parent).
    pub(crate) fn attempt(
        &self,
        telemetry: &Telemetry,
        function: &str,
        attempt: u32,
        event: &Event,
    ) -> (Child, Event) {
        let child = telemetry.child(
            &self.cx,
            format!("invoke {function}"),
            SpanKind::Client,
            vec![
                KeyValue::new("faas.invoked_name", function.to_string()),
                KeyValue::new("fnbroker.attempt", i64::from(attempt)),
            ],
        );
        let mut carried = event.clone();
        carry(&child.cx, &mut carried);
        (child, carried)
    }

    /// A reply or dead-letter publish's span (`what` is `reply` or `dead letter`).
    pub(crate) fn publish(&self, telemetry: &Telemetry, what: &str, topic: &str) -> Child {
        telemetry.child(
            &self.cx,
            format!("publish {topic}"),
            SpanKind::Producer,
            vec![
                KeyValue::new("fnbroker.publish", what.to_string()),
                KeyValue::new("messaging.destination.name", topic.to_string()),
            ],
        )
    }

    /// Makes a reply or dead letter carry this span's context on.
    pub(crate) fn carry_to(&self, event: &mut Event) {
        carry(&self.cx, event);
    }

    /// The trace id, for log lines about this event.
    pub(crate) fn trace_id(&self) -> String {
        self.cx.span().span_context().trace_id().to_string()
    }

    /// The event span's id, for log lines about this event.
    pub(crate) fn span_id(&self) -> String {
        self.cx.span().span_context().span_id().to_string()
    }

    /// Ends the span with the trigger's outcome (`delivered`, `failed`, `retry`, `released`).
    pub(crate) fn end(self, outcome: &'static str, error: Option<&str>) {
        let span = self.cx.span();
        span.set_attribute(KeyValue::new("fnbroker.outcome", outcome));
        if let Some(e) = error {
            span.set_status(Status::error(e.to_string()));
        }
        span.end();
    }
}

impl Child {
    /// Ends the span, failed when `error` says why.
    pub(crate) fn end(self, status: Option<u16>, error: Option<String>) {
        let span = self.cx.span();
        if let Some(s) = status {
            span.set_attribute(KeyValue::new("http.response.status_code", i64::from(s)));
        }
        if let Some(e) = error {
            span.set_status(Status::error(e));
        }
        span.end();
    }
}

/// Sets `traceparent` (and `tracestate`, or removes a stale one) on `event` from `cx`.
fn carry(cx: &Context, event: &mut Event) {
    let mut fields = Fields::default();
    TraceContextPropagator::new().inject_context(cx, &mut fields);
    if let Some(tp) = fields.traceparent {
        event.set_extension("traceparent", tp);
    }
    match fields.tracestate.filter(|s| !s.is_empty()) {
        Some(ts) => event.set_extension("tracestate", ts),
        None => {
            event.remove_extension("tracestate");
        }
    }
}

/// The W3C fields the propagator writes.
#[derive(Default)]
struct Fields {
    traceparent: Option<String>,
    tracestate: Option<String>,
}

impl Injector for Fields {
    fn set(&mut self, key: &str, value: String) {
        match key {
            "traceparent" => self.traceparent = Some(value),
            "tracestate" => self.tracestate = Some(value),
            _ => {}
        }
    }
}

/// The trace context an event carries, as its `traceparent`/`tracestate` extensions.
struct Carried<'a>(&'a Event);

impl Extractor for Carried<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        match self.0.extension(key) {
            Some(ExtensionValue::String(s)) => Some(s.as_str()),
            _ => None,
        }
    }

    fn keys(&self) -> Vec<&str> {
        vec!["traceparent", "tracestate"]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_http_endpoint_gets_the_traces_path_unless_it_has_one() {
        assert_eq!(http_traces_url("http://c:4318"), "http://c:4318/v1/traces");
        assert_eq!(http_traces_url("http://c:4318/"), "http://c:4318/v1/traces");
        assert_eq!(
            http_traces_url("https://api.example.com/otlp/v1/traces"),
            "https://api.example.com/otlp/v1/traces"
        );
    }
}
