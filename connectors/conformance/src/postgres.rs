//! A PostgreSQL cluster of a test's own, with `wal_level = logical` (the machine's server on
//! 5432 runs with `replica`): Debian's `initdb` and `pg_ctl` in a temporary directory, on a free
//! port, trust authentication on 127.0.0.1, stopped when dropped.

use std::path::PathBuf;
use std::process::Command;

/// The directory of the PostgreSQL server programs (the newest installed).
fn bin_dir() -> PathBuf {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL's server programs in /usr/lib/postgresql (Debian's postgresql package)")
        .filter_map(|e| Some(e.ok()?.path().join("bin")))
        .filter(|p| p.join("initdb").exists())
        .collect();
    versions.sort();
    versions
        .pop()
        .expect("initdb in /usr/lib/postgresql/<version>/bin")
}

/// Runs a server program as the `postgres` user when this is root (the server refuses root).
fn run(program: &str, args: &[&str]) {
    let path = bin_dir().join(program);
    let is_root = std::env::var("USER").is_ok_and(|u| u == "root")
        || Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| o.stdout.trim_ascii() == b"0");
    let mut cmd = if is_root {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(&path);
        c
    } else {
        Command::new(&path)
    };
    let out = cmd
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A running cluster.
pub struct Cluster {
    dir: tempfile::TempDir,
    /// The port it listens on.
    pub port: u16,
}

impl Cluster {
    /// Makes and starts a cluster (`initdb` without fsync: a second or two).
    pub fn start() -> Self {
        Self::start_with(None)
    }

    /// A cluster that accepts TLS connections only, with `pki`'s server certificate.
    pub fn start_tls(pki: &crate::pki::Pki) -> Self {
        Self::start_with(Some(pki))
    }

    fn start_with(pki: Option<&crate::pki::Pki>) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let chown = Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(dir.path())
            .status();
        assert!(
            chown.is_ok_and(|s| s.success()),
            "chown the cluster's directory"
        );
        let data = dir.path().join("data");
        let data = data.to_str().expect("utf-8 path");
        run(
            "initdb",
            &[
                "-D",
                data,
                "-A",
                "trust",
                "-U",
                "postgres",
                "--no-sync",
                "-E",
                "UTF8",
            ],
        );
        let port = crate::free_port();
        let socket = dir.path().to_str().expect("utf-8 path");
        let mut options = format!(
            "-c port={port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={socket} -c wal_level=logical -c max_replication_slots=10 -c max_wal_senders=10 -c fsync=off -c synchronous_commit=off"
        );
        if let Some(pki) = pki {
            // The server reads its key only when the postgres user owns it, mode 0600.
            for (from, to) in [
                (&pki.server_cert, "server.crt"),
                (&pki.server_key, "server.key"),
            ] {
                let to = std::path::Path::new(data).join(to);
                std::fs::copy(from, &to).expect("copy the server's certificate");
                let owned = Command::new("chown")
                    .arg("postgres:postgres")
                    .arg(&to)
                    .status();
                assert!(owned.is_ok_and(|s| s.success()));
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o600))
                    .expect("chmod");
            }
            std::fs::write(
                std::path::Path::new(data).join("pg_hba.conf"),
                "local all all trust\nhostssl all all 127.0.0.1/32 trust\nhostssl replication all 127.0.0.1/32 trust\n",
            )
            .expect("pg_hba.conf");
            options.push_str(" -c ssl=on -c ssl_cert_file=server.crt -c ssl_key_file=server.key");
        }
        let log = dir.path().join("server.log");
        run(
            "pg_ctl",
            &[
                "-D",
                data,
                "-l",
                log.to_str().expect("utf-8 path"),
                "-o",
                &options,
                "-w",
                "start",
            ],
        );
        Self { dir, port }
    }

    /// The URL of its `postgres` database as the superuser.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// A SQL session, through the Unix socket (so also to a cluster that takes TLS only on TCP).
    pub async fn client(&self) -> tokio_postgres::Client {
        let socket = format!(
            "host={} port={} user=postgres dbname=postgres",
            self.dir.path().display(),
            self.port
        );
        connect(&socket).await
    }
}

impl Cluster {
    /// Stops it (fast: sessions are ended, the replication slots' positions kept) and starts it
    /// again on the same port and data.
    pub fn restart(&self) {
        let data = self.dir.path().join("data");
        let log = self.dir.path().join("server.log");
        run(
            "pg_ctl",
            &[
                "-D",
                data.to_str().expect("utf-8 path"),
                "-l",
                log.to_str().expect("utf-8 path"),
                "-m",
                "fast",
                "-w",
                "restart",
            ],
        );
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let data = self.dir.path().join("data");
        if let Some(data) = data.to_str() {
            run("pg_ctl", &["-D", data, "-m", "immediate", "-w", "stop"]);
        }
    }
}

/// A SQL session to `url`; fails loudly when the server is not there.
pub async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL at {url}: {e}"));
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
}
