//! Warm functions against cold ones, in one run on one machine: the same Python handler called
//! per event by `exec` (an interpreter and its imports per call) and kept warm by `process`
//! behind the Lambda Runtime API (`awslambdaric`); the same HTTP server run by hand as an `http`
//! function and supervised by `process` with `protocol: http`; and the cold start of one
//! instance (`min: 0`). Every case gets the same events through fnbroker's HTTP ingress with
//! `sync: true` (the request answers once the function did), from `concurrency` clients.
//!
//! ```sh
//! cargo run --release -p bench -- --warm
//! ```

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use crate::process::Fnbroker;

/// A Lambda handler, as deployed to Lambda: a few imports, a small answer.
const HANDLER: &str = r#"
import hashlib, json

def handle(event, context):
    data = event.get("data") if isinstance(event, dict) else None
    digest = hashlib.sha256(json.dumps(data).encode()).hexdigest()
    return {"ok": True, "digest": digest[:16]}
"#;

/// The same handler run by `exec`: the event's data on stdin, the answer on stdout.
const EXEC: &str = r#"
import json, sys
from handler import handle
data = sys.stdin.read()
print(json.dumps(handle({"data": json.loads(data) if data else None}, None)))
"#;

/// An HTTP function on `$PORT`.
const SERVER: &str = r#"
import json, os, hashlib, http.server
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        out = json.dumps({"ok": True, "digest": hashlib.sha256(body).hexdigest()[:16]}).encode()
        self.send_response(200); self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out))); self.end_headers(); self.wfile.write(out)
    def log_message(self, *a): pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), H).serve_forever()
"#;

/// What one case measured.
#[derive(Debug, Clone, Copy)]
struct Measured {
    per_second: f64,
    p50: Duration,
    p99: Duration,
}

/// The Python with `awslambdaric` that `scripts/deps.sh` installs, unless given.
pub(crate) fn python(explicit: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    let python = explicit.unwrap_or_else(|| {
        PathBuf::from(std::env::var("HOME").unwrap_or_default())
            .join(".cache/fnbroker/venv/bin/python3")
    });
    let ok = std::process::Command::new(&python)
        .args(["-c", "import awslambdaric"])
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        bail!(
            "{} cannot import awslambdaric: run scripts/deps.sh or pass --python",
            python.display()
        );
    }
    Ok(python)
}

/// Runs every case with `events` events (after a warm-up) and returns the report.
pub(crate) async fn run(
    binary: &Path,
    python: &Path,
    events: u64,
    samples: usize,
) -> anyhow::Result<String> {
    let code = tempfile::tempdir()?;
    std::fs::write(code.path().join("handler.py"), HANDLER)?;
    std::fs::write(code.path().join("exec_handler.py"), EXEC)?;
    std::fs::write(code.path().join("server.py"), SERVER)?;
    let dir = code.path().display().to_string();
    let python = python.display().to_string();
    const LAMBDA_CLIENTS: usize = 4;
    const HTTP_CLIENTS: usize = 16;

    let exec = format!(
        "  f:\n    exec: {{ command: [\"{python}\", \"{dir}/exec_handler.py\"], env: {{ PYTHONPATH: \"{dir}\" }} }}\n    concurrency: {LAMBDA_CLIENTS}\n    timeout: 30s\n"
    );
    let warm = format!(
        "  f:\n    process: {{ command: [\"{python}\", -m, awslambdaric, handler.handle], protocol: lambda, directory: \"{dir}\", instances: {{ min: {LAMBDA_CLIENTS}, max: {LAMBDA_CLIENTS} }} }}\n    concurrency: {LAMBDA_CLIENTS}\n    timeout: 30s\n"
    );
    eprintln!("bench: warm functions: exec, a Python handler per event");
    // `exec` is an order of magnitude slower: a tenth of the events measure it as well.
    let exec = measure(binary, &exec, (events / 10).max(50), LAMBDA_CLIENTS).await?;
    eprintln!("bench: warm functions: process, the same handler behind awslambdaric");
    let warm = measure(binary, &warm, events, LAMBDA_CLIENTS).await?;

    // The HTTP server by hand, then supervised, alternated `samples` times.
    let mut by_hand = Vec::new();
    let mut supervised = Vec::new();
    for round in 0..samples {
        eprintln!(
            "bench: warm functions: HTTP server by hand and under process, round {}",
            round + 1
        );
        let port = free_port()?;
        let mut server = tokio::process::Command::new(&python)
            .arg(format!("{dir}/server.py"))
            .env("PORT", port.to_string())
            .kill_on_drop(true)
            .spawn()
            .context("cannot start the HTTP function")?;
        wait_port(port).await?;
        let http = format!(
            "  f:\n    http: {{ url: \"http://127.0.0.1:{port}/\" }}\n    concurrency: {HTTP_CLIENTS}\n    timeout: 30s\n"
        );
        by_hand.push(measure(binary, &http, events, HTTP_CLIENTS).await?);
        let _ = server.kill().await;
        let process = format!(
            "  f:\n    process: {{ command: [\"{python}\", \"{dir}/server.py\"], protocol: http, instances: {{ min: 1, max: 1 }}, concurrency: {HTTP_CLIENTS} }}\n    concurrency: {HTTP_CLIENTS}\n    timeout: 30s\n"
        );
        supervised.push(measure(binary, &process, events, HTTP_CLIENTS).await?);
    }
    let by_hand = median(&by_hand);
    let supervised = median(&supervised);

    eprintln!("bench: warm functions: cold starts");
    let mut cold = Vec::new();
    let mut first = Vec::new();
    for _ in 0..samples {
        let (seconds, call) = cold_start(binary, &python, &dir).await?;
        cold.push(seconds);
        first.push(call);
    }
    cold.sort_by(f64::total_cmp);
    first.sort();
    let cold = cold[cold.len() / 2];
    let first = first[first.len() / 2];

    let ms = |d: Duration| format!("{:.1}", d.as_secs_f64() * 1000.0);
    let row = |name: &str, m: &Measured, base: &Measured| {
        format!(
            "| {name} | {:.0} | {} | {} | {:.2} |\n",
            m.per_second,
            ms(m.p50),
            ms(m.p99),
            m.per_second / base.per_second
        )
    };
    let mut out = String::from("## Warm functions\n\n");
    out.push_str(&format!(
        "The same events through fnbroker's HTTP ingress (`sync: true`); events/s and the latency of one request; ratios against the first row of each pair, measured in the same run. Python handler: {LAMBDA_CLIENTS} clients, `exec` per event against `process` (`awslambdaric`, {LAMBDA_CLIENTS} instances); HTTP server: {HTTP_CLIENTS} clients, medians of {samples} alternated rounds.\n\n"
    ));
    out.push_str("| function | events/s | p50 ms | p99 ms | ratio |\n|---|---|---|---|---|\n");
    out.push_str(&row("`exec`: Python per event", &exec, &exec));
    out.push_str(&row(
        "`process`, `protocol: lambda` (awslambdaric)",
        &warm,
        &exec,
    ));
    out.push_str(&row("`http`: the server run by hand", &by_hand, &by_hand));
    out.push_str(&row(
        "`process`, `protocol: http`: the same server",
        &supervised,
        &by_hand,
    ));
    out.push_str(&format!(
        "\nCold start of one `awslambdaric` instance (`min: 0`, median of {samples}): {:.0} ms to ready (`fnbroker_function_cold_start_seconds`), {} ms for the first call end to end.\n",
        cold * 1000.0,
        ms(first)
    ));
    Ok(out)
}

/// fnbroker with `functions` behind its HTTP ingress: `events` requests from `clients`
/// clients after a warm-up.
async fn measure(
    binary: &Path,
    functions: &str,
    events: u64,
    clients: usize,
) -> anyhow::Result<Measured> {
    let port = free_port()?;
    let config = format!(
        "connectors:\n  web: {{ http: {{ listen: \"127.0.0.1:{port}\" }} }}\nfunctions:\n{functions}triggers:\n  - {{ name: t, from: {{ connector: web, topic: /in, sync: true }}, to: f, delivery: {{ max_in_flight: {clients} }} }}\n"
    );
    let fb = Fnbroker::start(binary, &config).await?;
    let url = format!("http://127.0.0.1:{port}/in");
    let client = reqwest::Client::new();
    drive(&client, &url, (clients * 4) as u64, clients).await?;
    let started = Instant::now();
    let mut latencies = drive(&client, &url, events, clients).await?;
    let elapsed = started.elapsed();
    fb.stop(Duration::from_secs(20)).await;
    latencies.sort();
    let at = |q: f64| latencies[((latencies.len() as f64 - 1.0) * q) as usize];
    Ok(Measured {
        per_second: events as f64 / elapsed.as_secs_f64(),
        p50: at(0.5),
        p99: at(0.99),
    })
}

/// `events` POSTs from `clients` clients; each request's latency. A request that does not
/// answer 200 fails the measurement.
async fn drive(
    client: &reqwest::Client,
    url: &str,
    events: u64,
    clients: usize,
) -> anyhow::Result<Vec<Duration>> {
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (client, url, next) = (client.clone(), url.to_string(), Arc::clone(&next));
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            while next.fetch_add(1, Ordering::Relaxed) < events {
                let t = Instant::now();
                let r = client
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(r#"{"image": "cat.png", "width": 640}"#)
                    .send()
                    .await?;
                if r.status() != 200 {
                    bail!(
                        "the ingress answered {}: {}",
                        r.status(),
                        r.text().await.unwrap_or_default()
                    );
                }
                r.bytes().await?;
                latencies.push(t.elapsed());
            }
            Ok(latencies)
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await??);
    }
    Ok(all)
}

/// One instance's cold start: fnbroker with `min: 0`, one call; the cold-start histogram's
/// seconds and the call's latency.
async fn cold_start(binary: &Path, python: &str, dir: &str) -> anyhow::Result<(f64, Duration)> {
    let port = free_port()?;
    let config = format!(
        "connectors:\n  web: {{ http: {{ listen: \"127.0.0.1:{port}\" }} }}\nfunctions:\n  f:\n    process: {{ command: [\"{python}\", -m, awslambdaric, handler.handle], protocol: lambda, directory: \"{dir}\", instances: {{ min: 0, max: 1 }} }}\n    timeout: 30s\ntriggers:\n  - {{ name: t, from: {{ connector: web, topic: /in, sync: true }}, to: f }}\n"
    );
    let fb = Fnbroker::start(binary, &config).await?;
    let client = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{port}/in");
    let t = Instant::now();
    drive(&client, &url, 1, 1).await?;
    let call = t.elapsed();
    let metrics = fb.metrics().await?;
    fb.stop(Duration::from_secs(20)).await;
    let seconds = metrics
        .lines()
        .find(|l| l.starts_with("fnbroker_function_cold_start_seconds_sum"))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .context("no cold start in /metrics")?;
    Ok((seconds, call))
}

fn median(all: &[Measured]) -> Measured {
    let mut sorted = all.to_vec();
    sorted.sort_by(|a, b| a.per_second.total_cmp(&b.per_second));
    sorted[sorted.len() / 2]
}

fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

async fn wait_port(port: u16) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        if Instant::now() > deadline {
            bail!("the HTTP function never listened on {port}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}
