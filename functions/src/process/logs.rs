//! An instance's stdout and stderr as log lines, tagged with the function and the instance,
//! bounded in size (a line is cut at [`MAX_LINE`] bytes) and in rate (a burst of [`BURST`]
//! lines, then [`PER_SECOND`] a second; what is over is counted and said once it can be).

use std::time::Duration;

use tokio::io::{AsyncBufRead, AsyncBufReadExt, BufReader};
use tokio::process::{ChildStderr, ChildStdout};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// The longest line logged; the rest of a longer one is dropped.
pub(super) const MAX_LINE: usize = 4096;
/// Lines an instance may log at once.
const BURST: f64 = 200.0;
/// Lines an instance may log a second, over time.
const PER_SECOND: f64 = 100.0;
/// How long the readers may take to finish once the instance ended.
const FINISH: Duration = Duration::from_secs(1);

/// The two readers of an instance's output.
pub(super) struct Output(Vec<JoinHandle<()>>);

impl Output {
    /// Waits for the readers to reach the end of their pipes (briefly: a process the instance
    /// left behind may hold them open).
    pub(super) async fn finish(self) {
        for task in self.0 {
            let abort = task.abort_handle();
            if tokio::time::timeout(FINISH, task).await.is_err() {
                abort.abort();
            }
        }
    }
}

/// Logs what the instance `index` of `function` writes.
pub(super) fn forward(
    function: &str,
    index: usize,
    stdout: Option<ChildStdout>,
    stderr: Option<ChildStderr>,
) -> Output {
    let mut tasks = Vec::new();
    if let Some(out) = stdout {
        tasks.push(tokio::spawn(lines(
            function.to_string(),
            index,
            "stdout",
            BufReader::new(out),
        )));
    }
    if let Some(err) = stderr {
        tasks.push(tokio::spawn(lines(
            function.to_string(),
            index,
            "stderr",
            BufReader::new(err),
        )));
    }
    Output(tasks)
}

/// A token bucket of lines.
#[derive(Debug)]
pub(super) struct Rate {
    tokens: f64,
    at: Instant,
    /// Lines dropped since the last one logged.
    pub(super) dropped: u64,
}

impl Rate {
    pub(super) fn new() -> Self {
        Self {
            tokens: BURST,
            at: Instant::now(),
            dropped: 0,
        }
    }

    /// Whether one more line may be logged now.
    pub(super) fn allow(&mut self) -> bool {
        let now = Instant::now();
        let refill = now.saturating_duration_since(self.at).as_secs_f64() * PER_SECOND;
        self.tokens = (self.tokens + refill).min(BURST);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            self.dropped += 1;
            false
        }
    }
}

async fn lines(
    function: String,
    instance: usize,
    stream: &'static str,
    mut reader: impl AsyncBufRead + Unpin,
) {
    let mut rate = Rate::new();
    let mut line = Vec::with_capacity(256);
    while let Some(cut) = read_line(&mut reader, &mut line).await {
        if !rate.allow() {
            continue;
        }
        if rate.dropped > 0 {
            tracing::warn!(%function, instance, stream, dropped = rate.dropped, "lines of the function's output were dropped (more than {PER_SECOND} a second)");
            rate.dropped = 0;
        }
        let text = String::from_utf8_lossy(&line);
        let text = text.trim_end_matches(['\r', '\n']);
        if cut {
            tracing::info!(%function, instance, stream, "{text}…");
        } else {
            tracing::info!(%function, instance, stream, "{text}");
        }
    }
}

/// Reads one line into `line` (cleared first), keeping at most [`MAX_LINE`] bytes of it: `None`
/// at the end of the pipe, else whether the line was cut.
pub(super) async fn read_line(
    reader: &mut (impl AsyncBufRead + Unpin),
    line: &mut Vec<u8>,
) -> Option<bool> {
    line.clear();
    let mut cut = false;
    let mut any = false;
    loop {
        let buf = match reader.fill_buf().await {
            Ok(buf) if !buf.is_empty() => buf,
            _ => return any.then_some(cut),
        };
        any = true;
        let (chunk, end) = match memchr(b'\n', buf) {
            Some(i) => (&buf[..i], Some(i + 1)),
            None => (buf, None),
        };
        let room = MAX_LINE.saturating_sub(line.len());
        if chunk.len() > room {
            cut = true;
        }
        line.extend_from_slice(&chunk[..chunk.len().min(room)]);
        let used = end.unwrap_or(buf.len());
        reader.consume(used);
        if end.is_some() {
            return Some(cut);
        }
    }
}

fn memchr(needle: u8, haystack: &[u8]) -> Option<usize> {
    haystack.iter().position(|b| *b == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_long_line_is_cut_and_the_next_one_read_whole() {
        let mut text = vec![b'x'; MAX_LINE * 3];
        text.extend_from_slice(b"\nshort\nlast without newline");
        let mut reader = BufReader::with_capacity(1000, &text[..]);
        let mut line = Vec::new();
        assert_eq!(read_line(&mut reader, &mut line).await, Some(true));
        assert_eq!(line.len(), MAX_LINE);
        assert_eq!(read_line(&mut reader, &mut line).await, Some(false));
        assert_eq!(line, b"short");
        assert_eq!(read_line(&mut reader, &mut line).await, Some(false));
        assert_eq!(line, b"last without newline");
        assert_eq!(read_line(&mut reader, &mut line).await, None);
    }

    #[tokio::test(start_paused = true)]
    async fn lines_over_the_rate_are_counted_not_logged() {
        let mut rate = Rate::new();
        let allowed = (0..1000).filter(|_| rate.allow()).count();
        assert_eq!(allowed, BURST as usize);
        assert_eq!(rate.dropped, 1000 - BURST as u64);
        tokio::time::advance(Duration::from_secs(1)).await;
        let allowed = (0..1000).filter(|_| rate.allow()).count();
        assert_eq!(allowed, PER_SECOND as usize);
    }
}
