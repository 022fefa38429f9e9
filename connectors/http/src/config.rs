//! The HTTP ingress's configuration: its listener, and `sync` on a trigger's `from`.

use std::collections::BTreeMap;
use std::sync::Arc;

use fnbroker_core::binding::Sample;
use fnbroker_core::registry::{ConnectorPlugin, NoSettings, Report, SourceUse};
use fnbroker_core::values::{ByteSize, ConfDuration};
use fnbroker_core::{Connector, ConnectorError, Event, Origin};
use schemars::JsonSchema;
use serde::Deserialize;

use crate::HttpIngress;
use crate::shape::{Attributes, Pattern};

/// The HTTP ingress: accepts CloudEvents (binary, structured, batch) and plain POSTs.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct HttpSettings {
    /// The address to listen on, `host:port`.
    pub listen: String,
    /// The largest request body accepted, in bytes or with a unit (`512KiB`, `1MiB`); larger
    /// requests get 413. Default 1 MiB.
    #[serde(default = "default_max_body")]
    pub max_body: ByteSize,
    /// The most events one batch request (`application/cloudevents-batch+json`) may hold; larger
    /// batches get 413. Default 1000.
    #[serde(default = "default_max_batch")]
    pub max_batch: usize,
    /// The most connections open at once; past it a new connection gets 503 and is closed
    /// (counted in `fnbroker_connections_refused_total`). Lowered, with a warning, to what the
    /// file descriptor limit allows. Default 10000.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// How long a connection may take to send a complete request head, counted from when it
    /// starts waiting for one (so it also closes idle keep-alive connections), and a request to
    /// send its body (408 after it). Default `20s`.
    #[serde(default = "default_header_timeout")]
    pub header_timeout: ConfDuration,
    /// The most bytes of request bodies held before the engine takes their events, all paths
    /// together: bodies being read, waiting for a signature check, and decoded events waiting
    /// for room in the engine. Past it a request gets `503` with `Retry-After: 1` at once,
    /// before more of its body is read. Bodies whose signature is not checked yet may hold half
    /// of it. Each path may also hold at most its trigger's `max_in_flight` x `max_body`.
    /// Default `max_body` x (4 + the `max_in_flight` of every path), at most 64 MiB (or four
    /// bodies, when `max_body` is above 16 MiB).
    #[serde(default)]
    pub max_pending: Option<ByteSize>,
    /// How requests authenticate: `bearer: [tokens]`, `basic: { username, password }`,
    /// `hmac: { header, secret, prefix, algorithm }` (a signature of the body alone),
    /// `stripe: { secret, tolerance }` or `slack: { secret, tolerance }` (a signature of a
    /// timestamp and the body, refused outside the tolerance, default `5m`). Default: none.
    /// Others get 401 with `www-authenticate`, before anything else is answered.
    #[serde(default)]
    pub auth: Option<crate::auth::Auth>,
    /// Serve HTTPS: `cert` and `key`, and `client_ca` to require client certificates.
    #[serde(default)]
    pub tls: Option<fnbroker_core::tls::ServerTls>,
    /// The CloudEvents webhook handshake (abuse protection): `allowed_origins` (names, or `*`)
    /// are granted when they ask with `OPTIONS`, at `rate` requests per minute each (default
    /// unlimited). Deliveries naming another origin in `WebHook-Request-Origin` get 403, those
    /// past the rate 429. Default: none (`OPTIONS` gets 405).
    #[serde(default)]
    pub webhook: Option<crate::webhook::WebhookSettings>,
}

fn default_max_connections() -> usize {
    10_000
}

fn default_header_timeout() -> ConfDuration {
    ConfDuration::from_secs(20)
}

fn default_max_body() -> ByteSize {
    ByteSize::new(1024 * 1024)
}

fn default_max_batch() -> usize {
    1000
}

/// The keys of an HTTP trigger's `from`.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct HttpSourceSettings {
    /// Answer the request after the delivery, with the function's reply (default false: 202
    /// once the event is routed).
    #[serde(default)]
    pub sync: bool,
    /// Attributes a plain request's event takes from its headers and path, as templates:
    /// `type: "com.github.{header:X-GitHub-Event}"`, `id: "{header:X-GitHub-Delivery}"`,
    /// `subject: "{path:repo}"` (a `{repo}` segment of the topic) or `"{path:2}"` (the second
    /// segment). `id`, `source`, `type`, `subject`, `time`, `dataschema` or an extension; `{{`
    /// for a brace. A request lacking a header a template names gets 400. CloudEvents keep
    /// their own attributes.
    #[serde(default)]
    pub attributes: BTreeMap<String, String>,
}

/// The HTTP ingress as a registered connector kind.
pub struct Plugin;

impl ConnectorPlugin for Plugin {
    const KIND: &'static str = "http";
    const ABOUT: &'static str = "CloudEvents over HTTP: webhooks and `curl`.";
    /// A listener: its paths are routed when it starts, and it publishes nothing.
    const CAPABILITIES: fnbroker_core::ConnectorCapabilities =
        fnbroker_core::ConnectorCapabilities {
            subscribing: fnbroker_core::Subscribing::AtStart,
            publishes: false,
            keeps_keys: false,
        };
    type Settings = HttpSettings;
    type Source = HttpSourceSettings;
    type Destination = NoSettings;

    fn validate(settings: &HttpSettings, report: &Report<'_>) {
        report.address("listen", &settings.listen);
        if !settings.max_body.is_valid() || settings.max_body.get() == 0 {
            report.error(
                &["max_body"],
                format_args!(
                    "`max_body` is not a size: `{}` (write `1MiB`, `512KiB` or bytes)",
                    settings.max_body.text().as_str()
                ),
            );
        }
        if let Some(pending) = &settings.max_pending
            && (!pending.is_valid() || pending.get() < settings.max_body.get())
        {
            report.error(
                &["max_pending"],
                format_args!(
                    "`max_pending` (`{}`) must be a size of at least `max_body`",
                    pending.text().as_str()
                ),
            );
        }
        if settings.max_batch == 0 {
            report.error(&["max_batch"], "`max_batch` must be at least 1");
        }
        if settings.max_connections == 0 {
            report.error(&["max_connections"], "`max_connections` must be at least 1");
        }
        report.duration("header_timeout", &settings.header_timeout);
        report.server_tls(settings.tls.as_ref());
        if let Some(webhook) = &settings.webhook {
            if webhook.allowed_origins.is_empty() {
                report.error(
                    &["webhook", "allowed_origins"],
                    "`allowed_origins` needs at least one origin (or `*`)",
                );
            }
            for origin in &webhook.allowed_origins {
                if origin.trim().is_empty() || http::HeaderValue::from_str(origin).is_err() {
                    report.error(
                        &["webhook", "allowed_origins"],
                        format_args!("`{origin}` is not an origin name"),
                    );
                }
            }
        }
        match &settings.auth {
            Some(crate::auth::Auth::Bearer(tokens))
                if tokens.is_empty() || tokens.iter().any(|t| t.is_empty()) =>
            {
                report.error(&["auth", "bearer"], "`bearer` needs tokens, none empty");
            }
            Some(crate::auth::Auth::Basic(b)) if b.username.is_empty() => {
                report.error(
                    &["auth", "basic", "username"],
                    "`username` must not be empty",
                );
            }
            Some(crate::auth::Auth::Hmac(h)) => {
                if http::HeaderName::from_bytes(h.header.as_bytes()).is_err() {
                    report.error(
                        &["auth", "hmac", "header"],
                        format_args!("`{}` is not a header name", h.header),
                    );
                }
                if h.secret.is_empty() {
                    report.error(&["auth", "hmac", "secret"], "`secret` must not be empty");
                }
            }
            Some(crate::auth::Auth::Stripe(t)) | Some(crate::auth::Auth::Slack(t)) => {
                let scheme = match &settings.auth {
                    Some(crate::auth::Auth::Stripe(_)) => "stripe",
                    _ => "slack",
                };
                if t.secret.is_empty() {
                    report.error(&["auth", scheme, "secret"], "`secret` must not be empty");
                }
                report.duration_at(&["auth", scheme, "tolerance"], &t.tolerance);
            }
            _ => {}
        }
    }

    fn validate_source(source: &HttpSourceSettings, from: &SourceUse<'_>, report: &Report<'_>) {
        let Some(path) = from.require_topic(report) else {
            return;
        };
        if !path.starts_with('/') {
            report.error(
                &["topic"],
                format_args!("an http topic is a path starting with `/`, not `{path}`"),
            );
            return;
        }
        let pattern = match Pattern::parse(path) {
            Ok(p) => p,
            Err(e) => {
                report.error(&["topic"], e);
                return;
            }
        };
        if let Err(errors) = Attributes::parse(&source.attributes, &pattern) {
            for (name, error) in errors {
                report.error(&["attributes", name.as_str()], error);
            }
        }
    }

    /// `{name}` segments take any one segment.
    fn topic_matches(filter: &str, topic: &str) -> bool {
        filter == topic || Pattern::parse(filter).is_ok_and(|p| p.matches(topic))
    }

    fn shape_sample(
        source: &HttpSourceSettings,
        from_topic: Option<&str>,
        sample: &Sample<'_>,
        event: &mut Event,
    ) -> Result<Vec<(String, String)>, fnbroker_core::registry::SampleError> {
        let pattern = Pattern::parse(from_topic.unwrap_or(sample.topic))?;
        let attributes = Attributes::parse(&source.attributes, &pattern).map_err(|errors| {
            errors
                .into_iter()
                .map(|(name, e)| format!("`{name}`: {e}"))
                .collect::<Vec<_>>()
                .join("; ")
        })?;
        attributes
            .apply(
                event,
                &crate::sample_headers(sample)?,
                &pattern,
                sample.topic,
            )
            .map_err(fnbroker_core::registry::SampleError::Refused)?;
        Ok(attributes.provenance())
    }

    fn validate_together(sources: &[(SourceUse<'_>, &HttpSourceSettings, Report<'_>)]) {
        // The first trigger on a path decides whether its answers wait for the delivery, and
        // what its requests' attributes are: the path's events are made once for them all.
        let mut first: BTreeMap<&str, &HttpSourceSettings> = BTreeMap::new();
        let mut patterns: Vec<(&str, Pattern)> = Vec::new();
        for (used, source, report) in sources {
            let Some(path) = used.topic else { continue };
            match first.get(path) {
                Some(earlier) => {
                    if earlier.sync != source.sync {
                        report.error(
                            &["topic"],
                            format_args!("every trigger on path `{path}` must agree on `sync`"),
                        );
                    }
                    if earlier.attributes != source.attributes {
                        report.error(
                            &["attributes"],
                            format_args!(
                                "every trigger on path `{path}` must agree on `attributes`"
                            ),
                        );
                    }
                }
                None => {
                    first.insert(path, source);
                    let Ok(pattern) = Pattern::parse(path) else {
                        continue;
                    };
                    if !pattern.has_params() {
                        continue;
                    }
                    // An exact path wins over a pattern; two patterns that could both take one
                    // path would make the route depend on the order of the table.
                    if let Some((other, _)) = patterns.iter().find(|(_, p)| p.overlaps(&pattern)) {
                        report.error(
                            &["topic"],
                            format_args!(
                                "path `{path}` overlaps `{other}`: some request paths would \
                                 match both"
                            ),
                        );
                    }
                    patterns.push((path, pattern));
                }
            }
        }
    }

    /// As a POST to the path `topic`; headers as given (`ce-*` for binary mode).
    fn decode_sample(
        name: &str,
        settings: &HttpSettings,
        sample: &Sample<'_>,
    ) -> Result<Vec<(Event, Origin)>, fnbroker_core::registry::SampleError> {
        let headers = crate::sample_headers(sample)?;
        crate::decode(
            name,
            settings.max_batch,
            sample.topic,
            &headers,
            sample.data,
        )
        .map_err(|e| fnbroker_core::registry::SampleError::Refused(e.to_string()))
    }

    fn build(name: &str, settings: &HttpSettings) -> Result<Arc<dyn Connector>, ConnectorError> {
        let listen = settings.listen.parse().map_err(|e| {
            ConnectorError::permanent(
                name,
                format!("invalid listen address `{}`: {e}", settings.listen),
            )
        })?;
        let max_body = usize::try_from(settings.max_body.get()).unwrap_or(usize::MAX);
        Ok(Arc::new(
            HttpIngress::new(name, listen, max_body)
                .with_max_batch(settings.max_batch)
                .with_auth(settings.auth.clone())
                .with_webhook(settings.webhook.as_ref())
                .with_max_pending(
                    settings
                        .max_pending
                        .as_ref()
                        .map(|p| usize::try_from(p.get()).unwrap_or(usize::MAX)),
                )
                .with_limits(crate::server::Limits {
                    max_connections: settings.max_connections,
                    header_timeout: settings.header_timeout.get(),
                    tls: match &settings.tls {
                        Some(tls) => {
                            Some(Arc::new(tls.server_config().map_err(|e| {
                                ConnectorError::permanent(name, format!("tls: {e}"))
                            })?))
                        }
                        None => None,
                    },
                    reserve: None,
                }),
        ))
    }
}
