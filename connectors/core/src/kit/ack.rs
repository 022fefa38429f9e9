//! Acknowledgements: the [`Acker`] that builds every message's handle, and the task that applies
//! settlements (and extends leases) with the connector's [`Settler`].

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use futures::stream::{FuturesUnordered, StreamExt};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::contract::{AckHandle, Settlement};

/// Applies settlements to one broker. Implemented by each connector for its acknowledgement
/// token (a lapin `Acker`, a JetStream message, an MQTT packet id).
#[async_trait]
pub trait Settler: Send + Sync + 'static {
    /// What the broker needs to acknowledge one message.
    type Token: Send + Sync + 'static;

    /// Tells the broker how the message was settled. Errors are the settler's to log: the
    /// broker redelivers what it did not hear about.
    async fn settle(&self, token: &Self::Token, settlement: Settlement);

    /// Tells the broker that the message is still being worked on (JetStream `+WPI`). Called
    /// only for an [`Acker::with_lease`].
    async fn extend(&self, _token: &Self::Token) {}
}

enum TokenRef<T> {
    /// The token travels with the handle.
    Owned(T),
    /// The token is held by the acker task (leases), under this id.
    Held(u64),
}

enum Command<T> {
    Hold(u64, T),
    Settle(TokenRef<T>, Settlement),
}

/// Builds the [`AckHandle`]s of one source; cheap to clone. See the module documentation.
pub struct Acker<T> {
    tx: mpsc::UnboundedSender<Command<T>>,
    leased: bool,
    ids: Arc<AtomicU64>,
}

impl<T> Clone for Acker<T> {
    fn clone(&self) -> Self {
        Self {
            tx: self.tx.clone(),
            leased: self.leased,
            ids: Arc::clone(&self.ids),
        }
    }
}

/// The task that applies an [`Acker`]'s settlements; see [`AckerTask::finish`].
#[must_use = "finish the acker task before closing the connection, or acknowledgements are lost"]
pub struct AckerTask {
    task: JoinHandle<()>,
}

impl<T: Send + Sync + 'static> Acker<T> {
    /// An acker applying settlements with `settler`.
    pub fn new<S: Settler<Token = T>>(settler: S) -> (Self, AckerTask) {
        Self::start(settler, None)
    }

    /// An acker that also calls [`Settler::extend`] every `every` for each message it handed out
    /// and that is not settled yet.
    pub fn with_lease<S: Settler<Token = T>>(settler: S, every: Duration) -> (Self, AckerTask) {
        Self::start(settler, Some(every))
    }

    fn start<S: Settler<Token = T>>(settler: S, lease: Option<Duration>) -> (Self, AckerTask) {
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(run(Arc::new(settler), rx, lease));
        let acker = Self {
            tx,
            leased: lease.is_some(),
            ids: Arc::default(),
        };
        (acker, AckerTask { task })
    }

    /// The acknowledgement handle of one message.
    pub fn handle(&self, token: T) -> AckHandle {
        let tx = self.tx.clone();
        let token = if self.leased {
            let id = self.ids.fetch_add(1, Ordering::Relaxed);
            // The task is gone only after every sender, this one included, was dropped.
            let _ = self.tx.send(Command::Hold(id, token));
            TokenRef::Held(id)
        } else {
            TokenRef::Owned(token)
        };
        AckHandle::new(move |settlement| {
            let _ = tx.send(Command::Settle(token, settlement));
        })
    }
}

impl AckerTask {
    /// Waits until every handle of the acker was settled or dropped, the acker itself (and its
    /// clones) dropped, and every acknowledgement sent. Call it after the consume loop let go
    /// of its [`Acker`], and before closing the connection.
    pub async fn finish(self) {
        if let Err(e) = self.task.await {
            tracing::error!(error = %e, "the acknowledgement task failed");
        }
    }
}

type Pending = Pin<Box<dyn Future<Output = ()> + Send>>;

async fn run<S: Settler>(
    settler: Arc<S>,
    mut rx: mpsc::UnboundedReceiver<Command<S::Token>>,
    lease: Option<Duration>,
) {
    let mut held: HashMap<u64, Arc<S::Token>> = HashMap::new();
    let mut pending: FuturesUnordered<Pending> = FuturesUnordered::new();
    let mut tick = tokio::time::interval(lease.unwrap_or(Duration::from_secs(3600)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.reset();
    loop {
        tokio::select! {
            // Cancel safe: `recv` loses nothing when another branch wins.
            command = rx.recv() => match command {
                None => break,
                Some(Command::Hold(id, token)) => {
                    held.insert(id, Arc::new(token));
                }
                Some(Command::Settle(token, settlement)) => {
                    let token = match token {
                        TokenRef::Owned(t) => Some(Arc::new(t)),
                        TokenRef::Held(id) => held.remove(&id),
                    };
                    if let Some(token) = token {
                        let settler = Arc::clone(&settler);
                        pending.push(Box::pin(async move { settler.settle(&token, settlement).await }));
                    }
                }
            },
            Some(()) = pending.next(), if !pending.is_empty() => {}
            _ = tick.tick(), if lease.is_some() && !held.is_empty() => {
                for token in held.values() {
                    let settler = Arc::clone(&settler);
                    let token = Arc::clone(token);
                    pending.push(Box::pin(async move { settler.extend(&token).await }));
                }
            }
        }
    }
    while pending.next().await.is_some() {}
}
