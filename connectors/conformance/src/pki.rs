//! Certificates made at test time (rcgen): a private CA, a server certificate for `localhost` and
//! `127.0.0.1`, a client certificate, an expired server certificate, and a CA that signed none of
//! them. All PEM files in a temporary folder.
#![allow(dead_code)]

use std::path::PathBuf;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
};

/// The files of a test PKI.
pub struct Pki {
    /// The folder holding every file.
    pub dir: tempfile::TempDir,
    /// The CA that signed the server and client certificates (PEM).
    pub ca: PathBuf,
    /// The server certificate, for `localhost` and `127.0.0.1`.
    pub server_cert: PathBuf,
    /// The server certificate's key.
    pub server_key: PathBuf,
    /// A client certificate signed by the CA (common name `fnbroker test`).
    pub client_cert: PathBuf,
    /// The client certificate's key.
    pub client_key: PathBuf,
    /// A server certificate of the CA whose validity has ended.
    pub expired_cert: PathBuf,
    /// The expired certificate's key.
    pub expired_key: PathBuf,
    /// A CA that signed none of the certificates.
    pub other_ca: PathBuf,
}

impl Pki {
    /// The path of one of its files as a string, for configurations.
    pub fn s(path: &std::path::Path) -> String {
        path.display().to_string()
    }

    /// Lets brokers that drop to a user of their own (Mosquitto, RabbitMQ) read the files.
    pub fn readable_by_all(paths: &[&std::path::Path]) {
        use std::os::unix::fs::PermissionsExt;
        for path in paths {
            let dir = path.parent().expect("a folder");
            // Bits are added, never taken away (/tmp keeps its 1777).
            for (p, bits) in [(dir, 0o755), (*path, 0o644)] {
                let mut perms = std::fs::metadata(p).expect("metadata").permissions();
                perms.set_mode(perms.mode() | bits);
                std::fs::set_permissions(p, perms).expect("chmod");
            }
        }
    }

    /// The bytes of one of its files.
    pub fn read(path: &std::path::Path) -> Vec<u8> {
        std::fs::read(path).expect("read a PKI file")
    }
}

fn ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    CertifiedIssuer::self_signed(params, KeyPair::generate().expect("key")).expect("CA")
}

/// Makes a new PKI, and installs the process's TLS provider (aws-lc-rs, as fnbroker does): the
/// workspace's rustls has both providers' features (pgwire-replication asks for ring), so a TLS
/// client or server in a test must not rely on rustls picking one by itself.
pub fn pki() -> Pki {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let dir = tempfile::tempdir().expect("tempdir");
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).expect("write");
        path
    };
    let issuer = ca("fnbroker test CA");
    let leaf = |names: Vec<String>, expired: bool| {
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::new(names).expect("params");
        params
            .distinguished_name
            .push(DnType::CommonName, "fnbroker test");
        if expired {
            params.not_before = rcgen::date_time_ymd(2000, 1, 1);
            params.not_after = rcgen::date_time_ymd(2001, 1, 1);
        }
        let cert = params.signed_by(&key, &issuer).expect("sign");
        (cert.pem(), key.serialize_pem())
    };
    let names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
    let (server_cert, server_key) = leaf(names.clone(), false);
    let (client_cert, client_key) = leaf(vec!["fnbroker-client".to_string()], false);
    let (expired_cert, expired_key) = leaf(names, true);
    let other = ca("some other CA");
    Pki {
        ca: write("ca.pem", &issuer.pem()),
        server_cert: write("server.pem", &server_cert),
        server_key: write("server.key", &server_key),
        client_cert: write("client.pem", &client_cert),
        client_key: write("client.key", &client_key),
        expired_cert: write("expired.pem", &expired_cert),
        expired_key: write("expired.key", &expired_key),
        other_ca: write("other-ca.pem", &other.pem()),
        dir,
    }
}
