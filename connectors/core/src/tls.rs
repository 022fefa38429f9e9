//! The one `tls:` block of every connection fnbroker makes or serves, and the rustls
//! configurations built from it (one crypto provider, aws-lc-rs, for everything rustls-based).
//!
//! A client (`Tls`): `ca` (PEM roots; default: the system's), `cert` + `key` (a client
//! certificate, for mTLS), `server_name` (the name verified when it is not the host of the
//! URL), `insecure_skip_verify` (development only: warned about at start). A listener
//! (`ServerTls`): its own `cert` + `key`, and `client_ca` to require client certificates signed by
//! it. Files are read and parsed when the configuration loads, so a missing or malformed one is an
//! error at its key, not at the first connection.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};
use schemars::JsonSchema;
use serde::Deserialize;

/// TLS for a connection fnbroker makes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Tls {
    /// A PEM file of the certificate authorities to trust. Default: the system's roots.
    #[serde(default)]
    pub ca: Option<String>,
    /// A PEM file with the client certificate (and its chain), for servers that require one.
    #[serde(default)]
    pub cert: Option<String>,
    /// A PEM file with the client certificate's private key.
    #[serde(default)]
    pub key: Option<String>,
    /// The name to verify the server's certificate against when it is not the host in the URL
    /// (a URL with an IP address, say). HTTP functions also send it as SNI; the brokers' clients
    /// send the URL's host.
    #[serde(default)]
    pub server_name: Option<String>,
    /// Accept any server certificate. For development only: warned about at start.
    #[serde(default)]
    pub insecure_skip_verify: bool,
}

/// TLS for a socket fnbroker serves.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ServerTls {
    /// A PEM file with the server's certificate (and its chain).
    pub cert: String,
    /// A PEM file with the server certificate's private key.
    pub key: String,
    /// A PEM file of the authorities whose client certificates are accepted. With it, every
    /// client must present one (mutual TLS).
    #[serde(default)]
    pub client_ca: Option<String>,
}

/// Why a TLS configuration cannot be built: the key it is about, and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{key}`: {message}")]
pub struct TlsError {
    /// The key of the `tls` block (`ca`, `cert`, `key`, `client_ca`, `server_name`).
    pub key: &'static str,
    /// What is wrong.
    pub message: String,
}

fn error(key: &'static str, message: impl Into<String>) -> TlsError {
    TlsError {
        key,
        message: message.into(),
    }
}

/// The certificates of a PEM file (at least one).
fn certificates(key: &'static str, path: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| error(key, format!("cannot read certificates from `{path}`: {e}")))?;
    if certs.is_empty() {
        return Err(error(key, format!("`{path}` holds no PEM certificate")));
    }
    Ok(certs)
}

/// The private key of a PEM file.
fn private_key(path: &str) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| {
        error(
            "key",
            format!("cannot read a private key from `{path}`: {e}"),
        )
    })
}

/// A root store of the certificates in `path`.
fn roots(key: &'static str, path: &str) -> Result<RootCertStore, TlsError> {
    let mut store = RootCertStore::empty();
    for cert in certificates(key, path)? {
        store
            .add(cert)
            .map_err(|e| error(key, format!("`{path}`: not a CA certificate: {e}")))?;
    }
    Ok(store)
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

impl Tls {
    /// Reads and checks every file the block names: what `validate` reports, by key.
    pub fn check(&self) -> Result<(), TlsError> {
        self.client_config().map(|_| ())
    }

    /// The rustls client configuration: the roots (`ca` or the system's), the client
    /// certificate when given, or no verification with `insecure_skip_verify`.
    pub fn client_config(&self) -> Result<ClientConfig, TlsError> {
        if let Some(name) = &self.server_name
            && ServerName::try_from(name.as_str()).is_err()
        {
            return Err(error(
                "server_name",
                format!("`{name}` is not a DNS name or an IP address"),
            ));
        }
        let provider = provider();
        let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(|e| error("ca", e.to_string()))?;
        let builder = if self.insecure_skip_verify {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(Verifier {
                    provider,
                    check: Check::Any,
                }))
        } else {
            let store = match &self.ca {
                Some(path) => roots("ca", path)?,
                None => system_roots(),
            };
            match self.server_name() {
                Some(name) => {
                    let webpki = rustls::client::WebPkiServerVerifier::builder_with_provider(
                        Arc::new(store),
                        Arc::clone(&provider),
                    )
                    .build()
                    .map_err(|e| error("ca", e.to_string()))?;
                    builder
                        .dangerous()
                        .with_custom_certificate_verifier(Arc::new(Verifier {
                            provider,
                            check: Check::As { name, webpki },
                        }))
                }
                None => builder.with_root_certificates(store),
            }
        };
        match (&self.cert, &self.key) {
            (Some(cert), Some(key)) => builder
                .with_client_auth_cert(certificates("cert", cert)?, private_key(key)?)
                .map_err(|e| error("key", format!("the key does not fit the certificate: {e}"))),
            (None, None) => Ok(builder.with_no_client_auth()),
            (Some(_), None) => Err(error("key", "`cert` needs its `key`")),
            (None, Some(_)) => Err(error("cert", "`key` needs its `cert`")),
        }
    }

    /// The server name to verify, when it is set.
    pub fn server_name(&self) -> Option<ServerName<'static>> {
        self.server_name
            .as_deref()
            .and_then(|n| ServerName::try_from(n.to_string()).ok())
    }

    /// Warns (once, at start) that `insecure_skip_verify` is set for the connection of `owner`
    /// (a connector or a function).
    pub fn warn_if_insecure(&self, kind: &str, owner: &str) {
        if self.insecure_skip_verify {
            tracing::warn!(
                "{kind} `{owner}`: tls.insecure_skip_verify: the server's certificate is not verified; for development only"
            );
        }
    }
}

impl ServerTls {
    /// Reads and checks every file the block names.
    pub fn check(&self) -> Result<(), TlsError> {
        self.server_config().map(|_| ())
    }

    /// The rustls server configuration, requiring client certificates when `client_ca` is set.
    /// HTTP/1.1 is offered by ALPN.
    pub fn server_config(&self) -> Result<ServerConfig, TlsError> {
        let provider = provider();
        let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(|e| error("cert", e.to_string()))?;
        let builder = match &self.client_ca {
            Some(path) => {
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots("client_ca", path)?),
                    provider,
                )
                .build()
                .map_err(|e| error("client_ca", e.to_string()))?;
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let mut config = builder
            .with_single_cert(certificates("cert", &self.cert)?, private_key(&self.key)?)
            .map_err(|e| error("key", format!("the key does not fit the certificate: {e}")))?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(config)
    }
}

/// The system's trusted roots (those that load; none when the system has none).
fn system_roots() -> RootCertStore {
    let mut store = RootCertStore::empty();
    let loaded = rustls_native_certs::load_native_certs();
    for cert in loaded.certs {
        let _ = store.add(cert);
    }
    store
}

/// A server-certificate check other than rustls' default; handshake signatures are checked with
/// the provider's algorithms either way.
#[derive(Debug)]
struct Verifier {
    provider: Arc<rustls::crypto::CryptoProvider>,
    check: Check,
}

#[derive(Debug)]
enum Check {
    /// `server_name`: the certificate is verified (chain, validity, name) against the configured
    /// name instead of the host the client connected to (an IP address, say). Clients that cannot
    /// set the name they verify (rumqttc, lapin, async-nats take it from the URL) get it this way.
    As {
        name: ServerName<'static>,
        webpki: Arc<rustls::client::WebPkiServerVerifier>,
    },
    /// `insecure_skip_verify`: every certificate is taken.
    Any,
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match &self.check {
            Check::As { name, webpki } => {
                webpki.verify_server_cert(end_entity, intermediates, name, ocsp, now)
            }
            Check::Any => Ok(ServerCertVerified::assertion()),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_and_mismatched_files_are_errors_at_their_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = rcgen::generate_simple_self_signed(vec!["localhost".into()]).expect("cert");
        let other = rcgen::generate_simple_self_signed(vec!["other".into()]).expect("cert");
        let write = |name: &str, text: String| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).expect("write");
            path.display().to_string()
        };
        let cert = write("cert.pem", ca.cert.pem());
        let key = write("key.pem", ca.signing_key.serialize_pem());
        let other_key = write("other.key", other.signing_key.serialize_pem());
        let empty = write("empty.pem", String::new());

        let ok = Tls {
            ca: Some(cert.clone()),
            cert: Some(cert.clone()),
            key: Some(key.clone()),
            ..Tls::default()
        };
        assert_eq!(ok.check(), Ok(()));
        assert_eq!(
            Tls::default().check(),
            Ok(()),
            "system roots, no client certificate"
        );
        let missing = Tls {
            ca: Some(format!("{}/nope.pem", dir.path().display())),
            ..Tls::default()
        };
        assert_eq!(missing.check().map_err(|e| e.key), Err("ca"));
        let no_certs = Tls {
            ca: Some(empty),
            ..Tls::default()
        };
        let e = no_certs.check().expect_err("empty");
        assert!(e.message.contains("holds no PEM certificate"), "{e}");
        let half = Tls {
            cert: Some(cert.clone()),
            ..Tls::default()
        };
        assert_eq!(half.check().map_err(|e| e.key), Err("key"));
        let mismatched = ServerTls {
            cert: cert.clone(),
            key: other_key,
            client_ca: None,
        };
        let e = mismatched.check().expect_err("mismatch");
        assert_eq!(e.key, "key");
        assert!(e.message.contains("does not fit"), "{e}");
        let server = ServerTls {
            cert: cert.clone(),
            key,
            client_ca: Some(cert),
        };
        assert_eq!(server.check(), Ok(()));
    }
}
