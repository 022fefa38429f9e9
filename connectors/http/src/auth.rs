//! Who may post to the ingress: bearer tokens, basic credentials, or a signature of the body
//! (signed webhooks: GitHub's `X-Hub-Signature-256: sha256=<hex>`, and every sender that signs
//! the raw body with an HMAC the same way). Every comparison takes constant time.

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
        matches!(self, Auth::Hmac(_))
    }

    /// Checks a request: its headers, and the raw body for a signature.
    pub fn check(&self, headers: &HeaderMap, body: &[u8]) -> Result<(), Refused> {
        match self {
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
                let refused = Refused {
                    challenge: r#"Basic realm="fnbroker""#.into(),
                    reason: "valid basic credentials are required",
                };
                let given = scheme_value(headers, "Basic")
                    .and_then(|v| BASE64_STANDARD.decode(v).ok())
                    .ok_or(refused.clone())?;
                let expected = format!("{}:{}", basic.username, basic.password);
                bool::from(expected.as_bytes().ct_eq(&given))
                    .then_some(())
                    .ok_or(refused)
            }
            Auth::Hmac(h) => {
                let refused = |reason| Refused {
                    challenge: format!(r#"Signature header="{}""#, h.header),
                    reason,
                };
                let value = headers
                    .get(h.header.as_str())
                    .and_then(|v| v.to_str().ok())
                    .ok_or(refused("the request is not signed"))?;
                let digest = value
                    .trim()
                    .strip_prefix(h.prefix.as_str())
                    .and_then(|hex| hex::decode(hex).ok())
                    .ok_or(refused("the signature is malformed"))?;
                verify(h.algorithm, h.secret.as_bytes(), body, &digest)
                    .then_some(())
                    .ok_or(refused("the signature does not match the body"))
            }
        }
    }
}

/// The value of `Authorization: <scheme> <value>` (the scheme case-insensitive).
fn scheme_value<'h>(headers: &'h HeaderMap, scheme: &str) -> Option<&'h str> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (given, rest) = value.split_once(' ')?;
    given.eq_ignore_ascii_case(scheme).then(|| rest.trim())
}

/// Whether `digest` is the HMAC of `body` under `key` (compared in constant time by the crate).
fn verify(algorithm: HmacAlgorithm, key: &[u8], body: &[u8], digest: &[u8]) -> bool {
    macro_rules! check {
        ($hash:ty) => {
            match <Hmac<$hash> as Mac>::new_from_slice(key) {
                Ok(mut mac) => {
                    mac.update(body);
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
}
