//! Redis Streams helpers: the machine's server on 6379, streams with unique names, entries
//! added and read back with a plain redis-rs client.

use redis::aio::MultiplexedConnection;
use redis::{AsyncCommands, Value};

/// The machine's Redis server.
pub const URL: &str = "redis://127.0.0.1:6379";

/// A connection to the machine's server; fails loudly when it is not there.
pub async fn connect() -> MultiplexedConnection {
    connect_to(URL).await
}

/// A connection to the server at `url`; fails loudly when it is not there.
pub async fn connect_to(url: &str) -> MultiplexedConnection {
    redis::Client::open(url)
        .expect("redis url")
        .get_multiplexed_async_connection()
        .await
        .unwrap_or_else(|e| panic!("Redis on {url} is needed (scripts/services.sh starts it): {e}"))
}

/// A stream key no other test uses.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

/// Adds one entry with `fields` to `stream`.
pub async fn add(conn: &mut MultiplexedConnection, stream: &str, fields: &[(&str, &[u8])]) {
    let _: String = conn.xadd(stream, "*", fields).await.expect("XADD");
}

/// Adds the plain entries `data: <i>` for every `i` of `range`, pipelined.
pub async fn add_numbers(
    conn: &mut MultiplexedConnection,
    stream: &str,
    range: std::ops::Range<usize>,
) {
    let mut pipe = redis::pipe();
    for i in range {
        pipe.cmd("XADD")
            .arg(stream)
            .arg("*")
            .arg("data")
            .arg(i.to_string())
            .ignore();
    }
    let () = pipe.query_async(conn).await.expect("XADD pipeline");
}

/// Every entry of `stream`, as its fields (field names and values as text).
pub async fn entries(conn: &mut MultiplexedConnection, stream: &str) -> Vec<Vec<(String, String)>> {
    let value: Value = redis::cmd("XRANGE")
        .arg(stream)
        .arg("-")
        .arg("+")
        .query_async(conn)
        .await
        .expect("XRANGE");
    let Value::Array(rows) = value else {
        return Vec::new();
    };
    rows.into_iter()
        .filter_map(|row| match row {
            Value::Array(mut parts) if parts.len() == 2 => match parts.pop() {
                Some(Value::Array(fields)) => Some(
                    fields
                        .chunks(2)
                        .map(|pair| (text(&pair[0]), text(&pair[1])))
                        .collect(),
                ),
                _ => None,
            },
            _ => None,
        })
        .collect()
}

fn text(v: &Value) -> String {
    match v {
        Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
        other => format!("{other:?}"),
    }
}

/// How many entries of `group` on `stream` are pending (delivered, not acknowledged).
pub async fn pending(conn: &mut MultiplexedConnection, stream: &str, group: &str) -> u64 {
    let value: Value = redis::cmd("XPENDING")
        .arg(stream)
        .arg(group)
        .query_async(conn)
        .await
        .expect("XPENDING");
    match value {
        Value::Array(parts) => match parts.first() {
            Some(Value::Int(n)) => u64::try_from(*n).unwrap_or(0),
            _ => 0,
        },
        _ => 0,
    }
}

/// Waits (up to 10 s) until `group` has nothing pending on `stream`: every entry acknowledged.
/// `logs` go into the failure.
pub async fn wait_settled(conn: &mut MultiplexedConnection, stream: &str, group: &str, logs: &str) {
    let mut left = u64::MAX;
    for _ in 0..200 {
        left = pending(conn, stream, group).await;
        if left == 0 {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("{left} entries of `{stream}` still pending for `{group}`:\n{logs}");
}

/// Deletes the streams `keys` (a test's own cleanup).
pub async fn delete(conn: &mut MultiplexedConnection, keys: &[&str]) {
    let _: i64 = conn.del(keys).await.unwrap_or(0);
}

/// A redis-server of the test's own (append-only file, fsync on every write), killed on drop.
pub struct RedisServer {
    /// The port it listens on.
    pub port: u16,
    dir: tempfile::TempDir,
    process: Option<crate::ServerProcess>,
}

impl RedisServer {
    /// Starts it on a free port (append-only file on) and waits until it listens.
    pub async fn start() -> Self {
        let mut me = Self {
            port: crate::free_port(),
            dir: tempfile::tempdir().expect("tempdir"),
            process: None,
        };
        me.run().await;
        me
    }

    /// Its URL (`redis://127.0.0.1:<port>`).
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    async fn run(&mut self) {
        let mut cmd = std::process::Command::new("redis-server");
        cmd.args(["--bind", "127.0.0.1", "--port", &self.port.to_string()])
            .args([
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
            ])
            .arg("--dir")
            .arg(self.dir.path());
        self.process = Some(crate::ServerProcess::spawn("redis-server", cmd, self.port).await);
    }

    /// Stops it (SIGTERM: it writes its append-only file) and starts it again on the same port
    /// and data.
    pub async fn restart(&mut self) {
        if let Some(p) = self.process.as_mut() {
            p.terminate();
        }
        self.run().await;
    }
}
