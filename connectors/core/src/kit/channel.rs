//! The channel-backed source: a consume loop on a task of its own, and the [`Source`] the engine
//! reads from its channel.

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::contract::Incoming;
use async_trait::async_trait;

/// The [`Source`](crate::Source) of a connector whose consume loop runs on a task of its own and
/// sends messages into a bounded channel (see the module documentation).
pub struct ChannelSource {
    rx: mpsc::Receiver<Incoming>,
    stop: CancellationToken,
    task: Option<JoinHandle<()>>,
    redelivery: crate::Redelivery,
    stopping: Option<CancellationToken>,
}

impl ChannelSource {
    /// Spawns `consume` with the sending side of a channel of `buffer` messages and a token that
    /// asks it to stop. The loop must return once the token fires or the channel closes, after
    /// dropping its [`Acker`](super::Acker) and awaiting [`AckerTask::finish`](super::AckerTask::finish), and only then close its
    /// connection.
    pub fn spawn<F, Fut>(buffer: usize, consume: F) -> Self
    where
        F: FnOnce(mpsc::Sender<Incoming>, CancellationToken) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let (tx, rx) = mpsc::channel(buffer.max(1));
        let stop = CancellationToken::new();
        let task = tokio::spawn(consume(tx, stop.clone()));
        Self {
            rx,
            stop,
            task: Some(task),
            redelivery: crate::Redelivery::Later,
            stopping: None,
        }
    }

    /// Cancels `token` when the engine starts stopping (see
    /// [`Source::stopping`](crate::Source::stopping)).
    pub fn notify_stopping(mut self, token: CancellationToken) -> Self {
        self.stopping = Some(token);
        self
    }

    /// Says how the source's broker redelivers (see
    /// [`SourceCapabilities`](crate::SourceCapabilities)); [`crate::Redelivery::Later`] unless
    /// said.
    pub fn with_redelivery(mut self, redelivery: crate::Redelivery) -> Self {
        self.redelivery = redelivery;
        self
    }
}

#[async_trait]
impl crate::Source for ChannelSource {
    /// Cancel safe: a message is either returned or still in the channel.
    async fn next(&mut self) -> Option<Incoming> {
        self.rx.recv().await
    }

    async fn close(mut self: Box<Self>) {
        // The loop stops fetching first; only then is what it fetched and never handed out
        // released (its handles drop). Released earlier, a message would be redelivered into
        // the fetch still running here (a JetStream pull) and sit there unseen, pending, while
        // the next consumer gets it too. Meanwhile the loop finishes its acknowledgements,
        // which wait for those handles, and closes its connection.
        self.stop.cancel();
        let Some(mut task) = self.task.take() else {
            return;
        };
        let finished = loop {
            tokio::select! {
                joined = &mut task => break joined,
                msg = self.rx.recv() => match msg {
                    Some(released) => drop(released),
                    None => break (&mut task).await,
                },
            }
        };
        self.rx.close();
        while self.rx.try_recv().is_ok() {}
        if let Err(e) = finished {
            tracing::error!(error = %e, "a consume task failed");
        }
    }

    fn capabilities(&self) -> crate::SourceCapabilities {
        crate::SourceCapabilities::redelivering(self.redelivery)
    }

    fn stopping(&mut self) {
        if let Some(token) = &self.stopping {
            token.cancel();
        }
    }
}
