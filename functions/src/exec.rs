//! The exec function invoker: a process per event, as OpenFaaS's classic watchdog runs functions.

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use fnbroker_core::event::{self, Event};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;

use crate::{InvokeError, Invoker, Reply, Success, truncate};

/// The most stdout kept as a reply, and stderr kept for an error.
const MAX_STDOUT: usize = 16 * 1024 * 1024;
const MAX_STDERR: usize = 2048;

/// Runs a command per event: the event's data on stdin, its attributes as `CE_<NAME>` environment
/// variables (`CE_ID`, `CE_TYPE`, `CE_SOURCE`, ...), stdout as the reply. A non-zero exit is a
/// failure that keeps the end of stderr; at the timeout the process is killed.
#[derive(Debug, Clone)]
pub struct ExecInvoker {
    program: String,
    args: Vec<String>,
    env: BTreeMap<String, String>,
}

impl ExecInvoker {
    /// An invoker for `command` (program and arguments) with extra `env`.
    pub fn new(command: &[String], env: &BTreeMap<String, String>) -> Result<Self, String> {
        let (program, args) = command
            .split_first()
            .ok_or_else(|| "the command is empty".to_string())?;
        Ok(Self {
            program: program.clone(),
            args: args.to_vec(),
            env: env.clone(),
        })
    }

    async fn run(&self, event: &Event, stdin_data: Vec<u8>) -> Result<Success, InvokeError> {
        let mut cmd = Command::new(&self.program);
        cmd.args(&self.args)
            .envs(&self.env)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        for (name, value) in event::binary_attributes(event) {
            cmd.env(format!("CE_{}", name.to_ascii_uppercase()), value.as_ref());
        }
        if let Some(ct) = event::AttributesReader::datacontenttype(event) {
            cmd.env("CE_DATACONTENTTYPE", ct);
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| InvokeError::Spawn(format!("`{}`: {e}", self.program)))?;

        // Feed stdin and drain stdout and stderr at the same time, so that a large event or a
        // chatty command cannot deadlock on a full pipe.
        let mut stdin = child.stdin.take();
        let mut stdout = child.stdout.take();
        let mut stderr = child.stderr.take();
        let feed = async move {
            if let Some(mut pipe) = stdin.take() {
                // A command that does not read its input closes the pipe early: not an error.
                let _ = pipe.write_all(&stdin_data).await;
            }
        };
        let read_out = async move {
            let mut buf = Vec::new();
            if let Some(pipe) = stdout.as_mut() {
                let _ = pipe.take(MAX_STDOUT as u64).read_to_end(&mut buf).await;
            }
            buf
        };
        let read_err = async move {
            let mut buf = Vec::new();
            if let Some(pipe) = stderr.as_mut() {
                let _ = pipe.read_to_end(&mut buf).await;
            }
            buf
        };
        let ((), out, err, status) = tokio::join!(feed, read_out, read_err, child.wait());
        let status = status.map_err(|e| InvokeError::Spawn(format!("`{}`: {e}", self.program)))?;
        if !status.success() {
            let text = String::from_utf8_lossy(&err);
            let tail = text.trim();
            // Keep the end of stderr: that is where the error usually is.
            let start = tail
                .char_indices()
                .rev()
                .nth(MAX_STDERR)
                .map_or(0, |(i, _)| i);
            return Err(InvokeError::Exit {
                code: status.code(),
                stderr: truncate(tail[start..].to_string(), MAX_STDERR),
            });
        }
        let reply = (!out.is_empty()).then(|| Reply::Raw {
            content_type: Some(sniff_content_type(&out).to_string()),
            body: Bytes::from(out),
        });
        Ok(Success { status: 200, reply })
    }
}

/// The content type of a command's output: JSON when it parses as JSON, text when it is UTF-8,
/// bytes otherwise.
fn sniff_content_type(out: &[u8]) -> &'static str {
    if serde_json_like(out) {
        "application/json"
    } else if std::str::from_utf8(out).is_ok() {
        "text/plain; charset=utf-8"
    } else {
        "application/octet-stream"
    }
}

/// A cheap test for a JSON object or array: the first and last non-blank bytes match.
fn serde_json_like(out: &[u8]) -> bool {
    let trimmed = out.trim_ascii();
    matches!(
        (trimmed.first(), trimmed.last()),
        (Some(b'{'), Some(b'}')) | (Some(b'['), Some(b']'))
    )
}

#[async_trait]
impl Invoker for ExecInvoker {
    async fn invoke(&self, event: &Event, timeout: Duration) -> Result<Success, InvokeError> {
        let data = event::data_bytes(event).into_owned();
        // Dropping the future at the timeout drops the child, which kills it (`kill_on_drop`).
        match tokio::time::timeout(timeout, self.run(event, data)).await {
            Ok(result) => result,
            Err(_) => Err(InvokeError::Timeout(timeout)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fnbroker_core::event::{PlainMessage, normalize};

    fn event(data: &[u8]) -> Event {
        normalize(
            PlainMessage {
                kind: "http",
                connector: "web",
                topic: "/t",
                id: Some("id-1".into()),
                ..Default::default()
            },
            data.to_vec(),
        )
    }

    fn sh(script: &str) -> ExecInvoker {
        ExecInvoker::new(
            &["sh".to_string(), "-c".to_string(), script.to_string()],
            &BTreeMap::new(),
        )
        .expect("command")
    }

    #[tokio::test]
    async fn data_on_stdin_attributes_in_env_stdout_is_reply() {
        let inv = sh(r#"printf '%s|%s|' "$CE_ID" "$CE_TYPE"; cat"#);
        let ok = inv
            .invoke(&event(b"payload"), Duration::from_secs(10))
            .await
            .expect("success");
        match ok.reply {
            Some(Reply::Raw { body, content_type }) => {
                assert_eq!(&body[..], b"id-1|fnbroker.http.message|payload");
                assert_eq!(content_type.as_deref(), Some("text/plain; charset=utf-8"));
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[tokio::test]
    async fn non_zero_exit_keeps_stderr() {
        let err = sh("echo broken >&2; exit 3")
            .invoke(&event(b""), Duration::from_secs(10))
            .await
            .expect_err("failure");
        assert!(
            matches!(&err, InvokeError::Exit { code: Some(3), stderr } if stderr == "broken"),
            "{err:?}"
        );
        assert!(err.is_retryable());
    }

    #[tokio::test]
    async fn timeout_kills_the_process() {
        let start = std::time::Instant::now();
        let err = sh("sleep 30")
            .invoke(&event(b""), Duration::from_millis(200))
            .await
            .expect_err("timeout");
        assert!(err.is_timeout(), "{err:?}");
        assert!(start.elapsed() < Duration::from_secs(10));
    }

    #[tokio::test]
    async fn missing_program_is_not_retryable() {
        let inv = ExecInvoker::new(&["/nonexistent/prog".to_string()], &BTreeMap::new())
            .expect("command");
        let err = inv
            .invoke(&event(b""), Duration::from_secs(5))
            .await
            .expect_err("spawn");
        assert!(!err.is_retryable(), "{err:?}");
    }
}
