//! The exec function invoker: a process per event, as OpenFaaS's classic watchdog runs functions.

use fnbroker_core::function::BuildError;
use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use fnbroker_core::event::{self, Event};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;

use crate::{InvokeError, Invoker, Reply, Success, truncate};

/// The most stdout kept as a reply; a command that writes more is stopped.
pub const MAX_STDOUT: usize = 16 * 1024 * 1024;
/// The end of stderr kept for an error; the rest is read and dropped.
const MAX_STDERR: usize = 2048;
/// The variables a command gets from fnbroker's own environment besides those it names in
/// `inherit_env`: never the secrets meant for `${VAR}` substitution.
const BASE_ENV: [&str; 3] = ["PATH", "HOME", "LANG"];
/// `PATH` when fnbroker itself has none.
const DEFAULT_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// The environment a command starts from: `PATH` (a default one if fnbroker has none), `HOME`,
/// `LANG` and the variables named in `inherit` from fnbroker's own environment (those unset are
/// left out), then `env`.
pub(crate) fn base_env(
    inherit: &[String],
    env: &BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    let mut base: BTreeMap<String, String> = BASE_ENV
        .iter()
        .map(|name| name.to_string())
        .chain(inherit.iter().cloned())
        .filter_map(|name| std::env::var(&name).ok().map(|value| (name, value)))
        .collect();
    base.entry("PATH".into())
        .or_insert_with(|| DEFAULT_PATH.into());
    base.extend(env.iter().map(|(k, v)| (k.clone(), v.clone())));
    base
}

/// A command isolated as fnbroker runs functions: the clean environment `env`, stdout and
/// stderr piped, a process group of its own, killed when dropped, and tagged for the reaper
/// (the tag is returned). The caller sets stdin.
pub(crate) fn isolated(
    program: &str,
    args: &[String],
    env: &BTreeMap<String, String>,
) -> (Command, String) {
    let mut cmd = Command::new(program);
    cmd.args(args)
        .env_clear()
        .envs(env)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let tag = uuid::Uuid::new_v4().simple().to_string();
    cmd.env(crate::reaper::TAG, &tag);
    (cmd, tag)
}

/// Runs a command per event: the event's data on stdin, its attributes as `CE_<NAME>` environment
/// variables (`CE_ID`, `CE_TYPE`, `CE_SOURCE`, ...), stdout as the reply. The exit status decides
/// success; a failure keeps the end of stderr.
///
/// The command runs in a clean environment (`PATH`, `HOME`, `LANG`, the `CE_*` variables, the
/// configured `env` and the variables named in `inherit_env`) and in a process group of its own:
/// at the timeout, and when the command exits, the whole group is killed, so that nothing it
/// started in the background outlives it or keeps its output open; and so is every process
/// still tagged with the call (see [`crate::reaper`]): one that left the group with `setsid`
/// does not survive either.
#[derive(Debug, Clone)]
pub struct ExecInvoker {
    program: String,
    args: Vec<String>,
    /// The environment every run starts from: the base and inherited variables, then `env`.
    env: BTreeMap<String, String>,
}

impl ExecInvoker {
    /// An invoker for `command` (program and arguments) with extra `env`, and the variables named
    /// in `inherit` copied from fnbroker's environment (those unset are left out).
    pub fn new(
        command: &[String],
        env: &BTreeMap<String, String>,
        inherit: &[String],
    ) -> Result<Self, BuildError> {
        let (program, args) = command
            .split_first()
            .ok_or_else(|| "the command is empty".to_string())?;
        Ok(Self {
            program: program.clone(),
            args: args.to_vec(),
            env: base_env(inherit, env),
        })
    }

    /// The `CE_*` variables of one event: each attribute (`CE_ID`, `CE_TYPE`...) and
    /// `CE_DATACONTENTTYPE`.
    fn event_vars(event: &Event) -> Vec<(String, String)> {
        let mut vars: Vec<(String, String)> = event::binary_attributes(event)
            .map(|(name, value)| {
                (
                    format!("CE_{}", name.to_ascii_uppercase()),
                    value.into_owned(),
                )
            })
            .collect();
        if let Some(ct) = event::AttributesReader::datacontenttype(event) {
            vars.push(("CE_DATACONTENTTYPE".into(), ct.to_string()));
        }
        vars
    }

    async fn run(
        &self,
        vars: Vec<(String, String)>,
        stdin_data: Vec<u8>,
    ) -> Result<Success, InvokeError> {
        let (mut cmd, tag) = isolated(&self.program, &self.args, &self.env);
        cmd.stdin(Stdio::piped()).envs(vars);
        let mut child = crate::reaper::spawn_direct(|| cmd.spawn(), tokio::process::Child::id)
            .map_err(|e| InvokeError::Spawn(format!("`{}`: {e}", self.program)))?;
        // Killed when this future ends for any reason: exit, overflow, timeout (dropped).
        let group = Group {
            pid: child.id(),
            tag,
        };

        // Feed stdin and drain stdout and stderr at the same time, so that a large event or a
        // chatty command cannot deadlock on a full pipe.
        let stdin = child.stdin.take();
        let stdout = child.stdout.take();
        let stderr = child.stderr.take();
        let feed = async move {
            if let Some(mut pipe) = stdin {
                // A command that does not read its input closes the pipe early: not an error.
                let _ = pipe.write_all(&stdin_data).await;
            }
        };
        let read_out = async {
            let mut buf = Vec::new();
            let mut overflow = false;
            if let Some(pipe) = stdout {
                let _ = pipe.take(MAX_STDOUT as u64 + 1).read_to_end(&mut buf).await;
                if buf.len() > MAX_STDOUT {
                    overflow = true;
                    group.kill();
                }
            }
            (buf, overflow)
        };
        let read_err = async {
            match stderr {
                Some(pipe) => tail(pipe, MAX_STDERR).await,
                None => Vec::new(),
            }
        };
        // The exit status decides; once the command exited, what it left running in the
        // background is killed, which closes the pipes it held.
        let wait = async {
            let status = child.wait().await;
            group.kill();
            status
        };
        let ((), (out, overflow), err, status) = tokio::join!(feed, read_out, read_err, wait);
        let status = status.map_err(|e| InvokeError::Spawn(format!("`{}`: {e}", self.program)))?;
        if overflow {
            return Err(InvokeError::Output(format!(
                "the command wrote more than {} MiB to stdout and was stopped",
                MAX_STDOUT / (1024 * 1024)
            )));
        }
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

/// A command's process group (its pid: it leads the group) and its call's tag: killed on drop,
/// with every process that carries the tag.
pub(crate) struct Group {
    pub(crate) pid: Option<u32>,
    pub(crate) tag: String,
}

impl Group {
    /// Kills every process of the group; one that is gone already is no error.
    pub(crate) fn kill(&self) {
        self.signal(Signal::SIGKILL);
    }

    /// Sends `signal` to every process of the group.
    pub(crate) fn signal(&self, signal: Signal) {
        if let Some(pid) = self.pid.and_then(|p| i32::try_from(p).ok()) {
            let _ = killpg(Pid::from_raw(pid), signal);
        }
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        self.kill();
        crate::reaper::sweep(&self.tag, self.pid);
    }
}

/// Reads `pipe` to its end, keeping only the last `keep` bytes: memory stays bounded
/// whatever the command writes.
async fn tail(mut pipe: impl AsyncRead + Unpin, keep: usize) -> Vec<u8> {
    let mut kept = Vec::with_capacity(keep);
    let mut chunk = [0u8; 8192];
    loop {
        match pipe.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let new = &chunk[..n];
                if new.len() >= keep {
                    kept.clear();
                    kept.extend_from_slice(&new[new.len() - keep..]);
                } else {
                    let over = (kept.len() + new.len()).saturating_sub(keep);
                    kept.drain(..over);
                    kept.extend_from_slice(new);
                }
            }
        }
    }
    kept
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
        // Dropping the future at the timeout kills the command's whole process group.
        match tokio::time::timeout(timeout, self.run(Self::event_vars(event), data)).await {
            Ok(result) => result,
            Err(_) => Err(InvokeError::Timeout(timeout)),
        }
    }

    /// The events as a JSON array of structured events on stdin; `CE_DATACONTENTTYPE` is
    /// `application/cloudevents-batch+json` and `FNBROKER_BATCH_SIZE` the number of events.
    /// Stdout may name the failed events (`{"batchItemFailures": [...]}`).
    async fn invoke_batch(
        &self,
        events: &[Event],
        timeout: Duration,
    ) -> Result<Success, InvokeError> {
        let vars = vec![
            (
                "CE_DATACONTENTTYPE".to_string(),
                event::BATCH_JSON.to_string(),
            ),
            ("FNBROKER_BATCH_SIZE".to_string(), events.len().to_string()),
        ];
        let data = event::batch_to_json_vec(events);
        match tokio::time::timeout(timeout, self.run(vars, data)).await {
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
            &[],
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
    async fn a_batch_is_a_json_array_on_stdin_and_stdout_names_failures() {
        let inv = sh(
            r#"test "$FNBROKER_BATCH_SIZE" = 2 || exit 9; cat >/dev/null; echo '{"batchItemFailures":[{"itemIdentifier":"id-1"}]}'"#,
        );
        let events = [event(b"a"), event(b"b")];
        let ok = inv
            .invoke_batch(&events, Duration::from_secs(10))
            .await
            .expect("success");
        let failed = crate::item_failures(ok.reply.as_ref()).expect("well formed");
        assert_eq!(failed, Some(vec!["id-1".to_string()]));
        let echo = sh("cat")
            .invoke_batch(&events, Duration::from_secs(10))
            .await
            .expect("success");
        let Some(Reply::Raw { body, .. }) = echo.reply else {
            panic!("no stdout")
        };
        let parsed = event::batch_from_json_slice(&body).expect("a batch");
        assert_eq!(parsed.len(), 2);
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

    /// Runs `script` (which writes the pid of a child it starts to the file given as `{}`)
    /// with a timeout of `timeout`, and waits up to 5 s for that child to be gone, or a zombie
    /// waiting for a reaper that is not ours to be; `what` names it in the failure.
    async fn times_out_and_its_child_dies(script: &str, timeout: Duration, what: &str) {
        let dir = tempfile::tempdir().expect("tempdir");
        let pidfile = dir.path().join("pid");
        let err = sh(&script.replace("{}", &pidfile.display().to_string()))
            .invoke(&event(b""), timeout)
            .await
            .expect_err("timeout");
        assert!(err.is_timeout(), "{err:?}");
        let pid = std::fs::read_to_string(&pidfile).expect("the command wrote its child's pid");
        let stat = format!("/proc/{}/stat", pid.trim());
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while let Ok(text) = std::fs::read_to_string(&stat) {
            if text
                .rsplit(')')
                .next()
                .is_some_and(|rest| rest.trim_start().starts_with('Z'))
            {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{what} outlived the timeout"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn a_timeout_kills_what_the_command_started() {
        times_out_and_its_child_dies(
            "sleep 1000 & echo $! > {}; wait",
            Duration::from_millis(300),
            "the background `sleep`",
        )
        .await;
    }

    /// Before: a child that called `setsid` left the command's process group and survived the
    /// timeout. The call's tag finds it.
    #[tokio::test]
    async fn a_timeout_kills_what_left_the_process_group() {
        times_out_and_its_child_dies(
            "setsid sleep 1000 & echo $! > {}; wait",
            Duration::from_millis(500),
            "the `setsid sleep`",
        )
        .await;
    }

    #[tokio::test]
    async fn the_exit_status_decides_even_with_a_background_child_holding_stdout() {
        let start = std::time::Instant::now();
        let ok = sh("sleep 300 & echo started")
            .invoke(&event(b""), Duration::from_secs(20))
            .await
            .expect("exit 0 is a success");
        assert!(start.elapsed() < Duration::from_secs(10));
        match ok.reply {
            Some(Reply::Raw { body, .. }) => assert_eq!(&body[..], b"started\n"),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[tokio::test]
    async fn too_much_stdout_says_so() {
        let err = sh(&format!("head -c {} /dev/zero", MAX_STDOUT + 4096))
            .invoke(&event(b""), Duration::from_secs(20))
            .await
            .expect_err("over the limit");
        assert!(
            matches!(&err, InvokeError::Output(text) if text.contains("stdout") && text.contains("16 MiB")),
            "{err:?}"
        );
        assert!(!err.to_string().contains("141"), "{err}");
        assert!(!err.is_retryable());
    }

    #[tokio::test]
    async fn the_environment_is_clean_but_for_what_is_named() {
        // Cargo sets CARGO_PKG_NAME for the test process: a stand-in for a secret in ours.
        let script = r#"printf '%s|%s|%s' "${CARGO_PKG_NAME-unset}" "$MODE" "${PATH:+path}""#;
        let command = ["sh".to_string(), "-c".to_string(), script.to_string()];
        let env = BTreeMap::from([("MODE".to_string(), "fast".to_string())]);
        let reply = |inv: ExecInvoker| async move {
            match inv.invoke(&event(b""), Duration::from_secs(10)).await {
                Ok(Success {
                    reply: Some(Reply::Raw { body, .. }),
                    ..
                }) => String::from_utf8_lossy(&body).into_owned(),
                other => panic!("unexpected {other:?}"),
            }
        };
        let clean = ExecInvoker::new(&command, &env, &[]).expect("command");
        assert_eq!(reply(clean).await, "unset|fast|path");
        let inherit =
            ExecInvoker::new(&command, &env, &["CARGO_PKG_NAME".to_string()]).expect("command");
        assert_eq!(reply(inherit).await, "fnbroker-functions|fast|path");
    }

    #[tokio::test]
    async fn stderr_is_read_to_its_end_keeping_only_its_tail() {
        let mut text = vec![b'x'; 50 * 1024 * 1024];
        text.extend_from_slice(b"the end");
        let kept = tail(&text[..], MAX_STDERR).await;
        assert_eq!(kept.len(), MAX_STDERR);
        assert!(kept.ends_with(b"the end"));
        assert_eq!(kept.capacity(), MAX_STDERR);
    }

    #[tokio::test]
    async fn missing_program_is_not_retryable() {
        let inv = ExecInvoker::new(&["/nonexistent/prog".to_string()], &BTreeMap::new(), &[])
            .expect("command");
        let err = inv
            .invoke(&event(b""), Duration::from_secs(5))
            .await
            .expect_err("spawn");
        assert!(!err.is_retryable(), "{err:?}");
    }
}
