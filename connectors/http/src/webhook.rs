//! The abuse protection of the CloudEvents HTTP webhook specification (section 4): a sender
//! asks with `OPTIONS` and `WebHook-Request-Origin` whether it may deliver, and once granted
//! names its origin in every delivery. fnbroker grants the origins configured in
//! `webhook.allowed_origins`, at the rate of `webhook.rate` requests per minute per origin
//! (unlimited, `*`, when not set), and holds deliveries to what it granted: `403` for an origin
//! not allowed, `429` with `Retry-After` past the rate.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Arc;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use http::{HeaderMap, HeaderValue, StatusCode};
use schemars::JsonSchema;
use serde::Deserialize;

/// `webhook`: which senders may deliver, as the CloudEvents webhook handshake asks.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct WebhookSettings {
    /// The origins (`WebHook-Request-Origin`, a DNS name such as `eventgrid.azure.net`) whose
    /// handshake is granted; `*` grants every origin. A delivery naming another origin gets 403.
    pub allowed_origins: Vec<String>,
    /// The requests per minute granted to each origin (`WebHook-Allowed-Rate`), enforced: past
    /// it a delivery naming that origin gets 429 with `Retry-After`. Default: no limit (`*`).
    #[serde(default)]
    pub rate: Option<NonZeroU32>,
}

/// The request header naming the sender.
pub(crate) const REQUEST_ORIGIN: &str = "webhook-request-origin";
const REQUEST_RATE: &str = "webhook-request-rate";
const ALLOWED_ORIGIN: &str = "webhook-allowed-origin";
const ALLOWED_RATE: &str = "webhook-allowed-rate";

/// The handshake's configuration and the rate of each origin.
pub(crate) struct Webhook {
    any: bool,
    rate: Option<NonZeroU32>,
    /// The origins listed (lowercase), each with its limiter when there is a rate, and the one
    /// limiter all other origins share when `*` is allowed: the set is fixed, so no sender can
    /// make it grow.
    origins: HashMap<String, Option<DefaultDirectRateLimiter>>,
    others: Option<DefaultDirectRateLimiter>,
}

impl std::fmt::Debug for Webhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhook")
            .field("origins", &self.origins.keys().collect::<Vec<_>>())
            .field("any", &self.any)
            .field("rate", &self.rate)
            .finish()
    }
}

/// How a delivery stands with the handshake.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Delivery {
    /// It names no origin, or one allowed within its rate.
    Allowed,
    /// It names an origin that is not allowed.
    Forbidden(String),
    /// Its origin sent more than the rate allows; retry after this many seconds.
    Throttled(u64),
}

impl Webhook {
    pub(crate) fn new(settings: &WebhookSettings) -> Arc<Self> {
        let quota = settings.rate.map(Quota::per_minute);
        let limiter = || quota.map(RateLimiter::direct);
        let any = settings.allowed_origins.iter().any(|o| o == "*");
        let origins = settings
            .allowed_origins
            .iter()
            .filter(|o| *o != "*")
            .map(|o| (o.trim().to_ascii_lowercase(), limiter()))
            .collect();
        Arc::new(Self {
            any,
            rate: settings.rate,
            origins,
            others: if any { limiter() } else { None },
        })
    }

    fn allows(&self, origin: &str) -> bool {
        self.any || self.origins.contains_key(&origin.to_ascii_lowercase())
    }

    /// The answer to a handshake (`OPTIONS` with `WebHook-Request-Origin`): `200` with the
    /// grant, or `403` without one for an origin not allowed; `400` when the request is no
    /// handshake.
    pub(crate) fn handshake(&self, headers: &HeaderMap) -> (StatusCode, HeaderMap, String) {
        let mut answer = HeaderMap::new();
        answer.insert(
            http::header::ALLOW,
            HeaderValue::from_static("POST, OPTIONS"),
        );
        let Some(origin) = headers
            .get(REQUEST_ORIGIN)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|o| !o.is_empty())
        else {
            return (
                StatusCode::BAD_REQUEST,
                answer,
                "a webhook handshake names its origin in `WebHook-Request-Origin`".into(),
            );
        };
        if !self.allows(origin) {
            return (
                StatusCode::FORBIDDEN,
                answer,
                format!("origin `{origin}` is not allowed to deliver here"),
            );
        }
        let requested = headers
            .get(REQUEST_RATE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u32>().ok())
            .filter(|r| *r > 0);
        let granted = match (self.rate, requested) {
            (Some(rate), Some(asked)) => asked.min(rate.get()).to_string(),
            (Some(rate), None) => rate.get().to_string(),
            (None, _) => "*".to_string(),
        };
        if let Ok(v) = HeaderValue::from_str(origin) {
            answer.insert(ALLOWED_ORIGIN, v);
        }
        if let Ok(v) = HeaderValue::from_str(&granted) {
            answer.insert(ALLOWED_RATE, v);
        }
        (StatusCode::OK, answer, String::new())
    }

    /// Whether a delivery may go on: one that names its origin is held to the handshake.
    pub(crate) fn delivery(&self, headers: &HeaderMap) -> Delivery {
        let Some(origin) = headers.get(REQUEST_ORIGIN).map(|v| {
            String::from_utf8_lossy(v.as_bytes())
                .trim()
                .to_ascii_lowercase()
        }) else {
            return Delivery::Allowed;
        };
        if !self.allows(&origin) {
            return Delivery::Forbidden(origin);
        }
        let limiter = match self.origins.get(&origin) {
            Some(listed) => listed.as_ref(),
            None => self.others.as_ref(),
        };
        match limiter.map(|l| l.check()) {
            None | Some(Ok(())) => Delivery::Allowed,
            Some(Err(not_until)) => {
                let wait = not_until.wait_time_from(governor::clock::Clock::now(
                    &governor::clock::DefaultClock::default(),
                ));
                Delivery::Throttled(wait.as_secs().max(1))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(origins: &[&str], rate: Option<u32>) -> Arc<Webhook> {
        Webhook::new(&WebhookSettings {
            allowed_origins: origins.iter().map(|o| o.to_string()).collect(),
            rate: rate.and_then(NonZeroU32::new),
        })
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| {
                (
                    http::HeaderName::from_static(k),
                    HeaderValue::from_static(v),
                )
            })
            .collect()
    }

    /// The specification's example exchange (sections 4.1 and 4.2): origin
    /// `eventemitter.example.com` asks for 120 requests a minute.
    #[test]
    fn the_specification_example_is_granted() {
        let request = headers(&[
            ("webhook-request-origin", "eventemitter.example.com"),
            (
                "webhook-request-callback",
                "https://example.com/confirm?id=12345&key=c2VjcmV0",
            ),
            ("webhook-request-rate", "120"),
        ]);
        let (status, answer, _) =
            settings(&["eventemitter.example.com"], Some(100)).handshake(&request);
        assert_eq!(status, StatusCode::OK);
        assert_eq!(answer["allow"], "POST, OPTIONS");
        assert_eq!(answer["webhook-allowed-origin"], "eventemitter.example.com");
        // Granted what is configured, when less than asked.
        assert_eq!(answer["webhook-allowed-rate"], "100");
        let (_, answer, _) = settings(&["EventEmitter.example.com"], None).handshake(&request);
        assert_eq!(answer["webhook-allowed-rate"], "*");
        let (_, answer, _) = settings(&["*"], Some(500)).handshake(&request);
        assert_eq!(answer["webhook-allowed-origin"], "eventemitter.example.com");
        assert_eq!(answer["webhook-allowed-rate"], "120");
    }

    #[test]
    fn another_origin_gets_no_grant_and_its_deliveries_403() {
        let w = settings(&["eventemitter.example.com"], None);
        let stranger = headers(&[("webhook-request-origin", "attacker.example.net")]);
        let (status, answer, body) = w.handshake(&stranger);
        assert_eq!(status, StatusCode::FORBIDDEN);
        assert!(!answer.contains_key("webhook-allowed-origin"));
        assert!(body.contains("attacker.example.net"), "{body}");
        assert_eq!(
            w.delivery(&stranger),
            Delivery::Forbidden("attacker.example.net".into())
        );
        // A delivery that names no origin (curl, GitHub) is not the handshake's to judge.
        assert_eq!(w.delivery(&HeaderMap::new()), Delivery::Allowed);
        let (status, _, _) = w.handshake(&HeaderMap::new());
        assert_eq!(status, StatusCode::BAD_REQUEST);
    }

    #[test]
    fn deliveries_past_the_rate_are_throttled_per_origin() {
        let w = settings(&["a.example.com", "b.example.com"], Some(3));
        let a = headers(&[("webhook-request-origin", "a.example.com")]);
        let b = headers(&[("webhook-request-origin", "b.example.com")]);
        for _ in 0..3 {
            assert_eq!(w.delivery(&a), Delivery::Allowed);
        }
        match w.delivery(&a) {
            Delivery::Throttled(secs) => assert!((1..=20).contains(&secs), "{secs}"),
            other => panic!("not throttled: {other:?}"),
        }
        assert_eq!(w.delivery(&b), Delivery::Allowed);
    }
}
