//! Who may post to the ingress: bearer tokens, basic credentials, or a signature of the body.
//! Signed webhooks come in two families: a signature of the body alone (`hmac`: GitHub's
//! `X-Hub-Signature-256: sha256=<hex>` and every sender that signs the raw body the same way),
//! which a captured request replays forever, and a signature of a timestamp with the body
//! (`stripe`, `slack`), refused once the timestamp is further from now than a tolerance.
//! Every comparison takes constant time.

use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::prelude::BASE64_STANDARD;
use hmac::{Hmac, Mac};
use http::HeaderMap;
use http::header::AUTHORIZATION;
use schemars::JsonSchema;
use serde::Deserialize;
use subtle::ConstantTimeEq;

/// How requests to the ingress authenticate; exactly one way.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum Auth {
    /// `Authorization: Bearer <token>` with any of these tokens (several allow rotation).
    Bearer(Vec<String>),
    /// `Authorization: Basic` with this user name and password.
    Basic(BasicAuth),
    /// A signature of the raw body in a header, as signed webhooks send it.
    Hmac(HmacAuth),
    /// Stripe's signature: `Stripe-Signature: t=<unix time>,v1=<hex>` over `<t>.<body>`.
    Stripe(TimedAuth),
    /// Slack's signature: `X-Slack-Signature: v0=<hex>` over `v0:<timestamp>:<body>`, the
    /// timestamp in `X-Slack-Request-Timestamp`.
    Slack(TimedAuth),
}

/// A signature over a timestamp and the body, with HMAC-SHA-256.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TimedAuth {
    /// The signing secret, as the sender shows it (Stripe's `whsec_...` whole; use `${ENV}` or
    /// `${file:PATH}`).
    pub secret: String,
    /// How far the signed timestamp may be from now, either way; further, the request is
    /// refused as a replay. Default `5m`, as both senders recommend.
    #[serde(default = "default_tolerance")]
    pub tolerance: fnbroker_core::values::ConfDuration,
}

fn default_tolerance() -> fnbroker_core::values::ConfDuration {
    fnbroker_core::values::ConfDuration::from_secs(300)
}

/// Basic credentials.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BasicAuth {
    /// The user name.
    pub username: String,
    /// The password (use `${ENV}` or `${file:PATH}`).
    pub password: String,
}

/// A signed body: `header: <prefix><hex of HMAC(secret, body)>`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HmacAuth {
    /// The header carrying the signature, e.g. `X-Hub-Signature-256`.
    pub header: String,
    /// The shared secret (use `${ENV}` or `${file:PATH}`).
    pub secret: String,
    /// What precedes the hex digest in the header, e.g. `sha256=`. Default none.
    #[serde(default)]
    pub prefix: String,
    /// The hash: `sha256` (default), `sha512` or `sha1` (legacy senders only).
    #[serde(default)]
    pub algorithm: HmacAlgorithm,
}

/// The hash of an HMAC signature.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum HmacAlgorithm {
    /// HMAC-SHA-256.
    #[default]
    Sha256,
    /// HMAC-SHA-512.
    Sha512,
    /// HMAC-SHA-1: only for senders that offer nothing better.
    Sha1,
}

/// Why a request was not let in: the answer's `www-authenticate` value and a reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// The challenge to send back with 401.
    pub challenge: String,
    /// What was wrong, for the body and the debug log.
    pub reason: &'static str,
}

impl Refused {
    /// The answer: 401 with the challenge in `www-authenticate` and the reason as text.
    pub fn into_response(self) -> axum::response::Response {
        use axum::response::IntoResponse as _;
        let mut response = (
            http::StatusCode::UNAUTHORIZED,
            [(http::header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            format!("{}\n", self.reason),
        )
            .into_response();
        if let Ok(v) = http::HeaderValue::from_str(&self.challenge) {
            response
                .headers_mut()
                .insert(http::header::WWW_AUTHENTICATE, v);
        }
        response
    }
}

impl Auth {
    /// Whether the check needs the body (signatures do; it then runs after the body is read).
    pub fn needs_body(&self) -> bool {
        matches!(self, Auth::Hmac(_) | Auth::Stripe(_) | Auth::Slack(_))
    }

    /// What can be told before the body is read: whether the request carries the signature's
    /// headers at all. A request without them is refused before its body costs anything.
    pub fn precheck(&self, headers: &HeaderMap) -> Result<(), Refused> {
        let header = match self {
            Auth::Hmac(h) => h.header.as_str(),
            Auth::Stripe(_) => STRIPE_SIGNATURE,
            Auth::Slack(_) => SLACK_SIGNATURE,
            Auth::Bearer(_) | Auth::Basic(_) => return self.check(headers, &[]),
        };
        headers
            .contains_key(header)
            .then_some(())
            .ok_or(self.refused("the request is not signed"))
    }

    /// A refusal with this scheme's challenge.
    fn refused(&self, reason: &'static str) -> Refused {
        Refused {
            challenge: self.challenge(),
            reason,
        }
    }

    /// The `www-authenticate` challenge of a signature scheme.
    fn challenge(&self) -> String {
        let header = match self {
            Auth::Hmac(h) => h.header.as_str(),
            Auth::Stripe(_) => STRIPE_SIGNATURE,
            Auth::Slack(_) => SLACK_SIGNATURE,
            Auth::Bearer(_) => return r#"Bearer realm="fnbroker""#.into(),
            Auth::Basic(_) => return r#"Basic realm="fnbroker""#.into(),
        };
        format!(r#"Signature header="{header}""#)
    }

    /// Checks a request: its headers, and the raw body for a signature.
    pub fn check(&self, headers: &HeaderMap, body: &[u8]) -> Result<(), Refused> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        self.check_at(headers, body, now)
    }

    /// [`Auth::check`] at `now`, in seconds since the Unix epoch.
    pub fn check_at(&self, headers: &HeaderMap, body: &[u8], now: u64) -> Result<(), Refused> {
        match self {
            Auth::Stripe(s) => {
                let value = header_text(headers, STRIPE_SIGNATURE)
                    .ok_or(self.refused("the request is not signed"))?;
                let mut timestamp = None;
                let mut signatures = Vec::new();
                for item in value.split(',') {
                    match item.trim().split_once('=') {
                        Some(("t", t)) => timestamp = Some(t),
                        Some(("v1", sig)) => signatures.extend(hex::decode(sig).ok()),
                        _ => {}
                    }
                }
                let t = timestamp.ok_or(self.refused("the signature has no timestamp"))?;
                within(t, now, s)
                    .then_some(())
                    .ok_or(self.refused("the signature's timestamp is outside the tolerance"))?;
                let signed = [t.as_bytes(), b".", body];
                // Several `v1` signatures are sent while a secret is being rolled.
                let ok = signatures.iter().fold(false, |found, sig| {
                    found | verify(HmacAlgorithm::Sha256, s.secret.as_bytes(), &signed, sig)
                });
                ok.then_some(())
                    .ok_or(self.refused("the signature does not match the body"))
            }
            Auth::Slack(s) => {
                let value = header_text(headers, SLACK_SIGNATURE)
                    .ok_or(self.refused("the request is not signed"))?;
                let t = header_text(headers, SLACK_TIMESTAMP)
                    .ok_or(self.refused("the signature has no timestamp"))?;
                within(t, now, s)
                    .then_some(())
                    .ok_or(self.refused("the signature's timestamp is outside the tolerance"))?;
                let digest = value
                    .trim()
                    .strip_prefix("v0=")
                    .and_then(|hex| hex::decode(hex).ok())
                    .ok_or(self.refused("the signature is malformed"))?;
                verify(
                    HmacAlgorithm::Sha256,
                    s.secret.as_bytes(),
                    &[b"v0:", t.as_bytes(), b":", body],
                    &digest,
                )
                .then_some(())
                .ok_or(self.refused("the signature does not match the body"))
            }
            Auth::Bearer(tokens) => {
                let given = scheme_value(headers, "Bearer").ok_or(Refused {
                    challenge: r#"Bearer realm="fnbroker""#.into(),
                    reason: "a bearer token is required",
                })?;
                // Every token is compared, so that the time does not tell which one is close.
                let ok = tokens.iter().fold(false, |found, t| {
                    found | bool::from(t.as_bytes().ct_eq(given.as_bytes()))
                });
                ok.then_some(()).ok_or(Refused {
                    challenge: r#"Bearer realm="fnbroker", error="invalid_token""#.into(),
                    reason: "the bearer token is not valid",
                })
            }
            Auth::Basic(basic) => {
                let refused = self.refused("valid basic credentials are required");
                let given = scheme_value(headers, "Basic")
                    .and_then(|v| BASE64_STANDARD.decode(v).ok())
                    .ok_or(refused.clone())?;
                let expected = format!("{}:{}", basic.username, basic.password);
                bool::from(expected.as_bytes().ct_eq(&given))
                    .then_some(())
                    .ok_or(refused)
            }
            Auth::Hmac(h) => {
                let value = headers
                    .get(h.header.as_str())
                    .and_then(|v| v.to_str().ok())
                    .ok_or(self.refused("the request is not signed"))?;
                let digest = value
                    .trim()
                    .strip_prefix(h.prefix.as_str())
                    .and_then(|hex| hex::decode(hex).ok())
                    .ok_or(self.refused("the signature is malformed"))?;
                verify(h.algorithm, h.secret.as_bytes(), &[body], &digest)
                    .then_some(())
                    .ok_or(self.refused("the signature does not match the body"))
            }
        }
    }
}

/// Stripe's signature header.
const STRIPE_SIGNATURE: &str = "stripe-signature";
/// Slack's signature header.
const SLACK_SIGNATURE: &str = "x-slack-signature";
/// Slack's timestamp header.
const SLACK_TIMESTAMP: &str = "x-slack-request-timestamp";

fn header_text<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// Whether the timestamp `t` (seconds since the epoch) is within the tolerance of `now`.
fn within(t: &str, now: u64, auth: &TimedAuth) -> bool {
    t.trim()
        .parse::<u64>()
        .is_ok_and(|t| t.abs_diff(now) <= auth.tolerance.get().as_secs())
}

/// The value of `Authorization: <scheme> <value>` (the scheme case-insensitive).
fn scheme_value<'h>(headers: &'h HeaderMap, scheme: &str) -> Option<&'h str> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (given, rest) = value.split_once(' ')?;
    given.eq_ignore_ascii_case(scheme).then(|| rest.trim())
}

/// Whether `digest` is the HMAC of the concatenated `parts` under `key` (compared in constant
/// time by the crate).
fn verify(algorithm: HmacAlgorithm, key: &[u8], parts: &[&[u8]], digest: &[u8]) -> bool {
    macro_rules! check {
        ($hash:ty) => {
            match <Hmac<$hash> as Mac>::new_from_slice(key) {
                Ok(mut mac) => {
                    for part in parts {
                        mac.update(part);
                    }
                    mac.verify_slice(digest).is_ok()
                }
                Err(_) => false,
            }
        };
    }
    match algorithm {
        HmacAlgorithm::Sha256 => check!(sha2::Sha256),
        HmacAlgorithm::Sha512 => check!(sha2::Sha512),
        HmacAlgorithm::Sha1 => check!(sha1::Sha1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).expect("header"));
        }
        h
    }

    /// The example of GitHub's "Validating webhook deliveries": secret and payload from its
    /// documentation, and the signature it gives for them.
    #[test]
    fn githubs_published_example_verifies() {
        let auth = Auth::Hmac(HmacAuth {
            header: "X-Hub-Signature-256".into(),
            secret: "It's a Secret to Everybody".into(),
            prefix: "sha256=".into(),
            algorithm: HmacAlgorithm::Sha256,
        });
        let signed = headers(&[(
            "x-hub-signature-256",
            "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17",
        )]);
        assert_eq!(auth.check(&signed, b"Hello, World!"), Ok(()));
        let err = auth.check(&signed, b"Hello, World?").expect_err("tampered");
        assert_eq!(err.reason, "the signature does not match the body");
        assert_eq!(err.challenge, r#"Signature header="X-Hub-Signature-256""#);
        let err = auth
            .check(&HeaderMap::new(), b"Hello, World!")
            .expect_err("unsigned");
        assert_eq!(err.reason, "the request is not signed");
        let bad = headers(&[("x-hub-signature-256", "sha1=757107")]);
        assert_eq!(
            auth.check(&bad, b"Hello, World!").map_err(|e| e.reason),
            Err("the signature is malformed")
        );
    }

    #[test]
    fn bearer_and_basic() {
        let bearer = Auth::Bearer(vec!["old".into(), "new".into()]);
        assert!(
            bearer
                .check(&headers(&[("authorization", "Bearer new")]), b"")
                .is_ok()
        );
        assert!(
            bearer
                .check(&headers(&[("authorization", "bearer old")]), b"")
                .is_ok()
        );
        assert!(
            bearer
                .check(&headers(&[("authorization", "Bearer nope")]), b"")
                .is_err()
        );
        assert!(bearer.check(&HeaderMap::new(), b"").is_err());
        let basic = Auth::Basic(BasicAuth {
            username: "u".into(),
            password: "p:w".into(),
        });
        let good = format!("Basic {}", BASE64_STANDARD.encode("u:p:w"));
        assert!(
            basic
                .check(&headers(&[("authorization", &good)]), b"")
                .is_ok()
        );
        let bad = format!("Basic {}", BASE64_STANDARD.encode("u:pw"));
        let err = basic
            .check(&headers(&[("authorization", &bad)]), b"")
            .expect_err("wrong");
        assert_eq!(err.challenge, r#"Basic realm="fnbroker""#);
    }

    fn timed(secret: &str) -> TimedAuth {
        TimedAuth {
            secret: secret.into(),
            tolerance: default_tolerance(),
        }
    }

    /// The example of Slack's "Verifying requests from Slack": its signing secret, timestamp,
    /// slash-command body and the signature it shows for them.
    #[test]
    fn slacks_published_example_verifies_within_the_tolerance_only() {
        let auth = Auth::Slack(timed("8f742231b10e8888abcd99yyyzzz85a5"));
        let body = "token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&channel_id=G8PSS9T3V&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&command=%2Fwebhook-collect&text=&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN&trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c";
        let signed = headers(&[
            ("x-slack-request-timestamp", "1531420618"),
            (
                "x-slack-signature",
                "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503",
            ),
        ]);
        let at = 1_531_420_618;
        assert_eq!(auth.check_at(&signed, body.as_bytes(), at + 299), Ok(()));
        assert_eq!(auth.check_at(&signed, body.as_bytes(), at - 300), Ok(()));
        let replay = auth
            .check_at(&signed, body.as_bytes(), at + 301)
            .expect_err("replayed");
        assert_eq!(
            replay.reason,
            "the signature's timestamp is outside the tolerance"
        );
        let tampered = auth
            .check_at(&signed, b"token=other", at)
            .expect_err("tampered");
        assert_eq!(tampered.reason, "the signature does not match the body");
        // The timestamp is signed too: moving it breaks the signature.
        let mut moved = signed.clone();
        moved.insert(
            "x-slack-request-timestamp",
            HeaderValue::from_static("1531420619"),
        );
        assert!(auth.check_at(&moved, body.as_bytes(), at).is_err());
        assert_eq!(
            auth.precheck(&HeaderMap::new()).map_err(|e| e.reason),
            Err("the request is not signed")
        );
        assert_eq!(auth.precheck(&signed), Ok(()));
    }

    /// Stripe's documented header shape (`t=1492774577,v1=...,v0=...`, the timestamp of its
    /// example) with its test-mode secret form; the signature is HMAC-SHA-256 over `t.body`,
    /// computed for these values with Python's `hmac` module.
    #[test]
    fn stripe_signature_with_a_rolled_secret_and_a_tolerance() {
        let auth = Auth::Stripe(timed("whsec_test_secret"));
        let body = br#"{"id":"evt_test_webhook","object":"event"}"#;
        let v1 = "a0d6d5d6c5ce3b2fde4b34b04f1d7f9d8c4c7ddc0ccc6b9e0bd5fc4d6fb8b0aa";
        let good = STRIPE_EXAMPLE_V1;
        let header = format!(
            "t=1492774577,v1={v1},v1={good},v0=6ffbb59b2300aae63f272406069a9788598b792a944a07aba816edb039989a39"
        );
        let signed = headers(&[("stripe-signature", &header)]);
        let at = 1_492_774_577;
        assert_eq!(auth.check_at(&signed, body, at + 10), Ok(()));
        assert_eq!(
            auth.check_at(&signed, body, at + 301).map_err(|e| e.reason),
            Err("the signature's timestamp is outside the tolerance")
        );
        assert_eq!(
            auth.check_at(&signed, b"{}", at).map_err(|e| e.reason),
            Err("the signature does not match the body")
        );
        let only_old = headers(&[("stripe-signature", &format!("t=1492774577,v1={v1}"))]);
        assert!(auth.check_at(&only_old, body, at).is_err());
        let untimed = headers(&[("stripe-signature", &format!("v1={good}"))]);
        assert_eq!(
            auth.check_at(&untimed, body, at).map_err(|e| e.reason),
            Err("the signature has no timestamp")
        );
    }

    const STRIPE_EXAMPLE_V1: &str =
        "88a022085c6bdb887b02cb26ff76dd681234d9675c0f22844059f55552a8883a";
}
