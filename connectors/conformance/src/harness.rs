use std::collections::{HashMap, HashSet};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};

/// A server process of a test's own (a broker restarted by the test): stopped with SIGTERM when
/// the test restarts it, so that it writes what it keeps, and killed when dropped.
pub struct ServerProcess(Option<Child>);

impl ServerProcess {
    /// Spawns `cmd` and waits until something listens on `port` of 127.0.0.1.
    pub async fn spawn(what: &str, mut cmd: Command, port: u16) -> Self {
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start {what} (scripts/services.sh installs it): {e}")
            });
        wait_for(
            &format!("{what} to listen on {port}"),
            Duration::from_secs(30),
            || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok(),
        )
        .await;
        Self(Some(child))
    }

    /// Stops it with SIGTERM and waits for it to exit.
    pub fn terminate(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string())
                .status();
            let _ = child.wait();
        }
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Polls `cond` every 20 ms until it holds, failing the test after `timeout`.
pub async fn wait_for(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits for a WARN line naming `connector` (it cannot connect), then checks that `/readyz`
/// does not say ready. Returns that warning.
pub async fn not_ready_with_a_warning(fb: &Fnbroker, connector: &str) -> String {
    let tag = format!("connector={connector}");
    let warning = || {
        fb.logs()
            .lines()
            .find(|l| l.contains("WARN") && l.contains(&tag))
            .map(str::to_string)
    };
    wait_for(
        &format!("a warning naming connector {connector}"),
        Duration::from_secs(20),
        || warning().is_some(),
    )
    .await;
    let ready = reqwest::get(format!("http://127.0.0.1:{}/readyz", fb.admin))
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0);
    assert_ne!(
        ready, 200,
        "ready although connector {connector} cannot connect"
    );
    warning().unwrap_or_default()
}

/// A TLS front for a server that does not speak TLS itself (tansu 0.6 accepts `--cert` and
/// `--key` but serves plain TCP): TLS on 127.0.0.1:`port` with `tls` (client certificates
/// required when it has a `client_ca`), the plain bytes forwarded to 127.0.0.1:`upstream`.
/// Stops when the returned task is aborted.
pub async fn tls_front(
    port: u16,
    upstream: u16,
    tls: fnbroker_core::tls::ServerTls,
) -> tokio::task::JoinHandle<()> {
    let acceptor =
        tokio_rustls::TlsAcceptor::from(Arc::new(tls.server_config().expect("tls front")));
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .expect("bind the TLS front");
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let Ok(mut plain) = tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await
                else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
            });
        }
    })
}

/// The resident set size of a process in KiB (`VmRSS` of /proc/PID/status).
pub fn rss_kib(pid: u32) -> u64 {
    status_kib(pid, "VmRSS:")
}

/// The peak resident set size of a process in KiB (`VmHWM` of /proc/PID/status).
pub fn peak_rss_kib(pid: u32) -> u64 {
    status_kib(pid, "VmHWM:")
}

fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// A temporary folder with `yaml` plus an `admin` section on a free port as `fnbroker.yaml`.
fn write_config(yaml: &str) -> (tempfile::TempDir, PathBuf, u16) {
    let dir = tempfile::tempdir().expect("tempdir");
    let admin = free_port();
    let config = dir.path().join("fnbroker.yaml");
    // A configuration with its own `admin` section names the port `ADMIN_PORT`.
    let text = if yaml.contains("ADMIN_PORT") {
        yaml.replace("ADMIN_PORT", &admin.to_string())
    } else {
        crate::yaml!(
            "<yaml>\nadmin: { listen: 127.0.0.1:<admin> }\n",
            yaml = yaml,
            admin = admin
        )
    };
    std::fs::write(&config, text).expect("write config");
    (dir, config, admin)
}

/// The `fnbroker` binary that cargo built for these tests.
pub fn binary() -> &'static str {
    static BINARY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    BINARY.get_or_init(|| {
        if let Ok(path) = std::env::var("FNBROKER_BIN") {
            return path;
        }
        // A test executable is `<target>/<profile>/deps/<name>-<hash>`; the binary that the same
        // `cargo build`/`cargo nextest run --workspace` built is `<target>/<profile>/fnbroker`.
        let exe = std::env::current_exe().expect("the test executable's path");
        let profile = exe
            .parent()
            .and_then(Path::parent)
            .expect("a test executable under <target>/<profile>/deps");
        let path = profile.join("fnbroker");
        assert!(
            path.exists(),
            "no fnbroker binary at {}: build it (`cargo build -p fnbroker`, which \
             `cargo nextest run --workspace` does) or point FNBROKER_BIN at one",
            path.display()
        );
        path.to_string_lossy().into_owned()
    })
}

/// A running `fnbroker run` process with its own configuration file and admin port.
pub struct Fnbroker {
    child: Child,
    /// The temporary folder holding the configuration and the log.
    pub dir: tempfile::TempDir,
    /// The admin port (`/healthz`, `/readyz`, `/metrics`).
    pub admin: u16,
    log: PathBuf,
}

impl Fnbroker {
    /// Writes `yaml` plus an `admin` section on a free port, starts the binary, and waits until
    /// `/readyz` answers 200.
    pub async fn start(yaml: &str) -> Self {
        Self::start_env(yaml, &[]).await
    }

    /// Like [`Fnbroker::start`], with extra environment variables.
    pub async fn start_env(yaml: &str, env: &[(&str, &str)]) -> Self {
        let (dir, config, admin) = write_config(yaml);
        let mut me = Self::spawn_env(dir, &config, admin, env);
        me.wait_ready().await;
        me
    }

    /// Writes `yaml` plus an `admin` section on a free port and starts the binary, without
    /// waiting for it to be ready.
    pub fn spawn(yaml: &str) -> Self {
        let (dir, config, admin) = write_config(yaml);
        Self::spawn_with(dir, &config, admin)
    }

    /// Replaces the configuration file as editors and Kubernetes do: a new file renamed over
    /// it (with this instance's `admin` section).
    pub fn rewrite(&self, yaml: &str) {
        let path = self.dir.path().join("fnbroker.yaml");
        let next = self.dir.path().join(".fnbroker.yaml.new");
        let text = crate::yaml!(
            "<yaml>\nadmin: { listen: 127.0.0.1:<admin> }\n",
            yaml = yaml,
            admin = self.admin
        );
        std::fs::write(&next, text).expect("write config");
        std::fs::rename(&next, &path).expect("rename config");
    }

    /// `/v1/config`.
    pub async fn config_view(&self) -> serde_json::Value {
        reqwest::get(format!("http://127.0.0.1:{}/v1/config", self.admin))
            .await
            .expect("/v1/config")
            .text()
            .await
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .expect("/v1/config JSON")
    }

    /// Waits until `/v1/config` has counted `ok` applied and `failed` refused reloads.
    pub async fn wait_reloads(&self, ok: u64, failed: u64) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let view = self.config_view().await;
            if view["reloads"]["succeeded"] == ok && view["reloads"]["failed"] == failed {
                return view;
            }
            assert!(
                Instant::now() < deadline,
                "expected {ok} applied and {failed} refused reloads, /v1/config says {view}\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until the log contains `text`, failing after `timeout`.
    pub async fn wait_log(&self, text: &str, timeout: Duration) {
        wait_for(&format!("`{text}` in the log"), timeout, || {
            self.logs().contains(text)
        })
        .await;
    }

    /// Starts the binary on an existing configuration file.
    pub fn spawn_with(dir: tempfile::TempDir, config: &Path, admin: u16) -> Self {
        Self::spawn_env(dir, config, admin, &[])
    }

    fn spawn_env(dir: tempfile::TempDir, config: &Path, admin: u16, env: &[(&str, &str)]) -> Self {
        Self::spawn_program(Path::new(binary()), dir, config, admin, env)
    }

    /// Starts `program` (another build of fnbroker: the static release binary) on an existing
    /// configuration file.
    pub fn spawn_program(
        program: &Path,
        dir: tempfile::TempDir,
        config: &Path,
        admin: u16,
        env: &[(&str, &str)],
    ) -> Self {
        let log = dir.path().join("fnbroker.log");
        let log_file = std::fs::File::create(&log).expect("log file");
        let child = Command::new(program)
            .args(["run", "-c"])
            .arg(config)
            .env("RUST_LOG", "info,fnbroker=debug")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .expect("start fnbroker");
        Self {
            child,
            dir,
            admin,
            log,
        }
    }

    /// Waits until `/readyz` answers `200`, panicking with the log after 60 s.
    pub async fn wait_ready(&mut self) {
        let url = format!("http://127.0.0.1:{}/readyz", self.admin);
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("fnbroker exited early ({status}):\n{}", self.logs());
            }
            if let Ok(r) = client.get(&url).send().await
                && r.status() == 200
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "fnbroker not ready:\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What the process logged so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends a signal (by name, e.g. `TERM`, `KILL`).
    pub fn signal(&self, name: &str) {
        let ok = Command::new("kill")
            .args([format!("-{name}"), self.child.id().to_string()])
            .status()
            .expect("kill")
            .success();
        assert!(ok, "kill -{name} failed");
    }

    /// Waits for the process to exit, failing after `timeout`.
    pub async fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "fnbroker did not exit:\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The `/metrics` text.
    pub async fn metrics(&self) -> String {
        reqwest::get(format!("http://127.0.0.1:{}/metrics", self.admin))
            .await
            .expect("metrics")
            .text()
            .await
            .expect("metrics body")
    }
}

impl Drop for Fnbroker {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "---- fnbroker (pid {}) logs ----\n{}",
                self.child.id(),
                self.logs()
            );
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// SIGTERM while `n` messages stream through `cfg` (function `/f` of `server`), once about a
/// quarter arrived; then start again. Every message must reach the function exactly once: the
/// deliveries in flight finish, their acknowledgements reach the broker before the connection
/// closes, and what was fetched but never handed out goes back unseen. Messages are told apart
/// by their body.
pub async fn sigterm_midway_exactly_once(what: &str, server: &FnServer, cfg: &str, n: usize) {
    let mut fb = Fnbroker::start(cfg).await;
    server
        .wait_count("/f", n / 4, Duration::from_secs(60))
        .await;
    fb.signal("TERM");
    let status = fb.wait_exit(Duration::from_secs(40)).await;
    assert!(status.success(), "{what}: exit {status}:\n{}", fb.logs());
    let first_logs = fb.logs();
    drop(fb);
    let before = server.count("/f");

    let fb = Fnbroker::start(cfg).await;
    let unique = || -> std::collections::HashSet<Vec<u8>> {
        server.on("/f").iter().map(|r| r.body.to_vec()).collect()
    };
    wait_for(
        &format!("{what}: every message after the restart"),
        Duration::from_secs(120),
        || unique().len() >= n,
    )
    .await;
    // Late duplicates would come soon after: wait until the function was idle for a second.
    let mut last = server.count("/f");
    let mut idle_since = Instant::now();
    while idle_since.elapsed() < Duration::from_secs(1) {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = server.count("/f");
        if now != last {
            last = now;
            idle_since = Instant::now();
        }
    }
    let total = server.count("/f");
    println!(
        "{what} SIGTERM test: stopped after {before} deliveries; {n} messages, {total} deliveries, {} duplicates",
        total - n
    );
    assert_eq!(unique().len(), n, "{what}: messages lost");
    let all = server.on("/f");
    let mut seen: HashMap<Vec<u8>, Vec<usize>> = HashMap::new();
    for (i, r) in all.iter().enumerate() {
        seen.entry(r.body.to_vec()).or_default().push(i);
    }
    let duplicated: Vec<String> = seen
        .iter()
        .filter(|(_, at)| at.len() > 1)
        .map(|(body, at)| format!("{} at requests {at:?}", String::from_utf8_lossy(body)))
        .collect();
    assert_eq!(
        total,
        n,
        "{what}: {} duplicates after a clean stop ({duplicated:?}; the first run made {before} requests)\n---- first run ----\n{first_logs}\n---- second run ----\n{}",
        total - n,
        fb.logs()
    );
}

/// kill -9 once `kill_from` plus a random share of the first half of `n` messages reached the
/// function `/f` of `server` through `cfg`; start again: every message (told apart by its body)
/// must arrive (at-least-once). Returns the deliveries before the kill and in all.
pub async fn kill_9_midway_loses_nothing(
    what: &str,
    server: &FnServer,
    cfg: &str,
    n: usize,
    kill_from: usize,
) -> (usize, usize) {
    let fb = Fnbroker::start(cfg).await;
    let kill_at = kill_from + rand::random_range(0..(n / 2));
    server
        .wait_count("/f", kill_at, Duration::from_secs(60))
        .await;
    fb.signal("KILL");
    drop(fb);
    let before = server.count("/f");
    let fb = Fnbroker::start(cfg).await;
    let seen = || -> HashSet<Vec<u8>> { server.on("/f").iter().map(|r| r.body.to_vec()).collect() };
    wait_for(
        &format!("{what}: every message after the restart"),
        Duration::from_secs(120),
        || seen().len() >= n,
    )
    .await;
    let total = server.count("/f");
    println!(
        "{what} kill test: killed after {before}; {n} messages, {total} deliveries, {} duplicates",
        total - n
    );
    drop(fb);
    (before, total)
}

/// A function server at `/f` that answers 503 while `down` is set, and 200 otherwise.
pub async fn switchable_function() -> (FnServer, Arc<std::sync::atomic::AtomicBool>) {
    let down = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = Arc::clone(&down);
    let server = FnServer::with(move |_, _| {
        if flag.load(Ordering::SeqCst) {
            Answer::status(503)
        } else {
            Answer::ok()
        }
    })
    .await;
    (server, down)
}

/// `n` messages published at 200/s by `publish(chunk)` (20 every 100
/// ms), the function down (503) for `outage` from the 100th delivery on, default delivery
/// settings and no dead letter: every message must reach the function once it is back.
pub async fn outage_loses_nothing<F, Fut>(
    what: &str,
    cfg: &str,
    server: &FnServer,
    down: &std::sync::atomic::AtomicBool,
    n: usize,
    outage: Duration,
    publish: F,
) where
    F: Fn(std::ops::Range<usize>) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let fb = Fnbroker::start(cfg).await;
    let publishing = tokio::spawn(async move {
        for start in (0..n).step_by(20) {
            publish(start..(start + 20).min(n)).await;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    server.wait_count("/f", 100, Duration::from_secs(60)).await;
    down.store(true, Ordering::SeqCst);
    tokio::time::sleep(outage).await;
    down.store(false, Ordering::SeqCst);
    publishing.await.expect("publisher");
    let delivered = || -> std::collections::HashSet<Vec<u8>> {
        server
            .on("/f")
            .iter()
            .filter(|r| r.status == 200)
            .map(|r| r.body.to_vec())
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while delivered().len() < n && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let metrics = fb.metrics().await;
    println!(
        "{what} outage of {outage:?}: {n} messages, {} reached the function, {} requests",
        delivered().len(),
        server.count("/f")
    );
    assert_eq!(
        delivered().len(),
        n,
        "{what}: messages lost in an outage of {outage:?}\n{metrics}\n{}",
        fb.logs()
    );
    assert!(
        !metrics.contains("fnbroker_events_dropped_total{trigger=\"t\",function=\"f\"} 1"),
        "{metrics}"
    );
}

/// One request the function server received.
#[derive(Debug, Clone)]
pub struct Received {
    /// The status the server answered with.
    pub status: u16,
    /// The request's path.
    pub path: String,
    /// The request's headers.
    pub headers: HeaderMap,
    /// The request's body.
    pub body: Bytes,
    /// When it arrived.
    pub at: Instant,
}

impl Received {
    /// A header's value as text, if it is there.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// How the function server answers one request.
#[derive(Debug, Clone)]
pub struct Answer {
    /// The status code.
    pub status: u16,
    /// Headers of the answer.
    pub headers: Vec<(String, String)>,
    /// The answer's body.
    pub body: Vec<u8>,
    /// How long to wait before answering.
    pub delay: Duration,
}

impl Answer {
    /// An answer with `status` and no body.
    pub fn status(status: u16) -> Self {
        Self {
            status,
            headers: Vec::new(),
            body: Vec::new(),
            delay: Duration::ZERO,
        }
    }
    /// `200` with no body.
    pub fn ok() -> Self {
        Self::status(200)
    }
    /// With a body of `content_type`.
    pub fn body(mut self, content_type: &str, body: &[u8]) -> Self {
        self.headers
            .push(("content-type".into(), content_type.into()));
        self.body = body.to_vec();
        self
    }
    /// With one more header.
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }
    /// Answered after `d`.
    pub fn delay(mut self, d: Duration) -> Self {
        self.delay = d;
        self
    }
}

/// Decides the answer from the path and how many requests that path had before this one.
/// How the server answers: by path, body, and the request's number on that path (0-based).
pub type Behaviour = Arc<dyn Fn(&str, &[u8], usize) -> Answer + Send + Sync>;

#[derive(Clone)]
struct ServerState {
    received: Arc<Mutex<Vec<Received>>>,
    counts: Arc<Mutex<HashMap<String, usize>>>,
    behaviour: Behaviour,
    current: Arc<AtomicUsize>,
    peak: Arc<AtomicUsize>,
}

/// A real HTTP function server on a free port.
pub struct FnServer {
    /// Where it listens (127.0.0.1 and a free port).
    pub addr: SocketAddr,
    received: Arc<Mutex<Vec<Received>>>,
    /// The most requests it has held at once.
    pub peak: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl FnServer {
    /// A server that answers `200` with no body.
    pub async fn start() -> Self {
        Self::with(|_, _| Answer::ok()).await
    }

    /// A server whose answer to the `n`th request (counted from 1 across paths) on a path is `behaviour(path, n)`.
    pub async fn with(behaviour: impl Fn(&str, usize) -> Answer + Send + Sync + 'static) -> Self {
        Self::with_body(move |path, _, n| behaviour(path, n)).await
    }

    /// A server whose answer also depends on the request's body.
    pub async fn with_body(
        behaviour: impl Fn(&str, &[u8], usize) -> Answer + Send + Sync + 'static,
    ) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let state = ServerState {
            received: Arc::default(),
            counts: Arc::default(),
            behaviour: Arc::new(behaviour),
            current: Arc::default(),
            peak: Arc::default(),
        };
        let received = Arc::clone(&state.received);
        let peak = Arc::clone(&state.peak);
        let app = axum::Router::new().fallback(record).with_state(state);
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self {
            addr,
            received,
            peak,
            task,
        }
    }

    /// The URL of `path` on this server.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Everything received on `path`, in arrival order.
    pub fn on(&self, path: &str) -> Vec<Received> {
        self.received
            .lock()
            .expect("lock")
            .iter()
            .filter(|r| r.path == path)
            .cloned()
            .collect()
    }

    /// How many requests `path` received.
    pub fn count(&self, path: &str) -> usize {
        self.on(path).len()
    }

    /// Waits until `path` received at least `n` requests.
    pub async fn wait_count(&self, path: &str, n: usize, timeout: Duration) -> Vec<Received> {
        wait_for(&format!("{n} requests on {path}"), timeout, || {
            self.count(path) >= n
        })
        .await;
        self.on(path)
    }
}

impl Drop for FnServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn record(State(state): State<ServerState>, request: Request) -> Response {
    let path = request.uri().path().to_string();
    let headers = request.headers().clone();
    let body = axum::body::to_bytes(request.into_body(), 64 * 1024 * 1024)
        .await
        .unwrap_or_default();
    let now = state.current.fetch_add(1, Ordering::SeqCst) + 1;
    state.peak.fetch_max(now, Ordering::SeqCst);
    let n = {
        let mut counts = state.counts.lock().expect("lock");
        let c = counts.entry(path.clone()).or_insert(0);
        *c += 1;
        *c - 1
    };
    let answer = (state.behaviour)(&path, &body, n);
    state.received.lock().expect("lock").push(Received {
        status: answer.status,
        path: path.clone(),
        headers,
        body,
        at: Instant::now(),
    });
    if !answer.delay.is_zero() {
        tokio::time::sleep(answer.delay).await;
    }
    state.current.fetch_sub(1, Ordering::SeqCst);
    let mut response = (
        StatusCode::from_u16(answer.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        answer.body,
    )
        .into_response();
    for (k, v) in answer.headers {
        if let (Ok(k), Ok(v)) = (
            axum::http::HeaderName::try_from(k),
            axum::http::HeaderValue::try_from(v),
        ) {
            response.headers_mut().insert(k, v);
        }
    }
    response
}

/// How long a replica test waits for a group to notice a killed member (a Kafka session
/// timeout, a rebalance) and for redeliveries.
const WAIT_LONG: Duration = Duration::from_secs(90);

/// Two replicas, `a` and `b`, with one configuration (`cfg(path)`: only the function's path
/// differs, to tell who delivered what), share a stream of `n` messages whose bodies are their
/// numbers. `publish(range)` publishes them. The first half is published while both run; once
/// both delivered some, `a` is killed with SIGKILL and the second half is published; then what
/// `after` says must happen. Returns the replicas still running.
pub async fn replica_killed<F, Fut>(
    what: &str,
    server: &FnServer,
    cfg: impl Fn(&str) -> String,
    n: usize,
    after: AfterKill,
    publish: F,
) -> Vec<Fnbroker>
where
    F: Fn(std::ops::Range<usize>) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let a = Fnbroker::start(&cfg("/a")).await;
    let b = Fnbroker::start(&cfg("/b")).await;
    let half = n / 2;
    // In small steps, so that a group that rebalances when `b` joins gives it a share.
    let step = (half / 10).max(1);
    let mut next = 0;
    while next < half {
        let end = (next + step).min(half);
        publish(next..end).await;
        next = end;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    wait_for(&format!("{what}: both replicas at work"), WAIT_LONG, || {
        server.count("/a") > 0 && server.count("/b") > 0
    })
    .await;
    a.signal("KILL");
    let killed_after = (server.count("/a"), server.count("/b"));
    drop(a);
    publish(half..n).await;
    if after == AfterKill::Restart {
        let a = Fnbroker::start(&cfg("/a")).await;
        wait_for(
            &format!("{what}: every message, once the killed replica is back"),
            WAIT_LONG,
            || delivered_numbers(server, &["/a", "/b"]).0.len() >= n,
        )
        .await;
        println!(
            "{what}: replica a killed after a {} + b {}, then restarted: every message arrived",
            killed_after.0, killed_after.1
        );
        return vec![a, b];
    }
    let second_half = || -> HashSet<usize> {
        server
            .on("/b")
            .iter()
            .filter_map(|r| std::str::from_utf8(&r.body).ok()?.parse().ok())
            .filter(|i| *i >= half)
            .collect()
    };
    wait_for(
        &format!("{what}: the survivor takes the second half"),
        WAIT_LONG,
        || second_half().len() >= n - half,
    )
    .await;
    println!(
        "{what}: replica a killed after a {} + b {}; b then delivered the whole second half ({} messages)",
        killed_after.0,
        killed_after.1,
        n - half
    );
    vec![b]
}

/// What [`replica_killed`] expects once a replica is killed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterKill {
    /// The survivor takes every message published after the kill.
    Survivor,
    /// The killed replica is started again (with the same configuration and client id) and
    /// every message arrives, at one or the other.
    Restart,
}

/// The numbers in the bodies the function got at `paths`: (distinct, deliveries).
pub fn delivered_numbers(server: &FnServer, paths: &[&str]) -> (HashSet<usize>, usize) {
    let all: Vec<usize> = paths
        .iter()
        .flat_map(|p| server.on(p))
        .filter_map(|r| std::str::from_utf8(&r.body).ok()?.parse().ok())
        .collect();
    let total = all.len();
    (all.into_iter().collect(), total)
}

/// Runs `fnbroker ARGS -c <file>` once to its end, with `yaml` as the configuration file:
/// (exit code, stdout, stderr).
pub fn run_once(yaml: &str, args: &[&str]) -> (i32, String, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("fnbroker.yaml");
    std::fs::write(&path, yaml).expect("write config");
    let out = Command::new(binary())
        .args(args)
        .arg("-c")
        .arg(&path)
        .output()
        .expect("run fnbroker");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The sum of a metric's samples (every label set) in `fnbroker`'s `/metrics`.
pub async fn metric_sum(fb: &Fnbroker, name: &str) -> f64 {
    fb.metrics()
        .await
        .lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// How a broker keeps what a redrive passes over: released for the next run, or passed by a
/// reader of a log (Kafka).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kept {
    /// Released for the next run (a queue, a stream, a subscription).
    Released,
    /// Passed over by the reader of a log (Kafka's committed offset moved past it).
    Passed,
}

/// Dead-letter redrive, on one broker. `cfg(url)` has a trigger `t` to the function
/// at `url` with its dead letters at `dlq` (CONNECTOR:TOPIC); `publish(n)` sends `n` plain
/// messages to the trigger's source. The function refuses them (400, not retried), so each is
/// dead-lettered. `fnbroker redrive` then: a dry run moves nothing; a filter that takes none
/// moves none (and, where the broker releases, leaves them all); with the function fixed and
/// fnbroker running, `--limit 2` moves two and a filter that takes all the rest; the function
/// gets every message exactly once more, with its id and without the `dlq*` attributes; a last
/// run finds nothing. With `prime`, a first dry run opens the reader's session before anything
/// is dead-lettered (MQTT keeps messages only for sessions).
pub async fn redrive_round_trip<F, Fut>(
    cfg: impl Fn(&str) -> String,
    dlq: &str,
    n: usize,
    kept: Kept,
    prime: bool,
    publish: F,
) where
    F: FnOnce(usize) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let refusing = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let flag = Arc::clone(&refusing);
    let server = FnServer::with(move |_, _| {
        if flag.load(Ordering::SeqCst) {
            Answer::status(400)
        } else {
            Answer::ok()
        }
    })
    .await;
    let yaml = cfg(&server.url("/f"));
    let redrive = |extra: &[&str]| {
        let mut args = vec!["redrive", "--from", dlq, "--wait", "3s"];
        args.extend_from_slice(extra);
        let (code, stdout, stderr) = run_once(&yaml, &args);
        assert_eq!(code, 0, "redrive {extra:?}:\n{stdout}\n{stderr}");
        stdout
    };
    if prime {
        redrive(&["--dry-run"]);
    }
    let mut fb = Fnbroker::start(&yaml).await;
    publish(n).await;
    server.wait_count("/f", n, Duration::from_secs(60)).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while metric_sum(&fb, "fnbroker_dead_letter_published_total").await < n as f64 {
        assert!(
            Instant::now() < deadline,
            "not dead-lettered:\n{}",
            fb.logs()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    fb.signal("TERM");
    fb.wait_exit(Duration::from_secs(30)).await;

    let out = redrive(&["--dry-run"]);
    assert!(out.contains(&format!("would move {n}, 0 skipped")), "{out}");
    if kept == Kept::Released {
        let out = redrive(&["--filter", "dlqstatus = 999"]);
        assert!(out.contains(&format!("moved 0, {n} skipped")), "{out}");
    }

    refusing.store(false, Ordering::SeqCst);
    let fb = Fnbroker::start(&yaml).await;
    let out = redrive(&["--limit", "2"]);
    assert!(out.contains("moved 2, 0 skipped"), "{out}");
    assert_eq!(out.matches("-> ").count(), 2, "{out}");
    let out = redrive(&["--filter", "dlqtrigger = 't' AND dlqstatus = 400"]);
    assert!(
        out.contains(&format!("moved {}, 0 skipped", n - 2)),
        "{out}"
    );
    let ok = |server: &FnServer| {
        server
            .on("/f")
            .into_iter()
            .filter(|r| r.status == 200)
            .collect::<Vec<_>>()
    };
    wait_for("every redriven message", Duration::from_secs(60), || {
        ok(&server).len() >= n
    })
    .await;
    let out = redrive(&[]);
    assert!(out.contains("moved 0, 0 skipped"), "{out}");
    let delivered = ok(&server);
    assert_eq!(delivered.len(), n, "exactly once:\n{}", fb.logs());
    let ids: HashSet<&str> = delivered.iter().filter_map(|r| r.header("ce-id")).collect();
    assert_eq!(ids.len(), n, "each with its own id");
    for r in &delivered {
        let dlq: Vec<_> = r
            .headers
            .keys()
            .filter(|k| k.as_str().starts_with("ce-dlq"))
            .collect();
        assert!(dlq.is_empty(), "dlq attributes left: {dlq:?}");
    }
    drop(fb);
}

/// Durable retry state, on one broker: `cfg(url)` has a trigger with a
/// `retry_topic` (retries 20, 500 ms apart) to the function at `url`, which fails (500) for its
/// first 3 s; `publish(n)` sends `n` messages `0..n` to the trigger's source. Each fails first,
/// goes through the retry topic, and is delivered once the function is back.
pub async fn retry_topic_outlives_an_outage<F, Fut>(cfg: impl Fn(&str) -> String, publish: F)
where
    F: FnOnce(usize) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    const N: usize = 10;
    let back_at = Instant::now() + Duration::from_secs(3);
    let server = FnServer::with(move |_, _| {
        if Instant::now() < back_at {
            Answer::status(500)
        } else {
            Answer::ok()
        }
    })
    .await;
    let _fb = Fnbroker::start(&cfg(&server.url("/f"))).await;
    publish(N).await;
    let delivered = || -> HashSet<String> {
        server
            .on("/f")
            .iter()
            .filter(|r| r.status == 200)
            .map(|r| String::from_utf8_lossy(&r.body).into_owned())
            .collect()
    };
    wait_for("every message delivered", Duration::from_secs(60), || {
        delivered().len() >= N
    })
    .await;
    let expected: HashSet<String> = (0..N).map(|i| i.to_string()).collect();
    assert_eq!(delivered(), expected);
    let failed = server.on("/f").iter().filter(|r| r.status == 500).count();
    assert!(failed >= N, "each failed first: {failed} failures");
}
