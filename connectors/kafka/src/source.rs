//! The Kafka source: one consumer-group member per subscription.

use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use fnbroker_core::{AckHandle, Incoming, Settlement, Source};
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Headers, Message};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::binding::{self, Record};
use crate::offsets::{Partition, Tracker};

/// The end of one message, sent by its acknowledgement handle.
struct Settled {
    topic: String,
    partition: i32,
    generation: u64,
    offset: i64,
    finished: bool,
}

/// The consumer's context: rebalance callbacks commit what finished before partitions go, and
/// client errors set the readiness.
pub(crate) struct Context {
    pub(crate) connector: String,
    pub(crate) tracker: Arc<Mutex<Tracker>>,
    pub(crate) ready: Arc<AtomicBool>,
}

impl ClientContext for Context {
    fn error(&self, error: KafkaError, reason: &str) {
        let transport = matches!(
            error.rdkafka_error_code(),
            Some(RDKafkaErrorCode::AllBrokersDown | RDKafkaErrorCode::BrokerTransportFailure)
        );
        if transport {
            self.ready.store(false, Ordering::Release);
        }
        tracing::warn!(connector = %self.connector, %error, reason, "kafka client error");
    }
}

impl ConsumerContext for Context {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Revoke(list) = rebalance else {
            return;
        };
        let revoked: Vec<Partition> = list
            .elements()
            .iter()
            .map(|e| (e.topic().to_string(), e.partition()))
            .collect();
        let commits = match self.tracker.lock() {
            Ok(mut t) => t.revoke(&revoked),
            Err(_) => Vec::new(),
        };
        tracing::info!(connector = %self.connector, partitions = revoked.len(), "partitions revoked");
        if let Some(tpl) = to_list(&commits)
            && let Err(e) = consumer.commit(&tpl, CommitMode::Sync)
        {
            tracing::warn!(connector = %self.connector, error = %e, "commit on revoke failed; those messages will be redelivered");
        }
    }

    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(list) = rebalance {
            self.ready.store(true, Ordering::Release);
            tracing::info!(connector = %self.connector, partitions = list.count(), "partitions assigned");
        }
    }
}

fn to_list(commits: &[(Partition, i64)]) -> Option<TopicPartitionList> {
    if commits.is_empty() {
        return None;
    }
    let mut tpl = TopicPartitionList::new();
    for ((topic, partition), offset) in commits {
        // Adding an offset to a fresh list only fails for an invalid offset, which ours are not.
        let _ = tpl.add_partition_offset(topic, *partition, Offset::Offset(*offset));
    }
    Some(tpl)
}

/// The ordering key of a partition.
fn key_of(topic: &str, partition: i32) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    topic.hash(&mut h);
    partition.hash(&mut h);
    h.finish()
}

/// The source handed to the engine; a task owns the consumer.
pub(crate) struct KafkaSource {
    rx: mpsc::Receiver<Incoming>,
    stop: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl KafkaSource {
    pub(crate) fn start(
        connector: String,
        consumer: StreamConsumer<Context>,
        tracker: Arc<Mutex<Tracker>>,
        buffer: usize,
        commit_interval: Duration,
    ) -> Self {
        let (tx, rx) = mpsc::channel(buffer.max(1));
        let stop = CancellationToken::new();
        let task = tokio::spawn(run(
            connector,
            consumer,
            tracker,
            tx,
            stop.clone(),
            commit_interval,
        ));
        Self {
            rx,
            stop,
            task: Some(task),
        }
    }
}

#[async_trait]
impl Source for KafkaSource {
    async fn next(&mut self) -> Option<Incoming> {
        self.rx.recv().await
    }

    async fn close(mut self: Box<Self>) {
        // Messages fetched but never handed out are released (their handles drop here), then
        // the task commits what finished and leaves the group.
        self.rx.close();
        while self.rx.try_recv().is_ok() {}
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

async fn run(
    connector: String,
    consumer: StreamConsumer<Context>,
    tracker: Arc<Mutex<Tracker>>,
    tx: mpsc::Sender<Incoming>,
    stop: CancellationToken,
    commit_interval: Duration,
) {
    let consumer = Arc::new(consumer);
    let (settle_tx, mut settle_rx) = mpsc::unbounded_channel::<Settled>();
    let mut tick = tokio::time::interval(commit_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut permit = None;
    let mut last_error: Option<(String, Instant)> = None;

    loop {
        tokio::select! {
            biased;
            () = stop.cancelled() => break,
            Some(s) = settle_rx.recv() => settle(&tracker, s),
            _ = tick.tick() => {
                commit(&consumer, &tracker, CommitMode::Async, &connector);
                probe_readiness(&consumer).await;
            }
            p = tx.clone().reserve_owned(), if permit.is_none() => match p {
                Ok(p) => permit = Some(p),
                Err(_) => break,
            },
            msg = consumer.recv(), if permit.is_some() => match msg {
                Ok(m) => {
                    consumer.context().ready.store(true, Ordering::Release);
                    let headers: Vec<(&str, Option<&[u8]>)> = m
                        .headers()
                        .map(|h| h.iter().map(|h| (h.key, h.value)).collect())
                        .unwrap_or_default();
                    let record = Record {
                        topic: m.topic(),
                        partition: m.partition(),
                        offset: m.offset(),
                        key: m.key(),
                        payload: m.payload(),
                        headers,
                        timestamp_ms: m.timestamp().to_millis(),
                    };
                    let (event, origin) = binding::decode(&connector, &record);
                    let generation = match tracker.lock() {
                        Ok(mut t) => t.track(m.topic(), m.partition(), m.offset()),
                        Err(_) => 0,
                    };
                    let settled = Settled {
                        topic: m.topic().to_string(),
                        partition: m.partition(),
                        generation,
                        offset: m.offset(),
                        finished: false,
                    };
                    let settle_tx = settle_tx.clone();
                    let ack = AckHandle::new(move |s| {
                        let finished = matches!(s, Settlement::Delivered { .. } | Settlement::Failed { .. });
                        let _ = settle_tx.send(Settled { finished, ..settled });
                    });
                    let incoming = Incoming {
                        event,
                        origin,
                        key: key_of(m.topic(), m.partition()),
                        redeliveries: 0,
                        ack,
                    };
                    if let Some(p) = permit.take() {
                        p.send(incoming);
                    }
                }
                Err(e) => {
                    let text = e.to_string();
                    let repeat = last_error
                        .as_ref()
                        .is_some_and(|(t, at)| *t == text && at.elapsed() < Duration::from_secs(30));
                    if !repeat {
                        if matches!(e.rdkafka_error_code(), Some(RDKafkaErrorCode::UnknownTopicOrPartition | RDKafkaErrorCode::UnknownTopic)) {
                            tracing::warn!(connector = %connector, error = %text, "the topic does not exist (yet); it is picked up once created");
                        } else {
                            tracing::warn!(connector = %connector, error = %text, "kafka consume error");
                        }
                        last_error = Some((text, Instant::now()));
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }

    // Stopping: every handle was settled or dropped before `close`; take their news, commit
    // synchronously, and leave the group.
    drop(permit);
    while let Ok(s) = settle_rx.try_recv() {
        settle(&tracker, s);
    }
    commit(&consumer, &tracker, CommitMode::Sync, &connector);
    consumer.unsubscribe();
}

/// While not ready (no assignment yet, or the brokers went away), asks the cluster for metadata:
/// an answer means connected, whether or not the topics exist yet.
async fn probe_readiness(consumer: &Arc<StreamConsumer<Context>>) {
    if consumer.context().ready.load(Ordering::Acquire) {
        return;
    }
    let c = Arc::clone(consumer);
    let ok =
        tokio::task::spawn_blocking(move || c.fetch_metadata(None, Duration::from_secs(2)).is_ok())
            .await
            .unwrap_or(false);
    if ok {
        consumer.context().ready.store(true, Ordering::Release);
    }
}

fn settle(tracker: &Mutex<Tracker>, s: Settled) {
    if let Ok(mut t) = tracker.lock() {
        t.settle(&s.topic, s.partition, s.generation, s.offset, s.finished);
    }
}

fn commit(
    consumer: &StreamConsumer<Context>,
    tracker: &Mutex<Tracker>,
    mode: CommitMode,
    connector: &str,
) {
    let commits = match tracker.lock() {
        Ok(mut t) => t.take_commits(None),
        Err(_) => return,
    };
    if let Some(tpl) = to_list(&commits) {
        match consumer.commit(&tpl, mode) {
            Ok(()) => tracing::debug!(connector, partitions = commits.len(), "offsets committed"),
            Err(e) => {
                tracing::warn!(connector, error = %e, "offset commit failed; it is sent again with the next one");
                if let Ok(mut t) = tracker.lock() {
                    t.failed(&commits);
                }
            }
        }
    }
}
