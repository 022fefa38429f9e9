//! One instance of a pool: its process, started, watched until it is ready, then until it ends.

use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::Signal;
use tokio::process::{Child, Command};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::runtime_api;
use super::{Conn, Ended, Pool, Ready, logs};
use crate::HttpInvoker;
use crate::exec::Group;
use crate::kinds::process::Protocol;

/// How often an HTTP instance is probed until it is ready.
const PROBE_EVERY: Duration = Duration::from_millis(20);

/// Runs the instance `id` (number `index`) of `pool` until it ends, keeping the pool's books.
pub(super) async fn run(
    pool: Arc<Pool>,
    id: u64,
    index: usize,
    stop: CancellationToken,
    kill: CancellationToken,
) {
    let spec = &pool.spec;
    let begun = Instant::now();
    let ended = Arc::new(std::sync::OnceLock::new());
    let (mut cmd, tag) = crate::exec::isolated(&spec.program, &spec.args, &spec.env);
    cmd.stdin(Stdio::null());
    if let Some(dir) = &spec.directory {
        cmd.current_dir(dir);
    }

    // The protocol's side: a Runtime API of the instance's own, or a port for it to listen on.
    let mut api = None;
    let mut port = 0;
    let prepared = match spec.protocol {
        Protocol::Lambda => runtime_api::serve(&spec.function)
            .await
            .map(|(served, address)| {
                lambda_env(&mut cmd, &pool, &address, &tag);
                api = Some(served);
            }),
        Protocol::Http => free_port().map(|p| {
            port = p;
            cmd.env("PORT", p.to_string());
        }),
    };
    if let Err(e) = prepared {
        pool.ended(id, index, None, Ended::Failed, &e);
        return;
    }
    let spawned = crate::reaper::spawn_direct(|| cmd.spawn(), Child::id);
    let mut child = match spawned {
        Ok(child) => child,
        Err(e) => {
            let reason = format!("cannot start `{}`: {e}", spec.program);
            pool.ended(id, index, None, Ended::Failed, &reason);
            return;
        }
    };
    let group = Group {
        pid: child.id(),
        tag,
    };
    let output = logs::forward(
        &spec.function,
        index,
        child.stdout.take(),
        child.stderr.take(),
    );

    // Until it is ready: the Runtime API polled, or the port answering.
    let readiness = async {
        match &api {
            Some(api) => api.started().await,
            None => http_ready(port, spec.ready.as_deref()).await,
        }
    };
    let started = tokio::select! {
        outcome = readiness => outcome,
        status = child.wait() => Err(format!("it exited before it was ready ({})", exit_text(status))),
        () = tokio::time::sleep(spec.init_timeout) => Err(format!("not ready within {:?}", spec.init_timeout)),
        () = stop.cancelled() => Err(String::new()),
        () = kill.cancelled() => Err(String::new()),
    };
    let conn = match started {
        Ok(()) => match &api {
            Some(api) => Ok(Conn::Lambda(api.jobs())),
            None => http_conn(&pool, port).map(|c| Conn::Http(Box::new(c))),
        },
        Err(e) => Err(e),
    };
    let conn = match conn {
        Ok(conn) => conn,
        Err(reason) => {
            group.kill();
            drop(group);
            let _ = child.wait().await;
            let reason = api.as_ref().and_then(|a| a.init_error()).unwrap_or(reason);
            let asked = if stop.is_cancelled() || kill.is_cancelled() {
                Ended::Stopped
            } else {
                Ended::Failed
            };
            pool.ended(id, index, None, asked, &reason);
            output.finish().await;
            return;
        }
    };
    let up_since = Instant::now();
    pool.ready(
        id,
        Ready {
            conn,
            ended: Arc::clone(&ended),
        },
        begun.elapsed(),
    );

    // Until it ends: by itself, killed (a call past its timeout), or stopped.
    let (asked, reason) = tokio::select! {
        status = child.wait() => (Ended::Failed, exit_text(status)),
        () = kill.cancelled() => {
            group.kill();
            let _ = child.wait().await;
            (Ended::Killed, "killed: a call ran past its timeout".to_string())
        }
        () = stop.cancelled() => {
            group.signal(Signal::SIGTERM);
            let status = match tokio::time::timeout(spec.grace, child.wait()).await {
                Ok(status) => exit_text(status),
                Err(_) => {
                    group.kill();
                    let _ = child.wait().await;
                    format!("killed after the grace period of {:?}", spec.grace)
                }
            };
            (Ended::Stopped, format!("stopped ({status})"))
        }
    };
    pool.retire(id);
    let _ = ended.set(reason.clone());
    // What it left running in its group, or tagged anywhere, goes with it.
    drop(group);
    if let Some(api) = &api {
        api.close();
    }
    pool.ended(id, index, Some(up_since.elapsed()), asked, &reason);
    output.finish().await;
}

/// The Lambda runtime's environment: the Runtime API's address and the variables a runtime
/// and its handler read.
fn lambda_env(cmd: &mut Command, pool: &Pool, address: &str, tag: &str) {
    let spec = &pool.spec;
    let task_root = spec
        .directory
        .clone()
        .or_else(|| std::env::current_dir().ok())
        .map(|d| d.display().to_string())
        .unwrap_or_default();
    cmd.env("AWS_LAMBDA_RUNTIME_API", address)
        .env("AWS_LAMBDA_FUNCTION_NAME", &spec.function)
        .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
        .env(
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE",
            spec.memory_size.to_string(),
        )
        .env(
            "AWS_LAMBDA_LOG_GROUP_NAME",
            format!("/aws/lambda/{}", spec.function),
        )
        .env(
            "AWS_LAMBDA_LOG_STREAM_NAME",
            format!("fnbroker/[$LATEST]{tag}"),
        )
        .env("AWS_LAMBDA_INITIALIZATION_TYPE", "on-demand")
        .env("_HANDLER", &spec.handler)
        .env("LAMBDA_TASK_ROOT", task_root);
}

/// A port on the loopback that is free now, for an HTTP instance to listen on.
fn free_port() -> Result<u16, String> {
    std::net::TcpListener::bind(("127.0.0.1", 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("cannot find a free port: {e}"))
}

/// Waits until an HTTP instance accepts connections on `port` (and, with a `ready` path,
/// answers it with 2xx).
async fn http_ready(port: u16, ready: Option<&str>) -> Result<(), String> {
    loop {
        if let Ok(mut stream) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
            let Some(path) = ready else { return Ok(()) };
            if probe(&mut stream, port, path).await {
                return Ok(());
            }
        }
        tokio::time::sleep(PROBE_EVERY).await;
    }
}

/// One `GET path` on `stream`: whether it answered 2xx.
async fn probe(stream: &mut tokio::net::TcpStream, port: u16, path: &str) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n");
    if stream.write_all(request.as_bytes()).await.is_err() {
        return false;
    }
    let mut head = [0u8; 12];
    let read = tokio::time::timeout(Duration::from_secs(1), stream.read_exact(&mut head)).await;
    matches!(read, Ok(Ok(_))) && head.starts_with(b"HTTP/1.") && head[9] == b'2'
}

/// The client of a ready HTTP instance.
fn http_conn(pool: &Pool, port: u16) -> Result<HttpInvoker, String> {
    let spec = &pool.spec;
    HttpInvoker::new(
        &format!("http://127.0.0.1:{port}{}", spec.path),
        spec.mode,
        &Default::default(),
        spec.per_instance,
        None,
    )
    .map_err(|e| e.to_string())
}

/// An exit status as words.
fn exit_text(status: std::io::Result<std::process::ExitStatus>) -> String {
    use std::os::unix::process::ExitStatusExt;
    match status {
        Ok(s) => match (s.code(), s.signal()) {
            (Some(code), _) => format!("exit code {code}"),
            (None, Some(signal)) => match Signal::try_from(signal) {
                Ok(sig) => format!("killed by {sig}"),
                Err(_) => format!("killed by signal {signal}"),
            },
            (None, None) => "ended".to_string(),
        },
        Err(e) => format!("cannot wait for it: {e}"),
    }
}
